//! One inotify descriptor for every directory the agent watches (the device plugin directory, `dev`, `sys/module`,
//! the Modules directory), read on the runtime thread itself: no watcher thread, no channel per watcher.
//!
//! Each watched directory gets a `watch` counter that is bumped when something in it is created, removed, renamed,
//! written or has its attributes changed (never on reads, so the agent's own scans do not wake it). Events are only a
//! hint: every consumer also polls, because sysfs sends none and inotify can overflow.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use rustix::fs::inotify::{self, CreateFlags, ReadFlags, WatchFlags};
use rustix::io::Errno;
use tokio::io::unix::AsyncFd;
use tokio::sync::watch;
use tracing::{debug, warn};

/// Errors of the file-system watch.
#[derive(Debug, thiserror::Error)]
pub enum FsWatchError {
    /// The inotify descriptor could not be created or registered with the runtime.
    #[error("failed to create the inotify descriptor")]
    Init(#[source] std::io::Error),
    /// A directory could not be watched.
    #[error("failed to watch {path}")]
    AddWatch {
        /// The directory.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

type Watches = Arc<Mutex<HashMap<i32, watch::Sender<u64>>>>;

/// The shared watch; cheap to clone.
#[derive(Clone)]
pub struct FsWatch {
    fd: Arc<AsyncFd<OwnedFd>>,
    watches: Watches,
}

const CHANGES: WatchFlags = WatchFlags::CREATE
    .union(WatchFlags::DELETE)
    .union(WatchFlags::MOVED_FROM)
    .union(WatchFlags::MOVED_TO)
    .union(WatchFlags::CLOSE_WRITE)
    .union(WatchFlags::MODIFY)
    .union(WatchFlags::ATTRIB)
    .union(WatchFlags::DELETE_SELF)
    .union(WatchFlags::MOVE_SELF);

impl FsWatch {
    /// Creates the descriptor and starts reading it on the current runtime until `shutdown` turns true.
    pub fn spawn(mut shutdown: watch::Receiver<bool>) -> Result<Self, FsWatchError> {
        let fd = inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)
            .map_err(|e| FsWatchError::Init(e.into()))?;
        // `AsyncFd::new` is deprecated because an arbitrary `AsRawFd` may close or swap its descriptor while
        // registered; an `OwnedFd` owns its descriptor and returns the same one until it is dropped with the
        // `AsyncFd`, which is exactly the contract of the `unsafe` replacement (and this crate forbids `unsafe`).
        #[allow(deprecated)]
        let fd = Arc::new(AsyncFd::new(fd).map_err(FsWatchError::Init)?);
        let watches: Watches = Arc::default();
        let this = Self {
            fd: fd.clone(),
            watches: watches.clone(),
        };
        tokio::spawn(async move {
            // Room for a few dozen events per read; more simply wait for the next read.
            let mut buf = vec![MaybeUninit::<u8>::uninit(); 2048];
            loop {
                let guard = tokio::select! {
                    g = fd.readable() => g,
                    _ = shutdown.wait_for(|s| *s) => break,
                };
                let mut guard = match guard {
                    Ok(g) => g,
                    Err(e) => {
                        warn!(error = %e, "inotify descriptor failed; polling only");
                        break;
                    }
                };
                let mut woken: Vec<i32> = Vec::new();
                let mut overflow = false;
                let mut reader = inotify::Reader::new(fd.get_ref(), &mut buf);
                loop {
                    match reader.next() {
                        Ok(ev) => {
                            overflow |= ev.events().contains(ReadFlags::QUEUE_OVERFLOW);
                            if !woken.contains(&ev.wd()) {
                                woken.push(ev.wd());
                            }
                        }
                        Err(Errno::AGAIN) => {
                            guard.clear_ready();
                            break;
                        }
                        Err(Errno::INTR) => {}
                        Err(e) => {
                            warn!(error = %e, "failed to read inotify events");
                            guard.clear_ready();
                            break;
                        }
                    }
                }
                let watches = watches.lock().unwrap_or_else(PoisonError::into_inner);
                for (wd, tx) in watches.iter() {
                    if overflow || woken.contains(wd) {
                        tx.send_modify(|n| *n = n.wrapping_add(1));
                    }
                }
            }
        });
        Ok(this)
    }

    /// Watches `dir` (not recursively); the receiver's counter changes on each burst of changes in it.
    pub fn watch(&self, dir: &Path) -> Result<watch::Receiver<u64>, FsWatchError> {
        let wd = inotify::add_watch(self.fd.get_ref(), dir, CHANGES).map_err(|e| {
            FsWatchError::AddWatch {
                path: dir.to_path_buf(),
                source: e.into(),
            }
        })?;
        debug!(dir = %dir.display(), wd, "watching");
        let mut watches = self.watches.lock().unwrap_or_else(PoisonError::into_inner);
        // The same directory watched twice shares the descriptor: share the counter too.
        let tx = watches
            .entry(wd)
            .or_insert_with(|| watch::channel(0).0)
            .clone();
        Ok(tx.subscribe())
    }

    /// Like [`FsWatch::watch`], but a directory that cannot be watched (sysfs, missing) gives a receiver that never
    /// changes, with the reason logged: polling covers it.
    pub fn watch_or_poll(this: Option<&Self>, dir: &Path) -> watch::Receiver<u64> {
        match this.map(|w| w.watch(dir)) {
            Some(Ok(rx)) => rx,
            Some(Err(e)) => {
                debug!(dir = %dir.display(), error = %e, "no file-system events; polling");
                never()
            }
            None => never(),
        }
    }
}

/// A receiver that never changes: `changed()` on a receiver whose sender is gone returns at once with an error, so
/// the sender lives in a static.
fn never() -> watch::Receiver<u64> {
    static NEVER: std::sync::OnceLock<watch::Sender<u64>> = std::sync::OnceLock::new();
    NEVER.get_or_init(|| watch::channel(0).0).subscribe()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use std::time::Duration;

    #[tokio::test(flavor = "current_thread")]
    async fn changes_in_each_directory_wake_only_its_receiver() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        std::fs::create_dir(&a).unwrap();
        std::fs::create_dir(&b).unwrap();
        std::fs::write(a.join("existing"), "x").unwrap();
        let (_stop_tx, stop) = watch::channel(false);
        let w = FsWatch::spawn(stop).unwrap();
        let mut ra = w.watch(&a).unwrap();
        let mut rb = w.watch(&b).unwrap();
        // Reads do not wake.
        let _ = std::fs::read(a.join("existing")).unwrap();
        let _ = std::fs::read_dir(&a).unwrap().count();
        assert!(
            tokio::time::timeout(Duration::from_millis(200), ra.changed())
                .await
                .is_err()
        );
        std::fs::write(a.join("new"), "x").unwrap();
        tokio::time::timeout(Duration::from_secs(2), ra.changed())
            .await
            .unwrap()
            .unwrap();
        assert!(!rb.has_changed().unwrap());
        std::fs::remove_file(a.join("new")).unwrap();
        std::fs::write(b.join("x"), "x").unwrap();
        tokio::time::timeout(Duration::from_secs(2), rb.changed())
            .await
            .unwrap()
            .unwrap();
        // A directory that does not exist: an error, and the polling fallback never fires.
        assert!(w.watch(&tmp.path().join("missing")).is_err());
        let mut never = FsWatch::watch_or_poll(Some(&w), &tmp.path().join("missing"));
        assert!(
            tokio::time::timeout(Duration::from_millis(100), never.changed())
                .await
                .is_err()
        );
    }
}
