//! The churn stress (TAP): VMs created, named, renamed and destroyed as
//! fast as a few VMMs can, VMMs SIGKILLed mid-operation, while everything
//! that reads the registry reads it, for `--seconds` (default 120).
//!
//! The registry's hard parts are its lifetimes: a VM is looked up through
//! `/proc` while its owner destroys it or dies, renamed while it is read,
//! tagged in a perf sample while it goes away. `proc_kvm_test` checks each
//! path once; this runs them all at once, for long enough that the debug
//! kernel (KASAN, lockdep) sees the races, and the harness fails the run on
//! any splat on the console. Concurrently:
//!
//! - VMM workers (this binary with the hidden `--vmm SEED`, see `vmm.rs`)
//!   create one or two VMs at a time with a memory slot and one or two
//!   vCPUs spinning in a real-mode loop, name them with `KVM_SET_VM_NAME`
//!   (now and then a name another worker may hold: `EEXIST` is counted,
//!   not an error), rename them through `/proc/self/kvm/<id>/name`, check
//!   the name file and the `/proc/kvm` link, and destroy them;
//! - the main thread SIGKILLs a random worker every 0.5-1 s and starts a
//!   replacement, so VMs also die with their owner, mid-operation;
//! - readers (`reader.rs`) walk `/proc/kvm` and `/proc/*/kvm/*`, read every
//!   file, `pread` the stats; only `ENOENT` and `ESRCH` may fail them;
//! - a uevent listener (`uevent.rs`) counts KVM's events and checks that
//!   each names its VM;
//! - system-wide `cpu-clock` sampling with `PERF_SAMPLE_GUEST_ID`
//!   (`perf.rs`) checks every sample record.
//!
//! At the end everything is stopped, the workers are killed and reaped, and
//! `/proc/kvm`, `/proc/*/kvm` and debugfs' `kvm/<pid>-<fd>` directories
//! must empty within 30 s (VMs that existed before the run are ignored).
//! Every wait is bounded. On a kernel without the registry (no `/proc/kvm`)
//! the registry's points are TAP skips and the rest still runs.

#[path = "churn_stress/perf.rs"]
mod perf;
#[path = "churn_stress/reader.rs"]
mod reader;
#[path = "churn_stress/uevent.rs"]
mod uevent;
#[path = "churn_stress/vmm.rs"]
mod vmm;

use clap::Parser;
use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// Churn stress for the KVM VM registry (a harness payload; prints TAP).
#[derive(Parser)]
struct Args {
    /// How long the churn runs, in seconds.
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// How many VMM worker processes run at once.
    #[arg(long, default_value_t = 6)]
    workers: usize,
    /// How many reader threads walk /proc.
    #[arg(long, default_value_t = 2)]
    readers: usize,
    /// Internal: run as a VMM worker with this seed.
    #[arg(long, hide = true)]
    vmm: Option<u64>,
}

const PLAN: usize = 8;
const FINAL_WAIT: Duration = Duration::from_secs(30);
// Hang detectors, not performance limits: on the debug kernel under TCG,
// with a dozen vCPU threads spinning on two emulated CPUs, a perf thread
// draining its last ring buffers took over 10 s to stop (the 120 s run,
// twice). The times they took are printed.
const REAP_WAIT: Duration = Duration::from_secs(60);
const THREAD_WAIT: Duration = Duration::from_secs(60);
const DEBUGFS: &str = "/sys/kernel/debug";

fn main() {
    let args = Args::parse();
    if let Some(seed) = args.vmm {
        vmm::main(seed, args.seconds);
    }
    std::process::exit(stress(&args));
}

/// xorshift64*: a deterministic generator per seed, no dependency.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng((seed ^ 0x2545_f491_4f6c_dd1d).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next_u64() % n
        }
    }

    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    pub fn millis(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi.saturating_sub(lo) + 1))
    }
}

/// A count of failures with the first few messages.
#[derive(Default)]
pub struct Failures {
    pub count: u64,
    pub first: Vec<String>,
}

impl Failures {
    pub fn add(&mut self, msg: String) {
        self.count += 1;
        if self.first.len() < 10 {
            self.first.push(msg);
        }
    }

