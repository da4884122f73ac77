//! The address search of a [`SymbolTable`](super::SymbolTable): a
//! two-level index over the sorted addresses.
//!
//! The first level cuts the span of the addresses into equal buckets of
//! `1 << shift` bytes, about one per two symbols, and holds where each
//! bucket starts in the sorted addresses (a `u32` each: 250 KiB for
//! 125,000 symbols). A lookup reads its bucket's start and end, then
//! binary-searches the few addresses between them (the second level is
//! the address array itself). A binary search of the whole array takes 17
//! dependent steps for 125,000 symbols; this takes one load and a search
//! of about two addresses in one or two cache lines.
//!
//! The buckets are equal in bytes, not in symbols: a guest kernel's text
//! is dense and its modules sit a gigabyte above it, so real buckets hold
//! more symbols than the average (a few dozen in the kernel's text, five
//! steps), and hostile input can put all of them in one bucket, which
//! costs the plain binary search and no more.

/// Buckets per symbol, as a shift: one per `1 << BUCKET_SHIFT` symbols.
const BUCKET_SHIFT: u32 = 1;

/// Sorted addresses and the bucket index over them.
#[derive(Clone, Default, PartialEq, Eq)]
pub(crate) struct AddrIndex {
    addrs: Vec<u64>,
    /// `starts[b]`: how many addresses are below bucket `b`, i.e. below
    /// `min + (b << shift)`; one more entry than there are buckets.
    starts: Vec<u32>,
    min: u64,
    shift: u32,
}

impl AddrIndex {
    /// Index `sorted`, which must be in ascending order and shorter than
    /// `u32::MAX` (the table builder refuses more symbols).
    pub(crate) fn new(sorted: Vec<u64>) -> Self {
        debug_assert!(sorted.is_sorted());
        let (Some(&min), Some(&max)) = (sorted.first(), sorted.last()) else {
            return AddrIndex::default();
        };
        let span = max - min;
        let want = (sorted.len() as u64 >> BUCKET_SHIFT).max(1);
        // The smallest shift that makes no more than `want` buckets.
        let mut shift = 0;
        while shift < 64 && (span >> shift) >= want {
            shift += 1;
        }
        let buckets = (span.checked_shr(shift).unwrap_or(0) + 1) as usize;
        // Count the addresses of each bucket (at b + 1), then sum.
        let mut starts = vec![0u32; buckets + 1];
        for &a in &sorted {
            let b = (a - min).checked_shr(shift).unwrap_or(0) as usize;
            if let Some(n) = starts.get_mut(b + 1) {
                *n += 1;
            }
        }
        let mut sum = 0u32;
        for n in &mut starts {
            sum += *n;
            *n = sum;
        }
        AddrIndex {
            addrs: sorted,
            starts,
            min,
            shift,
        }
    }

    /// The `i`th smallest address.
    #[inline]
    pub(crate) fn get(&self, i: usize) -> Option<u64> {
        self.addrs.get(i).copied()
    }

    /// The addresses in ascending order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = u64> + '_ {
        self.addrs.iter().copied()
    }

    /// The last address at or below `x` and its position: what
    /// `partition_point(|&a| a <= x) - 1` finds in the sorted addresses,
    /// so of equal addresses the last.
    #[inline]
    pub(crate) fn floor(&self, x: u64) -> Option<(usize, u64)> {
        let off = x.checked_sub(self.min)?;
        // Every address of an earlier bucket is below x, every address of
        // a later one above it: the answer is x's bucket's last address at
        // or below x, or the one before the bucket.
        let b = off.checked_shr(self.shift).unwrap_or(0);
        let (lo, hi) = match usize::try_from(b)
            .ok()
            .and_then(|b| self.starts.get(b..b.checked_add(2)?))
        {
            Some(&[lo, hi]) => (lo as usize, hi as usize),
            // Past the last bucket: above every address.
            _ => (self.addrs.len(), self.addrs.len()),
        };
        let i = lo + self.addrs.get(lo..hi)?.partition_point(|&a| a <= x);
        let i = i.checked_sub(1)?;
        Some((i, *self.addrs.get(i)?))
    }
}

impl std::fmt::Debug for AddrIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AddrIndex")
            .field("len", &self.addrs.len())
            .field("buckets", &self.starts.len().saturating_sub(1))
            .field("shift", &self.shift)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(sorted: &[u64], probes: impl IntoIterator<Item = u64>) {
        let ix = AddrIndex::new(sorted.to_vec());
        assert_eq!(ix.iter().collect::<Vec<_>>(), sorted);
        for x in probes {
            let want = sorted
                .partition_point(|&a| a <= x)
                .checked_sub(1)
                .map(|i| (i, sorted[i]));
            assert_eq!(ix.floor(x), want, "{x:#x} in {} keys", sorted.len());
        }
    }

    #[test]
    fn agrees_with_a_binary_search() {
        check(&[], [0, 1, u64::MAX]);
        check(&[5], [0, 4, 5, 6, u64::MAX]);
        check(&[0, u64::MAX], [0, 1, u64::MAX - 1, u64::MAX]);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        // Sizes around bucket boundaries, with duplicates, clusters far
        // apart (a kernel and its modules) and the extremes of the address
        // space.
        for n in [1, 2, 3, 7, 8, 9, 63, 64, 65, 511, 4097, 40_000] {
            let mut v: Vec<u64> = (0..n).map(|_| next() % (n as u64 * 4)).collect();
            v.extend((0..n / 3).map(|_| 0xffff_ffff_c000_0000 + next() % 4096));
            v.sort_unstable();
            let probes: Vec<u64> = v
                .iter()
                .flat_map(|&a| [a.wrapping_sub(1), a, a + 1])
                .chain([0, u64::MAX, 0xffff_ffff_0000_0000])
                .collect();
            check(&v, probes);
            v.push(u64::MAX);
            v.push(u64::MAX);
            v.insert(0, 0);
            check(&v, [0, 1, u64::MAX - 1, u64::MAX, v[v.len() / 2]]);
        }
    }
}
