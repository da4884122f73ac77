//! `/proc/kallsyms` format: `<hex address> <type> <name>[\t[<module>]]`.
//!
//! Parsed from the file's bytes in two passes. The first flags, 64 bytes
//! at a time, every byte that a line in the kernel's format has only
//! between fields (whitespace, control characters, non-ASCII). The second
//! takes a line at a time: the flags say where its fields are without a
//! loop over their bytes, the address is read sixteen digits at a time, the
//! name is kept as an offset into the file (which the table keeps as its
//! name buffer), the module name interned. Data symbols are checked and
//! dropped before anything is allocated for them. A line in any other
//! shape (spaces doubled, `\r\n`, a non-ASCII name, an error) is split
//! with `memchr` and parsed field by field, to the same result.
//!
//! On x86-64 the flags and the addresses use SSE2, which every x86-64 CPU
//! has (`std::arch`, no detection at run time): with the portable code,
//! which other architectures build and the tests compare it with, a load
//! took 4.2-4.9 times the file's read, above the goal of 4.
//!
//! Non-UTF-8 bytes: only the names (and module names) of the symbols kept
//! are checked to be UTF-8, and one that is not is an error naming the
//! file and line; bytes elsewhere (a data symbol's name) are not looked at.
//! Fields are split at ASCII whitespace, as the kernel writes them (the
//! parser before split at Unicode whitespace too, after checking the whole
//! file was UTF-8).

use super::{read_capped, SymbolError, SymbolTable, TableBuilder, MAX_TEXT_FILE};
use std::ops::Range;
use std::path::Path;

/// Parse kallsyms text. Only text symbols (`t`/`T`, and `w`/`W` weak) are
/// kept, since samples land in code. A file whose addresses are all zero
/// (read without the right to see them) is an error that says so.
pub fn parse(text: &str, path: &Path) -> Result<SymbolTable, SymbolError> {
    parse_owned(text.as_bytes().to_vec(), path)
}

/// Read and parse a kallsyms file.
pub fn load(path: &Path) -> Result<SymbolTable, SymbolError> {
    parse_owned(read_capped(path, MAX_TEXT_FILE)?, path)
}

/// Parse the bytes of a kallsyms file (`path` only names it in errors):
/// what [`load`] does after reading, and what the fuzzer feeds.
pub fn parse_bytes(bytes: &[u8], path: &Path) -> Result<SymbolTable, SymbolError> {
    parse_owned(bytes.to_vec(), path)
}

