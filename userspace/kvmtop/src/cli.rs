//! The command line: every subcommand and option, in one clap definition
//! that the man page and the shell completions are generated from.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

const EXAMPLES: &str = "\
Examples:
  kvmtop                          live view of every guest (q quits, ? helps)
  kvmtop list                     the guests: name, id, pid, uid, vCPUs, memory, age
  kvmtop list --json              the same for scripts
  kvmtop -b -n 3 -d 1             three text frames, one per second, like top -b
  kvmtop -b -n 1 --json           one JSON frame
  kvmtop stat -g web              one guest's KVM stats full-screen, busiest first
  kvmtop stat -g web -b -n 5      the same as five text frames
  kvmtop profile -g web --guestmount /srv/guest-syms
  kvmtop --guestmount /srv/guest-syms   live view; Enter profiles with these symbols
  kvmtop name 1234 web            rename a guest (registry kernel)
  kvmtop serve --listen 127.0.0.1:9469
";

#[derive(Parser, Debug)]
#[command(
    name = "kvmtop",
    version,
    about = "A top-like view of the KVM guests of this host",
    long_about = "A top-like view of the KVM guests of this host: CPU split (guest, host \
system, host user), exits/s, memory, and per-guest profiles of the guest kernel. \
It reads only the kernel (/proc, debugfs, perf), never the VMM, so a hung VMM \
cannot hang it.",
    after_help = EXAMPLES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub batch: BatchArgs,
    /// Split the guests' time into guest kernel and guest user in the
    /// header, by sampling every vCPU thread (cpu-clock, 1 kHz). Off by
    /// default: a sample interrupts a running vCPU, i.e. forces a VM exit,
    /// and would add to the exits the view shows.
    #[arg(long)]
    pub sample: bool,
    /// Columns off by default, comma-separated: steal (vCPU threads
    /// runnable but waiting for a host CPU), other (CPU of the VMM's
    /// threads that are not vCPUs), disk (the VMM's storage reads and
    /// writes per second), net (bytes a second the guest received and sent
    /// on the tap and macvtap devices its VMM holds). steal and other read
    /// two more kept-open files a vCPU, disk one a guest, net six a
    /// network device. In the live view W, O, D and T switch them.
    #[arg(long, value_delimiter = ',', value_name = "COLUMNS")]
    pub columns: Vec<ExtraColumn>,
    /// Symbols for the profile the live view opens on Enter.
    #[command(flatten)]
    pub syms: SymbolArgs,
    #[command(flatten)]
    pub roots: Roots,
}

/// A column that is off unless asked for.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExtraColumn {
    Steal,
    Other,
    Disk,
    Net,
}

/// Which of the optional columns are shown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extra {
    pub steal: bool,
    pub other: bool,
    pub disk: bool,
    pub net: bool,
}

impl Extra {
    pub fn of(cols: &[ExtraColumn]) -> Extra {
        Extra {
            steal: cols.contains(&ExtraColumn::Steal),
            other: cols.contains(&ExtraColumn::Other),
            disk: cols.contains(&ExtraColumn::Disk),
            net: cols.contains(&ExtraColumn::Net),
        }
    }

    /// Whether the vCPU threads must be read ([`crate::frame::Reader::threads`]).
    pub fn threads(self) -> bool {
        self.steal || self.other
    }
}

