//! Configuration: the `config.toml` schema, its defaults, and validation into a typed `Config`.
//!
//! The file is parsed once at start-up (and by `voxd check-config`) into serde structs that reject
//! unknown keys, then validated: every error names the key at fault and says what is expected.
//! Every section and key is optional; a missing one takes the default documented in README.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use voxd_backends::mock::{MockAsrConfig, MockLlmConfig, MockTtsConfig};
use voxd_backends::tools::{default_mock_tools, McpServerConfig, ToolConfig};
use voxd_core::vad::{Aggressiveness, Engine, VadConfig};
use voxd_core::{SampleRate, SessionConfig};

mod auth;

pub(crate) use auth::{AuthConfig, AuthSection};

/// Sample rates a client may stream at (`?sample_rate=`) and voxd may answer at.
pub(crate) const SUPPORTED_RATES: [u32; 4] = [8000, 16000, 24000, 48000];

/// A configuration problem. `Display` names the file and the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The path.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema (an unknown key, a wrong type).
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The path.
        path: PathBuf,
        /// The parser's message, with line, column and key.
        message: String,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid config: `{key}` {message}")]
    Invalid {
        /// The key at fault, e.g. `vad.frame_ms`.
        key: String,
        /// What is expected.
        message: String,
    },
}

/// The file's schema: every section optional.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct FileConfig {
    /// `[server]`
    pub(crate) server: ServerSection,
    /// `[audio]`
    pub(crate) audio: AudioSection,
    /// `[vad]`
    pub(crate) vad: VadSection,
    /// `[turn]`
    pub(crate) turn: TurnSection,
    /// `[asr]`
    pub(crate) asr: AsrSection,
    /// `[llm]`
    pub(crate) llm: LlmSection,
    /// `[tts]`
    pub(crate) tts: TtsSection,
    /// `[transcribe]`: `POST /v1/transcribe`.
    pub(crate) transcribe: TranscribeConfig,
    /// `[metrics]`
    pub(crate) metrics: MetricsSection,
    /// `[limits]`: per-session limits on what a client may send.
    pub(crate) limits: LimitsSection,
    /// `[timeouts]`: how long each provider stage may take.
    pub(crate) timeouts: TimeoutsSection,
    /// `[auth]`: API keys and allowed origins (off by default).
    pub(crate) auth: AuthSection,
    /// `[circuit_breaker]`: when a failing provider is skipped.
    pub(crate) circuit_breaker: CircuitBreakerSection,
    /// `[quotas]`: per-IP and per-key session rates and counts (off by default).
    pub(crate) quotas: QuotasSection,
    /// `[tools.NAME]`: the tool registry. Default: `check_balance` and `send_email`.
    pub(crate) tools: Option<BTreeMap<String, ToolConfig>>,
    /// `[mcp.NAME]`: MCP servers whose tools are offered too.
    pub(crate) mcp: BTreeMap<String, McpServerConfig>,
    /// `[twilio]`: `GET /twilio`, Twilio Media Streams.
    pub(crate) twilio: TwilioSection,
}

/// `[twilio]`
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TwilioSection {
    /// An environment variable holding the account's auth token. Set, every upgrade must carry a
    /// valid `X-Twilio-Signature` (else 403), and the API-key check does not apply to `/twilio`.
    pub(crate) auth_token_env: Option<String>,
    /// The stream URL as Twilio calls it (`wss://voice.example.com/twilio`), for the signature,
    /// when a proxy in front changes the scheme or host. Default: `wss://` + the `Host` header +
    /// the request's path and query.
    pub(crate) public_url: Option<String>,
    /// The `<Parameter>`s of the TwiML `<Stream>` that shape the session. Default: all of
    /// `TWILIO_PARAMETERS`.
    pub(crate) parameters: Vec<String>,
}

impl Default for TwilioSection {
    fn default() -> Self {
        TwilioSection {
            auth_token_env: None,
            public_url: None,
            parameters: TWILIO_PARAMETERS.map(String::from).to_vec(),
        }
    }
}

/// What the session parameters a `<Stream>` may set, checked.
pub(crate) const TWILIO_PARAMETERS: [&str; 5] = [
    "instructions",
    "greeting",
    "voice",
    "language",
    "idle_timeout_ms",
];

/// `[twilio]`, loaded.
#[derive(Debug, Clone, Default)]
pub(crate) struct Twilio {
    /// The auth token that signs upgrades, if set.
    pub(crate) auth_token: Option<String>,
    /// `TwilioSection::public_url`.
    pub(crate) public_url: Option<String>,
    /// `TwilioSection::parameters`.
    pub(crate) parameters: Vec<String>,
}

impl TwilioSection {
    fn load(&self) -> Result<Twilio, ConfigError> {
        if let Some(p) = self
            .parameters
            .iter()
            .find(|p| !TWILIO_PARAMETERS.contains(&p.as_str()))
        {
            return Err(invalid(
                "twilio.parameters",
                format!("{p:?} is not a session setting; expected some of {TWILIO_PARAMETERS:?}"),
            ));
        }
        if let Some(url) = &self.public_url {
            if !(url.starts_with("wss://") || url.starts_with("ws://")) {
                return Err(invalid(
                    "twilio.public_url",
                    format!("{url:?} must be the wss:// URL Twilio connects to"),
                ));
            }
        }
        let auth_token = match &self.auth_token_env {
            None => None,
            Some(var) => Some(
                std::env::var(var)
                    .ok()
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| {
                        invalid(
                            "twilio.auth_token_env",
                            format!("names the environment variable {var}, which is not set"),
                        )
                    })?,
            ),
        };
        Ok(Twilio {
            auth_token,
            public_url: self.public_url.clone(),
            parameters: self.parameters.clone(),
        })
    }
}

