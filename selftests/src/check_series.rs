//! `harness check-series`: every patch applies in order, builds on its own
//! (KVM as a module) and is clean under `checkpatch.pl --strict`. The whole
//! series with KVM built in is the debug kernel, which every run builds.

use crate::cmd;
use crate::kernel::{self, BuildSpec, Config, Tree};
use crate::series::{self, AllowList, Series};
use anyhow::{bail, Result};
use std::process::Command;

pub fn run() -> Result<()> {
    let series = Series::load()?;
    if series.is_empty() {
        println!("check-series: kernel-patch/series is empty; nothing to check");
        return Ok(());
    }
    let allow = AllowList::load()?;
    // The patches are applied one by one to the patched tree and built into
    // the fast kernel's own `O=` directory (KVM as a module, which catches
    // missing exports): after the last patch that directory holds the fast
    // kernel, and the run builds nothing twice. The debug kernel builds the
    // whole series with KVM built in.
    let spec = BuildSpec::for_run(Tree::Patched, Config::Fast);
    let tree = kernel::reset_patched_tree()?;
    kernel::invalidate(spec);
    let out = spec.out_dir();
    kernel::configure(&tree, &out, spec)?;
    let mut problems = Vec::new();
    for (i, patch) in series.patches.iter().enumerate() {
        let name = patch
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        println!("check-series: [{}/{}] {name}", i + 1, series.patches.len());
        let started = std::time::Instant::now();
        cmd::run(
            Command::new("git")
                .arg("-C")
                .arg(&tree)
                .args(["-c", "user.name=kvmreg harness"])
                .args(["-c", "user.email=harness@kvmreg.invalid"])
                .args(["am", "-q", "--keep-cr"])
                .arg(patch),
        )?;
        let built = cmd::run(
            Command::new("make")
                .arg("-C")
                .arg(&tree)
                .arg(format!("O={}", out.display()))
                .arg(format!("-j{}", cmd::jobs()))
                // vmlinux and modules: what compiling and linking can
                // break; bzImage would only add compression to each step.
                .args(["-s", "vmlinux", "modules"]),
        );
        println!(
            "check-series:   built in {:.0} s",
            started.elapsed().as_secs_f64()
        );
        if let Err(e) = built {
            problems.push(format!("{name}: does not build (KVM=m): {e:#}"));
        }
        let out = cmd::capture(
            Command::new("perl")
                .current_dir(&tree)
                // checkpatch runs scripts/spdxcheck.py with `env python3`:
                // make that Debian's, which has the ply and git modules.
                .env("PATH", debian_first_path())
                .args([
                    "scripts/checkpatch.pl",
                    "--strict",
                    "--show-types",
                    "--no-summary",
                    "--terse",
                ])
                .arg(patch),
        )?;
        let text = String::from_utf8_lossy(&out.stdout);
        for f in terse_findings(&text) {
            if allow.allows(&name, &f.kind) {
                println!(
                    "check-series:   allowed {}:{}: {}",
                    f.level, f.kind, f.message
                );
            } else {
                problems.push(format!(
                    "{name}: checkpatch {}:{}: {}",
                    f.level, f.kind, f.message
                ));
            }
        }
    }
    // Every patch applied (`git am` failing ends the check above): the tree
    // is the patched tree, and finishing the fast kernel is incremental.
    kernel::mark_patched_tree(&series)?;
    let k = kernel::build(spec)?;
    println!(
        "check-series: whole series builds as the fast kernel, KVM=m ({})",
        k.release
    );
    for p in &problems {
        println!("check-series: FAILED {p}");
    }
    if !problems.is_empty() {
        bail!("check-series: {} problem(s)", problems.len());
    }
    println!(
        "check-series: {} patches apply, build and pass checkpatch --strict",
        series.patches.len()
    );
    Ok(())
}

/// `--terse` lines: `<file>:<line>: WARNING:TYPE: message`.
fn terse_findings(text: &str) -> Vec<series::Finding> {
    text.lines()
        .filter_map(|l| {
            let idx = ["ERROR:", "WARNING:", "CHECK:"]
                .iter()
                .filter_map(|k| l.find(k))
                .min()?;
            series::parse_checkpatch(&l[idx..]).into_iter().next()
        })
        .collect()
}

/// `PATH` with Debian's `/usr/bin` and `/bin` first, ahead of any
/// per-user interpreters (pyenv, virtualenvs) that lack Debian's modules.
fn debian_first_path() -> std::ffi::OsString {
    let mut dirs = vec![
        std::path::PathBuf::from("/usr/bin"),
        std::path::PathBuf::from("/bin"),
    ];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    std::env::join_paths(dirs).unwrap_or_default()
}
