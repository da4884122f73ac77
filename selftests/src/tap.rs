//! TAP: reading the suites' output and writing the run's results.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Pass,
    Fail,
    Skip,
}

/// One test point.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TestPoint {
    pub name: String,
    pub outcome: Outcome,
    /// The reason after `# SKIP`, or why the harness failed the point.
    pub note: Option<String>,
}

/// The test points of one TAP stream and what the stream itself said.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub points: Vec<TestPoint>,
    pub planned: Option<usize>,
    /// `1..0 # SKIP reason`: the whole stream skipped.
    pub skip_all: Option<String>,
    pub bail_out: Option<String>,
}

/// Parses the top level of a TAP stream (version 13 / 14, kselftest flavour).
/// Indented lines (subtests) and `#` diagnostics are ignored.
pub fn parse(text: &str) -> Parsed {
    let mut p = Parsed::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("1..") {
            let (num, comment) = split_comment(rest);
            if let Ok(n) = num.trim().parse::<usize>() {
                p.planned = Some(n);
                if n == 0 {
                    p.skip_all = Some(skip_reason(comment).unwrap_or_default());
                }
            }
        } else if let Some(rest) = line.strip_prefix("Bail out!") {
            p.bail_out = Some(rest.trim().to_string());
        } else if let Some(rest) = line.strip_prefix("not ok") {
            let (desc, comment) = split_comment(rest);
            let skip = skip_reason(comment);
            p.points.push(TestPoint {
                name: point_name(desc),
                // `not ok ... # TODO` is an expected failure; `# SKIP` on
                // a `not ok` is still a skip by the TAP spec.
                outcome: if skip.is_some() {
                    Outcome::Skip
                } else if todo(comment) {
                    Outcome::Pass
                } else {
                    Outcome::Fail
                },
                note: skip,
            });
        } else if let Some(rest) = line.strip_prefix("ok") {
            if !(rest.is_empty() || rest.starts_with(' ')) {
                continue;
            }
            let (desc, comment) = split_comment(rest);
            let skip = skip_reason(comment);
            p.points.push(TestPoint {
                name: point_name(desc),
                outcome: if skip.is_some() {
                    Outcome::Skip
                } else {
                    Outcome::Pass
                },
                note: skip,
            });
        }
    }
    p
}

fn split_comment(s: &str) -> (&str, Option<&str>) {
    match s.find(" # ") {
        Some(i) => (&s[..i], Some(&s[i + 3..])),
        None => match s.find("# ") {
            Some(0) => ("", Some(&s[2..])),
            _ => (s, None),
        },
    }
}

fn skip_reason(comment: Option<&str>) -> Option<String> {
    let c = comment?.trim_start();
    let upper = c.get(..4)?.to_ascii_uppercase();
    (upper == "SKIP").then(|| c[4..].trim().to_string())
}

fn todo(comment: Option<&str>) -> bool {
    comment
        .and_then(|c| c.trim_start().get(..4))
        .is_some_and(|w| w.eq_ignore_ascii_case("TODO"))
}

/// "ok 3 - name" / "ok 3 name" -> "name".
fn point_name(desc: &str) -> String {
    let d = desc.trim_start();
    let d = d
        .trim_start_matches(|c: char| c.is_ascii_digit())
        .trim_start();
    d.strip_prefix("- ").unwrap_or(d).trim().to_string()
}

/// Counts of a list of points.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
}

impl Counts {
    pub fn of(points: &[TestPoint]) -> Self {
        let mut c = Counts::default();
        for p in points {
            match p.outcome {
                Outcome::Pass => c.passed += 1,
                Outcome::Fail => c.failed += 1,
                Outcome::Skip => c.skipped += 1,
            }
        }
        c
    }

    /// The closing line of a run: `N passed, M failed, K skipped`.
    pub fn line(&self) -> String {
        format!(
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

/// Writes points as one TAP 13 stream.
pub fn render(points: &[TestPoint]) -> String {
    let mut out = format!("TAP version 13\n1..{}\n", points.len());
    for (i, p) in points.iter().enumerate() {
        let n = i + 1;
        match (&p.outcome, &p.note) {
            (Outcome::Pass, _) => out.push_str(&format!("ok {n} {}\n", p.name)),
            (Outcome::Skip, note) => out.push_str(&format!(
                "ok {n} {} # SKIP {}\n",
                p.name,
                note.as_deref().unwrap_or("")
            )),
            (Outcome::Fail, note) => {
                out.push_str(&format!("not ok {n} {}\n", p.name));
                if let Some(note) = note {
                    out.push_str(&format!("# {note}\n"));
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kselftest_harness_output() {
        let text = "TAP version 13\n1..3\n# Starting 3 tests from 1 test cases.\n#  RUN           global.a ...\n#            OK  global.a\nok 1 global.a\nnot ok 2 global.b\nok 3 global.c # SKIP no /dev/kvm\n# Totals: pass:1 fail:1 xfail:0 xpass:0 skip:1 error:0\n";
        let p = parse(text);
        assert_eq!(p.planned, Some(3));
        assert_eq!(
            p.points.iter().map(|t| t.outcome).collect::<Vec<_>>(),
            vec![Outcome::Pass, Outcome::Fail, Outcome::Skip]
        );
        assert_eq!(p.points[0].name, "global.a");
        assert_eq!(p.points[2].note.as_deref(), Some("no /dev/kvm"));
        assert_eq!(
            Counts::of(&p.points),
            Counts {
                passed: 1,
                failed: 1,
                skipped: 1
            }
        );
    }

    #[test]
    fn skip_all_and_bail_out() {
        let p = parse("1..0 # SKIP KVM not available\n");
        assert_eq!(p.skip_all.as_deref(), Some("KVM not available"));
        let p = parse("1..2\nok 1 - first\nBail out! lost the VM\n");
        assert_eq!(p.bail_out.as_deref(), Some("lost the VM"));
        assert_eq!(p.points[0].name, "first");
    }

    #[test]
    fn lookalikes_are_not_points() {
        let p = parse("okay then\n  ok 1 nested\n# ok 2 diag\n");
        assert!(p.points.is_empty());
    }

    #[test]
    fn render_then_parse_round_trips() {
        let points = vec![
            TestPoint {
                name: "a".into(),
                outcome: Outcome::Pass,
                note: None,
            },
            TestPoint {
                name: "b".into(),
                outcome: Outcome::Fail,
                note: Some("why".into()),
            },
            TestPoint {
                name: "c".into(),
                outcome: Outcome::Skip,
                note: Some("later".into()),
            },
        ];
        let back = parse(&render(&points));
        assert_eq!(back.planned, Some(3));
        let outcomes: Vec<_> = back
            .points
            .iter()
            .map(|p| (p.name.clone(), p.outcome))
            .collect();
        assert_eq!(
            outcomes,
            vec![
                ("a".to_string(), Outcome::Pass),
                ("b".to_string(), Outcome::Fail),
                ("c".to_string(), Outcome::Skip)
            ]
        );
    }
}
