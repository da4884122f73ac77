//! `kvmtop profile`: the hottest guest-kernel functions of one guest,
//! from `cpu-clock` samples of its vCPU threads (`perf kvm top` for one
//! guest), with symbols from the guest's kallsyms / modules / vmlinux.

use crate::cli::{BatchArgs, SymbolArgs};
use crate::guests;
use crate::out::emit;
use kvmreg::perf::profile::{AddrCounts, Functions};
use kvmreg::perf::record::{CpuMode, Sample};
use kvmreg::perf::{Attributor, Sampler, SamplerConfig};
use kvmreg::symbols::guest::{self as gsym, GuestSymbols};
use kvmreg::symbols::Symbolizer;
use kvmreg::{Config, Guest};
use serde::Serialize;
use std::io::IsTerminal;
use std::time::Instant;

/// One function of a profile frame.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Hot {
    /// The symbol, or the raw guest address (`0x...`) when unresolved.
    pub symbol: String,
    pub module: Option<String>,
    /// `file:line` of the function's hottest address, where DWARF has it.
    pub source: Option<String>,
    pub samples: u64,
    /// Share of the guest-mode samples.
    pub pct: f64,
}

/// One interval of a guest's profile.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ProfileFrame {
    pub guest: String,
    pub id: Option<u64>,
    pub pid: u32,
    pub interval_s: f64,
    pub guest_kernel: u64,
    pub guest_user: u64,
    /// Samples of the vCPU threads outside guest mode (KVM and the VMM).
    pub host: u64,
    pub lost: u64,
    /// `guest-id` (the registry's sample tag) or `vcpu-thread`.
    pub attribution: &'static str,
    pub functions: Vec<Hot>,
    /// Symbol loading notes and hints about few samples.
    pub notes: Vec<String>,
}

/// One interval's samples: by mode, and guest-mode ones by function.
/// Counting a sample is an index search and an increment (no name, no
/// allocation); names and source lines are looked up for the rows shown.
pub struct Tally {
    pub guest_kernel: u64,
    pub guest_user: u64,
    pub host: u64,
    /// Guest kernel samples no symbol covers.
    pub kernel_unresolved: u64,
    functions: Functions,
    /// Guest user samples by address: the symbols are the guest kernel's,
    /// which say nothing of a guest process' code.
    user: AddrCounts,
}

/// Distinct guest user addresses a tally keeps rows for (then summed).
const USER_ADDRESSES: usize = 4096;

impl Tally {
    /// A tally for the symbols `syms` (sized for its slots).
    pub fn new(syms: &impl Symbolizer) -> Self {
        Tally {
            guest_kernel: 0,
            guest_user: 0,
            host: 0,
            kernel_unresolved: 0,
            functions: Functions::new(syms),
            user: AddrCounts::new(USER_ADDRESSES),
        }
    }

    /// Count one sample already known to be this guest's (or its thread's).
    #[inline]
    pub fn add(&mut self, mode: CpuMode, ip: u64, syms: &impl Symbolizer) {
        match mode {
            CpuMode::GuestKernel => {
                self.guest_kernel += 1;
                let slot = syms.slot(ip);
                self.kernel_unresolved += u64::from(slot.is_none());
                self.functions.add(slot, ip);
            }
            CpuMode::GuestUser => {
                self.guest_user += 1;
                self.user.add(ip);
            }
            _ => self.host += 1,
        }
    }

    /// Start the next interval, keeping the memory.
    pub fn clear(&mut self) {
        self.guest_kernel = 0;
        self.guest_user = 0;
        self.host = 0;
        self.kernel_unresolved = 0;
        self.functions.clear();
        self.user.clear();
    }

