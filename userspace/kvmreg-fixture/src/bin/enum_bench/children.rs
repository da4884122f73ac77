//! Forked children for the benchmarks: decoy processes that hold open
//! files, and VMMs that hold VMs, each blocked until the benchmark ends.
//! Shared by `kvmreg-enum-bench` and `kvmreg-registry-bench`.

use anyhow::{bail, Context, Result};
use std::collections::BTreeSet;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const KVM_CREATE_VM: libc::c_ulong = 0xae01;

/// Forked children, released (they exit) when this is dropped.
pub struct Children {
    pub pids: BTreeSet<u32>,
    /// Write end of the pipe every child blocks reading; closing it ends them.
    hold: Option<OwnedFd>,
    hold_read: OwnedFd,
}

impl Children {
    pub fn new() -> Result<Self> {
        let (r, w) = pipe()?;
        Ok(Self {
            pids: BTreeSet::new(),
            hold: Some(w),
            hold_read: r,
        })
    }

    /// Forks a child that runs `setup` (async-signal-safe calls only: this
    /// process may have threads), reports through a pipe, then blocks until
    /// released. Returns once the child is ready.
    pub fn spawn(&mut self, setup: fn(usize) -> bool, arg: usize) -> Result<u32> {
        let (ready_r, ready_w) = pipe()?;
        // SAFETY: the child only makes async-signal-safe calls (open, ioctl,
        // close, write, read, _exit) before it exits.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error()).context("fork");
        }
        if pid == 0 {
            let ok = setup(arg);
            let byte = [u8::from(ok)];
            // SAFETY: plain syscalls on fds this child owns; _exit never returns.
            unsafe {
                libc::write(ready_w.as_raw_fd(), byte.as_ptr().cast(), 1);
                let mut b = [0u8; 1];
                libc::close(ready_w.as_raw_fd());
                if let Some(h) = &self.hold {
                    libc::close(h.as_raw_fd());
                }
                libc::read(self.hold_read.as_raw_fd(), b.as_mut_ptr().cast(), 1);
                libc::_exit(0);
            }
        }
        drop(ready_w);
        let mut byte = [0u8; 1];
        // SAFETY: reads one byte into a local buffer from a pipe we own.
        let n = unsafe { libc::read(ready_r.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
        self.pids.insert(pid as u32);
        if n != 1 || byte[0] != 1 {
            bail!("child {pid} failed to set up (is /dev/kvm there and writable?)");
        }
        Ok(pid as u32)
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.hold = None;
        for &pid in &self.pids {
            let mut status = 0;
            // SAFETY: waits for our own child; status is a local.
            unsafe { libc::waitpid(pid as i32, &mut status, 0) };
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe2");
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Child setup: holds `n` open files of /dev/null.
pub fn open_decoy_fds(n: usize) -> bool {
    (0..n).all(|_| {
        // SAFETY: open of a constant NUL-terminated path.
        unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY) >= 0 }
    })
}

/// Child setup: creates `n` VMs and keeps only their fds.
pub fn create_vm(n: usize) -> bool {
    // SAFETY: open and ioctl with constant arguments; the VM fds are kept.
    unsafe {
        let kvm = libc::open(c"/dev/kvm".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if kvm < 0 {
            return false;
        }
        let ok = (0..n).all(|_| libc::ioctl(kvm, KVM_CREATE_VM, 0) >= 0);
        libc::close(kvm);
        ok
    }
}
