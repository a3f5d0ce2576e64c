//! The OCI/Docker manifest, index and descriptor JSON shapes kmm-loader reads and writes, plus platform
//! selection from an index. The image config is handled as `serde_json::Value` so that fields we do not
//! know survive a rewrite (`image sign` appends to `rootfs.diff_ids` and `history`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

/// Every manifest media type accepted when pulling.
pub const ACCEPTED_MANIFESTS: &[&str] = &[OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST];

/// A platform (`os`/`architecture`[/`variant`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub architecture: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Platform {
    /// The platform of this node, in OCI (GOARCH) terms.
    pub fn node() -> Self {
        let architecture = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "s390x" => "s390x",
            other => other,
        };
        Self {
            os: "linux".to_owned(),
            architecture: architecture.to_owned(),
            variant: None,
        }
    }
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A content descriptor.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image manifest (OCI or Docker schema 2).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image index / manifest list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    pub manifests: Vec<Descriptor>,
}

/// A parsed manifest document of either kind.
#[derive(Clone, Debug)]
pub enum Document {
    Manifest(Manifest),
    Index(Index),
}

impl Document {
    /// Parses manifest bytes, using the media type from the document or else from the HTTP response.
    pub fn parse(bytes: &[u8], content_type: Option<&str>) -> Result<Self, String> {
        let v: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let mt = v
            .get("mediaType")
            .and_then(|m| m.as_str())
            .or(content_type)
            .map(str::to_owned);
        let is_index = match mt.as_deref() {
            Some(OCI_INDEX | DOCKER_LIST) => true,
            Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
            Some(other)
                if !other.is_empty()
                    && v.get("manifests").is_none()
                    && v.get("layers").is_none() =>
            {
                return Err(format!("unsupported manifest media type {other}"));
            }
            _ => v.get("manifests").is_some(),
        };
        if v.get("schemaVersion").and_then(|s| s.as_u64()) != Some(2) {
            return Err("unsupported schemaVersion (only 2)".to_owned());
        }
        if is_index {
            serde_json::from_value(v)
                .map(Document::Index)
                .map_err(|e| e.to_string())
        } else {
            serde_json::from_value(v)
                .map(Document::Manifest)
                .map_err(|e| e.to_string())
        }
    }
}

impl Index {
    /// The manifest for `platform` (variant ignored unless both sides give one).
    pub fn select(&self, platform: &Platform) -> Option<&Descriptor> {
        self.manifests.iter().find(|d| {
            d.platform.as_ref().is_some_and(|p| {
                p.os == platform.os
                    && p.architecture == platform.architecture
                    && (platform.variant.is_none()
                        || p.variant.is_none()
                        || p.variant == platform.variant)
            })
        })
    }

    /// `os/arch` of every entry, for error messages.
    pub fn platforms(&self) -> Vec<String> {
        self.manifests
            .iter()
            .map(|d| {
                d.platform
                    .as_ref()
                    .map_or_else(|| "unknown".to_owned(), |p| p.to_string())
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn parse_and_select() {
        let idx = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[
          {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aa","size":1,"platform":{"os":"linux","architecture":"arm64","variant":"v8"}},
          {"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:bb","size":1,"platform":{"os":"linux","architecture":"amd64"}}]}"#;
        let Document::Index(i) = Document::parse(idx, None).unwrap() else {
            panic!("not an index")
        };
        let amd = Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        };
        assert_eq!(i.select(&amd).unwrap().digest, "sha256:bb");
        let s390 = Platform {
            architecture: "s390x".into(),
            ..amd
        };
        assert!(i.select(&s390).is_none());
        assert_eq!(i.platforms(), ["linux/arm64/v8", "linux/amd64"]);
        let m = br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:cc","size":2},"layers":[]}"#;
        assert!(matches!(
            Document::parse(m, Some(DOCKER_MANIFEST)).unwrap(),
            Document::Manifest(_)
        ));
        assert!(Document::parse(br#"{"schemaVersion":1}"#, None).is_err());
    }
}
