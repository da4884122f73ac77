//! One refresh: read every guest's facts, CPU times and KVM counters, and
//! turn two readings into the rates that every view shows.
//!
//! Everything comes from the kernel (`/proc`, debugfs); nothing here talks
//! to a VMM, so a stopped or hung VMM cannot stall a refresh.

use crate::cli::Extra;
use crate::host::{self, HostSplit, HostTimes};
use kvmreg::backend::stats_fd::StatsFdError;
use kvmreg::cpu::{self, CpuRates, CpuSnapshot};
use kvmreg::discover::BackendState;
use kvmreg::kept::KeptFile;
use kvmreg::model::GuestKey;
use kvmreg::procfs::{Read, Skip};
use kvmreg::track::{Picked, Tracker};
use kvmreg::{Config, Guest, Source};
use rustc_hash::FxHashMap;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

/// The KVM counters a frame shows (exits/s, the halt-poll ratio): a
/// refresh reads only these, not every stat of every guest.
pub const FRAME_COUNTERS: [&str; 3] = ["exits", "halt_successful_poll", "halt_attempted_poll"];
/// Indices into [`FRAME_COUNTERS`] (and a [`FrameCounters`]' values).
pub const EXITS: usize = 0;
const HALT_POLL_OK: usize = 1;
const HALT_POLL_TRIED: usize = 2;

/// A guest's [`FRAME_COUNTERS`].
pub type FrameCounters = Picked<{ FRAME_COUNTERS.len() }>;

/// One reading of everything.
pub struct Reading {
    pub at: Instant,
    /// Shared with the tracker and the previous reading while unchanged.
    pub guests: Vec<Arc<Guest>>,
    pub backends: Vec<(Source, BackendState)>,
    pub cpu: FxHashMap<u32, CpuSnapshot>,
    pub counters: FxHashMap<GuestKey, Result<FrameCounters, String>>,
    pub host: Option<HostTimes>,
    /// Each vCPU thread's CPU times and run delay, by tid: read only when
    /// a column needs them ([`Reader::threads`]).
    pub threads: FxHashMap<u32, ThreadFacts>,
    /// Each VMM's storage I/O, by pid: read only for the disk columns
    /// ([`Reader::storage`]).
    pub storage: FxHashMap<u32, kvmreg::storage::StorageBytes>,
    /// Each VMM's network devices and counters, by pid: read only for the
    /// net columns ([`Reader::network`]).
    pub network: FxHashMap<u32, Vec<kvmreg::track::NetDevCounters>>,
}

/// What a frame reads of one vCPU thread for the STEAL and OTHER columns.
#[derive(Debug, Clone, Default)]
pub struct ThreadFacts {
    pub times: Option<cpu::ThreadTimes>,
    pub sched: Option<cpu::SchedStat>,
}

/// What reads the frames: the guest set kept between frames, and the
/// host's `/proc/stat`, kept open.
pub struct Reader {
    pub tracker: Tracker,
    host_stat: Option<KeptFile>,
    /// Read each vCPU thread's `stat` and `schedstat` too (two kept files
    /// a vCPU): what STEAL and OTHER need, off unless they are shown.
    pub threads: bool,
    /// Read each VMM's `io` too (one kept file a guest): the disk columns.
    pub storage: bool,
    /// Read each VMM's network devices' counters too (six kept files a
    /// device): the net columns.
    pub network: bool,
}

impl Reader {
    /// Discover the guests and start following them.
    pub fn new(cfg: &Config) -> Reader {
        Reader {
            host_stat: KeptFile::open(&cfg.proc_root.join("stat"), 4096).ok(),
            tracker: Tracker::new(cfg.clone()),
            threads: false,
            storage: false,
            network: false,
        }
    }

    /// Read what the optional columns `extra` need too, from the next
    /// reading on (a rate shows from the one after).
    pub fn columns(&mut self, extra: Extra) {
        self.threads = extra.threads();
        self.storage = extra.disk;
        self.network = extra.net;
    }

