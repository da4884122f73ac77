//! ELF symbols (`--guestvmlinux`) via `object`, source lines via
//! `addr2line`, and the GNU build-id.
//!
//! Compressed debug sections are not decompressed (the `object` crate's
//! compression feature is left off to keep the dependency tree small); such
//! files give symbols without lines, and say so in `lines_note`.

use super::{read_capped, Resolved, SymbolError, SymbolTable, TableBuilder, MAX_ELF_FILE};

use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};
use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

type Reader = gimli::EndianArcSlice<gimli::RunTimeEndian>;

/// The symbols (and lines) of one ELF file.
pub struct ElfSymbols {
    /// The defined text (function) symbols, with their sizes where the
    /// file gives them.
    pub table: SymbolTable,
    /// The GNU build-id note; `None` when the file has none.
    pub build_id: Option<Vec<u8>>,
    lines: Option<addr2line::Context<Reader>>,
    /// Why there are no lines, when there are none.
    pub lines_note: Option<String>,
}

impl std::fmt::Debug for ElfSymbols {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElfSymbols")
            .field("symbols", &self.table.len())
            .field("build_id", &self.build_id.as_deref().map(hex))
            .field("lines", &self.lines.is_some())
            .finish()
    }
}

/// Lower-case hex, as build-ids are written.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Parse an ELF image.
pub fn parse(bytes: &[u8], path: &Path) -> Result<ElfSymbols, SymbolError> {
    let invalid = |why: String| SymbolError::Invalid {
        path: path.to_path_buf(),
        why,
    };
    let file = object::File::parse(bytes).map_err(|e| invalid(format!("not a valid ELF: {e}")))?;
    if file.format() != object::BinaryFormat::Elf {
        return Err(invalid(format!("{:?} file, not ELF", file.format())));
    }
    let build_id = file
        .build_id()
        .map_err(|e| invalid(format!("bad build-id note: {e}")))?
        .map(<[u8]>::to_vec);
    // Names are copied into one buffer (checked UTF-8 by `object`), the
    // table laid out as kallsyms' is.
    let mut table = TableBuilder::new(Vec::new());
    for s in file.symbols() {
        if s.kind() != SymbolKind::Text || !s.is_definition() {
            continue;
        }
        let Ok(name) = s.name() else { continue };
        if name.is_empty() {
            continue;
        }
        table
            .push_name(s.address(), s.size(), name, None)
            .map_err(|_| invalid("more symbols or name bytes than 32-bit offsets hold".into()))?;
    }
    let (lines, lines_note) = match load_lines(&file) {
        Ok(Some(c)) => (Some(c), None),
        Ok(None) => (None, Some("no DWARF line information".to_string())),
        Err(e) => (None, Some(format!("DWARF unusable: {e}"))),
    };
    Ok(ElfSymbols {
        table: table.finish(),
        build_id,
        lines,
        lines_note,
    })
}

fn load_lines(file: &object::File<'_>) -> Result<Option<addr2line::Context<Reader>>, String> {
    if file.section_by_name(".debug_line").is_none() {
        return Ok(None);
    }
    let endian = if file.is_little_endian() {
        gimli::RunTimeEndian::Little
    } else {
        gimli::RunTimeEndian::Big
    };
    let load = |id: gimli::SectionId| -> Result<Reader, gimli::Error> {
        let data = file
            .section_by_name(id.name())
            .and_then(|s| {
                if s.compressed_file_range()
                    .is_ok_and(|r| r.format != object::CompressionFormat::None)
                {
                    None
                } else {
                    s.data().ok().map(Cow::Borrowed)
                }
            })
            .unwrap_or(Cow::Borrowed(&[]));
        Ok(gimli::EndianArcSlice::new(Arc::from(&*data), endian))
    };
    let dwarf = gimli::Dwarf::load(load).map_err(|e| e.to_string())?;
    addr2line::Context::from_dwarf(dwarf)
        .map(Some)
        .map_err(|e| e.to_string())
}

