//! Streaming PCM decoding for the TTS providers: bytes as they arrive from a socket or a pipe
//! (raw PCM16 little-endian, or a WAV stream whose header comes first) in, mono PCM16 chunks at
//! the session's output rate out.
//!
//! What it promises:
//!
//! * **Byte splits do not matter.** A sample (or a header) split across reads is carried over to
//!   the next read, so the output is the same however the input was chunked.
//! * **The output is aligned and exactly as long as the input.** The resampler's filter delay is
//!   cut from the head of the stream and its tail trimmed at the end, so a whole stream gives
//!   exactly what `voxd_core::resample::resample_all` gives for the same samples:
//!   `round(n * to / from)` samples, bit-exact copies when the rates are equal.
//! * **WAV streams with placeholder sizes work.** A streaming writer (espeak-ng `--stdout`, many
//!   TTS servers) cannot know the length up front and writes 0, `0xFFFFFFFF` or a value just
//!   under 2 GiB (espeak-ng writes `0x7FFFF000`); such a `data` chunk runs to the end of the stream.

use voxd_core::resample::{ResampleError, StreamResampler};
use voxd_core::SampleRate;

/// Longest WAV header (everything before the `data` chunk's samples) accepted, in bytes. A real
/// header is 44 bytes, or a few hundred with a `LIST` chunk; more means the stream is not a WAV.
const MAX_WAV_HEADER: usize = 64 * 1024;

/// `data` chunk sizes at or above this are placeholders written by streaming writers.
const PLACEHOLDER_DATA_SIZE: u32 = 0x7FFF_0000;

/// Why a PCM stream could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum PcmError {
    /// The stream ended before any byte arrived.
    #[error("the stream was empty")]
    Empty,
    /// The WAV header is malformed, truncated or of an unsupported format.
    #[error("{0}")]
    Wav(String),
    /// The source rate cannot be converted to the requested one.
    #[error("{0}")]
    Resample(ResampleError),
}

/// Decodes little-endian PCM16 bytes split anywhere, carrying a dangling byte to the next call.
#[derive(Debug, Default)]
pub(crate) struct Pcm16Decoder {
    carry: Option<u8>,
}

impl Pcm16Decoder {
    /// Appends the samples completed by `bytes` to `out`.
    pub(crate) fn decode(&mut self, mut bytes: &[u8], out: &mut Vec<i16>) {
        if let Some(low) = self.carry.take() {
            let Some((&high, rest)) = bytes.split_first() else {
                self.carry = Some(low);
                return;
            };
            out.push(i16::from_le_bytes([low, high]));
            bytes = rest;
        }
        let pairs = bytes.chunks_exact(2);
        self.carry = pairs.remainder().first().copied();
        out.extend(pairs.map(|p| i16::from_le_bytes([p[0], p[1]])));
    }

    /// Whether half a sample is waiting for its second byte.
    pub(crate) fn has_partial_sample(&self) -> bool {
        self.carry.is_some()
    }
}

/// What a WAV stream's header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct WavFormat {
    /// The sample rate.
    pub(crate) rate: SampleRate,
    /// Bytes of samples in the `data` chunk; `None` when the header has a placeholder size.
    pub(crate) data_len: Option<u32>,
}

/// The result of looking at a (possibly incomplete) header.
enum HeaderParse {
    NeedMore,
    /// The samples start at byte `offset`.
    Done {
        format: WavFormat,
        offset: usize,
    },
}

