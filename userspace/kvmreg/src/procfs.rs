//! Reading a `/proc` tree whose root is a parameter.
//!
//! Every backend runs against a fake proc tree in a temp dir in tests (the
//! patched kernel's files do not exist on the build host), and each read
//! tells a vanished process or a denied read (normal while scanning a live
//! system) apart from a real error.
//!
//! Hand-written rather than built on the `procfs` crate, which can do both
//! (a root per process, `NotFound` and `PermissionDenied`), because of
//! cost: kvmreg takes one or two fields of a file read for every process
//! a discovery looks at, or every thread on every refresh, where `procfs`
//! parses every field into a struct. Measured on the same bytes
//! (`cargo bench -p kvmreg-fixture --bench proc_parsers`,
//! Documentation/benchmarks.md): a thread's `stat` 7.1x the time of
//! [`crate::cpu::parse_stat`] (1.2 us against 0.17), a `status` 80x
//! [`uid_from_status`] (21 us against 0.25). The command line
//! ([`parse_cmdline`]) is a split at NUL bytes, which `procfs` does the
//! same way: not worth a dependency.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// Why a read under `/proc` did not give data, when that is not an error
/// but a normal event of scanning a live system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The process, thread, fd or VM went away while we looked
    /// (`ENOENT`, `ESRCH`).
    Gone,
    /// We may not look (`EACCES`, `EPERM`).
    Denied,
}

/// Classify an I/O error: `Some(skip)` for the normal cases, `None`
/// otherwise.
pub fn classify(err: &io::Error) -> Option<Skip> {
    match err.raw_os_error() {
        Some(libc::ENOENT) | Some(libc::ESRCH) => Some(Skip::Gone),
        Some(libc::EACCES) | Some(libc::EPERM) => Some(Skip::Denied),
        _ => match err.kind() {
            io::ErrorKind::NotFound => Some(Skip::Gone),
            io::ErrorKind::PermissionDenied => Some(Skip::Denied),
            _ => None,
        },
    }
}

/// The result of one read under `/proc`.
#[derive(Debug)]
pub enum Read<T> {
    /// The data.
    Ok(T),
    /// No data, for a normal reason: the thing went away or is not ours to
    /// read.
    Skip(Skip),
    /// Any other error.
    Err(io::Error),
}

impl<T> Read<T> {
    fn from_io(r: io::Result<T>) -> Self {
        match r {
            Ok(v) => Read::Ok(v),
            Err(e) => match classify(&e) {
                Some(s) => Read::Skip(s),
                None => Read::Err(e),
            },
        }
    }

    /// The value, dropping the reason it is missing.
    pub fn ok(self) -> Option<T> {
        match self {
            Read::Ok(v) => Some(v),
            _ => None,
        }
    }
}

/// A proc mount: `/proc` on the host, or a fake tree in tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcRoot {
    root: PathBuf,
}

impl Default for ProcRoot {
    fn default() -> Self {
        ProcRoot::new("/proc")
    }
}

impl ProcRoot {
    /// A proc tree at `root`.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ProcRoot { root: root.into() }
    }

    /// The root of the tree.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// `<root>/<rel>`.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.root.join(rel)
    }

    /// Read a small text file.
    pub fn read_string(&self, rel: impl AsRef<Path>) -> Read<String> {
        Read::from_io(fs::read_to_string(self.join(rel)))
    }

    /// Read a link target as text.
    pub fn read_link(&self, rel: impl AsRef<Path>) -> Read<String> {
        Read::from_io(fs::read_link(self.join(rel)).map(|p| p.to_string_lossy().into_owned()))
    }

    /// The names of the entries of a directory.
    pub fn list_dir(&self, rel: impl AsRef<Path>) -> Read<Vec<String>> {
        Read::from_io(fs::read_dir(self.join(rel)).and_then(|rd| {
            let mut out = Vec::new();
            for e in rd {
                match e {
                    Ok(e) => out.push(e.file_name().to_string_lossy().into_owned()),
                    // An entry vanishing mid-listing is normal in /proc.
                    Err(e) if classify(&e).is_some() => continue,
                    Err(e) => return Err(e),
                }
            }
            Ok(out)
        }))
    }

    /// The numeric entries of a directory (pids, tids, fds), sorted.
    pub fn list_numeric(&self, rel: impl AsRef<Path>) -> Read<Vec<u32>> {
        match self.list_dir(rel) {
            Read::Ok(names) => {
                let mut v: Vec<u32> = names.iter().filter_map(|n| n.parse().ok()).collect();
                v.sort_unstable();
                Read::Ok(v)
            }
            Read::Skip(s) => Read::Skip(s),
            Read::Err(e) => Read::Err(e),
        }
    }

    /// The effective uid from `/proc/<pid>/status`.
    pub fn process_uid(&self, pid: u32) -> Option<u32> {
        let status = self.read_string(format!("{pid}/status")).ok()?;
        uid_from_status(&status)
    }

    /// The NUL-separated command line of a process.
    pub fn cmdline(&self, pid: u32) -> Option<Vec<String>> {
        let raw = fs::read(self.join(format!("{pid}/cmdline"))).ok()?;
        Some(parse_cmdline(&raw))
    }
}

/// The effective uid (second `Uid:` field) of a `/proc/<pid>/status` text.
pub fn uid_from_status(text: &str) -> Option<u32> {
    status_field(text, "Uid")?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The arguments of a NUL-separated `/proc/<pid>/cmdline`, empty ones
/// dropped, each lossily decoded.
pub fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    raw.split(|b| *b == 0)
        .filter(|s| !s.is_empty())
        .map(|s| String::from_utf8_lossy(s).into_owned())
        .collect()
}

/// The value of a `Key:\tvalue` line, as in `/proc/<pid>/status`.
pub fn status_field<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.trim())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classify_errno() {
        let e = io::Error::from_raw_os_error(libc::ESRCH);
        assert_eq!(classify(&e), Some(Skip::Gone));
        let e = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(classify(&e), Some(Skip::Denied));
        let e = io::Error::from_raw_os_error(libc::EIO);
        assert_eq!(classify(&e), None);
    }

    #[test]
    fn status_fields() {
        let s = "Name:\tqemu\nUid:\t1000\t1001\t1000\t1000\nKvm:\n";
        assert_eq!(status_field(s, "Name"), Some("qemu"));
        assert_eq!(status_field(s, "Kvm"), Some(""));
        assert_eq!(status_field(s, "Nope"), None);
    }

    #[test]
    fn reads_a_fake_tree() {
        let dir = crate::testutil::TempDir::new("procfs");
        dir.write("42/status", "Name:\tx\nUid:\t7\t8\t9\t10\n");
        dir.write("42/cmdline", "qemu\0-name\0web\0");
        std::fs::create_dir_all(dir.path().join("self")).unwrap();
        let p = ProcRoot::new(dir.path());
        assert_eq!(p.process_uid(42), Some(8));
        assert_eq!(p.cmdline(42).unwrap(), vec!["qemu", "-name", "web"]);
        assert!(matches!(p.list_numeric(""), Read::Ok(v) if v == vec![42]));
        assert!(matches!(p.read_string("43/status"), Read::Skip(Skip::Gone)));
    }
}
