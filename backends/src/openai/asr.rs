//! Speech to text over OpenAI's `/audio/transcriptions` (`[asr.openai]`): the utterance is sent
//! as a 16 kHz mono PCM16 WAV file in a multipart form, and the JSON reply's `text` is the
//! transcript. OpenAI's Whisper API, whisper.cpp's server and faster-whisper servers all answer it.
//!
//! One request per utterance, bounded by `timeout_ms` from start to last byte; dropping the
//! future aborts the request. An empty utterance is an empty transcript without a request.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::multipart::{Form, Part};
use serde::Deserialize;
use tracing::warn;
use voxd_core::SampleRate;

use crate::http::{
    check_base_url, client, join, read_secret, status_error, transport_error, ProxyUrl,
};
use crate::{Asr, BuildError, ProviderError, Transcript};

/// The name this provider reports (`Asr::name` and `ProviderError`s).
const PROVIDER_NAME: &str = "openai";

/// Configuration of the OpenAI-compatible ASR (`[asr.openai]`).
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiAsrConfig {
    /// The API's base URL; requests go to `{base_url}/audio/transcriptions`.
    /// Default "https://api.openai.com/v1".
    pub base_url: String,
    /// The env var holding the API key, sent as a bearer token. Default: unset.
    pub api_key_env: Option<String>,
    /// A file holding the API key (relative to the config file's folder), used when
    /// `api_key_env` is unset. Default: unset. With neither, no key is sent (local servers).
    pub api_key_file: Option<PathBuf>,
    /// The model. Default "whisper-1".
    pub model: String,
    /// The spoken language as an ISO-639-1 code (e.g. "en"); detected per utterance when unset.
    /// Default: unset.
    pub language: Option<String>,
    /// Text to steer the transcription (spellings of names, the conversation's topic).
    /// Default: unset.
    pub prompt: Option<String>,
    /// The longest a whole request may take, connect to last byte, in milliseconds. Default 30000.
    pub timeout_ms: u64,
    /// The longest connecting (TCP and TLS) may take, in milliseconds. Default 5000.
    pub connect_timeout_ms: u64,
    /// A PEM file of CA certificates (relative to the config file's folder) trusted for this
    /// provider beside the platform's roots: for a server behind a private CA. Default: none.
    pub ca_file: Option<PathBuf>,
    /// An HTTP proxy for this provider's connections (`http://host:port`); without one,
    /// `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` apply. Default: none.
    pub proxy: Option<ProxyUrl>,
}

impl Default for OpenAiAsrConfig {
    fn default() -> Self {
        OpenAiAsrConfig {
            base_url: "https://api.openai.com/v1".to_owned(),
            api_key_env: None,
            api_key_file: None,
            model: "whisper-1".to_owned(),
            language: None,
            prompt: None,
            timeout_ms: 30_000,
            connect_timeout_ms: 5_000,
            ca_file: None,
            proxy: None,
        }
    }
}

// By hand, so a `{config:?}` in a log can never grow a secret if a field is added.
impl std::fmt::Debug for OpenAiAsrConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiAsrConfig")
            .field("base_url", &self.base_url)
            .field("api_key_env", &self.api_key_env)
            .field("api_key_file", &self.api_key_file)
            .field("model", &self.model)
            .field("language", &self.language)
            .field("prompt", &self.prompt)
            .field("timeout_ms", &self.timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("ca_file", &self.ca_file)
            .field("proxy", &self.proxy)
            .finish()
    }
}

/// The OpenAI-compatible ASR. Build it with `OpenAiAsr::new`.
pub struct OpenAiAsr {
    client: reqwest::Client,
    /// `{base_url}/audio/transcriptions`.
    url: String,
    api_key: Option<String>,
    model: String,
    language: Option<String>,
    prompt: Option<String>,
    timeout_ms: u64,
    connect_timeout_ms: u64,
}

