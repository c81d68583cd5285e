//! The HTTP application: the `/ws` upgrade with admission control, health probes, and serving with
//! graceful shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{ConnectInfo, DefaultBodyLimit, MatchedPath, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_service::Service;
use tracing::info;
use voxd_core::SampleRate;

use crate::auth::Identity;
use crate::config::{Config, SUPPORTED_RATES};
use crate::metrics::Metrics;
use crate::providers::Providers;
use crate::sessions::{Refusal, SessionManager};

/// Read buffer of a session's WebSocket, in bytes. Small on purpose: tungstenite zero-fills the
/// buffer before every read, and a session reads twice per inbound frame (the frame, then "no
/// more"), so its default of 128 KiB would make that memset the largest cost of a session.
/// 2 KiB holds a whole 20 ms frame at every input rate (1,926 bytes at 48 kHz, with its header).
const WS_READ_BUFFER: usize = 2 * 1024;
/// Write buffer of a session's WebSocket, in bytes (flushed after every batch of outputs).
const WS_WRITE_BUFFER: usize = 8 * 1024;
/// Most a session's WebSocket buffers in user space when the socket does not drain, on top of one
/// message of up to `server.max_message_bytes` (the echo of a client's text can be that big).
/// Well above one batch of outputs (a few audio frames and events). A message that does not fit
/// an empty buffer fails and ends the session (`send_failed`).
const WS_MAX_WRITE_BUFFER: usize = 256 * 1024;

/// What every request handler and session shares.
pub struct AppState {
    /// The validated configuration.
    pub config: Config,
    /// The providers.
    pub providers: Providers,
    /// The session registry.
    pub sessions: Arc<SessionManager>,
    /// Tracks every session task, so shutdown can wait for them (axum does not).
    pub tracker: TaskTracker,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Per-IP and per-key admission quotas.
    pub quotas: Arc<crate::quotas::Quotas>,
}

impl AppState {
    /// State for `config`, with its providers built.
    ///
    /// # Errors
    /// When a provider cannot be built from its configuration.
    pub fn new(config: Config) -> Result<Arc<AppState>, voxd_backends::BuildError> {
        let providers = Providers::build(&config)?;
        AppState::with_providers(config, providers)
    }

    /// State for `config` with `providers` built by the caller: an embedding program (or a test)
    /// that brings a provider of its own.
    ///
    /// # Errors
    /// When the quotas in `config` are invalid.
    pub fn with_providers(
        mut config: Config,
        providers: Providers,
    ) -> Result<Arc<AppState>, voxd_backends::BuildError> {
        // Sessions stream their utterances to the ASR exactly when it can stream.
        config.session.streaming_asr = providers.streaming_asr.is_some();
        // The Silero model loads once per process, here, so a defect shows at start-up and the
        // first caller does not pay the 12-45 ms of loading.
        let silero = config
            .session
            .vad
            .as_ref()
            .is_none_or(|v| matches!(v.engine, voxd_core::vad::Engine::Silero { .. }));
        if silero {
            voxd_core::vad::silero::load().map_err(|e| voxd_backends::BuildError::Invalid {
                key: "vad.engine".into(),
                message: e.to_string(),
            })?;
        }
        let quotas = crate::quotas::Quotas::from_config(&config.file.quotas).map_err(|e| {
            voxd_backends::BuildError::Invalid {
                key: "quotas".into(),
                message: e.to_string(),
            }
        })?;
        Ok(Arc::new(AppState {
            quotas: Arc::new(quotas),
            sessions: SessionManager::new(config.file.server.max_sessions),
            config,
            providers,
            tracker: TaskTracker::new(),
            metrics: Metrics::new(),
        }))
    }
}

/// The router: `/ws`, `/v1/transcribe`, `/metrics`, `/health/live`, `/health/ready`,
/// `/health/startup`. Every route's requests are counted and timed.
pub fn router(state: Arc<AppState>) -> Router {
    // The transcribe handler enforces `max_body_bytes` itself (with a JSON 413); this only lifts
    // axum's 2 MB default for the multipart extractor to the same limit.
    let body_limit = DefaultBodyLimit::max(state.config.transcribe.max_body_bytes);
    let mut guarded = Router::new()
        .route("/ws", get(ws_upgrade))
        .route("/v1/tokens", post(crate::auth::mint))
        .route(
            "/v1/transcribe",
            post(crate::transcribe::transcribe).layer(body_limit),
        );
    if state.config.file.metrics.enabled {
        guarded = guarded.route("/metrics", get(metrics));
    }
    // API keys and the Origin allow-list guard everything but the health probes.
    let guarded = guarded.route_layer(middleware::from_fn_with_state(
        Arc::clone(&state),
        crate::auth::require,
    ));
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/health/startup", get(startup))
        .merge(guarded)
        .layer(middleware::from_fn_with_state(
            Arc::clone(&state),
            track_http,
        ))
        .with_state(state)
}

