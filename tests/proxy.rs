//! Egress through an HTTP proxy: every provider's own `proxy` setting, against a small CONNECT
//! proxy on 127.0.0.1 written here, which counts the tunnels it opened (so a test proves the
//! traffic went through it) and can ask for credentials or refuse. The servers behind it speak
//! TLS (`common/tls.rs`), verified end to end through the tunnel.
//!
//! The environment's proxies (`HTTPS_PROXY`, `NO_PROXY`) are not set here: tests share one
//! process, so an env var would reach every other test. Their rules are unit-tested as a pure
//! function in the backends crate (`proxy.rs`), and reqwest applies the same ones.

mod common;
#[path = "common/tls.rs"]
mod tls;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use serde_json::json;
use tls::{Flaw, TestCa, TlsFront};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use voxd_backends::http::ProxyUrl;
use voxd_backends::openai::{OpenAiAsr, OpenAiAsrConfig, OpenAiLlm, OpenAiLlmConfig};
use voxd_backends::openai::{OpenAiTts, OpenAiTtsConfig};
use voxd_backends::stream_asr::{StreamAsrConfig, StreamAsrProvider};
use voxd_backends::tools::{HttpTool, HttpToolConfig};
use voxd_backends::{Asr, Llm, LlmEvent, LlmRequest, Tool, Tts};
use voxd_core::{ChatMessage, SampleRate};

/// `voxd:s3cret`, as a proxy wants it.
const CREDENTIALS: &str = "Basic dm94ZDpzM2NyZXQ=";

/// What the proxy does with a CONNECT.
#[derive(Clone, Copy)]
enum Policy {
    /// Opens the tunnel.
    Open,
    /// Opens it only with `CREDENTIALS` (407 otherwise).
    WantsCredentials,
    /// Answers 403.
    Refuse,
}

/// The target of each CONNECT a proxy saw, and its `Proxy-Authorization`, in order.
type Connects = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// A CONNECT proxy on 127.0.0.1 that tunnels to loopback only.
struct ConnectProxy {
    addr: SocketAddr,
    connects: Connects,
}

impl ConnectProxy {
    async fn start(policy: Policy) -> ConnectProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connects = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&connects);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(tunnel(tcp, policy, Arc::clone(&seen)));
            }
        });
        ConnectProxy { addr, connects }
    }

    fn url(&self) -> ProxyUrl {
        ProxyUrl(format!("http://{}", self.addr))
    }

    fn targets(&self) -> Vec<String> {
        self.connects
            .lock()
            .unwrap()
            .iter()
            .map(|(t, _)| t.clone())
            .collect()
    }
}

/// One proxy connection: reads the CONNECT request's head (the client sends nothing more before
/// the answer), answers per `policy`, then copies bytes both ways.
async fn tunnel(mut client: TcpStream, policy: Policy, seen: Connects) {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).await.unwrap_or(0) == 0 || head.len() > 8192 {
            return;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    let mut lines = head.split("\r\n");
    let request = lines.next().unwrap_or_default().to_owned();
    let mut parts = request.split(' ');
    let (method, target) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let authorization = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.eq_ignore_ascii_case("proxy-authorization"))
        .map(|(_, v)| v.trim().to_owned());
    assert_eq!(method, "CONNECT", "{request}");
    seen.lock()
        .unwrap()
        .push((target.to_owned(), authorization.clone()));
    let answer: &[u8] = match policy {
        Policy::Refuse => b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
        Policy::WantsCredentials if authorization.as_deref() != Some(CREDENTIALS) => {
            b"HTTP/1.1 407 Proxy Authentication Required\r\n\
              Proxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n"
        }
        _ => b"HTTP/1.1 200 Connection established\r\n\r\n",
    };
    // Loopback only: this proxy never reaches the network.
    let upstream = if answer.starts_with(b"HTTP/1.1 200") && target.starts_with("127.0.0.1:") {
        TcpStream::connect(target).await.ok()
    } else {
        None
    };
    if client.write_all(answer).await.is_err() {
        return;
    }
    if let Some(mut upstream) = upstream {
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    }
}

