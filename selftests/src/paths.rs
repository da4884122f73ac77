//! Where things live: the repository, the build directory and its layout.
//!
//! Everything the harness produces sits under one build directory
//! (`target/harness` by default, `KVMREG_BUILD_DIR` to move it), so a
//! `cargo clean` or `rm -rf` resets every cache at once.

use std::path::{Path, PathBuf};

/// The repository root (the workspace that contains this crate).
pub fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).to_path_buf()
}

/// The harness's build directory.
pub fn build_dir() -> PathBuf {
    match std::env::var_os("KVMREG_BUILD_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => repo_root().join("target").join("harness"),
    }
}

/// The kernel series and its config fragments.
pub fn kernel_patch_dir() -> PathBuf {
    repo_root().join("kernel-patch")
}

/// The git tree holding the pristine base source (tag `base`).
pub fn base_tree() -> PathBuf {
    build_dir().join("linux")
}

/// A worktree of [`base_tree`] with the series applied on top of `base`.
pub fn patched_tree() -> PathBuf {
    build_dir().join("linux-patched")
}
