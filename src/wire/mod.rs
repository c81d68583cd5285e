//! The client protocols, as codecs: the seam where a wire protocol plugs into the one session
//! driver.
//!
//! A `Codec` turns the client's frames into the session's inputs (`Input`), and the session's
//! outputs into frames (`Frame`). It is sans-IO, with its own tests on bytes: nothing here reads a
//! socket, a clock or the server's state. The driver (`session::driver`) owns the socket, the core
//! and the provider calls, and is the same for every protocol; so are limits, auth, quotas,
//! metrics, pacing and drain. What differs between protocols (framing, audio encoding and rate,
//! event names, the first message) lives in a codec.
//!
//! Protocols:
//! - voxd's own JSON and binary PCM over `/ws` (`voxd.rs`, docs/protocol.md);
//! - the OpenAI Realtime protocol over `/v1/realtime` (`realtime.rs`, docs/realtime.md);
//! - Twilio Media Streams over `/twilio` (`twilio.rs`, docs/twilio.md): μ-law at 8 kHz in base64
//!   JSON, marks, and `clear` on a barge-in.

mod audio;
mod realtime;
mod twilio;
mod voxd;

use bytes::Bytes;
use voxd_core::{Event, SampleRate, TurnId};

pub(crate) use audio::AudioIn;
pub(crate) use realtime::{RealtimeCodec, REALTIME_RATE};
pub(crate) use twilio::{TwilioCodec, TWILIO_RATE};

#[cfg(any(test, feature = "fuzzing"))]
pub use voxd::fuzz::client_message;
pub(crate) use voxd::VoxdCodec;
pub use voxd::{encode_event, parse_client, ClientMessage, ProtocolError};

/// The idle timeout a client may set, in ms, whatever its protocol (`/ws`'s
/// `turn.idle_timeout_ms`, the Realtime `idle_timeout_ms`, a Twilio `<Parameter>`).
pub(crate) const IDLE_TIMEOUT_MS: std::ops::RangeInclusive<u64> = 1000..=600_000;

/// A WebSocket message, as a codec reads or writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Frame {
    /// A text frame (JSON, for every protocol so far).
    Text(String),
    /// A binary frame.
    Binary(Bytes),
}

/// What a client's frame asks of the session.
#[derive(Debug, PartialEq)]
pub(crate) enum Input<'a> {
    /// Microphone audio, decoded and resampled: mono PCM16 at 16 kHz.
    Audio(&'a [i16]),
    /// The client's VAD heard the user start speaking.
    SpeechStart,
    /// The client's VAD heard the user stop.
    SpeechEnd,
    /// A user turn as text.
    Text(String),
    /// A user message added to the conversation, with no reply until one is asked for.
    UserMessage(String),
    /// A user message as audio (mono PCM16 at 16 kHz), transcribed into the conversation with
    /// no reply until one is asked for.
    UserAudio(&'a [i16]),
    /// Words the bot says verbatim, as a turn of its own.
    Say(String),
    /// A reply now, from the history as it stands, with settings of its own where given.
    Respond(voxd_core::ResponseOverrides),
    /// Stop the response in progress.
    Cancel,
    /// Change the session's settings.
    Update(voxd_core::SessionUpdate),
    /// The client has played the first `samples` samples of `turn`'s response.
    Played {
        /// The turn.
        turn: TurnId,
        /// Samples played, from the response's start.
        samples: u64,
    },
    /// The client played `turn`'s answer up to sample `samples` only (`Session::handle_truncate`).
    Truncate {
        /// The turn.
        turn: TurnId,
        /// Samples played, from the response's start.
        samples: u64,
    },
    /// Remove a part of a turn from the conversation (`Session::handle_delete`).
    Delete {
        /// The turn.
        turn: TurnId,
        /// Which part.
        part: voxd_core::HistoryPart,
    },
    /// The answer to a client-side tool's call.
    ToolResult {
        /// The call's id.
        call_id: String,
        /// The result, as JSON text.
        result: String,
    },
}

/// What the first message of a session says.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hello<'a> {
    /// The session's id.
    pub(crate) session_id: &'a str,
    /// The rate of the response audio.
    pub(crate) output_rate: SampleRate,
    /// Whether server VAD runs.
    pub(crate) server_vad: bool,
    /// The token that resumes this session after a dropped connection, if it can be.
    pub(crate) resume_token: Option<&'a str>,
    /// The client came back to this session (`?resume=`).
    pub(crate) resumed: bool,
}

