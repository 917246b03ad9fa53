//! The tokenizer: built from a GGUF file's own metadata (or from a `tokenizer.json`), with the
//! token ids llama.cpp gives for the same file.
//!
//! kiln encodes the way llama.cpp's `llama_tokenize(text, add_special = false, parse_special =
//! false)` does (what llama-cpp-python calls `tokenize(text, add_bos=False, special=False)`):
//!
//! 1. **User-defined tokens are split out first.** Every token of type USER_DEFINED (gemma3's
//!    runs of spaces, newlines and tabs, its HTML tags) is cut out of the text wherever it
//!    occurs, longest token first, before the model sees the rest. CONTROL and UNKNOWN tokens
//!    (`<bos>`, `<start_of_turn>`, `<|im_start|>`) are *not*: their text is ordinary text. Like
//!    llama.cpp, a user-defined token whose text looks like an end-of-turn or fill-in-the-middle
//!    marker (`</s>`, `<|endoftext|>`, ..., see `CONTROL_LOOKING`) is treated as a control token.
//! 2. **The rest goes through the model**, fragment by fragment:
//!    - `llama` (SentencePiece, [`TokenizerKind::Spm`]): spaces become `▁` (and one `▁` is put
//!      in front of the first fragment and of every fragment that follows a split-out token when
//!      `tokenizer.ggml.add_space_prefix` says so, which is llama.cpp's default); then the whole
//!      fragment, not word by word, is merged: the adjacent pair whose concatenation is the
//!      highest-scored vocabulary token merges first, the leftmost on ties, and characters that
//!      never became a token come out as their `<0xXX>` byte tokens. kiln runs llama.cpp's
//!      algorithm itself (see `SpmModel` for why not a `tokenizers` BPE).
//!    - `gpt2` (byte-level BPE, [`TokenizerKind::Bpe`]): a `tokenizers` BPE with the file's
//!      vocabulary and `tokenizer.ggml.merges`, behind `Split` pre-tokenizers with the regexes
//!      llama.cpp uses for the file's `tokenizer.ggml.pre` and GPT-2's byte-to-unicode mapping;
//!      pieces merge by rank, the leftmost on ties, as in llama.cpp. A byte whose GPT-2
//!      character is not in the vocabulary has no token and is dropped, as llama.cpp drops it.
//!
//! Decoding concatenates [`Tokenizer::token_bytes`]: byte tokens give their byte, SentencePiece
//! tokens give their text with `▁` turned back into a space, byte-level tokens give their bytes,
//! and user-defined, control and unknown tokens give their text as it stands (llama.cpp's
//! `detokenize(special=False)` would drop control and unknown tokens; kiln keeps them because
//! SentencePiece merging can turn plain text into one: a pair of pieces whose concatenation is a
//! control token merges like any other, and the text must still round-trip).
//! `decode(encode(s)) == s` for every string except where llama.cpp's own ids lose information:
//! in a SentencePiece vocabulary a literal `▁` (U+2581) in the input is the same as a space, so it
//! decodes as a space (and with `add_space_prefix` on, the added leading space comes back too);
//! in a byte-level vocabulary, bytes without a token vanish (SmolLM2 has none for 0x04, 0x06,
//! 0x13, 0x14, 0x16 and 0x1D).
//!
//! A `tokenizer.json` ([`TokenizerKind::Json`], for safetensors models) is used as the
//! `tokenizers` crate reads it, except that special added tokens are not split out of the input
//! (their text is plain text, as above).

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};

use candle_core::quantized::gguf_file::{Content, Value};
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::SplitDelimiterBehavior;

/// Which kind of tokenizer this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenizerKind {
    /// SentencePiece-style vocabulary with scores (GGUF `tokenizer.ggml.model = "llama"`).
    Spm,
    /// Byte-level BPE with merges (GGUF `tokenizer.ggml.model = "gpt2"`).
    Bpe,
    /// A Hugging Face `tokenizer.json`.
    Json,
}

/// A token's type, as GGUF's `tokenizer.ggml.token_type` records it (llama.cpp's
/// `llama_token_type`); a `tokenizer.json` gives `Control` for special added tokens,
/// `UserDefined` for other added tokens and `Normal` for the rest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenType {
    /// Type 0, or a value kiln does not know.
    Undefined,
    /// Type 1: an ordinary token.
    Normal,
    /// Type 2: the unknown token.
    Unknown,
    /// Type 3: a control token (`<bos>`, `<start_of_turn>`): never produced from plain text by
    /// the special-token split.
    Control,
    /// Type 4: a user-defined token, split out of the text before the model runs.
    UserDefined,
    /// Type 5: an unused slot.
    Unused,
    /// Type 6: a byte token `<0xXX>`.
    Byte,
}

impl TokenType {
    fn from_gguf(t: i64) -> TokenType {
        match t {
            1 => TokenType::Normal,
            2 => TokenType::Unknown,
            3 => TokenType::Control,
            4 => TokenType::UserDefined,
            5 => TokenType::Unused,
            6 => TokenType::Byte,
            _ => TokenType::Undefined,
        }
    }
}

