//! perf ring-buffer data: records as the kernel writes them into an
//! event's mmap ring, drained with the same code as `Ring::drain` (records
//! that wrap around the end are reassembled), then each parsed.
//!
//! Input: 1 byte of flags (bit 0: the sample type includes
//! PERF_SAMPLE_GUEST_ID; bit 1: take head and tail from the next 16 bytes,
//! else tail 0 and head = the data length), then the ring's data area.
#![no_main]

use kvmreg::perf::record::{self, BASE_SAMPLE_TYPE, PERF_SAMPLE_GUEST_ID};
use kvmreg::perf::ring::drain_records;
use libfuzzer_sys::fuzz_target;

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let sample_type = if flags & 1 != 0 {
        BASE_SAMPLE_TYPE | PERF_SAMPLE_GUEST_ID
    } else {
        BASE_SAMPLE_TYPE
    };
    let (head, tail, ring) = if flags & 2 != 0 {
        if rest.len() < 16 {
            return;
        }
        (u64_at(rest, 0), u64_at(rest, 8), &rest[16..])
    } else {
        (rest.len() as u64, 0, rest)
    };
    let new_tail = drain_records(ring, head, tail, |rec| {
        let _ = record::parse(rec, sample_type);
    });
    let _ = new_tail;
});
