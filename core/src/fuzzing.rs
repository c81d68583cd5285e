//! The `session` fuzz target's body: a random life of one `Session`, every output checked by the
//! invariants `Checker`.
//!
//! The cargo-fuzz target `fuzz/fuzz_targets/session.rs` (nightly, libFuzzer) calls it through
//! `voxd::fuzzing`, and this module's tests replay the committed corpus (`fuzz/corpus/session/`)
//! and a bounded random run on stable in `cargo test`, so CI exercises the same code. It panics
//! when a promise is broken. It needs nothing but this crate: the owner it plays is the drain rule
//! with well-behaved providers, no JSON and no socket. See docs/fuzzing.md.
//!
//! Built for tests and with the `fuzzing` feature; not part of a normal build.

use std::collections::HashMap;
use std::time::Duration;

use arbitrary::{Arbitrary, Unstructured};

use crate::session::invariants::Checker;
use crate::vad::{Aggressiveness, Engine};
use crate::{
    AsrStreamEvent, ChatMessage, ClientTool, Event, Output, ProviderEvent, ProviderFailure,
    SampleRate, Session, SessionConfig, SessionUpdate, Time, ToolCall, ToolRunner, TurnId,
};

/// `session`: a random life of one session. The bytes decode (with `arbitrary`) into a
/// configuration within the validated ranges and a sequence of inputs: the client's
/// `speech_start`/`speech_end`, audio frames of any size and loudness (time advancing with them),
/// `text` turns, waits that fire the session's timeouts, and provider events for the current
/// response, the last transcription or any other turn (stale, judged or never seen):
/// transcripts, tokens, tool calls and results, TTS audio for the sentence in synthesis or any
/// other, successes and failures. The owner follows the drain rule, and `Checker` checks every
/// output: no audio while paused or after `interrupted`, exactly one `response_done` per response,
/// audio sent a prefix of audio produced, history only what was heard. Time always moves forward:
/// a wake-up is never due again at or before the time it was handled.
///
/// # Panics
/// When a promise is broken.
pub fn session(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let server_vad = bool::arbitrary(&mut u).unwrap_or(false);
    let tweaks = Option::<Tweaks>::arbitrary(&mut u).unwrap_or(None);
    let mut cfg = config(server_vad, tweaks);
    cfg.streaming_asr = bool::arbitrary(&mut u).unwrap_or(false);
    let mut d = Driver::new(cfg);
    for _ in 0..MAX_STEPS {
        if u.is_empty() {
            break;
        }
        let Ok(step) = Step::arbitrary(&mut u) else {
            break;
        };
        d.step(step);
    }
    // A text turn interrupts whatever is still in progress; that response, too, ends once.
    d.text("goodbye");
}

/// Bounds one run, so that each input stays fast.
const MAX_STEPS: usize = 400;
/// Input audio per run, in samples (60 s at 16 kHz).
const AUDIO_BUDGET: u64 = 60 * 16_000;

/// Settings off their defaults, within the ranges the config loader accepts.
#[derive(Arbitrary, Debug)]
struct Tweaks {
    output_rate: u8,
    output_frame_ms: u8,
    playback_lead_ms: u16,
    pacing_interval_ms: u16,
    preroll_ms: u16,
    max_utterance_ms: u16,
    min_interruption_ms: u16,
    false_interruption_extra_ms: u16,
    tool_filler_delay_ms: u16,
    max_tool_rounds: u8,
    max_history_messages: u8,
    max_tts_backlog_ms: u16,
    min_clause_chars: u8,
    vad: Option<VadTweaks>,
    /// `client_discards_on_pause` (Twilio).
    discards: bool,
}

#[derive(Arbitrary, Debug)]
struct VadTweaks {
    aggressiveness: u8,
    frame_ms: u8,
    onset_ms: u16,
    hangover_ms: u16,
    min_level_dbfs: u8,
}