async fn llm_reply(llm: &OpenAiLlm) -> Result<String, String> {
    let mut reply = llm.stream(LlmRequest {
        messages: vec![ChatMessage::User("hello".into())],
        tools: vec![],
    });
    let mut text = String::new();
    while let Some(event) = reply.next().await {
        if let LlmEvent::Token(t) = event.map_err(|e| e.to_string())? {
            text.push_str(&t);
        }
    }
    Ok(text)
}

/// The OpenAI-protocol LLM, ASR and TTS and an HTTP tool, each with `proxy`, over TLS: every
/// request goes through the proxy, one tunnel per provider's client, kept for its next request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_providers_go_through_their_proxy() {
    let ca = TestCa::new("proxy-http");
    let (plain, seen) = tls::openai_stub().await;
    let front = TlsFront::start(&ca.server_cert(Flaw::None), plain).await;
    let proxy = ConnectProxy::start(Policy::Open).await;
    let base = format!("https://{}/v1", front.addr);
    let ca_file = Some(ca.pem_path());

    let llm = OpenAiLlm::new(
        OpenAiLlmConfig {
            base_url: base.clone(),
            model: "stub".into(),
            ca_file: ca_file.clone(),
            proxy: Some(proxy.url()),
            ..OpenAiLlmConfig::default()
        },
        &ca.dir,
    )
    .unwrap();
    let asr = OpenAiAsr::new(
        OpenAiAsrConfig {
            base_url: base.clone(),
            ca_file: ca_file.clone(),
            proxy: Some(proxy.url()),
            ..OpenAiAsrConfig::default()
        },
        &ca.dir,
    )
    .unwrap();
    let tts = OpenAiTts::new(
        OpenAiTtsConfig {
            base_url: base.clone(),
            ca_file: ca_file.clone(),
            proxy: Some(proxy.url()),
            ..OpenAiTtsConfig::default()
        },
        &ca.dir,
    )
    .unwrap();
    let tool_config: HttpToolConfig = toml::from_str(&format!(
        "description = \"Echo\"\nurl = \"https://{}/tool\"\nca_file = \"ca.pem\"\nproxy = \"{}\"\n",
        front.addr,
        proxy.url().0
    ))
    .unwrap();
    let tool = HttpTool::new("echo", tool_config, &ca.dir).unwrap();

    for round in 0..2 {
        assert_eq!(llm_reply(&llm).await.unwrap(), tls::REPLY, "round {round}");
        let heard = asr.transcribe(Arc::from(vec![900i16; 8000])).await.unwrap();
        assert_eq!(heard.text, tls::HEARD);
        let mut audio = tts.synthesize("Hello.".into(), SampleRate::INTERNAL);
        let mut samples = 0;
        while let Some(chunk) = audio.next().await {
            samples += chunk.unwrap().len();
        }
        assert!(samples > 0);
        let echoed = tool.call(json!({"n": round})).await.unwrap();
        assert_eq!(echoed, json!({"echo": {"n": round}}));
    }
    assert_eq!(seen.lock().unwrap().requests(), 8);
    // Every connection went through the proxy, to the TLS server: four clients, a tunnel each,
    // reused by the second round (8 without reuse; one spare for a request that finds its
    // connection not yet back in the pool).
    let targets = proxy.targets();
    assert!((4..=5).contains(&targets.len()), "{targets:?}");
    assert!(
        targets.iter().all(|t| *t == front.addr.to_string()),
        "{targets:?}"
    );
    assert_eq!(front.stats.accepted(), targets.len());
    assert_eq!(front.stats.handshakes(), targets.len());
}

fn stream_asr(
    url: String,
    ca_file: Option<&Path>,
    proxy: ProxyUrl,
    dir: &Path,
) -> StreamAsrProvider {
    StreamAsrProvider::new(
        StreamAsrConfig {
            url,
            ca_file: ca_file.map(Path::to_path_buf),
            proxy: Some(proxy),
            ..StreamAsrConfig::default()
        },
        dir,
    )
    .unwrap()
}

