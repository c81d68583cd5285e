//! A session's WebSocket: the upgrade handshake (RFC 6455, section 4.2), and tungstenite's
//! protocol engine driven straight from the session task.
//!
//! Why not axum's `WebSocket` (tokio-tungstenite): that wrapper lets a read and a write wait in
//! different tasks, so every poll registers the task's waker in two `AtomicWaker`s and hands the
//! socket a proxy waker that wakes through them. A voxd session reads and writes from one task
//! only, so the waker the socket keeps can be the task's own. Per inbound 20 ms frame, that
//! removes two waker registrations, a proxy wake and axum's message conversion, which `perf` put
//! at several percent of an idle session's CPU (BENCHMARKS.md, "The WebSocket layer"). The
//! protocol itself (framing, masking, limits, ping and close replies) stays tungstenite's.
//!
//! When voxd's own server (`accept.rs`) made the upgrade, the session gets the bare
//! `TcpStream` back from hyper (`Upgraded::downcast`), so every read and write goes straight to
//! tokio's socket instead of through hyper's boxed `Upgraded` and its rewind buffer. Under
//! another server (an embedder's) the session runs on hyper's `Upgraded` as it is.

use std::future::poll_fn;
use std::io::{self, Read, Write};
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::Response;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_util::either::Either;
use tungstenite::protocol::{Role, WebSocketConfig, WebSocketContext};
use tungstenite::{Error, Message};

/// An accepted upgrade request: extract it in a handler, then answer with
/// [`WsUpgrade::on_upgrade`].
pub(crate) struct WsUpgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
    /// The subprotocols the client offered (`Sec-WebSocket-Protocol`).
    offered: Vec<String>,
    /// The one the answer names, if any.
    selected: Option<&'static str>,
}

/// Why a request is not a WebSocket upgrade voxd can accept. The HTTP layer's error mapping
/// (`http::error`) answers it as a JSON `not_websocket` error with `status`.
#[derive(Debug)]
pub(crate) struct NotWebSocket {
    /// 405, 400 or 426.
    pub(crate) status: StatusCode,
    /// What is wrong with the request.
    pub(crate) message: &'static str,
    /// The answer names the version this server speaks (`Sec-WebSocket-Version: 13`, RFC 6455,
    /// 4.4).
    pub(crate) name_version: bool,
}

impl<S: Send + Sync> FromRequestParts<S> for WsUpgrade {
    type Rejection = NotWebSocket;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, NotWebSocket> {
        if parts.method != Method::GET {
            return Err(not_websocket(
                StatusCode::METHOD_NOT_ALLOWED,
                "a WebSocket upgrade must be a GET",
            ));
        }
        let h = &parts.headers;
        if !header_has_token(h, header::CONNECTION, "upgrade") {
            return Err(not_websocket(
                StatusCode::BAD_REQUEST,
                "the Connection header does not include 'upgrade'",
            ));
        }
        if !header_has_token(h, header::UPGRADE, "websocket") {
            return Err(not_websocket(
                StatusCode::BAD_REQUEST,
                "the Upgrade header does not include 'websocket'",
            ));
        }
        if h.get(header::SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
        {
            return Err(NotWebSocket {
                status: StatusCode::UPGRADE_REQUIRED,
                message: "the Sec-WebSocket-Version header is not '13'",
                name_version: true,
            });
        }
        let Some(key) = h.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return Err(not_websocket(
                StatusCode::BAD_REQUEST,
                "the Sec-WebSocket-Key header is missing",
            ));
        };
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(not_websocket(
                StatusCode::UPGRADE_REQUIRED,
                "this connection cannot be upgraded (WebSockets need HTTP/1.1)",
            ));
        };
        let offered = h
            .get_all(header::SEC_WEBSOCKET_PROTOCOL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|p| p.trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect();
        Ok(WsUpgrade {
            key,
            on_upgrade,
            offered,
            selected: None,
        })
    }
}

impl WsUpgrade {
    /// Names `protocol` in the answer if the client offered it (a browser fails a connection
    /// whose answer names none of the subprotocols it offered).
    pub(crate) fn select_protocol(mut self, protocol: &'static str) -> Self {
        if self.offered.iter().any(|p| p == protocol) {
            self.selected = Some(protocol);
        }
        self
    }

