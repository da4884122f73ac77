//! kvmtop: a top-like view of the KVM guests of this host. Thin over the
//! modules: the command line in `cli`, each command in its own module.

mod batch;
mod cli;
mod docs;
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
use cli::{Cli, Command};
use std::process::ExitCode;

fn config(c: &Cli) -> kvmreg::Config {
    kvmreg::Config {
        proc_root: kvmreg::procfs::ProcRoot::new(&c.roots.proc_root),
        debugfs_root: c.roots.debugfs_root.clone(),
        cmdline_hints: true,
        use_registry: !c.roots.no_registry,
    }
}

fn run(c: Cli) -> anyhow::Result<()> {
    let cfg = config(&c);
    match c.command {
        None if c.batch.batch => batch::run(&cfg, &c.batch),
        None => tui::run(&cfg, &c.batch),
        Some(Command::List { json }) => list::run(&cfg, json || c.batch.json),
        Some(Command::Stat { guest, batch }) => stat::run(&cfg, guest.guest.as_deref(), &batch),
        Some(Command::Profile {
            guest,
            syms,
            batch,
            top,
        }) => profile::run(&cfg, guest.guest.as_deref(), &syms, &batch, top),
        Some(Command::Name { guest, new_name }) => name::run(&cfg, &guest, &new_name),
        Some(Command::Serve {
            listen,
            max_requests,
        }) => serve::run(&cfg, &listen, max_requests),
        Some(Command::Man) => Ok(docs::man(&mut std::io::stdout())?),
        Some(Command::Completions { shell }) => {
            docs::completions(shell, &mut std::io::stdout());
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let c = Cli::parse();
    match run(c) {
        Ok(()) => ExitCode::SUCCESS,
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
