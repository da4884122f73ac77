//! kvmreg-refresh-bench: what watching costs (`Documentation/benchmarks.md`,
//! "Refresh cost").
//!
//! Starts `--guests` fixture guests shaped like qemu (`--extra-fds`,
//! `--extra-threads`), then measures, in interleaved rounds:
//! - the CPU time of one `kvmtop -b -d 1` refresh and of one round of
//!   `kvmreg-refresh-floor` (which only `pread`s the files a refresh must
//!   read) on a registry kernel; both as the difference between a run of
//!   `--refreshes` frames and a run of one frame, so that neither tool's
//!   start counts, and the wall time between frames the same way (a tool
//!   that cannot keep up stretches it past `--delay`);
//! - the system calls of a refresh (`strace -f -c`, the same difference),
//!   per guest;
//! - with `--exits-guests`, the exits per second kvmtop adds to guests that
//!   run (idle fixture guests sleep outside `KVM_RUN`, where nothing can
//!   add exits): no tool, `kvmtop -b`, `kvmtop -b --sample` and
//!   `kvmtop profile` of one of them (counted on the others and on it).
//!   `--sample` and the profiled guest show that the check can see exits.
//!
//! Every figure is a median with a distribution-free interval of at least
//! 95% over the rounds (`kvmreg_fixture::bench::median_ci`).

