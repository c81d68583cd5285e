//! voxd's sans-IO core: the per-connection turn-taking state machine and everything it needs to
//! decide (voice-activity detection and its Silero model, run by tract as plain computation, sentence splitting, conversation history, audio types).
//!
//! Nothing here performs IO, spawns a task or reads a clock: time is always an input (`Time`), and
//! every effect (an event to send, audio to send, a provider call to start or cancel, the next wake-up)
//! is an output the caller drains. That is what lets the tests play minutes of dialogue in
//! milliseconds, deterministically. Cargo enforces it: this crate depends on neither tokio nor axum.

#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzzing;
pub mod g711;
pub mod history;
pub mod resample;
pub mod session;
pub mod splitter;
pub mod types;
pub mod vad;

#[cfg(test)]
mod test_audio;

pub use history::{ChatMessage, HistoryPart, ToolCall};
pub use session::{
    AsrStreamEvent, ClientTool, Event, Output, ProviderEvent, ProviderFailure, Rejection,
    ResponseOverrides, ResponseStatus, Session, SessionConfig, SessionUpdate, Stage, Timings,
    ToolRunner, VadTuning,
};
pub use types::{SampleRate, Time, TurnId};
