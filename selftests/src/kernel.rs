//! `harness kernel`: the base tree, the patched tree and cached builds.
//!
//! Layout under the build directory:
//! - `linux/`: the base source as a git repo, one commit tagged `base`;
//! - `linux-patched/`: a worktree of it with `kernel-patch/series` applied by
//!   `git am`, one commit per patch;
//! - `build/<name>/`: one `O=` build directory per (tree, config, KVM mode),
//!   with `kernel.json` describing a finished build and the key it was
//!   built for. A build whose key matches is reused as it is.
//!
//! Re-applying a changed series only rewrites the files the patches touch,
//! so the `O=` builds stay incremental.

use crate::deps::{self, BasePin};
use crate::{cmd, paths, series::Series};
use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Bump when the build recipe below changes in a way that affects outputs.
const RECIPE_VERSION: u32 = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum Config {
    /// `fast.config`: a minimal kernel for quick runs.
    Fast,
    /// `fast.config` + `debug.config`: KASAN, lockdep, atomic-sleep checks.
    Debug,
}

impl Config {
    pub fn name(self) -> &'static str {
        match self {
            Config::Fast => "fast",
            Config::Debug => "debug",
        }
    }

    fn fragments(self) -> Vec<PathBuf> {
        let dir = paths::kernel_patch_dir();
        match self {
            Config::Fast => vec![dir.join("fast.config")],
            Config::Debug => vec![dir.join("fast.config"), dir.join("debug.config")],
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
pub enum Tree {
    /// The unpatched base tree.
    Base,
    /// The base tree with `kernel-patch/series` applied.
    Patched,
}

impl Tree {
    pub fn name(self) -> &'static str {
        match self {
            Tree::Base => "base",
            Tree::Patched => "patched",
        }
    }
}

/// How KVM is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvmMode {
    Module,
    BuiltIn,
}

/// What one build is for.
#[derive(Debug, Clone, Copy)]
pub struct BuildSpec {
    pub tree: Tree,
    pub config: Config,
    pub kvm: KvmMode,
}

/// A finished build, as recorded in `kernel.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Kernel {
    pub key: String,
    pub tree: Tree,
    pub config: Config,
    pub kvm: KvmMode,
    /// `<package> <version>` of the base source actually used.
    pub base: String,
    pub release: String,
    pub bzimage: PathBuf,
    /// Modules the test VM loads, in load order (empty when KVM is built in).
    pub modules: Vec<PathBuf>,
    /// Built kselftest binaries, by name relative to selftests/kvm.
    pub kselftests: Vec<(String, PathBuf)>,
    /// perf from the tree, with the perf-tools series (the patched fast
    /// kernel only: the `perf-guests` suite runs there).
    #[serde(default)]
    pub perf: Option<PathBuf>,
}

impl BuildSpec {
    /// The kernel a run boots. The fast kernel has KVM as a module (what
    /// distributions ship, and what `check-series` builds patch by patch,
    /// which catches missing exports); the debug kernel has it built in
    /// (init order, symbol clashes), so every run builds and boots both.
    pub fn for_run(tree: Tree, config: Config) -> Self {
        let kvm = match config {
            Config::Fast => KvmMode::Module,
            Config::Debug => KvmMode::BuiltIn,
        };
        Self { tree, config, kvm }
    }

    fn dir_name(self) -> String {
        let mut name = format!("{}-{}", self.tree.name(), self.config.name());
        if self.kvm == KvmMode::BuiltIn {
            name.push_str("-kvm-y");
        }
        name
    }

    pub fn out_dir(self) -> PathBuf {
        paths::build_dir().join("build").join(self.dir_name())
    }
}

/// The base source actually installed (which may differ from the pin when the
/// pinned version is no longer offered; `deps` says so when it installs).
pub fn installed_base() -> Result<(BasePin, PathBuf)> {
    let pin = BasePin::load()?;
    let Some(version) = deps::installed_version(&pin.package) else {
        bail!(
            "{} is not installed: run `cargo xtask deps` (as root) first",
            pin.package
        );
    };
    if version != pin.version {
        eprintln!(
            "kernel: using {} {version}, not the pinned {} (not offered any more?)",
            pin.package, pin.version
        );
    }
    let tarball = PathBuf::from(format!("/usr/src/{}.tar.xz", pin.package));
    if !tarball.exists() {
        bail!(
            "{} is missing although {} is installed: reinstall it",
            tarball.display(),
            pin.package
        );
    }
    Ok((
        BasePin {
            package: pin.package,
            version,
        },
        tarball,
    ))
}

