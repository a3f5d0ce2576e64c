//! Registry credentials from a `kubernetes.io/dockerconfigjson` Secret (`.dockerconfigjson`), or the older
//! `.dockercfg` form, looked up the way the kubelet does: by registry host and optional repository path
//! prefix (longest match wins), with `*.` wildcards and scheme/`/v1/` suffixes ignored.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use oci_client::secrets::RegistryAuth;
use serde::Deserialize;

/// Errors from reading a pull secret.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("failed to read pull secret {path}")]
    ReadPullSecret {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to parse pull secret {path} (expected a .dockerconfigjson document)")]
    ParsePullSecret {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "failed to decode the auth field for {registry} in pull secret {path} (expected base64 of user:password)"
    )]
    DecodeAuth { path: PathBuf, registry: String },
}

#[derive(Debug, Default, Deserialize)]
struct Entry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Document {
    ConfigJson { auths: BTreeMap<String, Entry> },
    DockerCfg(BTreeMap<String, Entry>),
}

/// Credentials per registry key, as read from a pull secret.
#[derive(Clone, Debug, Default)]
pub struct Credentials {
    /// (normalised key `host[/path]`, credentials)
    entries: Vec<(String, RegistryAuth)>,
}

fn normalise_key(key: &str) -> String {
    let k = key
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://");
    let k = k
        .strip_suffix("/v1/")
        .or_else(|| k.strip_suffix("/v2/"))
        .unwrap_or(k);
    let k = k.trim_end_matches('/');
    match k {
        "index.docker.io" | "registry-1.docker.io" => "docker.io".to_owned(),
        _ => k.to_owned(),
    }
}

fn host_matches(pattern: &str, host: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(suffix)
            .is_some_and(|rest| rest.ends_with('.') && !rest[..rest.len() - 1].contains('.')),
        None => pattern == host,
    }
}

impl Credentials {
    /// Parses the JSON bytes of a `.dockerconfigjson` (or `.dockercfg`).
    pub fn from_json(bytes: &[u8], path: &Path) -> Result<Self, AuthError> {
        let doc: Document =
            serde_json::from_slice(bytes).map_err(|source| AuthError::ParsePullSecret {
                path: path.to_owned(),
                source,
            })?;
        let map = match doc {
            Document::ConfigJson { auths } => auths,
            Document::DockerCfg(m) => m,
        };
        let mut entries = Vec::new();
        for (key, e) in map {
            let auth = if let Some(token) = e.registrytoken.filter(|t| !t.is_empty()) {
                RegistryAuth::Bearer(token)
            } else if let (Some(u), Some(p)) = (&e.username, &e.password) {
                RegistryAuth::Basic(u.clone(), p.clone())
            } else if let Some(a) = e.auth.filter(|a| !a.is_empty()) {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(a.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok())
                    .ok_or_else(|| AuthError::DecodeAuth {
                        path: path.to_owned(),
                        registry: key.clone(),
                    })?;
                let (u, p) = decoded
                    .split_once(':')
                    .ok_or_else(|| AuthError::DecodeAuth {
                        path: path.to_owned(),
                        registry: key.clone(),
                    })?;
                RegistryAuth::Basic(u.to_owned(), p.to_owned())
            } else {
                continue;
            };
            entries.push((normalise_key(&key), auth));
        }
        Ok(Self { entries })
    }

    /// Reads a pull secret file.
    pub fn from_file(path: &Path) -> Result<Self, AuthError> {
        let bytes = std::fs::read(path).map_err(|source| AuthError::ReadPullSecret {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&bytes, path)
    }

    /// The credentials for `registry`/`repository`, anonymous when none match.
    pub fn lookup(&self, registry: &str, repository: &str) -> RegistryAuth {
        let mut best: Option<(usize, &RegistryAuth)> = None;
        for (key, auth) in &self.entries {
            let (host, path) = match key.split_once('/') {
                Some((h, p)) => (h, Some(p)),
                None => (key.as_str(), None),
            };
            if !host_matches(host, registry) {
                continue;
            }
            if let Some(p) = path
                && repository != p
                && !repository.starts_with(&format!("{p}/"))
            {
                continue;
            }
            let score = key.len();
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, auth));
            }
        }
        best.map_or(RegistryAuth::Anonymous, |(_, a)| a.clone())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn basic(a: &RegistryAuth) -> Option<(&str, &str)> {
        match a {
            RegistryAuth::Basic(u, p) => Some((u, p)),
            _ => None,
        }
    }

    #[test]
    fn dockerconfigjson_lookup() {
        let json = br#"{"auths":{
            "https://127.0.0.1:5000/v1/": {"auth": "dXNlcjpwYXNz"},
            "127.0.0.1:5000/team": {"username": "team", "password": "pw:with:colons"},
            "*.example.com": {"registrytoken": "tok"},
            "empty.io": {}
        }}"#;
        let c = Credentials::from_json(json, Path::new("s")).unwrap();
        assert_eq!(
            basic(&c.lookup("127.0.0.1:5000", "kmod")),
            Some(("user", "pass"))
        );
        assert_eq!(
            basic(&c.lookup("127.0.0.1:5000", "team/kmod")),
            Some(("team", "pw:with:colons"))
        );
        assert_eq!(
            basic(&c.lookup("127.0.0.1:5000", "teamx/kmod")),
            Some(("user", "pass"))
        );
        assert!(matches!(c.lookup("a.example.com", "x"), RegistryAuth::Bearer(t) if t == "tok"));
        assert!(matches!(
            c.lookup("a.b.example.com", "x"),
            RegistryAuth::Anonymous
        ));
        assert!(matches!(c.lookup("empty.io", "x"), RegistryAuth::Anonymous));
        assert!(matches!(
            c.lookup("127.0.0.1:5001", "kmod"),
            RegistryAuth::Anonymous
        ));
    }

    #[test]
    fn dockercfg_and_errors() {
        let c = Credentials::from_json(br#"{"index.docker.io": {"auth": "YTpi"}}"#, Path::new("s"))
            .unwrap();
        assert_eq!(basic(&c.lookup("docker.io", "library/x")), Some(("a", "b")));
        let e = Credentials::from_json(br#"{"auths":{"h":{"auth":"!!"}}}"#, Path::new("s"))
            .unwrap_err();
        assert!(e.to_string().contains("for h"), "{e}");
        assert!(Credentials::from_json(b"[]", Path::new("s")).is_err());
    }
}
