//! Backend for any kernel: `/proc/<pid>/fd` links and `fdinfo`.
//!
//! A VM fd links to `anon_inode:kvm-vm`, a vCPU fd to
//! `anon_inode:kvm-vcpu:<vcpu_id>`. On an unpatched kernel nothing ties a
//! vCPU fd to its VM, so vCPUs are attributed only when the process holds
//! exactly one VM; a patched kernel's `kvm_vm_id:` in `fdinfo` resolves it.
//! vCPU threads cannot be read from fds at all: they are matched by thread
//! name (qemu's `CPU <n>/KVM`) among threads that ran guest code, and
//! marked as such a guess.

use super::Found;
use crate::procfs::{ProcRoot, Read, Skip};
use crate::{Guest, Source, Vcpu};
use std::collections::BTreeMap;

/// What an fd of a process is, from its link target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvmFd {
    /// A VM fd (`anon_inode:kvm-vm`).
    Vm,
    /// A vCPU fd (`anon_inode:kvm-vcpu:<vcpu_id>`), with its `vcpu_id`.
    Vcpu(u32),
}

/// Recognise KVM's anon-inode link targets.
pub fn classify_link(target: &str) -> Option<KvmFd> {
    let rest = target.strip_prefix("anon_inode:")?;
    if rest == "kvm-vm" {
        return Some(KvmFd::Vm);
    }
    rest.strip_prefix("kvm-vcpu:")?
        .parse()
        .ok()
        .map(KvmFd::Vcpu)
}

/// `kvm_vm_id:` / `kvm_vcpu_id:` from an fdinfo text (patched kernel).
pub fn fdinfo_ids(text: &str) -> (Option<u64>, Option<u32>) {
    let get = |k: &str| crate::procfs::status_field(text, k).and_then(|v| v.parse::<u64>().ok());
    (
        get("kvm_vm_id"),
        get("kvm_vcpu_id").and_then(|v| u32::try_from(v).ok()),
    )
}

/// qemu names vCPU threads `CPU <n>/KVM`; the fixture does too.
pub fn vcpu_index_from_comm(comm: &str) -> Option<u32> {
    comm.strip_prefix("CPU ")?
        .strip_suffix("/KVM")?
        .parse()
        .ok()
}

struct VmFd {
    fd: i32,
    id: Option<u64>,
}

struct VcpuFd {
    fd: i32,
    vcpu_id: u32,
    vm_id: Option<u64>,
}

/// The VM fds of one process with the `kvm_vm_id:` of each where fdinfo
/// has it (patched kernel), sorted by fd. The registry backend uses it to
/// learn a VM's fd, which names its debugfs directory.
pub fn vm_fds(proc: &ProcRoot, pid: u32) -> Read<Vec<(i32, Option<u64>)>> {
    let fds = match proc.list_numeric(format!("{pid}/fd")) {
        Read::Ok(f) => f,
        Read::Skip(s) => return Read::Skip(s),
        Read::Err(e) => return Read::Err(e),
    };
    let mut out = Vec::new();
    for fd in fds {
        let Read::Ok(target) = proc.read_link(format!("{pid}/fd/{fd}")) else {
            continue;
        };
        if classify_link(&target) != Some(KvmFd::Vm) {
            continue;
        }
        let Ok(fd) = i32::try_from(fd) else { continue };
        let id = proc
            .read_string(format!("{pid}/fdinfo/{fd}"))
            .ok()
            .and_then(|t| fdinfo_ids(&t).0);
        out.push((fd, id));
    }
    out.sort_unstable();
    Read::Ok(out)
}

/// How the note on a guest whose vCPU fds could not be told apart begins
/// (debugfs, where it is read, removes it).
pub const UNMATCHED_VCPUS: &str = "this kernel does not tie vCPU fds";

