//! Accepting connections under limits a slow or hostile client cannot outlast, and
//! shutting down by a deadline.
//!
//! - at most `max_connections` connections are open; past that a new one is closed at once;
//! - a client has `header_read_timeout` to send a request's headers, counted from when the
//!   connection opens or goes idle between keep-alive requests (hyper's header timer), so a
//!   half-sent request or an idle connection is closed then; headers are bounded in bytes
//!   and count (`max_header_bytes`, `max_headers`); bodies have their own read timeout
//!   (`extract.rs`);
//! - on shutdown: stop accepting, let in-flight requests finish until `shutdown_timeout`,
//!   then `at_deadline` ends what is left (the engine ends their streams with an error
//!   event and frees their blocks), give their last events a moment, and return.
//!
//! Invariant: every connection task holds one of the `max_connections` permits until it
//! ends, and is watched by the graceful-shutdown tracker.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// The connection limits and the shutdown deadline.
#[derive(Debug, Clone, PartialEq)]
pub struct ConnLimits {
    pub max_connections: usize,
    pub header_read_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub shutdown_timeout: Duration,
}

impl Default for ConnLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 64 << 10,
            max_headers: 100,
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

/// How long cancelled streams get to send their last event after the deadline.
const LAST_WORDS: Duration = Duration::from_millis(500);

/// Serves `router` on `listener` under `limits` until `shutdown` resolves; see the module
/// header for what happens then.
pub async fn serve_connections(
    listener: TcpListener,
    router: Router,
    limits: ConnLimits,
    shutdown: impl Future<Output = ()>,
    at_deadline: impl FnOnce(),
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    tokio::pin!(shutdown);
    loop {
        let (tcp, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(
                "{} connections open: closing a new one",
                limits.max_connections
            );
            continue;
        };
        // Streamed tokens are small writes: with Nagle's algorithm each waited for the
        // client's delayed ACK (docs/benchmarks.md, `bench overhead`).
        let _ = tcp.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(tcp), service));
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => return Ok(()),
        () = tokio::time::sleep(limits.shutdown_timeout) => {}
    }
    tracing::warn!(
        "shutdown: requests still running after {:?} are cancelled",
        limits.shutdown_timeout
    );
    at_deadline();
    tokio::time::sleep(LAST_WORDS).await;
    Ok(())
}
