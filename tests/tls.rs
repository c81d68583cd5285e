//! Every provider path over TLS on loopback, as in production: the OpenAI-protocol LLM, ASR and
//! TTS (`https://`), the streaming ASR (`wss://`), an HTTP tool and an MCP server (streamable
//! HTTP over `https://`). A test CA and server certificates are made in the test; the servers
//! sit behind a rustls front on 127.0.0.1 (`common/tls.rs`).
//!
//! For each path: a good handshake with the request arriving (trusted through `ca_file`, with
//! the ALPN the protocol needs), and three refusals that never reach the server, each a provider
//! error naming the host and the TLS failure: an untrusted certificate, a certificate for another
//! host, an expired certificate. Then: `ca_file` checked at start-up, and how many connections a
//! session opens over several turns against keep-alive servers.

mod common;
#[path = "common/tls.rs"]
mod tls;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::StreamExt;
use serde_json::json;
use tls::{Flaw, TestCa, TlsFront};
use voxd::{AppState, Config};
use voxd_backends::openai::{OpenAiAsr, OpenAiAsrConfig, OpenAiLlm, OpenAiLlmConfig};
use voxd_backends::openai::{OpenAiTts, OpenAiTtsConfig};
use voxd_backends::stream_asr::{StreamAsrConfig, StreamAsrProvider};
use voxd_backends::tools::{HttpTool, HttpToolConfig, McpServerConfig};
use voxd_backends::{Asr, Llm, LlmEvent, LlmRequest, Tool, Tts};
use voxd_core::{ChatMessage, SampleRate};

/// A provider path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Path_ {
    Llm,
    Asr,
    Tts,
    StreamAsr,
    HttpTool,
    Mcp,
}

/// Half a second of 16 kHz audio.
fn utterance() -> Arc<[i16]> {
    Arc::from(vec![1200i16; 8000])
}

/// `ca_file = "..."`, or nothing.
fn ca_line(ca_file: Option<&Path>) -> String {
    ca_file.map_or_else(String::new, |ca| {
        format!("ca_file = {:?}\n", ca.display().to_string())
    })
}

/// One call over `path` to the server at `addr`, trusting `ca_file` (relative to `dir`) when
/// given. `Ok` with what the server answered, `Err` with the error as a client or the log would
/// show it.
async fn call(
    path: Path_,
    addr: &str,
    ca_file: Option<&Path>,
    dir: &Path,
) -> Result<String, String> {
    let ca_file = ca_file.map(Path::to_path_buf);
    match path {
        Path_::Llm => {
            let llm = OpenAiLlm::new(
                OpenAiLlmConfig {
                    base_url: format!("https://{addr}/v1"),
                    model: "stub".into(),
                    ca_file,
                    ..OpenAiLlmConfig::default()
                },
                dir,
            )
            .map_err(|e| e.to_string())?;
            let mut reply = llm.stream(LlmRequest {
                messages: vec![ChatMessage::User("hello".into())],
                tools: vec![],
            });
            let mut text = String::new();
            while let Some(event) = reply.next().await {
                match event.map_err(|e| e.to_string())? {
                    LlmEvent::Token(t) => text.push_str(&t),
                    LlmEvent::ToolCall(c) => panic!("unexpected {c:?}"),
                }
            }
            Ok(text)
        }
        Path_::Asr => {
            let asr = OpenAiAsr::new(
                OpenAiAsrConfig {
                    base_url: format!("https://{addr}/v1"),
                    ca_file,
                    ..OpenAiAsrConfig::default()
                },
                dir,
            )
            .map_err(|e| e.to_string())?;
            asr.transcribe(utterance())
                .await
                .map(|t| t.text)
                .map_err(|e| e.to_string())
        }
        Path_::Tts => {
            let tts = OpenAiTts::new(
                OpenAiTtsConfig {
                    base_url: format!("https://{addr}/v1"),
                    ca_file,
                    ..OpenAiTtsConfig::default()
                },
                dir,
            )
            .map_err(|e| e.to_string())?;
            let mut audio = tts.synthesize("Hello there.".into(), SampleRate::INTERNAL);
            let mut samples = 0;
            while let Some(chunk) = audio.next().await {
                samples += chunk.map_err(|e| e.to_string())?.len();
            }
            Ok(format!("{samples} samples"))
        }
        Path_::StreamAsr => {
            let asr = StreamAsrProvider::new(
                StreamAsrConfig {
                    url: format!("wss://{addr}/v1/listen"),
                    ca_file,
                    ..StreamAsrConfig::default()
                },
                dir,
            )
            .map_err(|e| e.to_string())?;
            asr.transcribe(utterance())
                .await
                .map(|t| t.text)
                .map_err(|e| e.to_string())
        }
        Path_::HttpTool => {
            let config: HttpToolConfig = toml::from_str(&format!(
                "description = \"Echoes its arguments\"\nurl = \"https://{addr}/tool\"\n{}",
                ca_line(ca_file.as_deref())
            ))
            .unwrap();
            let tool = HttpTool::new("echo", config, dir).map_err(|e| e.to_string())?;
            tool.call(json!({"city": "Lyon"}))
                .await
                .map(|v| v.to_string())
                .map_err(|e| e.to_string())
        }
        Path_::Mcp => {
            let config: McpServerConfig = toml::from_str(&format!(
                "url = \"https://{addr}/mcp\"\nconnect_timeout_ms = 20000\n{}",
                ca_line(ca_file.as_deref())
            ))
            .unwrap();
            let tools = voxd_backends::tools::connect_mcp("shop", &config, dir)
                .await
                .map_err(|e| e.to_string())?;
            let lookup = tools
                .iter()
                .find(|t| t.spec().name == "lookup_order")
                .expect("the peer offers lookup_order");
            lookup
                .call(json!({"order": "123"}))
                .await
                .map(|v| v.to_string())
                .map_err(|e| e.to_string())
        }
    }
}

