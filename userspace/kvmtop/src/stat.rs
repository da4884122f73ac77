//! `kvmtop stat`: one guest's KVM counters as rates, like `kvm_stat`:
//! a full-screen table on a terminal, text or JSON frames otherwise.
//!
//! The full-screen state ([`StatView`]) and its drawing ([`draw`]) are free
//! of the terminal, so tests render into ratatui's `TestBackend`.

use crate::cli::BatchArgs;
use crate::exits::{self, ExitSection, Exits};
use crate::frame::counter_rates;
use crate::guests;
use crate::out::emit;
use crate::term::{self, Input};
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use kvmreg::discover::Counters;
use kvmreg::{Config, Guest, Source};
use ratatui::layout::{Alignment, Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Cell, Paragraph, Row, Table, Wrap};
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

#[derive(Debug, Serialize, PartialEq)]
pub struct StatLine {
    pub name: String,
    pub total: u64,
    pub per_s: f64,
    /// Where this counter came from (`proc-kvm`, `debugfs`, `stats-fd`).
    pub source: String,
}

#[derive(Debug, Serialize)]
pub struct StatFrame {
    pub guest: String,
    pub id: Option<u64>,
    pub pid: u32,
    pub source: String,
    pub interval_s: f64,
    pub stats: Vec<StatLine>,
    /// What could not be read, e.g. why vCPU stats are missing.
    pub notes: Vec<String>,
    /// Exits per reason (`--exits`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exits: Option<ExitSection>,
}

/// Lines sorted like kvm_stat: busiest first, then by total, then name.
pub fn lines(
    a: &BTreeMap<String, u64>,
    b: &BTreeMap<String, u64>,
    sources: &BTreeMap<String, Source>,
    secs: f64,
) -> Vec<StatLine> {
    let rates = counter_rates(a, b, secs);
    let mut v: Vec<StatLine> = b
        .iter()
        .map(|(k, t)| StatLine {
            name: k.clone(),
            total: *t,
            per_s: rates.get(k).copied().unwrap_or(0.0),
            source: sources.get(k).map_or("-".into(), Source::to_string),
        })
        .collect();
    v.sort_by(|x, y| {
        y.per_s
            .total_cmp(&x.per_s)
            .then(y.total.cmp(&x.total))
            .then_with(|| x.name.cmp(&y.name))
    });
    v
}

/// The first line of a frame, in the text and the full-screen view.
fn title(f: &StatFrame) -> String {
    format!(
        "kvmtop stat - guest {} (id {}, pid {})  source: {}  interval: {:.2}s",
        f.guest,
        f.id.map_or("-".into(), |i| i.to_string()),
        f.pid,
        f.source,
        f.interval_s,
    )
}

pub fn text(f: &StatFrame) -> String {
    let mut s = format!(
        "{}\n\n{:<36} {:>16} {:>12}  {}\n",
        title(f),
        "EVENT",
        "TOTAL",
        "PER SEC",
        "SOURCE"
    );
    for l in &f.stats {
        s.push_str(&format!(
            "{:<36} {:>16} {:>12.1}  {}\n",
            l.name, l.total, l.per_s, l.source
        ));
    }
    for n in &f.notes {
        s.push_str(&format!("note: {n}\n"));
    }
    if let Some(e) = &f.exits {
        s.push_str(&exits::text(e));
    }
    s
}

fn counters(cfg: &Config, g: &Guest) -> anyhow::Result<Counters> {
    kvmreg::guest_counters(cfg, g).map_err(|e| {
        anyhow::anyhow!(
            "cannot read the KVM stats of guest {} (pid {}): {e}",
            g.label_for(crate::guests::viewer()),
            g.pid
        )
    })
}

/// The frame of the `secs` from reading `prev` to reading `cur`.
fn stat_frame(
    g: &Guest,
    prev: &Counters,
    cur: &Counters,
    secs: f64,
    exits: Option<&mut Exits>,
) -> StatFrame {
    StatFrame {
        exits: exits.map(|e| e.section(secs)),
        guest: g.label_for(crate::guests::viewer()),
        id: g.id,
        pid: g.pid,
        source: cur.source.to_string(),
        interval_s: secs,
        stats: lines(&prev.values, &cur.values, &cur.sources, secs),
        notes: cur.notes.clone(),
    }
}

