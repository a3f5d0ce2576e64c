//! Kernel mapping: which image, build, sign and in-tree settings apply to a node kernel (KMM-COMPAT section 3).
//!
//! - The kernel key is the node's `kernelVersion` with one trailing `+` trimmed ([`kernel_key`]).
//! - Mappings are tried in order; a non-empty `literal` must equal the key, else a non-empty `regexp` must match it
//!   anywhere (Go RE2 `MatchString`: unanchored, `\d \w \s \b` are ASCII). The first match wins.
//! - Container-level and mapping-level settings are merged as upstream merges them ([`resolve`]).
//! - Templates (`${KERNEL_FULL_VERSION}`, `$MOD_NAME`, ...) are substituted with envsubst semantics ([`envsubst`]).

mod envsubst;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, LazyLock, RwLock};

use regex::Regex;
use serde::Serialize;

use crate::module::{Build, BuildArg, KernelMapping, ModprobeSpec, Module, Sign, TlsOptions};

pub use envsubst::{EnvsubstError, envsubst};

/// Why no mapping could be resolved.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MappingError {
    /// The Module has no `spec.moduleLoader`: it loads nothing.
    #[error("module has no spec.moduleLoader: it loads no kernel module")]
    NoModuleLoader,
    /// No mapping matches the kernel (upstream's sentinel: the node is simply not targeted).
    #[error("kernel mapping not found for kernel {kernel}")]
    NotFound {
        /// The kernel key.
        kernel: String,
    },
    /// A mapping's regexp does not compile.
    #[error(
        "could not match regexp {regexp:?} at kernelMappings[{index}] against kernel {kernel:?}: {reason}"
    )]
    InvalidRegexp {
        /// Index of the mapping.
        index: usize,
        /// The pattern.
        regexp: String,
        /// The kernel key.
        kernel: String,
        /// The compiler's message.
        reason: String,
    },
    /// The kernel has fewer than three `[.,-]`-separated fields.
    #[error(
        "invalid kernel version {kernel}: expected at least three components (major.minor.patch)"
    )]
    InvalidKernel {
        /// The normalized kernel.
        kernel: String,
    },
    /// A template could not be substituted.
    #[error("failed to substitute templates in {field}: {source}")]
    Template {
        /// The field holding the template.
        field: String,
        /// What went wrong.
        source: EnvsubstError,
    },
}

/// Everything that applies to one node kernel, after merging and substitution (upstream's ModuleLoaderData).
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResolvedMapping {
    /// Index of the mapping that matched.
    pub mapping_index: usize,
    /// The kernel key (trailing `+` trimmed).
    pub kernel_version: String,
    /// The kernel with characters outside `[A-Za-z0-9._-]` replaced by `_`.
    pub kernel_normalized_version: String,
    /// The kmod image, templates substituted.
    pub container_image: String,
    /// Registry TLS settings of the kmod image.
    #[serde(rename = "registryTLS")]
    pub registry_tls: TlsOptions,
    /// The merged build, with KMM's build-arg overrides applied.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub build: Option<Build>,
    /// The merged sign settings, kernel templates substituted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sign: Option<Sign>,
    /// In-tree modules to remove before loading (None: nothing to remove).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub in_tree_modules_to_remove: Option<Vec<String>>,
    /// How modprobe is run.
    pub modprobe: ModprobeSpec,
    /// The Module's version, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module_version: Option<String>,
    /// Pull policy of the kmod image.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
}

/// The kernel key of a node: its kernel version with one trailing `+` trimmed.
pub fn kernel_key(node_kernel: &str) -> &str {
    node_kernel.strip_suffix('+').unwrap_or(node_kernel)
}

