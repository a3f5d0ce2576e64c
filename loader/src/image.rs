//! kmod images without a container engine.
//!
//! - [`reference`]: image references (`host[:port]/repo:tag`, `@sha256:`, `oci:PATH[:TAG]`).
//! - [`auth`]: credentials from a `.dockerconfigjson` pull secret.
//! - [`extract`]: safe, whiteout-aware extraction of the module and firmware subtrees of layers.

pub mod auth;
pub mod build;
pub mod cli;
pub mod extract;
pub mod layout;
pub mod manifest;
pub mod pull;
pub mod push;
pub mod reference;
pub mod registry;
pub mod signing;
