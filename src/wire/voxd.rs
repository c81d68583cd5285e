//! The /ws protocol, version 1: parsing client messages and encoding server messages.
//!
//! This is the only place that knows the JSON framing. Every client mistake maps to a
//! `ProtocolError` with a stable `code` and a message that says what was expected; it never
//! ends the session. See docs/protocol.md for the full specification.

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;
use voxd_core::{
    ChatMessage, ClientTool, Event, Rejection, SampleRate, SessionUpdate, Timings, TurnId,
};

use super::{AudioIn, Codec, Frame, Hello, Input, Notice};

#[cfg(any(test, feature = "fuzzing"))]
pub(super) mod fuzz;

/// The protocol version announced in `ready`.
pub(crate) const PROTOCOL_VERSION: u32 = 1;

/// A message from the client.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientMessage {
    /// The client's VAD heard the user start.
    SpeechStart,
    /// The client's VAD heard the user stop.
    SpeechEnd,
    /// A user turn as text.
    Text(String),
    /// Answered by `pong` with the same id.
    Ping(Option<Value>),
    /// Speak these words verbatim as a bot turn.
    Say(String),
    /// Reply now from the history as it stands.
    Respond,
    /// Stop the response in progress.
    Cancel,
    /// Change the session's settings.
    SessionUpdate(SessionUpdate),
    /// The answer to a client-side tool's `tool_call`.
    ToolResult {
        /// The call's id.
        call_id: String,
        /// The result as JSON text (a JSON string is passed as the text it holds).
        result: String,
    },
}

/// A client mistake, answered with a non-fatal `error` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    /// Stable, machine-readable code.
    pub code: &'static str,
    /// What was wrong and what is expected.
    pub message: String,
}

impl ProtocolError {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        ProtocolError {
            code,
            message: message.into(),
        }
    }
}

const TYPES: &str =
    "speech_start, speech_end, text, say, respond, cancel, session_update, tool_result, ping";

/// What a `session_update` may hold, and its bounds.
const UPDATE_FIELDS: &str = "instructions, voice, language, tools, turn, history, greeting";
const TOOL_FIELDS: &str = "name, description, parameters";
const MAX_TOOLS: usize = 32;
const MAX_TOOL_DESCRIPTION_CHARS: usize = 2_000;
/// A tool's `parameters` schema, as JSON text.
const MAX_TOOL_SCHEMA_BYTES: usize = 16 * 1024;
/// A `tool_result`'s `result`, as JSON text.
pub(crate) const MAX_TOOL_RESULT_BYTES: usize = 64 * 1024;
const MAX_CALL_ID_CHARS: usize = 128;
const MAX_VOICE_CHARS: usize = 64;
const MAX_LANGUAGE_CHARS: usize = 16;
const TURN_FIELDS: &str = "min_interruption_ms, false_interruption_timeout_ms, backchannels, \
     answer_turns, interrupt_on_speech, idle_timeout_ms";
const MAX_INSTRUCTIONS_CHARS: usize = 16_000;
const MAX_HISTORY_MESSAGES: usize = 200;
const MAX_BACKCHANNELS: usize = 64;
const MAX_BACKCHANNEL_CHARS: usize = 64;

/// Parses a text frame.
///
/// # Errors
/// `invalid_json`, `invalid_message` (not an object), `missing_type`, `unknown_type` or
/// `invalid_field`, each with a message naming what was expected.
pub fn parse_client(text: &str) -> Result<ClientMessage, ProtocolError> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        ProtocolError::new(
            "invalid_json",
            format!("text frames must be JSON objects with a \"type\"; this one is not valid JSON ({e})"),
        )
    })?;
    let Value::Object(map) = value else {
        return Err(ProtocolError::new(
            "invalid_message",
            "text frames must be JSON objects with a \"type\"",
        ));
    };
    let ty = match map.get("type") {
        None => {
            return Err(ProtocolError::new(
                "missing_type",
                format!("the message has no \"type\"; expected one of: {TYPES}"),
            ))
        }
        Some(Value::String(s)) => s.as_str(),
        Some(other) => {
            return Err(ProtocolError::new(
                "invalid_field",
                format!("\"type\" must be a string, got {}", kind(other)),
            ))
        }
    };
    match ty {
        "speech_start" => Ok(ClientMessage::SpeechStart),
        "speech_end" => Ok(ClientMessage::SpeechEnd),
        "ping" => Ok(ClientMessage::Ping(map.get("id").cloned())),
        "text" => text_field(&map, "text").map(ClientMessage::Text),
        "say" => text_field(&map, "say").map(ClientMessage::Say),
        "respond" => Ok(ClientMessage::Respond),
        "cancel" => Ok(ClientMessage::Cancel),
        "session_update" => session_update(&map).map(ClientMessage::SessionUpdate),
        "tool_result" => tool_result(&map),
        other => Err(ProtocolError::new(
            "unknown_type",
            format!(
                "unknown message type {:?}; expected one of: {TYPES}",
                truncate(other, 64)
            ),
        )),
    }
}

