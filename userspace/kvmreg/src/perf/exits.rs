//! Exit reasons of one guest: the `kvm:kvm_exit` and `kvm:kvm_entry`
//! tracepoints, opened with `perf_event_open` on that guest's vCPU threads
//! only (so no other guest is traced), counted per reason, with the time
//! from each exit to the next entry of the same vCPU: what `perf kvm stat
//! live` reports host-wide.
//!
//! The reason names come from the running kernel: the tracepoint's own
//! `format` file prints the reason with `__print_symbolic` tables, one for
//! VMX and one for SVM, which are parsed here, so new reasons need no
//! table of ours. The field offsets come from the same file.
//!
//! Cost: one sample per exit and per entry of the traced vCPUs, written to
//! a per-thread ring (no extra exits, no wake-ups of the guest); tracing
//! runs only while a caller holds an [`ExitTracer`], which tools create
//! only when the user asks for exit reasons.

use super::ring::Ring;
use super::{nofile_limit, paranoid, sysctl};
use perf_event_open_sys::bindings as sys;
use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

/// `isa` values of the `kvm_exit` tracepoint (`KVM_ISA_VMX`, `KVM_ISA_SVM`).
const ISA_VMX: u32 = 1;

/// Why exit tracing could not start: [`Tracepoints::load`] or
/// [`ExitTracer::new`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExitError {
    /// No tracefs is mounted, neither on its own nor under debugfs.
    #[error(
        "exit reasons need the kvm:kvm_exit tracepoint, and no tracefs is mounted: mount it (`mount -t tracefs nodev /sys/kernel/tracing`, as root)"
    )]
    NoTracefs,
    /// The tracefs (this mount point) lacks `events/kvm/kvm_exit` or
    /// `kvm_entry`.
    #[error(
        "{0} has no kvm/kvm_exit and kvm/kvm_entry events: the kvm module is not loaded, or the kernel was built without event tracing (CONFIG_EVENT_TRACING)"
    )]
    NoTracepoint(PathBuf),
    /// A tracepoint file could not be read for lack of permission.
    #[error(
        "reading {path} was refused ({err}): the tracepoints' ids in tracefs are readable by root only"
    )]
    TracefsPermission {
        /// The file refused.
        path: PathBuf,
        /// The error of the read.
        err: io::Error,
    },
    /// A tracepoint's `id` or `format` file did not say what was expected.
    #[error("{path}: {why}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What was wrong with it.
        why: String,
    },
    /// `perf_event_open` on a vCPU thread was refused (`EACCES`, `EPERM`).
    #[error(
        "tracing thread {tid} was refused ({err}): the raw data of tracepoints needs CAP_PERFMON (or root), or kernel.perf_event_paranoid -1 (it is {paranoid})"
    )]
    Permission {
        /// The thread.
        tid: u32,
        /// The error of `perf_event_open`.
        err: io::Error,
        /// `kernel.perf_event_paranoid` as read, for the message.
        paranoid: String,
    },
    /// No thread was given to trace.
    #[error("no vCPU threads known for this guest: nothing to trace")]
    NoThreads,
    /// `perf_event_open` failed with `EMFILE` or `ENFILE`.
    #[error(
        "out of file descriptors after {opened} perf events (two per vCPU thread): raise the open-files limit (`ulimit -n`, now {limit})"
    )]
    OutOfFds {
        /// Perf events opened for the threads before the failing one.
        opened: usize,
        /// The open-files limit as read, for the message.
        limit: String,
    },
    /// Mapping a thread's ring buffer was refused (`EPERM`, `ENOMEM`).
    #[error(
        "mapping the perf ring of thread {tid} was refused ({err}): rings beyond kernel.perf_event_mlock_kb (it is {mlock_kb} KiB) per user need CAP_IPC_LOCK"
    )]
    RingMemory {
        /// The thread.
        tid: u32,
        /// The error of the `mmap`.
        err: io::Error,
        /// `kernel.perf_event_mlock_kb` as read, for the message.
        mlock_kb: String,
    },
    /// Any other error opening, mapping or enabling a thread's events.
    #[error("tracing thread {tid}: {err}")]
    Io {
        /// The thread.
        tid: u32,
        /// The error.
        err: io::Error,
    },
}

