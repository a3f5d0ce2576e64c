//! Talking to registries (over oci-client with rustls): options shared by pull, sign and build (pull secret,
//! plain HTTP, skipped TLS verification, extra CAs, digest mirrors, retries), manifest resolution to the
//! node's platform, verified blob streams, and pushes.

use std::path::PathBuf;
use std::time::Duration;

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{DigestError, OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, RegistryOperation};

use super::auth::Credentials;
use super::manifest::{ACCEPTED_MANIFESTS, Descriptor, Document, Manifest, Platform};
use super::reference::{Digest, RegistryRef};

mod fetch;

/// Options for every registry operation.
#[derive(Clone, Debug)]
pub struct RegistryOptions {
    /// Credentials from the pull secret.
    pub credentials: Credentials,
    /// Use plain HTTP (`registryTLS.insecure`).
    pub insecure: bool,
    /// Do not verify TLS certificates (`registryTLS.insecureSkipTLSVerify`).
    pub insecure_skip_tls_verify: bool,
    /// Extra PEM CA bundles to trust.
    pub ca_files: Vec<PathBuf>,
    /// `(source registry, mirror)` pairs, tried in order for digest pulls from the source.
    pub mirrors: Vec<(String, String)>,
    /// Attempts per registry host for transient failures (connection refused, 5xx, 429, timeouts).
    pub attempts: u32,
    /// Delay before the second attempt; doubled each time.
    pub backoff: Duration,
    /// Platform to pick from an index; the node's by default.
    pub platform: Platform,
}

impl Default for RegistryOptions {
    fn default() -> Self {
        Self {
            credentials: Credentials::default(),
            insecure: false,
            insecure_skip_tls_verify: false,
            ca_files: Vec::new(),
            mirrors: Vec::new(),
            attempts: 4,
            backoff: Duration::from_millis(500),
            platform: Platform::node(),
        }
    }
}

impl RegistryOptions {
    /// Registries to try for `r`, in order: its mirrors (only when pulling by digest, as registries.conf's
    /// `pull-from-mirror = digest-only` and ImageDigestMirrorSet do), then the source itself.
    pub fn candidates(&self, r: &RegistryRef) -> Vec<RegistryRef> {
        let mut out = Vec::new();
        if r.digest.is_some() {
            for (source, mirror) in &self.mirrors {
                let (src_host, src_repo) = source.split_once('/').unwrap_or((source.as_str(), ""));
                if src_host != r.registry {
                    continue;
                }
                if src_repo.is_empty() {
                    out.push(r.on_mirror(mirror));
                    continue;
                }
                // A repository-scoped mirror (`quay.io/org=mirror:5000/org-copy`).
                let rest = if r.repository == src_repo {
                    Some("")
                } else {
                    r.repository
                        .strip_prefix(src_repo)
                        .and_then(|x| x.strip_prefix('/'))
                };
                if let Some(rest) = rest {
                    let (host, prefix) = mirror.split_once('/').unwrap_or((mirror.as_str(), ""));
                    let repository = [prefix, rest]
                        .iter()
                        .filter(|s| !s.is_empty())
                        .copied()
                        .collect::<Vec<_>>()
                        .join("/");
                    out.push(RegistryRef {
                        registry: host.to_owned(),
                        repository,
                        tag: r.tag.clone(),
                        digest: r.digest.clone(),
                    });
                }
            }
        }
        out.push(r.clone());
        out
    }
}

/// What kind of failure a registry error is; decides retries and the hint shown to the user.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    /// Worth retrying: connection refused or reset, timeouts, 5xx, 429.
    Transient,
    /// The image, tag or blob does not exist.
    NotFound,
    /// Credentials missing or wrong.
    Unauthorized,
    /// Content does not match its digest or is malformed.
    Corrupt,
    /// Anything else.
    Other,
}

impl FailureKind {
    fn hint(self) -> &'static str {
        match self {
            FailureKind::Transient => {
                "check that the registry is running and reachable (TLS/--insecure settings)"
            }
            FailureKind::NotFound => "check the image name and tag, and that the image was pushed",
            FailureKind::Unauthorized => {
                "check the credentials in the pull secret for this registry"
            }
            FailureKind::Corrupt => {
                "the registry served content that does not match its digest; re-push the image"
            }
            FailureKind::Other => "see the cause below",
        }
    }
}

