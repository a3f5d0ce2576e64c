//! `kmm-device-plugin`: see the library documentation.

use clap::Parser;
use kmm_device_plugin::cli::Cli;

// One thread: the work is small and mostly waiting; fewer threads keep the RSS low (measured by the benchmark).
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    kmm_device_plugin::telemetry::init(cli.logging.log_format);
    // kube uses rustls with ring; install it explicitly in case another provider is linked too. Standalone mode
    // talks TLS to nobody, so it leaves the TLS stack untouched (its code would only add to the resident set).
    if cli.modules_from.is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    kmm_device_plugin::run(cli).await?;
    Ok(())
}
