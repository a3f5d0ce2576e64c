//! Module signing keys, equivalent to
//! `openssl req -x509 -new -nodes -utf8 -sha256 -days 36500 -batch -outform DER -out pub.der -keyout key.priv`:
//! an RSA private key (PKCS#8 PEM, unencrypted) and a self-signed sha256WithRSAEncryption certificate in DER, valid
//! for 36500 days, with openssl's `v3_ca` extensions (subject and authority key identifiers, basicConstraints
//! CA:TRUE critical). Usable by `sign-file` and enrollable with `mokutil --import pub.der`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, SerialNumber,
};
use rsa::pkcs8::{EncodePrivateKey as _, LineEnding};
use rsa::rand_core::{OsRng, RngCore as _};

/// Default subject CN.
pub const DEFAULT_CN: &str = "kmm-rs module signing key";
/// Key size of `openssl req -new` with Debian's default configuration.
pub const DEFAULT_BITS: usize = 4096;
/// Validity of the certificate.
pub const DAYS: u64 = 36_500;

/// A generated signing key pair.
#[derive(Debug)]
pub struct SigningKey {
    /// The private key, PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub key_pem: String,
    /// The self-signed certificate, DER.
    pub cert_der: Vec<u8>,
}

/// Why a signing key could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// RSA key generation failed.
    #[error("failed to generate an RSA-{bits} key")]
    GenerateKey {
        /// Key size.
        bits: usize,
        /// The cause.
        source: rsa::Error,
    },
    /// The key could not be encoded.
    #[error("failed to encode the private key")]
    EncodeKey(#[source] rsa::pkcs8::Error),
    /// The certificate could not be made.
    #[error("failed to create the self-signed certificate")]
    Certificate(#[source] rcgen::Error),
}

/// Generates an RSA key of `bits` and a self-signed certificate with subject `CN=cn`.
pub fn generate(cn: &str, bits: usize) -> Result<SigningKey, SigningError> {
    let key = rsa::RsaPrivateKey::new(&mut OsRng, bits)
        .map_err(|source| SigningError::GenerateKey { bits, source })?;
    let der = key.to_pkcs8_der().map_err(SigningError::EncodeKey)?;
    let key_pem = key
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(SigningError::EncodeKey)?
        .to_string();
    let pkcs8 = rustls::pki_types::PrivatePkcs8KeyDer::from(der.as_bytes().to_vec());
    let pair = KeyPair::from_pkcs8_der_and_sign_algo(&pkcs8, &rcgen::PKCS_RSA_SHA256)
        .map_err(SigningError::Certificate)?;

    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.use_authority_key_identifier_extension = true;
    let mut serial = [0u8; 20];
    OsRng.fill_bytes(&mut serial);
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    params.not_before = epoch + since;
    params.not_after = epoch + since + Duration::from_secs(DAYS * 86_400);
    let cert = params
        .self_signed(&pair)
        .map_err(SigningError::Certificate)?;
    Ok(SigningKey {
        key_pem,
        cert_der: cert.der().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use x509_parser::prelude::*;

    use super::*;

    #[test]
    fn certificate_is_self_signed_rsa_sha256_ca_for_100_years() {
        // 2048 bits keeps the debug-build test fast; the binary test covers 4096 with openssl.
        let k = generate("test signing key", 2048).unwrap();
        assert!(k.key_pem.starts_with("-----BEGIN PRIVATE KEY-----\n"));
        let (_, cert) = X509Certificate::from_der(&k.cert_der).unwrap();
        assert_eq!(cert.subject().to_string(), "CN=test signing key");
        assert_eq!(cert.subject(), cert.issuer());
        assert_eq!(
            cert.signature_algorithm.algorithm,
            x509_parser::oid_registry::OID_PKCS1_SHA256WITHRSA
        );
        cert.verify_signature(None).unwrap();
        let days = (cert.validity().not_after.timestamp() - cert.validity().not_before.timestamp())
            / 86_400;
        assert_eq!(days, 36_500);
        let bc = cert.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && bc.value.ca);
        assert!(
            cert.get_extension_unique(
                &x509_parser::oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER
            )
            .unwrap()
            .is_some()
        );
        assert!(
            cert.get_extension_unique(
                &x509_parser::oid_registry::OID_X509_EXT_AUTHORITY_KEY_IDENTIFIER
            )
            .unwrap()
            .is_some()
        );
    }
}
