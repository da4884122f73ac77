//! The `smoke` suite (TAP): proves that KVM and guest-mode perf sampling
//! work in the test VM, on any 6.12 kernel, patched or not.
//!
//! 1. `/dev/kvm` exists and a VM can be created;
//! 2. a vCPU runs real-mode code to a known exit (`OUT 0x10, 0x42`, `HLT`);
//! 3. a `cpu-clock` sampling event on the vCPU thread, while the vCPU spins
//!    in a known loop, yields samples marked `PERF_RECORD_MISC_GUEST_KERNEL`
//!    whose IP lies inside that loop.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use perf_event_open_sys as perf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

const MEM_SIZE: usize = 0x10000;
/// `mov al, 0x42; out 0x10, al; hlt`
const EXIT_CODE_ADDR: u64 = 0x1000;
const EXIT_CODE: &[u8] = &[0xb0, 0x42, 0xe6, 0x10, 0xf4];
/// `l: mov cx, 0xffff; d: dec cx; jnz d; out 0x11, al; jmp l`
const LOOP_ADDR: u64 = 0x1100;
const LOOP_CODE: &[u8] = &[0xb9, 0xff, 0xff, 0x49, 0x75, 0xfd, 0xe6, 0x11, 0xeb, 0xf6];
const LOOP_PORT: u16 = 0x11;
const SAMPLE_PERIOD_NS: u64 = 200_000;
const SAMPLE_TIME: Duration = Duration::from_millis(1500);
const RING_PAGES: usize = 256;

struct Tap {
    n: usize,
    failed: usize,
}

impl Tap {
    fn check(&mut self, ok: bool, what: &str) -> bool {
        self.n += 1;
        if ok {
            println!("ok {} {what}", self.n);
        } else {
            self.failed += 1;
            println!("not ok {} {what}", self.n);
        }
        ok
    }
}

fn main() {
    println!("TAP version 13");
    println!("1..5");
    let mut tap = Tap { n: 0, failed: 0 };
    let result = run(&mut tap);
    if let Err(e) = result {
        println!("# error: {e}");
    }
    while tap.n < 5 {
        tap.check(false, "not reached");
    }
    std::process::exit(i32::from(tap.failed > 0));
}

/// Guest memory: an anonymous mapping that lives as long as the process.
fn guest_memory() -> Result<&'static mut [u8], String> {
    // SAFETY: a fresh private anonymous mapping; nothing else refers to it.
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
    // SAFETY: the mapping is MEM_SIZE bytes, readable and writable, never unmapped.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr.cast::<u8>(), MEM_SIZE) })
}

fn setup_vm(kvm: &Kvm) -> Result<(VmFd, VcpuFd), String> {
    let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
    let mem = guest_memory()?;
    mem[EXIT_CODE_ADDR as usize..][..EXIT_CODE.len()].copy_from_slice(EXIT_CODE);
    mem[LOOP_ADDR as usize..][..LOOP_CODE.len()].copy_from_slice(LOOP_CODE);
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem.as_ptr() as u64,
        flags: 0,
    };
    // SAFETY: the region is a live mapping of MEM_SIZE bytes that is never
    // unmapped while the VM exists (it is leaked for the process lifetime).
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
    Ok((vm, vcpu))
}

fn set_rip(vcpu: &VcpuFd, rip: u64) -> Result<(), String> {
    let mut regs = vcpu.get_regs().map_err(|e| format!("KVM_GET_REGS: {e}"))?;
    regs.rip = rip;
    regs.rflags = 2;
    vcpu.set_regs(&regs)
        .map_err(|e| format!("KVM_SET_REGS: {e}"))
}

