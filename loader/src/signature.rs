//! Appended module signatures: the trailer the kernel reads (`struct module_signature` + magic), the PKCS#7/CMS
//! `SignedData` inside it, and verification against X.509 certificates, with the same acceptance rules as the
//! kernel's `mod_verify_sig` (detached data, one or more signers, optional signed attributes).

use cms::content_info::ContentInfo;
use cms::signed_data::{SignedData, SignerIdentifier, SignerInfo};
use der::asn1::ObjectIdentifier;
use der::{Decode, Encode};
use thiserror::Error;

use crate::keys::{Certificate, PublicKey, TrustStore};

/// The marker that ends every signed module.
pub const MAGIC: &[u8] = b"~Module signature appended~\n";
/// Size of `struct module_signature`.
pub const TRAILER_LEN: usize = 12;
/// `id_type` of a PKCS#7 signature (`PKEY_ID_PKCS7`), the only kind the kernel accepts.
pub const PKEY_ID_PKCS7: u8 = 2;

pub(crate) mod oid {
    use der::asn1::ObjectIdentifier as O;
    pub const SIGNED_DATA: O = O::new_unwrap("1.2.840.113549.1.7.2");
    pub const DATA: O = O::new_unwrap("1.2.840.113549.1.7.1");
    pub const MESSAGE_DIGEST: O = O::new_unwrap("1.2.840.113549.1.9.4");
    pub const SHA1: O = O::new_unwrap("1.3.14.3.2.26");
    pub const SHA224: O = O::new_unwrap("2.16.840.1.101.3.4.2.4");
    pub const SHA256: O = O::new_unwrap("2.16.840.1.101.3.4.2.1");
    pub const SHA384: O = O::new_unwrap("2.16.840.1.101.3.4.2.2");
    pub const SHA512: O = O::new_unwrap("2.16.840.1.101.3.4.2.3");
    pub const RSA_ENCRYPTION: O = O::new_unwrap("1.2.840.113549.1.1.1");
    pub const SHA256_WITH_RSA: O = O::new_unwrap("1.2.840.113549.1.1.11");
    pub const SHA384_WITH_RSA: O = O::new_unwrap("1.2.840.113549.1.1.12");
    pub const SHA512_WITH_RSA: O = O::new_unwrap("1.2.840.113549.1.1.13");
    pub const EC_PUBLIC_KEY: O = O::new_unwrap("1.2.840.10045.2.1");
    pub const ECDSA_SHA256: O = O::new_unwrap("1.2.840.10045.4.3.2");
    pub const ECDSA_SHA384: O = O::new_unwrap("1.2.840.10045.4.3.3");
    pub const ECDSA_SHA512: O = O::new_unwrap("1.2.840.10045.4.3.4");
    pub const COMMON_NAME: O = O::new_unwrap("2.5.4.3");
    pub const SUBJECT_KEY_ID: O = O::new_unwrap("2.5.29.14");
    pub const SECP256R1: O = O::new_unwrap("1.2.840.10045.3.1.7");
    pub const SECP384R1: O = O::new_unwrap("1.3.132.0.34");
}

/// Why a module signature could not be read or did not verify.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SignatureError {
    #[error("unsigned: no module signature appended")]
    Unsigned,
    #[error("malformed signature: {0}")]
    Malformed(String),
    #[error("unsupported algorithm: {0}")]
    UnsupportedAlgorithm(String),
    #[error("signed by an unknown key: signer '{signer}', key id {key_id}")]
    UnknownKey { signer: String, key_id: String },
    #[error("content altered: the signature does not match the module contents")]
    ContentAltered,
}