use anyhow::{bail, Context, Result};
use clap::Parser;
use kvmreg::track::Tracker;
use kvmreg_fixture::bench::median_ci;
use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(
    about = "Measures kvmtop's refresh cost beside its floor, its system calls and the exits it adds"
)]
struct Args {
    /// Fixture guests to watch (one process each, one vCPU each).
    #[arg(long, default_value_t = 100)]
    guests: usize,
    /// Their CPU use in percent (0: idle).
    #[arg(long, default_value_t = 0)]
    busy: u32,
    /// Extra fds per VMM process (qemu holds about 100).
    #[arg(long, default_value_t = 90)]
    extra_fds: u32,
    /// Extra threads per VMM process (qemu runs about 8 beside the vCPUs).
    #[arg(long, default_value_t = 8)]
    extra_threads: u32,
    /// Guest memory in KiB.
    #[arg(long, default_value_t = 256)]
    mem_kib: usize,
    /// Interleaved rounds (9 give an interval of the 2nd to 8th value).
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    /// Frames of the long runs.
    #[arg(long, default_value_t = 11)]
    refreshes: u32,
    /// Seconds between frames.
    #[arg(long, default_value_t = 1.0)]
    delay: f64,
    /// Fail, instead of saying so, when strace is missing.
    #[arg(long)]
    require_strace: bool,
    /// Also time `kvmtop list` (the registry's `.list`) against
    /// `kvmtop --no-registry list` (the fd-scan backend), this many rounds.
    #[arg(long, default_value_t = 0)]
    list_rounds: usize,
    /// Running guests for the exits measurement (0: skip it).
    #[arg(long, default_value_t = 0)]
    exits_guests: usize,
    /// Their CPU use in percent.
    #[arg(long, default_value_t = 50)]
    exits_busy: u32,
    /// Rounds of the exits measurement (each: one window per mode).
    #[arg(long, default_value_t = 7)]
    exits_rounds: usize,
    /// Seconds of each exits window.
    #[arg(long, default_value_t = 5.0)]
    exits_window: f64,
    /// Measure only the exits (`--exits-guests`), not the refresh.
    #[arg(long)]
    exits_only: bool,
    /// kvmtop's optional columns for the refresh measurement (e.g.
    /// `steal,other`: the vCPU threads' files too); the floor stays the
    /// same, so this measures what the columns cost against the goal.
    #[arg(long, value_name = "COLUMNS")]
    kvmtop_columns: Option<String>,
    /// Give each guest's VMM a tap device with this much traffic, KiB a
    /// second (`kvmreg-fixture --net-rate`; root), so that the network
    /// columns have devices to read.
    #[arg(long, value_name = "KIB", default_value_t = 0)]
    net_rate: u32,
    /// Where kvmtop, kvmreg-fixture and kvmreg-refresh-floor are (default:
    /// beside this program).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// A fixture process and what it printed about its guests.
struct Fixture {
    child: Child,
    /// (name, pid) of each guest.
    guests: Vec<(String, u32)>,
    dir: PathBuf,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Start `names` as fixture guests and wait for them all.
fn start_fixture(
    bin: &Path,
    args: &Args,
    names: &[String],
    busy: u32,
    dir: &Path,
) -> Result<Fixture> {
    fs::create_dir_all(dir)?;
    let mut child = Command::new(bin.join("kvmreg-fixture"))
        .arg("--guests")
        .arg(names.join(","))
        .arg(format!("--busy={busy}"))
        .arg(format!("--extra-fds={}", args.extra_fds))
        .arg(format!("--extra-threads={}", args.extra_threads))
        .arg(format!("--mem-kib={}", args.mem_kib))
        .arg(format!("--net-rate={}", args.net_rate))
        .arg("--out")
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(fs::File::create(dir.join("fixture.err"))?)
        .spawn()
        .context("cannot start kvmreg-fixture")?;
    let out = child.stdout.take().context("fixture stdout")?;
    let mut fx = Fixture {
        child,
        guests: Vec::new(),
        dir: dir.to_path_buf(),
    };
    for line in BufReader::new(out).lines() {
        let line = line?;
        if line == "ready" {
            return Ok(fx);
        }
        // guest NAME id ID pid PID ...
        let f: Vec<&str> = line.split_whitespace().collect();
        if let (Some(&"guest"), Some(name), Some(pid)) = (f.first(), f.get(1), f.get(5)) {
            fx.guests.push((name.to_string(), pid.parse()?));
        }
    }
    let err = fs::read_to_string(dir.join("fixture.err")).unwrap_or_default();
    let last: Vec<&str> = err.lines().rev().take(5).collect();
    bail!(
        "kvmreg-fixture stopped before its guests were ready: {}",
        last.join(" / ")
    )
}

/// Run `cmd` to its end, judge its output with `check`; its wall time.
fn run(mut cmd: Command, check: impl Fn(&str) -> Result<()>) -> Result<f64> {
    let t = Instant::now();
    let out = cmd.stderr(Stdio::piped()).output().context("cannot run")?;
    let wall = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "{:?} failed: {}",
            cmd.get_program(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    check(&String::from_utf8_lossy(&out.stdout))?;
    Ok(wall)
}

/// CPU seconds a live process has used so far (its CPU-time clock, to the
/// nanosecond, all threads).
fn process_cpu(pid: u32) -> Result<f64> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: clock is a valid out-pointer; an unknown pid is an error.
    let r = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
    if r != 0 {
        bail!(
            "CPU clock of pid {pid}: {}",
            std::io::Error::from_raw_os_error(r)
        );
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid out-pointer for clock_gettime.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        bail!(
            "CPU clock of pid {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
}

/// A tool's steady state: CPU and wall time per frame between its first
/// and its last frame (its start and first frame left out), and the CPU
/// it had used by its first frame.
#[derive(Clone, Copy)]
struct Steady {
    cpu: f64,
    interval: f64,
    start: f64,
}

/// Run `cmd` for `frames` frames, each announced by a stdout line that
/// starts with `marker`; `check` judges each such line.
fn steady(
    mut cmd: Command,
    marker: &str,
    frames: u32,
    check: impl Fn(&str) -> Result<()>,
) -> Result<Steady> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {:?}", cmd.get_program()))?;
    let pid = child.id();
    let out = child.stdout.take().context("stdout")?;
    let mut seen = 0;
    let mut first = None;
    let mut last = None;
    for line in BufReader::new(out).lines() {
        let line = line?;
        if !line.starts_with(marker) {
            continue;
        }
        if let Err(e) = check(&line) {
            let _ = child.kill();
            let _ = child.wait();
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                use std::io::Read;
                let _ = e.read_to_string(&mut err);
            }
            let known = fs::read_to_string("/proc/kvm/.list").map_or(0, |l| l.lines().count());
            bail!(
                "{e:#} (/proc/kvm/.list has {known} lines now; stderr: {})",
                err.trim()
            );
        }
        seen += 1;
        let now = (process_cpu(pid)?, Instant::now());
        if seen == 1 {
            first = Some(now);
        }
        if seen == frames {
            last = Some(now);
        }
    }
    let status = child.wait()?;
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut err);
    }
    if !status.success() {
        bail!("{:?} failed: {}", cmd.get_program(), err.trim());
    }
    let (Some((c0, t0)), Some((c1, t1))) = (first, last) else {
        bail!("{:?} showed {seen} frames, not {frames}", cmd.get_program());
    };
    let k = f64::from(frames - 1);
    Ok(Steady {
        cpu: (c1 - c0) / k,
        interval: (t1 - t0).as_secs_f64() / k,
        start: c0,
    })
}

