//! The real binary against real guests of the fixture VMM on this host's
//! /dev/kvm. Without /dev/kvm each test says SKIPPED and checks nothing.

mod common;

use common::{kvm_usable, run, run_within, Fixture};
use serde_json::Value;
use std::time::{Duration, Instant};

fn frames(stdout: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad frame {l:?}: {e}")))
        .collect()
}

fn row(frame: &Value, pid: u32) -> Option<&Value> {
    frame["guests"].as_array()?.iter().find(|r| r["pid"] == pid)
}

#[test]
fn list_json_has_the_fixture_guests() {
    if !kvm_usable("list_json_has_the_fixture_guests") {
        return;
    }
    let fx = Fixture::start(&["lista", "listb"], 20);
    // The fast listing (/proc/kvm/.list on a registry kernel) has the same
    // guests, names, ids and vCPU counts as the walk of every process.
    let fast = run(&["list", "--json"]);
    assert!(
        fast.status.success(),
        "{}",
        String::from_utf8_lossy(&fast.stderr)
    );
    let fast: Value = serde_json::from_slice(&fast.stdout).expect("JSON");
    for l in &fx.lines {
        let e = fast
            .as_array()
            .expect("array")
            .iter()
            .find(|e| e["pid"] == l.pid)
            .unwrap_or_else(|| panic!("guest {} (pid {}) missing from {fast:#}", l.name, l.pid));
        assert_eq!(e["vcpus"], l.tids.len(), "{e:#}");
        if l.named {
            assert_eq!(e["name"], l.name.as_str());
            assert_eq!(e["id"], l.id.expect("id of a named guest"));
            assert_eq!(
                e["vcpu_tids"],
                Value::Null,
                "threads are not in .list: {e:#}"
            );
        }
    }
    let o = run(&["list", "--json", "--all"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    for l in &fx.lines {
        let e = v
            .as_array()
            .expect("array")
            .iter()
            .find(|e| e["pid"] == l.pid)
            .unwrap_or_else(|| panic!("guest {} (pid {}) missing from {v:#}", l.name, l.pid));
        let tids: Vec<u64> = l.tids.iter().map(|t| u64::from(*t)).collect();
        assert_eq!(e["vcpu_tids"], serde_json::json!(tids), "{e:#}");
        assert_eq!(e["vcpus"], l.tids.len());
        if l.named {
            assert_eq!(e["name"], l.name.as_str());
            assert_eq!(e["name_kind"], "kernel");
            assert_eq!(e["id"], l.id.expect("id of a named guest"));
        } else {
            eprintln!("NOTE: kernel without the VM registry: names not checked, only pids and vCPU threads");
            assert_eq!(e["name"], Value::Null);
        }
    }
}

#[test]
fn batch_json_frames_show_busy_guests_using_cpu() {
    if !kvm_usable("batch_json_frames_show_busy_guests_using_cpu") {
        return;
    }
    let fx = Fixture::start(&["busya", "busyb"], 50);
    let o = run(&["-b", "-n", "2", "-d", "1", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let f = frames(&o.stdout);
    assert_eq!(f.len(), 2, "one JSON object per frame");
    for frame in &f {
        assert!(
            frame["host"]["host_kernel_pct"].as_f64().is_some(),
            "{frame:#}"
        );
        for l in &fx.lines {
            let r = row(frame, l.pid).unwrap_or_else(|| panic!("pid {} missing: {frame:#}", l.pid));
            let cpu = r["cpu_pct"].as_f64().expect("cpu_pct");
            // --busy 50 on one vCPU: about 50%; allow a loaded 2-core host.
            assert!(cpu > 5.0 && cpu < 150.0, "guest {} cpu {cpu}", l.name);
            let split = r["guest_pct"].as_f64().unwrap()
                + r["host_system_pct"].as_f64().unwrap()
                + r["host_user_pct"].as_f64().unwrap();
            assert!((split - cpu).abs() < 0.01, "split {split} vs {cpu}");
            assert_eq!(r["vcpus"], 1);
        }
    }
}

/// CPU time of thread `tid` of `pid` so far, in ms (utime + stime).
fn thread_cpu_ms(pid: u32, tid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).expect("stat");
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    ticks as f64 * 1000.0 / kvmreg::cpu::clock_ticks_per_second()
}

/// A frame longer than a ring holds (a second or two of samples of a busy
/// vCPU at the 1 ms period) keeps every sample: the rings are drained
/// between frames, not only at them. cpu-clock samples a thread once per
/// ms of its CPU time, so the frame's samples follow the vCPU thread's CPU
/// time (before the fix: a full ring's worth, about 2,700 here, then
/// nothing, not even counted as lost).
#[test]
fn a_long_profile_frame_keeps_its_samples() {
    if !kvm_usable("a_long_profile_frame_keeps_its_samples") {
        return;
    }
    let fx = Fixture::start(&["longa"], 100);
    let (pid, tid) = (fx.lines[0].pid, fx.lines[0].tids[0]);
    let before = thread_cpu_ms(pid, tid);
    let o = run(&[
        "profile",
        "-g",
        &pid.to_string(),
        "-b",
        "-n",
        "1",
        "-d",
        "5",
        "--json",
    ]);
    let cpu_ms = thread_cpu_ms(pid, tid) - before;
    let err = String::from_utf8_lossy(&o.stderr);
    if err.contains("cannot sample") {
        eprintln!("NOT CHECKED: perf sampling refused here: {err}");
        return;
    }
    assert!(o.status.success(), "{err}");
    let f = frames(&o.stdout);
    let samples = ["host", "guest_kernel", "guest_user"]
        .iter()
        .map(|k| f[0][k].as_u64().unwrap_or(0))
        .sum::<u64>() as f64;
    // The profile starts a little after the first reading and ends before
    // the second: a few hundred ms of CPU time it cannot have seen.
    assert!(
        samples > 0.8 * (cpu_ms - 500.0),
        "{samples} samples for {cpu_ms} ms of the vCPU thread's CPU time: {:#}",
        f[0]
    );
}

#[test]
fn guests_are_picked_by_pid_and_wrong_choices_exit_2() {
    if !kvm_usable("guests_are_picked_by_pid_and_wrong_choices_exit_2") {
        return;
    }
    let fx = Fixture::start(&["pica", "picb"], 50);
    let pid = fx.lines[1].pid.to_string();
    let syms = common::TempDir::new("profile-syms");
    common::fixture_symbols(&syms.0);
    let vmlinux = syms.0.join("vmlinux");
    let vmlinux = vmlinux.to_str().expect("utf-8 temp path");
    let o = run(&[
        "profile",
        "-g",
        &pid,
        "-b",
        "-n",
        "1",
        "-d",
        "1",
        "--json",
        "--guestvmlinux",
        vmlinux,
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    if err.contains("cannot sample") {
        eprintln!("NOT CHECKED: perf sampling refused here: {err}");
    } else {
        assert!(o.status.success(), "{err}");
        let f = frames(&o.stdout);
        assert_eq!(f[0]["pid"], fx.lines[1].pid);
        assert!(
            f[0]["host"].as_u64().unwrap() + f[0]["guest_kernel"].as_u64().unwrap() > 0,
            "no samples at all: {:#}",
            f[0]
        );
        // The fixture's vmlinux has DWARF lines: no note that it lacks them,
        // and every named guest function gets its guest.S line.
        let notes = f[0]["notes"].to_string();
        assert!(!notes.contains("DWARF"), "{notes}");
        let funcs = f[0]["functions"].as_array().expect("functions");
        let named: Vec<&Value> = funcs
            .iter()
            .filter(|h| ["main", "hot_a", "hot_b"].contains(&h["symbol"].as_str().unwrap_or("")))
            .collect();
        for h in &named {
            let src = h["source"]
                .as_str()
                .unwrap_or_else(|| panic!("no source: {h}"));
            let line: u32 = src
                .strip_prefix("guest.S:")
                .and_then(|l| l.parse().ok())
                .unwrap_or_else(|| panic!("source {src:?} is not guest.S:<line>"));
            assert!(line > 0);
        }
        if named.is_empty() {
            eprintln!(
                "NOT CHECKED: no guest-mode samples named a guest function in 1 s here, so the SOURCE column was not seen filled (only the absence of a DWARF note was checked)"
            );
        }
    }
    let o = run(&["profile", "-g", "no-such-guest", "-b"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    for l in &fx.lines {
        assert!(
            err.contains(&format!("pid {}", l.pid)),
            "candidates missing: {err}"
        );
    }
}

/// A stopped VMM must not stall a refresh.
#[test]
fn a_sigstopped_vmm_does_not_stall_a_batch_frame() {
    if !kvm_usable("a_sigstopped_vmm_does_not_stall_a_batch_frame") {
        return;
    }
    let fx = Fixture::start(&["stopa", "stopb"], 30);
    let stopped = fx.lines[0].pid;
    // SAFETY: kill with a pid we started and a valid signal.
    assert_eq!(unsafe { libc::kill(stopped as i32, libc::SIGSTOP) }, 0);
    let o = run_within(
        &["-b", "-n", "1", "-d", "0.5", "--json"],
        Duration::from_secs(10),
    );
    // SAFETY: as above.
    unsafe { libc::kill(stopped as i32, libc::SIGCONT) };
    let o = o.expect("a batch frame did not arrive within 10 s while a VMM was stopped");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let f = frames(&o.stdout);
    let r = row(&f[0], stopped).expect("the stopped guest is still listed");
    assert_eq!(
        r["cpu_pct"].as_f64(),
        Some(0.0),
        "a stopped VMM uses no CPU"
    );
    // And it says so: a stopped VMM is not an idle guest.
    assert_eq!(r["state"], "T", "{r}");
    assert!(row(&f[0], fx.lines[1].pid).is_some());
    // Running again, it is no longer shown stopped.
    let o = run_within(
        &["-b", "-n", "1", "-d", "0.3", "--json"],
        Duration::from_secs(10),
    )
    .expect("a batch frame");
    let f = frames(&o.stdout);
    let r = row(&f[0], stopped).expect("the guest is still listed");
    assert_ne!(r["state"], "T", "{r}");
    assert!(r["command"].is_string(), "{r}");
}

#[test]
fn a_vanished_guest_just_disappears_from_the_next_frame() {
    if !kvm_usable("a_vanished_guest_just_disappears_from_the_next_frame") {
        return;
    }
    let mut fx = Fixture::start(&["gone"], 30);
    let pid = fx.lines[0].pid;
    let mut c = common::kvmtop()
        .args(["-b", "-n", "3", "-d", "0.7", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kvmtop");
    // Kill the guest only once the first frame is out, however slow the
    // host (the debug kernel in the test VM is): no fixed sleep.
    let mut out = std::io::BufReader::new(c.stdout.take().expect("piped stdout"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut out, &mut first).expect("first frame");
    fx.child.kill().expect("kill fixture");
    fx.child.wait().expect("reap fixture");
    let mut rest = Vec::new();
    std::io::Read::read_to_end(&mut out, &mut rest).expect("kvmtop output");
    assert!(c.wait().expect("kvmtop exit").success());
    let mut all = first.into_bytes();
    all.extend(rest);
    let f = frames(&all);
    assert_eq!(f.len(), 3);
    assert!(row(&f[0], pid).is_some(), "guest in the first frame");
    assert!(
        row(&f[2], pid).is_none(),
        "guest still in the last frame: {:#}",
        f[2]
    );
}

/// One perf event per vCPU thread: a process short of file descriptors
/// gets frames without sampling and a header that says what to raise.
#[test]
fn too_few_file_descriptors_turn_sampling_off_with_a_reason() {
    if !kvm_usable("too_few_file_descriptors_turn_sampling_off_with_a_reason") {
        return;
    }
    let fx = Fixture::start_with_vcpus(&["fds"], 10, 16);
    let pid = fx.lines[0].pid;
    // 16 vCPU threads need 16 perf fds on top of kvmtop's own few.
    let o = common::kvmtop_with_nofile(12, &["-b", "-n", "2", "-d", "0.5", "--json", "--sample"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    let f = frames(&o.stdout);
    assert_eq!(f.len(), 2);
    for frame in &f {
        let r = row(frame, pid).unwrap_or_else(|| panic!("guest missing: {frame:#}"));
        assert_eq!(r["vcpus"], 16, "{r:#}");
        assert_eq!(frame["sampling"]["state"], "off", "{frame:#}");
        let reason = frame["sampling"]["reason"].as_str().unwrap_or("");
        if reason.contains("refused") {
            eprintln!("NOT CHECKED: perf sampling is refused here anyway: {reason}");
            return;
        }
        assert!(
            reason.contains("out of file descriptors") && reason.contains("ulimit -n"),
            "{reason}"
        );
    }
}

/// kvmtop keeps its guest set between frames and follows the kernel's
/// uevents: a guest started, renamed (registry kernel) and destroyed while
/// it runs is right in the frames that follow, without a full rescan
/// (which comes only every 60 s).
#[test]
fn guests_created_renamed_and_destroyed_between_frames_are_right_in_the_next_frames() {
    if !kvm_usable(
        "guests_created_renamed_and_destroyed_between_frames_are_right_in_the_next_frames",
    ) {
        return;
    }
    use std::io::BufRead;
    let renamed = Fixture::start(&["evold"], 20);
    let mut gone = Fixture::start(&["evgone"], 20);
    let mut c = common::kvmtop()
        .args(["-b", "-n", "1000", "-d", "0.5", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("kvmtop");
    let mut out = std::io::BufReader::new(c.stdout.take().expect("piped stdout"));
    let mut next_frame = || {
        let mut l = String::new();
        out.read_line(&mut l).expect("a frame");
        serde_json::from_str::<Value>(&l).unwrap_or_else(|e| panic!("bad frame {l:?}: {e}"))
    };
    let first = next_frame();
    let (r, g) = (&renamed.lines[0], &gone.lines[0]);
    assert!(
        row(&first, r.pid).is_some() && row(&first, g.pid).is_some(),
        "{first:#}"
    );
    let new = Fixture::start(&["evnew"], 20);
    // Unique like the fixture's own names (it adds the test's pid).
    let new_name = format!("evrenamed-{}", std::process::id());
    if r.named {
        let o = run(&["name", &r.pid.to_string(), &new_name]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    gone.child.kill().expect("kill");
    gone.child.wait().expect("reap");
    // The guest's VMM process ends after the fixture's (it follows its
    // parent's death): wait for it, then take a frame begun after that
    // (frames made meanwhile wait in the pipe).
    let vmm = format!("/proc/{}/stat", g.pid);
    let start = Instant::now();
    while std::fs::read_to_string(&vmm)
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
        .unwrap_or(false)
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "VMM {} still runs",
            g.pid
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let ended = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let mut f = next_frame();
    for _ in 0..100 {
        // A frame's `time` is when it was made; one whole interval later
        // its reading began after the VMM ended.
        if f["time"].as_f64().is_some_and(|t| t > ended + 0.6) {
            break;
        }
        f = next_frame();
    }
    c.kill().ok();
    c.wait().ok();
    let n = &new.lines[0];
    assert!(row(&f, n.pid).is_some(), "started guest missing: {f:#}");
    assert!(
        row(&f, g.pid).is_none(),
        "destroyed guest still there: {f:#}"
    );
    let r_row = row(&f, r.pid).unwrap_or_else(|| panic!("renamed guest missing: {f:#}"));
    if r.named {
        assert_eq!(r_row["name"], new_name.as_str(), "{r_row:#}");
        assert_eq!(row(&f, n.pid).expect("new")["name"], n.name.as_str());
    } else {
        eprintln!("NOT CHECKED: kernel without the VM registry: no rename");
    }
}

/// The first host CPU this process may run on (`Cpus_allowed_list`: a
/// container's cpuset need not hold CPU 0).
fn first_allowed_cpu() -> String {
    let s = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    s.lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .and_then(|v| {
            let first = v.trim().split([',', '-']).next()?;
            first.parse::<usize>().ok().map(|n| n.to_string())
        })
        .unwrap_or_else(|| "0".into())
}

/// CPU ticks (user + system) of the threads of `pid` named `worker-*`.
fn worker_ticks(pid: u32) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).expect("task dir") {
        let Ok(e) = e else { continue };
        let Ok(s) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let Some((head, rest)) = s.rsplit_once(") ") else {
            continue;
        };
        if !head.contains("(worker-") {
            continue;
        }
        let f: Vec<&str> = rest.split(' ').collect();
        // utime and stime are fields 14 and 15; rest starts at field 3.
        n += f[11].parse::<u64>().unwrap_or(0) + f[12].parse::<u64>().unwrap_or(0);
    }
    n
}

#[test]
fn steal_is_the_time_a_busy_vcpu_waits_and_other_the_vmm_threads_beside_it() {
    let test = "steal_is_the_time_a_busy_vcpu_waits_and_other_the_vmm_threads_beside_it";
    if !kvm_usable(test) {
        return;
    }
    // Two always-busy guests pinned to one host CPU: each vCPU thread is
    // either running or waiting for the CPU, so its STEAL is the rest of
    // its %CPU (and, alone on that CPU, about half).
    let cpu = first_allowed_cpu();
    let pinned = Fixture::start_with(&["stla", "stlb"], 100, &["--cpu", &cpu]);
    // A guest whose VMM has two more threads at 25% of a CPU each.
    let io = Fixture::start_with(
        &["oth"],
        10,
        &["--extra-threads", "2", "--extra-busy", "25"],
    );
    let opid = io.lines[0].pid;
    let hz = 100.0; // USER_HZ, which /proc's ticks are in on Linux.
    let (w0, t0) = (worker_ticks(opid), Instant::now());
    let o = run(&[
        "-b",
        "-n",
        "2",
        "-d",
        "1",
        "--json",
        "--columns",
        "steal,other",
    ]);
    let (w1, t1) = (worker_ticks(opid), Instant::now());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let f = frames(&o.stdout);
    let last = f.last().expect("a frame");
    for l in &pinned.lines {
        let r = row(last, l.pid).unwrap_or_else(|| panic!("pid {} missing: {last:#}", l.pid));
        let cpu = r["cpu_pct"].as_f64().expect("cpu_pct");
        let steal = r["steal_pct"]
            .as_f64()
            .unwrap_or_else(|| panic!("no steal_pct: {r:#}"));
        assert!(
            (cpu + steal - 100.0).abs() < 15.0,
            "{}: %CPU {cpu} + %STEAL {steal} should be about 100",
            l.name
        );
        assert!(
            steal > 30.0,
            "{}: %STEAL {steal} with two on one CPU",
            l.name
        );
        assert_eq!(
            r["vcpu_steal_pct"].as_array().map(Vec::len),
            Some(1),
            "{r:#}"
        );
    }
    let r = row(last, opid).unwrap_or_else(|| panic!("pid {opid} missing: {last:#}"));
    let other = r["other_pct"]
        .as_f64()
        .unwrap_or_else(|| panic!("no other_pct: {r:#}"));
    let truth = 100.0 * (w1 - w0) as f64 / hz / t1.duration_since(t0).as_secs_f64();
    assert!(
        (other - truth).abs() < 12.0,
        "%OTHER {other} against the workers' own {truth:.1}%"
    );
    assert!(
        other > 10.0,
        "%OTHER {other}: the two workers were not seen"
    );
    // Off by default: no figures, no reads of the vCPU threads.
    let o = run(&["-b", "-n", "1", "-d", "0.5", "--json"]);
    let f = frames(&o.stdout);
    let r = row(&f[0], opid).expect("row");
    assert!(
        r.get("steal_pct").is_none() && r.get("other_pct").is_none(),
        "{r:#}"
    );
}

#[test]
fn a_root_owned_libvirt_pid_file_names_the_guest_below_the_kernels_name() {
    let test = "a_root_owned_libvirt_pid_file_names_the_guest_below_the_kernels_name";
    if !kvm_usable(test) || !kvmreg_testkit::root(test, "to own a pid file as root") {
        return;
    }
    let fx = Fixture::start(&["lv"], 10);
    let l = &fx.lines[0];
    let dir = common::TempDir::new("libvirt-run");
    let sys = dir.0.join("qemu");
    std::fs::create_dir_all(&sys).expect("pid file dir");
    let domain = format!("dom-{}", std::process::id());
    std::fs::write(sys.join(format!("{domain}.pid")), format!("{}\n", l.pid)).expect("pid file");
    let o = run(&[
        "list",
        "--json",
        "--libvirt-dir",
        sys.to_str().expect("utf-8 temp path"),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let e = v
        .as_array()
        .expect("array")
        .iter()
        .find(|e| e["pid"] == l.pid)
        .unwrap_or_else(|| panic!("pid {} not listed: {v:#}", l.pid));
    if l.named {
        // The registry's name is the kernel's and stays.
        assert_eq!(e["name_kind"], "kernel", "{e:#}");
        assert_eq!(e["name"], l.name.as_str(), "{e:#}");
    } else {
        assert_eq!(e["name_kind"], "libvirt", "{e:#}");
        assert_eq!(e["name"], domain.as_str(), "{e:#}");
        assert!(e.to_string().contains("libvirt-pid-file"), "{e:#}");
        // And -g picks the guest by it (its stats may be out of reach
        // without debugfs: then the error names the guest it picked).
        let o = run(&[
            "stat",
            "-b",
            "-g",
            &domain,
            "--libvirt-dir",
            sys.to_str().unwrap_or(""),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success() || err.contains(&format!("guest {domain} (pid {})", l.pid)),
            "{err}"
        );
    }
}

/// `write_bytes` of `/proc/<pid>/io`.
fn written(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/io"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("write_bytes:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

#[test]
fn disk_columns_show_the_vmm_storage_io() {
    let test = "disk_columns_show_the_vmm_storage_io";
    if !kvm_usable(test) {
        return;
    }
    // 256 KiB a second written, synced, dropped and read back.
    let fx = Fixture::start_with(&["dsk"], 10, &["--disk-rate", "256"]);
    let pid = fx.lines[0].pid;
    let start = Instant::now();
    while written(pid) == 0 && start.elapsed() < Duration::from_secs(3) {
        std::thread::sleep(Duration::from_millis(100));
    }
    if written(pid) == 0 {
        kvmreg_testkit::skip(
            kvmreg_testkit::Facility::DiskIo,
            test,
            format_args!(
                "{} is on a file system without writeback (tmpfs?): /proc/<pid>/io counts no writes there; the disk columns were NOT tested",
                std::env::temp_dir().display()
            ),
        );
        return;
    }
    let o = run(&["-b", "-n", "1", "-d", "3", "--json", "--columns", "disk"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let f = frames(&o.stdout);
    let r = row(&f[0], pid).unwrap_or_else(|| panic!("pid {pid} missing: {:#}", f[0]));
    // Three one-second bursts in three seconds, give or take one.
    for k in ["disk_read_bps", "disk_write_bps"] {
        let v = r[k].as_f64().unwrap_or_else(|| panic!("no {k}: {r:#}"));
        assert!(
            (128.0 * 1024.0..=400.0 * 1024.0).contains(&v),
            "{k} {v} B/s for 256 KiB/s"
        );
    }
}

#[test]
fn network_columns_show_the_tap_traffic_both_ways() {
    let test = "network_columns_show_the_tap_traffic_both_ways";
    if !kvm_usable(test) || !kvmreg_testkit::root(test, "creating a tap device") {
        return;
    }
    if let Err(e) = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
    {
        kvmreg_testkit::skip(
            kvmreg_testkit::Facility::Tun,
            test,
            format_args!("/dev/net/tun not usable ({e}): the network columns were NOT tested"),
        );
        return;
    }
    // The guest sends 64 KiB a second through the tap kvt<pid> and
    // receives 32; a neighbour has no tap.
    let fx = Fixture::start_with(&["neta"], 10, &["--net-rate", "64"]);
    let quiet = Fixture::start(&["netb"], 10);
    let pid = fx.lines[0].pid;
    let o = run(&["-b", "-n", "3", "-d", "1", "--json", "--columns", "net"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let f = frames(&o.stdout);
    // The first frame has no rates (one reading); average the other two.
    let mut sum = [0.0; 2];
    for fr in &f[1..] {
        let r = row(fr, pid).unwrap_or_else(|| panic!("pid {pid} missing: {fr:#}"));
        println!("{}", r["net_devices"]);
        let d = &r["net_devices"][0];
        assert_eq!(d["device"], format!("kvt{pid}"), "{r:#}");
        assert_eq!(d["kind"], "tap", "{r:#}");
        assert_eq!(r["net_devices"].as_array().map(Vec::len), Some(1), "{r:#}");
        for (i, k) in ["net_rx_bps", "net_tx_bps"].iter().enumerate() {
            sum[i] += r[k].as_f64().unwrap_or_else(|| panic!("no {k}: {r:#}"));
        }
        // What the guest sent is the fixture's 1024-byte frames alone
        // (what it received may include the host's own packets, such as
        // IPv6 neighbour discovery on a new link).
        let pps = d["tx_pps"].as_f64().expect("tx_pps");
        let bps = d["tx_bps"].as_f64().expect("tx_bps");
        assert!((bps - 1024.0 * pps).abs() < 1.0, "{d:#}");
        let other = row(fr, quiet.lines[0].pid).expect("the neighbour");
        assert_eq!(other.get("net_devices"), None, "{other:#}");
        assert_eq!(other.get("net_rx_bps"), None, "{other:#}");
    }
    for ((k, v), want) in ["received", "sent"].iter().zip(sum).zip([32768.0, 65536.0]) {
        let v = v / 2.0;
        assert!(
            (0.8 * want..=1.2 * want).contains(&v),
            "the guest {k} {v} B/s, not {want}"
        );
    }
    // The text columns.
    let o = run(&["-b", "-n", "1", "-d", "0.5", "--columns", "net"]);
    let t = String::from_utf8_lossy(&o.stdout);
    assert!(t.contains(" NETRX/s NETTX/s "), "{t}");
}
