//! One simulated caller: a WebSocket client that streams its microphone in real time (one 20 ms
//! frame per tick of the shared ticker) and plays the four scenarios of a classic voice-bot load
//! test, measuring each turn.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::wire::{ws_seen, Done, RealtimeReader, Seen, TwilioPhone};

/// Each caller's WebSocket read buffer, in bytes.
const READ_BUFFER: usize = 8 * 1024;

/// Bytes in one 20 ms frame of 16 kHz PCM16.
pub const FRAME_BYTES: usize = 640;

/// A scenario of the classic voice-bot load test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scenario {
    /// A 2 s query; wait for the whole answer.
    Simple,
    /// A 3 s query that makes the bot call a tool.
    Tools,
    /// Barge in 0.3–0.8 s after the first audio with 1.5 s of speech; a new answer follows.
    Interruption,
    /// `speech_start`, 300 ms, `speech_end` while the bot speaks; it must resume.
    FalseAlarm,
}

impl Scenario {
    /// All scenarios, in report order.
    pub const ALL: [Scenario; 4] = [
        Scenario::Simple,
        Scenario::Tools,
        Scenario::Interruption,
        Scenario::FalseAlarm,
    ];

    /// The name used in reports.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Simple => "simple",
            Scenario::Tools => "tools",
            Scenario::Interruption => "interruption",
            Scenario::FalseAlarm => "false_alarm",
        }
    }
}

/// The audio a caller speaks: silence with explicit signals, or committed speech for server VAD.
#[derive(Debug, Clone)]
pub struct Voice {
    /// The protocol the frames are framed for.
    pub protocol: Protocol,
    /// Real speech and server VAD (no `speech_start`/`speech_end`).
    pub server_vad: bool,
    /// Frames of each utterance, as wire messages.
    pub query: Arc<[Message]>,
    pub tool_query: Arc<[Message]>,
    pub interrupt: Arc<[Message]>,
    pub backchannel: Arc<[Message]>,
    /// What the microphone carries between utterances, looped frame by frame: one frame of
    /// digital silence, or (`--noisy`) pink noise.
    pub background: Arc<[Message]>,
}

/// The client protocol a caller speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// voxd's own `/ws`: binary PCM16 at 16 kHz, JSON events.
    Ws,
    /// The OpenAI Realtime protocol (`/v1/realtime`): base64 PCM16 at 24 kHz in JSON events.
    Realtime,
    /// Twilio Media Streams (`/twilio`): base64 μ-law at 8 kHz in JSON, marks echoed, no events.
    Twilio,
}

/// 16 kHz PCM16LE as the wire messages of `protocol`, one per 20 ms frame: the encoding is done
/// once, here, so a caller's microphone costs the load tool one clone per frame.
fn frames_for(protocol: Protocol, pcm: &[u8]) -> Arc<[Message]> {
    let b64 = base64::engine::general_purpose::STANDARD;
    use base64::Engine;
    pcm.chunks(FRAME_BYTES)
        .map(|frame| {
            let samples: Vec<i16> = frame
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]))
                .collect();
            match protocol {
                Protocol::Ws => Message::Binary(Bytes::copy_from_slice(frame)),
                Protocol::Realtime => {
                    let up: Vec<u8> = upsample_3_2(&samples)
                        .iter()
                        .flat_map(|s| s.to_le_bytes())
                        .collect();
                    Message::Text(
                        format!(
                            r#"{{"type":"input_audio_buffer.append","audio":"{}"}}"#,
                            b64.encode(up)
                        )
                        .into(),
                    )
                }
                Protocol::Twilio => {
                    let ulaw: Vec<u8> = samples
                        .chunks(2)
                        .map(|p| ulaw(((i32::from(p[0]) + i32::from(*p.last().unwrap_or(&p[0]))) / 2) as i16))
                        .collect();
                    Message::Text(
                        format!(
                            r#"{{"event":"media","streamSid":"MZbench","media":{{"track":"inbound","payload":"{}"}}}}"#,
                            b64.encode(ulaw)
                        )
                        .into(),
                    )
                }
            }
        })
        .collect()
}

