//! The four scenarios of a classic voice-bot load test over a real socket, with client signals
//! over silence and with server VAD over the committed speech fixtures.

mod common;

use common::{audio_bytes, audio_concat, fixture, Item, TestServer};
use serde_json::{json, Value};

/// Items of `log` from the first event of type `ty` (inclusive).
fn from_event<'a>(log: &'a [Item], ty: &str) -> &'a [Item] {
    let i = log
        .iter()
        .position(|i| i.is(ty))
        .unwrap_or_else(|| panic!("no {ty}"));
    &log[i..]
}

/// Items of `log` strictly between the first `a` and the next `b` after it.
fn between<'a>(log: &'a [Item], a: &str, b: &str) -> &'a [Item] {
    let start = log
        .iter()
        .position(|i| i.is(a))
        .unwrap_or_else(|| panic!("no {a}"));
    let end = log[start..]
        .iter()
        .position(|i| i.is(b))
        .map_or(log.len(), |p| start + p);
    &log[start + 1..end]
}

fn assert_response_done(v: &Value, status: &str) {
    assert_eq!(v["status"], status, "{v}");
    for key in ["speech_end", "done"] {
        assert!(v["timings"][key].is_number(), "timings.{key} in {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_query_with_client_signals() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    assert_eq!(c.ready["protocol"], 1);
    assert_eq!(c.ready["input_sample_rate"], 16000);
    assert_eq!(c.ready["output_sample_rate"], 16000);
    c.say(2000).await;
    let t = c.until("transcript").await;
    assert_eq!(t["text"], "what's the weather like today");
    assert_eq!(t["final"], true);
    let start = c.until("audio_start").await;
    assert_eq!(start["sample_rate"], 16000);
    assert!(start["ttft_ms"].as_f64().unwrap() > 0.0);
    let done = c.until("response_done").await;
    assert_response_done(&done, "completed");
    for key in [
        "asr_done",
        "llm_first_token",
        "tts_first_audio",
        "first_audio_sent",
    ] {
        assert!(done["timings"][key].is_number(), "{key}");
    }
    // Every byte announced was sent, after audio_start, and the audio is not silence.
    let audio = audio_concat(from_event(&c.log, "audio_start"));
    assert_eq!(audio_bytes(&c.log), audio.len());
    let ms = done["audio_ms"].as_f64().unwrap();
    assert!(
        (audio.len() as f64 / 32.0 - ms).abs() < 0.1,
        "{} bytes vs {ms} ms",
        audio.len()
    );
    assert!(audio.iter().any(|b| *b != 0));
    assert!(!c.events("response_text").is_empty());
    c.close().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_call_with_client_signals() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.say(3000).await;
    assert_eq!(
        c.until("transcript").await["text"],
        "can you check my account balance"
    );
    let call = c.until("tool_call").await;
    assert_eq!(call["name"], "check_balance");
    assert!(call["arguments"].is_object());
    let result = c.until("tool_result").await;
    assert_eq!(result["call_id"], call["call_id"]);
    assert_eq!(result["result"]["balance"], "1,234.56");
    assert!(result["elapsed_ms"].as_f64().unwrap() >= 300.0);
    let done = c.until("response_done").await;
    assert_response_done(&done, "completed");
    let spoken = c.spoken(None);
    assert!(spoken.contains("1,234.56"), "{spoken}");
    server.stop().await;
}

/// Barge-in 0.3–0.8 s into the answer, 1.5 s of speech: interrupted, no stale audio, new answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_interruption_with_client_signals() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.send(json!({"type": "text", "text": "tell me a long story"}))
        .await;
    c.until_playing(16000).await; // half a second of the answer has arrived
    c.send(json!({"type": "speech_start"})).await;
    c.send_silence(1500).await;
    c.send(json!({"type": "speech_end"})).await;
    let interrupted = c.until("interrupted").await;
    assert_eq!(interrupted["turn_id"], 1);
    let played = interrupted["played_ms"].as_f64().unwrap();
    assert!(played > 0.0, "{interrupted}");
    let heard = interrupted["heard_text"].as_str().unwrap();
    assert!(heard.starts_with("Once upon a"), "{heard}");
    let done1 = c.until("response_done").await;
    assert_eq!(done1["turn_id"], 1);
    assert_response_done(&done1, "interrupted");
    let transcript = c.until("transcript").await;
    assert_eq!(transcript["text"], "what about tomorrow");
    let done2 = c.until("response_done").await;
    assert_response_done(&done2, "completed");
    assert_eq!(done2["turn_id"], transcript["turn_id"]);
    // No stale audio: nothing between playback_paused and the new turn's audio_start.
    let gap = between(&c.log, "playback_paused", "audio_start");
    assert_eq!(audio_bytes(gap), 0, "audio leaked after playback_paused");
    // played_ms is the playback clock: at most what was sent, at least what was sent minus the lead.
    let sent_ms = audio_bytes(&c.log[..c.log.iter().position(|i| i.is("playback_paused")).unwrap()])
        as f64
        / 32.0;
    assert!(
        played <= sent_ms + 0.1 && played >= sent_ms - 200.0 - 25.0,
        "played {played} sent {sent_ms}"
    );
    server.stop().await;
}

async fn weather_audio_alone(server: &TestServer) -> Vec<u8> {
    let mut c = server.connect().await;
    c.send(json!({"type": "text", "text": "what's the weather like today"}))
        .await;
    c.until("response_done").await;
    audio_concat(&c.log)
}

/// speech_start, 300 ms, speech_end while the bot speaks: it resumes, and the client receives
/// exactly the bytes it would have without the false alarm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn false_alarm_with_client_signals() {
    let server = TestServer::start().await;
    let reference = weather_audio_alone(&server).await;
    let mut c = server.connect().await;
    c.send(json!({"type": "text", "text": "what's the weather like today"}))
        .await;
    c.until_playing(16000).await;
    c.say(300).await;
    c.until("playback_paused").await;
    let t = c.until("transcript").await;
    assert_eq!(t["text"], "mhm");
    c.until("playback_resumed").await;
    let done = c.until("response_done").await;
    assert_response_done(&done, "completed");
    assert!(c.events("interrupted").is_empty());
    assert_eq!(
        audio_bytes(between(&c.log, "playback_paused", "playback_resumed")),
        0
    );
    assert_eq!(
        audio_concat(&c.log),
        reference,
        "byte-identical to the uninterrupted answer"
    );
    server.stop().await;
}

