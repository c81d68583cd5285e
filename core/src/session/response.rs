//! The bot side: the response to one turn, from its words (`Reply`: transcript, LLM rounds, tools)
//! to its speech (sentences, TTS one at a time, paced audio, `Playback`), and how it ends.
//!
//! A response has two state machines that run side by side: `Reply` says where its words come
//! from, `PlayState` (in `playback`) where its audio stands; `Filler` is the tool filler phrase.
//! Each enum's doc has its transitions. The session holds at most one `Response`
//! (`Session::response`); it ends in exactly one of three ways, each with one `ResponseDone`:
//! completed (`pump`, once the last sample was heard), interrupted (`interrupt_response`) or
//! failed (`fail_response`).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use super::playback::{Pacing, PcmQueue, PlayState, Playback};
use super::{
    ClientTool, Event, Output, ProviderEvent, ProviderFailure, Rejection, ResponseOverrides,
    ResponseStatus, Session, SessionConfig, Settled, Stage, Timings, ToolRunner,
    SETTLED_CALLS_KEPT,
};
use crate::history::{ChatMessage, ToolCall};
use crate::splitter::SentenceSplitter;
use crate::types::{Time, TurnId};
use bytes::Bytes;

/// Where the response's words stand. The transitions:
///
/// | state | on | next | outputs |
/// |---|---|---|---|
/// | (new) | the user's speech ended | `Transcribing` | `StartAsr`, or the stream finalizes |
/// | (new) | a `text` turn, or a judged candidate's words | `Generating` | `StartLlm` |
/// | (new) | `respond`: a reply from the history as it stands | `Generating` | `StartLlm` |
/// | (new) | `say`: words given verbatim | `Complete` | `ResponseText` per sentence (then TTS) |
/// | `Transcribing` | the transcript, with words | `Generating` | `Transcript`, `StartLlm` |
/// | `Transcribing` | the transcript, empty | (ended) | `Transcript`, `ResponseDone` (`no_speech`) |
/// | `Generating` | a token | `Generating` | `ResponseText` per completed sentence |
/// | `Generating` | a tool call | `Generating` | `ToolCall`, `StartTool` |
/// | `Generating`, `AwaitingTools` | a tool result | same | `ToolResult` |
/// | `Generating` | the LLM's stream ends, no tool called | `Complete` | `ResponseText` (the rest) |
/// | `Generating` | the LLM's stream ends, tools called | `AwaitingTools` | `ResponseText` (the rest) |
/// | `AwaitingTools` | every tool has answered (at once if they all had) | `Generating` | `StartLlm` with the round in history |
/// | `AwaitingTools` | ... past `max_tool_rounds` | (ended) | `ProviderError`, `ResponseDone` (failed) |
///
/// An event the state does not expect (a token after the stream ended, a second transcript) is
/// ignored. A failed transcript or LLM stream ends the response in any state.
#[derive(Debug)]
enum Reply {
    /// The user's words are being transcribed. The utterance is kept until its transcript
    /// arrives, so that it can be carried into the next turn if this one is cancelled first.
    Transcribing { utterance: Arc<[i16]> },
    /// A reply from the history, waiting for the user's words still being transcribed into it
    /// (`unanswered`): its LLM round starts once they are all there.
    Waiting,
    /// An LLM round is streaming; `tools` are the calls it made so far (some may have answered).
    Generating { tools: Vec<PendingTool> },
    /// The round's stream ended with tool calls, and some have not answered yet.
    AwaitingTools { tools: Vec<PendingTool> },
    /// The words are all known: no LLM round runs or will run.
    Complete,
}

impl Reply {
    /// The tool calls of the current round.
    fn tools(&self) -> &[PendingTool] {
        match self {
            Reply::Generating { tools } | Reply::AwaitingTools { tools } => tools,
            Reply::Transcribing { .. } | Reply::Waiting | Reply::Complete => &[],
        }
    }

    fn tools_mut(&mut self) -> &mut [PendingTool] {
        match self {
            Reply::Generating { tools } | Reply::AwaitingTools { tools } => tools,
            Reply::Transcribing { .. } | Reply::Waiting | Reply::Complete => &mut [],
        }
    }
}

/// A tool call of the current round.
#[derive(Debug)]
struct PendingTool {
    call: ToolCall,
    /// Who runs it; a client-side call times out on the session's clock.
    runs: ToolRunner,
    started_at: Time,
    result: Option<String>,
}

/// The filler phrase, spoken once per response when a tool keeps the user waiting in silence:
///
/// | state | on | next |
/// |---|---|---|
/// | `NotDue` | the round's first tool call | `Due(now + tool_filler_delay)` |
/// | `Due` | the round's tools all answered | `NotDue` |
/// | `Due(t)` | `t`, a tool running, the bot silent | `Spoken` (`ResponseText`, then TTS) |
/// | `Due(t)` | `t`, a tool running, the bot speaking | `Due(when it stops, 100 ms on at least)` |
/// | `Due(t)` | `t`, no tool running | `NotDue` |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Filler {
    NotDue,
    Due(Time),
    Spoken,
}

