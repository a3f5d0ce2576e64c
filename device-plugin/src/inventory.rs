//! The device inventory: per resource, the devices a node offers right now, with stable IDs and health.
//!
//! It reads the host tree under `--host-root` (`sys/module/<kmod>/initstate`, device nodes under `dev`), while the
//! IDs and paths it hands out stay host paths (`/dev/...`). A device is Healthy while its kmod is loaded (`live`, or
//! built in: the directory without `initstate`) and its node exists; when either goes it turns Unhealthy at once and is
//! dropped after the grace period; when it comes back it is Healthy again under the same ID, because IDs are derived
//! from the path (`/dev/dri/card0` -> `dri.card0`), from the slot number (`slot-3`), plus `-<i>` for shared copies.
//!
//! The inventory is plain data driven by [`Inventory::refresh`]: the agent calls it on file-system events and on a
//! poll tick, and the loading reconciler can call it right after it loads or unloads a kmod.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kmm_api::devices::{DeviceEnv, DeviceMount};
use tracing::{info, warn};

use crate::glob::PathGlob;
use crate::offer::{Offer, OfferKind};

/// Depth limit of a `**` glob walk under /dev.
const MAX_WALK_DEPTH: usize = 8;

/// One device as offered to the kubelet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Device {
    /// Stable device ID.
    pub id: String,
    /// Whether the kubelet may allocate it.
    pub healthy: bool,
    /// Host path of the device node (`None` for slots).
    pub host_path: Option<String>,
    /// The ID of the underlying device (without the shared-copy suffix).
    pub base: String,
}

/// Everything a plugin endpoint needs to answer the kubelet for one resource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceView {
    /// Extended resource name.
    pub resource: String,
    /// `namespace/name` of the Module offering it.
    pub module: String,
    /// Devices by ID.
    pub devices: BTreeMap<String, Device>,
    /// Environment added by Allocate.
    pub env: Vec<DeviceEnv>,
    /// Mounts added by Allocate.
    pub mounts: Vec<DeviceMount>,
}

impl ResourceView {
    /// `(id, healthy)` of every device: what ListAndWatch sends.
    pub fn health_list(&self) -> Vec<(String, bool)> {
        self.devices
            .values()
            .map(|d| (d.id.clone(), d.healthy))
            .collect()
    }

    /// Number of healthy devices.
    pub fn healthy_count(&self) -> usize {
        self.devices.values().filter(|d| d.healthy).count()
    }
}

#[derive(Clone, Debug)]
struct Tracked {
    host_path: Option<String>,
    base: String,
    unhealthy_since: Option<Instant>,
}

/// Per-resource device state over time.
#[derive(Debug)]
pub struct Inventory {
    host_root: PathBuf,
    grace: Duration,
    resources: BTreeMap<String, BTreeMap<String, Tracked>>,
}

impl Inventory {
    /// An empty inventory reading the host tree under `host_root`, dropping vanished devices after `grace`.
    pub fn new(host_root: impl Into<PathBuf>, grace: Duration) -> Self {
        Self {
            host_root: host_root.into(),
            grace,
            resources: BTreeMap::new(),
        }
    }

    /// Re-reads the host tree for `offers` at time `now` and returns every offered resource's view. Resources no
    /// longer offered are forgotten.
    pub fn refresh(&mut self, offers: &[Offer], now: Instant) -> BTreeMap<String, ResourceView> {
        self.resources
            .retain(|r, _| offers.iter().any(|o| &o.resource == r));
        let mut views = BTreeMap::new();
        for offer in offers {
            let present = self.present_devices(offer);
            let tracked = self.resources.entry(offer.resource.clone()).or_default();
            for (id, (host_path, base)) in &present {
                match tracked.get_mut(id) {
                    Some(t) => {
                        if t.unhealthy_since.take().is_some() {
                            info!(resource = %offer.resource, device = %id, "device healthy again");
                        }
                        t.host_path.clone_from(host_path);
                    }
                    None => {
                        tracked.insert(
                            id.clone(),
                            Tracked {
                                host_path: host_path.clone(),
                                base: base.clone(),
                                unhealthy_since: None,
                            },
                        );
                    }
                }
            }
            let grace = self.grace;
            tracked.retain(|id, t| {
                if present.contains_key(id) {
                    return true;
                }
                match t.unhealthy_since {
                    None => {
                        warn!(resource = %offer.resource, device = %id, "device gone or kmod not loaded: unhealthy");
                        t.unhealthy_since = Some(now);
                        true
                    }
                    Some(since) if now.saturating_duration_since(since) >= grace => {
                        info!(resource = %offer.resource, device = %id, "device dropped after the grace period");
                        false
                    }
                    Some(_) => true,
                }
            });
            let devices = tracked
                .iter()
                .map(|(id, t)| {
                    (
                        id.clone(),
                        Device {
                            id: id.clone(),
                            healthy: t.unhealthy_since.is_none(),
                            host_path: t.host_path.clone(),
                            base: t.base.clone(),
                        },
                    )
                })
                .collect();
            views.insert(
                offer.resource.clone(),
                ResourceView {
                    resource: offer.resource.clone(),
                    module: offer.module.clone(),
                    devices,
                    env: offer.env.clone(),
                    mounts: offer.mounts.clone(),
                },
            );
        }
        views
    }

