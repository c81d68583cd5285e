//! A session's provider calls as streams its driver polls: `transcribe`, `llm`, `tts` and `tool`
//! make one call's stream of `ProviderEvent`s through the stage's fallback chain; `Call` tags a
//! call's events with its turn and runs them in the turn's span; `Relay` turns an opened provider
//! stream into events under a stall deadline and settles the call's fallback attempt (see
//! `driver.rs` for why a call is a stream and not a task).

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::BoxStream;
use futures_util::{Stream, StreamExt};
use tokio::time::Instant;
use tracing::Span;
use voxd_backends::ProviderError;
use voxd_core::{ProviderEvent, ProviderFailure, SampleRate, TurnId};

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use futures_util::stream;
use voxd_backends::{LlmEvent, LlmRequest, ToolSpec};
use voxd_core::{ChatMessage, ClientTool, ToolCall};

use crate::metrics::Metrics;
use crate::providers::{failure, timed_out, Attempt, Named};
use crate::state::AppState;

/// A whole utterance through the ASR chain, from link `from`.
pub(super) fn transcribe(
    app: Arc<AppState>,
    audio: Arc<[i16]>,
    language: Option<Arc<str>>,
    from: usize,
    limit: Duration,
) -> impl Stream<Item = ProviderEvent> + Send + 'static {
    stream::once(async move {
        let chain = &app.providers.asr;
        let result = chain
            .call_from(from, &app.metrics, limit, "no transcript", |asr| {
                let audio = Arc::clone(&audio);
                let language = language.clone();
                async move {
                    asr.transcribe_in(audio, language.as_deref())
                        .await
                        .map(|t| t.text)
                }
            })
            .await;
        ProviderEvent::Transcript(result)
    })
}

/// A reply streamed from the LLM chain, with the registered tools offered.
pub(super) fn llm(
    app: Arc<AppState>,
    messages: Vec<ChatMessage>,
    client_tools: &[ClientTool],
    first: Duration,
    stall: Duration,
) -> impl Stream<Item = ProviderEvent> + Send + 'static {
    let mut tools = Vec::with_capacity(app.providers.tool_specs.len() + client_tools.len());
    tools.extend_from_slice(&app.providers.tool_specs);
    tools.extend(client_tools.iter().map(|t| {
        ToolSpec {
            name: t.name.clone(),
            description: t.description.clone(),
            // The codec checked it is a JSON object.
            parameters: serde_json::from_str(&t.parameters)
                .unwrap_or_else(|_| serde_json::json!({"type": "object"})),
        }
    }));
    async_stream::stream! {
        let chain = &app.providers.llm;
        let request = LlmRequest { messages, tools };
        let opened = chain
            .open(&app.metrics, first, "no first token", |llm| {
                llm.stream(request.clone())
            })
            .await;
        let relay = Relay {
            metrics: &app.metrics,
            stall,
            stalled: "the reply stalled: no token",
        };
        let events = relay.run(
            opened,
            |e| match e {
                LlmEvent::Token(t) => ProviderEvent::LlmToken(t),
                LlmEvent::ToolCall(c) => ProviderEvent::LlmToolCall(c),
            },
            ProviderEvent::LlmFailed,
            ProviderEvent::LlmDone,
        );
        futures_util::pin_mut!(events);
        while let Some(event) = events.next().await {
            yield event;
        }
    }
}

/// One sentence to synthesize.
pub(super) struct Sentence {
    /// Its number in the turn.
    pub(super) seq: u32,
    pub(super) text: String,
    /// The session's voice, if it chose one.
    pub(super) voice: Option<Arc<str>>,
    /// The session's output rate.
    pub(super) rate: SampleRate,
}

/// A sentence synthesized by the TTS chain, from the link in `link` (the one that spoke the
/// turn's earlier sentences), which it updates to the link that answers.
pub(super) fn tts(
    app: Arc<AppState>,
    sentence: Sentence,
    link: Arc<AtomicUsize>,
    first: Duration,
    stall: Duration,
) -> impl Stream<Item = ProviderEvent> + Send + 'static {
    let Sentence {
        seq,
        text,
        voice,
        rate,
    } = sentence;
    async_stream::stream! {
        let chain = &app.providers.tts;
        let from = link.load(Ordering::Relaxed);
        let opened = chain
            .open_from(from, &app.metrics, first, "no audio", |tts| {
                tts.synthesize_as(text.clone(), rate, voice.as_deref())
            })
            .await;
        if let Ok((attempt, _, _)) = &opened {
            link.store(attempt.index(), Ordering::Relaxed);
        }
        let relay = Relay {
            metrics: &app.metrics,
            stall,
            stalled: "the audio stalled: nothing more",
        };
        let events = relay.run(
            opened,
            |samples| ProviderEvent::TtsAudio { seq, samples },
            |failure| ProviderEvent::TtsFailed { seq, failure },
            ProviderEvent::TtsDone { seq },
        );
        futures_util::pin_mut!(events);
        while let Some(event) = events.next().await {
            yield event;
        }
    }
}

/// A tool call, bounded by `limit`.
pub(super) fn tool(
    app: Arc<AppState>,
    call: ToolCall,
    limit: Duration,
) -> impl Stream<Item = ProviderEvent> + Send + 'static {
    stream::once(async move {
        let ToolCall {
            id,
            name,
            arguments,
        } = call;
        let started = Instant::now();
        let call = app.providers.tools.call(&name, &arguments);
        let result = match tokio::time::timeout(limit, call).await {
            Ok(r) => r.map(|v| v.to_string()).map_err(failure),
            Err(_) => Err(timed_out(&name, "the tool did not answer", limit)),
        };
        // Label by registered tool only: a model can invent names without limit.
        let label = if app.providers.tools.get(&name).is_some() {
            name.as_str()
        } else {
            "unknown"
        };
        app.metrics
            .tool_call(label, result.is_ok(), started.elapsed());
        ProviderEvent::ToolResult {
            call_id: id,
            result,
        }
    })
}

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
