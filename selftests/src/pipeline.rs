//! The composite jobs: `run` (build payloads + kernel, boot), `test`
//! (everything CI runs) and `demo`.

use crate::kernel::{self, BuildSpec, Config, Tree};
use crate::qemu::{self, RunResult};
use crate::series::Series;
use crate::suites::{self, Plan};
use crate::tap::{Outcome, TestPoint};
use crate::{cargo_tools, check_series, cmd, deps, paths};
use anyhow::{bail, Context, Result};
use std::process::{Command, Stdio};
use std::time::Instant;

/// Builds the payload binaries next to the harness binary.
fn build_payloads() -> Result<()> {
    cmd::run(
        Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(paths::repo_root())
            // Every binary of the workspace: the harness's payloads, the
            // fixture VMM and the tools the demo runs in the test VM.
            .args(["build", "--quiet", "--workspace", "--bins"]),
    )?;
    build_real_guest_root()
}

/// The real-guest suite's nested guest root: a directory with `/init`
/// (`selftests/payloads/real_guest_init.c`, no libc) and the mount points
/// the kernel fills (devtmpfs on `/dev`).
fn build_real_guest_root() -> Result<()> {
    let root = suites::real_guest_root();
    for d in ["dev", "proc", "sys"] {
        std::fs::create_dir_all(root.join(d))?;
    }
    let src = paths::repo_root().join("selftests/payloads/real_guest_init.c");
    cmd::run(
        Command::new("gcc")
            .args(["-static", "-nostdlib", "-O1", "-Wall", "-Werror"])
            // No vector registers (nothing to set up without libc), no
            // stack protector (no TLS), a fixed address (no relocation).
            .args(["-mgeneral-regs-only", "-fno-stack-protector"])
            .args(["-fno-pie", "-no-pie", "-o"])
            .arg(root.join("init"))
            .arg(src),
    )
}

pub fn run_suites(
    config: Config,
    tree: Tree,
    names: &[String],
    repeat: u32,
    quiet: bool,
) -> Result<RunResult> {
    build_payloads()?;
    run_built(config, tree, names, repeat, quiet)
}

/// [`run_suites`] without building the payloads: for a run beside another
/// that already built them (two cargo builds would only queue on its lock).
fn run_built(
    config: Config,
    tree: Tree,
    names: &[String],
    repeat: u32,
    quiet: bool,
) -> Result<RunResult> {
    let kernel = kernel::build(BuildSpec::for_run(tree, config))?;
    let plan = Plan {
        out_dir: Default::default(),
        modules: Vec::new(),
        keep: Vec::new(),
        suites: suites::repeat(suites::expand(names, &kernel)?, repeat),
    };
    qemu::run(&kernel, plan, quiet)
}

/// One step of `test`, timed and reported.
fn step(log: &mut Vec<(String, bool, f64)>, name: &str, f: impl FnOnce() -> Result<bool>) {
    println!("\n==== test: {name} ====");
    let t = Instant::now();
    let ok = match f() {
        Ok(ok) => ok,
        Err(e) => {
            println!("test: {name}: {e:#}");
            false
        }
    };
    let secs = t.elapsed().as_secs_f64();
    println!(
        "==== test: {name}: {} ({secs:.0} s) ====",
        if ok { "ok" } else { "FAILED" }
    );
    log.push((name.to_string(), ok, secs));
}

/// `cargo test` of the workspace on the host, its output streamed and
/// kept: with `--show-output` what each test printed follows its result,
/// so the skips it announced can be counted ([`crate::libtest`]).
fn host_tests() -> Result<(bool, Vec<TestPoint>)> {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(paths::repo_root())
        .args(["test", "--workspace", "--", "--show-output"])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut text = String::new();
    if let Some(out) = child.stdout.take() {
        // Bytes, not lines of UTF-8: a test may print anything.
        for line in BufReader::new(out).split(b'\n') {
            let Ok(line) = line else { break };
            let line = String::from_utf8_lossy(&line);
            println!("{line}");
            text.push_str(&line);
            text.push('\n');
        }
    }
    // Reaped whatever the reading did.
    let ok = child.wait()?.success();
    Ok((ok, crate::libtest::parse(&text).points))
}

/// What a step's tests skipped or checked only in part: (step, point).
type Unchecked = Vec<(String, TestPoint)>;

fn unchecked(step: &str, points: &[TestPoint], into: &mut Unchecked) {
    for p in points {
        if p.outcome == Outcome::Skip || (p.outcome == Outcome::Pass && p.note.is_some()) {
            into.push((step.to_string(), p.clone()));
        }
    }
}

fn failed_points(step: &str, points: &[TestPoint], into: &mut Unchecked) {
    for p in points.iter().filter(|p| p.outcome == Outcome::Fail) {
        into.push((step.to_string(), p.clone()));
    }
}

