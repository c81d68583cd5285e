//! The `wav` fuzz target's body: one `POST /v1/transcribe` body through the decoders.
//!
//! The cargo-fuzz target `fuzz/fuzz_targets/wav.rs` (nightly, libFuzzer) calls it through
//! `voxd::fuzzing`, and this module's tests replay the committed corpus (`fuzz/corpus/wav/`) and a
//! bounded random run on stable in `cargo test`, so CI exercises the same code. It panics when a
//! promise is broken; an error for bad input is a pass. See docs/fuzzing.md.
//!
//! Built for tests and with the `fuzzing` feature; not part of the server.

use super::{decode_pcm, decode_wav, to_internal, Decoded};

/// `wav`: a `/v1/transcribe` body. `decode_wav` (or, for a body that is not RIFF, `decode_pcm`
/// with a rate and channel count taken from its first bytes) then `to_internal` never panic and
/// never allocate more than the body justifies (a header's claimed length is not trusted); what
/// they accept has consistent lengths; what they refuse is a 4xx with a known code.
///
/// # Panics
/// When a promise is broken.
pub fn wav(data: &[u8]) {
    let decoded = if data.starts_with(b"RIFF") {
        decode_wav(data)
    } else {
        // A raw-PCM request: `?sample_rate=` and `?channels=` are strings from the query.
        let (rate, channels, body) = match data {
            [r, c, body @ ..] => {
                let rates = [
                    "16000",
                    "8000",
                    "48000",
                    "44100",
                    "7999",
                    "0",
                    "x",
                    "4294967296",
                ];
                let rate = rates[usize::from(*r) % rates.len()];
                let channels = ["1", "2", "8", "0", "9", "-1"];
                (
                    Some(rate),
                    Some(channels[usize::from(*c) % channels.len()]),
                    body,
                )
            }
            _ => (None, None, data),
        };
        decode_pcm(body, rate, channels)
    };
    let d = match decoded {
        Ok(d) => d,
        Err(e) => {
            assert!(e.status.is_client_error(), "{} for {:?}", e.status, e.code);
            assert!(
                [
                    "invalid_wav",
                    "unsupported_encoding",
                    "empty_audio",
                    "missing_parameter",
                    "invalid_parameter",
                    "invalid_pcm",
                ]
                .contains(&e.code),
                "unknown code {:?}",
                e.code
            );
            return;
        }
    };
    check_decoded(&d, data.len());
    match to_internal(&d) {
        Ok(audio) => {
            let frames = (d.samples.len() / usize::from(d.channels)) as u128;
            let rate = u128::from(d.rate);
            // `resample_all` promises round(frames * 16000 / rate) samples.
            let expected = (frames * 16_000 * 2 + rate) / (2 * rate);
            assert_eq!(
                audio.len() as u128,
                expected,
                "{frames} frames at {rate} Hz"
            );
        }
        Err(e) => assert_eq!(e.code, "unsupported_sample_rate"),
    }
}

fn check_decoded(d: &Decoded, body_len: usize) {
    assert!(d.channels >= 1, "0 channels accepted");
    assert_eq!(
        d.samples.len() % usize::from(d.channels),
        0,
        "{} samples of {} channels",
        d.samples.len(),
        d.channels
    );
    // At least a byte per sample: nothing is invented.
    assert!(d.samples.len() <= body_len);
}

#[cfg(test)]
mod tests {
    //! The stable, bounded equivalent of the fuzz runs: every committed corpus input, then a
    //! fixed number of random ones.

    use proptest::prelude::*;

    use super::*;
    use crate::fuzz_corpus::replay;

    #[test]
    fn wav_corpus() {
        replay("wav", wav);
    }

    /// A WAV header with every field random-ish, then a little data, then cut anywhere.
    fn wav_file() -> impl Strategy<Value = Vec<u8>> {
        (
            prop_oneof![Just(1u16), Just(3), Just(0xFFFE), any::<u16>()],
            0u16..4,
            prop_oneof![
                Just(16_000u32),
                Just(8000),
                Just(44_100),
                Just(48_000),
                Just(44_101),
                any::<u32>()
            ],
            prop_oneof![Just(8u16), Just(16), Just(24), Just(32), any::<u16>()],
            any::<bool>(),
            prop_oneof![Just(None), any::<u32>().prop_map(Some)],
            proptest::collection::vec(any::<u8>(), 0..256),
            any::<prop::sample::Index>(),
        )
            .prop_map(
                |(format, channels, rate, bits, consistent, claimed, data, cut)| {
                    let align = if consistent {
                        channels * (bits / 8)
                    } else {
                        bits
                    };
                    let mut f = Vec::new();
                    f.extend_from_slice(b"RIFF");
                    f.extend_from_slice(&(36 + data.len() as u32).to_le_bytes());
                    f.extend_from_slice(b"WAVEfmt ");
                    f.extend_from_slice(&16u32.to_le_bytes());
                    f.extend_from_slice(&format.to_le_bytes());
                    f.extend_from_slice(&channels.to_le_bytes());
                    f.extend_from_slice(&rate.to_le_bytes());
                    f.extend_from_slice(&rate.wrapping_mul(u32::from(align)).to_le_bytes());
                    f.extend_from_slice(&align.to_le_bytes());
                    f.extend_from_slice(&bits.to_le_bytes());
                    f.extend_from_slice(b"data");
                    f.extend_from_slice(&claimed.unwrap_or(data.len() as u32).to_le_bytes());
                    f.extend_from_slice(&data);
                    let keep = cut.index(f.len() + 1);
                    if keep > 12 {
                        f.truncate(keep);
                    }
                    f
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn wav_random(data in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..128),
            wav_file(),
        ]) {
            wav(&data);
        }
    }
}