/// What went wrong building or using a tokenizer; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TokenizerError {
    /// The file could not be opened or read.
    #[error("cannot read \"{}\"", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid GGUF.
    #[error("\"{file}\" is not a valid GGUF file: {message}")]
    Gguf {
        /// The file.
        file: String,
        /// What the GGUF reader said.
        message: String,
    },
    /// A metadata key the tokenizer needs is missing.
    #[error("\"{file}\" has no \"{key}\" in its metadata: cannot build its tokenizer")]
    MissingKey {
        /// The file.
        file: String,
        /// The key.
        key: String,
    },
    /// A metadata key has the wrong type or a value that makes no sense.
    #[error("\"{file}\": metadata \"{key}\" {problem}")]
    BadValue {
        /// The file.
        file: String,
        /// The key.
        key: String,
        /// What is wrong with it.
        problem: String,
    },
    /// `tokenizer.ggml.model` names a tokenizer kiln does not implement.
    #[error("\"{file}\": tokenizer.ggml.model \"{model}\" is not supported (kiln reads \"llama\" (SentencePiece) and \"gpt2\" (byte-level BPE))")]
    UnsupportedModel {
        /// The file.
        file: String,
        /// The value of `tokenizer.ggml.model`.
        model: String,
    },
    /// `tokenizer.ggml.pre` names a pre-tokenizer kiln does not implement.
    #[error("\"{file}\": BPE pre-tokenizer tokenizer.ggml.pre \"{pre}\" is not supported (supported: {supported})")]
    UnsupportedPre {
        /// The file.
        file: String,
        /// The value of `tokenizer.ggml.pre`.
        pre: String,
        /// The values kiln knows.
        supported: String,
    },
    /// The `tokenizers` crate refused the vocabulary, merges or `tokenizer.json`.
    #[error("\"{file}\": cannot build the tokenizer: {message}")]
    Build {
        /// The file.
        file: String,
        /// Why.
        message: String,
    },
    /// Encoding or decoding failed inside the `tokenizers` crate.
    #[error("the tokenizer of \"{file}\" failed: {message}")]
    Tokenize {
        /// The file.
        file: String,
        /// Why.
        message: String,
    },
    /// A token id outside the vocabulary.
    #[error("token id {id} is out of range for the tokenizer of \"{file}\" ({vocab_size} tokens)")]
    UnknownId {
        /// The file.
        file: String,
        /// The id.
        id: u32,
        /// The vocabulary size.
        vocab_size: usize,
    },
}

/// Texts that llama.cpp (the version the parity fixtures record) treats as control tokens
/// whatever type the file gives them: its end-of-turn, end-of-generation and fill-in-the-middle
/// markers. A user-defined token with one of these texts is therefore not split out of plain
/// text (gemma3's `</s>` is one).
const CONTROL_LOOKING: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
    "<|fim_prefix|>",
    "<fim-prefix>",
    "<fim_prefix>",
    "<｜fim▁begin｜>",
    "<PRE>",
    "▁<PRE>",
    "<|code_prefix|>",
    "<|prefix|>",
    "<|fim_suffix|>",
    "<fim-suffix>",
    "<fim_suffix>",
    "<｜fim▁hole｜>",
    "<SUF>",
    "▁<SUF>",
    "<|code_suffix|>",
    "<|suffix|>",
    "<|fim_middle|>",
    "<fim-middle>",
    "<fim_middle>",
    "<｜fim▁end｜>",
    "<MID>",
    "▁<MID>",
    "<|code_middle|>",
    "<|middle|>",
    "<|fim_pad|>",
    "<fim-pad>",
    "<fim_pad>",
    "<PAD>",
    "[PAD]",
    "<|fim_repo|>",
    "<|repo_name|>",
    "<fim-repo>",
    "<REPO>",
    "<reponame>",
    "<|file_sep|>",
];

/// Texts of end-of-turn tokens that end a generation besides the file's EOS token. Unlike
/// llama.cpp, `</s>` is not on the list: in gemma3 it is a user-defined HTML tag (strikethrough),
/// not an end marker (it still counts when it *is* the file's EOS token).
const END_OF_TURN: &[&str] = &[
    "<end_of_turn>",
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<|eom_id|>",
    "<EOT>",
    "<end_of_utterance>",
];

/// The GPT-2 regex, as llama.cpp's own splitter implements it (its trailing `|\s+` is what
/// llama.cpp's code does for a lone trailing whitespace).
const GPT2_REGEX: &str = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Llama 3's regex in llama.cpp's adapted form.
const LLAMA3_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's regex in llama.cpp's adapted form.
const QWEN2_REGEX: &str = r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// How llama.cpp pre-tokenizes a byte-level BPE vocabulary, by `tokenizer.ggml.pre`: the
/// regexes applied in turn (each splits the pieces of the one before; matches and the text
/// between them both become pieces) and whether a piece that is itself a token skips merging.
/// Only the gpt2 and smollm families are checked against llama.cpp by kiln's parity corpus.
#[derive(Clone, Copy)]
struct PreTokenizerSpec {
    regexes: &'static [&'static str],
    ignore_merges: bool,
}

const SUPPORTED_PRE: &str = "gpt-2 family (gpt-2, phi-2, mpt, olmo, jais, exaone4, roberta-bpe), \
     smollm family (smollm, starcoder, refact, command-r, codeshell, exaone, mellum2), \
     llama3 family (llama3, llama-v3, llama-bpe, falcon3, pixtral, dbrx, smaug-bpe), \
     qwen2 family (qwen2, deepseek-r1-qwen, stablelm2)";

