//! `kmm-loader image sign` against docker-registry with real modules (the simple-kmod fixture built against
//! Debian's headers): skopeo pushes the unsigned image, we sign and push, skopeo inspects and copies the
//! signed image to an `oci:` layout, which pulls to the same tree as the registry; the signatures are the
//! bytes Debian's sign-file writes and kmod's `modinfo` reads the signer; base layers are reused, the config
//! history grows by one entry, the key is in no layer, and a glob matching nothing is an error naming it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Command;

use clap::Parser;
use kmm_e2e::debian::Kernel;
use kmm_e2e::kmod_build;
use kmm_e2e::registry::{
    RawTar, RegistryServer, TestImage, digest, skopeo, skopeo_push, tree, write_oci_layout,
};
use kmm_loader::cli::{Cli, Command as LoaderCommand};

async fn loader(args: &[&str]) -> anyhow::Result<String> {
    let cli = Cli::try_parse_from(std::iter::once("kmm-loader").chain(args.iter().copied()))?;
    match cli.command {
        LoaderCommand::Image(c) => kmm_loader::image::cli::execute(c).await,
        other => panic!("not an image command: {other:?}"),
    }
}

fn make_key(dir: &Path) {
    let st = Command::new("openssl")
        .current_dir(dir)
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
            "/CN=kmm-e2e image signing key",
        ])
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
}

