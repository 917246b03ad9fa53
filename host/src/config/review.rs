//! The review config (`configs/review.toml`): who reviews, and an optional external reviewer
//! command that reads a review packet on stdin and answers on stdout. Strict: unknown keys are
//! errors.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::pilot::{read_strict, Ctx, PilotConfigError};
use super::ConfigError;

/// The file form.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewFile {
    /// `[review]`.
    #[serde(default)]
    pub review: ReviewSection,
}

/// `[review]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReviewSection {
    /// Who records decisions (default: `$USER`).
    pub by: Option<String>,
    /// An external reviewer: run with `sh -c`, the packet on stdin, its answer read from stdout.
    pub command: Option<String>,
    /// Seconds the reviewer command may take (default 600).
    pub timeout_s: Option<u64>,
    /// Accepted and dropped examples shown in a packet, each (default 25).
    pub samples: Option<usize>,
}

/// A validated review config.
#[derive(Debug, Clone)]
pub struct ReviewConfig {
    /// The file, if one was read.
    pub file: Option<PathBuf>,
    /// Reviewer name for decisions.
    pub by: Option<String>,
    /// External reviewer command.
    pub command: Option<String>,
    /// Its time limit.
    pub timeout_s: u64,
    /// Examples per kind in a packet.
    pub samples: usize,
}

impl ReviewConfig {
    /// Read `path` (None: every default).
    pub fn load(path: Option<&Path>) -> Result<ReviewConfig, PilotConfigError> {
        let file: ReviewFile = match path {
            Some(p) => read_strict(p)?,
            None => ReviewFile::default(),
        };
        Ok(file.validate(path)?)
    }
}

impl ReviewFile {
    /// Validate.
    pub fn validate(self, path: Option<&Path>) -> Result<ReviewConfig, ConfigError> {
        let shown = path.map(|p| p.display().to_string()).unwrap_or_else(|| "defaults".into());
        let cx = Ctx::new(shown, Path::new("."));
        let r = self.review;
        if let Some(c) = &r.command {
            if c.trim().is_empty() {
                return Err(cx.err("review.command", "\"\"", "is empty; leave it out for no external reviewer"));
            }
        }
        if let Some(b) = &r.by {
            if b.trim().is_empty() || b.contains('\n') {
                return Err(cx.err("review.by", format!("{b:?}"), "must be a name on one line"));
            }
        }
        let timeout_s = r.timeout_s.unwrap_or(600);
        if timeout_s == 0 || timeout_s > 86_400 {
            return Err(cx.err("review.timeout_s", timeout_s, "must be between 1 and 86400"));
        }
        let samples = r.samples.unwrap_or(25);
        if samples == 0 || samples > 10_000 {
            return Err(cx.err("review.samples", samples, "must be between 1 and 10000"));
        }
        Ok(ReviewConfig { file: path.map(Path::to_path_buf), by: r.by, command: r.command, timeout_s, samples })
    }
}
