//! Bad input for `kmm-loader image pull` against a real docker-registry: unknown image, missing tag, registry
//! down, a corrupt layer blob, a manifest that does not match its digest, a missing kernel, and the hostile
//! archive corpus pushed with skopeo. Each is one clear error naming the image; nothing is left behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::Path;

use clap::Parser;
use kmm_e2e::registry::{RawTar, RegistryServer, TestImage, skopeo_push, tree, write_oci_layout};
use kmm_loader::cli::{Cli, Command};

const KVER: &str = "6.1.0-test-amd64";

async fn pull(image: &str, out: &Path, kernel: &str, extra: &[&str]) -> anyhow::Result<String> {
    let mut args = vec![
        "kmm-loader",
        "image",
        "pull",
        image,
        "--kernel-version",
        kernel,
        "--out",
        out.to_str().unwrap(),
        "--insecure",
        "--firmware-path",
        "/firmware",
        "--attempts",
        "2",
        "--backoff-ms",
        "50",
    ];
    args.extend_from_slice(extra);
    match Cli::try_parse_from(args)?.command {
        Command::Image(c) => kmm_loader::image::cli::execute(c).await,
        other => panic!("not an image command: {other:?}"),
    }
}

fn push(server: &RegistryServer, repo: &str, layers: Vec<Vec<u8>>) -> (tempfile::TempDir, String) {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    write_oci_layout(&layout, "v1", &[TestImage::amd64(layers)]).unwrap();
    let d = skopeo_push(&layout, "v1", server, repo).unwrap();
    (work, d)
}

fn good_layer() -> Vec<u8> {
    RawTar::new()
        .file(&format!("opt/lib/modules/{KVER}/kmm_a.ko"), &[7u8; 4096])
        .finish()
}

/// Expects an error containing every `needles`, and nothing at all under `work`.
async fn expect_failure(image: &str, work: &Path, kernel: &str, needles: &[&str]) -> String {
    expect_failure_with(image, work, kernel, needles, &[]).await
}

