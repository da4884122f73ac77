//! Picking one guest, as the 2010 thread asked for `perf kvm`: with no
//! argument and exactly one guest, that one; otherwise a name, a pid or an
//! id; anything ambiguous or unknown is an error listing the candidates.
//!
//! Names belong to users, as in `/proc/kvm`: a plain name means one of the
//! caller's own guests, `<name>@<uid>` another user's. So root's
//! `-g web` never lands on a guest another user called `web`.

use crate::{Guest, GuestName};
use std::fmt;

/// One candidate in an error message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The guest's label for the caller ([`Guest::label_for`]).
    pub label: String,
    /// The registry's VM id; `None` on kernels without the registry.
    pub id: Option<u64>,
    /// The owner process.
    pub pid: u32,
    /// The VM's fd in its owner, where known: without an id (kernels
    /// without the registry) `PID:FD` tells a process' VMs apart.
    pub vm_fd: Option<i32>,
}

impl fmt::Display for Candidate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let id = self.id.map_or("-".to_string(), |i| i.to_string());
        write!(f, "  name {:<20} id {id:<6} pid {}", self.label, self.pid)?;
        match (self.id, self.vm_fd) {
            (None, Some(fd)) => write!(f, "  (-g {}:{fd})", self.pid),
            _ => Ok(()),
        }
    }
}

fn list(c: &[Candidate]) -> String {
    c.iter().map(|c| format!("\n{c}")).collect()
}

/// Why no single guest was selected. The messages list the candidates,
/// one per line.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SelectError {
    /// The guest list is empty.
    #[error("no KVM guests found (or none visible to this user)")]
    NoGuests,
    /// Nothing was asked for and there are several guests: all of them.
    #[error("{} guests running; pick one with -g NAME, an id, a pid or PID:FD:{}", .0.len(), list(.0))]
    Ambiguous(Vec<Candidate>),
    /// No guest matches what was asked for.
    #[error("no guest matches '{wanted}'; the guests are:{}", list(.candidates))]
    NotFound {
        /// What was asked for.
        wanted: String,
        /// Every guest.
        candidates: Vec<Candidate>,
    },
    /// Several guests match what was asked for at the same step of
    /// [`select_as`]'s order (e.g. one process' VMs, by its pid).
    #[error("'{wanted}' matches {} guests; pass one of their ids (or PID:FD) instead:{}", .matches.len(), list(.matches))]
    Matches {
        /// What was asked for.
        wanted: String,
        /// The guests it matches.
        matches: Vec<Candidate>,
    },
}

fn candidate(g: &Guest, viewer_uid: u32) -> Candidate {
    Candidate {
        label: g.label_for(viewer_uid),
        id: g.id,
        pid: g.pid,
        vm_fd: g.vm_fd,
    }
}

/// Select one guest for this process' effective uid: see [`select_as`].
pub fn select<'a>(guests: &'a [Guest], wanted: Option<&str>) -> Result<&'a Guest, SelectError> {
    select_as(guests, wanted, crate::model::current_euid())
}

