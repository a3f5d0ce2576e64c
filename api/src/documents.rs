//! Reading kmm-rs objects from YAML text (multi-document files, as `kubectl apply -f` takes them).
//!
//! Used by standalone mode (`--modules-from DIR`), the demo and the tests. Documents of other kinds are kept as
//! [`Document::Other`] so callers can say what they skipped.

use serde_json::Value;

use crate::{ManagedClusterModule, Module};

/// One YAML document.
#[derive(Clone, Debug)]
pub enum Document {
    /// A `kmm.sigs.x-k8s.io/v1beta1` Module.
    Module(Box<Module>),
    /// A `hub.kmm.sigs.x-k8s.io/v1beta1` ManagedClusterModule.
    ManagedClusterModule(Box<ManagedClusterModule>),
    /// Any other object.
    Other {
        /// `apiVersion` of the document.
        api_version: String,
        /// `kind` of the document.
        kind: String,
        /// `metadata.name` of the document.
        name: String,
    },
}

/// Why a YAML text could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// The text is not YAML.
    #[error("document {index}: invalid YAML: {source}")]
    ParseYaml {
        /// Index of the document in the text (from 0).
        index: usize,
        /// The parser's error.
        source: serde_norway::Error,
    },
    /// A Module or ManagedClusterModule does not match the schema.
    #[error("document {index} ({kind} {name:?}): {source}")]
    ParseObject {
        /// Index of the document in the text (from 0).
        index: usize,
        /// Kind of the object.
        kind: String,
        /// Name of the object.
        name: String,
        /// The decoder's error, naming the field.
        source: serde_json::Error,
    },
}

const MODULE_API_VERSION: &str = "kmm.sigs.x-k8s.io/v1beta1";
const MCM_API_VERSION: &str = "hub.kmm.sigs.x-k8s.io/v1beta1";

/// Parses every document of a YAML text. Empty documents are skipped.
pub fn parse_documents(text: &str) -> Result<Vec<Document>, DocumentError> {
    let mut out = Vec::new();
    for (index, de) in serde_norway::Deserializer::from_str(text).enumerate() {
        let value: Value = serde::Deserialize::deserialize(de)
            .map_err(|source| DocumentError::ParseYaml { index, source })?;
        if value.is_null() {
            continue;
        }
        let field = |v: &Value, k: &str| {
            v.get(k)
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned()
        };
        let api_version = field(&value, "apiVersion");
        let kind = field(&value, "kind");
        let name = value
            .get("metadata")
            .map(|m| field(m, "name"))
            .unwrap_or_default();
        let parse_err = |source| DocumentError::ParseObject {
            index,
            kind: kind.clone(),
            name: name.clone(),
            source,
        };
        let doc = match (api_version.as_str(), kind.as_str()) {
            (MODULE_API_VERSION, "Module") => {
                Document::Module(Box::new(serde_json::from_value(value).map_err(parse_err)?))
            }
            (MCM_API_VERSION, "ManagedClusterModule") => Document::ManagedClusterModule(Box::new(
                serde_json::from_value(value).map_err(parse_err)?,
            )),
            _ => Document::Other {
                api_version,
                kind,
                name,
            },
        };
        out.push(doc);
    }
    Ok(out)
}

/// The Modules of a YAML text, with `default_namespace` filled in where a Module has none (as `kubectl apply`
/// does).
pub fn parse_modules(text: &str, default_namespace: &str) -> Result<Vec<Module>, DocumentError> {
    Ok(parse_documents(text)?
        .into_iter()
        .filter_map(|d| match d {
            Document::Module(mut m) => {
                if m.metadata.namespace.as_deref().is_none_or(str::is_empty) {
                    m.metadata.namespace = Some(default_namespace.to_owned());
                }
                Some(*m)
            }
            _ => None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn multi_document_text() {
        let text = r#"
apiVersion: v1
kind: ConfigMap
metadata: {name: cm}
---
---
apiVersion: kmm.sigs.x-k8s.io/v1beta1
kind: Module
metadata: {name: m}
spec: {selector: {}}
"#;
        let docs = parse_documents(text).unwrap();
        assert_eq!(docs.len(), 2);
        assert!(matches!(&docs[0], Document::Other { kind, .. } if kind == "ConfigMap"));
        let modules = parse_modules(text, "default").unwrap();
        assert_eq!(modules[0].metadata.namespace.as_deref(), Some("default"));
    }

    #[test]
    fn errors_name_the_document_and_field() {
        let text =
            "apiVersion: kmm.sigs.x-k8s.io/v1beta1\nkind: Module\nmetadata: {name: m}\nspec: {}\n";
        let err = parse_documents(text).unwrap_err().to_string();
        assert!(err.contains("document 0 (Module \"m\")"), "{err}");
        assert!(err.contains("selector"), "{err}");
        let err = parse_documents("a: [").unwrap_err().to_string();
        assert!(err.starts_with("document 0: invalid YAML"), "{err}");
    }
}
