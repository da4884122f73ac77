//! Parsing `perf_event` ring-buffer records: `PERF_RECORD_SAMPLE` with
//! `PERF_SAMPLE_IP | PERF_SAMPLE_TID` (and the registry's
//! `PERF_SAMPLE_GUEST_ID` when the kernel has it) and `PERF_RECORD_LOST`.
//! Pure functions over bytes, so they can be fed garbage in tests.

use perf_event_open_sys::bindings as sys;

/// The registry kernel's new sample bit (next after
/// `PERF_SAMPLE_WEIGHT_STRUCT`): `{u64 vm_id; u32 vcpu_idx; u32 reserved}`
/// after all other sample fields.
pub const PERF_SAMPLE_GUEST_ID: u64 = 1 << 25;

/// The sample fields this crate asks for.
pub const BASE_SAMPLE_TYPE: u64 = (sys::PERF_SAMPLE_IP | sys::PERF_SAMPLE_TID) as u64;

/// Size of `struct perf_event_header`.
pub const HEADER_SIZE: usize = 8;

/// Where the CPU was when the sample was taken (`PERF_RECORD_MISC_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum CpuMode {
    /// `PERF_RECORD_MISC_CPUMODE_UNKNOWN`, or a value this crate does not
    /// know.
    Unknown,
    /// `PERF_RECORD_MISC_KERNEL`: the host kernel.
    HostKernel,
    /// `PERF_RECORD_MISC_USER`: host user space.
    HostUser,
    /// `PERF_RECORD_MISC_HYPERVISOR`.
    Hypervisor,
    /// `PERF_RECORD_MISC_GUEST_KERNEL`: a guest's kernel.
    GuestKernel,
    /// `PERF_RECORD_MISC_GUEST_USER`: a guest's user space.
    GuestUser,
}

impl CpuMode {
    /// The mode of a record header's `misc` field (its CPU-mode bits).
    pub fn from_misc(misc: u16) -> Self {
        match u32::from(misc) & sys::PERF_RECORD_MISC_CPUMODE_MASK {
            sys::PERF_RECORD_MISC_KERNEL => CpuMode::HostKernel,
            sys::PERF_RECORD_MISC_USER => CpuMode::HostUser,
            sys::PERF_RECORD_MISC_HYPERVISOR => CpuMode::Hypervisor,
            sys::PERF_RECORD_MISC_GUEST_KERNEL => CpuMode::GuestKernel,
            sys::PERF_RECORD_MISC_GUEST_USER => CpuMode::GuestUser,
            _ => CpuMode::Unknown,
        }
    }

    /// True for guest kernel or guest user mode.
    pub fn is_guest(self) -> bool {
        matches!(self, CpuMode::GuestKernel | CpuMode::GuestUser)
    }
}

/// The registry's guest tag of a sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestTag {
    /// 0 when the sample was not taken in guest context.
    pub vm_id: u64,
    /// The vCPU's index in its VM (as [`crate::Vcpu::index`]).
    pub vcpu_idx: u32,
}

/// One sample.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    /// Where the CPU was, from the header's `misc`.
    pub mode: CpuMode,
    /// The instruction pointer: a guest address for guest-mode samples.
    pub ip: u64,
    /// The sampled process (the VMM, for a vCPU thread).
    pub pid: u32,
    /// The sampled thread.
    pub tid: u32,
    /// The kernel's guest tag, when the events were opened with
    /// [`PERF_SAMPLE_GUEST_ID`]; `None` otherwise.
    pub guest: Option<GuestTag>,
}

/// A parsed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// `PERF_RECORD_SAMPLE`.
    Sample(Sample),
    /// `PERF_RECORD_LOST`: this many records dropped because the ring was
    /// full.
    Lost(u64),
    /// Any other record type (mmap, comm, throttle...): skipped.
    Other(u32),
}

/// Why a record did not parse.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RecordError {
    /// The record is shorter than a `perf_event_header`.
    #[error("record of {size} bytes is shorter than its header")]
    TooShort {
        /// The record's length in bytes.
        size: usize,
    },
    /// The record ends before the fields its type and `sample_type` say
    /// it holds.
    #[error("record type {kind} of {size} bytes is too short for its fields")]
    Truncated {
        /// The record type (`PERF_RECORD_*`).
        kind: u32,
        /// The record's length in bytes.
        size: usize,
    },
    /// A sample of a `sample_type` (given) other than [`BASE_SAMPLE_TYPE`]
    /// with or without [`PERF_SAMPLE_GUEST_ID`].
    #[error("sample_type {0:#x} has fields this parser does not handle")]
    UnsupportedSampleType(u64),
}

fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    let s = b.get(at..at.checked_add(8)?)?;
    let mut a = [0u8; 8];
    a.copy_from_slice(s);
    Some(u64::from_ne_bytes(a))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    let mut a = [0u8; 4];
    a.copy_from_slice(s);
    Some(u32::from_ne_bytes(a))
}

