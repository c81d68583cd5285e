//! Text to speech over OpenAI's `/audio/speech` (`[tts.openai]`), streamed: voxd asks for
//! `response_format: "pcm"` (raw 24 kHz mono PCM16 little-endian) and yields audio as the bytes
//! arrive, resampled to the session's rate. OpenAI, Kokoro-FastAPI, openedai-speech and other
//! compatible servers answer it; `source_rate` covers servers whose PCM has another rate.
//!
//! What it promises:
//!
//! * **Streaming.** Each piece of the body is decoded (a sample split across pieces is carried
//!   over) and resampled as it arrives; the first audio is yielded long before the last byte.
//! * **Cancellation by drop.** The request is made when the stream is first polled and read only
//!   as the consumer polls; no task runs behind it, so dropping the stream closes the connection.
//! * **Bounded waits.** `read_timeout_ms` bounds the wait for the reply's headers and for each
//!   later piece of audio, so a stalled server is a `ProviderError::Timeout`, not a hung turn.
//! * **A WAV reply works too.** A server that answers `audio/wav` despite the request is decoded
//!   from its header's rate; a compressed or JSON reply is an error that says so.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::stream::{self, BoxStream, StreamExt};
use serde::Deserialize;
use tracing::warn;
use voxd_core::resample::{MAX_RATE_HZ, MIN_RATE_HZ};
use voxd_core::SampleRate;

use crate::http::{
    check_base_url, client, join, read_secret, status_error, transport_error, ProxyUrl,
};
use crate::pcm::{PcmError, PcmPipeline};
use crate::{BuildError, ProviderError, Tts};

/// The name this provider reports (`Tts::name` and `ProviderError`s).
const PROVIDER_NAME: &str = "openai";

/// Configuration of the OpenAI-compatible TTS (`[tts.openai]`).
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiTtsConfig {
    /// The API's base URL; requests go to `{base_url}/audio/speech`.
    /// Default "https://api.openai.com/v1".
    pub base_url: String,
    /// The env var holding the API key, sent as a bearer token. Default: unset.
    pub api_key_env: Option<String>,
    /// A file holding the API key (relative to the config file's folder), used when
    /// `api_key_env` is unset. Default: unset. With neither, no key is sent (local servers).
    pub api_key_file: Option<PathBuf>,
    /// The model. Default "tts-1".
    pub model: String,
    /// The voice. Default "alloy".
    pub voice: String,
    /// Speaking speed, 0.25 to 4.0; the server's default (1.0) when unset. Default: unset.
    pub speed: Option<f64>,
    /// The sample rate of the server's raw PCM, in Hz. Default 24000 (OpenAI's).
    pub source_rate: u32,
    /// The longest connecting (TCP and TLS) may take, in milliseconds. Default 5000.
    pub connect_timeout_ms: u64,
    /// The longest wait for the reply's headers, and then for each next piece of its body, in
    /// milliseconds. Default 10000.
    pub read_timeout_ms: u64,
    /// A PEM file of CA certificates (relative to the config file's folder) trusted for this
    /// provider beside the platform's roots: for a server behind a private CA. Default: none.
    pub ca_file: Option<PathBuf>,
    /// An HTTP proxy for this provider's connections (`http://host:port`); without one,
    /// `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` apply. Default: none.
    pub proxy: Option<ProxyUrl>,
}

impl Default for OpenAiTtsConfig {
    fn default() -> Self {
        OpenAiTtsConfig {
            base_url: "https://api.openai.com/v1".to_owned(),
            api_key_env: None,
            api_key_file: None,
            model: "tts-1".to_owned(),
            voice: "alloy".to_owned(),
            speed: None,
            source_rate: 24_000,
            connect_timeout_ms: 5_000,
            read_timeout_ms: 10_000,
            ca_file: None,
            proxy: None,
        }
    }
}

// By hand, so a `{config:?}` in a log can never grow a secret if a field is added.
impl std::fmt::Debug for OpenAiTtsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiTtsConfig")
            .field("base_url", &self.base_url)
            .field("api_key_env", &self.api_key_env)
            .field("api_key_file", &self.api_key_file)
            .field("model", &self.model)
            .field("voice", &self.voice)
            .field("speed", &self.speed)
            .field("source_rate", &self.source_rate)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("read_timeout_ms", &self.read_timeout_ms)
            .field("ca_file", &self.ca_file)
            .field("proxy", &self.proxy)
            .finish()
    }
}

