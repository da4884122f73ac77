//! The terminal of the full-screen views (the overview and its profile,
//! `kvmtop profile`, `kvmtop stat`): raw mode and the alternate screen,
//! restored however a view ends, waiting for keys between frames, and the
//! help box every view draws the same way.

use crossterm::event::{self, Event, KeyEvent};
use ratatui::layout::Rect;
use ratatui::text::Line;
use ratatui::widgets::{Block, Borders, Clear, Paragraph};
use std::time::Instant;

/// Restores the terminal however the view ends (return, error, panic).
pub struct TermGuard;

impl TermGuard {
    fn enter() -> anyhow::Result<TermGuard> {
        crossterm::terminal::enable_raw_mode().map_err(|e| {
            anyhow::anyhow!(
                "the live view needs a terminal ({e}); for scripts use batch mode: kvmtop -b"
            )
        })?;
        let g = TermGuard;
        crossterm::execute!(std::io::stdout(), crossterm::terminal::EnterAlternateScreen)?;
        Ok(g)
    }
}

impl Drop for TermGuard {
    fn drop(&mut self) {
        let _ = crossterm::execute!(std::io::stdout(), crossterm::terminal::LeaveAlternateScreen);
        let _ = crossterm::terminal::disable_raw_mode();
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
    /// The window changed size: draw again.
    Resize,
    /// `deadline` passed: time for the next frame.
    Timeout,
}

/// The next key or resize, or [`Input::Timeout`] at `deadline`.
pub fn next_input(deadline: Instant) -> anyhow::Result<Input> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(Input::Timeout);
        }
        if event::poll(left)? {
            match event::read()? {
                Event::Key(k) => return Ok(Input::Key(k)),
                Event::Resize(..) => return Ok(Input::Resize),
                _ => {}
            }
        }
    }
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
