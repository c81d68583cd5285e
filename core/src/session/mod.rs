//! The per-connection turn-taking state machine.
//!
//! A `Session` is driven by its owner (the server's connection task, or a test) through `handle_*`
//! methods, each given the current `Time`. It never reads a clock, spawns a task or touches a socket.
//! Its effects are queued as `Output`s.
//!
//! **The drain rule:** after every `handle_*` call, the owner calls `poll_output` until it returns
//! `None` and acts on each output in order, then asks `poll_timeout` when to call `handle_timeout`
//! next (`None`: not until another input arrives). Outputs are only produced by `handle_*` calls, so
//! an owner that follows the rule never misses one.
//!
//! The machine has two sides, and every turn-taking rule is a row of their tables below; the file
//! named with each side holds its code.
//!
//! **The user side** (`User`, in `user`; the barge-in rules in `barge_in`). An utterance is
//! captured (`Speaking`, `Candidate`) or judged (`Judging`), never both.
//!
//! | state | on | next | outputs |
//! |---|---|---|---|
//! | `Silent` | speech starts (a VAD onset, `speech_start`), no response | `Speaking` | `SpeechStarted` |
//! | `Silent` | speech starts during a response | `Candidate` | `SpeechStarted`; the response is held (`PlaybackPaused` once audio started) |
//! | `Silent` | speech starts during a response, without `interrupt_on_speech` | `Speaking` | `SpeechStarted`; the response plays on |
//! | `Judging` | speech starts | `Speaking` or `Candidate`, the judged audio joined to it | `CancelTurn` (the judged turn), `SpeechStarted` |
//! | `Speaking` | speech ends (VAD, `speech_end`, `max_utterance`, a stream's endpoint) | `Silent` | `SpeechStopped`; a response in progress is interrupted; a new response transcribes the utterance (without `answer_turns`, or over a response it does not interrupt: transcribed for the history only, `unanswered`) |
//! | `Candidate` | it has voiced `min_interruption` | `Speaking` | the response is interrupted |
//! | `Candidate` | `false_interruption_timeout` after it began | `Silent` | `CancelTurn`, `FalseAlarm`; the response resumes |
//! | `Candidate` | speech ends | `Judging` | `SpeechStopped`, `StartAsr` (or its stream finalizes) |
//! | `Judging` | transcript: nothing, backchannels or an ASR failure, response still on | `Silent` | `Transcript`, `FalseAlarm`, `TurnReleased`; the response resumes (`PlaybackResumed`) |
//! | `Judging` | transcript: nothing, no response left | `Silent` | `Transcript`, `TurnReleased` |
//! | `Judging` | transcript: words | `Silent` | `Transcript`; the response is interrupted; a new response answers the words (or transcribes them with audio carried from a cancelled turn) |
//!
//! Speech starts and ends with server VAD until the client sends `speech_start` or `speech_end`;
//! from then on server VAD is off for the session, and an utterance it was capturing is the
//! client's to end.
//!
//! **The bot side** (`Option<Response>`, in `response`). At most one response. Its words
//! (`Reply`: `Transcribing`, `Generating`, `AwaitingTools`, `Complete`) and its audio
//! (`PlayState` in `playback`: `NotStarted`, `HeldBeforeStart`, `Playing`, `Paused`) are two
//! enums with their own tables; together:
//!
//! | state | on | next | outputs |
//! |---|---|---|---|
//! | none | `Speaking` ends | `Transcribing` | `StartAsr` (or the stream finalizes) |
//! | none | a `text`, or a judged candidate's words | `Generating` | `Transcript`, `StartLlm` |
//! | any | `respond` (the response in progress, if any, is interrupted first) | `Generating` (`Waiting` while user turns are transcribed for the history) | `StartLlm` with the history as it stands |
//! | `Waiting` | the last of those turns' words are in the history | `Generating` | `StartLlm` |
//! | none | a turn spoken over an answer it did not interrupt waits (with `answer_turns`), the user is silent | `Generating` or `Waiting` | as `respond` |
//! | none | `idle_timeout` since the last response played out, nothing else going on | `Generating` | `IdleTimeout`, `StartLlm` |
//! | any | `say` (likewise) | `Complete` | `ResponseText` per sentence, then `StartTts`: the words verbatim |
//! | any | `cancel` | none | as an interruption, below |
//! | `Transcribing` | the transcript | `Generating` | `Transcript`, `StartLlm`; empty: `ResponseDone` (`no_speech`) |
//! | `Generating` | tokens; tool calls | `Generating` | `ResponseText` per sentence; `ToolCall`, `StartTool` |
//! | `Generating` | the LLM's stream ends | `Complete`, or `AwaitingTools` with tools called | `ResponseText` (the rest) |
//! | `AwaitingTools` | the round's last tool result | `Generating` | `ToolResult`, `StartLlm` (past `max_tool_rounds`: failed) |
//! | `Generating`, `AwaitingTools` | a tool runs `tool_filler_delay` while the bot is silent | same | `ResponseText` (the filler phrase, once) |
//! | any | a sentence waits, none in synthesis, backlog under `max_tts_backlog` | same | `StartTts` |
//! | `NotStarted` | audio is synthesized | `Playing` | `AudioStart`, then `Audio` paced at real time plus the lead |
//! | `NotStarted`, `Playing` | the user side holds | `HeldBeforeStart`, `Paused` | `PlaybackPaused` if `Playing` |
//! | `HeldBeforeStart`, `Paused` | the hold ends (a false alarm) | `NotStarted`, `Playing` | `PlaybackResumed` if `Paused` |
//! | `Complete`, not held | the clock passes the last sample | none | `ResponseDone` (completed); history: what was said |
//! | any | an interruption (a turn ends, a `text`, a confirmed or judged barge-in) | none | `CancelTurn`, `Interrupted`, `ResponseDone` (interrupted); history: what was heard; a transcript not yet known carries its audio into the next turn |
//! | any | a provider fails (the transcript, the LLM, the sentence in synthesis) | none | `CancelTurn`, `ProviderError`, `ResponseDone` (failed) |
//!
//! Every ended turn is released (`TurnReleased`) or cancelled (`CancelTurn`). A provider event for
//! a turn that is neither the response's nor the judged utterance's is dropped. The streaming
//! ASR's policy is `live_asr`, with its own table.
//!
//! The files: `vocabulary` (the settings, inputs and outputs), `user`, `barge_in`, `response`,
//! `playback` (the clock, pacing and the queue of audio to send), `live_asr`, `unanswered` (user
//! turns transcribed for the history only, with their own table), and `invariants`
//! (the promises below as a `Checker`, with the `invariants` feature).
//!
//! Invariants (checked by the tests):
//! - no audio is output while a response is held, and none of a turn after its `interrupted`;
//! - every response ends with exactly one `ResponseDone`; a provider event for any other turn than the
//!   current response's (or the judged utterance's) is dropped;
//! - audio sent never exceeds audio produced, and after a false alarm the bytes sent continue exactly
//!   where they stopped: the client receives the same bytes as without the false alarm;
//! - history holds only what the user heard of the assistant.
//!
//! `invariants::Checker` (with the `invariants` feature) states these as an owner observes them.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use crate::history::{ChatMessage, History, HistoryPart};
use crate::types::{SampleRate, Time, TurnId};
use crate::vad::{VadEvent, VoiceDetector};