/// Where a field lies in a tracepoint's raw record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// Byte offset in the raw record.
    pub offset: usize,
    /// Size in bytes.
    pub size: usize,
}

impl Field {
    /// The field's value, if the record holds it (sizes 1, 2, 4 or 8).
    fn read(self, raw: &[u8]) -> Option<u64> {
        let b = raw.get(self.offset..self.offset.checked_add(self.size)?)?;
        Some(match self.size {
            1 => u64::from(b[0]),
            2 => u64::from(u16::from_ne_bytes(b.try_into().ok()?)),
            4 => u64::from(u32::from_ne_bytes(b.try_into().ok()?)),
            8 => u64::from_ne_bytes(b.try_into().ok()?),
            _ => return None,
        })
    }
}

/// What the `kvm_exit` format file says: where the reason and the ISA are,
/// and the reason names of each ISA.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitFormat {
    /// The `exit_reason` field.
    pub exit_reason: Field,
    /// The `isa` field: 1 for VMX, 2 for SVM.
    pub isa: Field,
    /// Reason names for VMX (`isa` 1), keyed by the basic reason (low 16
    /// bits), and for SVM, keyed by the whole exit code.
    pub vmx: BTreeMap<u64, String>,
    /// Reason names for SVM (any other `isa`), keyed by the whole exit
    /// code.
    pub svm: BTreeMap<u64, String>,
}

impl ExitFormat {
    /// Parse the text of `events/kvm/kvm_exit/format`.
    pub fn parse(text: &str) -> Result<ExitFormat, String> {
        let field = |name: &str| -> Result<Field, String> {
            text.lines()
                .find_map(|l| parse_field(l).filter(|(n, _)| n == name).map(|(_, f)| f))
                .ok_or_else(|| format!("no field {name}"))
        };
        let exit_reason = field("exit_reason")?;
        let isa = field("isa")?;
        let fmt = text
            .lines()
            .find_map(|l| l.strip_prefix("print fmt:"))
            .ok_or("no print fmt")?;
        // `(REC->isa == 1) ? __print_symbolic(<VMX>) : __print_symbolic(<SVM>)`
        let after_isa = fmt
            .split_once("isa == 1")
            .map(|(_, r)| r)
            .ok_or("the print fmt does not test the isa")?;
        let mut tables = after_isa.split("__print_symbolic(").skip(1);
        let vmx = tables.next().map(symbols).unwrap_or_default();
        let svm = tables.next().map(symbols).unwrap_or_default();
        if vmx.is_empty() && svm.is_empty() {
            return Err("no reason names in the print fmt".into());
        }
        Ok(ExitFormat {
            exit_reason,
            isa,
            vmx,
            svm,
        })
    }

    /// The name of an exit reason, as the kernel prints it; unknown ones as
    /// their number.
    pub fn name(&self, isa: u32, reason: u64) -> String {
        let (table, key) = if isa == ISA_VMX {
            (&self.vmx, reason & 0xffff)
        } else {
            (&self.svm, reason)
        };
        table
            .get(&key)
            .cloned()
            .unwrap_or_else(|| format!("{key:#x}"))
    }
}

/// `\tfield:unsigned int exit_reason;\toffset:8;\tsize:4;\tsigned:0;`
fn parse_field(line: &str) -> Option<(String, Field)> {
    let mut name = None;
    let mut offset = None;
    let mut size = None;
    for part in line.trim().split(';') {
        let part = part.trim();
        if let Some(decl) = part.strip_prefix("field:") {
            let last = decl.split_whitespace().last()?;
            // Arrays: `char comm[16]`.
            name = Some(last.split('[').next()?.to_string());
        } else if let Some(v) = part.strip_prefix("offset:") {
            offset = v.parse().ok();
        } else if let Some(v) = part.strip_prefix("size:") {
            size = v.parse().ok();
        }
    }
    Some((
        name?,
        Field {
            offset: offset?,
            size: size?,
        },
    ))
}

