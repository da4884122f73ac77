//! `/proc/modules` format: `name size refcount deps state address [taints]`.

use super::{read_capped, SymbolError, MAX_TEXT_FILE};
use std::path::Path;

/// A loaded guest module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// The module name (field 1).
    pub name: String,
    /// Its size in bytes (field 2).
    pub size: u64,
    /// Its load address (field 6); 0 when the guest's `kptr_restrict` hid
    /// it from whoever copied the file.
    pub address: u64,
}

/// Parse `/proc/modules` text.
pub fn parse(text: &str, path: &Path) -> Result<Vec<Module>, SymbolError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let err = |why: &str| SymbolError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            why: why.to_string(),
        };
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 6 {
            return Err(err("fewer than 6 fields"));
        }
        let size = f[1].parse().map_err(|_| err("bad size"))?;
        let addr = f[5]
            .strip_prefix("0x")
            .ok_or_else(|| err("address without 0x"))?;
        let address = u64::from_str_radix(addr, 16).map_err(|_| err("bad address"))?;
        out.push(Module {
            name: f[0].to_string(),
            size,
            address,
        });
    }
    Ok(out)
}

/// Read and parse a modules file.
pub fn load(path: &Path) -> Result<Vec<Module>, SymbolError> {
    parse_bytes(&read_capped(path, MAX_TEXT_FILE)?, path)
}

/// Parse the bytes of a modules file (`path` only names it in errors):
/// what [`load`] does after reading, and what the fuzzer feeds.
pub fn parse_bytes(bytes: &[u8], path: &Path) -> Result<Vec<Module>, SymbolError> {
    parse(&String::from_utf8_lossy(bytes), path)
}

/// The module whose range holds `addr`.
pub fn module_at(mods: &[Module], addr: u64) -> Option<&Module> {
    mods.get(module_index(mods, addr)?)
}

/// [`module_at`], as an index into `mods`.
pub fn module_index(mods: &[Module], addr: u64) -> Option<usize> {
    mods.iter()
        .position(|m| addr >= m.address && addr - m.address < m.size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_finds() {
        let t = "kvm_intel 409600 0 - Live 0xffffffffc0a5a000\nkvm 1388544 1 kvm_intel, Live 0xffffffffc0800000 (E)\n";
        let m = parse(t, Path::new("modules")).unwrap();
        assert_eq!(m.len(), 2);
        assert_eq!(m[1].name, "kvm");
        assert_eq!(
            module_at(&m, 0xffff_ffff_c0a5_a100).unwrap().name,
            "kvm_intel"
        );
        assert!(module_at(&m, 0x1000).is_none());
    }

    #[test]
    fn bad_lines() {
        let e = parse("kvm 12 0 - Live\n", Path::new("m"))
            .unwrap_err()
            .to_string();
        assert_eq!(e, "m:1: fewer than 6 fields");
        assert!(parse("kvm x 0 - Live 0x0\n", Path::new("m")).is_err());
        assert!(parse("kvm 1 0 - Live ffff\n", Path::new("m")).is_err());
        assert!(parse("kvm 1 0 - Live 0xzz\n", Path::new("m")).is_err());
    }
}
