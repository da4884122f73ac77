//! `kvmreg-registry-bench`: what the registry's listings and lookups cost as
//! the number of VMs grows, each beside its floor or baseline measured in
//! the same run, in interleaved rounds (Documentation/benchmarks.md). Not a
//! test: it checks only that each method saw every VM it made.
//!
//! Setup: `--decoys` processes holding `--decoy-fds` open files each, then
//! VMM processes holding `--per-vmm` VMs each, up to each of `--vms`. For
//! every count, `--rounds` rounds, each timing (in an order that alternates
//! from round to round):
//! - `readdir`: a bare `readdir` of `/proc/kvm` (no `readlink`), against its
//!   floor, a bare `readdir` of `<debugfs>/kvm` (the same VMs, one
//!   directory entry each, dentries that exist anyway);
//! - `.list`: open and read `/proc/kvm/.list` to the end, against the fd
//!   scan of the whole machine (`readlink` of every fd of every process),
//!   what finding VMs costs without the registry;
//! - `lookup-id`: `stat` of `/proc/<pid>/kvm/<id>` for `--lookups` VMs, after
//!   dropping the dentry cache (so each is a lookup), against the floor
//!   `stat` of `/proc/<pid>/stat` for the same owners, also uncached;
//! - `lookup-name`: `stat` of `/proc/kvm/<name>` (never cached: every one is
//!   a lookup) for the same VMs, against the same floor.
//!
//! Each figure is the median over rounds with a distribution-free 95%
//! interval of the median (order statistics of the binomial); ratios are
//! taken per round, then summarised the same way.

#[path = "enum_bench/children.rs"]
mod children;

use anyhow::{bail, Context, Result};
use children::{create_vm, open_decoy_fds, Children};
use clap::Parser;
use kvmreg_fixture::bench::median_ci;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Times /proc/kvm listings and lookups against their floors as VMs grow")]
struct Args {
    /// VM counts to measure, in increasing order.
    #[arg(long, value_delimiter = ',', default_value = "10,1000,4000")]
    vms: Vec<usize>,
    /// VMs per VMM process (1, as with qemu: one process per guest).
    #[arg(long, default_value_t = 1)]
    per_vmm: usize,
    /// Decoy processes (no VM).
    #[arg(long, default_value_t = 500)]
    decoys: usize,
    /// Open files each decoy holds.
    #[arg(long, default_value_t = 50)]
    decoy_fds: usize,
    /// Interleaved rounds per count (21: the 95% interval of the median
    /// is then the 6th to the 16th value, not the 2nd to the 10th of 11).
    #[arg(long, default_value_t = 21)]
    rounds: usize,
    /// Lookups timed per round.
    #[arg(long, default_value_t = 200)]
    lookups: usize,
    /// Where debugfs is (mounted there if it is not).
    #[arg(long, default_value = "/sys/kernel/debug")]
    debugfs: PathBuf,
}

/// One VM as the benchmark addresses it.
struct Vm {
    pid: u32,
    id: u64,
    link: String,
}

/// The VMs of our VMM processes, from `/proc/kvm/.list`.
fn our_vms(owners: &std::collections::BTreeSet<u32>) -> Result<Vec<Vm>> {
    let text = fs::read_to_string("/proc/kvm/.list").context("/proc/kvm/.list")?;
    let mut vms = Vec::new();
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let (Some(id), Some(pid), Some(link)) = (f.first(), f.get(1), f.get(6)) else {
            bail!("/proc/kvm/.list: bad line {line:?}");
        };
        let pid: u32 = pid
            .parse()
            .with_context(|| format!("bad pid in {line:?}"))?;
        if owners.contains(&pid) {
            vms.push(Vm {
                pid,
                id: id.parse().with_context(|| format!("bad id in {line:?}"))?,
                link: link.to_string(),
            });
        }
    }
    Ok(vms)
}

/// Entries of a directory, without looking at them (a bare readdir).
fn count_entries(dir: &Path) -> Result<usize> {
    Ok(fs::read_dir(dir)
        .with_context(|| dir.display().to_string())?
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| !e.file_name().as_encoded_bytes().starts_with(b"."))
        })
        .count())
}

/// Lines of `/proc/kvm/.list`, read whole.
fn list_lines() -> Result<usize> {
    Ok(fs::read("/proc/kvm/.list")
        .context("/proc/kvm/.list")?
        .iter()
        .filter(|&&b| b == b'\n')
        .count())
}

