//! The state machine on a simulated clock.
//!
//! `Sim` plays the owner's part: it drains outputs, answers provider calls with scripted providers
//! whose delays mirror the mock providers' defaults (ASR 50 ms; LLM first token 100 ms, then 10 ms a
//! token; TTS first audio 50 ms, then chunks 10× faster than real time; tools 300 ms), honours
//! `CancelTurn`, and wakes the session at its `poll_timeout`. Every step checks the invariants
//! (`invariants::Checker`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::invariants::Checker;
use super::playback::{put_pcm, PcmQueue};
use super::*;
use crate::history::ToolCall;
use crate::test_audio::{fixture, noise};

const ASR_MS: u64 = 50;
const LLM_FIRST_MS: u64 = 100;
const TOKEN_MS: u64 = 10;
const TTS_FIRST_MS: u64 = 50;
const TTS_CHUNK_MS: u64 = 100;
const TOOL_MS: u64 = 300;
const CHARS_PER_SECOND: f64 = 14.0;

const WEATHER: &str = "It's sunny and warm today. There's a light breeze. Perfect for a walk.";
const STORY: &str = "Once upon a time there was a lighthouse. Its keeper loved the sea. \
    Every night he lit the lamp. Ships passed safely by. One night a storm came. \
    The waves rose high. The lamp kept burning. At dawn the sea was calm again.";

/// What the scripted ASR hears: the classic duration rules of a voice-bot load test.
fn transcript_for(samples: usize) -> &'static str {
    let ms = samples as u64 / 16;
    match ms {
        0..=499 => "mhm",
        500..=1749 => "what about tomorrow",
        1750..=2499 => "what's the weather like today",
        _ => "can you check my account balance",
    }
}

/// What a scheduled input is.
#[derive(Debug)]
enum Input {
    Provider(ProviderEvent),
    Stream(AsrStreamEvent),
}

/// How the scripted streaming ASR behaves.
#[derive(Debug, Clone, Copy)]
struct StreamScript {
    /// Time to connect.
    open_ms: u64,
    /// What connecting gives: `Opened`, `Unavailable` or `Failed`.
    open: Opens,
    /// Time from `FinalizeAsrStream` to the transcript.
    finalize_ms: u64,
    /// The stream fails once it has heard this many samples (at the next push).
    fail_after: Option<usize>,
    /// The stream fails instead of answering a finalize.
    fail_finalize: bool,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Opens {
    Ok,
    Unavailable,
    Fails,
}

impl Default for StreamScript {
    fn default() -> Self {
        StreamScript {
            open_ms: 40,
            open: Opens::Ok,
            finalize_ms: 30,
            fail_after: None,
            fail_finalize: false,
        }
    }
}

fn stream_failure() -> ProviderFailure {
    ProviderFailure {
        provider: "stream".into(),
        message: "reset".into(),
        timed_out: false,
    }
}

#[derive(Debug, Clone)]
struct Sent {
    at: Time,
    output: Output,
}

struct Sim {
    s: Session,
    now: Time,
    seq: u64,
    scheduled: BTreeMap<(Time, u64), (TurnId, Input)>,
    log: Vec<Sent>,
    cancelled: HashSet<TurnId>,
    /// Overrides of the scripted ASR's answer, consumed in order.
    asr_answers: Vec<&'static str>,
    asr_ms: u64,
    tool_ms: u64,
    llm_fails: bool,
    /// Text the LLM says before a tool call.
    preamble: &'static str,
    /// Every tool call of a round gets the same id.
    same_ids: bool,
    /// TTS chunks arrive at real time instead of 10x faster.
    tts_realtime: bool,
    check: Checker,
    /// Turns the LLM was asked to answer.
    started: HashSet<TurnId>,
    /// Every whole-utterance transcription started: turn, audio length, `after_stream`.
    asr_calls: Vec<(TurnId, usize, bool)>,
    /// The scripted streaming ASR (with `SessionConfig::streaming_asr`).
    stream: StreamScript,
    /// Open recognition streams: the samples each has heard.
    streams: HashMap<TurnId, usize>,
    /// Every stream opened.
    opened: Vec<TurnId>,
    /// The tool the LLM calls for a balance.
    tool_name: &'static str,
    /// The client-side tools offered with the last `StartLlm`.
    offered: Vec<String>,
    /// The voice of every `StartTts`, in order.
    voices: Vec<Option<Arc<str>>>,
}

/// Server VAD with webrtc-vad, which hears the sim's buzz (`Sim::voice`) as speech: for the
/// session's rules, whatever the engine. Silero's own tests use real speech.
fn webrtc_vad() -> SessionConfig {
    let mut cfg = SessionConfig::default();
    if let Some(v) = cfg.vad.as_mut() {
        v.engine = crate::vad::Engine::WEBRTC;
    }
    cfg
}

impl Sim {
    fn new() -> Self {
        Self::with(SessionConfig {
            vad: None,
            ..SessionConfig::default()
        })
    }

    fn with(cfg: SessionConfig) -> Self {
        Sim {
            check: Checker::new(&cfg),
            s: Session::new(cfg),
            now: Time::ZERO,
            seq: 0,
            scheduled: BTreeMap::new(),
            log: Vec::new(),
            cancelled: HashSet::new(),
            asr_answers: Vec::new(),
            asr_ms: ASR_MS,
            tool_ms: TOOL_MS,
            llm_fails: false,
            preamble: "",
            same_ids: false,
            tts_realtime: false,
            started: HashSet::new(),
            asr_calls: Vec::new(),
            stream: StreamScript::default(),
            streams: HashMap::new(),
            opened: Vec::new(),
            tool_name: "check_balance",
            offered: Vec::new(),
            voices: Vec::new(),
        }
    }

    fn schedule(&mut self, at: Time, turn: TurnId, e: ProviderEvent) {
        self.seq += 1;
        self.scheduled
            .insert((at, self.seq), (turn, Input::Provider(e)));
    }

    fn schedule_stream(&mut self, after_ms: u64, turn: TurnId, e: AsrStreamEvent) {
        self.seq += 1;
        let at = self.now + Duration::from_millis(after_ms);
        self.scheduled
            .insert((at, self.seq), (turn, Input::Stream(e)));
    }

    /// A stream event now, as a driver reports it.
    fn stream_event(&mut self, turn: TurnId, e: AsrStreamEvent) {
        self.s.handle_asr_stream(self.now, turn, e);
        self.drain();
    }

    /// Drains outputs, checking invariants and starting scripted provider calls.
    fn drain(&mut self) {
        while let Some(o) = self.s.poll_output() {
            let now = self.now;
            self.check.output(&o);
            match &o {
                Output::StartAsr {
                    turn,
                    audio,
                    after_stream,
                } => {
                    self.asr_calls.push((*turn, audio.len(), *after_stream));
                    let text = if self.asr_answers.is_empty() {
                        transcript_for(audio.len())
                    } else {
                        self.asr_answers.remove(0)
                    };
                    self.schedule(
                        now + Duration::from_millis(self.asr_ms),
                        *turn,
                        ProviderEvent::Transcript(Ok(text.to_owned())),
                    );
                }
                Output::StartLlm {
                    turn,
                    messages,
                    client_tools,
                } => {
                    self.started.insert(*turn);
                    self.offered = client_tools.iter().map(|t| t.name.clone()).collect();
                    self.script_llm(*turn, messages);
                }
                Output::StartTts {
                    turn,
                    seq,
                    text,
                    voice,
                } => {
                    self.voices.push(voice.clone());
                    self.script_tts(*turn, *seq, text);
                }
                Output::StartTool { turn, call } => {
                    let at = now + Duration::from_millis(self.tool_ms);
                    let result = format!("{{\"balance\":\"1,234.56\",\"tool\":\"{}\"}}", call.name);
                    self.schedule(
                        at,
                        *turn,
                        ProviderEvent::ToolResult {
                            call_id: call.id.clone(),
                            result: Ok(result),
                        },
                    );
                }
                Output::CancelTurn(turn) => {
                    self.cancelled.insert(*turn);
                    self.streams.remove(turn);
                    self.scheduled.retain(|_, (t, _)| t != turn);
                }
                Output::OpenAsrStream(turn) => {
                    self.opened.push(*turn);
                    let script = self.stream;
                    let event = match script.open {
                        Opens::Ok => {
                            self.streams.insert(*turn, 0);
                            AsrStreamEvent::Opened
                        }
                        Opens::Unavailable => AsrStreamEvent::Unavailable,
                        Opens::Fails => AsrStreamEvent::Failed(stream_failure()),
                    };
                    self.schedule_stream(script.open_ms, *turn, event);
                }
                Output::PushAsrStream { turn, samples } => {
                    let audio = self.s.asr_stream_audio(*turn, samples.clone());
                    assert_eq!(audio.len(), samples.len(), "{samples:?} of {turn}");
                    let heard = self
                        .streams
                        .get_mut(turn)
                        .expect("pushed to an open stream");
                    assert_eq!(*heard, samples.start, "pushes are contiguous");
                    *heard = samples.end;
                    let heard = *heard;
                    if self.stream.fail_after.is_some_and(|n| heard >= n) {
                        self.streams.remove(turn);
                        self.schedule_stream(0, *turn, AsrStreamEvent::Failed(stream_failure()));
                    }
                }
                Output::FinalizeAsrStream(turn) => {
                    if let Some(&heard) = self.streams.get(turn) {
                        let event = if self.stream.fail_finalize {
                            AsrStreamEvent::Failed(stream_failure())
                        } else {
                            let text = if self.asr_answers.is_empty() {
                                transcript_for(heard)
                            } else {
                                self.asr_answers.remove(0)
                            };
                            AsrStreamEvent::Finalized(text.to_owned())
                        };
                        self.schedule_stream(self.stream.finalize_ms, *turn, event);
                    }
                }
                Output::CloseAsrStream(turn) => {
                    self.streams.remove(turn);
                    self.scheduled
                        .retain(|_, (t, i)| t != turn || matches!(i, Input::Provider(_)));
                }
                Output::Event(_) | Output::Audio { .. } | Output::TurnReleased(_) => {}
            }
            self.log.push(Sent { at: now, output: o });
        }
        self.check.step(&self.s);
    }

    fn script_llm(&mut self, turn: TurnId, messages: &[ChatMessage]) {
        let start = self.now + Duration::from_millis(LLM_FIRST_MS);
        if self.llm_fails {
            let failure = ProviderFailure {
                timed_out: false,
                provider: "scripted".into(),
                message: "boom".into(),
            };
            self.schedule(start, turn, ProviderEvent::LlmFailed(failure));
            return;
        }
        let reply = match messages.last() {
            Some(ChatMessage::Tool { .. }) => "Your balance is 1,234.56 dollars. Anything else?",
            Some(ChatMessage::User(u)) if u.contains("balance") => {
                let mut at = start;
                for word in self.preamble.split_inclusive(' ') {
                    self.schedule(at, turn, ProviderEvent::LlmToken(word.to_owned()));
                    at = at + Duration::from_millis(TOKEN_MS);
                }
                let calls = if self.same_ids { 2 } else { 1 };
                for i in 0..calls {
                    let id = if self.same_ids {
                        "c1".to_owned()
                    } else {
                        format!("call_{turn}_{i}")
                    };
                    let call = ToolCall {
                        id,
                        name: self.tool_name.into(),
                        arguments: "{}".into(),
                    };
                    self.schedule(at, turn, ProviderEvent::LlmToolCall(call));
                }
                self.schedule(at, turn, ProviderEvent::LlmDone);
                return;
            }
            Some(ChatMessage::User(u)) if u.contains("story") => STORY,
            Some(ChatMessage::User(u)) if u.contains("tomorrow") => "Tomorrow it rains.",
            _ => WEATHER,
        };
        let mut at = start;
        for (i, word) in reply.split_inclusive(' ').enumerate() {
            if i > 0 {
                at = at + Duration::from_millis(TOKEN_MS);
            }
            self.schedule(at, turn, ProviderEvent::LlmToken(word.to_owned()));
        }
        self.schedule(at, turn, ProviderEvent::LlmDone);
    }