/// The tools compared, as commands for `frames` frames.
#[derive(Clone, Copy, PartialEq)]
enum Tool {
    Kvmtop,
    Floor,
}

impl Tool {
    fn label(self) -> &'static str {
        match self {
            Tool::Kvmtop => "kvmtop -b",
            Tool::Floor => "floor (pread only)",
        }
    }
}

fn command(bin: &Path, tool: Tool, frames: u32, delay: f64, columns: Option<&str>) -> Command {
    let mut c = match tool {
        Tool::Kvmtop => {
            let mut c = Command::new(bin.join("kvmtop"));
            c.arg("-b");
            if let Some(cols) = columns {
                c.args(["--columns", cols]);
            }
            c
        }
        Tool::Floor => Command::new(bin.join("kvmreg-refresh-floor")),
    };
    c.args(["-n", &frames.to_string(), "-d", &delay.to_string()]);
    c
}

fn show(what: &str, v: Vec<f64>, unit: &str) -> (f64, f64, f64) {
    let (lo, med, hi) = median_ci(v);
    println!("#   {what:<44} {med:>9.3} {unit:<4} [{lo:.3}, {hi:.3}]");
    (lo, med, hi)
}

fn main() {
    let args = Args::parse();
    match bench(&args) {
        Ok(()) => {}
        Err(e) => {
            // A diagnostic, not a TAP point: the calling script judges.
            println!("# kvmreg-refresh-bench: error: {e:#}");
            std::process::exit(1);
        }
    }
}

