//! Backend for a patched kernel: `/proc/<pid>/kvm/<id>/{name,status,vcpus}`.
//!
//! Walks every process' `/proc/<pid>/kvm` rather than only `/proc/kvm`,
//! because `/proc/kvm` leaves out VMs of processes in child pid namespaces
//! (containers) while `/proc/<pid>/kvm` shows them to host-wide tools.

use super::Found;
use crate::procfs::{status_field, ProcRoot, Read, Skip};
use crate::{Guest, GuestName, Source, Vcpu};

/// True if this proc mount has the registry (`/proc/kvm` exists).
pub fn available(proc: &ProcRoot) -> bool {
    proc.join("kvm").is_dir()
}

/// Facts from one `status` file.
///
/// Each field is `None` when its line is missing or malformed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Status {
    /// `Name:`, the VM's kernel name; `None` also when empty.
    pub name: Option<String>,
    /// `Id:`, the boot-unique VM id.
    pub id: Option<u64>,
    /// `Pid:`, the owner process.
    pub pid: Option<u32>,
    /// `Uid:`, the creator's effective uid.
    pub uid: Option<u32>,
    /// `Vcpus:`, the number of vCPUs created.
    pub vcpus: Option<u32>,
    /// `MemoryKiB:`, guest memory (userspace memslots) in KiB.
    pub memory_kib: Option<u64>,
    /// `Created:`, creation time in `CLOCK_BOOTTIME` nanoseconds.
    pub created: Option<u64>,
}

/// Parse `Key:\tvalue` lines; unknown keys are ignored (more may be added
/// at the end), malformed values leave the fact unknown.
pub fn parse_status(text: &str) -> Status {
    let num = |k: &str| status_field(text, k).and_then(|v| v.parse::<u64>().ok());
    Status {
        name: status_field(text, "Name")
            .filter(|s| !s.is_empty())
            .map(str::to_string),
        id: num("Id"),
        pid: num("Pid").and_then(|v| u32::try_from(v).ok()),
        uid: num("Uid").and_then(|v| u32::try_from(v).ok()),
        vcpus: num("Vcpus").and_then(|v| u32::try_from(v).ok()),
        memory_kib: num("MemoryKiB"),
        created: num("Created"),
    }
}

/// Parse the `vcpus` file: `index vcpu_id tid` per line; tid 0 means not
/// known. Malformed lines are skipped.
pub fn parse_vcpus(text: &str) -> Vec<Vcpu> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace().map(str::parse::<u32>);
            let index = f.next()?.ok()?;
            let vcpu_id = f.next()?.ok()?;
            let tid = f.next()?.ok()?;
            Some(Vcpu {
                index,
                vcpu_id: Some(vcpu_id),
                tid: (tid != 0).then_some(tid),
                tid_source: (tid != 0).then_some(Source::ProcKvm),
                fd: None,
            })
        })
        .collect()
}

/// One line of `/proc/kvm/.list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListEntry {
    /// The boot-unique VM id.
    pub id: u64,
    /// The owner, in the pid namespace of the proc mount.
    pub pid: u32,
    /// The creator's effective uid.
    pub uid: u32,
    /// The number of vCPUs.
    pub vcpus: u32,
    /// Guest memory (userspace memslots) in KiB.
    pub memory_kib: u64,
    /// Creation time in `CLOCK_BOOTTIME` nanoseconds.
    pub created: u64,
    /// The VM's link in `/proc/kvm`: `<name>` or `<name>@<uid>`.
    pub link: String,
}

impl ListEntry {
    /// The VM's name: the link without its `@<uid>` (no name holds `@`).
    pub fn name(&self) -> &str {
        self.link.split('@').next().unwrap_or(&self.link)
    }

    /// The guest this line describes, without its vCPU threads (which only
    /// `/proc/<pid>/kvm/<id>/vcpus` tells): `vcpus` holds `vcpus` entries
    /// with unknown threads.
    pub fn guest(&self) -> Guest {
        let mut g = Guest::new(self.pid);
        g.id = Some(self.id);
        g.name = Some(GuestName::Kernel(self.name().to_string()));
        g.uid = Some(self.uid);
        g.memory_bytes = Some(self.memory_kib.saturating_mul(1024));
        g.created = Some(self.created);
        g.vcpus = (0..self.vcpus)
            .map(|index| Vcpu {
                index,
                vcpu_id: None,
                tid: None,
                tid_source: None,
                fd: None,
            })
            .collect();
        let p = &mut g.provenance;
        for f in [
            &mut p.id,
            &mut p.pid,
            &mut p.name,
            &mut p.uid,
            &mut p.vcpus,
            &mut p.memory,
            &mut p.created,
        ] {
            *f = Some(Source::ProcKvm);
        }
        g
    }
}

