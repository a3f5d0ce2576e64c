//! modprobe semantics over `finit_module`/`init_module`/`delete_module`.
//!
//! Work is split in two: a *plan* (pure apart from reading files: dependency order, already-loaded and built-in
//! modules skipped, vermagic checked against the running kernel, signatures verified in user space) and its
//! *execution* (the syscalls, firmware copy and `firmware_class.path`). Plans are unit-tested on temporary trees;
//! execution only ever runs inside a test VM or on a node.

pub mod deps;
mod remove;
pub mod softdep;
pub mod sysfs;

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use thiserror::Error;

pub use deps::{ModuleIndex, softdep_conf};
pub use softdep::{Builtins, Probe, SoftdepLine, parse_softdep_file, probe_list};
pub use sysfs::{HostPaths, ModuleState, normalize};

use crate::keys::{self, TrustStore};
use crate::modinfo;
use crate::signature;

/// Errors of loading and unloading.
#[derive(Debug, Error)]
pub enum ModprobeError {
    #[error("failed to resolve modules")]
    Resolve(#[from] deps::DepsError),
    #[error("failed to read module {module}")]
    ReadModule {
        module: String,
        #[source]
        source: modinfo::ModinfoError,
    },
    #[error("failed to load certificates for --require-signature")]
    LoadCertificates(#[source] keys::KeyError),
    #[error("refusing to load {module} ({path}): signature verification failed: {reason}")]
    VerifySignature {
        module: String,
        path: PathBuf,
        reason: signature::SignatureError,
    },
    #[error(
        "refusing to load {module}: vermagic '{vermagic}' does not match the running kernel {running}"
    )]
    CheckVermagic {
        module: String,
        vermagic: String,
        running: String,
    },
    #[error("failed to load {module}: {reason}")]
    LoadModule { module: String, reason: String },
    #[error("failed to unload {module}: {reason}")]
    UnloadModule { module: String, reason: String },
    #[error("refusing to unload {module}: it is in use (refcount {refcnt}, holders [{holders}])")]
    UnloadInUse {
        module: String,
        refcnt: i64,
        holders: String,
    },
    #[error("failed to copy firmware from {from} to {to}")]
    CopyFirmware {
        from: PathBuf,
        to: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to set firmware search path {path}")]
    SetFirmwarePath {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to build module parameters: {0}")]
    BuildParams(String),
    #[error("timed out after {timeout:?} waiting for module {module}{}", version.as_ref().map(|v| format!(" version {v}")).unwrap_or_default())]
    WaitModule {
        module: String,
        version: Option<String>,
        timeout: Duration,
    },
}

/// What `kmm-loader load` was asked to do.
#[derive(Debug, Clone, Default)]
pub struct LoadRequest {
    pub dir: PathBuf,
    pub kernel_version: Option<String>,
    pub params: Vec<String>,
    pub order: Vec<String>,
    pub remove_in_tree: Vec<String>,
    /// (copy from, host directory to copy to and to set as `firmware_class.path`).
    pub firmware: Option<(PathBuf, PathBuf)>,
    pub require_signature: Vec<PathBuf>,
    pub module: String,
}

/// One step of a load or unload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Unload a module (its state was checked: loaded and not in use). `required`: the module was asked for;
    /// otherwise it is a dependency or softdep that became unused, and a failure is not fatal.
    Unload {
        module: String,
        required: bool,
    },
    CopyFirmware {
        from: PathBuf,
        to: PathBuf,
    },
    /// Write `value` to the (host-root resolved) firmware_class path file.
    SetFirmwarePath {
        file: PathBuf,
        value: String,
    },
    /// Load from the file with `finit_module` (uncompressed, unverified). `required`: the requested module or
    /// one of its dependencies; otherwise only a softdep, whose failure is skipped like modprobe does.
    LoadFile {
        module: String,
        path: PathBuf,
        params: String,
        required: bool,
    },
    /// Load these exact bytes with `init_module` (decompressed, or verified in user space).
    LoadImage {
        module: String,
        path: PathBuf,
        image: Vec<u8>,
        params: String,
        required: bool,
    },
    Skip {
        module: String,
        reason: String,
    },
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::Unload { module, .. } => write!(f, "unload {module}"),
            Action::CopyFirmware { from, to } => {
                write!(f, "copy firmware {} -> {}", from.display(), to.display())
            }
            Action::SetFirmwarePath { value, .. } => write!(f, "set firmware_class.path {value}"),
            Action::LoadFile {
                module,
                path,
                params,
                required,
            }
            | Action::LoadImage {
                module,
                path,
                params,
                required,
                ..
            } => {
                write!(f, "load {module} ({})", path.display())?;
                if !params.is_empty() {
                    write!(f, " {params}")?;
                }
                if !required {
                    write!(f, " [softdep]")?;
                }
                Ok(())
            }
            Action::Skip { module, reason } => write!(f, "skip {module}: {reason}"),
        }
    }
}