fn pre_tokenizer_spec(pre: &str) -> Option<PreTokenizerSpec> {
    const GPT2: &[&str] = &[GPT2_REGEX];
    const DIGITS_GPT2: &[&str] = &[r"\p{N}", GPT2_REGEX];
    const LLAMA3: &[&str] = &[LLAMA3_REGEX];
    const QWEN2: &[&str] = &[QWEN2_REGEX];
    let spec = |regexes, ignore_merges| Some(PreTokenizerSpec { regexes, ignore_merges });
    match pre {
        "gpt-2" | "phi-2" | "mpt" | "olmo" | "jais" | "exaone4" | "roberta-bpe" => spec(GPT2, false),
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "mellum2" => spec(DIGITS_GPT2, false),
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "pixtral" => spec(LLAMA3, true),
        "dbrx" | "smaug-bpe" => spec(LLAMA3, false),
        "qwen2" | "deepseek-r1-qwen" | "stablelm2" => spec(QWEN2, false),
        _ => None,
    }
}

/// A piece of the input after the user-defined tokens are split out.
enum Fragment<'a> {
    Text(&'a str),
    Token(u32),
}

/// A tokenizer with llama.cpp's token ids. Cheap to share (`&Tokenizer` is `Send + Sync`).
pub struct Tokenizer {
    kind: TokenizerKind,
    /// The file it came from, for messages.
    file: String,
    /// What turns a text fragment into ids.
    model: Model,
    /// Token texts by id, as the file spells them.
    tokens: Vec<String>,
    /// Token types by id.
    types: Vec<TokenType>,
    /// The user-defined tokens split out of the input, longest first (then by id).
    splitters: Vec<(String, u32)>,
    /// SentencePiece: put a `▁` in front of the first fragment and after each split-out token.
    add_space_prefix: bool,
    /// Json kind with a byte-level decoder.
    byte_level_json: bool,
    bos: Option<u32>,
    eos: Vec<u32>,
    add_bos: bool,
}

impl fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokenizer")
            .field("kind", &self.kind)
            .field("file", &self.file)
            .field("vocab_size", &self.tokens.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("add_bos", &self.add_bos)
            .finish_non_exhaustive()
    }
}

/// Typed access to GGUF metadata, with errors naming the file and key.
struct Meta<'a> {
    md: &'a HashMap<String, Value>,
    file: &'a str,
}

impl<'a> Meta<'a> {
    fn bad(&self, key: &str, problem: String) -> TokenizerError {
        TokenizerError::BadValue { file: self.file.to_string(), key: key.to_string(), problem }
    }

    fn missing(&self, key: &str) -> TokenizerError {
        TokenizerError::MissingKey { file: self.file.to_string(), key: key.to_string() }
    }

