//! The agent loop: keeps the inventory fresh (file-system events on `dev` and `sys/module`, plus a poll tick, plus
//! Module changes) and one [`Endpoint`] per offered resource.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use kmm_api::Module;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::endpoint::{Endpoint, EndpointTiming, KubeletContext, SOCKET_PREFIX};
use crate::events::NodeEvents;
use crate::fswatch::FsWatch;
use crate::health::Readiness;
use crate::inventory::{Inventory, ResourceView};
use crate::kubelet::KubeletWatch;
use crate::metrics::Metrics;
use crate::offer::{Offer, offers};

/// Errors of the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The device plugin directory could not be created.
    #[error("failed to create the device plugin directory {path}")]
    CreateDirectory {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Settings of the agent.
#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Root of the host tree (`sys/module`, `dev` are read under it).
    pub host_root: PathBuf,
    /// Device plugin directory (kubelet.sock and our sockets).
    pub plugin_dir: PathBuf,
    /// How long a vanished device stays Unhealthy before it is dropped.
    pub unhealthy_grace: Duration,
    /// Poll interval of the host tree and the sockets.
    pub poll: Duration,
    /// Endpoint timing.
    pub timing: EndpointTiming,
}

/// Removes socket files we own that a killed predecessor left behind.
fn remove_stale_sockets(dir: &Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(SOCKET_PREFIX)
            && name.ends_with(".sock")
            && std::fs::remove_file(e.path()).is_ok()
        {
            info!(socket = %name, "removed stale plugin socket");
        }
    }
}

fn publish_metrics(metrics: &Metrics, views: &BTreeMap<String, ResourceView>) {
    for v in views.values() {
        let healthy = v.healthy_count();
        metrics.set_devices(&v.resource, healthy, v.devices.len() - healthy);
    }
}

/// Runs until `shutdown` turns true; then stops every endpoint (removing its socket). `events` publishes Node
/// Events (cluster mode); `fswatch` wakes the loop on changes in `dev`, `sys/module` (sysfs sends none: polled) and
/// the device plugin directory.
pub async fn run(
    cfg: AgentConfig,
    mut modules: watch::Receiver<Vec<Module>>,
    metrics: Metrics,
    readiness: Readiness,
    events: Option<NodeEvents>,
    fswatch: Option<FsWatch>,
    mut shutdown: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    std::fs::create_dir_all(&cfg.plugin_dir).map_err(|source| AgentError::CreateDirectory {
        path: cfg.plugin_dir.clone(),
        source,
    })?;
    remove_stale_sockets(&cfg.plugin_dir);
    let kubelet = KubeletWatch::spawn(
        cfg.plugin_dir.clone(),
        cfg.poll,
        metrics.clone(),
        fswatch.as_ref(),
        shutdown.clone(),
    );
    let ctx = KubeletContext {
        dir: cfg.plugin_dir.clone(),
        generation: kubelet.generation,
        dir_events: kubelet.dir_events,
        timing: cfg.timing.clone(),
        metrics: metrics.clone(),
        readiness,
        events,
    };
    let mut dev_events = FsWatch::watch_or_poll(fswatch.as_ref(), &cfg.host_root.join("dev"));
    let mut sys_events =
        FsWatch::watch_or_poll(fswatch.as_ref(), &cfg.host_root.join("sys/module"));
    let mut inventory = Inventory::new(&cfg.host_root, cfg.unhealthy_grace);
    let mut current: Vec<Offer> = offers(&modules.borrow_and_update());
    let mut endpoints: BTreeMap<String, Endpoint> = BTreeMap::new();
    let mut tick = tokio::time::interval(cfg.poll);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut wake = "start";
    loop {
        let views = inventory.refresh(&current, Instant::now());
        debug!(wake, "inventory refreshed");
        publish_metrics(&metrics, &views);
        let gone: Vec<String> = endpoints
            .keys()
            .filter(|r| !views.contains_key(*r))
            .cloned()
            .collect();
        for r in gone {
            if let Some(e) = endpoints.remove(&r) {
                info!(resource = %r, "resource no longer offered: stopping its endpoint");
                e.stop().await;
                metrics.forget_resource(&r);
            }
        }
        for (r, v) in views {
            match endpoints.get(&r) {
                Some(e) => e.update(v),
                None => {
                    info!(resource = %r, module = %v.module, devices = v.devices.len(), "offering resource");
                    endpoints.insert(r, Endpoint::spawn(v, ctx.clone()));
                }
            }
        }
        tokio::select! {
            _ = tick.tick() => wake = "poll",
            Ok(()) = dev_events.changed() => wake = "dev event",
            Ok(()) = sys_events.changed() => wake = "sys event",
            changed = modules.changed() => {
                wake = "modules";
                if changed.is_err() {
                    warn!("Module source ended");
                    break;
                }
                current = offers(&modules.borrow_and_update());
            }
            _ = shutdown.wait_for(|s| *s) => break,
        }
    }
    for (_, e) in std::mem::take(&mut endpoints) {
        e.stop().await;
    }
    Ok(())
}
