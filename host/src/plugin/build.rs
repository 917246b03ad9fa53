//! Building guest plugins from source: `cargo build --target wasm32-wasip2` on a plugin
//! workspace, then the components are copied (atomically) into a `dist` folder under their
//! package names. Cargo decides what is stale, so calling this when nothing changed is cheap.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The target guest plugins are built for.
pub const WASM_TARGET: &str = "wasm32-wasip2";

/// Why a plugin build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// cargo could not be started.
    #[error("cannot run cargo to build plugins in \"{dir}\": {source}")]
    Spawn {
        /// The workspace.
        dir: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// cargo failed.
    #[error("building plugins in \"{dir}\" failed (cargo exit status {status}){hint}")]
    Failed {
        /// The workspace.
        dir: PathBuf,
        /// cargo's status.
        status: String,
        /// A hint, e.g. to install the target.
        hint: String,
    },
    /// cargo built no component.
    #[error("building plugins in \"{0}\" produced no .wasm file")]
    NoArtifacts(PathBuf),
    /// Copying into dist failed.
    #[error(transparent)]
    Fs(#[from] crate::sandbox::FsError),
}

/// Make sure the wasm32-wasip2 standard library is installed; add it with rustup if it is not.
fn ensure_wasm_target(dir: &Path) -> Result<(), BuildError> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let libdir = Command::new(&rustc).args(["--print", "target-libdir", "--target", WASM_TARGET]).output();
    if let Ok(out) = &libdir {
        let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && Path::new(&path).is_dir() {
            return Ok(());
        }
    }
    tracing::info!("the {WASM_TARGET} target is not installed; running `rustup target add {WASM_TARGET}`");
    let status = Command::new("rustup").args(["target", "add", WASM_TARGET]).status();
    match status {
        Ok(s) if s.success() => Ok(()),
        _ => Err(BuildError::Failed {
            dir: dir.to_path_buf(),
            status: "not started".into(),
            hint: format!("; the {WASM_TARGET} target is missing and `rustup target add {WASM_TARGET}` did not succeed"),
        }),
    }
}

/// A built component: its package name and where it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    /// Package name (e.g. `cleaner-basic`).
    pub name: String,
    /// Path in the dist folder.
    pub path: PathBuf,
}

/// Build every cdylib/bin of the cargo workspace at `dir` for wasm32-wasip2 (release) and copy
/// the components to `dist` as `<package>.wasm`.
pub fn build_workspace(dir: &Path, dist: &Path) -> Result<Vec<Built>, BuildError> {
    ensure_wasm_target(dir)?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.arg("build")
        .arg("--release")
        .arg("--target")
        .arg(WASM_TARGET)
        .arg("--message-format=json-render-diagnostics")
        .arg("--manifest-path")
        .arg(dir.join("Cargo.toml"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // Host build flags (e.g. -C target-cpu=native) must not leak into the wasm build.
    for var in ["RUSTFLAGS", "CARGO_ENCODED_RUSTFLAGS", "CARGO_BUILD_RUSTFLAGS", "CARGO_BUILD_TARGET"] {
        cmd.env_remove(var);
    }
    let output = cmd.output().map_err(|source| BuildError::Spawn { dir: dir.to_path_buf(), source })?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("target may not be installed") || stderr.contains("can't find crate for `std`") {
            format!("; the {WASM_TARGET} target is missing: run `rustup target add {WASM_TARGET}`")
        } else {
            format!("\n{}", last_lines(&stderr, 30))
        };
        return Err(BuildError::Failed { dir: dir.to_path_buf(), status: output.status.to_string(), hint });
    }
    let mut artifacts: Vec<(String, PathBuf)> = Vec::new();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if msg["reason"] != "compiler-artifact" {
            continue;
        }
        let name = msg["target"]["name"].as_str().unwrap_or_default().replace('_', "-");
        for f in msg["filenames"].as_array().into_iter().flatten().filter_map(|f| f.as_str()) {
            if f.ends_with(".wasm") {
                artifacts.push((name.clone(), PathBuf::from(f)));
            }
        }
    }
    if artifacts.is_empty() {
        return Err(BuildError::NoArtifacts(dir.to_path_buf()));
    }
    let mut built = Vec::new();
    for (name, src) in artifacts {
        let bytes = crate::sandbox::read_file(&src)?;
        let path = put_in_dist(dist, &name, &bytes)?;
        built.push(Built { name, path });
    }
    Ok(built)
}

/// Put a component's bytes into `dist` as `<name>.wasm` (atomically; an identical file is left
/// as it is, so that its time stamp says when it last changed). Returns its path.
pub(crate) fn put_in_dist(dist: &Path, name: &str, bytes: &[u8]) -> Result<PathBuf, crate::sandbox::FsError> {
    let dist_dir = crate::sandbox::RunDir::create(dist)?;
    let file = format!("{name}.wasm");
    if dist_dir.read_optional(&file)?.as_deref() != Some(bytes) {
        dist_dir.write_atomic(&file, bytes)?;
    }
    Ok(dist.join(file))
}

/// The last `n` non-blank lines of a tool's output, for an error message.
pub(crate) fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
