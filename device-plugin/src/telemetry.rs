//! Logging: `tracing` to stderr, plain or JSON, filtered by `RUST_LOG` (default `info`).
//!
//! `RUST_LOG` takes a level or a comma-separated list of `target=level` directives (`info`,
//! `warn,kmm_device_plugin=debug`). The filter is [`Targets`], not `EnvFilter`: `EnvFilter` compiles its directives
//! with the regex engine, whose code alone is a noticeable share of this agent's resident memory (see
//! `cargo xtask bench device-plugin`); span and field filters are not needed here.

use std::str::FromStr;

use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Log output format.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Plain,
    /// One JSON object per line.
    Json,
}

/// The filter of a `RUST_LOG` value; `info` when unset or malformed.
pub fn filter(rust_log: Option<&str>) -> Targets {
    rust_log
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .and_then(|s| Targets::from_str(s).ok())
        .unwrap_or_else(|| Targets::new().with_default(LevelFilter::INFO))
}

/// Installs the global subscriber (once; later calls are ignored).
pub fn init(format: LogFormat) {
    let filter = filter(std::env::var("RUST_LOG").ok().as_deref());
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter);
    let _ = match format {
        LogFormat::Plain => registry.with(fmt.with_ansi(false)).try_init(),
        LogFormat::Json => registry.with(fmt.json()).try_init(),
    };
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use tracing::Level;

    #[test]
    fn rust_log_values() {
        let f = filter(None);
        assert!(f.would_enable("kmm_device_plugin::agent", &Level::INFO));
        assert!(!f.would_enable("kmm_device_plugin::agent", &Level::DEBUG));
        let f = filter(Some("warn,kmm_device_plugin=debug"));
        assert!(f.would_enable("kmm_device_plugin::agent", &Level::DEBUG));
        assert!(!f.would_enable("h2::codec", &Level::INFO));
        assert!(f.would_enable("h2::codec", &Level::WARN));
        assert!(filter(Some("debug")).would_enable("x", &Level::DEBUG));
        // Malformed: the default.
        let f = filter(Some("=,=nonsense=="));
        assert!(f.would_enable("x", &Level::INFO));
    }
}