/// Where kvmtop looks; hidden, for tests on fake trees.
#[derive(Args, Debug, Clone)]
pub struct Roots {
    /// The proc file system to read (tests point it at a fake tree).
    #[arg(long, global = true, hide = true, default_value = "/proc")]
    pub proc_root: PathBuf,
    /// Where debugfs is mounted.
    #[arg(long, global = true, hide = true, default_value = "/sys/kernel/debug")]
    pub debugfs_root: PathBuf,
    /// libvirt's system pid files (a name source).
    #[arg(long, global = true, hide = true, default_value = "/run/libvirt/qemu")]
    pub libvirt_dir: PathBuf,
    /// Users' runtime directories (session libvirt pid files).
    #[arg(long, global = true, hide = true, default_value = "/run/user")]
    pub user_run_dir: PathBuf,
    /// sysfs (network devices' counters).
    #[arg(long, global = true, hide = true, default_value = "/sys")]
    pub sys_root: PathBuf,
    /// Ignore the kernel's VM registry (/proc/kvm) and use the fallbacks of
    /// unpatched kernels (fd scan, debugfs), e.g. to compare the two.
    #[arg(long, global = true)]
    pub no_registry: bool,
}

/// `top`-like batch options, shared by the overview, `stat` and `profile`:
/// given before or after the subcommand, they mean the same
/// ([`BatchArgs::or`]).
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct BatchArgs {
    /// Batch mode: print frames to stdout instead of the full-screen view.
    #[arg(short = 'b', long = "batch")]
    pub batch: bool,
    /// Number of frames, then exit (batch mode: default 1; the live view
    /// and frames to a pipe: until q or interrupted).
    #[arg(short = 'n', long = "iterations", value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..))]
    pub iterations: Option<u64>,
    /// Seconds between frames, 0.1 to 86400 (fractions allowed; default 1).
    #[arg(short = 'd', long = "delay", value_name = "SECS", value_parser = parse_delay)]
    pub delay: Option<f64>,
    /// One JSON object per frame (batch mode), one per line.
    #[arg(long)]
    pub json: bool,
}

/// Shortest and longest `-d`: below 0.1 s a frame's own reading is a large
/// part of what it shows (and the rates are noise); a day is plenty.
const DELAY_RANGE: std::ops::RangeInclusive<f64> = 0.1..=86400.0;

fn parse_delay(s: &str) -> Result<f64, String> {
    let d: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number of seconds"))?;
    if !DELAY_RANGE.contains(&d) {
        return Err(format!(
            "{s} s is outside {} to {} seconds",
            DELAY_RANGE.start(),
            DELAY_RANGE.end()
        ));
    }
    Ok(d)
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// List the guests: name, id, pid, uid, vCPUs, memory, age, and where the facts came from.
    List {
        /// A JSON array instead of a table.
        #[arg(long)]
        json: bool,
        /// Look in every process, not only at /proc/kvm/.list: also VMs of
        /// processes in child pid namespaces (containers), and each guest's
        /// vCPU threads (JSON). Slower with many processes.
        #[arg(long)]
        all: bool,
    },
    /// One guest's KVM stats as totals and rates per second (like kvm_stat for one guest):
    /// full-screen on a terminal, text or JSON frames with -b.
    Stat {
        #[command(flatten)]
        guest: GuestArg,
        #[command(flatten)]
        batch: BatchArgs,
        /// Also exits per reason and their handling time, from the kvm_exit
        /// and kvm_entry tracepoints on this guest's vCPU threads only (like
        /// `perf kvm stat live` for one guest; root or CAP_PERFMON, and a
        /// mounted tracefs). Costs a record per exit while it runs.
        #[arg(long)]
        exits: bool,
    },
    /// Hottest guest-kernel functions of one guest (perf kvm top for one guest).
    Profile {
        #[command(flatten)]
        guest: GuestArg,
        #[command(flatten)]
        syms: SymbolArgs,
        #[command(flatten)]
        batch: BatchArgs,
        /// How many functions to show (at least 1).
        #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..))]
        top: u64,
    },
    /// Rename a guest (writes /proc/<pid>/kvm/<id>/name; needs the registry kernel).
    Name {
        /// The guest: its name, id or owner pid.
        guest: String,
        /// The new name: 1 to 63 of [A-Za-z0-9._+:-], not starting with '.' or '-'.
        new_name: String,
    },
    /// Serve per-guest metrics in the OpenMetrics / Prometheus text format.
    Serve {
        /// Address to listen on, e.g. 127.0.0.1:9469 or [::]:9469.
        #[arg(long, default_value = "127.0.0.1:9469")]
        listen: String,
        /// Seconds a client has to send a request's headers before it is
        /// cut off (1 to 59: a connection lives at most 60 s; a slow or
        /// idle client never delays others).
        #[arg(long, value_name = "SECS", default_value_t = 5,
              value_parser = clap::value_parser!(u64).range(1..60))]
        header_timeout: u64,
        /// Stop after answering this many requests (for tests).
        #[arg(long, hide = true)]
        max_requests: Option<u64>,
    },
    /// Write the man page (roff) to stdout, e.g. `kvmtop man | man -l -`.
    Man,
    /// Write shell completions to stdout, e.g. `kvmtop completions bash > /etc/bash_completion.d/kvmtop`.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

