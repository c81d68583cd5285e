//! Voice-activity detection: webrtc-vad's per-frame classifier plus the smoothing that turns its
//! noisy frame decisions into speech start and end decisions.
//!
//! Durations are measured in audio time (samples received), never in wall time, so a client that
//! streams faster or slower than real time gets the same decisions. Speech starts once `onset`
//! worth of consecutive frames is voiced (a click or a breath does not start a turn) and ends after
//! `hangover` worth of consecutive unvoiced frames (a pause between words does not end it).
//!
//! webrtc-vad keeps reporting speech for a few frames after it ends (its own short hangover), even
//! over digital silence. An energy gate (`min_level_dbfs`) overrides it: a frame too quiet to be
//! speech is unvoiced whatever the classifier says, so a 400 ms "mhm" measures 400 ms, not 500, and
//! a barge-in is judged on the speech itself.
//!
//! webrtc-vad's `Vad` wraps a raw pointer to libfvad's state and is therefore neither `Send` nor
//! `Sync`. The detector is owned by exactly one session, and a session is driven by exactly one
//! task at a time, so it must be able to move between threads with that task (tokio's work-stealing
//! scheduler moves tasks). libfvad keeps no global or thread-local state: its instance is a plain
//! heap struct touched only through `&mut`. `SendVad` therefore implements `Send` (never `Sync`).

use webrtc_vad::{SampleRate as VadRate, Vad, VadMode};

/// How eagerly webrtc-vad classifies a frame as speech.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggressiveness {
    /// Mode 0: the most speech, also the most false positives.
    Quality,
    /// Mode 1.
    LowBitrate,
    /// Mode 2: the default.
    Aggressive,
    /// Mode 3: the fewest false positives in noise.
    VeryAggressive,
}

/// The detector's settings. Frame length must be 10, 20 or 30 ms (webrtc-vad's constraint).
#[derive(Clone, Copy, Debug)]
pub struct VadConfig {
    /// webrtc-vad's mode.
    pub aggressiveness: Aggressiveness,
    /// Frame length in ms: 10, 20 or 30.
    pub frame_ms: u32,
    /// Voiced audio needed before speech starts, in ms (rounded up to whole frames).
    pub onset_ms: u32,
    /// Unvoiced audio that ends speech, in ms (rounded up to whole frames).
    pub hangover_ms: u32,
    /// Frames quieter than this (RMS, dB relative to full scale) are never speech.
    pub min_level_dbfs: f32,
}

impl Default for VadConfig {
    fn default() -> Self {
        VadConfig {
            aggressiveness: Aggressiveness::Aggressive,
            frame_ms: 20,
            onset_ms: 60,
            hangover_ms: 500,
            min_level_dbfs: -55.0,
        }
    }
}

/// A decision of the detector, with positions in input samples since the session started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VadEvent {
    /// Speech began at sample `at` (the first voiced frame of the onset run).
    SpeechStart {
        /// Position of the first voiced sample.
        at: u64,
    },
    /// Speech ended: `hangover` of unvoiced audio ended at `at`; the last voiced frame ended at
    /// `last_voiced_end`.
    SpeechEnd {
        /// Position where the hangover completed.
        at: u64,
        /// Position just past the last voiced frame.
        last_voiced_end: u64,
    },
}

/// webrtc-vad's detector, movable between threads. See the module docs for why this is sound.
struct SendVad(Vad);

// SAFETY: `Vad` owns a heap-allocated libfvad instance reached only through `&mut self`; libfvad has
// no global or thread-local state. Moving the owner to another thread is therefore sound. `Sync` is
// not implemented: the instance is never shared.
unsafe impl Send for SendVad {}

/// Frames incoming audio, classifies each frame and smooths the decisions (16 kHz input).
pub struct VoiceDetector {
    vad: SendVad,
    frame: Vec<i16>,
    frame_len: usize,
    onset_frames: u32,
    hangover_frames: u32,
    /// Mean square below which a frame is silence.
    min_mean_square: f64,
    voiced_run: u32,
    unvoiced_run: u32,
    speaking: bool,
    /// Samples classified so far (the end of the last whole frame).
    position: u64,
    last_voiced_end: u64,
}

