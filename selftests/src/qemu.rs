//! `harness run`: boot a kernel under QEMU (software emulation) and judge
//! what comes back.
//!
//! The VM's root is the host's `/`, shared read-only over 9p (as virtme-ng
//! does): the payloads, their libraries, and the Debian qemu used as a real
//! KVM client inside the VM need no copying and no image. The run directory
//! is shared read-write for results. The verdict combines three things the
//! guest cannot fake for one another: the per-test points of
//! `summary.json`, the `isa-debug-exit` status, and the splat scan of the
//! console log.

use crate::guest::{self, GUEST_FAIL, GUEST_INIT_ERROR, GUEST_PASS, OUT_TAG};
use crate::kernel::{Config, Kernel};
use crate::splat;
use crate::suites::{Plan, Summary};
use crate::tap::{self, Counts, Outcome, TestPoint};
use anyhow::{bail, Context, Result};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The outcome of one boot.
pub struct RunResult {
    pub dir: PathBuf,
    pub points: Vec<TestPoint>,
    pub counts: Counts,
}

/// Seconds allowed for boot and shutdown around the suites.
fn boot_allowance(config: Config) -> u64 {
    match config {
        Config::Fast => 60,
        Config::Debug => 180,
    }
}

/// The test VM's memory; `KVMREG_MEMORY` (QEMU's `-m` syntax, e.g. `8G`)
/// overrides it for benchmarks that start a thousand VMMs.
fn memory(config: Config) -> String {
    if let Ok(m) = std::env::var("KVMREG_MEMORY") {
        return m;
    }
    match config {
        Config::Fast => "2G",
        Config::Debug => "3G",
    }
    .to_string()
}

/// The test VM's CPUs: 2, or `KVMREG_CPUS` (1 to 16) for a benchmark that
/// must tell contention for the test VM's CPUs from what a tool does; 1
/// for suites that need it ([`crate::suites::SuiteRun::one_cpu`]), which
/// then cannot share a boot with others.
fn cpus(plan: &Plan) -> Result<String> {
    let one = plan.suites.iter().filter(|s| s.one_cpu).count();
    if one > 0 {
        if one < plan.suites.len() {
            let names: Vec<_> = plan
                .suites
                .iter()
                .filter(|s| s.one_cpu)
                .map(|s| s.name.as_str())
                .collect();
            bail!(
                "{} need a one-CPU test VM: run them on their own (cargo xtask run {})",
                names.join(", "),
                names.join(" ")
            );
        }
        return Ok("1".into());
    }
    match std::env::var("KVMREG_CPUS") {
        Err(_) => Ok("2".into()),
        Ok(n) => match n.parse::<u32>() {
            Ok(c @ 1..=16) => Ok(c.to_string()),
            _ => bail!("KVMREG_CPUS={n}: give the test VM's CPU count, 1 to 16"),
        },
    }
}

/// A fresh run directory: `runs/<config>-<tree>-<unix time>`, and `runs/latest`.
fn new_run_dir(kernel: &Kernel) -> Result<PathBuf> {
    let runs = crate::paths::build_dir().join("runs");
    fs::create_dir_all(&runs)?;
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis();
    let dir = runs.join(format!(
        "{}-{}-{now}",
        kernel.config.name(),
        kernel.tree.name()
    ));
    fs::create_dir_all(&dir)?;
    let latest = runs.join("latest");
    let _ = fs::remove_file(&latest);
    let _ = std::os::unix::fs::symlink(dir.file_name().unwrap_or_default(), &latest);
    Ok(dir)
}

/// The host directories the guest must see that lie under its scratch
/// tmpfs mounts ([`crate::guest::SCRATCH_DIRS`]): the checkout, the build
/// directory (which holds the run directory) and cargo's target directory,
/// outermost only.
fn kept_dirs() -> Result<Vec<PathBuf>> {
    let exe = std::env::current_exe()?;
    // <target>/debug/harness -> <target>
    let target = exe.parent().and_then(Path::parent).unwrap_or(&exe);
    let mut dirs = Vec::new();
    for p in [
        crate::paths::repo_root(),
        crate::paths::build_dir(),
        target.to_path_buf(),
    ] {
        let p = fs::canonicalize(&p).with_context(|| format!("cannot resolve {}", p.display()))?;
        dirs.push(p);
    }
    Ok(outermost_under_scratch(dirs))
}

/// Those of `dirs` under a scratch directory, without any that lies inside
/// another.
fn outermost_under_scratch(mut dirs: Vec<PathBuf>) -> Vec<PathBuf> {
    dirs.retain(|d| {
        crate::guest::SCRATCH_DIRS
            .iter()
            .any(|(s, _)| d.starts_with(s) && d != Path::new(s))
    });
    dirs.sort();
    dirs.dedup();
    let all = dirs.clone();
    dirs.retain(|d| !all.iter().any(|o| o != d && d.starts_with(o)));
    dirs
}

