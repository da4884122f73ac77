//! List the KVM guests of this host once: one line per guest.
//!
//! ```text
//! cargo run -p kvmreg --example list_guests
//! pid 1234 id 3 name web (kernel, from proc-kvm) vcpus 2
//! pid 1300 id - name - vcpus 1
//! ```
//!
//! Run it as root (or as the guests' user) to see inside every VMM.

use std::io::Write;

fn main() {
    if let Err(e) = run() {
        eprintln!("list_guests: cannot write the list: {e}");
        std::process::exit(1);
    }
}

fn run() -> std::io::Result<()> {
    // One discovery with the default `Config` (the host's /proc and
    // debugfs): the VM registry (/proc/kvm) where the kernel has it, fd
    // scanning otherwise. It does not fail: what it could not read is in
    // `notes`, and which backend gave the facts is in `backends`.
    let d = kvmreg::discover();
    let mut out = std::io::stdout().lock();
    for g in &d.guests {
        // Every fact is optional, since not every kernel or permission
        // tells it. A name says how far to trust it (`kind()`: kernel,
        // libvirt, cmdline-hint) and `provenance` which backend gave it.
        // `qualified_name` writes another user's VM as `name@uid`.
        let name = match (g.qualified_name(kvmreg::model::current_euid()), &g.name) {
            (Some(n), Some(kind)) => match g.provenance.name {
                Some(src) => format!("{n} ({}, from {src})", kind.kind()),
                None => format!("{n} ({})", kind.kind()),
            },
            _ => "-".to_string(),
        };
        let id = g.id.map_or("-".to_string(), |i| i.to_string());
        // `None` (not 0) when the vCPUs could not be counted.
        let vcpus = g.vcpu_count().map_or("-".to_string(), |n| n.to_string());
        writeln!(out, "pid {} id {id} name {name} vcpus {vcpus}", g.pid)?;
    }
    if d.guests.is_empty() {
        eprintln!("list_guests: no guests found");
    }
    // Processes skipped (gone, or not ours to look at) and the like.
    for n in &d.notes {
        eprintln!("note: {n}");
    }
    Ok(())
}
