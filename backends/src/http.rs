//! What every network provider shares: one pooled `reqwest` client per provider (keep-alive, no
//! TLS handshake per turn), the TLS every provider verifies servers with (`tls_config`: the
//! platform's roots plus the provider's `ca_file`), its `proxy`, secrets read from env vars or
//! files, and error mapping that keeps the provider's error body in the log and out of the
//! client's message, and says what a TLS failure means.
//!
//! Verification is never switched off: there is no setting for it. A private CA is trusted by
//! naming it (`ca_file`), which adds it to the platform's roots for that provider alone.

use std::fmt;
use std::path::Path;
use std::sync::{Arc, Once};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::Deserialize;
use tracing::warn;

use crate::{BuildError, ProviderError};

/// ALPN for the HTTP providers: HTTP/2 when the server offers it, else HTTP/1.1.
pub const ALPN_HTTP: &[&[u8]] = &[b"h2", b"http/1.1"];

/// ALPN for WebSockets: HTTP/1.1 only, since the upgrade is an HTTP/1.1 request. A server that
/// picked `h2` for the connection could not answer it.
pub const ALPN_WEBSOCKET: &[&[u8]] = &[b"http/1.1"];

/// How much of a provider's error body is logged.
const MAX_ERROR_BODY: usize = 2048;

/// Installs rustls' `ring` crypto provider for the process, once. voxd's own TLS configs name
/// their provider (`tls_config`), so this is for any library that builds a TLS config of its own
/// from the process default: without one, such a library would panic at its first connection.
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

/// A provider's `proxy` setting: the URL of an HTTP proxy (`http://host:port`, optionally
/// `http://user:password@host:port`) that all of the provider's connections go through, as HTTP
/// CONNECT tunnels for TLS. Without it, the provider follows `HTTPS_PROXY`, `HTTP_PROXY`,
/// `ALL_PROXY` and `NO_PROXY`. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct ProxyUrl(pub String);

impl ProxyUrl {
    /// The URL with its password, if any, replaced by `***`: for messages and logs.
    #[must_use]
    pub fn redacted(&self) -> String {
        match reqwest::Url::parse(&self.0) {
            Ok(mut url) if url.password().is_some() => {
                let _ = url.set_password(Some("***"));
                url.into()
            }
            Ok(url) => url.into(),
            Err(_) => "(not a URL)".to_owned(),
        }
    }

    /// Checks the setting: an `http://` URL with a host and nothing after it but `/`.
    ///
    /// # Errors
    /// `BuildError::Invalid` keyed `proxy`.
    pub fn parse(&self) -> Result<reqwest::Url, BuildError> {
        let invalid = |message: String| BuildError::Invalid {
            key: "proxy".to_owned(),
            message,
        };
        let url = reqwest::Url::parse(&self.0).map_err(|e| {
            invalid(format!(
                "expected a proxy URL such as \"http://proxy.internal:3128\" ({e})"
            ))
        })?;
        if url.scheme() != "http" {
            return Err(invalid(format!(
                "expected an http:// proxy (one that speaks HTTP CONNECT), found {}://",
                url.scheme()
            )));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(invalid("the proxy URL has no host".to_owned()));
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() {
            return Err(invalid(format!(
                "a proxy URL is a host and port, found {}",
                self.redacted()
            )));
        }
        Ok(url)
    }
}

impl fmt::Debug for ProxyUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ProxyUrl").field(&self.redacted()).finish()
    }
}

