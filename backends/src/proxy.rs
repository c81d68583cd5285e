//! HTTP CONNECT proxies for connections reqwest does not make: the streaming ASR's WebSocket.
//! (The HTTP providers' clients go through reqwest's own proxy support, with the same rules.)
//!
//! The route is decided once, when the provider is built, since its host never changes: the
//! provider's own `proxy` when set, otherwise `HTTPS_PROXY` (for `wss://`), `HTTP_PROXY` (for
//! `ws://`), `ALL_PROXY` and `NO_PROXY`, read by hyper-util's `Matcher`, the code reqwest reads
//! them with. A connection through a proxy opens TCP to the proxy, asks it for a tunnel with
//! `CONNECT host:port` and then speaks TLS and the WebSocket upgrade through the tunnel, so the
//! proxy sees only the host and port, never the request.

use std::fmt;

use hyper_util::client::proxy::matcher::Matcher;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};

use crate::http::ProxyUrl;
use crate::BuildError;

/// The longest answer to `CONNECT` read from a proxy: a status line and a few headers.
const MAX_ANSWER: usize = 8 * 1024;

/// How a provider reaches its server.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// A TCP connection to the server itself.
    Direct,
    /// A tunnel through an HTTP proxy.
    Proxy(Proxy),
}

/// An HTTP proxy that speaks `CONNECT`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Proxy {
    /// `host:port` of the proxy.
    addr: String,
    /// `Basic ...` from the proxy URL's credentials, sent as `Proxy-Authorization`; sensitive.
    authorization: Option<HeaderValue>,
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Route::Direct => f.write_str("Direct"),
            Route::Proxy(p) => f
                .debug_struct("Proxy")
                .field("addr", &p.addr)
                .field("authorization", &p.authorization.is_some())
                .finish(),
        }
    }
}

impl Route {
    /// The route to `host` (`host:port`) for a connection of `scheme` (`ws`, `wss`, `http` or
    /// `https`): through `explicit` when the provider names a proxy (whatever `NO_PROXY` says),
    /// else as `env` decides (build it with `Matcher::from_env()`).
    ///
    /// # Errors
    /// `BuildError::Invalid` keyed `proxy`: the provider's `proxy` is not an `http://` URL, or the
    /// environment names a proxy that does not speak HTTP CONNECT (a `socks5://` one, say).
    pub(crate) fn decide(
        scheme: &str,
        host: &str,
        explicit: Option<&ProxyUrl>,
        env: &Matcher,
    ) -> Result<Route, BuildError> {
        let invalid = |message: String| BuildError::Invalid {
            key: "proxy".to_owned(),
            message,
        };
        let own;
        let (matcher, from) = match explicit {
            Some(proxy) => {
                proxy.parse()?;
                own = Matcher::builder().all(proxy.0.clone()).build();
                (&own, "proxy")
            }
            None => (
                env,
                "the environment (HTTPS_PROXY, HTTP_PROXY or ALL_PROXY)",
            ),
        };
        let http_scheme = match scheme {
            "wss" | "https" => "https",
            _ => "http",
        };
        let target: Uri = format!("{http_scheme}://{host}/")
            .parse()
            .map_err(|e| invalid(format!("cannot route to {host}: {e}")))?;
        let Some(intercept) = matcher.intercept(&target) else {
            return Ok(Route::Direct);
        };
        let uri = intercept.uri();
        if uri.scheme_str() != Some("http") {
            return Err(invalid(format!(
                "the proxy named by {from} for {host} is a {}:// proxy; this provider's \
                 WebSocket goes through http:// proxies (HTTP CONNECT) only: set proxy = \
                 \"http://...\" in its table, or add the host to NO_PROXY",
                uri.scheme_str().unwrap_or("?")
            )));
        }
        let Some(proxy_host) = uri.host() else {
            return Err(invalid(format!("the proxy named by {from} has no host")));
        };
        let port = uri.port_u16().unwrap_or(80);
        let addr = if proxy_host.contains(':') && !proxy_host.starts_with('[') {
            format!("[{proxy_host}]:{port}")
        } else {
            format!("{proxy_host}:{port}")
        };
        let authorization = intercept.basic_auth().cloned().map(|mut v| {
            v.set_sensitive(true);
            v
        });
        Ok(Route::Proxy(Proxy {
            addr,
            authorization,
        }))
    }

    /// Opens a TCP connection to `host` (`host:port`), directly or through the proxy's tunnel.
    /// `TCP_NODELAY` is set: audio frames should leave at once.
    ///
    /// # Errors
    /// What went wrong, worded for a `ProviderError`: the connection failed, or the proxy
    /// refused the tunnel (with its status; 407 asks for credentials).
    pub(crate) async fn connect(&self, host: &str) -> Result<TcpStream, String> {
        let tcp = match self {
            Route::Direct => TcpStream::connect(host)
                .await
                .map_err(|e| format!("cannot connect to {host}: {e}"))?,
            Route::Proxy(proxy) => proxy.tunnel(host).await?,
        };
        // Best effort: without it the stream still works, a little later.
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }
}

