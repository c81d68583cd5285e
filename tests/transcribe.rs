//! `POST /v1/transcribe` over a real socket: formats, segmentation, and every kind of bad input.

mod common;

use common::{fixture, fixture_bytes, wav, TestServer};
use serde_json::Value;

fn texts(v: &Value) -> Vec<String> {
    v["segments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["text"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn a_wav_body_is_transcribed() {
    let server = TestServer::start().await;
    let r = server
        .transcribe(Some("audio/wav"), &fixture_bytes("weather.wav"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["text"], "what's the weather like today");
    assert!(
        (v["duration_ms"].as_f64().unwrap() - 2627.0).abs() < 1.0,
        "{v}"
    );
    let seg = &v["segments"][0];
    assert!(seg["start_ms"].as_f64().unwrap() <= 200.0);
    assert!(seg["end_ms"].as_f64().unwrap() >= 1938.0);
    for key in ["decode_ms", "vad_ms", "asr_ms", "total_ms"] {
        assert!(v["timings"][key].is_number(), "{key}");
    }
    server.stop().await;
}

/// Long audio is split at the pauses; every segment is transcribed, in order.
#[tokio::test]
async fn long_audio_is_split_into_segments() {
    let server = TestServer::start().await;
    let names = [
        "weather.wav",
        "tomorrow.wav",
        "balance.wav",
        "stop.wav",
        "story.wav",
        "mhm.wav",
        "interrupt.wav",
    ];
    let mut audio: Vec<f32> = Vec::new();
    for _ in 0..2 {
        for n in names {
            audio.extend(fixture(n).iter().map(|s| f32::from(*s) / 32767.0));
            audio.extend(std::iter::repeat_n(0.0, 16_000));
        }
    }
    let body = wav(&audio, 16000, 1, false);
    let r = server.transcribe(Some("audio/wav"), &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let expected: Vec<&str> = [
        "what's the weather like today",
        "what about tomorrow",
        "can you check my account balance please",
        "wait stop",
        "tell me a long story about the sea",
        "mhm",
        "actually what about tomorrow instead",
    ]
    .repeat(2);
    assert_eq!(texts(&v), expected);
    assert_eq!(v["text"], expected.join(" "));
    server.stop().await;
}

/// 48 kHz stereo float: downmixed and resampled (no longer bit-exact, so the mock ASR maps it by
/// duration: 2.5 s or more of speech is the balance question).
#[tokio::test]
async fn stereo_float_at_48khz_is_converted() {
    let server = TestServer::start().await;
    let mono = fixture("balance.wav");
    let up = voxd_core::resample::resample_all(
        voxd_core::SampleRate(16000),
        voxd_core::SampleRate(48000),
        &mono,
    )
    .unwrap();
    let stereo: Vec<f32> = up
        .iter()
        .flat_map(|s| {
            let x = f32::from(*s) / 32768.0;
            [x, x]
        })
        .collect();
    let r = server
        .transcribe(Some("audio/wav"), &wav(&stereo, 48000, 2, true))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["text"], "can you check my account balance");
    server.stop().await;
}

#[tokio::test]
async fn raw_pcm_with_its_rate() {
    let server = TestServer::start().await;
    let pcm: Vec<u8> = fixture("tomorrow.wav")
        .iter()
        .flat_map(|s| s.to_le_bytes())
        .collect();
    let r = server
        .request(
            "POST",
            "/v1/transcribe?sample_rate=16000&channels=1",
            Some("audio/pcm"),
            &pcm,
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["text"], "what about tomorrow");
    let r = server.transcribe(Some("audio/pcm"), &pcm).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, "missing_parameter".into())
    );
    server.stop().await;
}

fn multipart(fields: &[(&str, Option<&str>, &[u8])]) -> (String, Vec<u8>) {
    let boundary = "voxd-test-boundary-7d3f";
    let mut body = Vec::new();
    for (name, filename, data) in fields {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match filename {
            Some(f) => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: audio/wav\r\n\r\n").as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// The shape of the common `/v1/audio/transcriptions` upload.
#[tokio::test]
async fn multipart_upload_like_the_common_api() {
    let server = TestServer::start().await;
    let audio = fixture_bytes("weather.wav");
    let (ct, body) = multipart(&[
        ("model", None, b"whisper-1"),
        ("file", Some("weather.wav"), &audio),
    ]);
    let r = server.transcribe(Some(&ct), &body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["text"], "what's the weather like today");
    let (ct, body) = multipart(&[
        ("file", Some("weather.wav"), &audio),
        ("response_format", None, b"text"),
    ]);
    let r = server.transcribe(Some(&ct), &body).await;
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/plain"));
    assert_eq!(r.body, "what's the weather like today");
    let (ct, body) = multipart(&[("model", None, b"whisper-1")]);
    let r = server.transcribe(Some(&ct), &body).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, "missing_file".into())
    );
    let (ct, body) = multipart(&[("file", Some("a.mp3"), b"ID3\x04\x00\x00\x00\x00\x00\x00")]);
    let r = server.transcribe(Some(&ct), &body).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (415, "unsupported_media_type".into())
    );
    server.stop().await;
}

/// Every client mistake: the right status, a stable code, a message, and never a 500.
#[tokio::test]
async fn bad_input_gets_a_clear_error() {
    let server =
        TestServer::start_with("[transcribe]\nmax_body_bytes = 200000\nmax_duration_s = 3\n").await;
    let weather = fixture_bytes("weather.wav");
    let mut alaw = weather[..44].to_vec();
    alaw[20] = 6; // format tag: A-law
    alaw.extend_from_slice(&[0; 64]);
    let long: Vec<f32> = vec![0.1; 16_000 * 4];
    let cases: Vec<(Option<&str>, Vec<u8>, u16, &str)> = vec![
        (Some("audio/wav"), Vec::new(), 400, "empty_body"),
        (
            Some("audio/wav"),
            b"hello, not audio".to_vec(),
            400,
            "invalid_wav",
        ),
        (
            Some("audio/wav"),
            weather[..weather.len() / 2 + 1].to_vec(),
            400,
            "invalid_wav",
        ),
        (
            Some("audio/wav"),
            weather[..30].to_vec(),
            400,
            "invalid_wav",
        ),
        (Some("audio/wav"), alaw, 400, "unsupported_encoding"),
        (
            Some("text/plain"),
            b"hello".to_vec(),
            415,
            "unsupported_media_type",
        ),
        (None, weather.clone(), 415, "missing_content_type"),
        (Some("audio/wav"), vec![0; 300_000], 413, "body_too_large"),
        (
            Some("audio/wav"),
            wav(&long, 16000, 1, false),
            413,
            "audio_too_long",
        ),
        (
            Some("audio/wav"),
            wav(&[0.0; 800], 96000, 1, false),
            400,
            "unsupported_sample_rate",
        ),
    ];
    for (ct, body, status, code) in cases {
        let r = server.transcribe(ct, &body).await;
        assert_eq!(r.status, status, "{ct:?}: {}", r.body);
        let v = r.json();
        assert_eq!(v["error"]["code"], code, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().len() > 10, "{v}");
    }
    server.stop().await;
}

/// Silence has no speech: no segments, empty text.
#[tokio::test]
async fn silence_has_no_segments() {
    let server = TestServer::start().await;
    let r = server
        .transcribe(Some("audio/wav"), &wav(&[0.0; 32_000], 16000, 1, false))
        .await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["text"], "");
    assert_eq!(v["segments"].as_array().unwrap().len(), 0);
    server.stop().await;
}
