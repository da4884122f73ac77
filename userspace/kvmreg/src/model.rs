//! The one guest model that every backend feeds.
//!
//! Each fact carries the [`Source`] it came from, because the backends differ
//! in how far they can be trusted: a name from the kernel registry is the
//! VM's name, a qemu `-name` from a command line is only a hint that any
//! process can forge, and a vCPU thread found by its thread name is a guess.

use std::fmt;

/// Where a fact about a guest came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
#[non_exhaustive]
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
    /// A root-owned pid file of the system libvirt
    /// (`/run/libvirt/qemu/<domain>.pid`) naming the VMM's pid.
    LibvirtPidFile,
    /// A pid file of a user's session libvirt
    /// (`/run/user/<uid>/libvirt/qemu/run/<domain>.pid`) naming that
    /// user's VMM: the user's word, so shown to others as `name@uid`.
    LibvirtSessionPidFile,
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
            Source::LibvirtPidFile => "libvirt-pid-file",
            Source::LibvirtSessionPidFile => "libvirt-session-pid-file",
        })
    }
}

/// A guest's name, kept apart by how much it can be trusted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(
    feature = "serde",
    serde(tag = "kind", content = "name", rename_all = "kebab-case")
)]
#[non_exhaustive]
pub enum GuestName {
    /// The name the kernel holds for the VM (`KVM_SET_VM_NAME`, default
    /// `kvm<id>`): unique among the VMs of its owner uid in a pid
    /// namespace, set only by the VMM or a process with ptrace rights over
    /// it. Names belong to users: two users' VMs may share one, which
    /// [`Guest::qualified_name`] tells apart.
    Kernel(String),
    /// A qemu `-name` argument read from the owner's command line. Any
    /// process can put anything there, and one process may run several VMs,
    /// so it is only displayed as a hint and never matched as a name unless
    /// nothing better exists.
    CmdlineHint(String),
    /// The domain name of a libvirt pid file that names the VMM
    /// ([`crate::backend::libvirt`]): as trusted as root (or, for a
    /// session instance, the VMM's own user), but it names a process, not
    /// a VM, and the kernel does not know it.
    Libvirt(String),
}

impl GuestName {
    /// The name text, whatever its kind.
    pub fn as_str(&self) -> &str {
        match self {
            GuestName::Kernel(s) | GuestName::CmdlineHint(s) | GuestName::Libvirt(s) => s,
        }
    }

    /// The kind, as tools print it: `kernel`, `libvirt`, `cmdline-hint`.
    pub fn kind(&self) -> &'static str {
        match self {
            GuestName::Kernel(_) => "kernel",
            GuestName::Libvirt(_) => "libvirt",
            GuestName::CmdlineHint(_) => "cmdline-hint",
        }
    }

    /// True for a name the kernel vouches for.
    pub fn is_kernel(&self) -> bool {
        matches!(self, GuestName::Kernel(_))
    }

    /// True for a name someone trusted vouches for: the kernel, or a
    /// libvirt pid file of root or the VMM's user (not a command line).
    pub fn is_trusted(&self) -> bool {
        !matches!(self, GuestName::CmdlineHint(_))
    }
}

impl fmt::Display for GuestName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestName::Kernel(s) | GuestName::Libvirt(s) => f.write_str(s),
            GuestName::CmdlineHint(s) => write!(f, "{s}? (qemu -name, unverified)"),
        }
    }
}

/// One vCPU of a guest.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
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
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Provenance {
    /// Source of [`Guest::id`].
    pub id: Option<Source>,
    /// Source of [`Guest::name`].
    pub name: Option<Source>,
    /// Source of [`Guest::pid`].
    pub pid: Option<Source>,
    /// Source of [`Guest::uid`].
    pub uid: Option<Source>,
    /// Source of [`Guest::vcpus`] (the list as a whole; each [`Vcpu`]
    /// carries its own [`tid_source`](Vcpu::tid_source)).
    pub vcpus: Option<Source>,
    /// Source of [`Guest::memory_bytes`].
    pub memory: Option<Source>,
    /// Source of [`Guest::created`].
    pub created: Option<Source>,
}