/// Parse `buf`, which becomes the table's name buffer.
fn parse_owned(buf: Vec<u8>, path: &Path) -> Result<SymbolTable, SymbolError> {
    let mut b = TableBuilder::new(Vec::new());
    // About 50 bytes a line, most of them text symbols: a guess that
    // saves the vectors' regrowth (pages reserved and never written cost
    // nothing).
    b.reserve(buf.len() / 40);
    let mut nonzero = false;
    let mut lines = 0;
    let mut line_no = 0;
    let mut pos = 0;
    let seps = separators(&buf);
    while pos < buf.len() {
        line_no += 1;
        let (next, sym) = match fast_line(&buf, &seps, pos, &mut b) {
            Some(r) => r,
            None => {
                let end = memchr::memchr(b'\n', buf.get(pos..).unwrap_or_default())
                    .map_or(buf.len(), |i| pos + i);
                let line = trim_end(buf.get(pos..end).unwrap_or_default());
                if line.is_empty() {
                    pos = end + 1;
                    continue;
                }
                let sym = parse_line(line, &mut b).map_err(|why| SymbolError::Parse {
                    path: path.to_path_buf(),
                    line: line_no,
                    why: format!("{why}: {:?}", truncate(&String::from_utf8_lossy(line))),
                })?;
                let name = sym.name.map(|n| pos + n.start..pos + n.end);
                (end + 1, Line { name, ..sym })
            }
        };
        lines += 1;
        nonzero |= sym.addr != 0;
        if let Some(name) = sym.name {
            b.push(sym.addr, 0, name, sym.module)
                .map_err(|_| SymbolError::Parse {
                    path: path.to_path_buf(),
                    line: line_no,
                    why: "more symbols or name bytes than 32-bit offsets hold".into(),
                })?;
        }
        pos = next;
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
    // The names are ranges of the file: it becomes the name buffer.
    b.names = buf;
    Ok(b.finish())
}

/// One line: its address, and for a kept (text) symbol the range of its
/// name and its interned module.
struct Line {
    addr: u64,
    name: Option<Range<usize>>,
    module: Option<u32>,
}

fn kept(kind: u8) -> bool {
    matches!(kind, b't' | b'T' | b'w' | b'W')
}

/// A bit per byte of `buf`, set for the bytes a line in the kernel's
/// format has only between its fields: below 0x21 (whitespace, control
/// characters) and above 0x7e (DEL, not ASCII). Set bits follow the end,
/// so that every search stops there.
fn separators(buf: &[u8]) -> Vec<u64> {
    let mut out = Vec::with_capacity(buf.len() / 64 + 2);
    let mut chunks = buf.chunks_exact(64);
    for c in &mut chunks {
        let Ok(c) = <&[u8; 64]>::try_from(c) else {
            continue;
        };
        out.push(mask64(c));
    }
    let rest = chunks.remainder();
    // Zero bytes are flagged.
    let mut last = [0u8; 64];
    last[..rest.len()].copy_from_slice(rest);
    out.push(mask64(&last));
    out.push(!0);
    out
}

/// [`separators`]' bits of 64 bytes with SSE2 (part of x86-64 itself, so
/// no detection at run time): per 16 bytes a signed compare flags both
/// bytes below 0x21 and those from 0x80 (negative as `i8`), a second
/// flags DEL, and `pmovmskb` gathers the flags. This pass over the whole
/// file was a quarter of the parse with the portable version below.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn mask64(c: &[u8; 64]) -> u64 {
    use std::arch::x86_64::{
        __m128i, _mm_cmpeq_epi8, _mm_cmpgt_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128,
        _mm_set1_epi8,
    };
    let mut m = 0;
    for (k, c) in c.chunks_exact(16).enumerate() {
        // SAFETY: `c` is 16 bytes long, which is what the unaligned load
        // reads; SSE2, which the intrinsics need, is in every x86-64 CPU.
        let flags = unsafe {
            let v = _mm_loadu_si128(c.as_ptr().cast::<__m128i>());
            let low_or_high = _mm_cmpgt_epi8(_mm_set1_epi8(0x21), v);
            let del = _mm_cmpeq_epi8(v, _mm_set1_epi8(0x7f));
            _mm_movemask_epi8(_mm_or_si128(low_or_high, del))
        };
        m |= u64::from(flags as u16) << (16 * k);
    }
    m
}

/// The portable [`mask64`]: the compare over 64 bytes at once, which the
/// compiler turns into vector instructions, and eight flags gathered into
/// a byte with a multiplication.
#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline(always)]
fn mask64_portable(c: &[u8; 64]) -> u64 {
    let mut flags = [0u8; 64];
    for (f, &c) in flags.iter_mut().zip(c) {
        *f = u8::from(c.wrapping_sub(0x21) > 0x5d);
    }
    let mut m = 0;
    for (k, w) in flags.chunks_exact(8).enumerate() {
        let w = u64::from_le_bytes(<[u8; 8]>::try_from(w).unwrap_or_default());
        // Bit 0 of byte j lands on bit 56 + j: the product's top byte.
        m |= (w.wrapping_mul(0x0102_0408_1020_4080) >> 56) << (8 * k);
    }
    m
}

#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn mask64(c: &[u8; 64]) -> u64 {
    mask64_portable(c)
}

/// The separator bits of the 64 bytes from `i` (set beyond the end).
#[inline(always)]
fn window(seps: &[u64], i: usize) -> u64 {
    let (w, off) = (i / 64, (i % 64) as u32);
    let lo = seps.get(w).map_or(!0, |&x| x >> off);
    let hi = seps
        .get(w + 1)
        .map_or(!0, |&x| x.checked_shl(64 - off).unwrap_or(0));
    lo | hi
}

