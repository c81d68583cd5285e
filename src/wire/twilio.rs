//! Twilio Media Streams (bidirectional), over `/twilio`: the codec between Twilio's JSON
//! messages and the session. docs/twilio.md has the set-up.
//!
//! In: `connected`, `start` (the stream's id, its `customParameters`, its `mediaFormat`),
//! `media` (base64 μ-law, 8 kHz, 20 ms), `mark` (the echo of ours), `dtmf`, `stop`.
//! Out: `media` (the answer, μ-law at 8 kHz), a `mark` after every frame, and `clear` when a
//! barge-in pauses or ends the answer.
//!
//! **Where the caller is in the answer.** Twilio plays what it has buffered and drops it all on
//! `clear`. So the session runs with `client_discards_on_pause`: a pause rewinds the answer to
//! what the caller has surely heard, and a false alarm sends the rest again from there. What was
//! heard comes from the marks: each frame is followed by a mark named
//! `<turn>:<generation>:<end sample>`, which Twilio echoes once the frame has played (`Played`).
//! `clear` makes Twilio echo the marks it dropped as well, and those say nothing of what was
//! heard, so every `clear` starts a new generation and the marks of an older one are ignored.
//! A caller therefore never misses a sample; at most the frame playing when the `clear` landed
//! (and what plays during the `clear`'s trip) is heard twice, 20 ms plus the network's one-way
//! delay.

use base64::Engine;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::Value;
use voxd_core::g711::Law;
use voxd_core::{Event, SampleRate, SessionUpdate, TurnId};

use super::{AudioIn, Codec, Frame, Hello, Input, Notice, TextKind};

/// Twilio's audio rate, both ways.
pub(crate) const TWILIO_RATE: SampleRate = SampleRate(8000);

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// The largest `greeting` or `instructions` a `<Parameter>` may carry (Twilio's own limit on all
/// of them together is lower).
const MAX_PARAMETER_CHARS: usize = 16_000;