    /// The `101 Switching Protocols` answer. Once the client has it, `session` runs on the
    /// upgraded connection in a task of its own; if the upgrade fails, `session` is dropped.
    pub(crate) fn on_upgrade<F, Fut>(self, config: WebSocketConfig, session: F) -> Response
    where
        F: FnOnce(WebSocket) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => session(WebSocket::new(upgraded, config)).await,
                Err(e) => tracing::debug!(error = %e, "WebSocket upgrade failed"),
            }
        });
        let mut resp = Response::new(Body::empty());
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = resp.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(v) = HeaderValue::from_str(&accept) {
            h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
        }
        if let Some(p) = self.selected {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(p));
        }
        resp
    }
}

fn not_websocket(status: StatusCode, message: &'static str) -> NotWebSocket {
    NotWebSocket {
        status,
        message,
        name_version: false,
    }
}

/// Whether the comma-separated header `name` has `token` (case-insensitive).
fn header_has_token(headers: &HeaderMap, name: HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|s| s.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// A server-side WebSocket on an upgraded connection, for one task: `recv` is cancel-safe (all
/// of a partly read frame stays in tungstenite's buffer), writes are `feed` then `flush`.
pub(crate) struct WebSocket {
    io: Conn,
    protocol: WebSocketContext,
}

/// The upgraded connection: the TCP stream itself when hyper hands it back, else hyper's boxed
/// `Upgraded`.
type Conn = Either<TcpStream, TokioIo<Upgraded>>;

/// The connection as `std::io` for tungstenite, for the length of one poll: "not ready" is
/// `WouldBlock`, and the waker registered is the polling task's own.
struct Io<'a, 'b> {
    io: &'a mut Conn,
    cx: &'a mut Context<'b>,
}

fn pending<T>(p: Poll<io::Result<T>>) -> io::Result<T> {
    match p {
        Poll::Ready(r) => r,
        Poll::Pending => Err(io::ErrorKind::WouldBlock.into()),
    }
}

impl Read for Io<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut buf = ReadBuf::new(buf);
        pending(Pin::new(&mut *self.io).poll_read(self.cx, &mut buf))?;
        Ok(buf.filled().len())
    }
}

impl Write for Io<'_, '_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        pending(Pin::new(&mut *self.io).poll_write(self.cx, buf))
    }

    fn flush(&mut self) -> io::Result<()> {
        pending(Pin::new(&mut *self.io).poll_flush(self.cx))
    }
}

fn would_block(e: &Error) -> bool {
    matches!(e, Error::Io(e) if e.kind() == io::ErrorKind::WouldBlock)
}

/// A write's outcome: a frame that met a blocked socket is queued all the same.
fn queued(r: Result<(), Error>) -> Result<(), Error> {
    match r {
        Err(e) if would_block(&e) => Ok(()),
        other => other,
    }
}

impl WebSocket {
    fn new(upgraded: Upgraded, config: WebSocketConfig) -> WebSocket {
        match upgraded.downcast::<TokioIo<TcpStream>>() {
            Ok(parts) => {
                // Bytes the client sent after its request, read by hyper with the request.
                let protocol = if parts.read_buf.is_empty() {
                    WebSocketContext::new(Role::Server, Some(config))
                } else {
                    WebSocketContext::from_partially_read(
                        parts.read_buf.to_vec(),
                        Role::Server,
                        Some(config),
                    )
                };
                WebSocket {
                    io: Either::Left(parts.io.into_inner()),
                    protocol,
                }
            }
            Err(upgraded) => WebSocket {
                io: Either::Right(TokioIo::new(upgraded)),
                protocol: WebSocketContext::new(Role::Server, Some(config)),
            },
        }
    }

    /// The next message; `None` once the connection is closed (after a close handshake, or
    /// when the client went away). Pings are answered inside.
    pub(crate) async fn recv(&mut self) -> Option<Result<Message, Error>> {
        poll_fn(|cx| {
            let mut io = Io {
                io: &mut self.io,
                cx,
            };
            match self.protocol.read(&mut io) {
                Ok(m) => Poll::Ready(Some(Ok(m))),
                Err(e) if would_block(&e) => Poll::Pending,
                Err(Error::ConnectionClosed | Error::AlreadyClosed) => Poll::Ready(None),
                Err(e) => Poll::Ready(Some(Err(e))),
            }
        })
        .await
    }