/// `KVMREG_ICOUNT=1`: QEMU counts instructions for the guest's clock
/// (`-icount shift=0,sleep=off`, one instruction a nanosecond, idle time
/// skipped), so that times measured inside the test VM depend on the
/// instructions executed, not on how busy the host is: for benchmarks that
/// compare boots (`selftests/bench_lifecycle.sh`). Caches and memory
/// latency are not modelled: such times count instructions, not cycles.
fn icount_args() -> Vec<&'static str> {
    match std::env::var("KVMREG_ICOUNT").as_deref() {
        Ok("1") => vec!["-icount", "shift=0,sleep=off"],
        _ => Vec::new(),
    }
}

/// QEMU's debug log in the run directory (`-d cpu_reset`).
const QEMU_LOG: &str = "qemu-debug.log";

/// Boots `kernel` with `plan.suites` and returns the judged results.
pub fn run(kernel: &Kernel, mut plan: Plan, quiet: bool) -> Result<RunResult> {
    let dir = new_run_dir(kernel)?;
    plan.out_dir = dir.clone();
    plan.keep = kept_dirs()?;
    plan.modules = kernel.modules.clone();
    let plan_path = dir.join("plan.json");
    fs::write(&plan_path, serde_json::to_string_pretty(&plan)?)?;
    // The guest's init is a copy of this binary in the run directory, so a
    // rebuild of the workspace during a run cannot pull it away.
    let harness = dir.join("harness-init");
    // /proc/self/exe, not current_exe(): building the workspace's payloads
    // may have replaced the file this process was started from.
    fs::copy("/proc/self/exe", &harness)
        .context("cannot copy the harness binary into the run directory")?;
    let timeout =
        plan.suites.iter().map(|s| s.timeout_secs).sum::<u64>() + boot_allowance(kernel.config);
    // pci=noacpi: PCI interrupts are routed from the BIOS's table, not by
    // running the ACPI _PRT method, which under TCG, KASAN and a loaded
    // host hit ACPI's 30 s loop timeout, left virtio-9p without an IRQ and
    // hung the boot. ACPI itself stays on (the TSC needs HPET/PM timer).
    let append = format!(
        "console=ttyS0 panic=-1 loglevel=6 pci=noacpi \
         root=/dev/root rootfstype=9p rootflags=trans=virtio,version=9p2000.L,msize=262144,cache=mmap ro \
         init={} -- guest-init {}",
        harness.display(),
        plan_path.display()
    );
    let mut cmd = Command::new("qemu-system-x86_64");
    // thread=single: one host thread runs both vCPUs. With QEMU's default
    // multi-threaded TCG, its nested SVM now and then turned an exception
    // delivery into a triple fault (see Documentation/harness.md).
    cmd.args([
        "-accel",
        "tcg,thread=single",
        "-cpu",
        "max",
        "-smp",
        &cpus(&plan)?,
        "-m",
        &memory(kernel.config),
    ])
    .args(icount_args())
    .args([
        "-nodefaults",
        "-no-reboot",
        "-display",
        "none",
        "-serial",
        "stdio",
    ])
    .arg("-kernel")
    .arg(&kernel.bzimage)
    .arg("-append")
    .arg(&append)
    .args([
        "-fsdev",
        "local,id=root,path=/,security_model=none,readonly=on",
    ])
    .args(["-device", "virtio-9p-pci,fsdev=root,mount_tag=/dev/root"])
    .arg("-fsdev")
    .arg(format!(
        "local,id=out,path={},security_model=none",
        dir.display()
    ))
    .arg("-device")
    .arg(format!("virtio-9p-pci,fsdev=out,mount_tag={OUT_TAG}"))
    .args(["-device", "isa-debug-exit,iobase=0xf4,iosize=0x04"])
    // QEMU's own record of CPU resets: a test VM that triple-faults leaves
    // no oops on the console, only "Triple fault" here (with -no-reboot,
    // QEMU then just exits).
    .args(["-d", "cpu_reset"])
    .arg("-D")
    .arg(dir.join(QEMU_LOG))
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    eprintln!(
        "run: booting {} ({} {}, {}) with {} suite(s), timeout {timeout} s; results in {}",
        kernel.release,
        kernel.tree.name(),
        kernel.config.name(),
        kernel.base,
        plan.suites.len(),
        dir.display()
    );
    fs::write(dir.join("qemu.cmdline"), crate::cmd::show(&cmd))?;
    let started = Instant::now();
    let mut child = cmd
        .spawn()
        .context("cannot start qemu-system-x86_64: run `cargo xtask deps`")?;
    let console_path = dir.join("console.log");
    let mut console = File::create(&console_path)?;
    let stdout = child.stdout.take().context("qemu stdout")?;
    let stderr = child.stderr.take().context("qemu stderr")?;
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            s.push_str(&line);
            s.push('\n');
        }
        s
    });
    let out_thread = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        while reader
            .read_until(b'\n', &mut buf)
            .map(|n| n > 0)
            .unwrap_or(false)
        {
            let _ = console.write_all(&buf);
            if !quiet {
                let _ = std::io::stderr().write_all(&buf);
            }
            buf.clear();
        }
    });
    let deadline = started + Duration::from_secs(timeout);
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break Some(s);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = out_thread.join();
    let qemu_stderr = err_thread.join().unwrap_or_default();
    let elapsed = started.elapsed();
    let log = fs::read_to_string(&console_path).unwrap_or_default();
    let mut points = judge_run(
        &dir,
        status.and_then(|s| s.code()),
        timeout,
        &log,
        &qemu_stderr,
    );
    if fs::read_to_string(dir.join(QEMU_LOG)).is_ok_and(|l| l.contains("Triple fault")) {
        points.push(TestPoint {
            name: "the test VM triple-faulted and was reset".into(),
            outcome: Outcome::Fail,
            note: Some(format!("QEMU's log: {}", dir.join(QEMU_LOG).display())),
        });
    }
    let counts = Counts::of(&points);
    fs::write(dir.join("results.tap"), tap::render(&points))?;
    eprintln!(
        "run: VM ran {:.1} s; console log {}",
        elapsed.as_secs_f64(),
        console_path.display()
    );
    Ok(RunResult {
        dir,
        points,
        counts,
    })
}