/// 16 kHz to 24 kHz by linear interpolation: good enough for a VAD and a mock ASR that maps
/// by duration.
fn upsample_3_2(s: &[i16]) -> Vec<i16> {
    let n = s.len() * 3 / 2;
    (0..n)
        .map(|i| {
            let x = i as f64 * 2.0 / 3.0;
            let a = s.get(x as usize).copied().unwrap_or(0);
            let b = s.get(x as usize + 1).copied().unwrap_or(a);
            (f64::from(a) + (f64::from(b) - f64::from(a)) * x.fract()) as i16
        })
        .collect()
}

/// G.711 μ-law of one sample. The load tool encodes its own audio, independently of the
/// server's codec, as a real Twilio would.
fn ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    let mut v = i32::from(sample);
    let sign = if v < 0 {
        v = -v;
        0x80
    } else {
        0
    };
    v = v.min(32_635) + BIAS;
    let exponent = (0..8).rev().find(|e| v & (0x80 << e) != 0).unwrap_or(0);
    let mantissa = (v >> (exponent + 3)) & 0x0F;
    !(sign | (exponent << 4) | mantissa) as u8
}

/// The PCM of a committed fixture (plain 44-byte header), without its leading and trailing
/// silence: the speech starts with the first frame (so the barge-in reaction counts from real
/// speech) and ends with the last (so TTFT counts from the real end of speech).
fn wav_pcm(wav: &[u8]) -> &[u8] {
    let pcm = &wav[44..];
    let first = pcm
        .chunks_exact(2)
        .position(|s| s != [0, 0])
        .map_or(0, |i| i * 2);
    let last = pcm
        .chunks_exact(2)
        .rposition(|s| s != [0, 0])
        .map_or(0, |i| (i + 1) * 2);
    &pcm[first..last.max(first)]
}

impl Voice {
    /// The voice for explicit signals (silence, as the classic load test sends; the query lasts
    /// `query_ms`) or server VAD (the committed espeak-ng fixtures, embedded in the binary).
    /// A `noisy` caller's microphone carries pink noise at −35 dBFS between utterances (the
    /// committed `fixtures/noise/pink_-35.wav`): every window passes the server VAD's energy
    /// gate, so a Silero VAD runs its model on all of them.
    pub fn new(protocol: Protocol, server_vad: bool, query_ms: usize, noisy: bool) -> Voice {
        let silence = |ms: usize| vec![0u8; ms * 32];
        let frames = |pcm: &[u8]| frames_for(protocol, pcm);
        let background = if noisy {
            frames(&include_bytes!("../../fixtures/noise/pink_-35.wav")[44..])
        } else {
            frames(&silence(20))
        };
        if server_vad {
            Voice {
                protocol,
                server_vad,
                query: frames(wav_pcm(include_bytes!("../../fixtures/weather.wav"))),
                tool_query: frames(wav_pcm(include_bytes!("../../fixtures/balance.wav"))),
                interrupt: frames(wav_pcm(include_bytes!("../../fixtures/interrupt.wav"))),
                backchannel: frames(wav_pcm(include_bytes!("../../fixtures/mhm.wav"))),
                background,
            }
        } else {
            Voice {
                protocol,
                server_vad,
                query: frames(&silence(query_ms)),
                tool_query: frames(&silence(3000)),
                interrupt: frames(&silence(1500)),
                backchannel: frames(&silence(300)),
                background,
            }
        }
    }
}

