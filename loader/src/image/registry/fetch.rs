//! The read side of the distribution protocol (GET of manifests and blobs) over reqwest, with the registry's
//! authentication learnt once per host instead of once per request.
//!
//! oci-client probes `GET /v2/` before every request of an anonymous pull (its token cache only remembers
//! tokens, so "no authentication needed" is never remembered), and building its client loads the system's
//! CA roots twice (a second reqwest client is built for its `Default` fields). Here:
//! - without credentials for the registry, requests go out anonymously; a `401` challenge (`Bearer` with a
//!   realm: an anonymous token is fetched, as Docker Hub wants; `Basic`: nothing to send) is remembered for the
//!   host and the request is sent once more;
//! - with credentials, the first request to a host probes `/v2/` once (as oci-client and containerd do, so
//!   registries that answer `404` to anonymous requests for private repositories still get credentials) and
//!   the answer is kept: `Basic` credentials are then sent with every request, `Bearer` tokens are fetched
//!   once per repository scope and reused; a token pull secret (`registrytoken`) is sent as it is;
//! - plain-HTTP URLs use a client without any trust roots, an HTTPS URL a client holding the system's roots
//!   (and the extra CA files), built once on first use; redirects (blob storage, often on another host) are
//!   followed here, choosing the client by the target's scheme, without credentials for another host.
//!
//! Errors are oci-client's [`OciDistributionError`] variants, as its own requests produce them, so
//! [`super::classify`] serves both sides.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use oci_client::errors::{OciDistributionError, OciEnvelope};
use oci_client::secrets::RegistryAuth;
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue, LOCATION, WWW_AUTHENTICATE};
use reqwest::{Client, Response, StatusCode, Url};

use super::RegistryOptions;
use crate::image::reference::RegistryRef;

/// Redirects followed at most for one request.
const MAX_REDIRECTS: usize = 10;

/// How a registry host wants to be authenticated, as learnt from its challenge.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Scheme {
    /// No challenge: requests go out as they are.
    Open,
    /// `Basic`: the credentials go with every request.
    Basic,
    /// `Bearer`: a token from `realm` for each repository scope.
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

/// Parses a `WWW-Authenticate` header; a Bearer challenge wins over others offered alongside.
fn parse_challenge(value: &HeaderValue) -> Option<Scheme> {
    let text = value.to_str().ok()?;
    let mut basic = false;
    for c in http_auth::ChallengeParser::new(text).flatten() {
        if c.scheme.eq_ignore_ascii_case("bearer") {
            let mut realm = None;
            let mut service = None;
            for (k, v) in &c.params {
                if k.eq_ignore_ascii_case("realm") {
                    realm = Some(v.to_unescaped());
                } else if k.eq_ignore_ascii_case("service") {
                    service = Some(v.to_unescaped());
                }
            }
            return realm.map(|realm| Scheme::Bearer { realm, service });
        }
        basic |= c.scheme.eq_ignore_ascii_case("basic");
    }
    basic.then_some(Scheme::Basic)
}

/// The body of a token endpoint's answer (`token`, or OAuth2's `access_token`).
#[derive(serde::Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// Maps an unsuccessful answer to an error the way oci-client does (an error envelope, else the status).
pub(super) fn status_error(status: StatusCode, body: &[u8], url: &str) -> OciDistributionError {
    if status == StatusCode::UNAUTHORIZED {
        return OciDistributionError::UnauthorizedError {
            url: url.to_owned(),
        };
    }
    if status.is_client_error()
        && let Ok(envelope) = serde_json::from_slice::<OciEnvelope>(body)
    {
        return OciDistributionError::RegistryError {
            envelope,
            url: url.to_owned(),
        };
    }
    OciDistributionError::ServerError {
        code: status.as_u16(),
        url: url.to_owned(),
        message: String::from_utf8_lossy(body).into_owned(),
    }
}

/// Reads the manifests and blobs of registries.
pub(super) struct Reader {
    opts: RegistryOptions,
    /// The extra CA bundles (PEM), read when the registry client was made.
    extra_roots: Vec<Vec<u8>>,
    plain: OnceLock<Client>,
    tls: OnceLock<Client>,
    /// What each host asked for (`host[:port]`).
    schemes: Mutex<HashMap<String, Scheme>>,
    /// Bearer tokens by (host, scope).
    tokens: Mutex<HashMap<(String, String), String>>,
}

impl Reader {
    pub(super) fn new(opts: &RegistryOptions, extra_roots: Vec<Vec<u8>>) -> Self {
        Self {
            opts: opts.clone(),
            extra_roots,
            plain: OnceLock::new(),
            tls: OnceLock::new(),
            schemes: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        }
    }

    fn builder() -> reqwest::ClientBuilder {
        Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(Duration::from_secs(10))
            .read_timeout(Duration::from_secs(60))
            .user_agent(concat!("kmm-loader/", env!("CARGO_PKG_VERSION")))
    }

