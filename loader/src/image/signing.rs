//! `image sign`: pull an unsigned kmod image, sign the modules matching the `filesToSign` globs with the
//! loader's sign-file-compatible signer, and push the image with one added layer holding the signed files
//! (base layers reused, config `rootfs.diff_ids` and `history` extended). The private key is read from its
//! file and never written anywhere near the layer.

use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobMatcher};

use super::extract::{Limits, Mapping};
use super::manifest::{Descriptor, Manifest};
use super::pull::{PullError, Source, extract_layers};
use super::push::{
    LayerFile, PushError, build_layer, layer_descriptor, layer_media_type, now_secs, push_image,
    rfc3339,
};
use super::reference::{Digest, RegistryRef};
use super::registry::{Registry, RegistryOptions};
use crate::keys::{self, KeyError};
use crate::sign::{SignError, Signer};
use crate::signature::HashAlgo;

/// Errors from `image sign`.
#[derive(Debug, thiserror::Error)]
pub enum SignImageError {
    #[error("failed to pull the unsigned image")]
    Pull(#[from] PullError),
    #[error("failed to parse glob {pattern:?}")]
    ParseGlob {
        pattern: String,
        #[source]
        source: globset::Error,
    },
    #[error("failed to match {pattern:?}: no file in {image} matches it")]
    MatchGlob { pattern: String, image: String },
    #[error("failed to load the signing key or certificate")]
    LoadKey(#[from] KeyError),
    #[error("failed to find a certificate in {path}")]
    FindCertificate { path: PathBuf },
    #[error("failed to sign {path}")]
    SignModule {
        path: String,
        #[source]
        source: SignError,
    },
    #[error("failed to read the image configuration of {image}")]
    ReadConfig { image: String, reason: String },
    #[error("failed to create a work directory")]
    WorkDir(#[source] std::io::Error),
    #[error("failed to push the signed image")]
    Push(#[from] PushError),
}

/// What to sign.
#[derive(Clone, Debug)]
pub struct SignRequest {
    pub from: RegistryRef,
    pub to: RegistryRef,
    pub key: PathBuf,
    pub cert: PathBuf,
    /// Image paths, with shell-like globs (`*` does not cross `/`; `**` does); default: every module under
    /// `dir_name`.
    pub files: Vec<String>,
    /// The image directory holding the modules (KMM's dirName, default `/opt`).
    pub dir_name: String,
}

/// The outcome of `image sign`.
#[derive(Clone, Debug)]
pub struct Signed {
    pub digest: Digest,
    /// Image paths of the signed files, sorted.
    pub files: Vec<String>,
}

fn matcher(pattern: &str) -> Result<GlobMatcher, SignImageError> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|g| g.compile_matcher())
        .map_err(|source| SignImageError::ParseGlob {
            pattern: pattern.to_owned(),
            source,
        })
}

/// Regular files under `root`, as (relative path with `/`, absolute path).
fn regular_files(root: &Path) -> Result<Vec<(String, PathBuf)>, SignImageError> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(SignImageError::WorkDir)? {
            let e = e.map_err(SignImageError::WorkDir)?;
            let ft = e.file_type().map_err(SignImageError::WorkDir)?;
            let p = e.path();
            if ft.is_dir() {
                stack.push(p);
            } else if ft.is_file() {
                let rel = p
                    .strip_prefix(root)
                    .map(|r| r.to_string_lossy().into_owned())
                    .unwrap_or_default();
                out.push((rel, p));
            }
        }
    }
    out.sort();
    Ok(out)
}

pub(crate) fn load_signer(key: &Path, cert: &Path) -> Result<Signer, SignImageError> {
    let pin = std::env::var(keys::PIN_ENV).ok();
    let key_pair = keys::load_private_key(key, pin.as_deref())?;
    let certificate = keys::load_certificates(cert)?
        .into_iter()
        .next()
        .ok_or_else(|| SignImageError::FindCertificate {
            path: cert.to_owned(),
        })?;
    keys::check_key_pair(&key_pair, &certificate, key, cert)?;
    Ok(Signer {
        key: key_pair,
        cert: certificate,
        hash: HashAlgo::Sha256,
    })
}