/// VM fds found by a `readlink` of every fd of every process.
fn fd_scan() -> Result<usize> {
    let mut n = 0;
    for e in fs::read_dir("/proc").context("/proc")? {
        let Ok(e) = e else { continue };
        if !e
            .file_name()
            .as_encoded_bytes()
            .iter()
            .all(u8::is_ascii_digit)
        {
            continue;
        }
        let Ok(fds) = fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:kvm-vm") {
                n += 1;
            }
        }
    }
    Ok(n)
}

/// Frees unused dentries and inodes, so that the next path walk looks up.
fn drop_dentries() -> Result<()> {
    fs::write("/proc/sys/vm/drop_caches", "2").context("drop_caches (needs root)")
}

/// Microseconds per `stat` of each path, which must exist.
fn stat_each(paths: &[String]) -> Result<f64> {
    let t = Instant::now();
    for p in paths {
        fs::symlink_metadata(p).with_context(|| format!("stat {p}"))?;
    }
    Ok(t.elapsed().as_secs_f64() * 1e6 / paths.len() as f64)
}

/// Seconds that `f` takes, with what it returned.
fn timed<T>(f: impl FnOnce() -> Result<T>) -> Result<(f64, T)> {
    let t = Instant::now();
    let v = f()?;
    Ok((t.elapsed().as_secs_f64(), v))
}

fn show(name: &str, v: Vec<f64>) -> (f64, f64, f64) {
    let (lo, med, hi) = median_ci(v);
    println!("#   {name:<34} {med:>10.3}  [{lo:.3}, {hi:.3}]");
    (lo, med, hi)
}

fn ensure_debugfs(debugfs: &Path) {
    if debugfs.join("kvm").exists() {
        return;
    }
    let _ = std::process::Command::new("mount")
        .args(["-t", "debugfs", "debugfs"])
        .arg(debugfs)
        .status();
}

fn main() {
    let args = Args::parse();
    println!("TAP version 13");
    println!("1..1");
    match run(&args) {
        Ok(true) => println!("ok 1 registry benchmark: every method saw every VM"),
        Ok(false) => {
            println!("ok 1 registry benchmark # SKIP this kernel has no /proc/kvm/.list")
        }
        Err(e) => {
            println!("not ok 1 registry benchmark: {e:#}");
            std::process::exit(1);
        }
    }
}

/// Per count: the medians and intervals by name, for the summary.
type Figures = BTreeMap<&'static str, (f64, f64, f64)>;