    /// The client for `url`'s scheme, built on first use: only HTTPS needs trust roots.
    fn client(&self, url: &Url) -> Result<&Client, OciDistributionError> {
        let https = url.scheme() == "https";
        let cell = if https { &self.tls } else { &self.plain };
        if let Some(c) = cell.get() {
            return Ok(c);
        }
        let b = Self::builder();
        let b = if !https {
            // Never used for HTTPS (redirects are followed by `send`, picking the client by scheme): no roots.
            b.tls_certs_only([])
        } else if self.opts.insecure_skip_tls_verify {
            b.danger_accept_invalid_certs(true)
        } else {
            let mut extra = Vec::new();
            for pem in &self.extra_roots {
                extra.extend(reqwest::Certificate::from_pem_bundle(pem)?);
            }
            b.tls_certs_merge(extra)
        };
        let c = b.build()?;
        Ok(cell.get_or_init(|| c))
    }

    fn scheme(&self, host: &str) -> Option<Scheme> {
        self.schemes.lock().ok()?.get(host).cloned()
    }

    fn learn(&self, host: &str, scheme: Scheme) {
        if let Ok(mut m) = self.schemes.lock() {
            m.insert(host.to_owned(), scheme);
        }
    }

    fn cached_token(&self, host: &str, scope: &str) -> Option<String> {
        self.tokens
            .lock()
            .ok()?
            .get(&(host.to_owned(), scope.to_owned()))
            .cloned()
    }

    /// The registry URL prefix of a host (`http[s]://host/v2/`).
    fn base(&self, host: &str) -> String {
        let scheme = if self.opts.insecure { "http" } else { "https" };
        format!("{scheme}://{host}/v2/")
    }

    /// Sends a GET, following redirects (credentials only go to `host`). Returns the final answer.
    async fn get(
        &self,
        url: &str,
        host: &str,
        accept: Option<&str>,
        auth: Option<&HeaderValue>,
    ) -> Result<Response, OciDistributionError> {
        let mut url =
            Url::parse(url).map_err(|e| OciDistributionError::UrlParseError(e.to_string()))?;
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self.client(&url)?.get(url.clone());
            if let Some(a) = accept {
                req = req.header(ACCEPT, a);
            }
            if same_authority(&url, host)
                && let Some(a) = auth
            {
                req = req.header(AUTHORIZATION, a.clone());
            }
            let res = req.send().await?;
            if !res.status().is_redirection() {
                return Ok(res);
            }
            let Some(next) = res
                .headers()
                .get(LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url.join(l).ok())
            else {
                return Ok(res);
            };
            url = next;
        }
        Err(OciDistributionError::GenericError(Some(format!(
            "more than {MAX_REDIRECTS} redirects from {url}"
        ))))
    }

    /// Fetches a bearer token for `scope` from the challenge's realm (with the basic credentials, if any).
    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        creds: &RegistryAuth,
    ) -> Result<String, OciDistributionError> {
        let mut url =
            Url::parse(realm).map_err(|e| OciDistributionError::UrlParseError(e.to_string()))?;
        url.query_pairs_mut().append_pair("scope", scope);
        if let Some(s) = service {
            url.query_pairs_mut().append_pair("service", s);
        }
        let mut req = self.client(&url)?.get(url.clone());
        if let RegistryAuth::Basic(u, p) = creds {
            req = req.basic_auth(u, Some(p));
        }
        let res = req.send().await?;
        let status = res.status();
        let body = res.bytes().await?;
        if status != StatusCode::OK {
            return Err(OciDistributionError::AuthenticationFailure(
                String::from_utf8_lossy(&body).into_owned(),
            ));
        }
        let t: TokenAnswer = serde_json::from_slice(&body)
            .map_err(|e| OciDistributionError::RegistryTokenDecodeError(e.to_string()))?;
        t.token.or(t.access_token).ok_or_else(|| {
            OciDistributionError::RegistryTokenDecodeError("no token in the answer".to_owned())
        })
    }

    /// The Authorization header for a request to `host` in `scope` under `scheme`.
    async fn authorization(
        &self,
        host: &str,
        scope: &str,
        scheme: &Scheme,
        creds: &RegistryAuth,
    ) -> Result<Option<HeaderValue>, OciDistributionError> {
        let header = |s: String| {
            HeaderValue::from_str(&s)
                .map_err(|_| OciDistributionError::GenericError(Some("invalid credentials".into())))
        };
        match (scheme, creds) {
            (_, RegistryAuth::Bearer(token)) => header(format!("Bearer {token}")).map(Some),
            (Scheme::Open, _) | (Scheme::Basic, RegistryAuth::Anonymous) => Ok(None),
            (Scheme::Basic, RegistryAuth::Basic(u, p)) => {
                use base64::Engine as _;
                let b = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
                header(format!("Basic {b}")).map(Some)
            }
            (Scheme::Bearer { realm, service }, _) => {
                let token = match self.cached_token(host, scope) {
                    Some(t) => t,
                    None => {
                        let t = self
                            .fetch_token(realm, service.as_deref(), scope, creds)
                            .await?;
                        if let Ok(mut m) = self.tokens.lock() {
                            m.insert((host.to_owned(), scope.to_owned()), t.clone());
                        }
                        t
                    }
                };
                header(format!("Bearer {token}")).map(Some)
            }
        }
    }

    /// GETs `path` (below `/v2/`) of `reference`'s registry with its pull authorization; a successful
    /// (2xx) answer, or the registry's error.
    pub(super) async fn pull(
        &self,
        r: &RegistryRef,
        path: &str,
        accept: Option<&str>,
    ) -> Result<Response, OciDistributionError> {
        let reference = r.to_oci();
        let host = reference.resolve_registry().to_owned();
        let repository = reference.repository();
        let creds = self.opts.credentials.lookup(&r.registry, &r.repository);
        let scope = format!("repository:{repository}:pull");
        let url = format!("{}{repository}/{path}", self.base(&host));
        let mut scheme = self.scheme(&host);
        if scheme.is_none() && matches!(creds, RegistryAuth::Basic(..)) {
            // Credentials to offer: ask the registry how, once.
            let probe = self.base(&host);
            let res = self.get(&probe, &host, None, None).await?;
            let s = res
                .headers()
                .get(WWW_AUTHENTICATE)
                .and_then(parse_challenge)
                .unwrap_or(Scheme::Open);
            self.learn(&host, s.clone());
            scheme = Some(s);
        }
        let mut scheme = scheme.unwrap_or(Scheme::Open);
        let mut retried = false;
        loop {
            let auth = self.authorization(&host, &scope, &scheme, &creds).await?;
            let res = self.get(&url, &host, accept, auth.as_ref()).await?;
            let status = res.status();
            if status.is_success() {
                return Ok(res);
            }
            if status == StatusCode::UNAUTHORIZED
                && !retried
                && !matches!(creds, RegistryAuth::Bearer(_))
                && let Some(s) = res
                    .headers()
                    .get(WWW_AUTHENTICATE)
                    .and_then(parse_challenge)
            {
                // Learnt now, or the token went stale: ask again once.
                if let Ok(mut m) = self.tokens.lock() {
                    m.remove(&(host.clone(), scope.clone()));
                }
                self.learn(&host, s.clone());
                let worth_it = match &s {
                    Scheme::Bearer { .. } => true,
                    Scheme::Basic => matches!(creds, RegistryAuth::Basic(..)) && scheme != s,
                    Scheme::Open => false,
                };
                if worth_it {
                    scheme = s;
                    retried = true;
                    continue;
                }
            }
            let body = res.bytes().await.unwrap_or_default();
            return Err(status_error(status, &body, &url));
        }
    }
}

