//! The appended-signature trailer and the PKCS#7 parser on arbitrary bytes, and verification against a fixed
//! certificate: errors, never panics.
#![no_main]

use std::sync::OnceLock;

use kmm_loader::keys::{Certificate, TrustStore};
use kmm_loader::signature;
use libfuzzer_sys::fuzz_target;

fn store() -> &'static TrustStore {
    static STORE: OnceLock<TrustStore> = OnceLock::new();
    STORE.get_or_init(|| {
        let der = include_bytes!("../corpus_seed/cert.der");
        TrustStore::new(Certificate::from_der(der).into_iter().collect())
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(app)) = signature::split(data) {
        if let Ok(p7) = signature::parse_pkcs7(app.sig) {
            let _ = p7.summary();
            let _ = signature::verify_pkcs7(&p7, app.content, store());
        }
    }
    // The message alone, as if it had been appended.
    if let Ok(p7) = signature::parse_pkcs7(data) {
        let _ = signature::verify_pkcs7(&p7, b"content", store());
    }
    let _ = signature::verify(data, store());
});
