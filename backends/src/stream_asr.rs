//! The streaming speech-to-text provider `stream`: one WebSocket per utterance to a server that
//! speaks Deepgram's live `listen` API (binary PCM16 in; JSON `Results` out; `KeepAlive`,
//! `Finalize` and `CloseStream` text messages).
//!
//! It promises what `AsrStream` promises and adds: no task per stream. The socket lives inside the
//! stream; writes, keep-alives, reads and the finalize deadline all happen in `poll_update`, so
//! dropping the stream drops the socket (after a best-effort close frame, written without waiting).
//!
//! Finalizing sends `Finalize` then `CloseStream`. Deepgram answers `Finalize` with a result
//! marked `from_finalize` when it had audio left to process, but not always otherwise;
//! `CloseStream` is always answered (the remaining results, `Metadata`, then a normal close). The
//! utterance is complete at whichever comes first, so a user whose words were all final before
//! the end of speech does not wait for the finalize timeout.

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use async_trait::async_trait;
use bytes::BytesMut;
use futures_util::future::BoxFuture;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::header::{AUTHORIZATION, USER_AGENT};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};
use tracing::{debug, warn};
use voxd_core::SampleRate;

use crate::http::ProxyUrl;
use crate::proxy::Route;
use crate::{
    Asr, AsrStream, AsrUpdate, BuildError, ProviderError, RecognitionStream, StreamingAsr,
    Transcript,
};

/// The name this provider reports (`StreamingAsr::name`, `Asr::name` and its `ProviderError`s).
pub const PROVIDER_NAME: &str = "stream";

/// Bytes of 16 kHz mono PCM16 per millisecond.
const BYTES_PER_MS: usize = 32;

/// The largest binary message: audio queued while the socket was busy goes out coalesced, in
/// messages of at most one second.
const MAX_AUDIO_MESSAGE: usize = 1000 * BYTES_PER_MS;

/// The largest message accepted from the provider. Results are a few kilobytes.
const MAX_INCOMING_MESSAGE: usize = 1 << 20;

/// How much of a provider's error body or message is logged.
const MAX_LOGGED: usize = 2048;

/// How much of a provider's error text is shown in a `ProviderError`.
const MAX_SHOWN: usize = 200;

const KEEP_ALIVE: &str = r#"{"type":"KeepAlive"}"#;
const FINALIZE: &str = r#"{"type":"Finalize"}"#;
const CLOSE_STREAM: &str = r#"{"type":"CloseStream"}"#;

/// Query parameters voxd sets itself; `params` and the URL may not repeat them.
const RESERVED_PARAMS: [&str; 7] = [
    "encoding",
    "sample_rate",
    "channels",
    "interim_results",
    "endpointing",
    "model",
    "language",
];

/// Configuration of the streaming ASR (`[asr.stream]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamAsrConfig {
    /// The WebSocket endpoint, `ws://` or `wss://`. Default `wss://api.deepgram.com/v1/listen`.
    /// voxd adds `encoding=linear16&sample_rate=16000&channels=1&interim_results=true` and
    /// `endpointing`, `model`, `language` and `params` to its query.
    pub url: String,
    /// The `model` query parameter; empty leaves it out. Default `nova-3`.
    pub model: String,
    /// The `language` query parameter; empty leaves it out. Default `en`.
    pub language: String,
    /// The `endpointing` query parameter: the pause, in milliseconds, after which the provider
    /// marks a result `speech_final`; 0 sends `endpointing=false`. Default 300.
    pub endpointing_ms: u64,
    /// More query parameters, e.g. `{ smart_format = "true" }`. They may not repeat the ones
    /// voxd sets. Default: none.
    pub params: BTreeMap<String, String>,
    /// The env var holding the API key, sent as `Authorization: Token <key>`. Default: none.
    pub api_key_env: Option<String>,
    /// A file holding the API key (relative to the config file's folder), used when
    /// `api_key_env` is not set. Default: none; with neither, no `Authorization` header is sent.
    pub api_key_file: Option<PathBuf>,
    /// A `KeepAlive` message is sent when no audio was sent for this long, so that a stream
    /// opened ahead of speech stays open (Deepgram closes a silent stream after about 10 s).
    /// Default 5000.
    pub keepalive_ms: u64,
    /// How long connecting (TCP, TLS and the WebSocket upgrade) may take. Default 5000.
    pub connect_timeout_ms: u64,
    /// How long after `Finalize` was sent the final result may take. Default 2000.
    pub finalize_timeout_ms: u64,
    /// How much audio may wait to be sent, in milliseconds, before the stream fails as slower
    /// than real time. Default 5000.
    pub max_backlog_ms: u64,
    /// A PEM file of CA certificates (relative to the config file's folder) trusted for `wss://`
    /// beside the platform's roots: for a server behind a private CA. Default: none.
    pub ca_file: Option<PathBuf>,
    /// An HTTP proxy the WebSocket goes through, as a `CONNECT` tunnel (`http://host:port`);
    /// without one, `HTTPS_PROXY` (`wss://`), `HTTP_PROXY` (`ws://`), `ALL_PROXY` and `NO_PROXY`
    /// apply. Default: none.
    pub proxy: Option<ProxyUrl>,
}

impl Default for StreamAsrConfig {
    fn default() -> Self {
        StreamAsrConfig {
            url: "wss://api.deepgram.com/v1/listen".to_owned(),
            model: "nova-3".to_owned(),
            language: "en".to_owned(),
            endpointing_ms: 300,
            params: BTreeMap::new(),
            api_key_env: None,
            api_key_file: None,
            keepalive_ms: 5000,
            connect_timeout_ms: 5000,
            finalize_timeout_ms: 2000,
            max_backlog_ms: 5000,
            ca_file: None,
            proxy: None,
        }
    }
}

/// The streaming ASR provider. Build it with `StreamAsrProvider::new`; it serves both
/// `StreamingAsr` (one stream per utterance) and `Asr` (a whole utterance over one stream).
pub struct StreamAsrProvider {
    shared: Arc<Shared>,
}

/// What every stream of a provider shares, built once from the config.
struct Shared {
    /// The endpoint with voxd's query. It carries no secret, so it may be logged.
    url: String,
    /// `host:port`: where the connection goes, and what error messages name.
    host: String,
    /// Directly or through a proxy, decided once from the config and the environment.
    route: Route,
    /// `Token <key>`, marked sensitive.
    authorization: Option<HeaderValue>,
    /// TLS for `wss://` (the platform's roots and `ca_file`'s, built once), plain TCP for `ws://`.
    connector: Connector,
    keepalive: Duration,
    connect_timeout: Duration,
    finalize_timeout: Duration,
    max_backlog_bytes: usize,
}

impl std::fmt::Debug for StreamAsrProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamAsrProvider")
            .field("url", &self.shared.url)
            .field("route", &self.shared.route)
            .field("authorization", &self.shared.authorization.is_some())
            .finish_non_exhaustive()
    }
}

