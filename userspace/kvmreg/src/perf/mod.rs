//! Sampling guests with `perf_event_open`: one `cpu-clock` event per vCPU
//! thread, `PERF_SAMPLE_IP | PERF_SAMPLE_TID`, each with its own mmap ring.
//!
//! Samples taken while a vCPU ran guest code carry
//! `PERF_RECORD_MISC_GUEST_KERNEL/USER` and the guest IP. Which guest and
//! vCPU they belong to comes from the registry's `PERF_SAMPLE_GUEST_ID`
//! when the kernel has it (probed: older kernels say `EINVAL`), otherwise
//! from the thread: we only open events on known vCPU threads.

pub mod exits;
pub mod profile;
pub mod record;
pub mod ring;

use crate::Guest;
use perf_event_open_sys::bindings as sys;
use record::{Record, Sample, BASE_SAMPLE_TYPE, PERF_SAMPLE_GUEST_ID};
use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// Why a [`Sampler`] could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PerfError {
    /// `perf_event_open` on a vCPU thread was refused (`EACCES`, `EPERM`).
    #[error(
        "perf_event_open on thread {tid} was refused ({err}): sampling another process' vCPU threads in guest mode needs CAP_PERFMON (or root), or else kernel.perf_event_paranoid <= 1 (it is {paranoid}) and ptrace rights over the VMM (same user)"
    )]
    Permission {
        /// The thread.
        tid: u32,
        /// The error of `perf_event_open`.
        err: io::Error,
        /// `kernel.perf_event_paranoid` as read, for the message.
        paranoid: String,
    },
    /// The thread (this tid) exited before its event was opened (`ESRCH`).
    #[error("thread {0} is gone")]
    Gone(u32),
    /// The guests have no vCPU thread known to sample.
    #[error("no vCPU threads known for these guests: nothing to sample (vCPU threads come from the VM registry, debugfs or qemu's thread names)")]
    NoThreads,
    /// Every guest's details are hidden from the caller, so no vCPU thread
    /// is known.
    #[error("the VMMs' threads are hidden from this user (no ptrace rights over them): sampling needs their user or root")]
    Hidden,
    /// `perf_event_open` failed with `EMFILE` or `ENFILE`.
    #[error(
        "out of file descriptors after opening {opened} of {wanted} perf events (one per vCPU thread): raise the open-files limit (`ulimit -n`, now {limit}) or watch fewer guests (-g)"
    )]
    OutOfFds {
        /// Events opened before the failure.
        opened: usize,
        /// Events needed: one per vCPU thread.
        wanted: usize,
        /// The open-files limit as read, for the message.
        limit: String,
    },
    /// Mapping a thread's ring buffer was refused (`EPERM`, `ENOMEM`),
    /// typically past the per-user locked-memory budget.
    #[error(
        "mapping the perf ring of thread {tid} was refused ({err}) after {mapped} rings: rings beyond kernel.perf_event_mlock_kb (it is {mlock_kb} KiB) per user need CAP_IPC_LOCK; raise that sysctl, run as root or watch fewer guests (-g)"
    )]
    RingMemory {
        /// The thread.
        tid: u32,
        /// Rings mapped before the failure.
        mapped: usize,
        /// The error of the `mmap`.
        err: io::Error,
        /// `kernel.perf_event_mlock_kb` as read, for the message.
        mlock_kb: String,
    },
    /// Any other error opening, mapping or enabling a thread's event.
    #[error("perf_event_open on thread {tid}: {err}")]
    Io {
        /// The thread.
        tid: u32,
        /// The error.
        err: io::Error,
    },
}