/// Scan one process. `Skip` when it is gone or closed to us.
pub fn scan_pid(proc: &ProcRoot, pid: u32) -> Read<Vec<Guest>> {
    let fds = match proc.list_numeric(format!("{pid}/fd")) {
        Read::Ok(f) => f,
        Read::Skip(s) => return Read::Skip(s),
        Read::Err(e) => return Read::Err(e),
    };
    let mut vms = Vec::new();
    let mut vcpus = Vec::new();
    for fd in fds {
        let Read::Ok(target) = proc.read_link(format!("{pid}/fd/{fd}")) else {
            continue;
        };
        let Some(kind) = classify_link(&target) else {
            continue;
        };
        let Ok(fd) = i32::try_from(fd) else { continue };
        let (vm_id, vcpu_id) = proc
            .read_string(format!("{pid}/fdinfo/{fd}"))
            .ok()
            .map(|t| fdinfo_ids(&t))
            .unwrap_or((None, None));
        match kind {
            KvmFd::Vm => vms.push(VmFd { fd, id: vm_id }),
            KvmFd::Vcpu(n) => vcpus.push(VcpuFd {
                fd,
                vcpu_id: vcpu_id.unwrap_or(n),
                vm_id,
            }),
        }
    }
    if vms.is_empty() && vcpus.is_empty() {
        return Read::Ok(Vec::new());
    }
    let uid = proc.process_uid(pid);
    // One fd per VM unless dup'ed; with kernel ids, merge duplicates.
    let mut by_id: BTreeMap<u64, usize> = BTreeMap::new();
    let mut guests: Vec<Guest> = Vec::new();
    for vm in &vms {
        if let Some(id) = vm.id {
            if by_id.contains_key(&id) {
                continue;
            }
            by_id.insert(id, guests.len());
        }
        let mut g = Guest::new(pid);
        g.provenance.pid = Some(Source::FdScan);
        g.vm_fd = Some(vm.fd);
        if let Some(id) = vm.id {
            g.id = Some(id);
            g.provenance.id = Some(Source::FdScan);
        }
        if let Some(u) = uid {
            g.uid = Some(u);
            g.provenance.uid = Some(Source::ProcStatus);
        }
        guests.push(g);
    }
    let single = guests.len() == 1;
    let mut unmatched = Vec::new();
    for v in vcpus {
        let target = match v.vm_id {
            Some(id) => by_id.get(&id).copied(),
            None if single => Some(0),
            None => None,
        };
        let vcpu = Vcpu {
            index: 0,
            vcpu_id: Some(v.vcpu_id),
            tid: None,
            tid_source: None,
            fd: Some(v.fd),
        };
        match target {
            Some(i) => guests[i].vcpus.push(vcpu),
            None => unmatched.push(v.vcpu_id),
        }
    }
    if guests.is_empty() {
        // vCPU fds whose VM fd was closed: the VM lives on through them.
        let mut g = Guest::new(pid);
        g.provenance.pid = Some(Source::FdScan);
        g.notes
            .push("holds vCPU fds but no VM fd; the VM may be shared with another process".into());
        guests.push(g);
    }
    if !unmatched.is_empty() {
        unmatched.sort_unstable();
        for g in &mut guests {
            g.notes.push(format!(
                "{UNMATCHED_VCPUS} ({} fds, vcpu_id {:?}) to one of this process' {} VMs \
                 (debugfs, for root, or the registry's fdinfo would)",
                unmatched.len(),
                unmatched,
                vms.len()
            ));
        }
    }
    for g in &mut guests {
        g.vcpus.sort_by_key(|v| v.vcpu_id);
        for (i, v) in g.vcpus.iter_mut().enumerate() {
            v.index = u32::try_from(i).unwrap_or(u32::MAX);
        }
        if !g.vcpus.is_empty() || single {
            g.provenance.vcpus = Some(Source::FdScan);
        }
    }
    if single {
        match_threads(proc, pid, &mut guests[0]);
    }
    Read::Ok(guests)
}

/// Give the vCPUs of a single-VM process their threads, by thread name
/// among the threads that ran guest code.
fn match_threads(proc: &ProcRoot, pid: u32, g: &mut Guest) {
    let Read::Ok(snap) = crate::cpu::snapshot(proc, pid) else {
        return;
    };
    for t in snap.threads.values() {
        let Some(n) = vcpu_index_from_comm(&t.comm) else {
            continue;
        };
        if let Some(v) = g.vcpus.iter_mut().find(|v| v.vcpu_id == Some(n)) {
            v.tid = Some(t.tid);
            v.tid_source = Some(Source::ThreadName);
        }
    }
}