/// Digest algorithms a module signature may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HashAlgo {
    Sha1,
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl HashAlgo {
    /// The name kmod and `sign-file` use (`sha256`, ...).
    pub fn name(self) -> &'static str {
        match self {
            HashAlgo::Sha1 => "sha1",
            HashAlgo::Sha224 => "sha224",
            HashAlgo::Sha256 => "sha256",
            HashAlgo::Sha384 => "sha384",
            HashAlgo::Sha512 => "sha512",
        }
    }

    /// Parses a `sign-file` hash name.
    pub fn from_name(name: &str) -> Option<HashAlgo> {
        [
            HashAlgo::Sha1,
            HashAlgo::Sha224,
            HashAlgo::Sha256,
            HashAlgo::Sha384,
            HashAlgo::Sha512,
        ]
        .into_iter()
        .find(|h| h.name() == name)
    }

    pub fn oid(self) -> ObjectIdentifier {
        match self {
            HashAlgo::Sha1 => oid::SHA1,
            HashAlgo::Sha224 => oid::SHA224,
            HashAlgo::Sha256 => oid::SHA256,
            HashAlgo::Sha384 => oid::SHA384,
            HashAlgo::Sha512 => oid::SHA512,
        }
    }

    pub fn from_oid(o: &ObjectIdentifier) -> Option<HashAlgo> {
        [
            HashAlgo::Sha1,
            HashAlgo::Sha224,
            HashAlgo::Sha256,
            HashAlgo::Sha384,
            HashAlgo::Sha512,
        ]
        .into_iter()
        .find(|h| h.oid() == *o)
    }

    /// Hashes `data`.
    pub fn digest(self, data: &[u8]) -> Vec<u8> {
        use sha2::Digest;
        match self {
            HashAlgo::Sha1 => sha1::Sha1::digest(data).to_vec(),
            HashAlgo::Sha224 => sha2::Sha224::digest(data).to_vec(),
            HashAlgo::Sha256 => sha2::Sha256::digest(data).to_vec(),
            HashAlgo::Sha384 => sha2::Sha384::digest(data).to_vec(),
            HashAlgo::Sha512 => sha2::Sha512::digest(data).to_vec(),
        }
    }
}

/// The raw appended signature of a module: `content` is what was signed, `pkcs7` the DER message.
#[derive(Debug, Clone, Copy)]
pub struct Appended<'a> {
    pub content: &'a [u8],
    pub algo: u8,
    pub hash: u8,
    pub id_type: u8,
    pub signer: &'a [u8],
    pub key_id: &'a [u8],
    pub sig: &'a [u8],
}

/// Splits a module image into its content and appended signature. `Ok(None)` when the image has no magic.
pub fn split(image: &[u8]) -> Result<Option<Appended<'_>>, SignatureError> {
    let Some(rest) = image.strip_suffix(MAGIC) else {
        return Ok(None);
    };
    let Some(split_at) = rest.len().checked_sub(TRAILER_LEN) else {
        return Err(SignatureError::Malformed(
            "truncated module_signature trailer".into(),
        ));
    };
    let (body, t) = rest.split_at(split_at);
    let sig_len = u32::from_be_bytes([t[8], t[9], t[10], t[11]]) as usize;
    let (signer_len, key_id_len) = (usize::from(t[3]), usize::from(t[4]));
    let total = sig_len + signer_len + key_id_len;
    if sig_len == 0 || total > body.len() {
        return Err(SignatureError::Malformed(format!(
            "signature length {sig_len} (+{signer_len}+{key_id_len}) does not fit the {}-byte module",
            body.len()
        )));
    }
    let (content, tail) = body.split_at(body.len() - total);
    let (signer, tail) = tail.split_at(signer_len);
    let (key_id, sig) = tail.split_at(key_id_len);
    Ok(Some(Appended {
        content,
        algo: t[0],
        hash: t[1],
        id_type: t[2],
        signer,
        key_id,
        sig,
    }))
}

/// The module bytes without any appended signature (the image itself when unsigned or unparseable).
pub fn strip(image: &[u8]) -> &[u8] {
    match split(image) {
        Ok(Some(a)) => a.content,
        _ => image,
    }
}

/// A parsed PKCS#7 module signature.
#[derive(Debug, Clone)]
pub struct Pkcs7 {
    pub signed_data: SignedData,
}

/// The signature facts `modinfo` shows for one signer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignerSummary {
    /// CN of the issuer (kmod's rule: the first commonName, else the last attribute of the name).
    pub signer: Vec<u8>,
    /// The serial number (issuer+serial) or subject key identifier, big-endian without leading zeros.
    pub key_id: Vec<u8>,
    /// The digest OID of the signer.
    pub hash_algo: Option<HashAlgo>,
    pub signature: Vec<u8>,
}

/// Parses a DER `ContentInfo` holding a `SignedData`.
pub fn parse_pkcs7(der_bytes: &[u8]) -> Result<Pkcs7, SignatureError> {
    let ci = ContentInfo::from_der(der_bytes)
        .map_err(|e| SignatureError::Malformed(format!("PKCS#7: {e}")))?;
    if ci.content_type != oid::SIGNED_DATA {
        return Err(SignatureError::Malformed(format!(
            "PKCS#7 content type {} is not signedData",
            ci.content_type
        )));
    }
    let signed_data: SignedData = ci
        .content
        .decode_as()
        .map_err(|e| SignatureError::Malformed(format!("SignedData: {e}")))?;
    Ok(Pkcs7 { signed_data })
}

