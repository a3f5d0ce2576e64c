//! Concurrent `kmm-loader image pull` processes into one target, against Debian's docker-registry: the pulls
//! are serialised by the target's lock file, the second one waits and then reuses the tree (the layer is
//! downloaded once), nothing is left next to the tree, and a temporary tree left by a crashed pull is cleaned.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kmm_e2e::qemu::static_kmm_loader;
use kmm_e2e::registry::{RawTar, RegistryServer, TestImage, skopeo_push, tree, write_oci_layout};
use rustix::fs::{FlockOperation, flock};

const KVER: &str = "6.1.0-test-amd64";

/// Incompressible bytes (xorshift), so the layer takes a while to download and inflate.
fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

fn pull(loader: &Path, image: &str, out: &Path) -> Child {
    Command::new(loader)
        .args([
            "--log",
            "info",
            "image",
            "pull",
            image,
            "--kernel-version",
            KVER,
        ])
        .arg("--out")
        .arg(out)
        .arg("--insecure")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Waits (bounded) for a child; returns (stdout, stderr).
fn finish(mut c: Child) -> (String, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = c.kill();
            panic!("kmm-loader image pull did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let o = c.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "pull failed: {stderr}");
    (stdout, stderr)
}

#[test]
fn image_concurrent_pulls_share_one_download() {
    let loader = static_kmm_loader().unwrap();
    let server = RegistryServer::start_plain().unwrap();
    let layer = RawTar::new()
        .dir(&format!("opt/lib/modules/{KVER}/"))
        .file(
            &format!("opt/lib/modules/{KVER}/big_a.ko"),
            &noise(12 << 20, 1),
        )
        .file(
            &format!("opt/lib/modules/{KVER}/big_b.ko"),
            &noise(12 << 20, 2),
        )
        .file(
            &format!("opt/lib/modules/{KVER}/modules.dep"),
            b"big_a.ko:\nbig_b.ko:\n",
        )
        .finish();
    let work = tempfile::tempdir().unwrap();
    let layout = work.path().join("layout");
    write_oci_layout(&layout, "v1", &[TestImage::amd64(vec![layer])]).unwrap();
    let digest = skopeo_push(&layout, "v1", &server, "concurrent").unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let mdigest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &fs::read(
            layout
                .join("blobs/sha256")
                .join(mdigest.trim_start_matches("sha256:")),
        )
        .unwrap(),
    )
    .unwrap();
    let layer_digest = manifest["layers"][0]["digest"].as_str().unwrap().to_owned();
    let image = format!("{}/concurrent:v1", server.addr);

    let base = work.path().join("cache");
    fs::create_dir_all(&base).unwrap();
    let out = base.join("tree");
    // A temporary tree an interrupted pull left behind: the next pull removes it under the lock.
    let stale = base.join(".tree.kmm-pull-crashed");
    fs::create_dir_all(stale.join("lib/modules")).unwrap();
    fs::write(stale.join("lib/modules/half.ko"), b"half").unwrap();

    // Hold the target's lock ourselves so both processes provably start and wait.
    let lock_path = kmm_loader::image::pull::lock_path(&out);
    let held = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&lock_path)
        .unwrap();
    flock(&held, FlockOperation::LockExclusive).unwrap();
    let a = pull(&loader, &image, &out);
    let b = pull(&loader, &image, &out);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        !out.exists(),
        "a pull wrote the target while the lock was held"
    );
    assert!(stale.exists(), "the stale tree went away without the lock");
    let layer_gets = |server: &RegistryServer| {
        server
            .log()
            .lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains(&layer_digest))
            .count()
    };
    assert_eq!(
        layer_gets(&server),
        0,
        "a layer was fetched without the lock"
    );
    // Release: the test's lock file is unlinked first, like kmm-loader's own holder does.
    fs::remove_file(&lock_path).unwrap();
    drop(held);

    let (out_a, err_a) = finish(a);
    let (out_b, err_b) = finish(b);
    assert_eq!(out_a.trim(), digest);
    assert_eq!(out_b.trim(), digest);
    for err in [&err_a, &err_b] {
        assert!(err.contains("waiting for it"), "no wait was logged: {err}");
    }
    let reused = [&err_a, &err_b]
        .iter()
        .filter(|e| e.contains("already present"))
        .count();
    assert_eq!(
        reused, 1,
        "exactly one pull reuses the other's tree:\n{err_a}\n{err_b}"
    );
    assert_eq!(
        layer_gets(&server),
        1,
        "the layer was downloaded more than once"
    );
    assert_eq!(
        fs::read(out.join(format!("lib/modules/{KVER}/big_b.ko"))).unwrap(),
        noise(12 << 20, 2)
    );
    // Only the tree: no lock file, no temporary trees (the stale one included).
    let left: Vec<String> = fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, ["tree"]);
    assert!(tree(&out).contains(&format!("lib/modules/{KVER}/big_a.ko")));

    // Without any outside lock, two pulls of a new tag into a fresh target: one download, both succeed.
    let out2 = base.join("tree2");
    let (a, b) = (pull(&loader, &image, &out2), pull(&loader, &image, &out2));
    let ((o1, _), (o2, _)) = (finish(a), finish(b));
    assert_eq!((o1.trim(), o2.trim()), (digest.as_str(), digest.as_str()));
    assert_eq!(
        layer_gets(&server),
        2,
        "the second pair downloaded the layer twice"
    );
}
