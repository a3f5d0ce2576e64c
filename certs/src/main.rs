//! `kmm-certs`: parses the command line, installs the rustls crypto provider, runs the command.

use std::process::ExitCode;

use clap::Parser as _;
use kmm_certs::cli::{Cli, LogFormat, run};

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    let _ = match cli.log_format {
        LogFormat::Plain => fmt.try_init(),
        LogFormat::Json => fmt.json().flatten_event(true).try_init(),
    };
    // kube uses rustls with ring; make it the process-wide provider explicitly.
    let _ = rustls::crypto::ring::default_provider().install_default();
    match run(cli.command).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("kmm-certs: {msg}");
            ExitCode::FAILURE
        }
    }
}
