//! The plugin runtime: wasmtime components implementing the worlds of `kiln:stages`.
//!
//! - [`Runtime`] owns the engine, the linker (WASI with nothing granted) and the precompile
//!   cache; [`Runtime::load`] checks a component's pin, world and WIT version.
//! - [`Worker`] runs one instance in its own store with the plugin's [`Limits`].
//! - [`Supervisor`] isolates failing records into the [`Quarantine`] and enforces the failure
//!   budget.

mod bindings;
mod lift;
mod lower;
pub mod build;
pub mod error;
pub mod runtime;
pub mod scaffold;
pub mod source;
pub mod supervisor;
pub mod types;
pub mod worker;
pub mod world;

pub use error::{CallError, FailureKind, PluginError};
pub use runtime::{Limits, Plugin, PluginSpec, Runtime};
pub use supervisor::{Quarantine, QuarantineEntry, Supervisor};
pub use types::*;
pub use worker::{Info, Worker};
pub use world::World;
