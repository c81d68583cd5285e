//! The streaming-ASR policy: which utterances get a recognition stream, what is sent on it and
//! when, when it is finalized, and what happens when it fails or cannot be opened.
//!
//! With a streaming ASR (`SessionConfig::streaming_asr`), audio goes to the provider while the user
//! speaks, so the transcript is ready moments after the end of speech instead of one whole-utterance
//! call later. The driver only carries out the outputs (open, push, finalize, close a stream) and
//! reports what the provider did (`AsrStreamEvent`); every decision is taken here, on the
//! simulated clock in tests. ARCHITECTURE.md, "Streaming ASR", has the why.
//!
//! One record per utterance, at most `MAX_STREAMS` at once (the utterance being captured and
//! those finalizing). Its states, and the transitions (`-` means no output):
//!
//! | state | on | next | outputs |
//! |---|---|---|---|
//! | (none) | speech begins, fewer than `MAX_STREAMS` records | `Opening` | `OpenAsrStream` |
//! | (none) | speech begins, `MAX_STREAMS` records | `Off` (not after a stream) | - |
//! | `Opening` | `Opened` | `Streaming` | `PushAsrStream` (all so far); `FinalizeAsrStream` if ended |
//! | `Opening` | `Unavailable` (its breaker is open) | `Off` (after the stream) | - |
//! | `Streaming` | audio while speaking | `Streaming` | `PushAsrStream` (the new samples) |
//! | `Opening`, `Streaming` | the utterance ends | same, ended | `Streaming`: `PushAsrStream` (the rest), `FinalizeAsrStream` |
//! | `Opening`, `Streaming` | the utterance ends with carried audio | gone | `CloseAsrStream`; `StartAsr` (from the first provider) |
//! | `Off` | the utterance ends | gone | `StartAsr` (from the fallback if after the stream) |
//! | `Streaming`, ended | `Finalized` | gone | the transcript, as the turn's `Transcript` |
//! | `Opening`, `Streaming` | `Failed` | `Off` (after the stream); gone if ended | `StartAsr` (from the fallback) if ended |
//! | any, not ended | a new utterance begins | gone | `CloseAsrStream` (if a stream) |
//! | any | its turn is cancelled or released | gone | - (`CancelTurn`, `TurnReleased` close it) |
//! | any | its transcript came another way | gone | `CloseAsrStream` (if a stream) |
//!
//! A stream that failed has ended: the driver drops it when it reports the failure. `Interim` and
//! `Final` of a stream become `transcript` events with `final: false`; a `Final` with the provider's
//! endpoint ends a server-VAD utterance at once, before the VAD's hangover.
//!
//! "Carried audio": a turn cancelled before its transcript had its audio prepended to this
//! utterance (`Output::StartAsr` explains); the stream never heard it, so its transcript would miss
//! those words. "After the stream": the streaming provider failed (or was skipped by its breaker)
//! on this utterance and already counted it, so the whole-utterance transcription starts at the
//! ASR chain's fallback.

use std::ops::Range;
use std::sync::Arc;

use crate::types::TurnId;

use super::{Output, ProviderFailure};

/// Recognition streams a session keeps at once. Each is one provider connection; past this many
/// (utterances ending faster than their streams finalize), a new utterance goes the
/// whole-utterance way.
pub const MAX_STREAMS: usize = 3;

/// What a streaming ASR's recognition stream did, reported by the driver with the stream's turn.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AsrStreamEvent {
    /// The stream connected (after `Output::OpenAsrStream`).
    Opened,
    /// The stream was not opened: the provider is unavailable (its circuit breaker is open). Not
    /// a failure of this utterance.
    Unavailable,
    /// A provisional hypothesis of the utterance so far.
    Interim(String),
    /// A segment became final; `text` is every final segment so far. `speech_final`: the provider
    /// heard the speaker stop (its own endpointing).
    Final {
        /// The final segments so far, joined by spaces.
        text: String,
        /// The provider's endpoint.
        speech_final: bool,
    },
    /// The stream's answer after `Output::FinalizeAsrStream`: the utterance's transcript.
    Finalized(String),
    /// The stream failed, or could not connect, or ended without a transcript.
    Failed(ProviderFailure),
}

