//! The `kmm-certs` binary against real openssl.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::Path;
use std::process::Command;

fn kmm_certs(args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_kmm-certs"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kmm-certs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn openssl(args: &[&str]) -> String {
    let out = Command::new("openssl").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn p(path: &Path) -> &str {
    path.to_str().unwrap()
}

#[test]
fn signing_key_is_an_openssl_compatible_der_certificate_and_pem_key() {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = (dir.path().join("key.priv"), dir.path().join("pub.der"));
    // 2048 bits: RSA key generation in a debug build takes about a minute at 4096 (the default).
    kmm_certs(&[
        "signing-key",
        "--out-key",
        p(&key),
        "--out-cert",
        p(&cert),
        "--cn",
        "kmm test key",
        "--bits",
        "2048",
    ]);

    let text = openssl(&["x509", "-inform", "DER", "-in", p(&cert), "-noout", "-text"]);
    assert!(
        text.contains("Signature Algorithm: sha256WithRSAEncryption"),
        "{text}"
    );
    assert!(text.contains("Subject: CN = kmm test key"), "{text}");
    assert!(text.contains("Issuer: CN = kmm test key"), "{text}");
    assert!(text.contains("CA:TRUE"), "{text}");
    assert!(text.contains("X509v3 Subject Key Identifier"), "{text}");
    let cert_pub = openssl(&[
        "x509",
        "-inform",
        "DER",
        "-in",
        p(&cert),
        "-noout",
        "-pubkey",
    ]);
    let key_pub = openssl(&["pkey", "-in", p(&key), "-pubout"]);
    assert_eq!(cert_pub, key_pub, "certificate and key belong together");
    assert!(
        std::fs::read_to_string(&key)
            .unwrap()
            .starts_with("-----BEGIN PRIVATE KEY-----")
    );

    let pem = dir.path().join("pub.pem");
    openssl(&["x509", "-inform", "DER", "-in", p(&cert), "-out", p(&pem)]);
    let verified = openssl(&["verify", "-CAfile", p(&pem), p(&pem)]);
    assert!(verified.contains("OK"), "{verified}");
    let days = openssl(&[
        "x509",
        "-in",
        p(&pem),
        "-noout",
        "-checkend",
        &(36_499u64 * 86_400).to_string(),
    ]);
    assert!(days.contains("will not expire"), "{days}");
}

#[test]
fn create_writes_a_verifiable_pair_and_keeps_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("certs");
    kmm_certs(&[
        "create",
        "--service",
        "kmm-webhook",
        "--namespace",
        "kmm-rs-system",
        "--out-dir",
        p(&out),
    ]);
    let (ca, crt, key) = (out.join("ca.crt"), out.join("tls.crt"), out.join("tls.key"));
    let verified = openssl(&[
        "verify",
        "-CAfile",
        p(&ca),
        "-purpose",
        "sslserver",
        p(&crt),
    ]);
    assert!(verified.contains("OK"), "{verified}");
    let sans = openssl(&["x509", "-in", p(&crt), "-noout", "-ext", "subjectAltName"]);
    for name in [
        "DNS:kmm-webhook,",
        "DNS:kmm-webhook.kmm-rs-system,",
        "DNS:kmm-webhook.kmm-rs-system.svc,",
        "DNS:kmm-webhook.kmm-rs-system.svc.cluster.local",
    ] {
        assert!(sans.contains(name), "{name} in {sans}");
    }
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let before: Vec<Vec<u8>> = [&ca, &crt, &key]
        .iter()
        .map(|f| std::fs::read(f).unwrap())
        .collect();
    kmm_certs(&[
        "create",
        "--service",
        "kmm-webhook",
        "--namespace",
        "kmm-rs-system",
        "--out-dir",
        p(&out),
    ]);
    let after: Vec<Vec<u8>> = [&ca, &crt, &key]
        .iter()
        .map(|f| std::fs::read(f).unwrap())
        .collect();
    assert_eq!(before, after, "a valid pair is kept");

    // Another service name: the pair does not fit and is replaced.
    kmm_certs(&[
        "create",
        "--service",
        "other",
        "--namespace",
        "kmm-rs-system",
        "--out-dir",
        p(&out),
    ]);
    assert_ne!(std::fs::read(&crt).unwrap(), before[1]);
}
