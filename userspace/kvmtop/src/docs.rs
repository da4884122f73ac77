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
