//! voxd's providers: the traits every speech-to-text (`Asr`), language model (`Llm`), text-to-speech
//! (`Tts`) and tool (`Tool`) implementation satisfies, and the implementations themselves.
//!
//! Boundary: providers know nothing about sessions, turns or WebSockets. They take plain data
//! (audio, chat messages, text) and return results or streams. The session's IO driver tags what
//! they produce with turn ids and feeds it to the core.
//!
//! Cancellation: every call is cancelled by dropping it. A streaming call returns a `Stream`;
//! dropping the stream stops the work at once (no task keeps running behind it).

pub mod espeak;
pub mod http;
pub mod mock;
pub mod openai;
mod pcm;
pub mod tools;

use std::sync::Arc;

use async_trait::async_trait;
use futures_util::stream::BoxStream;
use voxd_core::{ChatMessage, SampleRate, ToolCall};

pub use tools::{Tool, ToolRegistry, ToolSpec};

/// A failure of a provider call. `Display` is safe to show to a client: it never carries secrets.
#[derive(Debug, Clone, thiserror::Error)]
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
    #[error("{key}: {message}")]
    Invalid {
        /// The config key at fault, e.g. `asr.mock.rules`.
        key: String,
        /// What is expected instead.
        message: String,
    },
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
}
