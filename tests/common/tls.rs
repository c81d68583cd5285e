//! TLS on loopback for the provider tests (tests/tls.rs, tests/proxy.rs), included by path
//! beside `common`: a test CA and server certificates made in the test (rcgen), a TLS front that
//! terminates TLS with rustls and passes the plaintext to a server behind it while counting its
//! connections and recording what each client offered, and the plain servers behind it (an
//! OpenAI-protocol stub with an HTTP tool, a streaming-ASR stub, the Python MCP peer).
#![allow(dead_code)] // each test file uses a different part

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};

/// A certificate authority made for one test, its PEM file in a folder of the test's own.
pub(crate) struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    /// The folder holding `ca.pem` (and whatever the test writes beside it).
    pub dir: PathBuf,
}

/// A server's certificate chain and key.
#[derive(Clone)]
pub(crate) struct ServerCert {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivatePkcs8KeyDer<'static>>,
}

/// How a server certificate is wrong, if at all.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Flaw {
    /// Valid now, for 127.0.0.1 and localhost.
    None,
    /// Valid, but for `voxd-test.invalid` only.
    OtherHost,
    /// For 127.0.0.1, but its validity ended in 2020.
    Expired,
}

impl TestCa {
    /// A new CA; `tag` names its folder under the temp dir (unique per test and process).
    pub(crate) fn new(tag: &str) -> TestCa {
        let dir = std::env::temp_dir().join(format!("voxd-tls-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("voxd test CA {tag}"));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("ca.pem"), cert.pem()).unwrap();
        TestCa {
            issuer: Issuer::new(params, key),
            cert: cert.der().clone(),
            dir,
        }
    }

    /// The CA's PEM file.
    pub(crate) fn pem_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A server certificate signed by this CA, with `flaw`.
    pub(crate) fn server_cert(&self, flaw: Flaw) -> ServerCert {
        let names = match flaw {
            Flaw::OtherHost => vec!["voxd-test.invalid".to_owned()],
            Flaw::None | Flaw::Expired => vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
        };
        let mut params = CertificateParams::new(names).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "voxd test server");
        params.is_ca = IsCa::NoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        if flaw == Flaw::Expired {
            params.not_before = rcgen::date_time_ymd(2019, 1, 1);
            params.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        ServerCert {
            chain: vec![cert.der().clone(), self.cert.clone()],
            key: Arc::new(PrivatePkcs8KeyDer::from(key.serialize_der())),
        }
    }
}

/// What a TLS front saw.
#[derive(Default)]
pub(crate) struct FrontStats {
    /// TCP connections accepted.
    pub accepted: AtomicUsize,
    /// TLS handshakes completed.
    pub handshakes: AtomicUsize,
    /// The ALPN protocols each client offered, in its hello.
    pub offered_alpn: Mutex<Vec<Vec<String>>>,
    /// The server name (SNI) each client sent, if any.
    pub server_names: Mutex<Vec<Option<String>>>,
    /// Why handshakes failed, as the server saw it (the client's alert).
    pub failures: Mutex<Vec<String>>,
}

impl FrontStats {
    pub(crate) fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    pub(crate) fn handshakes(&self) -> usize {
        self.handshakes.load(Ordering::SeqCst)
    }
}

/// TLS on 127.0.0.1 in front of a plain TCP server: each accepted connection is a TLS handshake
/// with `cert`, then its plaintext is copied to and from a new connection to the backend. It
/// offers `http/1.1` by ALPN (the servers behind it speak HTTP/1.1).
pub(crate) struct TlsFront {
    pub addr: SocketAddr,
    pub stats: Arc<FrontStats>,
}

impl TlsFront {
    pub(crate) async fn start(cert: &ServerCert, backend: SocketAddr) -> TlsFront {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                cert.chain.clone(),
                PrivateKeyDer::Pkcs8(cert.key.clone_key()),
            )
            .unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stats = Arc::new(FrontStats::default());
        let seen = Arc::clone(&stats);
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                seen.accepted.fetch_add(1, Ordering::SeqCst);
                let (seen, config) = (Arc::clone(&seen), Arc::clone(&config));
                tokio::spawn(async move {
                    let acceptor = tokio_rustls::LazyConfigAcceptor::new(
                        rustls::server::Acceptor::default(),
                        tcp,
                    );
                    let Ok(start) = acceptor.await else {
                        seen.failures
                            .lock()
                            .unwrap()
                            .push("no TLS client hello".into());
                        return;
                    };
                    {
                        let hello = start.client_hello();
                        let alpn = hello
                            .alpn()
                            .map(|protocols| {
                                protocols
                                    .map(|p| String::from_utf8_lossy(p).into_owned())
                                    .collect()
                            })
                            .unwrap_or_default();
                        seen.offered_alpn.lock().unwrap().push(alpn);
                        seen.server_names
                            .lock()
                            .unwrap()
                            .push(hello.server_name().map(str::to_owned));
                    }
                    let mut tls = match start.into_stream(config).await {
                        Ok(tls) => tls,
                        Err(e) => {
                            seen.failures.lock().unwrap().push(e.to_string());
                            return;
                        }
                    };
                    seen.handshakes.fetch_add(1, Ordering::SeqCst);
                    let Ok(mut plain) = TcpStream::connect(backend).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
                });
            }
        });
        TlsFront { addr, stats }
    }
}

