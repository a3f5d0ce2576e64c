//! `cargo xtask`: the single entry point for kmm-rs developer tasks.
//!
//! - `codegen`: writes the CRDs generated from kmm-api's types into `manifests/crds/`;
//! - `check`: fails when a committed generated file differs from what the code produces;
//! - `demo`: the main job on an embedded default, no cluster needed;
//! - `test`: the whole test suite, as CI runs it (installs what it needs on a fresh Debian machine);
//! - `bench webhook|loader|device-plugin`: benchmarks, each against a baseline measured side by side.

mod bench_device_plugin;
mod bench_image;
mod bench_loader;
mod bench_webhook;
mod codegen;
mod demo;
mod suite;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "kmm-rs developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate the CRDs into manifests/crds/ from the kmm-api types.
    Codegen,
    /// Fail when generated files are stale.
    Check,
    /// Validate every example Module and show kernel mappings resolved for real kernels.
    Demo,
    /// Run the whole test suite (fmt, clippy, generated files, manifests, tests), installing what it needs.
    Test {
        /// Skip installing system packages and Python wheels.
        #[arg(long, env = "KMM_SKIP_INSTALL")]
        skip_install: bool,
    },
    /// Benchmarks (commands, not tests): each runs a baseline side by side and prints the ratios.
    #[command(subcommand)]
    Bench(Bench),
}

#[derive(Subcommand)]
enum Bench {
    /// The webhook over TLS (oha, keep-alive, concurrency 64) vs a bare rustls + axum floor; peak RSS.
    Webhook,
    /// verify vs `openssl cms -verify` and the sha256sum floor; sign vs sign-file.
    Loader(bench_loader::BenchLoaderArgs),
    /// The device plugin against the kubelet simulator: idle RSS, time to allocatable, re-registration, Allocate.
    DevicePlugin,
    /// `kmm-loader image pull` of a ~100 MiB kmod image vs `skopeo copy` to an oci: dir; peak RSS.
    Image(bench_image::BenchImageArgs),
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Codegen => codegen::write(),
        Command::Check => codegen::check(),
        Command::Demo => demo::run(),
        Command::Test { skip_install } => suite::run(skip_install),
        Command::Bench(Bench::Webhook) => bench_webhook::run(),
        Command::Bench(Bench::Loader(args)) => bench_loader::run(&args),
        Command::Bench(Bench::DevicePlugin) => bench_device_plugin::run(),
        Command::Bench(Bench::Image(args)) => bench_image::run(&args),
    }
}
