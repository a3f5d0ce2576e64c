//! A real OCI registry for the image tests: Debian's `docker-registry` (CNCF distribution) started on
//! 127.0.0.1 with a free port and temporary storage, in plain HTTP or with TLS (a test CA made with `openssl`)
//! and htpasswd bcrypt basic auth (`htpasswd -Bbn`). Also: `skopeo` as the independent client, an OCI image
//! layout writer for test images, and a tar writer that can express hostile entries.

use std::fs;
use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::cmd;

/// Errors of the registry helpers.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Command(#[from] cmd::Error),
    #[error("failed to {what}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("docker-registry did not become ready on {addr}: {log}")]
    NotReady { addr: String, log: String },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
    let what = what.into();
    move |source| Error::Io { what, source }
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// A running `docker-registry`, stopped on drop.
pub struct RegistryServer {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// `(user, password)` when htpasswd auth is on.
    pub creds: Option<(String, String)>,
    /// Directory holding `ca.crt` (skopeo's `--cert-dir`) when TLS is on.
    pub cert_dir: Option<PathBuf>,
}

fn free_port() -> Result<u16, Error> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(io_err("bind a free port"))?;
    Ok(l.local_addr().map_err(io_err("read the port"))?.port())
}

impl RegistryServer {
    /// Plain HTTP, no auth.
    pub fn start_plain() -> Result<Self, Error> {
        Self::start(false, None, None)
    }

    /// Plain HTTP with the bearer-token flow: `token` issues the tokens and checks `user`/`password`
    /// (kept here for skopeo's flags and [`Self::pull_secret`]).
    pub fn start_token_auth(
        token: &crate::token_server::TokenServer,
        user: &str,
        password: &str,
    ) -> Result<Self, Error> {
        Self::start(
            false,
            Some((user.to_owned(), password.to_owned())),
            Some(token.registry_auth_config()),
        )
    }

    /// TLS with a fresh test CA, and htpasswd (bcrypt) basic auth for `user`/`password`.
    pub fn start_tls_auth(user: &str, password: &str) -> Result<Self, Error> {
        Self::start(true, Some((user.to_owned(), password.to_owned())), None)
    }

    fn start(
        tls: bool,
        creds: Option<(String, String)>,
        token_auth: Option<String>,
    ) -> Result<Self, Error> {
        let bin = cmd::require("docker-registry")?;
        let dir = tempfile::Builder::new()
            .prefix("kmm-registry-")
            .tempdir()
            .map_err(io_err("create the registry directory"))?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let d = dir.path();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            d.join("data").display()
        );
        let mut cert_dir = None;
        if tls {
            make_tls(d)?;
            config.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                d.join("server.crt").display(),
                d.join("server.key").display()
            ));
            let cdir = d.join("certs");
            fs::create_dir_all(&cdir).map_err(io_err("create the cert dir"))?;
            fs::copy(d.join("ca.crt"), cdir.join("ca.crt")).map_err(io_err("copy ca.crt"))?;
            cert_dir = Some(cdir);
        }
        if let Some(auth) = &token_auth {
            config.push_str(auth);
        } else if let Some((u, p)) = &creds {
            let line = cmd::stdout(Command::new(cmd::require("htpasswd")?).args(["-Bbn", u, p]))?;
            fs::write(d.join("htpasswd"), line.trim()).map_err(io_err("write htpasswd"))?;
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kmm-test\n    path: {}\n",
                d.join("htpasswd").display()
            ));
        }
        fs::write(d.join("config.yml"), config).map_err(io_err("write config.yml"))?;
        let log =
            fs::File::create(d.join("registry.log")).map_err(io_err("create registry.log"))?;
        let log2 = log.try_clone().map_err(io_err("clone the log handle"))?;
        let child = Command::new(bin)
            .args(["serve"])
            .arg(d.join("config.yml"))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(io_err("start docker-registry"))?;
        let mut s = Self {
            child: Some(child),
            dir,
            addr,
            creds,
            cert_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if TcpStream::connect(&s.addr).is_ok() {
                return Ok(s);
            }
            if let Some(c) = s.child.as_mut()
                && let Ok(Some(_)) = c.try_wait()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = s.log();
        s.stop();
        Err(Error::NotReady {
            addr: s.addr.clone(),
            log,
        })
    }

    /// The registry's log (access log included).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// Number of GET requests for blobs served so far (from the access log).
    pub fn blob_gets(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains("/blobs/sha256:"))
            .count()
    }

    /// The storage root (`docker/registry/v2/...`), for corrupting content in tests.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("data/docker/registry/v2")
    }

    /// Path of a blob's data file in the storage.
    pub fn blob_file(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.storage()
            .join("blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// Stops the registry (for "registry down" tests); idempotent.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The CA certificate file (TLS only).
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.cert_dir.as_ref().map(|d| d.join("ca.crt"))
    }

    /// A `.dockerconfigjson` for this registry with `user:password` (written into the registry's dir).
    pub fn pull_secret(&self, user: &str, password: &str) -> Result<PathBuf, Error> {
        let auth = base64_encode(format!("{user}:{password}").as_bytes());
        let json = serde_json::json!({"auths": {self.addr.clone(): {"auth": auth}}});
        let path = self
            .dir
            .path()
            .join(format!("pull-secret-{user}-{}.json", password.len()));
        fs::write(&path, json.to_string()).map_err(io_err("write the pull secret"))?;
        Ok(path)
    }

    /// skopeo TLS/auth flags for this registry, `side` being `src`, `dest` or empty (inspect).
    pub fn skopeo_flags(&self, side: &str) -> Vec<String> {
        let p = if side.is_empty() {
            String::new()
        } else {
            format!("{side}-")
        };
        let mut v = Vec::new();
        match &self.cert_dir {
            Some(d) => v.push(format!("--{p}cert-dir={}", d.display())),
            None => v.push(format!("--{p}tls-verify=false")),
        }
        if let Some((u, pw)) = &self.creds {
            v.push(format!("--{p}creds={u}:{pw}"));
        }
        v
    }
}

