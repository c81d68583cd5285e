//! Voice-activity detection: a per-window classifier (Silero, by default, or webrtc-vad) plus
//! the smoothing that turns its noisy window decisions into speech start and end decisions.
//!
//! Durations are measured in audio time (samples received), never in wall time, so a client that
//! streams faster or slower than real time gets the same decisions. Speech starts once `onset`
//! worth of consecutive windows is voiced (a click or a breath does not start a turn) and ends after
//! `hangover` worth of consecutive unvoiced windows (a pause between words does not end it).
//!
//! **Engines.** [`Engine::Silero`] is a small neural network (see `silero`): 32 ms windows, a
//! speech probability per window, and a threshold with hysteresis: a window starts (or continues
//! an onset run) at `start_threshold`, and once speech is under way it stays voiced down to
//! `end_threshold`. Stationary noise, hum, clicks and coughs stay far below either.
//! [`Engine::WebRtc`] is webrtc-vad's energy/GMM classifier (10, 20 or 30 ms frames): cheap, but
//! loud or low-frequency noise reads as speech to it.
//!
//! **The energy gate** (`min_level_dbfs`) runs first, for both: a window too quiet to be speech is
//! unvoiced whatever the classifier would say. webrtc-vad keeps reporting speech for a few frames
//! after it ends, even over digital silence; the gate makes a 400 ms "mhm" measure 400 ms. For
//! Silero the gate also saves the model call, so a silent session costs no inference. The model's
//! recurrent state must still follow the audio across such gaps, so the model keeps running for
//! `SILERO_GATE_TAIL` windows after the gate closes (its state then settles on the quiet); only
//! after that are quiet windows skipped, with the state left as it was. Decisions with and without
//! the gate agree on the speech fixtures (tested).
//!
//! **The speech floor** (`set_speech_floor`) is a second, movable energy threshold the session
//! raises while the bot speaks (see the session's barge-in rules): windows below it are unvoiced.
//!
//! webrtc-vad's `Vad` wraps a raw pointer to libfvad's state and is therefore neither `Send` nor
//! `Sync`. The detector is owned by exactly one session, and a session is driven by exactly one
//! task at a time, so it must be able to move between threads with that task (tokio's work-stealing
//! scheduler moves tasks). libfvad keeps no global or thread-local state: its instance is a plain
//! heap struct touched only through `&mut`. `SendVad` therefore implements `Send` (never `Sync`).

pub mod silero;

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

/// The per-window classifier and its own settings.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Engine {
    /// Silero VAD v6 (32 ms windows): a speech probability per window.
    Silero {
        /// A window at or above this probability is voiced when no speech is under way.
        start_threshold: f32,
        /// Once speech (or an onset run) is under way, windows stay voiced down to this.
        end_threshold: f32,
    },
    /// webrtc-vad.
    WebRtc {
        /// webrtc-vad's mode.
        aggressiveness: Aggressiveness,
        /// Frame length in ms: 10, 20 or 30.
        frame_ms: u32,
    },
}

impl Engine {
    /// Silero with the thresholds Silero's own streaming iterator uses (0.5, then 0.35).
    pub const SILERO: Engine = Engine::Silero {
        start_threshold: 0.5,
        end_threshold: 0.35,
    };
    /// webrtc-vad in mode 2 with 20 ms frames.
    pub const WEBRTC: Engine = Engine::WebRtc {
        aggressiveness: Aggressiveness::Aggressive,
        frame_ms: 20,
    };

    /// The classifier's window length in samples at 16 kHz.
    pub fn window_samples(self) -> usize {
        match self {
            Engine::Silero { .. } => silero::WINDOW,
            Engine::WebRtc { frame_ms, .. } => 16 * frame_ms as usize,
        }
    }
}

/// Quiet windows (under the energy gate) the Silero model still runs on after the gate closes,
/// so its recurrent state settles on the quiet before calls stop: 10 windows, 320 ms.
pub const SILERO_GATE_TAIL: u32 = 10;

/// The detector's settings.
#[derive(Clone, Copy, Debug)]
pub struct VadConfig {
    /// The classifier.
    pub engine: Engine,
    /// Voiced audio needed before speech starts, in ms (rounded up to whole windows).
    pub onset_ms: u32,
    /// Unvoiced audio that ends speech, in ms (rounded up to whole windows).
    pub hangover_ms: u32,
    /// Windows quieter than this (RMS, dB relative to full scale) are never speech.
    pub min_level_dbfs: f32,
}