    fn string(&self, key: &str) -> Result<Option<&'a str>, TokenizerError> {
        match self.md.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(self.bad(key, format!("should be a string, found {:?}", v.value_type()))),
        }
    }

    fn array(&self, key: &str) -> Result<Option<&'a [Value]>, TokenizerError> {
        match self.md.get(key) {
            None => Ok(None),
            Some(Value::Array(a)) => Ok(Some(a.as_slice())),
            Some(v) => Err(self.bad(key, format!("should be an array, found {:?}", v.value_type()))),
        }
    }

    fn strings(&self, key: &str) -> Result<Option<Vec<&'a str>>, TokenizerError> {
        let Some(a) = self.array(key)? else { return Ok(None) };
        a.iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.as_str()),
                v => Err(self.bad(key, format!("should hold strings, found {:?} at index {i}", v.value_type()))),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn floats(&self, key: &str) -> Result<Option<Vec<f32>>, TokenizerError> {
        let Some(a) = self.array(key)? else { return Ok(None) };
        a.iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::F32(x) => Ok(*x),
                Value::F64(x) => Ok(*x as f32),
                v => int_of(v).map(|x| x as f32).ok_or_else(|| {
                    self.bad(key, format!("should hold numbers, found {:?} at index {i}", v.value_type()))
                }),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    fn ints(&self, key: &str) -> Result<Option<Vec<i64>>, TokenizerError> {
        let Some(a) = self.array(key)? else { return Ok(None) };
        a.iter()
            .enumerate()
            .map(|(i, v)| {
                int_of(v).ok_or_else(|| {
                    self.bad(key, format!("should hold integers, found {:?} at index {i}", v.value_type()))
                })
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// A token id; out-of-range ids are ignored (llama.cpp warns and keeps its default).
    fn id(&self, key: &str, n_tokens: usize) -> Result<Option<u32>, TokenizerError> {
        match self.md.get(key) {
            None => Ok(None),
            Some(v) => match int_of(v) {
                Some(x) if x >= 0 && (x as u64) < n_tokens as u64 => Ok(Some(x as u32)),
                Some(_) => Ok(None),
                None => Err(self.bad(key, format!("should be an integer, found {:?}", v.value_type()))),
            },
        }
    }

    fn bool(&self, key: &str) -> Result<Option<bool>, TokenizerError> {
        match self.md.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.bad(key, format!("should be a bool, found {:?}", v.value_type()))),
        }
    }
}

fn int_of(v: &Value) -> Option<i64> {
    Some(match v {
        Value::U8(x) => *x as i64,
        Value::I8(x) => *x as i64,
        Value::U16(x) => *x as i64,
        Value::I16(x) => *x as i64,
        Value::U32(x) => *x as i64,
        Value::I32(x) => *x as i64,
        Value::U64(x) => i64::try_from(*x).ok()?,
        Value::I64(x) => *x,
        _ => return None,
    })
}

/// `<0xXX>` -> the byte.
fn byte_token_value(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The byte a character of GPT-2's byte-to-unicode alphabet stands for: printable Latin-1
/// bytes stand for themselves, the other 68 bytes (0x00-0x20, 0x7F-0xA0, 0xAD) for U+0100 on.
fn byte_level_byte(c: char) -> Option<u8> {
    let u = c as u32;
    match u {
        0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF => Some(u as u8),
        0x100..=0x120 => Some((u - 0x100) as u8),
        0x121..=0x142 => Some((0x7F + (u - 0x121)) as u8),
        0x143 => Some(0xAD),
        _ => None,
    }
}

/// A byte-level token's bytes; a character outside the alphabet gives its own UTF-8 bytes.
fn byte_level_bytes(text: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len());
    for c in text.chars() {
        match byte_level_byte(c) {
            Some(b) => out.push(b),
            None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
        }
    }
    out
}

impl Tokenizer {
    /// The tokenizer described by a GGUF file's metadata; `source` names the file in messages.
    pub fn from_gguf(content: &Content, source: &str) -> Result<Tokenizer, TokenizerError> {
        let meta = Meta { md: &content.metadata, file: source };
        let model_name = meta.string("tokenizer.ggml.model")?.ok_or_else(|| meta.missing("tokenizer.ggml.model"))?;
        let kind = match model_name {
            "llama" => TokenizerKind::Spm,
            "gpt2" => TokenizerKind::Bpe,
            other => {
                return Err(TokenizerError::UnsupportedModel { file: source.to_string(), model: other.to_string() })
            }
        };
        // Check the pre-tokenizer before the expensive part.
        let pre = match kind {
            TokenizerKind::Bpe => {
                let pre = meta.string("tokenizer.ggml.pre")?.unwrap_or("default");
                Some(pre_tokenizer_spec(pre).ok_or_else(|| TokenizerError::UnsupportedPre {
                    file: source.to_string(),
                    pre: pre.to_string(),
                    supported: SUPPORTED_PRE.to_string(),
                })?)
            }
            _ => None,
        };

        let texts = meta.strings("tokenizer.ggml.tokens")?.ok_or_else(|| meta.missing("tokenizer.ggml.tokens"))?;
        let n = texts.len();
        if n == 0 || n > u32::MAX as usize {
            return Err(meta.bad("tokenizer.ggml.tokens", format!("holds {n} tokens")));
        }
        // llama.cpp renames empty tokens so that every token has a distinct, non-empty text.
        let tokens: Vec<String> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| if t.is_empty() { format!("[EMPTY_{i}]") } else { t.to_string() })
            .collect();
        let types: Vec<TokenType> = match meta.ints("tokenizer.ggml.token_type")? {
            None => vec![TokenType::Normal; n],
            Some(t) if t.len() < n => {
                return Err(meta.bad("tokenizer.ggml.token_type", format!("has {} entries for {n} tokens", t.len())))
            }
            Some(t) => t[..n].iter().map(|&x| TokenType::from_gguf(x)).collect(),
        };

        // Token text -> id; with duplicate texts the last id wins, as in llama.cpp.
        let vocab: Vocab = tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();

        let build_err = |e: tokenizers::Error| TokenizerError::Build { file: source.to_string(), message: e.to_string() };
        let model = match kind {
            TokenizerKind::Spm => {
                let scores = match meta.floats("tokenizer.ggml.scores")? {
                    None => vec![0.0; n],
                    Some(s) if s.len() < n => {
                        return Err(meta.bad("tokenizer.ggml.scores", format!("has {} entries for {n} tokens", s.len())))
                    }
                    Some(mut s) => {
                        s.truncate(n);
                        s
                    }
                };
                Model::Spm(Box::new(SpmModel::new(vocab, scores)))
            }
            TokenizerKind::Bpe => {
                let pre = pre.expect("checked above");
                let list = meta.strings("tokenizer.ggml.merges")?.ok_or_else(|| meta.missing("tokenizer.ggml.merges"))?;
                let merges = bpe_merges(&list, &vocab);
                let bpe = BPE::builder()
                    .vocab_and_merges(vocab, merges)
                    .ignore_merges(pre.ignore_merges)
                    .build()
                    .map_err(build_err)?;
                let mut t = tokenizers::Tokenizer::new(bpe);
                let mut steps: Vec<PreTokenizerWrapper> = Vec::new();
                for r in pre.regexes {
                    let split = Split::new(SplitPattern::Regex(r.to_string()), SplitDelimiterBehavior::Isolated, false)
                        .map_err(build_err)?;
                    steps.push(split.into());
                }
                steps.push(ByteLevel::new(false, false, false).into());
                t.with_pre_tokenizer(Some(PreSequence::new(steps)));
                t.with_decoder(Some(ByteLevel::new(false, false, false)));
                Model::Hf(Box::new(t))
            }
            TokenizerKind::Json => unreachable!(),
        };
        let splitters = splitters(&tokens, &types);
        let bos = meta.id("tokenizer.ggml.bos_token_id", n)?;
        let mut eos: Vec<u32> = Vec::new();
        for key in ["tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"] {
            eos.extend(meta.id(key, n)?);
        }
        eos.extend(tokens.iter().enumerate().filter(|(_, t)| END_OF_TURN.contains(&t.as_str())).map(|(i, _)| i as u32));
        eos.sort_unstable();
        eos.dedup();
        // llama.cpp's defaults: SentencePiece adds BOS and a space prefix; BPE adds BOS only for
        // the llama3 family. The file's own keys override them.
        let default_bos = match kind {
            TokenizerKind::Spm => true,
            _ => pre.is_some_and(|p| p.ignore_merges && p.regexes == [LLAMA3_REGEX]),
        };
        let add_bos = meta.bool("tokenizer.ggml.add_bos_token")?.unwrap_or(default_bos);
        let add_space_prefix =
            kind == TokenizerKind::Spm && meta.bool("tokenizer.ggml.add_space_prefix")?.unwrap_or(true);
        Ok(Tokenizer {
            kind,
            file: source.to_string(),
            model,
            tokens,
            types,
            splitters,
            add_space_prefix,
            byte_level_json: false,
            bos,
            eos,
            add_bos,
        })
    }

    /// Read a GGUF file's metadata and build its tokenizer.
    pub fn from_gguf_file(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let file = File::open(path).map_err(|source| TokenizerError::Io { path: path.to_path_buf(), source })?;
        let content = Content::read(&mut BufReader::new(file))
            .map_err(|e| TokenizerError::Gguf { file: path.display().to_string(), message: e.to_string() })?;
        Tokenizer::from_gguf(&content, &path.display().to_string())
    }

    /// Load a Hugging Face `tokenizer.json` (for safetensors models). Special added tokens are
    /// not split out of the input. BOS and EOS come from a `tokenizer_config.json` beside it
    /// when there is one (`bos_token`, `eos_token`, `add_bos_token`), else from the usual token
    /// texts (`<bos>`, `<s>`, `<|begin_of_text|>`; `<eos>`, `</s>`, `<|endoftext|>`,
    /// `<|end_of_text|>`) and from whether the post-processor adds BOS.
    pub fn from_tokenizer_json(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let file = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| TokenizerError::Io { path: path.to_path_buf(), source })?;
        let mut inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| TokenizerError::Build { file: file.clone(), message: e.to_string() })?;
        inner.set_encode_special_tokens(true);
        let n = inner.get_vocab_size(true);
        let added = inner.get_added_tokens_decoder();
        let mut tokens = Vec::with_capacity(n);
        let mut types = Vec::with_capacity(n);
        for id in 0..n as u32 {
            let (text, ty) = match added.get(&id) {
                Some(t) if t.special => (t.content.clone(), TokenType::Control),
                Some(t) => (t.content.clone(), TokenType::UserDefined),
                None => match inner.id_to_token(id) {
                    Some(t) => {
                        let ty = if byte_token_value(&t).is_some() { TokenType::Byte } else { TokenType::Normal };
                        (t, ty)
                    }
                    None => (format!("[EMPTY_{id}]"), TokenType::Undefined),
                },
            };
            tokens.push(text);
            types.push(ty);
        }
        let byte_level_json = inner
            .get_decoder()
            .and_then(|d| serde_json::to_string(d).ok())
            .is_some_and(|s| s.contains("\"ByteLevel\""));

        // tokenizer_config.json beside it, if any.
        let config: Option<serde_json::Value> = path
            .parent()
            .map(|d| d.join("tokenizer_config.json"))
            .and_then(|p| std::fs::read(p).ok())
            .and_then(|b| serde_json::from_slice(&b).ok());
        let config_token = |key: &str| -> Option<u32> {
            let v = config.as_ref()?.get(key)?;
            let text = v.as_str().or_else(|| v.get("content").and_then(|c| c.as_str()))?;
            inner.token_to_id(text)
        };
        let first_of = |texts: &[&str]| texts.iter().find_map(|t| inner.token_to_id(t));
        let bos = config_token("bos_token").or_else(|| first_of(&["<bos>", "<s>", "<|begin_of_text|>"]));
        let mut eos: Vec<u32> = config_token("eos_token")
            .or_else(|| first_of(&["<eos>", "</s>", "<|endoftext|>", "<|end_of_text|>"]))
            .into_iter()
            .collect();
        eos.extend(END_OF_TURN.iter().filter_map(|t| inner.token_to_id(t)));
        eos.sort_unstable();
        eos.dedup();
        let add_bos = match config.as_ref().and_then(|c| c.get("add_bos_token")).and_then(|v| v.as_bool()) {
            Some(b) => b,
            None => match (bos, inner.encode("a", true)) {
                (Some(b), Ok(enc)) => enc.get_ids().first() == Some(&b),
                _ => false,
            },
        };
        Ok(Tokenizer {
            kind: TokenizerKind::Json,
            file,
            model: Model::Hf(Box::new(inner)),
            tokens,
            types,
            splitters: Vec::new(),
            add_space_prefix: false,
            byte_level_json,
            bos,
            eos,
            add_bos,
        })
    }

    /// Token ids of `text`: no BOS, and the text of control tokens is plain text, exactly as
    /// llama.cpp's `tokenize(text, add_bos=False, special=False)` gives them.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        if self.kind == TokenizerKind::Json {
            return self.model_encode(text).map(|ids| ids.to_vec());
        }
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let mut after_special = true;
        for fragment in self.partition(text) {
            match fragment {
                Fragment::Token(id) => {
                    out.push(id);
                    after_special = true;
                }
                Fragment::Text(s) => {
                    let ids = if self.add_space_prefix && after_special {
                        self.model_encode(&format!(" {s}"))?
                    } else {
                        self.model_encode(s)?
                    };
                    out.extend_from_slice(&ids);
                    after_special = false;
                }
            }
        }
        Ok(out)
    }

    fn model_encode(&self, text: &str) -> Result<Vec<u32>, TokenizerError> {
        match &self.model {
            Model::Spm(spm) => {
                let mut out = Vec::with_capacity(text.len() / 3 + 1);
                spm.encode(&text.replace(' ', "▁"), &mut out).map_err(|b| TokenizerError::Tokenize {
                    file: self.file.clone(),
                    message: format!("no token for byte {b:#04x} (no <0x{b:02X}> byte token in the vocabulary)"),
                })?;
                Ok(out)
            }
            Model::Hf(t) => {
                let enc = t
                    .encode(text, false)
                    .map_err(|e| TokenizerError::Tokenize { file: self.file.clone(), message: e.to_string() })?;
                Ok(enc.get_ids().to_vec())
            }
        }
    }

    /// Cut the user-defined tokens out of `text` the way llama.cpp does: for each token, longest
    /// first, every occurrence in the text fragments left so far.
    fn partition<'t>(&self, text: &'t str) -> Vec<Fragment<'t>> {
        let mut fragments = Vec::new();
        if text.is_empty() {
            return fragments;
        }
        fragments.push(Fragment::Text(text));
        for (special, id) in &self.splitters {
            if !text.contains(special.as_str()) {
                continue;
            }
            let mut next = Vec::with_capacity(fragments.len() + 2);
            for fragment in fragments {
                match fragment {
                    Fragment::Text(mut s) => {
                        while let Some(at) = s.find(special.as_str()) {
                            if at > 0 {
                                next.push(Fragment::Text(&s[..at]));
                            }
                            next.push(Fragment::Token(*id));
                            s = &s[at + special.len()..];
                        }
                        if !s.is_empty() {
                            next.push(Fragment::Text(s));
                        }
                    }
                    token => next.push(token),
                }
            }
            fragments = next;
        }
        fragments
    }

    /// The text of `ids`: the concatenated [`Tokenizer::token_bytes`], with any invalid UTF-8
    /// replaced by U+FFFD (a generation cut in the middle of a character). For a
    /// `tokenizer.json` the `tokenizers` decoder runs instead (so a Metaspace prefix space is
    /// stripped the way that tokenizer intends).
    pub fn decode(&self, ids: &[u32]) -> Result<String, TokenizerError> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= self.tokens.len()) {
            return Err(TokenizerError::UnknownId { file: self.file.clone(), id, vocab_size: self.tokens.len() });
        }
        if let (TokenizerKind::Json, Model::Hf(t)) = (self.kind, &self.model) {
            return t
                .decode(ids, false)
                .map_err(|e| TokenizerError::Tokenize { file: self.file.clone(), message: e.to_string() });
        }
        let mut bytes = Vec::with_capacity(ids.len() * 4);
        for &id in ids {
            self.push_token_bytes(id, &mut bytes);
        }
        Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    /// The raw bytes token `id` contributes to decoded text (possibly part of a UTF-8
    /// character: a byte-fallback token is one byte), for incremental decoding. Byte tokens give
    /// their byte; SentencePiece tokens their text with `▁` as a space; byte-level BPE tokens
    /// their bytes; user-defined, control and unknown tokens their text as it stands. Empty for
    /// an id outside the vocabulary.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let mut out = Vec::new();
        self.push_token_bytes(id, &mut out);
        out
    }

    fn push_token_bytes(&self, id: u32, out: &mut Vec<u8>) {
        let (Some(text), Some(&ty)) = (self.tokens.get(id as usize), self.types.get(id as usize)) else { return };
        match ty {
            TokenType::Control | TokenType::Unknown | TokenType::UserDefined => out.extend_from_slice(text.as_bytes()),
            TokenType::Byte => match byte_token_value(text) {
                Some(b) => out.push(b),
                None => out.extend_from_slice(text.as_bytes()),
            },
            TokenType::Normal | TokenType::Unused | TokenType::Undefined => match self.kind {
                TokenizerKind::Bpe => out.extend(byte_level_bytes(text)),
                TokenizerKind::Json if self.byte_level_json => out.extend(byte_level_bytes(text)),
                _ => {
                    for (i, part) in text.split('▁').enumerate() {
                        if i > 0 {
                            out.push(b' ');
                        }
                        out.extend_from_slice(part.as_bytes());
                    }
                }
            },
        }
    }

    /// The BOS token's id (`tokenizer.ggml.bos_token_id`), if the file names one.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    /// The ids that end a generation, sorted: the file's EOS token (and its EOT/EOM tokens if
    /// it names them) plus every token whose text is an end-of-turn marker (`<end_of_turn>`,
    /// `<|eot_id|>`, `<|im_end|>`, `<|end|>`, `<|endoftext|>`, `<|end_of_text|>`, `<|eom_id|>`,
    /// `<EOT>`, `<end_of_utterance>`). Gemma3's `</s>` is not one (llama.cpp counts it; in gemma3
    /// it is an HTML tag).
    pub fn eos_ids(&self) -> Vec<u32> {
        self.eos.clone()
    }

    /// Whether prompts should start with BOS (`tokenizer.ggml.add_bos_token`; when absent,
    /// llama.cpp's default: yes for SentencePiece and llama3-style BPE, no for other BPE).
    pub fn add_bos(&self) -> bool {
        self.add_bos
    }

    /// The number of tokens in the vocabulary.
    pub fn vocab_size(&self) -> usize {
        self.tokens.len()
    }

    /// The id of the token with exactly this text (the last one if several share it).
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        match &self.model {
            Model::Spm(spm) => spm.vocab.get(token).copied(),
            Model::Hf(t) => t.token_to_id(token),
        }
    }

    /// The text of token `id` as the file spells it (`▁` for spaces in SentencePiece, GPT-2's
    /// byte alphabet in byte-level BPE).
    pub fn id_to_token(&self, id: u32) -> Option<String> {
        self.tokens.get(id as usize).cloned()
    }

    /// The type of token `id`.
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).copied()
    }

    /// Which kind of tokenizer this is.
    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    /// The file it was built from, as given.
    pub fn source(&self) -> &str {
        &self.file
    }
}

