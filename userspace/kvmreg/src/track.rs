//! A guest set kept between refreshes, at a cost that follows change rather
//! than the number of guests: what a tool that watches guests every second
//! (kvmtop) builds on.
//!
//! The set is learned once by a full [`discover_with`], then kept up to date
//! by KVM's uevents, with reconciles as the safety net for lost ones:
//!
//! - On a registry kernel an event (create, destroy, rename, each with
//!   `VM_ID=`) makes the next [`Tracker::refresh`] read `/proc/kvm/.list`
//!   once and merge it: new VMs get their vCPU threads from their `vcpus`
//!   file, renamed ones their new name, destroyed ones leave. A destroy
//!   event removes its VM at once. `.list` is also read every
//!   [`Policy::list_every`] whatever the events.
//! - On other kernels an event names the process (`PID=`): that process
//!   alone is scanned again (its fd table, debugfs for its vCPU threads).
//! - Every [`Policy::full_every`], and when the socket says events were lost
//!   (`ENOBUFS`), a full discovery replaces the set. It also finds what
//!   `.list` cannot show: VMs of processes in child pid namespaces.
//!
//! Between changes a refresh reads, per guest, its `vcpu_stats` (registry
//! kernels; kept open, one `pread`) and its process' `stat` (kept open, one
//! `pread`), and nothing else: no directory listing, no fd table, no name.
//! See [`crate::kept`] for which files are kept open and why the others are
//! not.

use crate::backend::{debugfs, fd_scan, proc_kvm, stats_fd::StatsFdError};
use crate::cpu::{CpuSnapshot, SchedStat, ThreadTimes};
use crate::discover::{self, discover_with, BackendState, Config, Counters};
use crate::kept::{IoFile, SchedStatFile, StatFile, VcpuStatsError, VcpuStatsFile};
use crate::model::GuestKey;
use crate::network::{NetCounters, NetDevice, NetFiles};
use crate::procfs::{classify, Read, Skip};
use crate::storage::StorageBytes;
use crate::watch::{KvmEvent, KvmEventKind, UeventSocket};
use crate::{Guest, GuestName, Source};
use rustc_hash::FxHashMap;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How often the tracker checks what the events should have told it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Read `/proc/kvm/.list` (registry kernels) at least this often.
    pub list_every: Duration,
    /// Run a full discovery at least this often.
    pub full_every: Duration,
}

impl Policy {
    /// With uevents: `.list` every 5 s, a full discovery every 60 s.
    pub const WITH_EVENTS: Policy = Policy {
        list_every: Duration::from_secs(5),
        full_every: Duration::from_secs(60),
    };
    /// Without uevents (no netlink in this namespace): `.list` at every
    /// refresh (one read for all guests), a full discovery every 5 s.
    pub const WITHOUT_EVENTS: Policy = Policy {
        list_every: Duration::ZERO,
        full_every: Duration::from_secs(5),
    };
}

/// What the tracker did, for tools that show their own cost and for tests.
///
/// Each field counts since the tracker was made.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Activity {
    /// KVM uevents taken into account.
    pub events: u64,
    /// Times the uevent socket said events were lost (`ENOBUFS`).
    pub overruns: u64,
    /// Reads of `/proc/kvm/.list` (registry kernels).
    pub list_reads: u64,
    /// Full discoveries run, the one at the start included.
    pub full_discoveries: u64,
    /// Single processes scanned again after an event (kernels without the
    /// registry).
    pub pid_rescans: u64,
}

/// Counters of one guest picked by name ([`Tracker::picked`]), in the
/// order asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Picked<const N: usize> {
    /// Where the bulk came from, as [`Counters::source`].
    pub source: Source,
    /// Each asked counter's value and where it came from; `None` when it
    /// could not be read (the notes may say why).
    pub values: [Option<(u64, Source)>; N],
    /// What could not be read, in plain words.
    pub notes: Vec<String>,
}

impl<const N: usize> Picked<N> {
    /// The counters `names` of `c`.
    pub fn from_counters(c: &Counters, names: &[&str; N]) -> Picked<N> {
        Picked {
            source: c.source,
            values: names.map(|n| {
                let v = c.values.get(n)?;
                Some((*v, c.sources.get(n).copied().unwrap_or(c.source)))
            }),
            notes: c.notes.clone(),
        }
    }

    /// The value of counter `i` (in the order asked), if read.
    pub fn value(&self, i: usize) -> Option<u64> {
        self.values.get(i).copied().flatten().map(|(v, _)| v)
    }

    /// Where counter `i` came from, if read.
    pub fn source_of(&self, i: usize) -> Option<Source> {
        self.values.get(i).copied().flatten().map(|(_, s)| s)
    }
}

/// The state of one guest's kept-open `vcpu_stats`.
#[derive(Debug)]
enum VcpuStats {
    Unopened,
    Open(VcpuStatsFile),
    /// A registry kernel without the file: counters come from elsewhere.
    Absent,
}