/// Upstream's `NormalizeVersion`: every character outside `[A-Za-z0-9._-]` becomes `_`.
pub fn normalize_kernel(kernel: &str) -> String {
    kernel
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// Upstream's `DNSSafeKernelVersion`: normalized, lowercased, `_` and `.` turned into `-`, `-` trimmed at both ends.
pub fn dns_safe_kernel(kernel: &str) -> String {
    normalize_kernel(kernel)
        .to_lowercase()
        .replace(['_', '.'], "-")
        .trim_matches('-')
        .to_owned()
}

/// The kernel split on `[.,-]`, as upstream's `KernelRegexp.Split`.
pub fn kernel_fields(kernel: &str) -> Vec<&str> {
    kernel.split(['.', ',', '-']).collect()
}

/// The kernel template variables of a (normalized) kernel.
pub fn kernel_variables(normalized: &str) -> Result<BTreeMap<&'static str, String>, MappingError> {
    let fields = kernel_fields(normalized);
    let [x, y, z, ..] = fields[..] else {
        return Err(MappingError::InvalidKernel {
            kernel: normalized.to_owned(),
        });
    };
    Ok(BTreeMap::from([
        ("KERNEL_FULL_VERSION", normalized.to_owned()),
        ("KERNEL_VERSION", normalized.to_owned()),
        ("KERNEL_XYZ", format!("{x}.{y}.{z}")),
        ("KERNEL_X", x.to_owned()),
        ("KERNEL_Y", y.to_owned()),
        ("KERNEL_Z", z.to_owned()),
    ]))
}

/// Compiles a regexp with Go RE2 semantics: Perl classes (`\d`, `\w`, `\s`) and word boundaries are ASCII-only in
/// Go, while the `regex` crate makes them Unicode-aware; they are rewritten to their ASCII forms. Go's `\Q...\E`
/// literal quoting is supported too.
///
/// Compiled patterns are cached (admission and mapping see the same few patterns on every request); the cache is
/// bounded and emptied when full.
pub fn compile_go_regexp(pattern: &str) -> Result<Arc<Regex>, regex::Error> {
    const MAX_CACHED: usize = 1024;
    // Compiled patterns are shared, not cloned: cloning a Regex allocates its cache pool.
    static CACHE: LazyLock<RwLock<HashMap<String, Arc<Regex>>>> = LazyLock::new(Default::default);
    if let Ok(cache) = CACHE.read()
        && let Some(re) = cache.get(pattern)
    {
        return Ok(Arc::clone(re));
    }
    let re = Arc::new(Regex::new(&asciify_perl_classes(pattern))?);
    if let Ok(mut cache) = CACHE.write() {
        if cache.len() >= MAX_CACHED {
            cache.clear();
        }
        cache.insert(pattern.to_owned(), Arc::clone(&re));
    }
    Ok(re)
}

fn asciify_perl_classes(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len() + 16);
    let mut chars = pattern.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('d') => out.push_str("[0-9]"),
            Some('D') => out.push_str("[^0-9]"),
            Some('w') => out.push_str("[0-9A-Za-z_]"),
            Some('W') => out.push_str("[^0-9A-Za-z_]"),
            Some('s') => out.push_str(r"[\t\n\f\r ]"),
            Some('S') => out.push_str(r"[^\t\n\f\r ]"),
            Some('b') => out.push_str(r"(?-u:\b)"),
            Some('B') => out.push_str(r"(?-u:\B)"),
            // Go's literal quoting `\Q...\E`, which the regex crate lacks: escape the quoted text.
            Some('Q') => {
                let rest: String = chars.by_ref().collect();
                let (quoted, after) = rest.split_once(r"\E").unwrap_or((rest.as_str(), ""));
                out.push_str(&regex::escape(quoted));
                out.push_str(&asciify_perl_classes(after));
                break;
            }
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    out
}

