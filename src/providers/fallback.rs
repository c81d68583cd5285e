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

    /// How many providers the chain has.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Whether the chain has no provider (never: `new` needs one).
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
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

    /// Whether a request may use link `i` now, and whether it claimed the probe of a half-open
    /// breaker (`Some(true)`).
    fn admits(&self, i: usize, now: u64) -> Option<bool> {
        match self.state(i, now) {
            BreakerState::Closed => Some(false),
            BreakerState::Open => None,
            BreakerState::HalfOpen => self.links[i]
                .breaker
                .probing
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
                .then_some(true),
        }
    }

    /// The first link at or after `from` that a request may use, as an attempt. With
    /// `last_resort` (a request's first attempt), when none is usable, the link whose cool-down
    /// ends first: a request is never failed untried.
    fn attempt(&self, from: usize, last_resort: bool) -> Option<Attempt<'_, P>> {
        let now = self.now_ms();
        for i in from..self.links.len() {
            if let Some(probe) = self.admits(i, now) {
                return Some(Attempt {
                    chain: self,
                    index: i,
                    probe,
                    settled: false,
                });
            }
        }
        if !last_resort {
            return None;
        }
        (0..self.links.len())
            .min_by_key(|&i| self.links[i].breaker.open_until.load(Ordering::Acquire))
            .map(|index| Attempt {
                chain: self,
                index,
                probe: false,
                settled: false,
            })
    }

    /// Whether `e` says something about the provider's health. A request the provider refused as
    /// invalid (bad input from a client) does not count against its breaker.
    fn counts(e: &ProviderError) -> bool {
        !matches!(e, ProviderError::InvalidRequest { .. })
    }

    fn record_success(&self, i: usize, metrics: &Metrics) {
        let b = &self.links[i].breaker;
        b.consecutive.store(0, Ordering::Release);
        if b.open_until.swap(0, Ordering::AcqRel) != 0 {
            metrics.circuit(self.stage, self.links[i].provider.provider_name(), false);
            tracing::info!(
                stage = self.stage.as_str(),
                provider = self.links[i].provider.provider_name(),
                "provider recovered: circuit closed"
            );
        }
    }

    fn record_failure(&self, i: usize, probe: bool, counted: bool, metrics: &Metrics) {
        let name = self.links[i].provider.provider_name();
        metrics.provider_error(self.stage, name);
        if !counted {
            return;
        }
        let b = &self.links[i].breaker;
        let n = b.consecutive.fetch_add(1, Ordering::AcqRel) + 1;
        let threshold = self.config.failure_threshold;
        if threshold > 0 && (n >= threshold || probe) {
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

    /// Runs `call` on each usable provider in turn, from link `from`, each under `limit`, until
    /// one answers.
    ///
    /// # Errors
    /// The last provider's failure when all failed.
    pub async fn call_from<T, F, Fut>(
        &self,
        from: usize,
        metrics: &Metrics,
        limit: Duration,
        what: &str,
        call: F,
    ) -> Result<T, ProviderFailure>
    where
        F: Fn(Arc<P>) -> Fut,
        Fut: std::future::Future<Output = Result<T, ProviderError>>,
    {
        // A call is a stream of one item: the same attempt loop serves both.
        let (attempt, _, answer) = self
            .open_from(from, metrics, limit, what, |p| {
                Box::pin(futures_util::stream::once(call(Arc::clone(p))))
            })
            .await?;
        attempt.succeeded(metrics);
        Ok(answer.expect("a one-item stream yields its item"))
    }

    /// `call_from(0, ...)`: the whole chain.
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
        self.call_from(0, metrics, limit, what, call).await
    }

    /// Opens a stream on each usable provider in turn until one yields its first item within
    /// `first`. Returns the attempt (settle it with `succeeded` when the stream ends well, or
    /// `failed`), the stream and its first item (`None`: the stream ended empty, an answer too).
    /// A stream that fails after its first item counts against its provider like any failure.
    ///
    /// # Errors
    /// The last provider's failure when all failed.
    pub async fn open<S, T, F>(
        &self,
        metrics: &Metrics,
        first: Duration,
        what: &str,
        start: F,
    ) -> Result<(Attempt<'_, P>, S, Option<T>), ProviderFailure>
    where
        F: Fn(&Arc<P>) -> S,
        S: Stream<Item = Result<T, ProviderError>> + Unpin,
    {
        self.open_from(0, metrics, first, what, start).await
    }

    /// `open`, starting at link `from` (a turn whose first sentence was spoken by that link keeps
    /// its voice).
    ///
    /// # Errors
    /// The last provider's failure when all failed.
    pub async fn open_from<S, T, F>(
        &self,
        from: usize,
        metrics: &Metrics,
        first: Duration,
        what: &str,
        start: F,
    ) -> Result<(Attempt<'_, P>, S, Option<T>), ProviderFailure>
    where
        F: Fn(&Arc<P>) -> S,
        S: Stream<Item = Result<T, ProviderError>> + Unpin,
    {
        let mut at = self.attempt(from.min(self.links.len() - 1), true);
        let mut last = None;
        while let Some(attempt) = at {
            let i = attempt.index;
            let mut stream = start(&self.links[i].provider);
            let why = match tokio::time::timeout(first, stream.next()).await {
                Ok(Some(Ok(item))) => return Ok((attempt, stream, Some(item))),
                Ok(None) => return Ok((attempt, stream, None)),
                Ok(Some(Err(e))) => {
                    let counted = Self::counts(&e);
                    attempt.failed(counted, metrics);
                    failure(e)
                }
                Err(_) => {
                    attempt.failed(true, metrics);
                    timed_out(self.links[i].provider.provider_name(), what, first)
                }
            };
            drop(stream);
            at = self.attempt(i + 1, false);
            self.moving_on(i, at.as_ref().map(|a| a.index), &why, metrics);
            last = Some(why);
        }
        Err(last.expect("link 0 always gets an attempt"))
    }

    /// Whether link `i`'s breaker is open (it would be skipped now).
    pub fn is_open(&self, i: usize) -> bool {
        self.state(i, self.now_ms()) == BreakerState::Open
    }

    /// Records a failure of link `i` outside an attempt (a streaming ASR's stream, which lives in
    /// the session's driver).
    pub fn failed(&self, i: usize, metrics: &Metrics) {
        self.record_failure(i, false, true, metrics);
    }

    /// Records a success of link `i` outside an attempt.
    pub fn succeeded(&self, i: usize, metrics: &Metrics) {
        self.record_success(i, metrics);
    }

    /// The name of link `i`.
    pub fn name(&self, i: usize) -> &str {
        self.links[i].provider.provider_name()
    }
}

/// One request's use of one provider of a chain. Settle it with `succeeded` or `failed`; dropping
/// it unsettled (the request was cancelled: a barge-in, a closed session) records nothing but
/// gives back a half-open breaker's probe, so a cancelled probe cannot leave the breaker stuck.
pub struct Attempt<'a, P: ?Sized + Named> {
    chain: &'a Chain<P>,
    index: usize,
    /// This request is the half-open breaker's probe.
    probe: bool,
    settled: bool,
}

impl<P: ?Sized + Named> Attempt<'_, P> {
    /// The provider's name.
    pub fn name(&self) -> &str {
        self.chain.name(self.index)
    }

    /// The provider's place in its chain.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The provider answered in full.
    pub fn succeeded(mut self, metrics: &Metrics) {
        self.settled = true;
        self.chain.record_success(self.index, metrics);
        self.release();
    }

    /// The provider failed; `counted`: the failure says something about its health.
    pub fn failed(mut self, counted: bool, metrics: &Metrics) {
        self.settled = true;
        self.chain
            .record_failure(self.index, self.probe, counted, metrics);
        self.release();
    }

    fn release(&mut self) {
        if self.probe {
            self.probe = false;
            self.chain.links[self.index]
                .breaker
                .probing
                .store(false, Ordering::Release);
        }
    }
}

