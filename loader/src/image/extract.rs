//! Safe extraction of selected subtrees of image layers (tar, tar+gzip, tar+zstd) into a target directory.
//!
//! Only entries under the selected image prefixes (e.g. `/opt/lib/modules/<kernel>` and the firmware
//! directory) are written, each remapped to an output prefix. Layers are applied in order with OCI whiteouts
//! (`.wh.NAME`, `.wh..wh..opq`). The extractor never follows a symlink while writing (every parent of a
//! written path must be a real directory created by us), ignores ownership, and refuses:
//! absolute paths and `..` components anywhere in a layer; device nodes and FIFOs, setuid/setgid bits,
//! symlinks whose target leaves the extracted tree, hardlinks to anything outside it, files over the
//! per-file limit, and layers whose total size, file count or decompressed stream size exceed the limits.
//! Absolute symlinks into `/host/` (the KMM convention for reaching the host's in-tree modules) are skipped
//! with a warning, since the loader resolves in-tree modules from the host itself.
//! After the last layer [`Extractor::finish`] resolves every symlink physically and refuses any that
//! escapes through a chain of links.
//!
//! Regular files are created and written by a background thread ([`writer`]) while this one decompresses and
//! parses the next entries: where nothing can exist yet (a new name in a directory this extraction created)
//! the writer creates the file itself, anywhere else this thread first waits for the writer to catch up and
//! then checks and opens the file as before. Directories already checked or created here are remembered, so
//! the parents of a file are not re-examined for every file (the memory is dropped whenever a directory is
//! removed).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::{self, BufRead, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

mod gunzip;
mod writer;
use writer::{CHUNK, Op, Start, Writer};

/// Limits against decompression bombs and oversized content.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest single file written.
    pub max_file_size: u64,
    /// Sum of all file sizes written.
    pub max_total_size: u64,
    /// Number of files, directories and links written.
    pub max_files: u64,
    /// Decompressed bytes read from one layer, including entries that are not extracted.
    pub max_layer_stream: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_file_size: 256 << 20,
            max_total_size: 2 << 30,
            max_files: 100_000,
            max_layer_stream: 16 << 30,
        }
    }
}

/// Why an entry was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    AbsolutePath,
    PathTraversal,
    DeviceNode,
    SetuidSetgid(u32),
    SymlinkEscape(String),
    HardlinkEscape(String),
    ThroughSymlink,
    FileTooLarge(u64),
    TotalSizeExceeded(u64),
    TooManyFiles(u64),
    LayerStreamTooLarge(u64),
    SymlinkLoop,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::AbsolutePath => write!(f, "absolute path"),
            Refusal::PathTraversal => write!(f, "path contains '..'"),
            Refusal::DeviceNode => write!(f, "device node or fifo"),
            Refusal::SetuidSetgid(m) => write!(f, "setuid/setgid mode {m:o}"),
            Refusal::SymlinkEscape(t) => {
                write!(f, "symlink target {t:?} leaves the extracted tree")
            }
            Refusal::HardlinkEscape(t) => {
                write!(f, "hardlink target {t:?} is outside the extracted tree")
            }
            Refusal::ThroughSymlink => write!(f, "a parent directory is a symlink"),
            Refusal::FileTooLarge(l) => write!(f, "file larger than the limit of {l} bytes"),
            Refusal::TotalSizeExceeded(l) => {
                write!(f, "extracted size exceeds the limit of {l} bytes")
            }
            Refusal::TooManyFiles(l) => write!(f, "more than {l} files"),
            Refusal::LayerStreamTooLarge(l) => {
                write!(f, "layer decompresses to more than {l} bytes")
            }
            Refusal::SymlinkLoop => write!(f, "too many levels of symlinks"),
        }
    }
}

