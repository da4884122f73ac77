//! Symbol files matching the guest code: a kallsyms-format text file and an
//! ELF relocatable whose `.text` starts at guest address 0, so symbol values
//! are guest addresses, with a GNU build-id note and DWARF (a compile unit,
//! one subprogram per function, a line program) that maps every guest
//! instruction to its line in `guest.S`, a listing of the hand-assembled
//! code written beside the ELF.

use crate::code;
use anyhow::{Context, Result};
use object::write::{Object, Symbol, SymbolSection};
use object::{
    Architecture, BinaryFormat, Endianness, SectionKind, SymbolFlags, SymbolKind, SymbolScope,
};
use std::path::Path;

/// `/proc/kallsyms` lines for the guest functions.
pub fn kallsyms() -> String {
    code::functions(false)
        .iter()
        .map(|f| format!("{:016x} T {}\n", f.addr, f.name))
        .collect()
}

/// A 20-byte build id derived from the image (FNV-1a, spread over 20 bytes):
/// stable for the same code, different if the code changes.
pub fn build_id() -> [u8; 20] {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut id = [0u8; 20];
    for (i, b) in code::image(false).iter().enumerate() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100_0000_01b3);
        id[i % 20] ^= (h >> 24) as u8;
    }
    id
}

/// The source file name the DWARF refers to, relative (no
/// `DW_AT_comp_dir`): the file lies beside the ELF.
pub const SOURCE_NAME: &str = "guest.S";

/// `guest.S`: a listing of the guest code, one line per instruction, and
/// the `(guest address, line)` of each instruction (lines count from 1).
/// It is not assembled from: the bytes come from `code.rs`, and the
/// listing is generated from the same table.
pub fn source() -> (String, Vec<(u64, u64)>) {
    let mut text = String::new();
    let mut lines = Vec::new();
    let mut n = 0u64;
    let mut push = |text: &mut String, l: String| {
        text.push_str(&l);
        text.push('\n');
        n += 1;
        n
    };
    push(
        &mut text,
        "; guest.S - the kvmreg-fixture guest code (16-bit real mode, Intel syntax)".into(),
    );
    push(
        &mut text,
        "; a listing written by kvmreg-fixture for DWARF line info; the bytes".into(),
    );
    push(
        &mut text,
        "; are hand-assembled in the fixture, not built from this file".into(),
    );
    push(&mut text, "\t.code16".into());
    for f in code::functions(false) {
        push(&mut text, String::new());
        push(&mut text, format!("\t.org {:#x}", f.addr));
        push(&mut text, format!("{}:", f.name));
        let mut addr = f.addr;
        for i in &f.insns {
            let hex: Vec<String> = i.bytes.iter().map(|b| format!("{b:02x}")).collect();
            let line = push(
                &mut text,
                format!("\t{:<16}; {addr:#06x}: {}", i.text, hex.join(" ")),
            );
            lines.push((addr, line));
            addr += i.bytes.len() as u64;
        }
    }
    (text, lines)
}

