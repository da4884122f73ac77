//! The `bench-lifecycle` suite, a benchmark (not a test): how long creating
//! and destroying a VM takes, on whatever kernel it boots. Run it on the
//! patched and on the base kernel, booted alternately
//! (`selftests/bench_lifecycle.sh`), to see what the registry adds: an id,
//! `/proc/<pid>/kvm/<id>` and `/proc/kvm/<name>` entries, named uevents.
//!
//! One iteration is what a VMM does at least: `KVM_CREATE_VM`, a 64 KiB
//! memory slot, one vCPU, then closing both fds (the last close destroys
//! the VM synchronously). Rounds of `PER_ROUND` iterations; the median
//! round is the result, so a round disturbed by the emulator is ignored.
//!
//! Two figures per round: wall time, which is mostly the RCU and SRCU grace
//! periods that KVM waits for (a few timer ticks), and the process' CPU
//! time, which is the work done in the creating and closing thread, the
//! registry's included (work deferred to other contexts, e.g. RCU
//! callbacks, is in neither).

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::Kvm;
use std::time::Instant;

const ROUNDS: usize = 15;
const PER_ROUND: usize = 40;
const MEM_SIZE: usize = 0x10000;

fn one(kvm: &Kvm, mem: *mut libc::c_void) -> Result<(), kvm_ioctls::Error> {
    let vm = kvm.create_vm()?;
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: MEM_SIZE as u64,
        userspace_addr: mem as u64,
    };
    // SAFETY: `mem` is a private anonymous mapping of MEM_SIZE bytes that
    // lives until main returns, longer than this VM.
    unsafe { vm.set_user_memory_region(region)? };
    let vcpu = vm.create_vcpu(0)?;
    drop(vcpu);
    drop(vm);
    Ok(())
}

/// This process' CPU time (user + system), in microseconds.
fn cpu_time_us() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass; the clock id is a
    // constant every Linux has.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e6 + ts.tv_nsec as f64 / 1e3
}

fn main() {
    println!("TAP version 13");
    println!("1..1");
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            println!("not ok 1 open /dev/kvm: {e}");
            std::process::exit(1);
        }
    };
    // SAFETY: a fresh private anonymous mapping; no existing memory is
    // touched, and the result is checked against MAP_FAILED.
    let mem = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            MEM_SIZE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if mem == libc::MAP_FAILED {
        println!(
            "not ok 1 mmap guest memory: {}",
            std::io::Error::last_os_error()
        );
        std::process::exit(1);
    }
    // Warm-up: the first VMs pay for module and page-table set-up.
    for _ in 0..PER_ROUND {
        if let Err(e) = one(&kvm, mem) {
            println!("not ok 1 create a VM: {e}");
            std::process::exit(1);
        }
    }
    let mut rounds_us = Vec::with_capacity(ROUNDS);
    let mut cpu_us = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let c = cpu_time_us();
        for _ in 0..PER_ROUND {
            if let Err(e) = one(&kvm, mem) {
                println!("not ok 1 create a VM: {e}");
                std::process::exit(1);
            }
        }
        rounds_us.push(t.elapsed().as_secs_f64() * 1e6 / PER_ROUND as f64);
        cpu_us.push((cpu_time_us() - c) / PER_ROUND as f64);
    }
    cpu_us.sort_by(f64::total_cmp);
    println!(
        "# vm-lifecycle: median CPU {:.1} us per VM create+destroy, min {:.1}, max {:.1}",
        cpu_us[ROUNDS / 2],
        cpu_us[0],
        cpu_us[ROUNDS - 1]
    );
    let mut sorted = rounds_us.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted[ROUNDS / 2];
    let rounds: Vec<String> = rounds_us.iter().map(|r| format!("{r:.0}")).collect();
    println!("# per-round means (us per VM): {}", rounds.join(" "));
    println!(
        "# vm-lifecycle: median {median:.1} us per VM create+destroy, min {:.1}, max {:.1} ({ROUNDS} rounds of {PER_ROUND})",
        sorted[0],
        sorted[ROUNDS - 1]
    );
    println!("ok 1 vm-lifecycle benchmark ran (a benchmark: the figure is above, not judged)");
}
