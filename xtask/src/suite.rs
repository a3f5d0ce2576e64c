//! `cargo xtask test`: the whole suite, as CI runs it.
//!
//! 1. installs what the tests need on a fresh Debian machine (`tests/setup/install-deps.sh`: apt packages; pip:
//!    `kubernetes-validate`), skipping what is present;
//! 2. `cargo fmt --check`, `cargo clippy --workspace --all-targets -D warnings`;
//! 3. generated files up to date (`cargo xtask check`);
//! 4. manifests: `kubectl kustomize manifests/default` builds, every manifest passes `kubernetes-validate --strict`
//!    for each Kubernetes version in [`KUBE_VERSIONS`], and the example Modules (ours and upstream's) pass the
//!    generated CRD schemas;
//! 5. `cargo test --workspace` (unit, router, qemu guest, registry and kubelet-simulator tests).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

use crate::codegen::{self, repo_root};

/// Kubernetes versions the manifests are validated against (the webhook's matchConditions need 1.30+).
const KUBE_VERSIONS: [&str; 2] = ["1.31.0", "1.34.0"];

fn step(step: &str, cmd: &mut Command) -> Result<()> {
    let started = Instant::now();
    println!("==> {step}: {cmd:?}");
    let status = cmd
        .current_dir(repo_root())
        .status()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !status.success() {
        bail!("{step} failed ({status})");
    }
    println!("<== {step}: ok in {:.1}s", started.elapsed().as_secs_f64());
    Ok(())
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned()));
    if std::env::var_os("CARGO_TARGET_DIR").is_none()
        && let Some(home) = std::env::var_os("HOME")
    {
        cmd.env(
            "CARGO_TARGET_DIR",
            PathBuf::from(home).join(".cache/kmm-rs/target"),
        );
    }
    cmd
}

fn python_has(module: &str) -> bool {
    Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .status()
        .is_ok_and(|s| s.success())
}

pub fn run(skip_install: bool) -> Result<()> {
    let started = Instant::now();
    if !skip_install {
        install()?;
    }
    step("fmt", cargo().args(["fmt", "--all", "--check"]))?;
    step(
        "clippy",
        cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    println!("==> generated files");
    codegen::check()?;
    manifests()?;
    let totals = tests()?;
    println!(
        "all checks passed in {:.0}s",
        started.elapsed().as_secs_f64()
    );
    println!(
        "tests: {} passed, {} failed, {} skipped",
        totals.passed, totals.failed, totals.ignored
    );
    Ok(())
}

#[derive(Default, Debug, PartialEq)]
struct Totals {
    passed: u64,
    failed: u64,
    ignored: u64,
}

impl Totals {
    /// Adds the counts of a libtest summary line: `test result: ok. 5 passed; 0 failed; 1 ignored; ...`.
    fn add_summary(&mut self, line: &str) {
        let Some(rest) = line.strip_prefix("test result: ") else {
            return;
        };
        for part in rest.split(['.', ';']) {
            let mut words = part.split_whitespace();
            if let (Some(n), Some(what)) = (
                words.next().and_then(|n| n.parse::<u64>().ok()),
                words.next(),
            ) {
                match what {
                    "passed" => self.passed += n,
                    "failed" => self.failed += n,
                    "ignored" => self.ignored += n,
                    _ => {}
                }
            }
        }
    }
}

/// `cargo test --workspace`, streaming its output and adding up the summaries of every test binary.
fn tests() -> Result<Totals> {
    use std::io::{BufRead, BufReader};
    let started = Instant::now();
    let mut cmd = cargo();
    cmd.args(["test", "--workspace", "--no-fail-fast"])
        .current_dir(repo_root());
    println!("==> tests: {cmd:?}");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("failed to start cargo test")?;
    let mut totals = Totals::default();
    if let Some(stdout) = child.stdout.take() {
        for line in BufReader::new(stdout).lines() {
            let line = line?;
            println!("{line}");
            totals.add_summary(&line);
        }
    }
    let status = child.wait()?;
    println!(
        "<== tests: {:.1}s, {totals:?}",
        started.elapsed().as_secs_f64()
    );
    if !status.success() || totals.failed > 0 {
        println!(
            "tests: {} passed, {} failed, {} skipped",
            totals.passed, totals.failed, totals.ignored
        );
        bail!("tests failed ({status})");
    }
    Ok(totals)
}

fn install() -> Result<()> {
    let script = repo_root().join("tests/setup/install-deps.sh");
    if script.is_file() {
        step("system packages", Command::new("bash").arg(&script))?;
    }
    if !python_has("kubernetes_validate") {
        step(
            "python wheels",
            Command::new("python3").args([
                "-m",
                "pip",
                "install",
                "--quiet",
                "kubernetes-validate==1.37.0",
            ]),
        )?;
    }
    Ok(())
}

/// Every YAML file under `manifests/` that is a Kubernetes object (kustomizations excluded).
fn manifest_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    for entry in
        std::fs::read_dir(dir).with_context(|| format!("failed to read {}", dir.display()))?
    {
        let path = entry?.path();
        if path.is_dir() {
            manifest_files(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "yaml")
            && path.file_name().is_some_and(|n| n != "kustomization.yaml")
        {
            out.push(path);
        }
    }
    Ok(())
}

fn manifests() -> Result<()> {
    let root = repo_root().join("manifests");
    let mut files = Vec::new();
    manifest_files(&root, &mut files)?;
    files.sort();
    let default = root.join("default");
    if default.join("kustomization.yaml").is_file() {
        let built =
            std::env::temp_dir().join(format!("kmm-rs-kustomize-{}.yaml", std::process::id()));
        let output = Command::new("kubectl")
            .args(["kustomize"])
            .arg(&default)
            .output()
            .context("failed to run kubectl kustomize (kubectl is on the machine image)")?;
        if !output.status.success() {
            bail!(
                "kubectl kustomize manifests/default failed:\n{}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::fs::write(&built, &output.stdout)?;
        println!(
            "<== kubectl kustomize manifests/default: {} bytes",
            output.stdout.len()
        );
        files.push(built);
    }
    // kubernetes-validate only warns about custom resources: check them against our CRD schemas, upstream's
    // examples included, as the API server would before any webhook runs.
    let mut custom_resources: Vec<PathBuf> = Vec::new();
    manifest_files(&root.join("examples"), &mut custom_resources)?;
    let upstream = repo_root().join("../shared/upstream-kmm/examples");
    if upstream.is_dir() {
        manifest_files(&upstream, &mut custom_resources)?;
    }
    step(
        "custom resources against the generated CRD schemas",
        Command::new("python3")
            .arg("tests/setup/validate_crs.py")
            .arg(root.join("crds"))
            .args(&custom_resources),
    )?;
    for version in KUBE_VERSIONS {
        step(
            &format!("kubernetes-validate --strict (Kubernetes {version})"),
            Command::new("python3")
                .args(["-m", "kubernetes_validate"])
                .args(["--strict", "--quiet", "-k", version])
                .args(&files),
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::Totals;

    #[test]
    fn libtest_summaries_add_up() {
        let mut t = Totals::default();
        t.add_summary("test result: ok. 30 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; finished in 0.18s");
        t.add_summary("test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1s");
        t.add_summary("running 3 tests");
        assert_eq!(
            t,
            Totals {
                passed: 33,
                failed: 1,
                ignored: 2
            }
        );
    }
}