/// Classifies an oci-client error.
pub fn classify(e: &OciDistributionError) -> FailureKind {
    match e {
        OciDistributionError::UnauthorizedError { .. }
        | OciDistributionError::AuthenticationFailure(_) => FailureKind::Unauthorized,
        OciDistributionError::RegistryError { envelope, .. } => {
            let codes: Vec<_> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                FailureKind::Unauthorized
            } else if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                FailureKind::NotFound
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Toomanyrequests))
            {
                FailureKind::Transient
            } else {
                FailureKind::Other
            }
        }
        OciDistributionError::ServerError { code, .. } => match code {
            401 | 403 => FailureKind::Unauthorized,
            404 => FailureKind::NotFound,
            429 | 500..=599 => FailureKind::Transient,
            _ => FailureKind::Other,
        },
        OciDistributionError::RequestError(r) => {
            if r.is_connect() || r.is_timeout() || r.is_request() || r.is_body() {
                FailureKind::Transient
            } else {
                FailureKind::Other
            }
        }
        OciDistributionError::DigestError(_)
        | OciDistributionError::ManifestParsingError(_)
        | OciDistributionError::VersionedParsingError(_) => FailureKind::Corrupt,
        OciDistributionError::IoError(_) => FailureKind::Transient,
        _ => FailureKind::Other,
    }
}

/// Errors from registry operations. Each names the image and carries a hint saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("failed to read CA file {path}")]
    ReadCaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to create the registry client")]
    CreateClient(#[source] OciDistributionError),
    #[error("failed to {operation} {image} after {attempts} attempt(s): {hint}")]
    Request {
        operation: &'static str,
        image: String,
        attempts: u32,
        kind: FailureKind,
        hint: &'static str,
        #[source]
        source: OciDistributionError,
    },
    #[error("failed to parse the manifest of {image}: {reason}")]
    ParseManifest { image: String, reason: String },
    #[error(
        "failed to find a {platform} manifest in {image} (it has: {available}); build the image for this node's architecture"
    )]
    SelectPlatform {
        image: String,
        platform: String,
        available: String,
    },
    #[error(
        "failed to verify {what} of {image}: expected {expected}, got {actual}; the content is corrupt or was tampered with"
    )]
    VerifyDigest {
        image: String,
        what: String,
        expected: String,
        actual: String,
    },
    #[error(
        "failed to check the configuration of {image}: it is for {found}, this node needs {platform}; build the image for this node's architecture"
    )]
    CheckPlatform {
        image: String,
        found: String,
        platform: String,
    },
}

impl RegistryError {
    /// The failure kind (for mirrors fallback and retries).
    pub fn kind(&self) -> FailureKind {
        match self {
            RegistryError::Request { kind, .. } => *kind,
            RegistryError::ParseManifest { .. } | RegistryError::VerifyDigest { .. } => {
                FailureKind::Corrupt
            }
            _ => FailureKind::Other,
        }
    }
}

/// Where blob bytes go while they are streamed.
pub trait BlobSink {
    /// Takes one chunk.
    fn write(
        &mut self,
        chunk: bytes::Bytes,
    ) -> impl std::future::Future<Output = std::io::Result<()>> + Send;
}

impl BlobSink for Vec<u8> {
    async fn write(&mut self, chunk: bytes::Bytes) -> std::io::Result<()> {
        self.extend_from_slice(&chunk);
        Ok(())
    }
}

/// A registry client configured from [`RegistryOptions`]: reads go through [`fetch::Reader`], pushes
/// through oci-client (built on first use).
pub struct Registry {
    reader: fetch::Reader,
    oci: std::sync::OnceLock<Client>,
    extra_roots: Vec<Vec<u8>>,
    opts: RegistryOptions,
}

