//! The text parsers for other processes' `/proc` files: `stat` (CPU
//! split), `status` (uid), `fdinfo` (KVM ids), `cmdline` (qemu `-name`),
//! fd link targets, thread names, the registry's `status` and `vcpus`
//! files, and debugfs directory names. Every parser gets the whole input.
#![no_main]

use kvmreg::backend::{debugfs, fd_scan, proc_kvm};
use kvmreg::{cpu, discover, procfs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let args = procfs::parse_cmdline(data);
    let _ = discover::qemu_name(&args);
    let text = String::from_utf8_lossy(data);
    let _ = cpu::parse_stat(&text);
    let _ = procfs::uid_from_status(&text);
    let _ = fd_scan::fdinfo_ids(&text);
    let _ = fd_scan::classify_link(&text);
    let _ = fd_scan::vcpu_index_from_comm(&text);
    let _ = proc_kvm::parse_status(&text);
    let _ = proc_kvm::parse_vcpus(&text);
    let _ = debugfs::parse_dir_name(&text);
});
