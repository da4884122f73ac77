//! The suites a run can hold, and how a suite's output becomes test points.
//!
//! The host decides what runs (a [`Plan`]); the guest init carries it out
//! and judges each suite with [`judge`], so the rules live in one place and
//! are unit tested on the host.

use crate::kernel::{BuildSpec, Config, Kernel, Tree};
use crate::tap::{self, Outcome, TestPoint};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// What the guest init does, written by the host as `plan.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    /// The run directory, shared read-write with the guest at the same path.
    pub out_dir: PathBuf,
    /// Modules to load before the suites run, in order.
    pub modules: Vec<PathBuf>,
    /// Host directories the suites use that lie under the guest's own tmpfs
    /// mounts (`guest::SCRATCH_DIRS`); the guest keeps them visible.
    #[serde(default)]
    pub keep: Vec<PathBuf>,
    pub suites: Vec<SuiteRun>,
}

/// One command run inside the guest.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SuiteRun {
    pub name: String,
    pub argv: Vec<String>,
    pub timeout_secs: u64,
    /// When set, the suite is not run and this is its result.
    pub verdict: Option<TestPoint>,
    /// Whether a non-zero exit with only passing points fails the suite.
    /// (kselftests exit 4 when everything skipped.)
    pub kselftest_exit_codes: bool,
    /// The output is a Rust test binary's (libtest), not TAP.
    #[serde(default)]
    pub libtest: bool,
    /// The suite needs a test VM of one CPU: it boots a nested Linux
    /// guest, which QEMU's TCG (running several vCPUs in turn on one
    /// thread) delivers interrupts to wrongly (Documentation/real-guest.md).
    #[serde(default)]
    pub one_cpu: bool,
}

/// What the guest leaves in `summary.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    pub points: Vec<TestPoint>,
    /// Set when the guest init itself failed (mounts, modules...).
    pub init_error: Option<String>,
}

/// The suites `run` knows, for `--help` and error messages.
pub const KNOWN: &[(&str, &str)] = &[
    (
        "smoke",
        "KVM works in the test VM: VM, vCPU, guest-mode perf samples",
    ),
    ("kselftest", "the kselftests in kernel-patch/selftests.txt"),
    (
        "canary",
        "a deliberately failing test: proves failures reach the host",
    ),
    (
        "qemu-client",
        "Debian's qemu shows up in /proc/kvm and is renamed through /proc (patched kernel)",
    ),
    (
        "real-guest",
        "a Linux guest (the fast kernel) nested in a one-CPU test VM, named through /proc, watched and profiled by kvmtop through a user phase and a kernel phase (patched fast kernel)",
    ),
    (
        "libvirt-hook",
        "contrib/libvirt/qemu, run as libvirtd runs it, names real paused qemus (patched kernel)",
    ),
    (
        "permissions",
        "the permission matrix of Documentation/security.md: who lists, reads, renames, what leaks (patched kernel)",
    ),
    (
        "kvm-stat",
        "the tree's kvm_stat on the registry: a user's own guests by name, exits moving, no debugfs; totals against debugfs (patched kernel)",
    ),
    (
        "perf-guests",
        "the tree's perf by guest: --sample-guest-id, the guest table in perf.data, --sort guest and --guests against kvmtop's view, perf kvm --guest-name (patched fast kernel)",
    ),
    (
        "rust",
        "the userspace crates' tests (kvmreg, fixture, kvmtop), on the kernel under test",
    ),
    (
        "demo",
        "the main job: named fixture guests, a named qemu, /proc/kvm and kvmtop",
    ),
    (
        "stress-60s",
        "the churn stress for 60 s: in the debug kernel's default suites",
    ),
    (
        "stress",
        "churn stress, 120 s: VMMs create/name/rename/destroy VMs and are SIGKILLed under /proc readers, uevents, perf",
    ),
    (
        "perf-bench",
        "benchmark, not a test: cost of PERF_SAMPLE_GUEST_ID to a vCPU sampled every 1 ms, 21 interleaved rounds (patched kernel)",
    ),
    (
        "bench-lifecycle",
        "benchmark, not a test: VM create+destroy time (run on the patched and the base kernel: selftests/bench_lifecycle.sh)",
    ),
    (
        "bench-enum",
        "benchmark, not a test: VM enumeration, /proc/kvm vs fd scan vs debugfs vs kvm_stat (patched kernel)",
    ),
    (
        "bench-kvm-stat",
        "benchmark, not a test: a kvm_stat refresh with 100 qemu-shaped guests, debugfs against the registry (-r), and naming the guests, in interleaved rounds (patched kernel)",
    ),
    (
        "bench-registry",
        "benchmark, not a test: /proc/kvm readdir, .list and lookups vs their floors at 10, 1000 and 4000 VMs (patched kernel)",
    ),
    (
        "bench-refresh",
        "benchmark, not a test: kvmtop's refresh vs its floor (CPU, system calls, interval), exits it adds, .list vs fd scan; 100 and 1000 qemu-shaped guests (patched kernel; KVMREG_MEMORY=6G)",
    ),
    (
        "bench-floor",
        "benchmark, not a test: kvmtop's refresh against its floor alone, 25 rounds at 100 busy and 11 at 1000 idle guests, to decide what bench-refresh's fewer rounds leave undecided (patched kernel; KVMREG_MEMORY=6G)",
    ),
    (
        "trace-exits",
        "investigation, not a test: traces where the interrupt exits of guests a kvmtop profile does not sample come from (debug kernel; trace_exits_summary.py reads the traces)",
    ),
    (
        "bench-exits",
        "benchmark, not a test: the exits kvmtop adds to running guests alone, as bench-refresh measures them (patched kernel; KVMREG_CPUS=4 tells contention for the test VM's CPUs from the tool)",
    ),
    (
        "lkdtm",
        "provokes a WARN and a KASAN report (debug kernel): proves splats fail the run",
    ),
];