/// Each server-VAD scenario runs with both engines: `silero` (the default) and `webrtc`.
macro_rules! with_both_engines {
    ($($scenario:ident),* $(,)?) => {
        $(
            mod $scenario {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn silero() {
                    super::$scenario("[vad]\nengine = \"silero\"\n").await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn webrtc() {
                    super::$scenario("[vad]\nengine = \"webrtc\"\n").await;
                }
            }
        )*
    };
}

with_both_engines!(
    simple_query_with_server_vad,
    tool_call_with_server_vad,
    real_interruption_with_server_vad,
    false_alarm_with_server_vad,
);

/// Streams a fixture followed by enough silence for the VAD's hangover.
async fn speak(c: &mut common::Client, name: &str) {
    let mut audio = fixture(name);
    audio.extend(std::iter::repeat_n(0, 16 * 800));
    c.send_audio(&audio, 16000).await;
}

async fn simple_query_with_server_vad(engine: &str) {
    let server = TestServer::start_with(engine).await;
    let mut c = server.connect().await;
    assert_eq!(c.ready["server_vad"], true);
    speak(&mut c, "weather.wav").await;
    let started = c.until("speech_started").await;
    let stopped = c.until("speech_stopped").await;
    assert_eq!(started["turn_id"], stopped["turn_id"]);
    let d = stopped["duration_ms"].as_f64().unwrap();
    assert!((1500.0..2300.0).contains(&d), "speech lasted {d} ms");
    assert_eq!(
        c.until("transcript").await["text"],
        "what's the weather like today"
    );
    assert_response_done(&c.until("response_done").await, "completed");
    server.stop().await;
}

async fn tool_call_with_server_vad(engine: &str) {
    let server = TestServer::start_with(engine).await;
    let mut c = server.connect().await;
    speak(&mut c, "balance.wav").await;
    assert_eq!(
        c.until("transcript").await["text"],
        "can you check my account balance please"
    );
    assert_eq!(c.until("tool_call").await["name"], "check_balance");
    c.until("tool_result").await;
    assert_response_done(&c.until("response_done").await, "completed");
    server.stop().await;
}

async fn real_interruption_with_server_vad(engine: &str) {
    let server = TestServer::start_with(engine).await;
    let mut c = server.connect().await;
    speak(&mut c, "story.wav").await;
    c.until_playing(16000).await;
    speak(&mut c, "interrupt.wav").await;
    c.until("playback_paused").await;
    let interrupted = c.until("interrupted").await;
    assert_eq!(interrupted["turn_id"], 1);
    assert_response_done(&c.until("response_done").await, "interrupted");
    let t = c.until("transcript").await;
    assert_eq!(t["text"], "actually what about tomorrow instead");
    let done = c.until("response_done").await;
    assert_response_done(&done, "completed");
    assert_eq!(
        audio_bytes(between(&c.log, "playback_paused", "audio_start")),
        0
    );
    let spoken = c.spoken(t["turn_id"].as_u64());
    assert!(spoken.starts_with("Tomorrow"), "{spoken}");
    server.stop().await;
}

async fn false_alarm_with_server_vad(engine: &str) {
    let server = TestServer::start_with(engine).await;
    let reference = weather_audio_alone(&server).await;
    let mut c = server.connect().await;
    c.send(json!({"type": "text", "text": "what's the weather like today"}))
        .await;
    c.until_playing(16000).await;
    speak(&mut c, "mhm.wav").await;
    c.until("playback_paused").await;
    assert_eq!(c.until("transcript").await["text"], "mhm");
    c.until("playback_resumed").await;
    assert_response_done(&c.until("response_done").await, "completed");
    assert!(c.events("interrupted").is_empty());
    assert_eq!(
        audio_concat(&c.log),
        reference,
        "byte-identical to the uninterrupted answer"
    );
    server.stop().await;
}

/// A client at 48 kHz: voxd resamples its input and still hears the speech.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn input_at_48khz_is_resampled() {
    let server = TestServer::start().await;
    let mut c = common::Client::connect(&server.ws_url("?sample_rate=48000")).await;
    assert_eq!(c.ready["input_sample_rate"], 48000);
    let mut audio = fixture("balance.wav");
    audio.extend(std::iter::repeat_n(0, 16 * 800));
    let up = voxd_core::resample::resample_all(
        voxd_core::SampleRate(16000),
        voxd_core::SampleRate(48000),
        &audio,
    )
    .unwrap();
    c.send_audio(&up, 48000).await;
    let stopped = c.until("speech_stopped").await;
    let d = stopped["duration_ms"].as_f64().unwrap();
    // Voiced windows of 2.6 s of speech, the pauses between words excluded.
    assert!((2000.0..3000.0).contains(&d), "speech lasted {d} ms");
    // Not bit-exact any more, so the mock ASR maps it by duration: 2.5 s or more → the balance.
    assert_eq!(
        c.until("transcript").await["text"],
        "can you check my account balance"
    );
    assert_response_done(&c.until("response_done").await, "completed");
    server.stop().await;
}