/// `.debug_info`, `.debug_abbrev`, `.debug_line`, `.debug_str`,
/// `.debug_ranges` for the guest code: addresses are absolute guest
/// addresses (no relocations needed, `.text` starts at 0).
pub fn dwarf() -> Result<Vec<(&'static str, Vec<u8>)>> {
    use gimli::write::{
        Address, AttributeValue, DwarfUnit, EndianVec, LineProgram, LineString, Range, RangeList,
        Sections,
    };
    use gimli::{Encoding, Format, LineEncoding, LittleEndian};

    let encoding = Encoding {
        format: Format::Dwarf32,
        version: 4,
        address_size: 8,
    };
    let mut dw = DwarfUnit::new(encoding);
    // Directory 0 is the working directory; without DW_AT_comp_dir readers
    // give the file name as is ("guest.S"), relative to the ELF.
    let mut program = LineProgram::new(
        encoding,
        LineEncoding::default(),
        LineString::String(b".".to_vec()),
        None,
        LineString::String(SOURCE_NAME.as_bytes().to_vec()),
        None,
    );
    let dir = program.default_directory();
    let file = program.add_file(
        LineString::String(SOURCE_NAME.as_bytes().to_vec()),
        dir,
        None,
    );
    let (_, lines) = source();
    let line_of = |addr: u64| lines.iter().find(|l| l.0 == addr).map(|l| l.1);
    let funcs = code::functions(false);
    for f in &funcs {
        program.begin_sequence(Some(Address::Constant(f.addr)));
        let mut off = 0u64;
        for i in &f.insns {
            let line = line_of(f.addr + off).context("instruction missing from guest.S")?;
            let row = program.row();
            row.address_offset = off;
            row.file = file;
            row.line = line;
            row.is_statement = true;
            program.generate_row();
            off += i.bytes.len() as u64;
        }
        program.end_sequence(off);
    }
    dw.unit.line_program = program;

    let ranges = dw.unit.ranges.add(RangeList(
        funcs
            .iter()
            .map(|f| Range::StartLength {
                begin: Address::Constant(f.addr),
                length: f.bytes.len() as u64,
            })
            .collect(),
    ));
    let root = dw.unit.root();
    let cu = dw.unit.get_mut(root);
    cu.set(
        gimli::DW_AT_producer,
        AttributeValue::String(b"kvmreg-fixture".to_vec()),
    );
    cu.set(
        gimli::DW_AT_name,
        AttributeValue::String(SOURCE_NAME.as_bytes().to_vec()),
    );
    cu.set(
        gimli::DW_AT_language,
        AttributeValue::Language(gimli::DW_LANG_Mips_Assembler),
    );
    cu.set(
        gimli::DW_AT_low_pc,
        AttributeValue::Address(Address::Constant(0)),
    );
    cu.set(gimli::DW_AT_ranges, AttributeValue::RangeListRef(ranges));
    for f in &funcs {
        let id = dw.unit.add(root, gimli::DW_TAG_subprogram);
        let sp = dw.unit.get_mut(id);
        let name = dw.strings.add(f.name);
        sp.set(gimli::DW_AT_name, AttributeValue::StringRef(name));
        sp.set(
            gimli::DW_AT_low_pc,
            AttributeValue::Address(Address::Constant(f.addr)),
        );
        sp.set(
            gimli::DW_AT_high_pc,
            AttributeValue::Udata(f.bytes.len() as u64),
        );
        sp.set(
            gimli::DW_AT_decl_file,
            AttributeValue::FileIndex(Some(file)),
        );
        sp.set(
            gimli::DW_AT_decl_line,
            AttributeValue::Udata(line_of(f.addr).unwrap_or(0).saturating_sub(1)),
        );
    }
    let mut sections = Sections::new(EndianVec::new(LittleEndian));
    dw.write(&mut sections).context("writing DWARF")?;
    let mut out = Vec::new();
    sections
        .for_each(|id, data| {
            if !data.slice().is_empty() {
                out.push((id.name(), data.slice().to_vec()));
            }
            Ok::<(), gimli::write::Error>(())
        })
        .context("collecting DWARF sections")?;
    Ok(out)
}

/// The ELF file.
pub fn elf() -> Result<Vec<u8>> {
    let mut obj = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let text = obj.add_section(Vec::new(), b".text".to_vec(), SectionKind::Text);
    obj.set_section_data(text, code::image(false), 16);
    for f in code::functions(false) {
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
    for (name, data) in dwarf()? {
        let id = obj.add_section(Vec::new(), name.as_bytes().to_vec(), SectionKind::Debug);
        obj.set_section_data(id, data, 1);
    }
    obj.write().context("writing the guest ELF")
}

/// Write `kallsyms`, `vmlinux`, `guest.S` and `build-id` into `dir`, and the same into
/// `dir/<name>/` for each guest (a `--guestmount`-style tree).
pub fn write_all(dir: &Path, guests: &[String]) -> Result<()> {
    let ks = kallsyms();
    let elf = elf()?;
    let (src, _) = source();
    let id: String = build_id().iter().map(|b| format!("{b:02x}")).collect();
    let mut dirs = vec![dir.to_path_buf()];
    dirs.extend(guests.iter().map(|g| dir.join(g)));
    for d in dirs {
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        std::fs::write(d.join("kallsyms"), &ks)?;
        std::fs::write(d.join("vmlinux"), &elf)?;
        std::fs::write(d.join(SOURCE_NAME), &src)?;
        std::fs::write(d.join("build-id"), format!("{id}\n"))?;
    }
    Ok(())
}
