//! The mock speech-to-text: recognises known fixture recordings exactly, and otherwise guesses a
//! transcript from how long the speech lasted, like the classic voice-bot load test (a short grunt
//! is "mhm", a long utterance a real question).
//!
//! Recognition is by fingerprint: FNV-1a 64 over the samples with leading and trailing exact zeros
//! trimmed, so the digital silence a file, a client or a VAD puts around the speech never matters.

use std::collections::hash_map::{Entry, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use voxd_core::SampleRate;

use super::PROVIDER_NAME;
use super::{check_probability, fnv1a64, inject_failure, load_wav_16k_mono, FNV_OFFSET};
use crate::{Asr, BuildError, ProviderError, Transcript};

/// The config key of the fixture table, for errors.
const FIXTURES_KEY: &str = "fixtures";

/// Configuration of the mock ASR (`[asr.mock]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MockAsrConfig {
    /// Time to transcribe one utterance, in milliseconds. Default 50.
    pub latency_ms: u64,
    /// Extra latency drawn uniformly from `0..=jitter_ms` per call. Default 0.
    pub jitter_ms: u64,
    /// Probability (0 to 1) that a call fails with an injected error. Default 0.
    pub failure_rate: f64,
    /// Probability (0 to 1) that a call never answers (a hung provider; the server's timeout
    /// must catch it). Default 0.
    pub hang_rate: f64,
    /// A `transcripts.toml` fixture table; relative paths are resolved against the config file's
    /// folder. Default: none.
    pub fixtures: Option<PathBuf>,
    /// Transcripts by speech duration for audio that is not a fixture, checked in order.
    /// Default: < 500 ms "mhm", < 1750 ms "what about tomorrow", < 2500 ms "what's the weather
    /// like today", otherwise "can you check my account balance".
    pub rules: Vec<DurationRule>,
}

impl Default for MockAsrConfig {
    fn default() -> Self {
        let rule = |below_ms: Option<u64>, text: &str| DurationRule {
            below_ms,
            text: text.to_owned(),
        };
        MockAsrConfig {
            latency_ms: 50,
            jitter_ms: 0,
            failure_rate: 0.0,
            hang_rate: 0.0,
            fixtures: None,
            rules: vec![
                rule(Some(500), "mhm"),
                rule(Some(1750), "what about tomorrow"),
                rule(Some(2500), "what's the weather like today"),
                rule(None, "can you check my account balance"),
            ],
        }
    }
}

/// "Speech shorter than `below_ms` is transcribed as `text`."
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DurationRule {
    /// The rule applies when the speech lasts less than this many milliseconds; `None` matches any
    /// duration (a catch-all, normally last).
    #[serde(default)]
    pub below_ms: Option<u64>,
    /// The transcript.
    pub text: String,
}

/// The fixture table's format. Unknown keys (such as `speech_ms`) are ignored on purpose: the
/// table is shared with tests that read more from it.
#[derive(Deserialize)]
struct FixtureTable {
    #[serde(default)]
    fixture: Vec<FixtureEntry>,
}

#[derive(Deserialize)]
struct FixtureEntry {
    /// The WAV file, relative to the table's folder.
    file: PathBuf,
    /// What a perfect ASR returns for it.
    text: String,
}

/// The mock ASR. Build it with `MockAsr::new`.
#[derive(Debug)]
pub struct MockAsr {
    latency: Duration,
    jitter_ms: u64,
    failure_rate: f64,
    hang_rate: f64,
    /// Fingerprint of a fixture's zero-trimmed samples → its transcript.
    fixtures: HashMap<u64, String>,
    rules: Vec<DurationRule>,
}

