//! `kiln review`: a review packet at a gate, an optional external reviewer, and the decision.
//!
//! The packet (`review.md`, with `review_margins.png`) holds the gate's metrics against their
//! thresholds, the parameters that changed since the previous run of the same stage in the same
//! artifacts folder, a fixed-seed sample of accepted and of dropped or quarantined examples with
//! the reason for each, and the distribution of the critic's margins. An external reviewer
//! command gets the packet on stdin; its stdout is kept as `review_answer.md`, with the command
//! line and hashes in `review.json`. A decision (`--approve` / `--reject`) is recorded in the
//! run's manifest with who made it and when; approving a run whose gate failed needs `--force`
//! and says so. Every file is written whole (temp file + rename).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::chart::histogram_png;
use super::error::StageError;
use super::pilot::{files, flatten_toml};
use super::records::{Accepted, CriticRecord, Dropped};
use super::report::QcReportFile;
use super::seeds::{choose, derive_seed};
use crate::config::review::ReviewConfig;
use crate::provenance::manifest::{now, Manifest, ReviewDecision};
use crate::provenance::sha256_hex;
use crate::sandbox::{write_file_atomic, RunDir};

/// File names inside a reviewed run.
pub mod review_files {
    /// The packet.
    pub const PACKET: &str = "review.md";
    /// The critic margins' histogram.
    pub const MARGINS: &str = "review_margins.png";
    /// The external reviewer's answer.
    pub const ANSWER: &str = "review_answer.md";
    /// How the answer was obtained.
    pub const REVIEWER: &str = "review.json";
}

/// How an external reviewer's answer was obtained.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReviewerRecord {
    /// The command line (run with `sh -c`).
    pub command: String,
    /// When it started.
    pub started_at: String,
    /// How long it took.
    pub seconds: f64,
    /// sha256 of the packet it read.
    pub packet_sha256: String,
    /// sha256 of its answer.
    pub answer_sha256: String,
}

/// What `kiln review RUN` wrote.
#[derive(Debug, Clone, Serialize)]
pub struct PacketOutcome {
    /// The packet.
    pub packet: PathBuf,
    /// The histogram, when the run has critic margins.
    pub margins: Option<PathBuf>,
    /// The reviewer's answer, when a reviewer command ran.
    pub answer: Option<PathBuf>,
    /// The previous run of the same stage that the packet compares with.
    pub previous: Option<String>,
}

fn open(dir: &Path) -> Result<Manifest, StageError> {
    if !dir.is_dir() {
        return Err(StageError::Invalid(format!("run \"{}\" does not exist", dir.display())));
    }
    Manifest::read(dir).map_err(|e| StageError::Invalid(format!("run \"{}\": {e}", dir.display())))
}

fn read_jsonl_opt<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, StageError> {
    if path.is_file() {
        Ok(crate::sandbox::read_jsonl(path)?)
    } else {
        Ok(Vec::new())
    }
}

/// The pilot-style run folders that hold a run's samples: the run itself, or a scale's shards.
fn sample_dirs(dir: &Path, m: &Manifest) -> Vec<PathBuf> {
    if m.stage == "scale" {
        super::scale::shard_dirs(dir)
    } else {
        vec![dir.to_path_buf()]
    }
}

/// The previous run of the same stage beside this one: (run id, folder).
fn previous(dir: &Path, m: &Manifest) -> Option<(String, PathBuf)> {
    let parent = dir.parent()?;
    let mut best: Option<(String, String, PathBuf)> = None;
    for e in std::fs::read_dir(parent).ok()?.flatten() {
        let p = e.path();
        if p == dir {
            continue;
        }
        let Ok(o) = Manifest::read(&p) else { continue };
        if o.stage != m.stage || o.started_at >= m.started_at {
            continue;
        }
        if best.as_ref().is_none_or(|(s, _, _)| o.started_at > *s) {
            best = Some((o.started_at.clone(), o.run_id.clone(), p));
        }
    }
    best.map(|(_, id, p)| (id, p))
}

