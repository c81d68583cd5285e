//! The mock text-to-speech voice: a quiet, voiced hum as long as the text would take to say,
//! streamed in chunks with configured delays.
//!
//! The audio is a pure function of the text and the absolute sample index (a 120–180 Hz
//! fundamental chosen by a hash of the text, a few harmonics, a ~4 Hz syllable-like envelope and
//! 10 ms fades at the ends), so the same text always gives byte-identical audio however it is
//! chunked, and it is never digital silence (a VAD or an echo test sees a voice).
//!
//! The fundamental is a whole multiple of the syllable rate, so the sound repeats exactly once per
//! syllable: a synthesis computes one syllable (a quarter of a second) and its chunks are copies
//! of it. The mock voice runs for every answer of a load test and must cost far less than the
//! orchestration it tests.

use std::f64::consts::TAU;
use std::time::Duration;

use futures_util::stream::{self, BoxStream, StreamExt};
use serde::Deserialize;
use voxd_core::SampleRate;

use super::{check_probability, fnv1a64, inject_failure, FNV_OFFSET, PROVIDER_NAME};
use crate::{BuildError, ProviderError, Tts};

/// Relative weights of the fundamental and its harmonics.
const HARMONICS: [f64; 4] = [1.0, 0.5, 0.3, 0.15];
/// The syllable rate of the envelope, in Hz.
const SYLLABLE_HZ: f64 = 4.0;
/// Length of the fade-in and fade-out, in milliseconds.
const FADE_MS: u64 = 10;
/// The shortest audio for non-empty text, in milliseconds.
const MIN_AUDIO_MS: u64 = 100;

/// Configuration of the mock TTS (`[tts.mock]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MockTtsConfig {
    /// Delay before the first chunk, in milliseconds. Default 50.
    pub first_audio_ms: u64,
    /// Speaking rate: the audio lasts `chars / chars_per_second` seconds (at least 100 ms).
    /// Default 14.0.
    pub chars_per_second: f64,
    /// Length of each chunk, in milliseconds (the last one may be shorter). Default 200.
    pub chunk_ms: u64,
    /// Each later chunk arrives `chunk_ms * realtime_factor` after the previous one, i.e. the
    /// voice synthesizes ten times faster than real time by default. Default 0.1.
    pub realtime_factor: f64,
    /// Peak amplitude of the hum (1 to 32767). Default 3000.
    pub amplitude: u16,
    /// Probability (0 to 1) that a synthesis fails instead of yielding its first chunk. Default 0.
    pub failure_rate: f64,
    /// Probability (0 to 1) that a synthesis never starts (a hung provider). Default 0.
    pub hang_rate: f64,
}

impl Default for MockTtsConfig {
    fn default() -> Self {
        MockTtsConfig {
            first_audio_ms: 50,
            chars_per_second: 14.0,
            chunk_ms: 200,
            realtime_factor: 0.1,
            amplitude: 3000,
            failure_rate: 0.0,
            hang_rate: 0.0,
        }
    }
}

/// The mock TTS. Build it with `MockTts::new`.
#[derive(Debug, Clone)]
pub struct MockTts {
    first_audio: Duration,
    /// The delay between later chunks.
    interval: Duration,
    chars_per_second: f64,
    chunk_ms: u64,
    amplitude: i32,
    failure_rate: f64,
    hang_rate: f64,
}

impl MockTts {
    /// Builds the mock TTS.
    ///
    /// # Errors
    /// `BuildError::Invalid` when `chars_per_second` is not positive, `chunk_ms` is 0,
    /// `realtime_factor` is negative or not finite, `amplitude` is 0 or above 32767, or
    /// `failure_rate` is not a probability.
    pub fn new(config: MockTtsConfig) -> Result<MockTts, BuildError> {
        let invalid = |field: &str, message: &str| BuildError::Invalid {
            key: field.to_owned(),
            message: message.to_owned(),
        };
        if !(config.chars_per_second.is_finite() && config.chars_per_second > 0.0) {
            return Err(invalid("chars_per_second", "expected a positive number"));
        }
        if config.chunk_ms == 0 {
            return Err(invalid("chunk_ms", "expected at least 1 ms"));
        }
        if !(config.realtime_factor.is_finite() && config.realtime_factor >= 0.0) {
            return Err(invalid("realtime_factor", "expected a number >= 0"));
        }
        if config.amplitude == 0 || config.amplitude > i16::MAX as u16 {
            return Err(invalid("amplitude", "expected 1 to 32767"));
        }
        check_probability("failure_rate", config.failure_rate)?;
        check_probability("hang_rate", config.hang_rate)?;
        Ok(MockTts {
            first_audio: Duration::from_millis(config.first_audio_ms),
            interval: Duration::from_secs_f64(
                config.chunk_ms as f64 * config.realtime_factor / 1000.0,
            ),
            chars_per_second: config.chars_per_second,
            chunk_ms: config.chunk_ms,
            amplitude: i32::from(config.amplitude),
            failure_rate: config.failure_rate,
            hang_rate: config.hang_rate,
        })
    }

