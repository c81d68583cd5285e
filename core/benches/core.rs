//! Micro-benchmarks of voxd-core's hot paths: the work done per 20 ms audio frame (VAD, the
//! session's input and paced output, resampling) and per LLM token (sentence splitting).
//!
//! Each benchmark's doc comment says what one iteration is. Every session benchmark follows the
//! drain rule (poll outputs until none is left, then ask for the next timeout), as a real owner
//! would, so the cost measured is the cost an owner pays per input. States that would run out
//! (an utterance that reaches `max_utterance`, a response whose audio is all sent) are rebuilt
//! between timed blocks, outside the measurement.
//!
//! Run: `cargo bench -p voxd-core --bench core`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use voxd_core::resample::StreamResampler;
use voxd_core::splitter::SentenceSplitter;
use voxd_core::vad::{silero, Engine, VadConfig, VoiceDetector};
use voxd_core::{Output, ProviderEvent, SampleRate, Session, SessionConfig, Time};

/// One 20 ms frame at the internal 16 kHz rate.
const FRAME_SAMPLES: usize = 320;
const FRAME: Duration = Duration::from_millis(20);

/// espeak-ng saying "what's the weather like today": 16 kHz mono PCM16LE after a 44-byte header.
static WEATHER_WAV: &[u8] = include_bytes!("../../fixtures/weather.wav");
const WAV_HEADER_BYTES: usize = 44;

/// A reply sentence long enough for about 30 s of speech, without a clause break the splitter
/// would cut at (no `,;:`), so that it is one TTS call.
const LONG_SENTENCE: &str = "Today starts sunny and mild across the whole region with a light \
    breeze from the west and temperatures climbing to around twenty two degrees by the early \
    afternoon before a band of high cloud drifts in from the coast and the wind picks up a little \
    in the evening so a light jacket would be a good idea if you plan to stay out after sunset \
    and tomorrow looks much the same with perhaps a few more clouds in the morning.";

/// A ~1000-character LLM reply with the splitter's interesting cases: sentence ends, long clauses,
/// decimals, abbreviations and a newline.
const PARAGRAPH: &str = "Sure, here is the forecast for the next few days. Today will be sunny \
    with a high of 22.5 degrees and a gentle breeze from the west, which should make for a \
    pleasant afternoon if you want to go for a walk or sit outside for lunch. Tonight the sky \
    stays mostly clear and the temperature drops to around 12 degrees, so bring a light jacket \
    if you are going out. Tomorrow morning starts cloudy; Dr. Smith at the weather service says \
    a few showers are possible before noon, e.g. along the coast and in the hills. By the \
    afternoon the clouds should break up again!\nOn Thursday and Friday a high-pressure system \
    moves in: expect long sunny spells, very little wind and highs between 24 and 26 degrees, \
    which is about 3.5 degrees above the seasonal average for this time of year. The weekend \
    looks warm as well, although a thunderstorm or two cannot be ruled out late on Sunday. \
    Would you like me to check the forecast for a particular town, or remind you to take an \
    umbrella on Wednesday morning? I can also tell you the pollen count and the UV index.";

/// The fixture's samples, whole 20 ms frames only.
fn weather_frames() -> Vec<Vec<i16>> {
    let samples: Vec<i16> = WEATHER_WAV[WAV_HEADER_BYTES..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect();
    samples
        .chunks_exact(FRAME_SAMPLES)
        .map(<[i16]>::to_vec)
        .collect()
}

/// A 440 Hz tone at half scale: `n` samples at `rate_hz`.
fn tone(rate_hz: u32, n: usize) -> Vec<i16> {
    (0..n)
        .map(|i| {
            let t = i as f64 / f64::from(rate_hz);
            ((2.0 * std::f64::consts::PI * 440.0 * t).sin() * 16_000.0) as i16
        })
        .collect()
}

/// The drain rule: acts on (here: looks at) every output, then asks for the next timeout.
/// Returns how many of the outputs were audio frames.
fn drain(s: &mut Session) -> usize {
    let mut audio = 0;
    while let Some(o) = s.poll_output() {
        audio += usize::from(matches!(o, Output::Audio { .. }));
        black_box(o);
    }
    black_box(s.poll_timeout());
    audio
}

/// Times `iters` calls of `step`, on states made by `fresh`, each good for `per_state` steps.
/// Building and dropping the states is not timed.
fn timed_in_blocks<S>(
    iters: u64,
    per_state: u64,
    mut fresh: impl FnMut() -> S,
    mut step: impl FnMut(&mut S),
) -> Duration {
    let mut total = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let n = left.min(per_state);
        let mut state = fresh();
        let start = Instant::now();
        for _ in 0..n {
            step(&mut state);
        }
        total += start.elapsed();
        drop(state);
        left -= n;
    }
    total
}