/// One sentence of a response's speech.
#[derive(Debug)]
pub(super) struct Sentence {
    text: String,
    /// A filler phrase voxd spoke itself: heard, but not the model's words.
    filler: bool,
    /// Position of its first sample in the response audio.
    start: u64,
    /// Position just past its last sample, once synthesized.
    end: Option<u64>,
}

/// The bot's answer to one turn.
#[derive(Debug)]
pub(super) struct Response {
    pub(super) turn: TurnId,
    /// The system prompt it answers with, as it was when the response began (or as the
    /// response's own overrides set it).
    instructions: String,
    timings: Timings,
    reply: Reply,
    tool_rounds: u32,
    filler: Filler,
    splitter: SentenceSplitter,
    sentences: Vec<Sentence>,
    /// The next sentence to hand to TTS.
    next_tts: usize,
    /// The sentence being synthesized: at most one at a time.
    tts_active: Option<usize>,
    /// Synthesized, unsent audio.
    pending: PcmQueue,
    /// Samples synthesized.
    produced: u64,
    /// Samples sent.
    sent: u64,
    play: Playback,
    /// The client-side tools offered to the LLM, as they were when the response began.
    client_tools: Arc<[ClientTool]>,
    /// The voice it speaks with, as it was when the response began.
    voice: Option<Arc<str>>,
    /// With `Pacing::retains`: the frames sent that the client may not have played,
    /// oldest first, from sample `in_flight_at`.
    in_flight: VecDeque<Bytes>,
    in_flight_at: u64,
    /// Samples the client confirmed it played (`Session::handle_played`).
    confirmed: u64,
}

impl Response {
    fn new(turn: TurnId, speech_end: Time, cfg: &SessionConfig, reply: Reply) -> Self {
        Response {
            client_tools: Arc::clone(&cfg.client_tools),
            voice: cfg.voice.clone(),
            instructions: cfg.system_prompt.clone(),
            in_flight: VecDeque::new(),
            in_flight_at: 0,
            confirmed: 0,
            turn,
            timings: Timings {
                speech_end: Some(speech_end),
                ..Timings::default()
            },
            reply,
            tool_rounds: 0,
            filler: Filler::NotDue,
            splitter: SentenceSplitter::new(cfg.min_clause_chars),
            sentences: Vec::new(),
            next_tts: 0,
            tts_active: None,
            pending: PcmQueue::default(),
            produced: 0,
            sent: 0,
            play: Playback::default(),
        }
    }

    /// Whether it waits for the user's words to reach the history (`Reply::Waiting`).
    pub(super) fn is_waiting(&self) -> bool {
        matches!(self.reply, Reply::Waiting)
    }

    /// No more audio will be produced.
    fn all_produced(&self) -> bool {
        matches!(self.reply, Reply::Complete)
            && self.tts_active.is_none()
            && self.next_tts == self.sentences.len()
    }

    /// Holds or releases the response (see `PlayState`); the event to tell the client, if any.
    pub(super) fn set_held(&mut self, hold: bool, now: Time, pacing: &Pacing) -> Option<Event> {
        let turn = self.turn;
        if hold {
            if !self.play.hold(now, self.sent, pacing.rate) {
                return None;
            }
            let rewound_to = pacing.discards.then(|| self.rewind(pacing));
            Some(Event::PlaybackPaused { turn, rewound_to })
        } else {
            self.play
                .release(now)
                .then_some(Event::PlaybackResumed { turn })
        }
    }

    /// Where the client has surely played to: what it confirmed, or, without confirmations,
    /// the clock less the lead (the most the client can be behind it).
    fn surely_played(&self, pacing: &Pacing) -> u64 {
        self.confirmed
            .max(self.play.played().saturating_sub(pacing.lead))
            .min(self.sent)
    }

    /// Forgets the in-flight frames the client has surely played.
    fn trim_in_flight(&mut self, pacing: &Pacing) {
        let played = self.surely_played(pacing);
        while let Some(front) = self.in_flight.front() {
            let end = self.in_flight_at + front.len() as u64 / 2;
            if end > played {
                break;
            }
            self.in_flight_at = end;
            self.in_flight.pop_front();
        }
    }

    /// The client dropped what it had buffered: everything sent past what it surely played goes
    /// back to the queue, to be sent again after a false alarm. Returns the new position.
    fn rewind(&mut self, pacing: &Pacing) -> u64 {
        self.trim_in_flight(pacing);
        let to = self.surely_played(pacing);
        self.rewind_to(to)
    }

    /// A client that lost its connection received the first `received` samples: while paused,
    /// what it did not receive goes back to the queue.
    pub(super) fn resend_from(&mut self, received: u64) -> Option<Event> {
        (self.play.state() == PlayState::Paused).then(|| Event::Rewound {
            turn: self.turn,
            to: self.rewind_to(received),
        })
    }

