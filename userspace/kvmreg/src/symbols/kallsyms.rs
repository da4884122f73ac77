//! `/proc/kallsyms` format: `<hex address> <type> <name>[\t[<module>]]`.

use super::{read_capped, SymbolError, SymbolTable, MAX_TEXT_FILE};
use std::path::Path;

/// Parse kallsyms text. Only text symbols (`t`/`T`, and `w`/`W` weak) are
/// kept, since samples land in code. A file whose addresses are all zero
/// (read without the right to see them) is an error that says so.
pub fn parse(text: &str, path: &Path) -> Result<SymbolTable, SymbolError> {
    let mut entries = Vec::new();
    let mut nonzero = false;
    let mut lines = 0;
    for (i, line) in text.lines().enumerate() {
        let line = line.trim_end();
        if line.is_empty() {
            continue;
        }
        lines += 1;
        let err = |why: &str| SymbolError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            why: format!("{why}: {:?}", truncate(line)),
        };
        let mut f = line.split_whitespace();
        let addr = f.next().ok_or_else(|| err("empty"))?;
        let addr = u64::from_str_radix(addr, 16).map_err(|_| err("bad address"))?;
        let kind = f.next().ok_or_else(|| err("no type"))?;
        let name = f.next().ok_or_else(|| err("no name"))?;
        if kind.len() != 1 {
            return Err(err("bad type"));
        }
        let module = match f.next() {
            Some(m) => Some(
                m.strip_prefix('[')
                    .and_then(|m| m.strip_suffix(']'))
                    .ok_or_else(|| err("bad module"))?
                    .to_string(),
            ),
            None => None,
        };
        if addr != 0 {
            nonzero = true;
        }
        if matches!(kind, "t" | "T" | "w" | "W") {
            entries.push((addr, 0, name.to_string(), module));
        }
    }
    if lines == 0 {
        return Err(SymbolError::Invalid {
            path: path.to_path_buf(),
            why: "no symbols".into(),
        });
    }
    if !nonzero {
        return Err(SymbolError::Invalid {
            path: path.to_path_buf(),
            why: "every address is 0: copy it from the guest as root with kernel.kptr_restrict=0"
                .into(),
        });
    }
    Ok(SymbolTable::new(entries))
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(80);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Read and parse a kallsyms file.
pub fn load(path: &Path) -> Result<SymbolTable, SymbolError> {
    parse_bytes(&read_capped(path, MAX_TEXT_FILE)?, path)
}

/// Parse the bytes of a kallsyms file (`path` only names it in errors):
/// what [`load`] does after reading, and what the fuzzer feeds.
pub fn parse_bytes(bytes: &[u8], path: &Path) -> Result<SymbolTable, SymbolError> {
    let text = std::str::from_utf8(bytes).map_err(|e| SymbolError::Invalid {
        path: path.to_path_buf(),
        why: format!("not UTF-8 text ({e})"),
    })?;
    parse(text, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: &str) -> Result<SymbolTable, SymbolError> {
        parse(t, Path::new("kallsyms"))
    }

    #[test]
    fn parses_kernel_and_module_symbols() {
        let t = "ffffffff81000000 T _stext\nffffffff81000010 t do_one\nffffffff82000000 D some_data\nffffffffc0a5a000 t vmx_vcpu_run\t[kvm_intel]\n";
        let tab = p(t).unwrap();
        assert_eq!(tab.len(), 3);
        let r = tab.lookup(0xffff_ffff_c0a5_a010).unwrap();
        assert_eq!(r.name, "vmx_vcpu_run");
        assert_eq!(r.module.as_deref(), Some("kvm_intel"));
        assert_eq!(tab.lookup(0xffff_ffff_8100_0012).unwrap().name, "do_one");
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        let e = p("ffffffff81000000 T ok\nzzzz T bad\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("kallsyms:2: bad address"), "{e}");
        assert!(p("1000 T\n").is_err());
        assert!(p("1000 TT x\n").is_err());
        assert!(p("1000 T x [mod\n").is_err());
        assert!(p("").is_err());
        let e = p("0000000000000000 T a\n0000000000000000 T b\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("kptr_restrict"), "{e}");
        // Non-ASCII garbage in the message does not split a character.
        assert!(p(&"é".repeat(100)).is_err());
    }

    #[test]
    fn not_utf8_is_an_error() {
        let d = crate::testutil::TempDir::new("ks");
        d.write("k", [0xff, 0xfe, b'\n']);
        assert!(matches!(
            load(&d.path().join("k")),
            Err(SymbolError::Invalid { .. })
        ));
    }
}
