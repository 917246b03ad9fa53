//! `kiln plugin new`: a ready-to-build plugin folder for one world in Rust, Python or
//! JavaScript, with the world's functions stubbed to keep everything.

use std::path::{Path, PathBuf};

use super::source::{check_name, Lang, SourceError, MANIFEST, WIT_SOURCE};
use super::world::{World, WIT_VERSION};

/// The source stub of a world in a language.
fn stub(world: World, lang: Lang) -> &'static str {
    use {Lang::*, World::*};
    match (lang, world) {
        (Rust, Cleaner) => include_str!("templates/rust-cleaner.rs"),
        (Rust, QcRule) => include_str!("templates/rust-qc-rule.rs"),
        (Rust, Critic) => include_str!("templates/rust-critic.rs"),
        (Rust, PromptTemplate) => include_str!("templates/rust-prompt-template.rs"),
        (Python, Cleaner) => include_str!("templates/python-cleaner.py"),
        (Python, QcRule) => include_str!("templates/python-qc-rule.py"),
        (Python, Critic) => include_str!("templates/python-critic.py"),
        (Python, PromptTemplate) => include_str!("templates/python-prompt-template.py"),
        (Js, Cleaner) => include_str!("templates/js-cleaner.js"),
        (Js, QcRule) => include_str!("templates/js-qc-rule.js"),
        (Js, Critic) => include_str!("templates/js-critic.js"),
        (Js, PromptTemplate) => include_str!("templates/js-prompt-template.js"),
    }
}

/// The files of a new plugin folder (path inside the folder, contents, executable).
pub fn files(name: &str, world: World, lang: Lang) -> Vec<(PathBuf, String, bool)> {
    // A stub is the world's functions around the language's shared parts (imports, info,
    // configure), then the plugin's name.
    let (prelude, methods) = match lang {
        Lang::Rust => ("", include_str!("templates/rust-methods.rs")),
        Lang::Python => (include_str!("templates/python-prelude.py"), include_str!("templates/python-methods.py")),
        Lang::Js => (include_str!("templates/js-prelude.js"), include_str!("templates/js-methods.js")),
    };
    let fill = |t: &str| {
        t.replace("{{prelude}}", prelude).replace("{{methods}}", methods).replace("{{name}}", name).replace("{{wit_version}}", WIT_VERSION)
    };
    let source = match lang {
        Lang::Rust => "src/lib.rs",
        Lang::Python => "app.py",
        Lang::Js => "plugin.js",
    };
    let mut out = vec![(PathBuf::from(source), fill(stub(world, lang)), false)];
    if lang == Lang::Rust {
        out.push((PathBuf::from("Cargo.toml"), fill(include_str!("templates/rust-Cargo.toml")), false));
    }
    let entry = match lang {
        Lang::Rust => String::new(),
        _ => format!("entry = \"{}\"\n", lang.default_entry()),
    };
    out.push((
        PathBuf::from(MANIFEST),
        format!("# What `kiln plugin build` needs to know about this folder.\nname = \"{name}\"\nworld = \"{}\"\nlang = \"{lang}\"\n{entry}", world.name()),
        false,
    ));
    out.push((PathBuf::from("wit/stages.wit"), WIT_SOURCE.to_string(), false));
    let (input, try_flags) = match world {
        World::PromptTemplate => (include_str!("templates/requests.jsonl"), " --call response-prompts"),
        _ => (include_str!("templates/samples.jsonl"), ""),
    };
    out.push((PathBuf::from("sample.jsonl"), input.to_string(), false));
    out.push((
        PathBuf::from("build.sh"),
        format!(
            "#!/bin/sh\n# Builds this plugin into plugins/dist/{name}.wasm (under the current directory, or --dist DIR)\n# and prints its sha256 and the config table that loads it.\nset -e\nexec kiln plugin build \"$(dirname \"$0\")\" \"$@\"\n"
        ),
        true,
    ));
    let lang_name = match lang {
        Lang::Rust => "Rust",
        Lang::Python => "Python",
        Lang::Js => "JavaScript",
    };
    out.push((
        PathBuf::from("README.md"),
        format!(
            "# {name}\nA kiln `{world}` plugin in {lang_name}, made by `kiln plugin new`: edit `{source}`; the contract is `wit/stages.wit`.\n\
             Build: `./build.sh` (or `kiln plugin build <this folder>`) writes `plugins/dist/{name}.wasm` and prints its sha256 and config table.\n\
             Try it: `kiln plugin run --world {world} plugins/dist/{name}.wasm --input <this folder>/sample.jsonl{try_flags}`.\n\
             Check it: `kiln plugin check plugins/dist/{name}.wasm`; the plugin author's guide is `plugins/README.md` in kiln.\n",
            world = world.name()
        ),
        false,
    ));
    let ignore = match lang {
        Lang::Rust => "target/\n",
        Lang::Python => "__pycache__/\n",
        Lang::Js => "node_modules/\n",
    };
    out.push((PathBuf::from(".gitignore"), ignore.to_string(), false));
    out
}