/// The `{ value, "name" }` pairs of one `__print_symbolic(` argument list,
/// up to its closing parenthesis. Values are numbers or sums of numbers
/// (`0x040 + 14`), as the preprocessor left them; `-1` is skipped.
fn symbols(args: &str) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    let mut rest = args;
    while let Some(open) = rest.find(['{', ')']) {
        if rest.as_bytes()[open] == b')' {
            break;
        }
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        let pair = &rest[open + 1..open + close];
        rest = &rest[open + close + 1..];
        let Some((value, name)) = pair.split_once(',') else {
            continue;
        };
        let name = name.trim().trim_matches('"');
        if let Some(v) = sum(value) {
            out.insert(v, name.to_string());
        }
    }
    out
}

fn number(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn sum(expr: &str) -> Option<u64> {
    expr.split('+')
        .map(number)
        .try_fold(0u64, |a, v| a.checked_add(v?))
}

/// The tracefs mount point: the first `tracefs` in `/proc/self/mounts`,
/// else the one under a mounted debugfs.
pub fn find_tracefs() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    let mut debugfs = None;
    for l in mounts.lines() {
        let mut f = l.split_whitespace();
        let (Some(_), Some(dir), Some(kind)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        match kind {
            "tracefs" => return Some(PathBuf::from(dir)),
            "debugfs" if debugfs.is_none() => debugfs = Some(Path::new(dir).join("tracing")),
            _ => {}
        }
    }
    debugfs.filter(|d| d.join("events").is_dir())
}

/// The two tracepoints: ids and the exit record's layout.
#[derive(Debug, Clone)]
pub struct Tracepoints {
    /// The id of `kvm:kvm_exit` (`events/kvm/kvm_exit/id`), the `config`
    /// of its perf event.
    pub exit_id: u64,
    /// The id of `kvm:kvm_entry`.
    pub entry_id: u64,
    /// The layout and reason names of the `kvm_exit` record.
    pub format: ExitFormat,
}

impl Tracepoints {
    /// Read them from the tracefs at `tracefs`.
    pub fn load(tracefs: &Path) -> Result<Tracepoints, ExitError> {
        let kvm = tracefs.join("events/kvm");
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p).map_err(|err| match err.kind() {
                io::ErrorKind::PermissionDenied => ExitError::TracefsPermission { path: p, err },
                io::ErrorKind::NotFound => ExitError::NoTracepoint(tracefs.to_path_buf()),
                _ => ExitError::Format {
                    why: format!("cannot be read: {err}"),
                    path: p,
                },
            })
        };
        let id = |name: &str| -> Result<u64, ExitError> {
            let p = kvm.join(name).join("id");
            let t = read(p.clone())?;
            t.trim().parse().map_err(|_| ExitError::Format {
                path: p,
                why: format!("not an id: {:?}", t.trim()),
            })
        };
        let exit_id = id("kvm_exit")?;
        let entry_id = id("kvm_entry")?;
        let fpath = kvm.join("kvm_exit/format");
        let format = ExitFormat::parse(&read(fpath.clone())?)
            .map_err(|why| ExitError::Format { path: fpath, why })?;
        Ok(Tracepoints {
            exit_id,
            entry_id,
            format,
        })
    }
}

/// The exits of one reason over some interval.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReasonCount {
    /// Exits seen.
    pub exits: u64,
    /// Of those, the exits whose next entry was seen.
    pub timed: u64,
    /// Nanoseconds from those exits to their entries: the time the host
    /// (kernel and VMM) took to handle them.
    pub handled_ns: u64,
}

struct Thread {
    tid: u32,
    exit: OwnedFd,
    entry: OwnedFd,
    exit_id: u64,
    entry_id: u64,
    ring: Ring,
    /// The last exit not yet followed by an entry: its reason and time.
    pending: Option<(String, u64)>,
}

/// Exit tracing of a set of vCPU threads, until dropped.
pub struct ExitTracer {
    threads: Vec<Thread>,
    tally: Tally,
}

/// Ring size per thread in pages (256 KiB): room for about 1,500 exits
/// with their entries (6.12's records take about 170 bytes for the pair;
/// computed from the events' formats, not measured), drained every
/// [`ExitTracer::poll`].
const RING_PAGES: usize = 64;

const SAMPLE_TYPE: u64 =
    (sys::PERF_SAMPLE_IDENTIFIER | sys::PERF_SAMPLE_TIME | sys::PERF_SAMPLE_RAW) as u64;

