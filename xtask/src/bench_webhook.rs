//! `cargo xtask bench webhook`: the admission webhook under load, against its floor.
//!
//! Builds release binaries, makes a CA and a serving certificate for `localhost` with kmm-certs, starts kmm-webhook
//! (standalone, one Module from a file) and `bench-floor` (the same rustls + hyper-util + axum transport answering
//! a constant `allowed: true`), and drives both with oha over TLS with the CA verified, 64 connections, for a fixed
//! duration: HTTP/1.1 with keep-alive like the API server, for three realistic AdmissionReviews (Module create,
//! Pod create needing a driver, Pod create needing none), plus one run without keep-alive to show the handshake
//! cost. Each case runs in rounds alternating the floor and the webhook with the same body. Prints req/s and
//! p50/p99/p99.9, the ratios to the floor (medians of the per-round ratios), and the webhook's peak RSS (VmHWM),
//! and checks the targets: throughput >= 0.8x the floor, p99 <= 2x the floor's, RSS <= 20 MiB.
//!
//! Needs `oha` (`cargo install oha --locked`, about 4.5 minutes on 2 cores). `KMM_BENCH_DURATION` (per run, default
//! `5s`), `KMM_BENCH_ROUNDS` (default 5: on these 2-core machines one round's ratio varies by +-0.1) and
//! `KMM_BENCH_CONCURRENCY` (default 64) override the load.

use std::io::BufRead as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

fn repo_root() -> Result<PathBuf> {
    let out = Command::new("git")
        .args(["rev-parse", "--show-toplevel"])
        .output()?;
    if !out.status.success() {
        bail!("not inside the kmm-rs git repository");
    }
    Ok(PathBuf::from(String::from_utf8(out.stdout)?.trim()))
}

fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/kmm-rs/target")))
        .unwrap_or_else(|| root.join("target"))
}

fn run_ok(cmd: &mut Command) -> Result<std::process::Output> {
    let out = cmd
        .output()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(out)
}

/// Starts a server and returns it with the address it printed on a line starting with `prefix`.
fn start(cmd: &mut Command, prefix: &str) -> Result<(Running, String)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("failed to start {cmd:?}"))?;
    let stdout = child.stdout.take().context("no stdout")?;
    let running = Running(child);
    let (tx, rx) = std::sync::mpsc::channel();
    let prefix = prefix.to_owned();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if line.starts_with(&prefix) {
                let _ = tx.send(line.rsplit(' ').next().unwrap_or_default().to_owned());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(30))
        .context("server did not report its address")?;
    Ok((running, addr))
}