    /// The devices of `offer` present now: ID -> (host path, base ID). Empty while its kmod is not loaded.
    fn present_devices(&self, offer: &Offer) -> BTreeMap<String, (Option<String>, String)> {
        let mut out = BTreeMap::new();
        if let Some(kmod) = &offer.kmod
            && !kmod_loaded(&self.host_root, kmod)
        {
            return out;
        }
        let bases: Vec<(String, Option<String>)> = match &offer.kind {
            OfferKind::Slots(n) => (0..*n).map(|i| (format!("slot-{i}"), None)).collect(),
            OfferKind::Paths(globs) => scan(&self.host_root, globs)
                .into_iter()
                .map(|p| (device_id(&p), Some(p)))
                .collect(),
        };
        for (base, path) in bases {
            match offer.shared {
                Some(n) => {
                    for i in 0..n {
                        out.insert(format!("{base}-{i}"), (path.clone(), base.clone()));
                    }
                }
                None => {
                    out.insert(base.clone(), (path, base));
                }
            }
        }
        out
    }
}

/// Whether the kmod `name` is loaded: `sys/module/<name>/initstate` reads `live`, or the directory exists without
/// `initstate` (built in).
pub fn kmod_loaded(host_root: &Path, name: &str) -> bool {
    let dir = host_root.join("sys/module").join(name);
    if !dir.is_dir() {
        return false;
    }
    match std::fs::read_to_string(dir.join("initstate")) {
        Ok(s) => s.trim() == "live",
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
        Err(_) => false,
    }
}

/// The stable device ID of a host path: the path under `/dev` (or the whole path) with `/` read as `.`.
pub fn device_id(host_path: &str) -> String {
    let rel = host_path
        .strip_prefix("/dev/")
        .unwrap_or_else(|| host_path.trim_start_matches('/'));
    rel.replace('/', ".")
}

fn is_glob(component: &str) -> bool {
    component.contains(['*', '?', '[', '{'])
}

/// The host paths under `host_root` matching any of `globs` (host paths, absolute), excluding directories.
pub fn scan(host_root: &Path, globs: &[String]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for pattern in globs {
        let matcher = match PathGlob::new(pattern) {
            Ok(g) => g,
            Err(_) => continue, // validated by kmm-api before
        };
        let components: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty()).collect();
        let literal: Vec<&str> = components
            .iter()
            .take_while(|c| !is_glob(c))
            .copied()
            .collect();
        let rest = components.len() - literal.len();
        let depth = if components.iter().any(|c| c.contains("**")) {
            MAX_WALK_DEPTH
        } else {
            rest
        };
        let start_host = format!("/{}", literal.join("/"));
        if rest == 0 {
            // A literal path: one device if it exists.
            let p = host_root.join(start_host.trim_start_matches('/'));
            if p.exists() && !p.is_dir() {
                found.insert(start_host);
            }
            continue;
        }
        walk(host_root, &start_host, depth, &matcher, &mut found);
    }
    found
}