    /// Read everything once (see [`read`]).
    pub fn read(&mut self) -> Reading {
        let mut r = read(&mut self.tracker);
        if self.threads {
            r.threads = read_threads(&mut self.tracker, &r.guests, &r.cpu);
        }
        if self.storage || self.network {
            // Once a process, whatever the number of its VMs.
            for of_pid in r.guests.chunk_by(|a, b| a.pid == b.pid) {
                let pid = of_pid[0].pid;
                if self.storage {
                    if let Ok(b) = self.tracker.storage(pid) {
                        r.storage.insert(pid, b);
                    }
                }
                if self.network {
                    if let Ok(n) = self.tracker.network(pid) {
                        r.network.insert(pid, n);
                    }
                }
            }
        }
        r.host = self
            .host_stat
            .as_mut()
            .and_then(|f| f.read().ok())
            .and_then(|b| std::str::from_utf8(b).ok())
            .and_then(host::parse_stat);
        r
    }
}

/// Read everything once: bring the tracker's guest set up to date, then
/// each guest's counters and its process' (or, where a process runs
/// several VMs, its vCPU threads') CPU times, from kept-open files. A guest
/// found gone while reading is left out of the reading. The host times are
/// left to the caller ([`Reader::read`]).
pub fn read(t: &mut Tracker) -> Reading {
    t.refresh();
    let mut counters = FxHashMap::default();
    counters.reserve(t.guests().len());
    let mut i = 0;
    while i < t.guests().len() {
        let g = &t.guests()[i];
        let k = g.key();
        let c = if g.details_hidden {
            Err("hidden: no ptrace rights over the VMM".to_string())
        } else {
            match t.picked(i, &FRAME_COUNTERS) {
                // Gone: the tracker dropped it; the same index is the next.
                Err(StatsFdError::Gone(_)) if t.guests().get(i).map(Guest::key) != Some(k) => {
                    continue
                }
                r => r.map_err(|e| e.to_string()),
            }
        };
        counters.insert(k, c);
        i += 1;
    }
    let guests = t.shared();
    let mut gone = Vec::new();
    let mut cpu = FxHashMap::default();
    cpu.reserve(guests.len());
    for of_pid in guests.chunk_by(|a, b| a.pid == b.pid) {
        let pid = of_pid[0].pid;
        // One VM: the process' own times (one file). Several: each VM's
        // vCPU threads, which the rows sum separately. (The tracker keeps
        // the guests sorted by pid: a pid's VMs are one run.)
        let tids: Option<Vec<u32>> = (of_pid.len() > 1).then(|| {
            of_pid
                .iter()
                .flat_map(|g| g.vcpus.iter().filter_map(|v| v.tid))
                .collect()
        });
        match t.cpu(pid, tids.as_deref()) {
            Read::Ok(s) => {
                cpu.insert(pid, s);
            }
            // The process is gone (the tracker dropped its guests): so are
            // they, in this reading too, even if its VMs' teardown (and
            // their destroy events) comes later.
            Read::Skip(Skip::Gone) => gone.push(pid),
            _ => {}
        }
    }
    let mut guests = guests;
    if !gone.is_empty() {
        guests.retain(|g| !gone.contains(&g.pid));
    }
    Reading {
        at: Instant::now(),
        guests,
        backends: t.backends().to_vec(),
        cpu,
        counters,
        host: None,
        threads: FxHashMap::default(),
        storage: FxHashMap::default(),
        network: FxHashMap::default(),
    }
}

/// The `stat` and `schedstat` of every known vCPU thread of `guests`. A
/// thread whose `stat` this reading already has (in `cpu`: the vCPU
/// threads of a process with several VMs) is not read again.
pub fn read_threads(
    t: &mut Tracker,
    guests: &[Arc<Guest>],
    cpu: &FxHashMap<u32, CpuSnapshot>,
) -> FxHashMap<u32, ThreadFacts> {
    let mut m = FxHashMap::default();
    for g in guests {
        for tid in g.vcpus.iter().filter_map(|v| v.tid) {
            let read = cpu.get(&g.pid).and_then(|s| s.threads.get(&tid)).cloned();
            m.insert(
                tid,
                ThreadFacts {
                    times: read.or_else(|| t.thread_times(g.pid, tid).ok()),
                    sched: t.sched(g.pid, tid).ok(),
                },
            );
        }
    }
    m
}

