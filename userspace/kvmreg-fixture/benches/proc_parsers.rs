//! kvmreg's hand-written `/proc` parsers against the `procfs` crate's, on
//! this kernel's own files (Documentation/benchmarks.md): why kvmreg keeps
//! its own. Run with `cargo bench -p kvmreg-fixture --bench proc_parsers`.
//!
//! - a thread's `stat`, read on every refresh for every vCPU thread of
//!   every guest (kvmtop's CPU columns): `kvmreg::cpu::parse_stat`
//!   against `procfs::process::Stat::from_read`, on the `stat` of a
//!   thread of this process named `CPU 0/KVM`, as qemu names its vCPUs;
//! - a process' `status`, read for each process a discovery looks at (the
//!   owner's uid): `kvmreg::procfs::uid_from_status` against
//!   `procfs::process::Status::from_read`, on this process' `status`.
//!
//! Both parse bytes already read (kvmreg keeps the `stat` files open and
//! `pread`s them; `procfs` can parse such a buffer too), so the figures
//! are the parsers' alone. 21 rounds, each timing both parsers of a file
//! in an order that alternates; per round the ratio of the two; medians
//! with a 95% interval of the median (`kvmreg_fixture::bench::median_ci`).

use kvmreg_fixture::bench::median_ci;
use procfs::FromRead;
use std::hint::black_box;
use std::time::Instant;

const ROUNDS: usize = 21;
const PARSES: u32 = 20_000;

/// Nanoseconds per call of `f`, over [`PARSES`] calls.
fn per_call(mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..PARSES {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(PARSES)
}

/// Time `ours` and `crate_` in alternating order for [`ROUNDS`] rounds
/// and print ns per parse of each and the ratio, medians with intervals.
fn compare(what: &str, mut ours: impl FnMut(), mut crate_: impl FnMut()) {
    let (mut a, mut b, mut ratio) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..ROUNDS {
        let (x, y) = if round % 2 == 0 {
            let x = per_call(&mut ours);
            (x, per_call(&mut crate_))
        } else {
            let y = per_call(&mut crate_);
            (per_call(&mut ours), y)
        };
        a.push(x);
        b.push(y);
        ratio.push(y / x);
    }
    let (alo, amed, ahi) = median_ci(a);
    let (blo, bmed, bhi) = median_ci(b);
    let (rlo, rmed, rhi) = median_ci(ratio);
    println!(
        "{what}: kvmreg {amed:.0} ns [{alo:.0}, {ahi:.0}]; procfs {bmed:.0} ns [{blo:.0}, {bhi:.0}]; procfs/kvmreg {rmed:.1}x [{rlo:.1}, {rhi:.1}]"
    );
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A thread named as qemu names a vCPU thread, parked while its stat
    // is read.
    let (tx, rx) = std::sync::mpsc::channel();
    let vcpu = std::thread::Builder::new()
        .name("CPU 0/KVM".into())
        .spawn(move || {
            // SAFETY: gettid has no memory effects.
            let tid = unsafe { libc::gettid() };
            let _ = tx.send(tid);
            std::thread::park();
        })?;
    let tid = rx.recv()?;
    let stat = std::fs::read_to_string(format!("/proc/self/task/{tid}/stat"))?;
    let status = std::fs::read_to_string("/proc/self/status")?;
    vcpu.thread().unpark();
    let _ = vcpu.join();

    // Both must read the same values, or the comparison is void.
    let ours = kvmreg::cpu::parse_stat(&stat)?;
    let theirs = procfs::process::Stat::from_read(stat.as_bytes())?;
    assert_eq!(
        (ours.comm.as_str(), ours.utime),
        (theirs.comm.as_str(), theirs.utime)
    );
    let uid = kvmreg::procfs::uid_from_status(&status).ok_or("no Uid in status")?;
    assert_eq!(
        uid,
        procfs::process::Status::from_read(status.as_bytes())?.euid
    );

    println!(
        "# {ROUNDS} interleaved rounds of {PARSES} parses each; ns per parse, medians [95% interval]"
    );
    compare(
        &format!("thread stat ({} bytes)", stat.len()),
        || {
            let _ = black_box(kvmreg::cpu::parse_stat(black_box(&stat)));
        },
        || {
            let _ = black_box(procfs::process::Stat::from_read(black_box(stat.as_bytes())));
        },
    );
    compare(
        &format!("status, owner uid ({} bytes)", status.len()),
        || {
            let _ = black_box(kvmreg::procfs::uid_from_status(black_box(&status)));
        },
        || {
            let _ = black_box(procfs::process::Status::from_read(black_box(
                status.as_bytes(),
            )));
        },
    );
    Ok(())
}
