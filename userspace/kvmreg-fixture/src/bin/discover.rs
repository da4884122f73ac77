//! kvmreg-discover: print what `kvmreg::discover()` sees, as JSON; with
//! `--counters`, also each guest's stats counters and where they came from.
//!
//! A debugging aid and the probe the integration tests run under other
//! users and mount namespaces; the user tool is to be `kvmtop`.

use serde_json::{json, Value};

fn main() {
    let counters = std::env::args().any(|a| a == "--counters");
    let d = kvmreg::discover();
    let mut v = match serde_json::to_value(&d) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("kvmreg-discover: {e}");
            std::process::exit(1);
        }
    };
    if counters {
        let cfg = kvmreg::Config::default();
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
    match serde_json::to_string_pretty(&v) {
        Ok(s) => println!("{s}"),
        Err(e) => {
            eprintln!("kvmreg-discover: {e}");
            std::process::exit(1);
        }
    }
}
