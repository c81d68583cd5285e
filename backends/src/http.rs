//! What every HTTP provider shares: one pooled `reqwest` client per provider (keep-alive, no TLS
//! handshake per turn), secrets read from env vars or files, and error mapping that keeps the
//! provider's error body in the log and out of the client's message.

use std::path::Path;
use std::sync::Once;
use std::time::Duration;

use tracing::warn;

use crate::{BuildError, ProviderError};

/// How much of a provider's error body is logged.
const MAX_ERROR_BODY: usize = 2048;

/// Installs rustls' `ring` crypto provider for the process, once. reqwest is built without a
/// default provider (the default one is a large C build), so this must run before a client is built.
pub fn install_crypto() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Err means another provider is already installed, which is just as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Reads an API key from `env` (the provider's `api_key_env`) or `file` (its `api_key_file`).
/// Returns `None` when neither is set (local servers often need no key). A named env var that is
/// unset or empty, or an unreadable file, is an error: a typo must not silently send no key.
///
/// # Errors
/// `BuildError::Invalid` naming `api_key_env` or `api_key_file` (keys of the provider's table),
/// or `BuildError::Io` for the file.
pub fn read_secret(
    env: Option<&str>,
    file: Option<&Path>,
    base_dir: &Path,
) -> Result<Option<String>, BuildError> {
    if let Some(var) = env {
        return match std::env::var(var) {
            Ok(v) if !v.trim().is_empty() => Ok(Some(v.trim().to_owned())),
            _ => Err(BuildError::Invalid {
                key: "api_key_env".to_owned(),
                message: format!("env var {var} is unset or empty; set it to the provider's API key or remove api_key_env"),
            }),
        };
    }
    if let Some(path) = file {
        let path = base_dir.join(path);
        let text = std::fs::read_to_string(&path).map_err(|source| BuildError::Io {
            what: "cannot read API key file",
            path: path.display().to_string(),
            source,
        })?;
        let text = text.trim();
        if text.is_empty() {
            return Err(BuildError::Invalid {
                key: "api_key_file".to_owned(),
                message: format!("{} is empty", path.display()),
            });
        }
        return Ok(Some(text.to_owned()));
    }
    Ok(None)
}

/// Reads the API key (as `read_secret` does) and makes it an `Authorization` header value,
/// `"{scheme} {key}"`, marked sensitive so that `Debug` never shows it. `None` without a key.
///
/// # Errors
/// What `read_secret` returns, or `BuildError::Invalid` naming the key's source (`api_key_env`
/// or `api_key_file`) when the key holds characters an HTTP header cannot carry.
pub fn authorization(
    scheme: &str,
    env: Option<&str>,
    file: Option<&Path>,
    base_dir: &Path,
) -> Result<Option<reqwest::header::HeaderValue>, BuildError> {
    let Some(secret) = read_secret(env, file, base_dir)? else {
        return Ok(None);
    };
    let mut value =
        reqwest::header::HeaderValue::from_str(&format!("{scheme} {secret}")).map_err(|_| {
            BuildError::Invalid {
                key: if env.is_some() {
                    "api_key_env"
                } else {
                    "api_key_file"
                }
                .to_owned(),
                message: "the API key holds characters that cannot be sent in an HTTP header"
                    .into(),
            }
        })?;
    value.set_sensitive(true);
    Ok(Some(value))
}

/// Builds the pooled client a provider keeps for its lifetime. `connect_timeout` bounds the TCP +
/// TLS connect; per-request read deadlines are set by each provider (streams use per-chunk ones).
///
/// # Errors
/// `BuildError::Invalid` with an empty key (the provider's table as a whole) when the TLS setup
/// fails.
pub fn client(connect_timeout: Duration) -> Result<reqwest::Client, BuildError> {
    install_crypto();
    reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .user_agent(concat!("voxd/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| BuildError::Invalid {
            key: String::new(),
            message: format!("cannot build an HTTP client: {e}"),
        })
}

/// Joins `base_url` (e.g. `https://api.openai.com/v1`, with or without a trailing slash) and `path`.
#[must_use]
pub fn join(base_url: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base_url.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// Checks that `base_url` (the provider's key of that name) is an http(s) URL.
///
/// # Errors
/// `BuildError::Invalid` keyed by `base_url`.
pub fn check_base_url(base_url: &str) -> Result<(), BuildError> {
    match reqwest::Url::parse(base_url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") => Ok(()),
        _ => Err(BuildError::Invalid {
            key: "base_url".to_owned(),
            message: format!("expected an http:// or https:// URL, found {base_url:?}"),
        }),
    }
}

/// Maps a transport error (connect, TLS, read) to a `ProviderError`. reqwest's messages carry the
/// URL, never headers, so they are safe to show.
#[must_use]
pub fn transport_error(provider: &str, e: &reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        return ProviderError::Failed {
            provider: provider.to_owned(),
            message: "request timed out".to_owned(),
        };
    }
    let what = if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "connection broke mid-response"
    } else {
        "request failed"
    };
    // The source chain says why (refused, reset, certificate); the URL is already in `e`.
    let mut message = format!("{what}: {e}");
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    ProviderError::Failed {
        provider: provider.to_owned(),
        message,
    }
}

/// Turns a non-2xx response into a `ProviderError`. The status goes to the client; the provider's
/// body (truncated) goes only to the log, since it may echo request details.
pub async fn status_error(provider: &str, response: reqwest::Response) -> ProviderError {
    let status = response.status();
    let body = match response.bytes().await {
        Ok(b) => String::from_utf8_lossy(&b[..b.len().min(MAX_ERROR_BODY)]).into_owned(),
        Err(e) => format!("(body unreadable: {e})"),
    };
    warn!(provider, status = status.as_u16(), body = %body, "provider returned an error");
    let hint = match status.as_u16() {
        401 | 403 => " (check the API key)",
        404 => " (check base_url and model)",
        429 => " (rate limited or out of quota)",
        500..=599 => " (provider-side error)",
        _ => "",
    };
    ProviderError::Failed {
        provider: provider.to_owned(),
        message: format!("HTTP {}{hint}", status.as_u16()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_join_with_one_slash() {
        assert_eq!(join("http://h/v1/", "/chat"), "http://h/v1/chat");
        assert_eq!(join("http://h/v1", "chat"), "http://h/v1/chat");
    }

    #[test]
    fn base_url_must_be_http() {
        assert!(check_base_url("https://api.openai.com/v1").is_ok());
        let e = check_base_url("api.openai.com").unwrap_err();
        assert!(e.to_string().starts_with("base_url: "), "{e}");
    }

    #[test]
    fn secrets_come_from_files_and_name_their_key() {
        let dir = std::env::temp_dir().join(format!("voxd-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("k"), "sk-test\n").unwrap();
        let got = read_secret(None, Some(Path::new("k")), &dir).unwrap();
        assert_eq!(got.as_deref(), Some("sk-test"));
        let e = read_secret(Some("VOXD_SURELY_UNSET_VAR"), None, &dir).unwrap_err();
        assert!(e.to_string().starts_with("api_key_env: "), "{e}");
        assert!(!e.to_string().contains("sk-test"));
        std::fs::write(dir.join("empty"), " \n").unwrap();
        let e = read_secret(None, Some(Path::new("empty")), &dir).unwrap_err();
        assert!(e.to_string().starts_with("api_key_file: "), "{e}");
        assert_eq!(read_secret(None, None, &dir).unwrap(), None);
    }
}
