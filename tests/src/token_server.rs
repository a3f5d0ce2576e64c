//! A Docker registry token server (the "bearer token" flow of the distribution spec) for the image tests.
//!
//! `GET /token?service=S&scope=repository:NAME:pull,push` with HTTP basic credentials answers
//! `{"token": JWT, "access_token": JWT, "expires_in": 300}`; the JWT is signed ES256 with a test key whose
//! self-signed certificate (made with `openssl`) is the registry's `auth.token.rootcertbundle`, and carries that
//! certificate in its `x5c` header, as distribution's token verifier expects. Wrong or missing credentials get
//! 401. The server binds 127.0.0.1 port 0, serves on one thread with bounded reads, and stops when dropped or
//! after ten minutes, whichever comes first.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

use crate::cmd;

/// The `service` the registry and the tokens name.
pub const SERVICE: &str = "kmm-test-registry";
/// The token `iss`.
pub const ISSUER: &str = "kmm-test-token-server";
const LIFETIME: Duration = Duration::from_secs(600);

/// Errors of the token server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Command(#[from] cmd::Error),
    #[error("failed to {what}")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("failed to load the token signing key: {0}")]
    Key(String),
}

fn io_err(what: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::Io { what, source }
}

/// What the server saw, for assertions.
#[derive(Debug, Default, Clone)]
pub struct Requests {
    /// Tokens issued, with the scopes granted.
    pub issued: Vec<String>,
    /// Requests refused for missing or wrong credentials.
    pub refused: usize,
}

struct Shared {
    user: String,
    password: String,
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    stop: AtomicBool,
    requests: Mutex<Requests>,
    jti: AtomicUsize,
}

/// A running token server; stops on drop.
pub struct TokenServer {
    /// `http://127.0.0.1:PORT/token`.
    pub realm: String,
    /// The signing certificate (PEM): the registry's `rootcertbundle`.
    pub cert_file: PathBuf,
    addr: String,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

fn pem_body(pem: &str) -> Result<Vec<u8>, Error> {
    let b64: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    STANDARD
        .decode(b64.trim())
        .map_err(|e| Error::Key(e.to_string()))
}

impl TokenServer {
    /// Starts a server that accepts `user`/`password`.
    pub fn start(user: &str, password: &str) -> Result<Self, Error> {
        let dir = tempfile::Builder::new()
            .prefix("kmm-token-")
            .tempdir()
            .map_err(io_err("create the token server directory"))?;
        let d = dir.path();
        cmd::run(
            Command::new(cmd::require("openssl")?)
                .current_dir(d)
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
                .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
                .args(["-subj", "/CN=kmm-test-token-signer"])
                .args(["-keyout", "token.key", "-out", "token.crt"]),
        )?;
        let key_pem =
            std::fs::read_to_string(d.join("token.key")).map_err(io_err("read token.key"))?;
        let cert_pem =
            std::fs::read_to_string(d.join("token.crt")).map_err(io_err("read token.crt"))?;
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            &pem_body(&key_pem)?,
            &SystemRandom::new(),
        )
        .map_err(|e| Error::Key(e.to_string()))?;
        let listener = TcpListener::bind("127.0.0.1:0").map_err(io_err("bind the token server"))?;
        listener
            .set_nonblocking(true)
            .map_err(io_err("configure the listener"))?;
        let addr = listener
            .local_addr()
            .map_err(io_err("read the token server address"))?
            .to_string();
        let shared = Arc::new(Shared {
            user: user.to_owned(),
            password: password.to_owned(),
            key,
            cert_der: pem_body(&cert_pem)?,
            stop: AtomicBool::new(false),
            requests: Mutex::new(Requests::default()),
            jti: AtomicUsize::new(0),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("kmm-token-server".into())
            .spawn(move || serve(&listener, &s))
            .map_err(io_err("start the token server thread"))?;
        Ok(Self {
            realm: format!("http://{addr}/token"),
            cert_file: d.join("token.crt"),
            addr,
            shared,
            thread: Some(thread),
            _dir: dir,
        })
    }

    /// The `auth:` section of a registry config using this server.
    pub fn registry_auth_config(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.realm,
            self.cert_file.display()
        )
    }