fn bench(args: &Args) -> Result<()> {
    let bin = match &args.bin_dir {
        Some(b) => b.clone(),
        None => std::env::current_exe()?
            .parent()
            .context("where this program is")?
            .to_path_buf(),
    };
    let work = std::env::temp_dir().join(format!("kvmreg-refresh-bench.{}", std::process::id()));
    let registry = Path::new("/proc/kvm/.list").exists();
    if args.exits_only {
        if args.exits_guests == 0 {
            bail!("--exits-only needs --exits-guests N");
        }
        exits(args, &bin, &work)?;
        let _ = fs::remove_dir_all(&work);
        return Ok(());
    }
    let n = args.guests;
    println!("# kvmreg-refresh-bench: {n} guests busy {}%, {} extra fds and {} extra threads per VMM, {} rounds of {} frames every {} s; {} kernel",
        args.busy, args.extra_fds, args.extra_threads, args.rounds, args.refreshes, args.delay,
        if registry { "registry" } else { "stock (no /proc/kvm/.list: no floor)" });
    let names: Vec<String> = (1..=n).map(|i| format!("rb{i}")).collect();
    let t = Instant::now();
    let fx = start_fixture(&bin, args, &names, args.busy, &work.join("watched"))?;
    println!(
        "# {} guests started in {:.1} s",
        fx.guests.len(),
        t.elapsed().as_secs_f64()
    );
    std::thread::sleep(Duration::from_secs(2));

    let tools: &[Tool] = if registry {
        &[Tool::Kvmtop, Tool::Floor]
    } else {
        &[Tool::Kvmtop]
    };
    let long = args.refreshes.max(2);
    // Per round and tool: (CPU per refresh, interval, CPU by the first frame).
    let mut per: Vec<Vec<(f64, f64, f64)>> = vec![Vec::new(); tools.len()];
    let want = format!("guests: {n} ");
    for round in 0..args.rounds {
        // Alternate which tool runs first.
        for k in 0..tools.len() {
            let ti = (k + round) % tools.len();
            let cmd = command(
                &bin,
                tools[ti],
                long,
                args.delay,
                args.kvmtop_columns.as_deref(),
            );
            let got = if tools[ti] == Tool::Kvmtop {
                steady(cmd, "kvmtop - ", long, |h| {
                    if !h.contains(&want) {
                        bail!("a frame did not show the {n} guests: {h}");
                    }
                    Ok(())
                })?
            } else {
                steady(cmd, "round ", long, |_| Ok(()))?
            };
            per[ti].push((got.cpu, got.interval, got.start));
        }
    }
    println!("# CPU per refresh (ms) and interval (s) from the first to the last frame; start: CPU by the first frame (ms); median [95% interval]");
    let mut k_ms = Vec::new();
    for (ti, &tool) in tools.iter().enumerate() {
        let name = tool.label();
        let cpu: Vec<f64> = per[ti].iter().map(|r| r.0 * 1e3).collect();
        if tool == Tool::Kvmtop {
            k_ms = cpu.clone();
        }
        show(&format!("{name}: CPU per refresh"), cpu, "ms");
        show(
            &format!("{name}: interval"),
            per[ti].iter().map(|r| r.1).collect(),
            "s",
        );
        show(
            &format!("{name}: start"),
            per[ti].iter().map(|r| r.2 * 1e3).collect(),
            "ms",
        );
    }
    let (k_lo, _, k_hi) = median_ci(k_ms.clone());
    let pct = |ms: f64| 100.0 * ms / 1e3 / args.delay;
    if registry {
        // The 1% goal is a real host's; here it is information.
        println!(
            "# kvmtop every {} s: at most {:.2}% of this machine's core (interval's top)",
            args.delay,
            pct(k_hi)
        );
    } else {
        println!(
            "# kvmtop every {} s: at most {:.2}% of a core (interval's top); goal (stock kernel host) <= 1%: {}",
            args.delay,
            pct(k_hi),
            verdict(pct(k_lo), pct(k_hi), 1.0)
        );
    }
    if registry {
        let ratios: Vec<f64> = per[0]
            .iter()
            .zip(&per[1])
            .map(|(k, f)| k.0 / f.0.max(1e-9))
            .collect();
        let (lo, _, hi) = show("kvmtop / floor (paired per round)", ratios, "x");
        println!(
            "# goal: kvmtop within 2x of its floor: {}",
            verdict(lo, hi, 2.0)
        );
    }
    let (_, ivl, _) = median_ci(per[0].iter().map(|r| r.1).collect());
    println!(
        "# kvmtop kept its interval: {} (median {ivl:.3} s for {} s)",
        if ivl <= args.delay * 1.05 {
            "yes"
        } else {
            "no"
        },
        args.delay
    );

    syscalls(args, &bin, tools, &work)?;
    if args.list_rounds > 0 {
        if registry {
            list(args, &bin)?;
        } else {
            println!("# listing: no /proc/kvm/.list to compare with the fd scan");
        }
    }
    if args.exits_guests > 0 {
        drop(fx);
        exits(args, &bin, &work)?;
    }
    let _ = fs::remove_dir_all(&work);
    Ok(())
}

/// Listing from `.list` against the fd-scan backend, in interleaved
/// rounds: the library calls (`kvmreg::discover::list_registry` and
/// `kvmreg::backend::fd_scan::scan`) in this process, and the commands a
/// user runs (`kvmtop list`, `kvmtop --no-registry list`), wall time.
fn list(args: &Args, bin: &Path) -> Result<()> {
    let n = args.guests;
    let cfg = kvmreg::Config::default();
    let proc = kvmreg::procfs::ProcRoot::default();
    // One row per guest: every line but the header and the footnotes
    // (`AGE* = ...`); without the registry the rows have no names.
    let rows = move |out: &str| {
        let rows = out
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with("NAME") && !l.contains(" = "))
            .count();
        if rows < n {
            bail!("kvmtop list showed {rows} of the {n} guests");
        }
        Ok(())
    };
    // (library .list, library fd scan, kvmtop list, kvmtop --no-registry list)
    let mut t: [Vec<f64>; 4] = Default::default();
    for round in 0..args.list_rounds {
        for k in 0..4 {
            let which = (k + round) % 4;
            let ms = match which {
                0 | 1 => {
                    let s = Instant::now();
                    let found = if which == 0 {
                        kvmreg::discover::list_registry(&cfg)
                            .context("no .list")?
                            .guests
                            .len()
                    } else {
                        kvmreg::backend::fd_scan::scan(&proc).guests.len()
                    };
                    let ms = s.elapsed().as_secs_f64() * 1e3;
                    if found < n {
                        bail!("a listing found {found} of the {n} guests");
                    }
                    ms
                }
                _ => {
                    let mut c = Command::new(bin.join("kvmtop"));
                    if which == 3 {
                        c.arg("--no-registry");
                    }
                    c.arg("list");
                    run(c, rows)? * 1e3
                }
            };
            t[which].push(ms);
        }
    }
    let ratio = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(a, b)| b / a).collect::<Vec<_>>();
    println!("# listing {n} guests, wall time (median [95% interval]):");
    show("library: list_registry (.list)", t[0].clone(), "ms");
    show("library: fd_scan::scan", t[1].clone(), "ms");
    let (lo, _, hi) = show(
        "library: fd scan / .list (paired)",
        ratio(&t[0], &t[1]),
        "x",
    );
    show("kvmtop list", t[2].clone(), "ms");
    show("kvmtop --no-registry list", t[3].clone(), "ms");
    show("kvmtop: fd scan / .list (paired)", ratio(&t[2], &t[3]), "x");
    println!(
        "# goal: .list at least 100x faster than the fd-scan backend: {}",
        if lo >= 100.0 {
            "met"
        } else if hi < 100.0 {
            "not met"
        } else {
            "undecided (the interval straddles the goal)"
        }
    );
    Ok(())
}

