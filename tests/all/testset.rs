//! `kiln testset` on a tiny random model: a full test set with no overlap with its training set,
//! recorded in its manifest; a test set that cannot be filled without overlap is an error, not a
//! shortfall; `kiln train` and `kiln eval` refuse a train/test pair that was never checked or
//! was checked against other data.

use std::path::{Path, PathBuf};

use crate::common::*;
use crate::pilot::{lines, pilot, q, train_config, Fixture, NoQc, EPOCH};

fn testset_config(f: &Fixture, name: &str, dataset: &Path, extra: &str) -> PathBuf {
    let text = format!(
        "run_id = \"testset\"\nartifacts_dir = {}\ndataset = {}\nseed = 99\nper_type = 2\noversample = 3.0\nmax_rounds = 6\n{extra}\n",
        q(&f.artifacts()),
        q(dataset)
    );
    let p = f.path(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn norm(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ").to_lowercase()
}

#[test]
fn test_sets_are_full_apart_from_training_data_and_paired_only_when_checked() {
    let f = Fixture::new();
    let cfg = f.config("pilot.toml", "count = 30\nrun_id = \"data\"\ncritic_filter = false", "").replace_qc_rules();
    assert_eq!(pilot(&cfg, &[], &[]).status.code(), Some(0));
    let data = f.artifacts().join("data");

    // The test set: 2 of each of the 5 types, none of them in the training data.
    let tcfg = testset_config(&f, "testset.toml", &data, "");
    let o = stage("testset", &tcfg, &["--json"], &[], EPOCH);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let run = f.artifacts().join("testset");
    let items = lines(&run.join("testset.jsonl"));
    assert_eq!(items.len(), 10);
    let mut per_type = std::collections::BTreeMap::new();
    for it in &items {
        *per_type.entry(it["instruction_type"].as_str().unwrap().to_string()).or_insert(0) += 1;
    }
    assert!(per_type.values().all(|&n| n == 2) && per_type.len() == 5, "{per_type:?}");
    let training: std::collections::HashSet<String> =
        lines(&data.join("pilot/shard-00000.jsonl")).iter().map(|a| norm(a["sample"]["instruction"].as_str().unwrap())).collect();
    for it in &items {
        assert!(!training.contains(&norm(it["instruction"].as_str().unwrap())), "{it} is in the training data");
    }
    let m = json(&run.join("manifest.json"));
    assert_eq!(m["stage"], "testset");
    assert_eq!(m["dataset"]["run_id"], "data");
    assert_eq!(m["dataset"]["sha256"], json(&data.join("manifest.json"))["files"]["pilot/shard-00000.jsonl"]);
    let c = json(&run.join("contamination.json"));
    assert!(c["checked"].as_u64().unwrap() >= 10, "{c}");
    assert!(c["max_overlap_kept"].as_f64().unwrap() < 0.5, "{c}");
    // Again: the rounds are kept, nothing is generated, the same items come out.
    let before = std::fs::read(run.join("testset.jsonl")).unwrap();
    let o = stage("testset", &tcfg, &[], &[], EPOCH);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert_eq!(std::fs::read(run.join("testset.jsonl")).unwrap(), before);

    // The dataset's own seed, and a check so strict that nothing passes: errors, no manifest.
    let same = testset_config(&f, "same.toml", &data, "").to_owned();
    std::fs::write(&same, std::fs::read_to_string(&same).unwrap().replace("seed = 99", "seed = 7").replace("\"testset\"", "\"same\"")).unwrap();
    let o = stage("testset", &same, &[], &[], EPOCH);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("seed of its own"), "{}", text(&o));
    let strict = testset_config(&f, "strict.toml", &data, "[contamination]\nngram = 1\nmax_overlap = 0.01\n");
    std::fs::write(&strict, std::fs::read_to_string(&strict).unwrap().replace("max_rounds = 6", "max_rounds = 2")).unwrap();
    let o = stage("testset", &strict, &["--run-id", "strict"], &[], EPOCH);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot be filled after 2 rounds") && err.contains("ngram-overlap"), "{err}");
    assert!(!f.artifacts().join("strict/manifest.json").exists());
    assert!(!json(&f.artifacts().join("strict/contamination.json"))["refused"].as_array().unwrap().is_empty());

    // Training paired with the checked test set: recorded.
    let train = train_config(&f, "train.toml", &data, 1);
    let o = stage("train", &train, &["--test-set", &run.display().to_string()], &[], EPOCH);
    assert!(matches!(o.status.code(), Some(0) | Some(2)), "{}", text(&o));
    let tm = json(&f.artifacts().join("train/manifest.json"));
    assert_eq!(tm["test_set"]["sha256"], m["files"]["testset.jsonl"]);

    // A test set checked against other data is refused by train and by eval; so is a plain file.
    let other = f.config("other.toml", "count = 12\nrun_id = \"other\"\nseed = 5\ncritic_filter = false", "").replace_qc_rules();
    assert_eq!(pilot(&other, &[], &[]).status.code(), Some(0));
    let ocfg = testset_config(&f, "other-test.toml", &f.artifacts().join("other"), "");
    let o = stage("testset", &ocfg, &["--run-id", "other-test"], &[], EPOCH);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    let other_test = f.artifacts().join("other-test");
    let o = stage("train", &train, &["--run-id", "mispaired", "--test-set", &other_test.display().to_string()], &[], EPOCH);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(String::from_utf8_lossy(&o.stderr).contains("checked against other"), "{}", text(&o));

    let eval_cfg = |name: &str, test_set: &Path| {
        let text = format!(
            r#"run_id = "{name}"
artifacts_dir = {art}
seed = 3
test_set = {test}
batch_size = 4
alpha = 0.05

[model]
path = {model}

[base.template]
path = {template}

[base.template.config]
response_preamble = "Answer:"
response_max_tokens = 6

[tuned]
adapter = {adapter}

[tuned.template]
path = {template}

[tuned.template.config]
response_preamble = "Answer:"
response_max_tokens = 6

[critic]
path = {critic}

[critic.config]
aspects = ["response"]
response_prompt = "Task: {{instruction}}\nResponse: {{response}}\n{{choices}} Answer:"
"#,
            art = q(&f.artifacts()),
            test = q(test_set),
            model = q(&f.path("tiny-llama.gguf")),
            adapter = q(&f.artifacts().join("train/adapter")),
            template = q(&reference("template-fewshot")),
            critic = q(&reference("critic-ab")),
        );
        let p = f.path(&format!("{name}.toml"));
        std::fs::write(&p, text).unwrap();
        p
    };
    let plain = f.path("plain.jsonl");
    std::fs::copy(run.join("testset.jsonl"), &plain).unwrap();
    for (name, ts, want) in [("plain", plain.clone(), "never checked"), ("mispaired-eval", other_test.clone(), "checked against other")] {
        let o = stage("eval", &eval_cfg(name, &ts), &[], &[], EPOCH);
        assert_eq!(o.status.code(), Some(1), "{}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want) && err.contains("tuned arm's adapter was trained on data"), "{name}: {err}");
    }
    let o = stage("eval", &eval_cfg("paired", &run), &[], &[], EPOCH);
    assert!(matches!(o.status.code(), Some(0) | Some(2)), "{}", text(&o));
    let em = json(&f.artifacts().join("paired/manifest.json"));
    assert_eq!(em["test_set"]["records"], 10);
}
