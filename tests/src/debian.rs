//! Debian's kernel as a test fixture: fetched with `apt-get download`, unpacked with `dpkg -x`, never installed.
//!
//! [`Kernel::fetch`] resolves the version `linux-image-amd64` currently depends on (`linux-image-<abi>-amd64`,
//! signed by Debian's build-time key) and pins `linux-headers-<abi>-amd64`, `linux-headers-<abi>-common` and
//! `linux-kbuild-<x.y>` to that exact version (the archive also carries older kbuild versions). The `.deb` files are
//! cached in `<cache>/debs`, unpacked trees in `<cache>/debian/<pkg>_<version>/` (the image) and
//! `<cache>/debian/headers-<abi>-amd64_<version>/` (headers and kbuild in one root, because their symlinks are
//! relative to each other). Each tree is complete once its marker file exists.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::{cache, cmd};

/// Errors of fetching and unpacking Debian's kernel packages.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Cache(#[from] cache::Error),
    #[error(transparent)]
    Command(#[from] cmd::Error),
    #[error("failed to resolve the kernel linux-image-amd64 depends on: {reason}")]
    ResolveVersion { reason: String },
    #[error("failed to download {package}={version}: {reason}")]
    Download {
        package: String,
        version: String,
        reason: String,
    },
    #[error("failed to read {path}")]
    Read { path: PathBuf, source: io::Error },
    #[error("failed to write {path}")]
    Write { path: PathBuf, source: io::Error },
    #[error("failed to rewrite the include line of {path}: {reason}")]
    RewriteMakefile { path: PathBuf, reason: String },
    #[error("failed to find the xz payload in {path}")]
    FindXzPayload { path: PathBuf },
    #[error("failed to find {what} in {path}")]
    Missing { what: &'static str, path: PathBuf },
}

/// One Debian kernel version, unpacked in the cache.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// The ABI name, e.g. `6.1.0-56`.
    pub abi: String,
    /// The Debian package version, e.g. `6.1.192-2`.
    pub version: String,
    /// The kbuild series, e.g. `6.1`.
    pub kbuild: String,
    image_root: PathBuf,
    headers_root: PathBuf,
}

