//! The man page and shell completions, generated from the clap definition
//! and the live view's key list (`kvmtop man`, `kvmtop completions SHELL`).

use crate::cli::Cli;
use clap::CommandFactory;
use std::io::Write;

/// `text` as roff running text: backslashes and dashes escaped, and no
/// line that roff would take for a request.
fn roff(text: &str) -> String {
    text.replace('\\', "\\e")
        .replace('-', "\\-")
        .lines()
        .map(|l| {
            if l.starts_with('.') || l.starts_with('\'') {
                format!("\\&{l}")
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// One page for the whole tool: clap_mangen's sections for `kvmtop`, then
/// each subcommand with its options in a COMMANDS section (clap_mangen
/// would point at `kvmtop-list(1)` pages, which are not installed), and
/// the live view's keys.
pub fn man(out: &mut impl Write) -> std::io::Result<()> {
    let mut cmd = Cli::command();
    cmd.build();
    let page = clap_mangen::Man::new(cmd.clone());
    page.render_title(out)?;
    page.render_name_section(out)?;
    page.render_synopsis_section(out)?;
    page.render_description_section(out)?;
    page.render_options_section(out)?;
    writeln!(out, ".SH COMMANDS")?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        writeln!(out, ".SS kvmtop {}", sub.get_name())?;
        if let Some(about) = sub.get_long_about().or(sub.get_about()) {
            writeln!(out, "{}", roff(&about.to_string()))?;
        }
        // The subcommand's options, under its heading instead of a
        // section of their own.
        let mut opts = Vec::new();
        clap_mangen::Man::new(sub.clone()).render_options_section(&mut opts)?;
        for line in String::from_utf8_lossy(&opts).lines() {
            match line.strip_prefix(".SH ") {
                Some(heading) => writeln!(out, ".PP\n\\fI{}:\\fR", heading.to_lowercase())?,
                None => writeln!(out, "{line}")?,
            }
        }
    }
    writeln!(out, ".SH KEYS")?;
    writeln!(out, "Keys of the live view (kvmtop without \\fB\\-b\\fR):")?;
    for (key, what) in crate::tui::KEYS {
        writeln!(out, ".TP\n\\fB{}\\fR\n{}", roff(key), roff(what))?;
    }
    page.render_extra_section(out)?;
    page.render_version_section(out)
}

pub fn completions(shell: clap_complete::Shell, out: &mut impl Write) {
    clap_complete::generate(shell, &mut Cli::command(), "kvmtop", out);
}

/// Write the man page to stdout; a closed pipe (`kvmtop man | head`) is a
/// quiet end. (Made whole first: clap_complete panics on a write error.)
pub fn print_man() -> std::io::Result<()> {
    let mut m = Vec::new();
    man(&mut m)?;
    emit_bytes(&m)
}

/// Write shell completions to stdout, as [`print_man`] writes the page.
pub fn print_completions(shell: clap_complete::Shell) -> std::io::Result<()> {
    let mut c = Vec::new();
    completions(shell, &mut c);
    emit_bytes(&c)
}

fn emit_bytes(b: &[u8]) -> std::io::Result<()> {
    crate::out::emit(&String::from_utf8_lossy(b)).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_page_and_completions_cover_the_subcommands() {
        let mut m = Vec::new();
        man(&mut m).unwrap();
        let m = String::from_utf8(m).unwrap();
        assert!(
            m.starts_with(".ie") || m.contains(".TH kvmtop"),
            "{}",
            &m[..200.min(m.len())]
        );
        // One page: the subcommands are in it, never pointed at as pages
        // of their own.
        assert!(!m.contains("kvmtop\\-list(1)"), "dangling page reference");
        for sub in [
            ".SS kvmtop list",
            ".SS kvmtop serve",
            ".SS kvmtop completions",
        ] {
            assert!(m.contains(sub), "the page lacks {sub}");
        }
        assert!(m.contains(".SH KEYS") && m.contains("PgUp PgDn"));
        let mut c = Vec::new();
        completions(clap_complete::Shell::Bash, &mut c);
        let c = String::from_utf8(c).unwrap();
        for sub in ["list", "stat", "profile", "name", "serve"] {
            assert!(c.contains(sub), "bash completion lacks {sub}");
        }
    }
}
