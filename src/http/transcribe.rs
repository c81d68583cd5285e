//! `POST /v1/transcribe`: batch transcription through the same ASR provider as `/ws`.
//!
//! Accepts a WAV body (`audio/wav`), raw PCM16LE (`audio/pcm`, `audio/l16` or
//! `application/octet-stream` with `?sample_rate=N&channels=N`), or a multipart form with a `file`
//! field (the shape of the common `/v1/audio/transcriptions`, so existing SDKs work). Any rate from
//! 8 to 48 kHz, mono or multi-channel (downmixed), 8/16/24/32-bit integer or 32-bit float WAV.
//!
//! The audio is converted to 16 kHz mono, split into speech regions by the VAD, and the regions
//! are transcribed concurrently (at most `max_concurrent_segments` at once), so a long file costs
//! about one segment's latency per `max_concurrent_segments` segments. Every client mistake is a
//! JSON error with a stable code and the right status; never a 500.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::{stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use voxd_core::resample::resample_all;
use voxd_core::vad::{VadConfig, VoiceDetector};
use voxd_core::SampleRate;

use super::error::error_response;
use crate::config::TranscribeConfig;
use crate::metrics::Metrics;
use crate::providers::Chain;
use crate::state::AppState;

#[cfg(any(test, feature = "fuzzing"))]
pub(super) mod fuzz;

/// A request the client got wrong (or an ASR failure), as a status, a stable code and a message.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct TranscribeError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl TranscribeError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        TranscribeError {
            status,
            code,
            message: message.into(),
        }
    }

    fn bad(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl IntoResponse for TranscribeError {
    fn into_response(self) -> Response {
        error_response(self.status, self.code, &self.message)
    }
}

/// Query parameters (raw PCM needs `sample_rate`; `response_format` as in the common API).
#[derive(Debug, Default, Deserialize)]
pub(super) struct TranscribeQuery {
    sample_rate: Option<String>,
    channels: Option<String>,
    response_format: Option<String>,
}

/// Decoded audio: interleaved samples as f32 in [-1, 1].
#[derive(Debug)]
pub(super) struct Decoded {
    /// Samples, interleaved.
    pub samples: Vec<f32>,
    /// Rate in Hz.
    pub rate: u32,
    /// Channels.
    pub channels: u16,
}

/// One speech region and its transcript.
#[derive(Debug, Serialize)]
pub(super) struct Segment {
    start_ms: f64,
    end_ms: f64,
    text: String,
}

#[derive(Debug, Serialize)]
struct Timings {
    decode_ms: f64,
    vad_ms: f64,
    asr_ms: f64,
    total_ms: f64,
}

#[derive(Debug, Serialize)]
struct Transcription {
    text: String,
    duration_ms: f64,
    segments: Vec<Segment>,
    timings: Timings,
}

/// The handler.
pub(super) async fn transcribe(
    State(state): State<Arc<AppState>>,
    Query(query): Query<TranscribeQuery>,
    request: Request,
) -> Response {
    match run(&state, query, request).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn run(
    state: &AppState,
    mut query: TranscribeQuery,
    request: Request,
) -> Result<Response, TranscribeError> {
    let started = Instant::now();
    let cfg = &state.config.transcribe;
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            v.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .unwrap_or_default();
    let decoded = match content_type.as_str() {
        "audio/wav" | "audio/x-wav" | "audio/wave" | "audio/vnd.wave" => {
            decode_wav(&read_body(request.into_body(), cfg.max_body_bytes).await?)?
        }
        "audio/pcm" | "audio/l16" | "application/octet-stream" => {
            let body = read_body(request.into_body(), cfg.max_body_bytes).await?;
            decode_pcm(&body, query.sample_rate.as_deref(), query.channels.as_deref())?
        }
        "multipart/form-data" => {
            let (bytes, format) = read_multipart(request).await?;
            if format.is_some() {
                query.response_format = format;
            }
            decode_wav(&bytes)?
        }
        "" => {
            return Err(TranscribeError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "missing_content_type",
                "set Content-Type: audio/wav, audio/pcm (with ?sample_rate=N&channels=N) or multipart/form-data with a `file` field",
            ))
        }
        other => {
            return Err(TranscribeError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("Content-Type {other:?} is not supported; use audio/wav, audio/pcm (with ?sample_rate=N&channels=N) or multipart/form-data with a `file` field"),
            ))
        }
    };
    let text_only = match query.response_format.as_deref() {
        None | Some("json") | Some("verbose_json") => false,
        Some("text") => true,
        Some(other) => {
            return Err(TranscribeError::bad(
                "invalid_parameter",
                format!(
                    "response_format={other:?} is not supported; use json, verbose_json or text"
                ),
            ))
        }
    };
    let audio = to_internal(&decoded)?;
    let duration_ms = SampleRate::INTERNAL.ms_of(audio.len() as u64);
    if duration_ms > cfg.max_duration_s as f64 * 1000.0 {
        return Err(TranscribeError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "audio_too_long",
            format!(
                "the audio lasts {:.1} s; the limit is {} s",
                duration_ms / 1000.0,
                cfg.max_duration_s
            ),
        ));
    }
    let decode_ms = ms_since(started);

    let vad_started = Instant::now();
    let vad = state.config.session.vad.unwrap_or_default();
    // Minutes of audio through the VAD (a model call per 32 ms with Silero) is blocking work.
    let (audio, regions) = {
        let cfg = cfg.clone();
        tokio::task::spawn_blocking(move || {
            let regions = speech_regions(&audio, vad, &cfg);
            (audio, regions)
        })
        .await
        .map_err(|e| {
            TranscribeError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                format!("speech detection failed: {e}"),
            )
        })?
    };
    let vad_ms = ms_since(vad_started);

    let asr_started = Instant::now();
    let texts = transcribe_regions(
        &state.providers.asr,
        &state.metrics,
        state.config.timeouts.asr,
        audio.into(),
        &regions,
        cfg.max_concurrent_segments,
    )
    .await
    .map_err(|e| {
        tracing::warn!(provider = %e.provider, error = %e.message, "transcription failed");
        let (status, code) = if e.timed_out {
            (StatusCode::GATEWAY_TIMEOUT, "asr_timeout")
        } else {
            (StatusCode::BAD_GATEWAY, "asr_failed")
        };
        TranscribeError::new(
            status,
            code,
            format!("the speech-to-text provider failed: {}", e.message),
        )
    })?;
    let asr_ms = ms_since(asr_started);

    let segments: Vec<Segment> = regions
        .iter()
        .zip(texts)
        .map(|(&(start, end), text)| Segment {
            start_ms: round(SampleRate::INTERNAL.ms_of(start as u64)),
            end_ms: round(SampleRate::INTERNAL.ms_of(end as u64)),
            text,
        })
        .collect();
    let text = segments
        .iter()
        .map(|s| s.text.trim())
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    if text_only {
        return Ok(([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response());
    }
    Ok(Json(Transcription {
        text,
        duration_ms: round(duration_ms),
        segments,
        timings: Timings {
            decode_ms,
            vad_ms,
            asr_ms,
            total_ms: ms_since(started),
        },
    })
    .into_response())
}

fn ms_since(t: Instant) -> f64 {
    round(t.elapsed().as_secs_f64() * 1000.0)
}

fn round(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}

fn too_large(limit: usize) -> TranscribeError {
    TranscribeError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "body_too_large",
        format!("the request body is over the limit of {limit} bytes"),
    )
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, TranscribeError> {
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| too_large(limit))?;
    if bytes.is_empty() {
        return Err(TranscribeError::bad(
            "empty_body",
            "the request body is empty",
        ));
    }
    Ok(bytes)
}