impl Kernel {
    /// Fetch (once per process, cached on disk) the kernel `linux-image-amd64` depends on.
    pub fn get() -> Result<&'static Kernel, Error> {
        static KERNEL: OnceLock<Kernel> = OnceLock::new();
        if let Some(k) = KERNEL.get() {
            return Ok(k);
        }
        let k = Kernel::fetch()?;
        Ok(KERNEL.get_or_init(|| k))
    }

    /// Resolve, download and unpack the image, headers and kbuild packages (idempotent).
    pub fn fetch() -> Result<Kernel, Error> {
        cmd::require("apt-get")?;
        cmd::require("dpkg")?;
        let (abi, version) = resolve()?;
        let kbuild = kbuild_series(&abi).ok_or_else(|| Error::ResolveVersion {
            reason: format!("unexpected ABI name {abi}"),
        })?;
        let debian = cache::subdir("debian")?;

        let image_pkg = format!("linux-image-{abi}-amd64");
        let image_root = debian.join(format!("{image_pkg}_{version}"));
        if !cache::is_complete(&image_root) {
            let deb = download(&image_pkg, &version)?;
            let tmp = cache::temp_sibling(&image_root);
            cache::remove_dir_all(&tmp)?;
            unpack(&deb, &tmp)?;
            cache::commit_dir(&tmp, &image_root)?;
        }

        let headers_root = debian.join(format!("headers-{abi}-amd64_{version}"));
        if !cache::is_complete(&headers_root) {
            let debs = [
                download(&format!("linux-headers-{abi}-amd64"), &version)?,
                download(&format!("linux-headers-{abi}-common"), &version)?,
                download(&format!("linux-kbuild-{kbuild}"), &version)?,
            ];
            let tmp = cache::temp_sibling(&headers_root);
            cache::remove_dir_all(&tmp)?;
            for deb in &debs {
                unpack(deb, &tmp)?;
            }
            rewrite_makefile(&tmp, &headers_root, &abi)?;
            cache::commit_dir(&tmp, &headers_root)?;
        }

        Ok(Kernel {
            abi,
            version,
            kbuild,
            image_root,
            headers_root,
        })
    }

    /// The kernel release (`uname -r` in the guest), e.g. `6.1.0-56-amd64`.
    pub fn release(&self) -> String {
        format!("{}-amd64", self.abi)
    }

    /// The root the image package was unpacked into (holds `boot/` and `lib/modules/`).
    pub fn image_root(&self) -> &Path {
        &self.image_root
    }

    /// The compressed kernel (`boot/vmlinuz-<release>`).
    pub fn vmlinuz(&self) -> PathBuf {
        self.image_root
            .join("boot")
            .join(format!("vmlinuz-{}", self.release()))
    }

    /// `lib/modules/<release>` of the image: Debian's signed modules (no modules.dep).
    pub fn modules_dir(&self) -> PathBuf {
        self.image_root.join("lib/modules").join(self.release())
    }

    /// The out-of-tree build directory (`make -C <this> M=... modules`).
    pub fn headers_dir(&self) -> PathBuf {
        self.headers_root
            .join("usr/src")
            .join(format!("linux-headers-{}", self.release()))
    }

    /// The kernel's `scripts/sign-file` from linux-kbuild.
    pub fn sign_file(&self) -> PathBuf {
        self.headers_root
            .join("usr/lib")
            .join(format!("linux-kbuild-{}", self.kbuild))
            .join("scripts/sign-file")
    }

    /// The decompressed ELF `vmlinux` (for qemu's fast PVH boot), extracted once and cached.
    pub fn vmlinux(&self) -> Result<PathBuf, Error> {
        let out =
            self.image_root
                .with_file_name(format!("vmlinux-{}_{}", self.release(), self.version));
        if out.is_file() {
            return Ok(out);
        }
        cmd::require("xz")?;
        let vmlinuz = self.vmlinuz();
        let bytes = fs::read(&vmlinuz).map_err(|source| Error::Read {
            path: vmlinuz.clone(),
            source,
        })?;
        let start = find(&bytes, b"\xfd7zXZ\x00").ok_or_else(|| Error::FindXzPayload {
            path: vmlinuz.clone(),
        })?;
        let payload = out.with_extension("xz.tmp");
        let payload = cache::temp_sibling(&payload);
        fs::write(&payload, &bytes[start..]).map_err(|source| Error::Write {
            path: payload.clone(),
            source,
        })?;
        let tmp = cache::temp_sibling(&out);
        let file = fs::File::create(&tmp).map_err(|source| Error::Write {
            path: tmp.clone(),
            source,
        })?;
        // The payload is followed by padding: --single-stream stops at the end of the first xz stream.
        let result = cmd::run(
            Command::new("xz")
                .args(["-dc", "--single-stream"])
                .arg(&payload)
                .stdout(file),
        );
        let _ = fs::remove_file(&payload);
        if let Err(e) = result {
            let _ = fs::remove_file(&tmp);
            return Err(e.into());
        }
        let head = fs::read(&tmp).map_err(|source| Error::Read {
            path: tmp.clone(),
            source,
        })?;
        if !head.starts_with(b"\x7fELF") {
            let _ = fs::remove_file(&tmp);
            return Err(Error::Missing {
                what: "an ELF image after the xz payload",
                path: vmlinuz,
            });
        }
        cache::commit_file(&tmp, &out)?;
        Ok(out)
    }

    /// Path of an in-tree module by its name (`udf`, `crc-itu-t` or `crc_itu_t`), searching the modules dir.
    pub fn find_module(&self, name: &str) -> Result<PathBuf, Error> {
        let want = name.replace('-', "_");
        let dir = self.modules_dir();
        let mut stack = vec![dir.join("kernel")];
        while let Some(d) = stack.pop() {
            let entries = fs::read_dir(&d).map_err(|source| Error::Read {
                path: d.clone(),
                source,
            })?;
            for entry in entries.flatten() {
                let path = entry.path();
                if path.is_dir() {
                    stack.push(path);
                } else if path
                    .file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_suffix(".ko"))
                    .is_some_and(|stem| stem.replace('-', "_") == want)
                {
                    return Ok(path);
                }
            }
        }
        Err(Error::Missing {
            what: "the module",
            path: dir.join(name),
        })
    }

    /// In-tree modules `names` and everything they depend on (per Debian kmod's `modinfo -F depends`), as
    /// (module name, path) in load order: dependencies first.
    pub fn module_closure(&self, names: &[&str]) -> Result<Vec<(String, PathBuf)>, Error> {
        let modinfo = cmd::require("modinfo")?;
        let mut order: Vec<(String, PathBuf)> = Vec::new();
        // Depth-first post-order; `visiting` guards against (invalid) cycles.
        fn visit(
            k: &Kernel,
            modinfo: &Path,
            name: &str,
            order: &mut Vec<(String, PathBuf)>,
            visiting: &mut Vec<String>,
        ) -> Result<(), Error> {
            let norm = name.replace('-', "_");
            if order.iter().any(|(n, _)| *n == norm) || visiting.contains(&norm) {
                return Ok(());
            }
            visiting.push(norm.clone());
            let path = k.find_module(name)?;
            let deps = cmd::stdout(Command::new(modinfo).args(["-F", "depends"]).arg(&path))?;
            for dep in deps.trim().split(',').filter(|d| !d.is_empty()) {
                visit(k, modinfo, dep, order, visiting)?;
            }
            order.push((norm, path));
            Ok(())
        }
        let mut visiting = Vec::new();
        for name in names {
            visit(self, &modinfo, name, &mut order, &mut visiting)?;
        }
        Ok(order)
    }
}

