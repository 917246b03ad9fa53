//! A cleaner that misbehaves on purpose. Its configuration names the misbehaviour
//! (`{"mode": "loop"}`); it misbehaves only on samples whose instruction contains "TRIGGER"
//! (or on every sample with `"always": true`) and keeps every other sample unchanged.
//!
//! Modes: loop, memory, stack, panic, output, fs, env, print, probe (records what the sandbox
//! lets it see in metadata), wrong-count (returns too few outcomes), echo (keeps the sample with
//! one note, "echo": every field it received, as JSON), bad-pointer (returns a response text
//! whose pointer lies outside its memory), bad-utf8 (returns a response that is not UTF-8),
//! reserve (asks for 1 GiB it can do without on every other sample and panics on the
//! triggering one: a refused growth taken in its stride, then a panic), reserve-loop (the same,
//! then an endless loop).

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::hint::black_box;
use std::sync::Mutex;

wit_bindgen::generate!({ path: "../../../wit", world: "cleaner" });

use exports::kiln::stages::cleaning::{Edit, Guest, Outcome};
use kiln::stages::types::{Entry, PluginError, PluginInfo, Sample};

static MODE: Mutex<(String, bool)> = Mutex::new((String::new(), false));

fn recurse(n: u64) -> u64 {
    let buf = black_box([n; 64]);
    if black_box(true) {
        return recurse(n + 1) + buf[3];
    }
    n
}

/// Loop until the fuel runs out.
fn spin() -> ! {
    let mut x = 0u64;
    loop {
        x = black_box(x.wrapping_add(1));
    }
}

fn note(s: &mut Sample, key: &str, value: String) {
    s.metadata.push(Entry { key: key.into(), value });
}

fn try_read(path: &str) -> String {
    match std::fs::read_to_string(path) {
        Ok(text) => format!("read {} bytes: {}", text.len(), text.chars().take(40).collect::<String>()),
        Err(e) => format!("denied: {e}"),
    }
}

fn misbehave(mode: &str, s: &mut Sample) -> Option<Outcome> {
    match mode {
        "loop" => spin(),
        "memory" => {
            let mut hoard: Vec<Vec<u8>> = Vec::new();
            loop {
                hoard.push(vec![1u8; 1 << 20]);
                black_box(&hoard);
            }
        }
        "stack" => {
            black_box(recurse(0));
        }
        "panic" => panic!("hostile plugin panics on purpose on {}", s.id),
        "output" => {
            s.response = "x".repeat(100 << 20);
        }
        "fs" => {
            note(s, "fs./etc/passwd", try_read("/etc/passwd"));
            note(s, "fs.../", format!("{:?}", std::fs::read_dir("../").map(|d| d.count())));
            note(s, "fs./data/../../etc/passwd", try_read("/data/../../etc/passwd"));
            note(s, "fs./data/allowed.txt", try_read("/data/allowed.txt"));
            note(s, "fs.write", format!("{:?}", std::fs::write("/data/written.txt", "x").map_err(|e| e.to_string())));
        }
        "env" => {
            let vars: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
            note(s, "env.count", vars.len().to_string());
            note(s, "env.HOME", format!("{:?}", std::env::var("HOME").ok()));
            note(s, "env.args", std::env::args().count().to_string());
        }
        "print" => {
            println!("hello from the plugin on stdout about {}", s.id);
            eprintln!("hello from the plugin on stderr about {}", s.id);
        }
        "probe" => {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs());
            note(s, "clock.wall", format!("{now:?}"));
            note(s, "random.hash", RandomState::new().hash_one("kiln").to_string());
            note(s, "net", format!("{:?}", std::net::TcpStream::connect("127.0.0.1:9").map_err(|e| e.kind())));
        }
        "wrong-count" => return None,
        "reserve" => panic!("hostile plugin panics after a refused growth on {}", s.id),
        "reserve-loop" => spin(),
        // Texts the generated bindings pass to the host as they are, pointer and length: forged
        // ones reach the host's reading of the result. Never read or freed here.
        "bad-pointer" => {
            let forged = unsafe { String::from_raw_parts(0x7fff_0000 as *mut u8, 64, 64) };
            return Some(Outcome::Keep(Edit { instruction: None, response: Some(forged), notes: vec![] }));
        }
        "bad-utf8" => {
            let forged = unsafe { String::from_utf8_unchecked(vec![b'o', b'k', 0xff, 0xfe]) };
            return Some(Outcome::Keep(Edit { instruction: None, response: Some(forged), notes: vec![] }));
        }
        "echo" => {
            use kiln::stages::types::{FinishReason, Generation};
            let generation = |g: &Generation| {
                let reason = match g.finish_reason {
                    FinishReason::Stop => "stop",
                    FinishReason::Eos => "eos",
                    FinishReason::Length => "length",
                    FinishReason::None => "none",
                };
                serde_json::json!([reason, g.stop_sequence, g.prompt_tokens, g.completion_tokens, g.max_tokens])
            };
            let echo = serde_json::json!({
                "id": s.id,
                "instruction_type": s.instruction_type,
                "instruction": s.instruction,
                "response": s.response,
                "generations": [generation(&s.instruction_generation), generation(&s.response_generation)],
                "verdicts": s.verdicts.iter().map(|v| serde_json::json!([v.critic, v.aspect, v.pass, v.margin, v.reason])).collect::<Vec<_>>(),
                "metadata": s.metadata.iter().map(|e| serde_json::json!([e.key, e.value])).collect::<Vec<_>>(),
            });
            return Some(Outcome::Keep(Edit { instruction: None, response: None, notes: vec![Entry { key: "echo".into(), value: echo.to_string() }] }));
        }
        other => panic!("unknown hostile mode {other}"),
    }
    Some(Outcome::Keep(Edit { instruction: None, response: Some(s.response.clone()), notes: s.metadata.clone() }))
}

struct Component;

impl Guest for Component {
    fn info() -> PluginInfo {
        PluginInfo { name: "hostile".into(), version: "0.1.0".into(), wit_version: "0.1.0".into() }
    }

    fn configure(config: String) -> Result<(), PluginError> {
        let v: serde_json::Value = serde_json::from_str(&config)
            .map_err(|e| PluginError { code: "bad-config".into(), message: e.to_string(), record_ids: vec![] })?;
        let mode = v["mode"].as_str().unwrap_or("").to_string();
        let always = v["always"].as_bool().unwrap_or(false);
        if mode == "reject-config" {
            return Err(PluginError { code: "bad-config".into(), message: "mode reject-config refuses every configuration".into(), record_ids: vec![] });
        }
        *MODE.lock().unwrap() = (mode, always);
        Ok(())
    }

    fn clean(samples: Vec<Sample>) -> Result<Vec<Outcome>, PluginError> {
        let (mode, always) = MODE.lock().unwrap().clone();
        let mut out = Vec::new();
        for mut s in samples {
            if mode.starts_with("reserve") && !s.instruction.contains("TRIGGER") {
                let mut spare: Vec<u8> = Vec::new();
                let got = spare.try_reserve(1 << 30).is_ok();
                black_box(got);
            }
            if always || s.instruction.contains("TRIGGER") {
                if mode == "refuse" {
                    return Err(PluginError { code: "bad-input".into(), message: format!("refusing {}", s.id), record_ids: vec![s.id] });
                }
                match misbehave(&mode, &mut s) {
                    Some(o) => out.push(o),
                    None => continue,
                }
            } else {
                out.push(Outcome::Keep(Edit { instruction: None, response: None, notes: vec![] }));
            }
        }
        Ok(out)
    }
}

export!(Component);