/// The OpenAI-compatible TTS. Build it with `OpenAiTts::new`.
#[derive(Clone)]
pub struct OpenAiTts {
    client: reqwest::Client,
    /// `{base_url}/audio/speech`.
    url: String,
    api_key: Option<String>,
    model: String,
    voice: String,
    speed: Option<f64>,
    source_rate: SampleRate,
    connect_timeout_ms: u64,
    read_timeout_ms: u64,
}

impl std::fmt::Debug for OpenAiTts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiTts")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("voice", &self.voice)
            .field("source_rate", &self.source_rate)
            .finish_non_exhaustive()
    }
}

impl OpenAiTts {
    /// Builds the TTS: checks the config, reads the API key and builds the pooled HTTP client.
    /// `base_dir` is the folder a relative `api_key_file` is resolved against.
    ///
    /// # Errors
    /// `BuildError::Invalid` naming the key at fault (`base_url`, `model`, `voice`, `speed`,
    /// `source_rate`, `connect_timeout_ms`, `read_timeout_ms`, `api_key_env`, `api_key_file`,
    /// `ca_file`, `proxy`); `BuildError::Io` when the key file cannot be read.
    pub fn new(config: OpenAiTtsConfig, base_dir: &Path) -> Result<OpenAiTts, BuildError> {
        let invalid = |field: &str, message: String| BuildError::Invalid {
            key: field.to_owned(),
            message,
        };
        check_base_url(&config.base_url)?;
        if config.model.trim().is_empty() {
            return Err(invalid(
                "model",
                "expected a model name, e.g. \"tts-1\"".into(),
            ));
        }
        if config.voice.trim().is_empty() {
            return Err(invalid(
                "voice",
                "expected a voice name, e.g. \"alloy\"".into(),
            ));
        }
        if let Some(speed) = config.speed.filter(|s| !(0.25..=4.0).contains(s)) {
            return Err(invalid(
                "speed",
                format!("expected 0.25 to 4.0, got {speed}"),
            ));
        }
        if !(MIN_RATE_HZ..=MAX_RATE_HZ).contains(&config.source_rate) {
            return Err(invalid(
                "source_rate",
                format!(
                    "expected {MIN_RATE_HZ} to {MAX_RATE_HZ} Hz, got {}",
                    config.source_rate
                ),
            ));
        }
        if config.connect_timeout_ms == 0 {
            return Err(invalid(
                "connect_timeout_ms",
                "expected at least 1 ms".into(),
            ));
        }
        if config.read_timeout_ms == 0 {
            return Err(invalid("read_timeout_ms", "expected at least 1 ms".into()));
        }
        let api_key = read_secret(
            config.api_key_env.as_deref(),
            config.api_key_file.as_deref(),
            base_dir,
        )?;
        let client = client(
            Duration::from_millis(config.connect_timeout_ms),
            config.ca_file.as_deref(),
            config.proxy.as_ref(),
            base_dir,
        )?;
        Ok(OpenAiTts {
            client,
            url: join(&config.base_url, "audio/speech"),
            api_key,
            model: config.model,
            voice: config.voice,
            speed: config.speed,
            source_rate: SampleRate(config.source_rate),
            connect_timeout_ms: config.connect_timeout_ms,
            read_timeout_ms: config.read_timeout_ms,
        })
    }
}

impl Tts for OpenAiTts {
    fn name(&self) -> &str {
        PROVIDER_NAME
    }

    fn synthesize(
        &self,
        text: String,
        rate: SampleRate,
    ) -> BoxStream<'static, Result<Vec<i16>, ProviderError>> {
        self.synthesize_as(text, rate, None)
    }

    fn synthesize_as(
        &self,
        text: String,
        rate: SampleRate,
        voice: Option<&str>,
    ) -> BoxStream<'static, Result<Vec<i16>, ProviderError>> {
        let pipeline = match PcmPipeline::raw(self.source_rate, rate) {
            Ok(pipeline) => pipeline,
            Err(e) => {
                let err = ProviderError::InvalidRequest {
                    provider: PROVIDER_NAME.to_owned(),
                    message: format!("cannot produce {rate} audio: {e}"),
                };
                return stream::iter([Err(err)]).boxed();
            }
        };
        // The API rejects empty input; a blank sentence is simply no audio.
        if text.trim().is_empty() {
            return stream::empty().boxed();
        }
        let mut body = serde_json::json!({
            "model": self.model,
            "input": text,
            "voice": voice.unwrap_or(&self.voice),
            "response_format": "pcm",
        });
        if let Some(speed) = self.speed {
            body["speed"] = speed.into();
        }
        let mut request = self.client.post(&self.url).json(&body);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let job = Job {
            request: Some(request),
            response: None,
            pipeline,
            rate,
            read_timeout_ms: self.read_timeout_ms,
            connect_timeout_ms: self.connect_timeout_ms,
        };
        stream::unfold(Some(job), |job| async move {
            let mut job = job?;
            match job.next_chunk().await {
                Some(Ok(chunk)) => Some((Ok(chunk), Some(job))),
                Some(Err(e)) => Some((Err(e), None)),
                None => None,
            }
        })
        .boxed()
    }
}

