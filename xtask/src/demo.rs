//! The main job on an embedded default: every example Module (kmm-rs's own, embedded in this binary, and upstream
//! KMM's from ../shared when present) is validated as the admission webhook would, and its kernel mappings are
//! resolved for real kernels of common distributions, as the node agent resolves them. Then a broken Module shows
//! every violation with its field path.

use std::path::Path;

use anyhow::{Context, Result};
use kmm_api::Module;
use kmm_api::documents::parse_modules;
use kmm_api::mapping::{MappingError, ResolvedMapping, resolve};
use kmm_api::validation::validate_module;

use crate::codegen::repo_root;

const EXAMPLES: [(&str, &str); 6] = [
    (
        "simple-kmod-build-sign.yaml",
        include_str!("../../manifests/examples/simple-kmod-build-sign.yaml"),
    ),
    (
        "multi-mapping-regexp.yaml",
        include_str!("../../manifests/examples/multi-mapping-regexp.yaml"),
    ),
    (
        "raw-args.yaml",
        include_str!("../../manifests/examples/raw-args.yaml"),
    ),
    (
        "modules-loading-order.yaml",
        include_str!("../../manifests/examples/modules-loading-order.yaml"),
    ),
    (
        "firmware.yaml",
        include_str!("../../manifests/examples/firmware.yaml"),
    ),
    (
        "devices.yaml",
        include_str!("../../manifests/examples/devices.yaml"),
    ),
];

const BROKEN: &str = include_str!("demo/broken-module.yaml");

/// Node kernels as the kubelet reports them (`node.status.nodeInfo.kernelVersion`).
const KERNELS: [&str; 5] = [
    "6.1.0-28-amd64",
    "6.1.0-27-amd64",
    "5.14.0-427.13.1.el9_4.x86_64",
    "6.8.0-45-generic",
    "4.18.0-372.9.1.el8.x86_64+",
];

pub fn run() -> Result<()> {
    println!("kmm-rs demo: admission verdicts and kernel mappings, no cluster needed\n");
    let mut sources: Vec<(String, String)> = EXAMPLES
        .iter()
        .map(|(n, t)| (format!("manifests/examples/{n}"), (*t).to_owned()))
        .collect();
    let upstream = repo_root().join("../shared/upstream-kmm/examples");
    if upstream.is_dir() {
        sources.extend(read_dir_yaml(&upstream)?);
    } else {
        println!(
            "(upstream examples not found at {}: showing kmm-rs examples only)\n",
            upstream.display()
        );
    }

    let (mut accepted, mut total) = (0, 0);
    for (source, text) in &sources {
        let modules =
            parse_modules(text, "default").with_context(|| format!("failed to read {source}"))?;
        for module in modules {
            total += 1;
            accepted += usize::from(show_module(source, &module));
        }
    }
    println!("{accepted}/{total} example Modules accepted\n");

    scheduling(&sources)?;

    println!("== a broken Module: every violation, with its field path ==");
    for module in
        parse_modules(BROKEN, "default").context("failed to read the embedded broken Module")?
    {
        match validate_module(&module, None) {
            Ok(()) => println!("unexpectedly accepted: {}", module.name_or_empty()),
            Err(errors) => {
                println!(
                    "Module {}/{}: denied, {} violations",
                    module.namespace_or_empty(),
                    module.name_or_empty(),
                    errors.len()
                );
                for e in errors {
                    println!("  - {}: {}", e.path, e.message);
                }
            }
        }
    }
    Ok(())
}