/// Reads `ca_file` (relative to `base_dir`): one or more PEM certificates, each a root the
/// provider trusts beside the platform's.
///
/// # Errors
/// `BuildError::Invalid` keyed `ca_file`, naming the file: unreadable, not PEM, no certificate
/// in it, or a certificate that cannot be a trust anchor.
pub fn read_ca_file(
    ca_file: &Path,
    base_dir: &Path,
) -> Result<Vec<CertificateDer<'static>>, BuildError> {
    let path = base_dir.join(ca_file);
    let invalid = |message: String| BuildError::Invalid {
        key: "ca_file".to_owned(),
        message,
    };
    let bytes = std::fs::read(&path)
        .map_err(|e| invalid(format!("cannot read {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("{} is not PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(invalid(format!(
            "{} holds no certificate (expected PEM blocks starting \
             -----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    let mut check = rustls::RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        check.add(cert.clone()).map_err(|e| {
            invalid(format!(
                "certificate {} in {} cannot be a root: {e}",
                i + 1,
                path.display()
            ))
        })?;
    }
    Ok(certs)
}

/// The TLS configuration of one provider: rustls with the `ring` provider (named here, so no
/// process-wide default is needed), the platform's certificate verifier (the OS's roots, and
/// `SSL_CERT_FILE`/`SSL_CERT_DIR` where set) with `ca_file`'s certificates added, and `alpn`.
///
/// # Errors
/// `read_ca_file`'s; `BuildError::Invalid` keyed `ca_file` (or the table, without one) when
/// no root at all can be loaded.
pub fn tls_config(
    ca_file: Option<&Path>,
    base_dir: &Path,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, BuildError> {
    let extra = match ca_file {
        Some(file) => read_ca_file(file, base_dir)?,
        None => Vec::new(),
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = if extra.is_empty() {
        rustls_platform_verifier::Verifier::new(Arc::clone(&provider))
    } else {
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra, Arc::clone(&provider))
    }
    .map_err(|e| BuildError::Invalid {
        key: if ca_file.is_some() { "ca_file" } else { "" }.to_owned(),
        message: format!(
            "cannot set up TLS: {e} (install the ca-certificates package, or name a CA with ca_file)"
        ),
    })?;
    // `dangerous()` is only rustls' name for "a verifier of your own": this one verifies the
    // chain, the host name and the validity dates, as webpki does.
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| BuildError::Invalid {
            key: String::new(),
            message: format!("cannot set up TLS: {e}"),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// Builds the pooled client a provider keeps for its lifetime. `connect_timeout` bounds the TCP +
/// TLS connect; per-request read deadlines are set by each provider (streams use per-chunk ones).
/// `ca_file` and `proxy` are the provider's keys of those names; relative paths start at
/// `base_dir`.
///
/// # Errors
/// `client_builder`'s, and `BuildError::Invalid` with an empty key (the provider's table as a
/// whole) when the client cannot be built.
pub fn client(
    connect_timeout: Duration,
    ca_file: Option<&Path>,
    proxy: Option<&ProxyUrl>,
    base_dir: &Path,
) -> Result<reqwest::Client, BuildError> {
    build(client_builder(connect_timeout, ca_file, proxy, base_dir)?)
}

/// `client`'s settings, for a provider that adds its own (a redirect policy, say) before
/// building it with `build`.
///
/// # Errors
/// `tls_config`'s, and `ProxyUrl::parse`'s.
pub fn client_builder(
    connect_timeout: Duration,
    ca_file: Option<&Path>,
    proxy: Option<&ProxyUrl>,
    base_dir: &Path,
) -> Result<reqwest::ClientBuilder, BuildError> {
    install_crypto();
    let tls = tls_config(ca_file, base_dir, ALPN_HTTP)?;
    let mut builder = reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .connect_timeout(connect_timeout)
        .pool_idle_timeout(Duration::from_secs(90))
        .tcp_nodelay(true)
        .user_agent(concat!("voxd/", env!("CARGO_PKG_VERSION")));
    // Without a `proxy`, reqwest follows HTTPS_PROXY, HTTP_PROXY, ALL_PROXY and NO_PROXY, read
    // once here.
    if let Some(proxy) = proxy {
        let url = proxy.parse()?;
        let proxy = reqwest::Proxy::all(url).map_err(|e| BuildError::Invalid {
            key: "proxy".to_owned(),
            message: format!("cannot use this proxy: {e}"),
        })?;
        builder = builder.proxy(proxy);
    }
    Ok(builder)
}

/// Builds a client from `client_builder`'s settings.
///
/// # Errors
/// `BuildError::Invalid` with an empty key (the provider's table as a whole).
pub fn build(builder: reqwest::ClientBuilder) -> Result<reqwest::Client, BuildError> {
    builder.build().map_err(|e| BuildError::Invalid {
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

/// `host:port` of `url`, for messages.
#[must_use]
pub fn host_port(url: &reqwest::Url) -> String {
    format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or_default()
    )
}

/// The rustls error somewhere in `e`'s chain. An `io::Error` hides the error it wraps from
/// `source()` (it returns the wrapped error's own source), so each one is opened.
fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if let Some(tls) = find_rustls(inner) {
                return Some(tls);
            }
        }
        next = err.source();
    }
    None
}

/// What a TLS failure in `e`'s chain means and what to do about it, or `None` when the chain
/// holds no TLS error. For example "the certificate is not trusted: UnknownIssuer; add its CA
/// with ca_file".
#[must_use]
pub fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    find_rustls(e).map(explain_tls)
}

/// `tls_failure`'s wording for one rustls error.
#[must_use]
pub fn explain_tls(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer => {
                format!("the certificate is not trusted: {c}; add its CA with ca_file")
            }
            C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                "the certificate is for another host: {c}; use the name the certificate \
                 carries in the URL"
            ),
            C::Expired | C::ExpiredContext { .. } => format!(
                "the certificate has expired: {c}; the server needs a new one (or this \
                 machine's clock is wrong)"
            ),
            C::NotValidYet | C::NotValidYetContext { .. } => {
                format!("the certificate is not valid yet: {c}; check this machine's clock")
            }
            C::Revoked => format!("the certificate was revoked: {c}"),
            other => format!("the certificate was refused: {other}"),
        },
        rustls::Error::AlertReceived(alert) => {
            format!("the server ended the handshake with the alert {alert:?}")
        }
        rustls::Error::InvalidMessage(_) => {
            format!("the server did not answer in TLS ({e}); check the URL's scheme and port")
        }
        other => format!("the handshake failed: {other}"),
    }
}

