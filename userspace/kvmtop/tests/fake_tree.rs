//! The real binary against fake /proc trees of a registry kernel: runs on
//! any host, /dev/kvm or not.

mod common;

use common::{
    fake_registry_vm, fake_registry_vm_of, listed_names, run, stat_frame, stat_once, TempDir,
};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::Stdio;

#[test]
fn list_json_shows_registry_names_ids_and_sources() {
    let d = TempDir::new("list");
    fake_registry_vm(&d, 10, 3, "web", 5);
    fake_registry_vm(&d, 20, 4, "db", 7);
    let o = run(&["list", "--json", "--proc-root", d.path()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    let a = v.as_array().expect("array");
    assert_eq!(a.len(), 2);
    assert_eq!(a[0]["name"], "web");
    assert_eq!(a[0]["name_kind"], "kernel");
    assert_eq!(a[0]["id"], 3);
    assert_eq!(a[0]["pid"], 10);
    assert_eq!(a[0]["uid"], kvmreg::model::current_euid());
    assert_eq!(a[0]["memory_bytes"], 2048 * 1024);
    // From /proc/kvm/.list: the vCPU count, not the threads.
    assert_eq!(a[0]["vcpus"], 1);
    assert_eq!(a[0]["vcpu_tids"], Value::Null);
    assert_eq!(a[0]["sources"][0], "proc-kvm");
    assert_eq!(a[1]["name"], "db");
    // --all reads every process' /proc/<pid>/kvm, threads included.
    let o = run(&["list", "--json", "--all", "--proc-root", d.path()]);
    let v: Value = serde_json::from_slice(&o.stdout).expect("JSON");
    assert_eq!(v[0]["vcpu_tids"], serde_json::json!([11]));
    assert_eq!(v[1]["name"], "db");
    let t = run(&["list", "--proc-root", d.path()]);
    let t = String::from_utf8_lossy(&t.stdout);
    assert!(
        t.lines()
            .any(|l| l.starts_with("web ") && l.contains(" 2M ")),
        "{t}"
    );
}

/// Names belong to users: another user's `web` is `web@<uid>` in every
/// view, `-g web` is never it, and `-g web@<uid>` picks it.
#[test]
fn other_users_guests_are_qualified_and_never_taken_for_ones_own() {
    let me = kvmreg::model::current_euid();
    let other = if me == 4242 { 4243 } else { 4242 };
    let d = TempDir::new("other-user");
    fake_registry_vm(&d, 10, 3, "web", 5);
    fake_registry_vm_of(&d, 20, 4, "web", 7, other);
    let o = run(&["list", "--json", "--proc-root", d.path()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let qualified = format!("web@{other}");
    assert_eq!(listed_names(&o.stdout), ["web", qualified.as_str()]);
    assert_eq!(stat_frame(d.path(), "web")["pid"], 10);
    assert_eq!(stat_frame(d.path(), &qualified)["pid"], 20);
    // Alone, the other user's guest is still not "web".
    let d2 = TempDir::new("other-user-alone");
    fake_registry_vm_of(&d2, 20, 4, "web", 7, other);
    let o = stat_once(d2.path(), "web", false);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no guest matches 'web'") && err.contains(&qualified),
        "{err}"
    );
}

#[test]
fn unknown_and_ambiguous_guests_exit_2_listing_candidates() {
    let d = TempDir::new("select");
    fake_registry_vm(&d, 10, 3, "web", 5);
    fake_registry_vm(&d, 20, 4, "db", 7);
    for args in [
        vec!["stat", "-b", "-g", "nosuch"],
        vec!["stat", "-b"],
        vec!["name", "nosuch", "x"],
    ] {
        let mut a = args.clone();
        a.extend(["--proc-root", d.path()]);
        let o = run(&a);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("web") && err.contains("db") && err.contains("pid 20"),
            "{err}"
        );
    }
}

#[test]
fn stat_reads_the_registry_stats_file_by_name_id_and_pid() {
    let d = TempDir::new("stat");
    fake_registry_vm(&d, 10, 3, "web", 5);
    fake_registry_vm(&d, 20, 4, "db", 7);
    for g in ["db", "4", "20"] {
        let v = stat_frame(d.path(), g);
        assert_eq!(v["pid"], 20);
        assert_eq!(v["source"], "proc-kvm");
        let exits = v["stats"]
            .as_array()
            .expect("stats")
            .iter()
            .find(|s| s["name"] == "exits")
            .expect("exits stat");
        assert_eq!(exits["total"], 7);
        assert_eq!(exits["per_s"], 0.0);
    }
}

#[test]
fn batch_rows_show_exits_where_stats_are_readable() {
    let d = TempDir::new("batch");
    fake_registry_vm(&d, 10, 3, "web", 5);
    d.write("stat", "cpu  1 0 1 10 0 0 0 0 0 0\n");
    let o = run(&[
        "-b",
        "-n",
        "2",
        "-d",
        "0.1",
        "--json",
        "--proc-root",
        d.path(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let frames: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert_eq!(frames.len(), 2);
    let r = &frames[1]["guests"][0];
    assert_eq!(r["name"], "web");
    assert_eq!(r["exits_per_s"], 0.0);
    assert_eq!(r["stats_source"], "proc-kvm");
    assert_eq!(frames[1]["backend"], "proc-kvm");
}

/// A registry kernel's stats file holds only the VM's stats; exits and
/// halt polling (vCPU stats) come from debugfs, matched by pid and VM fd.
#[test]
fn registry_rows_take_vcpu_counters_from_debugfs() {
    let d = TempDir::new("batch-dbg");
    fake_registry_vm(&d, 10, 3, "web", 5);
    fake_registry_vm(&d, 20, 4, "db", 7);
    for (pid, id) in [(10, 3), (20, 4)] {
        // Real VM stats: no exits.
        let stats = kvmreg::stats::encode("kvm", 48, &[("remote_tlb_flush", 0, &[3])]);
        d.write(&format!("{pid}/kvm/{id}/stats"), stats);
    }
    d.symlink("10/fd/6", "anon_inode:kvm-vm");
    d.write("10/fdinfo/6", "pos:\t0\nkvm_vm_id:\t3\n");
    d.write("debugfs/kvm/10-6/exits", "1234\n");
    d.write("debugfs/kvm/10-6/halt_attempted_poll", "10\n");
    d.write("debugfs/kvm/10-6/halt_successful_poll", "5\n");
    d.write("debugfs/kvm/10-9/exits", "1\n"); // not web's fd
    d.write("stat", "cpu  1 0 1 10 0 0 0 0 0 0\n");
    let dbg = d.0.join("debugfs");
    let dbg = dbg.to_str().expect("utf-8");
    let o = run(&[
        "-b",
        "-n",
        "2",
        "-d",
        "0.1",
        "--json",
        "--proc-root",
        d.path(),
        "--debugfs-root",
        dbg,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = String::from_utf8_lossy(&o.stdout);
    let f: Value = serde_json::from_str(out.lines().nth(1).expect("2 frames")).expect("JSON");
    let row = |name: &str| {
        f["guests"]
            .as_array()
            .expect("guests")
            .iter()
            .find(|r| r["name"] == name)
            .unwrap_or_else(|| panic!("{name} missing: {f:#}"))
            .clone()
    };
    let web = row("web");
    assert_eq!(web["stats_source"], "proc-kvm", "{web:#}");
    assert_eq!(web["exits_per_s"], 0.0, "{web:#}");
    assert_eq!(web["exits_source"], "debugfs", "{web:#}");
    assert_eq!(web["halt_poll_source"], "debugfs", "{web:#}");
    // db (pid 20) has no debugfs directory: its row says why exits are
    // missing.
    let db = row("db");
    assert_eq!(db["stats_source"], "proc-kvm", "{db:#}");
    assert_eq!(db["exits_per_s"], Value::Null, "{db:#}");
    assert_eq!(db["exits_source"], Value::Null, "{db:#}");
    assert!(
        db["stats_notes"]
            .to_string()
            .contains("come only from debugfs"),
        "{db:#}"
    );

    // `stat` says per counter where it came from.
    let o = run(&[
        "stat",
        "-b",
        "-n",
        "1",
        "-d",
        "0.1",
        "-g",
        "web",
        "--proc-root",
        d.path(),
        "--debugfs-root",
        dbg,
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let t = String::from_utf8_lossy(&o.stdout);
    let line = |name: &str| {
        t.lines()
            .find(|l| l.starts_with(&format!("{name} ")))
            .unwrap_or_else(|| panic!("{name} missing:\n{t}"))
            .split_whitespace()
            .collect::<Vec<_>>()
    };
    assert_eq!(line("exits"), ["exits", "1234", "0.0", "debugfs"], "{t}");
    assert_eq!(
        line("remote_tlb_flush"),
        ["remote_tlb_flush", "3", "0.0", "proc-kvm"],
        "{t}"
    );
}

#[test]
fn name_writes_the_registry_name_file() {
    let d = TempDir::new("name");
    fake_registry_vm(&d, 10, 3, "web", 5);
    let o = run(&["name", "web", "frontend", "--proc-root", d.path()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let n = std::fs::read_to_string(d.0.join("10/kvm/3/name")).expect("name file");
    assert_eq!(n, "frontend\n");
}

#[test]
fn name_on_a_kernel_without_the_registry_says_so() {
    let d = TempDir::new("name-unpatched");
    d.symlink("10/fd/4", "anon_inode:kvm-vm");
    d.write("10/status", "Name:\tqemu\nUid:\t0\t0\t0\t0\n");
    let o = run(&["name", "10", "web", "--proc-root", d.path()]);
    assert_eq!(o.status.code(), Some(1));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("needs the VM registry kernel"), "{err}");
}

#[test]
fn serve_answers_a_scrape_over_http_with_labelled_metrics() {
    let d = TempDir::new("serve");
    fake_registry_vm(&d, 10, 3, "web", 5);
    let mut c = common::kvmtop()
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--max-requests",
            "1",
            "--proc-root",
            d.path(),
        ])
        .stderr(Stdio::piped())
        .spawn()
        .expect("start kvmtop serve");
    let mut line = String::new();
    BufReader::new(c.stderr.take().expect("stderr"))
        .read_line(&mut line)
        .expect("listen line");
    let addr = line
        .split("http://")
        .nth(1)
        .and_then(|s| s.split('/').next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    let mut s = std::net::TcpStream::connect(&addr).expect("connect");
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).expect("response");
    assert!(c.wait().expect("serve exit").success());
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    assert!(body.contains("application/openmetrics-text"), "{body}");
    assert!(
        body.contains("kvmtop_guest_exits_total{name=\"web\",id=\"3\",pid=\"10\"} 5"),
        "{body}"
    );
    assert!(
        body.contains("kvmtop_guest_memory_bytes{name=\"web\",id=\"3\",pid=\"10\"} 2097152"),
        "{body}"
    );
    assert!(body.trim_end().ends_with("# EOF"), "{body}");
}

#[test]
fn man_page_and_completions_are_generated() {
    let m = run(&["man"]);
    assert!(m.status.success());
    assert!(String::from_utf8_lossy(&m.stdout).contains(".TH kvmtop"));
    let c = run(&["completions", "zsh"]);
    assert!(c.status.success());
    assert!(String::from_utf8_lossy(&c.stdout).contains("#compdef kvmtop"));
    let h = run(&["--help"]);
    assert!(String::from_utf8_lossy(&h.stdout).contains("Examples:"));
}

/// A reader that goes away (`| head`) ends kvmtop quietly with status 0,
/// whatever the writer: the list as JSON (larger than a pipe holds, so the
/// reader goes mid-write), the man page, completions (the reader gone
/// before the first write).
#[test]
fn a_closed_pipe_is_a_quiet_end() {
    let d = TempDir::new("epipe");
    for i in 0..1000 {
        fake_registry_vm(&d, 1000 + i, u64::from(i) + 1, &format!("g{i}"), 5);
    }
    for (args, read_first) in [
        (vec!["list", "--json", "--proc-root", d.path()], true),
        (vec!["man"], false),
        (vec!["completions", "zsh"], false),
    ] {
        let mut c = common::kvmtop()
            .args(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kvmtop");
        let out = c.stdout.take().expect("stdout");
        if read_first {
            // One line, then the pipe closed, as `head -1` does.
            let mut first = String::new();
            BufReader::new(out)
                .read_line(&mut first)
                .expect("first line");
        } else {
            drop(out);
        }
        let o = c.wait_with_output().expect("wait");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success() && !err.contains("panicked"),
            "{args:?}: {}: {err}",
            o.status
        );
    }
}