impl ElfSymbols {
    /// Symbol and, where DWARF has it, file and line of `addr`.
    pub fn resolve(&self, addr: u64) -> Option<Resolved> {
        let mut r = self.table.lookup(addr)?;
        if let Some(loc) = self.location(addr) {
            r.file = loc.file.map(str::to_string);
            r.line = loc.line;
        }
        Some(r)
    }

    /// Whether there are DWARF lines.
    pub fn has_lines(&self) -> bool {
        self.lines.is_some()
    }

    /// `file:line` (or `file`) of `addr`, where DWARF has it: for the rows
    /// shown, not per sample.
    pub fn source_line(&self, addr: u64) -> Option<String> {
        let loc = self.location(addr)?;
        match (loc.file, loc.line) {
            (Some(f), Some(l)) => Some(format!("{f}:{l}")),
            (Some(f), None) => Some(f.to_string()),
            _ => None,
        }
    }

    fn location(&self, addr: u64) -> Option<addr2line::Location<'_>> {
        // addr2line looks up `[addr, addr + 1)` without checking for
        // overflow, a panic at u64::MAX (which a guest IP minus the KASLR
        // offset can be): the last byte of the address space gets no line.
        let ctx = self.lines.as_ref().filter(|_| addr != u64::MAX)?;
        ctx.find_location(addr).ok().flatten()
    }
}

/// Read and parse an ELF file.
pub fn load(path: &Path) -> Result<ElfSymbols, SymbolError> {
    let bytes = read_capped(path, MAX_ELF_FILE)?;
    parse(&bytes, path)
}

/// Only the build-id of an ELF file, for matching guest files.
pub fn build_id(bytes: &[u8]) -> Option<Vec<u8>> {
    let file = object::File::parse(bytes).ok()?;
    file.build_id().ok().flatten().map(<[u8]>::to_vec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[inline(never)]
    #[no_mangle]
    pub extern "C" fn kvmreg_elf_test_marker() -> u32 {
        std::hint::black_box(42)
    }

    #[test]
    fn own_test_binary_has_symbols_and_lines() {
        assert_eq!(kvmreg_elf_test_marker(), 42);
        let exe = std::env::current_exe().unwrap();
        let syms = load(&exe).unwrap();
        let addr = syms
            .table
            .address_of("kvmreg_elf_test_marker")
            .expect("marker symbol");
        let r = syms.resolve(addr).unwrap();
        assert_eq!(r.name, "kvmreg_elf_test_marker");
        assert_eq!(r.offset, 0);
        if syms.lines_note.is_none() {
            let file = r.file.expect("file from DWARF");
            assert!(file.ends_with("symbols/elf.rs"), "{file}");
            assert!(r.line.is_some());
        } else {
            eprintln!("lines not tested: {:?}", syms.lines_note);
        }
    }

    /// Found by the elf_dwarf fuzz target: an ELF with DWARF lines whose
    /// last text symbol has no size, so it covers u64::MAX, and addr2line
    /// overflowed computing `u64::MAX + 1`.
    #[test]
    fn fuzz_resolve_last_address_with_dwarf_lines() {
        // Copied: `object` wants the ELF header aligned, as a read file is.
        let b = include_bytes!("../../tests/data/fuzz/elf_dwarf-addr2line-probe-overflow").to_vec();
        let syms = parse(&b, Path::new("vmlinux")).unwrap();
        assert!(syms.lines.is_some(), "the input must have DWARF lines");
        let r = syms.resolve(u64::MAX).expect("a symbol covers u64::MAX");
        assert_eq!(r.line, None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let exe = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let p = Path::new("vmlinux");
        assert!(parse(b"", p).is_err());
        assert!(parse(b"\x7fELF\x02\x01\x01", p).is_err());
        assert!(parse(b"not an elf at all", p).is_err());
        // Truncations and corruptions of a real ELF header region.
        for n in [16, 64, 200, 4096] {
            let _ = parse(&exe[..n.min(exe.len())], p);
        }
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..200 {
            let mut b = exe[..exe.len().min(1 << 16)].to_vec();
            for _ in 0..8 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let i = (x as usize) % b.len().min(4096);
                b[i] = (x >> 40) as u8;
            }
            let _ = parse(&b, p);
        }
    }
}
