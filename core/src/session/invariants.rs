//! The session's promises, checked from the owner's side.
//!
//! A `Checker` watches what an owner feeds a `Session` and every output it drains, and panics with
//! what went wrong the moment a promise of the session's module docs is broken:
//!
//! - no audio of a turn before its `AudioStart`, while it is paused, after its `Interrupted` or its
//!   `ResponseDone`, or after its provider work was cancelled;
//! - every response ends with exactly one `ResponseDone` (a turn that stops being the current
//!   response has had one; the current one has not), and an `interrupted` status follows an
//!   `Interrupted` event;
//! - the audio sent for a turn is a prefix of the audio the session accepted from TTS for it: never
//!   more than was produced, never reordered, and a false alarm resumes exactly where it paused;
//! - the history holds only text the user heard: an assistant message added when a response ends
//!   is made of whole words of the sentences whose audio had started playing, in order (the
//!   filler phrase excepted), and so is the `heard_text` of `Interrupted`;
//! - every assistant tool call in the history is followed by its result, and the history starts
//!   with the user or with what the bot said first (a greeting, `say`, `respond`).
//!
//! It relies only on the session's public API and outputs, so it states the promises as the owner
//! (and, through it, the client) can observe them. The session's unit tests and the fuzzer both
//! drive sessions through it. Compiled for tests and with the `invariants` feature.
//!
//! Usage, per input: call [`Checker::provider`] *before* handing a provider event to the session,
//! then [`Checker::output`] on every output drained, then [`Checker::step`].

use std::collections::{HashMap, HashSet};

use super::{Event, Output, ProviderEvent, ResponseStatus, Session, SessionConfig};
use crate::history::ChatMessage;
use crate::types::{SampleRate, TurnId};

/// One sentence handed to TTS.
#[derive(Debug)]
struct Spoken {
    text: String,
    /// Position of its first sample in the turn's response audio.
    start: u64,
}

/// What the checker knows about one turn.
#[derive(Debug, Default)]
struct TurnLog {
    /// The response audio the session accepted from TTS (PCM16LE), in order.
    produced: Vec<u8>,
    /// Bytes of response audio sent.
    sent: usize,
    /// The sentence being synthesized.
    tts_active: Option<u32>,
    sentences: Vec<Spoken>,
    audio_started: bool,
    paused: bool,
    interrupted: bool,
    cancelled: bool,
    /// `TurnReleased`: nothing more of providers for this turn.
    released: bool,
    /// A recognition stream was opened, and not closed.
    streaming: bool,
    /// Samples of the utterance pushed on its stream.
    pushed: usize,
    done: usize,
}

impl TurnLog {
    fn sent_samples(&self) -> u64 {
        self.sent as u64 / 2
    }

    /// Sentences whose audio had started when `sent` samples were out.
    fn heard_sentences(&self) -> impl Iterator<Item = &str> {
        let sent = self.sent_samples();
        self.sentences
            .iter()
            .filter(move |s| s.start < sent)
            .map(|s| s.text.as_str())
    }
}

/// Checks a session's outputs against its promises. See the module docs.
#[derive(Debug)]
pub struct Checker {
    rate: SampleRate,
    frame_bytes: usize,
    filler: String,
    turns: HashMap<TurnId, TurnLog>,
    /// The current response as of the last `step`.
    current: Option<TurnId>,
    /// The history as of the last `step`.
    history: Vec<ChatMessage>,
    /// Turns whose `ResponseDone` was output since the last `step`, in order.
    ended: Vec<TurnId>,
    /// The client updated the session in this step (`SessionUpdated`), which may have replaced
    /// the history with its own: the history's shape is checked, not where its texts came from.
    seeded: bool,
    /// Ids of the calls the client runs (`ToolCall` with `ToolRunner::Client`).
    client_calls: HashSet<String>,
}

impl Checker {
    /// A checker for a new session built from `cfg`.
    pub fn new(cfg: &SessionConfig) -> Self {
        let frame_samples = cfg
            .output_rate
            .samples_in_ms(u64::from(cfg.output_frame_ms))
            .max(1);
        Checker {
            rate: cfg.output_rate,
            frame_bytes: frame_samples as usize * 2,
            filler: cfg.filler_phrase.trim().to_owned(),
            turns: HashMap::new(),
            current: None,
            history: Vec::new(),
            ended: Vec::new(),
            seeded: false,
            client_calls: HashSet::new(),
        }
    }