    pub fn merge(&mut self, o: Failures) {
        self.count += o.count;
        for m in o.first {
            if self.first.len() < 10 {
                self.first.push(m);
            }
        }
    }

    fn print(&self, what: &str) {
        if self.count > 0 {
            println!("# {what}: {} failures, the first:", self.count);
            for m in &self.first {
                println!("#   {m}");
            }
        }
    }
}

struct Tap {
    n: usize,
    failed: usize,
}

impl Tap {
    fn point(&mut self, ok: bool, what: &str) {
        self.n += 1;
        if ok {
            println!("ok {} - {what}", self.n);
        } else {
            self.failed += 1;
            println!("not ok {} - {what}", self.n);
        }
    }

    fn skip(&mut self, what: &str, why: &str) {
        self.n += 1;
        println!("ok {} - {what} # SKIP {why}", self.n);
    }
}

/// What the workers reported through the pipe.
#[derive(Default)]
struct WorkerCounts {
    vms: AtomicU64,
    vcpus: AtomicU64,
    named: AtomicU64,
    eexist: AtomicU64,
    renamed: AtomicU64,
    rename_eexist: AtomicU64,
    destroyed: AtomicU64,
    cycles: AtomicU64,
    caps_named: AtomicU64,
    caps_registry: AtomicU64,
    ids: Mutex<HashSet<u64>>,
    errors: Mutex<Failures>,
}

impl WorkerCounts {
    fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    fn line(&self, line: &str) {
        let bump = |c: &AtomicU64| {
            c.fetch_add(1, Ordering::Relaxed);
        };
        let mut f = line.split(' ');
        match f.next().unwrap_or_default() {
            "caps" => {
                if f.next() == Some("1") {
                    bump(&self.caps_named);
                }
                if f.next() == Some("1") {
                    bump(&self.caps_registry);
                }
            }
            "vm" => {
                bump(&self.vms);
                let id = f.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                let vcpus = f.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                self.vcpus.fetch_add(vcpus, Ordering::Relaxed);
                if id != 0 {
                    if let Ok(mut ids) = self.ids.lock() {
                        ids.insert(id);
                    }
                }
            }
            "named" => bump(&self.named),
            "eexist" => bump(&self.eexist),
            "renamed" => bump(&self.renamed),
            "rename-eexist" => bump(&self.rename_eexist),
            "destroyed" => bump(&self.destroyed),
            "cycle" => bump(&self.cycles),
            _ => {
                if let Ok(mut e) = self.errors.lock() {
                    e.add(line.strip_prefix("err ").unwrap_or(line).to_string());
                }
            }
        }
    }
}

/// Reads the workers' pipe until EOF (all writers gone) or, once `stop`
/// is set, until it is quiet for 200 ms.
fn collect(rd: OwnedFd, stop: &AtomicBool, counts: &WorkerCounts) {
    let mut pending = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut pfd = libc::pollfd {
            fd: rd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, 200) };
        if r == 0 && stop.load(Ordering::Relaxed) {
            return;
        }
        if r <= 0 {
            continue;
        }
        // SAFETY: buf is writable for buf.len() bytes.
        let n = unsafe { libc::read(rd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            return;
        }
        if n < 0 {
            if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return;
        }
        pending.extend_from_slice(&buf[..n as usize]);
        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            counts.line(String::from_utf8_lossy(&line[..pos]).trim_end());
        }
    }
}

/// The live workers and what became of the dead ones.
struct Workers {
    exe: PathBuf,
    seconds: u64,
    pipe: Option<OwnedFd>,
    next_seed: u64,
    live: Vec<(u64, Child)>,
    spawned: u64,
    kills: u64,
    spawn_errors: Failures,
    deaths: Failures,
    /// The longest a killed worker took to be reaped.
    slowest_reap: Duration,
}

