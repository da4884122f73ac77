//! Backend: `<debugfs>/kvm/<pid>-<fd>/` (root only, debugfs mounted).
//!
//! The directory name is the creating thread's pid and the VM fd number;
//! `vcpu<N>/pid` holds the tid of the thread that last ran vCPU `N`, which
//! is the one kernel fact about vCPU threads an unpatched kernel offers.

use super::fd_scan;
use crate::procfs::{classify, Skip};
use crate::{Guest, Source, Vcpu};
use std::fs;
use std::path::{Path, PathBuf};

/// One VM directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebugfsVm {
    /// The thread that created the VM, from the directory name: the owner's
    /// pid unless a secondary thread created it.
    pub pid: u32,
    /// The VM fd number the creator got, from the directory name.
    pub fd: i32,
    /// `(vcpu_id, tid)` of every `vcpu<N>` directory; no tid for a vCPU
    /// that never ran (the file holds 0).
    pub vcpus: Vec<(u32, Option<u32>)>,
    /// The directory itself, `<debugfs_root>/kvm/<pid>-<fd>`.
    pub dir: PathBuf,
}

/// Parse a `<pid>-<fd>` directory name.
pub fn parse_dir_name(name: &str) -> Option<(u32, i32)> {
    let (p, f) = name.split_once('-')?;
    Some((p.parse().ok()?, f.parse().ok()?))
}

/// Result of a scan: the VMs, or why debugfs could not be used.
#[derive(Debug)]
pub enum Scan {
    /// The VM directories found, sorted by pid and fd (possibly none).
    Vms(Vec<DebugfsVm>),
    /// `<debugfs_root>/kvm` could not be listed; the reason in plain words.
    Unavailable(String),
}

/// List the VMs under `<debugfs_root>/kvm`.
pub fn scan(debugfs_root: &Path) -> Scan {
    let dirs = match scan_names(debugfs_root) {
        Ok(d) => d,
        Err(why) => return Scan::Unavailable(why.to_string()),
    };
    let mut vms = Vec::new();
    for (pid, fd, dir) in dirs {
        let mut vcpus = Vec::new();
        if let Ok(sub) = fs::read_dir(&dir) {
            for v in sub.flatten() {
                let vname = v.file_name().to_string_lossy().into_owned();
                let Some(id) = vname
                    .strip_prefix("vcpu")
                    .and_then(|n| n.parse::<u32>().ok())
                else {
                    continue;
                };
                let tid = fs::read_to_string(v.path().join("pid"))
                    .ok()
                    .and_then(|t| t.trim().parse::<u32>().ok())
                    .filter(|&t| t != 0);
                vcpus.push((id, tid));
            }
        }
        vcpus.sort_unstable();
        vms.push(DebugfsVm {
            pid,
            fd,
            vcpus,
            dir,
        });
    }
    vms.sort_by_key(|v| (v.pid, v.fd));
    Scan::Vms(vms)
}

/// Fill in vCPU threads of fd-scan guests from debugfs (kernel facts
/// replace thread-name guesses). A VM of a process holding several, whose
/// vCPU fds an unpatched kernel does not tie to it, gets its vCPUs here:
/// debugfs has a directory per vCPU under its VM. Returns how many guests
/// were matched.
pub fn enrich(guests: &mut [Guest], vms: &[DebugfsVm]) -> usize {
    let mut matched = 0;
    for g in guests.iter_mut() {
        let Some(fd) = g.vm_fd else { continue };
        // The directory carries the creating thread's id, which is the
        // process id unless a secondary thread created the VM.
        let Some(vm) = vms.iter().find(|v| v.fd == fd && v.pid == g.pid) else {
            continue;
        };
        matched += 1;
        if g.vcpus.is_empty() && g.provenance.vcpus.is_none() {
            g.vcpus = vm
                .vcpus
                .iter()
                .zip(0..)
                .map(|(&(vcpu_id, _), index)| Vcpu {
                    index,
                    vcpu_id: Some(vcpu_id),
                    tid: None,
                    tid_source: None,
                    fd: None,
                })
                .collect();
            g.provenance.vcpus = Some(Source::Debugfs);
            g.notes.retain(|n| !n.starts_with(fd_scan::UNMATCHED_VCPUS));
        }
        for &(vcpu_id, tid) in &vm.vcpus {
            let Some(tid) = tid else { continue };
            if let Some(v) = g.vcpus.iter_mut().find(|v| v.vcpu_id == Some(vcpu_id)) {
                v.tid = Some(tid);
                v.tid_source = Some(Source::Debugfs);
            }
        }
    }
    matched
}