impl StreamAsrProvider {
    /// Builds the provider: checks the config, reads the API key and prepares TLS. `base_dir`
    /// is the folder a relative `api_key_file` is resolved against (the config file's folder).
    ///
    /// # Errors
    /// `BuildError::Invalid` naming the key at fault: a URL that is not `ws(s)://`,
    /// a query parameter that repeats one voxd sets, a zero duration, an unset key env var or a
    /// key that cannot be a header value, an unreadable or empty `ca_file`, a `proxy` that is
    /// not an `http://` URL (or a proxy from the environment that cannot tunnel);
    /// `BuildError::Io` for an unreadable key file.
    pub fn new(config: StreamAsrConfig, base_dir: &Path) -> Result<StreamAsrProvider, BuildError> {
        let invalid = |field: &str, message: String| BuildError::Invalid {
            key: field.to_owned(),
            message,
        };
        for (field, value) in [
            ("keepalive_ms", config.keepalive_ms),
            ("connect_timeout_ms", config.connect_timeout_ms),
            ("finalize_timeout_ms", config.finalize_timeout_ms),
            ("max_backlog_ms", config.max_backlog_ms),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be at least 1".to_owned()));
            }
        }
        let mut url = match reqwest::Url::parse(&config.url) {
            Ok(u) if matches!(u.scheme(), "ws" | "wss") && u.host_str().is_some() => u,
            _ => {
                return Err(invalid(
                    "url",
                    format!("expected a ws:// or wss:// URL, found {:?}", config.url),
                ))
            }
        };
        let reserved = |key: &str| RESERVED_PARAMS.contains(&key);
        if let Some((key, _)) = url.query_pairs().find(|(k, _)| reserved(k)) {
            return Err(invalid(
                "url",
                format!("the query may not set {key}: voxd sets it (use the config keys)"),
            ));
        }
        if let Some(key) = config.params.keys().find(|k| reserved(k)) {
            return Err(invalid(
                "params",
                format!("{key} is set by voxd; use the config keys instead"),
            ));
        }
        {
            let mut query = url.query_pairs_mut();
            query
                .append_pair("encoding", "linear16")
                .append_pair("sample_rate", &SampleRate::INTERNAL.hz().to_string())
                .append_pair("channels", "1")
                .append_pair("interim_results", "true");
            match config.endpointing_ms {
                0 => query.append_pair("endpointing", "false"),
                ms => query.append_pair("endpointing", &ms.to_string()),
            };
            if !config.model.is_empty() {
                query.append_pair("model", &config.model);
            }
            if !config.language.is_empty() {
                query.append_pair("language", &config.language);
            }
            for (key, value) in &config.params {
                query.append_pair(key, value);
            }
        }
        let host = format!(
            "{}:{}",
            url.host_str().unwrap_or_default(),
            url.port_or_known_default().unwrap_or_default()
        );

        let authorization = crate::http::authorization(
            "Token",
            config.api_key_env.as_deref(),
            config.api_key_file.as_deref(),
            base_dir,
        )?;

        let connector = if url.scheme() == "wss" {
            Connector::Rustls(Arc::new(crate::http::tls_config(
                config.ca_file.as_deref(),
                base_dir,
                crate::http::ALPN_WEBSOCKET,
            )?))
        } else {
            if config.ca_file.is_some() {
                return Err(invalid(
                    "ca_file",
                    "applies to wss:// URLs only; this url is ws://".to_owned(),
                ));
            }
            Connector::Plain
        };
        let route = Route::decide(
            url.scheme(),
            &host,
            config.proxy.as_ref(),
            &hyper_util::client::proxy::matcher::Matcher::from_env(),
        )?;

        Ok(StreamAsrProvider {
            shared: Arc::new(Shared {
                url: url.into(),
                host,
                route,
                authorization,
                connector,
                keepalive: Duration::from_millis(config.keepalive_ms),
                connect_timeout: Duration::from_millis(config.connect_timeout_ms),
                finalize_timeout: Duration::from_millis(config.finalize_timeout_ms),
                max_backlog_bytes: usize::try_from(config.max_backlog_ms)
                    .unwrap_or(usize::MAX)
                    .saturating_mul(BYTES_PER_MS),
            }),
        })
    }

    /// The URL streams connect to, with voxd's query parameters. It carries no secret.
    pub fn url(&self) -> &str {
        &self.shared.url
    }
}

impl StreamingAsr for StreamAsrProvider {
    fn name(&self) -> &str {
        PROVIDER_NAME
    }

    fn open(&self) -> BoxFuture<'static, Result<AsrStream, ProviderError>> {
        self.open_in(None)
    }

    fn open_in(
        &self,
        language: Option<&str>,
    ) -> BoxFuture<'static, Result<AsrStream, ProviderError>> {
        let shared = Arc::clone(&self.shared);
        let language = language.map(str::to_owned);
        Box::pin(async move {
            connect(&shared, language.as_deref())
                .await
                .map(AsrStream::new)
        })
    }
}

#[async_trait]
impl Asr for StreamAsrProvider {
    fn name(&self) -> &str {
        PROVIDER_NAME
    }

    /// Opens a stream, sends the whole utterance at once, finalizes and waits for the answer.
    /// The backlog limit does not apply (the audio is already here), and the finalize timeout is
    /// extended by the audio's duration: the provider may process it no faster than real time.
    async fn transcribe(&self, audio: Arc<[i16]>) -> Result<Transcript, ProviderError> {
        self.transcribe_in(audio, None).await
    }

    async fn transcribe_in(
        &self,
        audio: Arc<[i16]>,
        language: Option<&str>,
    ) -> Result<Transcript, ProviderError> {
        if audio.is_empty() {
            return Ok(Transcript {
                text: String::new(),
            });
        }
        let mut stream = connect(&self.shared, language).await?;
        stream.queue_audio(&audio);
        stream.finalize_timeout += SampleRate::INTERNAL.duration_of(audio.len() as u64);
        stream.finalize()?;
        loop {
            match std::future::poll_fn(|cx| stream.poll_update(cx)).await {
                Some(Ok(AsrUpdate::Finalized(transcript))) => return Ok(transcript),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Err(failed("the stream ended without a transcript")),
            }
        }
    }
}

/// `url` with its `language` query parameter set to `language`.
fn with_language(url: &str, language: &str) -> String {
    let Ok(mut parsed) = reqwest::Url::parse(url) else {
        return url.to_owned();
    };
    let pairs: Vec<(String, String)> = parsed
        .query_pairs()
        .filter(|(k, _)| k != "language")
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    parsed
        .query_pairs_mut()
        .clear()
        .extend_pairs(pairs)
        .append_pair("language", language);
    parsed.into()
}

/// Connects one stream: TCP (to the server, or a tunnel through the proxy), TLS for `wss://`,
/// and the WebSocket upgrade, all within the connect timeout.
async fn connect(shared: &Shared, language: Option<&str>) -> Result<WsStream, ProviderError> {
    let url = match language {
        Some(language) => with_language(&shared.url, language),
        None => shared.url.clone(),
    };
    let mut request = url
        .as_str()
        .into_client_request()
        .map_err(|e| failed(format!("invalid URL: {e}")))?;
    let headers = request.headers_mut();
    if let Some(authorization) = &shared.authorization {
        headers.insert(AUTHORIZATION, authorization.clone());
    }
    headers.insert(
        USER_AGENT,
        HeaderValue::from_static(concat!("voxd/", env!("CARGO_PKG_VERSION"))),
    );
    // No write buffering in tungstenite: every message goes to the socket when it is sent, so
    // the only audio waiting is this module's queue, which the backlog limit bounds.
    let config = WebSocketConfig::default()
        .write_buffer_size(0)
        .max_message_size(Some(MAX_INCOMING_MESSAGE))
        .max_frame_size(Some(MAX_INCOMING_MESSAGE));
    let connecting = async {
        let tcp = shared.route.connect(&shared.host).await.map_err(failed)?;
        tokio_tungstenite::client_async_tls_with_config(
            request,
            tcp,
            Some(config),
            Some(shared.connector.clone()),
        )
        .await
        .map_err(|e| handshake_error(&shared.host, e))
    };
    let (ws, response) = match tokio::time::timeout(shared.connect_timeout, connecting).await {
        Ok(Ok(connected)) => connected,
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            warn!(provider = PROVIDER_NAME, host = %shared.host, "connect timed out");
            return Err(failed(format!(
                "cannot connect to {} within {} ms",
                shared.host,
                shared.connect_timeout.as_millis()
            )));
        }
    };
    debug!(
        provider = PROVIDER_NAME,
        host = %shared.host,
        request_id = ?response.headers().get("dg-request-id"),
        "recognition stream open"
    );
    Ok(WsStream::new(ws, shared))
}

