//! How the project's Rust tests skip what they cannot run here.
//!
//! A test that lacks a facility (`/dev/kvm`, `tmux`, ...) calls [`skip`]:
//! it prints one line, `SKIPPED <test>: <why>`, which the harness reads
//! from libtest's `--show-output` sections and counts as a skip, not a
//! pass (listed at the end of `cargo xtask test`). Where the harness
//! provides the facility (inside the test VM) it names it in
//! `KVMREG_REQUIRE` (a comma-separated list of [`Facility`] names, or
//! `all`), and the same call fails the test instead: in CI, the absence
//! of something the harness provides is a failure, not a skip.
//!
//! Partial checks (a test that ran but could not check one thing, such as
//! guest-mode samples on a host without a PMU) print `NOT CHECKED: ...`
//! instead; the harness lists those too.

use std::fmt::Display;

/// What a test may need from the machine it runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Facility {
    /// A usable `/dev/kvm`.
    Kvm,
    /// The `tmux` binary, for the live-view tests.
    Tmux,
    /// The `prometheus` binary, for the real scrape.
    Prometheus,
    /// debugfs mountable in a private mount namespace (root, `unshare`).
    Debugfs,
    /// Running as root (tests that act as another user).
    Root,
    /// A kernel with the VM registry (`/proc/kvm`, v2 files).
    Registry,
    /// perf sampling of other processes allowed (root or `CAP_PERFMON`,
    /// or a permissive `kernel.perf_event_paranoid`).
    Perf,
    /// A temporary directory on a file system with writeback, whose
    /// writes `/proc/<pid>/io` counts (not tmpfs).
    DiskIo,
    /// A usable `/dev/net/tun` (and root, to create tap devices).
    Tun,
    /// The `kvm:kvm_exit` and `kvm:kvm_entry` tracepoints: a kernel with
    /// event tracing, tracefs, and a KVM that emits them (VMX or SVM).
    ExitTracepoints,
}

impl Facility {
    /// The name `KVMREG_REQUIRE` uses.
    pub fn name(self) -> &'static str {
        match self {
            Facility::Kvm => "kvm",
            Facility::Tmux => "tmux",
            Facility::Prometheus => "prometheus",
            Facility::Debugfs => "debugfs",
            Facility::Root => "root",
            Facility::Registry => "registry",
            Facility::Perf => "perf",
            Facility::DiskIo => "disk-io",
            Facility::ExitTracepoints => "exit-tracepoints",
            Facility::Tun => "tun",
        }
    }
}

/// The variable the harness sets where it provides facilities.
pub const REQUIRE_VAR: &str = "KVMREG_REQUIRE";

/// Whether `list` (the variable's value) requires `f`.
fn listed(list: &str, f: Facility) -> bool {
    list.split(',')
        .map(str::trim)
        .any(|n| n == "all" || n == f.name())
}

/// Whether this run requires `f` (`KVMREG_REQUIRE` names it).
pub fn required(f: Facility) -> bool {
    std::env::var(REQUIRE_VAR).is_ok_and(|v| listed(&v, f))
}

/// `test` cannot run for want of `f`, for the reason `why`: say so in the
/// line the harness counts, or fail the test where `f` is required.
pub fn skip(f: Facility, test: &str, why: impl Display) {
    assert!(
        !required(f),
        "{test}: {why}, but {REQUIRE_VAR} says this machine provides {}",
        f.name()
    );
    eprintln!("SKIPPED {test}: {why}");
}

/// `true` when `/dev/kvm` opens read-write; otherwise [`skip`]s `test`.
pub fn kvm_usable(test: &str) -> bool {
    match std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        Ok(_) => true,
        Err(e) => {
            skip(
                Facility::Kvm,
                test,
                format_args!("/dev/kvm not usable here ({e}); NOT tested"),
            );
            false
        }
    }
}

/// `true` when running as root; otherwise [`skip`]s `test`.
pub fn root(test: &str, what: &str) -> bool {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skip(
        Facility::Root,
        test,
        format_args!("needs root ({what}); NOT tested"),
    );
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_list_names_facilities_or_all() {
        assert!(listed("kvm,tmux", Facility::Tmux));
        assert!(listed(" kvm , tmux ", Facility::Kvm));
        assert!(!listed("kvm,tmux", Facility::Prometheus));
        assert!(!listed("", Facility::Kvm));
        assert!(!listed("kvmx", Facility::Kvm));
        assert!(listed("all", Facility::Registry));
    }
}
