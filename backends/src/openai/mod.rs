//! Providers for OpenAI's HTTP API and the many servers that speak it (llama.cpp's server,
//! Ollama, vLLM, LM Studio, ...).
//!
//! `sse` parses the server-sent events their streaming endpoints answer with; `llm` streams chat
//! completions with it.

mod llm;
mod sse;

pub use llm::{OpenAiLlm, OpenAiLlmConfig};