impl Proxy {
    /// `CONNECT host` through the proxy; the stream is the tunnel once the proxy said 2xx.
    async fn tunnel(&self, host: &str) -> Result<TcpStream, String> {
        let proxy = &self.addr;
        let mut tcp = TcpStream::connect(proxy)
            .await
            .map_err(|e| format!("cannot connect to the proxy {proxy}: {e}"))?;
        let mut request = format!("CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n").into_bytes();
        if let Some(authorization) = &self.authorization {
            request.extend_from_slice(b"Proxy-Authorization: ");
            request.extend_from_slice(authorization.as_bytes());
            request.extend_from_slice(b"\r\n");
        }
        request.extend_from_slice(b"\r\n");
        tcp.write_all(&request)
            .await
            .map_err(|e| format!("the proxy {proxy} dropped the connection: {e}"))?;
        // Read up to the blank line. Nothing may follow it: the server speaks only after the
        // client's first bytes (its TLS hello or its upgrade request).
        let mut answer = Vec::with_capacity(256);
        let mut chunk = [0u8; 512];
        let head_len = loop {
            let n = tcp
                .read(&mut chunk)
                .await
                .map_err(|e| format!("the proxy {proxy} dropped the connection: {e}"))?;
            if n == 0 {
                return Err(format!(
                    "the proxy {proxy} closed the connection instead of answering CONNECT"
                ));
            }
            answer.extend_from_slice(&chunk[..n]);
            if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            if answer.len() > MAX_ANSWER {
                return Err(format!("the proxy {proxy} answered CONNECT with no end"));
            }
        };
        let status = connect_status(&answer[..head_len])
            .ok_or_else(|| format!("the proxy {proxy} did not answer CONNECT in HTTP"))?;
        match status {
            200..=299 if head_len == answer.len() => Ok(tcp),
            200..=299 => Err(format!(
                "the proxy {proxy} sent data before the tunnel to {host} was in use"
            )),
            407 => Err(format!(
                "the proxy {proxy} wants credentials (HTTP 407): give them in the proxy URL, \
                 http://user:password@host:port"
            )),
            status => Err(format!(
                "the proxy {proxy} refused the tunnel to {host}: HTTP {status}"
            )),
        }
    }
}

/// The status code of a proxy's answer (`HTTP/1.1 200 Connection established`).
fn connect_status(head: &[u8]) -> Option<u16> {
    let line = head.split(|&b| b == b'\r').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.starts_with("HTTP/1.") {
        return None;
    }
    parts.next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(https: &str, http: &str, no: &str) -> Matcher {
        Matcher::builder().https(https).http(http).no(no).build()
    }

    fn addr(route: &Route) -> Option<&str> {
        match route {
            Route::Direct => None,
            Route::Proxy(p) => Some(&p.addr),
        }
    }

    #[test]
    fn wss_follows_https_proxy_and_ws_follows_http_proxy() {
        let e = env("http://secure.proxy:3128", "http://plain.proxy:8080", "");
        let wss = Route::decide("wss", "api.deepgram.com:443", None, &e).unwrap();
        assert_eq!(addr(&wss), Some("secure.proxy:3128"));
        let ws = Route::decide("ws", "asr.internal:80", None, &e).unwrap();
        assert_eq!(addr(&ws), Some("plain.proxy:8080"));
        let none = Route::decide("wss", "api.deepgram.com:443", None, &env("", "", "")).unwrap();
        assert_eq!(none, Route::Direct);
    }

    #[test]
    fn no_proxy_exempts_hosts_domains_and_addresses() {
        let e = env(
            "http://proxy:3128",
            "",
            "localhost, .corp.example, 10.0.0.0/8, 127.0.0.1",
        );
        for host in [
            "localhost:443",
            "asr.corp.example:443",
            "10.1.2.3:443",
            "127.0.0.1:8443",
        ] {
            assert_eq!(
                Route::decide("wss", host, None, &e).unwrap(),
                Route::Direct,
                "{host}"
            );
        }
        let far = Route::decide("wss", "api.deepgram.com:443", None, &e).unwrap();
        assert_eq!(addr(&far), Some("proxy:3128"));
        let all = env("http://proxy:3128", "", "*");
        assert_eq!(
            Route::decide("wss", "api.deepgram.com:443", None, &all).unwrap(),
            Route::Direct
        );
    }

    #[test]
    fn the_providers_own_proxy_wins_over_the_environment_and_no_proxy() {
        let e = env("http://env.proxy:3128", "", "*");
        let own = ProxyUrl("http://own.proxy:3129".to_owned());
        let route = Route::decide("wss", "api.deepgram.com:443", Some(&own), &e).unwrap();
        assert_eq!(addr(&route), Some("own.proxy:3129"));
    }

    #[test]
    fn credentials_in_the_url_become_proxy_authorization() {
        let own = ProxyUrl("http://ops:s3cret@proxy:3128".to_owned());
        let route =
            Route::decide("wss", "api.deepgram.com:443", Some(&own), &env("", "", "")).unwrap();
        let Route::Proxy(p) = &route else {
            panic!("{route:?}")
        };
        // base64("ops:s3cret")
        assert_eq!(
            p.authorization.as_ref().unwrap().as_bytes(),
            b"Basic b3BzOnMzY3JldA=="
        );
        assert!(!format!("{route:?}").contains("s3cret"));
        assert!(!format!("{own:?}").contains("s3cret"), "{own:?}");
    }

    #[test]
    fn a_proxy_that_cannot_tunnel_is_refused_at_build() {
        let e = env("socks5://proxy:1080", "", "");
        let err = Route::decide("wss", "api.deepgram.com:443", None, &e).unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("proxy: "), "{text}");
        assert!(text.contains("socks5://"), "{text}");
        assert!(text.contains("NO_PROXY"), "{text}");
        let own = ProxyUrl("https://proxy:3128".to_owned());
        let err = Route::decide("wss", "h:443", Some(&own), &env("", "", "")).unwrap_err();
        assert!(err.to_string().contains("http:// proxy"), "{err}");
    }

    #[test]
    fn connect_answers_are_read_by_status() {
        assert_eq!(
            connect_status(b"HTTP/1.1 200 Connection established\r\n\r\n"),
            Some(200)
        );
        assert_eq!(
            connect_status(b"HTTP/1.0 407 Proxy Authentication Required\r\n\r\n"),
            Some(407)
        );
        assert_eq!(connect_status(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
    }
}