/// Maps a failed TLS handshake or upgrade to a message that says what to check.
fn handshake_error(host: &str, e: WsError) -> ProviderError {
    if let Some(why) = crate::http::tls_failure(&e) {
        return failed(format!("TLS with {host} failed: {why}"));
    }
    match e {
        WsError::Http(response) => {
            let status = response.status().as_u16();
            let body = response.body().as_deref().unwrap_or_default();
            let body = String::from_utf8_lossy(&body[..body.len().min(MAX_LOGGED)]);
            warn!(provider = PROVIDER_NAME, status, body = %body, "upgrade rejected");
            let hint = match status {
                401 | 403 => " (check the API key)",
                400 | 404 => " (check url, model, language and params)",
                429 => " (rate limited or out of quota)",
                500..=599 => " (provider-side error)",
                _ => "",
            };
            failed(format!("HTTP {status} at the WebSocket upgrade{hint}"))
        }
        WsError::Io(e) => failed(format!("cannot connect to {host}: {e}")),
        WsError::Tls(e) => failed(format!("TLS with {host} failed: {e}")),
        WsError::Url(e) => failed(format!("invalid URL: {e}")),
        other => failed(format!("the WebSocket upgrade with {host} failed: {other}")),
    }
}

fn failed(message: impl Into<String>) -> ProviderError {
    ProviderError::Failed {
        provider: PROVIDER_NAME.to_owned(),
        message: message.into(),
    }
}

/// `text` cut to at most `max` bytes, at a character boundary.
fn clip(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Where a stream is in its life. The single timer means a different deadline in each phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Audio flows; the timer is the keep-alive check.
    Streaming,
    /// `Finalize` and `CloseStream` are queued (behind any audio). The timer is the finalize
    /// deadline once `Finalize` was written, and unused before.
    Finalizing {
        /// `Finalize` was written and the deadline set.
        sent: bool,
    },
    /// Finalized or failed: the socket is gone.
    Done,
}

/// One open stream: the socket and everything waiting to be written or reported.
struct WsStream {
    /// `None` once done: the socket is closed as soon as the stream ends, even if the driver
    /// keeps the value around.
    ws: Option<WebSocketStream<MaybeTlsStream<TcpStream>>>,
    phase: Phase,
    /// PCM16LE not yet handed to the socket. Bounded by `max_backlog_bytes` for `push`.
    audio: BytesMut,
    /// Text messages, written after the queued audio.
    control: VecDeque<&'static str>,
    /// Keep-alive check in `Streaming`, finalize deadline in `Finalizing { sent: true }`.
    timer: Pin<Box<Sleep>>,
    /// When audio (or a keep-alive) was last written; the keep-alive timer is re-armed from it
    /// only when it fires, so a frame costs a clock read rather than a timer update.
    last_sent: Instant,
    keepalive: Duration,
    finalize_timeout: Duration,
    max_backlog_bytes: usize,
    /// Some audio was pushed: without any, finalizing needs no answer from the provider.
    pushed_any: bool,
    /// `CloseStream` was written: from then on `Metadata` or a normal close ends the utterance.
    close_stream_sent: bool,
    /// The final segments so far, joined by single spaces.
    finals: String,
    /// The last interim segment reported, to skip repeats.
    interim: String,
    /// Updates to yield before anything else.
    ready: VecDeque<AsrUpdate>,
    /// The failure to yield once (after `ready`).
    report: Option<ProviderError>,
    /// The failure, kept for `push` and `finalize`.
    failure: Option<ProviderError>,
    /// The task polling the stream, woken when `push` or `finalize` queue something to write.
    waker: Option<Waker>,
}

impl WsStream {
    fn new(ws: WebSocketStream<MaybeTlsStream<TcpStream>>, shared: &Shared) -> WsStream {
        let now = Instant::now();
        WsStream {
            ws: Some(ws),
            phase: Phase::Streaming,
            audio: BytesMut::with_capacity(MAX_AUDIO_MESSAGE),
            control: VecDeque::with_capacity(4),
            timer: Box::pin(tokio::time::sleep_until(now + shared.keepalive)),
            last_sent: now,
            keepalive: shared.keepalive,
            finalize_timeout: shared.finalize_timeout,
            max_backlog_bytes: shared.max_backlog_bytes,
            pushed_any: false,
            close_stream_sent: false,
            finals: String::new(),
            interim: String::new(),
            ready: VecDeque::new(),
            report: None,
            failure: None,
            waker: None,
        }
    }

    /// Appends audio to the send queue, without the backlog check.
    fn queue_audio(&mut self, audio: &[i16]) {
        if audio.is_empty() {
            return;
        }
        let was_empty = self.audio.is_empty();
        self.audio.reserve(audio.len() * 2);
        for sample in audio {
            self.audio.extend_from_slice(&sample.to_le_bytes());
        }
        self.pushed_any = true;
        if was_empty {
            self.wake();
        }
    }

    fn wake(&self) {
        if let Some(waker) = &self.waker {
            waker.wake_by_ref();
        }
    }

    /// Ends the stream with `e`: it is yielded once (after any queued updates) and returned by
    /// `push` and `finalize` from then on. The socket is closed at once.
    fn fail(&mut self, e: ProviderError) {
        if self.phase == Phase::Done {
            return;
        }
        warn!(provider = PROVIDER_NAME, error = %e, "recognition stream failed");
        self.phase = Phase::Done;
        self.failure = Some(e.clone());
        self.report = Some(e);
        self.audio.clear();
        self.control.clear();
        self.shutdown();
        self.wake();
    }

    /// The utterance is complete: report the transcript and close the socket.
    fn complete(&mut self) {
        self.ready.push_back(AsrUpdate::Finalized(Transcript {
            text: self.finals.clone(),
        }));
        self.phase = Phase::Done;
        self.shutdown();
    }

    /// Writes the queued text messages (`CloseStream` after a finalize without audio) and a close
    /// frame, as far as the socket takes them without waiting, then drops the socket. Queued
    /// audio is never written here. Best effort: what does not fit is replaced by the TCP close.
    fn shutdown(&mut self) {
        let Some(mut ws) = self.ws.take() else {
            return;
        };
        let mut cx = Context::from_waker(Waker::noop());
        let mut messages: Vec<Message> = self
            .control
            .drain(..)
            .map(|t| Message::Text(Utf8Bytes::from_static(t)))
            .collect();
        messages.push(Message::Close(Some(CloseFrame {
            code: CloseCode::Normal,
            reason: Utf8Bytes::from_static(""),
        })));
        for message in messages {
            if !matches!(ws.poll_ready_unpin(&mut cx), Poll::Ready(Ok(()))) {
                break;
            }
            if ws.start_send_unpin(message).is_err() {
                break;
            }
        }
        let _ = ws.poll_flush_unpin(&mut cx);
    }