    /// How many `ResponseDone` events `turn` has had (0 or 1 while the promises hold).
    pub fn done(&self, turn: TurnId) -> usize {
        self.turns.get(&turn).map_or(0, |t| t.done)
    }

    /// Bytes of response audio sent for `turn`.
    pub fn audio_sent(&self, turn: TurnId) -> usize {
        self.turns.get(&turn).map_or(0, |t| t.sent)
    }

    /// Bytes of response audio the session accepted from TTS for `turn`.
    pub fn audio_produced(&self, turn: TurnId) -> usize {
        self.turns.get(&turn).map_or(0, |t| t.produced.len())
    }

    /// Records a provider event about to be handed to `session`: TTS audio the session will
    /// accept is the audio it may later send. Call it before `Session::handle_provider`.
    pub fn provider(&mut self, session: &Session, turn: TurnId, event: &ProviderEvent) {
        // The session takes TTS events only for its current response's sentence in synthesis.
        if session.current_response() != Some(turn) {
            return;
        }
        let t = self.turns.entry(turn).or_default();
        match event {
            ProviderEvent::TtsAudio { seq, samples } if t.tts_active == Some(*seq) => {
                t.produced.reserve(samples.len() * 2);
                for s in samples {
                    t.produced.extend_from_slice(&s.to_le_bytes());
                }
            }
            ProviderEvent::TtsDone { seq } if t.tts_active == Some(*seq) => t.tts_active = None,
            _ => {}
        }
    }

    /// Checks one drained output.
    ///
    /// # Panics
    /// When the output breaks a promise.
    pub fn output(&mut self, output: &Output) {
        match output {
            Output::Audio { turn, pcm, at } => {
                let frame_bytes = self.frame_bytes;
                let t = self.turns.entry(*turn).or_default();
                assert!(
                    !pcm.is_empty() && pcm.len().is_multiple_of(2) && pcm.len() <= frame_bytes,
                    "turn {turn}: an audio frame of {} bytes (whole samples, at most {frame_bytes})",
                    pcm.len()
                );
                assert!(t.audio_started, "turn {turn}: audio before audio_start");
                assert!(!t.paused, "turn {turn}: audio while paused");
                assert!(!t.interrupted, "turn {turn}: audio after interrupted");
                assert_eq!(t.done, 0, "turn {turn}: audio after response_done");
                assert!(
                    !t.cancelled,
                    "turn {turn}: audio after its work was cancelled"
                );
                assert_eq!(
                    *at as usize * 2,
                    t.sent,
                    "turn {turn}: a frame said to be at sample {at}, sent at byte {}",
                    t.sent
                );
                let end = t.sent + pcm.len();
                assert!(
                    end <= t.produced.len(),
                    "turn {turn}: {end} bytes of audio sent, {} produced",
                    t.produced.len()
                );
                assert!(
                    t.produced[t.sent..end] == pcm[..],
                    "turn {turn}: the audio sent at byte {} is not the audio produced there",
                    t.sent
                );
                t.sent = end;
            }
            Output::Event(e) => self.event(e),
            Output::StartTts {
                turn, seq, text, ..
            } => {
                let t = self.turns.entry(*turn).or_default();
                assert!(!t.cancelled, "turn {turn}: TTS started after cancellation");
                assert_eq!(t.done, 0, "turn {turn}: TTS started after response_done");
                assert_eq!(
                    t.tts_active, None,
                    "turn {turn}: sentence {seq} started while another is in synthesis"
                );
                assert_eq!(
                    *seq as usize,
                    t.sentences.len(),
                    "turn {turn}: sentences are synthesized in order"
                );
                assert!(!text.trim().is_empty(), "turn {turn}: TTS of empty text");
                t.tts_active = Some(*seq);
                t.sentences.push(Spoken {
                    text: text.clone(),
                    start: t.produced.len() as u64 / 2,
                });
            }
            Output::StartAsr { turn, .. }
            | Output::StartTool { turn, .. }
            | Output::OpenAsrStream(turn) => {
                if let Output::StartTool { call, .. } = output {
                    assert!(
                        !self.client_calls.contains(&call.id),
                        "turn {turn}: the server ran {}, a client-side call",
                        call.id
                    );
                }
                let t = self.turns.entry(*turn).or_default();
                assert!(
                    !t.cancelled,
                    "turn {turn}: provider call after cancellation"
                );
                assert!(!t.released, "turn {turn}: provider call after release");
                assert_eq!(t.done, 0, "turn {turn}: provider call after response_done");
                if matches!(output, Output::OpenAsrStream(_)) {
                    assert!(!t.streaming, "turn {turn}: a second recognition stream");
                    t.streaming = true;
                }
            }
            Output::PushAsrStream { turn, .. } | Output::FinalizeAsrStream(turn) => {
                let t = self.turns.entry(*turn).or_default();
                assert!(
                    t.streaming,
                    "turn {turn}: {output:?} without an open stream"
                );
                assert!(!t.cancelled, "turn {turn}: {output:?} after cancellation");
                assert!(!t.released, "turn {turn}: {output:?} after release");
                if let Output::PushAsrStream { samples, .. } = output {
                    assert!(
                        samples.start == t.pushed && samples.end > samples.start,
                        "turn {turn}: the stream heard {} samples, then {samples:?}",
                        t.pushed
                    );
                    t.pushed = samples.end;
                }
            }
            Output::CloseAsrStream(turn) => {
                let t = self.turns.entry(*turn).or_default();
                assert!(t.streaming, "turn {turn}: closing a stream never opened");
                t.streaming = false;
            }
            Output::TurnReleased(turn) => {
                let t = self.turns.entry(*turn).or_default();
                assert!(!t.released, "turn {turn}: released twice");
                t.released = true;
            }
            Output::StartLlm { turn, messages, .. } => {
                let t = self.turns.entry(*turn).or_default();
                assert!(!t.cancelled, "turn {turn}: LLM started after cancellation");
                assert_eq!(t.done, 0, "turn {turn}: LLM started after response_done");
                assert!(
                    matches!(messages.first(), Some(ChatMessage::System(_))),
                    "turn {turn}: the LLM's messages start with the system prompt"
                );
                check_history_shape(&messages[1..]);
            }
            Output::CancelTurn(turn) => {
                self.turns.entry(*turn).or_default().cancelled = true;
            }
        }
    }

