//! One guest: a VM with memory holding the code image and V vCPUs, each
//! run by its own thread named like qemu's (`CPU <n>/KVM`).

use crate::code;
use anyhow::{bail, Context, Result};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `KVM_CAP_VM_NAME` (patched kernels).
pub const KVM_CAP_VM_NAME: libc::c_ulong = 250;

/// `struct kvm_vm_name` of the patched uapi.
#[repr(C)]
pub struct KvmVmName {
    pub flags: u32,
    pub pad: u32,
    pub name: [u8; 64],
}

vmm_sys_util::ioctl_iow_nr!(KVM_SET_VM_NAME, kvm_bindings::KVMIO, 0xd7, KvmVmName);

/// What became of naming the VM.
pub enum Naming {
    Named,
    Unsupported,
    Failed(String),
}

/// Set the VM's kernel name if the kernel supports it.
pub fn set_name(kvm: &Kvm, vm: &VmFd, name: &str) -> Naming {
    if kvm.check_extension_raw(KVM_CAP_VM_NAME) <= 0 {
        return Naming::Unsupported;
    }
    let mut arg = KvmVmName {
        flags: 0,
        pad: 0,
        name: [0; 64],
    };
    if name.len() >= arg.name.len() {
        return Naming::Failed("name longer than 63 bytes".into());
    }
    arg.name[..name.len()].copy_from_slice(name.as_bytes());
    // SAFETY: vm is a VM fd; the argument is a valid struct of the size
    // the ioctl number encodes, read by the kernel only.
    let r = unsafe { vmm_sys_util::ioctl::ioctl_with_ref(vm, KVM_SET_VM_NAME(), &arg) };
    if r < 0 {
        return Naming::Failed(std::io::Error::last_os_error().to_string());
    }
    Naming::Named
}

