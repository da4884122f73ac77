//! `kvmtop stat --exits`: one guest's exits per reason, from the
//! `kvm:kvm_exit`/`kvm:kvm_entry` tracepoints on its vCPU threads
//! ([`kvmreg::perf::exits`]), as rates and handling times per interval.

use kvmreg::perf::exits::{ExitTracer, ReasonCount};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// One reason over one interval.
#[derive(Debug, Serialize, PartialEq)]
pub struct ExitLine {
    /// The reason as the kernel's tracepoint names it (`io`, `hlt`,
    /// `IO_INSTRUCTION`, ...).
    pub reason: String,
    /// Exits in the interval.
    pub exits: u64,
    pub per_s: f64,
    /// Mean time from an exit to the vCPU's next entry, in microseconds:
    /// KVM's and the VMM's handling. `None` when no exit of this reason
    /// was followed by an entry in the interval.
    pub avg_handling_us: Option<f64>,
    /// Handling time as a share of the interval, in percent of one CPU
    /// (several vCPUs can add up to more than 100).
    pub handling_pct: f64,
}

/// The exit reasons of one interval.
#[derive(Debug, Serialize, PartialEq)]
pub struct ExitSection {
    /// `vmx` or `svm`, once an exit was seen.
    pub isa: Option<&'static str>,
    /// The vCPU threads traced.
    pub threads: Vec<u32>,
    /// Busiest first.
    pub reasons: Vec<ExitLine>,
    /// Records the kernel dropped in the interval (rings full): the counts
    /// are short by about this many.
    pub lost: u64,
    /// Why the counts may be missing (a KVM without the tracepoints).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Lines of `counts` over `secs`, busiest first, then by name.
pub fn lines(counts: &BTreeMap<String, ReasonCount>, secs: f64) -> Vec<ExitLine> {
    let secs = secs.max(f64::MIN_POSITIVE);
    let mut v: Vec<ExitLine> = counts
        .iter()
        .map(|(reason, c)| ExitLine {
            reason: reason.clone(),
            exits: c.exits,
            per_s: c.exits as f64 / secs,
            avg_handling_us: (c.timed > 0).then(|| c.handled_ns as f64 / c.timed as f64 / 1e3),
            handling_pct: c.handled_ns as f64 / 1e9 / secs * 100.0,
        })
        .collect();
    v.sort_by(|a, b| {
        b.per_s
            .total_cmp(&a.per_s)
            .then_with(|| a.reason.cmp(&b.reason))
    });
    v
}

/// A tracer and what it counted since the last frame.
pub struct Exits {
    tracer: ExitTracer,
    lost_before: u64,
    note: Option<String>,
}

/// How often the rings are drained between frames: a thread's ring holds
/// about 1,500 exits with their entries (computed from the record sizes),
/// so 100 ms keeps up with about 15,000 exits a second per vCPU.
pub const POLL: Duration = Duration::from_millis(100);

impl Exits {
    pub fn new(tracer: ExitTracer) -> Exits {
        Exits {
            tracer,
            lost_before: 0,
            note: kvmreg::perf::exits::vendor_note(),
        }
    }

    pub fn poll(&mut self) {
        self.tracer.poll();
    }

    /// Sleep until `until`, draining the rings every [`POLL`].
    pub fn sleep_until(&mut self, until: Instant) {
        loop {
            self.poll();
            let now = Instant::now();
            if now >= until {
                return;
            }
            std::thread::sleep((until - now).min(POLL));
        }
    }

    /// Begin a new interval now: what was counted so far is dropped.
    pub fn restart(&mut self) {
        self.poll();
        let _ = self.tracer.take();
        self.lost_before = self.tracer.lost();
    }

    /// The section of the interval that ends now, `secs` long.
    pub fn section(&mut self, secs: f64) -> ExitSection {
        self.poll();
        let counts = self.tracer.take();
        let lost = self.tracer.lost();
        let section = ExitSection {
            isa: match self.tracer.isa() {
                Some(1) => Some("vmx"),
                Some(2) => Some("svm"),
                _ => None,
            },
            threads: self.tracer.threads(),
            reasons: lines(&counts, secs),
            lost: lost - self.lost_before,
            note: self.note.clone(),
        };
        self.lost_before = lost;
        section
    }
}

/// The section as text, under the counters of `kvmtop stat -b`.
pub fn text(s: &ExitSection) -> String {
    let mut t = format!(
        "\n{:<28} {:>10} {:>12} {:>14} {:>10}\n",
        format!("EXIT REASON ({})", s.isa.unwrap_or("-")),
        "EXITS",
        "PER SEC",
        "AVG HANDLING",
        "HANDLING%"
    );
    for l in &s.reasons {
        t.push_str(&format!(
            "{:<28} {:>10} {:>12.1} {:>14} {:>10.1}\n",
            l.reason,
            l.exits,
            l.per_s,
            l.avg_handling_us
                .map_or("-".into(), |us| format!("{us:.1}us")),
            l.handling_pct
        ));
    }
    if s.reasons.is_empty() {
        t.push_str("(no exits in this interval)\n");
    }
    if let Some(n) = &s.note {
        t.push_str(&format!("note: {n}\n"));
    }
    if s.lost > 0 {
        t.push_str(&format!(
            "note: {} exit records lost (the rings filled between reads): the counts are short\n",
            s.lost
        ));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_rates_and_mean_handling_times() {
        let counts: BTreeMap<String, ReasonCount> = [
            (
                "hlt".to_string(),
                ReasonCount {
                    exits: 10,
                    timed: 10,
                    handled_ns: 500_000_000,
                },
            ),
            (
                "io".to_string(),
                ReasonCount {
                    exits: 40,
                    timed: 39,
                    handled_ns: 39 * 20_000,
                },
            ),
            (
                "npf".to_string(),
                ReasonCount {
                    exits: 1,
                    timed: 0,
                    handled_ns: 0,
                },
            ),
        ]
        .into();
        let l = lines(&counts, 2.0);
        assert_eq!(
            l.iter().map(|l| l.reason.as_str()).collect::<Vec<_>>(),
            ["io", "hlt", "npf"]
        );
        assert_eq!(l[0].per_s, 20.0);
        assert_eq!(l[0].avg_handling_us, Some(20.0));
        assert_eq!(l[1].handling_pct, 25.0);
        assert_eq!(l[2].avg_handling_us, None);
        let t = text(&ExitSection {
            isa: Some("svm"),
            threads: vec![5],
            reasons: l,
            lost: 3,
            note: None,
        });
        assert!(t.contains("EXIT REASON (svm)"), "{t}");
        assert!(
            t.lines().any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["io", "40", "20.0", "20.0us", "0.0"]),
            "{t}"
        );
        assert!(t
            .lines()
            .any(|l| l.starts_with("npf ") && l.contains(" - ")));
        assert!(t.contains("3 exit records lost"));
    }
}