    fn script_tts(&mut self, turn: TurnId, seq: u32, text: &str) {
        let total = (text.len() as f64 / CHARS_PER_SECOND * 16000.0) as usize;
        let chunk = 1600;
        let mut at = self.now + Duration::from_millis(TTS_FIRST_MS);
        let mut i = 0;
        while i < total {
            let n = chunk.min(total - i);
            // Distinct, deterministic samples: (seq, index) encoded.
            let samples = (i..i + n)
                .map(|k| ((seq as usize * 7919 + k) % 30000) as i16 + 1)
                .collect();
            self.schedule(at, turn, ProviderEvent::TtsAudio { seq, samples });
            at = at
                + Duration::from_millis(if self.tts_realtime {
                    TTS_CHUNK_MS
                } else {
                    TTS_CHUNK_MS / 10
                });
            i += n;
        }
        self.schedule(at, turn, ProviderEvent::TtsDone { seq });
    }

    /// Runs the clock to `until`, delivering provider events and timeouts in time order.
    fn run_until(&mut self, until: Time) {
        loop {
            self.drain();
            let next_provider = self.scheduled.keys().next().map(|k| k.0);
            let next_timeout = self.s.poll_timeout();
            let next = match (next_provider, next_timeout) {
                (Some(a), Some(b)) => a.min(b),
                (a, b) => match a.or(b) {
                    Some(t) => t,
                    None => break,
                },
            };
            if next > until {
                break;
            }
            assert!(
                next >= self.now,
                "time went backwards: {next:?} < {:?}",
                self.now
            );
            self.now = next;
            if next_provider == Some(next) {
                let key = *self.scheduled.keys().next().unwrap();
                match self.scheduled.remove(&key).unwrap() {
                    (turn, Input::Provider(e)) => {
                        self.check.provider(&self.s, turn, &e);
                        self.s.handle_provider(next, turn, e);
                    }
                    (turn, Input::Stream(e)) => self.s.handle_asr_stream(next, turn, e),
                }
            } else {
                self.s.handle_timeout(next);
            }
        }
        self.now = self.now.max(until);
        self.drain();
    }

    fn run_ms(&mut self, d: u64) {
        self.run_until(self.now + Duration::from_millis(d));
    }

    /// Runs until nothing is left to happen (bounded).
    fn settle(&mut self) {
        self.run_ms(120_000);
    }

    /// Streams `d` ms of audio in 20 ms frames at real time.
    fn audio(&mut self, d: u64, sample: i16) {
        let frame = vec![sample; 320];
        for _ in 0..d / 20 {
            self.run_ms(20);
            self.s.handle_audio(self.now, &frame);
            self.drain();
        }
    }

    /// Streams `d` ms of a loud voiced buzz (speech to the VAD) in 20 ms frames at real time.
    fn voice(&mut self, d: u64) {
        for _ in 0..d / 20 {
            let start = self.s.input_pos;
            let frame: Vec<i16> = (start..start + 320)
                .map(|i| {
                    let t = i as f64 / 16000.0;
                    let s: f64 = (1..=8)
                        .map(|h| {
                            (2.0 * std::f64::consts::PI * 150.0 * h as f64 * t).sin() / h as f64
                        })
                        .sum();
                    (s * 6000.0) as i16
                })
                .collect();
            self.run_ms(20);
            self.s.handle_audio(self.now, &frame);
            self.drain();
        }
    }

    /// Streams recorded audio (16 kHz) in 20 ms frames at real time.
    fn play(&mut self, audio: &[i16]) {
        for frame in audio.chunks(320) {
            self.run_ms(20);
            self.s.handle_audio(self.now, frame);
            self.drain();
        }
    }

    fn speech_start(&mut self) {
        self.s.handle_speech_start(self.now);
        self.drain();
    }

    fn speech_end(&mut self) {
        self.s.handle_speech_end(self.now);
        self.drain();
    }

    /// A whole user utterance with client signals over silence.
    fn say(&mut self, d: u64) {
        self.speech_start();
        self.audio(d, 0);
        self.speech_end();
    }

    fn text(&mut self, t: &str) {
        self.s.handle_text(self.now, t);
        self.drain();
    }

    fn events(&self) -> Vec<&Event> {
        self.log
            .iter()
            .filter_map(|s| match &s.output {
                Output::Event(e) => Some(e),
                _ => None,
            })
            .collect()
    }

    fn audio_of(&self, turn: TurnId) -> Vec<u8> {
        self.log
            .iter()
            .filter_map(|s| match &s.output {
                Output::Audio { turn: t, pcm, .. } if *t == turn => Some(pcm.to_vec()),
                _ => None,
            })
            .flatten()
            .collect()
    }

    /// The `heard_text` of the first `Interrupted`.
    fn heard_text(&self) -> String {
        self.events()
            .into_iter()
            .find_map(|e| match e {
                Event::Interrupted { heard_text, .. } => Some(heard_text.clone()),
                _ => None,
            })
            .expect("an interruption")
    }

    /// Every `ResponseText`, in order.
    fn texts(&self) -> Vec<String> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                Event::ResponseText { text, .. } => Some(text.clone()),
                _ => None,
            })
            .collect()
    }

    fn first_at(&self, pred: impl Fn(&Output) -> bool) -> Option<Time> {
        self.log.iter().find(|s| pred(&s.output)).map(|s| s.at)
    }

    fn done_of(&self, turn: TurnId) -> (ResponseStatus, Timings, Option<&'static str>) {
        self.events()
            .into_iter()
            .find_map(|e| match e {
                Event::ResponseDone {
                    turn: t,
                    status,
                    timings,
                    reason,
                    ..
                } if *t == turn => Some((*status, *timings, *reason)),
                _ => None,
            })
            .unwrap_or_else(|| panic!("no response_done for {turn}: {:#?}", self.events()))
    }

    fn has(&self, pred: impl Fn(&Event) -> bool) -> bool {
        self.events().into_iter().any(pred)
    }

    /// Every response the LLM was asked for ended exactly once.
    fn assert_all_done(&self) {
        for t in &self.started {
            assert_eq!(self.check.done(*t), 1, "turn {t} has no response_done");
        }
    }
}

fn expected_samples(text: &str) -> usize {
    let mut s = crate::splitter::SentenceSplitter::default();
    let mut sentences = Vec::new();
    s.push(text, |x| sentences.push(x));
    sentences.extend(s.finish());
    sentences
        .iter()
        .map(|t| (t.len() as f64 / CHARS_PER_SECOND * 16000.0) as usize)
        .sum()
}

#[test]
fn simple_query_completes_with_all_its_audio() {
    let mut sim = Sim::new();
    sim.say(2000);
    sim.settle();
    let t1 = TurnId(1);
    assert!(sim.has(
        |e| matches!(e, Event::Transcript { text, .. } if text == "what's the weather like today")
    ));
    let (status, timings, _) = sim.done_of(t1);
    assert_eq!(status, ResponseStatus::Completed);
    assert_eq!(sim.audio_of(t1).len(), expected_samples(WEATHER) * 2);
    // The pipeline minimum with these delays: ASR 50 + first token 100 + 4 tokens to the first
    // sentence end (". " needs the next token) + TTS 50.
    let ttft = timings.first_audio_sent.unwrap() - timings.speech_end.unwrap();
    assert_eq!(ttft, Duration::from_millis(50 + 100 + 4 * 10 + 50));
    // response_done comes when the last sample has been heard, not when it was sent.
    let audio_ms = expected_samples(WEATHER) as u64 / 16;
    let done = timings.done.unwrap() - timings.first_audio_sent.unwrap();
    assert!(
        done >= Duration::from_millis(audio_ms) && done <= Duration::from_millis(audio_ms + 30),
        "done {done:?} after first audio; audio is {audio_ms} ms"
    );
    assert_eq!(
        sim.s.history(),
        &[
            ChatMessage::User("what's the weather like today".into()),
            ChatMessage::Assistant {
                text: WEATHER.into(),
                tool_calls: vec![]
            }
        ]
    );
    sim.assert_all_done();
}

#[test]
fn audio_is_paced_at_real_time_plus_the_lead() {
    let mut sim = Sim::new();
    sim.text("tell me the weather");
    sim.settle();
    let t1 = TurnId(1);
    let first = sim.first_at(|o| matches!(o, Output::Audio { .. })).unwrap();
    let mut sent = 0u64;
    for s in &sim.log {
        if let Output::Audio { turn, pcm, .. } = &s.output {
            assert_eq!(*turn, t1);
            // Nothing is sent more than the lead (200 ms = 3200 samples) ahead of the clock.
            let clock = SampleRate(16_000).samples_in(s.at - first);
            assert!(sent <= clock + 3200, "sent {sent} at clock {clock}");
            sent += pcm.len() as u64 / 2;
        }
    }
    // The lead is used in full once TTS has delivered enough.
    let mut sent = 0u64;
    let mut max_ahead = 0u64;
    for s in &sim.log {
        if let Output::Audio { pcm, .. } = &s.output {
            sent += pcm.len() as u64 / 2;
            let clock = SampleRate(16_000).samples_in(s.at - first);
            max_ahead = max_ahead.max(sent.saturating_sub(clock));
        }
    }
    assert_eq!(max_ahead, 3200);
}

#[test]
fn tool_call_runs_the_tool_and_speaks_the_answer() {
    let mut sim = Sim::new();
    sim.say(3000);
    sim.settle();
    let t1 = TurnId(1);
    assert!(sim.has(|e| matches!(e, Event::ToolCall { call, .. } if call.name == "check_balance")));
    assert!(sim.has(|e| matches!(e, Event::ToolResult { elapsed, .. } if *elapsed == Duration::from_millis(TOOL_MS))));
    assert_eq!(sim.done_of(t1).0, ResponseStatus::Completed);
    let h = sim.s.history();
    assert!(matches!(&h[1], ChatMessage::Assistant { tool_calls, .. } if tool_calls.len() == 1));
    assert!(matches!(&h[2], ChatMessage::Tool { content, .. } if content.contains("1,234.56")));
    assert!(
        matches!(&h[3], ChatMessage::Assistant { text, .. } if text.starts_with("Your balance"))
    );
    // No filler: the tool answered within the filler delay.
    assert!(!sim
        .has(|e| matches!(e, Event::ResponseText { text, .. } if text.starts_with("One moment"))));
}

#[test]
fn a_slow_tool_gets_a_filler_that_is_heard_but_not_in_history() {
    let mut sim = Sim::new();
    sim.tool_ms = 2500;
    sim.say(3000);
    sim.settle();
    let texts: Vec<_> = sim.texts();
    assert_eq!(texts[0], "One moment while I check that.");
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Completed);
    let last = sim.s.history().last().unwrap();
    assert!(matches!(last, ChatMessage::Assistant { text, .. } if !text.contains("One moment")));
}

#[test]
fn a_filler_waits_for_the_bot_to_finish_what_it_was_saying() {
    let mut sim = Sim::new();
    sim.preamble = "Let me check that for you. ";
    sim.tool_ms = 5000;
    sim.say(3000);
    sim.settle();
    let texts: Vec<String> = sim.texts();
    assert_eq!(texts[0], "Let me check that for you.");
    assert_eq!(texts[1], "One moment while I check that.");
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Completed);
    // The filler starts only once the preamble has been heard.
    let preamble_ms = expected_samples("Let me check that for you.") as u64 / 16;
    let first = sim.first_at(|o| matches!(o, Output::Audio { .. })).unwrap();
    let filler = sim
        .first_at(|o| matches!(o, Output::StartTts { seq: 1, .. }))
        .unwrap();
    assert!(filler >= first + Duration::from_millis(preamble_ms));
}

#[test]
fn repeated_tool_call_ids_do_not_hang_the_turn() {
    let mut sim = Sim::new();
    sim.same_ids = true;
    sim.say(3000);
    sim.settle();
    let results = sim
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::ToolResult { .. }))
        .count();
    assert_eq!(results, 2);
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Completed);
}

#[test]
fn a_zero_tts_backlog_still_speaks() {
    let mut sim = Sim::with(SessionConfig {
        vad: None,
        max_tts_backlog: Duration::ZERO,
        ..SessionConfig::default()
    });
    sim.text("weather");
    sim.settle();
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Completed);
    assert_eq!(sim.audio_of(TurnId(1)).len(), expected_samples(WEATHER) * 2);
}

#[test]
fn heard_text_of_a_sentence_still_being_synthesized_follows_the_clock() {
    let mut sim = Sim::new();
    sim.tts_realtime = true;
    sim.text("tell me a story");
    sim.run_ms(400);
    let first = sim.first_at(|o| matches!(o, Output::Audio { .. })).unwrap();
    sim.run_until(first + Duration::from_millis(800));
    sim.text("stop");
    let heard = sim.heard_text();
    // 0.8 s of "Once upon a time there was a lighthouse." (40 characters at 14 a second).
    assert_eq!(heard, "Once upon a");
}

