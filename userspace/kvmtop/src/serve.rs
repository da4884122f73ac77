//! `kvmtop serve`: per-guest metrics in the OpenMetrics / Prometheus text
//! format over plain HTTP. Metrics are cumulative counters and gauges read
//! at scrape time, so the server keeps no state and Prometheus computes
//! the rates.
//!
//! The HTTP side is hyper's (HTTP/1.1, keep-alive, `HEAD`) on a
//! single-threaded tokio runtime: connections are served concurrently,
//! each within the limits below, so a slow or idle client cannot stall a
//! scrape, and no request can make the server buffer more than 16 KiB.
//! The exposition text is written here (the families are few and fixed).

use crate::frame::{self, Reading};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use kvmreg::cpu::{self, CpuSnapshot};
use kvmreg::{Config, Guest};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

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
    // Only where counted: a hidden or uncountable guest has no sample
    // rather than a false 0.
    for g in &r.guests {
        if let Some(n) = g.vcpu_count() {
            let _ = writeln!(o, "kvmtop_guest_vcpus{{{}}} {n}", labels(g));
        }
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

/// Limits of the server: what one client can hold or make it buffer.
/// Headers (and a request line) larger than this are refused with 431 and
/// the connection closed; nothing larger is ever buffered.
const MAX_REQUEST_BYTES: usize = 16 << 10;
/// A request's headers must arrive within this (a client dribbling a byte
/// at a time is cut off), and a connection lives at most this long, idle
/// or not.
const HEADER_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;

/// What the connections share: the reader (one scrape reads at a time),
/// and the count of answers for `--max-requests`.
struct State {
    reader: Mutex<frame::Reader>,
    served: AtomicU64,
    max: Option<u64>,
    done: Notify,
}

type Body = Full<Bytes>;

fn plain(status: StatusCode, text: &str) -> Response<Body> {
    let mut r = Response::new(Body::new(Bytes::from(text.to_string())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Answer one request. `GET` and `HEAD` of `/metrics` (query strings are
/// ignored) and `/`; anything else says what exists.
async fn answer(req: Request<Incoming>, st: Arc<State>) -> Response<Body> {
    let r = respond(&req, &st).await;
    let n = st.served.fetch_add(1, Ordering::Relaxed) + 1;
    if st.max.is_some_and(|m| n >= m) {
        st.done.notify_one();
    }
    r
}

async fn respond(req: &Request<Incoming>, st: &Arc<State>) -> Response<Body> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(
            StatusCode::METHOD_NOT_ALLOWED,
            "only GET and HEAD: try GET /metrics\n",
        );
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/metrics" => {
            let openmetrics = req
                .headers()
                .get_all(header::ACCEPT)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.contains("application/openmetrics-text"));
            // Reading /proc blocks: off the thread that serves connections.
            let st = Arc::clone(st);
            let body = tokio::task::spawn_blocking(move || {
                let mut reader = st.reader.lock().unwrap_or_else(PoisonError::into_inner);
                exposition(&reader.read(), openmetrics)
            })
            .await;
            match body {
                Ok(body) => {
                    let mut r = Response::new(Body::new(Bytes::from(body)));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(if openmetrics {
                            "application/openmetrics-text; version=1.0.0; charset=utf-8"
                        } else {
                            "text/plain; version=0.0.4; charset=utf-8"
                        }),
                    );
                    r
                }
                Err(e) => {
                    eprintln!("kvmtop: reading the metrics failed: {e}");
                    plain(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "reading the metrics failed (see kvmtop's log)\n",
                    )
                }
            }
        }
        "/" => plain(StatusCode::OK, "kvmtop: metrics at /metrics\n"),
        _ => plain(StatusCode::NOT_FOUND, "not found: try GET /metrics\n"),
    }
}

/// Serve one connection within the limits; what went wrong is logged with
/// the peer, in words.
async fn connection(stream: TcpStream, peer: SocketAddr, st: Arc<State>) {
    let svc = service_fn(move |req| {
        let st = Arc::clone(&st);
        async move { Ok::<_, Infallible>(answer(req, st).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(MAX_REQUEST_BYTES)
        .serve_connection(TokioIo::new(stream), svc);
    match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.is_timeout() => eprintln!(
            "kvmtop: metrics client {peer}: no complete request within {} s: closed",
            HEADER_TIMEOUT.as_secs()
        ),
        Ok(Err(e)) if e.is_parse_too_large() => eprintln!(
            "kvmtop: metrics client {peer}: request larger than {} KiB: refused",
            MAX_REQUEST_BYTES >> 10
        ),
        Ok(Err(e)) => eprintln!("kvmtop: metrics client {peer}: {e}"),
        Err(_) => eprintln!(
            "kvmtop: metrics client {peer}: connection open for {} s: closed",
            CONNECTION_LIFETIME.as_secs()
        ),
    }
}

async fn serve(l: TcpListener, st: Arc<State>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            _ = st.done.notified() => break,
            a = async {
                let permit = Arc::clone(&slots).acquire_owned().await;
                (permit, l.accept().await)
            } => a,
        };
        match accepted {
            (Ok(permit), Ok((stream, peer))) => {
                let st = Arc::clone(&st);
                conns.spawn(async move {
                    connection(stream, peer, st).await;
                    drop(permit);
                });
            }
            (_, Err(e)) => eprintln!("kvmtop: accepting a metrics connection failed: {e}"),
            (Err(_), _) => break,
        }
        while conns.try_join_next().is_some() {}
    }
    // `--max-requests`: the answers in flight are sent before exiting.
    while conns.join_next().await.is_some() {}
}

pub fn run(cfg: &Config, listen: &str, max: Option<u64>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()?;
    rt.block_on(async {
        let l = TcpListener::bind(listen).await.map_err(|e| {
            anyhow::anyhow!(
                "cannot listen on {listen}: {e} (pick a free address, e.g. --listen 127.0.0.1:9469)"
            )
        })?;
        eprintln!(
            "kvmtop: serving metrics on http://{}/metrics",
            l.local_addr()?
        );
        let st = Arc::new(State {
            reader: Mutex::new(frame::Reader::new(cfg)),
            served: AtomicU64::new(0),
            max,
            done: Notify::new(),
        });
        serve(l, st).await;
        Ok(())
    })
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
        g.provenance.vcpus = Some(kvmreg::Source::ProcKvm);
        // Another whose vCPUs could not be counted: no sample, not a 0.
        let mut hidden = Guest::new(43);
        hidden.details_hidden = true;
        let r = Reading {
            at: Instant::now(),
            guests: vec![g.into(), hidden.into()],
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
        assert!(
            !t.contains("kvmtop_guest_vcpus{name=\"\",id=\"\",pid=\"43\"}"),
            "{t}"
        );
        assert!(!t.contains("# EOF"));
        assert!(exposition(&r, true).ends_with("# EOF\n"));
    }
}