/// A goal "at most `goal`" judged by a median's interval: met only when
/// the whole interval is within it.
fn verdict(lo: f64, hi: f64, goal: f64) -> &'static str {
    if hi <= goal {
        "met"
    } else if lo > goal {
        "not met"
    } else {
        "undecided (the interval straddles the goal)"
    }
}

/// Calls in an `strace -c` summary: the `total` line's fourth column.
fn strace_calls(summary: &str) -> Result<f64> {
    let total = summary
        .lines()
        .rev()
        .find(|l| l.trim_end().ends_with("total"))
        .context("no total line in strace's summary")?;
    let f: Vec<&str> = total.split_whitespace().collect();
    f.get(3)
        .and_then(|c| c.parse().ok())
        .context("no call count in strace's total line")
}

/// System calls per guest and refresh, from `strace -f -c` of a long and a
/// one-frame run (counts barely vary between runs: one pair).
fn syscalls(args: &Args, bin: &Path, tools: &[Tool], work: &Path) -> Result<()> {
    if Command::new("strace").arg("-V").output().is_err() {
        if args.require_strace {
            bail!("strace is not installed (apt-get install strace)");
        }
        println!("# system calls: not counted, strace is not installed");
        return Ok(());
    }
    let long = args.refreshes.max(2);
    println!("# system calls per guest per refresh (strace -f -c, {long} frames minus 1 frame):");
    for &tool in tools {
        let mut calls = [0.0; 2];
        for (i, frames) in [1, long].into_iter().enumerate() {
            let out = work.join("strace.out");
            let inner = command(
                bin,
                tool,
                frames,
                args.delay,
                args.kvmtop_columns.as_deref(),
            );
            let mut c = Command::new("strace");
            c.args(["-f", "-c", "-o"])
                .arg(&out)
                .arg(inner.get_program());
            c.args(inner.get_args());
            run(c, |_| Ok(()))?;
            calls[i] = strace_calls(&fs::read_to_string(&out)?)?;
        }
        let per = (calls[1] - calls[0]) / f64::from(long - 1) / args.guests as f64;
        let name = tool.label();
        println!(
            "#   {name:<44} {per:>9.2}     (1 frame: {} calls, {long} frames: {})",
            calls[0], calls[1]
        );
        if tool == Tool::Kvmtop && tools.len() > 1 {
            // One vCPU per fixture guest: the goal is 3 + 1 per vCPU.
            println!(
                "# goal (registry kernel): at most 4 (3 + 1 per vCPU): {}",
                if per <= 4.0 { "met" } else { "not met" }
            );
        }
    }
    Ok(())
}

/// The counter that shows exits a watcher forces: `irq_exits` (exits for
/// host interrupts, as a sampler's timer is) where KVM has it (x86), else
/// all `exits`. The fixture guest's own exits are `hlt`s, one per loop of
/// its code: their rate falls when anything slows the guest, which would
/// hide added exits in the total.
const EXIT_COUNTERS: [&str; 2] = ["irq_exits", "exits"];