    /// Everything sent from sample `to` on (no earlier than the frames still kept) goes back to
    /// the queue, to be sent again. Returns the new position.
    pub(super) fn rewind_to(&mut self, to: u64) -> u64 {
        let to = to.max(self.in_flight_at).min(self.sent);
        let mut pos = self.in_flight_at;
        let mut back = Vec::with_capacity(self.in_flight.len());
        for mut frame in self.in_flight.drain(..) {
            let len = frame.len() as u64 / 2;
            if pos + len > to {
                if pos < to {
                    frame = frame.split_off(((to - pos) * 2) as usize);
                }
                back.push(frame);
            }
            pos += len;
        }
        for frame in back.into_iter().rev() {
            self.pending.push_front(frame);
        }
        self.in_flight_at = to;
        self.sent = to;
        self.play.rewind(to);
        to
    }

    /// The client confirms it played the first `samples` samples.
    pub(super) fn confirm_played(&mut self, samples: u64) {
        self.confirmed = self.confirmed.max(samples.min(self.sent));
    }

    /// What the client heard if it played up to `samples` (no further than was sent), and
    /// where that is.
    pub(super) fn heard_until(&self, samples: u64, samples_per_char: f64) -> (String, u64) {
        let at = samples.min(self.sent);
        (self.heard_text(at, false, samples_per_char), at)
    }