/// Scan every process of this proc mount.
pub fn scan(proc: &ProcRoot) -> Found {
    let mut found = Found::default();
    let pids = match proc.list_numeric("") {
        Read::Ok(p) => p,
        other => {
            found
                .notes
                .push(format!("cannot list {}: {other:?}", proc.path().display()));
            return found;
        }
    };
    let me = std::process::id();
    for pid in pids {
        match scan_pid(proc, pid) {
            Read::Ok(g) => found.guests.extend(g),
            Read::Skip(Skip::Gone) => {}
            Read::Skip(Skip::Denied) => {
                if pid != me {
                    if let Some(ev) = super::vm_evidence(proc, pid) {
                        found.guests.push(super::hidden_guest(
                            proc,
                            pid,
                            ev,
                            "its fds are not readable",
                        ));
                    }
                }
            }
            Read::Err(e) => found.notes.push(format!("pid {pid}: {e}")),
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn link_targets() {
        assert_eq!(classify_link("anon_inode:kvm-vm"), Some(KvmFd::Vm));
        assert_eq!(
            classify_link("anon_inode:kvm-vcpu:12"),
            Some(KvmFd::Vcpu(12))
        );
        assert_eq!(classify_link("anon_inode:kvm-vcpu:x"), None);
        assert_eq!(classify_link("anon_inode:kvm-vcpu-stats:0"), None);
        assert_eq!(classify_link("/dev/kvm"), None);
        assert_eq!(classify_link("anon_inode:[eventfd]"), None);
    }

    #[test]
    fn fdinfo_parsing() {
        let t =
            "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nkvm_vm_id:\t5\nkvm_vcpu_id:\t0\n";
        assert_eq!(fdinfo_ids(t), (Some(5), Some(0)));
        assert_eq!(fdinfo_ids("pos:\t0\n"), (None, None));
    }

    #[test]
    fn comm_heuristic() {
        assert_eq!(vcpu_index_from_comm("CPU 3/KVM"), Some(3));
        assert_eq!(vcpu_index_from_comm("CPU x/KVM"), None);
        assert_eq!(vcpu_index_from_comm("qemu-system-x86"), None);
    }

    fn stat(tid: u32, comm: &str, guest: u64) -> String {
        let mut f: Vec<String> = (3..=52).map(|_| "0".to_string()).collect();
        f[14 - 3] = (guest + 5).to_string();
        f[43 - 3] = guest.to_string();
        format!("{tid} ({comm}) {}\n", f.join(" "))
    }

    #[test]
    fn unpatched_single_vm_process() {
        let d = TempDir::new("fdscan");
        d.symlink("10/fd/3", "/dev/kvm");
        d.symlink("10/fd/4", "anon_inode:kvm-vm");
        d.symlink("10/fd/6", "anon_inode:kvm-vcpu:1");
        d.symlink("10/fd/5", "anon_inode:kvm-vcpu:0");
        d.write("10/fdinfo/4", "pos:\t0\n");
        d.write("10/status", "Uid:\t5\t5\t5\t5\n");
        d.write("10/task/10/stat", stat(10, "qemu", 0));
        d.write("10/task/11/stat", stat(11, "CPU 0/KVM", 40));
        d.write("10/task/12/stat", stat(12, "CPU 1/KVM", 30));
        d.symlink("20/fd/0", "/dev/null");
        let f = scan(&ProcRoot::new(d.path()));
        assert_eq!(f.guests.len(), 1);
        let g = &f.guests[0];
        assert_eq!((g.pid, g.vm_fd, g.uid, g.id), (10, Some(4), Some(5), None));
        let v: Vec<_> = g
            .vcpus
            .iter()
            .map(|v| (v.index, v.vcpu_id, v.tid, v.fd))
            .collect();
        assert_eq!(
            v,
            vec![
                (0, Some(0), Some(11), Some(5)),
                (1, Some(1), Some(12), Some(6))
            ]
        );
        assert_eq!(g.vcpus[0].tid_source, Some(Source::ThreadName));
    }

    #[test]
    fn two_vms_unpatched_and_patched() {
        let d = TempDir::new("fdscan2");
        d.symlink("10/fd/4", "anon_inode:kvm-vm");
        d.symlink("10/fd/5", "anon_inode:kvm-vm");
        d.symlink("10/fd/6", "anon_inode:kvm-vcpu:0");
        d.symlink("11/fd/4", "anon_inode:kvm-vm");
        d.symlink("11/fd/5", "anon_inode:kvm-vm");
        d.symlink("11/fd/6", "anon_inode:kvm-vcpu:0");
        d.symlink("11/fd/7", "anon_inode:kvm-vm");
        d.write("11/fdinfo/4", "kvm_vm_id:\t8\n");
        d.write("11/fdinfo/5", "kvm_vm_id:\t9\n");
        d.write("11/fdinfo/6", "kvm_vm_id:\t9\nkvm_vcpu_id:\t0\n");
        d.write("11/fdinfo/7", "kvm_vm_id:\t9\n"); // dup of VM 9
        let f = scan(&ProcRoot::new(d.path()));
        let p10: Vec<_> = f.guests.iter().filter(|g| g.pid == 10).collect();
        assert_eq!(p10.len(), 2);
        assert!(p10
            .iter()
            .all(|g| g.vcpus.is_empty() && !g.notes.is_empty()));
        let p11: Vec<_> = f.guests.iter().filter(|g| g.pid == 11).collect();
        let ids: Vec<_> = p11.iter().map(|g| (g.id, g.vcpus.len())).collect();
        assert_eq!(ids, vec![(Some(8), 0), (Some(9), 1)]);
    }
}