/// The suites run when none are named. The qemu client check and the
/// userspace tests need the registry, so they only run on the patched tree;
/// the userspace tests only on the fast kernel: they test the tools, and on
/// the debug kernel they took over half of the run's 11 minutes, while the
/// kernel paths they use are the ones proc_kvm_test and qemu-client cover.
/// The churn stress runs where its races can splat: the debug kernel.
pub fn default_suites(tree: Tree, config: Config) -> Vec<String> {
    let mut suites = vec!["smoke".into(), "kselftest".into()];
    if tree == Tree::Patched {
        suites.push("qemu-client".into());
        if config == Config::Debug {
            suites.push("stress-60s".into());
            suites.extend(DEBUG_KERNEL_RUST.iter().map(|s| s.to_string()));
        }
        if config == Config::Fast {
            suites.push("permissions".into());
            suites.push("libvirt-hook".into());
            suites.push("kvm-stat".into());
            suites.push("perf-guests".into());
            suites.push("rust".into());
        }
    }
    suites
}

/// Where cargo put a payload binary of this crate.
fn payload(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let dir = exe.parent().unwrap_or(Path::new("."));
    let p = dir.join(name);
    if !p.exists() {
        bail!(
            "payload {} is not built: run `cargo build -p kvmreg-selftests --bins`",
            p.display()
        );
    }
    Ok(p)
}