/// The VM id from our own fdinfo (patched kernels), if any.
pub fn vm_id(vm: &VmFd) -> Option<u64> {
    let t = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", vm.as_raw_fd())).ok()?;
    t.lines()
        .find_map(|l| l.strip_prefix("kvm_vm_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// A running guest.
pub struct Guest {
    pub name: String,
    pub vm: VmFd,
    pub naming: Naming,
    pub tids: Vec<i32>,
    _mem: Memory,
}

/// Anonymous memory mapped into the guest; never unmapped while the VM
/// lives (the guest runs until the process is killed).
struct Memory {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is only written before the vCPUs start; afterwards
// only the guest touches it.
unsafe impl Send for Memory {}

impl Memory {
    fn new(len: usize) -> Result<Self> {
        // SAFETY: a fresh private anonymous mapping, no existing memory is
        // touched; failure is MAP_FAILED, checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            bail!("mmap of {len} bytes: {}", std::io::Error::last_os_error());
        }
        Ok(Memory { ptr: p.cast(), len })
    }
}

/// What each guest runs: vCPUs, memory, CPU use, and whether each round
/// writes to a port.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    pub vcpus: u32,
    pub mem_bytes: usize,
    pub busy: u32,
    pub port_io: bool,
}

/// Create the VM, load the code, start the vCPU threads.
pub fn start(kvm: &Kvm, name: &str, spec: Spec) -> Result<Guest> {
    let Spec {
        vcpus,
        mem_bytes,
        busy,
        port_io,
    } = spec;
    let vm = kvm.create_vm().context("KVM_CREATE_VM")?;
    let naming = set_name(kvm, &vm, name);
    let img = code::image(port_io);
    if mem_bytes < code::STACK_TOP as usize || img.len() > mem_bytes {
        bail!("--mem-kib too small for the guest image and stack");
    }
    let mem = Memory::new(mem_bytes)?;
    // SAFETY: the mapping is mem_bytes long and img fits (checked above).
    unsafe { std::ptr::copy_nonoverlapping(img.as_ptr(), mem.ptr, img.len()) };
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: mem.len as u64,
        userspace_addr: mem.ptr as u64,
    };
    // SAFETY: the region is a live mapping of the stated size that stays
    // mapped for the VM's life (Memory is kept in Guest, never dropped
    // before the process exits).
    unsafe { vm.set_user_memory_region(region) }.context("KVM_SET_USER_MEMORY_REGION")?;
    let (tx, rx) = mpsc::channel();
    for i in 0..vcpus {
        let mut vcpu = vm
            .create_vcpu(u64::from(i))
            .with_context(|| format!("KVM_CREATE_VCPU {i}"))?;
        setup_real_mode(&vcpu)?;
        let tx = tx.clone();
        let gname = name.to_string();
        std::thread::Builder::new()
            .name(format!("CPU {i}/KVM"))
            .spawn(move || {
                // SAFETY: gettid has no preconditions.
                let tid = unsafe { libc::gettid() };
                // Report the thread once the guest has run to its first
                // `hlt`: by then KVM knows this thread as the vCPU's (the
                // registry's `vcpus` file shows it) and the code works.
                let mut started = Some(move || {
                    let _ = tx.send((i, tid));
                });
                let first_exit = move || {
                    if let Some(f) = started.take() {
                        f();
                    }
                };
                if let Err(e) = run_vcpu(&mut vcpu, busy, first_exit) {
                    eprintln!("kvmreg-fixture: guest {gname} vcpu {i}: {e:#}");
                    std::process::exit(1);
                }
            })
            .context("spawning a vCPU thread")?;
    }
    drop(tx);
    let mut tids = vec![0; vcpus as usize];
    for _ in 0..vcpus {
        let (i, tid) = rx
            .recv_timeout(Duration::from_secs(30))
            .context("a vCPU did not reach its first hlt")?;
        tids[i as usize] = tid;
    }
    Ok(Guest {
        name: name.to_string(),
        vm,
        naming,
        tids,
        _mem: mem,
    })
}

fn setup_real_mode(vcpu: &VcpuFd) -> Result<()> {
    let mut sregs = vcpu.get_sregs().context("KVM_GET_SREGS")?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ss.base = 0;
    sregs.ss.selector = 0;
    vcpu.set_sregs(&sregs).context("KVM_SET_SREGS")?;
    let mut regs = vcpu.get_regs().context("KVM_GET_REGS")?;
    regs.rip = code::ENTRY;
    regs.rsp = code::STACK_TOP;
    regs.rflags = 2;
    vcpu.set_regs(&regs).context("KVM_SET_REGS")?;
    Ok(())
}

/// This thread's CPU time (guest mode included: KVM counts it as the
/// task's).
fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec to the valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// Run forever; on each `hlt` exit sleep enough to keep the vCPU at about
/// `busy` percent of a CPU (sleeps are measured, since they overshoot).
/// What the vCPU ran is its thread's CPU time, not the wall time since it
/// resumed: on a loaded host a thread that waited for a CPU would
/// otherwise owe sleep for time it never ran, and fall far below `busy`
/// (a 30% guest was seen at 0.8% over 1.5 s on a busy 2-CPU machine).
/// `busy` 0: idle, the thread sleeps after the first `hlt` (the vCPU and
/// its thread stay, as those of a guest that does nothing).
fn run_vcpu(vcpu: &mut VcpuFd, busy: u32, mut on_hlt: impl FnMut()) -> Result<()> {
    let busy = busy.min(100);
    let start = thread_cpu();
    let mut idled = Duration::ZERO;
    loop {
        match vcpu.run() {
            Ok(VcpuExit::Hlt) => {
                on_hlt();
                if busy == 0 {
                    loop {
                        std::thread::park();
                    }
                }
                if busy < 100 {
                    let ran = thread_cpu().saturating_sub(start);
                    let want_idle = ran * (100 - busy) / busy;
                    if want_idle > idled + Duration::from_millis(10) {
                        let t = Instant::now();
                        std::thread::sleep(want_idle - idled);
                        idled += t.elapsed();
                    }
                }
            }
            // `--port-io`: the write is the exit; nothing to emulate.
            Ok(VcpuExit::IoOut(code::PORT, _)) => {}
            Ok(VcpuExit::Intr) => {}
            Ok(other) => bail!("unexpected exit {other:?}"),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
            Err(e) => bail!("KVM_RUN: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_vm_name_ioctl_matches_the_uapi() {
        // _IOW(KVMIO=0xAE, 0xd7, struct kvm_vm_name) with a 72-byte struct:
        // dir 1 (write) << 30 | 72 << 16 | 0xAE << 8 | 0xd7.
        assert_eq!(std::mem::size_of::<KvmVmName>(), 72);
        assert_eq!(KVM_SET_VM_NAME(), 0x4048_AED7);
    }
}