fn config_diff(a: &Path, b: &Path) -> Vec<String> {
    let read = |p: &Path| std::fs::read_to_string(p.join(files::CONFIG)).ok().and_then(|t| t.parse::<toml::Table>().ok()).map(|t| flatten_toml(&t));
    let (Some(x), Some(y)) = (read(a), read(b)) else { return vec!["(a config.resolved.toml is missing or unreadable)".into()] };
    let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| !matches!(k.as_str(), "run_id" | "artifacts_dir"))
        .filter(|k| x.get(*k) != y.get(*k))
        .map(|k| format!("`{k}`: {} -> {}", x.get(k).map_or("(absent)", String::as_str), y.get(k).map_or("(absent)", String::as_str)))
        .collect()
}

fn one_line(s: &str, max: usize) -> String {
    let t: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if t.chars().count() > max {
        format!("{}...", t.chars().take(max).collect::<String>())
    } else {
        t
    }
}

fn quote_block(s: &str) -> String {
    if s.trim().is_empty() {
        return "> (empty)\n".into();
    }
    s.lines().map(|l| format!("> {l}\n")).collect()
}

#[derive(Deserialize)]
struct QuarantineLine {
    #[serde(default)]
    record_id: String,
    #[serde(default)]
    message: String,
}

/// Write the packet (and the histogram), then run the external reviewer if one is configured.
pub fn packet(dir: &Path, cfg: &ReviewConfig) -> Result<PacketOutcome, StageError> {
    let m = open(dir)?;
    let mut md = String::new();
    md.push_str(&format!("# Review packet: {} ({})\n\n", m.run_id, m.stage));
    md.push_str(&format!("- run folder: `{}`\n- finished: {}\n- seed: {}, planned: {}\n", dir.display(), m.finished_at, m.seed, m.count));
    md.push_str(&format!(
        "- gate: **{}**{}\n",
        if m.gate.pass { "PASSED" } else { "FAILED" },
        if m.gate.reasons.is_empty() { String::new() } else { format!(" ({})", m.gate.reasons.join("; ")) }
    ));
    if let Some(r) = &m.review {
        md.push_str(&format!("- earlier decision: {} by {} at {}: {}\n", r.decision, r.by, r.at, r.note));
    }

    md.push_str("\n## Gate metrics\n\n");
    match std::fs::read(dir.join(files::QC_JSON)).ok().and_then(|b| serde_json::from_slice::<QcReportFile>(&b).ok()) {
        Some(qc) if !qc.metrics.is_empty() => {
            md.push_str(&format!("{} samples evaluated.\n\n| rule | metric | value | threshold | pass |\n|---|---|---:|---|---|\n", qc.evaluated));
            for r in &qc.metrics {
                let th = r.threshold.map_or("-".to_string(), |t| format!("{} {t}", super::report::comparison_text(r.comparison)));
                md.push_str(&format!("| {} | {} | {:.4} | {th} | {} |\n", r.rule, r.name, r.value, if r.pass { "yes" } else { "**no**" }));
            }
        }
        _ => md.push_str("This run has no QC metrics; its gate is recorded in its manifest.\n"),
    }
    if !m.counts.is_empty() {
        let counts: Vec<String> = m.counts.iter().map(|(k, v)| format!("{k} {v}")).collect();
        md.push_str(&format!("\nCounts: {}.\n", counts.join(", ")));
    }

    let prev = previous(dir, &m);
    md.push_str("\n## Changes since the previous iteration\n\n");
    match &prev {
        Some((id, p)) => {
            let diff = config_diff(p, dir);
            md.push_str(&format!("Compared with `{id}`, the previous {} run here:\n\n", m.stage));
            if diff.is_empty() {
                md.push_str("- no parameter changed\n");
            }
            for d in diff.iter().take(60) {
                md.push_str(&format!("- {d}\n"));
            }
            if diff.len() > 60 {
                md.push_str(&format!("- and {} more\n", diff.len() - 60));
            }
        }
        None => md.push_str(&format!("This is the first {} run in this artifacts folder.\n", m.stage)),
    }

    // Critic margins.
    let dirs = sample_dirs(dir, &m);
    let mut margins: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for d in &dirs {
        for c in read_jsonl_opt::<CriticRecord>(&d.join(files::CRITIC))? {
            for v in c.verdicts {
                margins.entry(v.aspect).or_default().push(v.margin);
            }
        }
    }
    md.push_str("\n## Critic margins\n\n");
    let margins_path = dir.join(review_files::MARGINS);
    let mut margins_written = None;
    if margins.values().all(Vec::is_empty) {
        md.push_str("No critic verdicts in this run.\n");
    } else {
        let series: Vec<(String, Vec<f64>)> = margins.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        let png = histogram_png("Critic margins (log p good - log p bad)", "margin (nats)", &series, 30, (900, 480))
            .map_err(|e| StageError::Invalid(e.to_string()))?;
        write_file_atomic(&margins_path, &png)?;
        margins_written = Some(margins_path.clone());
        md.push_str(&format!("![critic margins]({})\n\n| aspect | n | mean | median | below 0 |\n|---|---:|---:|---:|---:|\n", review_files::MARGINS));
        for (aspect, v) in &margins {
            let mut s = v.clone();
            s.sort_by(f64::total_cmp);
            let mean = s.iter().sum::<f64>() / s.len().max(1) as f64;
            let median = if s.is_empty() { 0.0 } else { s[s.len() / 2] };
            let below = s.iter().filter(|x| **x < 0.0).count();
            md.push_str(&format!("| {aspect} | {} | {mean:.3} | {median:.3} | {below} |\n", s.len()));
        }
    }

    // Examples.
    let k = cfg.samples;
    let accepted: Vec<Accepted> = match m.stage.as_str() {
        "scale" => read_jsonl_opt(&dir.join(super::scale::scale_files::DATASET))?,
        _ => read_jsonl_opt(&dir.join(files::ACCEPTED))?,
    };
    let mut dropped: Vec<(String, String, String, String)> = Vec::new();
    let mut drop_files: Vec<PathBuf> = dirs.iter().map(|d| d.join(files::DROPPED)).collect();
    if m.stage == "scale" {
        drop_files.push(dir.join(super::scale::scale_files::DROPPED));
    }
    for f in drop_files {
        for d in read_jsonl_opt::<Dropped>(&f)? {
            let (instr, resp) = d.sample.as_ref().map_or((String::new(), String::new()), |s| (s.instruction.clone(), s.response.clone()));
            dropped.push((d.id, format!("dropped by {} {} ({}): {}", d.stage, d.plugin, d.code, d.detail), instr, resp));
        }
    }
    for d in &dirs {
        let Ok(entries) = std::fs::read_dir(d.join("quarantine")) else { continue };
        let mut qf: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
        qf.sort();
        for f in qf {
            for q in read_jsonl_opt::<QuarantineLine>(&f)? {
                let plugin = f.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
                dropped.push((q.record_id, format!("quarantined by {plugin}: {}", one_line(&q.message, 300)), String::new(), String::new()));
            }
        }
    }
    let seed = derive_seed(m.seed, 0, 0, "review");
    let acc = choose(&accepted, k, seed);
    md.push_str(&format!("\n## {} of {} accepted examples (fixed seed)\n\n", acc.len(), accepted.len()));
    for a in &acc {
        let s = &a.sample;
        md.push_str(&format!("### {} ({})\n\nInstruction:\n\n{}\nResponse:\n\n{}\n", s.id, s.instruction_type, quote_block(&s.instruction), quote_block(&s.response)));
        let v: Vec<String> = s.verdicts.iter().map(|v| format!("{} {}: {} (margin {:.2})", v.critic, v.aspect, if v.pass { "pass" } else { "fail" }, v.margin)).collect();
        if !v.is_empty() {
            md.push_str(&format!("Verdicts: {}.\n\n", v.join("; ")));
        }
    }
    let dr = choose(&dropped, k, seed ^ 1);
    md.push_str(&format!("\n## {} of {} dropped or quarantined examples (fixed seed)\n\n", dr.len(), dropped.len()));
    for (id, why, instr, resp) in &dr {
        md.push_str(&format!("### {id}\n\nWhy: {why}\n\n"));
        if !instr.is_empty() {
            md.push_str(&format!("Instruction:\n\n{}\n", quote_block(instr)));
        }
        if !resp.is_empty() {
            md.push_str(&format!("Response:\n\n{}\n", quote_block(resp)));
        }
    }
    md.push_str("\n## Decision\n\nRecord it with `kiln review RUN --approve --note \"...\"` or `--reject --note \"...\"`.\n");
    let packet_path = dir.join(review_files::PACKET);
    write_file_atomic(&packet_path, md.as_bytes())?;

    let mut answer = None;
    if let Some(cmd) = &cfg.command {
        let started_at = now();
        let t = Instant::now();
        let out = run_reviewer(cmd, md.as_bytes(), Duration::from_secs(cfg.timeout_s))?;
        let answer_path = dir.join(review_files::ANSWER);
        write_file_atomic(&answer_path, &out)?;
        let rec = ReviewerRecord {
            command: cmd.clone(),
            started_at,
            seconds: t.elapsed().as_secs_f64(),
            packet_sha256: sha256_hex(md.as_bytes()),
            answer_sha256: sha256_hex(&out),
        };
        let mut bytes = serde_json::to_vec_pretty(&rec).expect("serialises");
        bytes.push(b'\n');
        write_file_atomic(&dir.join(review_files::REVIEWER), &bytes)?;
        answer = Some(answer_path);
    }
    Ok(PacketOutcome { packet: packet_path, margins: margins_written, answer, previous: prev.map(|p| p.0) })
}

