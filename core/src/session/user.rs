//! The user side: what the user is doing, as one enum (`User`), and the capture of their speech
//! (pre-roll, server VAD's decisions, the start and end of an utterance).
//!
//! The transition table is in the session's module docs. Whether speech during a response is a
//! barge-in is decided in `barge_in`; what the end of a turn starts on the bot side, in `response`.

use std::sync::Arc;

use super::{Event, Output, Session};
use crate::types::{SampleRate, Time, TurnId};
use crate::vad::VadEvent;

/// What the user is doing. An utterance is either being captured (`Speaking`, `Candidate`) or
/// being judged (`Judging`), never both: speech that begins while one is judged merges it.
#[derive(Debug, Default)]
pub(super) enum User {
    /// Nothing is being captured or judged.
    #[default]
    Silent,
    /// An utterance is being captured: a turn of its own, or a confirmed interruption.
    Speaking(Utterance),
    /// An utterance that began during a response is being captured and is not yet an
    /// interruption: a barge-in candidate. It holds (pauses) the response.
    Candidate(Utterance),
    /// A candidate's speech ended before it counted as an interruption: its transcript decides.
    /// It holds the response until then.
    Judging(Judged),
}

impl User {
    /// The utterance being captured, if any.
    pub(super) fn utterance(&self) -> Option<&Utterance> {
        match self {
            User::Speaking(u) | User::Candidate(u) => Some(u),
            User::Silent | User::Judging(_) => None,
        }
    }

    pub(super) fn utterance_mut(&mut self) -> Option<&mut Utterance> {
        match self {
            User::Speaking(u) | User::Candidate(u) => Some(u),
            User::Silent | User::Judging(_) => None,
        }
    }

    /// The barge-in candidate being captured, if any.
    pub(super) fn candidate(&self) -> Option<&Utterance> {
        match self {
            User::Candidate(u) => Some(u),
            User::Silent | User::Speaking(_) | User::Judging(_) => None,
        }
    }

    /// Whether the user side holds the response: a barge-in candidate, captured or judged.
    pub(super) fn holds_response(&self) -> bool {
        matches!(self, User::Candidate(_) | User::Judging(_))
    }

    /// Whether `turn` is the utterance being judged.
    pub(super) fn judging(&self, turn: TurnId) -> bool {
        matches!(self, User::Judging(j) if j.turn == turn)
    }

    /// Takes the utterance being judged, leaving the user silent; anything else stays.
    pub(super) fn take_judged(&mut self) -> Option<Judged> {
        match std::mem::take(self) {
            User::Judging(j) => Some(j),
            other => {
                *self = other;
                None
            }
        }
    }

    /// The candidate is an interruption: it is the user's turn now (`Candidate` → `Speaking`).
    pub(super) fn confirm(&mut self) {
        if let Some(u) = self.take_candidate() {
            *self = User::Speaking(u);
        }
    }

    /// Takes the barge-in candidate, leaving the user silent; anything else stays.
    pub(super) fn take_candidate(&mut self) -> Option<Utterance> {
        match std::mem::take(self) {
            User::Candidate(u) => Some(u),
            other => {
                *self = other;
                None
            }
        }
    }
}

/// Who decided that speech started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    Client,
    Vad,
}

/// The user's speech being captured.
#[derive(Debug)]
pub(super) struct Utterance {
    pub(super) turn: TurnId,
    pub(super) source: Source,
    pub(super) started_at: Time,
    /// Input position (samples) where the speech began.
    start_pos: u64,
    /// Voiced audio carried from an earlier barge-in fragment merged into this one.
    carried_voiced: u64,
    /// Input position just past the last voiced audio.
    pub(super) voiced_end: u64,
    /// Server VAD only: voiced audio counted window by window (pauses excluded).
    vad_voiced: u64,
    pub(super) audio: Vec<i16>,
}

