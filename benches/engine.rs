//! Engine speed against llama.cpp on the same GGUF and the same threads, in one run, as
//! ratios: prompt processing (128 and 512 tokens), decode at batch 1, aggregate decode at
//! batch 16 and 64, and single-token A/B scoring of 64 judging prompts.
//!
//! Run: `RUSTFLAGS="-C target-cpu=native" cargo bench --bench engine -- [--model FILE]
//! [--threads 2] [--rounds 3] [--peer PYTHON]`. Rounds alternate kiln and the peer; each row
//! reports each side's best round. The peer is `benches/peer_llama_cpp.py`, run with a Python
//! that has llama-cpp-python (built from source); without one, kiln's figures are printed
//! alone. Models default to the cached gemma3-270m and SmolLM2-135M.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use kiln::model::{BatchOptions, Engine, GenRequest, LoadOptions, SamplingParams, ScoreRequest, Step, Want};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

/// Distinct prompts made of ordinary text, cut to `n` tokens by the caller.
fn text(i: usize) -> String {
    let topics = ["rivers of Europe", "the history of bread", "how bridges stand", "birds that migrate", "the first computers", "tides and the moon", "coffee farming", "glass making"];
    format!(
        "Chapter {i}. This chapter is about {}. It begins with a short account of where the idea came from, who worked on it, \
and why it mattered to the people of the time. Then it turns to the details: the materials, the methods, the mistakes and \
the lessons that were learned along the way. Finally it asks what remains to be discovered, and why the question is still \
worth asking today, in a world that has changed so much since the story began. ",
        topics[i % topics.len()]
    )
    .repeat(4)
}

fn prompt_of(e: &Engine, i: usize, n: usize) -> Vec<u32> {
    let mut ids = e.prompt_ids(&text(i)).unwrap();
    ids.truncate(n);
    ids
}

#[derive(Default, serde::Serialize, serde::Deserialize, Clone, Debug)]
struct Figures {
    prompt_128: f64,
    prompt_512: f64,
    decode_1: f64,
    decode_16: f64,
    decode_64: f64,
    score_64: f64,
}

impl Figures {
    /// Each row's higher figure of two runs.
    fn best(&self, o: &Figures) -> Figures {
        Figures {
            prompt_128: self.prompt_128.max(o.prompt_128),
            prompt_512: self.prompt_512.max(o.prompt_512),
            decode_1: self.decode_1.max(o.decode_1),
            decode_16: self.decode_16.max(o.decode_16),
            decode_64: self.decode_64.max(o.decode_64),
            score_64: self.score_64.max(o.score_64),
        }
    }
}

fn measure(e: &Engine) -> Figures {
    let mut f = Figures::default();
    for (n, slot) in [(128usize, 0), (512, 1)] {
        let ids = prompt_of(e, 0, n);
        let mut best = f64::MAX;
        for _ in 0..3 {
            let mut c = e.model.new_cache();
            let t = Instant::now();
            e.model.forward(&mut [Step { cache: &mut c, tokens: &ids, want: Want::Last }]).unwrap();
            best = best.min(t.elapsed().as_secs_f64());
        }
        let tps = ids.len() as f64 / best;
        if slot == 0 { f.prompt_128 = tps } else { f.prompt_512 = tps }
    }
    for (batch, steps) in [(1usize, 64usize), (16, 32), (64, 16)] {
        // Prefill untimed, then time `steps` decode steps of the whole batch.
        let prompts: Vec<Vec<u32>> = (0..batch).map(|i| prompt_of(e, i, 32)).collect();
        let mut caches: Vec<_> = (0..batch).map(|_| e.model.new_cache()).collect();
        let mut last: Vec<u32> = {
            let mut st: Vec<Step> = caches.iter_mut().zip(&prompts).map(|(c, p)| Step { cache: c, tokens: p, want: Want::Last }).collect();
            e.model.forward(&mut st).unwrap().into_iter().map(|r| argmax(&r[0])).collect()
        };
        let t = Instant::now();
        for _ in 0..steps {
            let feed: Vec<[u32; 1]> = last.iter().map(|&x| [x]).collect();
            let mut st: Vec<Step> = caches.iter_mut().zip(&feed).map(|(c, tok)| Step { cache: c, tokens: tok, want: Want::Last }).collect();
            last = e.model.forward(&mut st).unwrap().into_iter().map(|r| argmax(&r[0])).collect();
        }
        let tps = (batch * steps) as f64 / t.elapsed().as_secs_f64();
        match batch {
            1 => f.decode_1 = tps,
            16 => f.decode_16 = tps,
            _ => f.decode_64 = tps,
        }
    }
    let reqs: Vec<ScoreRequest> = (0..64)
        .map(|i| ScoreRequest {
            id: i.to_string(),
            prompt: format!("{}\nIs the text above well written? Answer A for yes or B for no.\nAnswer:", &text(i)[..300]),
            candidates: vec![" A".into(), " B".into()],
        })
        .collect();
    let t = Instant::now();
    e.score(&reqs, BatchOptions { max_batch: 16 }).unwrap();
    f.score_64 = 64.0 / t.elapsed().as_secs_f64();
    f
}

fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let threads = arg(&args, "--threads").unwrap_or_else(|| "2".into());
    let rounds: usize = arg(&args, "--rounds").map_or(3, |r| r.parse().expect("--rounds takes a number"));
    // Both engines get the same number of threads.
    std::env::set_var("RAYON_NUM_THREADS", &threads);
    let dir = kiln::model::fetch::models_dir(None);
    let models: Vec<PathBuf> = match arg(&args, "--model") {
        Some(m) => vec![PathBuf::from(m)],
        None => kiln::model::fetch::KNOWN.iter().map(|m| kiln::model::fetch::ensure(m, &dir).expect("fetch model")).collect(),
    };
    let peer_py = arg(&args, "--peer").or_else(|| std::env::var("KILN_LLAMA_PYTHON").ok()).unwrap_or_else(|| "/work/venv-llama/bin/python".into());
    println!("kiln engine vs llama.cpp, {threads} threads, best of {rounds} alternating rounds (tokens/s; score = prompts/s)");
    for path in models {
        let e = Engine::load(&path, &LoadOptions { allow_chat_template: true, ..Default::default() }).unwrap();
        // Warm up.
        let _ = e.generate(&[GenRequest { id: String::new(), prompt: "Hello".into(), stop: vec![], max_tokens: 4, seed: 0, stop_after_text: false }], &SamplingParams::default(), BatchOptions::default(), &mut |_, _| {});
        // Rounds alternate between the engines, and each row keeps its best round on each
        // side, so that a slow spell of a shared machine does not land on one side only.
        let mut k = Figures::default();
        let mut peer: Option<Figures> = None;
        for _ in 0..rounds {
            k = k.best(&measure(&e));
            let p = Command::new(&peer_py)
                .arg(root().join("benches/peer_llama_cpp.py"))
                .arg(&path)
                .args(["--threads", &threads])
                .output()
                .ok()
                .filter(|o| o.status.success())
                .and_then(|o| serde_json::from_slice::<Figures>(&o.stdout).ok());
            peer = match (peer, p) {
                (Some(a), Some(b)) => Some(a.best(&b)),
                (a, b) => a.or(b),
            };
        }
        println!("\n{}", path.file_name().unwrap().to_string_lossy());
        println!("{:<12} {:>10} {:>10} {:>7}", "row", "kiln", "llama.cpp", "ratio");
        let rows = [
            ("prompt 128", k.prompt_128, peer.as_ref().map(|p| p.prompt_128)),
            ("prompt 512", k.prompt_512, peer.as_ref().map(|p| p.prompt_512)),
            ("decode b1", k.decode_1, peer.as_ref().map(|p| p.decode_1)),
            ("decode b16", k.decode_16, peer.as_ref().map(|p| p.decode_16)),
            ("decode b64", k.decode_64, peer.as_ref().map(|p| p.decode_64)),
            ("score 64", k.score_64, peer.as_ref().map(|p| p.score_64)),
        ];
        for (name, kv, pv) in rows {
            match pv {
                Some(p) => println!("{name:<12} {kv:>10.1} {p:>10.1} {:>6.2}x", kv / p),
                None => println!("{name:<12} {kv:>10.1} {:>10} {:>7}", "-", "-"),
            }
        }
    }
}