fn invalid(message: String) -> ProtocolError {
    ProtocolError::new("invalid_field", message)
}

/// A `session_update`, checked: every field known, in range and bounded. Nothing is applied
/// when one field is wrong.
fn session_update(map: &serde_json::Map<String, Value>) -> Result<SessionUpdate, ProtocolError> {
    let mut u = SessionUpdate::default();
    for (key, value) in map {
        match key.as_str() {
            "type" => {}
            "instructions" => {
                let s = value.as_str().ok_or_else(|| {
                    invalid(format!(
                        "\"instructions\" must be a string, got {}",
                        kind(value)
                    ))
                })?;
                if s.chars().count() > MAX_INSTRUCTIONS_CHARS {
                    return Err(invalid(format!(
                        "\"instructions\" is longer than {MAX_INSTRUCTIONS_CHARS} characters"
                    )));
                }
                u.instructions = Some(s.to_owned());
            }
            "voice" => {
                u.voice = Some(token(value, "voice", MAX_VOICE_CHARS, |c| {
                    c.is_ascii_alphanumeric() || "_-.+:".contains(c)
                })?);
            }
            "language" => {
                u.language = Some(token(value, "language", MAX_LANGUAGE_CHARS, |c| {
                    c.is_ascii_alphanumeric() || c == '-' || c == '_'
                })?);
            }
            "tools" => u.tools = Some(tools(value)?),
            "greeting" => match value {
                Value::String(s) if !s.trim().is_empty() => u.greeting = Some(s.clone()),
                _ => return Err(invalid("\"greeting\" must be a non-empty string".into())),
            },
            "turn" => {
                let Value::Object(turn) = value else {
                    return Err(invalid(format!(
                        "\"turn\" must be an object, got {}",
                        kind(value)
                    )));
                };
                for (k, v) in turn {
                    let ms = |max: u64| -> Result<std::time::Duration, ProtocolError> {
                        v.as_u64()
                            .filter(|&n| (1..=max).contains(&n))
                            .map(std::time::Duration::from_millis)
                            .ok_or_else(|| {
                                invalid(format!("\"turn.{k}\" must be an integer from 1 to {max}"))
                            })
                    };
                    match k.as_str() {
                        "min_interruption_ms" => u.min_interruption = Some(ms(10_000)?),
                        "false_interruption_timeout_ms" => {
                            u.false_interruption_timeout = Some(ms(60_000)?);
                        }
                        "answer_turns" | "interrupt_on_speech" => {
                            let b = v.as_bool().ok_or_else(|| {
                                invalid(format!("\"turn.{k}\" must be true or false"))
                            })?;
                            if k == "answer_turns" {
                                u.answer_turns = Some(b);
                            } else {
                                u.interrupt_on_speech = Some(b);
                            }
                        }
                        "idle_timeout_ms" => {
                            u.idle_timeout = Some(if v.is_null() {
                                None
                            } else {
                                let range = super::IDLE_TIMEOUT_MS;
                                let n =
                                    v.as_u64().filter(|n| range.contains(n)).ok_or_else(|| {
                                        invalid(format!(
                                            "\"turn.idle_timeout_ms\" must be null or an integer \
                                         from {} to {}",
                                            range.start(),
                                            range.end()
                                        ))
                                    })?;
                                Some(std::time::Duration::from_millis(n))
                            });
                        }
                        "backchannels" => {
                            let words = v
                                .as_array()
                                .filter(|a| a.len() <= MAX_BACKCHANNELS)
                                .and_then(|a| {
                                    a.iter()
                                        .map(|w| {
                                            w.as_str()
                                                .filter(|w| {
                                                    w.chars().count() <= MAX_BACKCHANNEL_CHARS
                                                })
                                                .map(|w| w.trim().to_lowercase())
                                        })
                                        .collect::<Option<Vec<String>>>()
                                })
                                .ok_or_else(|| {
                                    invalid(format!(
                                        "\"turn.backchannels\" must be an array of at most \
                                         {MAX_BACKCHANNELS} strings of at most \
                                         {MAX_BACKCHANNEL_CHARS} characters"
                                    ))
                                })?;
                            u.backchannels =
                                Some(words.into_iter().filter(|w| !w.is_empty()).collect());
                        }
                        other => {
                            return Err(invalid(format!(
                                "unknown field \"turn.{}\"; expected: {TURN_FIELDS}",
                                truncate(other, 64)
                            )))
                        }
                    }
                }
            }
            "history" => {
                let items = value
                    .as_array()
                    .filter(|a| a.len() <= MAX_HISTORY_MESSAGES)
                    .ok_or_else(|| {
                        invalid(format!(
                            "\"history\" must be an array of at most {MAX_HISTORY_MESSAGES} messages"
                        ))
                    })?;
                let mut messages = Vec::with_capacity(items.len());
                for (i, m) in items.iter().enumerate() {
                    let role = m.get("role").and_then(Value::as_str);
                    let content = m.get("content").and_then(Value::as_str);
                    messages.push(match (role, content) {
                        (Some("user"), Some(c)) => ChatMessage::User(c.to_owned()),
                        (Some("assistant"), Some(c)) => ChatMessage::Assistant {
                            text: c.to_owned(),
                            tool_calls: Vec::new(),
                        },
                        _ => {
                            return Err(invalid(format!(
                                "\"history[{i}]\" must be {{\"role\": \"user\" or \"assistant\", \"content\": a string}}"
                            )))
                        }
                    });
                }
                u.history = Some(messages);
            }
            other => {
                return Err(invalid(format!(
                    "unknown field {:?} in session_update; expected: {UPDATE_FIELDS}",
                    truncate(other, 64)
                )))
            }
        }
    }
    Ok(u)
}

