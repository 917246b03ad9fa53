//! Stage errors: each names the object (run folder, plugin, model, config field) and the values.

use std::path::PathBuf;

use crate::config::pilot::PilotConfigError;
use crate::config::ConfigError;
use crate::model::fetch::FetchError;
use crate::model::ModelError;
use crate::plugin::PluginError;
use crate::provenance::manifest::ManifestError;
use crate::sandbox::{FsError, JsonlError};

/// What can stop a stage. Every message already says why, down to the OS error, so no
/// variant exposes a `source()`: printing the chain (`{:#}`) says it once.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The config file.
    #[error("{0}")]
    Config(Box<PilotConfigError>),
    /// A config value.
    #[error("{0}")]
    ConfigValue(Box<ConfigError>),
    /// A plugin named by a config field cannot be loaded.
    #[error("{file}: {field}: {error}")]
    PluginLoad {
        /// The config file.
        file: String,
        /// The field, e.g. `plugins.cleaners[0]`.
        field: String,
        /// Why.
        error: Box<PluginError>,
    },
    /// A plugin of another world than its config field needs.
    #[error("{0}")]
    WrongWorld(Box<WrongWorld>),
    /// A plugin failed while running (failure budget spent, QC rule trapped, ...).
    #[error("{0}")]
    Plugin(Box<PluginError>),
    /// The model.
    #[error("{0}")]
    Model(Box<ModelError>),
    /// Fetching the model.
    #[error("{0}")]
    Fetch(Box<FetchError>),
    /// The filesystem.
    #[error("{0}")]
    Fs(Box<FsError>),
    /// A JSON-lines file.
    #[error("{0}")]
    Jsonl(Box<JsonlError>),
    /// A manifest.
    #[error("{0}")]
    Manifest(Box<ManifestError>),
    /// The contamination guard flagged the model.
    #[error("{0}")]
    Guard(Box<GuardFailed>),
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

/// A plugin of another world than its config field needs.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {field}: \"{path}\" (sha256 {short}) is a {found} plugin (\"{name}\"), but {field} needs a {expected} plugin", short = crate::plugin::error::short_hash(sha256))]
pub struct WrongWorld {
    /// The config file.
    pub file: String,
    /// The field.
    pub field: String,
    /// The component.
    pub path: PathBuf,
    /// Its hash.
    pub sha256: String,
    /// Its name.
    pub name: String,
    /// Its world.
    pub found: String,
    /// The world the field needs.
    pub expected: String,
}

/// The contamination guard flagged the model.
#[derive(Debug, thiserror::Error)]
#[error("model \"{path}\" (sha256 {short}) failed the contamination guard: it prefers assistant-style continuations by {preference:.3} nats per token (threshold {threshold}, {wins} of {sentinels} sentinels); kiln works from base models only (raise model.guard_threshold to override, at your own risk)", short = crate::plugin::error::short_hash(sha256))]
pub struct GuardFailed {
    /// The model file.
    pub path: PathBuf,
    /// Its sha256.
    pub sha256: String,
    /// Mean preference.
    pub preference: f64,
    /// The threshold.
    pub threshold: f64,
    /// Sentinels won by the assistant continuation.
    pub wins: usize,
    /// Sentinels.
    pub sentinels: usize,
}

macro_rules! boxed_from {
    ($($t:ty => $v:ident),* $(,)?) => {
        $(impl From<$t> for StageError {
            fn from(e: $t) -> Self {
                StageError::$v(Box::new(e))
            }
        })*
    };
}

boxed_from!(
    PilotConfigError => Config,
    ConfigError => ConfigValue,
    WrongWorld => WrongWorld,
    PluginError => Plugin,
    FsError => Fs,
    ModelError => Model,
    FetchError => Fetch,
    JsonlError => Jsonl,
    ManifestError => Manifest,
    GuardFailed => Guard,
);

#[cfg(test)]
mod tests {
    #[test]
    fn errors_are_small() {
        assert!(std::mem::size_of::<super::StageError>() <= 64, "{}", std::mem::size_of::<super::StageError>());
    }
}
