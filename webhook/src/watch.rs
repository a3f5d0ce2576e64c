//! Reload-on-change for files mounted from Kubernetes volumes, and the shutdown signal shared by every task.
//!
//! Kubernetes Secret and ConfigMap volumes publish a new version by swapping the `..data` symlink in the volume
//! directory, so a watch on the files themselves goes silent after the first swap. [`watch_dir`] therefore watches
//! the PARENT directory (any event there triggers a reload after a short debounce) and also polls at a fixed
//! interval, in case events are lost (inotify queue overflow, network file systems). Reload callbacks compare
//! contents and only swap when something changed, so spurious calls cost a few small reads.

use std::path::PathBuf;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::{mpsc, watch};

/// One shutdown signal reaching every task: clone it, `wait()` on it.
#[derive(Clone, Debug)]
pub struct Shutdown(watch::Receiver<bool>);

/// The sending side of [`Shutdown`].
#[derive(Debug)]
pub struct ShutdownTrigger(watch::Sender<bool>);

impl ShutdownTrigger {
    /// Signals every [`Shutdown`].
    pub fn trigger(&self) {
        self.0.send_replace(true);
    }
}

impl Shutdown {
    /// A new signal and its trigger.
    pub fn new() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger(tx), Shutdown(rx))
    }

    /// Resolves once shutdown has been triggered (or the trigger dropped).
    pub async fn wait(&mut self) {
        // An error means the trigger is gone: treat it as shutdown.
        let _ = self.0.wait_for(|v| *v).await;
    }

    /// Whether shutdown has been triggered.
    pub fn is_triggered(&self) -> bool {
        *self.0.borrow()
    }
}

/// Calls `reload` when anything in `dir` changes (debounced by 100 ms) and every `poll`, until shutdown.
///
/// If the directory cannot be watched (it does not exist yet, or inotify is unavailable), polling alone continues.
pub async fn watch_dir(
    dir: PathBuf,
    poll: Duration,
    mut reload: impl FnMut() + Send,
    mut shutdown: Shutdown,
) {
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
        if res.is_ok() {
            // A full channel already holds a pending reload.
            let _ = tx.try_send(());
        }
    });
    let _watcher = match watcher {
        Ok(mut w) => match w.watch(&dir, RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "failed to watch directory; polling only");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "failed to create a file watcher; polling only");
            None
        }
    };
    let mut ticker = tokio::time::interval(poll);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.wait() => return,
            _ = ticker.tick() => reload(),
            Some(()) = rx.recv() => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                while rx.try_recv().is_ok() {}
                reload();
            }
        }
    }
}
