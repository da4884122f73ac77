//! `kvmreg-enum-bench`: how long finding every VM of a host takes, by each
//! way there is, with N VMs among decoy processes that hold many fds
//! (Documentation/benchmarks.md). Not a test: it checks only that every
//! method found exactly the VMs it made, since timing a wrong answer means
//! nothing.
//!
//! Each VM is owned by a process of its own (as with qemu), forked from this
//! one; the decoys are forked too and hold `--decoy-fds` open files. The
//! methods, each timed as the median of `--reps` runs:
//! - `proc-kvm`: `readdir(/proc/kvm)` and `readlink` of each entry (the
//!   registry; gives name, pid and id);
//! - `fd-scan`: `readdir(/proc)`, then every process' `fd/` and a `readlink`
//!   of every fd, looking for `anon_inode:kvm-vm` (what works on any kernel);
//! - `debugfs`: `readdir(<debugfs>/kvm)`, names `<pid>-<fd>` (root only);
//! - `lib-registry`, `lib-fd-scan`: the kvmreg library's backends, which
//!   also read status, vCPUs and fdinfo: what kvmtop pays per refresh;
//! - `kvm_stat`: the upstream tool's own discovery, in its Python process
//!   (see `kvm_stat_discovery.py`), when `--kvm-stat` names the script.

mod children;

use anyhow::{bail, Context, Result};
use children::{create_vm, open_decoy_fds, Children};
use clap::Parser;
use kvmreg::backend::{fd_scan, proc_kvm};
use kvmreg::procfs::ProcRoot;
use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Times VM enumeration: /proc/kvm vs fd scanning vs debugfs vs kvm_stat")]
struct Args {
    /// VM counts to measure, in increasing order.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100,1000")]
    vms: Vec<usize>,
    /// Decoy processes (no VM).
    #[arg(long, default_value_t = 500)]
    decoys: usize,
    /// Open files each decoy holds.
    #[arg(long, default_value_t = 50)]
    decoy_fds: usize,
    /// Timed runs per method and count (the median is reported).
    #[arg(long, default_value_t = 11)]
    reps: usize,
    /// Where debugfs is (mounted there if it is not).
    #[arg(long, default_value = "/sys/kernel/debug")]
    debugfs: PathBuf,
    /// The upstream kvm_stat script (tools/kvm/kvm_stat/kvm_stat).
    #[arg(long)]
    kvm_stat: Option<PathBuf>,
}

/// `readdir(/proc/kvm)` + `readlink`: the owner pids of the visible VMs.
fn registry_raw() -> Result<Vec<u32>> {
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc/kvm").context("/proc/kvm")? {
        let Ok(e) = e else { continue };
        let Ok(target) = fs::read_link(e.path()) else {
            continue;
        };
        // ../<pid>/kvm/<id>
        let t = target.to_string_lossy();
        if let Some(pid) = t.split('/').nth(1).and_then(|p| p.parse().ok()) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// Every process' fds, `readlink` of each: pids holding a VM fd.
fn fd_scan_raw() -> Result<Vec<u32>> {
    let mut pids = Vec::new();
    for e in fs::read_dir("/proc").context("/proc")? {
        let Ok(e) = e else { continue };
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if fs::read_link(fd.path())
                .map(|t| t.as_os_str() == "anon_inode:kvm-vm")
                .unwrap_or(false)
            {
                pids.push(pid);
            }
        }
    }
    Ok(pids)
}

/// `readdir(<debugfs>/kvm)`: `<pid>-<fd>` directories.
fn debugfs_raw(debugfs: &Path) -> Result<Vec<u32>> {
    let mut pids = Vec::new();
    let dir = debugfs.join("kvm");
    for e in fs::read_dir(&dir).with_context(|| dir.display().to_string())? {
        let Ok(e) = e else { continue };
        let name = e.file_name();
        let name = name.to_string_lossy();
        if let Some((pid, _fd)) = name.split_once('-') {
            if let Ok(pid) = pid.parse() {
                pids.push(pid);
            }
        }
    }
    Ok(pids)
}

fn lib_registry() -> Result<Vec<u32>> {
    Ok(proc_kvm::scan(&ProcRoot::default())
        .guests
        .iter()
        .map(|g| g.pid)
        .collect())
}

fn lib_fd_scan() -> Result<Vec<u32>> {
    Ok(fd_scan::scan(&ProcRoot::default())
        .guests
        .iter()
        .map(|g| g.pid)
        .collect())
}

