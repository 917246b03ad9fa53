//! Run manifests and per-record provenance: who made a run (kiln's git revision and whether
//! its tree was dirty, the model's sha256, every plugin's name, world, version and sha256, the
//! config hash), where (OS, CPU, threads, device, kiln version), when, and with what outcome.
//!
//! Timestamps honour `SOURCE_DATE_EPOCH` (seconds since 1970): set it and two runs of the same
//! config write the same bytes, manifests included.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::sandbox::{FsError, RunDir};

/// The manifest's file name inside a run directory.
pub const MANIFEST: &str = "manifest.json";

/// Version of the manifest format.
pub const MANIFEST_VERSION: u32 = 1;

/// Seconds since 1970 now, or `SOURCE_DATE_EPOCH` when set.
pub fn epoch_seconds() -> u64 {
    if let Some(s) = std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|s| s.trim().parse::<u64>().ok()) {
        return s;
    }
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// RFC 3339 UTC time of `secs` since 1970, e.g. `2025-01-31T12:00:00Z`.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// The current time (or `SOURCE_DATE_EPOCH`) in RFC 3339.
pub fn now() -> String {
    rfc3339(epoch_seconds())
}

/// Which kiln made something.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KilnBuild {
    /// kiln's version.
    pub version: String,
    /// The git revision of kiln's source tree, when `git` can tell.
    pub git_revision: Option<String>,
    /// Whether that tree had uncommitted changes.
    pub git_dirty: Option<bool>,
}

fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let out = std::process::Command::new("git").arg("-C").arg(dir).args(args).stderr(std::process::Stdio::null()).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// kiln's version and, when its source tree is still where it was built and `git` is
/// available, the revision and dirty flag (computed once per process).
pub fn kiln_build() -> &'static KilnBuild {
    static CELL: OnceLock<KilnBuild> = OnceLock::new();
    CELL.get_or_init(|| {
        let src = Path::new(env!("CARGO_MANIFEST_DIR"));
        let revision = git(src, &["rev-parse", "HEAD"]).map(|s| s.trim().to_string()).filter(|s| !s.is_empty());
        let dirty = revision.as_ref().and_then(|_| git(src, &["status", "--porcelain", "--untracked-files=no"])).map(|s| !s.trim().is_empty());
        KilnBuild { version: env!("CARGO_PKG_VERSION").to_string(), git_revision: revision, git_dirty: dirty }
    })
}

/// Where a run ran.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Environment {
    /// Operating system (family and, on Linux, the distribution).
    pub os: String,
    /// Kernel release, when known.
    pub kernel: Option<String>,
    /// CPU architecture.
    pub arch: String,
    /// CPU model.
    pub cpu: String,
    /// Threads kiln's compute uses.
    pub threads: usize,
    /// The compute device.
    pub device: String,
    /// kiln's version.
    pub kiln_version: String,
}

fn read_trim(p: &str) -> Option<String> {
    std::fs::read_to_string(p).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

/// This machine, as recorded in manifests.
pub fn environment() -> Environment {
    let distro = std::fs::read_to_string("/etc/os-release").ok().and_then(|t| {
        t.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_string()))
    });
    let os = match distro {
        Some(d) => format!("{} ({d})", std::env::consts::OS),
        None => std::env::consts::OS.to_string(),
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| t.lines().find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).trim().to_string())))
        .unwrap_or_else(|| "unknown".to_string());
    Environment {
        os,
        kernel: read_trim("/proc/sys/kernel/osrelease"),
        arch: std::env::consts::ARCH.to_string(),
        cpu,
        threads: rayon::current_num_threads(),
        device: "cpu".to_string(),
        kiln_version: env!("CARGO_PKG_VERSION").to_string(),
    }
}

/// One plugin of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRecord {
    /// Its role: template, cleaner, critic, qc-rule.
    pub role: String,
    /// The config field that named it.
    pub field: String,
    /// Name.
    pub name: String,
    /// World.
    pub world: String,
    /// Version.
    pub version: String,
    /// WIT version it was built for.
    pub wit_version: String,
    /// sha256 of the component.
    pub sha256: String,
    /// The file.
    pub path: PathBuf,
}

