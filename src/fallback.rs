//! Fallback chains with circuit breakers: each stage (ASR, LLM, TTS) lists providers in order, and a
//! request that fails or times out on one moves to the next.
//!
//! Rules (ARCHITECTURE.md, "Provider faults"):
//! - A provider may be switched only before it produced anything. Once an LLM token or a TTS chunk
//!   reached the session, a later failure fails the turn: a second provider would restart the
//!   answer and the user would hear a splice of two.
//! - Each attempt gets the stage's full deadline (`[timeouts]`), so with two providers the worst case
//!   is twice the deadline. The breaker is what keeps that worst case rare.
//! - A breaker opens after `failure_threshold` consecutive failures and skips its provider for
//!   `cooldown_ms`. Then one request may probe it (half-open): success closes the breaker, failure
//!   opens it again. When every provider of a stage is open, the one whose cool-down ends first is
//!   probed anyway, so a stage never fails without trying and recovers on its own.
//! - No lock: the breaker is three atomics, read once per request.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::{Stream, StreamExt};
use serde::Serialize;
use tokio::time::Instant;
use tracing::warn;
use voxd_backends::{Asr, Llm, ProviderError, Tts};
use voxd_core::{ProviderFailure, Stage};

use crate::metrics::Metrics;

/// Anything with a provider name.
pub trait Named: Send + Sync + 'static {
    /// The provider's name.
    fn provider_name(&self) -> &str;
}

impl Named for dyn Asr {
    fn provider_name(&self) -> &str {
        self.name()
    }
}
impl Named for dyn Llm {
    fn provider_name(&self) -> &str {
        self.name()
    }
}
impl Named for dyn Tts {
    fn provider_name(&self) -> &str {
        self.name()
    }
}

/// When a breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the breaker (0 disables it).
    pub failure_threshold: u32,
    /// How long an open breaker skips its provider.
    pub cooldown: Duration,
}

/// A breaker's state, as `/health/ready` and the metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Requests go through.
    Closed,
    /// Requests skip the provider until the cool-down ends.
    Open,
    /// The cool-down ended: the next request probes the provider.
    HalfOpen,
}

struct Breaker {
    consecutive: AtomicU32,
    /// Milliseconds since the chain's epoch when the breaker may be probed; 0 means closed.
    open_until: AtomicU64,
    /// A half-open probe is in flight.
    probing: AtomicBool,
}

struct Link<P: ?Sized> {
    provider: Arc<P>,
    breaker: Breaker,
}

/// One stage's providers, in order of preference.
pub struct Chain<P: ?Sized> {
    stage: Stage,
    links: Box<[Link<P>]>,
    config: BreakerConfig,
    epoch: Instant,
}

/// One provider's status in `/health/ready`.
#[derive(Debug, Clone, Serialize)]
pub struct LinkStatus {
    /// The provider's name.
    pub provider: String,
    /// Its breaker.
    pub state: BreakerState,
    /// Consecutive failures so far.
    pub consecutive_failures: u32,
}

impl<P: ?Sized + Named> Chain<P> {
    /// A chain over `providers` (at least one), first preferred.
    ///
    /// # Panics
    /// When `providers` is empty (config validation rejects that before).
    pub fn new(stage: Stage, providers: Vec<Arc<P>>, config: BreakerConfig) -> Self {
        assert!(!providers.is_empty(), "a chain needs a provider");
        let links = providers
            .into_iter()
            .map(|provider| Link {
                provider,
                breaker: Breaker {
                    consecutive: AtomicU32::new(0),
                    open_until: AtomicU64::new(0),
                    probing: AtomicBool::new(false),
                },
            })
            .collect();
        Chain {
            stage,
            links,
            config,
            epoch: Instant::now(),
        }
    }

    /// The preferred provider (for names in logs).
    pub fn primary(&self) -> &Arc<P> {
        &self.links[0].provider
    }

    /// The stage this chain serves.
    pub fn stage(&self) -> Stage {
        self.stage
    }