/// Which guest: with one guest running, none is needed.
#[derive(Args, Debug, Clone)]
pub struct GuestArg {
    /// The guest: its name, PID:FD, id or owner pid (optional with one guest).
    #[arg(short = 'g', long = "guest", value_name = "GUEST")]
    pub guest: Option<String>,
}

const SYMBOLS: &str = "Guest symbols (profiles)";

/// Guest symbol sources, as `perf kvm` takes them: for `kvmtop profile`
/// and for the profile the live view opens on Enter.
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct SymbolArgs {
    /// The guest's /proc/kallsyms (a copy).
    #[arg(long, value_name = "FILE", help_heading = SYMBOLS)]
    pub guestkallsyms: Option<PathBuf>,
    /// The guest's /proc/modules (a copy).
    #[arg(long, value_name = "FILE", help_heading = SYMBOLS)]
    pub guestmodules: Option<PathBuf>,
    /// The guest kernel's vmlinux (ELF symbols, DWARF lines).
    #[arg(long, value_name = "FILE", help_heading = SYMBOLS)]
    pub guestvmlinux: Option<PathBuf>,
    /// A directory with one subdirectory per guest name (or pid) holding
    /// kallsyms, modules, vmlinux and build-id.
    #[arg(long, value_name = "DIR", help_heading = SYMBOLS)]
    pub guestmount: Option<PathBuf>,
}

impl SymbolArgs {
    /// No symbol option given.
    pub fn is_empty(&self) -> bool {
        *self == SymbolArgs::default()
    }

    /// Each option from `self`, else from `other`: `kvmtop --guestmount D
    /// profile` works like `kvmtop profile --guestmount D`.
    pub fn or(&self, other: &SymbolArgs) -> SymbolArgs {
        SymbolArgs {
            guestkallsyms: self.guestkallsyms.clone().or(other.guestkallsyms.clone()),
            guestmodules: self.guestmodules.clone().or(other.guestmodules.clone()),
            guestvmlinux: self.guestvmlinux.clone().or(other.guestvmlinux.clone()),
            guestmount: self.guestmount.clone().or(other.guestmount.clone()),
        }
    }
}