/// A guest set kept between refreshes. See the module documentation.
pub struct Tracker {
    cfg: Config,
    policy: Policy,
    socket: Option<UeventSocket>,
    socket_error: Option<String>,
    registry: bool,
    guests: Vec<Guest>,
    /// The last [`Tracker::shared`] snapshot: a guest unchanged since keeps
    /// its `Arc`, so a frame of unchanged guests copies no guest.
    shared: Vec<Arc<Guest>>,
    backends: Vec<(Source, BackendState)>,
    notes: Vec<String>,
    /// Ids in the last `.list`: a guest that was there and is not any more
    /// is gone; one never there (a child pid namespace's) is left to the
    /// full discovery.
    listed: HashSet<u64>,
    vcpu_stats: FxHashMap<u64, VcpuStats>,
    /// Kept-open `stat` files by (pid, tid); tid 0 is the whole process.
    stat_files: FxHashMap<(u32, u32), (StatFile, u64)>,
    /// Kept-open `schedstat` files of vCPU threads, by (pid, tid).
    sched_files: FxHashMap<(u32, u32), (SchedStatFile, u64)>,
    /// Kept-open `io` files of VMMs, by (pid, 0).
    io_files: FxHashMap<(u32, u32), (IoFile, u64)>,
    /// Refresh count, to close the `stat` files of guests no longer read.
    generation: u64,
    /// Files kept open now (`stat` and `vcpu_stats`), and how many may be:
    /// the fd limit less a reserve for everything else. Beyond it a file is
    /// opened, read and closed each time instead, so that a host with more
    /// guests than the limit allows is watched more slowly, not partly.
    kept: usize,
    kept_budget: usize,
    /// Guests whose stats fd KVM refused because this process did not
    /// create the VM (`EIO`): a fact of the VM for its life, so the
    /// `pidfd_getfd` and ioctl are not tried again each refresh (about ten
    /// system calls a guest on a stock kernel without debugfs).
    stats_foreign: HashSet<GuestKey>,
    /// Whether `<debugfs>/kvm` existed at the last full discovery: without
    /// it no counter file is tried (three failing opens a guest each
    /// refresh) until the next one looks again.
    debugfs_kvm: bool,
    /// The network devices of each VMM asked about, with their kept-open
    /// counters: found once from its fd table, again after each full
    /// discovery (a NIC hot-plugged in between shows from then on).
    net: FxHashMap<u32, NetState>,
    /// debugfs counters the kernel refused (`EPERM`: lockdown refuses every
    /// cumulative stat, and lockdown is never lifted): not asked again.
    debugfs_refused: BTreeSet<String>,
    last_list: Instant,
    /// `.list` as last merged: the same text again changes nothing, so the
    /// periodic reconcile of an unchanged set costs a read and a compare.
    list_text: String,
    last_full: Instant,
    list_due: bool,
    full_due: bool,
    pids_due: BTreeSet<u32>,
    /// Guests whose vCPU threads are to be read again (their vCPU count
    /// changed).
    vcpus_due: BTreeSet<u64>,
    activity: Activity,
}

impl Tracker {
    /// Discover the guests and start following them, with the host's
    /// uevents when this process may listen to them.
    pub fn new(cfg: Config) -> Tracker {
        if cfg.proc_root.path() != std::path::Path::new("/proc") {
            // The host's uevents describe the host's /proc, not this tree.
            return Self::without_events(cfg, Policy::WITHOUT_EVENTS);
        }
        match UeventSocket::open() {
            Ok(s) => Self::start(cfg, Policy::WITH_EVENTS, Some(s), None),
            Err(e) => Self::start(
                cfg,
                Policy::WITHOUT_EVENTS,
                None,
                Some(format!(
                    "no uevents ({e}): the guest list is reconciled at every refresh"
                )),
            ),
        }
    }

    /// A tracker fed only by [`Tracker::apply`] and its reconciles: for
    /// tests, and for callers that read uevents themselves.
    pub fn without_events(cfg: Config, policy: Policy) -> Tracker {
        let list = if policy.list_every.is_zero() {
            "at every refresh".to_string()
        } else {
            format!("every {:?}", policy.list_every)
        };
        let why = format!(
            "no uevents for {}: /proc/kvm/.list is read {list} (registry kernels), every process looked at every {:?} (others)",
            cfg.proc_root.path().display(),
            policy.full_every
        );
        Self::start(cfg, policy, None, Some(why))
    }

    fn start(
        cfg: Config,
        policy: Policy,
        socket: Option<UeventSocket>,
        socket_error: Option<String>,
    ) -> Tracker {
        let now = Instant::now();
        let mut t = Tracker {
            registry: cfg.use_registry && proc_kvm::available(&cfg.proc_root),
            cfg,
            policy,
            socket,
            socket_error,
            guests: Vec::new(),
            shared: Vec::new(),
            backends: Vec::new(),
            notes: Vec::new(),
            listed: HashSet::new(),
            vcpu_stats: FxHashMap::default(),
            stat_files: FxHashMap::default(),
            sched_files: FxHashMap::default(),
            io_files: FxHashMap::default(),
            stats_foreign: HashSet::new(),
            debugfs_kvm: true,
            net: FxHashMap::default(),
            generation: 0,
            kept: 0,
            kept_budget: kept_budget(),
            debugfs_refused: BTreeSet::new(),
            last_list: now,
            list_text: String::new(),
            last_full: now,
            list_due: false,
            full_due: false,
            pids_due: BTreeSet::new(),
            vcpus_due: BTreeSet::new(),
            activity: Activity::default(),
        };
        t.full();
        t
    }

    /// The guests as shared, immutable snapshots, for readings that outlive
    /// the next refresh: an `Arc` per guest, reused while the guest does not
    /// change (compared field by field, which allocates nothing).
    pub fn shared(&mut self) -> Vec<Arc<Guest>> {
        let mut old = std::mem::take(&mut self.shared).into_iter().peekable();
        let mut out = Vec::with_capacity(self.guests.len());
        for g in &self.guests {
            // Both are sorted by key: skip the old entries before this one.
            while old.next_if(|o| o.key() < g.key()).is_some() {}
            match old.next_if(|o| **o == *g) {
                Some(same) => out.push(same),
                None => out.push(Arc::new(g.clone())),
            }
        }
        self.shared.clone_from(&out);
        out
    }

    /// The guests, sorted by owner pid, id and VM fd.
    pub fn guests(&self) -> &[Guest] {
        &self.guests
    }

    /// Which backend gave the guests, as the last full discovery found.
    pub fn backends(&self) -> &[(Source, BackendState)] {
        &self.backends
    }

    /// Notes of the last full discovery (skipped processes and the like).
    pub fn notes(&self) -> &[String] {
        &self.notes
    }

    /// Why there are no uevents, when there are none.
    pub fn socket_error(&self) -> Option<&str> {
        self.socket_error.as_deref()
    }

    /// Where the tracker looks.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// True on a kernel with the VM registry (and the registry in use).
    pub fn registry(&self) -> bool {
        self.registry
    }

    /// What the tracker has done so far.
    pub fn activity(&self) -> Activity {
        self.activity
    }