/// Finds the first mapping matching the kernel key.
pub fn find_mapping<'a>(
    mappings: &'a [KernelMapping],
    kernel: &str,
) -> Result<(usize, &'a KernelMapping), MappingError> {
    for (index, m) in mappings.iter().enumerate() {
        if let Some(literal) = m.literal.as_deref()
            && !literal.is_empty()
            && literal == kernel
        {
            return Ok((index, m));
        }
        let Some(regexp) = m.regexp.as_deref().filter(|r| !r.is_empty()) else {
            continue;
        };
        let re = compile_go_regexp(regexp).map_err(|e| MappingError::InvalidRegexp {
            index,
            regexp: regexp.to_owned(),
            kernel: kernel.to_owned(),
            reason: e.to_string(),
        })?;
        if re.is_match(kernel) {
            return Ok((index, m));
        }
    }
    Err(MappingError::NotFound {
        kernel: kernel.to_owned(),
    })
}

/// Resolves everything that applies to a node kernel for a Module, as upstream's `GetModuleLoaderDataForKernel`.
///
/// `node_kernel` may carry a trailing `+`; it is trimmed first.
pub fn resolve(module: &Module, node_kernel: &str) -> Result<ResolvedMapping, MappingError> {
    let loader = module
        .spec
        .module_loader
        .as_ref()
        .ok_or(MappingError::NoModuleLoader)?;
    let container = &loader.container;
    let kernel = kernel_key(node_kernel);
    let (mapping_index, mapping) = find_mapping(&container.kernel_mappings, kernel)?;
    let normalized = normalize_kernel(kernel);
    let kernel_vars = kernel_variables(&normalized)?;

    let build = merge_build(container.build.as_deref(), mapping.build.as_deref()).map(|b| {
        with_build_arg_overrides(
            b,
            kernel,
            module.name_or_empty(),
            module.namespace_or_empty(),
        )
    });
    let sign = merge_sign(container.sign.as_deref(), mapping.sign.as_deref())
        .map(|s| substitute_sign(s, &kernel_vars))
        .transpose()?;

    let registry_tls = mapping.registry_tls.unwrap_or(container.registry_tls);
    let image_template = if mapping.container_image.is_empty() {
        container.container_image.clone().unwrap_or_default()
    } else {
        mapping.container_image.clone()
    };
    let mut image_vars = kernel_vars.clone();
    image_vars.insert("MOD_NAME", module.name_or_empty().to_owned());
    image_vars.insert("MOD_NAMESPACE", module.namespace_or_empty().to_owned());
    let container_image =
        envsubst(&image_template, |name| image_vars.get(name).cloned()).map_err(|source| {
            MappingError::Template {
                field: "containerImage".to_owned(),
                source,
            }
        })?;

    let mut in_tree = container.in_tree_modules_to_remove.clone();
    if mapping.in_tree_modules_to_remove.is_some() {
        in_tree = mapping.in_tree_modules_to_remove.clone();
    }
    let single = mapping
        .in_tree_module_to_remove
        .as_deref()
        .filter(|s| !s.is_empty())
        .or(container
            .in_tree_module_to_remove
            .as_deref()
            .filter(|s| !s.is_empty()));
    if let Some(single) = single {
        in_tree = Some(vec![single.to_owned()]);
    }

    Ok(ResolvedMapping {
        mapping_index,
        kernel_version: kernel.to_owned(),
        kernel_normalized_version: normalized,
        container_image,
        registry_tls,
        build,
        sign,
        in_tree_modules_to_remove: in_tree,
        modprobe: container.modprobe.clone(),
        module_version: container.version.clone().filter(|v| !v.is_empty()),
        image_pull_policy: container.image_pull_policy.clone(),
    })
}

/// Upstream's `getRelevantBuild`: the mapping wins for the Dockerfile, build args are overridden by name, secrets are
/// appended, everything else comes from the container level.
pub fn merge_build(container: Option<&Build>, mapping: Option<&Build>) -> Option<Build> {
    match (container, mapping) {
        (None, None) => None,
        (None, Some(m)) => Some(m.clone()),
        (Some(c), None) => Some(c.clone()),
        (Some(c), Some(m)) => {
            let mut merged = c.clone();
            merged.dockerfile_config_map = m.dockerfile_config_map.clone();
            merged.build_args = Some(apply_build_arg_overrides(
                c.build_args.clone().unwrap_or_default(),
                m.build_args.as_deref().unwrap_or_default(),
            ));
            let mut secrets = c.secrets.clone().unwrap_or_default();
            secrets.extend(m.secrets.iter().flatten().cloned());
            merged.secrets = (c.secrets.is_some() || m.secrets.is_some()).then_some(secrets);
            Some(merged)
        }
    }
}

