//! What the server says, as a caller's turn logic reads it: one reader per client protocol.
//!
//! The turn logic (`session::Watch`) reads one vocabulary, `Seen`: the answer's audio and text,
//! the signals of a barge-in (the answer held, resumed, interrupted) and the end of a response.
//! Each protocol says these its own way, and its reader turns its messages into `Seen`s:
//!
//! | `Seen` | `/ws` | `/v1/realtime` | `/twilio` |
//! |---|---|---|---|
//! | `Ready` | `ready` | `session.created` | (none: Twilio speaks first) |
//! | `Transcript` | `transcript` (names the answer's turn) | (none: a response is its own turn) | (none) |
//! | `Answer` | (none: `transcript` names it) | `response.created` | the first frame of a new turn (its `mark`) |
//! | `ResponseText` | `response_text` | `response.output_audio_transcript.delta` | (none) |
//! | `Audio` | a binary frame | `response.output_audio.delta` | `media`, once its `mark` names its turn |
//! | `ToolCall` | `tool_call` | `response.function_call_arguments.done` (client tools only) | (none) |
//! | `Held` | `playback_paused` | `input_audio_buffer.speech_started` during a response (server VAD); `response.done` `cancelled` | the first `clear` during an answer |
//! | `Resumed` | `playback_resumed` | the held response's audio, after the held speech's transcript | the held answer's audio in a new generation, once the caller stopped speaking |
//! | `Interrupted` | `interrupted` | `response.done` `cancelled` | a second `clear`, or a new answer's audio |
//! | `Done` | `response_done` | `response.done` | `TWILIO_QUIET` without answer audio |
//! | `Skipped` | (none) | (none) | a resumed answer starting past what was played |
//!
//! voxd runs its own tools (`[tools.*]`, `[mcp.*]`) unseen by Realtime and Twilio callers: only
//! `/ws` tells of them. Realtime's `response.done` and Twilio's marks name turns; a Realtime
//! response's turn need not be its user item's (with manual turns, `response.create` opens a
//! turn of its own), so the answer's turn is the response's.
//!
//! The readers are sans-IO: each takes a message (and, for Twilio, the time and whether the
//! caller is speaking) and pushes `Seen`s to a queue the caller drains. The simulated Twilio
//! also plays what it gets at real time and hands back the mark echoes to send, as Twilio does:
//! a mark once the audio before it has played, and every mark it held on a `clear`, which drops
//! what it had not played yet.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::time::{Duration, Instant};

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;

/// The end of a response.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Done {
    /// Its turn, when the protocol names it.
    pub(crate) turn: Option<u64>,
    /// `completed`, `interrupted`, `failed`, ... (Realtime's `cancelled` reads `interrupted`).
    pub(crate) status: String,
    /// Why a Realtime response was cancelled (`status_details.reason`).
    pub(crate) reason: Option<String>,
    /// `/ws`'s `ttft_ms`.
    pub(crate) ttft_ms: Option<f64>,
    /// `/ws`'s `audio_ms`: the answer's length.
    pub(crate) audio_ms: Option<f64>,
}

/// One thing a caller saw, in any protocol (the module's table says where each comes from).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Seen {
    /// Nothing the turn logic reads: a tick, or a message it ignores.
    Nothing,
    /// The session is ready.
    Ready,
    /// A user turn's transcript; `/ws` names the answer's turn with it.
    Transcript { turn: Option<u64> },
    /// An answer began, as `turn`.
    Answer { turn: u64 },
    /// A sentence of an answer.
    ResponseText { turn: Option<u64>, text: String },
    /// Answer audio: `bytes` in the protocol's own encoding, of `turn` when the protocol says.
    Audio { bytes: usize, turn: Option<u64> },
    /// The server called a tool.
    ToolCall,
    /// The answer is held: the server heard the caller over it (or it was cancelled).
    Held,
    /// The held answer goes on: a false alarm.
    Resumed,
    /// The answer was cut by a barge-in.
    Interrupted,
    /// A response ended.
    Done(Done),
    /// The resumed answer started `samples` past what the caller had heard: a gap.
    Skipped { samples: u64 },
    /// An error event.
    Error { code: String, fatal: bool },
}