    /// Bring the set up to date: take the events that arrived, and
    /// reconcile where one is due. Cheap when nothing changed: one
    /// `recv` on the uevent socket.
    pub fn refresh(&mut self) {
        self.generation += 1;
        self.kept = self.stat_files.len()
            + self.sched_files.len()
            + self.io_files.len()
            + self.net.values().map(NetState::files).sum::<usize>()
            + self
                .vcpu_stats
                .values()
                .filter(|v| matches!(v, VcpuStats::Open(_)))
                .count();
        let drained = match &self.socket {
            Some(s) => s.wait(Duration::ZERO),
            None => Ok(Some(Vec::new())),
        };
        match drained {
            Ok(Some(events)) => self.apply(&events),
            Ok(None) => {
                self.activity.overruns += 1;
                self.full_due = true;
            }
            Err(e) => {
                self.socket_error = Some(format!(
                    "uevent socket failed ({e}): the guest list is reconciled at every refresh"
                ));
                self.socket = None;
                self.policy = Policy::WITHOUT_EVENTS;
            }
        }
        if self.full_due || self.last_full.elapsed() >= self.policy.full_every {
            self.full();
            return;
        }
        if self.registry {
            if self.list_due || self.last_list.elapsed() >= self.policy.list_every {
                self.merge_list();
            }
            let due: Vec<u64> = std::mem::take(&mut self.vcpus_due).into_iter().collect();
            for id in due {
                self.reread_vcpus(id);
            }
        } else {
            let due: Vec<u32> = std::mem::take(&mut self.pids_due).into_iter().collect();
            for pid in due {
                self.rescan_pid(pid);
            }
        }
        self.close_unused_stat_files();
    }

    /// Take KVM events into account (the next [`refresh`](Self::refresh)
    /// reads what they point at).
    pub fn apply(&mut self, events: &[KvmEvent]) {
        for e in events {
            self.activity.events += 1;
            match (self.registry, &e.kind, e.vm_id, e.pid) {
                (true, KvmEventKind::Destroy, Some(id), _) => self.forget_vm(id),
                (true, _, Some(_), _) => self.list_due = true,
                (false, _, _, Some(pid)) => {
                    self.pids_due.insert(pid);
                }
                // An event without the ids this kernel should give.
                _ => self.full_due = true,
            }
        }
    }

    fn full(&mut self) {
        let d = discover_with(&self.cfg);
        self.activity.full_discoveries += 1;
        self.guests = d.guests;
        self.backends = d.backends;
        self.notes = d.notes;
        self.last_full = Instant::now();
        self.full_due = false;
        self.pids_due.clear();
        self.vcpus_due.clear();
        if self.registry {
            // Which of them `.list` shows, so that a later `.list` without
            // one of them means it is gone.
            self.list_text.clear();
            self.merge_list();
        }
        self.sort();
        let ids: HashSet<u64> = self.guests.iter().filter_map(|g| g.id).collect();
        self.vcpu_stats.retain(|id, _| ids.contains(id));
        let keys: HashSet<GuestKey> = self.guests.iter().map(Guest::key).collect();
        self.stats_foreign.retain(|k| keys.contains(k));
        self.debugfs_kvm = self.cfg.debugfs_root.join("kvm").is_dir();
        self.net.clear();
    }

    /// Read `/proc/kvm/.list` and merge it into the set.
    fn merge_list(&mut self) {
        self.last_list = Instant::now();
        self.list_due = false;
        let text = match self.cfg.proc_root.read_string("kvm/.list") {
            Read::Ok(text) => text,
            // A registry without `.list` (an earlier version of the series),
            // or an unreadable one: only the full discovery can tell.
            _ => {
                self.full_due = true;
                return;
            }
        };
        self.activity.list_reads += 1;
        if text == self.list_text {
            return;
        }
        let (entries, _) = proc_kvm::parse_list(&text);
        self.list_text = text;
        let by_id: HashMap<u64, &proc_kvm::ListEntry> = entries.iter().map(|e| (e.id, e)).collect();
        let mut gone = Vec::new();
        let mut moved = Vec::new();
        for g in &mut self.guests {
            let Some(id) = g.id else { continue };
            match by_id.get(&id) {
                Some(e) => {
                    if e.pid != g.pid {
                        // Adopted by another process (its owner exited):
                        // its files are found under the new owner.
                        g.pid = e.pid;
                        g.vm_fd = None;
                        moved.push(id);
                    }
                    g.name = Some(GuestName::Kernel(e.name().to_string()));
                    g.uid = Some(e.uid);
                    g.memory_bytes = Some(e.memory_kib.saturating_mul(1024));
                    if e.vcpus as usize != g.vcpus.len() {
                        self.vcpus_due.insert(id);
                    }
                }
                None if self.listed.contains(&id) => gone.push(id),
                None => {}
            }
        }
        for id in gone {
            self.forget_vm(id);
        }
        for id in moved {
            self.vcpu_stats.remove(&id);
        }
        let known: HashSet<u64> = self.guests.iter().filter_map(|g| g.id).collect();
        for e in entries.iter().filter(|e| !known.contains(&e.id)) {
            let mut g = e.guest();
            if let Read::Ok(t) = self
                .cfg
                .proc_root
                .read_string(format!("{}/kvm/{}/vcpus", e.pid, e.id))
            {
                g.vcpus = proc_kvm::parse_vcpus(&t);
            }
            self.guests.push(g);
        }
        self.listed = by_id.into_keys().collect();
        self.sort();
    }

    fn reread_vcpus(&mut self, id: u64) {
        let Some(g) = self.guests.iter_mut().find(|g| g.id == Some(id)) else {
            return;
        };
        match self
            .cfg
            .proc_root
            .read_string(format!("{}/kvm/{id}/vcpus", g.pid))
        {
            Read::Ok(t) => g.vcpus = proc_kvm::parse_vcpus(&t),
            Read::Skip(Skip::Gone) => self.forget_vm(id),
            _ => {}
        }
    }

    /// Scan one process again (kernels without the registry). `pid` is the
    /// event's, the creating thread's: its thread group is scanned.
    fn rescan_pid(&mut self, pid: u32) {
        self.activity.pid_rescans += 1;
        let proc = &self.cfg.proc_root;
        let tgid = match proc.read_string(format!("{pid}/status")) {
            Read::Ok(s) => crate::procfs::status_field(&s, "Tgid")
                .and_then(|v| v.parse().ok())
                .unwrap_or(pid),
            // Gone (a VMM reaped before its destroy event was read): its
            // guests leave now. Were `pid` a thread of a live process, no
            // guest has it as owner, and nothing changes.
            Read::Skip(Skip::Gone) => {
                self.forget_pid(pid);
                return;
            }
            // Not ours to look at: the next full discovery decides.
            _ => return,
        };
        let mut found = match fd_scan::scan_pid(proc, tgid) {
            Read::Ok(g) => g,
            Read::Skip(Skip::Gone) => Vec::new(),
            _ => {
                self.full_due = true;
                return;
            }
        };
        if let debugfs::Scan::Vms(vms) = debugfs::scan(&self.cfg.debugfs_root) {
            debugfs::enrich(&mut found, &vms);
        }
        discover::note_unknown_vcpu_threads(&mut found);
        discover::add_names(&self.cfg, &mut found);
        self.guests.retain(|g| g.pid != tgid);
        self.guests.extend(found);
        self.sort();
    }

