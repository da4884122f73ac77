//! Per-guest and per-vCPU-thread CPU split: host user, host system, guest.
//!
//! The kernel accounts the time a vCPU thread spends in guest mode both to
//! its `utime` and to its `guest_time` (field 43 of
//! `/proc/<pid>/task/<tid>/stat`), so host user time is `utime - guest_time`.
//! Rates come from two snapshots; a thread that appeared or vanished between
//! them is left out of the difference rather than counted from zero.

use crate::procfs::{ProcRoot, Read};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

/// A malformed `stat` line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed /proc stat line: {0}")]
pub struct StatError(pub &'static str);

/// CPU times of one thread, in clock ticks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ThreadTimes {
    pub tid: u32,
    pub comm: String,
    pub utime: u64,
    pub stime: u64,
    pub guest_time: u64,
}

impl ThreadTimes {
    /// User time spent on the host, i.e. not in guest mode.
    pub fn host_user(&self) -> u64 {
        self.utime.saturating_sub(self.guest_time)
    }
}

/// Parse one `/proc/<pid>/task/<tid>/stat` line.
///
/// The command name is in parentheses and may itself hold spaces and
/// parentheses, so fields are counted from the last `)`.
pub fn parse_stat(line: &str) -> Result<ThreadTimes, StatError> {
    let open = line.find('(').ok_or(StatError("no '('"))?;
    let close = line.rfind(')').ok_or(StatError("no ')'"))?;
    if close < open {
        return Err(StatError("')' before '('"));
    }
    let tid = line[..open]
        .trim()
        .parse()
        .map_err(|_| StatError("bad pid"))?;
    let comm = line[open + 1..close].to_string();
    let rest = &line[close + 1..];
    let (utime, stime, guest_time) = match times_single_spaced(rest.as_bytes()) {
        Some(t) => t,
        None => times_any_spacing(rest)?,
    };
    Ok(ThreadTimes {
        tid,
        comm,
        utime,
        stime,
        guest_time,
    })
}

/// utime, stime and guest_time (fields 14, 15 and 43) from the fields after
/// the comm as the kernel writes them, one space before each, walked as
/// bytes: a refresh parses one such line per guest. `None` for anything
/// else (then [`times_any_spacing`] decides).
fn times_single_spaced(rest: &[u8]) -> Option<(u64, u64, u64)> {
    fn num(b: &[u8]) -> Option<u64> {
        if b.is_empty() {
            return None;
        }
        b.iter().try_fold(0u64, |n, &c| {
            c.is_ascii_digit()
                .then(|| n.checked_mul(10)?.checked_add(u64::from(c - b'0')))?
        })
    }
    let rest = rest.strip_suffix(b"\n").unwrap_or(rest);
    // Field 3 (state) starts after the first space.
    let mut fields = rest.strip_prefix(b" ")?.split(|&c| c == b' ');
    let utime = num(fields.nth(14 - 3)?)?;
    let stime = num(fields.next()?)?;
    // guest_time exists since Linux 2.6.24; be lenient with older lines.
    let guest_time = match fields.nth(43 - 16) {
        Some(f) => num(f)?,
        None => 0,
    };
    Some((utime, stime, guest_time))
}

/// [`times_single_spaced`] for fields separated by any white space.
fn times_any_spacing(rest: &str) -> Result<(u64, u64, u64), StatError> {
    let mut rest = rest.split_ascii_whitespace();
    let num = |f: Option<&str>| -> Result<u64, StatError> {
        f.ok_or(StatError("too few fields"))?
            .parse()
            .map_err(|_| StatError("non-numeric field"))
    };
    // Field 14 is the 12th after field 3; field 43 the 28th after 15.
    let utime = num(rest.nth(14 - 3))?;
    let stime = num(rest.next())?;
    Ok((utime, stime, num(rest.nth(43 - 16)).unwrap_or(0)))
}

/// The times of every thread of a process at one instant.
#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    pub pid: u32,
    pub at: Instant,
    pub threads: BTreeMap<u32, ThreadTimes>,
}

/// Read the times of all threads of `pid`. Threads that exit while we read
/// are skipped; a vanished or unreadable process gives `Read::Skip`.
pub fn snapshot(proc: &ProcRoot, pid: u32) -> Read<CpuSnapshot> {
    let tids = match proc.list_numeric(format!("{pid}/task")) {
        Read::Ok(t) => t,
        Read::Skip(s) => return Read::Skip(s),
        Read::Err(e) => return Read::Err(e),
    };
    let mut threads = BTreeMap::new();
    for tid in tids {
        if let Read::Ok(text) = proc.read_string(format!("{pid}/task/{tid}/stat")) {
            if let Ok(t) = parse_stat(&text) {
                threads.insert(tid, t);
            }
        }
    }
    Read::Ok(CpuSnapshot {
        pid,
        at: Instant::now(),
        threads,
    })
}

/// CPU use as a number of CPUs (1.0 = one CPU busy the whole interval).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CpuRates {
    pub host_user: f64,
    pub host_system: f64,
    pub guest: f64,
}

impl CpuRates {
    pub fn total(&self) -> f64 {
        self.host_user + self.host_system + self.guest
    }
}

/// The clock tick of `/proc` times (`sysconf(_SC_CLK_TCK)`).
pub fn clock_ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory effects; a failure returns -1.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

