//! kvmreg-fixture: a tiny VMM for tests, benchmarks and the demo.
//!
//! Starts named guests that run known code at known guest addresses
//! (`hot_a` about 70% and `hot_b` about 30% of the time), writes matching
//! symbol files, prints one machine-readable line per guest and runs until
//! killed:
//!
//! ```text
//! guest web id 3 pid 1234 vm_fd 5 named yes vcpus 1235,1236
//! ready
//! ```
//!
//! A line is printed once every vCPU of that guest reached its first `hlt`.
//! `id` is `-` and `named` is `no` on a kernel without the VM registry. By
//! default each guest runs in its own process, like qemu; with
//! `--single-process` all guests share one.

mod code;
mod net;
mod symfiles;
mod vm;

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Parser, Debug)]
#[command(about = "Run named KVM guests with known code, for kvmreg's tests and demo")]
struct Args {
    /// Guest names, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "web")]
    guests: Vec<String>,
    /// vCPUs per guest, each on its own thread.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Guest memory in KiB.
    #[arg(long, default_value_t = 1024)]
    mem_kib: usize,
    /// Target CPU use of each vCPU in percent (1 to 100); 0: idle, the
    /// vCPU halts once and its thread then sleeps for good.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(0..=100))]
    busy: u32,
    /// Where to write kallsyms, vmlinux and build-id (and one subdirectory
    /// per guest name with the same files).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run all guests in one process instead of one process per guest.
    #[arg(long)]
    single_process: bool,
    /// Only write the symbol files (needs --out), start no guest.
    #[arg(long, requires = "out")]
    symbols_only: bool,
    /// Make the VMM processes non-dumpable (`PR_SET_DUMPABLE` 0), as a
    /// VMM that dropped privileges is: then only CAP_SYS_PTRACE may
    /// inspect them, whatever the uid (the permission tests use this).
    #[arg(long)]
    non_dumpable: bool,
    /// Extra open fds per VMM process (eventfds), so that tools that scan
    /// fd tables meet a table the size of qemu's (about 100 fds).
    #[arg(long, default_value_t = 0)]
    extra_fds: u32,
    /// Extra idle threads per VMM process, as qemu's I/O, RCU and worker
    /// threads (about 8 beside the vCPUs).
    #[arg(long, default_value_t = 0)]
    extra_threads: u32,
    /// CPU use of each --extra-threads thread in percent of a CPU (0 to
    /// 100; 0: parked), spent in host user mode: a VMM's I/O threads at
    /// work, for tools that tell vCPU CPU from the rest.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u32).range(0..=100))]
    extra_busy: u32,
    /// Pin every thread of every VMM process to this host CPU (contention
    /// on demand: two busy guests on one CPU each wait half the time).
    #[arg(long, value_name = "CPU")]
    cpu: Option<usize>,
    /// Storage I/O of each VMM process, KiB a second: written to a file of
    /// its own under --disk-dir and synced, then dropped from the page
    /// cache and read back, so both show in /proc/<pid>/io (on a file
    /// system with writeback; tmpfs has none).
    #[arg(long, value_name = "KIB", default_value_t = 0)]
    disk_rate: u32,
    /// Each round of the guest also writes a byte to port 0x80 before its
    /// `hlt`: as many port I/O exits as halt exits (for exit reason tests;
    /// the symbol files of --out describe the code without it).
    #[arg(long, conflicts_with = "out")]
    port_io: bool,
    /// Network traffic of each VMM process through a tap device it creates
    /// (`kvt<pid>`, up, no address, gone with the process): KiB a second
    /// written to the tap (the guest sends), and half as much sent out of
    /// it and read back (the guest receives). Needs CAP_NET_ADMIN and
    /// /dev/net/tun.
    #[arg(long, value_name = "KIB", default_value_t = 0)]
    net_rate: u32,
    /// Where --disk-rate's files go (default: the temporary directory).
    #[arg(long, value_name = "DIR")]
    disk_dir: Option<PathBuf>,
}

/// Give this process `fds` more open eventfds and `threads` more threads,
/// parked or (`busy` > 0) burning `busy` percent of a CPU each, all kept
/// for the life of the process.
fn add_bulk(fds: u32, threads: u32, busy: u32) -> Result<()> {
    for _ in 0..fds {
        // SAFETY: eventfd takes an initial value and flags, returns an fd.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("eventfd for --extra-fds");
        }
    }
    for i in 0..threads {
        std::thread::Builder::new()
            .name(format!("worker-{i}"))
            .spawn(move || burn(busy))
            .context("thread for --extra-threads")?;
    }
    Ok(())
}

