//! Parser for KVM's binary stats stream (`KVM_GET_STATS_FD`, and
//! `/proc/<pid>/kvm/<id>/stats` on a patched kernel), for VMs and vCPUs.
//!
//! Layout (Documentation/virt/kvm/api.rst): a `struct kvm_stats_header`
//! `{flags, name_size, num_desc, id_offset, desc_offset, data_offset}` (six
//! u32), an id string of `name_size` bytes at `id_offset`, `num_desc`
//! descriptors `{u32 flags; s16 exponent; u16 size; u32 offset; u32
//! bucket_size; char name[name_size]}` at `desc_offset`, and the data: for
//! each descriptor `size` u64 values at `data_offset + offset`. All fields
//! are in the host's byte order.
//!
//! Hand-written rather than read through `kvm-bindings`' structs because the
//! input may come from a file anyone can craft (a saved stream, a fuzzer):
//! every length and offset is bounds-checked here, and the descriptors are
//! read once while the data can be re-read with `pread` on every poll.

use crate::kvm_uapi::{
    KVM_STATS_BASE_MASK, KVM_STATS_BASE_POW2, KVM_STATS_TYPE_CUMULATIVE, KVM_STATS_TYPE_INSTANT,
    KVM_STATS_TYPE_LINEAR_HIST, KVM_STATS_TYPE_LOG_HIST, KVM_STATS_TYPE_MASK, KVM_STATS_TYPE_PEAK,
    KVM_STATS_UNIT_BOOLEAN, KVM_STATS_UNIT_BYTES, KVM_STATS_UNIT_CYCLES, KVM_STATS_UNIT_MASK,
    KVM_STATS_UNIT_NONE, KVM_STATS_UNIT_SECONDS,
};
use std::io;

/// Size of `struct kvm_stats_header`.
pub const HEADER_SIZE: usize = 24;
/// Size of `struct kvm_stats_desc` without its name.
pub const DESC_FIXED_SIZE: usize = 16;
/// Sanity limits: far above what any kernel emits (a few hundred stats,
/// names of 48 bytes), low enough that garbage cannot make us allocate much.
pub const MAX_DESCS: u32 = 8192;
/// The largest `name_size` accepted (see [`MAX_DESCS`]).
pub const MAX_NAME_SIZE: u32 = 1024;
/// The largest data block accepted, in bytes: a descriptor whose values
/// end beyond it is refused (see [`MAX_DESCS`]).
pub const MAX_DATA_BYTES: u64 = 16 << 20;

/// Why a stats stream could not be parsed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StatsError {
    /// The stream ends before a part that the header or a descriptor
    /// points at.
    #[error("stats stream truncated: need {need} bytes at offset {offset}")]
    Truncated {
        /// Where the part starts in the stream.
        offset: u64,
        /// Its length in bytes.
        need: u64,
    },
    /// The header's `name_size` or `num_desc` is beyond the sanity limits.
    #[error("stats header is implausible: {0}")]
    BadHeader(String),
    /// A `vcpu_stats` stream's data is not whole vCPU blocks of the
    /// layout's data length (or that length is 0).
    #[error("vcpu_stats data of {len} bytes is not whole blocks of {block} bytes")]
    PartialVcpuBlock {
        /// Bytes of vCPU data read.
        len: usize,
        /// One vCPU's block: the layout's data length.
        block: usize,
    },
    /// A descriptor has an empty name, or values that are misaligned or
    /// end beyond [`MAX_DATA_BYTES`].
    #[error("stats descriptor {index} is invalid: {why}")]
    BadDesc {
        /// The descriptor's position, from 0.
        index: u32,
        /// What is wrong with it.
        why: String,
    },
    /// Reading the source failed (other than by ending early).
    #[error("reading the stats stream: {0}")]
    Io(#[from] io::Error),
}

/// What a stat counts (`KVM_STATS_TYPE_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
#[non_exhaustive]
pub enum StatType {
    /// A counter that only grows (`exits`).
    Cumulative,
    /// A value now, which may go up or down.
    Instant,
    /// The highest value seen.
    Peak,
    /// A histogram of buckets [`bucket_size`](Desc::bucket_size) wide.
    LinearHist,
    /// A histogram of power-of-2 buckets.
    LogHist,
    /// A type this crate does not know: the flags' type bits.
    Unknown(u32),
}

