//! Guest names from libvirt's pid files, read as files: libvirtd is never
//! asked (it can hang, lie about nothing here, or not run at all).
//!
//! libvirt's system instance keeps `/run/libvirt/qemu/<domain>.pid`, the
//! session instance of user `U` `/run/user/<U>/libvirt/qemu/run/<domain>.pid`,
//! each holding the pid of the domain's qemu. Such a file names a process
//! only as far as its writer can be trusted, so a file counts when:
//!
//! - it is a regular file (not a link) in a directory that only its owner
//!   can write, and neither it nor the directory is writable by group or
//!   others;
//! - the system directory and its files belong to root; a session
//!   directory and its files to the VMM's own user (or root): a user may
//!   name their own VMs, never another user's;
//! - the pid is a VMM running exactly one VM (the file names a process,
//!   not one of its VMs);
//! - the file is not older than the process (a pid file left by a domain
//!   that ended, whose pid a new process got, is stale).
//!
//! A file is opened without following links and without blocking (a user
//! may swap a session file for a link or a FIFO), checked on the opened
//! descriptor, and at most 32 bytes are read.
//!
//! The name ranks below the kernel's facts (registry names, ids, pids) and
//! above qemu's forgeable `-name`; a session name is its user's word, so
//! other users see it as `<name>@<uid>` (`Source::LibvirtSessionPidFile`).

use crate::procfs::ProcRoot;
use crate::{Config, Guest, GuestName, Source};
use std::collections::HashMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

/// The longest pid file read (a pid and a newline fit many times over).
const MAX_PID_FILE: u64 = 32;

/// How much older than its process a pid file may look (clock steps,
/// coarse timestamps) and still count.
const SLACK: Duration = Duration::from_secs(2);

/// One pid file that passed the ownership checks.
struct PidFile {
    domain: String,
    pid: u32,
    written: SystemTime,
}

/// Name the guests that have no trusted name from libvirt's pid files.
pub fn add_names(cfg: &Config, guests: &mut [Guest]) {
    let mut vms_of: HashMap<u32, usize> = HashMap::new();
    for g in guests.iter() {
        *vms_of.entry(g.pid).or_default() += 1;
    }
    let wanted = |g: &Guest| {
        vms_of.get(&g.pid) == Some(&1)
            && !matches!(&g.name, Some(GuestName::Kernel(_) | GuestName::Libvirt(_)))
    };
    if !guests.iter().any(wanted) {
        return;
    }
    let mut files = pid_files(&cfg.libvirt_system_dir, 0);
    let mut users: Vec<u32> = guests
        .iter()
        .filter(|g| wanted(g))
        .filter_map(|g| g.uid)
        .filter(|&u| u != 0)
        .collect();
    users.sort_unstable();
    users.dedup();
    for u in users {
        let dir = cfg
            .user_run_dir
            .join(u.to_string())
            .join("libvirt/qemu/run");
        files.extend(pid_files(&dir, u));
    }
    for g in guests.iter_mut() {
        if !wanted(g) {
            continue;
        }
        let Some(started) = process_start(&cfg.proc_root, g.pid) else {
            continue;
        };
        // Session files count only for their own user's VMMs; of the
        // files naming the pid that are not stale, the system's first,
        // then the newest.
        let Some((f, owner)) = files
            .iter()
            .filter(|(f, owner)| f.pid == g.pid && (*owner == 0 || g.uid == Some(*owner)))
            .filter(|(f, _)| f.written + SLACK >= started)
            .max_by_key(|(f, owner)| (*owner == 0, f.written))
        else {
            continue;
        };
        g.name = Some(GuestName::Libvirt(f.domain.clone()));
        g.provenance.name = Some(if *owner == 0 {
            Source::LibvirtPidFile
        } else {
            Source::LibvirtSessionPidFile
        });
    }
}

/// Whether a directory or file of owner `uid` is safe to believe: owned by
/// `uid` or root, not writable by group or others.
fn trusted(m: &std::fs::Metadata, uid: u32) -> bool {
    (m.uid() == uid || m.uid() == 0) && m.mode() & 0o022 == 0
}