/// A client protocol. The driver calls `hello` once, then `decode` for each frame the client
/// sends, and `event`/`audio`/`notice` for what the session has to say; every frame a call
/// produces is appended to `out`, to be written in order.
pub(crate) trait Codec: Send + 'static {
    /// The rate the protocol carries response audio at, when it fixes one (else the server's
    /// `audio.output_sample_rate`).
    fn output_rate(&self) -> Option<SampleRate> {
        None
    }

    /// A dropped connection parks the session for the client to resume (`?resume=`): the
    /// protocol's client knows how.
    fn resumable(&self) -> bool {
        false
    }

    /// The client drops the audio it has buffered when playback pauses (see
    /// `SessionConfig::client_discards_on_pause`).
    fn discards_on_pause(&self) -> bool {
        false
    }

    /// What a text frame is, for the client limits: a control message (the default), audio
    /// (a protocol that carries audio in text frames), or the echo of the server's own message.
    /// A cheap look, before `text` parses the frame.
    fn text_kind(&self, frame: &str) -> TextKind {
        let _ = frame;
        TextKind::Control
    }

    /// The first frames of the session, right after the upgrade.
    fn hello(&mut self, hello: &Hello<'_>, out: &mut Vec<Frame>);

    /// A text frame from the client: its inputs go to `input`, in order; a reply (an answer to a
    /// ping, an error for a malformed message) goes to `out`. A client's mistake is never fatal.
    fn text(&mut self, frame: &str, out: &mut Vec<Frame>, input: &mut dyn FnMut(Input<'_>));

    /// A binary frame from the client; as `text`.
    fn binary(&mut self, frame: &[u8], out: &mut Vec<Frame>, input: &mut dyn FnMut(Input<'_>));

    /// An event of the session, for the client (or not: the core's internal events).
    fn event(&mut self, event: &Event, out: &mut Vec<Frame>);

    /// Response audio of `turn`: PCM16LE at the output rate, one frame's worth, whose first sample
    /// is sample `at` of the response.
    fn audio(&mut self, turn: TurnId, at: u64, pcm: Bytes, out: &mut Vec<Frame>);

    /// Something the server itself says: a drain notice, or a warning about the client's traffic.
    fn notice(&mut self, notice: Notice<'_>, out: &mut Vec<Frame>);
}

/// What a client's text frame counts as, against the client limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TextKind {
    /// A control message: `limits.max_control_per_s`.
    Control,
    /// Audio: this many bytes of PCM16 at the input rate, against `limits.max_audio_rate`.
    Audio(usize),
    /// The echo of something the server sent (a Twilio mark): as many as the server sent, so
    /// only its size is checked.
    Echo,
    /// A control message that carries a whole recording (a Realtime audio item): one control
    /// message against `limits.max_control_per_s`, as large as `server.max_message_bytes`
    /// allows rather than `limits.max_text_bytes`.
    Recording,
}

/// What the server says outside the session's own events.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Notice<'a> {
    /// The server is draining; the session closes once its response is done, at the latest in
    /// `deadline_ms`.
    Shutdown {
        /// Time left, in ms.
        deadline_ms: u64,
    },
    /// A non-fatal error that is not the session's (a client limit's warning).
    Error {
        /// Stable code.
        code: &'a str,
        /// What happened.
        message: &'a str,
    },
}
