//! `cargo deny` over the workspace: licences, bans and sources, as
//! `deny.toml` sets them (advisories are not checked: their database is a
//! git repository this project's CI cannot reach).
//!
//! cargo-deny is installed with `cargo install` at a pinned version when
//! the one on `PATH` is not that version (a few minutes, once per
//! machine; Debian does not package it).

use crate::paths;
use anyhow::{bail, Context, Result};
use std::process::Command;

/// The cargo-deny this project's `deny.toml` is written for.
const VERSION: &str = "0.20.2";

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(paths::repo_root());
    c
}

/// The version of `cargo deny` on `PATH`, if any.
fn installed() -> Option<String> {
    let out = cargo().args(["deny", "--version"]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "cargo-deny 0.20.2"
    out.status
        .success()
        .then(|| text.split_whitespace().nth(1).map(str::to_string))
        .flatten()
}

/// Install cargo-deny [`VERSION`] unless it is there, then check.
pub fn run() -> Result<bool> {
    if installed().as_deref() != Some(VERSION) {
        println!(
            "deny: installing cargo-deny {VERSION} (cargo install --locked; once per machine)"
        );
        let ok = cargo()
            .args(["install", "--locked", &format!("cargo-deny@{VERSION}")])
            .status()
            .context("cannot run cargo install")?
            .success();
        if !ok || installed().as_deref() != Some(VERSION) {
            bail!(
                "cargo-deny {VERSION} could not be installed: run `cargo install --locked cargo-deny@{VERSION}` and see why, or put ~/.cargo/bin on PATH"
            );
        }
    }
    Ok(cargo()
        .args([
            "deny",
            "--offline",
            "--workspace",
            "check",
            "licenses",
            "bans",
            "sources",
        ])
        .status()
        .context("cannot run cargo deny")?
        .success())
}
