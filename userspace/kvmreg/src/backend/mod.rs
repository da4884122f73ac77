//! The backends that find guests, best first. Each returns what it found
//! plus notes about what it had to skip; none treats a vanished process or a
//! denied read as an error, since both are normal on a live host.

pub mod debugfs;
pub mod fd_scan;
pub mod libvirt;
pub mod proc_kvm;
pub mod stats_fd;

use crate::procfs::{ProcRoot, Read};
use crate::Guest;

/// What one backend found.
#[derive(Debug, Default)]
pub struct Found {
    /// The guests found, each fact marked with this backend as its source.
    pub guests: Vec<Guest>,
    /// Skipped processes and other things the user may want to know.
    pub notes: Vec<String>,
}

/// Evidence, readable without rights over `pid`, that it runs a VM: a
/// thread with guest time (`/proc/<pid>/task/<tid>/stat` is world-readable)
/// or, weaker, threads named like qemu's vCPU threads (`CPU <n>/KVM`).
/// Some kernels (seen on a nested host) never account guest time, hence
/// the second test.
pub(crate) fn vm_evidence(proc: &ProcRoot, pid: u32) -> Option<&'static str> {
    let Read::Ok(s) = crate::cpu::snapshot(proc, pid) else {
        return None;
    };
    if s.threads.values().any(|t| t.guest_time > 0) {
        return Some("a thread has run guest code");
    }
    if s.threads
        .values()
        .any(|t| fd_scan::vcpu_index_from_comm(&t.comm).is_some())
    {
        return Some("its threads are named like vCPU threads");
    }
    None
}

/// A guest of a process we may not look into.
pub(crate) fn hidden_guest(proc: &ProcRoot, pid: u32, evidence: &str, why: &str) -> Guest {
    let mut g = Guest::new(pid);
    g.details_hidden = true;
    g.uid = proc.process_uid(pid);
    if g.uid.is_some() {
        g.provenance.uid = Some(crate::Source::ProcStatus);
    }
    g.notes.push(format!(
        "{evidence} but {why}: present, details hidden (need ptrace-read rights over pid {pid}: same user, or root)"
    ));
    g
}
