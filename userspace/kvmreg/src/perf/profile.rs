//! Aggregating samples into a per-guest profile: guest kernel vs guest
//! user vs host time on the vCPU threads, and the hottest guest functions.
//!
//! Counting a sample allocates nothing: a guest IP is counted by the slot
//! of the symbol covering it ([`Symbolizer::slot`], an index search) in a
//! vector sized when the profile is made, and an IP no symbol covers in a
//! table of addresses reserved up front. Names are looked up when rows are
//! built, and source lines only for the rows returned.

use super::record::{CpuMode, Sample};
use super::{Attributor, Owner};
use crate::symbols::Symbolizer;
use std::borrow::Cow;
use std::collections::HashMap;

/// Distinct addresses [`AddrCounts`] keeps per profile interval by
/// default; samples at further ones are summed in one row.
pub const ADDRESSES: usize = 4096;

/// The row of the samples at addresses beyond an [`AddrCounts`]' capacity.
pub const OTHER_ADDRESSES: &str = "[other addresses]";

/// Samples by address, in a table reserved up front: once it holds `cap`
/// distinct addresses, samples at further ones are only summed in
/// `other`, so counting never allocates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrCounts {
    map: HashMap<u64, u64>,
    cap: usize,
    /// Samples at addresses that found the table full.
    pub other: u64,
}

impl AddrCounts {
    /// An empty table with room for `cap` distinct addresses.
    pub fn new(cap: usize) -> Self {
        AddrCounts {
            map: HashMap::with_capacity(cap),
            cap,
            other: 0,
        }
    }

    /// Count one sample at `addr`: in its own row while there is room or
    /// the address already has one, else in [`other`](Self::other).
    #[inline]
    pub fn add(&mut self, addr: u64) {
        if self.map.len() < self.cap {
            // Below the reserved capacity: `entry` does not reallocate.
            *self.map.entry(addr).or_default() += 1;
        } else if let Some(n) = self.map.get_mut(&addr) {
            *n += 1;
        } else {
            self.other += 1;
        }
    }

    /// `(address, samples)`, in no order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.map.iter().map(|(&a, &n)| (a, n))
    }

    /// Start over, keeping the memory.
    pub fn clear(&mut self) {
        self.map.clear();
        self.other = 0;
    }
}

/// One guest's samples by function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Functions {
    /// By symbol slot.
    slots: Vec<u64>,
    /// Samples no symbol covers, by IP (shown as `0x...`).
    unresolved: AddrCounts,
    /// The resolved samples by IP again, when the symbols have source
    /// lines: a row's hottest line is found from them.
    by_address: Option<AddrCounts>,
}

impl Default for Functions {
    fn default() -> Self {
        Functions::with_slots(0, false)
    }
}

/// A row of [`Functions::top`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionRow {
    /// The symbol, `0x<ip>` for an address no symbol covers, or
    /// [`OTHER_ADDRESSES`].
    pub symbol: String,
    /// The guest kernel module of the symbol; `None` for the kernel image
    /// and for unresolved rows.
    pub module: Option<String>,
    /// `file:line` of the row's hottest source line, where known.
    pub source: Option<String>,
    /// Samples counted in the row.
    pub samples: u64,
}

/// A row being ranked: names borrowed from the symbols.
struct Rank<'a> {
    symbol: Cow<'a, str>,
    module: Option<&'a str>,
    samples: u64,
    id: usize,
}

/// Rows by symbol and module.
#[derive(Default)]
struct Rows<'a> {
    rows: Vec<Rank<'a>>,
    ids: HashMap<(Cow<'a, str>, Option<&'a str>), usize>,
}

impl<'a> Rows<'a> {
    fn count(&mut self, symbol: Cow<'a, str>, module: Option<&'a str>, samples: u64) -> usize {
        let next = self.rows.len();
        let id = *self.ids.entry((symbol.clone(), module)).or_insert(next);
        match self.rows.get_mut(id) {
            Some(r) => r.samples += samples,
            None => self.rows.push(Rank {
                symbol,
                module,
                samples,
                id,
            }),
        }
        id
    }
}

impl Functions {
    /// Counts for the slots of `syms`, and by address for source lines
    /// when it has them.
    pub fn new(syms: &impl Symbolizer) -> Self {
        Functions::with_slots(syms.slots(), syms.has_lines())
    }

    /// Counts for `slots` symbol slots; `by_address`: also count resolved
    /// samples by address, for [`FunctionRow::source`].
    pub fn with_slots(slots: usize, by_address: bool) -> Self {
        Functions {
            slots: vec![0; slots],
            unresolved: AddrCounts::new(ADDRESSES),
            by_address: by_address.then(|| AddrCounts::new(ADDRESSES)),
        }
    }