/// What the OpenAI-protocol stub saw.
#[derive(Default)]
pub(crate) struct Seen {
    pub chat: usize,
    pub transcriptions: usize,
    pub speech: usize,
    pub tool_calls: Vec<Value>,
}

impl Seen {
    pub(crate) fn requests(&self) -> usize {
        self.chat + self.transcriptions + self.speech + self.tool_calls.len()
    }
}

pub(crate) type SharedSeen = Arc<Mutex<Seen>>;

/// The reply the chat stub streams: two sentences, so a turn makes two speech requests.
pub(crate) const REPLY: &str = "Sure thing. It is sunny.";

/// The transcript the transcription stub answers.
pub(crate) const HEARD: &str = "what is the weather like";

async fn chat(State(seen): State<SharedSeen>, Json(_request): Json<Value>) -> Response {
    seen.lock().unwrap().chat += 1;
    let mut events = String::new();
    for piece in ["Sure ", "thing. ", "It is ", "sunny."] {
        let chunk = json!({"id": "c", "object": "chat.completion.chunk", "model": "stub",
            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": null}]});
        events.push_str(&format!("data: {chunk}\n\n"));
    }
    let end = json!({"id": "c", "object": "chat.completion.chunk", "model": "stub",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]});
    events.push_str(&format!("data: {end}\n\ndata: [DONE]\n\n"));
    ([(header::CONTENT_TYPE, "text/event-stream")], events).into_response()
}

async fn transcriptions(State(seen): State<SharedSeen>, body: Bytes) -> Response {
    assert!(
        body.windows(4).any(|w| w == b"RIFF"),
        "no WAV in the upload"
    );
    seen.lock().unwrap().transcriptions += 1;
    Json(json!({ "text": HEARD })).into_response()
}

async fn speech(State(seen): State<SharedSeen>, Json(request): Json<Value>) -> Response {
    assert_eq!(request["response_format"], "pcm");
    seen.lock().unwrap().speech += 1;
    // 60 ms of a quiet tone at 24 kHz per sentence: short, so turns stay quick in real time.
    let pcm: Vec<u8> = (0..1440)
        .flat_map(|i| (((i as f32 * 0.11).sin() * 2000.0) as i16).to_le_bytes())
        .collect();
    Response::builder()
        .header(header::CONTENT_TYPE, "audio/pcm")
        .body(Body::from(pcm))
        .unwrap()
}

async fn tool(State(seen): State<SharedSeen>, Json(arguments): Json<Value>) -> Response {
    seen.lock().unwrap().tool_calls.push(arguments.clone());
    Json(json!({ "echo": arguments })).into_response()
}

/// The OpenAI-protocol stub (`/v1/chat/completions`, `/v1/audio/transcriptions`,
/// `/v1/audio/speech`) and an HTTP tool (`/tool`), in plain HTTP/1.1 with keep-alive.
pub(crate) async fn openai_stub() -> (SocketAddr, SharedSeen) {
    let seen = SharedSeen::default();
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/audio/transcriptions", post(transcriptions))
        .route("/v1/audio/speech", post(speech))
        .route("/tool", post(tool))
        .with_state(Arc::clone(&seen));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

/// A streaming-ASR stub in Deepgram's listen shape, in plain `ws://`: it counts upgrades and
/// answers `Finalize` with `HEARD` as a final result, `CloseStream` with a normal close.
pub(crate) async fn listen_stub() -> (SocketAddr, Arc<AtomicUsize>) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let upgrades = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::clone(&upgrades);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let count = Arc::clone(&count);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                count.fetch_add(1, Ordering::SeqCst);
                while let Some(Ok(m)) = ws.next().await {
                    match m {
                        Message::Text(t) if t.contains("\"Finalize\"") => {
                            let result = json!({
                                "type": "Results", "is_final": true, "speech_final": true,
                                "from_finalize": true, "channel_index": [0, 1],
                                "channel": {"alternatives": [{"transcript": HEARD}]},
                            });
                            if ws.send(Message::text(result.to_string())).await.is_err() {
                                return;
                            }
                        }
                        Message::Text(t) if t.contains("\"CloseStream\"") => {
                            let _ = ws.close(None).await;
                            return;
                        }
                        Message::Close(_) => return,
                        _ => {}
                    }
                }
            });
        }
    });
    (addr, upgrades)
}

/// The official Python SDK's MCP server (`tests/peers/mcp_server.py`) on a free port, killed
/// on drop.
pub(crate) struct McpPeer {
    child: std::process::Child,
    pub addr: SocketAddr,
}

impl McpPeer {
    pub(crate) async fn start(python: &Path) -> McpPeer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = std::process::Command::new(python)
            .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/mcp_server.py"))
            .arg(port.to_string())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the MCP server");
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        // Ready when it accepts connections (uvicorn binds after importing the SDK).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(addr).await.is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the MCP server did not listen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        McpPeer { child, addr }
    }
}

impl Drop for McpPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