fn run(tap: &mut Tap) -> Result<(), String> {
    if !tap.check(std::path::Path::new("/dev/kvm").exists(), "/dev/kvm exists") {
        return Err("no /dev/kvm: is kvm-amd/kvm-intel loaded?".into());
    }
    let kvm = Kvm::new().map_err(|e| format!("open /dev/kvm: {e}"))?;
    let setup = setup_vm(&kvm);
    let ok = tap.check(
        setup.is_ok(),
        &format!("create a VM (KVM API version {})", kvm.get_api_version()),
    );
    let (_vm, mut vcpu) = setup?;
    if !ok {
        return Ok(());
    }

    set_rip(&vcpu, EXIT_CODE_ADDR)?;
    let first = match vcpu.run() {
        Ok(VcpuExit::IoOut(port, data)) => (port, data.to_vec()),
        Ok(other) => return Err(format!("unexpected first exit {other:?}")),
        Err(e) => return Err(format!("KVM_RUN: {e}")),
    };
    let second = match vcpu.run() {
        Ok(VcpuExit::Hlt) => "hlt".to_string(),
        Ok(other) => format!("{other:?}"),
        Err(e) => format!("KVM_RUN: {e}"),
    };
    tap.check(
        first == (0x10, vec![0x42]) && second == "hlt",
        &format!(
            "the vCPU runs real-mode code to OUT 0x10, 0x42 then HLT (got OUT {:#x}, {:x?}, then {second})",
            first.0, first.1
        ),
    );

    let counts = sample_guest_loop(vcpu)?;
    println!(
        "# samples: total={} guest_kernel={} guest_user={} host={} guest_kernel_in_loop={} lost={} vcpu_exits={}",
        counts.total,
        counts.guest_kernel,
        counts.guest_user,
        counts.host,
        counts.in_loop,
        counts.lost,
        counts.exits
    );
    tap.check(
        counts.guest_kernel > 0,
        &format!(
            "cpu-clock samples on the vCPU thread are marked guest-kernel ({} of {})",
            counts.guest_kernel, counts.total
        ),
    );
    tap.check(
        counts.guest_kernel > 0 && counts.in_loop == counts.guest_kernel,
        &format!(
            "every guest-kernel sample IP lies in the guest loop [{:#x}, {:#x}) ({} of {})",
            LOOP_ADDR,
            LOOP_ADDR + LOOP_CODE.len() as u64,
            counts.in_loop,
            counts.guest_kernel
        ),
    );
    Ok(())
}

#[derive(Default)]
struct Counts {
    total: u64,
    guest_kernel: u64,
    guest_user: u64,
    host: u64,
    in_loop: u64,
    lost: u64,
    exits: u64,
}

/// Spins the vCPU in the guest loop on its own thread and samples that
/// thread with `cpu-clock`.
fn sample_guest_loop(mut vcpu: VcpuFd) -> Result<Counts, String> {
    set_rip(&vcpu, LOOP_ADDR)?;
    let stop = Arc::new(AtomicBool::new(false));
    let (tid_tx, tid_rx) = mpsc::channel();
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let stop_vcpu = stop.clone();
    let runner = std::thread::spawn(move || -> Result<u64, String> {
        // SAFETY: gettid has no preconditions.
        let _ = tid_tx.send(unsafe { libc::gettid() });
        let _ = go_rx.recv();
        let mut exits = 0;
        while !stop_vcpu.load(Ordering::Relaxed) {
            match vcpu.run() {
                Ok(VcpuExit::IoOut(LOOP_PORT, _)) => exits += 1,
                Ok(other) => return Err(format!("unexpected exit in the loop: {other:?}")),
                Err(e) => return Err(format!("KVM_RUN: {e}")),
            }
        }
        Ok(exits)
    });
    let tid = tid_rx
        .recv()
        .map_err(|_| "the vCPU thread died".to_string())?;
    let sampler = Sampler::open(tid)?;
    let _ = go_tx.send(());
    sampler.enable()?;
    std::thread::sleep(SAMPLE_TIME);
    sampler.disable()?;
    stop.store(true, Ordering::Relaxed);
    let exits = runner
        .join()
        .map_err(|_| "the vCPU thread panicked".to_string())??;
    let mut counts = sampler.read();
    counts.exits = exits;
    Ok(counts)
}

struct Sampler {
    fd: libc::c_int,
    ring: *mut u8,
    ring_len: usize,
    page: usize,
}