    fn event(&mut self, e: &Event) {
        let rate = self.rate;
        match e {
            Event::AudioStart {
                turn, sample_rate, ..
            } => {
                let t = self.turns.entry(*turn).or_default();
                assert_eq!(*sample_rate, rate, "turn {turn}: audio_start's rate");
                assert!(!t.audio_started, "turn {turn}: audio_start twice");
                assert_eq!(t.done, 0, "turn {turn}: audio_start after response_done");
                t.audio_started = true;
            }
            Event::Rewound { turn, to } => {
                let t = self.turns.entry(*turn).or_default();
                let to = *to as usize * 2;
                assert!(t.paused, "turn {turn}: rewound while playing");
                assert!(
                    to <= t.sent,
                    "turn {turn}: rewound to byte {to}, past the {} sent",
                    t.sent
                );
                // What the client did not receive is sent again, the same bytes.
                t.sent = to;
            }
            Event::PlaybackPaused { turn, rewound_to } => {
                let t = self.turns.entry(*turn).or_default();
                if let Some(to) = rewound_to {
                    let to = *to as usize * 2;
                    assert!(
                        to <= t.sent,
                        "turn {turn}: rewound to byte {to}, past the {} sent",
                        t.sent
                    );
                    // The client dropped the rest: it is sent again, the same bytes.
                    t.sent = to;
                }
                assert!(t.audio_started, "turn {turn}: paused before audio_start");
                assert!(!t.paused, "turn {turn}: paused twice");
                assert!(!t.interrupted, "turn {turn}: paused after interrupted");
                assert_eq!(t.done, 0, "turn {turn}: paused after response_done");
                t.paused = true;
            }
            Event::PlaybackResumed { turn } => {
                let t = self.turns.entry(*turn).or_default();
                assert!(t.paused, "turn {turn}: resumed while not paused");
                t.paused = false;
            }
            Event::Interrupted {
                turn,
                played_ms,
                heard_text,
            } => {
                let t = self.turns.entry(*turn).or_default();
                assert!(!t.interrupted, "turn {turn}: interrupted twice");
                assert_eq!(t.done, 0, "turn {turn}: interrupted after response_done");
                let sent_ms = rate.ms_of(t.sent_samples());
                assert!(
                    *played_ms <= sent_ms + 1e-6,
                    "turn {turn}: {played_ms} ms played of {sent_ms} ms sent"
                );
                let heard: Vec<&str> = t.heard_sentences().collect();
                assert!(
                    is_heard(heard_text, &heard, None),
                    "turn {turn}: heard_text {heard_text:?} is not made of the words sent: {heard:?}"
                );
                t.interrupted = true;
                t.paused = false;
            }
            Event::ResponseDone {
                turn,
                status,
                audio_ms,
                ..
            } => {
                let t = self.turns.entry(*turn).or_default();
                t.done += 1;
                assert_eq!(t.done, 1, "turn {turn}: two response_done");
                assert_eq!(
                    *status == ResponseStatus::Interrupted,
                    t.interrupted,
                    "turn {turn}: status {status:?}, interrupted event: {}",
                    t.interrupted
                );
                if *status == ResponseStatus::Completed {
                    assert!(!t.paused, "turn {turn}: completed while paused");
                }
                let sent_ms = rate.ms_of(t.sent_samples());
                assert!(
                    (audio_ms - sent_ms).abs() < 1e-6,
                    "turn {turn}: audio_ms {audio_ms} but {sent_ms} ms were sent"
                );
                t.paused = false;
                self.ended.push(*turn);
            }
            Event::ResponseText { turn, .. }
            | Event::ToolCall { turn, .. }
            | Event::ToolResult { turn, .. } => {
                if let Event::ToolCall {
                    call,
                    runs: crate::session::ToolRunner::Client,
                    ..
                } = e
                {
                    self.client_calls.insert(call.id.clone());
                }
                assert_eq!(
                    self.done(*turn),
                    0,
                    "turn {turn}: {e:?} after response_done"
                );
            }
            Event::SpeechStarted { .. }
            | Event::SpeechStopped { .. }
            | Event::Transcript { .. }
            | Event::FalseAlarm { .. }
            | Event::ProviderError { .. }
            | Event::AudioMessage { .. }
            | Event::IdleTimeout { .. }
            | Event::Rejected(_) => {}
            // The client rewrote the history (seeded it, cut or removed a part): it is checked
            // for its shape only, this once.
            Event::SessionUpdated { .. } | Event::Truncated { .. } | Event::Deleted { .. } => {
                self.seeded = true;
            }
        }
    }

