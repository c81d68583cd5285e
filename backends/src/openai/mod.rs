//! Providers for OpenAI's HTTP API and the many servers that speak it: llama.cpp's server, Ollama,
//! vLLM and LM Studio for chat; whisper.cpp's server and faster-whisper servers for speech to text;
//! Kokoro-FastAPI and openedai-speech for speech. Point `base_url` at any of them. Each provider
//! keeps one pooled HTTP client for its lifetime; the API key is optional, since local servers need
//! none.
//!
//! `sse` parses the server-sent events the streaming chat endpoint answers with.

mod asr;
mod llm;
mod sse;
mod tts;

pub use asr::{OpenAiAsr, OpenAiAsrConfig};
pub use llm::{OpenAiLlm, OpenAiLlmConfig};
pub use tts::{OpenAiTts, OpenAiTtsConfig};
