//! One plugin endpoint per resource: a gRPC server on `<dir>/<socket>` registered with the kubelet.
//!
//! Lifecycle (one task per endpoint): serve first, then register (capped backoff while the kubelet is not up or
//! refuses, logging its reason); then wait until the kubelet restarts (generation change) or the socket vanishes,
//! stop the old server (its ListAndWatch streams end first), and start over. On stop the socket is removed.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tonic::transport::Server;
use tracing::{debug, error, info, warn};

use crate::api::device_plugin_server::DevicePluginServer;
use crate::events::{NodeEvents, REASON_REGISTRATION_REFUSED};
use crate::health::Readiness;
use crate::inventory::ResourceView;
use crate::kubelet::{self, KubeletError, kubelet_socket_identity};
use crate::metrics::Metrics;
use crate::service::PluginService;
use crate::unix;

/// Prefix of the socket files this plugin owns in the device plugin directory.
pub const SOCKET_PREFIX: &str = "kmm-";

/// Timing of an endpoint. Its socket and kubelet.sock are checked on every directory event and poll tick of the
/// [`kubelet::KubeletWatch`] (one timer for all endpoints: separate timers would wake the runtime thread once per
/// endpoint and tick, and any Allocate arriving meanwhile would wait).
#[derive(Clone, Debug)]
pub struct EndpointTiming {
    /// Deadline of one Register call.
    pub register_timeout: Duration,
    /// First retry delay of a failed registration.
    pub backoff_start: Duration,
    /// Cap of the retry delay.
    pub backoff_cap: Duration,
}

impl Default for EndpointTiming {
    fn default() -> Self {
        Self {
            register_timeout: Duration::from_secs(5),
            backoff_start: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(5),
        }
    }
}

/// The socket file name of `resource`: `kmm-<resource with / as _>.sock`, shortened with a hash when long (unix
/// socket paths are limited to 107 bytes).
pub fn socket_name(resource: &str) -> String {
    let clean: String = resource
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.len() <= 48 {
        return format!("{SOCKET_PREFIX}{clean}.sock");
    }
    // FNV-1a: stable across builds and restarts.
    let hash = resource.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let head: String = clean.chars().take(32).collect();
    format!("{SOCKET_PREFIX}{head}-{hash:016x}.sock")
}

/// The kubelet-facing context shared by all endpoints.
#[derive(Clone)]
pub struct KubeletContext {
    /// The device plugin directory.
    pub dir: PathBuf,
    /// Kubelet generation (changes when the kubelet restarts).
    pub generation: watch::Receiver<u64>,
    /// Wakes on directory events.
    pub dir_events: watch::Receiver<u64>,
    /// Timing.
    pub timing: EndpointTiming,
    /// Metrics.
    pub metrics: Metrics,
    /// Readiness (registered endpoints).
    pub readiness: Readiness,
    /// Node Events (cluster mode).
    pub events: Option<NodeEvents>,
}

