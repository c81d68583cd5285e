//! voxd's providers: the traits every speech-to-text (`Asr`), language model (`Llm`), text-to-speech
//! (`Tts`) and tool (`Tool`) implementation satisfies, and the implementations themselves.
//!
//! Boundary: providers know nothing about sessions, turns or WebSockets. They take plain data
//! (audio, chat messages, text) and return results or streams. The session's IO driver tags what
//! they produce with turn ids and feeds it to the core.
//!
//! Cancellation: every call is cancelled by dropping it. A streaming call returns a `Stream`;
//! dropping the stream stops the work at once (no task keeps running behind it).
//!
//! Speech to text comes in two shapes: `Asr` transcribes a whole utterance after it ended;
//! `StreamingAsr` takes the audio while the user speaks and reports words as they are recognised,
//! so the transcript is ready moments after the end of speech.

pub mod espeak;
pub mod http;
pub mod mock;
pub mod openai;
mod pcm;
mod proxy;
pub mod stream_asr;
pub mod tools;

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use futures_util::stream::{BoxStream, FusedStream, Stream};
use voxd_core::{ChatMessage, SampleRate, ToolCall};

pub use tools::{Tool, ToolRegistry, ToolSpec};

/// A failure of a provider call. `Display` is safe to show to a client: it never carries secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The provider answered with an error.
    #[error("{provider} failed: {message}")]
    Failed {
        /// The provider's name (e.g. "mock").
        provider: String,
        /// What went wrong.
        message: String,
    },
    /// The provider did not answer in time.
    #[error("{provider} timed out after {after_ms} ms")]
    Timeout {
        /// The provider's name.
        provider: String,
        /// How long voxd waited.
        after_ms: u64,
    },
    /// The request itself was unusable (e.g. an unknown tool or malformed arguments).
    #[error("invalid request to {provider}: {message}")]
    InvalidRequest {
        /// The provider's name.
        provider: String,
        /// What was wrong with the request.
        message: String,
    },
}

/// A failure to build a provider from its configuration.
///
/// A provider knows its own config table, not where the caller keeps it: the `key` of an
/// `Invalid` error a provider returns is relative to that table (`api_key_env`, `rules[0]`,
/// `check_balance.failure_rate` for the tool registry), or empty for the table as a whole. The
/// caller, which knows the table's path in its config file, places the key there before showing
/// the error, e.g. with `in_table("llm.openai")`.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A file the provider needs could not be read.
    #[error("{what} {path}: {source}")]
    Io {
        /// What the file is for.
        what: &'static str,
        /// The path that failed.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The configuration is inconsistent.
    #[error("{}{message}", key_prefix(.key))]
    Invalid {
        /// The config key at fault. From a provider: relative to its own table (e.g. `rules[0]`
        /// in `[llm.mock]`), empty for the table itself.
        key: String,
        /// What is expected instead.
        message: String,
    },
}

/// `"key: "`, or nothing for an empty key.
fn key_prefix(key: &str) -> String {
    if key.is_empty() {
        String::new()
    } else {
        format!("{key}: ")
    }
}

impl BuildError {
    /// Places a provider's key under the path of its config table: `api_key_env` in `llm.openai`
    /// becomes `llm.openai.api_key_env`, `rules[0]` in `llm.mock` becomes `llm.mock.rules[0]`,
    /// and an empty key becomes `llm.openai`. An `Io` error names a file and is returned as is.
    #[must_use]
    pub fn in_table(self, table: &str) -> BuildError {
        match self {
            BuildError::Invalid { key, message } => BuildError::Invalid {
                key: match (table.is_empty(), key.is_empty()) {
                    (true, _) => key,
                    (false, true) => table.to_owned(),
                    (false, false) => format!("{table}.{key}"),
                },
                message,
            },
            io @ BuildError::Io { .. } => io,
        }
    }
}

/// The result of transcribing one utterance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transcript {
    /// The recognised text, trimmed; empty when nothing was said.
    pub text: String,
}

/// Speech to text for whole utterances.
#[async_trait]
pub trait Asr: Send + Sync + 'static {
    /// The provider's name, for logs, metrics and error codes.
    fn name(&self) -> &str;

    /// Transcribes one utterance of 16 kHz mono PCM16 (`SampleRate::INTERNAL`).
    ///
    /// # Errors
    /// A `ProviderError` when the provider fails or times out.
    async fn transcribe(&self, audio: Arc<[i16]>) -> Result<Transcript, ProviderError>;

    /// As `transcribe`, in `language` (a code such as `en` or `fr-CA`) instead of the
    /// provider's configured one, when given. A provider without a language setting ignores it.
    ///
    /// # Errors
    /// As `transcribe`.
    async fn transcribe_in(
        &self,
        audio: Arc<[i16]>,
        language: Option<&str>,
    ) -> Result<Transcript, ProviderError> {
        let _ = language;
        self.transcribe(audio).await
    }
}