fn webrtc() -> VadConfig {
    VadConfig {
        engine: Engine::WEBRTC,
        ..VadConfig::default()
    }
}

/// Pink noise at -35 dBFS RMS (the committed noise corpus), whole 20 ms frames.
fn noise_frames() -> Vec<Vec<i16>> {
    include_bytes!("../../fixtures/noise/pink_-35.wav")[WAV_HEADER_BYTES..]
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]))
        .collect::<Vec<_>>()
        .chunks_exact(FRAME_SAMPLES)
        .map(<[i16]>::to_vec)
        .collect()
}

/// Pushes `frames` one per iteration, wrapping around.
fn bench_vad_frames(c: &mut Criterion, name: &str, config: VadConfig, frames: &[Vec<i16>]) {
    let mut det = VoiceDetector::new(config);
    let mut i = 0;
    c.bench_function(name, |b| {
        b.iter(|| {
            det.push(black_box(&frames[i]), |e| {
                black_box(e);
            });
            i = (i + 1) % frames.len();
        });
    });
}

/// `vad/silero_window` — one iteration: one Silero model call on a 32 ms window (512 samples)
/// of real speech, on this thread's runner: the inference alone.
fn vad_silero_window(c: &mut Criterion) {
    let samples: Vec<i16> = weather_frames().concat();
    let windows: Vec<&[i16]> = samples.chunks_exact(silero::WINDOW).collect();
    let mut stream = silero::Stream::new();
    let mut i = 0;
    c.bench_function("vad/silero_window", |b| {
        b.iter(|| {
            black_box(stream.probability(black_box(windows[i])));
            i = (i + 1) % windows.len();
        });
    });
}

/// `vad/frame_20ms_silero` and `vad/frame_20ms_noise_silero` — one iteration: `push` of one
/// 20 ms frame of real speech (or of pink noise at -35 dBFS, above the energy gate: Silero's worst
/// case) with Silero: a model call every 1.6 frames, plus the gate and smoothing.
fn vad_frame_20ms_silero(c: &mut Criterion) {
    bench_vad_frames(
        c,
        "vad/frame_20ms_silero",
        VadConfig::default(),
        &weather_frames(),
    );
    bench_vad_frames(
        c,
        "vad/frame_20ms_noise_silero",
        VadConfig::default(),
        &noise_frames(),
    );
}

/// `vad/frame_20ms` — one iteration: `VoiceDetector::push` of one 20 ms frame (320 samples) of
/// real speech (the weather fixture, frame after frame, wrapping around): webrtc-vad's
/// classification, the energy gate and the onset/hangover smoothing.
fn vad_frame_20ms(c: &mut Criterion) {
    let frames = weather_frames();
    let mut det = VoiceDetector::new(webrtc());
    let mut i = 0;
    c.bench_function("vad/frame_20ms", |b| {
        b.iter(|| {
            det.push(black_box(&frames[i]), |e| {
                black_box(e);
            });
            i = (i + 1) % frames.len();
        });
    });
}