/// The scalar stats of a VM directory (`<debugfs>/kvm/<pid>-<fd>/`), as
/// read; [`Counters`](crate::discover::Counters) is what the library makes of them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DirCounters {
    /// One file per stat holding a decimal number, summed over the vCPUs
    /// by KVM. Histograms are left out.
    pub values: std::collections::BTreeMap<String, u64>,
    /// Stats whose open failed with `EPERM`. Seen on a real host for every
    /// writable (cumulative) stat file while read-only ones opened; kernel
    /// lockdown behaves this way.
    pub refused: Vec<String>,
}

/// Read the scalar stats of a VM directory.
pub fn read_counters(dir: &Path) -> std::io::Result<DirCounters> {
    read_counters_of(dir, None)
}

/// Read the scalar stats of a VM directory: all of them, or only `names`
/// (one file each, no directory walk: a view of many guests that shows
/// two counters should not read sixty files a guest).
pub fn read_counters_of(dir: &Path, names: Option<&[&str]>) -> std::io::Result<DirCounters> {
    let mut out = match names {
        Some(names) => {
            if !dir.is_dir() {
                return Err(std::io::Error::from(std::io::ErrorKind::NotFound));
            }
            read_named(dir, names).unwrap_or_default()
        }
        None => {
            let mut out = DirCounters::default();
            for e in fs::read_dir(dir)?.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_file()) {
                    continue;
                }
                read_into(&mut out, &e.file_name().to_string_lossy(), &e.path());
            }
            out
        }
    };
    out.refused.sort();
    Ok(out)
}

/// The counters `names` of the VM directory `dir`, one file each, without
/// a look at the directory first; `None` when not one of the files is
/// there (no such directory).
pub fn read_named(dir: &Path, names: &[&str]) -> Option<DirCounters> {
    let mut out = DirCounters::default();
    let mut any = false;
    for n in names {
        any |= read_into(&mut out, n, &dir.join(n));
    }
    any.then_some(out)
}

/// One counter file into `out`: its value, or its name among the refused
/// (`EPERM`); a file that does not hold a number is left out. False when
/// the file could not be opened for another reason (not there).
fn read_into(out: &mut DirCounters, name: &str, path: &Path) -> bool {
    match read_counter(path) {
        Ok(Some(v)) => {
            out.values.insert(name.to_string(), v);
            true
        }
        Ok(None) => true,
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            out.refused.push(name.to_string());
            true
        }
        Err(_) => false,
    }
}

/// One counter file: open, one read, close (three system calls; no `statx`
/// for a size hint, as `fs::read_to_string` does). `Ok(None)` if it does
/// not hold a number.
pub fn read_counter(path: &Path) -> std::io::Result<Option<u64>> {
    use std::io::Read;
    let mut buf = [0u8; 32];
    let n = fs::File::open(path)?.read(&mut buf)?;
    Ok(std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|t| t.trim().parse().ok()))
}

