//! Wiring for the binary: Module source, agent, health server, signals.

use std::time::Duration;

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;
use tracing::{error, info, warn};

use crate::agent::{self, AgentConfig};
use crate::cli::Cli;
use crate::endpoint::EndpointTiming;
use crate::events::NodeEvents;
use crate::fswatch::FsWatch;
use crate::health::{self, Readiness};
use crate::metrics::Metrics;
use crate::{cluster, standalone};

/// Errors of a run.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `--node-labels` is malformed.
    #[error("invalid --node-labels")]
    NodeLabels(#[source] standalone::StandaloneError),
    /// No kube client could be built (cluster mode).
    #[error("failed to create a Kubernetes client")]
    KubeClient(#[source] kube::Error),
    /// Installing the signal handler failed.
    #[error("failed to install the SIGTERM handler")]
    Signal(#[source] std::io::Error),
    /// The agent failed.
    #[error("device plugin agent failed")]
    Agent(#[source] agent::AgentError),
    /// The health server failed.
    #[error("health server failed")]
    Health(#[source] health::HealthError),
}

/// Runs the device plugin until SIGTERM or SIGINT, then removes its sockets and returns.
pub async fn run(cli: Cli) -> Result<(), RunError> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let metrics = Metrics::new();
    let readiness = Readiness::default();
    // One inotify descriptor for every watched directory; without it everything is polled.
    let fswatch = FsWatch::spawn(stop_rx.clone())
        .inspect_err(|e| warn!(error = %e, "no file-system events; polling only"))
        .ok();
    let (modules, events) = match (&cli.modules_from, &cli.node_name) {
        (Some(dir), _) => {
            let labels =
                standalone::parse_node_labels(&cli.node_labels).map_err(RunError::NodeLabels)?;
            info!(dir = %dir.display(), labels = ?labels, "standalone mode");
            let modules = standalone::spawn(
                dir.clone(),
                labels,
                cli.poll_interval,
                fswatch.as_ref(),
                stop_rx.clone(),
            );
            (modules, None)
        }
        (None, node) => {
            let node = node.clone().unwrap_or_default();
            let client = kube::Client::try_default()
                .await
                .map_err(RunError::KubeClient)?;
            info!(node = %node, "cluster mode");
            let events = NodeEvents::spawn(client.clone(), &node, metrics.clone());
            let modules = cluster::spawn(client, node, metrics.clone(), stop_rx.clone());
            (modules, Some(events))
        }
    };
    let health = tokio::spawn(health::serve(
        cli.health_listen,
        metrics.clone(),
        readiness.clone(),
        stop_rx.clone(),
    ));
    let cfg = AgentConfig {
        host_root: cli.paths.host_root.clone(),
        plugin_dir: cli.paths.device_plugin_dir.clone(),
        unhealthy_grace: cli.unhealthy_grace,
        poll: cli.poll_interval,
        timing: EndpointTiming {
            backoff_cap: cli.register_backoff_max,
            ..EndpointTiming::default()
        },
    };
    let agent = tokio::spawn(agent::run(
        cfg, modules, metrics, readiness, events, fswatch, stop_rx,
    ));
    let mut term = signal(SignalKind::terminate()).map_err(RunError::Signal)?;
    let mut int = signal(SignalKind::interrupt()).map_err(RunError::Signal)?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM: deregistering"),
        _ = int.recv() => info!("SIGINT: deregistering"),
    }
    stop_tx.send_replace(true);
    match tokio::time::timeout(Duration::from_secs(5), agent).await {
        Ok(Ok(Err(e))) => return Err(RunError::Agent(e)),
        Ok(Err(e)) => error!(error = %e, "agent task failed"),
        Err(_) => error!("agent did not stop within 5 s"),
        Ok(Ok(Ok(()))) => {}
    }
    if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_secs(2), health).await {
        return Err(RunError::Health(e));
    }
    info!("stopped");
    Ok(())
}
