//! Reader threads: walk `/proc/kvm` and `/proc/*/kvm/*` while VMs come and
//! go, read every file fully, `pread` the stats at random offsets, and
//! check what they read. Races show as `ENOENT` (gone before the lookup)
//! or `ESRCH` (gone after the open); every other error is a failure.

use crate::{Failures, Rng};
use std::collections::BTreeMap;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Default)]
pub struct ReaderStats {
    pub walks: u64,
    pub readdirs: u64,
    pub readlinks: u64,
    pub files: u64,
    pub preads: u64,
    pub bytes: u64,
    pub vms_seen: u64,
    pub errnos: BTreeMap<i32, u64>,
    pub failures: Failures,
}

impl ReaderStats {
    pub fn merge(&mut self, o: ReaderStats) {
        self.walks += o.walks;
        self.readdirs += o.readdirs;
        self.readlinks += o.readlinks;
        self.files += o.files;
        self.preads += o.preads;
        self.bytes += o.bytes;
        self.vms_seen += o.vms_seen;
        for (k, v) in o.errnos {
            *self.errnos.entry(k).or_default() += v;
        }
        self.failures.merge(o.failures);
    }

    /// Counts an error by errno; fails on any but the expected races.
    fn error(&mut self, what: &str, e: &io::Error) {
        let code = e.raw_os_error().unwrap_or(0);
        *self.errnos.entry(code).or_default() += 1;
        if code != libc::ENOENT && code != libc::ESRCH {
            self.failures.add(format!("{what}: {e}"));
        }
    }

    fn read_text(&mut self, path: &str) -> Option<String> {
        match std::fs::read(path) {
            Ok(b) => {
                self.files += 1;
                self.bytes += b.len() as u64;
                match String::from_utf8(b) {
                    Ok(s) => Some(s),
                    Err(_) => {
                        self.failures.add(format!("{path}: not UTF-8"));
                        None
                    }
                }
            }
            Err(e) => {
                self.error(path, &e);
                None
            }
        }
    }
}

/// Reads until `stop`; returns what it did.
pub fn run(seed: u64, stop: &AtomicBool) -> ReaderStats {
    let mut st = ReaderStats::default();
    let mut rng = Rng::new(seed);
    while !stop.load(Ordering::Relaxed) {
        walk_proc_kvm(&mut st, &mut rng);
        walk_pids(&mut st, &mut rng, stop);
        st.walks += 1;
        // A short pause now and then, so that readers race the workers
        // without starving them on a small (emulated) machine.
        std::thread::sleep(rng.millis(0, 2));
    }
    st
}

/// `/proc/kvm`: readdir, readlink, then read the VM's files, half of the
/// time through the link (the name may have moved on: no identity check),
/// half of the time through the target the link named.
fn walk_proc_kvm(st: &mut ReaderStats, rng: &mut Rng) {
    let rd = match std::fs::read_dir("/proc/kvm") {
        Ok(rd) => rd,
        Err(e) => return st.error("readdir /proc/kvm", &e),
    };
    st.readdirs += 1;
    for ent in rd {
        let ent = match ent {
            Ok(ent) => ent,
            Err(e) => return st.error("readdir /proc/kvm", &e),
        };
        let file_name = ent.file_name();
        if file_name == ".list" {
            if let Some(t) = st.read_text("/proc/kvm/.list") {
                check_list(st, &t);
            }
            continue;
        }
        let link = Path::new("/proc/kvm").join(&file_name);
        let shown = link.display().to_string();
        let target = match std::fs::read_link(&link) {
            Ok(t) => t,
            Err(e) => {
                st.error(&format!("readlink {shown}"), &e);
                continue;
            }
        };
        st.readlinks += 1;
        let Some((pid, id)) = parse_target(&target.to_string_lossy()) else {
            st.failures
                .add(format!("{shown} -> {target:?}: not ../<pid>/kvm/<id>"));
            continue;
        };
        if rng.chance(50) {
            read_vm(st, rng, &format!("/proc/{pid}/kvm/{id}"), Some((pid, id)));
        } else {
            read_vm(st, rng, &shown, None);
        }
    }
}

