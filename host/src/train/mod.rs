//! QLoRA training: the frozen quantized base as differentiable operations, LoRA adapters in
//! PEFT's format, AdamW with warmup and cosine decay, loss on response tokens only, and
//! checkpoints that resume to the same bytes.

pub mod data;
pub mod dropout;
pub mod error;
pub mod frozen;
pub mod lora;
pub mod merge;
pub mod model;
pub mod optim;
pub mod rng;
pub mod trainer;

pub use data::{collate, split, Example, Split};
pub use error::TrainError;
pub use lora::{Adapters, LoraConfig, MODULES};
pub use model::{BaseModel, Batch, Dropout};
pub use optim::{AdamW, AdamWConfig};
pub use trainer::{train, LogLine, Report, TrainOptions};