fn git(tree: &Path) -> Command {
    let mut c = Command::new("git");
    c.arg("-C")
        .arg(tree)
        .args(["-c", "user.name=kvmreg harness"])
        .args(["-c", "user.email=harness@kvmreg.invalid"])
        .args(["-c", "core.autocrlf=false"]);
    c
}

/// Makes sure `linux/` holds the installed base version, committed and
/// tagged `base`.
pub fn ensure_base_tree() -> Result<BasePin> {
    let (pin, tarball) = installed_base()?;
    let tree = paths::base_tree();
    let stamp = paths::build_dir().join("linux.version");
    let want = format!("{} {}", pin.package, pin.version);
    if fs::read_to_string(&stamp).ok().as_deref() == Some(want.as_str()) {
        return Ok(pin);
    }
    eprintln!("kernel: extracting {want} into {}", tree.display());
    let started = std::time::Instant::now();
    for dir in [tree.clone(), paths::patched_tree()] {
        if dir.exists() {
            fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))?;
        }
    }
    let _ = fs::remove_file(paths::build_dir().join("linux-patched.series"));
    fs::create_dir_all(&tree)?;
    cmd::run(
        Command::new("tar")
            .arg("-xf")
            .arg(&tarball)
            .arg("--strip-components=1")
            .arg("-C")
            .arg(&tree),
    )?;
    cmd::run(git(&tree).args(["init", "-q"]))?;
    // Debian's top-level .gitignore ignores everything at the top (`/*`):
    // force-add so the base commit really holds the whole tree.
    cmd::run(git(&tree).args(["add", "-f", "-A", "."]))?;
    cmd::run(
        git(&tree)
            .args(["commit", "-q", "-m"])
            .arg(format!("base: {want}")),
    )?;
    cmd::run(git(&tree).args(["tag", "-f", "base"]))?;
    fs::write(&stamp, &want)?;
    eprintln!(
        "kernel: base tree ready in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(pin)
}

fn patched_tree_stamp() -> PathBuf {
    paths::build_dir().join("linux-patched.series")
}

/// Makes sure `linux-patched/` is `base` plus exactly `series`.
pub fn ensure_patched_tree(series: &Series) -> Result<()> {
    let tree = paths::patched_tree();
    let want = series.hash();
    if tree.join(".git").exists()
        && fs::read_to_string(patched_tree_stamp()).ok().as_deref() == Some(want.as_str())
    {
        return Ok(());
    }
    reset_patched_tree()?;
    series.apply(&tree, None)?;
    mark_patched_tree(series)
}

/// Resets `linux-patched/` to `base` (creating the worktree if needed) and
/// forgets which series it held, for `check-series` to apply patch by patch.
pub fn reset_patched_tree() -> Result<PathBuf> {
    ensure_base_tree()?;
    let tree = paths::patched_tree();
    let _ = fs::remove_file(patched_tree_stamp());
    if !tree.join(".git").exists() {
        cmd::run(
            git(&paths::base_tree())
                .args(["worktree", "add", "-f", "--detach"])
                .arg(&tree)
                .arg("base"),
        )?;
    }
    let _ = cmd::capture(git(&tree).args(["am", "--abort"]));
    cmd::run(git(&tree).args(["checkout", "-q", "-f", "--detach", "base"]))?;
    cmd::run(git(&tree).args(["clean", "-q", "-f", "-d", "-x"]))?;
    Ok(tree)
}

/// Records that `linux-patched/` now holds exactly `series`.
pub fn mark_patched_tree(series: &Series) -> Result<()> {
    fs::write(patched_tree_stamp(), series.hash())?;
    Ok(())
}

/// Forgets the finished build of `spec`, for a caller about to change its
/// `O=` directory; the next [`build`] continues incrementally from there.
pub fn invalidate(spec: BuildSpec) {
    let _ = fs::remove_file(spec.out_dir().join("kernel.json"));
}

fn cache_key(spec: BuildSpec, pin: &BasePin, series: &Series) -> Result<String> {
    let mut h = Sha256::new();
    h.update(format!(
        "recipe {RECIPE_VERSION}\nbase {} {}\ntree {}\nconfig {}\nkvm {:?}\n",
        pin.package,
        pin.version,
        spec.tree.name(),
        spec.config.name(),
        spec.kvm
    ));
    for frag in spec.config.fragments() {
        h.update(fs::read(&frag).with_context(|| format!("cannot read {}", frag.display()))?);
    }
    if spec.tree == Tree::Patched {
        h.update(series.hash());
    }
    if let Some(list) = kselftest_list()? {
        for t in list {
            h.update(format!("{} {:?}\n", t.name, t.configs));
        }
    }
    Ok(format!("{:x}", h.finalize()))
}

