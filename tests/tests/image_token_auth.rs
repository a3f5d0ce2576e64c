//! The bearer-token flow against Debian's docker-registry configured with `auth: token:` (realm, service,
//! issuer, rootcertbundle) and kmm-e2e's token server: skopeo pushes with credentials, `kmm-loader image pull`
//! with a `.dockerconfigjson` gets a token for the repository's pull scope and extracts the tree; wrong or
//! missing credentials fail with a clear error and leave nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};

use clap::Parser;
use kmm_e2e::registry::{RawTar, RegistryServer, TestImage, skopeo_push, tree, write_oci_layout};
use kmm_e2e::token_server::TokenServer;
use kmm_loader::cli::{Cli, Command};

const KVER: &str = "6.1.0-test-amd64";

async fn loader(args: &[&str]) -> anyhow::Result<String> {
    let cli = Cli::try_parse_from(std::iter::once("kmm-loader").chain(args.iter().copied()))?;
    match cli.command {
        Command::Image(c) => kmm_loader::image::cli::execute(c).await,
        other => panic!("not an image command: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_pull_bearer_token_flow() {
    let tokens = TokenServer::start("kmm-robot", "t0ken-pass").unwrap();
    let server = RegistryServer::start_token_auth(&tokens, "kmm-robot", "t0ken-pass").unwrap();

    // Without a token the registry sends clients to the token server.
    let mut conn = std::net::TcpStream::connect(&server.addr).unwrap();
    conn.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    write!(
        conn,
        "GET /v2/ HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        server.addr
    )
    .unwrap();
    let mut head = String::new();
    let _ = conn.read_to_string(&mut head);
    let head = head.to_lowercase();
    assert!(
        head.starts_with("http/1.1 401")
            && head.contains(&format!("bearer realm=\"{}\"", tokens.realm)),
        "{head}"
    );

    let layer = RawTar::new()
        .dir(&format!("opt/lib/modules/{KVER}/"))
        .file(
            &format!("opt/lib/modules/{KVER}/kmm_tok.ko"),
            b"module behind a token",
        )
        .file(
            &format!("opt/lib/modules/{KVER}/modules.dep"),
            b"kmm_tok.ko:\n",
        )
        .finish();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    write_oci_layout(&layout, "v1", &[TestImage::amd64(vec![layer])]).unwrap();
    // skopeo authenticates through the same token server (push and pull scopes).
    let digest = skopeo_push(&layout, "v1", &server, "secure/kmod").unwrap();
    let pushed = tokens.requests().issued.len();
    assert!(pushed > 0, "skopeo got no token");

    let image = format!("{}/secure/kmod:v1", server.addr);
    let out = work.path().join("tree");
    let secret = server.pull_secret("kmm-robot", "t0ken-pass").unwrap();
    let printed = loader(&[
        "image",
        "pull",
        &image,
        "--kernel-version",
        KVER,
        "--out",
        out.to_str().unwrap(),
        "--insecure",
        "--pull-secret",
        secret.to_str().unwrap(),
    ])
    .await
    .unwrap();
    assert_eq!(printed.trim(), digest);
    assert_eq!(
        std::fs::read(out.join(format!("lib/modules/{KVER}/kmm_tok.ko"))).unwrap(),
        b"module behind a token"
    );
    let req = tokens.requests();
    let ours = &req.issued[pushed..];
    assert!(
        ours.iter()
            .any(|s| s.contains("repository:secure/kmod:pull")),
        "kmm-loader asked for no pull token: {ours:?}"
    );
    assert_eq!(req.refused, 0, "{req:?}");

    // Wrong password: the token server refuses, the pull fails naming the image and the credentials.
    let bad = server.pull_secret("kmm-robot", "wrong").unwrap();
    let bad_out = work.path().join("bad-tree");
    for extra in [vec!["--pull-secret", bad.to_str().unwrap()], vec![]] {
        let mut args = vec![
            "image",
            "pull",
            &image,
            "--kernel-version",
            KVER,
            "--out",
            bad_out.to_str().unwrap(),
            "--insecure",
            "--attempts",
            "1",
        ];
        args.extend(extra.iter().copied());
        let err = loader(&args).await.unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains(&image), "{msg}");
        assert!(msg.contains("check the credentials"), "{msg}");
        assert!(!bad_out.exists(), "a failed pull left {:?}", tree(&bad_out));
    }
    assert!(tokens.requests().refused >= 1, "{:?}", tokens.requests());
}
