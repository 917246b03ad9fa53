//! kiln's integration tests: one test binary. Guest plugins (reference ones from `plugins/`,
//! hostile ones from `tests/plugins/`) are built for wasm32-wasip2 on first use.

mod common;
mod cli;
mod authoring;
mod guest_langs;
mod hostile;
mod reference;
mod runtime;
mod stats;
mod tokenizer;
mod model;
mod tiny;
mod pilot;
mod scale;
mod slurm;
mod testset;
mod review;
mod eval;
mod real_model;
mod fetch;
mod train;
mod peft;
