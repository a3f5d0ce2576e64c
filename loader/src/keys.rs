//! Certificates and private keys: X.509 certificates from DER or PEM files (a trust store for verification),
//! PEM private keys for signing (PKCS#8, PKCS#1, SEC1; encrypted PKCS#8 with the `KBUILD_SIGN_PIN` passphrase, as
//! `sign-file` does), and extraction of the kernel's built-in signing certificate from a kernel image.

use std::path::{Path, PathBuf};

use der::{Decode, Encode};
use pkcs8::DecodePrivateKey;
use thiserror::Error;

use crate::signature::oid;

/// The environment variable `sign-file` reads the key passphrase from.
pub const PIN_ENV: &str = "KBUILD_SIGN_PIN";

/// Errors of this module.
#[derive(Debug, Error)]
pub enum KeyError {
    #[error("failed to read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to parse certificate {path}: {reason}")]
    ParseCertificate { path: PathBuf, reason: String },
    #[error("failed to parse private key {path}: {reason}")]
    ParsePrivateKey { path: PathBuf, reason: String },
    #[error(
        "failed to decrypt private key {path}: it is encrypted; set {PIN_ENV} to its passphrase"
    )]
    DecryptPrivateKeyNoPin { path: PathBuf },
    #[error("failed to decrypt private key {path} with the passphrase from {PIN_ENV}")]
    DecryptPrivateKey { path: PathBuf },
    #[error("failed to match private key {key} with certificate {cert}: they are not a key pair")]
    MatchKeyPair { key: PathBuf, cert: PathBuf },
}

/// A public key usable for module signatures.
#[derive(Debug, Clone)]
pub enum PublicKey {
    Rsa(rsa::RsaPublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Unsupported(String),
}

impl PublicKey {
    pub fn kind(&self) -> &str {
        match self {
            PublicKey::Rsa(_) => "RSA",
            PublicKey::P256(_) => "P-256",
            PublicKey::P384(_) => "P-384",
            PublicKey::Unsupported(s) => s,
        }
    }

    fn from_spki(spki: &spki::SubjectPublicKeyInfoOwned) -> PublicKey {
        let bits = spki.subject_public_key.raw_bytes();
        if spki.algorithm.oid == oid::RSA_ENCRYPTION {
            use rsa::pkcs1::DecodeRsaPublicKey;
            return rsa::RsaPublicKey::from_pkcs1_der(bits).map_or_else(
                |e| PublicKey::Unsupported(format!("RSA key ({e})")),
                PublicKey::Rsa,
            );
        }
        if spki.algorithm.oid == oid::EC_PUBLIC_KEY {
            let curve = spki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<der::asn1::ObjectIdentifier>().ok());
            return match curve {
                Some(c) if c == oid::SECP256R1 => p256::ecdsa::VerifyingKey::from_sec1_bytes(bits)
                    .map_or_else(
                        |e| PublicKey::Unsupported(format!("P-256 key ({e})")),
                        PublicKey::P256,
                    ),
                Some(c) if c == oid::SECP384R1 => p384::ecdsa::VerifyingKey::from_sec1_bytes(bits)
                    .map_or_else(
                        |e| PublicKey::Unsupported(format!("P-384 key ({e})")),
                        PublicKey::P384,
                    ),
                other => PublicKey::Unsupported(format!("EC curve {other:?}")),
            };
        }
        PublicKey::Unsupported(format!("key algorithm {}", spki.algorithm.oid))
    }
}

/// A parsed certificate with its public key and subject key identifier.
#[derive(Debug, Clone)]
pub struct Certificate {
    pub der: Vec<u8>,
    pub cert: x509_cert::Certificate,
    pub ski: Option<Vec<u8>>,
    pub key: PublicKey,
    /// Precomputed Montgomery parameters for fast RSA verification.
    pub fast_rsa: Option<crate::fastrsa::FastRsa>,
}

impl Certificate {
    /// Parses one DER certificate.
    pub fn from_der(der_bytes: &[u8]) -> Result<Certificate, der::Error> {
        let cert = x509_cert::Certificate::from_der(der_bytes)?;
        let ski = cert.tbs_certificate.extensions.as_ref().and_then(|exts| {
            exts.iter()
                .find(|e| e.extn_id == oid::SUBJECT_KEY_ID)
                .and_then(|e| der::asn1::OctetString::from_der(e.extn_value.as_bytes()).ok())
                .map(|o| o.as_bytes().to_vec())
        });
        let key = PublicKey::from_spki(&cert.tbs_certificate.subject_public_key_info);
        let fast_rsa = match &key {
            PublicKey::Rsa(k) => crate::fastrsa::FastRsa::new(k),
            _ => None,
        };
        Ok(Certificate {
            der: der_bytes.to_vec(),
            cert,
            ski,
            key,
            fast_rsa,
        })
    }

