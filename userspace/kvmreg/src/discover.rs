//! `discover()`: run the best backend that works on this host, fill gaps
//! from the others, and say which backend gave each fact.

use crate::backend::{debugfs, fd_scan, proc_kvm, stats_fd};
use crate::procfs::ProcRoot;
use crate::stats::{self, Stats};
use crate::{Guest, GuestName, Source};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where to look. Defaults to the host's `/proc` and debugfs.
#[derive(Debug, Clone)]
pub struct Config {
    /// The proc mount to scan (`/proc`).
    pub proc_root: ProcRoot,
    /// Where debugfs is mounted (`/sys/kernel/debug`); KVM's VM
    /// directories are in its `kvm/`.
    pub debugfs_root: PathBuf,
    /// Read qemu `-name` from command lines for guests the kernel has no
    /// name for (shown as an unverified hint).
    pub cmdline_hints: bool,
    /// Use the VM registry (`/proc/kvm`) when the kernel has it. Off, the
    /// fallbacks of unpatched kernels are used, e.g. to compare the two.
    pub use_registry: bool,
    /// libvirt's system pid files (`/run/libvirt/qemu`), a name source.
    pub libvirt_system_dir: PathBuf,
    /// Where users' runtime directories are (`/run/user`): a session
    /// libvirt of user U keeps its pid files in `U/libvirt/qemu/run`.
    pub user_run_dir: PathBuf,
    /// sysfs (`/sys`), for network devices' counters.
    pub sys_root: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            proc_root: ProcRoot::default(),
            debugfs_root: PathBuf::from("/sys/kernel/debug"),
            cmdline_hints: true,
            use_registry: true,
            libvirt_system_dir: PathBuf::from("/run/libvirt/qemu"),
            user_run_dir: PathBuf::from("/run/user"),
            sys_root: PathBuf::from("/sys"),
        }
    }
}

/// What became of one backend in a discovery.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
#[non_exhaustive]
pub enum BackendState {
    /// Run; its facts are in the result.
    Used,
    /// Not usable here, and why.
    Unavailable(String),
    /// A better backend already gave these facts.
    NotNeeded,
}

/// The result of [`discover`].
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Discovery {
    /// The guests found.
    pub guests: Vec<Guest>,
    /// Each backend considered, in the order tried, and what became of it.
    pub backends: Vec<(Source, BackendState)>,
    /// Skipped processes and other non-fatal events.
    pub notes: Vec<String>,
}

/// Discover the guests on this host.
pub fn discover() -> Discovery {
    discover_with(&Config::default())
}

/// Discover the guests under a given proc and debugfs root.
pub fn discover_with(cfg: &Config) -> Discovery {
    let mut backends = Vec::new();
    let mut notes = Vec::new();
    let mut guests;
    if cfg.use_registry && proc_kvm::available(&cfg.proc_root) {
        let f = proc_kvm::scan(&cfg.proc_root);
        guests = f.guests;
        notes.extend(f.notes);
        registry_vm_fds(&cfg.proc_root, &mut guests);
        backends.push((Source::ProcKvm, BackendState::Used));
        backends.push((Source::FdScan, BackendState::NotNeeded));
        backends.push((Source::Debugfs, BackendState::NotNeeded));
    } else {
        backends.push((
            Source::ProcKvm,
            BackendState::Unavailable(if cfg.use_registry {
                format!(
                    "{} has no kvm directory: kernel without the VM registry",
                    cfg.proc_root.path().display()
                )
            } else {
                "not used (asked for the fallbacks)".into()
            }),
        ));
        let f = fd_scan::scan(&cfg.proc_root);
        guests = f.guests;
        notes.extend(f.notes);
        backends.push((Source::FdScan, BackendState::Used));
        match debugfs::scan(&cfg.debugfs_root) {
            debugfs::Scan::Vms(vms) => {
                debugfs::enrich(&mut guests, &vms);
                backends.push((Source::Debugfs, BackendState::Used));
            }
            debugfs::Scan::Unavailable(why) => {
                backends.push((Source::Debugfs, BackendState::Unavailable(why)))
            }
        }
        note_unknown_vcpu_threads(&mut guests);
    }
    add_names(cfg, &mut guests);
    guests.sort_by_key(|g| (g.pid, g.id, g.vm_fd));
    Discovery {
        guests,
        backends,
        notes,
    }
}

