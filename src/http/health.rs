//! The health probes, open to everyone (no key): `/health/live` (the process answers),
//! `/health/ready` (503 while draining, full, or while every provider of a stage is skipped by
//! its breaker) and `/health/startup`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::state::AppState;

pub(super) async fn live() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

pub(super) async fn ready(State(state): State<Arc<AppState>>) -> Response {
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
pub(super) async fn startup() -> Response {
    Json(json!({"status": "started"})).into_response()
}
