//! A background writer for file contents, so decompression and tar parsing (one thread) overlap with the
//! `write` system calls that copy the data into the page cache (this thread).
//!
//! The extractor creates every file itself (checks, `O_CREAT|O_EXCL`, no symlink followed) and hands the open
//! file plus its content, in pieces of at most [`CHUNK`] bytes, to this thread, which writes them with
//! `pwrite` at their offsets and then sets the exact mode. The queue holds at most [`QUEUE`] pieces, which
//! bounds the memory in flight. The first write error stops the writing (later pieces are dropped) and is
//! reported by [`Writer::check`] or [`Writer::finish`].

use std::fs::{File, Permissions};
use std::io;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Largest piece of content sent in one message.
pub(super) const CHUNK: usize = 512 << 10;
/// Pieces queued at most (so at most `QUEUE * CHUNK` bytes wait in memory).
const QUEUE: usize = 32;

/// One piece of a file's content.
pub(super) struct Piece {
    pub file: Arc<File>,
    pub offset: u64,
    pub data: Vec<u8>,
    /// Set on the last piece of the file: the mode to set once the content is written.
    pub mode: Option<u32>,
    /// The file's path, for the error.
    pub path: PathBuf,
}

#[derive(Default)]
struct Failure {
    failed: AtomicBool,
    first: Mutex<Option<(PathBuf, io::Error)>>,
}

/// The writer thread and its queue.
pub(super) struct Writer {
    tx: Option<SyncSender<Piece>>,
    thread: Option<JoinHandle<()>>,
    failure: Arc<Failure>,
}

fn write_all(rx: &Receiver<Piece>, failure: &Failure) {
    for p in rx {
        if failure.failed.load(Ordering::Relaxed) {
            continue;
        }
        let mut res = p.file.write_all_at(&p.data, p.offset);
        if res.is_ok()
            && let Some(mode) = p.mode
        {
            res = p.file.set_permissions(Permissions::from_mode(mode));
        }
        if let Err(e) = res {
            failure.failed.store(true, Ordering::Relaxed);
            if let Ok(mut f) = failure.first.lock() {
                f.get_or_insert((p.path, e));
            }
        }
    }
}

impl Writer {
    /// Starts the thread.
    pub(super) fn start() -> io::Result<Self> {
        let (tx, rx) = sync_channel::<Piece>(QUEUE);
        let failure = Arc::new(Failure::default());
        let f = failure.clone();
        let thread = std::thread::Builder::new()
            .name("kmm-extract-write".into())
            .spawn(move || write_all(&rx, &f))?;
        Ok(Self {
            tx: Some(tx),
            thread: Some(thread),
            failure,
        })
    }

    /// Queues a piece (blocks while the queue is full).
    pub(super) fn send(&self, piece: Piece) -> Result<(), (PathBuf, io::Error)> {
        let gone = |path: PathBuf| {
            (
                path,
                io::Error::new(io::ErrorKind::BrokenPipe, "the writer thread stopped"),
            )
        };
        match &self.tx {
            Some(tx) => tx.send(piece).map_err(|e| gone(e.0.path)),
            None => Err(gone(piece.path)),
        }
    }

    fn take_failure(&self) -> Option<(PathBuf, io::Error)> {
        if !self.failure.failed.load(Ordering::Relaxed) {
            return None;
        }
        self.failure.first.lock().ok().and_then(|mut f| f.take())
    }

    /// The first write error so far, if any (cheap; called between entries).
    pub(super) fn check(&self) -> Result<(), (PathBuf, io::Error)> {
        match self.take_failure() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Waits until everything queued is written; the first write error, if any.
    pub(super) fn finish(mut self) -> Result<(), (PathBuf, io::Error)> {
        if !self.stop() {
            return Err((
                PathBuf::new(),
                io::Error::other("the writer thread panicked"),
            ));
        }
        self.check()
    }

    /// Closes the queue and joins the thread; false when the thread panicked.
    fn stop(&mut self) -> bool {
        drop(self.tx.take());
        self.thread.take().is_none_or(|t| t.join().is_ok())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