/// The user-defined tokens to split out of the input, longest first, then by id; those whose
/// text llama.cpp treats as control are left out. Only the last id of a duplicated text counts.
fn splitters(tokens: &[String], types: &[TokenType]) -> Vec<(String, u32)> {
    let control_looking: HashSet<&str> = CONTROL_LOOKING.iter().copied().collect();
    let mut last: HashMap<&str, u32> = HashMap::new();
    for (i, (t, &ty)) in tokens.iter().zip(types).enumerate() {
        if ty == TokenType::UserDefined && !control_looking.contains(t.as_str()) {
            last.insert(t.as_str(), i as u32);
        }
    }
    let mut out: Vec<(String, u32)> = last.into_iter().map(|(t, i)| (t.to_string(), i)).collect();
    out.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.1.cmp(&b.1)));
    out
}

/// How a text fragment becomes ids.
enum Model {
    /// llama.cpp's SentencePiece merging, kiln's own.
    Spm(Box<SpmModel>),
    /// A `tokenizers` tokenizer: byte-level BPE from GGUF (with no added tokens: kiln splits
    /// the user-defined tokens out itself), or a `tokenizer.json`.
    Hf(Box<tokenizers::Tokenizer>),
}

/// llama.cpp's SentencePiece tokenizer (`llm_tokenizer_spm`): start from the characters, and
/// keep merging the adjacent pair whose concatenation is the highest-scored vocabulary token
/// (the leftmost on equal scores); a piece that is no token at the end comes out as its bytes.
///
/// kiln does this itself rather than through a `tokenizers` BPE: a BPE with byte fallback whose
/// merges are every split of every token ranked by score gives the same ids on gemma3 (kiln's
/// parity corpus and thousands of random strings agreed), but needs 515k generated merges and
/// about a second to build, against about 0.1 s here, and is exact only while every character of
/// every token is itself a token and no two tokens that can overlap share a score.
struct SpmModel {
    /// Token text -> id (the last id of a repeated text, as llama.cpp's map keeps).
    vocab: Vocab,
    scores: Vec<f32>,
    /// The token of each byte: `<0xXX>`, else (for ASCII) the one-character token.
    bytes: [Option<u32>; 256],
}

