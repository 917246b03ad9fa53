//! Stage errors: each names the object (run folder, plugin, model, config field) and the values.

use std::path::PathBuf;

use crate::config::pilot::PilotConfigError;
use crate::config::ConfigError;
use crate::model::fetch::FetchError;
use crate::model::ModelError;
use crate::plugin::PluginError;
use crate::provenance::manifest::ManifestError;
use crate::sandbox::{FsError, JsonlError};

/// What can stop a stage.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The config file.
    #[error(transparent)]
    Config(#[from] PilotConfigError),
    /// A config value.
    #[error(transparent)]
    ConfigValue(#[from] ConfigError),
    /// A plugin named by a config field cannot be loaded.
    #[error("{file}: {field}: {source}")]
    PluginLoad {
        /// The config file.
        file: String,
        /// The field, e.g. `plugins.cleaners[0]`.
        field: String,
        /// Why.
        #[source]
        source: PluginError,
    },
    /// A plugin of another world than its config field needs.
    #[error("{file}: {field}: \"{path}\" (sha256 {short}) is a {found} plugin (\"{name}\"), but {field} needs a {expected} plugin", short = crate::plugin::error::short_hash(sha256))]
    WrongWorld {
        /// The config file.
        file: String,
        /// The field.
        field: String,
        /// The component.
        path: PathBuf,
        /// Its hash.
        sha256: String,
        /// Its name.
        name: String,
        /// Its world.
        found: String,
        /// The world the field needs.
        expected: String,
    },
    /// A plugin failed while running (failure budget spent, QC rule trapped, ...).
    #[error(transparent)]
    Plugin(#[from] PluginError),
    /// The model.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Fetching the model.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The filesystem.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A JSON-lines file.
    #[error(transparent)]
    Jsonl(#[from] JsonlError),
    /// A manifest.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The contamination guard flagged the model.
    #[error("model \"{path}\" (sha256 {short}) failed the contamination guard: it prefers assistant-style continuations by {preference:.3} nats per token (threshold {threshold}, {wins} of {sentinels} sentinels); kiln works from base models only (raise model.guard_threshold to override, at your own risk)", short = crate::plugin::error::short_hash(sha256))]
    Guard {
        /// The model file.
        path: PathBuf,
        /// Its sha256.
        sha256: String,
        /// Mean preference.
        preference: f64,
        /// The threshold.
        threshold: f64,
        /// Sentinels won by the assistant continuation.
        wins: usize,
        /// Sentinels.
        sentinels: usize,
    },
    /// The run folder holds a run made with another config.
    #[error("run folder \"{dir}\" already holds a run made with another config ({diff}); resume it with the same config, or choose another run id (--run-id)")]
    ConfigChanged {
        /// The run folder.
        dir: PathBuf,
        /// What differs, e.g. `seed: 42 -> 43`.
        diff: String,
    },
    /// The run folder's contents are not what kiln wrote.
    #[error("run folder \"{dir}\": {what}")]
    Corrupt {
        /// The run folder.
        dir: PathBuf,
        /// What is wrong, naming the file and the value.
        what: String,
    },
    /// Something asked of a stage that it cannot do.
    #[error("{0}")]
    Invalid(String),
}