    /// When the response needs a wake-up: the filler phrase, the next batch of audio, or the end
    /// of its last sample.
    pub(super) fn next_timeout(&self, pacing: &Pacing, tool_timeout: Duration) -> Option<Time> {
        let filler = match self.filler {
            Filler::Due(at) => Some(at),
            Filler::NotDue | Filler::Spoken => None,
        };
        let tool = self
            .reply
            .tools()
            .iter()
            .filter(|t| t.runs == ToolRunner::Client && t.result.is_none())
            .map(|t| t.started_at + tool_timeout)
            .min();
        let filler = match (filler, tool) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let mut audio = None;
        if self.play.state() == PlayState::Playing {
            let frame_ready = self.pending.samples() >= pacing.frame
                || (self.tts_active.is_none() && !self.pending.is_empty());
            if frame_ready {
                // The next batch of frames is due when the clock is within the lead of its
                // end: one wake-up (and one socket write) per pacing interval.
                let due = (self.sent + pacing.batch).saturating_sub(pacing.lead);
                audio = self.play.time_of(due, pacing.rate);
            } else if self.all_produced() && self.pending.is_empty() {
                audio = self.play.time_of(self.produced, pacing.rate);
            }
        }
        match (filler, audio) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Starts playing once there is audio, and sends what is due: whole frames up to `lead`
    /// ahead of the clock (a short last frame once no synthesis is in flight).
    fn send_due_audio(&mut self, now: Time, pacing: &Pacing, out: &mut impl Extend<Output>) {
        let turn = self.turn;
        if self.play.state() == PlayState::NotStarted && !self.pending.is_empty() {
            self.timings.first_audio_sent = Some(now);
            self.play.start(now);
            let ttft = self
                .timings
                .speech_end
                .map_or(Duration::ZERO, |t| now.saturating_since(t));
            out.extend([Output::Event(Event::AudioStart {
                turn,
                sample_rate: pacing.rate,
                ttft,
            })]);
        }
        if self.play.state() != PlayState::Playing {
            return;
        }
        self.play.advance(now, self.sent, pacing.rate);
        loop {
            let available = self.pending.samples();
            // A short last frame goes out once no synthesis is in flight: the tail of a
            // sentence must not wait for a next one that may be a tool call away.
            let n = if available >= pacing.frame {
                pacing.frame
            } else if self.tts_active.is_none() && available > 0 {
                available
            } else {
                break;
            };
            if self.sent + n > self.play.played() + pacing.lead {
                break;
            }
            let pcm = self.pending.split_to(n as usize * 2);
            let at = self.sent;
            self.sent += n;
            if pacing.retains {
                self.in_flight.push_back(pcm.clone());
            }
            out.extend([Output::Audio { turn, pcm, at }]);
        }
        if pacing.retains {
            self.trim_in_flight(pacing);
        }
    }

    /// Hands the next sentence to TTS, one at a time, unless `backlog` samples wait unsent.
    fn start_next_tts(&mut self, backlog: u64, out: &mut impl Extend<Output>) {
        if self.tts_active.is_none()
            && self.next_tts < self.sentences.len()
            && (self.pending.is_empty() || self.pending.samples() < backlog)
        {
            let seq = self.next_tts;
            self.next_tts += 1;
            self.tts_active = Some(seq);
            self.sentences[seq].start = self.produced;
            out.extend([Output::StartTts {
                turn: self.turn,
                seq: seq as u32,
                text: self.sentences[seq].text.clone(),
                voice: self.voice.clone(),
            }]);
        }
    }

    /// Every sample was produced and heard (or there was none), and nothing holds it.
    fn played_out(&self) -> bool {
        let heard_all = self.play.started() && self.play.played() >= self.produced;
        !self.play.held()
            && self.all_produced()
            && self.pending.is_empty()
            && (heard_all || self.produced == 0)
    }

    /// The text heard up to playback position `played` (see `heard_text`).
    fn heard_text(
        &self,
        played: u64,
        include_filler: bool,
        fallback_samples_per_char: f64,
    ) -> String {
        heard_text(
            &self.sentences[..self.next_tts],
            self.produced,
            played,
            include_filler,
            fallback_samples_per_char,
        )
    }
}

/// What a response said, kept once it ended: a client may still truncate it to what it played
/// (`Session::handle_truncate`).
#[derive(Debug)]
pub(super) struct Spoken {
    pub(super) turn: TurnId,
    /// The sentences handed to TTS, placed on the response audio.
    sentences: Vec<Sentence>,
    produced: u64,
    /// How far it was heard when it ended.
    pub(super) heard: u64,
}

impl Spoken {
    /// The text heard up to `played`, no further than it was heard when the response ended.
    pub(super) fn heard_text(&self, played: u64, fallback_samples_per_char: f64) -> String {
        heard_text(
            &self.sentences,
            self.produced,
            played.min(self.heard),
            false,
            fallback_samples_per_char,
        )
    }
}

/// The text heard up to playback position `played` of `sentences` (those handed to TTS, of a
/// response that has `produced` samples): whole sentences, and the part of the current one in
/// proportion to its audio, cut back to a word boundary.
///
/// A sentence still being synthesized has no known end yet: its length is estimated from the
/// speaking rate of the finished sentences (`fallback_samples_per_char` before there is one),
/// so a barge-in early in a long sentence does not count words that were never spoken.
fn heard_text(
    sentences: &[Sentence],
    produced: u64,
    played: u64,
    include_filler: bool,
    fallback_samples_per_char: f64,
) -> String {
    let (samples, chars) = sentences
        .iter()
        .filter_map(|s| s.end.map(|e| (e - s.start, s.text.chars().count() as u64)))
        .fold((0, 0), |(a, b), (x, y)| (a + x, b + y));
    let samples_per_char = if chars > 0 {
        samples as f64 / chars as f64
    } else {
        fallback_samples_per_char
    };
    let mut out = String::new();
    // Only sentences handed to TTS have audio (and a position); the rest were never heard.
    for s in sentences {
        if s.start >= played {
            break;
        }
        let estimated = s.start + (s.text.chars().count() as f64 * samples_per_char) as u64;
        let end = s.end.unwrap_or(produced.max(estimated));
        let part = if played >= end {
            s.text.as_str()
        } else {
            let fraction = (played - s.start) as f64 / (end - s.start).max(1) as f64;
            let chars = (s.text.chars().count() as f64 * fraction).floor() as usize;
            let cut = s
                .text
                .char_indices()
                .nth(chars)
                .map_or(s.text.len(), |(i, _)| i);
            // Only whole words count as heard.
            let head = &s.text[..cut];
            let whole_words = match s.text[cut..].chars().next() {
                None => head,
                Some(c) if c.is_whitespace() => head,
                Some(_) => head.rfind(char::is_whitespace).map_or("", |i| &head[..i]),
            };
            whole_words.trim_end()
        };
        if s.filler && !include_filler || part.is_empty() {
            continue;
        }
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(part);
    }
    out
}

/// Starting a response.
impl Session {
    /// A response to an utterance: its transcription starts (whole, or by finalizing its stream).
    /// The first `carried` samples of `audio` are those of a turn cancelled before its transcript.
    pub(super) fn start_asr_response(
        &mut self,
        speech_end: Time,
        turn: TurnId,
        audio: Vec<i16>,
        carried: usize,
    ) {
        let audio: Arc<[i16]> = Arc::from(audio);
        let reply = Reply::Transcribing {
            utterance: audio.clone(),
        };
        self.idle_since = None;
        self.response = Some(Response::new(turn, speech_end, &self.cfg, reply));
        if let Some(after_stream) = self.live.end(turn, &audio, carried, &mut self.outputs) {
            self.outputs.push_back(Output::StartAsr {
                turn,
                audio,
                after_stream,
            });
        }
    }

    /// A response to words already known (a `text` turn, or a judged candidate's transcript).
    pub(super) fn start_text_response(
        &mut self,
        turn: TurnId,
        speech_end: Time,
        now: Time,
        text: &str,
    ) {
        let reply = Reply::Generating { tools: Vec::new() };
        let mut r = Response::new(turn, speech_end, &self.cfg, reply);
        r.timings.asr_done = Some(now);
        self.idle_since = None;
        self.response = Some(r);
        self.commit_user_text(now, text);
    }