/// A `/ws` event.
pub(crate) fn ws_seen(v: &Value) -> Seen {
    let turn = v["turn_id"].as_u64();
    match v["type"].as_str().unwrap_or("") {
        "ready" => Seen::Ready,
        "transcript" => Seen::Transcript { turn },
        "response_text" => Seen::ResponseText {
            turn,
            text: v["text"].as_str().unwrap_or_default().to_owned(),
        },
        "tool_call" => Seen::ToolCall,
        "playback_paused" => Seen::Held,
        "playback_resumed" => Seen::Resumed,
        "interrupted" => Seen::Interrupted,
        "response_done" => Seen::Done(Done {
            turn,
            status: v["status"].as_str().unwrap_or_default().to_owned(),
            reason: None,
            ttft_ms: v["ttft_ms"].as_f64(),
            audio_ms: v["audio_ms"].as_f64(),
        }),
        "error" => Seen::Error {
            code: v["code"].as_str().unwrap_or("unknown").to_owned(),
            fatal: v["fatal"] == true,
        },
        _ => Seen::Nothing,
    }
}

/// The bytes a base64 text decodes to.
fn base64_len(b64: &str) -> usize {
    let padding = b64.bytes().rev().take_while(|&b| b == b'=').count();
    (b64.len() / 4 * 3).saturating_sub(padding)
}

/// The turn in a Realtime id: `resp_3`, `resp_3_2`, `item_3`, `item_3_a0` are turn 3.
fn turn_of(id: &str) -> Option<u64> {
    id.split('_').nth(1)?.parse().ok()
}

/// A Realtime server event, as much of it as the reader reads, borrowed from its frame (the
/// audio deltas are the hot path: fifty a second per caller).
#[derive(Deserialize)]
struct RealtimeEvent<'a> {
    #[serde(borrow, rename = "type")]
    ty: Cow<'a, str>,
    #[serde(borrow, default)]
    delta: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    response_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    response: Option<RealtimeResponse<'a>>,
    #[serde(borrow, default)]
    error: Option<RealtimeError<'a>>,
}

#[derive(Deserialize)]
struct RealtimeResponse<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(borrow, default)]
    status: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    status_details: Option<StatusDetails<'a>>,
}

#[derive(Deserialize)]
struct StatusDetails<'a> {
    #[serde(borrow, default)]
    reason: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct RealtimeError<'a> {
    #[serde(borrow, default)]
    code: Option<Cow<'a, str>>,
}

/// Where the response in progress is in a barge-in, as a Realtime caller sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum RealtimeHold {
    /// It plays (or there is no response).
    #[default]
    Playing,
    /// The caller spoke over it (`speech_started`): voxd holds its audio.
    Held,
    /// The held speech's transcript came and the response was not cancelled: its next audio is
    /// the resume.
    Judged,
}

/// The reader of one Realtime caller.
///
/// | hold | on | next | seen |
/// |---|---|---|---|
/// | `Playing` | `speech_started` during a response, server VAD | `Held` | `Held` |
/// | `Held` | the speech's transcript | `Judged` | |
/// | `Judged` | the response's audio | `Playing` | `Resumed`, `Audio` |
/// | any | `response.done` | `Playing` | (`cancelled`: `Held`, `Interrupted`), `Done` |
///
/// With manual turns (`turn_detection: null`) speech does not hold an answer: the client
/// cancels it itself (`response.cancel`), and `response.done` `cancelled` is the hold.
#[derive(Debug, Default)]
pub(crate) struct RealtimeReader {
    /// Server VAD: voxd holds the answer when it hears the caller.
    server_vad: bool,
    /// The turn of the response in progress.
    open: Option<u64>,
    hold: RealtimeHold,
}

impl RealtimeReader {
    /// A reader for a caller with server VAD or manual turns.
    pub(crate) fn new(server_vad: bool) -> Self {
        RealtimeReader {
            server_vad,
            ..RealtimeReader::default()
        }
    }

