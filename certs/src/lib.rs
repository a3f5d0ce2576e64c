//! kmm-certs: certificates for kmm-rs.
//!
//! - [`serving`]: the webhook's CA and serving certificate (rcgen), kept while valid, renewed in the last third of
//!   their lifetime with the previous CA left in the bundle so rotation never breaks a request;
//! - [`kube_ops`]: the Kubernetes side, both writes by server-side apply: the `kubernetes.io/tls` Secret and the
//!   `caBundle` of the webhook configurations;
//! - [`signing`]: module signing keys (RSA PEM key and self-signed DER certificate, as `openssl req -x509`);
//! - [`cli`]: the `kmm-certs` command line (`create`, `patch`, `signing-key`).

pub mod cli;
pub mod kube_ops;
pub mod serving;
pub mod signing;