/// What the session does with a stream event.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Then {
    /// Nothing (an event of a stream the session no longer has).
    Nothing,
    /// Show the client what is heard so far.
    Interim(String),
    /// Show it, and end the utterance now if server VAD is capturing it: the provider heard the
    /// end of speech before the VAD's hangover.
    Endpoint(String),
    /// The utterance's transcript.
    Transcript(String),
    /// Transcribe the whole utterance instead (`Output::StartAsr`) with this `after_stream`.
    Transcribe(Arc<[i16]>, bool),
}

#[derive(Debug)]
enum State {
    /// Connecting. The utterance's audio waits in the session and is caught up on connect.
    Opening,
    /// Connected: `pushed` samples of the utterance were sent.
    Streaming { pushed: usize },
    /// No stream: the utterance is transcribed whole when it ends. `after_stream`: the streaming
    /// provider was tried (or skipped by its breaker) on it.
    Off { after_stream: bool },
}

#[derive(Debug)]
struct Record {
    turn: TurnId,
    state: State,
    /// The utterance as it ended: the stream is finalizing, and this is what the whole-utterance
    /// fallback transcribes if the stream fails.
    ended: Option<Arc<[i16]>>,
}

/// The session's recognition streams. See the module docs.
#[derive(Debug, Default)]
pub(super) struct LiveStreams {
    enabled: bool,
    records: Vec<Record>,
}

impl LiveStreams {
    pub(super) fn new(enabled: bool) -> Self {
        LiveStreams {
            enabled,
            records: Vec::with_capacity(if enabled { MAX_STREAMS } else { 0 }),
        }
    }

    /// Speech of `turn` began: open its stream.
    pub(super) fn begin(&mut self, turn: TurnId, out: &mut impl Extend<Output>) {
        if !self.enabled {
            return;
        }
        // Streams of utterances that never ended (dismissed) go; finalizing ones stay.
        self.records.retain(|r| {
            let keep = r.ended.is_some();
            if !keep && !matches!(r.state, State::Off { .. }) {
                out.extend([Output::CloseAsrStream(r.turn)]);
            }
            keep
        });
        let state = if self.records.len() >= MAX_STREAMS {
            State::Off {
                after_stream: false,
            }
        } else {
            out.extend([Output::OpenAsrStream(turn)]);
            State::Opening
        };
        self.records.push(Record {
            turn,
            state,
            ended: None,
        });
    }

    /// The utterance of `turn` is `audio` so far: send what the stream has not had.
    pub(super) fn feed(&mut self, turn: TurnId, audio_len: usize, out: &mut impl Extend<Output>) {
        let Some(r) = self.records.iter_mut().find(|r| r.turn == turn) else {
            return;
        };
        if let State::Streaming { pushed } = &mut r.state {
            if audio_len > *pushed {
                out.extend([Output::PushAsrStream {
                    turn,
                    samples: *pushed..audio_len,
                }]);
                *pushed = audio_len;
            }
        }
    }

    /// The utterance of `turn` ended as `audio`, of which the first `carried` samples were carried
    /// from a cancelled turn. `None`: its stream will give the transcript. `Some(after_stream)`:
    /// transcribe it whole.
    pub(super) fn end(
        &mut self,
        turn: TurnId,
        audio: &Arc<[i16]>,
        carried: usize,
        out: &mut impl Extend<Output>,
    ) -> Option<bool> {
        let Some(at) = self.records.iter().position(|r| r.turn == turn) else {
            return Some(false);
        };
        let r = &mut self.records[at];
        match r.state {
            State::Off { after_stream } => {
                self.records.remove(at);
                Some(after_stream)
            }
            // The stream never heard the carried audio: its transcript would miss those words.
            _ if carried > 0 => {
                self.records.remove(at);
                out.extend([Output::CloseAsrStream(turn)]);
                Some(false)
            }
            State::Opening => {
                r.ended = Some(Arc::clone(audio));
                None
            }
            State::Streaming { ref mut pushed } => {
                r.ended = Some(Arc::clone(audio));
                if audio.len() > *pushed {
                    out.extend([Output::PushAsrStream {
                        turn,
                        samples: *pushed..audio.len(),
                    }]);
                    *pushed = audio.len();
                }
                out.extend([Output::FinalizeAsrStream(turn)]);
                None
            }
        }
    }

