//! Streaming sample-rate conversion for mono PCM16.
//!
//! [`StreamResampler`] converts a stream of `i16` chunks of *any* length (one sample, a 20 ms
//! frame, a whole sentence of TTS audio) from one rate to another. voxd uses it on the way in
//! (client audio at 8/16/24/48 kHz to the internal 16 kHz) and on the way out (TTS audio at
//! 22.05/24/16 kHz to the session's output rate).
//!
//! What it promises:
//!
//! * **Bit-exact passthrough.** When both rates are equal no filter runs: samples are copied
//!   unchanged, with zero latency ([`StreamResampler::is_passthrough`]).
//! * **Chunking does not matter.** Input is collected into fixed blocks internally, so feeding a
//!   signal in one piece or in arbitrary pieces produces the identical output, sample for sample.
//! * **No heap allocation per call.** Every buffer (the partial input block, rubato's input and
//!   output buffers, its FFT scratch) is allocated in [`StreamResampler::new`]. `process` and
//!   `flush` only append to the caller's `Vec`, which may grow — reserve capacity up front to
//!   avoid that too.
//! * **Low, known latency.** The filter is rubato's synchronous FFT resampler ([`rubato::Fft`],
//!   fixed input size) working on blocks of about 10 ms of input (the smallest block that is a
//!   multiple of the rate pair's minimum block `from / gcd(from, to)` and is at least 10 ms).
//!   The filter delays the signal by [`StreamResampler::latency_samples`] output samples (half an
//!   output block: 5 ms for 8/24/48 kHz → 16 kHz, 10 ms for 22.05 kHz → 16 kHz), and output is
//!   produced a block at a time, so up to one block of input is held back until the next call or
//!   [`StreamResampler::flush`].
//! * **Samples are clamped, never wrapped.** Conversion is `i16 → f32 / 32768`, then back with
//!   rounding and saturation, so filter overshoot on full-scale input clips instead of wrapping.
//!
//! [`resample_all`] is the one-shot form for a whole buffer: it flushes and trims the filter
//! delay, so the output lines up with the input and has `round(len * to / from)` samples.
//!
//! Sans-IO like the rest of the core: no threads, no clocks, no IO.

use std::fmt;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Resampler, WindowFunction};

use crate::types::SampleRate;

/// Lowest sample rate [`StreamResampler::new`] accepts, in Hz.
pub const MIN_RATE_HZ: u32 = 4_000;
/// Highest sample rate [`StreamResampler::new`] accepts, in Hz.
pub const MAX_RATE_HZ: u32 = 192_000;
/// Target duration of one processing block, in milliseconds.
const TARGET_BLOCK_MS: u32 = 10;
/// Longest block a rate pair may need before it is rejected as impractical (too much latency).
const MAX_BLOCK_MS: u32 = 100;

/// Why a [`StreamResampler`] could not be built.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ResampleError {
    /// A sample rate of 0 Hz.
    ZeroRate,
    /// A sample rate outside [`MIN_RATE_HZ`]..=[`MAX_RATE_HZ`].
    UnsupportedRate(SampleRate),
    /// The two rates share so small a common divisor that the shortest exact block would hold
    /// more than 100 ms of audio (e.g. 44 101 Hz → 16 000 Hz).
    IncompatibleRates {
        /// The input rate.
        from: SampleRate,
        /// The output rate.
        to: SampleRate,
    },
    /// rubato refused to build the resampler.
    Backend(String),
}

impl fmt::Display for ResampleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ResampleError::ZeroRate => write!(f, "sample rate must be greater than 0 Hz"),
            ResampleError::UnsupportedRate(rate) => write!(
                f,
                "unsupported sample rate {rate} (supported: {MIN_RATE_HZ}..={MAX_RATE_HZ} Hz)"
            ),
            ResampleError::IncompatibleRates { from, to } => write!(
                f,
                "cannot resample {from} to {to}: the rates' smallest exact block exceeds \
                 {MAX_BLOCK_MS} ms"
            ),
            ResampleError::Backend(msg) => write!(f, "resampler construction failed: {msg}"),
        }
    }
}

impl std::error::Error for ResampleError {}

/// The filtering state of a non-passthrough resampler.
struct Filter {
    fft: Fft<f32>,
    /// Input samples per block.
    block_in: usize,
    /// Output samples per block.
    block_out: usize,
    /// The block being collected, as f32; `pending[..fill]` is valid.
    pending: Vec<f32>,
    fill: usize,
    /// rubato's output for one block.
    out_buf: Vec<f32>,
    /// Input samples taken and output samples emitted since construction or the last flush.
    total_in: u64,
    total_out: u64,
}