/// The guests as cheaply as the kernel can tell them: on a registry kernel
/// `/proc/kvm/.list`, one read for every guest (see [`list_registry`]);
/// elsewhere [`discover_with`].
pub fn list_with(cfg: &Config) -> Discovery {
    list_registry(cfg).unwrap_or_else(|| discover_with(cfg))
}

/// The guests from `/proc/kvm/.list` in one read: those of this pid
/// namespace that the reader may see, without their vCPU threads (`vcpus`
/// has one entry per vCPU, threads unknown). `None` without a registry
/// or without `.list`. A tool that needs vCPU threads, or VMs of child pid
/// namespaces, uses [`discover_with`].
pub fn list_registry(cfg: &Config) -> Option<Discovery> {
    if !cfg.use_registry || !proc_kvm::available(&cfg.proc_root) {
        return None;
    }
    let crate::procfs::Read::Ok((entries, bad)) = proc_kvm::read_list(&cfg.proc_root) else {
        return None;
    };
    let mut notes = Vec::new();
    if bad > 0 {
        notes.push(format!(
            "{bad} lines of {} not understood",
            cfg.proc_root.join("kvm/.list").display()
        ));
    }
    Some(Discovery {
        guests: entries.iter().map(proc_kvm::ListEntry::guest).collect(),
        backends: vec![
            (Source::ProcKvm, BackendState::Used),
            (Source::FdScan, BackendState::NotNeeded),
            (Source::Debugfs, BackendState::NotNeeded),
        ],
        notes,
    })
}

/// Name guests the kernel has no name for: by a libvirt pid file that
/// names their VMM ([`crate::backend::libvirt`]), else by their qemu
/// `-name`, marked as an unverified hint (when `cfg.cmdline_hints`).
pub(crate) fn add_names(cfg: &Config, guests: &mut [Guest]) {
    crate::backend::libvirt::add_names(cfg, guests);
    if !cfg.cmdline_hints {
        return;
    }
    for g in guests.iter_mut().filter(|g| g.name.is_none()) {
        if let Some(n) = cfg.proc_root.cmdline(g.pid).and_then(|c| qemu_name(&c)) {
            g.name = Some(GuestName::CmdlineHint(n));
            g.provenance.name = Some(Source::Cmdline);
        }
    }
}

/// The note for fallback guests some of whose vCPU threads are unknown.
pub(crate) fn note_unknown_vcpu_threads(guests: &mut [Guest]) {
    for g in guests {
        if !g.vcpus.is_empty() && g.vcpus.iter().any(|v| v.tid.is_none()) {
            g.notes.push(
                "some vCPU threads unknown: this kernel tells them only through debugfs (root) or the VM registry"
                    .into(),
            );
        }
    }
}

/// Give registry guests their VM fd (which names the debugfs directory):
/// the lowest fd whose fdinfo `kvm_vm_id:` is the guest's id. Left unknown
/// where the owner's fds cannot be read.
fn registry_vm_fds(proc: &ProcRoot, guests: &mut [Guest]) {
    let mut by_pid: BTreeMap<u32, Vec<(i32, Option<u64>)>> = BTreeMap::new();
    for g in guests.iter_mut() {
        let Some(id) = g.id else { continue };
        if g.details_hidden || g.vm_fd.is_some() {
            continue;
        }
        let fds = by_pid
            .entry(g.pid)
            .or_insert_with(|| match fd_scan::vm_fds(proc, g.pid) {
                crate::procfs::Read::Ok(v) => v,
                _ => Vec::new(),
            });
        g.vm_fd = fds.iter().find(|f| f.1 == Some(id)).map(|f| f.0);
    }
}

/// The guest name from a qemu command line: `-name web` or
/// `-name guest=web,debug-threads=on` (also `--name`, `-name=web`).
pub fn qemu_name(cmdline: &[String]) -> Option<String> {
    let mut it = cmdline.iter();
    while let Some(a) = it.next() {
        let value = match a.as_str() {
            "-name" | "--name" => it.next()?.as_str(),
            s => match s
                .strip_prefix("-name=")
                .or_else(|| s.strip_prefix("--name="))
            {
                Some(v) => v,
                None => continue,
            },
        };
        // qemu's option syntax: a bare first value is the guest name.
        let first = value.split(',').next()?;
        let name = first.strip_prefix("guest=").unwrap_or(first);
        let name = if first.contains('=') && !first.starts_with("guest=") {
            value.split(',').find_map(|kv| kv.strip_prefix("guest="))?
        } else {
            name
        };
        return (!name.is_empty()).then(|| name.to_string());
    }
    None
}

