//! Signing modules exactly like the kernel's `scripts/sign-file`: a detached CMS `SignedData` (version 1, no
//! certificates, no signed attributes, issuer+serial signer identifier, digest parameters absent, `rsaEncryption`
//! with NULL parameters), followed by `struct module_signature` with `id_type = PKEY_ID_PKCS7` and the magic.
//! RSA PKCS#1 v1.5 is deterministic, so for the same key, certificate and hash the output is byte-identical.

use std::path::{Path, PathBuf};

use cms::cert::IssuerAndSerialNumber;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use der::Encode;
use der::asn1::{Any, OctetString, SetOfVec};
use spki::AlgorithmIdentifierOwned;
use thiserror::Error;

use crate::compress::{self, Compression};
use crate::keys::{Certificate, SigningKey};
use crate::modinfo;
use crate::signature::{self, HashAlgo, MAGIC, PKEY_ID_PKCS7, oid};

/// Errors of this module.
#[derive(Debug, Error)]
pub enum SignError {
    #[error("failed to sign: {0}")]
    Sign(String),
    #[error("failed to encode the PKCS#7 message")]
    Encode(#[source] der::Error),
    #[error("failed to read module")]
    ReadModule(#[source] modinfo::ModinfoError),
    #[error("failed to recompress {path}")]
    Compress {
        path: PathBuf,
        #[source]
        source: compress::CompressError,
    },
    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A key, its certificate and the digest to sign with.
#[derive(Debug, Clone)]
pub struct Signer {
    pub key: SigningKey,
    pub cert: Certificate,
    pub hash: HashAlgo,
}

fn rsa_scheme(hash: HashAlgo) -> rsa::Pkcs1v15Sign {
    match hash {
        HashAlgo::Sha1 => rsa::Pkcs1v15Sign::new::<sha1::Sha1>(),
        HashAlgo::Sha224 => rsa::Pkcs1v15Sign::new::<sha2::Sha224>(),
        HashAlgo::Sha256 => rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
        HashAlgo::Sha384 => rsa::Pkcs1v15Sign::new::<sha2::Sha384>(),
        HashAlgo::Sha512 => rsa::Pkcs1v15Sign::new::<sha2::Sha512>(),
    }
}

/// The PKCS#1 v1.5 encodings ring signs with (it has none for SHA-1 and SHA-224).
fn ring_scheme(hash: HashAlgo) -> Option<&'static dyn ring::signature::RsaEncoding> {
    match hash {
        HashAlgo::Sha256 => Some(&ring::signature::RSA_PKCS1_SHA256),
        HashAlgo::Sha384 => Some(&ring::signature::RSA_PKCS1_SHA384),
        HashAlgo::Sha512 => Some(&ring::signature::RSA_PKCS1_SHA512),
        HashAlgo::Sha1 | HashAlgo::Sha224 => None,
    }
}

impl Signer {
    /// The DER PKCS#7 message over `content`.
    pub fn pkcs7(&self, content: &[u8]) -> Result<Vec<u8>, SignError> {
        let (sig_alg, sig) = match &self.key {
            SigningKey::Rsa(k) => {
                let sig = match (k.fast(), ring_scheme(self.hash)) {
                    (Some(fast), Some(scheme)) => {
                        // ring hashes `content` itself and signs with CRT; deterministic like the rsa crate.
                        let mut sig = vec![0u8; fast.public().modulus_len()];
                        fast.sign(scheme, &ring::rand::SystemRandom::new(), content, &mut sig)
                            .map_err(|e| SignError::Sign(e.to_string()))?;
                        sig
                    }
                    _ => k
                        .sign(rsa_scheme(self.hash), &self.hash.digest(content))
                        .map_err(|e| SignError::Sign(e.to_string()))?,
                };
                (
                    AlgorithmIdentifierOwned {
                        oid: oid::RSA_ENCRYPTION,
                        parameters: Some(Any::null()),
                    },
                    sig,
                )
            }
            SigningKey::P256(k) => {
                use ecdsa::signature::hazmat::PrehashSigner;
                let s: p256::ecdsa::Signature = k
                    .sign_prehash(&self.hash.digest(content))
                    .map_err(|e| SignError::Sign(e.to_string()))?;
                (ecdsa_alg(self.hash), s.to_der().as_bytes().to_vec())
            }
            SigningKey::P384(k) => {
                use ecdsa::signature::hazmat::PrehashSigner;
                let s: p384::ecdsa::Signature = k
                    .sign_prehash(&self.hash.digest(content))
                    .map_err(|e| SignError::Sign(e.to_string()))?;
                (ecdsa_alg(self.hash), s.to_der().as_bytes().to_vec())
            }
        };
        let tbs = &self.cert.cert.tbs_certificate;
        let digest_alg = AlgorithmIdentifierOwned {
            oid: self.hash.oid(),
            parameters: None,
        };
        let signer_info = SignerInfo {
            version: CmsVersion::V1,
            sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
                issuer: tbs.issuer.clone(),
                serial_number: tbs.serial_number.clone(),
            }),
            digest_alg: digest_alg.clone(),
            signed_attrs: None,
            signature_algorithm: sig_alg,
            signature: OctetString::new(sig).map_err(SignError::Encode)?,
            unsigned_attrs: None,
        };
        let signed_data = SignedData {
            version: CmsVersion::V1,
            digest_algorithms: SetOfVec::try_from(vec![digest_alg]).map_err(SignError::Encode)?,
            encap_content_info: EncapsulatedContentInfo {
                econtent_type: oid::DATA,
                econtent: None,
            },
            certificates: None,
            crls: None,
            signer_infos: SignerInfos(
                SetOfVec::try_from(vec![signer_info]).map_err(SignError::Encode)?,
            ),
        };
        let ci = ContentInfo {
            content_type: oid::SIGNED_DATA,
            content: Any::encode_from(&signed_data).map_err(SignError::Encode)?,
        };
        ci.to_der().map_err(SignError::Encode)
    }