#[test]
fn real_interruption_cancels_the_turn_and_keeps_only_what_was_heard() {
    let mut sim = Sim::new();
    sim.text("tell me a story");
    sim.run_ms(1500);
    let t1 = TurnId(1);
    let first = sim.first_at(|o| matches!(o, Output::Audio { .. })).unwrap();
    assert!(first < sim.now);
    sim.speech_start();
    let paused_at = sim.now;
    let audio_before = sim.audio_of(t1).len();
    sim.audio(1500, 0);
    sim.speech_end();
    sim.settle();

    // Interrupted once the speech reached min_interruption (500 ms of audio).
    let interrupted_at = sim
        .first_at(|o| matches!(o, Output::Event(Event::Interrupted { .. })))
        .unwrap();
    assert_eq!(interrupted_at - paused_at, Duration::from_millis(500));
    assert_eq!(
        sim.audio_of(t1).len(),
        audio_before,
        "no audio after the pause"
    );
    assert!(sim.cancelled.contains(&t1));
    let (played_ms, heard) = sim
        .events()
        .into_iter()
        .find_map(|e| match e {
            Event::Interrupted {
                played_ms,
                heard_text,
                ..
            } => Some((*played_ms, heard_text.clone())),
            _ => None,
        })
        .unwrap();
    let expected_played = (paused_at - first).as_secs_f64() * 1000.0;
    assert!(
        (played_ms - expected_played).abs() < 0.1,
        "{played_ms} vs {expected_played}"
    );
    assert!(STORY.starts_with(&heard), "{heard:?}");
    assert!(!heard.is_empty() && heard.len() < STORY.len());
    // History keeps only what was heard; the next turn answers the new speech.
    assert_eq!(
        sim.s.history()[1],
        ChatMessage::Assistant {
            text: heard.clone(),
            tool_calls: vec![]
        }
    );
    assert_eq!(sim.done_of(t1).0, ResponseStatus::Interrupted);
    assert_eq!(sim.done_of(TurnId(2)).0, ResponseStatus::Completed);
    sim.assert_all_done();
}

#[test]
fn heard_text_counts_only_speech_that_was_played() {
    let mut sim = Sim::new();
    sim.text("tell me a story");
    // Every sentence of the reply is known, but only the first is synthesized when the user
    // barges in 300 ms into it.
    sim.run_ms(600);
    let first = sim.first_at(|o| matches!(o, Output::Audio { .. })).unwrap();
    sim.run_until(first + Duration::from_millis(300));
    sim.text("stop");
    let heard = sim.heard_text();
    // 300 ms of "Once upon a time there was a lighthouse." (40 chars, ~2.9 s) is ~4 characters.
    assert_eq!(heard, "Once");
    assert_eq!(
        sim.s.history()[1],
        ChatMessage::Assistant {
            text: "Once".into(),
            tool_calls: vec![]
        }
    );
}

#[test]
fn false_alarm_resumes_and_the_bytes_equal_an_uninterrupted_response() {
    let mut reference = Sim::new();
    reference.text("tell me a story");
    reference.settle();
    let full = reference.audio_of(TurnId(1));

    let mut sim = Sim::new();
    sim.text("tell me a story");
    sim.run_ms(1200);
    sim.say(300); // "mhm"
    sim.settle();
    assert!(sim.has(|e| matches!(e, Event::PlaybackPaused { turn, .. } if *turn == TurnId(1))));
    assert!(sim.has(|e| matches!(e, Event::PlaybackResumed { turn } if *turn == TurnId(1))));
    assert!(sim.has(
        |e| matches!(e, Event::Transcript { turn, text, .. } if *turn == TurnId(2) && text == "mhm")
    ));
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Completed);
    assert_eq!(
        sim.audio_of(TurnId(1)),
        full,
        "byte-identical after a false alarm"
    );
    assert!(
        sim.check.done(TurnId(2)) == 0,
        "a false alarm starts no response"
    );
    // The pause lasted speech (300 ms) + ASR (50 ms): the response ends that much later.
    let end = |s: &Sim| s.done_of(TurnId(1)).1.done.unwrap();
    let shift = end(&sim) - end(&reference);
    assert!(
        shift >= Duration::from_millis(340) && shift <= Duration::from_millis(370),
        "{shift:?}"
    );
}

#[test]
fn two_false_alarms_in_a_row() {
    let mut sim = Sim::new();
    sim.text("tell me a story");
    sim.run_ms(1000);
    sim.say(200);
    sim.run_ms(500);
    sim.say(200);
    sim.settle();
    let resumed = sim
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::PlaybackResumed { .. }))
        .count();
    assert_eq!(resumed, 2);
    let mut reference = Sim::new();
    reference.text("tell me a story");
    reference.settle();
    assert_eq!(sim.audio_of(TurnId(1)), reference.audio_of(TurnId(1)));
    sim.assert_all_done();
}

#[test]
fn real_words_in_a_short_barge_in_interrupt() {
    let mut sim = Sim::new();
    sim.text("tell me a story");
    sim.run_ms(1000);
    sim.asr_answers.push("stop");
    sim.say(300);
    sim.settle();
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Interrupted);
    // The interruption is decided by the transcript, 50 ms after the speech ended.
    let resp = sim.done_of(TurnId(2));
    assert_eq!(resp.0, ResponseStatus::Completed);
    sim.assert_all_done();
}

#[test]
fn barge_in_timeout_without_speech_end_is_a_false_alarm() {
    let mut sim = Sim::new();
    sim.text("tell me a story");
    sim.run_ms(1000);
    sim.speech_start(); // and then nothing: no audio, no speech_end
    let paused_at = sim.now;
    sim.run_ms(2500);
    let resumed_at = sim
        .first_at(|o| matches!(o, Output::Event(Event::PlaybackResumed { .. })))
        .unwrap();
    assert_eq!(resumed_at - paused_at, Duration::from_millis(2000));
    sim.speech_end(); // a late speech_end is ignored
    sim.settle();
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Completed);
    assert_eq!(sim.check.done(TurnId(2)), 0);
}

#[test]
fn interruption_during_the_pause_of_a_false_alarm() {
    let mut sim = Sim::new();
    sim.text("tell me a story");
    sim.run_ms(1000);
    // A short sound; while its transcript is pending, the user speaks for real.
    sim.say(200);
    sim.speech_start();
    sim.audio(600, 0);
    sim.speech_end();
    sim.settle();
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Interrupted);
    // Both fragments form one utterance (turn 3); fragment 2's transcription was cancelled.
    assert!(sim.cancelled.contains(&TurnId(2)));
    assert_eq!(sim.done_of(TurnId(3)).0, ResponseStatus::Completed);
    assert!(!sim.has(|e| matches!(e, Event::PlaybackResumed { .. })));
    sim.assert_all_done();
}

#[test]
fn speech_start_while_the_first_sentence_is_still_in_tts() {
    let mut sim = Sim::new();
    sim.text("tell me the weather");
    // First sentence complete at 100 + 4*10 ms; its TTS answers 50 ms later.
    sim.run_ms(150);
    assert!(sim
        .log
        .iter()
        .any(|s| matches!(s.output, Output::StartTts { .. })));
    assert!(!sim
        .log
        .iter()
        .any(|s| matches!(s.output, Output::Audio { .. })));
    sim.say(300); // a false alarm while nothing has played yet
    sim.settle();
    // Nothing was playing, so there was nothing to pause or resume.
    assert!(!sim.has(|e| matches!(e, Event::PlaybackPaused { .. })));
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Completed);
    // No audio went out while the user was speaking.
    let first = sim.first_at(|o| matches!(o, Output::Audio { .. })).unwrap();
    assert!(first >= Time::from_millis(150 + 300 + 50));
}

#[test]
fn speech_while_thinking_cancels_and_the_next_reply_answers_both() {
    let mut sim = Sim::new();
    sim.say(2000); // weather
    sim.run_ms(120); // transcript in, LLM running, no audio yet
    assert_eq!(sim.s.current_response(), Some(TurnId(1)));
    sim.say(1000); // "what about tomorrow", long enough to interrupt
    sim.settle();
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Interrupted);
    assert!(sim.audio_of(TurnId(1)).is_empty());
    assert_eq!(
        sim.s.history()[0],
        ChatMessage::User("what's the weather like today what about tomorrow".into())
    );
    assert_eq!(sim.done_of(TurnId(2)).0, ResponseStatus::Completed);
    sim.assert_all_done();
}

#[test]
fn speech_while_transcribing_carries_the_audio_into_the_next_turn() {
    let mut sim = Sim::new();
    sim.asr_ms = 1000;
    sim.say(1000);
    sim.run_ms(20); // ASR of turn 1 still running
    sim.say(1000);
    sim.settle();
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Interrupted);
    // Turn 2 was transcribed from both utterances: 2 s of audio → the weather question.
    assert!(sim.has(|e| matches!(e, Event::Transcript { turn, text, .. } if *turn == TurnId(2) && text == "what's the weather like today")));
    sim.assert_all_done();
}

#[test]
fn barge_in_during_a_tool_call_cancels_the_tool() {
    let mut sim = Sim::new();
    sim.tool_ms = 5000;
    sim.say(3000);
    sim.run_ms(1500); // the filler is playing, the tool still running
    assert!(sim.has(|e| matches!(e, Event::AudioStart { .. })));
    sim.say(800);
    sim.settle();
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Interrupted);
    assert!(
        !sim.has(|e| matches!(e, Event::ToolResult { turn, .. } if *turn == TurnId(1))),
        "the tool was cancelled"
    );
    // Neither the unanswered tool call nor the filler is in history.
    assert!(sim
        .s
        .history()
        .iter()
        .all(|m| !matches!(m, ChatMessage::Tool { call_id, .. } if call_id == "call_1_0")));
    assert!(sim
        .s
        .history()
        .iter()
        .all(|m| !matches!(m, ChatMessage::Assistant { text, .. } if text.contains("One moment"))));
    sim.assert_all_done();
}

#[test]
fn late_events_of_a_cancelled_turn_are_dropped() {
    let mut sim = Sim::new();
    sim.text("tell me a story");
    sim.run_ms(800);
    sim.text("stop");
    let before = sim.log.len();
    // A provider that ignored the cancellation delivers late.
    sim.s.handle_provider(
        sim.now,
        TurnId(1),
        ProviderEvent::TtsAudio {
            seq: 1,
            samples: vec![1; 3200],
        },
    );
    sim.s
        .handle_provider(sim.now, TurnId(1), ProviderEvent::LlmToken("late ".into()));
    sim.drain();
    assert!(sim.log[before..]
        .iter()
        .all(|s| !matches!(&s.output, Output::Audio { turn, .. } | Output::Event(Event::ResponseText { turn, .. }) if *turn == TurnId(1))));
    sim.settle();
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Interrupted);
    sim.assert_all_done();
}

#[test]
fn provider_failure_fails_the_turn_and_the_session_goes_on() {
    let mut sim = Sim::new();
    sim.llm_fails = true;
    sim.text("hello");
    sim.settle();
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Failed);
    assert!(sim.has(|e| matches!(
        e,
        Event::ProviderError {
            stage: Stage::Llm,
            ..
        }
    )));
    sim.llm_fails = false;
    sim.text("hello again");
    sim.settle();
    assert_eq!(sim.done_of(TurnId(2)).0, ResponseStatus::Completed);
}

#[test]
fn an_empty_transcript_ends_the_turn_without_a_reply() {
    let mut sim = Sim::new();
    sim.asr_answers.push("");
    sim.say(800);
    sim.settle();
    let (status, _, reason) = sim.done_of(TurnId(1));
    assert_eq!(
        (status, reason),
        (ResponseStatus::Completed, Some("no_speech"))
    );
    assert!(sim.s.history().is_empty());
}

#[test]
fn server_vad_drives_turns_over_voiced_audio() {
    let mut sim = Sim::with(webrtc_vad());
    sim.audio(300, 0);
    // A loud buzz the VAD classifies as speech, then silence past the hangover.
    sim.voice(2000);
    assert!(sim.s.user_speaking());
    sim.audio(700, 0);
    assert!(!sim.s.user_speaking());
    sim.settle();
    let duration = sim
        .events()
        .into_iter()
        .find_map(|e| match e {
            Event::SpeechStopped { duration, .. } => Some(*duration),
            _ => None,
        })
        .unwrap();
    assert!(
        duration >= Duration::from_millis(1900) && duration <= Duration::from_millis(2200),
        "{duration:?}"
    );
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Completed);
}