/// Rates of the threads in `tids` (all threads when `None`) between two
/// snapshots of one process, over `seconds` of wall time with `hz` ticks
/// per second.
pub fn rates_between(
    a: &CpuSnapshot,
    b: &CpuSnapshot,
    tids: Option<&[u32]>,
    seconds: f64,
    hz: f64,
) -> CpuRates {
    let mut d_user = 0u64;
    let mut d_sys = 0u64;
    let mut d_guest = 0u64;
    for (tid, tb) in &b.threads {
        if tids.is_some_and(|t| !t.contains(tid)) {
            continue;
        }
        let Some(ta) = a.threads.get(tid) else {
            continue;
        };
        d_user += tb.host_user().saturating_sub(ta.host_user());
        d_sys += tb.stime.saturating_sub(ta.stime);
        d_guest += tb.guest_time.saturating_sub(ta.guest_time);
    }
    if seconds <= 0.0 || hz <= 0.0 {
        return CpuRates::default();
    }
    let f = |t: u64| t as f64 / hz / seconds;
    CpuRates {
        host_user: f(d_user),
        host_system: f(d_sys),
        guest: f(d_guest),
    }
}

/// The CPU split of one guest: the whole owner process, and each vCPU
/// thread. When one process runs several VMs, `process` is shared by them.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GuestCpu {
    pub process: CpuRates,
    /// `(vcpu index, tid, rates)` for each vCPU whose thread is known.
    pub vcpus: Vec<(u32, u32, CpuRates)>,
}

/// Split between two snapshots of the guest's owner process.
pub fn guest_cpu(guest: &crate::Guest, a: &CpuSnapshot, b: &CpuSnapshot) -> GuestCpu {
    let secs = b.at.saturating_duration_since(a.at).as_secs_f64();
    let hz = clock_ticks_per_second();
    let process = rates_between(a, b, None, secs, hz);
    let vcpus = guest
        .vcpus
        .iter()
        .filter_map(|v| {
            let tid = v.tid?;
            Some((v.index, tid, rates_between(a, b, Some(&[tid]), secs, hz)))
        })
        .collect();
    GuestCpu { process, vcpus }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(tid: u32, comm: &str, utime: u64, stime: u64, guest: u64) -> String {
        // Fields 3..=52 of a 6.x stat line; 14/15 utime/stime, 43 guest_time.
        let mut f: Vec<String> = (3..=52).map(|_| "0".to_string()).collect();
        f[0] = "R".into();
        f[14 - 3] = utime.to_string();
        f[15 - 3] = stime.to_string();
        f[43 - 3] = guest.to_string();
        format!("{tid} ({comm}) {}\n", f.join(" "))
    }

    #[test]
    fn parses_guest_time_and_odd_comm() {
        let t = parse_stat(&line(7, "CPU 0/KVM) (x", 500, 20, 450)).unwrap();
        assert_eq!(t.tid, 7);
        assert_eq!(t.comm, "CPU 0/KVM) (x");
        assert_eq!((t.utime, t.stime, t.guest_time), (500, 20, 450));
        assert_eq!(t.host_user(), 50);
        // The kernel's single spaces take the memchr path; other spacing,
        // and a line of an old kernel without guest_time, the general one.
        let l = line(7, "x", 500, 20, 450);
        assert!(times_single_spaced(&l.as_bytes()[l.find(')').unwrap() + 1..]).is_some());
        let t = parse_stat(&l.replace(' ', "  ")).unwrap();
        assert_eq!((t.utime, t.stime, t.guest_time), (500, 20, 450));
        let old: String = l.split(' ').take(42).collect::<Vec<_>>().join(" ");
        let t = parse_stat(&old).unwrap();
        assert_eq!((t.utime, t.stime, t.guest_time), (500, 20, 0));
        assert_eq!(
            parse_stat(&l.replace(" 500 ", " 5x0 ")).map(|_| ()),
            Err(StatError("non-numeric field"))
        );
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_stat("").is_err());
        assert!(parse_stat("12 (x").is_err());
        assert!(parse_stat(") 12 (x").is_err());
        assert!(parse_stat("x (y) R 1 2").is_err());
        assert!(parse_stat("1 (y) R 1 2").is_err());
    }

    #[test]
    fn rates_from_two_snapshots() {
        let mk = |u, s, g| {
            let mut threads = BTreeMap::new();
            threads.insert(5, parse_stat(&line(5, "CPU 0/KVM", u, s, g)).unwrap());
            CpuSnapshot {
                pid: 1,
                at: Instant::now(),
                threads,
            }
        };
        let a = mk(100, 10, 80);
        let b = mk(300, 30, 230);
        // 2 s at 100 Hz: user (300-230)-(100-80)=50 ticks, sys 20, guest 150.
        let r = rates_between(&a, &b, None, 2.0, 100.0);
        assert!((r.host_user - 0.25).abs() < 1e-9);
        assert!((r.host_system - 0.1).abs() < 1e-9);
        assert!((r.guest - 0.75).abs() < 1e-9);
        let none = rates_between(&a, &b, Some(&[6]), 2.0, 100.0);
        assert_eq!(none, CpuRates::default());
    }

    #[test]
    fn snapshot_of_own_process() {
        let p = ProcRoot::default();
        let me = std::process::id();
        let s = snapshot(&p, me).ok().expect("own process is readable");
        assert!(s.threads.contains_key(&me));
    }
}
