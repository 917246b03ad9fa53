//! Model errors: every message names the file and the value.

use std::path::PathBuf;

/// What can go wrong loading or running a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// The file cannot be opened or read.
    #[error("cannot read model \"{path}\": {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The GGUF is malformed or lacks something.
    #[error("model \"{path}\": {what}")]
    Format {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key or tensor and value.
        what: String,
    },
    /// An architecture kiln has no code for.
    #[error("model \"{path}\": architecture \"{arch}\" is not supported (kiln supports gemma3 and llama)")]
    Architecture {
        /// The file.
        path: PathBuf,
        /// general.architecture.
        arch: String,
    },
    /// The file carries a chat template and the config does not allow it.
    #[error("model \"{path}\" carries a chat template (tokenizer.chat_template, {len} characters): it looks instruction-tuned, and kiln works from base models; set allow_chat_template = true to load it anyway (it is recorded)")]
    ChatTemplate {
        /// The file.
        path: PathBuf,
        /// Template length.
        len: usize,
    },
    /// A tokenizer problem.
    #[error(transparent)]
    Tokenizer(#[from] super::tokenizer::TokenizerError),
    /// A tensor computation failed.
    #[error("model computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A request that cannot be served.
    #[error("{0}")]
    Request(String),
}
