//! Watch KVM guests come and go: a line when a guest appears (`+`) or
//! goes (`-`), the guests already there at start as `+` lines.
//!
//! ```text
//! cargo run -p kvmreg --example watch_guests -- --interval-ms 500 --for-secs 10
//! + pid 1234 id 3 name web
//! - pid 1234 id 3 name web
//! ```
//!
//! `--interval-ms N`: refresh every N ms (default 500); `--for-secs S`:
//! exit after S seconds (default: run until killed).

use kvmreg::track::Tracker;
use kvmreg::Guest;
use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: watch_guests [--interval-ms N] [--for-secs S]";

/// Options: the refresh interval and how long to run (`None`: forever).
fn parse_args() -> Result<(Duration, Option<Duration>), String> {
    let (mut interval, mut run_for) = (Duration::from_millis(500), None);
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut number = |what: &str| -> Result<u64, String> {
            let v = args.next().ok_or(format!("{a} needs {what}"))?;
            v.parse().map_err(|_| format!("{a}: {v:?} is not {what}"))
        };
        match a.as_str() {
            "--interval-ms" => match number("a number of milliseconds")? {
                0 => return Err("--interval-ms must be at least 1".into()),
                n => interval = Duration::from_millis(n),
            },
            "--for-secs" => run_for = Some(Duration::from_secs(number("a number of seconds")?)),
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    Ok((interval, run_for))
}

/// What tells one VM from another across refreshes: on a registry kernel
/// its id (its VM fd may be learned later), elsewhere its VM fd.
type Identity = (u32, Option<u64>, Option<i32>);

fn identity(g: &Guest) -> Identity {
    (g.pid, g.id, if g.id.is_some() { None } else { g.vm_fd })
}

/// The rest of a `+` or `-` line: pid, id and name (`-` where unknown).
fn describe(g: &Guest) -> String {
    let id = g.id.map_or("-".into(), |i| i.to_string());
    let name = g.label_for(kvmreg::model::current_euid());
    let name = if g.name.is_some() { name } else { "-".into() };
    format!("pid {} id {id} name {name}", g.pid)
}

fn main() {
    let (interval, run_for) = parse_args().unwrap_or_else(|e| {
        eprintln!("watch_guests: {e}\n{USAGE}");
        std::process::exit(2);
    });
    if let Err(e) = watch(interval, run_for) {
        eprintln!("watch_guests: cannot write: {e}");
        std::process::exit(1);
    }
}

fn watch(interval: Duration, run_for: Option<Duration>) -> std::io::Result<()> {
    let end = run_for.map(|d| Instant::now() + d);
    // A tracker discovers the guests once, then keeps the set up to date
    // from KVM's uevents (create, destroy) and periodic reconciles, so a
    // refresh costs little when nothing changed.
    let mut tracker = Tracker::new(kvmreg::Config::default());
    if let Some(why) = tracker.socket_error() {
        eprintln!("watch_guests: {why}");
    }
    let mut known: BTreeMap<Identity, String> = BTreeMap::new();
    let mut out = std::io::stdout().lock();
    loop {
        let now: BTreeMap<Identity, String> = tracker
            .guests()
            .iter()
            .map(|g| (identity(g), describe(g)))
            .collect();
        for (k, line) in &now {
            if !known.contains_key(k) {
                writeln!(out, "+ {line}")?;
                out.flush()?;
            }
        }
        for (k, line) in &known {
            if !now.contains_key(k) {
                writeln!(out, "- {line}")?;
                out.flush()?;
            }
        }
        known = now;
        if end.is_some_and(|e| Instant::now() >= e) {
            return Ok(());
        }
        let nap = end.map_or(interval, |e| {
            interval.min(e.saturating_duration_since(Instant::now()))
        });
        std::thread::sleep(nap);
        // Take the events that arrived and reconcile where one is due.
        tracker.refresh();
    }
}
