//! The VAD (both engines) on the committed speech fixtures: each is one utterance whose voiced span matches the
//! measured length of its speech, so barge-in decisions on real speech are what the config says.

use voxd_core::vad::{Engine, VadConfig, VadEvent, VoiceDetector};

/// (file, speech_ms) from fixtures/transcripts.toml, read without a TOML library.
fn fixtures() -> Vec<(String, u64)> {
    let text = std::fs::read_to_string("../fixtures/transcripts.toml").unwrap();
    let mut out = Vec::new();
    let mut file = None;
    for line in text.lines() {
        let line = line.trim();
        if let Some(v) = line.strip_prefix("file = ") {
            file = Some(v.trim_matches('"').to_owned());
        } else if let Some(v) = line.strip_prefix("speech_ms = ") {
            out.push((file.take().unwrap(), v.trim().parse().unwrap()));
        }
    }
    out
}

fn load(name: &str) -> Vec<i16> {
    let bytes = std::fs::read(format!("../fixtures/{name}")).unwrap();
    assert_eq!(&bytes[..4], b"RIFF");
    bytes[44..]
        .chunks_exact(2)
        .map(|c| i16::from_le_bytes([c[0], c[1]]))
        .collect()
}

#[test]
fn every_fixture_is_one_utterance_of_its_measured_length() {
    let all = fixtures();
    assert!(all.len() >= 7, "{all:?}");
    for ((name, speech_ms), engine) in all
        .iter()
        .flat_map(|f| [(f.clone(), Engine::SILERO), (f.clone(), Engine::WEBRTC)])
    {
        let mut det = VoiceDetector::new(VadConfig {
            engine,
            ..VadConfig::default()
        });
        let mut events = Vec::new();
        det.push(&load(&name), |e| events.push(e));
        det.push(&vec![0; 16_000], |e| events.push(e));
        let [VadEvent::SpeechStart { at }, VadEvent::SpeechEnd {
            last_voiced_end, ..
        }] = events[..]
        else {
            panic!("{name} ({engine:?}): {events:?}")
        };
        let voiced_ms = (last_voiced_end - at) / 16;
        assert!(
            // Within two of the engine's windows (60 ms for webrtc-vad's 20 ms frames).
            voiced_ms.abs_diff(speech_ms) <= (2 * engine.window_samples() as u64 / 16).max(60),
            "{name} ({engine:?}): voiced {voiced_ms} ms, speech {speech_ms} ms"
        );
        // The backchannel is shorter than the default min_interruption (500 ms); the rest longer.
        assert_eq!(
            voiced_ms < 500,
            name == "mhm.wav",
            "{name} ({engine:?}): {voiced_ms} ms"
        );
    }
}
