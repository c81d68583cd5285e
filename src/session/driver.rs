//! The IO driver of one WebSocket session: a single task that owns the session's state machine.
//! It is the same for every client protocol: a `wire::Codec` turns the client's frames into the
//! core's inputs and the core's outputs into frames, and the driver only moves them.
//!
//! It `select!`s over the socket, the provider events of the session's calls, the state machine's
//! next wake-up and shutdown. After each, it feeds the core and drains its outputs (the drain rule in
//! `voxd_core::session`): events and audio go to the socket, provider calls are started, turns are
//! cancelled. Nothing else owns session state.
//!
//! Provider calls: each call is a stream of provider events (`Call`) polled by this task's own
//! select loop, not a task of its own. When a provider's timer or socket wakes, it wakes this
//! task, and the event reaches the core in the same poll: no channel, no second task to schedule
//! on the way (a response's first audio crosses that path four times). The driver keeps each
//! turn's abort handles; `CancelTurn` aborts them, and the aborted calls are dropped at the loop's
//! next turn (a dropped stream stops the provider's work). When the socket closes, the driver and
//! every call it holds are dropped: nothing of a session outlives it.
//!
//! Writes to the socket are awaited in this task, so a client that reads slowly slows its own
//! session only. While a write waits, the task still polls the calls and hands their events to the
//! core, so a provider's work never pauses behind a client that stopped reading.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::stream::{AbortHandle, Abortable, SelectAll};
use futures_util::{Stream, StreamExt};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, info, info_span, warn, Instrument};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::protocol::CloseFrame;
use tungstenite::{Message, Utf8Bytes};
use voxd_backends::{AsrStream, AsrUpdate, ProviderError};
use voxd_core::ResponseStatus;
use voxd_core::{AsrStreamEvent, Event, Output, ProviderEvent, SampleRate, Session, Time, TurnId};

use super::calls::{self, Call};
use super::limits::{Admit, ClientLimits};
use super::resume::{self, ParkedSessions, Resumed};
use crate::metrics::WireCounts;
use crate::providers::failure;
use crate::registry::{Permit, Signal, CLOSE, DRAIN};
use crate::state::AppState;
use crate::transport::WebSocket;
use crate::wire::{Codec, Frame, Hello, Input, Notice, TextKind};

/// Wire counts are added to the shared metrics after this many messages (and at the end), so
/// the per-frame path writes no shared memory.
const WIRE_FLUSH_MESSAGES: u64 = 256;

/// Why the session loop ended, and the close frame to send, if any.
struct Exit {
    /// The `reason` label of `voxd_sessions_closed_total` (docs/metrics.md lists them).
    label: &'static str,
    /// The reason for the log and the close frame.
    reason: &'static str,
    close: Option<(u16, &'static str)>,
    /// The connection dropped without a close (1006): the client may come back.
    dropped: bool,
}

impl Exit {
    /// The connection is gone or unusable: nothing to send.
    fn quiet(label: &'static str, reason: &'static str) -> Exit {
        Exit {
            label,
            reason,
            close: None,
            dropped: false,
        }
    }

    /// The connection dropped without a close: a resumable session waits for its client.
    fn dropped(label: &'static str, reason: &'static str) -> Exit {
        Exit {
            dropped: true,
            ..Exit::quiet(label, reason)
        }
    }

    /// voxd closes the session with `code`.
    fn close(label: &'static str, code: u16, reason: &'static str) -> Exit {
        Exit {
            label,
            reason,
            close: Some((code, reason)),
            dropped: false,
        }
    }

