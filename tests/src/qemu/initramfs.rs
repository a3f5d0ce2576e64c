//! A gzip-compressed cpio (newc) archive for the kernel's initramfs, written without the `cpio` tool.
//!
//! Parent directories are added automatically and entries are written in path order (parents first), which is
//! what the kernel's unpacker needs. `/dev/console` is always present, so `/init` has a console before devtmpfs
//! is mounted.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use flate2::Compression;
use flate2::write::GzEncoder;

/// Errors of building an initramfs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("failed to read {path} for the initramfs")]
    ReadHostFile { path: PathBuf, source: io::Error },
    #[error("failed to write initramfs {path}")]
    WriteArchive { path: PathBuf, source: io::Error },
    #[error("invalid initramfs path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
}

#[derive(Debug, Clone)]
enum Entry {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    CharDev { mode: u32, major: u32, minor: u32 },
}

/// The contents of an initramfs, keyed by absolute path.
#[derive(Debug, Clone, Default)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
}

impl Initramfs {
    /// An archive holding `/dev/console` and the usual empty mount points.
    pub fn new() -> Self {
        let mut fs = Initramfs::default();
        for dir in [
            "/bin",
            "/sbin",
            "/usr/bin",
            "/usr/sbin",
            "/proc",
            "/sys",
            "/dev",
            "/tmp",
            "/run",
            "/etc",
        ] {
            fs.insert(dir, Entry::Dir { mode: 0o755 });
        }
        fs.insert(
            "/dev/console",
            Entry::CharDev {
                mode: 0o600,
                major: 5,
                minor: 1,
            },
        );
        fs
    }

    fn insert(&mut self, path: &str, entry: Entry) {
        let key = path
            .trim_start_matches('/')
            .trim_end_matches('/')
            .to_owned();
        let mut parent = Path::new(&key).parent();
        while let Some(p) = parent.filter(|p| !p.as_os_str().is_empty()) {
            self.entries
                .entry(p.to_string_lossy().into_owned())
                .or_insert(Entry::Dir { mode: 0o755 });
            parent = p.parent();
        }
        self.entries.insert(key, entry);
    }

    /// Add a directory.
    pub fn dir(&mut self, path: &str) -> &mut Self {
        self.insert(path, Entry::Dir { mode: 0o755 });
        self
    }

    /// Add a file with the given contents and permission bits.
    pub fn file(&mut self, path: &str, data: impl Into<Vec<u8>>, mode: u32) -> &mut Self {
        self.insert(
            path,
            Entry::File {
                mode: mode & 0o7777,
                data: data.into(),
            },
        );
        self
    }

    /// Add a copy of a host file (permission bits: 0755 if `executable`, else 0644).
    pub fn copy(&mut self, path: &str, host: &Path, executable: bool) -> Result<&mut Self, Error> {
        let data = fs::read(host).map_err(|source| Error::ReadHostFile {
            path: host.to_owned(),
            source,
        })?;
        Ok(self.file(path, data, if executable { 0o755 } else { 0o644 }))
    }

    /// Add a symbolic link.
    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        self.insert(
            path,
            Entry::Symlink {
                target: target.to_owned(),
            },
        );
        self
    }

    /// Whether `path` is in the archive.
    pub fn contains(&self, path: &str) -> bool {
        self.entries.contains_key(path.trim_start_matches('/'))
    }

    /// The uncompressed cpio (newc) bytes.
    pub fn to_cpio(&self) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        for (ino, (name, entry)) in self.entries.iter().enumerate() {
            if name.is_empty() || name.split('/').any(|c| c == ".." || c.is_empty()) {
                return Err(Error::InvalidPath {
                    path: name.clone(),
                    reason: "empty or `..` component",
                });
            }
            let ino = u32::try_from(ino + 1).unwrap_or(u32::MAX);
            let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
                Entry::Dir { mode } => (0o040000 | mode, &[], (0, 0)),
                Entry::File { mode, data } => (0o100000 | mode, data, (0, 0)),
                Entry::Symlink { target } => (0o120777, target.as_bytes(), (0, 0)),
                Entry::CharDev { mode, major, minor } => (0o020000 | mode, &[], (*major, *minor)),
            };
            let nlink = if matches!(entry, Entry::Dir { .. }) {
                2
            } else {
                1
            };
            write_header(&mut out, ino, mode, nlink, data.len(), rdev, name)?;
            out.extend_from_slice(data);
            pad4(&mut out);
        }
        write_header(&mut out, 0, 0, 1, 0, (0, 0), "TRAILER!!!")?;
        Ok(out)
    }

    /// Write the gzip-compressed archive to `path`.
    pub fn write_gz(&self, path: &Path) -> Result<(), Error> {
        let cpio = self.to_cpio()?;
        let write = || -> io::Result<()> {
            let file = fs::File::create(path)?;
            let mut gz = GzEncoder::new(io::BufWriter::new(file), Compression::fast());
            gz.write_all(&cpio)?;
            gz.finish()?.flush()
        };
        write().map_err(|source| Error::WriteArchive {
            path: path.to_owned(),
            source,
        })
    }
}

fn write_header(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: usize,
    rdev: (u32, u32),
    name: &str,
) -> Result<(), Error> {
    let size = u32::try_from(size).map_err(|_| Error::InvalidPath {
        path: name.to_owned(),
        reason: "file > 4 GiB",
    })?;
    let namesize = u32::try_from(name.len() + 1).map_err(|_| Error::InvalidPath {
        path: name.to_owned(),
        reason: "name too long",
    })?;
    let fields = [
        ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
    Ok(())
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn parents_come_first_and_records_are_aligned() {
        let mut fs = Initramfs::new();
        fs.file("/opt/lib/modules/x/a.ko", b"abc".to_vec(), 0o644);
        let cpio = fs.to_cpio().unwrap();
        let text = String::from_utf8_lossy(&cpio);
        let opt = text.find("opt\0").unwrap();
        let lib = text.find("opt/lib\0").unwrap();
        let ko = text.find("opt/lib/modules/x/a.ko\0").unwrap();
        assert!(opt < lib && lib < ko);
        assert!(text.contains("TRAILER!!!\0"));
        assert_eq!(cpio.len() % 4, 0);
        assert!(cpio.starts_with(b"070701"));
    }

    #[test]
    fn cpio_tool_reads_the_archive() {
        let cpio_tool = crate::cmd::require("cpio").unwrap();
        let mut fs = Initramfs::new();
        fs.file("/init", b"#!/bin/sh\n".to_vec(), 0o755)
            .symlink("/bin/sh", "busybox");
        let bytes = fs.to_cpio().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("a.cpio");
        std::fs::write(&archive, bytes).unwrap();
        let out = std::process::Command::new(cpio_tool)
            .args(["-t", "-v", "-F"])
            .arg(&archive)
            .output()
            .unwrap();
        let listing = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(listing.contains("init"), "{listing}");
        assert!(listing.contains("bin/sh -> busybox"), "{listing}");
        assert!(
            listing
                .lines()
                .any(|l| l.starts_with("crw") && l.contains("dev/console")),
            "{listing}"
        );
    }
}
