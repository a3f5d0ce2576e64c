//! Pull: resolve an image (registry with mirrors, or an OCI layout), stream every layer through digest
//! verification into the safe extractor, and commit the tree atomically.
//!
//! The tree is built in a temporary sibling directory and renamed into place at the end (exchanged with an
//! older tree when one exists), so a crash never leaves a half tree at the target. `.kmm-image.json` in the
//! tree records what it holds; a second pull of the same digest downloads nothing.
//!
//! Durability without waiting for the disk: the pull does not flush the tree before the rename. Instead the
//! metadata records the boot it was written in (`unsynced_boot`, from `/proc/sys/kernel/random/boot_id`),
//! and a tree is only used
//! - in the same boot: the page cache holds everything written, and a crashed process cannot lose any of
//!   it, so a renamed tree is complete;
//! - or once it is known to be on disk: a later pull that finds the tree (same boot) flushes it (`syncfs`,
//!   mostly done by the kernel's writeback by then) and rewrites the metadata without `unsynced_boot`.
//!
//! A tree from an earlier boot that was never flushed (the machine crashed or rebooted in between) does not
//! match and is pulled again, replacing it: after a power loss its files may be empty or partial, and it is
//! never used. Trees written before this scheme have no `unsynced_boot` and were flushed before their
//! rename. Without a readable boot id the pull flushes the tree (`syncfs`) before the rename, as before.
//! Pulls into the same target are serialised by an exclusive `flock` on a sibling lock file
//! (`.<name>.kmm-lock`; in an [`ImageCache`] one per digest): a second process waits, then finds the tree
//! and reuses it. Temporary trees left by a crashed pull are removed by the next pull holding the lock.

use std::io::{self, BufRead, Read};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::extract::{ExtractError, Extractor, Limits, Mapping, Stats};
use super::layout::{Layout, LayoutError};
use super::manifest::{Descriptor, Manifest};
use super::reference::{Digest, ImageRef, RegistryRef};
use super::registry::{FailureKind, Registry, RegistryError, RegistryOptions};

/// Name of the metadata file written at the root of every extracted tree.
pub const META_FILE: &str = ".kmm-image.json";

/// What to pull.
#[derive(Clone, Debug)]
pub struct PullSpec {
    pub image: ImageRef,
    /// Kernel version whose `<dir_name>/lib/modules/<kernel>` is extracted.
    pub kernel: String,
    /// The image directory holding `lib/modules` (KMM's `dirName`, default `/opt`).
    pub dir_name: String,
    /// The image's firmware directory (KMM's `firmwarePath`), extracted to `firmware/`.
    pub firmware_path: Option<String>,
}

impl PullSpec {
    fn mappings(&self) -> Vec<Mapping> {
        let mut m = vec![Mapping::new(
            &format!(
                "{}/lib/modules/{}",
                self.dir_name.trim_end_matches('/'),
                self.kernel
            ),
            &format!("lib/modules/{}", self.kernel),
        )];
        if let Some(fw) = &self.firmware_path {
            m.push(Mapping::new(fw, "firmware"));
        }
        m
    }
}

/// Contents of [`META_FILE`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    pub image: String,
    pub digest: String,
    pub kernel: String,
    pub dir_name: String,
    pub firmware_path: Option<String>,
    /// The boot id of the boot that wrote the tree, while the tree is not known to be on disk (see the
    /// module documentation); absent once flushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unsynced_boot: Option<String>,
}

/// Result of a pull.
#[derive(Clone, Debug)]
pub struct Pulled {
    /// Manifest digest.
    pub digest: Digest,
    /// The tree.
    pub path: PathBuf,
    /// True when the tree was already there and nothing was downloaded.
    pub cached: bool,
    /// Extraction counters (`None` when cached).
    pub stats: Option<Stats>,
    /// Where the image came from (the mirror that served it, or the layout).
    pub source: String,
}

