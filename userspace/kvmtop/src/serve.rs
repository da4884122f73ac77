//! `kvmtop serve`: per-guest metrics in the OpenMetrics / Prometheus text
//! format over plain HTTP. Metrics are cumulative counters and gauges read
//! at scrape time, so the server keeps no state and Prometheus computes
//! the rates.
//!
//! The HTTP side is hyper's (HTTP/1.1, keep-alive, `HEAD`) on a
//! single-threaded tokio runtime: connections are served concurrently,
//! each within the limits below, so a slow or idle client cannot stall a
//! scrape, and no request can make the server buffer more than 16 KiB.
//! The exposition is `prometheus-client`'s OpenMetrics text, which
//! Prometheus asks for and any scraper of the 0.0.4 text format reads.

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
use prometheus_client::encoding::text::encode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

/// The labels every per-guest family has: the name as this user sees it
/// (`name@uid` for another user's guest), the registry id (empty without
/// one) and the owner pid.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GuestLabels {
    name: String,
    id: String,
    pid: u32,
}

/// The per-vCPU families' labels: the guest's, and the vCPU's index.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VcpuLabels {
    #[prometheus(flatten)]
    guest: GuestLabels,
    vcpu: u32,
}

/// `kvmtop_guest_network_bytes`' labels: the guest's, the device, and
/// the direction (`rx`, `tx`) from the guest's side.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NetLabels {
    #[prometheus(flatten)]
    guest: GuestLabels,
    device: String,
    direction: &'static str,
}

/// `kvmtop_guest_info`'s labels: the guest's, and where it was found.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InfoLabels {
    #[prometheus(flatten)]
    guest: GuestLabels,
    backend: String,
    name_verified: bool,
}

/// The CPU families' labels: the guest's, and the mode.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModeLabels {
    #[prometheus(flatten)]
    guest: GuestLabels,
    mode: &'static str,
}

fn labels(g: &Guest) -> GuestLabels {
    GuestLabels {
        name: g
            .qualified_name(crate::guests::viewer())
            .unwrap_or_default(),
        id: g.id.map_or(String::new(), |i| i.to_string()),
        pid: g.pid,
    }
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

type IntGauge = Family<GuestLabels, Gauge>;

/// The OpenMetrics text of one reading, written by `prometheus-client`:
/// cumulative counters and gauges as read now (Prometheus computes the
/// rates), families in a registry made for this scrape.
pub fn exposition(r: &Reading) -> String {
    let mut reg = <Registry>::with_prefix("kvmtop");
    let guests = Gauge::<i64, AtomicI64>::default();
    guests.set(i64::try_from(r.guests.len()).unwrap_or(i64::MAX));
    reg.register("guests", "KVM guests visible to kvmtop", guests);
    let info = Family::<InfoLabels, Gauge>::default();
    let backend = frame::backend_used(&r.backends);
    for g in &r.guests {
        info.get_or_create(&InfoLabels {
            guest: labels(g),
            backend: backend.clone(),
            name_verified: g.name.as_ref().is_some_and(|n| n.is_trusted()),
        })
        .set(1);
    }
    reg.register(
        "guest_info",
        "One per guest; the backend that listed it",
        info,
    );
    // vCPUs and memory only where known: no false 0 for a hidden guest.
    let vcpus = IntGauge::default();
    let memory = IntGauge::default();
    for g in &r.guests {
        if let Some(n) = g.vcpu_count() {
            vcpus.get_or_create(&labels(g)).set(n as i64);
        }
        if let Some(m) = g.memory_bytes {
            memory
                .get_or_create(&labels(g))
                .set(i64::try_from(m).unwrap_or(i64::MAX));
        }
    }
    reg.register("guest_vcpus", "vCPUs of the guest, where counted", vcpus);
    reg.register(
        "guest_memory_bytes",
        "Guest memory (userspace memslots), where known",
        memory,
    );
    let cpu_s = Family::<ModeLabels, Counter<f64, AtomicU64>>::default();
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
            cpu_s
                .get_or_create(&ModeLabels {
                    guest: labels(g),
                    mode,
                })
                .inc_by(v);
        }
    }
    reg.register(
        "guest_cpu_seconds",
        "CPU time of the guest's VMM threads by mode: guest, host_system, host_user",
        cpu_s,
    );
    let exits = Family::<GuestLabels, Counter>::default();
    let readable = IntGauge::default();
    for g in &r.guests {
        let c = r.counters.get(&g.key());
        if let Some(Ok(c)) = c {
            if let Some(v) = c.value(frame::EXITS) {
                exits.get_or_create(&labels(g)).inc_by(v);
            }
        }
        readable
            .get_or_create(&labels(g))
            .set(i64::from(matches!(c, Some(Ok(_)))));
    }
    reg.register(
        "guest_exits",
        "VM exits, where KVM's stats are readable",
        exits,
    );
    reg.register(
        "guest_stats_readable",
        "1 if KVM's stats of the guest could be read",
        readable,
    );
    register_optional_families(&mut reg, r, &vms_of);
    let mut o = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut o, &reg);
    o
}