    /// Signs a decompressed module image: any existing signature is replaced.
    pub fn sign_image(&self, image: &[u8]) -> Result<Vec<u8>, SignError> {
        let content = signature::strip(image);
        let p7 = self.pkcs7(content)?;
        let len = u32::try_from(p7.len())
            .map_err(|_| SignError::Sign("PKCS#7 message too large".into()))?;
        let mut out = Vec::with_capacity(content.len() + p7.len() + 12 + MAGIC.len());
        out.extend_from_slice(content);
        out.extend_from_slice(&p7);
        out.extend_from_slice(&[0, 0, PKEY_ID_PKCS7, 0, 0, 0, 0, 0]);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(MAGIC);
        Ok(out)
    }

    /// Signs the module at `input` into `output` (which may be the same path; written atomically). Compressed
    /// modules are decompressed, signed and recompressed with the same codec.
    pub fn sign_file(&self, input: &Path, output: &Path) -> Result<(), SignError> {
        let file = modinfo::read_module(input).map_err(SignError::ReadModule)?;
        let signed = self.sign_image(&file.image)?;
        let bytes = match file.compression {
            Compression::None => signed,
            c => compress::compress(c, &signed).map_err(|source| SignError::Compress {
                path: input.to_path_buf(),
                source,
            })?,
        };
        write_atomic(output, &bytes)
    }

    /// Signs every file in place (or into `output`, with one file) on up to `threads` threads; one result per
    /// file, in order. A failure leaves that file untouched and does not stop the others.
    pub fn sign_files(
        &self,
        files: &[PathBuf],
        output: Option<&Path>,
        threads: usize,
    ) -> Vec<Result<(), SignError>> {
        crate::par::map(files, threads, |f| self.sign_file(f, output.unwrap_or(f)))
    }
}

fn ecdsa_alg(hash: HashAlgo) -> AlgorithmIdentifierOwned {
    let oid = match hash {
        HashAlgo::Sha384 => oid::ECDSA_SHA384,
        HashAlgo::Sha512 => oid::ECDSA_SHA512,
        _ => oid::ECDSA_SHA256,
    };
    AlgorithmIdentifierOwned {
        oid,
        parameters: None,
    }
}

