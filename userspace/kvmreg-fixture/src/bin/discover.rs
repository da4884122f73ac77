//! kvmreg-discover: print what `kvmreg::discover()` sees, as JSON.
//!
//! `--counters` adds each guest's stats counters and where they came from;
//! `--sample-tid TID` (repeatable) tries to open perf sampling on those
//! threads and reports the outcome (the error says what is missing);
//! `--proc-root DIR` reads another proc tree (tests combine a fake registry
//! tree with the real debugfs).
//! A debugging aid and the probe the integration tests run under other
//! users and mount namespaces; the user tool is to be `kvmtop`.

use serde_json::{json, Value};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let counters = args.iter().any(|a| a == "--counters");
    let mut sample_tids = Vec::new();
    let mut cfg = kvmreg::Config::default();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--proc-root" {
            match it.next() {
                Some(p) => cfg.proc_root = kvmreg::procfs::ProcRoot::new(p),
                None => {
                    eprintln!("kvmreg-discover: --proc-root needs a directory");
                    std::process::exit(2);
                }
            }
        }
        if a == "--sample-tid" {
            match it.next().and_then(|t| t.parse::<u32>().ok()) {
                Some(t) => sample_tids.push(t),
                None => {
                    eprintln!("kvmreg-discover: --sample-tid needs a thread id");
                    std::process::exit(2);
                }
            }
        }
    }
    let d = kvmreg::discover_with(&cfg);
    let mut v = match serde_json::to_value(&d) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("kvmreg-discover: {e}");
            std::process::exit(1);
        }
    };
    if counters {
        let list: Vec<Value> = d
            .guests
            .iter()
            .map(|g| match kvmreg::guest_counters(&cfg, g) {
                Ok(c) => json!({"pid": g.pid, "id": g.id, "counters": c}),
                Err(e) => json!({"pid": g.pid, "id": g.id, "error": e.to_string()}),
            })
            .collect();
        v["counters"] = Value::Array(list);
    }
    if !sample_tids.is_empty() {
        // A stand-in guest whose vCPU threads are the given tids.
        let mut g = kvmreg::Guest::new(0);
        for (i, t) in sample_tids.iter().enumerate() {
            g.vcpus.push(kvmreg::Vcpu {
                index: i as u32,
                vcpu_id: None,
                tid: Some(*t),
                tid_source: None,
                fd: None,
            });
        }
        v["sampling"] = match kvmreg::perf::Sampler::new(&[g], Default::default()) {
            Ok(s) => {
                json!({"ok": {"threads": s.threads(), "attribution": format!("{:?}", s.attribution())}})
            }
            Err(e) => json!({"error": e.to_string()}),
        };
    }
    match serde_json::to_string_pretty(&v) {
        Ok(s) => println!("{s}"),
        Err(e) => {
            eprintln!("kvmreg-discover: {e}");
            std::process::exit(1);
        }
    }
}
