//! The whole image path, ending in a real kernel (issue 6): `kmm-loader image build` compiles the simple-kmod
//! fixture against Debian's headers, signs it and pushes a kmod image to Debian's docker-registry;
//! `kmm-loader image pull` fetches and extracts it on the host; the pulled tree becomes the guest's `/opt` and
//! `kmm-loader load` loads the modules in a qemu guest running Debian's kernel, checking the signatures against
//! the build certificate first. All three steps run the same static kmm-loader binary as processes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kmm_e2e::debian::Kernel;
use kmm_e2e::kmod_build;
use kmm_e2e::qemu::{Guest, static_kmm_loader};
use kmm_e2e::registry::RegistryServer;

// A hard bound: TCG boots take 3-15 s here, more when the machine is busy building.
const BOOT_TIMEOUT: Duration = Duration::from_secs(120);

fn run(cmd: &mut Command) -> String {
    kmm_e2e::cmd::stdout(cmd).unwrap()
}

/// Every regular file under `dir`, relative.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let t = e.file_type().unwrap();
            if t.is_dir() {
                stack.push(e.path());
            } else if t.is_file() {
                out.push(e.path().strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn image_built_pulled_and_loaded_in_guest() {
    let kernel = Kernel::get().unwrap();
    let rel = kernel.release();
    let loader = static_kmm_loader().unwrap();
    let server = RegistryServer::start_plain().unwrap();
    let work = tempfile::tempdir().unwrap();
    let w = work.path();
    kmm_e2e::cmd::require("openssl").unwrap();
    run(Command::new("openssl")
        .current_dir(w)
        .args([
            "req", "-x509", "-new", "-nodes", "-utf8", "-sha256", "-days", "36500", "-batch",
        ])
        .args(["-subj", "/CN=kmm-e2e image key", "-outform", "DER"])
        .args(["-out", "build.der", "-keyout", "build.priv"]));

    let image = format!("{}/kmod/simple-kmod:{rel}", server.addr);
    let built = run(Command::new(&loader)
        .args(["--log", "warn", "image", "build", "--kernel-headers"])
        .arg(kernel.headers_dir())
        .arg("--source")
        .arg(kmod_build::fixtures_dir().join("simple-kmod"))
        .args(["--to", &image, "--insecure", "--sign-key"])
        .arg(w.join("build.priv"))
        .arg("--sign-cert")
        .arg(w.join("build.der")));
    let pulled_dir = w.join("pulled");
    let pulled = run(Command::new(&loader)
        .args([
            "--log",
            "warn",
            "image",
            "pull",
            &image,
            "--kernel-version",
            &rel,
        ])
        .arg("--out")
        .arg(&pulled_dir)
        .arg("--insecure"));
    assert_eq!(
        pulled.trim(),
        built.trim(),
        "pulled the digest that was built"
    );

    let kdir = pulled_dir.join("lib/modules").join(&rel);
    let tree = files(&kdir);
    for f in ["kmm_simple.ko", "kmm_simple_dep.ko", "modules.dep"] {
        assert!(tree.iter().any(|t| t == f), "{f} missing from {tree:?}");
    }

    let mut guest = Guest::new(kernel).unwrap();
    guest
        .add_static_binary("/usr/bin/kmm-loader", &loader)
        .unwrap();
    guest
        .fs
        .copy("/certs/build.der", &w.join("build.der"), false)
        .unwrap();
    // The pulled tree, as KMM's worker pod sees the image: /opt/lib/modules/<kernel>/...
    for f in &tree {
        guest
            .fs
            .copy(&format!("/opt/lib/modules/{rel}/{f}"), &kdir.join(f), false)
            .unwrap();
    }
    guest.scenario(
        "load-pulled",
        "kmm-loader load --dir /opt --require-signature /certs/build.der kmm_simple_dep\n\
         loaded kmm_simple\nloaded kmm_simple_dep\n\
         cat /dev/kmm_simple; echo\n\
         kmm-loader unload --dir /opt kmm_simple_dep\n\
         fails loaded kmm_simple_dep\nfails loaded kmm_simple",
    );
    let console = guest.boot(BOOT_TIMEOUT).unwrap();
    eprintln!(
        "boot: {:?} in {:.2?} (timed out: {})",
        console.accel, console.elapsed, console.timed_out
    );
    let out = console.ok("load-pulled").unwrap();
    // The built module answers on its device: the code that was compiled, pushed and pulled runs.
    assert!(out.contains("kmm_simple hello"), "{out}");
}