/// The figures of kvmtop's optional columns: `kvmtop_guest_vcpu_wait_seconds`
/// (each vCPU thread's run delay: its rate is the vCPU's steal),
/// `kvmtop_guest_vcpu_cpu_seconds` (each vCPU thread's CPU time: what
/// `kvmtop_guest_cpu_seconds` has beyond their sum is the VMM's other
/// threads', %OTHER; both only grow, as counters must, and the difference
/// is left to the query, since the process and its threads are not read
/// at one instant), and the disk byte counters of a VMM running one VM.
fn register_optional_families(
    reg: &mut Registry,
    r: &Reading,
    vms_of: &rustc_hash::FxHashMap<u32, usize>,
) {
    let wait = Family::<VcpuLabels, Counter<f64, AtomicU64>>::default();
    let busy = Family::<VcpuLabels, Counter<f64, AtomicU64>>::default();
    let hz = cpu::clock_ticks_per_second();
    for g in &r.guests {
        for v in &g.vcpus {
            let Some(facts) = v.tid.and_then(|t| r.threads.get(&t)) else {
                continue;
            };
            let l = VcpuLabels {
                guest: labels(g),
                vcpu: v.index,
            };
            if let Some(s) = facts.sched {
                wait.get_or_create(&l).inc_by(s.wait_ns as f64 / 1e9);
            }
            if let Some(t) = &facts.times {
                busy.get_or_create(&l)
                    .inc_by(t.utime.saturating_add(t.stime) as f64 / hz);
            }
        }
    }
    reg.register(
        "guest_vcpu_wait_seconds",
        "Time each vCPU thread was runnable but waiting for a host CPU (its rate is the vCPU's steal)",
        wait,
    );
    let read = Family::<GuestLabels, Counter>::default();
    let written = Family::<GuestLabels, Counter>::default();
    for g in &r.guests {
        let alone = vms_of.get(&g.pid).is_some_and(|&n| n == 1);
        if let (true, Some(b)) = (alone, r.storage.get(&g.pid)) {
            read.get_or_create(&labels(g)).inc_by(b.read);
            written.get_or_create(&labels(g)).inc_by(b.written);
        }
    }
    reg.register(
        "guest_disk_read_bytes",
        "Storage reads of the guest's VMM (read_bytes of /proc/<pid>/io), for a VMM running one VM",
        read,
    );
    reg.register(
        "guest_disk_written_bytes",
        "Storage writes of the guest's VMM (write_bytes less cancelled_write_bytes), for a VMM running one VM",
        written,
    );
    let net = Family::<NetLabels, Counter>::default();
    for g in &r.guests {
        let alone = vms_of.get(&g.pid).is_some_and(|&n| n == 1);
        let Some(devs) = r.network.get(&g.pid).filter(|_| alone) else {
            continue;
        };
        for d in devs {
            let Ok(c) = &d.counters else { continue };
            let c = c.guest_view();
            for (direction, bytes) in [("rx", c.rx_bytes), ("tx", c.tx_bytes)] {
                net.get_or_create(&NetLabels {
                    guest: labels(g),
                    device: d.device.name.clone(),
                    direction,
                })
                .inc_by(bytes);
            }
        }
    }
    reg.register(
        "guest_network_bytes",
        "Bytes the guest received (direction rx) and sent (tx) on each tap or macvtap device its VMM holds, for a VMM running one VM",
        net,
    );
    reg.register(
        "guest_vcpu_cpu_seconds",
        "CPU time of each vCPU thread (guest_cpu_seconds beyond their sum is the VMM's other threads')",
        busy,
    );
}

/// Limits of the server: what one client can hold or make it buffer.
/// Headers (and a request line) larger than this are refused with 431 and
/// the connection closed; nothing larger is ever buffered.
const MAX_REQUEST_BYTES: usize = 16 << 10;
/// A request's headers must arrive within `--header-timeout` (a client
/// dribbling a byte at a time is cut off), and a connection lives at most
/// this long, idle or not.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);
/// Connections served at once; more wait in the listen backlog.
const MAX_CONNECTIONS: usize = 256;

