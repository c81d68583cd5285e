//! Micro-benchmarks of the /ws protocol's JSON framing: parsing a client text frame and encoding a
//! core event as a server text frame, the per-message cost on top of the session's work.
//!
//! Run: `cargo bench -p voxd --bench protocol`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use voxd::wire::{encode_event, parse_client};
use voxd_core::{Event, ResponseStatus, Time, Timings, TurnId};

/// `protocol/parse_speech_start` — one iteration: `parse_client` of `{"type":"speech_start"}`.
fn parse_speech_start(c: &mut Criterion) {
    let frame = r#"{"type":"speech_start"}"#;
    c.bench_function("protocol/parse_speech_start", |b| {
        b.iter(|| parse_client(black_box(frame)));
    });
}

/// `protocol/parse_text` — one iteration: `parse_client` of a `text` message with a short
/// question (the message's string is copied out).
fn parse_text(c: &mut Criterion) {
    let frame = r#"{"type":"text","text":"what's the weather like today"}"#;
    c.bench_function("protocol/parse_text", |b| {
        b.iter(|| parse_client(black_box(frame)));
    });
}

/// `protocol/encode_response_done` — one iteration: `encode_event` of a completed
/// `Event::ResponseDone` with every timing of the waterfall set.
fn encode_response_done(c: &mut Criterion) {
    let ms = Time::from_millis;
    let event = Event::ResponseDone {
        turn: TurnId(3),
        status: ResponseStatus::Completed,
        audio_ms: 4_820.0,
        timings: Timings {
            speech_end: Some(ms(12_040)),
            asr_done: Some(ms(12_312)),
            llm_first_token: Some(ms(12_498)),
            tts_first_audio: Some(ms(12_611)),
            first_audio_sent: Some(ms(12_612)),
            done: Some(ms(17_455)),
        },
        reason: None,
    };
    c.bench_function("protocol/encode_response_done", |b| {
        b.iter(|| encode_event(black_box(&event)));
    });
}

/// `protocol/encode_transcript` — one iteration: `encode_event` of a final `Event::Transcript`
/// of a short question.
fn encode_transcript(c: &mut Criterion) {
    let event = Event::Transcript {
        turn: TurnId(3),
        text: "what's the weather like today".to_owned(),
        is_final: true,
    };
    c.bench_function("protocol/encode_transcript", |b| {
        b.iter(|| encode_event(black_box(&event)));
    });
}

criterion_group!(
    benches,
    parse_speech_start,
    parse_text,
    encode_response_done,
    encode_transcript,
);
criterion_main!(benches);