fn config(server_vad: bool, tweaks: Option<Tweaks>) -> SessionConfig {
    let mut cfg = SessionConfig {
        server_tools: ["check_balance".to_owned()].into(),
        client_tool_timeout: Duration::from_millis(3000),
        ..SessionConfig::default()
    };
    if server_vad {
        // The harness's speech is a harmonic buzz: speech to webrtc-vad. Silero is chosen by the
        // tweaks below, where the buzz then mostly reads as noise (and costs a model call).
        if let Some(vad) = cfg.vad.as_mut() {
            vad.engine = Engine::WEBRTC;
        }
    } else {
        cfg.vad = None;
    }
    let Some(t) = tweaks else { return cfg };
    let ms = |x: u64| Duration::from_millis(x);
    cfg.output_rate = SampleRate([8000, 16_000, 24_000, 48_000][usize::from(t.output_rate % 4)]);
    cfg.output_frame_ms = 10 + u32::from(t.output_frame_ms) % 191;
    let lead = u64::from(t.playback_lead_ms) % 5001;
    cfg.playback_lead = ms(lead);
    cfg.pacing_interval =
        ms(1 + u64::from(t.pacing_interval_ms) % lead.max(u64::from(cfg.output_frame_ms)));
    cfg.preroll = ms(u64::from(t.preroll_ms) % 2001);
    cfg.max_utterance = ms(1000 + u64::from(t.max_utterance_ms) * 9);
    let min_interruption = 1 + u64::from(t.min_interruption_ms) % 10_000;
    cfg.min_interruption = ms(min_interruption);
    cfg.false_interruption_timeout =
        ms((min_interruption + u64::from(t.false_interruption_extra_ms)).min(60_000));
    cfg.tool_filler_delay = ms(u64::from(t.tool_filler_delay_ms) % 60_001);
    cfg.max_tool_rounds = u32::from(t.max_tool_rounds % 8);
    cfg.max_history_messages = 2 + usize::from(t.max_history_messages % 64);
    cfg.max_tts_backlog = ms(u64::from(t.max_tts_backlog_ms) % 60_001);
    cfg.min_clause_chars = usize::from(t.min_clause_chars);
    cfg.client_discards_on_pause = t.discards;
    if let (Some(v), Some(vad)) = (t.vad, cfg.vad.as_mut()) {
        let modes = [
            Aggressiveness::Quality,
            Aggressiveness::LowBitrate,
            Aggressiveness::Aggressive,
            Aggressiveness::VeryAggressive,
        ];
        vad.engine = match modes.get(usize::from(v.aggressiveness % 5)) {
            Some(&aggressiveness) => Engine::WebRtc {
                aggressiveness,
                frame_ms: [10, 20, 30][usize::from(v.frame_ms % 3)],
            },
            None => Engine::Silero {
                start_threshold: 0.5,
                end_threshold: f32::from(v.frame_ms % 51) / 100.0,
            },
        };
        let window_ms = vad.engine.window_samples() as u32 / 16;
        vad.onset_ms = u32::from(v.onset_ms) % 5001;
        vad.hangover_ms = (window_ms + u32::from(v.hangover_ms)).min(10_000);
        vad.min_level_dbfs = -f32::from(v.min_level_dbfs % 101);
    }
    cfg
}

/// One input to the session.
#[derive(Arbitrary, Debug)]
enum Step {
    SpeechStart,
    SpeechEnd,
    /// `frames` frames of `samples` samples each (up to 100 ms), at real time.
    Audio {
        sound: Sound,
        frames: u8,
        samples: u16,
    },
    Text(Words),
    /// A `session_update`, each field within the ranges the server's codec accepts.
    Update {
        instructions: Option<Words>,
        min_interruption_ms: Option<u16>,
        false_interruption_timeout_ms: Option<u16>,
        backchannels: Option<Vec<Words>>,
        /// `true`: a user message.
        history: Option<Vec<(bool, Words)>>,
        greeting: Option<Words>,
        /// `true`: `get_weather` is the client's tool; `false`: no client tools. (`check_balance`
        /// is the server's: naming it is refused.)
        client_tools: Option<bool>,
        voice: Option<Words>,
    },
    /// A client's `tool_result`.
    ClientResult(CallId),
    /// The client confirms it played this many samples (×16) of the response (a Twilio mark).
    Played(u16),
    /// `say`, `respond` and `cancel`.
    Say(Words),
    Respond,
    Cancel,
    /// Time passes (ms); due timeouts fire.
    Wait(u16),
    Provider {
        to: Target,
        event: Ev,
    },
    /// Up to `events` events of well-behaved providers answering the calls in progress, the
    /// `first`th first: what lets random inputs get a response all the way to its audio.
    Answer {
        first: u8,
        events: u8,
    },
    /// An event of a streaming ASR's recognition stream: of the stream opened last, or of turn 1
    /// (often stale).
    Stream {
        last: bool,
        event: StreamEv,
    },
    /// A user message added without a reply (the Realtime protocol's `conversation.item.create`).
    UserMessage(Words),
    /// A `respond` with settings of its own.
    RespondWith {
        instructions: Option<Words>,
        voice: Option<Words>,
        client_tools: bool,
    },
    /// The client truncates a turn's answer (this many samples ×16): the current or last turn,
    /// or one `back` turns before.
    Truncate {
        back: u8,
        samples: u16,
    },
    /// The client deletes a part of a turn `back` turns before the last one.
    Delete {
        back: u8,
        part: u8,
    },
    /// New server-VAD settings.
    TuneVad {
        threshold: Option<u8>,
        silence_ms: Option<u16>,
        prefix_padding_ms: Option<u16>,
    },
    /// Whether turns are answered and speech interrupts, and the idle timeout (ms; `Some(None)`
    /// turns it off).
    Policy {
        answer_turns: Option<bool>,
        interrupt_on_speech: Option<bool>,
        idle_timeout_ms: Option<Option<u16>>,
    },
    /// An audio message (the Realtime protocol's audio item) of this many samples (×16).
    UserAudio {
        sound: Sound,
        samples: u16,
    },
}

