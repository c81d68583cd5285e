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
//! The machine has two sides:
//! - the **user side**: silent, or speaking (an utterance is being captured, started by the client's
//!   `speech_start` or by server VAD); an utterance that ended while the bot was responding, and whose
//!   transcript will decide whether it was a barge-in, is being *judged*;
//! - the **bot side**: at most one `Response`, which goes through the stages ASR → LLM (and tools) →
//!   speaking; while the user's speech may be a barge-in it is *held* (paused).
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
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use crate::history::{ChatMessage, History, ToolCall};
use crate::splitter::SentenceSplitter;
use crate::types::{SampleRate, Time, TurnId};
use crate::vad::{VadConfig, VadEvent, VoiceDetector};

mod live_asr;
pub use live_asr::{AsrStreamEvent, MAX_STREAMS};
use live_asr::{LiveStreams, Then};

/// The session's settings, validated by the server's config loader.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    /// The rate of the response audio sent to the client.
    pub output_rate: SampleRate,
    /// Length of each binary audio frame sent, in ms.
    pub output_frame_ms: u32,
    /// How far audio is sent ahead of the real-time playback clock.
    pub playback_lead: Duration,
    /// Audio is sent in batches of this much (whole frames, at most the lead), one wake-up per
    /// batch.
    pub pacing_interval: Duration,
    /// Server VAD settings; `None` disables server VAD (only client signals start and end speech).
    pub vad: Option<VadConfig>,
    /// Audio kept from before a VAD onset and prepended to the utterance.
    pub preroll: Duration,
    /// An utterance longer than this is ended as if the user had stopped.
    pub max_utterance: Duration,
    /// Speech during a response that lasts this long is an interruption, decided at that moment.
    pub min_interruption: Duration,
    /// A barge-in candidate on which nothing follows for this long is a false alarm.
    pub false_interruption_timeout: Duration,
    /// While the bot speaks, server VAD hears only speech within this many dB of the user's own
    /// speech level (measured on their earlier turns); `None` turns the check off.
    pub barge_in_level_db: Option<f32>,
    /// Words that, alone, are a backchannel ("mhm"): lowercase, without punctuation.
    pub backchannels: Vec<String>,
    /// A tool call still running after this long gets a spoken filler phrase.
    pub tool_filler_delay: Duration,
    /// The filler phrase.
    pub filler_phrase: String,
    /// Tool rounds allowed per response before it fails.
    pub max_tool_rounds: u32,
    /// The system prompt sent first to the LLM.
    pub system_prompt: String,
    /// History bound, in messages.
    pub max_history_messages: usize,
    /// Synthesized-but-unsent audio above which the next sentence's TTS waits.
    pub max_tts_backlog: Duration,
    /// Clauses at least this long (characters) are spoken without waiting for the sentence end.
    pub min_clause_chars: usize,
    /// The ASR can stream: each utterance gets a recognition stream as it is spoken
    /// (`AsrStreamEvent`, and the policy in `live_asr`).
    pub streaming_asr: bool,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            output_rate: SampleRate(16_000),
            output_frame_ms: 20,
            playback_lead: Duration::from_millis(200),
            pacing_interval: Duration::from_millis(60),
            vad: Some(VadConfig::default()),
            preroll: Duration::from_millis(300),
            max_utterance: Duration::from_secs(60),
            min_interruption: Duration::from_millis(500),
            false_interruption_timeout: Duration::from_millis(2000),
            barge_in_level_db: Some(12.0),
            backchannels: [
                "mhm", "mm", "hmm", "uh-huh", "uh huh", "yeah", "yes", "yep", "ok", "okay",
                "right", "sure", "aha", "i see",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
            tool_filler_delay: Duration::from_millis(1000),
            filler_phrase: "One moment while I check that.".to_owned(),
            max_tool_rounds: 4,
            system_prompt: "You are a helpful voice assistant. Answer briefly.".to_owned(),
            max_history_messages: 64,
            max_tts_backlog: Duration::from_millis(3000),
            min_clause_chars: 60,
            streaming_asr: false,
        }
    }
}

/// A pipeline stage, for timings and error codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// Speech to text.
    Asr,
    /// The language model.
    Llm,
    /// A tool call.
    Tool,
    /// Text to speech.
    Tts,
}

impl Stage {
    /// The stage's name in error codes and metrics: `asr`, `llm`, `tool`, `tts`.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Asr => "asr",
            Stage::Llm => "llm",
            Stage::Tool => "tool",
            Stage::Tts => "tts",
        }
    }
}

/// A provider call that failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderFailure {
    /// The provider's name.
    pub provider: String,
    /// What went wrong, safe to show to the client.
    pub message: String,
    /// The provider did not answer in time (rather than answering with an error).
    pub timed_out: bool,
}

/// What a provider call produced, tagged by the owner with the turn it serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProviderEvent {
    /// The ASR result for the turn's utterance.
    Transcript(Result<String, ProviderFailure>),
    /// A piece of the LLM's reply.
    LlmToken(String),
    /// The LLM asked for a tool.
    LlmToolCall(ToolCall),
    /// The LLM's stream ended normally.
    LlmDone,
    /// The LLM's stream failed.
    LlmFailed(ProviderFailure),
    /// Audio of sentence `seq`, mono PCM16 at the session's output rate.
    TtsAudio {
        /// The sentence (`Output::StartTts::seq`).
        seq: u32,
        /// The samples.
        samples: Vec<i16>,
    },
    /// Sentence `seq` is fully synthesized.
    TtsDone {
        /// The sentence.
        seq: u32,
    },
    /// Synthesis of sentence `seq` failed.
    TtsFailed {
        /// The sentence.
        seq: u32,
        /// The failure.
        failure: ProviderFailure,
    },
    /// A tool finished: its JSON result, or a failure.
    ToolResult {
        /// The `ToolCall::id`.
        call_id: String,
        /// The JSON result text, or the failure.
        result: Result<String, ProviderFailure>,
    },
}

