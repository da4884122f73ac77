//! The mmap'ed ring buffer of one perf event.

use perf_event_open_sys::bindings::perf_event_mmap_page;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

/// A mapped ring: one metadata page and `2^n` data pages.
pub struct Ring {
    base: *mut u8,
    len: usize,
    data_offset: usize,
    data_size: usize,
}

// SAFETY: the mapping is owned by the Ring and only accessed through &mut.
unsafe impl Send for Ring {}

impl Ring {
    /// Map `data_pages` (a power of two) data pages of `fd`.
    pub fn new(fd: &OwnedFd, data_pages: usize) -> io::Result<Ring> {
        if !data_pages.is_power_of_two() {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
        // SAFETY: sysconf has no memory effects.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = usize::try_from(page).map_err(|_| io::Error::last_os_error())?;
        let len = page * (1 + data_pages);
        // SAFETY: a fresh shared mapping of the event fd; failure is
        // MAP_FAILED, checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let meta = p.cast::<perf_event_mmap_page>();
        // SAFETY: the first page is the metadata page, mapped above; the
        // kernel fills data_offset/data_size (0 on kernels before 4.1).
        let (off, size) = unsafe {
            (
                std::ptr::addr_of!((*meta).data_offset).read_volatile(),
                std::ptr::addr_of!((*meta).data_size).read_volatile(),
            )
        };
        let (data_offset, data_size) = if size == 0 {
            (page, page * data_pages)
        } else {
            (off as usize, size as usize)
        };
        if data_offset.checked_add(data_size).is_none_or(|e| e > len) {
            // SAFETY: p/len is the mapping made above.
            unsafe { libc::munmap(p, len) };
            return Err(io::Error::from(io::ErrorKind::InvalidData));
        }
        Ok(Ring {
            base: p.cast(),
            len,
            data_offset,
            data_size,
        })
    }

    /// Hand every complete record now in the ring to `f`, then free their
    /// space. Records that wrap are copied into one buffer.
    pub fn drain(&mut self, mut f: impl FnMut(&[u8])) {
        let meta = self.base.cast::<perf_event_mmap_page>();
        // SAFETY: meta points to the mapped metadata page, which stays
        // mapped while self lives; data_head and data_tail are naturally
        // aligned u64s (offsets 1024 and 1032 of the page) that the kernel
        // and this reader access only atomically. perf's protocol
        // (include/uapi/linux/perf_event.h): load data_head with acquire
        // semantics (the kernel publishes it with a release store after
        // writing the records), and store data_tail with release semantics
        // once the records are read, so the kernel never overwrites a
        // record still being read.
        let (head, tail) = unsafe {
            (
                AtomicU64::from_ptr(std::ptr::addr_of_mut!((*meta).data_head)),
                AtomicU64::from_ptr(std::ptr::addr_of_mut!((*meta).data_tail)),
            )
        };
        let head_now = head.load(Ordering::Acquire);
        // Only this reader writes data_tail.
        let tail_now = tail.load(Ordering::Relaxed);
        // SAFETY: data_offset + data_size lies within the mapping (checked).
        let data =
            unsafe { std::slice::from_raw_parts(self.base.add(self.data_offset), self.data_size) };
        let new_tail = drain_records(data, head_now, tail_now, &mut f);
        tail.store(new_tail, Ordering::Release);
    }
}

/// Hand every complete record of a ring's data area to `f`, given the
/// kernel's `data_head` and the reader's `data_tail` (free-running byte
/// counters; a record may wrap around the end of `data`), and return the
/// new tail. Records that wrap are copied into one buffer. Pure, so the
/// fuzzer and the tests run the same code as [`Ring::drain`].
///
/// More pending bytes than the ring holds (the kernel never writes past the
/// tail, so only corrupt counters do this) drops everything up to head, as
/// a corrupt record size does, instead of reading the ring over and over.
pub fn drain_records(data: &[u8], head: u64, mut tail: u64, mut f: impl FnMut(&[u8])) -> u64 {
    let size = data.len() as u64;
    if head.wrapping_sub(tail) > size {
        return head;
    }
    let mut buf = Vec::new();
    while head.wrapping_sub(tail) >= super::record::HEADER_SIZE as u64 {
        let copy = |from: u64, n: usize, out: &mut Vec<u8>| {
            out.clear();
            for i in 0..n as u64 {
                // size > 0 here: at least a header is pending and fits.
                out.push(data[(from.wrapping_add(i) % size) as usize]);
            }
        };
        copy(tail, super::record::HEADER_SIZE, &mut buf);
        let rec_size = u16::from_ne_bytes([buf[6], buf[7]]) as u64;
        if rec_size < super::record::HEADER_SIZE as u64 || rec_size > head.wrapping_sub(tail) {
            // A corrupt size: drop everything up to head.
            tail = head;
            break;
        }
        copy(tail, rec_size as usize, &mut buf);
        f(&buf);
        tail = tail.wrapping_add(rec_size);
    }
    tail
}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: base/len is the mapping made in new().
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::perf::record::{self, Record, BASE_SAMPLE_TYPE};

