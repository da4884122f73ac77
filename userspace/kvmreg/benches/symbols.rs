//! Guest symbol resolution cost (Documentation/benchmarks.md): loading a
//! 200,000-line kallsyms file, and resolving guest IPs the way
//! `kvmtop profile` does. Run with `cargo bench -p kvmreg --bench symbols`.
//! A plain `harness = false` program (no criterion: a few ratios and their
//! intervals do not need it).
//!
//! Every figure is measured beside its floor in the same rounds, the
//! rounds interleaved (each round runs every variant, in an order that
//! rotates) so that load on the machine falls on all of them alike:
//!
//! - load: `kallsyms::load` against reading the file's bytes
//!   (`std::fs::read`, what any loader pays), and against reading it into
//!   a `String` (`read_to_string`, which also checks UTF-8: the floor of
//!   this benchmark's earlier versions, which the issue's "14-21x" used);
//! - lookups: `SymbolTable::find_index`, the search the profile calls,
//!   against a bare `partition_point` binary search over the same sorted
//!   addresses in a `Vec<u64>`;
//! - the profile path per sample: `GuestSymbols::slot` and
//!   `Functions::add`, what `kvmtop profile` runs for each guest sample,
//!   against the same binary search.
//!
//! Each ratio is the median of the per-round ratios with a 95% interval of
//! the median from order statistics (the binomial interval: no assumption
//! about the distribution). Allocations are counted by this binary's
//! global allocator; the profile path must make none.

use kvmreg::perf::profile::Functions;
use kvmreg::symbols::guest::GuestSymbols;
use kvmreg::symbols::{kallsyms, Symbolizer};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

const SYMBOLS: usize = 200_000;
const LOOKUPS: usize = 2_000_000;
const ROUNDS: usize = 21;
const LOAD_REPS: usize = 5;

/// The system allocator, counting allocations.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every method passes its arguments unchanged to `System`, which
// upholds `GlobalAlloc`'s contract; the counter is an atomic add.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: the caller's guarantees for `layout` are System's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Relaxed);
        // SAFETY: `ptr` and `layout` come from this allocator, i.e. from
        // System, as the caller guarantees.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `realloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

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
/// weak symbols, one in ten in a module, names 10-40 bytes. (The same
/// file as the benchmark's earlier versions, so figures compare.)
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

/// Median and a 95% interval of it: the order statistics of ranks k and
/// n + 1 - k for the largest k whose binomial coverage is >= 95%.
struct Summary {
    median: f64,
    lo: f64,
    hi: f64,
}

/// The rank k of the interval [x_(k), x_(n+1-k)] and its coverage, which
/// is 1 - 2 P(X <= k - 1) for X ~ Binomial(n, 1/2).
fn ranks(n: usize) -> (usize, f64) {
    let mut pmf = vec![0.5f64.powi(n as i32)];
    for j in 1..=n {
        pmf.push(pmf[j - 1] * (n - j + 1) as f64 / j as f64);
    }
    let mut best = (1, 1.0 - 2.0 * pmf[0]);
    for k in 2..=n.div_ceil(2) {
        let coverage = 1.0 - 2.0 * pmf[..k].iter().sum::<f64>();
        if coverage < 0.95 {
            break;
        }
        best = (k, coverage);
    }
    best
}

fn summary(mut v: Vec<f64>) -> Summary {
    v.sort_by(f64::total_cmp);
    let (k, _) = ranks(v.len());
    Summary {
        median: v[v.len() / 2],
        lo: v[k - 1],
        hi: v[v.len() - k],
    }
}