/// One Twilio message, as much of it as voxd reads.
#[derive(Debug, Deserialize)]
#[serde(tag = "event", rename_all = "lowercase")]
enum Message {
    Connected,
    Start { start: Start },
    Media { media: Media },
    Mark { mark: Mark },
    Dtmf { dtmf: Dtmf },
    Stop,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Start {
    stream_sid: String,
    #[serde(default)]
    custom_parameters: serde_json::Map<String, Value>,
    #[serde(default)]
    media_format: Option<MediaFormat>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MediaFormat {
    encoding: String,
    sample_rate: u32,
}

/// `media`, borrowed from its frame.
#[derive(Deserialize)]
struct MediaEvent<'a> {
    #[serde(borrow)]
    event: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    media: MediaBody<'a>,
}

#[derive(Deserialize)]
struct MediaBody<'a> {
    #[serde(borrow)]
    payload: std::borrow::Cow<'a, str>,
    #[serde(borrow, default)]
    track: Option<std::borrow::Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct Media {
    payload: String,
    #[serde(default)]
    track: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Mark {
    name: String,
}

#[derive(Debug, Deserialize)]
struct Dtmf {
    digit: String,
}

/// The Twilio codec of one call.
pub(crate) struct TwilioCodec {
    /// `streamSid`, as a JSON string (quoted, escaped), once `start` has come.
    stream_sid: Option<String>,
    /// The `<Parameter>`s that may shape the session.
    parameters: Vec<String>,
    audio: AudioIn,
    /// Bumped by every `clear`: marks of an older generation are ignored.
    generation: u32,
    /// Reused per frame.
    ulaw: Vec<u8>,
    b64: String,
    payload: Vec<u8>,
}

impl TwilioCodec {
    /// A codec that lets the `<Parameter>`s named in `parameters` shape the session.
    pub(crate) fn new(parameters: Vec<String>) -> Self {
        TwilioCodec {
            stream_sid: None,
            parameters,
            audio: AudioIn::new(TWILIO_RATE),
            generation: 0,
            ulaw: Vec::with_capacity(320),
            b64: String::with_capacity(440),
            payload: Vec::with_capacity(320),
        }
    }

    fn clear(&mut self, out: &mut Vec<Frame>) {
        if let Some(sid) = &self.stream_sid {
            self.generation += 1;
            out.push(Frame::Text(format!(
                r#"{{"event":"clear","streamSid":{sid}}}"#
            )));
        }
    }

    /// The caller's audio.
    fn media(&mut self, payload: &str, track: Option<&str>, input: &mut dyn FnMut(Input<'_>)) {
        if track.is_some_and(|t| t != "inbound") {
            return;
        }
        self.payload.clear();
        if let Err(e) = B64.decode_vec(payload.as_bytes(), &mut self.payload) {
            tracing::warn!(error = %e, "a Twilio media payload that is not base64 was skipped");
            return;
        }
        let samples = self.audio.g711(Law::Ulaw, &self.payload);
        if !samples.is_empty() {
            input(Input::Audio(samples));
        }
    }

    /// A `start`'s custom parameters, as far as the config lets them shape the session.
    fn update(&self, params: &serde_json::Map<String, Value>) -> Option<SessionUpdate> {
        let mut u = SessionUpdate::default();
        let mut any = false;
        for (key, value) in params {
            if !self.parameters.iter().any(|p| p == key) {
                continue;
            }
            let Some(text) = value
                .as_str()
                .map(str::trim)
                .filter(|t| !t.is_empty() && t.chars().count() <= MAX_PARAMETER_CHARS)
            else {
                tracing::warn!(parameter = %key, "a Twilio <Parameter> that is empty or too long was ignored");
                continue;
            };
            let token = |max: usize| {
                (text.chars().count() <= max
                    && text
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || "-_.+:".contains(c)))
                .then(|| text.to_owned())
            };
            let set = match key.as_str() {
                "instructions" => u.instructions.replace(text.to_owned()).is_none(),
                "greeting" => u.greeting.replace(text.to_owned()).is_none(),
                "voice" => token(64).map(|v| u.voice = Some(v)).is_some(),
                "language" => token(16).map(|l| u.language = Some(l)).is_some(),
                // A phone bot's "are you still there?" after this long of silence.
                "idle_timeout_ms" => text
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| super::IDLE_TIMEOUT_MS.contains(ms))
                    .map(|ms| u.idle_timeout = Some(Some(std::time::Duration::from_millis(ms))))
                    .is_some(),
                _ => false,
            };
            if !set {
                tracing::warn!(parameter = %key, "a Twilio <Parameter> with a bad value was ignored");
            }
            any |= set;
        }
        any.then_some(u)
    }
}

impl Codec for TwilioCodec {
    fn output_rate(&self) -> Option<SampleRate> {
        Some(TWILIO_RATE)
    }

    fn discards_on_pause(&self) -> bool {
        true
    }