/// The VM stats of a guest: from `/proc/<pid>/kvm/<id>/stats` on a patched
/// kernel, else through `pidfd_getfd` of its VM fd.
pub fn guest_stats(cfg: &Config, g: &Guest) -> Result<(Source, Stats), stats_fd::StatsFdError> {
    if g.provenance.id == Some(Source::ProcKvm) {
        if let Some(id) = g.id {
            let path = cfg.proc_root.join(format!("{}/kvm/{id}/stats", g.pid));
            let mut f = std::fs::File::open(path).map_err(stats_fd::StatsFdError::Io)?;
            let l = stats::read_layout(&mut f)?;
            return Ok((Source::ProcKvm, stats::read_values(&l, &mut f)?));
        }
    }
    let fd = g.vm_fd.ok_or(stats_fd::StatsFdError::NoVmFd {
        hidden: g.details_hidden,
    })?;
    let (mut f, l) = stats_fd::open(g.pid, fd, fd_scan::KvmFd::Vm)?;
    Ok((Source::StatsFd, stats::read_values(&l, &mut f)?))
}

/// Scalar stats counters of a guest, and where they came from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[non_exhaustive]
pub struct Counters {
    /// Where the bulk came from (the registry's stats file, debugfs, or
    /// `pidfd_getfd`); `sources` has it per counter.
    pub source: Source,
    /// Counter values by KVM stat name (`exits`, `remote_tlb_flush`, ...):
    /// scalar stats only, histograms left out.
    pub values: BTreeMap<String, u64>,
    /// The source of each counter in `values`. On a registry kernel the VM
    /// stats come from `/proc/<pid>/kvm/<id>/stats` and the vCPU stats
    /// (`exits`, `halt_*`, ...), summed over the vCPUs, from its
    /// `vcpu_stats` (or, on a registry kernel without that file, from
    /// debugfs, which sums them too).
    pub sources: BTreeMap<String, Source>,
    /// What could not be read, in plain words.
    pub notes: Vec<String>,
}

/// A VM directory's debugfs counters as [`Counters`], the refused ones
/// said in a note.
pub(crate) fn from_debugfs(c: debugfs::DirCounters) -> Counters {
    Counters {
        source: Source::Debugfs,
        sources: c
            .values
            .keys()
            .map(|k| (k.clone(), Source::Debugfs))
            .collect(),
        values: c.values,
        notes: refused_note(&c.refused).into_iter().collect(),
    }
}

fn refused_note(refused: &[String]) -> Option<String> {
    Some(format!(
        "debugfs refused {} stats with EPERM (kernel lockdown refuses writable debugfs files, which all cumulative stats are), e.g. {}",
        refused.len(),
        refused.first()?
    ))
}

/// Scalar counters of a guest by name, from the best source that works:
/// the registry's `stats` and `vcpu_stats`, debugfs, then `pidfd_getfd`.
/// On a registry kernel without `vcpu_stats` the vCPU stats are added
/// from debugfs where it is mounted and readable (and the VM's directory
/// can be matched); `sources` says which counter came from where and
/// `notes` why vCPU stats are missing.
pub fn guest_counters(cfg: &Config, g: &Guest) -> Result<Counters, stats_fd::StatsFdError> {
    guest_counters_of(cfg, g, None)
}

