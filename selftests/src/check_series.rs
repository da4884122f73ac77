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
        let paths = touched(&std::fs::read_to_string(patch)?);
        let built = match Build::of(&paths) {
            Build::Kernel => cmd::run(
                Command::new("make")
                    .arg("-C")
                    .arg(&tree)
                    .arg(format!("O={}", out.display()))
                    .arg(format!("-j{}", cmd::jobs()))
                    // vmlinux and modules: what compiling and linking can
                    // break; bzImage would only add compression to each step.
                    .args(["-s", "vmlinux", "modules"]),
            )
            .map_err(|e| e.context("does not build (KVM=m)")),
            Build::Perf => kernel::build_perf(&tree, &out)
                .map(|_| ())
                .map_err(|e| e.context("perf does not build")),
            Build::Nothing => Ok(()),
        };
        println!(
            "check-series:   {} in {:.0} s",
            Build::of(&paths).what(),
            started.elapsed().as_secs_f64()
        );
        if let Err(e) = built {
            problems.push(format!("{name}: {e:#}"));
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

/// The files a patch changes, from its `diff --git a/<path> b/<path>` lines.
fn touched(patch: &str) -> Vec<String> {
    patch
        .lines()
        .filter_map(|l| l.strip_prefix("diff --git a/"))
        .filter_map(|l| l.split(" b/").next())
        .map(str::to_string)
        .collect()
}

/// What building a patch on its own means: the kernel (vmlinux and
/// modules) unless it changes only `tools/`; perf if it changes perf or
/// the tools headers and libraries perf builds from; nothing for other
/// tools (kvm_stat is a script; the kselftests are built with the kernel
/// once the series is applied).
#[derive(Debug, PartialEq)]
enum Build {
    Kernel,
    Perf,
    Nothing,
}

impl Build {
    fn of(paths: &[String]) -> Build {
        if paths.is_empty() || paths.iter().any(|p| !p.starts_with("tools/")) {
            Build::Kernel
        } else if paths.iter().any(|p| {
            ["tools/perf/", "tools/include/", "tools/lib/"]
                .iter()
                .any(|d| p.starts_with(d))
        }) {
            Build::Perf
        } else {
            Build::Nothing
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Build::Kernel => "kernel built",
            Build::Perf => "tools only: perf built",
            Build::Nothing => "tools only, nothing to build (kselftests: with the kernel)",
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_patch_is_built_as_what_it_touches() {
        let patch = "Subject: x\n---\n\
            diff --git a/tools/perf/util/sort.c b/tools/perf/util/sort.c\n\
            index 1..2 100644\n\
            diff --git a/tools/perf/Documentation/perf-report.txt b/tools/perf/Documentation/perf-report.txt\n";
        let paths = touched(patch);
        assert_eq!(paths[0], "tools/perf/util/sort.c");
        assert_eq!(Build::of(&paths), Build::Perf);
        let kvm_stat =
            touched("diff --git a/tools/kvm/kvm_stat/kvm_stat b/tools/kvm/kvm_stat/kvm_stat\n");
        assert_eq!(Build::of(&kvm_stat), Build::Nothing);
        let mixed = touched(
            "diff --git a/virt/kvm/kvm_main.c b/virt/kvm/kvm_main.c\n\
             diff --git a/tools/testing/selftests/kvm/x.c b/tools/testing/selftests/kvm/x.c\n",
        );
        assert_eq!(Build::of(&mixed), Build::Kernel);
        assert_eq!(Build::of(&[]), Build::Kernel);
    }
}
