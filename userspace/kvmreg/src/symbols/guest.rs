//! One guest's symbols from the user's options: `--guestkallsyms`,
//! `--guestmodules`, `--guestvmlinux`, or a `--guestmount` directory with
//! one subdirectory per guest name (a pid is accepted too) holding
//! `kallsyms`, `modules`, `vmlinux` (perf's `proc/kallsyms` and
//! `proc/modules` too) and optionally the running kernel's build-id as
//! `build-id` (hex) or `notes` (a copy of `/sys/kernel/notes`).

use super::elf::{self, ElfSymbols};
use super::modules::{self, Module};
use super::{kallsyms, kaslr_offset, Resolved, SymbolError, SymbolIdx, SymbolTable, Symbolizer};
use crate::Guest;
use std::borrow::Cow;
use std::path::{Path, PathBuf};

/// Where to find a guest's symbols.
///
/// A file named explicitly wins over the one in the guestmount directory.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `--guestkallsyms`: a copy of the guest's `/proc/kallsyms`.
    pub kallsyms: Option<PathBuf>,
    /// `--guestmodules`: a copy of the guest's `/proc/modules`.
    pub modules: Option<PathBuf>,
    /// `--guestvmlinux`: the guest kernel's ELF image, for symbol sizes and
    /// source lines.
    pub vmlinux: Option<PathBuf>,
    /// `--guestmount`: a directory with one subdirectory per guest, where
    /// the files not named above are looked for.
    pub guestmount: Option<PathBuf>,
}

/// The loaded symbols of one guest.
#[derive(Debug, Default)]
pub struct GuestSymbols {
    /// The guest's kallsyms, when a file was found.
    pub kallsyms: Option<SymbolTable>,
    /// The guest's loaded modules; empty without a modules file.
    pub modules: Vec<Module>,
    /// The guest kernel's ELF symbols, when a file was found (and its
    /// build-id matched the running kernel's, where that is known).
    pub vmlinux: Option<ElfSymbols>,
    /// Add to vmlinux addresses to get running addresses.
    pub kaslr: i64,
    /// Facts worth showing the user (where files came from, what is
    /// missing).
    pub notes: Vec<String>,
}

/// The guest's directory under a guestmount: by name, else by pid.
pub fn guestmount_dir(mount: &Path, g: &Guest) -> Option<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(n) = &g.name {
        // Names are checked by the kernel, but a hint comes from a command
        // line: never let it walk out of the mount.
        let s = n.as_str();
        if !s.is_empty() && !s.contains('/') && s != "." && s != ".." {
            candidates.push(mount.join(s));
        }
    }
    candidates.push(mount.join(g.pid.to_string()));
    candidates.into_iter().find(|d| d.is_dir())
}

fn first_existing(dir: &Path, names: &[&str]) -> Option<PathBuf> {
    names.iter().map(|n| dir.join(n)).find(|p| p.is_file())
}

/// The GNU build-id from the raw ELF notes of `/sys/kernel/notes`.
pub fn build_id_from_notes(mut b: &[u8]) -> Option<Vec<u8>> {
    let word = |b: &[u8], i: usize| -> Option<usize> {
        let s = b.get(i * 4..i * 4 + 4)?;
        Some(u32::from_ne_bytes([s[0], s[1], s[2], s[3]]) as usize)
    };
    let pad = |n: usize| n.checked_add(3).map(|v| v & !3);
    while b.len() >= 12 {
        let (namesz, descsz, kind) = (word(b, 0)?, word(b, 1)?, word(b, 2)?);
        let name_end = 12usize.checked_add(pad(namesz)?)?;
        let desc_end = name_end.checked_add(pad(descsz)?)?;
        let name = b.get(12..12 + namesz)?;
        let desc = b.get(name_end..name_end.checked_add(descsz)?)?;
        if kind == 3 && name == b"GNU\0" {
            return Some(desc.to_vec());
        }
        b = b.get(desc_end..)?;
    }
    None
}

