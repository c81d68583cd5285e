//! `GET /ws`: the upgrade handler. It checks the requested sample rate, then admits the session
//! (the client's quotas first, then the registry's `max_sessions`), and hands the upgraded socket
//! to the session driver in a task the state's tracker waits for at shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::Extension;
use voxd_core::SampleRate;

use super::client_ip::client_ip;
use super::error::{error_response, quota_refused, unavailable};
use crate::access::Identity;
use crate::config::SUPPORTED_RATES;
use crate::registry::Refusal;
use crate::session;
use crate::state::AppState;
use crate::transport::WsUpgrade;
use crate::wire::VoxdCodec;

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

pub(super) async fn ws_upgrade(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(who): Extension<Identity>,
    headers: HeaderMap,
    ws: WsUpgrade,
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
    let ip = client_ip(peer.ip(), &headers, state.quotas.trust_x_forwarded_for);
    let quota = match state.quotas.admit(ip, who.key_id()) {
        Ok(guard) => guard,
        Err(refusal) => {
            state.metrics.refused_by(refusal.code());
            tracing::debug!(%ip, key_id = who.key_id(), code = refusal.code(), "session refused by a quota");
            return quota_refused(refusal);
        }
    };
    let permit = match state.sessions.try_admit() {
        Ok(p) => p,
        Err(refusal) => {
            state.metrics.refused(refusal == Refusal::Draining);
            return unavailable(&state, refusal);
        }
    };
    let max = state.config.server.max_message_bytes;
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
            session::run(socket, state, permit, VoxdCodec::new(rate), rate).await;
            drop(quota);
        })
    })
}
