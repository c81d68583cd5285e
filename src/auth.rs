//! Optional API keys and an `Origin` allow-list, checked before a `/ws` upgrade or a REST call.
//!
//! Both are off by default: a fresh `voxd serve` admits any client up to `max_sessions`, so local
//! development and load tests just work.
//! - With keys configured (`[auth]`: in the file, from an environment variable or from a file),
//!   `/ws` accepts `Authorization: Bearer KEY` or `?token=KEY`. Browsers cannot set headers on a
//!   WebSocket, hence the query parameter. `/v1/transcribe` takes the header, and `/metrics` does
//!   too when `protect_metrics` is set. A wrong or missing key gets 401 before any upgrade. Health
//!   probes stay open.
//! - With an `Origin` allow-list, a request whose `Origin` header is not on it gets 403. Requests
//!   without the header (not from a browser) are not affected.
//!
//! Keys never appear in logs or error messages. They are compared in constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use crate::app::{error_response, AppState};
use crate::config::ConfigError;

/// The keys and origins in force.
#[derive(Clone, Default)]
pub struct Auth {
    keys: Vec<Vec<u8>>,
    origins: Vec<String>,
    /// `/metrics` needs a key too.
    pub protect_metrics: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys themselves.
        f.debug_struct("Auth")
            .field("keys", &self.keys.len())
            .field("origins", &self.origins)
            .finish()
    }
}

/// `[auth]`
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// Keys written in the config file (prefer `api_keys_env` or `api_keys_file`).
    pub api_keys: Vec<String>,
    /// An environment variable holding comma-separated keys.
    pub api_keys_env: Option<String>,
    /// A file holding one key per line (relative to the config file).
    pub api_keys_file: Option<std::path::PathBuf>,
    /// Require a key for `GET /metrics` too.
    pub protect_metrics: bool,
    /// Browser origins allowed to connect (e.g. `https://app.example.com`); empty: any.
    pub allowed_origins: Vec<String>,
}

impl Auth {
    /// Collects the keys from the file, the environment and the key file.
    ///
    /// # Errors
    /// When the named environment variable is unset or the key file cannot be read (the message
    /// names the variable or the file, never a key).
    pub fn from_config(a: &AuthSection, base_dir: &std::path::Path) -> Result<Auth, ConfigError> {
        let mut keys: Vec<String> = a.api_keys.clone();
        if let Some(var) = &a.api_keys_env {
            let value = std::env::var(var).map_err(|_| ConfigError::Invalid {
                key: "auth.api_keys_env".into(),
                message: format!("names the environment variable {var}, which is not set"),
            })?;
            keys.extend(value.split(',').map(str::to_owned));
        }
        if let Some(file) = &a.api_keys_file {
            let path = base_dir.join(file);
            let text = std::fs::read_to_string(&path).map_err(|e| ConfigError::Invalid {
                key: "auth.api_keys_file".into(),
                message: format!("cannot read {}: {e}", path.display()),
            })?;
            keys.extend(text.lines().map(str::to_owned));
        }
        let keys: Vec<Vec<u8>> = keys
            .iter()
            .map(|k| k.trim())
            .filter(|k| !k.is_empty())
            .map(|k| k.as_bytes().to_vec())
            .collect();
        if keys.iter().any(|k| k.len() < 16) {
            return Err(ConfigError::Invalid {
                key: "auth".into(),
                message: "every API key must be at least 16 characters long".into(),
            });
        }
        Ok(Auth {
            keys,
            origins: a
                .allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_owned())
                .collect(),
            protect_metrics: a.protect_metrics,
        })
    }

    /// Whether keys are required.
    pub fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Whether `candidate` is one of the keys, in time independent of where they differ.
    fn accepts(&self, candidate: &[u8]) -> bool {
        let mut found = false;
        for k in &self.keys {
            let mut diff = (k.len() ^ candidate.len()) as u8;
            for (i, b) in k.iter().enumerate() {
                diff |= b ^ candidate.get(i).copied().unwrap_or(0);
            }
            found |= diff == 0;
        }
        found
    }
}

/// The key a request presents: `Authorization: Bearer KEY`, or `?token=KEY` when allowed.
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
    from_header.or_else(|| {
        allow_query.then(|| {
            request.uri().query().and_then(|q| {
                q.split('&')
                    .filter_map(|kv| kv.split_once('='))
                    .find(|(k, _)| *k == "token")
                    .map(|(_, v)| percent_decode(v))
            })
        })?
    })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(if bytes[i] == b'+' { b' ' } else { bytes[i] });
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Middleware: the origin check, then the key check, for the routes it wraps.
pub async fn require(State(state): State<Arc<AppState>>, request: Request, next: Next) -> Response {
    let auth = &state.config.auth;
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
    if auth.enabled() {
        let path = request.uri().path();
        let needs_key = path != "/metrics" || auth.protect_metrics;
        let allow_query = path == "/ws";
        if needs_key {
            let ok = presented(&request, allow_query).is_some_and(|k| auth.accepts(k.as_bytes()));
            if !ok {
                let how = if allow_query {
                    "send `Authorization: Bearer KEY` or `?token=KEY`"
                } else {
                    "send `Authorization: Bearer KEY`"
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
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(keys: &[&str]) -> Auth {
        Auth::from_config(
            &AuthSection {
                api_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
                ..AuthSection::default()
            },
            std::path::Path::new("."),
        )
        .unwrap()
    }

    #[test]
    fn keys_match_exactly() {
        let a = auth(&["0123456789abcdef", "fedcba9876543210xyz"]);
        assert!(a.accepts(b"0123456789abcdef"));
        assert!(a.accepts(b"fedcba9876543210xyz"));
        assert!(!a.accepts(b"0123456789abcde"));
        assert!(!a.accepts(b"0123456789abcdefg"));
        assert!(!a.accepts(b""));
        assert!(!auth(&[]).enabled());
    }

    #[test]
    fn short_keys_and_missing_sources_are_config_errors() {
        let short = Auth::from_config(
            &AuthSection {
                api_keys: vec!["short".into()],
                ..AuthSection::default()
            },
            std::path::Path::new("."),
        );
        assert!(short.unwrap_err().to_string().contains("16 characters"));
        let env = Auth::from_config(
            &AuthSection {
                api_keys_env: Some("VOXD_TEST_SURELY_UNSET_VARIABLE".into()),
                ..AuthSection::default()
            },
            std::path::Path::new("."),
        );
        let e = env.unwrap_err().to_string();
        assert!(
            e.contains("VOXD_TEST_SURELY_UNSET_VARIABLE") && e.contains("not set"),
            "{e}"
        );
    }

    #[test]
    fn query_tokens_are_percent_decoded() {
        assert_eq!(percent_decode("abc%2Bdef%3D"), "abc+def=");
        assert_eq!(percent_decode("a%2"), "a%2");
    }
}
