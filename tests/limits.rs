//! Per-session limits over a real socket: oversized messages, floods, idle clients. The server
//! and its other sessions carry on.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{wait_for, Client, TestServer, FAST_CLIENT_LIMITS, PATIENCE, TEST_CONFIG};
use futures_util::stream::BoxStream;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use voxd::providers::{BreakerConfig, Chain, Providers};
use voxd::{AppState, Config};
use voxd_backends::{ProviderError, Tts};
use voxd_core::{SampleRate, Stage};

/// Reads until the server closes; returns the close code and reason and the error events seen.
async fn until_close(c: &mut Client) -> (u16, String, Vec<Value>) {
    let mut errors = Vec::new();
    loop {
        match tokio::time::timeout(PATIENCE, c.ws.next()).await.unwrap() {
            Some(Ok(Message::Close(Some(f)))) => {
                return (u16::from(f.code), f.reason.to_string(), errors)
            }
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "error" {
                    errors.push(v);
                }
            }
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

async fn still_serves(server: &TestServer) {
    let mut other = server.connect().await;
    other.send(json!({"type": "ping", "id": 1})).await;
    assert_eq!(other.until("pong").await["id"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_text_message_closes_with_1009() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let big = json!({"type": "text", "text": "x".repeat(20_000)}).to_string();
    c.send_raw_text(&big).await;
    let (code, reason, _) = until_close(&mut c).await;
    assert_eq!((code, reason.as_str()), (1009, "text message too big"));
    still_serves(&server).await;
    server.stop().await;
}

/// Past the WebSocket layer's hard cap (`server.max_message_bytes`) the message is never
/// buffered, and the client still gets a close frame with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_the_hard_cap_closes_with_1009_too() {
    let server = TestServer::start_with("[server]\nmax_message_bytes = 65536\n").await;
    let mut c = server.connect().await;
    c.ws.send(Message::Binary(vec![0u8; 200_000].into()))
        .await
        .unwrap();
    let (code, reason, _) = until_close(&mut c).await;
    assert_eq!(
        (code, reason.as_str()),
        (1009, "message larger than server.max_message_bytes")
    );
    still_serves(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_audio_frame_closes_with_1009() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.send_bytes(vec![0; 100_000]).await;
    let (code, reason, _) = until_close(&mut c).await;
    assert_eq!((code, reason.as_str()), (1009, "audio frame too big"));
    still_serves(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_is_closed_with_1000() {
    let server = TestServer::start_with("[limits]\nidle_timeout_s = 1\n").await;
    let mut c = server.connect().await;
    let (code, reason, _) = until_close(&mut c).await;
    assert_eq!(code, 1000);
    assert!(reason.starts_with("idle timeout"), "{reason}");
    server.stop().await;
}

/// 30 s of audio at once: over the 5 s burst at 4x real time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_audio_flood_is_rate_limited_then_closed_with_1008() {
    // The default limits (an empty table), not the lifted ones of the other tests.
    let server = TestServer::start_with("[limits]\n").await;
    let mut c = server.connect().await;
    let frame = vec![0u8; 640];
    for _ in 0..1500 {
        if c.ws
            .feed(Message::Binary(frame.clone().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = c.ws.flush().await;
    let (code, reason, errors) = until_close(&mut c).await;
    assert_eq!(
        (code, reason.as_str()),
        (1008, "audio faster than real time")
    );
    // A warning when the limiting starts (again, if the bucket let a frame through meanwhile).
    assert!(!errors.is_empty());
    let counted = || {
        let server = &server;
        async move {
            let m = server.get("/metrics").await.1;
            m.contains("voxd_sessions_closed_total{reason=\"rate_limited\"} 1")
        }
    };
    for _ in 0..100 {
        if counted().await {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(
        counted().await,
        "the close is counted in voxd_sessions_closed_total"
    );
    assert!(
        errors
            .iter()
            .all(|e| e["code"] == "rate_limited" && e["fatal"] == false),
        "{errors:?}"
    );
    assert!(
        errors.len() < 50,
        "not one per dropped frame: {}",
        errors.len()
    );
    still_serves(&server).await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_flood_is_rate_limited_then_closed_with_1008() {
    let server = TestServer::start_with("[limits]\n").await;
    let mut c = server.connect().await;
    for i in 0..400 {
        let ping = json!({"type": "ping", "id": i}).to_string();
        if c.ws.feed(Message::Text(ping.into())).await.is_err() {
            break;
        }
    }
    let _ = c.ws.flush().await;
    let (code, reason, errors) = until_close(&mut c).await;
    assert_eq!((code, reason.as_str()), (1008, "too many control messages"));
    assert!(!errors.is_empty());
    assert!(
        errors.iter().all(|e| e["code"] == "rate_limited"),
        "{errors:?}"
    );
    still_serves(&server).await;
    server.stop().await;
}

/// A raw client whose socket has a tiny receive buffer, so that its kernel does not absorb an
/// answer it does not read.
async fn tiny_buffer_client(
    server: &TestServer,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    let (ws, _) = tokio_tungstenite::client_async(
        server.ws_url(""),
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
    )
    .await
    .unwrap();
    ws
}

/// A client that stops reading mid-answer: once its socket buffers are full, voxd closes it as a
/// slow consumer after `send_timeout_ms` and frees its place. It buffered a bounded amount (not
/// the whole answer), and another session's turn completes meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_as_a_slow_consumer() {
    let server =
        TestServer::start_with("[server]\nsend_timeout_ms = 300\nsend_buffer_bytes = 4096\n").await;
    let mut slow = tiny_buffer_client(&server).await;
    slow.send(Message::text(
        json!({"type": "text", "text": "tell me a long story"}).to_string(),
    ))
    .await
    .unwrap();
    // ... and never read. Meanwhile another session talks.
    let mut other = server.connect().await;
    other
        .send(json!({"type": "text", "text": "what about tomorrow"}))
        .await;
    let active = || server.state.sessions.active() == 1;
    wait_for(active).await;
    assert_eq!(other.until("response_done").await["status"], "completed");
    let metrics = server.get("/metrics").await.1;
    assert!(
        metrics.contains("voxd_sessions_closed_total{reason=\"slow_consumer\"} 1"),
        "{metrics}"
    );
    // What reached the stalled client is a bounded slice of the ~19 s story, not all of it.
    let mut audio = 0usize;
    while let Ok(Some(Ok(m))) = tokio::time::timeout(PATIENCE, slow.next()).await {
        match m {
            Message::Binary(b) => audio += b.len(),
            Message::Close(_) => break,
            _ => {}
        }
    }
    let five_seconds = 5 * 16_000 * 2;
    assert!(audio < five_seconds, "{audio} bytes of audio were buffered");
    server.stop().await;
}

/// A TTS that must be polled to make progress, as a real one must (a connect, a TLS handshake, a
/// request: each step is a wake-up of the session that runs it). Its first sentence is 2 s of
/// audio at once; each later sentence first takes 20 steps 50 ms apart, then gives 0.5 s.
struct Handshaking {
    calls: AtomicUsize,
}

impl Tts for Handshaking {
    fn name(&self) -> &str {
        "handshaking"
    }

    fn synthesize(
        &self,
        _text: String,
        rate: SampleRate,
    ) -> BoxStream<'static, Result<Vec<i16>, ProviderError>> {
        let hz = rate.hz() as usize;
        if self.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            return futures_util::stream::iter([Ok(vec![1000; 2 * hz])]).boxed();
        }
        futures_util::stream::once(async move {
            for _ in 0..20 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Ok(vec![1000; hz / 2])
        })
        .boxed()
    }
}

/// A client that stops reading for a while (its socket buffers full, the session's write
/// waiting) and then reads again: the session's provider calls went on meanwhile, so a healthy
/// provider's handshake finished within its deadline. Nothing failed, nothing counted against the
/// provider's breaker, and the answer arrives whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_calls_go_on_while_a_write_waits_for_a_client_that_paused() {
    let text = format!(
        "{TEST_CONFIG}\n{FAST_CLIENT_LIMITS}\n[server]\nsend_timeout_ms = 20000\n\
         send_buffer_bytes = 4096\n[timeouts]\ntts_first_audio_ms = 3000\n"
    );
    let config = Config::from_toml(&text, Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
    let mut providers = Providers::build(&config).unwrap();
    let tts = Arc::new(Handshaking {
        calls: AtomicUsize::new(0),
    });
    let breaker = BreakerConfig {
        failure_threshold: 5,
        cooldown: Duration::from_secs(10),
    };
    providers.tts = Arc::new(Chain::new(
        Stage::Tts,
        vec![Arc::clone(&tts) as Arc<dyn Tts>],
        breaker,
    ));
    let server =
        TestServer::start_state(AppState::with_providers(config, providers).unwrap()).await;
    let mut paused = tiny_buffer_client(&server).await;
    // Two sentences: the first fills the client's buffers within a second of audio, and the
    // second's handshake (1 s) runs while the session's write waits.
    paused
        .send(Message::text(
            json!({"type": "text", "text": "what about tomorrow"}).to_string(),
        ))
        .await
        .unwrap();
    // Longer than the first-audio deadline (3 s) plus the handshake.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let mut errors = Vec::new();
    let done = loop {
        match tokio::time::timeout(PATIENCE, paused.next()).await.unwrap() {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "error" {
                    errors.push(v);
                } else if v["type"] == "response_done" {
                    break v;
                }
            }
            Some(Ok(_)) => {}
            other => panic!("expected the answer, got {other:?}"),
        }
    };
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(tts.calls.load(Ordering::SeqCst), 2, "one call per sentence");
    let status = server.state.providers.tts.status();
    assert_eq!(status[0].consecutive_failures, 0, "{status:?}");
    server.stop().await;
}

/// A text turn larger than the WebSocket write buffer's cap: its `transcript` echo is a message
/// of 300 KB, which the session writes whole, and the answer follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_turn_larger_than_the_write_buffer_is_echoed_and_answered() {
    let server = TestServer::start_with(
        "[limits]\nmax_text_bytes = 600000\nmax_audio_rate = 100.0\naudio_burst_ms = 600000\n",
    )
    .await;
    let mut c = server.connect().await;
    let text = "what about tomorrow ".repeat(15_000);
    c.send(json!({"type": "text", "text": text})).await;
    let t = c.until("transcript").await;
    assert_eq!(
        t["text"].as_str().map(str::len),
        Some(text.trim().len()),
        "{}",
        t["turn_id"]
    );
    assert_eq!(c.until("response_done").await["status"], "completed");
    server.stop().await;
}
