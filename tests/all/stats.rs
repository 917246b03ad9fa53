//! `kiln::stats` and `kiln stats paired` against statsmodels, scipy and numpy.
//!
//! The expectations in `tests/fixtures/stats/expectations.json` (240 cases, every degenerate one
//! included: no discordant pairs, all pass, all fail, b = 0 < c, |b - c| = 1, n = 1, n = 5000,
//! Benjamini-Hochberg with ties and p = 1) were made by the script beside them:
//!
//! ```text
//! python3 -m venv /work/venv-stats && /work/venv-stats/bin/pip install scipy statsmodels numpy
//! /work/venv-stats/bin/python tests/fixtures/stats/make_expectations.py
//! ```
//!
//! with statsmodels' `mcnemar(exact=True)` and `mcnemar(exact=False, correction=True)`,
//! `proportion_confint(method="wilson")`, `multipletests(method="fdr_bh")`, and numpy for
//! Cohen's h. Counts must agree exactly; every other figure to an **absolute** difference of at
//! most 1e-9 (all are p-values or interval bounds in [0, 1], except Cohen's h in [-π, π]).
//!
//! One expectation is kiln's, not statsmodels': with no discordant pairs (b + c = 0)
//! statsmodels' chi-square statistic is (0 - 1)² / 0 = inf and its p-value 0, where kiln
//! defines p = 1 (no evidence of a difference); the script records 1 and says so in the case's
//! `notes`.

use std::io::Write;
use std::process::Stdio;

use serde_json::Value;

use crate::common::*;

const TOLERANCE: f64 = 1e-9;

/// The largest differences seen, for the record.
#[derive(Default)]
struct Worst {
    abs: f64,
    abs_at: String,
    rel: f64,
    rel_at: String,
    figures: usize,
}

