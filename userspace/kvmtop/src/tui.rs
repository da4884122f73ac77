//! The live full-screen view (ratatui + crossterm): the overview, one row
//! per guest, and a guest's profile after Enter.
//!
//! State and key handling ([`App`]) and drawing ([`draw`]) are free of the
//! terminal, so tests render into ratatui's `TestBackend` and read the text.

use crate::cli::{BatchArgs, Extra, SymbolArgs};
use crate::frame::{self, Frame as KFrame, Row, SamplingSummary};
use crate::profile::{self, ProfileFrame, Profiler};
use crate::render;
use crate::sampling::HeaderSampler;
use crate::term::{self, Input, Term};
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use kvmreg::model::GuestKey;
use kvmreg::{Config, Guest};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::Paragraph;
use std::cell::Cell;
use std::time::{Duration, Instant};

/// Sort orders, cycled with `s` or picked with their own key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sort {
    Cpu,
    Name,
    Pid,
    Exits,
    Memory,
}

impl Sort {
    fn next(self) -> Sort {
        match self {
            Sort::Cpu => Sort::Name,
            Sort::Name => Sort::Pid,
            Sort::Pid => Sort::Exits,
            Sort::Exits => Sort::Memory,
            Sort::Memory => Sort::Cpu,
        }
    }
    fn title(self) -> &'static str {
        match self {
            Sort::Cpu => "%CPU",
            Sort::Name => "NAME",
            Sort::Pid => "PID",
            Sort::Exits => "EXITS/s",
            Sort::Memory => "MEMORY",
        }
    }
}

/// What a key asks the loop to do.
#[derive(Debug, PartialEq)]
pub enum Action {
    None,
    Quit,
    OpenProfile(Box<Guest>),
    CloseProfile,
    OpenExits(Box<Guest>),
    CloseExits,
}

/// The exit reasons screen's state (`x`).
pub struct ExitsScreen {
    pub label: String,
    pub section: Option<crate::exits::ExitSection>,
    pub error: Option<String>,
}

/// The profile screen's state.
pub struct ProfileScreen {
    pub label: String,
    pub frame: Option<ProfileFrame>,
    pub error: Option<String>,
}

pub struct App {
    pub frame: Option<KFrame>,
    pub sort: Sort,
    pub reverse: bool,
    pub filter: String,
    pub editing_filter: bool,
    pub help: bool,
    /// The highlighted row's position in [`rows`](Self::rows).
    pub selected: usize,
    /// The highlighted guest: the selection follows it through re-sorts,
    /// renames and other guests coming and going, as htop's follows a pid.
    /// When it goes, the row at its place is selected.
    selected_key: Option<GuestKey>,
    /// The first row shown, and how many fit: set when drawing (the pane's
    /// height is known only then), read by the paging keys.
    scroll: Cell<usize>,
    page: Cell<usize>,
    pub profile: Option<ProfileScreen>,
    pub exits: Option<ExitsScreen>,
    /// The optional columns shown (`--columns`, W, O and D): kept for the
    /// whole run, whichever view is open.
    pub extra: Extra,
}

impl Default for App {
    fn default() -> Self {
        Self::new()
    }
}

/// The keys of the overview: its help box and the man page's KEYS
/// section are made from this one list.
pub const KEYS: &[(&str, &str)] = &[
    ("q", "quit (in a profile or the exits screen: back to the overview)"),
    ("? h", "this help (any key closes it)"),
    (
        "Up Down",
        "select a guest (also k j); the selection follows it",
    ),
    ("PgUp PgDn", "a page up or down"),
    ("Home End", "the first or the last guest"),
    ("Enter", "profile the selected guest"),
    (
        "x",
        "the selected guest's exits per reason (kvm_exit tracepoints; root, tracefs)",
    ),
    ("Esc", "back / clear the filter"),
    ("s", "next sort column"),
    ("P N I X M", "sort by %CPU, name, pid, exits/s, memory"),
    ("r", "reverse the sort"),
    (
        "W O D T",
        "show or hide %STEAL (vCPUs waiting for a host CPU), %OTHER (non-vCPU threads' CPU), RD/s WR/s (disk), NETRX/s NETTX/s (tap traffic)",
    ),
    ("/", "filter by name, pid or id (Enter ends input)"),
    ("Ctrl-Z", "suspend (the shell's fg resumes)"),
];

