//! Playback of a response: the real-time clock of what the user has heard (`Playback`, with its
//! state), the pacing of the audio sent ahead of it (`Pacing`), and the synthesized audio waiting
//! to be sent (`PcmQueue`).
//!
//! Nothing here knows about turns or providers; `response` drives it.

use std::collections::VecDeque;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::SessionConfig;
use crate::types::{SampleRate, Time};

/// Where a response's audio stands. The transitions (`response` emits the events):
///
/// | state | on | next | event |
/// |---|---|---|---|
/// | `NotStarted` | the first synthesized audio is sent | `Playing` | `AudioStart` |
/// | `NotStarted` | a barge-in candidate holds the response | `HeldBeforeStart` | - |
/// | `HeldBeforeStart` | the hold ends (a false alarm) | `NotStarted` | - |
/// | `Playing` | a barge-in candidate holds the response | `Paused` | `PlaybackPaused` |
/// | `Paused` | the hold ends (a false alarm) | `Playing` | `PlaybackResumed` |
///
/// The clock runs only while `Playing`. A response completes only while not held; it can be
/// interrupted or fail in any state.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) enum PlayState {
    /// No audio sent yet: it starts as soon as some is synthesized.
    #[default]
    NotStarted,
    /// No audio sent yet, and none may be: a barge-in candidate holds the response.
    HeldBeforeStart,
    /// Audio is being sent, and the clock runs.
    Playing,
    /// Stopped mid-answer by a barge-in candidate: nothing is sent, and the clock stands still.
    Paused,
}

/// The real-time playback clock: how much of the response the user has heard.
///
/// It advances at real time while playing, never past what was sent (a client's player that runs
/// dry waits for more), and stops while paused.
#[derive(Debug, Default)]
pub(super) struct Playback {
    state: PlayState,
    anchor_time: Time,
    anchor_pos: u64,
    played: u64,
}

impl Playback {
    pub(super) fn state(&self) -> PlayState {
        self.state
    }

    /// Audio has been sent (playing or paused).
    pub(super) fn started(&self) -> bool {
        matches!(self.state, PlayState::Playing | PlayState::Paused)
    }

    /// A barge-in candidate holds the response.
    pub(super) fn held(&self) -> bool {
        matches!(self.state, PlayState::HeldBeforeStart | PlayState::Paused)
    }

    /// Samples heard, as of the last `advance`.
    pub(super) fn played(&self) -> u64 {
        self.played
    }

    /// `NotStarted` → `Playing`: the first audio goes out now.
    pub(super) fn start(&mut self, now: Time) {
        debug_assert_eq!(self.state, PlayState::NotStarted);
        self.run(now);
    }

    /// A barge-in candidate holds the response. Returns whether audio stops (`Playing` →
    /// `Paused`), which the client is told.
    pub(super) fn hold(&mut self, now: Time, sent: u64, rate: SampleRate) -> bool {
        match self.state {
            PlayState::NotStarted => {
                self.state = PlayState::HeldBeforeStart;
                false
            }
            PlayState::Playing => {
                self.advance(now, sent, rate);
                self.state = PlayState::Paused;
                true
            }
            PlayState::HeldBeforeStart | PlayState::Paused => false,
        }
    }

    /// The hold ends. Returns whether audio resumes (`Paused` → `Playing`), which the client is
    /// told.
    pub(super) fn release(&mut self, now: Time) -> bool {
        match self.state {
            PlayState::HeldBeforeStart => {
                self.state = PlayState::NotStarted;
                false
            }
            PlayState::Paused => {
                self.run(now);
                true
            }
            PlayState::NotStarted | PlayState::Playing => false,
        }
    }

    fn run(&mut self, now: Time) {
        self.state = PlayState::Playing;
        self.anchor_time = now;
        self.anchor_pos = self.played;
    }

    /// Sets the clock back to `pos` (at most where it is), while paused: the client dropped what
    /// it had not played.
    pub(super) fn rewind(&mut self, pos: u64) {
        debug_assert_eq!(self.state, PlayState::Paused);
        self.played = self.played.min(pos);
    }

    /// Moves the clock to `now`, if it is running; `sent` samples are all the player has.
    pub(super) fn advance(&mut self, now: Time, sent: u64, rate: SampleRate) {
        if self.state != PlayState::Playing {
            return;
        }
        let pos = self.anchor_pos + rate.samples_in(now.saturating_since(self.anchor_time));
        if pos >= sent {
            // Underrun: the player waits; the clock restarts when more audio is sent.
            self.played = sent;
            self.anchor_time = now;
            self.anchor_pos = sent;
        } else {
            self.played = pos;
        }
    }

