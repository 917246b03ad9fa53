//! Plugins from source in Rust, Python or JavaScript: the `kiln-plugin.toml` manifest of a
//! plugin folder, the pinned component toolchains (componentize-py from PyPI and
//! componentize-js from npm, installed into kiln's cache on first use), and the build of one
//! plugin folder into a component in a dist folder.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::{Deserialize, Serialize};

use super::build::{build_workspace, last_lines, put_in_dist, BuildError};
use super::world::World;
use crate::sandbox::FsError;

/// The manifest file of a plugin folder.
pub const MANIFEST: &str = "kiln-plugin.toml";
/// The WIT package this kiln was built with (what a plugin folder without its own `wit/` is
/// built against).
pub const WIT_SOURCE: &str = include_str!("../../../wit/stages.wit");
/// The componentize-py release Python plugins are built with.
pub const COMPONENTIZE_PY_VERSION: &str = "0.25.1";
/// The componentize-js release JavaScript plugins are built with.
pub const COMPONENTIZE_JS_VERSION: &str = "0.23.0";

/// A plugin's source language.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Lang {
    /// Rust with wit-bindgen, built by cargo for wasm32-wasip2.
    Rust,
    /// Python, built by componentize-py.
    Python,
    /// JavaScript, built by componentize-js.
    Js,
}

impl Lang {
    /// The name used in manifests and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Python => "python",
            Lang::Js => "js",
        }
    }

    /// The entry a manifest gets when it names none.
    pub fn default_entry(self) -> &'static str {
        match self {
            Lang::Rust => "src/lib.rs",
            Lang::Python => "app",
            Lang::Js => "plugin.js",
        }
    }
}

impl fmt::Display for Lang {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// `kiln-plugin.toml`: what a plugin folder holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The component's name: `<dist>/<name>.wasm`.
    pub name: String,
    /// The world it implements.
    pub world: World,
    /// Its source language.
    pub lang: Lang,
    /// Python: the module componentize-py builds (default `app`, the file `app.py`); JS: the
    /// module file (default `plugin.js`); Rust: ignored (the crate is the folder).
    #[serde(default)]
    pub entry: Option<String>,
}

impl Manifest {
    /// The entry, or the language's default.
    pub fn entry(&self) -> &str {
        self.entry.as_deref().unwrap_or(self.lang.default_entry())
    }

    /// The file that holds the entry, relative to the folder.
    pub fn entry_file(&self) -> PathBuf {
        match self.lang {
            Lang::Python => PathBuf::from(format!("{}.py", self.entry().replace('.', "/"))),
            Lang::Rust => PathBuf::from("Cargo.toml"),
            Lang::Js => PathBuf::from(self.entry()),
        }
    }

    /// Read and check `<dir>/kiln-plugin.toml`.
    pub fn read(dir: &Path) -> Result<Manifest, SourceError> {
        let path = dir.join(MANIFEST);
        let bad = |detail: String| SourceError::Manifest { path: path.clone(), detail };
        let text = std::fs::read_to_string(&path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        let m: Manifest = toml::from_str(&text).map_err(|e| bad(e.to_string().trim().to_string()))?;
        check_name(&m.name).map_err(bad)?;
        if let Some(e) = &m.entry {
            if e.is_empty() || Path::new(e).is_absolute() || e.split(['/', '\\']).any(|c| c == "..") {
                return Err(bad(format!("entry \"{e}\" must be a relative path inside the plugin folder")));
            }
        }
        let entry = dir.join(m.entry_file());
        if !entry.is_file() {
            return Err(bad(format!("the {} entry \"{}\" has no file {}", m.lang, m.entry(), entry.display())));
        }
        Ok(m)
    }
}

/// A plugin name: lower-case letters, digits and dashes, starting with a letter (it names the
/// component file, a cargo package and what kiln logs).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "plugin name \"{name}\" must be 1-64 lower-case letters, digits and dashes, start with a letter and not end with a dash"
        ))
    }
}