fn sysctl(name: &str) -> String {
    std::fs::read_to_string(format!("/proc/sys/kernel/{name}"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The soft limit on open files, for error messages.
fn nofile_limit() -> String {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the valid, exclusively
    // borrowed `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return "unknown".into();
    }
    if lim.rlim_cur == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        lim.rlim_cur.to_string()
    }
}

fn paranoid() -> String {
    sysctl("perf_event_paranoid")
}

/// Open a disabled `cpu-clock` sampling event on thread `tid` (0: self).
pub fn open_event(tid: u32, sample_type: u64, period_ns: u64) -> io::Result<OwnedFd> {
    // SAFETY: perf_event_attr is plain data; all-zero is a valid start.
    let mut attr: sys::perf_event_attr = unsafe { std::mem::zeroed() };
    attr.type_ = sys::PERF_TYPE_SOFTWARE;
    attr.size = std::mem::size_of::<sys::perf_event_attr>() as u32;
    attr.config = sys::PERF_COUNT_SW_CPU_CLOCK as u64;
    attr.__bindgen_anon_1.sample_period = period_ns;
    attr.sample_type = sample_type;
    attr.set_disabled(1);
    open_on_thread(&mut attr, tid)
}

/// `perf_event_open` of `attr` on thread `tid` (0: self), any CPU, close
/// on exec.
fn open_on_thread(attr: &mut sys::perf_event_attr, tid: u32) -> io::Result<OwnedFd> {
    let pid = libc::pid_t::try_from(tid).map_err(|_| io::Error::from_raw_os_error(libc::ESRCH))?;
    // SAFETY: attr is initialised and outlives the call; the flags ask for
    // a close-on-exec fd.
    let fd = unsafe {
        perf_event_open_sys::perf_event_open(attr, pid, -1, -1, sys::PERF_FLAG_FD_CLOEXEC as _)
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Does this kernel know `PERF_SAMPLE_GUEST_ID`? Probed on the caller's
/// own thread, which needs no privilege for a user-space-capable event.
pub fn probe_guest_id() -> bool {
    open_event(0, BASE_SAMPLE_TYPE | PERF_SAMPLE_GUEST_ID, 1_000_000).is_ok()
}

/// How samples are tied to guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Attribution {
    /// The kernel's `PERF_SAMPLE_GUEST_ID` tag.
    GuestId,
    /// The sampled thread is a known vCPU thread.
    VcpuThread,
}

impl Attribution {
    /// The name tools print: `guest-id`, `vcpu-thread`.
    pub fn as_str(self) -> &'static str {
        match self {
            Attribution::GuestId => "guest-id",
            Attribution::VcpuThread => "vcpu-thread",
        }
    }
}

struct Event {
    tid: u32,
    _fd: OwnedFd,
    ring: ring::Ring,
}

/// Sampling of a set of guests' vCPU threads.
pub struct Sampler {
    events: Vec<Event>,
    /// The `PERF_SAMPLE_*` bits the events were opened with, which
    /// [`record::parse`] needs to read their samples (read-only: a change
    /// would misread every record).
    sample_type: u64,
    attribution: Attribution,
    lost: u64,
    bad_records: u64,
}

/// Sampling parameters.
#[derive(Debug, Clone, Copy)]
pub struct SamplerConfig {
    /// `cpu-clock` period in ns (1_000_000 = 1 kHz per thread).
    pub period_ns: u64,
    /// Ring size per thread, in pages (a power of two).
    pub data_pages: usize,
}

impl Default for SamplerConfig {
    fn default() -> Self {
        SamplerConfig {
            period_ns: 1_000_000,
            data_pages: 16,
        }
    }
}

impl Sampler {
    /// Open events on every known vCPU thread of `guests`.
    pub fn new(guests: &[Guest], cfg: SamplerConfig) -> Result<Sampler, PerfError> {
        let tids: Vec<u32> = guests
            .iter()
            .flat_map(|g| g.vcpus.iter().filter_map(|v| v.tid))
            .collect();
        if tids.is_empty() {
            if !guests.is_empty() && guests.iter().all(|g| g.details_hidden) {
                return Err(PerfError::Hidden);
            }
            return Err(PerfError::NoThreads);
        }
        let (sample_type, attribution) = if probe_guest_id() {
            (
                BASE_SAMPLE_TYPE | PERF_SAMPLE_GUEST_ID,
                Attribution::GuestId,
            )
        } else {
            (BASE_SAMPLE_TYPE, Attribution::VcpuThread)
        };
        let wanted = tids.len();
        let mut events = Vec::new();
        for tid in tids {
            let fd = open_event(tid, sample_type, cfg.period_ns).map_err(|err| {
                match err.raw_os_error() {
                    Some(libc::EACCES) | Some(libc::EPERM) => PerfError::Permission {
                        tid,
                        err,
                        paranoid: paranoid(),
                    },
                    Some(libc::ESRCH) => PerfError::Gone(tid),
                    Some(libc::EMFILE) | Some(libc::ENFILE) => PerfError::OutOfFds {
                        opened: events.len(),
                        wanted,
                        limit: nofile_limit(),
                    },
                    _ => PerfError::Io { tid, err },
                }
            })?;
            let ring =
                ring::Ring::new(&fd, cfg.data_pages).map_err(|err| match err.raw_os_error() {
                    Some(libc::EPERM) | Some(libc::ENOMEM) => PerfError::RingMemory {
                        tid,
                        mapped: events.len(),
                        err,
                        mlock_kb: sysctl("perf_event_mlock_kb"),
                    },
                    _ => PerfError::Io { tid, err },
                })?;
            events.push(Event { tid, _fd: fd, ring });
        }
        for e in &events {
            // SAFETY: PERF_EVENT_IOC_ENABLE on a perf fd we own; its
            // argument (0: this event only) is an integer, no memory.
            let r = unsafe { perf_event_open_sys::ioctls::ENABLE(e._fd.as_raw_fd(), 0) };
            if r < 0 {
                return Err(PerfError::Io {
                    tid: e.tid,
                    err: io::Error::last_os_error(),
                });
            }
        }
        Ok(Sampler {
            events,
            sample_type,
            attribution,
            lost: 0,
            bad_records: 0,
        })
    }

    /// The `PERF_SAMPLE_*` bits the events were opened with.
    pub fn sample_type(&self) -> u64 {
        self.sample_type
    }

    /// How [`Attributor`] can tie these samples to guests: by the kernel's
    /// tag where [`probe_guest_id`] found it, else by thread.
    pub fn attribution(&self) -> Attribution {
        self.attribution
    }

    /// Samples the kernel dropped (ring full), from `PERF_RECORD_LOST`, so
    /// far.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Records that did not parse, so far.
    pub fn bad_records(&self) -> u64 {
        self.bad_records
    }

    /// The threads being sampled.
    pub fn threads(&self) -> Vec<u32> {
        self.events.iter().map(|e| e.tid).collect()
    }

    /// Read all pending samples.
    pub fn poll(&mut self, mut f: impl FnMut(Sample)) {
        let st = self.sample_type;
        let (mut lost, mut bad) = (0, 0);
        for e in &mut self.events {
            e.ring.drain(|rec| match record::parse(rec, st) {
                Ok(Record::Sample(s)) => f(s),
                Ok(Record::Lost(n)) => lost += n,
                Ok(Record::Other(_)) => {}
                Err(_) => bad += 1,
            });
        }
        self.lost += lost;
        self.bad_records += bad;
    }
}

/// Where a sample belongs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Owner {
    /// Index into the guest list.
    pub guest: usize,
    /// vCPU index within the guest, when known.
    pub vcpu: Option<u32>,
}

