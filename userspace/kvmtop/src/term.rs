//! The terminal of the full-screen views (the overview and its profile,
//! `kvmtop profile`, `kvmtop stat`): raw mode and the alternate screen,
//! restored however a view ends (return, error, panic, `SIGTERM`,
//! `SIGHUP`, `SIGINT`), suspended on `Ctrl-Z`/`SIGTSTP` and taken back on
//! `SIGCONT` the way `top` does; waiting for keys between frames; and the
//! help box every view draws the same way.

use crossterm::event::{self, Event, KeyCode, KeyEvent, KeyModifiers};
use ratatui::layout::Rect;
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Clear, Paragraph};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Once, OnceLock};
use std::time::{Duration, Instant};

/// The signals a view acts on; `None` until the first view starts.
static SIGNALS: OnceLock<Signals> = OnceLock::new();

/// The last ending signal, and whether a stop or a continue came, as the
/// handlers (signal-hook's, which only store) left them.
struct Signals {
    end: Arc<AtomicUsize>,
    stop: Arc<AtomicUsize>,
    cont: Arc<AtomicUsize>,
}

/// A view ended by a signal: the caller exits with 128 + the number after
/// the terminal is restored (by [`TermGuard`]'s drop on the way out).
#[derive(Debug, thiserror::Error)]
#[error("terminated by signal {0}")]
pub struct Terminated(pub i32);

fn signals() -> anyhow::Result<&'static Signals> {
    if let Some(s) = SIGNALS.get() {
        return Ok(s);
    }
    let s = Signals {
        end: Arc::new(AtomicUsize::new(0)),
        stop: Arc::new(AtomicUsize::new(0)),
        cont: Arc::new(AtomicUsize::new(0)),
    };
    use signal_hook::consts::{SIGCONT, SIGHUP, SIGINT, SIGTERM, SIGTSTP};
    for sig in [SIGTERM, SIGHUP, SIGINT] {
        signal_hook::flag::register_usize(sig, Arc::clone(&s.end), sig as usize)?;
    }
    signal_hook::flag::register_usize(SIGTSTP, Arc::clone(&s.stop), 1)?;
    signal_hook::flag::register_usize(SIGCONT, Arc::clone(&s.cont), 1)?;
    let s = SIGNALS.get_or_init(|| s);
    watchdog(Arc::clone(&s.end));
    Ok(s)
}

/// crossterm 0.28 reads a terminal that hung up in a loop that never
/// returns (end-of-file for ever: crossterm-rs/crossterm#793), so a view
/// waiting for keys there would never see the flags above. This thread
/// ends the process in that case: at once when the terminal hung up
/// (there is nothing left to restore), and when an ending signal has not
/// been taken by the view within a second (the terminal restored first).
fn watchdog(end: Arc<AtomicUsize>) {
    let spawned = std::thread::Builder::new()
        .name("kvmtop-watchdog".into())
        .spawn(move || {
            let mut pending: Option<Instant> = None;
            loop {
                std::thread::sleep(Duration::from_millis(200));
                if hung_up() {
                    std::process::exit(128 + libc::SIGHUP);
                }
                let sig = end.load(Ordering::Relaxed);
                match (sig, pending) {
                    (0, _) => pending = None,
                    (_, None) => pending = Some(Instant::now()),
                    (sig, Some(at)) if at.elapsed() > Duration::from_secs(1) => {
                        restore();
                        std::process::exit(128 + sig as i32);
                    }
                    _ => {}
                }
            }
        });
    if let Err(e) = spawned {
        eprintln!("kvmtop: no watchdog thread ({e}): a closed terminal may leave kvmtop running");
    }
}

/// Whether a view holds the terminal (raw mode, maybe the alternate
/// screen): restoring twice would be wrong, not just wasted, since leaving
/// the alternate screen also puts the cursor back where it was on entry,
/// and a panic's message printed by then would be overwritten.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Leave the alternate screen and raw mode, once (errors ignored: this
/// runs on the way out, whatever state the terminal is in).
fn restore() {
    if !TAKEN.swap(false, Ordering::SeqCst) {
        return;
    }
    let _ = crossterm::execute!(
        std::io::stdout(),
        crossterm::terminal::LeaveAlternateScreen,
        crossterm::cursor::Show
    );
    let _ = crossterm::terminal::disable_raw_mode();
}

fn take_over() -> std::io::Result<()> {
    crossterm::terminal::enable_raw_mode()?;
    TAKEN.store(true, Ordering::SeqCst);
    crossterm::execute!(std::io::stdout(), crossterm::terminal::EnterAlternateScreen)
}

/// Restores the terminal however the view ends (return, error, panic).
pub struct TermGuard;

impl TermGuard {
    fn enter() -> anyhow::Result<TermGuard> {
        signals()?;
        // A panic's message must reach the normal screen: the hook restores
        // the terminal before the default hook prints (the guard's drop
        // would come only after, during unwinding).
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            let print = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                restore();
                print(info);
            }));
        });
        crossterm::terminal::enable_raw_mode().map_err(|e| {
            anyhow::anyhow!(
                "the live view needs a terminal ({e}); for scripts use batch mode: kvmtop -b"
            )
        })?;
        TAKEN.store(true, Ordering::SeqCst);
        let g = TermGuard;
        crossterm::execute!(std::io::stdout(), crossterm::terminal::EnterAlternateScreen)?;
        Ok(g)
    }
}