/// Why a guest's debugfs directory was not found.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VmDirError {
    /// `<debugfs>/kvm` cannot be listed: not mounted, KVM not loaded
    /// (`Gone`), or not readable (`Denied`: it needs root).
    #[error("{}: {}", path.display(), match why {
        Some(Skip::Gone) => "not mounted or KVM not loaded".to_string(),
        Some(Skip::Denied) => "not readable (needs root)".to_string(),
        _ => source.to_string(),
    })]
    Unlisted {
        /// The `kvm` directory that could not be listed.
        path: PathBuf,
        /// The error classified as a normal event, if it is one.
        why: Option<Skip>,
        /// The error from listing it.
        source: std::io::Error,
    },
    /// No directory of the guest's pid (and fd, where known).
    #[error("no {} directory{}", path.display(), if *by_fd {
        " (debugfs names the VM by the creating thread and the fd it got at creation)"
    } else { "" })]
    Missing {
        /// The directory looked for: `<debugfs>/kvm/<pid>-<fd>`, with a
        /// literal `<fd>` when the VM fd is unknown.
        path: PathBuf,
        /// Whether the VM fd was known, so the exact name was looked for.
        by_fd: bool,
    },
    /// The process holds several VMs, and without the guest's fd nothing
    /// tells which directory is its: not guessed.
    #[error("pid {pid} holds {vms} VMs and debugfs has {} of its directories ({}); this VM's fd is unknown, so they cannot be matched (not guessing)", dirs.len(), dirs.join(", "))]
    Ambiguous {
        /// The owner process.
        pid: u32,
        /// How many VMs the process holds, as far as known.
        vms: usize,
        /// The process' `<pid>-<fd>` directory names.
        dirs: Vec<String>,
    },
}

/// Find a guest's VM directory under `<debugfs_root>/kvm`: `<pid>-<fd>`
/// when the VM fd is known; without it, the only directory of the pid, and
/// only if the process holds one VM (`vms_of_pid`). Otherwise an error in
/// plain words: several VMs that cannot be told apart are not guessed.
pub fn find_vm_dir(
    debugfs_root: &Path,
    g: &Guest,
    vms_of_pid: usize,
) -> Result<PathBuf, VmDirError> {
    // With the fd known, the name is known: no walk of every VM's directory
    // (which made a refresh of N guests read N^2 directory entries).
    if let Some(d) = vm_dir(debugfs_root, g) {
        return Ok(d);
    }
    let vms = scan_names(debugfs_root)?;
    let mine: Vec<&(u32, i32, PathBuf)> = vms.iter().filter(|v| v.0 == g.pid).collect();
    if let Some(fd) = g.vm_fd {
        return mine
            .iter()
            .find(|v| v.1 == fd)
            .map(|v| v.2.clone())
            .ok_or_else(|| VmDirError::Missing {
                path: debugfs_root.join(format!("kvm/{}-{fd}", g.pid)),
                by_fd: true,
            });
    }
    match (mine.as_slice(), vms_of_pid) {
        ([only], 0 | 1) => Ok(only.2.clone()),
        ([], _) => Err(VmDirError::Missing {
            path: debugfs_root.join(format!("kvm/{}-<fd>", g.pid)),
            by_fd: false,
        }),
        _ => Err(VmDirError::Ambiguous {
            pid: g.pid,
            vms: vms_of_pid.max(mine.len()),
            dirs: mine.iter().map(|v| format!("{}-{}", v.0, v.1)).collect(),
        }),
    }
}

/// The `<pid>-<fd>` directories under `<debugfs_root>/kvm`, or why they
/// cannot be listed.
fn scan_names(debugfs_root: &Path) -> Result<Vec<(u32, i32, PathBuf)>, VmDirError> {
    let kvm = debugfs_root.join("kvm");
    let rd = fs::read_dir(&kvm).map_err(|e| VmDirError::Unlisted {
        path: kvm.clone(),
        why: classify(&e),
        source: e,
    })?;
    let mut out: Vec<(u32, i32, PathBuf)> = rd
        .flatten()
        .filter_map(|e| {
            let (pid, fd) = parse_dir_name(&e.file_name().to_string_lossy())?;
            Some((pid, fd, e.path()))
        })
        .collect();
    out.sort();
    Ok(out)
}