/// One guest's line in a frame.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// The name as `/proc/kvm` shows it to this user: `<name>@<uid>` for
    /// another user's guest.
    pub name: Option<String>,
    /// False for an unverified qemu `-name` hint.
    pub name_verified: bool,
    pub id: Option<u64>,
    pub pid: u32,
    /// `null` when unknown: hidden, or not countable on this kernel.
    pub vcpus: Option<usize>,
    /// CPU in percent of one host CPU (can pass 100 with several vCPUs),
    /// `None` when the threads could not be read.
    pub cpu_pct: Option<f64>,
    pub guest_pct: Option<f64>,
    pub host_system_pct: Option<f64>,
    pub host_user_pct: Option<f64>,
    /// Which threads the CPU columns sum: `process` or `vcpu-threads`
    /// (when one process runs several VMs).
    pub cpu_scope: &'static str,
    /// Steal: the share of the interval the vCPU threads were runnable
    /// but waiting for a host CPU, averaged over the vCPUs (percent; a
    /// guest sees this as steal time). `null` unless vCPU threads are read
    /// (the STEAL column, `--columns steal`) and known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub steal_pct: Option<f64>,
    /// The same per vCPU, in vCPU order (`null` for a vCPU whose thread is
    /// unknown).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub vcpu_steal_pct: Vec<Option<f64>>,
    /// CPU of the VMM's threads that are not vCPUs (I/O threads, the main
    /// loop, in-process vhost workers), percent of one host CPU: the
    /// process' CPU less its vCPU threads'. `null` unless vCPU threads are
    /// read (`--columns other`), every vCPU's thread is known, and the
    /// process runs this VM alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub other_pct: Option<f64>,
    /// The VMM's storage reads and writes in bytes per second (its
    /// `/proc/<pid>/io` `read_bytes`, `write_bytes`: disk traffic, not
    /// page-cache hits). `null` unless read (`--columns disk`) and the
    /// process runs this VM alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_read_bps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_write_bps: Option<f64>,
    /// Network traffic of the tap and macvtap devices the VMM holds, from
    /// the guest's side: bytes a second it received and sent (the devices'
    /// transmit and receive counters). `null` unless read (`--columns
    /// net`), the process runs this VM alone and holds such a device.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net_rx_bps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub net_tx_bps: Option<f64>,
    /// The same per device, with packets and drops a second.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub net_devices: Vec<NetRate>,
    pub exits_per_s: Option<f64>,
    /// Successful / attempted halt polls over the interval.
    pub halt_poll_ratio: Option<f64>,
    /// Guest memory where the kernel gives it (the registry), else the
    /// VMM's resident memory: `memory_source` says which.
    pub memory_bytes: Option<u64>,
    /// `guest` (the VM's memory slots) or `vmm-rss` (the owner process'
    /// resident set), `null` when neither is known.
    pub memory_source: Option<&'static str>,
    /// The owner's state letter from `/proc` (`R` running, `S` sleeping,
    /// `D` waiting on I/O, `T` stopped, `Z` zombie; with several VMs in one
    /// process, its vCPU threads': `R` if any runs). A stopped VMM is `T`,
    /// not an idle guest.
    pub state: Option<char>,
    /// The owner process' command name (`comm`); `null` when the row sums
    /// vCPU threads (a process with several VMs).
    pub command: Option<String>,
    /// Where the KVM counters came from (`null` when unreadable).
    pub stats_source: Option<Source>,
    /// Where `exits` came from: on a registry kernel its `vcpu_stats`
    /// (`proc-kvm`), else debugfs (or `null` and a note).
    pub exits_source: Option<Source>,
    /// Where the halt-poll counters came from.
    pub halt_poll_source: Option<Source>,
    /// Notes of the counter reading (e.g. why vCPU stats are missing).
    pub stats_notes: Vec<String>,
    /// Why the KVM counters could not be read.
    pub stats_error: Option<String>,
    #[serde(skip)]
    pub guest: Arc<Guest>,
}