fn name_display(name: &x509_cert::name::Name) -> Vec<u8> {
    let mut last = None;
    for rdn in name.0.iter() {
        for atv in rdn.0.iter() {
            let value = atv.value.value().to_vec();
            if atv.oid == oid::COMMON_NAME {
                return value;
            }
            last = Some(value);
        }
    }
    last.unwrap_or_default()
}

fn trim_leading_zeros(b: &[u8]) -> Vec<u8> {
    let start = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    b[start..].to_vec()
}

/// Colon-separated upper-case hex (`66:F5:...`), the way kmod prints key ids.
pub fn hex_colon(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02X}"))
        .collect::<Vec<_>>()
        .join(":")
}

impl Pkcs7 {
    /// What `modinfo` shows: the first signer.
    pub fn summary(&self) -> Option<SignerSummary> {
        let si = self.signed_data.signer_infos.0.iter().next()?;
        let (signer, key_id) = sid_parts(&si.sid);
        Some(SignerSummary {
            signer,
            key_id,
            hash_algo: HashAlgo::from_oid(&si.digest_alg.oid),
            signature: si.signature.as_bytes().to_vec(),
        })
    }
}

fn sid_parts(sid: &SignerIdentifier) -> (Vec<u8>, Vec<u8>) {
    match sid {
        SignerIdentifier::IssuerAndSerialNumber(ias) => (
            name_display(&ias.issuer),
            trim_leading_zeros(ias.serial_number.as_bytes()),
        ),
        SignerIdentifier::SubjectKeyIdentifier(ski) => (Vec::new(), ski.0.as_bytes().to_vec()),
    }
}

/// A successfully verified module signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// Subject CN of the certificate that verified the signature.
    pub signer: String,
    pub hash: HashAlgo,
    /// Length of the signed content (the module without its signature).
    pub content_len: usize,
}

fn find_cert<'a>(store: &'a TrustStore, sid: &SignerIdentifier) -> Option<&'a Certificate> {
    store.certs().iter().find(|c| match sid {
        SignerIdentifier::IssuerAndSerialNumber(ias) => {
            c.cert.tbs_certificate.issuer == ias.issuer
                && trim_leading_zeros(c.cert.tbs_certificate.serial_number.as_bytes())
                    == trim_leading_zeros(ias.serial_number.as_bytes())
        }
        SignerIdentifier::SubjectKeyIdentifier(ski) => c.ski.as_deref() == Some(ski.0.as_bytes()),
    })
}

fn unknown_key(sid: &SignerIdentifier) -> SignatureError {
    let (signer, key_id) = sid_parts(sid);
    let signer = match sid {
        SignerIdentifier::IssuerAndSerialNumber(_) => String::from_utf8_lossy(&signer).into_owned(),
        SignerIdentifier::SubjectKeyIdentifier(_) => "(subject key identifier)".into(),
    };
    SignatureError::UnknownKey {
        signer,
        key_id: hex_colon(&key_id),
    }
}

/// The bytes the signer's signature covers, hashed: the content digest, or the digest of the DER signed
/// attributes after checking their messageDigest.
fn signed_digest(
    si: &SignerInfo,
    hash: HashAlgo,
    content_digest: &[u8],
) -> Result<Vec<u8>, SignatureError> {
    let Some(attrs) = &si.signed_attrs else {
        return Ok(content_digest.to_vec());
    };
    let md = attrs
        .iter()
        .find(|a| a.oid == oid::MESSAGE_DIGEST)
        .and_then(|a| a.values.iter().next())
        .ok_or_else(|| {
            SignatureError::Malformed("signed attributes without messageDigest".into())
        })?;
    let md = md
        .decode_as::<der::asn1::OctetString>()
        .map_err(|e| SignatureError::Malformed(format!("messageDigest: {e}")))?;
    if md.as_bytes() != content_digest {
        return Err(SignatureError::ContentAltered);
    }
    let der_attrs = attrs
        .to_der()
        .map_err(|e| SignatureError::Malformed(format!("signed attributes: {e}")))?;
    Ok(hash.digest(&der_attrs))
}

