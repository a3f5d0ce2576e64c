//! Image references: registry references (`host[:port]/repo[:tag][@sha256:...]`) and the registry-less
//! `oci:PATH[:TAG]` transport (an OCI image layout on the node's disk).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Registry used for references without a registry host, as Docker and containers/image do.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// Errors from parsing an image reference.
#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error("failed to parse image reference {input:?}: {reason}")]
    Parse { input: String, reason: &'static str },
}

fn parse_err(input: &str, reason: &'static str) -> ReferenceError {
    ReferenceError::Parse {
        input: input.to_owned(),
        reason,
    }
}

/// A content digest `sha256:<64 lowercase hex>` (the only algorithm registries use for manifests and layers).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(String);

impl Digest {
    /// Parses `sha256:<hex>`; other algorithms are refused.
    pub fn parse(s: &str) -> Result<Self, ReferenceError> {
        let hex = s
            .strip_prefix("sha256:")
            .ok_or_else(|| parse_err(s, "digest must start with sha256:"))?;
        if hex.len() != 64
            || !hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(parse_err(
                s,
                "digest must be sha256: followed by 64 lowercase hex digits",
            ));
        }
        Ok(Self(s.to_owned()))
    }

    /// The digest of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest as _;
        Self(format!(
            "sha256:{}",
            hex::encode(sha2::Sha256::digest(bytes))
        ))
    }

    /// Builds a digest from a finished SHA-256 hasher.
    pub fn from_hasher(h: sha2::Sha256) -> Self {
        use sha2::Digest as _;
        Self(format!("sha256:{}", hex::encode(h.finalize())))
    }

    /// `sha256:<hex>`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The hex part.
    pub fn hex(&self) -> &str {
        self.0.strip_prefix("sha256:").unwrap_or(&self.0)
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A reference to an image in a registry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryRef {
    /// `host[:port]`.
    pub registry: String,
    /// Repository path, e.g. `org/kmod`.
    pub repository: String,
    /// Tag, if given.
    pub tag: Option<String>,
    /// Digest, if given; it wins over the tag when pulling.
    pub digest: Option<Digest>,
}

impl RegistryRef {
    /// The same repository at a digest (the tag is dropped).
    pub fn with_digest(&self, digest: Digest) -> Self {
        Self {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            tag: None,
            digest: Some(digest),
        }
    }

    /// The same repository and tag/digest on another registry host (a mirror). A mirror value may carry a
    /// repository prefix (`mirror.local:5000/cache`), which replaces the registry host only.
    pub fn on_mirror(&self, mirror: &str) -> Self {
        let (registry, prefix) = match mirror.split_once('/') {
            Some((host, prefix)) => (host.to_owned(), Some(prefix.trim_end_matches('/'))),
            None => (mirror.to_owned(), None),
        };
        let repository = match prefix {
            Some(p) if !p.is_empty() => format!("{p}/{}", self.repository),
            _ => self.repository.clone(),
        };
        Self {
            registry,
            repository,
            tag: self.tag.clone(),
            digest: self.digest.clone(),
        }
    }

    /// The tag or digest part used in URLs: the digest when present, else the tag, else `latest`.
    pub fn reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_owned(),
        }
    }

    /// Converts to oci-client's reference type.
    pub fn to_oci(&self) -> oci_client::Reference {
        match &self.digest {
            Some(d) => oci_client::Reference::with_digest(
                self.registry.clone(),
                self.repository.clone(),
                d.to_string(),
            ),
            None => oci_client::Reference::with_tag(
                self.registry.clone(),
                self.repository.clone(),
                self.tag.clone().unwrap_or_else(|| "latest".to_owned()),
            ),
        }
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// Any image reference kmm-loader understands.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// An image in a registry.
    Registry(RegistryRef),
    /// An OCI image layout directory (`oci:PATH[:TAG]`); without a tag the index must hold one manifest.
    OciLayout { path: PathBuf, tag: Option<String> },
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Registry(r) => r.fmt(f),
            ImageRef::OciLayout { path, tag } => {
                write!(f, "oci:{}", path.display())?;
                if let Some(t) = tag {
                    write!(f, ":{t}")?;
                }
                Ok(())
            }
        }
    }
}

fn valid_tag(t: &str) -> bool {
    let mut bytes = t.bytes();
    match bytes.next() {
        Some(b) if b.is_ascii_alphanumeric() || b == b'_' => {}
        _ => return false,
    }
    t.len() <= 128
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

fn valid_repository(r: &str) -> bool {
    !r.is_empty()
        && r.split('/').all(|c| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
                && c.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
        })
}

fn valid_host(h: &str) -> bool {
    let (host, port) = match h.rsplit_once(':') {
        Some((host, port)) if !host.ends_with(']') || h.starts_with('[') => (host, Some(port)),
        _ => (h, None),
    };
    if let Some(p) = port
        && p.parse::<u16>().is_err()
    {
        return false;
    }
    !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b))
}

