//! Training errors, each naming the file or value at fault.

use std::path::PathBuf;

/// What can go wrong while training.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A bad setting.
    #[error("{0}")]
    Config(String),
    /// A dataset that may not be trained on, or a bad example.
    #[error("dataset {path}: {what}")]
    Dataset {
        /// The dataset file or run.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// An adapter folder that cannot be read.
    #[error("adapter {path}: {what}")]
    Adapter {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A checkpoint that cannot be resumed from.
    #[error("checkpoint {path}: {what}")]
    Checkpoint {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The model.
    #[error(transparent)]
    Model(#[from] crate::model::ModelError),
    /// Tensor arithmetic.
    #[error("tensor arithmetic: {0}")]
    Tensor(#[from] candle_core::Error),
    /// Files.
    #[error(transparent)]
    Fs(#[from] crate::sandbox::FsError),
    /// Other input/output.
    #[error("{0}")]
    Io(String),
    /// Training diverged.
    #[error("training diverged at step {step}: {what}")]
    Diverged {
        /// Optimizer step.
        step: usize,
        /// What was seen.
        what: String,
    },
}