    /// Hands queued audio, then queued text messages, to the socket as far as it takes them,
    /// then flushes. The socket's readiness registers `cx` when it is full.
    fn poll_write(&mut self, cx: &mut Context<'_>) -> Result<(), ProviderError> {
        let Some(ws) = self.ws.as_mut() else {
            return Ok(());
        };
        while !self.audio.is_empty() || !self.control.is_empty() {
            match ws.poll_ready_unpin(cx) {
                Poll::Pending => return Ok(()),
                Poll::Ready(Err(e)) => return Err(connection_error(&e)),
                Poll::Ready(Ok(())) => {}
            }
            let message = if self.audio.is_empty() {
                let Some(text) = self.control.pop_front() else {
                    break;
                };
                if text == CLOSE_STREAM {
                    self.close_stream_sent = true;
                }
                if text == FINALIZE {
                    // The deadline counts from here, not from `finalize()`: audio queued before it
                    // is the provider's to process, not its lateness.
                    self.phase = Phase::Finalizing { sent: true };
                    let deadline = Instant::now() + self.finalize_timeout;
                    self.timer.as_mut().reset(deadline);
                }
                Message::Text(Utf8Bytes::from_static(text))
            } else {
                let n = self.audio.len().min(MAX_AUDIO_MESSAGE);
                self.last_sent = Instant::now();
                Message::Binary(self.audio.split_to(n).freeze())
            };
            ws.start_send_unpin(message)
                .map_err(|e| connection_error(&e))?;
        }
        match ws.poll_flush_unpin(cx) {
            Poll::Ready(Err(e)) => Err(connection_error(&e)),
            _ => Ok(()),
        }
    }

    /// Checks the phase's deadline. Returns whether a keep-alive was queued (to be written).
    fn poll_timer(&mut self, cx: &mut Context<'_>) -> bool {
        match self.phase {
            Phase::Streaming => {
                while self.timer.as_mut().poll(cx).is_ready() {
                    let now = Instant::now();
                    let due = self.last_sent + self.keepalive;
                    if now < due {
                        self.timer.as_mut().reset(due);
                        continue;
                    }
                    self.last_sent = now;
                    self.timer.as_mut().reset(now + self.keepalive);
                    // Queued audio that could not be written would not be helped by more bytes.
                    if self.audio.is_empty() {
                        self.control.push_back(KEEP_ALIVE);
                        return true;
                    }
                }
                false
            }
            Phase::Finalizing { sent: true } => {
                if self.timer.as_mut().poll(cx).is_ready() {
                    self.fail(ProviderError::Timeout {
                        provider: PROVIDER_NAME.to_owned(),
                        after_ms: u64::try_from(self.finalize_timeout.as_millis())
                            .unwrap_or(u64::MAX),
                    });
                    return true;
                }
                false
            }
            Phase::Finalizing { sent: false } | Phase::Done => false,
        }
    }

    fn on_message(&mut self, message: Message) {
        match message {
            Message::Text(text) => self.on_text(text.as_str()),
            Message::Close(frame) => self.on_close(frame),
            // Pings are answered by tungstenite (the pong goes out with the next flush); nothing
            // else binary is part of the protocol.
            Message::Binary(_) | Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }

    fn on_text(&mut self, text: &str) {
        let incoming: Incoming = match serde_json::from_str(text) {
            Ok(m) => m,
            Err(e) => {
                debug!(provider = PROVIDER_NAME, error = %e, "ignoring a message that is not JSON");
                return;
            }
        };
        if let Some(error) = incoming.error_text() {
            warn!(provider = PROVIDER_NAME, message = %clip(text, MAX_LOGGED), "provider error");
            self.fail(failed(format!(
                "the provider reported an error: {}",
                clip(error, MAX_SHOWN)
            )));
            return;
        }
        match incoming.kind.as_deref() {
            Some("Results") => self.on_results(&incoming),
            // The summary `CloseStream` is answered with: every result was sent before it.
            Some("Metadata") if self.close_stream_sent => self.complete(),
            kind => debug!(provider = PROVIDER_NAME, ?kind, "ignoring a message"),
        }
    }

    fn on_results(&mut self, results: &Incoming) {
        let segment = results
            .channel
            .as_ref()
            .and_then(|c| c.alternatives.first())
            .map_or("", |a| a.transcript.trim());
        if results.is_final {
            self.interim.clear();
            if !segment.is_empty() {
                if !self.finals.is_empty() {
                    self.finals.push(' ');
                }
                self.finals.push_str(segment);
            }
            if !segment.is_empty() || results.speech_final {
                self.ready.push_back(AsrUpdate::Final {
                    segment: segment.to_owned(),
                    text: self.finals.clone(),
                    speech_final: results.speech_final,
                });
            }
            if results.from_finalize && self.phase == (Phase::Finalizing { sent: true }) {
                self.complete();
            }
        } else if !segment.is_empty() && segment != self.interim {
            segment.clone_into(&mut self.interim);
            let text = if self.finals.is_empty() {
                segment.to_owned()
            } else {
                format!("{} {segment}", self.finals)
            };
            self.ready.push_back(AsrUpdate::Interim { text });
        }
    }

    fn on_close(&mut self, frame: Option<CloseFrame>) {
        let normal = frame.as_ref().is_none_or(|f| f.code == CloseCode::Normal);
        if normal && self.close_stream_sent {
            // The provider closed after answering `CloseStream`: every result is in.
            self.complete();
            return;
        }
        let message = match &frame {
            Some(f) if !f.reason.is_empty() => format!(
                "the provider closed the stream (code {}): {}",
                u16::from(f.code),
                clip(f.reason.as_str(), MAX_SHOWN)
            ),
            Some(f) => format!(
                "the provider closed the stream (code {})",
                u16::from(f.code)
            ),
            None => "the provider closed the stream".to_owned(),
        };
        self.fail(failed(message));
    }
}

/// Maps an error of an open connection.
fn connection_error(e: &WsError) -> ProviderError {
    use tokio_tungstenite::tungstenite::error::ProtocolError;
    match e {
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            failed("the connection dropped without a close frame")
        }
        WsError::ConnectionClosed | WsError::AlreadyClosed => {
            failed("the connection closed mid-stream")
        }
        WsError::Io(e) => failed(format!("the connection broke: {e}")),
        WsError::Capacity(e) => failed(format!("the provider sent too large a message: {e}")),
        other => failed(format!("WebSocket error: {other}")),
    }
}

impl RecognitionStream for WsStream {
    fn push(&mut self, audio: &[i16]) -> Result<(), ProviderError> {
        if let Some(e) = &self.failure {
            return Err(e.clone());
        }
        if self.phase != Phase::Streaming {
            return Err(ProviderError::InvalidRequest {
                provider: PROVIDER_NAME.to_owned(),
                message: "audio after finalize".to_owned(),
            });
        }
        if self.audio.len() + audio.len() * 2 > self.max_backlog_bytes {
            let e = failed(format!(
                "fell behind real time: more than {} ms of audio is waiting to be sent",
                self.max_backlog_bytes / BYTES_PER_MS
            ));
            self.fail(e.clone());
            return Err(e);
        }
        self.queue_audio(audio);
        Ok(())
    }

