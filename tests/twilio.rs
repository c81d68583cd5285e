//! `/twilio` against a simulated Twilio that follows Twilio's documented Media Streams messages:
//! it sends `connected`, `start` and the caller's audio as 20 ms μ-law `media` at real time, plays
//! what voxd sends at real time, echoes each `mark` once the audio before it has played, and on
//! `clear` drops what it buffered and echoes the marks it dropped.

mod common;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use common::{fixture, TestServer, PATIENCE};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use voxd::Config;
use voxd_core::g711::Law;
use voxd_core::resample::StreamResampler;
use voxd_core::SampleRate;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// Mock providers whose ASR hears speech under 1.5 s as "mhm" (a backchannel: a false alarm)
/// and longer speech as the weather question; answers spoken at 30 characters a second.
const CONFIG: &str = r#"
[asr.mock]
latency_ms = 10
rules = [{ below_ms = 1500, text = "mhm" }, { text = "what's the weather like today" }]

[llm.mock]
first_token_ms = 20
token_interval_ms = 2

[tts.mock]
first_audio_ms = 10
chars_per_second = 30.0
"#;

async fn server(extra: &str) -> TestServer {
    let text = format!("{CONFIG}\n{extra}");
    let config = Config::from_toml(&text, Path::new(env!("CARGO_MANIFEST_DIR"))).expect("config");
    TestServer::start_config(config).await
}

/// What Twilio buffers to play: audio, and our marks between it.
#[derive(Debug)]
enum Queued {
    Audio(Vec<i16>),
    Mark(String),
}

#[derive(Default)]
struct Phone {
    queue: VecDeque<Queued>,
    /// Everything the caller heard, in order.
    heard: Vec<i16>,
    /// When each `clear` came, and how much had been heard then.
    clears: Vec<(Instant, usize)>,
    /// When the last sample was heard.
    last_heard: Option<Instant>,
    /// When each frame began to play, and where in `heard`.
    frames: Vec<(Instant, usize)>,
    marks_echoed: usize,
}

/// A simulated Twilio on one call.
struct Twilio {
    out: mpsc::UnboundedSender<Message>,
    phone: Arc<Mutex<Phone>>,
    sid: &'static str,
    resampler: StreamResampler,
}

impl Twilio {
    async fn connect(server: &TestServer, signature: Option<&str>) -> Result<Twilio, u16> {
        let url = format!("ws://{}/twilio", server.addr);
        let mut request = url.into_client_request().unwrap();
        if let Some(s) = signature {
            request
                .headers_mut()
                .insert("X-Twilio-Signature", s.parse().unwrap());
        }
        let ws = match tokio_tungstenite::connect_async(request).await {
            Ok((ws, _)) => ws,
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => return Err(r.status().as_u16()),
            Err(e) => panic!("connect: {e}"),
        };
        let (mut sink, mut stream) = ws.split();
        let (out, mut rx) = mpsc::unbounded_channel::<Message>();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                if sink.send(m).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        let phone = Arc::new(Mutex::new(Phone::default()));
        // What voxd sends: queued to play, or a `clear`.
        let p = Arc::clone(&phone);
        let echo = out.clone();
        tokio::spawn(async move {
            while let Some(Ok(m)) = stream.next().await {
                let Message::Text(t) = m else {
                    panic!("voxd sent Twilio a non-text frame: {m:?}");
                };
                let v: Value = serde_json::from_str(&t).expect("JSON");
                assert_eq!(v["streamSid"], "MZ0001", "{v}");
                let mut phone = p.lock().unwrap();
                match v["event"].as_str().unwrap() {
                    "media" => {
                        let bytes = B64.decode(v["media"]["payload"].as_str().unwrap()).unwrap();
                        let mut pcm = Vec::new();
                        Law::Ulaw.decode(&bytes, &mut pcm);
                        phone.queue.push_back(Queued::Audio(pcm));
                    }
                    "mark" => {
                        let name = v["mark"]["name"].as_str().unwrap().to_owned();
                        phone.queue.push_back(Queued::Mark(name));
                    }
                    "clear" => {
                        // Twilio drops its buffer and sends back the marks it held.
                        let heard = phone.heard.len();
                        phone.clears.push((Instant::now(), heard));
                        for q in std::mem::take(&mut phone.queue) {
                            if let Queued::Mark(name) = q {
                                let _ = echo.send(mark(&name));
                            }
                        }
                    }
                    other => panic!("an event Twilio does not take: {other}"),
                }
            }
        });
        // The phone: one 20 ms frame at a time, at real time.
        let p = Arc::clone(&phone);
        let echo = out.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            loop {
                tick.tick().await;
                let mut phone = p.lock().unwrap();
                if let Some(Queued::Audio(pcm)) = phone.queue.front() {
                    let pcm = pcm.clone();
                    phone.queue.pop_front();
                    let at = phone.heard.len();
                    phone.frames.push((Instant::now(), at));
                    phone.heard.extend_from_slice(&pcm);
                    phone.last_heard = Some(Instant::now());
                }
                while let Some(Queued::Mark(name)) = phone.queue.front() {
                    if echo.send(mark(name)).is_err() {
                        return;
                    }
                    phone.marks_echoed += 1;
                    phone.queue.pop_front();
                }
            }
        });
        let t = Twilio {
            out,
            phone,
            sid: "MZ0001",
            resampler: StreamResampler::new(SampleRate(16_000), SampleRate(8000)).unwrap(),
        };
        Ok(t)
    }

    fn send(&self, v: Value) {
        self.out.send(Message::Text(v.to_string().into())).unwrap();
    }

    fn start(&self, parameters: Value) {
        self.send(json!({"event": "connected", "protocol": "Call", "version": "1.0.0"}));
        self.send(json!({
            "event": "start", "sequenceNumber": "1", "streamSid": self.sid,
            "start": {
                "accountSid": "AC0001", "streamSid": self.sid, "callSid": "CA0001",
                "tracks": ["inbound"], "customParameters": parameters,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}
            }
        }));
    }

    /// The caller's audio (8 kHz) as 20 ms media frames, at real time.
    async fn media(&self, audio: &[i16]) {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        for frame in audio.chunks(160) {
            tick.tick().await;
            let mut ulaw = Vec::new();
            Law::Ulaw.encode(frame, &mut ulaw);
            self.send(json!({
                "event": "media", "sequenceNumber": "2", "streamSid": self.sid,
                "media": {"track": "inbound", "chunk": "1", "timestamp": "0", "payload": B64.encode(&ulaw)}
            }));
        }
    }

    async fn silence(&self, ms: usize) {
        self.media(&vec![0; ms * 8]).await;
    }

    /// A fixture spoken by the caller.
    async fn say(&mut self, name: &str) {
        let mut audio = Vec::new();
        self.resampler.process(&fixture(name), &mut audio);
        self.media(&audio).await;
    }

    /// The caller listens (sending silence, as a phone line does) until `cond` holds.
    async fn listen_until(&self, cond: impl Fn(&Phone) -> bool) {
        let deadline = Instant::now() + PATIENCE;
        while !cond(&self.phone.lock().unwrap()) {
            assert!(Instant::now() < deadline, "the call never got there");
            self.silence(100).await;
        }
    }

    /// Until the answer has played out: something was heard, and nothing for 1.5 s.
    async fn listen_to_the_end(&self) {
        self.listen_until(|p| {
            p.queue.is_empty()
                && p.last_heard
                    .is_some_and(|t| t.elapsed() > Duration::from_millis(1500))
        })
        .await;
    }

    fn heard(&self) -> Vec<i16> {
        self.phone.lock().unwrap().heard.clone()
    }
}

