//! Host-wide CPU time from `/proc/stat`, split the way the header shows
//! it: host kernel, host user, guest.

use serde::Serialize;

/// Cumulative host CPU time in clock ticks, from the `cpu` line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HostTimes {
    /// `user + nice - guest - guest_nice`: the kernel counts guest time in
    /// user time too.
    pub user: u64,
    /// `system + irq + softirq`.
    pub kernel: u64,
    /// `guest + guest_nice`.
    pub guest: u64,
    /// Every field, idle included.
    pub total: u64,
}

/// Parse `/proc/stat` text. `None` when the `cpu` line is missing or bad.
///
/// Only the `cpu` line, read from a kept-open file once a refresh; not
/// `procfs::KernelStats`, which parses every line (one per CPU among
/// them): at one parse a refresh the cost is no reason either way, so the
/// reason is one dependency less for kvmtop.
pub fn parse_stat(text: &str) -> Option<HostTimes> {
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse::<u64>())
        .collect::<Result<_, _>>()
        .ok()?;
    let get = |i: usize| f.get(i).copied().unwrap_or(0);
    if f.len() < 4 {
        return None;
    }
    let (user, nice, system, irq, softirq) = (get(0), get(1), get(2), get(5), get(6));
    let guest = get(8).saturating_add(get(9));
    let total = f.iter().fold(0u64, |a, v| a.saturating_add(*v));
    Some(HostTimes {
        user: user.saturating_add(nice).saturating_sub(guest),
        kernel: system.saturating_add(irq).saturating_add(softirq),
        guest,
        // guest time is already inside user: do not count it twice.
        total: total.saturating_sub(guest),
    })
}

/// Host CPU split over an interval, in percent of all host CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct HostSplit {
    pub host_kernel_pct: f64,
    pub host_user_pct: f64,
    pub guest_pct: f64,
}

/// The split between two readings.
pub fn split(a: &HostTimes, b: &HostTimes) -> HostSplit {
    let total = b.total.saturating_sub(a.total);
    if total == 0 {
        return HostSplit::default();
    }
    let pct = |x: u64, y: u64| 100.0 * y.saturating_sub(x) as f64 / total as f64;
    HostSplit {
        host_kernel_pct: pct(a.kernel, b.kernel),
        host_user_pct: pct(a.user, b.user),
        guest_pct: pct(a.guest, b.guest),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_time_is_taken_out_of_user_time() {
        //          user nice system idle iowait irq softirq steal guest guest_nice
        let a = parse_stat("cpu  100 0 50 800 0 0 0 0 40 0\ncpu0 1 2 3\n").unwrap();
        let b = parse_stat("cpu  200 0 70 860 0 10 10 0 100 0\n").unwrap();
        assert_eq!(a.user, 60);
        assert_eq!(a.guest, 40);
        assert_eq!(a.total, 950);
        let s = split(&a, &b);
        // interval: user 100 (60 guest) system 20 irq+softirq 20 idle 60 => 200 ticks
        assert!((s.guest_pct - 30.0).abs() < 1e-9, "{s:?}");
        assert!((s.host_user_pct - 20.0).abs() < 1e-9, "{s:?}");
        assert!((s.host_kernel_pct - 20.0).abs() < 1e-9, "{s:?}");
    }

    #[test]
    fn bad_input_is_none() {
        assert_eq!(parse_stat(""), None);
        assert_eq!(parse_stat("cpu  1 x 3 4"), None);
        assert_eq!(parse_stat("cpu  1 2"), None);
        assert_eq!(
            split(&HostTimes::default(), &HostTimes::default()),
            HostSplit::default()
        );
    }
}
