//! Backend: binary stats of another process' VM or vCPU through
//! `pidfd_open` + `pidfd_getfd` + `KVM_GET_STATS_FD`.
//!
//! The duplicated VM/vCPU fd is closed as soon as the stats fd exists, so
//! this tool never keeps a guest alive. Before the ioctl, the duplicate is
//! checked to still be a KVM fd of the expected kind: the fd number came
//! from an earlier scan and may since have been reused for another file.
//! The pidfd calls are rustix's `pidfd_open` and `pidfd_getfd`.
//!
//! Limit found on a real kernel: KVM answers every VM and vCPU ioctl from a
//! process whose mm is not the VM's with `EIO`, so this works only inside
//! the VMM's own process (or a thread sharing its mm). Other processes get
//! [`StatsFdError::ForeignProcess`]; that is what the VM registry's
//! `/proc/<pid>/kvm/<id>/stats` file is for.

use super::fd_scan::{classify_link, KvmFd};
use crate::procfs::{classify, Skip};
use crate::stats::{self, Layout, StatsError};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// `_IO(KVMIO, 0xce)`. Written out here on purpose: kvm-ioctls keeps its
/// ioctl numbers in a private module and calls this one only on a
/// `VmFd`/`VcpuFd` it created, while this fd is another process' VM fd
/// taken with `pidfd_getfd`. `KVMIO` is [`crate::kvm_uapi`]'s.
pub const KVM_GET_STATS_FD: libc::c_ulong = ((crate::kvm_uapi::KVMIO as libc::c_ulong) << 8) | 0xce;

/// Why a guest's binary stats could not be opened or read, through
/// [`open`] or [`crate::discover::guest_stats`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatsFdError {
    /// The VMM process (this pid) has exited.
    #[error("process {0} is gone")]
    Gone(u32),
    /// `pidfd_open` or `pidfd_getfd` refused (`EACCES`, `EPERM`).
    #[error(
        "not permitted to take fd {fd} of pid {pid}: pidfd_getfd needs ptrace attach rights (same user and kernel.yama.ptrace_scope allowing it, or CAP_SYS_PTRACE)"
    )]
    Denied {
        /// The VMM process.
        pid: u32,
        /// Its fd that was to be taken.
        fd: i32,
    },
    /// The fd number was closed or reused since the scan that found it.
    #[error("fd {fd} of pid {pid} is no longer the expected KVM fd")]
    NotKvm {
        /// The VMM process.
        pid: u32,
        /// Its fd that was taken.
        fd: i32,
    },
    /// `KVM_GET_STATS_FD` failed with `EIO`: KVM answers ioctls only from
    /// the VM's own mm.
    #[error(
        "KVM refuses VM and vCPU ioctls from any process but the VM's creator (EIO): on this kernel another process' stats need /proc/<pid>/kvm/<id>/stats (VM registry) or debugfs"
    )]
    ForeignProcess,
    /// The kernel lacks a system call or ioctl, named with the Linux
    /// version that added it.
    #[error("this kernel lacks {0}")]
    Unsupported(&'static str),
    /// The guest's VM fd is not known, so there is nothing to take.
    #[error("{}", if *hidden {
        "the VMM's fds are hidden from this user (no ptrace rights over it): its KVM stats need its user or root, or the registry's /proc/<pid>/kvm"
    } else {
        "no VM fd is known for this guest (several VMs in one process, on a kernel without the registry): its KVM stats need debugfs (mount -t debugfs none /sys/kernel/debug, as root) or the registry"
    })]
    NoVmFd {
        /// Whether the fd is unknown because the VMM's details are hidden
        /// from the caller ([`crate::Guest::details_hidden`]).
        hidden: bool,
    },
    /// The stats file was opened but is malformed or could not be read.
    #[error("{0}")]
    Stats(#[from] StatsError),
    /// Any other I/O error (opening the registry's stats file, reading the
    /// fd link, the ioctl).
    #[error("{0}")]
    Io(io::Error),
}