impl std::fmt::Debug for OpenAiAsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiAsr")
            .field("url", &self.url)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("model", &self.model)
            .field("language", &self.language)
            .field("timeout_ms", &self.timeout_ms)
            .finish_non_exhaustive()
    }
}

/// The part of the JSON reply voxd reads.
#[derive(Deserialize)]
struct TranscriptionResponse {
    text: String,
}

impl OpenAiAsr {
    /// Builds the ASR: checks the config, reads the API key and builds the pooled HTTP client.
    /// `base_dir` is the folder a relative `api_key_file` is resolved against.
    ///
    /// # Errors
    /// `BuildError::Invalid` naming the key at fault (`base_url`, `model`, `language`,
    /// `timeout_ms`, `connect_timeout_ms`, `api_key_env`, `api_key_file`, `ca_file`, `proxy`);
    /// `BuildError::Io` when the key file cannot be read.
    pub fn new(config: OpenAiAsrConfig, base_dir: &Path) -> Result<OpenAiAsr, BuildError> {
        let invalid = |field: &str, message: &str| BuildError::Invalid {
            key: field.to_owned(),
            message: message.to_owned(),
        };
        check_base_url(&config.base_url)?;
        if config.model.trim().is_empty() {
            return Err(invalid(
                "model",
                "expected a model name, e.g. \"whisper-1\"",
            ));
        }
        if config
            .language
            .as_deref()
            .is_some_and(|l| l.trim().is_empty())
        {
            return Err(invalid(
                "language",
                "expected a language code such as \"en\", or no language to detect it",
            ));
        }
        if config.timeout_ms == 0 {
            return Err(invalid("timeout_ms", "expected at least 1 ms"));
        }
        if config.connect_timeout_ms == 0 {
            return Err(invalid("connect_timeout_ms", "expected at least 1 ms"));
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
        Ok(OpenAiAsr {
            client,
            url: join(&config.base_url, "audio/transcriptions"),
            api_key,
            model: config.model,
            language: config.language,
            prompt: config.prompt,
            timeout_ms: config.timeout_ms,
            connect_timeout_ms: config.connect_timeout_ms,
        })
    }

    /// Maps a reqwest error, telling timeouts apart so the server can report them as such.
    fn transport(&self, e: &reqwest::Error) -> ProviderError {
        if e.is_timeout() {
            ProviderError::Timeout {
                provider: PROVIDER_NAME.to_owned(),
                after_ms: if e.is_connect() {
                    self.connect_timeout_ms
                } else {
                    self.timeout_ms
                },
            }
        } else {
            transport_error(PROVIDER_NAME, e)
        }
    }
}

/// `audio` (16 kHz mono) as the bytes of a PCM16 WAV file.
///
/// # Errors
/// `hound::Error::TooWide` when the audio is too long for a WAV file (over 4 GiB of samples).
fn wav_16k_mono(audio: &[i16]) -> Result<Vec<u8>, hound::Error> {
    let count = u32::try_from(audio.len())
        .ok()
        .filter(|&n| n <= u32::MAX / 2 - 64)
        .ok_or(hound::Error::TooWide)?;
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: SampleRate::INTERNAL.hz(),
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut file = Cursor::new(Vec::with_capacity(44 + 2 * audio.len()));
    let mut writer = hound::WavWriter::new(&mut file, spec)?;
    let mut samples = writer.get_i16_writer(count);
    for &s in audio {
        samples.write_sample(s);
    }
    samples.flush()?;
    writer.finalize()?;
    Ok(file.into_inner())
}

#[async_trait]
impl Asr for OpenAiAsr {
    fn name(&self) -> &str {
        PROVIDER_NAME
    }

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
        let wav = wav_16k_mono(&audio).map_err(|e| ProviderError::InvalidRequest {
            provider: PROVIDER_NAME.to_owned(),
            message: format!("cannot encode the utterance as WAV: {e}"),
        })?;
        let file = Part::bytes(wav)
            .file_name("utterance.wav")
            .mime_str("audio/wav")
            .map_err(|e| transport_error(PROVIDER_NAME, &e))?;
        let mut form = Form::new()
            .part("file", file)
            .text("model", self.model.clone())
            .text("response_format", "json");
        if let Some(language) = language.or(self.language.as_deref()) {
            form = form.text("language", language.to_owned());
        }
        if let Some(prompt) = &self.prompt {
            form = form.text("prompt", prompt.clone());
        }
        let mut request = self
            .client
            .post(&self.url)
            .timeout(Duration::from_millis(self.timeout_ms))
            .multipart(form);
        if let Some(key) = &self.api_key {
            request = request.bearer_auth(key);
        }
        let response = request.send().await.map_err(|e| self.transport(&e))?;
        if !response.status().is_success() {
            return Err(status_error(PROVIDER_NAME, response).await);
        }
        let body = response.bytes().await.map_err(|e| self.transport(&e))?;
        let reply: TranscriptionResponse = serde_json::from_slice(&body).map_err(|e| {
            let shown = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            warn!(provider = PROVIDER_NAME, error = %e, body = %shown, "unexpected transcription reply");
            ProviderError::Failed {
                provider: PROVIDER_NAME.to_owned(),
                message: "unexpected reply: expected JSON with a \"text\" field".to_owned(),
            }
        })?;
        Ok(Transcript {
            text: reply.text.trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use axum::extract::{Multipart, State};
    use axum::http::{HeaderMap, StatusCode};
    use axum::routing::post;
    use axum::{Json, Router};

    /// Serves `router` on a free loopback port until the test's runtime ends.
    async fn serve(router: Router) -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        tokio::spawn(async move { axum::serve(listener, router).await });
        addr
    }

    /// What the stub server saw in one request.
    #[derive(Debug, Default, Clone)]
    struct Seen {
        fields: Vec<(String, String)>,
        file_name: Option<String>,
        content_type: Option<String>,
        wav: Vec<u8>,
        authorization: Option<String>,
    }

    #[derive(Clone, Default)]
    struct Stub {
        seen: Arc<Mutex<Vec<Seen>>>,
    }

    async fn transcriptions(
        State(stub): State<Stub>,
        headers: HeaderMap,
        mut form: Multipart,
    ) -> Json<serde_json::Value> {
        let mut seen = Seen {
            authorization: headers
                .get("authorization")
                .map(|v| v.to_str().expect("ascii").to_owned()),
            ..Seen::default()
        };
        while let Some(field) = form.next_field().await.expect("valid multipart") {
            let name = field.name().expect("named field").to_owned();
            if name == "file" {
                seen.file_name = field.file_name().map(str::to_owned);
                seen.content_type = field.content_type().map(str::to_owned);
                seen.wav = field.bytes().await.expect("file bytes").to_vec();
            } else {
                seen.fields
                    .push((name, field.text().await.expect("text field")));
            }
        }
        stub.seen.lock().expect("lock").push(seen);
        Json(serde_json::json!({ "text": "  hello from the stub \n" }))
    }

    async fn stub_server() -> (Stub, String) {
        let stub = Stub::default();
        let router = Router::new()
            .route("/v1/audio/transcriptions", post(transcriptions))
            .with_state(stub.clone());
        let addr = serve(router).await;
        (stub, format!("http://{addr}/v1"))
    }

    fn asr(config: OpenAiAsrConfig) -> OpenAiAsr {
        OpenAiAsr::new(config, Path::new(".")).expect("valid config")
    }

    fn speech(n: usize) -> Arc<[i16]> {
        (0..n)
            .map(|i| ((i * 7919) % 20_000) as i16 - 10_000)
            .collect::<Vec<_>>()
            .into()
    }

    #[tokio::test]
    async fn sends_a_16k_wav_and_the_fields_and_trims_the_reply() {
        let (stub, base_url) = stub_server().await;
        let dir = std::env::temp_dir().join(format!("voxd-asr-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        std::fs::write(dir.join("key"), "sk-test-key\n").expect("write key");
        let config = OpenAiAsrConfig {
            base_url: format!("{base_url}/"),
            api_key_file: Some("key".into()),
            language: Some("en".into()),
            prompt: Some("Names: Ada, Grace.".into()),
            ..OpenAiAsrConfig::default()
        };
        let asr = OpenAiAsr::new(config, &dir).expect("valid config");
        assert!(!format!("{asr:?}").contains("sk-test-key"));
        let audio = speech(12_345);
        let transcript = asr
            .transcribe(Arc::clone(&audio))
            .await
            .expect("transcript");
        assert_eq!(transcript.text, "hello from the stub");

        let seen = stub.seen.lock().expect("lock").pop().expect("one request");
        assert_eq!(seen.authorization.as_deref(), Some("Bearer sk-test-key"));
        assert_eq!(
            seen.fields,
            [
                ("model".to_owned(), "whisper-1".to_owned()),
                ("response_format".to_owned(), "json".to_owned()),
                ("language".to_owned(), "en".to_owned()),
                ("prompt".to_owned(), "Names: Ada, Grace.".to_owned()),
            ]
        );
        assert_eq!(seen.file_name.as_deref(), Some("utterance.wav"));
        assert_eq!(seen.content_type.as_deref(), Some("audio/wav"));
        let reader = hound::WavReader::new(Cursor::new(seen.wav)).expect("a valid WAV");
        let spec = reader.spec();
        assert_eq!(
            (spec.sample_rate, spec.channels, spec.bits_per_sample),
            (16_000, 1, 16)
        );
        assert_eq!(spec.sample_format, hound::SampleFormat::Int);
        assert_eq!(reader.duration(), 12_345);
        let samples: Vec<i16> = reader
            .into_samples()
            .collect::<Result<_, _>>()
            .expect("samples");
        assert_eq!(&samples[..], &audio[..]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn optional_fields_and_the_key_are_left_out_when_unset() {
        let (stub, base_url) = stub_server().await;
        let asr = asr(OpenAiAsrConfig {
            base_url,
            model: "Systran/faster-whisper-tiny.en".into(),
            ..OpenAiAsrConfig::default()
        });
        asr.transcribe(speech(1600)).await.expect("transcript");
        let seen = stub.seen.lock().expect("lock").pop().expect("one request");
        assert_eq!(seen.authorization, None);
        let names: Vec<&str> = seen.fields.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["model", "response_format"]);
        assert_eq!(seen.fields[0].1, "Systran/faster-whisper-tiny.en");
    }

    #[tokio::test]
    async fn empty_audio_is_an_empty_transcript_without_a_request() {
        let (stub, base_url) = stub_server().await;
        let asr = asr(OpenAiAsrConfig {
            base_url,
            ..OpenAiAsrConfig::default()
        });
        let transcript = asr.transcribe(Vec::new().into()).await.expect("no error");
        assert_eq!(transcript.text, "");
        assert!(stub.seen.lock().expect("lock").is_empty());
    }

    #[tokio::test]
    async fn error_statuses_are_reported_without_the_body() {
        let calls = Arc::new(AtomicUsize::new(0));
        let router = Router::new()
            .route(
                "/v1/audio/transcriptions",
                post(|State(calls): State<Arc<AtomicUsize>>| async move {
                    let status = match calls.fetch_add(1, Ordering::SeqCst) {
                        0 => StatusCode::UNAUTHORIZED,
                        1 => StatusCode::TOO_MANY_REQUESTS,
                        _ => StatusCode::INTERNAL_SERVER_ERROR,
                    };
                    let body = "{\"error\":{\"message\":\"Incorrect API key provided: \
                                    sk-secret-echo\"}}";
                    (status, body)
                }),
            )
            .with_state(Arc::clone(&calls));
        let addr = serve(router).await;
        let asr = asr(OpenAiAsrConfig {
            base_url: format!("http://{addr}/v1"),
            ..OpenAiAsrConfig::default()
        });
        for (code, hint) in [
            (401, "API key"),
            (429, "rate limited"),
            (500, "provider-side"),
        ] {
            let err = asr.transcribe(speech(800)).await.unwrap_err();
            let message = err.to_string();
            assert!(matches!(err, ProviderError::Failed { .. }), "{err:?}");
            assert!(message.contains(&format!("HTTP {code}")), "{message}");
            assert!(message.contains(hint), "{message}");
            assert!(!message.contains("sk-secret-echo"), "{message}");
            assert!(message.starts_with("openai failed"), "{message}");
        }
    }

    #[tokio::test]
    async fn a_reply_without_text_is_an_error() {
        let router = Router::new().route(
            "/audio/transcriptions",
            post(|| async { Json(serde_json::json!({ "transcript": "hi" })) }),
        );
        let addr = serve(router).await;
        let asr = asr(OpenAiAsrConfig {
            base_url: format!("http://{addr}"),
            ..OpenAiAsrConfig::default()
        });
        let message = asr.transcribe(speech(800)).await.unwrap_err().to_string();
        assert!(message.contains("\"text\""), "{message}");
    }

    #[tokio::test]
    async fn a_slow_server_times_out() {
        let router = Router::new().route(
            "/audio/transcriptions",
            post(|| async {
                std::future::pending::<()>().await;
                "never"
            }),
        );
        let addr = serve(router).await;
        let asr = asr(OpenAiAsrConfig {
            base_url: format!("http://{addr}"),
            timeout_ms: 200,
            ..OpenAiAsrConfig::default()
        });
        let err = asr.transcribe(speech(800)).await.unwrap_err();
        assert!(
            matches!(&err, ProviderError::Timeout { provider, after_ms: 200 } if provider == "openai"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_transport_error() {
        // Bind then drop, so the port is (almost certainly) closed.
        let addr = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind")
            .local_addr()
            .expect("addr");
        let asr = asr(OpenAiAsrConfig {
            base_url: format!("http://{addr}/v1"),
            ..OpenAiAsrConfig::default()
        });
        let message = asr.transcribe(speech(800)).await.unwrap_err().to_string();
        assert!(message.contains("cannot connect"), "{message}");
    }

    #[test]
    fn config_defaults_unknown_keys_and_bad_values() {
        let parsed: OpenAiAsrConfig = toml::from_str("").expect("empty table");
        assert_eq!(parsed, OpenAiAsrConfig::default());
        assert_eq!(parsed.base_url, "https://api.openai.com/v1");
        assert_eq!(parsed.model, "whisper-1");
        assert_eq!(
            (parsed.timeout_ms, parsed.connect_timeout_ms),
            (30_000, 5_000)
        );
        let err = toml::from_str::<OpenAiAsrConfig>("temperature = 0.2").unwrap_err();
        assert!(err.to_string().contains("unknown field"), "{err}");

        let cases = [
            (
                OpenAiAsrConfig {
                    base_url: "localhost:8000".into(),
                    ..OpenAiAsrConfig::default()
                },
                "base_url",
            ),
            (
                OpenAiAsrConfig {
                    model: " ".into(),
                    ..OpenAiAsrConfig::default()
                },
                "model",
            ),
            (
                OpenAiAsrConfig {
                    language: Some(String::new()),
                    ..OpenAiAsrConfig::default()
                },
                "language",
            ),
            (
                OpenAiAsrConfig {
                    timeout_ms: 0,
                    ..OpenAiAsrConfig::default()
                },
                "timeout_ms",
            ),
            (
                OpenAiAsrConfig {
                    api_key_env: Some("VOXD_SURELY_UNSET_ASR_KEY".into()),
                    ..OpenAiAsrConfig::default()
                },
                "api_key_env",
            ),
        ];
        for (config, key) in cases {
            let err = OpenAiAsr::new(config, Path::new(".")).unwrap_err();
            assert!(err.to_string().starts_with(&format!("{key}: ")), "{err}");
        }
    }
}