impl Default for VadConfig {
    fn default() -> Self {
        VadConfig {
            engine: Engine::SILERO,
            onset_ms: 60,
            hangover_ms: 500,
            min_level_dbfs: -55.0,
        }
    }
}

/// A decision of the detector, with positions in input samples since the session started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VadEvent {
    /// Speech began at sample `at` (the first voiced window of the onset run).
    SpeechStart {
        /// Position of the first voiced sample.
        at: u64,
    },
    /// Speech ended: `hangover` of unvoiced audio ended at `at`; the last voiced window ended at
    /// `last_voiced_end`.
    SpeechEnd {
        /// Position where the hangover completed.
        at: u64,
        /// Position just past the last voiced window.
        last_voiced_end: u64,
    },
}

/// webrtc-vad's detector, movable between threads. See the module docs for why this is sound.
struct SendVad(Vad);

// SAFETY: `Vad` owns a heap-allocated libfvad instance reached only through `&mut self`; libfvad has
// no global or thread-local state. Moving the owner to another thread is therefore sound. `Sync` is
// not implemented: the instance is never shared.
unsafe impl Send for SendVad {}

/// The classifier of one detector.
enum Classifier {
    WebRtc(SendVad),
    Silero {
        stream: Box<silero::Stream>,
        start: f32,
        end: f32,
        /// Consecutive windows under the energy gate so far.
        quiet_run: u32,
        /// Quiet windows the model still runs on (`None`: all of them, for tests).
        tail: Option<u32>,
    },
}

/// Frames incoming audio, classifies each window and smooths the decisions (16 kHz input).
pub struct VoiceDetector {
    classifier: Classifier,
    frame: Vec<i16>,
    frame_len: usize,
    onset_frames: u32,
    hangover_frames: u32,
    /// Mean square below which a window is silence.
    min_mean_square: f64,
    /// Mean square below which a window is not speech, for now (at least `min_mean_square`).
    floor_mean_square: f64,
    voiced_run: u32,
    unvoiced_run: u32,
    speaking: bool,
    /// Samples classified so far (the end of the last whole window).
    position: u64,
    last_voiced_end: u64,
    /// Voiced samples of the speech under way (the onset run included), and the sum of their
    /// windows' mean squares: the speech's amount and level.
    speech_voiced: u64,
    speech_energy: f64,
    speech_windows: u32,
    /// Model calls made (Silero), for benchmarks and the gate's tests.
    model_calls: u64,
}

impl std::fmt::Debug for VoiceDetector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceDetector")
            .field("speaking", &self.speaking)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

/// The mean square of a full-scale-relative RMS level in dB.
pub fn mean_square_of_dbfs(dbfs: f32) -> f64 {
    (32768.0 * 10f64.powf(f64::from(dbfs) / 20.0)).powi(2)
}

/// The RMS level in dB relative to full scale of a mean square.
pub fn dbfs_of_mean_square(mean_square: f64) -> f32 {
    (10.0 * (mean_square.max(1e-3) / (32768.0 * 32768.0)).log10()) as f32
}

impl VoiceDetector {
    /// A detector for 16 kHz audio.
    ///
    /// # Panics
    /// If a webrtc-vad `frame_ms` is not 10, 20 or 30 (the config loader rejects such values
    /// first).
    pub fn new(config: VadConfig) -> Self {
        let classifier = match config.engine {
            Engine::WebRtc {
                aggressiveness,
                frame_ms,
            } => {
                assert!(
                    matches!(frame_ms, 10 | 20 | 30),
                    "webrtc-vad frames are 10, 20 or 30 ms"
                );
                let mode = match aggressiveness {
                    Aggressiveness::Quality => VadMode::Quality,
                    Aggressiveness::LowBitrate => VadMode::LowBitrate,
                    Aggressiveness::Aggressive => VadMode::Aggressive,
                    Aggressiveness::VeryAggressive => VadMode::VeryAggressive,
                };
                Classifier::WebRtc(SendVad(Vad::new_with_rate_and_mode(
                    VadRate::Rate16kHz,
                    mode,
                )))
            }
            Engine::Silero {
                start_threshold,
                end_threshold,
            } => Classifier::Silero {
                stream: Box::new(silero::Stream::new()),
                start: start_threshold,
                end: end_threshold,
                // A new session has heard nothing: no tail to run until the first loud window.
                quiet_run: SILERO_GATE_TAIL,
                tail: Some(SILERO_GATE_TAIL),
            },
        };
        let frame_len = config.engine.window_samples();
        let window_ms = frame_len as u32 / 16;
        let frames = |ms: u32| ms.div_ceil(window_ms).max(1);
        let min_mean_square = mean_square_of_dbfs(config.min_level_dbfs);
        VoiceDetector {
            classifier,
            frame: Vec::with_capacity(frame_len),
            frame_len,
            onset_frames: frames(config.onset_ms),
            hangover_frames: frames(config.hangover_ms),
            min_mean_square,
            floor_mean_square: min_mean_square,
            voiced_run: 0,
            unvoiced_run: 0,
            speaking: false,
            position: 0,
            last_voiced_end: 0,
            speech_voiced: 0,
            speech_energy: 0.0,
            speech_windows: 0,
            model_calls: 0,
        }
    }