    /// Reads one server event into `seen`.
    ///
    /// # Errors
    /// When the frame is not JSON.
    pub(crate) fn read(&mut self, text: &str, seen: &mut VecDeque<Seen>) -> Result<(), String> {
        let e: RealtimeEvent<'_> = match serde_json::from_str(text) {
            Ok(e) => e,
            // JSON of another shape is an event this reader has no use for.
            Err(err) => {
                return serde_json::from_str::<IgnoredAny>(text)
                    .map(|_| ())
                    .map_err(|_| format!("bad JSON from server: {err}"))
            }
        };
        match &*e.ty {
            "session.created" => seen.push_back(Seen::Ready),
            "response.created" => {
                self.open = e.response.as_ref().and_then(|r| turn_of(&r.id));
                self.hold = RealtimeHold::Playing;
                if let Some(turn) = self.open {
                    seen.push_back(Seen::Answer { turn });
                }
            }
            "input_audio_buffer.speech_started"
                if self.server_vad && self.open.is_some() && self.hold == RealtimeHold::Playing =>
            {
                self.hold = RealtimeHold::Held;
                seen.push_back(Seen::Held);
            }
            "conversation.item.input_audio_transcription.completed"
                if self.hold == RealtimeHold::Held =>
            {
                self.hold = RealtimeHold::Judged;
            }
            "response.output_audio_transcript.delta" => seen.push_back(Seen::ResponseText {
                turn: e.response_id.as_deref().and_then(turn_of),
                text: e.delta.map(Cow::into_owned).unwrap_or_default(),
            }),
            "response.output_audio.delta" => {
                let turn = e.response_id.as_deref().and_then(turn_of);
                if self.hold == RealtimeHold::Judged && turn == self.open {
                    self.hold = RealtimeHold::Playing;
                    seen.push_back(Seen::Resumed);
                }
                let bytes = e.delta.as_deref().map_or(0, base64_len);
                seen.push_back(Seen::Audio { bytes, turn });
            }
            "response.function_call_arguments.done" => seen.push_back(Seen::ToolCall),
            "response.done" => {
                let Some(r) = e.response else {
                    return Ok(());
                };
                let status = match r.status.as_deref() {
                    Some("cancelled") => "interrupted",
                    Some(s) => s,
                    None => "failed",
                };
                if status == "interrupted" {
                    // With manual turns the only sign that the answer stopped; with server VAD
                    // it was held at `speech_started` already.
                    seen.push_back(Seen::Held);
                    seen.push_back(Seen::Interrupted);
                }
                seen.push_back(Seen::Done(Done {
                    turn: turn_of(&r.id),
                    status: status.to_owned(),
                    reason: r.status_details.and_then(|d| d.reason).map(Cow::into_owned),
                    ttft_ms: None,
                    audio_ms: None,
                }));
                self.open = None;
                self.hold = RealtimeHold::Playing;
            }
            "error" => seen.push_back(Seen::Error {
                code: e
                    .error
                    .and_then(|x| x.code)
                    .map_or_else(|| "unknown".to_owned(), Cow::into_owned),
                fatal: false,
            }),
            _ => {}
        }
        Ok(())
    }
}

/// How long a Twilio answer's audio must pause to count as done. voxd sends an answer paced
/// with no gap longer than a pacing interval, so a longer pause is its end, unless the answer
/// is held.
pub(crate) const TWILIO_QUIET: Duration = Duration::from_millis(700);

/// The play time of one sample at 8 kHz.
const SAMPLE: Duration = Duration::from_micros(125);

/// A Twilio message from voxd, borrowed from its frame.
#[derive(Deserialize)]
struct TwilioEvent<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default)]
    media: Option<TwilioMedia<'a>>,
    #[serde(borrow, default)]
    mark: Option<TwilioMark<'a>>,
}

#[derive(Deserialize)]
struct TwilioMedia<'a> {
    #[serde(borrow)]
    payload: Cow<'a, str>,
}

#[derive(Deserialize)]
struct TwilioMark<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

/// What voxd's mark names: the frame before it ends at sample `end` of `turn`'s answer, sent in
/// `generation` (each `clear` starts a new one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct MarkAt {
    turn: u64,
    generation: u32,
    end: u64,
}

/// `<turn>:<generation>:<end sample>` (docs/twilio.md).
fn parse_mark(name: &str) -> Option<MarkAt> {
    let mut parts = name.split(':');
    let at = MarkAt {
        turn: parts.next()?.parse().ok()?,
        generation: parts.next()?.parse().ok()?,
        end: parts.next()?.parse().ok()?,
    };
    parts.next().is_none().then_some(at)
}

/// A mark waiting in the simulated Twilio's buffer for the audio before it to play.
#[derive(Debug)]
struct QueuedMark {
    /// When the audio before it will have played.
    due: Instant,
    /// The frame before it: its samples, and where it ends, if voxd's name says.
    samples: u64,
    at: Option<MarkAt>,
    /// The echo, ready to send.
    echo: Message,
}

/// Where the answer is in a barge-in, as the simulated Twilio sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum TwilioHold {
    /// It plays (or there is none).
    #[default]
    Playing,
    /// A `clear` came during `turn`'s answer, sent in `generation`, when the caller had heard up
    /// to sample `heard` of it.
    Held {
        turn: u64,
        generation: u32,
        heard: u64,
    },
    /// A second `clear` cut `turn`'s answer: what comes of it now is stale.
    Cut { turn: u64 },
}

