//! Per-guest and per-vCPU-thread CPU split: host user, host system, guest.
//!
//! The kernel accounts the time a vCPU thread spends in guest mode both to
//! its `utime` and to its `guest_time` (field 43 of
//! `/proc/<pid>/task/<tid>/stat`), so host user time is `utime - guest_time`.
//! Rates come from two snapshots; a thread that appeared or vanished between
//! them is left out of the difference rather than counted from zero.

use crate::procfs::{ProcRoot, Read};
use std::collections::BTreeMap;
use std::time::Instant;

/// A malformed `stat` line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("malformed /proc stat line: {0}")]
pub struct StatError(pub &'static str);

/// CPU times of one thread, in clock ticks, and what else its `stat` line
/// says that a refresh shows.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ThreadTimes {
    /// The thread id (field 1).
    pub tid: u32,
    /// The thread name (field 2), without its parentheses.
    pub comm: String,
    /// The state letter (field 3): `R` running, `S` sleeping, `D` in an
    /// uninterruptible wait, `T` stopped, `t` stopped by a tracer, `Z`
    /// zombie, ...
    pub state: char,
    /// User time (field 14), including the time in guest mode.
    pub utime: u64,
    /// System time (field 15).
    pub stime: u64,
    /// Time spent running guest code (field 43); 0 on a line too short to
    /// have it.
    pub guest_time: u64,
    /// When the thread started, in clock ticks after boot (field 22).
    pub start_ticks: u64,
    /// Resident set size in pages (field 24): the whole process'.
    pub rss_pages: u64,
}

impl ThreadTimes {
    /// User time spent on the host, i.e. not in guest mode.
    pub fn host_user(&self) -> u64 {
        self.utime.saturating_sub(self.guest_time)
    }
}

/// The size of a page, which `stat`'s RSS counts.
pub fn page_size() -> u64 {
    static SIZE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SIZE.get_or_init(|| {
        // SAFETY: sysconf only reads a configuration value.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
    })
}

/// Parse one `/proc/<pid>/task/<tid>/stat` line.
///
/// The command name is in parentheses and may itself hold spaces and
/// parentheses, so fields are counted from the last `)`.
///
/// Hand-written, not `procfs::process::Stat`: a refresh parses one line
/// per vCPU thread of every guest, and `procfs` parses all 52 fields, at
/// 7.1 times the cost (module [`crate::procfs`] has the figures).
pub fn parse_stat(line: &str) -> Result<ThreadTimes, StatError> {
    let open = line.find('(').ok_or(StatError("no '('"))?;
    // The last ')' ends the comm. The kernel's comm is at most 64 bytes and
    // nothing after it holds a ')', so the search starts 66 bytes on rather
    // than at the end of the line (a refresh parses one line per guest).
    let window = line.get(..open.saturating_add(66)).unwrap_or(line);
    let close = window
        .rfind(')')
        .or_else(|| line.rfind(')'))
        .ok_or(StatError("no ')'"))?;
    if close < open {
        return Err(StatError("')' before '('"));
    }
    let tid = line[..open]
        .trim()
        .parse()
        .map_err(|_| StatError("bad pid"))?;
    let comm = line[open + 1..close].to_string();
    let rest = &line[close + 1..];
    let f = match fields_single_spaced(rest.as_bytes()) {
        Some(f) => f,
        None => fields_any_spacing(rest)?,
    };
    Ok(ThreadTimes {
        tid,
        comm,
        state: f.state,
        utime: f.utime,
        stime: f.stime,
        guest_time: f.guest_time,
        start_ticks: f.start_ticks,
        rss_pages: f.rss_pages,
    })
}

/// The fields of a `stat` line after the comm that a refresh uses.
#[derive(Debug, PartialEq, Eq)]
struct Fields {
    state: char,
    utime: u64,
    stime: u64,
    start_ticks: u64,
    rss_pages: u64,
    guest_time: u64,
}