/// One line of `kernel-patch/selftests.txt`: a test, relative to
/// `selftests/kvm`, and the configs it runs on (every config when none is
/// named).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kselftest {
    pub name: String,
    pub configs: Vec<Config>,
}

impl Kselftest {
    pub fn runs_on(&self, config: Config) -> bool {
        self.configs.is_empty() || self.configs.contains(&config)
    }
}

/// The kselftests to build and run, from `kernel-patch/selftests.txt`.
pub fn kselftest_list() -> Result<Option<Vec<Kselftest>>> {
    let path = paths::kernel_patch_dir().join("selftests.txt");
    if !path.exists() {
        return Ok(None);
    }
    let text = fs::read_to_string(&path)?;
    parse_kselftest_list(&text)
        .map(Some)
        .with_context(|| format!("in {}", path.display()))
}

fn parse_kselftest_list(text: &str) -> Result<Vec<Kselftest>> {
    let mut tests = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let mut words = line.split('#').next().unwrap_or("").split_whitespace();
        let Some(name) = words.next() else {
            continue;
        };
        let configs = words
            .map(|w| match w {
                "fast" => Ok(Config::Fast),
                "debug" => Ok(Config::Debug),
                _ => bail!("line {}: unknown config {w:?} (fast or debug)", n + 1),
            })
            .collect::<Result<_>>()?;
        tests.push(Kselftest {
            name: name.to_string(),
            configs,
        });
    }
    Ok(tests)
}

fn make(tree: &Path, out: &Path) -> Command {
    let mut c = Command::new("make");
    c.arg("-C").arg(tree).arg(format!("O={}", out.display()));
    c
}

/// Writes `.config` for `spec` into `out`: tinyconfig, then the fragments,
/// then the KVM mode; fails if Kconfig dropped any option a fragment asks for.
pub fn configure(tree: &Path, out: &Path, spec: BuildSpec) -> Result<()> {
    fs::create_dir_all(out)?;
    cmd::run(make(tree, out).arg("-s").arg("tinyconfig"))?;
    let mut fragments = spec.config.fragments();
    if spec.kvm == KvmMode::BuiltIn {
        let frag = out.join("kvm-y.config");
        fs::write(
            &frag,
            "CONFIG_KVM=y\nCONFIG_KVM_AMD=y\nCONFIG_KVM_INTEL=y\n",
        )?;
        fragments.push(frag);
    }
    cmd::run(
        Command::new(tree.join("scripts/kconfig/merge_config.sh"))
            .current_dir(tree)
            .arg("-m")
            .arg("-O")
            .arg(out)
            .arg(out.join(".config"))
            .args(&fragments),
    )?;
    cmd::run(make(tree, out).arg("-s").arg("olddefconfig"))?;
    let config = fs::read_to_string(out.join(".config"))?;
    // A later fragment overrides an earlier one (as merge_config.sh does),
    // so only the last setting of each symbol must have landed.
    let mut wanted: Vec<(String, String, &Path)> = Vec::new();
    for frag in &fragments {
        for line in fs::read_to_string(frag)?.lines() {
            let line = line.trim();
            let Some((sym, _)) = line.split_once('=') else {
                continue;
            };
            if line.starts_with('#') {
                continue;
            }
            wanted.retain(|(s, _, _)| s != sym);
            wanted.push((sym.to_string(), line.to_string(), frag));
        }
    }
    let mut dropped = Vec::new();
    for (sym, want, frag) in &wanted {
        let ok = if want.ends_with("=n") {
            !config.lines().any(|l| l.starts_with(&format!("{sym}=")))
        } else {
            config.lines().any(|l| l == want)
        };
        if !ok {
            dropped.push(format!("{want} (from {})", frag.display()));
        }
    }
    if !dropped.is_empty() {
        bail!(
            "Kconfig did not take these options (a missing dependency?):\n  {}",
            dropped.join("\n  ")
        );
    }
    Ok(())
}