#[derive(Arbitrary, Debug)]
enum StreamEv {
    Opened,
    Unavailable,
    Interim(Words),
    Final { text: Words, speech_final: bool },
    Finalized(Words),
    Failed { timed_out: bool },
}

#[derive(Arbitrary, Debug, Clone, Copy)]
enum Sound {
    Silence,
    /// Deterministic noise at a level (peak amplitude / 128).
    Noise(u8),
    /// A loud harmonic buzz the VAD takes for speech.
    Voice,
    /// Full-scale square wave.
    Clip,
}

/// Text for a turn, a transcript or a token.
#[derive(Arbitrary, Debug)]
enum Words {
    Vocab(u8),
    Raw(String),
}

const VOCAB: &[&str] = &[
    "",
    " ",
    "mhm",
    "ok yeah",
    "Mm-hmm.",
    "stop",
    "wait, stop",
    "what about tomorrow",
    "check my balance",
    "Hello",
    " there. ",
    "It is sunny",
    " today",
    ", ",
    ". ",
    "! ",
    "? ",
    "\n",
    "\n\n",
    "Dr. ",
    "3.5 ",
    "e.g. ",
    "très ",
    "bien.",
    "日本語です。",
    "\u{200b}",
    "👍🏽 ",
    "a",
    " b",
    "One moment while I check that.",
    "This clause is rather long and goes on, and on, and on, well past the clause limit; ",
];

impl Words {
    fn text(&self) -> String {
        match self {
            Words::Vocab(i) => VOCAB[usize::from(*i) % VOCAB.len()].to_owned(),
            Words::Raw(s) => s.chars().take(200).collect(),
        }
    }
}

/// Which turn a provider event claims to be for.
#[derive(Arbitrary, Debug)]
enum Target {
    /// The current response (else the last turn seen).
    Response,
    /// The last turn sent to ASR (a barge-in candidate being judged, often).
    LastAsr,
    /// Any turn id up to one past the last seen, 0 included: stale, cancelled or unknown.
    Any(u8),
}

#[derive(Arbitrary, Debug)]
enum Ev {
    Transcript(Words),
    AsrFailed { timed_out: bool },
    Token(Words),
    ToolCall { id: CallId, name: u8 },
    LlmDone,
    LlmFailed { timed_out: bool },
    TtsAudio { seq: Seq, samples: u16, value: i16 },
    TtsDone(Seq),
    TtsFailed { seq: Seq, timed_out: bool },
    ToolResult { id: CallId, ok: bool },
}

/// A TTS sentence number.
#[derive(Arbitrary, Debug)]
enum Seq {
    /// The last one started for the turn.
    Active,
    Any(u8),
}

/// A tool call id.
#[derive(Arbitrary, Debug)]
enum CallId {
    /// One of the ids the session started for the turn.
    Started(u8),
    Empty,
    Fixed(u8),
    Raw(String),
}