/// Write a new plugin folder at `dir` (whose last component is the plugin's name unless `name`
/// is given). Nothing is overwritten; the folder appears whole or not at all.
pub fn new_plugin(dir: &Path, name: &str, world: World, lang: Lang) -> Result<Vec<PathBuf>, SourceError> {
    check_name(name).map_err(SourceError::Invalid)?;
    if dir.exists() {
        return Err(SourceError::Exists(dir.to_path_buf()));
    }
    let parent = dir.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|source| SourceError::Io { path: parent.to_path_buf(), source })?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{name}.new-"))
        .tempdir_in(parent)
        .map_err(|source| SourceError::Io { path: parent.to_path_buf(), source })?;
    let mut written = Vec::new();
    for (rel, text, executable) in files(name, world, lang) {
        let path = staging.path().join(&rel);
        let io = |source| SourceError::Io { path: path.clone(), source };
        std::fs::create_dir_all(path.parent().expect("a file in the folder")).map_err(io)?;
        std::fs::write(&path, text).map_err(io)?;
        #[cfg(unix)]
        if executable {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).map_err(io)?;
        }
        written.push(dir.join(rel));
    }
    let staged = staging.keep();
    if let Err(source) = std::fs::rename(&staged, dir) {
        let _ = std::fs::remove_dir_all(&staged);
        return Err(if dir.exists() { SourceError::Exists(dir.to_path_buf()) } else { SourceError::Io { path: dir.to_path_buf(), source } });
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_world_and_language_has_a_stub_that_names_the_plugin() {
        for world in World::ALL {
            for lang in [Lang::Rust, Lang::Python, Lang::Js] {
                let files = files("my-plugin", world, lang);
                let (_, source, _) = &files[0];
                assert!(source.contains("\"my-plugin\"") && !source.contains("{{"), "{world:?} {lang:?}");
                let manifest = files.iter().find(|(p, _, _)| p == Path::new(MANIFEST)).unwrap();
                let m: super::super::source::Manifest = toml::from_str(&manifest.1).unwrap();
                assert_eq!((m.world, m.lang), (world, lang));
                let readme = &files.iter().find(|(p, _, _)| p == Path::new("README.md")).unwrap().1;
                assert_eq!(readme.lines().count(), 5, "{readme}");
            }
        }
    }

    #[test]
    fn refuses_to_overwrite_and_bad_names() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("p");
        let written = new_plugin(&dir, "p", World::Cleaner, Lang::Python).unwrap();
        assert!(written.iter().all(|f| f.is_file()), "{written:?}");
        assert!(super::super::source::Manifest::read(&dir).is_ok());
        let e = new_plugin(&dir, "p", World::Cleaner, Lang::Python).unwrap_err().to_string();
        assert!(e.contains("already exists"), "{e}");
        let e = new_plugin(&d.path().join("q"), "Q_", World::Cleaner, Lang::Js).unwrap_err().to_string();
        assert!(e.contains("\"Q_\""), "{e}");
        assert!(!d.path().join("q").exists());
        // No staging folder is left behind.
        let names: Vec<_> = std::fs::read_dir(d.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, ["p"]);
    }
}