impl Drop for TermGuard {
    fn drop(&mut self) {
        restore();
    }
}

pub type Term = ratatui::Terminal<ratatui::backend::CrosstermBackend<std::io::Stdout>>;

/// Raw mode, the alternate screen and a cleared ratatui terminal; keep the
/// guard alive as long as the view runs.
pub fn terminal() -> anyhow::Result<(TermGuard, Term)> {
    let g = TermGuard::enter()?;
    let mut t = ratatui::Terminal::new(ratatui::backend::CrosstermBackend::new(std::io::stdout()))?;
    t.clear()?;
    Ok((g, t))
}

/// What the terminal said while a view waited for its next frame.
#[derive(Debug)]
pub enum Input {
    Key(KeyEvent),
    /// The window changed size, or the view came back from a stop: draw
    /// everything again.
    Redraw,
    /// `deadline` passed: time for the next frame.
    Timeout,
}

/// How long a wait for keys may last before the signal flags are looked
/// at again.
const SIGNAL_CHECK: Duration = Duration::from_millis(100);

/// The next key or redraw, or [`Input::Timeout`] at `deadline`. An ending
/// signal is an error ([`Terminated`]); `Ctrl-Z` or `SIGTSTP` stops the
/// process with the terminal given back, and the view takes it again when
/// continued.
pub fn next_input(deadline: Instant) -> anyhow::Result<Input> {
    let sig = signals()?;
    loop {
        let end = sig.end.swap(0, Ordering::Relaxed);
        if end != 0 {
            return Err(Terminated(end as i32).into());
        }
        if sig.stop.swap(0, Ordering::Relaxed) != 0 {
            suspend()?;
            return Ok(Input::Redraw);
        }
        if sig.cont.swap(0, Ordering::Relaxed) != 0 {
            // Stopped by someone else (SIGSTOP): the shell may have reset
            // the terminal meanwhile.
            take_over()?;
            return Ok(Input::Redraw);
        }
        if hung_up() {
            return Err(Terminated(libc::SIGHUP).into());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Input::Timeout);
        }
        if event::poll(left.min(SIGNAL_CHECK))? {
            match event::read()? {
                Event::Key(k)
                    if k.code == KeyCode::Char('z')
                        && k.modifiers.contains(KeyModifiers::CONTROL) =>
                {
                    suspend()?;
                    return Ok(Input::Redraw);
                }
                Event::Key(k) => return Ok(Input::Key(k)),
                Event::Resize(..) => return Ok(Input::Redraw),
                _ => {}
            }
        }
    }
}

/// The terminal hung up (its window, or the tmux server, went away):
/// reading it then gives end-of-file for ever, which crossterm's read
/// would spin through without returning, so it is checked first. (The
/// kernel's `SIGHUP` comes too, but it only sets a flag now.)
fn hung_up() -> bool {
    // Only a terminal on stdin is the one crossterm reads (otherwise it
    // opens /dev/tty); a closed pipe on stdin says nothing about it.
    // SAFETY: isatty only looks at the descriptor.
    if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
        return false;
    }
    let mut fds = [libc::pollfd {
        fd: libc::STDIN_FILENO,
        events: libc::POLLIN,
        revents: 0,
    }];
    // SAFETY: poll reads and writes the one pollfd passed, and returns at
    // once (timeout 0).
    let n = unsafe { libc::poll(fds.as_mut_ptr(), 1, 0) };
    n > 0 && fds[0].revents & (libc::POLLHUP | libc::POLLERR) != 0
}

/// Give the terminal back and stop, as a shell's job control expects;
/// take it again when continued.
fn suspend() -> anyhow::Result<()> {
    restore();
    // SAFETY: raise() with a valid signal number; SIGSTOP stops this
    // process until a SIGCONT.
    unsafe {
        libc::raise(libc::SIGSTOP);
    }
    if let Some(s) = SIGNALS.get() {
        s.cont.store(0, Ordering::Relaxed);
    }
    take_over()?;
    Ok(())
}

/// `lines` in a bordered box in the middle of the screen, cut to fit.
pub fn help_box(f: &mut ratatui::Frame, lines: &[&str]) {
    let area = f.area();
    let w = (lines.iter().map(|l| l.len()).max().unwrap_or(0) as u16 + 4).min(area.width);
    let h = (lines.len() as u16 + 2).min(area.height);
    let r = Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    };
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(lines.iter().map(|l| Line::from(*l)).collect::<Vec<_>>())
            .block(Block::default().borders(Borders::ALL).title(" help ")),
        r,
    );
}

/// Draw into a `w` x `h` test terminal and return its lines, trailing
/// blanks cut.
#[cfg(test)]
pub fn render(w: u16, h: u16, draw: impl FnOnce(&mut ratatui::Frame)) -> Vec<String> {
    let mut t = ratatui::Terminal::new(ratatui::backend::TestBackend::new(w, h)).unwrap();
    t.draw(draw).unwrap();
    let b = t.backend().buffer();
    (0..h)
        .map(|y| {
            (0..w)
                .map(|x| b[(x, y)].symbol())
                .collect::<String>()
                .trim_end()
                .to_string()
        })
        .collect()
}
