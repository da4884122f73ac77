//! kvmtop: a top-like view of the KVM guests of this host. Thin over the
//! modules: the command line in `cli`, each command in its own module.

mod batch;
mod cli;
mod docs;
mod exits;
mod frame;
mod guests;
mod host;
mod list;
mod name;
mod out;
mod profile;
mod render;
mod sampling;
mod serve;
mod stat;
mod term;
mod tui;

use clap::Parser;
use cli::{Cli, Command, Extra};
use std::process::ExitCode;
use std::time::Duration;

fn config(c: &Cli) -> kvmreg::Config {
    kvmreg::Config {
        proc_root: kvmreg::procfs::ProcRoot::new(&c.roots.proc_root),
        debugfs_root: c.roots.debugfs_root.clone(),
        cmdline_hints: true,
        use_registry: !c.roots.no_registry,
        libvirt_system_dir: c.roots.libvirt_dir.clone(),
        user_run_dir: c.roots.user_run_dir.clone(),
        sys_root: c.roots.sys_root.clone(),
    }
}

/// The symbol options before any subcommand are for the live view's
/// profile (and `profile`); elsewhere they would be silently unused.
fn check_symbol_options(c: &Cli) -> anyhow::Result<()> {
    let unused = match &c.command {
        None => c.batch.batch.then_some("batch mode (-b)"),
        Some(Command::Profile { .. }) => None,
        Some(_) => Some("this subcommand"),
    };
    match unused {
        Some(what) if !c.syms.is_empty() => anyhow::bail!(
            "--guestkallsyms, --guestmodules, --guestvmlinux and --guestmount are for \
profiles: {what} has none. Leave them out, or use them with the live view (kvmtop \
--guestmount DIR, then Enter on a guest) or with kvmtop profile"
        ),
        _ => Ok(()),
    }
}

fn run(c: Cli) -> anyhow::Result<()> {
    check_symbol_options(&c)?;
    let cfg = config(&c);
    match c.command {
        None if c.batch.batch => batch::run(&cfg, &c.batch, c.sample, Extra::of(&c.columns)),
        None => tui::run(&cfg, &c.batch, &c.syms, c.sample, Extra::of(&c.columns)),
        Some(Command::List { json, all }) => list::run(&cfg, json || c.batch.json, all),
        Some(Command::Stat {
            guest,
            batch,
            exits,
        }) => stat::run(&cfg, guest.guest.as_deref(), &batch.or(&c.batch), exits),
        Some(Command::Profile {
            guest,
            syms,
            batch,
            top,
        }) => profile::run(
            &cfg,
            guest.guest.as_deref(),
            &syms.or(&c.syms),
            &batch.or(&c.batch),
            usize::try_from(top).unwrap_or(usize::MAX),
        ),
        Some(Command::Name { guest, new_name }) => name::run(&cfg, &guest, &new_name),
        Some(Command::Serve {
            listen,
            header_timeout,
            max_requests,
        }) => serve::run(
            &cfg,
            &listen,
            Duration::from_secs(header_timeout),
            max_requests,
        ),
        Some(Command::Man) => Ok(docs::print_man()?),
        Some(Command::Completions { shell }) => Ok(docs::print_completions(shell)?),
    }
}

fn main() -> ExitCode {
    // Two kept-open files per guest: see kvmreg::kept.
    kvmreg::kept::raise_fd_limit();
    let c = Cli::parse();
    match run(c) {
        Ok(()) => ExitCode::SUCCESS,
        // The terminal is restored by now; exit as the signal asked, like
        // a shell reports a process it killed.
        Err(e) if e.is::<term::Terminated>() => {
            let sig = e.downcast_ref::<term::Terminated>().map_or(15, |t| t.0);
            ExitCode::from(u8::try_from(128 + sig).unwrap_or(255))
        }
        Err(e) => {
            eprintln!("kvmtop: {e:#}");
            if e.is::<guests::ChoiceError>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(args: &[&str]) -> anyhow::Result<()> {
        check_symbol_options(&Cli::try_parse_from(args).unwrap())
    }

    #[test]
    fn top_level_symbol_options_only_where_a_profile_uses_them() {
        assert!(check(&["kvmtop", "--guestkallsyms", "/k"]).is_ok());
        assert!(check(&["kvmtop", "--guestmount", "/g", "profile"]).is_ok());
        assert!(check(&["kvmtop", "list"]).is_ok());
        assert!(check(&["kvmtop", "-b"]).is_ok());
        let e = check(&["kvmtop", "-b", "--guestkallsyms", "/k"]).unwrap_err();
        assert!(e.to_string().contains("batch mode (-b) has none"), "{e}");
        let e = check(&["kvmtop", "--guestvmlinux", "/v", "list"]).unwrap_err();
        assert!(e.to_string().contains("kvmtop profile"), "{e}");
    }
}