/// A plugin as named on each record (the short form).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PluginRef {
    /// Name.
    pub name: String,
    /// World.
    pub world: String,
    /// Version.
    pub version: String,
    /// sha256.
    pub sha256: String,
}

impl From<&PluginRecord> for PluginRef {
    fn from(p: &PluginRecord) -> Self {
        PluginRef { name: p.name.clone(), world: p.world.clone(), version: p.version.clone(), sha256: p.sha256.clone() }
    }
}

/// The model of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelRecord {
    /// The file.
    pub path: PathBuf,
    /// Its sha256.
    pub sha256: String,
    /// general.architecture.
    pub architecture: String,
    /// general.name.
    pub name: Option<String>,
    /// Size in bytes.
    pub file_size: u64,
    /// A chat template in the file was allowed by config.
    pub chat_template_allowed: bool,
    /// Where it ran, when not the CPU (`cuda:0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
}

/// The gate's outcome.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Gate {
    /// Passed.
    pub pass: bool,
    /// Why not (one sentence each).
    pub reasons: Vec<String>,
}

/// Where a replay's samples came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    /// The run replayed (a pilot, or another replay).
    pub replayed: String,
    /// The replayed run's config hash.
    pub config_hash: String,
    /// The pilot run that holds the raw pool.
    pub run_id: String,
    /// Its directory.
    pub run_dir: PathBuf,
    /// The raw pool file used (inside that run).
    pub raw_pool: String,
    /// The raw pool's sha256.
    pub raw_pool_sha256: String,
}

/// A run's manifest: written last, so its presence marks a complete run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub manifest_version: u32,
    /// The stage: "pilot" or "replay".
    pub stage: String,
    /// Run id.
    pub run_id: String,
    /// "complete".
    pub status: String,
    /// When the run was first started.
    pub started_at: String,
    /// When it finished.
    pub finished_at: String,
    /// kiln.
    pub kiln: KilnBuild,
    /// The machine.
    pub environment: Environment,
    /// The config file given.
    pub config_file: PathBuf,
    /// sha256 of `config.resolved.toml`.
    pub config_hash: String,
    /// Run seed.
    pub seed: u64,
    /// Samples planned.
    pub count: usize,
    /// The model.
    pub model: ModelRecord,
    /// The contamination guard's report.
    pub guard: serde_json::Value,
    /// Every plugin.
    pub plugins: Vec<PluginRecord>,
    /// Sampling per phase.
    pub sampling: BTreeMap<String, serde_json::Value>,
    /// The gate.
    pub gate: Gate,
    /// Counts (planned, parsed, generated, cleaned, accepted, quarantined, dropped_<code>...).
    pub counts: BTreeMap<String, u64>,
    /// Output files (relative paths) and their sha256.
    pub files: BTreeMap<String, String>,
    /// For a replay: the run whose raw pool it used.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub source: Option<Source>,
    /// For an eval: the two arms compared.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub arms: Vec<ArmRecord>,
    /// For an eval: the test set.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub test_set: Option<FileRecord>,
    /// For a training run: the dataset it trained on (a file of a gated run).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub dataset: Option<DatasetRecord>,
    /// For a training run: its settings, split and losses.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub training: Option<serde_json::Value>,
    /// What the run cost: wall, CPU and device time over its finished invocations.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub resources: Option<super::accounting::Resources>,
    /// The review decision, once a reviewer approved or rejected the run.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub review: Option<ReviewDecision>,
}

/// A reviewer's decision on a run (`kiln review RUN --approve|--reject`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewDecision {
    /// "approved" or "rejected".
    pub decision: String,
    /// Who decided.
    pub by: String,
    /// When.
    pub at: String,
    /// Why.
    pub note: String,
    /// Approved although the run's gate had failed (`--force`).
    #[serde(default)]
    pub forced: bool,
    /// sha256 of the review packet the decision was made on, if one was written.
    #[serde(default)]
    pub packet_sha256: Option<String>,
}

/// The dataset a training run used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetRecord {
    /// The run that produced it.
    pub run_id: String,
    /// Its folder.
    pub run_dir: PathBuf,
    /// The file, relative to the folder.
    pub file: String,
    /// The file's sha256 (as its run's manifest records it).
    pub sha256: String,
    /// Examples in it.
    pub records: usize,
}