/// Maps a transport error (connect, TLS, read) to a `ProviderError`. reqwest's messages carry the
/// URL, never headers, so they are safe to show. A TLS failure says which host and why.
#[must_use]
pub fn transport_error(provider: &str, e: &reqwest::Error) -> ProviderError {
    if e.is_timeout() {
        return ProviderError::Failed {
            provider: provider.to_owned(),
            message: "request timed out".to_owned(),
        };
    }
    if let Some(why) = tls_failure(e) {
        let host = e.url().map(host_port).unwrap_or_default();
        return ProviderError::Failed {
            provider: provider.to_owned(),
            message: format!("TLS with {host} failed: {why}"),
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
    fn a_ca_file_that_cannot_be_used_names_the_key_and_the_file() {
        let dir = std::env::temp_dir().join(format!("voxd-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("notes.txt"), "not a certificate\n").unwrap();
        std::fs::write(
            dir.join("bad.pem"),
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        for (file, why) in [
            ("missing.pem", "cannot read"),
            ("notes.txt", "holds no certificate"),
            ("bad.pem", "cannot be a root"),
        ] {
            let e = read_ca_file(Path::new(file), &dir).unwrap_err().to_string();
            assert!(e.starts_with("ca_file: "), "{e}");
            assert!(e.contains(why), "{e}");
            assert!(e.contains(&dir.join(file).display().to_string()), "{e}");
            let e = tls_config(Some(Path::new(file)), &dir, ALPN_HTTP).unwrap_err();
            assert!(e.to_string().starts_with("ca_file: "), "{e}");
        }
    }

    #[test]
    fn a_proxy_is_an_http_url_and_hides_its_password() {
        let with_password = ProxyUrl("http://ops:s3cret@proxy.internal:3128".to_owned());
        assert!(with_password.parse().is_ok());
        assert_eq!(
            with_password.redacted(),
            "http://ops:***@proxy.internal:3128/"
        );
        assert!(!format!("{with_password:?}").contains("s3cret"));
        for bad in [
            "proxy.internal:3128",
            "socks5://proxy:1080",
            "https://proxy:3128",
            "http://proxy:3128/path",
        ] {
            let e = ProxyUrl(bad.to_owned()).parse().unwrap_err().to_string();
            assert!(e.starts_with("proxy: "), "{bad}: {e}");
        }
    }

    #[test]
    fn tls_failures_say_what_to_do() {
        use rustls::CertificateError as C;
        let unknown = rustls::Error::InvalidCertificate(C::UnknownIssuer);
        assert_eq!(
            explain_tls(&unknown),
            "the certificate is not trusted: UnknownIssuer; add its CA with ca_file"
        );
        // Wrapped in io::Error, as tokio-rustls and hyper hand it on.
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, unknown);
        assert!(tls_failure(&io)
            .unwrap()
            .contains("add its CA with ca_file"));
        let expired = rustls::Error::InvalidCertificate(C::Expired);
        assert!(explain_tls(&expired).starts_with("the certificate has expired"));
        let other_host = rustls::Error::InvalidCertificate(C::NotValidForName);
        assert!(explain_tls(&other_host).starts_with("the certificate is for another host"));
        let plain = std::io::Error::other("connection refused");
        assert_eq!(tls_failure(&plain), None);
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