    /// The number of samples `text` lasts at `rate`: `chars / chars_per_second` seconds, rounded,
    /// at least 100 ms; 0 for blank text.
    pub fn length_in_samples(&self, text: &str, rate: SampleRate) -> u64 {
        let chars = text.trim().chars().count();
        if chars == 0 {
            return 0;
        }
        let samples = (chars as f64 / self.chars_per_second * f64::from(rate.hz())).round() as u64;
        samples.max(rate.samples_in_ms(MIN_AUDIO_MS))
    }

    fn voice(&self, text: &str, rate: SampleRate) -> Voice {
        let text = text.trim();
        let hash = fnv1a64(FNV_OFFSET, text.as_bytes());
        let total = self.length_in_samples(text, rate);
        // One syllable lasts `period` samples; the fundamental makes `harmonic` periods in it
        // (30 to 45 times the syllable rate: 120 to 180 Hz).
        let period = (f64::from(rate.hz()) / SYLLABLE_HZ).round().max(1.0) as usize;
        let harmonic = 30 + (hash % 16) as usize;
        let (wave, envelope) = tables();
        let syllable = (0..period)
            .map(|j| {
                let w = wave[(j * harmonic % period) * TABLE / period];
                let e = envelope[j * TABLE / period];
                // |w|, e <= 2^15 and amplitude < 2^15: every product fits an i32.
                ((((w * e) >> Q) * self.amplitude) >> Q) as i16
            })
            .collect();
        Voice {
            total,
            fade: (rate.samples_in_ms(FADE_MS).min(total / 2)).max(1),
            syllable,
            offset: ((hash >> 8) % period as u64) as usize,
        }
    }
}

/// The synthesized sound for one text.
#[derive(Debug, Clone)]
struct Voice {
    total: u64,
    /// Fade length in samples.
    fade: u64,
    /// One syllable of the sound, which repeats it.
    syllable: Vec<i16>,
    /// The syllable's sample that sample 0 of the audio is.
    offset: usize,
}

/// Points per period in the wave tables (a power of two: the index is the phase's top bits).
const TABLE_BITS: u32 = 12;
const TABLE: usize = 1 << TABLE_BITS;
/// Fixed-point scale of the tables: 1.0 is `1 << Q`.
const Q: u32 = 15;

/// One period of the voiced wave (the fundamental and its harmonics, normalised) and one period
/// of the syllable envelope (between 30% and 100%), in Q15 fixed point, computed once.
fn tables() -> &'static ([i32; TABLE], [i32; TABLE]) {
    static TABLES: std::sync::OnceLock<([i32; TABLE], [i32; TABLE])> = std::sync::OnceLock::new();
    TABLES.get_or_init(|| {
        let one = f64::from(1u32 << Q);
        let norm: f64 = HARMONICS.iter().sum();
        let mut wave = [0; TABLE];
        let mut envelope = [0; TABLE];
        for j in 0..TABLE {
            let x = TAU * j as f64 / TABLE as f64;
            let w: f64 = HARMONICS
                .iter()
                .zip(1u32..)
                .map(|(weight, k)| weight * (x * f64::from(k)).sin())
                .sum::<f64>()
                / norm;
            wave[j] = (w * one).round() as i32;
            envelope[j] = ((0.65 + 0.35 * x.sin()) * one).round() as i32;
        }
        (wave, envelope)
    })
}

impl Voice {
    /// Samples `start..end`. Sample `i` depends on nothing but `self` and `i`, so the audio is the
    /// same however it is chunked.
    fn chunk(&self, start: u64, end: u64) -> Vec<i16> {
        let len = (end - start) as usize;
        let period = self.syllable.len();
        let mut out = Vec::with_capacity(len);
        let mut at = ((start + self.offset as u64) % period as u64) as usize;
        while out.len() < len {
            let take = (period - at).min(len - out.len());
            out.extend_from_slice(&self.syllable[at..at + take]);
            at = 0;
        }
        // Fade in and out over `fade` samples at the ends: only those samples pay a division.
        let faded = (start..end.min(self.fade)).chain(start.max(self.total - self.fade)..end);
        for i in faded {
            let edge = (i + 1).min(self.total - i) as i64;
            let s = &mut out[(i - start) as usize];
            *s = (i64::from(*s) * edge / self.fade as i64) as i16;
        }
        out
    }
}