/// The running kernel release (`uname -r`).
pub fn running_kernel() -> String {
    rustix::system::uname()
        .release()
        .to_string_lossy()
        .into_owned()
}

/// Joins `k=v` parameters for the kernel, quoting values that contain spaces.
pub fn build_params(params: &[String]) -> Result<String, ModprobeError> {
    let mut out = Vec::new();
    for p in params {
        if p.contains('\0') || p.contains('"') && p.contains(' ') {
            return Err(ModprobeError::BuildParams(format!("cannot pass '{p}'")));
        }
        match p.split_once('=') {
            Some((k, v)) if v.contains(char::is_whitespace) && !v.starts_with('"') => {
                out.push(format!("{k}=\"{v}\""))
            }
            _ => out.push(p.clone()),
        }
    }
    Ok(out.join(" "))
}

/// Checks the first word of `vermagic` against the running release.
pub fn check_vermagic(
    module: &str,
    vermagic: Option<&str>,
    running: &str,
) -> Result<(), ModprobeError> {
    let vm = vermagic.unwrap_or("");
    if vm.split_whitespace().next() == Some(running) {
        Ok(())
    } else {
        Err(ModprobeError::CheckVermagic {
            module: module.to_string(),
            vermagic: vm.trim().to_string(),
            running: running.to_string(),
        })
    }
}