/// The first separator at or after `i`.
#[inline(always)]
fn next_sep(seps: &[u64], mut i: usize) -> usize {
    loop {
        let w = window(seps, i);
        if w != 0 {
            return i + w.trailing_zeros() as usize;
        }
        i += 64;
    }
}

/// The line at `pos` if it is in the kernel's exact format, `<16 or 8 hex
/// digits> <type> <name>[\t[<module>]]\n` with printable ASCII fields:
/// the line and where the next one starts. `seps` ([`separators`]) finds
/// the fields without a loop over their bytes. Anything else (`None`) goes
/// to [`parse_line`], which takes what this takes the same way and says
/// what is wrong with the rest. Nothing is allocated for a data symbol.
#[inline(always)]
fn fast_line(buf: &[u8], seps: &[u64], pos: usize, b: &mut TableBuilder) -> Option<(usize, Line)> {
    let w = window(seps, pos);
    let hex = |r: Range<usize>| hex8(buf.get(r)?);
    // Separators exactly after the address and after the type.
    let (addr, sp) = if w & 0x7_ffff == 1 << 16 | 1 << 18 {
        (hex16(buf.get(pos..pos + 16)?)?, pos + 16)
    } else if w & 0x7ff == 1 << 8 | 1 << 10 {
        (hex(pos..pos + 8)?, pos + 8)
    } else {
        return None;
    };
    if buf.get(sp) != Some(&b' ') || buf.get(sp + 2) != Some(&b' ') {
        return None;
    }
    let kind = *buf.get(sp + 1)?;
    let start = sp + 3;
    let rest = w >> (start - pos);
    let end = if rest != 0 {
        start + rest.trailing_zeros() as usize
    } else {
        next_sep(seps, pos + 64)
    };
    if end == start {
        return None;
    }
    let (module, next) = match buf.get(end) {
        None | Some(b'\n') => (None, end + 1),
        Some(b'\t') if buf.get(end + 1) == Some(&b'[') => {
            let m_end = next_sep(seps, end + 2);
            if !matches!(buf.get(m_end), None | Some(b'\n'))
                || m_end < end + 3
                || buf.get(m_end - 1) != Some(&b']')
            {
                return None;
            }
            (Some(end + 2..m_end - 1), m_end + 1)
        }
        _ => return None,
    };
    if !kept(kind) {
        let line = Line {
            addr,
            name: None,
            module: None,
        };
        return Some((next, line));
    }
    // The name is printable ASCII, so UTF-8; so is the module's.
    let module = match module {
        Some(m) => Some(b.intern(buf.get(m)?).ok()?),
        None => None,
    };
    let line = Line {
        addr,
        name: Some(start..end),
        module,
    };
    Some((next, line))
}

/// Eight hex digits, eight bytes at a time: each byte checked to be in
/// `0-9`, `a-f` or `A-F` (for bytes below 0x80, `x + (0x80 - lo)` sets a
/// byte's top bit exactly when it is >= lo, with no carry between bytes),
/// turned into its value, and the eight nibbles gathered in order.
#[inline(always)]
fn hex8(w: &[u8]) -> Option<u64> {
    let x = u64::from_le_bytes(<[u8; 8]>::try_from(w).ok()?);
    if x & HIGHS != 0 {
        return None;
    }
    let between = |lo: u8, hi: u8| {
        (x + ONES * u64::from(0x80 - lo)) & !(x + ONES * u64::from(0x7f - hi)) & HIGHS
    };
    if between(b'0', b'9') | between(b'a', b'f') | between(b'A', b'F') != HIGHS {
        return None;
    }
    // Byte k (the k-th digit, the first the most significant) -> value.
    let n = (x & (ONES * 0x0f)) + ((x >> 6) & ONES) * 9;
    // Pairs of digits into bytes, pairs of bytes into 16 bits, then both.
    let n = (n & 0x0f00_0f00_0f00_0f00) >> 8 | (n & 0x000f_000f_000f_000f) << 4;
    let n = (n & 0x00ff_0000_00ff_0000) >> 16 | (n & 0x0000_00ff_0000_00ff) << 8;
    Some((n & 0xffff) << 16 | n >> 32)
}

