//! kvmreg: find the KVM guests of a host and look at them without asking
//! their VMM.
//!
//! [`discover()`] lists guests through the best backend the kernel offers
//! (the VM registry in `/proc/kvm` on a patched kernel; fd scanning,
//! debugfs and `pidfd_getfd` stats otherwise) and records where each fact
//! came from. [`select()`] picks one guest as `perf kvm` users asked for.
//! [`stats`], [`cpu`], [`symbols`] and [`perf`] read KVM's binary stats,
//! the CPU split, guest symbol files and guest-mode samples.

#![warn(missing_docs)]

pub mod backend;
pub mod cpu;
pub mod discover;
pub mod kept;
pub mod kvm_uapi;
pub mod model;
pub mod network;
pub mod perf;
pub mod procfs;
pub mod select;
pub mod stats;
pub mod storage;
pub mod symbols;
pub mod track;
pub mod watch;

#[cfg(test)]
pub(crate) mod testutil;

pub use discover::{
    discover, discover_with, guest_counters, guest_counters_of, guest_stats, list_with, Config,
    Counters, Discovery,
};
pub use model::{Guest, GuestName, Provenance, Source, Vcpu};
pub use select::{select, select_as, SelectError};