/// "met" only when the whole interval is on the goal's side.
fn verdict(s: &Summary, at_most: Option<f64>, at_least: Option<f64>) -> &'static str {
    let met = at_most.is_none_or(|g| s.hi <= g) && at_least.is_none_or(|g| s.lo >= g);
    let missed = at_most.is_some_and(|g| s.lo > g) || at_least.is_some_and(|g| s.hi < g);
    match (met, missed) {
        (true, _) => "met",
        (_, true) => "NOT met",
        _ => "undecided (the interval spans the goal)",
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (text, _) = kallsyms_text(&mut rng);
    let dir = std::env::temp_dir().join(format!("kvmreg-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let path = dir.join("kallsyms");
    std::fs::write(&path, &text)?;

    // Load: the reads (floors) and load, in an order that rotates; each
    // round's figure is the sum of LOAD_REPS of each (a read takes about a
    // millisecond, which one timing measures with more noise than signal).
    let mut read_t = vec![0.0; ROUNDS];
    let mut string_t = vec![0.0; ROUNDS];
    let mut load_t = vec![0.0; ROUNDS];
    let mut load_allocs = 0;
    let mut table = None;
    for round in 0..ROUNDS {
        for step in 0..3 * LOAD_REPS {
            let t = Instant::now();
            match (round + step) % 3 {
                0 => {
                    black_box(std::fs::read(&path)?);
                    read_t[round] += t.elapsed().as_secs_f64();
                }
                1 => {
                    black_box(std::fs::read_to_string(&path)?);
                    string_t[round] += t.elapsed().as_secs_f64();
                }
                _ => {
                    let a = ALLOCATIONS.load(Relaxed);
                    let t = Instant::now();
                    let tab = kallsyms::load(&path)?;
                    load_t[round] += t.elapsed().as_secs_f64();
                    load_allocs = ALLOCATIONS.load(Relaxed) - a;
                    table = Some(black_box(tab));
                }
            }
        }
    }
    for t in [&mut read_t, &mut string_t, &mut load_t] {
        t.iter_mut().for_each(|t| *t /= LOAD_REPS as f64);
    }
    let _ = std::fs::remove_dir_all(&dir);
    let table = table.ok_or("no rounds")?;

    // The same sorted addresses as a plain vector, for the floor.
    let sorted: Vec<u64> = table.iter().map(|(a, _, _)| a).collect();
    let lo = sorted[0];
    let hi = sorted[sorted.len() - 1] + 64;
    let probes: Vec<u64> = (0..LOOKUPS).map(|_| lo + rng.next() % (hi - lo)).collect();
    let syms = GuestSymbols {
        kallsyms: Some(table),
        ..Default::default()
    };
    let table = syms.kallsyms.as_ref().ok_or("no table")?;
    let mut functions = Functions::new(&syms);

    let mut floor_t = Vec::new();
    let mut find_t = Vec::new();
    let mut prof_t = Vec::new();
    let mut profile_allocs = 0;
    let mut found = 0usize;
    for round in 0..ROUNDS {
        functions.clear();
        for step in 0..3 {
            match (round + step) % 3 {
                0 => {
                    let t = Instant::now();
                    let mut sum = 0usize;
                    for &p in &probes {
                        sum += sorted.partition_point(|&a| a <= black_box(p));
                    }
                    floor_t.push(t.elapsed().as_secs_f64());
                    black_box(sum);
                }
                1 => {
                    let t = Instant::now();
                    let mut sum = 0u64;
                    found = 0;
                    for &p in &probes {
                        if let Some((i, off)) = table.find_index(black_box(p)) {
                            sum = sum.wrapping_add(i.get() as u64 ^ off);
                            found += 1;
                        }
                    }
                    find_t.push(t.elapsed().as_secs_f64());
                    black_box(sum);
                }
                _ => {
                    let a = ALLOCATIONS.load(Relaxed);
                    let t = Instant::now();
                    for &p in &probes {
                        let p = black_box(p);
                        functions.add(syms.slot(p), p);
                    }
                    let t = t.elapsed().as_secs_f64();
                    profile_allocs += ALLOCATIONS.load(Relaxed) - a;
                    prof_t.push(t);
                }
            }
        }
    }
    black_box(&functions);

    let ratio = |a: &[f64], b: &[f64]| summary(a.iter().zip(b).map(|(x, y)| x / y).collect());
    let rate = |t: &[f64]| summary(t.iter().map(|t| LOOKUPS as f64 / t / 1e6).collect());
    let ms = |t: &[f64]| summary(t.iter().map(|t| t * 1e3).collect());
    let show =
        |s: &Summary, unit: &str| format!("{:.2}{unit} [{:.2}, {:.2}]", s.median, s.lo, s.hi);
    let (k, coverage) = ranks(ROUNDS);
    println!(
        "kallsyms: {SYMBOLS} lines, {:.1} MB, {} text symbols kept; {ROUNDS} interleaved rounds \
         ({LOAD_REPS} loads and reads each, {LOOKUPS} lookups); medians with 95% intervals (order statistics {k} and {} of {ROUNDS}, coverage {:.1}%)",
        text.len() as f64 / 1e6,
        table.len(),
        ROUNDS + 1 - k,
        coverage * 100.0
    );
    let load_ratio = ratio(&load_t, &read_t);
    let string_ratio = ratio(&load_t, &string_t);
    println!(
        "load:    {} ms ({load_allocs} allocations a load); read (floor) {} ms; read_to_string {} ms",
        show(&ms(&load_t), ""),
        show(&ms(&read_t), ""),
        show(&ms(&string_t), ""),
    );
    println!(
        "         load/read {}  goal <= 4x: {}; load/read_to_string {}  goal <= 4x: {}",
        show(&load_ratio, "x"),
        verdict(&load_ratio, Some(4.0), None),
        show(&string_ratio, "x"),
        verdict(&string_ratio, Some(4.0), None)
    );
    let (find_r, floor_r, prof_r) = (rate(&find_t), rate(&floor_t), rate(&prof_t));
    let find_ratio = ratio(&find_t, &floor_t);
    let prof_ratio = ratio(&prof_t, &floor_t);
    println!("floor:   bare binary search {} M/s", show(&floor_r, ""));
    println!(
        "lookup:  find_index {} M/s ({found} of {LOOKUPS} resolved); time/floor's {}  goal <= 1x: {}; goal >= 10 M/s: {}",
        show(&find_r, ""),
        show(&find_ratio, "x"),
        verdict(&find_ratio, Some(1.0), None),
        verdict(&find_r, None, Some(10.0))
    );
    println!(
        "profile: slot + count {} M/s; time/floor's {}  goal <= 1x: {}; goal >= 10 M/s: {}",
        show(&prof_r, ""),
        show(&prof_ratio, "x"),
        verdict(&prof_ratio, Some(1.0), None),
        verdict(&prof_r, None, Some(10.0))
    );
    let samples = (ROUNDS * LOOKUPS) as u64;
    println!(
        "allocations per sample on the profile path: {} ({profile_allocs} in {samples} samples)  goal 0: {}",
        profile_allocs as f64 / samples as f64,
        if profile_allocs == 0 { "met" } else { "NOT met" }
    );
    Ok(())
}
