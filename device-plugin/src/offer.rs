//! What a Module offers on this node: its validated `spec.devices`, the resource name it is advertised under and
//! the kmod (as /sys/module names it) that must be loaded for its devices to be healthy.

use kmm_api::devices::{DeviceEnv, DeviceMount, resource_name};
use kmm_api::validation::{FieldError, devices_errors};
use kmm_api::{DevicesSpec, Module};
use tracing::{debug, error};

/// A Module's device offer, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Offer {
    /// `namespace/name` of the Module.
    pub module: String,
    /// Extended resource name.
    pub resource: String,
    /// The kmod that must be loaded (`-` read as `_`); `None` when the Module loads none by name (its devices are
    /// offered wherever it targets the node).
    pub kmod: Option<String>,
    /// What is offered.
    pub kind: OfferKind,
    /// Each device is offered this many times (`None`: once, IDs without suffix).
    pub shared: Option<u32>,
    /// Environment added by Allocate.
    pub env: Vec<DeviceEnv>,
    /// Mounts added by Allocate.
    pub mounts: Vec<DeviceMount>,
}

/// Device nodes or plain slots.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OfferKind {
    /// Globs of device node host paths.
    Paths(Vec<String>),
    /// A number of plain slots.
    Slots(u32),
}

/// Why a Module offers nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Skip {
    /// The Module has no `spec.devices`.
    NoDevices,
    /// `spec.devices` is invalid.
    Invalid(Vec<FieldError>),
}

impl Offer {
    /// The offer of `module`, or why there is none.
    pub fn from_module(module: &Module) -> Result<Self, Skip> {
        let devices: &DevicesSpec = module.spec.devices.as_ref().ok_or(Skip::NoDevices)?;
        let errors = devices_errors(devices);
        if !errors.is_empty() {
            return Err(Skip::Invalid(errors));
        }
        let (ns, name) = (module.namespace_or_empty(), module.name_or_empty());
        let kind = match (&devices.paths, devices.slots) {
            (Some(p), _) if !p.is_empty() => OfferKind::Paths(p.clone()),
            (_, Some(n)) => OfferKind::Slots(n),
            // devices_errors() refuses neither-nor; keep the type total anyway.
            _ => return Err(Skip::Invalid(Vec::new())),
        };
        Ok(Self {
            module: format!("{ns}/{name}"),
            resource: resource_name(ns, name, Some(devices)),
            kmod: module.spec.sys_module_name(),
            kind,
            shared: devices.shared,
            env: devices.env.clone().unwrap_or_default(),
            mounts: devices.mounts.clone().unwrap_or_default(),
        })
    }
}

/// The offers of `modules`, sorted by Module; invalid device sections are logged with their field paths and skipped,
/// and of two Modules claiming the same resource the first (by namespace/name) wins, the other is logged.
pub fn offers(modules: &[Module]) -> Vec<Offer> {
    let mut out: Vec<Offer> = Vec::new();
    let mut sorted: Vec<&Module> = modules.iter().collect();
    sorted.sort_by_key(|m| {
        (
            m.namespace_or_empty().to_owned(),
            m.name_or_empty().to_owned(),
        )
    });
    for m in sorted {
        let key = format!("{}/{}", m.namespace_or_empty(), m.name_or_empty());
        match Offer::from_module(m) {
            Ok(o) => {
                if let Some(first) = out.iter().find(|x| x.resource == o.resource) {
                    error!(module = %key, resource = %o.resource, owner = %first.module,
                        "skipping Module: its resource is already offered by another Module");
                } else {
                    out.push(o);
                }
            }
            Err(Skip::NoDevices) => debug!(module = %key, "Module offers no devices"),
            Err(Skip::Invalid(errs)) => {
                let fields: Vec<String> = errs.iter().map(ToString::to_string).collect();
                error!(module = %key, errors = %fields.join("; "), "skipping Module: invalid spec.devices");
            }
        }
    }
    out
}
