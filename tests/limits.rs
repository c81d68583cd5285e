//! Per-session limits over a real socket: oversized messages, floods, idle clients. The server
//! and its other sessions carry on.

mod common;

use common::{Client, TestServer, PATIENCE};
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