fn streaming() -> SessionConfig {
    SessionConfig {
        vad: None,
        streaming_asr: true,
        ..SessionConfig::default()
    }
}

fn streaming_vad() -> SessionConfig {
    SessionConfig {
        streaming_asr: true,
        ..webrtc_vad()
    }
}

/// The outputs of `turn` that concern its recognition stream, by name, in order.
fn stream_outputs(sim: &Sim, turn: TurnId) -> Vec<&'static str> {
    sim.log
        .iter()
        .filter_map(|s| match &s.output {
            Output::OpenAsrStream(t) if *t == turn => Some("open"),
            Output::PushAsrStream { turn: t, .. } if *t == turn => Some("push"),
            Output::FinalizeAsrStream(t) if *t == turn => Some("finalize"),
            Output::CloseAsrStream(t) if *t == turn => Some("close"),
            Output::StartAsr { turn: t, .. } if *t == turn => Some("whole"),
            _ => None,
        })
        .fold(Vec::new(), |mut v, name| {
            // Runs of pushes count once.
            if !(name == "push" && v.last() == Some(&"push")) {
                v.push(name);
            }
            v
        })
}

#[test]
fn a_stream_opens_as_speech_begins_catches_up_and_gives_the_transcript() {
    let mut sim = Sim::with(streaming());
    // Connecting takes 200 ms: the first 200 ms of speech wait in the session.
    sim.stream.open_ms = 200;
    sim.say(2000);
    // The whole utterance was heard by the stream, in order (the scripted stream checks that the
    // pushes are contiguous), and no whole-utterance transcription ran.
    assert!(sim.asr_calls.is_empty(), "{:?}", sim.asr_calls);
    assert_eq!(
        stream_outputs(&sim, TurnId(1)),
        ["open", "push", "finalize"]
    );
    // The first push after connecting carries the audio that waited: the nine 20 ms frames that
    // arrived before it connected.
    let first = sim.log.iter().find_map(|s| match &s.output {
        Output::PushAsrStream { samples, .. } => Some(samples.clone()),
        _ => None,
    });
    assert_eq!(first, Some(0..180 * 16));
    sim.settle();
    assert!(sim.has(
        |e| matches!(e, Event::Transcript { text, is_final: true, .. }
        if text == "what's the weather like today")
    ));
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Completed);
    sim.assert_all_done();
}

#[test]
fn an_utterance_that_ends_before_its_stream_connects_is_finalized_on_connect() {
    let mut sim = Sim::with(streaming());
    sim.stream.open_ms = 1500;
    sim.say(1000);
    assert_eq!(stream_outputs(&sim, TurnId(1)), ["open"]);
    sim.run_ms(600);
    assert_eq!(
        stream_outputs(&sim, TurnId(1)),
        ["open", "push", "finalize"]
    );
    sim.settle();
    assert!(sim.asr_calls.is_empty());
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Completed);
}

#[test]
fn interim_and_final_segments_reach_the_client_as_interim_transcripts() {
    let mut sim = Sim::with(streaming());
    sim.speech_start();
    sim.audio(400, 0);
    sim.stream_event(TurnId(1), AsrStreamEvent::Interim("what's the".into()));
    sim.stream_event(
        TurnId(1),
        AsrStreamEvent::Final {
            text: "what's the weather".into(),
            speech_final: false,
        },
    );
    // An event of a turn that has no stream changes nothing.
    sim.stream_event(TurnId(7), AsrStreamEvent::Interim("nobody".into()));
    let interims: Vec<&str> = sim
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Transcript {
                text,
                is_final: false,
                ..
            } => Some(text.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(interims, ["what's the", "what's the weather"]);
    // A client's speech_end decides when its utterance ends, whatever the provider's endpoint.
    sim.stream_event(
        TurnId(1),
        AsrStreamEvent::Final {
            text: "what's the weather".into(),
            speech_final: true,
        },
    );
    assert!(sim.s.user_speaking(), "the client's speech_end decides");
    sim.audio(1600, 0);
    sim.speech_end();
    sim.settle();
    sim.assert_all_done();
}

#[test]
fn a_streaming_asr_endpoint_ends_vad_speech_before_the_hangover() {
    let mut sim = Sim::with(streaming_vad());
    sim.audio(300, 0);
    sim.voice(1000);
    let (turn, audio) = sim.s.utterance().expect("speaking");
    // The utterance so far holds the pre-roll and every voiced frame.
    assert!(audio.len() >= 16 * 1000, "{}", audio.len());
    // 100 ms of silence: the VAD's 500 ms hangover has not passed, the provider says "final".
    sim.audio(100, 0);
    assert!(sim.s.user_speaking());
    let endpoint = |speech_final| AsrStreamEvent::Final {
        text: "what about tomorrow".into(),
        speech_final,
    };
    sim.stream_event(turn, endpoint(false));
    assert!(sim.s.user_speaking(), "a final segment is not an endpoint");
    sim.stream_event(TurnId(99), endpoint(true)); // another turn's endpoint changes nothing
    assert!(sim.s.user_speaking());
    sim.stream_event(turn, endpoint(true));
    assert!(!sim.s.user_speaking());
    assert_eq!(stream_outputs(&sim, turn), ["open", "push", "finalize"]);
    let stopped = sim.first_at(|o| matches!(o, Output::Event(Event::SpeechStopped { .. })));
    assert_eq!(
        stopped,
        Some(sim.now),
        "the utterance ended at the endpoint"
    );
    sim.settle();
    assert_eq!(sim.done_of(turn).0, ResponseStatus::Completed);
    // The VAD goes on: the next utterance is detected as usual.
    sim.voice(1000);
    assert!(sim.s.user_speaking());
}

#[test]
fn a_stream_that_fails_while_the_user_speaks_leaves_the_utterance_to_the_fallback() {
    let mut sim = Sim::with(streaming());
    sim.stream.fail_after = Some(500 * 16);
    sim.say(2000);
    // The stream failed at 500 ms; the utterance went whole, from the chain's fallback.
    assert_eq!(stream_outputs(&sim, TurnId(1)), ["open", "push", "whole"]);
    assert_eq!(sim.asr_calls, [(TurnId(1), 32_000, true)]);
    sim.settle();
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Completed);
}

#[test]
fn a_stream_that_fails_to_finalize_leaves_the_utterance_to_the_fallback() {
    let mut sim = Sim::with(streaming());
    sim.stream.fail_finalize = true;
    sim.say(2000);
    sim.run_ms(100);
    assert_eq!(
        stream_outputs(&sim, TurnId(1)),
        ["open", "push", "finalize", "whole"]
    );
    assert_eq!(sim.asr_calls, [(TurnId(1), 32_000, true)]);
    sim.settle();
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Completed);
}

#[test]
fn a_stream_that_cannot_connect_leaves_the_utterance_to_the_fallback() {
    for (opens, after_stream) in [(Opens::Fails, true), (Opens::Unavailable, true)] {
        let mut sim = Sim::with(streaming());
        sim.stream.open = opens;
        sim.say(2000);
        assert_eq!(
            stream_outputs(&sim, TurnId(1)),
            ["open", "whole"],
            "{opens:?}"
        );
        assert_eq!(sim.asr_calls, [(TurnId(1), 32_000, after_stream)]);
        sim.settle();
        assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Completed);
    }
}

#[test]
fn carried_audio_goes_whole_since_the_stream_never_heard_it() {
    let mut sim = Sim::with(streaming());
    // The first utterance's transcript is slow; the user goes on before it arrives.
    sim.stream.finalize_ms = 1000;
    sim.say(1000);
    sim.run_ms(20);
    sim.say(1000);
    // Turn 1 was cancelled with its stream; turn 2 carries its audio, which turn 2's stream
    // never heard: closed, and the two utterances are transcribed together.
    assert_eq!(
        stream_outputs(&sim, TurnId(2)),
        ["open", "push", "close", "whole"]
    );
    assert_eq!(sim.asr_calls, [(TurnId(2), 32_000, false)]);
    sim.settle();
    sim.assert_all_done();
}

#[test]
fn a_dismissed_utterance_closes_its_stream_and_nothing_of_it_runs_on() {
    let mut sim = Sim::with(streaming());
    sim.text("tell me a story");
    sim.run_ms(600);
    // A barge-in candidate that never ends: a false alarm at the timeout.
    sim.speech_start();
    sim.audio(200, 0);
    let candidate = TurnId(2);
    assert_eq!(stream_outputs(&sim, candidate), ["open", "push"]);
    sim.run_ms(3000);
    assert!(sim.cancelled.contains(&candidate));
    // A late event of its stream is ignored.
    sim.stream_event(candidate, AsrStreamEvent::Finalized("stop".into()));
    assert!(!sim.has(|e| matches!(e, Event::Interrupted { .. })));
    sim.settle();
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Completed);
}

#[test]
fn a_turn_is_released_once_its_response_is_done_or_its_candidate_judged() {
    let mut sim = Sim::with(streaming());
    sim.text("tell me a story");
    sim.run_ms(1500);
    // A backchannel: judged a false alarm, its turn released; the story goes on.
    sim.asr_answers.push("mhm");
    sim.say(300);
    sim.run_ms(200);
    let released = |sim: &Sim, turn| {
        sim.log
            .iter()
            .any(|s| matches!(s.output, Output::TurnReleased(t) if t == turn))
    };
    assert!(sim.has(|e| matches!(e, Event::FalseAlarm { turn } if *turn == TurnId(2))));
    assert!(released(&sim, TurnId(2)));
    assert!(!released(&sim, TurnId(1)), "the story is still playing");
    sim.settle();
    assert!(released(&sim, TurnId(1)));
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Completed);
}

#[test]
fn say_speaks_the_words_verbatim_as_a_bot_turn_and_they_enter_history() {
    let mut sim = Sim::new();
    let greeting = "Hi, I'm the bank's assistant. How can I help?";
    sim.s.handle_say(sim.now, greeting);
    sim.drain();
    // No LLM: the words themselves, sentence by sentence.
    assert!(sim.started.is_empty());
    assert_eq!(
        sim.texts(),
        ["Hi, I'm the bank's assistant.", "How can I help?"]
    );
    sim.settle();
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Completed);
    assert_eq!(
        sim.s.history(),
        [ChatMessage::Assistant {
            text: greeting.to_owned(),
            tool_calls: Vec::new()
        }]
    );
    // The user answers the greeting: the LLM sees it first in the history.
    sim.say(1000);
    sim.settle();
    assert_eq!(sim.done_of(TurnId(2)).0, ResponseStatus::Completed);
    assert!(matches!(
        &sim.s.history()[..2],
        [ChatMessage::Assistant { .. }, ChatMessage::User(u)] if u == "what about tomorrow"
    ));
}

#[test]
fn a_greeting_is_interrupted_by_a_barge_in_and_only_what_was_heard_stays() {
    let mut sim = Sim::with(SessionConfig {
        vad: None,
        ..SessionConfig::default()
    });
    sim.tts_realtime = true;
    sim.s.handle_say(sim.now, STORY);
    sim.drain();
    sim.run_ms(2000);
    // The user cuts in with real words.
    sim.speech_start();
    sim.audio(1500, 0);
    sim.speech_end();
    sim.settle();
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Interrupted);
    let heard = sim.heard_text();
    assert!(!heard.is_empty() && STORY.starts_with(&heard), "{heard:?}");
    let Some(ChatMessage::Assistant { text, .. }) = sim.s.history().first() else {
        panic!("{:?}", sim.s.history());
    };
    assert_eq!(*text, heard, "the history holds what was heard");
    assert_eq!(sim.done_of(TurnId(2)).0, ResponseStatus::Completed);
}

#[test]
fn respond_asks_the_llm_now_from_the_history_as_it_stands() {
    let mut sim = Sim::new();
    sim.s.handle_respond(sim.now);
    sim.drain();
    // The bot speaks first: the LLM gets only the system prompt.
    let messages = sim
        .log
        .iter()
        .find_map(|s| match &s.output {
            Output::StartLlm { messages, .. } => Some(messages.clone()),
            _ => None,
        })
        .expect("an LLM round");
    assert!(matches!(messages.as_slice(), [ChatMessage::System(_)]));
    sim.settle();
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Completed);
    assert!(sim.s.history().len() == 1, "{:?}", sim.s.history());
}

