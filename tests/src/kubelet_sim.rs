//! A kubelet device-manager simulator: the kubelet's side of the device plugin API v1beta1, over real unix sockets.
//!
//! It behaves as the kubelet's device manager does:
//! - serves `Registration` on `<dir>/kubelet.sock`; `Register` validates the version (`v1beta1`) and the resource
//!   name (`IsExtendedResourceName`: a domain is required, `kubernetes.io/` is refused, `requests.<name>` must be a
//!   qualified name), then dials the plugin's endpoint (`<dir>/<endpoint>`) and calls `GetDevicePluginOptions` before
//!   answering; a refused Register returns an error with the kubelet's reason;
//! - after a successful Register it consumes `ListAndWatch` (each message is the full list; `Healthy` is the only
//!   healthy value); when the stream of the current endpoint ends, every device of that resource turns unhealthy;
//!   a re-registration replaces the endpoint;
//! - keeps capacity (all devices) and allocatable (healthy devices) per resource, and allocates per container
//!   (`GetPreferredAllocation` when the plugin offers it, then `Allocate`);
//! - [`KubeletSim::make_unreachable`] makes the kubelet's dial back to one resource's endpoint fail, the one way a
//!   real kubelet refuses a Register whose name and version are valid (its `connectClient` error is the reason);
//! - [`KubeletSim::restart`] stops the registration server, deletes every file in the directory except the
//!   checkpoint, drops the plugin connections and serves a new kubelet.sock, as a kubelet restart does.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use kmm_device_plugin::api::device_plugin_client::DevicePluginClient;
use kmm_device_plugin::api::registration_server::{Registration, RegistrationServer};
use kmm_device_plugin::api::{
    AllocateRequest, ContainerAllocateRequest, ContainerAllocateResponse,
    ContainerPreferredAllocationRequest, DevicePluginOptions, Empty, HEALTHY, KUBELET_SOCKET,
    PreferredAllocationRequest, RegisterRequest, VERSION,
};
use kmm_device_plugin::unix;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tonic::transport::{Channel, Server};
use tonic::{Request, Response, Status};

/// The kubelet's checkpoint file, the only file a kubelet restart keeps.
pub const CHECKPOINT: &str = "kubelet_internal_checkpoint";