/// `6.1.0-56` -> `6.1`.
fn kbuild_series(abi: &str) -> Option<String> {
    let mut parts = abi.split(['.', '-']);
    let major = parts
        .next()
        .filter(|p| p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty())?;
    let minor = parts
        .next()
        .filter(|p| p.chars().all(|c| c.is_ascii_digit()) && !p.is_empty())?;
    Some(format!("{major}.{minor}"))
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Resolve (abi, version) of the image `linux-image-amd64`'s candidate depends on; `apt-get update` once if the
/// package lists do not know it.
fn resolve() -> Result<(String, String), Error> {
    match resolve_from_lists() {
        Ok(found) => Ok(found),
        Err(_) => {
            apt_update()?;
            resolve_from_lists()
        }
    }
}

fn resolve_from_lists() -> Result<(String, String), Error> {
    // One apt-cache call (each rebuilds the package cache on images that disable pkgcache.bin): the candidate
    // version only.
    let show = cmd::stdout(Command::new("apt-cache").args([
        "show",
        "--no-all-versions",
        "linux-image-amd64",
    ]))?;
    let depends = show
        .lines()
        .find_map(|l| l.strip_prefix("Depends:"))
        .ok_or_else(|| Error::ResolveVersion {
            reason: "apt-cache shows no candidate for linux-image-amd64".into(),
        })?;
    // "linux-image-6.1.0-56-amd64 (= 6.1.192-2)"
    for dep in depends.split(',') {
        let dep = dep.trim();
        let Some(rest) = dep.strip_prefix("linux-image-") else {
            continue;
        };
        let Some((name, constraint)) = rest.split_once(' ') else {
            continue;
        };
        let Some(abi) = name.strip_suffix("-amd64") else {
            continue;
        };
        let version = constraint
            .trim()
            .trim_start_matches("(=")
            .trim_end_matches(')')
            .trim();
        if !abi.is_empty() && !version.is_empty() && !abi.ends_with("-unsigned") {
            return Ok((abi.to_owned(), version.to_owned()));
        }
    }
    Err(Error::ResolveVersion {
        reason: format!("no linux-image-<abi>-amd64 (= version) in Depends: {depends}"),
    })
}

fn apt_update() -> Result<(), Error> {
    static UPDATED: OnceLock<()> = OnceLock::new();
    if UPDATED.get().is_none() {
        cmd::run(Command::new("apt-get").args(["update", "-q"]))?;
        let _ = UPDATED.set(());
    }
    Ok(())
}

/// Download `package=version` into `<cache>/debs` (unless present) and return the `.deb` path.
pub fn download(package: &str, version: &str) -> Result<PathBuf, Error> {
    let debs = cache::subdir("debs")?;
    let prefix = format!("{package}_{}_", version.replace(':', "%3a"));
    let cached = |debs: &Path| -> Option<PathBuf> {
        fs::read_dir(debs)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            })
    };
    if let Some(deb) = cached(&debs) {
        return Ok(deb);
    }
    let tmp = cache::temp_sibling(&debs.join(package));
    cache::create_dir_all(&tmp)?;
    let spec = format!("{package}={version}");
    let mut attempt = cmd::run(
        Command::new("apt-get")
            .args(["download", "-q", &spec])
            .current_dir(&tmp),
    );
    if attempt.is_err() {
        apt_update()?;
        attempt = cmd::run(
            Command::new("apt-get")
                .args(["download", "-q", &spec])
                .current_dir(&tmp),
        );
    }
    let result = attempt.map_err(|e| Error::Download {
        package: package.to_owned(),
        version: version.to_owned(),
        reason: e.to_string(),
    });
    let moved = result.and_then(|_| {
        let deb = cached(&tmp).ok_or_else(|| Error::Download {
            package: package.to_owned(),
            version: version.to_owned(),
            reason: format!(
                "apt-get download left no {prefix}*.deb in {}",
                tmp.display()
            ),
        })?;
        let name = deb.file_name().map(|n| n.to_owned()).unwrap_or_default();
        let target = debs.join(name);
        cache::commit_file(&deb, &target)?;
        Ok(target)
    });
    cache::remove_dir_all(&tmp)?;
    moved
}

