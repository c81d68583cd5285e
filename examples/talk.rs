//! `talk`: a command-line client for voxd's `/ws` protocol. It speaks a WAV file (or a line of
//! text) to a running server, prints every event with its time, and saves the spoken answer.
//!
//! Start a server in one terminal and talk to it from another:
//!
//! ```text
//! cargo run --release -- serve
//! cargo run --example talk -- fixtures/weather.wav
//! cargo run --example talk -- fixtures/balance.wav --out balance-answer.wav   # a tool call
//! cargo run --example talk -- --client-vad fixtures/weather.wav               # speech_start/_end
//! cargo run --example talk -- --fast fixtures/story.wav                       # no pacing
//! cargo run --example talk -- --text "tell me a long story" --timeout-s 120   # 66 s of audio
//! cargo run --example talk -- --server ws://10.0.0.5:8000/ws my-recording.wav
//! ```
//!
//! What it does:
//!
//! * Reads the WAV (16-bit PCM or 32-bit float; 8/24/32-bit PCM work too; any channel count,
//!   downmixed to mono). 8, 16, 24 and 48 kHz are sent as they are, with `?sample_rate=` set to
//!   match; any other rate is resampled to 16 kHz here first.
//! * Streams it in 20 ms binary frames, one per tick of a 20 ms interval as a microphone would
//!   (`--fast` sends them as fast as the socket takes them), then 1 s of silence so the server's
//!   VAD hears the end. With `--client-vad` it sends `speech_start` before the audio and
//!   `speech_end` right after it, which switches the server's VAD off for the session. With
//!   `--text` it sends one `text` turn and no audio.
//! * Prints each server event on one line, `<ms since it began connecting>  <type>  <fields>`,
//!   the fields compact and in the server's order; what it sent is shown as `-> ...`. Audio
//!   frames are not printed one by one: each run of them becomes one line with a running total
//!   (updated in place on a terminal).
//! * Stops at the first `response_done` (`completed`, `failed` or `interrupted`) of the turn its
//!   input started (the first turn the server announces), or after `--timeout-s` seconds; then
//!   closes the socket with a close handshake, writes the received audio to `--out` as a 16-bit
//!   mono WAV at the `output_sample_rate` announced in `ready`, and prints a one-line summary.
//!   On a timeout, a lost connection or Ctrl-C the audio received so far is still written.
//!
//! Two TTFTs are shown. The server's `ttft_ms` runs from the moment *it* decided the user had
//! finished (its VAD's decision, after the VAD hangover; a `speech_end`; a `text`) to its first
//! audio frame. The client's runs from the moment this program sent the end of the user's
//! speech to the first audio frame received: with `--client-vad`, the `speech_end`; with `--text`,
//! the `text`; with server VAD, the frame holding the input's last sample louder than -55 dBFS
//! (the server's default energy gate), so it includes the VAD hangover the server's figure
//! leaves out: it is what a user waits. Recordings usually end in silence, so "the last frame of
//! the file" would start the clock after the server had already heard the end.
//!
//! Exit status: 0 when the turn completed or was interrupted, 1 on any error or a `failed`
//! turn, 130 on Ctrl-C.

use std::borrow::Cow;
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use clap::Parser;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::time::{Instant, Interval};
use tokio_tungstenite::tungstenite::http::{StatusCode, Uri};
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use voxd_core::SampleRate;

/// Input rates the server accepts as they are (`?sample_rate=`).
const SERVER_RATES: [u32; 4] = [8_000, 16_000, 24_000, 48_000];
/// One frame of audio, as a microphone delivers it.
const FRAME: Duration = Duration::from_millis(20);
const FRAMES_PER_SECOND: u32 = 50;
/// Silence appended after the input, so the server's VAD hears the speech end.
const TRAILING_SILENCE_MS: u32 = 1_000;
/// -55 dBFS in PCM16: quieter samples do not count as speech (the server's default gate).
const SPEECH_LEVEL: u16 = 58;
/// How long to wait for the server's half of the close handshake.
const CLOSE_PATIENCE: Duration = Duration::from_secs(2);

