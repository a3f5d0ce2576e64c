//! The `kmm-webhook` binary over real TLS: protocol versions, HTTP/1.1 keep-alive and HTTP/2, certificate rotation
//! by a Secret-volume `..data` symlink swap under load, limits, slow clients, health, and SIGTERM draining.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::BufRead as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime};

use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use kmm_certs::serving::{Bundle, generate, pem_blocks};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

const SERVICE: &str = "kmm-webhook";
const NAMESPACE: &str = "kmm-rs-system";
const SNI: &str = "kmm-webhook.kmm-rs-system.svc";

/// A directory laid out like a Kubernetes Secret volume: `tls.crt -> ..data/tls.crt`, `..data -> ..vN`.
struct SecretVolume {
    dir: PathBuf,
    version: usize,
}

impl SecretVolume {
    fn new(dir: &Path, bundle: &Bundle) -> Self {
        let mut v = Self {
            dir: dir.to_owned(),
            version: 0,
        };
        v.publish(bundle);
        for f in ["tls.crt", "tls.key", "ca.crt"] {
            std::os::unix::fs::symlink(format!("..data/{f}"), dir.join(f)).unwrap();
        }
        v
    }

    /// Writes a new version and swaps `..data` atomically, as the kubelet does.
    fn publish(&mut self, bundle: &Bundle) {
        self.version += 1;
        let name = format!("..v{}", self.version);
        let vdir = self.dir.join(&name);
        std::fs::create_dir(&vdir).unwrap();
        std::fs::write(vdir.join("tls.crt"), &bundle.cert_pem).unwrap();
        std::fs::write(vdir.join("tls.key"), &bundle.key_pem).unwrap();
        std::fs::write(vdir.join("ca.crt"), &bundle.ca_pem).unwrap();
        let tmp = self.dir.join("..data_tmp");
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, self.dir.join("..data")).unwrap();
    }
}

struct Webhook {
    child: Child,
    https: SocketAddr,
    health: SocketAddr,
    _dir: tempfile::TempDir,
    certs: PathBuf,
}

impl Drop for Webhook {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const MODULE: &str = r#"
apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {name: simple, namespace: team}
spec:
  selector: {}
  moduleLoader:
    container:
      modprobe: {moduleName: simple_kmod}
      kernelMappings: [{regexp: '^.+$', containerImage: 'reg/kmod:1'}]
"#;

fn start(bundle: &Bundle, extra: &[&str]) -> (Webhook, SecretVolume) {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path().join("certs");
    std::fs::create_dir(&certs).unwrap();
    let volume = SecretVolume::new(&certs, bundle);
    let modules = dir.path().join("modules");
    std::fs::create_dir(&modules).unwrap();
    std::fs::write(modules.join("simple.yaml"), MODULE).unwrap();
    let log = std::fs::File::create(dir.path().join("webhook.log")).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_kmm-webhook"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--health-listen",
            "127.0.0.1:0",
            "--loader-image",
            "loader:1",
        ])
        .arg("--tls-cert")
        .arg(certs.join("tls.crt"))
        .arg("--tls-key")
        .arg(certs.join("tls.key"))
        .arg("--modules-from")
        .arg(&modules)
        .args(["--reload-interval", "1s", "--log-format", "json"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line);
        }
    });
    let (mut https, mut health) = (None, None);
    while https.is_none() || health.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("webhook did not report its addresses");
        let addr = line.rsplit(' ').next().unwrap().parse().ok();
        if line.starts_with("listening admission") {
            https = addr;
        } else if line.starts_with("listening health") {
            health = addr;
        }
    }
    let wh = Webhook {
        child,
        https: https.unwrap(),
        health: health.unwrap(),
        _dir: dir,
        certs,
    };
    (wh, volume)
}

