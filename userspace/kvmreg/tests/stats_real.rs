//! The stats parser and the pidfd backend against this host's real KVM:
//! the test process creates its own VM (KVM only answers the VM's creator)
//! and reads its VM and vCPU stats streams. Skipped, with a message, where
//! /dev/kvm is not usable.

use kvmreg::backend::fd_scan::KvmFd;
use kvmreg::backend::stats_fd;
use kvmreg::stats::{self, StatType};
use std::io::Read;
use std::os::fd::AsRawFd;

fn kvm() -> Option<kvm_ioctls::Kvm> {
    match kvm_ioctls::Kvm::new() {
        Ok(k) => Some(k),
        Err(e) => {
            eprintln!("SKIPPED: /dev/kvm not usable here ({e}); real stats were NOT tested");
            None
        }
    }
}

#[test]
fn real_vm_and_vcpu_stats_parse() {
    let Some(kvm) = kvm() else { return };
    let vm = kvm.create_vm().expect("create VM");
    let vcpu = vm.create_vcpu(0).expect("create vCPU");
    let me = std::process::id();

    let (mut f, layout) = stats_fd::open(me, vm.as_raw_fd(), KvmFd::Vm).expect("VM stats fd");
    // The id names the creating thread, as debugfs' <pid>-<fd> does.
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::gettid() };
    assert_eq!(layout.id, format!("kvm-{tid}"));
    let s = stats::read_values(&layout, &mut f).expect("VM values");
    let tlb = s
        .stats
        .iter()
        .find(|s| s.desc.name == "remote_tlb_flush")
        .expect("remote_tlb_flush");
    assert_eq!(tlb.desc.kind, StatType::Cumulative);
    assert!(s.stats.len() > 5, "only {} VM stats", s.stats.len());

    // The whole stream read sequentially parses to the same thing.
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).expect("read stream");
    assert_eq!(stats::parse(&bytes).expect("parse stream"), s);

    let (mut vf, vl) = stats_fd::open(me, vcpu.as_raw_fd(), KvmFd::Vcpu(0)).expect("vCPU stats fd");
    assert!(
        vl.id.starts_with("kvm-") && vl.id.contains("vcpu-0"),
        "{}",
        vl.id
    );
    let v = stats::read_values(&vl, &mut vf).expect("vCPU values");
    assert!(v.get("exits").is_some());
    assert!(
        v.stats
            .iter()
            .any(|s| matches!(s.desc.kind, StatType::LogHist | StatType::LinearHist)),
        "no histogram among vCPU stats"
    );
    // A wrong expectation (VM fd taken as vCPU) is refused.
    assert!(matches!(
        stats_fd::open(me, vm.as_raw_fd(), KvmFd::Vcpu(0)),
        Err(stats_fd::StatsFdError::NotKvm { .. })
    ));
}
