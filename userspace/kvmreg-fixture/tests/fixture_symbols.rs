//! The fixture's symbol files read back through kvmreg's guest-symbol
//! parsers: kallsyms and ELF agree with each other and with the code.

use kvmreg::symbols::{elf, kallsyms};
use std::process::Command;

#[test]
fn fixture_symbol_files_resolve_guest_addresses() {
    let dir = std::env::temp_dir().join(format!("kvmreg-fixture-syms-{}", std::process::id()));
    let st = Command::new(env!("CARGO_BIN_EXE_kvmreg-fixture"))
        .args(["--symbols-only", "--guests", "web,db", "--out"])
        .arg(&dir)
        .status()
        .expect("run fixture");
    assert!(st.success());
    let ks = kallsyms::load(&dir.join("kallsyms")).expect("kallsyms");
    let e = elf::load(&dir.join("web/vmlinux")).expect("vmlinux");
    for (name, addr) in [("main", 0x1000), ("hot_a", 0x1100), ("hot_b", 0x1200)] {
        assert_eq!(ks.address_of(name), Some(addr), "{name} in kallsyms");
        assert_eq!(e.table.address_of(name), Some(addr), "{name} in ELF");
    }
    // Inside hot_a's loop, and just past hot_b's end (ELF has sizes).
    assert_eq!(
        e.resolve(0x1103).map(|r| (r.name, r.offset)),
        Some(("hot_a".into(), 3))
    );
    assert_eq!(ks.lookup(0x1203).map(|r| r.name), Some("hot_b".into()));
    assert!(e.resolve(0x1206).is_none());

    // DWARF lines: every instruction of the code maps to its line of the
    // guest.S written beside the ELF; the expected line is looked up in that
    // file by the address the listing prints on each instruction line.
    assert_eq!(e.lines_note, None, "the ELF has DWARF line info");
    let src = std::fs::read_to_string(dir.join("web/guest.S")).expect("guest.S beside vmlinux");
    let line_of = |addr: u64| {
        src.lines()
            .position(|l| l.contains(&format!("; {addr:#06x}:")))
            .map(|i| i as u32 + 1)
            .unwrap_or_else(|| panic!("{addr:#x} not in guest.S:\n{src}"))
    };
    let r = e.resolve(0x1103).expect("0x1103 resolves");
    assert_eq!(r.name, "hot_a");
    assert_eq!(r.file.as_deref(), Some("guest.S"));
    assert_eq!(r.line, Some(line_of(0x1103)));
    assert!(
        src.lines()
            .nth(line_of(0x1103) as usize - 1)
            .is_some_and(|l| l.contains("loop $")),
        "hot_a's loop instruction at 0x1103:\n{src}"
    );
    // An address inside an instruction gets the instruction's line.
    assert_eq!(
        e.resolve(0x1104).and_then(|r| r.line),
        Some(line_of(0x1103))
    );
    for addr in [0x1000, 0x1006, 0x1100, 0x1105, 0x1200, 0x1203] {
        let r = e.resolve(addr).expect("resolves");
        assert_eq!(
            (r.file.as_deref(), r.line),
            (Some("guest.S"), Some(line_of(addr))),
            "{addr:#x}"
        );
    }
    let want = std::fs::read_to_string(dir.join("db/build-id")).expect("build-id file");
    assert_eq!(
        e.build_id.as_deref().map(elf::hex),
        Some(want.trim().to_string())
    );

    // Through a guestmount, by kernel name, with the build-id checked.
    let mut g = kvmreg::Guest::new(1);
    g.name = Some(kvmreg::GuestName::Kernel("db".into()));
    let opts = kvmreg::symbols::guest::Options {
        guestmount: Some(dir.clone()),
        ..Default::default()
    };
    let gs = kvmreg::symbols::guest::load(&opts, &g).expect("guest symbols");
    assert_eq!(gs.kaslr, 0);
    assert_eq!(gs.resolve(0x1204).map(|r| r.name), Some("hot_b".into()));
    std::fs::write(
        dir.join("db/build-id"),
        "00112233445566778899aabbccddeeff00112233\n",
    )
    .expect("write");
    let e = kvmreg::symbols::guest::load(&opts, &g).expect_err("build-id mismatch");
    assert!(
        e.to_string().contains("is not the running guest kernel's"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
