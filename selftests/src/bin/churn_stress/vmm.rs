//! The VMM worker role (`churn-stress --vmm SEED`): a tiny VMM that creates,
//! runs, names, renames and destroys VMs in a loop until it is killed.
//!
//! It reports what it did to the parent as one short line per event on its
//! stdout, a pipe shared by all workers: each line is one `write()` of less
//! than `PIPE_BUF` bytes, so lines of different workers never interleave
//! and a worker killed mid-way loses at most the line it did not write.
//!
//! - `caps <named> <registry>`: `KVM_CAP_VM_NAME` and `/proc/self/kvm` (0/1)
//! - `vm <id> <vcpus>`: a VM was created (id 0 without the registry)
//! - `named`, `eexist`: `KVM_SET_VM_NAME` set a name / found it taken
//! - `renamed`, `rename-eexist`: the same through `/proc/self/kvm/<id>/name`
//! - `destroyed`, `cycle`: a VM was torn down / a round finished
//! - `err <text>`: anything unexpected (the parent fails the run)

use crate::Rng;
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit, VmFd};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const MEM_SIZE: usize = 0x10000;
/// `l: mov cx, 0xffff; d: dec cx; jnz d; out 0x11, al; jmp l` (kvm_smoke's loop)
const LOOP_ADDR: u64 = 0x1100;
const LOOP_CODE: &[u8] = &[0xb9, 0xff, 0xff, 0x49, 0x75, 0xfd, 0xe6, 0x11, 0xeb, 0xf6];
const LOOP_PORT: u16 = 0x11;

/// `KVM_CAP_VM_NAME` (patched kernels).
const KVM_CAP_VM_NAME: libc::c_ulong = 250;
/// Names every worker picks from now and then, so that `EEXIST` happens.
pub const SHARED_NAMES: u64 = 3;

/// `struct kvm_vm_name` of the patched uapi.
#[repr(C)]
struct KvmVmName {
    flags: u32,
    pad: u32,
    name: [u8; 64],
}

/// `_IOW(KVMIO, 0xd7, struct kvm_vm_name)`.
const KVM_SET_VM_NAME: libc::c_ulong =
    (1 << 30) | ((std::mem::size_of::<KvmVmName>() as libc::c_ulong) << 16) | (0xae << 8) | 0xd7;

/// Sends one line to the parent; exits when the parent is gone.
fn report(line: &str) {
    let mut buf: Vec<u8> = line.bytes().take(400).collect();
    buf.push(b'\n');
    // SAFETY: buf is valid for buf.len() bytes; fd 1 is the pipe to the
    // parent (a short line, so the write is atomic).
    let r = unsafe { libc::write(1, buf.as_ptr().cast(), buf.len()) };
    if r < 0 {
        std::process::exit(0);
    }
}

/// The worker's main loop; it never returns (the parent kills it, or it
/// gives up `seconds` + 60 s after it started, should the parent not).
pub fn main(seed: u64, seconds: u64) -> ! {
    let lifetime = Duration::from_secs(seconds.saturating_add(60));
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            report(&format!("err open /dev/kvm: {e}"));
            std::process::exit(1);
        }
    };
    let named = kvm.check_extension_raw(KVM_CAP_VM_NAME) > 0;
    let registry = Path::new("/proc/self/kvm").is_dir();
    report(&format!("caps {} {}", u8::from(named), u8::from(registry)));
    let mut w = Worker {
        kvm,
        rng: Rng::new(seed),
        seed,
        named,
        registry,
    };
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < lifetime {
        if let Err(e) = w.cycle(n) {
            report(&format!("err {e}"));
            thread::sleep(Duration::from_millis(50));
        }
        n += 1;
    }
    std::process::exit(0);
}

struct Worker {
    kvm: Kvm,
    rng: Rng,
    seed: u64,
    named: bool,
    registry: bool,
}