/// Counts and times every request by route and status.
async fn track_http(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let started = std::time::Instant::now();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", MatchedPath::as_str)
        .to_owned();
    let response = next.run(request).await;
    state
        .metrics
        .http_request(&route, response.status().as_u16(), started.elapsed());
    response
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// A JSON error response: `{"error": {"code", "message"}}`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

fn unavailable(state: &AppState, refusal: Refusal) -> Response {
    let (code, message) = match refusal {
        Refusal::Full => (
            "at_capacity",
            format!(
                "voxd is at its limit of {} concurrent sessions; retry later",
                state.sessions.max()
            ),
        ),
        Refusal::Draining => ("shutting_down", "voxd is shutting down".to_owned()),
    };
    let mut resp = error_response(StatusCode::SERVICE_UNAVAILABLE, code, &message);
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(state.config.file.server.retry_after_s),
    );
    resp
}

async fn ws_upgrade(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(who): Extension<Identity>,
    headers: HeaderMap,
    ws: crate::ws::WsUpgrade,
) -> Response {
    let rate = match params.get("sample_rate") {
        None => SampleRate::INTERNAL,
        Some(v) => match v.parse::<u32>() {
            Ok(hz) if SUPPORTED_RATES.contains(&hz) => SampleRate(hz),
            _ => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_sample_rate",
                    &format!("sample_rate={v:?} is not supported; use 8000, 16000, 24000 or 48000"),
                )
            }
        },
    };
    let ip = crate::quotas::client_ip(peer.ip(), &headers, state.quotas.trust_x_forwarded_for);
    let quota = match state.quotas.admit(ip, who.key_id()) {
        Ok(guard) => guard,
        Err(refusal) => {
            state.metrics.refused_by(refusal.code());
            tracing::debug!(%ip, key_id = who.key_id(), code = refusal.code(), "session refused by a quota");
            let mut resp = error_response(
                StatusCode::TOO_MANY_REQUESTS,
                refusal.code(),
                &refusal.message(),
            );
            resp.headers_mut().insert(
                header::RETRY_AFTER,
                HeaderValue::from(refusal.retry_after_s()),
            );
            return resp;
        }
    };
    let permit = match state.sessions.try_admit() {
        Ok(p) => p,
        Err(refusal) => {
            state.metrics.refused(refusal == Refusal::Draining);
            return unavailable(&state, refusal);
        }
    };
    let max = state.config.file.server.max_message_bytes;
    let tracker = state.tracker.clone();
    // tungstenite's 128 KiB default buffers would be most of a session's memory. Audio frames
    // are a few hundred bytes and voxd flushes after every batch of outputs, so small buffers
    // cost nothing (a larger message still arrives whole; the buffer grows for it).
    let config = tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .max_write_buffer_size(WS_MAX_WRITE_BUFFER + max);
    ws.on_upgrade(config, move |socket| {
        tracker.track_future(async move {
            crate::connection::run(socket, state, permit, rate).await;
            drop(quota);
        })
    })
}

async fn live() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let s = &state.sessions;
    let body = json!({
        "active_sessions": s.active(),
        "max_sessions": s.max(),
        "draining": s.is_draining(),
        "providers": state.providers.status(),
    });
    let (status, label) = if s.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining")
    } else if s.is_full() {
        (StatusCode::SERVICE_UNAVAILABLE, "full")
    } else if !state.providers.available() {
        // Every provider of some stage has an open breaker. It turns half-open (and this ready
        // again) when the cool-down ends, with or without traffic.
        (StatusCode::SERVICE_UNAVAILABLE, "providers_unavailable")
    } else {
        (StatusCode::OK, "ready")
    };
    let mut body = body;
    body["status"] = json!(label);
    (status, Json(body)).into_response()
}

/// Providers are built before the listener binds, so a server that answers has started.
async fn startup() -> Response {
    Json(json!({"status": "started"})).into_response()
}

/// Serves `state` on `listener` until `shutdown` completes, then drains: `/health/ready` turns 503
/// and new sessions are refused at once. Every live session is told (`shutdown`), finishes the
/// response in progress and closes with 1001. Sessions still open after `drain_timeout` are
/// closed; then the listener stops, and HTTP requests in flight get up to one more
/// `drain_timeout` to finish.
///
/// # Errors
/// When the listener fails.
pub async fn serve(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain_timeout: Duration,
) -> std::io::Result<()> {
    let app = router(Arc::clone(&state));
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
    let send_buffer = state.config.file.server.send_buffer_bytes;
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
        // HTTP/1.1 only (ARCHITECTURE.md, `src/app.rs`). The connection's IO is the `TcpStream`
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