/// Transparent scheduling: the webhook's mutation of the example pods that need a driver.
fn scheduling(sources: &[(String, String)]) -> Result<()> {
    use k8s_openapi::api::core::v1::Pod;
    use kmm_webhook::catalog::StaticCatalog;
    use kmm_webhook::mutate::{MutateConfig, PodView, mutate_pod};

    println!("== transparent scheduling: what the webhook does to pods that need a driver ==");
    let mut modules = Vec::new();
    let mut pods = Vec::new();
    for (source, text) in sources.iter().filter(|(s, _)| s.starts_with("manifests/")) {
        modules.extend(parse_modules(text, "default")?);
        for doc in serde_norway::Deserializer::from_str(text) {
            let value: serde_json::Value = serde::Deserialize::deserialize(doc)
                .with_context(|| format!("failed to read {source}"))?;
            if value.get("kind").and_then(serde_json::Value::as_str) == Some("Pod") {
                // A full Pod first (the example must be a valid Pod), then the view the webhook reads.
                serde_json::from_value::<Pod>(value.clone())
                    .with_context(|| format!("bad Pod in {source}"))?;
                pods.push(serde_json::from_value::<PodView>(value)?);
            }
        }
    }
    let catalog = StaticCatalog::new(modules);
    let cfg = MutateConfig::new("registry.example.com/kmm-rs/kmm-loader:latest");
    for pod in pods {
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".to_owned());
        let name = pod.metadata.name.clone().unwrap_or_default();
        match mutate_pod(&pod, &ns, &catalog, &cfg) {
            Ok(patch) if patch.0.is_empty() => println!("Pod {ns}/{name}: allowed, no patch"),
            Ok(patch) => {
                println!(
                    "Pod {ns}/{name}: allowed with a JSON patch of {} operations",
                    patch.0.len()
                );
                for op in &patch.0 {
                    println!("  {}", serde_json::to_string(op)?);
                }
            }
            Err(denial) => println!("Pod {ns}/{name}: denied: {denial}"),
        }
    }
    println!();
    Ok(())
}

fn read_dir_yaml(dir: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut paths: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    paths.sort();
    for path in paths
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
    {
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push((format!("upstream {name}"), text));
    }
    Ok(out)
}

/// Prints one Module's verdict and mappings; returns whether it was accepted.
fn show_module(source: &str, module: &Module) -> bool {
    let id = format!("{}/{}", module.namespace_or_empty(), module.name_or_empty());
    println!("== Module {id} ({source})");
    if let Err(errors) = validate_module(module, None) {
        println!("   DENIED:");
        for e in errors {
            println!("     - {e}");
        }
        return false;
    }
    println!("   admission: allowed");
    if let Some(d) = &module.spec.devices {
        let resource = kmm_api::devices::resource_name(
            module.namespace_or_empty(),
            module.name_or_empty(),
            Some(d),
        );
        println!("   devices: advertised as {resource}");
    }
    if module.spec.module_loader.is_none() {
        println!("   no moduleLoader: nothing to load (device plugin only)\n");
        return true;
    }
    for kernel in KERNELS {
        match resolve(module, kernel) {
            Ok(r) => print_resolved(kernel, &r),
            Err(MappingError::NotFound { .. }) => {
                println!("   {kernel:<32} -> no mapping: node not targeted")
            }
            Err(e) => println!("   {kernel:<32} -> error: {e}"),
        }
    }
    println!();
    true
}

fn print_resolved(kernel: &str, r: &ResolvedMapping) {
    println!(
        "   {kernel:<32} -> kernelMappings[{}] image {}",
        r.mapping_index, r.container_image
    );
    let tls = &r.registry_tls;
    if tls.insecure || tls.insecure_skip_tls_verify {
        println!(
            "   {:<32}    registryTLS insecure={} skipVerify={}",
            "", tls.insecure, tls.insecure_skip_tls_verify
        );
    }
    if let Some(b) = &r.build {
        let args: Vec<String> = b
            .build_args
            .iter()
            .flatten()
            .map(|a| format!("{}={}", a.name, a.value))
            .collect();
        println!(
            "   {:<32}    build: dockerfile ConfigMap {}, args [{}]",
            "",
            b.dockerfile_config_map.name,
            args.join(", ")
        );
    }
    if let Some(s) = &r.sign {
        let files = s.files_to_sign.clone().unwrap_or_default().join(", ");
        println!(
            "   {:<32}    sign: key {}, cert {}, files [{files}]",
            "", s.key_secret.name, s.cert_secret.name
        );
    }
    if let Some(in_tree) = &r.in_tree_modules_to_remove {
        println!(
            "   {:<32}    remove in-tree first: [{}]",
            "",
            in_tree.join(", ")
        );
    }
}