/// The unit of a stat (`KVM_STATS_UNIT_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[cfg_attr(feature = "serde", serde(rename_all = "kebab-case"))]
#[non_exhaustive]
pub enum StatUnit {
    /// A plain number (events, pages).
    None,
    /// Bytes.
    Bytes,
    /// Seconds (scaled by the exponent, e.g. nanoseconds at -9).
    Seconds,
    /// CPU clock cycles.
    Cycles,
    /// 0 or 1.
    Boolean,
    /// A unit this crate does not know: the flags' unit bits.
    Unknown(u32),
}

/// One stat's descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Desc {
    /// The stat's name (`exits`, `halt_poll_success_ns`).
    pub name: String,
    /// The raw flags, whose type, unit and base bits are decoded below.
    pub flags: u32,
    /// What the stat counts, from `flags`.
    pub kind: StatType,
    /// Its unit, from `flags`.
    pub unit: StatUnit,
    /// True for powers of 2 (`KVM_STATS_BASE_POW2`), else powers of 10.
    pub base_pow2: bool,
    /// value * base^exponent is the value in `unit`.
    pub exponent: i16,
    /// Number of u64 values (buckets for histograms).
    pub size: u16,
    /// Offset of the values from the start of the data block.
    pub offset: u32,
    /// Bucket width of a linear histogram; 0 for other types.
    pub bucket_size: u32,
}

/// Header, id and descriptors: what stays fixed for the life of a stats fd.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Layout {
    /// The header's flags (no flag is defined yet).
    pub flags: u32,
    /// The stream's id string (`kvm-<pid>` for a VM, `kvm-<pid>/vcpu-<n>`
    /// for a vCPU).
    pub id: String,
    /// The descriptors, in stream order.
    pub descs: Vec<Desc>,
    /// Where the data block starts in the stream.
    pub data_offset: u64,
    /// Bytes of the data block that the descriptors cover.
    pub data_len: u64,
}

/// A stat and its values.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Stat {
    /// What the values are.
    pub desc: Desc,
    /// The raw values: one for a scalar stat, one per bucket for a
    /// histogram; scale by [`Desc::exponent`] for the unit.
    pub values: Vec<u64>,
}

/// A parsed stream.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Stats {
    /// The stream's id string, as [`Layout::id`].
    pub id: String,
    /// Every stat, in descriptor order.
    pub stats: Vec<Stat>,
}

impl Stats {
    /// The first value of a stat by name (the counter for scalar stats).
    pub fn get(&self, name: &str) -> Option<u64> {
        self.stats
            .iter()
            .find(|s| s.desc.name == name)
            .and_then(|s| s.values.first().copied())
    }
}

/// A source that can be read at an offset: a stats fd, a `/proc` stats file,
/// or bytes in memory.
pub trait ReadAt {
    /// Fill `buf` from `offset`; a source that ends first gives
    /// `UnexpectedEof`, which the parser reports as
    /// [`StatsError::Truncated`].
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl ReadAt for std::fs::File {
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(self, buf, offset)
    }
}

impl ReadAt for &[u8] {
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).map_err(|_| eof())?;
        let end = start.checked_add(buf.len()).ok_or_else(eof)?;
        let src = self.get(start..end).ok_or_else(eof)?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// Adapter for any `Read + Seek`.
pub struct SeekReader<R>(pub R);

impl<R: io::Read + io::Seek> ReadAt for SeekReader<R> {
    fn read_exact_at(&mut self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.0.seek(io::SeekFrom::Start(offset))?;
        self.0.read_exact(buf)
    }
}

fn eof() -> io::Error {
    io::Error::from(io::ErrorKind::UnexpectedEof)
}

fn read_at(src: &mut impl ReadAt, offset: u64, len: u64) -> Result<Vec<u8>, StatsError> {
    let n = usize::try_from(len).map_err(|_| StatsError::Truncated { offset, need: len })?;
    let mut buf = vec![0u8; n];
    match src.read_exact_at(&mut buf, offset) {
        Ok(()) => Ok(buf),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
            Err(StatsError::Truncated { offset, need: len })
        }
        Err(e) => Err(StatsError::Io(e)),
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_ne_bytes(a)
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    let mut a = [0u8; 2];
    a.copy_from_slice(&b[at..at + 2]);
    u16::from_ne_bytes(a)
}