/// Plans a load: in-tree removals (like `modprobe -r`, unused dependencies included), firmware, then the
/// module's probe list: dependencies first, softdeps (the modules' own and `--order`'s) around them.
pub fn plan_load(
    host: &HostPaths,
    req: &LoadRequest,
    running: &str,
) -> Result<Vec<Action>, ModprobeError> {
    let kernel = req
        .kernel_version
        .clone()
        .unwrap_or_else(|| running.to_string());
    let mut builtins = Builtins::load(host, &kernel);
    let tree = req.dir.join("lib/modules").join(&kernel);
    let mut index = ModuleIndex::build(&[tree, host.lib_modules(&kernel)])?;

    // In-tree removal resolves against the host's tree only, as upstream's `modprobe -rv` (no -d) does, with
    // the softdep.conf of --order that the load pod mounts in /etc/modprobe.d.
    let order = parse_softdep_file(&softdep_conf(&req.order));
    let (removed, mut actions) = if req.remove_in_tree.is_empty() {
        (Vec::new(), Vec::new())
    } else {
        let mut host_index = ModuleIndex::build(&[host.lib_modules(&kernel)])?;
        let mut remover = remove::Remover::new(host, &mut host_index, &mut builtins);
        remover.extra = order.clone();
        for m in &req.remove_in_tree {
            remover.remove(m, true, "in-tree module not loaded")?;
        }
        (remover.removed, remover.actions)
    };

    if let Some((from, to)) = &req.firmware {
        actions.push(Action::CopyFirmware {
            from: from.clone(),
            to: host.resolve(to),
        });
        let file = host.firmware_class_path();
        let current = std::fs::read_to_string(&file).unwrap_or_default();
        let value = to.display().to_string();
        if current.trim() != value {
            actions.push(Action::SetFirmwarePath { file, value });
        }
    }

    let store = if req.require_signature.is_empty() {
        None
    } else {
        Some(TrustStore::load(&req.require_signature).map_err(ModprobeError::LoadCertificates)?)
    };
    let target = normalize(&req.module);
    let params = build_params(&req.params)?;
    for line in &order {
        if let Ok(Some(own)) = index.softdep(&line.pattern, &[]) {
            tracing::warn!(
                module = %line.pattern,
                own = %softdep::describe(&own),
                "the module's own softdep takes precedence over --order (modprobe reads modules.softdep first)"
            );
        }
    }
    if !removed.contains(&target)
        && matches!(
            host.module_state(&target, &builtins.names),
            ModuleState::Loaded { .. }
        )
    {
        // kmod_module_probe_insert_module returns at once when the module is loaded: nothing else is loaded,
        // not even its softdeps.
        actions.push(Action::Skip {
            module: target,
            reason: "already loaded".into(),
        });
        return Ok(actions);
    }
    if !index.contains(&target) && builtins.names.contains(&target) {
        // modprobe of a built-in module succeeds without doing anything.
        actions.push(Action::Skip {
            module: target,
            reason: "built into the kernel".into(),
        });
        return Ok(actions);
    }
    let probes = probe_list(&mut index, &order, &mut builtins, &target)?;
    let mut planned: Vec<String> = Vec::new();
    for probe in probes {
        let (m, required) = match probe {
            Probe::Unresolved { name, reason } => {
                actions.push(Action::Skip {
                    module: name,
                    reason,
                });
                continue;
            }
            Probe::Builtin { module } => {
                actions.push(Action::Skip {
                    module,
                    reason: "built into the kernel".into(),
                });
                continue;
            }
            Probe::Module { module, required } => (module, required),
        };
        if planned.contains(&m) {
            continue;
        }
        planned.push(m.clone());
        // Modules removed above will be loaded again from the image.
        let state = if removed.contains(&m) {
            ModuleState::NotLoaded
        } else {
            host.module_state(&m, &builtins.names)
        };
        match state {
            ModuleState::Builtin => {
                actions.push(Action::Skip {
                    module: m,
                    reason: "built into the kernel".into(),
                });
                continue;
            }
            ModuleState::Loaded { .. } => {
                actions.push(Action::Skip {
                    module: m,
                    reason: "already loaded".into(),
                });
                continue;
            }
            ModuleState::NotLoaded => {}
        }
        let module_params = if m == target {
            params.clone()
        } else {
            String::new()
        };
        match plan_one(&index, store.as_ref(), &m, module_params, required, running) {
            Ok(action) => actions.push(action),
            Err(e) if !required => {
                tracing::warn!(module = %m, error = %e, "softdep skipped");
                actions.push(Action::Skip {
                    module: m,
                    reason: format!("softdep not loaded: {e}"),
                });
            }
            Err(e) => return Err(e),
        }
    }
    Ok(actions)
}

/// The load action of one module: read, vermagic checked, signature verified when required.
fn plan_one(
    index: &ModuleIndex,
    store: Option<&TrustStore>,
    m: &str,
    params: String,
    required: bool,
    running: &str,
) -> Result<Action, ModprobeError> {
    let path = index.path(m)?.to_path_buf();
    let (file, info) =
        modinfo::read_modinfo(&path).map_err(|source| ModprobeError::ReadModule {
            module: m.to_string(),
            source,
        })?;
    check_vermagic(m, info.vermagic().as_deref(), running)?;
    if let Some(store) = store {
        signature::verify(&file.image, store).map_err(|reason| ModprobeError::VerifySignature {
            module: m.to_string(),
            path: path.clone(),
            reason,
        })?;
    }
    // The kernel (Debian: no CONFIG_MODULE_DECOMPRESS) cannot take compressed files, and verified bytes must be
    // the bytes loaded: both go through init_module with the image in memory.
    Ok(
        if store.is_some() || file.compression != crate::compress::Compression::None {
            Action::LoadImage {
                module: m.to_string(),
                path,
                image: file.image,
                params,
                required,
            }
        } else {
            Action::LoadFile {
                module: m.to_string(),
                path,
                params,
                required,
            }
        },
    )
}

