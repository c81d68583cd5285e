//! `GET /ws` and `GET /twilio`: the upgrade handlers. Each checks what its protocol needs (the
//! requested sample rate; Twilio's signature), then admits the session (the client's quotas first,
//! then the registry's `max_sessions`), and hands the upgraded socket to the session driver with
//! the protocol's codec, in a task the state's tracker waits for at shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::Extension;
use voxd_core::SampleRate;

use super::client_ip::client_ip;
use super::error::{error_response, quota_refused, unavailable};
use crate::access::Identity;
use crate::config::SUPPORTED_RATES;
use crate::registry::Refusal;
use crate::session::{self, ParkedSessions, ResumeRefusal};
use crate::state::AppState;
use crate::transport::WsUpgrade;
use crate::wire::{Codec, RealtimeCodec, TwilioCodec, VoxdCodec, REALTIME_RATE, TWILIO_RATE};

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
    Extension(parked): Extension<Arc<ParkedSessions>>,
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
    if let Some(id) = params.get("resume") {
        return resume(&state, &parked, id, &params, ws);
    }
    let codec = VoxdCodec::new(rate);
    admit(state, peer, &who, &headers, ws, codec, rate, Some(parked))
}

/// `/ws?resume=SESSION_ID&resume_token=TOKEN&received=TURN:BYTES`: hands a new connection to a
/// parked session (`session::resume`). It takes no new place: the parked session holds its own.
fn resume(
    state: &Arc<AppState>,
    parked: &ParkedSessions,
    id: &str,
    params: &HashMap<String, String>,
    ws: WsUpgrade,
) -> Response {
    let token = params.get("resume_token").map_or("", String::as_str);
    let claimed = uuid::Uuid::parse_str(id)
        .map_err(|_| ResumeRefusal::Unknown)
        .and_then(|id| parked.claim(crate::registry::SessionId(id), token));
    let handoff = match claimed {
        Ok(h) => h,
        Err(ResumeRefusal::Unknown) => {
            state.metrics.resume("unknown");
            return error_response(
                StatusCode::NOT_FOUND,
                "resume_unknown",
                &format!(
                    "no session {:?} is waiting to be resumed here: it ended, its resume window \
                     (server.resume_window_s) passed, or it lives on another instance; start a new \
                     session",
                    id.chars().take(64).collect::<String>()
                ),
            );
        }
        Err(ResumeRefusal::Denied) => {
            state.metrics.resume("denied");
            return error_response(
                StatusCode::FORBIDDEN,
                "resume_denied",
                "resume_token is not this session's: send the resume_token of its ready message",
            );
        }
    };
    state.metrics.resume("resumed");
    let received = params
        .get("received")
        .and_then(|v| session::parse_received(v));
    ws.on_upgrade(ws_config(state), move |socket| async move {
        // The parked session takes it from here (it gave up only if it is gone).
        let _ = handoff.send(session::Resumed { socket, received });
    })
}

/// The WebSocket settings of a session.
fn ws_config(state: &AppState) -> tungstenite::protocol::WebSocketConfig {
    let max = state.config.server.max_message_bytes;
    // tungstenite's 128 KiB default buffers would be most of a session's memory. Audio frames
    // are a few hundred bytes and voxd flushes after every batch of outputs, so small buffers
    // cost nothing (a larger message still arrives whole; the buffer grows for it).
    tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(max))
        .max_frame_size(Some(max))
        .read_buffer_size(WS_READ_BUFFER)
        .write_buffer_size(WS_WRITE_BUFFER)
        .max_write_buffer_size(WS_MAX_WRITE_BUFFER + max)
}

/// `GET /v1/realtime`: the OpenAI Realtime protocol. Auth and admission are `/ws`'s; `model`
/// is reported back as asked.
pub(super) async fn realtime_upgrade(
    State(state): State<Arc<AppState>>,
    Query(params): Query<HashMap<String, String>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(who): Extension<Identity>,
    headers: HeaderMap,
    ws: WsUpgrade,
) -> Response {
    let model: String = params
        .get("model")
        .map_or("voxd", String::as_str)
        .chars()
        .take(128)
        .collect();
    // Browser clients offer `realtime` (and carry their key in another subprotocol).
    let ws = ws.select_protocol("realtime");
    admit(
        state,
        peer,
        &who,
        &headers,
        ws,
        RealtimeCodec::new(model),
        REALTIME_RATE,
        None,
    )
}

