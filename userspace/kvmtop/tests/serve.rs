//! `kvmtop serve` as a client meets it, over a fake registry tree (any
//! host): GET and HEAD with query strings, other methods and paths, and
//! the limits that keep one client from stalling or bloating the server:
//! an idle connection and a client dribbling its request do not delay
//! 50 concurrent scrapes and are cut off after the header timeout, and an
//! oversized request is refused without the server's memory growing.

mod common;

use common::{fake_registry_vm, kvmtop, TempDir};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A `kvmtop serve` on a free loopback port, killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn start(root: &Path, log: &Path) -> Server {
        Server::start_with(root, log, &[])
    }

    fn start_with(root: &Path, log: &Path, args: &[&str]) -> Server {
        let mut child = kvmtop()
            .args(["serve", "--listen", "127.0.0.1:0", "--proc-root"])
            .arg(root)
            .args(args)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).expect("serve log"))
            .spawn()
            .expect("start kvmtop serve");
        let start = Instant::now();
        loop {
            let t = std::fs::read_to_string(log).unwrap_or_default();
            if let Some(a) = t.split("http://").nth(1).and_then(|s| s.split('/').next()) {
                let addr = a.to_string();
                return Server { child, addr };
            }
            if let Some(st) = child.try_wait().expect("wait") {
                panic!("kvmtop serve exited ({st}): {t}");
            }
            assert!(start.elapsed() < Duration::from_secs(20), "no address: {t}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(&self.addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        s
    }

    /// Send `request` whole and read the answer to the end (the request
    /// asks the server to close).
    fn ask(&self, request: &str) -> String {
        let mut s = self.connect();
        s.write_all(request.as_bytes()).expect("send");
        let mut r = String::new();
        s.read_to_string(&mut r).expect("read answer");
        r
    }

    fn get(&self, path: &str) -> String {
        self.ask(&format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ))
    }

    /// Resident memory of the server, in KiB.
    fn rss_kib(&self) -> u64 {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("server status");
        s.lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS")
    }
}

fn status(answer: &str) -> &str {
    answer.split("\r\n").next().unwrap_or("")
}

fn tree(tag: &str) -> TempDir {
    let d = TempDir::new(tag);
    fake_registry_vm(&d, 10, 3, "web", 5);
    d
}