fn client_config(
    ca_pem: &str,
    versions: &[&'static rustls::SupportedProtocolVersion],
    alpn: &[&[u8]],
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for der in pem_blocks(ca_pem) {
        roots.add(CertificateDer::from(der)).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(versions)
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    // Full handshakes only: a resumed session reports the certificate of the session it resumes.
    cfg.resumption = rustls::client::Resumption::disabled();
    Arc::new(cfg)
}

fn default_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    client_config(ca_pem, rustls::ALL_VERSIONS, &[b"http/1.1"])
}

async fn tls(
    addr: SocketAddr,
    cfg: Arc<rustls::ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    TlsConnector::from(cfg)
        .connect(ServerName::try_from(SNI).unwrap(), tcp)
        .await
}

type H1 = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn h1(stream: TlsStream<TcpStream>) -> H1 {
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

fn review(uid: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": uid, "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"}, "operation": "CREATE",
            "namespace": "team", "userInfo": {}, "dryRun": false,
            "object": {"apiVersion": "v1", "kind": "Pod",
                "metadata": {"generateName": "a-", "annotations": {"kmm.sigs.x-k8s.io/modules": "simple"}},
                "spec": {"containers": [{"name": "a", "image": "a"}]}}}
    }))
    .unwrap()
}

fn request(path: &str, body: Vec<u8>) -> http::Request<Full<Bytes>> {
    http::Request::post(path)
        .header("host", SNI)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap()
}

/// The server closed a slow client's connection after the 1 s client timeout (and its watchdog tick), not before.
fn assert_dropped_after_timeout(start: Instant) {
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
}

/// The HTTP status of a pod review sent on `sender`.
async fn pod_status(sender: &mut H1, uid: &str) -> u16 {
    send(sender, "/mutate-pod", review(uid))
        .await
        .unwrap()
        .0
        .as_u16()
}

async fn send(
    sender: &mut H1,
    path: &str,
    body: Vec<u8>,
) -> Result<(http::StatusCode, Bytes), String> {
    sender.ready().await.map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(request(path, body))
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, bytes))
}

fn assert_patched(uid: &str, body: &[u8]) {
    let v: Value = serde_json::from_slice(body).unwrap();
    assert_eq!(v["response"]["uid"], uid);
    assert_eq!(v["response"]["allowed"], true);
    assert_eq!(v["response"]["patchType"], "JSONPatch");
}

fn pki() -> (Bundle, Bundle) {
    let now = SystemTime::now();
    let a = generate(SERVICE, NAMESPACE, 30, now, None).unwrap();
    let b = generate(SERVICE, NAMESPACE, 30, now, Some(&a.ca_pem)).unwrap();
    (a, b)
}

#[tokio::test]
async fn tls_versions_keep_alive_and_http2() {
    let (a, _) = pki();
    let (wh, _vol) = start(&a, &[]);
    for versions in [
        &[&rustls::version::TLS12][..],
        &[&rustls::version::TLS13][..],
    ] {
        let stream = tls(wh.https, client_config(&a.ca_pem, versions, &[b"http/1.1"]))
            .await
            .unwrap();
        let negotiated = stream.get_ref().1.protocol_version().unwrap();
        assert_eq!(negotiated, versions[0].version);
        let mut sender = h1(stream).await;
        // Keep-alive: several requests on one connection, including the upstream alias with ?timeout.
        for i in 0..5 {
            let uid = format!("ka-{i}");
            let (status, body) = send(&mut sender, "/mutate-pod?timeout=10s", review(&uid))
                .await
                .unwrap();
            assert_eq!(status, 200);
            assert_patched(&uid, &body);
        }
        let (status, body) = send(&mut sender, "/validate-module", b"{broken".to_vec())
            .await
            .unwrap();
        assert_eq!(status, 400, "{body:?}");
    }

    let stream = tls(
        wh.https,
        client_config(&a.ca_pem, rustls::ALL_VERSIONS, &[b"h2"]),
    )
    .await
    .unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut streams = Vec::new();
    for i in 0..8 {
        let fut = sender.send_request(request("/mutate-pod", review(&format!("h2-{i}"))));
        streams.push(fut);
    }
    for (i, fut) in streams.into_iter().enumerate() {
        let resp = fut.await.unwrap();
        assert_eq!(resp.status(), 200);
        assert_patched(
            &format!("h2-{i}"),
            &resp.into_body().collect().await.unwrap().to_bytes(),
        );
    }

    // Health port: plain HTTP.
    let tcp = TcpStream::connect(wh.health).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    for (path, want) in [
        ("/healthz", "ok"),
        ("/readyz", "ok"),
        (
            "/metrics",
            "kmm_webhook_admission_requests_total{endpoint=\"pod\",verdict=\"patched\"} 18",
        ),
    ] {
        let req = http::Request::get(path)
            .header("host", "x")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let text = String::from_utf8(
            resp.into_body()
                .collect()
                .await
                .unwrap()
                .to_bytes()
                .to_vec(),
        )
        .unwrap();
        assert!(text.contains(want), "{path}: {text}");
    }
}

