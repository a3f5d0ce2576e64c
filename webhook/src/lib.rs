//! kmm-webhook: the HTTPS admission server of kmm-rs.
//!
//! It validates `Module` and `ManagedClusterModule` objects with the pure rules of `kmm-api`, and mutates Pods that
//! need a kernel driver (an init-container that waits for the module, and a node affinity on the module's ready
//! label). The server, TLS reload and handlers are built in the webhook issue.
