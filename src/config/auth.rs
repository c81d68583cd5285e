//! `[auth]`: the section as written, and its keys and token secret read from where it says (the
//! file, an environment variable, a key file) and checked.
//!
//! This is configuration only: the verifier that checks a request's key or token is
//! `access::Auth`, built from the `AuthConfig` here. Keys and secrets never appear in `Debug`
//! output or error messages.

use std::path::{Path, PathBuf};

use super::ConfigError;

/// `[auth]`
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AuthSection {
    /// Keys written in the config file (prefer `api_keys_env` or `api_keys_file`).
    pub(crate) api_keys: Vec<String>,
    /// An environment variable holding comma-separated keys.
    pub(crate) api_keys_env: Option<String>,
    /// A file holding one key per line (relative to the config file).
    pub(crate) api_keys_file: Option<PathBuf>,
    /// Require a key for `GET /metrics` too.
    pub(crate) protect_metrics: bool,
    /// Browser origins allowed to connect (e.g. `https://app.example.com`); empty: any.
    pub(crate) allowed_origins: Vec<String>,
    /// An environment variable holding the secret that signs short-lived tokens (at least 32
    /// bytes). Setting it (or `token_secret_file`) enables `POST /v1/tokens`.
    pub(crate) token_secret_env: Option<String>,
    /// A file holding the token secret (relative to the config file).
    pub(crate) token_secret_file: Option<PathBuf>,
    /// A token's lifetime when the request names none, in seconds.
    pub(crate) token_ttl_s: u64,
    /// The longest lifetime a request may ask for, in seconds.
    pub(crate) token_max_ttl_s: u64,
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

/// `[auth]` validated: the keys and the token secret in force.
#[derive(Clone, Default)]
pub(crate) struct AuthConfig {
    /// The API keys, trimmed, each at least 16 bytes. Empty: keys are not required.
    pub(crate) keys: Vec<Vec<u8>>,
    /// `allowed_origins` as written.
    pub(crate) origins: Vec<String>,
    /// The token settings, when a secret is configured (`POST /v1/tokens` is on).
    pub(crate) tokens: Option<TokenConfig>,
    /// `/metrics` needs a key too.
    pub(crate) protect_metrics: bool,
}

/// Short-lived tokens' settings, validated.
#[derive(Clone)]
pub(crate) struct TokenConfig {
    /// The signing secret, trimmed, at least 32 bytes.
    pub(crate) secret: String,
    /// `token_ttl_s`
    pub(crate) default_ttl_s: u64,
    /// `token_max_ttl_s`
    pub(crate) max_ttl_s: u64,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the keys or the secret themselves.
        f.debug_struct("AuthConfig")
            .field("keys", &self.keys.len())
            .field("origins", &self.origins)
            .field("tokens", &self.tokens.is_some())
            .field("protect_metrics", &self.protect_metrics)
            .finish()
    }
}

impl AuthSection {
    /// Collects the keys from the file, the environment and the key file, and the token secret.
    ///
    /// # Errors
    /// When the named environment variable is unset or the key file cannot be read (the message
    /// names the variable or the file, never a key), or a key, the secret or a lifetime is out of
    /// range.
    pub(crate) fn load(&self, base_dir: &Path) -> Result<AuthConfig, ConfigError> {
        let a = self;
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
                Some(TokenConfig {
                    secret: secret.to_owned(),
                    default_ttl_s: a.token_ttl_s,
                    max_ttl_s: a.token_max_ttl_s,
                })
            }
        };
        Ok(AuthConfig {
            keys,
            origins: a.allowed_origins.clone(),
            tokens,
            protect_metrics: a.protect_metrics,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_keys_and_missing_sources_are_config_errors() {
        let short = AuthSection {
            api_keys: vec!["short".into()],
            ..AuthSection::default()
        }
        .load(Path::new("."));
        assert!(short.unwrap_err().to_string().contains("16 characters"));
        let env = AuthSection {
            api_keys_env: Some("VOXD_TEST_SURELY_UNSET_VARIABLE".into()),
            ..AuthSection::default()
        }
        .load(Path::new("."));
        let e = env.unwrap_err().to_string();
        assert!(
            e.contains("VOXD_TEST_SURELY_UNSET_VARIABLE") && e.contains("not set"),
            "{e}"
        );
    }
}