/// Errors of the simulator.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// Serving kubelet.sock failed.
    #[error("failed to serve the registration socket")]
    Serve(#[source] unix::UnixError),
    /// Wiping the directory failed.
    #[error("failed to wipe {path}")]
    Wipe {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The resource is not registered.
    #[error("resource {0} is not registered")]
    NotRegistered(String),
    /// Too few healthy, unallocated devices.
    #[error("resource {resource}: {wanted} devices wanted, {free} free")]
    Insufficient {
        /// The resource.
        resource: String,
        /// Devices wanted.
        wanted: usize,
        /// Devices free.
        free: usize,
    },
    /// The plugin returned an error.
    #[error("plugin call {call} failed: {status}")]
    Plugin {
        /// The call.
        call: &'static str,
        /// The status.
        status: Status,
    },
    /// A condition was not met in time.
    #[error("timed out after {0:?} waiting for: {1}")]
    Timeout(Duration, String),
}

/// One Register call as the kubelet saw it.
#[derive(Clone, Debug)]
pub struct RegistrationRecord {
    /// Resource name.
    pub resource: String,
    /// Endpoint (socket file name).
    pub endpoint: String,
    /// When it was answered.
    pub at: Instant,
    /// `Err(reason)` when refused.
    pub result: Result<(), String>,
}

/// What the kubelet knows about one resource.
#[derive(Clone, Debug)]
pub struct ResourceState {
    /// Endpoint of the current registration.
    pub endpoint: String,
    /// Device ID -> health string, from the last ListAndWatch message.
    pub devices: BTreeMap<String, String>,
    /// Options returned by GetDevicePluginOptions during Register.
    pub options: DevicePluginOptions,
    /// Whether the ListAndWatch stream of the current endpoint is open.
    pub connected: bool,
    /// Number of ListAndWatch messages received for this resource.
    pub updates: usize,
    /// Device IDs handed to containers (the kubelet's allocation record).
    pub allocated: BTreeSet<String>,
    generation: u64,
    client: DevicePluginClient<Channel>,
}

impl ResourceState {
    /// All devices.
    pub fn capacity(&self) -> usize {
        self.devices.len()
    }

    /// Healthy devices, while the plugin is connected.
    pub fn allocatable(&self) -> usize {
        if !self.connected {
            return 0;
        }
        self.devices.values().filter(|h| *h == HEALTHY).count()
    }

    /// IDs of healthy devices.
    pub fn healthy_ids(&self) -> Vec<String> {
        self.devices
            .iter()
            .filter(|(_, h)| *h == HEALTHY)
            .map(|(id, _)| id.clone())
            .collect()
    }
}

/// The kubelet's state.
#[derive(Debug, Default)]
pub struct State {
    /// Registered resources.
    pub resources: BTreeMap<String, ResourceState>,
    /// Every Register call, in order.
    pub registrations: Vec<RegistrationRecord>,
    /// Restarts so far.
    pub restarts: usize,
    /// Resources whose endpoint the kubelet cannot dial (see [`KubeletSim::make_unreachable`]).
    pub unreachable: BTreeSet<String>,
}

impl State {
    /// Allocatable count of `resource` (0 when unknown).
    pub fn allocatable(&self, resource: &str) -> usize {
        self.resources
            .get(resource)
            .map_or(0, ResourceState::allocatable)
    }

    /// Capacity of `resource` (0 when unknown).
    pub fn capacity(&self, resource: &str) -> usize {
        self.resources
            .get(resource)
            .map_or(0, ResourceState::capacity)
    }

    /// Device ID -> health of `resource` (empty when unknown).
    pub fn devices(&self, resource: &str) -> BTreeMap<String, String> {
        self.resources
            .get(resource)
            .map(|r| r.devices.clone())
            .unwrap_or_default()
    }

    /// Successful registrations of `resource`.
    pub fn accepted(&self, resource: &str) -> usize {
        self.registrations
            .iter()
            .filter(|r| r.resource == resource && r.result.is_ok())
            .count()
    }
}

struct Shared {
    dir: PathBuf,
    state: Mutex<State>,
    changed: watch::Sender<u64>,
    generation: Mutex<u64>,
    streams: Mutex<Vec<tokio::task::AbortHandle>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n += 1);
    }
}

/// `IsExtendedResourceName` of the kubelet (k8s.io/kubernetes/pkg/apis/core/v1/helper).
pub fn is_extended_resource_name(name: &str) -> bool {
    // IsNativeResource: no domain, or a *kubernetes.io/ domain.
    if !name.contains('/') || name.contains("kubernetes.io/") {
        return false;
    }
    if name.starts_with("requests.") {
        return false;
    }
    is_qualified_name(&format!("requests.{name}"))
}

fn is_qualified_name(value: &str) -> bool {
    let parts: Vec<&str> = value.split('/').collect();
    let (prefix, name) = match parts.as_slice() {
        [n] => (None, *n),
        [p, n] => (Some(*p), *n),
        _ => return false,
    };
    if let Some(p) = prefix
        && !is_dns1123_subdomain(p)
    {
        return false;
    }
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

fn is_dns1123_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b[0].is_ascii_lowercase() | b[0].is_ascii_digit()
                && b[b.len() - 1].is_ascii_lowercase() | b[b.len() - 1].is_ascii_digit()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

struct RegistrationService(Arc<Shared>);

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn register(&self, request: Request<RegisterRequest>) -> Result<Response<Empty>, Status> {
        let r = request.into_inner();
        let result = self.connect(&r).await;
        let record = RegistrationRecord {
            resource: r.resource_name.clone(),
            endpoint: r.endpoint.clone(),
            at: Instant::now(),
            result: result
                .as_ref()
                .map(|_| ())
                .map_err(|s| s.message().to_owned()),
        };
        self.0.lock().registrations.push(record);
        self.0.bump();
        result.map(|()| Response::new(Empty {}))
    }
}

