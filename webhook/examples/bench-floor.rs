//! The benchmark floor for `cargo xtask bench webhook`: the same transport as kmm-webhook (rustls with ring, TLS
//! 1.2/1.3, hyper-util auto HTTP/1.1 + HTTP/2, axum) answering every POST with a constant `allowed: true`
//! AdmissionReview, without parsing the body. Usage: `bench-floor CERT KEY`; prints `listening ADDR`; stops on
//! SIGTERM or SIGINT.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::routing::post;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

const ANSWER: &str = r#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","response":{"uid":"floor","allowed":true}}"#;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut args = std::env::args().skip(1);
    let (cert, key) = match (args.next(), args.next()) {
        (Some(c), Some(k)) => (c, k),
        _ => anyhow::bail!("usage: bench-floor CERT KEY"),
    };
    let store = kmm_webhook::tls::CertStore::open(cert, key)?;
    let acceptor = TlsAcceptor::from(Arc::new(kmm_webhook::tls::server_config(store)?));
    let app = Router::new().fallback(post(|_body: Bytes| async {
        ([(http::header::CONTENT_TYPE, "application/json")], ANSWER)
    }));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    println!("listening {}", listener.local_addr()?);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (tcp, _) = tokio::select! {
            _ = term.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
            accepted = listener.accept() => accepted?,
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let Ok(tls) = acceptor.accept(tcp).await else {
                return;
            };
            let service = hyper::service::service_fn(move |req| app.clone().oneshot(req));
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), service)
                .await;
        });
    }
}
