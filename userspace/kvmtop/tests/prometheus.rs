//! A real Prometheus server (Debian's `prometheus` package) on loopback
//! scrapes `kvmtop serve` while a fixture guest runs, and its HTTP query API
//! must return a kvmtop metric of that guest. Without the `prometheus`
//! binary or without /dev/kvm the test says SKIPPED and checks nothing.

mod common;

use common::{kvm_usable, Fixture, TempDir};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Children killed and reaped on drop, whichever way the test ends.
struct Children(Vec<Child>);

impl Drop for Children {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn find_in_path(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(bin))
            .find(|f| f.is_file())
    })
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

fn tail(path: &Path, lines: usize) -> String {
    let t = std::fs::read_to_string(path).unwrap_or_default();
    let v: Vec<&str> = t.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Percent-encode a query-string value.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `GET path` over HTTP/1.0; the body, or an error text.
fn http_get(addr: &str, path: &str) -> Result<String, String> {
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").map_err(|e| e.to_string())?;
    let mut r = String::new();
    s.read_to_string(&mut r).map_err(|e| format!("read: {e}"))?;
    match r.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.") && head.contains(" 200 ") => {
            Ok(body.to_string())
        }
        _ => Err(format!("unexpected answer: {r}")),
    }
}

/// The address `kvmtop serve` printed on its stderr (written to `log`).
fn serve_address(log: &Path, serve: &mut Child) -> String {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        let t = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(a) = t.split("http://").nth(1).and_then(|s| s.split('/').next()) {
            if t.contains("/metrics") {
                return a.to_string();
            }
        }
        if let Some(st) = serve.try_wait().expect("wait kvmtop serve") {
            panic!("kvmtop serve exited ({st}): {t}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("kvmtop serve printed no address: {}", tail(log, 20));
}

#[test]
fn prometheus_scrapes_serve_and_answers_a_query_for_the_fixture_guest() {
    let test = "prometheus_scrapes_serve_and_answers_a_query_for_the_fixture_guest";
    let Some(prometheus) = find_in_path("prometheus") else {
        kvmreg_testkit::skip(
            kvmreg_testkit::Facility::Prometheus,
            test,
            "no `prometheus` binary in PATH (apt-get install prometheus); \
             the Prometheus scrape was NOT tested",
        );
        return;
    };
    if !kvm_usable(test) {
        return;
    }
    let fx = Fixture::start(&["prom"], 20);
    let guest = fx.lines[0].clone();
    let dir = TempDir::new("prometheus");
    let mut kids = Children(Vec::new());

    let serve_log = dir.0.join("serve.log");
    kids.0.push(
        common::kvmtop()
            .args(["serve", "--listen", "127.0.0.1:0"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&serve_log).expect("serve log"))
            .spawn()
            .expect("start kvmtop serve"),
    );
    let target = serve_address(&serve_log, &mut kids.0[0]);

    dir.write(
        "prometheus.yml",
        format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: kvmtop\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    );
    let port = free_port();
    let api = format!("127.0.0.1:{port}");
    let prom_log = dir.0.join("prometheus.log");
    let prom_out = std::fs::File::create(&prom_log).expect("prometheus log");
    kids.0.push(
        Command::new(&prometheus)
            .arg(format!("--config.file={}/prometheus.yml", dir.path()))
            .arg(format!("--storage.tsdb.path={}/data", dir.path()))
            .arg(format!("--web.listen-address={api}"))
            .stdout(prom_out.try_clone().expect("log fd"))
            .stderr(prom_out)
            .spawn()
            .expect("start prometheus"),
    );

    let query = format!("kvmtop_guest_vcpus{{pid=\"{}\"}}", guest.pid);
    let path = format!("/api/v1/query?query={}", encode(&query));
    let start = Instant::now();
    let mut last: String;
    let sample = loop {
        if let Some(st) = kids.0[1].try_wait().expect("wait prometheus") {
            panic!(
                "prometheus exited ({st}); its output:\n{}",
                tail(&prom_log, 30)
            );
        }
        match http_get(&api, &path) {
            Ok(body) => {
                let v: Value = serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("bad JSON from prometheus ({e}): {body}"));
                let first = v["data"]["result"].as_array().and_then(|r| r.first());
                if v["status"] == "success" {
                    if let Some(s) = first {
                        eprintln!(
                            "prometheus answered {query} after {:?}: {body}",
                            start.elapsed()
                        );
                        break s.clone();
                    }
                }
                last = body;
            }
            Err(e) => last = e,
        }
        if start.elapsed() > Duration::from_secs(60) {
            let targets = http_get(&api, "/api/v1/targets").unwrap_or_else(|e| e);
            panic!(
                "no sample of {query} within 60 s\nlast answer: {last}\ntargets: {targets}\n\
                 kvmtop serve: {}\nprometheus output (tail):\n{}",
                tail(&serve_log, 10),
                tail(&prom_log, 30)
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    };

    let m = &sample["metric"];
    assert_eq!(m["__name__"], "kvmtop_guest_vcpus", "{sample:#}");
    assert_eq!(m["job"], "kvmtop", "{sample:#}");
    assert_eq!(m["instance"], target.as_str(), "{sample:#}");
    assert_eq!(m["pid"], guest.pid.to_string(), "{sample:#}");
    // The fixture starts its guest with one vCPU.
    let value = sample["value"][1].as_str().unwrap_or_default();
    assert_eq!(value, "1", "{sample:#}");
    if Path::new("/proc/kvm").exists() {
        assert!(
            guest.named,
            "registry kernel but the fixture guest has no name"
        );
        assert_eq!(m["name"], guest.name.as_str(), "{sample:#}");
        let id = guest.id.expect("id of a named guest").to_string();
        assert_eq!(m["id"], id.as_str(), "{sample:#}");
    } else {
        eprintln!(
            "NOTE: kernel without the VM registry (/proc/kvm missing): \
             name/id labels not checked, only pid and value"
        );
        // Prometheus drops empty labels, as kvmtop serves name="" id="".
        assert!(m.get("name").is_none(), "{sample:#}");
    }
}
