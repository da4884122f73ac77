//! Reading the output of Rust test binaries (libtest's default format),
//! so the project's Rust tests can run inside the test VM as suites.
//!
//! libtest's machine-readable formats need a nightly compiler, so the
//! stable human format is parsed: `running N tests`, then one
//! `test NAME ... ok|FAILED|ignored` line per test.
//!
//! A test that could not run says so in one line, `SKIPPED <test>: <why>`
//! (the `kvmreg-testkit` crate's convention), and returns: libtest calls
//! that `ok`. With `--show-output` what each test printed follows in a
//! `---- NAME stdout ----` section, so such a test is counted as skipped
//! here, with its reason, never as passed. A test that ran but could not
//! check one thing prints `NOT CHECKED: <what>`; it stays a pass with that
//! as its note, listed in the summary.

use crate::tap::{Outcome, Parsed, TestPoint};

/// Parses test binaries' output (one, or several one after the other, as
/// `cargo test` prints them) into test points.
pub fn parse(text: &str) -> Parsed {
    let mut p = Parsed::default();
    // Where the current binary's points begin, and the test whose
    // `--show-output` section is being read.
    let mut binary_start = 0;
    let mut section: Option<&str> = None;
    for line in text.lines() {
        if let Some(name) = line
            .strip_prefix("---- ")
            .and_then(|r| r.strip_suffix(" stdout ----"))
        {
            section = Some(name);
            continue;
        }
        // The lists that close the sections.
        if line == "successes:" || line == "failures:" || line.starts_with("test result: ") {
            section = None;
        }
        if let Some(name) = section {
            if let Some(point) = p.points[binary_start..].iter_mut().find(|t| t.name == name) {
                read_section_line(point, line);
            }
            continue;
        }
        if let Some(n) = line
            .strip_prefix("running ")
            .and_then(|r| r.strip_suffix(" tests").or_else(|| r.strip_suffix(" test")))
            .and_then(|n| n.parse::<usize>().ok())
        {
            *p.planned.get_or_insert(0) += n;
            binary_start = p.points.len();
        } else if let Some(rest) = line.strip_prefix("test ") {
            let Some((name, result)) = rest.rsplit_once(" ... ") else {
                continue;
            };
            let (outcome, note) = match result.trim() {
                "ok" => (Outcome::Pass, None),
                "FAILED" => (Outcome::Fail, None),
                r if r.starts_with("ignored") => (Outcome::Skip, Some(r.to_string())),
                _ => continue,
            };
            p.points.push(TestPoint {
                name: name.to_string(),
                outcome,
                note,
            });
        }
    }
    if p.planned == Some(0) {
        p.skip_all = Some("the binary has no tests".into());
    }
    p
}

/// One line a test printed: a skip turns its pass into a skip; the first
/// partial check becomes its note.
fn read_section_line(point: &mut TestPoint, line: &str) {
    if point.outcome == Outcome::Fail {
        read_failure_line(point, line);
        return;
    }
    if point.outcome != Outcome::Pass {
        return;
    }
    if let Some(why) = skip_reason(line) {
        point.outcome = Outcome::Skip;
        point.note = Some(why.to_string());
    } else if line.starts_with("NOT CHECKED") && point.note.is_none() {
        point.note = Some(line.to_string());
    }
}

/// A failed test's note: where it panicked and the first line of the
/// message, so a summary can say why without the whole output.
fn read_failure_line(point: &mut TestPoint, line: &str) {
    match &mut point.note {
        None if line.contains(" panicked at ") => point.note = Some(line.to_string()),
        Some(n) if !n.contains(" | ") && !line.trim().is_empty() => {
            n.push_str(" | ");
            n.push_str(line.trim());
        }
        _ => {}
    }
}

/// `SKIPPED <test>: <why>` (or `SKIPPED: <why>`) -> `<why>`.
fn skip_reason(line: &str) -> Option<&str> {
    let rest = line.strip_prefix("SKIPPED")?;
    let why = match rest.split_once(": ") {
        Some((_, why)) => why,
        None => rest,
    };
    let why = why.trim();
    Some(if why.is_empty() {
        "no reason given"
    } else {
        why
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_libtest_output() {
        let out = "\nrunning 3 tests\ntest a::b ... ok\ntest c ... FAILED\n\
                   test d ... ignored, needs root\n\nfailures:\n\n---- c stdout ----\n\
                   test result: FAILED. 1 passed; 1 failed; 1 ignored\n";
        let p = parse(out);
        assert_eq!(p.planned, Some(3));
        let got: Vec<_> = p
            .points
            .iter()
            .map(|t| (t.name.as_str(), t.outcome))
            .collect();
        assert_eq!(
            got,
            [
                ("a::b", Outcome::Pass),
                ("c", Outcome::Fail),
                ("d", Outcome::Skip)
            ]
        );
    }

    #[test]
    fn a_test_that_printed_skipped_is_a_skip_and_not_checked_a_note() {
        let out = "\nrunning 3 tests\ntest a ... ok\ntest b ... ok\ntest c ... ok\n\n\
                   successes:\n\n---- a stdout ----\nSKIPPED a: /dev/kvm not usable here\n\n\
                   ---- b stdout ----\nsome output\nNOT CHECKED: no guest samples\n\n\
                   ---- c stdout ----\nSKIPPED: no tmux\n\n\
                   successes:\n    a\n    b\n    c\n\ntest result: ok. 3 passed\n\
                   \nrunning 1 test\ntest d ... ok\n\ntest result: ok. 1 passed\n";
        let p = parse(out);
        let got: Vec<_> = p
            .points
            .iter()
            .map(|t| (t.name.as_str(), t.outcome, t.note.as_deref()))
            .collect();
        assert_eq!(
            got,
            [
                ("a", Outcome::Skip, Some("/dev/kvm not usable here")),
                ("b", Outcome::Pass, Some("NOT CHECKED: no guest samples")),
                ("c", Outcome::Skip, Some("no tmux")),
                ("d", Outcome::Pass, None),
            ]
        );
    }

    #[test]
    fn a_failed_test_that_skipped_first_stays_failed() {
        let out = "running 1 test\ntest a ... FAILED\n\nfailures:\n\n\
                   ---- a stdout ----\nSKIPPED a: no tmux\n\nfailures:\n    a\n";
        let p = parse(out);
        assert_eq!(p.points[0].outcome, Outcome::Fail);
    }

    #[test]
    fn a_failed_test_notes_where_and_why_it_panicked() {
        let out = "running 1 test\ntest a ... FAILED\n\nfailures:\n\n\
                   ---- a stdout ----\nsome output\n\
                   thread 'a' panicked at tests/x.rs:5:9:\nsteal 12% not near 50%\n\
                   second line\n\nfailures:\n    a\n";
        let p = parse(out);
        assert_eq!(
            p.points[0].note.as_deref(),
            Some("thread 'a' panicked at tests/x.rs:5:9: | steal 12% not near 50%")
        );
    }

    #[test]
    fn no_tests_is_no_points() {
        let p = parse("\nrunning 0 tests\n\ntest result: ok. 0 passed\n");
        assert_eq!(p.planned, Some(0));
        assert!(p.points.is_empty());
        assert!(p.skip_all.is_some());
    }
}
