//! The on-disk cache shared by the end-to-end helpers (`~/.cache/kmm-rs`, or `$KMM_CACHE_DIR`).
//!
//! Every cached artifact is produced in a temporary sibling and renamed into place, so a crash or a concurrent
//! test process never sees a half-written entry. Directories carry a marker file, written last.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Name of the marker file written last into every complete cached directory.
pub const MARKER: &str = ".kmm-complete";

/// Errors of the cache helpers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("neither KMM_CACHE_DIR nor HOME is set: cannot place the kmm-rs cache")]
    NoCacheDir,
    #[error("failed to create directory {path}")]
    CreateDir { path: PathBuf, source: io::Error },
    #[error("failed to write {path}")]
    Write { path: PathBuf, source: io::Error },
    #[error("failed to move {from} to {to}")]
    Rename {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("failed to remove {path}")]
    Remove { path: PathBuf, source: io::Error },
}

/// The cache root: `$KMM_CACHE_DIR`, else `$XDG_CACHE_HOME/kmm-rs`, else `$HOME/.cache/kmm-rs`.
pub fn root() -> Result<PathBuf, Error> {
    if let Some(dir) = std::env::var_os("KMM_CACHE_DIR").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("kmm-rs"));
    }
    std::env::var_os("HOME")
        .filter(|d| !d.is_empty())
        .map(|home| PathBuf::from(home).join(".cache").join("kmm-rs"))
        .ok_or(Error::NoCacheDir)
}

/// `root()/sub`, created if missing.
pub fn subdir(sub: &str) -> Result<PathBuf, Error> {
    let dir = root()?.join(sub);
    create_dir_all(&dir)?;
    Ok(dir)
}

pub(crate) fn create_dir_all(path: &Path) -> Result<(), Error> {
    fs::create_dir_all(path).map_err(|source| Error::CreateDir {
        path: path.to_owned(),
        source,
    })
}

/// A fresh, unique path next to `target` (same file system, so it can be renamed onto `target`).
pub fn temp_sibling(target: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.tmp-{}-{n}", std::process::id()))
}

/// Whether `dir` is a complete cached directory (its marker exists).
pub fn is_complete(dir: &Path) -> bool {
    dir.join(MARKER).is_file()
}

/// Finish a directory built at `tmp`: write its marker, then rename it to `dir`. If another process finished
/// `dir` first, `tmp` is discarded and theirs is used. An incomplete `dir` (no marker) is replaced.
pub fn commit_dir(tmp: &Path, dir: &Path) -> Result<(), Error> {
    let marker = tmp.join(MARKER);
    fs::write(&marker, b"").map_err(|source| Error::Write {
        path: marker,
        source,
    })?;
    if dir.exists() && !is_complete(dir) {
        remove_dir_all(dir)?;
    }
    match fs::rename(tmp, dir) {
        Ok(()) => Ok(()),
        Err(_) if is_complete(dir) => remove_dir_all(tmp),
        Err(source) => Err(Error::Rename {
            from: tmp.to_owned(),
            to: dir.to_owned(),
            source,
        }),
    }
}

/// Atomically replace the file `path` with `tmp`.
pub fn commit_file(tmp: &Path, path: &Path) -> Result<(), Error> {
    fs::rename(tmp, path).map_err(|source| Error::Rename {
        from: tmp.to_owned(),
        to: path.to_owned(),
        source,
    })
}

pub(crate) fn remove_dir_all(path: &Path) -> Result<(), Error> {
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(Error::Remove {
            path: path.to_owned(),
            source,
        }),
    }
}