/// Speak a WAV file or a line of text to a voxd server and save the spoken answer.
#[derive(Parser)]
#[command(name = "talk", about, long_about = None)]
struct Args {
    /// The server's WebSocket endpoint (`ws://` is assumed when no scheme is given).
    #[arg(long, default_value = "ws://127.0.0.1:8000/ws")]
    server: String,
    /// Where to write the answer's audio (16-bit mono WAV at the server's output rate).
    #[arg(long, default_value = "answer.wav")]
    out: PathBuf,
    /// Mark the speech with speech_start/speech_end ourselves (turns the server's VAD off).
    #[arg(long, conflicts_with = "text")]
    client_vad: bool,
    /// Send audio at real time, one 20 ms frame per 20 ms (the default).
    #[arg(long, overrides_with = "fast")]
    realtime: bool,
    /// Send audio as fast as the socket takes it. The server accepts a burst of about 5 s of
    /// audio ahead of real time, then 4x real time (`[limits]`); beyond that frames are dropped.
    #[arg(long, overrides_with = "realtime")]
    fast: bool,
    /// Send this text as the user's turn instead of audio.
    #[arg(long, conflicts_with = "input")]
    text: Option<String>,
    /// Give up when the turn's response_done has not arrived this many seconds after connecting.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(u64).range(1..))]
    timeout_s: u64,
    /// The WAV file to speak: 8/16/24/48 kHz or any other rate, mono or stereo.
    #[arg(required_unless_present = "text")]
    input: Option<PathBuf>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The input audio: mono PCM16 at a rate the server accepts.
struct Input {
    samples: Vec<i16>,
    rate: u32,
    /// How the file was, for the header line.
    described: String,
}

/// Reads `path` and brings it to mono PCM16 at a rate the server accepts.
fn read_wav(path: &Path) -> anyhow::Result<Input> {
    let shown = path.display();
    let reader = hound::WavReader::open(path).map_err(|e| match e {
        hound::Error::IoError(io) if io.kind() == std::io::ErrorKind::NotFound => {
            anyhow!("{shown}: no such file")
        }
        hound::Error::IoError(io) => anyhow!("cannot read {shown}: {io}"),
        hound::Error::FormatError(why) => anyhow!("{shown} is not a WAV file ({why})"),
        hound::Error::Unsupported => {
            anyhow!("{shown}: unsupported WAV encoding (use 16-bit PCM or 32-bit float samples)")
        }
        other => anyhow!("{shown}: {other}"),
    })?;
    let spec = reader.spec();
    let channels = usize::from(spec.channels);
    if channels == 0 {
        bail!("{shown}: the WAV header says 0 channels");
    }
    let corrupt = |e: hound::Error| anyhow!("{shown}: truncated or corrupt audio data ({e})");
    let mono =
        match (spec.sample_format, spec.bits_per_sample) {
            (hound::SampleFormat::Int, bits @ 8..=32) => {
                let scale = 1.0 / f64::from(1u32 << (bits - 1));
                let samples = reader
                    .into_samples::<i32>()
                    .map(|s| s.map(|s| f64::from(s) * scale));
                downmix(samples, channels).map_err(corrupt)?
            }
            (hound::SampleFormat::Float, 32) => {
                let samples = reader.into_samples::<f32>().map(|s| s.map(f64::from));
                downmix(samples, channels).map_err(corrupt)?
            }
            (format, bits) => {
                bail!(
            "{shown}: {bits}-bit {} samples are not supported (use 16-bit PCM or 32-bit float)",
            if format == hound::SampleFormat::Float { "float" } else { "integer" }
        )
            }
        };
    if mono.is_empty() {
        bail!("{shown} holds no audio");
    }
    let layout = match channels {
        1 => "mono".to_owned(),
        2 => "stereo".to_owned(),
        n => format!("{n} channels"),
    };
    let kind = match spec.sample_format {
        hound::SampleFormat::Int => "PCM",
        hound::SampleFormat::Float => "float",
    };
    let mut described = format!(
        "{shown} ({:.2} s, {} Hz {layout} {}-bit {kind})",
        mono.len() as f64 / f64::from(spec.sample_rate),
        spec.sample_rate,
        spec.bits_per_sample,
    );
    if SERVER_RATES.contains(&spec.sample_rate) {
        return Ok(Input {
            samples: mono,
            rate: spec.sample_rate,
            described,
        });
    }
    let to = SampleRate::INTERNAL;
    let samples = voxd_core::resample::resample_all(SampleRate(spec.sample_rate), to, &mono)
        .map_err(|e| {
            anyhow!(
                "{shown}: cannot resample {} Hz to {} Hz: {e}",
                spec.sample_rate,
                to.hz()
            )
        })?;
    let _ = write!(described, ", resampled to {} Hz", to.hz());
    Ok(Input {
        samples,
        rate: to.hz(),
        described,
    })
}

/// Averages interleaved frames of `channels` samples in [-1, 1] into mono PCM16.
fn downmix(
    samples: impl Iterator<Item = Result<f64, hound::Error>>,
    channels: usize,
) -> Result<Vec<i16>, hound::Error> {
    let mut mono = Vec::with_capacity(samples.size_hint().0 / channels);
    let (mut sum, mut n) = (0.0, 0);
    for s in samples {
        sum += s?;
        n += 1;
        if n == channels {
            let v = (sum / channels as f64 * 32768.0).round();
            // Saturate: float input may exceed [-1, 1].
            mono.push(v.clamp(f64::from(i16::MIN), f64::from(i16::MAX)) as i16);
            (sum, n) = (0.0, 0);
        }
    }
    Ok(mono)
}

/// The server URL with `?sample_rate=` set, and the host:port to name in errors.
fn endpoint(server: &str, rate: Option<u32>) -> anyhow::Result<(String, String)> {
    let with_scheme = if server.contains("://") {
        server.to_owned()
    } else {
        format!("ws://{server}")
    };
    let uri: Uri = with_scheme
        .parse()
        .map_err(|e| anyhow!("--server {server:?} is not a URL ({e})"))?;
    let scheme = uri.scheme_str().unwrap_or("ws");
    if scheme != "ws" && scheme != "wss" {
        bail!("--server must be a ws:// URL, got {server:?}");
    }
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow!("--server {server:?} has no host"))?
        .to_string();
    let path = match uri.path() {
        "" | "/" => "/ws",
        p => p,
    };
    let mut query: Vec<&str> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty() && !p.starts_with("sample_rate="))
        .collect();
    let rate_param = rate.map(|r| format!("sample_rate={r}"));
    if let Some(p) = &rate_param {
        query.push(p);
    }
    let mut url = format!("{scheme}://{authority}{path}");
    if !query.is_empty() {
        url.push('?');
        url.push_str(&query.join("&"));
    }
    Ok((url, authority))
}