impl Drop for RegistryServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn base64_encode(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let b = [c[0], *c.get(1).unwrap_or(&0), *c.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= c.len() {
                out.push(char::from(T[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// A test CA and a server certificate for IP 127.0.0.1, made with the openssl CLI.
fn make_tls(d: &Path) -> Result<(), Error> {
    let openssl = cmd::require("openssl")?;
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    cmd::run(
        Command::new(&openssl)
            .current_dir(d)
            .args(["req", "-x509"])
            .args(ec)
            .args([
                "-days",
                "2",
                "-subj",
                "/CN=kmm-test-ca",
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
            ])
            .args([
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ]),
    )?;
    cmd::run(
        Command::new(&openssl)
            .current_dir(d)
            .arg("req")
            .args(ec)
            .args([
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ]),
    )?;
    fs::write(
        d.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .map_err(io_err("write server.ext"))?;
    cmd::run(Command::new(&openssl).current_dir(d).args([
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]))?;
    Ok(())
}

/// Runs skopeo with `args`, returning stdout.
pub fn skopeo<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Result<String, Error> {
    Ok(cmd::stdout(
        Command::new(cmd::require("skopeo")?).args(args),
    )?)
}

/// Builds a tar layer with raw (unchecked) names, so hostile entries can be written too.
pub struct RawTar(Option<tar::Builder<Vec<u8>>>);

impl Default for RawTar {
    fn default() -> Self {
        Self::new()
    }
}

impl RawTar {
    pub fn new() -> Self {
        Self(Some(tar::Builder::new(Vec::new())))
    }
    fn entry(
        &mut self,
        path: &str,
        kind: tar::EntryType,
        link: &str,
        mode: u32,
        data: &[u8],
    ) -> &mut Self {
        let mut h = tar::Header::new_gnu();
        if let Some(g) = h.as_gnu_mut() {
            g.name[..path.len()].copy_from_slice(path.as_bytes());
            g.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(data.len() as u64);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        if let Some(b) = self.0.as_mut() {
            // Appending to a Vec cannot fail.
            let _ = b.append(&h, data);
        }
        self
    }
    pub fn file(&mut self, path: &str, data: &[u8]) -> &mut Self {
        self.entry(path, tar::EntryType::Regular, "", 0o644, data)
    }
    pub fn file_mode(&mut self, path: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.entry(path, tar::EntryType::Regular, "", mode, data)
    }
    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.entry(path, tar::EntryType::Directory, "", 0o755, b"")
    }
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(path, tar::EntryType::Symlink, target, 0o777, b"")
    }
    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.entry(path, tar::EntryType::Link, target, 0o644, b"")
    }
    pub fn chardev(&mut self, path: &str) -> &mut Self {
        self.entry(path, tar::EntryType::Char, "", 0o644, b"")
    }
    pub fn finish(&mut self) -> Vec<u8> {
        self.0
            .take()
            .and_then(|b| b.into_inner().ok())
            .unwrap_or_default()
    }
}

/// gzip of `data`.
pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let _ = e.write_all(data);
    e.finish().unwrap_or_default()
}

/// One platform image for [`write_oci_layout`]: uncompressed tar layers, gzip-compressed when written.
#[derive(Clone, Debug)]
pub struct TestImage {
    pub architecture: String,
    pub layers: Vec<Vec<u8>>,
}

impl TestImage {
    pub fn amd64(layers: Vec<Vec<u8>>) -> Self {
        Self {
            architecture: "amd64".to_owned(),
            layers,
        }
    }
}

fn put_blob(dir: &Path, bytes: &[u8]) -> Result<(String, usize), Error> {
    let d = digest(bytes);
    let p = dir
        .join("blobs/sha256")
        .join(d.trim_start_matches("sha256:"));
    fs::create_dir_all(dir.join("blobs/sha256")).map_err(io_err("create blobs dir"))?;
    fs::write(&p, bytes).map_err(io_err(format!("write {}", p.display())))?;
    Ok((d, bytes.len()))
}

fn put_image(dir: &Path, img: &TestImage) -> Result<serde_json::Value, Error> {
    let mut layers = Vec::new();
    let mut diff_ids = Vec::new();
    for l in &img.layers {
        diff_ids.push(digest(l));
        let (d, size) = put_blob(dir, &gzip(l))?;
        layers.push(serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": size}));
    }
    let config = serde_json::json!({
        "architecture": img.architecture, "os": "linux",
        "config": {}, "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": "kmm-e2e test image"}],
    });
    let (cd, csize) = put_blob(dir, config.to_string().as_bytes())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": csize},
        "layers": layers,
    });
    let (md, msize) = put_blob(dir, manifest.to_string().as_bytes())?;
    Ok(serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": msize,
        "platform": {"os": "linux", "architecture": img.architecture},
    }))
}

