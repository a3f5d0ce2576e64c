//! Command-line flags (each also an environment variable `KMM_*`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser};

use crate::telemetry::LogFormat;

/// Errors parsing flag values.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A duration is not `<number><ms|s|m>`.
    #[error("failed to parse duration {value:?}: expected e.g. 250ms, 30s or 5m")]
    ParseDuration {
        /// The value.
        value: String,
    },
}

/// Parses `250ms`, `30s`, `5m` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, CliError> {
    let err = || CliError::ParseDuration {
        value: s.to_owned(),
    };
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| err())?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        _ => return Err(err()),
    };
    Duration::try_from_secs_f64(secs).map_err(|_| err())
}

/// Host paths.
#[derive(Args, Clone, Debug)]
pub struct HostPaths {
    /// Root of the host tree: `sys/module` and `dev` are read under it; device paths given to the kubelet stay host
    /// paths (`/dev/...`).
    #[arg(long, env = "KMM_HOST_ROOT", default_value = "/")]
    pub host_root: PathBuf,

    /// The kubelet's device plugin directory (kubelet.sock and the plugin sockets).
    #[arg(
        long,
        env = "KMM_DEVICE_PLUGIN_DIR",
        default_value = "/var/lib/kubelet/device-plugins"
    )]
    pub device_plugin_dir: PathBuf,
}

/// Logging.
#[derive(Args, Clone, Debug)]
pub struct Logging {
    /// Log format.
    #[arg(long, env = "KMM_LOG_FORMAT", value_enum, default_value = "plain")]
    pub log_format: LogFormat,
}

/// kmm-device-plugin: advertises the devices of loaded kernel modules to the kubelet (device plugin API v1beta1).
///
/// Standalone mode (`--modules-from`) reads Modules from YAML files; otherwise Modules come from the API server and
/// are matched against the node `--node-name`.
#[derive(Parser, Clone, Debug)]
#[command(name = "kmm-device-plugin", version)]
pub struct Cli {
    #[command(flatten)]
    pub paths: HostPaths,

    #[command(flatten)]
    pub logging: Logging,

    /// Standalone mode: read Modules from the `*.yaml`/`*.yml` files of this directory (re-read on change).
    #[arg(long, env = "KMM_MODULES_FROM")]
    pub modules_from: Option<PathBuf>,

    /// Standalone mode: the node's labels, `key=value,...`, matched against each Module's selector.
    #[arg(long, env = "KMM_NODE_LABELS", default_value = "")]
    pub node_labels: String,

    /// Cluster mode: this node's name (from the downward API `spec.nodeName`).
    #[arg(long, env = "KMM_NODE_NAME", required_unless_present = "modules_from")]
    pub node_name: Option<String>,

    /// How long a device that vanished (or whose kmod unloaded) stays Unhealthy before it is dropped.
    #[arg(long, env = "KMM_UNHEALTHY_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub unhealthy_grace: Duration,

    /// Poll interval of the host tree, the Modules directory and the sockets (events wake earlier).
    #[arg(long, env = "KMM_POLL_INTERVAL", default_value = "200ms", value_parser = parse_duration)]
    pub poll_interval: Duration,

    /// Upper bound of the retry delay when the kubelet is not up or refuses a registration.
    #[arg(long, env = "KMM_REGISTER_BACKOFF_MAX", default_value = "5s", value_parser = parse_duration)]
    pub register_backoff_max: Duration,

    /// Plain-HTTP address of /healthz, /readyz and /metrics.
    #[arg(long, env = "KMM_HEALTH_LISTEN", default_value = "0.0.0.0:8081")]
    pub health_listen: SocketAddr,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("30s").unwrap(), Duration::from_secs(30));
        assert_eq!(parse_duration("2").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("1.5m").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("3h").is_err());
        assert!(parse_duration("x").is_err());
    }

    #[test]
    fn standalone_or_node_name_is_required() {
        assert!(Cli::try_parse_from(["p"]).is_err());
        let c = Cli::try_parse_from(["p", "--modules-from", "/m", "--node-labels", "a=b"]).unwrap();
        assert_eq!(
            c.paths.device_plugin_dir,
            PathBuf::from("/var/lib/kubelet/device-plugins")
        );
        assert!(Cli::try_parse_from(["p", "--node-name", "n1"]).is_ok());
    }
}