    /// `turn` was cancelled or released: `CancelTurn` or `TurnReleased` closes its stream.
    pub(super) fn cancel(&mut self, turn: TurnId) {
        self.records.retain(|r| r.turn != turn);
    }

    /// The turn's transcript is settled some other way (a whole-utterance transcription answered
    /// first): its stream, if one is open, is closed.
    pub(super) fn settled(&mut self, turn: TurnId, out: &mut impl Extend<Output>) {
        let Some(at) = self.records.iter().position(|r| r.turn == turn) else {
            return;
        };
        if !matches!(self.records.remove(at).state, State::Off { .. }) {
            out.extend([Output::CloseAsrStream(turn)]);
        }
    }

    /// The stream of `turn` did something. `audio_len`: the length of the utterance being
    /// captured, if `turn` is it.
    pub(super) fn on_event(
        &mut self,
        turn: TurnId,
        event: AsrStreamEvent,
        audio_len: Option<usize>,
        out: &mut impl Extend<Output>,
    ) -> Then {
        let Some(at) = self.records.iter().position(|r| r.turn == turn) else {
            return Then::Nothing;
        };
        let r = &mut self.records[at];
        match (event, &mut r.state) {
            (AsrStreamEvent::Opened, State::Opening) => {
                let len = r.ended.as_ref().map(|a| a.len()).or(audio_len).unwrap_or(0);
                r.state = State::Streaming { pushed: len };
                if len > 0 {
                    out.extend([Output::PushAsrStream {
                        turn,
                        samples: 0..len,
                    }]);
                }
                if r.ended.is_some() {
                    out.extend([Output::FinalizeAsrStream(turn)]);
                }
                Then::Nothing
            }
            (AsrStreamEvent::Unavailable, State::Opening)
            | (AsrStreamEvent::Failed(_), State::Opening | State::Streaming { .. }) => self.off(at),
            (AsrStreamEvent::Interim(text), State::Streaming { .. }) => Then::Interim(text),
            (AsrStreamEvent::Final { text, speech_final }, State::Streaming { .. }) => {
                if speech_final && r.ended.is_none() {
                    Then::Endpoint(text)
                } else {
                    Then::Interim(text)
                }
            }
            (AsrStreamEvent::Finalized(text), State::Streaming { .. }) if r.ended.is_some() => {
                self.records.remove(at);
                Then::Transcript(text)
            }
            // Out of order for its state (a provider that answers before it is asked): ignored.
            _ => Then::Nothing,
        }
    }

    /// Record `at` has no stream any more: its utterance goes the whole-utterance way, now if it
    /// ended, else when it ends.
    fn off(&mut self, at: usize) -> Then {
        let r = &mut self.records[at];
        r.state = State::Off { after_stream: true };
        match r.ended.take() {
            Some(audio) => {
                self.records.remove(at);
                Then::Transcribe(audio, true)
            }
            None => Then::Nothing,
        }
    }