    /// A close decided by the client limits (`limits.rs`): 1009 for size, 1008 for rate.
    fn limit(code: u16, reason: &'static str) -> Exit {
        let label = if code == 1009 {
            "message_too_big"
        } else {
            "rate_limited"
        };
        Exit::close(label, code, reason)
    }
}

/// How long a close handshake may take.
const CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

/// How long the close frame to a connection the client replaced may take to write.
const SUPERSEDED_CLOSE_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(100);

/// Most frames a parked session keeps for its client (the events of a response going on while
/// it is away; no audio is made then). Beyond, the session ends.
const MAX_PARKED_FRAMES: usize = 4096;

/// How one connection of a session ended.
enum End {
    /// The session is over.
    Over(&'static str),
    /// The connection dropped; the session may be resumed.
    Dropped(&'static str),
    /// The client came back on a new connection before this one was seen to drop.
    Superseded(Box<Resumed>),
}

/// Runs one session until its socket closes or the server shuts down. `codec` speaks the client's
/// protocol; `input_rate` is the rate of the client's audio, for its limits.
pub(crate) async fn run<C: Codec>(
    socket: WebSocket,
    app: Arc<AppState>,
    permit: Permit,
    codec: C,
    input_rate: SampleRate,
    parked: Option<Arc<ParkedSessions>>,
) {
    let id = permit.id();
    let span = info_span!("session", session_id = %id);
    async move {
        info!(input_rate = input_rate.hz(), "session started");
        app.metrics.sessions_total.increment(1);
        app.metrics.sessions_active.increment(1.0);
        let mut driver = Driver::new(Arc::clone(&app), codec, input_rate, permit.signal(), parked);
        let token = driver.resumable.then(resume::new_token);
        let session_id = id.to_string();
        let mut socket = socket;
        let mut resumed = false;
        driver.claim_key = token.clone().map(|t| (id, t));
        let reason = loop {
            // The client may come back to this session from now on, even before this
            // connection is seen to drop.
            driver.listen_for_claim();
            match driver
                .run(socket, &session_id, token.as_deref(), resumed)
                .await
            {
                End::Over(reason) => break reason,
                End::Superseded(back) => {
                    info!("the client came back on a new connection; the old one is let go");
                    let now = driver.now();
                    driver.core.handle_disconnect(now);
                    driver.core.handle_reconnect(now, back.received);
                    socket = back.socket;
                    resumed = true;
                }
                End::Dropped(reason) => {
                    info!(
                        reason,
                        "connection dropped; waiting for the client to resume"
                    );
                    match driver.park().await {
                        Some(back) => {
                            info!("session resumed");
                            let now = driver.now();
                            driver.core.handle_reconnect(now, back.received);
                            socket = back.socket;
                            resumed = true;
                        }
                        None => {
                            app.metrics.session_closed("abandoned");
                            break "not resumed in time";
                        }
                    }
                }
            }
        };
        driver.stop_listening_for_claims();
        app.metrics.add_wire(&mut driver.wire);
        app.metrics.sessions_active.decrement(1.0);
        info!(reason, "session ended");
        drop(permit);
    }
    .instrument(span)
    .await;
}

struct Driver<C> {
    app: Arc<AppState>,
    core: Session,
    /// The client's protocol.
    codec: C,
    /// The rate of the answer's audio (the codec's, or the configured one).
    output_rate: SampleRate,
    started: Instant,
    /// The frames of one output step, written in order (reused).
    outbox: Vec<Frame>,
    /// The provider calls in flight, polled by the select loop.
    calls: SelectAll<Abortable<Call>>,
    turns: HashMap<TurnId, Vec<AbortHandle>>,
    /// The TTS chain link each turn's answer is spoken by (0 until a fallback speaks).
    voices: HashMap<TurnId, Arc<std::sync::atomic::AtomicUsize>>,
    /// Drain and close requests from the registry.
    signal: Arc<Signal>,
    wire: WireCounts,
    limits: ClientLimits,
    timeouts: crate::config::Timeouts,
    /// The streaming ASR's recognition streams: the utterance being captured, and utterances that
    /// ended and are finalizing (at most `voxd_core::session::MAX_STREAMS` in all).
    live: Vec<LiveStream>,
    /// The registry's flags seen so far, and whether the session is draining.
    seen: u8,
    draining: bool,
    /// A dropped connection parks the session here for `server.resume_window_s` (`/ws` only).
    parked: Option<Arc<ParkedSessions>>,
    resumable: bool,
    /// Where a client's claim on this session arrives (`ParkedSessions::register`), connected or
    /// parked.
    handoff: Option<oneshot::Receiver<Resumed>>,
    /// The session's id and resume token, when it can be resumed.
    claim_key: Option<(crate::registry::SessionId, String)>,
}

/// One utterance's recognition stream, opened when the core asked (`Output::OpenAsrStream`). The
/// core decides what is sent on it and when (`voxd_core::session::live_asr`); this only carries it.
struct LiveStream {
    turn: TurnId,
    /// Connecting.
    opening: Option<BoxFuture<'static, Result<AsrStream, ProviderError>>>,
    stream: Option<AsrStream>,
}

/// The streaming ASR's place in the ASR chain: the first link (`Providers::build` puts it there),
/// so its fallbacks transcribe whole utterances when its streams fail.
const STREAMING_LINK: usize = 0;

/// The connected stream of `turn`, if it has one.
fn connected(live: &mut [LiveStream], turn: TurnId) -> Option<&mut AsrStream> {
    live.iter_mut()
        .find(|l| l.turn == turn)
        .and_then(|l| l.stream.as_mut())
}

/// What a live stream did.
enum LiveEvent {
    /// It connected, or failed to.
    Opened(Result<AsrStream, ProviderError>),
    /// It yielded an update (`None`: it ended).
    Update(Option<Result<AsrUpdate, ProviderError>>),
}

/// The next event of any live stream, with its turn (pending forever when there is none).
fn live_event(
    live: &mut [LiveStream],
) -> impl std::future::Future<Output = (TurnId, LiveEvent)> + '_ {
    std::future::poll_fn(move |cx| {
        for l in live.iter_mut() {
            if let Some(opening) = &mut l.opening {
                if let std::task::Poll::Ready(r) = opening.as_mut().poll(cx) {
                    return std::task::Poll::Ready((l.turn, LiveEvent::Opened(r)));
                }
            } else if let Some(stream) = &mut l.stream {
                if let std::task::Poll::Ready(u) = stream.poll_next_unpin(cx) {
                    return std::task::Poll::Ready((l.turn, LiveEvent::Update(u)));
                }
            }
        }
        std::task::Poll::Pending
    })
}

impl<C: Codec> Driver<C> {
    fn new(
        app: Arc<AppState>,
        codec: C,
        input_rate: SampleRate,
        signal: Arc<Signal>,
        parked: Option<Arc<ParkedSessions>>,
    ) -> Self {
        let app_limits = app.config.limits.clone();
        let app_timeouts = app.config.timeouts;
        // The protocol may fix the answer's rate, and whether its player keeps its buffer.
        let mut cfg = app.config.session.clone();
        if let Some(rate) = codec.output_rate() {
            cfg.output_rate = rate;
        }
        cfg.client_discards_on_pause = codec.discards_on_pause();
        let resumable =
            parked.is_some() && codec.resumable() && !app.config.server.resume_window.is_zero();
        cfg.resumable = resumable;
        Driver {
            seen: 0,
            draining: false,
            parked,
            resumable,
            handoff: None,
            claim_key: None,
            output_rate: cfg.output_rate,
            core: Session::new(cfg),
            app,
            codec,
            started: Instant::now(),
            outbox: Vec::new(),
            calls: SelectAll::new(),
            turns: HashMap::new(),
            voices: HashMap::new(),
            signal,
            wire: WireCounts::default(),
            limits: ClientLimits::new(&app_limits, input_rate),
            timeouts: app_timeouts,
            live: Vec::new(),
        }
    }

