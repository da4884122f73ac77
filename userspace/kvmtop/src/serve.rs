//! `kvmtop serve`: per-guest metrics in the OpenMetrics / Prometheus text
//! format over plain HTTP. Metrics are cumulative counters and gauges read
//! at scrape time, so the server keeps no state and Prometheus computes
//! the rates.

use crate::frame::{self, Reading};
use kvmreg::cpu::{self, CpuSnapshot};
use kvmreg::{Config, Guest};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

/// Escape a label value (backslash, quote, newline).
pub fn escape(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

fn labels(g: &Guest) -> String {
    format!(
        "name=\"{}\",id=\"{}\",pid=\"{}\"",
        escape(
            &g.qualified_name(crate::guests::viewer())
                .unwrap_or_default()
        ),
        g.id.map_or(String::new(), |i| i.to_string()),
        g.pid
    )
}

/// Seconds of (host user, host system, guest) of a guest's threads.
fn cpu_seconds(s: &CpuSnapshot, tids: Option<&[u32]>) -> (f64, f64, f64) {
    let hz = cpu::clock_ticks_per_second();
    let (mut u, mut k, mut g) = (0u64, 0u64, 0u64);
    for (tid, t) in &s.threads {
        if tids.is_some_and(|x| !x.contains(tid)) {
            continue;
        }
        u += t.host_user();
        k += t.stime;
        g += t.guest_time;
    }
    (u as f64 / hz, k as f64 / hz, g as f64 / hz)
}

/// The exposition text of one reading. `openmetrics` adds the `# EOF`
/// terminator and uses OpenMetrics counter naming.
pub fn exposition(r: &Reading, openmetrics: bool) -> String {
    let mut o = String::new();
    let family = |o: &mut String, name: &str, kind: &str, help: &str| {
        let _ = writeln!(o, "# HELP {name} {help}");
        let _ = writeln!(o, "# TYPE {name} {kind}");
    };
    family(
        &mut o,
        "kvmtop_guests",
        "gauge",
        "KVM guests visible to kvmtop.",
    );
    let _ = writeln!(o, "kvmtop_guests {}", r.guests.len());
    family(
        &mut o,
        "kvmtop_guest_info",
        "gauge",
        "One per guest; the backend that listed it.",
    );
    let backend = frame::backend_used(&r.backends);
    for g in &r.guests {
        let verified = g.name.as_ref().is_some_and(|n| n.is_kernel());
        let _ = writeln!(
            o,
            "kvmtop_guest_info{{{},backend=\"{}\",name_verified=\"{verified}\"}} 1",
            labels(g),
            escape(&backend)
        );
    }
    family(&mut o, "kvmtop_guest_vcpus", "gauge", "vCPUs of the guest.");
    for g in &r.guests {
        let _ = writeln!(o, "kvmtop_guest_vcpus{{{}}} {}", labels(g), g.vcpus.len());
    }
    family(
        &mut o,
        "kvmtop_guest_memory_bytes",
        "gauge",
        "Guest memory (userspace memslots), where known.",
    );
    for g in r.guests.iter().filter(|g| g.memory_bytes.is_some()) {
        let _ = writeln!(
            o,
            "kvmtop_guest_memory_bytes{{{}}} {}",
            labels(g),
            g.memory_bytes.unwrap_or(0)
        );
    }
    let cpu_name = if openmetrics {
        "kvmtop_guest_cpu_seconds"
    } else {
        "kvmtop_guest_cpu_seconds_total"
    };
    family(
        &mut o,
        cpu_name,
        "counter",
        "CPU time of the guest's VMM threads by mode: guest, host_system, host_user.",
    );
    let vms_of = crate::frame::vms_per_pid(&r.guests);
    for g in &r.guests {
        let Some(s) = r.cpu.get(&g.pid) else { continue };
        let shared = vms_of.get(&g.pid).is_some_and(|&n| n > 1);
        let tids: Vec<u32> = g.vcpus.iter().filter_map(|v| v.tid).collect();
        if shared && tids.is_empty() {
            continue;
        }
        let (u, k, gt) = cpu_seconds(s, shared.then_some(tids.as_slice()));
        for (mode, v) in [("guest", gt), ("host_system", k), ("host_user", u)] {
            let _ = writeln!(
                o,
                "kvmtop_guest_cpu_seconds_total{{{},mode=\"{mode}\"}} {v}",
                labels(g)
            );
        }
    }
    let exits_name = if openmetrics {
        "kvmtop_guest_exits"
    } else {
        "kvmtop_guest_exits_total"
    };
    family(
        &mut o,
        exits_name,
        "counter",
        "VM exits, where KVM's stats are readable.",
    );
    for g in &r.guests {
        if let Some(Ok(c)) = r.counters.get(&g.key()) {
            if let Some(v) = c.value(frame::EXITS) {
                let _ = writeln!(o, "kvmtop_guest_exits_total{{{}}} {v}", labels(g));
            }
        }
    }
    family(
        &mut o,
        "kvmtop_guest_stats_readable",
        "gauge",
        "1 if KVM's stats of the guest could be read.",
    );
    for g in &r.guests {
        let ok = matches!(r.counters.get(&g.key()), Some(Ok(_)));
        let _ = writeln!(
            o,
            "kvmtop_guest_stats_readable{{{}}} {}",
            labels(g),
            u8::from(ok)
        );
    }
    if openmetrics {
        o.push_str("# EOF\n");
    }
    o
}

fn answer(s: &mut TcpStream, reader: &mut frame::Reader) -> std::io::Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut r = BufReader::new(s.try_clone()?);
    let mut first = String::new();
    r.read_line(&mut first)?;
    let mut openmetrics = false;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
        let l = h.to_ascii_lowercase();
        if l.starts_with("accept:") && l.contains("application/openmetrics-text") {
            openmetrics = true;
        }
    }
    let path = first.split_whitespace().nth(1).unwrap_or("");
    let (status, ctype, body) = match (first.split_whitespace().next(), path) {
        (Some("GET"), "/metrics") => {
            let reading = reader.read();
            let ct = if openmetrics {
                "application/openmetrics-text; version=1.0.0; charset=utf-8"
            } else {
                "text/plain; version=0.0.4; charset=utf-8"
            };
            ("200 OK", ct, exposition(&reading, openmetrics))
        }
        (Some("GET"), "/") => (
            "200 OK",
            "text/plain",
            "kvmtop: metrics at /metrics\n".into(),
        ),
        _ => (
            "404 Not Found",
            "text/plain",
            "not found: try GET /metrics\n".into(),
        ),
    };
    write!(
        s,
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    s.flush()
}