async fn expect_failure_with(
    image: &str,
    work: &Path,
    kernel: &str,
    needles: &[&str],
    extra: &[&str],
) -> String {
    let out = work.join("tree");
    let err = pull(image, &out, kernel, extra).await.unwrap_err();
    let msg = format!("{err:#}");
    for n in needles {
        assert!(msg.contains(n), "{image}: {n:?} missing in: {msg}");
    }
    assert!(
        tree(work).is_empty(),
        "{image}: left behind: {:?}",
        tree(work)
    );
    msg
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_errors_bad_input_is_reported_clearly() {
    let mut server = RegistryServer::start_plain().unwrap();
    let (_w, digest) = push(&server, "kmod", vec![good_layer()]);
    let work = tempfile::tempdir().unwrap();
    let a = server.addr.clone();

    expect_failure(
        &format!("{a}/nosuch:v1"),
        work.path(),
        KVER,
        &["nosuch", "check the image name"],
    )
    .await;
    expect_failure(
        &format!("{a}/kmod:v9"),
        work.path(),
        KVER,
        &["kmod:v9", "check the image name and tag"],
    )
    .await;
    expect_failure(
        &format!("{a}/kmod:v1"),
        work.path(),
        "9.9.9",
        &["/opt/lib/modules/9.9.9", "no modules for kernel 9.9.9"],
    )
    .await;

    // Corrupt layer blob in the registry's storage: same length, other bytes.
    let (_w2, d2) = push(&server, "corrupt", vec![good_layer()]);
    let manifest: serde_json::Value = {
        let raw = fs::read(server.blob_file(&d2)).unwrap();
        serde_json::from_slice(&raw).unwrap()
    };
    let layer = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let f = server.blob_file(&layer);
    let mut bytes = fs::read(&f).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    fs::write(&f, &bytes).unwrap();
    expect_failure(
        &format!("{a}/corrupt:v1"),
        work.path(),
        KVER,
        &["corrupt:v1", &layer, "tampered"],
    )
    .await;

    // A manifest whose bytes no longer match its digest (one digit of a size changed, still valid JSON).
    let (_w3, d3) = push(&server, "mismatch", vec![good_layer()]);
    let mf = server.blob_file(&d3);
    let text = fs::read_to_string(&mf).unwrap();
    let pos = text.find("\"size\":").unwrap() + 7;
    let mut b = text.into_bytes();
    b[pos] = if b[pos] == b'9' { b'8' } else { b'9' };
    fs::write(&mf, b).unwrap();
    expect_failure(
        &format!("{a}/mismatch:v1"),
        work.path(),
        KVER,
        &["mismatch", "does not match its digest"],
    )
    .await;
    expect_failure(
        &format!("{a}/mismatch@{d3}"),
        work.path(),
        KVER,
        &["mismatch", "does not match its digest"],
    )
    .await;

    // Registry down: retried, then one error saying so.
    server.stop();
    let msg = expect_failure(
        &format!("{a}/kmod@{digest}"),
        work.path(),
        KVER,
        &["after 2 attempt(s)", "reachable"],
    )
    .await;
    assert!(msg.contains(&format!("{a}/kmod")), "{msg}");
}

/// The hostile-archive corpus, pushed to a real registry by skopeo: every image is refused and nothing is
/// written outside (or inside) the output directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_errors_hostile_archives_refused() {
    let server = RegistryServer::start_plain().unwrap();
    let m = format!("opt/lib/modules/{KVER}");
    let escape_marker = format!("/tmp/kmm-e2e-escape-{}", std::process::id());
    let big = vec![0u8; 8 << 20];
    let many = {
        let mut t = RawTar::new();
        for i in 0..50 {
            t.file(&format!("{m}/f{i}.ko"), b"x");
        }
        t.finish()
    };
    let limits: &[&str] = &[
        "--max-file-size",
        "1048576",
        "--max-total-size",
        "4194304",
        "--max-files",
        "20",
    ];
    let corpus: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "traversal",
            RawTar::new()
                .file(&format!("{m}/../../../../../../../..{escape_marker}"), b"x")
                .finish(),
            "'..'",
        ),
        (
            "absolute",
            RawTar::new().file(&escape_marker, b"x").finish(),
            "absolute path",
        ),
        (
            "symlink",
            RawTar::new()
                .symlink(&format!("{m}/evil"), "../../../../../../../../tmp")
                .file(&format!("{m}/evil/kmm-e2e-escape"), b"x")
                .finish(),
            "leaves the extracted tree",
        ),
        (
            "hardlink",
            RawTar::new()
                .hardlink(&format!("{m}/shadow"), "etc/shadow")
                .finish(),
            "hardlink target",
        ),
        (
            "device",
            RawTar::new().chardev(&format!("{m}/kmem")).finish(),
            "device node",
        ),
        (
            "setuid",
            RawTar::new()
                .file_mode(&format!("{m}/suid.ko"), 0o4755, b"x")
                .finish(),
            "setuid",
        ),
        (
            "bomb",
            RawTar::new().file(&format!("{m}/bomb.ko"), &big).finish(),
            "larger than the limit",
        ),
        ("files", many, "more than 20 files"),
    ];
    for (name, layer, expect) in corpus {
        let (_w, _) = push(
            &server,
            &format!("hostile-{name}"),
            vec![good_layer(), layer],
        );
        let work = tempfile::tempdir().unwrap();
        expect_failure_with(
            &format!("{}/hostile-{name}:v1", server.addr),
            work.path(),
            KVER,
            &[&format!("hostile-{name}"), expect],
            limits,
        )
        .await;
        assert!(
            !Path::new(&escape_marker).exists(),
            "{name}: escaped to {escape_marker}"
        );
        assert!(
            !Path::new("/tmp/kmm-e2e-escape").exists(),
            "{name}: escaped through a symlink"
        );
        assert!(!Path::new("/etc/shadow.kmm").exists());
    }
}
