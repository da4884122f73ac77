//! `harness guest-init PLAN`: PID 1 of the test VM.
//!
//! The VM's root is the host's root, shared read-only over 9p, so this is the
//! very binary the host ran, and every payload and library is at the same
//! path as on the host. This init mounts the pseudo filesystems, loads the
//! KVM modules, runs the plan's suites one by one with a timeout each,
//! copies their output to the console, writes `summary.json` into the run
//! directory (a second, writable 9p share) and ends the VM through QEMU's
//! `isa-debug-exit` port with a status the host checks.

use crate::suites::{self, Exit, Plan, Summary};
use crate::tap::{Counts, Outcome, TestPoint};
use anyhow::{bail, Context, Result};
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `isa-debug-exit` I/O port (QEMU exits with `(value << 1) | 1`).
pub const DEBUG_EXIT_PORT: u16 = 0xf4;
/// Values the guest writes: all passed, something failed, init broke.
pub const GUEST_PASS: u8 = 0;
pub const GUEST_FAIL: u8 = 1;
pub const GUEST_INIT_ERROR: u8 = 2;
/// The 9p mount tag of the writable run directory.
pub const OUT_TAG: &str = "kvmreg-out";
/// The directories the guest covers with a tmpfs of its own (and their
/// modes): the host's files there are not the test VM's business, but a
/// checkout or a target directory under them is (see [`mount_scratch`]).
pub const SCRATCH_DIRS: &[(&str, u32)] = &[("/tmp", 0o1777), ("/run", 0o755)];

pub fn main(plan_path: &Path) -> ! {
    let status = match run(plan_path) {
        Ok(counts) if counts.failed == 0 => GUEST_PASS,
        Ok(_) => GUEST_FAIL,
        Err(e) => {
            println!("guest-init: {e:#}");
            GUEST_INIT_ERROR
        }
    };
    // SAFETY: sync() has no preconditions.
    unsafe { libc::sync() };
    exit_vm(status)
}

fn run(plan_path: &Path) -> Result<Counts> {
    mount_pseudo()?;
    // The plan is read before the scratch tmpfs mounts go up: it may sit
    // under one of them, as may the host directories it names.
    let plan: Plan = serde_json::from_str(
        &fs::read_to_string(plan_path)
            .with_context(|| format!("cannot read the plan {}", plan_path.display()))?,
    )?;
    mount_scratch(&plan.keep)?;
    loopback_up()?;
    mount(
        OUT_TAG,
        &plan.out_dir,
        "9p",
        0,
        "trans=virtio,version=9p2000.L,msize=262144",
    )?;
    let mut summary = Summary::default();
    let result = run_plan(&plan, &mut summary);
    if let Err(e) = &result {
        summary.init_error = Some(format!("{e:#}"));
    }
    fs::write(
        plan.out_dir.join("summary.json"),
        serde_json::to_string_pretty(&summary)?,
    )?;
    result?;
    let counts = Counts::of(&summary.points);
    println!("guest-init: {}", counts.line());
    Ok(counts)
}

fn run_plan(plan: &Plan, summary: &mut Summary) -> Result<()> {
    load_modules(&plan.modules)?;
    for suite in &plan.suites {
        if let Some(v) = &suite.verdict {
            println!(
                "guest-init: suite {}: {:?} ({})",
                suite.name,
                v.outcome,
                v.note.as_deref().unwrap_or("")
            );
            summary.points.push(v.clone());
            continue;
        }
        println!("guest-init: === suite {} ===", suite.name);
        let log = plan
            .out_dir
            .join(format!("{}.log", suite.name.replace('/', "_")));
        let started = Instant::now();
        let (output, exit) = run_suite(&suite.argv, suite.timeout_secs, &log)?;
        let points = suites::judge(suite, &output, exit);
        let counts = Counts::of(&points);
        println!(
            "guest-init: suite {}: {} ({exit:?}, {:.0} s)",
            suite.name,
            counts.line(),
            started.elapsed().as_secs_f64()
        );
        for p in points.iter().filter(|p| p.outcome == Outcome::Fail) {
            println!("guest-init: FAILED {}", p.name);
        }
        summary.points.extend(points);
    }
    Ok(())
}

