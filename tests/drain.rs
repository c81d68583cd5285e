//! Graceful drain with a real process: SIGTERM turns /health/ready to 503 and refuses new
//! sessions at once, tells live sessions (`shutdown`), lets the response in progress finish,
//! closes with 1001, and exits 0.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use common::{Client, PATIENCE, TEST_CONFIG};
use futures_util::StreamExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::{self, Message};

struct Process(std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_then_exits_zero() {
    let dir = std::env::temp_dir().join(format!("voxd-drain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fixtures =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/transcripts.toml");
    let config = TEST_CONFIG.replace(
        "fixtures = \"fixtures/transcripts.toml\"",
        &format!("fixtures = {:?}", fixtures.display().to_string()),
    ) + "\n[server]\ndrain_timeout_s = 20\n";
    let path = dir.join("config.toml");
    std::fs::write(&path, config).unwrap();

    let mut child = Command::new(env!("CARGO_BIN_EXE_voxd"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let pid = child.id();
    let process = Process(child);
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    let addr = line
        .trim()
        .strip_prefix("voxd listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    let server = common::RemoteServer {
        addr: addr.parse().unwrap(),
    };

    let mut c = Client::connect(&format!("ws://{addr}/ws")).await;
    c.send(json!({"type": "text", "text": "what about tomorrow"}))
        .await;
    c.until("audio_start").await;

    let status = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    let shutdown = c.until("shutdown").await;
    assert!(shutdown["deadline_ms"].as_u64().unwrap() > 0, "{shutdown}");
    // Draining: not ready, and new sessions are refused, while the listener stays open.
    let (status, body) = server.get("/health/ready").await;
    assert_eq!(status, 503);
    assert!(body.contains("draining"), "{body}");
    match tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected a 503, got {other:?}"),
    }
    // The answer in progress finishes, then the session closes with 1001.
    assert_eq!(c.until("response_done").await["status"], "completed");
    let code = loop {
        match tokio::time::timeout(PATIENCE, c.ws.next()).await.unwrap() {
            Some(Ok(Message::Close(Some(f)))) => break u16::from(f.code),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(code, 1001);
    let mut process = process;
    let exit = tokio::task::spawn_blocking(move || process.0.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    std::fs::remove_dir_all(&dir).ok();
}