/// Text up to the first NUL, lossily decoded.
fn c_string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn stat_type(flags: u32) -> StatType {
    match flags & KVM_STATS_TYPE_MASK {
        KVM_STATS_TYPE_CUMULATIVE => StatType::Cumulative,
        KVM_STATS_TYPE_INSTANT => StatType::Instant,
        KVM_STATS_TYPE_PEAK => StatType::Peak,
        KVM_STATS_TYPE_LINEAR_HIST => StatType::LinearHist,
        KVM_STATS_TYPE_LOG_HIST => StatType::LogHist,
        t => StatType::Unknown(t),
    }
}

fn stat_unit(flags: u32) -> StatUnit {
    match flags & KVM_STATS_UNIT_MASK {
        KVM_STATS_UNIT_NONE => StatUnit::None,
        KVM_STATS_UNIT_BYTES => StatUnit::Bytes,
        KVM_STATS_UNIT_SECONDS => StatUnit::Seconds,
        KVM_STATS_UNIT_CYCLES => StatUnit::Cycles,
        KVM_STATS_UNIT_BOOLEAN => StatUnit::Boolean,
        u => StatUnit::Unknown(u),
    }
}

/// Read and check header, id and descriptors.
pub fn read_layout(src: &mut impl ReadAt) -> Result<Layout, StatsError> {
    let h = read_at(src, 0, HEADER_SIZE as u64)?;
    let flags = u32_at(&h, 0);
    let name_size = u32_at(&h, 4);
    let num_desc = u32_at(&h, 8);
    let id_offset = u64::from(u32_at(&h, 12));
    let desc_offset = u64::from(u32_at(&h, 16));
    let data_offset = u64::from(u32_at(&h, 20));
    if name_size == 0 || name_size > MAX_NAME_SIZE {
        return Err(StatsError::BadHeader(format!("name_size {name_size}")));
    }
    if num_desc > MAX_DESCS {
        return Err(StatsError::BadHeader(format!("num_desc {num_desc}")));
    }
    let id = c_string(&read_at(src, id_offset, u64::from(name_size))?);
    let desc_size = DESC_FIXED_SIZE as u64 + u64::from(name_size);
    let descs_bytes = read_at(src, desc_offset, desc_size * u64::from(num_desc))?;
    let mut descs = Vec::with_capacity(num_desc as usize);
    let mut data_len = 0u64;
    for (i, d) in descs_bytes.chunks_exact(desc_size as usize).enumerate() {
        let index = i as u32;
        let dflags = u32_at(d, 0);
        let exponent = u16_at(d, 4) as i16;
        let size = u16_at(d, 6);
        let offset = u32_at(d, 8);
        let bucket_size = u32_at(d, 12);
        let name = c_string(&d[DESC_FIXED_SIZE..]);
        let bad = |why: String| StatsError::BadDesc { index, why };
        if name.is_empty() {
            return Err(bad("empty name".into()));
        }
        let end = u64::from(offset) + u64::from(size) * 8;
        if end > MAX_DATA_BYTES {
            return Err(bad(format!("data ends at {end}, beyond {MAX_DATA_BYTES}")));
        }
        if !offset.is_multiple_of(8) {
            return Err(bad(format!("offset {offset} not 8-byte aligned")));
        }
        data_len = data_len.max(end);
        descs.push(Desc {
            name,
            flags: dflags,
            kind: stat_type(dflags),
            unit: stat_unit(dflags),
            base_pow2: dflags & KVM_STATS_BASE_MASK == KVM_STATS_BASE_POW2,
            exponent,
            size,
            offset,
            bucket_size,
        });
    }
    Ok(Layout {
        flags,
        id,
        descs,
        data_offset,
        data_len,
    })
}

/// Read the data block for a layout: cheap enough to repeat each poll.
pub fn read_values(layout: &Layout, src: &mut impl ReadAt) -> Result<Stats, StatsError> {
    let data = read_at(src, layout.data_offset, layout.data_len)?;
    let stats = layout
        .descs
        .iter()
        .map(|d| {
            let start = d.offset as usize;
            let values = data[start..start + usize::from(d.size) * 8]
                .chunks_exact(8)
                .map(|c| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(c);
                    u64::from_ne_bytes(a)
                })
                .collect();
            Stat {
                desc: d.clone(),
                values,
            }
        })
        .collect();
    Ok(Stats {
        id: layout.id.clone(),
        stats,
    })
}

/// What [`parse_vcpu_sums`] finds: the layout, the number of vCPU blocks,
/// and each scalar counter's sum over them, in descriptor order.
pub type VcpuSums = (Layout, usize, Vec<(String, u64)>);

