//! `/proc/kallsyms` copied from a guest (`--guestkallsyms`).
#![no_main]

use kvmreg::symbols::{kallsyms, kaslr_offset};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(table) = kallsyms::parse_bytes(data, Path::new("kallsyms")) else {
        return;
    };
    // Look up around a few addresses the table holds, and the extremes.
    let first = table.address_of("_stext").unwrap_or(0);
    for addr in [0, 1, first, first.wrapping_add(1), u64::MAX / 2, u64::MAX] {
        let _ = table.lookup(addr);
    }
    let _ = kaslr_offset(&table, &table);
});