/// Parse `/proc/kvm/.list`: `id pid uid vcpus memory_kib created link`,
/// one VM a line. Columns may be added before the last one (the link,
/// which stays last), so the first six are read by position and the link
/// is the last field. A malformed line is skipped and counted.
pub fn parse_list(text: &str) -> (Vec<ListEntry>, usize) {
    let mut bad = 0;
    let entries = text
        .lines()
        .filter(|l| !l.is_empty())
        .filter_map(|l| {
            let e = parse_list_line(l);
            bad += usize::from(e.is_none());
            e
        })
        .collect();
    (entries, bad)
}

fn parse_list_line(line: &str) -> Option<ListEntry> {
    let f: Vec<&str> = line.split(' ').collect();
    if f.len() < 7 {
        return None;
    }
    let link = f[f.len() - 1];
    if link.is_empty() || link.starts_with('.') || link.contains('/') {
        return None;
    }
    Some(ListEntry {
        id: f[0].parse().ok()?,
        pid: f[1].parse().ok()?,
        uid: f[2].parse().ok()?,
        vcpus: f[3].parse().ok()?,
        memory_kib: f[4].parse().ok()?,
        created: f[5].parse().ok()?,
        link: link.to_string(),
    })
}

/// Read `/proc/kvm/.list`: every VM this reader sees in `/proc/kvm`, in one
/// read. `Read::Skip(Gone)` on a registry kernel without the file.
pub fn read_list(proc: &ProcRoot) -> Read<(Vec<ListEntry>, usize)> {
    match proc.read_string("kvm/.list") {
        Read::Ok(t) => Read::Ok(parse_list(&t)),
        Read::Skip(s) => Read::Skip(s),
        Read::Err(e) => Read::Err(e),
    }
}

/// Read one VM directory `/proc/<pid>/kvm/<id>`.
pub fn read_vm(proc: &ProcRoot, pid: u32, id: u64) -> Read<Guest> {
    let dir = format!("{pid}/kvm/{id}");
    let status = match proc.read_string(format!("{dir}/status")) {
        Read::Ok(s) => parse_status(&s),
        Read::Skip(s) => return Read::Skip(s),
        Read::Err(e) => return Read::Err(e),
    };
    let mut g = Guest::new(pid);
    let p = &mut g.provenance;
    g.id = Some(status.id.unwrap_or(id));
    p.id = Some(Source::ProcKvm);
    p.pid = Some(Source::ProcKvm);
    // `name` is the file meant for it; status' Name is the same value.
    let name = proc
        .read_string(format!("{dir}/name"))
        .ok()
        .map(|n| n.trim_end_matches('\n').to_string())
        .filter(|n| !n.is_empty())
        .or(status.name);
    if let Some(n) = name {
        g.name = Some(GuestName::Kernel(n));
        p.name = Some(Source::ProcKvm);
    }
    if let Some(u) = status.uid {
        g.uid = Some(u);
        p.uid = Some(Source::ProcKvm);
    }
    if let Some(m) = status.memory_kib {
        g.memory_bytes = Some(m.saturating_mul(1024));
        p.memory = Some(Source::ProcKvm);
    }
    if let Some(c) = status.created {
        g.created = Some(c);
        p.created = Some(Source::ProcKvm);
    }
    match proc.read_string(format!("{dir}/vcpus")) {
        Read::Ok(v) => {
            g.vcpus = parse_vcpus(&v);
            p.vcpus = Some(Source::ProcKvm);
            if let Some(n) = status.vcpus {
                if n as usize != g.vcpus.len() {
                    // A vCPU was added between the two reads.
                    g.notes.push(format!(
                        "status says {n} vCPUs, vcpus lists {}",
                        g.vcpus.len()
                    ));
                }
            }
        }
        Read::Skip(Skip::Gone) => return Read::Skip(Skip::Gone),
        _ => g.notes.push("vcpus could not be read".into()),
    }
    if let Some(sp) = status.pid {
        if sp != pid && sp != 0 {
            g.notes
                .push(format!("status names owner pid {sp}, found under {pid}"));
        }
    }
    Read::Ok(g)
}