    fn now_ms(&self) -> u64 {
        // +1 so that 0 keeps meaning "closed" even at the epoch itself.
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    fn state(&self, i: usize, now: u64) -> BreakerState {
        let until = self.links[i].breaker.open_until.load(Ordering::Acquire);
        if until == 0 {
            BreakerState::Closed
        } else if now < until {
            BreakerState::Open
        } else {
            BreakerState::HalfOpen
        }
    }

    /// Whether a request may use link `i` now; claims the probe of a half-open breaker.
    fn admits(&self, i: usize, now: u64) -> bool {
        match self.state(i, now) {
            BreakerState::Closed => true,
            BreakerState::Open => false,
            BreakerState::HalfOpen => self.links[i]
                .breaker
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok(),
        }
    }

    /// The first link at or after `from` that a request may use. When `from` is 0 and every breaker
    /// is open, the one whose cool-down ends first.
    fn candidate(&self, from: usize) -> Option<usize> {
        let now = self.now_ms();
        if let Some(i) = (from..self.links.len()).find(|&i| self.admits(i, now)) {
            return Some(i);
        }
        if from > 0 {
            return None;
        }
        (0..self.links.len())
            .min_by_key(|&i| self.links[i].breaker.open_until.load(Ordering::Acquire))
    }

    /// Records that link `i` answered.
    pub fn succeeded(&self, i: usize, metrics: &Metrics) {
        let b = &self.links[i].breaker;
        b.consecutive.store(0, Ordering::Release);
        b.probing.store(false, Ordering::Release);
        if b.open_until.swap(0, Ordering::AcqRel) != 0 {
            metrics.circuit(self.stage, self.links[i].provider.provider_name(), false);
            tracing::info!(
                stage = self.stage.as_str(),
                provider = self.links[i].provider.provider_name(),
                "provider recovered: circuit closed"
            );
        }
    }

    /// Records that link `i` failed (also counted in `voxd_provider_errors_total`).
    pub fn failed(&self, i: usize, metrics: &Metrics) {
        let name = self.links[i].provider.provider_name();
        metrics.provider_error(self.stage, name);
        let b = &self.links[i].breaker;
        let n = b.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        let threshold = self.config.failure_threshold;
        let was_probe = b.probing.swap(false, Ordering::AcqRel);
        if threshold > 0 && (n >= threshold || was_probe) {
            let until = self.now_ms() + self.config.cooldown.as_millis() as u64;
            if b.open_until.swap(until, Ordering::AcqRel) == 0 {
                metrics.circuit(self.stage, name, true);
                warn!(
                    stage = self.stage.as_str(),
                    provider = name,
                    failures = n,
                    cooldown_ms = self.config.cooldown.as_millis() as u64,
                    "circuit opened: skipping the provider"
                );
            }
        }
    }

    /// Every provider's breaker, for `/health/ready`.
    pub fn status(&self) -> Vec<LinkStatus> {
        let now = self.now_ms();
        (0..self.links.len())
            .map(|i| LinkStatus {
                provider: self.links[i].provider.provider_name().to_owned(),
                state: self.state(i, now),
                consecutive_failures: self.links[i].breaker.consecutive.load(Ordering::Acquire),
            })
            .collect()
    }

    /// Whether some provider would take a request now (closed or due for a probe).
    pub fn available(&self) -> bool {
        let now = self.now_ms();
        (0..self.links.len()).any(|i| self.state(i, now) != BreakerState::Open)
    }

    fn moving_on(&self, i: usize, next: Option<usize>, why: &ProviderFailure, metrics: &Metrics) {
        let from = self.links[i].provider.provider_name();
        if let Some(j) = next {
            let to = self.links[j].provider.provider_name();
            metrics.fallback(self.stage, from, to);
            warn!(stage = self.stage.as_str(), from, to, error = %why.message, "provider failed: falling back");
        }
    }

    /// Runs `call` on each usable provider in turn, each under `limit`, until one answers.
    ///
    /// # Errors
    /// The last provider's failure when all failed.
    pub async fn call<T, F, Fut>(
        &self,
        metrics: &Metrics,
        limit: Duration,
        what: &str,
        call: F,
    ) -> Result<T, ProviderFailure>
    where
        F: Fn(Arc<P>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ProviderError>>,
    {
        let mut at = self.candidate(0);
        let mut last = None;
        while let Some(i) = at {
            let provider = Arc::clone(&self.links[i].provider);
            let why = match tokio::time::timeout(limit, call(provider)).await {
                Ok(Ok(v)) => {
                    self.succeeded(i, metrics);
                    return Ok(v);
                }
                Ok(Err(e)) => failure(e),
                Err(_) => timed_out(self.links[i].provider.provider_name(), what, limit),
            };
            self.failed(i, metrics);
            at = self.candidate(i + 1);
            self.moving_on(i, at, &why, metrics);
            last = Some(why);
        }
        Err(last.expect("a chain has at least one provider"))
    }

    /// Opens a stream on each usable provider in turn until one yields its first item within
    /// `first`. Returns the provider's index (for `succeeded`/`failed` later), the stream and its
    /// first item (`None`: the stream ended empty, which is an answer too).
    ///
    /// # Errors
    /// The last provider's failure when all failed.
    pub async fn open<S, T, F>(
        &self,
        metrics: &Metrics,
        first: Duration,
        what: &str,
        start: F,
    ) -> Result<(usize, S, Option<T>), ProviderFailure>
    where
        F: Fn(&P) -> S,
        S: Stream<Item = Result<T, ProviderError>> + Unpin,
    {
        let mut at = self.candidate(0);
        let mut last = None;
        while let Some(i) = at {
            let mut stream = start(&self.links[i].provider);
            let why = match tokio::time::timeout(first, stream.next()).await {
                Ok(Some(Ok(item))) => {
                    self.succeeded(i, metrics);
                    return Ok((i, stream, Some(item)));
                }
                Ok(None) => {
                    self.succeeded(i, metrics);
                    return Ok((i, stream, None));
                }
                Ok(Some(Err(e))) => failure(e),
                Err(_) => timed_out(self.links[i].provider.provider_name(), what, first),
            };
            drop(stream);
            self.failed(i, metrics);
            at = self.candidate(i + 1);
            self.moving_on(i, at, &why, metrics);
            last = Some(why);
        }
        Err(last.expect("a chain has at least one provider"))
    }

    /// The name of link `i`.
    pub fn name(&self, i: usize) -> &str {
        self.links[i].provider.provider_name()
    }
}

/// A provider error as the core reports it.
pub fn failure(e: ProviderError) -> ProviderFailure {
    let provider = match &e {
        ProviderError::Failed { provider, .. }
        | ProviderError::Timeout { provider, .. }
        | ProviderError::InvalidRequest { provider, .. } => provider.clone(),
    };
    ProviderFailure {
        timed_out: matches!(e, ProviderError::Timeout { .. }),
        provider,
        message: e.to_string(),
    }
}

/// The failure of a provider that did not answer within `after`.
pub fn timed_out(provider: &str, what: &str, after: Duration) -> ProviderFailure {
    ProviderFailure {
        provider: provider.to_owned(),
        message: format!("{provider}: {what} within {} ms", after.as_millis()),
        timed_out: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use std::sync::atomic::AtomicUsize;
    use voxd_backends::Transcript;

    /// An ASR that fails while `failing` is set and counts its calls.
    struct Flaky {
        name: &'static str,
        failing: AtomicBool,
        calls: AtomicUsize,
    }

    #[async_trait]
    impl Asr for Flaky {
        fn name(&self) -> &str {
            self.name
        }
        async fn transcribe(&self, _: Arc<[i16]>) -> Result<Transcript, ProviderError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.failing.load(Ordering::SeqCst) {
                Err(ProviderError::Failed {
                    provider: self.name.into(),
                    message: "down".into(),
                })
            } else {
                Ok(Transcript {
                    text: self.name.into(),
                })
            }
        }
    }

    fn flaky(name: &'static str, failing: bool) -> Arc<Flaky> {
        Arc::new(Flaky {
            name,
            failing: AtomicBool::new(failing),
            calls: AtomicUsize::new(0),
        })
    }

    fn chain(a: &Arc<Flaky>, b: &Arc<Flaky>) -> Chain<dyn Asr> {
        let providers: Vec<Arc<dyn Asr>> = vec![a.clone(), b.clone()];
        Chain::new(
            Stage::Asr,
            providers,
            BreakerConfig {
                failure_threshold: 2,
                cooldown: Duration::from_secs(10),
            },
        )
    }

    async fn ask(c: &Chain<dyn Asr>, m: &Metrics) -> Result<String, ProviderFailure> {
        c.call(m, Duration::from_secs(1), "no transcript", |p| async move {
            p.transcribe(Arc::from(&[][..])).await.map(|t| t.text)
        })
        .await
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_moves_to_the_next_provider_and_the_breaker_skips_a_dead_one() {
        let (a, b) = (flaky("a", true), flaky("b", false));
        let c = chain(&a, &b);
        let m = Metrics::new();
        assert_eq!(ask(&c, &m).await.unwrap(), "b");
        assert_eq!(ask(&c, &m).await.unwrap(), "b");
        assert_eq!(a.calls.load(Ordering::SeqCst), 2);
        assert_eq!(c.status()[0].state, BreakerState::Open);
        // Open: `a` is skipped.
        assert_eq!(ask(&c, &m).await.unwrap(), "b");
        assert_eq!(a.calls.load(Ordering::SeqCst), 2);
        let text = m.render();
        assert!(
            text.contains("voxd_provider_fallbacks_total{stage=\"asr\",from=\"a\",to=\"b\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("voxd_provider_circuit_open{stage=\"asr\",provider=\"a\"} 1"),
            "{text}"
        );

        // After the cool-down one request probes `a`; it has recovered, so the breaker closes.
        a.failing.store(false, Ordering::SeqCst);
        tokio::time::advance(Duration::from_secs(11)).await;
        assert_eq!(c.status()[0].state, BreakerState::HalfOpen);
        assert_eq!(ask(&c, &m).await.unwrap(), "a");
        assert_eq!(c.status()[0].state, BreakerState::Closed);
        assert!(m
            .render()
            .contains("voxd_provider_circuit_open{stage=\"asr\",provider=\"a\"} 0"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_reopens_and_an_all_open_stage_still_tries() {
        let (a, b) = (flaky("a", true), flaky("b", true));
        let c = chain(&a, &b);
        let m = Metrics::new();
        for _ in 0..2 {
            let e = ask(&c, &m).await.unwrap_err();
            assert_eq!(e.provider, "b", "the last provider's failure is reported");
        }
        assert!(!c.available());
        // Both open: the stage still tries one provider rather than failing untried.
        let before = a.calls.load(Ordering::SeqCst) + b.calls.load(Ordering::SeqCst);
        assert!(ask(&c, &m).await.is_err());
        assert_eq!(
            a.calls.load(Ordering::SeqCst) + b.calls.load(Ordering::SeqCst),
            before + 1
        );
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(c.available());
        // The probe fails: open again at once, without waiting for the threshold.
        assert!(ask(&c, &m).await.is_err());
        assert_eq!(c.status()[0].state, BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_that_fails_before_its_first_item_falls_back_and_a_slow_one_times_out() {
        use futures_util::stream::{self, BoxStream};
        struct Voice {
            name: &'static str,
            mode: u8,
        }
        impl Tts for Voice {
            fn name(&self) -> &str {
                self.name
            }
            fn synthesize(
                &self,
                _: String,
                _: voxd_core::SampleRate,
            ) -> BoxStream<'static, Result<Vec<i16>, ProviderError>> {
                match self.mode {
                    0 => stream::iter([Ok(vec![1i16]), Ok(vec![2])]).boxed(),
                    1 => stream::iter([Err(ProviderError::Failed {
                        provider: self.name.into(),
                        message: "boom".into(),
                    })])
                    .boxed(),
                    _ => stream::pending().boxed(),
                }
            }
        }
        let providers: Vec<Arc<dyn Tts>> = vec![
            Arc::new(Voice {
                name: "hangs",
                mode: 2,
            }),
            Arc::new(Voice {
                name: "fails",
                mode: 1,
            }),
            Arc::new(Voice {
                name: "works",
                mode: 0,
            }),
        ];
        let c = Chain::new(
            Stage::Tts,
            providers,
            BreakerConfig {
                failure_threshold: 3,
                cooldown: Duration::from_secs(1),
            },
        );
        let m = Metrics::new();
        let (i, mut rest, first) = c
            .open(&m, Duration::from_millis(500), "no audio", |p| {
                p.synthesize("hi".into(), voxd_core::SampleRate::INTERNAL)
            })
            .await
            .unwrap();
        assert_eq!((c.name(i), first), ("works", Some(vec![1])));
        assert_eq!(rest.next().await.unwrap().unwrap(), vec![2]);
        let text = m.render();
        assert!(text.contains("from=\"hangs\",to=\"fails\"} 1"), "{text}");
        assert!(text.contains("from=\"fails\",to=\"works\"} 1"), "{text}");
    }
}
