//! The guest code: 16-bit real-mode machine code at fixed guest addresses,
//! hand-assembled (a dozen bytes, not worth an assembler dependency).
//!
//! ```text
//! 0x1000 main:  call hot_a ; call hot_b ; hlt ; jmp main
//! 0x1100 hot_a: mov cx, 63000 ; loop $ ; ret      (about 70% of the time)
//! 0x1200 hot_b: mov cx, 27000 ; loop $ ; ret      (about 30% of the time)
//! ```
//!
//! `hlt` exits to the VMM once per round, which lets the VMM throttle the
//! guest (`--busy`); with CS base 0 the guest RIP equals these addresses.
//! With `--port-io` each round also writes a byte to port 0x80 before its
//! `hlt` (`out 0x80, al`), one port I/O exit per round, for the exit
//! reason tests: the same number of `io` and `hlt` exits.

/// One instruction: its bytes and its assembler text (Intel syntax), so
/// the image and the listing written as `guest.S` come from one table.
pub struct Insn {
    pub bytes: Vec<u8>,
    pub text: String,
}

/// A function of the guest image.
pub struct Func {
    pub name: &'static str,
    pub addr: u64,
    pub bytes: Vec<u8>,
    pub insns: Vec<Insn>,
}

impl Func {
    fn new(name: &'static str, addr: u64, insns: Vec<Insn>) -> Func {
        let bytes = insns.iter().flat_map(|i| i.bytes.iter().copied()).collect();
        Func {
            name,
            addr,
            bytes,
            insns,
        }
    }
}

pub const ENTRY: u64 = 0x1000;
pub const STACK_TOP: u64 = 0x8000;
pub const HOT_A_LOOPS: u16 = 63000;
pub const HOT_B_LOOPS: u16 = 27000;

fn insn(bytes: Vec<u8>, text: impl Into<String>) -> Insn {
    Insn {
        bytes,
        text: text.into(),
    }
}

fn rel16(from_next: u64, to: u64) -> [u8; 2] {
    ((to as i64 - from_next as i64) as i16).to_le_bytes()
}

fn busy(loops: u16) -> Vec<Insn> {
    let l = loops.to_le_bytes();
    vec![
        insn(vec![0xB9, l[0], l[1]], format!("mov cx, {loops}")),
        insn(vec![0xE2, 0xFE], "loop $"), // to itself
        insn(vec![0xC3], "ret"),
    ]
}

/// The port `--port-io` writes to (POST codes: harmless on any VMM).
pub const PORT: u16 = 0x80;

/// The guest's functions, in address order; `port_io`: a port write each
/// round (`--port-io`).
pub fn functions(port_io: bool) -> Vec<Func> {
    let hot_a = 0x1100;
    let hot_b = 0x1200;
    // call rel16, relative to the end of the 3-byte instruction
    let call = |next: u64, to: u64| [&[0xE8][..], &rel16(next, to)[..]].concat();
    let mut main = vec![
        insn(call(ENTRY + 3, hot_a), "call hot_a"),
        insn(call(ENTRY + 6, hot_b), "call hot_b"),
    ];
    if port_io {
        main.push(insn(vec![0xE6, PORT as u8], format!("out {PORT:#x}, al")));
    }
    main.push(insn(vec![0xF4], "hlt"));
    // jmp rel8 back to main, relative to the end of its 2 bytes.
    let len: usize = main.iter().map(|i| i.bytes.len()).sum::<usize>() + 2;
    main.push(insn(vec![0xEB, (-(len as i64)) as i8 as u8], "jmp main"));
    vec![
        Func::new("main", ENTRY, main),
        Func::new("hot_a", hot_a, busy(HOT_A_LOOPS)),
        Func::new("hot_b", hot_b, busy(HOT_B_LOOPS)),
    ]
}

/// The image from guest address 0 to the end of the last function.
pub fn image(port_io: bool) -> Vec<u8> {
    let funcs = functions(port_io);
    let end = funcs
        .iter()
        .map(|f| f.addr as usize + f.bytes.len())
        .max()
        .unwrap_or(0);
    let mut img = vec![0u8; end];
    for f in &funcs {
        img[f.addr as usize..f.addr as usize + f.bytes.len()].copy_from_slice(&f.bytes);
    }
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branches_land_on_the_functions() {
        let img = image(false);
        let at = |a: usize| i16::from_le_bytes([img[a], img[a + 1]]) as i64;
        assert_eq!(0x1003 + at(0x1001), 0x1100);
        assert_eq!(0x1006 + at(0x1004), 0x1200);
        assert_eq!(img[0x1006], 0xF4);
        assert_eq!(0x1009 + img[0x1008] as i8 as i64, 0x1000);
        assert_eq!(&img[0x1100..0x1106], &[0xB9, 0x18, 0xF6, 0xE2, 0xFE, 0xC3]);
    }

    #[test]
    fn listing_matches_the_bytes() {
        let f = functions(false);
        let texts: Vec<Vec<&str>> = f
            .iter()
            .map(|f| f.insns.iter().map(|i| i.text.as_str()).collect())
            .collect();
        assert_eq!(texts[0], ["call hot_a", "call hot_b", "hlt", "jmp main"]);
        assert_eq!(texts[1], ["mov cx, 63000", "loop $", "ret"]);
        let lens: Vec<usize> = f[0].insns.iter().map(|i| i.bytes.len()).collect();
        assert_eq!(lens, [3, 3, 1, 2]);
        assert_eq!(f[0].bytes.len(), 9);
    }

    #[test]
    fn port_io_writes_port_0x80_then_halts_and_loops() {
        let img = image(true);
        assert_eq!(&img[0x1006..0x1009], &[0xE6, 0x80, 0xF4]);
        // jmp main from the end of its 2 bytes at 0x1009.
        assert_eq!(0x100b + img[0x100a] as i8 as i64, 0x1000);
        let texts: Vec<String> = functions(true)[0]
            .insns
            .iter()
            .map(|i| i.text.clone())
            .collect();
        assert_eq!(texts[2], "out 0x80, al");
        // hot_a and hot_b stay where the symbol files say.
        assert_eq!(&img[0x1100..0x1106], &image(false)[0x1100..0x1106]);
    }
}