    /// A bot turn whose words are given (`say`, a greeting): its sentences go to TTS as they are,
    /// with no LLM round (→ `Complete` at once). What the user hears of it enters the history
    /// like any answer.
    pub(super) fn start_spoken_response(&mut self, turn: TurnId, now: Time, text: &str) {
        let mut r = Response::new(turn, now, &self.cfg, Reply::Complete);
        self.idle_since = None;
        let mut sentences = Vec::new();
        r.splitter.push(text, |s| sentences.push(s));
        sentences.extend(r.splitter.finish());
        self.response = Some(r);
        for s in sentences {
            self.add_sentence(s);
        }
    }

    /// A reply now from the history as it stands (`respond`: the bot speaks first, or again),
    /// with no new user words (→ `Generating`; `Waiting` while user turns are still being
    /// transcribed into the history).
    pub(super) fn start_llm_response(
        &mut self,
        turn: TurnId,
        now: Time,
        overrides: ResponseOverrides,
    ) {
        self.idle_since = None;
        let mut r = Response::new(turn, now, &self.cfg, Reply::Waiting);
        let ResponseOverrides {
            instructions,
            tools,
            voice,
        } = overrides;
        if let Some(i) = instructions {
            r.instructions = i;
        }
        if let Some(t) = tools {
            r.client_tools = t.into();
        }
        if let Some(v) = voice {
            r.voice = Some(v.into());
        }
        self.response = Some(r);
        if self.transcribing.is_empty() {
            self.ask_llm();
        }
    }

    /// A `Waiting` response: the user's words it waited for are in the history (→
    /// `Generating`).
    pub(super) fn run_waiting_response(&mut self, now: Time) {
        let Some(r) = &mut self.response else { return };
        if matches!(r.reply, Reply::Waiting) {
            r.timings.asr_done = Some(now);
            self.ask_llm();
        }
    }

    /// Adds the user's words to the history and asks the LLM (→ `Generating`); after words
    /// still being transcribed, they wait their turn in the queue (→ `Waiting`).
    fn commit_user_text(&mut self, now: Time, text: &str) {
        let Some(turn) = self.response.as_ref().map(|r| r.turn) else {
            return;
        };
        if self.transcribing.is_empty() {
            self.history.push_user(text, Some(turn));
            self.ask_llm();
        } else {
            self.queue_told_words(turn, text.to_owned());
            if let Some(r) = &mut self.response {
                r.reply = Reply::Waiting;
            }
            // Those already known go in now, these words with them if none is still missing.
            self.flush_transcriptions(now);
        }
    }

    /// Asks the LLM for the response's reply, from the history as it stands (→ `Generating`).
    fn ask_llm(&mut self) {
        if self.transcribing.is_empty() {
            // Every word the user said is in the history: this reply answers it all.
            self.answer_pending = false;
        }
        let messages = self.llm_messages();
        let Some(r) = &mut self.response else { return };
        r.reply = Reply::Generating { tools: Vec::new() };
        self.outputs.push_back(Output::StartLlm {
            turn: r.turn,
            messages,
            client_tools: Arc::clone(&r.client_tools),
        });
    }

    /// The LLM's request: the response's instructions, then the history.
    fn llm_messages(&self) -> Vec<ChatMessage> {
        let mut m = Vec::with_capacity(self.history.messages().len() + 1);
        let instructions = self
            .response
            .as_ref()
            .map_or(&self.cfg.system_prompt, |r| &r.instructions);
        m.push(ChatMessage::System(instructions.clone()));
        m.extend_from_slice(self.history.messages());
        m
    }
}

/// Provider events of the current response, one handler each.
impl Session {
    /// A provider event for the current response's turn.
    pub(super) fn on_response_event(&mut self, now: Time, event: ProviderEvent) {
        match event {
            ProviderEvent::Transcript(Ok(text)) => self.on_transcript(now, &text),
            ProviderEvent::Transcript(Err(failure)) => {
                self.fail_response(now, Stage::Asr, failure);
            }
            ProviderEvent::LlmToken(token) => self.on_llm_token(now, &token),
            ProviderEvent::LlmToolCall(call) => self.on_tool_call(now, call),
            ProviderEvent::LlmDone => self.on_llm_done(now),
            ProviderEvent::LlmFailed(failure) => self.fail_response(now, Stage::Llm, failure),
            ProviderEvent::ToolResult { call_id, result } => {
                self.on_tool_result(now, call_id, result);
            }
            ProviderEvent::TtsAudio { seq, samples } => self.on_tts_audio(now, seq, &samples),
            ProviderEvent::TtsDone { seq } => self.on_tts_done(seq),
            ProviderEvent::TtsFailed { seq, failure } => self.on_tts_failed(now, seq, failure),
        }
    }

    /// `Transcribing` → `Generating`, or the end of a response to no words at all.
    fn on_transcript(&mut self, now: Time, text: &str) {
        let Some(r) = &mut self.response else { return };
        if !matches!(r.reply, Reply::Transcribing { .. }) {
            return;
        }
        r.timings.asr_done = Some(now);
        let turn = r.turn;
        self.live.settled(turn, &mut self.outputs);
        let text = text.trim().to_owned();
        self.emit(Event::Transcript {
            turn,
            text: text.clone(),
            is_final: true,
        });
        if text.is_empty() {
            if let Some(r) = self.response.take() {
                self.finish(now, r, ResponseStatus::Completed, Some("no_speech"));
            }
        } else {
            self.commit_user_text(now, &text);
        }
    }