impl std::fmt::Debug for VoiceDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceDetector")
            .field("speaking", &self.speaking)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl VoiceDetector {
    /// A detector for 16 kHz audio.
    ///
    /// # Panics
    /// If `config.frame_ms` is not 10, 20 or 30 (the config loader rejects such values first).
    pub fn new(config: VadConfig) -> Self {
        assert!(
            matches!(config.frame_ms, 10 | 20 | 30),
            "webrtc-vad frames are 10, 20 or 30 ms"
        );
        let mode = match config.aggressiveness {
            Aggressiveness::Quality => VadMode::Quality,
            Aggressiveness::LowBitrate => VadMode::LowBitrate,
            Aggressiveness::Aggressive => VadMode::Aggressive,
            Aggressiveness::VeryAggressive => VadMode::VeryAggressive,
        };
        let frame_len = (16 * config.frame_ms) as usize;
        let frames = |ms: u32| ms.div_ceil(config.frame_ms).max(1);
        VoiceDetector {
            vad: SendVad(Vad::new_with_rate_and_mode(VadRate::Rate16kHz, mode)),
            frame: Vec::with_capacity(frame_len),
            frame_len,
            onset_frames: frames(config.onset_ms),
            hangover_frames: frames(config.hangover_ms),
            min_mean_square: (32768.0 * 10f64.powf(f64::from(config.min_level_dbfs) / 20.0))
                .powi(2),
            voiced_run: 0,
            unvoiced_run: 0,
            speaking: false,
            position: 0,
            last_voiced_end: 0,
        }
    }

    /// Whether the smoothed state is "speech".
    pub fn is_speaking(&self) -> bool {
        self.speaking
    }

    /// Position just past the last frame classified as voiced.
    pub fn last_voiced_end(&self) -> u64 {
        self.last_voiced_end
    }

    /// Classifies `samples` (16 kHz) frame by frame, calling `on_event` for each decision.
    /// A partial frame is kept for the next call. Allocates nothing.
    pub fn push(&mut self, mut samples: &[i16], mut on_event: impl FnMut(VadEvent)) {
        while !samples.is_empty() {
            if self.frame.is_empty() && samples.len() >= self.frame_len {
                // A whole frame in the input (the usual case: clients send 20 ms frames) is
                // classified where it is, without a copy into `self.frame`.
                let (frame, rest) = samples.split_at(self.frame_len);
                samples = rest;
                let voiced = classify(&mut self.vad, self.min_mean_square, frame);
                self.step(voiced, &mut on_event);
                continue;
            }
            let take = (self.frame_len - self.frame.len()).min(samples.len());
            self.frame.extend_from_slice(&samples[..take]);
            samples = &samples[take..];
            if self.frame.len() == self.frame_len {
                let voiced = classify(&mut self.vad, self.min_mean_square, &self.frame);
                self.frame.clear();
                self.step(voiced, &mut on_event);
            }
        }
    }

    /// Forgets the smoothing state (e.g. after the client took over with its own signals).
    pub fn reset_state(&mut self) {
        self.voiced_run = 0;
        self.unvoiced_run = 0;
        self.speaking = false;
    }

    fn step(&mut self, voiced: bool, on_event: &mut impl FnMut(VadEvent)) {
        let frame_start = self.position;
        self.position += self.frame_len as u64;
        if voiced {
            self.voiced_run += 1;
            self.unvoiced_run = 0;
            self.last_voiced_end = self.position;
            if !self.speaking && self.voiced_run >= self.onset_frames {
                self.speaking = true;
                let run = u64::from(self.voiced_run - 1) * self.frame_len as u64;
                on_event(VadEvent::SpeechStart {
                    at: frame_start - run,
                });
            }
        } else {
            self.voiced_run = 0;
            self.unvoiced_run += 1;
            if self.speaking && self.unvoiced_run >= self.hangover_frames {
                self.speaking = false;
                on_event(VadEvent::SpeechEnd {
                    at: self.position,
                    last_voiced_end: self.last_voiced_end,
                });
            }
        }
    }
}

/// Whether one whole frame is voiced. A frame under the energy gate (mean square below
/// `min_mean_square`) is unvoiced whatever libfvad would say, so libfvad is not asked. The frame
/// is never empty and always a valid length, so libfvad cannot fail.
fn classify(vad: &mut SendVad, min_mean_square: f64, frame: &[i16]) -> bool {
    sum_of_squares(frame) as f64 / frame.len() as f64 >= min_mean_square
        && vad.0.is_voice_segment(frame).unwrap_or(false)
}

/// The sum of the squares of `samples`, exactly: a frame is at most 480 squares of at most 2^30
/// each. This runs on every inbound frame of every session, so on x86_64 it uses SSE2 (part of
/// the x86_64 baseline): `pmaddwd` squares eight samples and adds them in pairs, and the pair
/// sums are widened to 64 bits. A pair sum is at most 2 × 2^30 = 2^31, which fits a `u32` (read
/// as unsigned; `pmaddwd`'s signed result wraps only for two samples of -32768, to exactly 2^31).
/// LLVM's own vectorization of the plain sum squares four samples per 13 instructions.
fn sum_of_squares(samples: &[i16]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{
            __m128i, _mm_add_epi64, _mm_loadu_si128, _mm_madd_epi16, _mm_setzero_si128,
            _mm_storeu_si128, _mm_unpackhi_epi32, _mm_unpacklo_epi32,
        };
        let mut chunks = samples.chunks_exact(8);
        let mut lanes = [0u64; 2];
        // SAFETY: SSE2 is part of the x86_64 baseline, so every x86_64 CPU has these
        // instructions. Each load reads one `chunk`, eight `i16`s: 16 readable bytes. The store
        // writes `lanes`: 16 writable bytes. Both are unaligned loads and stores.
        unsafe {
            let zero = _mm_setzero_si128();
            let mut acc = zero;
            for chunk in chunks.by_ref() {
                let v = _mm_loadu_si128(chunk.as_ptr().cast::<__m128i>());
                let pairs = _mm_madd_epi16(v, v);
                acc = _mm_add_epi64(acc, _mm_unpacklo_epi32(pairs, zero));
                acc = _mm_add_epi64(acc, _mm_unpackhi_epi32(pairs, zero));
            }
            _mm_storeu_si128(lanes.as_mut_ptr().cast::<__m128i>(), acc);
        }
        lanes[0] + lanes[1] + sum_of_squares_scalar(chunks.remainder())
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        sum_of_squares_scalar(samples)
    }
}