impl FileConfig {
    /// Parses TOML text into the file's schema: the low stage. Unknown keys and wrong types are
    /// refused here, with the key and the line.
    ///
    /// # Errors
    /// `ConfigError::Parse`.
    pub(crate) fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string().trim_end().to_owned(),
        })
    }
}

/// `[transcribe]` settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TranscribeConfig {
    /// Largest request body, in bytes (413 above).
    pub(crate) max_body_bytes: usize,
    /// Longest audio accepted, in seconds (413 above).
    pub(crate) max_duration_s: u64,
    /// Segments transcribed at once.
    pub(crate) max_concurrent_segments: usize,
    /// Longer speech regions are cut into pieces of at most this, in seconds.
    pub(crate) max_segment_s: u64,
    /// Audio kept around each speech region, in ms.
    pub(crate) segment_padding_ms: u64,
}

impl Default for TranscribeConfig {
    fn default() -> Self {
        TranscribeConfig {
            max_body_bytes: 25 * 1024 * 1024,
            max_duration_s: 1800,
            max_concurrent_segments: 8,
            max_segment_s: 30,
            segment_padding_ms: 300,
        }
    }
}

/// `[quotas]`: 0 turns a quota off.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct QuotasSection {
    /// New `/ws` sessions per second from one IP address (sustained).
    pub(crate) per_ip_sessions_per_s: f64,
    /// New sessions one IP address may open at once before the rate applies.
    pub(crate) per_ip_burst: u32,
    /// Concurrent sessions from one IP address.
    pub(crate) per_ip_max_sessions: u32,
    /// New sessions per second with one API key (or tokens minted by it).
    pub(crate) per_key_sessions_per_s: f64,
    /// New sessions one key may open at once before the rate applies.
    pub(crate) per_key_burst: u32,
    /// Concurrent sessions with one API key (or tokens minted by it).
    pub(crate) per_key_max_sessions: u32,
    /// Take the client's address from the last entry of `X-Forwarded-For` (the one the nearest
    /// proxy appended). Only behind a proxy that sets it: otherwise clients could pick their IP.
    pub(crate) trust_x_forwarded_for: bool,
}

impl QuotasSection {
    /// Checks the rates' ranges (`access::Quotas` builds its buckets from a section that passed).
    ///
    /// # Errors
    /// `ConfigError::Invalid` naming the key when a rate is out of range.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        for (key, per_s) in [
            ("per_ip_sessions_per_s", self.per_ip_sessions_per_s),
            ("per_key_sessions_per_s", self.per_key_sessions_per_s),
        ] {
            if per_s != 0.0 && !(0.001..=100_000.0).contains(&per_s) {
                return Err(ConfigError::Invalid {
                    key: format!("quotas.{key}"),
                    message: format!("is {per_s}; expected 0 (off) or 0.001 to 100000"),
                });
            }
        }
        Ok(())
    }
}

/// `[timeouts]`, in ms.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TimeoutsSection {
    /// The transcript of one utterance.
    pub(crate) asr_ms: u64,
    /// The LLM's first token (or tool call).
    pub(crate) llm_first_token_ms: u64,
    /// The gap between two LLM tokens.
    pub(crate) llm_stall_ms: u64,
    /// A sentence's first audio.
    pub(crate) tts_first_audio_ms: u64,
    /// The gap between two chunks of a sentence's audio.
    pub(crate) tts_stall_ms: u64,
    /// One tool call.
    pub(crate) tool_ms: u64,
}

impl Default for TimeoutsSection {
    fn default() -> Self {
        TimeoutsSection {
            asr_ms: 10_000,
            llm_first_token_ms: 10_000,
            llm_stall_ms: 5_000,
            tts_first_audio_ms: 5_000,
            tts_stall_ms: 5_000,
            tool_ms: 30_000,
        }
    }
}

/// The provider timeouts, as durations.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    /// `asr_ms`
    pub(crate) asr: Duration,
    /// `llm_first_token_ms`
    pub(crate) llm_first_token: Duration,
    /// `llm_stall_ms`
    pub(crate) llm_stall: Duration,
    /// `tts_first_audio_ms`
    pub(crate) tts_first_audio: Duration,
    /// `tts_stall_ms`
    pub(crate) tts_stall: Duration,
    /// `tool_ms`
    pub(crate) tool: Duration,
}

/// `[limits]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LimitsSection {
    /// A text frame larger than this closes the session with 1009.
    pub(crate) max_text_bytes: usize,
    /// A binary (audio) frame larger than this closes the session with 1009.
    pub(crate) max_audio_frame_bytes: usize,
    /// A session with no message from its client for this long is closed with 1000.
    pub(crate) idle_timeout_s: u64,
    /// Audio faster than this many times real time, sustained, is rate-limited.
    pub(crate) max_audio_rate: f64,
    /// Audio a client may send ahead of real time at once (e.g. after a network stall), in ms.
    pub(crate) audio_burst_ms: u64,
    /// Control (text) messages per second, sustained.
    pub(crate) max_control_per_s: u32,
    /// Control messages a client may send at once.
    pub(crate) control_burst: u32,
    /// Strikes (a dropped message adds one, an admitted one removes one) at which the session is
    /// closed with 1008.
    pub(crate) rate_limit_strikes: u32,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_text_bytes: 16 * 1024,
            max_audio_frame_bytes: 64 * 1024,
            idle_timeout_s: 300,
            max_audio_rate: 4.0,
            audio_burst_ms: 5000,
            max_control_per_s: 50,
            control_burst: 100,
            rate_limit_strikes: 50,
        }
    }
}

/// `[metrics]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct MetricsSection {
    /// Serve `GET /metrics`.
    pub(crate) enabled: bool,
}

impl Default for MetricsSection {
    fn default() -> Self {
        MetricsSection { enabled: true }
    }
}

