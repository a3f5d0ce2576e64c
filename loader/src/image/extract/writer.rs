//! A background writer for regular files, so decompression and tar parsing (the extractor's thread) overlap
//! with the system calls that create files and copy their data into the page cache (this thread).
//!
//! The extractor sends, in order, the pieces of each file ([`Op::Piece`]): the first opens it (the file the
//! extractor opened itself, or a path this thread creates with `O_CREAT|O_EXCL`, which never follows a
//! symlink), each carries at most [`CHUNK`] bytes, and the last sets the exact mode; a file that fits in one
//! buffer is a single message. The extractor only lets this thread create a file
//! where nothing can exist yet (in a directory the extractor created, under a name it has not used), and
//! waits for the queue to drain ([`Writer::barrier`]) before it looks at or changes anything else on disk, so
//! the order of the layer's entries is kept. Operations travel in batches ([`BATCH_OPS`], [`BATCH_BYTES`]),
//! so the thread is woken once per batch rather than once per file. Content travels in buffers of [`CHUNK`] bytes that this thread
//! hands back once written ([`Writer::buffer`]): at most [`BUFFERS`] exist, which bounds the memory in
//! flight, and a buffer is zeroed once, when it is made, not for every piece. The first error stops the
//! writing and is reported by [`Writer::check`], [`Writer::barrier`] or [`Writer::finish`].