/// A manifest resolved to the node's platform.
#[derive(Clone, Debug)]
pub struct Resolved {
    /// The reference (possibly on a mirror) the manifest came from, pinned to the manifest digest.
    pub source: RegistryRef,
    /// Digest of the platform manifest.
    pub digest: Digest,
    /// Digest of the index, when the reference named one.
    pub index_digest: Option<Digest>,
    pub manifest: Manifest,
    /// The manifest bytes as served.
    pub raw: Vec<u8>,
}

/// Installs ring as rustls' process-wide crypto provider unless one is installed already.
pub fn ensure_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // A concurrent install by another thread is fine: either provider is ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// The `Docker-Content-Digest` header, when it names a sha256 digest.
fn header_digest(headers: &::http::HeaderMap) -> Option<String> {
    headers
        .get("Docker-Content-Digest")
        .and_then(|v| v.to_str().ok())
        .filter(|v| v.starts_with("sha256:"))
        .map(str::to_owned)
}

impl Registry {
    /// Builds the client (reads the CA files; the HTTP clients are made on first use).
    pub fn new(opts: &RegistryOptions) -> Result<Self, RegistryError> {
        ensure_crypto_provider();
        let mut extra_roots = Vec::new();
        for path in &opts.ca_files {
            let data = std::fs::read(path).map_err(|source| RegistryError::ReadCaFile {
                path: path.clone(),
                source,
            })?;
            extra_roots.push(data);
        }
        Ok(Self {
            reader: fetch::Reader::new(opts, extra_roots.clone()),
            oci: std::sync::OnceLock::new(),
            extra_roots,
            opts: opts.clone(),
        })
    }

    /// The oci-client client used for pushes, built on first use.
    fn oci(&self) -> Result<&Client, RegistryError> {
        if let Some(c) = self.oci.get() {
            return Ok(c);
        }
        let config = ClientConfig {
            protocol: if self.opts.insecure {
                ClientProtocol::Http
            } else {
                ClientProtocol::Https
            },
            accept_invalid_certificates: self.opts.insecure_skip_tls_verify,
            extra_root_certificates: self
                .extra_roots
                .iter()
                .map(|data| Certificate {
                    encoding: CertificateEncoding::Pem,
                    data: data.clone(),
                })
                .collect(),
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            user_agent: concat!("kmm-loader/", env!("CARGO_PKG_VERSION")),
            ..ClientConfig::default()
        };
        let client = Client::try_from(config).map_err(RegistryError::CreateClient)?;
        Ok(self.oci.get_or_init(|| client))
    }

    /// The options this client was built with.
    pub fn options(&self) -> &RegistryOptions {
        &self.opts
    }

    fn auth(&self, r: &RegistryRef) -> RegistryAuth {
        self.opts.credentials.lookup(&r.registry, &r.repository)
    }

    /// Runs `op` with retries and backoff for transient failures.
    async fn retry<T, F, Fut>(
        &self,
        operation: &'static str,
        image: &RegistryRef,
        mut op: F,
    ) -> Result<T, RegistryError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, OciDistributionError>>,
    {
        let attempts = self.opts.attempts.max(1);
        let mut delay = self.opts.backoff;
        let mut n = 0;
        loop {
            n += 1;
            match op().await {
                Ok(v) => return Ok(v),
                Err(source) => {
                    let kind = classify(&source);
                    if kind != FailureKind::Transient || n >= attempts {
                        return Err(RegistryError::Request {
                            operation,
                            image: image.to_string(),
                            attempts: n,
                            kind,
                            hint: kind.hint(),
                            source,
                        });
                    }
                    tracing::warn!(image = %image, attempt = n, error = %source, "transient registry failure, retrying in {delay:?}");
                    tokio::time::sleep(delay).await;
                    delay = delay.saturating_mul(2);
                }
            }
        }
    }