    /// New settings from the next window on: Silero's start threshold (speech continues down
    /// to 0.15 less, as with the defaults), and the unvoiced audio that ends speech. webrtc-vad
    /// has no threshold to set.
    pub fn tune(&mut self, threshold: Option<f32>, hangover_ms: Option<u32>) {
        if let (Some(t), Classifier::Silero { start, end, .. }) = (threshold, &mut self.classifier)
        {
            *start = t.clamp(0.0, 1.0);
            *end = (*start - 0.15).max(0.0);
        }
        if let Some(ms) = hangover_ms {
            let window_ms = self.frame_len as u32 / 16;
            self.hangover_frames = ms.div_ceil(window_ms).max(1);
        }
    }

    /// The same detector with Silero's energy gate off: the model runs on every window. For
    /// tests and benchmarks that compare the gated decisions with these.
    #[doc(hidden)]
    pub fn ungated(mut self) -> Self {
        if let Classifier::Silero { tail, .. } = &mut self.classifier {
            *tail = None;
        }
        self
    }

    /// Position just past the last window classified as voiced.
    pub fn last_voiced_end(&self) -> u64 {
        self.last_voiced_end
    }

    /// Voiced samples of the speech under way (windows counted one by one, gaps excluded), or of
    /// the speech that ended last.
    pub fn speech_voiced(&self) -> u64 {
        self.speech_voiced
    }

    /// The RMS level (dBFS) of the voiced windows of the speech under way, or of the speech that
    /// ended last; `None` before any speech.
    pub fn speech_level_dbfs(&self) -> Option<f32> {
        (self.speech_windows > 0)
            .then(|| dbfs_of_mean_square(self.speech_energy / f64::from(self.speech_windows)))
    }

    /// Windows quieter than `dbfs` (RMS) are unvoiced from the next window on, on top of the
    /// energy gate; `None` puts the floor back to the gate.
    pub fn set_speech_floor(&mut self, dbfs: Option<f32>) {
        self.floor_mean_square = dbfs
            .map_or(self.min_mean_square, mean_square_of_dbfs)
            .max(self.min_mean_square);
    }

    /// Silero model calls made so far (0 for webrtc-vad).
    pub fn model_calls(&self) -> u64 {
        self.model_calls
    }

    /// Classifies `samples` (16 kHz) window by window, calling `on_event` for each decision.
    /// A partial window is kept for the next call. Allocates nothing.
    pub fn push(&mut self, mut samples: &[i16], mut on_event: impl FnMut(VadEvent)) {
        while !samples.is_empty() {
            if self.frame.is_empty() && samples.len() >= self.frame_len {
                // A whole window in the input (the usual case for webrtc-vad: clients send 20 ms
                // frames) is classified where it is, without a copy into `self.frame`.
                let (frame, rest) = samples.split_at(self.frame_len);
                samples = rest;
                self.classify_and_step(frame, &mut on_event);
                continue;
            }
            let take = (self.frame_len - self.frame.len()).min(samples.len());
            self.frame.extend_from_slice(&samples[..take]);
            samples = &samples[take..];
            if self.frame.len() == self.frame_len {
                let frame = std::mem::take(&mut self.frame);
                self.classify_and_step(&frame, &mut on_event);
                self.frame = frame;
                self.frame.clear();
            }
        }
    }

    /// Forgets the smoothing state (e.g. after the client took over with its own signals).
    pub fn reset_state(&mut self) {
        self.voiced_run = 0;
        self.unvoiced_run = 0;
        self.speaking = false;
    }

