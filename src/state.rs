//! What every request handler and session shares: the validated config, the providers, the
//! session registry and task tracker, the metrics, the auth verifier and the quotas.
//!
//! Built once at start-up (`AppState::new`) and shared as an `Arc`. It sits above the parts it
//! holds and below everything that uses it: the accept loop, the session driver and the HTTP
//! handlers.

use std::sync::Arc;

use tokio_util::task::TaskTracker;

use crate::access::{Auth, Quotas};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::providers::Providers;
use crate::registry::SessionManager;

/// What every request handler and session shares.
pub struct AppState {
    /// The validated configuration.
    pub config: Config,
    /// The providers.
    pub providers: Providers,
    /// The session registry.
    pub sessions: Arc<SessionManager>,
    /// Tracks every session task, so shutdown can wait for them (axum does not).
    pub tracker: TaskTracker,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// The API key and token verifier.
    pub(crate) auth: Auth,
    /// Per-IP and per-key admission quotas.
    pub quotas: Arc<Quotas>,
}

impl AppState {
    /// State for `config`, with its providers built and its MCP servers connected.
    ///
    /// # Errors
    /// When a provider cannot be built from its configuration, or an MCP server reached.
    pub async fn new(config: Config) -> Result<Arc<AppState>, voxd_backends::BuildError> {
        let providers = Providers::connect(&config).await?;
        AppState::with_providers(config, providers)
    }

    /// State for `config` with `providers` built by the caller: an embedding program (or a test)
    /// that brings a provider of its own.
    ///
    /// # Errors
    /// When the quotas in `config` are invalid.
    pub fn with_providers(
        mut config: Config,
        providers: Providers,
    ) -> Result<Arc<AppState>, voxd_backends::BuildError> {
        // Sessions stream their utterances to the ASR exactly when it can stream.
        config.session.streaming_asr = providers.streaming_asr.is_some();
        // A client-side tool may not take the name of one of these.
        config.session.server_tools = providers
            .tool_specs
            .iter()
            .map(|t| t.name.clone())
            .collect();
        // The Silero model loads once per process, here, so a defect shows at start-up and the
        // first caller does not pay the 12-45 ms of loading.
        let silero = config
            .session
            .vad
            .as_ref()
            .is_none_or(|v| matches!(v.engine, voxd_core::vad::Engine::Silero { .. }));
        if silero {
            voxd_core::vad::silero::load().map_err(|e| voxd_backends::BuildError::Invalid {
                key: "vad.engine".into(),
                message: e.to_string(),
            })?;
        }
        let quotas = Quotas::from_config(&config.quotas);
        let metrics = Metrics::new();
        metrics.sessions_max.set(config.server.max_sessions as f64);
        Ok(Arc::new(AppState {
            auth: Auth::new(&config.auth),
            quotas: Arc::new(quotas),
            sessions: SessionManager::new(config.server.max_sessions),
            config,
            providers,
            tracker: TaskTracker::new(),
            metrics,
        }))
    }

    /// Ends the drain's lame-duck grace (`server.drain_grace_s`) now: admission closes and the
    /// live sessions are told to finish. Called before shutdown begins, the grace is skipped.
    /// `voxd serve` calls it on a second SIGTERM or SIGINT.
    pub fn end_drain_grace(&self) {
        self.sessions.end_grace();
    }
}
