//! Test keys made with the real `openssl` CLI, exactly as the KMM docs tell users to make them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::keys;
use crate::sign::Signer;
use crate::signature::HashAlgo;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

pub struct TestKey {
    pub _dir: tempfile::TempDir,
    pub key_path: PathBuf,
    pub cert_path: PathBuf,
    pub _params: Option<tempfile::TempDir>,
}

impl TestKey {
    /// `openssl req -x509 -new -nodes -utf8 -sha256 -days 36500 -batch -outform DER -out pub.der -keyout key.priv`
    pub fn with_newkey(newkey: &str) -> TestKey {
        let dir = tempfile::tempdir().unwrap();
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let key_path = dir.path().join("key.priv");
        let cert_path = dir.path().join("pub.der");
        let out = Command::new("openssl")
            .args([
                "req", "-x509", "-new", "-nodes", "-utf8", "-sha256", "-days", "36500", "-batch",
                "-outform", "DER",
            ])
            .args([
                "-newkey",
                newkey,
                "-subj",
                &format!("/CN=kmm-test {n}/O=kmm-rs"),
            ])
            .arg("-out")
            .arg(&cert_path)
            .arg("-keyout")
            .arg(&key_path)
            .output()
            .expect("openssl must be installed");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        TestKey {
            _dir: dir,
            key_path,
            cert_path,
            _params: None,
        }
    }

    /// An EC key on `curve` (`P-256`, `P-384`).
    pub fn with_ec(curve: &str) -> TestKey {
        let dir = tempfile::tempdir().unwrap();
        let params = dir.path().join("params.pem");
        let out = Command::new("openssl")
            .args(["ecparam", "-name", curve, "-out"])
            .arg(&params)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut k = TestKey::with_newkey(&format!("ec:{}", params.display()));
        k._params = Some(dir);
        k
    }

    pub fn rsa(bits: u32) -> TestKey {
        TestKey::with_newkey(&format!("rsa:{bits}"))
    }

    pub fn signer_with(&self, hash: HashAlgo) -> Signer {
        let key = keys::load_private_key(&self.key_path, None).unwrap();
        let cert = keys::load_certificates(&self.cert_path).unwrap().remove(0);
        Signer { key, cert, hash }
    }

    pub fn signer(&self) -> Signer {
        self.signer_with(HashAlgo::Sha256)
    }
}
