//! The OpenAI Realtime protocol (GA event names), over `/v1/realtime`: the codec between its JSON
//! events and the session. docs/realtime.md has the compatibility table.
//!
//! The session's turns map onto the protocol's conversation: a user turn is a user `message` item
//! (`item_<turn>`), its answer a response (`resp_<turn>`) whose output is one assistant message
//! item (`item_<turn>_a`) with an audio content part, and a client-side tool call a
//! `function_call` item. The protocol ends a response at a function call and lets the client ask
//! for the next one (`response.create`) after sending the output; voxd's session keeps the turn
//! going once the output arrives. So a function call ends the protocol's response
//! (`response.done`), what the turn says next opens a new one (`resp_<turn>_<n>`), and the
//! client's `response.create` for it is taken as already answered.

use std::borrow::Cow;
use std::collections::VecDeque;

use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use voxd_core::g711::Law;
use voxd_core::resample::StreamResampler;
use voxd_core::{
    ClientTool, Event, HistoryPart, Rejection, ResponseOverrides, ResponseStatus, SampleRate,
    SessionUpdate, TurnId, VadTuning,
};

use super::{AudioIn, Codec, Frame, Hello, Input, Notice, TextKind};

/// The protocol's default audio rate (`audio/pcm`), which the session's answer is synthesized at.
pub(crate) const REALTIME_RATE: SampleRate = SampleRate(24_000);
/// The rate of `audio/pcmu` and `audio/pcma`.
const G711_RATE: SampleRate = SampleRate(8000);

/// The most a manual turn's input buffer holds: two minutes at 16 kHz.
const MAX_BUFFER: usize = 16_000 * 120;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

const CLIENT_EVENTS: &str =
    "session.update, input_audio_buffer.append, input_audio_buffer.commit, \
    input_audio_buffer.clear, conversation.item.create, conversation.item.truncate, \
    conversation.item.delete, conversation.item.retrieve, response.create, response.cancel";

/// How many items of the conversation the codec remembers for `conversation.item.truncate`,
/// `.delete` and `.retrieve` (the oldest go first).
const ITEMS_KEPT: usize = 128;

/// How many of the last spoken turns the codec remembers as spoken.
const SPOKEN_KEPT: usize = 64;

/// Samples of response audio (24 kHz) in a millisecond.
const SAMPLES_PER_MS: u64 = REALTIME_RATE.0 as u64 / 1000;

/// `input_audio_buffer.append`, borrowed from its frame.
#[derive(serde::Deserialize)]
struct AppendEvent<'a> {
    #[serde(borrow, rename = "type")]
    ty: Cow<'a, str>,
    #[serde(borrow)]
    audio: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event_id: Option<Cow<'a, str>>,
}

/// An audio format of the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Pcm,
    G711(Law),
}

impl Format {
    fn json(self) -> Value {
        match self {
            Format::Pcm => json!({"type": "audio/pcm", "rate": REALTIME_RATE.hz()}),
            Format::G711(Law::Ulaw) => json!({"type": "audio/pcmu"}),
            Format::G711(Law::Alaw) => json!({"type": "audio/pcma"}),
        }
    }

    fn rate(self) -> SampleRate {
        match self {
            Format::Pcm => REALTIME_RATE,
            Format::G711(_) => G711_RATE,
        }
    }
}

/// The response the client is being told about.
#[derive(Debug)]
struct Open {
    turn: TurnId,
    id: String,
    /// The assistant message item, once it has begun.
    message: Option<Message>,
    /// The items of the response, as `response.done` lists them.
    output: Vec<Value>,
    /// `metadata` of the `response.create` that asked for it.
    metadata: Value,
}

/// An assistant message item being spoken.
#[derive(Debug)]
struct Message {
    id: String,
    /// The transcript so far.
    transcript: String,
    /// Its audio, as samples of the turn's response audio: where it began (once it has) and
    /// where the last frame sent ended.
    audio_start: Option<u64>,
    audio_end: u64,
}

/// An item of the conversation, as the codec remembers it.
#[derive(Debug)]
struct Item {
    id: String,
    turn: TurnId,
    kind: ItemKind,
    /// The item as `conversation.item.retrieved` shows it.
    json: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum ItemKind {
    User,
    /// An assistant message: its audio, as samples of its turn's response audio.
    Assistant {
        audio_start: u64,
        audio_end: u64,
    },
    FunctionCall {
        call_id: String,
    },
    FunctionCallOutput {
        call_id: String,
    },
    /// A system message (it set the instructions).
    System,
}

/// A truncation or deletion handed to the session, until the session answers it.
#[derive(Debug)]
struct PendingEdit {
    item_id: String,
    event_id: Option<String>,
    /// For a truncation: where the item's audio begins in its turn's.
    audio_start: u64,
}

/// A user text message handed to the session, until the session names its turn.
#[derive(Debug)]
struct PendingUser {
    item: Value,
}

/// An audio message handed to the session, until the session names its turn.
#[derive(Debug)]
struct PendingAudio {
    id: String,
    event_id: Option<String>,
}

/// `turn_detection`'s settings.
#[derive(Clone, Debug, PartialEq)]
struct TurnDetection {
    semantic: bool,
    /// `semantic_vad`'s, as given.
    eagerness: String,
    /// As the client gave it (reported back as is).
    threshold: f64,
    prefix_padding_ms: u32,
    silence_duration_ms: u32,
    /// A finished turn is answered (else it joins the conversation unanswered).
    create_response: bool,
    /// Speech interrupts a response (else the response plays on).
    interrupt_response: bool,
    /// `server_vad`'s idle timeout.
    idle_timeout_ms: Option<u32>,
}

impl Default for TurnDetection {
    fn default() -> Self {
        TurnDetection {
            semantic: false,
            eagerness: "auto".into(),
            threshold: 0.5,
            prefix_padding_ms: 300,
            silence_duration_ms: 500,
            create_response: true,
            interrupt_response: true,
            idle_timeout_ms: None,
        }
    }
}

impl TurnDetection {
    fn json(&self) -> Value {
        if self.semantic {
            json!({"type": "semantic_vad", "eagerness": self.eagerness,
                "create_response": self.create_response,
                "interrupt_response": self.interrupt_response})
        } else {
            json!({"type": "server_vad", "threshold": self.threshold,
                "prefix_padding_ms": self.prefix_padding_ms,
                "silence_duration_ms": self.silence_duration_ms,
                "idle_timeout_ms": self.idle_timeout_ms,
                "create_response": self.create_response,
                "interrupt_response": self.interrupt_response})
        }
    }

    /// Who answers and interrupts, and the idle timeout, as the session takes them; `None` is
    /// manual turns, where the client does both (`input_audio_buffer.commit`, then
    /// `response.create`; `response.cancel`).
    fn policy(td: Option<&TurnDetection>, u: &mut SessionUpdate) {
        u.answer_turns = Some(td.is_some_and(|t| t.create_response));
        u.interrupt_on_speech = Some(td.is_some_and(|t| t.interrupt_response));
        u.idle_timeout = Some(
            td.and_then(|t| t.idle_timeout_ms)
                .map(|ms| std::time::Duration::from_millis(u64::from(ms))),
        );
    }

    fn tuning(&self) -> VadTuning {
        VadTuning {
            threshold: Some(self.threshold as f32),
            silence_ms: Some(self.silence_duration_ms),
            prefix_padding_ms: Some(self.prefix_padding_ms),
        }
    }
}

/// The Realtime codec of one session.
pub(crate) struct RealtimeCodec {
    model: String,
    session_id: String,
    events: u64,
    instructions: Option<String>,
    voice: Option<String>,
    tools: Vec<Value>,
    /// `turn_detection`: `None` for manual turns (`input_audio_buffer.commit`).
    turn_detection: Option<TurnDetection>,
    /// `audio.input.transcription`: `None` when the client turned input transcripts off.
    transcription: Option<Value>,
    /// Items of the conversation, oldest first (at most `ITEMS_KEPT`).
    items: VecDeque<Item>,
    pending_edit: Option<PendingEdit>,
    pending_user: VecDeque<PendingUser>,
    /// Audio messages handed to the session, until it names their turn (`AudioMessage`).
    pending_audio: VecDeque<PendingAudio>,
    /// Audio messages the session took, by turn, until their transcript.
    audio_items: Vec<(TurnId, String)>,
    /// `metadata` for the next response.
    pending_metadata: Option<Value>,
    /// With manual turns, the audio appended since the last commit or clear (16 kHz): the
    /// protocol's input buffer, which a commit makes the user's turn.
    buffer: Vec<i16>,
    input_format: Format,
    output_format: Format,
    audio_in: AudioIn,
    /// 24 kHz answer audio to 8 kHz, for a G.711 output format.
    down: Option<StreamResampler>,
    down_buf: Vec<i16>,
    encoded: Vec<u8>,
    decoded: Vec<u8>,
    b64: String,
    open: Option<Open>,
    /// How many responses each turn has had (a function call ends one).
    parts: std::collections::HashMap<TurnId, u32>,
    /// The last turns the user spoke (their transcript is an audio transcription), newest
    /// last, at most `SPOKEN_KEPT`: a turn transcribed without an answer has no `response.done`
    /// to forget it by.
    spoken: VecDeque<TurnId>,
    /// A function call ended the protocol's response while the turn goes on: the client's next
    /// `response.create` asks for what the turn does anyway.
    absorb_create: bool,
    /// The client sent `response.cancel`: the next interruption is its doing.
    cancelled: bool,
}

impl RealtimeCodec {
    /// A codec for a client that asked for `model` (reported back as is).
    pub(crate) fn new(model: String) -> Self {
        RealtimeCodec {
            model,
            session_id: String::new(),
            events: 0,
            instructions: None,
            voice: None,
            tools: Vec::new(),
            turn_detection: Some(TurnDetection::default()),
            transcription: Some(json!({"model": "voxd", "language": null, "prompt": ""})),
            items: VecDeque::new(),
            pending_edit: None,
            pending_user: VecDeque::new(),
            pending_audio: VecDeque::new(),
            audio_items: Vec::new(),
            pending_metadata: None,
            buffer: Vec::new(),
            input_format: Format::Pcm,
            output_format: Format::Pcm,
            audio_in: AudioIn::new(REALTIME_RATE),
            down: None,
            down_buf: Vec::new(),
            encoded: Vec::new(),
            decoded: Vec::new(),
            b64: String::new(),
            open: None,
            parts: std::collections::HashMap::new(),
            spoken: VecDeque::new(),
            absorb_create: false,
            cancelled: false,
        }
    }

