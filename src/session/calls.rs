//! A session's provider calls as streams its driver polls: `Call` tags a call's events with its
//! turn and runs them in the turn's span; `Relay` turns an opened provider stream into events under
//! a stall deadline and settles the call's fallback attempt (see `driver.rs` for why a call is a
//! stream and not a task).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;
use tracing::Span;
use voxd_backends::ProviderError;
use voxd_core::{ProviderEvent, ProviderFailure, TurnId};

use crate::metrics::Metrics;
use crate::providers::{failure, timed_out, Attempt, Named};

/// One provider call: its events, tagged with its turn, polled by the session's own task. The
/// provider's work runs inside the call's `turn` span, so its log lines carry the turn id.
pub(super) struct Call {
    pub(super) turn: TurnId,
    pub(super) span: Span,
    pub(super) events: BoxStream<'static, ProviderEvent>,
}

impl Stream for Call {
    type Item = (TurnId, ProviderEvent);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        let _entered = this.span.enter();
        let turn = this.turn;
        this.events
            .poll_next_unpin(cx)
            .map(|event| event.map(|e| (turn, e)))
    }
}

/// Turns an opened provider stream into its session's events: each item as an event, under the
/// stall deadline, then `done`; a failure as one event. The attempt is settled with the outcome,
/// so a provider that fails mid-stream counts against its breaker.
pub(super) struct Relay<'a> {
    pub(super) metrics: &'a Metrics,
    pub(super) stall: Duration,
    /// What the stall error says stopped coming.
    pub(super) stalled: &'static str,
}

impl<'a> Relay<'a> {
    pub(super) fn run<P, S, T>(
        self,
        opened: Result<(Attempt<'a, P>, S, Option<T>), ProviderFailure>,
        item_event: impl Fn(T) -> ProviderEvent + 'a,
        failed_event: impl Fn(ProviderFailure) -> ProviderEvent + 'a,
        done: ProviderEvent,
    ) -> impl Stream<Item = ProviderEvent> + 'a
    where
        P: ?Sized + Named + 'a,
        S: Stream<Item = Result<T, ProviderError>> + Unpin + 'a,
        T: 'a,
    {
        async_stream::stream! {
            let (attempt, mut stream, mut item) = match opened {
                Ok((attempt, stream, first)) => (attempt, stream, first.map(Ok)),
                Err(f) => {
                    yield failed_event(f);
                    return;
                }
            };
            // One stall timer for the whole stream, pushed back after each item: extending a
            // tokio timer's deadline is an atomic store, where a timeout per item would insert
            // into and remove from the timer wheel for every token and every audio chunk.
            let stall = tokio::time::sleep(self.stall);
            tokio::pin!(stall);
            while let Some(next) = item {
                match next {
                    Ok(x) => yield item_event(x),
                    Err(e) => {
                        attempt.failed(true, self.metrics);
                        yield failed_event(failure(e));
                        return;
                    }
                }
                stall.as_mut().reset(Instant::now() + self.stall);
                let next = tokio::select! {
                    biased;
                    next = stream.next() => Some(next),
                    () = &mut stall => None,
                };
                item = match next {
                    Some(next) => next,
                    None => {
                        let f = timed_out(attempt.name(), self.stalled, self.stall);
                        attempt.failed(true, self.metrics);
                        yield failed_event(f);
                        return;
                    }
                };
            }
            attempt.succeeded(self.metrics);
            yield done;
        }
    }
}
