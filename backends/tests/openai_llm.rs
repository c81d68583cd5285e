//! The OpenAI LLM against a loopback stub that speaks the Chat Completions streaming protocol:
//! what it sends, how it reads event streams however they are cut, how it fails, and that
//! dropping its stream closes the connection.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use futures_util::stream::{self, BoxStream, Stream, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use voxd_backends::openai::{OpenAiLlm, OpenAiLlmConfig};
use voxd_backends::{Llm, LlmEvent, LlmRequest, ProviderError, ToolSpec};
use voxd_core::{ChatMessage, ToolCall};

/// Guards every wait on the provider, so that a bug fails the test instead of hanging it.
const HANG_GUARD: Duration = Duration::from_secs(20);

/// What the stub answers to a request.
enum Script {
    /// This status and body, at once.
    Status(StatusCode, &'static str),
    /// An event stream: each item is sent as its own piece of the body; `Err` aborts the
    /// connection there; after the last item the body ends normally.
    Chunks(Vec<Result<Vec<u8>, ()>>),
    /// An event stream fed by the test, piece by piece; `Err` aborts the connection; it ends
    /// normally when the test drops the sender.
    Live(mpsc::Receiver<Result<Vec<u8>, ()>>),
}

/// A request as the stub saw it.
struct Seen {
    headers: HeaderMap,
    body: Value,
}

struct StubState {
    /// The answers to the coming requests, in order.
    scripts: Mutex<VecDeque<Script>>,
    seen: mpsc::Sender<Seen>,
}

struct Stub {
    base_url: String,
    seen: mpsc::Receiver<Seen>,
}

impl Stub {
    /// The next request the stub received.
    async fn request(&mut self) -> Seen {
        tokio::time::timeout(HANG_GUARD, self.seen.recv())
            .await
            .expect("the request arrives")
            .expect("the stub is running")
    }
}

/// Starts a stub on `127.0.0.1:0` answering one `POST /v1/chat/completions` with `script`.
async fn stub(script: Script) -> Stub {
    stubs(vec![script]).await
}

/// Starts a stub answering one request per script, in order.
async fn stubs(scripts: Vec<Script>) -> Stub {
    let (seen_tx, seen) = mpsc::channel(4);
    let state = Arc::new(StubState {
        scripts: Mutex::new(scripts.into()),
        seen: seen_tx,
    });
    let app = Router::new()
        .route("/v1/chat/completions", post(completions))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    Stub {
        base_url: format!("http://{addr}/v1"),
        seen,
    }
}

async fn completions(
    State(state): State<Arc<StubState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let body = serde_json::from_slice(&body).expect("the request body is JSON");
    state.seen.send(Seen { headers, body }).await.unwrap();
    let script = state.scripts.lock().unwrap().pop_front();
    match script.expect("a script for every request") {
        Script::Status(status, body) => {
            (status, [(CONTENT_TYPE, "application/json")], body).into_response()
        }
        Script::Chunks(chunks) => event_stream(stream::iter(chunks.into_iter().map(|chunk| {
            chunk
                .map(Bytes::from)
                .map_err(|()| io::Error::other("the stub aborts the connection"))
        }))),
        Script::Live(rx) => event_stream(stream::unfold(rx, |mut rx| async move {
            let chunk = rx
                .recv()
                .await?
                .map(Bytes::from)
                .map_err(|()| io::Error::other("the stub aborts the connection"));
            Some((chunk, rx))
        })),
    }
}

fn event_stream(body: impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static) -> Response {
    Response::builder()
        .header(CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(body))
        .unwrap()
}

/// One SSE event carrying `chunk`.
fn event(chunk: &Value) -> String {
    format!("data: {chunk}\n\n")
}

/// An event with one piece of text.
fn text(content: &str) -> String {
    event(&json!({"object": "chat.completion.chunk",
                  "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": null}]}))
}

