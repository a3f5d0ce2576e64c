//! `cargo xtask bench loader`: kmm-loader against its baselines on Debian's module tree, side by side in one run.
//!
//! - verify: `kmm-loader verify` over every module vs an `openssl cms -verify` per-module loop (the signature and
//!   content split out beforehand, not timed) vs `sha256sum` over the same files (the hashing floor);
//! - sign: `kmm-loader sign` of 200 unsigned modules in one process vs `sign-file` once per module, and the
//!   outputs compared byte for byte.
//!
//! kmm-loader is built in release mode first; every tool runs as a process, the way users run it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};

/// Options of `cargo xtask bench loader`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchLoaderArgs {
    /// Modules to sign in the sign benchmark.
    #[arg(long, env = "KMM_BENCH_SIGN_COUNT", default_value_t = 200)]
    pub sign_count: usize,
    /// A kmm-loader binary to use instead of building one in release mode.
    #[arg(long, env = "KMM_BENCH_LOADER")]
    pub loader: Option<PathBuf>,
    /// Verify at most this many modules (0: all).
    #[arg(long, env = "KMM_BENCH_VERIFY_LIMIT", default_value_t = 0)]
    pub verify_limit: usize,
}

fn run_ok(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("failed to run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    Ok(())
}

fn timed(f: impl FnOnce() -> Result<()>) -> Result<Duration> {
    let start = Instant::now();
    f()?;
    Ok(start.elapsed())
}

fn modules_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("failed to read {}", d.display()))? {
            let p = e?.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "ko") {
                out.push(p);
            }
        }
    }
    out.sort();
    Ok(out)
}

fn release_loader() -> Result<PathBuf> {
    run_ok(Command::new(env!("CARGO")).args(["build", "--release", "-p", "kmm-loader"]))?;
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    let bin = target.join("release/kmm-loader");
    ensure!(bin.is_file(), "{} missing after the build", bin.display());
    Ok(bin)
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
}