/// Builds (or reuses) the kernel described by `spec`.
pub fn build(spec: BuildSpec) -> Result<Kernel> {
    let pin = ensure_base_tree()?;
    let series = Series::load()?;
    let key = cache_key(spec, &pin, &series)?;
    let out = spec.out_dir();
    let manifest = out.join("kernel.json");
    if let Ok(text) = fs::read_to_string(&manifest) {
        if let Ok(k) = serde_json::from_str::<Kernel>(&text) {
            if k.key == key && k.bzimage.exists() {
                eprintln!("kernel: {} is up to date ({})", spec.dir_name(), &key[..12]);
                return Ok(k);
            }
        }
    }
    let _ = fs::remove_file(&manifest);
    let tree = match spec.tree {
        Tree::Base => paths::base_tree(),
        Tree::Patched => {
            ensure_patched_tree(&series)?;
            paths::patched_tree()
        }
    };
    eprintln!("kernel: building {} in {}", spec.dir_name(), out.display());
    let started = std::time::Instant::now();
    configure(&tree, &out, spec)?;
    cmd::run(
        make(&tree, &out)
            .arg(format!("-j{}", cmd::jobs()))
            .args(["-s", "bzImage", "modules"]),
    )?;
    let release = cmd::output(make(&tree, &out).args(["-s", "kernelrelease"]))?
        .trim()
        .to_string();
    let modules = modules_to_load(&out)?;
    if spec.kvm == KvmMode::Module && !modules.iter().any(|m| m.ends_with("kvm.ko")) {
        bail!("the build did not produce kvm.ko although KVM is a module");
    }
    let built = started.elapsed().as_secs_f64();
    let kselftests = build_kselftests(&tree, &out)?;
    let perf = (spec.tree == Tree::Patched && spec.config == Config::Fast)
        .then(|| build_perf(&tree, &out))
        .transpose()?;
    eprintln!(
        "kernel: {} built in {built:.0} s, its kselftests{} in {:.0} s",
        spec.dir_name(),
        if perf.is_some() { " and perf" } else { "" },
        started.elapsed().as_secs_f64() - built
    );
    let kernel = Kernel {
        key,
        tree: spec.tree,
        config: spec.config,
        kvm: spec.kvm,
        base: format!("{} {}", pin.package, pin.version),
        release,
        bzimage: out.join("arch/x86/boot/bzImage"),
        modules,
        kselftests,
        perf,
    };
    fs::write(&manifest, serde_json::to_string_pretty(&kernel)?)?;
    Ok(kernel)
}

/// What perf is built without: everything its guest features do not need
/// (no libtraceevent, python, perl, DWARF, BPF, ...), so that it builds in
/// about 80 s of one CPU from the packages the kernel build needs anyway
/// (libelf). `perf kvm stat` needs libtraceevent and is not built.
const PERF_FLAGS: &[&str] = &[
    "NO_LIBPYTHON=1",
    "NO_LIBPERL=1",
    "NO_LIBTRACEEVENT=1",
    "NO_JEVENTS=1",
    "NO_LIBBPF=1",
    "BUILD_BPF_SKEL=0",
    "NO_SDT=1",
    "NO_LIBUNWIND=1",
    "NO_LIBDW_DWARF_UNWIND=1",
    "NO_DWARF=1",
    "NO_SLANG=1",
    "NO_GTK2=1",
    "NO_LIBNUMA=1",
    "NO_LIBCAP=1",
    "NO_LIBBABELTRACE=1",
    "NO_LIBCRYPTO=1",
    "NO_LIBZSTD=1",
    "NO_LZMA=1",
    "NO_ZLIB=1",
    "NO_AUXTRACE=1",
    "NO_LIBPFM4=1",
    "NO_CAPSTONE=1",
    "NO_LIBLLVM=1",
    "NO_DEMANGLE=1",
    "NO_LIBAUDIT=1",
    "NO_JVMTI=1",
    "NO_AIO=1",
    "NO_LIBDEBUGINFOD=1",
    "NO_SHELLCHECK=1",
    "NO_CLANG=1",
];

/// Builds perf from `tree` into `<out>/perf/` (incrementally) and returns
/// the binary.
pub fn build_perf(tree: &Path, out: &Path) -> Result<PathBuf> {
    let dir = out.join("perf");
    fs::create_dir_all(&dir)?;
    cmd::run(
        Command::new("make")
            .arg("-C")
            .arg(tree.join("tools/perf"))
            .arg(format!("O={}", dir.display()))
            // tools/perf starts its own make with -j$(nproc) unless told.
            .arg(format!("JOBS={}", cmd::jobs()))
            .args(PERF_FLAGS)
            .arg("-s"),
    )?;
    let perf = dir.join("perf");
    if !perf.exists() {
        bail!("the perf build did not produce {}", perf.display());
    }
    Ok(perf)
}

