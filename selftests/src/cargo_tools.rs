//! The cargo subcommands `cargo xtask test` runs over the workspace,
//! installed with `cargo install --locked` at the version pinned here
//! when the one on `PATH` is another (minutes, once per machine; Debian
//! packages neither):
//!
//! - `cargo deny`: licences, bans and sources, as `deny.toml` sets them
//!   (advisories are not checked: their database is a git repository
//!   this project's CI cannot reach);
//! - `cargo semver-checks`: kvmreg's public API against the commit that
//!   set its current version, so that an API change that breaks callers
//!   cannot land without a version bump.

use crate::paths;
use anyhow::{bail, Context, Result};
use std::process::Command;

/// The cargo-deny this project's `deny.toml` is written for.
const DENY: (&str, &str) = ("cargo-deny", "0.20.2");
/// The cargo-semver-checks the API check runs.
const SEMVER_CHECKS: (&str, &str) = ("cargo-semver-checks", "0.51.0");

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(paths::repo_root());
    c
}

/// The version `cargo <sub> --version` reports ("cargo-deny 0.20.2",
/// "cargo-semver-checks 0.51.0"), if the subcommand is there.
fn installed(sub: &str) -> Option<String> {
    let out = cargo().args([sub, "--version"]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    out.status
        .success()
        .then(|| text.split_whitespace().nth(1).map(str::to_string))
        .flatten()
}

/// Install `(crate, version)` unless `cargo <sub>` is that version.
fn ensure((krate, version): (&str, &str)) -> Result<()> {
    let sub = krate.trim_start_matches("cargo-");
    if installed(sub).as_deref() == Some(version) {
        return Ok(());
    }
    println!("installing {krate} {version} (cargo install --locked; once per machine)");
    let ok = cargo()
        .args(["install", "--locked", &format!("{krate}@{version}")])
        .status()
        .context("cannot run cargo install")?
        .success();
    if !ok || installed(sub).as_deref() != Some(version) {
        bail!(
            "{krate} {version} could not be installed: run `cargo install --locked {krate}@{version}` to see why, and have ~/.cargo/bin on PATH"
        );
    }
    Ok(())
}

/// `cargo deny check licenses bans sources` over the workspace.
pub fn deny() -> Result<bool> {
    ensure(DENY)?;
    Ok(cargo()
        .args(["deny", "--offline", "--workspace", "check"])
        .args(["licenses", "bans", "sources"])
        .status()
        .context("cannot run cargo deny")?
        .success())
}

/// The manifest whose version the API check follows.
const KVMREG_MANIFEST: &str = "userspace/kvmreg/Cargo.toml";

/// kvmreg's version, from its manifest.
fn kvmreg_version() -> Result<String> {
    let path = paths::repo_root().join(KVMREG_MANIFEST);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .find_map(|l| l.strip_prefix("version = \""))
        .and_then(|v| v.strip_suffix('"'))
        .map(str::to_string)
        .with_context(|| format!("no version line in {}", path.display()))
}

/// The oldest commit whose manifest says `version`: where that version's
/// API was set.
fn version_commit(version: &str) -> Result<String> {
    let out = Command::new("git")
        .current_dir(paths::repo_root())
        .args(["log", "--format=%H"])
        .arg(format!("-Sversion = \"{version}\""))
        .args(["--", KVMREG_MANIFEST])
        .output()
        .context("cannot run git log")?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.lines().last() {
        Some(c) if out.status.success() => Ok(c.to_string()),
        _ => bail!(
            "no commit sets kvmreg's version {version} in {KVMREG_MANIFEST}: the API check needs the history (a shallow clone lacks it: git fetch --unshallow)"
        ),
    }
}

/// `cargo semver-checks` of kvmreg against the commit that set its
/// current version.
pub fn semver() -> Result<bool> {
    ensure(SEMVER_CHECKS)?;
    let version = kvmreg_version()?;
    let base = version_commit(&version)?;
    println!("kvmreg {version}: its public API against commit {base}, which set that version");
    Ok(cargo()
        .args(["semver-checks", "check-release", "-p", "kvmreg"])
        .args(["--baseline-rev", &base])
        .status()
        .context("cannot run cargo semver-checks")?
        .success())
}
