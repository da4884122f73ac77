//! KVM's binary stats stream (`KVM_GET_STATS_FD`,
//! `/proc/<pid>/kvm/<id>/stats`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = kvmreg::stats::parse(data) {
        let _ = s.get("exits");
    }
});