fn cargo(args: &[&str]) -> Result<bool> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .current_dir(paths::repo_root())
        .args(args)
        .status()?;
    Ok(status.success())
}

/// Everything CI runs, in order of cost; every step runs even after a
/// failure so one run shows all that is broken.
pub fn test_all() -> Result<bool> {
    let mut log = Vec::new();
    let mut skipped = Unchecked::new();
    let mut failures = Unchecked::new();
    step(&mut log, "deps", || deps::run().map(|_| true));
    step(&mut log, "cargo fmt --check", || {
        cargo(&["fmt", "--all", "--", "--check"])
    });
    step(&mut log, "cargo clippy", || {
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ])
    });
    step(&mut log, "cargo deny", cargo_tools::deny);
    step(
        &mut log,
        "cargo semver-checks (kvmreg)",
        cargo_tools::semver,
    );
    step(&mut log, "cargo test (host)", || {
        let (ok, points) = host_tests()?;
        unchecked("host", &points, &mut skipped);
        failed_points("host", &points, &mut failures);
        Ok(ok)
    });
    if !Series::load()?.is_empty() {
        step(&mut log, "check-series", || {
            check_series::run().map(|_| true)
        });
    }
    // Both kernels are built before any test VM boots: a build uses every
    // CPU, a test VM one (QEMU runs single-threaded TCG, see qemu.rs). So
    // the debug kernel's runs (its suites, then the lkdtm check) boot beside
    // the fast run and the canary instead of after them: on a 2-CPU machine
    // CI then waits for the longer of the two chains, not their sum.
    step(&mut log, "kernel --config debug, payloads", || {
        build_payloads()?;
        kernel::build(BuildSpec::for_run(Tree::Patched, Config::Debug))?;
        Ok(true)
    });
    // The debug kernel's runs go on a thread of their own, quiet; their
    // results are judged and printed when the steps beside them are done.
    let beside = std::thread::spawn(|| {
        let debug = suites::default_suites(Tree::Patched, Config::Debug);
        [
            (
                "run --config debug",
                timed(|| run_built(Config::Debug, Tree::Patched, &debug, 1, true)),
                suites_passed as Judge,
            ),
            (
                "splats reach the host (lkdtm suite must fail)",
                timed(|| run_built(Config::Debug, Tree::Patched, &["lkdtm".into()], 1, true)),
                splats_fail as Judge,
            ),
        ]
    });
    let mut fast_dir = None;
    step(&mut log, "run --config fast", || {
        let r = run_suites(
            Config::Fast,
            Tree::Patched,
            &suites::default_suites(Tree::Patched, Config::Fast),
            1,
            false,
        )?;
        fast_dir = Some(r.dir.clone());
        qemu::report(&r);
        unchecked("test VM, fast", &r.points, &mut skipped);
        failed_points("test VM, fast", &r.points, &mut failures);
        Ok(passed(&r))
    });
    step(
        &mut log,
        "perf.data of the perf-guests suite names the guests on the host",
        || {
            let dir = fast_dir.context("the fast run did not run")?;
            suites::perf_data_names_guests(&dir)
        },
    );
    step(
        &mut log,
        "failures reach the host (canary suite must fail)",
        || {
            canary_fails(&run_built(
                Config::Fast,
                Tree::Patched,
                &["canary".into()],
                1,
                true,
            )?)
        },
    );
    // Its own boot: the nested Linux guest needs a one-CPU test VM.
    step(
        &mut log,
        "run --config fast real-guest (one-CPU test VM)",
        || {
            let r = run_built(Config::Fast, Tree::Patched, &["real-guest".into()], 1, true)?;
            qemu::report(&r);
            unchecked("test VM, real guest", &r.points, &mut skipped);
            failed_points("test VM, real guest", &r.points, &mut failures);
            Ok(passed(&r))
        },
    );
    let Ok(runs) = beside.join() else {
        bail!("the thread running the debug kernel's suites panicked");
    };
    for (name, (result, secs), judge) in runs {
        if let (Ok(r), "run --config debug") = (&result, name) {
            unchecked("test VM, debug", &r.points, &mut skipped);
            failed_points("test VM, debug", &r.points, &mut failures);
        }
        println!("\n==== test: {name} (ran beside the steps above) ====");
        let ok = match result.and_then(|r| judge(&r)) {
            Ok(ok) => ok,
            Err(e) => {
                println!("test: {name}: {e:#}");
                false
            }
        };
        println!(
            "==== test: {name}: {} ({secs:.0} s) ====",
            if ok { "ok" } else { "FAILED" }
        );
        log.push((name.to_string(), ok, secs));
    }
    // Nothing skipped passes unseen: each skip, and each test that ran
    // but could not check everything, with its reason. (In the test VM
    // what the harness provides cannot be skipped: KVMREG_REQUIRE.)
    println!("\n==== skipped or partly checked ({}) ====", skipped.len());
    for (at, p) in &skipped {
        println!(
            "{:<13} {at}: {} ({})",
            if p.outcome == Outcome::Skip {
                "skipped"
            } else {
                "partly"
            },
            p.name,
            p.note.as_deref().unwrap_or("")
        );
    }
    // The tests that failed, by name and why, where a reader of the log's
    // end (CI shows its head and tail) sees them.
    if !failures.is_empty() {
        println!("\n==== failed tests ({}) ====", failures.len());
        for (at, p) in &failures {
            println!(
                "FAILED   {at}: {} ({})",
                p.name,
                p.note.as_deref().unwrap_or("-")
            );
        }
    }
    println!("\n==== test summary ====");
    for (name, ok, secs) in &log {
        println!(
            "{:<8} {name} ({secs:.0} s)",
            if *ok { "ok" } else { "FAILED" }
        );
    }
    let failed = log.iter().filter(|(_, ok, _)| !ok).count();
    println!("{} passed, {failed} failed", log.len() - failed);
    Ok(failed == 0)
}

