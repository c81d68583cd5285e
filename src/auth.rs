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
//! - With a token secret (`auth.token_secret_env` or `auth.token_secret_file`), a backend holding an
//!   API key can mint short-lived signed tokens (HS256 JWT with `exp`) at `POST /v1/tokens` and hand
//!   them to a browser, which never sees the long-lived key. A token is accepted wherever a key is
//!   (`/ws`, `/v1/transcribe`), except for minting more tokens. It carries the minting key's id
//!   (`sub`), so per-key limits apply to its sessions too.
//!
//! Keys and secrets never appear in logs or error messages. Keys are compared in constant time.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::app::{error_response, AppState};
use crate::config::ConfigError;

/// Who a request is, as far as limits and logs need to know. Never the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Auth is off.
    Anonymous,
    /// An API key, by its id (`key-` and 8 hex digits of its SHA-256).
    Key(String),
    /// A token minted by the API key with this id.
    Token(String),
}

impl Identity {
    /// The API key's id, for a key or a token minted by it.
    pub fn key_id(&self) -> Option<&str> {
        match self {
            Identity::Anonymous => None,
            Identity::Key(id) | Identity::Token(id) => Some(id),
        }
    }
}

/// A key's id: safe to log and to use as a label (4 bytes of a hash of a 16+ character key).
fn key_id(key: &[u8]) -> String {
    let digest = Sha256::digest(key);
    let mut id = String::from("key-");
    for b in &digest[..4] {
        id.push_str(&format!("{b:02x}"));
    }
    id
}

/// What a token says.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    /// The minting key's id.
    sub: String,
    aud: String,
    iat: u64,
    exp: u64,
}

/// The audience every voxd token names, so that tokens minted for something else with the same
/// secret are refused.
const AUDIENCE: &str = "voxd";

/// Signing and checking short-lived tokens.
#[derive(Clone)]
struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    default_ttl_s: u64,
    max_ttl_s: u64,
}

/// The keys and origins in force.
#[derive(Clone, Default)]
pub struct Auth {
    keys: Vec<Vec<u8>>,
    ids: Vec<String>,
    origins: Vec<String>,
    tokens: Option<Tokens>,
    /// `/metrics` needs a key too.
    pub protect_metrics: bool,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys themselves.
        f.debug_struct("Auth")
            .field("keys", &self.ids)
            .field("origins", &self.origins)
            .field("tokens", &self.tokens.is_some())
            .finish()
    }
}

