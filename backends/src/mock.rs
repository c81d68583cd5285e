//! Mock providers: an ASR, an LLM and a TTS voice that need no network, no model and no key, for
//! demos, tests and load tests.
//!
//! They promise three things. Every number and text they use comes from their config
//! (`[asr.mock]`, `[llm.mock]`, `[tts.mock]`; the `Default` impls are the documented defaults).
//! Their latencies are `tokio::time::sleep`s, so a test with paused time runs them in no wall time.
//! And they are deterministic except where a config asks for randomness (`jitter_ms`,
//! `failure_rate`): the same audio gives the same transcript, the same conversation the same reply,
//! the same text byte-identical audio.
//!
//! Each streaming call is a plain `Stream` with no task behind it, so dropping it cancels it.

mod asr;
mod llm;
mod tts;

use std::path::Path;

use crate::BuildError;

pub use asr::{fingerprint, DurationRule, MockAsr, MockAsrConfig};
pub use llm::{LlmRule, MockLlm, MockLlmConfig};
pub use tts::{MockTts, MockTtsConfig};

/// The name every mock provider reports (`Asr::name` etc. and `ProviderError`s).
pub const PROVIDER_NAME: &str = "mock";

/// Reads a WAV file that must be 16 kHz, mono, 16-bit integer PCM (voxd's internal format).
///
/// # Errors
/// `BuildError::Io` when the file cannot be read; `BuildError::Invalid` (with an empty key, its
/// message naming the file) when it is not a WAV file or has another format.
pub fn load_wav_16k_mono(path: &Path) -> Result<Vec<i16>, BuildError> {
    let shown = path.display().to_string();
    let invalid = |message: String| BuildError::Invalid {
        key: String::new(),
        message: format!("{shown}: {message}"),
    };
    let reader = hound::WavReader::open(path).map_err(|e| match e {
        hound::Error::IoError(source) => BuildError::Io {
            what: "cannot read WAV file",
            path: shown.clone(),
            source,
        },
        other => invalid(format!("not a readable WAV file: {other}")),
    })?;
    let spec = reader.spec();
    if spec.sample_rate != 16_000
        || spec.channels != 1
        || spec.bits_per_sample != 16
        || spec.sample_format != hound::SampleFormat::Int
    {
        return Err(invalid(format!(
            "expected 16 kHz mono 16-bit integer PCM, found {} Hz, {} channel(s), {}-bit {:?}",
            spec.sample_rate, spec.channels, spec.bits_per_sample, spec.sample_format
        )));
    }
    reader
        .into_samples::<i16>()
        .collect::<Result<Vec<i16>, _>>()
        .map_err(|e| invalid(format!("cannot decode samples: {e}")))
}

/// Checks that a config's rate (`failure_rate`, `hang_rate`, ...) is a probability. `key` is the
/// rate's key in the provider's table.
fn check_probability(key: &str, value: f64) -> Result<(), BuildError> {
    if (0.0..=1.0).contains(&value) {
        Ok(())
    } else {
        Err(BuildError::Invalid {
            key: key.to_owned(),
            message: format!("expected a probability between 0 and 1, got {value}"),
        })
    }
}

/// Whether a call should fail, given its configured failure rate. Never draws a random number
/// for rate 0, so the default config consumes no randomness.
fn inject_failure(rate: f64) -> bool {
    rate > 0.0 && fastrand::f64() < rate
}

/// 64-bit FNV-1a over `bytes`, continuing from `hash` (start with `FNV_OFFSET`).
fn fnv1a64(mut hash: u64, bytes: &[u8]) -> u64 {
    const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(FNV_PRIME);
    }
    hash
}

/// The FNV-1a 64-bit offset basis.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// What the mock providers' tests share.
#[cfg(test)]
pub(crate) mod testing {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::task::{Context, Wake, Waker};
    use std::time::Duration;

    use futures_util::stream::{Stream, StreamExt};

    /// A waker that counts how often it is woken.
    #[derive(Default)]
    struct CountingWaker(AtomicUsize);

    impl Wake for CountingWaker {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Polls `stream` once with a counting waker; it must be waiting for its next item.
    fn poll_pending<S: Stream + Unpin>(stream: &mut S) -> Arc<CountingWaker> {
        let counter = Arc::new(CountingWaker::default());
        let waker = Waker::from(counter.clone());
        assert!(
            stream
                .poll_next_unpin(&mut Context::from_waker(&waker))
                .is_pending(),
            "the stream should be waiting for its next item"
        );
        counter
    }

    /// Checks that dropping a stream stops its work: `kept` and `dropped` are two identical
    /// calls, each waiting (on a timer) for its next item. No task runs either of them, and once
    /// `dropped` is dropped nothing wakes it again, while `kept`, polled the same way, is woken
    /// when its next item is due and goes on to yield it. Needs paused time.
    pub(crate) async fn assert_dropping_stops_it<S: Stream + Unpin>(mut kept: S, dropped: S) {
        let mut dropped = dropped;
        let tasks = tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks();
        assert_eq!(tasks, 0, "the calls run in no task of their own");
        let kept_wakes = poll_pending(&mut kept);
        let dropped_wakes = poll_pending(&mut dropped);
        drop(dropped);
        // Long past every item's due time: the kept call's timer fires, the dropped one's is gone.
        tokio::time::sleep(Duration::from_secs(600)).await;
        assert!(
            kept_wakes.0.load(Ordering::SeqCst) > 0,
            "the kept call was woken for its next item"
        );
        assert_eq!(
            dropped_wakes.0.load(Ordering::SeqCst),
            0,
            "the dropped call was woken after it was dropped"
        );
        assert!(kept.next().await.is_some(), "the kept call goes on");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_reference_vectors() {
        assert_eq!(fnv1a64(FNV_OFFSET, b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(FNV_OFFSET, b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(FNV_OFFSET, b"foobar"), 0x8594_4171_f739_67e8);
    }

    /// The load tool keeps its own copies of these defaults (it depends on no crate of the
    /// server) to compute the pipeline minimum from a config that leaves them out.
    #[test]
    fn the_load_tools_copies_of_the_defaults_agree() {
        let copies = voxd_bench::CONFIG_DEFAULTS;
        assert_eq!(copies.asr_latency_ms, MockAsrConfig::default().latency_ms);
        let llm = MockLlmConfig::default();
        assert_eq!(copies.llm_first_token_ms, llm.first_token_ms);
        assert_eq!(copies.llm_token_interval_ms, llm.token_interval_ms);
        assert_eq!(
            copies.tts_first_audio_ms,
            MockTtsConfig::default().first_audio_ms
        );
    }

    #[test]
    fn probability_is_checked() {
        assert!(check_probability("x", 0.0).is_ok());
        assert!(check_probability("x", 1.0).is_ok());
        assert!(check_probability("x", -0.1).is_err());
        assert!(check_probability("x", f64::NAN).is_err());
    }
}