/// `say` (a greeting, then a barge-in into it), `respond` (the bot speaks first through the LLM)
/// and `cancel` (push-to-talk), over a real socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn say_respond_and_cancel() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.send(json!({"type": "say", "text": "Hello! I can check your balance or the weather."}))
        .await;
    let first = c.until("response_text").await;
    assert_eq!(first["text"], "Hello!");
    c.until("audio_start").await;
    // A barge-in into the greeting with real words interrupts it.
    c.say(1500).await;
    let interrupted = c.until("interrupted").await;
    let heard = interrupted["heard_text"].as_str().unwrap().to_owned();
    assert!(
        "Hello! I can check your balance or the weather.".starts_with(&heard),
        "{heard:?}"
    );
    let done = c.until("response_done").await;
    assert_eq!(done["status"], "interrupted");
    // The user's words are answered.
    let done = c.until("response_done").await;
    assert_eq!(done["status"], "completed");

    // respond: a reply now, from the history; cancel stops it.
    c.send(json!({"type": "respond"})).await;
    c.until("audio_start").await;
    c.send(json!({"type": "cancel"})).await;
    c.until("interrupted").await;
    assert_eq!(c.until("response_done").await["status"], "interrupted");

    // A say without text is a client mistake: an error, and the session goes on.
    c.send(json!({"type": "say"})).await;
    let e = c.until("error").await;
    assert_eq!(e["code"], "invalid_field");
    assert_eq!(e["fatal"], false);
    c.send(json!({"type": "text", "text": "what about tomorrow"}))
        .await;
    assert_eq!(c.until("response_done").await["status"], "completed");
    server.stop().await;
}