/// `[server]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct ServerSection {
    /// Address to listen on.
    pub(crate) listen: SocketAddr,
    /// Concurrent sessions admitted; more are refused with 503.
    pub(crate) max_sessions: usize,
    /// `Retry-After` seconds sent with a 503.
    pub(crate) retry_after_s: u32,
    /// Largest WebSocket message accepted, in bytes.
    pub(crate) max_message_bytes: usize,
    /// A client that takes longer than this to accept what voxd sends (its socket buffer stays
    /// full) is disconnected, in ms.
    pub(crate) send_timeout_ms: u64,
    /// The kernel send buffer of each connection (`SO_SNDBUF`), in bytes; 0 leaves it to the
    /// kernel's autotuning (up to `net.ipv4.tcp_wmem`, often 4 MiB). It bounds what a client that
    /// stopped reading can pin in kernel memory until `send_timeout_ms` closes it.
    pub(crate) send_buffer_bytes: usize,
    /// On SIGTERM/SIGINT, `/health/ready` fails at once but new sessions are still admitted, and
    /// served, for this long: the balancers' and the endpoints' reaction time, in seconds. 0
    /// stops admitting at once.
    pub(crate) drain_grace_s: u64,
    /// After the grace, responses in progress may finish for this long before every session is
    /// closed, in seconds.
    pub(crate) drain_timeout_s: u64,
    /// Serve the browser demo page at `/` and its client, `/voxd.js`; false answers 404.
    pub(crate) demo_page: bool,
    /// A `/ws` session whose connection drops without a close waits this long for its client
    /// to come back (`?resume=`), in seconds; 0 ends it at once.
    pub(crate) resume_window_s: u64,
}

impl Default for ServerSection {
    fn default() -> Self {
        ServerSection {
            listen: SocketAddr::from(([127, 0, 0, 1], 8000)),
            max_sessions: 1000,
            retry_after_s: 1,
            max_message_bytes: 1 << 20,
            send_timeout_ms: 10_000,
            send_buffer_bytes: 64 * 1024,
            drain_grace_s: 5,
            drain_timeout_s: 30,
            demo_page: true,
            resume_window_s: 30,
        }
    }
}

/// `[audio]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AudioSection {
    /// Rate of the response audio: 8000, 16000, 24000 or 48000.
    pub(crate) output_sample_rate: u32,
    /// Length of each binary audio frame sent, in ms.
    pub(crate) output_frame_ms: u32,
    /// How far audio is sent ahead of real time, in ms.
    pub(crate) playback_lead_ms: u64,
    /// Audio is sent in batches this long (whole frames), one wake-up per batch, in ms.
    pub(crate) pacing_interval_ms: u64,
    /// Utterances longer than this are ended, in ms.
    pub(crate) max_utterance_ms: u64,
    /// Synthesized audio buffered ahead before the next sentence's TTS waits, in ms.
    pub(crate) max_tts_backlog_ms: u64,
}

impl Default for AudioSection {
    fn default() -> Self {
        AudioSection {
            output_sample_rate: 16000,
            output_frame_ms: 20,
            playback_lead_ms: 200,
            pacing_interval_ms: 60,
            max_utterance_ms: 60_000,
            max_tts_backlog_ms: 3000,
        }
    }
}

/// webrtc-vad's modes, as written in config.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum VadMode {
    /// Mode 0.
    Quality,
    /// Mode 1.
    LowBitrate,
    /// Mode 2.
    Aggressive,
    /// Mode 3.
    VeryAggressive,
}

/// The server VAD's classifier, as written in config.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum VadEngine {
    /// Silero VAD v6 (the default): robust to stationary noise.
    Silero,
    /// webrtc-vad: cheaper, but loud or low-frequency noise reads as speech.
    Webrtc,
}

/// `[vad]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct VadSection {
    /// Run server VAD (until a client sends its own `speech_start`/`speech_end`).
    pub(crate) enabled: bool,
    /// The classifier.
    pub(crate) engine: VadEngine,
    /// Silero: a window this likely to be speech starts (or continues an onset of) speech.
    pub(crate) start_threshold: f32,
    /// Silero: once speech is under way, windows this likely stay speech.
    pub(crate) end_threshold: f32,
    /// webrtc-vad's aggressiveness.
    pub(crate) mode: VadMode,
    /// webrtc-vad's frame length: 10, 20 or 30 ms (Silero's window is 32 ms).
    pub(crate) frame_ms: u32,
    /// Voiced audio needed to start speech, in ms.
    pub(crate) onset_ms: u32,
    /// Silence that ends speech, in ms.
    pub(crate) hangover_ms: u32,
    /// Audio before the onset kept in the utterance, in ms.
    pub(crate) preroll_ms: u64,
    /// Frames quieter than this RMS level (dBFS) are never speech.
    pub(crate) min_level_dbfs: f32,
}

impl Default for VadSection {
    fn default() -> Self {
        VadSection {
            enabled: true,
            engine: VadEngine::Silero,
            start_threshold: 0.5,
            end_threshold: 0.35,
            mode: VadMode::Aggressive,
            frame_ms: 20,
            onset_ms: 60,
            hangover_ms: 500,
            preroll_ms: 300,
            min_level_dbfs: -55.0,
        }
    }
}

/// `[turn]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TurnSection {
    /// User speech during a response that lasts this long interrupts it, in ms.
    pub(crate) min_interruption_ms: u64,
    /// A barge-in candidate with nothing after it for this long is a false alarm, in ms.
    pub(crate) false_interruption_timeout_ms: u64,
    /// While the bot speaks, server VAD hears only speech within this many dB of the user's own
    /// level; 0 turns the check off.
    pub(crate) barge_in_level_db: f32,
    /// Words that alone are a backchannel, not an interruption.
    pub(crate) backchannels: Vec<String>,
    /// A tool running longer than this gets a spoken filler, in ms.
    pub(crate) tool_filler_delay_ms: u64,
    /// The filler phrase.
    pub(crate) filler_phrase: String,
    /// Tool rounds per response before it fails.
    pub(crate) max_tool_rounds: u32,
    /// Conversation history bound, in messages.
    pub(crate) max_history_messages: usize,
    /// Clauses this long (characters) are spoken before their sentence ends.
    pub(crate) min_clause_chars: usize,
}

