//! Files kept open between refreshes and re-read with `pread`: a refresh
//! then costs one system call per file instead of a path walk, an open, a
//! read and a close.
//!
//! Only files that do not pin what they describe are kept open: the
//! registry's `/proc/<pid>/kvm/<id>/*` files fail with `ESRCH` once their VM
//! is gone and `/proc/<pid>/stat` once its process is. KVM's debugfs files
//! and a stats fd taken with `pidfd_getfd` hold a reference on the VM (its
//! memory stays allocated until they are closed), so those are opened for
//! one read and closed again (see [`crate::discover::guest_counters_of`]).

use crate::cpu::{self, ThreadTimes};
use crate::stats::{self, Layout, StatsError};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Larger files are refused: far above a `vcpu_stats` of a 1024-vCPU VM.
const MAX_FILE: usize = 64 << 20;

/// An open file re-read whole, from offset 0, into a buffer kept with it.
#[derive(Debug)]
pub struct KeptFile {
    file: File,
    path: PathBuf,
    buf: Vec<u8>,
    len: usize,
}

impl KeptFile {
    /// Open `path`; `initial` is the buffer size first tried (it grows
    /// when a read fills it).
    pub fn open(path: &Path, initial: usize) -> io::Result<KeptFile> {
        Ok(KeptFile {
            file: File::open(path)?,
            path: path.to_path_buf(),
            buf: vec![0; initial.max(64)],
            len: 0,
        })
    }

    /// The path the file was opened at, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole file as it is now: one `pread` while the buffer holds the
    /// file, more only when it has grown past the buffer (which then
    /// doubles, so the next read is one call again).
    pub fn read(&mut self) -> io::Result<&[u8]> {
        self.read_from(0)
    }

    /// The file from `offset` to its end, as [`read`](Self::read) reads it
    /// from the start.
    pub fn read_from(&mut self, offset: u64) -> io::Result<&[u8]> {
        loop {
            let n = self.pread(offset)?;
            if n < self.buf.len() {
                self.len = n;
                return Ok(&self.buf[..n]);
            }
            if self.buf.len() >= MAX_FILE {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} is larger than {MAX_FILE} bytes", self.path.display()),
                ));
            }
            let len = self.buf.len() * 2;
            self.buf.resize(len, 0);
        }
    }

    /// Fill the buffer from `offset`, retrying on `EINTR`.
    fn pread(&mut self, offset: u64) -> io::Result<usize> {
        loop {
            match self.file.read_at(&mut self.buf, offset) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => return r,
            }
        }
    }

    /// What the last [`read`](Self::read) returned.
    pub fn last(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// `/proc/<pid>/stat` or `/proc/<pid>/task/<tid>/stat`, kept open: CPU
/// times in one `pread`. For a process, the times are those of the whole
/// thread group (threads that exited included), `guest_time` too.
#[derive(Debug)]
pub struct StatFile(KeptFile);

impl StatFile {
    /// Open a `stat` file; nothing is read until [`times`](Self::times).
    pub fn open(path: &Path) -> io::Result<StatFile> {
        KeptFile::open(path, 1024).map(StatFile)
    }

    /// The times now. A vanished process or thread is an `ESRCH` error
    /// (see [`crate::procfs::classify`]); a line that does not parse is
    /// `InvalidData`.
    pub fn times(&mut self) -> io::Result<ThreadTimes> {
        let bytes = self.0.read()?;
        let bad = |why: &dyn std::fmt::Display| {
            io::Error::new(io::ErrorKind::InvalidData, why.to_string())
        };
        let text = std::str::from_utf8(bytes).map_err(|e| bad(&e))?;
        cpu::parse_stat(text).map_err(|e| bad(&e))
    }
}

/// `/proc/<pid>/io`, kept open: the process' storage I/O in one `pread`
/// (the permission is checked at each read, as for the open).
#[derive(Debug)]
pub struct IoFile(KeptFile);

impl IoFile {
    /// Open a process' `io` file: refused (`EACCES`) without ptrace-read
    /// rights over the process.
    pub fn open(path: &Path) -> io::Result<IoFile> {
        KeptFile::open(path, 256).map(IoFile)
    }

    /// The counters now; a vanished process is an `ESRCH` error, a text
    /// without them `InvalidData`.
    pub fn read(&mut self) -> io::Result<crate::storage::StorageBytes> {
        let bytes = self.0.read()?;
        std::str::from_utf8(bytes)
            .ok()
            .and_then(crate::storage::parse_io)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: no read_bytes/write_bytes", self.0.path().display()),
                )
            })
    }
}

/// `/proc/<pid>/task/<tid>/schedstat`, kept open: a thread's time on a
/// CPU and waiting for one in one `pread`.
#[derive(Debug)]
pub struct SchedStatFile(KeptFile);

impl SchedStatFile {
    /// Open a thread's `schedstat` file (missing on kernels without
    /// `CONFIG_SCHED_INFO`).
    pub fn open(path: &Path) -> io::Result<SchedStatFile> {
        KeptFile::open(path, 128).map(SchedStatFile)
    }

