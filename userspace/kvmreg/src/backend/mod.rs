//! The backends that find guests, best first. Each returns what it found
//! plus notes about what it had to skip; none treats a vanished process or a
//! denied read as an error, since both are normal on a live host.

pub mod debugfs;
pub mod fd_scan;
pub mod proc_kvm;
pub mod stats_fd;

use crate::procfs::{ProcRoot, Read};
use crate::Guest;

/// What one backend found.
#[derive(Debug, Default)]
pub struct Found {
    pub guests: Vec<Guest>,
    /// Skipped processes and other things the user may want to know.
    pub notes: Vec<String>,
}

/// True if some thread of `pid` has spent time in guest mode. The
/// per-thread `stat` files are world-readable, so this tells that a process
/// runs a VM even when its fds and `/proc/<pid>/kvm` are closed to us.
pub(crate) fn has_guest_time(proc: &ProcRoot, pid: u32) -> bool {
    match crate::cpu::snapshot(proc, pid) {
        Read::Ok(s) => s.threads.values().any(|t| t.guest_time > 0),
        _ => false,
    }
}

/// A guest of a process we may not look into.
pub(crate) fn hidden_guest(proc: &ProcRoot, pid: u32, why: &str) -> Guest {
    let mut g = Guest::new(pid);
    g.details_hidden = true;
    g.uid = proc.process_uid(pid);
    if g.uid.is_some() {
        g.provenance.uid = Some(crate::Source::ProcStatus);
    }
    g.notes.push(format!(
        "runs guest code but {why}: present, details hidden (need ptrace rights over pid {pid}, e.g. same user or root)"
    ));
    g
}
