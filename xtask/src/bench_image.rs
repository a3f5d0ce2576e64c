//! `cargo xtask bench image`: `kmm-loader image pull` against `skopeo copy docker://... oci:DIR`, side by side.
//!
//! The image is a realistic kmod image: about 100 MiB of Debian's signed `.ko` files (the first modules of the
//! cached `linux-image` package's tree, in path order) under `/opt/lib/modules/<kernel>/`, one gzip layer at
//! the default level (as docker and buildah write them), pushed with skopeo to Debian's `docker-registry` on
//! 127.0.0.1 (kmm-e2e's registry helper). Each round pulls into a fresh directory with every contender, the
//! order rotating; all run as processes under `/usr/bin/time` (wall, CPU, peak RSS). skopeo only stores the
//! compressed blob and fsyncs it; kmm-loader also verifies, inflates and writes the tree, and does not wait
//! for the disk: the tree records the boot it was written in and is flushed by the next pull that finds it
//! (an unflushed tree of an earlier boot is pulled again; see kmm-loader's `image::pull`).
//! `--compare-loader OLD` times a second kmm-loader build in the same rounds (before/after figures). The release
//! kmm-loader is built first; the figures are printed, nothing is asserted beyond every pull succeeding.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kmm_e2e::registry::{RegistryServer, digest, skopeo_push};

/// Options of `cargo xtask bench image`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchImageArgs {
    /// Timed rounds of each contender.
    #[arg(long, env = "KMM_BENCH_ROUNDS", default_value_t = 7)]
    pub rounds: usize,
    /// Uncompressed module bytes in the image, in MiB.
    #[arg(long, env = "KMM_BENCH_IMAGE_MIB", default_value_t = 100)]
    pub mib: u64,
    /// A kmm-loader binary to use instead of building one in release mode.
    #[arg(long, env = "KMM_BENCH_LOADER")]
    pub loader: Option<PathBuf>,
    /// A second kmm-loader binary (e.g. an older build) timed in the same rounds, for before/after figures.
    #[arg(long, env = "KMM_BENCH_COMPARE_LOADER")]
    pub compare_loader: Option<PathBuf>,
    /// Where the pulled trees go (default: the system's temporary directory); its file system is measured.
    #[arg(long, env = "KMM_BENCH_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
}

fn release_loader() -> Result<PathBuf> {
    let out = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "-p",
            "kmm-loader",
            "--bin",
            "kmm-loader",
        ])
        .output()
        .context("failed to run cargo build")?;
    if !out.status.success() {
        bail!(
            "cargo build --release -p kmm-loader failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| PathBuf::from("target"), PathBuf::from);
    let bin = target.join("release/kmm-loader");
    ensure!(bin.is_file(), "{} missing after the build", bin.display());
    Ok(bin)
}

/// Every `.ko` under `dir`, relative, in path order.
fn modules_under(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = dir.join(&rel);
        for e in
            std::fs::read_dir(&abs).with_context(|| format!("failed to read {}", abs.display()))?
        {
            let e = e?;
            let r = rel.join(e.file_name());
            if e.file_type()?.is_dir() {
                stack.push(r);
            } else if r.extension().is_some_and(|x| x == "ko") {
                out.push(r);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// What the benchmark image holds.
#[derive(serde::Serialize, serde::Deserialize)]
struct Fixture {
    files: usize,
    bytes: u64,
    layer_bytes: u64,
}

/// Writes a one-layer OCI layout at `dir` (tag `bench`) with the first `limit` bytes of modules.
fn write_layout(modules_dir: &Path, kernel: &str, limit: u64, dir: &Path) -> Result<Fixture> {
    let all = modules_under(modules_dir)?;
    let mut tar = tar::Builder::new(Vec::new());
    let mut dirs = BTreeSet::new();
    let (mut files, mut bytes) = (0usize, 0u64);
    for rel in all {
        if bytes >= limit {
            break;
        }
        let data = std::fs::read(modules_dir.join(&rel))?;
        let path = Path::new("opt/lib/modules").join(kernel).join(&rel);
        let mut parents: Vec<&Path> = path.ancestors().skip(1).collect();
        parents.reverse();
        for p in parents {
            if p.as_os_str().is_empty() || !dirs.insert(p.to_path_buf()) {
                continue;
            }
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Directory);
            h.set_mode(0o755);
            h.set_size(0);
            tar.append_data(&mut h, p, std::io::empty())?;
        }
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        tar.append_data(&mut h, &path, data.as_slice())?;
        files += 1;
        bytes += data.len() as u64;
    }
    let raw = tar.into_inner()?;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&raw)?;
    let layer = gz.finish()?;

    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let put = |bytes: &[u8]| -> Result<(String, usize)> {
        let d = digest(bytes);
        std::fs::write(blobs.join(d.trim_start_matches("sha256:")), bytes)?;
        Ok((d, bytes.len()))
    };
    let (ld, lsize) = put(&layer)?;
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {},
        "rootfs": {"type": "layers", "diff_ids": [digest(&raw)]},
        "history": [{"created_by": "cargo xtask bench image"}],
    });
    let (cd, csize) = put(config.to_string().as_bytes())?;
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": csize},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": lsize}],
    });
    let (md, msize) = put(manifest.to_string().as_bytes())?;
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": msize,
        "annotations": {"org.opencontainers.image.ref.name": "bench"},
    }]});
    std::fs::write(dir.join("index.json"), index.to_string())?;
    std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let fx = Fixture {
        files,
        bytes,
        layer_bytes: layer.len() as u64,
    };
    std::fs::write(dir.join(FIXTURE_FILE), serde_json::to_vec(&fx)?)?;
    Ok(fx)
}