/// The pid files of `dir` that `uid` (0: the system instance) vouches
/// for, each with the uid whose directory it came from.
fn pid_files(dir: &Path, uid: u32) -> Vec<(PidFile, u32)> {
    let Ok(m) = std::fs::symlink_metadata(dir) else {
        return Vec::new();
    };
    if !m.is_dir() || !trusted(&m, uid) {
        return Vec::new();
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(domain) = name.to_str().and_then(|n| n.strip_suffix(".pid")) else {
            continue;
        };
        if domain.is_empty() || domain.chars().any(char::is_control) {
            continue;
        }
        let Some((pid, written)) = read_pid_file(&e.path(), uid) else {
            continue;
        };
        v.push((
            PidFile {
                domain: domain.to_string(),
                pid,
                written,
            },
            uid,
        ));
    }
    v
}

/// The pid in `path` and when it was written, if the file is a regular
/// file `uid` (or root) vouches for. The checks are made on the opened
/// descriptor: no link is followed, a FIFO does not block the open, and a
/// file swapped in after the directory was listed is what gets checked.
fn read_pid_file(path: &Path, uid: u32) -> Option<(u32, SystemTime)> {
    let f = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let m = f.metadata().ok()?;
    if !m.is_file() || !trusted(&m, uid) || m.len() > MAX_PID_FILE {
        return None;
    }
    let mut text = String::new();
    f.take(MAX_PID_FILE).read_to_string(&mut text).ok()?;
    Some((text.trim().parse().ok()?, m.modified().ok()?))
}