    /// Fetches the manifest bytes of `r`, checked against the reference's digest, else the registry's
    /// `Docker-Content-Digest` header (a mismatch is reported as corrupt content, not retried).
    async fn fetch_manifest(&self, r: &RegistryRef) -> Result<(Vec<u8>, Digest), RegistryError> {
        let accept = ACCEPTED_MANIFESTS.join(", ");
        let path = format!("manifests/{}", r.reference());
        let (bytes, digest) = self
            .retry("pull the manifest of", r, || async {
                let res = self.reader.pull(r, &path, Some(&accept)).await?;
                let header = header_digest(res.headers());
                let bytes = res.bytes().await?;
                let actual = Digest::of(&bytes);
                let expected = match (&r.digest, header) {
                    (Some(d), _) => Some(d.to_string()),
                    (None, h) => h,
                };
                match expected {
                    Some(e) if e != actual.as_str() => Err(OciDistributionError::DigestError(
                        DigestError::VerificationError {
                            expected: e,
                            actual: actual.to_string(),
                        },
                    )),
                    _ => Ok((bytes, actual)),
                }
            })
            .await?;
        Ok((bytes.to_vec(), digest))
    }

    /// Fetches the manifest of `r` from one registry (no mirrors) and resolves an index to the platform.
    pub async fn resolve_one(&self, r: &RegistryRef) -> Result<Resolved, RegistryError> {
        let (bytes, digest) = self.fetch_manifest(r).await?;
        let doc = Document::parse(&bytes, None).map_err(|reason| RegistryError::ParseManifest {
            image: r.to_string(),
            reason,
        })?;
        match doc {
            Document::Manifest(manifest) => Ok(Resolved {
                source: r.with_digest(digest.clone()),
                digest,
                index_digest: None,
                manifest,
                raw: bytes,
            }),
            Document::Index(index) => {
                let platform = &self.opts.platform;
                let entry =
                    index
                        .select(platform)
                        .ok_or_else(|| RegistryError::SelectPlatform {
                            image: r.to_string(),
                            platform: platform.to_string(),
                            available: index.platforms().join(", "),
                        })?;
                let child_digest =
                    Digest::parse(&entry.digest).map_err(|e| RegistryError::ParseManifest {
                        image: r.to_string(),
                        reason: e.to_string(),
                    })?;
                let child = r.with_digest(child_digest);
                let (cbytes, cdigest) = self.fetch_manifest(&child).await?;
                match Document::parse(&cbytes, None) {
                    Ok(Document::Manifest(manifest)) => Ok(Resolved {
                        source: child,
                        digest: cdigest,
                        index_digest: Some(digest),
                        manifest,
                        raw: cbytes,
                    }),
                    Ok(Document::Index(_)) => Err(RegistryError::ParseManifest {
                        image: r.to_string(),
                        reason: "nested index".to_owned(),
                    }),
                    Err(reason) => Err(RegistryError::ParseManifest {
                        image: r.to_string(),
                        reason,
                    }),
                }
            }
        }
    }

    /// Streams a blob, checking its size and digest; `sink` gets every chunk. The digest is checked at the
    /// end, so the caller must discard what `sink` built when this fails (e2e `image_errors` corrupts a stored
    /// blob). A `Docker-Content-Digest` header naming another sha256 digest fails at once.
    pub async fn stream_blob<S: BlobSink>(
        &self,
        r: &RegistryRef,
        desc: &Descriptor,
        sink: &mut S,
    ) -> Result<(), RegistryError> {
        use sha2::Digest as _;
        let verify = |expected: &str, actual: String| RegistryError::VerifyDigest {
            image: r.to_string(),
            what: format!("blob {}", desc.digest),
            expected: expected.to_owned(),
            actual,
        };
        let expected =
            Digest::parse(&desc.digest).map_err(|e| verify(&desc.digest, e.to_string()))?;
        let path = format!("blobs/{}", desc.digest);
        let mut res = self
            .retry("pull a blob of", r, || self.reader.pull(r, &path, None))
            .await?;
        if let Some(h) = header_digest(res.headers())
            && h != desc.digest
        {
            return Err(verify(&desc.digest, format!("{h} (the registry's header)")));
        }
        let mut hasher = sha2::Sha256::new();
        let mut size: u64 = 0;
        loop {
            let chunk = res.chunk().await.map_err(|e| RegistryError::Request {
                operation: "pull a blob of",
                image: r.to_string(),
                attempts: 1,
                kind: FailureKind::Transient,
                hint: FailureKind::Transient.hint(),
                source: OciDistributionError::RequestError(e),
            })?;
            let Some(chunk) = chunk else { break };
            size += chunk.len() as u64;
            if size > desc.size {
                return Err(verify(
                    &format!("{} ({} bytes)", desc.digest, desc.size),
                    format!("more than {} bytes", desc.size),
                ));
            }
            hasher.update(&chunk);
            sink.write(chunk)
                .await
                .map_err(|e| RegistryError::Request {
                    operation: "store a blob of",
                    image: r.to_string(),
                    attempts: 1,
                    kind: FailureKind::Other,
                    hint: FailureKind::Other.hint(),
                    source: OciDistributionError::IoError(e),
                })?;
        }
        if size != desc.size {
            return Err(verify(
                &format!("{} ({} bytes)", desc.digest, desc.size),
                format!("{size} bytes"),
            ));
        }
        let actual = Digest::from_hasher(hasher);
        if actual != expected {
            return Err(verify(&desc.digest, actual.to_string()));
        }
        Ok(())
    }