/// One arm of an eval: what produced its answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmRecord {
    /// "base" or "tuned".
    pub name: String,
    /// Its model.
    pub model: ModelRecord,
    /// Its contamination-guard report.
    pub guard: serde_json::Value,
    /// Its template.
    pub template: PluginRef,
    /// Its LoRA adapter folder and the sha256 of its weights, if it had one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub adapter: Option<FileRecord>,
}

/// An input file by path and content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRecord {
    /// The file.
    pub path: PathBuf,
    /// Its sha256.
    pub sha256: String,
    /// Records in it.
    pub records: usize,
}

/// Errors reading or checking a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// No manifest: the run is not complete (or not a run).
    #[error("\"{0}\" has no {MANIFEST}: not a complete kiln run (an interrupted run is finished by running the same command again)")]
    Missing(PathBuf),
    /// Not readable.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// Not a manifest.
    #[error("\"{path}\" is not a kiln manifest: {why}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A file the manifest names changed.
    #[error("run \"{run}\": {file} has sha256 {found} but its manifest says {expected}; the run was modified after it finished")]
    Modified {
        /// The run directory.
        run: PathBuf,
        /// The file.
        file: String,
        /// What it hashes to now.
        found: String,
        /// What the manifest says.
        expected: String,
    },
}

impl Manifest {
    /// Write it (atomically) into a run directory.
    pub fn write(&self, dir: &RunDir) -> Result<(), FsError> {
        let mut text = serde_json::to_string_pretty(self).expect("manifests serialise");
        text.push('\n');
        dir.write_atomic(MANIFEST, text.as_bytes())
    }

    /// Record what this invocation cost (wall time `wall` since it started; see
    /// [`accounting`](super::accounting)) and write the manifest.
    pub fn write_accounted(&mut self, dir: &RunDir, wall: std::time::Duration) -> Result<(), FsError> {
        self.resources = Some(super::accounting::account(dir, wall)?);
        self.write(dir)
    }

    /// Read the manifest of the run in `dir`.
    pub fn read(dir: &Path) -> Result<Manifest, ManifestError> {
        let path = dir.join(MANIFEST);
        if !path.is_file() {
            return Err(ManifestError::Missing(dir.to_path_buf()));
        }
        let bytes = crate::sandbox::read_file(&path)?;
        serde_json::from_slice(&bytes).map_err(|e| ManifestError::Invalid { path, why: e.to_string() })
    }

    /// Check that every file the manifest lists still has its recorded sha256.
    pub fn verify_files(&self, dir: &Path) -> Result<(), ManifestError> {
        for (rel, expected) in &self.files {
            let path = dir.join(rel);
            let found = super::sha256_file(&path).map_err(|source| FsError { action: "read", path: path.clone(), source })?;
            if &found != expected {
                return Err(ManifestError::Modified { run: dir.to_path_buf(), file: rel.clone(), found, expected: expected.clone() });
            }
        }
        Ok(())
    }
}

/// The provenance every accepted sample carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleProvenance {
    /// Run id.
    pub run_id: String,
    /// kiln's git revision.
    pub kiln_revision: Option<String>,
    /// Whether kiln's tree was dirty.
    pub kiln_dirty: Option<bool>,
    /// kiln's version.
    pub kiln_version: String,
    /// The model's sha256.
    pub model_sha256: String,
    /// The plugins that made and judged it.
    pub plugins: Vec<PluginRef>,
    /// sha256 of the resolved config.
    pub config_hash: String,
    /// The run seed.
    pub run_seed: u64,
    /// The instruction sampler's seed.
    pub instruction_seed: u64,
    /// The response sampler's seed.
    pub response_seed: u64,
    /// Sampling per phase.
    pub sampling: BTreeMap<String, serde_json::Value>,
    /// When the instruction was generated.
    pub instruction_generated_at: String,
    /// When the response was generated.
    pub response_generated_at: String,
    /// When the sample was accepted.
    pub accepted_at: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        // date -u -d @0 ; date -u -d @951782400 ; date -u -d @1700000000
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn environment_is_filled() {
        let e = environment();
        assert_eq!(e.device, "cpu");
        assert!(e.threads >= 1);
        assert!(!e.kiln_version.is_empty());
    }
}
