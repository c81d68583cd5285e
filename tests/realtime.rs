//! `/v1/realtime` against a real client: the official `openai` Python SDK's Realtime client
//! (`tests/peers/realtime_client.py`, PyPI `openai[realtime]`), which checks every server event
//! against the SDK's own pydantic models. A text turn, a client-side function call round trip,
//! an audio turn with server VAD, a barge-in, `response.cancel`, bad events and G.711 output.
//!
//! The client runs in the Python of `VOXD_TEST_PYTHON`, or `.venv/bin/python` (README, "Tests").
//! Without it the test says SKIPPED, unless `VOXD_REQUIRE_PEERS=1` (CI) makes that a failure.

mod common;

use std::path::{Path, PathBuf};

use common::{fixture, TestServer, FAST_CLIENT_LIMITS};
use voxd::Config;
use voxd_core::resample::StreamResampler;
use voxd_core::SampleRate;

/// Mock providers: speech under 3 s is the weather question, longer speech "wait, stop"; the
/// model calls `open_door` when offered and asked, and answers the rest from rules.
const CONFIG: &str = r#"
[asr.mock]
latency_ms = 10
rules = [{ below_ms = 3000, text = "what's the weather like today" }, { text = "wait, stop" }]

[llm.mock]
first_token_ms = 20
token_interval_ms = 2
rules = [
  { keywords = ["door"], tool = "open_door", arguments = { door = "front" } },
  { keywords = ["weather"], reply = "It's sunny and warm today. Perfect weather for a walk." },
  { keywords = ["tomorrow"], reply = "Tomorrow looks cloudy with a chance of rain in the afternoon." },
  { keywords = ["story"], reply = "Once upon a time, a small lighthouse stood at the edge of a quiet sea. Every evening, its keeper climbed the winding stairs to light the great lamp. The waves below rolled in slowly, silver under the rising moon. Far out on the water, a little fishing boat was heading home. Its captain knew every rock and every current by name." },
  { keywords = ["stop"], reply = "Okay, I've stopped. What would you like instead?" },
]

[tts.mock]
first_audio_ms = 10
chars_per_second = 40.0
"#;

/// The Python that has the `openai` SDK with its Realtime client, or `None` (and a visible
/// SKIPPED) without one.
fn python() -> Option<PathBuf> {
    common::peer_python(
        "import openai.types.realtime, websockets",
        "the openai SDK's Realtime client",
        "the_openai_sdk_realtime_client_holds_a_conversation",
    )
}

/// A speech fixture as 24 kHz PCM16LE, the protocol's default input.
fn pcm24(name: &str) -> Vec<u8> {
    let mut up = StreamResampler::new(SampleRate(16_000), SampleRate(24_000)).unwrap();
    let mut out = Vec::new();
    up.process(&fixture(name), &mut out);
    up.flush(&mut out);
    out.iter().flat_map(|s| s.to_le_bytes()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_sdk_realtime_client_holds_a_conversation() {
    let Some(python) = python() else { return };
    let dir = std::env::temp_dir().join(format!("voxd-realtime-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("weather.pcm"), pcm24("weather.wav")).unwrap();
    std::fs::write(dir.join("interrupt.pcm"), pcm24("interrupt.wav")).unwrap();
    let text = format!("{CONFIG}\n{FAST_CLIENT_LIMITS}");
    let config = Config::from_toml(&text, Path::new(env!("CARGO_MANIFEST_DIR"))).expect("config");
    let server = TestServer::start_config(config).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/realtime_client.py");
    let base = format!("http://{}/v1", server.addr);
    let out = tokio::process::Command::new(python)
        .arg(&script)
        .arg(&base)
        .arg(&dir)
        .output()
        .await
        .expect("the client runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the SDK client failed:\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains("ok all"), "{stdout}");
    let (_, metrics) = server.get("/metrics").await;
    assert!(metrics.contains("voxd_interruptions_total 2"), "{metrics}");
    server.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// A browser's Realtime client cannot set `Authorization`: it offers the subprotocols
/// `realtime` and `openai-insecure-api-key.KEY`. voxd takes the key from there and answers
/// `realtime`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_client_authenticates_with_its_subprotocol() {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    const KEY: &str = "vk_realtime_subprotocol_test_key";
    let server = TestServer::start_with(&format!("[auth]\napi_keys = [\"{KEY}\"]\n")).await;
    let url = format!("ws://{}/v1/realtime?model=gpt-realtime", server.addr);
    let connect = |protocols: String| {
        let mut request = url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert("Sec-WebSocket-Protocol", protocols.parse().unwrap());
        tokio_tungstenite::connect_async(request)
    };
    let refused = connect("realtime, openai-insecure-api-key.wrong".into()).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 401),
        other => panic!("a wrong key must be refused: {:?}", other.map(|_| ())),
    }
    let (mut ws, response) = connect(format!("realtime, openai-insecure-api-key.{KEY}"))
        .await
        .expect("the key in the subprotocol is taken");
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "realtime"
    );
    let first = ws.next().await.unwrap().unwrap();
    let v: serde_json::Value = serde_json::from_str(first.to_text().unwrap()).unwrap();
    assert_eq!(v["type"], "session.created");
    assert_eq!(v["session"]["model"], "gpt-realtime");
    server.stop().await;
}
