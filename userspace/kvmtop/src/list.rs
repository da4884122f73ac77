//! `kvmtop list`: the guests and where each fact came from.

use crate::out::emit;
use crate::render;
use kvmreg::procfs::ProcRoot;
use kvmreg::{Config, Guest, GuestName, Source};
use serde::Serialize;

/// One guest as `list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// The name as `/proc/kvm` shows it to this user: `<name>@<uid>` for
    /// another user's guest (whose uid is also `uid`).
    pub name: Option<String>,
    /// `kernel` (the registry's name) or `cmdline-hint` (qemu `-name`,
    /// unverified); `null` without a name.
    pub name_kind: Option<&'static str>,
    pub id: Option<u64>,
    pub pid: u32,
    pub uid: Option<u32>,
    /// `null` when unknown (see the footnote the table prints).
    pub vcpus: Option<usize>,
    /// The vCPU threads (`null` for unknown ones); `null` when not read:
    /// the fast listing (`/proc/kvm/.list`) has only the count, `--all`
    /// reads them.
    pub vcpu_tids: Option<Vec<Option<u32>>>,
    pub memory_bytes: Option<u64>,
    pub age_s: Option<f64>,
    /// `vm-created` (the registry's creation time) or `process-start` (the
    /// VMM's start, on kernels without the registry).
    pub age_source: Option<&'static str>,
    /// The backends the facts came from, best first.
    pub sources: Vec<Source>,
    pub details_hidden: bool,
    pub notes: Vec<String>,
}