impl BatchArgs {
    /// Seconds between frames (checked by the parser).
    pub fn delay(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.delay.unwrap_or(1.0))
    }

    /// Each option from `self` (after a subcommand), else from `top` (before
    /// it): `kvmtop -b -n 1 profile` is `kvmtop profile -b -n 1`.
    pub fn or(&self, top: &BatchArgs) -> BatchArgs {
        BatchArgs {
            batch: self.batch || top.batch,
            iterations: self.iterations.or(top.iterations),
            delay: self.delay.or(top.delay),
            json: self.json || top.json,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::path::Path;

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn batch_flags_parse_like_top() {
        let c = Cli::try_parse_from(["kvmtop", "-b", "-n", "2", "-d", "0.5", "--json"]).unwrap();
        assert!(c.batch.batch && c.batch.json);
        assert_eq!(c.batch.iterations, Some(2));
        assert_eq!(c.batch.delay().as_millis(), 500);
        assert_eq!(
            Cli::try_parse_from(["kvmtop"])
                .unwrap()
                .batch
                .delay()
                .as_secs(),
            1
        );
    }

    #[test]
    fn usage_errors_are_clap_errors() {
        for args in [
            &["kvmtop", "-d", "0"][..],
            &["kvmtop", "-d", "0.0000001"],
            &["kvmtop", "-d", "-1"],
            &["kvmtop", "-d", "NaN"],
            &["kvmtop", "-d", "inf"],
            &["kvmtop", "-d", "x"],
            &["kvmtop", "-n", "0"],
            &["kvmtop", "profile", "--top", "0"],
        ] {
            let e = Cli::try_parse_from(args).unwrap_err();
            // Usage errors exit 2, as clap's own do.
            assert_eq!(e.exit_code(), 2, "{args:?}: {e}");
        }
        assert!(Cli::try_parse_from(["kvmtop", "-d", "0.1"]).is_ok());
    }

    #[test]
    fn batch_options_mean_the_same_before_and_after_a_subcommand() {
        let c = Cli::try_parse_from(["kvmtop", "-b", "-n", "2", "-d", "3", "profile", "--json"])
            .unwrap();
        let Some(Command::Profile { batch, .. }) = &c.command else {
            panic!("parsed as {:?}", c.command);
        };
        let b = batch.or(&c.batch);
        assert!(b.batch && b.json);
        assert_eq!((b.iterations, b.delay), (Some(2), Some(3.0)));
        let c = Cli::try_parse_from(["kvmtop", "-d", "3", "stat", "-d", "2"]).unwrap();
        let Some(Command::Stat { batch, .. }) = &c.command else {
            panic!("parsed as {:?}", c.command);
        };
        assert_eq!(batch.or(&c.batch).delay, Some(2.0));
    }

    #[test]
    fn the_live_view_takes_the_profile_symbol_options() {
        let c = Cli::try_parse_from([
            "kvmtop",
            "-d",
            "0.5",
            "--guestkallsyms",
            "/k",
            "--guestmodules",
            "/m",
            "--guestvmlinux",
            "/v",
            "--guestmount",
            "/g",
        ])
        .unwrap();
        assert!(c.command.is_none());
        assert_eq!(c.syms.guestkallsyms.as_deref(), Some(Path::new("/k")));
        assert_eq!(c.syms.guestmodules.as_deref(), Some(Path::new("/m")));
        assert_eq!(c.syms.guestvmlinux.as_deref(), Some(Path::new("/v")));
        assert_eq!(c.syms.guestmount.as_deref(), Some(Path::new("/g")));
        assert!(!c.syms.is_empty());
        assert!(Cli::try_parse_from(["kvmtop"]).unwrap().syms.is_empty());
        // Given before `profile`, they still reach it; its own win.
        let c = Cli::try_parse_from([
            "kvmtop",
            "--guestmount",
            "/g",
            "--guestvmlinux",
            "/top",
            "profile",
            "--guestvmlinux",
            "/sub",
        ])
        .unwrap();
        match c.command {
            Some(Command::Profile { syms, .. }) => {
                let m = syms.or(&c.syms);
                assert_eq!(m.guestvmlinux.as_deref(), Some(Path::new("/sub")));
                assert_eq!(m.guestmount.as_deref(), Some(Path::new("/g")));
                assert_eq!(m.guestkallsyms, None);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn subcommands_take_a_guest() {
        let c = Cli::try_parse_from(["kvmtop", "stat", "-g", "web", "-b"]).unwrap();
        match c.command {
            Some(Command::Stat { guest, batch, .. }) => {
                assert_eq!(guest.guest.as_deref(), Some("web"));
                assert!(batch.batch);
            }
            other => panic!("parsed as {other:?}"),
        }
    }
}