/// A running endpoint.
pub struct Endpoint {
    view: watch::Sender<Arc<ResourceView>>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Endpoint {
    /// Starts serving and registering `view.resource`.
    pub fn spawn(view: ResourceView, ctx: KubeletContext) -> Self {
        let (view_tx, view_rx) = watch::channel(Arc::new(view));
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(run(view_rx, stop_rx, ctx));
        Self {
            view: view_tx,
            stop,
            task,
        }
    }

    /// Publishes a new view; ListAndWatch streams send only when the device list changed.
    pub fn update(&self, view: ResourceView) {
        self.view.send_if_modified(|cur| {
            if **cur == view {
                false
            } else {
                *cur = Arc::new(view);
                true
            }
        });
    }

    /// Stops the server, removes the socket and waits for the task.
    pub async fn stop(self) {
        self.stop.send_replace(true);
        let _ = self.task.await;
    }
}

fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

struct Serving {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
    identity: Option<(u64, u64)>,
}

impl Serving {
    async fn shutdown(self) {
        self.stop.send_replace(true);
        let abort = self.task.abort_handle();
        if tokio::time::timeout(Duration::from_millis(500), self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

fn serve(
    socket: &Path,
    view: &watch::Receiver<Arc<ResourceView>>,
    metrics: &Metrics,
) -> Result<Serving, unix::UnixError> {
    let incoming = unix::listen(socket)?;
    let identity = identity(socket);
    let (stop, stop_rx) = watch::channel(false);
    let service = PluginService::new(view.clone(), stop_rx.clone(), metrics.clone());
    let mut shutdown = stop_rx;
    let task = tokio::spawn(
        Server::builder()
            .add_service(DevicePluginServer::new(service))
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = shutdown.wait_for(|s| *s).await;
            }),
    );
    Ok(Serving {
        stop,
        task,
        identity,
    })
}

enum Next {
    Restart,
    Stop,
}

type KubeletIdentity = Option<(u64, u64, i128)>;

enum Registration {
    Done(KubeletIdentity),
    ServeAgain,
    Stop,
}

async fn run(
    view: watch::Receiver<Arc<ResourceView>>,
    mut stop: watch::Receiver<bool>,
    mut ctx: KubeletContext,
) {
    let resource = view.borrow().resource.clone();
    let name = socket_name(&resource);
    let socket = ctx.dir.join(&name);
    let mut backoff = ctx.timing.backoff_start;
    loop {
        ctx.readiness.set(&resource, false);
        let serving = match serve(&socket, &view, &ctx.metrics) {
            Ok(s) => s,
            Err(e) => {
                ctx.metrics.error("serve");
                error!(resource = %resource, error = %e, "failed to serve the plugin endpoint; retrying");
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    _ = stop.wait_for(|s| *s) => break,
                }
                backoff = (backoff * 2).min(ctx.timing.backoff_cap);
                continue;
            }
        };
        debug!(resource = %resource, socket = %socket.display(), "serving");
        let next = match register_until_done(&resource, &name, &mut stop, &mut ctx).await {
            Registration::Done(kubelet) => {
                wait_for_restart(&socket, serving.identity, kubelet, &mut stop, &mut ctx).await
            }
            Registration::ServeAgain => Next::Restart,
            Registration::Stop => Next::Stop,
        };
        serving.shutdown().await;
        match next {
            Next::Stop => break,
            Next::Restart => {
                backoff = ctx.timing.backoff_start;
                info!(resource = %resource, "re-serving and re-registering");
            }
        }
    }
    ctx.readiness.remove(&resource);
    if std::fs::remove_file(&socket).is_ok() {
        info!(resource = %resource, socket = %socket.display(), "removed plugin socket");
    }
}

/// Registers until the kubelet accepts (returning the identity of the kubelet.sock it accepted on, when certain), a
/// restarted kubelet wiped our socket meanwhile (serve again), or the endpoint stops. Between attempts it wakes on
/// the backoff timer, a kubelet generation change or a directory event (kubelet.sock appearing).
async fn register_until_done(
    resource: &str,
    name: &str,
    stop: &mut watch::Receiver<bool>,
    ctx: &mut KubeletContext,
) -> Registration {
    let mut backoff = ctx.timing.backoff_start;
    let socket = ctx.dir.join(name);
    let mut reported = false;
    loop {
        ctx.generation.borrow_and_update();
        let before = kubelet_socket_identity(&ctx.dir);
        let mut unreachable = false;
        match kubelet::register(&ctx.dir, name, resource, ctx.timing.register_timeout).await {
            Ok(()) => {
                let after = kubelet_socket_identity(&ctx.dir);
                ctx.metrics.registration(resource, true);
                ctx.readiness.set(resource, true);
                info!(resource = %resource, endpoint = %name, "registered with the kubelet");
                return Registration::Done((before == after).then_some(before).flatten());
            }
            Err(KubeletError::ConnectToKubelet(e)) => {
                unreachable = true;
                debug!(resource = %resource, error = %e, "kubelet not reachable yet");
            }
            Err(e) => {
                ctx.metrics.registration(resource, false);
                ctx.metrics.error("register");
                if let Some(events) = ctx.events.as_ref().filter(|_| !reported) {
                    events.warning(REASON_REGISTRATION_REFUSED, e.to_string());
                    reported = true;
                }
                error!(resource = %resource, error = %e, retry_in_ms = backoff.as_millis() as u64, "registration failed");
            }
        }
        let deadline = tokio::time::Instant::now() + backoff;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                changed = ctx.generation.changed() => {
                    if changed.is_err() { return Registration::Stop; }
                    break;
                }
                changed = ctx.dir_events.changed() => {
                    if changed.is_err() { return Registration::Stop; }
                    // Retry early only when the kubelet was unreachable and a new kubelet.sock is there now (the
                    // poll ticks also land here: an unchanged stale socket waits for the backoff).
                    let now = kubelet_socket_identity(&ctx.dir);
                    if unreachable && now.is_some() && now != before { break; }
                    continue;
                }
                _ = stop.wait_for(|s| *s) => return Registration::Stop,
            }
        }
        // A new kubelet wiped our socket: serve again before registering.
        if std::fs::symlink_metadata(&socket).is_err() {
            return Registration::ServeAgain;
        }
        backoff = (backoff * 2).min(ctx.timing.backoff_cap);
    }
}

/// Waits until the kubelet restarted (kubelet.sock now differs from the one we registered on) or our socket was
/// removed or replaced. Wakes on generation changes, directory events and the kubelet watch's poll ticks.
async fn wait_for_restart(
    socket: &Path,
    ours: Option<(u64, u64)>,
    kubelet: KubeletIdentity,
    stop: &mut watch::Receiver<bool>,
    ctx: &mut KubeletContext,
) -> Next {
    loop {
        tokio::select! {
            changed = ctx.generation.changed() => if changed.is_err() { return Next::Stop },
            changed = ctx.dir_events.changed() => if changed.is_err() { return Next::Stop },
            _ = stop.wait_for(|s| *s) => return Next::Stop,
        }
        let now = kubelet_socket_identity(&ctx.dir);
        if now.is_some() && now != kubelet {
            info!(socket = %socket.display(), "kubelet restarted since registration");
            return Next::Restart;
        }
        if identity(socket) != ours {
            warn!(socket = %socket.display(), "plugin socket removed or replaced");
            return Next::Restart;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn socket_names_are_short_and_stable() {
        assert_eq!(socket_name("example.com/gpu"), "kmm-example.com_gpu.sock");
        let long = format!("{}/x", "a".repeat(200));
        let n = socket_name(&long);
        assert_eq!(n, socket_name(&long));
        assert!(n.len() < 64, "{n}");
        assert_ne!(n, socket_name(&format!("{}/y", "a".repeat(200))));
    }
}