/// `session_update` over a socket: the effective settings come back, the instructions and the
/// seeded history reach the LLM's request (the mock LLM's reply shows what it was asked), a
/// greeting is spoken, and a bad field is an error that names it and changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_update_shapes_the_session() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.send(json!({
        "type": "session_update",
        "instructions": "The caller is Bob.",
        "turn": {"min_interruption_ms": 300, "backchannels": ["Mhm", "right"]},
        "history": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello."}],
        "greeting": "Welcome back, Bob."
    }))
    .await;
    let updated = c.until("session_updated").await;
    assert_eq!(updated["instructions"], "The caller is Bob.");
    assert_eq!(updated["turn"]["min_interruption_ms"], 300);
    assert_eq!(updated["turn"]["backchannels"], json!(["mhm", "right"]));
    assert_eq!(updated["history_messages"], 2);
    assert_eq!(c.until("response_text").await["text"], "Welcome back, Bob.");
    assert_eq!(c.until("response_done").await["status"], "completed");

    // Strict: an unknown field, or a value out of range, is an error naming it.
    for (bad, field) in [
        (json!({"type": "session_update", "voice": ""}), "voice"),
        (
            json!({"type": "session_update", "mood": "cheerful"}),
            "mood",
        ),
        (
            json!({"type": "session_update", "tools": [{"name": "a b"}]}),
            "tools[0].name",
        ),
        (
            json!({"type": "session_update", "tools": [{"name": "x", "parameters": []}]}),
            "tools[0].parameters",
        ),
        (
            json!({"type": "session_update", "turn": {"min_interruption_ms": 0}}),
            "turn.min_interruption_ms",
        ),
        (
            json!({"type": "session_update", "history": [{"role": "tool", "content": "x"}]}),
            "history[0]",
        ),
        (
            json!({"type": "session_update", "instructions": 5}),
            "instructions",
        ),
    ] {
        c.send(bad).await;
        let e = c.until("error").await;
        assert_eq!(e["code"], "invalid_field", "{e}");
        assert!(e["message"].as_str().unwrap().contains(field), "{e}");
        assert_eq!(e["fatal"], false);
    }

    // During a response: applied, the response goes on.
    c.send(json!({"type": "text", "text": "tell me a story"}))
        .await;
    c.until("audio_start").await;
    c.send(json!({"type": "session_update", "instructions": "Be brief."}))
        .await;
    assert_eq!(
        c.until("session_updated").await["instructions"],
        "Be brief."
    );
    assert_eq!(c.until("response_done").await["status"], "completed");
    server.stop().await;
}