fn mount_pseudo() -> Result<()> {
    mount("proc", Path::new("/proc"), "proc", 0, "")?;
    mount("sysfs", Path::new("/sys"), "sysfs", 0, "")?;
    // devtmpfs is usually mounted by the kernel already (DEVTMPFS_MOUNT).
    let _ = mount("devtmpfs", Path::new("/dev"), "devtmpfs", 0, "");
    let _ = mount("tmpfs", Path::new("/dev/shm"), "tmpfs", 0, "mode=1777");
    // Pseudo-terminals, for the tests that drive kvmtop in tmux.
    std::fs::create_dir_all("/dev/pts")?;
    mount(
        "devpts",
        Path::new("/dev/pts"),
        "devpts",
        0,
        "mode=620,ptmxmode=666",
    )?;
    let _ = mount("debugfs", Path::new("/sys/kernel/debug"), "debugfs", 0, "");
    // Kernels with event tracing (the debug config) have tracefs.
    let _ = mount(
        "tracefs",
        Path::new("/sys/kernel/tracing"),
        "tracefs",
        0,
        "",
    );
    std::env::set_var(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    std::env::set_var("HOME", "/tmp");
    Ok(())
}

/// Covers [`SCRATCH_DIRS`] with empty tmpfs mounts, as a booted system
/// has, keeping visible the host directories in `keep` (a checkout or a
/// target directory under `/tmp` or `/run`): each is cloned from the host's
/// tree before the tmpfs goes up and attached at its own path inside it,
/// below directories with the host's modes and owners (so a checkout in a
/// 0700 directory is as unreachable to other users here as on the host).
fn mount_scratch(keep: &[PathBuf]) -> Result<()> {
    for (dir, mode) in SCRATCH_DIRS {
        let mine: Vec<&PathBuf> = keep.iter().filter(|p| p.starts_with(dir)).collect();
        let mut kept = Vec::new();
        for path in mine {
            kept.push(KeptTree::clone_of(path, Path::new(dir))?);
        }
        mount(
            "tmpfs",
            Path::new(dir),
            "tmpfs",
            0,
            &format!("mode={mode:o}"),
        )?;
        for tree in kept {
            tree.attach()
                .with_context(|| format!("cannot keep {} visible", tree.path.display()))?;
        }
    }
    Ok(())
}

/// A host directory cloned (`open_tree`) before a tmpfs covers it.
struct KeptTree {
    path: PathBuf,
    /// The detached copy of the mount tree at `path`.
    tree: OwnedFd,
    /// The directories from the tmpfs root down to `path` (exclusive), with
    /// the host's mode, uid and gid of each.
    parents: Vec<(PathBuf, u32, u32, u32)>,
}

impl KeptTree {
    fn clone_of(path: &Path, root: &Path) -> Result<Self> {
        use std::os::unix::fs::MetadataExt;
        let mut parents = Vec::new();
        let mut dir = root.to_path_buf();
        let below = path.strip_prefix(root)?;
        let mut components = below.components().peekable();
        while let Some(c) = components.next() {
            if components.peek().is_none() {
                break;
            }
            dir.push(c);
            let m = fs::metadata(&dir).with_context(|| format!("stat {}", dir.display()))?;
            parents.push((dir.clone(), m.mode() & 0o7777, m.uid(), m.gid()));
        }
        let cpath = CString::new(path.as_os_str().as_encoded_bytes())?;
        // SAFETY: open_tree reads the NUL-terminated path; on success it
        // returns a new fd that nothing else owns.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                cpath.as_ptr(),
                OPEN_TREE_CLONE
                    | libc::O_CLOEXEC as libc::c_uint
                    | libc::AT_RECURSIVE as libc::c_uint,
            )
        };
        if fd < 0 {
            bail!(
                "open_tree {}: {}",
                path.display(),
                std::io::Error::last_os_error()
            );
        }
        // SAFETY: fd is the new, unowned descriptor open_tree returned.
        let tree = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Ok(Self {
            path: path.to_path_buf(),
            tree,
            parents,
        })
    }

    fn attach(&self) -> Result<()> {
        use std::os::unix::fs::PermissionsExt;
        for (dir, mode, uid, gid) in &self.parents {
            if !dir.exists() {
                fs::create_dir(dir)?;
                fs::set_permissions(dir, fs::Permissions::from_mode(*mode))?;
                std::os::unix::fs::chown(dir, Some(*uid), Some(*gid))?;
            }
        }
        fs::create_dir_all(&self.path)?;
        let cpath = CString::new(self.path.as_os_str().as_encoded_bytes())?;
        // SAFETY: move_mount attaches the detached tree behind self.tree at
        // the NUL-terminated path; both stay valid across the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_move_mount,
                self.tree.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                cpath.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            )
        };
        if rc != 0 {
            bail!("move_mount: {}", std::io::Error::last_os_error());
        }
        Ok(())
    }
}

/// `open_tree(2)` and `move_mount(2)` flags (linux/mount.h).
const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// Brings `lo` up, as a normal boot does: suites serve and scrape on
/// 127.0.0.1 (kvmtop's metrics endpoint).
fn loopback_up() -> Result<()> {
    // SAFETY: plain socket(2) call; the fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        bail!("socket for lo: {}", std::io::Error::last_os_error());
    }
    // SAFETY: fd was just returned by socket(2) and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq passed,
    // which lives across both calls.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            bail!("SIOCGIFFLAGS lo: {}", std::io::Error::last_os_error());
        }
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            bail!("SIOCSIFFLAGS lo: {}", std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn mount(src: &str, target: &Path, fstype: &str, flags: libc::c_ulong, data: &str) -> Result<()> {
    let c = |s: &str| CString::new(s).context("NUL in a mount argument");
    let (csrc, ctype, cdata) = (c(src)?, c(fstype)?, c(data)?);
    let ctarget = CString::new(target.as_os_str().as_encoded_bytes())?;
    // SAFETY: all pointers are valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            csrc.as_ptr(),
            ctarget.as_ptr(),
            ctype.as_ptr(),
            flags,
            cdata.as_ptr().cast(),
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        bail!("mount -t {fstype} {src} {}: {e}", target.display());
    }
    Ok(())
}

