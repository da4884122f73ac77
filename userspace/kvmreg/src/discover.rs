//! `discover()`: run the best backend that works on this host, fill gaps
//! from the others, and say which backend gave each fact.

use crate::backend::{debugfs, fd_scan, proc_kvm, stats_fd};
use crate::procfs::ProcRoot;
use crate::stats::{self, Stats};
use crate::{Guest, GuestName, Source};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// Where to look. Defaults to the host's `/proc` and debugfs.
#[derive(Debug, Clone)]
pub struct Config {
    pub proc_root: ProcRoot,
    pub debugfs_root: PathBuf,
    /// Read qemu `-name` from command lines for guests the kernel has no
    /// name for (shown as an unverified hint).
    pub cmdline_hints: bool,
    /// Use the VM registry (`/proc/kvm`) when the kernel has it. Off, the
    /// fallbacks of unpatched kernels are used, e.g. to compare the two.
    pub use_registry: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            proc_root: ProcRoot::default(),
            debugfs_root: PathBuf::from("/sys/kernel/debug"),
            cmdline_hints: true,
            use_registry: true,
        }
    }
}

/// What became of one backend in a discovery.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendState {
    Used,
    /// Not usable here, and why.
    Unavailable(String),
    /// A better backend already gave these facts.
    NotNeeded,
}

/// The result of [`discover`].
#[derive(Debug, Clone, Serialize)]
pub struct Discovery {
    pub guests: Vec<Guest>,
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
        for g in &mut guests {
            if !g.vcpus.is_empty() && g.vcpus.iter().any(|v| v.tid.is_none()) {
                g.notes.push(
                    "some vCPU threads unknown: this kernel tells them only through debugfs (root) or the VM registry"
                        .into(),
                );
            }
        }
    }
    if cfg.cmdline_hints {
        for g in guests.iter_mut().filter(|g| g.name.is_none()) {
            if let Some(n) = cfg.proc_root.cmdline(g.pid).and_then(|c| qemu_name(&c)) {
                g.name = Some(GuestName::CmdlineHint(n));
                g.provenance.name = Some(Source::Cmdline);
            }
        }
    }
    guests.sort_by_key(|g| (g.pid, g.id, g.vm_fd));
    Discovery {
        guests,
        backends,
        notes,
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
    let fd = g.vm_fd.ok_or(stats_fd::StatsFdError::Unsupported(
        "a known VM fd for this guest",
    ))?;
    let (mut f, l) = stats_fd::open(g.pid, fd, fd_scan::KvmFd::Vm)?;
    Ok((Source::StatsFd, stats::read_values(&l, &mut f)?))
}

/// Scalar stats counters of a guest, and where they came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub source: Source,
    pub values: BTreeMap<String, u64>,
    /// What could not be read, in plain words.
    pub notes: Vec<String>,
}

/// Scalar counters of a guest by name, from the best source that works:
/// the registry's stats file, debugfs, then `pidfd_getfd`.
pub fn guest_counters(cfg: &Config, g: &Guest) -> Result<Counters, stats_fd::StatsFdError> {
    let from_stats = |(source, s): (Source, Stats)| Counters {
        source,
        values: s
            .stats
            .iter()
            .filter(|s| s.values.len() == 1)
            .map(|s| (s.desc.name.clone(), s.values[0]))
            .collect(),
        notes: Vec::new(),
    };
    if g.provenance.id == Some(Source::ProcKvm) {
        return guest_stats(cfg, g).map(from_stats);
    }
    if let Some(dir) = debugfs::vm_dir(&cfg.debugfs_root, g) {
        if let Ok(c) = debugfs::read_counters(&dir) {
            let mut notes = Vec::new();
            if !c.refused.is_empty() {
                notes.push(format!(
                    "debugfs refused {} stats with EPERM (kernel lockdown refuses writable debugfs files, which all cumulative stats are), e.g. {}",
                    c.refused.len(),
                    c.refused[0]
                ));
            }
            return Ok(Counters {
                source: Source::Debugfs,
                values: c.values,
                notes,
            });
        }
    }
    guest_stats(cfg, g).map(from_stats)
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
        };
        let r = discover_with(&cfg);
        assert_eq!(r.guests.len(), 1);
        let g = &r.guests[0];
        assert_eq!(g.name, Some(GuestName::Kernel("web".into())));
        let (src, s) = guest_stats(&cfg, g).unwrap();
        assert_eq!(src, Source::ProcKvm);
        assert_eq!(s.get("remote_tlb_flush"), Some(9));
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