/// A short identifier-like string (a voice, a language code): non-empty, at most `max`
/// characters, each one that `allowed` accepts.
fn token(
    value: &Value,
    field: &str,
    max: usize,
    allowed: impl Fn(char) -> bool,
) -> Result<String, ProtocolError> {
    match value.as_str() {
        Some(s) if !s.is_empty() && s.chars().count() <= max && s.chars().all(allowed) => {
            Ok(s.to_owned())
        }
        _ => Err(invalid(format!(
            "\"{field}\" must be a non-empty string of at most {max} letters, digits and \
             punctuation such as - or _, got {}",
            shown(value)
        ))),
    }
}

/// A JSON value as an error message shows it: short.
fn shown(value: &Value) -> String {
    match value {
        Value::String(s) => format!("{:?}", truncate(s, 64)),
        other => kind(other).to_owned(),
    }
}

/// The client-side tools of a `session_update`: `[{name, description, parameters}]`.
fn tools(value: &Value) -> Result<Vec<ClientTool>, ProtocolError> {
    let items = value
        .as_array()
        .filter(|a| a.len() <= MAX_TOOLS)
        .ok_or_else(|| {
            invalid(format!(
                "\"tools\" must be an array of at most {MAX_TOOLS} tools \
                 {{\"name\", \"description\", \"parameters\"}}"
            ))
        })?;
    let mut out: Vec<ClientTool> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(tool) = item else {
            return Err(invalid(format!(
                "\"tools[{i}]\" must be an object {{\"name\", \"description\", \"parameters\"}}, got {}",
                kind(item)
            )));
        };
        let mut name = None;
        let mut description = String::new();
        let mut parameters = r#"{"type":"object","properties":{}}"#.to_owned();
        for (k, v) in tool {
            match k.as_str() {
                "name" => {
                    let ok = v.as_str().filter(|n| {
                        !n.is_empty()
                            && n.len() <= 64
                            && n.chars()
                                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    });
                    let Some(n) = ok else {
                        return Err(invalid(format!(
                            "\"tools[{i}].name\" must be 1 to 64 letters, digits, _ or -, got {}",
                            shown(v)
                        )));
                    };
                    if out.iter().any(|t| t.name == n) {
                        return Err(invalid(format!(
                            "\"tools[{i}].name\": {n:?} is already the name of an earlier tool"
                        )));
                    }
                    name = Some(n.to_owned());
                }
                "description" => {
                    description = v
                        .as_str()
                        .filter(|d| d.chars().count() <= MAX_TOOL_DESCRIPTION_CHARS)
                        .ok_or_else(|| {
                            invalid(format!(
                                "\"tools[{i}].description\" must be a string of at most \
                                 {MAX_TOOL_DESCRIPTION_CHARS} characters"
                            ))
                        })?
                        .to_owned();
                }
                "parameters" => {
                    let text = v.is_object().then(|| v.to_string()).ok_or_else(|| {
                        invalid(format!(
                            "\"tools[{i}].parameters\" must be a JSON Schema object, got {}",
                            kind(v)
                        ))
                    })?;
                    if text.len() > MAX_TOOL_SCHEMA_BYTES {
                        return Err(invalid(format!(
                            "\"tools[{i}].parameters\" is larger than {MAX_TOOL_SCHEMA_BYTES} bytes"
                        )));
                    }
                    if v.get("type").is_some_and(|t| t != "object") {
                        return Err(invalid(format!(
                            "\"tools[{i}].parameters\" must describe an object (\"type\": \"object\")"
                        )));
                    }
                    parameters = text;
                }
                other => {
                    return Err(invalid(format!(
                        "unknown field \"tools[{i}].{}\"; expected: {TOOL_FIELDS}",
                        truncate(other, 64)
                    )))
                }
            }
        }
        let name =
            name.ok_or_else(|| invalid(format!("\"tools[{i}]\" needs a \"name\" (a string)")))?;
        out.push(ClientTool {
            name,
            description,
            parameters,
        });
    }
    Ok(out)
}