/// Parses the header of a mono PCM16 WAV stream, as far as `buf` goes.
fn parse_header(buf: &[u8]) -> Result<HeaderParse, PcmError> {
    let bad = |what: &str| {
        Err(PcmError::Wav(format!(
            "not a mono PCM16 WAV stream: {what}"
        )))
    };
    if buf.len() < 12 {
        let have = buf.len().min(4);
        if buf[..have] != b"RIFF"[..have] {
            return bad("no RIFF header");
        }
        return Ok(HeaderParse::NeedMore);
    }
    if &buf[..4] != b"RIFF" || &buf[8..12] != b"WAVE" {
        return bad("no RIFF/WAVE header");
    }
    let u16_at = |i: usize| u16::from_le_bytes([buf[i], buf[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
    let mut pos = 12;
    let mut rate = None;
    loop {
        if buf.len() < pos + 8 {
            return Ok(HeaderParse::NeedMore);
        }
        let id = &buf[pos..pos + 4];
        let size = u32_at(pos + 4);
        let body = pos + 8;
        if id == b"data" {
            let Some(rate) = rate else {
                return bad("data chunk before fmt chunk");
            };
            let data_len = (size != 0 && size < PLACEHOLDER_DATA_SIZE).then_some(size);
            return Ok(HeaderParse::Done {
                format: WavFormat { rate, data_len },
                offset: body,
            });
        }
        // Chunks are padded to an even length.
        let next = body + size as usize + (size as usize & 1);
        if id == b"fmt " {
            if size < 16 {
                return bad("fmt chunk too short");
            }
            if buf.len() < body + size as usize {
                return Ok(HeaderParse::NeedMore);
            }
            let tag = u16_at(body);
            // WAVE_FORMAT_EXTENSIBLE names the real format in its sub-format GUID's first bytes.
            let pcm = tag == 1 || (tag == 0xFFFE && size >= 40 && u16_at(body + 24) == 1);
            let (channels, hz, bits) = (u16_at(body + 2), u32_at(body + 4), u16_at(body + 14));
            if !pcm || bits != 16 {
                return bad(&format!(
                    "format tag {tag:#x}, {bits} bits (16-bit integer PCM needed)"
                ));
            }
            if channels != 1 {
                return bad(&format!("{channels} channels (mono needed)"));
            }
            if hz == 0 {
                return bad("sample rate 0");
            }
            rate = Some(SampleRate(hz));
        }
        if next > MAX_WAV_HEADER {
            return bad("header too long");
        }
        pos = next;
    }
}

/// Where a WAV stream is.
#[derive(Debug)]
enum WavState {
    /// Collecting the header.
    Header(Vec<u8>),
    /// In the `data` chunk; `remaining` bytes of it are left (`None`: until the end).
    Data { remaining: Option<u64> },
}

/// Decodes a mono PCM16 WAV stream incrementally: the header first, then samples as they come.
#[derive(Debug)]
pub(crate) struct WavStream {
    state: WavState,
    format: Option<WavFormat>,
    decoder: Pcm16Decoder,
}

impl WavStream {
    /// A decoder waiting for the header.
    pub(crate) fn new() -> WavStream {
        WavStream {
            state: WavState::Header(Vec::with_capacity(64)),
            format: None,
            decoder: Pcm16Decoder::default(),
        }
    }

    /// The header's format, once the header has been read.
    pub(crate) fn format(&self) -> Option<WavFormat> {
        self.format
    }

    /// Feeds the next bytes of the stream, appending the samples they complete to `out`.
    ///
    /// # Errors
    /// `PcmError::Wav` when the header is malformed or not mono 16-bit integer PCM.
    pub(crate) fn feed(&mut self, bytes: &[u8], out: &mut Vec<i16>) -> Result<(), PcmError> {
        match &mut self.state {
            WavState::Header(buf) => {
                buf.extend_from_slice(bytes);
                let HeaderParse::Done { format, offset } = parse_header(buf)? else {
                    if buf.len() > MAX_WAV_HEADER {
                        return Err(PcmError::Wav("WAV header too long".into()));
                    }
                    return Ok(());
                };
                let rest = std::mem::take(buf).split_off(offset);
                self.format = Some(format);
                self.state = WavState::Data {
                    remaining: format.data_len.map(u64::from),
                };
                self.feed(&rest, out)
            }
            WavState::Data { remaining } => {
                let bytes = match remaining {
                    None => bytes,
                    Some(left) => {
                        // Whatever follows a sized data chunk (a LIST chunk, say) is not audio.
                        let take = bytes
                            .len()
                            .min(usize::try_from(*left).unwrap_or(usize::MAX));
                        *left -= take as u64;
                        &bytes[..take]
                    }
                };
                self.decoder.decode(bytes, out);
                Ok(())
            }
        }
    }

    /// Checks the stream's end: it must have had a complete header.
    ///
    /// # Errors
    /// `PcmError::Empty` when nothing arrived, `PcmError::Wav` when the header was cut short.
    pub(crate) fn finish(&self) -> Result<(), PcmError> {
        match &self.state {
            WavState::Header(buf) if buf.is_empty() => Err(PcmError::Empty),
            WavState::Header(_) => Err(PcmError::Wav(
                "the stream ended inside the WAV header".into(),
            )),
            WavState::Data { .. } => Ok(()),
        }
    }

    /// Whether half a sample is waiting for its second byte.
    pub(crate) fn has_partial_sample(&self) -> bool {
        self.decoder.has_partial_sample()
    }
}

/// A `StreamResampler` whose output is aligned with its input: the filter delay is dropped from
/// the head, and at the end the output is cut to `round(n * to / from)` samples.
#[derive(Debug)]
pub(crate) struct AlignedResampler {
    inner: StreamResampler,
    /// Delay samples still to drop from the head of the output.
    skip: usize,
    /// Input samples taken and output samples handed out so far.
    taken: u64,
    emitted: u64,
}

impl AlignedResampler {
    /// A resampler from `from` to `to`.
    ///
    /// # Errors
    /// As `StreamResampler::new`.
    pub(crate) fn new(from: SampleRate, to: SampleRate) -> Result<Self, ResampleError> {
        let inner = StreamResampler::new(from, to)?;
        Ok(AlignedResampler {
            skip: inner.latency_samples(),
            inner,
            taken: 0,
            emitted: 0,
        })
    }

    /// Resamples `input`, appending the aligned output to `out`.
    pub(crate) fn process(&mut self, input: &[i16], out: &mut Vec<i16>) {
        self.taken += input.len() as u64;
        let start = out.len();
        self.inner.process(input, out);
        self.settle(start, out);
    }

    /// Ends the stream, appending the rest of the output to `out`.
    pub(crate) fn finish(&mut self, out: &mut Vec<i16>) {
        let start = out.len();
        self.inner.flush(out);
        self.settle(start, out);
        let (from, to) = (
            u128::from(self.inner.from_rate().hz()),
            u128::from(self.inner.to_rate().hz()),
        );
        let want = u64::try_from((u128::from(self.taken) * to * 2 + from) / (2 * from))
            .unwrap_or(u64::MAX);
        // Only the tail just flushed can be cut; what was handed out before never exceeds `want`,
        // since the filter delay is at least one sample.
        let over = self.emitted.saturating_sub(want);
        let cut = usize::try_from(over).map_or(out.len() - start, |o| o.min(out.len() - start));
        out.truncate(out.len() - cut);
        // Ready for another stream, like `StreamResampler::flush`.
        self.skip = self.inner.latency_samples();
        self.taken = 0;
        self.emitted = 0;
    }

    /// Drops the filter delay from what was just appended at `start..`, and counts the rest.
    fn settle(&mut self, start: usize, out: &mut Vec<i16>) {
        let drop = self.skip.min(out.len() - start);
        out.drain(start..start + drop);
        self.skip -= drop;
        self.emitted += (out.len() - start) as u64;
    }
}

/// Where the stream's rate comes from.
#[derive(Debug)]
enum Source {
    /// Raw PCM16 at a known rate.
    Raw(Pcm16Decoder),
    /// A WAV stream; the rate is in its header.
    Wav(WavStream),
}

/// Bytes of a PCM16 stream in, resampled chunks out: a decoder and an aligned resampler.
#[derive(Debug)]
pub(crate) struct PcmPipeline {
    source: Source,
    to: SampleRate,
    /// Built once the source rate is known.
    resampler: Option<AlignedResampler>,
    /// Decoded samples waiting for the resampler (reused between calls).
    decoded: Vec<i16>,
}

impl PcmPipeline {
    /// A pipeline for raw little-endian PCM16 at `from`, resampled to `to`.
    ///
    /// # Errors
    /// When `from` cannot be resampled to `to`.
    pub(crate) fn raw(from: SampleRate, to: SampleRate) -> Result<Self, ResampleError> {
        Ok(PcmPipeline {
            source: Source::Raw(Pcm16Decoder::default()),
            to,
            resampler: Some(AlignedResampler::new(from, to)?),
            decoded: Vec::new(),
        })
    }

    /// A pipeline for a mono PCM16 WAV stream, resampled from its header's rate to `to`.
    pub(crate) fn wav(to: SampleRate) -> Self {
        PcmPipeline {
            source: Source::Wav(WavStream::new()),
            to,
            resampler: None,
            decoded: Vec::new(),
        }
    }

    /// The source's sample rate, once known (at once for raw PCM, after the header for WAV).
    pub(crate) fn source_rate(&self) -> Option<SampleRate> {
        self.resampler.as_ref().map(|r| r.inner.from_rate())
    }

    /// Decodes and resamples `bytes`; returns the output they complete (possibly empty).
    ///
    /// # Errors
    /// A malformed WAV header, or a header rate that cannot be resampled to the output rate.
    pub(crate) fn push(&mut self, bytes: &[u8]) -> Result<Vec<i16>, PcmError> {
        self.decoded.clear();
        match &mut self.source {
            Source::Raw(decoder) => decoder.decode(bytes, &mut self.decoded),
            Source::Wav(wav) => {
                wav.feed(bytes, &mut self.decoded)?;
                if self.resampler.is_none() {
                    if let Some(format) = wav.format() {
                        self.resampler = Some(
                            AlignedResampler::new(format.rate, self.to)
                                .map_err(PcmError::Resample)?,
                        );
                    }
                }
            }
        }
        let mut out = Vec::new();
        if let Some(resampler) = &mut self.resampler {
            resampler.process(&self.decoded, &mut out);
        }
        Ok(out)
    }

    /// Ends the stream; returns the rest of the output and whether a dangling half sample was
    /// dropped.
    ///
    /// # Errors
    /// `PcmError::Empty` or `PcmError::Wav` when a WAV stream had no complete header.
    pub(crate) fn finish(&mut self) -> Result<(Vec<i16>, bool), PcmError> {
        let dangling = match &self.source {
            Source::Raw(decoder) => decoder.has_partial_sample(),
            Source::Wav(wav) => {
                wav.finish()?;
                wav.has_partial_sample()
            }
        };
        let mut out = Vec::new();
        if let Some(resampler) = &mut self.resampler {
            resampler.finish(&mut out);
        }
        Ok((out, dangling))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use voxd_core::resample::resample_all;

    fn samples(n: usize) -> Vec<i16> {
        (0..n)
            .map(|i| ((i as i32 * 7919) % 65_536 - 32_768) as i16)
            .collect()
    }

    fn bytes_of(samples: &[i16]) -> Vec<u8> {
        samples.iter().flat_map(|s| s.to_le_bytes()).collect()
    }

    /// A WAV header like espeak-ng's: 22050 Hz mono PCM16 with placeholder sizes.
    fn espeak_header(rate: u32) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(b"RIFF");
        h.extend_from_slice(&0x7FFF_F024u32.to_le_bytes());
        h.extend_from_slice(b"WAVEfmt ");
        h.extend_from_slice(&16u32.to_le_bytes());
        h.extend_from_slice(&1u16.to_le_bytes());
        h.extend_from_slice(&1u16.to_le_bytes());
        h.extend_from_slice(&rate.to_le_bytes());
        h.extend_from_slice(&(rate * 2).to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes());
        h.extend_from_slice(&16u16.to_le_bytes());
        h.extend_from_slice(b"data");
        h.extend_from_slice(&0x7FFF_F000u32.to_le_bytes());
        h
    }

    /// Feeds `bytes` to `feed` in pieces of 1, 2, 3, ... bytes (cycling up to `max`).
    fn in_pieces(bytes: &[u8], max: usize, mut feed: impl FnMut(&[u8])) {
        let mut rest = bytes;
        let mut len = 1;
        while !rest.is_empty() {
            let (now, later) = rest.split_at(len.min(rest.len()));
            feed(now);
            rest = later;
            len = len % max + 1;
        }
    }

    #[test]
    fn decoder_carries_odd_bytes_across_splits() {
        let want = samples(1001);
        let bytes = bytes_of(&want);
        for max in [1, 3, 7, 64] {
            let mut decoder = Pcm16Decoder::default();
            let mut got = Vec::new();
            in_pieces(&bytes, max, |b| decoder.decode(b, &mut got));
            assert_eq!(got, want, "pieces up to {max}");
            assert!(!decoder.has_partial_sample());
        }
        let mut decoder = Pcm16Decoder::default();
        let mut got = Vec::new();
        decoder.decode(&[1, 2, 3], &mut got);
        decoder.decode(&[], &mut got);
        assert!(decoder.has_partial_sample());
        decoder.decode(&[4], &mut got);
        assert_eq!(got, [0x0201, 0x0403]);
    }

    #[test]
    fn wav_stream_with_placeholder_sizes_runs_to_the_end() {
        let want = samples(5000);
        let mut bytes = espeak_header(22_050);
        bytes.extend(bytes_of(&want));
        for max in [1, 5, 44, 4096] {
            let mut wav = WavStream::new();
            let mut got = Vec::new();
            in_pieces(&bytes, max, |b| wav.feed(b, &mut got).expect("valid"));
            assert_eq!(got, want);
            assert_eq!(
                wav.format(),
                Some(WavFormat {
                    rate: SampleRate(22_050),
                    data_len: None
                })
            );
            wav.finish().expect("complete");
        }
    }

    #[test]
    fn wav_stream_skips_other_chunks_and_honours_a_real_data_size() {
        let want = samples(100);
        let mut bytes = espeak_header(16_000);
        // Insert an odd-sized LIST chunk (padded) before `data`, and give `data` its real size.
        let data_at = bytes.len() - 8;
        let mut list = b"LIST".to_vec();
        list.extend_from_slice(&3u32.to_le_bytes());
        list.extend_from_slice(b"abc\0");
        bytes.splice(data_at..data_at, list);
        let size_at = bytes.len() - 4;
        bytes[size_at..].copy_from_slice(&200u32.to_le_bytes());
        bytes.extend(bytes_of(&want));
        bytes.extend_from_slice(b"LIST\x04\0\0\0junk");
        let mut wav = WavStream::new();
        let mut got = Vec::new();
        in_pieces(&bytes, 9, |b| wav.feed(b, &mut got).expect("valid"));
        assert_eq!(got, want);
        assert_eq!(wav.format().map(|f| f.data_len), Some(Some(200)));
    }

    #[test]
    fn wav_stream_rejects_what_it_cannot_play() {
        let mut got = Vec::new();
        let err = WavStream::new().feed(b"ID3\x04", &mut got).unwrap_err();
        assert!(err.to_string().contains("RIFF"), "{err}");

        let mut stereo = espeak_header(22_050);
        stereo[22] = 2;
        let err = WavStream::new().feed(&stereo, &mut got).unwrap_err();
        assert!(err.to_string().contains("2 channels"), "{err}");

        let mut float = espeak_header(22_050);
        float[20] = 3;
        float[34] = 32;
        let err = WavStream::new().feed(&float, &mut got).unwrap_err();
        assert!(err.to_string().contains("16-bit integer PCM"), "{err}");

        assert_eq!(WavStream::new().finish(), Err(PcmError::Empty));
        let mut cut = WavStream::new();
        cut.feed(&espeak_header(22_050)[..30], &mut got).unwrap();
        assert!(matches!(cut.finish(), Err(PcmError::Wav(_))));
        assert!(got.is_empty());
    }

    #[test]
    fn aligned_resampler_matches_resample_all_however_chunked() {
        let input = samples(12_345);
        for (from, to) in [
            (24_000, 16_000),
            (22_050, 16_000),
            (22_050, 24_000),
            (16_000, 48_000),
        ] {
            let (from, to) = (SampleRate(from), SampleRate(to));
            let want = resample_all(from, to, &input).unwrap();
            for piece in [1, 97, 5000] {
                let mut r = AlignedResampler::new(from, to).unwrap();
                let mut got = Vec::new();
                for chunk in input.chunks(piece) {
                    r.process(chunk, &mut got);
                }
                r.finish(&mut got);
                assert_eq!(got, want, "{from} -> {to} in pieces of {piece}");
            }
        }
        let mut same = AlignedResampler::new(SampleRate(24_000), SampleRate(24_000)).unwrap();
        let mut got = Vec::new();
        same.process(&input, &mut got);
        same.finish(&mut got);
        assert_eq!(got, input);
    }

    #[test]
    fn pipeline_decodes_and_resamples_wav_from_its_header_rate() {
        let input = samples(4410);
        let mut bytes = espeak_header(22_050);
        bytes.extend(bytes_of(&input));
        let mut pipeline = PcmPipeline::wav(SampleRate(16_000));
        assert_eq!(pipeline.source_rate(), None);
        let mut got = Vec::new();
        for piece in bytes.chunks(333) {
            got.extend(pipeline.push(piece).unwrap());
        }
        assert_eq!(pipeline.source_rate(), Some(SampleRate(22_050)));
        let (tail, dangling) = pipeline.finish().unwrap();
        got.extend(tail);
        assert!(!dangling);
        assert_eq!(
            got,
            resample_all(SampleRate(22_050), SampleRate(16_000), &input).unwrap()
        );

        let mut raw = PcmPipeline::raw(SampleRate(24_000), SampleRate(24_000)).unwrap();
        let mut got = raw.push(&[1, 0, 2]).unwrap();
        let (tail, dangling) = raw.finish().unwrap();
        got.extend(tail);
        assert_eq!(got, [1]);
        assert!(dangling);
    }
}