/// The answer being played.
#[derive(Debug, Clone, Copy)]
struct PlayingAnswer {
    turn: u64,
    generation: u32,
    last_audio: Instant,
}

/// A simulated Twilio: it plays what voxd sends at real time, echoes marks as their audio has
/// played, drops its buffer on `clear`, and tells the turn logic what it saw.
///
/// | hold | on | next | seen |
/// |---|---|---|---|
/// | `Playing` | `clear` during an answer | `Held` | `Held` |
/// | `Held` | a frame of the held turn in a newer generation, the caller silent | `Playing` | (`Skipped`), `Resumed`, `Audio` |
/// | `Held` | a second `clear` | `Cut` | `Interrupted`, `Done` (interrupted) |
/// | `Held` | a frame of another turn | `Playing` | `Interrupted`, `Done` (interrupted), `Answer`, `Audio` |
/// | `Cut` | a frame of another turn | `Playing` | `Answer`, `Audio` |
/// | `Playing`, `Cut` | `TWILIO_QUIET` after an answer's last frame | same | `Done` (completed) |
///
/// A frame's audio is told when its mark names its turn (voxd follows every frame with one).
#[derive(Debug, Default)]
pub(crate) struct TwilioPhone {
    /// Marks waiting for their audio to play, oldest first.
    queue: VecDeque<QueuedMark>,
    /// When the audio buffered so far will have played.
    play_end: Option<Instant>,
    /// The samples of the last `media`, until its mark names its turn.
    unnamed: Option<u64>,
    /// Echoes to send, in order.
    echoes: VecDeque<Message>,
    hold: TwilioHold,
    /// The answer whose audio comes, until its end is told.
    playing: Option<PlayingAnswer>,
    /// The turn of the last frame told, to see a new answer begin.
    last_turn: Option<u64>,
    /// The last frame played: its turn and end sample.
    played: Option<(u64, u64)>,
}