    fn classify_and_step(&mut self, frame: &[i16], on_event: &mut impl FnMut(VadEvent)) {
        let mean_square = sum_of_squares(frame) as f64 / frame.len() as f64;
        let loud = mean_square >= self.min_mean_square;
        let under_way = self.speaking || self.voiced_run > 0;
        let voiced = match &mut self.classifier {
            // libfvad is not asked about a window under the gate. The window is never empty and
            // always a valid length, so libfvad cannot fail.
            Classifier::WebRtc(vad) => loud && vad.0.is_voice_segment(frame).unwrap_or(false),
            Classifier::Silero {
                stream,
                start,
                end,
                quiet_run,
                tail,
            } => {
                *quiet_run = if loud { 0 } else { quiet_run.saturating_add(1) };
                if tail.is_some_and(|t| *quiet_run > t) {
                    stream.skip(frame);
                    false
                } else {
                    self.model_calls += 1;
                    let p = stream.probability(frame);
                    loud && p >= if under_way { *end } else { *start }
                }
            }
        };
        self.step(
            voiced && mean_square >= self.floor_mean_square,
            mean_square,
            on_event,
        );
    }

    fn step(&mut self, voiced: bool, mean_square: f64, on_event: &mut impl FnMut(VadEvent)) {
        let frame_start = self.position;
        self.position += self.frame_len as u64;
        if voiced {
            if self.voiced_run == 0 && !self.speaking {
                self.speech_voiced = 0;
                self.speech_energy = 0.0;
                self.speech_windows = 0;
            }
            self.voiced_run += 1;
            self.unvoiced_run = 0;
            self.last_voiced_end = self.position;
            self.speech_voiced += self.frame_len as u64;
            self.speech_energy += mean_square;
            self.speech_windows += 1;
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

    fn webrtc() -> VadConfig {
        VadConfig {
            engine: Engine::WEBRTC,
            ..VadConfig::default()
        }
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
        let mut det = VoiceDetector::new(webrtc());
        assert!(events(&mut det, &vec![0; 16000 * 3], 320).is_empty());
    }

    #[test]
    fn speech_starts_after_onset_and_ends_after_hangover() {
        let mut det = VoiceDetector::new(webrtc());
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
    fn a_tuned_hangover_ends_speech_after_the_new_silence() {
        let mut det = VoiceDetector::new(webrtc());
        det.tune(Some(0.9), Some(200));
        let mut audio = vec![0i16; 16 * 400];
        audio.extend(voiced(1000));
        audio.extend(vec![0; 16 * 1000]);
        let ev = events(&mut det, &audio, 160);
        let Some(&VadEvent::SpeechEnd {
            at,
            last_voiced_end,
        }) = ev.get(1)
        else {
            panic!("{ev:?}")
        };
        assert_eq!(at - last_voiced_end, 16 * 200);
    }

    #[test]
    fn a_tuned_silero_threshold_sets_both_of_its_thresholds() {
        let mut det = VoiceDetector::new(VadConfig::default());
        det.tune(Some(0.8), None);
        let Classifier::Silero { start, end, .. } = &det.classifier else {
            panic!("silero")
        };
        assert_eq!((*start, *end), (0.8, 0.8 - 0.15));
        det.tune(Some(0.1), None);
        let Classifier::Silero { start, end, .. } = &det.classifier else {
            panic!("silero")
        };
        assert_eq!((*start, *end), (0.1, 0.0), "never below zero");
    }

    #[test]
    fn a_short_click_does_not_start_speech() {
        let mut det = VoiceDetector::new(VadConfig {
            onset_ms: 200,
            ..webrtc()
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
        let a = events(&mut VoiceDetector::new(webrtc()), &audio, 320);
        let b = events(&mut VoiceDetector::new(webrtc()), &audio, 77);
        assert_eq!(a, b);
    }

    /// Speech fixtures separated by silence and by quiet noise, as one stream.
    fn conversation() -> Vec<i16> {
        let mut audio = Vec::new();
        let pink = crate::test_audio::noise("pink_-44.wav");
        for (i, name) in [
            "weather.wav",
            "stop.wav",
            "mhm.wav",
            "interrupt.wav",
            "balance.wav",
        ]
        .iter()
        .enumerate()
        {
            audio.extend(crate::test_audio::fixture(name));
            if i % 2 == 0 {
                audio.extend(&pink[..16 * 1500]);
            } else {
                audio.extend(vec![0i16; 16 * 1200]);
            }
        }
        audio
    }

    #[test]
    fn silero_finds_each_fixture_utterance() {
        let mut det = VoiceDetector::new(VadConfig::default());
        let ev = events(&mut det, &conversation(), 320);
        let starts = ev
            .iter()
            .filter(|e| matches!(e, VadEvent::SpeechStart { .. }))
            .count();
        let ends = ev
            .iter()
            .filter(|e| matches!(e, VadEvent::SpeechEnd { .. }))
            .count();
        assert_eq!((starts, ends), (5, 5), "{ev:?}");
    }

    #[test]
    fn silero_gated_and_ungated_decisions_agree_on_the_fixtures() {
        let audio = conversation();
        let mut gated = VoiceDetector::new(VadConfig::default());
        let mut ungated = VoiceDetector::new(VadConfig::default()).ungated();
        let a = events(&mut gated, &audio, 320);
        let b = events(&mut ungated, &audio, 320);
        // The same decisions, each at the same window or one window (32 ms) apart: a state frozen
        // over a long silence can tip an onset by one window.
        assert_eq!(a.len(), b.len(), "{a:?}\n{b:?}");
        let pos = |e: &VadEvent| match *e {
            VadEvent::SpeechStart { at } => (0, at),
            VadEvent::SpeechEnd { at, .. } => (1, at),
        };
        for (x, y) in a.iter().zip(&b) {
            let ((kx, px), (ky, py)) = (pos(x), pos(y));
            assert_eq!(kx, ky, "{a:?}\n{b:?}");
            assert!(px.abs_diff(py) <= silero::WINDOW as u64, "{a:?}\n{b:?}");
        }
        // The gate saved calls: the silences after the tails are skipped.
        assert!(
            gated.model_calls() < ungated.model_calls(),
            "{} vs {}",
            gated.model_calls(),
            ungated.model_calls()
        );
    }

    #[test]
    fn a_silent_session_costs_no_model_call() {
        let mut det = VoiceDetector::new(VadConfig::default());
        assert!(events(&mut det, &vec![0; 16000 * 3], 320).is_empty());
        assert_eq!(det.model_calls(), 0);
    }

    #[test]
    fn silero_ignores_stationary_noise_hum_and_transients() {
        for name in [
            "pink_-44.wav",
            "pink_-35.wav",
            "pink_-25.wav",
            "white_-44.wav",
            "white_-30.wav",
            "brown_-44.wav",
            "brown_-30.wav",
            "hum_100_150.wav",
            "keyboard.wav",
            "cough.wav",
            "knock.wav",
            "clap.wav",
        ] {
            let noise = crate::test_audio::noise(name);
            let mut det = VoiceDetector::new(VadConfig::default());
            let ev = events(&mut det, &noise, 320);
            assert!(ev.is_empty(), "{name}: {ev:?}");
        }
    }

    #[test]
    fn webrtc_takes_stationary_noise_for_speech() {
        // The reason Silero is the default: the same noise starts speech under webrtc-vad.
        let fooled = ["pink_-25.wav", "brown_-30.wav", "hum_100_150.wav"]
            .iter()
            .filter(|name| {
                let noise = crate::test_audio::noise(name);
                !events(&mut VoiceDetector::new(webrtc()), &noise, 320).is_empty()
            })
            .count();
        assert!(fooled >= 2, "webrtc-vad was fooled by {fooled} of 3");
    }

    #[test]
    fn silero_finds_speech_over_noise() {
        for name in ["interrupt_pink_snr10.wav", "stop_pink_snr10.wav"] {
            let audio = crate::test_audio::noise(name);
            let mut det = VoiceDetector::new(VadConfig::default());
            let ev = events(&mut det, &audio, 320);
            let VadEvent::SpeechStart { at } = ev[0] else {
                panic!("{name}: {ev:?}")
            };
            // The speech begins 200 ms in (the fixture's pad, now noise).
            assert!((16 * 150..=16 * 400).contains(&at), "{name}: start at {at}");
        }
    }

    #[test]
    fn the_speech_floor_mutes_quiet_speech_and_the_level_is_measured() {
        let audio = crate::test_audio::fixture("weather.wav");
        let mut det = VoiceDetector::new(VadConfig::default());
        assert!(!events(&mut det, &audio, 320).is_empty());
        let level = det.speech_level_dbfs().expect("a level");
        assert!((-35.0..-5.0).contains(&level), "{level}");
        assert!(det.speech_voiced() > 16 * 1000, "{}", det.speech_voiced());
        // 20 dB quieter than the floor: not speech.
        let quiet: Vec<i16> = audio.iter().map(|&s| s / 10).collect();
        let mut det = VoiceDetector::new(VadConfig::default());
        det.set_speech_floor(Some(level - 10.0));
        assert!(events(&mut det, &quiet, 320).is_empty());
        det.set_speech_floor(None);
        assert!(!events(&mut det, &quiet, 320).is_empty());
    }
}
