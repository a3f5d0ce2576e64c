//! The driver of `cargo xtask bench device-plugin`, built in release so that the simulator's side of each round
//! trip (tonic, h2, prost) is measured optimised like the plugin's: `device-plugin-bench PLUGIN_BINARY`.

use anyhow::{Context, Result};

fn main() -> Result<()> {
    let bin = std::env::args_os()
        .nth(1)
        .context("usage: device-plugin-bench PLUGIN_BINARY")?;
    // One thread, like the plugin: on a loaded 2-core machine a multi-thread runtime adds a cross-thread wake-up
    // (and a scheduling delay) to every round trip the simulator makes.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the tokio runtime")?;
    let report = rt
        .block_on(kmm_e2e::device_plugin_bench::run(std::path::Path::new(
            &bin,
        )))
        .context("device plugin benchmark failed")?;
    println!(
        "kmm-device-plugin ({})",
        std::path::Path::new(&bin).display()
    );
    println!("{report}");
    Ok(())
}