/// `[auth]`
#[derive(Debug, Clone, serde::Deserialize)]
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
    /// An environment variable holding the secret that signs short-lived tokens (at least 32
    /// bytes). Setting it (or `token_secret_file`) enables `POST /v1/tokens`.
    pub token_secret_env: Option<String>,
    /// A file holding the token secret (relative to the config file).
    pub token_secret_file: Option<std::path::PathBuf>,
    /// A token's lifetime when the request names none, in seconds.
    pub token_ttl_s: u64,
    /// The longest lifetime a request may ask for, in seconds.
    pub token_max_ttl_s: u64,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            api_keys: Vec::new(),
            api_keys_env: None,
            api_keys_file: None,
            protect_metrics: false,
            allowed_origins: Vec::new(),
            token_secret_env: None,
            token_secret_file: None,
            token_ttl_s: 300,
            token_max_ttl_s: 3600,
        }
    }
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
        let secret = match (&a.token_secret_env, &a.token_secret_file) {
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: "auth.token_secret_env".into(),
                    message: "and auth.token_secret_file are both set; keep one".into(),
                })
            }
            (Some(var), None) => Some(std::env::var(var).map_err(|_| ConfigError::Invalid {
                key: "auth.token_secret_env".into(),
                message: format!("names the environment variable {var}, which is not set"),
            })?),
            (None, Some(file)) => {
                let path = base_dir.join(file);
                Some(
                    std::fs::read_to_string(&path).map_err(|e| ConfigError::Invalid {
                        key: "auth.token_secret_file".into(),
                        message: format!("cannot read {}: {e}", path.display()),
                    })?,
                )
            }
            (None, None) => None,
        };
        let tokens = match secret {
            None => None,
            Some(secret) => {
                let secret = secret.trim();
                if secret.len() < 32 {
                    return Err(ConfigError::Invalid {
                        key: "auth.token_secret_env".into(),
                        message: "the token secret must be at least 32 bytes long (e.g. `openssl rand -hex 32`)".into(),
                    });
                }
                if keys.is_empty() {
                    return Err(ConfigError::Invalid {
                        key: "auth.token_secret_env".into(),
                        message: "tokens are minted by holders of an API key; configure auth.api_keys (or _env, _file) too".into(),
                    });
                }
                if a.token_ttl_s == 0
                    || a.token_ttl_s > a.token_max_ttl_s
                    || a.token_max_ttl_s > 86_400
                {
                    return Err(ConfigError::Invalid {
                        key: "auth.token_ttl_s".into(),
                        message: format!(
                            "is {} with token_max_ttl_s {}; expected 1 <= token_ttl_s <= token_max_ttl_s <= 86400",
                            a.token_ttl_s, a.token_max_ttl_s
                        ),
                    });
                }
                let mut validation = Validation::new(Algorithm::HS256);
                validation.set_audience(&[AUDIENCE]);
                validation.set_required_spec_claims(&["exp", "aud", "sub"]);
                validation.leeway = 5;
                Some(Tokens {
                    encoding: EncodingKey::from_secret(secret.as_bytes()),
                    decoding: DecodingKey::from_secret(secret.as_bytes()),
                    validation,
                    default_ttl_s: a.token_ttl_s,
                    max_ttl_s: a.token_max_ttl_s,
                })
            }
        };
        Ok(Auth {
            ids: keys.iter().map(|k| key_id(k)).collect(),
            keys,
            tokens,
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

    /// Whether `POST /v1/tokens` is enabled.
    pub fn tokens_enabled(&self) -> bool {
        self.tokens.is_some()
    }

    /// The id of the key `candidate` is, compared in time independent of where keys differ.
    fn accepts(&self, candidate: &[u8]) -> Option<&str> {
        let mut found = None;
        for (k, id) in self.keys.iter().zip(&self.ids) {
            let mut diff = u8::from(k.len() != candidate.len());
            for (i, b) in k.iter().enumerate() {
                diff |= b ^ candidate.get(i).copied().unwrap_or(0);
            }
            if diff == 0 {
                found = Some(id.as_str());
            }
        }
        found
    }

    /// Who presents `credential`: a key, or a valid unexpired token. `None` when neither.
    fn identify(&self, credential: &str) -> Option<Identity> {
        if let Some(id) = self.accepts(credential.as_bytes()) {
            return Some(Identity::Key(id.to_owned()));
        }
        let tokens = self.tokens.as_ref()?;
        let data = jsonwebtoken::decode::<Claims>(credential, &tokens.decoding, &tokens.validation)
            .ok()?;
        // A token outlives a key that was removed from the config only until the next restart
        // reloads the keys; then its `sub` no longer names a key and it is refused.
        self.ids
            .contains(&data.claims.sub)
            .then_some(Identity::Token(data.claims.sub))
    }

    /// Mints a token for the key `key_id`, valid for `ttl_s` (default and cap from config).
    /// Returns the token and its expiry (Unix seconds).
    ///
    /// # Errors
    /// A message for the client when tokens are off or `ttl_s` is out of range.
    pub fn mint(&self, key_id: &str, ttl_s: Option<u64>) -> Result<(String, u64, u64), String> {
        let tokens = self
            .tokens
            .as_ref()
            .ok_or("tokens are not enabled on this server (auth.token_secret_env)")?;
        let ttl = ttl_s.unwrap_or(tokens.default_ttl_s);
        if ttl == 0 || ttl > tokens.max_ttl_s {
            return Err(format!(
                "ttl_s is {ttl}; expected 1 to {}",
                tokens.max_ttl_s
            ));
        }
        let iat = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: key_id.to_owned(),
            aud: AUDIENCE.to_owned(),
            iat,
            exp: iat + ttl,
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &tokens.encoding)
            .map_err(|e| format!("cannot sign a token: {e}"))?;
        Ok((token, iat + ttl, ttl))
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
pub async fn mint(
    State(state): State<Arc<AppState>>,
    axum::Extension(who): axum::Extension<Identity>,
    body: axum::body::Bytes,
) -> Response {
    use axum::response::IntoResponse;
    let auth = &state.config.auth;
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
        assert!(a.accepts(b"0123456789abcdef").is_some());
        assert!(a.accepts(b"fedcba9876543210xyz").is_some());
        assert_ne!(
            a.accepts(b"0123456789abcdef"),
            a.accepts(b"fedcba9876543210xyz")
        );
        assert!(a.accepts(b"0123456789abcde").is_none());
        assert!(a.accepts(b"0123456789abcdefg").is_none());
        assert!(a.accepts(b"").is_none());
        // Lengths that differ by a multiple of 256 still differ.
        let long = format!("0123456789abcdef{}", "x".repeat(256));
        assert!(a.accepts(long.as_bytes()).is_none());
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