    fn event_id(&mut self) -> String {
        self.events += 1;
        format!("event_{}", self.events)
    }

    fn send(&mut self, out: &mut Vec<Frame>, ty: &str, mut body: Value) {
        let id = self.event_id();
        if let Value::Object(m) = &mut body {
            m.insert("type".into(), Value::String(ty.to_owned()));
            m.insert("event_id".into(), Value::String(id));
        }
        out.push(Frame::Text(body.to_string()));
    }

    fn error(
        &mut self,
        out: &mut Vec<Frame>,
        code: &str,
        message: String,
        param: Option<&str>,
        client_event: Option<&str>,
    ) {
        self.send(
            out,
            "error",
            json!({"error": {
                "type": "invalid_request_error", "code": code, "message": message,
                "param": param, "event_id": client_event
            }}),
        );
    }

    fn session(&self) -> Value {
        json!({
            "type": "realtime",
            "object": "realtime.session",
            "id": self.session_id,
            "model": self.model,
            "instructions": self.instructions.clone().unwrap_or_default(),
            "output_modalities": ["audio"],
            "audio": {
                "input": {
                    "format": self.input_format.json(),
                    "turn_detection": self.turn_detection.as_ref().map(TurnDetection::json),
                    "transcription": self.transcription,
                    "noise_reduction": null,
                },
                "output": {"format": self.output_format.json(), "voice": self.voice.as_deref().unwrap_or("default")},
            },
            "tools": self.tools,
            "tool_choice": "auto",
        })
    }

    /// The protocol's response for `turn`, opened (with `response.created`) if it is not yet.
    fn response(&mut self, turn: TurnId, out: &mut Vec<Frame>) {
        if self.open.as_ref().is_some_and(|o| o.turn == turn) {
            return;
        }
        let n = self.parts.entry(turn).or_insert(0);
        *n += 1;
        let id = if *n == 1 {
            format!("resp_{}", turn.0)
        } else {
            format!("resp_{}_{}", turn.0, n)
        };
        let metadata = self.pending_metadata.take().unwrap_or(Value::Null);
        self.send(
            out,
            "response.created",
            json!({"response": {"id": id, "object": "realtime.response", "status": "in_progress",
                "output": [], "output_modalities": ["audio"], "metadata": metadata}}),
        );
        self.open = Some(Open {
            turn,
            id,
            message: None,
            output: Vec::new(),
            metadata,
        });
    }

    /// The assistant message item of the open response, begun if it is not yet.
    fn message(&mut self, turn: TurnId, out: &mut Vec<Frame>) {
        self.response(turn, out);
        let Some(open) = &mut self.open else { return };
        if open.message.is_some() {
            return;
        }
        let item_id = format!("item_{}_a{}", turn.0, open.output.len());
        open.message = Some(Message {
            id: item_id.clone(),
            transcript: String::new(),
            audio_start: None,
            audio_end: 0,
        });
        let response_id = open.id.clone();
        let output_index = open.output.len();
        self.send(
            out,
            "response.output_item.added",
            json!({"response_id": response_id, "output_index": output_index, "item": {
                "id": item_id, "object": "realtime.item", "type": "message", "role": "assistant",
                "status": "in_progress", "content": []}}),
        );
        self.send(
            out,
            "response.content_part.added",
            json!({"response_id": response_id, "item_id": item_id, "output_index": output_index,
                "content_index": 0, "part": {"type": "audio", "transcript": ""}}),
        );
    }

    /// Ends the assistant message item of the open response, if it has one.
    fn end_message(&mut self, out: &mut Vec<Frame>, status: &str, heard: Option<&str>) {
        let Some(open) = &mut self.open else { return };
        let Some(message) = open.message.take() else {
            return;
        };
        let item_id = message.id;
        let transcript = heard.map_or(message.transcript, str::to_owned);
        let response_id = open.id.clone();
        let output_index = open.output.len();
        let turn = open.turn;
        let item = assistant_item(&item_id, status, &transcript);
        open.output.push(item.clone());
        let audio_start = message.audio_start.unwrap_or(message.audio_end);
        self.remember(Item {
            id: item_id.clone(),
            turn,
            kind: ItemKind::Assistant {
                audio_start,
                audio_end: message.audio_end.max(audio_start),
            },
            json: item.clone(),
        });
        let at = json!({"response_id": response_id, "item_id": item_id,
            "output_index": output_index, "content_index": 0});
        let with = |extra: Value| {
            let mut v = at.clone();
            if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
                m.extend(e);
            }
            v
        };
        self.send(out, "response.output_audio.done", with(json!({})));
        self.send(
            out,
            "response.output_audio_transcript.done",
            with(json!({"transcript": transcript})),
        );
        self.send(
            out,
            "response.content_part.done",
            with(json!({"part": {"type": "audio", "transcript": transcript}})),
        );
        self.send(
            out,
            "response.output_item.done",
            json!({"response_id": response_id, "output_index": output_index, "item": item}),
        );
    }

    /// The user's audio of `turn` committed as an item (`input_audio_buffer.committed`,
    /// `conversation.item.added`, its transcript to come); its id.
    fn commit_user_item(&mut self, out: &mut Vec<Frame>, turn: TurnId) -> String {
        let item_id = format!("item_{}", turn.0);
        self.send(
            out,
            "input_audio_buffer.committed",
            json!({"item_id": item_id}),
        );
        let item = user_audio_item(&item_id, None);
        self.send(out, "conversation.item.added", json!({"item": item}));
        self.remember(Item {
            id: item_id.clone(),
            turn,
            kind: ItemKind::User,
            json: item,
        });
        item_id
    }

    /// A user audio item's final transcript: `completed` (with transcripts on) and the item,
    /// done.
    fn transcribed(&mut self, out: &mut Vec<Frame>, turn: TurnId, item_id: String, text: &str) {
        let transcribed = self.transcription.is_some();
        if transcribed {
            self.send(
                out,
                "conversation.item.input_audio_transcription.completed",
                json!({
                "item_id": item_id, "content_index": 0, "transcript": text,
                "usage": {"type": "duration", "seconds": 0}}),
            );
        }
        let item = user_audio_item(&item_id, transcribed.then_some(text));
        self.send(out, "conversation.item.done", json!({"item": item}));
        self.remember(Item {
            id: item_id,
            turn,
            kind: ItemKind::User,
            json: item,
        });
    }

    /// `response.done` for the open response.
    fn end_response(&mut self, out: &mut Vec<Frame>, status: &str, details: Value) {
        let Some(open) = self.open.take() else { return };
        self.send(
            out,
            "response.done",
            json!({"response": {"id": open.id, "object": "realtime.response", "status": status,
                "status_details": details, "output": open.output,
                "output_modalities": ["audio"], "usage": null, "metadata": open.metadata}}),
        );
    }