    /// The `n` hottest functions, ties by name, with the hottest source
    /// line of each where `syms` has lines.
    pub fn top(&self, n: usize, syms: &impl Symbolizer) -> Vec<Hot> {
        let total = (self.guest_kernel + self.guest_user).max(1) as f64;
        let kernel = self.functions.top(n, syms).into_iter().map(|r| Hot {
            pct: 100.0 * r.samples as f64 / total,
            symbol: r.symbol,
            module: r.module,
            source: r.source,
            samples: r.samples,
        });
        let user_row = |symbol: String, samples: u64| Hot {
            pct: 100.0 * samples as f64 / total,
            symbol,
            module: Some(USER_ROW.into()),
            source: None,
            samples,
        };
        let user = self
            .user
            .iter()
            .map(|(ip, n)| user_row(format!("{ip:#x}"), n))
            .chain((self.user.other > 0).then(|| {
                user_row(
                    kvmreg::perf::profile::OTHER_ADDRESSES.into(),
                    self.user.other,
                )
            }));
        let mut rows: Vec<Hot> = kernel.chain(user).collect();
        rows.sort_by(|a, b| {
            b.samples
                .cmp(&a.samples)
                .then_with(|| a.symbol.cmp(&b.symbol))
                .then_with(|| a.module.cmp(&b.module))
        });
        rows.truncate(n);
        rows
    }
}

/// Guest kernel samples below which [`mismatch_note`] says nothing: too
/// few to judge the symbols by.
const MISMATCH_MIN_SAMPLES: u64 = 50;

/// A note when most guest kernel samples fall outside every symbol given:
/// symbols of another build, or of the right build without the running
/// guest's KASLR offset, would give that; the symbols of the running
/// kernel cover its text (outside it are only a module loaded after the
/// symbols were copied, or firmware).
pub fn mismatch_note(t: &Tally, have_symbols: bool) -> Option<String> {
    (have_symbols && t.guest_kernel >= MISMATCH_MIN_SAMPLES && 2 * t.kernel_unresolved > t.guest_kernel).then(|| {
        format!(
            "{} of {} guest kernel samples fall outside every symbol given: the symbols are probably not the running guest's (another build, or a KASLR offset not applied), so the rows are addresses, not functions",
            t.kernel_unresolved, t.guest_kernel
        )
    })
}

/// The module column of a row of guest user addresses.
pub const USER_ROW: &str = "[guest user]";

/// How often a profile's rings are drained between frames: a vCPU
/// thread's ring (16 pages) holds about a second of samples at the 1 ms
/// period, so a frame interval longer than that lost samples when the
/// rings were read only at the frame (seen as a guest's share of perf's
/// samples off by a third in the perf-guests suite).
pub const POLL: std::time::Duration = std::time::Duration::from_millis(100);

/// A running profile of one guest.
pub struct Profiler {
    pub guest: Guest,
    syms: GuestSymbols,
    sampler: Sampler,
    attributor: Attributor,
    tally: Tally,
    since: Instant,
    lost_before: u64,
    pub notes: Vec<String>,
}

impl Profiler {
    pub fn start(g: &Guest, syms: &SymbolArgs) -> anyhow::Result<Profiler> {
        let opts = gsym::Options {
            kallsyms: syms.guestkallsyms.clone(),
            modules: syms.guestmodules.clone(),
            vmlinux: syms.guestvmlinux.clone(),
            guestmount: syms.guestmount.clone(),
        };
        let loaded = gsym::load(&opts, g).map_err(|e| {
            anyhow::anyhow!(
                "guest symbols for {}: {e} (fix or leave out that option to see raw addresses)",
                g.label_for(crate::guests::viewer())
            )
        })?;
        let mut notes = loaded.notes.clone();
        if loaded.kallsyms.is_none() && loaded.vmlinux.is_none() {
            notes.push("no guest symbols: pass --guestkallsyms, --guestvmlinux or --guestmount to name functions".into());
        }
        let sampler =
            Sampler::new(std::slice::from_ref(g), SamplerConfig::default()).map_err(|e| {
                anyhow::anyhow!(
                    "cannot sample guest {}: {e}",
                    g.label_for(crate::guests::viewer())
                )
            })?;
        Ok(Profiler {
            guest: g.clone(),
            tally: Tally::new(&loaded),
            syms: loaded,
            attributor: Attributor::new(std::slice::from_ref(g)),
            sampler,
            since: Instant::now(),
            lost_before: 0,
            notes,
        })
    }

    /// Count what the rings hold into the interval's tally; between
    /// frames, at least every [`POLL`].
    pub fn drain(&mut self) {
        let t = &mut self.tally;
        let syms = &self.syms;
        let attributor = &self.attributor;
        self.sampler.poll(|s: Sample| {
            if s.mode.is_guest() && attributor.owner(&s).is_none() {
                return;
            }
            t.add(s.mode, s.ip, syms);
        });
    }

