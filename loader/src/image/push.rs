//! Building layers from local files and pushing images (config, layers, manifest), shared by `image sign`
//! and `image build`. Layers are reproducible: sorted entries, uid/gid 0, fixed mtime.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::manifest::{DOCKER_LAYER_GZIP, DOCKER_MANIFEST, Descriptor, Manifest, OCI_LAYER_GZIP};
use super::reference::{Digest, RegistryRef};
use super::registry::{Registry, RegistryError};

/// Errors from building or pushing an image.
#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("failed to add {path} to the layer")]
    BuildLayer {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to push {image}")]
    Push {
        image: String,
        #[source]
        source: Box<RegistryError>,
    },
}

/// A compressed layer ready to push.
#[derive(Clone, Debug)]
pub struct Layer {
    /// gzip bytes.
    pub data: Vec<u8>,
    /// Digest of the gzip bytes.
    pub digest: Digest,
    /// Digest of the uncompressed tar (`rootfs.diff_ids`).
    pub diff_id: Digest,
}

/// A file to put in a layer: its absolute path in the image and its local source.
#[derive(Clone, Debug)]
pub struct LayerFile {
    pub image_path: String,
    pub local: PathBuf,
}

/// Builds a gzip tar layer holding `files` (and their parent directories), sorted, owned by root, with
/// mtime `mtime` and the local files' permission bits.
pub fn build_layer(files: &[LayerFile], mtime: u64) -> Result<Layer, PushError> {
    use std::os::unix::fs::PermissionsExt;
    let mut files = files.to_vec();
    files.sort_by(|a, b| a.image_path.cmp(&b.image_path));
    let mut b = tar::Builder::new(Vec::new());
    let mut dirs = std::collections::BTreeSet::new();
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| PushError::BuildLayer { path, source }
    };
    for f in &files {
        let rel = f.image_path.trim_start_matches('/');
        let mut acc = String::new();
        let comps: Vec<&str> = rel.split('/').collect();
        for c in &comps[..comps.len().saturating_sub(1)] {
            acc.push_str(c);
            acc.push('/');
            if dirs.insert(acc.clone()) {
                let mut h = tar::Header::new_ustar();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_mtime(mtime);
                h.set_size(0);
                b.append_data(&mut h, &acc, io::empty())
                    .map_err(err(&f.local))?;
            }
        }
        let data = std::fs::read(&f.local).map_err(err(&f.local))?;
        let mode = std::fs::metadata(&f.local)
            .map_err(err(&f.local))?
            .permissions()
            .mode()
            & 0o755;
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(mode);
        h.set_mtime(mtime);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, rel, data.as_slice())
            .map_err(err(&f.local))?;
    }
    let tar = b.into_inner().map_err(err(Path::new("(layer)")))?;
    let diff_id = Digest::of(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).map_err(err(Path::new("(layer)")))?;
    let data = gz.finish().map_err(err(Path::new("(layer)")))?;
    Ok(Layer {
        digest: Digest::of(&data),
        diff_id,
        data,
    })
}

/// The layer media type matching a manifest's style (Docker schema 2 or OCI).
pub fn layer_media_type(manifest_media_type: Option<&str>) -> &'static str {
    if manifest_media_type == Some(DOCKER_MANIFEST) {
        DOCKER_LAYER_GZIP
    } else {
        OCI_LAYER_GZIP
    }
}

/// `YYYY-MM-DDTHH:MM:SSZ` for a Unix time.
pub fn rfc3339(secs: u64) -> String {
    let days = secs / 86_400;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Seconds since the epoch (or `SOURCE_DATE_EPOCH` when set, for reproducible images).
pub fn now_secs() -> u64 {
    std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        })
}

/// Pushes an image to `to`: `base` layers are made available from `base_from` (present, mounted or copied),
/// then the new layers, the config and the manifest. Returns the manifest digest.
pub async fn push_image(
    reg: &Registry,
    to: &RegistryRef,
    base_from: Option<&RegistryRef>,
    manifest: &Manifest,
    new_layers: &[Layer],
    config: &[u8],
) -> Result<Digest, PushError> {
    let err = |source: RegistryError| PushError::Push {
        image: to.to_string(),
        source: Box::new(source),
    };
    reg.auth_push(to).await.map_err(err)?;
    if let Some(from) = base_from {
        for d in &manifest.layers {
            if new_layers.iter().any(|l| l.digest.as_str() == d.digest) {
                continue;
            }
            reg.copy_blob(from, to, d).await.map_err(err)?;
        }
    }
    for l in new_layers {
        reg.push_blob(to, l.data.clone(), l.digest.as_str())
            .await
            .map_err(err)?;
    }
    reg.push_blob(to, config.to_vec(), manifest.config.digest.as_str())
        .await
        .map_err(err)?;
    let raw = serde_json::to_vec(manifest).unwrap_or_default();
    let mt = manifest
        .media_type
        .clone()
        .unwrap_or_else(|| super::manifest::OCI_MANIFEST.to_owned());
    reg.push_manifest(to, raw, &mt).await.map_err(err)
}

/// A descriptor for a pushed layer.
pub fn layer_descriptor(l: &Layer, media_type: &str) -> Descriptor {
    Descriptor {
        media_type: media_type.to_owned(),
        digest: l.digest.to_string(),
        size: l.data.len() as u64,
        platform: None,
        annotations: None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn layers_are_reproducible() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("a.ko"), b"a").unwrap();
        let files = [LayerFile {
            image_path: "/opt/lib/modules/6.1/a.ko".into(),
            local: d.path().join("a.ko"),
        }];
        let l1 = build_layer(&files, 5).unwrap();
        let l2 = build_layer(&files, 5).unwrap();
        assert_eq!(l1.digest, l2.digest);
        let mut names = Vec::new();
        let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(l1.data.as_slice()));
        for e in ar.entries().unwrap() {
            names.push(e.unwrap().path().unwrap().display().to_string());
        }
        assert_eq!(
            names,
            [
                "opt/",
                "opt/lib/",
                "opt/lib/modules/",
                "opt/lib/modules/6.1/",
                "opt/lib/modules/6.1/a.ko"
            ]
        );
    }
}
