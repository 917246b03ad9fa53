//! Configuration: strict serde structs (unknown fields are errors), validated into the forms
//! the stages use.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::plugin::{Limits, PluginSpec};

pub mod eval;
pub mod pilot;
pub mod review;
pub mod scale;
pub mod testset;
pub mod train;

/// A plugin as named in a config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginConfig {
    /// The component file (relative to the config file's directory).
    pub path: PathBuf,
    /// sha256 pin (hex).
    pub sha256: Option<String>,
    /// CPU budget per call, fuel units.
    pub fuel: Option<u64>,
    /// Memory cap, MiB.
    pub memory_mib: Option<usize>,
    /// Output cap per call, MiB.
    pub max_output_mib: Option<usize>,
    /// Quarantined records tolerated before the run stops.
    pub max_failures: Option<usize>,
    /// Read-only data folder, mounted at `/data` (relative to the config file's directory).
    pub data_dir: Option<PathBuf>,
    /// The plugin's own configuration (any TOML table), given to it as JSON.
    #[serde(default)]
    pub config: toml::Table,
}

/// A config error naming the file, the field and the value.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field} = {value}: {why}")]
pub struct ConfigError {
    /// The config file (or "command line").
    pub file: String,
    /// The field.
    pub field: String,
    /// The value given.
    pub value: String,
    /// What is wrong.
    pub why: String,
}

impl PluginConfig {
    /// Validate and resolve paths against `base` (the config file's directory).
    pub fn to_spec(&self, file: &str, field: &str, base: &Path) -> Result<PluginSpec, ConfigError> {
        let err = |sub: &str, value: String, why: &str| ConfigError {
            file: file.to_string(),
            field: format!("{field}.{sub}"),
            value,
            why: why.to_string(),
        };
        let d = Limits::default();
        let limits = Limits {
            fuel: self.fuel.unwrap_or(d.fuel),
            memory_bytes: self.memory_mib.map(|m| m << 20).unwrap_or(d.memory_bytes),
            max_output_bytes: self.max_output_mib.map(|m| m << 20).unwrap_or(d.max_output_bytes),
            max_log_bytes: d.max_log_bytes,
            max_failures: self.max_failures.unwrap_or(d.max_failures),
        };
        if limits.fuel == 0 {
            return Err(err("fuel", "0".into(), "must be positive"));
        }
        if let Some(m) = self.memory_mib {
            if !(1..=4096).contains(&m) {
                return Err(err("memory_mib", m.to_string(), "must be between 1 and 4096"));
            }
        }
        if self.max_output_mib == Some(0) {
            return Err(err("max_output_mib", "0".into(), "must be positive"));
        }
        if let Some(h) = &self.sha256 {
            if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(err("sha256", format!("\"{h}\""), "must be 64 hex digits"));
            }
        }
        let data_dir = match &self.data_dir {
            Some(d) => {
                let p = base.join(d);
                if !p.is_dir() {
                    return Err(err("data_dir", format!("\"{}\"", d.display()), "is not a directory"));
                }
                Some(p)
            }
            None => None,
        };
        let config = serde_json::to_value(&self.config)
            .map_err(|e| err("config", "(table)".into(), &format!("cannot be expressed as JSON: {e}")))?;
        Ok(PluginSpec { path: base.join(&self.path), sha256: self.sha256.clone(), limits, data_dir, config })
    }
}