/// A `tool_result`: `{"call_id": "...", "result": any JSON}`.
fn tool_result(map: &serde_json::Map<String, Value>) -> Result<ClientMessage, ProtocolError> {
    let call_id = match map.get("call_id") {
        Some(Value::String(id)) if !id.is_empty() && id.chars().count() <= MAX_CALL_ID_CHARS => {
            id.clone()
        }
        Some(other) => {
            return Err(invalid(format!(
                "\"call_id\" must be the non-empty string of a tool_call's call_id, got {}",
                shown(other)
            )))
        }
        None => {
            return Err(invalid(
                "a \"tool_result\" needs the \"call_id\" of the tool_call it answers".into(),
            ))
        }
    };
    let result = match map.get("result") {
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
        None => {
            return Err(invalid(
                "a \"tool_result\" needs a \"result\" (any JSON value: the tool's output)".into(),
            ))
        }
    };
    if result.len() > MAX_TOOL_RESULT_BYTES {
        return Err(invalid(format!(
            "\"result\" is larger than {MAX_TOOL_RESULT_BYTES} bytes"
        )));
    }
    if let Some(k) = map
        .keys()
        .find(|k| !matches!(k.as_str(), "type" | "call_id" | "result"))
    {
        return Err(invalid(format!(
            "unknown field {:?} in tool_result; expected: call_id, result",
            truncate(k, 64)
        )));
    }
    Ok(ClientMessage::ToolResult { call_id, result })
}

/// The non-blank `"text"` string of a `ty` message.
fn text_field(map: &serde_json::Map<String, Value>, ty: &str) -> Result<String, ProtocolError> {
    match map.get("text") {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(ProtocolError::new(
            "invalid_field",
            "\"text\" must not be empty",
        )),
        Some(other) => Err(ProtocolError::new(
            "invalid_field",
            format!("\"text\" must be a string, got {}", kind(other)),
        )),
        None => Err(ProtocolError::new(
            "invalid_field",
            format!("a \"{ty}\" message needs a \"text\" field (a string)"),
        )),
    }
}

/// Checks a binary frame: PCM16LE, so an even number of bytes.
///
/// # Errors
/// `invalid_audio` when the length is odd.
pub(crate) fn check_audio(len: usize) -> Result<(), ProtocolError> {
    if len % 2 == 1 {
        return Err(ProtocolError::new(
            "invalid_audio",
            format!(
                "binary frames carry 16-bit PCM samples (2 bytes each); this one has {len} bytes, \
                 which is not a whole number of samples; the frame was dropped"
            ),
        ));
    }
    Ok(())
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn truncate(s: &str, max: usize) -> &str {
    s.char_indices().nth(max).map_or(s, |(i, _)| &s[..i])
}

/// Milliseconds, rounded to 0.1 ms.
fn ms(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

/// The waterfall of a turn, in ms since the session started.
#[derive(Debug, Serialize)]
pub(crate) struct TimingsJson {
    speech_end: Option<f64>,
    asr_done: Option<f64>,
    llm_first_token: Option<f64>,
    tts_first_audio: Option<f64>,
    first_audio_sent: Option<f64>,
    done: Option<f64>,
}

impl From<&Timings> for TimingsJson {
    fn from(t: &Timings) -> Self {
        let f = |x: Option<voxd_core::Time>| x.map(|t| ms(t.as_millis_f64()));
        TimingsJson {
            speech_end: f(t.speech_end),
            asr_done: f(t.asr_done),
            llm_first_token: f(t.llm_first_token),
            tts_first_audio: f(t.tts_first_audio),
            first_audio_sent: f(t.first_audio_sent),
            done: f(t.done),
        }
    }
}

/// The turn settings in `session_updated`.
#[derive(Debug, Serialize)]
pub(crate) struct TurnJson<'a> {
    min_interruption_ms: u64,
    false_interruption_timeout_ms: u64,
    backchannels: &'a [String],
    answer_turns: bool,
    interrupt_on_speech: bool,
    idle_timeout_ms: Option<u64>,
}

/// A message to the client.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum ServerMessage<'a> {
    /// First message after the upgrade.
    Ready {
        session_id: &'a str,
        protocol: u32,
        input_sample_rate: u32,
        output_sample_rate: u32,
        /// Whether server VAD runs (until the client sends its own speech signals).
        server_vad: bool,
        /// The audio encoding both ways.
        encoding: &'static str,
        /// What resumes this session after a dropped connection (`?resume=`).
        #[serde(skip_serializing_if = "Option::is_none")]
        resume_token: Option<&'a str>,
        /// The client came back to this session.
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        resumed: bool,
    },
    SpeechStarted {
        turn_id: u64,
        at_ms: f64,
    },
    SpeechStopped {
        turn_id: u64,
        at_ms: f64,
        duration_ms: f64,
    },
    Transcript {
        turn_id: u64,
        text: &'a str,
        #[serde(rename = "final")]
        is_final: bool,
    },
    ResponseText {
        turn_id: u64,
        text: &'a str,
    },
    ToolCall {
        turn_id: u64,
        call_id: &'a str,
        name: &'a str,
        arguments: Value,
        /// `server` or `client`: who runs the tool (the client answers with `tool_result`).
        runs: &'static str,
    },
    ToolResult {
        turn_id: u64,
        call_id: &'a str,
        result: Value,
        elapsed_ms: f64,
    },
    AudioStart {
        turn_id: u64,
        sample_rate: u32,
        ttft_ms: f64,
    },
    PlaybackPaused {
        turn_id: u64,
    },
    PlaybackResumed {
        turn_id: u64,
    },
    Interrupted {
        turn_id: u64,
        played_ms: f64,
        heard_text: &'a str,
    },
    /// The user said nothing for `turn.idle_timeout_ms` after the last answer: response
    /// `turn_id` follows (the bot speaks again).
    IdleTimeout {
        turn_id: u64,
        silent_ms: f64,
    },
    ResponseDone {
        turn_id: u64,
        status: &'static str,
        ttft_ms: Option<f64>,
        total_ms: Option<f64>,
        audio_ms: f64,
        #[serde(skip_serializing_if = "Option::is_none")]
        reason: Option<&'static str>,
        timings: TimingsJson,
    },
    Error {
        code: &'a str,
        message: &'a str,
        fatal: bool,
        #[serde(skip_serializing_if = "Option::is_none")]
        turn_id: Option<u64>,
        /// The provider at fault, for provider errors.
        #[serde(skip_serializing_if = "Option::is_none")]
        provider: Option<&'a str>,
    },
    Pong {
        id: Option<&'a Value>,
    },
    /// The effective settings after a `session_update`.
    SessionUpdated {
        instructions: &'a str,
        voice: Option<&'a str>,
        language: Option<&'a str>,
        /// The client-side tools' names.
        tools: Vec<&'a str>,
        turn: TurnJson<'a>,
        history_messages: usize,
    },
    /// The server is draining: the response in progress finishes, then the session closes
    /// (1001), at the latest in `deadline_ms`.
    Shutdown {
        deadline_ms: u64,
    },
}

