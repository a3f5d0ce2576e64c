//! `kmm-loader image pull` against Debian's docker-registry, with skopeo as the independent client:
//! skopeo pushes, we pull (plain HTTP; TLS + htpasswd basic auth; a multi-arch index), the tree matches what
//! skopeo copies to an `oci:` layout, a second pull downloads nothing, and mirrors serve digest pulls.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::Path;

use clap::Parser;
use kmm_e2e::registry::{
    RawTar, RegistryServer, TestImage, skopeo, skopeo_push, tree, write_oci_layout,
};
use kmm_loader::cli::{Cli, Command};

pub const KVER: &str = "6.1.0-test-amd64";

/// A kmod image: a "base" layer (with things outside the selection, including a setuid binary and a device
/// node that must be ignored), then the modules and firmware.
pub fn kmod_layers(tag: &str) -> Vec<Vec<u8>> {
    let base = RawTar::new()
        .dir("usr/")
        .dir("usr/bin/")
        .file_mode("usr/bin/su", 0o4755, b"#!/bin/sh\n")
        .chardev("dev/null")
        .file("opt/lib/modules/5.10.0-other/old.ko", b"other kernel")
        .finish();
    let mods = RawTar::new()
        .dir("opt/lib/modules/")
        .dir(&format!("opt/lib/modules/{KVER}/"))
        .file(
            &format!("opt/lib/modules/{KVER}/kmm_a.ko"),
            format!("module a {tag}").as_bytes(),
        )
        .file(
            &format!("opt/lib/modules/{KVER}/extra/kmm_b.ko"),
            b"module b",
        )
        .file(
            &format!("opt/lib/modules/{KVER}/modules.dep"),
            b"kmm_a.ko: extra/kmm_b.ko\nextra/kmm_b.ko:\n",
        )
        .symlink(&format!("opt/lib/modules/{KVER}/b.ko"), "extra/kmm_b.ko")
        .file("firmware/kmm/fw.bin", b"firmware bytes")
        .finish();
    vec![base, mods]
}

pub fn expected_tree() -> Vec<String> {
    let mut v = vec![
        format!("{}", kmm_loader::image::pull::META_FILE),
        "firmware/".into(),
        "firmware/kmm/".into(),
        "firmware/kmm/fw.bin".into(),
        "lib/".into(),
        "lib/modules/".into(),
        format!("lib/modules/{KVER}/"),
        format!("lib/modules/{KVER}/b.ko -> extra/kmm_b.ko"),
        format!("lib/modules/{KVER}/extra/"),
        format!("lib/modules/{KVER}/extra/kmm_b.ko"),
        format!("lib/modules/{KVER}/kmm_a.ko"),
        format!("lib/modules/{KVER}/modules.dep"),
    ];
    v.sort();
    v
}

/// Runs `kmm-loader ARGS...` in-process (clap parsing and the image runner); returns stdout.
pub async fn loader(args: &[&str]) -> anyhow::Result<String> {
    let cli = Cli::try_parse_from(std::iter::once("kmm-loader").chain(args.iter().copied()))?;
    match cli.command {
        Command::Image(c) => kmm_loader::image::cli::execute(c).await,
        other => panic!("not an image command: {other:?}"),
    }
}

fn pull_args<'a>(image: &'a str, out: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec![
        "image",
        "pull",
        image,
        "--kernel-version",
        KVER,
        "--out",
        out.to_str().unwrap(),
        "--firmware-path",
        "/firmware",
        "--attempts",
        "2",
        "--backoff-ms",
        "50",
    ];
    v.extend_from_slice(extra);
    v
}

fn push_test_image(
    server: &RegistryServer,
    repo: &str,
    tag: &str,
    images: &[TestImage],
) -> (tempfile::TempDir, String) {
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    write_oci_layout(&layout, tag, images).unwrap();
    let digest = skopeo_push(&layout, tag, server, repo).unwrap();
    (work, digest)
}