/// `CLOCK_BOOTTIME` now, in ns.
fn boottime_ns() -> Option<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec for the call.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    (r == 0).then(|| ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// `tids`: whether `g`'s vCPU threads were read.
pub fn entry(proc: &ProcRoot, g: &Guest, tids: bool) -> Entry {
    let (age_s, age_source) = match (g.created, boottime_ns()) {
        (Some(c), Some(now)) => (Some(now.saturating_sub(c) as f64 / 1e9), Some("vm-created")),
        _ => match kvmreg::cpu::process_age(proc, g.pid) {
            Some(a) => (Some(a), Some("process-start")),
            None => (None, None),
        },
    };
    let p = &g.provenance;
    let mut sources: Vec<Source> = Vec::new();
    for s in [p.id, p.pid, p.name, p.uid, p.vcpus, p.memory, p.created]
        .into_iter()
        .flatten()
    {
        if !sources.contains(&s) {
            sources.push(s);
        }
    }
    Entry {
        name: g.qualified_name(crate::guests::viewer()),
        name_kind: g.name.as_ref().map(GuestName::kind),
        id: g.id,
        pid: g.pid,
        uid: g.uid,
        vcpus: g.vcpu_count(),
        vcpu_tids: tids.then(|| g.vcpus.iter().map(|v| v.tid).collect()),
        memory_bytes: g.memory_bytes,
        age_s,
        age_source,
        sources,
        details_hidden: g.details_hidden,
        notes: g.notes.clone(),
    }
}

fn name_cell(e: &Entry) -> String {
    match (&e.name, e.name_kind) {
        (Some(n), Some("kernel")) => n.clone(),
        (Some(n), _) => format!("{n}?"),
        (None, _) => "-".into(),
    }
}

/// The table `kvmtop list` prints.
pub fn table(entries: &[Entry]) -> String {
    let mut out = format!(
        "{:<20} {:>6} {:>8} {:>6} {:>5} {:>7} {:>7}  {}\n",
        "NAME", "ID", "PID", "UID", "VCPUS", "MEMORY", "AGE", "SOURCE"
    );
    for e in entries {
        let age = render::age(e.age_s);
        let age = if e.age_source == Some("process-start") {
            format!("{age}*")
        } else {
            age
        };
        let sources: Vec<String> = e.sources.iter().map(|s| s.to_string()).collect();
        out.push_str(&format!(
            "{:<20} {:>6} {:>8} {:>6} {:>5} {:>7} {:>7}  {}\n",
            render::fit(&name_cell(e), 20),
            e.id.map_or("-".into(), |i| i.to_string()),
            e.pid,
            e.uid.map_or("-".into(), |u| u.to_string()),
            e.vcpus.map_or("-".into(), |n| n.to_string()),
            render::bytes(e.memory_bytes),
            age,
            if sources.is_empty() {
                "-".into()
            } else {
                sources.join(",")
            },
        ));
    }
    if entries.iter().any(|e| e.name_kind == Some("cmdline-hint")) {
        out.push_str("NAME? = qemu -name hint from the command line, unverified (any process can forge it)\n");
    }
    if entries
        .iter()
        .any(|e| e.age_source == Some("process-start"))
    {
        out.push_str(
            "AGE* = age of the VMM process (this kernel does not tell when the VM was created)\n",
        );
    }
    if entries.iter().any(|e| e.details_hidden) {
        out.push_str(
            "VCPUS - = details hidden: no ptrace rights over the VMM (run as its user or root)\n",
        );
    } else if entries.iter().any(|e| e.vcpus.is_none()) {
        out.push_str(
            "VCPUS - = not counted: this kernel cannot tell which vCPUs belong to which of a process' VMs\n",
        );
    }
    out
}

/// Run `kvmtop list`: from `/proc/kvm/.list` (one read) on a registry
/// kernel, unless `all` asks for every process' `/proc/<pid>/kvm` (VMs of
/// child pid namespaces too, and vCPU threads).
pub fn run(cfg: &Config, json: bool, all: bool) -> anyhow::Result<()> {
    let (d, tids) = match (!all)
        .then(|| kvmreg::discover::list_registry(cfg))
        .flatten()
    {
        Some(d) => (d, false),
        None => (kvmreg::discover_with(cfg), true),
    };
    let entries: Vec<Entry> = d
        .guests
        .iter()
        .map(|g| entry(&cfg.proc_root, g, tids))
        .collect();
    if json {
        emit(&format!("{}\n", serde_json::to_string_pretty(&entries)?))?;
    } else if entries.is_empty() {
        // Said to the person, not to a script reading the table.
        eprintln!(
            "{}",
            crate::guests::nothing_to_show(std::path::Path::new("/dev/kvm"))
        );
    } else {
        emit(&table(&entries))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_and_process_ages_are_marked() {
        let mut g = Guest::new(77);
        g.name = Some(GuestName::CmdlineHint("web".into()));
        g.provenance.pid = Some(Source::FdScan);
        let mut e = entry(&ProcRoot::new("/nonexistent-proc"), &g, true);
        assert_eq!(e.name_kind, Some("cmdline-hint"));
        assert_eq!(e.age_s, None);
        e.age_s = Some(65.0);
        e.age_source = Some("process-start");
        let t = table(&[e]);
        assert!(t.contains("web?"), "{t}");
        assert!(t.contains("1m05s*"), "{t}");
        assert!(t.contains("fd-scan"), "{t}");
        assert!(t.contains("unverified"), "{t}");
    }

    #[test]
    fn process_age_reads_start_time() {
        let d = std::env::temp_dir().join(format!("kvmtop-list-{}", std::process::id()));
        std::fs::create_dir_all(d.join("9")).unwrap();
        let hz = kvmreg::cpu::clock_ticks_per_second();
        let mut fields: Vec<String> = (3..=52).map(|_| "0".to_string()).collect();
        fields[22 - 3] = ((100.0 * hz) as u64).to_string();
        std::fs::write(d.join("9/stat"), format!("9 (a b) c) {}", fields.join(" "))).unwrap();
        std::fs::write(d.join("uptime"), "160.50 1.0\n").unwrap();
        let a = kvmreg::cpu::process_age(&ProcRoot::new(&d), 9).unwrap();
        std::fs::remove_dir_all(&d).ok();
        assert!((a - 60.5).abs() < 1e-6, "{a}");
    }
}