impl MockAsr {
    /// Builds the mock ASR, loading the fixture table if one is configured. `base_dir` is the
    /// folder relative `fixtures` paths are resolved against (the config file's folder).
    ///
    /// # Errors
    /// `BuildError::Io` when the table or a WAV cannot be read; `BuildError::Invalid` when the
    /// table is malformed, a WAV is not 16 kHz mono 16-bit, a fixture is all silence, two fixtures
    /// with the same audio disagree, or `failure_rate` is not a probability.
    pub fn new(config: MockAsrConfig, base_dir: &Path) -> Result<MockAsr, BuildError> {
        check_probability("failure_rate", config.failure_rate)?;
        check_probability("hang_rate", config.hang_rate)?;
        let fixtures = match &config.fixtures {
            Some(table) => load_fixtures(&base_dir.join(table))?,
            None => HashMap::new(),
        };
        Ok(MockAsr {
            latency: Duration::from_millis(config.latency_ms),
            jitter_ms: config.jitter_ms,
            failure_rate: config.failure_rate,
            hang_rate: config.hang_rate,
            fixtures,
            rules: config.rules,
        })
    }

    /// The number of distinct fixture recordings it recognises.
    pub fn fixture_count(&self) -> usize {
        self.fixtures.len()
    }

    /// The transcript of `audio` (16 kHz mono), without latency or failures.
    pub fn recognise(&self, audio: &[i16]) -> &str {
        let speech = trim_zeros(audio);
        if !speech.is_empty() {
            if let Some(text) = self.fixtures.get(&fingerprint(speech)) {
                return text;
            }
        }
        // All-zero audio counts at full length: a load tool streaming digital silence between
        // speech_start and speech_end still gets the classic mapping.
        let span = if speech.is_empty() { audio } else { speech };
        let duration_ms = SampleRate::INTERNAL
            .duration_of(span.len() as u64)
            .as_millis();
        self.rules
            .iter()
            .find(|r| {
                r.below_ms
                    .is_none_or(|below| duration_ms < u128::from(below))
            })
            .map_or("", |r| r.text.as_str())
    }
}

#[async_trait]
impl Asr for MockAsr {
    fn name(&self) -> &str {
        PROVIDER_NAME
    }