/// Start tracing the exits of `g` (`--exits`), or say why it cannot be.
pub fn trace_exits(g: &Guest) -> anyhow::Result<Exits> {
    kvmreg::perf::exits::trace_guest(g)
        .map(Exits::new)
        .map_err(|e| {
            anyhow::anyhow!(
                "cannot trace the exits of guest {} (pid {}): {e}",
                g.label_for(crate::guests::viewer()),
                g.pid
            )
        })
}

pub fn run(
    cfg: &Config,
    wanted: Option<&str>,
    args: &BatchArgs,
    with_exits: bool,
) -> anyhow::Result<()> {
    let delay = args.delay();
    let g = guests::pick(cfg, wanted)?;
    let mut exits = if with_exits {
        Some(trace_exits(&g)?)
    } else {
        None
    };
    if !args.batch && !args.json && std::io::stdout().is_terminal() {
        return run_live(cfg, &g, args, delay, exits);
    }
    let mut prev = counters(cfg, &g)?;
    let mut at = Instant::now();
    // Exits count from the same moment as the counters.
    if let Some(e) = &mut exits {
        e.restart();
    }
    // Without -b (output not a terminal, or --json), print frames until
    // interrupted, as kvm_stat -l does.
    let n = args
        .iterations
        .unwrap_or(if args.batch { 1 } else { u64::MAX });
    for _ in 0..n {
        match &mut exits {
            Some(e) => e.sleep_until(at + delay),
            None => std::thread::sleep(delay),
        }
        let cur = counters(cfg, &g)?;
        let now = Instant::now();
        let secs = now.duration_since(at).as_secs_f64();
        let f = stat_frame(&g, &prev, &cur, secs, exits.as_mut());
        let t = if args.json {
            format!("{}\n", serde_json::to_string(&f)?)
        } else {
            format!("{}\n", text(&f))
        };
        if !emit(&t)? {
            return Ok(());
        }
        prev = cur;
        at = now;
    }
    Ok(())
}

const HELP: &[&str] = &[
    "kvmtop stat keys",
    "",
    "  q          quit",
    "  ?  h       this help (any key closes it)",
    "",
    "One row per KVM counter of the guest, busiest first:",
    "TOTAL is the counter now, PER SEC its change over",
    "the last interval (-d). SOURCE says where it was read.",
];

/// The full-screen `stat` view's state.
pub struct StatView {
    /// The guest as the title names it before the first frame.
    pub label: String,
    pub frame: Option<StatFrame>,
    /// Why the last read failed; the view keeps retrying.
    pub error: Option<String>,
    pub help: bool,
    /// Seconds between frames, for the retry message.
    pub delay_s: f64,
}

impl StatView {
    pub fn new(g: &Guest, delay: Duration) -> StatView {
        StatView {
            label: format!(
                "{} (id {}, pid {})",
                g.label_for(crate::guests::viewer()),
                g.id.map_or("-".into(), |i| i.to_string()),
                g.pid
            ),
            frame: None,
            error: None,
            help: false,
            delay_s: delay.as_secs_f64(),
        }
    }

    /// Handle a key; `true` when it asks to quit.
    pub fn key(&mut self, k: KeyEvent) -> bool {
        if k.kind == KeyEventKind::Release {
            return false;
        }
        if k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL) {
            return true;
        }
        if self.help {
            self.help = false;
            return false;
        }
        match k.code {
            KeyCode::Char('q') => return true,
            KeyCode::Char('?') | KeyCode::Char('h') => self.help = true,
            _ => {}
        }
        false
    }
}