/// An event with one tool call fragment.
fn call_fragment(index: usize, id: Option<&str>, name: Option<&str>, arguments: &str) -> String {
    let mut function = json!({"arguments": arguments});
    if let Some(name) = name {
        function["name"] = json!(name);
    }
    let mut fragment = json!({"index": index, "function": function});
    if let Some(id) = id {
        fragment["id"] = json!(id);
        fragment["type"] = json!("function");
    }
    event(&json!({"choices": [{"index": 0, "delta": {"tool_calls": [fragment]}}]}))
}

fn finish(reason: &str) -> String {
    event(&json!({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]}))
}

const DONE: &str = "data: [DONE]\n\n";

fn chunks(pieces: &[String]) -> Script {
    Script::Chunks(pieces.iter().map(|p| Ok(p.clone().into_bytes())).collect())
}

fn config(base_url: &str) -> OpenAiLlmConfig {
    OpenAiLlmConfig {
        base_url: base_url.to_owned(),
        model: "test-model".to_owned(),
        ..OpenAiLlmConfig::default()
    }
}

fn llm(base_url: &str) -> OpenAiLlm {
    OpenAiLlm::new(config(base_url), Path::new(".")).expect("a valid config")
}

fn hello() -> LlmRequest {
    LlmRequest {
        messages: vec![
            ChatMessage::System("Be brief.".into()),
            ChatMessage::User("Hello".into()),
        ],
        tools: Vec::new(),
    }
}

async fn next(
    stream: &mut BoxStream<'static, Result<LlmEvent, ProviderError>>,
) -> Option<Result<LlmEvent, ProviderError>> {
    tokio::time::timeout(HANG_GUARD, stream.next())
        .await
        .expect("the provider answers")
}

/// Everything the stream yields, up to and including its first error.
async fn collect(
    mut stream: BoxStream<'static, Result<LlmEvent, ProviderError>>,
) -> (Vec<LlmEvent>, Option<ProviderError>) {
    let mut events = Vec::new();
    while let Some(item) = next(&mut stream).await {
        match item {
            Ok(event) => events.push(event),
            Err(error) => {
                assert!(
                    next(&mut stream).await.is_none(),
                    "an error ends the stream"
                );
                return (events, Some(error));
            }
        }
    }
    (events, None)
}

fn tokens(events: &[LlmEvent]) -> Vec<&str> {
    events
        .iter()
        .map(|e| match e {
            LlmEvent::Token(t) => t.as_str(),
            other => panic!("expected only text, got {other:?}"),
        })
        .collect()
}

fn failed_message(error: Option<ProviderError>) -> String {
    match error {
        Some(ProviderError::Failed { provider, message }) => {
            assert_eq!(provider, "openai");
            message
        }
        other => panic!("expected a Failed error, got {other:?}"),
    }
}

