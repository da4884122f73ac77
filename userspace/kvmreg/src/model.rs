//! The one guest model that every backend feeds.
//!
//! Each fact carries the [`Source`] it came from, because the backends differ
//! in how far they can be trusted: a name from the kernel registry is the
//! VM's name, a qemu `-name` from a command line is only a hint that any
//! process can forge, and a vCPU thread found by its thread name is a guess.

use serde::Serialize;
use std::fmt;

/// Where a fact about a guest came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// `/proc/kvm` and `/proc/<pid>/kvm/<id>/` (patched kernel).
    ProcKvm,
    /// `/proc/<pid>/fd` links and `/proc/<pid>/fdinfo` (any kernel).
    FdScan,
    /// `/sys/kernel/debug/kvm/<pid>-<fd>/` (root, debugfs mounted).
    Debugfs,
    /// The VM's binary stats through `pidfd_getfd` + `KVM_GET_STATS_FD`.
    StatsFd,
    /// `/proc/<pid>/status` and `/proc/<pid>/task/<tid>/stat` of the owner.
    ProcStatus,
    /// A thread that has run guest code (non-zero `guest_time`), matched to
    /// a vCPU index by its thread name only: a heuristic.
    ThreadName,
    /// The owner's command line (qemu `-name`): unverified.
    Cmdline,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::ProcKvm => "proc-kvm",
            Source::FdScan => "fd-scan",
            Source::Debugfs => "debugfs",
            Source::StatsFd => "stats-fd",
            Source::ProcStatus => "proc-status",
            Source::ThreadName => "thread-name",
            Source::Cmdline => "cmdline",
        })
    }
}

/// A guest's name, kept apart by how much it can be trusted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "kebab-case")]
pub enum GuestName {
    /// The name the kernel holds for the VM (`KVM_SET_VM_NAME`, default
    /// `kvm<id>`): unique per pid namespace, set only by the VMM or a
    /// process with ptrace rights over it.
    Kernel(String),
    /// A qemu `-name` argument read from the owner's command line. Any
    /// process can put anything there, and one process may run several VMs,
    /// so it is only displayed as a hint and never matched as a name unless
    /// nothing better exists.
    CmdlineHint(String),
}

impl GuestName {
    /// The name text, whatever its kind.
    pub fn as_str(&self) -> &str {
        match self {
            GuestName::Kernel(s) | GuestName::CmdlineHint(s) => s,
        }
    }

    /// True for a name the kernel vouches for.
    pub fn is_kernel(&self) -> bool {
        matches!(self, GuestName::Kernel(_))
    }
}

impl fmt::Display for GuestName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestName::Kernel(s) => f.write_str(s),
            GuestName::CmdlineHint(s) => write!(f, "{s}? (qemu -name, unverified)"),
        }
    }
}

/// One vCPU of a guest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Vcpu {
    /// Position in KVM's vCPU array, when known (proc-kvm); otherwise the
    /// order in which the vCPUs were found.
    pub index: u32,
    /// The `vcpu_id` passed to `KVM_CREATE_VCPU`, when known.
    pub vcpu_id: Option<u32>,
    /// The host thread that (last) ran the vCPU, when known.
    pub tid: Option<u32>,
    /// Where the tid came from: the kernel (proc-kvm, debugfs) or a guess.
    pub tid_source: Option<Source>,
    /// The vCPU's fd number in the owner, when found by the fd scan.
    pub fd: Option<i32>,
}

/// Where each fact of a [`Guest`] came from; `None` where the fact is
/// unknown.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Provenance {
    pub id: Option<Source>,
    pub name: Option<Source>,
    pub pid: Option<Source>,
    pub uid: Option<Source>,
    pub vcpus: Option<Source>,
    pub memory: Option<Source>,
    pub created: Option<Source>,
}

/// A KVM guest (one VM) as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Guest {
    /// The kernel's boot-unique VM id (patched kernel only).
    pub id: Option<u64>,
    pub name: Option<GuestName>,
    /// The thread group that owns the VM.
    pub pid: u32,
    /// Effective uid of the creator (proc-kvm) or of the owner process.
    pub uid: Option<u32>,
    pub vcpus: Vec<Vcpu>,
    /// Guest memory (userspace memslots), when known.
    pub memory_bytes: Option<u64>,
    /// Creation time in `CLOCK_BOOTTIME` nanoseconds, when known.
    pub created: Option<u64>,
    /// The VM's fd number in the owner, when found by the fd scan; it names
    /// the debugfs directory and is what `pidfd_getfd` needs.
    pub vm_fd: Option<i32>,
    /// The process is known to hold VMs but the caller may not look inside
    /// (`EACCES`): everything but the pid is unknown.
    pub details_hidden: bool,
    pub provenance: Provenance,
    /// Things worth telling the user about this guest (a fact that could
    /// not be read, an ambiguity), in plain words.
    pub notes: Vec<String>,
}

impl Guest {
    /// A guest known only by its owner pid.
    pub fn new(pid: u32) -> Self {
        Guest {
            id: None,
            name: None,
            pid,
            uid: None,
            vcpus: Vec::new(),
            memory_bytes: None,
            created: None,
            vm_fd: None,
            details_hidden: false,
            provenance: Provenance::default(),
            notes: Vec::new(),
        }
    }

    /// A short label for lists and errors: the name, else `pid N`.
    pub fn label(&self) -> String {
        match &self.name {
            Some(n) => n.to_string(),
            None => format!("pid {}", self.pid),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_name_and_hint_display_differently() {
        let k = GuestName::Kernel("web".into());
        let h = GuestName::CmdlineHint("web".into());
        assert_eq!(k.to_string(), "web");
        assert_eq!(h.to_string(), "web? (qemu -name, unverified)");
        assert_ne!(k, h);
        assert!(k.is_kernel() && !h.is_kernel());
        assert_eq!(h.as_str(), "web");
    }

    #[test]
    fn names_serialize_with_their_kind() {
        let h = GuestName::CmdlineHint("db".into());
        let j = serde_json::to_string(&h).unwrap();
        assert_eq!(j, r#"{"kind":"cmdline-hint","name":"db"}"#);
    }
}