/// Turns a failed WebSocket handshake into a message that says what to do.
fn connect_error(e: tungstenite::Error, url: &str, authority: &str) -> anyhow::Error {
    match e {
        tungstenite::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => {
            anyhow!(
            "cannot connect to {url}: connection refused; is `voxd serve` running on {authority}?"
        )
        }
        tungstenite::Error::Io(io) => anyhow!("cannot connect to {url}: {io}"),
        tungstenite::Error::Url(why) => anyhow!("cannot connect to {url}: {why}"),
        tungstenite::Error::Http(resp) => {
            let status = resp.status();
            let body = resp
                .body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            // voxd answers refusals with {"error": {"code", "message"}}.
            let parsed: Option<Value> = serde_json::from_str(&body).ok();
            let code = parsed.as_ref().and_then(|v| v["error"]["code"].as_str());
            let message = parsed
                .as_ref()
                .and_then(|v| v["error"]["message"].as_str())
                .map_or_else(|| body.trim().to_owned(), str::to_owned);
            let retry = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .map(|s| format!(", retry after {s} s"))
                .unwrap_or_default();
            match (status, code) {
                (StatusCode::SERVICE_UNAVAILABLE, Some("shutting_down")) => {
                    anyhow!("server at {authority} is shutting down (HTTP 503): {message}")
                }
                (StatusCode::SERVICE_UNAVAILABLE, _) => {
                    anyhow!("server at capacity (HTTP 503{retry}): {message}")
                }
                (StatusCode::NOT_FOUND, _) => {
                    anyhow!("no WebSocket endpoint at {url} (HTTP 404); voxd serves it at /ws")
                }
                _ => anyhow!(
                    "the server refused the WebSocket upgrade at {url}: HTTP {status}: {message}"
                ),
            }
        }
        other => anyhow!("cannot connect to {url}: {other}"),
    }
}

