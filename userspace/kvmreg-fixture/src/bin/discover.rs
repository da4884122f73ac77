//! kvmreg-discover: print what `kvmreg::discover()` sees, as JSON.
//!
//! A debugging aid and the probe the integration tests run under other
//! users; the real user tool is `kvmtop` (userspace/kvmtop).

fn main() {
    let d = kvmreg::discover();
    match serde_json::to_string_pretty(&d) {
        Ok(s) => println!("{s}"),
        Err(e) => {
            eprintln!("kvmreg-discover: {e}");
            std::process::exit(1);
        }
    }
}
