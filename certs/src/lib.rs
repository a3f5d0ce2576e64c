//! kmm-certs: certificates for kmm-rs.
//!
//! Webhook TLS (CA, serving certificate, caBundle patch, rotation) and module signing keys.