/// Expands suite names into the commands the guest runs.
pub fn expand(names: &[String], kernel: &Kernel) -> Result<Vec<SuiteRun>> {
    let mut runs = Vec::new();
    for name in names {
        match name.as_str() {
            "smoke" => runs.push(simple("smoke", payload("kvm-smoke")?, 60)),
            "canary" => runs.push(simple("canary", payload("tap-canary")?, 30)),
            "perf-bench" => runs.push(simple("perf-bench", payload("perf-guest-id-bench")?, 120)),
            "bench-lifecycle" => runs.push(simple(
                "bench-lifecycle",
                payload("vm-lifecycle-bench")?,
                300,
            )),
            "stress" => runs.push(simple("stress", payload("churn-stress")?, 300)),
            // CI's shorter run of the same stress (the debug kernel's
            // default suites); `stress` alone is the documented 120 s run.
            "stress-60s" => {
                let mut run = simple("stress-60s", payload("churn-stress")?, 200);
                run.argv.extend(["--seconds".into(), "60".into()]);
                runs.push(run);
            }
            "kselftest" => runs.extend(kselftests(kernel)?),
            // One kselftest of the list, e.g. to chase a flake with --repeat.
            one if one.starts_with("kselftest/") => {
                let all = kselftests(kernel)?;
                let Some(run) = all.iter().find(|r| r.name == one) else {
                    let names: Vec<_> = all.iter().map(|r| r.name.as_str()).collect();
                    bail!(
                        "no kselftest `{one}` in kernel-patch/selftests.txt for this config; listed: {}",
                        names.join(", ")
                    );
                };
                runs.push(run.clone());
            }
            "lkdtm" => runs.push(script("lkdtm", "lkdtm.sh", 60)),
            "qemu-client" => runs.push(script("qemu-client", "qemu_client.sh", 120)),
            "real-guest" => {
                if kernel.config != Config::Fast {
                    bail!("real-guest boots the fast kernel as its nested guest: run it with --config fast");
                }
                let mut run = script("real-guest", "real_guest.sh", 420);
                let build = kernel
                    .bzimage
                    .ancestors()
                    .nth(4)
                    .context("the kernel image is not in a build tree")?;
                run.argv.extend(
                    [
                        kernel.bzimage.clone(),
                        build.join("System.map"),
                        real_guest_root(),
                        debug_bins()?,
                    ]
                    .iter()
                    .map(|p| p.to_string_lossy().into_owned()),
                );
                run.one_cpu = true;
                runs.push(run);
            }
            "rust" => runs.extend(
                rust_tests(kernel)?
                    .into_iter()
                    .filter(|r| !DEBUG_KERNEL_RUST.contains(&r.name.as_str())),
            ),
            // One Rust test binary, e.g. rust/kvmtop/exits.
            one if one.starts_with("rust/") => {
                let all = rust_tests(kernel)?;
                let names: Vec<String> = all.iter().map(|r| r.name.clone()).collect();
                let Some(run) = all.into_iter().find(|r| r.name == one) else {
                    bail!("no Rust test binary `{one}`; built: {}", names.join(", "));
                };
                runs.push(run);
            }
            "libvirt-hook" => {
                let mut run = script("libvirt-hook", "libvirt_hook.sh", 180);
                let hook = crate::paths::repo_root().join("contrib/libvirt/qemu");
                run.argv.push(hook.to_string_lossy().into_owned());
                runs.push(run);
            }
            "perf-guests" => {
                let Some(perf) = &kernel.perf else {
                    bail!("perf-guests needs the tree's perf, built with the patched fast kernel only");
                };
                let mut run = script("perf-guests", "perf_guests.sh", 300);
                run.argv.push(debug_bins()?.to_string_lossy().into_owned());
                run.argv.push(perf.to_string_lossy().into_owned());
                runs.push(run);
            }
            "kvm-stat" => {
                let mut run = script("kvm-stat", "kvm_stat.sh", 300);
                run.argv.push(debug_bins()?.to_string_lossy().into_owned());
                run.argv
                    .push(kvm_stat(kernel).to_string_lossy().into_owned());
                runs.push(run);
            }
            "demo" => {
                let mut run = script("demo", "demo.sh", 300);
                run.argv.push(debug_bins()?.to_string_lossy().into_owned());
                runs.push(run);
            }
            "permissions" => {
                let mut run = script("permissions", "permissions.sh", 300);
                run.argv.push(debug_bins()?.to_string_lossy().into_owned());
                runs.push(run);
            }
            "bench-enum" => {
                let bins = release_bins()?;
                let mut run = simple("bench-enum", bins.join("kvmreg-enum-bench"), 1200);
                run.argv.push("--kvm-stat".into());
                run.argv
                    .push(kvm_stat(kernel).to_string_lossy().into_owned());
                runs.push(run);
            }
            "bench-kvm-stat" => {
                let bins = release_bins()?;
                let mut run = script("bench-kvm-stat", "kvm_stat_bench.py", 1200);
                run.argv[0] = "/usr/bin/python3".into();
                run.argv
                    .push(kvm_stat(kernel).to_string_lossy().into_owned());
                run.argv.push(bins.to_string_lossy().into_owned());
                runs.push(run);
            }
            "bench-registry" => {
                let bins = release_bins()?;
                runs.push(simple(
                    "bench-registry",
                    bins.join("kvmreg-registry-bench"),
                    2400,
                ));
            }
            "bench-refresh" => runs.push(refresh_bench("bench-refresh", None, 3600)?),
            "trace-exits" => {
                if kernel.config != Config::Debug {
                    bail!("trace-exits needs event tracing, which only the debug kernel has: run it with --config debug");
                }
                let mut run = script("trace-exits", "trace_exits.sh", 1500);
                run.argv
                    .push(release_bins()?.to_string_lossy().into_owned());
                // Seconds a window, rounds.
                run.argv.extend(["5".to_string(), "3".to_string()]);
                runs.push(run);
            }
            "bench-floor" => runs.push(refresh_bench("bench-floor", Some("floor"), 3600)?),
            "bench-exits" => runs.push(refresh_bench("bench-exits", Some("exits"), 1200)?),
            other => {
                let known: Vec<_> = KNOWN.iter().map(|(n, _)| *n).collect();
                bail!(
                    "unknown suite `{other}`; known suites: {}",
                    known.join(", ")
                );
            }
        }
    }
    Ok(runs)
}