/// The streaming ASR's WebSocket opens a CONNECT tunnel, then TLS (verified against the real
/// server's certificate, through the tunnel) and the upgrade inside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streaming_asrs_websocket_tunnels_through_an_http_proxy() {
    let ca = TestCa::new("proxy-wss");
    let (plain, upgrades) = tls::listen_stub().await;
    let front = TlsFront::start(&ca.server_cert(Flaw::None), plain).await;
    let proxy = ConnectProxy::start(Policy::Open).await;
    let url = format!("wss://{}/v1/listen", front.addr);

    let asr = stream_asr(url.clone(), Some(Path::new("ca.pem")), proxy.url(), &ca.dir);
    for _ in 0..2 {
        let heard = asr.transcribe(Arc::from(vec![900i16; 8000])).await.unwrap();
        assert_eq!(heard.text, tls::HEARD);
    }
    // One stream per utterance, each through its own tunnel to the server.
    assert_eq!(
        proxy.targets(),
        [front.addr.to_string(), front.addr.to_string()]
    );
    assert_eq!(upgrades.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(front.stats.handshakes(), 2);
    assert_eq!(front.stats.offered_alpn.lock().unwrap()[0], ["http/1.1"]);

    // The proxy is only a pipe: without the CA, the server's certificate is still refused.
    let untrusting = stream_asr(url, None, proxy.url(), &ca.dir);
    let e = untrusting
        .transcribe(Arc::from(vec![900i16; 8000]))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("the certificate is not trusted: UnknownIssuer; add its CA with ca_file"),
        "{e}"
    );
    assert_eq!(proxy.targets().len(), 3);
}

/// Credentials in the proxy URL go as `Proxy-Authorization`; without them a proxy that wants
/// them is named in the error, with what to do. A refused tunnel names the proxy and its status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_credentials_and_refusals() {
    let ca = TestCa::new("proxy-auth");
    let (plain, _) = tls::listen_stub().await;
    let front = TlsFront::start(&ca.server_cert(Flaw::None), plain).await;
    let url = format!("wss://{}/v1/listen", front.addr);
    let ca_file = Some(Path::new("ca.pem"));
    let audio: Arc<[i16]> = Arc::from(vec![900i16; 8000]);

    let proxy = ConnectProxy::start(Policy::WantsCredentials).await;
    let bare = stream_asr(url.clone(), ca_file, proxy.url(), &ca.dir);
    let e = bare
        .transcribe(Arc::clone(&audio))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(&format!(
            "the proxy {} wants credentials (HTTP 407)",
            proxy.addr
        )),
        "{e}"
    );
    let with_credentials = ProxyUrl(format!("http://voxd:s3cret@{}", proxy.addr));
    assert!(!format!("{with_credentials:?}").contains("s3cret"));
    let asr = stream_asr(url.clone(), ca_file, with_credentials.clone(), &ca.dir);
    assert_eq!(
        asr.transcribe(Arc::clone(&audio)).await.unwrap().text,
        tls::HEARD
    );
    assert!(!format!("{asr:?}").contains("s3cret"), "{asr:?}");

    // The HTTP providers send the same credentials.
    let (plain, _) = tls::openai_stub().await;
    let https = TlsFront::start(&ca.server_cert(Flaw::None), plain).await;
    let llm = OpenAiLlm::new(
        OpenAiLlmConfig {
            base_url: format!("https://{}/v1", https.addr),
            model: "stub".into(),
            ca_file: Some(ca.pem_path()),
            proxy: Some(with_credentials),
            ..OpenAiLlmConfig::default()
        },
        &ca.dir,
    )
    .unwrap();
    assert_eq!(llm_reply(&llm).await.unwrap(), tls::REPLY);
    let connects = proxy.connects.lock().unwrap().clone();
    assert_eq!(connects.len(), 3, "{connects:?}");
    assert_eq!(connects[0].1, None);
    assert_eq!(connects[1].1.as_deref(), Some(CREDENTIALS));
    assert_eq!(
        connects[2],
        (https.addr.to_string(), Some(CREDENTIALS.to_owned()))
    );

    let refusing = ConnectProxy::start(Policy::Refuse).await;
    let asr = stream_asr(url, ca_file, refusing.url(), &ca.dir);
    let e = asr.transcribe(audio).await.unwrap_err().to_string();
    assert!(
        e.contains(&format!(
            "the proxy {} refused the tunnel to {}: HTTP 403",
            refusing.addr, front.addr
        )),
        "{e}"
    );
    assert_eq!(
        front.stats.accepted(),
        1,
        "only the tunnel with credentials reached the server"
    );
}