#[test]
fn cancel_stops_the_response_as_a_barge_in_would_and_nothing_else() {
    let mut sim = Sim::new();
    // Nothing in progress: nothing happens.
    sim.s.handle_cancel(sim.now);
    sim.drain();
    assert!(sim.log.is_empty());
    sim.tts_realtime = true;
    sim.text("tell me a story");
    sim.run_ms(1500);
    let before = sim.audio_of(TurnId(1)).len();
    assert!(before > 0);
    sim.s.handle_cancel(sim.now);
    sim.drain();
    assert!(sim.has(|e| matches!(e, Event::Interrupted { turn, .. } if *turn == TurnId(1))));
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Interrupted);
    assert!(sim.cancelled.contains(&TurnId(1)));
    sim.settle();
    assert_eq!(
        sim.audio_of(TurnId(1)).len(),
        before,
        "no audio after the cancel"
    );
    // A say or respond during a response replaces it.
    sim.text("tell me a story");
    sim.run_ms(800);
    sim.s.handle_say(sim.now, "One moment.");
    sim.drain();
    assert_eq!(sim.done_of(TurnId(2)).0, ResponseStatus::Interrupted);
    sim.settle();
    assert_eq!(sim.done_of(TurnId(3)).0, ResponseStatus::Completed);
    sim.assert_all_done();
}

#[test]
fn a_session_update_shapes_the_next_response_and_greets() {
    let mut sim = Sim::new();
    sim.s.handle_update(
        sim.now,
        SessionUpdate {
            instructions: Some("The caller is Bob; his order is #123.".into()),
            history: Some(vec![
                ChatMessage::User("hi, it's Bob".into()),
                ChatMessage::Assistant {
                    text: "Hello Bob.".into(),
                    tool_calls: Vec::new(),
                },
            ]),
            min_interruption: Some(Duration::from_millis(300)),
            // Below the new min_interruption: raised to it.
            false_interruption_timeout: Some(Duration::from_millis(100)),
            greeting: Some("Welcome back, Bob.".into()),
            ..SessionUpdate::default()
        },
    );
    sim.drain();
    let updated = sim
        .events()
        .into_iter()
        .find_map(|e| match e {
            Event::SessionUpdated {
                instructions,
                min_interruption,
                false_interruption_timeout,
                history_messages,
                ..
            } => Some((
                instructions.clone(),
                *min_interruption,
                *false_interruption_timeout,
                *history_messages,
            )),
            _ => None,
        })
        .expect("session_updated");
    assert_eq!(
        updated,
        (
            "The caller is Bob; his order is #123.".to_owned(),
            Duration::from_millis(300),
            Duration::from_millis(300),
            2
        )
    );
    // The greeting is spoken at once.
    assert_eq!(sim.texts(), ["Welcome back, Bob."]);
    sim.settle();
    // The next LLM request has the instructions and the seeded history, then the greeting.
    sim.text("where is my order");
    let messages = sim
        .log
        .iter()
        .find_map(|s| match &s.output {
            Output::StartLlm { messages, .. } => Some(messages.clone()),
            _ => None,
        })
        .unwrap();
    assert_eq!(
        messages[0],
        ChatMessage::System("The caller is Bob; his order is #123.".into())
    );
    assert_eq!(messages[1], ChatMessage::User("hi, it's Bob".into()));
    assert!(
        matches!(&messages[3], ChatMessage::Assistant { text, .. } if text == "Welcome back, Bob.")
    );
    assert_eq!(messages[4], ChatMessage::User("where is my order".into()));
    sim.settle();
    sim.assert_all_done();
}

#[test]
fn history_stays_bounded() {
    let mut sim = Sim::with(SessionConfig {
        vad: None,
        max_history_messages: 6,
        ..SessionConfig::default()
    });
    for _ in 0..10 {
        sim.text("tomorrow?");
        sim.settle();
    }
    assert!(sim.s.history().len() <= 6);
    assert!(matches!(sim.s.history()[0], ChatMessage::User(_)));
}

/// The checker itself: a promise broken on purpose is caught.
mod checker {
    use super::*;

    fn done(turn: TurnId) -> Output {
        Output::Event(Event::ResponseDone {
            turn,
            status: ResponseStatus::Completed,
            audio_ms: 0.0,
            timings: Timings::default(),
            reason: None,
        })
    }

    #[test]
    #[should_panic(expected = "0 produced")]
    fn audio_that_was_never_produced() {
        let mut c = Checker::new(&SessionConfig::default());
        let turn = TurnId(1);
        c.output(&Output::Event(Event::AudioStart {
            turn,
            sample_rate: SampleRate(16_000),
            ttft: Duration::ZERO,
        }));
        c.output(&Output::Audio {
            turn,
            pcm: Bytes::from_static(&[1, 0]),
            at: 0,
        });
    }

    #[test]
    #[should_panic(expected = "audio while paused")]
    fn audio_while_paused() {
        let mut sim = Sim::new();
        sim.text("tell me a story");
        sim.run_ms(1000);
        let turn = TurnId(1);
        sim.check.output(&Output::Event(Event::PlaybackPaused {
            turn,
            rewound_to: None,
        }));
        sim.run_ms(1000);
    }

    #[test]
    #[should_panic(expected = "two response_done")]
    fn two_response_done() {
        let mut c = Checker::new(&SessionConfig::default());
        c.output(&done(TurnId(1)));
        c.output(&done(TurnId(1)));
    }

    #[test]
    #[should_panic(expected = "which no response ending now had played")]
    fn history_with_words_that_were_not_sent() {
        let mut sim = Sim::new();
        sim.text("weather");
        sim.settle();
        // A checker that saw the response end but none of its audio: the history's answer was
        // never heard, as far as it knows.
        let mut c = Checker::new(&SessionConfig::default());
        c.output(&done(TurnId(1)));
        c.step(&sim.s);
    }
}

mod properties {
    //! Random dialogues: whatever the user does and whenever, and however fast the providers
    //! are, the invariants hold (`Sim::drain` runs the `Checker` on every output: no audio while
    //! paused or after `interrupted`, one `response_done` per response, audio sent a prefix of
    //! audio produced, history only what was heard) and every response ends exactly once.

    use proptest::prelude::*;

    use super::*;

    #[derive(Debug, Clone)]
    enum Action {
        SpeechStart,
        SpeechEnd,
        Audio(u64),
        Voice(u64),
        Text(u8),
        Wait(u64),
        LlmFails(bool),
        UserAudio(u64),
        Respond,
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            Just(Action::SpeechStart),
            Just(Action::SpeechEnd),
            (1u64..60).prop_map(|n| Action::Audio(n * 20)),
            (1u64..60).prop_map(|n| Action::Voice(n * 20)),
            (0u8..4).prop_map(Action::Text),
            (1u64..3000).prop_map(Action::Wait),
            any::<bool>().prop_map(Action::LlmFails),
            (1u64..150).prop_map(|n| Action::UserAudio(n * 20)),
            Just(Action::Respond),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn invariants_hold_for_any_dialogue(
            actions in proptest::collection::vec(action(), 1..30),
            slow_tools in any::<bool>(),
            server_vad in any::<bool>(),
            tts_realtime in any::<bool>(),
            asr_ms in 10u64..1500,
            answer_turns in any::<bool>(),
            interrupt_on_speech in any::<bool>(),
        ) {
            let cfg = if server_vad {
                webrtc_vad()
            } else {
                SessionConfig { vad: None, ..SessionConfig::default() }
            };
            let mut sim = Sim::with(SessionConfig { answer_turns, interrupt_on_speech, ..cfg });
            if slow_tools {
                sim.tool_ms = 1500;
            }
            sim.tts_realtime = tts_realtime;
            sim.asr_ms = asr_ms;
            for a in actions {
                match a {
                    Action::SpeechStart => sim.speech_start(),
                    Action::SpeechEnd => sim.speech_end(),
                    Action::Audio(ms) => sim.audio(ms, 0),
                    Action::Voice(ms) => sim.voice(ms),
                    Action::Text(i) => sim.text(["tell me a story", "balance", "tomorrow", "hi"][i as usize]),
                    Action::Wait(ms) => sim.run_ms(ms),
                    Action::LlmFails(fails) => sim.llm_fails = fails,
                    Action::UserAudio(ms) => {
                        sim.s.handle_user_audio(sim.now, &vec![0; ms as usize * 16]);
                        sim.drain();
                    }
                    Action::Respond => {
                        sim.s.handle_respond(sim.now);
                        sim.drain();
                    }
                }
            }
            sim.speech_end();
            sim.audio(1000, 0); // past any VAD hangover
            sim.settle();
            sim.assert_all_done();
            for t in 1..=sim.s.next_turn {
                let t = TurnId(t);
                prop_assert!(sim.check.audio_sent(t) <= sim.check.audio_produced(t));
            }
            // Nothing is left running: no response, no provider call pending.
            prop_assert_eq!(sim.s.current_response(), None);
            prop_assert!(sim.scheduled.is_empty());
        }

        /// However far into a story the user barges in, and however, the history keeps exactly
        /// the words the `interrupted` event says were heard, and never more than was sent.
        #[test]
        fn history_holds_only_what_was_heard(
            wait_ms in 0u64..8000,
            tts_realtime in any::<bool>(),
            by_voice in any::<bool>(),
        ) {
            let mut sim = Sim::new();
            sim.tts_realtime = tts_realtime;
            sim.text("tell me a story");
            sim.run_ms(wait_ms);
            if by_voice {
                sim.say(800);
            } else {
                sim.text("stop");
            }
            sim.settle();
            sim.assert_all_done();
            let t1 = TurnId(1);
            prop_assert_eq!(sim.done_of(t1).0, ResponseStatus::Interrupted);
            prop_assert!(sim.check.audio_sent(t1) <= sim.check.audio_produced(t1));
            let heard = sim.heard_text();
            let words: Vec<&str> = heard.split_whitespace().collect();
            let story: Vec<&str> = STORY.split_whitespace().collect();
            prop_assert!(story.starts_with(&words), "{:?}", heard);
            if sim.check.audio_sent(t1) == 0 {
                prop_assert!(heard.is_empty());
            }
            let history = sim.s.history();
            if heard.is_empty() {
                // Nothing heard, nothing recorded: the next words join the unanswered question.
                prop_assert!(
                    matches!(&history[0], ChatMessage::User(u) if u.starts_with("tell me a story ")),
                    "{:?}",
                    history
                );
            } else {
                let expected = ChatMessage::Assistant { text: heard, tool_calls: vec![] };
                prop_assert_eq!(&history[1], &expected);
            }
        }
    }
}

#[test]
fn put_pcm_writes_little_endian_samples_across_blocks() {
    use bytes::BufMut;
    let samples: Vec<i16> = (0..700).map(|i| (i * 97 - 30_000) as i16).collect();
    let mut expected = BytesMut::new();
    for s in &samples {
        expected.put_i16_le(*s);
    }
    let mut got = BytesMut::from(&b"xy"[..]);
    put_pcm(&mut got, &samples);
    assert_eq!(&got[..2], b"xy");
    assert_eq!(&got[2..], &expected[..]);
}

#[test]
fn pcm_queue_frames_are_the_pushed_bytes_in_order_across_chunks() {
    let a: Vec<i16> = (0..1000).collect();
    let b: Vec<i16> = (1000..1333).collect();
    let c: Vec<i16> = (1333..1400).collect();
    let mut expected = BytesMut::new();
    for chunk in [&a, &b, &c] {
        put_pcm(&mut expected, chunk);
    }
    let mut queue = PcmQueue::default();
    queue.push(&a);
    queue.push(&[]);
    queue.push(&b);
    queue.push(&c);
    assert_eq!(queue.len(), expected.len());
    // 320-sample frames: some inside a chunk, some across two or three chunks.
    let mut got = Vec::new();
    while !queue.is_empty() {
        let frame = queue.split_to(640);
        assert!(frame.len() == 640 || queue.is_empty(), "{}", frame.len());
        got.extend_from_slice(&frame);
    }
    assert_eq!(got, &expected[..]);
    assert_eq!(queue.len(), 0);
    assert!(queue.split_to(640).is_empty());
}

// Barge-in over real noise, with the default server VAD (Silero) and real speech.

