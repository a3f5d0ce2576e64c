//! OCI image layout directories (`oci:PATH[:TAG]`): read `index.json`, pick the manifest by its
//! `org.opencontainers.image.ref.name` annotation (or the only one), resolve an index to the platform, and
//! read blobs verified against their digests.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

use sha2::Digest as _;

use super::manifest::{Document, Index, Manifest, Platform};
use super::reference::Digest;

/// The annotation naming a manifest in an OCI layout's `index.json`.
pub const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// Errors from reading an OCI layout.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("failed to read {path}")]
    ReadLayout {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to parse {path}: {reason}")]
    ParseLayout { path: PathBuf, reason: String },
    #[error("failed to find tag {tag:?} in OCI layout {path} (it has: {available})")]
    FindTag {
        path: PathBuf,
        tag: String,
        available: String,
    },
    #[error(
        "failed to pick a manifest in OCI layout {path}: it holds {count}, name one with oci:PATH:TAG"
    )]
    AmbiguousLayout { path: PathBuf, count: usize },
    #[error("failed to find a {platform} manifest in OCI layout {path} (it has: {available})")]
    SelectPlatform {
        path: PathBuf,
        platform: String,
        available: String,
    },
    #[error("failed to verify blob {digest} in OCI layout {path}: content hashes to {actual}")]
    VerifyBlob {
        path: PathBuf,
        digest: String,
        actual: String,
    },
}

/// An OCI layout on disk.
pub struct Layout {
    root: PathBuf,
}

/// A manifest read from a layout.
pub struct LayoutManifest {
    pub digest: Digest,
    pub manifest: Manifest,
    pub raw: Vec<u8>,
}

fn parse_digest(path: &Path, d: &str) -> Result<Digest, LayoutError> {
    Digest::parse(d).map_err(|e| LayoutError::ParseLayout {
        path: path.to_owned(),
        reason: e.to_string(),
    })
}

impl Layout {
    /// A layout rooted at `root` (not read yet).
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    /// Path of a blob.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// Reads a whole (small) blob, verified.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, LayoutError> {
        let path = self.blob_path(digest);
        let bytes = std::fs::read(&path).map_err(|source| LayoutError::ReadLayout {
            path: path.clone(),
            source,
        })?;
        let actual = Digest::of(&bytes);
        if &actual != digest {
            return Err(LayoutError::VerifyBlob {
                path,
                digest: digest.to_string(),
                actual: actual.to_string(),
            });
        }
        Ok(bytes)
    }

    /// Opens a blob for streaming; the digest is checked when the reader reaches the end.
    pub fn open_blob(&self, digest: &Digest) -> Result<VerifyingReader<File>, LayoutError> {
        let path = self.blob_path(digest);
        let f = File::open(&path).map_err(|source| LayoutError::ReadLayout {
            path: path.clone(),
            source,
        })?;
        Ok(VerifyingReader {
            inner: f,
            hasher: sha2::Sha256::new(),
            expected: digest.clone(),
            path,
            done: false,
        })
    }

    /// Finds the manifest for `tag` (or the only one) and resolves an index to `platform`.
    pub fn manifest(
        &self,
        tag: Option<&str>,
        platform: &Platform,
    ) -> Result<LayoutManifest, LayoutError> {
        let index_path = self.root.join("index.json");
        let bytes = std::fs::read(&index_path).map_err(|source| LayoutError::ReadLayout {
            path: index_path.clone(),
            source,
        })?;
        let index: Index =
            serde_json::from_slice(&bytes).map_err(|e| LayoutError::ParseLayout {
                path: index_path.clone(),
                reason: e.to_string(),
            })?;
        let name = |d: &super::manifest::Descriptor| {
            d.annotations
                .as_ref()
                .and_then(|a| a.get(REF_NAME))
                .cloned()
                .unwrap_or_default()
        };
        let entry = match tag {
            Some(t) => index
                .manifests
                .iter()
                .find(|d| name(d) == t)
                .ok_or_else(|| LayoutError::FindTag {
                    path: self.root.clone(),
                    tag: t.to_owned(),
                    available: index
                        .manifests
                        .iter()
                        .map(name)
                        .collect::<Vec<_>>()
                        .join(", "),
                })?,
            None => match index.manifests.as_slice() {
                [one] => one,
                many => {
                    return Err(LayoutError::AmbiguousLayout {
                        path: self.root.clone(),
                        count: many.len(),
                    });
                }
            },
        };
        let mut digest = parse_digest(&index_path, &entry.digest)?;
        for _ in 0..2 {
            let raw = self.read_blob(&digest)?;
            let path = self.blob_path(&digest);
            match Document::parse(&raw, Some(&entry.media_type)).map_err(|reason| {
                LayoutError::ParseLayout {
                    path: path.clone(),
                    reason,
                }
            })? {
                Document::Manifest(manifest) => {
                    return Ok(LayoutManifest {
                        digest,
                        manifest,
                        raw,
                    });
                }
                Document::Index(idx) => {
                    let e = idx
                        .select(platform)
                        .ok_or_else(|| LayoutError::SelectPlatform {
                            path: self.root.clone(),
                            platform: platform.to_string(),
                            available: idx.platforms().join(", "),
                        })?;
                    digest = parse_digest(&path, &e.digest)?;
                }
            }
        }
        Err(LayoutError::ParseLayout {
            path: index_path,
            reason: "nested index".to_owned(),
        })
    }
}

/// A reader that fails at end of input when the content does not hash to the expected digest.
pub struct VerifyingReader<R> {
    inner: R,
    hasher: sha2::Sha256,
    expected: Digest,
    path: PathBuf,
    done: bool,
}

impl<R: Read> Read for VerifyingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && !buf.is_empty() && !self.done {
            self.done = true;
            let actual = Digest::from_hasher(std::mem::take(&mut self.hasher));
            if actual != self.expected {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "{} hashes to {actual}, expected {}",
                        self.path.display(),
                        self.expected
                    ),
                ));
            }
        }
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}
