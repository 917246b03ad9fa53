//! `kiln model tokenize`: text to token ids (or back) on JSON lines, with llama.cpp's ids.

use std::io::{BufRead, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde::{Deserialize, Serialize};

use crate::model::tokenizer::Tokenizer;

/// `kiln model tokenize --model FILE [--decode]`.
///
/// Reads JSON lines `{"text": "..."}` on stdin and writes `{"ids": [...]}` per line: no BOS,
/// and special-token text (`<bos>`, `<|im_start|>`) is plain text, as llama.cpp's
/// `tokenize(text, add_bos=False, special=False)` gives them. With `--decode`, reads
/// `{"ids": [...]}` and writes `{"text": "..."}`. Other fields are ignored; blank lines are
/// skipped; a bad line stops the run with an error naming its line number.
#[derive(Debug, Args)]
#[command(verbatim_doc_comment)]
pub struct TokenizeCommand {
    /// The model: a GGUF file (tokenizer from its metadata) or a `tokenizer.json`.
    #[arg(long, value_name = "FILE")]
    pub model: PathBuf,
    /// Decode `{"ids": [...]}` lines into `{"text": "..."}` lines instead.
    #[arg(long)]
    pub decode: bool,
}

#[derive(Deserialize)]
struct TextLine {
    text: String,
}

#[derive(Deserialize, Serialize)]
struct IdsLine {
    ids: Vec<u32>,
}

#[derive(Serialize)]
struct TextOut<'a> {
    text: &'a str,
}

impl TokenizeCommand {
    /// Run it.
    pub fn execute(self) -> anyhow::Result<ExitCode> {
        let tokenizer = load(&self.model)?;
        let stdin = std::io::stdin().lock();
        let mut out = BufWriter::new(std::io::stdout().lock());
        for (i, line) in stdin.lines().enumerate() {
            let n = i + 1;
            let line = line.with_context(|| format!("cannot read line {n} of stdin"))?;
            if line.trim().is_empty() {
                continue;
            }
            let json = if self.decode {
                let input: IdsLine = serde_json::from_str(&line)
                    .with_context(|| format!("line {n}: expected a JSON object {{\"ids\": [...]}}"))?;
                let text = tokenizer.decode(&input.ids).with_context(|| format!("line {n}: cannot decode"))?;
                serde_json::to_string(&TextOut { text: &text })
            } else {
                let input: TextLine = serde_json::from_str(&line)
                    .with_context(|| format!("line {n}: expected a JSON object {{\"text\": \"...\"}}"))?;
                let ids = tokenizer.encode(&input.text).with_context(|| format!("line {n}: cannot tokenize"))?;
                serde_json::to_string(&IdsLine { ids })
            }
            .context("cannot serialize the output")?;
            writeln!(out, "{json}").context("cannot write to stdout")?;
        }
        out.flush().context("cannot write to stdout")?;
        Ok(ExitCode::SUCCESS)
    }
}

/// A tokenizer from a GGUF file, or from a `tokenizer.json` (by its `.json` extension).
fn load(path: &std::path::Path) -> anyhow::Result<Tokenizer> {
    let is_json = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("json"));
    let tokenizer =
        if is_json { Tokenizer::from_tokenizer_json(path) } else { Tokenizer::from_gguf_file(path) };
    tokenizer.with_context(|| format!("cannot load the tokenizer of \"{}\"", path.display()))
}