/// Combines the guest's summary, QEMU's exit status and the splat scan.
fn judge_run(
    dir: &Path,
    qemu_code: Option<i32>,
    timeout: u64,
    log: &str,
    qemu_stderr: &str,
) -> Vec<TestPoint> {
    let fail = |name: String| TestPoint {
        name,
        outcome: Outcome::Fail,
        note: None,
    };
    let summary: Option<Summary> = fs::read_to_string(dir.join("summary.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok());
    let mut points = Vec::new();
    match &summary {
        Some(s) => {
            points.extend(s.points.iter().cloned());
            if let Some(e) = &s.init_error {
                points.push(guest::init_error_point(e));
            }
        }
        None => points.push(fail(
            "the guest wrote no summary (kernel panic, init crash or timeout)".into(),
        )),
    }
    let guest_failed = summary.as_ref().is_some_and(|s| {
        s.init_error.is_some() || s.points.iter().any(|p| p.outcome == Outcome::Fail)
    });
    let want = if guest_failed { GUEST_FAIL } else { GUEST_PASS };
    match qemu_code {
        None => points.push(fail(format!("the VM timed out after {timeout} s"))),
        Some(c) if c == (i32::from(want) << 1 | 1) => {}
        Some(c) if c == (i32::from(GUEST_INIT_ERROR) << 1 | 1) => {}
        Some(c) => points.push(fail(format!(
            "QEMU exited with status {c}, not the guest's verdict ({}){}",
            i32::from(want) << 1 | 1,
            if qemu_stderr.trim().is_empty() {
                String::new()
            } else {
                format!(": {}", qemu_stderr.trim())
            }
        ))),
    }
    for s in splat::summarize(&splat::scan(log)) {
        points.push(fail(format!("kernel splat: {s}")));
    }
    points
}

/// Prints a run's failures and its closing line.
pub fn report(r: &RunResult) {
    for p in r.points.iter().filter(|p| p.outcome == Outcome::Fail) {
        println!(
            "FAILED: {}{}",
            p.name,
            p.note
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
    }
    for p in r.points.iter().filter(|p| p.outcome == Outcome::Skip) {
        println!("skipped: {} ({})", p.name, p.note.as_deref().unwrap_or(""));
    }
    println!("results: {}", r.dir.join("results.tap").display());
    println!("{}", r.counts.line());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(v: &[&str]) -> Vec<PathBuf> {
        v.iter().map(PathBuf::from).collect()
    }

    #[test]
    fn keeps_outermost_dirs_under_scratch_only() {
        // A checkout in /tmp with its target and build directories inside.
        assert_eq!(
            outermost_under_scratch(paths(&[
                "/tmp/kvmreg",
                "/tmp/kvmreg/target/harness",
                "/tmp/kvmreg/target"
            ])),
            paths(&["/tmp/kvmreg"])
        );
        // A checkout elsewhere with its target under /run, and one in /root.
        assert_eq!(
            outermost_under_scratch(paths(&["/root/k", "/root/k/target/harness", "/run/t"])),
            paths(&["/run/t"])
        );
        // /tmpfoo is not under /tmp; /tmp itself is never kept.
        assert!(outermost_under_scratch(paths(&["/tmpfoo/k", "/tmp"])).is_empty());
    }
}
