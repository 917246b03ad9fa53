//! `kiln model inspect FILE`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use crate::model::config::ModelConfig;
use crate::model::engine::{inspect, read_gguf};

/// Describe a GGUF: architecture, sizes, tensor types, tokenizer, special tokens, chat template.
#[derive(Debug, Args)]
pub struct InspectCommand {
    /// The GGUF file.
    pub file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
}

impl InspectCommand {
    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let (_f, content) = read_gguf(&self.file)?;
        let info = inspect(&self.file, &content)?;
        let cfg = ModelConfig::from_metadata(&content.metadata, &self.file).ok();
        if self.json {
            println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "file": info, "config": cfg }))?);
            return Ok(ExitCode::SUCCESS);
        }
        println!("file          {}", info.path.display());
        println!("sha256        {}", info.sha256);
        println!("size          {} bytes", info.file_size);
        println!("architecture  {}{}", info.architecture, info.name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default());
        if let Some(c) = &cfg {
            println!(
                "shape         {} layers, hidden {}, {} heads / {} kv heads of {}, ffn {}, vocab {}, context {}",
                c.layers, c.hidden, c.heads, c.kv_heads, c.head_dim, c.ffn, c.vocab, c.context
            );
            if let Some(w) = c.sliding_window {
                println!("attention     sliding window {w} (every {}th layer global)", c.sliding_pattern);
            }
        } else {
            println!("shape         (kiln has no model code for this architecture)");
        }
        println!("parameters    {}", info.parameters);
        let types: Vec<String> = info.tensor_types.iter().map(|(t, n)| format!("{t} x{n}")).collect();
        println!("tensor types  {}", types.join(", "));
        println!("tokenizer     {} ({} tokens)", info.tokenizer, info.vocab_size);
        let sp: Vec<String> = info.special_tokens.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("special       {}", sp.join(" "));
        match info.chat_template_chars {
            Some(n) => println!("chat template YES ({n} characters): likely instruction-tuned; kiln refuses it unless allowed"),
            None => println!("chat template no"),
        }
        Ok(ExitCode::SUCCESS)
    }
}
