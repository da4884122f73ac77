//! Run kvmreg's examples (`list_guests`, `watch_guests`) against real
//! fixture guests. Without a usable /dev/kvm each test prints why it is
//! skipped and returns (that is not a pass of the feature).
//!
//! The examples are binaries of another package: `cargo test` builds them
//! into `<target>/debug/examples/`, beside this test's `deps/` directory.
//! Run from a workspace `cargo test` (or after `cargo build -p kvmreg
//! --examples` with the same target directory).

use kvmreg_testkit::kvm_usable;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The example binary `name`, or a failure saying how to build it.
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    // <target>/debug/deps/examples-<hash> -> <target>/debug/examples/<name>
    let debug = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test binary in <target>/<profile>/deps");
    let path = debug.join("examples").join(name);
    assert!(
        path.is_file(),
        "kvmreg example {name} not built at {}: run `cargo test` at the workspace \
         root (which builds examples), or `cargo build -p kvmreg --examples` with \
         the same target directory, then this test again",
        path.display()
    );
    path
}

/// A fixture VMM: one process per guest; killed (by its pid) and reaped
/// on drop, its guest processes with it (PR_SET_PDEATHSIG).
struct Fixture {
    child: Child,
    /// The guests' processes, from the fixture's `guest ...` lines.
    pids: Vec<u32>,
}

impl Fixture {
    /// Start guests `names`, each with this test process' pid appended (a
    /// registry kernel refuses duplicate names, and tests run in parallel).
    fn start(names: &[&str]) -> Fixture {
        let me = std::process::id();
        let names: Vec<String> = names.iter().map(|n| format!("{n}-{me}")).collect();
        let mut child = Command::new(env!("CARGO_BIN_EXE_kvmreg-fixture"))
            .args(["--guests", &names.join(","), "--busy", "5"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start kvmreg-fixture");
        let out = child.stdout.take().expect("fixture stdout");
        let mut pids = Vec::new();
        for l in BufReader::new(out).lines() {
            let l = l.expect("read fixture output");
            if l == "ready" {
                break;
            }
            // guest NAME id ID pid PID vm_fd FD named yes|no vcpus TIDS
            let f: Vec<&str> = l.split_whitespace().collect();
            assert!(f.len() == 12 && f[4] == "pid", "fixture line {l:?}");
            pids.push(f[5].parse().expect("fixture pid"));
        }
        assert_eq!(pids.len(), names.len(), "fixture guests {pids:?}");
        Fixture { child, pids }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Wait for the guest processes to be gone (reaped).
        let deadline = Instant::now() + Duration::from_secs(5);
        for pid in &self.pids {
            while std::path::Path::new(&format!("/proc/{pid}")).exists()
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}

fn text(o: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn list_guests_prints_each_fixture_guest() {
    if !kvm_usable("list_guests_prints_each_fixture_guest") {
        return;
    }
    let bin = example("list_guests");
    let fx = Fixture::start(&["exa", "exb"]);
    let o = Command::new(&bin).output().expect("run list_guests");
    let (out, err) = text(&o);
    println!("list_guests:\n{out}{err}");
    assert!(o.status.success(), "list_guests failed: {:?}", o.status);
    for pid in &fx.pids {
        let line = out
            .lines()
            .find(|l| l.starts_with(&format!("pid {pid} ")))
            .unwrap_or_else(|| panic!("no line for guest pid {pid}"));
        // pid P id I name N... vcpus V: the fixture's guests have one vCPU.
        assert!(line.ends_with(" vcpus 1"), "{line}");
    }
}

#[test]
fn watch_guests_sees_guests_come_and_go() {
    if !kvm_usable("watch_guests_sees_guests_come_and_go") {
        return;
    }
    let bin = example("watch_guests");
    let first = Fixture::start(&["wa"]);
    let a = first.pids[0];
    let started = Instant::now();
    let mut watch = Command::new(&bin)
        .args(["--for-secs", "6", "--interval-ms", "200"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start watch_guests");
    let (tx, rx) = mpsc::channel();
    let out = watch.stdout.take().expect("watch stdout");
    let reader = std::thread::spawn(move || {
        for l in BufReader::new(out).lines() {
            let Ok(l) = l else { break };
            if tx.send((started.elapsed(), l)).is_err() {
                break;
            }
        }
    });
    let mut lines: Vec<(Duration, String)> = Vec::new();
    let plus_a = format!("+ pid {a} ");
    // The guest there at start is listed first (within the tracker's start).
    while !lines.iter().any(|(_, l)| l.starts_with(&plus_a)) {
        match rx.recv_timeout(Duration::from_secs(3)) {
            Ok(l) => lines.push(l),
            Err(e) => {
                let _ = watch.kill();
                let _ = watch.wait();
                panic!("no {plus_a:?} line from watch_guests ({e}): {lines:?}");
            }
        }
    }
    // A guest that comes after the watch began and goes before it ends.
    std::thread::sleep(Duration::from_millis(1500));
    let second = Fixture::start(&["wb"]);
    let b = second.pids[0];
    let b_up = started.elapsed();
    std::thread::sleep(Duration::from_millis(1500));
    drop(second);
    let b_down = started.elapsed();
    // It runs 6 s, then exits 0 by itself.
    let status = loop {
        if let Some(s) = watch.try_wait().expect("wait for watch_guests") {
            break s;
        }
        if started.elapsed() > Duration::from_secs(12) {
            let _ = watch.kill();
            let _ = watch.wait();
            panic!("watch_guests --for-secs 6 still running after 12 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    reader.join().expect("reader thread");
    lines.extend(rx.try_iter());
    let mut err = String::new();
    if let Some(mut e) = watch.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    drop(first);
    println!(
        "watch_guests (guest {a} there at start; {b} up at {b_up:.1?}, killed and reaped by {b_down:.1?}), \
         {status}:"
    );
    for (t, l) in &lines {
        println!("  {t:>8.1?}  {l}");
    }
    print!("{err}");
    assert!(status.success(), "watch_guests exit {status}: {err}");
    let at = |prefix: String| lines.iter().position(|(_, l)| l.starts_with(&prefix));
    assert!(at(format!("- pid {a} ")).is_none(), "guest {a} never went");
    let plus_b = at(format!("+ pid {b} "));
    let minus_b = at(format!("- pid {b} "));
    let events = kvmreg::backend::proc_kvm::available(&kvmreg::procfs::ProcRoot::default())
        || !err.contains("no uevents");
    if plus_b.is_none() && !events {
        // Without uevents a kernel without the VM registry is rescanned
        // only every 5 s: a guest that lived 1.5 s may fall in between.
        println!("NOT CHECKED: guest {b} coming and going (no uevents here: {err})");
        return;
    }
    let plus_b = plus_b.unwrap_or_else(|| panic!("no '+ pid {b}' line"));
    let minus_b = minus_b.unwrap_or_else(|| panic!("no '- pid {b}' line"));
    assert!(plus_b < minus_b, "'- pid {b}' before '+ pid {b}'");
}