/// What a recognition stream reports while it hears an utterance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AsrUpdate {
    /// A provisional hypothesis: later updates replace it. Useful to show the user what is heard
    /// or to judge an interruption early; never to act on as the user's words.
    Interim {
        /// The utterance as currently heard: the final segments so far, then the provisional
        /// words of the segment in progress, joined by single spaces.
        text: String,
    },
    /// A segment of the utterance became final: it will not change any more.
    Final {
        /// This segment's text; empty only for an endpoint with no new words.
        segment: String,
        /// Every final segment since the stream opened, joined by single spaces.
        text: String,
        /// The provider heard the speaker pause after this segment (its own endpointing). A hint:
        /// the utterance ends when the driver calls `AsrStream::finalize`.
        speech_final: bool,
    },
    /// The answer to `AsrStream::finalize`: the utterance's whole transcript (every final segment,
    /// joined by single spaces, trimmed). Always the stream's last item.
    Finalized(Transcript),
}

/// The provider side of an `AsrStream`: what a `StreamingAsr` implements for one open stream.
/// Drivers use `AsrStream`, which wraps it and enforces the end of the stream.
///
/// Implementations do their IO only inside `poll_update` (or in one task of their own that ends
/// when the value is dropped); `push` and `finalize` queue and return at once.
pub trait RecognitionStream: Send + 'static {
    /// Queues 16 kHz mono PCM16 audio to be sent. Never waits.
    ///
    /// # Errors
    /// The stream's failure once it failed (the same error `poll_update` yields), or
    /// `ProviderError::InvalidRequest` for audio after `finalize`.
    fn push(&mut self, audio: &[i16]) -> Result<(), ProviderError>;

    /// Asks for the utterance's final transcript; `poll_update` answers with
    /// `AsrUpdate::Finalized` or an error. Never waits; calling it again does nothing.
    ///
    /// # Errors
    /// The stream's failure once it failed.
    fn finalize(&mut self) -> Result<(), ProviderError>;

    /// Does the stream's IO and returns its next update. After `Finalized`, an error or `None`,
    /// the caller polls no more.
    fn poll_update(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<AsrUpdate, ProviderError>>>;
}

/// One open recognition stream: one utterance's audio in, `AsrUpdate`s out.
///
/// Invariants, for every provider:
/// - **One utterance.** The transcript is everything recognised since the stream opened; after
///   `Finalized` the stream is over. Open a new stream for the next utterance.
/// - **`push` never waits.** Audio is queued and written whenever the stream is polled. The queue
///   is bounded by the provider's backlog limit: when the provider or the network is slower than
///   real time for longer than that, the stream fails (a transcript with holes in it would be
///   wrong, not late).
/// - **Progress needs polling.** Sending audio, keep-alives, reading results and timeouts all
///   happen while the stream is polled, so a driver keeps `next()` in its `select!` for the
///   stream's whole life, including while it waits idle for speech.
/// - **Every failure is reported once,** as the stream's `Err` item, after which it yields `None`;
///   `push` and `finalize` return the same error from then on, so their errors need no handling
///   beyond no longer pushing.
/// - **Dropping cancels.** It closes the provider's connection at once; no task survives it.
pub struct AsrStream {
    inner: Box<dyn RecognitionStream>,
    ended: bool,
}

impl AsrStream {
    /// Wraps a provider's stream.
    pub fn new(inner: impl RecognitionStream) -> AsrStream {
        AsrStream {
            inner: Box::new(inner),
            ended: false,
        }
    }

    /// Queues 20 ms (or any length) of 16 kHz mono PCM16 audio. Never waits.
    ///
    /// # Errors
    /// The stream's failure once it failed (it is also yielded by the stream, once), or
    /// `ProviderError::InvalidRequest` for audio after `finalize`.
    pub fn push(&mut self, audio: &[i16]) -> Result<(), ProviderError> {
        self.inner.push(audio)
    }

    /// Ends the utterance: the stream answers with `AsrUpdate::Finalized`, or with an error
    /// within the provider's finalize timeout. Never waits; calling it again does nothing.
    ///
    /// # Errors
    /// The stream's failure once it failed.
    pub fn finalize(&mut self) -> Result<(), ProviderError> {
        self.inner.finalize()
    }
}