impl FromStr for RegistryRef {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let s = input.strip_prefix("docker://").unwrap_or(input);
        if s.is_empty() {
            return Err(parse_err(input, "empty reference"));
        }
        let (name_tag, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(Digest::parse(d)?)),
            None => (s, None),
        };
        // The tag follows the last ':' that comes after the last '/', so a registry port is not a tag.
        let last_slash = name_tag.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name_tag[last_slash..].rfind(':') {
            Some(i) => {
                let tag = &name_tag[last_slash + i + 1..];
                if !valid_tag(tag) {
                    return Err(parse_err(input, "invalid tag"));
                }
                (&name_tag[..last_slash + i], Some(tag.to_owned()))
            }
            None => (name_tag, None),
        };
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (first.to_owned(), rest.to_owned())
            }
            _ if name.contains('/') => (DEFAULT_REGISTRY.to_owned(), name.to_owned()),
            _ => (DEFAULT_REGISTRY.to_owned(), format!("library/{name}")),
        };
        if !valid_host(&registry) {
            return Err(parse_err(input, "invalid registry host"));
        }
        if !valid_repository(&repository) {
            return Err(parse_err(
                input,
                "invalid repository (lowercase letters, digits and ._- separated by /)",
            ));
        }
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }
}

impl FromStr for ImageRef {
    type Err = ReferenceError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        if let Some(rest) = input.strip_prefix("oci:") {
            if rest.is_empty() {
                return Err(parse_err(input, "oci: needs a path"));
            }
            // As containers/image: the tag follows the last ':' unless that part contains a '/'.
            let (path, tag) = match rest.rsplit_once(':') {
                Some((p, t)) if !t.contains('/') && !p.is_empty() => {
                    if !valid_tag(t) {
                        return Err(parse_err(input, "invalid tag in oci: reference"));
                    }
                    (p, Some(t.to_owned()))
                }
                _ => (rest, None),
            };
            return Ok(ImageRef::OciLayout {
                path: PathBuf::from(path),
                tag,
            });
        }
        Ok(ImageRef::Registry(input.parse()?))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn registry_references() {
        let cases: &[(&str, &str, &str, Option<&str>, bool)] = &[
            (
                "127.0.0.1:5000/kmod:6.1",
                "127.0.0.1:5000",
                "kmod",
                Some("6.1"),
                false,
            ),
            (
                "quay.io/org/sub/kmod:v1.0-rc_1",
                "quay.io",
                "org/sub/kmod",
                Some("v1.0-rc_1"),
                false,
            ),
            ("localhost/kmod", "localhost", "kmod", None, false),
            ("busybox", "docker.io", "library/busybox", None, false),
            ("org/kmod:x", "docker.io", "org/kmod", Some("x"), false),
            (
                "docker://host.example:443/a/b:t",
                "host.example:443",
                "a/b",
                Some("t"),
                false,
            ),
        ];
        for (input, reg, repo, tag, _) in cases {
            let r: RegistryRef = input.parse().unwrap();
            assert_eq!(r.registry, *reg, "{input}");
            assert_eq!(r.repository, *repo, "{input}");
            assert_eq!(r.tag.as_deref(), *tag, "{input}");
            assert!(r.digest.is_none());
        }
        let r: RegistryRef = format!("127.0.0.1:5000/kmod:6.1@{D}").parse().unwrap();
        assert_eq!(r.tag.as_deref(), Some("6.1"));
        assert_eq!(r.digest.as_ref().unwrap().as_str(), D);
        assert_eq!(r.reference(), D);
        assert_eq!(r.to_string(), format!("127.0.0.1:5000/kmod:6.1@{D}"));
        let r: RegistryRef = format!("127.0.0.1:5000/kmod@{D}").parse().unwrap();
        assert_eq!(r.tag, None);
    }

    #[test]
    fn bad_registry_references() {
        for bad in [
            "",
            "host:5000/Kmod:1",
            "host:5000/kmod:",
            "host:5000/kmod:-x",
            "host:99999/kmod",
            "host/kmod@sha256:abc",
            "host/kmod@md5:0123",
            "host//kmod",
            "host/kmod/",
        ] {
            assert!(bad.parse::<RegistryRef>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn mirrors_keep_repository_and_digest() {
        let r: RegistryRef = format!("quay.io/org/kmod@{D}").parse().unwrap();
        let m = r.on_mirror("127.0.0.1:5001");
        assert_eq!(m.to_string(), format!("127.0.0.1:5001/org/kmod@{D}"));
        let m = r.on_mirror("127.0.0.1:5001/cache/");
        assert_eq!(m.to_string(), format!("127.0.0.1:5001/cache/org/kmod@{D}"));
    }

    #[test]
    fn oci_layout_references() {
        assert_eq!(
            "oci:/var/lib/kmods/img:6.1".parse::<ImageRef>().unwrap(),
            ImageRef::OciLayout {
                path: "/var/lib/kmods/img".into(),
                tag: Some("6.1".into())
            }
        );
        assert_eq!(
            "oci:relative/dir".parse::<ImageRef>().unwrap(),
            ImageRef::OciLayout {
                path: "relative/dir".into(),
                tag: None
            }
        );
        assert!("oci:".parse::<ImageRef>().is_err());
        assert!("oci:/x:bad tag".parse::<ImageRef>().is_err());
        assert!(matches!(
            "127.0.0.1:1/x".parse::<ImageRef>().unwrap(),
            ImageRef::Registry(_)
        ));
    }

    #[test]
    fn digests() {
        assert!(Digest::parse(D).is_ok());
        assert!(Digest::parse(&D.to_uppercase()).is_err());
        assert_eq!(
            Digest::of(b"").as_str(),
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }
}
