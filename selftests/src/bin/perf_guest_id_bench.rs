//! The `perf-bench` suite: a benchmark, not a test. It measures what
//! `PERF_SAMPLE_GUEST_ID` costs when a vCPU is sampled at a high rate.
//!
//! One vCPU spins in a real-mode loop that exits to userspace (`OUT`) every
//! `LOOP_ITERS` iterations; the exits per second are the work the guest gets
//! done. In rounds, in the same run, the vCPU thread is sampled by a
//! `cpu-clock` event with `PERF_SAMPLE_IP | PERF_SAMPLE_TID` ("without"), by
//! one that also has `PERF_SAMPLE_GUEST_ID` ("with"), or not at all ("none"),
//! each mode for `INTERVAL`, the order rotating every round so that drift
//! (other load, thermal, the emulator's translation cache) hits all modes
//! alike. It prints the work rates and sample rates per mode and the ratio
//! with/without, as TAP diagnostics, and one TAP point that says it ran
//! (a skip where the kernel lacks the bit).

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd};
use kvmreg_fixture::bench::median_ci;
use perf_event_open_sys as perf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

/// `PERF_SAMPLE_GUEST_ID` from the patched uapi header; not in the bindings.
const PERF_SAMPLE_GUEST_ID: u64 = 1 << 25;
const MEM_SIZE: usize = 0x10000;
const LOOP_ADDR: u64 = 0x1000;
/// `l: mov cx, 0x1000; d: dec cx; jnz d; out 0x11, al; jmp l`
const LOOP_CODE: &[u8] = &[0xb9, 0x00, 0x10, 0x49, 0x75, 0xfd, 0xe6, 0x11, 0xeb, 0xf6];
const LOOP_PORT: u16 = 0x11;
/// 1 ms: more than 10x what one sample costs the vCPU under TCG (50-70 us
/// measured), so that the vCPU mostly runs and a sample's extra cost is a
/// fraction of its work, not of a saturated sampler's.
const SAMPLE_PERIOD_NS: u64 = 1_000_000;
const INTERVAL: Duration = Duration::from_secs(1);
/// 21 rounds: the median's interval is then the 6th to 16th ratio.
const ROUNDS: usize = 21;
const RING_PAGES: usize = 512;

#[derive(Clone, Copy, Default)]
struct Totals {
    exits: u64,
    samples: u64,
    lost: u64,
    secs: f64,
}

fn main() {
    println!("TAP version 13");
    println!("1..1");
    match run() {
        Ok(Some(summary)) => println!("ok 1 benchmark ran # {summary}"),
        Ok(None) => println!("ok 1 # SKIP PERF_SAMPLE_GUEST_ID is not supported (EINVAL)"),
        Err(e) => {
            println!("not ok 1 benchmark ran # {e}");
            std::process::exit(1);
        }
    }
}