/// Errors from extracting layers.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("refused entry {path:?} in layer {layer}: {reason}")]
    RefuseEntry {
        layer: String,
        path: String,
        reason: Refusal,
    },
    #[error("failed to read layer {layer}")]
    ReadLayer {
        layer: String,
        #[source]
        source: io::Error,
    },
    #[error("failed to write {path}")]
    WriteEntry {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Which part of the image goes where: image path prefix (absolute, e.g. `/opt/lib/modules/6.1`) to a
/// relative output prefix (e.g. `lib/modules/6.1`; empty for the output root).
#[derive(Clone, Debug)]
pub struct Mapping {
    image: Vec<Vec<u8>>,
    out: PathBuf,
}

impl Mapping {
    /// Builds a mapping; `image_prefix` is an absolute image path, `out_prefix` relative to the target.
    pub fn new(image_prefix: &str, out_prefix: &str) -> Self {
        Self {
            image: image_prefix
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .map(|c| c.as_bytes().to_vec())
                .collect(),
            out: out_prefix
                .split('/')
                .filter(|c| !c.is_empty() && *c != ".")
                .collect(),
        }
    }
}

/// Counters of one extraction.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stats {
    pub files: u64,
    pub dirs: u64,
    pub links: u64,
    pub bytes: u64,
    pub whiteouts: u64,
    /// Absolute `/host/...` symlinks that were not created (image path, target).
    pub skipped_host_links: Vec<(String, String)>,
}

/// Applies layers, in order, into `root`.
pub struct Extractor {
    root: PathBuf,
    mappings: Vec<Mapping>,
    limits: Limits,
    stats: Stats,
    layer_written: HashSet<PathBuf>,
    layer: String,
    /// Paths (relative) known to be real directories: created or checked here, none removed since.
    dirs: HashSet<PathBuf>,
    /// Directories this extraction created (so they hold only `names`), none removed since.
    fresh: HashSet<PathBuf>,
    /// Every path this extraction created (some may be gone since; then they are only checked again).
    names: HashSet<PathBuf>,
    /// Started at the first regular file.
    writer: Option<Writer>,
    /// Files the writer creates itself are queued: wait for it before looking at the disk.
    pending: bool,
    /// Whether the root was empty before the first layer (`None` until then).
    root_was_empty: Option<bool>,
    /// Whether this extraction created a symlink.
    made_symlink: bool,
}

const WH_PREFIX: &[u8] = b".wh.";
const WH_OPAQUE: &[u8] = b".wh..wh..opq";

/// Wraps a layer blob reader in the right decompressor, sniffing gzip and zstd magic bytes. A gzip layer is
/// inflated straight from `reader`'s buffer, without checking the members' CRC-32 (see [`gunzip`]: layers are
/// digest-verified).
pub fn decompress<'a, R: BufRead + 'a>(mut reader: R) -> io::Result<Box<dyn Read + 'a>> {
    // The magic bytes, gathered across the reader's first pieces when they are tiny.
    let mut prefix = Vec::new();
    while prefix.len() < 4 {
        let buf = reader.fill_buf()?;
        if buf.is_empty() || (prefix.is_empty() && buf.len() >= 4) {
            break;
        }
        let k = (4 - prefix.len()).min(buf.len());
        prefix.extend_from_slice(&buf[..k]);
        reader.consume(k);
    }
    let head = if prefix.is_empty() {
        reader.fill_buf()?
    } else {
        &prefix
    };
    let (gzip, zstd) = (
        head.starts_with(&[0x1f, 0x8b]),
        head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]),
    );
    let reader = io::Cursor::new(prefix).chain(reader);
    if gzip {
        Ok(Box::new(gunzip::Gunzip::new(reader)))
    } else if zstd {
        Ok(Box::new(zstd::stream::read::Decoder::with_buffer(reader)?))
    } else {
        Ok(Box::new(reader))
    }
}

struct Counting<R> {
    inner: R,
    n: u64,
    limit: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let k = self.inner.read(buf)?;
        self.n += k as u64;
        if self.n > self.limit {
            return Err(io::Error::other(StreamLimit));
        }
        Ok(k)
    }
}

#[derive(Debug)]
struct StreamLimit;
impl fmt::Display for StreamLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("layer stream limit")
    }
}
impl std::error::Error for StreamLimit {}