    fn sort(&mut self) {
        self.guests.sort_by_key(Guest::key);
    }

    /// Drop a VM (destroyed).
    fn forget_vm(&mut self, id: u64) {
        self.guests.retain(|g| g.id != Some(id));
        self.vcpu_stats.remove(&id);
        self.listed.remove(&id);
    }

    /// Drop the guests of a process that is gone.
    fn forget_pid(&mut self, pid: u32) {
        let ids: Vec<u64> = self
            .guests
            .iter()
            .filter(|g| g.pid == pid)
            .filter_map(|g| g.id)
            .collect();
        for id in ids {
            self.forget_vm(id);
        }
        self.guests.retain(|g| g.pid != pid);
    }

    /// CPU times of process `pid` (all its threads, `tids` `None`) or of
    /// the threads `tids` alone, from kept-open `stat` files. A process that
    /// is gone leaves the set.
    pub fn cpu(&mut self, pid: u32, tids: Option<&[u32]>) -> Read<CpuSnapshot> {
        let mut threads = BTreeMap::new();
        match tids {
            None => match self.thread_times(pid, 0) {
                Ok(t) => {
                    threads.insert(pid, t);
                }
                Err(e) => return self.failed(pid, e),
            },
            Some(tids) => {
                for &tid in tids {
                    if let Ok(t) = self.thread_times(pid, tid) {
                        threads.insert(tid, t);
                    }
                }
            }
        }
        Read::Ok(CpuSnapshot {
            pid,
            at: Instant::now(),
            threads,
        })
    }

    fn failed<T>(&mut self, pid: u32, e: std::io::Error) -> Read<T> {
        match classify(&e) {
            Some(Skip::Gone) => {
                self.forget_pid(pid);
                Read::Skip(Skip::Gone)
            }
            Some(s) => Read::Skip(s),
            None => Read::Err(e),
        }
    }

    /// The CPU times of thread `tid` of `pid`, or of the whole process
    /// with `tid` 0 (its `stat`, kept open: one `pread`).
    pub fn thread_times(&mut self, pid: u32, tid: u32) -> std::io::Result<ThreadTimes> {
        let rel = || {
            if tid == 0 {
                format!("{pid}/stat")
            } else {
                format!("{pid}/task/{tid}/stat")
            }
        };
        kept_files!(self).read(
            &mut self.stat_files,
            (pid, tid),
            rel,
            StatFile::open,
            StatFile::times,
        )
    }

    /// The CPU time and run delay of thread `tid` of `pid`, from its
    /// `schedstat` kept open (one `pread`): a vCPU thread's run delay is
    /// the time its guest was runnable and got no host CPU. Read only for
    /// who asks (kvmtop's STEAL column): a file per vCPU more.
    pub fn sched(&mut self, pid: u32, tid: u32) -> std::io::Result<SchedStat> {
        let rel = || format!("{pid}/task/{tid}/schedstat");
        kept_files!(self).read(
            &mut self.sched_files,
            (pid, tid),
            rel,
            SchedStatFile::open,
            SchedStatFile::read,
        )
    }

    /// The storage I/O of process `pid` (its `io`, kept open: one `pread`).
    /// Read only for who asks (kvmtop's disk columns).
    pub fn storage(&mut self, pid: u32) -> std::io::Result<StorageBytes> {
        let rel = || format!("{pid}/io");
        kept_files!(self).read(
            &mut self.io_files,
            (pid, 0),
            rel,
            IoFile::open,
            IoFile::read,
        )
    }