/// One synthesis: the request until it is sent, then the reply being read.
struct Job {
    request: Option<reqwest::RequestBuilder>,
    response: Option<reqwest::Response>,
    pipeline: PcmPipeline,
    rate: SampleRate,
    read_timeout_ms: u64,
    connect_timeout_ms: u64,
}

fn failed(message: String) -> ProviderError {
    ProviderError::Failed {
        provider: PROVIDER_NAME.to_owned(),
        message,
    }
}

/// What a reply's `Content-Type` says about its body.
enum Body {
    RawPcm,
    Wav,
}

/// Sorts a reply by its `Content-Type`; a missing or unknown type is taken as the raw PCM asked
/// for (servers label it variously: `audio/pcm`, `audio/l16`, `application/octet-stream`).
fn classify(content_type: Option<&str>) -> Result<Body, ProviderError> {
    let Some(full) = content_type else {
        return Ok(Body::RawPcm);
    };
    let mime = full
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match mime.as_str() {
        "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => Ok(Body::Wav),
        "application/json" | "audio/mpeg" | "audio/mp3" | "audio/ogg" | "audio/opus"
        | "audio/aac" | "audio/flac" | "audio/webm" => Err(failed(format!(
            "expected raw PCM audio but the reply is {mime}; check that the server supports \
             response_format \"pcm\""
        ))),
        m if m.starts_with("text/") => Err(failed(format!(
            "expected raw PCM audio but the reply is {mime}"
        ))),
        _ => Ok(Body::RawPcm),
    }
}

impl Job {
    fn timed_out(&self) -> ProviderError {
        ProviderError::Timeout {
            provider: PROVIDER_NAME.to_owned(),
            after_ms: self.read_timeout_ms,
        }
    }

    fn transport(&self, e: &reqwest::Error) -> ProviderError {
        if e.is_timeout() {
            // The client's only deadline is the connect timeout; read deadlines are voxd's own.
            ProviderError::Timeout {
                provider: PROVIDER_NAME.to_owned(),
                after_ms: self.connect_timeout_ms,
            }
        } else {
            transport_error(PROVIDER_NAME, e)
        }
    }

    fn decode_error(e: &PcmError) -> ProviderError {
        failed(format!("unreadable audio in the reply: {e}"))
    }

