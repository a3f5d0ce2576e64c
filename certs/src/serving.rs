//! The webhook's CA and serving certificate.
//!
//! The CA key is never stored: a renewal creates a new CA and a new serving certificate, and the CA bundle keeps
//! the previous CA while it is still valid, so the API server trusts both the certificate the webhook still serves
//! and the one it will load next (rotation without a failed request). A pair is kept while it is valid for the
//! service, matches its key and chains to the bundle, and has more than a third of its lifetime left.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PublicKeyData as _,
};
use x509_parser::prelude::{FromDer as _, GeneralName, ParsedExtension, X509Certificate};

/// A CA bundle, a serving certificate and its key, all PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    /// CA certificates (the current one first, then the previous one while it is valid).
    pub ca_pem: String,
    /// The serving certificate.
    pub cert_pem: String,
    /// The serving key (PKCS#8).
    pub key_pem: String,
}

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    /// rcgen refused the parameters or failed to sign.
    #[error("failed to generate the {what}")]
    Generate {
        /// CA or serving certificate.
        what: &'static str,
        /// The cause.
        source: rcgen::Error,
    },
}

/// The four DNS names of a Service: `svc`, `svc.ns`, `svc.ns.svc`, `svc.ns.svc.cluster.local`.
pub fn dns_names(service: &str, namespace: &str) -> [String; 4] {
    [
        service.to_owned(),
        format!("{service}.{namespace}"),
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
    ]
}

fn unix(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    }
}

fn validity(params: &mut CertificateParams, now: SystemTime, days: u32) {
    let epoch = rcgen::date_time_ymd(1970, 1, 1);
    let since = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    // Backdate by an hour for clock skew between nodes.
    params.not_before = epoch + since.saturating_sub(Duration::from_secs(3600));
    params.not_after = epoch + since + Duration::from_secs(u64::from(days) * 86_400);
}

/// Generates a new CA and serving certificate valid for `days`; `previous_ca_pem` (the old bundle) contributes
/// its first CA to the new bundle while that CA is still valid.
pub fn generate(
    service: &str,
    namespace: &str,
    days: u32,
    now: SystemTime,
    previous_ca_pem: Option<&str>,
) -> Result<Bundle, ServingError> {
    let ca_err = |source| ServingError::Generate {
        what: "CA certificate",
        source,
    };
    let ca_key = KeyPair::generate().map_err(ca_err)?;
    let mut ca = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        format!("kmm-rs webhook CA for {service}.{namespace}"),
    );
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca, now, days);
    let ca_cert = ca.self_signed(&ca_key).map_err(ca_err)?;
    let issuer = Issuer::new(ca, ca_key);

    let srv_err = |source| ServingError::Generate {
        what: "serving certificate",
        source,
    };
    let key = KeyPair::generate().map_err(srv_err)?;
    let mut params =
        CertificateParams::new(dns_names(service, namespace).to_vec()).map_err(srv_err)?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, format!("{service}.{namespace}.svc"));
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    validity(&mut params, now, days);
    let cert = params.signed_by(&key, &issuer).map_err(srv_err)?;

    let mut ca_pem = ca_cert.pem();
    if let Some(prev) = previous_ca_pem.and_then(|p| pem_blocks(p).into_iter().next()) {
        let still_valid = X509Certificate::from_der(&prev)
            .is_ok_and(|(_, c)| c.validity().not_after.timestamp() > unix(now));
        if still_valid {
            ca_pem.push_str(&pem_encode("CERTIFICATE", &prev));
        }
    }
    Ok(Bundle {
        ca_pem,
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// DER contents of every `CERTIFICATE` block of a PEM text.
pub fn pem_blocks(pem: &str) -> Vec<Vec<u8>> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .filter_map(Result::ok)
        .filter(|p| p.label == "CERTIFICATE")
        .map(|p| p.contents)
        .collect()
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// Why an existing pair must be replaced (`None`: keep it).
pub fn renewal_reason(
    existing: &Bundle,
    service: &str,
    namespace: &str,
    now: SystemTime,
) -> Option<String> {
    let Some(der) = pem_blocks(&existing.cert_pem).into_iter().next() else {
        return Some("no serving certificate".to_owned());
    };
    let Ok((_, cert)) = X509Certificate::from_der(&der) else {
        return Some("the serving certificate does not parse".to_owned());
    };
    let (from, until, now) = (
        cert.validity().not_before.timestamp(),
        cert.validity().not_after.timestamp(),
        unix(now),
    );
    if now < from || now >= until {
        return Some("the serving certificate is not valid now".to_owned());
    }
    if (until - now) * 3 <= until - from {
        return Some("the serving certificate is within the last third of its lifetime".to_owned());
    }
    let sans: Vec<String> = cert
        .extensions()
        .iter()
        .filter_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectAlternativeName(san) => Some(san),
            _ => None,
        })
        .flat_map(|san| san.general_names.iter())
        .filter_map(|g| match g {
            GeneralName::DNSName(d) => Some((*d).to_owned()),
            _ => None,
        })
        .collect();
    if let Some(missing) = dns_names(service, namespace)
        .into_iter()
        .find(|n| !sans.contains(n))
    {
        return Some(format!("the serving certificate lacks the name {missing}"));
    }
    match KeyPair::from_pem(&existing.key_pem) {
        Ok(key) if key.subject_public_key_info() == cert.public_key().raw => {}
        _ => return Some("the key does not match the serving certificate".to_owned()),
    }
    let chains = pem_blocks(&existing.ca_pem).iter().any(|ca_der| {
        X509Certificate::from_der(ca_der).is_ok_and(|(_, ca)| {
            ca.validity().not_after.timestamp() > now
                && cert.verify_signature(Some(ca.public_key())).is_ok()
        })
    });
    if !chains {
        return Some(
            "the serving certificate is not signed by a valid CA of the bundle".to_owned(),
        );
    }
    None
}