impl Default for TurnSection {
    fn default() -> Self {
        let core = SessionConfig::default();
        TurnSection {
            min_interruption_ms: 500,
            false_interruption_timeout_ms: 2000,
            barge_in_level_db: 12.0,
            backchannels: core.backchannels,
            tool_filler_delay_ms: 1000,
            filler_phrase: core.filler_phrase,
            max_tool_rounds: core.max_tool_rounds,
            max_history_messages: core.max_history_messages,
            min_clause_chars: core.min_clause_chars,
        }
    }
}

/// Which ASR provider serves a stage.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AsrProvider {
    /// `backends::mock::MockAsr`.
    #[default]
    Mock,
    /// `backends::openai::OpenAiAsr`: `/v1/audio/transcriptions`.
    Openai,
    /// `backends::stream_asr::StreamAsrProvider`: streaming speech to text over a WebSocket.
    Stream,
}

/// `[asr]`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct AsrSection {
    /// The provider (or use `providers` for a fallback chain).
    pub(crate) provider: Option<AsrProvider>,
    /// Providers in order: a failure or timeout moves a request to the next.
    pub(crate) providers: Vec<AsrProvider>,
    /// `[asr.mock]`
    pub(crate) mock: MockAsrConfig,
    /// `[asr.openai]`
    pub(crate) openai: voxd_backends::openai::OpenAiAsrConfig,
    /// `[asr.stream]`
    pub(crate) stream: voxd_backends::stream_asr::StreamAsrConfig,
}

/// Which LLM provider serves a stage.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum LlmProvider {
    /// `backends::mock::MockLlm`.
    #[default]
    Mock,
    /// `backends::openai::OpenAiLlm`: streamed Chat Completions.
    Openai,
}

/// `[llm]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct LlmSection {
    /// The provider (or use `providers` for a fallback chain).
    pub(crate) provider: Option<LlmProvider>,
    /// Providers in order: a failure or timeout moves a request to the next.
    pub(crate) providers: Vec<LlmProvider>,
    /// The system prompt, first in every request.
    pub(crate) system_prompt: String,
    /// `[llm.mock]`
    pub(crate) mock: MockLlmConfig,
    /// `[llm.openai]`
    pub(crate) openai: voxd_backends::openai::OpenAiLlmConfig,
}

impl Default for LlmSection {
    fn default() -> Self {
        LlmSection {
            provider: None,
            providers: Vec::new(),
            system_prompt: SessionConfig::default().system_prompt,
            mock: MockLlmConfig::default(),
            openai: voxd_backends::openai::OpenAiLlmConfig::default(),
        }
    }
}

/// Which TTS provider serves a stage.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub(crate) enum TtsProvider {
    /// `backends::mock::MockTts`.
    #[default]
    Mock,
    /// `backends::openai::OpenAiTts`: `/v1/audio/speech` as streamed PCM.
    Openai,
    /// `backends::espeak::EspeakTts`: a local espeak-ng voice.
    Espeak,
}

/// `[tts]`
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct TtsSection {
    /// The provider (or use `providers` for a fallback chain).
    pub(crate) provider: Option<TtsProvider>,
    /// Providers in order: a failure or timeout moves a request to the next.
    pub(crate) providers: Vec<TtsProvider>,
    /// `[tts.mock]`
    pub(crate) mock: MockTtsConfig,
    /// `[tts.openai]`
    pub(crate) openai: voxd_backends::openai::OpenAiTtsConfig,
    /// `[tts.espeak]`
    pub(crate) espeak: voxd_backends::espeak::EspeakTtsConfig,
}

/// A stage's providers in order, from `provider` or `providers` (the mock when neither is set).
///
/// # Errors
/// `ConfigError::Invalid` naming `<stage>.providers` when both keys are set, the list is empty or
/// a provider appears twice.
pub(crate) fn provider_chain<P: Copy + PartialEq + Default + std::fmt::Debug>(
    stage: &str,
    provider: Option<P>,
    providers: &[P],
) -> Result<Vec<P>, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        key: format!("{stage}.providers"),
        message,
    };
    match (provider, providers) {
        (Some(_), [_, ..]) => Err(invalid(format!(
            "and `{stage}.provider` are both set; keep one (`providers` lists a fallback chain)"
        ))),
        (Some(p), []) => Ok(vec![p]),
        (None, []) => Ok(vec![P::default()]),
        (None, list) => {
            for (i, p) in list.iter().enumerate() {
                if list[..i].contains(p) {
                    return Err(invalid(format!("lists {p:?} twice")));
                }
            }
            Ok(list.to_vec())
        }
    }
}

/// `[circuit_breaker]`: when a stage skips a failing provider (see `providers/fallback.rs`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub(crate) struct CircuitBreakerSection {
    /// Consecutive failures that open a provider's breaker; 0 disables breakers.
    pub(crate) failure_threshold: u32,
    /// How long an open breaker skips its provider before one request probes it.
    pub(crate) cooldown_ms: u64,
}