    /// The subject's commonName (empty if none).
    pub fn subject_cn(&self) -> String {
        common_name(&self.cert.tbs_certificate.subject).unwrap_or_default()
    }

    /// PEM encoding.
    pub fn to_pem(&self) -> String {
        der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &self.der)
            .unwrap_or_default()
    }
}

/// The first commonName of a distinguished name.
pub fn common_name(name: &x509_cert::name::Name) -> Option<String> {
    name.0
        .iter()
        .flat_map(|rdn| rdn.0.iter())
        .find(|a| a.oid == oid::COMMON_NAME)
        .map(|a| String::from_utf8_lossy(a.value.value()).into_owned())
}

/// PEM blocks (label, DER) of a text file, in order. Blocks that fail to decode are skipped.
fn pem_blocks(text: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let Ok(text) = std::str::from_utf8(text) else {
        return out;
    };
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let block = &rest[start..];
        let Some(label_end) = block[11..].find("-----") else {
            break;
        };
        let label = &block[11..11 + label_end];
        let end_marker = format!("-----END {label}-----");
        let Some(end) = block.find(&end_marker) else {
            break;
        };
        let pem = &block[..end + end_marker.len()];
        if let Ok((l, der_bytes)) = der::pem::decode_vec(pem.as_bytes()) {
            out.push((l.to_string(), der_bytes));
        } else if pem.contains("Proc-Type: 4,ENCRYPTED") {
            out.push((format!("LEGACY ENCRYPTED {label}"), Vec::new()));
        }
        rest = &block[end + end_marker.len()..];
    }
    out
}

fn read(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Loads every certificate of a DER or PEM file.
pub fn load_certificates(path: &Path) -> Result<Vec<Certificate>, KeyError> {
    let bytes = read(path)?;
    let err = |reason: String| KeyError::ParseCertificate {
        path: path.to_path_buf(),
        reason,
    };
    if let Ok(c) = Certificate::from_der(&bytes) {
        return Ok(vec![c]);
    }
    let blocks = pem_blocks(&bytes);
    let certs: Vec<_> = blocks
        .iter()
        .filter(|(l, _)| l == "CERTIFICATE")
        .map(|(_, d)| Certificate::from_der(d).map_err(|e| err(e.to_string())))
        .collect::<Result<_, _>>()?;
    if certs.is_empty() {
        return Err(err(
            "neither a DER certificate nor a PEM file with a CERTIFICATE block".into(),
        ));
    }
    Ok(certs)
}

/// Trusted certificates for [`crate::signature::verify`].
#[derive(Debug, Clone, Default)]
pub struct TrustStore {
    certs: Vec<Certificate>,
}

impl TrustStore {
    pub fn new(certs: Vec<Certificate>) -> TrustStore {
        TrustStore { certs }
    }

    /// Loads every certificate of every file.
    pub fn load(paths: &[PathBuf]) -> Result<TrustStore, KeyError> {
        let mut certs = Vec::new();
        for p in paths {
            certs.extend(load_certificates(p)?);
        }
        Ok(TrustStore { certs })
    }

    pub fn certs(&self) -> &[Certificate] {
        &self.certs
    }
}

/// An RSA private key, with ring's constant-time CRT implementation prepared alongside when ring accepts the key
/// (2048 to 8192 bits): its private-key operation is several times faster than the `rsa` crate's, which remains the
/// fallback for other keys and for digests ring does not sign with (SHA-1, SHA-224). PKCS#1 v1.5 is deterministic,
/// so both produce the same bytes.
#[derive(Clone)]
pub struct RsaSigningKey {
    key: rsa::RsaPrivateKey,
    fast: Option<std::sync::Arc<ring::rsa::KeyPair>>,
}

impl RsaSigningKey {
    /// Wraps `key`, preparing ring's key pair when ring accepts it.
    pub fn new(key: rsa::RsaPrivateKey) -> RsaSigningKey {
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let fast = key
            .to_pkcs1_der()
            .ok()
            .and_then(|der| ring::rsa::KeyPair::from_der(der.as_bytes()).ok())
            .map(std::sync::Arc::new);
        RsaSigningKey { key, fast }
    }

    /// ring's key pair, when ring accepted the key.
    pub fn fast(&self) -> Option<&ring::rsa::KeyPair> {
        self.fast.as_deref()
    }
}

impl std::ops::Deref for RsaSigningKey {
    type Target = rsa::RsaPrivateKey;
    fn deref(&self) -> &rsa::RsaPrivateKey {
        &self.key
    }
}

impl std::fmt::Debug for RsaSigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RsaSigningKey")
            .field("bits", &(rsa::traits::PublicKeyParts::size(&self.key) * 8))
            .field("fast", &self.fast.is_some())
            .finish()
    }
}