/// `/proc/kvm/.list`: `id pid uid vcpus memory_kib created link` lines,
/// the link a name, or `name@uid` for another user's VM.
fn check_list(st: &mut ReaderStats, text: &str) {
    for line in text.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        let link_ok = f.get(6).is_some_and(|l| match l.split_once('@') {
            Some((name, uid)) => valid_name(name) && uid.parse::<u32>().is_ok(),
            None => valid_name(l),
        });
        if f.len() != 7 || f[..6].iter().any(|x| x.parse::<u64>().is_err()) || !link_ok {
            st.failures
                .add(format!("/proc/kvm/.list: bad line {line:?}"));
            return;
        }
    }
}

/// `../<pid>/kvm/<id>`
fn parse_target(t: &str) -> Option<(u32, u64)> {
    let rest = t.strip_prefix("../")?;
    let (pid, rest) = rest.split_once('/')?;
    let id = rest.strip_prefix("kvm/")?;
    Some((pid.parse().ok()?, id.parse().ok()?))
}

/// `/proc/<pid>/kvm/<id>` for every process.
fn walk_pids(st: &mut ReaderStats, rng: &mut Rng, stop: &AtomicBool) {
    let rd = match std::fs::read_dir("/proc") {
        Ok(rd) => rd,
        Err(e) => return st.error("readdir /proc", &e),
    };
    st.readdirs += 1;
    for ent in rd {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        let ent = match ent {
            Ok(ent) => ent,
            Err(e) => return st.error("readdir /proc", &e),
        };
        let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let dir = format!("/proc/{pid}/kvm");
        let rd = match std::fs::read_dir(&dir) {
            Ok(rd) => rd,
            Err(e) => {
                st.error(&format!("readdir {dir}"), &e);
                continue;
            }
        };
        st.readdirs += 1;
        for ent in rd {
            let ent = match ent {
                Ok(ent) => ent,
                Err(e) => {
                    st.error(&format!("readdir {dir}"), &e);
                    break;
                }
            };
            let name = ent.file_name();
            let Some(id) = name.to_str().and_then(|s| s.parse::<u64>().ok()) else {
                st.failures.add(format!("{dir}/{name:?}: not a VM id"));
                continue;
            };
            read_vm(st, rng, &format!("{dir}/{id}"), Some((pid, id)));
        }
    }
}

/// Reads and checks a VM directory's files; `ids` is the (pid, id) the
/// path names, when it names them (then `status` must agree).
fn read_vm(st: &mut ReaderStats, rng: &mut Rng, dir: &str, ids: Option<(u32, u64)>) {
    st.vms_seen += 1;
    let first = rng.below(5);
    for i in 0..5 {
        match (first + i) % 5 {
            0 => {
                if let Some(t) = st.read_text(&format!("{dir}/status")) {
                    check_status(st, dir, &t, ids);
                }
            }
            1 => {
                if let Some(t) = st.read_text(&format!("{dir}/vcpus")) {
                    check_vcpus(st, dir, &t);
                }
            }
            2 => {
                if let Some(t) = st.read_text(&format!("{dir}/name")) {
                    if !t.strip_suffix('\n').is_some_and(valid_name) {
                        st.failures.add(format!("{dir}/name: {t:?}"));
                    }
                }
            }
            3 => read_stats(st, rng, &format!("{dir}/stats"), false),
            _ => read_stats(st, rng, &format!("{dir}/vcpu_stats"), true),
        }
    }
}

fn check_status(st: &mut ReaderStats, dir: &str, text: &str, ids: Option<(u32, u64)>) {
    let fields: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k, v.trim()))
        .collect();
    for key in ["Name", "Id", "Pid", "Uid", "Vcpus", "MemoryKiB", "Created"] {
        if !fields.contains_key(key) {
            st.failures
                .add(format!("{dir}/status: no {key}: in {text:?}"));
            return;
        }
    }
    if let Some((pid, id)) = ids {
        let got_id = fields.get("Id").and_then(|v| v.parse::<u64>().ok());
        let got_pid = fields.get("Pid").and_then(|v| v.parse::<u32>().ok());
        if got_id != Some(id) || !(got_pid == Some(pid) || got_pid == Some(0)) {
            st.failures.add(format!(
                "{dir}/status: Id {got_id:?} Pid {got_pid:?}, expected {id} and {pid} (or 0)"
            ));
        }
    }
}

