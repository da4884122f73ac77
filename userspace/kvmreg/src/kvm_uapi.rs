//! The constants of `include/uapi/linux/kvm.h` that kvmreg uses.
//!
//! Written out here, not taken from `kvm-bindings`: that crate is
//! Apache-2.0 only, which the Free Software Foundation holds incompatible
//! with the GPL-2.0-only that kvmreg and kvmtop are under, so a kvmtop
//! binary must not contain it. The header itself is GPL-2.0 with the
//! Linux syscall note, which lets any program use its numbers. A test
//! compares every value with `kvm-bindings`, a dev-dependency (in tests
//! only, never in a binary that is shipped).

/// The ioctl type of KVM's ioctls.
pub const KVMIO: u32 = 0xae;

/// The bits of a stat's flags that give what it counts.
pub const KVM_STATS_TYPE_MASK: u32 = 0xf;
/// A count that only grows.
pub const KVM_STATS_TYPE_CUMULATIVE: u32 = 0x0;
/// A value at the time of the read.
pub const KVM_STATS_TYPE_INSTANT: u32 = 0x1;
/// The highest value seen.
pub const KVM_STATS_TYPE_PEAK: u32 = 0x2;
/// A histogram with buckets of equal width.
pub const KVM_STATS_TYPE_LINEAR_HIST: u32 = 0x3;
/// A histogram with buckets of powers of two.
pub const KVM_STATS_TYPE_LOG_HIST: u32 = 0x4;

/// The bits of a stat's flags that give its unit.
pub const KVM_STATS_UNIT_MASK: u32 = 0xf << 4;
/// A plain number.
pub const KVM_STATS_UNIT_NONE: u32 = 0x0 << 4;
/// Bytes.
pub const KVM_STATS_UNIT_BYTES: u32 = 0x1 << 4;
/// Seconds (scaled by the exponent).
pub const KVM_STATS_UNIT_SECONDS: u32 = 0x2 << 4;
/// CPU cycles.
pub const KVM_STATS_UNIT_CYCLES: u32 = 0x3 << 4;
/// 0 or 1.
pub const KVM_STATS_UNIT_BOOLEAN: u32 = 0x4 << 4;

/// The bits of a stat's flags that give its exponent's base.
pub const KVM_STATS_BASE_MASK: u32 = 0xf << 8;
/// Exponents of 10.
pub const KVM_STATS_BASE_POW10: u32 = 0x0 << 8;
/// Exponents of 2.
pub const KVM_STATS_BASE_POW2: u32 = 0x1 << 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_kvm_bindings() {
        use kvm_bindings as b;
        let ours = [
            KVMIO,
            KVM_STATS_TYPE_MASK,
            KVM_STATS_TYPE_CUMULATIVE,
            KVM_STATS_TYPE_INSTANT,
            KVM_STATS_TYPE_PEAK,
            KVM_STATS_TYPE_LINEAR_HIST,
            KVM_STATS_TYPE_LOG_HIST,
            KVM_STATS_UNIT_MASK,
            KVM_STATS_UNIT_NONE,
            KVM_STATS_UNIT_BYTES,
            KVM_STATS_UNIT_SECONDS,
            KVM_STATS_UNIT_CYCLES,
            KVM_STATS_UNIT_BOOLEAN,
            KVM_STATS_BASE_MASK,
            KVM_STATS_BASE_POW10,
            KVM_STATS_BASE_POW2,
        ];
        let theirs = [
            b::KVMIO,
            b::KVM_STATS_TYPE_MASK,
            b::KVM_STATS_TYPE_CUMULATIVE,
            b::KVM_STATS_TYPE_INSTANT,
            b::KVM_STATS_TYPE_PEAK,
            b::KVM_STATS_TYPE_LINEAR_HIST,
            b::KVM_STATS_TYPE_LOG_HIST,
            b::KVM_STATS_UNIT_MASK,
            b::KVM_STATS_UNIT_NONE,
            b::KVM_STATS_UNIT_BYTES,
            b::KVM_STATS_UNIT_SECONDS,
            b::KVM_STATS_UNIT_CYCLES,
            b::KVM_STATS_UNIT_BOOLEAN,
            b::KVM_STATS_BASE_MASK,
            b::KVM_STATS_BASE_POW10,
            b::KVM_STATS_BASE_POW2,
        ];
        assert_eq!(ours, theirs);
    }
}