fn run() -> Result<Option<String>, String> {
    let kvm = Kvm::new().map_err(|e| format!("open /dev/kvm: {e}"))?;
    let vcpu = setup_vcpu(&kvm)?;
    let exits = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (tid_tx, tid_rx) = mpsc::channel();
    let (exits_v, stop_v) = (exits.clone(), stop.clone());
    let runner = std::thread::spawn(move || spin(vcpu, &exits_v, &stop_v, &tid_tx));
    let tid = tid_rx
        .recv()
        .map_err(|_| "the vCPU thread died".to_string())?;

    let without = match Sampler::open(tid, 0) {
        Ok(s) => s,
        Err(e) => {
            stop.store(true, Ordering::Relaxed);
            let _ = runner.join();
            return Err(e);
        }
    };
    let with = match Sampler::open(tid, PERF_SAMPLE_GUEST_ID) {
        Ok(s) => Some(s),
        Err(e) if e.contains("(os error 22)") => None,
        Err(e) => {
            stop.store(true, Ordering::Relaxed);
            let _ = runner.join();
            return Err(e);
        }
    };
    let Some(with) = with else {
        stop.store(true, Ordering::Relaxed);
        let _ = runner.join();
        return Ok(None);
    };

    // Warm up: the first interval of a fresh vCPU is not representative.
    std::thread::sleep(INTERVAL);
    let mut totals = [Totals::default(); 3];
    let mut round_ratios = Vec::with_capacity(ROUNDS);
    let samplers = [None, Some(&without), Some(&with)];
    for round in 0..ROUNDS {
        let mut rates = [0.0f64; 3];
        for k in 0..3 {
            let mode = (round + k) % 3;
            let sampler = samplers[mode];
            if let Some(s) = sampler {
                s.discard();
                s.ioctl(true)?;
            }
            let e0 = exits.load(Ordering::Relaxed);
            let t0 = Instant::now();
            std::thread::sleep(INTERVAL);
            let e1 = exits.load(Ordering::Relaxed);
            let secs = t0.elapsed().as_secs_f64();
            rates[mode] = (e1 - e0) as f64 / secs;
            let t = &mut totals[mode];
            t.exits += e1 - e0;
            t.secs += secs;
            if let Some(s) = sampler {
                s.ioctl(false)?;
                let (n, lost) = s.count();
                t.samples += n;
                t.lost += lost;
            }
        }
        round_ratios.push(rates[2] / rates[1]);
    }
    stop.store(true, Ordering::Relaxed);
    runner
        .join()
        .map_err(|_| "the vCPU thread panicked".to_string())??;

    let names = ["none", "without GUEST_ID", "with GUEST_ID"];
    let rate = |t: &Totals| t.exits as f64 / t.secs;
    for (name, t) in names.iter().zip(&totals) {
        println!(
            "# {name:>16}: {:>10.0} exits/s, {:>8.0} samples/s, {} lost, {:.2} s",
            rate(t),
            t.samples as f64 / t.secs,
            t.lost,
            t.secs
        );
    }
    // Share of the vCPU's time that sampling took, and per sample.
    let cost = |t: &Totals| {
        let share = 1.0 - rate(t) / rate(&totals[0]);
        (share, share / (t.samples as f64 / t.secs))
    };
    let (share_wo, per_wo) = cost(&totals[1]);
    let (share_w, per_w) = cost(&totals[2]);
    let ratio = rate(&totals[2]) / rate(&totals[1]);
    println!(
        "# sampling cost: without {:.1}% ({:.0} ns/sample), with {:.1}% ({:.0} ns/sample)",
        share_wo * 100.0,
        per_wo * 1e9,
        share_w * 100.0,
        per_w * 1e9
    );
    let (min, max) = round_ratios
        .iter()
        .fold((f64::MAX, f64::MIN), |(a, b), &r| (a.min(r), b.max(r)));
    let (lo, med, hi) = median_ci(round_ratios);
    println!(
        "# work rate with/without GUEST_ID: {ratio:.3} overall; per round median {med:.3} [95% interval {lo:.3}, {hi:.3}], min {min:.3}, max {max:.3} ({ROUNDS} rounds of {} ms per mode, period {} us)",
        INTERVAL.as_millis(),
        SAMPLE_PERIOD_NS / 1000
    );
    let verdict = if lo >= 0.98 {
        "met"
    } else if hi < 0.98 {
        "not met"
    } else {
        "undecided: the interval reaches below 0.98"
    };
    println!("# goal: at most 2% of the work lost to the bit (ratio >= 0.98): {verdict}");
    Ok(Some(format!("with/without = {med:.3} [{lo:.3}, {hi:.3}]")))
}

fn setup_vcpu(kvm: &Kvm) -> Result<VcpuFd, String> {
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    // SAFETY: a fresh private anonymous mapping that is never unmapped.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if ptr == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the mapping is MEM_SIZE bytes, readable and writable.
    let mem = unsafe { std::slice::from_raw_parts_mut(ptr.cast::<u8>(), MEM_SIZE) };
    mem[LOOP_ADDR as usize..][..LOOP_CODE.len()].copy_from_slice(LOOP_CODE);
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: ptr as u64,
        flags: 0,
    };
    // SAFETY: the region is a live mapping that outlives the VM (never unmapped).
    unsafe { vm.set_user_memory_region(region) }
        .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
    let vcpu = vm
        .create_vcpu(0)
        .map_err(|e| format!("KVM_CREATE_VCPU: {e}"))?;
    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| format!("KVM_GET_SREGS: {e}"))?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs)
        .map_err(|e| format!("KVM_SET_SREGS: {e}"))?;
    let mut regs = vcpu.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
    regs.rip = LOOP_ADDR;
    regs.rflags = 2;
    vcpu.set_regs(&regs)
        .map_err(|e| format!("KVM_SET_REGS: {e}"))?;
    // The VM fd may be dropped: the vCPU fd keeps the VM alive.
    Ok(vcpu)
}

fn spin(
    mut vcpu: VcpuFd,
    exits: &AtomicU64,
    stop: &AtomicBool,
    tid_tx: &mpsc::Sender<libc::pid_t>,
) -> Result<(), String> {
    // SAFETY: gettid has no preconditions.
    let _ = tid_tx.send(unsafe { libc::gettid() });
    while !stop.load(Ordering::Relaxed) {
        match vcpu.run() {
            Ok(VcpuExit::IoOut(LOOP_PORT, _)) => {
                exits.fetch_add(1, Ordering::Relaxed);
            }
            Ok(other) => return Err(format!("unexpected exit: {other:?}")),
            Err(e) => return Err(format!("KVM_RUN: {e}")),
        }
    }
    Ok(())
}

