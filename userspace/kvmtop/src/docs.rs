//! The man page and shell completions, generated from the clap definition
//! (`kvmtop man`, `kvmtop completions SHELL`; hidden subcommands).

use crate::cli::Cli;
use clap::CommandFactory;
use std::io::Write;

pub fn man(out: &mut impl Write) -> std::io::Result<()> {
    clap_mangen::Man::new(Cli::command()).render(out)
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
        assert!(m.contains("kvmtop\\-list") || m.contains("list"));
        let mut c = Vec::new();
        completions(clap_complete::Shell::Bash, &mut c);
        let c = String::from_utf8(c).unwrap();
        for sub in ["list", "stat", "profile", "name", "serve"] {
            assert!(c.contains(sub), "bash completion lacks {sub}");
        }
    }
}