/// Per second over `window`, for each guest in `pids`, the first of
/// [`EXIT_COUNTERS`] the kernel has; and its name.
/// The host-side interrupts that can stop a running vCPU, by kind
/// (`/proc/interrupts`, summed over the CPUs): the local timer, IPIs that
/// reschedule or call a function, TLB shootdowns, irq_work (perf's
/// wakeups), PMU interrupts and NMIs.
const IRQ_KINDS: [&str; 7] = ["LOC", "RES", "CAL", "TLB", "IWI", "PMI", "NMI"];

fn interrupts() -> [u64; IRQ_KINDS.len()] {
    let mut n = [0u64; IRQ_KINDS.len()];
    let text = fs::read_to_string("/proc/interrupts").unwrap_or_default();
    for l in text.lines() {
        let mut w = l.split_whitespace();
        let Some(k) = w.next().and_then(|k| k.strip_suffix(':')) else {
            continue;
        };
        if let Some(i) = IRQ_KINDS.iter().position(|x| *x == k) {
            // Per-CPU counts, then the description.
            n[i] = w.map_while(|c| c.parse::<u64>().ok()).sum();
        }
    }
    n
}

/// Each guest's exits per second over `window`, the counter's name, and
/// the host's interrupts per second by kind ([`IRQ_KINDS`]).
fn exit_rates(
    tracker: &mut Tracker,
    pids: &[u32],
    window: Duration,
) -> Result<(Vec<f64>, &'static str, Vec<f64>)> {
    let read = |tracker: &mut Tracker| -> Result<Vec<(u64, &'static str)>> {
        tracker.refresh();
        pids.iter()
            .map(|&pid| {
                let i = tracker
                    .guests()
                    .iter()
                    .position(|g| g.pid == pid)
                    .with_context(|| format!("guest of pid {pid} not found"))?;
                let c = tracker.counters(i, Some(&EXIT_COUNTERS))?;
                EXIT_COUNTERS
                    .iter()
                    .find_map(|n| c.values.get(*n).map(|v| (*v, *n)))
                    .with_context(|| {
                        format!("no exits counter for pid {pid} ({})", c.notes.join("; "))
                    })
            })
            .collect()
    };
    let a = read(tracker)?;
    let ia = interrupts();
    let t = Instant::now();
    std::thread::sleep(window);
    let b = read(tracker)?;
    let ib = interrupts();
    let s = t.elapsed().as_secs_f64();
    let name = a.first().map_or("exits", |x| x.1);
    Ok((
        a.iter()
            .zip(&b)
            .map(|(a, b)| b.0.saturating_sub(a.0) as f64 / s)
            .collect(),
        name,
        ia.iter()
            .zip(&ib)
            .map(|(a, b)| b.saturating_sub(*a) as f64 / s)
            .collect(),
    ))
}