/// A piece of the fragment being merged: `text[start..start + len]`, in a linked list.
#[derive(Clone, Copy)]
struct Symbol {
    start: usize,
    len: usize,
    prev: Option<usize>,
    next: Option<usize>,
}

/// A candidate merge of symbols `left` and `left`'s next, which together were `size` bytes.
struct Bigram {
    score: f32,
    left: usize,
    size: usize,
}

impl PartialEq for Bigram {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Bigram {}

impl PartialOrd for Bigram {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Bigram {
    /// Higher score first, then the leftmost (scores compared with `<`, as llama.cpp does).
    fn cmp(&self, other: &Self) -> Ordering {
        if self.score < other.score {
            Ordering::Less
        } else if self.score > other.score {
            Ordering::Greater
        } else {
            other.left.cmp(&self.left)
        }
    }
}

impl SpmModel {
    fn new(vocab: Vocab, scores: Vec<f32>) -> SpmModel {
        let mut bytes = [None; 256];
        for (b, slot) in bytes.iter_mut().enumerate() {
            *slot = vocab.get(format!("<0x{b:02X}>").as_str()).copied().or_else(|| {
                let b = b as u8;
                b.is_ascii().then(|| vocab.get(char::from(b).encode_utf8(&mut [0; 4]) as &str).copied()).flatten()
            });
        }
        SpmModel { vocab, scores, bytes }
    }

