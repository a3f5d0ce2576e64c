//! kmm-api: the API of kmm-rs, shared by every component. Pure: no I/O, no async.
//!
//! - [`module`]: the `Module` custom resource (`kmm.sigs.x-k8s.io/v1beta1`), field for field compatible with
//!   upstream KMM, plus the kmm-rs `devices` extension ([`devices`]);
//! - [`mcm`]: the hub's `ManagedClusterModule` (`hub.kmm.sigs.x-k8s.io/v1beta1`);
//! - [`labels`]: node labels, annotations and resource names in upstream's exact formats;
//! - [`validation`]: the admission rules of upstream's webhook, reporting every violation with its field path;
//! - [`mapping`]: kernel mapping resolution and template substitution, as upstream resolves them per node kernel;
//! - [`documents`]: reading Modules from multi-document YAML (standalone mode, demo, tests);
//! - [`crd`]: the CustomResourceDefinitions generated into `manifests/crds/`.

pub mod crd;
pub mod devices;
pub mod documents;
pub mod labels;
pub mod mapping;
pub mod mcm;
pub mod module;
pub mod validation;

pub use devices::DevicesSpec;
pub use mcm::{ManagedClusterModule, ManagedClusterModuleSpec, ManagedClusterModuleStatus};
pub use module::{Module, ModuleSpec, ModuleStatus};
