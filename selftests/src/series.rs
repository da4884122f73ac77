//! The kernel series (`kernel-patch/series`) and its checkpatch allow-list.

use crate::{cmd, paths};
use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The patches named by `kernel-patch/series`, in order.
#[derive(Debug, Clone)]
pub struct Series {
    pub patches: Vec<PathBuf>,
}

impl Series {
    /// Reads `kernel-patch/series` (one file name per line, `#` comments).
    /// A missing or empty file is an empty series.
    pub fn load() -> Result<Self> {
        let dir = paths::kernel_patch_dir();
        let path = dir.join("series");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let mut patches = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let name = line.split('#').next().unwrap_or("").trim();
            if name.is_empty() {
                continue;
            }
            let patch = dir.join(name);
            if !patch.is_file() {
                bail!(
                    "{}:{}: {} does not exist",
                    path.display(),
                    n + 1,
                    patch.display()
                );
            }
            patches.push(patch);
        }
        Ok(Self { patches })
    }

    pub fn is_empty(&self) -> bool {
        self.patches.is_empty()
    }

    /// A content hash of the series: patch names and bytes, in order.
    pub fn hash(&self) -> String {
        let mut h = Sha256::new();
        for p in &self.patches {
            h.update(p.file_name().map(|n| n.as_encoded_bytes()).unwrap_or(b""));
            h.update(b"\0");
            h.update(fs::read(p).unwrap_or_default());
            h.update(b"\0");
        }
        format!("{:x}", h.finalize())
    }

    /// Applies the first `upto` patches (all when `None`) to `tree` with
    /// `git am`, one commit per patch.
    pub fn apply(&self, tree: &Path, upto: Option<usize>) -> Result<()> {
        let patches = &self.patches[..upto.unwrap_or(self.patches.len())];
        if patches.is_empty() {
            return Ok(());
        }
        cmd::run(
            Command::new("git")
                .arg("-C")
                .arg(tree)
                .args(["-c", "user.name=kvmreg harness"])
                .args(["-c", "user.email=harness@kvmreg.invalid"])
                .args(["am", "-q", "--keep-cr"])
                .args(patches),
        )
        .context("the series does not apply to the base tree")
    }
}

/// One checkpatch finding, e.g. `WARNING:FILE_PATH_CHANGES: added, moved...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub level: String,
    pub kind: String,
    pub message: String,
}

/// Parses `checkpatch.pl --show-types` output.
pub fn parse_checkpatch(output: &str) -> Vec<Finding> {
    output
        .lines()
        .filter_map(|line| {
            let (level, rest) = line.split_once(':')?;
            if !matches!(level, "ERROR" | "WARNING" | "CHECK") {
                return None;
            }
            let (kind, message) = rest.split_once(':')?;
            if kind.is_empty()
                || !kind
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit())
            {
                return None;
            }
            Some(Finding {
                level: level.to_string(),
                kind: kind.to_string(),
                message: message.trim().to_string(),
            })
        })
        .collect()
}

/// `kernel-patch/checkpatch-allow.txt`: `<patch file>\t<TYPE>\t<reason>`.
#[derive(Debug, Default)]
pub struct AllowList {
    entries: Vec<(String, String)>,
}

impl AllowList {
    pub fn load() -> Result<Self> {
        let path = paths::kernel_patch_dir().join("checkpatch-allow.txt");
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Self::parse(&text).with_context(|| format!("in {}", path.display()))
    }

    fn parse(text: &str) -> Result<Self> {
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut f = line.splitn(3, '\t');
            match (f.next(), f.next(), f.next()) {
                (Some(p), Some(t), Some(reason)) if !reason.trim().is_empty() => {
                    entries.push((p.trim().to_string(), t.trim().to_string()))
                }
                _ => bail!(
                    "line {}: want `<patch>\\t<TYPE>\\t<reason>`, with a reason",
                    n + 1
                ),
            }
        }
        Ok(Self { entries })
    }

    pub fn allows(&self, patch: &str, kind: &str) -> bool {
        self.entries.iter().any(|(p, t)| p == patch && t == kind)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpatch_output_is_parsed() {
        let out = "WARNING:FILE_PATH_CHANGES: added, moved or deleted file(s), does MAINTAINERS need updating?\n#12: \nnew file mode 100644\n\nCHECK:MACRO_ARG_REUSE: Macro argument reuse 'x' - possible side-effects?\ntotal: 0 errors, 1 warnings, 1 checks, 40 lines checked\n";
        let f = parse_checkpatch(out);
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].level, "WARNING");
        assert_eq!(f[0].kind, "FILE_PATH_CHANGES");
        assert_eq!(f[1].kind, "MACRO_ARG_REUSE");
    }

    #[test]
    fn allow_list_needs_a_reason() {
        assert!(AllowList::parse("0001-x.patch\tFOO\n").is_err());
        let a = AllowList::parse("# comment\n0001-x.patch\tFOO\tbecause\n").unwrap();
        assert!(a.allows("0001-x.patch", "FOO"));
        assert!(!a.allows("0002-x.patch", "FOO"));
    }
}