impl Utterance {
    /// How much the user said: for server VAD the voiced windows themselves, so scattered
    /// voiced windows (noise the VAD let through, a distant voice) add up slowly; for a client's
    /// signals, the span from its `speech_start` to the last audio.
    pub(super) fn voiced_samples(&self) -> u64 {
        self.carried_voiced
            + match self.source {
                Source::Vad => self.vad_voiced,
                Source::Client => self.voiced_end.saturating_sub(self.start_pos),
            }
    }
}

/// A barge-in candidate whose speech ended before it counted as an interruption: its transcript
/// decides between a false alarm and a real interruption.
#[derive(Debug)]
pub(super) struct Judged {
    pub(super) turn: TurnId,
    pub(super) ended_at: Time,
    voiced: u64,
    pub(super) audio: Vec<i16>,
}

impl Session {
    /// A client's new server-VAD settings: the detector's from its next window, the pre-roll's
    /// at once (trimmed to the new length).
    pub(super) fn tune_vad(&mut self, t: super::VadTuning) {
        if let Some(vad) = &mut self.vad {
            vad.tune(t.threshold, t.silence_ms);
        }
        if let Some(ms) = t.prefix_padding_ms {
            self.cfg.preroll = std::time::Duration::from_millis(u64::from(ms));
            self.preroll_cap = SampleRate::INTERNAL.samples_in(self.cfg.preroll) as usize;
            let over = self.preroll.len().saturating_sub(self.preroll_cap);
            self.preroll.drain(..over);
        }
    }

    /// Keeps the last `preroll` of audio heard while no utterance is captured: a VAD onset comes
    /// after the first syllable, which the utterance must not miss.
    pub(super) fn push_preroll(&mut self, samples: &[i16]) {
        let cap = self.preroll_cap;
        if cap == 0 {
            return;
        }
        if samples.len() >= cap {
            self.preroll.clear();
            self.preroll.extend(&samples[samples.len() - cap..]);
        } else {
            let over = (self.preroll.len() + samples.len()).saturating_sub(cap);
            self.preroll.drain(..over);
            self.preroll.extend(samples);
        }
    }

    /// Runs server VAD (if on) over `samples`: its onsets begin utterances, its ends end the
    /// utterances it began, and its count of voiced audio measures them.
    pub(super) fn detect_voice(&mut self, now: Time, samples: &[i16]) {
        let floor = self.speech_floor();
        let Some(vad) = &mut self.vad else { return };
        if floor != self.vad_floor {
            self.vad_floor = floor;
            vad.set_speech_floor(floor);
        }
        let mut decisions = std::mem::take(&mut self.vad_events);
        decisions.clear();
        vad.push(samples, |e| decisions.push(e));
        let last_voiced = vad.last_voiced_end();
        let speech_voiced = vad.speech_voiced();
        for e in decisions.drain(..) {
            match e {
                VadEvent::SpeechStart { at } => {
                    if self.user.utterance().is_none() {
                        let preroll: Vec<i16> = self.preroll.drain(..).collect();
                        self.begin_speech(now, Source::Vad, at, preroll);
                    }
                }
                VadEvent::SpeechEnd { .. } => {
                    if self
                        .user
                        .utterance()
                        .is_some_and(|u| u.source == Source::Vad)
                    {
                        self.end_speech(now);
                    }
                }
            }
        }
        self.vad_events = decisions;
        if let Some(u) = self.user.utterance_mut() {
            if u.source == Source::Vad {
                u.voiced_end = u.voiced_end.max(last_voiced);
                u.vad_voiced = speech_voiced;
            }
        }
    }