/// Where a synthesis stream is.
struct Synthesis {
    voice: Voice,
    next: u64,
    chunk: u64,
    /// When the next chunk is due.
    due: tokio::time::Instant,
    interval: Duration,
    fail: bool,
}

impl Tts for MockTts {
    fn name(&self) -> &str {
        PROVIDER_NAME
    }

    fn synthesize(
        &self,
        text: String,
        rate: SampleRate,
    ) -> BoxStream<'static, Result<Vec<i16>, ProviderError>> {
        if rate.hz() == 0 {
            let err = ProviderError::InvalidRequest {
                provider: PROVIDER_NAME.to_owned(),
                message: "the sample rate must be above 0 Hz".to_owned(),
            };
            return stream::iter([Err(err)]).boxed();
        }
        if inject_failure(self.hang_rate) {
            return stream::pending().boxed();
        }
        let voice = self.voice(&text, rate);
        let state = Synthesis {
            fail: voice.total > 0 && inject_failure(self.failure_rate),
            voice,
            next: 0,
            chunk: rate.samples_in_ms(self.chunk_ms).max(1),
            due: tokio::time::Instant::now() + self.first_audio,
            interval: self.interval,
        };
        // No task: each chunk is generated when the consumer polls for it, so dropping the
        // stream stops the synthesis at once.
        stream::unfold(Some(state), |state| async move {
            let mut s = state?;
            if s.next >= s.voice.total {
                return None;
            }
            // Chunks are due at absolute times, so timer rounding does not accumulate.
            tokio::time::sleep_until(s.due).await;
            if s.fail {
                let err = ProviderError::Failed {
                    provider: PROVIDER_NAME.to_owned(),
                    message: "injected failure".to_owned(),
                };
                return Some((Err(err), None));
            }
            let end = (s.next + s.chunk).min(s.voice.total);
            let samples = s.voice.chunk(s.next, end);
            s.next = end;
            s.due += s.interval;
            Some((Ok(samples), Some(s)))
        })
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    const RATE: SampleRate = SampleRate::INTERNAL;

    fn tts(config: MockTtsConfig) -> MockTts {
        MockTts::new(config).expect("valid config")
    }

    async fn chunks(tts: &MockTts, text: &str, rate: SampleRate) -> Vec<Vec<i16>> {
        tts.synthesize(text.to_owned(), rate)
            .map(|c| c.expect("no failure"))
            .collect()
            .await
    }

    async fn audio(tts: &MockTts, text: &str, rate: SampleRate) -> Vec<i16> {
        chunks(tts, text, rate).await.concat()
    }

    fn rms(samples: &[i16]) -> f64 {
        let sum: f64 = samples.iter().map(|&s| f64::from(s).powi(2)).sum();
        (sum / samples.len() as f64).sqrt()
    }

