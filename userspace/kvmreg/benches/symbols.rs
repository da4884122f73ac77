//! Guest symbol resolution cost (Documentation/benchmarks.md): loading a
//! 200,000-symbol kallsyms file and resolving addresses in it. Run with
//! `cargo bench -p kvmreg --bench symbols`. Lookups use
//! `SymbolTable::find` (borrowed, no allocation), what a per-sample path
//! should call; `lookup` adds two string copies. A plain `harness = false`
//! program (no criterion: two numbers and their floors do not need it).
//!
//! Each figure comes with its floor, measured in the same run: reading the
//! file into a string (what any loader pays), and a bare binary search over
//! the sorted addresses (what any lookup pays).

use kvmreg::symbols::kallsyms;
use std::hint::black_box;
use std::time::Instant;

const SYMBOLS: usize = 200_000;
const LOOKUPS: usize = 2_000_000;
const ROUNDS: usize = 7;

/// xorshift64*: deterministic, so every run resolves the same addresses.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A kallsyms text shaped like a distribution kernel's: text, data and
/// weak symbols, one in ten in a module, names 10-40 bytes.
fn kallsyms_text(rng: &mut Rng) -> (String, Vec<u64>) {
    let mut text = String::with_capacity(SYMBOLS * 48);
    let mut addr = 0xffff_ffff_8100_0000u64;
    let mut addrs = Vec::with_capacity(SYMBOLS);
    for i in 0..SYMBOLS {
        addr += 16 + rng.next() % 512;
        let kind = ["T", "t", "t", "t", "W", "d", "D", "r"][(rng.next() % 8) as usize];
        let len = 10 + (rng.next() % 31) as usize;
        let name: String = (0..len)
            .map(|j| (b'a' + ((i + j * 7) % 26) as u8) as char)
            .collect();
        text.push_str(&format!("{addr:016x} {kind} {name}_{i}"));
        if i % 10 == 0 {
            text.push_str("\t[kvm]");
        }
        text.push('\n');
        addrs.push(addr);
    }
    (text, addrs)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (text, addrs) = kallsyms_text(&mut rng);
    let dir = std::env::temp_dir().join(format!("kvmreg-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("kallsyms");
    std::fs::write(&path, &text)?;

    let mut load = Vec::new();
    let mut read = Vec::new();
    let mut table = None;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let s = std::fs::read_to_string(&path)?;
        read.push(t.elapsed().as_secs_f64());
        black_box(s);
        let t = Instant::now();
        let tab = kallsyms::load(&path)?;
        load.push(t.elapsed().as_secs_f64());
        table = Some(tab);
    }
    let table = table.ok_or("no rounds")?;
    let _ = std::fs::remove_dir_all(&dir);

    let lo = addrs[0];
    let hi = addrs[addrs.len() - 1] + 64;
    let probes: Vec<u64> = (0..LOOKUPS).map(|_| lo + rng.next() % (hi - lo)).collect();
    let mut sorted = addrs.clone();
    sorted.sort_unstable();
    let mut lookup = Vec::new();
    let mut floor = Vec::new();
    let mut found = 0usize;
    for _ in 0..ROUNDS {
        let t = Instant::now();
        found = 0;
        for &p in &probes {
            if let Some(r) = table.find(black_box(p)) {
                found += black_box(r.name.len()).min(1);
            }
        }
        lookup.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut sum = 0usize;
        for &p in &probes {
            sum += sorted.partition_point(|&a| a <= black_box(p));
        }
        black_box(sum);
        floor.push(t.elapsed().as_secs_f64());
    }
    let (load, read) = (median(load), median(read));
    let (lookup, floor) = (median(lookup), median(floor));
    println!(
        "kallsyms: {} lines, {} text symbols kept, {:.1} MB",
        SYMBOLS,
        table.len(),
        text.len() as f64 / 1e6
    );
    println!(
        "load:   {:.1} ms (median of {ROUNDS}); reading the file alone {:.1} ms: {:.1}x the floor (goal: < 50 ms)",
        load * 1e3,
        read * 1e3,
        load / read
    );
    println!(
        "lookup: {:.1} M/s ({found} of {LOOKUPS} resolved); bare binary search {:.1} M/s: {:.1}x the floor's time (goal: >= 10 M/s)",
        LOOKUPS as f64 / lookup / 1e6,
        LOOKUPS as f64 / floor / 1e6,
        lookup / floor
    );
    Ok(())
}