pub fn run(cfg: &Config, listen: &str, max: Option<u64>) -> anyhow::Result<()> {
    let l = TcpListener::bind(listen).map_err(|e| {
        anyhow::anyhow!(
            "cannot listen on {listen}: {e} (pick a free address, e.g. --listen 127.0.0.1:9469)"
        )
    })?;
    eprintln!(
        "kvmtop: serving metrics on http://{}/metrics",
        l.local_addr()?
    );
    let mut reader = frame::Reader::new(cfg);
    let mut served = 0u64;
    for conn in l.incoming() {
        match conn {
            Ok(mut s) => {
                if let Err(e) = answer(&mut s, &mut reader) {
                    eprintln!("kvmtop: a metrics request failed: {e}");
                }
                served += 1;
                if max.is_some_and(|m| served >= m) {
                    break;
                }
            }
            Err(e) => eprintln!("kvmtop: accept failed: {e}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvmreg::GuestName;
    use std::time::Instant;

    #[test]
    fn labels_are_escaped_and_eof_only_for_openmetrics() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        let mut g = Guest::new(42);
        g.name = Some(GuestName::Kernel("web".into()));
        g.id = Some(3);
        g.memory_bytes = Some(1 << 20);
        let r = Reading {
            at: Instant::now(),
            guests: vec![g.into()],
            backends: vec![],
            cpu: Default::default(),
            counters: Default::default(),
            host: None,
        };
        let t = exposition(&r, false);
        assert!(
            t.contains("kvmtop_guest_vcpus{name=\"web\",id=\"3\",pid=\"42\"} 0"),
            "{t}"
        );
        assert!(
            t.contains("kvmtop_guest_memory_bytes{name=\"web\",id=\"3\",pid=\"42\"} 1048576"),
            "{t}"
        );
        assert!(
            t.contains("kvmtop_guest_stats_readable{name=\"web\",id=\"3\",pid=\"42\"} 0"),
            "{t}"
        );
        assert!(!t.contains("# EOF"));
        assert!(exposition(&r, true).ends_with("# EOF\n"));
    }
}
