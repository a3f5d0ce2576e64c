//! The kubelet side: registering an endpoint, and noticing kubelet restarts.
//!
//! A kubelet restart deletes every socket in the device plugin directory and re-creates kubelet.sock. The
//! [`KubeletWatch`] task turns the identity of kubelet.sock (inode and change time) into a generation counter: it
//! wakes on directory events ([`crate::fswatch`]) and polls as a fallback, so the endpoints re-register within a poll interval
//! even where inotify is unavailable.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::sync::watch;
use tracing::info;

use crate::api::registration_client::RegistrationClient;
use crate::api::{KUBELET_SOCKET, RegisterRequest, VERSION};
use crate::fswatch::FsWatch;
use crate::metrics::Metrics;
use crate::unix;

/// Errors talking to the kubelet.
#[derive(Debug, thiserror::Error)]
pub enum KubeletError {
    /// The kubelet's socket could not be dialled.
    #[error("failed to connect to the kubelet")]
    ConnectToKubelet(#[source] unix::UnixError),
    /// The kubelet refused or failed the registration (its reason is the message).
    #[error("kubelet refused registration of {resource}: {reason}")]
    RegisterWithKubelet {
        /// The resource.
        resource: String,
        /// The kubelet's reason.
        reason: String,
    },
    /// The registration did not complete in time.
    #[error("registration of {resource} timed out")]
    RegisterTimeout {
        /// The resource.
        resource: String,
    },
}

/// Registers `endpoint` (a socket file name in `dir`) for `resource` with the kubelet serving `dir/kubelet.sock`.
pub async fn register(
    dir: &Path,
    endpoint: &str,
    resource: &str,
    timeout: Duration,
) -> Result<(), KubeletError> {
    let attempt = async {
        let channel = unix::connect(&dir.join(KUBELET_SOCKET))
            .await
            .map_err(KubeletError::ConnectToKubelet)?;
        RegistrationClient::new(channel)
            .register(RegisterRequest {
                version: VERSION.to_owned(),
                endpoint: endpoint.to_owned(),
                resource_name: resource.to_owned(),
                options: Some(crate::service::options()),
            })
            .await
            .map_err(|s| KubeletError::RegisterWithKubelet {
                resource: resource.to_owned(),
                reason: s.message().to_owned(),
            })?;
        Ok(())
    };
    tokio::time::timeout(timeout, attempt)
        .await
        .map_err(|_| KubeletError::RegisterTimeout {
            resource: resource.to_owned(),
        })?
}

/// Identity of the kubelet socket: `(device, inode, ctime ns)`; `None` while it does not exist.
pub fn kubelet_socket_identity(dir: &Path) -> Option<(u64, u64, i128)> {
    let md = std::fs::symlink_metadata(dir.join(KUBELET_SOCKET)).ok()?;
    Some((
        md.dev(),
        md.ino(),
        i128::from(md.ctime()) * 1_000_000_000 + i128::from(md.ctime_nsec()),
    ))
}

/// Watches the device plugin directory and publishes a kubelet generation: 0 while no kubelet was seen, incremented
/// each time kubelet.sock appears with a new identity.
pub struct KubeletWatch {
    /// The generation; endpoints re-register when it changes.
    pub generation: watch::Receiver<u64>,
    /// Changes whenever something happened in the directory, and on every poll tick: the endpoints check their
    /// sockets on it (noticing them vanish where inotify is unavailable) instead of running a timer each.
    pub dir_events: watch::Receiver<u64>,
}

impl KubeletWatch {
    /// Starts the watch task (woken by `fswatch` events on `dir`, and by polling); it stops when `shutdown` turns true.
    pub fn spawn(
        dir: PathBuf,
        poll: Duration,
        metrics: Metrics,
        fswatch: Option<&FsWatch>,
        mut shutdown: watch::Receiver<bool>,
    ) -> Self {
        let (gen_tx, generation) = watch::channel(0u64);
        let (ev_tx, dir_events) = watch::channel(0u64);
        let mut events = FsWatch::watch_or_poll(fswatch, &dir);
        tokio::spawn(async move {
            let mut last = kubelet_socket_identity(&dir);
            if last.is_some() {
                info!(dir = %dir.display(), "kubelet socket present");
                gen_tx.send_replace(1);
            }
            let mut tick = tokio::time::interval(poll);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        ev_tx.send_modify(|n| *n += 1);
                    }
                    Ok(()) = events.changed() => {
                        ev_tx.send_modify(|n| *n += 1);
                    }
                    _ = shutdown.wait_for(|s| *s) => break,
                }
                let now = kubelet_socket_identity(&dir);
                if now.is_some() && now != last {
                    let generation = *gen_tx.borrow() + 1;
                    if generation > 1 {
                        metrics.kubelet_restart();
                        info!(generation, "kubelet socket re-created: kubelet restarted");
                    } else {
                        info!("kubelet socket appeared");
                    }
                    gen_tx.send_replace(generation);
                }
                if now.is_none() && last.is_some() {
                    info!("kubelet socket removed");
                }
                last = now;
            }
        });
        Self {
            generation,
            dir_events,
        }
    }
}