mod barge_in;
#[cfg(any(test, feature = "invariants"))]
pub mod invariants;
mod live_asr;
mod playback;
mod response;
#[cfg(test)]
mod tests;
mod unanswered;
mod user;
mod vocabulary;

pub use live_asr::{AsrStreamEvent, MAX_STREAMS};
use live_asr::{LiveStreams, Then};
use playback::Pacing;
use response::{Response, Spoken};
use unanswered::Unanswered;
pub use unanswered::MAX_TRANSCRIBING;
use user::{Source, User};
pub use vocabulary::{
    ClientTool, Event, Output, ProviderEvent, ProviderFailure, Rejection, ResponseOverrides,
    ResponseStatus, SessionConfig, SessionUpdate, Stage, Timings, ToolRunner, VadTuning,
};

/// The turn-taking state machine of one connection. See the module docs.
pub struct Session {
    cfg: SessionConfig,
    next_turn: u64,
    history: History,
    vad: Option<VoiceDetector>,
    /// The user's own speech level (dBFS), learned from their server-VAD turns.
    user_level_dbfs: Option<f32>,
    /// The speech floor last given to the VAD.
    vad_floor: Option<f32>,
    /// Samples of input received so far (16 kHz).
    input_pos: u64,
    preroll: VecDeque<i16>,
    preroll_cap: usize,
    /// The user side.
    user: User,
    /// The bot side.
    response: Option<Response>,
    /// User turns being transcribed for the history only, in turn order (`unanswered`).
    transcribing: VecDeque<Unanswered>,
    /// A turn spoken during a response it did not interrupt waits for that response to end,
    /// to be answered then (`SessionConfig::interrupt_on_speech` off).
    answer_pending: bool,
    /// The last response played out then, and the user has not spoken since
    /// (`SessionConfig::idle_timeout`).
    idle_since: Option<Time>,
    /// What the last response that ended said, for a client truncating it.
    last_spoken: Option<Spoken>,
    /// The client's connection dropped and it has not come back yet (`handle_disconnect`).
    disconnected: bool,
    /// The streaming ASR's recognition streams.
    live: LiveStreams,
    /// Audio of a turn cancelled before its transcript was known: the user had only paused, so
    /// it is prepended to the next utterance.
    carry_audio: Vec<i16>,
    outputs: VecDeque<Output>,
    /// Reused buffer for the VAD's decisions on one chunk.
    vad_events: Vec<VadEvent>,
    pacing: Pacing,
    /// A typical speaking rate (14 characters a second) at the output rate, to estimate the
    /// length of a sentence before its synthesis is finished.
    samples_per_char: f64,
    /// The last tool calls that are no longer pending, newest last: a client's result for one
    /// is refused for what it is (late, a second answer, the server's) rather than unknown.
    settled_calls: VecDeque<(String, Settled)>,
}

