//! The stats parser and the pidfd backend against this host's real KVM:
//! the test process creates its own VM (KVM only answers the VM's creator)
//! and reads its VM and vCPU stats streams. Skipped, with a message, where
//! /dev/kvm is not usable.

use kvmreg::backend::fd_scan::KvmFd;
use kvmreg::backend::stats_fd;
use kvmreg::stats::{self, StatType};
use std::io::Read;
use std::os::fd::AsRawFd;

fn kvm(test: &str) -> Option<kvm_ioctls::Kvm> {
    if !kvmreg_testkit::kvm_usable(test) {
        return None;
    }
    Some(kvm_ioctls::Kvm::new().expect("open /dev/kvm, which opened a moment ago"))
}

#[test]
fn real_vm_and_vcpu_stats_parse() {
    let Some(kvm) = kvm("real_vm_and_vcpu_stats_parse") else {
        return;
    };
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

/// On a registry kernel (series v2), `/proc/self/kvm/<id>/vcpu_stats`
/// sums to what each vCPU's own stats fd gives, and `guest_counters()`
/// takes `exits` from it, not from debugfs.
#[test]
fn real_vcpu_stats_sum_the_vcpus_stats_fds() {
    let Some(kvm) = kvm("real_vcpu_stats_sum_the_vcpus_stats_fds") else {
        return;
    };
    let vm = kvm.create_vm().expect("create VM");
    let vcpus: Vec<_> = (0..2)
        .map(|i| vm.create_vcpu(i).expect("create vCPU"))
        .collect();
    let fdinfo = std::fs::read_to_string(format!("/proc/self/fdinfo/{}", vm.as_raw_fd()))
        .expect("fdinfo of the VM fd");
    let id = fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("kvm_vm_id:"))
        .map(|v| v.trim().to_string());
    let path = id
        .as_ref()
        .map(|id| format!("/proc/self/kvm/{id}/vcpu_stats"));
    let Some(bytes) = path.as_ref().and_then(|p| std::fs::read(p).ok()) else {
        kvmreg_testkit::skip(
            kvmreg_testkit::Facility::Registry,
            "real_vcpu_stats_sum_the_vcpus_stats_fds",
            "no /proc/self/kvm/<id>/vcpu_stats (not a registry v2 kernel); vcpu_stats was NOT tested",
        );
        return;
    };
    let (layout, blocks, sums) = stats::parse_vcpu_sums(&bytes).expect("parse vcpu_stats");
    assert_eq!(blocks, 2);
    assert!(layout.id.ends_with("/vcpus"), "{}", layout.id);
    let me = std::process::id();
    let mut want = 0;
    for (i, vcpu) in vcpus.iter().enumerate() {
        let (mut f, l) =
            stats_fd::open(me, vcpu.as_raw_fd(), KvmFd::Vcpu(i as u32)).expect("vCPU stats fd");
        want += stats::read_values(&l, &mut f)
            .expect("vCPU values")
            .get("exits")
            .expect("exits");
    }
    let got = sums.iter().find(|(n, _)| n == "exits").map(|(_, v)| *v);
    assert_eq!(got, Some(want));

    let guest = kvmreg::discover()
        .guests
        .into_iter()
        .find(|g| g.pid == me && g.id.map(|i| i.to_string()) == id)
        .expect("this process' VM is discovered");
    let c = kvmreg::discover::guest_counters(&kvmreg::discover::Config::default(), &guest)
        .expect("counters");
    assert_eq!(c.values.get("exits"), Some(&want));
    assert_eq!(c.sources.get("exits"), Some(&kvmreg::Source::ProcKvm));
}
