//! The barge-in rules: what user speech during a response does to it.
//!
//! - **Onset holds.** Speech that begins during a response is a barge-in candidate
//!   (`User::Candidate`): the response is held at once (`PlaybackPaused` if audio had started),
//!   and stays held while the candidate is captured or judged (`sync_hold`).
//! - **The speech floor.** While a response is under way, server VAD hears only speech within
//!   `barge_in_level_db` of the user's own level, learned from their turns and confirmed
//!   interruptions (never from a candidate in doubt): babble and a voice across the room neither
//!   pause nor interrupt.
//! - **Voiced duration interrupts.** A candidate that has voiced `min_interruption` is an
//!   interruption, decided that moment (`check_interruption`): the response is cancelled and the
//!   utterance becomes the user's turn.
//! - **A transcript judges.** A candidate that ended sooner is judged by its transcript
//!   (`resolve_judged`): nothing, only backchannel words (`is_backchannel`) or an ASR failure is a
//!   false alarm, and the response resumes from the sample where it stopped; real words interrupt
//!   it and are answered.
//! - **Silence is a false alarm.** A candidate still captured `false_interruption_timeout` after
//!   it began is dropped as a false alarm (`time_out_candidate`); a client's later `speech_end`
//!   finds nothing to end.
//! - **More speech joins.** Speech that begins while a fragment is judged merges with it: one
//!   utterance, judged as a whole (`Session::begin_speech`).

use super::{Event, ProviderFailure, Session, Stage};
use crate::types::{SampleRate, Time};

impl Session {
    /// The speech floor for server VAD (dBFS): during a response, the user's own level less
    /// `barge_in_level_db`; otherwise none.
    pub(super) fn speech_floor(&self) -> Option<f32> {
        self.response
            .as_ref()
            .and(self.user_level_dbfs)
            .zip(self.cfg.barge_in_level_db)
            .map(|(level, margin)| level - margin)
    }

    /// Learns the user's speech level from an utterance that was theirs (a moving average).
    pub(super) fn learn_user_level(&mut self, level: f32) {
        self.user_level_dbfs = Some(match self.user_level_dbfs {
            Some(old) => 0.7 * old + 0.3 * level,
            None => level,
        });
    }

    /// Pauses or resumes the response to match the user side.
    pub(super) fn sync_hold(&mut self, now: Time) {
        // A barge-in candidate holds the answer, and so does a client that is not connected.
        let hold = self.user.holds_response() || self.disconnected;
        let pacing = self.pacing;
        let Some(r) = &mut self.response else { return };
        if let Some(event) = r.set_held(hold, now, &pacing) {
            self.emit(event);
        }
    }

    /// A barge-in candidate that has lasted `min_interruption` is an interruption, decided now.
    pub(super) fn check_interruption(&mut self, now: Time) {
        let min = SampleRate::INTERNAL.samples_in(self.cfg.min_interruption);
        let reached = self
            .user
            .candidate()
            .is_some_and(|u| u.voiced_samples() >= min);
        if reached {
            self.user.confirm();
            self.interrupt_response(now);
            self.sync_hold(now);
        }
    }

    /// A candidate on which nothing followed for `false_interruption_timeout` is a false alarm.
    pub(super) fn time_out_candidate(&mut self, now: Time) {
        let timeout = self.cfg.false_interruption_timeout;
        let timed_out = self
            .user
            .candidate()
            .is_some_and(|u| now >= u.started_at + timeout);
        if timed_out {
            // The client's later `speech_end`, if any, finds no speech in progress and is ignored.
            if let Some(u) = self.user.take_candidate() {
                // Nothing of the candidate's turn may run on (a streaming ASR's stream).
                self.cancel_turn(u.turn);
                self.emit(Event::FalseAlarm { turn: u.turn });
            }
            self.sync_hold(now);
        }
    }

    /// The transcript of a barge-in candidate decides: a backchannel (or nothing) is a false
    /// alarm, real words interrupt.
    pub(super) fn resolve_judged(&mut self, now: Time, result: Result<String, ProviderFailure>) {
        let Some(j) = self.user.take_judged() else {
            return;
        };
        self.live.settled(j.turn, &mut self.outputs);
        let text = match result {
            Ok(text) => text.trim().to_owned(),
            Err(failure) => {
                // Unknown words must not cut the bot off: treat it as a false alarm.
                self.emit(Event::ProviderError {
                    turn: j.turn,
                    stage: Stage::Asr,
                    failure,
                });
                String::new()
            }
        };
        self.emit(Event::Transcript {
            turn: j.turn,
            text: text.clone(),
            is_final: true,
        });
        let false_alarm = self.is_backchannel(&text);
        if self.response.is_some() && false_alarm {
            self.emit(Event::FalseAlarm { turn: j.turn });
            self.release_turn(j.turn);
            self.sync_hold(now);
            return;
        }
        if text.is_empty() {
            // Nothing said and nothing to resume.
            self.release_turn(j.turn);
            self.sync_hold(now);
            return;
        }
        self.interrupt_response(now);
        if !self.cfg.answer_turns {
            // Words for the history only (the client answers turns itself).
            let mut audio = std::mem::take(&mut self.carry_audio);
            if audio.is_empty() {
                self.release_turn(j.turn);
                self.add_unanswered_words(now, j.turn, text);
            } else {
                let carried = audio.len();
                audio.extend_from_slice(&j.audio);
                self.start_transcription(j.turn, audio, carried);
            }
        } else if self.carry_audio.is_empty() {
            self.start_text_response(j.turn, j.ended_at, now, &text);
        } else {
            // The cancelled turn's words are unknown: transcribe both utterances together.
            let mut audio = std::mem::take(&mut self.carry_audio);
            let carried = audio.len();
            audio.extend_from_slice(&j.audio);
            self.start_asr_response(j.ended_at, j.turn, audio, carried);
        }
        self.sync_hold(now);
    }

    /// Whether `text` is empty or only backchannel words.
    fn is_backchannel(&self, text: &str) -> bool {
        let normalized: String = text
            .chars()
            .map(|c| {
                if c.is_alphanumeric() || c == '\'' || c == '-' {
                    c.to_ascii_lowercase()
                } else {
                    ' '
                }
            })
            .collect();
        let normalized = normalized.split_whitespace().collect::<Vec<_>>().join(" ");
        if normalized.is_empty() {
            return true;
        }
        if self.cfg.backchannels.contains(&normalized) {
            return true;
        }
        normalized
            .split(' ')
            .all(|w| self.cfg.backchannels.iter().any(|b| b == w))
    }
}