/// Reads until `buf` is full or the reader ends; the number of bytes read.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<usize> {
    let mut k = 0;
    while k < buf.len() {
        match r.read(&mut buf[k..]) {
            Ok(0) => break,
            Ok(m) => k += m,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(k)
}

/// Splits a tar path into normal components, refusing absolute paths and `..`.
fn components(raw: &[u8]) -> Result<Vec<Vec<u8>>, Refusal> {
    if raw.starts_with(b"/") {
        return Err(Refusal::AbsolutePath);
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(Refusal::PathTraversal),
            c => out.push(c.to_vec()),
        }
    }
    Ok(out)
}

fn join(base: &Path, comps: &[Vec<u8>]) -> PathBuf {
    let mut p = base.to_path_buf();
    for c in comps {
        p.push(OsStr::from_bytes(c));
    }
    p
}

/// Lexically normalises `base` + `rel` (both component lists); `None` when `..` climbs above the root.
fn lexical_join(base: &[Vec<u8>], rel: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut out: Vec<Vec<u8>> = base.to_vec();
    for c in rel.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop()?;
            }
            c => out.push(c.to_vec()),
        }
    }
    Some(out)
}

/// Relative path from directory `from` to `to` (both relative to the same root).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let f: Vec<_> = from.components().collect();
    let t: Vec<_> = to.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut p = PathBuf::new();
    for _ in common..f.len() {
        p.push("..");
    }
    for c in &t[common..] {
        p.push(c.as_os_str());
    }
    if p.as_os_str().is_empty() {
        p.push(".");
    }
    p
}