/// Translates a `finit_module`/`init_module` errno into advice; `None` means success (EEXIST: already loaded).
pub fn explain_load_error(errno: rustix::io::Errno, running: &str) -> Option<String> {
    use rustix::io::Errno;
    Some(match errno {
        Errno::EXIST => return None,
        Errno::KEYREJECTED | Errno::NOKEY => {
            "the kernel rejected the module signature: enroll the signing certificate in the MOK list (mokutil --import)".to_string()
        }
        Errno::NOEXEC => format!("module format or vermagic does not match the running kernel {running}"),
        Errno::PERM => "operation not permitted: missing CAP_SYS_MODULE, or module loading is disabled (kernel.modules_disabled)".into(),
        Errno::NOENT => "unknown symbol in module or unknown parameter (see dmesg)".into(),
        Errno::INVAL => "invalid module or parameters (see dmesg)".into(),
        Errno::BUSY => "the module is busy being loaded or removed".into(),
        Errno::NOMEM => "out of memory".into(),
        e => format!("kernel error: {e}"),
    })
}

/// Translates a `delete_module` errno; `None` means the module was already gone.
pub fn explain_unload_error(errno: rustix::io::Errno) -> Option<String> {
    use rustix::io::Errno;
    Some(match errno {
        Errno::NOENT => return None,
        Errno::WOULDBLOCK | Errno::BUSY => "the module is in use".into(),
        Errno::PERM => "operation not permitted: missing CAP_SYS_MODULE".into(),
        e => format!("kernel error: {e}"),
    })
}

fn cstring(s: &str, module: &str) -> Result<CString, ModprobeError> {
    CString::new(s)
        .map_err(|_| ModprobeError::BuildParams(format!("NUL byte in '{s}' for {module}")))
}

