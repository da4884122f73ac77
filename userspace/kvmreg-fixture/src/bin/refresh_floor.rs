//! kvmreg-refresh-floor: the floor of a refresh, for `bench-refresh`
//! (Documentation/benchmarks.md): what any tool that shows every guest's
//! exits and CPU split each second must at least do on a registry kernel.
//! It finds the guests once, keeps each one's `vcpu_stats` and its
//! process' `stat` open (and `/proc/stat`, for the host's split), and each
//! round `pread`s them (a `vcpu_stats` from its data blocks on, as kvmtop
//! reads it after the first read), parses nothing and prints one short
//! line.
//! `kvmreg-refresh-bench` runs it beside `kvmtop -b` in the same boot: its
//! CPU per round is the figure kvmtop's is compared with.

use anyhow::{bail, Context, Result};
use clap::Parser;
use kvmreg::kept::{KeptFile, VcpuStatsFile};
use std::io::Write;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
struct Args {
    /// Rounds to read, like `kvmtop -n`.
    #[arg(short = 'n', long, default_value_t = 11)]
    rounds: u32,
    /// Seconds between rounds, like `kvmtop -d`.
    #[arg(short = 'd', long, default_value_t = 1.0)]
    delay: f64,
}

fn main() -> Result<()> {
    let args = Args::parse();
    // Two files per guest, as kvmtop keeps (which raises its limit too).
    kvmreg::kept::raise_fd_limit();
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
    let delay = Duration::from_secs_f64(args.delay.max(0.0));
    let mut next = Instant::now();
    // The host's CPU split, as kvmtop's header shows it.
    let mut host = KeptFile::open(&proc.join("stat"), 4096).context("/proc/stat")?;
    let mut out = std::io::stdout().lock();
    for round in 0..args.rounds {
        for (vs, st) in &mut files {
            // The reads alone: a raw pread of each file, no parsing.
            vs.read_raw()?;
            st.read()?;
        }
        host.read()?;
        // One short line a round, as kvmtop prints a frame: the benchmark
        // times the rounds by these lines.
        writeln!(out, "round {round}")?;
        out.flush()?;
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
