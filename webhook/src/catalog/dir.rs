//! Standalone mode: the Modules come from `*.yaml` / `*.yml` / `*.json` files in a directory (multi-document YAML
//! allowed; documents of other kinds are skipped), reread when the directory changes.
//!
//! A reload that fails (a file that does not parse) keeps the previous set, so a half-written file never makes the
//! webhook forget Modules and deny pods.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use kmm_api::Module;
use serde::Deserialize as _;

use super::{Catalog, StaticCatalog};
use crate::watch::{Shutdown, watch_dir};

/// Why the directory could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// The directory could not be listed.
    #[error("failed to list {path}")]
    ListDir {
        /// The directory.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A file could not be read.
    #[error("failed to read {path}")]
    ReadFile {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A document is not YAML, or a Module document does not match the Module schema.
    #[error("failed to parse document {index} of {path}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Index of the document in the file.
        index: usize,
        /// The cause.
        source: serde_norway::Error,
    },
}

/// Reads every Module in `dir`.
pub fn load_dir(dir: &Path) -> Result<(StaticCatalog, Vec<u8>), DirError> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|source| DirError::ListDir {
            path: dir.to_owned(),
            source,
        })?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            p.extension()
                .and_then(|e| e.to_str())
                .is_some_and(|e| matches!(e, "yaml" | "yml" | "json"))
                && !p
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with('.'))
        })
        .collect();
    files.sort();
    let mut modules = Vec::new();
    let mut fingerprint = Vec::new();
    for path in files {
        let text = std::fs::read_to_string(&path).map_err(|source| DirError::ReadFile {
            path: path.clone(),
            source,
        })?;
        fingerprint.extend_from_slice(path.as_os_str().as_encoded_bytes());
        fingerprint.extend_from_slice(text.as_bytes());
        for (index, doc) in serde_norway::Deserializer::from_str(&text).enumerate() {
            let parse_err = |source| DirError::Parse {
                path: path.clone(),
                index,
                source,
            };
            let value = serde_norway::Value::deserialize(doc).map_err(parse_err)?;
            if value.is_null() {
                continue;
            }
            let is_module = value.get("kind").and_then(|k| k.as_str()) == Some("Module")
                && value
                    .get("apiVersion")
                    .and_then(|k| k.as_str())
                    .is_some_and(|a| a.starts_with("kmm.sigs.x-k8s.io/"));
            if !is_module {
                continue;
            }
            let module: Module = serde_norway::from_value(value).map_err(parse_err)?;
            modules.push(module);
        }
    }
    Ok((StaticCatalog::new(modules), fingerprint))
}

/// The Modules of a directory, kept current by [`DirCatalog::run`].
#[derive(Debug)]
pub struct DirCatalog {
    dir: PathBuf,
    current: ArcSwap<StaticCatalog>,
    fingerprint: std::sync::Mutex<Vec<u8>>,
}

impl DirCatalog {
    /// Loads `dir` once; fails when the first load fails.
    pub fn open(dir: impl Into<PathBuf>) -> Result<Arc<Self>, DirError> {
        let dir = dir.into();
        let (catalog, fingerprint) = load_dir(&dir)?;
        tracing::info!(dir = %dir.display(), modules = catalog.len(), "loaded Modules");
        Ok(Arc::new(Self {
            dir,
            current: ArcSwap::from_pointee(catalog),
            fingerprint: std::sync::Mutex::new(fingerprint),
        }))
    }

    /// Rereads the directory; keeps the previous Modules when it does not parse.
    pub fn reload(&self) {
        match load_dir(&self.dir) {
            Ok((catalog, fingerprint)) => {
                let Ok(mut current) = self.fingerprint.lock() else {
                    return;
                };
                if *current != fingerprint {
                    tracing::info!(dir = %self.dir.display(), modules = catalog.len(), "reloaded Modules");
                    self.current.store(Arc::new(catalog));
                    *current = fingerprint;
                }
            }
            Err(e) => {
                tracing::warn!(error = %crate::error_chain(&e), "failed to reload Modules; keeping the previous set");
            }
        }
    }

    /// Watches the directory until shutdown.
    pub async fn run(self: Arc<Self>, poll: Duration, shutdown: Shutdown) {
        let dir = self.dir.clone();
        watch_dir(dir, poll, move || self.reload(), shutdown).await;
    }
}

impl Catalog for DirCatalog {
    fn get(&self, namespace: &str, name: &str) -> Option<Arc<Module>> {
        self.current.load().get(namespace, name)
    }

    fn all(&self) -> Vec<Arc<Module>> {
        self.current.load().all()
    }

    fn advertising(&self, resource: &str) -> Vec<Arc<Module>> {
        self.current.load().advertising(resource)
    }

    fn is_ready(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const TWO: &str = "\
apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {name: a, namespace: ns1}
spec: {selector: {}}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: ignored}
---
apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {name: b}
spec: {selector: {x: y}}
";

    #[test]
    fn loads_modules_and_skips_other_kinds() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.yaml"), TWO).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not yaml: [").unwrap();
        let (cat, _) = load_dir(dir.path()).unwrap();
        assert_eq!(cat.len(), 2);
        assert!(cat.get("ns1", "a").is_some());
        assert!(cat.get("default", "b").is_some());
    }

    #[test]
    fn a_broken_file_keeps_the_previous_set_and_a_fix_is_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.yaml"), TWO).unwrap();
        let cat = DirCatalog::open(dir.path()).unwrap();
        assert_eq!(cat.all().len(), 2);
        std::fs::write(
            dir.path().join("m.yaml"),
            "kind: Module\napiVersion: kmm.sigs.x-k8s.io/v1beta1\nspec: 3\n",
        )
        .unwrap();
        cat.reload();
        assert_eq!(cat.all().len(), 2, "broken file must not drop Modules");
        std::fs::write(dir.path().join("m.yaml"), TWO.split("---").next().unwrap()).unwrap();
        cat.reload();
        assert_eq!(cat.all().len(), 1);
    }

    #[tokio::test]
    async fn run_picks_up_a_new_file_without_waiting_for_the_poll() {
        let dir = tempfile::tempdir().unwrap();
        let cat = DirCatalog::open(dir.path()).unwrap();
        assert!(cat.all().is_empty());
        let (trigger, shutdown) = Shutdown::new();
        let task = tokio::spawn(Arc::clone(&cat).run(Duration::from_secs(3600), shutdown));
        tokio::time::sleep(Duration::from_millis(100)).await;
        std::fs::write(dir.path().join("m.yaml"), TWO).unwrap();
        tokio::time::timeout(Duration::from_secs(5), async {
            while cat.all().len() != 2 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap();
        trigger.trigger();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