struct Sampler {
    fd: libc::c_int,
    ring: *mut u8,
    ring_len: usize,
    page: usize,
}

impl Sampler {
    fn open(tid: libc::pid_t, extra: u64) -> Result<Self, String> {
        let mut attr = perf::bindings::perf_event_attr {
            type_: perf::bindings::PERF_TYPE_SOFTWARE,
            size: std::mem::size_of::<perf::bindings::perf_event_attr>() as u32,
            config: u64::from(perf::bindings::PERF_COUNT_SW_CPU_CLOCK),
            sample_type: u64::from(
                perf::bindings::PERF_SAMPLE_IP | perf::bindings::PERF_SAMPLE_TID,
            ) | extra,
            ..Default::default()
        };
        attr.__bindgen_anon_1.sample_period = SAMPLE_PERIOD_NS;
        attr.set_disabled(1);
        // SAFETY: attr is a valid, fully initialised perf_event_attr.
        let fd = unsafe {
            perf::perf_event_open(
                &mut attr,
                tid,
                -1,
                -1,
                perf::bindings::PERF_FLAG_FD_CLOEXEC.into(),
            )
        };
        if fd < 0 {
            return Err(format!(
                "perf_event_open(sample_type {:#x}): {}",
                attr.sample_type,
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let ring_len = page * (1 + RING_PAGES);
        // SAFETY: maps the event's ring buffer (metadata page + 2^n pages).
        let ring = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                ring_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ring == libc::MAP_FAILED {
            let e = std::io::Error::last_os_error();
            // SAFETY: closing the fd opened above, once.
            unsafe { libc::close(fd) };
            return Err(format!("mmap perf ring: {e}"));
        }
        Ok(Self {
            fd,
            ring: ring.cast(),
            ring_len,
            page,
        })
    }

    fn ioctl(&self, enable: bool) -> Result<(), String> {
        // SAFETY: fd is a perf event fd owned by self.
        let r = unsafe {
            if enable {
                perf::ioctls::ENABLE(self.fd, 0)
            } else {
                perf::ioctls::DISABLE(self.fd, 0)
            }
        };
        if r != 0 {
            return Err(format!(
                "PERF_EVENT_IOC_{}ABLE: {}",
                if enable { "EN" } else { "DIS" },
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    fn meta(&self) -> *mut perf::bindings::perf_event_mmap_page {
        self.ring.cast()
    }

    /// Marks everything in the ring as read.
    fn discard(&self) {
        let meta = self.meta();
        // SAFETY: the metadata page is mapped read-write; the event is
        // disabled, so data_head does not move.
        unsafe {
            let head = std::ptr::read_volatile(&(*meta).data_head);
            std::ptr::write_volatile(&mut (*meta).data_tail, head);
        }
    }

    /// Counts the samples and lost samples since the last discard().
    fn count(&self) -> (u64, u64) {
        let meta = self.meta();
        // SAFETY: as in discard(); the acquire fence orders the data reads.
        let (head, tail) = unsafe {
            (
                std::ptr::read_volatile(&(*meta).data_head),
                std::ptr::read_volatile(&(*meta).data_tail),
            )
        };
        std::sync::atomic::fence(Ordering::Acquire);
        let size = (self.ring_len - self.page) as u64;
        // SAFETY: the data area follows the metadata page and is `size` bytes.
        let data = unsafe { std::slice::from_raw_parts(self.ring.add(self.page), size as usize) };
        let byte = |off: u64| data[(off % size) as usize];
        let u64_at = |off: u64| u64::from_le_bytes(std::array::from_fn(|i| byte(off + i as u64)));
        let (mut samples, mut lost) = (0, 0);
        let mut off = tail;
        while off + 8 <= head {
            let ty = u32::from_le_bytes(std::array::from_fn(|i| byte(off + i as u64)));
            let len = u64::from(u16::from_le_bytes([byte(off + 6), byte(off + 7)]));
            if len < 8 {
                break;
            }
            if ty == perf::bindings::PERF_RECORD_SAMPLE {
                samples += 1;
            } else if ty == perf::bindings::PERF_RECORD_LOST {
                lost += u64_at(off + 16);
            }
            off += len;
        }
        (samples, lost)
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        // SAFETY: unmapping and closing what open() created, exactly once.
        unsafe {
            libc::munmap(self.ring.cast(), self.ring_len);
            libc::close(self.fd);
        }
    }
}