fn cases() -> Vec<Value> {
    let path = root().join("tests/fixtures/stats/expectations.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).unwrap();
    let cases = v["cases"].as_array().unwrap().clone();
    assert!(cases.len() >= 200, "only {} cases", cases.len());
    cases
}

/// Walks `expected`, comparing `actual` to it: same keys, same lengths, equal strings and
/// integers, floats within [`TOLERANCE`].
fn compare(actual: &Value, expected: &Value, at: &str, worst: &mut Worst) {
    match (actual, expected) {
        (Value::Object(a), Value::Object(e)) => {
            let ka: Vec<&String> = a.keys().collect();
            let ke: Vec<&String> = e.keys().collect();
            assert_eq!(ka, ke, "{at}: different fields");
            for (k, ev) in e {
                compare(&a[k], ev, &format!("{at}.{k}"), worst);
            }
        }
        (Value::Array(a), Value::Array(e)) => {
            assert_eq!(a.len(), e.len(), "{at}: different lengths");
            for (i, (av, ev)) in a.iter().zip(e).enumerate() {
                compare(av, ev, &format!("{at}[{i}]"), worst);
            }
        }
        (Value::Number(a), Value::Number(e)) if e.is_u64() => {
            assert_eq!(a.as_u64(), e.as_u64(), "{at}: counts differ");
        }
        (Value::Number(a), Value::Number(e)) => {
            let (a, e) = (a.as_f64().unwrap(), e.as_f64().unwrap());
            let diff = (a - e).abs();
            assert!(diff <= TOLERANCE, "{at}: kiln {a:e}, statsmodels {e:e}, difference {diff:e}");
            worst.figures += 1;
            if diff > worst.abs {
                (worst.abs, worst.abs_at) = (diff, format!("{at} (kiln {a:e}, statsmodels {e:e})"));
            }
            // Relative differences are kept for the record where they mean something: not for an
            // expectation that is statsmodels' rounding noise around 0 (a Wilson bound of 1.7e-18
            // where kiln clips to exactly 0).
            if e.abs() > 1e-15 && diff / e.abs() > worst.rel {
                (worst.rel, worst.rel_at) = (diff / e.abs(), format!("{at} (kiln {a:e}, statsmodels {e:e})"));
            }
        }
        _ => assert_eq!(actual, expected, "{at}"),
    }
}

fn report(what: &str, worst: &Worst) {
    eprintln!(
        "{what}: {} figures within {TOLERANCE:e}; worst absolute difference {:e} at {}; worst relative {:e} at {}",
        worst.figures, worst.abs, worst.abs_at, worst.rel, worst.rel_at
    );
}

#[test]
fn library_agrees_with_statsmodels() {
    let mut worst = Worst::default();
    for case in cases() {
        let name = case["name"].as_str().unwrap();
        let input: kiln::stats::PairedInput = serde_json::from_value(case["input"].clone()).unwrap();
        let report = input.analyze().unwrap_or_else(|e| panic!("case \"{name}\": {e}"));
        compare(&serde_json::to_value(&report).unwrap(), &case["expected"], &format!("case \"{name}\""), &mut worst);
    }
    report("library", &worst);
}

#[test]
fn binary_agrees_with_statsmodels() {
    let dir = tempfile::tempdir().unwrap();
    let mut worst = Worst::default();
    for (i, case) in cases().iter().enumerate() {
        let name = case["name"].as_str().unwrap();
        let input = serde_json::to_string(&case["input"]).unwrap();
        // Alternate a file and stdin, pretty and compact output.
        let mut cmd = kiln();
        cmd.args(["stats", "paired"]);
        if i % 3 == 2 {
            cmd.arg("--compact");
        }
        let out = if i % 2 == 0 {
            let path = dir.path().join(format!("case-{i}.json"));
            std::fs::write(&path, &input).unwrap();
            cmd.arg(&path).output().unwrap()
        } else {
            let mut child =
                cmd.arg("-").stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
            child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
            child.wait_with_output().unwrap()
        };
        assert!(out.status.success(), "case \"{name}\": {}", String::from_utf8_lossy(&out.stderr));
        let stdout = String::from_utf8(out.stdout).unwrap();
        assert_eq!(stdout.lines().count() == 1, i % 3 == 2, "case \"{name}\": --compact is one line, else pretty");
        let actual: Value = serde_json::from_str(&stdout).unwrap();
        compare(&actual, &case["expected"], &format!("case \"{name}\""), &mut worst);
    }
    report("binary", &worst);
}

/// Runs `kiln stats paired -` on `input`; it must fail with exit code 1, print nothing on stdout
/// and one error on stderr, which is returned.
fn fails(input: &str) -> String {
    let mut child = kiln()
        .args(["stats", "paired", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "{input}: {stderr}");
    assert!(out.stdout.is_empty(), "{input}");
    assert!(stderr.starts_with("kiln: error: ") && stderr.lines().count() == 1, "{stderr}");
    stderr
}

#[test]
fn errors_name_the_group_index_and_value() {
    let group =
        |name: &str, base: &str, tuned: &str| format!(r#"{{"name": "{name}", "base": {base}, "tuned": {tuned}}}"#);
    let input = |groups: &[String]| format!(r#"{{"groups": [{}]}}"#, groups.join(", "));
    let ok = group("open-qa", "[1, 0]", "[1, 1]");

    let e = fails(&input(&[ok.clone(), group("poems", "[1, 0, 1]", "[1, 1]")]));
    assert!(e.contains(r#"group "poems": base has 3 items but tuned has 2"#), "{e}");
    assert!(e.contains("invalid paired input in <stdin>"), "{e}");

    for (value, shown) in
        [("2", "2"), ("-1", "-1"), ("0.5", "0.5"), ("1.0", "1.0"), ("true", "true"), (r#""1""#, r#""1""#)]
    {
        let e = fails(&input(&[ok.clone(), group("rewrite", "[0, 1, 1]", &format!("[1, {value}, 0]"))]));
        assert!(e.contains(&format!(r#"group "rewrite": tuned[1] is {shown}, expected 0 or 1"#)), "{e}");
    }
    let e = fails(&input(&[group("extract", "[0, 1, 1, 1, 7]", "[1, 1, 1, 1, 1]")]));
    assert!(e.contains(r#"group "extract": base[4] is 7, expected 0 or 1"#), "{e}");

    let e = fails(r#"{"groups": []}"#);
    assert!(e.contains("no groups"), "{e}");
    let e = fails(&input(&[ok.clone(), group("classify", "[]", "[]")]));
    assert!(e.contains(r#"group "classify" is empty (n = 0)"#), "{e}");
    let e = fails(&input(&[ok.clone(), group("x", "[1]", "[1]"), ok.clone()]));
    assert!(e.contains(r#"group "open-qa" appears twice (groups[0] and groups[2])"#), "{e}");

    let e = fails(r#"{"groups": [{"name": "a", "base": [1], "tuned": [1]}], "level": 95}"#);
    assert!(e.contains("confidence level 95 is not strictly between 0 and 1"), "{e}");
    let e = fails(r#"{"groups": [{"name": "a", "base": [1], "tuned": [1], "weights": [2]}]}"#);
    assert!(e.contains("<stdin> is not valid paired input") && e.contains("unknown field `weights`"), "{e}");
    let e = fails(r#"{"groups": [{"name": "a", "base": [1], "tuned": [1]}], "alpha": 0.01}"#);
    assert!(e.contains("unknown field `alpha`"), "{e}");
    let e = fails(r#"{"groups": [{"name": "a", "base": [1]}]}"#);
    assert!(e.contains("missing field `tuned`"), "{e}");
    let e = fails("");
    assert!(e.contains("is not valid paired input"), "{e}");
}

#[test]
fn missing_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("nope.json");
    let out = kiln().args(["stats", "paired"]).arg(&path).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains(&format!("cannot read \"{}\"", path.display())), "{stderr}");
}
