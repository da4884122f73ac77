//! The real binary against a registry /proc that changes under it: VMMs
//! that die between the directory walk and the reads, guests renamed
//! between frames. Fake trees, so the timing is exact and it runs anywhere.
//! (The live counterparts, a SIGSTOPped VMM, a killed guest and too few file
//! descriptors, are in tests/fixture.rs.)

mod common;

use common::{fake_registry_vm, kvmtop, listed_names, run, TempDir};
use serde_json::Value;
use std::io::{BufRead, BufReader, Read};
use std::process::Stdio;

/// Leftovers of VMMs that died while kvmtop walked /proc: a process whose
/// VM directory is empty (listed, then gone before `status` was read), a
/// process whose `kvm` directory is empty, and a `/proc/kvm` link to a
/// process that no longer exists.
fn half_gone(d: &TempDir) {
    std::fs::create_dir_all(d.0.join("30/kvm/7")).expect("mkdir");
    std::fs::create_dir_all(d.0.join("40/kvm")).expect("mkdir");
    d.symlink("kvm/ghost", "../50/kvm/9");
}

#[test]
fn vmms_gone_between_readdir_and_read_are_left_out_without_an_error() {
    let d = TempDir::new("half-gone");
    fake_registry_vm(&d, 10, 3, "web", 5);
    half_gone(&d);

    let o = run(&["list", "--json", "--proc-root", d.path()]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{err}");
    assert!(
        err.trim().is_empty(),
        "a vanished VMM is not an error: {err}"
    );
    assert_eq!(listed_names(&o.stdout), ["web"]);

    let o = run(&[
        "-b",
        "-n",
        "2",
        "-d",
        "0.2",
        "--json",
        "--proc-root",
        d.path(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    for l in String::from_utf8_lossy(&o.stdout).lines() {
        let f: Value = serde_json::from_str(l).expect("frame");
        assert_eq!(f["guests_total"], 1, "{f:#}");
        assert_eq!(f["guests"][0]["name"], "web");
    }

    // Asking for one of the dead by name is "no such guest", exit 2, with
    // the live candidates.
    let o = run(&["stat", "-b", "-g", "ghost", "--proc-root", d.path()]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("web"), "{err}");
}

fn rename(d: &TempDir, pid: u32, id: u64, old: &str, new: &str) {
    let dir = d.0.join(format!("{pid}/kvm/{id}"));
    std::fs::write(dir.join("name"), format!("{new}\n")).expect("name");
    let status = std::fs::read_to_string(dir.join("status")).expect("status");
    std::fs::write(
        dir.join("status"),
        status.replace(&format!("Name:\t{old}\n"), &format!("Name:\t{new}\n")),
    )
    .expect("status");
    let list = d.0.join("kvm/.list");
    let text = std::fs::read_to_string(&list).expect(".list");
    std::fs::write(
        &list,
        text.replace(&format!(" {old}\n"), &format!(" {new}\n")),
    )
    .expect(".list");
    std::fs::remove_file(d.0.join(format!("kvm/{old}"))).expect("old link");
    d.symlink(&format!("kvm/{new}"), &format!("../{pid}/kvm/{id}"));
}

#[test]
fn a_guest_renamed_between_frames_has_its_new_name_in_the_next_frame() {
    let d = TempDir::new("rename");
    fake_registry_vm(&d, 10, 3, "web", 5);
    fake_registry_vm(&d, 20, 4, "db", 7);
    let mut c = kvmtop()
        .args([
            "-b",
            "-n",
            "3",
            "-d",
            "0.3",
            "--json",
            "--proc-root",
            d.path(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("kvmtop");
    let mut out = BufReader::new(c.stdout.take().expect("piped stdout"));
    let mut first = String::new();
    out.read_line(&mut first).expect("first frame");
    // Renamed after the first frame: the second may be from either side of
    // the rename (the refresh was under way), the third has the new name.
    rename(&d, 10, 3, "web", "frontend");
    let mut rest = String::new();
    out.read_to_string(&mut rest).expect("kvmtop output");
    assert!(c.wait().expect("kvmtop exit").success());
    let frames: Vec<Value> = std::iter::once(first.as_str())
        .chain(rest.lines())
        .map(|l| serde_json::from_str(l).expect("frame"))
        .collect();
    assert_eq!(frames.len(), 3);
    let name_of = |f: &Value, pid: u32| {
        f["guests"]
            .as_array()
            .and_then(|g| g.iter().find(|r| r["pid"] == pid))
            .map(|r| r["name"].clone())
    };
    assert_eq!(name_of(&frames[0], 10), Some("web".into()));
    assert_eq!(name_of(&frames[2], 10), Some("frontend".into()));
    for f in &frames {
        assert_eq!(
            f["guests_total"], 2,
            "the renamed guest is never lost: {f:#}"
        );
        assert_eq!(name_of(f, 20), Some("db".into()));
    }
}

/// Symbol files that are not what their option says: the profile refuses
/// them with the file and the way out, exit status 1, never a panic (101).
/// The symbols load before sampling starts, so a fake tree is enough.
#[test]
fn garbage_and_truncated_symbol_files_are_refused_with_the_file_named() {
    let d = TempDir::new("bad-symbols");
    fake_registry_vm(&d, 10, 3, "web", 5);
    d.write("syms/garbage", [0x7f, b'E', 0xff, 0x00, 0xfe, b'\n', 0x01]);
    // Cut in the middle of its second line, as a copy that ran out of disk.
    d.write("syms/truncated", "ffffffff81000000 T _text\nffffffff8100");
    d.write("syms/empty", "");
    let cases = [
        ("--guestkallsyms", "garbage"),
        ("--guestkallsyms", "truncated"),
        ("--guestkallsyms", "empty"),
        ("--guestmodules", "garbage"),
        ("--guestvmlinux", "garbage"),
        ("--guestvmlinux", "truncated"),
    ];
    for (option, file) in cases {
        let path = format!("{}/syms/{file}", d.path());
        let o = run(&[
            "profile",
            "-g",
            "web",
            option,
            &path,
            "-b",
            "-n",
            "1",
            "--proc-root",
            d.path(),
        ]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{option} {file}: {err}");
        assert!(
            err.contains("guest symbols for web") && err.contains(&path),
            "{option} {file}: the error names the guest and the file: {err}"
        );
        assert!(
            err.contains("fix or leave out that option"),
            "{option} {file}: the error says what to do: {err}"
        );
        assert!(!err.contains("panicked"), "{option} {file}: {err}");
    }
}
