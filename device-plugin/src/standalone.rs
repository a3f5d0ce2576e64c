//! Standalone mode: Modules from YAML files in a directory (multi-document files allowed; other kinds are skipped),
//! matched against the node labels given on the command line. The directory is re-read when it changes (directory
//! events, with polling as a fallback).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use kmm_api::Module;
use serde::Deserialize;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::fswatch::FsWatch;
use crate::matching::{NodeFacts, module_targets};

/// Errors of standalone mode.
#[derive(Debug, thiserror::Error)]
pub enum StandaloneError {
    /// A `--node-labels` entry is not `key=value`.
    #[error("failed to parse node label {entry:?}: expected key=value")]
    ParseNodeLabel {
        /// The entry.
        entry: String,
    },
    /// The Modules directory could not be listed.
    #[error("failed to read the Modules directory {path}")]
    ReadDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A file could not be read.
    #[error("failed to read {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// A YAML document is not a valid Module.
    #[error("failed to parse document {index} of {path}")]
    ParseModule {
        /// The file.
        path: PathBuf,
        /// Index of the document in the file.
        index: usize,
        /// The cause.
        #[source]
        source: serde_norway::Error,
    },
}

/// Parses `k=v,k2=v2` (empty: no labels).
pub fn parse_node_labels(s: &str) -> Result<BTreeMap<String, String>, StandaloneError> {
    s.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| {
            e.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| StandaloneError::ParseNodeLabel {
                    entry: e.to_owned(),
                })
        })
        .collect()
}

/// The Modules in one YAML text (documents of another kind are skipped; no namespace means `default`).
pub fn parse_modules(path: &Path, text: &str) -> Result<Vec<Module>, StandaloneError> {
    let mut out = Vec::new();
    for (index, doc) in serde_norway::Deserializer::from_str(text).enumerate() {
        let parse = |source| StandaloneError::ParseModule {
            path: path.to_path_buf(),
            index,
            source,
        };
        let value = serde_norway::Value::deserialize(doc).map_err(parse)?;
        if value.is_null() || value.get("kind").and_then(|k| k.as_str()) != Some("Module") {
            continue;
        }
        let mut module: Module = serde_norway::from_value(value).map_err(parse)?;
        if module.metadata.namespace.is_none() {
            module.metadata.namespace = Some("default".to_owned());
        }
        out.push(module);
    }
    Ok(out)
}

fn yaml_files(dir: &Path) -> Result<Vec<PathBuf>, StandaloneError> {
    let rd = std::fs::read_dir(dir).map_err(|source| StandaloneError::ReadDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut files: Vec<PathBuf> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml") && p.is_file())
        .collect();
    files.sort();
    Ok(files)
}

/// Every Module in the `*.yaml`/`*.yml` files of `dir`. A file that fails to parse is logged and skipped, so one bad
/// file does not hide the others.
pub fn load_dir(dir: &Path) -> Result<Vec<Module>, StandaloneError> {
    let mut modules = Vec::new();
    for path in yaml_files(dir)? {
        let parsed = std::fs::read_to_string(&path)
            .map_err(|source| StandaloneError::ReadFile {
                path: path.clone(),
                source,
            })
            .and_then(|text| parse_modules(&path, &text));
        match parsed {
            Ok(m) => modules.extend(m),
            Err(e) => {
                error!(error = %e, source = ?std::error::Error::source(&e).map(ToString::to_string), "skipping Module file")
            }
        }
    }
    Ok(modules)
}

type Fingerprint = Vec<(PathBuf, Option<SystemTime>, u64)>;

fn fingerprint(dir: &Path) -> Fingerprint {
    yaml_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let md = std::fs::metadata(&p).ok();
            let modified = md.as_ref().and_then(|m| m.modified().ok());
            let len = md.map_or(0, |m| m.len());
            (p, modified, len)
        })
        .collect()
}

/// The Modules of `dir` that target a node with `labels`, refreshed on change (events from `fswatch`, and polling)
/// until `shutdown` turns true.
pub fn spawn(
    dir: PathBuf,
    labels: BTreeMap<String, String>,
    poll: Duration,
    fswatch: Option<&FsWatch>,
    mut shutdown: watch::Receiver<bool>,
) -> watch::Receiver<Vec<Module>> {
    let node = NodeFacts {
        labels,
        taints: Vec::new(),
    };
    let select = move |all: Vec<Module>| -> Vec<Module> {
        all.into_iter()
            .filter(|m| module_targets(m, &node))
            .collect()
    };
    let initial = match load_dir(&dir) {
        Ok(m) => m,
        Err(e) => {
            warn!(error = %e, "no Modules yet");
            Vec::new()
        }
    };
    info!(dir = %dir.display(), modules = initial.len(), "read Modules");
    let (tx, rx) = watch::channel(select(initial));
    let mut events = FsWatch::watch_or_poll(fswatch, &dir);
    tokio::spawn(async move {
        let mut last = fingerprint(&dir);
        let mut tick = tokio::time::interval(poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Ok(()) = events.changed() => {}
                _ = shutdown.wait_for(|s| *s) => break,
            }
            let now = fingerprint(&dir);
            if now == last {
                continue;
            }
            last = now;
            match load_dir(&dir) {
                Ok(all) => {
                    let selected = select(all);
                    debug!(modules = selected.len(), "Modules changed");
                    tx.send_replace(selected);
                }
                Err(e) => error!(error = %e, "failed to re-read Modules"),
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn node_labels_parse() {
        let l = parse_node_labels("a=1, b=,c=x=y").unwrap();
        assert_eq!(l["a"], "1");
        assert_eq!(l["b"], "");
        assert_eq!(l["c"], "x=y");
        assert!(parse_node_labels("").unwrap().is_empty());
        assert!(parse_node_labels("novalue").is_err());
    }

    #[test]
    fn multi_document_files_keep_modules_only() {
        let text = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: x}
---
apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {name: a}
spec:
  selector: {role: gpu}
  devices: {slots: 2}
---
"#;
        let m = parse_modules(Path::new("x.yaml"), text).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].metadata.namespace.as_deref(), Some("default"));
        assert_eq!(m[0].spec.devices.as_ref().unwrap().slots, Some(2));
        let bad = "apiVersion: kmm.sigs.x-k8s.io/v1beta1\nkind: Module\nmetadata: {name: a}\nspec: {selector: 3}\n";
        assert!(parse_modules(Path::new("bad.yaml"), bad).is_err());
    }
}