/// Runs `f` `reps` times; the median in milliseconds, after checking that
/// each run found exactly the VMs of `want` (other VMs of the host are
/// ignored, ours must all be there, once each).
fn time_method(
    name: &str,
    reps: usize,
    want: &BTreeSet<u32>,
    mut f: impl FnMut() -> Result<Vec<u32>>,
) -> Result<f64> {
    let mut times = Vec::with_capacity(reps);
    for _ in 0..reps {
        let t = Instant::now();
        let found = f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        let ours: Vec<u32> = found.into_iter().filter(|p| want.contains(p)).collect();
        let distinct: BTreeSet<u32> = ours.iter().copied().collect();
        if ours.len() != want.len() || distinct.len() != want.len() {
            bail!(
                "{name} found {} of our {} VMs ({} distinct owners)",
                ours.len(),
                want.len(),
                distinct.len()
            );
        }
    }
    times.sort_by(f64::total_cmp);
    Ok(times[times.len() / 2])
}

fn kvm_stat_ms(script: &Path, reps: usize, n: usize) -> Result<f64> {
    let helper = std::env::temp_dir().join("kvmreg-kvm-stat-discovery.py");
    fs::write(&helper, include_str!("kvm_stat_discovery.py"))?;
    let out = Command::new("python3")
        .arg(&helper)
        .arg(script)
        .arg(reps.to_string())
        .output()
        .context("cannot run python3 for kvm_stat")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "kvm_stat discovery failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let field = |k: &str| {
        text.split_whitespace()
            .find_map(|w| w.strip_prefix(k))
            .map(str::to_string)
    };
    let dirs: usize = field("vm_dirs=").and_then(|v| v.parse().ok()).unwrap_or(0);
    if dirs < n {
        bail!("kvm_stat saw {dirs} VM directories, fewer than our {n} VMs: {text}");
    }
    field("median_ms=")
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("unexpected kvm_stat helper output: {text}"))
}

fn ensure_debugfs(debugfs: &Path) {
    if debugfs.join("kvm").exists() {
        return;
    }
    let _ = Command::new("mount")
        .args(["-t", "debugfs", "debugfs"])
        .arg(debugfs)
        .status();
}

fn main() {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => {}
        Err(e) => {
            println!("not ok 1 enumeration benchmark: {e:#}");
            std::process::exit(1);
        }
    }
}

fn run(args: &Args) -> Result<()> {
    println!("TAP version 13");
    println!("1..1");
    if !Path::new("/proc/kvm").is_dir() {
        println!(
            "ok 1 enumeration benchmark # SKIP this kernel has no /proc/kvm (the registry series)"
        );
        return Ok(());
    }
    ensure_debugfs(&args.debugfs);
    // Decoys and VMM children: enough fds for all of them here is not
    // needed (each child holds its own), but the pipes are ours.
    let mut children = Children::new()?;
    let t = Instant::now();
    for _ in 0..args.decoys {
        children.spawn(open_decoy_fds, args.decoy_fds)?;
    }
    println!(
        "# {} decoy processes with {} open files each, started in {:.1} s",
        args.decoys,
        args.decoy_fds,
        t.elapsed().as_secs_f64()
    );
    let mut vmms = BTreeSet::new();
    println!(
        "# {:>5} {:>10} {:>10} {:>10} {:>12} {:>12} {:>10}  (median ms of {} runs; x = ratio to proc-kvm)",
        "VMs", "proc-kvm", "fd-scan", "debugfs", "lib-registry", "lib-fd-scan", "kvm_stat", args.reps
    );
    let mut results = Vec::new();
    for &n in &args.vms {
        while vmms.len() < n {
            vmms.insert(children.spawn(create_vm, 1)?);
        }
        let reps = args.reps;
        let reg = time_method("proc-kvm", reps, &vmms, registry_raw)?;
        let fds = time_method("fd-scan", reps, &vmms, fd_scan_raw)?;
        let dbg = time_method("debugfs", reps, &vmms, || debugfs_raw(&args.debugfs))?;
        let lreg = time_method("lib-registry", reps, &vmms, lib_registry)?;
        let lfds = time_method("lib-fd-scan", reps.min(5), &vmms, lib_fd_scan)?;
        let kst = match &args.kvm_stat {
            Some(script) => Some(kvm_stat_ms(script, reps.min(5), n)?),
            None => None,
        };
        // Two significant digits below 10: a method faster than /proc/kvm
        // must not print as "0x".
        let x = |v: f64| match v / reg {
            r if r < 10.0 => format!("{v:.2}/{r:.2}x"),
            r => format!("{v:.2}/{r:.0}x"),
        };
        println!(
            "# {n:>5} {reg:>10.3} {:>10} {:>10} {:>12} {:>12} {:>10}",
            x(fds),
            x(dbg),
            x(lreg),
            x(lfds),
            kst.map(x).unwrap_or_else(|| "-".into())
        );
        results.push((n, reg, fds));
    }
    if let Some(&(n, reg, fds)) = results.last() {
        println!(
            "# at {n} VMs /proc/kvm was {:.0}x faster than fd scanning (goal: >= 50x)",
            fds / reg
        );
    }
    drop(children);
    println!("ok 1 enumeration benchmark: every method found every VM");
    Ok(())
}
