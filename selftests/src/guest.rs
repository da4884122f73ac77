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
use std::path::Path;
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
    mount_basics()?;
    loopback_up()?;
    let plan: Plan = serde_json::from_str(
        &fs::read_to_string(plan_path)
            .with_context(|| format!("cannot read the plan {}", plan_path.display()))?,
    )?;
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

fn mount_basics() -> Result<()> {
    mount("proc", Path::new("/proc"), "proc", 0, "")?;
    mount("sysfs", Path::new("/sys"), "sysfs", 0, "")?;
    // devtmpfs is usually mounted by the kernel already (DEVTMPFS_MOUNT).
    let _ = mount("devtmpfs", Path::new("/dev"), "devtmpfs", 0, "");
    mount("tmpfs", Path::new("/tmp"), "tmpfs", 0, "mode=1777")?;
    mount("tmpfs", Path::new("/run"), "tmpfs", 0, "mode=755")?;
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
    std::env::set_var(
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    );
    std::env::set_var("HOME", "/tmp");
    Ok(())
}

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