    /// The network devices process `pid` holds and their counters (the
    /// host's view: [`NetCounters::guest_view`] turns them round). The
    /// devices are found from its fd table once (and after each full
    /// discovery); their statistics files are kept open within the
    /// budget: six `pread`s a device. Read only for who asks (kvmtop's
    /// network columns). A device whose counters cannot be read is there
    /// with the error.
    pub fn network(&mut self, pid: u32) -> std::io::Result<Vec<NetDevCounters>> {
        if !self.net.contains_key(&pid) {
            let devices = crate::network::devices(&self.cfg.proc_root, &self.cfg.sys_root, pid)?;
            let room = self.kept_budget.saturating_sub(self.kept);
            let mut state = NetState {
                used: self.generation,
                devices: Vec::new(),
            };
            for d in devices {
                let files = NetFiles::open(&self.cfg.sys_root, &d.name).map_err(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        format!("{} is not in this network namespace (or is gone)", d.name)
                    } else {
                        format!("{}: {e}", d.name)
                    }
                });
                state.devices.push((d, files));
            }
            if state.files() > room {
                // Over the budget: read once, keep nothing open.
                return Ok(state.read());
            }
            self.kept += state.files();
            self.net.insert(pid, state);
        }
        let Some(state) = self.net.get_mut(&pid) else {
            return Ok(Vec::new());
        };
        state.used = self.generation;
        Ok(state.read())
    }

    fn close_unused_stat_files(&mut self) {
        let keep_from = self.generation.saturating_sub(1);
        self.net.retain(|_, n| n.used >= keep_from);
        self.stat_files.retain(|_, (_, used)| *used >= keep_from);
        self.sched_files.retain(|_, (_, used)| *used >= keep_from);
        self.io_files.retain(|_, (_, used)| *used >= keep_from);
    }

    /// The counters of guest `index` (in [`guests`](Self::guests)) named in
    /// `names` (all if `None`). On a registry kernel the vCPU counters come
    /// from its kept-open `vcpu_stats`, in one `pread`, and the VM's
    /// `stats` is read only for a name `vcpu_stats` does not have; elsewhere
    /// as [`crate::guest_counters_of`] reads them. A VM found gone leaves
    /// the set (the error says so).
    pub fn counters(
        &mut self,
        index: usize,
        names: Option<&[&str]>,
    ) -> Result<Counters, StatsFdError> {
        let Some(g) = self.guests.get(index) else {
            return Err(StatsFdError::Unsupported("a guest at that index"));
        };
        let (pid, id, nvcpus, vm_fd, key) = (g.pid, g.id, g.vcpus.len(), g.vm_fd, g.key());
        let (Some(id), Some(Source::ProcKvm)) = (id, g.provenance.id) else {
            if let (Some(fd), Some(names)) = (vm_fd, names) {
                if let Some(c) = self.debugfs_counters(pid, fd, names) {
                    return Ok(c);
                }
            }
            if self.stats_foreign.contains(&key) {
                return Err(StatsFdError::ForeignProcess);
            }
            let r = discover::guest_counters_of(&self.cfg, &self.guests[index], names);
            if matches!(r, Err(StatsFdError::ForeignProcess)) {
                self.stats_foreign.insert(key);
            }
            return r;
        };
        let wanted = |n: &str| names.is_none_or(|ns| ns.contains(&n));
        let mut c = Counters {
            source: Source::ProcKvm,
            values: BTreeMap::new(),
            sources: BTreeMap::new(),
            notes: Vec::new(),
        };
        let read = self.read_vcpu_stats(pid, id, nvcpus, |f| {
            let s = f.read()?;
            for (n, v) in s.iter().filter(|(n, _)| wanted(n)) {
                c.values.insert(n.to_string(), v);
                c.sources.insert(n.to_string(), Source::ProcKvm);
            }
            Ok(s.vcpus)
        })?;
        match read {
            VcpuRead::Sums => {}
            VcpuRead::Failed(note) => c.notes.push(note),
            VcpuRead::Absent => {
                return discover::guest_counters_of(&self.cfg, &self.guests[index], names);
            }
        }
        let missing = names.is_none_or(|ns| ns.iter().any(|n| !c.values.contains_key(*n)));
        if missing {
            // VM-wide stats: read on demand, not kept open (a frame asks
            // only for vCPU counters).
            match discover::guest_stats(&self.cfg, &self.guests[index]) {
                Ok((source, s)) => {
                    for st in s.stats.iter().filter(|s| s.values.len() == 1) {
                        let n = st.desc.name.as_str();
                        if wanted(n) && !c.values.contains_key(n) {
                            c.values.insert(n.to_string(), st.values[0]);
                            c.sources.insert(n.to_string(), source);
                        }
                    }
                }
                Err(e) => c.notes.push(format!("VM stats: {e}")),
            }
        }
        Ok(c)
    }

    /// The counters `names` of guest `index`, in that order: what a frame
    /// needs each refresh, without a map per guest. On a registry kernel
    /// they come from the kept-open `vcpu_stats` (one `pread`, no
    /// allocation), and the VM's `stats` is read only for a name
    /// `vcpu_stats` does not have; elsewhere from [`counters`](Self::counters).
    pub fn picked<const N: usize>(
        &mut self,
        index: usize,
        names: &[&str; N],
    ) -> Result<Picked<N>, StatsFdError> {
        let Some(g) = self.guests.get(index) else {
            return Err(StatsFdError::Unsupported("a guest at that index"));
        };
        let (pid, nvcpus) = (g.pid, g.vcpus.len());
        let (Some(id), Some(Source::ProcKvm)) = (g.id, g.provenance.id) else {
            return self
                .counters(index, Some(names))
                .map(|c| Picked::from_counters(&c, names));
        };
        let mut values = [None; N];
        let mut notes = Vec::new();
        match self.read_vcpu_stats(pid, id, nvcpus, |f| f.read_picked(names, &mut values))? {
            VcpuRead::Sums => {}
            VcpuRead::Failed(note) => notes.push(note),
            VcpuRead::Absent => {
                return self
                    .counters(index, Some(names))
                    .map(|c| Picked::from_counters(&c, names));
            }
        }
        let mut picked = Picked {
            source: Source::ProcKvm,
            values: values.map(|v| v.map(|v| (v, Source::ProcKvm))),
            notes,
        };
        if picked.values.iter().any(Option::is_none) {
            // VM-wide stats: read on demand, not kept open.
            match discover::guest_stats(&self.cfg, &self.guests[index]) {
                Ok((source, s)) => {
                    for (slot, n) in picked.values.iter_mut().zip(names) {
                        if slot.is_none() {
                            *slot = s
                                .stats
                                .iter()
                                .find(|st| st.values.len() == 1 && st.desc.name == *n)
                                .map(|st| (st.values[0], source));
                        }
                    }
                }
                Err(e) => picked.notes.push(format!("VM stats: {e}")),
            }
        }
        Ok(picked)
    }

    /// Named counters of the VM `<pid>-<fd>` from debugfs, on kernels
    /// without the registry: one open and read of each file, without first
    /// checking the directory, none for a name the kernel refused before,
    /// and none at all while debugfs has no `kvm` directory (checked at
    /// each full discovery). Debugfs stat files are not kept open: an open
    /// one holds a reference to the VM (see [`crate::kept`]). `None` when
    /// the VM has no debugfs directory (not mounted, or not this VM).
    fn debugfs_counters(&mut self, pid: u32, fd: i32, names: &[&str]) -> Option<Counters> {
        if !self.debugfs_kvm {
            return None;
        }
        let dir = self.cfg.debugfs_root.join(format!("kvm/{pid}-{fd}"));
        let (refused, ask): (Vec<&str>, Vec<&str>) = names
            .iter()
            .partition(|n| self.debugfs_refused.contains(**n));
        let mut got = match debugfs::read_named(&dir, &ask) {
            Some(got) => got,
            None if refused.is_empty() => return None,
            None => debugfs::DirCounters::default(),
        };
        self.debugfs_refused.extend(got.refused.iter().cloned());
        got.refused.extend(refused.iter().map(|n| n.to_string()));
        got.refused.sort();
        Some(discover::from_debugfs(got))
    }

    /// Read a registry VM's kept-open `vcpu_stats` with `read`, opening it
    /// on first use (past the fd budget: for this read only). A VM found
    /// gone leaves the set (the error says so); one whose vCPU count
    /// changed (`nvcpus` known) has its `vcpus` file read again next
    /// refresh.
    fn read_vcpu_stats(
        &mut self,
        pid: u32,
        id: u64,
        nvcpus: usize,
        read: impl FnOnce(&mut VcpuStatsFile) -> Result<usize, VcpuStatsError>,
    ) -> Result<VcpuRead, StatsFdError> {
        let r = self.read_vcpu_file(pid, id, read);
        match r {
            Ok(vcpus) => {
                if vcpus != nvcpus && vcpus != 0 {
                    self.vcpus_due.insert(id);
                }
                Ok(VcpuRead::Sums)
            }
            Err(None) => {
                self.forget_vm(id);
                Err(StatsFdError::Gone(pid))
            }
            Err(Some(other)) => Ok(other),
        }
    }

    /// [`read_vcpu_stats`](Self::read_vcpu_stats)'s file handling: the
    /// number of vCPU blocks read, or `Err(None)` for a VM that is gone.
    fn read_vcpu_file(
        &mut self,
        pid: u32,
        id: u64,
        read: impl FnOnce(&mut VcpuStatsFile) -> Result<usize, VcpuStatsError>,
    ) -> Result<usize, Option<VcpuRead>> {
        let proc = &self.cfg.proc_root;
        let room = self.kept < self.kept_budget;
        let state = self.vcpu_stats.entry(id).or_insert(VcpuStats::Unopened);
        // Over the budget, a file read this time only.
        let mut once = None;
        if matches!(state, VcpuStats::Unopened) {
            match VcpuStatsFile::open(&proc.join(format!("{pid}/kvm/{id}/vcpu_stats"))) {
                Ok(f) if room => {
                    self.kept += 1;
                    *state = VcpuStats::Open(f);
                }
                Ok(f) => once = Some(f),
                // No file, or no VM: the VM's own directory tells which.
                Err(e) if classify(&e) == Some(Skip::Gone) => {
                    if !proc.join(format!("{pid}/kvm/{id}")).is_dir() {
                        return Err(None);
                    }
                    *state = VcpuStats::Absent;
                }
                Err(e) => {
                    return Err(Some(VcpuRead::Failed(format!(
                        "vcpu_stats of VM {id}: {e}"
                    ))))
                }
            }
        }
        let f = match (&mut once, state) {
            (Some(f), _) => f,
            (None, VcpuStats::Open(f)) => f,
            (None, _) => return Err(Some(VcpuRead::Absent)),
        };
        let failed = match read(f) {
            Ok(vcpus) => return Ok(vcpus),
            Err(VcpuStatsError::Io(e)) if classify(&e) == Some(Skip::Gone) => {
                return Err(None);
            }
            Err(e) => format!("{}: {e}", f.path().display()),
        };
        // Opened again next time: a malformed read is not cached.
        self.vcpu_stats.insert(id, VcpuStats::Unopened);
        Err(Some(VcpuRead::Failed(failed)))
    }
}