    /// A live stream's event, for the core.
    fn on_live_event(&mut self, turn: TurnId, event: LiveEvent) {
        let Some(at) = self.live.iter().position(|l| l.turn == turn) else {
            return;
        };
        let event = match event {
            LiveEvent::Opened(Ok(stream)) => {
                let l = &mut self.live[at];
                l.opening = None;
                l.stream = Some(stream);
                AsrStreamEvent::Opened
            }
            LiveEvent::Opened(Err(e)) | LiveEvent::Update(Some(Err(e))) => self.live_failed(at, e),
            LiveEvent::Update(None) => self.live_failed(
                at,
                ProviderError::Failed {
                    provider: "stream".into(),
                    message: "the recognition stream ended without a final transcript".into(),
                },
            ),
            LiveEvent::Update(Some(Ok(update))) => match update {
                AsrUpdate::Interim { text } => AsrStreamEvent::Interim(text),
                AsrUpdate::Final {
                    text, speech_final, ..
                } => AsrStreamEvent::Final { text, speech_final },
                AsrUpdate::Finalized(transcript) => {
                    self.live.remove(at);
                    let chain = &self.app.providers.asr;
                    chain.succeeded(STREAMING_LINK, &self.app.metrics);
                    AsrStreamEvent::Finalized(transcript.text)
                }
            },
        };
        let now = self.now();
        self.core.handle_asr_stream(now, turn, event);
    }

    /// Live stream `at` failed (a failed stream has ended): it goes, and counts against the
    /// streaming provider's breaker.
    fn live_failed(&mut self, at: usize, e: ProviderError) -> AsrStreamEvent {
        let l = self.live.remove(at);
        warn!(turn_id = l.turn.0, error = %e, "streaming ASR failed; transcribing the whole utterance instead");
        self.app
            .providers
            .asr
            .failed(STREAMING_LINK, &self.app.metrics);
        AsrStreamEvent::Failed(failure(e))
    }

    /// Transcribes a whole utterance through the ASR chain, as one of the session's calls.
    /// `after_stream`: the streaming provider (`STREAMING_LINK`) failed on this utterance, so the
    /// chain starts at its fallback, if it has one.
    fn transcribe_whole(&mut self, turn: TurnId, audio: Arc<[i16]>, after_stream: bool) {
        let from = if after_stream && self.app.providers.asr.len() > STREAMING_LINK + 1 {
            let chain = &self.app.providers.asr;
            let fallback = STREAMING_LINK + 1;
            self.app.metrics.fallback(
                chain.stage(),
                chain.name(STREAMING_LINK),
                chain.name(fallback),
            );
            fallback
        } else {
            0
        };
        let language = self.core.language().cloned();
        let call = calls::transcribe(
            Arc::clone(&self.app),
            audio,
            language,
            from,
            self.timeouts.asr,
        );
        self.start(turn, call);
    }

    fn now(&self) -> Time {
        Time::from_duration(self.started.elapsed())
    }