/// Draw the `stat` view: title, the counters table sorted by rate, notes.
pub fn draw(f: &mut ratatui::Frame, v: &StatView) {
    let area = f.area();
    let top = match (&v.frame, &v.error) {
        (_, Some(_)) | (None, None) => format!("kvmtop stat - guest {}", v.label),
        (Some(fr), None) => title(fr),
    };
    let status = "sorted by PER SEC, busiest first   ? help  q quit";
    let mut notes: Vec<String> = Vec::new();
    if let Some(e) = &v.error {
        notes.push(e.clone());
        notes.push(format!("(trying again every {:.1}s; q quits)", v.delay_s));
    } else if let Some(fr) = &v.frame {
        notes.extend(fr.notes.iter().map(|n| format!("note: {n}")));
        if fr.stats.is_empty() {
            notes.push("(this source has no counters for the guest)".into());
        }
    } else {
        notes.push("reading the counters...".into());
    }
    let table = match (&v.frame, &v.error) {
        (Some(fr), None) => Some(fr),
        _ => None,
    };
    // Under a table each note gets the lines it needs when wrapped, at most
    // half the screen; without one the notes have all of it.
    let width = usize::from(area.width.max(1));
    let note_rows: usize = notes
        .iter()
        .map(|n| n.chars().count().max(1).div_ceil(width))
        .sum();
    let note_rows = match table {
        Some(_) => (note_rows as u16).min(area.height / 2),
        None => area.height.saturating_sub(2),
    };
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(0),
        Constraint::Length(note_rows),
    ])
    .areas(area);
    f.render_widget(
        Paragraph::new(vec![Line::from(top), Line::from(status)]),
        head,
    );
    if let Some(fr) = table {
        let right = |s: String| Cell::from(Line::from(s).alignment(Alignment::Right));
        let header = Row::new(vec![
            Cell::from("EVENT"),
            right("TOTAL".into()),
            right("PER SEC".into()),
            Cell::from("SOURCE"),
        ])
        .style(Style::default().add_modifier(Modifier::REVERSED));
        let rows = fr.stats.iter().map(|l| {
            Row::new(vec![
                Cell::from(l.name.clone()),
                right(l.total.to_string()),
                right(format!("{:.1}", l.per_s)),
                Cell::from(l.source.clone()),
            ])
        });
        // With --exits the exit reasons take the lower half of the body.
        let (body, lower) = match &fr.exits {
            Some(_) => {
                let [a, b] =
                    Layout::vertical([Constraint::Percentage(50), Constraint::Percentage(50)])
                        .areas(body);
                (a, Some(b))
            }
            None => (body, None),
        };
        f.render_widget(
            Table::new(
                rows,
                [
                    Constraint::Min(12),
                    Constraint::Length(16),
                    Constraint::Length(12),
                    Constraint::Length(9),
                ],
            )
            .header(header),
            body,
        );
        if let (Some(e), Some(area)) = (&fr.exits, lower) {
            draw_exits(f, e, area);
        }
    }
    f.render_widget(
        Paragraph::new(notes.into_iter().map(Line::from).collect::<Vec<_>>())
            .wrap(Wrap { trim: false }),
        foot,
    );
    if v.help {
        term::help_box(f, HELP);
    }
}

/// The exit reasons' table of `--exits`.
fn draw_exits(f: &mut ratatui::Frame, e: &ExitSection, area: ratatui::layout::Rect) {
    let right = |s: String| Cell::from(Line::from(s).alignment(Alignment::Right));
    let header = Row::new(vec![
        Cell::from(format!("EXIT REASON ({})", e.isa.unwrap_or("-"))),
        right("EXITS".into()),
        right("PER SEC".into()),
        right("AVG HANDLING".into()),
        right("HANDLING%".into()),
    ])
    .style(Style::default().add_modifier(Modifier::REVERSED));
    let mut rows: Vec<Row> = e
        .reasons
        .iter()
        .map(|l| {
            Row::new(vec![
                Cell::from(l.reason.clone()),
                right(l.exits.to_string()),
                right(format!("{:.1}", l.per_s)),
                right(
                    l.avg_handling_us
                        .map_or("-".into(), |us| format!("{us:.1}us")),
                ),
                right(format!("{:.1}", l.handling_pct)),
            ])
        })
        .collect();
    if e.reasons.is_empty() {
        rows.push(Row::new(vec![Cell::from("(no exits in this interval)")]));
    }
    if let Some(n) = &e.note {
        rows.push(Row::new(vec![Cell::from(format!("note: {n}"))]));
    }
    if e.lost > 0 {
        rows.push(Row::new(vec![Cell::from(format!(
            "{} records lost: counts short",
            e.lost
        ))]));
    }
    f.render_widget(
        Table::new(
            rows,
            [
                Constraint::Min(20),
                Constraint::Length(10),
                Constraint::Length(10),
                Constraint::Length(13),
                Constraint::Length(10),
            ],
        )
        .header(header),
        area,
    );
}

