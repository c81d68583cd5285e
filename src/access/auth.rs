//! API keys and short-lived tokens: who a request is (`Identity`), and minting tokens.
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
//! This module is the verifier; the middleware that applies it to requests and the `POST
//! /v1/tokens` handler are `http::auth`, and the keys are read and checked by `config::auth`.
//! Keys and secrets never appear in logs or error messages. Keys are compared in constant time.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::AuthConfig;

/// Who a request is, as far as limits and logs need to know. Never the key itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Identity {
    /// Auth is off.
    Anonymous,
    /// An API key, by its id (`key-` and 8 hex digits of its SHA-256).
    Key(String),
    /// A token minted by the API key with this id.
    Token(String),
}

impl Identity {
    /// The API key's id, for a key or a token minted by it.
    pub(crate) fn key_id(&self) -> Option<&str> {
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
pub(crate) struct Auth {
    keys: Vec<Vec<u8>>,
    ids: Vec<String>,
    /// Allowed browser origins, without a trailing `/`; empty: any.
    pub(crate) origins: Vec<String>,
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

impl Auth {
    /// The verifier for the keys, origins and token settings `c` holds.
    pub(crate) fn new(c: &AuthConfig) -> Auth {
        let tokens = c.tokens.as_ref().map(|t| {
            let mut validation = Validation::new(Algorithm::HS256);
            validation.set_audience(&[AUDIENCE]);
            validation.set_required_spec_claims(&["exp", "aud", "sub"]);
            validation.leeway = 5;
            Tokens {
                encoding: EncodingKey::from_secret(t.secret.as_bytes()),
                decoding: DecodingKey::from_secret(t.secret.as_bytes()),
                validation,
                default_ttl_s: t.default_ttl_s,
                max_ttl_s: t.max_ttl_s,
            }
        });
        Auth {
            ids: c.keys.iter().map(|k| key_id(k)).collect(),
            keys: c.keys.clone(),
            tokens,
            origins: c
                .origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_owned())
                .collect(),
            protect_metrics: c.protect_metrics,
        }
    }

    /// Whether keys are required.
    pub(crate) fn enabled(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Whether `POST /v1/tokens` is enabled.
    pub(crate) fn tokens_enabled(&self) -> bool {
        self.tokens.is_some()
    }

    /// The id of the key `candidate` is. Every key is compared, each in constant time (`subtle`),
    /// so the time taken says nothing about where a candidate differs from a key. (A length
    /// mismatch returns early inside `ct_eq`: key lengths are not secret.)
    pub(crate) fn accepts(&self, candidate: &[u8]) -> Option<&str> {
        let mut found = None;
        for (k, id) in self.keys.iter().zip(&self.ids) {
            if bool::from(k.as_slice().ct_eq(candidate)) {
                found = Some(id.as_str());
            }
        }
        found
    }

    /// Who presents `credential`: a key, or a valid unexpired token. `None` when neither.
    pub(crate) fn identify(&self, credential: &str) -> Option<Identity> {
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
    pub(crate) fn mint(
        &self,
        key_id: &str,
        ttl_s: Option<u64>,
    ) -> Result<(String, u64, u64), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(keys: &[&str]) -> Auth {
        let section = crate::config::AuthSection {
            api_keys: keys.iter().map(|k| (*k).to_owned()).collect(),
            ..crate::config::AuthSection::default()
        };
        Auth::new(&section.load(std::path::Path::new(".")).unwrap())
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
}