/// Runs every suite `times` times in one boot, the copies named `NAME#k`.
pub fn repeat(runs: Vec<SuiteRun>, times: u32) -> Vec<SuiteRun> {
    if times <= 1 {
        return runs;
    }
    (1..=times)
        .flat_map(|k| {
            runs.iter().map(move |r| {
                let mut r = r.clone();
                r.name = format!("{}#{k}", r.name);
                if let Some(v) = &mut r.verdict {
                    v.name.clone_from(&r.name);
                }
                r
            })
        })
        .collect()
}

/// The directory of the workspace's binaries as `run` builds them.
fn debug_bins() -> Result<PathBuf> {
    let fixture = payload("kvmreg-fixture")?;
    Ok(fixture.parent().unwrap_or(Path::new(".")).to_path_buf())
}

/// Benchmarks time optimized code: builds the userspace binaries with
/// `--release` and returns their directory.
fn release_bins() -> Result<PathBuf> {
    crate::cmd::run(
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
            .current_dir(crate::paths::repo_root())
            .args(["build", "--quiet", "--release"])
            .args(["-p", "kvmreg-fixture", "-p", "kvmtop", "--bins"]),
    )?;
    // The harness runs from <target>/debug/; release binaries are in
    // <target>/release/, wherever CARGO_TARGET_DIR put <target>.
    let exe = std::env::current_exe()?;
    let target = exe
        .parent()
        .and_then(Path::parent)
        .context("cannot tell cargo's target directory from the harness' path")?;
    Ok(target.join("release"))
}

/// Where the `perf-guests` suite leaves its perf.data, in the run
/// directory.
pub const PERF_GUESTS_DATA: &str = "perf-guests.data";

/// Whether perf on the host, whose kernel has no VM registry, names the
/// guests of the `perf-guests` suite's perf.data (run `dir`) from the file's
/// own guest table: `perf report --sort guest` must show alpha and beta.
pub fn perf_data_names_guests(dir: &Path) -> Result<bool> {
    let data = dir.join(PERF_GUESTS_DATA);
    if !data.exists() {
        bail!(
            "{} is missing: did the perf-guests suite run?",
            data.display()
        );
    }
    let kernel = crate::kernel::build(BuildSpec::for_run(Tree::Patched, Config::Fast))?;
    let perf = kernel
        .perf
        .context("the patched fast kernel's build has no perf")?;
    let out = crate::cmd::output(
        std::process::Command::new(&perf)
            .arg("report")
            .arg("-i")
            .arg(&data)
            .args(["--sort", "guest", "-n", "--stdio"]),
    )?;
    let rows: Vec<&str> = out
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .collect();
    for row in &rows {
        println!("perf report on the host: {}", row.trim_end());
    }
    let named = |g: &str| rows.iter().any(|r| r.split_whitespace().last() == Some(g));
    Ok(named("alpha") && named("beta"))
}