/// What to send, in order. Frames are paced; a control message is not: it goes out right after
/// the frame before it.
struct Outgoing {
    /// The whole input plus trailing silence as PCM16LE; frames are slices of it (no copies).
    audio: Bytes,
    steps: VecDeque<Step>,
}

enum Step {
    Control {
        label: String,
        json: String,
        ends_speech: bool,
    },
    Frame {
        bytes: Range<usize>,
        note: Option<String>,
        ends_speech: bool,
    },
}

impl Outgoing {
    fn text(text: &str) -> Outgoing {
        let json = json!({"type": "text", "text": text}).to_string();
        Outgoing {
            audio: Bytes::new(),
            steps: VecDeque::from([Step::Control {
                label: format!("text {}", Value::from(text)),
                json,
                ends_speech: true,
            }]),
        }
    }

    fn audio(input: &Input, client_vad: bool) -> Outgoing {
        let frame = (input.rate / FRAMES_PER_SECOND) as usize;
        let silence = (input.rate / 1000 * TRAILING_SILENCE_MS) as usize;
        let speech = input.samples.len();
        let mut pcm = Vec::with_capacity((speech + silence) * 2);
        for s in input.samples.iter().chain(std::iter::repeat_n(&0, silence)) {
            pcm.extend_from_slice(&s.to_le_bytes());
        }
        let audio = Bytes::from(pcm);
        let voiced_end = input
            .samples
            .iter()
            .rposition(|s| s.unsigned_abs() > SPEECH_LEVEL)
            .unwrap_or(speech - 1);
        let control = |ty: &str, ends_speech| Step::Control {
            label: ty.to_owned(),
            json: json!({ "type": ty }).to_string(),
            ends_speech,
        };
        let mut steps = VecDeque::with_capacity((speech + silence) / frame + 3);
        if client_vad {
            steps.push_back(control("speech_start", false));
        }
        let secs = |n: usize| n as f64 / f64::from(input.rate);
        let mut start = 0;
        while start < speech {
            let end = (start + frame).min(speech);
            let holds_voiced_end = (start..end).contains(&voiced_end);
            let note = if end == speech {
                Some(format!("input audio sent ({:.2} s)", secs(speech)))
            } else if holds_voiced_end && !client_vad {
                Some(format!("end of speech ({:.2} s into the input)", secs(end)))
            } else {
                None
            };
            steps.push_back(Step::Frame {
                bytes: start * 2..end * 2,
                note,
                ends_speech: holds_voiced_end && !client_vad,
            });
            start = end;
        }
        if client_vad {
            steps.push_back(control("speech_end", true));
        }
        let total = speech + silence;
        while start < total {
            let end = (start + frame).min(total);
            steps.push_back(Step::Frame {
                bytes: start * 2..end * 2,
                note: (end == total)
                    .then(|| format!("{:.2} s of trailing silence sent", secs(silence))),
                ends_speech: false,
            });
            start = end;
        }
        Outgoing { audio, steps }
    }

    /// Sends the next frame and the control messages around it (all of them if there is no frame).
    async fn send_next(
        &mut self,
        sink: &mut SplitSink<Ws, Message>,
        talk: &mut Talk,
    ) -> Result<(), tungstenite::Error> {
        let mut sent_frame = false;
        while let Some(step) = self.steps.front() {
            let ends_speech = match step {
                Step::Control {
                    label,
                    json,
                    ends_speech,
                } => {
                    sink.send(Message::text(json.clone())).await?;
                    talk.line("->", label);
                    *ends_speech
                }
                Step::Frame { .. } if sent_frame => break,
                Step::Frame {
                    bytes,
                    note,
                    ends_speech,
                } => {
                    sink.send(Message::Binary(self.audio.slice(bytes.clone())))
                        .await?;
                    sent_frame = true;
                    if let Some(note) = note {
                        talk.line("->", note);
                    }
                    *ends_speech
                }
            };
            if ends_speech {
                talk.end_sent = Some(Instant::now());
            }
            self.steps.pop_front();
        }
        Ok(())
    }
}