fn run(args: &Args) -> Result<bool> {
    if !Path::new("/proc/kvm/.list").exists() {
        return Ok(false);
    }
    ensure_debugfs(&args.debugfs);
    let dbg_dir = args.debugfs.join("kvm");
    let mut children = Children::new()?;
    for _ in 0..args.decoys {
        children.spawn(open_decoy_fds, args.decoy_fds)?;
    }
    println!(
        "# {} decoys x {} open files, VMM processes with {} VMs each, {} rounds, {} lookups a round",
        args.decoys, args.decoy_fds, args.per_vmm, args.rounds, args.lookups
    );
    let mut owners = std::collections::BTreeSet::new();
    let mut made = 0;
    let mut all: BTreeMap<usize, Figures> = BTreeMap::new();
    for &n in &args.vms {
        while made < n {
            let k = args.per_vmm.min(n - made);
            owners.insert(children.spawn(create_vm, k)?);
            made += k;
        }
        let vms = our_vms(&owners)?;
        if vms.len() != n {
            bail!("/proc/kvm/.list shows {} of our {n} VMs", vms.len());
        }
        // The same VMs for every round, spread over the id range.
        let step = (vms.len() / args.lookups.max(1)).max(1);
        let picks: Vec<&Vm> = vms.iter().step_by(step).take(args.lookups).collect();
        let by_id: Vec<String> = picks
            .iter()
            .map(|v| format!("/proc/{}/kvm/{}", v.pid, v.id))
            .collect();
        let by_name: Vec<String> = picks
            .iter()
            .map(|v| format!("/proc/kvm/{}", v.link))
            .collect();
        let floor: Vec<String> = picks
            .iter()
            .map(|v| format!("/proc/{}/stat", v.pid))
            .collect();

        let mut s: BTreeMap<&'static str, Vec<f64>> = BTreeMap::new();
        for round in 0..args.rounds {
            // Alternate which of each pair goes first.
            let flip = round % 2 == 1;
            let mut pair = |a: &'static str,
                            fa: &mut dyn FnMut() -> Result<usize>,
                            b: &'static str,
                            fb: &mut dyn FnMut() -> Result<usize>|
             -> Result<()> {
                let ((ta, na), (tb, nb)) = if flip {
                    let rb = timed(&mut *fb)?;
                    (timed(&mut *fa)?, rb)
                } else {
                    let ra = timed(&mut *fa)?;
                    (ra, timed(&mut *fb)?)
                };
                if na < n || nb < n {
                    bail!("{a} saw {na}, {b} saw {nb} of our {n} VMs");
                }
                s.entry(a).or_default().push(ta * 1e3);
                s.entry(b).or_default().push(tb * 1e3);
                Ok(())
            };
            pair(
                "readdir /proc/kvm (ms)",
                &mut || count_entries(Path::new("/proc/kvm")),
                "readdir debugfs kvm (ms)",
                &mut || count_entries(&dbg_dir),
            )?;
            pair(
                "read /proc/kvm/.list (ms)",
                &mut list_lines,
                "fd scan (ms)",
                &mut fd_scan,
            )?;
            let mut lookups = |name: &'static str, paths: &[String]| -> Result<()> {
                drop_dentries()?;
                s.entry(name).or_default().push(stat_each(paths)?);
                Ok(())
            };
            let order: [(&'static str, &[String]); 3] = [
                ("stat /proc/<pid>/stat (us)", &floor),
                ("stat /proc/<pid>/kvm/<id> (us)", &by_id),
                ("stat /proc/kvm/<name> (us)", &by_name),
            ];
            for i in 0..3 {
                let (name, paths) = order[if flip { 2 - i } else { i }];
                lookups(name, paths)?;
            }
        }
        let ratio =
            |a: &str, b: &str| -> Vec<f64> { s[a].iter().zip(&s[b]).map(|(x, y)| x / y).collect() };
        println!(
            "# {n} VMs: median [95% interval of the median] over {} rounds",
            args.rounds
        );
        let mut fig = Figures::new();
        for (name, v) in &s {
            fig.insert(name, show(name, v.clone()));
        }
        fig.insert(
            "readdir ratio",
            show(
                "readdir /proc/kvm / debugfs (x)",
                ratio("readdir /proc/kvm (ms)", "readdir debugfs kvm (ms)"),
            ),
        );
        fig.insert(
            "list ratio",
            show(
                "fd scan / .list (x faster)",
                ratio("fd scan (ms)", "read /proc/kvm/.list (ms)"),
            ),
        );
        all.insert(n, fig);
    }
    summary(&all);
    drop(children);
    Ok(true)
}

/// The goals of the registry series, each said met only when the interval
/// says so.
fn summary(all: &BTreeMap<usize, Figures>) {
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    if let Some(f) = all.get(&1000) {
        let (_, med, hi) = f["readdir ratio"];
        println!(
            "# goal readdir /proc/kvm within 2x debugfs at 1000 VMs: {med:.2}x, interval up to {hi:.2}x: {}",
            verdict(hi <= 2.0)
        );
    }
    for n in [1000, 4000] {
        if let Some(f) = all.get(&n) {
            let (lo, med, _) = f["list ratio"];
            println!(
                "# goal .list >= 300x faster than the fd scan at {n} VMs: {med:.0}x, interval down to {lo:.0}x: {}",
                verdict(lo >= 300.0)
            );
        }
    }
    if let (Some(first), Some(last)) = (all.iter().next(), all.iter().next_back()) {
        for key in [
            "stat /proc/<pid>/kvm/<id> (us)",
            "stat /proc/kvm/<name> (us)",
        ] {
            let (lo_a, med_a, _) = first.1[key];
            let (_, med_b, hi_b) = last.1[key];
            println!(
                "# goal {key} flat from {} to {} VMs (within 1.5x): {:.2}x, at worst {:.2}x: {}",
                first.0,
                last.0,
                med_b / med_a,
                hi_b / lo_a,
                verdict(hi_b / lo_a <= 1.5)
            );
        }
    }
}