impl Stream for AsrStream {
    type Item = Result<AsrUpdate, ProviderError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.ended {
            return Poll::Ready(None);
        }
        let item = std::task::ready!(this.inner.poll_update(cx));
        // Fused here, whatever the provider does after its last item.
        this.ended = matches!(item, None | Some(Err(_) | Ok(AsrUpdate::Finalized(_))));
        Poll::Ready(item)
    }
}

impl FusedStream for AsrStream {
    fn is_terminated(&self) -> bool {
        self.ended
    }
}

impl fmt::Debug for AsrStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AsrStream")
            .field("ended", &self.ended)
            .finish_non_exhaustive()
    }
}

/// Speech to text while the user speaks. Object-safe: drivers hold an `Arc<dyn StreamingAsr>`.
///
/// One stream serves one utterance. A driver may open the next stream before the user speaks
/// (at session start and after each utterance) so that no connect time is spent at speech start;
/// the provider keeps an idle stream alive with keep-alives as long as it is polled.
pub trait StreamingAsr: Send + Sync + 'static {
    /// The provider's name, for logs, metrics and error codes.
    fn name(&self) -> &str;

    /// Opens one recognition stream. The future resolves once the provider accepted the stream
    /// (or the connect timeout passed); dropping it abandons the connect.
    fn open(&self) -> BoxFuture<'static, Result<AsrStream, ProviderError>>;

    /// As `open`, in `language` instead of the provider's configured one, when given.
    fn open_in(
        &self,
        language: Option<&str>,
    ) -> BoxFuture<'static, Result<AsrStream, ProviderError>> {
        let _ = language;
        self.open()
    }
}

/// A request to the language model: the conversation so far and the tools it may call.
#[derive(Debug, Clone)]
pub struct LlmRequest {
    /// The conversation, system prompt first.
    pub messages: Vec<ChatMessage>,
    /// The tools the model may call.
    pub tools: Vec<ToolSpec>,
}

/// One item of an LLM's streamed reply. The stream ending means the reply is complete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LlmEvent {
    /// A piece of the reply's text.
    Token(String),
    /// A complete tool call (the provider assembles streamed deltas before yielding it).
    ToolCall(ToolCall),
}

/// A streaming language model.
pub trait Llm: Send + Sync + 'static {
    /// The provider's name, for logs, metrics and error codes.
    fn name(&self) -> &str;

    /// Starts generating a reply. Dropping the stream cancels the generation.
    fn stream(&self, request: LlmRequest) -> BoxStream<'static, Result<LlmEvent, ProviderError>>;
}

/// A streaming text-to-speech voice.
pub trait Tts: Send + Sync + 'static {
    /// The provider's name, for logs, metrics and error codes.
    fn name(&self) -> &str;

    /// Synthesizes `text` as mono PCM16 chunks at `rate`, in order. The stream ending means the
    /// sentence is complete. Dropping the stream cancels the synthesis.
    fn synthesize(
        &self,
        text: String,
        rate: SampleRate,
    ) -> BoxStream<'static, Result<Vec<i16>, ProviderError>>;

    /// As `synthesize`, with `voice` instead of the configured voice, when given. A provider
    /// with a single voice ignores it.
    fn synthesize_as(
        &self,
        text: String,
        rate: SampleRate,
        voice: Option<&str>,
    ) -> BoxStream<'static, Result<Vec<i16>, ProviderError>> {
        let _ = voice;
        self.synthesize(text, rate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(key: &str) -> BuildError {
        BuildError::Invalid {
            key: key.to_owned(),
            message: "expected something else".to_owned(),
        }
    }

    #[test]
    fn a_key_is_placed_under_its_table() {
        let shown = |e: BuildError| e.to_string();
        assert_eq!(
            shown(invalid("api_key_env")),
            "api_key_env: expected something else"
        );
        assert_eq!(shown(invalid("")), "expected something else");
        assert_eq!(
            shown(invalid("api_key_env").in_table("llm.openai")),
            "llm.openai.api_key_env: expected something else"
        );
        assert_eq!(
            shown(invalid("rules[0]").in_table("llm.mock")),
            "llm.mock.rules[0]: expected something else"
        );
        assert_eq!(
            shown(invalid("").in_table("tts.espeak")),
            "tts.espeak: expected something else"
        );
        assert_eq!(
            shown(invalid("failure_rate").in_table("")),
            "failure_rate: expected something else"
        );
        let io = BuildError::Io {
            what: "cannot read",
            path: "k".to_owned(),
            source: std::io::ErrorKind::NotFound.into(),
        };
        assert_eq!(
            shown(io.in_table("llm.openai")),
            "cannot read k: entity not found"
        );
    }
}
