//! The `DevicePlugin` gRPC service of one resource, answering from the inventory's [`ResourceView`].

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::{debug, info, warn};

use crate::api::device_plugin_server::DevicePlugin;
use crate::api::{
    AllocateRequest, AllocateResponse, ContainerAllocateResponse,
    ContainerPreferredAllocationRequest, ContainerPreferredAllocationResponse, Device,
    DevicePluginOptions, DeviceSpec, Empty, HEALTHY, ListAndWatchResponse, Mount,
    PreStartContainerRequest, PreStartContainerResponse, PreferredAllocationRequest,
    PreferredAllocationResponse, UNHEALTHY,
};
use crate::inventory::ResourceView;
use crate::metrics::Metrics;

/// The options this plugin registers with and reports.
pub fn options() -> DevicePluginOptions {
    DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: true,
    }
}

/// The device plugin service of one resource, for one server instance.
#[derive(Clone)]
pub struct PluginService {
    view: watch::Receiver<Arc<ResourceView>>,
    stop: watch::Receiver<bool>,
    metrics: Metrics,
}

impl PluginService {
    /// A service answering from `view`; its ListAndWatch streams end when `stop` turns true (the server instance is
    /// being replaced), so a late stream end cannot confuse the kubelet about the new instance.
    pub fn new(
        view: watch::Receiver<Arc<ResourceView>>,
        stop: watch::Receiver<bool>,
        metrics: Metrics,
    ) -> Self {
        Self {
            view,
            stop,
            metrics,
        }
    }
}

fn wire_devices(view: &ResourceView) -> Vec<Device> {
    view.devices
        .values()
        .map(|d| Device {
            id: d.id.clone(),
            health: if d.healthy { HEALTHY } else { UNHEALTHY }.to_owned(),
            topology: None,
        })
        .collect()
}

/// Allocate for one container: device specs (host path = container path, `rw`, each node once), env and mounts.
/// An unknown or unhealthy ID is an error naming it.
pub fn allocate_container(
    view: &ResourceView,
    ids: &[String],
) -> Result<ContainerAllocateResponse, Status> {
    let mut paths = BTreeSet::new();
    for id in ids {
        let Some(d) = view.devices.get(id) else {
            return Err(Status::invalid_argument(format!(
                "unknown device {id:?} for resource {}",
                view.resource
            )));
        };
        if !d.healthy {
            return Err(Status::failed_precondition(format!(
                "device {id:?} of resource {} is unhealthy",
                view.resource
            )));
        }
        if let Some(p) = &d.host_path {
            paths.insert(p.clone());
        }
    }
    Ok(ContainerAllocateResponse {
        envs: view
            .env
            .iter()
            .map(|e| (e.name.clone(), e.value.clone()))
            .collect(),
        mounts: view
            .mounts
            .iter()
            .map(|m| Mount {
                container_path: m.container_path.clone(),
                host_path: m.host_path.clone(),
                read_only: m.read_only,
            })
            .collect(),
        devices: paths
            .into_iter()
            .map(|p| DeviceSpec {
                container_path: p.clone(),
                host_path: p,
                permissions: "rw".to_owned(),
            })
            .collect(),
        annotations: Default::default(),
        cdi_devices: Vec::new(),
    })
}

/// GetPreferredAllocation for one container: the must-include IDs first, then the available devices whose
/// underlying device has the fewest copies in use (unshared first), ties by ID.
pub fn preferred(view: &ResourceView, req: &ContainerPreferredAllocationRequest) -> Vec<String> {
    let size = usize::try_from(req.allocation_size).unwrap_or(0);
    let available: BTreeSet<&str> = req
        .available_device_i_ds
        .iter()
        .map(String::as_str)
        .collect();
    let base_of = |id: &str| {
        view.devices
            .get(id)
            .map_or(id.to_owned(), |d| d.base.clone())
    };
    // Copies of each underlying device in use = all its copies minus those still available.
    let mut in_use: BTreeMap<String, usize> = BTreeMap::new();
    for d in view.devices.values() {
        if !available.contains(d.id.as_str()) {
            *in_use.entry(d.base.clone()).or_default() += 1;
        }
    }
    let mut chosen: Vec<String> = Vec::new();
    for id in &req.must_include_device_i_ds {
        if !chosen.contains(id) {
            *in_use.entry(base_of(id)).or_default() += 1;
            chosen.push(id.clone());
        }
    }
    while chosen.len() < size {
        let next = available
            .iter()
            .filter(|id| !chosen.iter().any(|c| c == *id))
            .min_by_key(|id| (in_use.get(&base_of(id)).copied().unwrap_or(0), **id));
        let Some(id) = next else { break };
        *in_use.entry(base_of(id)).or_default() += 1;
        chosen.push((*id).to_owned());
    }
    chosen
}

type ListStream = Pin<Box<dyn Stream<Item = Result<ListAndWatchResponse, Status>> + Send>>;

