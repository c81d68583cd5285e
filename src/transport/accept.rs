//! voxd's accept loop: HTTP/1.1 connections served by hyper, each on its own task, with the
//! socket options every connection gets, and graceful shutdown (a lame-duck grace that still
//! admits, then sessions drain, then the listener stops, then requests in flight get one more
//! drain timeout).
//!
//! It serves whatever `Router` it is given (`crate::serve` gives it `http::router`): the routes
//! are not its business. Not `axum::serve`: that one wraps each connection in hyper-util's
//! protocol-sniffing `Rewind`, a private type an upgraded session could not take back; here the
//! connection's IO is `TokioIo<TcpStream>`, which `ws.rs` downcasts to.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::Router;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use tracing::info;

use crate::state::AppState;

/// Serves `app` on `listener` until `shutdown` completes, then drains `state`'s sessions.
/// `/health/ready` turns 503 at once, but new sessions are still admitted and served for the
/// config's `drain_grace` (the lame duck; `SessionManager::end_grace` cuts it short). Then new
/// sessions are refused, and every live session is told (`shutdown`), finishes the response in
/// progress and closes with 1001. Sessions still open `drain_timeout` after the grace are closed;
/// then the listener stops, and HTTP requests in flight get up to one more `drain_timeout` to
/// finish.
///
/// # Errors
/// When the listener fails.
pub(crate) async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain_timeout: Duration,
) -> std::io::Result<()> {
    // Histogram samples are buffered until drained: drain them even when nobody scrapes.
    let upkeep_state = Arc::clone(&state);
    let upkeep = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        loop {
            tick.tick().await;
            upkeep_state.metrics.upkeep();
            upkeep_state.quotas.sweep();
        }
    });
    // The listener stays open while sessions drain, so probes see 503 rather than a refused
    // connection.
    let stop = CancellationToken::new();
    let drainer = {
        let state = Arc::clone(&state);
        let stop = stop.clone();
        tokio::spawn(async move {
            shutdown.await;
            // The lame duck: balancers learn from the failing readiness (or from the endpoints'
            // removal) that this instance is going, and callers who arrive meanwhile are served,
            // not refused. The drain timeout starts when it ends, so `drain_timeout_s` keeps its
            // meaning: how long a told session may take.
            let grace = state.config.drain_grace();
            if !grace.is_zero() {
                info!(
                    sessions = state.sessions.active(),
                    drain_grace_s = grace.as_secs_f64(),
                    "lame duck: not ready, still admitting new sessions"
                );
                state.sessions.lame_duck();
                tokio::select! {
                    () = tokio::time::sleep(grace) => {}
                    () = state.sessions.grace_ended() => info!("the grace was cut short"),
                }
            }
            info!(
                sessions = state.sessions.active(),
                drain_timeout_s = drain_timeout.as_secs_f64(),
                "draining: refusing new sessions, finishing responses in progress"
            );
            state.sessions.drain(drain_timeout);
            state.tracker.close();
            if tokio::time::timeout(drain_timeout, state.tracker.wait())
                .await
                .is_err()
            {
                info!(
                    remaining = state.sessions.active(),
                    "drain deadline: closing the remaining sessions"
                );
                state.sessions.close_all();
                let _ = tokio::time::timeout(Duration::from_secs(2), state.tracker.wait()).await;
            }
            stop.cancel();
        })
    };
    let send_buffer = state.config.server.send_buffer_bytes;
    // The HTTP connections (before any upgrade; an upgraded session is `state.tracker`'s).
    let connections = TaskTracker::new();
    loop {
        let (tcp, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    if accept_failed(e) {
                        // Out of file descriptors, most likely: wait for sessions to end rather
                        // than spin, unless the server is stopping.
                        tokio::select! {
                            () = tokio::time::sleep(Duration::from_secs(1)) => {}
                            () = stop.cancelled() => break,
                        }
                    }
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        tune(&tcp, send_buffer);
        let router = app.clone();
        let service = service_fn(move |req: hyper::Request<Incoming>| {
            let mut req = req.map(Body::new);
            req.extensions_mut().insert(ConnectInfo(peer));
            router.clone().call(req)
        });
        // HTTP/1.1 only (ARCHITECTURE.md, "Entry points"). The connection's IO is the `TcpStream`
        // itself, so an upgraded session can take it back from hyper (`ws.rs`).
        let conn = http1::Builder::new()
            .timer(TokioTimer::new())
            .serve_connection(TokioIo::new(tcp), service)
            .with_upgrades();
        let stop = stop.clone();
        connections.spawn(async move {
            let mut conn = std::pin::pin!(conn);
            let result = tokio::select! {
                result = conn.as_mut() => result,
                () = stop.cancelled() => {
                    // Requests in flight finish; an idle keep-alive connection closes now.
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = result {
                tracing::trace!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    // Requests in flight (an upload, say) get up to one more drain timeout; what is left then is
    // dropped with the runtime.
    connections.close();
    if tokio::time::timeout(drain_timeout, connections.wait())
        .await
        .is_err()
    {
        info!(
            connections = connections.len(),
            "stopping with HTTP requests still in flight"
        );
    }
    upkeep.abort();
    drainer.abort();
    Ok(())
}

/// Socket options of an accepted connection. Small control messages must not wait for Nagle's
/// algorithm (~40 ms on loopback).
fn tune(tcp: &TcpStream, send_buffer: usize) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "cannot set TCP_NODELAY");
    }
    if send_buffer > 0 {
        if let Err(e) = socket2::SockRef::from(tcp).set_send_buffer_size(send_buffer) {
            tracing::debug!(error = %e, "cannot set SO_SNDBUF");
        }
    }
}

/// Whether a failed `accept` should pause accepting. A connection that was reset before it was
/// accepted is the client's business; anything else (out of file descriptors, above all) is
/// logged.
fn accept_failed(e: std::io::Error) -> bool {
    use std::io::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::ConnectionRefused | ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset
    ) {
        return false;
    }
    tracing::error!(error = %e, "accept failed; accepting again in 1 s");
    true
}