fn failure(timed_out: bool) -> ProviderFailure {
    ProviderFailure {
        provider: "fuzz".into(),
        message: "the \"fuzz\" provider failed\n".into(),
        timed_out,
    }
}

/// The owner: drives the session, follows the drain rule, keeps what the next inputs refer to.
struct Driver {
    s: Session,
    check: Checker,
    now: Time,
    /// Input samples sent so far (16 kHz).
    input_pos: u64,
    last_turn: u64,
    last_asr: Option<TurnId>,
    /// The turn of the recognition stream opened last.
    last_stream: Option<TurnId>,
    tts_seq: HashMap<TurnId, u32>,
    tools: HashMap<TurnId, Vec<String>>,
    /// The output rate, in Hz.
    rate: u32,
    /// Provider calls started and not yet answered in full (by `Step::Answer`) or cancelled.
    calls: Vec<Call>,
}

/// A provider call in progress, and how far a well-behaved provider has answered it.
#[derive(Debug)]
enum Call {
    Asr { turn: TurnId, samples: usize },
    Llm { turn: TurnId, reply: Vec<Reply> },
    Tts { turn: TurnId, seq: u32, left: usize },
    Tool { turn: TurnId, id: String },
}

impl Call {
    fn turn(&self) -> TurnId {
        match self {
            Call::Asr { turn, .. }
            | Call::Llm { turn, .. }
            | Call::Tts { turn, .. }
            | Call::Tool { turn, .. } => *turn,
        }
    }
}

/// A well-behaved ASR: the transcript depends on the utterance's length.
fn transcript_for(samples: usize) -> &'static str {
    match samples / 16 {
        0..=499 => "mhm",
        500..=1749 => "what about tomorrow",
        1750..=2499 => "what's the weather like today",
        _ => "can you check my account balance",
    }
}

/// One piece of a well-behaved LLM's reply.
#[derive(Debug)]
enum Reply {
    Token(String),
    Tool,
}

/// A well-behaved LLM's reply to the conversation.
fn reply_for(messages: &[ChatMessage]) -> Vec<Reply> {
    let reply = match messages.last() {
        Some(ChatMessage::User(u)) if u.contains("balance") => return vec![Reply::Tool],
        Some(ChatMessage::Tool { .. }) => "Your balance is 1,234.56 dollars. Anything else?",
        Some(ChatMessage::User(u)) if u.contains("tomorrow") => "Tomorrow it rains.",
        _ => "It's sunny and warm today. There's a light breeze. Perfect for a walk.",
    };
    reply
        .split_inclusive(' ')
        .map(|t| Reply::Token(t.to_owned()))
        .collect()
}

impl Driver {
    fn new(cfg: SessionConfig) -> Self {
        Driver {
            check: Checker::new(&cfg),
            rate: cfg.output_rate.hz(),
            s: Session::new(cfg),
            now: Time::ZERO,
            input_pos: 0,
            last_turn: 0,
            last_asr: None,
            last_stream: None,
            tts_seq: HashMap::new(),
            tools: HashMap::new(),
            calls: Vec::new(),
        }
    }

    fn drain(&mut self) {
        while let Some(o) = self.s.poll_output() {
            self.check.output(&o);
            let turn = match &o {
                Output::StartAsr { turn, audio, .. } => {
                    self.last_asr = Some(*turn);
                    self.calls.push(Call::Asr {
                        turn: *turn,
                        samples: audio.len(),
                    });
                    *turn
                }
                Output::StartLlm { turn, messages, .. } => {
                    self.calls.push(Call::Llm {
                        turn: *turn,
                        reply: reply_for(messages),
                    });
                    *turn
                }
                Output::StartTts {
                    turn, seq, text, ..
                } => {
                    self.tts_seq.insert(*turn, *seq);
                    self.calls.push(Call::Tts {
                        turn: *turn,
                        seq: *seq,
                        // 14 characters a second at the session's output rate.
                        left: text.chars().count() * self.rate as usize / 14,
                    });
                    *turn
                }
                Output::StartTool { turn, call } => {
                    self.tools.entry(*turn).or_default().push(call.id.clone());
                    self.calls.push(Call::Tool {
                        turn: *turn,
                        id: call.id.clone(),
                    });
                    *turn
                }
                Output::CancelTurn(turn) => {
                    self.calls.retain(|c| c.turn() != *turn);
                    *turn
                }
                Output::OpenAsrStream(turn) => {
                    self.last_stream = Some(*turn);
                    *turn
                }
                Output::PushAsrStream { turn, samples } => {
                    let audio = self.s.asr_stream_audio(*turn, samples.clone());
                    assert_eq!(
                        audio.len(),
                        samples.len(),
                        "turn {turn}: push of {samples:?}"
                    );
                    *turn
                }
                Output::Audio { turn, .. }
                | Output::FinalizeAsrStream(turn)
                | Output::CloseAsrStream(turn)
                | Output::TurnReleased(turn) => *turn,
                Output::Event(e) => {
                    if let Event::ToolCall {
                        turn,
                        call,
                        runs: ToolRunner::Client,
                    } = e
                    {
                        self.tools.entry(*turn).or_default().push(call.id.clone());
                    }
                    event_turn(e)
                }
            };
            self.last_turn = self.last_turn.max(turn.0);
        }
        self.check.step(&self.s);
    }