    /// Checks the session after an input and the drain of its outputs.
    ///
    /// # Panics
    /// When a response ended without `ResponseDone`, or the history holds text the user did not
    /// hear.
    pub fn step(&mut self, session: &Session) {
        let current = session.current_response();
        if self.current != current {
            if let Some(prev) = self.current {
                assert_eq!(
                    self.done(prev),
                    1,
                    "turn {prev}: the response ended without response_done"
                );
            }
            if let Some(cur) = current {
                assert_eq!(self.done(cur), 0, "turn {cur}: current after response_done");
            }
            self.current = current;
        }
        for turn in &self.ended {
            assert_ne!(
                Some(*turn),
                current,
                "turn {turn}: still current after response_done"
            );
        }

        let history = session.history();
        if std::mem::take(&mut self.seeded) {
            // A seeded history is the client's; a greeting spoken from it is checked as any
            // response when it ends.
            check_history_shape(history);
            self.history = history.to_vec();
        } else if history != self.history.as_slice() {
            check_history_shape(history);
            let appended = appended(&self.history, history);
            // Each assistant text appended was pushed by a response ending now, in order.
            let mut ended = self.ended.iter();
            for m in appended {
                let ChatMessage::Assistant { text, tool_calls } = m else {
                    continue;
                };
                if !tool_calls.is_empty() {
                    continue;
                }
                let matched = ended.any(|turn| {
                    let t = &self.turns[turn];
                    let heard: Vec<&str> = t.heard_sentences().collect();
                    is_heard(text, &heard, Some(&self.filler))
                });
                assert!(
                    matched,
                    "history holds {text:?}, which no response ending now had played: {:?}",
                    self.ended
                        .iter()
                        .map(|t| (t, self.turns[t].heard_sentences().collect::<Vec<_>>()))
                        .collect::<Vec<_>>()
                );
            }
            self.history = history.to_vec();
        }
        self.ended.clear();
    }
}