/// Why a plugin folder could not be made or built.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The manifest is missing or wrong.
    #[error("plugin manifest \"{path}\": {detail}")]
    Manifest {
        /// The manifest file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// A component toolchain is missing and could not be installed.
    #[error("{tool}: {detail}")]
    Tool {
        /// The tool.
        tool: String,
        /// What happened.
        detail: String,
    },
    /// The toolchain ran and failed.
    #[error("building the {lang} plugin in \"{dir}\" failed ({tool}, {status}):\n{output}")]
    Build {
        /// The plugin folder.
        dir: PathBuf,
        /// The language.
        lang: Lang,
        /// The tool that failed.
        tool: String,
        /// Its exit status.
        status: String,
        /// The end of what it printed.
        output: String,
    },
    /// The toolchain succeeded but wrote no component.
    #[error("building the plugin in \"{dir}\" produced no component named {name}")]
    NoOutput {
        /// The plugin folder.
        dir: PathBuf,
        /// The component name looked for.
        name: String,
    },
    /// The folder `kiln plugin new` would write exists.
    #[error("\"{0}\" already exists: kiln plugin new writes a new folder and overwrites nothing")]
    Exists(PathBuf),
    /// A bad argument (name, ...).
    #[error("{0}")]
    Invalid(String),
    /// A cargo build failed.
    #[error(transparent)]
    Cargo(#[from] BuildError),
    /// Reading or writing files failed.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// Another I/O failure, naming the path.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SourceError + '_ {
    move |source| SourceError::Io { path: path.to_path_buf(), source }
}

/// The last `n` lines of a process's stderr and stdout.
fn tail(out: &Output, n: usize) -> String {
    last_lines(&format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout)), n)
}

/// A component toolchain kiln installs on first use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    /// componentize-py (PyPI), in a venv.
    ComponentizePy,
    /// componentize-js (npm), in a node_modules prefix.
    ComponentizeJs,
}

impl Tool {
    /// The tool's command name.
    pub fn name(self) -> &'static str {
        match self {
            Tool::ComponentizePy => "componentize-py",
            Tool::ComponentizeJs => "componentize-js",
        }
    }

    fn version(self) -> &'static str {
        match self {
            Tool::ComponentizePy => COMPONENTIZE_PY_VERSION,
            Tool::ComponentizeJs => COMPONENTIZE_JS_VERSION,
        }
    }

    /// The environment variable that names an installed executable to use instead.
    pub fn env_var(self) -> &'static str {
        match self {
            Tool::ComponentizePy => "KILN_COMPONENTIZE_PY",
            Tool::ComponentizeJs => "KILN_COMPONENTIZE_JS",
        }
    }

    /// Where kiln installs it: `<plugin tools>/<name>-<version>`.
    pub fn home(self) -> PathBuf {
        tools_dir().join(format!("{}-{}", self.name(), self.version()))
    }

    fn executable(self, home: &Path) -> PathBuf {
        match self {
            Tool::ComponentizePy => home.join("bin").join("componentize-py"),
            Tool::ComponentizeJs => home.join("node_modules").join(".bin").join("componentize-js"),
        }
    }

    /// The executable: `$KILN_COMPONENTIZE_PY` / `$KILN_COMPONENTIZE_JS` if set, else kiln's
    /// pinned install, made now if missing (pip or npm, under a lock so that parallel builds
    /// install once).
    pub fn locate(self) -> Result<PathBuf, SourceError> {
        if let Some(p) = std::env::var_os(self.env_var()).filter(|p| !p.is_empty()) {
            let p = PathBuf::from(p);
            if !p.is_file() {
                return Err(SourceError::Tool {
                    tool: self.name().into(),
                    detail: format!("{} names \"{}\", which is not a file", self.env_var(), p.display()),
                });
            }
            return Ok(p);
        }
        let home = self.home();
        let marker = home.join(".installed");
        if !marker.is_file() {
            let dir = tools_dir();
            std::fs::create_dir_all(&dir).map_err(io(&dir))?;
            let lock_path = dir.join(".lock");
            let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(io(&lock_path))?;
            lock.lock().map_err(io(&lock_path))?;
            if !marker.is_file() {
                self.install(&home)?;
                std::fs::write(&marker, format!("{} {}\n", self.name(), self.version())).map_err(io(&marker))?;
            }
        }
        Ok(self.executable(&home))
    }

    fn install(self, home: &Path) -> Result<(), SourceError> {
        if home.exists() {
            // A partial install from an interrupted run.
            std::fs::remove_dir_all(home).map_err(io(home))?;
        }
        let fail = |detail: String| SourceError::Tool { tool: self.name().into(), detail };
        let run = |cmd: &mut Command, what: &str| -> Result<(), SourceError> {
            let out = cmd.stdin(Stdio::null()).output().map_err(|e| fail(format!("cannot run {what}: {e}")))?;
            if out.status.success() {
                Ok(())
            } else {
                Err(fail(format!("`{what}` failed ({}):\n{}", out.status, tail(&out, 20))))
            }
        };
        eprintln!("kiln: installing {} {} into {} (first use)", self.name(), self.version(), home.display());
        match self {
            Tool::ComponentizePy => {
                let python = std::env::var_os("KILN_PYTHON").unwrap_or_else(|| "python3".into());
                run(Command::new(&python).arg("-m").arg("venv").arg(home), "python3 -m venv (needs Python 3 with venv)")?;
                let pip = home.join("bin").join("pip");
                let spec = format!("componentize-py=={}", self.version());
                run(
                    Command::new(pip).args(["install", "--quiet", "--disable-pip-version-check", &spec]),
                    &format!("pip install {spec}"),
                )?;
            }
            Tool::ComponentizeJs => {
                std::fs::create_dir_all(home).map_err(io(home))?;
                let spec = format!("@bytecodealliance/componentize-js@{}", self.version());
                run(
                    Command::new("npm").arg("install").arg("--prefix").arg(home).args([
                        "--no-audit",
                        "--no-fund",
                        "--loglevel=error",
                        &spec,
                    ]),
                    &format!("npm install {spec} (needs Node.js 18 or later with npm)"),
                )?;
            }
        }
        let exe = self.executable(home);
        if !exe.is_file() {
            return Err(fail(format!("the install finished but {} is missing", exe.display())));
        }
        Ok(())
    }
}