/// Keeps `existing` when it is good, else generates a new pair. Returns the bundle and whether it is new.
pub fn ensure(
    existing: Option<Bundle>,
    service: &str,
    namespace: &str,
    days: u32,
    now: SystemTime,
) -> Result<(Bundle, bool), ServingError> {
    if let Some(b) = &existing {
        match renewal_reason(b, service, namespace, now) {
            None => return Ok((b.clone(), false)),
            Some(reason) => tracing::info!(%reason, "renewing the webhook certificate"),
        }
    }
    let prev = existing.as_ref().map(|b| b.ca_pem.as_str());
    Ok((generate(service, namespace, days, now, prev)?, true))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn a_fresh_pair_is_kept_and_has_the_four_names() {
        let now = SystemTime::now();
        let b = generate("kmm-webhook", "kmm-rs-system", 90, now, None).unwrap();
        assert_eq!(
            renewal_reason(&b, "kmm-webhook", "kmm-rs-system", now),
            None
        );
        let (same, fresh) =
            ensure(Some(b.clone()), "kmm-webhook", "kmm-rs-system", 90, now).unwrap();
        assert!(!fresh);
        assert_eq!(same, b);
        assert!(
            renewal_reason(&b, "other", "kmm-rs-system", now)
                .unwrap()
                .contains("lacks the name other")
        );
    }

    #[test]
    fn renewed_in_the_last_third_and_the_old_ca_stays_in_the_bundle() {
        let t0 = SystemTime::now();
        let b = generate("s", "n", 90, t0, None).unwrap();
        assert_eq!(renewal_reason(&b, "s", "n", t0 + 59 * DAY), None);
        let later = t0 + 61 * DAY;
        assert!(
            renewal_reason(&b, "s", "n", later)
                .unwrap()
                .contains("last third")
        );
        let (renewed, fresh) = ensure(Some(b.clone()), "s", "n", 90, later).unwrap();
        assert!(fresh);
        assert_eq!(pem_blocks(&renewed.ca_pem).len(), 2, "new CA + previous CA");
        assert_eq!(pem_blocks(&renewed.ca_pem)[1], pem_blocks(&b.ca_pem)[0]);
        assert_eq!(renewal_reason(&renewed, "s", "n", later), None);
        // The old serving cert still chains to the new bundle (served until the webhook reloads).
        let old_with_new_bundle = Bundle {
            ca_pem: renewed.ca_pem.clone(),
            ..b.clone()
        };
        assert!(renewal_reason(&old_with_new_bundle, "s", "n", t0 + DAY).is_none());
        // After expiry, the old CA is dropped from the next bundle.
        let (again, _) = ensure(Some(renewed.clone()), "s", "n", 90, later + 200 * DAY).unwrap();
        assert_eq!(pem_blocks(&again.ca_pem).len(), 1);
    }

    #[test]
    fn mismatched_or_foreign_pairs_are_renewed() {
        let now = SystemTime::now();
        let a = generate("s", "n", 90, now, None).unwrap();
        let b = generate("s", "n", 90, now, None).unwrap();
        let wrong_key = Bundle {
            key_pem: b.key_pem.clone(),
            ..a.clone()
        };
        assert!(
            renewal_reason(&wrong_key, "s", "n", now)
                .unwrap()
                .contains("key does not match")
        );
        let wrong_ca = Bundle {
            ca_pem: b.ca_pem.clone(),
            ..a.clone()
        };
        assert!(
            renewal_reason(&wrong_ca, "s", "n", now)
                .unwrap()
                .contains("not signed")
        );
        let garbage = Bundle {
            cert_pem: "x".into(),
            ..a
        };
        assert!(renewal_reason(&garbage, "s", "n", now).is_some());
    }
}