fn check_vcpus(st: &mut ReaderStats, dir: &str, text: &str) {
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() != 3 || f.iter().any(|x| x.parse::<u64>().is_err()) {
            st.failures.add(format!("{dir}/vcpus: bad line {line:?}"));
            return;
        }
    }
}

/// The name rules: 1-63 bytes of `[A-Za-z0-9._+:-]`, not starting with
/// `.` or `-`.
pub fn valid_name(n: &str) -> bool {
    (1..=63).contains(&n.len())
        && !n.starts_with(['.', '-'])
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._+:-".contains(&b))
}

/// Reads `stats` or `vcpu_stats` fully, checks the header, then `pread`s
/// the static part (header, id, descriptors) at random offsets and
/// compares, and once anywhere, past the end included. `grows`: the stream
/// may have grown since the full read (`vcpu_stats` gains a block per new
/// vCPU), so a read past its end may find data.
fn read_stats(st: &mut ReaderStats, rng: &mut Rng, path: &str, grows: bool) {
    let mut f = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) => return st.error(path, &e),
    };
    let mut all = Vec::new();
    if let Err(e) = f.read_to_end(&mut all) {
        return st.error(path, &e);
    }
    st.files += 1;
    st.bytes += all.len() as u64;
    let u32_at = |o: usize| {
        all.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    // struct kvm_stats_header: flags, name_size, num_desc, id_offset,
    // desc_offset, data_offset.
    let (Some(name_size), Some(id_off), Some(desc_off), Some(data_off)) =
        (u32_at(4), u32_at(12), u32_at(16), u32_at(20))
    else {
        return st
            .failures
            .add(format!("{path}: {} bytes, no header", all.len()));
    };
    if id_off + name_size > all.len() || desc_off > data_off || data_off > all.len() {
        return st.failures.add(format!(
            "{path}: header out of bounds (id {id_off}+{name_size}, desc {desc_off}, data {data_off}, {} bytes)",
            all.len()
        ));
    }
    if !all[id_off..].starts_with(b"kvm-") {
        st.failures
            .add(format!("{path}: id does not start with kvm-"));
    }
    for round in 0..4 {
        let anywhere = round == 3;
        let limit = if anywhere { all.len() + 64 } else { data_off };
        let off = rng.below(limit as u64 + 1) as usize;
        let mut buf = vec![0u8; 1 + rng.below(256) as usize];
        let n = match f.read_at(&mut buf, off as u64) {
            Ok(n) => n,
            Err(e) => return st.error(&format!("pread {path} at {off}"), &e),
        };
        st.preads += 1;
        let cmp_end = (off + n).min(data_off);
        if off < cmp_end && buf[..cmp_end - off] != all[off..cmp_end] {
            st.failures
                .add(format!("{path}: pread at {off} differs from the full read"));
        }
        if off >= all.len() && n != 0 && !grows {
            st.failures
                .add(format!("{path}: pread past the end gave {n} bytes"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_targets() {
        assert_eq!(parse_target("../123/kvm/7"), Some((123, 7)));
        assert_eq!(parse_target("../123/kvm/"), None);
        assert_eq!(parse_target("/proc/123/kvm/7"), None);
    }

    #[test]
    fn list_lines() {
        let mut st = ReaderStats::default();
        check_list(
            &mut st,
            "3 120 0 2 1024 5000 web\n4 121 1000 1 0 6000 db@1000\n",
        );
        assert_eq!(st.failures.count, 0);
        for bad in [
            "3 120 0 2 1024 5000",
            "3 120 0 2 1024 x web",
            "3 1 0 2 1 5 a@b",
            "3 1 0 2 1 5 .x",
        ] {
            let mut st = ReaderStats::default();
            check_list(&mut st, bad);
            assert_eq!(st.failures.count, 1, "{bad}");
        }
    }

    #[test]
    fn names() {
        assert!(valid_name("churn+3+4.0p"));
        // '@' qualifies other users' names in /proc/kvm; no name has one.
        assert!(!valid_name("churn+3@4.0p"));
        assert!(valid_name("churn.3_4:0i"));
        assert!(!valid_name("-x"));
        assert!(!valid_name(""));
        assert!(!valid_name("a b"));
        assert!(!valid_name(&"a".repeat(64)));
    }
}