/// `kvmtop stat` on a terminal: the counters full-screen, refreshed every
/// `delay`, until `q` (or `-n` frames).
fn run_live(
    cfg: &Config,
    g: &Guest,
    args: &BatchArgs,
    delay: Duration,
    mut exits: Option<Exits>,
) -> anyhow::Result<()> {
    let (_guard, mut tty) = term::terminal()?;
    let mut view = StatView::new(g, delay);
    let mut prev: Option<(Counters, Instant)> = None;
    let mut frames = 0u64;
    // The first frame comes soon; rates need two reads.
    let mut next = Instant::now();
    let first = Duration::from_millis(300).min(delay);
    loop {
        // With --exits the rings are drained every POLL between frames.
        let wake = match &exits {
            Some(_) => next.min(Instant::now() + exits::POLL),
            None => next,
        };
        match term::next_input(wake)? {
            Input::Key(k) => {
                if view.key(k) {
                    return Ok(());
                }
                tty.draw(|f| draw(f, &view))?;
                continue;
            }
            Input::Redraw => {
                tty.autoresize()?;
                tty.clear()?;
                tty.draw(|f| draw(f, &view))?;
                continue;
            }
            Input::Timeout => {}
        }
        if let Some(e) = &mut exits {
            e.poll();
        }
        if Instant::now() < next {
            continue;
        }
        let wait = match (counters(cfg, g), prev.take()) {
            (Ok(cur), Some((p, at))) => {
                let now = Instant::now();
                let secs = now.duration_since(at).as_secs_f64();
                view.frame = Some(stat_frame(g, &p, &cur, secs, exits.as_mut()));
                view.error = None;
                prev = Some((cur, now));
                frames += 1;
                delay
            }
            (Ok(cur), None) => {
                prev = Some((cur, Instant::now()));
                // Exits count from the same moment as the counters.
                if let Some(e) = &mut exits {
                    e.restart();
                }
                first
            }
            (Err(e), _) => {
                view.error = Some(format!("{e:#}"));
                frames += 1;
                delay
            }
        };
        tty.draw(|f| draw(f, &view))?;
        if args.iterations.is_some_and(|n| frames >= n) {
            return Ok(());
        }
        next = Instant::now() + wait;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busiest_first() {
        let m = |kv: &[(&str, u64)]| -> BTreeMap<String, u64> {
            kv.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        let a = m(&[("exits", 10), ("halt_exits", 0), ("pages_4k", 500)]);
        let b = m(&[("exits", 30), ("halt_exits", 5), ("pages_4k", 500)]);
        let src: BTreeMap<String, Source> = [("exits".to_string(), Source::Debugfs)].into();
        let l = lines(&a, &b, &src, 1.0);
        assert_eq!(
            l[0],
            StatLine {
                name: "exits".into(),
                total: 30,
                per_s: 20.0,
                source: "debugfs".into()
            }
        );
        assert_eq!(l[1].name, "halt_exits");
        assert_eq!(l[2].name, "pages_4k");
        assert!(text(&StatFrame {
            guest: "web".into(),
            id: None,
            pid: 1,
            source: "debugfs".into(),
            interval_s: 1.0,
            stats: l,
            notes: vec!["a note".into()],
            exits: None,
        })
        .lines()
        .any(|l| l.starts_with("exits ") && l.ends_with("  debugfs")));
    }

    fn frame(stats: Vec<StatLine>, notes: Vec<String>) -> StatFrame {
        StatFrame {
            guest: "web".into(),
            id: Some(3),
            pid: 10,
            source: "debugfs".into(),
            interval_s: 0.5,
            stats,
            notes,
            exits: None,
        }
    }

    fn view() -> StatView {
        let mut g = Guest::new(10);
        g.id = Some(3);
        StatView::new(&g, Duration::from_millis(500))
    }

    fn line(name: &str, total: u64, per_s: f64) -> StatLine {
        StatLine {
            name: name.into(),
            total,
            per_s,
            source: "debugfs".into(),
        }
    }

    fn screen(v: &StatView, w: u16, h: u16) -> Vec<String> {
        term::render(w, h, |f| draw(f, v))
    }

    fn press(v: &mut StatView, c: KeyCode) -> bool {
        v.key(KeyEvent::new(c, KeyModifiers::NONE))
    }

    #[test]
    fn live_view_is_a_table_sorted_by_rate_with_notes() {
        let m = |kv: &[(&str, u64)]| -> BTreeMap<String, u64> {
            kv.iter().map(|(k, v)| (k.to_string(), *v)).collect()
        };
        let a = m(&[("exits", 100), ("halt_exits", 9000), ("io_exits", 5)]);
        let b = m(&[("exits", 150), ("halt_exits", 9000), ("io_exits", 10)]);
        let mut v = view();
        v.frame = Some(frame(
            lines(&a, &b, &BTreeMap::new(), 0.5),
            vec!["vCPU stats from debugfs".into()],
        ));
        let s = screen(&v, 80, 12);
        assert_eq!(
            s[0],
            "kvmtop stat - guest web (id 3, pid 10)  source: debugfs  interval: 0.50s"
        );
        assert!(s[1].starts_with("sorted by PER SEC"), "{}", s[1]);
        let cells = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
        assert_eq!(cells(&s[2]), ["EVENT", "TOTAL", "PER", "SEC", "SOURCE"]);
        assert_eq!(cells(&s[3]), ["exits", "150", "100.0", "-"], "{s:#?}");
        assert_eq!(cells(&s[4]), ["io_exits", "10", "10.0", "-"], "{s:#?}");
        assert_eq!(cells(&s[5]), ["halt_exits", "9000", "0.0", "-"], "{s:#?}");
        // Numbers are right-aligned under their titles.
        let end = |l: &str, w: &str| l.find(w).map(|i| i + w.len());
        assert_eq!(end(&s[2], "TOTAL"), end(&s[3], "150"), "{s:#?}");
        assert_eq!(end(&s[2], "PER SEC"), end(&s[5], "0.0"), "{s:#?}");
        assert_eq!(s[11], "note: vCPU stats from debugfs", "{s:#?}");
    }

    #[test]
    fn live_view_shows_exit_reasons_under_the_counters() {
        let mut v = view();
        let mut fr = frame(vec![line("io_exits", 90, 90.0)], vec![]);
        fr.exits = Some(ExitSection {
            isa: Some("svm"),
            threads: vec![43],
            reasons: vec![crate::exits::ExitLine {
                reason: "io".into(),
                exits: 45,
                per_s: 90.0,
                avg_handling_us: Some(1143.1),
                handling_pct: 10.3,
            }],
            lost: 2,
            note: None,
        });
        v.frame = Some(fr);
        let s = screen(&v, 80, 14);
        let at = s
            .iter()
            .position(|l| l.starts_with("EXIT REASON (svm)"))
            .unwrap_or_else(|| panic!("{s:#?}"));
        let cells: Vec<&str> = s[at + 1].split_whitespace().collect();
        assert_eq!(cells, ["io", "45", "90.0", "1143.1us", "10.3"], "{s:#?}");
        assert!(s[at + 2].starts_with("2 records lost"), "{s:#?}");
        // The counters stay above it.
        assert!(s[..at].iter().any(|l| l.starts_with("io_exits")), "{s:#?}");
    }

    #[test]
    fn live_view_says_why_there_are_no_counters_and_keeps_trying() {
        let mut v = view();
        assert!(screen(&v, 60, 6)[2].contains("reading the counters"));
        v.error = Some("cannot read the KVM stats of guest web (pid 10): EIO".into());
        let s = screen(&v, 60, 8);
        assert_eq!(s[0], "kvmtop stat - guest pid 10 (id 3, pid 10)");
        assert_eq!(s[2], "cannot read the KVM stats of guest web (pid 10): EIO");
        assert_eq!(s[3], "(trying again every 0.5s; q quits)");
        assert!(!s.iter().any(|l| l.contains("EVENT")), "{s:#?}");
        // A frame read earlier does not hide the error.
        v.frame = Some(frame(vec![line("exits", 1, 1.0)], vec![]));
        assert!(screen(&v, 60, 8)[2].starts_with("cannot read"));
    }

    #[test]
    fn live_view_keys_help_quit_and_small_terminals() {
        let mut v = view();
        v.frame = Some(frame(vec![line("exits", 1, 1.0)], vec!["n".repeat(200)]));
        assert!(!press(&mut v, KeyCode::Char('?')));
        let s = screen(&v, 80, 20);
        assert!(s.iter().any(|l| l.contains("kvmtop stat keys")), "{s:#?}");
        // Any key closes the help, even q; the next q quits.
        assert!(!press(&mut v, KeyCode::Char('q')));
        assert!(!v.help);
        assert!(!screen(&v, 80, 20).iter().any(|l| l.contains("stat keys")));
        assert!(!press(&mut v, KeyCode::Char('x')));
        for (w, h) in [(1, 1), (10, 3), (30, 5)] {
            let _ = screen(&v, w, h);
            v.help = true;
            let _ = screen(&v, w, h);
            v.help = false;
        }
        assert!(press(&mut v, KeyCode::Char('q')));
        assert!(v.key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)));
    }
}
