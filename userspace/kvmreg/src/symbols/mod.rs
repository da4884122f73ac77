//! Guest symbols: `--guestkallsyms`, `--guestmodules`, `--guestvmlinux`.
//!
//! Everything here reads files that come from a guest, i.e. untrusted
//! input: sizes are capped, every parse error is a [`SymbolError`] that
//! names the file and line, and nothing panics on bad bytes.

pub mod elf;
pub mod guest;
mod index;
pub mod kallsyms;
pub mod modules;

use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// Guest symbol files larger than this are refused (a real kallsyms with
/// modules is a few tens of MiB, a vmlinux with DWARF a few hundred).
pub const MAX_TEXT_FILE: u64 = 256 << 20;
/// Guest ELF files (`--guestvmlinux`) larger than this are refused.
pub const MAX_ELF_FILE: u64 = 2 << 30;

/// Why a guest symbol file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SymbolError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The file is larger than accepted for its kind (e.g.
    /// [`MAX_TEXT_FILE`], [`MAX_ELF_FILE`]).
    #[error("{path}: file of {size} bytes is larger than the {max} bytes accepted")]
    TooLarge {
        /// The file.
        path: PathBuf,
        /// Its size in bytes (what was read, if it grew while read).
        size: u64,
        /// The cap in bytes.
        max: u64,
    },
    /// A line of a text file (kallsyms, modules) did not parse.
    #[error("{path}:{line}: {why}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The line number, from 1.
        line: usize,
        /// What was wrong (for kallsyms, with the line, shortened).
        why: String,
    },
    /// The file as a whole is unusable: not ELF, no symbols, every address
    /// 0, a build-id of another kernel.
    #[error("{path}: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        why: String,
    },
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
    // Sized from the start (`take` hides the size from `read_to_end`,
    // which would grow the buffer by doubling, copying it each time).
    let mut buf = Vec::with_capacity(usize::try_from(meta.len()).unwrap_or(0).saturating_add(1));
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
    /// The symbol's name, or `[module]` for an address only a module's
    /// range covers.
    pub name: String,
    /// Bytes from the symbol's (or module's) start to the address.
    pub offset: u64,
    /// Kernel module, for kallsyms entries with `[module]`.
    pub module: Option<String>,
    /// Source file and line, when DWARF had them.
    pub file: Option<String>,
    /// The line in [`file`](Self::file), when DWARF had it.
    pub line: Option<u32>,
}

/// A symbol of a [`SymbolTable`]: its position in address order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SymbolIdx(u32);

impl SymbolIdx {
    /// The position, as an index.
    pub fn get(self) -> usize {
        self.0 as usize
    }
}

/// No module (a `u32` index into [`SymbolTable`]'s module list otherwise).
const NO_MODULE: u32 = u32::MAX;

/// Where a symbol's name is in the name buffer, and its module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    name_off: u32,
    name_len: u32,
    module: u32,
}

/// An address-sorted symbol table with sizes where known, laid out for
/// lookups: the addresses in their own search index (a two-level index,
/// `symbols/index.rs`), names as offsets into one byte buffer (for
/// kallsyms, the file itself), module names interned.
///
/// Symbols at the same address stay in the order they were added (file
/// order for kallsyms, symbol table order for ELF); a lookup gives the last
/// of them, as `partition_point(|a| a <= addr) - 1` does.
///
/// Names are checked to be UTF-8 when added (kallsyms: only the names it
/// keeps, see [`kallsyms::parse_bytes`]), so they are `&str` here.
#[derive(Clone, Default)]
pub struct SymbolTable {
    index: index::AddrIndex,
    /// Per symbol, in address order.
    meta: Vec<Meta>,
    /// Per symbol, in address order: 0 if unknown. Empty when no size is
    /// known (kallsyms), so lookups do not touch it.
    sizes: Vec<u64>,
    names: Vec<u8>,
    modules: Vec<Box<str>>,
}

impl std::fmt::Debug for SymbolTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SymbolTable")
            .field("symbols", &self.len())
            .field("sized", &!self.sizes.is_empty())
            .field("modules", &self.modules)
            .finish()
    }
}

impl SymbolTable {
    /// A table of `(address, size or 0 if unknown, name, module)`.
    pub fn new(entries: Vec<(u64, u64, String, Option<String>)>) -> Self {
        let mut b = TableBuilder::new(Vec::new());
        for (addr, size, name, module) in entries {
            let module = module.and_then(|m| b.intern(m.as_bytes()).ok());
            // A `Vec<(.., String, ..)>` cannot hold 4 GiB of names.
            let _ = b.push_name(addr, size, &name, module);
        }
        b.finish()
    }