/// The per-vCPU data blocks of a `vcpu_stats` stream held in memory
/// (`/proc/<pid>/kvm/<id>/vcpu_stats`: a vCPU's header and descriptors,
/// then one block per vCPU), each scalar counter summed over the vCPUs, as
/// KVM's debugfs files sum them. Never panics, whatever the bytes; a
/// trailing partial block is an error.
pub fn parse_vcpu_sums(bytes: &[u8]) -> Result<VcpuSums, StatsError> {
    let mut src = bytes;
    let layout = read_layout(&mut src)?;
    let (blocks, values) = vcpu_sums_with(&layout, data_of(&layout, bytes)?)?;
    let sums = layout
        .descs
        .iter()
        .filter(|d| d.size == 1)
        .map(|d| d.name.clone())
        .zip(values)
        .collect();
    Ok((layout, blocks, sums))
}

/// The vCPU blocks of a `vcpu_stats` stream whose layout is already known
/// (parsed once, as a kept-open file's is): `data` is the stream from the
/// layout's data offset. Returns the number of blocks and the sum of each
/// scalar counter, in the order of the layout's scalar descriptors (those
/// with `size == 1`). Allocates only the result.
pub fn vcpu_sums_with(layout: &Layout, data: &[u8]) -> Result<(usize, Vec<u64>), StatsError> {
    let (block, blocks) = vcpu_blocks(layout, data)?;
    let sums = layout
        .descs
        .iter()
        .filter(|d| d.size == 1)
        .map(|d| {
            let at = d.offset as usize;
            data.chunks_exact(block)
                .map(|b| {
                    let mut a = [0u8; 8];
                    a.copy_from_slice(&b[at..at + 8]);
                    u64::from_ne_bytes(a)
                })
                .fold(0u64, u64::wrapping_add)
        })
        .collect();
    Ok((blocks, sums))
}

/// The data of a whole stream held in `bytes`: from the layout's data
/// offset on.
pub fn data_of<'a>(layout: &Layout, bytes: &'a [u8]) -> Result<&'a [u8], StatsError> {
    usize::try_from(layout.data_offset)
        .ok()
        .and_then(|at| bytes.get(at..))
        .ok_or(StatsError::Truncated {
            offset: layout.data_offset,
            need: 0,
        })
}

/// The size of one vCPU's block (the layout's data length) and how many
/// whole blocks `data` holds; a partial block is an error.
pub fn vcpu_blocks(layout: &Layout, data: &[u8]) -> Result<(usize, usize), StatsError> {
    let block = usize::try_from(layout.data_len).unwrap_or(usize::MAX);
    if block == 0 || !data.len().is_multiple_of(block) {
        return Err(StatsError::PartialVcpuBlock {
            len: data.len(),
            block,
        });
    }
    Ok((block, data.len() / block))
}

/// Parse a whole stream held in memory. Never panics, whatever the bytes.
pub fn parse(bytes: &[u8]) -> Result<Stats, StatsError> {
    let mut src = bytes;
    let layout = read_layout(&mut src)?;
    read_values(&layout, &mut src)
}