    /// Lets time pass until `to`, firing every timeout due on the way.
    fn advance(&mut self, to: Time) {
        while let Some(t) = self.s.poll_timeout() {
            if t > to {
                break;
            }
            let t = t.max(self.now);
            self.now = t;
            self.s.handle_timeout(t);
            self.drain();
            if let Some(next) = self.s.poll_timeout() {
                assert!(
                    next > t,
                    "woken at {t:?}, the session asks to be woken again at {next:?}"
                );
            }
        }
        self.now = self.now.max(to);
    }

    fn text(&mut self, text: &str) {
        self.s.handle_text(self.now, text);
        self.drain();
    }

    fn step(&mut self, step: Step) {
        match step {
            Step::SpeechStart => {
                self.s.handle_speech_start(self.now);
                self.drain();
            }
            Step::SpeechEnd => {
                self.s.handle_speech_end(self.now);
                self.drain();
            }
            Step::Stream { last, event } => {
                let turn = match self.last_stream {
                    Some(turn) if last => turn,
                    _ => TurnId(1),
                };
                let event = match event {
                    StreamEv::Opened => AsrStreamEvent::Opened,
                    StreamEv::Unavailable => AsrStreamEvent::Unavailable,
                    StreamEv::Interim(w) => AsrStreamEvent::Interim(w.text()),
                    StreamEv::Final { text, speech_final } => AsrStreamEvent::Final {
                        text: text.text(),
                        speech_final,
                    },
                    StreamEv::Finalized(w) => AsrStreamEvent::Finalized(w.text()),
                    StreamEv::Failed { timed_out } => AsrStreamEvent::Failed(ProviderFailure {
                        provider: "stream".into(),
                        message: "failed".into(),
                        timed_out,
                    }),
                };
                self.s.handle_asr_stream(self.now, turn, event);
                self.drain();
            }
            Step::Audio {
                sound,
                frames,
                samples,
            } => {
                let len = u64::from(samples % 1601);
                for _ in 0..=frames % 32 {
                    if self.input_pos + len > AUDIO_BUDGET {
                        return;
                    }
                    let frame: Vec<i16> = (self.input_pos..self.input_pos + len)
                        .map(|i| sample(sound, i))
                        .collect();
                    self.input_pos += len;
                    self.advance(self.now + SampleRate::INTERNAL.duration_of(len));
                    self.s.handle_audio(self.now, &frame);
                    self.drain();
                }
            }
            Step::Text(w) => self.text(&w.text()),
            Step::Say(w) => {
                self.s.handle_say(self.now, &w.text());
                self.drain();
            }
            Step::Update {
                instructions,
                min_interruption_ms,
                false_interruption_timeout_ms,
                backchannels,
                history,
                greeting,
                client_tools,
                voice,
            } => {
                let tool = |name: &str| ClientTool {
                    name: name.into(),
                    description: "The weather in a city.".into(),
                    parameters: "{\"type\":\"object\"}".into(),
                };
                let ms = |n: u16, max: u64| Duration::from_millis(1 + u64::from(n) % max);
                let update = SessionUpdate {
                    instructions: instructions.map(|w| w.text()),
                    min_interruption: min_interruption_ms.map(|n| ms(n, 10_000)),
                    false_interruption_timeout: false_interruption_timeout_ms
                        .map(|n| ms(n, 60_000)),
                    backchannels: backchannels
                        .map(|b| b.iter().take(64).map(|w| w.text().to_lowercase()).collect()),
                    history: history.map(|h| {
                        h.iter()
                            .take(200)
                            .map(|(user, w)| {
                                if *user {
                                    ChatMessage::User(w.text())
                                } else {
                                    ChatMessage::Assistant {
                                        text: w.text(),
                                        tool_calls: Vec::new(),
                                    }
                                }
                            })
                            .collect()
                    }),
                    greeting: greeting.map(|w| w.text()).filter(|g| !g.trim().is_empty()),
                    tools: client_tools.map(|on| match (on, self.last_turn % 3) {
                        (false, _) => Vec::new(),
                        (true, 0) => vec![tool("get_weather"), tool("check_balance")],
                        (true, _) => vec![tool("get_weather")],
                    }),
                    voice: voice.map(|w| w.text()),
                    language: None,
                    vad: None,
                    answer_turns: None,
                    interrupt_on_speech: None,
                    idle_timeout: None,
                };
                self.s.handle_update(self.now, update);
                self.drain();
            }
            Step::Played(n) => {
                if let Some(turn) = self.s.current_response() {
                    self.s.handle_played(self.now, turn, u64::from(n) * 16);
                    self.drain();
                }
            }
            Step::ClientResult(id) => {
                let turn = self.s.current_response().unwrap_or(TurnId(self.last_turn));
                let call_id = self.call_id(turn, id);
                self.s
                    .handle_tool_result(self.now, &call_id, "{\"sky\":\"clear\"}".into());
                self.drain();
            }
            Step::Respond => {
                self.s.handle_respond(self.now);
                self.drain();
            }
            Step::Cancel => {
                self.s.handle_cancel(self.now);
                self.drain();
            }
            Step::Wait(ms) => self.advance(self.now + Duration::from_millis(u64::from(ms))),
            Step::UserMessage(w) => {
                self.s.handle_user_message(self.now, &w.text());
                self.drain();
            }
            Step::RespondWith {
                instructions,
                voice,
                client_tools,
            } => {
                let overrides = crate::ResponseOverrides {
                    instructions: instructions.map(|w| w.text()),
                    voice: voice.map(|w| w.text()),
                    tools: client_tools.then(|| {
                        vec![ClientTool {
                            name: "get_weather".into(),
                            description: "The weather in a city.".into(),
                            parameters: "{\"type\":\"object\"}".into(),
                        }]
                    }),
                };
                self.s.handle_respond_with(self.now, overrides);
                self.drain();
            }
            Step::Truncate { back, samples } => {
                let turn = TurnId(self.last_turn.saturating_sub(u64::from(back % 4)));
                self.s
                    .handle_truncate(self.now, turn, u64::from(samples) * 16);
                self.drain();
            }
            Step::Delete { back, part } => {
                let turn = TurnId(self.last_turn.saturating_sub(u64::from(back % 4)));
                let part = match part % 3 {
                    0 => crate::HistoryPart::User,
                    1 => crate::HistoryPart::Assistant,
                    _ => crate::HistoryPart::ToolRound {
                        call_id: self.call_id(turn, CallId::Started(0)),
                    },
                };
                self.s.handle_delete(self.now, turn, part);
                self.drain();
            }
            Step::TuneVad {
                threshold,
                silence_ms,
                prefix_padding_ms,
            } => {
                let update = SessionUpdate {
                    vad: Some(crate::VadTuning {
                        threshold: threshold.map(|t| f32::from(t) / 255.0),
                        silence_ms: silence_ms.map(|n| 100 + u32::from(n) % 4900),
                        prefix_padding_ms: prefix_padding_ms.map(|n| u32::from(n) % 2001),
                    }),
                    ..SessionUpdate::default()
                };
                self.s.handle_update(self.now, update);
                self.drain();
            }
            Step::Policy {
                answer_turns,
                interrupt_on_speech,
                idle_timeout_ms,
            } => {
                let update = SessionUpdate {
                    answer_turns,
                    interrupt_on_speech,
                    idle_timeout: idle_timeout_ms
                        .map(|ms| ms.map(|n| Duration::from_millis(u64::from(n)))),
                    ..SessionUpdate::default()
                };
                self.s.handle_update(self.now, update);
                self.drain();
            }
            Step::UserAudio { sound, samples } => {
                let len = u64::from(samples % 4096) * 16;
                let audio: Vec<i16> = (0..len).map(|i| sample(sound, i)).collect();
                self.s.handle_user_audio(self.now, &audio);
                self.drain();
            }
            Step::Provider { to, event } => {
                let fallback = TurnId(self.last_turn);
                let turn = match to {
                    Target::Response => self.s.current_response().unwrap_or(fallback),
                    Target::LastAsr => self.last_asr.unwrap_or(fallback),
                    Target::Any(n) => TurnId(u64::from(n) % (self.last_turn + 2)),
                };
                let event = self.provider_event(turn, event);
                self.provider(turn, event);
            }
            Step::Answer { first, events } => {
                for i in 0..=events % 32 {
                    if self.calls.is_empty() {
                        break;
                    }
                    let k = if i == 0 {
                        usize::from(first) % self.calls.len()
                    } else {
                        0
                    };
                    let (turn, event) = self.answer(k);
                    self.provider(turn, event);
                }
            }
        }
    }