/// The user asks for a story by voice (so their speech level is known), and the bot is telling
/// it when this returns.
fn story_by_voice(cfg: SessionConfig) -> Sim {
    let mut sim = Sim::with(cfg);
    sim.asr_answers.push("tell me a long story about the sea");
    sim.play(&fixture("story.wav"));
    sim.audio(700, 0);
    sim.run_ms(1000);
    assert!(
        sim.first_at(|o| matches!(o, Output::Audio { .. }))
            .is_some(),
        "the story has started: {:#?}",
        sim.events()
    );
    sim
}

#[test]
fn no_noise_pauses_or_interrupts_the_bot() {
    for name in [
        "pink_-44.wav",
        "pink_-35.wav",
        "pink_-25.wav",
        "white_-30.wav",
        "brown_-30.wav",
        "hum_100_150.wav",
        "keyboard.wav",
        "cough.wav",
        "knock.wav",
        "clap.wav",
        "babble.wav",
    ] {
        let mut sim = story_by_voice(SessionConfig::default());
        // As a room has it: faded in over 200 ms, not a step out of digital silence (a step
        // into a loud hum is a transient of its own).
        let mut audio = noise(name);
        let fade = 16 * 200;
        for (i, s) in audio.iter_mut().take(fade).enumerate() {
            *s = (i32::from(*s) * i as i32 / fade as i32) as i16;
        }
        sim.play(&audio);
        sim.settle();
        let paused = sim.has(|e| matches!(e, Event::PlaybackPaused { .. }));
        let interrupted = sim.has(|e| matches!(e, Event::Interrupted { .. }));
        assert!(!paused && !interrupted, "{name}: {:#?}", sim.events());
        assert_eq!(
            sim.done_of(TurnId(1)).0,
            ResponseStatus::Completed,
            "{name}"
        );
        sim.assert_all_done();
    }
}

#[test]
fn quiet_babble_is_kept_out_only_by_the_users_own_level() {
    // Babble is speech to any VAD. Without the level rule it pauses the bot.
    let mut sim = story_by_voice(SessionConfig {
        barge_in_level_db: None,
        ..SessionConfig::default()
    });
    sim.play(&noise("babble.wav"));
    sim.settle();
    assert!(sim.has(|e| matches!(e, Event::PlaybackPaused { .. })));
}

#[test]
fn speech_over_noise_still_barges_in_fast() {
    for name in ["interrupt_pink_snr10.wav", "interrupt_babble_snr10.wav"] {
        let mut sim = story_by_voice(SessionConfig::default());
        let start = sim.now;
        sim.play(&noise(name));
        sim.audio(700, 0);
        sim.settle();
        // The speech begins 200 ms into the file, under the noise.
        let onset = start + Duration::from_millis(200);
        let paused = sim
            .first_at(|o| matches!(o, Output::Event(Event::PlaybackPaused { .. })))
            .unwrap_or_else(|| panic!("{name}: never paused"));
        let interrupted = sim
            .first_at(|o| matches!(o, Output::Event(Event::Interrupted { .. })))
            .unwrap_or_else(|| panic!("{name}: never interrupted"));
        // Simulated time: the onset (two 32 ms windows) plus frame alignment, then 500 ms of
        // voiced windows plus the pauses between the words.
        assert!(
            paused - onset <= Duration::from_millis(200),
            "{name}: paused after {:?}",
            paused - onset
        );
        assert!(
            interrupted - onset <= Duration::from_millis(1000),
            "{name}: interrupted after {:?}",
            interrupted - onset
        );
        assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Interrupted);
    }
}

#[test]
fn scattered_voiced_windows_do_not_add_up_to_an_interruption() {
    // 60 ms bursts every 300 ms: the span from the first to the last voiced frame passes
    // min_interruption within a second, the voiced audio itself does not before the candidate
    // times out. The bot resumes where it stopped.
    let mut sim = Sim::with(webrtc_vad());
    sim.text("tell me a story");
    sim.run_ms(1500);
    for _ in 0..10 {
        sim.voice(60);
        sim.audio(240, 0);
    }
    sim.settle();
    assert!(sim.has(|e| matches!(e, Event::PlaybackPaused { .. })));
    assert!(sim.has(|e| matches!(e, Event::FalseAlarm { .. })));
    assert!(!sim.has(|e| matches!(e, Event::Interrupted { .. })));
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Completed);
}

#[test]
fn the_users_level_comes_from_their_own_turns() {
    let sim = story_by_voice(SessionConfig::default());
    let level = sim.s.user_level_dbfs.expect("learned from the request");
    assert!((-30.0..-10.0).contains(&level), "{level}");
}

/// A session whose server has `check_balance`, and whose client offers `lookup_account`.
fn client_tool_sim() -> Sim {
    let mut sim = Sim::with(SessionConfig {
        vad: None,
        server_tools: ["check_balance".to_owned()].into(),
        client_tool_timeout: Duration::from_secs(5),
        ..SessionConfig::default()
    });
    sim.tool_name = "lookup_account";
    sim.s.handle_update(
        sim.now,
        SessionUpdate {
            tools: Some(vec![ClientTool {
                name: "lookup_account".into(),
                description: "The caller's account, from the app.".into(),
                parameters: r#"{"type":"object","properties":{}}"#.into(),
            }]),
            ..SessionUpdate::default()
        },
    );
    sim.drain();
    sim
}

/// The id of the first client-side `ToolCall`.
fn client_call(sim: &Sim) -> Option<String> {
    sim.events().into_iter().find_map(|e| match e {
        Event::ToolCall {
            call,
            runs: ToolRunner::Client,
            ..
        } => Some(call.id.clone()),
        _ => None,
    })
}

