//! KVM's binary stats stream (`KVM_GET_STATS_FD`,
//! `/proc/<pid>/kvm/<id>/stats`), and the registry's per-vCPU stream
//! (`/proc/<pid>/kvm/<id>/vcpu_stats`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = kvmreg::stats::parse(data) {
        let _ = s.get("exits");
    }
    let _ = kvmreg::stats::parse_vcpu_sums(data);
});