impl TwilioPhone {
    /// Reads one message from voxd at `now`, `speaking` telling whether the caller is speaking.
    ///
    /// # Errors
    /// When the frame is not JSON.
    pub(crate) fn read(
        &mut self,
        text: &str,
        now: Instant,
        speaking: bool,
        seen: &mut VecDeque<Seen>,
    ) -> Result<(), String> {
        self.tick(now, seen);
        let e: TwilioEvent<'_> = match serde_json::from_str(text) {
            Ok(e) => e,
            Err(err) => {
                return serde_json::from_str::<IgnoredAny>(text)
                    .map(|_| ())
                    .map_err(|_| format!("bad JSON from server: {err}"))
            }
        };
        match (&*e.event, e.media, e.mark) {
            ("media", Some(m), _) => self.media(base64_len(&m.payload) as u64, now, seen),
            ("mark", _, Some(m)) => self.mark(&m.name, now, speaking, seen),
            ("clear", _, _) => self.clear(now, seen),
            _ => {}
        }
        Ok(())
    }

    /// The time passes: marks whose audio has played are echoed, and an answer quiet for
    /// `TWILIO_QUIET` is done (unless held: nothing plays while the caller may be barging in).
    pub(crate) fn tick(&mut self, now: Instant, seen: &mut VecDeque<Seen>) {
        while let Some(q) = self.queue.front() {
            if q.due > now {
                break;
            }
            let Some(q) = self.queue.pop_front() else {
                break;
            };
            if let Some(at) = q.at {
                self.played = Some((at.turn, at.end));
            }
            self.echoes.push_back(q.echo);
        }
        if matches!(self.hold, TwilioHold::Held { .. }) {
            return;
        }
        if let Some(p) = self.playing {
            if now.saturating_duration_since(p.last_audio) >= TWILIO_QUIET {
                self.playing = None;
                seen.push_back(done(p.turn, "completed"));
            }
        }
    }

    /// The next mark echo to send.
    pub(crate) fn poll_echo(&mut self) -> Option<Message> {
        self.echoes.pop_front()
    }

    fn media(&mut self, samples: u64, now: Instant, seen: &mut VecDeque<Seen>) {
        if let Some(n) = self.unnamed.take() {
            // The last frame had no mark: its audio, of no known turn.
            seen.push_back(Seen::Audio {
                bytes: n as usize,
                turn: None,
            });
        }
        let start = self.play_end.map_or(now, |e| e.max(now));
        self.play_end = Some(start + SAMPLE * samples as u32);
        self.unnamed = Some(samples);
    }

    fn mark(&mut self, name: &str, now: Instant, speaking: bool, seen: &mut VecDeque<Seen>) {
        let echo =
            format!(r#"{{"event":"mark","streamSid":"MZbench","mark":{{"name":"{name}"}}}}"#);
        let at = parse_mark(name);
        let samples = self.unnamed.take();
        self.queue.push_back(QueuedMark {
            due: self.play_end.map_or(now, |e| e.max(now)),
            samples: samples.unwrap_or(0),
            at,
            echo: Message::Text(echo.into()),
        });
        match (samples, at) {
            (Some(n), Some(at)) => self.frame(n, at, now, speaking, seen),
            (Some(n), None) => seen.push_back(Seen::Audio {
                bytes: n as usize,
                turn: None,
            }),
            (None, _) => {}
        }
    }

    /// A frame of `n` samples that ends at `at`.
    fn frame(
        &mut self,
        n: u64,
        at: MarkAt,
        now: Instant,
        speaking: bool,
        seen: &mut VecDeque<Seen>,
    ) {
        match self.hold {
            TwilioHold::Held {
                turn,
                generation,
                heard,
            } if at.turn == turn => {
                if at.generation > generation && !speaking {
                    let start = at.end.saturating_sub(n);
                    if start > heard {
                        seen.push_back(Seen::Skipped {
                            samples: start - heard,
                        });
                    }
                    self.hold = TwilioHold::Playing;
                    seen.push_back(Seen::Resumed);
                }
                // Otherwise audio while held: the turn logic counts it.
            }
            TwilioHold::Held { turn, .. } => {
                // A new answer: the held one was cut without a second `clear`.
                self.hold = TwilioHold::Playing;
                seen.push_back(Seen::Interrupted);
                seen.push_back(done(turn, "interrupted"));
            }
            TwilioHold::Cut { turn } if at.turn == turn => {
                seen.push_back(Seen::Audio {
                    bytes: n as usize,
                    turn: Some(turn),
                });
                return;
            }
            TwilioHold::Cut { .. } => self.hold = TwilioHold::Playing,
            TwilioHold::Playing => {}
        }
        if self.last_turn != Some(at.turn) {
            self.last_turn = Some(at.turn);
            seen.push_back(Seen::Answer { turn: at.turn });
        }
        self.playing = Some(PlayingAnswer {
            turn: at.turn,
            generation: at.generation,
            last_audio: now,
        });
        seen.push_back(Seen::Audio {
            bytes: n as usize,
            turn: Some(at.turn),
        });
    }

    /// Twilio drops what it has not played and sends back every mark it held.
    fn clear(&mut self, now: Instant, seen: &mut VecDeque<Seen>) {
        self.tick(now, seen);
        let heard = self.playing.map(|p| self.heard(p.turn, now));
        self.echoes.extend(self.queue.drain(..).map(|q| q.echo));
        self.play_end = None;
        match (self.hold, self.playing) {
            (TwilioHold::Playing, Some(p)) => {
                self.hold = TwilioHold::Held {
                    turn: p.turn,
                    generation: p.generation,
                    heard: heard.unwrap_or(0),
                };
                seen.push_back(Seen::Held);
            }
            (TwilioHold::Held { turn, .. }, _) => {
                self.hold = TwilioHold::Cut { turn };
                self.playing = None;
                seen.push_back(Seen::Interrupted);
                seen.push_back(done(turn, "interrupted"));
            }
            // A `clear` with nothing playing, or after a cut.
            _ => {}
        }
    }

    /// The sample of `turn`'s answer the caller has heard up to at `now`: the end of the last
    /// frame played, and the part played of the frame playing.
    fn heard(&self, turn: u64, now: Instant) -> u64 {
        let mut heard = match self.played {
            Some((t, end)) if t == turn => end,
            _ => 0,
        };
        if let Some(q) = self.queue.front() {
            if let Some(at) = q.at.filter(|a| a.turn == turn) {
                let length = SAMPLE * q.samples as u32;
                let start = q.due.checked_sub(length).unwrap_or(q.due);
                let into = now.saturating_duration_since(start).min(length);
                let part = (into.as_micros() / SAMPLE.as_micros()) as u64;
                heard = heard.max(at.end.saturating_sub(q.samples) + part);
            }
        }
        heard
    }
}