/// `GET /v2/` requests (authentication probes) kmm-loader sent, from the registry's access log.
fn probes(server: &RegistryServer) -> usize {
    server
        .log()
        .lines()
        .filter(|l| l.contains("\"GET /v2/ HTTP") && l.contains("kmm-loader/"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_pull_plain_http_matches_skopeo_and_caches() {
    let server = RegistryServer::start_plain().unwrap();
    let (_w, digest) = push_test_image(
        &server,
        "kmod",
        "v1",
        &[TestImage::amd64(kmod_layers("v1"))],
    );
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("tree");
    let image = format!("{}/kmod:v1", server.addr);

    let printed = loader(&pull_args(&image, &out, &["--insecure"]))
        .await
        .unwrap();
    assert_eq!(printed.trim(), digest, "printed digest is skopeo's");
    assert_eq!(tree(&out), expected_tree());
    assert_eq!(
        fs::read(out.join(format!("lib/modules/{KVER}/kmm_a.ko"))).unwrap(),
        b"module a v1"
    );
    // A registry without authentication is not asked how to authenticate (no `GET /v2/` before the requests).
    assert_eq!(
        probes(&server),
        0,
        "anonymous pull probed /v2/:\n{}",
        server.log()
    );
    assert_eq!(
        fs::read(out.join("firmware/kmm/fw.bin")).unwrap(),
        b"firmware bytes"
    );
    // Nothing but the tree next to it (no temporary directories left).
    assert_eq!(
        tree(work.path())
            .iter()
            .filter(|p| !p.starts_with("tree"))
            .count(),
        0
    );

    // skopeo copies the same image to an oci: layout; pulling that gives the identical tree.
    let oci = work.path().join("skopeo-oci");
    skopeo(&[
        "copy".to_string(),
        "--quiet".into(),
        "--src-tls-verify=false".into(),
        format!("docker://{image}"),
        format!("oci:{}:v1", oci.display()),
    ])
    .unwrap();
    let out2 = work.path().join("from-oci");
    let printed2 = loader(&pull_args(&format!("oci:{}:v1", oci.display()), &out2, &[]))
        .await
        .unwrap();
    assert_eq!(printed2.trim(), digest);
    let strip_meta = |t: Vec<String>| {
        t.into_iter()
            .filter(|p| !p.starts_with(".kmm"))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip_meta(tree(&out2)), strip_meta(tree(&out)));

    // A second pull of the same image downloads no blob; by digest it works with the registry gone.
    let gets = server.blob_gets();
    assert!(
        gets >= 3,
        "expected config + 2 layer GETs in the access log, got {gets}"
    );
    let mtime = fs::metadata(out.join(format!("lib/modules/{KVER}/kmm_a.ko")))
        .unwrap()
        .modified()
        .unwrap();
    loader(&pull_args(&image, &out, &["--insecure"]))
        .await
        .unwrap();
    assert_eq!(server.blob_gets(), gets, "second pull fetched blobs");
    let mtime2 = fs::metadata(out.join(format!("lib/modules/{KVER}/kmm_a.ko")))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(mtime, mtime2, "tree was rewritten");
    let mut server = server;
    server.stop();
    let by_digest = format!("{}/kmod@{digest}", server.addr);
    let again = loader(&pull_args(&by_digest, &out, &["--insecure"]))
        .await
        .unwrap();
    assert_eq!(again.trim(), digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_pull_replaces_tree_atomically_on_new_digest() {
    let server = RegistryServer::start_plain().unwrap();
    let (_w1, d1) = push_test_image(
        &server,
        "kmod",
        "v1",
        &[TestImage::amd64(kmod_layers("v1"))],
    );
    let (_w2, d2) = push_test_image(
        &server,
        "kmod",
        "v2",
        &[TestImage::amd64(kmod_layers("v2"))],
    );
    assert_ne!(d1, d2);
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("tree");
    let p1 = loader(&pull_args(
        &format!("{}/kmod:v1", server.addr),
        &out,
        &["--insecure"],
    ))
    .await
    .unwrap();
    assert_eq!(p1.trim(), d1);
    let p2 = loader(&pull_args(
        &format!("{}/kmod:v2", server.addr),
        &out,
        &["--insecure"],
    ))
    .await
    .unwrap();
    assert_eq!(p2.trim(), d2);
    assert_eq!(
        fs::read(out.join(format!("lib/modules/{KVER}/kmm_a.ko"))).unwrap(),
        b"module a v2"
    );
    assert_eq!(tree(&out), expected_tree());
    assert_eq!(
        tree(work.path())
            .iter()
            .filter(|p| !p.starts_with("tree"))
            .count(),
        0,
        "{:?}",
        tree(work.path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_pull_tls_htpasswd_basic_auth() {
    let server = RegistryServer::start_tls_auth("kmm", "s3cret-pass").unwrap();
    let (_w, digest) = push_test_image(
        &server,
        "team/kmod",
        "v1",
        &[TestImage::amd64(kmod_layers("v1"))],
    );
    let work = tempfile::tempdir().unwrap();
    let image = format!("{}/team/kmod:v1", server.addr);
    let ca = server.ca_file().unwrap();
    let ca = ca.to_str().unwrap();
    let good = server.pull_secret("kmm", "s3cret-pass").unwrap();
    let bad = server.pull_secret("kmm", "wrong").unwrap();

    let out = work.path().join("ok");
    let printed = loader(&pull_args(
        &image,
        &out,
        &["--ca-file", ca, "--pull-secret", good.to_str().unwrap()],
    ))
    .await
    .unwrap();
    assert_eq!(printed.trim(), digest);
    assert_eq!(tree(&out), expected_tree());
    // With credentials the registry is asked once how to authenticate, not before every request.
    assert_eq!(probes(&server), 1, "{}", server.log());

    // Skipping verification instead of trusting the CA works too.
    let out_skip = work.path().join("skip");
    loader(&pull_args(
        &image,
        &out_skip,
        &[
            "--insecure-skip-tls-verify",
            "--pull-secret",
            good.to_str().unwrap(),
        ],
    ))
    .await
    .unwrap();

    // Wrong password, no credentials, unknown CA: each a clear error, nothing written.
    let cases: [(&str, Vec<&str>, &str); 3] = [
        (
            "wrong",
            vec!["--ca-file", ca, "--pull-secret", bad.to_str().unwrap()],
            "credentials",
        ),
        ("anonymous", vec!["--ca-file", ca], "credentials"),
        (
            "untrusted",
            vec!["--pull-secret", good.to_str().unwrap()],
            "reachable",
        ),
    ];
    for (name, extra, expect) in cases {
        let out = work.path().join(name);
        let err = loader(&pull_args(&image, &out, &extra)).await.unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(expect), "{name}: {msg}");
        assert!(
            msg.contains("team/kmod"),
            "{name}: error does not name the image: {msg}"
        );
        assert!(!out.exists(), "{name}: output written");
    }
    assert_eq!(
        tree(work.path())
            .iter()
            .filter(|p| !p.starts_with("ok") && !p.starts_with("skip"))
            .count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_pull_index_resolves_node_platform() {
    let server = RegistryServer::start_plain().unwrap();
    let arm = TestImage {
        architecture: "arm64".into(),
        layers: vec![
            RawTar::new()
                .file(&format!("opt/lib/modules/{KVER}/kmm_a.ko"), b"arm64 build")
                .finish(),
        ],
    };
    let amd = TestImage::amd64(kmod_layers("amd64"));
    let (_w, index_digest) = push_test_image(&server, "multi", "v1", &[arm.clone(), amd]);
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("tree");
    let printed = loader(&pull_args(
        &format!("{}/multi:v1", server.addr),
        &out,
        &["--insecure"],
    ))
    .await
    .unwrap();
    // The printed digest is the platform manifest's, not the index's.
    assert_ne!(printed.trim(), index_digest);
    assert_eq!(
        fs::read(out.join(format!("lib/modules/{KVER}/kmm_a.ko"))).unwrap(),
        b"module a amd64"
    );

    // Only arm64 in an index, and a single arm64 manifest: both refused naming the architecture.
    let (_w2, _) = push_test_image(
        &server,
        "armonly",
        "v1",
        &[arm.clone(), {
            let mut s390 = arm.clone();
            s390.architecture = "s390x".into();
            s390
        }],
    );
    let (_w3, _) = push_test_image(&server, "armsingle", "v1", &[arm]);
    for (repo, expect) in [
        ("armonly", "linux/arm64, linux/s390x"),
        ("armsingle", "linux/arm64"),
    ] {
        let out = work.path().join(repo);
        let err = loader(&pull_args(
            &format!("{}/{repo}:v1", server.addr),
            &out,
            &["--insecure"],
        ))
        .await
        .unwrap_err();
        let msg = format!("{err:#}");
        assert!(
            msg.contains("linux/amd64") && msg.contains(expect),
            "{repo}: {msg}"
        );
        assert!(!out.exists());
        // The layers download and extract while the configuration is checked: their temporary tree is gone.
        let left: Vec<_> = fs::read_dir(work.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(repo))
            .collect();
        assert!(left.is_empty(), "{repo}: left {left:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_pull_mirrors_by_digest() {
    let mirror1 = RegistryServer::start_plain().unwrap(); // empty: the image is not there
    let mirror2 = RegistryServer::start_plain().unwrap();
    let (_w, digest) = push_test_image(
        &mirror2,
        "org/kmod",
        "v1",
        &[TestImage::amd64(kmod_layers("m"))],
    );
    let mut source = RegistryServer::start_plain().unwrap();
    let source_addr = source.addr.clone();
    source.stop(); // a disconnected cluster: the source registry is unreachable
    let work = tempfile::tempdir().unwrap();
    let out = work.path().join("tree");
    let image = format!("{source_addr}/org/kmod@{digest}");
    let m1 = format!("{source_addr}={}", mirror1.addr);
    let m2 = format!("{source_addr}={}", mirror2.addr);
    let printed = loader(&pull_args(
        &image,
        &out,
        &["--insecure", "--mirror", &m1, "--mirror", &m2],
    ))
    .await
    .unwrap();
    assert_eq!(printed.trim(), digest);
    assert_eq!(
        fs::read(out.join(format!("lib/modules/{KVER}/kmm_a.ko"))).unwrap(),
        b"module a m"
    );

    // A tag is not pulled from mirrors (digest-only, like ImageDigestMirrorSet): the source is down.
    let out2 = work.path().join("tag");
    let err = loader(&pull_args(
        &format!("{source_addr}/org/kmod:v1"),
        &out2,
        &["--insecure", "--mirror", &m2],
    ))
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("after 2 attempt(s)"), "{err:#}");

    // All mirrors and the source failing: one error listing each.
    let other = format!("{source_addr}/org/kmod@sha256:{}", "0".repeat(64));
    let err = loader(&pull_args(
        &other,
        &work.path().join("none"),
        &["--insecure", "--mirror", &m1, "--mirror", &m2],
    ))
    .await
    .unwrap_err();
    let msg = format!("{err:#}");
    for host in [&mirror1.addr, &mirror2.addr, &source_addr] {
        assert!(msg.contains(host.as_str()), "{host} missing in {msg}");
    }
}