/// With `--net-rate`: this process' tap device and its traffic.
fn start_net(args: &Args) -> Result<()> {
    if args.net_rate > 0 {
        net::start(args.net_rate)?;
    }
    Ok(())
}

/// With `--disk-rate`: a thread of this process that writes, syncs, drops
/// and reads back `kib` KiB a second in a file of its own (removed at
/// once: the open fd keeps it).
fn start_disk_io(args: &Args) -> Result<()> {
    if args.disk_rate == 0 {
        return Ok(());
    }
    let dir = args.disk_dir.clone().unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("kvmreg-fixture-io-{}", std::process::id()));
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .with_context(|| format!("--disk-rate: create {}", path.display()))?;
    let _ = std::fs::remove_file(&path);
    let chunk = vec![0x5a_u8; args.disk_rate as usize * 1024];
    std::thread::Builder::new()
        .name("disk-io".into())
        .spawn(move || disk_io(&f, &chunk))
        .context("thread for --disk-rate")?;
    Ok(())
}

fn disk_io(f: &std::fs::File, chunk: &[u8]) -> ! {
    use std::os::unix::fs::FileExt;
    let mut back = vec![0u8; chunk.len()];
    loop {
        let t = Instant::now();
        // Errors are the test's to see (no bytes counted), not ours.
        let _ = f.write_all_at(chunk, 0);
        let _ = f.sync_data();
        // SAFETY: posix_fadvise on an fd we own, with integer arguments.
        unsafe {
            libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
        }
        let _ = f.read_exact_at(&mut back, 0);
        std::thread::sleep(Duration::from_secs(1).saturating_sub(t.elapsed()));
    }
}

/// Spend `busy` percent of each 20 ms spinning, the rest asleep (0: park).
fn burn(busy: u32) -> ! {
    if busy == 0 {
        loop {
            std::thread::park();
        }
    }
    let period = Duration::from_millis(20);
    let spin = period * busy / 100;
    loop {
        let t = Instant::now();
        while t.elapsed() < spin {
            std::hint::spin_loop();
        }
        if spin < period {
            std::thread::sleep(period - spin);
        }
    }
}

/// Pin this process (and the threads it starts later) to host CPU `cpu`.
fn pin_to(cpu: usize) -> Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes within
    // it (cpu is checked against its size first).
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    if cpu >= 8 * std::mem::size_of::<libc::cpu_set_t>() {
        bail!("--cpu {cpu}: no such CPU");
    }
    // SAFETY: see above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: set is a valid cpu_set_t of the size passed; 0 is this thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("--cpu {cpu}"));
    }
    Ok(())
}

fn spec(args: &Args, mem_bytes: usize) -> vm::Spec {
    vm::Spec {
        vcpus: args.vcpus,
        mem_bytes,
        busy: args.busy,
        port_io: args.port_io,
    }
}

fn line(g: &vm::Guest) -> String {
    let id = vm::vm_id(&g.vm).map_or("-".to_string(), |i| i.to_string());
    let named = match &g.naming {
        vm::Naming::Named => "yes",
        _ => "no",
    };
    let tids: Vec<String> = g.tids.iter().map(|t| t.to_string()).collect();
    format!(
        "guest {} id {id} pid {} vm_fd {} named {named} vcpus {}",
        g.name,
        std::process::id(),
        g.vm.as_raw_fd(),
        tids.join(",")
    )
}