    fn on_llm_token(&mut self, now: Time, token: &str) {
        let Some(r) = &mut self.response else { return };
        if !matches!(r.reply, Reply::Generating { .. }) {
            return;
        }
        r.timings.llm_first_token.get_or_insert(now);
        let mut new_sentences = Vec::new();
        r.splitter.push(token, |s| new_sentences.push(s));
        for s in new_sentences {
            self.add_sentence(s);
        }
    }

    fn on_tool_call(&mut self, now: Time, mut call: ToolCall) {
        let filler_delay = self.cfg.tool_filler_delay;
        let Some(r) = &mut self.response else { return };
        let turn = r.turn;
        let Reply::Generating { tools } = &mut r.reply else {
            return;
        };
        // Results are matched by id: give a missing or repeated id a unique one.
        if call.id.is_empty() || tools.iter().any(|t| t.call.id == call.id) {
            call.id = format!("call_{}_{}_{}", turn.0, r.tool_rounds, tools.len());
        }
        r.timings.llm_first_token.get_or_insert(now);
        if tools.is_empty() && r.filler != Filler::Spoken {
            r.filler = Filler::Due(now + filler_delay);
        }
        // A name the client offered is the client's to run; anything else, the server's (its
        // registry answers an unknown name with an error the model sees).
        let runs = if r.client_tools.iter().any(|t| t.name == call.name) {
            ToolRunner::Client
        } else {
            ToolRunner::Server
        };
        tools.push(PendingTool {
            call: call.clone(),
            runs,
            started_at: now,
            result: None,
        });
        self.emit(Event::ToolCall {
            turn,
            call: call.clone(),
            runs,
        });
        if runs == ToolRunner::Server {
            self.settle_call(call.id.clone(), Settled::Server);
            self.outputs.push_back(Output::StartTool { turn, call });
        }
    }

    /// Whether the client may answer `call_id` now: a client-side call of the current response,
    /// still unanswered.
    pub(super) fn client_call_state(&self, call_id: &str) -> Result<(), Rejection> {
        let settled = self
            .settled_calls
            .iter()
            .rev()
            .find(|(id, _)| id == call_id)
            .map(|(_, s)| *s);
        let pending = self.response.as_ref().is_some_and(|r| {
            r.reply
                .tools()
                .iter()
                .any(|t| t.call.id == call_id && t.runs == ToolRunner::Client && t.result.is_none())
        });
        let call_id = call_id.to_owned();
        // Pending first: a model may reuse an id of an earlier response.
        match settled {
            _ if pending => Ok(()),
            Some(Settled::Server) => Err(Rejection::ServerCall { call_id }),
            Some(Settled::Answered) => Err(Rejection::AlreadyAnswered { call_id }),
            Some(Settled::Ended) => Err(Rejection::LateResult { call_id }),
            None => Err(Rejection::UnknownCall { call_id }),
        }
    }

    /// Fails each client-side call past `client_tool_timeout`, as a server tool's timeout does.
    pub(super) fn time_out_client_tools(&mut self, now: Time) {
        let limit = self.cfg.client_tool_timeout;
        let Some(r) = &self.response else { return };
        let expired: Vec<String> = r
            .reply
            .tools()
            .iter()
            .filter(|t| {
                t.runs == ToolRunner::Client && t.result.is_none() && now >= t.started_at + limit
            })
            .map(|t| t.call.id.clone())
            .collect();
        for call_id in expired {
            self.settle_call(call_id.clone(), Settled::Ended);
            let failure = ProviderFailure {
                provider: "client".into(),
                message: format!(
                    "the client did not answer tool call {call_id} within {} ms",
                    limit.as_millis()
                ),
                timed_out: true,
            };
            self.on_tool_result(now, call_id, Err(failure));
        }
    }

    pub(super) fn settle_call(&mut self, call_id: String, how: Settled) {
        if self.settled_calls.len() == SETTLED_CALLS_KEPT {
            self.settled_calls.pop_front();
        }
        self.settled_calls.push_back((call_id, how));
    }

    /// `Generating` → `Complete`, or `AwaitingTools` (and on at once if every tool answered).
    fn on_llm_done(&mut self, now: Time) {
        let Some(r) = &mut self.response else { return };
        let Reply::Generating { tools } = &mut r.reply else {
            return;
        };
        let tools = std::mem::take(tools);
        r.reply = if tools.is_empty() {
            Reply::Complete
        } else {
            Reply::AwaitingTools { tools }
        };
        if let Some(rest) = r.splitter.finish() {
            self.add_sentence(rest);
        }
        self.maybe_next_llm_round(now);
    }