/// Extends an image config with one layer and its history entry.
pub fn extend_config(
    config: &[u8],
    diff_id: &Digest,
    created_by: &str,
    comment: &str,
    image: &str,
) -> Result<Vec<u8>, SignImageError> {
    let bad = |reason: &str| SignImageError::ReadConfig {
        image: image.to_owned(),
        reason: reason.to_owned(),
    };
    let mut v: serde_json::Value =
        serde_json::from_slice(config).map_err(|e| bad(&e.to_string()))?;
    let obj = v.as_object_mut().ok_or_else(|| bad("not a JSON object"))?;
    let rootfs = obj
        .entry("rootfs")
        .or_insert_with(|| serde_json::json!({"type": "layers", "diff_ids": []}));
    let ids = rootfs
        .get_mut("diff_ids")
        .and_then(|d| d.as_array_mut())
        .ok_or_else(|| bad("rootfs.diff_ids missing"))?;
    ids.push(serde_json::Value::String(diff_id.to_string()));
    let created = rfc3339(now_secs());
    let history = obj
        .entry("history")
        .or_insert_with(|| serde_json::json!([]));
    if let Some(h) = history.as_array_mut() {
        h.push(
            serde_json::json!({"created": created, "created_by": created_by, "comment": comment}),
        );
    }
    obj.insert("created".to_owned(), serde_json::Value::String(created));
    serde_json::to_vec(&v).map_err(|e| bad(&e.to_string()))
}

/// Pulls `req.from`, signs, pushes to `req.to`.
pub async fn sign_image(
    req: &SignRequest,
    opts: &RegistryOptions,
    limits: Limits,
) -> Result<Signed, SignImageError> {
    // Load the key first: a wrong key or certificate fails before any download.
    let signer = load_signer(&req.key, &req.cert)?;
    let dir = req.dir_name.trim_end_matches('/').to_owned();
    let patterns: Vec<String> = if req.files.is_empty() {
        vec![format!("{dir}/**/*.{{ko,ko.xz,ko.zst,ko.gz}}")]
    } else {
        req.files.clone()
    };
    let matchers = patterns
        .iter()
        .map(|p| matcher(p))
        .collect::<Result<Vec<_>, _>>()?;

    let from_s = req.from.to_string();
    let pull_err = |source| {
        SignImageError::Pull(PullError::Registry {
            image: from_s.clone(),
            source: Box::new(source),
        })
    };
    let reg = Registry::new(opts).map_err(pull_err)?;
    let resolved = reg.resolve_one(&req.from).await.map_err(pull_err)?;
    let config = reg
        .fetch_blob(&resolved.source, &resolved.manifest.config)
        .await
        .map_err(pull_err)?;

    let work = tempfile::Builder::new()
        .prefix("kmm-image-sign-")
        .tempdir()
        .map_err(SignImageError::WorkDir)?;
    let tree = work.path().join("tree");
    std::fs::create_dir(&tree).map_err(SignImageError::WorkDir)?;
    let source = Source::Registry {
        reg: &reg,
        from: resolved.source.clone(),
    };
    extract_layers(
        &from_s,
        &source,
        &resolved.manifest,
        &tree,
        vec![Mapping::new(&dir, "")],
        limits,
        None,
    )
    .await?;

    let files = regular_files(&tree)?;
    let mut chosen: Vec<(String, PathBuf)> = Vec::new();
    for (pattern, m) in patterns.iter().zip(&matchers) {
        let mut hit = false;
        for (rel, path) in &files {
            let image_path = format!("{dir}/{rel}");
            if m.is_match(&image_path) {
                hit = true;
                if !chosen.iter().any(|(p, _)| p == &image_path) {
                    chosen.push((image_path, path.clone()));
                }
            }
        }
        if !hit {
            return Err(SignImageError::MatchGlob {
                pattern: pattern.clone(),
                image: from_s,
            });
        }
    }
    chosen.sort();
    for (image_path, path) in &chosen {
        signer
            .sign_file(path, path)
            .map_err(|source| SignImageError::SignModule {
                path: image_path.clone(),
                source,
            })?;
        tracing::info!(file = %image_path, "signed");
    }
    let layer_files: Vec<LayerFile> = chosen
        .iter()
        .map(|(image_path, local)| LayerFile {
            image_path: image_path.clone(),
            local: local.clone(),
        })
        .collect();
    let layer = build_layer(&layer_files, now_secs())?;
    let names: Vec<&str> = chosen.iter().map(|(p, _)| p.as_str()).collect();
    let new_config = extend_config(
        &config,
        &layer.diff_id,
        "kmm-loader image sign",
        &format!(
            "signed with {}: {}",
            signer.cert.subject_cn(),
            names.join(" ")
        ),
        &from_s,
    )?;
    let mut manifest: Manifest = resolved.manifest.clone();
    manifest.layers.push(layer_descriptor(
        &layer,
        layer_media_type(manifest.media_type.as_deref()),
    ));
    manifest.config = Descriptor {
        digest: Digest::of(&new_config).to_string(),
        size: new_config.len() as u64,
        ..manifest.config.clone()
    };
    let digest = push_image(
        &reg,
        &req.to,
        Some(&resolved.source),
        &manifest,
        &[layer],
        &new_config,
    )
    .await?;
    Ok(Signed {
        digest,
        files: chosen.into_iter().map(|(p, _)| p).collect(),
    })
}