/// The modules the test VM loads: `kvm-amd` (QEMU's `-cpu max` under TCG
/// offers SVM, not VMX) and what it depends on (`modinfo` depends), each
/// after its dependencies. Other modules the config happens to build are
/// left alone. Empty when KVM is built in.
fn modules_to_load(out: &Path) -> Result<Vec<PathBuf>> {
    let order = fs::read_to_string(out.join("modules.order")).unwrap_or_default();
    let built: Vec<(String, PathBuf)> = order
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let ko = out.join(l).with_extension("ko");
            (module_name(&ko), ko)
        })
        .collect();
    let mut modules = Vec::new();
    let mut loaded: Vec<String> = Vec::new();
    if built.iter().any(|(n, _)| n == "kvm_amd") {
        add_with_depends("kvm_amd", &built, &mut loaded, &mut modules, 0)?;
    }
    Ok(modules)
}

fn add_with_depends(
    name: &str,
    built: &[(String, PathBuf)],
    loaded: &mut Vec<String>,
    modules: &mut Vec<PathBuf>,
    depth: usize,
) -> Result<()> {
    if loaded.iter().any(|l| l == name) {
        return Ok(());
    }
    if depth > 16 {
        bail!("module dependencies of {name} are too deep (a cycle?)");
    }
    let Some((_, ko)) = built.iter().find(|(n, _)| n == name) else {
        bail!("module {name} is needed but the build did not make it");
    };
    let depends = cmd::output(Command::new("modinfo").args(["-F", "depends"]).arg(ko))?;
    for dep in depends.trim().split(',').filter(|d| !d.is_empty()) {
        add_with_depends(&dep.replace('-', "_"), built, loaded, modules, depth + 1)?;
    }
    loaded.push(name.to_string());
    modules.push(ko.clone());
    Ok(())
}

/// `arch/x86/kvm/kvm-amd.ko` -> `kvm_amd`.
fn module_name(ko: &Path) -> String {
    ko.file_stem()
        .map(|s| s.to_string_lossy().replace('-', "_"))
        .unwrap_or_default()
}

/// Builds the KVM kselftests listed in `kernel-patch/selftests.txt` against
/// this tree's uapi headers. A test that the tree does not have (e.g. one the
/// series adds, on the base tree) is left out, and the run reports it missing.
fn build_kselftests(tree: &Path, out: &Path) -> Result<Vec<(String, PathBuf)>> {
    let Some(list) = kselftest_list()? else {
        return Ok(Vec::new());
    };
    cmd::run(make(tree, out).args(["-s", "headers"]))?;
    let ksft_out = out.join("kselftest/kvm");
    fs::create_dir_all(&ksft_out)?;
    let src = tree.join("tools/testing/selftests/kvm");
    let mut built = Vec::new();
    let mut targets = Vec::new();
    for name in list.iter().map(|t| &t.name) {
        if src.join(format!("{name}.c")).exists() {
            targets.push(ksft_out.join(name));
            built.push((name.clone(), ksft_out.join(name)));
        } else {
            eprintln!("kernel: kselftest {name} is not in this tree; skipping its build");
        }
    }
    if targets.is_empty() {
        return Ok(built);
    }
    cmd::run(
        Command::new("make")
            .arg("-C")
            .arg(&src)
            .arg("-s")
            .arg(format!("-j{}", cmd::jobs()))
            .arg(format!("OUTPUT={}", ksft_out.display()))
            .arg(format!(
                "KHDR_INCLUDES=-isystem {}/usr/include",
                out.display()
            ))
            .args(&targets),
    )?;
    Ok(built)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selftest_lines_name_their_configs() {
        let list = parse_kselftest_list(
            "# comment\nproc_kvm_test\n\nset_memory_region_test fast # slow\nx debug fast\n",
        )
        .unwrap();
        assert_eq!(list.len(), 3);
        assert!(list[0].runs_on(Config::Fast) && list[0].runs_on(Config::Debug));
        assert!(list[1].runs_on(Config::Fast) && !list[1].runs_on(Config::Debug));
        assert_eq!(list[2].configs, [Config::Debug, Config::Fast]);
    }

    #[test]
    fn unknown_config_is_an_error_with_its_line() {
        let e = parse_kselftest_list("a\nb kasan\n").unwrap_err();
        assert!(format!("{e:#}").contains("line 2: unknown config \"kasan\""));
    }
}
