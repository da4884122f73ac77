//! Running external commands with the command line shown and errors that
//! say which command failed.

use anyhow::{bail, Context, Result};
use std::process::{Command, Output, Stdio};

/// Runs `cmd`, inheriting stdout/stderr, and fails unless it exits 0.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = show(cmd);
    eprintln!("+ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})");
    }
    Ok(())
}

/// Runs `cmd` quietly, capturing its output, and fails unless it exits 0.
pub fn output(cmd: &mut Command) -> Result<String> {
    let shown = show(cmd);
    let out = capture(cmd)?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs `cmd` capturing its output whatever its exit status.
pub fn capture(cmd: &mut Command) -> Result<Output> {
    let shown = show(cmd);
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot start `{shown}`"))
}

/// The command line as a person would type it (for logs and errors).
pub fn show(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        s.push(' ');
        s.push_str(&arg.to_string_lossy());
    }
    s
}

/// The number of parallel jobs for `make`.
pub fn jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}
