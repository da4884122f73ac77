//! Symbol files matching the guest code: a kallsyms-format text file and an
//! ELF relocatable whose `.text` starts at guest address 0, so symbol values
//! are guest addresses, with a GNU build-id note.

use crate::code;
use anyhow::{Context, Result};
use object::write::{Object, Symbol, SymbolSection};
use object::{
    Architecture, BinaryFormat, Endianness, SectionKind, SymbolFlags, SymbolKind, SymbolScope,
};
use std::path::Path;

/// `/proc/kallsyms` lines for the guest functions.
pub fn kallsyms() -> String {
    code::functions()
        .iter()
        .map(|f| format!("{:016x} T {}\n", f.addr, f.name))
        .collect()
}

/// A 20-byte build id derived from the image (FNV-1a, spread over 20 bytes):
/// stable for the same code, different if the code changes.
pub fn build_id() -> [u8; 20] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut id = [0u8; 20];
    for (i, b) in code::image().iter().enumerate() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
        id[i % 20] ^= (h >> 24) as u8;
    }
    id
}

/// The ELF file.
pub fn elf() -> Result<Vec<u8>> {
    let mut obj = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let text = obj.add_section(Vec::new(), b".text".to_vec(), SectionKind::Text);
    obj.set_section_data(text, code::image(), 16);
    for f in code::functions() {
        obj.add_symbol(Symbol {
            name: f.name.as_bytes().to_vec(),
            value: f.addr,
            size: f.bytes.len() as u64,
            kind: SymbolKind::Text,
            scope: SymbolScope::Linkage,
            weak: false,
            section: SymbolSection::Section(text),
            flags: SymbolFlags::None,
        });
    }
    let note = obj.add_section(
        Vec::new(),
        b".note.gnu.build-id".to_vec(),
        SectionKind::Note,
    );
    let mut n = Vec::new();
    n.extend(4u32.to_le_bytes()); // namesz
    n.extend(20u32.to_le_bytes()); // descsz
    n.extend(3u32.to_le_bytes()); // NT_GNU_BUILD_ID
    n.extend(b"GNU\0");
    n.extend(build_id());
    obj.set_section_data(note, n, 4);
    obj.write().context("writing the guest ELF")
}

/// Write `kallsyms`, `vmlinux` and `build-id` into `dir`, and the same into
/// `dir/<name>/` for each guest (a `--guestmount`-style tree).
pub fn write_all(dir: &Path, guests: &[String]) -> Result<()> {
    let ks = kallsyms();
    let elf = elf()?;
    let id: String = build_id().iter().map(|b| format!("{b:02x}")).collect();
    let mut dirs = vec![dir.to_path_buf()];
    dirs.extend(guests.iter().map(|g| dir.join(g)));
    for d in dirs {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        std::fs::write(d.join("kallsyms"), &ks)?;
        std::fs::write(d.join("vmlinux"), &elf)?;
        std::fs::write(d.join("build-id"), format!("{id}\n"))?;
    }
    Ok(())
}