impl RegistrationService {
    async fn connect(&self, r: &RegisterRequest) -> Result<(), Status> {
        if r.version != VERSION {
            return Err(Status::unknown(format!(
                "requested API version {:?} is not supported by kubelet. Supported versions are [{VERSION:?}]",
                r.version
            )));
        }
        if !is_extended_resource_name(&r.resource_name) {
            return Err(Status::unknown(format!(
                "the ResourceName {:?} is invalid",
                r.resource_name
            )));
        }
        // An unreachable resource is dialled where its socket is not: the real connect fails with its real error.
        let unreachable = self.0.lock().unreachable.contains(&r.resource_name);
        let socket = if unreachable {
            self.0.dir.join("unreachable").join(&r.endpoint)
        } else {
            self.0.dir.join(&r.endpoint)
        };
        let channel = unix::connect(&socket)
            .await
            .map_err(|e| Status::unknown(format!("failed to dial device plugin: {e}")))?;
        let mut client = DevicePluginClient::new(channel);
        let options = tokio::time::timeout(
            Duration::from_secs(10),
            client.get_device_plugin_options(Empty {}),
        )
        .await
        .map_err(|_| Status::unknown("timed out getting device plugin options"))?
        .map_err(|s| {
            Status::unknown(format!(
                "failed to get device plugin options: {}",
                s.message()
            ))
        })?
        .into_inner();
        let generation = {
            let mut g = self
                .0
                .generation
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            *g += 1;
            *g
        };
        {
            let mut state = self.0.lock();
            let previous = state.resources.remove(&r.resource_name);
            state.resources.insert(
                r.resource_name.clone(),
                ResourceState {
                    endpoint: r.endpoint.clone(),
                    // The kubelet keeps the devices it knew (unhealthy until the new stream reports).
                    devices: previous
                        .as_ref()
                        .map(|p| p.devices.clone())
                        .unwrap_or_default(),
                    options,
                    connected: true,
                    updates: 0,
                    allocated: previous.map(|p| p.allocated).unwrap_or_default(),
                    generation,
                    client: client.clone(),
                },
            );
        }
        let task = tokio::spawn(run_list_and_watch(
            self.0.clone(),
            r.resource_name.clone(),
            generation,
            client,
        ));
        if let Ok(mut s) = self.0.streams.lock() {
            s.retain(|h| !h.is_finished());
            s.push(task.abort_handle());
        }
        Ok(())
    }
}

async fn run_list_and_watch(
    shared: Arc<Shared>,
    resource: String,
    generation: u64,
    mut client: DevicePluginClient<Channel>,
) {
    let current = |state: &State| {
        state
            .resources
            .get(&resource)
            .is_some_and(|r| r.generation == generation)
    };
    if let Ok(resp) = client.list_and_watch(Empty {}).await {
        let mut stream = resp.into_inner();
        while let Ok(Some(msg)) = stream.message().await {
            let mut state = shared.lock();
            if !current(&state) {
                return;
            }
            if let Some(r) = state.resources.get_mut(&resource) {
                r.devices = msg.devices.into_iter().map(|d| (d.id, d.health)).collect();
                r.updates += 1;
            }
            drop(state);
            shared.bump();
        }
    }
    // The stream ended: if this is still the current endpoint, its devices turn unhealthy.
    let mut state = shared.lock();
    if current(&state)
        && let Some(r) = state.resources.get_mut(&resource)
    {
        r.connected = false;
    }
    drop(state);
    shared.bump();
}

/// The simulator; see the module documentation.
pub struct KubeletSim {
    shared: Arc<Shared>,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl KubeletSim {
    /// Creates `dir` if needed and serves Registration on `dir/kubelet.sock`.
    pub async fn start(dir: &Path) -> Result<Self, SimError> {
        let _ = std::fs::create_dir_all(dir);
        let (changed, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            dir: dir.to_path_buf(),
            state: Mutex::new(State::default()),
            changed,
            generation: Mutex::new(0),
            streams: Mutex::new(Vec::new()),
        });
        let mut sim = Self {
            shared,
            server: None,
        };
        sim.serve()?;
        Ok(sim)
    }