    /// Count a sample at `ip`, which the symbols put in `slot`. A slot out
    /// of range counts as unresolved.
    #[inline]
    pub fn add(&mut self, slot: Option<u32>, ip: u64) {
        match slot.and_then(|s| self.slots.get_mut(s as usize)) {
            Some(n) => {
                *n += 1;
                if let Some(a) = &mut self.by_address {
                    a.add(ip);
                }
            }
            None => self.unresolved.add(ip),
        }
    }

    /// Start over, keeping the memory.
    pub fn clear(&mut self) {
        self.slots.fill(0);
        self.unresolved.clear();
        if let Some(a) = &mut self.by_address {
            a.clear();
        }
    }

    /// The `n` hottest functions by descending samples, ties by symbol
    /// then module. Symbols of the same name and module are one row (as
    /// when samples were counted by name); `source` is the row's most
    /// sampled line (ties: the first in order), when `syms` has lines.
    pub fn top(&self, n: usize, syms: &impl Symbolizer) -> Vec<FunctionRow> {
        self.ranked(n, syms, true)
    }

    fn ranked(&self, n: usize, syms: &impl Symbolizer, by_module: bool) -> Vec<FunctionRow> {
        let mut rows = Rows::default();
        let mut slot_row: HashMap<u32, usize> = HashMap::new();
        for (slot, &samples) in self.slots.iter().enumerate().filter(|(_, &n)| n > 0) {
            let Ok(slot) = u32::try_from(slot) else { break };
            let (symbol, module) = syms.slot_name(slot);
            let id = rows.count(symbol, module.filter(|_| by_module), samples);
            slot_row.insert(slot, id);
        }
        for (ip, samples) in self.unresolved.iter() {
            rows.count(Cow::Owned(format!("{ip:#x}")), None, samples);
        }
        if self.unresolved.other > 0 {
            rows.count(Cow::Borrowed(OTHER_ADDRESSES), None, self.unresolved.other);
        }
        let mut rows = rows.rows;
        let order = |a: &Rank<'_>, b: &Rank<'_>| {
            b.samples
                .cmp(&a.samples)
                .then_with(|| a.symbol.cmp(&b.symbol))
                .then_with(|| a.module.cmp(&b.module))
        };
        if rows.len() > n {
            rows.select_nth_unstable_by(n, order);
            rows.truncate(n);
        }
        rows.sort_by(order);
        // Source lines: of the addresses in the rows shown only.
        let shown: HashMap<usize, usize> =
            rows.iter().enumerate().map(|(i, r)| (r.id, i)).collect();
        let mut lines: Vec<HashMap<String, u64>> = vec![HashMap::new(); rows.len()];
        for (ip, samples) in self.by_address.iter().flat_map(AddrCounts::iter) {
            let row = syms
                .slot(ip)
                .and_then(|s| slot_row.get(&s))
                .and_then(|id| shown.get(id));
            if let Some((&i, line)) = row.zip(row.and_then(|_| syms.source_line(ip))) {
                *lines[i].entry(line).or_default() += samples;
            }
        }
        rows.into_iter()
            .zip(lines)
            .map(|(r, lines)| FunctionRow {
                symbol: r.symbol.into_owned(),
                module: r.module.map(str::to_string),
                source: lines
                    .into_iter()
                    .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
                    .map(|(l, _)| l),
                samples: r.samples,
            })
            .collect()
    }
}

/// One guest's samples.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestProfile {
    /// Samples in guest kernel mode.
    pub guest_kernel: u64,
    /// Samples in guest user mode.
    pub guest_user: u64,
    /// Samples of its vCPU threads outside guest mode (KVM, the VMM).
    pub host: u64,
    /// Guest-mode samples by function (or `0x<ip>` when unresolved).
    pub functions: Functions,
}

impl GuestProfile {
    /// Samples in guest mode, kernel and user.
    pub fn guest_samples(&self) -> u64 {
        self.guest_kernel + self.guest_user
    }

    /// Functions by descending sample count, ties by name; symbols of one
    /// name are one row. `syms` names the slots samples were counted in.
    pub fn top(&self, n: usize, syms: &impl Symbolizer) -> Vec<(String, u64)> {
        self.functions
            .ranked(n, syms, false)
            .into_iter()
            .map(|r| (r.symbol, r.samples))
            .collect()
    }
}

/// Profiles of a set of guests, indexed like the guest list.
pub struct Profile {
    attributor: Attributor,
    tid_owner: HashMap<u32, usize>,
    /// One profile per guest, in the order of the guest list given to
    /// [`Profile::new`].
    pub guests: Vec<GuestProfile>,
    /// Guest-mode samples that no known guest claims.
    pub unattributed: u64,
}

impl Profile {
    /// `slots(i)`: how many symbol slots guest `i`'s symbols have
    /// ([`Symbolizer::slots`]; 0 without symbols).
    pub fn new(guests: &[crate::Guest], slots: impl Fn(usize) -> usize) -> Self {
        let mut tid_owner = HashMap::new();
        for (i, g) in guests.iter().enumerate() {
            for t in g.vcpus.iter().filter_map(|v| v.tid) {
                tid_owner.insert(t, i);
            }
        }
        Profile {
            attributor: Attributor::new(guests),
            tid_owner,
            guests: (0..guests.len())
                .map(|i| GuestProfile {
                    functions: Functions::with_slots(slots(i), false),
                    ..Default::default()
                })
                .collect(),
            unattributed: 0,
        }
    }