/// `vad/frame_20ms_silence` (webrtc-vad) and `vad/frame_20ms_silence_silero` — one iteration:
/// `VoiceDetector::push` of one 20 ms frame of digital silence. Both stop at the energy gate.
fn vad_frame_20ms_silence(c: &mut Criterion) {
    let silence = vec![vec![0i16; FRAME_SAMPLES]];
    bench_vad_frames(c, "vad/frame_20ms_silence", webrtc(), &silence);
    bench_vad_frames(
        c,
        "vad/frame_20ms_silence_silero",
        VadConfig::default(),
        &silence,
    );
}

/// A session whose response is playing: `handle_text`, then the provider events a scripted LLM
/// and TTS would send for `LONG_SENTENCE`, then 20 ms steps until the first burst (the playback
/// lead) is out. Returns the session and its clock.
fn speaking_session() -> (Session, Time) {
    let mut s = Session::new(SessionConfig {
        vad: None,
        ..SessionConfig::default()
    });
    let mut now = Time::ZERO;
    s.handle_text(now, "tell me the weather");
    let mut turn = None;
    while let Some(o) = s.poll_output() {
        if let Output::StartLlm { turn: t, .. } = o {
            turn = Some(t);
        }
    }
    let turn = turn.expect("a text turn starts the LLM");

    now = now + Duration::from_millis(100);
    for token in LONG_SENTENCE.split_inclusive(' ') {
        s.handle_provider(now, turn, ProviderEvent::LlmToken(token.to_owned()));
        drain(&mut s);
        now = now + Duration::from_millis(10);
    }
    s.handle_provider(now, turn, ProviderEvent::LlmDone);
    let mut tts = Vec::new();
    while let Some(o) = s.poll_output() {
        if let Output::StartTts { seq, text, .. } = o {
            tts.push((seq, text));
        }
    }
    assert_eq!(tts.len(), 1, "the long sentence is one TTS call: {tts:?}");
    let (seq, text) = tts.pop().expect("one TTS call");

    // 14 characters a second, in 100 ms chunks, as the scripted TTS of the session tests.
    now = now + Duration::from_millis(50);
    let total = text.len() * 16_000 / 14;
    for start in (0..total).step_by(1600) {
        let samples = (start..total.min(start + 1600))
            .map(|k| (k % 30_000) as i16 + 1)
            .collect();
        s.handle_provider(now, turn, ProviderEvent::TtsAudio { seq, samples });
        drain(&mut s);
    }
    s.handle_provider(now, turn, ProviderEvent::TtsDone { seq });
    drain(&mut s);
    (s, now)
}

/// One paced step: 20 ms later, `handle_timeout` and the drain. Returns the audio frames sent.
fn paced_step((s, now): &mut (Session, Time)) -> usize {
    *now = *now + FRAME;
    s.handle_timeout(*now);
    drain(s)
}

/// `session/audio_frame_idle` (server VAD with Silero, the default) and
/// `session/audio_frame_idle_webrtc` — one iteration: `Session::handle_audio` of a 20 ms silence
/// frame on an idle session with server VAD on, then the drain: the per-frame cost of a session
/// that is just listening.
fn session_audio_frame_idle(c: &mut Criterion) {
    let silence = vec![0i16; FRAME_SAMPLES];
    for (name, vad) in [
        ("session/audio_frame_idle", VadConfig::default()),
        ("session/audio_frame_idle_webrtc", webrtc()),
    ] {
        let mut s = Session::new(SessionConfig {
            vad: Some(vad),
            ..SessionConfig::default()
        });
        let mut now = Time::ZERO;
        c.bench_function(name, |b| {
            b.iter(|| {
                now = now + FRAME;
                s.handle_audio(now, black_box(&silence));
                drain(&mut s);
            });
        });
    }
}