    /// Where the samples of an `Output::PushAsrStream` are, once the utterance ended.
    pub(super) fn ended_audio(&self, turn: TurnId, samples: Range<usize>) -> Option<&[i16]> {
        self.records
            .iter()
            .find(|r| r.turn == turn)
            .and_then(|r| r.ended.as_deref())
            .and_then(|a| a.get(samples))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(out: &[Output]) -> Vec<String> {
        out.iter()
            .map(|o| match o {
                Output::OpenAsrStream(t) => format!("open {t}"),
                Output::PushAsrStream { turn, samples } => format!("push {turn} {samples:?}"),
                Output::FinalizeAsrStream(t) => format!("finalize {t}"),
                Output::CloseAsrStream(t) => format!("close {t}"),
                other => format!("{other:?}"),
            })
            .collect()
    }

    /// The session never has more than two records at once in practice (an utterance that
    /// begins cancels or merges all but the response's), so the bound is tested here.
    #[test]
    fn past_the_limit_an_utterance_is_transcribed_whole_from_the_first_provider() {
        let mut live = LiveStreams::new(true);
        let mut out = Vec::new();
        let audio: Arc<[i16]> = Arc::from(vec![0i16; 320]);
        for t in 1..=MAX_STREAMS as u64 {
            live.begin(TurnId(t), &mut out);
            assert_eq!(live.end(TurnId(t), &audio, 0, &mut out), None, "streamed");
        }
        out.clear();
        let over = TurnId(MAX_STREAMS as u64 + 1);
        live.begin(over, &mut out);
        assert!(out.is_empty(), "no stream opened: {:?}", names(&out));
        assert_eq!(live.end(over, &audio, 0, &mut out), Some(false));
        // Once one finalizes, the next utterance streams again.
        live.on_event(TurnId(1), AsrStreamEvent::Opened, None, &mut out);
        let done = live.on_event(
            TurnId(1),
            AsrStreamEvent::Finalized("hi".into()),
            None,
            &mut out,
        );
        assert_eq!(done, Then::Transcript("hi".into()));
        out.clear();
        live.begin(TurnId(9), &mut out);
        assert_eq!(names(&out), ["open 9"]);
    }

    #[test]
    fn a_new_utterance_closes_the_streams_of_dismissed_ones_and_keeps_finalizing_ones() {
        let mut live = LiveStreams::new(true);
        let mut out = Vec::new();
        let audio: Arc<[i16]> = Arc::from(vec![0i16; 320]);
        live.begin(TurnId(1), &mut out);
        live.on_event(TurnId(1), AsrStreamEvent::Opened, Some(320), &mut out);
        assert_eq!(live.end(TurnId(1), &audio, 0, &mut out), None);
        live.begin(TurnId(2), &mut out); // never ends
        out.clear();
        live.begin(TurnId(3), &mut out);
        assert_eq!(names(&out), ["close 2", "open 3"]);
        // Turn 1 still finalizes; turn 2's late events are ignored.
        let late = live.on_event(
            TurnId(2),
            AsrStreamEvent::Interim("x".into()),
            None,
            &mut out,
        );
        assert_eq!(late, Then::Nothing);
        let done = live.on_event(
            TurnId(1),
            AsrStreamEvent::Finalized("a".into()),
            None,
            &mut out,
        );
        assert_eq!(done, Then::Transcript("a".into()));
    }

    #[test]
    fn events_out_of_order_for_the_state_are_ignored() {
        let mut live = LiveStreams::new(true);
        let mut out = Vec::new();
        live.begin(TurnId(1), &mut out);
        // A transcript before the stream even connected, or before it was finalized.
        for e in [
            AsrStreamEvent::Finalized("early".into()),
            AsrStreamEvent::Interim("early".into()),
        ] {
            assert_eq!(
                live.on_event(TurnId(1), e, Some(0), &mut out),
                Then::Nothing
            );
        }
        live.on_event(TurnId(1), AsrStreamEvent::Opened, Some(0), &mut out);
        let early = live.on_event(
            TurnId(1),
            AsrStreamEvent::Finalized("early".into()),
            Some(640),
            &mut out,
        );
        assert_eq!(early, Then::Nothing, "not finalized yet");
        // A second `Opened` does not push the audio twice.
        out.clear();
        live.on_event(TurnId(1), AsrStreamEvent::Opened, Some(640), &mut out);
        assert!(out.is_empty(), "{:?}", names(&out));
    }

    #[test]
    fn without_a_streaming_asr_nothing_is_opened_and_every_utterance_goes_whole() {
        let mut live = LiveStreams::new(false);
        let mut out = Vec::new();
        let audio: Arc<[i16]> = Arc::from(vec![0i16; 320]);
        live.begin(TurnId(1), &mut out);
        live.feed(TurnId(1), 320, &mut out);
        assert!(out.is_empty());
        assert_eq!(live.end(TurnId(1), &audio, 0, &mut out), Some(false));
    }
}