/// The `file` field of a multipart form, and its `response_format` field if any.
async fn read_multipart(request: Request) -> Result<(Bytes, Option<String>), TranscribeError> {
    let mut form = Multipart::from_request(request, &())
        .await
        .map_err(|e| TranscribeError::bad("invalid_multipart", e.body_text()))?;
    let mut file = None;
    let mut format = None;
    loop {
        let field = form.next_field().await.map_err(multipart_error)?;
        let Some(field) = field else { break };
        match field.name() {
            Some("file") => file = Some(field.bytes().await.map_err(multipart_error)?),
            Some("response_format") => {
                format = Some(
                    field
                        .text()
                        .await
                        .map_err(multipart_error)?
                        .trim()
                        .to_owned(),
                );
            }
            // model, language, prompt, temperature: accepted for compatibility, not used.
            _ => {}
        }
    }
    let file = file.ok_or_else(|| {
        TranscribeError::bad(
            "missing_file",
            "the multipart form has no `file` field with the audio",
        )
    })?;
    if file.is_empty() {
        return Err(TranscribeError::bad(
            "empty_body",
            "the `file` field is empty",
        ));
    }
    if !file.starts_with(b"RIFF") {
        return Err(TranscribeError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "the `file` is not a WAV file; voxd transcribes WAV (PCM or float)",
        ));
    }
    Ok((file, format))
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> TranscribeError {
    if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
        TranscribeError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            e.body_text(),
        )
    } else {
        TranscribeError::bad("invalid_multipart", e.body_text())
    }
}

