//! Writing plugins: `kiln plugin new` + `kiln plugin build` in Rust, Python and JavaScript,
//! as a researcher would on a fresh machine (the Python and JavaScript toolchains are installed
//! by kiln on first use).

use std::path::Path;
use std::process::Output;

use crate::common::*;

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// `kiln plugin new`, `kiln plugin build`, `kiln plugin check` and `kiln plugin run` on the
/// folder's own sample, for one world and language; returns the built component's output lines.
fn new_build_check_run(work: &Path, name: &str, world: &str, lang: &str, call: &[&str]) -> Vec<serde_json::Value> {
    let o = kiln().args(["plugin", "new", "--world", world, "--lang", lang, name, "--dir"]).arg(work).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let folder = work.join(name);
    for f in ["kiln-plugin.toml", "README.md", "build.sh", "sample.jsonl", "wit/stages.wit"] {
        assert!(folder.join(f).is_file(), "{name}: no {f}");
    }
    let dist = work.join("dist");
    let o = kiln().args(["plugin", "build"]).arg(&folder).arg("--dist").arg(&dist).output().unwrap();
    let out = text(&o);
    assert!(o.status.success(), "{name}: {out}");
    let wasm = dist.join(format!("{name}.wasm"));
    let sha = kiln::provenance::sha256_file(&wasm).unwrap();
    // The printed config table pins what was built.
    assert!(out.contains(&format!("sha256 = \"{sha}\"")) && out.contains(&wasm.display().to_string()), "{out}");
    let o = kiln().args(["plugin", "check"]).arg(&wasm).output().unwrap();
    let line = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(o.status.success() && line.starts_with(world) && line.contains(name) && line.contains("wit 0.1.0"), "{}", text(&o));
    let o = kiln()
        .args(["plugin", "run", "--world", world])
        .arg(&wasm)
        .arg("--input")
        .arg(folder.join("sample.jsonl"))
        .args(call)
        .arg("--quarantine")
        .arg(work.join(format!("{name}.quarantine.jsonl")))
        .output()
        .unwrap();
    assert!(o.status.success(), "{name}: {}", text(&o));
    // The build leaves the folder as it was (no caches, no outputs) apart from a Rust target/.
    let mut names: Vec<String> = std::fs::read_dir(&folder).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.retain(|n| n != "target" && n != "Cargo.lock");
    names.sort();
    let source = match lang {
        "rust" => "src",
        "python" => "app.py",
        _ => "plugin.js",
    };
    let mut expected = vec![".gitignore", "README.md", "build.sh", "kiln-plugin.toml", "sample.jsonl", source, "wit"];
    if lang == "rust" {
        expected.push("Cargo.toml");
    }
    expected.sort();
    assert_eq!(names, expected, "{name}");
    String::from_utf8_lossy(&o.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

#[test]
fn new_cleaners_build_and_check_in_rust_python_and_javascript() {
    let work = tempfile::tempdir().unwrap();
    for lang in ["rust", "python", "js"] {
        let name = format!("my-{lang}-cleaner");
        let out = new_build_check_run(work.path(), &name, "cleaner", lang, &[]);
        // The stub keeps every sample unchanged.
        assert_eq!(out.len(), 3, "{lang}: {out:?}");
        for (line, id) in out.iter().zip(["s-0001", "s-0002", "s-0003"]) {
            assert_eq!((line["id"].as_str(), line["outcome"].as_str()), (Some(id), Some("keep")), "{lang}: {line}");
        }
    }
}

#[test]
fn new_plugins_of_the_other_worlds_build_and_check() {
    // One language per world here (every world is tested in Rust by the reference plugins).
    let work = tempfile::tempdir().unwrap();
    let qc = new_build_check_run(work.path(), "my-qc", "qc-rule", "python", &[]);
    assert_eq!((qc.len(), qc[0]["pass"].as_bool(), qc[0]["metrics"][0]["value"].as_f64()), (1, Some(true), Some(3.0)), "{qc:?}");
    let prompts = new_build_check_run(work.path(), "my-template", "prompt-template", "js", &["--call", "response-prompts"]);
    assert_eq!(prompts.len(), 2, "{prompts:?}");
    assert_eq!(prompts[0]["text"], "Instruction: What is the capital city of Australia?\nResponse:", "{prompts:?}");
    // A critic that asks nothing prints no scoring requests.
    let requests = new_build_check_run(work.path(), "my-critic", "critic", "rust", &[]);
    assert!(requests.is_empty(), "{requests:?}");
}

#[test]
fn new_and_build_refuse_bad_input_with_clear_errors() {
    let work = tempfile::tempdir().unwrap();
    let o = kiln().args(["plugin", "new", "--world", "cleaner", "--lang", "python", "Bad_Name", "--dir"]).arg(work.path()).output().unwrap();
    assert!(!o.status.success() && text(&o).contains("\"Bad_Name\""), "{}", text(&o));
    let o = kiln().args(["plugin", "new", "--world", "sorter", "--lang", "python", "x", "--dir"]).arg(work.path()).output().unwrap();
    assert!(!o.status.success() && text(&o).contains("sorter"), "{}", text(&o));
    // A folder without a manifest or a Cargo.toml.
    let empty = work.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = kiln().args(["plugin", "build"]).arg(&empty).output().unwrap();
    assert!(!o.status.success() && text(&o).contains("kiln-plugin.toml"), "{}", text(&o));
    // A Python plugin with a syntax error: the build fails and says where.
    let o = kiln().args(["plugin", "new", "--world", "cleaner", "--lang", "python", "broken", "--dir"]).arg(work.path()).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    std::fs::write(work.path().join("broken/app.py"), "def clean(:\n").unwrap();
    let o = kiln().args(["plugin", "build"]).arg(work.path().join("broken")).arg("--dist").arg(work.path().join("dist")).output().unwrap();
    let t = text(&o);
    assert!(!o.status.success() && t.contains("broken") && t.contains("componentize-py") && t.contains("SyntaxError"), "{t}");
    assert!(!work.path().join("dist/broken.wasm").exists());
    // A manifest that names another world than the source implements.
    let o = kiln().args(["plugin", "new", "--world", "cleaner", "--lang", "js", "liar", "--dir"]).arg(work.path()).output().unwrap();
    assert!(o.status.success(), "{}", text(&o));
    let manifest = work.path().join("liar/kiln-plugin.toml");
    let m = std::fs::read_to_string(&manifest).unwrap().replace("world = \"cleaner\"", "world = \"critic\"");
    std::fs::write(&manifest, m).unwrap();
    let o = kiln().args(["plugin", "build"]).arg(work.path().join("liar")).arg("--dist").arg(work.path().join("dist")).output().unwrap();
    assert!(!o.status.success() && text(&o).contains("liar"), "{}", text(&o));
}