/// Where kiln keeps plugin toolchains: `$KILN_PLUGIN_TOOLS`, else `<kiln cache>/plugin-tools`.
pub fn tools_dir() -> PathBuf {
    match std::env::var_os("KILN_PLUGIN_TOOLS").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => crate::sandbox::cache_dir().join("plugin-tools"),
    }
}

/// A component built from a plugin folder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltPlugin {
    /// The folder's manifest.
    pub manifest: Manifest,
    /// The component, `<dist>/<name>.wasm`.
    pub path: PathBuf,
}

/// Build the plugin folder `dir` (with a `kiln-plugin.toml`) into `<dist>/<name>.wasm`
/// (written atomically; the folder is left as it was). It is built against the folder's own
/// `wit/` if it has one, else against the WIT package of this kiln.
pub fn build_plugin(dir: &Path, dist: &Path) -> Result<BuiltPlugin, SourceError> {
    let manifest = Manifest::read(dir)?;
    let scratch = tempfile::tempdir().map_err(io(&std::env::temp_dir()))?;
    let wit = if dir.join("wit").is_dir() {
        dir.join("wit")
    } else {
        let w = scratch.path().join("wit");
        std::fs::create_dir_all(&w).map_err(io(&w))?;
        std::fs::write(w.join("stages.wit"), WIT_SOURCE).map_err(io(&w))?;
        w
    };
    let wit = std::path::absolute(&wit).map_err(io(&wit))?;
    let out = scratch.path().join(format!("{}.wasm", manifest.name));
    let bytes = match manifest.lang {
        Lang::Rust => {
            let built = build_workspace(dir, scratch.path())?;
            let b = built
                .into_iter()
                .find(|b| b.name == manifest.name)
                .ok_or_else(|| SourceError::NoOutput { dir: dir.to_path_buf(), name: manifest.name.clone() })?;
            crate::sandbox::read_file(&b.path)?
        }
        Lang::Python | Lang::Js => {
            let tool = match manifest.lang {
                Lang::Python => Tool::ComponentizePy,
                _ => Tool::ComponentizeJs,
            };
            let exe = tool.locate()?;
            let mut cmd = Command::new(&exe);
            match manifest.lang {
                Lang::Python => {
                    cmd.arg("-d").arg(&wit).args(["-w", manifest.world.name(), "componentize", manifest.entry(), "-p", "."]);
                    cmd.arg("-o").arg(&out);
                }
                _ => {
                    cmd.arg(manifest.entry()).arg("--wit").arg(&wit).args(["-n", manifest.world.name()]);
                    // No HTTP: kiln grants a plugin no network.
                    cmd.args(["-d", "http", "fetch-event", "-o"]).arg(&out);
                }
            }
            // componentize-py imports the plugin with the build machine's Python, which leaves
            // bytecode caches beside the sources: remove those the build made.
            let caches = |d: &Path| -> Vec<PathBuf> {
                if manifest.lang != Lang::Python {
                    return Vec::new();
                }
                walk_dirs(d).into_iter().filter(|p| p.file_name().is_some_and(|n| n == "__pycache__")).collect()
            };
            let before = caches(dir);
            // The toolchains are Rust programs: their backtraces would bury the plugin's error.
            cmd.env("RUST_BACKTRACE", "0").env("RUST_LIB_BACKTRACE", "0");
            let output = cmd.current_dir(dir).stdin(Stdio::null()).output().map_err(|e| SourceError::Tool {
                tool: tool.name().into(),
                detail: format!("cannot run {}: {e}", exe.display()),
            })?;
            for made in caches(dir).into_iter().filter(|c| !before.contains(c)) {
                let _ = std::fs::remove_dir_all(made);
            }
            if !output.status.success() {
                return Err(SourceError::Build {
                    dir: dir.to_path_buf(),
                    lang: manifest.lang,
                    tool: tool.name().into(),
                    status: output.status.to_string(),
                    output: tail(&output, 30),
                });
            }
            if !out.is_file() {
                return Err(SourceError::NoOutput { dir: dir.to_path_buf(), name: manifest.name.clone() });
            }
            crate::sandbox::read_file(&out)?
        }
    };
    let path = put_in_dist(dist, &manifest.name, &bytes)?;
    Ok(BuiltPlugin { path, manifest })
}