fn walk(host_root: &Path, dir_host: &str, depth: usize, m: &PathGlob, out: &mut BTreeSet<String>) {
    if depth == 0 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(host_root.join(dir_host.trim_start_matches('/'))) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let host = if dir_host == "/" {
            format!("/{name}")
        } else {
            format!("{dir_host}/{name}")
        };
        // file_type() does not follow symlinks: a symlinked directory is not descended into.
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir {
            walk(host_root, &host, depth - 1, m, out);
        } else if m.is_match(&host) && entry.path().exists() {
            out.insert(host);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::fs;

    fn offer(kmod: Option<&str>, kind: OfferKind, shared: Option<u32>) -> Offer {
        Offer {
            module: "ns/m".into(),
            resource: "example.com/m".into(),
            kmod: kmod.map(Into::into),
            kind,
            shared,
            env: vec![],
            mounts: vec![],
        }
    }

    fn load(root: &Path, kmod: &str, state: Option<&str>) {
        let d = root.join("sys/module").join(kmod);
        fs::create_dir_all(&d).unwrap();
        if let Some(s) = state {
            fs::write(d.join("initstate"), format!("{s}\n")).unwrap();
        }
    }

    #[test]
    fn loaded_means_live_or_builtin() {
        let t = tempfile::tempdir().unwrap();
        assert!(!kmod_loaded(t.path(), "a"));
        load(t.path(), "a", Some("live"));
        load(t.path(), "b", Some("coming"));
        load(t.path(), "c", None);
        assert!(kmod_loaded(t.path(), "a"));
        assert!(!kmod_loaded(t.path(), "b"));
        assert!(kmod_loaded(t.path(), "c"));
    }

    #[test]
    fn ids_come_from_paths() {
        assert_eq!(device_id("/dev/simple_kmod0"), "simple_kmod0");
        assert_eq!(device_id("/dev/dri/card0"), "dri.card0");
        assert_eq!(device_id("/opt/x/y"), "opt.x.y");
    }

    #[test]
    fn scan_matches_one_level_and_double_star() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("dev/dri")).unwrap();
        for f in [
            "dev/kmod0",
            "dev/kmod1",
            "dev/other",
            "dev/dri/card0",
            "dev/dri/renderD128",
        ] {
            fs::write(t.path().join(f), "").unwrap();
        }
        let got = scan(t.path(), &["/dev/kmod*".into()]);
        assert_eq!(
            got,
            BTreeSet::from(["/dev/kmod0".into(), "/dev/kmod1".into()])
        );
        let got = scan(t.path(), &["/dev/dri/card*".into(), "/dev/other".into()]);
        assert_eq!(
            got,
            BTreeSet::from(["/dev/dri/card0".into(), "/dev/other".into()])
        );
        let got = scan(t.path(), &["/dev/**/renderD*".into()]);
        assert_eq!(got, BTreeSet::from(["/dev/dri/renderD128".into()]));
    }

    #[test]
    fn unload_turns_unhealthy_then_drops_and_reload_keeps_ids() {
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("dev")).unwrap();
        fs::write(t.path().join("dev/kmod0"), "").unwrap();
        let o = [offer(
            Some("kmod"),
            OfferKind::Paths(vec!["/dev/kmod*".into()]),
            Some(2),
        )];
        let mut inv = Inventory::new(t.path(), Duration::from_secs(10));
        let t0 = Instant::now();
        assert!(inv.refresh(&o, t0)["example.com/m"].devices.is_empty());

        load(t.path(), "kmod", Some("live"));
        let v = inv.refresh(&o, t0);
        let ids: Vec<_> = v["example.com/m"].health_list();
        assert_eq!(
            ids,
            vec![("kmod0-0".into(), true), ("kmod0-1".into(), true)]
        );
        assert_eq!(
            v["example.com/m"].devices["kmod0-1"].host_path.as_deref(),
            Some("/dev/kmod0")
        );

        fs::write(t.path().join("sys/module/kmod/initstate"), "going\n").unwrap();
        let v = inv.refresh(&o, t0 + Duration::from_secs(1));
        assert_eq!(
            v["example.com/m"].health_list(),
            vec![("kmod0-0".into(), false), ("kmod0-1".into(), false)]
        );
        let v = inv.refresh(&o, t0 + Duration::from_secs(5));
        assert_eq!(v["example.com/m"].healthy_count(), 0);
        assert_eq!(v["example.com/m"].devices.len(), 2);

        fs::write(t.path().join("sys/module/kmod/initstate"), "live\n").unwrap();
        let v = inv.refresh(&o, t0 + Duration::from_secs(6));
        assert_eq!(v["example.com/m"].health_list(), ids);

        fs::remove_file(t.path().join("dev/kmod0")).unwrap();
        inv.refresh(&o, t0 + Duration::from_secs(7));
        let v = inv.refresh(&o, t0 + Duration::from_secs(17));
        assert!(v["example.com/m"].devices.is_empty());
    }

    #[test]
    fn slots_without_kmod_and_forgotten_resources() {
        let t = tempfile::tempdir().unwrap();
        let mut inv = Inventory::new(t.path(), Duration::from_secs(1));
        let o = [offer(None, OfferKind::Slots(3), None)];
        let v = inv.refresh(&o, Instant::now());
        let ids: Vec<_> = v["example.com/m"].devices.keys().cloned().collect();
        assert_eq!(ids, ["slot-0", "slot-1", "slot-2"]);
        assert!(inv.refresh(&[], Instant::now()).is_empty());
    }
}
