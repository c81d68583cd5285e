//! Test harness: a real voxd on 127.0.0.1:0 and a WebSocket client speaking the /ws protocol.
#![allow(dead_code)] // each test file uses a different part of the harness

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use voxd::{serve, AppState, Config};

/// Delays shrunk so the suite stays fast; audio is still paced at real time, so replies are
/// spoken at 50 characters a second to keep them short.
pub(crate) const TEST_CONFIG: &str = r#"
[asr.mock]
latency_ms = 10
fixtures = "fixtures/transcripts.toml"

[llm.mock]
first_token_ms = 20
token_interval_ms = 2

[tts.mock]
first_audio_ms = 10
chars_per_second = 50.0
"#;

/// Input limits for test clients that stream audio faster than real time.
pub(crate) const FAST_CLIENT_LIMITS: &str =
    "[limits]\nmax_audio_rate = 100.0\naudio_burst_ms = 600000\n";

/// A guard against a hung test, never a timing assertion.
pub(crate) const PATIENCE: Duration = Duration::from_secs(30);

pub(crate) struct TestServer {
    pub addr: SocketAddr,
    pub state: Arc<AppState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub(crate) async fn start() -> TestServer {
        Self::start_with("").await
    }

    /// Starts voxd with `TEST_CONFIG` plus `extra` TOML (sections must not repeat TEST_CONFIG's).
    /// Unless `extra` has its own `[limits]`, the input rate limits are lifted: these tests stream
    /// audio faster than real time on purpose (speech is measured in audio time).
    pub(crate) async fn start_with(extra: &str) -> TestServer {
        let limits = if extra.contains("[limits]") {
            ""
        } else {
            FAST_CLIENT_LIMITS
        };
        let text = format!("{TEST_CONFIG}\n{limits}\n{extra}");
        let config = Config::from_toml(&text, Path::new(env!("CARGO_MANIFEST_DIR")))
            .expect("test config is valid");
        Self::start_config(config).await
    }

    pub(crate) async fn start_config(config: Config) -> TestServer {
        Self::start_state(AppState::new(config).await.expect("providers build")).await
    }

    /// Serves `state`, built by the test (with a provider of its own, say).
    pub(crate) async fn start_state(state: Arc<AppState>) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(
            listener,
            Arc::clone(&state),
            async move {
                let _ = stopped.await;
            },
            Duration::from_secs(5),
        ));
        let task = tokio::spawn(async move {
            task.await.unwrap().unwrap();
        });
        TestServer {
            addr,
            state,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub(crate) fn ws_url(&self, query: &str) -> String {
        format!("ws://{}/ws{}", self.addr, query)
    }

    pub(crate) async fn connect(&self) -> Client {
        Client::connect(&self.ws_url("")).await
    }

    /// Stops the server, without the drain's lame-duck grace, and waits until it has closed
    /// every session.
    pub(crate) async fn stop(mut self) {
        self.state.end_drain_grace();
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            tokio::time::timeout(PATIENCE, t).await.unwrap().unwrap();
        }
    }

    /// A plain HTTP GET over a real socket: (status, body).
    pub(crate) async fn get(&self, path: &str) -> (u16, String) {
        let r = self.request("GET", path, None, &[]).await;
        (r.status, r.body)
    }

    /// `POST /v1/transcribe` with `body` as `content_type`.
    pub(crate) async fn transcribe(&self, content_type: Option<&str>, body: &[u8]) -> HttpResponse {
        self.request("POST", "/v1/transcribe", content_type, body)
            .await
    }

    /// An HTTP/1.1 request over a real socket, with `Connection: close`.
    pub(crate) async fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> HttpResponse {
        http_request(self.addr, method, path, content_type, body).await
    }
}

/// An HTTP/1.1 request to `addr` over a real socket, with `Connection: close`.
pub(crate) async fn http_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    content_type: Option<&str>,
    body: &[u8],
) -> HttpResponse {
    let headers: Vec<(&str, &str)> = content_type
        .map(|ct| ("Content-Type", ct))
        .into_iter()
        .collect();
    http_request_with(addr, method, path, &headers, body).await
}

/// An HTTP/1.1 request with the given headers, with `Connection: close`.
pub(crate) async fn http_request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> HttpResponse {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: voxd\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (413) before reading the whole body; that is not an error here.
    let _ = s.write_all(body).await;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head[9..12].parse().unwrap();
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    HttpResponse {
        status,
        headers,
        body,
    }
}

/// A server in another process, reached over its address.
pub(crate) struct RemoteServer {
    pub addr: SocketAddr,
}

impl RemoteServer {
    /// A plain HTTP GET: (status, body).
    pub(crate) async fn get(&self, path: &str) -> (u16, String) {
        let r = http_request(self.addr, "GET", path, None, &[]).await;
        (r.status, r.body)
    }
}

/// An HTTP response read off the socket.
#[derive(Debug)]
pub(crate) struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub(crate) fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

