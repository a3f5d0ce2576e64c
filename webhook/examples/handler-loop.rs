//! Runs the admission handler (no TLS, no HTTP) N times on one AdmissionReview body, for instruction counts:
//! `valgrind --tool=callgrind target/release/examples/handler-loop BODY ENDPOINT N MODULES_DIR` with N = 0 and
//! N = 2000; the difference over 2000 is the handler's cost per request, free of the noise of wall-clock figures.
//! ENDPOINT is `pod` or `module`; MODULES_DIR holds the Modules (as for `--modules-from`).

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use kmm_webhook::admit::{Context, Endpoint, Outcome, handle};
use kmm_webhook::mutate::MutateConfig;

/// As in the webhook binary.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [body, endpoint, n, modules] = args.as_slice() else {
        bail!("usage: handler-loop BODY pod|module N MODULES_DIR");
    };
    let body = std::fs::read(body).with_context(|| format!("failed to read {body}"))?;
    let endpoint = match endpoint.as_str() {
        "pod" => Endpoint::Pod,
        "module" => Endpoint::Module,
        other => bail!("unknown endpoint {other}"),
    };
    let n: usize = n.parse().context("N")?;
    let (catalog, _) = kmm_webhook::catalog::dir::load_dir(Path::new(modules))?;
    let ctx = Context {
        catalog: Arc::new(catalog),
        mutate: MutateConfig::new("registry.example/kmm-loader:0.1"),
        kube_version: None,
    };
    let mut bytes = 0;
    for _ in 0..n {
        match handle(endpoint, &body, &ctx) {
            Outcome::Review { body, .. } => bytes += body.len(),
            Outcome::BadRequest(e) => bail!("bad request: {e}"),
        }
    }
    println!("{bytes} bytes answered");
    Ok(())
}