/// The upstream kvm_stat script of the tree under test.
fn kvm_stat(kernel: &Kernel) -> PathBuf {
    let tree = match kernel.tree {
        Tree::Base => crate::paths::base_tree(),
        Tree::Patched => crate::paths::patched_tree(),
    };
    tree.join("tools/kvm/kvm_stat/kvm_stat")
}

/// The facilities (`kvmreg-testkit`'s names) the test VM gives the Rust
/// tests: KVM (nested, on the emulated CPU's SVM), tmux and prometheus
/// (the host's, installed by `deps`), root, perf sampling, debugfs, and
/// on the patched kernel the registry.
fn provided(kernel: &Kernel) -> String {
    let mut f = vec![
        "kvm",
        "tmux",
        "prometheus",
        "root",
        "perf",
        "debugfs",
        "tun",
    ];
    if kernel.tree == Tree::Patched {
        f.push("registry");
    }
    // Event tracing is in the debug config only (the fast kernel leaves it
    // out to build faster); the test VM's KVM is kvm_amd (QEMU's SVM).
    if kernel.config == Config::Debug {
        f.push("exit-tracepoints");
    }
    f.join(",")
}

/// Rust test binaries that need what only the debug kernel has (event
/// tracing): they run there, as suites of their own, and not with `rust`
/// on the fast kernel, where they could only skip.
const DEBUG_KERNEL_RUST: &[&str] = &["rust/kvmtop/exits"];

/// The userspace crates whose tests run inside the test VM: they must
/// pass against the real registry, not only on the host's unpatched kernel.
const RUST_PACKAGES: &[&str] = &["kvmreg", "kvmreg-fixture", "kvmtop"];

/// Builds the test binaries of [`RUST_PACKAGES`] on the host (the guest sees
/// the host's files read-only at the same paths) and makes each a suite.
fn rust_tests(kernel: &Kernel) -> Result<Vec<SuiteRun>> {
    let mut cmd =
        std::process::Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.current_dir(crate::paths::repo_root())
        .args(["test", "--no-run", "--message-format=json"]);
    for p in RUST_PACKAGES {
        cmd.args(["-p", p]);
    }
    let out = crate::cmd::capture(&mut cmd)?;
    let mut runs = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let Some(exe) = msg["executable"].as_str() else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let target = msg["target"]["name"].as_str().unwrap_or("?");
        let package = msg["manifest_path"]
            .as_str()
            .map(Path::new)
            .and_then(|m| m.parent()?.file_name()?.to_str())
            .unwrap_or("?");
        let name = format!("rust/{package}/{target}");
        let mut run = simple(&name, PathBuf::from("/usr/bin/env"), 600);
        run.argv.extend([
            // In the test VM guest-mode perf samples do arrive (the smoke
            // suite proves it), so the tests must check what needs them.
            "KVMREG_REQUIRE_GUEST_SAMPLES=1".into(),
            // What the test VM provides: a test that would skip for want
            // of one of these fails instead (kvmreg-testkit).
            format!("KVMREG_REQUIRE={}", provided(kernel)),
            exe.into(),
            // One test at a time: the tests start real VMs, and the test
            // VM has two emulated CPUs. --show-output keeps what passing
            // tests printed (measured splits, skips) in the suite's log.
            "--test-threads=1".into(),
            "--show-output".into(),
        ]);
        run.libtest = true;
        runs.push(run);
    }
    if runs.is_empty() {
        bail!(
            "cargo built no test binaries for {}",
            RUST_PACKAGES.join(", ")
        );
    }
    Ok(runs)
}

/// A shell script from `selftests/payloads/`, run with `/bin/sh`.
/// A run of `bench_refresh.sh` over the release binaries; `mode` picks a
/// part of it (`floor`, `exits`) instead of the whole.
fn refresh_bench(name: &str, mode: Option<&str>, timeout_secs: u64) -> Result<SuiteRun> {
    let mut run = script(name, "bench_refresh.sh", timeout_secs);
    run.argv
        .push(release_bins()?.to_string_lossy().into_owned());
    run.argv.extend(mode.map(str::to_string));
    Ok(run)
}