/// What the connections share: the reader (one scrape reads at a time),
/// the header timeout, and the count of answers for `--max-requests`.
struct State {
    header_timeout: Duration,
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
            // Reading /proc blocks: off the thread that serves connections.
            let st = Arc::clone(st);
            let body = tokio::task::spawn_blocking(move || {
                let mut reader = st.reader.lock().unwrap_or_else(PoisonError::into_inner);
                exposition(&reader.read())
            })
            .await;
            match body {
                Ok(body) => {
                    let mut r = Response::new(Body::new(Bytes::from(body)));
                    r.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static(
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        ),
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
    let header_timeout = st.header_timeout;
    let svc = service_fn(move |req| {
        let st = Arc::clone(&st);
        async move { Ok::<_, Infallible>(answer(req, st).await) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_REQUEST_BYTES)
        .serve_connection(TokioIo::new(stream), svc);
    match tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.is_timeout() => eprintln!(
            "kvmtop: metrics client {peer}: no complete request within {} s: closed",
            header_timeout.as_secs()
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

pub fn run(
    cfg: &Config,
    listen: &str,
    header_timeout: Duration,
    max: Option<u64>,
) -> anyhow::Result<()> {
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
            header_timeout,
            reader: Mutex::new({
                // Scrapes are seconds apart: the optional figures (steal,
                // other, disk) are worth their files here.
                let mut r = frame::Reader::new(cfg);
                r.columns(crate::cli::Extra {
                    steal: true,
                    other: true,
                    disk: true,
                    net: true,
                });
                r
            }),
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
    fn families_labels_and_no_false_zeros() {
        let mut g = Guest::new(42);
        g.name = Some(GuestName::Kernel("we\"b".into()));
        g.id = Some(3);
        g.memory_bytes = Some(1 << 20);
        g.provenance.vcpus = Some(kvmreg::Source::ProcKvm);
        // Another whose vCPUs could not be counted: no sample, not a 0.
        let mut hidden = Guest::new(43);
        hidden.details_hidden = true;
        let mut counters: rustc_hash::FxHashMap<_, _> = Default::default();
        counters.insert(
            g.key(),
            Ok(frame::FrameCounters {
                source: kvmreg::Source::ProcKvm,
                values: [Some((7, kvmreg::Source::ProcKvm)), None, None],
                notes: Vec::new(),
            }),
        );
        let r = Reading {
            at: Instant::now(),
            guests: vec![g.into(), hidden.into()],
            backends: vec![],
            cpu: Default::default(),
            counters,
            host: None,
            threads: Default::default(),
            storage: Default::default(),
            network: Default::default(),
        };
        let t = exposition(&r);
        // The label value is escaped by the encoder.
        let l = "name=\"we\\\"b\",id=\"3\",pid=\"42\"";
        for want in [
            "# TYPE kvmtop_guests gauge".to_string(),
            "kvmtop_guests 2".to_string(),
            format!("kvmtop_guest_vcpus{{{l}}} 0"),
            format!("kvmtop_guest_memory_bytes{{{l}}} 1048576"),
            format!("kvmtop_guest_stats_readable{{{l}}} 1"),
            "# TYPE kvmtop_guest_exits counter".to_string(),
            format!("kvmtop_guest_exits_total{{{l}}} 7"),
        ] {
            assert!(t.contains(&want), "no {want} in:\n{t}");
        }
        assert!(
            !t.contains("kvmtop_guest_vcpus{name=\"\",id=\"\",pid=\"43\"}"),
            "{t}"
        );
        assert!(t.ends_with("# EOF\n"), "{t}");
    }

    fn times(tid: u32, utime: u64, stime: u64) -> kvmreg::cpu::ThreadTimes {
        kvmreg::cpu::ThreadTimes {
            tid,
            comm: "t".into(),
            state: 'S',
            utime,
            stime,
            guest_time: 0,
            start_ticks: 0,
            rss_pages: 0,
        }
    }

    #[test]
    fn vcpu_wait_and_vcpu_cpu_are_counters() {
        let hz = cpu::clock_ticks_per_second() as u64;
        let mut g = Guest::new(42);
        g.name = Some(GuestName::Kernel("web".into()));
        g.vcpus.push(kvmreg::Vcpu {
            index: 0,
            vcpu_id: Some(0),
            tid: Some(50),
            tid_source: None,
            fd: None,
        });
        let mut threads: rustc_hash::FxHashMap<u32, frame::ThreadFacts> = Default::default();
        threads.insert(
            50,
            frame::ThreadFacts {
                times: Some(times(50, 3 * hz, hz)),
                sched: Some(kvmreg::cpu::SchedStat {
                    run_ns: 4_000_000_000,
                    wait_ns: 1_500_000_000,
                }),
            },
        );
        let mut cpu_map: rustc_hash::FxHashMap<u32, CpuSnapshot> = Default::default();
        cpu_map.insert(
            42,
            CpuSnapshot {
                pid: 42,
                at: Instant::now(),
                threads: [(42, times(42, 5 * hz, 2 * hz))].into_iter().collect(),
            },
        );
        let r = Reading {
            at: Instant::now(),
            guests: vec![g.into()],
            backends: vec![],
            cpu: cpu_map,
            counters: Default::default(),
            host: None,
            threads,
            storage: Default::default(),
            network: Default::default(),
        };
        let t = exposition(&r);
        let l = "name=\"web\",id=\"\",pid=\"42\"";
        for want in [
            "# TYPE kvmtop_guest_vcpu_wait_seconds counter".to_string(),
            format!("kvmtop_guest_vcpu_wait_seconds_total{{{l},vcpu=\"0\"}} 1.5"),
            // 3 s user + 1 s system of the vCPU thread.
            format!("kvmtop_guest_vcpu_cpu_seconds_total{{{l},vcpu=\"0\"}} 4.0"),
        ] {
            assert!(t.contains(&want), "no {want} in:\n{t}");
        }
    }
}