fn open_tracepoint(tid: u32, id: u64, sample_type: u64) -> io::Result<OwnedFd> {
    // SAFETY: perf_event_attr is plain data; all-zero is a valid start.
    let mut attr: sys::perf_event_attr = unsafe { std::mem::zeroed() };
    attr.type_ = sys::PERF_TYPE_TRACEPOINT;
    attr.size = std::mem::size_of::<sys::perf_event_attr>() as u32;
    attr.config = id;
    attr.__bindgen_anon_1.sample_period = 1;
    attr.sample_type = sample_type;
    // One clock for the exit and the entry even when the thread moved to
    // another CPU in between.
    attr.set_use_clockid(1);
    attr.clockid = libc::CLOCK_MONOTONIC;
    attr.set_disabled(1);
    super::open_on_thread(&mut attr, tid)
}

fn event_id(fd: &OwnedFd) -> io::Result<u64> {
    let mut id = 0u64;
    // SAFETY: PERF_EVENT_IOC_ID writes one u64 to the valid pointer.
    if unsafe { perf_event_open_sys::ioctls::ID(fd.as_raw_fd(), &mut id) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(id)
}

impl ExitTracer {
    /// Trace the exits of the vCPU threads `tids`.
    pub fn new(tids: &[u32], tp: &Tracepoints) -> Result<ExitTracer, ExitError> {
        if tids.is_empty() {
            return Err(ExitError::NoThreads);
        }
        let mut threads = Vec::new();
        for &tid in tids {
            // `opened`: the events opened before the one that failed.
            let err = |err: io::Error, opened: usize| match err.raw_os_error() {
                Some(libc::EACCES) | Some(libc::EPERM) => ExitError::Permission {
                    tid,
                    err,
                    paranoid: paranoid(),
                },
                Some(libc::EMFILE) | Some(libc::ENFILE) => ExitError::OutOfFds {
                    opened,
                    limit: nofile_limit(),
                },
                _ => ExitError::Io { tid, err },
            };
            let exit = open_tracepoint(tid, tp.exit_id, SAMPLE_TYPE)
                .map_err(|e| err(e, threads.len() * 2))?;
            let entry = open_tracepoint(tid, tp.entry_id, SAMPLE_TYPE)
                .map_err(|e| err(e, threads.len() * 2 + 1))?;
            let ring = Ring::new(&exit, RING_PAGES).map_err(|err| match err.raw_os_error() {
                Some(libc::EPERM) | Some(libc::ENOMEM) => ExitError::RingMemory {
                    tid,
                    err,
                    mlock_kb: sysctl("perf_event_mlock_kb"),
                },
                _ => ExitError::Io { tid, err },
            })?;
            // SAFETY: PERF_EVENT_IOC_SET_OUTPUT takes the fd of another perf
            // event (an integer); both are ours and stay open together.
            let r = unsafe {
                perf_event_open_sys::ioctls::SET_OUTPUT(entry.as_raw_fd(), exit.as_raw_fd())
            };
            if r < 0 {
                return Err(ExitError::Io {
                    tid,
                    err: io::Error::last_os_error(),
                });
            }
            let exit_id = event_id(&exit).map_err(|err| ExitError::Io { tid, err })?;
            let entry_id = event_id(&entry).map_err(|err| ExitError::Io { tid, err })?;
            threads.push(Thread {
                tid,
                exit,
                entry,
                exit_id,
                entry_id,
                ring,
                pending: None,
            });
        }
        for t in &threads {
            for fd in [&t.exit, &t.entry] {
                // SAFETY: PERF_EVENT_IOC_ENABLE on a perf fd we own; its
                // argument (0: this event only) is an integer.
                if unsafe { perf_event_open_sys::ioctls::ENABLE(fd.as_raw_fd(), 0) } < 0 {
                    return Err(ExitError::Io {
                        tid: t.tid,
                        err: io::Error::last_os_error(),
                    });
                }
            }
        }
        Ok(ExitTracer {
            threads,
            tally: Tally::new(tp.format.clone()),
        })
    }

    /// The traced threads.
    pub fn threads(&self) -> Vec<u32> {
        self.threads.iter().map(|t| t.tid).collect()
    }

    /// Read what the rings hold now. Call it often enough that a ring does
    /// not fill (every 100 ms keeps up with about 15,000 exits a second per
    /// vCPU, computed from the record sizes); what does not fit is counted in
    /// [`ExitTracer::lost`].
    pub fn poll(&mut self) {
        let tally = &mut self.tally;
        for t in &mut self.threads {
            let ids = (t.exit_id, t.entry_id);
            let pending = &mut t.pending;
            t.ring.drain(|rec| tally.feed(rec, ids, pending));
        }
    }

    /// The tracepoints' `isa`, once an exit was seen (1 VMX, 2 SVM).
    pub fn isa(&self) -> Option<u32> {
        self.tally.isa
    }

    /// Records the kernel dropped because a ring was full, so far.
    pub fn lost(&self) -> u64 {
        self.tally.lost
    }

    /// Records that did not parse, so far.
    pub fn bad_records(&self) -> u64 {
        self.tally.bad
    }

    /// The counts since the last call (after a [`ExitTracer::poll`]).
    pub fn take(&mut self) -> BTreeMap<String, ReasonCount> {
        std::mem::take(&mut self.tally.counts)
    }
}

/// The counting of records, free of rings so tests can feed it.
struct Tally {
    format: ExitFormat,
    counts: BTreeMap<String, ReasonCount>,
    isa: Option<u32>,
    lost: u64,
    bad: u64,
}

impl Tally {
    fn new(format: ExitFormat) -> Tally {
        Tally {
            format,
            counts: BTreeMap::new(),
            isa: None,
            lost: 0,
            bad: 0,
        }
    }

    /// Count one record of a thread whose exit and entry events have the
    /// ids `(exit, entry)`; `pending` is that thread's unanswered exit.
    fn feed(&mut self, rec: &[u8], (exit, entry): (u64, u64), pending: &mut Option<(String, u64)>) {
        match parse(rec) {
            Some(Rec::Sample { id, time, raw }) if id == exit => {
                let fmt = &self.format;
                let (Some(r), Some(i)) = (fmt.exit_reason.read(raw), fmt.isa.read(raw)) else {
                    self.bad += 1;
                    return;
                };
                let i = i as u32;
                self.isa = Some(i);
                let name = fmt.name(i, r);
                self.counts.entry(name.clone()).or_default().exits += 1;
                *pending = Some((name, time));
            }
            Some(Rec::Sample { id, time, .. }) if id == entry => {
                if let Some((name, at)) = pending.take() {
                    let c = self.counts.entry(name).or_default();
                    c.timed += 1;
                    c.handled_ns += time.saturating_sub(at);
                }
            }
            Some(Rec::Lost(n)) => {
                self.lost += n;
                // Which exit an entry answers is lost with the records.
                *pending = None;
            }
            Some(_) => {}
            None => self.bad += 1,
        }
    }
}

enum Rec<'a> {
    Sample { id: u64, time: u64, raw: &'a [u8] },
    Lost(u64),
    Other,
}

/// One record of the ring: samples with `IDENTIFIER | TIME | RAW`.
fn parse(rec: &[u8]) -> Option<Rec<'_>> {
    let (kind, _, size) = super::record::header(rec)?;
    let body = rec.get(super::record::HEADER_SIZE..usize::from(size))?;
    let u64_at = |o: usize| -> Option<u64> {
        Some(u64::from_ne_bytes(body.get(o..o + 8)?.try_into().ok()?))
    };
    match kind {
        sys::PERF_RECORD_SAMPLE => {
            let id = u64_at(0)?;
            let time = u64_at(8)?;
            let n = u32::from_ne_bytes(body.get(16..20)?.try_into().ok()?) as usize;
            let raw = body.get(20..20usize.checked_add(n)?)?;
            Some(Rec::Sample { id, time, raw })
        }
        // struct { u64 id; u64 lost; }
        sys::PERF_RECORD_LOST => Some(Rec::Lost(u64_at(8)?)),
        _ => Some(Rec::Other),
    }
}