/// The messages `new` has beyond what it kept of `old`.
///
/// The history only drops messages from its front, appends at its end, and extends its last
/// message when that is the user's. The overlap assumed is the longest one, so what is returned
/// is at most what was appended: the check can miss, never invent, a message.
fn appended<'a>(old: &[ChatMessage], new: &'a [ChatMessage]) -> &'a [ChatMessage] {
    for k in 0..old.len() {
        let kept = &old[k..];
        if kept.len() > new.len() {
            continue;
        }
        let last = kept.len() - 1;
        let same = kept.iter().zip(new).enumerate().all(|(i, (a, b))| {
            a == b
                || i == last
                    && matches!((a, b), (ChatMessage::User(a), ChatMessage::User(b)) if b.starts_with(a.as_str()))
        });
        if same {
            return &new[kept.len()..];
        }
    }
    new
}

/// The history starts with the user (or what the bot said first), and every assistant tool call is answered right after it.
fn check_history_shape(history: &[ChatMessage]) {
    if let Some(first) = history.first() {
        // The user, or a bot turn spoken first (a greeting, `say`, `respond`, which may call
        // tools): never a tool's result without its call.
        assert!(
            !matches!(first, ChatMessage::Tool { .. } | ChatMessage::System(_)),
            "the history starts with {first:?}"
        );
    }
    let mut i = 0;
    while i < history.len() {
        if let ChatMessage::Assistant { tool_calls, .. } = &history[i] {
            for (k, call) in tool_calls.iter().enumerate() {
                assert!(
                    matches!(history.get(i + 1 + k), Some(ChatMessage::Tool { call_id, .. }) if *call_id == call.id),
                    "tool call {:?} is not followed by its result: {history:?}",
                    call.id
                );
            }
            i += tool_calls.len();
        }
        i += 1;
    }
}

/// Whether `text` is whole words of `sentences` from their start, in order: every sentence but the
/// last one `text` reaches in full, then a prefix of words of that one. With a `filler`, sentences
/// equal to it may also be left out (the model's words are recorded, voxd's own filler is not).
fn is_heard(text: &str, sentences: &[&str], filler: Option<&str>) -> bool {
    let words: Vec<&str> = text.split_whitespace().collect();
    let sentences: Vec<Vec<&str>> = sentences
        .iter()
        .map(|s| s.split_whitespace().collect())
        .collect();
    let fillers: Vec<bool> = sentences
        .iter()
        .map(|s| filler.is_some_and(|f| s.iter().copied().eq(f.split_whitespace())))
        .collect();
    matches_from(&words, &sentences, &fillers)
}

fn matches_from(words: &[&str], sentences: &[Vec<&str>], fillers: &[bool]) -> bool {
    if words.is_empty() {
        return true;
    }
    let Some((first, rest)) = sentences.split_first() else {
        return false;
    };
    if fillers[0] && matches_from(words, rest, &fillers[1..]) {
        return true;
    }
    if words.len() <= first.len() {
        return first[..words.len()] == *words;
    }
    words[..first.len()] == first[..] && matches_from(&words[first.len()..], rest, &fillers[1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heard_text_is_whole_words_in_order() {
        let s = ["Once upon a time.", "The end."];
        assert!(is_heard("", &s, None));
        assert!(is_heard("Once upon", &s, None));
        assert!(is_heard("Once upon a time. The", &s, None));
        assert!(!is_heard("Once up", &s, None));
        assert!(!is_heard("The end.", &s, None));
        assert!(!is_heard("Once upon a time. The end. More", &s, None));
        let f = ["Hold on.", "One moment.", "It is sunny."];
        assert!(is_heard("Hold on. It is", &f, Some("One moment.")));
        assert!(is_heard("Hold on. One moment. It", &f, Some("One moment.")));
        assert!(!is_heard("Hold on. It is", &f, None));
    }

    #[test]
    fn appended_messages_survive_trimming_and_merging() {
        let u = |s: &str| ChatMessage::User(s.into());
        let a = |s: &str| ChatMessage::Assistant {
            text: s.into(),
            tool_calls: vec![],
        };
        assert_eq!(appended(&[], &[u("hi")]), &[u("hi")]);
        assert_eq!(
            appended(&[u("hi")], &[u("hi there"), a("yes")]),
            &[a("yes")]
        );
        assert_eq!(
            appended(&[u("a"), a("b"), u("c")], &[u("c"), a("d")]),
            &[a("d")]
        );
        assert!(appended(&[u("a"), a("b")], &[u("a"), a("b")]).is_empty());
    }
}
