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

impl Signer {
    /// The DER PKCS#7 message over `content`.
    pub fn pkcs7(&self, content: &[u8]) -> Result<Vec<u8>, SignError> {
        let digest = self.hash.digest(content);
        let (sig_alg, sig) = match &self.key {
            SigningKey::Rsa(k) => {
                let sig = k
                    .sign(rsa_scheme(self.hash), &digest)
                    .map_err(|e| SignError::Sign(e.to_string()))?;
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
                    .sign_prehash(&digest)
                    .map_err(|e| SignError::Sign(e.to_string()))?;
                (ecdsa_alg(self.hash), s.to_der().as_bytes().to_vec())
            }
            SigningKey::P384(k) => {
                use ecdsa::signature::hazmat::PrehashSigner;
                let s: p384::ecdsa::Signature = k
                    .sign_prehash(&digest)
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