    /// The next non-empty chunk of audio, `None` at the end, or the error that ends the stream.
    async fn next_chunk(&mut self) -> Option<Result<Vec<i16>, ProviderError>> {
        let read_timeout = Duration::from_millis(self.read_timeout_ms);
        if let Some(request) = self.request.take() {
            let response = match tokio::time::timeout(read_timeout, request.send()).await {
                Err(_) => return Some(Err(self.timed_out())),
                Ok(Err(e)) => return Some(Err(self.transport(&e))),
                Ok(Ok(response)) => response,
            };
            let status = response.status();
            if !status.is_success() {
                let err = tokio::time::timeout(read_timeout, status_error(PROVIDER_NAME, response))
                    .await
                    .unwrap_or_else(|_| failed(format!("HTTP {}", status.as_u16())));
                return Some(Err(err));
            }
            let content_type = response
                .headers()
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            match classify(content_type) {
                Ok(Body::RawPcm) => {}
                Ok(Body::Wav) => self.pipeline = PcmPipeline::wav(self.rate),
                Err(e) => return Some(Err(e)),
            }
            self.response = Some(response);
        }
        loop {
            let response = self.response.as_mut()?;
            let piece = match tokio::time::timeout(read_timeout, response.chunk()).await {
                Err(_) => return Some(Err(self.timed_out())),
                Ok(Err(e)) => return Some(Err(self.transport(&e))),
                Ok(Ok(piece)) => piece,
            };
            let Some(bytes) = piece else {
                self.response = None;
                return match self.pipeline.finish() {
                    Ok((chunk, dangling)) => {
                        if dangling {
                            warn!(provider = PROVIDER_NAME, "the audio ended mid-sample");
                        }
                        (!chunk.is_empty()).then_some(Ok(chunk))
                    }
                    Err(e) => Some(Err(Self::decode_error(&e))),
                };
            };
            match self.pipeline.push(&bytes) {
                Ok(chunk) if chunk.is_empty() => {}
                Ok(chunk) => return Some(Ok(chunk)),
                Err(e) => return Some(Err(Self::decode_error(&e))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;

    use axum::body::{Body as HttpBody, Bytes};
    use axum::extract::State;
    use axum::http::header::CONTENT_TYPE;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::post;
    use axum::{Json, Router};
    use tokio::sync::{mpsc, oneshot};
    use voxd_core::resample::resample_all;

    type Piece = Result<Bytes, std::io::Error>;

    /// One request the stub received; the test writes the reply's body through `body`.
    struct Call {
        json: serde_json::Value,
        authorization: Option<String>,
        body: mpsc::Sender<Piece>,
    }

    #[derive(Clone)]
    struct Stub {
        calls: mpsc::Sender<Call>,
        content_type: &'static str,
    }

    async fn speech(
        State(stub): State<Stub>,
        headers: HeaderMap,
        Json(json): Json<serde_json::Value>,
    ) -> Response {
        let (body, rx) = mpsc::channel::<Piece>(16);
        let authorization = headers
            .get("authorization")
            .map(|v| v.to_str().expect("ascii").to_owned());
        let call = Call {
            json,
            authorization,
            body,
        };
        if stub.calls.send(call).await.is_err() {
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
        // Dropping this stream (the connection closed) drops `rx`, which the test can observe.
        let pieces = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|piece| (piece, rx))
        });
        (
            [(CONTENT_TYPE, stub.content_type)],
            HttpBody::from_stream(pieces),
        )
            .into_response()
    }

    /// A stub `/v1/audio/speech` on a free loopback port that answers with `content_type`.
    async fn stub_server(content_type: &'static str) -> (String, mpsc::Receiver<Call>) {
        let (calls, rx) = mpsc::channel(4);
        let router = Router::new()
            .route("/v1/audio/speech", post(speech))
            .with_state(Stub {
                calls,
                content_type,
            });
        (format!("http://{}/v1", serve(router).await), rx)
    }

    async fn serve(router: Router) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move { axum::serve(listener, router).await });
        addr
    }

    fn tts_at(base_url: &str) -> OpenAiTts {
        tts_with(OpenAiTtsConfig {
            base_url: base_url.to_owned(),
            ..OpenAiTtsConfig::default()
        })
    }

    fn tts_with(config: OpenAiTtsConfig) -> OpenAiTts {
        OpenAiTts::new(config, Path::new(".")).expect("valid config")
    }

    /// One second of a deterministic, non-silent "voice" at 24 kHz.
    fn voice_24k() -> Vec<i16> {
        (0..24_000)
            .map(|i| {
                let t = f64::from(i) / 24_000.0;
                (8000.0 * (std::f64::consts::TAU * 220.0 * t).sin()
                    + 3000.0 * (std::f64::consts::TAU * 1330.0 * t).sin()) as i16
            })
            .collect()
    }

    fn bytes_of(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    /// Sends `bytes` in pieces of odd and even lengths (so samples straddle pieces).
    async fn send_in_pieces(body: &mpsc::Sender<Piece>, bytes: &[u8]) {
        let mut rest = bytes;
        for len in [1, 2, 3, 777, 1000, 4093].iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at((*len).min(rest.len()));
            body.send(Ok(Bytes::copy_from_slice(now)))
                .await
                .expect("client reading");
            rest = later;
        }
    }

    async fn collect(
        stream: &mut BoxStream<'static, Result<Vec<i16>, ProviderError>>,
    ) -> Result<Vec<Vec<i16>>, ProviderError> {
        let mut chunks = Vec::new();
        while let Some(chunk) = stream.next().await {
            chunks.push(chunk?);
        }
        Ok(chunks)
    }

