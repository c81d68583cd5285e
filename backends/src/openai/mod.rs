//! Providers for OpenAI's HTTP API and the many servers that copy it (whisper.cpp's server,
//! faster-whisper servers, Kokoro-FastAPI, openedai-speech, ...): point `base_url` at any of them.
//! Each keeps one pooled HTTP client for its lifetime; the API key is optional, since local
//! servers need none.

mod asr;
mod tts;

pub use asr::{OpenAiAsr, OpenAiAsrConfig};
pub use tts::{OpenAiTts, OpenAiTtsConfig};