    /// Queues `message`; it goes out with a later `flush` (or sooner, once the write buffer
    /// fills). Waits only when the write buffer is at its cap and the socket does not drain; a
    /// message too big for even an empty buffer is an error (`WriteBufferFull`).
    pub(crate) async fn feed(&mut self, message: Message) -> Result<(), Error> {
        // A close frame goes out after everything queued: tungstenite leaves the open state
        // before it buffers the frame, so a close frame that did not fit could not be queued
        // again.
        if matches!(message, Message::Close(_)) {
            self.flush().await?;
        }
        let mut message = Some(message);
        poll_fn(|cx| {
            let mut io = Io {
                io: &mut self.io,
                cx,
            };
            let Some(m) = message.take() else {
                return Poll::Ready(Ok(()));
            };
            let full = match self.protocol.write(&mut io, m) {
                Err(Error::WriteBufferFull(m)) => m,
                // Queued: a blocked write leaves the frame in the buffer.
                other => return Poll::Ready(queued(other)),
            };
            match self.protocol.flush(&mut io) {
                // The buffer is empty now: a message that does not fit still never will.
                Ok(()) => Poll::Ready(queued(self.protocol.write(&mut io, *full))),
                Err(e) if would_block(&e) => {
                    message = Some(*full);
                    Poll::Pending
                }
                Err(e) => Poll::Ready(Err(e)),
            }
        })
        .await
    }

    /// Writes out everything queued.
    pub(crate) async fn flush(&mut self) -> Result<(), Error> {
        poll_fn(|cx| {
            let mut io = Io {
                io: &mut self.io,
                cx,
            };
            match self.protocol.flush(&mut io) {
                Ok(()) => Poll::Ready(Ok(())),
                Err(e) if would_block(&e) => Poll::Pending,
                Err(e) => Poll::Ready(Err(e)),
            }
        })
        .await
    }

    /// `feed` then `flush`.
    pub(crate) async fn send(&mut self, message: Message) -> Result<(), Error> {
        self.feed(message).await?;
        self.flush().await
    }

    /// Answers a close the client started: the reply tungstenite queued goes out.
    pub(crate) async fn close(&mut self) -> Result<(), Error> {
        match self.flush().await {
            Err(Error::ConnectionClosed | Error::AlreadyClosed) => Ok(()),
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A masked client text frame.
    fn client_text(text: &str) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x81, 0x80 | text.len() as u8];
        frame.extend_from_slice(&mask);
        frame.extend(text.bytes().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    #[tokio::test]
    async fn a_session_takes_the_tcp_stream_back_and_keeps_bytes_sent_with_the_request() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let done_tx = std::sync::Mutex::new(Some(done_tx));
            let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
                let on_upgrade = hyper::upgrade::on(&mut req);
                let done_tx = done_tx.lock().unwrap().take();
                tokio::spawn(async move {
                    let upgraded = on_upgrade.await.unwrap();
                    let mut ws = WebSocket::new(upgraded, WebSocketConfig::default());
                    let direct = matches!(ws.io, Either::Left(_));
                    let first = ws.recv().await.unwrap().unwrap();
                    ws.send(Message::text("pong")).await.unwrap();
                    let _ = done_tx.unwrap().send((direct, first));
                });
                async {
                    let mut resp = hyper::Response::new(Body::empty());
                    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
                    resp.headers_mut()
                        .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                    Ok::<_, std::convert::Infallible>(resp)
                }
            });
            hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .with_upgrades()
                .await
                .unwrap();
        });
        // The request and the first frame in one write: hyper reads both at once.
        let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut bytes =
            b"GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
                .to_vec();
        bytes.extend(client_text("ping"));
        client.write_all(&bytes).await.unwrap();
        let (direct, first) = tokio::time::timeout(std::time::Duration::from_secs(10), done_rx)
            .await
            .expect("the frame sent with the request was lost")
            .unwrap();
        assert!(
            direct,
            "the session should run on the TcpStream, not on hyper's Upgraded"
        );
        assert_eq!(first, Message::text("ping"));
        let mut reply = Vec::new();
        while !reply.ends_with(b"pong") {
            let mut buf = [0u8; 256];
            let n = client.read(&mut buf).await.unwrap();
            assert!(n > 0, "connection closed before the reply");
            reply.extend_from_slice(&buf[..n]);
        }
        server.await.unwrap();
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn connection_tokens_are_found_in_lists_and_repeated_headers() {
        // Firefox sends `Connection: keep-alive, Upgrade`.
        let firefox = headers(&[("connection", "keep-alive, Upgrade")]);
        assert!(header_has_token(&firefox, header::CONNECTION, "upgrade"));
        let repeated = headers(&[("connection", "close"), ("connection", "UPGRADE")]);
        assert!(header_has_token(&repeated, header::CONNECTION, "upgrade"));
        // A token, not a substring.
        let other = headers(&[("connection", "upgrade-insecure")]);
        assert!(!header_has_token(&other, header::CONNECTION, "upgrade"));
        assert!(!header_has_token(
            &HeaderMap::new(),
            header::CONNECTION,
            "upgrade"
        ));
    }
}
