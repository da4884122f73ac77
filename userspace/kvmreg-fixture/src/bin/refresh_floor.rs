//! kvmreg-refresh-floor: the floor of a refresh, for `bench-refresh`
//! (Documentation/benchmarks.md): what any tool that shows every guest's
//! exits and CPU split each second must at least do on a registry kernel.
//! It finds the guests once, keeps each one's `vcpu_stats` and its
//! process' `stat` open, and each round `pread`s both, parses nothing and
//! prints nothing. Run beside `kvmtop -b` in the same boot, its CPU time
//! is the figure kvmtop's is compared with.
//!
//! With `--exits`, it instead prints the sum of every guest's `exits`
//! (one line, the registry's `vcpu_stats`), so that a script can measure
//! the exits another tool adds to idle guests.

use anyhow::{bail, Context, Result};
use clap::Parser;
use kvmreg::kept::{KeptFile, VcpuStatsFile};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
struct Args {
    /// Rounds to read, like `kvmtop -n`.
    #[arg(short = 'n', long, default_value_t = 11)]
    rounds: u32,
    /// Seconds between rounds, like `kvmtop -d`.
    #[arg(short = 'd', long, default_value_t = 1.0)]
    delay: f64,
    /// Print the sum of all guests' exits and stop.
    #[arg(long)]
    exits: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let cfg = kvmreg::Config::default();
    let Some(d) = kvmreg::discover::list_registry(&cfg) else {
        bail!("no /proc/kvm/.list: this floor is a registry kernel's");
    };
    let proc = &cfg.proc_root;
    let mut files = Vec::new();
    for g in &d.guests {
        let (Some(id), pid) = (g.id, g.pid) else {
            continue;
        };
        let vs = proc.join(format!("{pid}/kvm/{id}/vcpu_stats"));
        let st = proc.join(format!("{pid}/stat"));
        files.push((
            VcpuStatsFile::open(&vs).with_context(|| vs.display().to_string())?,
            KeptFile::open(&st, 1024).with_context(|| st.display().to_string())?,
        ));
    }
    if args.exits {
        let mut total = 0u64;
        for (vs, _) in &mut files {
            let path = vs.path().display().to_string();
            let sums = vs.read().context(path)?;
            total += sums.get("exits").context("no exits counter")?;
        }
        println!("{total}");
        return Ok(());
    }
    let delay = Duration::from_secs_f64(args.delay.max(0.0));
    let mut next = Instant::now();
    for _ in 0..args.rounds {
        for (vs, st) in &mut files {
            // The reads alone: a raw pread of each file, no parsing.
            vs.read_raw()?;
            st.read()?;
        }
        next += delay;
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    eprintln!(
        "kvmreg-refresh-floor: {} guests, {} rounds",
        files.len(),
        args.rounds
    );
    Ok(())
}
