//! Guest symbols: `--guestkallsyms`, `--guestmodules`, `--guestvmlinux`.
//!
//! Everything here reads files that come from a guest, i.e. untrusted
//! input: sizes are capped, every parse error is a [`SymbolError`] that
//! names the file and line, and nothing panics on bad bytes.

pub mod elf;
pub mod guest;
pub mod kallsyms;
pub mod modules;

use std::path::{Path, PathBuf};

/// Guest symbol files larger than this are refused (a real kallsyms with
/// modules is a few tens of MiB, a vmlinux with DWARF a few hundred).
pub const MAX_TEXT_FILE: u64 = 256 << 20;
pub const MAX_ELF_FILE: u64 = 2 << 30;

#[derive(Debug, thiserror::Error)]
pub enum SymbolError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: file of {size} bytes is larger than the {max} bytes accepted")]
    TooLarge { path: PathBuf, size: u64, max: u64 },
    #[error("{path}:{line}: {why}")]
    Parse {
        path: PathBuf,
        line: usize,
        why: String,
    },
    #[error("{path}: {why}")]
    Invalid { path: PathBuf, why: String },
}

/// Read a whole file, refusing anything larger than `max`.
pub(crate) fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, SymbolError> {
    let io = |source| SymbolError::Io {
        path: path.to_path_buf(),
        source,
    };
    let meta = std::fs::metadata(path).map_err(io)?;
    if meta.len() > max {
        return Err(SymbolError::TooLarge {
            path: path.to_path_buf(),
            size: meta.len(),
            max,
        });
    }
    use std::io::Read;
    let mut buf = Vec::new();
    std::fs::File::open(path)
        .map_err(io)?
        .take(max + 1)
        .read_to_end(&mut buf)
        .map_err(io)?;
    if buf.len() as u64 > max {
        return Err(SymbolError::TooLarge {
            path: path.to_path_buf(),
            size: buf.len() as u64,
            max,
        });
    }
    Ok(buf)
}

/// A resolved address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub name: String,
    pub offset: u64,
    /// Kernel module, for kallsyms entries with `[module]`.
    pub module: Option<String>,
    /// Source file and line, when DWARF had them.
    pub file: Option<String>,
    pub line: Option<u32>,
}

/// An address-sorted symbol table with sizes where known.
#[derive(Debug, Clone, Default)]
pub struct SymbolTable {
    /// `(address, size or 0 if unknown, name, module)`, sorted by address.
    entries: Vec<(u64, u64, String, Option<String>)>,
    /// The entries' addresses alone, for the binary search: 8 bytes an
    /// entry instead of 64 keeps the search in cache (a 200k-symbol
    /// kallsyms was 5x slower to search through `entries`).
    addrs: Vec<u64>,
}

impl SymbolTable {
    pub fn new(mut entries: Vec<(u64, u64, String, Option<String>)>) -> Self {
        entries.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.2.cmp(&b.2)));
        let addrs = entries.iter().map(|e| e.0).collect();
        SymbolTable { entries, addrs }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Address of a symbol by name.
    pub fn address_of(&self, name: &str) -> Option<u64> {
        self.entries.iter().find(|e| e.2 == name).map(|e| e.0)
    }

    /// The symbol covering `addr`, borrowed from the table: the last one at
    /// or below it, within its size when the size is known. No allocation,
    /// for callers that resolve every sample.
    pub fn find(&self, addr: u64) -> Option<SymbolRef<'_>> {
        let i = self.addrs.partition_point(|&a| a <= addr);
        let (start, size, name, module) = self.entries.get(i.checked_sub(1)?)?;
        if *size != 0 && addr - start >= *size {
            return None;
        }
        Some(SymbolRef {
            name,
            offset: addr - start,
            module: module.as_deref(),
        })
    }

    /// [`SymbolTable::find`], owned.
    pub fn lookup(&self, addr: u64) -> Option<Resolved> {
        let r = self.find(addr)?;
        Some(Resolved {
            name: r.name.to_string(),
            offset: r.offset,
            module: r.module.map(str::to_string),
            file: None,
            line: None,
        })
    }
}

/// A symbol of a [`SymbolTable`], borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymbolRef<'a> {
    pub name: &'a str,
    pub offset: u64,
    pub module: Option<&'a str>,
}

/// The KASLR offset of a guest kernel: where kallsyms says `_stext` (or
/// `_text`) is, minus where the vmlinux says it is. Add it to vmlinux
/// addresses, subtract it from sampled guest IPs before an ELF lookup.
pub fn kaslr_offset(running: &SymbolTable, vmlinux: &SymbolTable) -> Option<i64> {
    ["_stext", "_text", "startup_64"].iter().find_map(|s| {
        let r = running.address_of(s)?;
        let v = vmlinux.address_of(s)?;
        Some(r.wrapping_sub(v) as i64)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[(u64, u64, &str)]) -> SymbolTable {
        SymbolTable::new(
            v.iter()
                .map(|(a, s, n)| (*a, *s, n.to_string(), None))
                .collect(),
        )
    }

    #[test]
    fn lookup_respects_sizes() {
        let tab = t(&[
            (0x1000, 8, "main"),
            (0x1100, 6, "hot_a"),
            (0x1200, 0, "hot_b"),
        ]);
        assert_eq!(tab.lookup(0x1103).unwrap().name, "hot_a");
        assert_eq!(tab.lookup(0x1103).unwrap().offset, 3);
        assert!(tab.lookup(0x1106).is_none());
        assert!(tab.lookup(0xfff).is_none());
        assert_eq!(tab.lookup(0x9999).unwrap().name, "hot_b");
    }

    #[test]
    fn kaslr() {
        let run = t(&[(0xffff_ffff_9a00_0000, 0, "_stext")]);
        let elf = t(&[(0xffff_ffff_8100_0000, 0, "_stext")]);
        assert_eq!(kaslr_offset(&run, &elf), Some(0x1900_0000));
        assert_eq!(kaslr_offset(&elf, &run), Some(-0x1900_0000));
        assert_eq!(kaslr_offset(&run, &t(&[])), None);
    }

    #[test]
    fn capped_read() {
        let d = crate::testutil::TempDir::new("cap");
        d.write("f", vec![0u8; 100]);
        assert!(read_capped(&d.path().join("f"), 100).is_ok());
        assert!(matches!(
            read_capped(&d.path().join("f"), 99),
            Err(SymbolError::TooLarge { .. })
        ));
        assert!(matches!(
            read_capped(&d.path().join("nope"), 99),
            Err(SymbolError::Io { .. })
        ));
    }
}