impl Extractor {
    /// An extractor writing into `root` (which must exist and be empty or hold earlier layers).
    pub fn new(root: &Path, mappings: Vec<Mapping>, limits: Limits) -> Self {
        Self {
            root: root.to_path_buf(),
            mappings,
            limits,
            stats: Stats::default(),
            layer_written: HashSet::new(),
            layer: String::new(),
            dirs: HashSet::new(),
            fresh: HashSet::new(),
            names: HashSet::new(),
            writer: None,
            pending: false,
            root_was_empty: None,
            made_symlink: false,
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    fn refuse(&self, path: &[u8], reason: Refusal) -> ExtractError {
        ExtractError::RefuseEntry {
            layer: self.layer.clone(),
            path: String::from_utf8_lossy(path).into_owned(),
            reason,
        }
    }

    fn write_err(&self, rel: &Path, source: io::Error) -> ExtractError {
        ExtractError::WriteEntry {
            path: self.root.join(rel),
            source,
        }
    }

    /// Maps an image path to its output path (relative to root), if selected.
    fn map(&self, comps: &[Vec<u8>]) -> Option<PathBuf> {
        self.mappings
            .iter()
            .find(|m| comps.starts_with(&m.image))
            .map(|m| join(&m.out, &comps[m.image.len()..]))
    }

    /// Output prefixes of mappings whose image prefix lies at or under `comps`.
    fn covered(&self, comps: &[Vec<u8>]) -> Vec<PathBuf> {
        self.mappings
            .iter()
            .filter(|m| m.image.starts_with(comps))
            .map(|m| m.out.clone())
            .collect()
    }

    /// True when every existing ancestor of `rel` (below root) is a real directory.
    fn parents_are_dirs(&self, rel: &Path) -> io::Result<bool> {
        let mut p = self.root.clone();
        let comps: Vec<_> = rel.components().collect();
        for c in comps.iter().take(comps.len().saturating_sub(1)) {
            p.push(c.as_os_str());
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(_) => return Ok(false),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(true),
                Err(e) => return Err(e),
            }
        }
        Ok(true)
    }

    /// Creates the parents of `rel` as real directories, refusing to pass through a symlink.
    fn make_parents(&mut self, raw: &[u8], rel: &Path) -> Result<(), ExtractError> {
        let parent = rel.parent().unwrap_or(Path::new(""));
        // `layer_written` holds the ancestors of everything it holds, so the parent alone tells.
        if parent.as_os_str().is_empty()
            || (self.dirs.contains(parent) && self.layer_written.contains(parent))
        {
            return Ok(());
        }
        self.settle()?;
        let mut p = self.root.clone();
        let mut r = PathBuf::new();
        let comps: Vec<_> = rel.components().collect();
        for c in comps.iter().take(comps.len().saturating_sub(1)) {
            p.push(c.as_os_str());
            r.push(c.as_os_str());
            match fs::symlink_metadata(&p) {
                Ok(m) if m.file_type().is_dir() => {}
                Ok(m) if m.file_type().is_symlink() => {
                    return Err(self.refuse(raw, Refusal::ThroughSymlink));
                }
                Ok(_) => {
                    // A file from a lower layer is replaced by a directory, as overlayfs would show it.
                    fs::remove_file(&p).map_err(|e| self.write_err(&r, e))?;
                    self.mkdir(raw, &r, 0o755)?;
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => self.mkdir(raw, &r, 0o755)?,
                Err(e) => return Err(self.write_err(&r, e)),
            }
            self.layer_written.insert(r.clone());
            self.dirs.insert(r.clone());
        }
        Ok(())
    }

    fn count(&mut self, raw: &[u8]) -> Result<(), ExtractError> {
        if self.stats.files + self.stats.dirs + self.stats.links >= self.limits.max_files {
            return Err(self.refuse(raw, Refusal::TooManyFiles(self.limits.max_files)));
        }
        Ok(())
    }

    fn mkdir(&mut self, raw: &[u8], rel: &Path, mode: u32) -> Result<(), ExtractError> {
        self.count(raw)?;
        fs::DirBuilder::new()
            .mode((mode & 0o755) | 0o700)
            .create(self.root.join(rel))
            .map_err(|e| self.write_err(rel, e))?;
        self.stats.dirs += 1;
        self.fresh.insert(rel.to_owned());
        self.names.insert(rel.to_owned());
        self.dirs.insert(rel.to_owned());
        Ok(())
    }

    /// Creates a new regular file at `rel` (whose parents are real directories), replacing whatever a lower
    /// layer or an earlier entry left there; never follows a symlink (`O_EXCL`).
    fn create_file(&mut self, rel: &Path, mode: u32) -> Result<fs::File, ExtractError> {
        let path = self.root.join(rel);
        let open = || {
            fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode)
                .open(&path)
        };
        match open() {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                self.remove(rel)?;
                open().map_err(|e| self.write_err(rel, e))
            }
            other => other.map_err(|e| self.write_err(rel, e)),
        }
    }

    /// The writer thread (started on first use).
    fn writer(&mut self) -> Result<&mut Writer, ExtractError> {
        if self.writer.is_none() {
            let w = Writer::start().map_err(|source| ExtractError::WriteEntry {
                path: self.root.clone(),
                source,
            })?;
            self.writer = Some(w);
        }
        self.writer
            .as_mut()
            .ok_or_else(|| ExtractError::WriteEntry {
                path: self.root.clone(),
                source: io::Error::other("the writer thread is gone"),
            })
    }

    /// Queues a file operation for the writer thread.
    fn send(&mut self, op: Op) -> Result<(), ExtractError> {
        self.writer()?
            .send(op)
            .map_err(|(path, source)| ExtractError::WriteEntry { path, source })
    }

    /// A content buffer of [`CHUNK`] bytes from the writer thread.
    fn buffer(&mut self) -> Result<Vec<u8>, ExtractError> {
        self.writer()?
            .buffer()
            .map_err(|(path, source)| ExtractError::WriteEntry { path, source })
    }

    /// Waits until the files the writer creates itself exist, before this thread looks at the disk.
    fn settle(&mut self) -> Result<(), ExtractError> {
        if !self.pending {
            return Ok(());
        }
        self.pending = false;
        match &mut self.writer {
            Some(w) => w
                .barrier()
                .map_err(|(path, source)| ExtractError::WriteEntry { path, source }),
            None => Ok(()),
        }
    }

