//! `kmm-loader image build` with Debian's headers and the simple-kmod fixture: make, modules.dep, signing,
//! push without a container engine; the pushed image is inspected by skopeo and pulled back by us, its
//! modules.dep equals what the real `depmod` writes for the same tree, and kmod's modinfo reads the signer.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::process::Command;

use clap::Parser;
use kmm_e2e::debian::Kernel;
use kmm_e2e::kmod_build;
use kmm_e2e::registry::{RegistryServer, digest, skopeo};
use kmm_loader::cli::{Cli, Command as LoaderCommand};

/// What `image build` of tests/fixtures/simple-kmod puts under lib/modules/<kernel> (sorted).
const FIXTURE_FILES: [&str; 6] = [
    "kmm_fail.ko",
    "kmm_post.ko",
    "kmm_simple.ko",
    "kmm_simple_dep.ko",
    "kmm_softdep.ko",
    "modules.dep",
];

async fn loader(args: &[&str]) -> anyhow::Result<String> {
    let cli = Cli::try_parse_from(std::iter::once("kmm-loader").chain(args.iter().copied()))?;
    match cli.command {
        LoaderCommand::Image(c) => kmm_loader::image::cli::execute(c).await,
        other => panic!("not an image command: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_build_signed_module_pushes_and_pulls_back() {
    let kernel = Kernel::get().unwrap();
    let krel = kernel.release();
    let server = RegistryServer::start_plain().unwrap();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let st = Command::new("openssl")
        .current_dir(w)
        .args([
            "req", "-x509", "-new", "-nodes", "-utf8", "-sha256", "-days", "36500", "-batch",
            "-outform", "DER",
        ])
        .args([
            "-out",
            "pub.der",
            "-keyout",
            "key.priv",
            "-subj",
            "/CN=kmm-e2e build key",
        ])
        .output()
        .unwrap();
    assert!(st.status.success());
    let source = kmod_build::fixtures_dir().join("simple-kmod");
    let headers = kernel.headers_dir();
    let to = format!("{}/built/simple-kmod:{krel}", server.addr);

    let printed = loader(&[
        "image",
        "build",
        "--kernel-headers",
        headers.to_str().unwrap(),
        "--source",
        source.to_str().unwrap(),
        "--to",
        &to,
        "--sign-key",
        w.join("key.priv").to_str().unwrap(),
        "--sign-cert",
        w.join("pub.der").to_str().unwrap(),
        "--insecure",
    ])
    .await
    .unwrap();
    let d = printed.trim();
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{to}"),
    ])
    .unwrap();
    assert_eq!(digest(raw.as_bytes()), d);
    let config: serde_json::Value = serde_json::from_str(
        &skopeo(&[
            "inspect",
            "--config",
            "--raw",
            "--tls-verify=false",
            &format!("docker://{to}"),
        ])
        .unwrap(),
    )
    .unwrap();
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["os"], "linux");
    // The source directory is not touched (built in a copy).
    assert!(!source.join("kmm_simple.ko").exists());

    let out = w.join("pulled");
    let pulled = loader(&[
        "image",
        "pull",
        &to,
        "--kernel-version",
        &krel,
        "--out",
        out.to_str().unwrap(),
        "--insecure",
    ])
    .await
    .unwrap();
    assert_eq!(pulled.trim(), d);
    let kdir = out.join("lib/modules").join(&krel);
    let mut names: Vec<String> = fs::read_dir(&kdir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    // Every module of the fixture (kmm_softdep and its partners joined kmm_simple and kmm_simple_dep).
    assert_eq!(names, FIXTURE_FILES);
    let modules: Vec<&str> = FIXTURE_FILES
        .iter()
        .copied()
        .filter(|n| n.ends_with(".ko"))
        .collect();
    for m in &modules {
        let o = Command::new("modinfo")
            .args(["-F", "signer"])
            .arg(kdir.join(m))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&o.stdout).trim(),
            "kmm-e2e build key",
            "{m}"
        );
        let o = Command::new("modinfo")
            .args(["-F", "vermagic"])
            .arg(kdir.join(m))
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&o.stdout).starts_with(&format!("{krel} ")),
            "{m}"
        );
    }

    // The real depmod, run on a copy of the tree, writes the same modules.dep.
    let root = w.join("depmod-root");
    let rdir = root.join("lib/modules").join(&krel);
    fs::create_dir_all(&rdir).unwrap();
    for m in &modules {
        fs::copy(kdir.join(m), rdir.join(m)).unwrap();
    }
    let o = Command::new("depmod")
        .arg("-b")
        .arg(&root)
        .arg(&krel)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let mut ours: Vec<String> = fs::read_to_string(kdir.join("modules.dep"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    let mut theirs: Vec<String> = fs::read_to_string(rdir.join("modules.dep"))
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    ours.sort();
    theirs.sort();
    assert_eq!(ours, theirs);
    assert!(
        ours.iter().any(|l| l == "kmm_simple_dep.ko: kmm_simple.ko"),
        "{ours:?}"
    );

    // A source that does not build: the compiler's complaint is in the error.
    let bad = w.join("bad-src");
    fs::create_dir_all(&bad).unwrap();
    fs::write(bad.join("Makefile"), "obj-m += broken.o\n").unwrap();
    fs::write(bad.join("broken.c"), "this is not C;\n").unwrap();
    let err = loader(&[
        "image",
        "build",
        "--kernel-headers",
        headers.to_str().unwrap(),
        "--source",
        bad.to_str().unwrap(),
        "--to",
        &format!("{}/built/broken:1", server.addr),
        "--insecure",
    ])
    .await
    .unwrap_err();
    let msg = format!("{err:#}");
    assert!(
        msg.contains("failed to build the module") && msg.contains("broken.c"),
        "{msg}"
    );
}
