//! Per-session limits over a real socket: oversized messages, floods, idle clients. The server
//! and its other sessions carry on.

mod common;

use common::{wait_for, Client, TestServer, PATIENCE};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

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

/// A client that stops reading mid-answer: once its socket buffers are full, voxd closes it as a
/// slow consumer after `send_timeout_ms` and frees its place. It buffered a bounded amount (not
/// the whole answer), and another session's turn completes meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_is_closed_as_a_slow_consumer() {
    let server =
        TestServer::start_with("[server]\nsend_timeout_ms = 300\nsend_buffer_bytes = 4096\n").await;
    // A tiny receive buffer, so that the client's kernel does not absorb the answer for it.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let tcp = socket.connect(server.addr).await.unwrap();
    let (mut slow, _) = tokio_tungstenite::client_async(
        server.ws_url(""),
        tokio_tungstenite::MaybeTlsStream::Plain(tcp),
    )
    .await
    .unwrap();
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
