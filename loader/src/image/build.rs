//! `image build`: build an out-of-tree module against kernel headers (`make -C <headers> M=<copy> modules`),
//! generate `modules.dep` the way depmod does from the modules' `.modinfo` `depends=` (all dependencies,
//! transitively, in reverse load order), optionally sign, and push a one-layer kmod image with the layout
//! `<dir>/lib/modules/<kernel>/{*.ko,modules.dep}` — no container engine involved.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use super::manifest::{Descriptor, Manifest, OCI_CONFIG, OCI_MANIFEST, Platform};
use super::push::{
    LayerFile, PushError, build_layer, layer_descriptor, now_secs, push_image, rfc3339,
};
use super::reference::{Digest, RegistryRef};
use super::registry::{Registry, RegistryError, RegistryOptions};
use super::signing::{SignImageError, load_signer};
use crate::modinfo::{self, ModinfoError};

/// Errors from `image build`.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("failed to read the kernel release from {path} (pass --kernel-version)")]
    ReadKernelRelease {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to copy the module source {path}")]
    CopySource {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to run make in {path}")]
    RunMake {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to build the module ({status}): {output}")]
    Make { status: String, output: String },
    #[error("failed to read the build directory {path}")]
    ReadBuildDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to find any .ko after building {path}")]
    FindModules { path: PathBuf },
    #[error("failed to read the .modinfo of {path}")]
    ReadModinfo {
        path: PathBuf,
        #[source]
        source: ModinfoError,
    },
    #[error("failed to prepare signing")]
    Signer(#[source] Box<SignImageError>),
    #[error("failed to sign {path}")]
    SignModule {
        path: PathBuf,
        #[source]
        source: crate::sign::SignError,
    },
    #[error("failed to write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("failed to connect to the registry")]
    Registry(#[source] Box<RegistryError>),
    #[error("failed to push the built image")]
    Push(#[from] PushError),
}

/// What to build.
#[derive(Clone, Debug)]
pub struct BuildRequest {
    pub headers: PathBuf,
    pub source: PathBuf,
    pub to: RegistryRef,
    /// Default: `<headers>/include/config/kernel.release`.
    pub kernel: Option<String>,
    /// `(key, cert)` to sign the modules with.
    pub sign: Option<(PathBuf, PathBuf)>,
    pub dir_name: String,
}

/// The outcome of a build.
#[derive(Clone, Debug)]
pub struct Built {
    pub digest: Digest,
    pub kernel: String,
    /// Module file names, sorted.
    pub modules: Vec<String>,
    pub modules_dep: String,
}

/// `modules.dep` for modules given as (file name, module name, depends). Dependencies that are not among
/// them (in-tree modules on the node) are left out.
pub fn modules_dep(mods: &[(String, String, Vec<String>)]) -> String {
    let norm = |s: &str| s.replace('-', "_");
    let by_name: BTreeMap<String, (&String, &Vec<String>)> =
        mods.iter().map(|(f, n, d)| (norm(n), (f, d))).collect();
    let mut out = String::new();
    let mut sorted: Vec<_> = mods.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (file, name, _) in sorted {
        // Depth-first post-order gives the load order of the dependencies; depmod prints it reversed.
        let mut order: Vec<String> = Vec::new();
        let mut seen: HashSet<String> = HashSet::new();
        seen.insert(norm(name));
        let mut stack: Vec<(String, usize)> = vec![(norm(name), 0)];
        while let Some((n, i)) = stack.pop() {
            let deps = by_name
                .get(&n)
                .map(|(_, d)| d.as_slice())
                .unwrap_or_default();
            if let Some(d) = deps.get(i) {
                stack.push((n, i + 1));
                let d = norm(d);
                if by_name.contains_key(&d) && seen.insert(d.clone()) {
                    stack.push((d, 0));
                }
            } else if n != norm(name)
                && let Some((f, _)) = by_name.get(&n)
            {
                order.push((*f).clone());
            }
        }
        order.reverse();
        out.push_str(file);
        out.push(':');
        for f in order {
            out.push(' ');
            out.push_str(&f);
        }
        out.push('\n');
    }
    out
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), BuildError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| BuildError::CopySource { path, source }
    };
    std::fs::create_dir_all(to).map_err(err(to))?;
    for e in std::fs::read_dir(from).map_err(err(from))? {
        let e = e.map_err(err(from))?;
        let ft = e.file_type().map_err(err(&e.path()))?;
        let dest = to.join(e.file_name());
        if ft.is_dir() {
            copy_tree(&e.path(), &dest)?;
        } else if ft.is_file() {
            std::fs::copy(e.path(), &dest).map_err(err(&e.path()))?;
        }
    }
    Ok(())
}

fn find_ko(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), BuildError> {
    let err = |source| BuildError::ReadBuildDir {
        path: dir.to_owned(),
        source,
    };
    for e in std::fs::read_dir(dir).map_err(err)? {
        let p = e.map_err(err)?.path();
        if p.is_dir() {
            find_ko(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "ko") {
            out.push(p);
        }
    }
    Ok(())
}

/// Builds, packages and pushes.
pub async fn build_image(req: &BuildRequest, opts: &RegistryOptions) -> Result<Built, BuildError> {
    let signer = match &req.sign {
        Some((k, c)) => Some(load_signer(k, c).map_err(|e| BuildError::Signer(Box::new(e)))?),
        None => None,
    };
    let work = tempfile::Builder::new()
        .prefix("kmm-image-build-")
        .tempdir()
        .map_err(|source| BuildError::CopySource {
            path: std::env::temp_dir(),
            source,
        })?;
    let src = work.path().join("src");
    copy_tree(&req.source, &src)?;
    let headers = req.headers.clone();
    let src2 = src.clone();
    let output = tokio::process::Command::new("make")
        .arg("-C")
        .arg(&headers)
        .arg(format!("M={}", src2.display()))
        .arg("modules")
        .output()
        .await
        .map_err(|source| BuildError::RunMake {
            path: src.clone(),
            source,
        })?;
    if !output.status.success() {
        let mut text = String::from_utf8_lossy(&output.stderr).into_owned();
        text.push_str(&String::from_utf8_lossy(&output.stdout));
        let tail: Vec<&str> = text.lines().rev().take(20).collect();
        return Err(BuildError::Make {
            status: output.status.to_string(),
            output: tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
        });
    }
    let mut kos = Vec::new();
    find_ko(&src, &mut kos)?;
    if kos.is_empty() {
        return Err(BuildError::FindModules {
            path: req.source.clone(),
        });
    }
    kos.sort();
    let mut mods = Vec::new();
    let mut vermagic_release = None;
    for p in &kos {
        let (_, info) = modinfo::read_modinfo(p).map_err(|source| BuildError::ReadModinfo {
            path: p.clone(),
            source,
        })?;
        let file = p
            .file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default();
        let name = info
            .name()
            .unwrap_or_else(|| file.trim_end_matches(".ko").to_owned());
        if vermagic_release.is_none() {
            vermagic_release = info
                .vermagic()
                .and_then(|v| v.split_whitespace().next().map(str::to_owned));
        }
        mods.push((file, name, info.depends()));
    }
    if let Some(s) = &signer {
        for p in &kos {
            s.sign_file(p, p).map_err(|source| BuildError::SignModule {
                path: p.clone(),
                source,
            })?;
        }
    }
    // The kernel the modules were built for is the first word of their vermagic (Debian's headers carry the
    // upstream version in include/config/kernel.release, not the uname -r release).
    let kernel = match (&req.kernel, vermagic_release) {
        (Some(k), _) => k.clone(),
        (None, Some(v)) => v,
        (None, None) => {
            let path = req.headers.join("include/config/kernel.release");
            std::fs::read_to_string(&path)
                .map_err(|source| BuildError::ReadKernelRelease { path, source })?
                .trim()
                .to_owned()
        }
    };
    let dep = modules_dep(&mods);
    let dep_path = work.path().join("modules.dep");
    std::fs::write(&dep_path, &dep).map_err(|source| BuildError::Write {
        path: dep_path.clone(),
        source,
    })?;
    let base = format!(
        "{}/lib/modules/{kernel}",
        req.dir_name.trim_end_matches('/')
    );
    let mut files: Vec<LayerFile> = kos
        .iter()
        .zip(&mods)
        .map(|(p, (f, _, _))| LayerFile {
            image_path: format!("{base}/{f}"),
            local: p.clone(),
        })
        .collect();
    files.push(LayerFile {
        image_path: format!("{base}/modules.dep"),
        local: dep_path,
    });
    let created = now_secs();
    let layer = build_layer(&files, created)?;
    let platform = Platform::node();
    let config = serde_json::json!({
        "created": rfc3339(created),
        "architecture": platform.architecture,
        "os": platform.os,
        "config": {"Labels": {"io.kmm-rs.kernel-version": kernel}},
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id.to_string()]},
        "history": [{"created": rfc3339(created), "created_by": format!("kmm-loader image build (make -C {} M=... modules{})", req.headers.display(), if signer.is_some() { ", signed" } else { "" })}],
    });
    let config = serde_json::to_vec(&config).unwrap_or_default();
    let manifest = Manifest {
        schema_version: 2,
        media_type: Some(OCI_MANIFEST.to_owned()),
        config: Descriptor {
            media_type: OCI_CONFIG.to_owned(),
            digest: Digest::of(&config).to_string(),
            size: config.len() as u64,
            platform: None,
            annotations: None,
        },
        layers: vec![layer_descriptor(&layer, super::manifest::OCI_LAYER_GZIP)],
        annotations: None,
    };
    let reg = Registry::new(opts).map_err(|e| BuildError::Registry(Box::new(e)))?;
    let digest = push_image(&reg, &req.to, None, &manifest, &[layer], &config).await?;
    let mut modules: Vec<String> = mods.into_iter().map(|(f, _, _)| f).collect();
    modules.sort();
    Ok(Built {
        digest,
        kernel,
        modules,
        modules_dep: dep,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn modules_dep_like_depmod() {
        let m = |f: &str, n: &str, d: &[&str]| {
            (
                f.to_owned(),
                n.to_owned(),
                d.iter().map(|s| s.to_string()).collect(),
            )
        };
        let mods = vec![
            m("a.ko", "a", &["b", "c", "drm"]),
            m("b.ko", "b", &["c"]),
            m("c.ko", "c", &[]),
            m("d-x.ko", "d_x", &["a"]),
        ];
        assert_eq!(
            modules_dep(&mods),
            "a.ko: b.ko c.ko\nb.ko: c.ko\nc.ko:\nd-x.ko: a.ko b.ko c.ko\n"
        );
    }
}