    pub(super) fn on_tool_result(
        &mut self,
        now: Time,
        call_id: String,
        result: Result<String, ProviderFailure>,
    ) {
        let Some(r) = &mut self.response else { return };
        let turn = r.turn;
        let Some(t) = r
            .reply
            .tools_mut()
            .iter_mut()
            .find(|t| t.call.id == call_id)
        else {
            return;
        };
        if t.result.is_some() {
            return;
        }
        let elapsed = now.saturating_since(t.started_at);
        let content = match result {
            Ok(json) => json,
            Err(failure) => {
                let content = format!("{{\"error\":{}}}", json_string(&failure.message));
                self.emit(Event::ProviderError {
                    turn,
                    stage: Stage::Tool,
                    failure,
                });
                content
            }
        };
        if let Some(r) = &mut self.response {
            if let Some(t) = r
                .reply
                .tools_mut()
                .iter_mut()
                .find(|t| t.call.id == call_id)
            {
                t.result = Some(content.clone());
            }
        }
        self.emit(Event::ToolResult {
            turn,
            call_id,
            result: content,
            elapsed,
        });
        self.maybe_next_llm_round(now);
    }

    fn on_tts_audio(&mut self, now: Time, seq: u32, samples: &[i16]) {
        let Some(r) = &mut self.response else { return };
        if r.tts_active != Some(seq as usize) {
            return;
        }
        r.timings.tts_first_audio.get_or_insert(now);
        r.pending.push(samples);
        r.produced += samples.len() as u64;
    }

    fn on_tts_done(&mut self, seq: u32) {
        let Some(r) = &mut self.response else { return };
        if r.tts_active != Some(seq as usize) {
            return;
        }
        r.sentences[seq as usize].end = Some(r.produced);
        r.tts_active = None;
    }

    /// Only the sentence in synthesis can fail the response; an old sentence's failure is stale.
    fn on_tts_failed(&mut self, now: Time, seq: u32, failure: ProviderFailure) {
        let active = self
            .response
            .as_ref()
            .is_some_and(|r| r.tts_active == Some(seq as usize));
        if active {
            self.fail_response(now, Stage::Tts, failure);
        }
    }

    fn add_sentence(&mut self, text: String) {
        let Some(r) = &mut self.response else { return };
        let turn = r.turn;
        r.sentences.push(Sentence {
            text: text.clone(),
            filler: false,
            start: 0,
            end: None,
        });
        self.emit(Event::ResponseText { turn, text });
    }

    /// `AwaitingTools` → `Generating`: once every tool of the round has answered, record the round
    /// and ask the LLM again (or fail, past `max_tool_rounds`).
    fn maybe_next_llm_round(&mut self, now: Time) {
        let Some(r) = &mut self.response else { return };
        let Reply::AwaitingTools { tools } = &mut r.reply else {
            return;
        };
        if tools.iter().any(|t| t.result.is_none()) {
            return;
        }
        let tools = std::mem::take(tools);
        if r.filler != Filler::Spoken {
            r.filler = Filler::NotDue;
        }
        r.tool_rounds += 1;
        let rounds = r.tool_rounds;
        let calls = tools.iter().map(|t| t.call.clone()).collect();
        let results = tools
            .into_iter()
            .map(|t| (t.call.id, t.result.unwrap_or_default()))
            .collect();
        let turn = r.turn;
        self.history.push_tool_round(calls, results, turn);
        if rounds > self.cfg.max_tool_rounds {
            let failure = ProviderFailure {
                timed_out: false,
                provider: "voxd".into(),
                message: format!(
                    "the model called tools {rounds} times in one turn (limit {})",
                    self.cfg.max_tool_rounds
                ),
            };
            self.fail_response(now, Stage::Llm, failure);
            return;
        }
        let messages = self.llm_messages();
        if let Some(r) = &mut self.response {
            r.reply = Reply::Generating { tools: Vec::new() };
            self.outputs.push_back(Output::StartLlm {
                turn: r.turn,
                messages,
                client_tools: Arc::clone(&r.client_tools),
            });
        }
    }
}

/// Time passing: the filler phrase, and the audio.
impl Session {
    /// Speaks the filler phrase if it is due (see `Filler`).
    pub(super) fn speak_filler_if_due(&mut self, now: Time) {
        let rate = self.cfg.output_rate;
        let Some(r) = &mut self.response else { return };
        let Filler::Due(at) = r.filler else { return };
        if now < at {
            return;
        }
        r.filler = Filler::NotDue;
        if r.reply.tools().is_empty() {
            return;
        }
        r.play.advance(now, r.sent, rate);
        let silent = r.next_tts == r.sentences.len()
            && r.tts_active.is_none()
            && r.pending.is_empty()
            && (!r.play.started() || r.play.played() >= r.produced);
        if silent {
            r.filler = Filler::Spoken;
            let text = self.cfg.filler_phrase.clone();
            r.sentences.push(Sentence {
                text: text.clone(),
                filler: true,
                start: 0,
                end: None,
            });
            let turn = r.turn;
            self.emit(Event::ResponseText { turn, text });
        } else {
            // The bot is still speaking: the filler waits until it stops, if the tool is still
            // running then.
            let later = now + Duration::from_millis(100);
            r.filler = Filler::Due(
                r.play
                    .time_of(r.produced, rate)
                    .map_or(later, |t| t.max(later)),
            );
        }
    }