/// Why `kvm_exit` may never fire on this host, if it may not: the
/// tracepoints are emitted by the VMX and SVM code (`kvm_intel`,
/// `kvm_amd`); other KVM implementations (`kvm_pvm`, for one) run guests
/// without them.
pub fn vendor_note() -> Option<String> {
    vendor_note_in(Path::new("/sys/module"))
}

fn vendor_note_in(modules: &Path) -> Option<String> {
    if ["kvm_intel", "kvm_amd"]
        .iter()
        .any(|m| modules.join(m).exists())
    {
        return None;
    }
    let others: Vec<String> = std::fs::read_dir(modules)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with("kvm_"))
        .collect();
    Some(format!(
        "neither kvm_intel nor kvm_amd is loaded{}: kvm_exit fires only in their VMX and SVM code, so exits may go uncounted",
        if others.is_empty() {
            String::new()
        } else {
            format!(" (KVM here: {})", others.join(", "))
        }
    ))
}

/// Exit tracing of one guest's vCPU threads, by guest: a convenience over
/// [`ExitTracer`] for the common case of one tracefs.
pub fn trace_guest(g: &crate::Guest) -> Result<ExitTracer, ExitError> {
    let tracefs = find_tracefs().ok_or(ExitError::NoTracefs)?;
    let tp = Tracepoints::load(&tracefs)?;
    let tids: Vec<u32> = g.vcpus.iter().filter_map(|v| v.tid).collect();
    ExitTracer::new(&tids, &tp)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FORMAT: &str = "name: kvm_exit\nID: 103\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
\tfield:unsigned int exit_reason;\toffset:8;\tsize:4;\tsigned:0;\n\
\tfield:unsigned long guest_rip;\toffset:16;\tsize:8;\tsigned:0;\n\
\tfield:u32 isa;\toffset:24;\tsize:4;\tsigned:0;\n\n\
print fmt: \"vcpu %u reason %s%s%s\", REC->vcpu_id, (REC->isa == 1) ? \
__print_symbolic(REC->exit_reason & 0xffff, { 0, \"EXCEPTION_NMI\" }, { 12, \"HLT\" }, \
{ 30, \"IO_INSTRUCTION\" }) : __print_symbolic(REC->exit_reason, { 0x000, \"read_cr0\" }, \
{ 0x040 + 14, \"PF excp\" }, { 0x078, \"hlt\" }, { 0x07b, \"io\" }, { -1, \"invalid_guest_state\" }), \
(REC->isa == 1 && REC->exit_reason & ~0xffff) ? \" \" : \"\", (REC->isa == 1) ? \
__print_flags(REC->exit_reason & ~0xffff, \" \", { 0x80000000, \"FAILED_VMENTRY\" }) : \"\"\n";

    #[test]
    fn format_gives_offsets_and_both_tables() {
        let f = ExitFormat::parse(FORMAT).unwrap();
        assert_eq!(f.exit_reason, Field { offset: 8, size: 4 });
        assert_eq!(
            f.isa,
            Field {
                offset: 24,
                size: 4
            }
        );
        assert_eq!(f.vmx.len(), 3);
        assert_eq!(f.name(1, 30), "IO_INSTRUCTION");
        // VMX flags in the high bits do not hide the basic reason.
        assert_eq!(f.name(1, 0x8000_000c), "HLT");
        assert_eq!(f.name(2, 0x7b), "io");
        assert_eq!(f.name(2, 0x4e), "PF excp");
        assert_eq!(f.name(2, 0x999), "0x999");
        // The FAILED_VMENTRY flag table is not taken for SVM's.
        assert_eq!(f.svm.len(), 4);
    }

    #[test]
    fn garbage_formats_are_errors_not_panics() {
        for t in [
            "",
            "format:\n\tfield:u32 isa;\toffset:24;\tsize:4;\n",
            "\tfield:unsigned int exit_reason;\toffset:8;\tsize:4;\n\tfield:u32 isa;\toffset:x;\tsize:4;\n",
            &FORMAT.replace("isa == 1", "isa == 3"),
            &FORMAT.replace("__print_symbolic", "__print_sym"),
        ] {
            assert!(ExitFormat::parse(t).is_err(), "{t:?}");
        }
        // Unbalanced braces end the table, without a panic.
        let cut = &FORMAT[..FORMAT.find("{ 30").unwrap() + 3];
        let _ = ExitFormat::parse(cut);
    }

    fn sample(id: u64, time: u64, raw: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        let size = 8 + 8 + 8 + 4 + raw.len();
        b.extend_from_slice(&sys::PERF_RECORD_SAMPLE.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&(size as u16).to_ne_bytes());
        b.extend_from_slice(&id.to_ne_bytes());
        b.extend_from_slice(&time.to_ne_bytes());
        b.extend_from_slice(&(raw.len() as u32).to_ne_bytes());
        b.extend_from_slice(raw);
        b
    }

    #[test]
    fn records_parse_and_short_ones_do_not() {
        let mut raw = vec![0u8; 28];
        raw[8..12].copy_from_slice(&0x7bu32.to_ne_bytes());
        raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
        let rec = sample(5, 1000, &raw);
        match parse(&rec) {
            Some(Rec::Sample { id, time, raw: r }) => {
                assert_eq!((id, time), (5, 1000));
                let f = ExitFormat::parse(FORMAT).unwrap();
                assert_eq!(f.exit_reason.read(r), Some(0x7b));
                assert_eq!(f.isa.read(r), Some(2));
            }
            _ => panic!("not a sample"),
        }
        for n in 0..rec.len() {
            let mut short = rec[..n].to_vec();
            if short.len() >= 8 {
                short[6..8].copy_from_slice(&(n as u16).to_ne_bytes());
            }
            assert!(!matches!(parse(&short), Some(Rec::Sample { .. })), "{n}");
        }
        // A raw size past the record's end.
        let mut lie = rec.clone();
        lie[24..28].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(parse(&lie).is_none());
    }

    fn raw(reason: u32) -> Vec<u8> {
        let mut raw = vec![0u8; 28];
        raw[8..12].copy_from_slice(&reason.to_ne_bytes());
        raw[24..28].copy_from_slice(&2u32.to_ne_bytes());
        raw
    }

    fn lost(n: u64) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&sys::PERF_RECORD_LOST.to_ne_bytes());
        b.extend_from_slice(&0u16.to_ne_bytes());
        b.extend_from_slice(&24u16.to_ne_bytes());
        b.extend_from_slice(&7u64.to_ne_bytes());
        b.extend_from_slice(&n.to_ne_bytes());
        b
    }

    #[test]
    fn exits_pair_with_the_next_entry_of_their_thread() {
        let mut t = Tally::new(ExitFormat::parse(FORMAT).unwrap());
        let ids = (1, 2);
        let mut pending = None;
        for rec in [
            sample(1, 100, &raw(0x7b)),
            sample(2, 130, &[]),
            sample(1, 200, &raw(0x78)),
            sample(2, 1200, &[]),
            sample(1, 1300, &raw(0x7b)),
            sample(2, 1310, &[]),
            // An entry without an exit (tracing began in the guest).
            sample(2, 1400, &[]),
            // An exit, then lost records: its entry is not paired.
            sample(1, 1500, &raw(0x7b)),
            lost(3),
            sample(2, 9000, &[]),
            // A record of another event, and garbage.
            sample(9, 9100, &raw(0x78)),
            vec![1, 2, 3],
            sample(1, 9200, &[0; 4]),
        ] {
            t.feed(&rec, ids, &mut pending);
        }
        assert_eq!(
            t.counts["io"],
            ReasonCount {
                exits: 3,
                timed: 2,
                handled_ns: 40
            }
        );
        assert_eq!(
            t.counts["hlt"],
            ReasonCount {
                exits: 1,
                timed: 1,
                handled_ns: 1000
            }
        );
        assert_eq!((t.lost, t.bad, t.isa), (3, 2, Some(2)));
    }

    #[test]
    fn vendor_note_names_the_kvm_that_runs_without_kvm_exit() {
        let d = std::env::temp_dir().join(format!("kvmreg-vendor-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("kvm_pvm")).unwrap();
        std::fs::create_dir_all(d.join("kvm")).unwrap();
        let n = vendor_note_in(&d).unwrap();
        assert!(n.contains("(KVM here: kvm_pvm)"), "{n}");
        std::fs::create_dir_all(d.join("kvm_amd")).unwrap();
        assert_eq!(vendor_note_in(&d), None);
        let _ = std::fs::remove_dir_all(&d);
    }
}
