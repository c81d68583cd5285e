//! The auth middleware (origin, then key or token, for the routes it wraps) and `POST
//! /v1/tokens`. The verifier itself is `access::Auth`; module `access::auth` says what is
//! checked and when.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use serde::Deserialize;

use super::error::error_response;
use crate::access::Identity;
use crate::state::AppState;

/// The subprotocol prefix that carries a key, as OpenAI Realtime clients in browsers send it (a
/// browser cannot set `Authorization` on a WebSocket).
const KEY_SUBPROTOCOL: &str = "openai-insecure-api-key.";

/// The key a request presents: `Authorization: Bearer KEY`, a `Sec-WebSocket-Protocol` entry
/// `openai-insecure-api-key.KEY`, or `?token=KEY` when allowed.
fn presented(request: &Request, allow_query: bool) -> Option<String> {
    let from_header = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|k| k.trim().to_owned());
    let from_subprotocol = || {
        request
            .headers()
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .find_map(|p| p.trim().strip_prefix(KEY_SUBPROTOCOL).map(str::to_owned))
    };
    from_header.or_else(from_subprotocol).or_else(|| {
        allow_query.then(|| {
            request.uri().query().and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "token")
                    .map(|(_, v)| v.into_owned())
            })
        })?
    })
}

/// Middleware: the origin check, then the key check, for the routes it wraps.
pub(super) async fn require(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let auth = &state.auth;
    if !auth.origins.is_empty() {
        if let Some(origin) = request.headers().get(header::ORIGIN) {
            let allowed = origin
                .to_str()
                .is_ok_and(|o| auth.origins.iter().any(|a| a == o.trim_end_matches('/')));
            if !allowed {
                return error_response(
                    StatusCode::FORBIDDEN,
                    "origin_not_allowed",
                    "this Origin is not on voxd's allow-list (auth.allowed_origins)",
                );
            }
        }
    }
    let mut request = request;
    if auth.enabled() {
        let path = request.uri().path();
        let needs_key = path != "/metrics" || auth.protect_metrics;
        let allow_query = path == "/ws";
        if needs_key {
            let who = presented(&request, allow_query)
                .and_then(|k| auth.identify(&k))
                // Tokens are for browsers' sessions and transcriptions, not for reading metrics.
                .filter(|who| path != "/metrics" || matches!(who, Identity::Key(_)));
            if let Some(who) = who {
                request.extensions_mut().insert(who);
            } else {
                let how = if allow_query {
                    "send `Authorization: Bearer KEY` or `?token=KEY` (a key or a token from POST /v1/tokens)"
                } else {
                    "send `Authorization: Bearer KEY` (a key or a token from POST /v1/tokens)"
                };
                let mut resp = error_response(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    &format!("a valid API key is required: {how}"),
                );
                resp.headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
                return resp;
            }
        }
    }
    if request.extensions().get::<Identity>().is_none() {
        request.extensions_mut().insert(Identity::Anonymous);
    }
    next.run(request).await
}

/// `POST /v1/tokens`: `{"ttl_s": N}` (optional) → `{"token", "expires_at", "expires_in"}`.
/// Needs an API key: a token cannot mint tokens, so a leaked token dies with its `exp`.
pub(super) async fn mint(
    State(state): State<Arc<AppState>>,
    axum::Extension(who): axum::Extension<Identity>,
    body: axum::body::Bytes,
) -> Response {
    use axum::response::IntoResponse;
    let auth = &state.auth;
    if !auth.tokens_enabled() {
        return error_response(
            StatusCode::NOT_FOUND,
            "tokens_disabled",
            "tokens are not enabled on this server: set auth.token_secret_env or auth.token_secret_file",
        );
    }
    let Identity::Key(key_id) = who else {
        return error_response(
            StatusCode::FORBIDDEN,
            "key_required",
            "minting a token needs an API key, not a token",
        );
    };
    #[derive(Deserialize, Default)]
    #[serde(deny_unknown_fields)]
    struct MintRequest {
        ttl_s: Option<u64>,
    }
    let req: MintRequest = if body.iter().all(u8::is_ascii_whitespace) {
        MintRequest::default()
    } else {
        match serde_json::from_slice(&body) {
            Ok(r) => r,
            Err(e) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "invalid_json",
                    &format!("expected {{\"ttl_s\": seconds}} or an empty body: {e}"),
                )
            }
        }
    };
    match auth.mint(&key_id, req.ttl_s) {
        Ok((token, expires_at, expires_in)) => {
            tracing::info!(key_id = %key_id, expires_in, "token minted");
            axum::Json(serde_json::json!({
                "token": token,
                "token_type": "Bearer",
                "expires_at": expires_at,
                "expires_in": expires_in,
            }))
            .into_response()
        }
        Err(message) => error_response(StatusCode::BAD_REQUEST, "invalid_ttl", &message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str) -> Request {
        Request::builder()
            .uri(uri)
            .body(axum::body::Body::empty())
            .unwrap()
    }

    #[test]
    fn query_tokens_are_percent_decoded() {
        let token = |uri| presented(&request(uri), true);
        assert_eq!(token("/ws?token=abc%2Bdef%3D"), Some("abc+def=".into()));
        assert_eq!(token("/ws?x=1&token=a%2"), Some("a%2".into()));
        assert_eq!(
            token("/ws?token=%41"),
            Some("A".into()),
            "an escape at the very end"
        );
        assert_eq!(token("/ws?tokens=x"), None);
        assert_eq!(
            presented(&request("/ws?token=abc"), false),
            None,
            "not allowed"
        );
    }
}