/// How a response ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseStatus {
    /// Played to the end.
    Completed,
    /// Cancelled by a barge-in (or a new `text` turn).
    Interrupted,
    /// A provider failed.
    Failed,
}

impl ResponseStatus {
    /// The protocol name: `completed`, `interrupted`, `failed`.
    pub fn as_str(self) -> &'static str {
        match self {
            ResponseStatus::Completed => "completed",
            ResponseStatus::Interrupted => "interrupted",
            ResponseStatus::Failed => "failed",
        }
    }
}

/// The waterfall of one turn, as times since the session started.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Timings {
    /// The user finished speaking (or the `text` arrived): the TTFT clock starts.
    pub speech_end: Option<Time>,
    /// The transcript arrived.
    pub asr_done: Option<Time>,
    /// The LLM's first token arrived.
    pub llm_first_token: Option<Time>,
    /// The first TTS audio arrived.
    pub tts_first_audio: Option<Time>,
    /// The first audio frame was sent.
    pub first_audio_sent: Option<Time>,
    /// The response ended.
    pub done: Option<Time>,
}

/// An event for the client. The server maps each to one protocol message.
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// The user started speaking.
    SpeechStarted {
        /// The turn this speech begins.
        turn: TurnId,
        /// When.
        at: Time,
    },
    /// The user stopped speaking.
    SpeechStopped {
        /// The turn.
        turn: TurnId,
        /// When.
        at: Time,
        /// The utterance's length in audio time.
        duration: Duration,
    },
    /// The transcript of the turn's speech (or the turn's `text`).
    Transcript {
        /// The turn.
        turn: TurnId,
        /// The text.
        text: String,
        /// Whether this is the final transcript.
        is_final: bool,
    },
    /// A sentence (or clause) of the reply, as soon as the LLM has completed it (its speech may
    /// follow later: TTS runs sentence by sentence, at most `max_tts_backlog` ahead).
    ResponseText {
        /// The turn.
        turn: TurnId,
        /// The text.
        text: String,
    },
    /// The LLM asked for a tool; voxd runs it.
    ToolCall {
        /// The turn.
        turn: TurnId,
        /// The call.
        call: ToolCall,
    },
    /// A tool finished.
    ToolResult {
        /// The turn.
        turn: TurnId,
        /// The call's id.
        call_id: String,
        /// The JSON result (or `{"error": ...}`).
        result: String,
        /// How long the tool ran.
        elapsed: Duration,
    },
    /// The first audio frame of the response follows.
    AudioStart {
        /// The turn.
        turn: TurnId,
        /// The audio's rate.
        sample_rate: SampleRate,
        /// Time from the end of the user's turn to now.
        ttft: Duration,
    },
    /// Possible barge-in: audio stopped.
    PlaybackPaused {
        /// The paused turn.
        turn: TurnId,
    },
    /// False alarm: audio continues from where it paused.
    PlaybackResumed {
        /// The resumed turn.
        turn: TurnId,
    },
    /// Real barge-in: the response is cancelled.
    Interrupted {
        /// The cancelled turn.
        turn: TurnId,
        /// How much of the response the user heard, in ms.
        played_ms: f64,
        /// The text the user heard.
        heard_text: String,
    },
    /// The response ended.
    ResponseDone {
        /// The turn.
        turn: TurnId,
        /// How it ended.
        status: ResponseStatus,
        /// Audio of the response sent to the client, in ms.
        audio_ms: f64,
        /// The turn's waterfall.
        timings: Timings,
        /// Why it ended without audio, when it did (`no_speech`).
        reason: Option<&'static str>,
    },
    /// A barge-in candidate (of turn `turn`) was judged a false alarm: the response goes on.
    /// Internal: for metrics and logs; the client sees `playback_resumed` when audio had started.
    FalseAlarm {
        /// The candidate's turn.
        turn: TurnId,
    },
    /// A provider failed; the session goes on.
    ProviderError {
        /// The turn.
        turn: TurnId,
        /// The stage that failed.
        stage: Stage,
        /// The failure.
        failure: ProviderFailure,
    },
}

/// An effect the owner carries out.
#[derive(Clone, Debug, PartialEq)]
pub enum Output {
    /// Send an event.
    Event(Event),
    /// Send a binary frame of response audio (PCM16LE at the output rate).
    Audio {
        /// The turn the audio belongs to.
        turn: TurnId,
        /// The bytes.
        pcm: Bytes,
    },
    /// Transcribe a whole utterance (16 kHz mono PCM16): the ASR's answer comes back as
    /// `ProviderEvent::Transcript`.
    StartAsr {
        /// The turn.
        turn: TurnId,
        /// The audio. It may begin with audio carried over from a turn cancelled before its
        /// transcript (the user had only paused).
        audio: Arc<[i16]>,
        /// The streaming ASR already failed on this utterance (or was skipped as unavailable) and
        /// counted it: start at the ASR chain's fallback.
        after_stream: bool,
    },
    /// Open a recognition stream on the streaming ASR for the utterance of this turn; report
    /// with `Session::handle_asr_stream` (`Opened`, `Unavailable` or `Failed`).
    OpenAsrStream(TurnId),
    /// Send these samples of the turn's utterance on its stream:
    /// `Session::asr_stream_audio(turn, samples)`. Valid until the next `handle_*` call.
    PushAsrStream {
        /// The turn.
        turn: TurnId,
        /// The range, in samples of the utterance (16 kHz mono).
        samples: Range<usize>,
    },
    /// The utterance ended: finalize its stream (the transcript comes back as
    /// `AsrStreamEvent::Finalized`).
    FinalizeAsrStream(TurnId),
    /// Drop the turn's stream: its utterance was dismissed, or is transcribed whole.
    CloseAsrStream(TurnId),
    /// The turn needs nothing more from providers, and its calls are over: forget its
    /// bookkeeping. (`CancelTurn` also releases the turn, after aborting its calls.)
    TurnReleased(TurnId),
    /// Start streaming an LLM reply for the conversation.
    StartLlm {
        /// The turn.
        turn: TurnId,
        /// System prompt and history.
        messages: Vec<ChatMessage>,
    },
    /// Synthesize one sentence.
    StartTts {
        /// The turn.
        turn: TurnId,
        /// The sentence's number within the turn.
        seq: u32,
        /// The text.
        text: String,
    },
    /// Run a tool.
    StartTool {
        /// The turn.
        turn: TurnId,
        /// The call.
        call: ToolCall,
    },
    /// Cancel all provider work of a turn at once.
    CancelTurn(TurnId),
}