    fn finalize(&mut self) -> Result<(), ProviderError> {
        match self.phase {
            Phase::Streaming if !self.pushed_any => {
                // Nothing was said: the answer is known, and the provider might never give one.
                self.control.push_back(CLOSE_STREAM);
                self.complete();
            }
            Phase::Streaming => {
                self.control.push_back(FINALIZE);
                self.control.push_back(CLOSE_STREAM);
                self.phase = Phase::Finalizing { sent: false };
            }
            Phase::Finalizing { .. } => {}
            Phase::Done => {
                if let Some(e) = &self.failure {
                    return Err(e.clone());
                }
            }
        }
        self.wake();
        Ok(())
    }

    fn poll_update(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<AsrUpdate, ProviderError>>> {
        match &mut self.waker {
            Some(w) => w.clone_from(cx.waker()),
            None => self.waker = Some(cx.waker().clone()),
        }
        loop {
            if let Some(update) = self.ready.pop_front() {
                return Poll::Ready(Some(Ok(update)));
            }
            if let Some(e) = self.report.take() {
                return Poll::Ready(Some(Err(e)));
            }
            if self.phase == Phase::Done {
                return Poll::Ready(None);
            }
            if let Err(e) = self.poll_write(cx) {
                self.fail(e);
                continue;
            }
            let Some(ws) = self.ws.as_mut() else {
                return Poll::Ready(None);
            };
            match ws.poll_next_unpin(cx) {
                Poll::Ready(Some(Ok(message))) => self.on_message(message),
                Poll::Ready(Some(Err(e))) => self.fail(connection_error(&e)),
                Poll::Ready(None) => self.fail(failed("the connection closed mid-stream")),
                // Deadlines are checked only when nothing is left to read: a result that
                // arrived in time is not lost to a timer that fired in the same instant.
                Poll::Pending => {
                    if !self.poll_timer(cx) {
                        return Poll::Pending;
                    }
                }
            }
        }
    }
}

impl Drop for WsStream {
    fn drop(&mut self) {
        // Cancelled: nothing queued is wanted any more, only the close frame.
        self.audio.clear();
        self.control.clear();
        self.shutdown();
    }
}

/// A message from the provider; only the fields voxd reads.
#[derive(Debug, Deserialize)]
struct Incoming {
    #[serde(rename = "type")]
    kind: Option<String>,
    channel: Option<Channel>,
    #[serde(default)]
    is_final: bool,
    #[serde(default)]
    speech_final: bool,
    #[serde(default)]
    from_finalize: bool,
    /// Error messages come in several shapes: `{"type":"Error","description":...}`,
    /// `{"err_code":...,"err_msg":...}`.
    description: Option<String>,
    message: Option<String>,
    err_msg: Option<String>,
    err_code: Option<String>,
}

impl Incoming {
    /// The message's error text when it reports an error.
    fn error_text(&self) -> Option<&str> {
        let is_error = self.kind.as_deref() == Some("Error")
            || self.err_msg.is_some()
            || self.err_code.is_some();
        if !is_error {
            return None;
        }
        Some(
            [
                &self.description,
                &self.err_msg,
                &self.message,
                &self.err_code,
            ]
            .into_iter()
            .find_map(|t| t.as_deref())
            .unwrap_or("no description"),
        )
    }
}

#[derive(Debug, Deserialize)]
struct Channel {
    #[serde(default)]
    alternatives: Vec<Alternative>,
}

#[derive(Debug, Deserialize)]
struct Alternative {
    #[serde(default)]
    transcript: String,
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_sessions_language_replaces_the_configured_one_in_the_query() {
        let url = "ws://127.0.0.1:1/v1/listen?encoding=linear16&language=en&model=nova";
        assert_eq!(
            super::with_language(url, "fr-CA"),
            "ws://127.0.0.1:1/v1/listen?encoding=linear16&model=nova&language=fr-CA"
        );
        assert_eq!(
            super::with_language("ws://h/listen?a=1", "de"),
            "ws://h/listen?a=1&language=de"
        );
    }

    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU32, Ordering};

    use futures_util::stream::FusedStream;
    use tokio::net::TcpListener;
    use tokio::task::JoinHandle;
    use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
    use tokio_tungstenite::tungstenite::http;

    const KEY: &str = "dg-test-key";
    /// 20 ms of 16 kHz mono audio, in samples and in bytes.
    const FRAME: usize = 320;
    const FRAME_BYTES: usize = 640;