/// The exits per second kvmtop adds to running guests, per mode.
fn exits(args: &Args, bin: &Path, work: &Path) -> Result<()> {
    let names: Vec<String> = (1..=args.exits_guests.max(2))
        .map(|i| format!("ex{i}"))
        .collect();
    let fx = start_fixture(bin, args, &names, args.exits_busy, &work.join("exits"))?;
    std::thread::sleep(Duration::from_secs(2));
    let pids: Vec<u32> = fx.guests.iter().map(|g| g.1).collect();
    let profiled = &fx.guests[0].0;
    let kallsyms = fx.dir.join("kallsyms");
    let mut tracker = Tracker::new(kvmreg::Config::default());
    let window = Duration::from_secs_f64(args.exits_window);
    let modes: [(&str, Vec<String>); 4] = [
        ("no tool", vec![]),
        ("kvmtop -b", vec!["-b".into()]),
        ("kvmtop -b --sample", vec!["-b".into(), "--sample".into()]),
        (
            "kvmtop profile (another guest)",
            vec![
                "profile".into(),
                "-b".into(),
                "-g".into(),
                profiled.clone(),
                "--guestkallsyms".into(),
                kallsyms.display().to_string(),
            ],
        ),
    ];
    // Added exits/s per guest, per mode (vs "no tool" in the same round);
    // for the profile mode also the profiled guest's.
    let mut added: Vec<Vec<f64>> = vec![Vec::new(); modes.len() + 1];
    // Interrupts per second each mode adds, by kind, per round.
    let mut irqs_added: Vec<Vec<Vec<f64>>> = vec![vec![Vec::new(); IRQ_KINDS.len()]; modes.len()];
    let mut counter = "exits";
    for round in 0..args.exits_rounds {
        let mut rates = vec![Vec::new(); modes.len()];
        let mut irqs = vec![Vec::new(); modes.len()];
        for k in 0..modes.len() {
            let m = (k + round) % modes.len();
            let mut tool = None;
            if !modes[m].1.is_empty() {
                let child = Command::new(bin.join("kvmtop"))
                    .args(&modes[m].1)
                    .args(["-n", "100000", "-d", "1"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn()
                    .context("cannot start kvmtop")?;
                tool = Some(child);
                // Past its start: the steady state is measured.
                std::thread::sleep(Duration::from_secs(2));
            }
            let r = exit_rates(&mut tracker, &pids, window).map(|(r, name, i)| {
                counter = name;
                irqs[m] = i;
                r
            });
            if let Some(mut c) = tool {
                let still = c.try_wait()?.is_none();
                let _ = c.kill();
                let _ = c.wait();
                if !still {
                    bail!("kvmtop ({}) stopped during the window", modes[m].0);
                }
            }
            rates[m] = r?;
        }
        let others = |v: &[f64]| v[1..].iter().sum::<f64>() / (v.len() - 1) as f64;
        for m in 1..modes.len() {
            added[m - 1].push(others(&rates[m]) - others(&rates[0]));
        }
        added[modes.len()].push(rates[3][0] - rates[0][0]);
        for m in 1..modes.len() {
            for k in 0..IRQ_KINDS.len() {
                irqs_added[m][k].push(irqs[m][k] - irqs[0][k]);
            }
        }
        if round == 0 {
            println!(
                "# {counter}/s per guest without a tool (first round): {:.0} (guests busy {}%)",
                others(&rates[0]),
                args.exits_busy
            );
        }
    }
    println!(
        "# {counter}/s kvmtop adds per guest ({} guests running on {} CPUs, {} s windows; median [95% interval]):",
        pids.len(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        args.exits_window
    );
    // Without --sample kvmtop must add nothing: the interval reaches 0.
    let mut none_added = true;
    for (m, (name, _)) in modes.iter().enumerate().skip(1) {
        let (lo, _, _) = show(&format!("{name}: not profiled"), added[m - 1].clone(), "/s");
        if *name != "kvmtop -b --sample" && lo > 0.0 {
            none_added = false;
        }
    }
    show(
        "kvmtop profile: the profiled guest",
        added[modes.len()].clone(),
        "/s",
    );
    // Which host interrupts a tool adds (all CPUs, per second, vs no
    // tool): what can stop a guest's vCPU besides its own exits.
    println!("# host interrupts/s each tool adds, all CPUs (median of the rounds):");
    for (m, (name, _)) in modes.iter().enumerate().skip(1) {
        let cells: Vec<String> = IRQ_KINDS
            .iter()
            .zip(&irqs_added[m])
            .map(|(k, v)| format!("{k} {:+.0}", median_ci(v.clone()).1))
            .collect();
        println!("#   {name:<32} {}", cells.join("  "));
    }
    println!(
        "# goal: kvmtop adds no exits to a guest it does not profile: {}",
        if none_added {
            "met (0 in the interval)"
        } else {
            "not met"
        }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{strace_calls, verdict};

    #[test]
    fn strace_totals_are_read_with_and_without_an_errors_column() {
        let summary = "% time     seconds  usecs/call     calls    errors syscall\n\
            ------ ----------- ----------- --------- --------- ----------------\n \
            60.00    0.000600           2       300           pread64\n\
            ------ ----------- ----------- --------- --------- ----------------\n\
            100.00    0.001000           1      1234        56 total\n";
        assert_eq!(strace_calls(summary).unwrap(), 1234.0);
        let no_errors = "100.00    0.001000           1       777           total\n";
        assert_eq!(strace_calls(no_errors).unwrap(), 777.0);
        assert!(strace_calls("no summary at all\n").is_err());
        assert!(strace_calls("100.00 0.1 total\n").is_err());
    }

    #[test]
    fn goals_are_judged_by_the_whole_interval() {
        assert_eq!(verdict(1.5, 1.9, 2.0), "met");
        assert_eq!(verdict(2.1, 2.9, 2.0), "not met");
        assert!(verdict(1.8, 2.5, 2.0).starts_with("undecided"));
    }
}