/// A directory holding a key file, unique to the test.
fn key_dir(test: &str, key: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("voxd-openai-{test}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("openai.key"), format!("{key}\n")).unwrap();
    dir
}

#[tokio::test]
async fn text_survives_awkward_splits() {
    let opening = event(&json!({"id": "c1", "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}));
    let stream = format!(
        ": keep-alive\r\n\r\n{}{}{}{}{}{}{DONE}",
        opening.replace('\n', "\r\n"),
        text("Café").replace('\n', "\r\n"),
        text(" \u{1f600}!"),
        text(" ok"),
        // One event's JSON over two `data:` lines.
        "data: {\"choices\":[{\"index\":0,\ndata: \"delta\":{\"content\":\" two lines\"}}]}\n\n",
        finish("stop"),
    );
    let bytes = stream.as_bytes();
    let at = |needle: &[u8], offset: usize| {
        bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .expect("the needle is in the stream")
            + offset
    };
    let ok = stream
        .find(&text(" ok"))
        .expect("the event is in the stream");
    let mut cuts = vec![
        at(b"data:", 2),               // mid `data:`
        at("é".as_bytes(), 1),         // inside the two bytes of é
        at("\u{1f600}".as_bytes(), 1), // inside the emoji's four bytes
        at("\u{1f600}".as_bytes(), 3),
        at(b"\r\n\r\ndata: {\"choices", 1), // between a CR and its LF
        ok - 1,                             // inside a blank-line terminator
        bytes.len() - 4,                    // mid `[DONE]`
        bytes.len() - 1,                    // before the last LF
    ];
    cuts.sort_unstable();
    cuts.dedup();
    let mut pieces = Vec::new();
    let mut start = 0;
    for cut in cuts {
        pieces.push(Ok(bytes[start..cut].to_vec()));
        start = cut;
    }
    pieces.push(Ok(bytes[start..].to_vec()));

    let stub = stub(Script::Chunks(pieces)).await;
    let (events, error) = collect(llm(&stub.base_url).stream(hello())).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(
        tokens(&events),
        ["Café", " \u{1f600}!", " ok", " two lines"]
    );
}

#[tokio::test]
async fn text_arrives_before_the_rest_is_sent() {
    let (tx, rx) = mpsc::channel(4);
    let stub = stub(Script::Live(rx)).await;
    let mut stream = llm(&stub.base_url).stream(hello());
    tx.send(Ok(text("Hel").into_bytes())).await.unwrap();
    // Nothing more is sent until the first piece of text has come out of the stream.
    assert_eq!(
        next(&mut stream).await.unwrap().unwrap(),
        LlmEvent::Token("Hel".into())
    );
    tx.send(Ok(text("lo").into_bytes())).await.unwrap();
    assert_eq!(
        next(&mut stream).await.unwrap().unwrap(),
        LlmEvent::Token("lo".into())
    );
    tx.send(Ok(format!("{}{DONE}", finish("stop")).into_bytes()))
        .await
        .unwrap();
    drop(tx);
    assert!(next(&mut stream).await.is_none());
}

#[tokio::test]
async fn parallel_tool_calls_are_assembled_by_index() {
    let pieces = [
        text("Let me check."),
        call_fragment(0, Some("call_a"), Some("check_balance"), ""),
        call_fragment(0, None, None, "{\"acc"),
        call_fragment(1, Some("call_b"), Some("send_email"), ""),
        call_fragment(0, None, None, "ount\": \"che"),
        call_fragment(1, None, None, "{\"to\": \"a@exa"),
        call_fragment(0, None, None, "cking\"}"),
        call_fragment(1, None, None, "mple.com\"}"),
        finish("tool_calls"),
        DONE.to_owned(),
    ];
    let stub = stub(chunks(&pieces)).await;
    let (events, error) = collect(llm(&stub.base_url).stream(hello())).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(
        events,
        [
            LlmEvent::Token("Let me check.".into()),
            LlmEvent::ToolCall(ToolCall {
                id: "call_a".into(),
                name: "check_balance".into(),
                arguments: "{\"account\": \"checking\"}".into(),
            }),
            LlmEvent::ToolCall(ToolCall {
                id: "call_b".into(),
                name: "send_email".into(),
                arguments: "{\"to\": \"a@example.com\"}".into(),
            }),
        ]
    );
}

#[tokio::test]
async fn tool_calls_come_at_finish_reason_without_waiting_for_done() {
    let (tx, rx) = mpsc::channel(4);
    let stub = stub(Script::Live(rx)).await;
    let mut stream = llm(&stub.base_url).stream(hello());
    let first = format!(
        "{}{}",
        call_fragment(0, Some("call_1"), Some("check_balance"), "{}"),
        finish("tool_calls")
    );
    tx.send(Ok(first.into_bytes())).await.unwrap();
    assert!(matches!(
        next(&mut stream).await,
        Some(Ok(LlmEvent::ToolCall(ToolCall { ref id, .. }))) if id == "call_1"
    ));
    tx.send(Ok(DONE.as_bytes().to_vec())).await.unwrap();
    drop(tx);
    assert!(next(&mut stream).await.is_none());
}

#[tokio::test]
async fn missing_ids_stay_empty_and_finish_reason_without_done_is_enough() {
    let pieces = [
        call_fragment(0, None, Some("check_balance"), "{}"),
        finish("tool_calls"),
    ];
    let stub = stub(chunks(&pieces)).await;
    let (events, error) = collect(llm(&stub.base_url).stream(hello())).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(
        events,
        [LlmEvent::ToolCall(ToolCall {
            id: String::new(),
            name: "check_balance".into(),
            arguments: "{}".into(),
        })]
    );
}

#[tokio::test]
async fn done_without_finish_reason_is_enough() {
    let pieces = [
        text("Hi"),
        call_fragment(0, Some("c"), Some("f"), "{}"),
        DONE.to_owned(),
    ];
    let stub = stub(chunks(&pieces)).await;
    let (events, error) = collect(llm(&stub.base_url).stream(hello())).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(events.len(), 2);
    assert_eq!(events[0], LlmEvent::Token("Hi".into()));
    assert!(matches!(&events[1], LlmEvent::ToolCall(c) if c.name == "f"));
}

#[tokio::test]
async fn a_finished_reply_ends_even_if_the_body_never_does() {
    let (tx, rx) = mpsc::channel(4);
    let stub = stub(Script::Live(rx)).await;
    let (events, error) = {
        let stream = llm(&stub.base_url).stream(hello());
        tx.send(Ok(
            format!("{}{}", text("Bye."), finish("stop")).into_bytes()
        ))
        .await
        .unwrap();
        // The stub keeps the body open and sends no `[DONE]`.
        collect(stream).await
    };
    assert!(error.is_none(), "{error:?}");
    assert_eq!(tokens(&events), ["Bye."]);
    drop(tx);
}

#[tokio::test]
async fn http_errors_report_the_status_but_not_the_body() {
    for (status, hint) in [
        (StatusCode::UNAUTHORIZED, "API key"),
        (StatusCode::TOO_MANY_REQUESTS, "rate limited"),
        (StatusCode::INTERNAL_SERVER_ERROR, "provider-side"),
    ] {
        let stub = stub(Script::Status(
            status,
            r#"{"error":{"message":"Incorrect API key provided: sk-leaked-secret"}}"#,
        ))
        .await;
        let (events, error) = collect(llm(&stub.base_url).stream(hello())).await;
        assert!(events.is_empty());
        let shown = error.as_ref().map(ToString::to_string).unwrap_or_default();
        let message = failed_message(error);
        assert!(
            message.contains(&format!("HTTP {}", status.as_u16())),
            "{message}"
        );
        assert!(message.contains(hint), "{message}");
        assert!(
            !shown.contains("sk-leaked") && !shown.contains("Incorrect"),
            "{shown}"
        );
    }
}

#[tokio::test]
async fn an_error_object_in_the_stream_is_an_error() {
    let pieces = [
        text("Hel"),
        event(
            &json!({"error": {"message": "The server had an error sk-zzz",
                                "type": "server_error", "code": null}}),
        ),
        text("never"),
        DONE.to_owned(),
    ];
    let stub = stub(chunks(&pieces)).await;
    let (events, error) = collect(llm(&stub.base_url).stream(hello())).await;
    assert_eq!(tokens(&events), ["Hel"]);
    let message = failed_message(error);
    assert!(message.contains("server_error"), "{message}");
    assert!(!message.contains("sk-zzz"), "{message}");
}

#[tokio::test]
async fn a_body_that_ends_before_the_reply_is_an_error() {
    let pieces = [text("Half"), text(" an answer")];
    let server = stub(chunks(&pieces)).await;
    let (events, error) = collect(llm(&server.base_url).stream(hello())).await;
    assert_eq!(tokens(&events), ["Half", " an answer"]);
    assert!(failed_message(error).contains("ended early"));

    // Cut inside an event.
    let cut = text(" an answer");
    let pieces = [text("Half"), cut[..cut.len() / 2].to_owned()];
    let server = stub(chunks(&pieces)).await;
    let (events, error) = collect(llm(&server.base_url).stream(hello())).await;
    assert_eq!(tokens(&events), ["Half"]);
    assert!(failed_message(error).contains("ended early"));
}

#[tokio::test]
async fn a_connection_broken_mid_stream_is_an_error() {
    let (tx, rx) = mpsc::channel(4);
    let stub = stub(Script::Live(rx)).await;
    let mut stream = llm(&stub.base_url).stream(hello());
    tx.send(Ok(text("Half").into_bytes())).await.unwrap();
    tx.send(Ok(
        call_fragment(0, Some("c"), Some("f"), "{\"a\":").into_bytes()
    ))
    .await
    .unwrap();
    assert_eq!(
        next(&mut stream).await.unwrap().unwrap(),
        LlmEvent::Token("Half".into())
    );
    tx.send(Err(())).await.unwrap();
    // The half-assembled tool call is never yielded.
    let (events, error) = collect(stream).await;
    assert!(events.is_empty(), "{events:?}");
    let message = failed_message(error);
    assert!(message.contains("connection broke"), "{message}");
}

#[tokio::test]
async fn dropping_the_stream_closes_the_connection() {
    let (tx, rx) = mpsc::channel(4);
    let stub = stub(Script::Live(rx)).await;
    let mut stream = llm(&stub.base_url).stream(hello());
    tx.send(Ok(text("Once upon").into_bytes())).await.unwrap();
    assert_eq!(
        next(&mut stream).await.unwrap().unwrap(),
        LlmEvent::Token("Once upon".into())
    );
    // The stub now stalls; the caller gives up and drops the stream.
    drop(stream);
    // The stub's body (holding the receiver) is dropped only when the connection closes.
    tokio::time::timeout(HANG_GUARD, tx.closed())
        .await
        .expect("the server sees the connection close");
}

#[tokio::test]
async fn a_stalled_server_times_out_per_read() {
    let (tx, rx) = mpsc::channel(4);
    let stub = stub(Script::Live(rx)).await;
    let llm = OpenAiLlm::new(
        OpenAiLlmConfig {
            read_timeout_ms: 200,
            ..config(&stub.base_url)
        },
        Path::new("."),
    )
    .unwrap();
    tx.send(Ok(text("Hel").into_bytes())).await.unwrap();
    let (events, error) = collect(llm.stream(hello())).await;
    assert_eq!(tokens(&events), ["Hel"]);
    match error {
        Some(ProviderError::Timeout { provider, after_ms }) => {
            assert_eq!(provider, "openai");
            assert_eq!(after_ms, 200);
        }
        other => panic!("expected a Timeout, got {other:?}"),
    }
    drop(tx);
}

#[tokio::test]
async fn an_unreachable_server_is_a_transport_error() {
    // A port that was just free: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let (events, error) = collect(llm(&format!("http://{addr}/v1")).stream(hello())).await;
    assert!(events.is_empty());
    assert!(failed_message(error).contains("cannot connect"));
}

#[tokio::test]
async fn a_json_answer_to_a_stream_request_is_an_error() {
    let stub = stub(Script::Status(
        StatusCode::OK,
        r#"{"choices":[{"message":{"role":"assistant","content":"Hi"}}]}"#,
    ))
    .await;
    let (events, error) = collect(llm(&stub.base_url).stream(hello())).await;
    assert!(events.is_empty());
    assert!(failed_message(error).contains("event stream"));
}

#[tokio::test]
async fn the_request_has_the_chat_completions_shape() {
    let dir = key_dir("shape", "sk-test-key");
    let mut stub = stub(chunks(&[text("Ok."), finish("stop"), DONE.to_owned()])).await;
    let llm = OpenAiLlm::new(
        OpenAiLlmConfig {
            api_key_file: Some("openai.key".into()),
            temperature: Some(0.5),
            max_tokens: Some(200),
            ..config(&stub.base_url)
        },
        &dir,
    )
    .unwrap();
    let schema = json!({"type": "object",
                        "properties": {"account": {"type": "string"}},
                        "required": ["account"]});
    let request = LlmRequest {
        messages: vec![
            ChatMessage::System("You are a bank assistant.".into()),
            ChatMessage::User("What's my balance?".into()),
            ChatMessage::Assistant {
                text: String::new(),
                tool_calls: vec![ToolCall {
                    id: "call_1".into(),
                    name: "check_balance".into(),
                    arguments: "{\"account\":\"checking\"}".into(),
                }],
            },
            ChatMessage::Tool {
                call_id: "call_1".into(),
                content: "{\"balance\":\"12.00\"}".into(),
            },
            ChatMessage::Assistant {
                text: "You have twelve dollars.".into(),
                tool_calls: Vec::new(),
            },
            ChatMessage::User("Thanks".into()),
        ],
        tools: vec![ToolSpec {
            name: "check_balance".into(),
            description: "Reads an account's balance.".into(),
            parameters: schema.clone(),
        }],
    };
    let (events, error) = collect(llm.stream(request)).await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(tokens(&events), ["Ok."]);

    let seen = stub.request().await;
    assert_eq!(
        seen.headers.get("authorization").unwrap(),
        "Bearer sk-test-key"
    );
    assert_eq!(seen.headers.get("accept").unwrap(), "text/event-stream");
    assert_eq!(
        seen.headers.get("content-type").unwrap(),
        "application/json"
    );
    assert_eq!(
        seen.body,
        json!({
            "model": "test-model",
            "stream": true,
            "temperature": 0.5,
            "max_tokens": 200,
            "messages": [
                {"role": "system", "content": "You are a bank assistant."},
                {"role": "user", "content": "What's my balance?"},
                {"role": "assistant", "content": null, "tool_calls": [{
                    "id": "call_1", "type": "function",
                    "function": {"name": "check_balance", "arguments": "{\"account\":\"checking\"}"}
                }]},
                {"role": "tool", "tool_call_id": "call_1", "content": "{\"balance\":\"12.00\"}"},
                {"role": "assistant", "content": "You have twelve dollars."},
                {"role": "user", "content": "Thanks"}
            ],
            "tools": [{"type": "function", "function": {
                "name": "check_balance",
                "description": "Reads an account's balance.",
                "parameters": schema
            }}]
        })
    );
}

#[tokio::test]
async fn without_a_key_or_tools_neither_is_sent() {
    let mut stub = stub(chunks(&[finish("stop"), DONE.to_owned()])).await;
    let (events, error) = collect(llm(&stub.base_url).stream(hello())).await;
    assert!(error.is_none() && events.is_empty(), "{error:?} {events:?}");
    let seen = stub.request().await;
    assert!(seen.headers.get("authorization").is_none());
    assert!(seen.body.get("tools").is_none(), "{}", seen.body);
    assert!(seen.body.get("temperature").is_none());
    assert!(seen.body.get("max_tokens").is_none());
    assert_eq!(seen.body["messages"][0]["role"], "system");
}

#[tokio::test]
async fn one_provider_serves_reply_after_reply() {
    let mut stub = stubs(vec![
        chunks(&[text("One"), finish("stop"), DONE.to_owned()]),
        chunks(&[text("Two"), finish("stop"), DONE.to_owned()]),
    ])
    .await;
    let llm = llm(&stub.base_url);
    for expected in ["One", "Two"] {
        let (events, error) = collect(llm.stream(hello())).await;
        assert!(error.is_none(), "{error:?}");
        assert_eq!(tokens(&events), [expected]);
        assert_eq!(stub.request().await.body["model"], "test-model");
    }
}