impl Row {
    /// The label the views show: the name (a hint marked `?`), else
    /// `pidN`, or `pidN:FD` for a VM without an id whose fd is known.
    pub fn label(&self) -> String {
        let mut s = String::new();
        self.label_into(&mut s);
        s
    }

    /// [`label`](Self::label), appended to `out`.
    pub fn label_into(&self, out: &mut String) {
        use std::fmt::Write;
        match &self.name {
            Some(n) => {
                out.push_str(n);
                if !self.name_verified {
                    out.push('?');
                }
            }
            // Without an id, the VM fd tells a process' VMs apart (and
            // `-g PID:FD` picks one).
            None => {
                let _ = match (self.id, self.guest.vm_fd) {
                    (None, Some(fd)) => write!(out, "pid{}:{fd}", self.pid),
                    _ => write!(out, "pid{}", self.pid),
                };
            }
        }
    }
}

/// Rates of one counter set over an interval, by counter name.
pub fn counter_rates(
    a: &BTreeMap<String, u64>,
    b: &BTreeMap<String, u64>,
    secs: f64,
) -> BTreeMap<String, f64> {
    if secs <= 0.0 {
        return BTreeMap::new();
    }
    b.iter()
        .filter_map(|(k, vb)| {
            let va = a.get(k)?;
            Some((k.clone(), vb.saturating_sub(*va) as f64 / secs))
        })
        .collect()
}

/// The rate of counter `i` of a frame's counters over an interval.
pub fn counter_rate(a: &FrameCounters, b: &FrameCounters, i: usize, secs: f64) -> Option<f64> {
    (secs > 0.0).then_some(())?;
    Some(b.value(i)?.saturating_sub(a.value(i)?) as f64 / secs)
}

/// `halt_successful_poll / halt_attempted_poll` over the interval.
pub fn halt_poll_ratio(a: &FrameCounters, b: &FrameCounters) -> Option<f64> {
    let d = |i: usize| Some(b.value(i)?.saturating_sub(a.value(i)?));
    let ok = d(HALT_POLL_OK)?;
    let tried = d(HALT_POLL_TRIED)?;
    (tried > 0).then(|| ok as f64 / tried as f64)
}

fn pct(r: &CpuRates) -> (f64, f64, f64, f64) {
    (
        100.0 * r.total(),
        100.0 * r.guest,
        100.0 * r.host_system,
        100.0 * r.host_user,
    )
}