/// Loads `modules` in the given order (the host sorted them by dependency).
fn load_modules(modules: &[std::path::PathBuf]) -> Result<()> {
    for m in modules {
        finit_module(m).with_context(|| format!("cannot load {}", m.display()))?;
        println!("guest-init: loaded {}", m.display());
    }
    Ok(())
}

fn finit_module(path: &Path) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    let file = File::open(path)?;
    let params = CString::default();
    // SAFETY: finit_module reads the open file and a valid empty param string.
    let rc = unsafe { libc::syscall(libc::SYS_finit_module, file.as_raw_fd(), params.as_ptr(), 0) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EEXIST) {
            return Err(e);
        }
    }
    Ok(())
}

/// Runs one suite command with stdout and stderr merged, copying its output
/// to the console and `log` as it comes, killing its process group at the
/// timeout.
fn run_suite(argv: &[String], timeout_secs: u64, log: &Path) -> Result<(String, Exit)> {
    let Some((exe, args)) = argv.split_first() else {
        bail!("a suite with an empty command line");
    };
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe2: {}", std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these two fds, owned by nobody else.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let mut child = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(wr.try_clone()?))
        .stderr(Stdio::from(wr))
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start {exe}"))?;
    let mut log_file = File::create(log)?;
    let reader = std::thread::spawn(move || {
        let mut rd = File::from(rd);
        let mut all = Vec::new();
        let mut buf = [0u8; 4096];
        let mut out = std::io::stdout();
        loop {
            match rd.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    let _ = out.write_all(&buf[..n]);
                    let _ = out.flush();
                    let _ = log_file.write_all(&buf[..n]);
                    all.extend_from_slice(&buf[..n]);
                }
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    });
    let deadline = Instant::now() + Duration::from_secs(timeout_secs);
    let exit = loop {
        if let Some(status) = child.try_wait()? {
            break match (status.code(), status.signal()) {
                (Some(c), _) => Exit::Code(c),
                (None, Some(s)) => Exit::Signal(s),
                (None, None) => Exit::Code(-1),
            };
        }
        if Instant::now() >= deadline {
            dump_stacks(child.id());
            let pid = child.id() as libc::pid_t;
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
            let _ = child.wait();
            break Exit::TimedOut(timeout_secs);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    // Grandchildren that still hold the pipe are killed with the group.
    let pid = child.id() as libc::pid_t;
    // SAFETY: as above.
    unsafe { libc::kill(-pid, libc::SIGKILL) };
    let output = reader.join().unwrap_or_default();
    Ok((output, exit))
}

/// Prints the kernel stacks of a hung suite's threads, so a timeout in the
/// console log says where it hung.
fn dump_stacks(pid: u32) {
    let tasks = match fs::read_dir(format!("/proc/{pid}/task")) {
        Ok(t) => t,
        Err(e) => {
            println!("guest-init: timeout: cannot list the tasks of {pid}: {e}");
            return;
        }
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let stat = fs::read_to_string(dir.join("stat")).unwrap_or_default();
        let stack = fs::read_to_string(dir.join("stack")).unwrap_or_default();
        println!(
            "guest-init: timeout: task {}: {}",
            task.file_name().to_string_lossy(),
            stat.trim()
        );
        for line in stack.lines() {
            println!("guest-init:   {line}");
        }
    }
}

/// Ends the VM with `status` through `isa-debug-exit`; powers off if the
/// port is not there (the host then reports a missing verdict).
fn exit_vm(status: u8) -> ! {
    // SAFETY: ioperm only changes this process's I/O permission bitmap.
    if unsafe { libc::ioperm(DEBUG_EXIT_PORT.into(), 1, 1) } == 0 {
        // SAFETY: the port is QEMU's isa-debug-exit device, which ends the VM;
        // writing it has no effect on this process's memory.
        unsafe {
            std::arch::asm!("out dx, al", in("dx") DEBUG_EXIT_PORT, in("al") status, options(nomem, nostack));
        }
    }
    // SAFETY: reboot(POWER_OFF) from PID 1 ends the VM; nothing to clean up.
    unsafe { libc::reboot(libc::LINUX_REBOOT_CMD_POWER_OFF) };
    loop {
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// Makes a summary point out of an init error (used by the host too).
pub fn init_error_point(msg: &str) -> TestPoint {
    TestPoint {
        name: format!("guest init: {msg}"),
        outcome: Outcome::Fail,
        note: None,
    }
}