fn check_signature(
    cert: &Certificate,
    sig_alg: &ObjectIdentifier,
    hash: HashAlgo,
    digest: &[u8],
    sig: &[u8],
) -> Result<(), SignatureError> {
    let rsa_alg = [
        oid::RSA_ENCRYPTION,
        oid::SHA256_WITH_RSA,
        oid::SHA384_WITH_RSA,
        oid::SHA512_WITH_RSA,
    ]
    .contains(sig_alg);
    let ec_alg = [
        oid::EC_PUBLIC_KEY,
        oid::ECDSA_SHA256,
        oid::ECDSA_SHA384,
        oid::ECDSA_SHA512,
    ]
    .contains(sig_alg);
    let key = &cert.key;
    match key {
        PublicKey::Rsa(k) if rsa_alg => {
            let scheme = match hash {
                HashAlgo::Sha1 => rsa::Pkcs1v15Sign::new::<sha1::Sha1>(),
                HashAlgo::Sha224 => rsa::Pkcs1v15Sign::new::<sha2::Sha224>(),
                HashAlgo::Sha256 => rsa::Pkcs1v15Sign::new::<sha2::Sha256>(),
                HashAlgo::Sha384 => rsa::Pkcs1v15Sign::new::<sha2::Sha384>(),
                HashAlgo::Sha512 => rsa::Pkcs1v15Sign::new::<sha2::Sha512>(),
            };
            let ok = match &cert.fast_rsa {
                Some(fast) => fast.verify(&scheme.prefix, digest, sig),
                None => k.verify(scheme, digest, sig).is_ok(),
            };
            if ok {
                Ok(())
            } else {
                Err(SignatureError::ContentAltered)
            }
        }
        PublicKey::P256(k) if ec_alg => {
            use ecdsa::signature::hazmat::PrehashVerifier;
            let s = p256::ecdsa::Signature::from_der(sig)
                .map_err(|e| SignatureError::Malformed(format!("ECDSA signature: {e}")))?;
            k.verify_prehash(digest, &s)
                .map_err(|_| SignatureError::ContentAltered)
        }
        PublicKey::P384(k) if ec_alg => {
            use ecdsa::signature::hazmat::PrehashVerifier;
            let s = p384::ecdsa::Signature::from_der(sig)
                .map_err(|e| SignatureError::Malformed(format!("ECDSA signature: {e}")))?;
            k.verify_prehash(digest, &s)
                .map_err(|_| SignatureError::ContentAltered)
        }
        PublicKey::Unsupported(what) => Err(SignatureError::UnsupportedAlgorithm(format!(
            "certificate key {what}"
        ))),
        _ => Err(SignatureError::UnsupportedAlgorithm(format!(
            "signature algorithm {sig_alg} with a {} key",
            key.kind()
        ))),
    }
}

/// Verifies a whole (decompressed) module image against `store`.
pub fn verify(image: &[u8], store: &TrustStore) -> Result<Verified, SignatureError> {
    let app = split(image)?.ok_or(SignatureError::Unsigned)?;
    if app.id_type != PKEY_ID_PKCS7 {
        return Err(SignatureError::UnsupportedAlgorithm(format!(
            "signature id type {} (only PKCS#7 is supported)",
            app.id_type
        )));
    }
    let p7 = parse_pkcs7(app.sig)?;
    verify_pkcs7(&p7, app.content, store)
}

/// Verifies a parsed PKCS#7 message over detached `content`.
pub fn verify_pkcs7(
    p7: &Pkcs7,
    content: &[u8],
    store: &TrustStore,
) -> Result<Verified, SignatureError> {
    let sd = &p7.signed_data;
    if sd.encap_content_info.econtent.is_some() {
        return Err(SignatureError::Malformed(
            "PKCS#7 carries embedded content; module signatures are detached".into(),
        ));
    }
    let mut verified = None;
    let mut digests: Vec<(HashAlgo, Vec<u8>)> = Vec::new();
    for si in sd.signer_infos.0.iter() {
        let hash = HashAlgo::from_oid(&si.digest_alg.oid).ok_or_else(|| {
            SignatureError::UnsupportedAlgorithm(format!("digest {}", si.digest_alg.oid))
        })?;
        let cert = find_cert(store, &si.sid).ok_or_else(|| unknown_key(&si.sid))?;
        let content_digest = match digests.iter().find(|(h, _)| *h == hash) {
            Some((_, d)) => d.clone(),
            None => {
                let d = hash.digest(content);
                digests.push((hash, d.clone()));
                d
            }
        };
        let digest = signed_digest(si, hash, &content_digest)?;
        check_signature(
            cert,
            &si.signature_algorithm.oid,
            hash,
            &digest,
            si.signature.as_bytes(),
        )?;
        verified.get_or_insert(Verified {
            signer: cert.subject_cn(),
            hash,
            content_len: content.len(),
        });
    }
    verified.ok_or_else(|| SignatureError::Malformed("PKCS#7 has no signer".into()))
}