impl Worker {
    /// One round: create one or two VMs with running vCPUs, name and
    /// rename them, let them run a little, destroy them.
    fn cycle(&mut self, n: u64) -> Result<(), String> {
        let count = if self.rng.chance(30) { 2 } else { 1 };
        let mut vms = Vec::with_capacity(count);
        for _ in 0..count {
            let vcpus = 1 + self.rng.below(2) as u32;
            let vm = ChurnVm::start(&self.kvm, vcpus)?;
            report(&format!("vm {} {vcpus}", vm.id));
            vms.push(vm);
        }
        for (k, vm) in vms.iter().enumerate() {
            if self.named {
                let (name, shared) = self.pick_name(n, k, 'i');
                match set_name(&vm.vm, &name) {
                    Ok(()) => {
                        report("named");
                        self.verify(vm.id, &name)?;
                    }
                    Err(e) if shared && e.raw_os_error() == Some(libc::EEXIST) => {
                        report("eexist");
                    }
                    Err(e) => return Err(format!("KVM_SET_VM_NAME {name:?}: {e}")),
                }
            }
            thread::sleep(self.rng.millis(0, 80));
            if self.registry && vm.id != 0 {
                let (name, shared) = self.pick_name(n, k, 'p');
                match rename_proc(vm.id, &name) {
                    Ok(()) => {
                        report("renamed");
                        self.verify(vm.id, &name)?;
                    }
                    Err(e) if shared && e.raw_os_error() == Some(libc::EEXIST) => {
                        report("rename-eexist");
                    }
                    Err(e) => return Err(format!("rename VM {} to {name:?}: {e}", vm.id)),
                }
            }
        }
        thread::sleep(self.rng.millis(10, 200));
        for mut vm in vms {
            vm.finish()?;
            drop(vm);
            report("destroyed");
        }
        report("cycle");
        Ok(())
    }

    /// A valid name: now and then one of the shared ones (which may be
    /// taken: `EEXIST` is expected then), else one unique to this worker,
    /// round, VM and step, using every kind of character the rules allow.
    fn pick_name(&mut self, n: u64, k: usize, step: char) -> (String, bool) {
        if self.rng.chance(25) {
            let i = self.rng.below(SHARED_NAMES);
            return (format!("churn-shared-{i}"), true);
        }
        let seed = self.seed;
        let name = match self.rng.below(3) {
            0 => format!("churn-{seed}-{n}-{k}{step}"),
            1 => format!("churn.{seed}_{n}:{k}{step}"),
            _ => format!("churn+{seed}+{n}.{k}{step}"),
        };
        (name, false)
    }

    /// After a successful naming: the VM's name file and its `/proc/kvm`
    /// link say so (nobody else can take or change the name meanwhile).
    fn verify(&self, id: u64, name: &str) -> Result<(), String> {
        if !self.registry || id == 0 {
            return Ok(());
        }
        let path = format!("/proc/self/kvm/{id}/name");
        let got = std::fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
        if got != format!("{name}\n") {
            return Err(format!("{path} says {got:?} after naming it {name:?}"));
        }
        let link = format!("/proc/kvm/{name}");
        let target = std::fs::read_link(&link).map_err(|e| format!("readlink {link}: {e}"))?;
        let want = format!("../{}/kvm/{id}", std::process::id());
        if target.as_os_str() != want.as_str() {
            return Err(format!("{link} -> {target:?}, expected {want}"));
        }
        Ok(())
    }
}