/// Sixteen hex digits, the address of a 64-bit kernel.
#[cfg(not(target_arch = "x86_64"))]
#[inline(always)]
fn hex16(w: &[u8]) -> Option<u64> {
    hex16_portable(w)
}

#[cfg_attr(target_arch = "x86_64", allow(dead_code))]
#[inline(always)]
fn hex16_portable(w: &[u8]) -> Option<u64> {
    Some(hex8(w.get(..8)?)? << 32 | hex8(w.get(8..16)?)?)
}

/// [`hex16`] with SSE2 (in every x86-64 CPU), all sixteen digits at once:
/// each byte is a digit when `byte - '0'` is below 10 and a letter when
/// `(byte | 0x20) - 'a'` is below 6 (only `a-f` and `A-F` map there);
/// the values of pairs of digits are joined in 16-bit lanes and packed
/// into eight bytes, the first the most significant. The address took
/// about a third of the parse done eight bytes at a time in scalar code.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn hex16(w: &[u8]) -> Option<u64> {
    use std::arch::x86_64::{
        __m128i, _mm_add_epi8, _mm_and_si128, _mm_andnot_si128, _mm_cmpeq_epi8, _mm_cvtsi128_si64,
        _mm_loadu_si128, _mm_min_epu8, _mm_movemask_epi8, _mm_or_si128, _mm_packus_epi16,
        _mm_set1_epi16, _mm_set1_epi8, _mm_slli_epi16, _mm_srli_epi16, _mm_sub_epi8,
    };
    let w = w.get(..16)?;
    // SAFETY: `w` is 16 bytes long, which is what the unaligned load
    // reads; SSE2, which the intrinsics need, is in every x86-64 CPU.
    let (ok, packed) = unsafe {
        let v = _mm_loadu_si128(w.as_ptr().cast::<__m128i>());
        let below = |x: __m128i, n: i8| _mm_cmpeq_epi8(_mm_min_epu8(x, _mm_set1_epi8(n - 1)), x);
        let digit = _mm_sub_epi8(v, _mm_set1_epi8(b'0' as i8));
        let is_digit = below(digit, 10);
        let letter = _mm_sub_epi8(
            _mm_or_si128(v, _mm_set1_epi8(0x20)),
            _mm_set1_epi8(b'a' as i8),
        );
        let is_letter = below(letter, 6);
        let ok = _mm_movemask_epi8(_mm_or_si128(is_digit, is_letter));
        let value = _mm_or_si128(
            _mm_and_si128(is_digit, digit),
            _mm_andnot_si128(is_digit, _mm_add_epi8(letter, _mm_set1_epi8(10))),
        );
        // Lane k: the digit 2k (the more significant) in its low byte.
        let pairs = _mm_or_si128(
            _mm_slli_epi16(_mm_and_si128(value, _mm_set1_epi16(0xff)), 4),
            _mm_srli_epi16(value, 8),
        );
        (ok, _mm_cvtsi128_si64(_mm_packus_epi16(pairs, pairs)))
    };
    (ok == 0xffff).then(|| (packed as u64).swap_bytes())
}

/// Parse a non-empty line without trailing whitespace. `Err` is why not.
fn parse_line(line: &[u8], b: &mut TableBuilder) -> Result<Line, &'static str> {
    let mut f = Fields { line, pos: 0 };
    let addr = f.next().ok_or("empty")?;
    let addr = parse_hex(field(line, addr)).ok_or("bad address")?;
    let kind = f.next().ok_or("no type")?;
    let name = f.next().ok_or("no name")?;
    let kind = match field(line, kind) {
        &[k] => k,
        _ => return Err("bad type"),
    };
    let module = match f.next() {
        Some(m) => match field(line, m.clone()) {
            [b'[', .., b']'] => Some(m.start + 1..m.end - 1),
            _ => return Err("bad module"),
        },
        None => None,
    };
    if !kept(kind) {
        return Ok(Line {
            addr,
            name: None,
            module: None,
        });
    }
    let bytes = field(line, name.clone());
    if !bytes.is_ascii() && std::str::from_utf8(bytes).is_err() {
        return Err("symbol name is not UTF-8");
    }
    let module = match module {
        Some(m) => Some(
            b.intern(field(line, m))
                .map_err(|_| "module name is not UTF-8")?,
        ),
        None => None,
    };
    Ok(Line {
        addr,
        name: Some(name),
        module,
    })
}