impl Filter {
    /// Resample the (full or zero-padded) `pending` block and append the first `take` output
    /// samples to `out`.
    fn run_block(&mut self, out: &mut Vec<i16>, take: usize) {
        let input = InterleavedSlice::new(&self.pending[..], 1, self.block_in)
            .expect("pending holds exactly one block (sized in new)");
        let mut output = InterleavedSlice::new_mut(&mut self.out_buf[..], 1, self.block_out)
            .expect("out_buf holds exactly one block (sized in new)");
        let (used, produced) = self
            .fft
            .process_into_buffer(&input, &mut output, None)
            .expect("buffer sizes match the resampler's fixed block sizes (checked in new)");
        debug_assert_eq!((used, produced), (self.block_in, self.block_out));
        let take = take.min(produced);
        out.extend(self.out_buf[..take].iter().map(|&x| f32_to_i16(x)));
        self.fill = 0;
        self.total_out += take as u64;
    }
}

/// A streaming mono PCM16 sample-rate converter with bit-exact passthrough and no per-call
/// allocation. See the [module docs](self) for its guarantees.
pub struct StreamResampler {
    from: SampleRate,
    to: SampleRate,
    /// `None` when `from == to`.
    filter: Option<Filter>,
}

impl fmt::Debug for StreamResampler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("StreamResampler");
        d.field("from", &self.from).field("to", &self.to);
        if let Some(filter) = &self.filter {
            d.field("block_in", &filter.block_in)
                .field("block_out", &filter.block_out)
                .field("buffered", &filter.fill);
        }
        d.finish()
    }
}

impl StreamResampler {
    /// Build a resampler from `from` to `to`, preallocating everything it will need.
    ///
    /// # Errors
    ///
    /// [`ResampleError::ZeroRate`] for a 0 Hz rate, [`ResampleError::UnsupportedRate`] for a rate
    /// outside [`MIN_RATE_HZ`]..=[`MAX_RATE_HZ`], [`ResampleError::IncompatibleRates`] when the
    /// pair needs an impractically long block, [`ResampleError::Backend`] if rubato refuses.
    pub fn new(from: SampleRate, to: SampleRate) -> Result<Self, ResampleError> {
        for rate in [from, to] {
            if rate.hz() == 0 {
                return Err(ResampleError::ZeroRate);
            }
            if !(MIN_RATE_HZ..=MAX_RATE_HZ).contains(&rate.hz()) {
                return Err(ResampleError::UnsupportedRate(rate));
            }
        }
        if from == to {
            return Ok(StreamResampler {
                from,
                to,
                filter: None,
            });
        }

        let (from_hz, to_hz) = (from.hz() as usize, to.hz() as usize);
        let g = gcd(from_hz, to_hz);
        let (min_in, min_out) = (from_hz / g, to_hz / g);
        // Smallest whole number of minimum blocks covering at least TARGET_BLOCK_MS of input.
        let target_in = (from_hz * TARGET_BLOCK_MS as usize).div_ceil(1000);
        let blocks = target_in.div_ceil(min_in).max(1);
        let (block_in, block_out) = (blocks * min_in, blocks * min_out);
        if block_in * 1000 > from_hz * MAX_BLOCK_MS as usize {
            return Err(ResampleError::IncompatibleRates { from, to });
        }

        // One FFT sub-chunk per block, so the block is exactly one FFT unit and every call on a
        // full block yields exactly `block_out` samples.
        let fft = Fft::<f32>::new_custom(
            from_hz,
            to_hz,
            block_in,
            1,
            1,
            WindowFunction::BlackmanHarris2,
            FixedSync::Input,
        )
        .map_err(|e| ResampleError::Backend(e.to_string()))?;
        if fft.input_frames_next() != block_in
            || fft.output_frames_next() != block_out
            || fft.output_frames_max() != block_out
        {
            return Err(ResampleError::Backend(format!(
                "unexpected block sizes {}->{} (wanted {block_in}->{block_out})",
                fft.input_frames_next(),
                fft.output_frames_next()
            )));
        }

        Ok(StreamResampler {
            from,
            to,
            filter: Some(Filter {
                fft,
                block_in,
                block_out,
                pending: vec![0.0; block_in],
                fill: 0,
                out_buf: vec![0.0; block_out],
                total_in: 0,
                total_out: 0,
            }),
        })
    }