fn copy_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// Executes planned actions; returns one human-readable line per action. A failing optional action (a softdep,
/// an unused dependency) is reported and skipped, like modprobe does.
pub fn execute(actions: Vec<Action>, running: &str) -> Result<Vec<String>, ModprobeError> {
    let mut report = Vec::new();
    for action in actions {
        let line = action.to_string();
        let (result, required) = match action {
            Action::Unload { module, required } => (delete(&module), required),
            Action::CopyFirmware { from, to } => (
                copy_dir(&from, &to).map_err(|source| ModprobeError::CopyFirmware {
                    from,
                    to,
                    source,
                }),
                true,
            ),
            Action::SetFirmwarePath { file, value } => (
                std::fs::write(&file, &value)
                    .map_err(|source| ModprobeError::SetFirmwarePath { path: file, source }),
                true,
            ),
            Action::LoadFile {
                module,
                path,
                params,
                required,
            } => (load_file(&module, &path, &params, running), required),
            Action::LoadImage {
                module,
                image,
                params,
                required,
                ..
            } => (
                cstring(&params, &module).and_then(|c| {
                    load_result(&module, rustix::system::init_module(&image, &c), running)
                }),
                required,
            ),
            Action::Skip { .. } => (Ok(()), true),
        };
        match result {
            Ok(()) => {
                tracing::info!("{line}");
                report.push(line);
            }
            Err(e) if !required => {
                tracing::warn!(error = %e, "{line}: failed, not fatal");
                report.push(format!("{line}: failed, not fatal: {e}"));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(report)
}

fn load_file(module: &str, path: &Path, params: &str, running: &str) -> Result<(), ModprobeError> {
    let c = cstring(params, module)?;
    let fd = std::fs::File::open(path).map_err(|e| ModprobeError::LoadModule {
        module: module.to_string(),
        reason: format!("open {}: {e}", path.display()),
    })?;
    load_result(module, rustix::system::finit_module(&fd, &c, 0), running)
}

fn load_result(
    module: &str,
    res: rustix::io::Result<()>,
    running: &str,
) -> Result<(), ModprobeError> {
    match res {
        Ok(()) => Ok(()),
        Err(e) => match explain_load_error(e, running) {
            None => Ok(()),
            Some(reason) => Err(ModprobeError::LoadModule {
                module: module.to_string(),
                reason,
            }),
        },
    }
}

fn delete(module: &str) -> Result<(), ModprobeError> {
    let c = cstring(module, module)?;
    let nonblock = rustix::fs::OFlags::NONBLOCK.bits() as std::ffi::c_int;
    match rustix::system::delete_module(&c, nonblock) {
        Ok(()) => Ok(()),
        Err(e) => match explain_unload_error(e) {
            None => Ok(()),
            Some(reason) => Err(ModprobeError::UnloadModule {
                module: module.to_string(),
                reason,
            }),
        },
    }
}

/// Plans then executes a load.
pub fn load(host: &HostPaths, req: &LoadRequest) -> Result<Vec<String>, ModprobeError> {
    let running = running_kernel();
    let actions = plan_load(host, req, &running)?;
    execute(actions, &running)
}

/// Plans an unload like `modprobe -r`: each target (the `--order` list, else the module) if loaded and unused,
/// then the dependencies left unused in reverse dependency order, with the modules' softdeps (see
/// [`remove`]). Never forces.
pub fn plan_unload(
    host: &HostPaths,
    dir: Option<&Path>,
    kernel: &str,
    order: &[String],
    module: &str,
) -> Result<Vec<Action>, ModprobeError> {
    let mut builtins = Builtins::load(host, kernel);
    let mut trees = Vec::new();
    if let Some(d) = dir {
        trees.push(d.join("lib/modules").join(kernel));
    }
    trees.push(host.lib_modules(kernel));
    let mut index = ModuleIndex::build(&trees)?;
    let targets: Vec<String> = if order.is_empty() {
        vec![normalize(module)]
    } else {
        order.iter().map(|m| normalize(m)).collect()
    };
    let mut remover = remove::Remover::new(host, &mut index, &mut builtins);
    for target in &targets {
        remover.remove(target, true, "not loaded")?;
    }
    Ok(remover.actions)
}

/// Plans then executes an unload.
pub fn unload(
    host: &HostPaths,
    dir: Option<&Path>,
    kernel: Option<&str>,
    order: &[String],
    module: &str,
) -> Result<Vec<String>, ModprobeError> {
    let running = running_kernel();
    let kernel = kernel.unwrap_or(&running);
    let actions = plan_unload(host, dir, kernel, order, module)?;
    execute(actions, &running)
}

/// Waits until `/sys/module/NAME` exists (with `version` when given).
pub fn wait(
    host: &HostPaths,
    module: &str,
    version: Option<&str>,
    timeout: Duration,
) -> Result<(), ModprobeError> {
    let start = Instant::now();
    loop {
        let dir = host.sys_module(module);
        if dir.is_dir() && version.is_none_or(|v| host.module_version(module).as_deref() == Some(v))
        {
            return Ok(());
        }
        if start.elapsed() >= timeout {
            return Err(ModprobeError::WaitModule {
                module: module.to_string(),
                version: version.map(str::to_string),
                timeout,
            });
        }
        std::thread::sleep(Duration::from_millis(100).min(timeout.saturating_sub(start.elapsed())));
    }
}

#[cfg(test)]
mod tests;