    fn parse(
        &mut self,
        map: &Map<String, Value>,
        out: &mut Vec<Frame>,
        input: &mut dyn FnMut(Input<'_>),
    ) {
        let client_event = map
            .get("event_id")
            .and_then(Value::as_str)
            .map(str::to_owned);
        let eid = client_event.as_deref();
        let ty = map.get("type").and_then(Value::as_str).unwrap_or_default();
        match ty {
            "session.update" => {
                let Some(Value::Object(s)) = map.get("session") else {
                    return self.error(out, "invalid_value", "session.update needs a \"session\" object".into(), Some("session"), eid);
                };
                match self.session_update(s) {
                    Ok(update) => input(Input::Update(update)),
                    Err((param, message)) => self.error(out, "invalid_value", message, Some(&param), eid),
                }
            }
            "input_audio_buffer.append" => {
                let Some(audio) = map.get("audio").and_then(Value::as_str) else {
                    return self.error(out, "invalid_value", "input_audio_buffer.append needs \"audio\": base64 audio".into(), Some("audio"), eid);
                };
                self.append(audio, eid, out, input);
            }
            "input_audio_buffer.commit" => {
                if self.turn_detection.is_some() {
                    // Ends the speech in progress now.
                    input(Input::SpeechEnd);
                } else if self.buffer.is_empty() {
                    self.error(out, "input_audio_buffer_commit_empty", "the input buffer is empty: append audio before committing".into(), None, eid);
                } else {
                    // The buffer is the user's turn, whole.
                    input(Input::SpeechStart);
                    input(Input::Audio(&self.buffer));
                    input(Input::SpeechEnd);
                    self.buffer.clear();
                }
            }
            "input_audio_buffer.clear" => {
                self.buffer.clear();
                self.send(out, "input_audio_buffer.cleared", json!({}));
            }
            "conversation.item.create" => {
                let Some(item) = map.get("item") else {
                    return self.error(out, "invalid_value", "conversation.item.create needs an \"item\"".into(), Some("item"), eid);
                };
                self.item_create(item, out, input, eid);
            }
            "response.create" => {
                let overrides = match map.get("response") {
                    None | Some(Value::Null) => Ok(ResponseOverrides::default()),
                    Some(Value::Object(r)) => self.response_overrides(r),
                    Some(_) => Err(("response".to_owned(), "must be an object".to_owned())),
                };
                let overrides = match overrides {
                    Ok(o) => o,
                    Err((param, message)) => {
                        return self.error(out, "invalid_value", message, Some(&param), eid)
                    }
                };
                if std::mem::take(&mut self.absorb_create) {
                    return;
                }
                if let Some(open) = &self.open {
                    // As the API: one response at a time (`response.cancel` stops it).
                    let message = format!(
                        "response {} is in progress; wait for its response.done or cancel it \
                         (response.cancel)",
                        open.id
                    );
                    return self.error(
                        out,
                        "conversation_already_has_active_response",
                        message,
                        None,
                        eid,
                    );
                }
                self.pending_metadata = map
                    .get("response")
                    .and_then(|r| r.get("metadata"))
                    .filter(|m| m.is_object())
                    .cloned();
                input(Input::Respond(overrides));
            }
            "response.cancel" => {
                if self.open.is_some() {
                    self.cancelled = true;
                }
                input(Input::Cancel);
            }
            "conversation.item.truncate" => self.truncate(map, out, input, eid),
            "conversation.item.delete" => self.delete(map, out, input, eid),
            "conversation.item.retrieve" => {
                let Some(item_id) = self.item_id(map, ty, out, eid) else {
                    return;
                };
                match self.find_item(item_id) {
                    Some(item) => self.send(out, "conversation.item.retrieved", json!({"item": item})),
                    None => self.item_not_found(out, item_id, eid),
                }
            }
            "output_audio_buffer.clear" => self.error(
                out,
                "unsupported_event",
                format!("{ty} is for WebRTC and SIP connections; over a WebSocket the client owns its playback buffer (see docs/realtime.md)"),
                Some("type"),
                eid,
            ),
            "" => self.error(out, "invalid_event", "an event needs a \"type\"".into(), Some("type"), eid),
            other => self.error(
                out,
                "invalid_event",
                format!("unknown event type {:?}; voxd takes: {CLIENT_EVENTS}", truncate(other, 64)),
                Some("type"),
                eid,
            ),
        }
    }

    /// Remembers an item (replacing one with its id), forgetting the oldest beyond `ITEMS_KEPT`.
    fn remember(&mut self, item: Item) {
        if let Some(known) = self.items.iter_mut().rev().find(|i| i.id == item.id) {
            *known = item;
            return;
        }
        if self.items.len() == ITEMS_KEPT {
            self.items.pop_front();
        }
        self.items.push_back(item);
    }

    /// The item `id` as the client would see it now: the message being spoken, or one
    /// remembered.
    fn find_item(&self, id: &str) -> Option<Value> {
        if let Some(m) = self
            .open
            .as_ref()
            .and_then(|o| o.message.as_ref())
            .filter(|m| m.id == id)
        {
            return Some(assistant_item(&m.id, "in_progress", &m.transcript));
        }
        self.items
            .iter()
            .rev()
            .find(|i| i.id == id)
            .map(|i| i.json.clone())
    }

    /// An item event's `item_id`, or an error saying the event needs one.
    fn item_id<'m>(
        &mut self,
        map: &'m Map<String, Value>,
        event: &str,
        out: &mut Vec<Frame>,
        eid: Option<&str>,
    ) -> Option<&'m str> {
        let id = map.get("item_id").and_then(Value::as_str);
        if id.is_none() {
            self.error(
                out,
                "invalid_value",
                format!("{event} needs an \"item_id\""),
                Some("item_id"),
                eid,
            );
        }
        id
    }

    fn item_not_found(&mut self, out: &mut Vec<Frame>, item_id: &str, eid: Option<&str>) {
        self.error(
            out,
            "item_not_found",
            format!(
                "no item has id {:?} (voxd remembers the last {ITEMS_KEPT} items)",
                truncate(item_id, 64)
            ),
            Some("item_id"),
            eid,
        );
    }

    /// `conversation.item.truncate`: the client played an assistant message's audio up to
    /// `audio_end_ms` only. The session cuts what it heard to there.
    fn truncate(
        &mut self,
        map: &Map<String, Value>,
        out: &mut Vec<Frame>,
        input: &mut dyn FnMut(Input<'_>),
        eid: Option<&str>,
    ) {
        let Some(item_id) = self.item_id(map, "conversation.item.truncate", out, eid) else {
            return;
        };
        let Some(audio_end_ms) = map.get("audio_end_ms").and_then(Value::as_u64) else {
            return self.error(
                out,
                "invalid_value",
                "\"audio_end_ms\" must be a whole number of milliseconds".into(),
                Some("audio_end_ms"),
                eid,
            );
        };
        if map
            .get("content_index")
            .and_then(Value::as_u64)
            .unwrap_or(0)
            != 0
        {
            return self.error(
                out,
                "invalid_value",
                "an assistant message has one content part: content_index 0".into(),
                Some("content_index"),
                eid,
            );
        }
        let open = self.open.as_ref().and_then(|o| {
            let m = o.message.as_ref().filter(|m| m.id == item_id)?;
            let start = m.audio_start.unwrap_or(m.audio_end);
            Some((o.turn, start, m.audio_end.max(start)))
        });
        let found = open.or_else(|| {
            let item = self.items.iter().rev().find(|i| i.id == item_id)?;
            match item.kind {
                ItemKind::Assistant {
                    audio_start,
                    audio_end,
                } => Some((item.turn, audio_start, audio_end)),
                _ => None,
            }
        });
        let Some((turn, start, end)) = found else {
            if self.items.iter().any(|i| i.id == item_id) {
                return self.error(
                    out,
                    "invalid_value",
                    format!("item {item_id:?} is not an assistant message: only those have audio to truncate"),
                    Some("item_id"),
                    eid,
                );
            }
            return self.item_not_found(out, item_id, eid);
        };
        let samples = start + audio_end_ms * SAMPLES_PER_MS;
        if samples > end {
            return self.error(
                out,
                "invalid_value",
                format!(
                    "audio_end_ms {audio_end_ms} is past the item's audio ({} ms sent)",
                    (end - start) / SAMPLES_PER_MS
                ),
                Some("audio_end_ms"),
                eid,
            );
        }
        self.pending_edit = Some(PendingEdit {
            item_id: item_id.to_owned(),
            event_id: eid.map(str::to_owned),
            audio_start: start,
        });
        input(Input::Truncate { turn, samples });
    }

    /// `conversation.item.delete`: the item leaves the conversation the model sees.
    fn delete(
        &mut self,
        map: &Map<String, Value>,
        out: &mut Vec<Frame>,
        input: &mut dyn FnMut(Input<'_>),
        eid: Option<&str>,
    ) {
        let Some(item_id) = self.item_id(map, "conversation.item.delete", out, eid) else {
            return;
        };
        if let Some(open) = &self.open {
            if open.message.as_ref().is_some_and(|m| m.id == item_id) {
                let turn = open.turn;
                self.pending_edit = Some(PendingEdit {
                    item_id: item_id.to_owned(),
                    event_id: eid.map(str::to_owned),
                    audio_start: 0,
                });
                return input(Input::Delete {
                    turn,
                    part: HistoryPart::Assistant,
                });
            }
        }
        let Some(item) = self.items.iter().rev().find(|i| i.id == item_id) else {
            return self.item_not_found(out, item_id, eid);
        };
        let turn = item.turn;
        let part = match &item.kind {
            ItemKind::User => HistoryPart::User,
            ItemKind::Assistant { .. } => HistoryPart::Assistant,
            ItemKind::FunctionCall { call_id } | ItemKind::FunctionCallOutput { call_id } => {
                HistoryPart::ToolRound {
                    call_id: call_id.clone(),
                }
            }
            ItemKind::System => return self.error(
                out,
                "invalid_value",
                "a system message set the session's instructions; change them with session.update"
                    .into(),
                Some("item_id"),
                eid,
            ),
        };
        self.pending_edit = Some(PendingEdit {
            item_id: item_id.to_owned(),
            event_id: eid.map(str::to_owned),
            audio_start: 0,
        });
        input(Input::Delete { turn, part });
    }

    /// `response.create`'s `response`: the settings of that response alone.
    fn response_overrides(
        &self,
        r: &Map<String, Value>,
    ) -> Result<ResponseOverrides, (String, String)> {
        let bad = |param: &str, message: String| Err((format!("response.{param}"), message));
        let mut o = ResponseOverrides::default();
        match r.get("conversation").and_then(Value::as_str) {
            None | Some("auto") => {}
            Some(_) => {
                return bad(
                    "conversation",
                    "voxd answers in the conversation only (\"auto\"): out-of-band responses are not supported".into(),
                )
            }
        }
        if r.get("input").is_some_and(|v| !v.is_null()) {
            return bad(
                "input",
                "a response answers the conversation; a custom input is not supported".into(),
            );
        }
        check_modalities(r.get("output_modalities"))
            .map_err(|m| ("response.output_modalities".to_owned(), m))?;
        check_tool_choice(r.get("tool_choice"))
            .map_err(|m| ("response.tool_choice".to_owned(), m))?;
        if let Some(i) = r.get("instructions") {
            let Some(i) = i.as_str() else {
                return bad("instructions", "must be a string".into());
            };
            o.instructions = Some(i.to_owned());
        }
        if let Some(t) = r.get("tools") {
            o.tools = Some(parse_tools(t, "response.")?.1);
        }
        if let Some(Value::Object(output)) = r.get("audio").and_then(|a| a.get("output")) {
            if let Some(f) = output.get("format") {
                let f = format(f).map_err(|m| ("response.audio.output.format".to_owned(), m))?;
                if f != self.output_format {
                    return bad(
                        "audio.output.format",
                        "a response speaks in the session's output format; change it with session.update".into(),
                    );
                }
            }
            if let Some(v) = output.get("voice") {
                o.voice =
                    Some(voice(v).map_err(|m| ("response.audio.output.voice".to_owned(), m))?);
            }
        }
        Ok(o)
    }

    /// `input_audio_buffer.append`'s audio: to the VAD at once, or into the manual turn's buffer.
    fn append(
        &mut self,
        audio: &str,
        eid: Option<&str>,
        out: &mut Vec<Frame>,
        input: &mut dyn FnMut(Input<'_>),
    ) {
        self.decoded.clear();
        if B64.decode_vec(audio.as_bytes(), &mut self.decoded).is_err() {
            return self.error(
                out,
                "invalid_value",
                "\"audio\" is not valid base64".into(),
                Some("audio"),
                eid,
            );
        }
        let samples = match self.input_format {
            Format::Pcm => {
                if self.decoded.len() % 2 == 1 {
                    return self.error(
                        out,
                        "invalid_value",
                        "audio/pcm is 16-bit samples: an even number of bytes".into(),
                        Some("audio"),
                        eid,
                    );
                }
                self.audio_in.pcm16le(&self.decoded)
            }
            Format::G711(law) => self.audio_in.g711(law, &self.decoded),
        };
        if self.turn_detection.is_some() {
            if !samples.is_empty() {
                input(Input::Audio(samples));
            }
        } else if self.buffer.len() + samples.len() > MAX_BUFFER {
            self.error(
                out,
                "input_audio_buffer_full",
                format!(
                    "the input buffer holds at most {} s of audio; commit or clear it",
                    MAX_BUFFER / 16_000
                ),
                Some("audio"),
                eid,
            );
        } else {
            self.buffer.extend_from_slice(samples);
        }
    }

    fn item_create(
        &mut self,
        item: &Value,
        out: &mut Vec<Frame>,
        input: &mut dyn FnMut(Input<'_>),
        eid: Option<&str>,
    ) {
        let ty = item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message");
        match ty {
            "message"
                if item
                    .get("content")
                    .and_then(Value::as_array)
                    .is_some_and(|parts| {
                        parts
                            .iter()
                            .any(|p| p.get("type").and_then(Value::as_str) == Some("input_audio"))
                    }) =>
            {
                self.audio_item(item, out, input, eid);
            }
            "message" => {
                let role = item.get("role").and_then(Value::as_str).unwrap_or_default();
                let text: String = item
                    .get("content")
                    .and_then(Value::as_array)
                    .map(|parts| {
                        parts
                            .iter()
                            .filter_map(|p| p.get("text").and_then(Value::as_str))
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .unwrap_or_default();
                if text.trim().is_empty() {
                    return self.error(
                        out,
                        "invalid_value",
                        "the message has no input_text or input_audio content".into(),
                        Some("item.content"),
                        eid,
                    );
                }
                if role != "user" && role != "system" {
                    return self.error(
                        out,
                        "invalid_value",
                        format!("a message's role must be \"user\" or \"system\", got {role:?}"),
                        Some("item.role"),
                        eid,
                    );
                }
                let id = item
                    .get("id")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("item_c{}", self.events + 1), str::to_owned);

                let created = json!({"id": id, "object": "realtime.item", "type": "message",
                    "role": role, "status": "completed", "content": [{"type": "input_text", "text": text}]});
                self.send(out, "conversation.item.added", json!({"item": created}));
                self.send(out, "conversation.item.done", json!({"item": created}));
                if role == "user" {
                    // Remembered once the session names its turn (its `Transcript`).
                    self.pending_user.push_back(PendingUser { item: created });
                    input(Input::UserMessage(text));
                } else {
                    self.remember(Item {
                        id,
                        turn: TurnId(0),
                        kind: ItemKind::System,
                        json: created,
                    });
                    // A system message sets the instructions, from the next response.
                    self.instructions = Some(text.clone());
                    input(Input::Update(SessionUpdate {
                        instructions: Some(text),
                        ..SessionUpdate::default()
                    }));
                }
            }
            "function_call_output" => {
                let call_id = item.get("call_id").and_then(Value::as_str);
                let output = item.get("output").and_then(Value::as_str);
                let (Some(call_id), Some(output)) = (call_id, output) else {
                    return self.error(
                        out,
                        "invalid_value",
                        "a function_call_output item needs \"call_id\" and \"output\" (strings)"
                            .into(),
                        Some("item"),
                        eid,
                    );
                };
                let id = item
                    .get("id")
                    .and_then(Value::as_str)
                    .map_or_else(|| format!("item_c{}", self.events + 1), str::to_owned);
                let created = json!({"id": id, "object": "realtime.item",
                    "type": "function_call_output", "call_id": call_id, "output": output, "status": "completed"});
                self.send(out, "conversation.item.added", json!({"item": created}));
                self.send(out, "conversation.item.done", json!({"item": created}));
                let turn = self
                    .items
                    .iter()
                    .rev()
                    .find(|i| matches!(&i.kind, ItemKind::FunctionCall { call_id: c } if c == call_id))
                    .map_or(TurnId(0), |i| i.turn);
                self.remember(Item {
                    id,
                    turn,
                    kind: ItemKind::FunctionCallOutput {
                        call_id: call_id.to_owned(),
                    },
                    json: created,
                });
                input(Input::ToolResult {
                    call_id: call_id.to_owned(),
                    result: output.to_owned(),
                });
            }
            other => self.error(
                out,
                "invalid_value",
                format!(
                    "item type {:?} is not supported; voxd takes message and function_call_output",
                    truncate(other, 64)
                ),
                Some("item.type"),
                eid,
            ),
        }
    }

    /// A user message with audio content: decoded from the session's input format and handed
    /// to the session, which transcribes it into the conversation with no reply (the client
    /// asks for one with `response.create`). Its item is told once the session takes it
    /// (`AudioMessage`), and done with its transcript.
    fn audio_item(
        &mut self,
        item: &Value,
        out: &mut Vec<Frame>,
        input: &mut dyn FnMut(Input<'_>),
        eid: Option<&str>,
    ) {
        let role = item.get("role").and_then(Value::as_str).unwrap_or_default();
        if role != "user" {
            return self.error(
                out,
                "invalid_value",
                format!("audio content is for user messages, got role {role:?}"),
                Some("item.role"),
                eid,
            );
        }
        let parts = item.get("content").and_then(Value::as_array);
        let mut audio = AudioIn::new(self.input_format.rate());
        let mut samples: Vec<i16> = Vec::new();
        for (i, part) in parts.into_iter().flatten().enumerate() {
            let param = format!("item.content[{i}]");
            if part.get("type").and_then(Value::as_str) != Some("input_audio") {
                return self.error(out, "invalid_value", "a message holds audio or text, not both: send the text as a message of its own".into(), Some(&param), eid);
            }
            let Some(b64) = part.get("audio").and_then(Value::as_str) else {
                return self.error(
                    out,
                    "invalid_value",
                    "input_audio content needs \"audio\": base64 in the session's input format"
                        .into(),
                    Some(&format!("{param}.audio")),
                    eid,
                );
            };
            self.decoded.clear();
            let decoded = B64.decode_vec(b64.as_bytes(), &mut self.decoded).is_ok();
            let odd = self.input_format == Format::Pcm && self.decoded.len() % 2 == 1;
            if !decoded || odd {
                return self.error(
                    out,
                    "invalid_value",
                    format!(
                        "\"audio\" is not base64 {} audio",
                        self.input_format.json()["type"]
                    ),
                    Some(&format!("{param}.audio")),
                    eid,
                );
            }
            samples.extend_from_slice(match self.input_format {
                Format::Pcm => audio.pcm16le(&self.decoded),
                Format::G711(law) => audio.g711(law, &self.decoded),
            });
            if samples.len() > MAX_BUFFER {
                return self.error(
                    out,
                    "invalid_value",
                    format!("an audio message holds at most {} s", MAX_BUFFER / 16_000),
                    Some(&param),
                    eid,
                );
            }
        }
        if samples.is_empty() {
            return self.error(
                out,
                "invalid_value",
                "the message's audio is empty".into(),
                Some("item.content"),
                eid,
            );
        }
        let id = item
            .get("id")
            .and_then(Value::as_str)
            .map_or_else(|| format!("item_c{}", self.events + 1), str::to_owned);
        self.pending_audio.push_back(PendingAudio {
            id,
            event_id: eid.map(str::to_owned),
        });
        input(Input::UserAudio(&samples));
    }

    /// A `session.update`'s `session`: what voxd applies, or the parameter at fault. Nothing
    /// applies unless all of it does.
    fn session_update(
        &mut self,
        s: &Map<String, Value>,
    ) -> Result<SessionUpdate, (String, String)> {
        let mut u = SessionUpdate::default();
        fn at(param: &'static str) -> impl Fn(String) -> (String, String) {
            move |message| (format!("session.{param}"), message)
        }
        let mut input_format = self.input_format;
        let mut output_format = self.output_format;
        let mut turn_detection = self.turn_detection.clone();
        let mut transcription = self.transcription.clone();
        let mut tools = None;
        check_modalities(s.get("output_modalities")).map_err(at("output_modalities"))?;
        check_tool_choice(s.get("tool_choice")).map_err(at("tool_choice"))?;
        if let Some(i) = s.get("instructions") {
            let i = i
                .as_str()
                .ok_or_else(|| at("instructions")("must be a string".into()))?;
            u.instructions = Some(i.to_owned());
        }
        if let Some(t) = s.get("tools") {
            tools = Some(parse_tools(t, "session.")?);
        }
        if let Some(Value::Object(audio)) = s.get("audio") {
            if let Some(Value::Object(i)) = audio.get("input") {
                if let Some(f) = i.get("format") {
                    input_format = format(f).map_err(at("audio.input.format"))?;
                }
                if let Some(td) = i.get("turn_detection") {
                    turn_detection = match td {
                        Value::Null => None,
                        Value::Object(t) => {
                            Some(parse_turn_detection(t, turn_detection.unwrap_or_default())?)
                        }
                        _ => {
                            return Err(at("audio.input.turn_detection")(
                                "must be an object or null".into(),
                            ))
                        }
                    };
                }
                if let Some(t) = i.get("transcription") {
                    transcription = match t {
                        Value::Null => None,
                        Value::Object(t) => {
                            let model = t.get("model").and_then(Value::as_str).unwrap_or("voxd");
                            let language = match t.get("language") {
                                None | Some(Value::Null) => None,
                                Some(l) => Some(
                                    l.as_str()
                                        .filter(|l| {
                                            !l.is_empty()
                                                && l.len() <= 16
                                                && l.chars()
                                                    .all(|c| c.is_ascii_alphanumeric() || c == '-')
                                        })
                                        .ok_or_else(|| {
                                            at("audio.input.transcription.language")(
                                                "must be a language code such as \"en\"".into(),
                                            )
                                        })?,
                                ),
                            };
                            if let Some(l) = language {
                                u.language = Some(l.to_owned());
                            }
                            Some(json!({"model": model, "language": language,
                                "prompt": t.get("prompt").and_then(Value::as_str).unwrap_or("")}))
                        }
                        _ => {
                            return Err(at("audio.input.transcription")(
                                "must be an object or null".into(),
                            ))
                        }
                    };
                }
                // `noise_reduction` is taken and reported as null: voxd runs no denoiser
                // (its VAD ignores noise; docs/realtime.md).
            }
            if let Some(Value::Object(o)) = audio.get("output") {
                if let Some(f) = o.get("format") {
                    output_format = format(f).map_err(at("audio.output.format"))?;
                }
                if let Some(v) = o.get("voice") {
                    u.voice = Some(voice(v).map_err(at("audio.output.voice"))?);
                }
            }
        }
        // Checked whole; now applied.
        if let Some(i) = &u.instructions {
            self.instructions = Some(i.clone());
        }
        if let Some(v) = &u.voice {
            self.voice = Some(v.clone());
        }
        if let Some((wire, specs)) = tools {
            self.tools = wire;
            u.tools = Some(specs);
        }
        if input_format != self.input_format {
            self.input_format = input_format;
            self.audio_in = AudioIn::new(input_format.rate());
        }
        if output_format != self.output_format {
            self.output_format = output_format;
            self.down = match output_format {
                Format::Pcm => None,
                Format::G711(_) => StreamResampler::new(REALTIME_RATE, G711_RATE).ok(),
            };
        }
        if let Some(td) = &turn_detection {
            self.buffer = Vec::new();
            if self.turn_detection.as_ref() != Some(td) {
                u.vad = Some(td.tuning());
            }
        }
        if turn_detection != self.turn_detection {
            TurnDetection::policy(turn_detection.as_ref(), &mut u);
        }
        self.turn_detection = turn_detection;
        self.transcription = transcription;
        Ok(u)
    }
}

/// A `turn_detection` object, over the settings it changes.
fn parse_turn_detection(
    t: &Map<String, Value>,
    mut td: TurnDetection,
) -> Result<TurnDetection, (String, String)> {
    let at = |param: &str| format!("session.audio.input.turn_detection.{param}");
    let ms = |name: &str, lo: u64, hi: u64| -> Result<Option<u32>, (String, String)> {
        match t.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .filter(|v| (lo..=hi).contains(v))
                .map(|v| Some(v as u32))
                .ok_or_else(|| (at(name), format!("must be {lo} to {hi} ms"))),
        }
    };
    match t
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("server_vad")
    {
        "server_vad" => {
            td.semantic = false;
            if let Some(v) = t.get("threshold").filter(|v| !v.is_null()) {
                td.threshold = v
                    .as_f64()
                    .filter(|v| (0.0..=1.0).contains(v))
                    .ok_or_else(|| (at("threshold"), "must be 0.0 to 1.0".into()))?;
            }
            if let Some(v) = ms("prefix_padding_ms", 0, 2000)? {
                td.prefix_padding_ms = v;
            }
            if let Some(v) = ms("silence_duration_ms", 100, 5000)? {
                td.silence_duration_ms = v;
            }
        }
        "semantic_vad" => {
            // No model judges whether the user finished their thought: eagerness sets how long
            // a pause must be.
            let eagerness = t.get("eagerness").and_then(Value::as_str).unwrap_or("auto");
            td.silence_duration_ms = match eagerness {
                "low" => 1200,
                "medium" | "auto" => 500,
                "high" => 250,
                other => {
                    return Err((
                        at("eagerness"),
                        format!("{other:?} is not an eagerness: low, medium, high or auto"),
                    ))
                }
            };
            td.semantic = true;
            td.eagerness = eagerness.to_owned();
            td.threshold = 0.5;
        }
        other => {
            return Err((
                at("type"),
                format!(
                    "{:?} is not a turn detection; use server_vad, semantic_vad or null",
                    truncate(other, 64)
                ),
            ))
        }
    }
    for (flag, value) in [
        ("create_response", &mut td.create_response),
        ("interrupt_response", &mut td.interrupt_response),
    ] {
        match t.get(flag) {
            None | Some(Value::Null) => {}
            Some(Value::Bool(b)) => *value = *b,
            Some(_) => return Err((at(flag), "must be true or false".into())),
        }
    }
    match t.get("idle_timeout_ms") {
        None => {}
        Some(Value::Null) => td.idle_timeout_ms = None,
        Some(_) if td.semantic => {
            return Err((
                at("idle_timeout_ms"),
                "an idle timeout is for server_vad only".into(),
            ))
        }
        Some(_) => {
            let (lo, hi) = (
                *super::IDLE_TIMEOUT_MS.start(),
                *super::IDLE_TIMEOUT_MS.end(),
            );
            td.idle_timeout_ms = ms("idle_timeout_ms", lo, hi)?;
        }
    }
    if td.semantic {
        td.idle_timeout_ms = None;
    }
    Ok(td)
}

/// A list of function tools: as the client sent them (for `session.updated`), and as the
/// session offers them.
fn parse_tools(t: &Value, prefix: &str) -> Result<(Vec<Value>, Vec<ClientTool>), (String, String)> {
    let bad = |param: String, message: &str| Err((format!("{prefix}{param}"), message.to_owned()));
    let Some(list) = t.as_array() else {
        return bad("tools".into(), "must be an array of function tools");
    };
    let mut specs = Vec::with_capacity(list.len());
    for (i, tool) in list.iter().enumerate() {
        if tool
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("function")
            != "function"
        {
            return bad(
                format!("tools[{i}].type"),
                "voxd takes function tools (MCP tools belong in voxd's config)",
            );
        }
        let Some(name) = tool.get("name").and_then(Value::as_str).filter(|n| {
            !n.is_empty()
                && n.len() <= 64
                && n.chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        }) else {
            return bad(
                format!("tools[{i}].name"),
                "must be 1 to 64 letters, digits, _ or -",
            );
        };
        let parameters = tool
            .get("parameters")
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        if !parameters.is_object() {
            return bad(
                format!("tools[{i}].parameters"),
                "must be a JSON Schema object",
            );
        }
        specs.push(ClientTool {
            name: name.to_owned(),
            description: tool
                .get("description")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            parameters: parameters.to_string(),
        });
    }
    Ok((list.clone(), specs))
}

/// `output_modalities`: voxd always speaks, so the list must have `audio`.
fn check_modalities(m: Option<&Value>) -> Result<(), String> {
    match m {
        None | Some(Value::Null) => Ok(()),
        Some(Value::Array(list)) if list.iter().any(|m| m == "audio") => Ok(()),
        Some(_) => Err("voxd answers with audio (and its transcript): [\"audio\"]".into()),
    }
}

/// `tool_choice`: the model chooses (`auto`).
fn check_tool_choice(c: Option<&Value>) -> Result<(), String> {
    match c {
        None | Some(Value::Null) => Ok(()),
        Some(c) if c == "auto" => Ok(()),
        Some(_) => Err("voxd lets the model choose its tools: \"auto\" only".into()),
    }
}

/// A voice name.
fn voice(v: &Value) -> Result<String, String> {
    v.as_str()
        .filter(|v| !v.is_empty() && v.len() <= 64)
        .map(str::to_owned)
        .ok_or_else(|| "must be a voice name".to_owned())
}

/// A user audio message item, with its transcript once known.
fn user_audio_item(id: &str, transcript: Option<&str>) -> Value {
    json!({"id": id, "object": "realtime.item", "type": "message", "role": "user",
        "status": "completed", "content": [{"type": "input_audio", "transcript": transcript}]})
}

/// An assistant message item.
fn assistant_item(id: &str, status: &str, transcript: &str) -> Value {
    json!({"id": id, "object": "realtime.item", "type": "message", "role": "assistant",
        "status": status, "content": [{"type": "output_audio", "transcript": transcript}]})
}

fn format(f: &Value) -> Result<Format, String> {
    match f.get("type").and_then(Value::as_str) {
        Some("audio/pcm") => match f.get("rate").and_then(Value::as_u64) {
            None | Some(24_000) => Ok(Format::Pcm),
            Some(r) => Err(format!("audio/pcm is 24000 Hz; {r} is not supported")),
        },
        Some("audio/pcmu") => Ok(Format::G711(Law::Ulaw)),
        Some("audio/pcma") => Ok(Format::G711(Law::Alaw)),
        other => Err(format!(
            "{other:?} is not an audio format; use audio/pcm, audio/pcmu or audio/pcma"
        )),
    }
}

fn truncate(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(i, _)| &s[..i])
}

impl Codec for RealtimeCodec {
    fn output_rate(&self) -> Option<SampleRate> {
        Some(REALTIME_RATE)
    }

    /// A Realtime client stops its playback on `speech_started` and drops what it buffered.
    fn discards_on_pause(&self) -> bool {
        true
    }

    fn text_kind(&self, frame: &str) -> TextKind {
        if frame.contains(r#""input_audio_buffer.append""#) {
            // 3 bytes per 4 base64 characters, counted as PCM16 at 24 kHz (the limiter's rate):
            // a G.711 byte is a sample at 8 kHz, so 6 bytes of that.
            let bytes = frame.len() / 4 * 3;
            TextKind::Audio(match self.input_format {
                Format::Pcm => bytes,
                Format::G711(_) => bytes * 6,
            })
        } else if frame.contains(r#""conversation.item.create""#)
            && frame.contains(r#""input_audio""#)
        {
            TextKind::Recording
        } else {
            TextKind::Control
        }
    }

    fn hello(&mut self, hello: &Hello<'_>, out: &mut Vec<Frame>) {
        self.session_id = format!("sess_{}", hello.session_id);
        let session = self.session();
        self.send(out, "session.created", json!({"session": session}));
    }

    fn text(&mut self, frame: &str, out: &mut Vec<Frame>, input: &mut dyn FnMut(Input<'_>)) {
        // The hot path, some fifty times a second: an append, read without building a `Value`
        // (its base64 borrowed from the frame).
        if frame.contains(r#""input_audio_buffer.append""#) {
            if let Ok(a) = serde_json::from_str::<AppendEvent<'_>>(frame) {
                if a.ty == "input_audio_buffer.append" {
                    if let Some(audio) = &a.audio {
                        self.append(audio, a.event_id.as_deref(), out, input);
                        return;
                    }
                }
            }
        }
        match serde_json::from_str::<Value>(frame) {
            Ok(Value::Object(map)) => self.parse(&map, out, input),
            Ok(_) => self.error(
                out,
                "invalid_event",
                "an event is a JSON object with a \"type\"".into(),
                None,
                None,
            ),
            Err(e) => self.error(
                out,
                "invalid_json",
                format!("the event is not valid JSON ({e})"),
                None,
                None,
            ),
        }
    }

    fn binary(&mut self, _frame: &[u8], out: &mut Vec<Frame>, _input: &mut dyn FnMut(Input<'_>)) {
        self.error(
            out,
            "invalid_event",
            "the Realtime protocol is JSON text; send audio with input_audio_buffer.append".into(),
            None,
            None,
        );
    }

    fn event(&mut self, event: &Event, out: &mut Vec<Frame>) {
        match event {
            Event::SessionUpdated { .. } => {
                let session = self.session();
                self.send(out, "session.updated", json!({"session": session}));
            }
            Event::SpeechStarted { turn, at } => {
                if self.spoken.len() == SPOKEN_KEPT {
                    self.spoken.pop_front();
                }
                self.spoken.push_back(*turn);
                // With manual turns no VAD runs: a commit is a commit, as the API says it.
                if self.turn_detection.is_some() {
                    self.send(out, "input_audio_buffer.speech_started", json!({
                        "audio_start_ms": at.as_millis_f64() as u64, "item_id": format!("item_{}", turn.0)}));
                }
            }
            Event::SpeechStopped { turn, at, .. } => {
                if self.turn_detection.is_some() {
                    let item_id = format!("item_{}", turn.0);
                    self.send(
                        out,
                        "input_audio_buffer.speech_stopped",
                        json!({
                        "audio_end_ms": at.as_millis_f64() as u64, "item_id": item_id}),
                    );
                }
                self.commit_user_item(out, *turn);
            }
            Event::Transcript {
                turn,
                text,
                is_final,
            } => {
                if let Some(at) = self.audio_items.iter().position(|(t, _)| t == turn) {
                    if *is_final {
                        let (_, id) = self.audio_items.swap_remove(at);
                        self.transcribed(out, *turn, id, text);
                    }
                    return;
                }
                if !self.spoken.contains(turn) {
                    // A text message's turn: its item was told when it was created.
                    if let Some(p) = self.pending_user.pop_front() {
                        let id = p.item["id"].as_str().unwrap_or_default().to_owned();
                        self.remember(Item {
                            id,
                            turn: *turn,
                            kind: ItemKind::User,
                            json: p.item,
                        });
                    }
                    return;
                }
                let item_id = format!("item_{}", turn.0);
                if *is_final {
                    self.transcribed(out, *turn, item_id, text);
                } else if self.transcription.is_some() {
                    self.send(
                        out,
                        "conversation.item.input_audio_transcription.delta",
                        json!({
                        "item_id": item_id, "content_index": 0, "delta": text}),
                    );
                }
            }
            Event::ResponseText { turn, text } => {
                self.message(*turn, out);
                let Some(open) = &mut self.open else { return };
                let Some(m) = &mut open.message else {
                    return;
                };
                let delta = if m.transcript.is_empty() {
                    text.clone()
                } else {
                    format!(" {text}")
                };
                m.transcript.push_str(&delta);
                let v = json!({"response_id": open.id, "item_id": m.id,
                    "output_index": open.output.len(), "content_index": 0, "delta": delta});
                self.send(out, "response.output_audio_transcript.delta", v);
            }
            Event::AudioStart { turn, .. } => self.message(*turn, out),
            Event::ToolCall { turn, call, runs } => {
                if *runs != voxd_core::ToolRunner::Client {
                    return; // the server's own tools are not the client's business
                }
                self.response(*turn, out);
                self.end_message(out, "completed", None);
                let Some(open) = &mut self.open else { return };
                let item_id = format!("item_{}_f{}", turn.0, open.output.len());
                let output_index = open.output.len();
                let response_id = open.id.clone();
                let item = json!({"id": item_id, "object": "realtime.item", "type": "function_call",
                    "call_id": call.id, "name": call.name, "arguments": call.arguments, "status": "completed"});
                open.output.push(item.clone());
                let remembered = Item {
                    id: item_id.clone(),
                    turn: *turn,
                    kind: ItemKind::FunctionCall {
                        call_id: call.id.clone(),
                    },
                    json: item.clone(),
                };
                let mut added = item.clone();
                added["arguments"] = json!("");
                added["status"] = json!("in_progress");
                self.send(out, "response.output_item.added", json!({"response_id": response_id, "output_index": output_index, "item": added}));
                let at = |extra: Value| {
                    let mut v = json!({"response_id": response_id, "item_id": item_id, "output_index": output_index, "call_id": call.id});
                    if let (Value::Object(m), Value::Object(e)) = (&mut v, extra) {
                        m.extend(e);
                    }
                    v
                };
                let delta = at(json!({"delta": call.arguments}));
                let done = at(json!({"arguments": call.arguments, "name": call.name}));
                self.send(out, "response.function_call_arguments.delta", delta);
                self.send(out, "response.function_call_arguments.done", done);
                self.send(
                    out,
                    "response.output_item.done",
                    json!({"response_id": response_id, "output_index": output_index, "item": item}),
                );
                self.remember(remembered);
                // The protocol's response ends at a function call; the turn goes on once the
                // client answers.
                self.end_response(out, "completed", json!({"type": "completed"}));
                self.absorb_create = true;
            }
            Event::Interrupted {
                turn,
                played_ms,
                heard_text,
            } => {
                if let Some(open) = self.open.as_ref().filter(|o| o.turn == *turn) {
                    if let Some(m) = &open.message {
                        // The turn's audio up to `played_ms`, from where the item's began.
                        let start_ms = m.audio_start.unwrap_or(m.audio_end) / SAMPLES_PER_MS;
                        let end_ms = (*played_ms as u64).saturating_sub(start_ms);
                        let v =
                            json!({"item_id": m.id, "content_index": 0, "audio_end_ms": end_ms});
                        self.send(out, "conversation.item.truncated", v);
                    }
                }
                self.end_message(out, "incomplete", Some(heard_text));
            }
            Event::ResponseDone { turn, status, .. } => {
                self.response(*turn, out);
                let reason = if std::mem::take(&mut self.cancelled) {
                    "client_cancelled"
                } else {
                    "turn_detected"
                };
                match status {
                    ResponseStatus::Completed => {
                        self.end_message(out, "completed", None);
                        self.end_response(out, "completed", json!({"type": "completed"}));
                    }
                    ResponseStatus::Interrupted => {
                        self.end_message(out, "incomplete", None);
                        self.end_response(
                            out,
                            "cancelled",
                            json!({"type": "cancelled", "reason": reason}),
                        );
                    }
                    ResponseStatus::Failed => {
                        self.end_message(out, "incomplete", None);
                        self.end_response(out, "failed", json!({"type": "failed", "error": {"type": "server_error", "code": "provider_failed"}}));
                    }
                }
                self.parts.remove(turn);
                self.spoken.retain(|t| t != turn);
                self.absorb_create = false;
            }
            Event::ProviderError { stage, failure, .. } => {
                let v = json!({"error": {"type": "server_error", "code": format!("{}_failed", stage.as_str()),
                    "message": format!("{} provider {:?}: {}", stage.as_str(), failure.provider, failure.message)}});
                self.send(out, "error", v);
            }
            Event::Truncated {
                turn: _,
                played_ms,
                heard_text,
            } => {
                let Some(edit) = self.pending_edit.take() else {
                    return;
                };
                let end_ms = (*played_ms as u64).saturating_sub(edit.audio_start / SAMPLES_PER_MS);
                if let Some(item) = self.items.iter_mut().rev().find(|i| i.id == edit.item_id) {
                    item.json["content"][0]["transcript"] = json!(heard_text);
                }
                self.send(
                    out,
                    "conversation.item.truncated",
                    json!({"item_id": edit.item_id, "content_index": 0, "audio_end_ms": end_ms}),
                );
            }
            Event::Deleted { part, .. } => {
                let Some(edit) = self.pending_edit.take() else {
                    return;
                };
                // A tool round goes whole: the call and its output.
                let mut gone = vec![edit.item_id];
                if let HistoryPart::ToolRound { call_id } = part {
                    gone.extend(self.items.iter().filter(|i| {
                        matches!(&i.kind, ItemKind::FunctionCall { call_id: c } | ItemKind::FunctionCallOutput { call_id: c } if c == call_id)
                            && !gone.contains(&i.id)
                    }).map(|i| i.id.clone()).collect::<Vec<_>>());
                }
                self.items.retain(|i| !gone.contains(&i.id));
                for item_id in gone {
                    self.send(
                        out,
                        "conversation.item.deleted",
                        json!({"item_id": item_id}),
                    );
                }
            }
            Event::Rejected(Rejection::NotInHistory { .. } | Rejection::InProgress { .. })
                if self.pending_edit.is_some() =>
            {
                let Some(edit) = self.pending_edit.take() else {
                    return;
                };
                let (code, message) = match event {
                    Event::Rejected(Rejection::InProgress { .. }) => ("item_in_progress", format!("item {:?} belongs to the response in progress; cancel it first (response.cancel)", edit.item_id)),
                    _ => ("item_not_in_conversation", format!("item {:?} has nothing left in the conversation to change (voxd truncates only the last answer once it ended)", edit.item_id)),
                };
                self.error(
                    out,
                    code,
                    message,
                    Some("item_id"),
                    edit.event_id.as_deref(),
                );
            }
            Event::Rejected(Rejection::TranscriptionsBusy { max }) => {
                let event_id = self.pending_audio.pop_front().and_then(|p| p.event_id);
                self.error(
                    out,
                    "too_many_audio_messages",
                    format!(
                        "{max} audio messages are still being transcribed; send this one again \
                         once their transcripts have come"
                    ),
                    Some("item"),
                    event_id.as_deref(),
                );
            }
            Event::Rejected(r) => {
                let (code, message) = match r {
                    Rejection::UnknownCall { call_id } => (
                        "unknown_call_id",
                        format!("no function call has call_id {call_id:?}"),
                    ),
                    Rejection::LateResult { call_id } => (
                        "late_function_call_output",
                        format!("call {call_id:?} timed out or its response ended"),
                    ),
                    Rejection::AlreadyAnswered { call_id } => (
                        "duplicate_function_call_output",
                        format!("call {call_id:?} was already answered"),
                    ),
                    Rejection::ServerCall { call_id } => (
                        "not_a_client_call",
                        format!("call {call_id:?} is run by the server"),
                    ),
                    Rejection::ToolNameClash { index, name } => (
                        "invalid_value",
                        format!("tools[{index}].name {name:?} is one of the server's tools"),
                    ),
                    Rejection::NotInHistory { turn } | Rejection::InProgress { turn } => {
                        ("invalid_value", format!("turn {turn}: nothing to change"))
                    }
                    Rejection::TranscriptionsBusy { max } => (
                        "too_many_audio_messages",
                        format!("{max} audio messages are still being transcribed"),
                    ),
                };
                self.error(out, code, message, None, None);
            }
            Event::AudioMessage { turn, .. } => {
                let Some(p) = self.pending_audio.pop_front() else {
                    return;
                };
                let item = user_audio_item(&p.id, None);
                self.send(out, "conversation.item.added", json!({"item": item}));
                self.remember(Item {
                    id: p.id.clone(),
                    turn: *turn,
                    kind: ItemKind::User,
                    json: item,
                });
                self.audio_items.push((*turn, p.id));
            }
            Event::IdleTimeout { turn, since, at } => {
                // The silence is committed as an empty user audio item, and answered.
                let item_id = format!("item_{}", turn.0);
                self.send(
                    out,
                    "input_audio_buffer.timeout_triggered",
                    json!({"audio_start_ms": since.as_millis_f64() as u64,
                        "audio_end_ms": at.as_millis_f64() as u64, "item_id": item_id}),
                );
                let item_id = self.commit_user_item(out, *turn);
                self.transcribed(out, *turn, item_id, "");
            }
            Event::PlaybackPaused { .. }
            | Event::Rewound { .. }
            | Event::PlaybackResumed { .. }
            | Event::FalseAlarm { .. }
            | Event::ToolResult { .. } => {}
        }
    }

    fn audio(&mut self, turn: TurnId, at: u64, pcm: Bytes, out: &mut Vec<Frame>) {
        self.message(turn, out);
        if let Some(m) = self.open.as_mut().and_then(|o| o.message.as_mut()) {
            m.audio_start.get_or_insert(at);
            m.audio_end = at + pcm.len() as u64 / 2;
        }
        self.b64.clear();
        match self.output_format {
            Format::Pcm => B64.encode_string(&pcm, &mut self.b64),
            Format::G711(law) => {
                let samples: Vec<i16> = pcm
                    .chunks_exact(2)
                    .map(|b| i16::from_le_bytes([b[0], b[1]]))
                    .collect();
                self.down_buf.clear();
                if let Some(down) = &mut self.down {
                    down.process(&samples, &mut self.down_buf);
                }
                self.encoded.clear();
                law.encode(&self.down_buf, &mut self.encoded);
                B64.encode_string(&self.encoded, &mut self.b64);
            }
        }
        let Some(open) = &self.open else { return };
        let Some(m) = &open.message else {
            return;
        };
        let v = json!({"response_id": open.id, "item_id": m.id, "output_index": open.output.len(),
            "content_index": 0, "delta": self.b64});
        self.send(out, "response.output_audio.delta", v);
    }

    fn notice(&mut self, notice: Notice<'_>, out: &mut Vec<Frame>) {
        match notice {
            Notice::Shutdown { deadline_ms } => {
                let v = json!({"error": {"type": "server_error", "code": "shutdown",
                    "message": format!("the server is draining; this session closes once its response is done, in {deadline_ms} ms at the latest")}});
                self.send(out, "error", v);
            }
            Notice::Error { code, message } => {
                let v = json!({"error": {"type": "invalid_request_error", "code": code, "message": message}});
                self.send(out, "error", v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use voxd_core::{Time, Timings, ToolCall, ToolRunner};

    fn codec() -> RealtimeCodec {
        let mut c = RealtimeCodec::new("gpt-realtime".into());
        let mut out = Vec::new();
        c.hello(
            &Hello {
                session_id: "s1",
                output_rate: REALTIME_RATE,
                server_vad: true,
                resume_token: None,
                resumed: false,
            },
            &mut out,
        );
        assert_eq!(types(&out), ["session.created"]);
        c
    }

    fn values(out: &[Frame]) -> Vec<Value> {
        out.iter()
            .map(|f| match f {
                Frame::Text(t) => serde_json::from_str(t).unwrap(),
                Frame::Binary(_) => panic!("binary"),
            })
            .collect()
    }

    fn types(out: &[Frame]) -> Vec<String> {
        values(out)
            .iter()
            .map(|v| v["type"].as_str().unwrap().to_owned())
            .collect()
    }

    fn send(c: &mut RealtimeCodec, v: Value) -> (Vec<Frame>, Vec<String>) {
        let mut out = Vec::new();
        let mut inputs = Vec::new();
        c.text(&v.to_string(), &mut out, &mut |i| {
            inputs.push(format!("{i:?}"))
        });
        (out, inputs)
    }

    #[test]
    fn session_update_is_checked_whole_and_errors_name_the_param_and_the_event() {
        let mut c = codec();
        let (out, inputs) = send(
            &mut c,
            json!({"type": "session.update", "event_id": "e1", "session": {"type": "realtime",
                "instructions": "Be brief.",
                "tools": [{"type": "function", "name": "a b"}]}}),
        );
        let e = &values(&out)[0];
        assert_eq!(e["error"]["param"], "session.tools[0].name");
        assert_eq!(e["error"]["event_id"], "e1");
        assert!(inputs.is_empty());
        assert!(c.instructions.is_none(), "nothing applied");

        let (out, inputs) = send(
            &mut c,
            json!({"type": "session.update", "session": {"type": "realtime", "instructions": "Be brief.",
                "tools": [{"type": "function", "name": "open_door", "parameters": {"type": "object"}}],
                "audio": {"input": {"turn_detection": null, "format": {"type": "audio/pcmu"}}}}}),
        );
        assert!(out.is_empty());
        assert_eq!(inputs.len(), 1);
        assert!(inputs[0].contains("open_door"), "{inputs:?}");
        assert_eq!(c.input_format, Format::G711(Law::Ulaw));
        // Manual turns: appends fill the buffer, a commit makes it the user's turn.
        let (_, inputs) = send(
            &mut c,
            json!({"type": "input_audio_buffer.append", "audio": B64.encode([0xFFu8; 160])}),
        );
        assert!(inputs.is_empty());
        let (_, inputs) = send(&mut c, json!({"type": "input_audio_buffer.commit"}));
        assert_eq!(inputs.len(), 3);
        assert_eq!(
            (inputs[0].as_str(), inputs[2].as_str()),
            ("SpeechStart", "SpeechEnd")
        );
        assert!(inputs[1].starts_with("Audio("));
        let (out, inputs) = send(
            &mut c,
            json!({"type": "input_audio_buffer.commit", "event_id": "e2"}),
        );
        assert!(inputs.is_empty());
        assert_eq!(
            values(&out)[0]["error"]["code"],
            "input_audio_buffer_commit_empty"
        );

        let (out, _) = send(&mut c, json!({"type": "dance", "event_id": "e9"}));
        let e = &values(&out)[0];
        assert_eq!(
            (&e["error"]["code"], &e["error"]["event_id"]),
            (&json!("invalid_event"), &json!("e9"))
        );
    }

    #[test]
    fn a_turn_is_a_response_with_one_audio_message_and_a_function_call_ends_one() {
        let mut c = codec();
        let turn = TurnId(1);
        let mut out = Vec::new();
        c.event(
            &Event::ResponseText {
                turn,
                text: "Hello.".into(),
            },
            &mut out,
        );
        c.audio(turn, 0, Bytes::from_static(&[1, 0, 2, 0]), &mut out);
        c.event(
            &Event::ToolCall {
                turn,
                call: ToolCall {
                    id: "call_1".into(),
                    name: "open_door".into(),
                    arguments: "{}".into(),
                },
                runs: ToolRunner::Client,
            },
            &mut out,
        );
        assert_eq!(
            types(&out),
            [
                "response.created",
                "response.output_item.added",
                "response.content_part.added",
                "response.output_audio_transcript.delta",
                "response.output_audio.delta",
                "response.output_audio.done",
                "response.output_audio_transcript.done",
                "response.content_part.done",
                "response.output_item.done",
                "response.output_item.added",
                "response.function_call_arguments.delta",
                "response.function_call_arguments.done",
                "response.output_item.done",
                "response.done",
            ]
        );
        let v = values(&out);
        assert_eq!(v[4]["delta"], B64.encode([1u8, 0, 2, 0]));
        assert_eq!(v[13]["response"]["output"].as_array().unwrap().len(), 2);
        // The client's response.create after its output is what the turn does anyway.
        let (_, inputs) = send(&mut c, json!({"type": "response.create"}));
        assert!(inputs.is_empty());
        out.clear();
        c.event(
            &Event::ResponseText {
                turn,
                text: "Opened.".into(),
            },
            &mut out,
        );
        let v = values(&out);
        assert_eq!(v[0]["response"]["id"], "resp_1_2");
        out.clear();
        c.event(
            &Event::Interrupted {
                turn,
                played_ms: 120.0,
                heard_text: "Op".into(),
            },
            &mut out,
        );
        c.event(
            &Event::ResponseDone {
                turn,
                status: ResponseStatus::Interrupted,
                audio_ms: 120.0,
                timings: Timings::default(),
                reason: None,
            },
            &mut out,
        );
        let v = values(&out);
        assert_eq!(v[0]["type"], "conversation.item.truncated");
        assert_eq!(v[0]["audio_end_ms"], 120);
        let done = v.last().unwrap();
        assert_eq!(done["response"]["status"], "cancelled");
        assert_eq!(
            done["response"]["status_details"]["reason"],
            "turn_detected"
        );
        let transcript = v
            .iter()
            .find(|e| e["type"] == "response.output_audio_transcript.done")
            .unwrap();
        assert_eq!(
            transcript["transcript"], "Op",
            "truncated to what was heard"
        );
    }

    #[test]
    fn items_are_truncated_on_the_turns_audio_and_a_tool_round_is_deleted_whole() {
        let mut c = codec();
        let turn = TurnId(3);
        let mut out = Vec::new();
        // A message whose audio begins 4800 samples (200 ms) into the turn's.
        c.event(
            &Event::ToolCall {
                turn,
                call: ToolCall {
                    id: "call_9".into(),
                    name: "open_door".into(),
                    arguments: "{}".into(),
                },
                runs: ToolRunner::Client,
            },
            &mut out,
        );
        c.audio(turn, 4800, Bytes::from(vec![0u8; 960 * 2]), &mut out);
        let message = c
            .open
            .as_ref()
            .unwrap()
            .message
            .as_ref()
            .unwrap()
            .id
            .clone();
        let (out, inputs) = send(
            &mut c,
            json!({"type": "conversation.item.truncate", "item_id": message, "content_index": 0, "audio_end_ms": 20}),
        );
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(
            inputs,
            [format!(
                "{:?}",
                Input::Truncate {
                    turn,
                    samples: 4800 + 20 * 24
                }
            )]
        );
        let (out, inputs) = send(
            &mut c,
            json!({"type": "conversation.item.truncate", "item_id": message, "audio_end_ms": 41, "event_id": "e5"}),
        );
        assert!(inputs.is_empty());
        let e = &values(&out)[0]["error"];
        assert_eq!(
            (&e["param"], &e["event_id"]),
            (&json!("audio_end_ms"), &json!("e5"))
        );
        let mut out = Vec::new();
        c.event(
            &Event::Truncated {
                turn,
                played_ms: 220.0,
                heard_text: "Op".into(),
            },
            &mut out,
        );
        assert_eq!(values(&out)[0]["audio_end_ms"], 20);

        // The call's output, then a deletion of the call: both items go.
        send(
            &mut c,
            json!({"type": "conversation.item.create", "item": {"type": "function_call_output", "id": "out_1", "call_id": "call_9", "output": "{}"}}),
        );
        let (_, inputs) = send(
            &mut c,
            json!({"type": "conversation.item.delete", "item_id": "out_1"}),
        );
        assert_eq!(
            inputs,
            [format!(
                "{:?}",
                Input::Delete {
                    turn,
                    part: HistoryPart::ToolRound {
                        call_id: "call_9".into()
                    }
                }
            )]
        );
        let mut out = Vec::new();
        c.event(
            &Event::Deleted {
                turn,
                part: HistoryPart::ToolRound {
                    call_id: "call_9".into(),
                },
            },
            &mut out,
        );
        let deleted: Vec<Value> = values(&out).iter().map(|v| v["item_id"].clone()).collect();
        assert_eq!(deleted, [json!("out_1"), json!("item_3_f0")]);
        let (out, _) = send(
            &mut c,
            json!({"type": "conversation.item.retrieve", "item_id": "item_3_f0"}),
        );
        assert_eq!(values(&out)[0]["error"]["code"], "item_not_found");
    }

    fn event(c: &mut RealtimeCodec, e: &Event) -> Vec<Value> {
        let mut out = Vec::new();
        c.event(e, &mut out);
        values(&out)
    }

    #[test]
    fn turn_detection_sets_who_answers_and_interrupts_and_the_idle_timeout() {
        let mut c = codec();
        let (out, inputs) = send(
            &mut c,
            json!({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
                "turn_detection": {"type": "server_vad", "create_response": false,
                    "interrupt_response": false, "idle_timeout_ms": 6000}}}}}),
        );
        assert_eq!(inputs.len(), 1, "{out:?}");
        assert!(
            inputs[0].contains("answer_turns: Some(false), interrupt_on_speech: Some(false), idle_timeout: Some(Some(6s))"),
            "{}",
            inputs[0]
        );
        let v = event(
            &mut c,
            &Event::SessionUpdated {
                instructions: String::new(),
                min_interruption: Duration::ZERO,
                false_interruption_timeout: Duration::ZERO,
                backchannels: Vec::new(),
                history_messages: 0,
                tools: Arc::from([]),
                voice: None,
                language: None,
                answer_turns: false,
                interrupt_on_speech: false,
                idle_timeout: None,
            },
        );
        let td = &v[0]["session"]["audio"]["input"]["turn_detection"];
        assert_eq!(
            (
                &td["create_response"],
                &td["interrupt_response"],
                &td["idle_timeout_ms"]
            ),
            (&json!(false), &json!(false), &json!(6000))
        );
        // Manual turns: the client commits, asks for answers and cancels them itself.
        let (_, inputs) = send(
            &mut c,
            json!({"type": "session.update", "session": {"type": "realtime", "audio": {"input": {
                "turn_detection": null}}}}),
        );
        assert!(
            inputs[0].contains("answer_turns: Some(false), interrupt_on_speech: Some(false), idle_timeout: Some(None)"),
            "{}",
            inputs[0]
        );
        for (td, param) in [
            (
                json!({"type": "semantic_vad", "idle_timeout_ms": 6000}),
                "idle_timeout_ms",
            ),
            (
                json!({"type": "server_vad", "idle_timeout_ms": 10}),
                "idle_timeout_ms",
            ),
            (
                json!({"type": "server_vad", "create_response": "no"}),
                "create_response",
            ),
        ] {
            let (out, inputs) = send(
                &mut c,
                json!({"type": "session.update", "session": {"type": "realtime",
                    "audio": {"input": {"turn_detection": td}}}}),
            );
            assert!(inputs.is_empty());
            assert_eq!(
                values(&out)[0]["error"]["param"],
                format!("session.audio.input.turn_detection.{param}")
            );
        }
    }

    #[test]
    fn an_audio_item_is_transcribed_into_the_conversation_under_the_clients_id() {
        let mut c = codec();
        let pcm = B64.encode(vec![0u8; 4800]); // 100 ms at 24 kHz
        let (out, inputs) = send(
            &mut c,
            json!({"type": "conversation.item.create", "event_id": "e1", "item": {
                "id": "mine", "type": "message", "role": "user",
                "content": [{"type": "input_audio", "audio": pcm}]}}),
        );
        assert!(out.is_empty(), "told once the session takes it");
        assert_eq!(inputs.len(), 1);
        assert!(inputs[0].starts_with("UserAudio(["), "{}", inputs[0]);
        let v = event(
            &mut c,
            &Event::AudioMessage {
                turn: TurnId(4),
                duration: Duration::from_millis(100),
            },
        );
        assert_eq!(v[0]["type"], "conversation.item.added");
        assert_eq!(v[0]["item"]["id"], "mine");
        assert_eq!(v[0]["item"]["content"][0]["type"], "input_audio");
        let v = event(
            &mut c,
            &Event::Transcript {
                turn: TurnId(4),
                text: "hello there".into(),
                is_final: true,
            },
        );
        let t: Vec<_> = v.iter().map(|v| v["type"].as_str().unwrap()).collect();
        assert_eq!(
            t,
            [
                "conversation.item.input_audio_transcription.completed",
                "conversation.item.done"
            ]
        );
        assert_eq!(v[0]["item_id"], "mine");
        assert_eq!(v[1]["item"]["content"][0]["transcript"], "hello there");
        let (out, _) = send(
            &mut c,
            json!({"type": "conversation.item.retrieve", "item_id": "mine"}),
        );
        assert_eq!(
            values(&out)[0]["item"]["content"][0]["transcript"],
            "hello there"
        );

        // Refused: audio and text together, bad base64, an assistant's audio; too many waiting.
        for (content, role, param) in [
            (
                json!([{"type": "input_audio", "audio": pcm}, {"type": "input_text", "text": "hi"}]),
                "user",
                "item.content[1]",
            ),
            (
                json!([{"type": "input_audio", "audio": "%%"}]),
                "user",
                "item.content[0].audio",
            ),
            (
                json!([{"type": "input_audio", "audio": pcm}]),
                "assistant",
                "item.role",
            ),
        ] {
            let (out, inputs) = send(
                &mut c,
                json!({"type": "conversation.item.create", "item": {
                    "type": "message", "role": role, "content": content}}),
            );
            assert!(inputs.is_empty());
            assert_eq!(values(&out)[0]["error"]["param"], param);
        }
        send(
            &mut c,
            json!({"type": "conversation.item.create", "event_id": "e9", "item": {
                "type": "message", "role": "user", "content": [{"type": "input_audio", "audio": pcm}]}}),
        );
        let v = event(
            &mut c,
            &Event::Rejected(Rejection::TranscriptionsBusy { max: 8 }),
        );
        assert_eq!(v[0]["error"]["code"], "too_many_audio_messages");
        assert_eq!(v[0]["error"]["event_id"], "e9");
    }

    #[test]
    fn an_idle_timeout_commits_the_silence_as_an_item() {
        let mut c = codec();
        let v = event(
            &mut c,
            &Event::IdleTimeout {
                turn: TurnId(7),
                since: Time::ZERO + Duration::from_secs(3),
                at: Time::ZERO + Duration::from_secs(9),
            },
        );
        let t: Vec<_> = v.iter().map(|v| v["type"].as_str().unwrap()).collect();
        assert_eq!(
            t,
            [
                "input_audio_buffer.timeout_triggered",
                "input_audio_buffer.committed",
                "conversation.item.added",
                "conversation.item.input_audio_transcription.completed",
                "conversation.item.done"
            ]
        );
        assert_eq!(
            (
                &v[0]["audio_start_ms"],
                &v[0]["audio_end_ms"],
                &v[0]["item_id"]
            ),
            (&json!(3000), &json!(9000), &json!("item_7"))
        );
    }

    #[test]
    fn one_response_at_a_time_and_a_manual_commit_is_no_speech_event() {
        let mut c = codec();
        event(
            &mut c,
            &Event::ResponseText {
                turn: TurnId(1),
                text: "Once upon a time.".into(),
            },
        );
        let (out, inputs) = send(&mut c, json!({"type": "response.create", "event_id": "e5"}));
        assert!(inputs.is_empty());
        let e = &values(&out)[0]["error"];
        assert_eq!(
            (&e["code"], &e["event_id"]),
            (
                &json!("conversation_already_has_active_response"),
                &json!("e5")
            )
        );
        event(
            &mut c,
            &Event::ResponseDone {
                turn: TurnId(1),
                status: ResponseStatus::Completed,
                audio_ms: 0.0,
                timings: Timings::default(),
                reason: None,
            },
        );
        let (_, inputs) = send(&mut c, json!({"type": "response.create"}));
        assert_eq!(inputs.len(), 1);

        // Manual turns: a commit is committed, with no VAD events.
        send(
            &mut c,
            json!({"type": "session.update", "session": {"type": "realtime",
                "audio": {"input": {"turn_detection": null}}}}),
        );
        let mut v = event(
            &mut c,
            &Event::SpeechStarted {
                turn: TurnId(2),
                at: Time::ZERO,
            },
        );
        v.extend(event(
            &mut c,
            &Event::SpeechStopped {
                turn: TurnId(2),
                at: Time::ZERO,
                duration: Duration::from_secs(1),
            },
        ));
        let t: Vec<_> = v.iter().map(|v| v["type"].as_str().unwrap()).collect();
        assert_eq!(
            t,
            ["input_audio_buffer.committed", "conversation.item.added"]
        );
    }
}