/// Select one guest for `viewer_uid`. `wanted` is a kernel name as the
/// viewer sees it (its own guests' plain names, `<name>@<uid>` for other
/// users'), then `PID:FD` (the VM fd in its owner: one of a process' VMs
/// on a kernel without ids), then an id, then a pid, then a libvirt
/// domain name from a trusted pid file (another user's session name as
/// `<name>@<uid>`), then (only if nothing else matched) an unverified
/// qemu `-name` hint.
pub fn select_as<'a>(
    guests: &'a [Guest],
    wanted: Option<&str>,
    viewer_uid: u32,
) -> Result<&'a Guest, SelectError> {
    let candidate = |g: &Guest| candidate(g, viewer_uid);
    let all = || guests.iter().map(candidate).collect::<Vec<_>>();
    let Some(w) = wanted else {
        return match guests {
            [] => Err(SelectError::NoGuests),
            [one] => Ok(one),
            _ => Err(SelectError::Ambiguous(all())),
        };
    };
    let num: Option<u64> = w.parse().ok();
    let pid_fd: Option<(u32, i32)> = w
        .split_once(':')
        .and_then(|(p, f)| Some((p.parse().ok()?, f.parse().ok()?)));
    let tiers: [&dyn Fn(&Guest) -> bool; 6] = [
        &|g| {
            g.name.as_ref().is_some_and(GuestName::is_kernel)
                && g.qualified_name(viewer_uid).as_deref() == Some(w)
        },
        &|g| pid_fd.is_some_and(|(p, f)| g.pid == p && g.vm_fd == Some(f)),
        &|g| num.is_some() && g.id == num,
        &|g| num.is_some_and(|n| u64::from(g.pid) == n),
        // Below the kernel's facts: a pid file may be called anything,
        // "1234" too. Another user's session name only as name@uid.
        &|g| {
            matches!(&g.name, Some(GuestName::Libvirt(_)))
                && g.qualified_name(viewer_uid).as_deref() == Some(w)
        },
        &|g| matches!(&g.name, Some(GuestName::CmdlineHint(n)) if n == w),
    ];
    for t in tiers {
        let m: Vec<&Guest> = guests.iter().filter(|g| t(g)).collect();
        match m.as_slice() {
            [] => continue,
            [one] => return Ok(one),
            many => {
                return Err(SelectError::Matches {
                    wanted: w.to_string(),
                    matches: many.iter().map(|g| candidate(g)).collect(),
                })
            }
        }
    }
    Err(SelectError::NotFound {
        wanted: w.to_string(),
        candidates: all(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(name: Option<GuestName>, id: Option<u64>, pid: u32) -> Guest {
        let mut g = Guest::new(pid);
        g.name = name;
        g.id = id;
        g
    }

    fn k(s: &str) -> Option<GuestName> {
        Some(GuestName::Kernel(s.into()))
    }

    #[test]
    fn no_argument() {
        assert_eq!(select(&[], None), Err(SelectError::NoGuests));
        let one = [g(k("web"), Some(3), 100)];
        assert_eq!(select(&one, None).unwrap().pid, 100);
        let two = [g(k("web"), Some(3), 100), g(k("db"), Some(4), 100)];
        let e = select(&two, None).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("2 guests running; pick one with -g NAME"),
            "{msg}"
        );
        assert!(msg.contains("name web") && msg.contains("id 4") && msg.contains("pid 100"));
    }

    #[test]
    fn by_name_id_pid() {
        let gs = [
            g(k("web"), Some(3), 100),
            g(k("db"), Some(4), 100),
            g(k("7"), Some(5), 200),
            g(Some(GuestName::CmdlineHint("batch".into())), None, 300),
        ];
        assert_eq!(select(&gs, Some("db")).unwrap().id, Some(4));
        assert_eq!(select(&gs, Some("3")).unwrap().id, Some(3));
        assert_eq!(select(&gs, Some("200")).unwrap().id, Some(5));
        // A kernel name wins over an equal id or pid.
        assert_eq!(select(&gs, Some("7")).unwrap().id, Some(5));
        assert_eq!(select(&gs, Some("batch")).unwrap().pid, 300);
        // pid 100 owns two VMs.
        let e = select(&gs, Some("100")).unwrap_err();
        assert!(matches!(&e, SelectError::Matches { matches, .. } if matches.len() == 2));
        assert!(e.to_string().contains("pass one of their ids"));
        let e = select(&gs, Some("nope")).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("no guest matches 'nope'"));
        assert!(msg.contains("batch? (qemu -name, unverified)"), "{msg}");
    }

    #[test]
    fn a_libvirt_name_wins_over_a_forged_qemu_name() {
        // Another process put `-name web` on its command line; libvirt's
        // root-owned pid file names pid 600 `web`.
        let gs = [
            g(Some(GuestName::CmdlineHint("web".into())), None, 500),
            g(Some(GuestName::Libvirt("web".into())), None, 600),
        ];
        assert_eq!(select(&gs, Some("web")).unwrap().pid, 600);
    }

    #[test]
    fn a_process_vms_without_ids_by_pid_and_fd() {
        // A kernel without the registry: three VMs of one process, told
        // apart by their fds only.
        let gs: Vec<Guest> = [4, 9, 11]
            .iter()
            .map(|&fd| {
                let mut x = g(None, None, 500);
                x.vm_fd = Some(fd);
                x
            })
            .collect();
        let e = select(&gs, Some("500")).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("(or PID:FD)") && msg.contains("(-g 500:9)"),
            "{msg}"
        );
        assert_eq!(select(&gs, Some("500:9")).unwrap().vm_fd, Some(9));
        assert!(matches!(
            select(&gs, Some("500:5")),
            Err(SelectError::NotFound { .. })
        ));
        assert!(select(&gs, None)
            .unwrap_err()
            .to_string()
            .contains("PID:FD"));
    }

    #[test]
    fn names_belong_to_users() {
        let mut mine = g(k("web"), Some(3), 100);
        mine.uid = Some(0);
        let mut theirs = g(k("web"), Some(4), 200);
        theirs.uid = Some(64055);
        let gs = [mine, theirs];
        assert_eq!(select_as(&gs, Some("web"), 0).unwrap().id, Some(3));
        assert_eq!(select_as(&gs, Some("web@64055"), 0).unwrap().id, Some(4));
        assert_eq!(select_as(&gs, Some("web"), 64055).unwrap().id, Some(4));
        assert_eq!(select_as(&gs, Some("web@0"), 64055).unwrap().id, Some(3));
        // The owner's own guest has no qualified name for it.
        assert!(select_as(&gs, Some("web@0"), 0).is_err());
        // Root's plain "web" never lands on another user's guest.
        let e = select_as(&gs[1..], Some("web"), 0).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("no guest matches 'web'"), "{msg}");
        assert!(msg.contains("web@64055"), "{msg}");
    }
}