#[tokio::test]
async fn certificate_rotation_by_symlink_swap_under_load_loses_no_request() {
    let (a, b) = pki();
    let (wh, mut vol) = start(&a, &[]);
    // The API server's bundle after `kmm-certs patch`: new CA and the previous one.
    let cfg = default_config(&b.ca_pem);
    let new_leaf = pem_blocks(&b.cert_pem).remove(0);
    let old_leaf = pem_blocks(&a.cert_pem).remove(0);

    // One keep-alive connection opened before the swap keeps working after it.
    let mut long_lived = h1(tls(wh.https, Arc::clone(&cfg)).await.unwrap()).await;

    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let saw_new = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for w in 0..4 {
        let (cfg, ok, failed, saw_new, stop) = (
            Arc::clone(&cfg),
            Arc::clone(&ok),
            Arc::clone(&failed),
            Arc::clone(&saw_new),
            Arc::clone(&stop),
        );
        let (addr, new_leaf, old_leaf) = (wh.https, new_leaf.clone(), old_leaf.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::SeqCst) {
                // A new connection (and handshake) every 3 requests.
                let stream = match tls(addr, Arc::clone(&cfg)).await {
                    Ok(s) => s,
                    Err(e) => {
                        eprintln!("handshake failed: {e}");
                        failed.fetch_add(1, Ordering::SeqCst);
                        continue;
                    }
                };
                let leaf = stream.get_ref().1.peer_certificates().unwrap()[0].to_vec();
                assert!(leaf == new_leaf || leaf == old_leaf);
                if leaf == new_leaf {
                    saw_new.store(true, Ordering::SeqCst);
                }
                let mut sender = h1(stream).await;
                for _ in 0..3 {
                    n += 1;
                    let uid = format!("w{w}-{n}");
                    match send(&mut sender, "/mutate-pod", review(&uid)).await {
                        Ok((status, body)) if status == 200 => {
                            assert_patched(&uid, &body);
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        other => {
                            eprintln!("request failed: {other:?}");
                            failed.fetch_add(1, Ordering::SeqCst);
                        }
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    let before_swap = ok.load(Ordering::SeqCst);
    let swapped_at = Instant::now();
    vol.publish(&b);
    let deadline = swapped_at + Duration::from_secs(10);
    while !saw_new.load(Ordering::SeqCst) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reload_latency = swapped_at.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::SeqCst);
    for w in workers {
        w.await.unwrap();
    }
    let (status, body) = send(&mut long_lived, "/mutate-pod", review("long"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_patched("long", &body);

    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    eprintln!(
        "rotation: {ok} requests ok ({before_swap} before the swap), {failed} failed, new certificate served after {reload_latency:?}"
    );
    assert!(
        saw_new.load(Ordering::SeqCst),
        "the new certificate was never served"
    );
    assert!(
        reload_latency < Duration::from_secs(5),
        "{reload_latency:?}"
    );
    assert_eq!(failed, 0);
    assert!(ok > before_swap && before_swap > 0);
    // The volume was reloaded through the symlink; the file names never changed.
    assert!(wh.certs.join("tls.crt").is_symlink());
}

#[tokio::test]
async fn limits_and_slow_clients() {
    let (a, _) = pki();
    let (wh, _vol) = start(&a, &["--client-timeout", "1s"]);
    let cfg = default_config(&a.ca_pem);

    let mut sender = h1(tls(wh.https, Arc::clone(&cfg)).await.unwrap()).await;
    let (status, _) = send(
        &mut sender,
        "/validate-module",
        vec![b' '; 3 * 1024 * 1024 + 1],
    )
    .await
    .unwrap();
    assert_eq!(status, 413);
    let mut sender = h1(tls(wh.https, Arc::clone(&cfg)).await.unwrap()).await;
    let (status, body) = send(&mut sender, "/mutate-pod", review("after-413"))
        .await
        .unwrap();
    assert_eq!(status, 200);
    assert_patched("after-413", &body);

    // A TCP client that never starts the handshake is dropped.
    let mut tcp = TcpStream::connect(wh.https).await.unwrap();
    let start = Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "{:?}",
        start.elapsed()
    );

    // A TLS client that trickles its request head is dropped.
    let mut stream = tls(wh.https, Arc::clone(&cfg)).await.unwrap();
    stream
        .write_all(b"POST /mutate-pod HTTP/1.1\r\nHo")
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let start = Instant::now();
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest))
        .await
        .unwrap();
    assert_dropped_after_timeout(start);

    // A TLS client that sends a whole head and then trickles its body is dropped too, while a keep-alive connection
    // that answered a request and then sits idle for longer than the timeout is kept.
    let mut idle = h1(tls(wh.https, Arc::clone(&cfg)).await.unwrap()).await;
    assert_eq!(pod_status(&mut idle, "before-idle").await, 200);
    let mut stream = tls(wh.https, Arc::clone(&cfg)).await.unwrap();
    stream
        .write_all(
            b"POST /mutate-pod HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n{\"apiVersion\"",
        )
        .await
        .unwrap();
    stream.flush().await.unwrap();
    let start = Instant::now();
    let trickle = async {
        for _ in 0..40 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if stream.write_all(b" ").await.is_err() || stream.flush().await.is_err() {
                break;
            }
        }
        let mut rest = Vec::new();
        let _ = stream.read_to_end(&mut rest).await;
        rest
    };
    let rest = tokio::time::timeout(Duration::from_secs(6), trickle)
        .await
        .unwrap();
    assert_dropped_after_timeout(start);
    assert!(
        !String::from_utf8_lossy(&rest).contains("\"allowed\""),
        "answered a request whose body never came"
    );
    assert_eq!(
        pod_status(&mut idle, "after-idle").await,
        200,
        "idle keep-alive connection was closed"
    );

    // An HTTP/2 connection that pings every 100 ms between two requests, for longer than the timeout, is kept: pings
    // are not requests.
    let stream = tls(
        wh.https,
        client_config(&a.ca_pem, rustls::ALL_VERSIONS, &[b"h2"]),
    )
    .await
    .unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .keep_alive_interval(Duration::from_millis(100))
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    for uid in ["h2-before-pings", "h2-after-pings"] {
        let resp = h2
            .send_request(request("/mutate-pod", review(uid)))
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{uid}");
        tokio::time::sleep(Duration::from_millis(1600)).await;
    }

    // The server still answers.
    let mut sender = h1(tls(wh.https, cfg).await.unwrap()).await;
    assert_eq!(pod_status(&mut sender, "still").await, 200);
}

#[tokio::test]
async fn sigterm_stops_accepting_and_drains_in_flight_requests() {
    let (a, _) = pki();
    let (mut wh, _vol) = start(&a, &[]);
    let cfg = default_config(&a.ca_pem);
    let body = review("in-flight");
    let (head, tail) = body.split_at(body.len() / 2);

    // A request in flight: head and half of the body sent.
    let mut stream = tls(wh.https, Arc::clone(&cfg)).await.unwrap();
    let head_text = format!(
        "POST /mutate-pod HTTP/1.1\r\nHost: {SNI}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head_text.as_bytes()).await.unwrap();
    stream.write_all(head).await.unwrap();
    stream.flush().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let pid = wh.child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;

    // No new connections.
    assert!(
        TcpStream::connect(wh.https).await.is_err(),
        "still accepting after SIGTERM"
    );
    // Readiness reports the shutdown while draining (health port closes with the drain).
    // The in-flight request completes.
    stream.write_all(tail).await.unwrap();
    stream.flush().await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .unwrap()
        .unwrap();
    let text = String::from_utf8_lossy(&response);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("\"uid\":\"in-flight\""), "{text}");

    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = wh.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "webhook did not exit");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(status.success(), "{status:?}");
}