/// A run of audio frames between two printed lines.
struct AudioRun {
    first_ms: f64,
    frames: u64,
    samples: usize,
}

/// What the session showed so far, and the printing of it.
struct Talk {
    t0: Instant,
    tty: bool,
    output_rate: u32,
    run: Option<AudioRun>,
    answer: Vec<i16>,
    /// The turn our input started: the first one the server announced.
    turn: Option<u64>,
    transcript: Option<String>,
    end_sent: Option<Instant>,
    first_audio: Option<Instant>,
    done: Option<Value>,
    odd_frames: u64,
}

impl Talk {
    fn new(t0: Instant) -> Talk {
        Talk {
            t0,
            tty: std::io::stdout().is_terminal(),
            output_rate: 0,
            run: None,
            answer: Vec::new(),
            turn: None,
            transcript: None,
            end_sent: None,
            first_audio: None,
            done: None,
            odd_frames: 0,
        }
    }

    /// Milliseconds since `t0`.
    fn ms(&self) -> f64 {
        self.t0.elapsed().as_secs_f64() * 1000.0
    }

    fn line(&mut self, label: &str, rest: &str) {
        self.end_run();
        println!("{:>9.1} ms  {label:<17} {rest}", self.ms());
    }

    /// Writes the line of an audio run: once for good, or again and again in place on a terminal
    /// (`\r` first, no newline). Writes straight to stdout: nothing is allocated per frame.
    fn print_run(&self, run: &AudioRun, in_place: bool) {
        let rate = f64::from(self.output_rate);
        let mut out = std::io::stdout().lock();
        let _ = write!(
            out,
            "{}{:>9.1} ms  {:<17} {} frames, {:.2} s (total {:.2} s){}",
            if self.tty { "\r" } else { "" },
            run.first_ms,
            "<audio>",
            run.frames,
            run.samples as f64 / rate,
            self.answer.len() as f64 / rate,
            if in_place { "" } else { "\n" },
        );
        let _ = out.flush();
    }

    /// Prints the pending audio line for good.
    fn end_run(&mut self) {
        if let Some(run) = self.run.take() {
            self.print_run(&run, false);
        }
    }

    fn on_audio(&mut self, frame: &[u8]) {
        let first_ms = self.ms();
        self.first_audio.get_or_insert_with(Instant::now);
        if frame.len() % 2 == 1 {
            self.odd_frames += 1;
        }
        let before = self.answer.len();
        self.answer.extend(
            frame
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]])),
        );
        let added = self.answer.len() - before;
        let mut run = self.run.take().unwrap_or(AudioRun {
            first_ms,
            frames: 0,
            samples: 0,
        });
        run.frames += 1;
        run.samples += added;
        if self.tty {
            self.print_run(&run, true);
        }
        self.run = Some(run);
    }

    /// Prints a server event; true when it is the `response_done` that ends our turn.
    fn on_event(&mut self, raw: &str) -> bool {
        let Ok(Value::Object(event)) = serde_json::from_str::<Value>(raw) else {
            self.line("<not JSON>", raw);
            return false;
        };
        let ty = event
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("<no type>");
        self.line(ty, &fields(raw, ty, &event));
        let turn = event.get("turn_id").and_then(Value::as_u64);
        if matches!(ty, "speech_started" | "transcript") && self.turn.is_none() {
            self.turn = turn;
        }
        let ours = turn.is_some() && turn == self.turn;
        match ty {
            "transcript" if ours => {
                self.transcript = event.get("text").and_then(Value::as_str).map(str::to_owned);
            }
            "audio_start" if ours => {
                let rate = event.get("sample_rate").and_then(Value::as_u64);
                if rate != Some(u64::from(self.output_rate)) {
                    let said = rate.map_or_else(|| "no rate".to_owned(), |r| format!("{r} Hz"));
                    eprintln!(
                        "warning: audio_start says {said}, but ready announced {0} Hz; the \
                         answer is saved at {0} Hz",
                        self.output_rate
                    );
                }
            }
            "response_done" if ours => {
                let status = event.get("status").and_then(Value::as_str);
                if matches!(status, Some("completed" | "failed" | "interrupted")) {
                    self.done = Some(Value::Object(event));
                    return true;
                }
            }
            _ => {}
        }
        false
    }
}