/// voxd with a mock LLM that calls `open_door` (when offered) on "door", and `check_balance` on
/// "balance"; client-side tools get `tool_ms` to answer.
async fn door_server() -> TestServer {
    TestServer::start_with(
        r#"
[[llm.mock.rules]]
keywords = ["door"]
tool = "open_door"
arguments = { door = "front" }

[[llm.mock.rules]]
keywords = ["balance"]
tool = "check_balance"

[timeouts]
tool_ms = 1500
"#,
    )
    .await
}

/// A client-side tool over a real socket: offered, called on the client (`runs: client`),
/// answered with `tool_result`, and phrased by the model; a second answer, an unknown id, a
/// call the client leaves unanswered (the tool timeout, then a late result), a server tool's
/// call, and a tool named like a server tool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_side_tools_round_trip_time_out_and_refuse_stray_results() {
    let server = door_server().await;
    let mut c = server.connect().await;
    c.send(json!({
        "type": "session_update",
        "tools": [{
            "name": "open_door",
            "description": "Opens a door of the caller's house.",
            "parameters": {"type": "object", "properties": {"door": {"type": "string"}}}
        }]
    }))
    .await;
    assert_eq!(
        c.until("session_updated").await["tools"],
        json!(["open_door"])
    );

    c.send(json!({"type": "text", "text": "please open the door"}))
        .await;
    let call = c.until("tool_call").await;
    assert_eq!(call["name"], "open_door");
    assert_eq!(call["runs"], "client");
    assert_eq!(call["arguments"], json!({"door": "front"}));
    let id = call["call_id"].as_str().unwrap().to_owned();
    c.send(json!({"type": "tool_result", "call_id": id, "result": {"opened": true}}))
        .await;
    let result = c.until("tool_result").await;
    assert_eq!(result["call_id"], id.as_str());
    assert_eq!(result["result"], json!({"opened": true}));
    let text = c.until("response_text").await;
    assert!(
        text["text"].as_str().unwrap().contains("opened"),
        "the model phrases the client's result: {text}"
    );
    assert_eq!(c.until("response_done").await["status"], "completed");

    // A second answer, and an id no call had: errors, and nothing else happens.
    c.send(json!({"type": "tool_result", "call_id": id, "result": "again"}))
        .await;
    assert_eq!(c.until("error").await["code"], "duplicate_tool_result");
    c.send(json!({"type": "tool_result", "call_id": "call_999", "result": "?"}))
        .await;
    let e = c.until("error").await;
    assert_eq!(e["code"], "unknown_call_id");
    assert_eq!(e["fatal"], false);
    c.send(json!({"type": "tool_result", "result": "?"})).await;
    let e = c.until("error").await;
    assert_eq!(e["code"], "invalid_field");
    assert!(e["message"].as_str().unwrap().contains("call_id"), "{e}");

    // Unanswered: the tool timeout fails the call, the model is told, the response goes on.
    c.send(json!({"type": "text", "text": "open the door again"}))
        .await;
    let id = c.until("tool_call").await["call_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let e = c.until("error").await;
    assert_eq!(e["code"], "tool_timeout", "{e}");
    assert_eq!(e["provider"], "client");
    assert!(c.until("tool_result").await["result"]["error"].is_string());
    assert_eq!(c.until("response_done").await["status"], "completed");
    c.send(json!({"type": "tool_result", "call_id": id, "result": "late"}))
        .await;
    assert_eq!(c.until("error").await["code"], "late_tool_result");

    // The server's own tool says so, and is not the client's to answer.
    c.send(json!({"type": "text", "text": "check my balance"}))
        .await;
    let call = c.until("tool_call").await;
    assert_eq!(
        (&call["name"], &call["runs"]),
        (&json!("check_balance"), &json!("server"))
    );
    assert_eq!(c.until("response_done").await["status"], "completed");
    c.send(json!({"type": "tool_result", "call_id": call["call_id"], "result": "mine"}))
        .await;
    assert_eq!(c.until("error").await["code"], "not_a_client_call");

    // A client tool may not take a server tool's name; nothing of that update applies.
    c.send(json!({
        "type": "session_update",
        "instructions": "Never mind.",
        "tools": [{"name": "check_balance"}]
    }))
    .await;
    let e = c.until("error").await;
    assert_eq!(e["code"], "invalid_field");
    assert!(
        e["message"].as_str().unwrap().contains("tools[0].name"),
        "{e}"
    );
    c.send(json!({"type": "session_update", "greeting": "Still here."}))
        .await;
    let updated = c.until("session_updated").await;
    assert_eq!(updated["tools"], json!(["open_door"]));
    assert_ne!(updated["instructions"], "Never mind.");
    server.stop().await;
}