    /// What the stub server does besides counting.
    #[derive(Clone, Default)]
    struct Script {
        /// Final segments it "recognises", one per `segment_bytes` of audio: the segment's first
        /// word as an interim result halfway, then the segment as a final result (the last one
        /// `speech_final`).
        segments: Vec<&'static str>,
        segment_bytes: usize,
        /// Answers `Finalize` with this text as a `from_finalize` final result; `None` ignores it.
        finalize_reply: Option<&'static str>,
        /// Answers `CloseStream` with `Metadata` and a normal close.
        answer_close_stream: bool,
        /// After this many audio bytes, closes with this code and reason.
        close_after: Option<(usize, u16, &'static str)>,
        /// After this many audio bytes, sends this JSON error message.
        error_after: Option<(usize, &'static str)>,
    }

    /// What the stub saw.
    #[derive(Debug, Default)]
    struct Report {
        query: HashMap<String, String>,
        authorization: Option<String>,
        rejected: bool,
        audio_bytes: usize,
        binary_messages: usize,
        /// Binary messages that were not a whole number of 16-bit samples.
        odd_messages: usize,
        keepalives: usize,
        /// The audio bytes received when `Finalize` arrived.
        finalize_after_bytes: Option<usize>,
        close_stream: bool,
        /// The code of the client's close frame, if one arrived.
        client_close: Option<u16>,
    }

    fn results(text: &str, is_final: bool, speech_final: bool, from_finalize: bool) -> Message {
        Message::text(
            serde_json::json!({
                "type": "Results",
                "channel_index": [0, 1],
                "duration": 0.2,
                "start": 0.0,
                "is_final": is_final,
                "speech_final": speech_final,
                "from_finalize": from_finalize,
                "channel": {"alternatives": [{"transcript": text, "confidence": 0.9, "words": []}]},
                "metadata": {"request_id": "stub"}
            })
            .to_string(),
        )
    }

    /// Starts a one-connection server speaking the listen protocol on 127.0.0.1. Returns its
    /// URL and its report, complete once the connection ended.
    async fn stub(script: Script) -> (String, JoinHandle<Report>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("ws://{}/v1/listen", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.expect("accept");
            let mut seen: Option<(String, Option<String>)> = None;
            // The signature is tungstenite's callback's.
            #[allow(clippy::result_large_err)]
            let check =
                |request: &Request, response: Response| -> Result<Response, ErrorResponse> {
                    let authorization = request
                        .headers()
                        .get("authorization")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let query = request.uri().query().unwrap_or_default().to_owned();
                    let allowed = authorization.as_deref() == Some(&format!("Token {KEY}"));
                    seen = Some((query, authorization));
                    if allowed {
                        Ok(response)
                    } else {
                        Err(http::Response::builder()
                            .status(401)
                            .body(Some(
                                r#"{"err_code":"INVALID_AUTH","err_msg":"Invalid credentials."}"#
                                    .to_owned(),
                            ))
                            .expect("response"))
                    }
                };
            let accepted = tokio_tungstenite::accept_hdr_async(tcp, check).await;
            let mut report = Report::default();
            if let Some((query, authorization)) = seen {
                report.query = query
                    .split('&')
                    .filter_map(|pair| pair.split_once('='))
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect();
                report.authorization = authorization;
            }
            let Ok(mut ws) = accepted else {
                report.rejected = true;
                return report;
            };
            // Event 2k is segment k's interim result, event 2k + 1 its final result.
            let mut next_event = 0;
            let threshold = |event: usize| {
                let segment = event / 2;
                script.segment_bytes * segment
                    + if event.is_multiple_of(2) {
                        script.segment_bytes / 2
                    } else {
                        script.segment_bytes
                    }
            };
            let mut closing = false;
            while let Some(Ok(message)) = ws.next().await {
                match message {
                    Message::Binary(audio) => {
                        report.audio_bytes += audio.len();
                        report.binary_messages += 1;
                        if !audio.len().is_multiple_of(2) {
                            report.odd_messages += 1;
                        }
                        while next_event < 2 * script.segments.len()
                            && report.audio_bytes >= threshold(next_event)
                        {
                            let segment = script.segments[next_event / 2];
                            let reply = if next_event.is_multiple_of(2) {
                                let first = segment.split(' ').next().unwrap_or_default();
                                results(first, false, false, false)
                            } else {
                                let last = next_event + 1 == 2 * script.segments.len();
                                results(segment, true, last, false)
                            };
                            let _ = ws.send(reply).await;
                            next_event += 1;
                        }
                        if let Some((after, text)) = script.error_after {
                            if report.audio_bytes >= after && !closing {
                                let _ = ws.send(Message::text(text)).await;
                            }
                        }
                        if let Some((after, code, reason)) = script.close_after {
                            if report.audio_bytes >= after && !closing {
                                closing = true;
                                let _ = ws
                                    .close(Some(CloseFrame {
                                        code: CloseCode::from(code),
                                        reason: reason.into(),
                                    }))
                                    .await;
                            }
                        }
                    }
                    Message::Text(text) => {
                        let value: serde_json::Value =
                            serde_json::from_str(text.as_str()).expect("control messages are JSON");
                        match value["type"].as_str() {
                            Some("KeepAlive") => report.keepalives += 1,
                            Some("Finalize") => {
                                report.finalize_after_bytes = Some(report.audio_bytes);
                                if let Some(text) = script.finalize_reply {
                                    let _ = ws.send(results(text, true, true, true)).await;
                                }
                            }
                            Some("CloseStream") => {
                                report.close_stream = true;
                                if script.answer_close_stream && !closing {
                                    closing = true;
                                    let metadata = r#"{"type":"Metadata","request_id":"stub","duration":1.0,"channels":1}"#;
                                    let _ = ws.send(Message::text(metadata)).await;
                                    let _ = ws.close(None).await;
                                }
                            }
                            other => panic!("unexpected control message {other:?}"),
                        }
                    }
                    Message::Close(frame) => {
                        report.client_close = Some(frame.map_or(1005, |f| u16::from(f.code)));
                    }
                    _ => {}
                }
            }
            report
        });
        (url, server)
    }

    /// A folder holding `key` (the API key the stub accepts) and `wrong-key`.
    fn key_dir() -> PathBuf {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "voxd-stream-asr-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        std::fs::write(dir.join("key"), format!("{KEY}\n")).expect("write key");
        std::fs::write(dir.join("wrong-key"), "not-the-key\n").expect("write key");
        dir
    }

    fn provider(url: &str, tweak: impl FnOnce(&mut StreamAsrConfig)) -> StreamAsrProvider {
        let mut config = StreamAsrConfig {
            url: url.to_owned(),
            api_key_file: Some("key".into()),
            ..StreamAsrConfig::default()
        };
        tweak(&mut config);
        StreamAsrProvider::new(config, &key_dir()).expect("valid config")
    }

    /// `frames` 20 ms frames of non-silent audio.
    fn speech(frames: usize) -> Vec<i16> {
        (0..frames * FRAME)
            .map(|i| ((i as i16).wrapping_mul(131) % 3000) + 1)
            .collect()
    }

    fn interim(text: &str) -> AsrUpdate {
        AsrUpdate::Interim {
            text: text.to_owned(),
        }
    }

    fn final_(segment: &str, text: &str, speech_final: bool) -> AsrUpdate {
        AsrUpdate::Final {
            segment: segment.to_owned(),
            text: text.to_owned(),
            speech_final,
        }
    }

    fn finalized(text: &str) -> AsrUpdate {
        AsrUpdate::Finalized(Transcript {
            text: text.to_owned(),
        })
    }

    /// What a session's driver does: pushes `audio` in real time, one 20 ms frame per tick,
    /// finalizes after the last one (when `finalize`), and reads updates in the same `select!`.
    /// Returns the updates and the error that ended the stream, if any.
    async fn drive(
        stream: &mut AsrStream,
        audio: &[i16],
        finalize: bool,
    ) -> (Vec<AsrUpdate>, Option<ProviderError>) {
        let mut frames = audio.chunks(FRAME);
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut pushing = true;
        let mut updates = Vec::new();
        loop {
            tokio::select! {
                _ = tick.tick(), if pushing => match frames.next() {
                    // A push error is also the stream's next item: nothing to do here.
                    Some(frame) => { let _ = stream.push(frame); }
                    None => {
                        pushing = false;
                        if finalize {
                            stream.finalize().expect("finalize");
                        }
                    }
                },
                item = stream.next() => match item {
                    Some(Ok(update)) => updates.push(update),
                    Some(Err(e)) => return (updates, Some(e)),
                    None => return (updates, None),
                },
                // Without finalizing, the drive ends once the audio is out and the stream idle.
                () = tokio::time::sleep(Duration::from_millis(100)), if !pushing && !finalize => {
                    return (updates, None);
                }
            }
        }
    }

    /// The stub's report, once the connection ended. The guard fails a test whose connection
    /// never ends instead of hanging it.
    async fn report(server: JoinHandle<Report>) -> Report {
        tokio::time::timeout(Duration::from_secs(60), server)
            .await
            .expect("the connection ends")
            .expect("the stub does not panic")
    }

    #[tokio::test]
    async fn interim_and_final_segments_assemble_the_utterance() {
        let (url, server) = stub(Script {
            segments: vec!["hello there", "how are you"],
            segment_bytes: 10 * FRAME_BYTES,
            finalize_reply: Some("today"),
            answer_close_stream: true,
            ..Script::default()
        })
        .await;
        // Drivers hold the provider as a trait object, and a stream moves with its session's task.
        let asr: Arc<dyn StreamingAsr> = Arc::new(provider(&url, |_| {}));
        assert_eq!(asr.name(), "stream");
        fn sendable<T: Send>(_: &T) {}
        let mut stream = asr.open().await.expect("open");
        sendable(&stream);
        let (updates, error) = drive(&mut stream, &speech(25), true).await;
        assert_eq!(error, None);
        assert_eq!(
            updates,
            vec![
                interim("hello"),
                final_("hello there", "hello there", false),
                interim("hello there how"),
                final_("how are you", "hello there how are you", true),
                final_("today", "hello there how are you today", true),
                finalized("hello there how are you today"),
            ]
        );
        assert!(stream.is_terminated());

        let report = report(server).await;
        for (key, value) in [
            ("encoding", "linear16"),
            ("sample_rate", "16000"),
            ("channels", "1"),
            ("interim_results", "true"),
            ("endpointing", "300"),
            ("model", "nova-3"),
            ("language", "en"),
        ] {
            assert_eq!(
                report.query.get(key).map(String::as_str),
                Some(value),
                "{key}"
            );
        }
        assert_eq!(report.authorization.as_deref(), Some("Token dg-test-key"));
        assert_eq!(report.audio_bytes, 25 * FRAME_BYTES);
        assert_eq!(report.odd_messages, 0);
        // Every byte of audio arrived before Finalize, and CloseStream followed it.
        assert_eq!(report.finalize_after_bytes, Some(25 * FRAME_BYTES));
        assert!(report.close_stream);
        assert_eq!(report.keepalives, 0);
    }