/// Runs the benchmark and prints the figures.
pub fn run(args: &BenchLoaderArgs) -> Result<()> {
    let kernel = kmm_e2e::debian::Kernel::get()?;
    let loader = match &args.loader {
        Some(p) => p.clone(),
        None => release_loader()?,
    };
    let openssl = kmm_e2e::cmd::require("openssl")?;
    let sha256sum = kmm_e2e::cmd::require("sha256sum")?;
    let tmp = tempfile::tempdir()?;

    let mut modules = modules_under(&kernel.modules_dir())?;
    if args.verify_limit > 0 {
        modules.truncate(args.verify_limit);
    }
    let bytes: u64 = modules
        .iter()
        .map(|m| std::fs::metadata(m).map(|x| x.len()).unwrap_or(0))
        .sum();
    println!(
        "module tree: {} modules, {:.1} MiB ({})",
        modules.len(),
        bytes as f64 / 1048576.0,
        kernel.release()
    );

    // The Debian certificate, extracted by kmm-loader itself.
    let cert = tmp.path().join("debian.pem");
    let pem = Command::new(&loader)
        .arg("extract-cert")
        .arg("--kernel")
        .arg(kernel.vmlinuz())
        .output()?;
    ensure!(
        pem.status.success(),
        "extract-cert failed: {}",
        String::from_utf8_lossy(&pem.stderr)
    );
    std::fs::write(&cert, &pem.stdout)?;

    // Warm the page cache so every contender reads from memory.
    run_ok(
        Command::new(&sha256sum)
            .args(&modules)
            .stdout(std::process::Stdio::null()),
    )?;

    let ours = timed(|| {
        run_ok(
            Command::new(&loader)
                .args(["--log", "warn", "verify", "--cert"])
                .arg(&cert)
                .args(&modules),
        )
    })?;
    let floor = timed(|| {
        run_ok(
            Command::new(&sha256sum)
                .args(&modules)
                .stdout(std::process::Stdio::null()),
        )
    })?;

    // openssl needs the PKCS#7 and the content as files: split them out (not timed).
    let split_dir = tmp.path().join("split");
    std::fs::create_dir_all(&split_dir)?;
    let mut pairs = Vec::new();
    for (i, m) in modules.iter().enumerate() {
        let image = std::fs::read(m)?;
        let app = kmm_loader::signature::split(&image)?
            .with_context(|| format!("{} is unsigned", m.display()))?;
        let (sig, content) = (
            split_dir.join(format!("{i}.p7")),
            split_dir.join(format!("{i}.ko")),
        );
        std::fs::write(&sig, app.sig)?;
        std::fs::write(&content, app.content)?;
        pairs.push((sig, content));
    }
    let openssl_loop = timed(|| {
        for (sig, content) in &pairs {
            run_ok(
                Command::new(&openssl)
                    .args([
                        "cms",
                        "-verify",
                        "-binary",
                        "-inform",
                        "DER",
                        "-noverify",
                        "-nointern",
                        "-purpose",
                        "any",
                    ])
                    .arg("-in")
                    .arg(sig)
                    .arg("-content")
                    .arg(content)
                    .arg("-certfile")
                    .arg(&cert)
                    .args(["-out", "/dev/null"])
                    .stderr(std::process::Stdio::null()),
            )?;
        }
        Ok(())
    })?;
    println!("verify {} modules:", modules.len());
    println!("  kmm-loader verify          {:8.2} s", ours.as_secs_f64());
    println!(
        "  openssl cms -verify loop   {:8.2} s   ({:.1}x kmm-loader; target >= 10x)",
        openssl_loop.as_secs_f64(),
        ratio(openssl_loop, ours)
    );
    println!(
        "  sha256sum (hashing floor)  {:8.2} s   (kmm-loader = {:.2}x the floor; target <= 1.5x)",
        floor.as_secs_f64(),
        ratio(ours, floor)
    );

    // Sign: the same unsigned modules for both tools, one fresh key.
    let key = tmp.path().join("key.priv");
    let pubder = tmp.path().join("pub.der");
    run_ok(
        Command::new(&openssl)
            .args([
                "req", "-x509", "-new", "-nodes", "-utf8", "-sha256", "-days", "36500", "-batch",
                "-outform", "DER",
            ])
            .args(["-newkey", "rsa:2048", "-subj", "/CN=kmm-rs bench"])
            .arg("-out")
            .arg(&pubder)
            .arg("-keyout")
            .arg(&key),
    )?;
    let all = modules_under(&kernel.modules_dir())?;
    let step = (all.len() / args.sign_count.max(1)).max(1);
    let picked: Vec<&PathBuf> = all.iter().step_by(step).take(args.sign_count).collect();
    let (dir_a, dir_b) = (tmp.path().join("sign-file"), tmp.path().join("kmm-loader"));
    std::fs::create_dir_all(&dir_a)?;
    std::fs::create_dir_all(&dir_b)?;
    let mut files_a = Vec::new();
    let mut files_b = Vec::new();
    for (i, m) in picked.iter().enumerate() {
        let plain = kmm_loader::signature::strip(&std::fs::read(m)?).to_vec();
        let (a, b) = (dir_a.join(format!("{i}.ko")), dir_b.join(format!("{i}.ko")));
        std::fs::write(&a, &plain)?;
        std::fs::write(&b, &plain)?;
        files_a.push(a);
        files_b.push(b);
    }
    let sign_file = kernel.sign_file();
    let theirs = timed(|| {
        for f in &files_a {
            run_ok(
                Command::new(&sign_file)
                    .arg("sha256")
                    .arg(&key)
                    .arg(&pubder)
                    .arg(f),
            )?;
        }
        Ok(())
    })?;
    let ours_sign = timed(|| {
        run_ok(
            Command::new(&loader)
                .args(["sign", "--key"])
                .arg(&key)
                .arg("--cert")
                .arg(&pubder)
                .args(&files_b),
        )
    })?;
    let mut identical = 0;
    for (a, b) in files_a.iter().zip(&files_b) {
        if std::fs::read(a)? == std::fs::read(b)? {
            identical += 1;
        }
    }
    println!("sign {} modules (rsa:2048, sha256):", files_a.len());
    println!(
        "  kmm-loader sign            {:8.2} s",
        ours_sign.as_secs_f64()
    );
    println!(
        "  sign-file per module       {:8.2} s   ({:.1}x kmm-loader; target >= 5x)",
        theirs.as_secs_f64(),
        ratio(theirs, ours_sign)
    );
    println!("  byte-identical outputs     {identical}/{}", files_a.len());
    ensure!(
        identical == files_a.len(),
        "kmm-loader's signatures differ from sign-file's"
    );
    Ok(())
}
