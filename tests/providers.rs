//! Real providers over /ws: voxd configured for OpenAI-compatible ASR, LLM and TTS, pointed at a
//! local server that speaks those protocols (multipart transcription, streamed chat completions
//! with tool-call deltas, streamed PCM speech); a fallback from a dead provider to the mock; and the
//! local espeak-ng voice when it is installed.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use common::{wait_for, TestServer};
use serde_json::{json, Value};

/// What the stub server saw.
#[derive(Default)]
struct Seen {
    chat_requests: Vec<Value>,
    transcriptions: usize,
    speech_inputs: Vec<String>,
    /// The `voice` of each speech request.
    speech_voices: Vec<String>,
    /// The `language` field of each transcription upload, if it had one.
    transcription_languages: Vec<Option<String>>,
    /// Speech requests to answer with a 500 before answering normally.
    speech_failures: usize,
}

type Shared = Arc<Mutex<Seen>>;

/// One SSE event carrying a chat-completion chunk.
fn sse(delta: &Value, finish: Option<&str>) -> String {
    let chunk = json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "stub",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    });
    format!("data: {chunk}\n\n")
}

/// The events of a streamed reply, cut into pieces at awkward places (inside `data:` lines and
/// inside multi-byte characters).
fn awkward_chunks(events: &str) -> Vec<Result<Bytes, std::io::Error>> {
    events
        .as_bytes()
        .chunks(7)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect()
}

async fn chat(State(seen): State<Shared>, Json(request): Json<Value>) -> Response {
    let messages = request["messages"].as_array().cloned().unwrap_or_default();
    seen.lock().unwrap().chat_requests.push(request);
    let last = messages.last().cloned().unwrap_or(Value::Null);
    let mut events = String::from(": stub keep-alive comment\n\n");
    if last["role"] == "tool" {
        // The answer after the tool result, quoting it.
        let balance = serde_json::from_str::<Value>(last["content"].as_str().unwrap_or("{}"))
            .ok()
            .and_then(|v| v["balance"].as_str().map(str::to_owned))
            .unwrap_or_default();
        for piece in ["Your balance ", "is ", &balance, " — all good."] {
            events.push_str(&sse(&json!({"content": piece}), None));
        }
        events.push_str(&sse(&json!({}), Some("stop")));
    } else if last["content"]
        .as_str()
        .is_some_and(|t| t.contains("balance"))
    {
        // A tool call whose arguments arrive in fragments over several chunks.
        events.push_str(&sse(
            &json!({"role": "assistant", "tool_calls": [{"index": 0, "id": "call_stub_1", "type": "function",
                "function": {"name": "check_balance", "arguments": ""}}]}),
            None,
        ));
        for frag in ["{\"acc", "ount\": \"", "checking\"", "}"] {
            events.push_str(&sse(
                &json!({"tool_calls": [{"index": 0, "function": {"arguments": frag}}]}),
                None,
            ));
        }
        events.push_str(&sse(&json!({}), Some("tool_calls")));
    } else {
        for piece in ["Tomorrow ", "looks ", "sunny. ", "Enjoy ", "it!"] {
            events.push_str(&sse(&json!({"content": piece}), None));
        }
        events.push_str(&sse(&json!({}), Some("stop")));
    }
    events.push_str("data: [DONE]\n\n");
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .body(Body::from_stream(futures_util::stream::iter(
            awkward_chunks(&events),
        )))
        .unwrap()
}

async fn transcriptions(State(seen): State<Shared>, body: Bytes) -> Response {
    // The multipart body carries a WAV file; the provider's own tests check its fields.
    assert!(
        body.windows(4).any(|w| w == b"RIFF"),
        "no WAV in the upload"
    );
    // The multipart `language` field, if any: `name="language"`, a blank line, the value.
    let text = String::from_utf8_lossy(&body);
    let language = text
        .split_once("name=\"language\"\r\n\r\n")
        .map(|(_, rest)| rest.split("\r\n").next().unwrap_or_default().to_owned());
    let mut seen = seen.lock().unwrap();
    seen.transcriptions += 1;
    seen.transcription_languages.push(language);
    drop(seen);
    Json(json!({"text": "  can you check my account balance "})).into_response()
}

