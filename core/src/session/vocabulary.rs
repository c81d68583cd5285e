//! The session's vocabulary: its settings, what its owner feeds it (`ProviderEvent`,
//! `ProviderFailure`) and what it hands back (`Output`, carrying an `Event` for the client, with a
//! `ResponseStatus` and the turn's `Timings`).
//!
//! Plain data, no rules: the module the other parts of the session all import, and that imports
//! none of them.

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::history::{ChatMessage, HistoryPart, ToolCall};
use crate::types::{SampleRate, Time, TurnId};
use crate::vad::VadConfig;

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
    /// The client drops the audio it has buffered when playback pauses (Twilio's `clear`): a
    /// pause rewinds to what it has surely played (`Session::handle_played`), and a false alarm
    /// sends the rest again from there. Otherwise the client keeps its buffer and audio resumes
    /// at the first unsent byte.
    pub client_discards_on_pause: bool,
    /// The client may lose its connection and come back (`Session::handle_disconnect`,
    /// `handle_reconnect`): the audio sent is kept until surely played, to be sent again from
    /// what the client received.
    pub resumable: bool,
    /// How long a client-side tool may take to answer its `ToolCall` before it counts as failed.
    pub client_tool_timeout: Duration,
    /// The names of the server's own tools: a client-side tool may not take one.
    pub server_tools: Arc<[String]>,
    /// The client-side tools offered to the LLM (set by `SessionUpdate::tools`).
    pub client_tools: Arc<[ClientTool]>,
    /// The voice asked of the TTS; `None`: each provider's configured one.
    pub voice: Option<Arc<str>>,
    /// The language asked of the ASR (a BCP-47 or ISO 639-1 code); `None`: the provider's own.
    pub language: Option<Arc<str>>,
    /// A finished user turn is answered. Off, it is transcribed into the history only (its
    /// final `Transcript` says when), and the client asks for an answer (`handle_respond`).
    pub answer_turns: bool,
    /// Speech during a response is a barge-in candidate (it holds the response, and may
    /// interrupt it). Off, the response plays on: the speech is a turn of its own, transcribed
    /// into the history, and answered (with `answer_turns`) once the response has ended.
    pub interrupt_on_speech: bool,
    /// After a response has played out, this long with no speech from the user: the bot speaks
    /// again, unasked (`Event::IdleTimeout`, then a response from the history). `None`: never.
    pub idle_timeout: Option<Duration>,
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
            client_discards_on_pause: false,
            resumable: false,
            client_tool_timeout: Duration::from_secs(10),
            server_tools: Arc::from([]),
            client_tools: Arc::from([]),
            voice: None,
            language: None,
            answer_turns: true,
            interrupt_on_speech: true,
            idle_timeout: None,
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
    /// The LLM asked for a tool: voxd runs it, or the client does (and answers with
    /// `Session::handle_tool_result`).
    ToolCall {
        /// The turn.
        turn: TurnId,
        /// The call.
        call: ToolCall,
        /// Who runs it.
        runs: ToolRunner,
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
        /// With `client_discards_on_pause`: the sample the audio was rewound to, which a false
        /// alarm sends again from.
        rewound_to: Option<u64>,
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
    /// The session's settings changed (`Session::handle_update`): the effective ones.
    SessionUpdated {
        /// The system prompt.
        instructions: String,
        /// Speech during a response that lasts this long interrupts it.
        min_interruption: Duration,
        /// A barge-in candidate on which nothing follows for this long is a false alarm.
        false_interruption_timeout: Duration,
        /// The backchannel words.
        backchannels: Vec<String>,
        /// Messages in the history.
        history_messages: usize,
        /// The client-side tools offered to the LLM.
        tools: Arc<[ClientTool]>,
        /// The voice asked of the TTS, if the client chose one.
        voice: Option<Arc<str>>,
        /// The language asked of the ASR, if the client chose one.
        language: Option<Arc<str>>,
        /// `SessionConfig::answer_turns`.
        answer_turns: bool,
        /// `SessionConfig::interrupt_on_speech`.
        interrupt_on_speech: bool,
        /// `SessionConfig::idle_timeout`.
        idle_timeout: Option<Duration>,
    },
    /// A client's request was refused; the session goes on unchanged.
    Rejected(Rejection),
    /// The client said how much of `turn`'s answer it played (`Session::handle_truncate`): the
    /// history keeps what was heard up to there, at most.
    Truncated {
        /// The turn.
        turn: TurnId,
        /// Where the client stopped, in ms of the response audio.
        played_ms: f64,
        /// What was heard up to there.
        heard_text: String,
    },
    /// A client back from a dropped connection (`Session::handle_reconnect`) gets `turn`'s
    /// audio again from sample `to`, what it had received; `PlaybackResumed` follows.
    Rewound {
        /// The turn.
        turn: TurnId,
        /// The first sample sent again.
        to: u64,
    },
    /// A part of a turn left the conversation (`Session::handle_delete`).
    Deleted {
        /// The turn.
        turn: TurnId,
        /// Which part.
        part: HistoryPart,
    },
    /// A user's audio message (`Session::handle_user_audio`) is turn `turn`: it is transcribed
    /// into the history, and its final `Transcript` follows.
    AudioMessage {
        /// The turn.
        turn: TurnId,
        /// The audio's length.
        duration: Duration,
    },
    /// The user said nothing for `SessionConfig::idle_timeout` after the last response played
    /// out: the bot speaks again, as response `turn` (from the history as it stands).
    IdleTimeout {
        /// The response's turn.
        turn: TurnId,
        /// When the silence began (the last response ended).
        since: Time,
        /// Now: when it timed out.
        at: Time,
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
        /// The position of its first sample in the response's audio.
        at: u64,
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
        /// The client-side tools to offer besides the server's own.
        client_tools: Arc<[ClientTool]>,
    },
    /// Synthesize one sentence.
    StartTts {
        /// The turn.
        turn: TurnId,
        /// The sentence's number within the turn.
        seq: u32,
        /// The text.
        text: String,
        /// The voice the response speaks with (`SessionConfig::voice` when it began).
        voice: Option<Arc<str>>,
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

/// What a client changes in its own session (`Session::handle_update`). Each field that is
/// `Some` replaces the setting; the owner validated the values (the server's codec checks their
/// ranges and sizes). A change applies from the next response.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SessionUpdate {
    /// The system prompt.
    pub instructions: Option<String>,
    /// `SessionConfig::min_interruption`.
    pub min_interruption: Option<Duration>,
    /// `SessionConfig::false_interruption_timeout`.
    pub false_interruption_timeout: Option<Duration>,
    /// `SessionConfig::backchannels` (lowercase, without punctuation).
    pub backchannels: Option<Vec<String>>,
    /// The conversation so far, replacing the history: user and assistant messages.
    pub history: Option<Vec<ChatMessage>>,
    /// Words the bot says at once, as `handle_say` does (a greeting).
    pub greeting: Option<String>,
    /// The client-side tools, replacing the ones offered before (an empty list removes them).
    pub tools: Option<Vec<ClientTool>>,
    /// `SessionConfig::voice`.
    pub voice: Option<String>,
    /// `SessionConfig::language`.
    pub language: Option<String>,
    /// The server VAD's settings.
    pub vad: Option<VadTuning>,
    /// `SessionConfig::answer_turns`.
    pub answer_turns: Option<bool>,
    /// `SessionConfig::interrupt_on_speech`.
    pub interrupt_on_speech: Option<bool>,
    /// `SessionConfig::idle_timeout` (`Some(None)` turns it off).
    pub idle_timeout: Option<Option<Duration>>,
}

/// Settings of one response only (`Session::handle_respond_with`): each field that is `Some`
/// replaces the session's setting for that response; the session's own settings stay as they
/// are. The owner validated the values, as for `SessionUpdate`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResponseOverrides {
    /// The system prompt.
    pub instructions: Option<String>,
    /// The client-side tools offered.
    pub tools: Option<Vec<ClientTool>>,
    /// The voice asked of the TTS.
    pub voice: Option<String>,
}