    /// The input rate.
    pub fn from_rate(&self) -> SampleRate {
        self.from
    }

    /// The output rate.
    pub fn to_rate(&self) -> SampleRate {
        self.to
    }

    /// `true` when the rates are equal: samples are copied bit-exactly, no filter runs.
    pub fn is_passthrough(&self) -> bool {
        self.filter.is_none()
    }

    /// Resample `input` and append the output samples to `out`.
    ///
    /// Output comes a block at a time (see [`Self::block_sizes`]); input that does not complete a
    /// block is kept for the next call or [`Self::flush`]. Never allocates itself; `out` grows if
    /// it lacks capacity.
    pub fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        let Some(filter) = &mut self.filter else {
            out.extend_from_slice(input);
            return;
        };
        out.reserve((filter.fill + input.len()) / filter.block_in * filter.block_out);
        filter.total_in += input.len() as u64;
        let mut rest = input;
        while !rest.is_empty() {
            let n = (filter.block_in - filter.fill).min(rest.len());
            let (now, later) = rest.split_at(n);
            for (dst, &s) in filter.pending[filter.fill..filter.fill + n]
                .iter_mut()
                .zip(now)
            {
                *dst = i16_to_f32(s);
            }
            filter.fill += n;
            rest = later;
            if filter.fill == filter.block_in {
                let take = filter.block_out;
                filter.run_block(out, take);
            }
        }
    }

    /// End of stream: append the remaining output (the held-back partial block and the filter's
    /// tail, padding the input with zeros) and reset, so the next `process` starts a new stream.
    ///
    /// Since the start of the stream, exactly `latency_samples() + ceil(n * to / from)` samples
    /// will then have been appended for `n` input samples (none at all if `n == 0`); the last
    /// output sample is the one at the end of the input. No-op for a passthrough resampler.
    pub fn flush(&mut self, out: &mut Vec<i16>) {
        let delay = self.latency_samples() as u64;
        let (from, to) = (u128::from(self.from.hz()), u128::from(self.to.hz()));
        let Some(filter) = &mut self.filter else {
            return;
        };
        if filter.total_in > 0 {
            let scaled = (u128::from(filter.total_in) * to).div_ceil(from);
            let target = delay + u64::try_from(scaled).unwrap_or(u64::MAX);
            while filter.total_out < target {
                filter.pending[filter.fill..].fill(0.0);
                let take = usize::try_from(target - filter.total_out).unwrap_or(usize::MAX);
                filter.run_block(out, take);
            }
        }
        self.reset();
    }

    /// Drop any buffered input and filter state without emitting anything (e.g. on barge-in).
    pub fn reset(&mut self) {
        if let Some(filter) = &mut self.filter {
            filter.fft.reset();
            filter.pending.fill(0.0);
            filter.fill = 0;
            filter.total_in = 0;
            filter.total_out = 0;
        }
    }

    /// The delay the filter adds, in output samples: an input event at input sample `i` appears
    /// at output sample `latency_samples() + i * to / from` of the stream. 0 for passthrough.
    /// (Rounded: when the input block is odd, e.g. 441 samples for 22.05 kHz -> 16 kHz, the true
    /// delay is `floor(block_in / 2) * to / from`, a fraction of a sample less.)
    /// (Output is additionally released a block at a time; see [`Self::block_sizes`].)
    pub fn latency_samples(&self) -> usize {
        self.filter.as_ref().map_or(0, |f| f.fft.output_delay())
    }

    /// `(input, output)` samples per processing block: output is appended whenever another full
    /// input block has arrived. `(1, 1)` for passthrough.
    pub fn block_sizes(&self) -> (usize, usize) {
        self.filter
            .as_ref()
            .map_or((1, 1), |f| (f.block_in, f.block_out))
    }

    /// Input samples currently held back waiting for a full block.
    pub fn buffered_input(&self) -> usize {
        self.filter.as_ref().map_or(0, |f| f.fill)
    }
}