/// `dpkg -x deb dir`.
fn unpack(deb: &Path, dir: &Path) -> Result<(), Error> {
    cache::create_dir_all(dir)?;
    cmd::run(Command::new("dpkg").arg("-x").arg(deb).arg(dir))?;
    Ok(())
}

/// The amd64 headers Makefile is one line, `include /usr/src/linux-headers-<abi>-common/Makefile`: point it at
/// the common headers in our root (`final_root`, where the tree will live once committed).
fn rewrite_makefile(tmp_root: &Path, final_root: &Path, abi: &str) -> Result<(), Error> {
    let path = tmp_root.join(format!("usr/src/linux-headers-{abi}-amd64/Makefile"));
    let text = fs::read_to_string(&path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    let needle = "include /usr/src/";
    if !text.contains(needle) {
        return Err(Error::RewriteMakefile {
            path,
            reason: format!("no `{needle}` line"),
        });
    }
    let replacement = format!("include {}/usr/src/", final_root.display());
    let rewritten = text.replace(needle, &replacement);
    fs::write(&path, rewritten).map_err(|source| Error::Write { path, source })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn kbuild_series_of_abi() {
        assert_eq!(kbuild_series("6.1.0-56").as_deref(), Some("6.1"));
        assert_eq!(kbuild_series("6.12.38+deb13").as_deref(), Some("6.12"));
        assert_eq!(kbuild_series("x"), None);
    }

    #[test]
    fn find_xz_magic() {
        assert_eq!(find(b"abc\xfd7zXZ\x00rest", b"\xfd7zXZ\x00"), Some(3));
        assert_eq!(find(b"abc", b"\xfd7zXZ\x00"), None);
    }
}
