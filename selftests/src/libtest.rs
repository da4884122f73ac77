//! Reading the output of Rust test binaries (libtest's default format),
//! so the project's Rust tests can run inside the test VM as suites.
//!
//! libtest's machine-readable formats need a nightly compiler, so the
//! stable human format is parsed: `running N tests`, then one
//! `test NAME ... ok|FAILED|ignored` line per test.

use crate::tap::{Outcome, Parsed, TestPoint};

/// Parses one test binary's output into test points.
pub fn parse(text: &str) -> Parsed {
    let mut p = Parsed::default();
    for line in text.lines() {
        if let Some(n) = line
            .strip_prefix("running ")
            .and_then(|r| r.strip_suffix(" tests").or_else(|| r.strip_suffix(" test")))
            .and_then(|n| n.parse::<usize>().ok())
        {
            *p.planned.get_or_insert(0) += n;
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
    fn no_tests_is_no_points() {
        let p = parse("\nrunning 0 tests\n\ntest result: ok. 0 passed\n");
        assert_eq!(p.planned, Some(0));
        assert!(p.points.is_empty());
        assert!(p.skip_all.is_some());
    }
}