    /// The number of symbols.
    pub fn len(&self) -> usize {
        self.meta.len()
    }

    /// True if the table has no symbol.
    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    /// Address of a symbol by name (a linear scan: for the few names
    /// [`kaslr_offset`] asks for, not for samples).
    pub fn address_of(&self, name: &str) -> Option<u64> {
        let i = self
            .meta
            .iter()
            .position(|m| self.name_bytes(m) == name.as_bytes())?;
        self.index.get(i)
    }

    /// The symbol covering `addr` and the offset into it: the last one at
    /// or below it, within its size when the size is known. What a
    /// per-sample path calls: a search of the address index and, for ELF
    /// tables, a read of the size; no name is touched.
    #[inline]
    pub fn find_index(&self, addr: u64) -> Option<(SymbolIdx, u64)> {
        let (i, start) = self.index.floor(addr)?;
        let offset = addr - start;
        if let Some(&size) = self.sizes.get(i) {
            if size != 0 && offset >= size {
                return None;
            }
        }
        Some((SymbolIdx(u32::try_from(i).ok()?), offset))
    }

    /// The symbols in address order: `(address, name, module)`.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &str, Option<&str>)> + '_ {
        self.index.iter().zip(0..).map(|(a, i)| {
            let i = SymbolIdx(i);
            (a, self.name(i), self.module(i))
        })
    }

    /// Address of symbol `i`.
    pub fn address(&self, i: SymbolIdx) -> Option<u64> {
        self.index.get(i.get())
    }

    fn name_bytes(&self, m: &Meta) -> &[u8] {
        let start = m.name_off as usize;
        self.names
            .get(start..start + m.name_len as usize)
            .unwrap_or_default()
    }

    /// Name of symbol `i` ("" for an index not of this table).
    pub fn name(&self, i: SymbolIdx) -> &str {
        // Checked when the symbol was added; checked again rather than
        // trusted with `from_utf8_unchecked`: a few bytes, only for the
        // rows a person sees.
        self.meta
            .get(i.get())
            .and_then(|m| std::str::from_utf8(self.name_bytes(m)).ok())
            .unwrap_or_default()
    }

    /// Module of symbol `i`, for kallsyms entries with `[module]`.
    pub fn module(&self, i: SymbolIdx) -> Option<&str> {
        let m = self.meta.get(i.get())?.module;
        self.modules.get(m as usize).map(|m| &**m)
    }

    /// Symbol `i`, borrowed, at `offset` into it.
    pub fn symbol(&self, i: SymbolIdx, offset: u64) -> SymbolRef<'_> {
        SymbolRef {
            name: self.name(i),
            offset,
            module: self.module(i),
        }
    }

    /// The symbol covering `addr`, borrowed: [`SymbolTable::find_index`]
    /// and its name.
    pub fn find(&self, addr: u64) -> Option<SymbolRef<'_>> {
        let (i, offset) = self.find_index(addr)?;
        Some(self.symbol(i, offset))
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

/// Collects symbols, then sorts them into a [`SymbolTable`].
pub(crate) struct TableBuilder {
    addrs: Vec<u64>,
    meta: Vec<Meta>,
    /// Empty until a symbol has a size.
    sizes: Vec<u64>,
    pub(crate) names: Vec<u8>,
    modules: Vec<Box<str>>,
    module_ids: std::collections::HashMap<Box<str>, u32>,
    /// The module interned last.
    last_module: Option<u32>,
    sorted: bool,
}

/// More symbols than a `u32` counts, or names beyond 4 GiB.
#[derive(Debug)]
pub(crate) struct TableFull;

impl TableBuilder {
    /// A builder whose names are offsets into `names` (names added with
    /// [`TableBuilder::push_name`] are appended to it).
    pub(crate) fn new(names: Vec<u8>) -> Self {
        TableBuilder {
            addrs: Vec::new(),
            meta: Vec::new(),
            sizes: Vec::new(),
            names,
            modules: Vec::new(),
            module_ids: Default::default(),
            last_module: None,
            sorted: true,
        }
    }

    pub(crate) fn reserve(&mut self, n: usize) {
        self.addrs.reserve(n);
        self.meta.reserve(n);
    }

    /// The index of module `name`, added if new. The last module is
    /// checked first: kallsyms lists a module's symbols together.
    #[inline]
    pub(crate) fn intern(&mut self, name: &[u8]) -> Result<u32, std::str::Utf8Error> {
        if let Some(i) = self.last_module {
            if self.modules.get(i as usize).map(|m| m.as_bytes()) == Some(name) {
                return Ok(i);
            }
        }
        let name = std::str::from_utf8(name)?;
        let i = match self.module_ids.get(name) {
            Some(&i) => i,
            None => {
                // More than 4 billion modules would take more input than
                // is read: they would share the last index.
                let i = u32::try_from(self.modules.len()).unwrap_or(NO_MODULE - 1);
                self.modules.push(name.into());
                self.module_ids.insert(name.into(), i);
                i
            }
        };
        self.last_module = Some(i);
        Ok(i)
    }