/// Who decided that speech started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Client,
    Vad,
}

/// The user's speech being captured.
#[derive(Debug)]
struct Utterance {
    turn: TurnId,
    source: Source,
    started_at: Time,
    /// Input position (samples) where the speech began.
    start_pos: u64,
    /// Voiced audio carried from an earlier barge-in fragment merged into this one.
    carried_voiced: u64,
    /// Input position just past the last voiced audio.
    voiced_end: u64,
    /// Server VAD only: voiced audio counted window by window (pauses excluded).
    vad_voiced: u64,
    audio: Vec<i16>,
    /// Began while a response was active and is not yet decided to be an interruption.
    barge_in: bool,
}

impl Utterance {
    /// How much the user said: for server VAD the voiced windows themselves, so scattered
    /// voiced windows (noise the VAD let through, a distant voice) add up slowly; for a client's
    /// signals, the span from its `speech_start` to the last audio.
    fn voiced_samples(&self) -> u64 {
        self.carried_voiced
            + match self.source {
                Source::Vad => self.vad_voiced,
                Source::Client => self.voiced_end.saturating_sub(self.start_pos),
            }
    }
}

/// A barge-in candidate whose speech ended before it counted as an interruption: its transcript
/// decides between a false alarm and a real interruption.
#[derive(Debug)]
struct Judged {
    turn: TurnId,
    ended_at: Time,
    voiced: u64,
    audio: Vec<i16>,
}

/// One sentence of a response's speech.
#[derive(Debug)]
struct Sentence {
    text: String,
    /// A filler phrase voxd spoke itself: heard, but not the model's words.
    filler: bool,
    /// Position of its first sample in the response audio.
    start: u64,
    /// Position just past its last sample, once synthesized.
    end: Option<u64>,
}

/// The real-time playback clock: how much of the response the user has heard.
///
/// It advances at real time while running, never past what was sent (a client's player that runs
/// dry waits for more), and stops while paused.
#[derive(Debug, Default)]
struct Playback {
    running: bool,
    anchor_time: Time,
    anchor_pos: u64,
    played: u64,
}

impl Playback {
    fn advance(&mut self, now: Time, sent: u64, rate: SampleRate) {
        if !self.running {
            return;
        }
        let pos = self.anchor_pos + rate.samples_in(now.saturating_since(self.anchor_time));
        if pos >= sent {
            // Underrun: the player waits; the clock restarts when more audio is sent.
            self.played = sent;
            self.anchor_time = now;
            self.anchor_pos = sent;
        } else {
            self.played = pos;
        }
    }

    fn run(&mut self, now: Time) {
        self.running = true;
        self.anchor_time = now;
        self.anchor_pos = self.played;
    }

    fn stop(&mut self, now: Time, sent: u64, rate: SampleRate) {
        self.advance(now, sent, rate);
        self.running = false;
    }

    /// When the clock reaches `pos`, if it is running.
    fn time_of(&self, pos: u64, rate: SampleRate) -> Option<Time> {
        // Rounded up, so that at the returned time the clock has reached `pos`.
        let samples = u128::from(pos.saturating_sub(self.anchor_pos));
        let nanos = (samples * 1_000_000_000).div_ceil(u128::from(rate.hz()));
        self.running
            .then(|| self.anchor_time + Duration::from_nanos(nanos as u64))
    }
}

/// A tool call of the current round.
#[derive(Debug)]
struct PendingTool {
    call: ToolCall,
    started_at: Time,
    result: Option<String>,
}

/// The bot's answer to one turn.
#[derive(Debug)]
struct Response {
    turn: TurnId,
    stage: Stage,
    /// The utterance being transcribed, kept until its transcript arrives so that it can be
    /// carried into the next turn if this one is cancelled first.
    asr_audio: Option<Arc<[i16]>>,
    timings: Timings,
    llm_active: bool,
    /// No LLM round is running or will run.
    llm_finished: bool,
    tool_rounds: u32,
    tools: Vec<PendingTool>,
    filler_at: Option<Time>,
    filler_spoken: bool,
    splitter: SentenceSplitter,
    sentences: Vec<Sentence>,
    next_tts: usize,
    tts_active: Option<usize>,
    /// Synthesized, unsent audio.
    pending: PcmQueue,
    produced: u64,
    sent: u64,
    audio_started: bool,
    held: bool,
    play: Playback,
}

impl Response {
    fn new(turn: TurnId, speech_end: Time, min_clause_chars: usize) -> Self {
        Response {
            turn,
            stage: Stage::Asr,
            asr_audio: None,
            timings: Timings {
                speech_end: Some(speech_end),
                ..Timings::default()
            },
            llm_active: false,
            llm_finished: false,
            tool_rounds: 0,
            tools: Vec::new(),
            filler_at: None,
            filler_spoken: false,
            splitter: SentenceSplitter::new(min_clause_chars),
            sentences: Vec::new(),
            next_tts: 0,
            tts_active: None,
            pending: PcmQueue::default(),
            produced: 0,
            sent: 0,
            audio_started: false,
            held: false,
            play: Playback::default(),
        }
    }