    /// The session's loop over one connection; returns how it ended. `token`: the resume token
    /// to tell the client; `resumed`: the client came back to this session.
    async fn run(
        &mut self,
        socket: WebSocket,
        session_id: &str,
        token: Option<&str>,
        resumed: bool,
    ) -> End {
        // One socket, not split: reads happen only inside `select!` and writes only after it, so
        // there is no need for the lock a split would take on every frame.
        let mut tx = socket;
        let hello = Hello {
            session_id,
            output_rate: self.output_rate,
            server_vad: self.app.config.session.vad.is_some(),
            resume_token: token,
            resumed,
        };
        // The hello first, then what a parked session kept for its client.
        let mut first = Vec::new();
        self.codec.hello(&hello, &mut first);
        first.append(&mut self.outbox);
        self.outbox = first;
        let mut hello_written = Ok(());
        for frame in self.outbox.drain(..) {
            hello_written = tx.feed(message(frame)).await;
            if hello_written.is_err() {
                break;
            }
        }
        if hello_written.is_err() || tx.flush().await.is_err() {
            if resumed {
                return End::Dropped("client gone before ready");
            }
            self.app.metrics.session_closed("client_closed");
            return End::Over("client gone before ready");
        }
        let send_timeout = self.app.config.server.send_timeout;
        // One send deadline for the session, pushed back before each output step: extending a
        // tokio timer is an atomic store, where a `timeout` per step would insert into and remove
        // from the timer wheel for every batch of paced audio.
        let send_deadline = tokio::time::sleep(send_timeout);
        tokio::pin!(send_deadline);
        let far = Instant::now() + std::time::Duration::from_secs(86_400 * 365);
        let sleep = tokio::time::sleep_until(far);
        tokio::pin!(sleep);
        let mut armed: Option<Time> = None;
        let signal = Arc::clone(&self.signal);
        // The idle timer is re-armed only when it fires (from the last message's time), so a
        // message costs a clock read, not a timer update.
        let idle_timeout = std::time::Duration::from_secs(self.app.config.limits.idle_timeout_s);
        let mut last_message = Instant::now();
        let idle = tokio::time::sleep_until(last_message + idle_timeout);
        tokio::pin!(idle);
        let mut taken = None;
        let exit = 'session: loop {
            let deadline = self.core.poll_timeout();
            if deadline != armed {
                armed = deadline;
                let at = deadline.map_or(far, |t| self.started + t.since_start());
                sleep.as_mut().reset(at);
            }
            tokio::select! {
                // Biased: the branches are polled in this order, without drawing a random
                // number per poll. Shutdown first, then the client: its `speech_start` must never
                // wait behind the answer's pacing timer, which is due on every turn of the loop
                // when writes to a slow link take a whole pacing interval. A client cannot hold
                // the rest back in turn: its input is rate-limited (dropped, then closed), and
                // provider events are also polled while a write waits.
                biased;
                flags = signal.raised(self.seen) => {
                    self.seen = flags;
                    if flags & CLOSE != 0 {
                        break Exit::close("shutdown", 1001, "server shutting down");
                    }
                    if flags & DRAIN != 0 && !self.draining {
                        self.draining = true;
                        let deadline_ms = self.app.sessions.drain_remaining().as_millis() as u64;
                        self.codec.notice(Notice::Shutdown { deadline_ms }, &mut self.outbox);
                    }
                }
                back = claimed(&mut self.handoff) => match back {
                    Some(back) => {
                        taken = Some(back);
                        break Exit::quiet("superseded", "resumed on a new connection");
                    }
                    // The claimer vanished before its upgrade: the session waits for another.
                    None => self.listen_for_claim(),
                },
                msg = tx.recv() => {
                    // One clock read per message: the idle timer's and the core's.
                    let at = Instant::now();
                    if msg.is_some() {
                        last_message = at;
                    }
                    let now = Time::from_duration(at.saturating_duration_since(self.started));
                    match msg {
                    // The stream ended with no close frame: the connection dropped (1006).
                    None => break Exit::dropped("client_closed", "connection dropped"),
                    Some(Err(e)) => {
                        debug!(error = %e, "socket error");
                        // A message over `server.max_message_bytes`: the WebSocket layer refused
                        // to buffer it, and the socket still works, so the client gets a reason.
                        if matches!(e, tungstenite::Error::Capacity(_)) {
                            break Exit::close(
                                "message_too_big",
                                1009,
                                "message larger than server.max_message_bytes",
                            );
                        }
                        break Exit::dropped("socket_error", "socket error");
                    }
                    Some(Ok(Message::Close(_))) => {
                        // Complete the closing handshake: the reply is queued by the WebSocket
                        // layer and goes out with this flush.
                        let _ = tokio::time::timeout(CLOSE_TIMEOUT, tx.close()).await;
                        break Exit::quiet("client_closed", "client closed");
                    }
                    Some(Ok(Message::Text(t))) => {
                        self.wire.in_text += 1;
                        let verdict = match self.codec.text_kind(t.as_str()) {
                            TextKind::Control => self.limits.text(t.len()),
                            TextKind::Audio(bytes) => {
                                self.wire.audio_in_bytes += bytes as u64;
                                self.limits.audio_text(t.len(), bytes)
                            }
                            TextKind::Echo => self.limits.echo_text(t.len()),
                            TextKind::Recording => self.limits.recording(),
                        };
                        match verdict {
                            Admit::Yes => self.on_text(now, t.as_str()),
                            Admit::Warn(code, message) => self.warn_client(code, &message),
                            Admit::Drop => {}
                            Admit::Close(code, reason) => break Exit::limit(code, reason),
                        }
                    }
                    Some(Ok(Message::Binary(b))) => {
                        self.wire.in_binary += 1;
                        self.wire.audio_in_bytes += b.len() as u64;
                        match self.limits.audio(b.len()) {
                            Admit::Yes => self.on_binary(now, &b),
                            Admit::Warn(code, message) => self.warn_client(code, &message),
                            Admit::Drop => {}
                            Admit::Close(code, reason) => break Exit::limit(code, reason),
                        }
                    }
                    Some(Ok(_)) => {} // ping/pong frames are answered by the WebSocket layer
                    }
                },
                () = &mut sleep, if armed.is_some() => {
                    armed = None;
                    let woke = Instant::now();
                    self.app.metrics.timer_lag(woke.saturating_duration_since(sleep.deadline()));
                    self.core.handle_timeout(Time::from_duration(woke - self.started));
                }
                Some((turn, event)) = self.calls.next(), if !self.calls.is_empty() => {
                    let now = self.now();
                    self.core.handle_provider(now, turn, event);
                }
                (turn, e) = live_event(&mut self.live), if !self.live.is_empty() => {
                    self.on_live_event(turn, e);
                }
                () = &mut idle => {
                    let due = last_message + idle_timeout;
                    if Instant::now() >= due {
                        break Exit::close(
                            "idle_timeout",
                            1000,
                            "idle timeout: no message from the client",
                        );
                    }
                    idle.as_mut().reset(due);
                }
            }
            // The output step. Most wake-ups (an inbound audio frame) produce nothing to send or
            // start: they skip it and its timer. Otherwise: collect the messages (and start and
            // cancel calls), then write them. A write waits for the client's socket; meanwhile
            // the provider calls go on, and each event's outputs are collected as it is handled
            // (so messages keep the order of the events), to be written next, until none is left.
            while self.core.has_output() || !self.outbox.is_empty() {
                self.collect();
                if self.outbox.is_empty() {
                    continue;
                }
                // Each write is bounded by the send timeout.
                send_deadline.as_mut().reset(Instant::now() + send_timeout);
                let mut outbox = std::mem::take(&mut self.outbox);
                for frame in &outbox {
                    match frame {
                        Frame::Text(_) => self.wire.out_text += 1,
                        Frame::Binary(_) => self.wire.out_binary += 1,
                    }
                }
                // How many frames the socket took: a connection the client leaves keeps the rest
                // for its next one.
                let mut fed = 0;
                let written = {
                    let write = async {
                        for slot in outbox.iter_mut() {
                            let frame = std::mem::replace(slot, Frame::Binary(Bytes::new()));
                            tx.feed(message(frame)).await?;
                            fed += 1;
                        }
                        tx.flush().await
                    };
                    tokio::pin!(write);
                    loop {
                        tokio::select! {
                            biased;
                            written = &mut write => break Written::Done(written),
                            () = &mut send_deadline => break Written::TimedOut,
                            // A write that waits on a vanished connection: the client is back
                            // on a new one.
                            back = claimed(&mut self.handoff) => match back {
                                Some(back) => break Written::Claimed(Box::new(back)),
                                None => self.listen_for_claim(),
                            },
                            Some((turn, event)) = self.calls.next(), if !self.calls.is_empty() => {
                                let now = self.now();
                                self.core.handle_provider(now, turn, event);
                                self.collect();
                            }
                            (turn, e) = live_event(&mut self.live), if !self.live.is_empty() => {
                                self.on_live_event(turn, e);
                                self.collect();
                            }
                        }
                    }
                };
                if !matches!(written, Written::Done(Ok(()))) && self.resumable {
                    // The client may resume: what the socket did not take waits for it.
                    self.keep_for_next_connection(outbox.drain(fed..));
                }
                // The next write's messages, collected meanwhile, if any; else the emptied
                // buffer is reused.
                outbox.clear();
                if self.outbox.is_empty() {
                    self.outbox = outbox;
                }
                match written {
                    Written::Done(Ok(())) => {}
                    Written::Claimed(back) => {
                        taken = Some(*back);
                        break 'session Exit::quiet("superseded", "resumed on a new connection");
                    }
                    Written::Done(Err(_)) => {
                        break 'session Exit::dropped("send_failed", "send failed")
                    }
                    // The client stopped reading: its socket buffer stayed full. The close frame
                    // is best effort (bounded by CLOSE_TIMEOUT): it reaches a client that reads
                    // again.
                    Written::TimedOut => {
                        break 'session Exit::close("slow_consumer", 1008, "slow consumer")
                    }
                }
            }
            if self.wire.messages() >= WIRE_FLUSH_MESSAGES {
                self.app.metrics.add_wire(&mut self.wire);
            }
            // Draining: once no response is in progress, the session is done.
            if self.draining && self.core.current_response().is_none() {
                break Exit::close("drained", 1001, "server shutting down");
            }
        };
        if let Some(back) = taken {
            // The old connection is let go with a close frame, best effort and without waiting
            // for an answer: it has most likely vanished.
            let close = Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: Utf8Bytes::from_static("resumed on another connection"),
            }));
            let _ = tokio::time::timeout(SUPERSEDED_CLOSE_TIMEOUT, tx.send(close)).await;
            return End::Superseded(Box::new(back));
        }
        if exit.dropped && self.resumable && !self.draining {
            // The session goes on without a connection, for now: `park`.
            return End::Dropped(exit.reason);
        }
        // The session ends here: a claim from now on is refused, rather than handed a socket
        // nobody will serve.
        self.stop_listening_for_claims();
        if exit.label == "shutdown" {
            // The drain deadline: a response still going ends first (`response_done`,
            // interrupted, reason `shutdown`), so the client knows it was cut. Best effort.
            let now = self.now();
            self.core.handle_shutdown(now);
            self.collect();
            let frames = std::mem::take(&mut self.outbox);
            let write = async {
                for frame in frames {
                    tx.feed(message(frame)).await?;
                }
                tx.flush().await
            };
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, write).await;
        }
        // The session is over: its provider calls stop now, before the closing handshake.
        self.calls = SelectAll::new();
        self.turns.clear();
        if let Some((code, reason)) = exit.close {
            // The closing handshake: send the close frame, then read (and discard) until the
            // client's close arrives. Dropping a socket with unread data would reset it, and the
            // client could lose the close frame and its reason.
            let handshake = async {
                tx.send(Message::Close(Some(CloseFrame {
                    code: CloseCode::from(code),
                    reason: Utf8Bytes::from_static(reason),
                })))
                .await?;
                while let Some(msg) = tx.recv().await {
                    if matches!(msg?, Message::Close(_)) {
                        break;
                    }
                }
                Ok::<_, tungstenite::Error>(())
            };
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, handshake).await;
        }
        self.app.metrics.session_closed(exit.label);
        End::Over(exit.reason)
    }

    /// Lets the client come back to this session (`ParkedSessions::register`), from now on,
    /// connected or parked.
    fn listen_for_claim(&mut self) {
        if let (Some(parked), Some((id, token))) = (&self.parked, &self.claim_key) {
            self.handoff = Some(parked.register(*id, token));
        }
    }

    /// The session can no longer be resumed.
    fn stop_listening_for_claims(&mut self) {
        if let (Some(parked), Some((id, _))) = (&self.parked, &self.claim_key) {
            parked.unregister(*id);
        }
        self.handoff = None;
    }

    /// The frames a connection did not take, for the client's next one: its events, in order,
    /// before those collected since. Audio is not kept: the core sends it again from what the
    /// client says it received (`handle_reconnect`).
    fn keep_for_next_connection(&mut self, unsent: impl Iterator<Item = Frame>) {
        let mut kept: Vec<Frame> = unsent.filter(|f| matches!(f, Frame::Text(_))).collect();
        kept.extend(
            self.outbox
                .drain(..)
                .filter(|f| matches!(f, Frame::Text(_))),
        );
        self.outbox = kept;
    }

    /// The connection dropped: the session waits, parked, for its client to come back with a
    /// new one (`resume`). Meanwhile the response in progress is held (nothing is sent; the
    /// core's `handle_disconnect`), its provider calls go on, and what the session has to say
    /// is kept for the client. Returns the client's new connection, or `None` once the resume
    /// window passes, the server drains, or too much piled up.
    async fn park(&mut self) -> Option<Resumed> {
        let now = self.now();
        self.core.handle_disconnect(now);
        let parked = Arc::clone(self.parked.as_ref()?);
        let id = self.claim_key.as_ref()?.0;
        let mut back = self.handoff.take()?;
        self.app.metrics.sessions_parked.increment(1.0);
        let window = tokio::time::sleep(self.app.config.server.resume_window);
        tokio::pin!(window);
        let far = Instant::now() + std::time::Duration::from_secs(86_400 * 365);
        let sleep = tokio::time::sleep_until(far);
        tokio::pin!(sleep);
        let signal = Arc::clone(&self.signal);
        let outcome = loop {
            self.collect();
            if self.outbox.len() > MAX_PARKED_FRAMES {
                break None;
            }
            let at = self
                .core
                .poll_timeout()
                .map_or(far, |t| self.started + t.since_start());
            if sleep.deadline() != at {
                sleep.as_mut().reset(at);
            }
            tokio::select! {
                biased;
                flags = signal.raised(self.seen) => {
                    self.seen = flags;
                    // The server is going away: nobody would be here to resume to.
                    break None;
                }
                r = &mut back => match r {
                    Ok(r) => break Some(r),
                    // The claimer vanished before its upgrade: wait for another.
                    Err(_) => {
                        self.listen_for_claim();
                        match self.handoff.take() {
                            Some(again) => back = again,
                            None => break None,
                        }
                    }
                },
                () = &mut window => break None,
                () = &mut sleep => {
                    let now = self.now();
                    self.core.handle_timeout(now);
                }
                Some((turn, event)) = self.calls.next(), if !self.calls.is_empty() => {
                    let now = self.now();
                    self.core.handle_provider(now, turn, event);
                }
                (turn, e) = live_event(&mut self.live), if !self.live.is_empty() => {
                    self.on_live_event(turn, e);
                }
            }
        };
        let outcome = match outcome {
            Some(r) => Some(r),
            // A client that claimed the session just now is handing its socket over.
            None if !parked.unregister(id) => {
                tokio::time::timeout(std::time::Duration::from_secs(10), back)
                    .await
                    .ok()
                    .and_then(Result::ok)
            }
            None => None,
        };
        self.app.metrics.sessions_parked.decrement(1.0);
        if outcome.is_none() {
            self.calls = SelectAll::new();
            self.turns.clear();
        }
        outcome
    }

    /// A text frame: through the codec to the core (a reply, if any, to the outbox).
    fn on_text(&mut self, now: Time, frame: &str) {
        let core = &mut self.core;
        self.codec.text(frame, &mut self.outbox, &mut |input| {
            apply(core, now, input)
        });
    }

    /// A binary frame: through the codec to the core.
    fn on_binary(&mut self, now: Time, frame: &[u8]) {
        let core = &mut self.core;
        self.codec.binary(frame, &mut self.outbox, &mut |input| {
            apply(core, now, input)
        });
    }

    /// A warning about the client's traffic (a limit), in its protocol.
    fn warn_client(&mut self, code: &str, message: &str) {
        self.codec
            .notice(Notice::Error { code, message }, &mut self.outbox);
    }

    /// Moves every output of the core, in order, into the outbox (through the codec): events and
    /// audio as messages; provider calls are started and turns cancelled on the spot.
    fn collect(&mut self) {
        while let Some(out) = self.core.poll_output() {
            match out {
                Output::Event(e) => {
                    let metrics = &self.app.metrics;
                    match &e {
                        Event::ResponseDone {
                            turn,
                            status,
                            timings,
                            ..
                        } => {
                            metrics.turn_done(*status, timings);
                            let ttft_ms = timings
                                .first_audio_sent
                                .zip(timings.speech_end)
                                .map(|(a, b)| a.saturating_since(b).as_secs_f64() * 1000.0);
                            info!(
                                turn_id = turn.0,
                                status = status.as_str(),
                                ttft_ms,
                                "response done"
                            );
                            if *status == ResponseStatus::Interrupted {
                                metrics.interruptions.increment(1);
                            }
                        }
                        Event::FalseAlarm { turn } => {
                            debug!(turn_id = turn.0, "false alarm: the response goes on");
                            metrics.false_alarms.increment(1);
                        }
                        Event::ProviderError {
                            turn,
                            stage,
                            failure,
                        } => {
                            warn!(turn_id = turn.0, stage = stage.as_str(), provider = %failure.provider, error = %failure.message, "provider failed");
                            // ASR, LLM and TTS failures are counted by their fallback chains.
                            if *stage == voxd_core::Stage::Tool {
                                metrics.provider_error(*stage, &failure.provider);
                            }
                        }
                        _ => {}
                    }
                    self.codec.event(&e, &mut self.outbox);
                }
                Output::Audio { turn, pcm, at } => {
                    self.wire.audio_out_bytes += pcm.len() as u64;
                    self.codec.audio(turn, at, pcm, &mut self.outbox);
                }
                Output::CancelTurn(turn) => {
                    self.voices.remove(&turn);
                    for task in self.turns.remove(&turn).into_iter().flatten() {
                        task.abort();
                    }
                    // Dropping a stream closes its socket.
                    self.live.retain(|l| l.turn != turn);
                }
                Output::TurnReleased(turn) => {
                    self.turns.remove(&turn);
                    self.voices.remove(&turn);
                    self.live.retain(|l| l.turn != turn);
                }
                Output::StartAsr {
                    turn,
                    audio,
                    after_stream,
                } => self.transcribe_whole(turn, audio, after_stream),
                Output::OpenAsrStream(turn) => {
                    // A provider whose breaker is open is not even tried.
                    let provider = self
                        .app
                        .providers
                        .streaming_asr
                        .as_ref()
                        .filter(|_| !self.app.providers.asr.is_open(STREAMING_LINK));
                    match provider {
                        Some(p) => self.live.push(LiveStream {
                            turn,
                            opening: Some(p.open_in(self.core.language().map(|l| &**l))),
                            stream: None,
                        }),
                        None => {
                            let now = self.now();
                            self.core
                                .handle_asr_stream(now, turn, AsrStreamEvent::Unavailable);
                        }
                    }
                }
                Output::PushAsrStream { turn, samples } => {
                    if let Some(stream) = connected(&mut self.live, turn) {
                        // A push error also comes out of the stream, once; it is handled there.
                        let _ = stream.push(self.core.asr_stream_audio(turn, samples));
                    }
                }
                Output::FinalizeAsrStream(turn) => {
                    if let Some(stream) = connected(&mut self.live, turn) {
                        let _ = stream.finalize();
                    }
                }
                Output::CloseAsrStream(turn) => self.live.retain(|l| l.turn != turn),
                Output::StartLlm {
                    turn,
                    messages,
                    client_tools,
                } => {
                    let t = &self.timeouts;
                    let call = calls::llm(
                        Arc::clone(&self.app),
                        messages,
                        &client_tools,
                        t.llm_first_token,
                        t.llm_stall,
                    );
                    self.start(turn, call);
                }
                Output::StartTts {
                    turn,
                    seq,
                    text,
                    voice,
                } => {
                    // The turn keeps the provider that spoke its first sentence: a fallback
                    // voice, once it has spoken, is not swapped back mid-answer.
                    let link = Arc::clone(self.voices.entry(turn).or_default());
                    let t = &self.timeouts;
                    let sentence = calls::Sentence {
                        seq,
                        text,
                        voice,
                        rate: self.output_rate,
                    };
                    let call = calls::tts(
                        Arc::clone(&self.app),
                        sentence,
                        link,
                        t.tts_first_audio,
                        t.tts_stall,
                    );
                    self.start(turn, call);
                }
                Output::StartTool { turn, call } => {
                    let call = calls::tool(Arc::clone(&self.app), call, self.timeouts.tool);
                    self.start(turn, call);
                }
            }
        }
    }

    /// Starts a provider call for `turn`: its events come out of the select loop; `CancelTurn`
    /// aborts it.
    fn start(&mut self, turn: TurnId, events: impl Stream<Item = ProviderEvent> + Send + 'static) {
        let (handle, registration) = AbortHandle::new_pair();
        let call = Call {
            turn,
            span: info_span!("turn", turn_id = turn.0),
            events: events.boxed(),
        };
        self.calls.push(Abortable::new(call, registration));
        self.turns.entry(turn).or_default().push(handle);
    }
}