/// One network device of a VMM and its counters (host view) or why they
/// could not be read.
#[derive(Debug, Clone)]
pub struct NetDevCounters {
    /// The device.
    pub device: NetDevice,
    /// Its counters, or why they could not be opened or read.
    pub counters: Result<NetCounters, String>,
}

/// A VMM's network devices with their open counter files.
struct NetState {
    used: u64,
    devices: Vec<(NetDevice, Result<NetFiles, String>)>,
}

impl NetState {
    fn files(&self) -> usize {
        self.devices
            .iter()
            .map(|(_, f)| f.as_ref().map_or(0, NetFiles::open_files))
            .sum()
    }

    fn read(&mut self) -> Vec<NetDevCounters> {
        self.devices
            .iter_mut()
            .map(|(d, f)| NetDevCounters {
                device: d.clone(),
                counters: match f {
                    Ok(f) => f.read().map_err(|e| format!("{}: {e}", d.name)),
                    Err(e) => Err(e.clone()),
                },
            })
            .collect()
    }
}

/// The tracker's budget of kept-open files, lent to one read (a macro, not
/// a method, so that the map read is borrowed beside it).
macro_rules! kept_files {
    ($t:expr) => {
        KeptFiles {
            root: &$t.cfg.proc_root,
            generation: $t.generation,
            kept: &mut $t.kept,
            budget: $t.kept_budget,
        }
    };
}
use kept_files;

/// The tracker's budget of kept-open files, lent to one read.
struct KeptFiles<'a> {
    root: &'a crate::procfs::ProcRoot,
    generation: u64,
    kept: &'a mut usize,
    budget: usize,
}

impl KeptFiles<'_> {
    /// Read `key`'s file in `map` with `read`, opening it (at `rel()`
    /// under the proc root) the first time. Within the budget the file
    /// stays open, marked used in this generation; past it, it is read
    /// once and closed. A failed read closes it (a vanished thread's file
    /// fails for ever).
    fn read<F, T>(
        &mut self,
        map: &mut FxHashMap<(u32, u32), (F, u64)>,
        key: (u32, u32),
        rel: impl FnOnce() -> String,
        open: impl FnOnce(&std::path::Path) -> std::io::Result<F>,
        read: impl FnOnce(&mut F) -> std::io::Result<T>,
    ) -> std::io::Result<T> {
        let file = match map.entry(key) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let mut f = open(&self.root.join(rel()))?;
                if *self.kept >= self.budget {
                    // Over the budget: read now, keep nothing open.
                    return read(&mut f);
                }
                *self.kept += 1;
                v.insert((f, self.generation))
            }
        };
        file.1 = self.generation;
        let r = read(&mut file.0);
        if r.is_err() {
            map.remove(&key);
        }
        r
    }
}

/// How many files a tracker may keep open: the soft `RLIMIT_NOFILE` less a
/// quarter (at least 64) for everything else the process opens.
fn kept_budget() -> usize {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: lim is a valid out-pointer for getrlimit.
    let soft = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 {
        usize::try_from(lim.rlim_cur).unwrap_or(usize::MAX)
    } else {
        1024
    };
    soft.saturating_sub((soft / 4).max(64))
}