#[test]
fn get_head_query_strings_methods_and_paths() {
    let d = tree("serve-http");
    let srv = Server::start(&d.0, &d.0.join("serve.log"));
    let a = srv.get("/metrics?x=1");
    assert_eq!(status(&a), "HTTP/1.1 200 OK", "{a}");
    assert!(
        a.contains("kvmtop_guest_info{name=\"web\",id=\"3\",pid=\"10\""),
        "{a}"
    );
    let h = srv.ask("HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    assert_eq!(status(&h), "HTTP/1.1 200 OK", "{h}");
    let (head, body) = h.split_once("\r\n\r\n").expect("head");
    assert!(body.is_empty(), "HEAD answered with a body: {body}");
    assert!(head.to_lowercase().contains("content-length:"), "{head}");
    let p = srv
        .ask("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert_eq!(status(&p), "HTTP/1.1 405 Method Not Allowed", "{p}");
    assert!(p.to_lowercase().contains("allow: get, head"), "{p}");
    assert_eq!(status(&srv.get("/nope")), "HTTP/1.1 404 Not Found");
    let om = srv.ask(
        "GET /metrics HTTP/1.1\r\nHost: x\r\nAccept: application/openmetrics-text;version=1.0.0\r\nConnection: close\r\n\r\n",
    );
    assert!(om.ends_with("# EOF\n"), "{om}");
}

/// A client that sends `GET /metrics` headers a byte every `pause` until
/// told to stop or cut off; gives back whether the server cut it off.
fn dribble(
    mut s: TcpStream,
    pause: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<bool> {
    // A request line and a host, then one more valid header line after
    // another: a request that is never complete, and never malformed
    // (which the server would answer with 400 and close).
    let head = b"GET /metrics HTTP/1.1\r\nHost: x\r\n".iter();
    std::thread::spawn(move || {
        for b in head.chain(b"X-A: b\r\n".iter().cycle()) {
            if stop.load(Ordering::Relaxed) {
                return false;
            }
            if s.write_all(&[*b]).is_err() {
                return true;
            }
            std::thread::sleep(pause);
        }
        unreachable!("cycle() ends only by return")
    })
}

/// Whether the server still holds `s` open: no end of stream and no error
/// waiting on it.
fn still_open(s: &TcpStream) -> bool {
    s.set_nonblocking(true).expect("nonblocking");
    let mut b = [0u8; 1];
    let open = matches!(s.peek(&mut b), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock);
    s.set_nonblocking(false).expect("blocking");
    open
}

/// The property is an order, not a time budget (the test VM's emulated CPU
/// makes any budget a guess): with a header timeout longer than a
/// scraper's patience, a server that served one connection at a time would
/// answer no scrape before it gave up on the idle or the dribbling client,
/// and the scrapers' 40 s read timeout would fail the test.
#[test]
fn idle_and_dribbling_clients_do_not_stall_scrapes() {
    let d = tree("serve-slow");
    let srv = Server::start_with(&d.0, &d.0.join("serve.log"), &["--header-timeout", "59"]);
    let idle = srv.connect();
    let stop = Arc::new(AtomicBool::new(false));
    let dribbler = dribble(srv.connect(), Duration::from_millis(200), Arc::clone(&stop));
    let scrapers: Vec<_> = (0..50)
        .map(|_| {
            let addr = srv.addr.clone();
            std::thread::spawn(move || {
                let mut s = TcpStream::connect(&addr).expect("connect");
                s.set_read_timeout(Some(Duration::from_secs(40))).unwrap();
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .expect("send");
                let mut r = String::new();
                s.read_to_string(&mut r)
                    .expect("read (a stalled server times out here)");
                r
            })
        })
        .collect();
    for t in scrapers {
        let r = t.join().expect("scraper");
        assert_eq!(status(&r), "HTTP/1.1 200 OK", "{r}");
    }
    // All answered while both slow clients were still being served.
    assert!(
        still_open(&idle),
        "the idle client was closed before the scrapes ended"
    );
    stop.store(true, Ordering::Relaxed);
    assert!(
        !dribbler.join().expect("dribbler"),
        "the dribbling client was cut off before the scrapes ended"
    );
}

#[test]
fn idle_and_dribbling_clients_are_cut_off_after_the_header_timeout() {
    let d = tree("serve-cut");
    let log = d.0.join("serve.log");
    let srv = Server::start_with(&d.0, &log, &["--header-timeout", "1"]);
    let mut idle = srv.connect();
    let stop = Arc::new(AtomicBool::new(false));
    let dribbler = dribble(srv.connect(), Duration::from_millis(200), Arc::clone(&stop));
    // The server closes the idle connection: end of stream (or a reset),
    // well before the read timeout of 20 s.
    let mut b = [0u8; 64];
    let r = idle.read(&mut b);
    assert!(
        matches!(r, Ok(0) | Err(_)),
        "the idle client got {r:?} instead of a close"
    );
    let cut = dribbler.join().expect("dribbler");
    assert!(cut, "the dribbling client was never cut off");
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains("no complete request within 1 s"),
        "the cut-off was not logged: {text}"
    );
    // And the server still answers.
    assert_eq!(status(&srv.get("/metrics")), "HTTP/1.1 200 OK");
}

#[test]
fn an_oversized_request_is_refused_and_not_kept() {
    let d = tree("serve-big");
    let srv = Server::start(&d.0, &d.0.join("serve.log"));
    assert_eq!(status(&srv.get("/metrics")), "HTTP/1.1 200 OK");
    let before = srv.rss_kib();
    // A 300 MiB request line, sent until the server stops reading.
    let mut s = srv.connect();
    s.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /").unwrap();
    let chunk = vec![b'a'; 1 << 20];
    let mut sent = 0usize;
    for _ in 0..300 {
        if s.write_all(&chunk).is_err() {
            break;
        }
        sent += chunk.len();
    }
    let mut r = String::new();
    let _ = s.read_to_string(&mut r);
    assert!(
        r.is_empty() || status(&r).starts_with("HTTP/1.1 431"),
        "after {sent} bytes: {r}"
    );
    drop(s);
    // Still serving, and no bigger than a few MiB over its start.
    assert_eq!(status(&srv.get("/metrics")), "HTTP/1.1 200 OK");
    let after = srv.rss_kib();
    assert!(
        after < 50 << 10 && after < before + (8 << 10),
        "resident memory {before} KiB before, {after} KiB after the oversized request"
    );
}
