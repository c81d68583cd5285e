//! Inbound audio for codecs: little-endian PCM16 bytes at the client's rate, to the 16 kHz mono
//! samples the core takes, in reused buffers (no allocation per frame once warm).

use voxd_core::resample::StreamResampler;
use voxd_core::SampleRate;

/// Decodes and resamples one client's audio.
#[derive(Debug)]
pub(crate) struct AudioIn {
    resampler: Option<StreamResampler>,
    samples: Vec<i16>,
    resampled: Vec<i16>,
}

impl AudioIn {
    /// Audio at `rate`. Panics on a rate `StreamResampler` does not take: the upgrade handler
    /// admits only `config::SUPPORTED_RATES`.
    pub(crate) fn new(rate: SampleRate) -> Self {
        let resampler = (rate != SampleRate::INTERNAL).then(|| {
            StreamResampler::new(rate, SampleRate::INTERNAL)
                .expect("the handler admits only supported input rates")
        });
        AudioIn {
            resampler,
            // 100 ms at 48 kHz, and its 16 kHz result: a frame of any usual length fits.
            samples: Vec::with_capacity(4800),
            resampled: Vec::with_capacity(1600),
        }
    }

    /// The client's rate.
    pub(crate) fn rate(&self) -> SampleRate {
        self.resampler
            .as_ref()
            .map_or(SampleRate::INTERNAL, StreamResampler::from_rate)
    }

    /// PCM16LE bytes (an even number) to 16 kHz samples, valid until the next call.
    pub(crate) fn pcm16le(&mut self, bytes: &[u8]) -> &[i16] {
        self.samples.clear();
        self.samples.extend(
            bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]])),
        );
        self.resample()
    }

    /// G.711 bytes to 16 kHz samples, valid until the next call.
    pub(crate) fn g711(&mut self, law: voxd_core::g711::Law, bytes: &[u8]) -> &[i16] {
        self.samples.clear();
        law.decode(bytes, &mut self.samples);
        self.resample()
    }

    fn resample(&mut self) -> &[i16] {
        match &mut self.resampler {
            None => &self.samples,
            Some(r) => {
                self.resampled.clear();
                r.process(&self.samples, &mut self.resampled);
                &self.resampled
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcm_at_16k_passes_through_and_other_rates_are_resampled() {
        let mut same = AudioIn::new(SampleRate::INTERNAL);
        assert_eq!(same.pcm16le(&[1, 0, 0xff, 0xff]), [1, -1]);
        let mut wide = AudioIn::new(SampleRate(48_000));
        assert_eq!(wide.rate(), SampleRate(48_000));
        let bytes = vec![0u8; 960 * 2]; // 20 ms at 48 kHz
        let mut total = 0;
        for _ in 0..10 {
            total += wide.pcm16le(&bytes).len();
        }
        // 200 ms at 16 kHz, give or take the resampler's delay.
        assert!((3000..=3200).contains(&total), "{total}");
    }
}