fn help_lines() -> Vec<String> {
    let mut v = vec!["kvmtop keys".to_string(), String::new()];
    v.extend(KEYS.iter().map(|(k, what)| format!("  {k:<10} {what}")));
    v
}

impl App {
    pub fn new() -> Self {
        App {
            frame: None,
            sort: Sort::Cpu,
            reverse: false,
            filter: String::new(),
            editing_filter: false,
            help: false,
            selected: 0,
            selected_key: None,
            scroll: Cell::new(0),
            page: Cell::new(1),
            profile: None,
            exits: None,
            extra: Extra::default(),
        }
    }

    /// The rows after filter and sort.
    pub fn rows(&self) -> Vec<&Row> {
        let Some(f) = &self.frame else {
            return Vec::new();
        };
        let needle = self.filter.to_lowercase();
        let mut v: Vec<&Row> = f
            .guests
            .iter()
            .filter(|r| {
                needle.is_empty()
                    || r.label().to_lowercase().contains(&needle)
                    || r.pid.to_string() == needle
                    || r.id.is_some_and(|i| i.to_string() == needle)
            })
            .collect();
        let num = |x: Option<f64>| x.unwrap_or(-1.0);
        v.sort_by(|a, b| {
            let o = match self.sort {
                Sort::Cpu => num(b.cpu_pct).total_cmp(&num(a.cpu_pct)),
                Sort::Exits => num(b.exits_per_s).total_cmp(&num(a.exits_per_s)),
                Sort::Memory => b.memory_bytes.cmp(&a.memory_bytes),
                Sort::Name => a.label().cmp(&b.label()),
                Sort::Pid => a.pid.cmp(&b.pid),
            };
            let o = o.then(a.pid.cmp(&b.pid)).then(a.id.cmp(&b.id));
            if self.reverse {
                o.reverse()
            } else {
                o
            }
        });
        v
    }

    pub fn set_frame(&mut self, f: KFrame) {
        self.frame = Some(f);
        self.follow_selection();
    }

    /// Put the highlight back on the selected guest after the rows changed
    /// (a new frame, another sort or filter); a guest that is gone leaves
    /// the highlight at its place, on the guest now there.
    fn follow_selection(&mut self) {
        let rows = self.rows();
        let at = self
            .selected_key
            .and_then(|k| rows.iter().position(|r| r.guest.key() == k));
        let selected = at.unwrap_or(self.selected.min(rows.len().saturating_sub(1)));
        let key = rows.get(selected).map(|r| r.guest.key());
        self.selected = selected;
        self.selected_key = key;
    }

    /// Move the highlight to row `i` (clamped) and select its guest.
    fn select(&mut self, i: usize) {
        let rows = self.rows();
        let i = i.min(rows.len().saturating_sub(1));
        let key = rows.get(i).map(|r| r.guest.key());
        self.selected = i;
        self.selected_key = key;
    }

    /// The first row to show in a pane of `page` rows: the last one used,
    /// moved just enough to show the highlight.
    fn scroll_for(&self, page: usize) -> usize {
        let page = page.max(1);
        let top = self.scroll.get().min(self.selected);
        let top = top.max((self.selected + 1).saturating_sub(page));
        self.scroll.set(top);
        self.page.set(page);
        top
    }