    /// Sleep until `until`, draining the rings every [`POLL`].
    pub fn sleep_until(&mut self, until: Instant) {
        loop {
            self.drain();
            let now = Instant::now();
            if now >= until {
                return;
            }
            std::thread::sleep((until - now).min(POLL));
        }
    }

    /// The frame of the interval that ends now; the next one starts.
    pub fn take(&mut self, top: usize) -> ProfileFrame {
        self.drain();
        let t = &self.tally;
        let secs = self.since.elapsed().as_secs_f64();
        self.since = Instant::now();
        let lost = self.sampler.lost() - self.lost_before;
        self.lost_before = self.sampler.lost();
        let mut notes = self.notes.clone();
        if t.guest_kernel + t.guest_user == 0 && t.host > 0 {
            notes.push("no guest-mode samples in this interval: without a hardware PMU (or on a kernel without guest-tagged samples) cpu-clock rarely lands in guest mode".into());
        }
        notes.extend(mismatch_note(t, self.syms.slots() > 0));
        let frame = ProfileFrame {
            guest: self.guest.label_for(crate::guests::viewer()),
            id: self.guest.id,
            pid: self.guest.pid,
            interval_s: secs,
            guest_kernel: t.guest_kernel,
            guest_user: t.guest_user,
            host: t.host,
            lost,
            attribution: self.sampler.attribution().as_str(),
            functions: t.top(top, &self.syms),
            notes,
        };
        self.tally.clear();
        frame
    }
}

/// The text of one profile frame.
pub fn text(f: &ProfileFrame) -> String {
    let guest = f.guest_kernel + f.guest_user;
    let mut s = format!(
        "kvmtop profile - guest {} (id {}, pid {})  interval: {:.2}s  attribution: {}\n\
         samples: {} guest ({} guest kernel, {} guest user), {} host on vCPU threads, {} lost\n\n\
         {:>7} {:>8}  {:<32} {:<16} {}\n",
        f.guest,
        f.id.map_or("-".into(), |i| i.to_string()),
        f.pid,
        f.interval_s,
        f.attribution,
        guest,
        f.guest_kernel,
        f.guest_user,
        f.host,
        f.lost,
        "%",
        "SAMPLES",
        "SYMBOL",
        "MODULE",
        "SOURCE"
    );
    for h in &f.functions {
        s.push_str(&format!(
            "{:>6.1}% {:>8}  {:<32} {:<16} {}\n",
            h.pct,
            h.samples,
            crate::render::fit(&h.symbol, 32),
            h.module.as_deref().unwrap_or("[kernel]"),
            h.source.as_deref().unwrap_or("-")
        ));
    }
    for n in &f.notes {
        s.push_str(&format!("note: {n}\n"));
    }
    s
}

