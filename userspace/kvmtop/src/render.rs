//! Text for people: number formats and the overview frame as fixed-width
//! columns that stay put from frame to frame (batch mode and the live
//! view share them).

use crate::cli::Extra;
use crate::frame::{Frame, Row, SamplingSummary};

/// `1.5G`, `512M`, `64K`, `-` when unknown.
pub fn bytes(b: Option<u64>) -> String {
    let mut s = String::new();
    bytes_into(&mut s, b);
    s
}

/// [`bytes`], appended to `out`.
fn bytes_into(out: &mut String, b: Option<u64>) {
    let Some(b) = b else {
        out.push('-');
        return;
    };
    const U: [(char, u64); 4] = [
        ('T', 1 << 40),
        ('G', 1 << 30),
        ('M', 1 << 20),
        ('K', 1 << 10),
    ];
    for (s, n) in U {
        if b >= n {
            let v = b as f64 / n as f64;
            fixed(out, v, 0, u32::from(v < 10.0 && b % n != 0));
            out.push(s);
            return;
        }
    }
    uint(out, b, 0);
    out.push('B');
}

/// Right-align what was appended to `out` since `start` in `width`
/// columns (it is ASCII).
fn pad_from(out: &mut String, start: usize, width: usize) {
    let len = out.len() - start;
    if len < width {
        out.insert_str(start, &SPACES[..(width - len).min(SPACES.len())]);
    }
}

const SPACES: &str = "                                ";

/// `text` (ASCII) right-aligned in `width` columns.
fn right(out: &mut String, text: &[u8], width: usize) {
    if text.len() < width {
        out.push_str(&SPACES[..(width - text.len()).min(SPACES.len())]);
    }
    debug_assert!(text.is_ascii());
    // SAFETY: every caller passes digits, '.' or '-': ASCII, so UTF-8.
    out.push_str(unsafe { std::str::from_utf8_unchecked(text) });
}

/// The decimal digits of `n` at the end of `buf`; returns where they start.
fn digits(buf: &mut [u8], mut end: usize, mut n: u64) -> usize {
    loop {
        end -= 1;
        buf[end] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return end;
        }
    }
}

/// `n` right-aligned in `width`, as `{n:>width$}` writes it.
fn uint(out: &mut String, n: u64, width: usize) {
    let mut b = [0u8; 20];
    let i = digits(&mut b, 20, n);
    right(out, &b[i..], width);
}

/// `v` with `prec` (at most 6) decimals right-aligned in `width`, as
/// `{v:>width$.prec$}` writes it: core::fmt's exact float path costs more
/// than the rest of a row, and a frame formats six of them per guest.
fn fixed(out: &mut String, v: f64, width: usize, prec: u32) {
    use std::fmt::Write;
    let scale = 10u64.pow(prec.min(6));
    let scaled = v * scale as f64;
    // Below 1e9 the integer part is exact in both types (the conversions
    // truncate, with no libm call).
    let whole = scaled as u64;
    // Near a tie the product's rounding may decide it wrongly: core::fmt
    // then, whose exact path says which side the binary value is on.
    let near_tie = (scaled - whole as f64 - 0.5).abs() < 1e-6;
    if !(0.0..1e9).contains(&scaled) || near_tie || prec > 6 {
        let p = prec as usize;
        let _ = write!(out, "{v:>width$.p$}");
        return;
    }
    let t = (scaled + 0.5) as u64;
    let mut b = [0u8; 32];
    let mut i = b.len();
    if prec > 0 {
        i = digits(&mut b, i, t % scale + scale) + 1;
        i -= 1;
        b[i] = b'.';
    }
    let i = digits(&mut b, i, t / scale);
    right(out, &b[i..], width);
}

/// `3d04h`, `2h05m`, `5m03s`, `42s`.
pub fn age(secs: Option<f64>) -> String {
    let Some(s) = secs.filter(|s| s.is_finite() && *s >= 0.0) else {
        return "-".into();
    };
    let s = s as u64;
    let (d, h, m, sec) = (s / 86400, s / 3600 % 24, s / 60 % 60, s % 60);
    if d > 0 {
        format!("{d}d{h:02}h")
    } else if h > 0 {
        format!("{h}h{m:02}m")
    } else if m > 0 {
        format!("{m}m{sec:02}s")
    } else {
        format!("{sec}s")
    }
}

/// A number with one decimal, or `-`.
pub fn num(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.1}"))
}

