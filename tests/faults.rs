//! Provider faults over a real socket: a hung or stalled provider times out, the turn fails with a
//! clear error naming the stage and the provider, and the session goes on.

mod common;

use std::path::Path;

use common::{TestServer, FAST_CLIENT_LIMITS, TEST_CONFIG};
use serde_json::{json, Value};
use voxd::Config;

/// The test config with `line` added to the `[table]` section, plus `extra` sections.
async fn server(table: &str, line: &str, extra: &str) -> TestServer {
    let header = format!("[{table}]\n");
    assert!(
        TEST_CONFIG.contains(&header),
        "no [{table}] in the test config"
    );
    let text = format!(
        "{}\n{FAST_CLIENT_LIMITS}\n{extra}",
        TEST_CONFIG.replace(&header, &format!("{header}{line}\n"))
    );
    let config = Config::from_toml(&text, Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
    TestServer::start_config(config).await
}

fn assert_provider_error(e: &Value, code: &str) {
    assert_eq!(e["code"], code, "{e}");
    assert_eq!(e["fatal"], false);
    assert_eq!(e["provider"], "mock", "{e}");
    assert!(e["turn_id"].is_u64());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_asr_times_out_and_the_next_turn_works() {
    let server = server("asr.mock", "hang_rate = 1.0", "[timeouts]\nasr_ms = 200\n").await;
    let mut c = server.connect().await;
    c.say(2000).await;
    let e = c.until("error").await;
    assert_provider_error(&e, "asr_timeout");
    assert!(e["message"].as_str().unwrap().contains("200 ms"), "{e}");
    let done = c.until("response_done").await;
    assert_eq!(done["status"], "failed");
    // A text turn skips ASR: the session still answers.
    c.send(json!({"type": "text", "text": "what about tomorrow"}))
        .await;
    assert_eq!(c.until("response_done").await["status"], "completed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_llm_times_out_on_its_first_token() {
    let server = server(
        "llm.mock",
        "hang_rate = 1.0",
        "[timeouts]\nllm_first_token_ms = 200\n",
    )
    .await;
    let mut c = server.connect().await;
    c.send(json!({"type": "text", "text": "what about tomorrow"}))
        .await;
    assert_provider_error(&c.until("error").await, "llm_timeout");
    assert_eq!(c.until("response_done").await["status"], "failed");
    // The session goes on: it answers pings and takes the next turn (which fails the same way).
    c.send(json!({"type": "ping", "id": 9})).await;
    assert_eq!(c.until("pong").await["id"], 9);
    c.send(json!({"type": "text", "text": "hello again"})).await;
    let done = c.until("response_done").await;
    assert_eq!(
        (done["turn_id"].clone(), done["status"].clone()),
        (json!(2), json!("failed"))
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_llm_stream_times_out_mid_reply() {
    let server = server(
        "llm.mock",
        "stall_rate = 1.0",
        "[timeouts]\nllm_stall_ms = 300\n",
    )
    .await;
    let mut c = server.connect().await;
    c.send(json!({"type": "text", "text": "tell me a long story"}))
        .await;
    let e = c.until("error").await;
    assert_provider_error(&e, "llm_timeout");
    assert!(e["message"].as_str().unwrap().contains("stalled"), "{e}");
    assert_eq!(c.until("response_done").await["status"], "failed");
    // Half the story arrived before the stall.
    assert!(!c.events("response_text").is_empty());
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_tts_times_out() {
    let server = server(
        "tts.mock",
        "hang_rate = 1.0",
        "[timeouts]\ntts_first_audio_ms = 200\n",
    )
    .await;
    let mut c = server.connect().await;
    c.send(json!({"type": "text", "text": "what about tomorrow"}))
        .await;
    assert_provider_error(&c.until("error").await, "tts_timeout");
    let done = c.until("response_done").await;
    assert_eq!(done["status"], "failed");
    assert_eq!(done["audio_ms"], 0.0);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_llm_fails_the_turn_with_llm_failed() {
    let server = server("llm.mock", "failure_rate = 1.0", "").await;
    let mut c = server.connect().await;
    c.send(json!({"type": "text", "text": "what about tomorrow"}))
        .await;
    let e = c.until("error").await;
    assert_provider_error(&e, "llm_failed");
    assert!(
        e["message"].as_str().unwrap().contains("injected failure"),
        "{e}"
    );
    assert_eq!(c.until("response_done").await["status"], "failed");
    server.stop().await;
}

/// Consecutive failures open the stage's circuit breaker: `/health/ready` turns 503 and shows
/// which provider is skipped, the metrics too, and the breaker lets a probe through after its
/// cool-down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consecutive_failures_open_the_breaker_and_readiness_shows_it() {
    let breaker = "[circuit_breaker]\nfailure_threshold = 2\ncooldown_ms = 600000\n";
    let server = server("llm.mock", "failure_rate = 1.0", breaker).await;
    let mut c = server.connect().await;
    for _ in 0..2 {
        c.send(json!({"type": "text", "text": "what about tomorrow"}))
            .await;
        assert_provider_error(&c.until("error").await, "llm_failed");
        assert_eq!(c.until("response_done").await["status"], "failed");
    }
    let (status, body) = server.get("/health/ready").await;
    assert_eq!(status, 503, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "providers_unavailable");
    assert_eq!(v["providers"]["llm"][0]["provider"], "mock");
    assert_eq!(v["providers"]["llm"][0]["state"], "open");
    assert_eq!(v["providers"]["llm"][0]["consecutive_failures"], 2);
    assert_eq!(v["providers"]["asr"][0]["state"], "closed");
    let metrics = server.get("/metrics").await.1;
    assert!(
        metrics.contains("voxd_provider_circuit_open{stage=\"llm\",provider=\"mock\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("voxd_provider_errors_total{stage=\"llm\",provider=\"mock\"} 2"),
        "{metrics}"
    );
    // With every LLM skipped, the stage still tries its provider rather than failing untried,
    // and the session goes on.
    c.send(json!({"type": "text", "text": "what about tomorrow"}))
        .await;
    assert_provider_error(&c.until("error").await, "llm_failed");
    assert_eq!(c.until("response_done").await["status"], "failed");
    server.stop().await;
}

/// A tool that takes too long: its result is an error the model answers with, and the turn
/// completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_tool_times_out_and_the_model_answers_anyway() {
    let slow_tool = r#"
[timeouts]
tool_ms = 200

[tools.check_balance]
description = "Look up the balance"
latency_ms = 5000
result = { balance = "1" }
"#;
    let server = server("asr.mock", "", slow_tool).await;
    let mut c = server.connect().await;
    c.send(json!({"type": "text", "text": "check my account balance"}))
        .await;
    let result = c.until("tool_result").await;
    assert!(
        result["result"]["error"]
            .as_str()
            .unwrap()
            .contains("200 ms"),
        "{result}"
    );
    let e = c.events("error");
    assert_eq!(e.len(), 1);
    assert_eq!(e[0]["code"], "tool_timeout");
    assert_eq!(c.until("response_done").await["status"], "completed");
    server.stop().await;
}
