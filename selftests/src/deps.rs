//! `harness deps`: install what the harness and the suites need, from
//! Debian's archive, idempotently.

use crate::{cmd, paths};
use anyhow::{bail, Context, Result};
use std::process::Command;

/// Debian packages the harness needs besides the pinned kernel source.
const PACKAGES: &[&str] = &[
    // Kernel build.
    "build-essential",
    "bc",
    "bison",
    "flex",
    "libelf-dev",
    "libssl-dev",
    "cpio",
    "kmod",
    "xz-utils",
    "rsync",
    "git",
    // checkpatch.pl's SPDX license check (scripts/spdxcheck.py).
    "python3-ply",
    "python3-git",
    // kselftests (libcap for the kvm selftest library's helpers).
    "libcap-dev",
    // The test VM, and the qemu that runs as a real KVM client inside it.
    "qemu-system-x86",
    // bench-refresh counts kvmtop's system calls (strace -c).
    "strace",
    // kvmtop's tests/prometheus.rs: a real Prometheus scrapes `kvmtop serve`.
    "prometheus",
    // kvmtop's tests/tmux.rs: the live views in a real terminal.
    "tmux",
];

/// The pinned base source: Debian package name and exact version.
#[derive(Debug, Clone)]
pub struct BasePin {
    pub package: String,
    pub version: String,
}

impl BasePin {
    /// Reads `kernel-patch/base-version` ("<package> <version>").
    pub fn load() -> Result<Self> {
        let path = paths::kernel_patch_dir().join("base-version");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        let mut words = text.split_whitespace();
        match (words.next(), words.next()) {
            (Some(p), Some(v)) => Ok(Self {
                package: p.to_string(),
                version: v.to_string(),
            }),
            _ => bail!(
                "{} must hold `<package> <version>`, e.g. `linux-source-6.12 6.12.117-1~deb12u1`",
                path.display()
            ),
        }
    }
}

/// The installed version of a Debian package, if installed.
pub fn installed_version(package: &str) -> Option<String> {
    let out = cmd::capture(
        Command::new("dpkg-query")
            .args(["-W", "-f", "${Status} ${Version}"])
            .arg(package),
    )
    .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let rest = text.strip_prefix("install ok installed ")?;
    Some(rest.trim().to_string())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Versions of `package` the archive offers, newest first.
fn offered_versions(package: &str) -> Result<Vec<String>> {
    let text = cmd::output(Command::new("apt-cache").args(["madison", package]))?;
    Ok(text
        .lines()
        .filter_map(|l| l.split('|').nth(1).map(|v| v.trim().to_string()))
        .collect())
}

pub fn run() -> Result<()> {
    let pin = BasePin::load()?;
    let mut missing: Vec<String> = PACKAGES
        .iter()
        .filter(|p| installed_version(p).is_none())
        .map(|p| p.to_string())
        .collect();
    let base_ok = installed_version(&pin.package).as_deref() == Some(pin.version.as_str());
    if missing.is_empty() && base_ok {
        println!(
            "deps: everything is installed ({} {})",
            pin.package, pin.version
        );
        return Ok(());
    }
    if !is_root() {
        let mut all = missing.clone();
        if !base_ok {
            all.push(format!("{}={}", pin.package, pin.version));
        }
        bail!(
            "deps: missing Debian packages: {}\nInstalling them needs root: run `sudo cargo xtask deps`, or install them yourself with apt-get.",
            all.join(" ")
        );
    }
    cmd::run(Command::new("apt-get").arg("update").arg("-q"))?;
    if !base_ok {
        let offered = offered_versions(&pin.package)?;
        if offered.iter().any(|v| v == &pin.version) {
            missing.push(format!("{}={}", pin.package, pin.version));
        } else if let Some(newest) = offered.first() {
            println!(
                "deps: {} {} is no longer offered; using the newest, {newest}",
                pin.package, pin.version
            );
            missing.push(format!("{}={newest}", pin.package));
        } else {
            bail!(
                "deps: the archive offers no {}: add a Debian source that has it (bookworm-security or trixie)",
                pin.package
            );
        }
    }
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing),
    )?;
    println!("deps: installed {}", missing.join(" "));
    Ok(())
}