const FIXTURE_FILE: &str = "bench-fixture.json";

/// The benchmark image's OCI layout, built once per kernel and size into kmm-e2e's cache.
fn cached_layout(modules_dir: &Path, kernel: &str, mib: u64) -> Result<(PathBuf, Fixture)> {
    let dir = kmm_e2e::cache::subdir("bench-image")?.join(format!("{kernel}-{mib}mib"));
    if !kmm_e2e::cache::is_complete(&dir) {
        let tmp = kmm_e2e::cache::temp_sibling(&dir);
        write_layout(modules_dir, kernel, mib << 20, &tmp)?;
        kmm_e2e::cache::commit_dir(&tmp, &dir)?;
    }
    let fx = serde_json::from_slice(&std::fs::read(dir.join(FIXTURE_FILE))?)?;
    Ok((dir, fx))
}

/// One process run, as measured.
#[derive(Clone, Copy)]
struct Run {
    wall: Duration,
    /// User + system CPU seconds.
    cpu: f64,
    /// Peak RSS in KiB.
    rss: u64,
}

/// Runs `argv` under `/usr/bin/time`: wall time, CPU time and peak RSS.
fn timed_run(time: &Path, argv: &[String], rss_file: &Path) -> Result<Run> {
    let start = Instant::now();
    let out = Command::new(time)
        .args(["-f", "%U %S %M", "-o"])
        .arg(rss_file)
        .args(argv)
        .output()
        .with_context(|| format!("failed to run {argv:?}"))?;
    let elapsed = start.elapsed();
    if !out.status.success() {
        bail!(
            "{argv:?} failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
    }
    let text = std::fs::read_to_string(rss_file)?;
    let f: Vec<f64> = text
        .lines()
        .last()
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|w| w.parse().ok())
        .collect();
    ensure!(f.len() == 3, "unexpected /usr/bin/time output {text:?}");
    Ok(Run {
        wall: elapsed,
        cpu: f[0] + f[1],
        rss: f[2] as u64,
    })
}

fn median<T: Copy + Ord>(v: &[T]) -> T {
    let mut s = v.to_vec();
    s.sort();
    s[s.len() / 2]
}

fn count_files(dir: &Path) -> usize {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() && e.path().extension().is_some_and(|x| x == "ko") => n += 1,
                _ => {}
            }
        }
    }
    n
}