/// The debugfs directory of a guest found by the fd scan.
pub fn vm_dir(debugfs_root: &Path, g: &Guest) -> Option<PathBuf> {
    let d = debugfs_root.join(format!("kvm/{}-{}", g.pid, g.vm_fd?));
    d.is_dir().then_some(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    #[test]
    fn dir_names() {
        assert_eq!(parse_dir_name("1234-11"), Some((1234, 11)));
        assert_eq!(parse_dir_name("1234"), None);
        assert_eq!(parse_dir_name("a-1"), None);
    }

    #[test]
    fn scans_and_enriches() {
        let d = TempDir::new("debugfs");
        d.write("kvm/50-7/vcpu0/pid", "51\n");
        d.write("kvm/50-7/vcpu1/pid", "0\n");
        d.write("kvm/50-7/remote_tlb_flush", "12\n");
        d.write("kvm/50-7/halt_wait_hist", "1 2 3\n");
        d.write("kvm/junk/x", "");
        let Scan::Vms(vms) = scan(d.path()) else {
            panic!("fake debugfs not read")
        };
        assert_eq!(vms.len(), 1);
        assert_eq!(vms[0].vcpus, vec![(0, Some(51)), (1, None)]);
        let mut g = Guest::new(50);
        g.vm_fd = Some(7);
        for id in 0..2 {
            g.vcpus.push(Vcpu {
                index: id,
                vcpu_id: Some(id),
                tid: None,
                tid_source: None,
                fd: None,
            });
        }
        let mut gs = [g];
        assert_eq!(enrich(&mut gs, &vms), 1);
        assert_eq!(gs[0].vcpus[0].tid, Some(51));
        assert_eq!(gs[0].vcpus[0].tid_source, Some(Source::Debugfs));
        assert_eq!(gs[0].vcpus[1].tid, None);
        let dir = vm_dir(d.path(), &gs[0]).unwrap();
        let c = read_counters(&dir).unwrap();
        assert_eq!(c.values.get("remote_tlb_flush"), Some(&12));
        assert!(!c.values.contains_key("halt_wait_hist"));
        assert!(c.refused.is_empty());
    }

    #[test]
    fn vms_of_one_process_get_their_vcpus_from_debugfs() {
        let d = TempDir::new("debugfs-multi");
        d.write("kvm/60-5/vcpu0/pid", "61\n");
        d.write("kvm/60-5/vcpu1/pid", "0\n");
        d.write("kvm/60-6/vcpu0/pid", "62\n");
        let Scan::Vms(vms) = scan(d.path()) else {
            panic!("fake debugfs not read")
        };
        // What the fd scan leaves for two VMs in one process: no vCPUs,
        // the reason in a note.
        let mut gs: Vec<Guest> = [5, 6, 7]
            .into_iter()
            .map(|fd| {
                let mut g = Guest::new(60);
                g.vm_fd = Some(fd);
                g.notes
                    .push(format!("{} (3 fds ...)", fd_scan::UNMATCHED_VCPUS));
                g
            })
            .collect();
        assert_eq!(enrich(&mut gs, &vms), 2);
        assert_eq!(gs[0].vcpu_count(), Some(2));
        assert_eq!(gs[0].vcpus[0].tid, Some(61));
        assert_eq!(gs[0].vcpus[1].tid, None);
        assert_eq!(gs[0].provenance.vcpus, Some(Source::Debugfs));
        assert!(gs[0].notes.is_empty(), "{:?}", gs[0].notes);
        assert_eq!(gs[1].vcpu_count(), Some(1));
        // A VM debugfs does not show keeps its unknown count and its note.
        assert_eq!(gs[2].vcpu_count(), None);
        assert_eq!(gs[2].notes.len(), 1);
    }

    #[test]
    fn missing_debugfs_is_unavailable() {
        let d = TempDir::new("debugfs-none");
        assert!(matches!(scan(d.path()), Scan::Unavailable(_)));
    }
}