/// As [`guest_counters`], but only the counters in `names` (all if
/// `None`): what a view of many guests needs, without reading every stat
/// file of every guest's debugfs directory on each refresh.
pub fn guest_counters_of(
    cfg: &Config,
    g: &Guest,
    names: Option<&[&str]>,
) -> Result<Counters, stats_fd::StatsFdError> {
    let wanted = |n: &str| names.is_none_or(|ns| ns.contains(&n));
    let from_stats = |(source, s): (Source, Stats)| {
        let values: BTreeMap<String, u64> = s
            .stats
            .iter()
            .filter(|s| s.values.len() == 1 && wanted(&s.desc.name))
            .map(|s| (s.desc.name.clone(), s.values[0]))
            .collect();
        Counters {
            source,
            sources: values.keys().map(|k| (k.clone(), source)).collect(),
            values,
            notes: Vec::new(),
        }
    };
    if g.provenance.id == Some(Source::ProcKvm) {
        let mut c = guest_stats(cfg, g).map(from_stats)?;
        if !add_vcpu_stats_counters(cfg, g, &mut c, names) {
            add_debugfs_vcpu_counters(cfg, g, &mut c, names);
        }
        return Ok(c);
    }
    if let Some(dir) = debugfs::vm_dir(&cfg.debugfs_root, g) {
        if let Ok(c) = debugfs::read_counters_of(&dir, names) {
            return Ok(from_debugfs(c));
        }
    }
    let mut c = guest_stats(cfg, g).map(from_stats)?;
    // The VM's stats hold no vCPU counters: say what would give them.
    c.notes.push(if cfg.debugfs_root.join("kvm").is_dir() {
        "no vCPU counters (exits, halt polling): debugfs has no directory for this VM that kvmtop can read (it needs root)".into()
    } else {
        format!(
            "no vCPU counters (exits, halt polling): on this kernel they are in debugfs, which is not mounted at {} (as root: mount -t debugfs none /sys/kernel/debug)",
            cfg.debugfs_root.display()
        )
    });
    Ok(c)
}

/// Add the vCPU counters (`exits`, `halt_*`, ...), summed over the vCPUs,
/// from the registry's `vcpu_stats`: one read, no debugfs, no root. False
/// if the kernel's registry has no `vcpu_stats` (an earlier version of the
/// series), so that the caller falls back to debugfs; a file that is there
/// but unreadable or malformed is said in `c.notes`.
fn add_vcpu_stats_counters(
    cfg: &Config,
    g: &Guest,
    c: &mut Counters,
    names: Option<&[&str]>,
) -> bool {
    let Some(id) = g.id else { return false };
    let path = cfg.proc_root.join(format!("{}/kvm/{id}/vcpu_stats", g.pid));
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
        Err(e) => {
            c.notes.push(format!("{}: {e}", path.display()));
            return true;
        }
    };
    match stats::parse_vcpu_sums(&bytes) {
        Ok((_, _, sums)) => {
            for (k, v) in sums {
                if names.is_none_or(|ns| ns.contains(&k.as_str())) && !c.values.contains_key(&k) {
                    c.sources.insert(k.clone(), Source::ProcKvm);
                    c.values.insert(k, v);
                }
            }
        }
        Err(e) => c.notes.push(format!("{}: {e}", path.display())),
    }
    true
}