async fn speech(State(seen): State<Shared>, Json(request): Json<Value>) -> Response {
    let text = request["input"].as_str().unwrap_or_default().to_owned();
    assert_eq!(request["response_format"], "pcm");
    {
        let mut seen = seen.lock().unwrap();
        seen.speech_voices
            .push(request["voice"].as_str().unwrap_or_default().to_owned());
        if seen.speech_failures > 0 {
            seen.speech_failures -= 1;
            seen.speech_inputs.push(text);
            return (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                "{\"error\":{\"message\":\"overloaded\"}}",
            )
                .into_response();
        }
    }
    // 24 kHz PCM16: 20 ms of a tone per character, streamed in odd-sized pieces.
    let samples = text.chars().count() * 480;
    let pcm: Vec<u8> = (0..samples)
        .flat_map(|i| {
            let v = ((i as f32 * 0.11).sin() * 4000.0) as i16;
            v.to_le_bytes()
        })
        .collect();
    seen.lock().unwrap().speech_inputs.push(text);
    let pieces: Vec<Result<Bytes, std::io::Error>> = pcm
        .chunks(1001)
        .map(|c| Ok(Bytes::copy_from_slice(c)))
        .collect();
    Response::builder()
        .header(header::CONTENT_TYPE, "audio/pcm")
        .body(Body::from_stream(futures_util::stream::iter(pieces)))
        .unwrap()
}

/// A loopback address with nothing listening: connections to it are refused at once.
fn dead_address() -> SocketAddr {
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    dead.local_addr().unwrap()
}