    /// Moves the response forward: sends the audio that is due, starts the next sentence's TTS,
    /// and ends the response when its last sample has been heard.
    pub(super) fn pump(&mut self, now: Time) {
        self.pump_response(now);
        self.answer_if_pending(now);
    }

    /// A turn spoken during a response it did not interrupt is answered once that response has
    /// ended and the user is not speaking (`SessionConfig::interrupt_on_speech` off).
    fn answer_if_pending(&mut self, now: Time) {
        if self.answer_pending && self.response.is_none() && self.user.utterance().is_none() {
            self.answer_pending = false;
            let turn = self.new_turn();
            self.start_llm_response(turn, now, ResponseOverrides::default());
            self.sync_hold(now);
        }
    }

    fn pump_response(&mut self, now: Time) {
        let pacing = self.pacing;
        let Some(r) = &mut self.response else { return };
        r.send_due_audio(now, &pacing, &mut self.outputs);
        // After sending, so that audio sent just now makes room in the backlog.
        r.start_next_tts(pacing.backlog, &mut self.outputs);
        if r.played_out() {
            let Some(r) = self.response.take() else {
                return;
            };
            self.history.push_assistant_text(
                &r.heard_text(r.produced, false, self.samples_per_char),
                Some(r.turn),
            );
            self.finish(now, r, ResponseStatus::Completed, None);
        }
    }
}

/// The end of a response that did not play out.
impl Session {
    /// Cancels the response in progress, if any: `interrupted`, then `response_done`.
    pub(super) fn interrupt_response(&mut self, now: Time) {
        self.interrupt_response_because(now, None);
    }

    /// `interrupt_response`, with the `ResponseDone` reason.
    pub(super) fn interrupt_response_because(&mut self, now: Time, reason: Option<&'static str>) {
        let Some(mut r) = self.response.take() else {
            return;
        };
        self.cancel_turn(r.turn);
        r.play.advance(now, r.sent, self.cfg.output_rate);
        let played = r.play.played();
        if let Reply::Transcribing { utterance } = &r.reply {
            // Cancelled before its transcript: the user had only paused.
            self.carry_audio.clear();
            self.carry_audio.extend_from_slice(utterance);
        } else {
            self.history.push_assistant_text(
                &r.heard_text(played, false, self.samples_per_char),
                Some(r.turn),
            );
        }
        self.emit(Event::Interrupted {
            turn: r.turn,
            played_ms: self.cfg.output_rate.ms_of(played),
            heard_text: r.heard_text(played, true, self.samples_per_char),
        });
        self.finish(now, r, ResponseStatus::Interrupted, reason);
    }

    pub(super) fn fail_response(&mut self, now: Time, stage: Stage, failure: ProviderFailure) {
        let Some(r) = self.response.take() else {
            return;
        };
        self.cancel_turn(r.turn);
        // The client plays out what it was sent; that much was heard.
        self.history.push_assistant_text(
            &r.heard_text(r.sent, false, self.samples_per_char),
            Some(r.turn),
        );
        self.emit(Event::ProviderError {
            turn: r.turn,
            stage,
            failure,
        });
        self.finish(now, r, ResponseStatus::Failed, None);
    }

    fn finish(
        &mut self,
        now: Time,
        mut r: Response,
        status: ResponseStatus,
        reason: Option<&'static str>,
    ) {
        let unanswered: Vec<String> = r
            .reply
            .tools()
            .iter()
            .filter(|t| t.runs == ToolRunner::Client && t.result.is_none())
            .map(|t| t.call.id.clone())
            .collect();
        for id in unanswered {
            self.settle_call(id, Settled::Ended);
        }
        r.timings.done = Some(now);
        self.emit(Event::ResponseDone {
            turn: r.turn,
            status,
            audio_ms: self.cfg.output_rate.ms_of(r.sent),
            timings: r.timings,
            reason,
        });
        if status == ResponseStatus::Completed {
            // Played out: the user's silence from here on may be an idle timeout.
            self.idle_since = Some(now);
        }
        self.release_turn(r.turn);
        // As far as the history says it was heard.
        let heard = match status {
            ResponseStatus::Completed => r.produced,
            ResponseStatus::Interrupted => r.play.played(),
            ResponseStatus::Failed => r.sent,
        };
        let mut sentences = std::mem::take(&mut r.sentences);
        sentences.truncate(r.next_tts);
        self.last_spoken = Some(Spoken {
            turn: r.turn,
            sentences,
            produced: r.produced,
            heard,
        });
        // The user's words spoken over it follow it into the history.
        self.flush_transcriptions(now);
    }
}

/// `s` as a JSON string literal (the core has no JSON library; this is all it needs).
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
