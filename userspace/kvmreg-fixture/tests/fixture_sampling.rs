//! End to end: sample the fixture's vCPU threads with perf and check that
//! guest-mode samples land on the right guest and on `hot_a` / `hot_b` in
//! about the fixture's 70/30 split, resolved with its symbol file.

use kvmreg::perf::record::CpuMode;
use kvmreg::perf::{Attributor, PerfError, Sampler, SamplerConfig};
use kvmreg::symbols::{kallsyms, Symbolizer};
use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn guest_samples_land_on_the_right_guest_and_function() {
    let test = "guest_samples_land_on_the_right_guest_and_function";
    if !kvmreg_testkit::kvm_usable(test) {
        return;
    }
    let dir = std::env::temp_dir().join(format!("kvmreg-sampling-{}", std::process::id()));
    // Unique names: a registry kernel refuses duplicates (EEXIST).
    let names = format!("sa-{0},sb-{0}", std::process::id());
    let mut child = Command::new(env!("CARGO_BIN_EXE_kvmreg-fixture"))
        .args(["--vcpus", "1", "--busy", "40", "--guests", &names, "--out"])
        .arg(&dir)
        .stdout(Stdio::piped())
        .spawn()
        .expect("start fixture");
    let out = child.stdout.take().expect("stdout");
    let mut pids = Vec::new();
    for l in BufReader::new(out).lines() {
        let l = l.expect("line");
        if l == "ready" {
            break;
        }
        let f: Vec<&str> = l.split_whitespace().collect();
        pids.push((f[1].to_string(), f[5].parse::<u32>().expect("pid")));
    }
    let d = kvmreg::discover();
    let guests: Vec<kvmreg::Guest> = d
        .guests
        .into_iter()
        .filter(|g| pids.iter().any(|(_, p)| *p == g.pid))
        .collect();
    assert_eq!(guests.len(), 2);
    let mut sampler = match Sampler::new(&guests, SamplerConfig::default()) {
        Ok(s) => s,
        Err(e @ PerfError::Permission { .. }) => {
            let _ = child.kill();
            let _ = child.wait();
            kvmreg_testkit::skip(
                kvmreg_testkit::Facility::Perf,
                test,
                format_args!("{e}; sampling was NOT tested"),
            );
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(
        sampler.attribution() == kvmreg::perf::Attribution::GuestId,
        kvmreg::perf::probe_guest_id()
    );
    let attr = Attributor::new(&guests);
    let syms = kallsyms::load(&dir.join("kallsyms")).expect("fixture kallsyms");
    let mut profile = kvmreg::perf::profile::Profile::new(&guests, |_| syms.slots());
    let mut per_guest_fn: HashMap<(usize, String), u64> = HashMap::new();
    let mut modes: HashMap<CpuMode, u64> = HashMap::new();
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(100));
        sampler.poll(|s| {
            profile.add(&s, |_, ip| syms.slot(ip));
            *modes.entry(s.mode).or_default() += 1;
            if let Some(o) = attr.owner(&s) {
                let name = syms.lookup(s.ip).map_or("?".to_string(), |r| r.name);
                *per_guest_fn.entry((o.guest, name)).or_default() += 1;
            }
        });
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!(
        "modes {modes:?} per guest/function {per_guest_fn:?} lost {} bad {}",
        sampler.lost(),
        sampler.bad_records()
    );
    assert_eq!(sampler.bad_records(), 0);
    let total: u64 = modes.values().sum();
    assert!(
        total >= 100,
        "only {total} samples of two busy vCPU threads in 2 s"
    );
    // Every guest-mode sample of a vCPU thread belongs to its guest and
    // resolves to a fixture function.
    let attributed: u64 = per_guest_fn.values().sum();
    let in_profile: u64 = profile
        .guests
        .iter()
        .map(|g| g.guest_samples() + g.host)
        .sum();
    assert_eq!(in_profile, total, "every sample is of a known vCPU thread");
    assert_eq!(profile.unattributed, 0);
    let guest_samples: u64 = modes
        .iter()
        .filter(|(m, _)| m.is_guest())
        .map(|(_, n)| n)
        .sum();
    assert_eq!(attributed, guest_samples);
    assert!(
        per_guest_fn
            .keys()
            .all(|(_, f)| ["hot_a", "hot_b", "main"].contains(&f.as_str())),
        "{per_guest_fn:?}"
    );
    if guest_samples < 50 {
        // Where guest-mode samples are known to arrive (the harness's test
        // VM sets this), too few of them is a failure, not a skip.
        assert!(
            std::env::var_os("KVMREG_REQUIRE_GUEST_SAMPLES").is_none(),
            "KVMREG_REQUIRE_GUEST_SAMPLES is set, but only {guest_samples} of {total} samples were guest mode"
        );
        // Seen on a nested host: its kernel handles the sampling timer after
        // leaving guest context, so almost every sample is host-kernel.
        eprintln!(
            "NOT CHECKED: the hot_a/hot_b split needs guest-mode samples; this kernel tagged only {guest_samples} of {total} samples as guest mode"
        );
        return;
    }
    for gi in 0..guests.len() {
        let a = per_guest_fn
            .get(&(gi, "hot_a".into()))
            .copied()
            .unwrap_or(0);
        let b = per_guest_fn
            .get(&(gi, "hot_b".into()))
            .copied()
            .unwrap_or(0);
        assert!(a + b >= 20, "guest {gi}: hot_a {a} hot_b {b}");
        let share = a as f64 / (a + b) as f64;
        assert!(
            (0.5..0.9).contains(&share),
            "guest {gi}: hot_a share {share:.2} ({a}/{b})"
        );
    }
}