    /// `media` is the caller's audio (2 bytes of PCM16 per μ-law byte); `mark` echoes ours.
    fn text_kind(&self, frame: &str) -> TextKind {
        if frame.contains(r#""event":"media""#) {
            let payload = frame
                .split_once(r#""payload":""#)
                .and_then(|(_, rest)| rest.split_once('"'))
                .map_or(0, |(b64, _)| {
                    let padding = b64.bytes().rev().take_while(|&b| b == b'=').count();
                    (b64.len() / 4 * 3).saturating_sub(padding)
                });
            TextKind::Audio(payload * 2)
        } else if frame.contains(r#""event":"mark""#) {
            TextKind::Echo
        } else {
            TextKind::Control
        }
    }

    /// Twilio speaks first (`connected`, `start`); the server says nothing until then.
    fn hello(&mut self, _hello: &Hello<'_>, _out: &mut Vec<Frame>) {}

    fn text(&mut self, frame: &str, _out: &mut Vec<Frame>, input: &mut dyn FnMut(Input<'_>)) {
        // The hot path, fifty times a second: `media`, read without an allocation (its payload
        // borrowed from the frame).
        if frame.contains(r#""event":"media""#) {
            if let Ok(m) = serde_json::from_str::<MediaEvent<'_>>(frame) {
                if m.event == "media" {
                    self.media(&m.media.payload, m.media.track.as_deref(), input);
                    return;
                }
            }
        }
        // Twilio has no error channel: a message voxd cannot read is logged and skipped.
        let message = match serde_json::from_str::<Message>(frame) {
            Ok(m) => m,
            Err(e) => {
                let event = serde_json::from_str::<Value>(frame)
                    .ok()
                    .and_then(|v| v.get("event").and_then(Value::as_str).map(str::to_owned));
                tracing::warn!(event = event.as_deref().unwrap_or("?"), error = %e, "an unreadable Twilio message was skipped");
                return;
            }
        };
        match message {
            Message::Connected | Message::Stop => {}
            Message::Start { start } => {
                if let Some(f) = &start.media_format {
                    if f.encoding != "audio/x-mulaw" || f.sample_rate != TWILIO_RATE.hz() {
                        tracing::warn!(encoding = %f.encoding, rate = f.sample_rate, "Twilio announced a media format other than μ-law at 8 kHz; reading it as that");
                    }
                }
                self.stream_sid = Some(Value::String(start.stream_sid).to_string());
                if let Some(update) = self.update(&start.custom_parameters) {
                    input(Input::Update(update));
                }
            }
            Message::Media { media } => {
                self.media(&media.payload, media.track.as_deref(), input);
            }
            Message::Mark { mark } => {
                if let Some((turn, generation, samples)) = parse_mark(&mark.name) {
                    if generation == self.generation {
                        input(Input::Played { turn, samples });
                    }
                }
            }
            Message::Dtmf { dtmf } => {
                let digit = dtmf.digit.trim();
                if digit.len() == 1
                    && digit
                        .chars()
                        .all(|c| c.is_ascii_digit() || c == '*' || c == '#')
                {
                    input(Input::Text(format!(
                        "The caller pressed {digit} on the keypad."
                    )));
                }
            }
        }
    }

    fn binary(&mut self, _frame: &[u8], _out: &mut Vec<Frame>, _input: &mut dyn FnMut(Input<'_>)) {
        tracing::warn!("Twilio sends JSON text only; a binary frame was skipped");
    }

    fn event(&mut self, event: &Event, out: &mut Vec<Frame>) {
        match event {
            // Nothing plays while the caller may be barging in: Twilio drops what it buffered,
            // and the session rewinds to what was heard.
            Event::PlaybackPaused { .. } => self.clear(out),
            Event::Interrupted { played_ms, .. } if *played_ms > 0.0 => self.clear(out),
            _ => {}
        }
    }

    fn audio(&mut self, turn: TurnId, at: u64, pcm: Bytes, out: &mut Vec<Frame>) {
        let Some(sid) = &self.stream_sid else {
            return;
        };
        self.ulaw.clear();
        let samples = pcm.len() / 2;
        self.ulaw.extend(
            pcm.chunks_exact(2)
                .map(|b| voxd_core::g711::ulaw_from_linear(i16::from_le_bytes([b[0], b[1]]))),
        );
        self.b64.clear();
        B64.encode_string(&self.ulaw, &mut self.b64);
        out.push(Frame::Text(format!(
            r#"{{"event":"media","streamSid":{sid},"media":{{"payload":"{}"}}}}"#,
            self.b64
        )));
        let end = at + samples as u64;
        out.push(Frame::Text(format!(
            r#"{{"event":"mark","streamSid":{sid},"mark":{{"name":"{}:{}:{end}"}}}}"#,
            turn.0, self.generation
        )));
    }

    /// Twilio has no channel for the server's notices; they are only logged.
    fn notice(&mut self, notice: Notice<'_>, _out: &mut Vec<Frame>) {
        if let Notice::Error { code, message } = notice {
            tracing::warn!(code, message, "a notice Twilio cannot be told");
        }
    }
}

/// `<turn>:<generation>:<end sample>`.
fn parse_mark(name: &str) -> Option<(TurnId, u32, u64)> {
    let mut parts = name.split(':');
    let turn = parts.next()?.parse().ok()?;
    let generation = parts.next()?.parse().ok()?;
    let end = parts.next()?.parse().ok()?;
    parts
        .next()
        .is_none()
        .then_some((TurnId(turn), generation, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(codec: &mut TwilioCodec, text: &str) -> Vec<String> {
        let mut inputs = Vec::new();
        let mut out = Vec::new();
        codec.text(text, &mut out, &mut |i| inputs.push(format!("{i:?}")));
        assert!(out.is_empty(), "Twilio is never answered");
        inputs
    }

    fn texts(out: &[Frame]) -> Vec<Value> {
        out.iter()
            .map(|f| match f {
                Frame::Text(t) => serde_json::from_str(t).expect("JSON"),
                Frame::Binary(_) => panic!("binary frame to Twilio"),
            })
            .collect()
    }

    fn started() -> TwilioCodec {
        let mut c = TwilioCodec::new(vec!["greeting".into(), "instructions".into()]);
        let start = r#"{"event":"start","sequenceNumber":"1","streamSid":"MZ1","start":{
            "streamSid":"MZ1","accountSid":"AC1","callSid":"CA1","tracks":["inbound"],
            "customParameters":{"greeting":"Hello, caller.","voice":"nova","extra":"x"},
            "mediaFormat":{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}"#;
        let inputs = feed(&mut c, start);
        assert_eq!(inputs.len(), 1);
        assert!(
            inputs[0].contains("greeting: Some(\"Hello, caller.\")"),
            "{inputs:?}"
        );
        // `voice` is not allowed by this config; `extra` is no setting.
        assert!(inputs[0].contains("voice: None"), "{inputs:?}");
        c
    }

    #[test]
    fn an_idle_timeout_parameter_is_taken_within_its_range() {
        let start = |value: &str| {
            let mut c = TwilioCodec::new(vec!["idle_timeout_ms".into()]);
            let start = format!(
                r#"{{"event":"start","sequenceNumber":"1","streamSid":"MZ1","start":{{
                "streamSid":"MZ1","accountSid":"AC1","callSid":"CA1","tracks":["inbound"],
                "customParameters":{{"idle_timeout_ms":"{value}"}},
                "mediaFormat":{{"encoding":"audio/x-mulaw","sampleRate":8000,"channels":1}}}}}}"#
            );
            feed(&mut c, &start)
        };
        let inputs = start("8000");
        assert!(
            inputs[0].contains("idle_timeout: Some(Some(8s))"),
            "{inputs:?}"
        );
        for bad in ["soon", "10", "9999999"] {
            assert!(start(bad).is_empty(), "{bad}: ignored, nothing to update");
        }
    }

    #[test]
    fn start_media_dtmf_and_marks_become_inputs() {
        let mut c = started();
        assert!(feed(
            &mut c,
            r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#
        )
        .is_empty());
        // 20 ms of μ-law silence: 160 bytes → about 320 samples at 16 kHz.
        let payload = B64.encode([0xFFu8; 160]);
        let media = format!(
            r#"{{"event":"media","sequenceNumber":"3","media":{{"track":"inbound","chunk":"1","timestamp":"5","payload":"{payload}"}},"streamSid":"MZ1"}}"#
        );
        let inputs = feed(&mut c, &media);
        assert_eq!(inputs.len(), 1);
        assert!(inputs[0].starts_with("Audio("), "{inputs:?}");
        assert_eq!(
            feed(
                &mut c,
                r#"{"event":"dtmf","streamSid":"MZ1","sequenceNumber":"5","dtmf":{"track":"inbound_track","digit":"7"}}"#
            ),
            [r#"Text("The caller pressed 7 on the keypad.")"#]
        );
        assert_eq!(
            feed(
                &mut c,
                r#"{"event":"mark","sequenceNumber":"4","streamSid":"MZ1","mark":{"name":"3:0:4800"}}"#
            ),
            ["Played { turn: TurnId(3), samples: 4800 }"]
        );
        assert!(feed(&mut c, r#"{"event":"stop","sequenceNumber":"9","streamSid":"MZ1","stop":{"accountSid":"AC1","callSid":"CA1"}}"#).is_empty());
    }

    #[test]
    fn bad_messages_are_skipped() {
        let mut c = started();
        for bad in [
            "not json",
            r#"{"event":"dance"}"#,
            r#"{"event":"media","media":{"payload":"%%%"}}"#,
            r#"{"event":"media"}"#,
            r#"{"event":"mark","mark":{"name":"elsewhere"}}"#,
            r#"{"event":"dtmf","dtmf":{"digit":"12"}}"#,
        ] {
            assert!(feed(&mut c, bad).is_empty(), "{bad}");
        }
    }

    #[test]
    fn audio_goes_out_as_ulaw_with_a_mark_and_a_pause_clears_and_starts_a_generation() {
        let mut c = started();
        let mut out = Vec::new();
        let pcm: Vec<u8> = [0i16, 1000, -1000, 32767]
            .iter()
            .flat_map(|s| s.to_le_bytes())
            .collect();
        c.audio(TurnId(2), 160, Bytes::from(pcm), &mut out);
        let sent = texts(&out);
        assert_eq!(sent[0]["event"], "media");
        assert_eq!(sent[0]["streamSid"], "MZ1");
        let ulaw = B64
            .decode(sent[0]["media"]["payload"].as_str().unwrap())
            .unwrap();
        let mut want = Vec::new();
        Law::Ulaw.encode(&[0, 1000, -1000, 32767], &mut want);
        assert_eq!(ulaw, want);
        assert_eq!(sent[1]["event"], "mark");
        assert_eq!(sent[1]["mark"]["name"], "2:0:164");

        out.clear();
        c.event(
            &Event::PlaybackPaused {
                turn: TurnId(2),
                rewound_to: Some(100),
            },
            &mut out,
        );
        assert_eq!(
            texts(&out),
            [serde_json::json!({"event": "clear", "streamSid": "MZ1"})]
        );
        // The marks Twilio echoes for what `clear` dropped belong to the old generation.
        assert!(feed(&mut c, r#"{"event":"mark","mark":{"name":"2:0:164"}}"#).is_empty());
        assert_eq!(
            feed(&mut c, r#"{"event":"mark","mark":{"name":"2:1:200"}}"#),
            ["Played { turn: TurnId(2), samples: 200 }"]
        );
    }

    #[test]
    fn media_counts_as_audio_and_marks_as_echoes_against_the_limits() {
        let c = started();
        let payload = B64.encode([0xFFu8; 160]);
        let media = format!(r#"{{"event":"media","media":{{"payload":"{payload}"}}}}"#);
        assert_eq!(c.text_kind(&media), TextKind::Audio(320));
        assert_eq!(
            c.text_kind(r#"{"event":"mark","mark":{"name":"1:0:160"}}"#),
            TextKind::Echo
        );
        assert_eq!(c.text_kind(r#"{"event":"dtmf"}"#), TextKind::Control);
    }

    #[test]
    fn nothing_goes_out_before_start() {
        let mut c = TwilioCodec::new(Vec::new());
        let mut out = Vec::new();
        c.audio(TurnId(1), 0, Bytes::from_static(&[0, 0]), &mut out);
        c.event(
            &Event::PlaybackPaused {
                turn: TurnId(1),
                rewound_to: Some(0),
            },
            &mut out,
        );
        assert!(out.is_empty());
    }
}
