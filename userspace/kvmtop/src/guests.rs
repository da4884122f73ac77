//! Finding the guest a subcommand is about, and the messages for when
//! there is none.

use kvmreg::{Config, Guest, SelectError};
use std::fmt;
use std::path::Path;

pub const NO_GUESTS: &str = "no KVM guests found (none running, or none visible to this user: \
guests of other users need root or ptrace rights over their VMM)";

/// Whose guests are "mine" (shown and selected by plain name; others'
/// as `name@uid`): this process' effective uid, read once, since kvmtop
/// never changes it and a refresh should not pay a system call per guest.
pub fn viewer() -> u32 {
    static VIEWER: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *VIEWER.get_or_init(kvmreg::model::current_euid)
}

/// A wrong guest choice by the user: exit status 2, like a usage error.
#[derive(Debug)]
pub struct ChoiceError(pub String);

impl fmt::Display for ChoiceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ChoiceError {}

/// Why there is nothing to show: no KVM at all, or no guests.
pub fn nothing_to_show(dev_kvm: &Path) -> String {
    if dev_kvm.exists() {
        NO_GUESTS.to_string()
    } else {
        format!(
            "{} does not exist: KVM is not available on this host (load kvm_intel or kvm_amd, \
or enable virtualisation in the firmware); there are no guests to show",
            dev_kvm.display()
        )
    }
}

/// Discover and pick one guest (`-g NAME|ID|PID`, or the only one).
pub fn pick(cfg: &Config, wanted: Option<&str>) -> anyhow::Result<Guest> {
    let d = kvmreg::discover_with(cfg);
    pick_from(&d.guests, wanted).cloned()
}

pub fn pick_from<'a>(guests: &'a [Guest], wanted: Option<&str>) -> anyhow::Result<&'a Guest> {
    match kvmreg::select_as(guests, wanted, viewer()) {
        Ok(g) => Ok(g),
        Err(SelectError::NoGuests) => Err(anyhow::anyhow!(nothing_to_show(Path::new("/dev/kvm")))),
        Err(e) => Err(ChoiceError(e.to_string()).into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmreg::GuestName;

    fn g(pid: u32, name: &str) -> Guest {
        let mut g = Guest::new(pid);
        g.name = Some(GuestName::Kernel(name.into()));
        g
    }

    #[test]
    fn unknown_and_ambiguous_are_choice_errors_listing_candidates() {
        let gs = [g(10, "web"), g(11, "db")];
        let e = pick_from(&gs, Some("nope")).unwrap_err();
        let c = e.downcast_ref::<ChoiceError>().expect("a ChoiceError");
        assert!(c.0.contains("web") && c.0.contains("db"), "{c}");
        assert!(pick_from(&gs, None).unwrap_err().is::<ChoiceError>());
        assert_eq!(pick_from(&gs, Some("11")).unwrap().pid, 11);
        let none = pick_from(&[], None).unwrap_err();
        assert!(!none.is::<ChoiceError>());
    }

    #[test]
    fn missing_kvm_is_said_plainly() {
        let m = nothing_to_show(Path::new("/nonexistent/kvm"));
        assert!(m.contains("KVM is not available"), "{m}");
    }
}