/// `session/audio_frame_client_signals` — one iteration: `Session::handle_audio` of a 20 ms
/// silence frame while the user speaks (server VAD off, client signals: after
/// `handle_speech_start`), then the drain. The frame is appended to the utterance; a session is
/// used for 40 s of audio, below `max_utterance` (60 s), then rebuilt untimed.
fn session_audio_frame_client_signals(c: &mut Criterion) {
    let silence = vec![0i16; FRAME_SAMPLES];
    let listening = || {
        let mut s = Session::new(SessionConfig {
            vad: None,
            ..SessionConfig::default()
        });
        s.handle_speech_start(Time::ZERO);
        drain(&mut s);
        (s, Time::ZERO)
    };
    c.bench_function("session/audio_frame_client_signals", |b| {
        b.iter_custom(|iters| {
            timed_in_blocks(iters, 2_000, listening, |(s, now)| {
                *now = *now + FRAME;
                s.handle_audio(*now, black_box(&silence));
                drain(s);
            })
        });
    });
}

/// `session/paced_frame` — one iteration: 20 ms pass during a response's speech;
/// `handle_timeout` sends the one audio frame now due (playback pacing), then the drain. A session
/// carries ~30 s of synthesized audio and is rebuilt (untimed) well before it runs out.
fn session_paced_frame(c: &mut Criterion) {
    let mut check = speaking_session();
    for _ in 0..100 {
        assert_eq!(paced_step(&mut check), 1, "one paced frame per 20 ms");
    }
    c.bench_function("session/paced_frame", |b| {
        b.iter_custom(|iters| {
            timed_in_blocks(iters, 1_000, speaking_session, |st| {
                paced_step(st);
            })
        });
    });
}

/// Benchmarks `StreamResampler::process` of one 20 ms frame (`frame_len` samples of a 440 Hz tone
/// at `from` Hz) to 16 kHz, into a reused, cleared `Vec`. Every frame is a whole number of the
/// resampler's blocks, so each iteration does the same work.
fn bench_resample_frame(c: &mut Criterion, name: &str, from: u32, frame_len: usize) {
    let mut r = StreamResampler::new(SampleRate(from), SampleRate::INTERNAL)
        .expect("a supported rate pair");
    let input = tone(from, frame_len);
    let mut out = Vec::with_capacity(FRAME_SAMPLES);
    c.bench_function(name, |b| {
        b.iter(|| {
            out.clear();
            r.process(black_box(&input), &mut out);
            black_box(&out);
        });
    });
}

/// `resample/frame_48k_to_16k` — one iteration: 960 samples in (two 480-sample blocks), 320 out.
fn resample_frame_48k_to_16k(c: &mut Criterion) {
    bench_resample_frame(c, "resample/frame_48k_to_16k", 48_000, 960);
}

/// `resample/frame_8k_to_16k` — one iteration: 160 samples in (two 80-sample blocks), 320 out.
fn resample_frame_8k_to_16k(c: &mut Criterion) {
    bench_resample_frame(c, "resample/frame_8k_to_16k", 8_000, 160);
}

/// `resample/frame_22050_to_16k` — one iteration: 441 samples in (one block), 320 out.
fn resample_frame_22050_to_16k(c: &mut Criterion) {
    bench_resample_frame(c, "resample/frame_22050_to_16k", 22_050, 441);
}

/// `splitter/token` — one iteration: `SentenceSplitter::push` of one word token (" word", as LLMs
/// stream them) of a ~1000-character reply, sentences emitted included. After the last token the
/// splitter is reset and the reply starts over.
fn splitter_token(c: &mut Criterion) {
    let tokens: Vec<&str> = PARAGRAPH.split_inclusive(' ').collect();
    let mut split = SentenceSplitter::default();
    let mut i = 0;
    c.bench_function("splitter/token", |b| {
        b.iter(|| {
            split.push(black_box(tokens[i]), |sentence| {
                black_box(sentence);
            });
            i += 1;
            if i == tokens.len() {
                i = 0;
                split.reset();
            }
        });
    });
}

criterion_group!(
    benches,
    vad_frame_20ms,
    vad_frame_20ms_silence,
    vad_silero_window,
    vad_frame_20ms_silero,
    session_audio_frame_idle,
    session_audio_frame_client_signals,
    session_paced_frame,
    resample_frame_48k_to_16k,
    resample_frame_8k_to_16k,
    resample_frame_22050_to_16k,
    splitter_token,
);
criterion_main!(benches);
