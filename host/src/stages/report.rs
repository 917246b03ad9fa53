//! What a run reports: `qc_report.json` and `qc_report.md`, the counts, the summary printed at
//! the end, and the text tables of replay and compare.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::plugin::Comparison;

use super::process::{Processed, RuleReport};
use super::records::{Dropped, RawRecord};

/// One QC metric, flattened across rules.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRow {
    /// The metric's name.
    pub name: String,
    /// The rule that computed it.
    pub rule: String,
    /// Value.
    pub value: f64,
    /// Threshold.
    pub threshold: Option<f64>,
    /// How the value is compared with the threshold.
    pub comparison: Comparison,
    /// Pass.
    pub pass: bool,
}

/// `qc_report.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QcReportFile {
    /// Run id.
    pub run_id: String,
    /// "pilot" or "replay".
    pub stage: String,
    /// The gate passed.
    pub pass: bool,
    /// Why not, one sentence per failure.
    pub reasons: Vec<String>,
    /// Samples the QC rules judged.
    pub evaluated: usize,
    /// Every metric of every rule.
    pub metrics: Vec<MetricRow>,
    /// The rules' own reports.
    pub rules: Vec<RuleReport>,
    /// Pipeline counts.
    pub counts: BTreeMap<String, u64>,
}

/// The counts shown first, in this order; `dropped_<code>` counts follow.
pub const COUNT_ORDER: [&str; 11] = [
    "planned",
    "instructions_generated",
    "instructions_parsed",
    "responses_generated",
    "cleaned",
    "judged",
    "verdicts",
    "verdicts_passed",
    "accepted",
    "dropped",
    "quarantined",
];

/// Counts of a run: what came through each step, dropped by code, quarantined.
pub fn counts(raw: &[RawRecord], template_dropped: &[Dropped], template_quarantined: usize, p: &Processed) -> BTreeMap<String, u64> {
    let mut c: BTreeMap<String, u64> = BTreeMap::new();
    let n = |x: usize| x as u64;
    c.insert("planned".into(), n(raw.len()));
    c.insert("instructions_generated".into(), n(raw.iter().filter(|r| r.instruction.is_some()).count()));
    c.insert(
        "instructions_parsed".into(),
        n(raw.iter().filter(|r| matches!(r.parsed, Some(crate::plugin::Parsed::Instruction(_)))).count()),
    );
    c.insert("responses_generated".into(), n(raw.iter().filter(|r| r.response.is_some()).count()));
    c.insert("cleaned".into(), n(p.cleaned));
    c.insert("judged".into(), n(p.judged.len()));
    let verdicts: Vec<bool> = p.judged.iter().flat_map(|s| s.verdicts.iter().map(|v| v.pass)).collect();
    c.insert("verdicts".into(), n(verdicts.len()));
    c.insert("verdicts_passed".into(), n(verdicts.iter().filter(|v| **v).count()));
    c.insert("accepted".into(), n(p.accepted.len()));
    c.insert("dropped".into(), n(template_dropped.len() + p.dropped.len()));
    c.insert("quarantined".into(), n(template_quarantined + p.quarantined.values().sum::<usize>()));
    for d in template_dropped.iter().chain(&p.dropped) {
        *c.entry(format!("dropped_{}", d.code)).or_default() += 1;
    }
    c
}

/// Counts in display order.
pub fn ordered_counts(c: &BTreeMap<String, u64>) -> Vec<(String, u64)> {
    let mut out: Vec<(String, u64)> = COUNT_ORDER.iter().filter_map(|k| c.get(*k).map(|v| (k.to_string(), *v))).collect();
    out.extend(c.iter().filter(|(k, _)| !COUNT_ORDER.contains(&k.as_str())).map(|(k, v)| (k.clone(), *v)));
    out
}

/// Flatten the rules' metrics.
pub fn metric_rows(rules: &[RuleReport]) -> Vec<MetricRow> {
    rules
        .iter()
        .flat_map(|r| {
            r.report.metrics.iter().map(move |m| MetricRow {
                name: m.name.clone(),
                rule: r.plugin.clone(),
                value: m.value,
                threshold: m.threshold,
                comparison: m.comparison,
                pass: m.pass,
            })
        })
        .collect()
}

/// (name, value) of every QC metric (named `<rule>.<metric>` where two rules share a name),
/// then the gate (1 passed, 0 failed), then the counts: what replay and compare put side by
/// side.
pub fn metric_values(r: &QcReportFile) -> Vec<(String, f64)> {
    let mut seen: BTreeMap<&str, usize> = BTreeMap::new();
    for m in &r.metrics {
        *seen.entry(m.name.as_str()).or_default() += 1;
    }
    let mut out: Vec<(String, f64)> = r
        .metrics
        .iter()
        .map(|m| (if seen[m.name.as_str()] > 1 { format!("{}.{}", m.rule, m.name) } else { m.name.clone() }, m.value))
        .collect();
    out.push(("gate_pass".into(), if r.pass { 1.0 } else { 0.0 }));
    out.extend(ordered_counts(&r.counts).into_iter().map(|(k, v)| (k, v as f64)));
    out
}