fn review(uid: &str, kind: (&str, &str, &str), namespace: &str, object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {
            "uid": uid, "kind": {"group": kind.0, "version": kind.1, "kind": kind.2},
            "resource": {"group": kind.0, "version": kind.1, "resource": format!("{}s", kind.2.to_lowercase())},
            "requestKind": {"group": kind.0, "version": kind.1, "kind": kind.2},
            "operation": "CREATE", "namespace": namespace, "dryRun": false,
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller", "uid": "u",
                         "groups": ["system:serviceaccounts", "system:authenticated"]},
            "object": object,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

fn pod(annotations: Value, limits: Value) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"generateName": "app-7d9c8b6f5-", "namespace": "team", "annotations": annotations,
                     "labels": {"app": "app", "pod-template-hash": "7d9c8b6f5"},
                     "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "app-7d9c8b6f5",
                                          "uid": "2b7e1f0a-0000-4000-8000-000000000001", "controller": true}]},
        "spec": {
            "containers": [{"name": "app", "image": "registry.example/app:1.0",
                "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": limits},
                "volumeMounts": [{"name": "kube-api-access", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount", "readOnly": true}]}],
            "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
                {"matchExpressions": [{"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
            "volumes": [{"name": "kube-api-access", "projected": {"sources": [{"serviceAccountToken": {"path": "token", "expirationSeconds": 3607}}]}}],
            "serviceAccountName": "default", "restartPolicy": "Always", "dnsPolicy": "ClusterFirst"
        }
    })
}

const MODULE: &str = r#"apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {name: simple-kmod, namespace: team}
spec:
  selector: {node-role.kubernetes.io/worker: ""}
  devices: {slots: 4}
  moduleLoader:
    container:
      modprobe: {moduleName: simple-kmod}
      version: "1.0"
      kernelMappings:
        - {literal: 6.1.0-30-amd64, containerImage: "registry.example/simple-kmod:6.1.0-30-amd64"}
        - {regexp: '^.+$', containerImage: "registry.example/simple-kmod:${KERNEL_FULL_VERSION}"}
"#;

#[derive(Debug)]
struct Stats {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    success: f64,
}

fn oha(url: &str, body: &Path, ca: &Path, keep_alive: bool) -> Result<Stats> {
    let duration = std::env::var("KMM_BENCH_DURATION").unwrap_or_else(|_| "5s".to_owned());
    let concurrency = std::env::var("KMM_BENCH_CONCURRENCY").unwrap_or_else(|_| "64".to_owned());
    let mut cmd = Command::new("oha");
    cmd.args([
        "-z",
        &duration,
        "-c",
        &concurrency,
        "-m",
        "POST",
        "-T",
        "application/json",
        "--no-tui",
        "--output-format",
        "json",
    ])
    .arg("-D")
    .arg(body)
    .arg("--cacert")
    .arg(ca);
    if !keep_alive {
        cmd.arg("--disable-keepalive");
    }
    cmd.arg(url);
    let out =
        run_ok(&mut cmd).context("oha failed (install it with `cargo install oha --locked`)")?;
    let v: Value = serde_json::from_slice(&out.stdout).context("oha printed no JSON")?;
    let f = |p: &str| v.pointer(p).and_then(Value::as_f64).unwrap_or(f64::NAN);
    Ok(Stats {
        rps: f("/summary/requestsPerSec"),
        p50_ms: f("/latencyPercentiles/p50") * 1e3,
        p99_ms: f("/latencyPercentiles/p99") * 1e3,
        p999_ms: f("/latencyPercentiles/p99.9") * 1e3,
        success: f("/summary/successRate"),
    })
}

fn peak_rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/PID/status")
}

/// Runs the benchmark and prints the report; fails when a target is missed.
pub fn run() -> Result<()> {
    let root = repo_root()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let target = target_dir(&root);
    println!("==> building release binaries");
    run_ok(
        Command::new(&cargo)
            .current_dir(&root)
            .env("CARGO_TARGET_DIR", &target)
            .args([
                "build",
                "--release",
                "-p",
                "kmm-webhook",
                "-p",
                "kmm-certs",
                "--bins",
                "--example",
                "bench-floor",
            ]),
    )?;
    let bin = target.join("release");

    let work = std::env::temp_dir().join(format!("kmm-bench-webhook-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(work.join("modules"))?;
    let certs = work.join("certs");
    // Service "localhost": the serving certificate's first SAN is `localhost`, so oha verifies it with --cacert.
    run_ok(
        Command::new(bin.join("kmm-certs"))
            .args([
                "create",
                "--service",
                "localhost",
                "--namespace",
                "bench",
                "--out-dir",
            ])
            .arg(&certs),
    )?;
    std::fs::write(work.join("modules/simple-kmod.yaml"), MODULE)?;

    let module_obj: Value = serde_norway::from_str(MODULE)?;
    let bodies = [
        (
            "Module create",
            "/validate-module",
            review(
                "1b4e28ba-2fa1-11d2-883f-0016d3cca427",
                ("kmm.sigs.x-k8s.io", "v1beta1", "Module"),
                "team",
                module_obj,
            ),
        ),
        (
            "Pod needing a driver",
            "/mutate-pod",
            review(
                "1b4e28ba-2fa1-11d2-883f-0016d3cca428",
                ("", "v1", "Pod"),
                "team",
                pod(
                    json!({"kmm.sigs.x-k8s.io/modules": "simple-kmod"}),
                    json!({"cpu": "500m", "memory": "128Mi", "kmm.sigs.x-k8s.io/team.simple-kmod": "1"}),
                ),
            ),
        ),
        (
            "Pod needing none",
            "/mutate-pod",
            review(
                "1b4e28ba-2fa1-11d2-883f-0016d3cca429",
                ("", "v1", "Pod"),
                "team",
                pod(
                    json!({"prometheus.io/scrape": "true"}),
                    json!({"cpu": "500m", "memory": "128Mi"}),
                ),
            ),
        ),
    ];

    let (webhook, wh_addr) = start(
        Command::new(bin.join("kmm-webhook"))
            .args([
                "--listen",
                "127.0.0.1:0",
                "--health-listen",
                "127.0.0.1:0",
                "--loader-image",
                "registry.example/kmm-loader:0.1",
            ])
            .arg("--tls-cert")
            .arg(certs.join("tls.crt"))
            .arg("--tls-key")
            .arg(certs.join("tls.key"))
            .arg("--modules-from")
            .arg(work.join("modules"))
            .env("RUST_LOG", "warn")
            // As in manifests/webhook/deployment.yaml.
            .env("MIMALLOC_ARENA_EAGER_COMMIT", "0")
            .env("MIMALLOC_PURGE_DELAY", "0"),
        "listening admission",
    )?;
    let (_floor, floor_addr) = start(
        Command::new(bin.join("examples/bench-floor"))
            .arg(certs.join("tls.crt"))
            .arg(certs.join("tls.key")),
        "listening",
    )?;
    let port = |addr: &str| addr.rsplit(':').next().unwrap_or_default().to_owned();
    let (wh_port, floor_port) = (port(&wh_addr), port(&floor_addr));
    let ca = certs.join("ca.crt");

    // Each case runs in rounds that alternate the floor and the webhook (the order flips every round), with the
    // case's own body sent to both, and is judged by the median over rounds of the ratio within a round: on a
    // shared 2-core machine the background load drifts, and only figures taken side by side compare.
    let rounds: usize = std::env::var("KMM_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .filter(|r| *r > 0)
        .unwrap_or(5);
    let mut cases = Vec::new();
    for (i, (name, path, body)) in bodies.iter().enumerate() {
        let file = work.join(format!("body-{i}.json"));
        std::fs::write(&file, serde_json::to_vec(body)?)?;
        cases.push((name.to_string(), *path, file.clone(), true));
        if i == 1 {
            cases.push((format!("{name}, no keep-alive"), *path, file, false));
        }
    }
    let mut rows = Vec::new();
    for (name, path, file, keep_alive) in &cases {
        let url = format!("https://localhost:{wh_port}{path}?timeout=10s");
        let floor_url = format!("https://localhost:{floor_port}{path}?timeout=10s");
        let mut pairs = Vec::new();
        for round in 0..rounds {
            println!("==> {name}: round {}/{rounds}", round + 1);
            let (wh, floor) = if round % 2 == 0 {
                let floor = oha(&floor_url, file, &ca, *keep_alive)?;
                (oha(&url, file, &ca, *keep_alive)?, floor)
            } else {
                let wh = oha(&url, file, &ca, *keep_alive)?;
                (wh, oha(&floor_url, file, &ca, *keep_alive)?)
            };
            pairs.push((wh, floor));
        }
        rows.push((name.clone(), pairs));
    }
    let rss_kib = peak_rss_kib(webhook.0.id())?;
    drop(webhook);

    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    println!();
    println!("{rounds} rounds per case, floor and webhook alternating; medians over the rounds");
    println!(
        "{:<40} {:>9} {:>9} {:>8} {:>8} {:>8} {:>8} {:>7} {:>8} {:>7}",
        "run", "req/s", "floor", "p50 ms", "p99 ms", "p99.9", "floor99", "ok %", "x floor", "p99 x"
    );
    let mut missed = Vec::new();
    for (name, pairs) in &rows {
        let wh = |f: fn(&Stats) -> f64| med(pairs.iter().map(|(w, _)| f(w)).collect());
        let fl = |f: fn(&Stats) -> f64| med(pairs.iter().map(|(_, b)| f(b)).collect());
        let ratio = med(pairs.iter().map(|(w, b)| w.rps / b.rps).collect());
        let p99_ratio = med(pairs.iter().map(|(w, b)| w.p99_ms / b.p99_ms).collect());
        let success = pairs.iter().map(|(w, _)| w.success).fold(1.0, f64::min);
        println!(
            "{name:<40} {:>9.0} {:>9.0} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>7.2} {:>8.2} {:>7.2}",
            wh(|s| s.rps),
            fl(|s| s.rps),
            wh(|s| s.p50_ms),
            wh(|s| s.p99_ms),
            wh(|s| s.p999_ms),
            fl(|s| s.p99_ms),
            success * 100.0,
            ratio,
            p99_ratio
        );
        if ratio < 0.8 {
            missed.push(format!(
                "{name}: throughput {ratio:.2}x the floor (target >= 0.8x)"
            ));
        }
        if p99_ratio > 2.0 {
            missed.push(format!(
                "{name}: p99 {p99_ratio:.2}x the floor's (target <= 2x)"
            ));
        }
        if success < 1.0 {
            missed.push(format!("{name}: success rate {success:.4}"));
        }
    }
    let rss_mib = rss_kib as f64 / 1024.0;
    println!("\nkmm-webhook peak RSS (VmHWM): {rss_mib:.1} MiB (target <= 20 MiB)");
    if rss_mib > 20.0 {
        missed.push(format!("peak RSS {rss_mib:.1} MiB > 20 MiB"));
    }
    let _ = std::fs::remove_dir_all(&work);
    if !missed.is_empty() {
        bail!("targets missed:\n  {}", missed.join("\n  "));
    }
    println!("all targets met");
    Ok(())
}