fn field(line: &[u8], r: Range<usize>) -> &[u8] {
    line.get(r).unwrap_or_default()
}

/// ASCII whitespace as `char::is_whitespace` has it (with vertical tab,
/// which `u8::is_ascii_whitespace` leaves out).
#[inline(always)]
fn is_ws(c: u8) -> bool {
    matches!(c, b' ' | b'\t'..=b'\r')
}

fn trim_end(mut line: &[u8]) -> &[u8] {
    while let [rest @ .., last] = line {
        if !is_ws(*last) {
            break;
        }
        line = rest;
    }
    line
}

/// The whitespace-separated fields of a line, as ranges.
struct Fields<'a> {
    line: &'a [u8],
    pos: usize,
}

impl Fields<'_> {
    #[inline]
    fn next(&mut self) -> Option<Range<usize>> {
        let mut i = self.pos;
        while is_ws(*self.line.get(i)?) {
            i += 1;
        }
        let end = field_end(self.line, i);
        self.pos = end;
        Some(i..end)
    }
}

const ONES: u64 = u64::from_le_bytes([0x01; 8]);
const HIGHS: u64 = u64::from_le_bytes([0x80; 8]);

/// Where the field starting at `i` ends: the next whitespace byte or the
/// end of the line. Eight bytes at a time: the lowest byte flagged by
/// `(x - 0x21..) & !x & 0x80..` is the first below 0x21 (a borrow only
/// flags bytes above a true one), a whitespace candidate.
#[inline]
fn field_end(line: &[u8], mut i: usize) -> usize {
    while let Some(chunk) = line.get(i..i + 8) {
        let Ok(chunk) = <[u8; 8]>::try_from(chunk) else {
            break;
        };
        let x = u64::from_le_bytes(chunk);
        let low = x.wrapping_sub(ONES * 0x21) & !x & HIGHS;
        if low == 0 {
            i += 8;
            continue;
        }
        let j = i + (low.trailing_zeros() / 8) as usize;
        match line.get(j) {
            Some(&c) if is_ws(c) => return j,
            // A control character that is not whitespace: part of the field.
            _ => i = j + 1,
        }
    }
    while line.get(i).is_some_and(|&c| !is_ws(c)) {
        i += 1;
    }
    i
}

