//! `kvmtop stat`: one guest's KVM counters as rates, like `kvm_stat`.

use crate::cli::BatchArgs;
use crate::frame::counter_rates;
use crate::guests;
use crate::out::emit;
use kvmreg::{Config, Guest, Source};
use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Instant;

#[derive(Debug, Serialize, PartialEq)]
pub struct StatLine {
    pub name: String,
    pub total: u64,
    pub per_s: f64,
    /// Where this counter came from (`proc-kvm`, `debugfs`, `stats-fd`).
    pub source: String,
}

#[derive(Debug, Serialize)]
pub struct StatFrame {
    pub guest: String,
    pub id: Option<u64>,
    pub pid: u32,
    pub source: String,
    pub interval_s: f64,
    pub stats: Vec<StatLine>,
    /// What could not be read, e.g. why vCPU stats are missing.
    pub notes: Vec<String>,
}

/// Lines sorted like kvm_stat: busiest first, then by total, then name.
pub fn lines(
    a: &BTreeMap<String, u64>,
    b: &BTreeMap<String, u64>,
    sources: &BTreeMap<String, Source>,
    secs: f64,
) -> Vec<StatLine> {
    let rates = counter_rates(a, b, secs);
    let mut v: Vec<StatLine> = b
        .iter()
        .map(|(k, t)| StatLine {
            name: k.clone(),
            total: *t,
            per_s: rates.get(k).copied().unwrap_or(0.0),
            source: sources.get(k).map_or("-".into(), Source::to_string),
        })
        .collect();
    v.sort_by(|x, y| {
        y.per_s
            .total_cmp(&x.per_s)
            .then(y.total.cmp(&x.total))
            .then_with(|| x.name.cmp(&y.name))
    });
    v
}

pub fn text(f: &StatFrame) -> String {
    let mut s = format!(
        "kvmtop stat - guest {} (id {}, pid {})  source: {}  interval: {:.2}s\n\n{:<36} {:>16} {:>12}  {}\n",
        f.guest,
        f.id.map_or("-".into(), |i| i.to_string()),
        f.pid,
        f.source,
        f.interval_s,
        "EVENT",
        "TOTAL",
        "PER SEC",
        "SOURCE"
    );
    for l in &f.stats {
        s.push_str(&format!(
            "{:<36} {:>16} {:>12.1}  {}\n",
            l.name, l.total, l.per_s, l.source
        ));
    }
    for n in &f.notes {
        s.push_str(&format!("note: {n}\n"));
    }
    s
}

fn counters(cfg: &Config, g: &Guest) -> anyhow::Result<kvmreg::discover::Counters> {
    kvmreg::guest_counters(cfg, g).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the KVM stats of guest {} (pid {}): {e}",
            g.label(),
            g.pid
        )
    })
}

pub fn run(cfg: &Config, wanted: Option<&str>, args: &BatchArgs) -> anyhow::Result<()> {
    let delay = args.delay()?;
    let g = guests::pick(cfg, wanted)?;
    let mut prev = counters(cfg, &g)?;
    let mut at = Instant::now();
    // Without -b, print frames until interrupted, as kvm_stat -l does.
    let n = args
        .iterations
        .unwrap_or(if args.batch { 1 } else { u64::MAX });
    for _ in 0..n {
        std::thread::sleep(delay);
        let cur = counters(cfg, &g)?;
        let now = Instant::now();
        let f = StatFrame {
            guest: g.label(),
            id: g.id,
            pid: g.pid,
            source: cur.source.to_string(),
            interval_s: now.duration_since(at).as_secs_f64(),
            stats: lines(
                &prev.values,
                &cur.values,
                &cur.sources,
                now.duration_since(at).as_secs_f64(),
            ),
            notes: cur.notes.clone(),
        };
        let t = if args.json {
            format!("{}\n", serde_json::to_string(&f)?)
        } else {
            format!("{}\n", text(&f))
        };
        if !emit(&t)? {
            return Ok(());
        }
        prev = cur;
        at = now;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busiest_first() {
        let m = |kv: &[(&str, u64)]| -> BTreeMap<String, u64> {
            kv.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        let a = m(&[("exits", 10), ("halt_exits", 0), ("pages_4k", 500)]);
        let b = m(&[("exits", 30), ("halt_exits", 5), ("pages_4k", 500)]);
        let src: BTreeMap<String, Source> = [("exits".to_string(), Source::Debugfs)].into();
        let l = lines(&a, &b, &src, 1.0);
        assert_eq!(
            l[0],
            StatLine {
                name: "exits".into(),
                total: 30,
                per_s: 20.0,
                source: "debugfs".into()
            }
        );
        assert_eq!(l[1].name, "halt_exits");
        assert_eq!(l[2].name, "pages_4k");
        assert!(text(&StatFrame {
            guest: "web".into(),
            id: None,
            pid: 1,
            source: "debugfs".into(),
            interval_s: 1.0,
            stats: l,
            notes: vec!["a note".into()],
        })
        .lines()
        .any(|l| l.starts_with("exits ") && l.ends_with("  debugfs")));
    }
}
