//! The model engine: GGUF files, the tokenizer, kiln's own transformer code (gemma3, llama)
//! with batched KV caches and LoRA hooks, batched generation and scoring, and the
//! contamination guard.

pub mod config;
pub mod engine;
pub mod error;
pub mod generate;
pub mod fetch;
pub mod guard;
pub mod kernels;
pub mod memory;
pub mod profile;
pub mod qmm;
pub mod sample;
pub mod scatter;
pub mod tokenizer;
pub mod transformer;

pub use config::{Arch, ModelConfig};
pub use engine::{DeviceSpec, Engine, LoadOptions, ModelInfo};
pub use error::ModelError;
pub use generate::{BatchOptions, Finish, GenRequest, Generated, SamplingParams, ScoreRequest, Scored};
pub use transformer::{Model, SeqCache, Step, Want};