/// Hex digit values; 0x80 for bytes that are not hex digits.
static HEX: [u8; 256] = {
    let mut t = [0x80u8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

/// What `u64::from_str_radix(s, 16)` accepts (an optional `+`, one or
/// more hex digits, no overflow), without making a `str` first.
#[inline]
fn parse_hex(s: &[u8]) -> Option<u64> {
    let s = s.strip_prefix(b"+").unwrap_or(s);
    if s.is_empty() {
        return None;
    }
    let zeros = s.iter().take_while(|&&c| c == b'0').count();
    let s = s.get(zeros..)?;
    if s.len() > 16 {
        return None;
    }
    let mut v = 0u64;
    let mut bad = 0u8;
    for &c in s {
        let d = HEX[c as usize];
        bad |= d;
        v = v << 4 | u64::from(d & 0xf);
    }
    (bad & 0x80 == 0).then_some(v)
}

fn truncate(s: &str) -> &str {
    let mut end = s.len().min(80);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
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
    fn not_utf8_is_an_error_where_it_is_kept() {
        let d = crate::testutil::TempDir::new("ks");
        d.write("k", [0xff, 0xfe, b'\n']);
        let e = load(&d.path().join("k")).unwrap_err().to_string();
        assert!(e.ends_with("k:1: bad address: \"\u{fffd}\u{fffd}\""), "{e}");
        let b = |t: &[u8]| parse_bytes(t, Path::new("kallsyms"));
        let e = b(b"1000 T ok\n2000 T bad\xff\n").unwrap_err().to_string();
        assert_eq!(
            e,
            "kallsyms:2: symbol name is not UTF-8: \"2000 T bad\u{fffd}\""
        );
        let e = b(b"1000 T ok\t[m\xc3]\n").unwrap_err().to_string();
        assert!(e.starts_with("kallsyms:1: module name is not UTF-8"), "{e}");
        // A dropped data symbol's bytes are not looked at; UTF-8 is kept.
        let t = b(b"1000 T caf\xc3\xa9\t[m\xc3\xa9]\n2000 d \xff\xfe\n").unwrap();
        assert_eq!(t.len(), 1);
        let r = t.find(0x1001).unwrap();
        assert_eq!((r.name, r.module), ("café", Some("mé")));
    }

    /// The parser before this one (a `&str`, `lines`, `split_whitespace`,
    /// a `String` a name), kept to check the new one against.
    fn reference(text: &str) -> Result<Vec<(u64, String, Option<String>)>, String> {
        let mut entries = Vec::new();
        let mut nonzero = false;
        let mut lines = 0;
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            lines += 1;
            let err = |why: &str| format!("kallsyms:{}: {why}: {:?}", i + 1, truncate(line));
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
            nonzero |= addr != 0;
            if matches!(kind, "t" | "T" | "w" | "W") {
                entries.push((addr, name.to_string(), module));
            }
        }
        if lines == 0 {
            return Err("kallsyms: no symbols".into());
        }
        if !nonzero {
            return Err("kallsyms: every address is 0: copy it from the guest as root with kernel.kptr_restrict=0".into());
        }
        // The new order: by address, equal ones in file order.
        entries.sort_by_key(|e| e.0);
        Ok(entries)
    }

    /// Lines built from pieces that exercise every branch of the field
    /// splitting and the hex parser agree with the reference parser, table
    /// and error message alike (ASCII whitespace only: the one documented
    /// difference is Unicode whitespace).
    #[test]
    fn agrees_with_the_reference_parser() {
        let good: [&[&str]; 4] = [
            &[
                "ffffffff81000000",
                "0",
                "+1f",
                "00000000000000000001",
                "DEAD",
                "12345678abcdef0",
            ],
            &["T", "t", "w", "W", "d"],
            &[
                "name",
                "a_b.c",
                "x\x01y",
                "\u{e9}t\u{e9}",
                "n\u{7f}",
                "a_symbol_name_of_more_than_16_bytes",
                "long_name_\u{e9}_with_UTF-8_\u{2030}",
                "ctl_in_the_middle\x01_of_a_long_name",
            ],
            &["[kvm]", "[]", "[a]", "[kvm_intel]", "[a]b]", "[m\u{e9}]"],
        ];
        let bad: &[&str] = &[
            "+",
            "10000000000000000",
            "1x",
            "TT",
            "é",
            "[",
            "[x",
            "x]",
            "extra",
            "-1",
        ];
        let seps = [" ", "\t", "  ", " \t ", "\x0b", "\x0c", "\r"];
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        let mut agreed = (0, 0);
        for _ in 0..20_000 {
            let mut text = String::new();
            for _ in 0..1 + next(4) {
                if next(8) == 0 {
                    text.push_str(seps[next(seps.len())]);
                }
                let fields = if next(4) == 0 {
                    1 + next(5)
                } else {
                    3 + next(2)
                };
                for k in 0..fields {
                    if k > 0 {
                        text.push_str(seps[next(seps.len())]);
                    }
                    let p = match good.get(k) {
                        Some(g) if next(12) != 0 => g[next(g.len())],
                        _ => bad[next(bad.len())],
                    };
                    text.push_str(p);
                }
                if next(6) == 0 {
                    text.push_str(seps[next(seps.len())]);
                }
                text.push_str(["\n", "\r\n", "\n\n"][next(3)]);
            }
            if next(4) == 0 {
                text.pop();
            }
            let want = reference(&text);
            let got = p(&text).map_err(|e| e.to_string()).map(|t| {
                t.iter()
                    .map(|(a, n, m)| (a, n.to_string(), m.map(str::to_string)))
                    .collect::<Vec<_>>()
            });
            assert_eq!(got, want, "{text:?}");
            if want.is_ok() {
                agreed.0 += 1;
            } else {
                agreed.1 += 1;
            }
        }
        // Both outcomes were exercised.
        assert!(agreed.0 > 1000 && agreed.1 > 1000, "{agreed:?}");
    }

    /// Arbitrary bytes, cut anywhere (so the fast path's windows meet the
    /// end of the buffer at every offset): errors, never panics.
    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let good = b"ffffffff81000000 T _stext\nffffffffc0a5a000 t vmx_vcpu_run\t[kvm_intel]\nc0000000 d x\n";
        for n in 0..=good.len() {
            let _ = parse_bytes(&good[..n], Path::new("k"));
        }
        let alphabet = b"0123456789abcdefT t\t\n[]\x00\xff\xc3\xa9\r";
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..3000 {
            let mut b = good.to_vec();
            for _ in 0..1 + x % 200 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let c = alphabet[(x >> 32) as usize % alphabet.len()];
                match x % 3 {
                    0 => b.push(c),
                    1 => {
                        let i = (x >> 20) as usize % b.len().max(1);
                        if let Some(v) = b.get_mut(i) {
                            *v = c;
                        }
                    }
                    _ => b.insert((x >> 20) as usize % (b.len() + 1), c),
                }
            }
            if let Ok(t) = parse_bytes(&b, Path::new("k")) {
                for (a, _, _) in t.iter() {
                    let _ = t.find(a.wrapping_add(1));
                }
            }
        }
    }

    #[test]
    fn equal_addresses_keep_file_order() {
        let t = p("1000 T b\n1000 T a\n2000 T c\n0fff T z\n").unwrap();
        let names: Vec<_> = t.iter().map(|(_, n, _)| n).collect();
        assert_eq!(names, ["z", "b", "a", "c"]);
        // The last of equal addresses is found, as partition_point finds.
        assert_eq!(t.find(0x1001).unwrap().name, "a");
    }

    #[test]
    fn separator_masks_agree() {
        // Every byte value in every lane, then pseudo-random blocks.
        for v in 0..=255u8 {
            for lane in 0..64 {
                let mut c = [b'a'; 64];
                c[lane] = v;
                assert_eq!(mask64(&c), mask64_portable(&c), "byte {v:#x} at {lane}");
            }
        }
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..10_000 {
            let mut c = [0u8; 64];
            for b in &mut c {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                *b = (x >> 56) as u8;
            }
            assert_eq!(mask64(&c), mask64_portable(&c));
        }
    }

    #[test]
    fn hex_parsers_agree() {
        let digits = b"0123456789abcdefABCDEF";
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let mut w = [0u8; 16];
            for b in &mut w {
                *b = digits[(next() % digits.len() as u64) as usize];
            }
            let want = u64::from_str_radix(std::str::from_utf8(&w).unwrap(), 16).unwrap();
            assert_eq!(hex16(&w), Some(want));
            assert_eq!(hex16_portable(&w), Some(want));
            // One byte of any other value makes both refuse it.
            let lane = (next() % 16) as usize;
            w[lane] = (next() >> 56) as u8;
            let valid = digits.contains(&w[lane]);
            assert_eq!(hex16(&w).is_some(), valid, "{w:?}");
            assert_eq!(hex16(&w), hex16_portable(&w), "{w:?}");
        }
        for v in 0..=255u8 {
            let mut w = *b"ffffffff81000000";
            w[7] = v;
            assert_eq!(hex16(&w), hex16_portable(&w), "byte {v:#x}");
        }
    }
}