    /// Count one sample; `slot(guest index, ip)` is the slot of the symbol
    /// covering a guest IP ([`Symbolizer::slot`]). Allocates nothing.
    #[inline]
    pub fn add(&mut self, s: &Sample, slot: impl Fn(usize, u64) -> Option<u32>) {
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
        p.functions.add(slot(guest, s.ip), s.ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::symbols::SymbolTable;
    use crate::{Guest, Vcpu};

    fn guest() -> Guest {
        let mut g = Guest::new(1);
        g.vcpus.push(Vcpu {
            index: 0,
            vcpu_id: Some(0),
            tid: Some(10),
            tid_source: None,
            fd: None,
        });
        g
    }

    fn sample(mode: CpuMode, ip: u64, tid: u32) -> Sample {
        Sample {
            mode,
            ip,
            pid: 1,
            tid,
            guest: None,
        }
    }

    #[test]
    fn splits_modes_and_names_functions() {
        let tab = SymbolTable::new(vec![(0x1100, 6, "hot_a".into(), None)]);
        let mut p = Profile::new(&[guest()], |_| tab.slots());
        let slot = |_g: usize, ip: u64| tab.slot(ip);
        for _ in 0..7 {
            p.add(&sample(CpuMode::GuestKernel, 0x1103, 10), slot);
        }
        p.add(&sample(CpuMode::GuestUser, 0x5000, 10), slot);
        p.add(&sample(CpuMode::HostKernel, 0xffff_0000, 10), slot);
        p.add(&sample(CpuMode::GuestKernel, 0x1103, 99), slot);
        let g = &p.guests[0];
        assert_eq!((g.guest_kernel, g.guest_user, g.host), (7, 1, 1));
        assert_eq!(
            g.top(5, &tab),
            vec![("hot_a".to_string(), 7), ("0x5000".to_string(), 1)]
        );
        assert_eq!(p.unattributed, 1);
    }

    /// Random samples over a table with names that repeat (in and out of
    /// modules), sizes that leave holes, and addresses below it: the rows
    /// are those of counting a `String` per sample by name, as before.
    #[test]
    fn rows_equal_counting_by_name() {
        let names = ["a", "b", "dup", "dup", "m_x", "dup", "z"];
        let tab = SymbolTable::new(
            names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let module = (i >= 4).then(|| format!("mod{}", i % 2));
                    (0x1000 + 0x100 * i as u64, 0x80, n.to_string(), module)
                })
                .collect(),
        );
        let mut p = Profile::new(&[guest()], |_| tab.slots());
        let mut by_name: HashMap<String, u64> = HashMap::new();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Skewed towards low addresses, some below the table.
            let ip = 0xf00 + (x % 0x800) * (x >> 60) / 15;
            p.add(&sample(CpuMode::GuestKernel, ip, 10), |_, ip| tab.slot(ip));
            let name = tab
                .lookup(ip)
                .map_or_else(|| format!("{ip:#x}"), |r| r.name);
            *by_name.entry(name).or_default() += 1;
        }
        let mut old: Vec<(String, u64)> = by_name.into_iter().collect();
        old.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        for n in [1, 3, 10, old.len(), old.len() + 5] {
            let want: Vec<_> = old.iter().take(n).cloned().collect();
            assert_eq!(p.guests[0].top(n, &tab), want, "top {n}");
        }
        // By name and module: the two "dup"s of no module are one row, the
        // one of mod1 another.
        let rows = p.guests[0].functions.top(100, &tab);
        let dups: Vec<_> = rows
            .iter()
            .filter(|r| r.symbol == "dup")
            .map(|r| r.module.as_deref())
            .collect();
        assert_eq!(dups, vec![None, Some("mod1")]);
    }

    #[test]
    fn addresses_beyond_the_reserve_are_summed() {
        let mut c = AddrCounts::new(2);
        for a in [1, 2, 3, 1, 4, 2] {
            c.add(a);
        }
        let mut v: Vec<_> = c.iter().collect();
        v.sort();
        assert_eq!(v, vec![(1, 2), (2, 2)]);
        assert_eq!(c.other, 2);
        let mut f = Functions::with_slots(1, false);
        f.unresolved = c;
        let tab = SymbolTable::default();
        assert_eq!(
            f.top(10, &tab)
                .last()
                .map(|r| (r.symbol.as_str(), r.samples)),
            Some((OTHER_ADDRESSES, 2))
        );
        // An out of range slot counts as unresolved.
        f.clear();
        f.add(Some(7), 0x10);
        assert_eq!(f.top(1, &tab)[0].symbol, "0x10");
    }
}