    fn provider(&mut self, turn: TurnId, event: ProviderEvent) {
        self.check.provider(&self.s, turn, &event);
        self.s.handle_provider(self.now, turn, event);
        self.drain();
    }

    /// The next event of call `k`, as a well-behaved provider would deliver it.
    fn answer(&mut self, k: usize) -> (TurnId, ProviderEvent) {
        let turn = self.calls[k].turn();
        let (event, finished) = match &mut self.calls[k] {
            Call::Asr { samples, .. } => (
                ProviderEvent::Transcript(Ok(transcript_for(*samples).to_owned())),
                true,
            ),
            Call::Llm { reply, .. } if reply.is_empty() => (ProviderEvent::LlmDone, true),
            Call::Llm { reply, .. } => {
                let event = match reply.remove(0) {
                    Reply::Token(token) => ProviderEvent::LlmToken(token),
                    Reply::Tool => ProviderEvent::LlmToolCall(ToolCall {
                        id: String::new(),
                        name: "check_balance".into(),
                        arguments: "{}".into(),
                    }),
                };
                (event, false)
            }
            Call::Tts { seq, left: 0, .. } => (ProviderEvent::TtsDone { seq: *seq }, true),
            Call::Tts { seq, left, .. } => {
                let n = (*left).min(1600);
                *left -= n;
                let start = *left as i16;
                let samples = (0..n as i16).map(|i| start.wrapping_add(i)).collect();
                (ProviderEvent::TtsAudio { seq: *seq, samples }, false)
            }
            Call::Tool { id, .. } => (
                ProviderEvent::ToolResult {
                    call_id: id.clone(),
                    result: Ok("{\"balance\":\"1,234.56\"}".into()),
                },
                true,
            ),
        };
        if finished {
            self.calls.remove(k);
        }
        (turn, event)
    }