/// Every folder under `dir` (itself included), skipping what cannot be read.
fn walk_dirs(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < out.len() {
        if let Ok(entries) = std::fs::read_dir(&out[i]) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    out.push(e.path());
                }
            }
        }
        i += 1;
    }
    out
}

/// The config table that loads a component of `world` from `path` pinned to `sha256`.
pub fn config_snippet(world: World, path: &Path, sha256: &str) -> String {
    let table = match world {
        World::PromptTemplate => "[plugins.template]",
        World::Cleaner => "[[plugins.cleaners]]",
        World::QcRule => "[[plugins.qc_rules]]",
        World::Critic => "[[plugins.critics]]",
    };
    let path = path.to_string_lossy().replace('\\', "/");
    format!("{table}\npath = \"{path}\"\nsha256 = \"{sha256}\"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "cleaner-py", "qc2", "x-1-y"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Cleaner", "1abc", "a_b", "a-", "a b", "ä", &"a".repeat(65)] {
            let e = check_name(bad).unwrap_err();
            assert!(e.contains(&format!("\"{bad}\"")), "{e}");
        }
    }

    #[test]
    fn manifests_are_strict() {
        let d = tempfile::tempdir().unwrap();
        let write = |t: &str| std::fs::write(d.path().join(MANIFEST), t).unwrap();
        let err = |t: &str| {
            write(t);
            Manifest::read(d.path()).unwrap_err().to_string()
        };
        assert!(err("name = \"x\"\nworld = \"cleaner\"\nlang = \"cobol\"\n").contains("cobol"));
        assert!(err("name = \"x\"\nworld = \"sorter\"\nlang = \"python\"\n").contains("sorter"));
        assert!(err("name = \"x\"\nworld = \"cleaner\"\nlang = \"python\"\nextra = 1\n").contains("extra"));
        assert!(err("name = \"X\"\nworld = \"cleaner\"\nlang = \"python\"\n").contains("\"X\""));
        assert!(err("name = \"x\"\nworld = \"cleaner\"\nlang = \"python\"\nentry = \"../up\"\n").contains("../up"));
        let e = err("name = \"x\"\nworld = \"cleaner\"\nlang = \"python\"\n");
        assert!(e.contains("app.py") && e.contains(MANIFEST), "{e}");
        std::fs::write(d.path().join("app.py"), "").unwrap();
        let m = Manifest::read(d.path()).unwrap();
        assert_eq!((m.name.as_str(), m.world, m.lang, m.entry()), ("x", World::Cleaner, Lang::Python, "app"));
    }

    #[test]
    fn snippets_name_the_world_table() {
        let s = config_snippet(World::QcRule, Path::new("plugins/dist/q.wasm"), "ab12");
        assert_eq!(s, "[[plugins.qc_rules]]\npath = \"plugins/dist/q.wasm\"\nsha256 = \"ab12\"\n");
        let parsed: toml::Table = toml::from_str(&config_snippet(World::PromptTemplate, Path::new("t.wasm"), "00")).unwrap();
        assert_eq!(parsed["plugins"]["template"]["sha256"].as_str(), Some("00"));
    }
}