fn mark(name: &str) -> Message {
    let v = json!({"event": "mark", "sequenceNumber": "9", "streamSid": "MZ0001", "mark": {"name": name}});
    Message::Text(v.to_string().into())
}

/// A call: a greeting from the `<Stream>`'s parameters, a question answered, a barge-in with
/// real words (Twilio is told to `clear`, and nothing plays while the caller speaks), a keypad
/// digit, messages voxd cannot read, and `stop`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_is_greeted_answered_and_barged_in_on() {
    let server = server("").await;
    let mut call = Twilio::connect(&server, None).await.expect("upgrade");
    call.start(json!({"greeting": "Hello, this is voxd."}));
    call.listen_to_the_end().await;
    let greeting = call.heard().len();
    // "Hello, this is voxd." at 30 characters a second: about 0.7 s at 8 kHz.
    assert!(greeting > 4000, "{greeting} samples of greeting");

    call.say("weather.wav").await;
    call.listen_until(|p| p.heard.len() > greeting + 8000).await;
    // Real words into the answer: Twilio drops its buffer, and the answer stops.
    call.say("interrupt.wav").await;
    let (cleared_at, heard_then) = *call
        .phone
        .lock()
        .unwrap()
        .clears
        .first()
        .expect("a clear during the barge-in");
    // The caller's words are answered: after the clear, the next thing heard is the start of
    // the new answer (the same question, so the same answer), and not before the caller has
    // stopped: the fixture speaks for well over a second after its onset.
    call.listen_to_the_end().await;
    let heard = call.heard();
    let answered = heard.len();
    assert!(answered > heard_then + 8000);
    assert_eq!(
        heard[heard_then..heard_then + 1600],
        heard[greeting..greeting + 1600],
        "the old answer did not go on after the clear"
    );
    let next = call
        .phone
        .lock()
        .unwrap()
        .frames
        .iter()
        .find(|(_, at)| *at >= heard_then)
        .map(|(t, _)| *t)
        .expect("a new answer");
    assert!(
        next.duration_since(cleared_at) > Duration::from_secs(1),
        "audio played {:?} after the clear, while the caller spoke",
        next.duration_since(cleared_at)
    );

    // Messages voxd cannot read are skipped; the call goes on. A keypad digit is a turn.
    for bad in [
        "not json",
        r#"{"event":"dance"}"#,
        r#"{"event":"media","media":{"payload":"%%"}}"#,
    ] {
        call.out.send(Message::Text(bad.into())).unwrap();
    }
    call.send(json!({"event": "dtmf", "streamSid": call.sid, "sequenceNumber": "7", "dtmf": {"track": "inbound_track", "digit": "5"}}));
    call.listen_until(|p| p.heard.len() > answered + 4000).await;
    call.listen_to_the_end().await;
    assert!(call.phone.lock().unwrap().marks_echoed > 100);

    call.send(
        json!({"event": "stop", "sequenceNumber": "99", "streamSid": call.sid,
        "stop": {"accountSid": "AC0001", "callSid": "CA0001"}}),
    );
    drop(call);
    let (_, metrics) = server.get("/metrics").await;
    assert!(metrics.contains("voxd_interruptions_total 1"), "{metrics}");
    server.stop().await;
}