    pub fn key(&mut self, k: KeyEvent) -> Action {
        if k.kind == KeyEventKind::Release {
            return Action::None;
        }
        if k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL) {
            return Action::Quit;
        }
        if self.help {
            self.help = false;
            return Action::None;
        }
        if self.editing_filter {
            match k.code {
                KeyCode::Enter => self.editing_filter = false,
                KeyCode::Esc => {
                    self.editing_filter = false;
                    self.filter.clear();
                }
                KeyCode::Backspace => {
                    self.filter.pop();
                }
                KeyCode::Char(c) => self.filter.push(c),
                _ => {}
            }
            self.follow_selection();
            return Action::None;
        }
        // A guest's screen (exits, or a profile) over the overview: only
        // help and back.
        if self.exits.is_some() || self.profile.is_some() {
            return match k.code {
                KeyCode::Char('q') | KeyCode::Esc | KeyCode::Backspace => {
                    if self.exits.take().is_some() {
                        Action::CloseExits
                    } else {
                        self.profile = None;
                        Action::CloseProfile
                    }
                }
                KeyCode::Char('?') | KeyCode::Char('h') => {
                    self.help = true;
                    Action::None
                }
                _ => Action::None,
            };
        }
        match k.code {
            KeyCode::Char('q') => return Action::Quit,
            KeyCode::Char('?') | KeyCode::Char('h') => self.help = true,
            KeyCode::Char('s') => self.sort = self.sort.next(),
            KeyCode::Char('P') => self.sort = Sort::Cpu,
            KeyCode::Char('N') => self.sort = Sort::Name,
            KeyCode::Char('I') => self.sort = Sort::Pid,
            KeyCode::Char('X') => self.sort = Sort::Exits,
            KeyCode::Char('M') => self.sort = Sort::Memory,
            KeyCode::Char('r') => self.reverse = !self.reverse,
            KeyCode::Char('W') => self.extra.steal = !self.extra.steal,
            KeyCode::Char('O') => self.extra.other = !self.extra.other,
            KeyCode::Char('D') => self.extra.disk = !self.extra.disk,
            KeyCode::Char('T') => self.extra.net = !self.extra.net,
            KeyCode::Char('/') => {
                self.editing_filter = true;
                self.filter.clear();
            }
            KeyCode::Esc => self.filter.clear(),
            KeyCode::Up | KeyCode::Char('k') => self.select(self.selected.saturating_sub(1)),
            KeyCode::Down | KeyCode::Char('j') => self.select(self.selected + 1),
            KeyCode::PageUp => self.select(self.selected.saturating_sub(self.page.get())),
            KeyCode::PageDown => self.select(self.selected + self.page.get()),
            KeyCode::Home => self.select(0),
            KeyCode::End => self.select(usize::MAX),
            KeyCode::Enter => {
                if let Some(r) = self.rows().get(self.selected) {
                    let g = r.guest.clone();
                    self.profile = Some(ProfileScreen {
                        label: r.label(),
                        frame: None,
                        error: None,
                    });
                    return Action::OpenProfile(Box::new(Guest::clone(&g)));
                }
            }
            KeyCode::Char('x') => {
                if let Some(r) = self.rows().get(self.selected) {
                    let g = r.guest.clone();
                    self.exits = Some(ExitsScreen {
                        label: r.label(),
                        section: None,
                        error: None,
                    });
                    return Action::OpenExits(Box::new(Guest::clone(&g)));
                }
            }
            _ => {}
        }
        // A new sort or filter moved the rows: the highlight follows.
        self.follow_selection();
        Action::None
    }
}