    /// Speech began (`Silent` or `Judging` → `Speaking`, or `Candidate` during a response).
    pub(super) fn begin_speech(
        &mut self,
        now: Time,
        source: Source,
        start_pos: u64,
        audio: Vec<i16>,
    ) {
        let turn = self.new_turn();
        let mut u = Utterance {
            turn,
            source,
            started_at: now,
            start_pos,
            carried_voiced: 0,
            voiced_end: start_pos,
            vad_voiced: 0,
            audio,
        };
        if let Some(j) = self.user.take_judged() {
            // More speech before the last fragment's transcript arrived: one utterance, judged as
            // a whole. The fragment's transcription is cancelled.
            self.cancel_turn(j.turn);
            let mut audio = j.audio;
            audio.append(&mut u.audio);
            u.audio = audio;
            u.carried_voiced = j.voiced;
        }
        self.idle_since = None;
        // Speech during a response is a barge-in candidate, unless the client asked that
        // speech never interrupt: then it is a turn of its own, and the response plays on.
        self.user = if self.response.is_some() && self.cfg.interrupt_on_speech {
            User::Candidate(u)
        } else {
            User::Speaking(u)
        };
        self.live.begin(turn, &mut self.outputs);
        self.emit(Event::SpeechStarted { turn, at: now });
        self.sync_hold(now);
    }

    /// The utterance being captured ended (`Speaking` → `Silent`, `Candidate` → `Judging`).
    pub(super) fn end_speech(&mut self, now: Time) {
        let (u, candidate) = match std::mem::take(&mut self.user) {
            User::Speaking(u) => (u, false),
            User::Candidate(u) => (u, true),
            other => {
                self.user = other;
                return;
            }
        };
        if let Some(vad) = &mut self.vad {
            // The user's level is learned from what they said as a turn of their own or as a
            // confirmed interruption, never from a barge-in candidate still in doubt.
            let level = if u.source == Source::Vad && !candidate {
                vad.speech_level_dbfs()
            } else {
                None
            };
            vad.reset_state();
            if let Some(level) = level {
                self.learn_user_level(level);
            }
        }
        let voiced = u.voiced_samples();
        self.emit(Event::SpeechStopped {
            turn: u.turn,
            at: now,
            duration: SampleRate::INTERNAL.duration_of(voiced),
        });
        if candidate {
            let audio: Arc<[i16]> = Arc::from(u.audio.as_slice());
            self.user = User::Judging(Judged {
                turn: u.turn,
                ended_at: now,
                voiced,
                audio: u.audio,
            });
            if let Some(after_stream) = self.live.end(u.turn, &audio, 0, &mut self.outputs) {
                self.outputs.push_back(Output::StartAsr {
                    turn: u.turn,
                    audio,
                    after_stream,
                });
            }
        } else {
            // Speech that began while idle supersedes anything started meanwhile (a `text`
            // turn), when turns are answered and speech interrupts. Otherwise a response the
            // client asked for while the user spoke is the client's to cancel.
            if self.cfg.interrupt_on_speech && self.cfg.answer_turns {
                self.interrupt_response(now);
            }
            let mut audio = std::mem::take(&mut self.carry_audio);
            let carried = audio.len();
            audio.extend_from_slice(&u.audio);
            if self.cfg.answer_turns && self.response.is_none() {
                self.start_asr_response(now, u.turn, audio, carried);
            } else {
                // Into the history only: the client asks for an answer, or the response
                // playing on is followed by one.
                self.answer_pending |= self.cfg.answer_turns;
                self.start_transcription(u.turn, audio, carried);
            }
        }
        self.sync_hold(now);
    }

    /// The streaming ASR heard the speech of `turn` end (its endpoint), before the server VAD's
    /// hangover has passed: the utterance ends now. Ignored unless `turn` is the utterance being
    /// captured by server VAD (a client that sends its own `speech_end` decides when it stops).
    pub(super) fn endpoint(&mut self, now: Time, turn: TurnId) {
        let vad_utterance = self
            .user
            .utterance()
            .is_some_and(|u| u.turn == turn && u.source == Source::Vad);
        if vad_utterance {
            self.end_speech(now);
            self.check_interruption(now);
        }
    }
}