/// What one turn measured.
#[derive(Debug, Clone, Default)]
pub struct TurnResult {
    /// Failure reason, if it failed.
    pub error: Option<String>,
    /// End of the user's speech to the first audio byte.
    pub ttft: Option<Duration>,
    /// End of the user's speech to `response_done`.
    pub total: Option<Duration>,
    /// `ttft_ms` from `response_done`.
    pub server_ttft_ms: Option<f64>,
    /// Client TTFT minus the pipeline's minimum (simple queries with a known mock config).
    pub overhead_ms: Option<f64>,
    /// The server's own `ttft_ms` minus the pipeline's minimum: the overhead without the
    /// network and the load tool's own delays.
    pub server_overhead_ms: Option<f64>,
    /// The barge-in's first speech frame (or signal) to the answer's hold: `/ws`'s
    /// `playback_paused`, Realtime's `input_audio_buffer.speech_started` (with manual turns the
    /// `response.done` of the cancelled answer), Twilio's first `clear`.
    pub barge_in: Option<Duration>,
    /// After an interruption: end of the new speech to the new answer's first audio.
    pub recovery_ttft: Option<Duration>,
}

/// Why a session stopped.
#[derive(Debug)]
pub enum SessionEnd {
    /// It could not connect.
    Connect(String),
    /// The connection broke mid-way.
    Broken(String),
}

/// A connected caller.
pub struct Caller {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    ticks: watch::Receiver<u64>,
    last_tick: u64,
    voice: Voice,
    /// What the caller is saying now.
    speech: Option<Utterance>,
    speech_ended_at: Option<Instant>,
    /// The next frame of the background.
    background_next: usize,
    timeout: Duration,
    /// What the protocol's reader saw and the turn logic has not taken yet (a message can mean
    /// several things: a Realtime `response.done` `cancelled` is a hold, an interruption and an
    /// end). Its capacity is kept from message to message.
    seen: VecDeque<Seen>,
    /// The readers of the Realtime and Twilio protocols (the one of the caller's protocol is used).
    realtime: RealtimeReader,
    phone: TwilioPhone,
}

/// An utterance being spoken: its frames, the next one, and the control messages to send after
/// the last one.
struct Utterance {
    frames: Arc<[Message]>,
    next: usize,
    after: &'static [&'static str],
}

/// The Realtime messages that end a manual turn: the buffer becomes the user's turn, and the
/// client asks for its answer (the protocol's `turn_detection: null`).
const REALTIME_MANUAL_TURN: &[&str] = &[
    r#"{"type":"input_audio_buffer.commit"}"#,
    r#"{"type":"response.create"}"#,
];

