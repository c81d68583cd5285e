//! The health probes, open to everyone (no key): `/health/live` (the process answers),
//! `/health/ready` (503 from the start of shutdown, at capacity, or while every provider of a
//! stage is skipped by its breaker) and `/health/startup`.
//!
//! Readiness fails at the first moment of shutdown, while admission stays open for the lame-duck
//! grace (`registry::Phase::LameDuck`): the body's `admitting` tells the two phases apart.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use crate::registry::Phase;
use crate::state::AppState;

pub(super) async fn live() -> Response {
    Json(json!({"status": "ok"})).into_response()
}

pub(super) async fn ready(State(state): State<Arc<AppState>>) -> Response {
    let s = &state.sessions;
    let phase = s.phase();
    let body = json!({
        "active_sessions": s.active(),
        "max_sessions": s.max(),
        "draining": phase != Phase::Serving,
        "admitting": phase != Phase::Draining,
        "providers": state.providers.status(),
    });
    let (status, label) = if phase != Phase::Serving {
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