/// When `pid` started, on the wall clock: now less its age.
fn process_start(proc: &ProcRoot, pid: u32) -> Option<SystemTime> {
    let age = crate::cpu::process_age(proc, pid)?;
    SystemTime::now().checked_sub(Duration::from_secs_f64(age))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use std::os::unix::fs::PermissionsExt;

    /// A fake proc tree with `pid` started `age` seconds ago, and a
    /// config whose libvirt directories are under the same temp dir.
    fn setup(d: &TempDir, pids: &[(u32, f64)]) -> Config {
        let hz = crate::cpu::clock_ticks_per_second();
        let uptime = 10_000.0;
        d.write("proc/uptime", format!("{uptime:.2} 1.00\n"));
        for &(pid, age) in pids {
            let start = ((uptime - age) * hz) as u64;
            let mut f: Vec<String> = (3..=52).map(|_| "0".to_string()).collect();
            f[0] = "S".into();
            f[22 - 3] = start.to_string();
            d.write(
                &format!("proc/{pid}/stat"),
                format!("{pid} (qemu) {}\n", f.join(" ")),
            );
        }
        let mut dir = std::fs::Permissions::from_mode(0o755);
        for p in ["run/libvirt/qemu", "user"] {
            std::fs::create_dir_all(d.path().join(p)).unwrap();
            dir.set_mode(0o755);
            std::fs::set_permissions(d.path().join(p), dir.clone()).unwrap();
        }
        Config {
            proc_root: ProcRoot::new(d.path().join("proc")),
            libvirt_system_dir: d.path().join("run/libvirt/qemu"),
            user_run_dir: d.path().join("user"),
            ..Config::default()
        }
    }

    fn guest(pid: u32, uid: u32) -> Guest {
        let mut g = Guest::new(pid);
        g.uid = Some(uid);
        g.name = Some(GuestName::CmdlineHint("forged".into()));
        g
    }

    fn pid_file(path: &Path, pid: u32, mode: u32, owner: Option<u32>) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, format!("{pid}\n")).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
        if let Some(o) = owner {
            std::os::unix::fs::chown(path, Some(o), None).unwrap();
        }
    }

    #[test]
    fn a_root_owned_pid_file_names_its_process_and_nothing_else_does() {
        // Owner changes need root: the checks are about who owns what.
        if !kvmreg_testkit::root(
            "a_root_owned_pid_file_names_its_process_and_nothing_else_does",
            "to make files of other owners",
        ) {
            return;
        }
        let d = TempDir::new("libvirt");
        let cfg = setup(
            &d,
            &[(10, 60.0), (11, 60.0), (12, 60.0), (13, 60.0), (14, 60.0)],
        );
        let sys = &cfg.libvirt_system_dir;
        // 10: good. 11: the file belongs to a user. 12: group-writable.
        // 13: written before its process started (stale, a reused pid).
        // 20: no such guest.
        pid_file(&sys.join("web.pid"), 10, 0o644, Some(0));
        pid_file(&sys.join("spoof.pid"), 11, 0o644, Some(1000));
        pid_file(&sys.join("loose.pid"), 12, 0o664, Some(0));
        pid_file(&sys.join("old.pid"), 13, 0o644, Some(0));
        let f = std::fs::File::options()
            .write(true)
            .open(sys.join("old.pid"))
            .unwrap();
        f.set_modified(SystemTime::now() - Duration::from_secs(3600))
            .unwrap();
        pid_file(&sys.join("gone.pid"), 20, 0o644, Some(0));
        // 14: user 1000's session libvirt names its own VMM. The same
        // user's file naming root's process 15 (which no system file
        // names) does not count, nor a link or a FIFO in their directory.
        let session = cfg.user_run_dir.join("1000/libvirt/qemu/run");
        pid_file(&session.join("mine.pid"), 14, 0o644, Some(1000));
        pid_file(&session.join("theirs.pid"), 15, 0o644, Some(1000));
        pid_file(&d.path().join("elsewhere.pid"), 15, 0o644, Some(0));
        std::os::unix::fs::symlink(d.path().join("elsewhere.pid"), session.join("link.pid"))
            .unwrap();
        let fifo = std::ffi::CString::new(
            session
                .join("fifo.pid")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: mkfifo reads the NUL-terminated path only.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        for p in [
            cfg.user_run_dir.join("1000"),
            cfg.user_run_dir.join("1000/libvirt"),
            cfg.user_run_dir.join("1000/libvirt/qemu"),
            session.clone(),
        ] {
            std::os::unix::fs::chown(&p, Some(1000), None).unwrap();
        }
        // User 1001's VMM 16, but the directory is user 1000's.
        let other = cfg.user_run_dir.join("1001/libvirt/qemu/run");
        pid_file(&other.join("borrowed.pid"), 16, 0o644, Some(1000));
        std::os::unix::fs::chown(&other, Some(1000), None).unwrap();
        let mut gs = vec![
            guest(10, 0),
            guest(11, 0),
            guest(12, 0),
            guest(13, 0),
            guest(14, 1000),
            guest(15, 0),
            guest(16, 1001),
        ];
        add_names(&cfg, &mut gs);
        let names: Vec<(u32, Option<&GuestName>)> =
            gs.iter().map(|g| (g.pid, g.name.as_ref())).collect();
        let lv = |n: &str| GuestName::Libvirt(n.into());
        let hint = GuestName::CmdlineHint("forged".into());
        assert_eq!(
            names,
            [
                (10, Some(&lv("web"))),
                (11, Some(&hint)),
                (12, Some(&hint)),
                (13, Some(&hint)),
                (14, Some(&lv("mine"))),
                (15, Some(&hint)),
                (16, Some(&hint)),
            ]
        );
        // A session name is its user's word: others see it qualified.
        assert_eq!(gs[4].provenance.name, Some(Source::LibvirtSessionPidFile));
        assert_eq!(gs[4].qualified_name(0).as_deref(), Some("mine@1000"));
        assert_eq!(gs[4].qualified_name(1000).as_deref(), Some("mine"));
        assert_eq!(gs[0].qualified_name(1000).as_deref(), Some("web"));
        assert_eq!(gs[0].provenance.name, Some(Source::LibvirtPidFile));
        // A kernel name is never replaced; a process with two VMs is not
        // named by a file that names the process.
        let mut k = guest(10, 0);
        k.name = Some(GuestName::Kernel("kvm3".into()));
        let mut two = vec![k, guest(14, 1000), guest(14, 1000)];
        add_names(&cfg, &mut two);
        assert_eq!(two[0].name, Some(GuestName::Kernel("kvm3".into())));
        assert_eq!(two[1].name, Some(hint.clone()));
        // A system directory others may write is not believed at all.
        std::fs::set_permissions(sys, std::fs::Permissions::from_mode(0o777)).unwrap();
        let mut again = vec![guest(10, 0)];
        add_names(&cfg, &mut again);
        assert_eq!(again[0].name, Some(hint));
    }
}
