//! Diagnostic: kiln's top-5 log-probs vs the llama.cpp expectations (first prompts).
use kiln::model::*;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (name, path) = (&args[1], &args[2]);
    let e = Engine::load(std::path::Path::new(path), &LoadOptions { allow_chat_template: true, ..Default::default() }).unwrap();
    let text = std::fs::read_to_string("tests/fixtures/model/expected.json").unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut all = Vec::new();
    for row in v["models"][name.as_str()].as_array().unwrap() {
        let top = e.top_logprobs(row["prompt"].as_str().unwrap(), 100).unwrap();
        let diffs: Vec<String> = row["top5"].as_array().unwrap().iter().map(|t| {
            let (tok, lp) = (t[0].as_u64().unwrap() as u32, t[1].as_f64().unwrap());
            let ours = top.iter().find(|(x, _)| *x == tok).map(|x| x.1).unwrap_or(f64::NAN);
            all.push((ours - lp).abs());
            format!("{:+.3}", ours - lp)
        }).collect();
        println!("{:?}", diffs);
    }
    all.sort_by(|a, b| a.total_cmp(b));
    println!("mean {:.4} median {:.4} max {:.4}", all.iter().sum::<f64>() / all.len() as f64, all[all.len() / 2], all[all.len() - 1]);
}
