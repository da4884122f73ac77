//! The splat detector: finds kernel reports in a console log.
//!
//! Only kernel messages count: every printk line carries a `[ seconds]`
//! timestamp (`CONFIG_PRINTK_TIME=y` in both configs), while test output that
//! the guest init copies to the console does not. A test that prints
//! "WARNING:" therefore cannot fail the run, and a kernel report glued to the
//! end of a test's line is still found.

use regex::Regex;
use std::sync::OnceLock;

/// One kernel report found in the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Splat {
    /// 1-based line number in the console log.
    pub line: usize,
    /// What kind of report this is.
    pub kind: &'static str,
    /// The kernel message, timestamp stripped.
    pub text: String,
}

/// Report kinds, most specific first: a line is reported once, as the first
/// kind that matches.
const PATTERNS: &[(&str, &str)] = &[
    ("KASAN", r"KASAN"),
    ("UBSAN", r"UBSAN:"),
    (
        "lockdep",
        r"(possible (circular|recursive) locking|inconsistent lock state|possible irq lock inversion|suspicious RCU usage|DEBUG_LOCKS_WARN_ON|lock held when returning|bad unlock balance)",
    ),
    ("RCU stall", r"rcu.*(detected stall|self-detected stall)"),
    ("refcount", r"refcount_t:"),
    ("general protection fault", r"general protection fault"),
    ("BUG", r"(BUG:|kernel BUG at)"),
    ("WARNING", r"WARNING:"),
    ("Oops", r"Oops"),
    ("panic", r"Kernel panic"),
    ("hung task", r"INFO: task .* blocked for more than"),
    ("list corruption", r"list_(add|del) corruption"),
    ("kmemleak", r"unreferenced object 0x"),
    ("Call Trace", r"Call Trace:"),
];

fn patterns() -> &'static [(&'static str, Regex)] {
    static COMPILED: OnceLock<Vec<(&'static str, Regex)>> = OnceLock::new();
    COMPILED.get_or_init(|| {
        PATTERNS
            .iter()
            .map(|(kind, re)| {
                let re = format!(r"\[\s*\d+\.\d+\]\s*(?:\[\s*[TC]\d+\]\s*)?(?P<msg>.*{re}.*)$");
                (
                    *kind,
                    Regex::new(&re).expect("splat patterns are valid regexes"),
                )
            })
            .collect()
    })
}

/// Every kernel report in `log`, in order.
pub fn scan(log: &str) -> Vec<Splat> {
    let mut found = Vec::new();
    for (idx, line) in log.lines().enumerate() {
        for (kind, re) in patterns() {
            if let Some(c) = re.captures(line) {
                found.push(Splat {
                    line: idx + 1,
                    kind,
                    text: c["msg"].trim().to_string(),
                });
                break;
            }
        }
    }
    found
}

/// A short summary of the reports: the first line of each distinct kind.
pub fn summarize(splats: &[Splat]) -> Vec<String> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for s in splats {
        if !seen.contains(&s.kind) {
            seen.push(s.kind);
            out.push(format!("{} (console line {}): {}", s.kind, s.line, s.text));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(name: &str) -> String {
        let path = crate::paths::repo_root()
            .join("selftests/testdata/console")
            .join(name);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn kinds(name: &str) -> Vec<&'static str> {
        let mut k: Vec<_> = scan(&log(name)).iter().map(|s| s.kind).collect();
        k.dedup();
        k
    }

    #[test]
    fn clean_boot_has_no_splat() {
        assert_eq!(scan(&log("clean-boot.log")), vec![]);
    }

    #[test]
    fn kasan_report_is_found() {
        let k = kinds("kasan-uaf.log");
        assert_eq!(k.first(), Some(&"KASAN"), "{k:?}");
        assert!(k.contains(&"Call Trace"), "{k:?}");
    }

    #[test]
    fn warn_is_found() {
        let k = kinds("warn.log");
        assert_eq!(k.first(), Some(&"WARNING"), "{k:?}");
    }

    #[test]
    fn lockdep_report_is_found() {
        let k = kinds("lockdep.log");
        assert!(k.contains(&"lockdep"), "{k:?}");
    }

    #[test]
    fn test_output_is_not_a_splat() {
        let text = "not ok 3 WARNING: this is the test talking\n# BUG: also a test\nKASAN\n";
        assert_eq!(scan(text), vec![]);
    }

    #[test]
    fn kernel_report_glued_to_test_output_is_found() {
        let text = "ok 1 something[   12.345678] BUG: kernel NULL pointer dereference, address: 0000000000000008\n";
        let s = scan(text);
        assert_eq!(s.len(), 1);
        assert_eq!(s[0].kind, "BUG");
        assert!(s[0].text.starts_with("BUG: kernel NULL pointer"));
    }

    #[test]
    fn summary_names_each_kind_once() {
        let s = summarize(&scan(&log("kasan-uaf.log")));
        assert!(s[0].starts_with("KASAN (console line "), "{s:?}");
        let kinds: Vec<_> = s.iter().map(|l| l.split(' ').next()).collect();
        let mut dedup = kinds.clone();
        dedup.dedup();
        assert_eq!(kinds, dedup);
    }
}