/// What [`Tracker::read_vcpu_stats`] found.
enum VcpuRead {
    /// Counters read.
    Sums,
    Failed(String),
    /// A registry kernel without the file: counters come from elsewhere.
    Absent,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procfs::ProcRoot;
    use crate::stats;
    use crate::testutil::TempDir;

    fn cfg(d: &TempDir) -> Config {
        Config {
            proc_root: ProcRoot::new(d.path()),
            debugfs_root: d.path().join("no-debugfs"),
            cmdline_hints: false,
            use_registry: true,
            libvirt_system_dir: d.path().join("no-libvirt"),
            user_run_dir: d.path().join("no-run-user"),
            sys_root: d.path().join("no-sys"),
        }
    }

    /// A registry VM in the fake tree, and its `.list` line.
    fn vm(d: &TempDir, pid: u32, id: u64, name: &str, exits: u64) -> String {
        let dir = format!("{pid}/kvm/{id}");
        d.write(&format!("{dir}/name"), format!("{name}\n"));
        d.write(
            &format!("{dir}/status"),
            format!("Name:\t{name}\nId:\t{id}\nPid:\t{pid}\nUid:\t0\nVcpus:\t1\n"),
        );
        d.write(&format!("{dir}/vcpus"), format!("0 0 {}\n", pid + 1));
        d.write(
            &format!("{dir}/vcpu_stats"),
            stats::encode("kvm-1/vcpus", 48, &[("exits", 0, &[exits])]),
        );
        d.write(
            &format!("{pid}/stat"),
            format!("{pid} (qemu) S 0 0 0 0 0 0 0 0 0 0 7 3 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 5 0 0 0 0 0 0 0 0 0\n"),
        );
        d.symlink(&format!("kvm/{name}"), &format!("../{pid}/kvm/{id}"));
        format!("{id} {pid} 0 1 4096 100 {name}\n")
    }

    fn names(t: &Tracker) -> Vec<(u64, String)> {
        t.guests()
            .iter()
            .map(|g| (g.id.unwrap_or(0), g.label_for(0)))
            .collect()
    }

    #[test]
    fn events_then_list_follow_create_rename_destroy() {
        let d = TempDir::new("track");
        let web = vm(&d, 100, 1, "web", 10);
        d.write("kvm/.list", &web);
        let policy = Policy {
            list_every: Duration::from_secs(3600),
            full_every: Duration::from_secs(3600),
        };
        let mut t = Tracker::without_events(cfg(&d), policy);
        assert_eq!(names(&t), vec![(1, "web".into())]);
        let full = t.activity().full_discoveries;

        // Created: the event makes the next refresh read .list.
        let db = vm(&d, 200, 2, "db", 5);
        d.write("kvm/.list", format!("{web}{db}"));
        t.refresh();
        assert_eq!(
            names(&t).len(),
            1,
            "no event, no reconcile due: not seen yet"
        );
        let ev = |kind, id| KvmEvent {
            kind,
            pid: Some(1),
            vm_id: Some(id),
        };
        t.apply(&[ev(KvmEventKind::Create, 2)]);
        t.refresh();
        assert_eq!(names(&t), vec![(1, "web".into()), (2, "db".into())]);
        assert_eq!(t.guests()[1].vcpus[0].tid, Some(201), "threads from vcpus");

        // Renamed.
        d.write("kvm/.list", format!("{web}2 200 0 1 4096 100 cache\n"));
        t.apply(&[ev(KvmEventKind::Rename, 2)]);
        t.refresh();
        assert_eq!(names(&t)[1], (2, "cache".into()));

        // Destroyed: gone at once, without a read.
        t.apply(&[ev(KvmEventKind::Destroy, 1)]);
        let lists = t.activity().list_reads;
        t.refresh();
        assert_eq!(names(&t), vec![(2, "cache".into())]);
        assert_eq!(t.activity().list_reads, lists);
        assert_eq!(t.activity().full_discoveries, full, "no full discovery");
    }

    #[test]
    fn a_lost_event_is_repaired_by_the_reconcile() {
        let d = TempDir::new("track-lost");
        let web = vm(&d, 100, 1, "web", 10);
        d.write("kvm/.list", &web);
        let policy = Policy {
            list_every: Duration::from_millis(50),
            full_every: Duration::from_secs(3600),
        };
        let mut t = Tracker::without_events(cfg(&d), policy);
        let db = vm(&d, 200, 2, "db", 5);
        d.write("kvm/.list", format!("{web}{db}"));
        t.refresh();
        assert_eq!(names(&t).len(), 1);
        std::thread::sleep(Duration::from_millis(60));
        t.refresh();
        assert_eq!(names(&t), vec![(1, "web".into()), (2, "db".into())]);
        // Destroyed without an event: gone from the next .list.
        d.write("kvm/.list", &db);
        std::thread::sleep(Duration::from_millis(60));
        t.refresh();
        assert_eq!(names(&t), vec![(2, "db".into())]);
    }

    #[test]
    fn counters_come_from_kept_vcpu_stats_and_a_gone_vm_leaves() {
        let d = TempDir::new("track-c");
        let web = vm(&d, 100, 1, "web", 10);
        d.write("kvm/.list", &web);
        let mut t = Tracker::without_events(cfg(&d), Policy::WITH_EVENTS);
        let c = t.counters(0, Some(&["exits"])).unwrap();
        assert_eq!(c.values.get("exits"), Some(&10));
        assert_eq!(c.sources.get("exits"), Some(&Source::ProcKvm));
        d.write(
            "100/kvm/1/vcpu_stats",
            stats::encode("kvm-1/vcpus", 48, &[("exits", 0, &[25])]),
        );
        let c = t.counters(0, Some(&["exits"])).unwrap();
        assert_eq!(c.values.get("exits"), Some(&25));
        // The VM goes: its vcpu_stats and directory are gone (a kept-open
        // file of a real /proc fails with ESRCH; here, one not yet open).
        let db = vm(&d, 200, 2, "db", 5);
        d.write("kvm/.list", format!("{web}{db}"));
        t.apply(&[KvmEvent {
            kind: KvmEventKind::Create,
            pid: None,
            vm_id: Some(2),
        }]);
        t.refresh();
        assert_eq!(t.guests().len(), 2);
        std::fs::remove_dir_all(d.path().join("200/kvm")).unwrap();
        assert!(matches!(t.counters(1, None), Err(StatsFdError::Gone(200))));
        assert_eq!(t.guests().len(), 1);
        // The process goes: its stat fails, its guests leave.
        let cpu = t.cpu(100, None).ok().unwrap();
        assert_eq!(cpu.threads[&100].guest_time, 5);
        std::fs::remove_dir_all(d.path().join("100")).unwrap();
        t.refresh();
        t.refresh();
        assert!(matches!(t.cpu(100, None), Read::Skip(Skip::Gone)));
        assert!(t.guests().is_empty());
    }