    /// No more audio will be produced.
    fn all_produced(&self) -> bool {
        self.llm_finished
            && !self.llm_active
            && self.tools.is_empty()
            && self.tts_active.is_none()
            && self.next_tts == self.sentences.len()
    }

    /// The text heard up to playback position `played`: whole sentences, and the part of the
    /// current one in proportion to its audio, cut back to a word boundary.
    ///
    /// A sentence still being synthesized has no known end yet: its length is estimated from the
    /// speaking rate of the finished sentences (`fallback_samples_per_char` before there is one),
    /// so a barge-in early in a long sentence does not count words that were never spoken.
    fn heard_text(
        &self,
        played: u64,
        include_filler: bool,
        fallback_samples_per_char: f64,
    ) -> String {
        let (samples, chars) = self
            .sentences
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
        for s in &self.sentences[..self.next_tts] {
            if s.start >= played {
                break;
            }
            let estimated = s.start + (s.text.chars().count() as f64 * samples_per_char) as u64;
            let end = s.end.unwrap_or(self.produced.max(estimated));
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
}

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
    user: Option<Utterance>,
    judged: Option<Judged>,
    response: Option<Response>,
    /// The streaming ASR's recognition streams.
    live: LiveStreams,
    /// Audio of a turn cancelled before its transcript was known: the user had only paused, so
    /// it is prepended to the next utterance.
    carry_audio: Vec<i16>,
    outputs: VecDeque<Output>,
    /// Reused buffer for the VAD's decisions on one chunk.
    vad_events: Vec<VadEvent>,
    frame_samples: u64,
    lead_samples: u64,
    /// Audio sent per pacing wake-up (whole frames; at most the lead).
    pacing_samples: u64,
    /// A typical speaking rate (14 characters a second) at the output rate, to estimate the
    /// length of a sentence before its synthesis is finished.
    samples_per_char: f64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("user", &self.user.as_ref().map(|u| u.turn))
            .field("response", &self.response.as_ref().map(|r| r.turn))
            .finish_non_exhaustive()
    }
}