/// Find every VM of every process in this proc mount.
pub fn scan(proc: &ProcRoot) -> Found {
    let mut found = Found::default();
    let pids = match proc.list_numeric("") {
        Read::Ok(p) => p,
        Read::Skip(s) => {
            found
                .notes
                .push(format!("cannot list {}: {s:?}", proc.path().display()));
            return found;
        }
        Read::Err(e) => {
            found
                .notes
                .push(format!("cannot list {}: {e}", proc.path().display()));
            return found;
        }
    };
    for pid in pids {
        let ids = match proc.list_numeric(format!("{pid}/kvm")) {
            Read::Ok(ids) => ids,
            Read::Skip(Skip::Gone) => continue,
            Read::Skip(Skip::Denied) => {
                if let Some(ev) = super::vm_evidence(proc, pid) {
                    found.guests.push(super::hidden_guest(
                        proc,
                        pid,
                        ev,
                        "its /proc/<pid>/kvm is not readable",
                    ));
                }
                continue;
            }
            Read::Err(e) => {
                found.notes.push(format!("pid {pid}: {e}"));
                continue;
            }
        };
        for id in ids {
            match read_vm(proc, pid, u64::from(id)) {
                Read::Ok(g) => found.guests.push(g),
                Read::Skip(Skip::Gone) => {}
                Read::Skip(Skip::Denied) => found.notes.push(format!("pid {pid} VM {id}: denied")),
                Read::Err(e) => found.notes.push(format!("pid {pid} VM {id}: {e}")),
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    fn fake_vm(d: &TempDir, pid: u32, id: u64, name: &str, vcpus: &str) {
        let dir = format!("{pid}/kvm/{id}");
        d.write(&format!("{dir}/name"), format!("{name}\n"));
        d.write(
            &format!("{dir}/status"),
            format!(
                "Name:\t{name}\nId:\t{id}\nPid:\t{pid}\nUid:\t1000\nVcpus:\t{}\nMemoryKiB:\t4096\nCreated:\t5159707888\nFuture:\tx\n",
                vcpus.lines().count()
            ),
        );
        d.write(&format!("{dir}/vcpus"), vcpus);
        d.symlink(&format!("kvm/{name}"), &format!("../{pid}/kvm/{id}"));
    }

    #[test]
    fn finds_vms_in_a_fake_tree() {
        let d = TempDir::new("prockvm");
        fake_vm(&d, 100, 3, "web", "0 0 101\n1 1 102\n");
        fake_vm(&d, 100, 4, "db", "0 0 0\n");
        fake_vm(&d, 200, 7, "batch", "0 0 201\nbogus line\n");
        d.write("300/status", "Name:\tbash\n");
        let proc = ProcRoot::new(d.path());
        assert!(available(&proc));
        let mut f = scan(&proc);
        f.guests.sort_by_key(|g| g.id);
        let ids: Vec<_> = f.guests.iter().map(|g| (g.id, g.pid)).collect();
        assert_eq!(ids, vec![(Some(3), 100), (Some(4), 100), (Some(7), 200)]);
        let web = &f.guests[0];
        assert_eq!(web.name, Some(GuestName::Kernel("web".into())));
        assert_eq!(web.memory_bytes, Some(4096 * 1024));
        assert_eq!(web.uid, Some(1000));
        assert_eq!(web.created, Some(5159707888));
        assert_eq!(web.provenance.name, Some(Source::ProcKvm));
        let tids: Vec<_> = web.vcpus.iter().map(|v| v.tid).collect();
        assert_eq!(tids, vec![Some(101), Some(102)]);
        assert_eq!(f.guests[1].vcpus[0].tid, None);
        assert_eq!(f.guests[2].vcpus.len(), 1);
    }

    #[test]
    fn list_lines_parse_and_garbage_is_counted() {
        let (e, bad) = parse_list(
            "5 1234 0 4 4194304 5159707888 web\n\
             7 1301 64055 2 1048576 5170000000 9 web@64055\n\
             x 1 2 3 4 5 bad\n\
             8 1 2 3 4 5\n\
             9 1 2 3 4 5 .hidden\n",
        );
        assert_eq!(bad, 3);
        assert_eq!(e.len(), 2);
        assert_eq!(e[0].name(), "web");
        assert_eq!(e[1].link, "web@64055");
        assert_eq!(e[1].name(), "web");
        assert_eq!(e[1].created, 5170000000);
        let g = e[1].guest();
        assert_eq!((g.id, g.pid, g.uid), (Some(7), 1301, Some(64055)));
        assert_eq!(g.qualified_name(0).as_deref(), Some("web@64055"));
        assert_eq!(g.qualified_name(64055).as_deref(), Some("web"));
        assert_eq!(g.vcpus.len(), 2);
        assert_eq!(g.memory_bytes, Some(1048576 * 1024));
    }

    #[test]
    fn absent_registry_is_not_available() {
        let d = TempDir::new("prockvm-none");
        d.write("1/status", "Name:\tinit\n");
        assert!(!available(&ProcRoot::new(d.path())));
        assert!(scan(&ProcRoot::new(d.path())).guests.is_empty());
    }

    #[test]
    fn status_garbage_leaves_facts_unknown() {
        let s = parse_status("Name:\nId:\tx\nVcpus:\t-1\nMemoryKiB:\t99999999999999999999999\n");
        assert_eq!(s, Status::default());
    }
}