/// What the server sent: a JSON event or a binary audio frame.
#[derive(Debug, Clone)]
pub(crate) enum Item {
    Event(Value),
    Audio(Vec<u8>),
}

impl Item {
    pub(crate) fn is(&self, ty: &str) -> bool {
        matches!(self, Item::Event(v) if v["type"] == ty)
    }
}

/// A session in the middle of an answer (`Client::mid_answer`).
pub(crate) struct MidAnswer {
    /// The session's id and resume token, from its `ready`.
    pub id: String,
    pub token: String,
    /// The answer's turn, and its audio received so far.
    pub turn: u64,
    pub received: Vec<u8>,
}

pub(crate) struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub ready: Value,
    /// Everything received so far, in order.
    pub log: Vec<Item>,
}

impl Client {
    pub(crate) async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect");
        let mut c = Client {
            ws,
            ready: Value::Null,
            log: Vec::new(),
        };
        let first = c.next().await;
        let Item::Event(ready) = first else {
            panic!("first message is not ready: {first:?}")
        };
        assert_eq!(ready["type"], "ready");
        c.ready = ready;
        c
    }

    pub(crate) async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::Text(v.to_string().into()))
            .await
            .unwrap();
    }

    pub(crate) async fn send_raw_text(&mut self, t: &str) {
        self.ws
            .send(Message::Text(t.to_owned().into()))
            .await
            .unwrap();
    }

    pub(crate) async fn send_bytes(&mut self, b: Vec<u8>) {
        self.ws.send(Message::Binary(b.into())).await.unwrap();
    }

    /// Streams `samples` in 20 ms frames (of 16 kHz audio unless `rate` says otherwise), as fast as
    /// the socket takes them: the server measures speech in audio time.
    pub(crate) async fn send_audio(&mut self, samples: &[i16], rate: u32) {
        for chunk in samples.chunks(rate as usize / 50) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|s| s.to_le_bytes()).collect();
            self.ws.feed(Message::Binary(bytes.into())).await.unwrap();
        }
        self.ws.flush().await.unwrap();
    }

    pub(crate) async fn send_silence(&mut self, ms: usize) {
        self.send_audio(&vec![0i16; ms * 16], 16000).await;
    }

    /// One utterance with client signals over silence.
    pub(crate) async fn say(&mut self, ms: usize) {
        self.send(json!({"type": "speech_start"})).await;
        self.send_silence(ms).await;
        self.send(json!({"type": "speech_end"})).await;
    }

    /// The next item (recorded in `log`).
    pub(crate) async fn next(&mut self) -> Item {
        loop {
            let msg = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("the server kept silent too long")
                .expect("the server closed the socket")
                .expect("socket error");
            let item = match msg {
                Message::Text(t) => Item::Event(serde_json::from_str(t.as_str()).unwrap()),
                Message::Binary(b) => Item::Audio(b.to_vec()),
                _ => continue,
            };
            self.log.push(item.clone());
            return item;
        }
    }

    /// Reads until an event of type `ty` arrives and returns it.
    pub(crate) async fn until(&mut self, ty: &str) -> Value {
        loop {
            if let Item::Event(v) = self.next().await {
                if v["type"] == ty {
                    return v;
                }
            }
        }
    }

    /// Reads until at least `bytes` of audio have arrived since the log index `from`.
    pub(crate) async fn until_audio(&mut self, from: usize, bytes: usize) {
        while audio_bytes(&self.log[from..]) < bytes {
            self.next().await;
        }
    }

    /// Reads until `audio_start`, then until `bytes` more of audio have arrived: the answer is
    /// audibly playing.
    pub(crate) async fn until_playing(&mut self, bytes: usize) {
        self.until("audio_start").await;
        let from = self.log.len();
        self.until_audio(from, bytes).await;
    }

    /// The events of type `ty` received so far.
    pub(crate) fn events(&self, ty: &str) -> Vec<&Value> {
        self.log
            .iter()
            .filter_map(|i| match i {
                Item::Event(v) if v["type"] == ty => Some(v),
                _ => None,
            })
            .collect()
    }

    /// The reply's text so far (`response_text` events), of one turn or of all.
    pub(crate) fn spoken(&self, turn: Option<u64>) -> String {
        self.events("response_text")
            .iter()
            .filter(|v| turn.is_none_or(|t| v["turn_id"] == t))
            .map(|v| v["text"].as_str().unwrap())
            .collect()
    }

    pub(crate) async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    /// Asks for an answer with `text` and reads until `bytes` of its audio arrived: what the
    /// client would resume with if its connection dropped now.
    pub(crate) async fn mid_answer(&mut self, text: &str, bytes: usize) -> MidAnswer {
        let id = self.ready["session_id"].as_str().unwrap().to_owned();
        let token = self.ready["resume_token"]
            .as_str()
            .expect("ready carries a resume_token")
            .to_owned();
        self.send(json!({"type": "text", "text": text})).await;
        let turn = self.until("audio_start").await["turn_id"].as_u64().unwrap();
        let from = self.log.len();
        self.until_audio(from, bytes).await;
        MidAnswer {
            id,
            token,
            turn,
            received: self.audio_from(from),
        }
    }

    /// On a connection that resumed session `id` after `before` of the answer's audio had
    /// arrived: checks its `ready`, reads to the answer's `response_done` (completed), and returns
    /// it with all that was heard of the answer, `before` then the rest.
    pub(crate) async fn hear_the_rest(&mut self, id: &str, before: &[u8]) -> (Value, Vec<u8>) {
        assert_eq!(self.ready["session_id"], id, "the same session");
        assert_eq!(self.ready["resumed"], true);
        let done = self.until("response_done").await;
        assert_eq!(done["status"], "completed", "{done}");
        let mut heard = before.to_vec();
        heard.extend_from_slice(&self.audio_from(0));
        (done, heard)
    }

    /// Cuts the TCP connection: a reset, no close frame (what a network blip looks like to the
    /// server: 1006).
    pub(crate) fn cut(self) {
        if let MaybeTlsStream::Plain(tcp) = self.ws.get_ref() {
            // A zero linger: the close is a reset, at once (it never blocks).
            socket2::SockRef::from(tcp)
                .set_linger(Some(Duration::ZERO))
                .unwrap();
        }
    }

    /// The audio received from log index `from` on, in order.
    pub(crate) fn audio_from(&self, from: usize) -> Vec<u8> {
        self.log[from..]
            .iter()
            .filter_map(|i| match i {
                Item::Audio(b) => Some(b.as_slice()),
                Item::Event(_) => None,
            })
            .flatten()
            .copied()
            .collect()
    }
}