/// Why a module file failed verification: it could not be read, or its signature did not verify.
#[derive(Debug, Error)]
pub enum VerifyFileError {
    #[error(transparent)]
    ReadModule(#[from] crate::modinfo::ModinfoError),
    #[error(transparent)]
    VerifySignature(#[from] SignatureError),
}

/// Reads, decompresses and verifies one module file.
pub fn verify_file(
    path: &std::path::Path,
    store: &TrustStore,
) -> Result<Verified, VerifyFileError> {
    let file = crate::modinfo::read_module(path)?;
    Ok(verify(&file.image, store)?)
}

/// Verifies many files on `threads` worker threads (at least one); results come back in input order.
pub fn verify_files(
    paths: &[std::path::PathBuf],
    store: &TrustStore,
    threads: usize,
) -> Vec<Result<Verified, VerifyFileError>> {
    crate::par::map(paths, threads, |path| verify_file(path, store))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn split_rejects_inconsistent_trailers() {
        assert!(split(b"plain module").unwrap().is_none());
        let mut img = b"body".to_vec();
        img.extend_from_slice(MAGIC);
        assert!(matches!(split(&img), Err(SignatureError::Malformed(_))));
        let mut img = b"bodysig".to_vec();
        img.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 100]);
        img.extend_from_slice(MAGIC);
        assert!(matches!(split(&img), Err(SignatureError::Malformed(_))));
        let mut img = b"bodysig".to_vec();
        img.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 3]);
        img.extend_from_slice(MAGIC);
        let a = split(&img).unwrap().unwrap();
        assert_eq!(
            (a.content, a.sig, a.id_type),
            (&b"body"[..], &b"sig"[..], 2)
        );
        assert_eq!(strip(&img), b"body");
    }

    #[test]
    fn hex_colon_matches_kmod() {
        assert_eq!(hex_colon(&[0x66, 0xf5, 0x0a]), "66:F5:0A");
        assert_eq!(hex_colon(&[]), "");
    }

    #[test]
    fn garbage_pkcs7_is_malformed() {
        assert!(matches!(
            parse_pkcs7(b"\x30\x03\x02\x01\x01"),
            Err(SignatureError::Malformed(_))
        ));
    }

    /// A signature made by `openssl cms -sign` WITH signed attributes (and an embedded certificate), as other
    /// signing tools produce: verified through the messageDigest attribute.
    #[test]
    fn openssl_cms_signatures_with_signed_attributes_verify() {
        use crate::test_keys::TestKey;
        let key = TestKey::rsa(2048);
        let dir = tempfile::tempdir().unwrap();
        let content = crate::elf::build_elf64(&[(".modinfo", b"name=x\0")]);
        std::fs::write(dir.path().join("m"), &content).unwrap();
        let out = std::process::Command::new("openssl")
            .args([
                "cms", "-sign", "-binary", "-outform", "DER", "-md", "sha384",
            ])
            .args(["-keyform", "PEM", "-inkey"])
            .arg(&key.key_path)
            .arg("-signer")
            .arg(&key.cert_path)
            .arg("-in")
            .arg(dir.path().join("m"))
            .arg("-out")
            .arg(dir.path().join("sig"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let sig = std::fs::read(dir.path().join("sig")).unwrap();
        let p7 = parse_pkcs7(&sig).unwrap();
        assert!(
            p7.signed_data
                .signer_infos
                .0
                .iter()
                .next()
                .unwrap()
                .signed_attrs
                .is_some()
        );
        let mut image = content.clone();
        image.extend_from_slice(&sig);
        image.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
        image.extend_from_slice(&(sig.len() as u32).to_be_bytes());
        image.extend_from_slice(MAGIC);
        let store = TrustStore::load(std::slice::from_ref(&key.cert_path)).unwrap();
        assert_eq!(verify(&image, &store).unwrap().hash, HashAlgo::Sha384);
        let mut altered = image.clone();
        altered[0x30] ^= 1;
        assert_eq!(
            verify(&altered, &store),
            Err(SignatureError::ContentAltered)
        );
    }
}
