//! The HTTP application: the router and what every route shares (request counting and timing,
//! the auth middleware, the one error shape), and the handlers, one concern per file:
//! - `upgrade.rs`: `GET /ws`, admission control (quotas, then the registry) and the hand-over of
//!   the upgraded socket to the session driver;
//! - `transcribe.rs`: `POST /v1/transcribe`;
//! - `auth.rs`: the key/token/origin middleware and `POST /v1/tokens`;
//! - `health.rs`: the probes; `/metrics` is here;
//! - `error.rs`: `{"error": {"code", "message"}}` and the refusals of lower layers as responses;
//! - `client_ip.rs`: the address the quotas key a request by;
//! - `demo.rs`: the browser demo page and `/voxd.js`, embedded in the binary.
//!
//! Serving it is the transport's job (`transport::serve`); this module only answers requests.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::state::AppState;

mod auth;
mod client_ip;
mod demo;
mod error;
mod health;
mod transcribe;
mod upgrade;

#[cfg(any(test, feature = "fuzzing"))]
pub use transcribe::fuzz::wav;

/// The router: `/ws`, `/v1/realtime`, `/twilio`, `/v1/transcribe`, `/metrics`, `/health/live`, `/health/ready`,
/// `/health/startup`, and the demo page (`/`, `/voxd.js`, ...) unless `server.demo_page` is off.
/// Every route's requests are counted and timed.
pub(crate) fn router(state: Arc<AppState>) -> Router {
    // The transcribe handler enforces `max_body_bytes` itself (with a JSON 413); this only lifts
    // axum's 2 MB default for the multipart extractor to the same limit.
    let body_limit = DefaultBodyLimit::max(state.config.transcribe.max_body_bytes);
    let mut guarded = Router::new()
        .route("/ws", get(upgrade::ws_upgrade))
        .route("/v1/realtime", get(upgrade::realtime_upgrade))
        .route("/v1/tokens", post(auth::mint))
        .route(
            "/v1/transcribe",
            post(transcribe::transcribe).layer(body_limit),
        );
    if state.config.metrics_enabled {
        guarded = guarded.route("/metrics", get(metrics));
    }
    // Twilio cannot send an API key: with its auth token set, its signature guards `/twilio`.
    let signed_twilio = state.config.twilio.auth_token.is_some();
    if !signed_twilio {
        guarded = guarded.route("/twilio", get(upgrade::twilio_upgrade));
    }
    // API keys and the Origin allow-list guard everything but the health probes.
    let guarded = guarded.route_layer(middleware::from_fn_with_state(
        Arc::clone(&state),
        auth::require,
    ));
    let open = Router::new()
        .route("/health/live", get(health::live))
        .route("/health/ready", get(health::ready))
        .route("/health/startup", get(health::startup));
    let open = if signed_twilio {
        open.route("/twilio", get(upgrade::twilio_upgrade))
    } else {
        open
    };
    // A browser navigating to the page cannot send a key; the page has no secret in it.
    let open = if state.config.server.demo_page {
        demo::routes(open)
    } else {
        open
    };
    // The `/ws` sessions waiting to be resumed: the upgrade handler hands them their client's
    // new connection.
    let parked = Arc::new(crate::session::ParkedSessions::default());
    open.merge(guarded)
        .layer(axum::Extension(parked))
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