/// `turn`'s answer policy and idle timeout over `/ws`: a turn that is not answered is transcribed
/// and waits for `respond`; speech that does not interrupt lets the answer play on and is
/// answered after it; silence after an answer makes the bot speak again (`idle_timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_answer_policy_and_the_idle_timeout_are_the_clients_to_set() {
    let server = TestServer::start().await;
    let mut c = server.connect().await;
    c.send(json!({"type": "session_update", "turn": {"answer_turns": false}}))
        .await;
    let turn = c.until("session_updated").await["turn"].clone();
    assert_eq!(
        (
            &turn["answer_turns"],
            &turn["interrupt_on_speech"],
            &turn["idle_timeout_ms"]
        ),
        (&json!(false), &json!(true), &Value::Null)
    );
    c.say(2000).await;
    let t = c.until("transcript").await;
    assert_eq!(t["text"], "what's the weather like today");
    // Unanswered until asked: `respond` answers the words.
    c.send(json!({"type": "respond"})).await;
    let first = c.until("response_text").await;
    assert!(first["text"].as_str().unwrap().contains("sunny"), "{first}");
    assert_eq!(c.until("response_done").await["status"], "completed");
    let before: Vec<_> = c.log.iter().filter(|i| i.is("response_done")).collect();
    assert_eq!(before.len(), 1, "nothing answered the turn itself");

    // Speech over an answer that it does not interrupt.
    c.send(json!({"type": "session_update",
        "turn": {"answer_turns": true, "interrupt_on_speech": false}}))
        .await;
    c.until("session_updated").await;
    c.send(json!({"type": "text", "text": "tell me a story"}))
        .await;
    let story = c.until("audio_start").await["turn_id"].clone();
    c.say(1000).await;
    let done = c.until("response_done").await;
    assert_eq!(
        (&done["turn_id"], &done["status"]),
        (&story, &json!("completed"))
    );
    assert!(!c.log.iter().any(|i| i.is("playback_paused")));
    let next = c.until("response_text").await;
    assert!(next["text"].as_str().unwrap().contains("omorrow"), "{next}");
    assert_eq!(c.until("response_done").await["status"], "completed");

    // An idle timeout: the bot speaks again after the answer, unasked.
    c.send(json!({"type": "session_update",
        "turn": {"interrupt_on_speech": true, "idle_timeout_ms": 1000}}))
        .await;
    c.until("session_updated").await;
    let idle = c.until("idle_timeout").await;
    let spoke = c.until("response_done").await;
    assert_eq!(spoke["turn_id"], idle["turn_id"]);
    assert_eq!(spoke["status"], "completed");
    c.send(json!({"type": "session_update", "turn": {"idle_timeout_ms": null}}))
        .await;
    assert_eq!(
        c.until("session_updated").await["turn"]["idle_timeout_ms"],
        Value::Null
    );
    // Out of range: an error naming the field.
    c.send(json!({"type": "session_update", "turn": {"idle_timeout_ms": 10}}))
        .await;
    let e = c.until("error").await;
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("turn.idle_timeout_ms"),
        "{e}"
    );
    server.stop().await;
}
