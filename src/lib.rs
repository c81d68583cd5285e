//! voxd: a streaming voice-bot orchestration server.
//!
//! A voice front-end streams microphone audio over a WebSocket (`/ws`); voxd detects speech, runs
//! the per-connection turn-taking state machine (`voxd_core`), pipes each utterance through the
//! providers (`voxd_backends`: ASR → LLM → TTS) and streams the spoken answer back, paced at real
//! time. This crate is the only one that knows HTTP, WebSockets and JSON framing.

pub mod app;
pub mod auth;
pub mod config;
pub mod connection;
pub mod fallback;
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod limits;
pub mod metrics;
pub mod protocol;
pub mod providers;
pub mod quotas;
pub mod sessions;
pub mod transcribe;
pub mod ws;