fn set_name(vm: &VmFd, name: &str) -> std::io::Result<()> {
    let mut arg = KvmVmName {
        flags: 0,
        pad: 0,
        name: [0; 64],
    };
    arg.name
        .get_mut(..name.len())
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::ENAMETOOLONG))?
        .copy_from_slice(name.as_bytes());
    // SAFETY: vm is a VM fd; arg is a live struct of the size the ioctl
    // number encodes, which the kernel only reads.
    let r = unsafe { libc::ioctl(vm.as_raw_fd(), KVM_SET_VM_NAME, &arg) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn rename_proc(id: u64, name: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/self/kvm/{id}/name"))?;
    let line = format!("{name}\n");
    let n = f.write(line.as_bytes())?;
    if n != line.len() {
        return Err(std::io::Error::other(format!(
            "short write: {n} of {} bytes",
            line.len()
        )));
    }
    Ok(())
}

/// The VM id from our own fdinfo (patched kernels), if any.
fn vm_id(vm: &VmFd) -> Option<u64> {
    let t = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", vm.as_raw_fd())).ok()?;
    t.lines()
        .find_map(|l| l.strip_prefix("kvm_vm_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// Anonymous memory backing a VM's memory slot; unmapped after the VM.
struct Mapping {
    ptr: *mut libc::c_void,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> Result<Self, String> {
        // SAFETY: a fresh private anonymous mapping; no existing memory is
        // touched; failure is MAP_FAILED, checked below.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(format!("mmap: {}", std::io::Error::last_os_error()));
        }
        Ok(Self { ptr, len })
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping what new() mapped, once; the VM using it is
        // gone (ChurnVm drops its VmFd first and joins the vCPU threads).
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// A VM with one memory slot and vCPU threads spinning in the loop.
/// Field order matters: the VM fd is closed before the memory is unmapped.
struct ChurnVm {
    id: u64,
    threads: Vec<JoinHandle<Result<u64, String>>>,
    stop: Arc<AtomicBool>,
    vm: VmFd,
    _mem: Mapping,
}

impl ChurnVm {
    fn start(kvm: &Kvm, vcpus: u32) -> Result<Self, String> {
        let vm = kvm.create_vm().map_err(|e| format!("KVM_CREATE_VM: {e}"))?;
        let mem = Mapping::new(MEM_SIZE)?;
        // SAFETY: the mapping is MEM_SIZE bytes and writable, the code fits
        // at LOOP_ADDR, and nothing else uses the mapping yet.
        unsafe {
            std::ptr::copy_nonoverlapping(
                LOOP_CODE.as_ptr(),
                mem.ptr.cast::<u8>().add(LOOP_ADDR as usize),
                LOOP_CODE.len(),
            );
        }
        let region = kvm_userspace_memory_region {
            slot: 0,
            guest_phys_addr: 0,
            memory_size: MEM_SIZE as u64,
            userspace_addr: mem.ptr as u64,
            flags: 0,
        };
        // SAFETY: the region is a live mapping of MEM_SIZE bytes that stays
        // mapped until after the VM fd is closed (see the field order).
        unsafe { vm.set_user_memory_region(region) }
            .map_err(|e| format!("KVM_SET_USER_MEMORY_REGION: {e}"))?;
        let mut this = ChurnVm {
            id: vm_id(&vm).unwrap_or(0),
            threads: Vec::new(),
            stop: Arc::new(AtomicBool::new(false)),
            vm,
            _mem: mem,
        };
        for i in 0..vcpus {
            let mut vcpu = this
                .vm
                .create_vcpu(u64::from(i))
                .map_err(|e| format!("KVM_CREATE_VCPU {i}: {e}"))?;
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
            let stop = this.stop.clone();
            let t = thread::Builder::new()
                .name(format!("CPU {i}/KVM"))
                .spawn(move || {
                    let mut exits = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        match vcpu.run() {
                            Ok(VcpuExit::IoOut(LOOP_PORT, _)) => exits += 1,
                            Ok(VcpuExit::Intr) => {}
                            Ok(other) => return Err(format!("vCPU {i}: exit {other:?}")),
                            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                            Err(e) => return Err(format!("vCPU {i}: KVM_RUN: {e}")),
                        }
                    }
                    Ok(exits)
                })
                .map_err(|e| format!("spawning a vCPU thread: {e}"))?;
            this.threads.push(t);
        }
        Ok(this)
    }

    /// Stops and joins the vCPU threads (closing the vCPU fds).
    fn finish(&mut self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut result = Ok(());
        for t in self.threads.drain(..) {
            match t.join() {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => result = Err(e),
                Err(_) => result = Err("a vCPU thread panicked".into()),
            }
        }
        result
    }
}

impl Drop for ChurnVm {
    fn drop(&mut self) {
        let _ = self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_vm_name_ioctl_matches_the_uapi() {
        assert_eq!(std::mem::size_of::<KvmVmName>(), 72);
        assert_eq!(KVM_SET_VM_NAME, 0x4048_aed7);
    }
}