impl Workers {
    fn spawn(&mut self) {
        let seed = self.next_seed;
        self.next_seed += 1;
        let out = match self.pipe.as_ref().map(OwnedFd::try_clone) {
            Some(Ok(fd)) => fd,
            Some(Err(e)) => return self.spawn_errors.add(format!("dup pipe: {e}")),
            None => return,
        };
        let mut cmd = Command::new(&self.exe);
        cmd.arg("--vmm")
            .arg(seed.to_string())
            .arg("--seconds")
            .arg(self.seconds.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(out))
            .stderr(Stdio::inherit());
        // SAFETY: the closure runs between fork and exec and only calls
        // prctl(2), which is async-signal-safe. The main thread spawns every
        // worker and outlives them, so PDEATHSIG fires only if we die.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        match cmd.spawn() {
            Ok(child) => {
                self.live.push((seed, child));
                self.spawned += 1;
            }
            Err(e) => self.spawn_errors.add(format!("spawn worker {seed}: {e}")),
        }
    }

    /// Waits for a child, at most REAP_WAIT; a worker that was not killed
    /// by us (`killed`) or did not die of SIGKILL is a failure.
    fn reap(&mut self, seed: u64, mut child: Child, killed: bool) {
        let pid = child.id();
        let t0 = Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(status)) => {
                    self.slowest_reap = self.slowest_reap.max(t0.elapsed());
                    if !killed || status.signal() != Some(libc::SIGKILL) {
                        self.deaths.add(format!(
                            "worker {seed} (pid {pid}) ended by itself: {status}"
                        ));
                    }
                    return;
                }
                Ok(None) if t0.elapsed() < REAP_WAIT => thread::sleep(Duration::from_millis(5)),
                Ok(None) => {
                    return self.deaths.add(format!(
                        "worker {seed} (pid {pid}) not reaped {} s after SIGKILL",
                        REAP_WAIT.as_secs()
                    ))
                }
                Err(e) => return self.deaths.add(format!("wait worker {seed}: {e}")),
            }
        }
    }

    /// Replaces workers that ended by themselves.
    fn check(&mut self) {
        let mut i = 0;
        while i < self.live.len() {
            if let Ok(Some(_)) = self.live[i].1.try_wait() {
                let (seed, child) = self.live.swap_remove(i);
                self.reap(seed, child, false);
                self.spawn();
            } else {
                i += 1;
            }
        }
    }

    fn kill_one(&mut self, rng: &mut Rng) {
        if self.live.is_empty() {
            return;
        }
        let i = rng.below(self.live.len() as u64) as usize;
        let (seed, mut child) = self.live.swap_remove(i);
        let _ = child.kill();
        self.kills += 1;
        self.reap(seed, child, true);
        self.spawn();
    }

    fn kill_all(&mut self) {
        for (_, child) in &mut self.live {
            let _ = child.kill();
        }
        for (seed, child) in std::mem::take(&mut self.live) {
            self.reap(seed, child, true);
        }
    }
}

/// VMs present: ids in `/proc/kvm` and `/proc/*/kvm`, debugfs directories.
#[derive(Default)]
struct Present {
    proc_kvm: Vec<(String, u64)>,
    pid_kvm: Vec<(u32, u64)>,
    debugfs: Vec<String>,
}

fn present(debugfs: bool) -> Present {
    let mut p = Present::default();
    if let Ok(rd) = std::fs::read_dir("/proc/kvm") {
        for ent in rd.flatten() {
            let name = ent.file_name().to_string_lossy().into_owned();
            let id = std::fs::read_link(ent.path())
                .ok()
                .and_then(|t| {
                    t.to_string_lossy()
                        .rsplit_once('/')
                        .and_then(|(_, id)| id.parse().ok())
                })
                .unwrap_or(0);
            p.proc_kvm.push((name, id));
        }
    }
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for ent in rd.flatten() {
            let Some(pid) = ent.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/kvm")) {
                for ent in rd.flatten() {
                    if let Some(id) = ent.file_name().to_str().and_then(|s| s.parse().ok()) {
                        p.pid_kvm.push((pid, id));
                    }
                }
            }
        }
    }
    if debugfs {
        if let Ok(rd) = std::fs::read_dir(Path::new(DEBUGFS).join("kvm")) {
            for ent in rd.flatten() {
                let name = ent.file_name().to_string_lossy().into_owned();
                let vm_dir = name.split_once('-').is_some_and(|(a, b)| {
                    !a.is_empty()
                        && !b.is_empty()
                        && a.bytes().all(|c| c.is_ascii_digit())
                        && b.bytes().all(|c| c.is_ascii_digit())
                });
                if vm_dir {
                    p.debugfs.push(name);
                }
            }
        }
    }
    p
}