fn rejections(sim: &Sim) -> Vec<Rejection> {
    sim.events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Rejected(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_client_side_tool_is_offered_called_on_the_client_and_answered_by_it() {
    let mut sim = client_tool_sim();
    sim.text("check my balance");
    sim.run_ms(1000);
    assert_eq!(sim.offered, ["lookup_account"]);
    let id = client_call(&sim).expect("a client-side tool call");
    assert!(
        !sim.log
            .iter()
            .any(|s| matches!(s.output, Output::StartTool { .. })),
        "the server does not run a client-side tool"
    );
    // The response waits for the client, however long it takes (within the timeout).
    assert!(sim.s.current_response().is_some());
    sim.s
        .handle_tool_result(sim.now, &id, r#"{"balance":"1,234.56"}"#.into());
    sim.drain();
    sim.settle();
    assert!(rejections(&sim).is_empty());
    assert!(
        sim.has(|e| matches!(e, Event::ToolResult { call_id, elapsed, .. }
        if *call_id == id && *elapsed >= Duration::from_millis(800)))
    );
    assert!(sim.texts().iter().any(|t| t.contains("1,234.56")));
    let h = sim.s.history();
    assert!(h
        .iter()
        .any(|m| matches!(m, ChatMessage::Tool { call_id, content }
        if *call_id == id && content.contains("1,234.56"))));
    assert!(
        matches!(h.last(), Some(ChatMessage::Assistant { text, .. }) if text.contains("balance"))
    );
}

#[test]
fn a_client_side_tool_that_does_not_answer_times_out_and_its_late_result_is_refused() {
    let mut sim = client_tool_sim();
    sim.text("check my balance");
    sim.run_ms(1000);
    let id = client_call(&sim).expect("a client-side tool call");
    // The timeout is on the session's clock: 5 s after the call.
    sim.run_ms(3000);
    assert!(!sim.has(|e| matches!(e, Event::ProviderError { .. })));
    sim.run_ms(2000);
    assert!(sim.has(
        |e| matches!(e, Event::ProviderError { stage: Stage::Tool, failure, .. }
        if failure.timed_out && failure.provider == "client")
    ));
    // The model is told, and answers anyway.
    assert!(sim.has(|e| matches!(e, Event::ToolResult { result, .. } if result.contains("error"))));
    sim.settle();
    assert!(sim.has(|e| matches!(
        e,
        Event::ResponseDone {
            status: ResponseStatus::Completed,
            ..
        }
    )));
    sim.s.handle_tool_result(sim.now, &id, "{}".into());
    sim.drain();
    assert_eq!(
        rejections(&sim),
        [Rejection::LateResult {
            call_id: id.clone()
        }]
    );
}

#[test]
fn tool_results_for_unknown_answered_or_server_calls_are_refused_and_change_nothing() {
    let mut sim = client_tool_sim();
    sim.s.handle_tool_result(sim.now, "nope", "{}".into());
    sim.drain();
    sim.text("check my balance");
    sim.run_ms(1000);
    let id = client_call(&sim).expect("a client-side tool call");
    sim.s
        .handle_tool_result(sim.now, &id, r#"{"balance":"1,234.56"}"#.into());
    sim.s
        .handle_tool_result(sim.now, &id, r#"{"balance":"0"}"#.into());
    sim.drain();
    sim.settle();
    // A server tool's call is the server's to answer: the client cannot.
    sim.tool_name = "check_balance";
    sim.text("and my balance now?");
    sim.run_ms(500);
    let server_id = sim
        .events()
        .into_iter()
        .find_map(|e| match e {
            Event::ToolCall {
                call,
                runs: ToolRunner::Server,
                ..
            } => Some(call.id.clone()),
            _ => None,
        })
        .expect("a server tool call");
    sim.s.handle_tool_result(sim.now, &server_id, "{}".into());
    sim.drain();
    sim.settle();
    assert_eq!(
        rejections(&sim),
        [
            Rejection::UnknownCall {
                call_id: "nope".into()
            },
            Rejection::AlreadyAnswered { call_id: id },
            Rejection::ServerCall { call_id: server_id },
        ]
    );
    let results = sim
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::ToolResult { .. }))
        .count();
    assert_eq!(results, 2, "one result per call");
}

#[test]
fn an_interrupted_response_makes_its_pending_client_call_late() {
    let mut sim = client_tool_sim();
    sim.text("check my balance");
    sim.run_ms(1000);
    let id = client_call(&sim).expect("a client-side tool call");
    sim.s.handle_cancel(sim.now);
    sim.drain();
    sim.s.handle_tool_result(sim.now, &id, "{}".into());
    sim.drain();
    assert_eq!(rejections(&sim), [Rejection::LateResult { call_id: id }]);
    // Nothing of the cancelled round enters the history.
    assert!(!sim
        .s
        .history()
        .iter()
        .any(|m| matches!(m, ChatMessage::Tool { .. })));
}

#[test]
fn a_client_tool_named_like_a_server_tool_is_refused_and_nothing_of_the_update_applies() {
    let mut sim = client_tool_sim();
    let tool = |name: &str| ClientTool {
        name: name.into(),
        description: String::new(),
        parameters: "{}".into(),
    };
    sim.s.handle_update(
        sim.now,
        SessionUpdate {
            instructions: Some("Be terse.".into()),
            tools: Some(vec![tool("open_door"), tool("check_balance")]),
            ..SessionUpdate::default()
        },
    );
    sim.drain();
    assert_eq!(
        rejections(&sim),
        [Rejection::ToolNameClash {
            index: 1,
            name: "check_balance".into()
        }]
    );
    sim.text("what's the weather");
    sim.settle();
    assert_eq!(
        sim.offered,
        ["lookup_account"],
        "the tools before the update"
    );
    let updates = sim
        .events()
        .into_iter()
        .filter(|e| matches!(e, Event::SessionUpdated { .. }))
        .count();
    assert_eq!(updates, 1, "only the first update applied");
}

#[test]
fn a_new_voice_and_tools_apply_from_the_next_response() {
    let mut sim = client_tool_sim();
    sim.text("tell me a story");
    sim.run_ms(400);
    assert!(sim.s.current_response().is_some());
    sim.s.handle_update(
        sim.now,
        SessionUpdate {
            voice: Some("alloy".into()),
            language: Some("fr".into()),
            tools: Some(Vec::new()),
            ..SessionUpdate::default()
        },
    );
    sim.drain();
    assert!(sim.has(
        |e| matches!(e, Event::SessionUpdated { voice: Some(v), language: Some(l), tools, .. }
        if &**v == "alloy" && &**l == "fr" && tools.is_empty())
    ));
    assert_eq!(sim.s.language().map(|l| &**l), Some("fr"));
    sim.settle();
    assert!(sim.voices.len() > 1);
    assert!(
        sim.voices.iter().all(Option::is_none),
        "the story keeps its voice: {:?}",
        sim.voices
    );
    assert_eq!(sim.offered, ["lookup_account"]);
    sim.voices.clear();
    sim.text("what about tomorrow");
    sim.settle();
    assert!(!sim.voices.is_empty());
    assert!(sim.voices.iter().all(|v| v.as_deref() == Some("alloy")));
    assert!(sim.offered.is_empty());
}

/// What a client that drops its buffer on a pause (Twilio's `clear`) ends up playing of `turn`:
/// each frame written at its position, a later one over an earlier.
fn played_by_a_discarding_client(sim: &Sim, turn: TurnId) -> Vec<u8> {
    let mut heard: Vec<u8> = Vec::new();
    for s in &sim.log {
        if let Output::Audio { turn: t, pcm, at } = &s.output {
            if *t == turn {
                let at = *at as usize * 2;
                heard.truncate(at);
                assert_eq!(heard.len(), at, "a gap before sample {}", at / 2);
                heard.extend_from_slice(pcm);
            }
        }
    }
    heard
}

#[test]
fn a_client_that_drops_its_buffer_gets_the_rest_again_from_what_it_played() {
    let mut reference = Sim::new();
    reference.text("tell me a story");
    reference.settle();
    let full = reference.audio_of(TurnId(1));

    let cfg = SessionConfig {
        vad: None,
        client_discards_on_pause: true,
        ..SessionConfig::default()
    };
    let mut sim = Sim::with(cfg);
    sim.text("tell me a story");
    sim.run_ms(1200);
    // The client confirms what it played, a little behind the clock (a Twilio mark).
    sim.s.handle_played(sim.now, TurnId(1), 15_000);
    sim.drain();
    sim.say(300); // "mhm"
    sim.settle();
    let rewound = sim
        .events()
        .into_iter()
        .find_map(|e| match e {
            Event::PlaybackPaused { rewound_to, .. } => *rewound_to,
            _ => None,
        })
        .expect("a rewind");
    // The clock stood at 15,680 samples when the user spoke; what was confirmed is later
    // than the clock less the lead (12,480), so it wins.
    assert_eq!(rewound, 15_000);
    assert!(sim.has(|e| matches!(e, Event::PlaybackResumed { .. })));
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Completed);
    assert_eq!(
        played_by_a_discarding_client(&sim, TurnId(1)),
        full,
        "every sample once, in order"
    );
    // Sent again: from the rewind to where sending had reached.
    assert!(sim.audio_of(TurnId(1)).len() > full.len());
}

#[test]
fn without_confirmations_a_rewind_goes_back_the_lead() {
    let cfg = SessionConfig {
        vad: None,
        client_discards_on_pause: true,
        ..SessionConfig::default()
    };
    let mut sim = Sim::with(cfg);
    sim.text("tell me a story");
    sim.run_ms(1200);
    sim.say(300);
    sim.settle();
    let paused_at = sim
        .first_at(|o| matches!(o, Output::Event(Event::PlaybackPaused { .. })))
        .expect("a pause");
    let started = sim
        .first_at(|o| matches!(o, Output::Event(Event::AudioStart { .. })))
        .expect("audio");
    let clock = SampleRate(16_000).samples_in(paused_at.saturating_since(started));
    let rewound = sim
        .events()
        .into_iter()
        .find_map(|e| match e {
            Event::PlaybackPaused { rewound_to, .. } => *rewound_to,
            _ => None,
        })
        .expect("a rewind");
    assert_eq!(rewound, clock - 3200, "200 ms (the lead) before the clock");
    let mut reference = Sim::new();
    reference.text("tell me a story");
    reference.settle();
    assert_eq!(
        played_by_a_discarding_client(&sim, TurnId(1)),
        reference.audio_of(TurnId(1))
    );
}

#[test]
fn a_user_message_waits_for_respond() {
    let mut sim = Sim::new();
    sim.s.handle_user_message(sim.now, "  what about tomorrow ");
    sim.drain();
    sim.settle();
    assert!(sim.started.is_empty(), "no reply until one is asked for");
    assert_eq!(
        sim.s.history(),
        [ChatMessage::User("what about tomorrow".into())]
    );
    sim.s.handle_respond(sim.now);
    sim.drain();
    sim.settle();
    assert!(sim.texts().iter().any(|t| t.contains("Tomorrow")));
}

#[test]
fn truncating_the_last_answer_cuts_its_history_to_what_was_heard_and_never_adds() {
    let mut sim = Sim::new();
    sim.say(2000);
    sim.settle();
    let t1 = TurnId(1);
    assert_eq!(sim.done_of(t1).0, ResponseStatus::Completed);
    // The client played the first sentence's worth only.
    let first = WEATHER.split_inclusive(". ").next().unwrap().trim();
    let samples = expected_samples(first) as u64;
    sim.s.handle_truncate(sim.now, t1, samples);
    sim.drain();
    let Some(Event::Truncated { heard_text, .. }) = sim.events().last().copied() else {
        panic!("{:?}", sim.events().last())
    };
    assert_eq!(heard_text, first);
    assert_eq!(
        sim.s.history().last(),
        Some(&ChatMessage::Assistant {
            text: first.into(),
            tool_calls: vec![]
        })
    );
    // A later truncation further on adds nothing back.
    sim.s.handle_truncate(sim.now, t1, samples * 3);
    sim.drain();
    assert!(matches!(
        sim.events().last(),
        Some(Event::Truncated { heard_text, .. }) if heard_text == first
    ));
    // Nothing of an older or unknown turn can be truncated.
    sim.s.handle_truncate(sim.now, TurnId(7), 0);
    sim.drain();
    assert!(matches!(
        sim.events().last(),
        Some(Event::Rejected(Rejection::NotInHistory { turn: TurnId(7) }))
    ));
}

#[test]
fn truncating_the_answer_in_progress_reports_what_was_heard_and_the_answer_goes_on() {
    let mut sim = Sim::new();
    sim.say(2000);
    sim.run_ms(400);
    let t1 = TurnId(1);
    assert_eq!(sim.s.current_response(), Some(t1));
    sim.s.handle_truncate(sim.now, t1, 16 * 100);
    sim.drain();
    assert!(sim.has(|e| matches!(e, Event::Truncated { turn, .. } if *turn == t1)));
    sim.settle();
    assert_eq!(sim.done_of(t1).0, ResponseStatus::Completed);
    assert_eq!(sim.audio_of(t1).len(), expected_samples(WEATHER) * 2);
}

#[test]
fn deleting_a_part_of_a_turn_takes_it_out_of_the_next_request() {
    let mut sim = Sim::new();
    sim.say(2000);
    sim.settle();
    let t1 = TurnId(1);
    sim.s.handle_delete(sim.now, t1, HistoryPart::Assistant);
    sim.drain();
    assert!(matches!(
        sim.events().last(),
        Some(Event::Deleted { turn, part: HistoryPart::Assistant }) if *turn == t1
    ));
    assert_eq!(
        sim.s.history(),
        [ChatMessage::User("what's the weather like today".into())]
    );
    // Gone: a second deletion, or a truncation of it, finds nothing.
    sim.s.handle_delete(sim.now, t1, HistoryPart::Assistant);
    sim.s.handle_truncate(sim.now, t1, 0);
    sim.drain();
    let rejected = sim
        .events()
        .iter()
        .filter(|e| matches!(e, Event::Rejected(Rejection::NotInHistory { .. })))
        .count();
    assert_eq!(rejected, 2);
    // The turn being answered cannot lose a part.
    sim.s.handle_respond(sim.now);
    sim.drain();
    let t2 = sim.s.current_response().expect("a response");
    sim.s.handle_delete(sim.now, t2, HistoryPart::Assistant);
    sim.drain();
    assert!(matches!(
        sim.events().last(),
        Some(Event::Rejected(Rejection::InProgress { turn })) if *turn == t2
    ));
    sim.settle();
    sim.s.handle_delete(sim.now, t1, HistoryPart::User);
    sim.drain();
    assert!(
        !sim.s
            .history()
            .iter()
            .any(|m| matches!(m, ChatMessage::User(_))),
        "{:?}",
        sim.s.history()
    );
    sim.assert_all_done();
}

#[test]
fn a_response_with_settings_of_its_own_leaves_the_sessions_alone() {
    let mut sim = Sim::with(SessionConfig {
        vad: None,
        server_tools: ["check_balance".to_owned()].into(),
        ..SessionConfig::default()
    });
    sim.s.handle_user_message(sim.now, "what about tomorrow");
    sim.drain();
    assert!(
        sim.has(|e| matches!(
            e,
            Event::Transcript {
                turn: TurnId(1),
                is_final: true,
                ..
            }
        )),
        "a user message is a turn of its own"
    );
    sim.s.handle_respond_with(
        sim.now,
        ResponseOverrides {
            instructions: Some("Answer in French.".into()),
            voice: Some("claire".into()),
            tools: Some(vec![]),
        },
    );
    sim.drain();
    sim.settle();
    sim.s.handle_respond(sim.now);
    sim.drain();
    sim.settle();
    let systems: Vec<String> = sim
        .log
        .iter()
        .filter_map(|s| match &s.output {
            Output::StartLlm { messages, .. } => match messages.first() {
                Some(ChatMessage::System(p)) => Some(p.clone()),
                _ => None,
            },
            _ => None,
        })
        .collect();
    assert_eq!(systems.len(), 2);
    assert_eq!(systems[0], "Answer in French.");
    assert_ne!(systems[1], "Answer in French.", "the session's own prompt");
    assert_eq!(sim.voices.first(), Some(&Some("claire".into())));
    assert_eq!(sim.voices.last(), Some(&None));
    // Server tools' names stay the server's.
    sim.s.handle_respond_with(
        sim.now,
        ResponseOverrides {
            tools: Some(vec![ClientTool {
                name: "check_balance".into(),
                description: String::new(),
                parameters: "{}".into(),
            }]),
            ..ResponseOverrides::default()
        },
    );
    sim.drain();
    assert!(matches!(
        sim.events().last(),
        Some(Event::Rejected(Rejection::ToolNameClash { .. }))
    ));
}

#[test]
fn a_client_back_from_a_dropped_connection_hears_the_rest_of_the_answer_exactly_once() {
    let mut reference = Sim::new();
    reference.text("tell me a story");
    reference.settle();
    let full = reference.audio_of(TurnId(1));

    let mut sim = Sim::with(SessionConfig {
        vad: None,
        resumable: true,
        ..SessionConfig::default()
    });
    let t1 = TurnId(1);
    sim.text("tell me a story");
    sim.run_ms(1500);
    let sent_before = sim.audio_of(t1).len();
    assert!(sent_before > 0);
    // The connection drops; the last two frames sent never reached the client.
    let frames: Vec<(u64, usize)> = sim
        .log
        .iter()
        .filter_map(|s| match &s.output {
            Output::Audio { turn, pcm, at } if *turn == t1 => Some((*at, pcm.len())),
            _ => None,
        })
        .collect();
    let received = frames[frames.len() - 3].0 + frames[frames.len() - 3].1 as u64 / 2;
    sim.s.handle_disconnect(sim.now);
    sim.drain();
    let mark = sim.log.len();
    // Away for ten seconds: nothing is sent, and the answer does not end.
    sim.run_ms(10_000);
    assert!(
        !sim.log[mark..]
            .iter()
            .any(|s| matches!(s.output, Output::Audio { .. })),
        "no audio while the client is away"
    );
    assert_eq!(sim.s.current_response(), Some(t1));
    sim.s.handle_reconnect(sim.now, Some((t1, received)));
    sim.drain();
    sim.settle();
    assert!(sim.has(|e| matches!(e, Event::PlaybackResumed { turn } if *turn == t1)));
    assert_eq!(sim.done_of(t1).0, ResponseStatus::Completed);
    // What the client has: what it received before, then everything sent after it came back.
    let mut heard = Vec::new();
    for s in &sim.log {
        if let Output::Audio { turn, pcm, at } = &s.output {
            if *turn == t1 {
                if s.at < sim.log[mark].at && at + (pcm.len() as u64 / 2) <= received {
                    heard.extend_from_slice(pcm);
                } else if s.at >= sim.log[mark].at {
                    assert_eq!(*at as usize * 2, heard.len(), "no gap, no repeat");
                    heard.extend_from_slice(pcm);
                }
            }
        }
    }
    assert_eq!(heard.len(), full.len());
    assert!(heard == full, "the client hears the uninterrupted answer");
}

#[test]
fn a_session_closed_at_the_drain_deadline_ends_its_answer_with_a_reason() {
    let mut sim = Sim::new();
    sim.text("tell me a story");
    sim.run_ms(800);
    sim.s.handle_shutdown(sim.now);
    sim.drain();
    let (status, _, reason) = sim.done_of(TurnId(1));
    assert_eq!(
        (status, reason),
        (ResponseStatus::Interrupted, Some("shutdown"))
    );
    assert!(sim.has(|e| matches!(e, Event::Interrupted { .. })));
    sim.assert_all_done();
}

fn unanswered_sim() -> Sim {
    Sim::with(SessionConfig {
        vad: None,
        answer_turns: false,
        ..SessionConfig::default()
    })
}

/// Every final `Transcript`'s turn and text, in order.
fn final_transcripts(sim: &Sim) -> Vec<(TurnId, String)> {
    sim.events()
        .into_iter()
        .filter_map(|e| match e {
            Event::Transcript {
                turn,
                text,
                is_final: true,
            } => Some((*turn, text.clone())),
            _ => None,
        })
        .collect()
}

#[test]
fn a_turn_not_answered_enters_the_history_and_waits_for_respond() {
    let mut sim = unanswered_sim();
    sim.say(2000);
    sim.settle();
    assert!(sim.started.is_empty(), "no answer until one is asked for");
    assert_eq!(
        final_transcripts(&sim),
        [(TurnId(1), "what's the weather like today".to_owned())]
    );
    assert!(sim
        .log
        .iter()
        .any(|s| s.output == Output::TurnReleased(TurnId(1))));
    assert_eq!(
        sim.s.history(),
        [ChatMessage::User("what's the weather like today".into())]
    );
    sim.s.handle_respond(sim.now);
    sim.drain();
    sim.settle();
    assert_eq!(sim.done_of(TurnId(2)).0, ResponseStatus::Completed);
    assert_eq!(
        sim.texts().concat().replace(' ', ""),
        WEATHER.replace(' ', "")
    );
    sim.assert_all_done();
}

#[test]
fn respond_waits_for_the_words_still_being_transcribed() {
    let mut sim = unanswered_sim();
    sim.asr_ms = 400;
    sim.say(1000);
    let asked = sim.now;
    sim.s.handle_respond(sim.now);
    sim.drain();
    sim.run_ms(300);
    assert!(sim.started.is_empty(), "the LLM waits for the user's words");
    sim.settle();
    // The reply answers the words, which were in the history before the LLM was asked.
    assert!(sim.texts().concat().contains("Tomorrow it rains."));
    let llm_at = sim
        .first_at(|o| matches!(o, Output::StartLlm { .. }))
        .unwrap();
    assert_eq!(llm_at - asked, Duration::from_millis(400));
    let (status, timings, _) = sim.done_of(TurnId(2));
    assert_eq!(status, ResponseStatus::Completed);
    assert_eq!(timings.asr_done, Some(llm_at));
    assert_eq!(
        sim.s.history()[0],
        ChatMessage::User("what about tomorrow".into())
    );
}

#[test]
fn a_barge_in_that_is_not_answered_still_interrupts_and_its_words_enter_the_history() {
    let mut sim = unanswered_sim();
    sim.s.handle_user_message(sim.now, "tell me a story");
    sim.s.handle_respond(sim.now);
    sim.drain();
    sim.run_ms(1500);
    sim.say(1000);
    sim.settle();
    assert_eq!(sim.done_of(TurnId(2)).0, ResponseStatus::Interrupted);
    assert_eq!(sim.started.len(), 1, "the barge-in is not answered");
    let h = sim.s.history();
    assert_eq!(h.len(), 3, "{h:?}");
    assert_eq!(h[2], ChatMessage::User("what about tomorrow".into()));
    // A short barge-in with words (judged by its transcript) also interrupts, unanswered.
    sim.s.handle_respond(sim.now);
    sim.drain();
    sim.run_ms(1500);
    let before = sim.started.len();
    sim.asr_answers = vec!["stop right there"];
    sim.say(300);
    sim.settle();
    assert_eq!(sim.started.len(), before);
    let h = sim.s.history();
    assert_eq!(
        h.last(),
        Some(&ChatMessage::User("stop right there".into()))
    );
    sim.assert_all_done();
}

#[test]
fn audio_messages_enter_the_history_in_the_order_they_were_sent() {
    let mut sim = Sim::new();
    sim.asr_ms = 300;
    sim.s.handle_user_audio(sim.now, &vec![0; 32_000]);
    sim.drain();
    sim.asr_ms = 50;
    sim.s.handle_user_audio(sim.now, &vec![0; 16_000]);
    sim.drain();
    sim.run_ms(100);
    assert!(
        final_transcripts(&sim).is_empty(),
        "the second waits for the first"
    );
    sim.settle();
    assert!(sim.started.is_empty(), "an audio message is not answered");
    let messages: Vec<_> = sim
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::AudioMessage { turn, duration } => Some((*turn, *duration)),
            _ => None,
        })
        .collect();
    assert_eq!(
        messages,
        [
            (TurnId(1), Duration::from_secs(2)),
            (TurnId(2), Duration::from_secs(1))
        ]
    );
    assert_eq!(
        final_transcripts(&sim),
        [
            (TurnId(1), "what's the weather like today".to_owned()),
            (TurnId(2), "what about tomorrow".to_owned())
        ]
    );
    // One user message, as consecutive user words always are, in the order spoken.
    assert_eq!(
        sim.s.history(),
        [ChatMessage::User(
            "what's the weather like today what about tomorrow".into()
        )]
    );
}