/// A KVM guest (one VM) as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Guest {
    /// The kernel's boot-unique VM id (patched kernel only).
    pub id: Option<u64>,
    /// The VM's name, kept with how far it can be trusted; `None` when no
    /// backend found one.
    pub name: Option<GuestName>,
    /// The thread group that owns the VM.
    pub pid: u32,
    /// Effective uid of the creator (proc-kvm) or of the owner process.
    pub uid: Option<u32>,
    /// The vCPUs found. Empty both when there are none and
    /// when they are unknown: [`vcpu_count`](Self::vcpu_count) tells which.
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
    /// Which backend supplied each fact above.
    pub provenance: Provenance,
    /// Things worth telling the user about this guest (a fact that could
    /// not be read, an ambiguity), in plain words.
    pub notes: Vec<String>,
}

/// What tells one VM from another across readings: owner pid, registry
/// id, VM fd.
pub type GuestKey = (u32, Option<u64>, Option<i32>);

impl Guest {
    /// The [`GuestKey`] that identifies this VM across readings.
    pub fn key(&self) -> GuestKey {
        (self.pid, self.id, self.vm_fd)
    }

    /// The number of vCPUs, where it is known: `None` when the VMM's
    /// details are hidden from the caller, or when no backend could count
    /// them (several VMs in one process on a kernel without the registry),
    /// rather than a false 0.
    pub fn vcpu_count(&self) -> Option<usize> {
        (!self.details_hidden && (self.provenance.vcpus.is_some() || !self.vcpus.is_empty()))
            .then_some(self.vcpus.len())
    }

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

    /// The guest's name as `viewer_uid` refers to it, as `/proc/kvm` names
    /// its link: a kernel name plainly for the viewer's own VMs (and where
    /// the owner uid is unknown), `<name>@<uid>` for other users' VMs; so a
    /// name from a user's session libvirt (that user's word); a system
    /// libvirt name (root's word) and a qemu `-name` hint as they are.
    pub fn qualified_name(&self, viewer_uid: u32) -> Option<String> {
        let session = self.provenance.name == Some(Source::LibvirtSessionPidFile);
        match (&self.name, self.uid) {
            (Some(GuestName::Kernel(n)), Some(u)) if u != viewer_uid => Some(format!("{n}@{u}")),
            (Some(GuestName::Libvirt(n)), Some(u)) if session && u != viewer_uid => {
                Some(format!("{n}@{u}"))
            }
            (Some(n), _) => Some(n.as_str().to_string()),
            (None, _) => None,
        }
    }

    /// A short label for lists and errors, for `viewer_uid`: the
    /// [qualified name](Self::qualified_name) (a hint marked as such), else
    /// `pid N`.
    pub fn label_for(&self, viewer_uid: u32) -> String {
        match &self.name {
            Some(GuestName::Kernel(_) | GuestName::Libvirt(_)) => {
                self.qualified_name(viewer_uid).unwrap_or_default()
            }
            Some(hint) => hint.to_string(),
            None => format!("pid {}", self.pid),
        }
    }

    /// [`label_for`](Self::label_for) this process' effective uid.
    pub fn label(&self) -> String {
        self.label_for(current_euid())
    }
}

/// This process' effective uid: whose guests are "mine" (`/proc/kvm`
/// compares the owner uid with the reader's fsuid, which follows the euid).
pub fn current_euid() -> u32 {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
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
    fn other_users_names_are_qualified() {
        let mut g = Guest::new(10);
        g.name = Some(GuestName::Kernel("web".into()));
        assert_eq!(g.qualified_name(0).as_deref(), Some("web"));
        g.uid = Some(64055);
        assert_eq!(g.qualified_name(64055).as_deref(), Some("web"));
        assert_eq!(g.qualified_name(0).as_deref(), Some("web@64055"));
        assert_eq!(g.label_for(0), "web@64055");
        g.name = Some(GuestName::CmdlineHint("web".into()));
        assert_eq!(g.qualified_name(0).as_deref(), Some("web"));
        assert_eq!(g.label_for(0), "web? (qemu -name, unverified)");
        g.name = None;
        assert_eq!(g.label_for(0), "pid 10");
    }

    #[test]
    #[cfg(feature = "serde")]
    fn names_serialize_with_their_kind() {
        let h = GuestName::CmdlineHint("db".into());
        let j = serde_json::to_string(&h).unwrap();
        assert_eq!(j, r#"{"kind":"cmdline-hint","name":"db"}"#);
    }
}
