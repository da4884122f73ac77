//! The real kvmtop binary in a real terminal: tmux runs it (on its own
//! server socket) against guests of the fixture VMM, the test sends keys
//! with `tmux send-keys` and reads the screen with `tmux capture-pane`.
//! Without /dev/kvm or without tmux each test says SKIPPED and checks
//! nothing.
//!
//! kvmtop runs under `sh -c`, which prints kvmtop's exit status and the
//! terminal's `icanon`/`echo` modes after it ends, so that the test sees
//! the terminal kvmtop left behind (normal screen, cooked mode).
//!
//! Guests are found by pid: on a kernel without the VM registry they have
//! no names.

mod common;

use common::{fixture_symbols, kvm_usable, Fixture, TempDir};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// How long kvmtop may take to show what a key or a frame asks for. Long:
/// the host may be busy (the suite also runs on a debug kernel under TCG).
const WAIT: Duration = Duration::from_secs(20);
/// The session of every test's tmux server.
const SESSION: &str = "kvmtop";
/// What the wrapper shell prints once kvmtop has ended.
const EXITED: &str = "kvmtop-exit=";

fn tmux_present(test: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("tmux").is_file()));
    if !found {
        kvmreg_testkit::skip(
            kvmreg_testkit::Facility::Tmux,
            test,
            "tmux is not installed (apt-get install tmux); the views were NOT tested in a terminal",
        );
    }
    found
}

/// A tmux server of its own (`tmux -L kvmtop-test-<pid>-<tag>`), killed on
/// drop however the test ends, its socket file removed.
struct Tmux {
    socket: String,
    /// The socket's path, once the server said it.
    socket_path: Option<PathBuf>,
}

