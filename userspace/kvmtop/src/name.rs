//! `kvmtop name GUEST NEWNAME`: rename a guest through the registry's
//! `/proc/<pid>/kvm/<id>/name`.

use crate::guests;
use kvmreg::{Config, Guest, Source};
use std::io::Write;

/// What the kernel's answer means for the user.
pub fn explain(errno: Option<i32>, g: &str, new: &str) -> String {
    match errno {
        Some(libc::EINVAL) => format!(
            "'{new}' is not a valid guest name: use 1 to 63 characters of A-Z a-z 0-9 . _ + : -, \
not starting with '.' or '-', and not kvm<digits> (the default-name form); \
'@' only qualifies other users' names (web@64055) and is never part of one"
        ),
        Some(libc::EEXIST) => format!(
            "another guest of the same owner is already named '{new}' (names are unique \
per owner uid and pid namespace); rename that one first or pick another name"
        ),
        Some(libc::EACCES) | Some(libc::EPERM) => format!(
            "not allowed to rename guest {g}: renaming needs ptrace rights over its VMM \
(run as the VMM's user or as root)"
        ),
        Some(libc::ESRCH) | Some(libc::ENOENT) => {
            format!("guest {g} is gone (its VM was destroyed while renaming)")
        }
        other => format!(
            "renaming guest {g} failed: {}",
            other.map_or("unknown error".into(), |e| {
                std::io::Error::from_raw_os_error(e).to_string()
            })
        ),
    }
}

/// The name file of a registry guest, or why there is none.
pub fn name_path(cfg: &Config, g: &Guest) -> anyhow::Result<std::path::PathBuf> {
    match (g.provenance.id, g.id) {
        (Some(Source::ProcKvm), Some(id)) => {
            Ok(cfg.proc_root.join(format!("{}/kvm/{id}/name", g.pid)))
        }
        _ => anyhow::bail!(
            "renaming needs the VM registry kernel (/proc/<pid>/kvm/<id>/name); this kernel has \
no /proc/kvm, so guest {} has no kernel name to change. Boot a kernel with the kvmreg series, or \
name the guest in its VMM (qemu -name)",
            g.label_for(crate::guests::viewer())
        ),
    }
}

pub fn run(cfg: &Config, wanted: &str, new: &str) -> anyhow::Result<()> {
    let g = guests::pick(cfg, Some(wanted))?;
    let path = name_path(cfg, &g)?;
    let label = g.label_for(crate::guests::viewer());
    let r = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut f| f.write_all(format!("{new}\n").as_bytes()));
    match r {
        Ok(()) => {
            println!(
                "renamed guest {label} (id {}, pid {}) to {new}",
                g.id.unwrap_or(0),
                g.pid
            );
            Ok(())
        }
        Err(e) => anyhow::bail!(explain(e.raw_os_error(), &label, new)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_errors_become_advice() {
        assert!(explain(Some(libc::EINVAL), "web", ".x").contains("not a valid guest name"));
        assert!(explain(Some(libc::EEXIST), "web", "db").contains("already named 'db'"));
        assert!(explain(Some(libc::EACCES), "web", "db").contains("ptrace rights"));
        assert!(explain(Some(libc::ESRCH), "web", "db").contains("is gone"));
        assert!(explain(Some(libc::EIO), "web", "db").contains("failed"));
    }

    #[test]
    fn unpatched_guests_cannot_be_renamed() {
        let mut g = Guest::new(5);
        g.provenance.pid = Some(Source::FdScan);
        let e = name_path(&Config::default(), &g).unwrap_err().to_string();
        assert!(e.contains("registry kernel"), "{e}");
        g.id = Some(3);
        g.provenance.id = Some(Source::ProcKvm);
        let p = name_path(&Config::default(), &g).unwrap();
        assert!(p.ends_with("5/kvm/3/name"), "{}", p.display());
    }
}