fn done(turn: u64, status: &str) -> Seen {
    Seen::Done(Done {
        turn: Some(turn),
        status: status.to_owned(),
        ..Done::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn realtime(r: &mut RealtimeReader, events: &[Value]) -> Vec<Seen> {
        let mut seen = VecDeque::new();
        for e in events {
            r.read(&e.to_string(), &mut seen).unwrap();
        }
        seen.into()
    }

    fn delta(resp: &str) -> Value {
        serde_json::json!({"type": "response.output_audio.delta", "response_id": resp, "item_id": "item_1_a0", "delta": "AAAAAA=="})
    }

    fn response_done(id: &str, status: &str, reason: Option<&str>) -> Value {
        serde_json::json!({"type": "response.done", "response": {"id": id, "object": "realtime.response",
            "status": status, "status_details": {"type": status, "reason": reason},
            "output": [{"type": "message", "content": [{"type": "audio", "transcript": "Hi."}]}], "usage": null}})
    }

    fn audio(bytes: usize, turn: u64) -> Seen {
        Seen::Audio {
            bytes,
            turn: Some(turn),
        }
    }

    #[test]
    fn a_realtime_answer_reads_as_its_response_turn() {
        let mut r = RealtimeReader::new(false);
        let seen = realtime(
            &mut r,
            &[
                serde_json::json!({"type": "session.created", "session": {"id": "sess_1"}}),
                serde_json::json!({"type": "conversation.item.input_audio_transcription.completed", "item_id": "item_1", "transcript": "hi"}),
                serde_json::json!({"type": "response.created", "response": {"id": "resp_2", "status": "in_progress"}}),
                serde_json::json!({"type": "response.output_audio_transcript.delta", "response_id": "resp_2", "delta": "Hi \"you\"."}),
                delta("resp_2"),
                response_done("resp_2", "completed", None),
            ],
        );
        assert_eq!(
            seen,
            vec![
                Seen::Ready,
                Seen::Answer { turn: 2 },
                Seen::ResponseText {
                    turn: Some(2),
                    text: "Hi \"you\".".into()
                },
                audio(4, 2),
                Seen::Done(Done {
                    turn: Some(2),
                    status: "completed".into(),
                    ..Done::default()
                }),
            ]
        );
    }

    #[test]
    fn a_realtime_barge_in_holds_then_cancels_the_response() {
        let mut r = RealtimeReader::new(true);
        let seen = realtime(
            &mut r,
            &[
                // The caller's own turn starting holds nothing: no response is open.
                serde_json::json!({"type": "input_audio_buffer.speech_started", "item_id": "item_3"}),
                serde_json::json!({"type": "response.created", "response": {"id": "resp_3"}}),
                delta("resp_3"),
                serde_json::json!({"type": "input_audio_buffer.speech_started", "item_id": "item_4"}),
                serde_json::json!({"type": "conversation.item.truncated", "item_id": "item_3_a0", "audio_end_ms": 500}),
                response_done("resp_3", "cancelled", Some("turn_detected")),
                delta("resp_3"),
            ],
        );
        assert_eq!(
            seen,
            vec![
                Seen::Answer { turn: 3 },
                audio(4, 3),
                Seen::Held,
                Seen::Held,
                Seen::Interrupted,
                Seen::Done(Done {
                    turn: Some(3),
                    status: "interrupted".into(),
                    reason: Some("turn_detected".into()),
                    ..Done::default()
                }),
                audio(4, 3),
            ]
        );
    }

    #[test]
    fn a_realtime_false_alarm_resumes_at_the_audio_after_the_judged_speech() {
        let mut r = RealtimeReader::new(true);
        let seen = realtime(
            &mut r,
            &[
                serde_json::json!({"type": "response.created", "response": {"id": "resp_1"}}),
                serde_json::json!({"type": "input_audio_buffer.speech_started", "item_id": "item_2"}),
                // Audio before the judgement is audio while held.
                delta("resp_1"),
                serde_json::json!({"type": "input_audio_buffer.speech_stopped", "item_id": "item_2"}),
                serde_json::json!({"type": "conversation.item.input_audio_transcription.completed", "item_id": "item_2", "transcript": "mhm"}),
                delta("resp_1"),
                delta("resp_1"),
            ],
        );
        assert_eq!(
            seen,
            vec![
                Seen::Answer { turn: 1 },
                Seen::Held,
                audio(4, 1),
                Seen::Resumed,
                audio(4, 1),
                audio(4, 1),
            ]
        );
    }

    #[test]
    fn with_manual_realtime_turns_speech_holds_nothing() {
        let mut r = RealtimeReader::new(false);
        let seen = realtime(
            &mut r,
            &[
                serde_json::json!({"type": "response.created", "response": {"id": "resp_2"}}),
                serde_json::json!({"type": "input_audio_buffer.speech_started", "item_id": "item_3"}),
                serde_json::json!({"type": "conversation.item.input_audio_transcription.completed", "item_id": "item_3", "transcript": "mhm"}),
                delta("resp_2"),
                response_done("resp_2", "cancelled", Some("client_cancelled")),
                serde_json::json!({"type": "error", "error": {"type": "invalid_request_error", "code": "invalid_value", "message": "no"}}),
            ],
        );
        assert_eq!(seen[..2], [Seen::Answer { turn: 2 }, audio(4, 2)]);
        assert_eq!(seen[2..4], [Seen::Held, Seen::Interrupted]);
        assert!(
            matches!(&seen[4], Seen::Done(d) if d.reason.as_deref() == Some("client_cancelled"))
        );
        assert_eq!(
            seen[5],
            Seen::Error {
                code: "invalid_value".into(),
                fatal: false
            }
        );
        let mut seen = VecDeque::new();
        assert!(r.read("{not json", &mut seen).is_err());
        r.read(r#"{"no": "type"}"#, &mut seen).unwrap();
        assert!(seen.is_empty());
    }

    #[test]
    fn ws_events_read_as_seen() {
        let v = serde_json::json!({"type": "response_done", "turn_id": 4, "status": "completed", "ttft_ms": 12.5, "audio_ms": 900.0});
        assert_eq!(
            ws_seen(&v),
            Seen::Done(Done {
                turn: Some(4),
                status: "completed".into(),
                reason: None,
                ttft_ms: Some(12.5),
                audio_ms: Some(900.0)
            })
        );
        assert_eq!(
            ws_seen(&serde_json::json!({"type": "playback_paused", "turn_id": 4})),
            Seen::Held
        );
        assert_eq!(
            ws_seen(&serde_json::json!({"type": "error", "code": "bad", "fatal": true})),
            Seen::Error {
                code: "bad".into(),
                fatal: true
            }
        );
    }

    /// A Twilio phone fed voxd's messages on a clock of its own.
    struct Call {
        phone: TwilioPhone,
        t0: Instant,
        seen: VecDeque<Seen>,
    }

    impl Call {
        fn new() -> Call {
            Call {
                phone: TwilioPhone::default(),
                t0: Instant::now(),
                seen: VecDeque::new(),
            }
        }

        fn at(&self, ms: u64) -> Instant {
            self.t0 + Duration::from_millis(ms)
        }

        /// voxd sends a 20 ms frame (160 samples) of `turn` ending at `end`, at `ms`.
        fn frame(&mut self, ms: u64, turn: u64, generation: u32, end: u64, speaking: bool) {
            let payload = "f".repeat(216 - 2) + "==";
            let media = format!(
                r#"{{"event":"media","streamSid":"MZbench","media":{{"payload":"{payload}"}}}}"#
            );
            let mark = format!(
                r#"{{"event":"mark","streamSid":"MZbench","mark":{{"name":"{turn}:{generation}:{end}"}}}}"#
            );
            let now = self.at(ms);
            self.phone
                .read(&media, now, speaking, &mut self.seen)
                .unwrap();
            self.phone
                .read(&mark, now, speaking, &mut self.seen)
                .unwrap();
        }

        fn clear(&mut self, ms: u64) {
            let now = self.at(ms);
            self.phone
                .read(
                    r#"{"event":"clear","streamSid":"MZbench"}"#,
                    now,
                    true,
                    &mut self.seen,
                )
                .unwrap();
        }

        fn tick(&mut self, ms: u64) {
            let now = self.at(ms);
            self.phone.tick(now, &mut self.seen);
        }

        fn seen(&mut self) -> Vec<Seen> {
            self.seen.drain(..).collect()
        }

        fn echoes(&mut self) -> Vec<String> {
            std::iter::from_fn(|| self.phone.poll_echo())
                .map(|m| {
                    let v: Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
                    v["mark"]["name"].as_str().unwrap().to_owned()
                })
                .collect()
        }
    }

    #[test]
    fn twilio_marks_are_echoed_once_their_audio_has_played() {
        let mut c = Call::new();
        // Ten frames at once (200 ms of audio ahead), at 0 ms.
        for i in 1..=10 {
            c.frame(0, 1, 0, i * 160, false);
        }
        assert_eq!(c.seen()[..2], [Seen::Answer { turn: 1 }, audio(160, 1)]);
        assert!(c.echoes().is_empty());
        c.tick(39);
        assert_eq!(c.echoes(), ["1:0:160"]);
        c.tick(200);
        assert_eq!(c.echoes().len(), 9);
        // Quiet for TWILIO_QUIET after the last frame came: done.
        c.tick(699);
        assert!(c.seen().is_empty());
        c.tick(700);
        assert_eq!(c.seen(), [done(1, "completed")]);
    }

    #[test]
    fn a_twilio_false_alarm_resumes_from_what_was_heard() {
        let mut c = Call::new();
        for i in 1..=10 {
            c.frame(0, 1, 0, i * 160, false);
        }
        c.seen();
        // 50 ms in: two frames played, half of the third (80 samples).
        c.clear(50);
        assert_eq!(c.seen(), [Seen::Held]);
        // Played, then the marks dropped: all ten go back.
        assert_eq!(c.echoes().len(), 10);
        // Held: no end while the caller speaks and voxd judges, however long.
        c.tick(2000);
        assert!(c.seen().is_empty());
        // voxd rewinds to the last mark echoed as played (sample 320) and sends generation 1.
        c.frame(2100, 1, 1, 480, false);
        assert_eq!(c.seen(), [Seen::Resumed, audio(160, 1)]);
        c.tick(2800);
        assert_eq!(c.seen(), [done(1, "completed")]);
    }

    #[test]
    fn a_twilio_resume_past_what_was_heard_is_a_gap() {
        let mut c = Call::new();
        for i in 1..=10 {
            c.frame(0, 1, 0, i * 160, false);
        }
        c.clear(50);
        c.seen();
        // Heard: 400 samples. Resuming at sample 640 skips 240.
        c.frame(2100, 1, 1, 800, false);
        assert_eq!(
            c.seen(),
            [Seen::Skipped { samples: 240 }, Seen::Resumed, audio(160, 1)]
        );
    }

    #[test]
    fn twilio_audio_while_the_caller_speaks_is_not_a_resume() {
        let mut c = Call::new();
        c.frame(0, 1, 0, 160, false);
        c.clear(10);
        c.seen();
        c.frame(100, 1, 1, 160, true);
        assert_eq!(c.seen(), [audio(160, 1)]);
    }

    #[test]
    fn a_twilio_interruption_is_a_second_clear_then_a_new_answer() {
        let mut c = Call::new();
        for i in 1..=5 {
            c.frame(0, 1, 0, i * 160, false);
        }
        c.clear(30);
        c.clear(600);
        assert_eq!(
            c.seen()[6..],
            [Seen::Held, Seen::Interrupted, done(1, "interrupted")]
        );
        // Stale audio of the cut answer is told as its turn's, and ends nothing.
        c.frame(700, 1, 2, 960, true);
        assert_eq!(c.seen(), [audio(160, 1)]);
        c.tick(2000);
        assert!(c.seen().is_empty());
        c.frame(2100, 2, 2, 160, false);
        assert_eq!(c.seen(), [Seen::Answer { turn: 2 }, audio(160, 2)]);
        c.tick(2800);
        assert_eq!(c.seen(), [done(2, "completed")]);
    }

    #[test]
    fn a_twilio_answer_after_a_single_clear_cuts_the_held_one() {
        let mut c = Call::new();
        c.frame(0, 1, 0, 160, false);
        c.clear(10);
        c.seen();
        c.frame(900, 2, 1, 160, false);
        assert_eq!(
            c.seen(),
            [
                Seen::Interrupted,
                done(1, "interrupted"),
                Seen::Answer { turn: 2 },
                audio(160, 2)
            ]
        );
    }

    #[test]
    fn voxd_mark_names_parse() {
        assert_eq!(
            parse_mark("3:1:4800"),
            Some(MarkAt {
                turn: 3,
                generation: 1,
                end: 4800
            })
        );
        assert_eq!(parse_mark("3:1"), None);
        assert_eq!(parse_mark("3:1:2:4"), None);
        assert_eq!(parse_mark("greeting"), None);
        assert_eq!(base64_len("AAAAAA=="), 4);
        assert_eq!(base64_len(&"A".repeat(1280)), 960);
        assert_eq!(turn_of("resp_3_2"), Some(3));
        assert_eq!(turn_of("item_12_a0"), Some(12));
    }
}