/// Add the counters the registry's VM stats lack (the vCPU stats) from the
/// guest's debugfs directory, on a registry kernel without `vcpu_stats`;
/// say in `c.notes` why not where they cannot be.
fn add_debugfs_vcpu_counters(cfg: &Config, g: &Guest, c: &mut Counters, names: Option<&[&str]>) {
    let vms_of_pid = match cfg.proc_root.list_numeric(format!("{}/kvm", g.pid)) {
        crate::procfs::Read::Ok(ids) => ids.len(),
        _ => 0,
    };
    let missing = "vCPU stats (exits, halt polling) are not in the registry's VM stats and come only from debugfs";
    let dir = match debugfs::find_vm_dir(&cfg.debugfs_root, g, vms_of_pid) {
        Ok(d) => d,
        Err(why) => {
            c.notes.push(format!("{missing}: {why}"));
            return;
        }
    };
    // Only what the registry's stats file did not already give.
    let missing_names: Option<Vec<&str>> = names.map(|ns| {
        ns.iter()
            .copied()
            .filter(|n| !c.values.contains_key(*n))
            .collect()
    });
    if missing_names.as_ref().is_some_and(Vec::is_empty) {
        return;
    }
    let d = match debugfs::read_counters_of(&dir, missing_names.as_deref()) {
        Ok(d) => d,
        Err(e) => {
            c.notes.push(format!("{missing}: {}: {e}", dir.display()));
            return;
        }
    };
    for (k, v) in d.values {
        if !c.values.contains_key(&k) {
            c.sources.insert(k.clone(), Source::Debugfs);
            c.values.insert(k, v);
        }
    }
    let refused: Vec<String> = d
        .refused
        .into_iter()
        .filter(|r| !c.values.contains_key(r))
        .collect();
    c.notes.extend(refused_note(&refused));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(str::to_string).collect()
    }

    #[test]
    fn qemu_names() {
        assert_eq!(qemu_name(&args("qemu -m 1G -name web")), Some("web".into()));
        assert_eq!(
            qemu_name(&args("qemu -name guest=db,debug-threads=on")),
            Some("db".into())
        );
        assert_eq!(
            qemu_name(&args("qemu -name debug-threads=on,guest=x")),
            Some("x".into())
        );
        assert_eq!(
            qemu_name(&args("qemu --name=a,process=b")),
            Some("a".into())
        );
        assert_eq!(qemu_name(&args("qemu -name")), None);
        assert_eq!(qemu_name(&args("qemu -m 1G")), None);
    }

    #[test]
    fn unpatched_tree_uses_fd_scan_and_hints() {
        let d = TempDir::new("discover");
        d.symlink("10/fd/4", "anon_inode:kvm-vm");
        d.write("10/cmdline", "qemu\0-name\0web\0");
        let cfg = Config {
            proc_root: ProcRoot::new(d.path()),
            debugfs_root: d.path().join("no-debugfs"),
            cmdline_hints: true,
            use_registry: true,
            libvirt_system_dir: d.path().join("no-libvirt"),
            user_run_dir: d.path().join("no-run-user"),
            sys_root: d.path().join("no-sys"),
        };
        let r = discover_with(&cfg);
        assert_eq!(r.guests.len(), 1);
        assert_eq!(r.guests[0].name, Some(GuestName::CmdlineHint("web".into())));
        assert_eq!(r.guests[0].provenance.name, Some(Source::Cmdline));
        assert_eq!(r.guests[0].provenance.pid, Some(Source::FdScan));
        assert!(matches!(
            r.backends[0],
            (Source::ProcKvm, BackendState::Unavailable(_))
        ));
        assert_eq!(r.backends[1], (Source::FdScan, BackendState::Used));
    }

    #[test]
    fn patched_tree_uses_proc_kvm_and_its_stats() {
        let d = TempDir::new("discover-p");
        d.write("10/kvm/3/name", "web\n");
        d.write(
            "10/kvm/3/status",
            "Name:\tweb\nId:\t3\nPid:\t10\nVcpus:\t0\n",
        );
        d.write("10/kvm/3/vcpus", "");
        let bytes = stats::encode("kvm-10", 48, &[("remote_tlb_flush", 0, &[9])]);
        d.write("10/kvm/3/stats", &bytes);
        d.symlink("kvm/web", "../10/kvm/3");
        d.write("10/cmdline", "qemu\0-name\0forged\0");
        let cfg = Config {
            proc_root: ProcRoot::new(d.path()),
            debugfs_root: d.path().join("none"),
            cmdline_hints: true,
            use_registry: true,
            libvirt_system_dir: d.path().join("no-libvirt"),
            user_run_dir: d.path().join("no-run-user"),
            sys_root: d.path().join("no-sys"),
        };
        let r = discover_with(&cfg);
        assert_eq!(r.guests.len(), 1);
        let g = &r.guests[0];
        assert_eq!(g.name, Some(GuestName::Kernel("web".into())));
        let (src, s) = guest_stats(&cfg, g).unwrap();
        assert_eq!(src, Source::ProcKvm);
        assert_eq!(s.get("remote_tlb_flush"), Some(9));
    }

    /// A registry VM `id` of `pid` with a stats file of `remote_tlb_flush`.
    fn registry_vm(d: &TempDir, pid: u32, id: u64, name: &str) {
        d.write(&format!("{pid}/kvm/{id}/name"), format!("{name}\n"));
        d.write(
            &format!("{pid}/kvm/{id}/status"),
            format!("Name:\t{name}\nId:\t{id}\nPid:\t{pid}\nVcpus:\t0\n"),
        );
        d.write(&format!("{pid}/kvm/{id}/vcpus"), "");
        let bytes = stats::encode("kvm", 48, &[("remote_tlb_flush", 0, &[9])]);
        d.write(&format!("{pid}/kvm/{id}/stats"), &bytes);
        d.symlink(&format!("kvm/{name}"), &format!("../{pid}/kvm/{id}"));
    }

    fn debugfs_vm(d: &TempDir, dir: &str, exits: u64) {
        d.write(&format!("dbg/kvm/{dir}/exits"), format!("{exits}\n"));
        d.write(&format!("dbg/kvm/{dir}/halt_successful_poll"), "3\n");
        d.write(&format!("dbg/kvm/{dir}/halt_attempted_poll"), "4\n");
        // A VM stat in both: the registry's value wins.
        d.write(&format!("dbg/kvm/{dir}/remote_tlb_flush"), "1\n");
        d.write(&format!("dbg/kvm/{dir}/vcpu0/pid"), "0\n");
    }

    fn registry_cfg(d: &TempDir) -> Config {
        Config {
            proc_root: ProcRoot::new(d.path()),
            debugfs_root: d.path().join("dbg"),
            cmdline_hints: false,
            use_registry: true,
            libvirt_system_dir: d.path().join("no-libvirt"),
            user_run_dir: d.path().join("no-run-user"),
            sys_root: d.path().join("no-sys"),
        }
    }

    #[test]
    fn registry_counters_take_vcpu_stats_from_debugfs_by_pid_and_fd() {
        let d = TempDir::new("discover-rd");
        registry_vm(&d, 10, 3, "web");
        registry_vm(&d, 10, 5, "db");
        // The VM fds of pid 10, tied to the registry ids by fdinfo.
        d.symlink("10/fd/4", "anon_inode:kvm-vm");
        d.write("10/fdinfo/4", "pos:\t0\nkvm_vm_id:\t3\n");
        d.symlink("10/fd/7", "anon_inode:kvm-vm");
        d.write("10/fdinfo/7", "kvm_vm_id:\t5\n");
        d.symlink("10/fd/8", "anon_inode:kvm-vcpu:0");
        debugfs_vm(&d, "10-4", 100);
        debugfs_vm(&d, "10-7", 700);
        debugfs_vm(&d, "11-4", 999); // another process' VM with the same fd
        let cfg = registry_cfg(&d);
        let r = discover_with(&cfg);
        assert_eq!(r.backends[0], (Source::ProcKvm, BackendState::Used));
        let web = r.guests.iter().find(|g| g.id == Some(3)).expect("web");
        let db = r.guests.iter().find(|g| g.id == Some(5)).expect("db");
        assert_eq!((web.vm_fd, db.vm_fd), (Some(4), Some(7)));
        let c = guest_counters(&cfg, web).unwrap();
        assert_eq!(c.source, Source::ProcKvm);
        assert_eq!(c.values.get("exits"), Some(&100));
        assert_eq!(c.sources.get("exits"), Some(&Source::Debugfs));
        assert_eq!(c.values.get("halt_attempted_poll"), Some(&4));
        assert_eq!(c.values.get("remote_tlb_flush"), Some(&9));
        assert_eq!(c.sources.get("remote_tlb_flush"), Some(&Source::ProcKvm));
        assert_eq!(c.sources.len(), c.values.len());
        assert!(c.notes.is_empty(), "{:?}", c.notes);
        let c = guest_counters(&cfg, db).unwrap();
        assert_eq!(c.values.get("exits"), Some(&700));
    }

    #[test]
    fn registry_counters_take_vcpu_stats_from_vcpu_stats_when_there() {
        let d = TempDir::new("discover-vs");
        registry_vm(&d, 40, 3, "web");
        // Two vCPUs: exits 5 and 7; debugfs says something else.
        let mut bytes = stats::encode(
            "kvm-40/vcpus",
            48,
            &[("exits", 0, &[5]), ("halt_attempted_poll", 0, &[1])],
        );
        for v in [7u64, 2] {
            bytes.extend_from_slice(&v.to_ne_bytes());
        }
        d.write("40/kvm/3/vcpu_stats", &bytes);
        debugfs_vm(&d, "40-4", 999);
        let cfg = registry_cfg(&d);
        let g = discover_with(&cfg).guests.remove(0);
        let c = guest_counters(&cfg, &g).unwrap();
        assert_eq!(c.values.get("exits"), Some(&12));
        assert_eq!(c.sources.get("exits"), Some(&Source::ProcKvm));
        assert_eq!(c.values.get("halt_attempted_poll"), Some(&3));
        assert_eq!(c.values.get("remote_tlb_flush"), Some(&9));
        assert!(c.notes.is_empty(), "{:?}", c.notes);
        // Only what was asked for.
        let c = guest_counters_of(&cfg, &g, Some(&["exits"])).unwrap();
        assert_eq!(c.values.keys().collect::<Vec<_>>(), vec!["exits"]);

        // A malformed file is said, not guessed around.
        d.write("40/kvm/3/vcpu_stats", &bytes[..bytes.len() - 4]);
        let c = guest_counters(&cfg, &g).unwrap();
        assert_eq!(c.values.get("exits"), None);
        assert!(
            c.notes.iter().any(|n| n.contains("vcpu_stats")),
            "{:?}",
            c.notes
        );
    }

    #[test]
    fn registry_vms_that_cannot_be_matched_to_debugfs_are_not_guessed() {
        let d = TempDir::new("discover-ra");
        registry_vm(&d, 20, 3, "a");
        registry_vm(&d, 20, 4, "b");
        // No readable fds: the VM fds are unknown.
        debugfs_vm(&d, "20-4", 1);
        debugfs_vm(&d, "20-5", 2);
        let cfg = registry_cfg(&d);
        let r = discover_with(&cfg);
        assert_eq!(r.guests.len(), 2);
        for g in &r.guests {
            assert_eq!(g.vm_fd, None);
            let c = guest_counters(&cfg, g).unwrap();
            assert_eq!(c.values.get("exits"), None, "{c:?}");
            assert_eq!(c.values.get("remote_tlb_flush"), Some(&9));
            let n = c.notes.join("\n");
            assert!(
                n.contains("pid 20 holds 2 VMs") && n.contains("20-4, 20-5"),
                "{n}"
            );
        }
    }

    #[test]
    fn a_single_registry_vm_matches_the_only_debugfs_dir_of_its_pid() {
        let d = TempDir::new("discover-r1");
        registry_vm(&d, 30, 3, "solo");
        debugfs_vm(&d, "30-9", 42);
        debugfs_vm(&d, "31-9", 1);
        let cfg = registry_cfg(&d);
        let g = discover_with(&cfg).guests.remove(0);
        assert_eq!(g.vm_fd, None);
        let c = guest_counters(&cfg, &g).unwrap();
        assert_eq!(c.values.get("exits"), Some(&42));
        assert_eq!(c.sources.get("exits"), Some(&Source::Debugfs));

        // A second registry VM of the pid: one directory no longer says which.
        registry_vm(&d, 30, 4, "other");
        let c = guest_counters(&cfg, &g).unwrap();
        assert_eq!(c.values.get("exits"), None);
        assert!(
            c.notes.iter().any(|n| n.contains("not guessing")),
            "{:?}",
            c.notes
        );

        // No debugfs at all: the VM stats, and why the vCPU stats are missing.
        let cfg = Config {
            debugfs_root: d.path().join("none"),
            ..cfg
        };
        let c = guest_counters(&cfg, &g).unwrap();
        assert_eq!(c.values.get("remote_tlb_flush"), Some(&9));
        assert!(
            c.notes
                .iter()
                .any(|n| n.contains("come only from debugfs") && n.contains("not mounted")),
            "{:?}",
            c.notes
        );
    }

    #[test]
    fn the_registry_can_be_left_out() {
        let d = TempDir::new("discover-n");
        d.write("10/kvm/3/name", "web\n");
        d.write("10/kvm/3/status", "Name:\tweb\nId:\t3\nPid:\t10\n");
        d.symlink("kvm/web", "../10/kvm/3");
        d.symlink("10/fd/4", "anon_inode:kvm-vm");
        let cfg = Config {
            proc_root: ProcRoot::new(d.path()),
            debugfs_root: d.path().join("none"),
            cmdline_hints: false,
            use_registry: false,
            libvirt_system_dir: d.path().join("no-libvirt"),
            user_run_dir: d.path().join("no-run-user"),
            sys_root: d.path().join("no-sys"),
        };
        let r = discover_with(&cfg);
        assert_eq!(r.guests.len(), 1);
        assert_eq!(r.guests[0].name, None, "no kernel name from the fd scan");
        assert_eq!(r.guests[0].provenance.pid, Some(Source::FdScan));
        assert_eq!(r.backends[1], (Source::FdScan, BackendState::Used));
        assert!(matches!(
            &r.backends[0],
            (Source::ProcKvm, BackendState::Unavailable(why)) if why.contains("not used")
        ));
    }
}
