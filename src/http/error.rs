//! The one error shape of every HTTP answer voxd refuses with: `{"error": {"code", "message"}}`,
//! a stable code and a message for the client, never a Rust `Debug` dump. The refusals that come
//! from lower layers (a full or draining registry, a quota, a request that is not a WebSocket
//! upgrade) are turned into responses here, with their status and `Retry-After`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::access::QuotaRefusal;
use crate::registry::Refusal;
use crate::state::AppState;
use crate::transport::NotWebSocket;

/// A JSON error response: `{"error": {"code", "message"}}`.
pub(crate) fn error_response(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message}})),
    )
        .into_response()
}

/// 503 for a session the registry refused, with `server.retry_after_s`.
pub(super) fn unavailable(state: &AppState, refusal: Refusal) -> Response {
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
        HeaderValue::from(state.config.server.retry_after_s),
    );
    resp
}

/// 429 for a session a quota refused, with the quota's `Retry-After`.
pub(super) fn quota_refused(refusal: QuotaRefusal) -> Response {
    let mut resp = error_response(
        StatusCode::TOO_MANY_REQUESTS,
        refusal.code(),
        &refusal.message(),
    );
    resp.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from(refusal.retry_after_s()),
    );
    resp
}

impl IntoResponse for NotWebSocket {
    fn into_response(self) -> Response {
        let mut resp = error_response(self.status, "not_websocket", self.message);
        if self.name_version {
            resp.headers_mut().insert(
                header::SEC_WEBSOCKET_VERSION,
                HeaderValue::from_static("13"),
            );
        }
        resp
    }
}