/// Transcribes each region of `audio`, at most `max_concurrent` at once; texts in region order.
///
/// # Errors
/// The first provider failure.
pub(super) async fn transcribe_regions(
    asr: &Chain<dyn voxd_backends::Asr>,
    metrics: &Metrics,
    limit: std::time::Duration,
    audio: Arc<[i16]>,
    regions: &[(usize, usize)],
    max_concurrent: usize,
) -> Result<Vec<String>, voxd_core::ProviderFailure> {
    stream::iter(regions.iter().copied())
        .map(|(start, end)| {
            let piece: Arc<[i16]> = audio[start..end].into();
            asr.call(metrics, limit, "no transcript", move |asr| {
                let piece = Arc::clone(&piece);
                async move { asr.transcribe(piece).await.map(|t| t.text) }
            })
        })
        .buffered(max_concurrent.max(1))
        .try_collect()
        .await
}

/// Decodes a WAV file: 8/16/24/32-bit integer PCM or 32-bit float.
///
/// # Errors
/// `invalid_wav` for a truncated or corrupt file, `unsupported_encoding` for other encodings.
pub(super) fn decode_wav(bytes: &[u8]) -> Result<Decoded, TranscribeError> {
    if !bytes.starts_with(b"RIFF") {
        return Err(TranscribeError::bad(
            "invalid_wav",
            "the body is not a WAV file (no RIFF header)",
        ));
    }
    let reader = hound::WavReader::new(Cursor::new(bytes)).map_err(wav_error)?;
    let spec = reader.spec();
    if spec.channels == 0 {
        return Err(TranscribeError::bad(
            "invalid_wav",
            "the WAV header says 0 channels",
        ));
    }
    let samples: Vec<f32> = match (spec.sample_format, spec.bits_per_sample) {
        (hound::SampleFormat::Float, 32) => reader
            .into_samples::<f32>()
            .collect::<Result<_, _>>()
            .map_err(wav_error)?,
        (hound::SampleFormat::Int, bits @ (8 | 16 | 24 | 32)) => {
            let scale = 1.0 / (1u64 << (bits - 1)) as f32;
            reader
                .into_samples::<i32>()
                .map(|s| s.map(|s| s as f32 * scale))
                .collect::<Result<_, _>>()
                .map_err(wav_error)?
        }
        (format, bits) => {
            return Err(TranscribeError::bad(
                "unsupported_encoding",
                format!(
                    "{bits}-bit {format:?} WAV is not supported; use 16-bit PCM or 32-bit float"
                ),
            ))
        }
    };
    if samples.is_empty() {
        return Err(TranscribeError::bad(
            "empty_audio",
            "the WAV file holds no samples",
        ));
    }
    Ok(Decoded {
        samples,
        rate: spec.sample_rate,
        channels: spec.channels,
    })
}

fn wav_error(e: hound::Error) -> TranscribeError {
    match e {
        hound::Error::Unsupported => TranscribeError::bad(
            "unsupported_encoding",
            "this WAV encoding is not supported; use 16-bit PCM or 32-bit float",
        ),
        hound::Error::IoError(_) => TranscribeError::bad(
            "invalid_wav",
            "the WAV file is truncated: its data ends before its header says",
        ),
        other => TranscribeError::bad("invalid_wav", format!("the WAV file is corrupt: {other}")),
    }
}

/// Decodes raw PCM16LE.
///
/// # Errors
/// `missing_parameter` without a rate; `invalid_parameter` for a bad rate or channel count;
/// `invalid_pcm` when the length is not a whole number of frames.
pub(super) fn decode_pcm(
    bytes: &[u8],
    rate: Option<&str>,
    channels: Option<&str>,
) -> Result<Decoded, TranscribeError> {
    let rate = rate.ok_or_else(|| {
        TranscribeError::bad(
            "missing_parameter",
            "raw PCM needs ?sample_rate=N (and ?channels=N when not mono)",
        )
    })?;
    let rate: u32 = rate.parse().map_err(|_| {
        TranscribeError::bad(
            "invalid_parameter",
            format!("sample_rate={rate:?} is not a number"),
        )
    })?;
    let channels: u16 = match channels {
        None => 1,
        Some(c) => c
            .parse()
            .ok()
            .filter(|c| (1..=8).contains(c))
            .ok_or_else(|| {
                TranscribeError::bad(
                    "invalid_parameter",
                    format!("channels={c:?} must be a number from 1 to 8"),
                )
            })?,
    };
    let frame = 2 * usize::from(channels);
    if !bytes.len().is_multiple_of(frame) {
        return Err(TranscribeError::bad(
            "invalid_pcm",
            format!(
                "{} bytes is not a whole number of 16-bit frames of {channels} channel(s)",
                bytes.len()
            ),
        ));
    }
    let samples = bytes
        .chunks_exact(2)
        .map(|b| f32::from(i16::from_le_bytes([b[0], b[1]])) / 32768.0)
        .collect();
    Ok(Decoded {
        samples,
        rate,
        channels,
    })
}

