//! The TLS accept loop: HTTP/1.1 (keep-alive) and HTTP/2 on one port with hyper-util's auto builder, a TLS
//! handshake timeout and a request timeout against slow clients, and a graceful drain on shutdown: stop accepting,
//! let in-flight requests finish (connections get a GOAWAY / `Connection: close`), give up after the drain timeout.
//!
//! The request timeout is kept per connection, not per request: a request is busy from its first byte (on HTTP/2,
//! negotiated by ALPN, from the call of the service, as idle HTTP/2 connections receive PING frames) until its
//! answer is ready; a watchdog on the connection, waking four times per timeout, closes the connection when a
//! request has been busy longer than the timeout. This covers a trickled head, a trickled body and anything in
//! between, and costs no timer per request: arming two tokio timers per request (hyper's header read timeout and a
//! timeout layer) cost a third of the webhook's throughput (`cargo xtask bench webhook`). Idle keep-alive
//! connections are not busy and are left open, as the API server reuses them.

use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

use crate::watch::Shutdown;

/// Timeouts of the accept loop.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// Time allowed for the TLS handshake.
    pub handshake_timeout: Duration,
    /// Time allowed for a request, from its first byte to its answer.
    pub request_timeout: Duration,
    /// Time allowed for in-flight requests after shutdown starts.
    pub drain_timeout: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            drain_timeout: Duration::from_secs(20),
        }
    }
}

/// Serves `app` over TLS on `listener` until `shutdown`, then drains. Returns whether every connection finished in
/// time.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    app: Router,
    mut shutdown: Shutdown,
    opts: ServeOptions,
) -> bool {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // No timer for HTTP/1: the watchdog replaces hyper's header read timeout (see the module docs).
    builder.http1().keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(30));
    let graceful = GracefulShutdown::new();

    loop {
        let (tcp, peer) = tokio::select! {
            _ = shutdown.wait() => break,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "failed to accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(opts.handshake_timeout, acceptor.accept(tcp)).await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            };
            let activity = Arc::new(Activity::default());
            let busy = Arc::clone(&activity);
            let service = hyper::service::service_fn(move |req: http::Request<Incoming>| {
                busy.start_request();
                let answer = app.clone().oneshot(req);
                let busy = Arc::clone(&busy);
                async move {
                    let res = answer.await;
                    busy.end_request();
                    res
                }
            });
            // HTTP/2 sends frames that are not requests (PING, SETTINGS, WINDOW_UPDATE): there a request is busy only
            // from the call of the service. On HTTP/1 every byte belongs to a request.
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2".as_slice());
            let io = Watched {
                inner: tls,
                activity: Arc::clone(&activity),
                reads_are_requests: !h2,
            };
            let conn = builder
                .serve_connection(TokioIo::new(io), service)
                .into_owned();
            // The connection gets a task of its own that polls nothing else; the watchdog stays in this one and
            // aborts it (a `select!` of both would poll the watchdog's timer at every wake-up of the connection).
            // `closed` resolves when the connection's task ends (its sender is dropped), so the watchdog and its
            // task's memory go with the connection, not at the next tick.
            let (ended, closed) = tokio::sync::oneshot::channel::<()>();
            let served = tokio::spawn(async move {
                let _ended = ended;
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            })
            .abort_handle();
            if watchdog(&activity, opts.request_timeout, closed).await {
                served.abort();
                tracing::debug!(%peer, timeout = ?opts.request_timeout,
                    "request not read and answered in time; closing the connection");
            }
        });
    }
    drop(listener);
    tracing::info!("stopped accepting; draining in-flight requests");
    tokio::select! {
        () = graceful.shutdown() => true,
        () = tokio::time::sleep(opts.drain_timeout) => {
            tracing::warn!("drain timeout reached; closing remaining connections");
            false
        }
    }
}

/// Milliseconds since the first call (never 0).
fn now_ms() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Whether a connection has a request in progress, and since when.
#[derive(Debug, Default)]
struct Activity {
    /// [`now_ms`] when the current request began; 0 when idle.
    busy_since: AtomicU64,
    /// Requests handed to the service and not answered yet (more than one on HTTP/2).
    in_flight: AtomicU32,
}