/// Writes `bytes` to a temporary file next to `path`, then renames it over `path` (keeping `path`'s permissions
/// when it exists).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), SignError> {
    let wrap = |source| SignError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".~signed~");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, bytes).map_err(wrap)?;
    if let Ok(meta) = std::fs::metadata(path) {
        std::fs::set_permissions(&tmp, meta.permissions()).map_err(wrap)?;
    }
    std::fs::rename(&tmp, path).map_err(wrap)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::process::Command;

    use super::*;
    use crate::elf::build_elf64;
    use crate::keys::{self, TrustStore};
    use crate::signature::{SignatureError, verify};
    use crate::test_keys::TestKey;

    /// ring (the fast path) and the rsa crate (the fallback) produce the same PKCS#1 v1.5 signature, for every key
    /// size and digest ring signs with; SHA-1 and SHA-224 take the fallback and still verify.
    #[test]
    fn ring_and_the_rsa_crate_sign_identically() {
        let content = module();
        for bits in [2048, 3072] {
            let key = TestKey::rsa(bits);
            for hash in [HashAlgo::Sha256, HashAlgo::Sha384, HashAlgo::Sha512] {
                let signer = key.signer_with(hash);
                let SigningKey::Rsa(k) = &signer.key else {
                    panic!("not RSA")
                };
                let fast = k.fast().expect("ring accepts an openssl RSA key");
                let mut by_ring = vec![0u8; fast.public().modulus_len()];
                fast.sign(
                    ring_scheme(hash).unwrap(),
                    &ring::rand::SystemRandom::new(),
                    &content,
                    &mut by_ring,
                )
                .unwrap();
                let by_rsa = k.sign(rsa_scheme(hash), &hash.digest(&content)).unwrap();
                assert_eq!(by_ring, by_rsa, "rsa:{bits} {}", hash.name());
            }
            for hash in [HashAlgo::Sha1, HashAlgo::Sha224] {
                let signed = key.signer_with(hash).sign_image(&content).unwrap();
                let store = TrustStore::new(keys::load_certificates(&key.cert_path).unwrap());
                verify(&signed, &store).unwrap();
            }
        }
    }

    #[test]
    fn sign_files_signs_each_file_and_reports_each_failure() {
        let key = TestKey::rsa(2048);
        let signer = key.signer();
        let dir = tempfile::tempdir().unwrap();
        let mut files: Vec<PathBuf> = (0..6)
            .map(|i| {
                let p = dir.path().join(format!("m{i}.ko"));
                std::fs::write(&p, module()).unwrap();
                p
            })
            .collect();
        files.insert(3, dir.path().join("missing.ko"));
        let results = signer.sign_files(&files, None, 3);
        assert_eq!(results.len(), 7);
        let store = TrustStore::new(keys::load_certificates(&key.cert_path).unwrap());
        for (f, r) in files.iter().zip(&results) {
            if f.ends_with("missing.ko") {
                assert!(r.is_err());
                assert!(!f.exists());
            } else {
                r.as_ref().unwrap();
                verify(&std::fs::read(f).unwrap(), &store).unwrap();
            }
        }
    }

    fn module() -> Vec<u8> {
        build_elf64(&[
            (".text", b"\xc3"),
            (".modinfo", b"license=GPL\0name=t\0vermagic=6.1.0 SMP \0"),
        ])
    }

    /// `openssl cms -verify` accepts what we sign (checked with the real tool, detached content).
    fn openssl_accepts(signed: &[u8], cert: &Path) -> bool {
        let app = signature::split(signed).unwrap().unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("sig.p7"), app.sig).unwrap();
        std::fs::write(dir.path().join("content"), app.content).unwrap();
        let out = Command::new("openssl")
            .args([
                "cms",
                "-verify",
                "-binary",
                "-inform",
                "DER",
                "-noverify",
                "-nointern",
                "-purpose",
                "any",
            ])
            .arg("-in")
            .arg(dir.path().join("sig.p7"))
            .arg("-content")
            .arg(dir.path().join("content"))
            .arg("-certfile")
            .arg(pem_of(cert, dir.path()))
            .args(["-out", "/dev/null"])
            .output()
            .unwrap();
        out.status.success()
    }

    fn pem_of(cert: &Path, dir: &Path) -> std::path::PathBuf {
        let pem = dir.join("cert.pem");
        std::fs::write(&pem, keys::load_certificates(cert).unwrap()[0].to_pem()).unwrap();
        pem
    }

    #[test]
    fn ecdsa_and_rsa_signatures_verify_here_and_in_openssl() {
        for (newkey, hash) in [
            ("ec:prime256v1", HashAlgo::Sha256),
            ("ec:secp384r1", HashAlgo::Sha384),
            ("rsa:2048", HashAlgo::Sha512),
        ] {
            let key = match newkey.strip_prefix("ec:") {
                Some(curve) => TestKey::with_ec(curve),
                None => TestKey::with_newkey(newkey),
            };
            let signer = key.signer_with(hash);
            let signed = signer.sign_image(&module()).unwrap();
            let store = TrustStore::load(std::slice::from_ref(&key.cert_path)).unwrap();
            let v = verify(&signed, &store).unwrap();
            assert_eq!(v.hash, hash);
            assert!(v.signer.starts_with("kmm-test"));
            assert!(openssl_accepts(&signed, &key.cert_path), "{newkey}");
            // Re-signing replaces the signature instead of stacking another one.
            let resigned = signer.sign_image(&signed).unwrap();
            assert_eq!(signature::strip(&resigned), module().as_slice());
            let mut altered = signed.clone();
            altered[0x40] ^= 1;
            assert_eq!(
                verify(&altered, &store),
                Err(SignatureError::ContentAltered)
            );
        }
    }

    #[test]
    fn encrypted_keys_need_kbuild_sign_pin() {
        let key = TestKey::rsa(2048);
        let enc = key.key_path.with_file_name("enc.pem");
        let out = Command::new("openssl")
            .args([
                "pkcs8",
                "-topk8",
                "-v2",
                "aes-256-cbc",
                "-passout",
                "pass:s3cret",
            ])
            .arg("-in")
            .arg(&key.key_path)
            .arg("-out")
            .arg(&enc)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let err = keys::load_private_key(&enc, None).unwrap_err().to_string();
        assert!(err.contains("KBUILD_SIGN_PIN"), "{err}");
        assert!(keys::load_private_key(&enc, Some("wrong")).is_err());
        let decrypted = keys::load_private_key(&enc, Some("s3cret")).unwrap();
        let cert = keys::load_certificates(&key.cert_path).unwrap().remove(0);
        keys::check_key_pair(&decrypted, &cert, &enc, &key.cert_path).unwrap();
        let other = TestKey::rsa(2048);
        let other_cert = keys::load_certificates(&other.cert_path).unwrap().remove(0);
        assert!(keys::check_key_pair(&decrypted, &other_cert, &enc, &other.cert_path).is_err());
    }

    #[test]
    fn a_combined_pem_with_key_and_certificate_works_for_both() {
        // Like the kernel's certs/signing_key.pem: key and certificate in one PEM file.
        let key = TestKey::rsa(2048);
        let cert = keys::load_certificates(&key.cert_path).unwrap().remove(0);
        let combined = key.key_path.with_file_name("signing_key.pem");
        let mut text = std::fs::read_to_string(&key.key_path).unwrap();
        text.push_str(&cert.to_pem());
        std::fs::write(&combined, text).unwrap();
        let k = keys::load_private_key(&combined, None).unwrap();
        let c = keys::load_certificates(&combined).unwrap().remove(0);
        let signer = Signer {
            key: k,
            cert: c,
            hash: HashAlgo::Sha256,
        };
        assert_eq!(
            signer.sign_image(&module()).unwrap(),
            key.signer().sign_image(&module()).unwrap()
        );
    }

    #[test]
    fn sign_file_recompresses_with_the_same_codec() {
        let key = TestKey::rsa(2048);
        let signer = key.signer();
        let dir = tempfile::tempdir().unwrap();
        for codec in [
            Compression::None,
            Compression::Xz,
            Compression::Zstd,
            Compression::Gzip,
        ] {
            let path = dir.path().join(format!("t.ko{}", codec.suffix()));
            std::fs::write(&path, compress::compress(codec, &module()).unwrap()).unwrap();
            let out = dir.path().join(format!("out.ko{}", codec.suffix()));
            signer.sign_file(&path, &out).unwrap();
            let packed = std::fs::read(&out).unwrap();
            assert_eq!(Compression::detect(&packed, None), codec);
            assert_eq!(
                compress::decompress(codec, &packed).unwrap(),
                signer.sign_image(&module()).unwrap()
            );
        }
    }
}
