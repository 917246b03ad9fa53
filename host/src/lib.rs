//! kiln: turns a base language model into an instruction follower without a chat template.
//!
//! The library behind the `kiln` binary. Pipeline policy (prompt templates, cleaners, QC rules,
//! critics) lives in sandboxed WebAssembly components that implement the worlds of the
//! `kiln:stages` WIT package in `wit/`; this crate hosts them ([`plugin`]), owns every file
//! write ([`sandbox`]), and records provenance ([`provenance`]).

#![deny(missing_docs)]

pub mod cli;
pub mod config;
pub mod model;
pub mod plugin;
pub mod provenance;
pub mod sandbox;
pub mod stages;
pub mod stats;
pub mod train;