    #[test]
    fn picked_counters_come_in_the_order_asked() {
        let d = TempDir::new("track-pick");
        let web = vm(&d, 100, 1, "web", 10);
        d.write("kvm/.list", &web);
        d.write(
            "100/kvm/1/stats",
            stats::encode("kvm-1", 48, &[("remote_tlb_flush", 0, &[7])]),
        );
        let mut t = Tracker::without_events(cfg(&d), Policy::WITH_EVENTS);
        let names = ["missing", "exits", "remote_tlb_flush"];
        let p = t.picked(0, &names).unwrap();
        assert_eq!(
            p.values,
            [
                None,
                Some((10, Source::ProcKvm)),
                Some((7, Source::ProcKvm))
            ]
        );
        assert_eq!(
            (p.value(1), p.source_of(1)),
            (Some(10), Some(Source::ProcKvm))
        );
        // The same as the map of counters() says.
        let c = t.counters(0, Some(&names)).unwrap();
        assert_eq!(Picked::from_counters(&c, &names), p);
        d.write(
            "100/kvm/1/vcpu_stats",
            stats::encode("kvm-1/vcpus", 48, &[("exits", 0, &[25])]),
        );
        assert_eq!(t.picked(0, &["exits"]).unwrap().value(0), Some(25));
        // Gone (a file not yet open: a kept-open one of a real /proc fails
        // with ESRCH).
        let mut t = Tracker::without_events(cfg(&d), Policy::WITH_EVENTS);
        std::fs::remove_dir_all(d.path().join("100/kvm")).unwrap();
        assert!(matches!(
            t.picked(0, &["exits"]),
            Err(StatsFdError::Gone(100))
        ));
        assert!(t.guests().is_empty());
    }

    #[test]
    fn stock_kernel_events_rescan_one_process() {
        let d = TempDir::new("track-stock");
        d.symlink("10/fd/4", "anon_inode:kvm-vm");
        d.write("10/status", "Name:\tqemu\nTgid:\t10\nUid:\t0\t0\t0\t0\n");
        let mut t = Tracker::without_events(cfg(&d), Policy::WITH_EVENTS);
        assert!(!t.registry());
        assert_eq!(t.guests().len(), 1);
        d.symlink("20/fd/7", "anon_inode:kvm-vm");
        d.write(
            "21/status",
            "Name:\tCPU 0/KVM\nTgid:\t20\nUid:\t0\t0\t0\t0\n",
        );
        t.apply(&[KvmEvent {
            kind: KvmEventKind::Create,
            pid: Some(21),
            vm_id: None,
        }]);
        t.refresh();
        let pids: Vec<(u32, Option<i32>)> = t.guests().iter().map(|g| (g.pid, g.vm_fd)).collect();
        assert_eq!(pids, vec![(10, Some(4)), (20, Some(7))]);
        assert_eq!(t.activity().pid_rescans, 1);
        assert_eq!(t.activity().full_discoveries, 1);
        // VMM 20 is reaped before its destroy event is read: its guest
        // leaves at that refresh, without a full discovery.
        std::fs::remove_dir_all(d.path().join("20")).unwrap();
        std::fs::remove_dir_all(d.path().join("21")).unwrap();
        t.apply(&[KvmEvent {
            kind: KvmEventKind::Destroy,
            pid: Some(20),
            vm_id: None,
        }]);
        t.refresh();
        let pids: Vec<u32> = t.guests().iter().map(|g| g.pid).collect();
        assert_eq!(pids, vec![10]);
        assert_eq!(t.activity().full_discoveries, 1);
    }

    #[test]
    fn stock_kernel_counters_come_from_the_vms_debugfs_files() {
        let d = TempDir::new("track-debugfs");
        d.symlink("10/fd/4", "anon_inode:kvm-vm");
        d.write("10/status", "Name:\tqemu\nTgid:\t10\nUid:\t0\t0\t0\t0\n");
        d.write("debugfs/kvm/10-4/exits", "42\n");
        d.write("debugfs/kvm/10-4/halt_exits", "garbage\n");
        let mut c = cfg(&d);
        c.debugfs_root = d.path().join("debugfs");
        let mut t = Tracker::without_events(c, Policy::WITH_EVENTS);
        let got = t
            .counters(0, Some(&["exits", "halt_exits", "missing"]))
            .expect("counters");
        assert_eq!(got.source, Source::Debugfs);
        assert_eq!(got.values.get("exits"), Some(&42));
        assert_eq!(
            got.values.len(),
            1,
            "garbage and missing files give nothing"
        );
        d.write("debugfs/kvm/10-4/exits", "43\n");
        let got = t.counters(0, Some(&["exits"])).expect("counters");
        assert_eq!(got.values.get("exits"), Some(&43), "read again, not cached");
    }

    #[test]
    fn past_the_fd_budget_files_are_read_without_being_kept() {
        let d = TempDir::new("track-budget");
        let web = vm(&d, 100, 1, "web", 10);
        let db = vm(&d, 200, 2, "db", 20);
        d.write("kvm/.list", format!("{web}{db}"));
        let mut t = Tracker::without_events(cfg(&d), Policy::WITH_EVENTS);
        t.kept_budget = 1;
        for _ in 0..3 {
            t.refresh();
            let exits: Vec<u64> = (0..2)
                .map(|i| t.counters(i, Some(&["exits"])).unwrap().values["exits"])
                .collect();
            assert_eq!(exits, [10, 20]);
            for pid in [100, 200] {
                let cpu = t.cpu(pid, None).ok().unwrap();
                assert_eq!(cpu.threads[&pid].guest_time, 5);
            }
            assert_eq!(t.kept, 1, "one file kept, the others read and closed");
        }
    }
}
