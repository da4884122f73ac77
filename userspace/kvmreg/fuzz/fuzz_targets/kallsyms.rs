//! `/proc/kallsyms` copied from a guest (`--guestkallsyms`): the parser,
//! lookups, and a profile's counting and rows over the table.
#![no_main]

use kvmreg::perf::profile::Functions;
use kvmreg::symbols::{kallsyms, kaslr_offset, Symbolizer};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let Ok(table) = kallsyms::parse_bytes(data, Path::new("kallsyms")) else {
        return;
    };
    // Look up around a few addresses the table holds, and the extremes.
    let first = table.address_of("_stext").unwrap_or(0);
    let mut f = Functions::new(&table);
    for addr in [0, 1, first, first.wrapping_add(1), u64::MAX / 2, u64::MAX] {
        let _ = table.lookup(addr);
        f.add(table.slot(addr), addr);
    }
    for (a, _, _) in table.iter().take(64) {
        for addr in [a.wrapping_sub(1), a, a.wrapping_add(1)] {
            if let Some((i, off)) = table.find_index(addr) {
                assert_eq!(table.address(i).map(|s| s + off), Some(addr));
            }
            f.add(table.slot(addr), addr);
        }
    }
    let _ = f.top(10, &table);
    let _ = kaslr_offset(&table, &table);
});