impl<P: ?Sized + Named> Drop for Attempt<'_, P> {
    fn drop(&mut self) {
        if !self.settled {
            self.release();
        }
    }
}

/// A provider error as the core reports it.
pub(crate) fn failure(e: ProviderError) -> ProviderFailure {
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
pub(crate) fn timed_out(provider: &str, what: &str, after: Duration) -> ProviderFailure {
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
    async fn a_cancelled_probe_gives_the_probe_back() {
        let (a, b) = (flaky("a", true), flaky("b", false));
        let c = chain(&a, &b);
        let m = Metrics::new();
        ask(&c, &m).await.unwrap();
        ask(&c, &m).await.unwrap();
        tokio::time::advance(Duration::from_secs(11)).await;
        a.failing.store(false, Ordering::SeqCst);
        // The probe's request is dropped before `a` answers (a barge-in, a closed session).
        let hanging = c.call(&m, Duration::from_secs(1), "x", |_| {
            std::future::pending::<Result<(), ProviderError>>()
        });
        let probe = tokio::time::timeout(Duration::from_millis(1), hanging).await;
        assert!(probe.is_err(), "the probe was still waiting");
        assert_eq!(c.status()[0].state, BreakerState::HalfOpen);
        // The next request may probe again, and `a` is back.
        assert_eq!(ask(&c, &m).await.unwrap(), "a");
        assert_eq!(c.status()[0].state, BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn invalid_requests_do_not_count_against_the_provider() {
        let (a, b) = (flaky("a", false), flaky("b", false));
        let c = chain(&a, &b);
        let m = Metrics::new();
        for _ in 0..5 {
            let r = c
                .call(&m, Duration::from_secs(1), "x", |_| async {
                    Err::<(), _>(ProviderError::InvalidRequest {
                        provider: "a".into(),
                        message: "bad input".into(),
                    })
                })
                .await;
            assert!(r.is_err());
        }
        assert!(c.status().iter().all(|l| l.state == BreakerState::Closed));
        assert_eq!(c.status()[0].consecutive_failures, 0);
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
        let (attempt, mut rest, first) = c
            .open(&m, Duration::from_millis(500), "no audio", |p| {
                p.synthesize("hi".into(), voxd_core::SampleRate::INTERNAL)
            })
            .await
            .unwrap();
        assert_eq!((attempt.name(), first), ("works", Some(vec![1])));
        assert_eq!(rest.next().await.unwrap().unwrap(), vec![2]);
        // A stream that fails after its first item counts against its provider.
        attempt.failed(true, &m);
        assert_eq!(c.status()[2].consecutive_failures, 1);
        let text = m.render();
        assert!(text.contains("from=\"hangs\",to=\"fails\"} 1"), "{text}");
        assert!(text.contains("from=\"fails\",to=\"works\"} 1"), "{text}");
    }
}