/// An event's fields without its `type`, compact and in the order the server sent them.
fn fields<'a>(raw: &'a str, ty: &str, event: &serde_json::Map<String, Value>) -> Cow<'a, str> {
    let prefix = format!("{{\"type\":{},", Value::from(ty));
    if !raw.contains('\n') {
        if let Some(rest) = raw.strip_prefix(prefix.as_str()) {
            return Cow::Owned(format!("{{{rest}"));
        }
        if raw.strip_prefix(&prefix[..prefix.len() - 1]) == Some("}") {
            return Cow::Borrowed("{}");
        }
    }
    let mut event = event.clone();
    event.remove("type");
    Cow::Owned(Value::Object(event).to_string())
}

/// What the user says: a recording or a line of text.
enum Say {
    Audio(Input),
    Text(String),
}

/// How the exchange ended.
enum Outcome {
    Done,
    TimedOut,
    Lost(String),
    CtrlC,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn run(args: Args) -> anyhow::Result<ExitCode> {
    let say = match (&args.input, &args.text) {
        (_, Some(text)) => Say::Text(text.clone()),
        (Some(path), None) => Say::Audio(read_wav(path)?),
        (None, None) => unreachable!("clap requires an input or --text"),
    };
    let rate = match &say {
        Say::Audio(input) => Some(input.rate),
        Say::Text(_) => None,
    };
    let (url, authority) = endpoint(&args.server, rate)?;
    match &say {
        Say::Audio(input) => println!(
            "talk: {} -> {url}, {}, {}",
            input.described,
            if args.client_vad {
                "client VAD"
            } else {
                "server VAD"
            },
            if args.fast {
                "as fast as possible"
            } else {
                "paced at real time"
            },
        ),
        Say::Text(text) => println!("talk: text {text:?} -> {url}"),
    }

    let t0 = Instant::now();
    let deadline = t0 + Duration::from_secs(args.timeout_s);
    let mut talk = Talk::new(t0);
    let ws = match tokio::time::timeout_at(deadline, tokio_tungstenite::connect_async(&url)).await {
        Err(_) => bail!(
            "cannot connect to {url}: no answer within {} s",
            args.timeout_s
        ),
        Ok(Err(e)) => return Err(connect_error(e, &url, &authority)),
        Ok(Ok((ws, _))) => ws,
    };
    let (mut sink, mut stream) = ws.split();
    let ready = read_ready(&mut stream, deadline, &mut talk).await?;
    let mut outgoing = match &say {
        Say::Audio(input) => {
            if ready["input_sample_rate"].as_u64() != Some(u64::from(input.rate)) {
                eprintln!(
                    "warning: asked for sample_rate={} but the server announced \
                     input_sample_rate {}",
                    input.rate, ready["input_sample_rate"]
                );
            }
            let mut client_vad = args.client_vad;
            if !client_vad && ready["server_vad"] == false {
                talk.line(
                    "note",
                    "the server runs no VAD: sending speech_start/speech_end",
                );
                client_vad = true;
            }
            Outgoing::audio(input, client_vad)
        }
        Say::Text(text) => Outgoing::text(text),
    };

    let outcome = exchange(
        &mut sink,
        &mut stream,
        &mut outgoing,
        &mut talk,
        deadline,
        args.fast,
    )
    .await;
    talk.end_run();
    if !matches!(outcome, Outcome::Lost(_)) {
        close(&mut sink, &mut stream).await;
    }
    let saved = if talk.answer.is_empty() {
        None
    } else {
        write_wav(&args.out, talk.output_rate, &talk.answer)?;
        Some(args.out.display().to_string())
    };
    if talk.odd_frames > 0 {
        eprintln!(
            "warning: {} audio frame(s) had an odd number of bytes (not whole PCM16 samples)",
            talk.odd_frames
        );
    }
    let received_s = talk.answer.len() as f64 / f64::from(talk.output_rate);
    let partial = saved
        .as_deref()
        .map(|p| format!("; the {received_s:.2} s of audio received are in {p}"))
        .unwrap_or_default();
    let waiting_for = match (talk.turn, &say) {
        (Some(t), _) => format!("the response_done of turn {t}"),
        (None, Say::Audio(_)) => "a turn to start (the server heard no speech)".to_owned(),
        (None, Say::Text(_)) => "a turn to start".to_owned(),
    };
    match outcome {
        Outcome::Done => Ok(summary(&talk, saved.as_deref())),
        Outcome::TimedOut => bail!(
            "timed out after {} s waiting for {waiting_for}{partial}",
            args.timeout_s
        ),
        Outcome::Lost(why) => bail!("{why} while waiting for {waiting_for}{partial}"),
        Outcome::CtrlC => {
            eprintln!("interrupted while waiting for {waiting_for}{partial}");
            Ok(ExitCode::from(130))
        }
    }
}

/// Reads and checks `ready`, the first message: it says the rates and whether the server's VAD
/// runs.
async fn read_ready(
    stream: &mut SplitStream<Ws>,
    deadline: Instant,
    talk: &mut Talk,
) -> anyhow::Result<Value> {
    let raw = match tokio::time::timeout_at(deadline, stream.next()).await {
        Err(_) => bail!("the server sent no `ready` in time"),
        Ok(None | Some(Ok(Message::Close(_)))) => {
            bail!("the server closed the connection before `ready`")
        }
        Ok(Some(Err(e))) => bail!("connection lost before `ready`: {e}"),
        Ok(Some(Ok(Message::Text(t)))) => t,
        Ok(Some(Ok(other))) => bail!("expected a `ready` event first, got {other:?}"),
    };
    talk.on_event(raw.as_str());
    let ready: Value = serde_json::from_str(raw.as_str())
        .with_context(|| format!("the first message is not JSON: {raw}"))?;
    if ready["type"] != "ready" {
        bail!("expected a `ready` event first, got {ready}");
    }
    if ready["encoding"] != "pcm_s16le" {
        bail!(
            "the server wants {} audio; this client speaks pcm_s16le only",
            ready["encoding"]
        );
    }
    talk.output_rate = ready["output_sample_rate"]
        .as_u64()
        .and_then(|r| u32::try_from(r).ok())
        .filter(|r| *r > 0)
        .ok_or_else(|| anyhow!("`ready` has no valid output_sample_rate: {ready}"))?;
    Ok(ready)
}

/// Completes after one tick at real time, at once with `--fast`.
async fn pace(ticker: &mut Interval, fast: bool) {
    if !fast {
        ticker.tick().await;
    }
}

/// Sends the input and prints what comes back until our turn's `response_done`, the deadline, a
/// lost connection or Ctrl-C.
async fn exchange(
    sink: &mut SplitSink<Ws, Message>,
    stream: &mut SplitStream<Ws>,
    outgoing: &mut Outgoing,
    talk: &mut Talk,
    deadline: Instant,
    fast: bool,
) -> Outcome {
    // A microphone's clock: bursts to catch up if this task was held up, as a capture buffer
    // would.
    let mut ticker = tokio::time::interval(FRAME);
    let expired = tokio::time::sleep_until(deadline);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(expired, ctrl_c);
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(t))) => {
                    if talk.on_event(t.as_str()) {
                        return Outcome::Done;
                    }
                }
                Some(Ok(Message::Binary(b))) => talk.on_audio(&b),
                Some(Ok(Message::Close(Some(CloseFrame { code, reason })))) => {
                    return Outcome::Lost(format!(
                        "the server closed the connection ({code}: {reason})"
                    ));
                }
                Some(Ok(Message::Close(None))) | None => {
                    return Outcome::Lost("the server closed the connection".to_owned());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Outcome::Lost(format!("connection lost: {e}")),
            },
            () = pace(&mut ticker, fast), if !outgoing.steps.is_empty() => {
                if let Err(e) = outgoing.send_next(sink, talk).await {
                    return Outcome::Lost(format!("cannot send: {e}"));
                }
            }
            () = &mut expired => return Outcome::TimedOut,
            _ = &mut ctrl_c => return Outcome::CtrlC,
        }
    }
}

