//! Aggregating samples into a per-guest profile: guest kernel vs guest
//! user vs host time on the vCPU threads, and the hottest guest functions.

use super::record::{CpuMode, Sample};
use super::{Attributor, Owner};
use std::collections::HashMap;

/// One guest's samples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestProfile {
    pub guest_kernel: u64,
    pub guest_user: u64,
    /// Samples of its vCPU threads outside guest mode (KVM, the VMM).
    pub host: u64,
    /// Guest-mode samples by symbol (or `0x<ip>` when unresolved).
    pub functions: HashMap<String, u64>,
}

impl GuestProfile {
    pub fn guest_samples(&self) -> u64 {
        self.guest_kernel + self.guest_user
    }

    /// Functions by descending sample count, ties by name.
    pub fn top(&self, n: usize) -> Vec<(&str, u64)> {
        let mut v: Vec<(&str, u64)> = self
            .functions
            .iter()
            .map(|(k, c)| (k.as_str(), *c))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        v.truncate(n);
        v
    }
}

/// Profiles of a set of guests, indexed like the guest list.
pub struct Profile {
    attributor: Attributor,
    tid_owner: HashMap<u32, usize>,
    pub guests: Vec<GuestProfile>,
    /// Guest-mode samples that no known guest claims.
    pub unattributed: u64,
}

impl Profile {
    pub fn new(guests: &[crate::Guest]) -> Self {
        let mut tid_owner = HashMap::new();
        for (i, g) in guests.iter().enumerate() {
            for t in g.vcpus.iter().filter_map(|v| v.tid) {
                tid_owner.insert(t, i);
            }
        }
        Profile {
            attributor: Attributor::new(guests),
            tid_owner,
            guests: vec![GuestProfile::default(); guests.len()],
            unattributed: 0,
        }
    }

    /// Count one sample; `resolve(guest index, ip)` names guest IPs.
    pub fn add(&mut self, s: &Sample, resolve: impl Fn(usize, u64) -> Option<String>) {
        if !s.mode.is_guest() {
            if let Some(&g) = self.tid_owner.get(&s.tid) {
                self.guests[g].host += 1;
            }
            return;
        }
        let Some(Owner { guest, .. }) = self.attributor.owner(s) else {
            self.unattributed += 1;
            return;
        };
        let Some(p) = self.guests.get_mut(guest) else {
            self.unattributed += 1;
            return;
        };
        if s.mode == CpuMode::GuestUser {
            p.guest_user += 1;
        } else {
            p.guest_kernel += 1;
        }
        let name = resolve(guest, s.ip).unwrap_or_else(|| format!("{:#x}", s.ip));
        *p.functions.entry(name).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Guest, Vcpu};

    #[test]
    fn splits_modes_and_names_functions() {
        let mut g = Guest::new(1);
        g.vcpus.push(Vcpu {
            index: 0,
            vcpu_id: Some(0),
            tid: Some(10),
            tid_source: None,
            fd: None,
        });
        let mut p = Profile::new(&[g]);
        let s = |mode, ip, tid| Sample {
            mode,
            ip,
            pid: 1,
            tid,
            guest: None,
        };
        let name = |_g: usize, ip: u64| (0x1100..0x1106).contains(&ip).then(|| "hot_a".to_string());
        for _ in 0..7 {
            p.add(&s(CpuMode::GuestKernel, 0x1103, 10), name);
        }
        p.add(&s(CpuMode::GuestUser, 0x5000, 10), name);
        p.add(&s(CpuMode::HostKernel, 0xffff_0000, 10), name);
        p.add(&s(CpuMode::GuestKernel, 0x1103, 99), name);
        let g = &p.guests[0];
        assert_eq!((g.guest_kernel, g.guest_user, g.host), (7, 1, 1));
        assert_eq!(g.top(5), vec![("hot_a", 7), ("0x5000", 1)]);
        assert_eq!(p.unattributed, 1);
    }
}