    fn serve(&mut self) -> Result<(), SimError> {
        let incoming =
            unix::listen(&self.shared.dir.join(KUBELET_SOCKET)).map_err(SimError::Serve)?;
        let (tx, rx) = oneshot::channel::<()>();
        let service = RegistrationServer::new(RegistrationService(self.shared.clone()));
        let task = tokio::spawn(async move {
            let _ = Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(incoming, async {
                    let _ = rx.await;
                })
                .await;
        });
        self.server = Some((tx, task));
        Ok(())
    }

    async fn stop_server(&mut self) {
        if let Some((tx, task)) = self.server.take() {
            let _ = tx.send(());
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(1), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }

    /// From now on the kubelet cannot dial the endpoint of `resource` (as when the plugin's socket is not where the
    /// kubelet looks, or the plugin does not answer): its Register calls fail with the dial error as the reason, as
    /// the kubelet's `connectClient` failure does.
    pub fn make_unreachable(&self, resource: &str) {
        self.shared.lock().unreachable.insert(resource.to_owned());
    }

    /// A kubelet restart: the registration server stops, the plugin connections drop (devices unhealthy), every file
    /// but the checkpoint is deleted, and kubelet.sock is served again.
    pub async fn restart(&mut self) -> Result<(), SimError> {
        self.stop_server().await;
        {
            let mut state = self.shared.lock();
            for r in state.resources.values_mut() {
                r.connected = false;
                r.generation = 0; // late stream ends of the old process are ignored
            }
            state.restarts += 1;
        }
        // The old process dies: its ListAndWatch streams and connections end.
        if let Ok(mut s) = self.shared.streams.lock() {
            for h in s.drain(..) {
                h.abort();
            }
        }
        let dir = self.shared.dir.clone();
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_name() == CHECKPOINT {
                    continue;
                }
                std::fs::remove_file(e.path()).map_err(|source| SimError::Wipe {
                    path: e.path(),
                    source,
                })?;
            }
        }
        self.serve()?;
        self.shared.bump();
        Ok(())
    }

    /// Stops serving and drops the plugin connections (the directory is left as it is).
    pub async fn stop(mut self) {
        self.stop_server().await;
        if let Ok(mut s) = self.shared.streams.lock() {
            for h in s.drain(..) {
                h.abort();
            }
        }
    }

    /// A snapshot accessor: runs `f` on the current state.
    pub fn with_state<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.shared.lock())
    }

    /// Waits until `pred` holds on the state, at most `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        mut pred: impl FnMut(&State) -> bool,
    ) -> Result<(), SimError> {
        let mut rx = self.shared.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if pred(&self.shared.lock()) {
                return Ok(());
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                _ => {
                    return if pred(&self.shared.lock()) {
                        Ok(())
                    } else {
                        Err(SimError::Timeout(timeout, what.to_owned()))
                    };
                }
            }
        }
    }

    fn client(
        &self,
        resource: &str,
    ) -> Result<(DevicePluginClient<Channel>, ResourceState), SimError> {
        let state = self.shared.lock();
        let r = state
            .resources
            .get(resource)
            .filter(|r| r.connected)
            .ok_or_else(|| SimError::NotRegistered(resource.to_owned()))?;
        Ok((r.client.clone(), r.clone()))
    }

    /// Calls Allocate for one container with exactly `ids` (no kubelet-side checks), as the kubelet does when it
    /// replays a checkpointed allocation.
    pub async fn allocate_ids(
        &self,
        resource: &str,
        ids: &[String],
    ) -> Result<ContainerAllocateResponse, SimError> {
        let (mut client, _) = self.client(resource)?;
        let resp = client
            .allocate(AllocateRequest {
                container_requests: vec![ContainerAllocateRequest {
                    devices_ids: ids.to_vec(),
                }],
            })
            .await
            .map_err(|status| SimError::Plugin {
                call: "Allocate",
                status,
            })?
            .into_inner();
        resp.container_responses
            .into_iter()
            .next()
            .ok_or(SimError::Plugin {
                call: "Allocate",
                status: Status::internal("empty response"),
            })
    }

    /// Allocates `n` devices to one container as the kubelet does: from the healthy, unallocated devices, asking the
    /// plugin's preference when it offers GetPreferredAllocation, then Allocate. Returns the IDs and the response.
    pub async fn allocate(
        &self,
        resource: &str,
        n: usize,
    ) -> Result<(Vec<String>, ContainerAllocateResponse), SimError> {
        let (mut client, r) = self.client(resource)?;
        let free: Vec<String> = r
            .healthy_ids()
            .into_iter()
            .filter(|id| !r.allocated.contains(id))
            .collect();
        if free.len() < n {
            return Err(SimError::Insufficient {
                resource: resource.to_owned(),
                wanted: n,
                free: free.len(),
            });
        }
        let ids = if r.options.get_preferred_allocation_available {
            let resp = client
                .get_preferred_allocation(PreferredAllocationRequest {
                    container_requests: vec![ContainerPreferredAllocationRequest {
                        available_device_i_ds: free.clone(),
                        must_include_device_i_ds: vec![],
                        allocation_size: i32::try_from(n).unwrap_or(i32::MAX),
                    }],
                })
                .await
                .map_err(|status| SimError::Plugin {
                    call: "GetPreferredAllocation",
                    status,
                })?
                .into_inner();
            let preferred: Vec<String> = resp
                .container_responses
                .into_iter()
                .next()
                .map(|c| c.device_i_ds)
                .unwrap_or_default();
            // The kubelet uses the preference only when it is valid.
            if preferred.len() == n && preferred.iter().all(|id| free.contains(id)) {
                preferred
            } else {
                free[..n].to_vec()
            }
        } else {
            free[..n].to_vec()
        };
        let resp = self.allocate_ids(resource, &ids).await?;
        if let Some(r) = self.shared.lock().resources.get_mut(resource) {
            r.allocated.extend(ids.iter().cloned());
        }
        Ok((ids, resp))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn resource_names_as_the_kubelet_judges_them() {
        for ok in [
            "example.com/gpu",
            "kmm.sigs.x-k8s.io/ns.name",
            "a.b/c_d-e.f",
        ] {
            assert!(is_extended_resource_name(ok), "{ok}");
        }
        for bad in [
            "gpu",
            "kubernetes.io/gpu",
            "foo.kubernetes.io/gpu",
            "example-kubernetes.io/gpu",
            "requests.example.com/gpu",
            "Example.com/gpu",
            "example.com/-gpu",
            "example.com/a/b",
        ] {
            assert!(!is_extended_resource_name(bad), "{bad}");
        }
        let long_domain = format!(
            "{}.com/gpu",
            "a".repeat(60) + "." + &"b".repeat(60) + "." + &"c".repeat(60) + "." + &"d".repeat(60)
        );
        assert!(
            !is_extended_resource_name(&long_domain),
            "requests.<domain> exceeds 253"
        );
    }

    /// kmm-api's check (what the webhook and the plugin enforce) and the simulator's kubelet rule agree on
    /// generated names, so no Module that passes validation is refused by the kubelet for its name.
    #[test]
    fn kmm_api_agrees_with_the_kubelet_rule() {
        const PARTS: &[&str] = &[
            "a",
            "Z",
            "0",
            "-",
            "_",
            ".",
            "/",
            "kubernetes.io",
            "requests.",
            "example.com",
            "x",
        ];
        let mut state = 0x1234_5678_9abc_def1_u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let mut accepted = 0;
        for _ in 0..50_000 {
            let name: String = (0..1 + next(6)).map(|_| PARTS[next(PARTS.len())]).collect();
            let kubelet = is_extended_resource_name(&name);
            let api = kmm_api::validation::extended_resource_name(&name).is_empty();
            assert_eq!(api, kubelet, "{name:?}");
            accepted += usize::from(kubelet);
        }
        assert!(accepted > 500, "only {accepted} valid names generated");
        for n in [253 - 9, 253 - 8] {
            let name = format!("{}/gpu", "a".repeat(n));
            assert_eq!(
                kmm_api::validation::extended_resource_name(&name).is_empty(),
                is_extended_resource_name(&name),
                "{n}"
            );
        }
    }
}
