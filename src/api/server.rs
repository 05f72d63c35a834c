//! The API's HTTP/1.1 server, bounded against the clients it serves: a watched pod can reach
//! this port, so every connection it opens costs a bounded amount for a bounded time.
//!
//! - At most `api.max_connections` connections are served at once; one more is accepted and
//!   closed at once (counted), so the process never runs out of descriptors for its own
//!   outgoing connections (Alertmanager, Prometheus, the bucket) and the kernel's backlog
//!   never fills with connections nobody will serve.
//! - A client has `api.header_timeout` to send a request's headers, counted from the
//!   connection's start and again from the end of each response: a half-open connection and
//!   an idle kept-alive one are closed alike.
//! - A request has `api.request_timeout` from its headers to its response, and a response
//!   that the client stops reading is cut after the same time without progress.
//! - The probes can have a listener of their own (`api.probe_listen`) that answers however
//!   many connections the API's port holds.
//!
//! Enters: a bound listener and the routes. Leaves: nothing; it serves until cancelled, then
//! lets the requests in flight finish for a few seconds.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tower_service::Service as _;

use crate::config::ApiConfig;

/// What the HTTP server refused or cut short, for `/metrics`.
#[derive(Debug, Default)]
pub struct HttpStats {
    /// Connections being served now.
    pub open: AtomicU64,
    /// Connections closed on arrival because `api.max_connections` were open.
    pub refused: AtomicU64,
    /// Requests answered 503 after `api.request_timeout`.
    pub timed_out: AtomicU64,
    /// State-changing requests refused as cross-site, or for a `Host` the API does not serve.
    pub cross_site: AtomicU64,
    /// Sign-ins with a wrong token.
    pub signin_failed: AtomicU64,
    /// Sign-ins refused because their client failed too often.
    pub signin_throttled: AtomicU64,
}

/// The bounds of one listener.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
}

impl Limits {
    pub fn of(config: &ApiConfig) -> Limits {
        Limits {
            max_connections: config.max_connections,
            header_timeout: config.header_timeout,
            request_timeout: config.request_timeout,
        }
    }
}

/// How long requests in flight may take to finish once the server is asked to stop.
const GRACE: Duration = Duration::from_secs(5);
/// The pause after a failed accept (out of descriptors, say): the error would come back at
/// once and spin the loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// The answer of a connection over the bound, written without waiting before it is closed.
const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 1\r\nContent-Length: 0\r\n\r\n";

/// Counts a connection as open while it lives.
struct Open(Arc<HttpStats>);

impl Open {
    fn new(stats: &Arc<HttpStats>) -> Open {
        stats.open.fetch_add(1, Ordering::Relaxed);
        Open(stats.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Serves `app` on `listener` within `limits` until `cancel` fires. Each request carries its
/// client's address as [`ConnectInfo`].
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stats: Arc<HttpStats>,
    cancel: CancellationToken,
) {
    let permits = Arc::new(Semaphore::new(limits.max_connections));
    let mut accept_errors = 0u64;
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // One line per thousand failures: a flood must not flood the log too.
                    if accept_errors.is_multiple_of(1000) {
                        tracing::error!("api: cannot accept a connection: {e}");
                    }
                    accept_errors += 1;
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            // A well-behaved client learns why; nothing waits for it to read this.
            let _ = stream.try_write(BUSY);
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let open = Open::new(&stats);
        let app = app.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let _held = (permit, open);
            let service =
                hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
                    request.extensions_mut().insert(ConnectInfo(peer));
                    // A router is always ready: no `poll_ready` needed.
                    app.clone().call(request)
                });
            let mut builder = hyper::server::conn::http1::Builder::new();
            builder
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_timeout)
                .keep_alive(true);
            let io = Stalling::new(stream, limits.request_timeout);
            let connection = builder.serve_connection(TokioIo::new(io), service);
            tokio::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = cancel.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = tokio::time::timeout(GRACE, connection).await;
                }
            }
        });
    }
    // Stopped accepting: wait for the connections in flight, a grace period at most.
    let all = u32::try_from(limits.max_connections).unwrap_or(u32::MAX);
    let _ = tokio::time::timeout(GRACE, permits.acquire_many(all)).await;
}

/// A connection whose writes fail once they make no progress for `limit`: a client that
/// asks for a response and never reads it would otherwise hold its connection (and one of
/// `api.max_connections`) for good.
#[derive(Debug)]
struct Stalling<T> {
    io: T,
    limit: Duration,
    /// Running while a write waits for the client to read.
    stalled: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl<T> Stalling<T> {
    fn new(io: T, limit: Duration) -> Stalling<T> {
        Stalling {
            io,
            limit,
            stalled: None,
        }
    }
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Stalling<T> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Stalling<T> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        use std::future::Future as _;
        use std::task::Poll;
        let this = &mut *self;
        match std::pin::Pin::new(&mut this.io).poll_write(cx, buf) {
            Poll::Ready(written) => {
                this.stalled = None;
                Poll::Ready(written)
            }
            Poll::Pending => {
                let limit = this.limit;
                let stalled = this
                    .stalled
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
                match stalled.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "the client read nothing of its response for api.request_timeout",
                    ))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The client's address, where the server recorded it (not in handler tests that call the
/// router directly).
pub fn client(request: &axum::extract::Request) -> Option<SocketAddr> {
    request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    #[tokio::test]
    async fn a_write_the_client_never_reads_fails_after_the_limit() {
        // The client's end stays open, unread.
        let (ours, _theirs) = tokio::io::duplex(64);
        let mut io = Stalling::new(ours, Duration::from_millis(100));
        // Within the client's buffer: written at once.
        io.write_all(&[1; 64]).await.unwrap();
        let stuck = io.write_all(&[2; 64]).await.unwrap_err();
        assert_eq!(stuck.kind(), std::io::ErrorKind::TimedOut);
        // A client that reads, however slowly, is never cut: each read is progress.
        let (ours, mut reader) = tokio::io::duplex(64);
        let mut io = Stalling::new(ours, Duration::from_secs(2));
        let slow = tokio::spawn(async move {
            let mut buf = [0u8; 16];
            let mut read = 0;
            while read < 64 * 10 {
                tokio::time::sleep(Duration::from_millis(5)).await;
                read += reader.read(&mut buf).await.unwrap();
            }
        });
        io.write_all(&[3; 64 * 10]).await.unwrap();
        slow.await.unwrap();
    }
}