/// A hex build-id as written in a guestmount's `build-id` file.
pub fn parse_hex(s: &str) -> Option<Vec<u8>> {
    let s = s.trim();
    if s.is_empty() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The running guest kernel's build-id from a guestmount directory.
pub fn running_build_id(dir: &Path) -> Result<Option<Vec<u8>>, SymbolError> {
    if let Some(p) = first_existing(dir, &["build-id"]) {
        let t = super::read_capped(&p, 4096)?;
        return parse_hex(&String::from_utf8_lossy(&t))
            .map(Some)
            .ok_or_else(|| SymbolError::Invalid {
                path: p,
                why: "not a hex build-id".into(),
            });
    }
    if let Some(p) = first_existing(dir, &["notes"]) {
        let b = super::read_capped(&p, 1 << 20)?;
        return Ok(build_id_from_notes(&b));
    }
    Ok(None)
}

/// Load what the options name for guest `g`. Missing optional files are
/// notes; a file that is there but bad is an error.
pub fn load(opts: &Options, g: &Guest) -> Result<GuestSymbols, SymbolError> {
    let mut out = GuestSymbols::default();
    let dir = opts
        .guestmount
        .as_deref()
        .and_then(|m| guestmount_dir(m, g));
    if let (Some(m), None) = (&opts.guestmount, &dir) {
        out.notes.push(format!(
            "{}: no directory for guest {} (by name or pid)",
            m.display(),
            g.label()
        ));
    }
    let pick = |explicit: &Option<PathBuf>, names: &[&str]| {
        explicit
            .clone()
            .or_else(|| dir.as_deref().and_then(|d| first_existing(d, names)))
    };
    if let Some(p) = pick(&opts.kallsyms, &["kallsyms", "proc/kallsyms"]) {
        out.kallsyms = Some(kallsyms::load(&p)?);
        out.notes.push(format!("kallsyms from {}", p.display()));
    }
    if let Some(p) = pick(&opts.modules, &["modules", "proc/modules"]) {
        out.modules = modules::load(&p)?;
    }
    if let Some(p) = pick(&opts.vmlinux, &["vmlinux"]) {
        let e = elf::load(&p)?;
        let want = match &dir {
            Some(d) => running_build_id(d)?,
            None => None,
        };
        if let (Some(want), Some(have)) = (&want, &e.build_id) {
            if want != have {
                return Err(SymbolError::Invalid {
                    path: p,
                    why: format!(
                        "build-id {} is not the running guest kernel's {}",
                        elf::hex(have),
                        elf::hex(want)
                    ),
                });
            }
        }
        if let Some(ks) = &out.kallsyms {
            out.kaslr = kaslr_offset(ks, &e.table).unwrap_or(0);
        }
        if let Some(n) = &e.lines_note {
            out.notes.push(format!("{}: {n}", p.display()));
        }
        out.vmlinux = Some(e);
    }
    Ok(out)
}

impl GuestSymbols {
    /// Resolve a guest IP: vmlinux (with lines) first, then kallsyms, then
    /// the module range. `None` means show the raw address.
    pub fn resolve(&self, ip: u64) -> Option<Resolved> {
        if let Some(e) = &self.vmlinux {
            if let Some(r) = e.resolve(ip.wrapping_sub(self.kaslr as u64)) {
                return Some(r);
            }
        }
        if let Some(r) = self.kallsyms.as_ref().and_then(|k| k.lookup(ip)) {
            return Some(r);
        }
        modules::module_at(&self.modules, ip).map(|m| Resolved {
            name: format!("[{}]", m.name),
            offset: ip - m.address,
            module: Some(m.name.clone()),
            file: None,
            line: None,
        })
    }
}

/// Slots: the vmlinux symbols, then the kallsyms symbols, then the
/// modules' ranges; tried in [`GuestSymbols::resolve`]'s order.
impl Symbolizer for GuestSymbols {
    fn slots(&self) -> usize {
        self.vmlinux_len() + self.kallsyms_len() + self.modules.len()
    }

    #[inline]
    fn slot(&self, ip: u64) -> Option<u32> {
        let i = if let Some((i, _)) = self
            .vmlinux
            .as_ref()
            .and_then(|e| e.table.find_index(ip.wrapping_sub(self.kaslr as u64)))
        {
            i.get()
        } else if let Some((i, _)) = self.kallsyms.as_ref().and_then(|k| k.find_index(ip)) {
            self.vmlinux_len() + i.get()
        } else {
            let m = modules::module_index(&self.modules, ip)?;
            self.vmlinux_len() + self.kallsyms_len() + m
        };
        u32::try_from(i).ok()
    }

    fn slot_name(&self, slot: u32) -> (Cow<'_, str>, Option<&str>) {
        let s = slot as usize;
        let (nv, nk) = (self.vmlinux_len(), self.kallsyms_len());
        fn in_table(t: &SymbolTable, i: usize) -> (Cow<'_, str>, Option<&str>) {
            let i = SymbolIdx(i as u32);
            (Cow::Borrowed(t.name(i)), t.module(i))
        }
        match (&self.vmlinux, &self.kallsyms) {
            (Some(e), _) if s < nv => in_table(&e.table, s),
            (_, Some(k)) if s < nv + nk => in_table(k, s - nv),
            _ => match s.checked_sub(nv + nk).and_then(|m| self.modules.get(m)) {
                Some(m) => (Cow::Owned(format!("[{}]", m.name)), Some(&m.name)),
                None => (Cow::Borrowed("?"), None),
            },
        }
    }

    fn has_lines(&self) -> bool {
        self.vmlinux.as_ref().is_some_and(|e| e.has_lines())
    }

    /// The vmlinux's line, for addresses a vmlinux symbol covers.
    fn source_line(&self, ip: u64) -> Option<String> {
        let e = self.vmlinux.as_ref()?;
        let addr = ip.wrapping_sub(self.kaslr as u64);
        e.table.find_index(addr)?;
        e.source_line(addr)
    }
}

impl GuestSymbols {
    #[inline]
    fn vmlinux_len(&self) -> usize {
        self.vmlinux.as_ref().map_or(0, |e| e.table.len())
    }

    #[inline]
    fn kallsyms_len(&self) -> usize {
        self.kallsyms.as_ref().map_or(0, SymbolTable::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use crate::GuestName;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend((name.len() as u32).to_ne_bytes());
        b.extend((desc.len() as u32).to_ne_bytes());
        b.extend(kind.to_ne_bytes());
        b.extend(name);
        b.resize(b.len().next_multiple_of(4), 0);
        b.extend(desc);
        b.resize(b.len().next_multiple_of(4), 0);
        b
    }

    #[test]
    fn notes_build_id() {
        let mut b = note(b"Xen\0", 1, &[1, 2, 3]);
        b.extend(note(b"GNU\0", 3, &[0xab; 20]));
        assert_eq!(build_id_from_notes(&b), Some(vec![0xab; 20]));
        for n in 0..b.len() {
            let _ = build_id_from_notes(&b[..n]);
        }
        let mut huge = b.clone();
        huge[0..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(build_id_from_notes(&huge), None);
    }

    #[test]
    fn guestmount_by_name_then_pid_and_no_escape() {
        let d = TempDir::new("gm");
        d.write("web/kallsyms", "1000 T main\n");
        d.write("77/proc/kallsyms", "2000 T other\n");
        let mut g = Guest::new(77);
        g.name = Some(GuestName::Kernel("web".into()));
        assert_eq!(guestmount_dir(d.path(), &g), Some(d.path().join("web")));
        g.name = Some(GuestName::CmdlineHint("..".into()));
        assert_eq!(guestmount_dir(d.path(), &g), Some(d.path().join("77")));
        let opts = Options {
            guestmount: Some(d.path().to_path_buf()),
            ..Default::default()
        };
        let s = load(&opts, &g).unwrap();
        assert_eq!(s.resolve(0x2001).unwrap().name, "other");
        g.pid = 78;
        let s = load(&opts, &g).unwrap();
        assert!(s.kallsyms.is_none() && s.notes[0].contains("no directory"));
    }

    #[test]
    fn bad_build_id_file_is_an_error() {
        let d = TempDir::new("gm-bid");
        d.write("g/build-id", "xyz\n");
        assert!(running_build_id(&d.path().join("g")).is_err());
        d.write("h/build-id", "abcd\n");
        assert_eq!(
            running_build_id(&d.path().join("h")).unwrap(),
            Some(vec![0xab, 0xcd])
        );
    }
}