fn overview_lines(app: &App, height: usize) -> Vec<Line<'static>> {
    let mut lines: Vec<Line> = Vec::new();
    match &app.frame {
        Some(f) => lines.extend(render::header(f).into_iter().map(Line::from)),
        None => lines.push(Line::from("kvmtop - reading the guests...")),
    }
    let status = if app.editing_filter {
        format!("filter: {}_", app.filter)
    } else {
        format!(
            "sort: {}{}{}   ? help  q quit  Enter profile",
            app.sort.title(),
            if app.reverse { " (reversed)" } else { "" },
            if app.filter.is_empty() {
                String::new()
            } else {
                format!("   filter: {}", app.filter)
            }
        )
    };
    lines.push(Line::from(status));
    lines.push(Line::styled(
        render::columns(app.extra),
        Style::default().add_modifier(Modifier::REVERSED),
    ));
    let rows = app.rows();
    // What is left of the pane shows the rows around the highlight.
    let page = height.saturating_sub(lines.len());
    let top = app.scroll_for(page);
    for (i, r) in rows.iter().enumerate().skip(top).take(page.max(1)) {
        let l = render::row(r, app.extra);
        lines.push(if i == app.selected {
            Line::styled(
                l,
                Style::default().add_modifier(Modifier::BOLD | Modifier::UNDERLINED),
            )
        } else {
            Line::from(l)
        });
    }
    if app.frame.is_some() && rows.is_empty() {
        lines.push(Line::from(if app.filter.is_empty() {
            "(no KVM guests visible to this user)".to_string()
        } else {
            format!("(no guest matches '{}')", app.filter)
        }));
    }
    lines
}

fn profile_lines(p: &ProfileScreen) -> Vec<Line<'static>> {
    let mut v: Vec<Line> = Vec::new();
    if let Some(e) = &p.error {
        v.push(Line::from(format!("kvmtop profile - guest {}", p.label)));
        v.push(Line::from(""));
        v.push(Line::from(format!("cannot profile: {e}")));
    } else if let Some(f) = &p.frame {
        v.extend(profile::text(f).lines().map(|l| Line::from(l.to_string())));
    } else {
        v.push(Line::from(format!(
            "kvmtop profile - guest {}: sampling...",
            p.label
        )));
    }
    v.push(Line::from(""));
    v.push(Line::from("q/Esc back   ? help"));
    v
}

fn exits_lines(e: &ExitsScreen) -> Vec<Line<'static>> {
    let mut v = vec![Line::from(format!(
        "kvmtop exits - guest {}   q back",
        e.label
    ))];
    if let Some(err) = &e.error {
        v.push(Line::from(err.clone()));
    } else if let Some(s) = &e.section {
        v.extend(
            crate::exits::text(s)
                .lines()
                .map(|l| Line::from(l.to_string())),
        );
    } else {
        v.push(Line::from("tracing its exits..."));
    }
    v
}

/// Draw the whole screen.
pub fn draw(f: &mut ratatui::Frame, app: &App) {
    let area = f.area();
    let lines = match (&app.exits, &app.profile) {
        (Some(e), _) => exits_lines(e),
        (None, Some(p)) => profile_lines(p),
        (None, None) => overview_lines(app, usize::from(area.height)),
    };
    f.render_widget(Paragraph::new(lines), area);
    if app.help {
        let lines = help_lines();
        term::help_box(f, &lines.iter().map(String::as_str).collect::<Vec<_>>());
    }
}

/// Wait for keys until `deadline`; `Some(action)` when one needs the loop.
fn keys_until(app: &mut App, term: &mut Term, deadline: Instant) -> anyhow::Result<Action> {
    loop {
        match term::next_input(deadline)? {
            Input::Timeout => return Ok(Action::None),
            Input::Key(k) => {
                let a = app.key(k);
                term.draw(|f| draw(f, app))?;
                if a != Action::None {
                    return Ok(a);
                }
            }
            Input::Redraw => {
                term.autoresize()?;
                term.clear()?;
                term.draw(|f| draw(f, app))?;
            }
        }
    }
}

fn start_profile(app: &mut App, g: &Guest, syms: &SymbolArgs) -> Option<Profiler> {
    match Profiler::start(g, syms) {
        Ok(p) => Some(p),
        Err(e) => {
            if let Some(s) = &mut app.profile {
                s.error = Some(e.to_string());
            }
            None
        }
    }
}