fn gunzip(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn image_sign_real_modules_roundtrip_with_skopeo() {
    let kernel = Kernel::get().unwrap();
    let krel = kernel.release();
    let built =
        kmod_build::build(kernel, "simple-kmod", &["kmm_simple", "kmm_simple_dep"]).unwrap();
    let simple = fs::read(built.module("kmm_simple")).unwrap();
    let dep = fs::read(built.module("kmm_simple_dep")).unwrap();
    let m = format!("opt/lib/modules/{krel}");

    let server = RegistryServer::start_plain().unwrap();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    let base = RawTar::new()
        .dir("etc/")
        .file("etc/os-release", b"ID=test\n")
        .finish();
    let mods = RawTar::new()
        .file(&format!("{m}/kmm_simple.ko"), &simple)
        .file(&format!("{m}/kmm_simple_dep.ko"), &dep)
        .file(
            &format!("{m}/modules.dep"),
            b"kmm_simple.ko: kmm_simple_dep.ko\nkmm_simple_dep.ko:\n",
        )
        .finish();
    write_oci_layout(
        &w.join("unsigned"),
        "v1",
        &[TestImage::amd64(vec![base, mods])],
    )
    .unwrap();
    let unsigned_digest = skopeo_push(&w.join("unsigned"), "v1", &server, "kmod").unwrap();
    make_key(w);
    let key = w.join("key.priv");
    let cert = w.join("pub.der");
    let from = format!("{}/kmod:v1", server.addr);
    let to = format!("{}/kmod-signed:v1", server.addr);
    let glob = format!("/{m}/kmm_simple*.ko");

    // A glob that matches nothing fails, naming it, and pushes nothing.
    let missing = format!("/{m}/nosuch*.ko");
    let err = loader(&[
        "image",
        "sign",
        "--key",
        key.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--from",
        &from,
        "--to",
        &to,
        "--files",
        &glob,
        "--files",
        &missing,
        "--insecure",
    ])
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains(&missing), "{err:#}");

    let printed = loader(&[
        "image",
        "sign",
        "--key",
        key.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
        "--from",
        &from,
        "--to",
        &to,
        "--files",
        &glob,
        "--insecure",
    ])
    .await
    .unwrap();
    let signed_digest = printed.trim().to_owned();

    // skopeo sees the manifest we pushed: base layers reused, one layer added, config history extended.
    let raw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{to}"),
    ])
    .unwrap();
    assert_eq!(digest(raw.as_bytes()), signed_digest);
    let signed: serde_json::Value = serde_json::from_str(&raw).unwrap();
    let uraw = skopeo(&[
        "inspect",
        "--raw",
        "--tls-verify=false",
        &format!("docker://{from}"),
    ])
    .unwrap();
    assert_eq!(digest(uraw.as_bytes()), unsigned_digest);
    let unsigned: serde_json::Value = serde_json::from_str(&uraw).unwrap();
    let ul = unsigned["layers"].as_array().unwrap();
    let sl = signed["layers"].as_array().unwrap();
    assert_eq!(sl.len(), ul.len() + 1);
    assert_eq!(&sl[..ul.len()], ul.as_slice(), "base layers not reused");
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
    assert_eq!(
        config["rootfs"]["diff_ids"].as_array().unwrap().len(),
        sl.len()
    );
    let history = config["history"].as_array().unwrap();
    assert_eq!(
        history.last().unwrap()["created_by"],
        "kmm-loader image sign"
    );
    assert_eq!(config["architecture"], "amd64");

    // skopeo copies the signed image to an oci: layout; pulling that equals pulling from the registry.
    let oci = w.join("skopeo-oci");
    skopeo(&[
        "copy".to_string(),
        "--quiet".into(),
        "--src-tls-verify=false".into(),
        format!("docker://{to}"),
        format!("oci:{}:signed", oci.display()),
    ])
    .unwrap();
    let from_reg = w.join("from-registry");
    let from_oci = w.join("from-oci");
    for (image, out) in [
        (to.clone(), &from_reg),
        (format!("oci:{}:signed", oci.display()), &from_oci),
    ] {
        let d = loader(&[
            "image",
            "pull",
            &image,
            "--kernel-version",
            &krel,
            "--out",
            out.to_str().unwrap(),
            "--insecure",
        ])
        .await
        .unwrap();
        assert_eq!(d.trim(), signed_digest);
    }
    let strip = |t: Vec<String>| {
        t.into_iter()
            .filter(|p| !p.starts_with(".kmm"))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(tree(&from_reg)), strip(tree(&from_oci)));
    let kdir = from_reg.join("lib/modules").join(&krel);
    for name in ["kmm_simple.ko", "kmm_simple_dep.ko"] {
        assert_eq!(
            fs::read(kdir.join(name)).unwrap(),
            fs::read(from_oci.join("lib/modules").join(&krel).join(name)).unwrap()
        );
        // Byte-identical with Debian's sign-file, and kmod's modinfo reads the signer.
        let reference = w.join(format!("ref-{name}"));
        fs::write(
            &reference,
            if name == "kmm_simple.ko" {
                &simple
            } else {
                &dep
            },
        )
        .unwrap();
        let st = Command::new(kernel.sign_file())
            .args([
                "sha256",
                key.to_str().unwrap(),
                cert.to_str().unwrap(),
                reference.to_str().unwrap(),
            ])
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "{}",
            String::from_utf8_lossy(&st.stderr)
        );
        assert_eq!(
            fs::read(kdir.join(name)).unwrap(),
            fs::read(&reference).unwrap(),
            "{name}"
        );
        let signer = Command::new("modinfo")
            .args(["-F", "signer"])
            .arg(kdir.join(name))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&signer.stdout).trim(),
            "kmm-e2e image signing key",
            "{name}"
        );
    }
    assert_eq!(
        fs::read(kdir.join("modules.dep")).unwrap(),
        b"kmm_simple.ko: kmm_simple_dep.ko\nkmm_simple_dep.ko:\n"
    );

    // The private key is in no layer (nor its PEM body).
    let key_pem = fs::read_to_string(&key).unwrap();
    let key_body: String = key_pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    for l in sl {
        let d = l["digest"].as_str().unwrap().trim_start_matches("sha256:");
        let tar = gunzip(&fs::read(oci.join("blobs/sha256").join(d)).unwrap());
        let text = String::from_utf8_lossy(&tar);
        assert!(!text.contains("PRIVATE KEY"), "layer {d} holds a key");
        assert!(
            !text.contains(&key_body[..64]),
            "layer {d} holds the key body"
        );
    }
}
