//! System-wide `cpu-clock` sampling (one event per online CPU, `pid` -1)
//! with `PERF_SAMPLE_IP | PERF_SAMPLE_TID | PERF_SAMPLE_GUEST_ID`, falling
//! back to no `PERF_SAMPLE_GUEST_ID` where the kernel rejects the bit with
//! `EINVAL`. A thread drains the ring buffers while VMs come and go and
//! checks every sample: its size, and that `vm_id` is nonzero exactly for
//! samples marked guest, `vcpu_idx` 0 for host samples, `reserved` 0.

use crate::Failures;
use perf_event_open_sys as perf;
use std::collections::{BTreeMap, HashSet};
use std::io;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::time::Duration;

/// `PERF_SAMPLE_GUEST_ID` from the patched uapi header; not in the bindings.
pub const PERF_SAMPLE_GUEST_ID: u64 = 1 << 25;
const SAMPLE_PERIOD_NS: u64 = 1_000_000;
const RING_PAGES: usize = 64;

struct Ring {
    fd: libc::c_int,
    ring: *mut u8,
    len: usize,
    page: usize,
}

// SAFETY: the mapping and fd are owned by the Ring alone and only used by
// the thread that owns it.
unsafe impl Send for Ring {}

impl Drop for Ring {
    fn drop(&mut self) {
        // SAFETY: unmapping and closing what open_ring() created, once.
        unsafe {
            libc::munmap(self.ring.cast(), self.len);
            libc::close(self.fd);
        }
    }
}

/// The sampling events of all online CPUs.
pub struct Perf {
    rings: Vec<Ring>,
    pub guest_id: bool,
    pub record_size: usize,
    pub cpus: usize,
}

fn open_ring(cpu: i32, sample_type: u64) -> io::Result<Ring> {
    let mut attr = perf::bindings::perf_event_attr {
        type_: perf::bindings::PERF_TYPE_SOFTWARE,
        size: std::mem::size_of::<perf::bindings::perf_event_attr>() as u32,
        config: u64::from(perf::bindings::PERF_COUNT_SW_CPU_CLOCK),
        sample_type,
        ..Default::default()
    };
    attr.__bindgen_anon_1.sample_period = SAMPLE_PERIOD_NS;
    // SAFETY: attr is a valid, fully initialised perf_event_attr.
    let fd = unsafe {
        perf::perf_event_open(
            &mut attr,
            -1,
            cpu,
            -1,
            perf::bindings::PERF_FLAG_FD_CLOEXEC.into(),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    let len = page * (1 + RING_PAGES);
    // SAFETY: maps the event's ring buffer (metadata page + 2^n pages).
    let ring = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if ring == libc::MAP_FAILED {
        let e = io::Error::last_os_error();
        // SAFETY: closing the fd opened above, once.
        unsafe { libc::close(fd) };
        return Err(e);
    }
    Ok(Ring {
        fd,
        ring: ring.cast(),
        len,
        page,
    })
}

/// The online CPUs, from `/sys/devices/system/cpu/online` (`0-3,5`).
fn online_cpus() -> Vec<i32> {
    let text = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.parse::<i32>(), b.parse::<i32>()) {
            cpus.extend(a..=b.min(a + 4096));
        }
    }
    if cpus.is_empty() {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        cpus.extend(0..n as i32);
    }
    cpus
}

/// Opens the events (enabled); `Err` says why perf is unusable.
pub fn open() -> Result<Perf, String> {
    let cpus = online_cpus();
    let base = u64::from(perf::bindings::PERF_SAMPLE_IP | perf::bindings::PERF_SAMPLE_TID);
    let mut guest_id = true;
    let mut rings = Vec::with_capacity(cpus.len());
    for &cpu in &cpus {
        let extra = if guest_id { PERF_SAMPLE_GUEST_ID } else { 0 };
        match open_ring(cpu, base | extra) {
            Ok(r) => rings.push(r),
            Err(e) if guest_id && rings.is_empty() && e.raw_os_error() == Some(libc::EINVAL) => {
                guest_id = false;
                rings.push(
                    open_ring(cpu, base)
                        .map_err(|e| format!("perf_event_open(cpu-clock, cpu {cpu}): {e}"))?,
                );
            }
            Err(e) => return Err(format!("perf_event_open(cpu-clock, cpu {cpu}): {e}")),
        }
    }
    Ok(Perf {
        rings,
        guest_id,
        record_size: if guest_id { 40 } else { 24 },
        cpus: cpus.len(),
    })
}