impl Session {
    /// A new session at time zero.
    pub fn new(cfg: SessionConfig) -> Self {
        let preroll_cap = SampleRate::INTERNAL.samples_in(cfg.preroll) as usize;
        let frame_samples = cfg
            .output_rate
            .samples_in_ms(u64::from(cfg.output_frame_ms))
            .max(1);
        // At least one frame is always in flight, whatever the configured lead.
        let lead_samples = cfg
            .output_rate
            .samples_in(cfg.playback_lead)
            .max(frame_samples);
        let pacing_samples = cfg
            .output_rate
            .samples_in(cfg.pacing_interval)
            .div_ceil(frame_samples)
            .max(1)
            * frame_samples;
        let pacing_samples = pacing_samples.min(lead_samples.max(frame_samples));
        Session {
            history: History::new(cfg.max_history_messages),
            vad: cfg.vad.map(VoiceDetector::new),
            user_level_dbfs: None,
            vad_floor: None,
            next_turn: 1,
            input_pos: 0,
            preroll: VecDeque::with_capacity(preroll_cap),
            preroll_cap,
            user: None,
            judged: None,
            response: None,
            live: LiveStreams::new(cfg.streaming_asr),
            carry_audio: Vec::new(),
            outputs: VecDeque::with_capacity(16),
            vad_events: Vec::with_capacity(4),
            frame_samples,
            lead_samples,
            pacing_samples,
            samples_per_char: f64::from(cfg.output_rate.hz()) / 14.0,
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
        let mut next: Option<Time> = None;
        let mut consider = |t: Option<Time>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if let Some(u) = &self.user {
            if u.barge_in {
                consider(Some(u.started_at + self.cfg.false_interruption_timeout));
            }
        }
        if let Some(r) = &self.response {
            if r.filler_at.is_some() && !r.filler_spoken {
                consider(r.filler_at);
            }
            if r.audio_started && !r.held {
                let frame_ready = r.pending.len() as u64 / 2 >= self.frame_samples
                    || (r.tts_active.is_none() && !r.pending.is_empty());
                if frame_ready {
                    // The next batch of frames is due when the clock is within the lead of its
                    // end: one wake-up (and one socket write) per pacing interval.
                    let due = (r.sent + self.pacing_samples).saturating_sub(self.lead_samples);
                    consider(r.play.time_of(due, self.cfg.output_rate));
                } else if r.all_produced() && r.pending.is_empty() {
                    consider(r.play.time_of(r.produced, self.cfg.output_rate));
                }
            }
        }
        next
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
        self.user.is_some()
    }

    /// The utterance being captured: its turn and its audio so far (pre-roll and any joined
    /// fragment included).
    #[cfg(any(test, feature = "invariants"))]
    pub fn utterance(&self) -> Option<(TurnId, &[i16])> {
        self.user.as_ref().map(|u| (u.turn, u.audio.as_slice()))
    }

    /// The samples an `Output::PushAsrStream` names (empty if the turn's utterance is gone).
    pub fn asr_stream_audio(&self, turn: TurnId, samples: Range<usize>) -> &[i16] {
        let captured = self
            .user
            .as_ref()
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
            .as_ref()
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

    /// The streaming ASR heard the speech of `turn` end (its endpoint), before the server VAD's
    /// hangover has passed: the utterance ends now. Ignored unless `turn` is the utterance being
    /// captured by server VAD (a client that sends its own `speech_end` decides when it stops).
    fn endpoint(&mut self, now: Time, turn: TurnId) {
        let vad_utterance = self
            .user
            .as_ref()
            .is_some_and(|u| u.turn == turn && u.source == Source::Vad);
        if vad_utterance {
            self.end_speech(now);
            self.check_interruption(now);
        }
    }

    /// Microphone audio: mono PCM16 at 16 kHz (the owner resamples other rates first).
    pub fn handle_audio(&mut self, now: Time, samples: &[i16]) {
        if samples.is_empty() {
            return;
        }
        let end_pos = self.input_pos + samples.len() as u64;
        let max_utterance = SampleRate::INTERNAL.samples_in(self.cfg.max_utterance) as usize;
        let mut force_end = false;
        if let Some(u) = &mut self.user {
            u.audio.extend_from_slice(samples);
            if u.source == Source::Client {
                u.voiced_end = end_pos;
            }
            force_end = u.audio.len() >= max_utterance;
        } else if self.vad.is_some() {
            self.push_preroll(samples);
        }
        self.input_pos = end_pos;

        if let Some(vad) = &mut self.vad {
            // While a response is under way, speech much quieter than the user's own is not the
            // user (babble, a voice across the room): it neither pauses nor interrupts.
            let floor = self
                .response
                .as_ref()
                .and(self.user_level_dbfs)
                .zip(self.cfg.barge_in_level_db)
                .map(|(level, margin)| level - margin);
            if floor != self.vad_floor {
                self.vad_floor = floor;
                vad.set_speech_floor(floor);
            }
            let mut decisions = std::mem::take(&mut self.vad_events);
            decisions.clear();
            vad.push(samples, |e| decisions.push(e));
            let last_voiced = vad.last_voiced_end();
            let speech_voiced = vad.speech_voiced();
            for e in decisions.drain(..) {
                match e {
                    VadEvent::SpeechStart { at } => {
                        if self.user.is_none() {
                            let preroll: Vec<i16> = self.preroll.drain(..).collect();
                            self.begin_speech(now, Source::Vad, at, preroll);
                        }
                    }
                    VadEvent::SpeechEnd { .. } => {
                        if self.user.as_ref().is_some_and(|u| u.source == Source::Vad) {
                            self.end_speech(now);
                        }
                    }
                }
            }
            self.vad_events = decisions;
            if let Some(u) = &mut self.user {
                if u.source == Source::Vad {
                    u.voiced_end = u.voiced_end.max(last_voiced);
                    u.vad_voiced = speech_voiced;
                }
            }
        }
        if force_end && self.user.is_some() {
            self.end_speech(now);
        }
        if let Some(u) = &self.user {
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
        if let Some(u) = &mut self.user {
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
        if self.user.is_some() {
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
        self.interrupt_response(now);
        // A text turn is self-contained: audio of a turn cancelled before its transcript is dropped.
        self.carry_audio.clear();
        let turn = self.new_turn();
        self.emit(Event::Transcript {
            turn,
            text: text.to_owned(),
            is_final: true,
        });
        let mut r = Response::new(turn, now, self.cfg.min_clause_chars);
        r.timings.asr_done = Some(now);
        self.response = Some(r);
        self.commit_user_text(text);
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
        if self.judged.as_ref().is_some_and(|j| j.turn == turn) {
            if let ProviderEvent::Transcript(result) = event {
                self.resolve_judged(now, result);
            }
        } else if self.response.as_ref().is_some_and(|r| r.turn == turn) {
            self.on_response_event(now, event);
        }
    }

    /// Time passed: pace audio, end the response, speak a filler, time out a barge-in candidate.
    pub fn handle_timeout(&mut self, now: Time) {
        let timed_out = self.user.as_ref().is_some_and(|u| {
            u.barge_in && now >= u.started_at + self.cfg.false_interruption_timeout
        });
        if timed_out {
            // Nothing followed the candidate's start: a false alarm. The client's later
            // `speech_end`, if any, finds no speech in progress and is ignored.
            if let Some(u) = self.user.take() {
                // Nothing of the candidate's turn may run on (a streaming ASR's stream).
                self.cancel_turn(u.turn);
                self.emit(Event::FalseAlarm { turn: u.turn });
            }
            self.sync_hold(now);
        }
        let rate = self.cfg.output_rate;
        if let Some(r) = &mut self.response {
            if r.filler_at.is_some_and(|t| now >= t) && !r.filler_spoken {
                r.filler_at = None;
                if !r.tools.is_empty() {
                    r.play.advance(now, r.sent, rate);
                    let silent = r.next_tts == r.sentences.len()
                        && r.tts_active.is_none()
                        && r.pending.is_empty()
                        && (!r.audio_started || r.play.played >= r.produced);
                    if silent {
                        r.filler_spoken = true;
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
                        // The bot is still speaking: the filler waits until it stops, if the
                        // tool is still running then.
                        let later = now + Duration::from_millis(100);
                        r.filler_at = Some(
                            r.play
                                .time_of(r.produced, rate)
                                .map_or(later, |t| t.max(later)),
                        );
                    }
                }
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

    fn push_preroll(&mut self, samples: &[i16]) {
        let cap = self.preroll_cap;
        if cap == 0 {
            return;
        }
        if samples.len() >= cap {
            self.preroll.clear();
            self.preroll.extend(&samples[samples.len() - cap..]);
        } else {
            let over = (self.preroll.len() + samples.len()).saturating_sub(cap);
            self.preroll.drain(..over);
            self.preroll.extend(samples);
        }
    }

    fn begin_speech(&mut self, now: Time, source: Source, start_pos: u64, audio: Vec<i16>) {
        let turn = self.new_turn();
        let mut u = Utterance {
            turn,
            source,
            started_at: now,
            start_pos,
            carried_voiced: 0,
            voiced_end: start_pos,
            vad_voiced: 0,
            audio,
            barge_in: self.response.is_some(),
        };
        if let Some(j) = self.judged.take() {
            // More speech before the last fragment's transcript arrived: one utterance, judged as
            // a whole. The fragment's transcription is cancelled.
            self.cancel_turn(j.turn);
            let mut audio = j.audio;
            audio.append(&mut u.audio);
            u.audio = audio;
            u.carried_voiced = j.voiced;
            u.barge_in = self.response.is_some();
        }
        self.user = Some(u);
        self.live.begin(turn, &mut self.outputs);
        self.emit(Event::SpeechStarted { turn, at: now });
        self.sync_hold(now);
    }

    fn end_speech(&mut self, now: Time) {
        let Some(u) = self.user.take() else { return };
        if let Some(vad) = &mut self.vad {
            // The user's level is learned from what they said as a turn of their own or as a
            // confirmed interruption, never from a barge-in candidate still in doubt.
            if u.source == Source::Vad && !u.barge_in {
                if let Some(level) = vad.speech_level_dbfs() {
                    self.user_level_dbfs = Some(match self.user_level_dbfs {
                        Some(old) => 0.7 * old + 0.3 * level,
                        None => level,
                    });
                }
            }
            vad.reset_state();
        }
        let voiced = u.voiced_samples();
        self.emit(Event::SpeechStopped {
            turn: u.turn,
            at: now,
            duration: SampleRate::INTERNAL.duration_of(voiced),
        });
        if u.barge_in {
            let audio: Arc<[i16]> = Arc::from(u.audio.as_slice());
            self.judged = Some(Judged {
                turn: u.turn,
                ended_at: now,
                voiced,
                audio: u.audio,
            });
            if let Some(after_stream) = self.live.end(u.turn, &audio, 0, &mut self.outputs) {
                self.outputs.push_back(Output::StartAsr {
                    turn: u.turn,
                    audio,
                    after_stream,
                });
            }
        } else {
            // Speech that began while idle supersedes anything started meanwhile (a `text` turn).
            self.interrupt_response(now);
            let mut audio = std::mem::take(&mut self.carry_audio);
            let carried = audio.len();
            audio.extend_from_slice(&u.audio);
            self.start_asr_response(now, u.turn, audio, carried);
        }
        self.sync_hold(now);
    }

    fn start_asr_response(
        &mut self,
        speech_end: Time,
        turn: TurnId,
        audio: Vec<i16>,
        carried: usize,
    ) {
        let audio: Arc<[i16]> = Arc::from(audio);
        let mut r = Response::new(turn, speech_end, self.cfg.min_clause_chars);
        r.asr_audio = Some(audio.clone());
        self.response = Some(r);
        if let Some(after_stream) = self.live.end(turn, &audio, carried, &mut self.outputs) {
            self.outputs.push_back(Output::StartAsr {
                turn,
                audio,
                after_stream,
            });
        }
    }

    /// A barge-in candidate that has lasted `min_interruption` is an interruption, decided now.
    fn check_interruption(&mut self, now: Time) {
        let min = SampleRate::INTERNAL.samples_in(self.cfg.min_interruption);
        let reached = self
            .user
            .as_ref()
            .is_some_and(|u| u.barge_in && u.voiced_samples() >= min);
        if reached {
            if let Some(u) = &mut self.user {
                u.barge_in = false;
            }
            self.interrupt_response(now);
            self.sync_hold(now);
        }
    }

    /// The transcript of a barge-in candidate decides: a backchannel (or nothing) is a false
    /// alarm, real words interrupt.
    fn resolve_judged(&mut self, now: Time, result: Result<String, ProviderFailure>) {
        let Some(j) = self.judged.take() else { return };
        self.live.settled(j.turn, &mut self.outputs);
        let text = match result {
            Ok(text) => text.trim().to_owned(),
            Err(failure) => {
                // Unknown words must not cut the bot off: treat it as a false alarm.
                self.emit(Event::ProviderError {
                    turn: j.turn,
                    stage: Stage::Asr,
                    failure,
                });
                String::new()
            }
        };
        self.emit(Event::Transcript {
            turn: j.turn,
            text: text.clone(),
            is_final: true,
        });
        let false_alarm = self.is_backchannel(&text);
        if self.response.is_some() && false_alarm {
            self.emit(Event::FalseAlarm { turn: j.turn });
            self.release_turn(j.turn);
            self.sync_hold(now);
            return;
        }
        if text.is_empty() {
            // Nothing said and nothing to resume.
            self.release_turn(j.turn);
            self.sync_hold(now);
            return;
        }
        self.interrupt_response(now);
        if self.carry_audio.is_empty() {
            let mut r = Response::new(j.turn, j.ended_at, self.cfg.min_clause_chars);
            r.timings.asr_done = Some(now);
            self.response = Some(r);
            self.commit_user_text(&text);
        } else {
            // The cancelled turn's words are unknown: transcribe both utterances together.
            let mut audio = std::mem::take(&mut self.carry_audio);
            let carried = audio.len();
            audio.extend_from_slice(&j.audio);
            self.start_asr_response(j.ended_at, j.turn, audio, carried);
        }
        self.sync_hold(now);
    }

    /// Whether `text` is empty or only backchannel words.
    fn is_backchannel(&self, text: &str) -> bool {
        let normalized: String = text
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || c == '\'' || c == '-' {
                    c.to_ascii_lowercase()
                } else {
                    ' '
                }
            })
            .collect();
        let normalized = normalized.split_whitespace().collect::<Vec<_>>().join(" ");
        if normalized.is_empty() {
            return true;
        }
        if self.cfg.backchannels.contains(&normalized) {
            return true;
        }
        normalized
            .split(' ')
            .all(|w| self.cfg.backchannels.iter().any(|b| b == w))
    }

    /// Adds the user's words to the history and asks the LLM.
    fn commit_user_text(&mut self, text: &str) {
        self.history.push_user(text);
        let messages = self.llm_messages();
        let Some(r) = &mut self.response else { return };
        r.stage = Stage::Llm;
        r.llm_active = true;
        self.outputs.push_back(Output::StartLlm {
            turn: r.turn,
            messages,
        });
    }

    fn llm_messages(&self) -> Vec<ChatMessage> {
        let mut m = Vec::with_capacity(self.history.messages().len() + 1);
        m.push(ChatMessage::System(self.cfg.system_prompt.clone()));
        m.extend_from_slice(self.history.messages());
        m
    }

    /// Pauses or resumes the response to match the user side.
    fn sync_hold(&mut self, now: Time) {
        let hold = self.user.as_ref().is_some_and(|u| u.barge_in) || self.judged.is_some();
        let rate = self.cfg.output_rate;
        let Some(r) = &mut self.response else { return };
        if hold == r.held {
            return;
        }
        r.held = hold;
        let turn = r.turn;
        if hold {
            r.play.stop(now, r.sent, rate);
            if r.audio_started {
                self.emit(Event::PlaybackPaused { turn });
            }
        } else if r.audio_started {
            r.play.run(now);
            self.emit(Event::PlaybackResumed { turn });
        }
    }

    /// Cancels the response in progress, if any: `interrupted`, then `response_done`.
    fn interrupt_response(&mut self, now: Time) {
        let Some(mut r) = self.response.take() else {
            return;
        };
        self.cancel_turn(r.turn);
        r.play.stop(now, r.sent, self.cfg.output_rate);
        let played = r.play.played;
        if let Some(audio) = r.asr_audio.take() {
            // Cancelled before its transcript: the user had only paused.
            self.carry_audio.clear();
            self.carry_audio.extend_from_slice(&audio);
        } else {
            self.history
                .push_assistant_text(&r.heard_text(played, false, self.samples_per_char));
        }
        self.emit(Event::Interrupted {
            turn: r.turn,
            played_ms: self.cfg.output_rate.ms_of(played),
            heard_text: r.heard_text(played, true, self.samples_per_char),
        });
        self.finish(now, r, ResponseStatus::Interrupted, None);
    }

    fn fail_response(&mut self, now: Time, stage: Stage, failure: ProviderFailure) {
        let Some(mut r) = self.response.take() else {
            return;
        };
        self.cancel_turn(r.turn);
        // The client plays out what it was sent; that much was heard.
        self.history
            .push_assistant_text(&r.heard_text(r.sent, false, self.samples_per_char));
        r.asr_audio = None;
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
        r.timings.done = Some(now);
        self.emit(Event::ResponseDone {
            turn: r.turn,
            status,
            audio_ms: self.cfg.output_rate.ms_of(r.sent),
            timings: r.timings,
            reason,
        });
        self.release_turn(r.turn);
    }

    fn on_response_event(&mut self, now: Time, event: ProviderEvent) {
        let Some(r) = &mut self.response else { return };
        let turn = r.turn;
        match event {
            ProviderEvent::Transcript(Ok(text)) => {
                if r.stage != Stage::Asr {
                    return;
                }
                r.timings.asr_done = Some(now);
                r.asr_audio = None;
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
                    self.commit_user_text(&text);
                }
            }
            ProviderEvent::Transcript(Err(failure)) => {
                self.fail_response(now, Stage::Asr, failure);
            }
            ProviderEvent::LlmToken(token) => {
                if !r.llm_active {
                    return;
                }
                r.timings.llm_first_token.get_or_insert(now);
                let mut new_sentences = Vec::new();
                r.splitter.push(&token, |s| new_sentences.push(s));
                for s in new_sentences {
                    self.add_sentence(s);
                }
            }
            ProviderEvent::LlmToolCall(mut call) => {
                if !r.llm_active {
                    return;
                }
                // Results are matched by id: give a missing or repeated id a unique one.
                if call.id.is_empty() || r.tools.iter().any(|t| t.call.id == call.id) {
                    call.id = format!("call_{}_{}_{}", turn.0, r.tool_rounds, r.tools.len());
                }
                r.timings.llm_first_token.get_or_insert(now);
                r.stage = Stage::Tool;
                if r.tools.is_empty() && !r.filler_spoken {
                    r.filler_at = Some(now + self.cfg.tool_filler_delay);
                }
                r.tools.push(PendingTool {
                    call: call.clone(),
                    started_at: now,
                    result: None,
                });
                self.emit(Event::ToolCall {
                    turn,
                    call: call.clone(),
                });
                self.outputs.push_back(Output::StartTool { turn, call });
            }
            ProviderEvent::LlmDone => {
                if !r.llm_active {
                    return;
                }
                r.llm_active = false;
                if let Some(rest) = r.splitter.finish() {
                    self.add_sentence(rest);
                }
                self.maybe_next_llm_round(now);
            }
            ProviderEvent::LlmFailed(failure) => {
                self.fail_response(now, Stage::Llm, failure);
            }
            ProviderEvent::ToolResult { call_id, result } => {
                let Some(t) = r.tools.iter_mut().find(|t| t.call.id == call_id) else {
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
                    if let Some(t) = r.tools.iter_mut().find(|t| t.call.id == call_id) {
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
            ProviderEvent::TtsAudio { seq, samples } => {
                if r.tts_active != Some(seq as usize) {
                    return;
                }
                r.timings.tts_first_audio.get_or_insert(now);
                r.pending.push(&samples);
                r.produced += samples.len() as u64;
            }
            ProviderEvent::TtsDone { seq } => {
                if r.tts_active != Some(seq as usize) {
                    return;
                }
                r.sentences[seq as usize].end = Some(r.produced);
                r.tts_active = None;
            }
            ProviderEvent::TtsFailed { seq, failure } => {
                if r.tts_active == Some(seq as usize) {
                    self.fail_response(now, Stage::Tts, failure);
                }
            }
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

    /// Once the LLM round has ended and every tool of the round has answered, record the round
    /// and ask the LLM again; with no tools, the reply is complete.
    fn maybe_next_llm_round(&mut self, now: Time) {
        let Some(r) = &mut self.response else { return };
        if r.llm_active || r.tools.iter().any(|t| t.result.is_none()) {
            return;
        }
        if r.tools.is_empty() {
            r.llm_finished = true;
            return;
        }
        let tools = std::mem::take(&mut r.tools);
        r.filler_at = None;
        r.tool_rounds += 1;
        let rounds = r.tool_rounds;
        let calls = tools.iter().map(|t| t.call.clone()).collect();
        let results = tools
            .into_iter()
            .map(|t| (t.call.id, t.result.unwrap_or_default()))
            .collect();
        self.history.push_tool_round(calls, results);
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
            r.stage = Stage::Llm;
            r.llm_active = true;
            self.outputs.push_back(Output::StartLlm {
                turn: r.turn,
                messages,
            });
        }
    }

    /// Moves the response forward: starts the next sentence's TTS, sends the audio that is due,
    /// and ends the response when its last sample has been heard.
    fn pump(&mut self, now: Time) {
        let rate = self.cfg.output_rate;
        let frame = self.frame_samples;
        let backlog_limit = rate.samples_in(self.cfg.max_tts_backlog);
        let lead = self.lead_samples;
        let Some(r) = &mut self.response else { return };
        let turn = r.turn;
        let all_produced = r.all_produced();

        if !r.held {
            if !r.audio_started && !r.pending.is_empty() {
                r.audio_started = true;
                r.timings.first_audio_sent = Some(now);
                r.play.run(now);
                let ttft = r
                    .timings
                    .speech_end
                    .map_or(Duration::ZERO, |t| now.saturating_since(t));
                self.outputs.push_back(Output::Event(Event::AudioStart {
                    turn,
                    sample_rate: rate,
                    ttft,
                }));
            }
            if r.audio_started {
                r.play.advance(now, r.sent, rate);
                loop {
                    let available = r.pending.len() as u64 / 2;
                    // A short last frame goes out once no synthesis is in flight: the tail of a
                    // sentence must not wait for a next one that may be a tool call away.
                    let n = if available >= frame {
                        frame
                    } else if r.tts_active.is_none() && available > 0 {
                        available
                    } else {
                        break;
                    };
                    if r.sent + n > r.play.played + lead {
                        break;
                    }
                    let pcm = r.pending.split_to(n as usize * 2);
                    r.sent += n;
                    self.outputs.push_back(Output::Audio { turn, pcm });
                }
            }
        }

        // After sending, so that audio sent just now makes room in the backlog.
        if r.tts_active.is_none()
            && r.next_tts < r.sentences.len()
            && (r.pending.is_empty() || (r.pending.len() as u64 / 2) < backlog_limit)
        {
            let seq = r.next_tts;
            r.next_tts += 1;
            r.tts_active = Some(seq);
            r.sentences[seq].start = r.produced;
            self.outputs.push_back(Output::StartTts {
                turn,
                seq: seq as u32,
                text: r.sentences[seq].text.clone(),
            });
        }

        let heard_all = r.audio_started && r.play.played >= r.produced;
        if !r.held && all_produced && r.pending.is_empty() && (heard_all || r.produced == 0) {
            let Some(r) = self.response.take() else {
                return;
            };
            self.history.push_assistant_text(&r.heard_text(
                r.produced,
                false,
                self.samples_per_char,
            ));
            self.finish(now, r, ResponseStatus::Completed, None);
        }
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

#[cfg(any(test, feature = "invariants"))]
pub mod invariants;

/// Synthesized audio waiting to be sent, as PCM16LE: the TTS chunks as they came, each in an
/// allocation of its own size. A frame is a zero-copy slice of a chunk; only a frame that spans
/// two chunks is copied. One growing buffer would be reallocated and copied as an answer's backlog
/// grows (up to `max_tts_backlog_ms`), and would keep its largest size until the answer ends.
#[derive(Debug, Default)]
struct PcmQueue {
    chunks: VecDeque<Bytes>,
    /// Bytes in `chunks`.
    len: usize,
}

impl PcmQueue {
    /// Bytes waiting.
    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Appends a chunk of samples.
    fn push(&mut self, samples: &[i16]) {
        if samples.is_empty() {
            return;
        }
        let mut chunk = BytesMut::with_capacity(samples.len() * 2);
        put_pcm(&mut chunk, samples);
        self.len += chunk.len();
        self.chunks.push_back(chunk.freeze());
    }

    /// Takes the first `n` bytes (at most `len`).
    fn split_to(&mut self, n: usize) -> Bytes {
        let n = n.min(self.len);
        self.len -= n;
        match self.chunks.front_mut() {
            Some(front) if front.len() > n => return front.split_to(n),
            Some(front) if front.len() == n => return self.chunks.pop_front().unwrap_or_default(),
            _ => {}
        }
        let mut frame = BytesMut::with_capacity(n);
        while frame.len() < n {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let need = n - frame.len();
            if front.len() > need {
                frame.extend_from_slice(&front.split_to(need));
            } else {
                frame.extend_from_slice(front);
                self.chunks.pop_front();
            }
        }
        frame.freeze()
    }
}

/// Appends `samples` to `dst` as PCM16LE. It goes through a stack block, so the compiler
/// vectorizes the conversion and the append is one copy per block: this runs for every sample of
/// every answer.
fn put_pcm(dst: &mut BytesMut, samples: &[i16]) {
    const BLOCK: usize = 256;
    dst.reserve(samples.len() * 2);
    let mut block = [0u8; BLOCK * 2];
    for chunk in samples.chunks(BLOCK) {
        for (b, s) in block.chunks_exact_mut(2).zip(chunk) {
            b.copy_from_slice(&s.to_le_bytes());
        }
        dst.extend_from_slice(&block[..chunk.len() * 2]);
    }
}

#[cfg(test)]
mod tests;