impl Activity {
    /// Bytes arrived: a request began unless one is already in progress.
    fn mark_busy(&self) {
        if self.busy_since.load(Ordering::Relaxed) == 0 {
            self.busy_since.store(now_ms(), Ordering::Relaxed);
        }
    }

    fn start_request(&self) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.mark_busy();
    }

    fn end_request(&self) {
        if self.in_flight.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.busy_since.store(0, Ordering::Relaxed);
        }
    }

    /// How long the current request has been in progress.
    fn busy_for(&self) -> Option<Duration> {
        match self.busy_since.load(Ordering::Relaxed) {
            0 => None,
            since => Some(Duration::from_millis(now_ms().saturating_sub(since))),
        }
    }
}

/// Returns true once a request on the connection has been in progress for longer than `limit` (checked four times
/// per `limit`), false as soon as `closed` resolves (the connection ended).
async fn watchdog(
    activity: &Activity,
    limit: Duration,
    mut closed: tokio::sync::oneshot::Receiver<()>,
) -> bool {
    let mut ticks = tokio::time::interval((limit / 4).max(Duration::from_millis(10)));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut closed => return false,
            _ = ticks.tick() => {
                if activity.busy_for().is_some_and(|d| d > limit) {
                    return true;
                }
            }
        }
    }
}

/// The connection's stream, marking the connection busy when request bytes arrive.
struct Watched<T> {
    inner: T,
    activity: Arc<Activity>,
    /// Whether bytes read start a request (HTTP/1).
    reads_are_requests: bool,
}

impl<T: AsyncRead + Unpin> AsyncRead for Watched<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if self.reads_are_requests && buf.filled().len() > before {
            self.activity.mark_busy();
        }
        res
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Watched<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn a_request_is_busy_from_its_first_byte_until_its_last_answer() {
        let a = Activity::default();
        assert_eq!(a.busy_for(), None);
        a.mark_busy();
        let first = a.busy_since.load(Ordering::Relaxed);
        assert_ne!(first, 0);
        std::thread::sleep(Duration::from_millis(5));
        // More bytes of the same request, then the service call, keep the start.
        a.mark_busy();
        a.start_request();
        assert_eq!(a.busy_since.load(Ordering::Relaxed), first);
        assert!(a.busy_for().is_some_and(|d| d >= Duration::from_millis(5)));
        // HTTP/2: a second stream; the connection stays busy until both are answered.
        a.start_request();
        a.end_request();
        assert!(a.busy_for().is_some());
        a.end_request();
        assert_eq!(a.busy_for(), None);
    }

    #[tokio::test]
    async fn the_watchdog_fires_only_for_a_request_busy_too_long() {
        let a = Activity::default();
        let limit = Duration::from_millis(40);
        let (_open, closed) = tokio::sync::oneshot::channel::<()>();
        let idle =
            tokio::time::timeout(Duration::from_millis(200), watchdog(&a, limit, closed)).await;
        assert!(idle.is_err(), "fired on an idle connection");
        a.mark_busy();
        let started = Instant::now();
        let (_open, closed) = tokio::sync::oneshot::channel::<()>();
        let fired = tokio::time::timeout(Duration::from_secs(5), watchdog(&a, limit, closed))
            .await
            .unwrap();
        let waited = started.elapsed();
        assert!(fired && waited >= limit, "{fired} {waited:?}");
        // A connection that ends stops the watchdog at once, without firing, even while busy and with a long limit.
        let (ended, closed) = tokio::sync::oneshot::channel::<()>();
        drop(ended);
        let started = Instant::now();
        let fired = tokio::time::timeout(
            Duration::from_secs(5),
            watchdog(&a, Duration::from_secs(60), closed),
        )
        .await
        .unwrap();
        assert!(!fired && started.elapsed() < Duration::from_secs(1));
    }
}