impl Present {
    /// The ids of the VMs present.
    fn ids(&self) -> HashSet<u64> {
        (self.pid_kvm.iter().map(|&(_, id)| id))
            .chain(self.proc_kvm.iter().map(|(_, id)| *id))
            .collect()
    }

    /// What is here now and was not in `before`.
    fn new_since(&self, before: &Present) -> Present {
        let old_ids = before.ids();
        Present {
            proc_kvm: (self.proc_kvm.iter())
                .filter(|(_, id)| !old_ids.contains(id))
                .cloned()
                .collect(),
            pid_kvm: (self.pid_kvm.iter())
                .filter(|(_, id)| !old_ids.contains(id))
                .copied()
                .collect(),
            debugfs: (self.debugfs.iter())
                .filter(|d| !before.debugfs.contains(d))
                .cloned()
                .collect(),
        }
    }
}

fn is_mountpoint(path: &str) -> bool {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(1) == Some(path))
}

/// debugfs' kvm directory: (usable, mounted by us, why not).
fn setup_debugfs() -> (bool, bool, String) {
    let kvm_dir = Path::new(DEBUGFS).join("kvm");
    if kvm_dir.is_dir() {
        return (true, false, String::new());
    }
    if is_mountpoint(DEBUGFS) {
        return (false, false, format!("{DEBUGFS} has no kvm directory"));
    }
    let (Ok(src), Ok(dst)) = (
        std::ffi::CString::new("debugfs"),
        std::ffi::CString::new(DEBUGFS),
    ) else {
        return (false, false, "bad path".into());
    };
    // SAFETY: NUL-terminated strings that outlive the call; no data.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            src.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        return (false, false, format!("cannot mount debugfs: {e}"));
    }
    if kvm_dir.is_dir() {
        (true, true, String::new())
    } else {
        umount_debugfs();
        (false, false, format!("{DEBUGFS} has no kvm directory"))
    }
}

fn umount_debugfs() {
    if let Ok(dst) = std::ffi::CString::new(DEBUGFS) {
        // SAFETY: a NUL-terminated path that outlives the call.
        if unsafe { libc::umount2(dst.as_ptr(), libc::MNT_DETACH) } != 0 {
            println!("# umount {DEBUGFS}: {}", io::Error::last_os_error());
        }
    }
}

/// Runs `f` on a thread; the receiver yields its result when it ends.
fn spawn<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> io::Result<mpsc::Receiver<T>> {
    let (tx, rx) = mpsc::channel();
    thread::Builder::new().name(name.into()).spawn(move || {
        let _ = tx.send(f());
    })?;
    Ok(rx)
}

/// Waits for a thread's result until `deadline`.
fn join<T>(rx: &mpsc::Receiver<T>, deadline: Instant) -> Option<T> {
    rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .ok()
}