    #[tokio::test]
    async fn the_finalize_answer_completes_the_utterance() {
        // CloseStream is never answered: the from_finalize result alone ends the utterance.
        let (url, server) = stub(Script {
            segments: vec!["book a table"],
            segment_bytes: 10 * FRAME_BYTES,
            finalize_reply: Some("for two"),
            ..Script::default()
        })
        .await;
        let asr = provider(&url, |_| {});
        let mut stream = asr.open().await.expect("open");
        let (updates, error) = drive(&mut stream, &speech(15), true).await;
        assert_eq!(error, None);
        assert_eq!(updates.last(), Some(&finalized("book a table for two")));
        let report = report(server).await;
        assert_eq!(report.finalize_after_bytes, Some(15 * FRAME_BYTES));
        assert_eq!(report.client_close, Some(1000));
    }

    #[tokio::test]
    async fn close_stream_completes_an_unanswered_finalize() {
        // Everything was final before the end of speech, so Finalize has nothing to answer;
        // the answer to CloseStream (Metadata, then a normal close) completes the utterance.
        let (url, server) = stub(Script {
            segments: vec!["yes please"],
            segment_bytes: 10 * FRAME_BYTES,
            answer_close_stream: true,
            ..Script::default()
        })
        .await;
        let asr = provider(&url, |_| {});
        let mut stream = asr.open().await.expect("open");
        let (updates, error) = drive(&mut stream, &speech(10), true).await;
        assert_eq!(error, None);
        assert_eq!(
            updates,
            vec![
                interim("yes"),
                final_("yes please", "yes please", true),
                finalized("yes please"),
            ]
        );
        assert!(report(server).await.close_stream);
    }

    #[tokio::test]
    async fn an_unanswered_finalize_times_out() {
        let (url, server) = stub(Script {
            segments: vec!["hello"],
            segment_bytes: 4 * FRAME_BYTES,
            ..Script::default()
        })
        .await;
        let asr = provider(&url, |c| c.finalize_timeout_ms = 100);
        let mut stream = asr.open().await.expect("open");
        let (updates, error) = drive(&mut stream, &speech(5), true).await;
        assert_eq!(
            updates,
            vec![interim("hello"), final_("hello", "hello", true)]
        );
        match error {
            Some(ProviderError::Timeout { provider, after_ms }) => {
                assert_eq!((provider.as_str(), after_ms), ("stream", 100));
            }
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert!(stream.next().await.is_none());
        assert!(matches!(
            stream.push(&speech(1)),
            Err(ProviderError::Timeout { .. })
        ));
        let report = report(server).await;
        assert!(report.finalize_after_bytes.is_some() && report.close_stream);
        // Giving up closes the connection.
        assert_eq!(report.client_close, Some(1000));
    }

    #[tokio::test(start_paused = true)]
    async fn keep_alives_flow_only_while_no_audio_does() {
        let (url, server) = stub(Script::default()).await;
        let asr = provider(&url, |_| {});
        let mut stream = asr.open().await.expect("open");
        // Opened ahead of speech and idle for 11 s: keep-alives at 5 s and 10 s.
        let idle = tokio::time::timeout(Duration::from_millis(11_000), stream.next()).await;
        assert!(idle.is_err(), "no update while idle: {idle:?}");
        // 12 s of speech: the audio itself keeps the stream alive.
        let (updates, error) = drive(&mut stream, &speech(600), false).await;
        assert_eq!((updates, error), (vec![], None));
        // Idle again for 5.5 s after the last frame: one more.
        let idle = tokio::time::timeout(Duration::from_millis(5_400), stream.next()).await;
        assert!(idle.is_err(), "no update while idle: {idle:?}");
        drop(stream);
        let report = report(server).await;
        assert_eq!(report.keepalives, 3);
        assert_eq!(report.audio_bytes, 600 * FRAME_BYTES);
    }

    #[tokio::test]
    async fn a_rejected_upgrade_says_to_check_the_api_key() {
        let (url, server) = stub(Script::default()).await;
        let asr = provider(&url, |c| c.api_key_file = Some("wrong-key".into()));
        let e = asr.open().await.expect_err("401");
        match &e {
            ProviderError::Failed { provider, message } => {
                assert_eq!(provider, "stream");
                assert!(message.contains("HTTP 401"), "{message}");
                assert!(message.contains("check the API key"), "{message}");
            }
            other => panic!("expected Failed, got {other:?}"),
        }
        assert!(!e.to_string().contains("not-the-key"), "{e}");
        let report = report(server).await;
        assert!(report.rejected);
        assert_eq!(report.authorization.as_deref(), Some("Token not-the-key"));
    }

    #[tokio::test]
    async fn a_refused_connection_names_the_host() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let asr = provider(&format!("ws://{addr}/v1/listen"), |_| {});
        let e = asr.open().await.expect_err("nothing listens");
        let message = e.to_string();
        assert!(
            message.contains(&format!("cannot connect to {addr}")),
            "{message}"
        );
    }

    #[tokio::test]
    async fn the_provider_closing_mid_stream_is_an_error_with_its_reason() {
        let (url, server) = stub(Script {
            segments: vec!["hello there"],
            segment_bytes: 4 * FRAME_BYTES,
            close_after: Some((6 * FRAME_BYTES, 1011, "NET-0000: internal server error")),
            ..Script::default()
        })
        .await;
        let asr = provider(&url, |_| {});
        let mut stream = asr.open().await.expect("open");
        let (updates, error) = drive(&mut stream, &speech(50), true).await;
        // What was final before the close is still reported.
        assert_eq!(
            updates,
            vec![interim("hello"), final_("hello there", "hello there", true)]
        );
        let e = error.expect("the close is an error");
        let message = e.to_string();
        assert!(message.starts_with("stream failed"), "{message}");
        assert!(message.contains("code 1011"), "{message}");
        assert!(message.contains("NET-0000"), "{message}");
        assert!(stream.next().await.is_none());
        assert_eq!(stream.push(&speech(1)), Err(e));
        let report = report(server).await;
        assert_eq!(report.finalize_after_bytes, None);
    }

    #[tokio::test]
    async fn a_json_error_message_is_an_error() {
        let (url, server) = stub(Script {
            error_after: Some((
                2 * FRAME_BYTES,
                r#"{"type":"Error","description":"Failed to decode audio","variant":"DATA-0000"}"#,
            )),
            ..Script::default()
        })
        .await;
        let asr = provider(&url, |_| {});
        let mut stream = asr.open().await.expect("open");
        let (updates, error) = drive(&mut stream, &speech(50), true).await;
        assert!(updates.is_empty(), "{updates:?}");
        let message = error.expect("an error").to_string();
        assert!(message.contains("Failed to decode audio"), "{message}");
        assert_eq!(report(server).await.client_close, Some(1000));
    }