    async fn transcribe(&self, audio: Arc<[i16]>) -> Result<Transcript, ProviderError> {
        let jitter = if self.jitter_ms > 0 {
            Duration::from_millis(fastrand::u64(0..=self.jitter_ms))
        } else {
            Duration::ZERO
        };
        if inject_failure(self.hang_rate) {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep(self.latency + jitter).await;
        if inject_failure(self.failure_rate) {
            return Err(ProviderError::Failed {
                provider: PROVIDER_NAME.to_owned(),
                message: "injected failure".to_owned(),
            });
        }
        Ok(Transcript {
            text: self.recognise(&audio).trim().to_owned(),
        })
    }
}

/// The fingerprint the mock ASR recognises audio by: FNV-1a 64 over the little-endian bytes of
/// the samples after trimming leading and trailing exact zeros.
pub fn fingerprint(audio: &[i16]) -> u64 {
    trim_zeros(audio)
        .iter()
        .fold(FNV_OFFSET, |hash, s| fnv1a64(hash, &s.to_le_bytes()))
}

/// `audio` without its leading and trailing samples that are exactly zero.
fn trim_zeros(audio: &[i16]) -> &[i16] {
    let Some(first) = audio.iter().position(|&s| s != 0) else {
        return &[];
    };
    let last = audio.iter().rposition(|&s| s != 0).unwrap_or(first);
    &audio[first..=last]
}

/// Reads a `transcripts.toml` and its WAVs into fingerprint → transcript.
fn load_fixtures(table_path: &Path) -> Result<HashMap<u64, String>, BuildError> {
    let shown = table_path.display();
    let text = std::fs::read_to_string(table_path).map_err(|source| BuildError::Io {
        what: "cannot read the ASR fixture table",
        path: shown.to_string(),
        source,
    })?;
    let table: FixtureTable = toml::from_str(&text).map_err(|e| BuildError::Invalid {
        key: FIXTURES_KEY.to_owned(),
        message: format!("{shown} is not a valid fixture table: {e}"),
    })?;
    let folder = table_path.parent().unwrap_or(Path::new("."));
    let mut fixtures: HashMap<u64, String> = HashMap::with_capacity(table.fixture.len());
    for entry in table.fixture {
        let wav = folder.join(&entry.file);
        let invalid = |message: String| BuildError::Invalid {
            key: FIXTURES_KEY.to_owned(),
            message: format!("{}: {message}", wav.display()),
        };
        let samples = load_wav_16k_mono(&wav).map_err(|e| match e {
            // Keyed, so the error names both the config key and the file (which its message does).
            BuildError::Invalid { message, .. } => BuildError::Invalid {
                key: FIXTURES_KEY.to_owned(),
                message,
            },
            io => io,
        })?;
        if trim_zeros(&samples).is_empty() {
            return Err(invalid(
                "contains only silence, so it cannot be recognised".into(),
            ));
        }
        let text = entry.text.trim().to_owned();
        match fixtures.entry(fingerprint(&samples)) {
            Entry::Occupied(existing) if *existing.get() != text => {
                return Err(invalid(format!(
                    "has the same audio as another fixture but a different text \
                     ({text:?} vs {:?})",
                    existing.get()
                )));
            }
            Entry::Occupied(_) => {}
            Entry::Vacant(slot) => {
                slot.insert(text);
            }
        }
    }
    Ok(fixtures)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A fresh, empty folder under the system temp dir (no tempfile crate needed).
    fn temp_dir(name: &str) -> PathBuf {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "voxd-backends-{}-{name}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        dir
    }

    fn write_wav(path: &Path, rate: u32, samples: &[i16]) {
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut writer = hound::WavWriter::create(path, spec).expect("create wav");
        for &s in samples {
            writer.write_sample(s).expect("write sample");
        }
        writer.finalize().expect("finalize wav");
    }

    /// A deterministic, non-silent "utterance" of `ms` milliseconds.
    fn tone(ms: u64, seed: i16) -> Vec<i16> {
        let n = SampleRate::INTERNAL.samples_in_ms(ms) as usize;
        (0..n)
            .map(|i| ((i as i16).wrapping_mul(37).wrapping_add(seed) % 2000) + 1)
            .collect()
    }

    fn silence(ms: u64) -> Vec<i16> {
        vec![0; SampleRate::INTERNAL.samples_in_ms(ms) as usize]
    }

    fn default_asr() -> MockAsr {
        MockAsr::new(MockAsrConfig::default(), Path::new(".")).expect("defaults are valid")
    }

    async fn transcribe(asr: &MockAsr, audio: Vec<i16>) -> String {
        asr.transcribe(audio.into()).await.expect("no failure").text
    }

    #[tokio::test(start_paused = true)]
    async fn duration_rules_map_silence_like_the_classic_load_test() {
        let asr = default_asr();
        assert_eq!(transcribe(&asr, silence(300)).await, "mhm");
        assert_eq!(
            transcribe(&asr, silence(2000)).await,
            "what's the weather like today"
        );
        assert_eq!(
            transcribe(&asr, silence(3000)).await,
            "can you check my account balance"
        );
        assert_eq!(transcribe(&asr, Vec::new()).await, "mhm");
    }

    #[test]
    fn duration_rules_are_exclusive_at_their_bounds() {
        let asr = default_asr();
        assert_eq!(asr.recognise(&tone(499, 1)), "mhm");
        assert_eq!(asr.recognise(&tone(500, 1)), "what about tomorrow");
        assert_eq!(asr.recognise(&tone(1749, 1)), "what about tomorrow");
        assert_eq!(
            asr.recognise(&tone(1750, 1)),
            "what's the weather like today"
        );
        assert_eq!(
            asr.recognise(&tone(2500, 1)),
            "can you check my account balance"
        );
    }

    #[test]
    fn duration_counts_only_the_zero_trimmed_span() {
        let asr = default_asr();
        let mut audio = silence(1000);
        audio.extend(tone(300, 3));
        audio.extend(silence(1000));
        assert_eq!(asr.recognise(&audio), "mhm");
    }

    #[test]
    fn no_matching_rule_is_an_empty_transcript() {
        let config = MockAsrConfig {
            rules: vec![DurationRule {
                below_ms: Some(100),
                text: "hm".into(),
            }],
            ..MockAsrConfig::default()
        };
        let asr = MockAsr::new(config, Path::new(".")).expect("valid");
        assert_eq!(asr.recognise(&tone(200, 1)), "");
    }

    #[tokio::test(start_paused = true)]
    async fn fixture_matches_despite_extra_zero_padding() {
        let dir = temp_dir("fixtures");
        let speech = tone(400, 7);
        let mut padded_file = silence(200);
        padded_file.extend(&speech);
        padded_file.extend(silence(300));
        write_wav(&dir.join("hello.wav"), 16_000, &padded_file);
        std::fs::write(
            dir.join("transcripts.toml"),
            "[[fixture]]\nfile = \"hello.wav\"\ntext = \"hello there\"\nspeech_ms = 400\n",
        )
        .expect("write table");

        let config = MockAsrConfig {
            fixtures: Some("transcripts.toml".into()),
            ..MockAsrConfig::default()
        };
        let asr = MockAsr::new(config, &dir).expect("valid fixtures");
        assert_eq!(asr.fixture_count(), 1);

        let mut heard = silence(1234);
        heard.extend(&speech);
        heard.extend(silence(77));
        assert_eq!(transcribe(&asr, heard).await, "hello there");
        assert_eq!(transcribe(&asr, speech.clone()).await, "hello there");
        // Different speech of the same length falls back to the duration rules.
        assert_eq!(transcribe(&asr, tone(400, 8)).await, "mhm");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn non_16k_fixture_is_a_build_error_naming_the_file() {
        let dir = temp_dir("bad-rate");
        write_wav(&dir.join("ok.wav"), 16_000, &tone(300, 1));
        write_wav(&dir.join("narrowband.wav"), 8_000, &tone(300, 2));
        std::fs::write(
            dir.join("transcripts.toml"),
            "[[fixture]]\nfile = \"ok.wav\"\ntext = \"ok\"\n\n\
             [[fixture]]\nfile = \"narrowband.wav\"\ntext = \"phone call\"\n",
        )
        .expect("write table");
        let config = MockAsrConfig {
            fixtures: Some(dir.join("transcripts.toml")),
            ..MockAsrConfig::default()
        };
        let err = MockAsr::new(config, Path::new("/nonexistent")).expect_err("8 kHz fixture");
        assert!(matches!(err, BuildError::Invalid { .. }), "{err:?}");
        let message = err.to_string();
        assert!(message.starts_with("fixtures: "), "{message}");
        assert!(message.contains("narrowband.wav"), "{message}");
        assert!(message.contains("8000 Hz"), "{message}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn missing_fixture_table_is_an_io_error() {
        let config = MockAsrConfig {
            fixtures: Some("no-such-transcripts.toml".into()),
            ..MockAsrConfig::default()
        };
        let err = MockAsr::new(config, &temp_dir("missing")).expect_err("no table");
        assert!(matches!(err, BuildError::Io { .. }), "{err:?}");
    }

    #[test]
    fn silent_fixture_is_rejected() {
        let dir = temp_dir("silent");
        write_wav(&dir.join("quiet.wav"), 16_000, &silence(500));
        std::fs::write(
            dir.join("t.toml"),
            "[[fixture]]\nfile = \"quiet.wav\"\ntext = \"x\"\n",
        )
        .expect("write table");
        let config = MockAsrConfig {
            fixtures: Some("t.toml".into()),
            ..MockAsrConfig::default()
        };
        let err = MockAsr::new(config, &dir).expect_err("all zeros");
        assert!(err.to_string().contains("quiet.wav"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The committed fixtures (`fixtures/transcripts.toml`) and what they say. The server's
    /// tests and the load tool rely on these transcripts.
    const REPOSITORY_FIXTURES: [(&str, &str); 7] = [
        ("weather.wav", "what's the weather like today"),
        ("balance.wav", "can you check my account balance please"),
        ("tomorrow.wav", "what about tomorrow"),
        ("story.wav", "tell me a long story about the sea"),
        ("stop.wav", "wait stop"),
        ("mhm.wav", "mhm"),
        ("interrupt.wav", "actually what about tomorrow instead"),
    ];

    #[tokio::test(start_paused = true)]
    async fn the_repository_fixtures_are_recognised() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures");
        let table_path = root.join("transcripts.toml");
        let table_text = std::fs::read_to_string(&table_path)
            .unwrap_or_else(|e| panic!("{}: {e}", table_path.display()));
        let table: toml::Table = toml::from_str(&table_text).expect("parse table");
        let entries = table["fixture"].as_array().expect("fixture array");
        let listed: Vec<(&str, &str, i64)> = entries
            .iter()
            .map(|e| {
                let field = |k: &str| e.get(k).unwrap_or_else(|| panic!("{k} in {e}"));
                (
                    field("file").as_str().expect("file is a string"),
                    field("text").as_str().expect("text is a string"),
                    field("speech_ms")
                        .as_integer()
                        .expect("speech_ms is a number"),
                )
            })
            .collect();
        for (file, text) in REPOSITORY_FIXTURES {
            assert!(
                listed.iter().any(|&(f, t, _)| (f, t) == (file, text)),
                "{file} saying {text:?} is not in {}",
                table_path.display()
            );
        }

        let config = MockAsrConfig {
            fixtures: Some("transcripts.toml".into()),
            ..MockAsrConfig::default()
        };
        let asr = MockAsr::new(config, &root).expect("the repository fixtures load");
        assert_eq!(
            asr.fixture_count(),
            listed.len(),
            "one recording per fixture"
        );
        for (file, text, speech_ms) in listed {
            let samples = load_wav_16k_mono(&root.join(file)).expect("fixture wav");
            // The table's speech_ms is the span of the file's non-zero samples.
            let speech = SampleRate::INTERNAL.duration_of(trim_zeros(&samples).len() as u64);
            let speech_ms = u128::try_from(speech_ms).expect("speech_ms >= 0");
            assert!(
                speech.as_millis().abs_diff(speech_ms) <= 1,
                "{file}: {speech:?} of speech, the table says {speech_ms} ms"
            );
            assert!(speech >= Duration::from_millis(300), "{file}: {speech:?}");
            let mut audio = silence(150);
            audio.extend(samples);
            audio.extend(silence(250));
            assert_eq!(transcribe(&asr, audio).await, text, "{file}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failure_rate_one_fails() {
        let config = MockAsrConfig {
            failure_rate: 1.0,
            ..MockAsrConfig::default()
        };
        let asr = MockAsr::new(config, Path::new(".")).expect("valid");
        let err = asr
            .transcribe(silence(300).into())
            .await
            .expect_err("injected failure");
        assert!(
            matches!(&err, ProviderError::Failed { provider, message }
                if provider == "mock" && message == "injected failure"),
            "{err:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn transcription_takes_the_configured_latency() {
        let config = MockAsrConfig {
            latency_ms: 80,
            jitter_ms: 20,
            ..MockAsrConfig::default()
        };
        let asr = MockAsr::new(config, Path::new(".")).expect("valid");
        let start = tokio::time::Instant::now();
        transcribe(&asr, silence(300)).await;
        let elapsed = start.elapsed();
        assert!(elapsed >= Duration::from_millis(80), "{elapsed:?}");
        assert!(elapsed <= Duration::from_millis(101), "{elapsed:?}");
    }

    #[test]
    fn config_rejects_unknown_keys_and_bad_rates() {
        let parsed: MockAsrConfig = toml::from_str("latency_ms = 10").expect("partial config");
        assert_eq!(parsed.latency_ms, 10);
        assert_eq!(parsed.rules, MockAsrConfig::default().rules);
        assert!(toml::from_str::<MockAsrConfig>("latency = 10").is_err());
        let bad = MockAsrConfig {
            failure_rate: 2.0,
            ..MockAsrConfig::default()
        };
        assert!(MockAsr::new(bad, Path::new(".")).is_err());
    }
}