impl Default for CircuitBreakerSection {
    fn default() -> Self {
        CircuitBreakerSection {
            failure_threshold: 5,
            cooldown_ms: 30_000,
        }
    }
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// Fails with `key`'s name when `value` is above `max`: upper bounds keep every duration far from
/// overflow and every buffer small.
fn at_most(key: &str, value: u64, max: u64) -> Result<(), ConfigError> {
    if value > max {
        return Err(invalid(key, format!("is {value}; the maximum is {max}")));
    }
    Ok(())
}

impl ServerSection {
    fn check(&self) -> Result<(), ConfigError> {
        if self.max_sessions == 0 {
            return Err(invalid("server.max_sessions", "must be at least 1"));
        }
        if self.max_message_bytes < 1024 {
            return Err(invalid("server.max_message_bytes", "must be at least 1024"));
        }
        if self.resume_window_s > 3600 {
            return Err(invalid(
                "server.resume_window_s",
                format!("is {}; expected 0 to 3600", self.resume_window_s),
            ));
        }
        if self.drain_grace_s > 3600 {
            return Err(invalid(
                "server.drain_grace_s",
                format!("is {}; expected 0 to 3600", self.drain_grace_s),
            ));
        }
        if self.drain_timeout_s > 3600 {
            return Err(invalid(
                "server.drain_timeout_s",
                format!("is {}; expected 0 to 3600", self.drain_timeout_s),
            ));
        }
        if !(100..=600_000).contains(&self.send_timeout_ms) {
            return Err(invalid(
                "server.send_timeout_ms",
                format!("is {}; expected 100 to 600000", self.send_timeout_ms),
            ));
        }
        if self.send_buffer_bytes != 0 && !(4096..=16 << 20).contains(&self.send_buffer_bytes) {
            return Err(invalid(
                "server.send_buffer_bytes",
                format!(
                    "is {}; expected 0 (the kernel decides) or 4096 to 16777216",
                    self.send_buffer_bytes
                ),
            ));
        }
        Ok(())
    }
}

impl AudioSection {
    fn check(&self) -> Result<(), ConfigError> {
        if !SUPPORTED_RATES.contains(&self.output_sample_rate) {
            return Err(invalid(
                "audio.output_sample_rate",
                format!(
                    "is {}; expected one of 8000, 16000, 24000, 48000",
                    self.output_sample_rate
                ),
            ));
        }
        if !(10..=200).contains(&self.output_frame_ms) {
            return Err(invalid(
                "audio.output_frame_ms",
                format!("is {}; expected 10 to 200", self.output_frame_ms),
            ));
        }
        if self.playback_lead_ms > 5000 {
            return Err(invalid(
                "audio.playback_lead_ms",
                "must be at most 5000 (a large lead delays barge-in)",
            ));
        }
        if self.pacing_interval_ms == 0
            || self.pacing_interval_ms > self.playback_lead_ms.max(u64::from(self.output_frame_ms))
        {
            return Err(invalid(
                "audio.pacing_interval_ms",
                format!(
                    "is {}; expected 1 to audio.playback_lead_ms ({}): a batch larger than the lead would let the client's player run dry",
                    self.pacing_interval_ms, self.playback_lead_ms
                ),
            ));
        }
        if self.max_utterance_ms < 1000 {
            return Err(invalid("audio.max_utterance_ms", "must be at least 1000"));
        }
        at_most("audio.max_tts_backlog_ms", self.max_tts_backlog_ms, 60_000)?;
        at_most("audio.max_utterance_ms", self.max_utterance_ms, 600_000)
    }
}

impl VadSection {
    fn check(&self) -> Result<(), ConfigError> {
        at_most("vad.onset_ms", u64::from(self.onset_ms), 5_000)?;
        at_most("vad.hangover_ms", u64::from(self.hangover_ms), 10_000)?;
        at_most("vad.preroll_ms", self.preroll_ms, 2_000)?;
        if !matches!(self.frame_ms, 10 | 20 | 30) {
            return Err(invalid(
                "vad.frame_ms",
                format!("is {}; webrtc-vad takes 10, 20 or 30", self.frame_ms),
            ));
        }
        let window_ms = match self.engine {
            VadEngine::Silero => 32,
            VadEngine::Webrtc => self.frame_ms,
        };
        if self.hangover_ms < window_ms {
            return Err(invalid(
                "vad.hangover_ms",
                format!("must be at least one window ({window_ms} ms)"),
            ));
        }
        for (key, value) in [
            ("vad.start_threshold", self.start_threshold),
            ("vad.end_threshold", self.end_threshold),
        ] {
            if !(0.0..=1.0).contains(&value) || value == 0.0 {
                return Err(invalid(
                    key,
                    format!("is {value}; expected a probability above 0 and at most 1"),
                ));
            }
        }
        if self.end_threshold > self.start_threshold {
            return Err(invalid(
                "vad.end_threshold",
                format!(
                    "is {}; it must not exceed vad.start_threshold ({}): speech under way keeps \
                     going down to it",
                    self.end_threshold, self.start_threshold
                ),
            ));
        }
        if !(-100.0..=0.0).contains(&self.min_level_dbfs) {
            return Err(invalid(
                "vad.min_level_dbfs",
                format!(
                    "is {}; expected -100 to 0 (dB relative to full scale)",
                    self.min_level_dbfs
                ),
            ));
        }
        Ok(())
    }
}

impl TurnSection {
    fn check(&self) -> Result<(), ConfigError> {
        at_most("turn.min_interruption_ms", self.min_interruption_ms, 10_000)?;
        at_most(
            "turn.false_interruption_timeout_ms",
            self.false_interruption_timeout_ms,
            60_000,
        )?;
        at_most(
            "turn.tool_filler_delay_ms",
            self.tool_filler_delay_ms,
            60_000,
        )?;
        at_most(
            "turn.max_history_messages",
            self.max_history_messages as u64,
            10_000,
        )?;
        if !(0.0..=60.0).contains(&self.barge_in_level_db) {
            return Err(invalid(
                "turn.barge_in_level_db",
                format!("is {}; expected 0 (off) to 60 dB", self.barge_in_level_db),
            ));
        }
        if self.min_interruption_ms == 0 {
            return Err(invalid("turn.min_interruption_ms", "must be above 0"));
        }
        if self.false_interruption_timeout_ms < self.min_interruption_ms {
            return Err(invalid(
                "turn.false_interruption_timeout_ms",
                "must be at least turn.min_interruption_ms",
            ));
        }
        if self.max_history_messages < 2 {
            return Err(invalid("turn.max_history_messages", "must be at least 2"));
        }
        if self.filler_phrase.trim().is_empty() {
            return Err(invalid("turn.filler_phrase", "must not be empty"));
        }
        Ok(())
    }
}

impl TimeoutsSection {
    fn check(&self) -> Result<Timeouts, ConfigError> {
        for (key, value) in [
            ("timeouts.asr_ms", self.asr_ms),
            ("timeouts.llm_first_token_ms", self.llm_first_token_ms),
            ("timeouts.llm_stall_ms", self.llm_stall_ms),
            ("timeouts.tts_first_audio_ms", self.tts_first_audio_ms),
            ("timeouts.tts_stall_ms", self.tts_stall_ms),
            ("timeouts.tool_ms", self.tool_ms),
        ] {
            if !(10..=600_000).contains(&value) {
                return Err(invalid(key, format!("is {value}; expected 10 to 600000")));
            }
        }
        let ms = Duration::from_millis;
        Ok(Timeouts {
            asr: ms(self.asr_ms),
            llm_first_token: ms(self.llm_first_token_ms),
            llm_stall: ms(self.llm_stall_ms),
            tts_first_audio: ms(self.tts_first_audio_ms),
            tts_stall: ms(self.tts_stall_ms),
            tool: ms(self.tool_ms),
        })
    }
}

impl LimitsSection {
    /// `max_message_bytes`: `server.max_message_bytes`, which bounds every message.
    fn check(&self, max_message_bytes: usize) -> Result<(), ConfigError> {
        if self.max_text_bytes < 256 || self.max_text_bytes > max_message_bytes {
            return Err(invalid(
                "limits.max_text_bytes",
                format!(
                    "is {}; expected 256 to server.max_message_bytes ({max_message_bytes})",
                    self.max_text_bytes
                ),
            ));
        }
        if self.max_audio_frame_bytes < 1024 || self.max_audio_frame_bytes > max_message_bytes {
            return Err(invalid(
                "limits.max_audio_frame_bytes",
                format!(
                    "is {}; expected 1024 to server.max_message_bytes ({max_message_bytes})",
                    self.max_audio_frame_bytes
                ),
            ));
        }
        if !(1..=86_400).contains(&self.idle_timeout_s) {
            return Err(invalid("limits.idle_timeout_s", "expected 1 to 86400"));
        }
        if !(self.max_audio_rate >= 1.0 && self.max_audio_rate <= 100.0) {
            return Err(invalid(
                "limits.max_audio_rate",
                format!(
                    "is {}; expected 1 to 100 (times real time)",
                    self.max_audio_rate
                ),
            ));
        }
        if self.audio_burst_ms < 100 || self.audio_burst_ms > 600_000 {
            return Err(invalid("limits.audio_burst_ms", "expected 100 to 600000"));
        }
        if self.max_control_per_s == 0 || self.control_burst == 0 || self.rate_limit_strikes == 0 {
            return Err(invalid(
                "limits",
                "max_control_per_s, control_burst and rate_limit_strikes must be at least 1",
            ));
        }
        Ok(())
    }
}

impl TranscribeConfig {
    fn check(&self) -> Result<(), ConfigError> {
        if self.max_body_bytes < 1024 {
            return Err(invalid(
                "transcribe.max_body_bytes",
                "must be at least 1024",
            ));
        }
        for (key, value) in [
            ("transcribe.max_duration_s", self.max_duration_s),
            (
                "transcribe.max_concurrent_segments",
                self.max_concurrent_segments as u64,
            ),
            ("transcribe.max_segment_s", self.max_segment_s),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        Ok(())
    }
}

impl CircuitBreakerSection {
    fn check(&self) -> Result<Breaker, ConfigError> {
        if self.cooldown_ms > 3_600_000 {
            return Err(invalid(
                "circuit_breaker.cooldown_ms",
                format!(
                    "is {}; expected at most 3600000 (an hour)",
                    self.cooldown_ms
                ),
            ));
        }
        Ok(Breaker {
            failure_threshold: self.failure_threshold,
            cooldown: Duration::from_millis(self.cooldown_ms),
        })
    }
}

/// `[server]`, validated.
#[derive(Debug, Clone)]
pub(crate) struct Server {
    /// Where to listen.
    pub(crate) listen: SocketAddr,
    /// Sessions admitted at once.
    pub(crate) max_sessions: usize,
    /// `Retry-After` of a refusal for capacity, in seconds.
    pub(crate) retry_after_s: u32,
    /// The largest WebSocket message accepted.
    pub(crate) max_message_bytes: usize,
    /// How long one write to a client may wait.
    pub(crate) send_timeout: Duration,
    /// The socket's send buffer (0: the kernel decides).
    pub(crate) send_buffer_bytes: usize,
    /// How long a drain still admits sessions, after readiness fails.
    pub(crate) drain_grace: Duration,
    /// How long a drain waits for responses in progress.
    pub(crate) drain_timeout: Duration,
    /// Serve the demo page and `/voxd.js`.
    pub(crate) demo_page: bool,
    /// How long a dropped `/ws` session waits for its client (zero: not at all).
    pub(crate) resume_window: Duration,
}

/// `[circuit_breaker]`, validated.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Breaker {
    /// Consecutive failures that open a provider's breaker; 0 disables breakers.
    pub(crate) failure_threshold: u32,
    /// How long an open breaker skips its provider.
    pub(crate) cooldown: Duration,
}

/// The providers to build, validated: each stage's chain in order, with the tables of the
/// providers it names (the tables are the backends' own config types, checked when built).
#[derive(Debug, Clone)]
pub(crate) struct ProviderSettings {
    /// The ASR chain.
    pub(crate) asr: Vec<AsrProvider>,
    /// The LLM chain.
    pub(crate) llm: Vec<LlmProvider>,
    /// The TTS chain.
    pub(crate) tts: Vec<TtsProvider>,
    /// `[asr.*]`
    pub(crate) asr_tables: AsrSection,
    /// `[llm.*]`
    pub(crate) llm_tables: LlmSection,
    /// `[tts.*]`
    pub(crate) tts_tables: TtsSection,
    /// `[circuit_breaker]`
    pub(crate) breaker: Breaker,
    /// `[tools.NAME]`: the tool registry's configuration.
    pub(crate) tools: BTreeMap<String, ToolConfig>,
    /// `[mcp.NAME]`: MCP servers, connected at start-up.
    pub(crate) mcp: BTreeMap<String, McpServerConfig>,
}

/// What the command line overrides in the file, applied before validation.
#[derive(Debug, Clone, Copy, Default)]
pub struct Overrides {
    /// `--listen`: `server.listen`.
    pub listen: Option<SocketAddr>,
    /// `--max-sessions`: `server.max_sessions`.
    pub max_sessions: Option<usize>,
}

impl FileConfig {
    /// The file with the command line's overrides.
    fn apply(mut self, o: Overrides) -> FileConfig {
        if let Some(listen) = o.listen {
            self.server.listen = listen;
        }
        if let Some(n) = o.max_sessions {
            self.server.max_sessions = n;
        }
        self
    }
}

/// The validated configuration: typed, every section checked once. Nothing after validation
/// reads the file.
#[derive(Debug, Clone)]
pub struct Config {
    /// Folder that relative paths in the file are resolved against.
    pub(crate) base_dir: PathBuf,
    /// `[server]`
    pub(crate) server: Server,
    /// `[metrics] enabled`
    pub(crate) metrics_enabled: bool,
    /// `[limits]`: per-session limits on what a client may send.
    pub(crate) limits: LimitsSection,
    /// `[timeouts]`: how long each provider stage may take.
    pub(crate) timeouts: Timeouts,
    /// `[quotas]`, checked.
    pub(crate) quotas: QuotasSection,
    /// The providers and tools to build.
    pub(crate) providers: ProviderSettings,
    /// The per-session state machine's settings.
    pub session: SessionConfig,
    /// `POST /v1/transcribe` settings.
    pub(crate) transcribe: TranscribeConfig,
    /// API keys, allowed origins and the token secret, loaded from the file, the environment and
    /// key files.
    pub(crate) auth: AuthConfig,
    /// `[twilio]`, loaded.
    pub(crate) twilio: Twilio,
}

impl Config {
    /// Reads, parses and validates a config file. Relative paths in it are resolved against the
    /// file's folder.
    ///
    /// # Errors
    /// A `ConfigError` naming the file and the key at fault.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        Config::load_with(path, Overrides::default())
    }