/// One guest's row between two readings. A guest missing from `prev`
/// (new) or whose process vanished gets no CPU figures. `shared`: its
/// process runs other VMs too.
pub fn row(prev: &Reading, cur: &Reading, g: &Arc<Guest>, shared: bool) -> Row {
    let secs = cur.at.saturating_duration_since(prev.at).as_secs_f64();
    // The vCPU threads matter only when the process is shared.
    let tids: Vec<u32> = if shared {
        g.vcpus.iter().filter_map(|v| v.tid).collect()
    } else {
        Vec::new()
    };
    let rates = match (prev.cpu.get(&g.pid), cur.cpu.get(&g.pid)) {
        (Some(a), Some(b)) if !(shared && tids.is_empty()) => Some(cpu::rates_between(
            a,
            b,
            shared.then_some(tids.as_slice()),
            secs,
            cpu::clock_ticks_per_second(),
        )),
        _ => None,
    };
    let p = rates.as_ref().map(pct);
    // The owner's own stat line, or with several VMs its vCPU threads'.
    let lines: Vec<&cpu::ThreadTimes> = match cur.cpu.get(&g.pid) {
        Some(s) if shared => tids.iter().filter_map(|t| s.threads.get(t)).collect(),
        Some(s) => s.threads.get(&g.pid).into_iter().collect(),
        None => Vec::new(),
    };
    let state = if lines.iter().any(|t| t.state == 'R') {
        Some('R')
    } else {
        lines.first().map(|t| t.state)
    };
    let rss = lines
        .first()
        .map(|t| t.rss_pages.saturating_mul(cpu::page_size()));
    let (memory_bytes, memory_source) = match (g.memory_bytes, rss) {
        (Some(m), _) => (Some(m), Some("guest")),
        (None, Some(r)) => (Some(r), Some("vmm-rss")),
        (None, None) => (None, None),
    };
    let (steal_pct, vcpu_steal_pct, other_pct) = thread_figures(prev, cur, g, shared, secs);
    let disk = match (prev.storage.get(&g.pid), cur.storage.get(&g.pid)) {
        (Some(a), Some(b)) if !shared && secs > 0.0 => Some((
            b.read.saturating_sub(a.read) as f64 / secs,
            b.written.saturating_sub(a.written) as f64 / secs,
        )),
        _ => None,
    };
    let net_devices = if shared || secs <= 0.0 {
        Vec::new()
    } else {
        net_rates(prev.network.get(&g.pid), cur.network.get(&g.pid), secs)
    };
    let net_sum = |f: fn(&NetRate) -> Option<f64>| -> Option<f64> {
        net_devices.iter().map(f).try_fold(0.0, |a, v| Some(a + v?))
    };
    let (net_rx_bps, net_tx_bps) = if net_devices.is_empty() {
        (None, None)
    } else {
        (net_sum(|d| d.rx_bps), net_sum(|d| d.tx_bps))
    };
    let k = g.key();
    let counters = cur.counters.get(&k);
    let pair = match (prev.counters.get(&k), counters) {
        (Some(Ok(a)), Some(Ok(b))) => Some((a, b)),
        _ => None,
    };
    Row {
        name: g.qualified_name(crate::guests::viewer()),
        name_verified: g.name.as_ref().is_some_and(|n| n.is_trusted()),
        id: g.id,
        pid: g.pid,
        vcpus: g.vcpu_count(),
        cpu_pct: p.map(|p| p.0),
        guest_pct: p.map(|p| p.1),
        host_system_pct: p.map(|p| p.2),
        host_user_pct: p.map(|p| p.3),
        cpu_scope: if shared { "vcpu-threads" } else { "process" },
        steal_pct,
        vcpu_steal_pct,
        other_pct,
        disk_read_bps: disk.map(|d| d.0),
        disk_write_bps: disk.map(|d| d.1),
        net_rx_bps,
        net_tx_bps,
        net_devices,
        exits_per_s: pair.and_then(|(a, b)| counter_rate(a, b, EXITS, secs)),
        halt_poll_ratio: pair.and_then(|(a, b)| halt_poll_ratio(a, b)),
        memory_bytes,
        memory_source,
        state,
        command: if shared {
            None
        } else {
            lines.first().map(|t| t.comm.clone())
        },
        stats_source: match counters {
            Some(Ok(c)) => Some(c.source),
            _ => None,
        },
        exits_source: counter_source(counters, EXITS),
        halt_poll_source: counter_source(counters, HALT_POLL_TRIED),
        stats_notes: match counters {
            Some(Ok(c)) => c.notes.clone(),
            _ => Vec::new(),
        },
        stats_error: match counters {
            Some(Ok(_)) => None,
            Some(Err(e)) => Some(e.clone()),
            None => Some("not read".into()),
        },
        guest: Arc::clone(g),
    }
}

/// STEAL (the guest's, and each vCPU's) and OTHER between two readings
/// that read the vCPU threads ([`Reader::threads`]); nothing when they
/// did not.
/// One network device's traffic over an interval, from the guest's side.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct NetRate {
    pub device: String,
    /// `tap` or `macvtap`.
    pub kind: kvmreg::network::NetKind,
    /// Bytes and packets a second the guest received and sent, and packets
    /// dropped a second on the way in and out; `null` when the counters
    /// could not be read (then `error` says why).
    pub rx_bps: Option<f64>,
    pub tx_bps: Option<f64>,
    pub rx_pps: Option<f64>,
    pub tx_pps: Option<f64>,
    pub dropped_ps: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The rates of each device in `cur`, against the same device in `prev`.