/// `HH:MM:SS` (UTC) of a Unix time.
pub fn clock(unix: f64) -> String {
    let s = unix.max(0.0) as u64 % 86400;
    format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

/// Cut a cell to `w` characters, marking the cut with `+`.
pub fn fit(s: &str, w: usize) -> String {
    if s.chars().count() <= w {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(w.saturating_sub(1)).collect();
        t.push('+');
        t
    }
}

/// The overview's header lines.
pub fn header(f: &Frame) -> Vec<String> {
    let mut v = vec![format!(
        "kvmtop - {} UTC  guests: {}  backend: {}  interval: {:.2}s",
        clock(f.time),
        f.guests_total,
        f.backend,
        f.interval_s
    )];
    v.push(match &f.host {
        Some(h) => format!(
            "Host CPU: {:5.1}% host kernel, {:5.1}% host user, {:5.1}% guest",
            h.host_kernel_pct, h.host_user_pct, h.guest_pct
        ),
        None => "Host CPU: - (/proc/stat unreadable)".into(),
    });
    v.push(match &f.sampling {
        SamplingSummary::Sampling {
            guest_kernel_pct,
            guest_user_pct,
            guest_samples_per_s,
            samples_per_s,
        } => format!(
            "Guest mode: {}% guest kernel, {}% guest user, {:.1} guest samples/s of {:.1} samples/s",
            num(*guest_kernel_pct),
            num(*guest_user_pct),
            guest_samples_per_s,
            samples_per_s
        ),
        SamplingSummary::Off { reason } => format!("Guest mode: not sampled: {reason}"),
    });
    v
}

/// The column titles; [`row`] pads to the same widths. The optional
/// columns (`extra`) come after %USER.
pub fn columns(extra: Extra) -> String {
    let mut s = format!(
        "{:<20} {:>6} {:>8} {} {:>5} {:>6} {:>6} {:>6} {:>6}",
        "NAME", "ID", "PID", "S", "VCPUS", "%CPU", "%GUEST", "%SYS", "%USER",
    );
    if extra.steal {
        s.push_str(&format!(" {:>6}", "%STEAL"));
    }
    if extra.other {
        s.push_str(&format!(" {:>6}", "%OTHER"));
    }
    if extra.disk {
        s.push_str(&format!(" {:>7} {:>7}", "RD/s", "WR/s"));
    }
    if extra.net {
        s.push_str(&format!(" {:>7} {:>7}", "NETRX/s", "NETTX/s"));
    }
    s.push_str(&format!(
        " {:>9} {:>5} {:>7} {}",
        "EXITS/s", "HPOLL", "MEMORY", "COMMAND"
    ));
    s
}

pub fn row(r: &Row, extra: Extra) -> String {
    let mut s = String::with_capacity(100);
    row_into(&mut s, r, extra);
    s
}

/// A percentage cell of `w` columns, `-` when unknown.
fn pct_cell(out: &mut String, v: Option<f64>, w: usize) {
    out.push(' ');
    match v {
        Some(v) => fixed(out, v, w, 1),
        None => {
            let at = out.len();
            out.push('-');
            pad_from(out, at, w);
        }
    }
}

/// [`row`], appended to `out`: cell by cell into one buffer, with one
/// allocation (the label) instead of one per cell, since a frame of a
/// thousand guests formats a thousand rows every interval.
pub fn row_into(out: &mut String, r: &Row, extra: Extra) {
    let start = out.len();
    r.label_into(out);
    let chars = out[start..].chars().count();
    if chars <= 20 {
        out.extend(std::iter::repeat_n(' ', 20 - chars));
    } else {
        let cut = out[start..]
            .char_indices()
            .nth(19)
            .map_or(out.len(), |(i, _)| start + i);
        out.truncate(cut);
        out.push('+');
    }
    out.push(' ');
    match r.id {
        Some(i) => uint(out, i, 6),
        None => out.push_str("     -"),
    }
    out.push(' ');
    uint(out, u64::from(r.pid), 8);
    out.push(' ');
    out.push(r.state.unwrap_or('-'));
    out.push(' ');
    match r.vcpus {
        Some(n) => uint(out, n as u64, 5),
        None => out.push_str("    -"),
    }
    for v in [r.cpu_pct, r.guest_pct, r.host_system_pct, r.host_user_pct] {
        pct_cell(out, v, 6);
    }
    if extra.steal {
        pct_cell(out, r.steal_pct, 6);
    }
    if extra.other {
        pct_cell(out, r.other_pct, 6);
    }
    let disk = [r.disk_read_bps, r.disk_write_bps];
    let net = [r.net_rx_bps, r.net_tx_bps];
    for (on, pair) in [(extra.disk, disk), (extra.net, net)] {
        if !on {
            continue;
        }
        for v in pair {
            out.push(' ');
            let at = out.len();
            bytes_into(out, v.map(|b| b.round() as u64));
            pad_from(out, at, 7);
        }
    }
    pct_cell(out, r.exits_per_s, 9);
    out.push(' ');
    match r.halt_poll_ratio {
        Some(v) => fixed(out, v, 5, 2),
        None => out.push_str("    -"),
    }
    out.push(' ');
    let at = out.len();
    bytes_into(out, r.memory_bytes);
    if r.memory_source == Some("vmm-rss") {
        out.push('*');
    }
    pad_from(out, at, 7);
    out.push(' ');
    out.push_str(r.command.as_deref().unwrap_or("-"));
}

/// A whole frame as text, as `kvmtop -b` prints it.
pub fn frame_text(f: &Frame, extra: Extra) -> String {
    let mut out = header(f).join("\n");
    out.push_str("\n\n");
    out.push_str(&columns(extra));
    out.push('\n');
    out.reserve(f.guests.len() * 100);
    for r in &f.guests {
        row_into(&mut out, r, extra);
        out.push('\n');
    }
    if f.guests
        .iter()
        .any(|r| r.name.is_some() && !r.name_verified)
    {
        out.push_str("(NAME? = qemu -name hint from the command line, unverified)\n");
    }
    if f.guests.iter().any(|r| r.memory_source == Some("vmm-rss")) {
        out.push_str("(MEMORY* = the VMM's resident memory: the kernel gives no guest size)\n");
    }
    if f.guests.is_empty() {
        out.push_str("(no KVM guests visible to this user)\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point_cells_match_core_fmt() {
        let std_fmt = |v: f64, w: usize, p: usize| format!("{v:>w$.p$}");
        let mine = |v: f64, w: usize, p: u32| {
            let mut s = String::from("x");
            fixed(&mut s, v, w, p);
            s[1..].to_string()
        };
        let mut values = vec![
            0.0,
            0.04,
            0.06,
            0.065,
            1.0,
            99.94,
            99.96,
            1e8 + 0.35,
            1e9 + 0.3,
            1e20,
            -1.5,
            f64::NAN,
        ];
        values.extend((0..20_000).map(|i| f64::from(i) / 7.0));
        values.extend((0..20_000).map(|i| f64::from(i) * 0.013));
        for v in values {
            for (w, p) in [(6, 1), (9, 1), (5, 2), (0, 0)] {
                assert_eq!(mine(v, w, p as u32), std_fmt(v, w, p), "{v} {w} {p}");
            }
        }
        for n in [0u64, 7, 10, 99_999, u64::MAX] {
            let mut s = String::new();
            uint(&mut s, n, 8);
            assert_eq!(s, format!("{n:>8}"));
        }
    }

    #[test]
    fn formats() {
        assert_eq!(bytes(None), "-");
        assert_eq!(bytes(Some(1024 * 1024)), "1M");
        assert_eq!(bytes(Some(1536 * 1024 * 1024)), "1.5G");
        assert_eq!(bytes(Some(500)), "500B");
        assert_eq!(age(Some(42.9)), "42s");
        assert_eq!(age(Some(3723.0)), "1h02m");
        assert_eq!(age(Some(2.0 * 86400.0 + 7200.0)), "2d02h");
        assert_eq!(age(Some(-1.0)), "-");
        assert_eq!(clock(3661.0 + 86400.0), "01:01:01");
        assert_eq!(fit("abcdef", 4), "abc+");
        assert_eq!(num(None), "-");
    }

    #[test]
    fn rows_line_up_with_columns() {
        let g = kvmreg::Guest::new(4242);
        let r = Row {
            name: Some("a-very-long-guest-name-indeed".into()),
            name_verified: false,
            id: Some(7),
            pid: 4242,
            vcpus: Some(2),
            cpu_pct: Some(150.0),
            guest_pct: Some(100.0),
            host_system_pct: Some(45.0),
            host_user_pct: Some(5.0),
            cpu_scope: "process",
            steal_pct: Some(12.5),
            vcpu_steal_pct: vec![Some(25.0), Some(0.0)],
            other_pct: None,
            disk_read_bps: Some(1536.0),
            disk_write_bps: None,
            net_rx_bps: Some(2048.0),
            net_tx_bps: Some(0.0),
            net_devices: Vec::new(),
            exits_per_s: None,
            halt_poll_ratio: Some(0.5),
            memory_bytes: Some(1 << 30),
            memory_source: Some("guest"),
            state: Some('T'),
            command: Some("qemu-system-x86".into()),
            stats_source: None,
            exits_source: None,
            halt_poll_source: None,
            stats_notes: Vec::new(),
            stats_error: None,
            guest: g.into(),
        };
        let line = row(&r, Extra::default());
        let cols = columns(Extra::default());
        // Every column but the last, COMMAND, has its width.
        let fixed = |l: &str| l.rfind(' ').map(|i| l[..i].len());
        assert_eq!(fixed(&line), fixed(&cols), "{line}\n{cols}");
        // So with the optional columns, after %USER.
        let all = Extra {
            steal: true,
            other: true,
            disk: true,
            net: true,
        };
        let (l2, c2) = (row(&r, all), columns(all));
        assert_eq!(fixed(&l2), fixed(&c2), "{l2}\n{c2}");
        assert!(
            c2.contains(" %USER %STEAL %OTHER    RD/s    WR/s NETRX/s NETTX/s   EXITS/s "),
            "{c2}"
        );
        assert!(
            l2.contains("   5.0   12.5      -    1.5K       -      2K      0B         - "),
            "{l2}"
        );
        assert!(line.starts_with("a-very-long-guest-n+ "), "{line}");
        assert!(line.contains(" 4242 T     2 "), "{line}");
        assert!(line.contains(" 150.0 ") && line.contains(" 0.50 "));
        assert!(line.ends_with("     1G qemu-system-x86"), "{line}");
        // The VMM's RSS where the kernel gave no guest size is marked.
        let r = Row {
            memory_source: Some("vmm-rss"),
            command: None,
            ..r
        };
        let line = row(&r, Extra::default());
        assert!(line.ends_with("    1G* -"), "{line}");
    }
}