/// An OpenAI-compatible server on 127.0.0.1.
async fn stub() -> (SocketAddr, Shared) {
    let seen = Shared::default();
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/audio/transcriptions", post(transcriptions))
        .route("/v1/audio/speech", post(speech))
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_turn_through_openai_compatible_asr_llm_and_tts_with_a_tool_call() {
    let (addr, seen) = stub().await;
    let base = format!("http://{addr}/v1");
    let server = TestServer::start_with(&format!(
        "[asr]\nprovider = \"openai\"\n[asr.openai]\nbase_url = \"{base}\"\n\
         [llm]\nprovider = \"openai\"\n[llm.openai]\nbase_url = \"{base}\"\nmodel = \"stub\"\n\
         [tts]\nprovider = \"openai\"\n[tts.openai]\nbase_url = \"{base}\"\n"
    ))
    .await;
    let mut c = server.connect().await;
    // Speech in: the utterance goes to /v1/audio/transcriptions as a WAV.
    c.send(json!({"type": "speech_start"})).await;
    c.send_audio(&vec![1200i16; 16_000], 16_000).await;
    c.send(json!({"type": "speech_end"})).await;
    let t = c.until("transcript").await;
    assert_eq!(t["text"], "can you check my account balance");
    let call = c.until("tool_call").await;
    assert_eq!(call["name"], "check_balance");
    assert_eq!(call["arguments"], json!({"account": "checking"}));
    let result = c.until("tool_result").await;
    let balance = result["result"]["balance"].as_str().unwrap().to_owned();
    let done = c.until("response_done").await;
    assert_eq!(done["status"], "completed", "{done}");
    let spoken = c.spoken(None);
    assert_eq!(spoken, format!("Your balance is {balance} — all good."));
    // The answer's audio came from /v1/audio/speech, resampled from 24 kHz to the session's rate.
    let audio_bytes = common::audio_bytes(&c.log);
    let chars = seen.lock().unwrap().speech_inputs.concat().chars().count();
    let expected = chars * 320 * 2; // 20 ms per character at 16 kHz
    assert!(
        audio_bytes.abs_diff(expected) < 2 * 320 * 2,
        "{audio_bytes} bytes of audio for {chars} characters"
    );
    // The second round sent the tool call and its result back, in OpenAI's shapes.
    let (transcriptions, chat_requests) = {
        let seen = seen.lock().unwrap();
        (seen.transcriptions, seen.chat_requests.clone())
    };
    let seen = Seen {
        transcriptions,
        chat_requests,
        ..Seen::default()
    };
    assert_eq!(seen.transcriptions, 1);
    assert_eq!(seen.chat_requests.len(), 2);
    let first = &seen.chat_requests[0];
    assert_eq!(first["stream"], true);
    assert_eq!(first["model"], "stub");
    assert!(first["tools"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["function"]["name"] == "check_balance"));
    let second = seen.chat_requests[1]["messages"].as_array().unwrap();
    let n = second.len();
    assert_eq!(second[n - 2]["tool_calls"][0]["id"], "call_stub_1");
    assert_eq!(second[n - 1]["role"], "tool");
    assert_eq!(second[n - 1]["tool_call_id"], "call_stub_1");
    server.stop().await;
}

/// A voice that fails on an answer's first sentence hands the whole answer to the fallback voice:
/// the later sentences are not sent back to it, so the answer keeps one voice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_voice_speaks_the_rest_of_the_answer() {
    let (addr, seen) = stub().await;
    seen.lock().unwrap().speech_failures = 1;
    let base = format!("http://{addr}/v1");
    let server = TestServer::start_with(&format!(
        "[llm]\nprovider = \"openai\"\n[llm.openai]\nbase_url = \"{base}\"\nmodel = \"stub\"\n\
         [tts]\nproviders = [\"openai\", \"mock\"]\n[tts.openai]\nbase_url = \"{base}\"\n"
    ))
    .await;
    let mut c = server.connect().await;
    c.send(json!({"type": "text", "text": "what about tomorrow"}))
        .await;
    let done = c.until("response_done").await;
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(c.spoken(None), "Tomorrow looks sunny.Enjoy it!");
    let asked = seen.lock().unwrap().speech_inputs.clone();
    assert_eq!(
        asked,
        ["Tomorrow looks sunny."],
        "only the first sentence went to the failing voice"
    );
    let metrics = server.get("/metrics").await.1;
    assert!(
        metrics
            .contains("voxd_provider_fallbacks_total{stage=\"tts\",from=\"openai\",to=\"mock\"} 1"),
        "{metrics}"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_primary_llm_falls_back_to_the_next_provider() {
    let dead_addr = dead_address();
    let server = TestServer::start_with(&format!(
        "[llm]\nproviders = [\"openai\", \"mock\"]\n[llm.openai]\nbase_url = \"http://{dead_addr}/v1\"\n"
    ))
    .await;
    let mut c = server.connect().await;
    c.send(json!({"type": "text", "text": "what about tomorrow"}))
        .await;
    let done = c.until("response_done").await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(
        c.events("error").is_empty(),
        "a recovered failure is not the client's business"
    );
    let metrics = server.get("/metrics").await.1;
    assert!(
        metrics
            .contains("voxd_provider_fallbacks_total{stage=\"llm\",from=\"openai\",to=\"mock\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("voxd_provider_errors_total{stage=\"llm\",provider=\"openai\"} 1"),
        "{metrics}"
    );
    let ready = server.get("/health/ready").await.1;
    let v: Value = serde_json::from_str(&ready).unwrap();
    assert_eq!(v["providers"]["llm"][0]["provider"], "openai");
    assert_eq!(v["providers"]["llm"][0]["consecutive_failures"], 1);
    assert_eq!(v["providers"]["llm"][1]["state"], "closed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_espeak_voice_speaks_a_reply() {
    if std::process::Command::new("espeak-ng")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("VOXD_REQUIRE_ESPEAK").as_deref() != Ok("1"),
            "espeak-ng is not installed, and VOXD_REQUIRE_ESPEAK=1 requires it"
        );
        eprintln!("SKIPPED: the_espeak_voice_speaks_a_reply: espeak-ng not installed (apt-get install espeak-ng)");
        return;
    }
    let server = TestServer::start_with("[tts]\nprovider = \"espeak\"\n").await;
    let mut c = server.connect().await;
    c.send(json!({"type": "text", "text": "what about tomorrow"}))
        .await;
    let done = c.until("response_done").await;
    assert_eq!(done["status"], "completed", "{done}");
    let pcm: Vec<i16> = c
        .log
        .iter()
        .filter_map(|i| match i {
            common::Item::Audio(a) => Some(a),
            common::Item::Event(_) => None,
        })
        .flat_map(|a| a.chunks_exact(2).map(|b| i16::from_le_bytes([b[0], b[1]])))
        .collect();
    // Real speech: a second or more, and far from silence.
    assert!(pcm.len() > 16_000, "{} samples", pcm.len());
    let rms = (pcm.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / pcm.len() as f64).sqrt();
    assert!(rms > 300.0, "rms {rms}");
    let active = || server.state.sessions.active() == 1;
    wait_for(active).await;
    server.stop().await;
}

/// What the streaming-ASR stub saw, across its connections.
#[derive(Default)]
struct Listen {
    connections: usize,
    /// Audio bytes received before `Finalize`, per connection.
    bytes_before_finalize: Vec<usize>,
    finalized: usize,
}

fn results(text: &str, is_final: bool, speech_final: bool, from_finalize: bool) -> String {
    json!({
        "type": "Results", "channel_index": [0, 1], "duration": 0.5, "start": 0.0,
        "is_final": is_final, "speech_final": speech_final, "from_finalize": from_finalize,
        "channel": {"alternatives": [{"transcript": text, "confidence": 0.93}]},
    })
    .to_string()
}

/// A live speech-to-text server in Deepgram's listen shape. It "recognises" by byte count: an
/// interim result after 0.3 s of audio, then (with `endpoint_after_ms`) a final result marked
/// `speech_final` once that much audio arrived; `Finalize` gets the rest as a `from_finalize`
/// result, `CloseStream` gets `Metadata` and a normal close.
async fn listen_stub(endpoint_after_ms: Option<usize>) -> (String, Arc<Mutex<Listen>>) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    const TEXT: &str = "what's the weather like today";
    let seen = Arc::new(Mutex::new(Listen::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/v1/listen", listener.local_addr().unwrap());
    let report = Arc::clone(&seen);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let seen = Arc::clone(&report);
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(tcp).await else {
                    return;
                };
                seen.lock().unwrap().connections += 1;
                let (mut bytes, mut interim_sent, mut final_sent) = (0usize, false, false);
                while let Some(Ok(m)) = ws.next().await {
                    let mut out = Vec::new();
                    match m {
                        Message::Binary(b) => {
                            bytes += b.len();
                            if !interim_sent && bytes >= 32 * 300 {
                                interim_sent = true;
                                out.push(results("what's the", false, false, false));
                            }
                            if !final_sent && endpoint_after_ms.is_some_and(|ms| bytes >= 32 * ms) {
                                final_sent = true;
                                out.push(results(TEXT, true, true, false));
                            }
                        }
                        Message::Text(t) if t.contains("\"Finalize\"") => {
                            {
                                let mut s = seen.lock().unwrap();
                                s.bytes_before_finalize.push(bytes);
                                s.finalized += 1;
                            }
                            let rest = if final_sent { "" } else { TEXT };
                            out.push(results(rest, true, true, true));
                        }
                        Message::Text(t) if t.contains("\"CloseStream\"") => {
                            let _ = ws
                                .send(Message::text(r#"{"type":"Metadata","request_id":"stub","duration":1.0,"channels":1}"#))
                                .await;
                            let _ = ws.close(None).await;
                            return;
                        }
                        Message::Close(_) => return,
                        _ => {}
                    }
                    for o in out {
                        if ws.send(Message::text(o)).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    (url, seen)
}

/// Reads until the final transcript, skipping interim ones.
async fn until_final(c: &mut common::Client) -> Value {
    loop {
        let t = c.until("transcript").await;
        if t["final"] == true {
            return t;
        }
    }
}

/// With a streaming ASR the audio goes to the provider while the user speaks: the provider has
/// the utterance before `speech_end`, interim transcripts reach the client as `final: false`, and
/// `Finalize` only flushes the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_asr_hears_the_user_while_they_speak() {
    let (url, seen) = listen_stub(None).await;
    let server = TestServer::start_with(&format!(
        "[asr]\nprovider = \"stream\"\n[asr.stream]\nurl = \"{url}\"\n"
    ))
    .await;
    let mut c = server.connect().await;
    c.send(json!({"type": "speech_start"})).await;
    c.send_audio(&common::fixture("weather.wav"), 16_000).await;
    // Before speech_end: the provider is hearing the utterance and says so.
    let interim = c.until("transcript").await;
    assert_eq!(interim["final"], false, "{interim}");
    assert_eq!(interim["text"], "what's the");
    c.send(json!({"type": "speech_end"})).await;
    let t = until_final(&mut c).await;
    assert_eq!(t["text"], "what's the weather like today");
    let done = c.until("response_done").await;
    assert_eq!(done["status"], "completed", "{done}");
    let (connections, finalized, bytes) = {
        let seen = seen.lock().unwrap();
        (
            seen.connections,
            seen.finalized,
            seen.bytes_before_finalize.clone(),
        )
    };
    assert_eq!((connections, finalized), (1, 1));
    let utterance = common::fixture("weather.wav").len() * 2;
    assert_eq!(bytes, [utterance], "every sample, each once");
    server.stop().await;
}

/// The provider's endpoint (`speech_final`) ends a server-VAD utterance without waiting for the
/// VAD's hangover: here the hangover is 5 s and the audio stops 1 s after the speech, so only the
/// endpoint can end the turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_providers_endpoint_ends_the_utterance_before_the_vad_hangover() {
    let speech_ms = common::fixture("weather.wav").len() / 16;
    let (url, seen) = listen_stub(Some(speech_ms + 300)).await;
    let server = TestServer::start_with(&format!(
        "[vad]\nhangover_ms = 5000\n[asr]\nprovider = \"stream\"\n[asr.stream]\nurl = \"{url}\"\n"
    ))
    .await;
    let mut c = server.connect().await;
    let mut audio = common::fixture("weather.wav");
    audio.extend(std::iter::repeat_n(0, 16 * 1000));
    c.send_audio(&audio, 16_000).await;
    c.until("speech_started").await;
    c.until("speech_stopped").await;
    let t = until_final(&mut c).await;
    assert_eq!(t["text"], "what's the weather like today");
    assert_eq!(c.until("response_done").await["status"], "completed");
    assert_eq!(seen.lock().unwrap().finalized, 1);
    server.stop().await;
}

/// A streaming ASR that cannot be reached: each utterance falls back to the next provider of
/// the chain (the mock here), whole, and the turn completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_streaming_asr_falls_back_to_the_whole_utterance_path() {
    let dead_addr = dead_address();
    let server = TestServer::start_with(&format!(
        "[asr]\nproviders = [\"stream\", \"mock\"]\n[asr.stream]\nurl = \"ws://{dead_addr}/v1/listen\"\n"
    ))
    .await;
    let mut c = server.connect().await;
    c.send(json!({"type": "speech_start"})).await;
    c.send_audio(&common::fixture("weather.wav"), 16_000).await;
    c.send(json!({"type": "speech_end"})).await;
    let t = c.until("transcript").await;
    assert_eq!(t["text"], "what's the weather like today");
    assert_eq!(c.until("response_done").await["status"], "completed");
    let metrics = server.get("/metrics").await.1;
    assert!(
        metrics
            .contains("voxd_provider_fallbacks_total{stage=\"asr\",from=\"stream\",to=\"mock\"}"),
        "{metrics}"
    );
    server.stop().await;
}

/// An HTTP tool: the team's API on loopback, called through a real session. The mock LLM's rules
/// name the tools, so the flow needs no real model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_tools_answer_and_their_failures_reach_the_model() {
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let router = Router::new()
        .route(
            "/orders",
            post(
                |State(seen): State<Arc<Mutex<Vec<Value>>>>, Json(body): Json<Value>| async move {
                    seen.lock().unwrap().push(body.clone());
                    Json(json!({"order": body["order"], "status": "shipped"}))
                },
            ),
        )
        .route(
            "/refunds",
            post(|| async {
                (
                    axum::http::StatusCode::SERVICE_UNAVAILABLE,
                    "refunds are down",
                )
                    .into_response()
            }),
        )
        .with_state(Arc::clone(&seen));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let server = TestServer::start_with(&format!(
        r#"
[[llm.mock.rules]]
keywords = ["order"]
tool = "order_status"
arguments = {{ order = "123" }}

[[llm.mock.rules]]
keywords = ["refund"]
tool = "refund"

[tools.order_status]
description = "Where an order is"
url = "http://{addr}/orders"
parameters = {{ type = "object", properties = {{ order = {{ type = "string" }} }} }}

[tools.refund]
description = "Refund an order"
url = "http://{addr}/refunds"
"#
    ))
    .await;
    let mut c = server.connect().await;
    c.send(json!({"type": "text", "text": "where is my order"}))
        .await;
    let call = c.until("tool_call").await;
    assert_eq!(call["name"], "order_status");
    let result = c.until("tool_result").await;
    assert_eq!(result["call_id"], call["call_id"]);
    assert_eq!(
        result["result"],
        json!({"order": "123", "status": "shipped"})
    );
    assert_eq!(seen.lock().unwrap().as_slice(), [json!({"order": "123"})]);
    let done = c.until("response_done").await;
    assert_eq!(done["status"], "completed");
    assert!(c.spoken(None).contains("shipped"), "{}", c.spoken(None));

    // A failing tool: its error is the result the model sees, and the turn completes.
    c.send(json!({"type": "text", "text": "I want a refund"}))
        .await;
    let result = c.until("tool_result").await;
    let error = result["result"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        error.contains("503") && error.contains("refunds are down"),
        "{result}"
    );
    let done = c.until("response_done").await;
    assert_eq!(done["status"], "completed");
    server.stop().await;
}

/// A session's `voice` and `language` reach the OpenAI-protocol TTS and ASR, from the next
/// response (and utterance) on; before, each provider's configured one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sessions_voice_and_language_reach_the_openai_tts_and_asr() {
    let (addr, seen) = stub().await;
    let base = format!("http://{addr}/v1");
    let server = TestServer::start_with(&format!(
        "[asr]\nprovider = \"openai\"\n[asr.openai]\nbase_url = \"{base}\"\n\
         [tts]\nprovider = \"openai\"\n[tts.openai]\nbase_url = \"{base}\"\nvoice = \"alloy\"\n"
    ))
    .await;
    let mut c = server.connect().await;
    c.say(1500).await;
    assert_eq!(c.until("response_done").await["status"], "completed");
    c.send(json!({"type": "session_update", "voice": "nova", "language": "fr"}))
        .await;
    let updated = c.until("session_updated").await;
    assert_eq!(
        (&updated["voice"], &updated["language"]),
        (&json!("nova"), &json!("fr"))
    );
    c.say(1500).await;
    assert_eq!(c.until("response_done").await["status"], "completed");
    let (languages, voices) = {
        let seen = seen.lock().unwrap();
        (
            seen.transcription_languages.clone(),
            seen.speech_voices.clone(),
        )
    };
    server.stop().await;
    assert_eq!(languages, [None, Some("fr".to_owned())]);
    let (before, after): (Vec<&String>, Vec<&String>) = voices.iter().partition(|v| *v == "alloy");
    assert!(!before.is_empty() && !after.is_empty(), "{:?}", voices);
    assert!(after.iter().all(|v| *v == "nova"), "{:?}", voices);
    assert!(voices.iter().position(|v| v == "nova") > voices.iter().rposition(|v| v == "alloy"));
}

/// What a front-end sets with `session_update` reaches the OpenAI-protocol LLM: its instructions
/// as the system message, then the seeded history, the greeting it heard, and the user's words,
/// with the session's tools.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sessions_instructions_and_history_reach_the_openai_llm() {
    let (addr, seen) = stub().await;
    let base = format!("http://{addr}/v1");
    let server = TestServer::start_with(&format!(
        "[llm]\nprovider = \"openai\"\n[llm.openai]\nbase_url = \"{base}\"\nmodel = \"stub\"\n"
    ))
    .await;
    let mut c = server.connect().await;
    c.send(json!({
        "type": "session_update",
        "instructions": "The caller is Bob; his order is #123.",
        "history": [{"role": "user", "content": "I called yesterday."}, {"role": "assistant", "content": "Welcome back."}],
        "greeting": "How can I help, Bob?",
        "tools": [{
            "name": "open_door",
            "description": "Opens a door of the caller's smart home.",
            "parameters": {"type": "object", "properties": {"door": {"type": "string"}}, "required": ["door"]}
        }]
    }))
    .await;
    c.until("session_updated").await;
    assert_eq!(c.until("response_done").await["status"], "completed");
    c.send(json!({"type": "text", "text": "what about tomorrow"}))
        .await;
    assert_eq!(c.until("response_done").await["status"], "completed");
    let request = seen.lock().unwrap().chat_requests[0].clone();
    let messages: Vec<(String, String)> = request["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            (
                m["role"].as_str().unwrap_or_default().to_owned(),
                m["content"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let expect = |r: &str, t: &str| (r.to_owned(), t.to_owned());
    assert_eq!(
        messages,
        [
            expect("system", "The caller is Bob; his order is #123."),
            expect("user", "I called yesterday."),
            expect("assistant", "Welcome back."),
            expect("assistant", "How can I help, Bob?"),
            expect("user", "what about tomorrow"),
        ]
    );
    // The server's tools and the client's, side by side.
    let tools = request["tools"].as_array().unwrap();
    assert!(tools
        .iter()
        .any(|t| t["function"]["name"] == "check_balance"));
    let door = tools
        .iter()
        .find(|t| t["function"]["name"] == "open_door")
        .expect("the client's tool is offered");
    assert_eq!(door["type"], "function");
    assert_eq!(
        door["function"]["description"],
        "Opens a door of the caller's smart home."
    );
    assert_eq!(door["function"]["parameters"]["required"], json!(["door"]));
    server.stop().await;
}