    /// What was requested so far.
    pub fn requests(&self) -> Requests {
        self.shared
            .requests
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default()
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> &str {
        &self.addr
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn serve(listener: &TcpListener, shared: &Shared) {
    let deadline = Instant::now() + LIFETIME;
    while !shared.stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        match listener.accept() {
            Ok((stream, _)) => {
                let _ = handle(stream, shared);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Reads one request head (bounded), answers, closes.
fn handle(stream: TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.set_write_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new((&stream).take(16 << 10));
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    let mut auth = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            auth = Some(value.trim().to_owned());
        }
    }
    let target = request_line.split_whitespace().nth(1).unwrap_or("");
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let (status, body) = if path != "/token" {
        (
            "404 Not Found",
            r#"{"errors":[{"code":"NOT_FOUND"}]}"#.to_owned(),
        )
    } else if !credentials_ok(auth.as_deref(), shared) {
        if let Ok(mut r) = shared.requests.lock() {
            r.refused += 1;
        }
        (
            "401 Unauthorized",
            r#"{"errors":[{"code":"UNAUTHORIZED","message":"wrong user name or password"}]}"#
                .to_owned(),
        )
    } else {
        let scopes: Vec<String> = query
            .split('&')
            .filter_map(|kv| kv.strip_prefix("scope="))
            .map(percent_decode)
            .collect();
        match token(shared, &scopes) {
            Some(t) => {
                if let Ok(mut r) = shared.requests.lock() {
                    r.issued.push(scopes.join(" "));
                }
                (
                    "200 OK",
                    serde_json::json!({"token": t, "access_token": t, "expires_in": 300})
                        .to_string(),
                )
            }
            None => (
                "500 Internal Server Error",
                r#"{"errors":[{"code":"UNKNOWN"}]}"#.to_owned(),
            ),
        }
    };
    let mut w = &stream;
    write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{}\r\n{body}",
        body.len(),
        if status.starts_with("401") {
            "WWW-Authenticate: Basic realm=\"kmm-test-token\"\r\n"
        } else {
            ""
        }
    )?;
    w.flush()
}

fn credentials_ok(auth: Option<&str>, shared: &Shared) -> bool {
    let Some(b64) = auth.and_then(|a| a.strip_prefix("Basic ")) else {
        return false;
    };
    let Ok(raw) = STANDARD.decode(b64.trim()) else {
        return false;
    };
    raw == format!("{}:{}", shared.user, shared.password).as_bytes()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |c: u8| char::from(c).to_digit(16);
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
            continue;
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The `access` claim for `repository:NAME:ACTIONS` scopes (everything asked is granted to a valid user).
fn access(scopes: &[String]) -> serde_json::Value {
    let mut v = Vec::new();
    for scope in scopes.iter().flat_map(|s| s.split(' ')) {
        let mut parts = scope.rsplitn(2, ':');
        let (Some(actions), Some(rest)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Some((kind, name)) = rest.split_once(':') else {
            continue;
        };
        v.push(serde_json::json!({
            "type": kind, "name": name,
            "actions": actions.split(',').collect::<Vec<_>>(),
        }));
    }
    serde_json::Value::Array(v)
}

fn token(shared: &Shared, scopes: &[String]) -> Option<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
    let header = serde_json::json!({
        "typ": "JWT", "alg": "ES256", "x5c": [STANDARD.encode(&shared.cert_der)],
    });
    let claims = serde_json::json!({
        "iss": ISSUER, "sub": shared.user, "aud": SERVICE,
        "exp": now + 300, "nbf": now.saturating_sub(10), "iat": now,
        "jti": format!("kmm-{}", shared.jti.fetch_add(1, Ordering::Relaxed)),
        "access": access(scopes),
    });
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let sig = shared
        .key
        .sign(&SystemRandom::new(), signing_input.as_bytes())
        .ok()?;
    Some(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(sig.as_ref())
    ))
}