use std::fs::{File, OpenOptions, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, channel, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

/// Size of a content buffer (the largest piece sent in one message).
pub(super) const CHUNK: usize = 256 << 10;
/// Content buffers at most (so at most `BUFFERS * CHUNK` bytes of content are in memory).
const BUFFERS: usize = 24;
/// Operations sent together (one wake-up of the thread): at most this many, or once they carry
/// [`BATCH_BYTES`] of content.
const BATCH_OPS: usize = 16;
const BATCH_BYTES: usize = 1 << 20;
/// Batches queued at most.
const QUEUE: usize = 8;

/// Opens a file: the one the extractor opened, or one this thread creates at `path` with `mode`.
pub(super) struct Start {
    pub(super) path: PathBuf,
    pub(super) file: Option<File>,
    pub(super) mode: u32,
}

/// One step of writing the files.
pub(super) enum Op {
    /// A piece of a regular file: `start` opens it (on its first piece), then the first `len` bytes of `buf`
    /// (a buffer from [`Writer::buffer`]) are written, then `end` closes it with its exact mode (on its last
    /// piece; the mode given at creation is filtered by the umask). A file that fits in one buffer is one
    /// operation.
    Piece {
        start: Option<Start>,
        data: Option<(Vec<u8>, usize)>,
        end: Option<u32>,
    },
    /// Acknowledged once everything before it is done.
    Barrier(SyncSender<()>),
}

#[derive(Default)]
struct Failure {
    failed: AtomicBool,
    first: Mutex<Option<(PathBuf, io::Error)>>,
}

impl Failure {
    fn record(&self, path: PathBuf, e: io::Error) {
        self.failed.store(true, Ordering::Relaxed);
        if let Ok(mut f) = self.first.lock() {
            f.get_or_insert((path, e));
        }
    }
}

/// The writer thread and its queue.
pub(super) struct Writer {
    tx: Option<SyncSender<Vec<Op>>>,
    /// Operations not sent yet, and the content they carry.
    batch: Vec<Op>,
    batch_bytes: usize,
    thread: Option<JoinHandle<()>>,
    failure: Arc<Failure>,
    /// Buffers handed back by the thread.
    spare: Receiver<Vec<u8>>,
    /// Buffers made so far.
    made: usize,
    /// Buffers taken but not used.
    unused: Vec<Vec<u8>>,
}

/// The process's umask, when it can be read (`/proc/self/status`).
fn umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

/// Opens the file of `start`.
fn open(start: Start) -> Result<(File, PathBuf), (PathBuf, io::Error)> {
    match start.file {
        Some(f) => Ok((f, start.path)),
        None => match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(start.mode)
            .open(&start.path)
        {
            Ok(f) => Ok((f, start.path)),
            Err(e) => Err((start.path, e)),
        },
    }
}

fn run(rx: &Receiver<Vec<Op>>, spare: &Sender<Vec<u8>>, failure: &Failure) {
    // Files are created with their mode: it only needs setting again when the umask took bits away.
    let umask = umask();
    let mut current: Option<(File, PathBuf)> = None;
    for op in rx.iter().flatten() {
        let (start, data, end) = match op {
            Op::Barrier(ack) => {
                let _ = ack.send(());
                continue;
            }
            Op::Piece { start, data, end } => (start, data, end),
        };
        let res = (|| {
            if failure.failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            if let Some(s) = start {
                current = Some(open(s)?);
            }
            if let (Some((buf, len)), Some((f, path))) = (&data, current.as_mut()) {
                f.write_all(buf.get(..*len).unwrap_or(buf))
                    .map_err(|e| (path.clone(), e))?;
            }
            if let Some(mode) = end
                && let Some((f, path)) = current.take()
                && umask.is_none_or(|u| mode & u != 0)
            {
                f.set_permissions(Permissions::from_mode(mode))
                    .map_err(|e| (path, e))?;
            }
            Ok(())
        })();
        // The extractor may have stopped waiting for buffers: then this one is just dropped.
        if let Some((buf, _)) = data {
            let _ = spare.send(buf);
        }
        if let Err((path, e)) = res {
            current = None;
            failure.record(path, e);
        }
    }
}

impl Writer {
    /// Starts the thread.
    pub(super) fn start() -> io::Result<Self> {
        let (tx, rx) = sync_channel::<Vec<Op>>(QUEUE);
        let (spare_tx, spare) = channel();
        let failure = Arc::new(Failure::default());
        let f = failure.clone();
        let thread = std::thread::Builder::new()
            .name("kmm-extract-write".into())
            .spawn(move || run(&rx, &spare_tx, &f))?;
        Ok(Self {
            tx: Some(tx),
            batch: Vec::new(),
            batch_bytes: 0,
            thread: Some(thread),
            failure,
            spare,
            made: 0,
            unused: Vec::new(),
        })
    }

    /// A content buffer of [`CHUNK`] bytes: one the thread has written and handed back, a new one while fewer
    /// than [`BUFFERS`] exist, else the next one the thread hands back (waiting for it).
    pub(super) fn buffer(&mut self) -> Result<Vec<u8>, (PathBuf, io::Error)> {
        if let Some(buf) = self.unused.pop() {
            return Ok(buf);
        }
        if let Ok(buf) = self.spare.try_recv() {
            return Ok(buf);
        }
        if self.made < BUFFERS {
            self.made += 1;
            return Ok(vec![0; CHUNK]);
        }
        // Some buffers may wait in the batch: send it before waiting for one to come back.
        self.flush()?;
        self.spare.recv().map_err(|_| Self::gone())
    }

    /// Returns a buffer from [`Writer::buffer`] that was not sent.
    pub(super) fn unused(&mut self, buf: Vec<u8>) {
        self.unused.push(buf);
    }

    fn gone() -> (PathBuf, io::Error) {
        (
            PathBuf::new(),
            io::Error::new(io::ErrorKind::BrokenPipe, "the writer thread stopped"),
        )
    }

    /// Queues an operation: batched, the batch is sent when full (blocks while the queue is full).
    pub(super) fn send(&mut self, op: Op) -> Result<(), (PathBuf, io::Error)> {
        if let Op::Piece {
            data: Some((_, len)),
            ..
        } = &op
        {
            self.batch_bytes += len;
        }
        self.batch.push(op);
        if self.batch.len() >= BATCH_OPS || self.batch_bytes >= BATCH_BYTES {
            self.flush()?;
        }
        Ok(())
    }

    /// Sends the batch.
    fn flush(&mut self) -> Result<(), (PathBuf, io::Error)> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        match &self.tx {
            Some(tx) => tx.send(batch).map_err(|_| Self::gone()),
            None => Err(Self::gone()),
        }
    }

    /// Waits until everything queued so far is done; the first error, if any.
    pub(super) fn barrier(&mut self) -> Result<(), (PathBuf, io::Error)> {
        let (ack_tx, ack_rx) = sync_channel(1);
        self.batch.push(Op::Barrier(ack_tx));
        self.flush()?;
        ack_rx.recv().map_err(|_| Self::gone())?;
        self.check()
    }

    /// The first error so far, if any (cheap; called between entries).
    pub(super) fn check(&self) -> Result<(), (PathBuf, io::Error)> {
        if !self.failure.failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        match self.failure.first.lock().ok().and_then(|mut f| f.take()) {
            Some(e) => Err(e),
            None => Err((PathBuf::new(), io::Error::other("an earlier write failed"))),
        }
    }

    /// Waits until everything queued is written and stops the thread; the first error, if any.
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
        let _ = self.flush();
        drop(self.tx.take());
        self.thread.take().is_none_or(|t| t.join().is_ok())
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