    /// Write `bytes` into a ring of `size` bytes starting at counter `at`.
    fn put(ring: &mut [u8], at: u64, bytes: &[u8]) {
        let size = ring.len() as u64;
        for (i, b) in bytes.iter().enumerate() {
            ring[(at.wrapping_add(i as u64) % size) as usize] = *b;
        }
    }

    #[test]
    fn records_that_wrap_are_reassembled() {
        let mut ring = vec![0u8; 64];
        let a = record::encode_sample(0, 0x1000, 1, 2, None);
        let b = record::encode_sample(0, 0x2000, 1, 2, None);
        // Counters well past one lap; b (ring offsets 54..78) straddles
        // the end of the 64-byte ring.
        let tail = 64 * 3 + 30;
        put(&mut ring, tail, &a);
        put(&mut ring, tail + a.len() as u64, &b);
        let head = tail + (a.len() + b.len()) as u64;
        let mut ips = Vec::new();
        let new_tail = drain_records(&ring, head, tail, |r| {
            if let Ok(Record::Sample(s)) = record::parse(r, BASE_SAMPLE_TYPE) {
                ips.push(s.ip);
            }
        });
        assert_eq!(ips, vec![0x1000, 0x2000]);
        assert_eq!(new_tail, head);
        // A partial record stays for the next drain.
        assert_eq!(drain_records(&ring, tail + 4, tail, |_| panic!()), tail);
    }

    /// Found by the perf_records fuzz target (a timeout): head 0x10e below
    /// tail 0x1800_0400_0000, i.e. 2^64 - 0x1800_0400_0000 + 0x10e bytes
    /// "pending" in an 88-byte ring, was drained record by record, the
    /// ring's few records over and over for about 2^60 rounds.
    #[test]
    fn fuzz_perf_ring_more_pending_than_the_ring_holds_is_dropped() {
        // The fuzz input: flags, head, tail (little-endian), ring data.
        let input = include_bytes!("../../tests/data/fuzz/perf_records-timeout-head-behind-tail");
        let word = |at: usize| u64::from_le_bytes(input[at..at + 8].try_into().unwrap());
        let (head, tail, ring) = (word(1), word(9), &input[17..]);
        assert_eq!((head, tail, ring.len()), (0x10e, 0x1800_0400_0000, 88));
        let mut records = 0;
        let new_tail = drain_records(ring, head, tail, |_| {
            records += 1;
            assert!(records <= 88 / 8, "more records than the ring can hold");
        });
        assert_eq!((new_tail, records), (head, 0));
        // Likewise one byte more than the ring holds, and any data at all
        // pending in an empty ring.
        assert_eq!(drain_records(ring, 89, 0, |_| panic!()), 89);
        assert_eq!(drain_records(&[], 24, 0, |_| panic!()), 24);
    }

    /// Found while fixing the above: counters that wrap around u64::MAX
    /// (head below tail, fewer bytes pending than the ring holds) overflowed
    /// in `tail + i`.
    #[test]
    fn counters_wrapping_around_u64_max() {
        let mut ring = vec![0u8; 64];
        let a = record::encode_sample(0, 0x1000, 1, 2, None);
        // Ring offset 54; the counters wrap to 0 ten bytes into the record.
        let tail = u64::MAX - 9;
        put(&mut ring, tail, &a);
        let head = tail.wrapping_add(a.len() as u64);
        let mut ips = Vec::new();
        let new_tail = drain_records(&ring, head, tail, |r| {
            if let Ok(Record::Sample(s)) = record::parse(r, BASE_SAMPLE_TYPE) {
                ips.push(s.ip);
            }
        });
        assert_eq!((ips, new_tail), (vec![0x1000], head));
    }
}
