//! voxd: a streaming voice-bot orchestration server.
//!
//! A voice front-end streams microphone audio over a WebSocket (`/ws`); voxd detects speech, runs
//! the per-connection turn-taking state machine (`voxd_core`), pipes each utterance through the
//! providers (`voxd_backends`: ASR → LLM → TTS) and streams the spoken answer back, paced at real
//! time. This crate is the only one that knows HTTP, WebSockets and JSON framing.
//!
//! The public surface is small: build a [`Config`], an [`AppState`] from it (or from it and
//! [`providers::Providers`] of your own), and [`serve`] it. [`wire`] is the `/ws` codec (for the
//! benchmarks). The modules are laid out by concern, each importing only those below it
//! (ARCHITECTURE.md, "Code map"):
//! `config`, `metrics`, `wire` → `providers`, `access`, `registry` → `state` → `transport` →
//! `session` → `http` → this file.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

mod access;
mod config;
#[cfg(test)]
mod fuzz_corpus;
mod http;
mod metrics;
pub mod providers;
mod registry;
mod session;
mod state;
mod transport;
pub mod wire;

pub use config::{Config, ConfigError, Overrides};
pub use state::AppState;

/// Serves `state` on `listener`: the HTTP routes (`/ws`, `/v1/transcribe`, `/v1/tokens`,
/// `/metrics`, the health probes) on voxd's own accept loop, until `shutdown` completes. Then it
/// drains: `/health/ready` turns 503 at once, while new sessions are still admitted and served
/// for `server.drain_grace_s` (or until [`AppState::end_drain_grace`]). Then new sessions are
/// refused, and every live session is told (`shutdown`), finishes the response in progress and
/// closes with 1001. Sessions still open `drain_timeout` after the grace are closed; then the
/// listener stops, and HTTP requests in flight get up to one more `drain_timeout` to finish.
///
/// # Errors
/// When the listener fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain_timeout: Duration,
) -> std::io::Result<()> {
    let app = http::router(Arc::clone(&state));
    transport::serve(listener, state, app, shutdown, drain_timeout).await
}

/// The fuzz targets' bodies, one function per target, for the cargo-fuzz project in `fuzz/`. Each
/// lives beside what it fuzzes, with the tests that replay its corpus on stable: `client_message`
/// in `wire`, `wav` in `http`'s transcribe, `session` in `voxd_core::fuzzing` (with this crate's
/// `fuzzing` feature). See docs/fuzzing.md.
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::http::wav;
    pub use crate::wire::client_message;
    #[cfg(feature = "fuzzing")]
    pub use voxd_core::fuzzing::session;
}