pub(crate) fn audio_bytes(items: &[Item]) -> usize {
    items
        .iter()
        .map(|i| match i {
            Item::Audio(a) => a.len(),
            Item::Event(_) => 0,
        })
        .sum()
}

pub(crate) fn audio_concat(items: &[Item]) -> Vec<u8> {
    items
        .iter()
        .filter_map(|i| match i {
            Item::Audio(a) => Some(a.clone()),
            Item::Event(_) => None,
        })
        .flatten()
        .collect()
}

/// The bytes of a committed fixture file.
pub(crate) fn fixture_bytes(name: &str) -> Vec<u8> {
    std::fs::read(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name),
    )
    .unwrap()
}

/// A WAV file in memory.
pub(crate) fn wav(samples: &[f32], rate: u32, channels: u16, float: bool) -> Vec<u8> {
    let spec = hound::WavSpec {
        channels,
        sample_rate: rate,
        bits_per_sample: if float { 32 } else { 16 },
        sample_format: if float {
            hound::SampleFormat::Float
        } else {
            hound::SampleFormat::Int
        },
    };
    let mut cursor = std::io::Cursor::new(Vec::new());
    let mut w = hound::WavWriter::new(&mut cursor, spec).unwrap();
    for s in samples {
        if float {
            w.write_sample(*s).unwrap();
        } else {
            w.write_sample((*s * 32767.0) as i16).unwrap();
        }
    }
    w.finalize().unwrap();
    cursor.into_inner()
}

/// A committed speech fixture (16 kHz mono PCM16).
pub(crate) fn fixture(name: &str) -> Vec<i16> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name);
    let mut r = hound::WavReader::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(r.spec().sample_rate, 16000);
    r.samples::<i16>().map(Result::unwrap).collect()
}

/// Polls a condition (bounded): for state that settles asynchronously after a socket closes.
#[track_caller]
pub(crate) fn wait_for(cond: impl Fn() -> bool) -> impl std::future::Future<Output = ()> {
    let caller = std::panic::Location::caller();
    async move {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while !cond() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition at {caller} never held"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// The Python of the interop peers (`VOXD_TEST_PYTHON`, or `.venv/bin/python`) if it can
/// `import_check` (a Python statement), or `None` with a visible SKIPPED for `test`. With
/// `VOXD_REQUIRE_PEERS=1` (CI) a missing peer fails instead.
pub(crate) fn peer_python(
    import_check: &str,
    what: &str,
    test: &str,
) -> Option<std::path::PathBuf> {
    use std::path::PathBuf;
    use std::process::{Command, Stdio};
    let candidates = [
        std::env::var_os("VOXD_TEST_PYTHON").map(PathBuf::from),
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python")),
    ];
    for p in candidates.into_iter().flatten() {
        let ok = Command::new(&p)
            .args(["-c", import_check])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(p);
        }
    }
    assert!(
        std::env::var("VOXD_REQUIRE_PEERS").as_deref() != Ok("1"),
        "no Python with {what}, and VOXD_REQUIRE_PEERS=1 requires it \
         (python3 -m venv .venv && .venv/bin/pip install -r tests/peers/requirements.txt)"
    );
    eprintln!("SKIPPED: {test}: no Python with {what} (see README, Tests)");
    None
}