    /// Fetches a small blob (a config) into memory, verified.
    pub async fn fetch_blob(
        &self,
        r: &RegistryRef,
        desc: &Descriptor,
    ) -> Result<Vec<u8>, RegistryError> {
        let mut out = Vec::with_capacity(usize::try_from(desc.size.min(64 << 20)).unwrap_or(0));
        self.stream_blob(r, desc, &mut out).await?;
        Ok(out)
    }

    /// Authenticates for pushing to `r`'s repository.
    pub async fn auth_push(&self, r: &RegistryRef) -> Result<(), RegistryError> {
        let oref = r.to_oci();
        let auth = self.auth(r);
        let oci = self.oci()?;
        self.retry("authenticate for pushing", r, || {
            oci.auth(&oref, &auth, RegistryOperation::Push)
        })
        .await?;
        Ok(())
    }

    /// True when the blob is present in `r`'s repository.
    pub async fn blob_exists(&self, r: &RegistryRef, digest: &str) -> Result<bool, RegistryError> {
        let oref = r.to_oci();
        let oci = self.oci()?;
        self.retry("check a blob of", r, || oci.blob_exists(&oref, digest))
            .await
    }

    /// Uploads a blob to `r`'s repository unless it is there already.
    pub async fn push_blob(
        &self,
        r: &RegistryRef,
        data: Vec<u8>,
        digest: &str,
    ) -> Result<(), RegistryError> {
        if self.blob_exists(r, digest).await? {
            return Ok(());
        }
        let oref = r.to_oci();
        let oci = self.oci()?;
        self.retry("push a blob to", r, || {
            oci.push_blob(&oref, data.clone(), digest)
        })
        .await?;
        Ok(())
    }

    /// Makes blob `desc` of `from` available in `to`'s repository: nothing when present, a cross-repository
    /// mount on the same registry, else a verified copy.
    pub async fn copy_blob(
        &self,
        from: &RegistryRef,
        to: &RegistryRef,
        desc: &Descriptor,
    ) -> Result<(), RegistryError> {
        if self.blob_exists(to, &desc.digest).await? {
            return Ok(());
        }
        if from.registry == to.registry {
            let (oto, ofrom) = (to.to_oci(), from.to_oci());
            if self
                .oci()?
                .mount_blob(&oto, &ofrom, &desc.digest)
                .await
                .is_ok()
                && self.blob_exists(to, &desc.digest).await?
            {
                return Ok(());
            }
        }
        let data = self.fetch_blob(from, desc).await?;
        self.push_blob(to, data, &desc.digest).await
    }

    /// Uploads a manifest under `r`'s tag (or digest); returns its digest.
    pub async fn push_manifest(
        &self,
        r: &RegistryRef,
        raw: Vec<u8>,
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        let oref = r.to_oci();
        let ct = ::http::HeaderValue::from_str(media_type).map_err(|e| {
            RegistryError::ParseManifest {
                image: r.to_string(),
                reason: e.to_string(),
            }
        })?;
        let digest = Digest::of(&raw);
        let oci = self.oci()?;
        self.retry("push the manifest of", r, || {
            oci.push_manifest_raw(&oref, raw.clone(), ct.clone())
        })
        .await?;
        Ok(digest)
    }
}