/// `(type, misc, size)` of a record header.
pub fn header(b: &[u8]) -> Option<(u32, u16, u16)> {
    let kind = u32_at(b, 0)?;
    let misc = u16::from_ne_bytes([*b.get(4)?, *b.get(5)?]);
    let size = u16::from_ne_bytes([*b.get(6)?, *b.get(7)?]);
    Some((kind, misc, size))
}

/// Parse one whole record (header included). `sample_type` must be
/// [`BASE_SAMPLE_TYPE`], optionally with [`PERF_SAMPLE_GUEST_ID`].
pub fn parse(rec: &[u8], sample_type: u64) -> Result<Record, RecordError> {
    let (kind, misc, _) = header(rec).ok_or(RecordError::TooShort { size: rec.len() })?;
    let trunc = RecordError::Truncated {
        kind,
        size: rec.len(),
    };
    match kind {
        sys::PERF_RECORD_SAMPLE => {
            if sample_type & !PERF_SAMPLE_GUEST_ID != BASE_SAMPLE_TYPE {
                return Err(RecordError::UnsupportedSampleType(sample_type));
            }
            let ip = u64_at(rec, 8).ok_or(trunc.clone())?;
            let pid = u32_at(rec, 16).ok_or(trunc.clone())?;
            let tid = u32_at(rec, 20).ok_or(trunc.clone())?;
            let guest = if sample_type & PERF_SAMPLE_GUEST_ID != 0 {
                Some(GuestTag {
                    vm_id: u64_at(rec, 24).ok_or(trunc.clone())?,
                    vcpu_idx: u32_at(rec, 32).ok_or(trunc)?,
                })
            } else {
                None
            };
            Ok(Record::Sample(Sample {
                mode: CpuMode::from_misc(misc),
                ip,
                pid,
                tid,
                guest,
            }))
        }
        sys::PERF_RECORD_LOST => Ok(Record::Lost(u64_at(rec, 16).ok_or(trunc)?)),
        k => Ok(Record::Other(k)),
    }
}

/// Build a sample record, for tests.
#[doc(hidden)]
pub fn encode_sample(misc: u16, ip: u64, pid: u32, tid: u32, guest: Option<GuestTag>) -> Vec<u8> {
    let size: u16 = if guest.is_some() { 40 } else { 24 };
    let mut b = Vec::new();
    b.extend(sys::PERF_RECORD_SAMPLE.to_ne_bytes());
    b.extend(misc.to_ne_bytes());
    b.extend(size.to_ne_bytes());
    b.extend(ip.to_ne_bytes());
    b.extend(pid.to_ne_bytes());
    b.extend(tid.to_ne_bytes());
    if let Some(g) = guest {
        b.extend(g.vm_id.to_ne_bytes());
        b.extend(g.vcpu_idx.to_ne_bytes());
        b.extend(0u32.to_ne_bytes());
    }
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_with_and_without_guest_id() {
        let misc = sys::PERF_RECORD_MISC_GUEST_KERNEL as u16;
        let r = encode_sample(misc, 0x1103, 10, 11, None);
        assert_eq!(
            parse(&r, BASE_SAMPLE_TYPE).unwrap(),
            Record::Sample(Sample {
                mode: CpuMode::GuestKernel,
                ip: 0x1103,
                pid: 10,
                tid: 11,
                guest: None
            })
        );
        let tag = GuestTag {
            vm_id: 5,
            vcpu_idx: 1,
        };
        let r = encode_sample(sys::PERF_RECORD_MISC_GUEST_USER as u16, 1, 2, 3, Some(tag));
        let Record::Sample(s) = parse(&r, BASE_SAMPLE_TYPE | PERF_SAMPLE_GUEST_ID).unwrap() else {
            panic!()
        };
        assert_eq!((s.mode, s.guest), (CpuMode::GuestUser, Some(tag)));
        assert!(s.mode.is_guest());
    }

    #[test]
    fn lost_and_other_records() {
        let mut b = Vec::new();
        b.extend(sys::PERF_RECORD_LOST.to_ne_bytes());
        b.extend(0u16.to_ne_bytes());
        b.extend(24u16.to_ne_bytes());
        b.extend(7u64.to_ne_bytes());
        b.extend(33u64.to_ne_bytes());
        assert_eq!(parse(&b, BASE_SAMPLE_TYPE).unwrap(), Record::Lost(33));
        b[0] = 3; // PERF_RECORD_COMM
        assert_eq!(parse(&b, BASE_SAMPLE_TYPE).unwrap(), Record::Other(3));
    }

    #[test]
    fn short_records_are_errors() {
        let r = encode_sample(0, 1, 2, 3, None);
        for n in 0..r.len() {
            assert!(parse(&r[..n], BASE_SAMPLE_TYPE).is_err(), "{n}");
        }
        // A sample record without the guest tag the sample_type promises.
        assert!(parse(&r, BASE_SAMPLE_TYPE | PERF_SAMPLE_GUEST_ID).is_err());
        assert!(parse(&r, BASE_SAMPLE_TYPE | 4).is_err());
    }
}