fn net_rates(
    prev: Option<&Vec<kvmreg::track::NetDevCounters>>,
    cur: Option<&Vec<kvmreg::track::NetDevCounters>>,
    secs: f64,
) -> Vec<NetRate> {
    let Some(cur) = cur else {
        return Vec::new();
    };
    cur.iter()
        .map(|d| {
            let before = prev
                .and_then(|p| p.iter().find(|e| e.device == d.device))
                .and_then(|e| e.counters.as_ref().ok());
            let pair = match (before, &d.counters) {
                (Some(a), Ok(b)) => Some((a.guest_view(), b.guest_view())),
                _ => None,
            };
            let rate = |f: fn(&kvmreg::network::NetCounters) -> u64| {
                pair.map(|(a, b)| f(&b).saturating_sub(f(&a)) as f64 / secs)
            };
            NetRate {
                device: d.device.name.clone(),
                kind: d.device.kind,
                rx_bps: rate(|c| c.rx_bytes),
                tx_bps: rate(|c| c.tx_bytes),
                rx_pps: rate(|c| c.rx_packets),
                tx_pps: rate(|c| c.tx_packets),
                dropped_ps: rate(|c| c.rx_dropped.wrapping_add(c.tx_dropped)),
                error: d.counters.as_ref().err().cloned(),
            }
        })
        .collect()
}

fn thread_figures(
    prev: &Reading,
    cur: &Reading,
    g: &Guest,
    shared: bool,
    secs: f64,
) -> (Option<f64>, Vec<Option<f64>>, Option<f64>) {
    if cur.threads.is_empty() || prev.threads.is_empty() || secs <= 0.0 {
        return (None, Vec::new(), None);
    }
    let both = |tid: Option<u32>| Some((prev.threads.get(&tid?)?, cur.threads.get(&tid?)?));
    let per_vcpu: Vec<Option<f64>> = g
        .vcpus
        .iter()
        .map(|v| {
            let (a, b) = both(v.tid)?;
            let (a, b) = (a.sched?, b.sched?);
            let waited = b.wait_ns.saturating_sub(a.wait_ns) as f64 / 1e9;
            Some((100.0 * waited / secs).min(100.0))
        })
        .collect();
    let known: Vec<f64> = per_vcpu.iter().flatten().copied().collect();
    let steal = (!known.is_empty()).then(|| known.iter().sum::<f64>() / known.len() as f64);
    // OTHER: the process' CPU less every vCPU thread's, in ticks.
    let other = (|| {
        if shared || g.vcpus.is_empty() {
            return None;
        }
        let busy = |t: &cpu::ThreadTimes| t.utime.saturating_add(t.stime);
        let proc_a = prev.cpu.get(&g.pid)?.threads.get(&g.pid)?;
        let proc_b = cur.cpu.get(&g.pid)?.threads.get(&g.pid)?;
        let mut vcpus = 0u64;
        for v in &g.vcpus {
            let (a, b) = both(v.tid)?;
            vcpus += busy(b.times.as_ref()?).saturating_sub(busy(a.times.as_ref()?));
        }
        let all = busy(proc_b).saturating_sub(busy(proc_a));
        let hz = cpu::clock_ticks_per_second();
        Some(100.0 * all.saturating_sub(vcpus) as f64 / hz / secs)
    })();
    (steal, per_vcpu, other)
}

fn counter_source(c: Option<&Result<FrameCounters, String>>, i: usize) -> Option<Source> {
    match c {
        Some(Ok(c)) => c.source_of(i),
        _ => None,
    }
}

/// Guest-mode sampling figures for the header.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum SamplingSummary {
    /// Sampling runs: guest-mode samples split by guest mode.
    Sampling {
        guest_kernel_pct: Option<f64>,
        guest_user_pct: Option<f64>,
        guest_samples_per_s: f64,
        /// All samples of the vCPU threads (guest and host mode).
        samples_per_s: f64,
    },
    /// Not sampling, and why (one line).
    Off { reason: String },
}