/// `<Parameter name="idle_timeout_ms">`: after the greeting, a caller who says nothing hears the
/// bot speak again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_caller_is_spoken_to_again_after_the_idle_timeout() {
    let server = server("").await;
    let call = Twilio::connect(&server, None).await.expect("upgrade");
    call.start(json!({"greeting": "Hello, this is voxd.", "idle_timeout_ms": "3000"}));
    call.listen_to_the_end().await;
    let greeting = call.heard().len();
    assert!(greeting > 4000, "{greeting} samples of greeting");
    // Only silence from the caller; the bot speaks again.
    call.listen_until(|p| p.heard.len() > greeting + 4000).await;
    call.listen_to_the_end().await;
    let (_, metrics) = server.get("/metrics").await;
    assert!(
        metrics.contains("voxd_turns_total{status=\"completed\"} 2"),
        "{metrics}"
    );
    server.stop().await;
}

/// A cough during the answer: Twilio drops its buffer, and after the false alarm the caller
/// hears the rest from where they were: no sample missed, none but the frame that was playing
/// heard twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cough_pauses_the_answer_and_the_caller_misses_nothing() {
    let server = server("").await;
    // The answer as heard without a cough.
    let mut call = Twilio::connect(&server, None).await.expect("upgrade");
    call.start(json!({}));
    call.silence(200).await;
    call.say("weather.wav").await;
    call.listen_to_the_end().await;
    let reference = call.heard();
    assert!(reference.len() > 24_000, "{} samples", reference.len());
    drop(call);

    let mut call = Twilio::connect(&server, None).await.expect("upgrade");
    call.start(json!({}));
    call.silence(200).await;
    call.say("weather.wav").await;
    call.listen_until(|p| p.heard.len() > 8000).await;
    call.say("mhm.wav").await;
    call.listen_to_the_end().await;
    let heard = call.heard();
    let clears = call.phone.lock().unwrap().clears.clone();
    assert_eq!(clears.len(), 1, "one pause: {clears:?}");
    let (_, cut) = clears[0];
    // Heard before the clear: the reference's start.
    assert_eq!(heard[..cut], reference[..cut]);
    // After it: the reference again from at most a little before the cut, to its end.
    let rest = &heard[cut..];
    let resumed_at = reference.len() - rest.len();
    assert_eq!(
        rest,
        &reference[resumed_at..],
        "the rest of the answer, once"
    );
    assert!(
        resumed_at <= cut,
        "{} samples were never heard",
        resumed_at.saturating_sub(cut)
    );
    // At most the frame that was playing, and one in flight, twice.
    assert!(
        cut - resumed_at <= 320,
        "{} samples heard twice",
        cut - resumed_at
    );
    let (_, metrics) = server.get("/metrics").await;
    assert!(metrics.contains("voxd_false_alarms_total 1"), "{metrics}");
    server.stop().await;
}

/// With the account's auth token configured, only upgrades Twilio signed are taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_auth_token_only_signed_upgrades_are_taken() {
    use hmac::Mac;
    // Only this test reads the variable.
    std::env::set_var("VOXD_TEST_TWILIO_TOKEN", "twilio-secret");
    let server = server("[twilio]\nauth_token_env = \"VOXD_TEST_TWILIO_TOKEN\"\n").await;
    let sign = |key: &[u8]| {
        let url = format!("wss://{}/twilio", server.addr);
        let mut mac = hmac::Hmac::<sha1::Sha1>::new_from_slice(key).unwrap();
        mac.update(url.as_bytes());
        B64.encode(mac.finalize().into_bytes())
    };
    assert_eq!(Twilio::connect(&server, None).await.err(), Some(403));
    assert_eq!(
        Twilio::connect(&server, Some(&sign(b"wrong"))).await.err(),
        Some(403)
    );
    let call = Twilio::connect(&server, Some(&sign(b"twilio-secret")))
        .await
        .expect("a signed upgrade");
    call.start(json!({"greeting": "Signed and welcome."}));
    call.listen_until(|p| !p.heard.is_empty()).await;
    drop(call);
    server.stop().await;
}