/// The nested guest's root directory of the `real-guest` suite (its
/// `/init` is built with the payloads).
pub fn real_guest_root() -> PathBuf {
    crate::paths::build_dir().join("real-guest").join("root")
}

fn script(name: &str, file: &str, timeout_secs: u64) -> SuiteRun {
    let path = crate::paths::repo_root()
        .join("selftests/payloads")
        .join(file);
    let mut run = simple(name, PathBuf::from("/bin/sh"), timeout_secs);
    run.argv.push(path.to_string_lossy().into_owned());
    run
}

fn simple(name: &str, exe: PathBuf, timeout_secs: u64) -> SuiteRun {
    SuiteRun {
        name: name.into(),
        argv: vec![exe.to_string_lossy().into_owned()],
        timeout_secs,
        verdict: None,
        kselftest_exit_codes: false,
        libtest: false,
        one_cpu: false,
    }
}

fn kselftests(kernel: &Kernel) -> Result<Vec<SuiteRun>> {
    let Some(list) = crate::kernel::kselftest_list()? else {
        return Ok(Vec::new());
    };
    let mut runs = Vec::new();
    for name in list
        .into_iter()
        .filter(|t| t.runs_on(kernel.config))
        .map(|t| t.name)
    {
        let suite = format!("kselftest/{name}");
        match kernel.kselftests.iter().find(|(n, _)| *n == name) {
            Some((_, path)) => runs.push(SuiteRun {
                kselftest_exit_codes: true,
                ..simple(&suite, path.clone(), 600)
            }),
            None => {
                // A test the series adds does not exist in the base tree:
                // that is an honest skip there, and a failure when patched.
                let (outcome, note) = match kernel.tree {
                    Tree::Base => (Outcome::Skip, "not in the base tree"),
                    Tree::Patched => (Outcome::Fail, "was not built"),
                };
                runs.push(SuiteRun {
                    verdict: Some(TestPoint {
                        name: suite.clone(),
                        outcome,
                        note: Some(note.into()),
                    }),
                    ..simple(&suite, PathBuf::new(), 0)
                });
            }
        }
    }
    Ok(runs)
}

/// How a suite's process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    TimedOut(u64),
}

const KSFT_SKIP: i32 = 4;

/// Turns one suite's TAP output and exit into test points named
/// `<suite>: <point>`. Anything short of a clean, complete TAP stream and
/// a matching exit is a failure point of its own.
pub fn judge(suite: &SuiteRun, output: &str, exit: Exit) -> Vec<TestPoint> {
    let parsed = if suite.libtest {
        crate::libtest::parse(output)
    } else {
        tap::parse(output)
    };
    let mut points: Vec<TestPoint> = parsed
        .points
        .iter()
        .map(|p| TestPoint {
            name: format!("{}: {}", suite.name, p.name),
            ..p.clone()
        })
        .collect();
    let mut problems: Vec<String> = Vec::new();
    if let Some(reason) = &parsed.bail_out {
        problems.push(format!("bailed out: {reason}"));
    }
    if let Some(reason) = &parsed.skip_all {
        points.push(point(&suite.name, Outcome::Skip, Some(reason)));
    } else if parsed.points.is_empty() && suite.kselftest_exit_codes {
        // Many KVM selftests print no TAP; kselftest's own runner judges
        // those by exit status (0 pass, 4 skip, anything else fail).
        return match exit {
            Exit::Code(0) => vec![point(&suite.name, Outcome::Pass, None)],
            Exit::Code(KSFT_SKIP) => vec![point(
                &suite.name,
                Outcome::Skip,
                Some("exit status 4 (KSFT_SKIP)"),
            )],
            other => vec![point(
                &suite.name,
                Outcome::Fail,
                Some(&format!("{other:?}")),
            )],
        };
    } else if parsed.points.is_empty() {
        problems.push("no TAP test points in the output".into());
    } else if let Some(n) = parsed.planned {
        if n != parsed.points.len() {
            problems.push(format!("planned {n} tests, ran {}", parsed.points.len()));
        }
    }
    let any_failed = parsed.points.iter().any(|p| p.outcome == Outcome::Fail);
    match exit {
        Exit::Code(0) => {}
        Exit::Code(KSFT_SKIP)
            if suite.kselftest_exit_codes
                && parsed.points.iter().all(|p| p.outcome == Outcome::Skip) => {}
        Exit::Code(c) if !any_failed => problems.push(format!("exited with status {c}")),
        Exit::Code(_) => {}
        Exit::Signal(s) => problems.push(format!("killed by signal {s}")),
        Exit::TimedOut(secs) => problems.push(format!("timed out after {secs} s")),
    }
    points.extend(
        problems
            .into_iter()
            .map(|why| point(&format!("{}: {why}", suite.name), Outcome::Fail, None)),
    );
    points
}