/// State, utime, stime, start time, rss and guest_time (fields 3, 14, 15,
/// 22, 24 and 43)
/// from the fields after the comm as the kernel writes them, one space
/// before each: the spaces are found eight bytes at a time, since a refresh
/// parses one such line per guest. `None` for anything else (then
/// [`fields_any_spacing`] decides).
fn fields_single_spaced(rest: &[u8]) -> Option<Fields> {
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
    if rest.first() != Some(&b' ') {
        return None;
    }
    // Space k (from 0) starts field k + 3; `at` is the last space found.
    let mut at = 0;
    let mut k = 0;
    let mut field = |n: usize| -> Option<&[u8]> {
        let start = nth_space(rest, at + 1, n - 3 - k - 1)?;
        let end = nth_space(rest, start + 1, 0).unwrap_or(rest.len());
        (at, k) = (start, n - 3);
        rest.get(start + 1..end)
    };
    let state = match rest.get(1..nth_space(rest, 1, 0)?)? {
        [c] if c.is_ascii_alphabetic() => char::from(*c),
        _ => return None,
    };
    let utime = num(field(14)?)?;
    let stime = num(field(15)?)?;
    let start_ticks = num(field(22)?)?;
    let rss_pages = num(field(24)?)?;
    // guest_time exists since Linux 2.6.24; be lenient with older lines.
    let guest_time = match field(43) {
        Some(f) => num(f)?,
        None => 0,
    };
    Some(Fields {
        state,
        utime,
        stime,
        start_ticks,
        rss_pages,
        guest_time,
    })
}

/// The offset of the `n`-th (from 0) space at or after `from`: eight bytes
/// at a time, each word's spaces flagged exactly (a byte equal to ' '
/// becomes zero, and a zero byte sets the flag with no carry between
/// bytes) and counted.
fn nth_space(b: &[u8], from: usize, mut n: usize) -> Option<usize> {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    const SPACES: u64 = 0x2020_2020_2020_2020;
    let mut i = from;
    while let Some(w) = b.get(i..i + 8) {
        let x = u64::from_le_bytes(w.try_into().ok()?) ^ SPACES;
        let mut m = !(((x & LOW7) + LOW7) | x | LOW7);
        let c = m.count_ones() as usize;
        if c > n {
            for _ in 0..n {
                m &= m - 1;
            }
            return Some(i + (m.trailing_zeros() / 8) as usize);
        }
        n -= c;
        i += 8;
    }
    b.get(i..)?
        .iter()
        .enumerate()
        .filter(|(_, &c)| c == b' ')
        .nth(n)
        .map(|(j, _)| i + j)
}

/// [`fields_single_spaced`] for fields separated by any white space.
fn fields_any_spacing(rest: &str) -> Result<Fields, StatError> {
    let mut rest = rest.split_ascii_whitespace();
    let num = |f: Option<&str>| -> Result<u64, StatError> {
        f.ok_or(StatError("too few fields"))?
            .parse()
            .map_err(|_| StatError("non-numeric field"))
    };
    let state = rest
        .next()
        .and_then(|s| s.chars().next())
        .ok_or(StatError("too few fields"))?;
    // Field 14 is the 11th after field 3.
    let utime = num(rest.nth(14 - 4))?;
    let stime = num(rest.next())?;
    let start_ticks = num(rest.nth(22 - 16))?;
    let rss_pages = num(rest.nth(24 - 23))?;
    Ok(Fields {
        state,
        utime,
        stime,
        start_ticks,
        rss_pages,
        guest_time: num(rest.nth(43 - 25)).unwrap_or(0),
    })
}