fn errno_name(e: i32) -> String {
    match e {
        libc::ENOENT => "ENOENT".into(),
        libc::ESRCH => "ESRCH".into(),
        libc::EACCES => "EACCES".into(),
        libc::EPERM => "EPERM".into(),
        libc::EINVAL => "EINVAL".into(),
        libc::EFAULT => "EFAULT".into(),
        libc::EIO => "EIO".into(),
        libc::ENOMEM => "ENOMEM".into(),
        0 => "not-an-errno".into(),
        e => format!("errno{e}"),
    }
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is an array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn stress(args: &Args) -> i32 {
    println!("TAP version 13");
    if !Path::new("/dev/kvm").exists() {
        println!("1..0 # SKIP no /dev/kvm");
        return 0;
    }
    println!("1..{PLAN}");
    let mut tap = Tap { n: 0, failed: 0 };
    let registry = Path::new("/proc/kvm").is_dir();
    if !registry {
        println!("# no /proc/kvm: the kernel has no VM registry; its points are skipped");
    }
    let t_start = Instant::now();
    let seed0 = u64::from(std::process::id())
        ^ std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    println!(
        "# {} s, {} workers, {} readers, seed {seed0:#x}",
        args.seconds, args.workers, args.readers
    );
    let mut rng = Rng::new(seed0);
    let (debugfs, debugfs_mounted, debugfs_why) = setup_debugfs();
    let before = present(debugfs);
    if !before.pid_kvm.is_empty() || !before.debugfs.is_empty() {
        println!(
            "# VMs before the run (ignored at the end): {} in /proc/*/kvm, {} in debugfs",
            before.pid_kvm.len(),
            before.debugfs.len()
        );
    }

    let stop = Arc::new(AtomicBool::new(false));
    let stop_uevents = Arc::new(AtomicBool::new(false));
    let stop_collect = Arc::new(AtomicBool::new(false));

    let uevents = match uevent::open() {
        Ok(fd) => {
            let s = stop_uevents.clone();
            let existing = before.ids();
            spawn("uevents", move || {
                uevent::listen(fd, &s, registry, existing)
            })
            .map_err(|e| e.to_string())
        }
        Err(e) => Err(format!("uevent socket: {e}")),
    };
    let perf_open = perf::open();
    let (perf_guest_id, perf_size) = match &perf_open {
        Ok(p) => {
            if !p.guest_id {
                println!(
                    "# perf_event_open: PERF_SAMPLE_GUEST_ID gives EINVAL; sampling without it"
                );
            }
            println!("# perf: cpu-clock on {} CPUs", p.cpus);
            (p.guest_id, p.record_size)
        }
        Err(e) => {
            println!("# perf unusable: {e}");
            (false, 0)
        }
    };
    let perf = perf_open.and_then(|p| {
        let s = stop.clone();
        spawn("perf", move || perf::drain_loop(p, &s)).map_err(|e| e.to_string())
    });

    let counts = Arc::new(WorkerCounts::default());
    let mut workers = Workers {
        exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("/proc/self/exe")),
        seconds: args.seconds,
        pipe: None,
        next_seed: 1,
        live: Vec::new(),
        spawned: 0,
        kills: 0,
        spawn_errors: Failures::default(),
        deaths: Failures::default(),
        slowest_reap: Duration::ZERO,
    };
    let collector = match pipe() {
        Ok((rd, wr)) => {
            workers.pipe = Some(wr);
            let (s, c) = (stop_collect.clone(), counts.clone());
            spawn("collector", move || collect(rd, &s, &c)).map_err(|e| e.to_string())
        }
        Err(e) => Err(format!("pipe: {e}")),
    };
    if let Err(e) = &collector {
        workers.spawn_errors.add(e.clone());
    }

    let mut readers = Vec::new();
    for i in 0..args.readers {
        let (s, seed) = (stop.clone(), rng.next_u64());
        match spawn(&format!("reader{i}"), move || reader::run(seed, &s)) {
            Ok(rx) => readers.push(rx),
            Err(e) => println!("# reader thread {i}: {e}"),
        }
    }

    for _ in 0..args.workers {
        workers.spawn();
    }
    let deadline = t_start + Duration::from_secs(args.seconds);
    let mut next_report = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let nap = rng.millis(500, 1000);
        thread::sleep(nap.min(deadline.saturating_duration_since(Instant::now())));
        if Instant::now() >= deadline {
            break;
        }
        workers.check();
        workers.kill_one(&mut rng);
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(10);
            println!(
                "# {:>4} s: {} VMs created, {} workers killed",
                t_start.elapsed().as_secs(),
                WorkerCounts::get(&counts.vms),
                workers.kills
            );
        }
    }

    // Stop: readers and perf, then the workers, then wait for the VMs to go.
    stop.store(true, Ordering::Relaxed);
    let t_stop = Instant::now();
    let threads_deadline = t_stop + THREAD_WAIT;
    let mut rstats = reader::ReaderStats::default();
    let mut readers_stuck = 0;
    for rx in &readers {
        match join(rx, threads_deadline) {
            Some(s) => rstats.merge(s),
            None => readers_stuck += 1,
        }
    }
    let pstats = match &perf {
        Ok(rx) => {
            join(rx, threads_deadline).ok_or_else(|| "the perf thread did not stop".to_string())
        }
        Err(e) => Err(e.clone()),
    };
    println!(
        "# readers and perf stopped in {} ms",
        t_stop.elapsed().as_millis()
    );
    workers.check();
    workers.kill_all();
    workers.pipe = None;
    stop_collect.store(true, Ordering::Relaxed);
    let collector_done = match &collector {
        Ok(rx) => join(rx, Instant::now() + THREAD_WAIT).is_some(),
        Err(_) => false,
    };

    let t_wait = Instant::now();
    let mut left = present(debugfs).new_since(&before);
    while (!left.proc_kvm.is_empty() || !left.pid_kvm.is_empty() || !left.debugfs.is_empty())
        && t_wait.elapsed() < FINAL_WAIT
    {
        thread::sleep(Duration::from_millis(100));
        left = present(debugfs).new_since(&before);
    }
    let waited = t_wait.elapsed();
    // Let the last destroy events arrive.
    thread::sleep(Duration::from_millis(500));
    stop_uevents.store(true, Ordering::Relaxed);
    let ustats = match &uevents {
        Ok(rx) => join(rx, Instant::now() + THREAD_WAIT)
            .ok_or_else(|| "the uevent thread did not stop".to_string()),
        Err(e) => Err(e.clone()),
    };
    if debugfs_mounted {
        umount_debugfs();
    }

    // Report.
    let c = &counts;
    let get = WorkerCounts::get;
    let worker_errors = c
        .errors
        .lock()
        .map(|mut e| std::mem::take(&mut *e))
        .unwrap_or_default();
    let created_ids = c.ids.lock().map(|i| i.clone()).unwrap_or_default();
    println!(
        "# workers: {} started, {} killed (slowest reaped in {} ms); {} VMs created ({} with ids), {} vCPUs, {} destroyed, {} rounds",
        workers.spawned,
        workers.kills,
        workers.slowest_reap.as_millis(),
        get(&c.vms),
        created_ids.len(),
        get(&c.vcpus),
        get(&c.destroyed),
        get(&c.cycles)
    );
    println!(
        "# names: {} set by ioctl, {} EEXIST; {} renamed through /proc, {} EEXIST",
        get(&c.named),
        get(&c.eexist),
        get(&c.renamed),
        get(&c.rename_eexist)
    );
    worker_errors.print("worker errors");
    workers.spawn_errors.print("worker spawns");
    workers.deaths.print("worker deaths");
    let names_supported = get(&c.caps_named) > 0;
    tap.point(
        get(&c.vms) > 0
            && worker_errors.count == 0
            && workers.spawn_errors.count == 0
            && workers.deaths.count == 0
            && collector_done
            && (!names_supported || get(&c.named) > 0),
        &format!(
            "VMM workers churned VMs ({} created, {} named, {} renamed, {} workers killed)",
            get(&c.vms),
            get(&c.named),
            get(&c.renamed),
            workers.kills
        ),
    );

    let histogram: Vec<String> = (rstats.errnos.iter())
        .map(|(e, n)| format!("{}={n}", errno_name(*e)))
        .collect();
    println!(
        "# readers: {} walks, {} readdirs, {} readlinks, {} VM dirs, {} files read ({} bytes), {} preads; errors: {}",
        rstats.walks,
        rstats.readdirs,
        rstats.readlinks,
        rstats.vms_seen,
        rstats.files,
        rstats.bytes,
        rstats.preads,
        if histogram.is_empty() { "none".into() } else { histogram.join(" ") }
    );
    rstats.failures.print("readers");
    if readers_stuck > 0 {
        println!("# {readers_stuck} reader threads did not stop");
    }
    let what = "readers read /proc/kvm and /proc/*/kvm/* with only ENOENT/ESRCH errors";
    if registry {
        tap.point(
            rstats.files > 0 && rstats.failures.count == 0 && readers_stuck == 0,
            &format!("{what} ({} files, {} preads)", rstats.files, rstats.preads),
        );
    } else {
        tap.skip(what, "no /proc/kvm");
    }

    match &ustats {
        Ok(u) => {
            let kinds: Vec<String> = u.kinds.iter().map(|(k, n)| format!("{k}={n}")).collect();
            println!(
                "# uevents: {}; {} overruns; {} created VM ids never destroyed",
                if kinds.is_empty() {
                    "none".into()
                } else {
                    kinds.join(" ")
                },
                u.overruns,
                u.create_ids.difference(&u.destroy_ids).count()
            );
            u.failures.print("uevents");
            let (cr, de) = (u.kind("create"), u.kind("destroy"));
            tap.point(
                cr > 0 && de > 0,
                &format!("KVM uevents arrive (create {cr}, destroy {de})"),
            );
            let what =
                "every KVM uevent has VM_ID= and no VM_NAME=, none precedes its VM's create event";
            if registry {
                tap.point(
                    u.missing_id == 0
                        && u.named == 0
                        && u.before_create == 0
                        && u.failures.count == 0
                        && (get(&c.renamed) + get(&c.named) == 0 || u.kind("rename") > 0),
                    &format!("{what} (rename {})", u.kind("rename")),
                );
            } else {
                tap.skip(what, "no /proc/kvm");
            }
        }
        Err(e) => {
            println!("# uevents: {e}");
            tap.point(false, "KVM uevents arrive");
            tap.point(false, "every KVM uevent has VM_ID=");
        }
    }

    match &pstats {
        Ok(p) => {
            let foreign = p
                .vm_ids
                .iter()
                .filter(|id| !created_ids.contains(id))
                .count();
            println!(
                "# perf: {} samples ({} marked guest, {} with a vm_id, from {} VMs of which {} not reported by a worker), {} lost, {} other records, vcpu_idx {:?}",
                p.samples,
                p.guest_mode,
                p.guest_id_samples,
                p.vm_ids.len(),
                foreign,
                p.lost,
                p.other,
                p.vcpu_idx
            );
            p.failures.print("perf");
            let bad: u64 = p.bad_size.values().sum();
            if bad > 0 {
                println!(
                    "# perf: sample sizes other than {perf_size}: {:?}",
                    p.bad_size
                );
            }
            tap.point(
                p.samples > 0 && bad == 0 && p.failures.count == 0,
                &format!(
                    "perf sample records are {perf_size} bytes ({} samples)",
                    p.samples
                ),
            );
            let what = "perf samples carry guest ids";
            if perf_guest_id {
                tap.point(
                    p.guest_id_samples > 0,
                    &format!(
                        "{what} ({} samples with a nonzero vm_id)",
                        p.guest_id_samples
                    ),
                );
            } else {
                tap.skip(what, "PERF_SAMPLE_GUEST_ID not supported (EINVAL)");
            }
        }
        Err(e) => {
            println!("# perf: {e}");
            tap.point(false, "perf sample records have the expected size");
            tap.point(false, "perf samples carry guest ids");
        }
    }

    for (n, e) in left.proc_kvm.iter().take(10) {
        println!("# left in /proc/kvm: {n} (id {e})");
    }
    for (pid, id) in left.pid_kvm.iter().take(10) {
        println!("# left: /proc/{pid}/kvm/{id}");
    }
    for d in left.debugfs.iter().take(10) {
        println!("# left: {DEBUGFS}/kvm/{d}");
    }
    println!("# waited {} ms for the VMs to go", waited.as_millis());
    let what = "registry empty at the end (/proc/kvm, /proc/*/kvm)";
    if registry {
        tap.point(
            left.proc_kvm.is_empty() && left.pid_kvm.is_empty(),
            &format!("{what} within {} s", FINAL_WAIT.as_secs()),
        );
    } else {
        tap.skip(what, "no /proc/kvm");
    }
    let what = "no VM directories left in debugfs at the end";
    if debugfs {
        tap.point(
            left.debugfs.is_empty(),
            &format!("{what} within {} s", FINAL_WAIT.as_secs()),
        );
    } else {
        tap.skip(what, &debugfs_why);
    }

    println!(
        "# summary: {} VMs created, {} renames, {} EEXIST, {} kills, {} reads, uevents {}, {} guest samples",
        get(&c.vms),
        get(&c.named) + get(&c.renamed),
        get(&c.eexist) + get(&c.rename_eexist),
        workers.kills,
        rstats.files + rstats.preads,
        match &ustats {
            Ok(u) => format!("{:?}", u.kinds),
            Err(_) => "none".into(),
        },
        pstats.as_ref().map_or(0, |p| p.guest_id_samples)
    );
    i32::from(tap.failed > 0 || tap.n != PLAN)
}