/// Downmixes and resamples to 16 kHz mono PCM16.
///
/// # Errors
/// `unsupported_sample_rate` outside 8–48 kHz.
pub(super) fn to_internal(d: &Decoded) -> Result<Vec<i16>, TranscribeError> {
    if !(8000..=48000).contains(&d.rate) {
        return Err(TranscribeError::bad(
            "unsupported_sample_rate",
            format!("{} Hz is not supported; use 8000 to 48000 Hz", d.rate),
        ));
    }
    let ch = usize::from(d.channels);
    let mono: Vec<i16> = d
        .samples
        .chunks_exact(ch)
        .map(|frame| {
            let mean = frame.iter().sum::<f32>() / ch as f32;
            (mean * 32768.0).round().clamp(-32768.0, 32767.0) as i16
        })
        .collect();
    if d.rate == SampleRate::INTERNAL.hz() {
        return Ok(mono);
    }
    resample_all(SampleRate(d.rate), SampleRate::INTERNAL, &mono).map_err(|e| {
        TranscribeError::bad(
            "unsupported_sample_rate",
            format!("cannot convert {} Hz to 16 kHz: {e}", d.rate),
        )
    })
}

/// Speech regions as sample ranges of `audio` (16 kHz): VAD utterances with padding, long ones
/// cut into pieces of at most `max_segment_s`.
pub(super) fn speech_regions(
    audio: &[i16],
    vad: VadConfig,
    cfg: &TranscribeConfig,
) -> Vec<(usize, usize)> {
    let mut det = VoiceDetector::new(vad);
    let mut spans = Vec::new();
    let mut start = None;
    det.push(audio, |e| match e {
        voxd_core::vad::VadEvent::SpeechStart { at } => start = Some(at as usize),
        voxd_core::vad::VadEvent::SpeechEnd {
            last_voiced_end, ..
        } => {
            if let Some(s) = start.take() {
                spans.push((s, last_voiced_end as usize));
            }
        }
    });
    if let Some(s) = start {
        spans.push((s, (det.last_voiced_end() as usize).max(s)));
    }
    let pad = SampleRate::INTERNAL.samples_in_ms(cfg.segment_padding_ms) as usize;
    let max = (SampleRate::INTERNAL.samples_in_ms(cfg.max_segment_s * 1000) as usize).max(16_000);
    let mut regions = Vec::new();
    for (s, e) in spans {
        let (s, e) = (s.saturating_sub(pad), (e + pad).min(audio.len()));
        let pieces = (e - s).div_ceil(max).max(1);
        let len = (e - s).div_ceil(pieces);
        for i in 0..pieces {
            let a = s + i * len;
            regions.push((a, (a + len).min(e)));
        }
    }
    regions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_pcm_needs_a_rate_and_whole_frames() {
        assert_eq!(
            decode_pcm(&[0; 4], None, None).unwrap_err().code,
            "missing_parameter"
        );
        assert_eq!(
            decode_pcm(&[0; 4], Some("x"), None).unwrap_err().code,
            "invalid_parameter"
        );
        assert_eq!(
            decode_pcm(&[0; 6], Some("16000"), Some("2"))
                .unwrap_err()
                .code,
            "invalid_pcm"
        );
        assert_eq!(
            decode_pcm(&[0; 4], Some("16000"), Some("9"))
                .unwrap_err()
                .code,
            "invalid_parameter"
        );
        let d = decode_pcm(&[0, 64, 0, 192], Some("16000"), Some("2")).unwrap();
        assert_eq!(to_internal(&d).unwrap(), vec![0]);
    }

    /// An ASR that records how many calls run at once.
    struct Counting {
        now: std::sync::atomic::AtomicUsize,
        max: std::sync::atomic::AtomicUsize,
    }

    #[async_trait::async_trait]
    impl voxd_backends::Asr for Counting {
        fn name(&self) -> &str {
            "counting"
        }
        async fn transcribe(
            &self,
            audio: Arc<[i16]>,
        ) -> Result<voxd_backends::Transcript, voxd_backends::ProviderError> {
            use std::sync::atomic::Ordering::SeqCst;
            let n = self.now.fetch_add(1, SeqCst) + 1;
            self.max.fetch_max(n, SeqCst);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            self.now.fetch_sub(1, SeqCst);
            Ok(voxd_backends::Transcript {
                text: format!("{}", audio.len()),
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn segments_are_transcribed_concurrently_bounded_and_in_order() {
        let asr = Arc::new(Counting {
            now: 0.into(),
            max: 0.into(),
        });
        let audio: Arc<[i16]> = vec![0i16; 20_000].into();
        let regions: Vec<(usize, usize)> = (0..20).map(|i| (i * 1000, i * 1000 + i + 1)).collect();
        let started = tokio::time::Instant::now();
        let providers: Vec<Arc<dyn voxd_backends::Asr>> = vec![asr.clone()];
        let breaker = crate::providers::BreakerConfig {
            failure_threshold: 5,
            cooldown: std::time::Duration::from_secs(1),
        };
        let chain = Chain::new(voxd_core::Stage::Asr, providers, breaker);
        let limit = std::time::Duration::from_secs(1);
        let texts = transcribe_regions(&chain, &Metrics::new(), limit, audio, &regions, 8)
            .await
            .unwrap();
        let expected: Vec<String> = (1..=20).map(|n: usize| n.to_string()).collect();
        assert_eq!(texts, expected);
        assert_eq!(asr.max.load(std::sync::atomic::Ordering::SeqCst), 8);
        // 20 calls of 100 ms, 8 at a time: 3 rounds of (virtual, paused) time, not 20.
        assert_eq!(started.elapsed(), std::time::Duration::from_millis(300));
    }

    /// A 16 kHz mono 16-bit WAV whose header claims `claimed` bytes of data, holding `data`.
    fn wav_claiming(claimed: u32, data: &[u8]) -> Vec<u8> {
        let mut f = b"RIFF".to_vec();
        f.extend_from_slice(&claimed.saturating_add(36).to_le_bytes());
        f.extend_from_slice(b"WAVEfmt ");
        for field in [16u32, 0x0001_0001, 16_000, 32_000, 0x0010_0002] {
            f.extend_from_slice(&field.to_le_bytes());
        }
        f.extend_from_slice(b"data");
        f.extend_from_slice(&claimed.to_le_bytes());
        f.extend_from_slice(data);
        f
    }

    #[test]
    fn a_header_claiming_gigabytes_is_truncated_not_trusted() {
        // The claimed length sizes nothing: samples are collected as they are read, so this is
        // an error after 4 samples, not a 16 GB allocation.
        let e = decode_wav(&wav_claiming(0xFFFF_FFFE, &[1; 8])).unwrap_err();
        assert_eq!((e.status, e.code), (StatusCode::BAD_REQUEST, "invalid_wav"));
        let e = decode_wav(&wav_claiming(0xFFFF_FFFF, &[1; 8])).unwrap_err();
        assert_eq!(e.code, "invalid_wav");
        let d = decode_wav(&wav_claiming(8, &[0, 64, 0, 192, 0, 0, 0, 0])).unwrap();
        assert_eq!(d.samples, vec![0.5, -0.5, 0.0, 0.0]);
    }

    #[test]
    fn rates_outside_8_to_48_khz_are_refused() {
        let d = Decoded {
            samples: vec![0.0; 100],
            rate: 96_000,
            channels: 1,
        };
        assert_eq!(to_internal(&d).unwrap_err().code, "unsupported_sample_rate");
    }

    #[test]
    fn long_speech_is_cut_into_bounded_pieces() {
        let cfg = TranscribeConfig {
            max_segment_s: 1,
            ..TranscribeConfig::default()
        };
        // 3.5 s of a loud buzz.
        let audio: Vec<i16> = (0..56_000)
            .map(|i| {
                let t = f64::from(i) / 16000.0;
                let s: f64 = (1..=8)
                    .map(|h| {
                        (2.0 * std::f64::consts::PI * 150.0 * f64::from(h) * t).sin() / f64::from(h)
                    })
                    .sum();
                (s * 6000.0) as i16
            })
            .collect();
        // The buzz is speech to webrtc-vad; the cutting is the same for either engine.
        let webrtc = VadConfig {
            engine: voxd_core::vad::Engine::WEBRTC,
            ..VadConfig::default()
        };
        let regions = speech_regions(&audio, webrtc, &cfg);
        assert!(regions.len() >= 4, "{regions:?}");
        assert!(regions.iter().all(|(a, b)| b - a <= 16_000));
        assert!(regions.windows(2).all(|w| w[0].1 == w[1].0));
    }
}