    /// The figures now; a vanished thread is an `ESRCH` error, a line
    /// that does not parse `InvalidData`.
    pub fn read(&mut self) -> io::Result<cpu::SchedStat> {
        let bytes = self.0.read()?;
        std::str::from_utf8(bytes)
            .ok()
            .and_then(cpu::parse_schedstat)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: not a schedstat line", self.0.path().display()),
                )
            })
    }
}

/// Raise this process' soft limit of open files to its hard limit, for a
/// tool that keeps two files open per guest: the usual soft limit of 1024
/// caps that at a few hundred guests. (Past its budget a
/// [`crate::track::Tracker`] reads files without keeping them, at three
/// system calls a file instead of one.) The library never calls this
/// itself: the limit is the process', so the program decides.
pub fn raise_fd_limit() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid out-pointer, and setrlimit gets the value
    // getrlimit filled in with only the soft limit raised to the hard one.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// Why a [`VcpuStatsFile`] gave no sums.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VcpuStatsError {
    /// `ESRCH`/`ENOENT`: the VM is gone. Other errors: the file could not be
    /// read.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The file's header, descriptors or data blocks are malformed.
    #[error("{0}")]
    Stats(#[from] StatsError),
}

/// A registry `vcpu_stats` file kept open, its header and descriptors
/// read and parsed once: after the first read each refresh is one `pread`
/// of the data blocks alone and a sum over them. KVM's binary stats fix the
/// header and descriptors for the life of the file (its API documentation:
/// the descriptors are read once per file descriptor), and the registry's
/// `vcpu_stats` keeps that rule, so they are not read again.
#[derive(Debug)]
pub struct VcpuStatsFile {
    file: KeptFile,
    layout: Option<Layout>,
    /// Where [`read_raw`](Self::read_raw) found the data blocks (the
    /// header's `data_offset`).
    data_offset: Option<u64>,
    /// The names last asked of [`read_picked`](Self::read_picked), each
    /// with its value's byte offset in a block (`None`: no such scalar).
    picked: Vec<(String, Option<usize>)>,
}

/// One reading of a [`VcpuStatsFile`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VcpuSums<'a> {
    /// vCPU blocks in the file: the VM's number of vCPUs.
    pub vcpus: usize,
    layout: &'a Layout,
    sums: Vec<u64>,
}

impl VcpuSums<'_> {
    /// Each scalar counter and its sum over the vCPUs.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> + '_ {
        self.layout
            .descs
            .iter()
            .filter(|d| d.size == 1)
            .map(|d| d.name.as_str())
            .zip(self.sums.iter().copied())
    }

    /// The sum of the scalar counter `name`; `None` if the file has none.
    pub fn get(&self, name: &str) -> Option<u64> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

impl VcpuStatsFile {
    /// Open `/proc/<pid>/kvm/<id>/vcpu_stats`; the layout is read at the
    /// first read.
    pub fn open(path: &Path) -> io::Result<VcpuStatsFile> {
        Ok(VcpuStatsFile {
            file: KeptFile::open(path, 16 << 10)?,
            layout: None,
            data_offset: None,
            picked: Vec::new(),
        })
    }

    /// The path the file was opened at, for messages.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The file's data blocks now, unparsed: one `pread` (the first read
    /// takes the whole file, for the header's data offset). The floor a
    /// benchmark compares [`read_picked`](Self::read_picked) with.
    pub fn read_raw(&mut self) -> io::Result<&[u8]> {
        if let Some(at) = self.data_offset {
            return self.file.read_from(at);
        }
        let bytes = self.file.read()?;
        let at = bytes
            .get(20..24)
            .map(|b| u32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "no stats header"))?;
        self.data_offset = Some(at.into());
        Ok(bytes.get(at as usize..).unwrap_or_default())
    }

    /// The counters now, summed over the vCPUs.
    pub fn read(&mut self) -> Result<VcpuSums<'_>, VcpuStatsError> {
        let (layout, data) = data(&mut self.file, &mut self.layout)?;
        let (vcpus, sums) = stats::vcpu_sums_with(layout, data)?;
        Ok(VcpuSums {
            vcpus,
            layout,
            sums,
        })
    }

    /// The counters `names` now, each summed over the vCPUs, into `out`
    /// (same order; `None` for a name the file has no scalar counter of):
    /// what a refresh needs, without allocating. Returns the number of
    /// vCPUs.
    pub fn read_picked(
        &mut self,
        names: &[&str],
        out: &mut [Option<u64>],
    ) -> Result<usize, VcpuStatsError> {
        let (layout, data) = data(&mut self.file, &mut self.layout)?;
        let asked = |p: &[(String, Option<usize>)]| {
            p.len() == names.len() && p.iter().zip(names).all(|((a, _), b)| a == b)
        };
        if !asked(&self.picked) {
            self.picked = names
                .iter()
                .map(|n| {
                    let d = layout.descs.iter().find(|d| d.size == 1 && d.name == *n);
                    (n.to_string(), d.map(|d| d.offset as usize))
                })
                .collect();
        }
        let (block, vcpus) = stats::vcpu_blocks(layout, data)?;
        for (slot, (_, at)) in out.iter_mut().zip(&self.picked) {
            *slot = at.and_then(|at| {
                data.chunks_exact(block)
                    .map(|b| Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?)))
                    .try_fold(0u64, |sum, v| Some(sum.wrapping_add(v?)))
            });
        }
        Ok(vcpus)
    }
}

