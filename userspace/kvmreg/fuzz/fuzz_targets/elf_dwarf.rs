//! A guest vmlinux (`--guestvmlinux`): ELF symbols, build-id and DWARF
//! lines, then a few addresses resolved with addr2line. The same bytes also
//! go to the two other build-id readers of a guestmount: a copy of
//! `/sys/kernel/notes` and a hex `build-id` file.
#![no_main]

use kvmreg::symbols::{elf, guest};
use libfuzzer_sys::fuzz_target;
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let _ = guest::build_id_from_notes(data);
    let _ = guest::parse_hex(&String::from_utf8_lossy(data));
    let _ = elf::build_id(data);
    let Ok(syms) = elf::parse(data, Path::new("vmlinux")) else {
        return;
    };
    let mut addrs = vec![0, 0x1000, 0x1103, u64::MAX];
    for name in ["_stext", "_text", "main", "hot_a"] {
        if let Some(a) = syms.table.address_of(name) {
            addrs.extend([a, a.wrapping_add(3)]);
        }
    }
    for a in addrs {
        let _ = syms.resolve(a);
    }
});