/// The live overview; `syms` name the functions of the profile Enter opens.
pub fn run(
    cfg: &Config,
    args: &BatchArgs,
    syms: &SymbolArgs,
    sample: bool,
    extra: Extra,
) -> anyhow::Result<()> {
    let delay = args.delay();
    let (_guard, mut term) = term::terminal()?;
    let mut app = App::new();
    app.extra = extra;
    let mut sampler = HeaderSampler::with(sample);
    let mut reader = frame::Reader::new(cfg);
    reader.columns(app.extra);
    let mut prev = reader.read();
    sampler.follow(&prev.guests);
    let mut profiler: Option<Profiler> = None;
    // The exits screen's tracer, and when its interval began.
    let mut tracer: Option<(crate::exits::Exits, Instant)> = None;
    // Only for the test that a panic in the live view gives the terminal
    // back with its message readable (tests/tmux.rs, which runs the debug
    // build): a release build never panics on purpose.
    let panic_after_first_frame =
        cfg!(debug_assertions) && std::env::var_os("KVMTOP_TEST_PANIC").is_some();
    term.draw(|f| draw(f, &app))?;
    let mut frames = 0u64;
    let mut next = Instant::now() + Duration::from_millis(300).min(delay);
    loop {
        // With the exits screen or a profile open, their rings are
        // drained every POLL.
        let wake = match (&tracer, &profiler) {
            (Some(_), _) => next.min(Instant::now() + crate::exits::POLL),
            (None, Some(_)) => next.min(Instant::now() + profile::POLL),
            (None, None) => next,
        };
        match keys_until(&mut app, &mut term, wake)? {
            Action::Quit => return Ok(()),
            Action::OpenProfile(g) => {
                profiler = start_profile(&mut app, &g, syms);
                term.draw(|f| draw(f, &app))?;
                continue;
            }
            Action::CloseProfile => {
                profiler = None;
                term.draw(|f| draw(f, &app))?;
                continue;
            }
            Action::OpenExits(g) => {
                match crate::stat::trace_exits(&g) {
                    Ok(e) => tracer = Some((e, Instant::now())),
                    Err(e) => {
                        if let Some(s) = &mut app.exits {
                            s.error = Some(format!("{e:#}"));
                        }
                    }
                }
                term.draw(|f| draw(f, &app))?;
                continue;
            }
            Action::CloseExits => {
                tracer = None;
                term.draw(|f| draw(f, &app))?;
                continue;
            }
            Action::None => {}
        }
        if let Some((e, _)) = &mut tracer {
            e.poll();
        }
        if let Some(p) = &mut profiler {
            p.drain();
        }
        if Instant::now() < next {
            continue;
        }
        // A column switched on shows from the frame after next (a rate
        // needs two readings).
        reader.columns(app.extra);
        let cur = reader.read();
        let s = if profiler.is_some() {
            SamplingSummary::Off {
                reason: "paused while a profile is open".into(),
            }
        } else {
            sampler.take()
        };
        app.set_frame(frame::frame(&prev, &cur, s));
        if let (Some(p), Some(screen)) = (&mut profiler, &mut app.profile) {
            screen.frame = Some(p.take(40));
        }
        if let (Some((e, since)), Some(screen)) = (&mut tracer, &mut app.exits) {
            let now = Instant::now();
            screen.section = Some(e.section(now.duration_since(*since).as_secs_f64()));
            *since = now;
        }
        if profiler.is_none() {
            sampler.follow(&cur.guests);
        }
        prev = cur;
        term.draw(|f| draw(f, &app))?;
        frames += 1;
        assert!(
            !panic_after_first_frame,
            "KVMTOP_TEST_PANIC is set: the live view panics after its first frame"
        );
        if args.iterations.is_some_and(|n| frames >= n) {
            return Ok(());
        }
        next = Instant::now() + delay;
    }
}