/// A number for a table: integers as integers, others with 4 decimals.
pub fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v:.4}")
    }
}

/// A signed difference.
pub fn fmt_delta(d: f64) -> String {
    if d == 0.0 {
        "0".to_string()
    } else if d.fract() == 0.0 && d.abs() < 1e15 {
        format!("{:+}", d as i64)
    } else {
        format!("{d:+.4}")
    }
}

/// A plain-text table: first column left-aligned, the others right-aligned.
pub fn table(headers: &[String], rows: &[Vec<String>]) -> String {
    let cols = headers.len();
    let mut w: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate().take(cols) {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: &[String]| -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate().take(cols) {
            if i > 0 {
                s.push_str("  ");
            }
            let pad = w[i] - c.chars().count();
            if i == 0 {
                s.push_str(c);
                s.push_str(&" ".repeat(pad));
            } else {
                s.push_str(&" ".repeat(pad));
                s.push_str(c);
            }
        }
        s.trim_end().to_string()
    };
    let mut out = line(headers);
    out.push('\n');
    out.push_str(&w.iter().map(|n| "-".repeat(*n)).collect::<Vec<_>>().join("  "));
    out.push('\n');
    for r in rows {
        out.push_str(&line(r));
        out.push('\n');
    }
    out
}

/// A Markdown (pipe) table: a column is right-aligned when every cell in it reads as a figure
/// (starts with a digit, a sign, `[` or is `—`), left-aligned otherwise; `|` in cells is
/// escaped.
pub fn md_table(headers: &[String], rows: &[Vec<String>]) -> String {
    let cell = |c: &String| c.replace('|', "\\|");
    let figure = |c: &str| c == "—" || c.starts_with(|ch: char| ch.is_ascii_digit() || matches!(ch, '+' | '-' | '['));
    let right: Vec<bool> =
        (0..headers.len()).map(|i| !rows.is_empty() && rows.iter().all(|r| r.get(i).is_some_and(|c| figure(c)))).collect();
    let mut out = format!("| {} |\n", headers.iter().map(cell).collect::<Vec<_>>().join(" | "));
    out.push_str(&format!("|{}|\n", right.iter().map(|&r| if r { "---:" } else { "---" }).collect::<Vec<_>>().join("|")));
    for r in rows {
        out.push_str(&format!("| {} |\n", r.iter().take(headers.len()).map(cell).collect::<Vec<_>>().join(" | ")));
    }
    out
}

/// How a metric is compared with its threshold, as a symbol.
pub fn comparison_text(c: Comparison) -> &'static str {
    match c {
        Comparison::LessThan => "<",
        Comparison::AtMost => "<=",
        Comparison::GreaterThan => ">",
        Comparison::AtLeast => ">=",
        Comparison::ReportOnly => "",
    }
}

/// Samples dropped per (code, stage, plugin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropReason {
    /// Code.
    pub code: String,
    /// Stage.
    pub stage: String,
    /// Plugin.
    pub plugin: String,
    /// How many.
    pub count: usize,
}

/// Group dropped samples by reason, most frequent first.
pub fn drop_reasons(dropped: &[Dropped]) -> Vec<DropReason> {
    let mut m: BTreeMap<(String, String, String), usize> = BTreeMap::new();
    for d in dropped {
        *m.entry((d.code.clone(), d.stage.clone(), d.plugin.clone())).or_default() += 1;
    }
    let mut v: Vec<DropReason> = m.into_iter().map(|((code, stage, plugin), count)| DropReason { code, stage, plugin, count }).collect();
    v.sort_by(|a, b| b.count.cmp(&a.count).then(a.code.cmp(&b.code)));
    v
}

/// `qc_report.md`.
pub fn markdown(r: &QcReportFile, drops: &[DropReason]) -> String {
    let mut s = format!("# QC report: {} `{}`\n\n", r.stage, r.run_id);
    s.push_str(&format!("**Gate: {}** ({} samples judged)\n\n", if r.pass { "PASSED" } else { "FAILED" }, r.evaluated));
    if !r.reasons.is_empty() {
        s.push_str("Reasons:\n\n");
        for x in &r.reasons {
            s.push_str(&format!("- {x}\n"));
        }
        s.push('\n');
    }
    s.push_str("| rule | metric | value | gate | pass |\n|---|---|---:|---|---|\n");
    for m in &r.metrics {
        let gate = match (m.comparison, m.threshold) {
            (Comparison::ReportOnly, _) | (_, None) => "report only".to_string(),
            (c, Some(t)) => format!("{} {}", comparison_text(c), fmt_num(t)),
        };
        s.push_str(&format!(
            "| {} | {} | {} | {} | {} |\n",
            m.rule,
            m.name,
            fmt_num(m.value),
            gate,
            if m.pass { "yes" } else { "**no**" }
        ));
    }
    s.push_str("\n## Counts\n\n| count | value |\n|---|---:|\n");
    for (k, v) in ordered_counts(&r.counts) {
        s.push_str(&format!("| {k} | {v} |\n"));
    }
    if !drops.is_empty() {
        s.push_str("\n## Dropped, by reason\n\n| code | stage | plugin | samples |\n|---|---|---|---:|\n");
        for d in drops {
            s.push_str(&format!("| {} | {} | {} | {} |\n", d.code, d.stage, d.plugin, d.count));
        }
    }
    s
}