/// How many settled tool calls are remembered (`Session::settled_calls`).
const SETTLED_CALLS_KEPT: usize = 32;

/// What became of a tool call that is no longer pending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Settled {
    /// The client answered it.
    Answered,
    /// It timed out, or its response ended, before the client answered.
    Ended,
    /// The server runs it.
    Server,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("user", &self.user.utterance().map(|u| u.turn))
            .field("response", &self.response.as_ref().map(|r| r.turn))
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A new session at time zero.
    pub fn new(cfg: SessionConfig) -> Self {
        let preroll_cap = SampleRate::INTERNAL.samples_in(cfg.preroll) as usize;
        Session {
            history: History::new(cfg.max_history_messages),
            vad: cfg.vad.map(VoiceDetector::new),
            user_level_dbfs: None,
            vad_floor: None,
            next_turn: 1,
            input_pos: 0,
            preroll: VecDeque::with_capacity(preroll_cap),
            preroll_cap,
            user: User::Silent,
            response: None,
            transcribing: VecDeque::new(),
            answer_pending: false,
            idle_since: None,
            live: LiveStreams::new(cfg.streaming_asr),
            carry_audio: Vec::new(),
            last_spoken: None,
            disconnected: false,
            outputs: VecDeque::with_capacity(16),
            vad_events: Vec::with_capacity(4),
            pacing: Pacing::new(&cfg),
            samples_per_char: f64::from(cfg.output_rate.hz()) / 14.0,
            settled_calls: VecDeque::new(),
            cfg,
        }
    }

    /// The next output to act on, in order. See the drain rule in the module docs.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Whether `poll_output` has something (so an owner can skip its output step, which is most
    /// wake-ups: an inbound audio frame usually produces nothing).
    pub fn has_output(&self) -> bool {
        !self.outputs.is_empty()
    }

    /// When `handle_timeout` must be called next, if at all.
    pub fn poll_timeout(&self) -> Option<Time> {
        let candidate = self
            .user
            .candidate()
            .map(|u| u.started_at + self.cfg.false_interruption_timeout);
        let response = self
            .response
            .as_ref()
            .and_then(|r| r.next_timeout(&self.pacing, self.cfg.client_tool_timeout));
        [candidate, response, self.idle_deadline()]
            .into_iter()
            .flatten()
            .min()
    }

    /// When the user's silence after the last response is an idle timeout, if it can be: no
    /// response, nothing being said or transcribed, and nothing waiting to be answered.
    fn idle_deadline(&self) -> Option<Time> {
        let quiet = self.response.is_none()
            && !self.disconnected
            && matches!(self.user, User::Silent)
            && self.transcribing.is_empty()
            && !self.answer_pending;
        let since = self.idle_since.filter(|_| quiet)?;
        Some(since + self.cfg.idle_timeout?)
    }

    /// The language asked of the ASR for the next utterance, if the client chose one.
    pub fn language(&self) -> Option<&Arc<str>> {
        self.cfg.language.as_ref()
    }

    /// The conversation so far.
    pub fn history(&self) -> &[ChatMessage] {
        self.history.messages()
    }

    /// The turn of the response in progress, if any.
    pub fn current_response(&self) -> Option<TurnId> {
        self.response.as_ref().map(|r| r.turn)
    }

    /// Whether the user is speaking (an utterance is being captured).
    pub fn user_speaking(&self) -> bool {
        self.user.utterance().is_some()
    }

    /// The utterance being captured: its turn and its audio so far (pre-roll and any joined
    /// fragment included).
    #[cfg(any(test, feature = "invariants"))]
    pub fn utterance(&self) -> Option<(TurnId, &[i16])> {
        self.user.utterance().map(|u| (u.turn, u.audio.as_slice()))
    }

    /// The samples an `Output::PushAsrStream` names (empty if the turn's utterance is gone).
    pub fn asr_stream_audio(&self, turn: TurnId, samples: Range<usize>) -> &[i16] {
        let captured = self
            .user
            .utterance()
            .filter(|u| u.turn == turn)
            .map(|u| u.audio.get(samples.clone()));
        match captured {
            Some(audio) => audio.unwrap_or_default(),
            None => self.live.ended_audio(turn, samples).unwrap_or_default(),
        }
    }

    /// The recognition stream of `turn` did something (see `live_asr` for what follows).
    pub fn handle_asr_stream(&mut self, now: Time, turn: TurnId, event: AsrStreamEvent) {
        let captured = self
            .user
            .utterance()
            .filter(|u| u.turn == turn)
            .map(|u| u.audio.len());
        match self.live.on_event(turn, event, captured, &mut self.outputs) {
            Then::Nothing => {}
            Then::Interim(text) => self.emit(Event::Transcript {
                turn,
                text,
                is_final: false,
            }),
            Then::Endpoint(text) => {
                self.emit(Event::Transcript {
                    turn,
                    text,
                    is_final: false,
                });
                self.endpoint(now, turn);
            }
            Then::Transcript(text) => {
                self.provider_event(now, turn, ProviderEvent::Transcript(Ok(text)));
            }
            Then::Transcribe(audio, after_stream) => self.outputs.push_back(Output::StartAsr {
                turn,
                audio,
                after_stream,
            }),
        }
        self.pump(now);
    }

    /// Microphone audio: mono PCM16 at 16 kHz (the owner resamples other rates first).
    pub fn handle_audio(&mut self, now: Time, samples: &[i16]) {
        if samples.is_empty() {
            return;
        }
        let end_pos = self.input_pos + samples.len() as u64;
        let max_utterance = SampleRate::INTERNAL.samples_in(self.cfg.max_utterance) as usize;
        let mut force_end = false;
        if let Some(u) = self.user.utterance_mut() {
            u.audio.extend_from_slice(samples);
            if u.source == Source::Client {
                u.voiced_end = end_pos;
            }
            force_end = u.audio.len() >= max_utterance;
        } else if self.vad.is_some() {
            self.push_preroll(samples);
        }
        self.input_pos = end_pos;
        self.detect_voice(now, samples);
        if force_end && self.user.utterance().is_some() {
            self.end_speech(now);
        }
        if let Some(u) = self.user.utterance() {
            self.live.feed(u.turn, u.audio.len(), &mut self.outputs);
        }
        self.check_interruption(now);
        self.pump(now);
    }

    /// The client's own VAD heard the user start. From now on client signals drive turn-taking
    /// and server VAD is switched off for the session.
    pub fn handle_speech_start(&mut self, now: Time) {
        self.vad = None;
        self.preroll = VecDeque::new();
        if let Some(u) = self.user.utterance_mut() {
            // Speech the server's VAD had started is the client's from now on.
            u.source = Source::Client;
        } else {
            self.begin_speech(now, Source::Client, self.input_pos, Vec::new());
        }
        self.pump(now);
    }

    /// The client's own VAD heard the user stop: the utterance is complete.
    pub fn handle_speech_end(&mut self, now: Time) {
        self.vad = None;
        if self.user.utterance().is_some() {
            self.end_speech(now);
        }
        self.pump(now);
    }

    /// A user turn given as text: real words, so any response in progress is interrupted.
    pub fn handle_text(&mut self, now: Time, text: &str) {
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        self.idle_since = None;
        self.interrupt_response(now);
        // A text turn is self-contained: audio of a turn cancelled before its transcript is dropped.
        self.carry_audio.clear();
        let turn = self.new_turn();
        self.emit(Event::Transcript {
            turn,
            text: text.to_owned(),
            is_final: true,
        });
        self.start_text_response(turn, now, now, text);
        self.sync_hold(now);
        self.pump(now);
    }

    /// A user message added to the conversation without a reply: the client asks for one when
    /// it wants (`handle_respond`). Nothing in progress is interrupted.
    /// The message is a turn of its own, told as its final `Transcript`.
    pub fn handle_user_message(&mut self, now: Time, text: &str) {
        let text = text.trim();
        if !text.is_empty() {
            self.idle_since = None;
            let turn = self.new_turn();
            self.emit(Event::Transcript {
                turn,
                text: text.to_owned(),
                is_final: true,
            });
            // After any words still being transcribed, in the order the user gave them.
            self.queue_told_words(turn, text.to_owned());
            self.flush_transcriptions(now);
        }
        self.pump(now);
    }

    /// A user message as audio (mono PCM16 at 16 kHz; the Realtime protocol's audio item): a
    /// turn of its own, transcribed into the history with no reply until one is asked for
    /// (`handle_respond`, which waits for its words). Nothing in progress is interrupted.
    /// `AudioMessage` names its turn, and its final `Transcript` follows. With
    /// `MAX_TRANSCRIBING` turns already waiting for their words, it is refused
    /// (`Rejection::TranscriptionsBusy`).
    pub fn handle_user_audio(&mut self, now: Time, samples: &[i16]) {
        if samples.is_empty() {
            return;
        }
        if self.transcribing.len() >= MAX_TRANSCRIBING {
            self.emit(Event::Rejected(Rejection::TranscriptionsBusy {
                max: MAX_TRANSCRIBING,
            }));
        } else {
            self.idle_since = None;
            let turn = self.new_turn();
            self.emit(Event::AudioMessage {
                turn,
                duration: SampleRate::INTERNAL.duration_of(samples.len() as u64),
            });
            self.start_transcription(turn, samples.to_vec(), 0);
        }
        self.pump(now);
    }

    /// The client asks the bot to say `text` verbatim, now: a bot turn of its own (a greeting, a
    /// scripted line). A response in progress is interrupted first. It is interruptible like any
    /// response, and what the user hears of it enters the history.
    pub fn handle_say(&mut self, now: Time, text: &str) {
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        self.interrupt_response(now);
        let turn = self.new_turn();
        self.start_spoken_response(turn, now, text);
        self.sync_hold(now);
        self.pump(now);
    }

    /// The client asks for a reply now, from the history as it stands: the bot speaks first
    /// through the LLM, or speaks again. A response in progress is interrupted first.
    pub fn handle_respond(&mut self, now: Time) {
        self.handle_respond_with(now, ResponseOverrides::default());
    }

    /// `handle_respond` with settings of its own: the response answers with `overrides` where
    /// they are given, the session's settings elsewhere, and the session's settings do not
    /// change. Client tools named like the server's are refused as `handle_update` refuses them.
    pub fn handle_respond_with(&mut self, now: Time, overrides: ResponseOverrides) {
        if let Some(tools) = &overrides.tools {
            if self.refuse_tool_clash(tools) {
                self.pump(now);
                return;
            }
        }
        self.interrupt_response(now);
        let turn = self.new_turn();
        self.start_llm_response(turn, now, overrides);
        self.sync_hold(now);
        self.pump(now);
    }

    /// `Rejected` (`ToolNameClash`) when a client tool is named like one of the server's.
    fn refuse_tool_clash(&mut self, tools: &[ClientTool]) -> bool {
        let clash = tools
            .iter()
            .enumerate()
            .find(|(_, t)| self.cfg.server_tools.contains(&t.name));
        let Some((index, t)) = clash else {
            return false;
        };
        self.emit(Event::Rejected(Rejection::ToolNameClash {
            index,
            name: t.name.clone(),
        }));
        true
    }

    /// The client's connection dropped without a close: it may come back
    /// (`handle_reconnect`). Meanwhile the response in progress is held where it is, as during a
    /// barge-in (`PlaybackPaused`): nothing is sent, the playback clock stops, and the answer
    /// cannot end. Its words and audio are still made. Needs `SessionConfig::resumable`.
    pub fn handle_disconnect(&mut self, now: Time) {
        self.disconnected = true;
        self.sync_hold(now);
        self.pump(now);
    }

    /// The client is back, having received the first `received` samples of the current
    /// response's audio (none, if it names another turn or none). Sending resumes from the first
    /// sample it did not receive (no earlier than what it surely played before the drop), so it
    /// hears every sample of the answer once; `PlaybackResumed` when the answer had started.
    pub fn handle_reconnect(&mut self, now: Time, received: Option<(TurnId, u64)>) {
        if !std::mem::take(&mut self.disconnected) {
            return;
        }
        // The user's silence counts from their return, not from before they were away.
        if self.idle_since.is_some() {
            self.idle_since = Some(now);
        }
        if let Some(r) = self.response.as_mut() {
            let got = received.filter(|(t, _)| *t == r.turn).map_or(0, |(_, n)| n);
            if let Some(e) = r.resend_from(got) {
                self.emit(e);
            }
        }
        self.sync_hold(now);
        self.pump(now);
    }

    /// The server closes the session now (the drain deadline): a response in progress ends
    /// first, `Interrupted` and `ResponseDone` (interrupted, reason `shutdown`), so the client
    /// knows it was cut. The history keeps what was heard.
    pub fn handle_shutdown(&mut self, now: Time) {
        self.interrupt_response_because(now, Some("shutdown"));
        self.pump(now);
    }

    /// The client played `turn`'s answer up to sample `samples` only, and dropped the rest (the
    /// Realtime protocol's `conversation.item.truncate`). For the response in progress, that is
    /// what the client confirms it played (as `handle_played`); for the last response that
    /// ended, its history message is cut to what was heard up to there. A truncation never adds
    /// words: the history keeps at most what it had. `Truncated` answers, with the text heard;
    /// an older turn, or one with nothing in the history, is `Rejected` (`NotInHistory`).
    pub fn handle_truncate(&mut self, now: Time, turn: TurnId, samples: u64) {
        let rate = self.cfg.output_rate;
        if let Some(r) = self.response.as_mut().filter(|r| r.turn == turn) {
            r.confirm_played(samples);
            let (heard, at) = r.heard_until(samples, self.samples_per_char);
            self.emit(Event::Truncated {
                turn,
                played_ms: rate.ms_of(at),
                heard_text: heard,
            });
        } else if let Some(spoken) = self.last_spoken.as_mut().filter(|s| s.turn == turn) {
            spoken.heard = spoken.heard.min(samples);
            let heard = spoken.heard_text(samples, self.samples_per_char);
            let played_ms = rate.ms_of(spoken.heard);
            if self.history.truncate_assistant(turn, &heard) {
                self.emit(Event::Truncated {
                    turn,
                    played_ms,
                    heard_text: heard,
                });
            } else {
                self.emit(Event::Rejected(Rejection::NotInHistory { turn }));
            }
        } else {
            self.emit(Event::Rejected(Rejection::NotInHistory { turn }));
        }
        self.pump(now);
    }

    /// The client removes `part` of `turn` from the conversation (the Realtime protocol's
    /// `conversation.item.delete`): the next LLM request no longer has it. `Deleted` answers; a
    /// part of the turn being answered is `Rejected` (`InProgress`), and a part the history does
    /// not hold is `Rejected` (`NotInHistory`).
    pub fn handle_delete(&mut self, now: Time, turn: TurnId, part: HistoryPart) {
        let in_progress = self.response.as_ref().is_some_and(|r| r.turn == turn)
            || self.user.utterance().is_some_and(|u| u.turn == turn)
            || self.is_transcribing(turn);
        if in_progress {
            self.emit(Event::Rejected(Rejection::InProgress { turn }));
        } else if self.history.remove(turn, &part) {
            if part == HistoryPart::Assistant {
                self.last_spoken = self.last_spoken.take().filter(|s| s.turn != turn);
            }
            self.emit(Event::Deleted { turn, part });
        } else {
            self.emit(Event::Rejected(Rejection::NotInHistory { turn }));
        }
        self.pump(now);
    }

    /// The client changes its session's settings (`SessionUpdate`; the owner validated them):
    /// they apply from the next response. `SessionUpdated` answers with the effective settings;
    /// a greeting is then spoken as `handle_say` speaks.
    pub fn handle_update(&mut self, now: Time, update: SessionUpdate) {
        // Checked before anything applies: an update is taken whole or not at all.
        if let Some(tools) = &update.tools {
            if self.refuse_tool_clash(tools) {
                self.pump(now);
                return;
            }
        }
        let SessionUpdate {
            instructions,
            min_interruption,
            false_interruption_timeout,
            backchannels,
            history,
            greeting,
            tools,
            voice,
            language,
            vad,
            answer_turns,
            interrupt_on_speech,
            idle_timeout,
        } = update;
        if let Some(i) = instructions {
            self.cfg.system_prompt = i;
        }
        if let Some(d) = min_interruption {
            self.cfg.min_interruption = d;
        }
        if let Some(d) = false_interruption_timeout {
            self.cfg.false_interruption_timeout = d;
        }
        // A candidate is judged a false alarm no sooner than it could have interrupted.
        self.cfg.false_interruption_timeout = self
            .cfg
            .false_interruption_timeout
            .max(self.cfg.min_interruption);
        if let Some(b) = backchannels {
            self.cfg.backchannels = b;
        }
        if let Some(t) = tools {
            self.cfg.client_tools = t.into();
        }
        if let Some(v) = voice {
            self.cfg.voice = Some(v.into());
        }
        if let Some(l) = language {
            self.cfg.language = Some(l.into());
        }
        if let Some(t) = vad {
            self.tune_vad(t);
        }
        if let Some(a) = answer_turns {
            self.cfg.answer_turns = a;
        }
        if let Some(i) = interrupt_on_speech {
            self.cfg.interrupt_on_speech = i;
        }
        if let Some(t) = idle_timeout {
            self.cfg.idle_timeout = t;
        }
        if let Some(messages) = history {
            self.history = History::new(self.cfg.max_history_messages);
            for m in messages {
                match m {
                    ChatMessage::User(text) => self.history.push_user(&text, None),
                    ChatMessage::Assistant { text, .. } => {
                        self.history.push_assistant_text(&text, None);
                    }
                    // Only what was said is seeded: no system prompt (`instructions` is that),
                    // no tool rounds.
                    ChatMessage::System(_) | ChatMessage::Tool { .. } => {}
                }
            }
        }
        self.emit(Event::SessionUpdated {
            instructions: self.cfg.system_prompt.clone(),
            min_interruption: self.cfg.min_interruption,
            false_interruption_timeout: self.cfg.false_interruption_timeout,
            backchannels: self.cfg.backchannels.clone(),
            history_messages: self.history.messages().len(),
            tools: Arc::clone(&self.cfg.client_tools),
            voice: self.cfg.voice.clone(),
            language: self.cfg.language.clone(),
            answer_turns: self.cfg.answer_turns,
            interrupt_on_speech: self.cfg.interrupt_on_speech,
            idle_timeout: self.cfg.idle_timeout,
        });
        match greeting {
            Some(text) => self.handle_say(now, &text),
            None => self.pump(now),
        }
    }

    /// The client answers a client-side tool's `ToolCall` with `result` (JSON text). A result
    /// for a call it was not given, one already answered or one that ended (timed out, or its
    /// response is over) is refused with `Event::Rejected`, and changes nothing.
    pub fn handle_tool_result(&mut self, now: Time, call_id: &str, result: String) {
        match self.client_call_state(call_id) {
            Ok(()) => {
                self.settle_call(call_id.to_owned(), Settled::Answered);
                self.on_tool_result(now, call_id.to_owned(), Ok(result));
            }
            Err(rejection) => self.emit(Event::Rejected(rejection)),
        }
        self.pump(now);
    }

    /// The client stops the response in progress, as a confirmed barge-in would (a push-to-talk
    /// front-end's button): `Interrupted`, then `ResponseDone`; the history keeps what was heard.
    /// Nothing in progress: nothing happens.
    pub fn handle_cancel(&mut self, now: Time) {
        self.interrupt_response(now);
        self.sync_hold(now);
        self.pump(now);
    }

    /// A provider event for `turn`. Events of any turn but the current response's (or the judged
    /// barge-in candidate's) are dropped: that turn was cancelled.
    pub fn handle_provider(&mut self, now: Time, turn: TurnId, event: ProviderEvent) {
        self.provider_event(now, turn, event);
        self.pump(now);
    }

    fn provider_event(&mut self, now: Time, turn: TurnId, event: ProviderEvent) {
        if self.user.judging(turn) {
            if let ProviderEvent::Transcript(result) = event {
                self.resolve_judged(now, result);
            }
        } else if self.is_transcribing(turn) {
            if let ProviderEvent::Transcript(result) = event {
                self.on_unanswered_transcript(now, turn, result);
            }
        } else if self.response.as_ref().is_some_and(|r| r.turn == turn) {
            self.on_response_event(now, event);
        }
    }

    /// The client confirms it has played the first `samples` samples of `turn`'s response (a
    /// Twilio mark came back). With `client_discards_on_pause`, a pause rewinds to no earlier
    /// than this. Anything else is ignored.
    pub fn handle_played(&mut self, now: Time, turn: TurnId, samples: u64) {
        if let Some(r) = self.response.as_mut().filter(|r| r.turn == turn) {
            r.confirm_played(samples);
        }
        self.pump(now);
    }

    /// Time passed: time out a barge-in candidate or a client-side tool, speak a filler, pace
    /// audio, end the response.
    pub fn handle_timeout(&mut self, now: Time) {
        self.time_out_candidate(now);
        self.time_out_client_tools(now);
        self.speak_filler_if_due(now);
        if self.idle_deadline().is_some_and(|at| now >= at) {
            if let Some(since) = self.idle_since.take() {
                let turn = self.new_turn();
                self.emit(Event::IdleTimeout {
                    turn,
                    since,
                    at: now,
                });
                self.start_llm_response(turn, now, ResponseOverrides::default());
                self.sync_hold(now);
            }
        }
        self.pump(now);
    }

    fn new_turn(&mut self) -> TurnId {
        let t = TurnId(self.next_turn);
        self.next_turn += 1;
        t
    }

    fn emit(&mut self, e: Event) {
        self.outputs.push_back(Output::Event(e));
    }

    /// Aborts every provider call of `turn`, its recognition stream included.
    fn cancel_turn(&mut self, turn: TurnId) {
        self.live.cancel(turn);
        self.outputs.push_back(Output::CancelTurn(turn));
    }

    /// `turn` needs nothing more from providers (its recognition stream included).
    fn release_turn(&mut self, turn: TurnId) {
        self.live.cancel(turn);
        self.outputs.push_back(Output::TurnReleased(turn));
    }
}