/// Runs the benchmark and prints the figures.
pub fn run(args: &BenchImageArgs) -> Result<()> {
    ensure!(args.rounds > 0, "--rounds must be at least 1");
    let kernel = kmm_e2e::debian::Kernel::get()?;
    let release = kernel.release();
    let loader = match &args.loader {
        Some(p) => p.clone(),
        None => release_loader()?,
    };
    let time = kmm_e2e::cmd::require("time")?;
    let skopeo = kmm_e2e::cmd::require("skopeo")?;
    let mut tmp = tempfile::Builder::new();
    tmp.prefix("kmm-bench-image-");
    let tmp = match &args.work_dir {
        Some(d) => tmp.tempdir_in(d)?,
        None => tmp.tempdir()?,
    };

    let (layout, fx) = cached_layout(&kernel.modules_dir(), &release, args.mib)?;
    let server = RegistryServer::start_plain()?;
    let manifest_digest = skopeo_push(&layout, "bench", &server, "bench/kmod")?;
    let image = format!("{}/bench/kmod:bench", server.addr);
    println!(
        "image {image} ({manifest_digest}): {} modules, {:.1} MiB in one gzip layer of {:.1} MiB ({release})",
        fx.files,
        fx.bytes as f64 / 1048576.0,
        fx.layer_bytes as f64 / 1048576.0
    );
    println!("pulls into {}", tmp.path().display());

    let pull = |bin: &Path, out: &Path| -> Vec<String> {
        vec![
            bin.display().to_string(),
            "--log".into(),
            "warn".into(),
            "image".into(),
            "pull".into(),
            image.clone(),
            "--kernel-version".into(),
            release.clone(),
            "--out".into(),
            out.display().to_string(),
            "--insecure".into(),
        ]
    };
    let copy = |out: &Path| -> Vec<String> {
        vec![
            skopeo.display().to_string(),
            "copy".into(),
            "--quiet".into(),
            "--src-tls-verify=false".into(),
            format!("docker://{image}"),
            format!("oci:{}:bench", out.display()),
        ]
    };
    // (name, argv for an output directory, checked as a kmm-loader tree)
    type Argv<'a> = Box<dyn Fn(&Path) -> Vec<String> + 'a>;
    let mut contenders: Vec<(String, Argv, bool)> = vec![(
        "kmm-loader image pull".into(),
        Box::new(|out: &Path| pull(&loader, out)),
        true,
    )];
    if let Some(old) = &args.compare_loader {
        contenders.push((
            "compare-loader image pull".into(),
            Box::new(move |out: &Path| pull(old, out)),
            true,
        ));
    }
    contenders.push(("skopeo copy to oci:".into(), Box::new(copy), false));

    let rss_file = tmp.path().join("rss");
    let mut runs: Vec<Vec<Run>> = vec![Vec::new(); contenders.len()];
    // Round 0 warms the registry, the page cache and the binaries; it is checked but not counted. The order
    // rotates every round, so no contender always runs first.
    for round in 0..=args.rounds {
        for k in 0..contenders.len() {
            let c = (round + k) % contenders.len();
            let (_, argv, is_tree) = &contenders[c];
            let out = tmp.path().join(format!("{c}-{round}"));
            let r = timed_run(&time, &argv(&out), &rss_file)?;
            if round == 0 && *is_tree {
                let n = count_files(&out.join("lib/modules").join(&release));
                ensure!(
                    n == fx.files,
                    "{} wrote {n} modules, the image holds {}",
                    contenders[c].0,
                    fx.files
                );
            }
            if round > 0 {
                runs[c].push(r);
            }
        }
    }
    // Trees are removed only now: on ext4 without a journal, inode allocation skips inodes freed in the last
    // minutes, so deleting trees between rounds slows down the next rounds' file creation (seen: 3x). The
    // same holds for a benchmark started right after another one (or after a big `rm -rf`).
    for round in 0..=args.rounds {
        for c in 0..contenders.len() {
            std::fs::remove_dir_all(tmp.path().join(format!("{c}-{round}")))?;
        }
    }

    println!(
        "{} rounds, order rotating (wall time per pull, s):",
        args.rounds
    );
    let layer_mib = fx.layer_bytes as f64 / 1048576.0;
    let mut medians = Vec::new();
    for ((name, _, _), runs) in contenders.iter().zip(&runs) {
        let wall = median(&runs.iter().map(|r| r.wall).collect::<Vec<_>>());
        let cpu = median(
            &runs
                .iter()
                .map(|r| (r.cpu * 1000.0) as u64)
                .collect::<Vec<_>>(),
        );
        let rss = median(&runs.iter().map(|r| r.rss).collect::<Vec<_>>());
        let max_rss = runs.iter().map(|r| r.rss).max().unwrap_or(0);
        let all = runs
            .iter()
            .map(|r| format!("{:.3}", r.wall.as_secs_f64()))
            .collect::<Vec<_>>()
            .join(" ");
        println!(
            "  {name:<26} median {:.3} s wall ({:6.1} MiB/s of layer), {:.3} s CPU, peak RSS {:.1} MiB (max {:.1})   [{all}]",
            wall.as_secs_f64(),
            layer_mib / wall.as_secs_f64().max(1e-9),
            cpu as f64 / 1000.0,
            rss as f64 / 1024.0,
            max_rss as f64 / 1024.0,
        );
        medians.push(wall.as_secs_f64().max(1e-9));
    }
    let skopeo_median = medians.last().copied().unwrap_or(1.0);
    println!(
        "  kmm-loader speed = {:.2}x skopeo's (target >= 1.0x){}; skopeo stores and fsyncs the {layer_mib:.1} MiB blob, kmm-loader also inflates and writes {:.1} MiB in {} files (not waiting for the disk: boot-id marked)",
        skopeo_median / medians[0],
        if args.compare_loader.is_some() {
            format!(", {:.2}x the compare-loader's", medians[1] / medians[0])
        } else {
            String::new()
        },
        fx.bytes as f64 / 1048576.0,
        fx.files
    );
    Ok(())
}
