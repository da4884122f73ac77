//! `kvmtop stat --exits` against real guests: exit reasons from the
//! `kvm:kvm_exit`/`kvm:kvm_entry` tracepoints of one guest's vCPU threads.
//!
//! Needs root, /dev/kvm, a kernel with event tracing and a KVM that emits
//! the tracepoints (kvm_intel or kvm_amd). In CI it runs in the debug
//! kernel's test VM (the fast kernel has no event tracing). Where tracefs
//! or debugfs is not mounted, kvmtop runs in a private mount namespace
//! that has them, so the host's mounts stay as they are.

mod common;

use common::{output_within, Fixture};
use kvmreg_testkit::{kvm_usable, root, skip, Facility};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// Mount tracefs and debugfs where they are missing (a second mount of
/// one already there fails with EBUSY).
const MOUNTS: &str =
    "{ [ -d /sys/kernel/tracing/events ] || mount -t tracefs nodev /sys/kernel/tracing; } && \
     { [ -d /sys/kernel/debug/kvm ] || mount -t debugfs nodev /sys/kernel/debug; }";

/// Whether this machine can trace exits; says why not (a visible skip).
fn exit_tracepoints(test: &str) -> bool {
    if !kvm_usable(test) || !root(test, "tracing another process' vCPU threads") {
        return false;
    }
    if let Some(note) = kvmreg::perf::exits::vendor_note() {
        skip(
            Facility::ExitTracepoints,
            test,
            format_args!("{note}; exit reasons NOT tested"),
        );
        return false;
    }
    let probe = Command::new("unshare")
        .args([
            "-m",
            "sh",
            "-c",
            &format!("{MOUNTS} && [ -e /sys/kernel/tracing/events/kvm/kvm_exit/id ]"),
        ])
        .output();
    match probe {
        Ok(o) if o.status.success() => true,
        Ok(o) => {
            skip(
                Facility::ExitTracepoints,
                test,
                format_args!(
                    "no kvm/kvm_exit event in tracefs (a kernel without event tracing?) {}; exit reasons NOT tested",
                    String::from_utf8_lossy(&o.stderr).trim()
                ),
            );
            false
        }
        Err(e) => {
            skip(
                Facility::ExitTracepoints,
                test,
                format_args!("no unshare ({e}); exit reasons NOT tested"),
            );
            false
        }
    }
}

/// kvmtop with `args`, in a mount namespace with tracefs and debugfs.
fn kvmtop_traced(args: &[&str]) -> std::process::Output {
    let mut c = Command::new("unshare");
    c.args(["-m", "sh", "-c", &format!("{MOUNTS} && exec \"$0\" \"$@\"")])
        .arg(env!("CARGO_BIN_EXE_kvmtop"))
        .args(args);
    output_within(c, Duration::from_secs(120)).expect("kvmtop stat --exits did not finish in 120 s")
}

fn reason<'a>(frame: &'a Value, names: &[&str]) -> Option<&'a Value> {
    frame["exits"]["reasons"]
        .as_array()?
        .iter()
        .find(|r| names.contains(&r["reason"].as_str().unwrap_or("")))
}

/// The counter `name` over the frame's interval, from the KVM stats.
fn counted(frame: &Value, name: &str) -> Option<f64> {
    let s = frame["stats"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)?;
    Some(s["per_s"].as_f64()? * frame["interval_s"].as_f64()?)
}

fn near(a: f64, b: f64) -> bool {
    (a - b).abs() <= f64::max(3.0, 0.15 * a.max(b))
}

