//! `/proc/modules` copied from a guest (`--guestmodules`).
#![no_main]

use kvmreg::symbols::modules;
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(mods) = modules::parse_bytes(data, Path::new("modules")) else {
        return;
    };
    for m in mods.iter().take(16) {
        for addr in [
            m.address,
            m.address.wrapping_add(m.size),
            m.address.wrapping_sub(1),
        ] {
            let _ = modules::module_at(&mods, addr);
        }
    }
    let _ = modules::module_at(&mods, u64::MAX);
});