/// One test point (the note is a skip reason or why it failed).
fn point(name: &str, outcome: Outcome, note: Option<&str>) -> TestPoint {
    TestPoint {
        name: name.to_string(),
        outcome,
        note: note.map(str::to_string),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn suite() -> SuiteRun {
        simple("s", PathBuf::from("/bin/true"), 10)
    }

    fn outcomes(points: &[TestPoint]) -> Vec<Outcome> {
        points.iter().map(|p| p.outcome).collect()
    }

    #[test]
    fn clean_stream_passes() {
        let p = judge(&suite(), "1..2\nok 1 a\nok 2 b\n", Exit::Code(0));
        assert_eq!(outcomes(&p), vec![Outcome::Pass, Outcome::Pass]);
        assert_eq!(p[0].name, "s: a");
    }

    #[test]
    fn crash_after_passing_points_fails() {
        let p = judge(&suite(), "1..3\nok 1 a\nok 2 b\n", Exit::Signal(11));
        assert_eq!(
            outcomes(&p),
            vec![Outcome::Pass, Outcome::Pass, Outcome::Fail, Outcome::Fail]
        );
    }

    #[test]
    fn silence_and_timeouts_fail() {
        assert_eq!(
            outcomes(&judge(&suite(), "", Exit::Code(0))),
            vec![Outcome::Fail]
        );
        let p = judge(&suite(), "1..1\nok 1 a\n", Exit::TimedOut(10));
        assert_eq!(p[1].name, "s: timed out after 10 s");
    }

    #[test]
    fn nonzero_exit_with_all_passing_fails() {
        let p = judge(&suite(), "1..1\nok 1 a\n", Exit::Code(1));
        assert_eq!(outcomes(&p), vec![Outcome::Pass, Outcome::Fail]);
    }

    #[test]
    fn kselftest_without_tap_is_judged_by_exit_status() {
        let mut s = suite();
        s.kselftest_exit_codes = true;
        let out = "Testing creating 1024 vCPUs\n";
        assert_eq!(
            outcomes(&judge(&s, out, Exit::Code(0))),
            vec![Outcome::Pass]
        );
        assert_eq!(
            outcomes(&judge(&s, out, Exit::Code(4))),
            vec![Outcome::Skip]
        );
        assert_eq!(
            outcomes(&judge(&s, out, Exit::Code(1))),
            vec![Outcome::Fail]
        );
        assert_eq!(
            outcomes(&judge(&s, out, Exit::Signal(6))),
            vec![Outcome::Fail]
        );
        assert_eq!(
            outcomes(&judge(&s, out, Exit::TimedOut(9))),
            vec![Outcome::Fail]
        );
        // A plain suite must speak TAP.
        assert_eq!(
            outcomes(&judge(&suite(), out, Exit::Code(0))),
            vec![Outcome::Fail]
        );
    }

    #[test]
    fn kselftest_skip_exit_is_a_skip_not_a_pass() {
        let mut s = suite();
        s.kselftest_exit_codes = true;
        let p = judge(&s, "1..0 # SKIP no KVM\n", Exit::Code(4));
        assert_eq!(outcomes(&p), vec![Outcome::Skip]);
        let p = judge(&s, "1..1\nok 1 a # SKIP no KVM\n", Exit::Code(4));
        assert_eq!(outcomes(&p), vec![Outcome::Skip]);
        // Exit 4 after a real pass is not a clean skip.
        let p = judge(&s, "1..1\nok 1 a\n", Exit::Code(4));
        assert_eq!(outcomes(&p), vec![Outcome::Pass, Outcome::Fail]);
    }
}