/// What a run prints at the end (text, or JSON with `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// "pilot" or "replay".
    pub stage: String,
    /// Run id.
    pub run_id: String,
    /// The run directory.
    pub run_dir: PathBuf,
    /// The gate passed.
    pub pass: bool,
    /// Why not.
    pub reasons: Vec<String>,
    /// Counts.
    pub counts: BTreeMap<String, u64>,
    /// Dropped, by reason.
    pub dropped_by_reason: Vec<DropReason>,
    /// Quarantined records per plugin.
    pub quarantined: BTreeMap<String, usize>,
    /// QC metrics.
    pub metrics: Vec<MetricRow>,
    /// Completions found on disk from an earlier, interrupted invocation (instruction, response).
    pub resumed: BTreeMap<String, usize>,
    /// Wall time of this invocation, seconds.
    pub wall_seconds: f64,
    /// Wall time per phase, seconds.
    pub timings: Vec<(String, f64)>,
    /// Samples planned per minute of wall time (this invocation).
    pub examples_per_minute: f64,
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = |k: &str| self.counts.get(k).copied().unwrap_or(0);
        writeln!(f, "{} \"{}\": {}", self.stage, self.run_id, self.run_dir.display())?;
        writeln!(
            f,
            "  planned {}, instructions parsed {}, responses {}, cleaned {}, accepted {}, dropped {}, quarantined {}",
            c("planned"),
            c("instructions_parsed"),
            c("responses_generated"),
            c("cleaned"),
            c("accepted"),
            c("dropped"),
            c("quarantined")
        )?;
        if c("verdicts") > 0 {
            writeln!(
                f,
                "  critic verdicts passed: {} of {} ({:.1} %)",
                c("verdicts_passed"),
                c("verdicts"),
                100.0 * c("verdicts_passed") as f64 / c("verdicts") as f64
            )?;
        }
        if !self.dropped_by_reason.is_empty() {
            writeln!(f, "  dropped by reason:")?;
            for d in &self.dropped_by_reason {
                writeln!(f, "    {:>5}  {} ({} {})", d.count, d.code, d.stage, d.plugin)?;
            }
        }
        for (p, n) in &self.quarantined {
            writeln!(f, "  quarantined by {p}: {n} (see quarantine/)")?;
        }
        if !self.metrics.is_empty() {
            writeln!(f, "  QC:")?;
            for m in &self.metrics {
                let gate = match (m.comparison, m.threshold) {
                    (Comparison::ReportOnly, _) | (_, None) => String::new(),
                    (cmp, Some(t)) => format!(" (must be {} {})", comparison_text(cmp), fmt_num(t)),
                };
                writeln!(f, "    {:<20} {:>10}{gate}{}", m.name, fmt_num(m.value), if m.pass { "" } else { "  FAIL" })?;
            }
        }
        let resumed: usize = self.resumed.values().sum();
        if resumed > 0 {
            writeln!(f, "  resumed: {resumed} completions were already on disk")?;
        }
        let t: Vec<String> = self.timings.iter().filter(|(_, s)| *s >= 0.005).map(|(k, s)| format!("{k} {s:.2}s")).collect();
        writeln!(f, "  time: {:.1}s ({}); {:.1} examples/min", self.wall_seconds, t.join(", "), self.examples_per_minute)?;
        if self.pass {
            write!(f, "gate: PASSED")
        } else {
            write!(f, "gate: FAILED")?;
            for r in &self.reasons {
                write!(f, "\n  - {r}")?;
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(
            &["metric".into(), "before".into(), "after".into()],
            &[vec!["runaway_rate".into(), "0.1000".into(), "0.0200".into()], vec!["accepted".into(), "40".into(), "45".into()]],
        );
        assert_eq!(t, "metric        before   after\n------------  ------  ------\nrunaway_rate  0.1000  0.0200\naccepted          40      45\n");
        assert_eq!(fmt_num(3.0), "3");
        assert_eq!(fmt_num(0.05), "0.0500");
        assert_eq!(fmt_delta(-0.08), "-0.0800");
        assert_eq!(fmt_delta(5.0), "+5");
    }
}
