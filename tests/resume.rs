//! Reconnect-resume over real sockets: a client whose TCP connection is cut mid-answer comes back
//! with `?resume=` and its `resume_token`, gets the same session (turn ids go on), and hears the
//! rest of the answer exactly once; a wrong token, an unknown session and an expired window are
//! refused plainly. A client may come back before voxd noticed its old connection was gone: the
//! resume takes the session over, and the old connection is let go.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{Client, MidAnswer, TestServer, FAST_CLIENT_LIMITS, PATIENCE};
use serde_json::{json, Value};
use voxd::Config;

/// Mock providers with a long story to cut into.
const CONFIG: &str = r#"
[asr.mock]
latency_ms = 10

[llm.mock]
first_token_ms = 20
token_interval_ms = 2
rules = [
  { keywords = ["story"], reply = "Once upon a time, a small lighthouse stood at the edge of a quiet sea. Every evening, its keeper climbed the winding stairs to light the great lamp. The waves below rolled in slowly, silver under the rising moon." },
  { keywords = ["thanks"], reply = "You're welcome." },
]

[tts.mock]
first_audio_ms = 10
chars_per_second = 40.0
"#;

async fn server(extra: &str) -> TestServer {
    let text = format!("{CONFIG}\n{FAST_CLIENT_LIMITS}\n{extra}");
    let config = Config::from_toml(&text, Path::new(env!("CARGO_MANIFEST_DIR"))).expect("config");
    TestServer::start_config(config).await
}

async fn metric(server: &TestServer, line: &str) -> bool {
    server.get("/metrics").await.1.lines().any(|l| l == line)
}

async fn wait_for_metric(server: &TestServer, line: &str) {
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while !metric(server, line).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no {line:?} in /metrics"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The story's audio, as an uninterrupted session hears it.
async fn whole_story(server: &TestServer) -> Vec<u8> {
    let mut reference = server.connect().await;
    reference
        .send(json!({"type": "text", "text": "tell me a story"}))
        .await;
    reference.until("audio_start").await;
    let from = reference.log.len();
    let done = reference.until("response_done").await;
    assert_eq!(done["status"], "completed");
    let full = reference.audio_from(from);
    assert!(full.len() > 16_000 * 2 * 4, "a long answer");
    // Closed properly: not parked.
    reference.close().await;
    full
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_resumes_the_same_session_and_hears_the_rest_exactly_once() {
    let server = server("").await;
    let full = whole_story(&server).await;

    let mut client = server.connect().await;
    let MidAnswer {
        id,
        token,
        turn,
        received: before,
    } = client.mid_answer("tell me a story", 16_000 * 2).await;
    assert_eq!(token.len(), 64);
    assert!(!token.contains(&id));
    client.cut();
    wait_for_metric(&server, "voxd_sessions_parked 1").await;

    // A wrong token is refused, and leaves the session waiting; so is an unknown session.
    let url = |query: &str| format!("ws://{}/ws?{query}", server.addr);
    match tokio_tungstenite::connect_async(url(&format!("resume={id}&resume_token=nope"))).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 403),
        other => panic!("a wrong token must be refused: {:?}", other.map(|_| ())),
    }
    let unknown = uuid::Uuid::new_v4();
    match tokio_tungstenite::connect_async(url(&format!("resume={unknown}&resume_token={token}")))
        .await
    {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 404),
        other => panic!(
            "an unknown session must be refused: {:?}",
            other.map(|_| ())
        ),
    }

    let mut back = Client::connect(&url(&format!(
        "resume={id}&resume_token={token}&received={turn}:{}",
        before.len()
    )))
    .await;
    let (done, heard) = back.hear_the_rest(&id, &before).await;
    assert_eq!(done["turn_id"], turn);
    assert_eq!(heard.len(), full.len(), "every sample, once");
    assert!(heard == full, "the uninterrupted answer's bytes");
    assert!(metric(&server, "voxd_sessions_parked 0").await);
    assert!(metric(&server, "voxd_resumes_total{result=\"resumed\"} 1").await);
    assert!(metric(&server, "voxd_resumes_total{result=\"denied\"} 1").await);

    // The session goes on: the next turn's id follows.
    back.send(json!({"type": "text", "text": "thanks"})).await;
    let next: Value = back.until("response_done").await;
    assert_eq!(next["turn_id"], turn + 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_not_resumed_within_its_window_ends_and_cannot_be_resumed() {
    let server = server("[server]\nresume_window_s = 1\n").await;
    let client = server.connect().await;
    let id = client.ready["session_id"].as_str().unwrap().to_owned();
    let token = client.ready["resume_token"].as_str().unwrap().to_owned();
    client.cut();
    wait_for_metric(
        &server,
        "voxd_sessions_closed_total{reason=\"abandoned\"} 1",
    )
    .await;
    assert!(metric(&server, "voxd_sessions_active 0").await);
    let url = format!("ws://{}/ws?resume={id}&resume_token={token}", server.addr);
    match tokio_tungstenite::connect_async(url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => assert_eq!(r.status(), 404),
        other => panic!(
            "an expired session must be refused: {:?}",
            other.map(|_| ())
        ),
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_closes_properly_is_not_parked() {
    let server = server("").await;
    let mut client = server.connect().await;
    client.ws.close(None).await.unwrap();
    wait_for_metric(&server, "voxd_sessions_active 0").await;
    assert!(metric(&server, "voxd_sessions_parked 0").await);
    server.stop().await;
}

/// A connection that vanished without a reset is noticed only when a write times out. The
/// client that comes back sooner takes its session over: it hears the rest of the answer once,
/// and the old connection gets a close frame saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_takes_over_a_connection_not_yet_seen_to_drop() {
    let server = server("").await;
    let full = whole_story(&server).await;
    let mut old = server.connect().await;
    let MidAnswer {
        id,
        token,
        turn,
        received: before,
    } = old.mid_answer("tell me a story", 16_000 * 2).await;
    // The old connection is still up: nothing parked it.
    assert!(!metric(&server, "voxd_sessions_parked 1").await);
    let url = format!(
        "ws://{}/ws?resume={id}&resume_token={token}&received={turn}:{}",
        server.addr,
        before.len()
    );
    let mut back = Client::connect(&url).await;
    let (_, heard) = back.hear_the_rest(&id, &before).await;
    assert_eq!(heard.len(), full.len(), "every sample, once");
    assert!(heard == full, "the uninterrupted answer's bytes");
    assert!(metric(&server, "voxd_resumes_total{result=\"resumed\"} 1").await);
    assert!(!metric(&server, "voxd_sessions_parked 1").await);

    // The old connection was let go with a close frame.
    let close = tokio::time::timeout(PATIENCE, async {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::Message;
        while let Some(msg) = old.ws.next().await {
            if let Ok(Message::Close(frame)) = msg {
                return frame;
            }
        }
        None
    })
    .await
    .expect("the old connection is closed");
    let frame = close.expect("with a close frame");
    assert_eq!(u16::from(frame.code), 1000);
    assert_eq!(frame.reason.as_str(), "resumed on another connection");
    // And the session is the new connection's: it can be resumed again from there.
    back.send(json!({"type": "text", "text": "thanks"})).await;
    assert_eq!(back.until("response_done").await["turn_id"], turn + 1);
    server.stop().await;
}
