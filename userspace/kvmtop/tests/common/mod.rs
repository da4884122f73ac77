//! Shared helpers of the integration tests: run the real kvmtop binary,
//! start the fixture VMM, build fake proc trees.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn kvmtop() -> Command {
    Command::new(env!("CARGO_BIN_EXE_kvmtop"))
}

/// Run kvmtop with a deadline; `None` if it did not finish in time (it is
/// killed then).
pub fn run_within(args: &[&str], limit: Duration) -> Option<Output> {
    let mut c = kvmtop();
    c.args(args);
    output_within(c, limit)
}

/// Run `c` with a deadline; `None` if it did not finish in time (it is
/// killed then).
pub fn output_within(mut c: Command, limit: Duration) -> Option<Output> {
    let mut c = c
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start the command");
    let start = Instant::now();
    while start.elapsed() < limit {
        if c.try_wait().expect("wait kvmtop").is_some() {
            return Some(c.wait_with_output().expect("kvmtop output"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = c.kill();
    let _ = c.wait();
    None
}

pub fn run(args: &[&str]) -> Output {
    run_within(args, Duration::from_secs(60)).expect("kvmtop did not finish within 60 s")
}

/// The guests' names in a `kvmtop list --json` output, in its order.
pub fn listed_names(stdout: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(stdout).expect("JSON");
    v.as_array()
        .expect("array")
        .iter()
        .filter_map(|g| g["name"].as_str().map(str::to_string))
        .collect()
}

/// One `kvmtop stat` frame of guest `g` in the fake /proc at `proc_root`,
/// as JSON if `json`.
pub fn stat_once(proc_root: &str, g: &str, json: bool) -> Output {
    let mut args = vec!["stat", "-b", "-n", "1", "-d", "0.1", "-g", g];
    if json {
        args.push("--json");
    }
    args.extend(["--proc-root", proc_root]);
    run(&args)
}

/// One `kvmtop stat --json` frame of guest `g` in the fake /proc at
/// `proc_root`; the run must succeed.
pub fn stat_frame(proc_root: &str, g: &str) -> serde_json::Value {
    let o = stat_once(proc_root, g, true);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    serde_json::from_slice(&o.stdout).expect("JSON frame")
}

/// Run kvmtop with at most `nofile` open files (the shell's `ulimit -n`:
/// no unsafe pre_exec needed).
pub fn kvmtop_with_nofile(nofile: u32, args: &[&str]) -> Output {
    let mut script = format!("ulimit -n {nofile} && exec \"$0\"");
    for i in 1..=args.len() {
        script.push_str(&format!(" \"${i}\""));
    }
    let mut c = Command::new("/bin/sh");
    c.arg("-c")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_kvmtop"))
        .args(args);
    output_within(c, Duration::from_secs(60)).expect("kvmtop did not finish within 60 s")
}

// Not every test binary that includes this module needs it.
#[allow(unused_imports)]
pub use kvmreg_testkit::kvm_usable;

/// The fixture binary beside kvmtop in the target directory, built on
/// demand (a `cargo test -p kvmtop` does not build other packages' bins).
pub fn fixture_bin() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_kvmtop"))
        .parent()
        .expect("target dir")
        .to_path_buf();
    let bin = dir.join("kvmreg-fixture");
    if !bin.exists() {
        let st = Command::new(env!("CARGO"))
            .args(["build", "-p", "kvmreg-fixture", "--bin", "kvmreg-fixture"])
            .status()
            .expect("cargo build kvmreg-fixture");
        assert!(st.success(), "building kvmreg-fixture failed");
    }
    bin
}

/// The fixture's symbol files (`kallsyms`, `vmlinux` with DWARF lines,
/// `guest.S`, `build-id`) written into `dir`.
pub fn fixture_symbols(dir: &Path) {
    let st = Command::new(fixture_bin())
        .args(["--symbols-only", "--guests", "x", "--out"])
        .arg(dir)
        .status()
        .expect("run kvmreg-fixture --symbols-only");
    assert!(st.success(), "kvmreg-fixture --symbols-only failed");
}

#[derive(Debug, Clone)]
pub struct Line {
    pub name: String,
    pub id: Option<u64>,
    pub pid: u32,
    /// The VM's fd in the guest process.
    pub vm_fd: u32,
    pub named: bool,
    pub tids: Vec<u32>,
}

fn parse_line(l: &str) -> Line {
    let f: Vec<&str> = l.split_whitespace().collect();
    assert_eq!(f.len(), 12, "unexpected fixture line {l:?}");
    Line {
        name: f[1].to_string(),
        id: f[3].parse().ok(),
        pid: f[5].parse().expect("pid"),
        vm_fd: f[7].parse().expect("vm_fd"),
        named: f[9] == "yes",
        tids: f[11].split(',').map(|t| t.parse().expect("tid")).collect(),
    }
}

/// The fixture VMM; killed by its pid and reaped on drop (its guest
/// processes die with it).
pub struct Fixture {
    pub child: Child,
    pub lines: Vec<Line>,
}

impl Fixture {
    /// Guests `names` (this test process' pid appended: a registry kernel
    /// refuses duplicate names and tests run in parallel).
    pub fn start(names: &[&str], busy: u32) -> Fixture {
        Fixture::start_with_vcpus(names, busy, 1)
    }

    /// As [`Fixture::start`], each guest with `vcpus` running vCPUs.
    pub fn start_with_vcpus(names: &[&str], busy: u32, vcpus: u32) -> Fixture {
        Fixture::spawn(names, busy, vcpus, &[])
    }

    /// As [`Fixture::start`], with more `kvmreg-fixture` options.
    pub fn start_with(names: &[&str], busy: u32, extra: &[&str]) -> Fixture {
        Fixture::spawn(names, busy, 1, extra)
    }

    /// As [`Fixture::start`], all guests in one process.
    pub fn start_single_process(names: &[&str], busy: u32) -> Fixture {
        Fixture::spawn(names, busy, 1, &["--single-process"])
    }

    fn spawn(names: &[&str], busy: u32, vcpus: u32, extra: &[&str]) -> Fixture {
        let me = std::process::id();
        let guests: Vec<String> = names.iter().map(|n| format!("{n}-{me}")).collect();
        let mut child = Command::new(fixture_bin())
            .args([
                "--guests",
                &guests.join(","),
                "--vcpus",
                &vcpus.to_string(),
                "--busy",
                &busy.to_string(),
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kvmreg-fixture");
        let out = child.stdout.take().expect("stdout");
        let mut lines = Vec::new();
        for l in BufReader::new(out).lines() {
            let l = l.expect("fixture output");
            if l == "ready" {
                break;
            }
            lines.push(parse_line(&l));
        }
        assert_eq!(
            lines.len(),
            names.len(),
            "fixture did not report every guest"
        );
        Fixture { child, lines }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("kvmtop-test-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }
    pub fn write(&self, rel: &str, data: impl AsRef<[u8]>) {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(p, data).expect("write");
    }
    pub fn symlink(&self, rel: &str, target: &str) {
        let p = self.0.join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::os::unix::fs::symlink(target, p).expect("symlink");
    }
    pub fn path(&self) -> &str {
        self.0.to_str().expect("utf-8 temp path")
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fake /proc of a registry kernel: VM `name` id `id` owned by `pid`
/// and by the caller's uid, with a stats file holding `exits`.
pub fn fake_registry_vm(d: &TempDir, pid: u32, id: u64, name: &str, exits: u64) {
    fake_registry_vm_of(d, pid, id, name, exits, kvmreg::model::current_euid());
}

/// [`fake_registry_vm`] owned by `uid`: another user's VM when it is not
/// the caller's, linked as `<name>@<uid>` as the kernel shows it.
pub fn fake_registry_vm_of(d: &TempDir, pid: u32, id: u64, name: &str, exits: u64, uid: u32) {
    d.write(&format!("{pid}/kvm/{id}/name"), format!("{name}\n"));
    d.write(
        &format!("{pid}/kvm/{id}/status"),
        format!(
            "Name:\t{name}\nId:\t{id}\nPid:\t{pid}\nUid:\t{uid}\nVcpus:\t1\nMemoryKiB:\t2048\n"
        ),
    );
    d.write(
        &format!("{pid}/kvm/{id}/vcpus"),
        format!("0 0 {}\n", pid + 1),
    );
    let stats = kvmreg::stats::encode(
        &format!("kvm-{pid}"),
        48,
        &[("exits", 0, &[exits]), ("remote_tlb_flush", 0, &[3])],
    );
    d.write(&format!("{pid}/kvm/{id}/stats"), stats);
    let link = if uid == kvmreg::model::current_euid() {
        name.to_string()
    } else {
        format!("{name}@{uid}")
    };
    d.symlink(&format!("kvm/{link}"), &format!("../{pid}/kvm/{id}"));
    // The owner's CPU times (every process has them; kvmtop reads a VM's
    // process' stat each frame, and a process without one is gone).
    let mut f = vec!["0"; 50];
    f[0] = "S";
    d.write(
        &format!("{pid}/stat"),
        format!("{pid} (vmm) {}\n", f.join(" ")),
    );
    // The kernel's one-read listing, in id order as the kernel writes it
    // (callers add VMs in id order).
    let list = d.0.join("kvm/.list");
    let mut text = std::fs::read_to_string(&list).unwrap_or_default();
    text.push_str(&format!("{id} {pid} {uid} 1 2048 0 {link}\n"));
    std::fs::write(&list, text).expect("write .list");
}