impl ServerMessage<'_> {
    /// The message as a JSON text frame.
    pub(crate) fn to_json(&self) -> String {
        serde_json::to_string(self).expect("server messages always serialize")
    }
}

/// Parses JSON text produced by a tool or the LLM, keeping it as a string if it is not JSON.
fn json_or_string(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// Encodes a core event as the JSON text of its protocol message; `None` for the core's internal
/// events, which are not part of the protocol.
pub fn encode_event(e: &Event) -> Option<String> {
    let d = |x: std::time::Duration| ms(x.as_secs_f64() * 1000.0);
    Some(match e {
        // /ws has no truncate or delete message: these answer another protocol's. A resumed
        // client knows what it received: the audio simply continues from there.
        Event::FalseAlarm { .. }
        | Event::Truncated { .. }
        | Event::Deleted { .. }
        | Event::Rewound { .. }
        | Event::AudioMessage { .. } => return None,
        Event::IdleTimeout { turn, since, at } => ServerMessage::IdleTimeout {
            turn_id: turn.0,
            silent_ms: d(*at - *since),
        }
        .to_json(),
        Event::SessionUpdated {
            instructions,
            min_interruption,
            false_interruption_timeout,
            backchannels,
            history_messages,
            tools,
            voice,
            language,
            answer_turns,
            interrupt_on_speech,
            idle_timeout,
        } => ServerMessage::SessionUpdated {
            instructions,
            voice: voice.as_deref(),
            language: language.as_deref(),
            tools: tools.iter().map(|t| t.name.as_str()).collect(),
            turn: TurnJson {
                min_interruption_ms: min_interruption.as_millis() as u64,
                false_interruption_timeout_ms: false_interruption_timeout.as_millis() as u64,
                backchannels,
                answer_turns: *answer_turns,
                interrupt_on_speech: *interrupt_on_speech,
                idle_timeout_ms: idle_timeout.map(|t| t.as_millis() as u64),
            },
            history_messages: *history_messages,
        }
        .to_json(),
        Event::SpeechStarted { turn, at } => ServerMessage::SpeechStarted {
            turn_id: turn.0,
            at_ms: ms(at.as_millis_f64()),
        }
        .to_json(),
        Event::SpeechStopped { turn, at, duration } => ServerMessage::SpeechStopped {
            turn_id: turn.0,
            at_ms: ms(at.as_millis_f64()),
            duration_ms: d(*duration),
        }
        .to_json(),
        Event::Transcript {
            turn,
            text,
            is_final,
        } => ServerMessage::Transcript {
            turn_id: turn.0,
            text,
            is_final: *is_final,
        }
        .to_json(),
        Event::ResponseText { turn, text } => ServerMessage::ResponseText {
            turn_id: turn.0,
            text,
        }
        .to_json(),
        Event::ToolCall { turn, call, runs } => ServerMessage::ToolCall {
            turn_id: turn.0,
            call_id: &call.id,
            name: &call.name,
            arguments: json_or_string(&call.arguments),
            runs: runs.as_str(),
        }
        .to_json(),
        Event::Rejected(rejection) => {
            let (code, message) = rejected(rejection);
            ServerMessage::Error {
                code,
                message: &message,
                fatal: false,
                turn_id: None,
                provider: None,
            }
            .to_json()
        }
        Event::ToolResult {
            turn,
            call_id,
            result,
            elapsed,
        } => ServerMessage::ToolResult {
            turn_id: turn.0,
            call_id,
            result: json_or_string(result),
            elapsed_ms: d(*elapsed),
        }
        .to_json(),
        Event::AudioStart {
            turn,
            sample_rate,
            ttft,
        } => ServerMessage::AudioStart {
            turn_id: turn.0,
            sample_rate: sample_rate.hz(),
            ttft_ms: d(*ttft),
        }
        .to_json(),
        Event::PlaybackPaused { turn, .. } => {
            ServerMessage::PlaybackPaused { turn_id: turn.0 }.to_json()
        }
        Event::PlaybackResumed { turn } => {
            ServerMessage::PlaybackResumed { turn_id: turn.0 }.to_json()
        }
        Event::Interrupted {
            turn,
            played_ms,
            heard_text,
        } => ServerMessage::Interrupted {
            turn_id: turn.0,
            played_ms: ms(*played_ms),
            heard_text,
        }
        .to_json(),
        Event::ResponseDone {
            turn,
            status,
            audio_ms,
            timings,
            reason,
        } => {
            let since_end = |t: Option<voxd_core::Time>| {
                t.zip(timings.speech_end)
                    .map(|(t, start)| d(t.saturating_since(start)))
            };
            ServerMessage::ResponseDone {
                turn_id: turn.0,
                status: status.as_str(),
                ttft_ms: since_end(timings.first_audio_sent),
                total_ms: since_end(timings.done),
                audio_ms: ms(*audio_ms),
                reason: *reason,
                timings: timings.into(),
            }
            .to_json()
        }
        Event::ProviderError {
            turn,
            stage,
            failure,
        } => {
            let code = format!(
                "{}_{}",
                stage.as_str(),
                if failure.timed_out {
                    "timeout"
                } else {
                    "failed"
                }
            );
            let message = format!(
                "{} provider {:?}: {}",
                stage.as_str(),
                failure.provider,
                failure.message
            );
            ServerMessage::Error {
                code: &code,
                message: &message,
                fatal: false,
                turn_id: Some(turn.0),
                provider: Some(&failure.provider),
            }
            .to_json()
        }
    })
}

/// The `error` code and message of a refused request.
fn rejected(r: &Rejection) -> (&'static str, String) {
    match r {
        Rejection::UnknownCall { call_id } => (
            "unknown_call_id",
            format!(
                "tool_result for call_id {:?}, which no tool_call of this session had",
                truncate(call_id, 128)
            ),
        ),
        Rejection::LateResult { call_id } => (
            "late_tool_result",
            format!(
                "tool_result for call_id {call_id:?} came too late: the call timed out or its \
                 response ended; the model was told it failed"
            ),
        ),
        Rejection::AlreadyAnswered { call_id } => (
            "duplicate_tool_result",
            format!("call_id {call_id:?} was already answered; this result was ignored"),
        ),
        Rejection::ServerCall { call_id } => (
            "not_a_client_call",
            format!(
                "call_id {call_id:?} is a server tool's call (its tool_call said \"runs\": \
                 \"server\"); the server answers it"
            ),
        ),
        Rejection::ToolNameClash { index, name } => (
            "invalid_field",
            format!(
                "\"tools[{index}].name\": {name:?} is the name of a server tool; pick another \
                 name (nothing in this session_update was applied)"
            ),
        ),
        Rejection::NotInHistory { turn } => (
            "not_in_history",
            format!("turn {turn} has nothing in the conversation to change"),
        ),
        Rejection::InProgress { turn } => (
            "turn_in_progress",
            format!("turn {turn} is still being answered; cancel it first"),
        ),
        Rejection::TranscriptionsBusy { max } => (
            "too_many_audio_messages",
            format!("{max} audio messages are still being transcribed"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_client_message() {
        assert_eq!(
            parse_client(r#"{"type":"speech_start"}"#),
            Ok(ClientMessage::SpeechStart)
        );
        assert_eq!(
            parse_client(r#"{"type":"speech_end","extra":1}"#),
            Ok(ClientMessage::SpeechEnd)
        );
        assert_eq!(
            parse_client(r#"{"type":"text","text":"hi"}"#),
            Ok(ClientMessage::Text("hi".into()))
        );
        assert_eq!(
            parse_client(r#"{"type":"ping","id":7}"#),
            Ok(ClientMessage::Ping(Some(Value::from(7))))
        );
        assert_eq!(
            parse_client(r#"{"type":"ping"}"#),
            Ok(ClientMessage::Ping(None))
        );
    }

    #[test]
    fn mistakes_have_stable_codes_and_helpful_messages() {
        let code = |t: &str| parse_client(t).unwrap_err().code;
        assert_eq!(code("{not json"), "invalid_json");
        assert_eq!(code("[1,2]"), "invalid_message");
        assert_eq!(code(r#"{"text":"hi"}"#), "missing_type");
        assert_eq!(code(r#"{"type":5}"#), "invalid_field");
        assert_eq!(code(r#"{"type":"dance"}"#), "unknown_type");
        assert_eq!(code(r#"{"type":"text"}"#), "invalid_field");
        assert_eq!(code(r#"{"type":"text","text":42}"#), "invalid_field");
        assert_eq!(code(r#"{"type":"text","text":"  "}"#), "invalid_field");
        let e = parse_client(r#"{"type":"dance"}"#).unwrap_err();
        assert!(e.message.contains("speech_start"), "{}", e.message);
        assert_eq!(check_audio(321).unwrap_err().code, "invalid_audio");
        assert!(check_audio(320).is_ok());
    }

    #[test]
    fn events_encode_with_the_protocol_names() {
        let e = Event::Transcript {
            turn: voxd_core::TurnId(3),
            text: "hi".into(),
            is_final: true,
        };
        let v: Value = serde_json::from_str(&encode_event(&e).unwrap()).unwrap();
        assert_eq!(v["type"], "transcript");
        assert_eq!(v["turn_id"], 3);
        assert_eq!(v["final"], true);
    }
}

/// voxd's own protocol over `/ws`: JSON text frames both ways, and binary PCM16LE audio both ways
/// (the client's at the `sample_rate` it asked for, the server's at the output rate).
#[derive(Debug)]
pub(crate) struct VoxdCodec {
    audio: AudioIn,
}

impl VoxdCodec {
    /// A session whose client sends audio at `input_rate`.
    pub(crate) fn new(input_rate: SampleRate) -> Self {
        VoxdCodec {
            audio: AudioIn::new(input_rate),
        }
    }
}

fn error_frame(code: &str, message: &str) -> Frame {
    Frame::Text(
        ServerMessage::Error {
            code,
            message,
            fatal: false,
            turn_id: None,
            provider: None,
        }
        .to_json(),
    )
}

impl Codec for VoxdCodec {
    fn resumable(&self) -> bool {
        true
    }

    fn hello(&mut self, hello: &Hello<'_>, out: &mut Vec<Frame>) {
        let ready = ServerMessage::Ready {
            session_id: hello.session_id,
            protocol: PROTOCOL_VERSION,
            input_sample_rate: self.audio.rate().hz(),
            output_sample_rate: hello.output_rate.hz(),
            server_vad: hello.server_vad,
            encoding: "pcm_s16le",
            resume_token: hello.resume_token,
            resumed: hello.resumed,
        };
        out.push(Frame::Text(ready.to_json()));
    }

    fn text(&mut self, frame: &str, out: &mut Vec<Frame>, input: &mut dyn FnMut(Input<'_>)) {
        match parse_client(frame) {
            Ok(ClientMessage::SpeechStart) => input(Input::SpeechStart),
            Ok(ClientMessage::SpeechEnd) => input(Input::SpeechEnd),
            Ok(ClientMessage::Text(t)) => input(Input::Text(t)),
            Ok(ClientMessage::Say(t)) => input(Input::Say(t)),
            Ok(ClientMessage::Respond) => input(Input::Respond(Default::default())),
            Ok(ClientMessage::Cancel) => input(Input::Cancel),
            Ok(ClientMessage::SessionUpdate(u)) => input(Input::Update(u)),
            Ok(ClientMessage::ToolResult { call_id, result }) => {
                input(Input::ToolResult { call_id, result });
            }
            Ok(ClientMessage::Ping(id)) => {
                out.push(Frame::Text(
                    ServerMessage::Pong { id: id.as_ref() }.to_json(),
                ));
            }
            Err(e) => {
                tracing::debug!(code = e.code, "client protocol error");
                out.push(error_frame(e.code, &e.message));
            }
        }
    }

    fn binary(&mut self, frame: &[u8], out: &mut Vec<Frame>, input: &mut dyn FnMut(Input<'_>)) {
        match check_audio(frame.len()) {
            Ok(()) => input(Input::Audio(self.audio.pcm16le(frame))),
            Err(e) => out.push(error_frame(e.code, &e.message)),
        }
    }

    fn event(&mut self, event: &Event, out: &mut Vec<Frame>) {
        if let Some(json) = encode_event(event) {
            out.push(Frame::Text(json));
        }
    }

    fn audio(&mut self, _turn: TurnId, _at: u64, pcm: Bytes, out: &mut Vec<Frame>) {
        out.push(Frame::Binary(pcm));
    }

    fn notice(&mut self, notice: Notice<'_>, out: &mut Vec<Frame>) {
        out.push(match notice {
            Notice::Shutdown { deadline_ms } => {
                Frame::Text(ServerMessage::Shutdown { deadline_ms }.to_json())
            }
            Notice::Error { code, message } => error_frame(code, message),
        });
    }
}

#[cfg(test)]
mod codec_tests {
    use super::*;

    /// Runs one frame through the codec: its inputs (audio as a sample count) and its replies.
    fn decode(codec: &mut VoxdCodec, frame: Result<&str, &[u8]>) -> (Vec<String>, Vec<Frame>) {
        let mut out = Vec::new();
        let mut inputs = Vec::new();
        let mut record = |i: Input<'_>| {
            inputs.push(match i {
                Input::Audio(s) => format!("audio {}", s.len()),
                other => format!("{other:?}"),
            });
        };
        match frame {
            Ok(text) => codec.text(text, &mut out, &mut record),
            Err(bytes) => codec.binary(bytes, &mut out, &mut record),
        }
        (inputs, out)
    }

    fn json(frame: &Frame) -> Value {
        match frame {
            Frame::Text(t) => serde_json::from_str(t).expect("JSON"),
            Frame::Binary(_) => panic!("a binary frame"),
        }
    }

    #[test]
    fn the_first_frame_is_ready_with_both_rates() {
        let mut codec = VoxdCodec::new(SampleRate(8000));
        let mut out = Vec::new();
        let hello = Hello {
            session_id: "abc",
            output_rate: SampleRate(24_000),
            server_vad: true,
            resume_token: None,
            resumed: false,
        };
        codec.hello(&hello, &mut out);
        let ready = json(&out[0]);
        assert_eq!(ready["type"], "ready");
        assert_eq!(ready["session_id"], "abc");
        assert_eq!(ready["protocol"], PROTOCOL_VERSION);
        assert_eq!(ready["input_sample_rate"], 8000);
        assert_eq!(ready["output_sample_rate"], 24_000);
        assert_eq!(ready["server_vad"], true);
        assert_eq!(ready["encoding"], "pcm_s16le");
    }

    #[test]
    fn text_frames_become_inputs_or_replies() {
        let mut codec = VoxdCodec::new(SampleRate::INTERNAL);
        let cases: [(&str, &[&str]); 3] = [
            (r#"{"type":"speech_start"}"#, &["SpeechStart"]),
            (r#"{"type":"speech_end"}"#, &["SpeechEnd"]),
            (r#"{"type":"text","text":"hi"}"#, &["Text(\"hi\")"]),
        ];
        for (frame, inputs) in cases {
            let (got, out) = decode(&mut codec, Ok(frame));
            assert_eq!(got, inputs, "{frame}");
            assert!(out.is_empty(), "{frame}: {out:?}");
        }
        let (got, out) = decode(&mut codec, Ok(r#"{"type":"ping","id":7}"#));
        assert!(got.is_empty());
        assert_eq!(json(&out[0]), serde_json::json!({"type": "pong", "id": 7}));
        let (got, out) = decode(&mut codec, Ok("not json"));
        assert!(got.is_empty());
        let error = json(&out[0]);
        assert_eq!(error["type"], "error");
        assert_eq!(error["code"], "invalid_json");
        assert_eq!(error["fatal"], false);
    }

    #[test]
    fn binary_frames_are_audio_at_16k_and_odd_lengths_are_refused() {
        let mut codec = VoxdCodec::new(SampleRate::INTERNAL);
        let (got, out) = decode(&mut codec, Err(&[0u8; 640][..]));
        assert_eq!(got, ["audio 320"]);
        assert!(out.is_empty());
        let (got, out) = decode(&mut codec, Err(&[0u8; 3][..]));
        assert!(got.is_empty());
        assert_eq!(json(&out[0])["code"], "invalid_audio");
        // 8 kHz in: twice the samples out, once the resampler is primed.
        let mut narrow = VoxdCodec::new(SampleRate(8000));
        let mut total = 0;
        for _ in 0..10 {
            let (got, _) = decode(&mut narrow, Err(&[0u8; 320][..]));
            total += got[0]["audio ".len()..].parse::<usize>().unwrap();
        }
        assert!((3000..=3200).contains(&total), "{total}");
    }

    #[test]
    fn audio_goes_out_as_binary_and_internal_events_not_at_all() {
        let mut codec = VoxdCodec::new(SampleRate::INTERNAL);
        let mut out = Vec::new();
        codec.audio(TurnId(1), 0, Bytes::from_static(&[1, 2]), &mut out);
        assert_eq!(out, [Frame::Binary(Bytes::from_static(&[1, 2]))]);
        out.clear();
        codec.event(&Event::FalseAlarm { turn: TurnId(1) }, &mut out);
        assert!(out.is_empty());
        codec.event(
            &Event::PlaybackPaused {
                turn: TurnId(3),
                rewound_to: None,
            },
            &mut out,
        );
        assert_eq!(
            json(&out[0]),
            serde_json::json!({"type": "playback_paused", "turn_id": 3})
        );
        out.clear();
        codec.notice(Notice::Shutdown { deadline_ms: 500 }, &mut out);
        codec.notice(
            Notice::Error {
                code: "rate_limited",
                message: "slow down",
            },
            &mut out,
        );
        assert_eq!(
            json(&out[0]),
            serde_json::json!({"type": "shutdown", "deadline_ms": 500})
        );
        assert_eq!(json(&out[1])["code"], "rate_limited");
    }
}