    #[tokio::test]
    async fn dropping_the_stream_closes_the_socket() {
        let (url, server) = stub(Script {
            segments: vec!["hello there"],
            segment_bytes: 2 * FRAME_BYTES,
            ..Script::default()
        })
        .await;
        let asr = provider(&url, |_| {});
        let mut stream = asr.open().await.expect("open");
        stream.push(&speech(1)).expect("push");
        // The stub heard the frame: the connection is live.
        let first = stream.next().await.expect("an update").expect("no error");
        assert_eq!(first, interim("hello"));
        drop(stream);
        let report = report(server).await;
        assert_eq!(report.client_close, Some(1000));
        // A cancelled utterance asks for no results.
        assert_eq!(report.finalize_after_bytes, None);
        assert!(!report.close_stream);
    }

    #[tokio::test]
    async fn finalizing_without_audio_needs_no_answer() {
        let (url, server) = stub(Script::default()).await;
        let asr = provider(&url, |_| {});
        let mut stream = asr.open().await.expect("open");
        stream.finalize().expect("finalize");
        assert_eq!(stream.next().await, Some(Ok(finalized(""))));
        assert_eq!(stream.next().await, None);
        let report = report(server).await;
        assert_eq!(report.finalize_after_bytes, None);
        assert!(report.close_stream);
    }

    #[tokio::test]
    async fn a_backlog_beyond_the_limit_fails_the_stream() {
        let (url, server) = stub(Script::default()).await;
        let asr = provider(&url, |c| c.max_backlog_ms = 100);
        let mut stream = asr.open().await.expect("open");
        // Nobody polls the stream, so nothing is sent: 100 ms fit, the next frame does not.
        for _ in 0..5 {
            stream.push(&speech(1)).expect("within the backlog");
        }
        let e = stream.push(&speech(1)).expect_err("over the backlog");
        assert!(e.to_string().contains("fell behind real time"), "{e}");
        assert_eq!(stream.next().await, Some(Err(e.clone())));
        assert_eq!(stream.next().await, None);
        assert_eq!(stream.finalize(), Err(e));
        let report = report(server).await;
        assert_eq!(report.audio_bytes, 0);
        assert_eq!(report.client_close, Some(1000));
    }

    #[tokio::test]
    async fn audio_after_finalize_is_refused() {
        let (url, _server) = stub(Script::default()).await;
        let asr = provider(&url, |_| {});
        let mut stream = asr.open().await.expect("open");
        stream.push(&speech(1)).expect("push");
        stream.finalize().expect("finalize");
        stream.finalize().expect("finalize twice does nothing");
        assert!(matches!(
            stream.push(&speech(1)),
            Err(ProviderError::InvalidRequest { .. })
        ));
    }

    #[tokio::test]
    async fn transcribe_sends_the_utterance_over_one_stream() {
        let (url, server) = stub(Script {
            segments: vec!["what about"],
            segment_bytes: 25 * FRAME_BYTES,
            finalize_reply: Some("tomorrow"),
            answer_close_stream: true,
            ..Script::default()
        })
        .await;
        let asr = provider(&url, |_| {});
        assert_eq!(Asr::name(&asr), "stream");
        let transcript = asr.transcribe(speech(75).into()).await.expect("transcript");
        assert_eq!(transcript.text, "what about tomorrow");
        let report = report(server).await;
        assert_eq!(report.audio_bytes, 75 * FRAME_BYTES);
        // 1.5 s of audio at once goes out in messages of at most one second.
        assert_eq!(report.binary_messages, 2);
        assert_eq!(report.odd_messages, 0);
        assert_eq!(report.finalize_after_bytes, Some(75 * FRAME_BYTES));

        // Nothing to transcribe needs no connection (nothing listens there).
        let idle = provider("ws://127.0.0.1:9/v1/listen", |_| {});
        let empty = idle.transcribe(Vec::new().into()).await.expect("empty");
        assert_eq!(empty.text, "");
    }

    #[test]
    fn the_url_carries_voxds_query_and_no_secret() {
        let dir = key_dir();
        let asr = StreamAsrProvider::new(
            StreamAsrConfig {
                api_key_file: Some("key".into()),
                ..StreamAsrConfig::default()
            },
            &dir,
        )
        .expect("defaults are valid");
        assert_eq!(
            asr.url(),
            "wss://api.deepgram.com/v1/listen?encoding=linear16&sample_rate=16000&channels=1\
             &interim_results=true&endpointing=300&model=nova-3&language=en"
        );
        assert!(!format!("{asr:?}").contains(KEY));

        let mut params = BTreeMap::new();
        params.insert("smart_format".to_owned(), "true".to_owned());
        let asr = StreamAsrProvider::new(
            StreamAsrConfig {
                url: "ws://localhost:8080/v1/listen?tier=x".into(),
                model: String::new(),
                language: "de".into(),
                endpointing_ms: 0,
                params,
                ..StreamAsrConfig::default()
            },
            &dir,
        )
        .expect("valid");
        assert_eq!(
            asr.url(),
            "ws://localhost:8080/v1/listen?tier=x&encoding=linear16&sample_rate=16000&channels=1\
             &interim_results=true&endpointing=false&language=de&smart_format=true"
        );
    }

    #[test]
    fn config_defaults_unknown_keys_and_bad_values() {
        let parsed: StreamAsrConfig = toml::from_str("keepalive_ms = 3000").expect("partial");
        assert_eq!(parsed.keepalive_ms, 3000);
        assert_eq!(parsed.finalize_timeout_ms, 2000);
        assert_eq!(parsed.connect_timeout_ms, 5000);
        assert_eq!(parsed.url, "wss://api.deepgram.com/v1/listen");
        assert!(toml::from_str::<StreamAsrConfig>("keep_alive_ms = 3000").is_err());

        let dir = key_dir();
        let error = |config: StreamAsrConfig| {
            StreamAsrProvider::new(config, &dir)
                .expect_err("invalid")
                .to_string()
        };
        let e = error(StreamAsrConfig {
            url: "https://api.deepgram.com/v1/listen".into(),
            ..StreamAsrConfig::default()
        });
        assert!(e.starts_with("url: "), "{e}");
        let e = error(StreamAsrConfig {
            url: "wss://h/v1/listen?model=x".into(),
            ..StreamAsrConfig::default()
        });
        assert!(e.starts_with("url: ") && e.contains("model"), "{e}");
        let mut params = BTreeMap::new();
        params.insert("sample_rate".to_owned(), "8000".to_owned());
        let e = error(StreamAsrConfig {
            params,
            ..StreamAsrConfig::default()
        });
        assert!(e.starts_with("params: "), "{e}");
        let e = error(StreamAsrConfig {
            finalize_timeout_ms: 0,
            ..StreamAsrConfig::default()
        });
        assert!(e.starts_with("finalize_timeout_ms: "), "{e}");
        let e = error(StreamAsrConfig {
            api_key_env: Some("VOXD_SURELY_UNSET_STREAM_KEY".into()),
            ..StreamAsrConfig::default()
        });
        assert!(e.starts_with("api_key_env: "), "{e}");
    }
}
