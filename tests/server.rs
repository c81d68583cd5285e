//! The server around the conversation: protocol mistakes, admission control, health probes,
//! session lifecycle and shutdown, over real sockets.

mod common;

use common::{http_request_with, wait_for, Client, TestServer, PATIENCE};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, Message};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_mistakes_get_non_fatal_errors_and_the_session_goes_on() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    let cases: [(&str, &str); 7] = [
        ("{not json", "invalid_json"),
        ("[1, 2, 3]", "invalid_message"),
        (r#"{"text": "hi"}"#, "missing_type"),
        (r#"{"type": 42}"#, "invalid_field"),
        (r#"{"type": "dance"}"#, "unknown_type"),
        (r#"{"type": "text", "text": 5}"#, "invalid_field"),
        (r#"{"type": "text"}"#, "invalid_field"),
    ];
    for (frame, code) in cases {
        c.send_raw_text(frame).await;
        let e = c.until("error").await;
        assert_eq!(e["code"], code, "{frame}");
        assert_eq!(e["fatal"], false);
        assert!(
            e["message"].as_str().unwrap().len() > 20,
            "a helpful message: {e}"
        );
    }
    c.send_bytes(vec![1, 2, 3]).await;
    let e = c.until("error").await;
    assert_eq!(e["code"], "invalid_audio");
    assert!(e["message"].as_str().unwrap().contains("3 bytes"), "{e}");
    // Still alive: ping, then a whole turn.
    c.send(json!({"type": "ping", "id": "abc"})).await;
    assert_eq!(c.until("pong").await["id"], "abc");
    c.send(json!({"type": "text", "text": "what about tomorrow"}))
        .await;
    assert_eq!(c.until("response_done").await["status"], "completed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsupported_sample_rate_is_refused_before_the_upgrade() {
    let server = TestServer::start().await;
    let err = tokio_tungstenite::connect_async(server.ws_url("?sample_rate=44100"))
        .await
        .unwrap_err();
    let tungstenite::Error::Http(resp) = err else {
        panic!("{err:?}")
    };
    assert_eq!(resp.status(), 400);
    let body: Value = serde_json::from_slice(resp.body().as_deref().unwrap()).unwrap();
    assert_eq!(body["error"]["code"], "invalid_sample_rate");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn above_max_sessions_upgrades_get_503_and_admitted_sessions_are_unaffected() {
    let server = TestServer::start_with("[server]\nmax_sessions = 2\nretry_after_s = 3\n").await;
    let mut a = server.connect().await;
    let mut b = server.connect().await;
    let err = tokio_tungstenite::connect_async(server.ws_url(""))
        .await
        .unwrap_err();
    let tungstenite::Error::Http(resp) = err else {
        panic!("{err:?}")
    };
    assert_eq!(resp.status(), 503);
    assert_eq!(resp.headers()["retry-after"], "3");
    let (status, body) = server.get("/health/ready").await;
    assert_eq!(status, 503);
    assert!(body.contains("\"full\""), "{body}");
    assert_eq!(server.state.sessions.refused(), 1);
    // The admitted sessions carry on.
    for c in [&mut a, &mut b] {
        c.send(json!({"type": "text", "text": "what about tomorrow"}))
            .await;
        assert_eq!(c.until("response_done").await["status"], "completed");
    }
    // A freed slot admits again.
    a.close().await;
    wait_for(|| server.state.sessions.active() == 1).await;
    let c = server.connect().await;
    assert_eq!(c.ready["type"], "ready");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_probes() {
    let server = TestServer::start().await;
    assert_eq!(server.get("/health/live").await.0, 200);
    assert_eq!(server.get("/health/startup").await.0, 200);
    let (status, body) = server.get("/health/ready").await;
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ready");
    assert_eq!(v["max_sessions"], 1000);
    server.stop().await;
}

/// Open and close 1000 sessions (some mid-turn, with provider calls running): the registry and
/// the runtime's task count go back to where they were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_of_a_session_ends_when_its_socket_closes() {
    // A dropped connection would park its session for `resume_window_s` (tests/resume.rs checks
    // that a parked session ends with its window); here the sessions end with their sockets.
    let server = TestServer::start_with("[server]\nresume_window_s = 0\n").await;
    let metrics = tokio::runtime::Handle::current().metrics();
    // One session first, so that whatever the stack spawns once, lazily, is in the baseline.
    server.connect().await.close().await;
    wait_for(|| server.state.sessions.active() == 0).await;
    let baseline = metrics.num_alive_tasks();
    let mut clients = Vec::with_capacity(1000);
    for i in 0..1000 {
        let mut c = server.connect().await;
        if i % 20 == 0 {
            // Mid-turn: LLM, TTS and pacing running when the socket goes.
            c.send(json!({"type": "text", "text": "tell me a long story"}))
                .await;
        }
        clients.push(c);
    }
    assert_eq!(server.state.sessions.active(), 1000);
    assert_eq!(server.state.sessions.registered(), 1000);
    for c in clients.iter_mut().step_by(20) {
        c.until("audio_start").await;
    }
    // One task per session: provider calls run inside their session's task.
    assert!(metrics.num_alive_tasks() >= baseline + 1000);
    for (i, c) in clients.into_iter().enumerate() {
        if i % 2 == 0 {
            c.close().await; // a clean close handshake
        } else {
            drop(c); // the TCP connection just goes away
        }
    }
    wait_for(|| server.state.sessions.active() == 0).await;
    assert_eq!(server.state.sessions.registered(), 0);
    wait_for(|| {
        eprintln!(
            "alive {} baseline {baseline} active {}",
            metrics.num_alive_tasks(),
            server.state.sessions.active()
        );
        metrics.num_alive_tasks() <= baseline
    })
    .await;
    assert_eq!(server.state.sessions.total(), 1001);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_live_sessions_with_going_away() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.send(json!({"type": "ping"})).await;
    c.until("pong").await;
    let (stopped, ()) = tokio::join!(server.stop(), async {
        loop {
            match tokio::time::timeout(PATIENCE, c.ws.next()).await.unwrap() {
                Some(Ok(Message::Close(Some(frame)))) => {
                    assert_eq!(u16::from(frame.code), 1001);
                    break;
                }
                Some(Ok(_)) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    });
    let () = stopped;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn text_turn_while_speaking_interrupts_and_answers() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.send(json!({"type": "text", "text": "tell me a long story"}))
        .await;
    c.until_playing(32000).await; // a second has been heard
    c.send(json!({"type": "text", "text": "stop"})).await;
    let i = c.until("interrupted").await;
    assert_eq!(i["turn_id"], 1);
    assert_eq!(c.until("response_done").await["status"], "interrupted");
    let done = c.until("response_done").await;
    assert_eq!(done["turn_id"], 2);
    assert_eq!(done["status"], "completed");
    let spoken = c.spoken(Some(2));
    assert!(spoken.contains("stopped"), "{spoken}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_rate_follows_config() {
    let server = TestServer::start_with("[audio]\noutput_sample_rate = 24000\n").await;
    let mut c: Client = server.connect().await;
    assert_eq!(c.ready["output_sample_rate"], 24000);
    c.send(json!({"type": "text", "text": "what about tomorrow"}))
        .await;
    let start = c.until("audio_start").await;
    assert_eq!(start["sample_rate"], 24000);
    let done = c.until("response_done").await;
    let bytes = common::audio_bytes(&c.log) as f64;
    let ms = done["audio_ms"].as_f64().unwrap();
    assert!(
        (bytes / 48.0 - ms).abs() < 0.1,
        "{bytes} bytes vs {ms} ms at 24 kHz"
    );
    server.stop().await;
}

/// The value of a sample line `name{labels} value` in a Prometheus exposition (0 if absent).
fn sample(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .and_then(|rest| rest.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_when_a_turn_happens() {
    let server = TestServer::start().await;
    let (status, before) = server.get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "voxd_sessions_active",
        "voxd_ttft_seconds",
        "voxd_turns_total",
        "voxd_audio_bytes_total",
    ] {
        assert!(
            before.contains(&format!("# HELP {name}")),
            "{name} is described"
        );
    }
    let mut c = server.connect().await;
    c.say(3000).await; // the balance question: a tool call
    let done = c.until("response_done").await;
    assert_eq!(done["status"], "completed");
    let (_, during) = server.get("/metrics").await;
    assert_eq!(sample(&during, "voxd_sessions_active"), 1.0);
    c.close().await;
    wait_for(|| server.state.sessions.active() == 0).await;
    let (_, after) = server.get("/metrics").await;
    assert_eq!(sample(&after, "voxd_sessions_active"), 0.0);
    assert_eq!(sample(&after, "voxd_sessions_total"), 1.0);
    assert_eq!(
        sample(&after, "voxd_turns_total{status=\"completed\"}"),
        1.0
    );
    assert_eq!(sample(&after, "voxd_ttft_seconds_count"), 1.0);
    // The histogram holds the same TTFT the client was told.
    let ttft = done["ttft_ms"].as_f64().unwrap() / 1000.0;
    let sum = sample(&after, "voxd_ttft_seconds_sum");
    assert!((sum - ttft).abs() < 0.001, "{sum} vs {ttft}");
    assert_eq!(
        sample(&after, "voxd_stage_latency_seconds_count{stage=\"asr\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            "voxd_tool_calls_total{tool=\"check_balance\",outcome=\"ok\"}"
        ),
        1.0
    );
    // The paced answer woke the session's timer many times, and each wake-up's lag was measured,
    // in fine buckets.
    assert!(sample(&after, "voxd_session_timer_lag_seconds_count") >= 4.0);
    assert!(after.contains("voxd_session_timer_lag_seconds_bucket{le=\"0.00005\"}"));
    let audio_in = sample(&after, "voxd_audio_bytes_total{direction=\"in\"}");
    assert_eq!(audio_in, 3000.0 * 32.0);
    let audio_out = sample(&after, "voxd_audio_bytes_total{direction=\"out\"}");
    assert!((audio_out / 32.0 - done["audio_ms"].as_f64().unwrap()).abs() < 0.1);
    assert!(
        sample(
            &after,
            "voxd_http_requests_total{route=\"/metrics\",status=\"200\"}"
        ) >= 2.0
    );
}

/// The server answers a client's close frame (RFC 6455 §5.5.1), so the client sees a clean close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_close_gets_a_close_reply() {
    use futures_util::SinkExt;
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.ws.send(Message::Close(None)).await.unwrap();
    let mut got_close = false;
    loop {
        match tokio::time::timeout(PATIENCE, c.ws.next()).await.unwrap() {
            Some(Ok(Message::Close(_))) => got_close = true,
            Some(Ok(_)) => {}
            None => break,
            Some(Err(e)) => panic!("unclean close: {e}"),
        }
    }
    assert!(got_close);
    server.stop().await;
}

/// A request to `/ws` that is not a WebSocket upgrade gets a JSON reason, and no session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_is_not_an_upgrade_is_refused_with_a_reason() {
    let server = TestServer::start().await;
    let (status, body) = server.get("/ws").await;
    assert_eq!(status, 400, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["code"], "not_websocket", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Connection"),
        "{v}"
    );
    let r = http_request_with(
        server.addr,
        "GET",
        "/ws",
        &[
            ("Connection", "Upgrade"),
            ("Upgrade", "websocket"),
            ("Sec-WebSocket-Version", "8"),
            ("Sec-WebSocket-Key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ],
        b"",
    )
    .await;
    // RFC 6455, 4.4: 426 with the version the server speaks.
    assert_eq!(r.status, 426, "{}", r.body);
    assert_eq!(r.header("sec-websocket-version"), Some("13"));
    assert_eq!(r.json()["error"]["code"], "not_websocket");
    assert!(r.body.contains("Sec-WebSocket-Version"), "{}", r.body);
    assert_eq!(server.state.sessions.active(), 0);
    server.stop().await;
}

/// A WebSocket ping is answered with a pong carrying its payload (RFC 6455 §5.5.2), mid-session,
/// and the session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_ping_gets_a_pong_with_its_payload() {
    use futures_util::SinkExt;
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.ws.send(Message::Ping(b"voxd".to_vec().into()))
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(PATIENCE, c.ws.next()).await.unwrap() {
            Some(Ok(Message::Pong(p))) => {
                assert_eq!(&p[..], b"voxd");
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("expected a pong, got {other:?}"),
        }
    }
    c.send(json!({"type": "text", "text": "what about tomorrow"}))
        .await;
    assert_eq!(c.until("response_done").await["status"], "completed");
    server.stop().await;
}