fn map_err(e: io::Error, pid: u32, fd: i32) -> StatsFdError {
    match classify(&e) {
        Some(Skip::Gone) => StatsFdError::Gone(pid),
        Some(Skip::Denied) => StatsFdError::Denied { pid, fd },
        None => StatsFdError::Io(e),
    }
}

/// `pidfd_open(2)` and `pidfd_getfd(2)` through rustix, with its errno
/// as a `std::io::Error` (what [`classify`] reads).
fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| io::Error::from_raw_os_error(libc::ESRCH))?;
    rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).map_err(io::Error::from)
}

fn pidfd_getfd(pidfd: &OwnedFd, fd: i32) -> io::Result<OwnedFd> {
    rustix::process::pidfd_getfd(pidfd, fd, rustix::process::PidfdGetfdFlags::empty())
        .map_err(io::Error::from)
}

/// Open the stats of VM or vCPU fd `fd` of process `pid`. Returns the
/// stats file (keep it to poll with [`stats::read_values`]) and its layout.
pub fn open(pid: u32, fd: i32, expect: KvmFd) -> Result<(File, Layout), StatsFdError> {
    let pidfd = pidfd_open(pid).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOSYS) => StatsFdError::Unsupported("pidfd_open (Linux 5.3)"),
        _ => map_err(e, pid, fd),
    })?;
    let dup = pidfd_getfd(&pidfd, fd).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOSYS) => StatsFdError::Unsupported("pidfd_getfd (Linux 5.6)"),
        Some(libc::EBADF) => StatsFdError::NotKvm { pid, fd },
        _ => map_err(e, pid, fd),
    })?;
    let link = std::fs::read_link(format!("/proc/self/fd/{}", dup.as_raw_fd()))
        .map_err(StatsFdError::Io)?;
    let kind = classify_link(&link.to_string_lossy());
    let same = match (kind, expect) {
        (Some(KvmFd::Vm), KvmFd::Vm) => true,
        (Some(KvmFd::Vcpu(a)), KvmFd::Vcpu(b)) => a == b,
        _ => false,
    };
    if !same {
        return Err(StatsFdError::NotKvm { pid, fd });
    }
    // SAFETY: the fd is a KVM VM or vCPU fd (checked above), for which
    // KVM_GET_STATS_FD takes no argument and returns a new fd or -1.
    let r = unsafe { libc::ioctl(dup.as_raw_fd(), KVM_GET_STATS_FD as _, 0) };
    let err = io::Error::last_os_error();
    // Close the guest's fd now: holding it would keep the VM alive.
    drop(dup);
    drop(pidfd);
    if r < 0 {
        return Err(match err.raw_os_error() {
            Some(libc::ENOTTY) | Some(libc::EINVAL) => {
                StatsFdError::Unsupported("KVM_GET_STATS_FD (Linux 5.14)")
            }
            // kvm_vm_ioctl() and kvm_vcpu_ioctl() return EIO when the
            // caller's mm is not the VM's.
            Some(libc::EIO) => StatsFdError::ForeignProcess,
            _ => StatsFdError::Io(err),
        });
    }
    // SAFETY: r is a fresh fd that nothing else owns.
    let mut file = unsafe { File::from_raw_fd(r) };
    let layout = stats::read_layout(&mut file)?;
    Ok((file, layout))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_non_kvm_fd_is_refused_before_any_ioctl() {
        // Our own stdin-ish fd: a pipe end, certainly not a KVM fd.
        let (r, _w) = std::io::pipe().unwrap();
        let fd = r.as_raw_fd();
        match open(std::process::id(), fd, KvmFd::Vm) {
            Err(StatsFdError::NotKvm { .. }) => {}
            Err(StatsFdError::Unsupported(w)) => eprintln!("skipped: kernel lacks {w}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn a_vanished_process_is_gone() {
        // pid_max is at most 2^22, so this pid cannot exist.
        match open(1 << 23, 3, KvmFd::Vm) {
            Err(StatsFdError::Gone(_)) => {}
            Err(StatsFdError::Unsupported(w)) => eprintln!("skipped: kernel lacks {w}"),
            other => panic!("unexpected {other:?}"),
        }
    }
}
