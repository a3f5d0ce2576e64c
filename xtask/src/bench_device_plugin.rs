//! `cargo xtask bench device-plugin`: the release `kmm-device-plugin` against the kubelet simulator of kmm-e2e
//! (real unix sockets, a temporary host tree): idle RSS and CPU with 10 Modules, time from a kmod appearing in the
//! sys tree to its devices being allocatable, re-registration after 20 kubelet restarts, and 1,000 sequential
//! Allocate round trips. The figures and their targets are printed; nothing is asserted (it is not a test).
//!
//! The simulator side runs in a release build of kmm-e2e's `device-plugin-bench` example.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result, bail};

fn cargo_release(args: &[&str]) -> Result<()> {
    let out = Command::new(env!("CARGO"))
        .args(["build", "--release"])
        .args(args)
        .output()
        .context("failed to run cargo build")?;
    if !out.status.success() {
        bail!(
            "cargo build --release {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Builds the release plugin and the release simulator driver (kmm-e2e's `device-plugin-bench` example, so the
/// kubelet's side of each round trip is optimised too), runs the benchmark and prints the figures.
pub fn run() -> Result<()> {
    cargo_release(&["-p", "kmm-device-plugin", "--bin", "kmm-device-plugin"])?;
    cargo_release(&["-p", "kmm-e2e", "--example", "device-plugin-bench"])?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    let status = Command::new(target.join("release/examples/device-plugin-bench"))
        .arg(target.join("release/kmm-device-plugin"))
        .status()
        .context("failed to run the benchmark driver")?;
    if !status.success() {
        bail!("device plugin benchmark failed ({status})");
    }
    Ok(())
}