    /// Add a symbol whose name is `names[name.start..name.end]`, already
    /// checked to be UTF-8.
    #[inline]
    pub(crate) fn push(
        &mut self,
        addr: u64,
        size: u64,
        name: std::ops::Range<usize>,
        module: Option<u32>,
    ) -> Result<(), TableFull> {
        let name_off = u32::try_from(name.start).map_err(|_| TableFull)?;
        let name_len = u32::try_from(name.len()).map_err(|_| TableFull)?;
        if self.addrs.len() >= u32::MAX as usize {
            return Err(TableFull);
        }
        if size != 0 || !self.sizes.is_empty() {
            self.sizes.resize(self.addrs.len(), 0);
            self.sizes.push(size);
        }
        self.sorted &= self.addrs.last().is_none_or(|&last| last <= addr);
        self.addrs.push(addr);
        self.meta.push(Meta {
            name_off,
            name_len,
            module: module.unwrap_or(NO_MODULE),
        });
        Ok(())
    }

    /// Add a symbol, copying its name into the name buffer.
    pub(crate) fn push_name(
        &mut self,
        addr: u64,
        size: u64,
        name: &str,
        module: Option<u32>,
    ) -> Result<(), TableFull> {
        let start = self.names.len();
        if u32::try_from(start + name.len()).is_err() {
            return Err(TableFull);
        }
        self.names.extend_from_slice(name.as_bytes());
        self.push(addr, size, start..start + name.len(), module)
    }

    /// Sort by address (stable: equal addresses keep the order they were
    /// added in) and index.
    pub(crate) fn finish(mut self) -> SymbolTable {
        if !self.sizes.is_empty() {
            self.sizes.resize(self.addrs.len(), 0);
        }
        // The kernel's own symbols come in address order; a module's are
        // in its symbol table's order, after them. Only then is there a
        // permutation to sort (stable, and near linear on sorted runs).
        if !self.sorted {
            let mut order: Vec<u32> = (0..self.addrs.len() as u32).collect();
            order.sort_by_key(|&i| self.addrs[i as usize]);
            let by = |v: &[u64]| order.iter().map(|&i| v[i as usize]).collect::<Vec<_>>();
            self.addrs = by(&self.addrs);
            if !self.sizes.is_empty() {
                self.sizes = by(&self.sizes);
            }
            self.meta = order.iter().map(|&i| self.meta[i as usize]).collect();
        }
        SymbolTable {
            index: index::AddrIndex::new(self.addrs),
            meta: self.meta,
            sizes: self.sizes,
            names: self.names,
            modules: self.modules,
        }
    }
}

/// A symbol of a [`SymbolTable`], borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymbolRef<'a> {
    /// The symbol's name.
    pub name: &'a str,
    /// Bytes from the symbol's start to the address looked up.
    pub offset: u64,
    /// Kernel module, for kallsyms entries with `[module]`.
    pub module: Option<&'a str>,
}

/// Symbols that samples are counted against (a [`SymbolTable`], a guest's
/// [`guest::GuestSymbols`]): a dense slot number per symbol, found per
/// sample without allocating, and names and source lines only when the
/// rows a person sees are built.
pub trait Symbolizer {
    /// Slots are `0..slots()`.
    fn slots(&self) -> usize;
    /// The slot of the symbol covering `ip`: the per-sample call.
    fn slot(&self, ip: u64) -> Option<u32>;
    /// Symbol name and module of a slot.
    fn slot_name(&self, slot: u32) -> (Cow<'_, str>, Option<&str>);
    /// Whether [`Symbolizer::source_line`] can say anything.
    fn has_lines(&self) -> bool {
        false
    }
    /// `file:line` (or `file`) of `ip`, where debug information has it.
    fn source_line(&self, _ip: u64) -> Option<String> {
        None
    }
}

impl Symbolizer for SymbolTable {
    fn slots(&self) -> usize {
        self.len()
    }

    #[inline]
    fn slot(&self, ip: u64) -> Option<u32> {
        self.find_index(ip).map(|(i, _)| i.0)
    }

    fn slot_name(&self, slot: u32) -> (Cow<'_, str>, Option<&str>) {
        let i = SymbolIdx(slot);
        (Cow::Borrowed(self.name(i)), self.module(i))
    }
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