/// Errors from pulling.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    #[error("failed to pull {image}")]
    Registry {
        image: String,
        #[source]
        source: Box<RegistryError>,
    },
    #[error("failed to pull {image} from any of its registries: {failures}")]
    PullFromMirrors { image: String, failures: String },
    #[error("failed to read OCI layout for {image}")]
    Layout {
        image: String,
        #[source]
        source: LayoutError,
    },
    #[error("failed to extract {image}")]
    Extract {
        image: String,
        #[source]
        source: ExtractError,
    },
    #[error("failed to find {path} in {image}: the image has no modules for kernel {kernel}")]
    FindModules {
        image: String,
        path: String,
        kernel: String,
    },
    #[error("failed to prepare {path}")]
    PrepareTarget {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to move the extracted tree into {path}")]
    CommitTarget {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("extraction task failed for {image}")]
    Join { image: String },
    #[error("failed to lock {path} against concurrent pulls")]
    Lock {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to flush the extracted tree {path} to disk")]
    SyncTree {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl PullError {
    fn retryable(&self) -> bool {
        matches!(self, PullError::Registry { source, .. } if source.kind() == FailureKind::Transient)
    }
    fn mirror_may_help(&self) -> bool {
        matches!(self, PullError::Registry { .. })
    }
}

fn read_meta(dir: &Path) -> Option<Meta> {
    let bytes = std::fs::read(dir.join(META_FILE)).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`), read once; `None` when it cannot be read.
pub fn boot_id() -> Option<&'static str> {
    static ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
    })
    .as_deref()
}

/// How a tree found at the target can be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Found {
    /// No tree of this image: pull it.
    No,
    /// Complete and on disk.
    Durable,
    /// Complete, written in this boot and not yet known to be on disk.
    ThisBoot,
}

fn found(dir: &Path, digest: &Digest, spec: &PullSpec) -> Found {
    let Some(m) = read_meta(dir) else {
        return Found::No;
    };
    let same_image = m.digest == digest.as_str()
        && m.kernel == spec.kernel
        && m.dir_name == spec.dir_name
        && m.firmware_path == spec.firmware_path;
    match m.unsynced_boot {
        _ if !same_image => Found::No,
        None => Found::Durable,
        Some(b) if Some(b.as_str()) == boot_id() => Found::ThisBoot,
        // Written in an earlier boot and never flushed: possibly incomplete on disk.
        Some(_) => Found::No,
    }
}

/// Flushes a tree written in this boot and records that it is on disk (called with the target's lock held).
fn make_durable(dir: &Path) -> Result<(), PullError> {
    let err = |source: io::Error| PullError::SyncTree {
        path: dir.to_owned(),
        source,
    };
    let Some(mut meta) = read_meta(dir) else {
        return Ok(());
    };
    sync_tree(dir)?;
    meta.unsynced_boot = None;
    let tmp = dir.join(format!("{META_FILE}.tmp"));
    {
        let mut f = std::fs::File::create(&tmp).map_err(err)?;
        io::Write::write_all(
            &mut f,
            &serde_json::to_vec_pretty(&meta).unwrap_or_default(),
        )
        .map_err(err)?;
        f.sync_all().map_err(err)?;
    }
    std::fs::rename(&tmp, dir.join(META_FILE)).map_err(err)?;
    let d = std::fs::File::open(dir).map_err(err)?;
    rustix::fs::fsync(&d).map_err(|e| err(e.into()))
}

/// Whether the tree at `dir` holds this image and can be used as it is, flushing a tree of this boot first
/// (only with the target's lock held).
async fn usable(dir: &Path, digest: &Digest, spec: &PullSpec) -> Result<bool, PullError> {
    match found(dir, digest, spec) {
        Found::No => Ok(false),
        Found::Durable => Ok(true),
        Found::ThisBoot => {
            let d = dir.to_owned();
            tokio::task::spawn_blocking(move || make_durable(&d))
                .await
                .map_err(|_| PullError::Join {
                    image: spec.image.to_string(),
                })??;
            Ok(true)
        }
    }
}

fn pinned_digest(image: &ImageRef) -> Option<&Digest> {
    match image {
        ImageRef::Registry(r) => r.digest.as_ref(),
        ImageRef::OciLayout { .. } => None,
    }
}

/// How far the download may run ahead of the extraction (bytes received, not yet read), and the steps in which
/// the extraction hands room back: the two sides then hand off a few times per layer instead of once per
/// chunk (a bound of 16 chunks cost a wake-up of each side per chunk read).
const LEAD: usize = 8 << 20;
const LEAD_STEP: usize = 2 << 20;

/// The download's end of a layer stream: waits for room, then passes the chunk on as received.
struct LayerSink {
    tx: tokio::sync::mpsc::UnboundedSender<bytes::Bytes>,
    room: std::sync::Arc<tokio::sync::Semaphore>,
}

impl super::registry::BlobSink for LayerSink {
    async fn write(&mut self, chunk: bytes::Bytes) -> io::Result<()> {
        let stopped = || io::Error::new(io::ErrorKind::BrokenPipe, "the layer reader stopped");
        let n = u32::try_from(chunk.len().min(LEAD)).unwrap_or(u32::MAX);
        self.room
            .acquire_many(n)
            .await
            .map_err(|_| stopped())?
            .forget();
        self.tx.send(chunk).map_err(|_| stopped())
    }
}

/// A reader over the chunks of the async download, as received: the inflater reads straight from them.
struct ChannelReader {
    rx: tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
    room: std::sync::Arc<tokio::sync::Semaphore>,
    buf: bytes::Bytes,
    /// Room taken by the current chunk, and room freed but not handed back yet.
    taken: usize,
    freed: usize,
}

impl ChannelReader {
    fn new(
        rx: tokio::sync::mpsc::UnboundedReceiver<bytes::Bytes>,
        room: std::sync::Arc<tokio::sync::Semaphore>,
    ) -> Self {
        Self {
            rx,
            room,
            buf: bytes::Bytes::new(),
            taken: 0,
            freed: 0,
        }
    }

    fn hand_back(&mut self) {
        if self.freed > 0 {
            self.room.add_permits(std::mem::take(&mut self.freed));
        }
    }
}

impl Drop for ChannelReader {
    fn drop(&mut self) {
        // A download waiting for room stops instead of waiting forever.
        self.room.close();
    }
}

impl BufRead for ChannelReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.buf.is_empty() {
            self.freed += std::mem::take(&mut self.taken);
            if self.freed >= LEAD_STEP {
                self.hand_back();
            }
            let next = match self.rx.try_recv() {
                Ok(b) => Some(b),
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {
                    // Nothing received: whatever room is left goes back before waiting, or the download
                    // could wait for it forever.
                    self.hand_back();
                    self.rx.blocking_recv()
                }
                Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => None,
            };
            match next {
                Some(b) => {
                    self.taken = b.len().min(LEAD);
                    self.buf = b;
                }
                None => break,
            }
        }
        Ok(&self.buf)
    }

    fn consume(&mut self, n: usize) {
        let n = n.min(self.buf.len());
        bytes::Buf::advance(&mut self.buf, n);
    }
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = out.len().min(avail.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// Applies a layer and then reads its stream to the end (so a verifying reader sees all bytes).
fn apply_and_drain<R: BufRead>(
    x: &mut Extractor,
    name: &str,
    mut r: R,
) -> Result<(), ExtractError> {
    let res = x.apply_layer(name, &mut r);
    // Read to the end even after a refusal, so the download side still checks the digest: corrupt content
    // is then reported as such rather than as whatever the extractor tripped over.
    let drained = io::copy(&mut r, &mut io::sink());
    res?;
    drained.map_err(|source| ExtractError::ReadLayer {
        layer: name.to_owned(),
        source,
    })?;
    Ok(())
}

/// Where layers come from.
pub(crate) enum Source<'a> {
    Registry {
        reg: &'a Registry,
        from: RegistryRef,
    },
    Layout(Layout),
}

/// A check the image must pass (its configuration's platform), run alongside the first layer.
pub(crate) type Gate<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), PullError>> + Send + 'a>>;

/// Streams every layer of `manifest` from `source` through the extractor into `target` (which must exist).
/// With a registry source, `gate` runs alongside the first layer's download and extraction (both only
/// write into `target`, a temporary tree); when it fails, the download stops, the extraction ends and the
/// gate's error is returned. A layout source awaits `gate` first.
pub(crate) async fn extract_layers(
    image: &str,
    source: &Source<'_>,
    manifest: &Manifest,
    target: &Path,
    mappings: Vec<Mapping>,
    limits: Limits,
    gate: Option<Gate<'_>>,
) -> Result<Stats, PullError> {
    let mut x = Extractor::new(target, mappings, limits);
    let mut gate = gate;
    if matches!(source, Source::Layout(_))
        && let Some(g) = gate.take()
    {
        g.await?;
    }
    for layer in &manifest.layers {
        let name = layer.digest.clone();
        x = match source {
            Source::Registry { reg, from } => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<bytes::Bytes>();
                let room = std::sync::Arc::new(tokio::sync::Semaphore::new(LEAD));
                let mut sink = LayerSink {
                    tx,
                    room: room.clone(),
                };
                let lname = name.clone();
                let gate = gate.take();
                let stop = room.clone();
                let check = async move {
                    let res = match gate {
                        Some(g) => g.await,
                        None => Ok(()),
                    };
                    if res.is_err() {
                        // The download stops at its next chunk; the extraction then sees the end of its
                        // input and stops too (both are awaited below).
                        stop.close();
                    }
                    res
                };
                let extract = async move {
                    tokio::task::spawn_blocking(move || {
                        let r = ChannelReader::new(rx, room);
                        let res = apply_and_drain(&mut x, &lname, r);
                        (x, res)
                    })
                    .await
                    .map_err(|_| PullError::Join {
                        image: image.to_owned(),
                    })
                };
                let download = async {
                    let dl = reg.stream_blob(from, layer, &mut sink).await;
                    drop(sink);
                    dl
                };
                let (dl, extracted, checked) = tokio::join!(download, extract, check);
                checked?;
                let (xx, res) = extracted?;
                // Content that does not match its digest explains any extraction failure; otherwise a
                // refusal by the extractor explains a broken pipe on the download side.
                if let Err(e @ RegistryError::VerifyDigest { .. }) = dl {
                    return Err(PullError::Registry {
                        image: image.to_owned(),
                        source: Box::new(e),
                    });
                }
                res.map_err(|source| PullError::Extract {
                    image: image.to_owned(),
                    source,
                })?;
                dl.map_err(|source| PullError::Registry {
                    image: image.to_owned(),
                    source: Box::new(source),
                })?;
                xx
            }
            Source::Layout(l) => {
                let digest = Digest::parse(&layer.digest).map_err(|e| PullError::Layout {
                    image: image.to_owned(),
                    source: LayoutError::ParseLayout {
                        path: PathBuf::from("manifest"),
                        reason: e.to_string(),
                    },
                })?;
                let r = l.open_blob(&digest).map_err(|source| PullError::Layout {
                    image: image.to_owned(),
                    source,
                })?;
                let lname = name.clone();
                let (xx, res) = tokio::task::spawn_blocking(move || {
                    let r = io::BufReader::with_capacity(256 << 10, r);
                    let res = apply_and_drain(&mut x, &lname, r);
                    (x, res)
                })
                .await
                .map_err(|_| PullError::Join {
                    image: image.to_owned(),
                })?;
                res.map_err(|source| PullError::Extract {
                    image: image.to_owned(),
                    source,
                })?;
                xx
            }
        };
    }
    if let Some(g) = gate {
        // No layers.
        g.await?;
    }
    let image_owned = image.to_owned();
    tokio::task::spawn_blocking(move || x.finish())
        .await
        .map_err(|_| PullError::Join { image: image_owned })?
        .map_err(|source| PullError::Extract {
            image: image.to_owned(),
            source,
        })
}

/// Checks the image config's platform (a single-platform manifest may still be for another arch).
async fn check_config(
    image: &str,
    source: &Source<'_>,
    config: &Descriptor,
    opts: &RegistryOptions,
) -> Result<(), PullError> {
    let bytes = match source {
        Source::Registry { reg, from } => {
            reg.fetch_blob(from, config)
                .await
                .map_err(|source| PullError::Registry {
                    image: image.to_owned(),
                    source: Box::new(source),
                })?
        }
        Source::Layout(l) => {
            let d = Digest::parse(&config.digest).map_err(|e| PullError::Layout {
                image: image.to_owned(),
                source: LayoutError::ParseLayout {
                    path: PathBuf::from("manifest"),
                    reason: e.to_string(),
                },
            })?;
            l.read_blob(&d).map_err(|source| PullError::Layout {
                image: image.to_owned(),
                source,
            })?
        }
    };
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let arch = v.get("architecture").and_then(|a| a.as_str()).unwrap_or("");
    let os = v.get("os").and_then(|a| a.as_str()).unwrap_or("");
    let want = &opts.platform;
    if (!arch.is_empty() && arch != want.architecture) || (!os.is_empty() && os != want.os) {
        return Err(PullError::Registry {
            image: image.to_owned(),
            source: Box::new(RegistryError::CheckPlatform {
                image: image.to_owned(),
                found: format!("{os}/{arch}"),
                platform: want.to_string(),
            }),
        });
    }
    Ok(())
}

fn parent_of(out: &Path) -> &Path {
    out.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

fn name_of(out: &Path) -> String {
    out.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn temp_prefix(out: &Path) -> String {
    format!(".{}.kmm-pull-", name_of(out))
}

/// The lock file serialising pulls into `out`.
pub fn lock_path(out: &Path) -> PathBuf {
    parent_of(out).join(format!(".{}.kmm-lock", name_of(out)))
}

/// An exclusive `flock` on [`lock_path`], held until dropped (the kernel releases it if the process dies).
/// The holder unlinks the lock file before releasing it, so nothing is left next to the target; a waiter
/// that then wakes up on the unlinked file sees that the path no longer names its file and tries again.
struct TargetLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl Drop for TargetLock {
    fn drop(&mut self) {
        // Still holding the lock: nobody can be between "locked" and "checked the path" right now.
        if let Err(error) = std::fs::remove_file(&self.path) {
            tracing::debug!(lock = %self.path.display(), %error, "failed to remove the lock file");
        }
        // Closing the file afterwards releases the lock.
    }
}

/// Whether `path` still names the open `file` (same device and inode).
fn still_named(file: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Locks `path`, blocking; retries when the file was unlinked by the previous holder meanwhile.
fn lock_blocking(path: &Path) -> Result<TargetLock, PullError> {
    use rustix::fs::{FlockOperation, flock};
    let err = |source: io::Error| PullError::Lock {
        path: path.to_owned(),
        source,
    };
    let mut wait_logged = false;
    loop {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(err)?;
        match flock(&file, FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => {
                if !wait_logged {
                    tracing::info!(lock = %path.display(), "another pull into the same target is running, waiting for it");
                    wait_logged = true;
                }
                flock(&file, FlockOperation::LockExclusive).map_err(|e| err(e.into()))?;
            }
            Err(e) => return Err(err(e.into())),
        }
        if still_named(&file, path) {
            return Ok(TargetLock {
                _file: file,
                path: path.to_owned(),
            });
        }
    }
}

async fn lock_target(out: &Path) -> Result<TargetLock, PullError> {
    let path = lock_path(out);
    let parent = parent_of(out);
    std::fs::create_dir_all(parent).map_err(|source| PullError::PrepareTarget {
        path: parent.to_owned(),
        source,
    })?;
    tokio::task::spawn_blocking(move || lock_blocking(&path))
        .await
        .map_err(|_| PullError::Join {
            image: out.display().to_string(),
        })?
}

/// Removes temporary trees a crashed pull left next to `out` (only called with the target's lock held).
fn remove_stale_temps(out: &Path) {
    let prefix = temp_prefix(out);
    let Ok(rd) = std::fs::read_dir(parent_of(out)) else {
        return;
    };
    for e in rd.flatten() {
        if e.file_name().to_string_lossy().starts_with(&prefix) {
            tracing::info!(path = %e.path().display(), "removing the temporary tree of an interrupted pull");
            if let Err(error) = std::fs::remove_dir_all(e.path()) {
                tracing::warn!(path = %e.path().display(), %error, "failed to remove a stale temporary tree");
            }
        }
    }
}

/// Flushes the file system holding `dir` (one `syncfs` for the whole tree instead of one `fsync` per file).
fn sync_tree(dir: &Path) -> Result<(), PullError> {
    let err = |source: io::Error| PullError::SyncTree {
        path: dir.to_owned(),
        source,
    };
    let f = std::fs::File::open(dir).map_err(err)?;
    rustix::fs::syncfs(&f).map_err(|e| err(e.into()))
}

fn temp_dir_for(out: &Path) -> Result<tempfile::TempDir, PullError> {
    let parent = parent_of(out);
    std::fs::create_dir_all(parent).map_err(|source| PullError::PrepareTarget {
        path: parent.to_owned(),
        source,
    })?;
    tempfile::Builder::new()
        .prefix(&temp_prefix(out))
        .tempdir_in(parent)
        .map_err(|source| PullError::PrepareTarget {
            path: parent.to_owned(),
            source,
        })
}

/// Moves `tmp` to `out` atomically; an existing `out` is exchanged with it and then removed. `durable`: the
/// tree is on disk, make the rename durable too.
fn commit(tmp: tempfile::TempDir, out: &Path, durable: bool) -> Result<(), PullError> {
    let err = |source| PullError::CommitTarget {
        path: out.to_owned(),
        source,
    };
    if std::fs::symlink_metadata(out).is_ok() {
        rustix::fs::renameat_with(
            rustix::fs::CWD,
            tmp.path(),
            rustix::fs::CWD,
            out,
            rustix::fs::RenameFlags::EXCHANGE,
        )
        .map_err(|e| err(e.into()))?;
        // `tmp` now holds the old tree and is removed when dropped.
        drop(tmp);
    } else {
        let path = tmp.keep();
        std::fs::rename(&path, out).map_err(err)?;
    }
    if durable {
        // Make the rename itself durable.
        let parent = std::fs::File::open(parent_of(out)).map_err(err)?;
        rustix::fs::fsync(&parent).map_err(|e| err(e.into()))?;
    }
    Ok(())
}

/// The fixed inputs of one pull.
struct Job<'a> {
    spec: &'a PullSpec,
    out: &'a Path,
    opts: &'a RegistryOptions,
    limits: Limits,
}

async fn pull_once(
    job: &Job<'_>,
    source: Source<'_>,
    source_name: String,
    digest: Digest,
    manifest: &Manifest,
) -> Result<Pulled, PullError> {
    let Job {
        spec,
        out,
        opts,
        limits,
    } = *job;
    let image = spec.image.to_string();
    if usable(out, &digest, spec).await? {
        return Ok(Pulled {
            digest,
            path: out.to_owned(),
            cached: true,
            stats: None,
            source: source_name,
        });
    }
    let tmp = temp_dir_for(out)?;
    let gate: Gate<'_> = Box::pin(check_config(&image, &source, &manifest.config, opts));
    let stats = extract_layers(
        &image,
        &source,
        manifest,
        tmp.path(),
        spec.mappings(),
        limits,
        Some(gate),
    )
    .await?;
    let kdir = format!("lib/modules/{}", spec.kernel);
    if !tmp.path().join(&kdir).is_dir() {
        return Err(PullError::FindModules {
            image,
            path: format!("{}/{kdir}", spec.dir_name.trim_end_matches('/')),
            kernel: spec.kernel.clone(),
        });
    }
    let boot = boot_id();
    let meta = Meta {
        image: image.clone(),
        digest: digest.to_string(),
        kernel: spec.kernel.clone(),
        dir_name: spec.dir_name.clone(),
        firmware_path: spec.firmware_path.clone(),
        unsynced_boot: boot.map(str::to_owned),
    };
    let meta_bytes = serde_json::to_vec_pretty(&meta).unwrap_or_default();
    std::fs::write(tmp.path().join(META_FILE), meta_bytes).map_err(|source| {
        PullError::PrepareTarget {
            path: tmp.path().join(META_FILE),
            source,
        }
    })?;
    if boot.is_none() {
        // Without a boot id a tree is only trusted once on disk (see the module documentation).
        let t = tmp.path().to_owned();
        tokio::task::spawn_blocking(move || sync_tree(&t))
            .await
            .map_err(|_| PullError::Join {
                image: image.clone(),
            })??;
    }
    commit(tmp, out, boot.is_none())?;
    tracing::info!(image = %image, digest = %digest, files = stats.files, bytes = stats.bytes, "pulled");
    Ok(Pulled {
        digest,
        path: out.to_owned(),
        cached: false,
        stats: Some(stats),
        source: source_name,
    })
}

/// Pulls `spec` into `out` (`out/lib/modules/<kernel>/...`, `out/firmware/...`).
pub async fn pull_tree(
    spec: &PullSpec,
    out: &Path,
    opts: &RegistryOptions,
    limits: Limits,
) -> Result<Pulled, PullError> {
    let cached = |d: &Digest| Pulled {
        digest: d.clone(),
        path: out.to_owned(),
        cached: true,
        stats: None,
        source: spec.image.to_string(),
    };
    if let Some(d) = pinned_digest(&spec.image)
        && found(out, d, spec) == Found::Durable
    {
        return Ok(cached(d));
    }
    let _lock = lock_target(out).await?;
    // Another process may have finished the same pull while this one waited.
    if let Some(d) = pinned_digest(&spec.image)
        && usable(out, d, spec).await?
    {
        return Ok(cached(d));
    }
    remove_stale_temps(out);
    let image = spec.image.to_string();
    let job = Job {
        spec,
        out,
        opts,
        limits,
    };
    match &spec.image {
        ImageRef::OciLayout { path, tag } => {
            let layout = Layout::new(path);
            let m = layout
                .manifest(tag.as_deref(), &opts.platform)
                .map_err(|source| PullError::Layout {
                    image: image.clone(),
                    source,
                })?;
            pull_once(
                &job,
                Source::Layout(layout),
                image.clone(),
                m.digest,
                &m.manifest,
            )
            .await
        }
        ImageRef::Registry(r) => {
            let reg = Registry::new(opts).map_err(|source| PullError::Registry {
                image: image.clone(),
                source: Box::new(source),
            })?;
            let candidates = opts.candidates(r);
            let mut failures = Vec::new();
            for cand in &candidates {
                let mut attempt = 0;
                let res = loop {
                    attempt += 1;
                    let res = async {
                        let resolved =
                            reg.resolve_one(cand)
                                .await
                                .map_err(|source| PullError::Registry {
                                    image: image.clone(),
                                    source: Box::new(source),
                                })?;
                        let src = Source::Registry {
                            reg: &reg,
                            from: resolved.source.clone(),
                        };
                        pull_once(
                            &job,
                            src,
                            cand.to_string(),
                            resolved.digest,
                            &resolved.manifest,
                        )
                        .await
                    }
                    .await;
                    match res {
                        Err(e) if e.retryable() && attempt < opts.attempts.max(1) => {
                            tracing::warn!(image = %cand, attempt, error = %e, "pull interrupted, retrying");
                            tokio::time::sleep(opts.backoff).await;
                        }
                        other => break other,
                    }
                };
                match res {
                    Ok(p) => return Ok(p),
                    Err(e) if candidates.len() > 1 && e.mirror_may_help() => {
                        tracing::warn!(image = %cand, error = %e, "pull failed, trying the next registry");
                        failures.push(format!("{cand}: {}", error_chain(&e)));
                    }
                    Err(e) => return Err(e),
                }
            }
            Err(PullError::PullFromMirrors {
                image,
                failures: failures.join("; "),
            })
        }
    }
}

/// A node-local cache of extracted trees keyed by manifest digest: `<root>/sha256/<hex>`.
pub struct ImageCache {
    root: PathBuf,
}

impl ImageCache {
    /// A cache under `root`.
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_owned(),
        }
    }

    /// The directory for a manifest digest.
    pub fn path(&self, digest: &Digest) -> PathBuf {
        self.root.join("sha256").join(digest.hex())
    }

    /// Pulls into the cache. A digest reference already in the cache is served without any network access;
    /// a tag costs one manifest request.
    pub async fn pull(
        &self,
        spec: &PullSpec,
        opts: &RegistryOptions,
        limits: Limits,
    ) -> Result<Pulled, PullError> {
        if let Some(d) = pinned_digest(&spec.image) {
            return pull_tree(spec, &self.path(d), opts, limits).await;
        }
        // Resolve the tag first so the tree lands under its digest.
        let digest = match &spec.image {
            ImageRef::OciLayout { path, tag } => {
                Layout::new(path)
                    .manifest(tag.as_deref(), &opts.platform)
                    .map_err(|source| PullError::Layout {
                        image: spec.image.to_string(),
                        source,
                    })?
                    .digest
            }
            ImageRef::Registry(r) => {
                let reg = Registry::new(opts).map_err(|source| PullError::Registry {
                    image: spec.image.to_string(),
                    source: Box::new(source),
                })?;
                reg.resolve_one(r)
                    .await
                    .map_err(|source| PullError::Registry {
                        image: spec.image.to_string(),
                        source: Box::new(source),
                    })?
                    .digest
            }
        };
        let mut pinned = spec.clone();
        if let ImageRef::Registry(r) = &spec.image {
            pinned.image = ImageRef::Registry(r.with_digest(digest.clone()));
        }
        let mut p = pull_tree(&pinned, &self.path(&digest), opts, limits).await?;
        p.digest = digest;
        Ok(p)
    }
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::io::Write;

    /// Writes a one-layer OCI layout (tag `v1`) holding `/opt/lib/modules/6.1/a.ko`.
    fn layout(dir: &Path) {
        let mut tar = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_mode(0o644);
        h.set_size(5);
        tar.append_data(&mut h, "opt/lib/modules/6.1/a.ko", &b"\x7fELF!"[..])
            .unwrap();
        let raw = tar.into_inner().unwrap();
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&raw).unwrap();
        let layer = gz.finish().unwrap();
        let blobs = dir.join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let put = |bytes: &[u8]| {
            let d = Digest::of(bytes);
            std::fs::write(blobs.join(d.hex()), bytes).unwrap();
            (d.to_string(), bytes.len())
        };
        let (ld, lsize) = put(&layer);
        let config = serde_json::json!({"architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": [Digest::of(&raw).to_string()]}});
        let (cd, csize) = put(config.to_string().as_bytes());
        let manifest = serde_json::json!({"schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": csize},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": ld, "size": lsize}]});
        let (md, msize) = put(manifest.to_string().as_bytes());
        let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": msize,
            "annotations": {"org.opencontainers.image.ref.name": "v1"}}]});
        std::fs::write(dir.join("index.json"), index.to_string()).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    }

    fn set_unsynced_boot(out: &Path, boot: Option<&str>) {
        let mut m = read_meta(out).unwrap();
        m.unsynced_boot = boot.map(str::to_owned);
        std::fs::write(out.join(META_FILE), serde_json::to_vec(&m).unwrap()).unwrap();
    }

    #[tokio::test]
    async fn tree_of_this_boot_is_used_and_flushed_unflushed_tree_of_another_boot_is_pulled_again()
    {
        let boot = boot_id().expect("this test needs /proc/sys/kernel/random/boot_id");
        let dir = tempfile::tempdir().unwrap();
        let oci = dir.path().join("oci");
        layout(&oci);
        let spec = PullSpec {
            image: ImageRef::OciLayout {
                path: oci,
                tag: Some("v1".into()),
            },
            kernel: "6.1".into(),
            dir_name: "/opt".into(),
            firmware_path: None,
        };
        let out = dir.path().join("tree");
        let opts = RegistryOptions::default();
        let ko = out.join("lib/modules/6.1/a.ko");

        // A fresh pull is not flushed: the tree is marked with this boot.
        let p = pull_tree(&spec, &out, &opts, Limits::default())
            .await
            .unwrap();
        assert!(!p.cached);
        assert_eq!(
            read_meta(&out).unwrap().unsynced_boot.as_deref(),
            Some(boot)
        );
        assert_eq!(std::fs::read(&ko).unwrap(), b"\x7fELF!");

        // Found again in the same boot: used as it is (nothing extracted), flushed and marked durable.
        let p = pull_tree(&spec, &out, &opts, Limits::default())
            .await
            .unwrap();
        assert!(p.cached && p.stats.is_none());
        assert_eq!(read_meta(&out).unwrap().unsynced_boot, None);
        assert!(!out.join(format!("{META_FILE}.tmp")).exists());
        let p = pull_tree(&spec, &out, &opts, Limits::default())
            .await
            .unwrap();
        assert!(p.cached);

        // Written in another boot and never flushed (a power loss may have left it partial): not used, pulled
        // again into place. Here a module is truncated, as a crash before writeback could leave it.
        set_unsynced_boot(&out, Some("00000000-0000-0000-0000-000000000000"));
        std::fs::write(&ko, b"").unwrap();
        let p = pull_tree(&spec, &out, &opts, Limits::default())
            .await
            .unwrap();
        assert!(!p.cached && p.stats.is_some());
        assert_eq!(std::fs::read(&ko).unwrap(), b"\x7fELF!");
        assert_eq!(
            read_meta(&out).unwrap().unsynced_boot.as_deref(),
            Some(boot)
        );

        // A flushed tree of an earlier boot (or one written before boot ids were recorded) is used.
        set_unsynced_boot(&out, None);
        let p = pull_tree(&spec, &out, &opts, Limits::default())
            .await
            .unwrap();
        assert!(p.cached);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names.len(),
            2,
            "only the layout and the tree are left: {names:?}"
        );
    }
}