/// One frame: the header and the rows.
#[derive(Debug, Clone, Serialize)]
pub struct Frame {
    /// Seconds since the Unix epoch.
    pub time: f64,
    pub interval_s: f64,
    pub guests_total: usize,
    pub host: Option<HostSplit>,
    pub sampling: SamplingSummary,
    /// Which backend gave the guest list (`proc-kvm`, `fd-scan`).
    pub backend: String,
    pub guests: Vec<Row>,
}

/// The backend that listed the guests.
pub fn backend_used(backends: &[(Source, BackendState)]) -> String {
    let used: Vec<String> = backends
        .iter()
        .filter(|(_, s)| *s == BackendState::Used)
        .map(|(b, _)| b.to_string())
        .collect();
    if used.is_empty() {
        "none".into()
    } else {
        used.join("+")
    }
}

/// How many of `guests` each process owns: a process with several VMs
/// has their CPU split by vCPU threads.
pub fn vms_per_pid(guests: &[Arc<Guest>]) -> FxHashMap<u32, usize> {
    let mut n = FxHashMap::default();
    n.reserve(guests.len());
    for g in guests {
        *n.entry(g.pid).or_default() += 1;
    }
    n
}

/// Build a frame from two readings.
pub fn frame(prev: &Reading, cur: &Reading, sampling: SamplingSummary) -> Frame {
    // The guests come sorted by owner pid: a process' VMs are one run.
    let mut guests: Vec<Row> = Vec::with_capacity(cur.guests.len());
    for of_pid in cur.guests.chunk_by(|a, b| a.pid == b.pid) {
        let shared = of_pid.len() > 1;
        guests.extend(of_pid.iter().map(|g| row(prev, cur, g, shared)));
    }
    Frame {
        time: SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        interval_s: cur.at.saturating_duration_since(prev.at).as_secs_f64(),
        guests_total: guests.len(),
        host: match (&prev.host, &cur.host) {
            (Some(a), Some(b)) => Some(host::split(a, b)),
            _ => None,
        },
        sampling,
        backend: backend_used(&cur.backends),
        guests,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(kv: &[(&str, u64)]) -> BTreeMap<String, u64> {
        kv.iter().map(|(k, v)| (k.to_string(), *v)).collect()
    }

    fn fc(v: [Option<u64>; 3]) -> FrameCounters {
        FrameCounters {
            source: Source::ProcKvm,
            values: v.map(|v| v.map(|v| (v, Source::ProcKvm))),
            notes: Vec::new(),
        }
    }

    #[test]
    fn counter_rates_per_second() {
        let a = m(&[("exits", 100), ("gone", 1)]);
        let b = m(&[("exits", 300), ("new", 5)]);
        let r = counter_rates(&a, &b, 2.0);
        assert_eq!(r.get("exits"), Some(&100.0));
        assert_eq!(r.get("new"), None);
        assert!(counter_rates(&a, &b, 0.0).is_empty());
        let (a, b) = (fc([Some(100), None, None]), fc([Some(300), Some(5), None]));
        assert_eq!(counter_rate(&a, &b, EXITS, 2.0), Some(100.0));
        assert_eq!(counter_rate(&a, &b, EXITS, 0.0), None);
        assert_eq!(counter_rate(&a, &b, HALT_POLL_OK, 2.0), None);
        assert_eq!(counter_rate(&a, &b, HALT_POLL_TRIED, 2.0), None);
    }

    #[test]
    fn halt_poll_ratio_needs_attempts() {
        let a = fc([None, Some(10), Some(20)]);
        let b = fc([None, Some(13), Some(24)]);
        assert_eq!(halt_poll_ratio(&a, &b), Some(0.75));
        assert_eq!(halt_poll_ratio(&a, &a), None);
        assert_eq!(halt_poll_ratio(&fc([None; 3]), &b), None);
    }

    #[test]
    fn backend_names_join() {
        let b = vec![
            (Source::ProcKvm, BackendState::Unavailable("x".into())),
            (Source::FdScan, BackendState::Used),
            (Source::Debugfs, BackendState::Used),
        ];
        assert_eq!(backend_used(&b), "fd-scan+debugfs");
        assert_eq!(backend_used(&[]), "none");
    }
}
