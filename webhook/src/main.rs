//! `kmm-webhook`: parses the command line, installs the rustls crypto provider, runs the server.

use std::process::ExitCode;

use clap::Parser as _;
use kmm_webhook::cli::{Args, run};

/// mimalloc: admission requests are short bursts of small allocations (JSON decoding and the patch), where it costs
/// fewer instructions than glibc's malloc; measured with `cargo xtask bench webhook`.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    kmm_webhook::telemetry::init(args.log_format);
    // kube pulls rustls with ring, other crates may enable aws-lc-rs: pick one provider explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %kmm_webhook::error_chain(&e), "kmm-webhook failed");
            eprintln!("kmm-webhook: {}", kmm_webhook::error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