/// A guest that writes a port once a round before its `hlt` shows as many
/// `io` exits as `hlt` exits, at the rate KVM's own `io_exits` and
/// `halt_exits` counters show; its halts hold the vCPU (the VMM sleeps in
/// them) for most of the time; and a busy neighbour's halts, untraced,
/// are not counted.
#[test]
fn port_writes_and_halts_show_under_their_reasons_at_the_kernels_rates() {
    let test = "port_writes_and_halts_show_under_their_reasons_at_the_kernels_rates";
    if !exit_tracepoints(test) {
        return;
    }
    let fx = Fixture::start_with(&["exa"], 30, &["--port-io"]);
    let _neighbour = Fixture::start(&["exb"], 60);
    let l = &fx.lines[0];
    let pid = l.pid.to_string();
    let out = kvmtop_traced(&[
        "stat", "--exits", "-b", "--json", "-n", "3", "-d", "1", "-g", &pid,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let frames: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON frame"))
        .collect();
    assert_eq!(frames.len(), 3);
    for f in &frames {
        let e = &f["exits"];
        println!("exits: {e}");
        assert_eq!(e["threads"], serde_json::json!(l.tids), "{e:#}");
        assert_eq!(e["lost"], 0, "{e:#}");
        let io =
            reason(f, &["io", "IO_INSTRUCTION"]).unwrap_or_else(|| panic!("no io exits: {e:#}"));
        let hlt = reason(f, &["hlt", "HLT"]).unwrap_or_else(|| panic!("no hlt exits: {e:#}"));
        let n = |r: &Value| r["exits"].as_f64().expect("exits");
        assert!(n(io) >= 1.0, "{e:#}");
        // One io and one hlt a round: equal but for the rounds the
        // interval cuts.
        assert!((n(io) - n(hlt)).abs() <= 2.0, "io and hlt differ: {e:#}");
        // The kernel's own counters agree.
        let io_exits = counted(f, "io_exits").expect("io_exits in the stats");
        let halt_exits = counted(f, "halt_exits").expect("halt_exits in the stats");
        assert!(
            near(n(io), io_exits),
            "io {} vs io_exits {io_exits}: {f:#}",
            n(io)
        );
        assert!(
            near(n(hlt), halt_exits),
            "hlt {} vs halt_exits {halt_exits}: {f:#}",
            n(hlt)
        );
        // At 30% busy the VMM sleeps in the halts about 70% of the time.
        let pct = hlt["handling_pct"].as_f64().expect("handling_pct");
        assert!((35.0..=100.0).contains(&pct), "hlt handling {pct}%: {e:#}");
        assert!(
            io["avg_handling_us"].as_f64().is_some_and(|us| us > 0.0),
            "{e:#}"
        );
    }
}

/// Without tracefs, `--exits` says what to mount and exits non-zero.
#[test]
fn without_tracefs_exits_says_what_to_mount() {
    let test = "without_tracefs_exits_says_what_to_mount";
    if !kvm_usable(test) || !root(test, "unmounting tracefs in a private mount namespace") {
        return;
    }
    if !Command::new("unshare")
        .args(["-m", "true"])
        .status()
        .is_ok_and(|s| s.success())
    {
        skip(
            Facility::Root,
            test,
            "cannot enter a private mount namespace (util-linux unshare); NOT tested",
        );
        return;
    }
    let fx = Fixture::start(&["exn"], 10);
    let pid = fx.lines[0].pid.to_string();
    // Everything tracefs could be reached through, unmounted in a private
    // namespace only.
    let mut c = Command::new("unshare");
    c.args([
        "-m",
        "sh",
        "-c",
        "for m in /sys/kernel/tracing /sys/kernel/debug/tracing /sys/kernel/debug; do \
         umount $m 2>/dev/null; done; exec \"$0\" \"$@\"",
    ])
    .arg(env!("CARGO_BIN_EXE_kvmtop"))
    .args(["stat", "--exits", "-b", "-n", "1", "-d", "0.1", "-g", &pid]);
    let Some(out) = output_within(c, Duration::from_secs(60)) else {
        panic!("kvmtop stat --exits did not finish in 60 s");
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("mount -t tracefs"), "{err}");
    assert!(err.contains(&format!("pid {pid}")), "{err}");
}