/// Whether `url` goes to the registry `host` (`host[:port]`, the port defaulting to the URL scheme's).
fn same_authority(url: &Url, host: &str) -> bool {
    Url::parse(&format!("{}://{host}/", url.scheme())).is_ok_and(|h| {
        h.host_str() == url.host_str() && h.port_or_known_default() == url.port_or_known_default()
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn challenges() {
        let h = |s: &str| HeaderValue::from_str(s).unwrap();
        assert_eq!(
            parse_challenge(&h(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#
            )),
            Some(Scheme::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into())
            })
        );
        assert_eq!(
            parse_challenge(&h(r#"Basic realm="Registry Realm""#)),
            Some(Scheme::Basic)
        );
        assert_eq!(
            parse_challenge(&h(r#"Basic realm="x", Bearer realm="http://t/token""#)),
            Some(Scheme::Bearer {
                realm: "http://t/token".into(),
                service: None
            })
        );
        // A Bearer challenge without a realm cannot be followed.
        assert_eq!(parse_challenge(&h(r#"Bearer service="s""#)), None);
        assert_eq!(parse_challenge(&h("Negotiate")), None);
    }

    #[test]
    fn credentials_only_go_to_the_registry_host() {
        let u = |s: &str| Url::parse(s).unwrap();
        assert!(same_authority(
            &u("https://reg.example/v2/x"),
            "reg.example"
        ));
        assert!(same_authority(
            &u("https://reg.example/v2/x"),
            "reg.example:443"
        ));
        assert!(same_authority(
            &u("http://127.0.0.1:5000/v2/"),
            "127.0.0.1:5000"
        ));
        assert!(!same_authority(
            &u("http://127.0.0.1:5001/v2/"),
            "127.0.0.1:5000"
        ));
        assert!(!same_authority(
            &u("https://s3.example/blob"),
            "reg.example"
        ));
    }

    #[test]
    fn unsuccessful_answers_map_like_oci_client() {
        let e = status_error(StatusCode::UNAUTHORIZED, b"", "u");
        assert!(matches!(e, OciDistributionError::UnauthorizedError { .. }));
        let e = status_error(
            StatusCode::NOT_FOUND,
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
            "u",
        );
        assert!(matches!(e, OciDistributionError::RegistryError { .. }));
        let e = status_error(StatusCode::BAD_GATEWAY, b"down", "u");
        assert!(matches!(
            e,
            OciDistributionError::ServerError { code: 502, .. }
        ));
    }
}