/// Run `sh -c cmd` with `input` on stdin; its stdout, or an error that names the command.
fn run_reviewer(cmd: &str, input: &[u8], limit: Duration) -> Result<Vec<u8>, StageError> {
    let fail = |why: String| StageError::Invalid(format!("reviewer command `{cmd}` {why}"));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("could not start: {e}")))?;
    let mut stdin = child.stdin.take().expect("piped");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let out_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stdout.read_to_end(&mut b);
        b
    });
    let err_reader = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = stderr.read_to_end(&mut b);
        b
    });
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().map_err(|e| fail(format!("could not be waited for: {e}")))? {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            return Err(fail(format!("timed out after {} s (review.timeout_s); the packet is written, no answer was kept", limit.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = writer.join();
    let out = out_reader.join().unwrap_or_default();
    let err = err_reader.join().unwrap_or_default();
    if !status.success() {
        let tail = String::from_utf8_lossy(&err);
        let tail = tail.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
        return Err(fail(format!("failed ({status}){}; the packet is written, no answer was kept", if tail.is_empty() { String::new() } else { format!(": {tail}") })));
    }
    if out.iter().all(|b| b.is_ascii_whitespace()) {
        return Err(fail("answered nothing on stdout; the packet is written, no answer was kept".into()));
    }
    Ok(out)
}

/// Record a decision in the run's manifest.
pub fn decide(dir: &Path, approve: bool, note: &str, by: &str, force: bool) -> Result<ReviewDecision, StageError> {
    let mut m = open(dir)?;
    if approve && !m.gate.pass && !force {
        return Err(StageError::Invalid(format!(
            "run \"{}\": its gate failed ({}); approving it needs --force (recorded)",
            dir.display(),
            m.gate.reasons.join("; ")
        )));
    }
    let mut run = RunDir::create(dir)?;
    run.lock()?;
    let packet_sha256 = std::fs::read(dir.join(review_files::PACKET)).ok().map(|b| sha256_hex(&b));
    let d = ReviewDecision {
        decision: if approve { "approved" } else { "rejected" }.into(),
        by: by.to_string(),
        at: now(),
        note: note.to_string(),
        forced: approve && !m.gate.pass,
        packet_sha256,
    };
    m.review = Some(d.clone());
    m.write(&run)?;
    Ok(d)
}

/// For `require_review`: the run in `dir` must carry an approval.
pub fn require_approval(dir: &Path) -> Result<(), String> {
    let m = Manifest::read(dir).map_err(|e| e.to_string())?;
    match &m.review {
        Some(r) if r.decision == "approved" => Ok(()),
        Some(r) => Err(format!("its review was {} by {} ({}); require_review needs an approval", r.decision, r.by, r.note)),
        None => Err(format!("it has no approved review (require_review = true); run `kiln review {}` and then `--approve`", dir.display())),
    }
}