    /// Synthesizes `text` at `hz` while the stub replies with `bytes`; returns the chunks and the
    /// request's JSON and authorization header.
    async fn synthesize_reply(
        tts: &OpenAiTts,
        calls: &mut mpsc::Receiver<Call>,
        hz: u32,
        bytes: &[u8],
    ) -> (Vec<Vec<i16>>, serde_json::Value, Option<String>) {
        let mut stream = tts.synthesize("Hello there.".into(), SampleRate(hz));
        let server = async {
            let call = calls.recv().await.expect("a request");
            send_in_pieces(&call.body, bytes).await;
            (call.json, call.authorization)
        };
        let (chunks, (json, authorization)) = tokio::join!(collect(&mut stream), server);
        (chunks.expect("audio"), json, authorization)
    }

    #[tokio::test]
    async fn equal_rates_pass_the_samples_through_unchanged() {
        let (base_url, mut calls) = stub_server("audio/pcm").await;
        let tts = tts_at(&base_url);
        let voice = voice_24k();
        let (chunks, json, authorization) =
            synthesize_reply(&tts, &mut calls, 24_000, &bytes_of(&voice)).await;
        assert!(chunks.len() > 1, "{} chunks", chunks.len());
        assert!(chunks.iter().all(|c| !c.is_empty()));
        assert_eq!(chunks.concat(), voice);
        assert_eq!(
            json,
            serde_json::json!({
                "model": "tts-1",
                "input": "Hello there.",
                "voice": "alloy",
                "response_format": "pcm",
            })
        );
        assert_eq!(authorization, None);
    }