    /// `load`, with the command line's overrides applied before validation.
    ///
    /// # Errors
    /// A `ConfigError` naming the file (or the option) and the key at fault.
    pub fn load_with(path: &Path, overrides: Overrides) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let base_dir = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let file = FileConfig::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        Config::from_file(file.apply(overrides), &base_dir)
    }

    /// Parses and validates TOML text; relative paths resolve against `base_dir`.
    ///
    /// # Errors
    /// A `ConfigError` naming the key at fault.
    pub fn from_toml(text: &str, base_dir: &Path) -> Result<Config, ConfigError> {
        Config::from_file(FileConfig::parse(text)?, base_dir)
    }

    /// The built-in defaults (what an empty file means), with the command line's overrides.
    ///
    /// # Errors
    /// An override out of range.
    pub fn defaults_with(overrides: Overrides) -> Result<Config, ConfigError> {
        Config::from_file(FileConfig::default().apply(overrides), Path::new("."))
    }

    /// The built-in defaults (what an empty file means).
    pub fn defaults() -> Config {
        Config::defaults_with(Overrides::default()).expect("the built-in defaults are valid")
    }

    /// Where the server listens (`server.listen`, or `--listen`).
    pub fn listen(&self) -> SocketAddr {
        self.server.listen
    }

    /// How long a drain waits for responses in progress (`server.drain_timeout_s`).
    pub fn drain_timeout(&self) -> Duration {
        self.server.drain_timeout
    }

    /// How long a drain still admits new sessions after readiness fails
    /// (`server.drain_grace_s`).
    pub fn drain_grace(&self) -> Duration {
        self.server.drain_grace
    }

    /// Validates a parsed file: the high stage. Each section checks itself once.
    ///
    /// # Errors
    /// A `ConfigError::Invalid` naming the key at fault.
    pub(crate) fn from_file(file: FileConfig, base_dir: &Path) -> Result<Config, ConfigError> {
        file.server.check()?;
        file.audio.check()?;
        file.quotas.check()?;
        let providers = ProviderSettings {
            asr: provider_chain("asr", file.asr.provider, &file.asr.providers)?,
            llm: provider_chain("llm", file.llm.provider, &file.llm.providers)?,
            tts: provider_chain("tts", file.tts.provider, &file.tts.providers)?,
            breaker: file.circuit_breaker.check()?,
            tools: file.tools.clone().unwrap_or_else(|| {
                default_mock_tools()
                    .into_iter()
                    .map(|(name, c)| (name, ToolConfig::Mock(c)))
                    .collect()
            }),
            mcp: file.mcp.clone(),
            asr_tables: file.asr.clone(),
            llm_tables: file.llm.clone(),
            tts_tables: file.tts.clone(),
        };
        file.vad.check()?;
        file.turn.check()?;
        let timeouts = file.timeouts.check()?;
        file.limits.check(file.server.max_message_bytes)?;
        file.transcribe.check()?;
        let auth = file.auth.load(base_dir)?;
        let twilio = file.twilio.load()?;
        let (a, v, t) = (&file.audio, &file.vad, &file.turn);
        let aggressiveness = match v.mode {
            VadMode::Quality => Aggressiveness::Quality,
            VadMode::LowBitrate => Aggressiveness::LowBitrate,
            VadMode::Aggressive => Aggressiveness::Aggressive,
            VadMode::VeryAggressive => Aggressiveness::VeryAggressive,
        };
        let session = SessionConfig {
            output_rate: SampleRate(a.output_sample_rate),
            output_frame_ms: a.output_frame_ms,
            playback_lead: Duration::from_millis(a.playback_lead_ms),
            pacing_interval: Duration::from_millis(a.pacing_interval_ms),
            vad: v.enabled.then_some(VadConfig {
                engine: match v.engine {
                    VadEngine::Silero => Engine::Silero {
                        start_threshold: v.start_threshold,
                        end_threshold: v.end_threshold,
                    },
                    VadEngine::Webrtc => Engine::WebRtc {
                        aggressiveness,
                        frame_ms: v.frame_ms,
                    },
                },
                onset_ms: v.onset_ms,
                hangover_ms: v.hangover_ms,
                min_level_dbfs: v.min_level_dbfs,
            }),
            preroll: Duration::from_millis(v.preroll_ms),
            max_utterance: Duration::from_millis(a.max_utterance_ms),
            min_interruption: Duration::from_millis(t.min_interruption_ms),
            false_interruption_timeout: Duration::from_millis(t.false_interruption_timeout_ms),
            barge_in_level_db: (t.barge_in_level_db > 0.0).then_some(t.barge_in_level_db),
            backchannels: t
                .backchannels
                .iter()
                .map(|b| b.trim().to_lowercase())
                .filter(|b| !b.is_empty())
                .collect(),
            tool_filler_delay: Duration::from_millis(t.tool_filler_delay_ms),
            filler_phrase: t.filler_phrase.clone(),
            max_tool_rounds: t.max_tool_rounds,
            system_prompt: file.llm.system_prompt.clone(),
            max_history_messages: t.max_history_messages,
            max_tts_backlog: Duration::from_millis(a.max_tts_backlog_ms),
            min_clause_chars: t.min_clause_chars,
            // Known once the providers are built: `AppState::with_providers` sets them.
            streaming_asr: false,
            server_tools: Arc::from([]),
            // A client-side tool has the same time to answer as a server's.
            client_tool_timeout: timeouts.tool,
            // The codec's: Twilio's player drops its buffer on `clear`.
            client_discards_on_pause: false,
            resumable: false,
            client_tools: Arc::from([]),
            voice: None,
            language: None,
            // A client's to change (the Realtime protocol's `turn_detection`).
            answer_turns: true,
            interrupt_on_speech: true,
            idle_timeout: None,
        };
        Ok(Config {
            base_dir: base_dir.to_owned(),
            server: Server {
                listen: file.server.listen,
                max_sessions: file.server.max_sessions,
                retry_after_s: file.server.retry_after_s,
                max_message_bytes: file.server.max_message_bytes,
                send_timeout: Duration::from_millis(file.server.send_timeout_ms),
                send_buffer_bytes: file.server.send_buffer_bytes,
                drain_grace: Duration::from_secs(file.server.drain_grace_s),
                drain_timeout: Duration::from_secs(file.server.drain_timeout_s),
                demo_page: file.server.demo_page,
                resume_window: Duration::from_secs(file.server.resume_window_s),
            },
            metrics_enabled: file.metrics.enabled,
            limits: file.limits,
            timeouts,
            quotas: file.quotas,
            providers,
            session,
            transcribe: file.transcribe,
            auth,
            twilio,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        Config::from_toml(text, Path::new("."))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn an_empty_file_is_the_defaults() {
        let c = Config::from_toml("", Path::new(".")).unwrap();
        assert_eq!(c.server.max_sessions, 1000);
        assert_eq!(c.session.playback_lead, Duration::from_millis(200));
        assert!(c.providers.tools.contains_key("check_balance"));
    }

    #[test]
    fn command_line_overrides_apply_before_validation() {
        let o = Overrides {
            listen: Some(SocketAddr::from(([127, 0, 0, 1], 9))),
            max_sessions: Some(7),
        };
        let c = Config::defaults_with(o).unwrap();
        assert_eq!(c.server.listen, SocketAddr::from(([127, 0, 0, 1], 9)));
        assert_eq!(c.server.max_sessions, 7);
        // An override is validated like the file's value.
        let zero = Overrides {
            max_sessions: Some(0),
            ..Overrides::default()
        };
        let e = Config::defaults_with(zero).unwrap_err().to_string();
        assert!(e.contains("server.max_sessions"), "{e}");
    }

    #[test]
    fn unknown_keys_are_named() {
        let e = err("[vad]\nhangover = 3\n");
        assert!(e.contains("hangover"), "{e}");
        assert!(e.contains("hangover_ms"), "lists what is expected: {e}");
    }

    #[test]
    fn bad_values_name_the_key() {
        assert!(err("[vad]\nframe_ms = 25\n").contains("vad.frame_ms"));
        assert!(err("[audio]\noutput_sample_rate = 44100\n").contains("audio.output_sample_rate"));
        assert!(err("[asr]\nprovider = \"whisper\"\n").contains("whisper"));
        let both = err("[llm]\nprovider = \"mock\"\nproviders = [\"mock\"]\n");
        assert!(
            both.contains("`llm.providers`") && both.contains("both set"),
            "{both}"
        );
        assert!(err("[tts]\nproviders = [\"mock\", \"mock\"]\n").contains("twice"));
        assert!(err("[circuit_breaker]\ncooldown_ms = 99999999\n")
            .contains("circuit_breaker.cooldown_ms"));
        assert!(err("[server]\nmax_sessions = \"many\"\n").contains("max_sessions"));
    }
}
