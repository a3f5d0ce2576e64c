//! `cargo xtask bench device-plugin`: the release `kmm-device-plugin` against the kubelet simulator of kmm-e2e
//! (real unix sockets, a temporary host tree): idle RSS and CPU with 10 Modules, time from a kmod appearing in the
//! sys tree to its devices being allocatable, re-registration after 20 kubelet restarts, and 1,000 sequential
//! Allocate round trips. The figures and their targets are printed; nothing is asserted (it is not a test).
//!
//! Needs in xtask/Cargo.toml: `kmm-e2e = { path = "../tests" }` and `tokio = { workspace = true }`.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

fn release_plugin() -> Result<PathBuf> {
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "kmm-device-plugin",
            "--bin",
            "kmm-device-plugin",
        ])
        .output()
        .context("failed to run cargo build")?;
    if !out.status.success() {
        bail!(
            "cargo build --release -p kmm-device-plugin failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    Ok(target.join("release/kmm-device-plugin"))
}

/// Builds the release binary, runs the benchmark and prints the figures.
pub fn run() -> Result<()> {
    let bin = release_plugin()?;
    // One thread, like the plugin: on a loaded 2-core machine a multi-thread runtime adds a cross-thread wake-up
    // (and a scheduling delay) to every round trip the simulator makes.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("failed to start the tokio runtime")?;
    let report = rt
        .block_on(kmm_e2e::device_plugin_bench::run(&bin))
        .context("device plugin benchmark failed")?;
    println!("kmm-device-plugin ({})", bin.display());
    println!("{report}");
    Ok(())
}
