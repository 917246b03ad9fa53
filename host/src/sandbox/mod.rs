//! The only place in kiln with ambient filesystem authority.
//!
//! Everything else writes through a [`RunDir`], a cap-std directory handle that cannot reach
//! outside itself, and every write is atomic: the bytes go to a temporary file in the same
//! directory, are synced, and the temporary file is renamed over the target, so a kill at any
//! moment leaves either the old file or the new one, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

use cap_std::ambient_authority;
use cap_std::fs::Dir;

/// A filesystem error that names the path it happened at.
#[derive(Debug, thiserror::Error)]
#[error("{action} \"{path}\": {source}")]
pub struct FsError {
    /// What kiln was doing ("create directory", "write", ...).
    pub action: &'static str,
    /// The path, as the user would recognise it.
    pub path: PathBuf,
    /// The underlying error.
    #[source]
    pub source: std::io::Error,
}

fn fs_err(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> FsError {
    let path = path.into();
    move |source| FsError { action, path, source }
}

/// A directory kiln writes into (a run directory, a cache), opened once with ambient authority
/// and used through capabilities afterwards.
#[derive(Debug)]
pub struct RunDir {
    dir: Dir,
    path: PathBuf,
    /// Held while this process owns the directory (see [`RunDir::lock`]).
    lock: Option<std::fs::File>,
}

/// The lock file of a run directory.
pub const LOCK_FILE: &str = ".lock";

impl RunDir {
    /// Open (creating it and its parents if needed) a directory.
    pub fn create(path: &Path) -> Result<Self, FsError> {
        std::fs::create_dir_all(path).map_err(fs_err("create directory", path))?;
        let dir = Dir::open_ambient_dir(path, ambient_authority()).map_err(fs_err("open directory", path))?;
        Ok(RunDir { dir, path: path.to_path_buf(), lock: None })
    }

    /// Take the directory for this process: an exclusive advisory lock on its `.lock` file,
    /// held until the `RunDir` is dropped (the operating system releases it when the process
    /// dies, however it dies). A second process gets an error naming the directory at once.
    pub fn lock(&mut self) -> Result<(), FsError> {
        if self.lock.is_some() {
            return Ok(());
        }
        let path = self.path.join(LOCK_FILE);
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(fs_err("open lock file", &path))?;
        match f.try_lock() {
            Ok(()) => {
                self.lock = Some(f);
                Ok(())
            }
            Err(std::fs::TryLockError::WouldBlock) => Err(FsError {
                action: "lock",
                path,
                source: std::io::Error::other(format!(
                    "another kiln process is working in \"{}\"; wait for it to finish, or give this run another run_id",
                    self.path.display()
                )),
            }),
            Err(std::fs::TryLockError::Error(e)) => Err(fs_err("lock", &path)(e)),
        }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The full path of a file inside the directory.
    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    /// Atomically write `bytes` to `rel` (a relative path inside the directory; parent
    /// directories are created).
    pub fn write_atomic(&self, rel: &str, bytes: &[u8]) -> Result<(), FsError> {
        let full = self.join(rel);
        let rel_path = Path::new(rel);
        if let Some(parent) = rel_path.parent().filter(|p| !p.as_os_str().is_empty()) {
            self.dir.create_dir_all(parent).map_err(fs_err("create directory", self.path.join(parent)))?;
        }
        let file_name = rel_path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // Unique per process and per write, so concurrent writers of one file never share a
        // temporary file; the last rename wins and every reader sees a whole file.
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = rel_path.with_file_name(format!(".{file_name}.tmp-{}-{n}", std::process::id()));
        let result = (|| {
            let mut f = self.dir.create(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            self.dir.rename(&tmp, &self.dir, rel_path)
        })();
        if result.is_err() {
            let _ = self.dir.remove_file(&tmp);
        }
        result.map_err(fs_err("write", full))
    }

    /// Atomically create `rel` from whatever `fill` writes (streamed, for large files); on an
    /// error the temporary file is removed and `rel` is untouched.
    pub fn write_atomic_with<E: From<FsError>>(
        &self,
        rel: &str,
        fill: impl FnOnce(&mut dyn Write) -> Result<(), E>,
    ) -> Result<(), E> {
        let full = self.join(rel);
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = format!(".{rel}.partial-{}-{n}", std::process::id());
        let mut f = self.dir.create(&tmp).map_err(fs_err("create", self.join(&tmp)))?;
        let filled = {
            let mut w = std::io::BufWriter::with_capacity(1 << 20, &mut f);
            let r = fill(&mut w);
            match r {
                Ok(()) => w.flush().map_err(|e| E::from(fs_err("write", full.clone())(e))),
                Err(e) => Err(e),
            }
        };
        let done = filled.and_then(|()| {
            f.sync_all().map_err(|e| E::from(fs_err("write", full.clone())(e)))?;
            self.dir.rename(&tmp, &self.dir, rel).map_err(|e| E::from(fs_err("rename into place", full.clone())(e)))
        });
        if done.is_err() {
            let _ = self.dir.remove_file(&tmp);
        }
        done
    }

    /// Read a file inside the directory, if it exists.
    pub fn read_optional(&self, rel: &str) -> Result<Option<Vec<u8>>, FsError> {
        match self.dir.read(rel) {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(fs_err("read", self.join(rel))(e)),
        }
    }
}

/// Atomically write a file anywhere (its directory is opened with ambient authority).
pub fn write_file_atomic(path: &Path, bytes: &[u8]) -> Result<(), FsError> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| FsError {
            action: "write",
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
        })?
        .to_string_lossy()
        .into_owned();
    RunDir::create(parent)?.write_atomic(&name, bytes)
}

/// Read a whole file, with an error that names it.
pub fn read_file(path: &Path) -> Result<Vec<u8>, FsError> {
    std::fs::read(path).map_err(fs_err("read", path))
}

/// kiln's cache directory: `$KILN_CACHE_DIR`, else `$XDG_CACHE_HOME/kiln`, else
/// `$HOME/.cache/kiln`, else `.kiln-cache` in the current directory.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("KILN_CACHE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d);
    }
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("kiln");
    }
    if let Some(h) = std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(h).join(".cache").join("kiln");
    }
    PathBuf::from(".kiln-cache")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let tmp = tempfile::tempdir().unwrap();
        let d = RunDir::create(&tmp.path().join("run")).unwrap();
        d.write_atomic("a/b.json", b"one").unwrap();
        d.write_atomic("a/b.json", b"two").unwrap();
        assert_eq!(std::fs::read(tmp.path().join("run/a/b.json")).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(tmp.path().join("run/a")).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names.len(), 1, "{names:?}");
        assert_eq!(d.read_optional("missing").unwrap(), None);
    }

    #[test]
    fn cannot_escape() {
        let tmp = tempfile::tempdir().unwrap();
        let d = RunDir::create(&tmp.path().join("run")).unwrap();
        let err = d.write_atomic("../escape.txt", b"x").unwrap_err();
        assert!(err.to_string().contains("outside"), "{err}");
        assert!(!tmp.path().join("escape.txt").exists());
    }

    #[test]
    fn a_locked_run_directory_refuses_a_second_owner() {
        let tmp = tempfile::tempdir().unwrap();
        let mut a = RunDir::create(&tmp.path().join("run")).unwrap();
        a.lock().unwrap();
        a.lock().unwrap();
        let mut b = RunDir::create(&tmp.path().join("run")).unwrap();
        let e = b.lock().unwrap_err().to_string();
        assert!(e.contains("another kiln process") && e.contains("run"), "{e}");
        drop(a);
        b.lock().unwrap();
    }

}

/// An error reading JSON lines, naming the file and the line.
#[derive(Debug, thiserror::Error)]
pub enum JsonlError {
    /// The file could not be read.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A line is not a valid record.
    #[error("{path} line {line}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// Why.
        #[source]
        source: serde_json::Error,
    },
}

/// Read JSON lines (blank lines skipped) from a file, or from stdin when the path is `-`.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> Result<Vec<T>, JsonlError> {
    let (name, text) = if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)
            .map_err(fs_err("read", "(standard input)"))?;
        ("(standard input)".to_string(), s)
    } else {
        let bytes = read_file(path)?;
        (path.display().to_string(), String::from_utf8_lossy(&bytes).into_owned())
    };
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|source| JsonlError::Parse { path: name.clone(), line: i + 1, source }))
        .collect()

}