/// Prints the one-line summary of a finished turn; the exit code says whether it failed.
fn summary(talk: &Talk, saved: Option<&str>) -> ExitCode {
    let done = talk
        .done
        .as_ref()
        .expect("a finished turn has its response_done");
    let status = done["status"].as_str().unwrap_or("?");
    let received_ms = talk.answer.len() as f64 * 1000.0 / f64::from(talk.output_rate);
    if let Some(audio_ms) = done["audio_ms"].as_f64() {
        // A frame of slack for rounding.
        if (audio_ms - received_ms).abs() > FRAME.as_secs_f64() * 1000.0 {
            eprintln!(
                "warning: response_done says audio_ms {audio_ms:.1}, but {received_ms:.1} ms \
                 of audio arrived"
            );
        }
    }
    let server_ttft = done["ttft_ms"]
        .as_f64()
        .map_or_else(|| "n/a".to_owned(), |t| format!("{t:.1} ms"));
    let client_ttft = match (talk.end_sent, talk.first_audio) {
        (Some(end), Some(first)) if first >= end => {
            format!("{:.1} ms", (first - end).as_secs_f64() * 1000.0)
        }
        (Some(_), Some(_)) => "n/a (audio came before the end of speech was sent)".to_owned(),
        _ => "n/a".to_owned(),
    };
    let reason = done["reason"]
        .as_str()
        .map(|r| format!(" ({r})"))
        .unwrap_or_default();
    let written = saved.map_or_else(
        || "nothing written (no audio)".to_owned(),
        |p| format!("{p} ({} Hz)", talk.output_rate),
    );
    println!(
        "turn {} {status}{reason} | transcript {:?} | TTFT server {server_ttft}, client \
         {client_ttft} | {:.2} s of audio -> {written}",
        talk.turn.unwrap_or_default(),
        talk.transcript.as_deref().unwrap_or(""),
        received_ms / 1000.0,
    );
    if status == "failed" {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// Closes the socket with a close handshake: our Close, then the server's Close in answer (RFC
/// 6455, 5.5.1). A server that hangs up without answering is reported, not
/// excused: a browser shows that as an abnormal closure (1006).
async fn close(sink: &mut SplitSink<Ws, Message>, stream: &mut SplitStream<Ws>) {
    if let Err(e) = sink.send(Message::Close(None)).await {
        eprintln!("warning: cannot send the close frame: {e}");
        return;
    }
    // Frames already in flight come first; then the server's Close (or how it hung up).
    let answered = tokio::time::timeout(CLOSE_PATIENCE, async {
        loop {
            match stream.next().await {
                Some(Ok(Message::Close(_))) | None => return Ok(()),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
            }
        }
    })
    .await;
    match answered {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!(
            "warning: the server did not answer our Close frame; it dropped the connection ({e})"
        ),
        Err(_) => eprintln!(
            "warning: the server did not finish the close handshake within {} s",
            CLOSE_PATIENCE.as_secs()
        ),
    }
}

fn write_wav(path: &Path, rate: u32, samples: &[i16]) -> anyhow::Result<()> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let shown = path.display();
    let mut w =
        hound::WavWriter::create(path, spec).with_context(|| format!("cannot create {shown}"))?;
    let mut w16 =
        w.get_i16_writer(u32::try_from(samples.len()).context("the answer is too long for a WAV")?);
    for &s in samples {
        w16.write_sample(s);
    }
    w16.flush()
        .with_context(|| format!("cannot write {shown}"))?;
    w.finalize()
        .with_context(|| format!("cannot write {shown}"))?;
    Ok(())
}
