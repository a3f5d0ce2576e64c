//! Building the out-of-tree fixture modules in `tests/fixtures/` against Debian's headers, cached.
//!
//! The fixture is copied to a temporary directory, built with `make -C <headers> M=<copy> modules`, and its `.ko`
//! files are stored in `<cache>/kmod/<fixture>-<release>-<hash>/`, where the hash covers the fixture's sources
//! and the kernel version, so an edited fixture or a new kernel rebuilds.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::debian::Kernel;
use crate::{cache, cmd};

/// Errors of building fixture modules.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Cache(#[from] cache::Error),
    #[error(transparent)]
    Command(#[from] cmd::Error),
    #[error("failed to read fixture {path}")]
    ReadFixture { path: PathBuf, source: io::Error },
    #[error("failed to copy {from} to {to}")]
    Copy {
        from: PathBuf,
        to: PathBuf,
        source: io::Error,
    },
    #[error("building {fixture} produced no {module}.ko")]
    MissingModule { fixture: String, module: String },
}

/// The directory holding the fixtures (`tests/fixtures`).
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures")
}

/// Built modules of one fixture.
#[derive(Debug, Clone)]
pub struct Built {
    /// Directory holding the `.ko` files.
    pub dir: PathBuf,
}

impl Built {
    /// Path of `<module>.ko`.
    pub fn module(&self, module: &str) -> PathBuf {
        self.dir.join(format!("{module}.ko"))
    }
}

/// Build `tests/fixtures/<fixture>` against `kernel`'s headers (cached) and check `expected` modules exist.
pub fn build(kernel: &Kernel, fixture: &str, expected: &[&str]) -> Result<Built, Error> {
    cmd::require("make")?;
    cmd::require("gcc")?;
    let src = fixtures_dir().join(fixture);
    let files = source_files(&src)?;

    let mut hash = Sha256::new();
    hash.update(kernel.release().as_bytes());
    hash.update(b"\0");
    hash.update(kernel.version.as_bytes());
    for (name, bytes) in &files {
        hash.update(b"\0");
        hash.update(name.as_bytes());
        hash.update(b"\0");
        hash.update(bytes);
    }
    let digest = hex::encode(hash.finalize());
    let out =
        cache::subdir("kmod")?.join(format!("{fixture}-{}-{}", kernel.release(), &digest[..16]));

    if !cache::is_complete(&out) {
        let work = tempfile::tempdir().map_err(|source| Error::Copy {
            from: src.clone(),
            to: std::env::temp_dir(),
            source,
        })?;
        let build_dir = work.path().join(fixture);
        cache::create_dir_all(&build_dir)?;
        for (name, bytes) in &files {
            let to = build_dir.join(name);
            fs::write(&to, bytes).map_err(|source| Error::Copy {
                from: src.join(name),
                to,
                source,
            })?;
        }
        cmd::run(
            Command::new("make")
                .arg("-C")
                .arg(kernel.headers_dir())
                .arg(format!("M={}", build_dir.display()))
                .arg("modules"),
        )?;
        let tmp = cache::temp_sibling(&out);
        cache::remove_dir_all(&tmp)?;
        cache::create_dir_all(&tmp)?;
        for entry in fs::read_dir(&build_dir).map_err(|source| Error::ReadFixture {
            path: build_dir.clone(),
            source,
        })? {
            let entry = entry.map_err(|source| Error::ReadFixture {
                path: build_dir.clone(),
                source,
            })?;
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "ko") {
                let to = tmp.join(entry.file_name());
                fs::copy(&path, &to).map_err(|source| Error::Copy {
                    from: path.clone(),
                    to,
                    source,
                })?;
            }
        }
        cache::commit_dir(&tmp, &out)?;
    }

    let built = Built { dir: out };
    for module in expected {
        if !built.module(module).is_file() {
            return Err(Error::MissingModule {
                fixture: fixture.to_owned(),
                module: (*module).to_owned(),
            });
        }
    }
    Ok(built)
}

/// The fixture's regular files (sorted by name), which is everything `make` needs.
fn source_files(src: &Path) -> Result<Vec<(String, Vec<u8>)>, Error> {
    let mut files = Vec::new();
    let entries = fs::read_dir(src).map_err(|source| Error::ReadFixture {
        path: src.to_owned(),
        source,
    })?;
    for entry in entries {
        let entry = entry.map_err(|source| Error::ReadFixture {
            path: src.to_owned(),
            source,
        })?;
        let path = entry.path();
        if path.is_file() {
            let bytes = fs::read(&path).map_err(|source| Error::ReadFixture {
                path: path.clone(),
                source,
            })?;
            files.push((entry.file_name().to_string_lossy().into_owned(), bytes));
        }
    }
    files.sort();
    Ok(files)
}
