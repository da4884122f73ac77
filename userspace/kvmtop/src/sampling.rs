//! Guest-mode perf sampling for the overview header: one sampler over every
//! known vCPU thread, re-opened when the set of threads changes.
//!
//! Off unless asked for (`--sample`): a `cpu-clock` sample of a vCPU thread
//! running its guest interrupts it, i.e. forces a VM exit, so sampling every
//! guest at 1 kHz would add to the very exit counts the overview shows. The
//! header's host/guest split needs no sampling: it comes from the kernel's
//! `guest_time` accounting (`/proc/stat`, `/proc/<pid>/stat`).

use crate::frame::SamplingSummary;
use kvmreg::perf::record::CpuMode;
use kvmreg::perf::{Sampler, SamplerConfig};
use kvmreg::Guest;
use std::sync::Arc;
use std::time::Instant;

/// Why the header has no guest-kernel/guest-user split by default.
pub const NOT_ASKED: &str =
    "off (kvmtop --sample splits guest kernel/user; sampling forces VM exits)";

pub struct HeaderSampler {
    /// False unless the user asked for sampling.
    enabled: bool,
    sampler: Option<Sampler>,
    tids: Vec<u32>,
    /// The last [`follow`](Self::follow) had no guests at all.
    no_guests: bool,
    since: Instant,
    reason: Option<String>,
}

impl Default for HeaderSampler {
    fn default() -> Self {
        Self::new()
    }
}

/// Counts of one interval.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub guest_kernel: u64,
    pub guest_user: u64,
    pub all: u64,
}

/// The header figures from one interval's counts.
pub fn summary(c: Counts, secs: f64) -> SamplingSummary {
    let guest = c.guest_kernel + c.guest_user;
    let pct = |n: u64| (guest > 0).then(|| 100.0 * n as f64 / guest as f64);
    let per_s = |n: u64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
    SamplingSummary::Sampling {
        guest_kernel_pct: pct(c.guest_kernel),
        guest_user_pct: pct(c.guest_user),
        guest_samples_per_s: per_s(guest),
        samples_per_s: per_s(c.all),
    }
}

impl HeaderSampler {
    /// A sampler that samples (`enabled`, the user asked) or only says it
    /// does not.
    pub fn with(enabled: bool) -> Self {
        HeaderSampler {
            enabled,
            ..Self::new()
        }
    }

    pub fn new() -> Self {
        HeaderSampler {
            enabled: true,
            sampler: None,
            tids: Vec::new(),
            no_guests: false,
            since: Instant::now(),
            reason: None,
        }
    }

    /// Follow the current guest list: re-open on a change of vCPU threads.
    pub fn follow(&mut self, guests: &[Arc<Guest>]) {
        if !self.enabled {
            return;
        }
        let mut tids: Vec<u32> = guests
            .iter()
            .flat_map(|g| g.vcpus.iter().filter_map(|v| v.tid))
            .collect();
        tids.sort_unstable();
        let decided = self.sampler.is_some() || self.reason.is_some();
        if tids == self.tids && (guests.is_empty() == self.no_guests) && decided {
            return;
        }
        self.no_guests = guests.is_empty();
        self.tids = tids;
        self.sampler = None;
        self.since = Instant::now();
        if guests.is_empty() {
            self.reason = Some("no guests to sample".into());
            return;
        }
        let guests: Vec<Guest> = guests.iter().map(|g| Guest::clone(g)).collect();
        match Sampler::new(&guests, SamplerConfig::default()) {
            Ok(s) => {
                self.sampler = Some(s);
                self.reason = None;
            }
            Err(e) => self.reason = Some(one_line(&e.to_string())),
        }
    }

    /// Drain the samples since the last call and summarise them.
    pub fn take(&mut self) -> SamplingSummary {
        let secs = self.since.elapsed().as_secs_f64();
        self.since = Instant::now();
        if !self.enabled {
            return SamplingSummary::Off {
                reason: NOT_ASKED.into(),
            };
        }
        let Some(s) = &mut self.sampler else {
            return SamplingSummary::Off {
                reason: self
                    .reason
                    .clone()
                    .unwrap_or_else(|| "no guests to sample".into()),
            };
        };
        let mut c = Counts::default();
        s.poll(|smp| {
            c.all += 1;
            match smp.mode {
                CpuMode::GuestKernel => c.guest_kernel += 1,
                CpuMode::GuestUser => c.guest_user += 1,
                _ => {}
            }
        });
        summary(c, secs)
    }
}

/// The first line of an error, for a one-line header reason.
pub fn one_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_splits_guest_samples() {
        let s = summary(
            Counts {
                guest_kernel: 3,
                guest_user: 1,
                all: 10,
            },
            2.0,
        );
        assert_eq!(
            s,
            SamplingSummary::Sampling {
                guest_kernel_pct: Some(75.0),
                guest_user_pct: Some(25.0),
                guest_samples_per_s: 2.0,
                samples_per_s: 5.0
            }
        );
        match summary(Counts::default(), 1.0) {
            SamplingSummary::Sampling {
                guest_kernel_pct, ..
            } => assert_eq!(guest_kernel_pct, None),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn not_asked_is_off_and_opens_nothing() {
        let mut g = Guest::new(1);
        g.vcpus.push(kvmreg::Vcpu {
            index: 0,
            vcpu_id: None,
            tid: Some(std::process::id()),
            tid_source: None,
            fd: None,
        });
        let mut h = HeaderSampler::with(false);
        h.follow(&[g.into()]);
        assert!(h.sampler.is_none());
        assert_eq!(
            h.take(),
            SamplingSummary::Off {
                reason: NOT_ASKED.into()
            }
        );
    }

    #[test]
    fn without_guests_sampling_is_off_with_a_reason() {
        let mut h = HeaderSampler::new();
        h.follow(&[]);
        match h.take() {
            SamplingSummary::Off { reason } => assert_eq!(reason, "no guests to sample"),
            o => panic!("{o:?}"),
        }
        // Guests whose vCPU threads are unknown: that is the reason.
        h.follow(&[Arc::new(Guest::new(1))]);
        match h.take() {
            SamplingSummary::Off { reason } => assert!(reason.contains("vCPU threads"), "{reason}"),
            o => panic!("{o:?}"),
        }
    }
}