/// A private key for signing modules.
#[derive(Debug, Clone)]
pub enum SigningKey {
    Rsa(RsaSigningKey),
    P256(p256::ecdsa::SigningKey),
    P384(p384::ecdsa::SigningKey),
}

impl SigningKey {
    /// The SubjectPublicKeyInfo DER of the matching public key.
    pub fn public_key_der(&self) -> Option<Vec<u8>> {
        use spki::EncodePublicKey;
        match self {
            SigningKey::Rsa(k) => k
                .to_public_key()
                .to_public_key_der()
                .ok()
                .map(|d| d.to_vec()),
            SigningKey::P256(k) => k
                .verifying_key()
                .to_public_key_der()
                .ok()
                .map(|d| d.to_vec()),
            SigningKey::P384(k) => k
                .verifying_key()
                .to_public_key_der()
                .ok()
                .map(|d| d.to_vec()),
        }
    }

    fn from_pkcs8_der(der_bytes: &[u8]) -> Result<SigningKey, String> {
        let info = pkcs8::PrivateKeyInfo::from_der(der_bytes).map_err(|e| e.to_string())?;
        if info.algorithm.oid == oid::RSA_ENCRYPTION {
            return rsa::RsaPrivateKey::from_pkcs8_der(der_bytes)
                .map(|k| SigningKey::Rsa(RsaSigningKey::new(k)))
                .map_err(|e| e.to_string());
        }
        if info.algorithm.oid == oid::EC_PUBLIC_KEY {
            let curve = info.algorithm.parameters_oid().map_err(|e| e.to_string())?;
            if curve == oid::SECP256R1 {
                return p256::ecdsa::SigningKey::from_pkcs8_der(der_bytes)
                    .map(SigningKey::P256)
                    .map_err(|e| e.to_string());
            }
            if curve == oid::SECP384R1 {
                return p384::ecdsa::SigningKey::from_pkcs8_der(der_bytes)
                    .map(SigningKey::P384)
                    .map_err(|e| e.to_string());
            }
            return Err(format!("unsupported EC curve {curve}"));
        }
        Err(format!("unsupported key algorithm {}", info.algorithm.oid))
    }
}

/// Loads a PEM private key (the first key block; a file may also hold certificates, like the kernel's
/// `signing_key.pem`). A DER PKCS#8 file is accepted too. `pin` decrypts `ENCRYPTED PRIVATE KEY` blocks.
pub fn load_private_key(path: &Path, pin: Option<&str>) -> Result<SigningKey, KeyError> {
    let bytes = read(path)?;
    let err = |reason: String| KeyError::ParsePrivateKey {
        path: path.to_path_buf(),
        reason,
    };
    for (label, der_bytes) in pem_blocks(&bytes) {
        match label.as_str() {
            "PRIVATE KEY" => return SigningKey::from_pkcs8_der(&der_bytes).map_err(err),
            "RSA PRIVATE KEY" => {
                use rsa::pkcs1::DecodeRsaPrivateKey;
                return rsa::RsaPrivateKey::from_pkcs1_der(&der_bytes)
                    .map(|k| SigningKey::Rsa(RsaSigningKey::new(k)))
                    .map_err(|e| err(e.to_string()));
            }
            "EC PRIVATE KEY" => {
                if let Ok(k) = p256::SecretKey::from_sec1_der(&der_bytes) {
                    return Ok(SigningKey::P256(k.into()));
                }
                return p384::SecretKey::from_sec1_der(&der_bytes)
                    .map(|k| SigningKey::P384(k.into()))
                    .map_err(|e| err(e.to_string()));
            }
            "ENCRYPTED PRIVATE KEY" => {
                let Some(pin) = pin else {
                    return Err(KeyError::DecryptPrivateKeyNoPin {
                        path: path.to_path_buf(),
                    });
                };
                let enc = pkcs8::EncryptedPrivateKeyInfo::from_der(&der_bytes)
                    .map_err(|e| err(e.to_string()))?;
                let doc = enc.decrypt(pin).map_err(|_| KeyError::DecryptPrivateKey {
                    path: path.to_path_buf(),
                })?;
                return SigningKey::from_pkcs8_der(doc.as_bytes()).map_err(err);
            }
            l if l.starts_with("LEGACY ENCRYPTED") => {
                return Err(err(format!(
                    "legacy PEM encryption is not supported; convert with `openssl pkcs8 -topk8` and set {PIN_ENV}"
                )));
            }
            _ => {}
        }
    }
    SigningKey::from_pkcs8_der(&bytes).map_err(|_| err("no PRIVATE KEY block found".into()))
}