    /// Append the ids of `text` (spaces already escaped as `▁`); `Err(byte)` when a byte has no
    /// token at all.
    fn encode(&self, text: &str, out: &mut Vec<u32>) -> Result<(), u8> {
        if text.is_empty() {
            return Ok(());
        }
        let mut symbols: Vec<Symbol> = Vec::with_capacity(text.len());
        for (start, c) in text.char_indices() {
            let i = symbols.len();
            symbols.push(Symbol { start, len: c.len_utf8(), prev: i.checked_sub(1), next: Some(i + 1) });
        }
        if let Some(last) = symbols.last_mut() {
            last.next = None;
        }
        let mut queue = BinaryHeap::with_capacity(symbols.len());
        for left in 0..symbols.len().saturating_sub(1) {
            self.push_bigram(text, &symbols, left, &mut queue);
        }
        while let Some(Bigram { left, size, .. }) = queue.pop() {
            let l = symbols[left];
            let Some(right) = l.next else { continue };
            let r = symbols[right];
            // Skip a bigram one of whose symbols has since been merged into something else.
            if l.len == 0 || r.len == 0 || l.len + r.len != size {
                continue;
            }
            symbols[left].len += r.len;
            symbols[left].next = r.next;
            symbols[right].len = 0;
            if let Some(next) = r.next {
                symbols[next].prev = Some(left);
            }
            if let Some(prev) = l.prev {
                self.push_bigram(text, &symbols, prev, &mut queue);
            }
            self.push_bigram(text, &symbols, left, &mut queue);
        }
        let mut at = Some(0);
        while let Some(i) = at {
            let sym = symbols[i];
            let piece = &text[sym.start..sym.start + sym.len];
            match self.vocab.get(piece) {
                Some(&id) => out.push(id),
                None => {
                    for b in piece.bytes() {
                        out.push(self.bytes[b as usize].ok_or(b)?);
                    }
                }
            }
            at = sym.next;
        }
        Ok(())
    }