    /// When the clock reaches `pos`, if it is running.
    pub(super) fn time_of(&self, pos: u64, rate: SampleRate) -> Option<Time> {
        // Rounded up, so that at the returned time the clock has reached `pos`.
        let samples = u128::from(pos.saturating_sub(self.anchor_pos));
        let nanos = (samples * 1_000_000_000).div_ceil(u128::from(rate.hz()));
        (self.state == PlayState::Playing)
            .then(|| self.anchor_time + Duration::from_nanos(nanos as u64))
    }
}

/// How response audio is paced, in samples at the output rate, from the session's settings.
#[derive(Clone, Copy, Debug)]
pub(super) struct Pacing {
    pub(super) rate: SampleRate,
    /// One binary frame.
    pub(super) frame: u64,
    /// How far audio is sent ahead of the playback clock (at least one frame).
    pub(super) lead: u64,
    /// Audio sent per pacing wake-up (whole frames; at most the lead).
    pub(super) batch: u64,
    /// Synthesized-but-unsent audio above which the next sentence's TTS waits.
    pub(super) backlog: u64,
    /// `SessionConfig::client_discards_on_pause`.
    pub(super) discards: bool,
    /// Frames sent are kept until surely played: the client may drop them
    /// (`client_discards_on_pause`) or lose them with its connection (`resumable`).
    pub(super) retains: bool,
}

impl Pacing {
    pub(super) fn new(cfg: &SessionConfig) -> Self {
        let rate = cfg.output_rate;
        let frame = rate.samples_in_ms(u64::from(cfg.output_frame_ms)).max(1);
        // At least one frame is always in flight, whatever the configured lead.
        let lead = rate.samples_in(cfg.playback_lead).max(frame);
        let batch = rate.samples_in(cfg.pacing_interval).div_ceil(frame).max(1) * frame;
        Pacing {
            rate,
            frame,
            lead,
            batch: batch.min(lead.max(frame)),
            backlog: rate.samples_in(cfg.max_tts_backlog),
            discards: cfg.client_discards_on_pause,
            retains: cfg.client_discards_on_pause || cfg.resumable,
        }
    }
}

/// Synthesized audio waiting to be sent, as PCM16LE: the TTS chunks as they came, each in an
/// allocation of its own size. A frame is a zero-copy slice of a chunk; only a frame that spans
/// two chunks is copied. One growing buffer would be reallocated and copied as an answer's backlog
/// grows (up to `max_tts_backlog_ms`), and would keep its largest size until the answer ends.
#[derive(Debug, Default)]
pub(super) struct PcmQueue {
    chunks: VecDeque<Bytes>,
    /// Bytes in `chunks`.
    len: usize,
}

impl PcmQueue {
    /// Bytes waiting.
    pub(super) fn len(&self) -> usize {
        self.len
    }

    /// Samples waiting.
    pub(super) fn samples(&self) -> u64 {
        self.len() as u64 / 2
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Puts audio back at the front, to be sent again.
    pub(super) fn push_front(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        self.len += chunk.len();
        self.chunks.push_front(chunk);
    }

    /// Appends a chunk of samples.
    pub(super) fn push(&mut self, samples: &[i16]) {
        if samples.is_empty() {
            return;
        }
        let mut chunk = BytesMut::with_capacity(samples.len() * 2);
        put_pcm(&mut chunk, samples);
        self.len += chunk.len();
        self.chunks.push_back(chunk.freeze());
    }

    /// Takes the first `n` bytes (at most `len`).
    pub(super) fn split_to(&mut self, n: usize) -> Bytes {
        let n = n.min(self.len);
        self.len -= n;
        match self.chunks.front_mut() {
            Some(front) if front.len() > n => return front.split_to(n),
            Some(front) if front.len() == n => return self.chunks.pop_front().unwrap_or_default(),
            _ => {}
        }
        let mut frame = BytesMut::with_capacity(n);
        while frame.len() < n {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            let need = n - frame.len();
            if front.len() > need {
                frame.extend_from_slice(&front.split_to(need));
            } else {
                frame.extend_from_slice(front);
                self.chunks.pop_front();
            }
        }
        frame.freeze()
    }
}

/// Appends `samples` to `dst` as PCM16LE. It goes through a stack block, so the compiler
/// vectorizes the conversion and the append is one copy per block: this runs for every sample of
/// every answer.
pub(super) fn put_pcm(dst: &mut BytesMut, samples: &[i16]) {
    const BLOCK: usize = 256;
    dst.reserve(samples.len() * 2);
    let mut block = [0u8; BLOCK * 2];
    for chunk in samples.chunks(BLOCK) {
        for (b, s) in block.chunks_exact_mut(2).zip(chunk) {
            b.copy_from_slice(&s.to_le_bytes());
        }
        dst.extend_from_slice(&block[..chunk.len() * 2]);
    }
}