fn naming_note(g: &vm::Guest) -> Option<String> {
    match &g.naming {
        vm::Naming::Named => None,
        vm::Naming::Unsupported => Some(format!(
            "could not name guest {}: kernel lacks KVM_CAP_VM_NAME (250); it stays unnamed",
            g.name
        )),
        vm::Naming::Failed(e) => Some(format!("could not name guest {}: {e}", g.name)),
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.guests.is_empty() || args.guests.iter().any(|g| g.is_empty()) {
        bail!("--guests needs one or more non-empty names");
    }
    if args.vcpus == 0 {
        bail!("--vcpus must be at least 1");
    }
    if let Some(out) = &args.out {
        symfiles::write_all(out, &args.guests)?;
    }
    if args.symbols_only {
        return Ok(());
    }
    let mem = args
        .mem_kib
        .checked_mul(1024)
        .context("--mem-kib too large")?;
    if args.non_dumpable {
        // SAFETY: prctl with integer arguments only; children inherit it.
        if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error()).context("prctl(PR_SET_DUMPABLE, 0)");
        }
    }
    if let Some(cpu) = args.cpu {
        pin_to(cpu)?;
    }
    let kvm = kvm_ioctls::Kvm::new().context("opening /dev/kvm")?;
    if args.single_process {
        add_bulk(args.extra_fds, args.extra_threads, args.extra_busy)?;
        start_disk_io(&args)?;
        start_net(&args)?;
        let mut guests = Vec::new();
        for name in &args.guests {
            guests.push(vm::start(&kvm, name, spec(&args, mem))?);
        }
        let mut out = std::io::stdout().lock();
        for g in &guests {
            if let Some(n) = naming_note(g) {
                eprintln!("kvmreg-fixture: {n}");
            }
            writeln!(out, "{}", line(g))?;
        }
        writeln!(out, "ready")?;
        out.flush()?;
        drop(out);
        loop {
            std::thread::park();
        }
    }
    run_forked(&kvm, &args, mem)
}

/// One child process per guest. Children report their line through a
/// pipe, so the parent prints all lines in `--guests` order, then `ready`.
fn run_forked(kvm: &kvm_ioctls::Kvm, args: &Args, mem: usize) -> Result<()> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints for pipe2 to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe2: {}", std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 just created these fds; we own them.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let parent = std::process::id();
    for (i, name) in args.guests.iter().enumerate() {
        // SAFETY: the parent is single-threaded here (no vCPU threads yet),
        // so the child may keep running Rust code after fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            bail!("fork: {}", std::io::Error::last_os_error());
        }
        if pid == 0 {
            drop(rd);
            // SAFETY: prctl with PR_SET_PDEATHSIG takes a signal number.
            unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
            if std::os::unix::process::parent_id() != parent {
                std::process::exit(1);
            }
            let mut w = std::fs::File::from(wr);
            let started = add_bulk(args.extra_fds, args.extra_threads, args.extra_busy)
                .and_then(|()| start_disk_io(args))
                .and_then(|()| start_net(args))
                .and_then(|()| vm::start(kvm, name, spec(args, mem)));
            let msg = match started {
                Ok(g) => {
                    if let Some(n) = naming_note(&g) {
                        eprintln!("kvmreg-fixture: {n}");
                    }
                    let m = format!("{i} {}\n", line(&g));
                    // Keep the guest alive: it lives as long as this process.
                    std::mem::forget(g);
                    m
                }
                Err(e) => format!("{i} error {e:#}\n"),
            };
            // One short write: atomic on a pipe.
            let _ = w.write_all(msg.as_bytes());
            drop(w);
            if msg.contains(" error ") {
                std::process::exit(1);
            }
            loop {
                std::thread::park();
            }
        }
    }
    drop(wr);
    let mut lines = vec![String::new(); args.guests.len()];
    let mut failed = false;
    for l in BufReader::new(std::fs::File::from(rd)).lines() {
        let l = l?;
        let Some((i, rest)) = l.split_once(' ') else {
            continue;
        };
        let Ok(i) = i.parse::<usize>() else { continue };
        if rest.starts_with("error ") {
            let name = args.guests.get(i).map_or("?", String::as_str);
            eprintln!("kvmreg-fixture: guest {name}: {rest}");
            failed = true;
        }
        if let Some(slot) = lines.get_mut(i) {
            *slot = rest.to_string();
        }
    }
    if failed || lines.iter().any(|l| l.is_empty()) {
        bail!("not every guest started");
    }
    let mut out = std::io::stdout().lock();
    for l in &lines {
        writeln!(out, "{l}")?;
    }
    writeln!(out, "ready")?;
    out.flush()?;
    drop(out);
    // Wait for the children; if one dies, stop all (they die with us).
    let mut status = 0;
    // SAFETY: wait with a valid status pointer.
    unsafe { libc::wait(&mut status) };
    bail!("a guest process exited (status {status:#x})")
}