/// Resample a whole buffer at once: process, flush, and trim the filter delay so the output is
/// aligned with the input and has exactly `round(input.len() * to / from)` samples.
///
/// # Errors
///
/// As [`StreamResampler::new`].
pub fn resample_all(
    from: SampleRate,
    to: SampleRate,
    input: &[i16],
) -> Result<Vec<i16>, ResampleError> {
    let mut r = StreamResampler::new(from, to)?;
    if r.is_passthrough() {
        return Ok(input.to_vec());
    }
    let (f, t) = (u128::from(from.hz()), u128::from(to.hz()));
    let want = usize::try_from((input.len() as u128 * t * 2 + f) / (2 * f))
        .expect("output length fits in memory");
    let delay = r.latency_samples();
    let mut out = Vec::with_capacity(delay + want + r.block_sizes().1);
    r.process(input, &mut out);
    r.flush(&mut out);
    out.drain(..delay.min(out.len()));
    out.truncate(want);
    Ok(out)
}

/// PCM16 to float in [-1, 1).
#[inline]
fn i16_to_f32(s: i16) -> f32 {
    f32::from(s) / 32768.0
}

/// Float to PCM16, rounding to nearest and saturating (NaN becomes 0).
#[inline]
fn f32_to_i16(x: f32) -> i16 {
    // `as` saturates out-of-range floats and maps NaN to 0; the clamp makes the intent explicit.
    (x * 32768.0).round().clamp(-32768.0, 32767.0) as i16
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    const PAIRS: &[(u32, u32)] = &[
        (48_000, 16_000),
        (8_000, 16_000),
        (24_000, 16_000),
        (22_050, 16_000),
        (16_000, 8_000),
        (16_000, 24_000),
        (16_000, 48_000),
        (22_050, 8_000),
        (22_050, 24_000),
        (22_050, 48_000),
        (24_000, 8_000),
        (24_000, 48_000),
    ];

    fn sr(hz: u32) -> SampleRate {
        SampleRate(hz)
    }

    /// `n` samples of a sine at `freq` Hz, peak `amp` (in i16 units), sampled at `rate`.
    fn sine(rate: u32, freq: f64, amp: f64, n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| (amp * (2.0 * PI * freq * i as f64 / f64::from(rate)).sin()).round() as i16)
            .collect()
    }

    fn rms(x: &[i16]) -> f64 {
        (x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len() as f64).sqrt()
    }

    /// Frequency estimated from rising zero crossings (with linear interpolation) over `x`.
    fn zero_crossing_freq(x: &[i16], rate: u32) -> f64 {
        let mut crossings = Vec::new();
        for i in 1..x.len() {
            let (a, b) = (f64::from(x[i - 1]), f64::from(x[i]));
            if a < 0.0 && b >= 0.0 {
                crossings.push((i - 1) as f64 + a / (a - b));
            }
        }
        let (first, last) = (crossings[0], *crossings.last().unwrap());
        (crossings.len() - 1) as f64 * f64::from(rate) / (last - first)
    }

    /// Power of `x` at `freq` (Goertzel), normalised by length.
    fn goertzel(x: &[i16], rate: u32, freq: f64) -> f64 {
        let w = 2.0 * PI * freq / f64::from(rate);
        let c = 2.0 * w.cos();
        let (mut s1, mut s2) = (0.0, 0.0);
        for &v in x {
            let s0 = f64::from(v) + c * s1 - s2;
            s2 = s1;
            s1 = s0;
        }
        (s1 * s1 + s2 * s2 - c * s1 * s2) / (x.len() as f64).powi(2)
    }

    /// Deterministic chunk lengths in 1..=2000 (a 64-bit LCG).
    fn chunk_lengths(seed: u64) -> impl Iterator<Item = usize> {
        let mut state = seed;
        std::iter::from_fn(move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            Some((state >> 33) as usize % 2000 + 1)
        })
    }

    fn stream_whole(from: u32, to: u32, input: &[i16]) -> Vec<i16> {
        let mut r = StreamResampler::new(sr(from), sr(to)).unwrap();
        let mut out = Vec::new();
        r.process(input, &mut out);
        r.flush(&mut out);
        out
    }

    fn stream_chunked(from: u32, to: u32, input: &[i16], seed: u64) -> Vec<i16> {
        let mut r = StreamResampler::new(sr(from), sr(to)).unwrap();
        let mut out = Vec::new();
        let mut rest = input;
        for len in chunk_lengths(seed) {
            if rest.is_empty() {
                break;
            }
            let (now, later) = rest.split_at(len.min(rest.len()));
            r.process(now, &mut out);
            rest = later;
        }
        r.flush(&mut out);
        out
    }

    #[test]
    fn passthrough_is_bit_exact() {
        let input: Vec<i16> = chunk_lengths(7)
            .take(5000)
            .map(|v| (v as i32 * 33 - 32768).clamp(-32768, 32767) as i16)
            .chain([i16::MIN, i16::MAX, 0, -1, 1])
            .collect();
        for hz in [8_000, 16_000, 22_050, 24_000, 48_000] {
            let mut r = StreamResampler::new(sr(hz), sr(hz)).unwrap();
            assert!(r.is_passthrough());
            assert_eq!(r.latency_samples(), 0);
            let mut out = Vec::new();
            for chunk in input.chunks(37) {
                r.process(chunk, &mut out);
            }
            r.flush(&mut out);
            assert_eq!(out, input);
            assert_eq!(resample_all(sr(hz), sr(hz), &input).unwrap(), input);
        }
    }

    #[test]
    fn resample_rejects_bad_rates() {
        let err = |a, b| StreamResampler::new(sr(a), sr(b)).unwrap_err();
        assert_eq!(err(0, 16_000), ResampleError::ZeroRate);
        assert_eq!(err(16_000, 0), ResampleError::ZeroRate);
        assert_eq!(err(100, 16_000), ResampleError::UnsupportedRate(sr(100)));
        assert_eq!(
            err(16_000, 1_000_000),
            ResampleError::UnsupportedRate(sr(1_000_000))
        );
        assert!(matches!(
            err(44_101, 16_000),
            ResampleError::IncompatibleRates { .. }
        ));
        assert!(resample_all(sr(0), sr(0), &[1, 2]).is_err());
        assert!(!err(0, 1).to_string().is_empty());
    }

    #[test]
    fn resample_latency_and_block_sizes() {
        let expect = [
            // (from, to, block_in, block_out, latency)
            (48_000, 16_000, 480, 160, 80),
            (8_000, 16_000, 80, 160, 80),
            (24_000, 16_000, 240, 160, 80),
            (22_050, 16_000, 441, 320, 160),
            (16_000, 8_000, 160, 80, 40),
            (16_000, 24_000, 160, 240, 120),
            (16_000, 48_000, 160, 480, 240),
            (22_050, 24_000, 294, 320, 160),
            (22_050, 48_000, 294, 640, 320),
            (24_000, 48_000, 240, 480, 240),
        ];
        for (from, to, bin, bout, lat) in expect {
            let r = StreamResampler::new(sr(from), sr(to)).unwrap();
            assert_eq!(r.block_sizes(), (bin, bout), "{from}->{to}");
            assert_eq!(r.latency_samples(), lat, "{from}->{to}");
            assert!(!r.is_passthrough());
        }
    }

    #[test]
    fn resample_sine_keeps_frequency_amplitude_and_length() {
        for &(from, to) in PAIRS {
            let n = from as usize; // one second
            let amp = 16_000.0;
            let input = sine(from, 440.0, amp, n);
            let expected = (n as u64 * u64::from(to)).div_ceil(u64::from(from)) as usize;

            // Streaming: exactly latency + ceil(n * to / from) samples.
            let mut r = StreamResampler::new(sr(from), sr(to)).unwrap();
            let lat = r.latency_samples();
            let mut out = Vec::new();
            r.process(&input, &mut out);
            assert!(out.len() <= lat + expected, "{from}->{to}");
            r.flush(&mut out);
            assert_eq!(out.len(), lat + expected, "{from}->{to}");

            // One-shot: round(n * to / from) samples, aligned with the input.
            let all = resample_all(sr(from), sr(to), &input).unwrap();
            let want = (n as f64 * f64::from(to) / f64::from(from)).round() as usize;
            assert!(all.len().abs_diff(want) <= 1, "{from}->{to}: {}", all.len());
            assert_eq!(&all[..], &out[lat..lat + all.len()]);

            // Steady state: skip 50 ms at both ends.
            let edge = to as usize / 20;
            let steady = &all[edge..all.len() - edge];
            let f = zero_crossing_freq(steady, to);
            assert!((f - 440.0).abs() < 0.5, "{from}->{to}: {f} Hz");
            let p440 = goertzel(steady, to, 440.0);
            for other in [220.0, 330.0, 550.0, 880.0, 1320.0] {
                assert!(
                    p440 > 1000.0 * goertzel(steady, to, other),
                    "{from}->{to} vs {other}"
                );
            }
            let gain_db = 20.0 * (rms(steady) / (amp / 2f64.sqrt())).log10();
            assert!(gain_db.abs() < 1.0, "{from}->{to}: {gain_db} dB");

            // Aligned with the ideal sine at the output rate (delay correctly trimmed). The
            // filter's true delay is `floor(block_in / 2)` input samples, which for an odd block
            // (22.05 kHz -> 8/16 kHz) is a fraction of a sample short of `latency_samples()`.
            let (block_in, _) = r.block_sizes();
            let shift = (block_in / 2) as f64 * f64::from(to) / f64::from(from) - lat as f64;
            assert!(shift.abs() < 0.5, "{from}->{to}: {shift}");
            let ideal: Vec<i16> = (0..all.len())
                .map(|j| {
                    let t = (j as f64 - shift) / f64::from(to);
                    (amp * (2.0 * PI * 440.0 * t).sin()).round() as i16
                })
                .collect();
            let err: Vec<i16> = all
                .iter()
                .zip(&ideal)
                .skip(edge)
                .take(steady.len())
                .map(|(&a, &b)| a - b)
                .collect();
            let snr_db = 20.0 * (rms(steady) / rms(&err).max(1e-9)).log10();
            assert!(snr_db > 40.0, "{from}->{to}: SNR {snr_db} dB");
        }
    }

    #[test]
    fn resample_chunking_does_not_change_output() {
        for &(from, to) in PAIRS {
            let input = sine(from, 440.0, 12_000.0, from as usize / 2 + 123);
            let whole = stream_whole(from, to, &input);
            for seed in [1, 2, 3] {
                assert_eq!(
                    stream_chunked(from, to, &input, seed),
                    whole,
                    "{from}->{to}"
                );
            }
        }
    }

    #[test]
    fn resample_single_samples_and_reuse_after_flush() {
        let input = sine(22_050, 440.0, 8_000.0, 3_000);
        let whole = stream_whole(22_050, 16_000, &input);
        let mut r = StreamResampler::new(sr(22_050), sr(16_000)).unwrap();
        for round in 0..2 {
            let mut out = Vec::new();
            for s in &input {
                r.process(std::slice::from_ref(s), &mut out);
            }
            r.flush(&mut out);
            assert_eq!(out, whole, "round {round}");
            assert_eq!(r.buffered_input(), 0);
        }
        // Flushing an empty stream emits nothing.
        let mut out = Vec::new();
        r.flush(&mut out);
        assert!(out.is_empty());
        assert!(resample_all(sr(48_000), sr(16_000), &[])
            .unwrap()
            .is_empty());
    }

    #[test]
    fn resample_silence_stays_silent() {
        for &(from, to) in PAIRS {
            let out = stream_chunked(from, to, &vec![0; from as usize / 3], 9);
            assert!(!out.is_empty());
            assert!(out.iter().all(|&s| s.abs() <= 1), "{from}->{to}");
        }
    }

    #[test]
    fn resample_full_scale_input_clamps_instead_of_wrapping() {
        // A full-scale 500 Hz square wave: the band-limited result overshoots (Gibbs) and must
        // saturate; a wrap would show up as a large value of the wrong sign.
        for &(from, to) in PAIRS {
            let period = from as usize / 500;
            let input: Vec<i16> = (0..from as usize / 2)
                .map(|i| {
                    if (i % period) < period / 2 {
                        i16::MAX
                    } else {
                        i16::MIN
                    }
                })
                .collect();
            let out = resample_all(sr(from), sr(to), &input).unwrap();
            let out_period = period as f64 * f64::from(to) / f64::from(from);
            let mut saw_clip = false;
            for (j, &s) in out.iter().enumerate().skip(to as usize / 50) {
                let phase = (j as f64 / out_period).fract();
                saw_clip |= s == i16::MAX || s == i16::MIN;
                if (0.15..0.35).contains(&phase) {
                    assert!(s > 25_000, "{from}->{to}: sample {j} = {s}");
                } else if (0.65..0.85).contains(&phase) {
                    assert!(s < -25_000, "{from}->{to}: sample {j} = {s}");
                }
            }
            assert!(saw_clip, "{from}->{to}: expected overshoot to clip");
        }
        assert_eq!(f32_to_i16(1.5), i16::MAX);
        assert_eq!(f32_to_i16(-1.5), i16::MIN);
        assert_eq!(f32_to_i16(f32::NAN), 0);
        assert_eq!(f32_to_i16(i16_to_f32(i16::MIN)), i16::MIN);
        assert_eq!(f32_to_i16(i16_to_f32(i16::MAX)), i16::MAX);
    }
}
