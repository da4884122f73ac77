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