#[tonic::async_trait]
impl DevicePlugin for PluginService {
    async fn get_device_plugin_options(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<DevicePluginOptions>, Status> {
        Ok(Response::new(options()))
    }

    type ListAndWatchStream = ListStream;

    async fn list_and_watch(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListAndWatchStream>, Status> {
        let (tx, rx) = mpsc::channel(4);
        let mut view = self.view.clone();
        let mut stop = self.stop.clone();
        let resource = view.borrow().resource.clone();
        info!(resource = %resource, "kubelet started ListAndWatch");
        tokio::spawn(async move {
            let mut last: Option<Vec<Device>> = None;
            loop {
                let devices = wire_devices(&view.borrow_and_update());
                if last.as_ref() != Some(&devices) {
                    debug!(resource = %resource, devices = devices.len(), "sending device list");
                    if tx
                        .send(Ok(ListAndWatchResponse {
                            devices: devices.clone(),
                        }))
                        .await
                        .is_err()
                    {
                        break;
                    }
                    last = Some(devices);
                }
                tokio::select! {
                    changed = view.changed() => if changed.is_err() { break },
                    _ = stop.wait_for(|s| *s) => break,
                    () = tx.closed() => break,
                }
            }
            debug!(resource = %resource, "ListAndWatch ended");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_preferred_allocation(
        &self,
        request: Request<PreferredAllocationRequest>,
    ) -> Result<Response<PreferredAllocationResponse>, Status> {
        let view = self.view.borrow().clone();
        let container_responses = request
            .into_inner()
            .container_requests
            .iter()
            .map(|r| ContainerPreferredAllocationResponse {
                device_i_ds: preferred(&view, r),
            })
            .collect();
        Ok(Response::new(PreferredAllocationResponse {
            container_responses,
        }))
    }

    async fn allocate(
        &self,
        request: Request<AllocateRequest>,
    ) -> Result<Response<AllocateResponse>, Status> {
        let view = self.view.borrow().clone();
        let mut container_responses = Vec::new();
        for c in &request.into_inner().container_requests {
            match allocate_container(&view, &c.devices_ids) {
                Ok(r) => {
                    self.metrics.allocation(&view.resource);
                    container_responses.push(r);
                }
                Err(e) => {
                    self.metrics.error("allocate");
                    warn!(resource = %view.resource, error = %e.message(), "refused Allocate");
                    return Err(e);
                }
            }
        }
        Ok(Response::new(AllocateResponse {
            container_responses,
        }))
    }

    async fn pre_start_container(
        &self,
        _: Request<PreStartContainerRequest>,
    ) -> Result<Response<PreStartContainerResponse>, Status> {
        Ok(Response::new(PreStartContainerResponse {}))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::inventory::Device as Dev;
    use kmm_api::devices::{DeviceEnv, DeviceMount};

    fn view() -> ResourceView {
        let mut devices = BTreeMap::new();
        for (id, base, healthy) in [
            ("a-0", "a", true),
            ("a-1", "a", true),
            ("b-0", "b", true),
            ("b-1", "b", true),
            ("c-0", "c", false),
        ] {
            devices.insert(
                id.to_owned(),
                Dev {
                    id: id.into(),
                    healthy,
                    host_path: Some(format!("/dev/{base}")),
                    base: base.into(),
                },
            );
        }
        ResourceView {
            resource: "example.com/x".into(),
            module: "ns/x".into(),
            devices,
            env: vec![DeviceEnv {
                name: "X".into(),
                value: "1".into(),
            }],
            mounts: vec![DeviceMount {
                host_path: "/opt/l".into(),
                container_path: "/l".into(),
                read_only: true,
            }],
        }
    }

    #[test]
    fn allocate_dedups_nodes_and_is_idempotent() {
        let v = view();
        let ids = vec!["a-0".to_owned(), "a-1".to_owned(), "b-0".to_owned()];
        let r = allocate_container(&v, &ids).unwrap();
        assert_eq!(r, allocate_container(&v, &ids).unwrap());
        let paths: Vec<_> = r
            .devices
            .iter()
            .map(|d| {
                (
                    d.host_path.as_str(),
                    d.container_path.as_str(),
                    d.permissions.as_str(),
                )
            })
            .collect();
        assert_eq!(
            paths,
            [("/dev/a", "/dev/a", "rw"), ("/dev/b", "/dev/b", "rw")]
        );
        assert_eq!(r.envs.get("X").map(String::as_str), Some("1"));
        assert_eq!(r.mounts[0].host_path, "/opt/l");
        assert!(r.mounts[0].read_only);
    }

    #[test]
    fn allocate_names_unknown_and_unhealthy_ids() {
        let v = view();
        let e = allocate_container(&v, &["zz".to_owned()]).unwrap_err();
        assert!(e.message().contains("\"zz\""), "{}", e.message());
        let e = allocate_container(&v, &["c-0".to_owned()]).unwrap_err();
        assert!(
            e.message().contains("\"c-0\"") && e.message().contains("unhealthy"),
            "{}",
            e.message()
        );
    }

    #[test]
    fn preferred_honours_must_include_then_spreads_over_devices() {
        let v = view();
        let req = ContainerPreferredAllocationRequest {
            available_device_i_ds: vec!["a-0".into(), "a-1".into(), "b-0".into(), "b-1".into()],
            must_include_device_i_ds: vec!["a-1".into()],
            allocation_size: 2,
        };
        assert_eq!(preferred(&v, &req), ["a-1", "b-0"]);
        // a-0 is in use elsewhere: b is unshared, so b first.
        let req = ContainerPreferredAllocationRequest {
            available_device_i_ds: vec!["a-1".into(), "b-0".into(), "b-1".into()],
            must_include_device_i_ds: vec![],
            allocation_size: 1,
        };
        assert_eq!(preferred(&v, &req), ["b-0"]);
    }
}