fn sum_of_squares_scalar(samples: &[i16]) -> u64 {
    samples
        .iter()
        .map(|&x| u64::from(x.unsigned_abs()).pow(2))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sum_of_squares_is_exact_for_every_length_and_the_extremes() {
        let reference = |s: &[i16]| {
            s.iter()
                .map(|&x| (i64::from(x) * i64::from(x)) as u64)
                .sum::<u64>()
        };
        let mut rng = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng as i16
        };
        for len in 0..=40 {
            let random: Vec<i16> = (0..len).map(|_| next()).collect();
            assert_eq!(sum_of_squares(&random), reference(&random), "len {len}");
        }
        for extreme in [i16::MIN, i16::MAX, -1, 0] {
            let frame = vec![extreme; 480];
            assert_eq!(sum_of_squares(&frame), reference(&frame), "{extreme}");
            assert_eq!(
                sum_of_squares(&frame[1..]),
                reference(&frame[1..]),
                "{extreme}, odd"
            );
        }
        let alternating: Vec<i16> = (0..480)
            .map(|i| if i % 3 == 0 { i16::MIN } else { i16::MAX })
            .collect();
        assert_eq!(sum_of_squares(&alternating), reference(&alternating));
    }

    /// A loud vowel-like buzz: a 150 Hz fundamental with harmonics.
    fn voiced(ms: usize) -> Vec<i16> {
        (0..ms * 16)
            .map(|i| {
                let t = i as f64 / 16000.0;
                let s: f64 = (1..=8)
                    .map(|h| (2.0 * std::f64::consts::PI * 150.0 * h as f64 * t).sin() / h as f64)
                    .sum();
                (s * 6000.0) as i16
            })
            .collect()
    }

    fn events(det: &mut VoiceDetector, audio: &[i16], chunk: usize) -> Vec<VadEvent> {
        let mut out = Vec::new();
        for c in audio.chunks(chunk) {
            det.push(c, |e| out.push(e));
        }
        out
    }

    #[test]
    fn silence_never_starts_speech() {
        let mut det = VoiceDetector::new(VadConfig::default());
        assert!(events(&mut det, &vec![0; 16000 * 3], 320).is_empty());
    }

    #[test]
    fn speech_starts_after_onset_and_ends_after_hangover() {
        let mut det = VoiceDetector::new(VadConfig::default());
        let mut audio = vec![0i16; 16 * 400];
        audio.extend(voiced(1000));
        audio.extend(vec![0; 16 * 1000]);
        let ev = events(&mut det, &audio, 160);
        assert_eq!(ev.len(), 2, "{ev:?}");
        let VadEvent::SpeechStart { at } = ev[0] else {
            panic!("{ev:?}")
        };
        // Starts within a couple of frames of the real onset at 400 ms.
        assert!((16 * 380..=16 * 460).contains(&at), "start at {at}");
        let VadEvent::SpeechEnd {
            at,
            last_voiced_end,
        } = ev[1]
        else {
            panic!("{ev:?}")
        };
        assert!(
            (16 * 1380..=16 * 1420).contains(&last_voiced_end),
            "last voiced at {last_voiced_end}"
        );
        assert_eq!(at - last_voiced_end, 16 * 500);
    }

    #[test]
    fn a_short_click_does_not_start_speech() {
        let mut det = VoiceDetector::new(VadConfig {
            onset_ms: 200,
            ..VadConfig::default()
        });
        let mut audio = vec![0i16; 16 * 400];
        audio.extend(voiced(30));
        audio.extend(vec![0; 16 * 1000]);
        assert!(events(&mut det, &audio, 333).is_empty());
    }

    #[test]
    fn chunking_does_not_change_decisions() {
        let mut audio = vec![0i16; 16 * 300];
        audio.extend(voiced(700));
        audio.extend(vec![0; 16 * 700]);
        let a = events(&mut VoiceDetector::new(VadConfig::default()), &audio, 320);
        let b = events(&mut VoiceDetector::new(VadConfig::default()), &audio, 77);
        assert_eq!(a, b);
    }
}