/// `kvmtop profile` without `-b`: the live profile of one guest.
pub fn run_profile(
    cfg: &Config,
    g: Guest,
    syms: &SymbolArgs,
    args: &BatchArgs,
) -> anyhow::Result<()> {
    let _ = cfg;
    let delay = args.delay();
    let mut p = Profiler::start(&g, syms)?;
    let (_guard, mut term) = term::terminal()?;
    let mut app = App::new();
    app.profile = Some(ProfileScreen {
        label: g.label_for(crate::guests::viewer()),
        frame: None,
        error: None,
    });
    term.draw(|f| draw(f, &app))?;
    let mut frames = 0u64;
    loop {
        let until = Instant::now() + delay;
        loop {
            let wake = until.min(Instant::now() + profile::POLL);
            if let Action::Quit | Action::CloseProfile = keys_until(&mut app, &mut term, wake)? {
                return Ok(());
            }
            p.drain();
            if Instant::now() >= until {
                break;
            }
        }
        if let Some(s) = &mut app.profile {
            s.frame = Some(p.take(40));
        }
        term.draw(|f| draw(f, &app))?;
        frames += 1;
        if args.iterations.is_some_and(|n| frames >= n) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::HostSplit;
    use kvmreg::GuestName;

    fn row(name: &str, pid: u32, cpu: f64) -> Row {
        let mut g = Guest::new(pid);
        g.name = Some(GuestName::Kernel(name.into()));
        Row {
            name: Some(name.into()),
            name_verified: true,
            id: Some(u64::from(pid) - 100),
            pid,
            vcpus: Some(2),
            cpu_pct: Some(cpu),
            guest_pct: Some(cpu / 2.0),
            host_system_pct: Some(cpu / 2.0),
            host_user_pct: Some(0.0),
            cpu_scope: "process",
            steal_pct: None,
            vcpu_steal_pct: Vec::new(),
            other_pct: None,
            disk_read_bps: None,
            disk_write_bps: None,
            net_rx_bps: None,
            net_tx_bps: None,
            net_devices: Vec::new(),
            exits_per_s: None,
            halt_poll_ratio: None,
            memory_bytes: Some(64 << 20),
            memory_source: Some("guest"),
            state: Some('S'),
            command: Some("qemu".into()),
            stats_source: None,
            exits_source: None,
            halt_poll_source: None,
            stats_notes: Vec::new(),
            stats_error: None,
            guest: g.into(),
        }
    }

    fn frame_of(rows: Vec<Row>) -> KFrame {
        KFrame {
            time: 3600.0,
            interval_s: 1.0,
            guests_total: rows.len(),
            host: Some(HostSplit {
                host_kernel_pct: 10.0,
                host_user_pct: 2.0,
                guest_pct: 0.0,
            }),
            sampling: SamplingSummary::Off {
                reason: "test".into(),
            },
            backend: "fd-scan".into(),
            guests: rows,
        }
    }

    fn screen(app: &App, w: u16, h: u16) -> Vec<String> {
        term::render(w, h, |f| draw(f, app))
    }

    fn press(app: &mut App, c: KeyCode) -> Action {
        app.key(KeyEvent::new(c, KeyModifiers::NONE))
    }

    #[test]
    fn overview_shows_header_columns_and_rows_sorted_by_cpu() {
        let mut app = App::new();
        app.set_frame(frame_of(vec![row("db", 201, 20.0), row("web", 202, 80.0)]));
        let s = screen(&app, 110, 12);
        assert_eq!(
            s[0],
            "kvmtop - 01:00:00 UTC  guests: 2  backend: fd-scan  interval: 1.00s"
        );
        assert!(
            s[1].starts_with("Host CPU:  10.0% host kernel,   2.0% host user"),
            "{}",
            s[1]
        );
        assert_eq!(s[2], "Guest mode: not sampled: test");
        assert!(s[3].starts_with("sort: %CPU"), "{}", s[3]);
        assert!(s[4].starts_with("NAME") && s[4].contains("%GUEST") && s[4].contains("EXITS/s"));
        assert!(
            s[5].starts_with("web ") && s[5].contains(" 80.0 "),
            "{}",
            s[5]
        );
        assert!(
            s[6].starts_with("db ") && s[6].contains(" 20.0 "),
            "{}",
            s[6]
        );
    }

    #[test]
    fn keys_sort_filter_help_and_quit() {
        let mut app = App::new();
        app.set_frame(frame_of(vec![row("db", 201, 20.0), row("web", 202, 80.0)]));
        press(&mut app, KeyCode::Char('N'));
        assert_eq!(app.rows()[0].label(), "db");
        press(&mut app, KeyCode::Char('r'));
        assert_eq!(app.rows()[0].label(), "web");
        press(&mut app, KeyCode::Char('/'));
        for c in "db".chars() {
            press(&mut app, KeyCode::Char(c));
        }
        press(&mut app, KeyCode::Enter);
        let s = screen(&app, 110, 10);
        assert!(s.iter().any(|l| l.starts_with("db ")));
        assert!(!s.iter().any(|l| l.starts_with("web ")), "{s:#?}");
        assert!(s[3].contains("filter: db"));
        press(&mut app, KeyCode::Char('?'));
        let s = screen(&app, 110, 20);
        assert!(s.iter().any(|l| l.contains("kvmtop keys")), "{s:#?}");
        press(&mut app, KeyCode::Char('x'));
        assert!(!app.help);
        assert_eq!(press(&mut app, KeyCode::Char('q')), Action::Quit);
    }

    #[test]
    fn enter_opens_the_selected_guests_profile_and_q_returns() {
        let mut app = App::new();
        app.set_frame(frame_of(vec![row("db", 201, 20.0), row("web", 202, 80.0)]));
        press(&mut app, KeyCode::Down);
        match press(&mut app, KeyCode::Enter) {
            Action::OpenProfile(g) => assert_eq!(g.pid, 201),
            a => panic!("{a:?}"),
        }
        app.profile.as_mut().unwrap().error = Some("no vCPU threads".into());
        let s = screen(&app, 80, 8);
        assert_eq!(s[0], "kvmtop profile - guest db");
        assert_eq!(s[2], "cannot profile: no vCPU threads");
        assert_eq!(press(&mut app, KeyCode::Char('q')), Action::CloseProfile);
        assert!(screen(&app, 80, 8)[0].starts_with("kvmtop - "));
    }

    #[test]
    fn x_opens_the_selected_guests_exit_reasons_and_q_returns() {
        let mut app = App::new();
        app.set_frame(frame_of(vec![row("db", 201, 20.0), row("web", 202, 80.0)]));
        match press(&mut app, KeyCode::Char('x')) {
            Action::OpenExits(g) => assert_eq!(g.pid, 202),
            a => panic!("{a:?}"),
        }
        assert_eq!(screen(&app, 80, 8)[1], "tracing its exits...");
        app.exits.as_mut().unwrap().section = Some(crate::exits::ExitSection {
            isa: Some("vmx"),
            threads: vec![5],
            reasons: vec![crate::exits::ExitLine {
                reason: "HLT".into(),
                exits: 10,
                per_s: 10.0,
                avg_handling_us: Some(900.0),
                handling_pct: 0.9,
            }],
            lost: 0,
            note: None,
        });
        let s = screen(&app, 80, 8);
        assert_eq!(s[0], "kvmtop exits - guest web   q back");
        assert!(s[2].starts_with("EXIT REASON (vmx)"), "{s:#?}");
        assert!(s[3].starts_with("HLT "), "{s:#?}");
        // Keys of the overview do nothing here; q goes back.
        assert_eq!(press(&mut app, KeyCode::Char('N')), Action::None);
        assert_eq!(press(&mut app, KeyCode::Char('q')), Action::CloseExits);
        assert!(screen(&app, 80, 8)[0].starts_with("kvmtop - "));
    }

    #[test]
    fn the_selection_follows_the_guest_through_re_sorts() {
        let mut app = App::new();
        app.set_frame(frame_of(vec![
            row("a", 101, 30.0),
            row("b", 102, 20.0),
            row("c", 103, 10.0),
        ]));
        press(&mut app, KeyCode::Down);
        assert_eq!(app.rows()[app.selected].pid, 102);
        // b becomes the busiest: the highlight moves with it.
        app.set_frame(frame_of(vec![
            row("a", 101, 30.0),
            row("b", 102, 90.0),
            row("c", 103, 10.0),
        ]));
        assert_eq!((app.selected, app.rows()[app.selected].pid), (0, 102));
        let s = screen(&app, 110, 12);
        assert!(s[5].starts_with("b "), "{s:#?}");
        // Another sort: still b.
        press(&mut app, KeyCode::Char('I'));
        assert_eq!((app.selected, app.rows()[app.selected].pid), (1, 102));
        // b goes: the guest now at its place is selected.
        app.set_frame(frame_of(vec![row("a", 101, 30.0), row("c", 103, 10.0)]));
        assert_eq!(app.rows()[app.selected].pid, 103);
        match press(&mut app, KeyCode::Enter) {
            Action::OpenProfile(g) => assert_eq!(g.pid, 103),
            a => panic!("{a:?}"),
        }
    }

    #[test]
    fn a_long_list_scrolls_with_the_highlight() {
        let mut app = App::new();
        let rows = |n: u32| {
            (1..=n)
                .map(|i| row(&format!("g{i:02}"), 100 + i, f64::from(100 - i)))
                .collect()
        };
        app.set_frame(frame_of(rows(18)));
        // 12 lines: 5 of header, 7 rows.
        let visible = |app: &App| -> Vec<String> {
            screen(app, 110, 12)[5..]
                .iter()
                .map(|l| l.split(' ').next().unwrap_or("").to_string())
                .collect()
        };
        assert_eq!(visible(&app).first().map(String::as_str), Some("g01"));
        press(&mut app, KeyCode::End);
        assert_eq!(visible(&app).last().map(String::as_str), Some("g18"));
        match press(&mut app, KeyCode::Enter) {
            Action::OpenProfile(g) => assert_eq!(g.pid, 118),
            a => panic!("{a:?}"),
        }
        press(&mut app, KeyCode::Char('q'));
        press(&mut app, KeyCode::PageUp);
        assert_eq!(app.selected, 17 - 7);
        assert!(
            visible(&app).contains(&"g11".to_string()),
            "{:?}",
            visible(&app)
        );
        press(&mut app, KeyCode::Home);
        assert_eq!(visible(&app).first().map(String::as_str), Some("g01"));
        for _ in 0..9 {
            press(&mut app, KeyCode::Down);
        }
        let v = visible(&app);
        assert_eq!(v.last().map(String::as_str), Some("g10"), "{v:?}");
        press(&mut app, KeyCode::PageDown);
        assert_eq!(app.selected, 16);
    }

    #[test]
    fn small_terminals_and_vanished_guests_do_not_break_drawing() {
        let mut app = App::new();
        app.set_frame(frame_of(vec![row("db", 201, 20.0), row("web", 202, 80.0)]));
        press(&mut app, KeyCode::Down);
        press(&mut app, KeyCode::Char('?'));
        let _ = screen(&app, 10, 3);
        press(&mut app, KeyCode::Esc);
        app.set_frame(frame_of(vec![]));
        assert_eq!(app.selected, 0);
        let s = screen(&app, 60, 8);
        assert!(s.iter().any(|l| l.contains("no KVM guests")), "{s:#?}");
    }
}