/// Writes an OCI layout at `dir` holding `images` under `tag`: one image gives a plain manifest, several an
/// index. Returns the digest of the top manifest (or index).
pub fn write_oci_layout(dir: &Path, tag: &str, images: &[TestImage]) -> Result<String, Error> {
    fs::create_dir_all(dir).map_err(io_err("create layout dir"))?;
    fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(io_err("write oci-layout"))?;
    let mut descs = Vec::new();
    for img in images {
        descs.push(put_image(dir, img)?);
    }
    let mut top = if descs.len() == 1 {
        let mut d = descs.remove(0);
        if let Some(o) = d.as_object_mut() {
            o.remove("platform");
        }
        d
    } else {
        let index = serde_json::json!({
            "schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": descs,
        });
        let (d, size) = put_blob(dir, index.to_string().as_bytes())?;
        serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": size})
    };
    let top_digest = top["digest"].as_str().unwrap_or_default().to_owned();
    top["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [top]});
    fs::write(dir.join("index.json"), index.to_string()).map_err(io_err("write index.json"))?;
    Ok(top_digest)
}

/// Pushes an OCI layout image to `server` as `repo:tag` with skopeo (all platforms); returns the digest
/// skopeo reports for the pushed reference.
pub fn skopeo_push(
    layout: &Path,
    tag: &str,
    server: &RegistryServer,
    repo: &str,
) -> Result<String, Error> {
    let dest = format!("docker://{}/{repo}:{tag}", server.addr);
    let mut args: Vec<String> = vec![
        "copy".into(),
        "--quiet".into(),
        "--all".into(),
        "--preserve-digests".into(),
    ];
    args.extend(server.skopeo_flags("dest"));
    args.push(format!("oci:{}:{tag}", layout.display()));
    args.push(dest.clone());
    skopeo(&args)?;
    let mut inspect: Vec<String> = vec!["inspect".into(), "--raw".into()];
    inspect.extend(server.skopeo_flags(""));
    inspect.push(dest);
    let raw = skopeo(&inspect)?;
    Ok(digest(raw.as_bytes()))
}

/// Every path under `dir` (relative, sorted), with `/` appended to directories and `-> target` to links.
pub fn tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            let rel = p
                .strip_prefix(dir)
                .map(|r| r.display().to_string())
                .unwrap_or_default();
            match e.file_type() {
                Ok(t) if t.is_dir() => {
                    out.push(format!("{rel}/"));
                    stack.push(p);
                }
                Ok(t) if t.is_symlink() => {
                    let target = fs::read_link(&p)
                        .map(|t| t.display().to_string())
                        .unwrap_or_default();
                    out.push(format!("{rel} -> {target}"));
                }
                _ => out.push(rel),
            }
        }
    }
    out.sort();
    out
}
