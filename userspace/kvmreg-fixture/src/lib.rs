//! What kvmreg-fixture's benchmark binaries share.

pub mod bench;
