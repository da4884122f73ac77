//! The kvmreg test harness: builds the patched kernel, boots it under QEMU
//! and runs the suites. See `selftests/README.md` and `cargo xtask --help`.

mod cargo_tools;
mod check_series;
mod cmd;
mod deps;
mod guest;
mod kernel;
mod libtest;
mod paths;
mod pipeline;
mod qemu;
mod series;
mod splat;
mod suites;
mod tap;

use anyhow::Result;
use clap::{Parser, Subcommand};
use kernel::{BuildSpec, Config, Tree};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "harness",
    about = "Build the patched kernel, boot it under QEMU, run the suites",
    after_help = "Examples:\n  cargo xtask test                 everything CI runs\n  cargo xtask run smoke            one suite on the fast patched kernel\n  cargo xtask run --config debug   the default suites under KASAN and lockdep\n  cargo xtask run --repeat 20 kselftest/x86_64/perf_guest_id_test\n                                   one kselftest 20 times in one boot\n  cargo xtask kernel --base        build the unpatched kernel"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the Debian packages the harness needs (as root).
    Deps,
    /// Licences, bans and sources of the dependencies (cargo-deny,
    /// installed at the version deny.toml is written for if missing).
    Deny,
    /// kvmreg's public API against the commit that set its version
    /// (cargo-semver-checks, installed if missing).
    Semver,
    /// Build (or reuse) a kernel and its kselftests.
    Kernel {
        #[arg(long, value_enum, default_value = "fast")]
        config: Config,
        /// Build the unpatched base tree.
        #[arg(long)]
        base: bool,
    },
    /// Apply the series patch by patch: build each, checkpatch --strict each.
    CheckSeries,
    /// Boot a kernel under QEMU and run suites (default: the kernel's default
    /// suites, as `test` runs them).
    Run {
        #[arg(long, value_enum, default_value = "fast")]
        config: Config,
        #[arg(long, value_enum, default_value = "patched")]
        kernel: Tree,
        /// Only print the summary, not the console.
        #[arg(long, short)]
        quiet: bool,
        /// Run the suites this many times in one boot (to chase a flake).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
        repeat: u32,
        /// Suites to run; an unknown name lists the known ones (see also
        /// Documentation/harness.md).
        suites: Vec<String>,
    },
    /// The project's main job: a patched kernel in QEMU, and what it shows.
    Demo,
    /// Everything: fmt, clippy, host tests, check-series, runs on both configs.
    Test,
    /// PID 1 inside the test VM (started by `run`, not by people).
    #[command(hide = true)]
    GuestInit { plan: PathBuf },
}

fn main() -> ExitCode {
    // The guest init must be recognised before anything else can fail.
    let cli = Cli::parse();
    if let Cmd::GuestInit { plan } = &cli.command {
        guest::main(plan);
    }
    match dispatch(cli.command) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("harness: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cmd: Cmd) -> Result<bool> {
    match cmd {
        Cmd::Deps => deps::run().map(|_| true),
        Cmd::Deny => cargo_tools::deny(),
        Cmd::Semver => cargo_tools::semver(),
        Cmd::Kernel { config, base } => {
            let tree = if base { Tree::Base } else { Tree::Patched };
            let k = kernel::build(BuildSpec::for_run(tree, config))?;
            println!("{}", k.bzimage.display());
            Ok(true)
        }
        Cmd::CheckSeries => check_series::run().map(|_| true),
        Cmd::Run {
            config,
            kernel,
            quiet,
            repeat,
            suites,
        } => {
            let suites = if suites.is_empty() {
                suites::default_suites(kernel, config)
            } else {
                suites
            };
            let r = pipeline::run_suites(config, kernel, &suites, repeat, quiet)?;
            qemu::report(&r);
            Ok(r.counts.failed == 0)
        }
        Cmd::Demo => pipeline::demo(),
        Cmd::Test => pipeline::test_all(),
        Cmd::GuestInit { .. } => unreachable!("handled in main"),
    }
}