/// A session input, from the codec to the core.
fn apply(core: &mut Session, now: Time, input: Input<'_>) {
    match input {
        Input::Audio(samples) => core.handle_audio(now, samples),
        Input::SpeechStart => core.handle_speech_start(now),
        Input::SpeechEnd => core.handle_speech_end(now),
        Input::Text(text) => core.handle_text(now, &text),
        Input::UserMessage(text) => core.handle_user_message(now, &text),
        Input::UserAudio(samples) => core.handle_user_audio(now, samples),
        Input::Say(text) => core.handle_say(now, &text),
        Input::Respond(overrides) => core.handle_respond_with(now, overrides),
        Input::Cancel => core.handle_cancel(now),
        Input::Update(update) => core.handle_update(now, update),
        Input::ToolResult { call_id, result } => core.handle_tool_result(now, &call_id, result),
        Input::Played { turn, samples } => core.handle_played(now, turn, samples),
        Input::Truncate { turn, samples } => core.handle_truncate(now, turn, samples),
        Input::Delete { turn, part } => core.handle_delete(now, turn, part),
    }
}

/// A codec's frame as a WebSocket message (no copy: both hold the same buffer).
fn message(frame: Frame) -> Message {
    match frame {
        Frame::Text(text) => Message::Text(text.into()),
        Frame::Binary(bytes) => Message::Binary(bytes),
    }
}

/// A client's claim on this session (its resume), connected or not: pending while there is none
/// to wait for; `None` when the claimer vanished before its upgrade (the session is no longer
/// registered: `listen_for_claim` again).
async fn claimed(handoff: &mut Option<oneshot::Receiver<Resumed>>) -> Option<Resumed> {
    if let Some(rx) = handoff {
        let got = rx.await;
        *handoff = None;
        return got.ok();
    }
    std::future::pending().await
}

/// How a write of the outbox ended.
enum Written {
    Done(Result<(), tungstenite::Error>),
    /// The send timeout passed.
    TimedOut,
    /// The client came back on a new connection meanwhile.
    Claimed(Box<Resumed>),
}