/// Ties samples to guests, by the kernel's tag or by vCPU thread.
pub struct Attributor {
    by_tid: HashMap<u32, (usize, u32)>,
    by_id: HashMap<u64, usize>,
}

impl Attributor {
    /// Index `guests` by registry id and by vCPU thread; [`Owner::guest`]
    /// indexes this slice.
    pub fn new(guests: &[Guest]) -> Self {
        let mut by_tid = HashMap::new();
        let mut by_id = HashMap::new();
        for (i, g) in guests.iter().enumerate() {
            if let Some(id) = g.id {
                by_id.insert(id, i);
            }
            for v in &g.vcpus {
                if let Some(t) = v.tid {
                    by_tid.insert(t, (i, v.index));
                }
            }
        }
        Attributor { by_tid, by_id }
    }

    /// The guest of a sample; `None` for host-mode samples and strangers.
    pub fn owner(&self, s: &Sample) -> Option<Owner> {
        if !s.mode.is_guest() {
            return None;
        }
        if let Some(tag) = s.guest {
            if tag.vm_id != 0 {
                let guest = *self.by_id.get(&tag.vm_id)?;
                return Some(Owner {
                    guest,
                    vcpu: Some(tag.vcpu_idx),
                });
            }
        }
        let (guest, vcpu) = *self.by_tid.get(&s.tid)?;
        Some(Owner {
            guest,
            vcpu: Some(vcpu),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::record::{CpuMode, GuestTag};
    use super::*;
    use crate::Vcpu;

    fn guest(id: Option<u64>, tids: &[u32]) -> Guest {
        let mut g = Guest::new(1);
        g.id = id;
        for (i, t) in tids.iter().enumerate() {
            g.vcpus.push(Vcpu {
                index: i as u32,
                vcpu_id: Some(i as u32),
                tid: Some(*t),
                tid_source: None,
                fd: None,
            });
        }
        g
    }

    fn s(mode: CpuMode, tid: u32, guest: Option<GuestTag>) -> Sample {
        Sample {
            mode,
            ip: 0x1100,
            pid: 1,
            tid,
            guest,
        }
    }

    #[test]
    fn attribution_by_tag_then_thread() {
        let gs = [guest(Some(3), &[10, 11]), guest(Some(4), &[20])];
        let a = Attributor::new(&gs);
        assert_eq!(
            a.owner(&s(CpuMode::GuestKernel, 11, None)),
            Some(Owner {
                guest: 0,
                vcpu: Some(1)
            })
        );
        assert_eq!(a.owner(&s(CpuMode::HostKernel, 11, None)), None);
        assert_eq!(a.owner(&s(CpuMode::GuestUser, 99, None)), None);
        // The kernel's tag wins over the thread.
        let tag = GuestTag {
            vm_id: 4,
            vcpu_idx: 0,
        };
        assert_eq!(
            a.owner(&s(CpuMode::GuestKernel, 11, Some(tag))),
            Some(Owner {
                guest: 1,
                vcpu: Some(0)
            })
        );
    }

    #[test]
    fn no_threads_is_a_clear_error() {
        let e = Sampler::new(&[guest(None, &[])], SamplerConfig::default())
            .err()
            .unwrap();
        assert!(e.to_string().contains("no vCPU threads known"));
    }
}