/// The times of every thread of a process at one instant.
#[derive(Debug, Clone)]
pub struct CpuSnapshot {
    /// The process.
    pub pid: u32,
    /// When the reading ended (taken after the last thread's `stat`).
    pub at: Instant,
    /// The times of each thread that could be read, by tid.
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
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct CpuRates {
    /// User time on the host: `utime` less `guest_time`.
    pub host_user: f64,
    /// System time on the host (`stime`): kernel work for the threads,
    /// KVM's handling of guest exits included.
    pub host_system: f64,
    /// Time running guest code (`guest_time`).
    pub guest: f64,
}

impl CpuRates {
    /// All three together: the CPUs used in any mode.
    pub fn total(&self) -> f64 {
        self.host_user + self.host_system + self.guest
    }
}

/// A thread's `schedstat` (`/proc/<pid>/task/<tid>/schedstat`, kernels
/// with `CONFIG_SCHED_INFO`): nanoseconds on a CPU, and nanoseconds
/// runnable but waiting for one (the run delay: for a vCPU thread, the
/// time its guest was ready to run and the host gave it no CPU, which a
/// guest sees as steal).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedStat {
    /// Nanoseconds spent on a CPU.
    pub run_ns: u64,
    /// Nanoseconds runnable but waiting for a CPU (run delay).
    pub wait_ns: u64,
}

/// Parse a `schedstat` line: `run_ns wait_ns timeslices`.
pub fn parse_schedstat(text: &str) -> Option<SchedStat> {
    let mut f = text.split_ascii_whitespace().map(|v| v.parse::<u64>());
    let run_ns = f.next()?.ok()?;
    let wait_ns = f.next()?.ok()?;
    Some(SchedStat { run_ns, wait_ns })
}

/// Seconds since process `pid` started: its boot-relative start time (in
/// `stat`) against `uptime`.
pub fn process_age(proc: &ProcRoot, pid: u32) -> Option<f64> {
    let stat = proc.read_string(format!("{pid}/stat")).ok()?;
    let start = parse_stat(&stat).ok()?.start_ticks;
    let uptime: f64 = proc
        .read_string("uptime")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((uptime - start as f64 / clock_ticks_per_second()).max(0.0))
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
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct GuestCpu {
    /// The rates of all threads of the owner process (vCPU threads, I/O
    /// threads, the main loop).
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
        f[22 - 3] = "123456".into();
        f[24 - 3] = "3000".into();
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
        assert_eq!((t.state, t.start_ticks, t.rss_pages), ('R', 123456, 3000));
        // The kernel's single spaces take the byte walk; other spacing, and
        // a line of an old kernel without guest_time, the general one.
        let l = line(7, "x", 500, 20, 450);
        let fast = fields_single_spaced(&l.as_bytes()[l.find(')').unwrap() + 1..]);
        assert!(fast.is_some());
        assert_eq!(
            fast,
            fields_any_spacing(&l[l.find(')').unwrap() + 1..]).ok()
        );
        let t = parse_stat(&l.replace(' ', "  ")).unwrap();
        assert_eq!(
            (t.state, t.utime, t.stime, t.guest_time),
            ('R', 500, 20, 450)
        );
        assert_eq!((t.start_ticks, t.rss_pages), (123456, 3000));
        let old: String = l.split(' ').take(42).collect::<Vec<_>>().join(" ");
        let t = parse_stat(&old).unwrap();
        assert_eq!((t.utime, t.stime, t.guest_time), (500, 20, 0));
        assert_eq!(
            parse_stat(&l.replace(" 500 ", " 5x0 ")).map(|_| ()),
            Err(StatError("non-numeric field"))
        );
    }

    #[test]
    fn spaces_are_found_a_word_at_a_time_as_one_at_a_time() {
        let line = b" S 1 22 333 4444 55555 666666 7777777 88888888 999999999 0 x  y";
        for from in 0..line.len() {
            let slow: Vec<usize> = (from..line.len()).filter(|&i| line[i] == b' ').collect();
            for n in 0..slow.len() + 2 {
                assert_eq!(nth_space(line, from, n), slow.get(n).copied(), "{from} {n}");
            }
        }
    }

    #[test]
    fn schedstat_gives_run_and_wait() {
        assert_eq!(
            parse_schedstat("4018 90288 1\n"),
            Some(SchedStat {
                run_ns: 4018,
                wait_ns: 90288
            })
        );
        assert_eq!(parse_schedstat("4018\n"), None);
        assert_eq!(parse_schedstat("a b c"), None);
        assert_eq!(parse_schedstat(""), None);
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