/// `GET /twilio`: Twilio Media Streams. With `[twilio] auth_token_env`, the upgrade must carry
/// Twilio's signature of its URL (`X-Twilio-Signature`), and the API-key check does not apply
/// (Twilio cannot send a key); without it, the route is guarded like `/ws`.
pub(super) async fn twilio_upgrade(
    State(state): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    who: Option<Extension<Identity>>,
    uri: Uri,
    headers: HeaderMap,
    ws: WsUpgrade,
) -> Response {
    let twilio = &state.config.twilio;
    if let Some(token) = &twilio.auth_token {
        let url = twilio_url(twilio.public_url.as_deref(), &headers, &uri);
        let signature = headers
            .get("x-twilio-signature")
            .and_then(|v| v.to_str().ok());
        if let Err(why) = verify_twilio(token, &url, signature) {
            tracing::warn!(%url, why, "a Twilio upgrade was refused");
            state.metrics.refused_by("twilio_signature");
            return error_response(
                StatusCode::FORBIDDEN,
                "invalid_signature",
                &format!("{why}: /twilio takes only Twilio's signed requests (X-Twilio-Signature)"),
            );
        }
    }
    let who = who.map_or(Identity::Anonymous, |Extension(w)| w);
    let codec = TwilioCodec::new(twilio.parameters.clone());
    admit(state, peer, &who, &headers, ws, codec, TWILIO_RATE, None)
}

/// The URL Twilio signed: the configured public one (with the request's query), or `wss://`, the
/// `Host` header, the path and the query.
fn twilio_url(public_url: Option<&str>, headers: &HeaderMap, uri: &Uri) -> String {
    let query = uri.query().map(|q| format!("?{q}")).unwrap_or_default();
    match public_url {
        Some(base) => format!("{base}{query}"),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default();
            format!("wss://{host}{}{query}", uri.path())
        }
    }
}

/// Checks Twilio's request signature: base64 of HMAC-SHA1 over the URL, keyed with the account's
/// auth token (a WebSocket upgrade has no form parameters to append).
fn verify_twilio(token: &str, url: &str, signature: Option<&str>) -> Result<(), &'static str> {
    use base64::Engine;
    use hmac::Mac;
    let signature = signature.ok_or("no X-Twilio-Signature header")?;
    let given = base64::engine::general_purpose::STANDARD
        .decode(signature.trim())
        .map_err(|_| "the signature is not base64")?;
    let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes())
        .map_err(|_| "the auth token cannot key HMAC")?;
    mac.update(url.as_bytes());
    // Constant time.
    mac.verify_slice(&given)
        .map_err(|_| "the signature does not match the URL and auth token")
}

/// Admits a session (the client's quotas first, then the registry's `max_sessions`) and hands
/// the upgraded socket to the session driver with `codec`. With `parked`, a dropped connection
/// parks the session there for its client to resume.
#[allow(clippy::too_many_arguments)]
fn admit<C: Codec>(
    state: Arc<AppState>,
    peer: SocketAddr,
    who: &Identity,
    headers: &HeaderMap,
    ws: WsUpgrade,
    codec: C,
    rate: SampleRate,
    parked: Option<Arc<ParkedSessions>>,
) -> Response {
    let ip = client_ip(peer.ip(), headers, state.quotas.trust_x_forwarded_for);
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
    let tracker = state.tracker.clone();
    let config = ws_config(&state);
    // A balancer learns which instance holds the session from this header, to send its resume
    // (`?resume=`) back here (deploy/haproxy.cfg: `stick store-response`).
    let session_header = parked
        .is_some()
        .then(|| header::HeaderValue::from_str(&permit.id().to_string()).ok())
        .flatten();
    let mut response = ws.on_upgrade(config, move |socket| {
        tracker.track_future(async move {
            session::run(socket, state, permit, codec, rate, parked).await;
            drop(quota);
        })
    });
    if let Some(id) = session_header {
        response.headers_mut().insert(SESSION_HEADER, id);
    }
    response
}

/// The response header of a `/ws` upgrade that names its session.
const SESSION_HEADER: header::HeaderName = header::HeaderName::from_static("x-voxd-session");

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twilio_signatures_are_checked_against_the_url() {
        use base64::Engine;
        use hmac::Mac;
        let url = "wss://voice.example.com/twilio?x=1";
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(b"secret").unwrap();
        mac.update(url.as_bytes());
        let good = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(verify_twilio("secret", url, Some(&good)), Ok(()));
        assert!(verify_twilio("other", url, Some(&good)).is_err());
        assert!(verify_twilio("secret", "wss://evil/twilio?x=1", Some(&good)).is_err());
        assert!(verify_twilio("secret", url, None).is_err());
        assert!(verify_twilio("secret", url, Some("***")).is_err());

        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, "voice.example.com".parse().unwrap());
        let uri: Uri = "/twilio?x=1".parse().unwrap();
        assert_eq!(twilio_url(None, &headers, &uri), url);
        assert_eq!(
            twilio_url(
                Some("wss://public.example.com/calls/twilio"),
                &headers,
                &uri
            ),
            "wss://public.example.com/calls/twilio?x=1"
        );
    }
}