    fn call_id(&self, turn: TurnId, c: CallId) -> String {
        match c {
            CallId::Started(i) => self
                .tools
                .get(&turn)
                .and_then(|ids| ids.get(usize::from(i) % ids.len()))
                .cloned()
                .unwrap_or_default(),
            CallId::Empty => String::new(),
            CallId::Fixed(n) => format!("c{}", n % 4),
            CallId::Raw(s) => s,
        }
    }

    fn provider_event(&self, turn: TurnId, e: Ev) -> ProviderEvent {
        let seq = |s: Seq| match s {
            Seq::Active => self.tts_seq.get(&turn).copied().unwrap_or(0),
            Seq::Any(n) => u32::from(n % 8),
        };
        let call_id = |c: CallId| self.call_id(turn, c);
        match e {
            Ev::Transcript(w) => ProviderEvent::Transcript(Ok(w.text())),
            Ev::AsrFailed { timed_out } => ProviderEvent::Transcript(Err(failure(timed_out))),
            Ev::Token(w) => ProviderEvent::LlmToken(w.text()),
            Ev::ToolCall { id, name } => ProviderEvent::LlmToolCall(ToolCall {
                id: call_id(id),
                name: ["check_balance", "get_weather", ""][usize::from(name % 3)].into(),
                arguments: ["{}", "{\"city\":\"Paris\"}", "not json"][usize::from(name % 3)].into(),
            }),
            Ev::LlmDone => ProviderEvent::LlmDone,
            Ev::LlmFailed { timed_out } => ProviderEvent::LlmFailed(failure(timed_out)),
            Ev::TtsAudio {
                seq: s,
                samples,
                value,
            } => ProviderEvent::TtsAudio {
                seq: seq(s),
                // Distinct samples, so that audio sent out of order would show.
                samples: (0..samples % 4801)
                    .map(|k| value.wrapping_add(k as i16))
                    .collect(),
            },
            Ev::TtsDone(s) => ProviderEvent::TtsDone { seq: seq(s) },
            Ev::TtsFailed { seq: s, timed_out } => ProviderEvent::TtsFailed {
                seq: seq(s),
                failure: failure(timed_out),
            },
            Ev::ToolResult { id, ok } => ProviderEvent::ToolResult {
                call_id: call_id(id),
                result: if ok {
                    Ok("{\"balance\":\"1,234.56\"}".into())
                } else {
                    Err(failure(false))
                },
            },
        }
    }
}