#[test]
fn an_audio_message_during_an_answer_interrupts_nothing_and_follows_it_in_the_history() {
    let mut sim = Sim::new();
    sim.text("tell me a story");
    sim.run_ms(1500);
    sim.s.handle_user_audio(sim.now, &vec![0; 16_000]);
    sim.drain();
    sim.settle();
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Completed);
    assert_eq!(sim.audio_of(TurnId(1)).len(), expected_samples(STORY) * 2);
    let h = sim.s.history();
    assert!(matches!(h[1], ChatMessage::Assistant { .. }), "{h:?}");
    assert_eq!(h[2], ChatMessage::User("what about tomorrow".into()));
}

#[test]
fn too_many_audio_messages_waiting_are_refused() {
    let mut sim = Sim::new();
    sim.asr_ms = 1000;
    for _ in 0..=MAX_TRANSCRIBING {
        sim.s.handle_user_audio(sim.now, &vec![0; 8_000]);
        sim.drain();
    }
    assert_eq!(
        rejections(&sim),
        [Rejection::TranscriptionsBusy {
            max: MAX_TRANSCRIBING
        }]
    );
    sim.settle();
    assert_eq!(final_transcripts(&sim).len(), MAX_TRANSCRIBING);
}

#[test]
fn speech_that_does_not_interrupt_is_answered_after_the_answer_it_was_spoken_over() {
    let mut sim = Sim::with(SessionConfig {
        vad: None,
        interrupt_on_speech: false,
        ..SessionConfig::default()
    });
    sim.text("tell me a story");
    sim.run_ms(1500);
    sim.say(1000);
    sim.settle();
    assert!(!sim.has(|e| matches!(e, Event::PlaybackPaused { .. } | Event::Interrupted { .. })));
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Completed);
    assert_eq!(sim.audio_of(TurnId(1)).len(), expected_samples(STORY) * 2);
    // Its words follow the story in the history, and are answered once the story is over.
    let story_done = sim.done_of(TurnId(1)).1.done.unwrap();
    let (status, timings, _) = sim.done_of(TurnId(3));
    assert_eq!(status, ResponseStatus::Completed);
    assert_eq!(timings.speech_end, Some(story_done));
    assert!(sim.texts().concat().contains("Tomorrow it rains."));
    let h = sim.s.history();
    assert_eq!(
        h[2],
        ChatMessage::User("what about tomorrow".into()),
        "{h:?}"
    );
    sim.assert_all_done();
}

#[test]
fn an_idle_timeout_speaks_again_after_the_answer_played_out_and_speech_resets_it() {
    let mut sim = Sim::with(SessionConfig {
        vad: None,
        idle_timeout: Some(Duration::from_secs(5)),
        ..SessionConfig::default()
    });
    sim.run_ms(10_000);
    assert!(sim.started.is_empty(), "no timer before a first answer");
    sim.text("what about tomorrow");
    sim.run_ms(5_000);
    let done = sim.done_of(TurnId(1)).1.done.unwrap();
    // Speech before the timeout resets it: that turn is answered instead.
    sim.run_until(done + Duration::from_secs(4));
    sim.say(1000);
    sim.run_ms(3_000);
    assert!(!sim.has(|e| matches!(e, Event::IdleTimeout { .. })));
    let done = sim.done_of(TurnId(2)).1.done.unwrap();
    sim.run_until(done + Duration::from_millis(4_999));
    assert!(!sim.has(|e| matches!(e, Event::IdleTimeout { .. })));
    sim.run_until(done + Duration::from_secs(6));
    let idle: Vec<_> = sim
        .events()
        .into_iter()
        .filter_map(|e| match e {
            Event::IdleTimeout { turn, since, at } => {
                assert_eq!(*at, *since + Duration::from_secs(5));
                Some((*turn, *since))
            }
            _ => None,
        })
        .collect();
    assert_eq!(idle, [(TurnId(3), done)]);
    assert!(sim.started.contains(&TurnId(3)));
    sim.settle();
    assert_eq!(sim.done_of(TurnId(3)).0, ResponseStatus::Completed);
}

#[test]
fn the_idle_timeout_waits_while_the_client_is_away() {
    let mut sim = Sim::with(SessionConfig {
        vad: None,
        resumable: true,
        idle_timeout: Some(Duration::from_secs(2)),
        ..SessionConfig::default()
    });
    sim.text("what about tomorrow");
    while !sim.has(|e| matches!(e, Event::ResponseDone { .. })) {
        sim.run_ms(20);
    }
    sim.s.handle_disconnect(sim.now);
    sim.drain();
    sim.run_ms(20_000);
    assert!(
        !sim.has(|e| matches!(e, Event::IdleTimeout { .. })),
        "nobody to speak to"
    );
    // Back: the silence counts again, from the return.
    let back = sim.now;
    sim.s.handle_reconnect(sim.now, None);
    sim.drain();
    sim.run_ms(2_100);
    assert!(sim.has(
        |e| matches!(e, Event::IdleTimeout { since, at, .. } if *since == back && *at == back + Duration::from_secs(2))
    ));
}

#[test]
fn words_spoken_over_an_answer_are_answered_once() {
    let mut sim = Sim::with(SessionConfig {
        vad: None,
        interrupt_on_speech: false,
        ..SessionConfig::default()
    });
    sim.text("tell me a story");
    sim.run_ms(1500);
    sim.say(1000); // over the story: to be answered after it
    sim.run_ms(500);
    // The client asks for an answer now: it answers those words, and nothing is left to answer.
    sim.s.handle_respond(sim.now);
    sim.drain();
    sim.settle();
    assert_eq!(sim.done_of(TurnId(1)).0, ResponseStatus::Interrupted);
    assert_eq!(
        sim.started.len(),
        2,
        "the story and one answer: the bot does not speak again unasked"
    );
    let h = sim.s.history();
    assert_eq!(
        h[2],
        ChatMessage::User("what about tomorrow".into()),
        "{h:?}"
    );
    sim.assert_all_done();
}

#[test]
fn a_text_message_after_an_audio_message_follows_it_in_the_history() {
    let mut sim = Sim::new();
    sim.asr_ms = 300;
    sim.s.handle_user_audio(sim.now, &vec![0; 32_000]);
    sim.s.handle_user_message(sim.now, "and tomorrow");
    sim.drain();
    sim.settle();
    assert_eq!(
        sim.s.history(),
        [ChatMessage::User(
            "what's the weather like today and tomorrow".into()
        )]
    );
    // A text turn waits for them too, and its answer reads them all.
    sim.s.handle_user_audio(sim.now, &vec![0; 16_000]);
    sim.drain();
    sim.text("tell me a story");
    sim.settle();
    let h = sim.s.history();
    assert!(
        matches!(&h[h.len() - 2], ChatMessage::User(u) if u.ends_with("what about tomorrow tell me a story")),
        "{h:?}"
    );
    sim.assert_all_done();
}