    fn push_bigram(&self, text: &str, symbols: &[Symbol], left: usize, queue: &mut BinaryHeap<Bigram>) {
        let l = symbols[left];
        let Some(right) = l.next else { return };
        let size = l.len + symbols[right].len;
        if let Some(&id) = self.vocab.get(&text[l.start..l.start + size]) {
            queue.push(Bigram { score: self.scores[id as usize], left, size });
        }
    }
}

/// GGUF merges (`"a b"`, split at the first space after the first byte, as llama.cpp does),
/// keeping the first rank of a repeated pair and dropping pairs that are not in the vocabulary
/// or do not make a token.
fn bpe_merges(list: &[&str], vocab: &Vocab) -> Vec<(String, String)> {
    let mut seen: HashSet<(&str, &str)> = HashSet::with_capacity(list.len());
    let mut out = Vec::with_capacity(list.len());
    for m in list {
        let Some(at) = m.bytes().skip(1).position(|b| b == b' ').map(|p| p + 1) else { continue };
        let (a, b) = (&m[..at], &m[at + 1..]);
        if a.is_empty() || b.is_empty() || !vocab.contains_key(a) || !vocab.contains_key(b) {
            continue;
        }
        if !vocab.contains_key(&format!("{a}{b}")) || !seen.insert((a, b)) {
            continue;
        }
        out.push((a.to_string(), b.to_string()));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_level_alphabet_inverts() {
        // GPT-2's mapping: bytes that are printable stand for themselves, the rest are
        // numbered from U+0100 in byte order.
        let mut n = 0u32;
        for b in 0u8..=255 {
            let printable = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
            let c = if printable {
                char::from(b)
            } else {
                n += 1;
                char::from_u32(0x100 + n - 1).unwrap()
            };
            assert_eq!(byte_level_byte(c), Some(b), "byte {b:#04x}");
        }
        assert_eq!(n, 68);
        assert_eq!(byte_level_byte('Ġ'), Some(b' '));
        assert_eq!(byte_level_byte('Ċ'), Some(b'\n'));
        assert_eq!(byte_level_byte('€'), None);
    }

    #[test]
    fn shareable_across_threads() {
        fn send_sync<T: Send + Sync>() {}
        send_sync::<Tokenizer>();
    }

    #[test]
    fn byte_tokens_parse() {
        assert_eq!(byte_token_value("<0x0A>"), Some(10));
        assert_eq!(byte_token_value("<0xFF>"), Some(255));
        assert_eq!(byte_token_value("<0x0A"), None);
        assert_eq!(byte_token_value("<0x>"), None);
    }

    #[test]
    fn gguf_merges_split_at_the_first_space_after_the_first_byte() {
        let vocab: Vocab = ["a", "b", "ab", " ", " a", "Ġ", "ĠĠ"].iter().enumerate().map(|(i, t)| (t.to_string(), i as u32)).collect();
        let m = bpe_merges(&["a b", "a b", "  a", "x y", "b a", "Ġ Ġ"], &vocab);
        let pair = |a: &str, b: &str| (a.to_string(), b.to_string());
        assert_eq!(m, vec![pair("a", "b"), pair(" ", "a"), pair("Ġ", "Ġ")]);
    }
}