/// The server VAD's settings a client may change (`SessionUpdate::vad`); each `Some` replaces
/// the session's.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct VadTuning {
    /// Silero's speech probability that starts speech (0 to 1); speech continues down to 0.15
    /// less. webrtc-vad has no such threshold and ignores it.
    pub threshold: Option<f32>,
    /// Unvoiced audio that ends speech (`VadConfig::hangover_ms`).
    pub silence_ms: Option<u32>,
    /// Audio kept from before the onset (`SessionConfig::preroll`).
    pub prefix_padding_ms: Option<u32>,
}

/// A tool the client runs: the LLM is offered it, and its calls go to the client.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientTool {
    /// Its name (`[A-Za-z0-9_-]`, at most 64 characters).
    pub name: String,
    /// What it does, for the model.
    pub description: String,
    /// The JSON schema of its arguments, as JSON text (an object schema; the owner checked it).
    pub parameters: String,
}

/// Who runs a tool call.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ToolRunner {
    /// voxd, through its tool registry (`Output::StartTool`).
    Server,
    /// The client, which answers with `Session::handle_tool_result`.
    Client,
}

impl ToolRunner {
    /// The protocol name: `server`, `client`.
    pub fn as_str(self) -> &'static str {
        match self {
            ToolRunner::Server => "server",
            ToolRunner::Client => "client",
        }
    }
}

/// A client's request the session refused (`Event::Rejected`), and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// A tool result for a call id the session never gave the client.
    UnknownCall {
        /// The id the client sent.
        call_id: String,
    },
    /// A tool result that came too late: the call timed out, or its response ended.
    LateResult {
        /// The call.
        call_id: String,
    },
    /// A second result for a call already answered.
    AlreadyAnswered {
        /// The call.
        call_id: String,
    },
    /// A tool result for a call the server runs itself.
    ServerCall {
        /// The call.
        call_id: String,
    },
    /// A client-side tool named like one of the server's tools (the update was not applied).
    ToolNameClash {
        /// Its index in the update's `tools`.
        index: usize,
        /// The name.
        name: String,
    },
    /// A truncation or a deletion of a turn the history has nothing of: the part was never
    /// said (or heard), was deleted, or is older than what the session keeps (only the last
    /// answer can be truncated once it ended).
    NotInHistory {
        /// The turn.
        turn: TurnId,
    },
    /// A deletion of a part of the turn still being answered: cancel the response first.
    InProgress {
        /// The turn.
        turn: TurnId,
    },
    /// An audio message while `max` user turns are still being transcribed: it was dropped.
    TranscriptionsBusy {
        /// How many may wait at once (`MAX_TRANSCRIBING`).
        max: usize,
    },
}