/// How a step judges the result of its run.
type Judge = fn(&RunResult) -> Result<bool>;

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed().as_secs_f64())
}

/// A quiet run of suites: passed, or its console printed as the evidence.
fn suites_passed(r: &RunResult) -> Result<bool> {
    if !passed(r) {
        print_console(r);
    }
    qemu::report(r);
    Ok(passed(r))
}

/// A run passes when no point failed and at least one passed.
fn passed(r: &RunResult) -> bool {
    r.counts.failed == 0 && r.counts.passed > 0
}

/// Prints a quiet run's console log, what a loud run would have streamed.
fn print_console(r: &RunResult) {
    let path = r.dir.join("console.log");
    match std::fs::read(&path) {
        Ok(bytes) => {
            println!("---- console of the run ({}) ----", path.display());
            println!("{}", String::from_utf8_lossy(&bytes));
            println!("---- end of console ----");
        }
        Err(e) => println!("cannot read {}: {e}", path.display()),
    }
}

/// The harness's own end-to-end check: a suite that fails inside the VM must
/// make `run` fail, with exactly its failing point reported.
fn canary_fails(r: &RunResult) -> Result<bool> {
    qemu::report(r);
    let failed: Vec<_> = r
        .points
        .iter()
        .filter(|p| p.outcome == crate::tap::Outcome::Fail)
        .map(|p| p.name.as_str())
        .collect();
    if failed != ["canary: deliberately failing test point"] || r.counts.passed != 1 {
        bail!("the canary run did not report exactly its one failing point: {failed:?}");
    }
    println!("test: the canary's failure reached the host as expected");
    Ok(true)
}

/// The other end-to-end check: real kernel reports provoked through LKDTM on
/// the debug kernel must fail the run although every test point passed.
fn splats_fail(r: &RunResult) -> Result<bool> {
    qemu::report(r);
    let failed: Vec<_> = r
        .points
        .iter()
        .filter(|p| p.outcome == crate::tap::Outcome::Fail)
        .map(|p| p.name.as_str())
        .collect();
    let reported = |kind: &str| {
        failed
            .iter()
            .any(|f| f.starts_with(&format!("kernel splat: {kind} ")))
    };
    if r.counts.passed != 2 || !reported("WARNING") || !reported("KASAN") {
        bail!("the lkdtm run did not fail on exactly its WARNING and KASAN reports: {failed:?}");
    }
    println!("test: the provoked WARNING and KASAN reports failed the run as expected");
    Ok(true)
}

/// The main job. Until the registry series lands it boots the patched kernel
/// and runs the smoke suite, saying plainly that this is all it shows.
pub fn demo() -> Result<bool> {
    deps::run()?;
    let series = Series::load()?;
    println!(
        "demo: kernel series: {} patch(es) in kernel-patch/series",
        series.patches.len()
    );
    let r = run_suites(Config::Fast, Tree::Patched, &["demo".into()], 1, true)?;
    // The demo's own output, without the boot log around it.
    let log = r.dir.join("demo.log");
    match std::fs::read_to_string(&log) {
        Ok(text) => {
            println!("\n==== the demo, inside the test VM ====");
            for line in text.lines().filter(|l| !is_tap_line(l)) {
                println!("{line}");
            }
        }
        Err(e) => println!("demo: cannot read {}: {e}", log.display()),
    }
    println!();
    qemu::report(&r);
    Ok(r.counts.failed == 0)
}

/// TAP bookkeeping lines, which the demo's reader does not need.
fn is_tap_line(line: &str) -> bool {
    line.starts_with("TAP version") || line.starts_with("1..")
}