/// Upstream's `ApplyBuildArgOverrides`: args with an overridden name are replaced in place; overrides of names not
/// present are appended in sorted name order.
pub fn apply_build_arg_overrides(mut args: Vec<BuildArg>, overrides: &[BuildArg]) -> Vec<BuildArg> {
    let by_name: BTreeMap<&str, &BuildArg> =
        overrides.iter().map(|o| (o.name.as_str(), o)).collect();
    let mut unused: BTreeSet<&str> = by_name.keys().copied().collect();
    for arg in &mut args {
        if let Some(o) = by_name.get(arg.name.as_str()) {
            *arg = (*o).clone();
            unused.remove(o.name.as_str());
        }
    }
    args.extend(
        unused
            .into_iter()
            .filter_map(|name| by_name.get(name).map(|o| (*o).clone())),
    );
    args
}

/// KMM's build args: `KERNEL_VERSION` and `KERNEL_FULL_VERSION` (the raw kernel), `MOD_NAME`, `MOD_NAMESPACE`,
/// replacing any user value of the same name.
pub fn with_build_arg_overrides(
    mut build: Build,
    kernel: &str,
    name: &str,
    namespace: &str,
) -> Build {
    let overrides = [
        ("KERNEL_VERSION", kernel),
        ("KERNEL_FULL_VERSION", kernel),
        ("MOD_NAME", name),
        ("MOD_NAMESPACE", namespace),
    ]
    .map(|(n, v)| BuildArg {
        name: n.to_owned(),
        value: v.to_owned(),
    });
    build.build_args = Some(apply_build_arg_overrides(
        build.build_args.take().unwrap_or_default(),
        &overrides,
    ));
    build
}

/// Upstream's `getRelevantSign`: the mapping wins for unsignedImage (when non-empty) and the secrets; filesToSign is
/// the container's followed by the mapping's.
pub fn merge_sign(container: Option<&Sign>, mapping: Option<&Sign>) -> Option<Sign> {
    match (container, mapping) {
        (None, None) => None,
        (None, Some(m)) => Some(m.clone()),
        (Some(c), None) => Some(c.clone()),
        (Some(c), Some(m)) => {
            let mut merged = c.clone();
            if let Some(u) = m.unsigned_image.as_deref().filter(|u| !u.is_empty()) {
                merged.unsigned_image = Some(u.to_owned());
            }
            merged.key_secret = m.key_secret.clone();
            merged.cert_secret = m.cert_secret.clone();
            let mut files = c.files_to_sign.clone().unwrap_or_default();
            files.extend(m.files_to_sign.iter().flatten().cloned());
            merged.files_to_sign =
                (c.files_to_sign.is_some() || m.files_to_sign.is_some()).then_some(files);
            Some(merged)
        }
    }
}

fn substitute_sign(
    mut sign: Sign,
    vars: &BTreeMap<&'static str, String>,
) -> Result<Sign, MappingError> {
    let lookup = |name: &str| vars.get(name).cloned();
    if let Some(u) = &sign.unsigned_image {
        sign.unsigned_image =
            Some(
                envsubst(u, lookup).map_err(|source| MappingError::Template {
                    field: "sign.unsignedImage".to_owned(),
                    source,
                })?,
            );
    }
    if let Some(files) = &mut sign.files_to_sign {
        for (i, f) in files.iter_mut().enumerate() {
            *f = envsubst(f, lookup).map_err(|source| MappingError::Template {
                field: format!("sign.filesToSign[{i}]"),
                source,
            })?;
        }
    }
    Ok(sign)
}

#[cfg(test)]
mod tests;