    /// Whether nothing can exist at `rel` yet: a new name in a directory this extraction created.
    fn surely_new(&self, rel: &Path) -> bool {
        rel.parent()
            .is_some_and(|p| !p.as_os_str().is_empty() && self.fresh.contains(p))
            && !self.names.contains(rel)
    }

    /// Reports the writer thread's first failure, if any.
    fn check_writer(&self) -> Result<(), ExtractError> {
        match &self.writer {
            Some(w) => w
                .check()
                .map_err(|(path, source)| ExtractError::WriteEntry { path, source }),
            None => Ok(()),
        }
    }

    /// Waits for the writer thread to write everything queued.
    fn flush_writer(&mut self) -> Result<(), ExtractError> {
        match self.writer.take() {
            Some(w) => w
                .finish()
                .map_err(|(path, source)| ExtractError::WriteEntry { path, source }),
            None => Ok(()),
        }
    }

    /// Removes whatever is at `rel` (never following a symlink).
    fn remove(&mut self, rel: &Path) -> Result<(), ExtractError> {
        let p = self.root.join(rel);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_dir() => {
                self.dirs.clear();
                self.fresh.clear();
                fs::remove_dir_all(&p).map_err(|e| self.write_err(rel, e))
            }
            Ok(_) => fs::remove_file(&p).map_err(|e| self.write_err(rel, e)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.write_err(rel, e)),
        }
    }

    /// Removes the content of directory `rel` that lower layers wrote (opaque whiteout semantics).
    fn clear_lower(&mut self, rel: &Path) -> Result<(), ExtractError> {
        let p = self.root.join(rel);
        match fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_dir() => {}
            Ok(_) if !self.layer_written.contains(rel) => return self.remove(rel),
            _ => return Ok(()),
        }
        let rd = fs::read_dir(&p).map_err(|e| self.write_err(rel, e))?;
        for ent in rd {
            let ent = ent.map_err(|e| self.write_err(rel, e))?;
            let child = rel.join(ent.file_name());
            if self.layer_written.contains(&child) {
                let is_dir = ent
                    .file_type()
                    .map_err(|e| self.write_err(&child, e))?
                    .is_dir();
                if is_dir {
                    self.clear_lower(&child)?;
                }
            } else {
                self.remove(&child)?;
            }
        }
        Ok(())
    }

    fn whiteout(&mut self, raw: &[u8], comps: &[Vec<u8>]) -> Result<bool, ExtractError> {
        let Some((name, dir)) = comps.split_last() else {
            return Ok(false);
        };
        if name.as_slice() == WH_OPAQUE {
            self.settle()?;
            self.stats.whiteouts += 1;
            let mut targets: Vec<PathBuf> = self.map(dir).into_iter().collect();
            targets.extend(self.covered(dir));
            for t in targets {
                if self
                    .parents_are_dirs(&t)
                    .map_err(|e| self.write_err(&t, e))?
                {
                    self.clear_lower(&t)?;
                }
            }
            return Ok(true);
        }
        let Some(hidden) = name.strip_prefix(WH_PREFIX) else {
            return Ok(false);
        };
        self.settle()?;
        self.stats.whiteouts += 1;
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(self.refuse(raw, Refusal::PathTraversal));
        }
        let mut target = dir.to_vec();
        target.push(hidden.to_vec());
        if let Some(t) = self.map(&target)
            && !self.layer_written.contains(&t)
            && self
                .parents_are_dirs(&t)
                .map_err(|e| self.write_err(&t, e))?
        {
            self.remove(&t)?;
        }
        for t in self.covered(&target) {
            if self
                .parents_are_dirs(&t)
                .map_err(|e| self.write_err(&t, e))?
            {
                self.clear_lower(&t)?;
            }
        }
        Ok(true)
    }

    fn mark_written(&mut self, rel: &Path) {
        let mut p = rel.to_path_buf();
        loop {
            if !self.layer_written.insert(p.clone()) {
                break;
            }
            if !p.pop() || p.as_os_str().is_empty() {
                break;
            }
        }
    }

    /// Resolves a symlink's target (as written in the image) to an output path, relative to the link's
    /// parent directory. `Ok(None)` means "skip" (a `/host/` link).
    fn link_target(
        &mut self,
        raw: &[u8],
        comps: &[Vec<u8>],
        out: &Path,
        target: &[u8],
    ) -> Result<Option<PathBuf>, ExtractError> {
        let target_str = String::from_utf8_lossy(target).into_owned();
        let image_target = if target.starts_with(b"/") {
            lexical_join(&[], target)
        } else {
            lexical_join(&comps[..comps.len().saturating_sub(1)], target)
        };
        let mapped = image_target.as_ref().and_then(|t| self.map(t));
        match mapped {
            Some(t) => {
                let parent = out.parent().unwrap_or(Path::new(""));
                Ok(Some(relative(parent, &t)))
            }
            None if target.starts_with(b"/host/") => {
                tracing::warn!(
                    layer = %self.layer,
                    path = %String::from_utf8_lossy(raw),
                    target = %target_str,
                    "skipping symlink into /host (the loader resolves host modules itself)"
                );
                self.stats
                    .skipped_host_links
                    .push((String::from_utf8_lossy(raw).into_owned(), target_str));
                Ok(None)
            }
            None => Err(self.refuse(raw, Refusal::SymlinkEscape(target_str))),
        }
    }

    /// Applies one layer (a tar stream, possibly compressed). `name` identifies it in errors (its digest).
    pub fn apply_layer<R: BufRead>(&mut self, name: &str, reader: R) -> Result<(), ExtractError> {
        self.layer = name.to_owned();
        if self.root_was_empty.is_none() {
            let empty = fs::read_dir(&self.root)
                .map(|mut d| d.next().is_none())
                .unwrap_or(false);
            self.root_was_empty = Some(empty);
        }
        self.layer_written.clear();
        let read_err = |layer: &str, source: io::Error| {
            if source.get_ref().is_some_and(|e| e.is::<StreamLimit>()) {
                return None;
            }
            Some(ExtractError::ReadLayer {
                layer: layer.to_owned(),
                source,
            })
        };
        let stream_limit = self.limits.max_layer_stream;
        let limit_err = |s: &Self| ExtractError::RefuseEntry {
            layer: s.layer.clone(),
            path: String::new(),
            reason: Refusal::LayerStreamTooLarge(stream_limit),
        };
        let dec =
            decompress(reader).map_err(|e| read_err(name, e).unwrap_or_else(|| limit_err(self)))?;
        let counting = Counting {
            inner: dec,
            n: 0,
            limit: stream_limit,
        };
        let mut archive = tar::Archive::new(counting);
        let entries = archive
            .entries()
            .map_err(|e| read_err(name, e).unwrap_or_else(|| limit_err(self)))?;
        for entry in entries {
            let mut entry =
                entry.map_err(|e| read_err(name, e).unwrap_or_else(|| limit_err(self)))?;
            let raw = entry.path_bytes().into_owned();
            let comps = components(&raw).map_err(|r| self.refuse(&raw, r))?;
            let kind = entry.header().entry_type();
            if matches!(
                kind,
                tar::EntryType::XGlobalHeader
                    | tar::EntryType::XHeader
                    | tar::EntryType::GNULongName
                    | tar::EntryType::GNULongLink
            ) {
                continue;
            }
            // Hardlink names are checked everywhere, like paths.
            let link_raw = entry.link_name_bytes().map(|l| l.into_owned());
            if kind.is_hard_link()
                && let Some(l) = &link_raw
            {
                components(l).map_err(|r| self.refuse(&raw, r))?;
            }
            if self.whiteout(&raw, &comps)? {
                continue;
            }
            let Some(out) = self.map(&comps) else {
                continue;
            };
            if out.as_os_str().is_empty() && !kind.is_dir() {
                // The selected prefix itself must be a directory: a file or link there is hostile or broken.
                return Err(self.refuse(&raw, Refusal::ThroughSymlink));
            }
            let mode = entry.header().mode().unwrap_or(0o644);
            if matches!(
                kind,
                tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo
            ) {
                return Err(self.refuse(&raw, Refusal::DeviceNode));
            }
            if mode & 0o6000 != 0 {
                return Err(self.refuse(&raw, Refusal::SetuidSetgid(mode)));
            }
            if out.as_os_str().is_empty() {
                continue;
            }
            self.make_parents(&raw, &out)?;
            match kind {
                tar::EntryType::Directory if self.surely_new(&out) => {
                    self.mkdir(&raw, &out, mode)?;
                }
                tar::EntryType::Directory if self.dirs.contains(&out) => {
                    let p = self.root.join(&out);
                    fs::set_permissions(&p, fs::Permissions::from_mode((mode & 0o755) | 0o700))
                        .map_err(|e| self.write_err(&out, e))?;
                }
                tar::EntryType::Directory => {
                    self.settle()?;
                    match fs::symlink_metadata(self.root.join(&out)) {
                        Ok(m) if m.file_type().is_dir() => {
                            let p = self.root.join(&out);
                            fs::set_permissions(
                                &p,
                                fs::Permissions::from_mode((mode & 0o755) | 0o700),
                            )
                            .map_err(|e| self.write_err(&out, e))?;
                            self.dirs.insert(out.clone());
                        }
                        Ok(_) => {
                            self.remove(&out)?;
                            self.mkdir(&raw, &out, mode)?;
                        }
                        Err(_) => self.mkdir(&raw, &out, mode)?,
                    }
                }
                tar::EntryType::Regular
                | tar::EntryType::Continuous
                | tar::EntryType::GNUSparse => {
                    self.count(&raw)?;
                    self.check_writer()?;
                    let path = self.root.join(&out);
                    let mode = mode & 0o755;
                    let mut start = if self.surely_new(&out) {
                        self.pending = true;
                        Some(Start {
                            path,
                            file: None,
                            mode,
                        })
                    } else {
                        self.settle()?;
                        let file = self.create_file(&out, mode)?;
                        Some(Start {
                            path,
                            file: Some(file),
                            mode,
                        })
                    };
                    self.names.insert(out.clone());
                    let mut n: u64 = 0;
                    loop {
                        let mut buf = self.buffer()?;
                        let k = match read_full(&mut entry, &mut buf) {
                            Ok(k) => k,
                            Err(e) => {
                                return Err(read_err(name, e).unwrap_or_else(|| limit_err(self)));
                            }
                        };
                        n += k as u64;
                        if n > self.limits.max_file_size {
                            return Err(
                                self.refuse(&raw, Refusal::FileTooLarge(self.limits.max_file_size))
                            );
                        }
                        if self.stats.bytes + n > self.limits.max_total_size {
                            return Err(self.refuse(
                                &raw,
                                Refusal::TotalSizeExceeded(self.limits.max_total_size),
                            ));
                        }
                        let data = if k > 0 {
                            Some((buf, k))
                        } else {
                            if let Some(w) = &mut self.writer {
                                w.unused(buf);
                            }
                            None
                        };
                        // A short piece is the last one.
                        let last = k < CHUNK;
                        self.send(Op::Piece {
                            start: start.take(),
                            data,
                            end: last.then_some(mode),
                        })?;
                        if last {
                            break;
                        }
                    }
                    self.stats.bytes += n;
                    self.stats.files += 1;
                }
                tar::EntryType::Symlink => {
                    self.settle()?;
                    self.names.insert(out.clone());
                    let target = link_raw.unwrap_or_default();
                    let Some(rel_target) = self.link_target(&raw, &comps, &out, &target)? else {
                        continue;
                    };
                    self.count(&raw)?;
                    self.remove(&out)?;
                    self.made_symlink = true;
                    std::os::unix::fs::symlink(&rel_target, self.root.join(&out))
                        .map_err(|e| self.write_err(&out, e))?;
                    self.stats.links += 1;
                }
                tar::EntryType::Link => {
                    self.settle()?;
                    self.names.insert(out.clone());
                    let target = link_raw.unwrap_or_default();
                    let target_str = String::from_utf8_lossy(&target).into_owned();
                    let tcomps = components(&target).map_err(|r| self.refuse(&raw, r))?;
                    let Some(tout) = self.map(&tcomps) else {
                        return Err(self.refuse(&raw, Refusal::HardlinkEscape(target_str)));
                    };
                    let tpath = self.root.join(&tout);
                    let ok = self
                        .parents_are_dirs(&tout)
                        .map_err(|e| self.write_err(&tout, e))?
                        && fs::symlink_metadata(&tpath).is_ok_and(|m| m.file_type().is_file());
                    if !ok {
                        return Err(self.refuse(&raw, Refusal::HardlinkEscape(target_str)));
                    }
                    if tout == out {
                        continue;
                    }
                    self.count(&raw)?;
                    self.remove(&out)?;
                    fs::hard_link(&tpath, self.root.join(&out))
                        .map_err(|e| self.write_err(&out, e))?;
                    self.stats.links += 1;
                }
                _ => {
                    tracing::debug!(layer = %self.layer, path = %String::from_utf8_lossy(&raw), "skipping unsupported entry type");
                    continue;
                }
            }
            self.mark_written(&out);
        }
        Ok(())
    }

    /// Checks that every symlink in the tree resolves (physically, through other links) inside the root,
    /// then returns the counters. A tree that was empty before the first layer and got no symlink from this
    /// extraction has none, and is not walked.
    pub fn finish(mut self) -> Result<Stats, ExtractError> {
        self.flush_writer()?;
        if self.root_was_empty == Some(true) && !self.made_symlink {
            return Ok(self.stats);
        }
        let mut stack = vec![PathBuf::new()];
        while let Some(dir) = stack.pop() {
            let rd = fs::read_dir(self.root.join(&dir)).map_err(|e| self.write_err(&dir, e))?;
            for ent in rd {
                let ent = ent.map_err(|e| self.write_err(&dir, e))?;
                let rel = dir.join(ent.file_name());
                let ft = ent.file_type().map_err(|e| self.write_err(&rel, e))?;
                if ft.is_dir() {
                    stack.push(rel);
                } else if ft.is_symlink() {
                    self.check_resolves_inside(&rel)?;
                }
            }
        }
        Ok(self.stats)
    }

    fn check_resolves_inside(&self, link: &Path) -> Result<(), ExtractError> {
        let raw = link.as_os_str().as_bytes().to_vec();
        let escape = |t: &Path| ExtractError::RefuseEntry {
            layer: "(final tree)".to_owned(),
            path: String::from_utf8_lossy(&raw).into_owned(),
            reason: Refusal::SymlinkEscape(t.display().to_string()),
        };
        let mut cur: Vec<std::ffi::OsString> = Vec::new();
        let mut pending: Vec<std::ffi::OsString> = link
            .components()
            .rev()
            .map(|c| c.as_os_str().to_owned())
            .collect();
        let mut hops = 0;
        while let Some(c) = pending.pop() {
            match c.as_bytes() {
                b"" | b"." => continue,
                b".." => {
                    if cur.pop().is_none() {
                        return Err(escape(link));
                    }
                    continue;
                }
                _ => cur.push(c),
            }
            let p: PathBuf = cur.iter().fold(self.root.clone(), |p, c| p.join(c));
            if let Ok(m) = fs::symlink_metadata(&p)
                && m.file_type().is_symlink()
            {
                hops += 1;
                if hops > 40 {
                    return Err(ExtractError::RefuseEntry {
                        layer: "(final tree)".to_owned(),
                        path: String::from_utf8_lossy(&raw).into_owned(),
                        reason: Refusal::SymlinkLoop,
                    });
                }
                let t = fs::read_link(&p).map_err(|e| self.write_err(link, e))?;
                if t.has_root() || t.components().any(|c| matches!(c, Component::Prefix(_))) {
                    return Err(escape(&t));
                }
                cur.pop();
                for c in t.components().rev() {
                    pending.push(c.as_os_str().to_owned());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests;