impl Tmux {
    /// A detached `w` x `h` session running `shell` (an `sh -c` line).
    fn start(tag: &str, w: u16, h: u16, shell: &str) -> Tmux {
        let mut t = Tmux {
            socket: format!("kvmtop-test-{}-{tag}", std::process::id()),
            socket_path: None,
        };
        let (w, h) = (w.to_string(), h.to_string());
        let o = t.run(&[
            "new-session",
            "-d",
            "-s",
            SESSION,
            "-x",
            &w,
            "-y",
            &h,
            shell,
        ]);
        assert!(
            o.status.success(),
            "tmux new-session failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let p = t.format("#{socket_path}");
        t.socket_path = (!p.is_empty()).then(|| PathBuf::from(p));
        t
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("run tmux")
    }

    /// The pane's text; `None` once the session is gone.
    fn screen(&self) -> Option<String> {
        let o = self.run(&["capture-pane", "-p", "-t", SESSION]);
        o.status
            .success()
            .then(|| String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// Type `text` literally.
    fn type_text(&self, text: &str) {
        let o = self.run(&["send-keys", "-t", SESSION, "-l", text]);
        assert!(o.status.success(), "tmux send-keys -l {text:?} failed");
    }

    /// Press a key by its tmux name (`Enter`, `Escape`).
    fn press(&self, key: &str) {
        let o = self.run(&["send-keys", "-t", SESSION, key]);
        assert!(o.status.success(), "tmux send-keys {key} failed");
    }

    fn resize(&self, w: u16, h: u16) {
        let o = self.run(&[
            "resize-window",
            "-t",
            SESSION,
            "-x",
            &w.to_string(),
            "-y",
            &h.to_string(),
        ]);
        assert!(
            o.status.success(),
            "tmux resize-window failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }

    /// The pid of kvmtop: the child of the pane's shell, found by the
    /// parent pid in `/proc/*/stat` (`/proc/<pid>/task/<tid>/children`
    /// needs CONFIG_PROC_CHILDREN, which the test VM's kernel lacks).
    fn kvmtop_pid(&self) -> u32 {
        let sh: u32 = self.format("#{pane_pid}").parse().expect("the pane's pid");
        let child = std::fs::read_dir("/proc")
            .expect("/proc")
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .find(|pid| {
                std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .ok()
                    .and_then(|s| {
                        let (_, rest) = s.rsplit_once(") ")?;
                        rest.split(' ').nth(1)?.parse::<u32>().ok()
                    })
                    == Some(sh)
            });
        child.unwrap_or_else(|| panic!("the pane's shell {sh} runs no child"))
    }

    /// Wait until kvmtop (`pid`) is stopped (`stopped`) or running again,
    /// with the terminal given back or taken: the normal screen in cooked,
    /// echoing mode while stopped, the alternate screen with frames after.
    fn wait_stopped(&self, pid: u32, stopped: bool) {
        let start = Instant::now();
        let state = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| Some(s.rsplit_once(") ")?.1.starts_with('T')))
        };
        while state() != Some(stopped) {
            assert!(
                start.elapsed() < WAIT,
                "kvmtop {pid} {} within {} s; screen:\n{}",
                if stopped {
                    "did not stop"
                } else {
                    "was not continued"
                },
                WAIT.as_secs(),
                self.screen().unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        if stopped {
            // The process stops only after giving the terminal back.
            assert_eq!(self.format("#{alternate_on}"), "0", "alternate screen kept");
            let tty = self.format("#{pane_tty}");
            let o = Command::new("stty")
                .args(["-a", "-F", &tty])
                .output()
                .expect("run stty");
            let modes = String::from_utf8_lossy(&o.stdout);
            let has = |m: &str| modes.split([' ', ';', '\n']).any(|w| w == m);
            assert!(
                has("icanon") && has("echo"),
                "a stopped kvmtop left {tty} raw:\n{modes}"
            );
        } else {
            self.wait_for("kvmtop's screen again", |s| {
                s.starts_with("kvmtop - ") && self.format("#{alternate_on}") == "1"
            });
        }
    }

    fn signal(&self, pid: u32, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -{sig} {pid} failed");
    }

    /// A tmux format of the pane, e.g. `#{alternate_on}`.
    fn format(&self, f: &str) -> String {
        let o = self.run(&["display-message", "-p", "-t", SESSION, f]);
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Poll the screen until `ok` holds; fail after [`WAIT`], or at once
    /// if kvmtop ended while `ok` did not expect it, showing the last screen.
    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        self.poll(what, ok, true)
    }

    fn poll(&self, what: &str, ok: impl Fn(&str) -> bool, running: bool) -> String {
        let start = Instant::now();
        let mut last = String::new();
        loop {
            match self.screen() {
                Some(s) if ok(&s) => return s,
                Some(s) => last = s,
                None => {
                    panic!("waiting for {what}: the tmux session is gone; last screen:\n{last}")
                }
            }
            if running && last.contains(EXITED) {
                panic!("waiting for {what}: kvmtop ended; screen:\n{last}");
            }
            if start.elapsed() > WAIT {
                panic!(
                    "waiting for {what}: not on the screen within {} s; last screen:\n{last}",
                    WAIT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// After `q`: kvmtop exited 0 and left the terminal as it found it.
    fn assert_quit_cleanly(&self) {
        self.assert_ended_cleanly(0);
    }

    /// kvmtop exited with `status` and left the terminal as it found it.
    fn assert_ended_cleanly(&self, status: i32) {
        let s = self.poll(
            "kvmtop to exit and the wrapper to report",
            |s| s.lines().any(|l| l.starts_with("tty:")),
            false,
        );
        assert!(
            s.contains(&format!("{EXITED}{status}")),
            "kvmtop did not exit with status {status}:\n{s}"
        );
        // The alternate screen is left: kvmtop's frames are gone, only the
        // wrapper's lines remain, and tmux says so.
        assert_eq!(self.format("#{alternate_on}"), "0", "{s}");
        assert!(
            !s.lines().any(|l| l.starts_with("kvmtop ")),
            "kvmtop's screen is still shown after it quit:\n{s}"
        );
        // Raw mode is undone: the line discipline is cooked and echoes.
        let modes = s
            .lines()
            .find_map(|l| l.strip_prefix("tty:"))
            .unwrap_or_else(|| panic!("no tty line:\n{s}"));
        let modes: Vec<&str> = modes.split_whitespace().collect();
        assert_eq!(modes, ["icanon", "echo"], "terminal left in raw mode:\n{s}");
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
        // tmux leaves the socket file behind.
        if let Some(p) = &self.socket_path {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// `'s'` for `sh`.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The `sh -c` line: kvmtop with `args`, then its exit status and the
/// terminal modes it left, then a pause so the pane stays readable.
fn shell_line(args: &[&str]) -> String {
    shell_line_env("", args)
}

/// [`shell_line`] with `env` (`NAME=value `) before the command.
fn shell_line_env(env: &str, args: &[&str]) -> String {
    let mut l = format!("{env}{}", quote(env!("CARGO_BIN_EXE_kvmtop")));
    for a in args {
        l.push(' ');
        l.push_str(&quote(a));
    }
    l.push_str(&format!(
        "; echo {EXITED}$?; echo \"tty: $(stty -a | tr ' ;' '\\n\\n' | grep -x -e icanon -e -icanon -e echo -e -echo | tr '\\n' ' ')\"; exec sleep 600"
    ));
    l
}

/// The overview's rows of `screen` as (pid, line), in screen order: lines
/// whose third column is a number (NAME ID PID ...).
fn rows(screen: &str) -> Vec<(u32, String)> {
    screen
        .lines()
        .filter_map(|l| {
            let pid = l.split_whitespace().nth(2)?.parse().ok()?;
            Some((pid, l.to_string()))
        })
        .collect()
}

fn has_row(screen: &str, pid: u32) -> bool {
    rows(screen).iter().any(|(p, _)| *p == pid)
}

fn status_line(screen: &str) -> &str {
    screen
        .lines()
        .find(|l| l.starts_with("sort: ") || l.starts_with("filter: "))
        .unwrap_or("")
}

fn pids_in_order(screen: &str, a: u32, b: u32) -> Option<Vec<u32>> {
    let v: Vec<u32> = rows(screen).into_iter().map(|(p, _)| p).collect();
    (v.contains(&a) && v.contains(&b)).then_some(v)
}

fn require_guest_samples() -> bool {
    std::env::var("KVMREG_REQUIRE_GUEST_SAMPLES").is_ok_and(|v| v == "1")
}

#[test]
fn live_view_keys_profile_vanished_guest_resize_and_quit_in_tmux() {
    let test = "live_view_keys_profile_vanished_guest_resize_and_quit_in_tmux";
    if !kvm_usable(test) || !tmux_present(test) {
        return;
    }
    let syms = TempDir::new("tmux-syms");
    fixture_symbols(&syms.0);
    let kallsyms: PathBuf = syms.0.join("kallsyms");
    let kallsyms = kallsyms.to_str().expect("utf-8 temp path");
    // Two fixtures of one guest each: killing one leaves the other running.
    let fa = Fixture::start(&["tmuxa"], 50);
    let fb = Fixture::start(&["tmuxb"], 50);
    let (pa, pb) = (fa.lines[0].pid, fb.lines[0].pid);
    let t = Tmux::start(
        "live",
        140,
        40,
        &shell_line(&["-d", "0.5", "--guestkallsyms", kallsyms]),
    );

    let s = t.wait_for("the header and both guests' rows", |s| {
        s.starts_with("kvmtop - ") && s.contains("NAME") && has_row(s, pa) && has_row(s, pb)
    });
    assert!(status_line(&s).starts_with("sort: %CPU"), "{s}");

    // Help: ? opens it, Escape closes it; ? closes it too (any key does).
    for close in ["Escape", "?"] {
        t.type_text("?");
        t.wait_for("the help box", |s| s.contains("kvmtop keys"));
        if close == "?" {
            t.type_text("?");
        } else {
            t.press(close);
        }
        t.wait_for(&format!("the help box closed by {close}"), |s| {
            !s.contains("kvmtop keys") && has_row(s, pa)
        });
    }

    // Sorting: by pid ascending, reversed, by name, back to %CPU.
    t.type_text("I");
    let s = t.wait_for("rows sorted by pid", |s| {
        status_line(s).starts_with("sort: PID ")
            && pids_in_order(s, pa, pb).is_some_and(|v| v.windows(2).all(|w| w[0] < w[1]))
    });
    assert!(!status_line(&s).contains("reversed"), "{s}");
    t.type_text("r");
    t.wait_for("rows sorted by pid, reversed", |s| {
        status_line(s).starts_with("sort: PID (reversed)")
            && pids_in_order(s, pa, pb).is_some_and(|v| v.windows(2).all(|w| w[0] > w[1]))
    });
    t.type_text("r");
    t.type_text("N");
    t.wait_for("the name sort", |s| {
        status_line(s).starts_with("sort: NAME ")
    });
    t.type_text("P");
    t.wait_for("the %CPU sort", |s| {
        status_line(s).starts_with("sort: %CPU ")
    });

    // Filter by guest b's pid: only its row.
    t.type_text("/");
    t.type_text(&pb.to_string());
    t.wait_for("the filter being typed", |s| {
        status_line(s) == format!("filter: {pb}_")
    });
    t.press("Enter");
    let s = t.wait_for("only guest b's row", |s| {
        status_line(s).contains(&format!("filter: {pb}")) && has_row(s, pb) && !has_row(s, pa)
    });
    assert_eq!(rows(&s).len(), 1, "the filter left other rows:\n{s}");

    // Enter: the profile of the selected (only) guest, with the fixture's
    // kallsyms from --guestkallsyms.
    t.press("Enter");
    let s = t.wait_for("guest b's profile frame", |s| {
        s.starts_with("kvmtop profile - guest ")
            && (s.contains("cannot profile:") || s.contains("samples: "))
    });
    let title = s.lines().next().unwrap_or("");
    if s.contains("cannot profile:") {
        // Perf sampling refused here: the screen must say so, for guest b.
        assert!(s.contains(&format!("pid {pb}")), "{s}");
        eprintln!("NOT CHECKED: the profile could not sample here:\n{s}");
    } else {
        assert!(
            title.contains(&format!(", pid {pb})")),
            "profile of the wrong guest:\n{s}"
        );
        assert!(
            s.contains(&format!("note: kallsyms from {kallsyms}")),
            "--guestkallsyms did not reach the live view's profile:\n{s}"
        );
        assert!(!s.contains("no guest symbols"), "{s}");
        // Guest-mode samples name the fixture's functions, where this host
        // gives any (not without a hardware PMU): watch the frames a while.
        let named = |s: &str| {
            s.lines().any(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                w.len() >= 3 && ["hot_a", "hot_b", "main"].contains(&w[2])
            })
        };
        let start = Instant::now();
        let mut seen = None;
        while start.elapsed() < Duration::from_secs(8) {
            match t.screen() {
                Some(s) if named(&s) => {
                    seen = Some(s);
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        match seen {
            Some(s) => eprintln!("profile screen with guest functions:\n{s}"),
            None if require_guest_samples() => panic!(
                "KVMREG_REQUIRE_GUEST_SAMPLES=1 but no profile frame named hot_a, hot_b or main in 8 s; last screen:\n{}",
                t.screen().unwrap_or_default()
            ),
            None => eprintln!(
                "NOT CHECKED: no guest-mode samples named a fixture function in 8 s here (few or no guest-mode samples without a hardware PMU); the title, the sample counter and the kallsyms note were checked:\n{s}"
            ),
        }
    }
    t.type_text("q");
    t.wait_for("the overview again, still filtered", |s| {
        s.starts_with("kvmtop - ") && status_line(s).contains(&format!("filter: {pb}"))
    });
    t.press("Escape");
    t.wait_for("both rows once the filter is cleared", |s| {
        status_line(s).starts_with("sort: ") && has_row(s, pa) && has_row(s, pb)
    });

    // A guest that ends leaves the view within a few frames.
    drop(fa);
    t.wait_for("guest a's row to go once it is killed", |s| {
        s.starts_with("kvmtop - ") && !has_row(s, pa) && has_row(s, pb)
    });

    // A small window: still drawing (the clock line changes), help fits.
    t.resize(60, 15);
    let s = t.wait_for("a 60x15 frame", |s| {
        s.starts_with("kvmtop - ") && s.lines().all(|l| l.chars().count() <= 60)
    });
    let first = s.lines().next().unwrap_or("").to_string();
    t.wait_for("a later frame in the small window", |s| {
        s.starts_with("kvmtop - ") && s.lines().next() != Some(&first)
    });
    t.type_text("?");
    t.wait_for("the help box in the small window", |s| {
        s.contains("kvmtop keys")
    });
    t.press("Escape");
    t.resize(140, 40);
    t.wait_for("guest b's row after growing the window", |s| {
        !s.contains("kvmtop keys") && has_row(s, pb)
    });

    t.type_text("q");
    t.assert_quit_cleanly();
    drop(fb);
}

#[test]
fn selection_follows_the_guest_and_sigterm_restores_the_terminal_in_tmux() {
    let test = "selection_follows_the_guest_and_sigterm_restores_the_terminal_in_tmux";
    if !kvm_usable(test) || !tmux_present(test) {
        return;
    }
    // An idle guest and a busy one: by %CPU the busy one comes first.
    let idle = Fixture::start(&["selidle"], 0);
    let busy = Fixture::start(&["selbusy"], 90);
    let (pi, pb) = (idle.lines[0].pid, busy.lines[0].pid);
    let t = Tmux::start("select", 140, 40, &shell_line(&["-d", "0.5"]));
    t.wait_for("both guests' rows", |s| has_row(s, pi) && has_row(s, pb));
    t.type_text("I");
    let s = t.wait_for("rows sorted by pid", |s| {
        status_line(s).starts_with("sort: PID ") && pids_in_order(s, pi, pb).is_some()
    });
    // Other tests' guests may be listed too: select the busy guest by its
    // place in the pid order, then sort by %CPU (where it moves up) and let
    // frames pass: the highlight stays on it wherever its row goes.
    let by_pid: Vec<u32> = rows(&s).into_iter().map(|(p, _)| p).collect();
    let at = by_pid.iter().position(|&p| p == pb).unwrap_or(0);
    for _ in 0..at {
        t.press("Down");
    }
    t.type_text("P");
    let s = t.wait_for(
        "rows sorted by %CPU, the busy guest above the idle one",
        |s| {
            status_line(s).starts_with("sort: %CPU")
                && pids_in_order(s, pb, pi).is_some_and(|v| {
                    v.iter().position(|&p| p == pb) < v.iter().position(|&p| p == pi)
                })
        },
    );
    let first = s.lines().next().unwrap_or("").to_string();
    t.wait_for("more frames", |s| s.lines().next() != Some(&first));
    t.press("Enter");
    let s = t.wait_for("the selected guest's profile", |s| {
        s.starts_with("kvmtop profile - guest ")
    });
    let name = &busy.lines[0].name;
    let title = s.lines().next().unwrap_or("");
    assert!(
        title.contains(name.as_str()) || title.contains(&format!("pid{pb}")),
        "Enter profiled another guest than the one selected ({name}, pid {pb}):\n{s}"
    );
    t.type_text("q");
    t.wait_for("the overview again", |s| s.starts_with("kvmtop - "));
    // SIGTERM: the terminal is given back (cooked, echoing, the normal
    // screen) and the exit status says the signal, as a shell expects.
    let pid = t.kvmtop_pid();
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -TERM {pid} failed");
    t.assert_ended_cleanly(128 + 15);
    drop((idle, busy));
}

#[test]
fn a_long_list_scrolls_to_its_end_and_enter_opens_the_guest_there_in_tmux() {
    let test = "a_long_list_scrolls_to_its_end_and_enter_opens_the_guest_there_in_tmux";
    if !kvm_usable(test) || !tmux_present(test) {
        return;
    }
    // 18 guests in one process; the pane shows about 6 rows.
    let names: Vec<String> = (1..=18).map(|i| format!("sc{i:02}")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let fx = Fixture::start_single_process(&names, 0);
    let pid = fx.lines[0].pid;
    let t = Tmux::start("scroll", 140, 12, &shell_line(&["-d", "0.5"]));
    let s = t.wait_for("the first frame", |s| {
        s.lines().next().is_some_and(|l| l.contains("backend: "))
    });
    // How kvmtop labels them: the kernel's names on a registry kernel,
    // else the pid and the VM fd.
    let registry = s
        .lines()
        .next()
        .is_some_and(|l| l.contains("backend: proc-kvm"));
    let label = |l: &common::Line| {
        if registry {
            l.name.clone()
        } else {
            format!("pid{}:{}", l.pid, l.vm_fd)
        }
    };
    let last = fx.lines.iter().map(label).max().expect("guests");
    // Only this test's guests (other tests run theirs), sorted by name.
    t.type_text(&format!("/{pid}"));
    t.press("Enter");
    t.type_text("N");
    let s = t.wait_for("this process' guests by name", |s| {
        let r = rows(s);
        status_line(s).starts_with("sort: NAME")
            && !r.is_empty()
            && r.iter().all(|(p, _)| *p == pid)
    });
    assert!(
        !s.contains(&last),
        "the last guest fits without scrolling:\n{s}"
    );
    t.press("End");
    let s = t.wait_for("the list scrolled to its last guest", |s| {
        rows(s).last().is_some_and(|(_, l)| l.starts_with(&last))
    });
    assert!(
        rows(&s).len() < 18,
        "all 18 rows fit: nothing scrolled:\n{s}"
    );
    t.press("Enter");
    let s = t.wait_for("the last guest's profile", |s| {
        s.starts_with("kvmtop profile - guest ")
    });
    assert!(
        s.lines().next().is_some_and(|l| l.contains(&last)),
        "Enter did not open the guest under the highlight ({last}):\n{s}"
    );
    t.type_text("q");
    t.wait_for("the overview again", |s| s.starts_with("kvmtop - "));
    t.type_text("q");
    t.assert_quit_cleanly();
    drop(fx);
}

#[test]
fn a_closed_terminal_ends_kvmtop_in_tmux() {
    let test = "a_closed_terminal_ends_kvmtop_in_tmux";
    if !kvm_usable(test) || !tmux_present(test) {
        return;
    }
    let fx = Fixture::start(&["hup"], 0);
    let t = Tmux::start("hangup", 140, 40, &shell_line(&["-d", "0.5"]));
    t.wait_for("the guest's row", |s| has_row(s, fx.lines[0].pid));
    let pid = t.kvmtop_pid();
    // The terminal goes away under kvmtop (the window closed): it must end,
    // not spin on a terminal that only gives end-of-file.
    drop(t);
    let start = Instant::now();
    let running = || {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ").map(|(_, r)| !r.starts_with('Z')))
            .unwrap_or(false)
    };
    while running() {
        if start.elapsed() > Duration::from_secs(5) {
            let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
            panic!("kvmtop {pid} still runs 5 s after its terminal closed");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(fx);
}

/// Write `value` to a fake debugfs counter file at once (no torn reads).
fn write_counter(dir: &Path, name: &str, value: u64) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, format!("{value}\n")).expect("write counter");
    std::fs::rename(&tmp, dir.join(name)).expect("rename counter");
}

/// The data rows of the `stat` table as (event, total, per second), in
/// screen order.
fn stat_rows(screen: &str) -> Vec<(String, u64, f64)> {
    screen
        .lines()
        .skip_while(|l| !l.starts_with("EVENT"))
        .skip(1)
        .filter_map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            (w.len() == 4).then_some(())?;
            Some((w[0].to_string(), w[1].parse().ok()?, w[2].parse().ok()?))
        })
        .collect()
}

#[test]
fn live_stat_in_tmux() {
    let test = "live_stat_in_tmux";
    if !kvm_usable(test) || !tmux_present(test) {
        return;
    }
    let fx = Fixture::start(&["tmuxstat"], 30);
    let g = &fx.lines[0];
    let pid = g.pid.to_string();

    // What this host's kernel gives: counters, or the reason there are none.
    let t = Tmux::start(
        "stat",
        120,
        30,
        &shell_line(&["stat", "-g", &pid, "-d", "0.5"]),
    );
    let s = t.wait_for(
        "the stat title and its counters or why there are none",
        |s| {
            s.starts_with("kvmtop stat - guest ")
                && (s.contains("cannot read the KVM stats") || !stat_rows(s).is_empty())
        },
    );
    assert!(
        s.lines()
            .next()
            .unwrap_or("")
            .contains(&format!("pid {pid})")),
        "{s}"
    );
    if s.contains("cannot read the KVM stats") {
        assert!(s.contains("trying again every 0.5s"), "{s}");
        eprintln!(
            "NOTE: no stats source for another process' VM on this kernel; the view says:\n{s}"
        );
    } else {
        eprintln!("NOTE: this kernel's counters:\n{s}");
    }
    // On a registry kernel with vcpu_stats the counters that move are the
    // busy guest's own, summed over its vCPUs, from the registry.
    let vcpu_stats =
        g.id.map(|id| std::path::Path::new(&format!("/proc/{pid}/kvm/{id}/vcpu_stats")).exists())
            .unwrap_or(false);
    if vcpu_stats {
        let s = t.wait_for("exits with a rate, from the registry", |s| {
            stat_rows(s)
                .iter()
                .any(|(n, _, rate)| n == "exits" && *rate > 0.0)
                && s.lines()
                    .any(|l| l.starts_with("exits ") && l.trim_end().ends_with(" proc-kvm"))
        });
        eprintln!("stat with the registry's vcpu_stats:\n{s}");
    }
    t.type_text("?");
    t.wait_for("the stat help", |s| s.contains("kvmtop stat keys"));
    t.press("Escape");
    t.wait_for("the stat help closed", |s| !s.contains("kvmtop stat keys"));
    t.resize(40, 10);
    t.wait_for("a 40x10 stat screen", |s| {
        s.starts_with("kvmtop stat") && s.lines().all(|l| l.chars().count() <= 40)
    });
    t.type_text("q");
    t.assert_quit_cleanly();
    drop(t);

    // That was all there is to see on a registry kernel with vcpu_stats.
    if vcpu_stats {
        return;
    }

    // Elsewhere, counters that move: a debugfs directory (given with
    // --debugfs-root) for the guest, where `exits` grows and `halt_exits`
    // stays put.
    let dbg = TempDir::new("tmux-debugfs");
    let vm = dbg.0.join(format!("kvm/{}-{}", g.pid, g.vm_fd));
    std::fs::create_dir_all(&vm).expect("mkdir");
    write_counter(&vm, "exits", 0);
    write_counter(&vm, "halt_exits", 1_000_000);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (vm, stop) = (vm.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                n += 100;
                write_counter(&vm, "exits", n);
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let t = Tmux::start(
        "statdbg",
        120,
        30,
        &shell_line(&[
            "stat",
            "-g",
            &pid,
            "-d",
            "0.5",
            "--debugfs-root",
            dbg.path(),
        ]),
    );
    let s = t.wait_for("exits above halt_exits, with a rate", |s| {
        let r = stat_rows(s);
        let at = |name: &str| r.iter().position(|(n, _, _)| n == name);
        match (at("exits"), at("halt_exits")) {
            (Some(e), Some(h)) => e < h && r[e].2 > 0.0 && r[h].2 == 0.0 && r[h].1 == 1_000_000,
            _ => false,
        }
    });
    assert!(
        s.lines()
            .any(|l| l.starts_with("exits ") && l.trim_end().ends_with(" debugfs")),
        "{s}"
    );
    eprintln!("stat with moving counters:\n{s}");
    t.type_text("q");
    t.assert_quit_cleanly();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().expect("counter writer");
}

#[test]
fn ctrl_z_and_sigtstp_give_the_terminal_back_and_sigcont_resumes_in_tmux() {
    let test = "ctrl_z_and_sigtstp_give_the_terminal_back_and_sigcont_resumes_in_tmux";
    if !tmux_present(test) {
        return;
    }
    // No guests needed: the overview of whatever runs.
    let t = Tmux::start("suspend", 120, 20, &shell_line(&["-d", "0.5"]));
    t.wait_for("the first frame", |s| s.starts_with("kvmtop - "));
    let pid = t.kvmtop_pid();
    // Ctrl-Z reaches raw-mode kvmtop as a key; it suspends itself the way
    // a shell's job control expects (the pane's sh -c has none, so the
    // test continues it, as `fg` would).
    t.press("C-z");
    t.wait_stopped(pid, true);
    t.signal(pid, "CONT");
    t.wait_stopped(pid, false);
    // SIGTSTP from outside (e.g. `kill -TSTP`) does the same.
    t.signal(pid, "TSTP");
    t.wait_stopped(pid, true);
    t.signal(pid, "CONT");
    t.wait_stopped(pid, false);
    t.type_text("q");
    t.assert_quit_cleanly();
}

#[test]
fn a_panic_in_the_live_view_restores_the_terminal_and_shows_its_message_in_tmux() {
    let test = "a_panic_in_the_live_view_restores_the_terminal_and_shows_its_message_in_tmux";
    if !tmux_present(test) {
        return;
    }
    let t = Tmux::start(
        "panic",
        160,
        20,
        &shell_line_env("KVMTOP_TEST_PANIC=1 ", &["-d", "0.3"]),
    );
    // Rust's exit status for a panic, with the terminal as it was.
    t.assert_ended_cleanly(101);
    let s = t.screen().unwrap_or_default();
    assert!(
        s.contains("the live view panics after its first frame"),
        "the panic message is not on the normal screen:\n{s}"
    );
}