/// A `vcpu_stats` file's layout, read and parsed on the first call, and its
/// data blocks now: after the first call one `pread` from the data offset.
fn data<'a>(
    file: &'a mut KeptFile,
    layout: &'a mut Option<Layout>,
) -> Result<(&'a Layout, &'a [u8]), VcpuStatsError> {
    match layout {
        Some(l) => Ok((l, file.read_from(l.data_offset)?)),
        None => {
            let bytes = file.read()?;
            let mut src = bytes;
            let l = layout.insert(stats::read_layout(&mut src)?);
            Ok((l, stats::data_of(l, bytes)?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    fn vcpu_stats(blocks: &[&[u64]]) -> Vec<u8> {
        // One vCPU's stream, then more data blocks of the same layout.
        let names = ["exits", "halt_attempted_poll"];
        let first: Vec<(&str, u32, &[u64])> = names
            .iter()
            .zip(blocks[0].iter())
            .map(|(n, v)| (*n, 0, std::slice::from_ref(v)))
            .collect();
        let mut b = stats::encode("kvm-1/vcpus", 48, &first);
        for blk in &blocks[1..] {
            for v in *blk {
                b.extend_from_slice(&v.to_ne_bytes());
            }
        }
        b
    }

    #[test]
    fn kept_file_rereads_and_grows() {
        let d = TempDir::new("kept");
        d.write("f", "abc");
        let mut k = KeptFile::open(&d.path().join("f"), 1).unwrap();
        assert_eq!(k.read().unwrap(), b"abc");
        d.write("f", "x".repeat(1000));
        assert_eq!(k.read().unwrap().len(), 1000);
        assert!(k.buf.len() > 1000);
    }

    #[test]
    fn vcpu_stats_sums_follow_the_file() {
        let d = TempDir::new("kept-vs");
        d.write("vs", vcpu_stats(&[&[10, 1], &[5, 2]]));
        let mut f = VcpuStatsFile::open(&d.path().join("vs")).unwrap();
        let s = f.read().unwrap();
        assert_eq!(s.vcpus, 2);
        assert_eq!(s.get("exits"), Some(15));
        assert_eq!(s.get("halt_attempted_poll"), Some(3));
        // Rewritten in place (a new vCPU): same layout, three blocks.
        d.write("vs", vcpu_stats(&[&[10, 1], &[5, 2], &[1, 1]]));
        let s = f.read().unwrap();
        assert_eq!((s.vcpus, s.get("exits")), (3, Some(16)));
        // A partial block is an error, not a panic.
        let mut b = vcpu_stats(&[&[10, 1], &[5, 2]]);
        b.push(7);
        d.write("vs", &b);
        assert!(f.read().is_err());
        // So is garbage where the layout is read.
        d.write("vs", [1u8, 2, 3]);
        let mut f = VcpuStatsFile::open(&d.path().join("vs")).unwrap();
        assert!(f.read().is_err());
    }

    #[test]
    fn picked_counters_read_only_the_data_after_the_first_read() {
        let d = TempDir::new("kept-pick");
        d.write("vs", vcpu_stats(&[&[10, 1], &[5, 2]]));
        let mut f = VcpuStatsFile::open(&d.path().join("vs")).unwrap();
        let names = ["halt_attempted_poll", "missing", "exits"];
        let mut out = [None; 3];
        assert_eq!(f.read_picked(&names, &mut out).unwrap(), 2);
        assert_eq!(out, [Some(3), None, Some(15)]);
        // Later reads start at the data: bytes before it are not read again
        // (KVM fixes them for the life of the file), so zeroing them here
        // changes nothing.
        let mut b = vcpu_stats(&[&[10, 1], &[5, 2], &[1, 1]]);
        let at = f.layout.as_ref().unwrap().data_offset as usize;
        b[..at].fill(0);
        d.write("vs", &b);
        assert_eq!(f.read_picked(&names, &mut out).unwrap(), 3);
        assert_eq!(out, [Some(4), None, Some(16)]);
        // Other names are resolved again.
        assert_eq!(f.read_picked(&["exits"], &mut out[..1]).unwrap(), 3);
        assert_eq!(out[0], Some(16));
        // The raw read, for the floor: the data alone.
        let b = vcpu_stats(&[&[10, 1], &[5, 2], &[1, 1]]);
        d.write("vs", &b);
        let mut f = VcpuStatsFile::open(&d.path().join("vs")).unwrap();
        assert_eq!(f.read_raw().unwrap().len(), b.len() - at);
        assert_eq!(f.read_raw().unwrap().len(), b.len() - at);
    }

    #[test]
    fn stat_file_reads_this_process() {
        let mut s = StatFile::open(Path::new("/proc/self/stat")).unwrap();
        let t = s.times().unwrap();
        assert_eq!(t.tid, std::process::id());
        assert!(s.times().is_ok());
    }
}
