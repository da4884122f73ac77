//! One kobject-uevent netlink message, as `UeventSocket::wait` receives.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kvmreg::watch::parse_uevent(data);
});