    #[tokio::test(start_paused = true)]
    async fn length_is_proportional_to_the_text() {
        let voice = tts(MockTtsConfig::default());
        // 14 characters at 14 characters per second: one second.
        assert_eq!(audio(&voice, "Hello, friend.", RATE).await.len(), 16_000);
        assert_eq!(
            audio(&voice, "Hello, friend. Hello, friend.", RATE)
                .await
                .len(),
            32_000 + 1_143
        );
        assert_eq!(
            audio(&voice, "  Hello, friend.\n", SampleRate(24_000))
                .await
                .len(),
            24_000
        );
        // Short text still lasts 100 ms; blank text is no audio at all.
        assert_eq!(audio(&voice, "Hi", RATE).await.len(), 2_286);
        assert_eq!(audio(&voice, "A", RATE).await.len(), 1_600);
        assert!(chunks(&voice, "  ", RATE).await.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn chunks_are_chunk_ms_long_and_timed() {
        let voice = tts(MockTtsConfig::default());
        let start = Instant::now();
        let mut stream = voice.synthesize("Hello, friend.".into(), RATE);
        let first = stream.next().await.expect("a chunk").expect("no failure");
        assert_eq!(first.len(), 3_200);
        let first_at = start.elapsed();
        assert!(first_at >= Duration::from_millis(50), "{first_at:?}");
        assert!(first_at < Duration::from_millis(60), "{first_at:?}");
        let mut sizes = vec![first.len()];
        while let Some(chunk) = stream.next().await {
            sizes.push(chunk.expect("no failure").len());
        }
        assert_eq!(sizes, [3_200; 5]);
        // Four more chunks, 20 ms apart.
        assert!(start.elapsed() - first_at >= Duration::from_millis(80));
    }

    #[tokio::test(start_paused = true)]
    async fn same_text_gives_identical_audio_that_is_not_silence() {
        let voice = tts(MockTtsConfig::default());
        let text = "The quick brown fox jumps over the lazy dog.";
        let a = audio(&voice, text, RATE).await;
        let b = audio(&voice, text, RATE).await;
        assert_eq!(a, b);
        let level = rms(&a);
        assert!(level > 500.0, "rms {level}");
        assert!(a.iter().all(|s| s.unsigned_abs() <= 3000));
        // Different text, different voice.
        assert_ne!(
            audio(&voice, "The quick brown fox jumps over the lazy cat.", RATE).await,
            a
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_voice_has_no_click_where_its_syllable_repeats() {
        // Several seconds of audio: the syllable repeats many times. Its waves join smoothly: a
        // step between two samples stays within what a 180 Hz voice can move in one sample, at
        // 16 kHz and at 22.05 kHz, whose syllable is not a whole number of samples at 4 Hz.
        let voice = tts(MockTtsConfig::default());
        let text = "A sentence long enough to repeat its syllable a good many times over.";
        for rate in [RATE, SampleRate(22_050)] {
            let audio = audio(&voice, text, rate).await;
            assert!(audio.len() as u32 > 4 * rate.hz());
            let steepest = audio
                .windows(2)
                .map(|w| (i32::from(w[1]) - i32::from(w[0])).abs())
                .max()
                .unwrap_or(0);
            assert!(steepest < 600, "a step of {steepest} at {} Hz", rate.hz());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn chunk_boundaries_do_not_change_the_audio() {
        let text = "Tomorrow looks cloudy with a chance of rain in the afternoon.";
        let coarse = tts(MockTtsConfig::default());
        let fine = tts(MockTtsConfig {
            chunk_ms: 7,
            ..MockTtsConfig::default()
        });
        let coarse_chunks = chunks(&coarse, text, RATE).await;
        let fine_chunks = chunks(&fine, text, RATE).await;
        assert!(fine_chunks.len() > coarse_chunks.len());
        assert_eq!(coarse_chunks.concat(), fine_chunks.concat());
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_stream_stops_it() {
        let voice = tts(MockTtsConfig::default());
        let text = "A fairly long sentence to speak.";
        let mut kept = voice.synthesize(text.into(), RATE);
        let mut dropped = voice.synthesize(text.into(), RATE);
        // Both have more chunks to come after their first.
        for stream in [&mut kept, &mut dropped] {
            stream.next().await.expect("a chunk").expect("no failure");
        }
        crate::mock::testing::assert_dropping_stops_it(kept, dropped).await;
    }

    #[tokio::test(start_paused = true)]
    async fn failure_replaces_the_first_chunk() {
        let voice = tts(MockTtsConfig {
            failure_rate: 1.0,
            ..MockTtsConfig::default()
        });
        let items: Vec<_> = voice.synthesize("Hello.".into(), RATE).collect().await;
        assert_eq!(items.len(), 1);
        assert!(matches!(items[0], Err(ProviderError::Failed { .. })));
    }

    #[test]
    fn invalid_config_is_a_build_error() {
        let bad = [
            MockTtsConfig {
                chars_per_second: 0.0,
                ..MockTtsConfig::default()
            },
            MockTtsConfig {
                chunk_ms: 0,
                ..MockTtsConfig::default()
            },
            MockTtsConfig {
                amplitude: 40_000,
                ..MockTtsConfig::default()
            },
            MockTtsConfig {
                realtime_factor: -1.0,
                ..MockTtsConfig::default()
            },
        ];
        for config in bad {
            assert!(MockTts::new(config.clone()).is_err(), "{config:?}");
        }
        // The key is the one in the provider's own table.
        let err = MockTts::new(MockTtsConfig {
            chunk_ms: 0,
            ..MockTtsConfig::default()
        })
        .expect_err("chunk_ms 0");
        assert!(err.to_string().starts_with("chunk_ms: "), "{err}");
        let parsed: MockTtsConfig = toml::from_str("chunk_ms = 20").expect("partial config");
        assert_eq!(parsed.chunk_ms, 20);
        assert_eq!(parsed.amplitude, 3000);
        assert!(toml::from_str::<MockTtsConfig>("chunk = 20").is_err());
    }
}