/// The plain server `path` talks to, and a count of the requests it has seen.
async fn backend(
    path: Path_,
    python: Option<&Path>,
) -> (
    std::net::SocketAddr,
    Box<dyn Fn() -> usize + Send>,
    Option<tls::McpPeer>,
) {
    match path {
        Path_::StreamAsr => {
            let (addr, upgrades) = tls::listen_stub().await;
            (
                addr,
                Box::new(move || upgrades.load(Ordering::SeqCst)),
                None,
            )
        }
        Path_::Mcp if python.is_some() => {
            let peer = tls::McpPeer::start(python.unwrap()).await;
            // The peer counts nothing; a good call's answer shows the request arrived.
            (peer.addr, Box::new(|| 0), Some(peer))
        }
        _ => {
            let (addr, seen) = tls::openai_stub().await;
            (
                addr,
                Box::new(move || seen.lock().unwrap().requests()),
                None,
            )
        }
    }
}

/// The four cases for `path`: trusted through `ca_file`, untrusted, another host's, expired.
async fn four_cases(path: Path_) {
    let ca = TestCa::new(&format!("{path:?}").to_lowercase());
    let python = match path {
        Path_::Mcp => common::peer_python(
            "import mcp.server.mcpserver",
            "the mcp SDK",
            "mcp_over_tls (the good handshake only)",
        ),
        _ => None,
    };

    // A good handshake: the CA comes from ca_file, relative to the config's folder.
    if path != Path_::Mcp || python.is_some() {
        let (plain, requests, _peer) = backend(path, python.as_deref()).await;
        let front = TlsFront::start(&ca.server_cert(Flaw::None), plain).await;
        let addr = front.addr.to_string();
        let answer = call(path, &addr, Some(Path::new("ca.pem")), &ca.dir)
            .await
            .unwrap_or_else(|e| panic!("{path:?} over TLS: {e}"));
        match path {
            Path_::Llm => assert_eq!(answer, tls::REPLY),
            Path_::Asr | Path_::StreamAsr => assert_eq!(answer, tls::HEARD),
            Path_::Tts => assert_ne!(answer, "0 samples"),
            Path_::HttpTool => assert_eq!(answer, r#"{"echo":{"city":"Lyon"}}"#),
            Path_::Mcp => assert!(answer.contains("shipped"), "{answer}"),
        }
        if path != Path_::Mcp {
            assert!(requests() >= 1, "{path:?}: the request did not arrive");
        }
        assert!(front.stats.handshakes() >= 1);
        // ALPN: a WebSocket upgrade is HTTP/1.1, so wss offers nothing else (a server that chose
        // h2 could not answer it); the HTTP clients offer h2 and HTTP/1.1.
        let offered = front.stats.offered_alpn.lock().unwrap()[0].clone();
        match path {
            Path_::StreamAsr => assert_eq!(offered, ["http/1.1"]),
            _ => assert_eq!(offered, ["h2", "http/1.1"], "{path:?}"),
        }
    }

    // Refusals: each before a byte of the request reaches the server.
    for (flaw, trust, expected) in [
        (
            Flaw::None,
            false,
            "the certificate is not trusted: UnknownIssuer; add its CA with ca_file",
        ),
        (Flaw::OtherHost, true, "the certificate is for another host"),
        (Flaw::Expired, true, "the certificate has expired"),
    ] {
        let (plain, requests, _peer) = backend(path, None).await;
        let front = TlsFront::start(&ca.server_cert(flaw), plain).await;
        let addr = front.addr.to_string();
        let ca_file = trust.then_some(Path::new("ca.pem"));
        let e = call(path, &addr, ca_file, &ca.dir)
            .await
            .expect_err("the handshake must fail");
        assert!(
            e.contains(&format!("TLS with {addr} failed: ")),
            "{path:?} {flaw:?}: {e}"
        );
        assert!(e.contains(expected), "{path:?} {flaw:?}: {e}");
        let who = match path {
            Path_::Llm | Path_::Asr | Path_::Tts => "openai failed: ",
            Path_::StreamAsr => "stream failed: ",
            Path_::HttpTool => "echo failed: ",
            Path_::Mcp => "url: cannot start an MCP session: ",
        };
        assert!(e.starts_with(who), "{path:?} {flaw:?}: {e}");
        if flaw == Flaw::OtherHost {
            assert!(e.contains("voxd-test.invalid"), "{e}");
        }
        assert_eq!(requests(), 0, "{path:?} {flaw:?}: a request got through");
        assert_eq!(front.stats.handshakes(), 0, "{path:?} {flaw:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_llm_over_tls() {
    four_cases(Path_::Llm).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_asr_over_tls() {
    four_cases(Path_::Asr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_tts_over_tls() {
    four_cases(Path_::Tts).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streaming_asr_over_wss() {
    four_cases(Path_::StreamAsr).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_tool_over_tls() {
    four_cases(Path_::HttpTool).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_server_over_tls() {
    four_cases(Path_::Mcp).await;
}

/// A `ca_file` that cannot be used fails start-up (and `voxd check-config`), naming the
/// provider's table and the file; a good one, relative to the config file, builds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ca_file_is_checked_at_start_up_naming_the_provider_and_the_file() {
    let ca = TestCa::new("config");
    std::fs::write(ca.dir.join("notes.txt"), "not a certificate\n").unwrap();
    let key_only = rcgen::KeyPair::generate().unwrap().serialize_pem();
    std::fs::write(ca.dir.join("key.pem"), key_only).unwrap();
    let tables = [
        (
            "asr.openai",
            "[asr]\nprovider = \"openai\"\n[asr.openai]\nbase_url = \"https://127.0.0.1:9/v1\"\n",
        ),
        (
            "llm.openai",
            "[llm]\nprovider = \"openai\"\n[llm.openai]\nbase_url = \"https://127.0.0.1:9/v1\"\n",
        ),
        (
            "tts.openai",
            "[tts]\nprovider = \"openai\"\n[tts.openai]\nbase_url = \"https://127.0.0.1:9/v1\"\n",
        ),
        (
            "asr.stream",
            "[asr]\nprovider = \"stream\"\n[asr.stream]\nurl = \"wss://127.0.0.1:9/v1/listen\"\n",
        ),
        (
            "tools.echo",
            "[tools.echo]\ndescription = \"Echo\"\nurl = \"https://127.0.0.1:9/tool\"\n",
        ),
        (
            "mcp.shop",
            "[mcp.shop]\nurl = \"https://127.0.0.1:9/mcp\"\nconnect_timeout_ms = 500\n",
        ),
    ];
    for (table, text) in tables {
        for (file, why) in [
            ("missing.pem", "cannot read"),
            ("notes.txt", "holds no certificate"),
            ("key.pem", "holds no certificate"),
        ] {
            let config = format!("{text}ca_file = \"{file}\"\n");
            let config = Config::from_toml(&config, &ca.dir).expect("the file parses");
            let e = AppState::new(config)
                .await
                .err()
                .unwrap_or_else(|| panic!("{table} with {file} started"))
                .to_string();
            assert!(e.starts_with(&format!("{table}.ca_file: ")), "{e}");
            assert!(e.contains(why), "{e}");
            assert!(e.contains(&ca.dir.join(file).display().to_string()), "{e}");
        }
        if table != "mcp.shop" {
            // A readable CA builds (the MCP server would be connected at start-up: not here).
            let config = format!("{text}ca_file = \"ca.pem\"\n");
            let config = Config::from_toml(&config, &ca.dir).expect("the file parses");
            AppState::new(config)
                .await
                .unwrap_or_else(|e| panic!("{table} with a good ca_file: {e}"));
        }
    }
}

/// How many TCP and TLS handshakes a session makes per turn: several turns through the
/// OpenAI-protocol ASR, LLM and TTS over TLS to a keep-alive server. Each provider keeps one
/// pooled client, so a turn after the first reuses its connections. Run with `--nocapture` to see
/// the figure (BENCHMARKS.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_reuses_its_tls_connections_turn_after_turn() {
    const TURNS: usize = 6;
    let ca = TestCa::new("reuse");
    let (plain, seen) = tls::openai_stub().await;
    let front = TlsFront::start(&ca.server_cert(Flaw::None), plain).await;
    let base = format!("https://{}/v1", front.addr);
    let ca_file = ca.pem_path().display().to_string();
    let server = common::TestServer::start_with(&format!(
        "[asr]\nprovider = \"openai\"\n[asr.openai]\nbase_url = \"{base}\"\nca_file = \"{ca_file}\"\n\
         [llm]\nprovider = \"openai\"\n[llm.openai]\nbase_url = \"{base}\"\nmodel = \"stub\"\nca_file = \"{ca_file}\"\n\
         [tts]\nprovider = \"openai\"\n[tts.openai]\nbase_url = \"{base}\"\nca_file = \"{ca_file}\"\n"
    ))
    .await;
    let mut c = server.connect().await;
    let mut after_first = 0;
    for turn in 0..TURNS {
        c.send(json!({"type": "speech_start"})).await;
        c.send_audio(&vec![1200i16; 16_000], 16_000).await;
        c.send(json!({"type": "speech_end"})).await;
        let done = c.until("response_done").await;
        assert_eq!(done["status"], "completed", "turn {turn}: {done}");
        if turn == 0 {
            after_first = front.stats.accepted();
        }
    }
    let requests = seen.lock().unwrap().requests();
    let (connections, handshakes) = (front.stats.accepted(), front.stats.handshakes());
    eprintln!(
        "{TURNS} turns: {requests} requests (ASR, LLM, TTS per sentence) over {connections} \
         TCP connections and {handshakes} TLS handshakes; {after_first} in the first turn, \
         {} in the {} turns after it",
        connections - after_first,
        TURNS - 1
    );
    // Every turn: one transcription, one chat completion, a speech request per sentence (2).
    assert!(requests >= TURNS * 4, "{requests} requests");
    assert_eq!(handshakes, connections);
    // One pooled client per provider: the first turn opens their connections (at most two for
    // the voice, whose next sentence may be asked for while the last one streams); later turns
    // reuse them. Without pooling this would be a connection per request.
    assert!(
        after_first <= 4,
        "{after_first} connections in the first turn"
    );
    assert!(
        connections - after_first <= 1,
        "{} new connections in {} later turns",
        connections - after_first,
        TURNS - 1
    );
    server.stop().await;
}