#[derive(Default)]
pub struct PerfStats {
    pub samples: u64,
    pub bad_size: BTreeMap<usize, u64>,
    pub guest_mode: u64,
    pub guest_id_samples: u64,
    pub vm_ids: HashSet<u64>,
    pub vcpu_idx: BTreeMap<u32, u64>,
    pub lost: u64,
    pub other: u64,
    pub failures: Failures,
}

impl PerfStats {
    fn record(&mut self, rec: &[u8], size: usize, guest_id: bool) {
        let u32_at = |o: usize| u32::from_le_bytes([rec[o], rec[o + 1], rec[o + 2], rec[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        let ty = u32_at(0);
        let misc = u32::from(u16::from_le_bytes([rec[4], rec[5]]));
        if ty == perf::bindings::PERF_RECORD_LOST {
            if rec.len() >= 24 {
                self.lost += u64_at(16);
            }
            return;
        }
        if ty != perf::bindings::PERF_RECORD_SAMPLE {
            self.other += 1;
            return;
        }
        self.samples += 1;
        if rec.len() != size {
            *self.bad_size.entry(rec.len()).or_default() += 1;
            return;
        }
        let mode = misc & perf::bindings::PERF_RECORD_MISC_CPUMODE_MASK;
        let guest = mode == perf::bindings::PERF_RECORD_MISC_GUEST_KERNEL
            || mode == perf::bindings::PERF_RECORD_MISC_GUEST_USER;
        self.guest_mode += u64::from(guest);
        if !guest_id {
            return;
        }
        let (vm_id, vcpu_idx, reserved) = (u64_at(24), u32_at(32), u32_at(36));
        if reserved != 0 {
            self.failures
                .add(format!("sample with reserved {reserved:#x}"));
        }
        if vm_id != 0 {
            self.guest_id_samples += 1;
            self.vm_ids.insert(vm_id);
            *self.vcpu_idx.entry(vcpu_idx).or_default() += 1;
            if !guest {
                self.failures.add(format!(
                    "vm_id {vm_id} on a sample not marked guest (misc {misc:#x})"
                ));
            }
        } else if guest {
            self.failures
                .add(format!("guest sample (misc {misc:#x}) with vm_id 0"));
        } else if vcpu_idx != 0 {
            self.failures
                .add(format!("host sample with vcpu_idx {vcpu_idx}"));
        }
    }
}

impl Ring {
    /// Consumes every record between data_tail and data_head.
    fn drain(&self, st: &mut PerfStats, size: usize, guest_id: bool) {
        let meta = self.ring.cast::<perf::bindings::perf_event_mmap_page>();
        // SAFETY: the metadata page is mapped read-write for the Ring's
        // life; the kernel moves data_head concurrently, hence volatile,
        // and the acquire fence orders the data reads after it.
        let (head, tail) = unsafe {
            let head = std::ptr::read_volatile(std::ptr::addr_of!((*meta).data_head));
            fence(Ordering::Acquire);
            (
                head,
                std::ptr::read_volatile(std::ptr::addr_of!((*meta).data_tail)),
            )
        };
        let data_len = (self.len - self.page) as u64;
        // SAFETY: the data area follows the metadata page and is data_len
        // bytes; the index is reduced modulo data_len.
        let byte = |o: u64| unsafe {
            std::ptr::read_volatile(self.ring.add(self.page + (o % data_len) as usize))
        };
        let mut off = tail;
        let mut rec = Vec::with_capacity(64);
        while off + 8 <= head {
            let len = u64::from(u16::from_le_bytes([byte(off + 6), byte(off + 7)]));
            if len < 8 || off + len > head {
                st.failures.add(format!(
                    "corrupt ring: record of {len} bytes at {off}, head {head}"
                ));
                off = head;
                break;
            }
            rec.clear();
            rec.extend((0..len).map(|i| byte(off + i)));
            st.record(&rec, size, guest_id);
            off += len;
        }
        fence(Ordering::SeqCst);
        // SAFETY: as above; writing data_tail hands the space back.
        unsafe { std::ptr::write_volatile(std::ptr::addr_of_mut!((*meta).data_tail), off) };
    }

    fn disable(&self) {
        // SAFETY: fd is a perf event fd owned by self.
        unsafe { perf::ioctls::DISABLE(self.fd, 0) };
    }
}

/// Drains every 50 ms until `stop`, then disables and drains once more.
pub fn drain_loop(p: Perf, stop: &AtomicBool) -> PerfStats {
    let mut st = PerfStats::default();
    while !stop.load(Ordering::Relaxed) {
        for r in &p.rings {
            r.drain(&mut st, p.record_size, p.guest_id);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    for r in &p.rings {
        r.disable();
        r.drain(&mut st, p.record_size, p.guest_id);
    }
    st
}
