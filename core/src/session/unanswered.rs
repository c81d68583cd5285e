//! User turns transcribed without an answer: into the history only.
//!
//! A turn is transcribed and not answered when the client answers turns itself
//! (`SessionConfig::answer_turns` off: it asks with `handle_respond`), when it is an audio
//! message (`handle_user_audio`), or when it was spoken during a response it does not interrupt
//! (`SessionConfig::interrupt_on_speech` off: it is answered once that response has ended).
//!
//! | state | on | next | outputs |
//! |---|---|---|---|
//! | (none) | such a turn ends | waiting, in turn order | `StartAsr` (or its stream finalizes) |
//! | waiting | its transcript (or an ASR failure: no words, `ProviderError`) | known | - |
//! | known | every turn before it is told | told | `Transcript` (final), `TurnReleased` |
//! | told | every turn before it is in the history, and no response is under way (none, or one `Waiting`) | (none) | its words enter the history |
//! | (queue empty) | a response is `Waiting` | - | its LLM round starts (`StartLlm`) |
//!
//! The turns' words are told and enter the history in the order the turns were spoken,
//! whatever order their transcripts arrive in. Words spoken over an answer enter the history
//! after it, when it ends: the LLM reads them as what the user said to it. A response asked for
//! meanwhile waits for all of them (`Reply::Waiting`), so the LLM reads everything the user said
//! before it. At most `MAX_TRANSCRIBING` wait at once: an audio message beyond that is refused
//! (`Rejection::TranscriptionsBusy`); spoken turns always go in, as speech cannot outrun its own
//! length.

use std::sync::Arc;

use super::{Event, Output, ProviderFailure, Session, Stage};
use crate::types::{Time, TurnId};

/// How many user turns may wait for their transcript at once (audio messages beyond it are
/// refused).
pub const MAX_TRANSCRIBING: usize = 8;

/// A user turn being transcribed into the history.
#[derive(Debug)]
pub(super) struct Unanswered {
    pub(super) turn: TurnId,
    /// Its words, once known.
    text: Option<String>,
    /// Its final `Transcript` was already sent (a barge-in candidate's words, judged).
    told: bool,
}

impl Session {
    /// Transcribes `audio` as the words of `turn`, for the history only (→ waiting). The first
    /// `carried` samples are those of a turn cancelled before its transcript.
    pub(super) fn start_transcription(&mut self, turn: TurnId, audio: Vec<i16>, carried: usize) {
        let audio: Arc<[i16]> = Arc::from(audio);
        self.transcribing.push_back(Unanswered {
            turn,
            text: None,
            told: false,
        });
        if let Some(after_stream) = self.live.end(turn, &audio, carried, &mut self.outputs) {
            self.outputs.push_back(Output::StartAsr {
                turn,
                audio,
                after_stream,
            });
        }
    }

    /// The words of `turn`, already known and told (a judged barge-in's), for the history only.
    /// The turn was released with its judgement.
    pub(super) fn add_unanswered_words(&mut self, now: Time, turn: TurnId, text: String) {
        self.queue_told_words(turn, text);
        self.flush_transcriptions(now);
    }

    /// Words already known and told (a text message, a judged barge-in's), queued behind any
    /// still being transcribed so that the history keeps the order they were said in. Needs
    /// nothing from a provider: nothing to release.
    pub(super) fn queue_told_words(&mut self, turn: TurnId, text: String) {
        self.transcribing.push_back(Unanswered {
            turn,
            text: Some(text),
            told: true,
        });
    }

    /// Whether `turn` is being transcribed for the history.
    pub(super) fn is_transcribing(&self, turn: TurnId) -> bool {
        self.transcribing.iter().any(|u| u.turn == turn)
    }

    /// The transcript of a turn transcribed for the history (waiting → known). An ASR failure
    /// is told, and the turn has no words.
    pub(super) fn on_unanswered_transcript(
        &mut self,
        now: Time,
        turn: TurnId,
        result: Result<String, ProviderFailure>,
    ) {
        self.live.settled(turn, &mut self.outputs);
        let text = match result {
            Ok(text) => text.trim().to_owned(),
            Err(failure) => {
                self.emit(Event::ProviderError {
                    turn,
                    stage: Stage::Asr,
                    failure,
                });
                String::new()
            }
        };
        if let Some(u) = self.transcribing.iter_mut().find(|u| u.turn == turn) {
            u.text = Some(text);
        }
        self.flush_transcriptions(now);
    }

    /// Tells the known words at the front of the queue, in turn order, and moves them into the
    /// history unless a response is under way; once none wait, a response waiting for them asks
    /// the LLM. Called again when a response ends.
    pub(super) fn flush_transcriptions(&mut self, now: Time) {
        let mut told = Vec::new();
        for u in &mut self.transcribing {
            let Some(text) = &u.text else { break };
            if !std::mem::replace(&mut u.told, true) {
                told.push((u.turn, text.clone()));
            }
        }
        for (turn, text) in told {
            self.emit(Event::Transcript {
                turn,
                text,
                is_final: true,
            });
            self.release_turn(turn);
        }
        if self.response.as_ref().is_some_and(|r| !r.is_waiting()) {
            // Words spoken over an answer follow it in the history.
            return;
        }
        while self.transcribing.front().is_some_and(|u| u.text.is_some()) {
            let Some(u) = self.transcribing.pop_front() else {
                break;
            };
            let text = u.text.unwrap_or_default();
            if !text.is_empty() {
                self.history.push_user(&text, Some(u.turn));
            }
        }
        if self.transcribing.is_empty() {
            self.run_waiting_response(now);
        }
    }
}