/// Checks that `key` is the private half of `cert`'s public key.
pub fn check_key_pair(
    key: &SigningKey,
    cert: &Certificate,
    key_path: &Path,
    cert_path: &Path,
) -> Result<(), KeyError> {
    let cert_spki = cert
        .cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .ok();
    if cert_spki.is_some() && key.public_key_der() == cert_spki {
        Ok(())
    } else {
        Err(KeyError::MatchKeyPair {
            key: key_path.to_path_buf(),
            cert: cert_path.to_path_buf(),
        })
    }
}

/// The subject CN of the kernel's build-time module signing key.
pub const KERNEL_KEY_CN: &str = "Build time autogenerated kernel key";

/// Finds the DER certificates embedded in `image` whose subject CN equals `cn` (a decompressed `vmlinux`, or a
/// raw system certificate list). Each `SEQUENCE` header is tried as a certificate start.
pub fn find_embedded_certificates(image: &[u8], cn: &str) -> Vec<Certificate> {
    let mut out: Vec<Certificate> = Vec::new();
    let needle = cn.as_bytes();
    let mut i = 0;
    while i + 4 < image.len() {
        // A certificate starts with SEQUENCE, long length (0x82 hh ll), then the TBS SEQUENCE.
        if image[i] == 0x30 && image[i + 1] == 0x82 && image.get(i + 4) == Some(&0x30) {
            let len = usize::from(image[i + 2]) << 8 | usize::from(image[i + 3]);
            let end = i + 4 + len;
            if let Some(der_bytes) = image.get(i..end)
                && der_bytes.windows(needle.len().max(1)).any(|w| w == needle)
                && let Ok(c) = Certificate::from_der(der_bytes)
                && c.subject_cn() == cn
                && !out.iter().any(|o| o.der == c.der)
            {
                out.push(c);
                i = end;
                continue;
            }
        }
        i += 1;
    }
    out
}

/// Extracts the kernel's signing certificates from a kernel image file: an ELF `vmlinux`, or a bzImage / vmlinuz
/// whose embedded compressed payload (xz, zstd or gzip) is searched for and decompressed.
pub fn extract_kernel_certificates(image: &[u8], cn: &str) -> Vec<Certificate> {
    let found = find_embedded_certificates(image, cn);
    if !found.is_empty() {
        return found;
    }
    for (magic, codec) in [
        (&b"\xfd7zXZ\0"[..], crate::compress::Compression::Xz),
        (&b"\x28\xb5\x2f\xfd"[..], crate::compress::Compression::Zstd),
        (&b"\x1f\x8b\x08"[..], crate::compress::Compression::Gzip),
    ] {
        let mut from = 0;
        while let Some(pos) = image[from..].windows(magic.len()).position(|w| w == magic) {
            let start = from + pos;
            if let Ok(plain) = decompress_prefix(codec, &image[start..]) {
                let found = find_embedded_certificates(&plain, cn);
                if !found.is_empty() {
                    return found;
                }
            }
            from = start + 1;
        }
    }
    Vec::new()
}

/// Decompresses a stream that may be followed by trailing garbage (the rest of a bzImage).
fn decompress_prefix(codec: crate::compress::Compression, data: &[u8]) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    let limit = crate::compress::MAX_MODULE_SIZE;
    let res = match codec {
        crate::compress::Compression::Xz => xz2::read::XzDecoder::new(data)
            .take(limit)
            .read_to_end(&mut out),
        crate::compress::Compression::Zstd => zstd::stream::read::Decoder::new(data)?
            .single_frame()
            .take(limit)
            .read_to_end(&mut out),
        crate::compress::Compression::Gzip => flate2::read::GzDecoder::new(data)
            .take(limit)
            .read_to_end(&mut out),
        crate::compress::Compression::None => return Ok(data.to_vec()),
    };
    match res {
        Ok(_) => Ok(out),
        // Trailing data after the stream makes some decoders fail at the end; keep what was produced.
        Err(_) if !out.is_empty() => Ok(out),
        Err(e) => Err(e),
    }
}