/// Build a stream, for tests of this parser and of its users.
#[doc(hidden)]
pub fn encode(id: &str, name_size: u32, stats: &[(&str, u32, &[u64])]) -> Vec<u8> {
    let desc_size = DESC_FIXED_SIZE + name_size as usize;
    let id_offset = HEADER_SIZE;
    let desc_offset = id_offset + name_size as usize;
    let data_offset = desc_offset + desc_size * stats.len();
    let mut out = Vec::new();
    for v in [
        0,
        name_size,
        stats.len() as u32,
        id_offset as u32,
        desc_offset as u32,
        data_offset as u32,
    ] {
        out.extend_from_slice(&v.to_ne_bytes());
    }
    let name = |s: &str, out: &mut Vec<u8>| {
        let mut b = s.as_bytes().to_vec();
        b.resize(name_size as usize, 0);
        out.extend_from_slice(&b);
    };
    name(id, &mut out);
    let mut off = 0u32;
    for (n, flags, vals) in stats {
        out.extend_from_slice(&flags.to_ne_bytes());
        out.extend_from_slice(&0i16.to_ne_bytes());
        out.extend_from_slice(&(vals.len() as u16).to_ne_bytes());
        out.extend_from_slice(&off.to_ne_bytes());
        out.extend_from_slice(&0u32.to_ne_bytes());
        name(n, &mut out);
        off += vals.len() as u32 * 8;
    }
    for (_, _, vals) in stats {
        for v in *vals {
            out.extend_from_slice(&v.to_ne_bytes());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_stats_blocks_are_summed_per_counter() {
        let hist: &[u64] = &[5, 6];
        let mut bytes = encode(
            "kvm-1/vcpus",
            48,
            &[
                ("exits", KVM_STATS_TYPE_CUMULATIVE, &[10]),
                ("hist", 0, hist),
                ("halt_exits", 0, &[1]),
            ],
        );
        // A second vCPU's block: exits 32, the histogram, halt_exits 2.
        for v in [32u64, 0, 0, 2] {
            bytes.extend_from_slice(&v.to_ne_bytes());
        }
        let (layout, blocks, sums) = parse_vcpu_sums(&bytes).unwrap();
        assert_eq!((layout.id.as_str(), blocks), ("kvm-1/vcpus", 2));
        assert_eq!(
            sums,
            vec![("exits".to_string(), 42), ("halt_exits".to_string(), 3)]
        );
        // No vCPU yet: no blocks, zero sums.
        let header_only = &bytes[..layout.data_offset as usize];
        let (_, blocks, sums) = parse_vcpu_sums(header_only).unwrap();
        assert_eq!(blocks, 0);
        assert!(sums.iter().all(|(_, v)| *v == 0));
        // Half a block is an error, not a guess.
        assert!(matches!(
            parse_vcpu_sums(&bytes[..bytes.len() - 8]),
            Err(StatsError::PartialVcpuBlock { block: 32, .. })
        ));
        // Whatever the bytes: no panic.
        for cut in 0..bytes.len() {
            let _ = parse_vcpu_sums(&bytes[..cut]);
        }
    }

    fn sample() -> Vec<u8> {
        encode(
            "kvm-1234",
            48,
            &[
                ("remote_tlb_flush", KVM_STATS_TYPE_CUMULATIVE, &[7]),
                (
                    "max_mmu_page_hash_collisions",
                    KVM_STATS_TYPE_PEAK | KVM_STATS_UNIT_NONE,
                    &[3],
                ),
                (
                    "halt_poll_fail_hist",
                    KVM_STATS_TYPE_LOG_HIST | KVM_STATS_UNIT_SECONDS,
                    &[1, 2, 3, 4],
                ),
            ],
        )
    }

    #[test]
    fn parses_a_stream() {
        let s = parse(&sample()).unwrap();
        assert_eq!(s.id, "kvm-1234");
        assert_eq!(s.get("remote_tlb_flush"), Some(7));
        assert_eq!(s.stats[1].desc.kind, StatType::Peak);
        assert_eq!(s.stats[2].desc.kind, StatType::LogHist);
        assert_eq!(s.stats[2].desc.unit, StatUnit::Seconds);
        assert_eq!(s.stats[2].values, vec![1, 2, 3, 4]);
    }

    #[test]
    fn reads_through_read_seek_and_file() {
        let bytes = sample();
        let mut r = SeekReader(std::io::Cursor::new(bytes.clone()));
        let l = read_layout(&mut r).unwrap();
        assert_eq!(read_values(&l, &mut r).unwrap(), parse(&bytes).unwrap());
        let d = crate::testutil::TempDir::new("stats");
        d.write("stats", &bytes);
        let mut f = std::fs::File::open(d.path().join("stats")).unwrap();
        assert_eq!(
            read_values(&l, &mut f).unwrap().get("remote_tlb_flush"),
            Some(7)
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let b = sample();
        for n in 0..b.len() {
            assert!(parse(&b[..n]).is_err(), "prefix of {n} bytes accepted");
        }
    }

    #[test]
    fn garbage_never_panics() {
        // A small deterministic xorshift fuzzer: mutate bytes of a valid
        // stream, including the header, and parse.
        let base = sample();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..20_000 {
            let mut b = base.clone();
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % b.len();
                b[i] = (x >> 32) as u8;
            }
            let _ = parse(&b);
        }
        let mut hdr = base.clone();
        hdr[8..12].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(matches!(parse(&hdr), Err(StatsError::BadHeader(_))));
        let mut hdr = base;
        hdr[4..8].copy_from_slice(&0u32.to_ne_bytes());
        assert!(matches!(parse(&hdr), Err(StatsError::BadHeader(_))));
    }
}