/// A manual Realtime turn that is not one: the words join the conversation, and nobody asks for
/// an answer to them.
const REALTIME_MANUAL_COMMIT: &[&str] = &[r#"{"type":"input_audio_buffer.commit"}"#];

impl Caller {
    /// Connects and waits for `ready`; returns the caller and the connect time.
    ///
    /// # Errors
    /// A message saying why the connection failed.
    pub async fn connect(
        url: &str,
        ticks: watch::Receiver<u64>,
        voice: Voice,
        timeout: Duration,
    ) -> Result<(Caller, Duration), String> {
        let started = Instant::now();
        // tungstenite zero-fills its whole read buffer before every read: with the default
        // 128 KiB, that memset was 40 % of the load tool's CPU. What a caller reads at once (a
        // batch of paced frames and a few events) is a few KiB.
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
        let connect = tokio_tungstenite::connect_async_with_config(url, Some(config), true);
        let (ws, _) = tokio::time::timeout(timeout, connect)
            .await
            .map_err(|_| "connect timed out".to_owned())?
            .map_err(|e| match e {
                tokio_tungstenite::tungstenite::Error::Http(r) => format!("HTTP {}", r.status()),
                e => format!("connect: {e}"),
            })?;
        let last_tick = *ticks.borrow();
        let server_vad = voice.server_vad;
        let mut caller = Caller {
            ws,
            ticks,
            last_tick,
            voice,
            speech: None,
            speech_ended_at: None,
            background_next: 0,
            timeout,
            seen: VecDeque::with_capacity(8),
            realtime: RealtimeReader::new(server_vad),
            phone: TwilioPhone::default(),
        };
        let connect = match caller.voice.protocol {
            Protocol::Ws | Protocol::Realtime => loop {
                if let Seen::Ready = caller.step().await? {
                    break started.elapsed();
                }
            },
            Protocol::Twilio => {
                // Twilio speaks first, and voxd says nothing back.
                caller
                    .send_text(r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#)
                    .await?;
                caller
                    .send_text(
                        r#"{"event":"start","streamSid":"MZbench","start":{"streamSid":"MZbench","callSid":"CAbench","customParameters":{},"mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}"#,
                    )
                    .await?;
                started.elapsed()
            }
        };
        if caller.manual_realtime() {
            // Explicit turns are manual turns: appends, then a commit and a response.create.
            caller
                .send_text(r#"{"type":"session.update","session":{"type":"realtime","audio":{"input":{"turn_detection":null}}}}"#)
                .await?;
        }
        Ok((caller, connect))
    }

    /// A Realtime caller that takes its own turns (`turn_detection: null`).
    fn manual_realtime(&self) -> bool {
        self.voice.protocol == Protocol::Realtime && !self.voice.server_vad
    }

    /// Streams silence (the microphone of a caller who says nothing) until `t`.
    pub async fn listen_until(&mut self, t: Instant) {
        while Instant::now() < t {
            match tokio::time::timeout_at(t.into(), self.step()).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => break,
            }
        }
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(Duration::from_secs(2), self.ws.close(None)).await;
    }

    /// What the reader saw last, or else: waits for a tick (then sends this tick's frames) or a
    /// message from the server.
    async fn step(&mut self) -> Result<Seen, String> {
        if let Some(s) = self.seen.pop_front() {
            return Ok(s);
        }
        tokio::select! {
            changed = self.ticks.changed() => {
                changed.map_err(|_| "ticker stopped".to_owned())?;
                let now = *self.ticks.borrow_and_update();
                // A late wake-up sends the frames it missed: the microphone runs in real time.
                let due = (now - self.last_tick).min(10);
                self.last_tick = now;
                for _ in 0..due {
                    self.send_frame().await?;
                }
                if self.voice.protocol == Protocol::Twilio {
                    self.phone.tick(Instant::now(), &mut self.seen);
                    self.send_echoes().await?;
                }
            }
            msg = self.ws.next() => match msg {
                Some(Ok(Message::Text(t))) => match self.voice.protocol {
                    Protocol::Ws => {
                        let v: Value = serde_json::from_str(t.as_str())
                            .map_err(|e| format!("bad JSON from server: {e}"))?;
                        return Ok(ws_seen(&v));
                    }
                    Protocol::Realtime => self.realtime.read(t.as_str(), &mut self.seen)?,
                    Protocol::Twilio => {
                        let speaking = self.speech.is_some();
                        self.phone.read(t.as_str(), Instant::now(), speaking, &mut self.seen)?;
                        self.send_echoes().await?;
                    }
                },
                Some(Ok(Message::Binary(b))) => {
                    return Ok(Seen::Audio { bytes: b.len(), turn: None });
                }
                Some(Ok(Message::Close(f))) => return Err(format!("server closed: {f:?}")),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("socket: {e}")),
                None => return Err("server closed the connection".to_owned()),
            }
        }
        Ok(self.seen.pop_front().unwrap_or(Seen::Nothing))
    }

    async fn send_frame(&mut self) -> Result<(), String> {
        let frame = match &mut self.speech {
            Some(u) => {
                let f = u.frames[u.next].clone();
                u.next += 1;
                if u.next == u.frames.len() {
                    let after = u.after;
                    self.speech = None;
                    self.send_frame_bytes(f).await?;
                    for msg in after {
                        self.send_text(msg).await?;
                    }
                    self.speech_ended_at = Some(Instant::now());
                    return Ok(());
                }
                f
            }
            None => {
                let bg = &self.voice.background;
                let f = bg[self.background_next % bg.len()].clone();
                self.background_next = self.background_next.wrapping_add(1);
                f
            }
        };
        self.send_frame_bytes(frame).await
    }

    async fn send_frame_bytes(&mut self, f: Message) -> Result<(), String> {
        self.ws.send(f).await.map_err(|e| format!("send: {e}"))
    }

    /// Sends the marks the simulated Twilio has played (or dropped) back to voxd.
    async fn send_echoes(&mut self) -> Result<(), String> {
        while let Some(echo) = self.phone.poll_echo() {
            self.ws.send(echo).await.map_err(|e| format!("send: {e}"))?;
        }
        Ok(())
    }

    async fn send_text(&mut self, t: &'static str) -> Result<(), String> {
        self.ws
            .send(Message::Text(t.into()))
            .await
            .map_err(|e| format!("send: {e}"))
    }

    /// Starts speaking `frames` from the next tick. With explicit signals: `speech_start` now
    /// and `speech_end` after the last frame (`/ws`), or the input buffer cleared now and `after`
    /// sent after the last frame (manual Realtime turns).
    async fn speak(
        &mut self,
        frames: Arc<[Message]>,
        after: &'static [&'static str],
    ) -> Result<(), String> {
        self.speech_ended_at = None;
        let explicit = !self.voice.server_vad;
        let after = match self.voice.protocol {
            Protocol::Ws if explicit => {
                self.send_text(r#"{"type":"speech_start"}"#).await?;
                &[r#"{"type":"speech_end"}"#][..]
            }
            Protocol::Realtime if explicit => {
                // The input buffer holds what the microphone carried since the last turn.
                self.send_text(r#"{"type":"input_audio_buffer.clear"}"#)
                    .await?;
                after
            }
            _ => &[],
        };
        self.speech = Some(Utterance {
            frames,
            next: 0,
            after,
        });
        Ok(())
    }

    /// Plays one scenario and measures it. `Err` means the connection broke.
    ///
    /// The scenarios read the same in every protocol (`wire` maps each protocol's messages onto
    /// one vocabulary), with these differences:
    /// - **Tool calls.** voxd runs its tools itself and only `/ws` tells of them (`tool_call`):
    ///   over Realtime and Twilio the tool turn is a turn whose answer comes after the tool, its
    ///   TTFT including the tool's time.
    /// - **Manual Realtime turns** (no server VAD) are the client's to take: a query is appended,
    ///   committed and answered on `response.create`. voxd hears nothing before a commit, so the
    ///   caller's client barges in as the protocol asks of a client with its own turn-taking: it
    ///   cancels the answer (`response.cancel`) as its caller starts to talk, then commits the
    ///   words and asks for their answer. Its barge-in reaction is the time to that
    ///   `response.done` (`cancelled`, `client_cancelled`). A false alarm is the client's call
    ///   too: the "mhm" is committed without `response.create`, and the answer must play on
    ///   unheld to its end (no hold, so no reaction to measure).
    /// - **What is checked after a false alarm.** `/ws` says the answer's length
    ///   (`audio_ms`): every byte must have come. Twilio's marks say where each frame lies in
    ///   the answer: the resumed audio must start no later than what the caller had heard when
    ///   the `clear` came. Realtime's deltas say neither, so its resumed answer is checked to
    ///   come after the judgement and to complete.
    ///
    /// # Errors
    /// When the connection breaks; the turn's own failures are in `TurnResult::error`.
    pub async fn play(
        &mut self,
        scenario: Scenario,
        rng: &mut fastrand::Rng,
        minimum: Option<crate::PipelineMinimum>,
    ) -> Result<TurnResult, String> {
        let mut t = TurnResult::default();
        let deadline = Instant::now()
            + match scenario {
                Scenario::Tools => self.timeout * 3,
                // Two answers, and the words that cut the first.
                Scenario::Interruption => self.timeout * 2,
                _ => self.timeout,
            };
        let query = match scenario {
            Scenario::Tools => self.voice.tool_query.clone(),
            _ => self.voice.query.clone(),
        };
        self.speak(query, REALTIME_MANUAL_TURN).await?;
        let mut w = Watch::default();
        // Phase 1: the answer starts.
        let outcome = self
            .until(deadline, &mut w, |w| {
                w.first_audio.is_some() || w.done.is_some()
            })
            .await?;
        if let Some(e) = outcome {
            t.error = Some(e);
            return Ok(t);
        }
        let end = self.speech_ended_at.unwrap_or_else(Instant::now);
        t.ttft = w.first_audio.map(|a| a.saturating_duration_since(end));
        match scenario {
            Scenario::Simple | Scenario::Tools => {
                if let Some(e) = self.until(deadline, &mut w, |w| w.done.is_some()).await? {
                    t.error = Some(e);
                    return Ok(t);
                }
                let done = w.done.clone().unwrap_or_default();
                t.total = w.done_at.map(|d| d.saturating_duration_since(end));
                t.server_ttft_ms = done.ttft_ms;
                if done.status != "completed" {
                    t.error = Some(format!("response {}", done.status));
                } else if scenario == Scenario::Tools
                    && self.voice.protocol == Protocol::Ws
                    && !w.tool_called
                {
                    t.error = Some("no tool_call".to_owned());
                } else if scenario == Scenario::Simple {
                    let min = w
                        .first_sentence
                        .as_deref()
                        .and_then(|first| minimum.map(|m| m.ttft_ms(first, w.sentences > 1)));
                    if let (Some(ttft), Some(min)) = (t.ttft, min) {
                        t.overhead_ms = Some(ttft.as_secs_f64() * 1000.0 - min);
                    }
                    // The server's clock starts when it decides the turn ended, after any VAD
                    // hangover, so its minimum excludes the hangover.
                    let hangover = minimum.map_or(0.0, |m| m.hangover_ms);
                    if let (Some(server), Some(min)) = (t.server_ttft_ms, min) {
                        t.server_overhead_ms = Some(server - (min - hangover));
                    }
                }
            }
            Scenario::Interruption | Scenario::FalseAlarm => {
                // Let the answer play for 0.3–0.8 s, then barge in.
                let wait = Duration::from_millis(rng.u64(300..=800));
                let at = Instant::now() + wait;
                if let Some(e) = self
                    .until(at.min(deadline), &mut w, |w| w.done.is_some())
                    .await?
                {
                    if Instant::now() < at {
                        t.error = Some(e);
                        return Ok(t);
                    }
                }
                if w.done.is_some() {
                    t.error = Some("the answer ended before the barge-in".to_owned());
                    return Ok(t);
                }
                w.barge_in_sent = true;
                let barge_at = Instant::now();
                let manual = self.manual_realtime();
                if scenario == Scenario::Interruption {
                    if manual {
                        // Cancelled as the caller starts to talk (see above).
                        self.send_text(r#"{"type":"response.cancel"}"#).await?;
                    }
                    self.speak(self.voice.interrupt.clone(), REALTIME_MANUAL_TURN)
                        .await?;
                } else {
                    self.speak(self.voice.backchannel.clone(), REALTIME_MANUAL_COMMIT)
                        .await?;
                }
                if scenario == Scenario::Interruption {
                    let turn = w.turn;
                    let r = self
                        .until(deadline, &mut w, |w| {
                            w.done_turns.iter().any(|(id, _)| Some(*id) != turn)
                                || w.done_turns.len() >= 2
                        })
                        .await?;
                    if let Some(e) = r {
                        t.error = Some(e);
                        return Ok(t);
                    }
                    t.barge_in = w.paused_at.map(|p| p.saturating_duration_since(barge_at));
                    let second_end = self.speech_ended_at.unwrap_or(barge_at);
                    t.recovery_ttft = w
                        .second_audio
                        .map(|a| a.saturating_duration_since(second_end));
                    t.total = w.done_at.map(|d| d.saturating_duration_since(end));
                    let first_status = w.done_turns.first().map(|(_, s)| s.as_str());
                    let last_status = w.done_turns.last().map(|(_, s)| s.as_str());
                    let stale = w.stale_audio + w.audio_while_paused;
                    // Realtime says why a response was cancelled.
                    let reason = w.done.as_ref().and_then(|d| d.reason.as_deref());
                    let expected = if manual {
                        "client_cancelled"
                    } else {
                        "turn_detected"
                    };
                    if !w.interrupted {
                        t.error = Some("no interrupted event".to_owned());
                    } else if stale > 0 {
                        t.error = Some(format!("{stale} bytes of stale audio after the pause"));
                    } else if first_status != Some("interrupted")
                        || last_status != Some("completed")
                    {
                        t.error = Some(format!("statuses {first_status:?} then {last_status:?}"));
                    } else if reason.is_some_and(|r| r != expected) {
                        t.error = Some(format!("cancelled for {reason:?}, not {expected}"));
                    } else if w.second_audio.is_none() {
                        t.error = Some("no audio in the new answer".to_owned());
                    }
                } else {
                    if let Some(e) = self.until(deadline, &mut w, |w| w.done.is_some()).await? {
                        t.error = Some(e);
                        return Ok(t);
                    }
                    let done = w.done.clone().unwrap_or_default();
                    t.barge_in = w.paused_at.map(|p| p.saturating_duration_since(barge_at));
                    t.total = w.done_at.map(|d| d.saturating_duration_since(end));
                    t.server_ttft_ms = done.ttft_ms;
                    t.error = false_alarm_error(&w, &done, manual);
                }
            }
        }
        Ok(t)
    }

    /// Steps until `cond` holds (`Ok(None)`), the deadline passes or the server reports an
    /// error (`Ok(Some(reason))`), or the connection breaks (`Err`).
    async fn until(
        &mut self,
        deadline: Instant,
        w: &mut Watch,
        cond: impl Fn(&Watch) -> bool,
    ) -> Result<Option<String>, String> {
        while !cond(w) {
            if Instant::now() >= deadline {
                return Ok(Some("timed out".to_owned()));
            }
            let step = tokio::time::timeout_at(deadline.into(), self.step()).await;
            match step {
                Err(_) => return Ok(Some("timed out".to_owned())),
                Ok(step) => {
                    if let Some(e) = w.see(step?) {
                        return Ok(Some(e));
                    }
                }
            }
        }
        Ok(None)
    }
}

/// Why a false alarm failed, if it did: the answer was not held and resumed (or, with manual
/// Realtime turns, was held), audio came while it was held, the resumed audio skipped some of
/// the answer, or the answer did not complete whole.
fn false_alarm_error(w: &Watch, done: &Done, manual: bool) -> Option<String> {
    if manual {
        // The client's call: the answer plays on, unheld.
        if w.paused_at.is_some() {
            return Some("the answer was held for a committed mhm".to_owned());
        }
    } else if w.paused_at.is_none() {
        return Some("the answer was not held".to_owned());
    } else if !w.resumed {
        return Some("the answer did not resume".to_owned());
    } else if w.audio_while_paused > 0 {
        return Some(format!(
            "{} bytes of audio while held",
            w.audio_while_paused
        ));
    } else if w.skipped > 0 {
        return Some(format!(
            "resumed {} samples past what the caller had heard",
            w.skipped
        ));
    }
    if done.status != "completed" {
        return Some(format!("response {}", done.status));
    }
    // `/ws` says the answer's length: every byte of it must have come.
    let expected = done.audio_ms? * 32.0;
    ((w.audio_bytes as f64 - expected).abs() > 2.0).then(|| {
        format!(
            "incomplete answer after resume: {} of {expected} bytes",
            w.audio_bytes
        )
    })
}

/// What a turn has seen so far.
#[derive(Debug, Default)]
struct Watch {
    /// The answer's turn: named by `/ws`'s `transcript`, else by the answer itself.
    turn: Option<u64>,
    first_sentence: Option<String>,
    sentences: usize,
    first_audio: Option<Instant>,
    second_audio: Option<Instant>,
    audio_bytes: usize,
    tool_called: bool,
    barge_in_sent: bool,
    paused: bool,
    paused_at: Option<Instant>,
    resumed: bool,
    interrupted: bool,
    audio_while_paused: usize,
    stale_audio: usize,
    /// Samples of the answer the caller never heard after a resume.
    skipped: u64,
    /// The turn an interruption ended: its audio from then on is stale.
    cut_turn: Option<u64>,
    done: Option<Done>,
    done_at: Option<Instant>,
    done_turns: Vec<(u64, String)>,
}

impl Watch {
    /// Takes in what the caller saw; returns a failure reason for a server error.
    fn see(&mut self, seen: Seen) -> Option<String> {
        match seen {
            Seen::Audio { bytes, turn } => {
                let now = Instant::now();
                if turn.is_some() && turn == self.cut_turn {
                    self.stale_audio += bytes;
                    return None;
                }
                if self.interrupted && self.done_turns.len() == 1 {
                    self.second_audio.get_or_insert(now);
                } else {
                    self.first_audio.get_or_insert(now);
                    if self.paused {
                        if self.interrupted {
                            self.stale_audio += bytes;
                        } else {
                            self.audio_while_paused += bytes;
                        }
                    } else {
                        self.audio_bytes += bytes;
                    }
                }
            }
            Seen::Transcript { turn } if !self.barge_in_sent => self.turn = turn,
            Seen::Answer { turn } if !self.barge_in_sent && self.turn.is_none() => {
                self.turn = Some(turn);
            }
            Seen::ResponseText { turn, text } if turn.is_some() && turn == self.turn => {
                if self.first_sentence.is_none() {
                    self.first_sentence = Some(text);
                }
                self.sentences += 1;
            }
            Seen::ToolCall => self.tool_called = true,
            // A hold before the barge-in is not the barge-in's.
            Seen::Held if self.barge_in_sent => {
                self.paused = true;
                self.paused_at.get_or_insert_with(Instant::now);
            }
            Seen::Resumed if self.paused => {
                self.paused = false;
                self.resumed = true;
            }
            Seen::Interrupted => self.interrupted = true,
            Seen::Done(d) => {
                self.done_turns
                    .push((d.turn.unwrap_or(0), d.status.clone()));
                self.done_at = Some(Instant::now());
                if d.status == "interrupted" {
                    self.cut_turn = d.turn;
                }
                // A new answer after an interruption: audio from here is its own.
                if self.interrupted {
                    self.paused = false;
                }
                if self.turn.is_none() || d.turn == self.turn {
                    self.done = Some(d);
                }
            }
            Seen::Skipped { samples } => self.skipped += samples,
            Seen::Error { code, fatal: true } => return Some(format!("fatal error {code}")),
            Seen::Error { code, .. } => return Some(format!("error {code}")),
            _ => {}
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ulaw_has_g711s_known_points() {
        assert_eq!(ulaw(0), 0xFF);
        assert_eq!(ulaw(32_767), 0x80);
        assert_eq!(ulaw(-32_768), 0x00);
        assert_eq!(ulaw(-1), 0x7F);
    }

    #[test]
    fn frames_are_framed_for_each_protocol() {
        let pcm = vec![0u8; FRAME_BYTES * 2];
        let ws = frames_for(Protocol::Ws, &pcm);
        assert!(matches!(&ws[0], Message::Binary(b) if b.len() == FRAME_BYTES));
        let rt = frames_for(Protocol::Realtime, &pcm);
        let Message::Text(t) = &rt[1] else { panic!() };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        assert_eq!(v["type"], "input_audio_buffer.append");
        // 20 ms at 24 kHz: 960 bytes, 1280 base64 characters.
        assert_eq!(v["audio"].as_str().unwrap().len(), 1280);
        let tw = frames_for(Protocol::Twilio, &pcm);
        let Message::Text(t) = &tw[0] else { panic!() };
        let v: Value = serde_json::from_str(t.as_str()).unwrap();
        assert_eq!(v["event"], "media");
        // 20 ms at 8 kHz: 160 bytes of μ-law.
        assert_eq!(v["media"]["payload"].as_str().unwrap().len(), 216);
    }
}