impl Sampler {
    fn open(tid: libc::pid_t) -> Result<Self, String> {
        let mut attr = perf::bindings::perf_event_attr {
            type_: perf::bindings::PERF_TYPE_SOFTWARE,
            size: std::mem::size_of::<perf::bindings::perf_event_attr>() as u32,
            config: u64::from(perf::bindings::PERF_COUNT_SW_CPU_CLOCK),
            sample_type: u64::from(
                perf::bindings::PERF_SAMPLE_IP | perf::bindings::PERF_SAMPLE_TID,
            ),
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
                "perf_event_open(cpu-clock, tid {tid}): {}",
                std::io::Error::last_os_error()
            ));
        }
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
        let ring_len = page * (1 + RING_PAGES);
        // SAFETY: maps the event's ring buffer (1 + 2^n pages) read-only.
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
            return Err(format!(
                "mmap perf ring: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(Self {
            fd,
            ring: ring.cast(),
            ring_len,
            page,
        })
    }

    fn enable(&self) -> Result<(), String> {
        // SAFETY: fd is a perf event fd owned by self.
        if unsafe { perf::ioctls::ENABLE(self.fd, 0) } != 0 {
            return Err(format!(
                "PERF_EVENT_IOC_ENABLE: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    fn disable(&self) -> Result<(), String> {
        // SAFETY: as above.
        if unsafe { perf::ioctls::DISABLE(self.fd, 0) } != 0 {
            return Err(format!(
                "PERF_EVENT_IOC_DISABLE: {}",
                std::io::Error::last_os_error()
            ));
        }
        Ok(())
    }

    /// Reads every record in the (stopped) ring buffer.
    fn read(&self) -> Counts {
        let meta = self.ring.cast::<perf::bindings::perf_event_mmap_page>();
        // SAFETY: the first page of the mapping is the kernel's metadata page;
        // data_head is read once, then an acquire fence orders the data reads.
        let head = unsafe { std::ptr::read_volatile(&(*meta).data_head) };
        std::sync::atomic::fence(Ordering::Acquire);
        let size = (self.ring_len - self.page) as u64;
        // SAFETY: the data area follows the metadata page and is `size` bytes.
        let data = unsafe { std::slice::from_raw_parts(self.ring.add(self.page), size as usize) };
        let byte = |off: u64| data[(off % size) as usize];
        let bytes = |off: u64, n: u64| (0..n).map(|i| byte(off + i)).collect::<Vec<u8>>();
        let u64_at = |off: u64| u64::from_le_bytes(bytes(off, 8).try_into().unwrap_or([0; 8]));
        let loop_range = LOOP_ADDR..LOOP_ADDR + LOOP_CODE.len() as u64;
        let mut c = Counts::default();
        let start = head.saturating_sub(size);
        let mut off = start;
        while off + 8 <= head {
            let hdr = bytes(off, 8);
            let ty = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
            let misc = u16::from_le_bytes([hdr[4], hdr[5]]);
            let len = u64::from(u16::from_le_bytes([hdr[6], hdr[7]]));
            if len < 8 {
                break;
            }
            if ty == perf::bindings::PERF_RECORD_SAMPLE {
                c.total += 1;
                let ip = u64_at(off + 8);
                match u32::from(misc) & perf::bindings::PERF_RECORD_MISC_CPUMODE_MASK {
                    perf::bindings::PERF_RECORD_MISC_GUEST_KERNEL => {
                        c.guest_kernel += 1;
                        if loop_range.contains(&ip) {
                            c.in_loop += 1;
                        } else {
                            println!("# guest-kernel sample outside the loop: ip {ip:#x}");
                        }
                    }
                    perf::bindings::PERF_RECORD_MISC_GUEST_USER => c.guest_user += 1,
                    _ => c.host += 1,
                }
            } else if ty == perf::bindings::PERF_RECORD_LOST {
                c.lost += u64_at(off + 16);
            }
            off += len;
        }
        c
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