pub fn run(
    cfg: &Config,
    wanted: Option<&str>,
    syms: &SymbolArgs,
    args: &BatchArgs,
    top: usize,
) -> anyhow::Result<()> {
    let g = guests::pick(cfg, wanted)?;
    if !args.batch && !args.json && std::io::stdout().is_terminal() {
        return crate::tui::run_profile(cfg, g, syms, args);
    }
    let delay = args.delay();
    let mut p = Profiler::start(&g, syms)?;
    // Without -b (output not a terminal, or --json), frames until
    // interrupted, as `kvmtop stat` prints them.
    let n = args
        .iterations
        .unwrap_or(if args.batch { 1 } else { u64::MAX });
    for _ in 0..n {
        p.sleep_until(Instant::now() + delay);
        let f = p.take(top);
        let t = if args.json {
            format!("{}\n", serde_json::to_string(&f)?)
        } else {
            format!("{}\n", text(&f))
        };
        if !emit(&t)? {
            return Ok(());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    use kvmreg::symbols::Resolved;
    use std::borrow::Cow;
    use std::collections::HashMap;

    /// Symbols with source lines, as a vmlinux with DWARF gives them:
    /// `hot_a` 0x1100-0x11ff (line 7 at 0x1101, 8 elsewhere), `hot_b`
    /// 0x1200-0x12ff (line 20), `hot_a` again in module `m` 0x1300-0x13ff
    /// (no lines).
    struct Fake;

    impl Fake {
        fn resolve(&self, ip: u64) -> Option<Resolved> {
            let slot = self.slot(ip)?;
            let (name, module) = self.slot_name(slot);
            let line = self.source_line(ip);
            Some(Resolved {
                name: name.into_owned(),
                offset: 0,
                module: module.map(str::to_string),
                file: line.as_ref().map(|_| "guest.S".to_string()),
                line: line.and_then(|l| l.rsplit(':').next()?.parse().ok()),
            })
        }
    }

    impl Symbolizer for Fake {
        fn slots(&self) -> usize {
            3
        }

        fn slot(&self, ip: u64) -> Option<u32> {
            match ip {
                0x1100..=0x11ff => Some(0),
                0x1200..=0x12ff => Some(1),
                0x1300..=0x13ff => Some(2),
                _ => None,
            }
        }

        fn slot_name(&self, slot: u32) -> (Cow<'_, str>, Option<&str>) {
            match slot {
                0 => ("hot_a".into(), None),
                1 => ("hot_b".into(), None),
                _ => ("hot_a".into(), Some("m")),
            }
        }

        fn has_lines(&self) -> bool {
            true
        }

        fn source_line(&self, ip: u64) -> Option<String> {
            match ip {
                0x1101 => Some("guest.S:7".into()),
                0x1100..=0x11ff => Some("guest.S:8".into()),
                0x1200..=0x12ff => Some("guest.S:20".into()),
                _ => None,
            }
        }
    }

    #[test]
    fn tally_ranks_functions_and_keeps_hottest_line() {
        let mut t = Tally::new(&Fake);
        for _ in 0..5 {
            t.add(CpuMode::GuestKernel, 0x1101, &Fake);
        }
        t.add(CpuMode::GuestKernel, 0x1102, &Fake);
        t.add(CpuMode::GuestKernel, 0x1200, &Fake);
        t.add(CpuMode::GuestUser, 0x9000, &Fake);
        t.add(CpuMode::HostKernel, 0xffff_ffff_8100_0000, &Fake);
        let top = t.top(10, &Fake);
        assert_eq!((t.guest_kernel, t.guest_user, t.host), (7, 1, 1));
        assert_eq!(top[0].symbol, "hot_a");
        assert_eq!(top[0].samples, 6);
        assert_eq!(top[0].source.as_deref(), Some("guest.S:7"));
        assert!((top[0].pct - 75.0).abs() < 1e-9);
        assert_eq!(top[1].symbol, "0x9000");
        assert_eq!(top[1].module.as_deref(), Some(USER_ROW));
        assert_eq!(top[2].symbol, "hot_b");
        assert_eq!(top[2].source.as_deref(), Some("guest.S:20"));
        assert_eq!(t.top(1, &Fake).len(), 1);
        t.clear();
        assert!(t.top(10, &Fake).is_empty());
    }

    #[test]
    fn guest_user_samples_are_not_resolved_against_kernel_symbols() {
        let mut t = Tally::new(&Fake);
        // 0x1100 is hot_a's to the (kernel) symbols, but a user process'
        // code there is not hot_a.
        t.add(CpuMode::GuestUser, 0x1100, &Fake);
        t.add(CpuMode::GuestUser, 0x1100, &Fake);
        t.add(CpuMode::GuestKernel, 0x1100, &Fake);
        t.add(CpuMode::GuestKernel, 0xffff_ffff_9000_0000, &Fake);
        let top = t.top(10, &Fake);
        let row = |s: &str| top.iter().find(|h| h.symbol == s).cloned();
        let user = row("0x1100").expect("a row for the user address");
        assert_eq!((user.samples, user.module.as_deref()), (2, Some(USER_ROW)));
        assert_eq!(row("hot_a").map(|h| h.samples), Some(1));
        // An unresolved kernel address is not called user code.
        assert_eq!(row("0xffffffff90000000").map(|h| h.module), Some(None));
        let text = text(&ProfileFrame {
            guest: "g".into(),
            id: Some(1),
            pid: 1,
            interval_s: 1.0,
            guest_kernel: t.guest_kernel,
            guest_user: t.guest_user,
            host: 0,
            lost: 0,
            attribution: "guest-id",
            functions: top,
            notes: vec![],
        });
        assert!(
            text.lines()
                .any(|l| l.contains("0x1100") && l.contains(USER_ROW)),
            "{text}"
        );
    }

    #[test]
    fn symbols_that_miss_most_kernel_samples_get_a_note() {
        let mut t = Tally::new(&Fake);
        for k in 0..60 {
            // Two thirds outside every symbol of Fake.
            let ip = if k % 3 == 0 {
                0x1100
            } else {
                0xffff_ffff_8100_0000 + k
            };
            t.add(CpuMode::GuestKernel, ip, &Fake);
        }
        assert_eq!(t.kernel_unresolved, 40);
        let note = mismatch_note(&t, true).expect("a note");
        assert!(note.starts_with("40 of 60 guest kernel samples"), "{note}");
        // Not without symbols (nothing to mismatch), nor on few samples,
        // nor when most resolve.
        assert_eq!(mismatch_note(&t, false), None);
        t.clear();
        for _ in 0..10 {
            t.add(CpuMode::GuestKernel, 0xffff_ffff_8100_0000, &Fake);
        }
        assert_eq!(mismatch_note(&t, true), None);
        for _ in 0..100 {
            t.add(CpuMode::GuestKernel, 0x1200, &Fake);
            t.add(CpuMode::GuestUser, 0x9000, &Fake);
        }
        assert_eq!(mismatch_note(&t, true), None);
    }

    /// The tally before this one: a `Resolved` (two strings, and DWARF's
    /// line) per sample, counted in a map by (symbol, module), with the
    /// source lines of each. The rows must be the same.
    #[test]
    fn rows_equal_resolving_every_sample() {
        let mut t = Tally::new(&Fake);
        type Old = HashMap<(String, Option<String>), (u64, HashMap<String, u64>)>;
        let mut old: Old = HashMap::new();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let ip = 0x10f0 + (x % 0x400) * (x >> 60) / 15;
            t.add(CpuMode::GuestKernel, ip, &Fake);
            let (sym, module, src) = match Fake.resolve(ip) {
                Some(r) => {
                    let src = match (r.file, r.line) {
                        (Some(f), Some(l)) => Some(format!("{f}:{l}")),
                        _ => None,
                    };
                    (r.name, r.module, src)
                }
                None => (format!("{ip:#x}"), None, None),
            };
            let e = old.entry((sym, module)).or_default();
            e.0 += 1;
            if let Some(s) = src {
                *e.1.entry(s).or_default() += 1;
            }
        }
        let mut want: Vec<(String, Option<String>, Option<String>, u64)> = old
            .into_iter()
            .map(|((sym, module), (n, lines))| {
                let src = lines
                    .into_iter()
                    .max_by(|a, b| a.1.cmp(&b.1).then_with(|| b.0.cmp(&a.0)))
                    .map(|(l, _)| l);
                (sym, module, src, n)
            })
            .collect();
        want.sort_by(|a, b| {
            b.3.cmp(&a.3)
                .then_with(|| a.0.cmp(&b.0))
                .then_with(|| a.1.cmp(&b.1))
        });
        let got: Vec<_> = t
            .top(usize::MAX, &Fake)
            .into_iter()
            .map(|h| (h.symbol, h.module, h.source, h.samples))
            .collect();
        assert_eq!(got, want);
        assert!(
            got.iter().filter(|r| r.0 == "hot_a").count() == 2,
            "{got:?}"
        );
    }

    #[test]
    fn text_shows_the_source_column() {
        let mut t = Tally::new(&Fake);
        t.add(CpuMode::GuestKernel, 0x1201, &Fake);
        t.add(CpuMode::GuestKernel, 0x1400, &Fake);
        let f = ProfileFrame {
            guest: "web".into(),
            id: Some(3),
            pid: 10,
            interval_s: 1.0,
            guest_kernel: t.guest_kernel,
            guest_user: 0,
            host: 0,
            lost: 0,
            attribution: "vcpu-thread",
            functions: t.top(10, &Fake),
            notes: Vec::new(),
        };
        let s = text(&f);
        let row = |sym: &str| {
            s.lines()
                .find(|l| l.contains(sym))
                .unwrap_or_else(|| panic!("{sym} missing:\n{s}"))
                .split_whitespace()
                .last()
                .map(str::to_string)
        };
        assert!(s.contains("SOURCE"), "{s}");
        assert_eq!(row("hot_b").as_deref(), Some("guest.S:20"));
        assert_eq!(row("0x1400").as_deref(), Some("-"));
    }
}