fn event_turn(e: &Event) -> TurnId {
    match e {
        Event::SpeechStarted { turn, .. }
        | Event::SpeechStopped { turn, .. }
        | Event::Transcript { turn, .. }
        | Event::ResponseText { turn, .. }
        | Event::ToolCall { turn, .. }
        | Event::ToolResult { turn, .. }
        | Event::AudioStart { turn, .. }
        | Event::PlaybackPaused { turn, .. }
        | Event::PlaybackResumed { turn }
        | Event::Interrupted { turn, .. }
        | Event::ResponseDone { turn, .. }
        | Event::FalseAlarm { turn }
        | Event::ProviderError { turn, .. } => *turn,
        Event::Truncated { turn, .. }
        | Event::Deleted { turn, .. }
        | Event::Rewound { turn, .. } => *turn,
        Event::AudioMessage { turn, .. } | Event::IdleTimeout { turn, .. } => *turn,
        Event::SessionUpdated { .. } | Event::Rejected(_) => TurnId(0),
    }
}

/// Sample `i` (input position) of a sound.
fn sample(sound: Sound, i: u64) -> i16 {
    match sound {
        Sound::Silence => 0,
        Sound::Noise(level) => {
            // xorshift of the position: deterministic, white enough.
            let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let peak = i32::from(level) * 128;
            ((x % 65_536) as i32 - 32_768).clamp(-peak, peak) as i16
        }
        Sound::Voice => BUZZ[(i % BUZZ.len() as u64) as usize],
        Sound::Clip => {
            if (i / 40).is_multiple_of(2) {
                i16::MAX
            } else {
                i16::MIN
            }
        }
    }
}

/// One period (100 samples, 160 Hz at 16 kHz) of a buzz with 8 harmonics: speech to webrtc-vad.
static BUZZ: std::sync::LazyLock<Vec<i16>> = std::sync::LazyLock::new(|| {
    (0..100)
        .map(|i| {
            let t = f64::from(i) / 16_000.0;
            let s: f64 = (1..=8)
                .map(|h| {
                    (2.0 * std::f64::consts::PI * 160.0 * f64::from(h) * t).sin() / f64::from(h)
                })
                .sum();
            (s * 6000.0) as i16
        })
        .collect()
});
#[cfg(test)]
mod tests {
    //! The stable, bounded equivalent of the fuzz runs: every committed corpus input, then a
    //! fixed number of random ones.

    use std::path::PathBuf;

    use proptest::prelude::*;

    use super::*;

    fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        // The corpus is the cargo-fuzz project's, at the workspace root.
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../fuzz/corpus")
            .join(target);
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        assert!(!files.is_empty(), "{} is empty", dir.display());
        files
            .into_iter()
            .map(|p| {
                let data = std::fs::read(&p).unwrap();
                (p, data)
            })
            .collect()
    }

    /// Runs `body` on every corpus file of `target`, naming the file that fails.
    fn replay(target: &str, body: fn(&[u8])) {
        for (path, data) in corpus(target) {
            if std::panic::catch_unwind(|| body(&data)).is_err() {
                panic!("{target}: {} fails", path.display());
            }
        }
    }

    #[test]
    fn session_corpus() {
        replay("session", session);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn session_random(data in proptest::collection::vec(any::<u8>(), 0..2048)) {
            session(&data);
        }
    }
}
