//! Plugin errors: every message names the plugin, its sha256, the call and the records.

use std::path::PathBuf;

/// What went wrong in one call of a plugin.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureKind {
    /// The CPU budget (fuel) ran out.
    OutOfFuel,
    /// The memory cap was reached.
    OutOfMemory,
    /// The guest's stack overflowed.
    StackOverflow,
    /// The guest panicked (or hit `unreachable`).
    Panic,
    /// Any other trap.
    Trap,
    /// The output exceeded the configured maximum.
    OutputTooLarge,
    /// The plugin returned `err(plugin-error)`.
    PluginError,
    /// The plugin broke the contract (e.g. wrong number of results).
    Contract,
}

impl std::fmt::Display for FailureKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FailureKind::OutOfFuel => "ran out of its CPU budget (fuel)",
            FailureKind::OutOfMemory => "ran out of its memory cap",
            FailureKind::StackOverflow => "overflowed its stack",
            FailureKind::Panic => "panicked",
            FailureKind::Trap => "trapped",
            FailureKind::OutputTooLarge => "returned more output than allowed",
            FailureKind::PluginError => "returned an error",
            FailureKind::Contract => "broke the plugin contract",
        })
    }
}

/// A failed call: which plugin, which call, on which records, and why.
#[derive(Debug, Clone, thiserror::Error, serde::Serialize)]
#[error("plugin \"{plugin}\" (sha256 {short}) {kind} in `{call}` on {records}: {detail}", short = short_hash(sha256), records = describe_ids(record_ids))]
pub struct CallError {
    /// Plugin name.
    pub plugin: String,
    /// Plugin sha256.
    pub sha256: String,
    /// The exported function called.
    pub call: String,
    /// The records the call was given.
    pub record_ids: Vec<String>,
    /// What went wrong.
    pub kind: FailureKind,
    /// Details: trap message, the guest's stderr, the plugin's own message.
    pub detail: String,
}

/// The first 12 hex digits of a hash, for messages.
pub fn short_hash(h: &str) -> &str {
    &h[..h.len().min(12)]
}

fn describe_ids(ids: &[String]) -> String {
    match ids.len() {
        0 => "no records".to_string(),
        1 => format!("record {}", ids[0]),
        n if n <= 5 => format!("records {}", ids.join(", ")),
        n => format!("{n} records ({}, ..., {})", ids[0], ids[n - 1]),
    }
}

/// Errors loading or running plugins.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The file cannot be read.
    #[error("cannot read plugin \"{path}\": {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The sha256 pin does not match.
    #[error("plugin \"{path}\": hash mismatch, found {found} but expected {expected}")]
    HashMismatch {
        /// The file.
        path: PathBuf,
        /// What the file hashes to.
        found: String,
        /// What the config pinned.
        expected: String,
    },
    /// Not a WebAssembly component.
    #[error("\"{path}\" is not a kiln plugin: {why}")]
    NotAComponent {
        /// The file.
        path: PathBuf,
        /// Why (not wasm at all, a core module, ...).
        why: String,
    },
    /// A component that exports no kiln world, or another world than expected.
    #[error("\"{path}\" (sha256 {short}) {why}", short = short_hash(sha256))]
    WrongWorld {
        /// The file.
        path: PathBuf,
        /// Its hash.
        sha256: String,
        /// What it exports instead.
        why: String,
    },
    /// Built for an incompatible version of the WIT package.
    #[error("\"{path}\" (sha256 {short}) was built for kiln:stages@{theirs}, but this kiln speaks kiln:stages@{ours}; rebuild the plugin against wit/ of this kiln", short = short_hash(sha256))]
    WitVersion {
        /// The file.
        path: PathBuf,
        /// Its hash.
        sha256: String,
        /// The plugin's version.
        theirs: String,
        /// kiln's version.
        ours: String,
    },
    /// Compilation or instantiation failed.
    #[error("plugin \"{path}\" (sha256 {short}) cannot be loaded: {detail}", short = short_hash(sha256))]
    Load {
        /// The file.
        path: PathBuf,
        /// Its hash.
        sha256: String,
        /// Why (wasmtime's message; may list missing imports).
        detail: String,
    },
    /// The plugin rejected its configuration.
    #[error("plugin \"{plugin}\" (sha256 {short}) rejected its configuration: {message}", short = short_hash(sha256))]
    Config {
        /// Plugin name.
        plugin: String,
        /// Its hash.
        sha256: String,
        /// The plugin's message.
        message: String,
    },
    /// A call failed.
    #[error(transparent)]
    Call(#[from] CallError),
    /// The failure budget is spent.
    #[error("plugin \"{plugin}\" (sha256 {short}) failed {failures} times, over its failure budget of {budget}; stopping. Last failure: {last}", short = short_hash(sha256))]
    BudgetSpent {
        /// Plugin name.
        plugin: String,
        /// Its hash.
        sha256: String,
        /// Failures so far.
        failures: usize,
        /// The budget.
        budget: usize,
        /// The last failure.
        last: Box<CallError>,
    },
    /// Writing the quarantine file failed.
    #[error(transparent)]
    Fs(#[from] crate::sandbox::FsError),
    /// The engine could not be set up.
    #[error("cannot set up the plugin engine: {0}")]
    Engine(String),
}