    #[tokio::test]
    async fn audio_is_resampled_to_the_requested_rate() {
        let (base_url, mut calls) = stub_server("audio/pcm").await;
        let dir = std::env::temp_dir().join(format!("voxd-tts-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("key"), "sk-tts-key").expect("write key");
        let config = OpenAiTtsConfig {
            base_url,
            api_key_file: Some("key".into()),
            model: "kokoro".into(),
            voice: "af_heart".into(),
            speed: Some(1.25),
            ..OpenAiTtsConfig::default()
        };
        let tts = OpenAiTts::new(config, &dir).expect("valid config");
        assert!(!format!("{tts:?}").contains("sk-tts-key"));
        let voice = voice_24k();
        let (chunks, json, authorization) =
            synthesize_reply(&tts, &mut calls, 16_000, &bytes_of(&voice)).await;
        let audio = chunks.concat();
        assert_eq!(audio.len(), 16_000);
        assert_eq!(
            audio,
            resample_all(SampleRate(24_000), SampleRate(16_000), &voice).expect("resample")
        );
        assert_eq!(json["speed"], 1.25);
        assert_eq!(json["model"], "kokoro");
        assert_eq!(json["voice"], "af_heart");
        assert_eq!(authorization.as_deref(), Some("Bearer sk-tts-key"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn another_source_rate_and_a_wav_reply_are_decoded() {
        let voice: Vec<i16> = voice_24k().into_iter().take(22_050).collect();
        // A server whose raw PCM is 22.05 kHz (Piper-style).
        let (base_url, mut calls) = stub_server("application/octet-stream").await;
        let tts = tts_with(OpenAiTtsConfig {
            base_url,
            source_rate: 22_050,
            ..OpenAiTtsConfig::default()
        });
        let (chunks, _, _) = synthesize_reply(&tts, &mut calls, 16_000, &bytes_of(&voice)).await;
        let expected =
            resample_all(SampleRate(22_050), SampleRate(16_000), &voice).expect("resample");
        assert_eq!(chunks.concat(), expected);

        // A server that answers WAV whatever was asked: its header's rate wins.
        let (base_url, mut calls) = stub_server("audio/wav").await;
        let tts = tts_at(&base_url);
        let mut wav = Vec::new();
        wav.extend_from_slice(b"RIFF\xff\xff\xff\xffWAVEfmt \x10\0\0\0\x01\0\x01\0");
        wav.extend_from_slice(&22_050u32.to_le_bytes());
        wav.extend_from_slice(&44_100u32.to_le_bytes());
        wav.extend_from_slice(b"\x02\0\x10\0data\xff\xff\xff\xff");
        wav.extend(bytes_of(&voice));
        let (chunks, _, _) = synthesize_reply(&tts, &mut calls, 16_000, &wav).await;
        assert_eq!(chunks.concat(), expected);
    }

    #[tokio::test]
    async fn chunks_are_yielded_as_the_bytes_arrive() {
        let (base_url, mut calls) = stub_server("audio/pcm").await;
        let tts = tts_at(&base_url);
        let voice = voice_24k();
        let bytes = bytes_of(&voice);
        let (first_seen, first_rx) = oneshot::channel::<usize>();
        let client = async {
            let mut stream = tts.synthesize("Hello there.".into(), SampleRate::INTERNAL);
            let first = stream.next().await.expect("a chunk").expect("audio");
            first_seen.send(first.len()).expect("server waiting");
            let mut audio = first;
            for chunk in collect(&mut stream).await.expect("audio") {
                audio.extend(chunk);
            }
            audio
        };
        let server = async {
            let call = calls.recv().await.expect("a request");
            // 0.1 s of audio (and half a sample) first; the rest only once the client has
            // yielded audio from it.
            let split = 4801;
            send_in_pieces(&call.body, &bytes[..split]).await;
            let first_len = first_rx.await.expect("a first chunk");
            send_in_pieces(&call.body, &bytes[split..]).await;
            first_len
        };
        let (audio, first_len) = tokio::join!(client, server);
        assert!(first_len > 0);
        assert!(
            first_len < 1600,
            "the first chunk holds at most 0.1 s: {first_len}"
        );
        assert_eq!(
            audio,
            resample_all(SampleRate(24_000), SampleRate::INTERNAL, &voice).expect("resample")
        );
    }

    #[tokio::test]
    async fn dropping_the_stream_closes_the_connection() {
        let (base_url, mut calls) = stub_server("audio/pcm").await;
        let tts = tts_at(&base_url);
        let mut stream = tts.synthesize("A long answer.".into(), SampleRate::INTERNAL);
        let server = async {
            let call = calls.recv().await.expect("a request");
            call.body
                .send(Ok(Bytes::from(vec![0x11; 9600])))
                .await
                .expect("client reading");
            call.body
        };
        let (first, body) = tokio::join!(stream.next(), server);
        assert!(!first.expect("a chunk").expect("audio").is_empty());
        drop(stream);
        // The server keeps talking until the closed connection makes it drop the body. Its
        // writes are what reveal the close; the bound only keeps a broken build from hanging.
        let closed = async {
            loop {
                tokio::select! {
                    () = body.closed() => return,
                    () = tokio::time::sleep(Duration::from_millis(20)) => {
                        if body.send(Ok(Bytes::from_static(&[0; 480]))).await.is_err() {
                            return;
                        }
                    }
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), closed)
            .await
            .expect("the server saw the connection close");
    }

    #[tokio::test]
    async fn a_connection_cut_mid_stream_is_an_error() {
        let (base_url, mut calls) = stub_server("audio/pcm").await;
        let tts = tts_at(&base_url);
        let mut stream = tts.synthesize("Cut short.".into(), SampleRate::INTERNAL);
        let server = async {
            let call = calls.recv().await.expect("a request");
            send_in_pieces(&call.body, &bytes_of(&voice_24k()[..12_000])).await;
            let _ = call
                .body
                .send(Err(std::io::Error::other("the voice server crashed")))
                .await;
        };
        let mut items = Vec::new();
        let gather = async {
            while let Some(item) = stream.next().await {
                items.push(item);
            }
        };
        tokio::join!(gather, server);
        let (last, audio) = items.split_last().expect("some items");
        assert!(!audio.is_empty(), "audio before the cut");
        assert!(audio.iter().all(Result::is_ok));
        let err = last.as_ref().expect_err("the cut is an error");
        assert!(matches!(err, ProviderError::Failed { .. }), "{err:?}");
        assert!(err.to_string().contains("mid-response"), "{err}");
    }

    #[tokio::test]
    async fn error_statuses_are_reported_without_the_body() {
        for (code, hint) in [
            (401, "API key"),
            (429, "rate limited"),
            (500, "provider-side"),
        ] {
            let router = Router::new().route(
                "/audio/speech",
                post(move || async move {
                    let status = StatusCode::from_u16(code).expect("status");
                    (
                        status,
                        "{\"error\":{\"message\":\"bad key sk-echoed-secret\"}}",
                    )
                }),
            );
            let addr = serve(router).await;
            let tts = tts_at(&format!("http://{addr}"));
            let mut stream = tts.synthesize("Hello.".into(), SampleRate::INTERNAL);
            let err = stream.next().await.expect("an item").unwrap_err();
            let message = err.to_string();
            assert!(message.contains(&format!("HTTP {code}")), "{message}");
            assert!(message.contains(hint), "{message}");
            assert!(!message.contains("sk-echoed-secret"), "{message}");
            assert!(stream.next().await.is_none(), "the error ends the stream");
        }
    }

    #[tokio::test]
    async fn a_compressed_or_json_reply_is_an_error() {
        for content_type in ["audio/mpeg", "application/json; charset=utf-8"] {
            let (base_url, mut calls) = stub_server(content_type).await;
            let tts = tts_at(&base_url);
            let mut stream = tts.synthesize("Hello.".into(), SampleRate::INTERNAL);
            let (item, _call) = tokio::join!(stream.next(), calls.recv());
            let err = item.expect("an item").unwrap_err();
            assert!(err.to_string().contains("response_format"), "{err}");
        }
    }

    #[tokio::test]
    async fn a_stalled_server_times_out() {
        let (base_url, mut calls) = stub_server("audio/pcm").await;
        let tts = tts_with(OpenAiTtsConfig {
            base_url,
            read_timeout_ms: 500,
            ..OpenAiTtsConfig::default()
        });
        let mut stream = tts.synthesize("Hello.".into(), SampleRate::INTERNAL);
        // Headers, a little audio, then silence on the wire with the connection open.
        let server = async {
            let call = calls.recv().await.expect("a request");
            call.body
                .send(Ok(Bytes::from(vec![0x22; 4800])))
                .await
                .expect("client reading");
            call.body
        };
        let (first, _body) = tokio::join!(stream.next(), server);
        assert!(first.expect("a chunk").is_ok());
        let err = stream.next().await.expect("an item").unwrap_err();
        assert!(
            matches!(&err, ProviderError::Timeout { after_ms: 500, .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn blank_text_and_bad_rates_send_no_request() {
        let (base_url, mut calls) = stub_server("audio/pcm").await;
        let tts = tts_at(&base_url);
        let mut blank = tts.synthesize(" \n ".into(), SampleRate::INTERNAL);
        assert!(collect(&mut blank).await.expect("no error").is_empty());
        let mut bad = tts.synthesize("Hello.".into(), SampleRate(0));
        let err = bad.next().await.expect("an item").unwrap_err();
        assert!(
            matches!(err, ProviderError::InvalidRequest { .. }),
            "{err:?}"
        );
        assert!(calls.try_recv().is_err(), "no request was made");
    }

    #[test]
    fn config_defaults_unknown_keys_and_bad_values() {
        let parsed: OpenAiTtsConfig = toml::from_str("").expect("empty table");
        assert_eq!(parsed, OpenAiTtsConfig::default());
        assert_eq!(parsed.base_url, "https://api.openai.com/v1");
        assert_eq!(
            (parsed.model.as_str(), parsed.voice.as_str()),
            ("tts-1", "alloy")
        );
        assert_eq!((parsed.speed, parsed.source_rate), (None, 24_000));
        let err = toml::from_str::<OpenAiTtsConfig>("format = \"mp3\"").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");

        let cases = [
            (
                OpenAiTtsConfig {
                    base_url: "ftp://example".into(),
                    ..OpenAiTtsConfig::default()
                },
                "base_url",
            ),
            (
                OpenAiTtsConfig {
                    voice: String::new(),
                    ..OpenAiTtsConfig::default()
                },
                "voice",
            ),
            (
                OpenAiTtsConfig {
                    speed: Some(5.0),
                    ..OpenAiTtsConfig::default()
                },
                "speed",
            ),
            (
                OpenAiTtsConfig {
                    source_rate: 1_000,
                    ..OpenAiTtsConfig::default()
                },
                "source_rate",
            ),
            (
                OpenAiTtsConfig {
                    read_timeout_ms: 0,
                    ..OpenAiTtsConfig::default()
                },
                "read_timeout_ms",
            ),
            (
                OpenAiTtsConfig {
                    api_key_env: Some("VOXD_SURELY_UNSET_TTS_KEY".into()),
                    ..OpenAiTtsConfig::default()
                },
                "api_key_env",
            ),
        ];
        for (config, key) in cases {
            let err = OpenAiTts::new(config, Path::new(".")).unwrap_err();
            assert!(err.to_string().starts_with(&format!("{key}: ")), "{err}");
        }
    }
}
