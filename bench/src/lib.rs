//! `voxd bench`: a load generator that drives thousands of real-time voice sessions over `/ws`
//! (or the OpenAI Realtime protocol, or Twilio Media Streams: `--protocol`).
//!
//! Every session is a caller whose microphone streams 20 ms frames in real time, driven by **one
//! shared ticker** (a `watch` channel ticking every 20 ms), not a timer per session. Callers play
//! the scenarios of a classic voice-bot load test (simple query, tool call, real interruption,
//! false alarm) with weights. Every turn is measured: connect time, TTFT (end of speech to the first
//! audio byte), total response time, barge-in reaction, false-alarm correctness, the server's own
//! `ttft_ms`, and orchestration overhead (client TTFT minus the pipeline minimum implied by the
//! server's mock config). Percentiles come from HDR histograms.
//!
//! Load shapes: `sustained` (N sessions), `progressive` (steps up to N, a table per step), `spike`
//! (N → M → N, a table per phase) and `stress` (doubling until a bound breaks; reports the knee).
//! The run reports its own CPU use, so a saturated client is never mistaken for a slow server.
//!
//! Boundary: this crate knows only the client protocols (`/ws`, the OpenAI Realtime protocol,
//! Twilio Media Streams; `wire` reads each), and the few keys of the mock providers' config it
//! reads to compute the pipeline minimum (`CONFIG_DEFAULTS`). It depends on no crate of
//! the server (neither `voxd` nor its providers), so it measures voxd as any client would.

pub mod failif;
pub mod report;
pub mod session;
pub mod stats;
pub mod sysstat;
pub mod transcribe;
mod wire;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use tokio::sync::watch;

pub use report::{Report, StepReport};
pub use session::Protocol;
use session::{Caller, Scenario, Voice};

/// Load shapes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// `--concurrency` sessions for `--requests` turns each (or `--duration`).
    Sustained,
    /// Steps of concurrency up to `--concurrency` (`--steps`), `--step-duration` each.
    Progressive,
    /// `--concurrency` → `--spike-to` → `--concurrency`, `--step-duration` each.
    Spike,
    /// Doubling from `--start` until success rate or p99 TTFT breaks its bound.
    Stress,
    /// `POST /v1/transcribe` at `--rate` requests a second for `--duration` seconds.
    Transcribe,
}

/// The command line of `voxd bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// The server's /ws URL.
    #[arg(long, default_value = "ws://127.0.0.1:8000/ws")]
    pub server: String,
    /// Concurrent sessions (the baseline in spike mode, the ceiling in progressive mode).
    #[arg(long, short = 'c', default_value_t = 10)]
    pub concurrency: usize,
    /// Turns per session in sustained mode (ignored when --duration is given).
    #[arg(long, short = 'n', default_value_t = 5)]
    pub requests: usize,
    /// Run sustained mode for this many seconds instead of a number of requests.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Seconds over which sessions start (spread evenly).
    #[arg(long, default_value_t = 5.0)]
    pub ramp_up: f64,
    /// Load shape.
    #[arg(long, value_enum, default_value = "sustained")]
    pub mode: Mode,
    /// Progressive mode: the concurrency of each step (default: 1, 2, 5, 10, 20, 50, ... up to
    /// --concurrency).
    #[arg(long, value_delimiter = ',')]
    pub steps: Vec<usize>,
    /// Seconds per step (progressive, stress) or phase (spike).
    #[arg(long, default_value_t = 20.0)]
    pub step_duration: f64,
    /// Spike mode: the concurrency of the spike.
    #[arg(long)]
    pub spike_to: Option<usize>,
    /// Stress mode: the first step.
    #[arg(long, default_value_t = 50)]
    pub start: usize,
    /// Stress mode: the largest step tried.
    #[arg(long, default_value_t = 20_000)]
    pub max_concurrency: usize,
    /// Stress mode: a step whose success rate falls below this breaks.
    #[arg(long, default_value_t = 0.99)]
    pub min_success: f64,
    /// Stress mode: a step whose p99 TTFT exceeds this (ms) breaks.
    #[arg(long, default_value_t = 2500.0)]
    pub max_p99_ttft_ms: f64,
    /// Weight of simple queries.
    #[arg(long, default_value_t = 0.6)]
    pub simple: f64,
    /// Weight of tool-call queries.
    #[arg(long, default_value_t = 0.2)]
    pub tools: f64,
    /// Weight of real interruptions.
    #[arg(long, default_value_t = 0.1)]
    pub interruptions: f64,
    /// Weight of false alarms.
    #[arg(long, default_value_t = 0.1)]
    pub false_alarms: f64,
    /// Transcribe mode: requests per second.
    #[arg(long, default_value_t = 50.0)]
    pub rate: f64,
    /// Transcribe mode: the WAV file to post (default: the committed weather question).
    #[arg(long)]
    pub transcribe_file: Option<PathBuf>,
    /// Length of a simple query (and of the query before a barge-in) with client signals, in ms.
    #[arg(long, default_value_t = 2000)]
    pub query_ms: usize,
    /// Sessions take no turns: they connect and stream microphone silence until --duration (or
    /// the step) ends. Measures the cost of idle, listening sessions.
    #[arg(long)]
    pub idle: bool,
    /// Stream the committed speech fixtures and let the server's VAD find turns, instead of
    /// silence wrapped in speech_start/speech_end.
    #[arg(long)]
    pub server_vad: bool,
    /// The protocol the callers speak: voxd's `/ws`, the OpenAI Realtime protocol (point
    /// `--server` at `/v1/realtime`) or Twilio Media Streams (`/twilio`; needs `--server-vad`).
    /// Every protocol plays the same scenario mix, each read from the protocol's own messages:
    /// a barge-in is Realtime's `speech_started` then `response.done` `cancelled`, or Twilio's
    /// `clear`s; a false alarm's resume is the held answer's audio coming again. voxd's tools
    /// are invisible to Realtime and Twilio callers, so their tool turn is a turn whose answer
    /// comes after the tool. Without `--server-vad`, Realtime callers take manual turns:
    /// `commit` and `response.create`, and `response.cancel` to barge in.
    #[arg(long, value_enum, default_value = "ws")]
    pub protocol: Protocol,
    /// Noisy callers: between utterances (and in --idle) the microphone carries pink noise at
    /// -35 dBFS instead of digital silence, so every window passes the server VAD's energy gate.
    /// Silero's worst case.
    #[arg(long)]
    pub noisy: bool,
    /// The server's config, to compute the pipeline minimum for the overhead figure.
    #[arg(long)]
    pub mock_config: Option<PathBuf>,
    /// The server's PID, to sample its CPU and RSS from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Seconds a turn may take before it fails (tool calls get 3x, interruptions 2x: they wait
    /// for two answers).
    #[arg(long, default_value_t = 15.0)]
    pub timeout: f64,
    /// Write the report as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write one CSV row per step.
    #[arg(long)]
    pub csv: Option<PathBuf>,
    /// Exit non-zero when a condition holds, e.g. 'ttft_p95_ms>2500,success_rate<0.99'.
    #[arg(long)]
    pub fail_if: Option<String>,
    /// Seed of the scenario choices.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
}

impl BenchArgs {
    /// Default arguments (as the command line with no options).
    pub fn defaults() -> Self {
        use clap::Parser;
        #[derive(Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: BenchArgs,
        }
        Wrapper::parse_from(["bench"]).args
    }
}

/// A usage error of `voxd bench`.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// Bad arguments.
    #[error("{0}")]
    Usage(String),
    /// The mock config could not be read.
    #[error("cannot read the mock config {path}: {message}")]
    Config {
        /// The file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// Writing a report failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The scenario weights, normalised.
#[derive(Debug, Clone)]
pub struct Mix {
    cumulative: [f64; 4],
}

impl Mix {
    /// Weights for simple, tools, interruption, false alarm.
    ///
    /// # Errors
    /// A usage error when a weight is negative or all are zero.
    pub fn new(w: [f64; 4]) -> Result<Mix, BenchError> {
        if w.iter().any(|x| *x < 0.0 || !x.is_finite()) {
            return Err(BenchError::Usage(
                "scenario weights must be 0 or more".into(),
            ));
        }
        let sum: f64 = w.iter().sum();
        if sum <= 0.0 {
            return Err(BenchError::Usage(
                "at least one scenario weight must be above 0".into(),
            ));
        }
        let mut acc = 0.0;
        let mut cumulative = [0.0; 4];
        for (i, x) in w.iter().enumerate() {
            acc += x / sum;
            cumulative[i] = acc;
        }
        Ok(Mix { cumulative })
    }

    /// The scenario for a uniform draw in [0, 1).
    pub fn pick(&self, u: f64) -> Scenario {
        let i = self.cumulative.iter().position(|c| u < *c).unwrap_or(3);
        Scenario::ALL[i]
    }
}

/// voxd's defaults for the settings the pipeline minimum reads, taken when a config file leaves
/// one out.
///
/// The mock providers' delays are copies of the `Default`s of voxd-backends' `MockAsrConfig`,
/// `MockLlmConfig` and `MockTtsConfig` (docs/providers.md), and `vad_hangover_ms` is the server's
/// `[vad] hangover_ms` default. They are copied rather than imported because the load tool
/// depends on no crate of the server: it knows the `/ws` protocol and these few config keys.
/// A test in voxd-backends (`mock.rs`) checks that the copies agree with the originals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ConfigDefaults {
    /// `[asr.mock] latency_ms`.
    pub asr_latency_ms: u64,
    /// `[llm.mock] first_token_ms`.
    pub llm_first_token_ms: u64,
    /// `[llm.mock] token_interval_ms`.
    pub llm_token_interval_ms: u64,
    /// `[tts.mock] first_audio_ms`.
    pub tts_first_audio_ms: u64,
    /// `[vad] hangover_ms`.
    pub vad_hangover_ms: u64,
}

/// The defaults `PipelineMinimum::from_config` falls back on.
pub const CONFIG_DEFAULTS: ConfigDefaults = ConfigDefaults {
    asr_latency_ms: 50,
    llm_first_token_ms: 100,
    llm_token_interval_ms: 10,
    tts_first_audio_ms: 50,
    vad_hangover_ms: 500,
};

/// The pipeline minimum of the mock providers: ASR + LLM first token + the tokens up to the
/// first sentence's end + TTS first audio (+ the VAD hangover with server VAD).
#[derive(Debug, Clone, Copy)]
pub struct PipelineMinimum {
    asr_ms: f64,
    first_token_ms: f64,
    token_interval_ms: f64,
    tts_first_audio_ms: f64,
    /// The VAD hangover (server VAD only): part of the client's TTFT, not the server's.
    pub hangover_ms: f64,
}

impl PipelineMinimum {
    /// Reads the mock settings of a voxd config file (missing keys take voxd's defaults).
    ///
    /// # Errors
    /// When the file cannot be read or parsed.
    pub fn from_config(path: &std::path::Path, server_vad: bool) -> Result<Self, BenchError> {
        let err = |message: String| BenchError::Config {
            path: path.to_owned(),
            message,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(e.to_string()))?;
        let v: toml::Value = toml::from_str(&text).map_err(|e| err(e.to_string()))?;
        let num = |section: &str, key: &str, default: f64| {
            let mut node = &v;
            for part in section.split('.') {
                match node.get(part) {
                    Some(n) => node = n,
                    None => return default,
                }
            }
            node.get(key)
                .and_then(|x| x.as_float().or_else(|| x.as_integer().map(|i| i as f64)))
                .unwrap_or(default)
        };
        let d = CONFIG_DEFAULTS;
        Ok(PipelineMinimum {
            asr_ms: num("asr.mock", "latency_ms", d.asr_latency_ms as f64),
            first_token_ms: num("llm.mock", "first_token_ms", d.llm_first_token_ms as f64),
            token_interval_ms: num(
                "llm.mock",
                "token_interval_ms",
                d.llm_token_interval_ms as f64,
            ),
            tts_first_audio_ms: num("tts.mock", "first_audio_ms", d.tts_first_audio_ms as f64),
            hangover_ms: if server_vad {
                num("vad", "hangover_ms", d.vad_hangover_ms as f64)
            } else {
                0.0
            },
        })
    }

    /// The minimum TTFT in ms for an answer whose first sentence is `first_sentence`. The mock
    /// LLM streams one word per token; the sentence's end is certain when the next token arrives,
    /// or when the stream ends if nothing follows.
    pub fn ttft_ms(&self, first_sentence: &str, more_follows: bool) -> f64 {
        let words = first_sentence.split_whitespace().count().max(1) as f64;
        let tokens_after_first = if more_follows { words } else { words - 1.0 };
        self.hangover_ms
            + self.asr_ms
            + self.first_token_ms
            + tokens_after_first * self.token_interval_ms
            + self.tts_first_audio_ms
    }
}

/// The ticker's slots: session `i` follows slot `i % TICK_SLOTS`.
const TICK_SLOTS: usize = 20;

/// The receivers of the ticker's slots.
#[derive(Clone)]
struct Ticks(Arc<Vec<watch::Receiver<u64>>>);

impl Ticks {
    fn for_session(&self, index: usize) -> watch::Receiver<u64> {
        self.0[index % self.0.len()].clone()
    }
}

/// What the sessions of one step share: results and live counters.
#[derive(Debug, Default)]
pub struct Collector {
    steps: BTreeMap<usize, report::StepStats>,
    live_step: usize,
    turns_done: u64,
    errors: u64,
    ttft_window: stats::Metric,
}

impl Collector {
    fn record(&mut self, step: usize, scenario: Scenario, r: &session::TurnResult) {
        let s = self.steps.entry(step).or_default();
        s.record(scenario, r);
        self.turns_done += 1;
        if r.error.is_some() {
            self.errors += 1;
        }
        if let Some(t) = r.ttft {
            self.ttft_window.record(t);
        }
    }

    fn connected(&mut self, step: usize, d: Duration) {
        self.steps.entry(step).or_default().connect.record(d);
    }

    fn connect_failed(&mut self, step: usize, why: &str) {
        self.steps.entry(step).or_default().connect_failed(why);
        self.errors += 1;
    }

    fn broken(&mut self, step: usize, why: &str) {
        self.steps.entry(step).or_default().broken(why);
        self.errors += 1;
    }
}

/// How long a session keeps taking turns.
#[derive(Debug, Clone, Copy)]
enum Budget {
    Turns(usize),
    Until(Instant),
}

struct Plan {
    url: String,
    voice: Voice,
    mix: Mix,
    minimum: Option<PipelineMinimum>,
    timeout: Duration,
    seed: u64,
    idle: bool,
}

/// Runs one session: connect, take turns within the budget, close.
async fn session(
    plan: Arc<Plan>,
    ticks: Ticks,
    collector: Arc<Mutex<Collector>>,
    step_of: Arc<dyn Fn() -> usize + Send + Sync>,
    index: usize,
    budget: Budget,
) {
    let mut rng =
        fastrand::Rng::with_seed(plan.seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index as u64);
    let connected = Caller::connect(
        &plan.url,
        ticks.for_session(index),
        plan.voice.clone(),
        plan.timeout,
    )
    .await;
    let mut caller = match connected {
        Ok((caller, d)) => {
            collector
                .lock()
                .expect("not poisoned")
                .connected(step_of(), d);
            caller
        }
        Err(e) => {
            collector
                .lock()
                .expect("not poisoned")
                .connect_failed(step_of(), &e);
            return;
        }
    };
    if plan.idle {
        if let Budget::Until(t) = budget {
            caller.listen_until(t).await;
        }
        caller.close().await;
        return;
    }
    let mut done = 0;
    loop {
        match budget {
            Budget::Turns(n) if done >= n => break,
            Budget::Until(t) if Instant::now() >= t => break,
            _ => {}
        }
        let scenario = plan.mix.pick(rng.f64());
        match caller.play(scenario, &mut rng, plan.minimum).await {
            Ok(r) => {
                collector
                    .lock()
                    .expect("not poisoned")
                    .record(step_of(), scenario, &r);
                if r.error.is_some() {
                    // A late answer would be counted against the next turn: start afresh.
                    break;
                }
            }
            Err(e) => {
                collector
                    .lock()
                    .expect("not poisoned")
                    .broken(step_of(), &e);
                return;
            }
        }
        done += 1;
    }
    caller.close().await;
}

/// The default progressive steps: 1, 2, 5, 10, 20, 50, ... up to `max` (and `max` itself).
pub fn default_steps(max: usize) -> Vec<usize> {
    let mut steps = Vec::new();
    let mut base = 1;
    'outer: loop {
        for m in [1, 2, 5] {
            let s = base * m;
            if s >= max {
                break 'outer;
            }
            steps.push(s);
        }
        base *= 10;
    }
    steps.push(max);
    steps
}

/// Runs the benchmark described by `args` and returns its report.
///
/// # Errors
/// Usage errors (bad weights, bad `--fail-if`, unreadable mock config).
pub async fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    if args.protocol == Protocol::Twilio && !args.server_vad && !args.idle {
        return Err(BenchError::Usage(
            "--protocol twilio needs --server-vad: Twilio has no speech signals".into(),
        ));
    }
    let mix = Mix::new([
        args.simple,
        args.tools,
        args.interruptions,
        args.false_alarms,
    ])?;
    if let Some(f) = &args.fail_if {
        failif::parse(f).map_err(|e| BenchError::Usage(e.to_string()))?;
    }
    if args.concurrency == 0 {
        return Err(BenchError::Usage("--concurrency must be at least 1".into()));
    }
    let minimum = match &args.mock_config {
        Some(p) => Some(PipelineMinimum::from_config(p, args.server_vad)?),
        None => {
            let p = std::path::Path::new("config.toml");
            p.exists()
                .then(|| PipelineMinimum::from_config(p, args.server_vad))
                .transpose()?
        }
    };
    let plan = Arc::new(Plan {
        url: args.server.clone(),
        voice: Voice::new(args.protocol, args.server_vad, args.query_ms, args.noisy),
        mix,
        minimum,
        timeout: Duration::from_secs_f64(args.timeout),
        seed: args.seed,
        idle: args.idle,
    });
    if args.idle && args.mode == Mode::Sustained && args.duration.is_none() {
        return Err(BenchError::Usage(
            "--idle needs --duration (sessions take no turns)".into(),
        ));
    }

    // The one ticker: every session sends its frames on its ticks. It ticks every millisecond and
    // each tick wakes one of 20 slots, so each session wakes once per 20 ms frame while the
    // sessions' frames are spread over the 20 ms (real callers are not in phase with each other).
    let (slot_tx, slot_rx): (Vec<_>, Vec<_>) =
        (0..TICK_SLOTS).map(|_| watch::channel(0u64)).unzip();
    let tick_rx = Ticks(Arc::new(slot_rx));
    let ticker = tokio::spawn(async move {
        let mut interval = tokio::time::interval(Duration::from_millis(20 / TICK_SLOTS as u64));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut n = 0u64;
        loop {
            interval.tick().await;
            let slot = (n % TICK_SLOTS as u64) as usize;
            n += 1;
            if slot_tx[slot].send(n / TICK_SLOTS as u64 + 1).is_err() {
                break;
            }
        }
    });

    let collector = Arc::new(Mutex::new(Collector::default()));
    let progress = (!args.quiet).then(|| {
        let collector = Arc::clone(&collector);
        let server_pid = args.server_pid;
        tokio::spawn(progress_line(collector, server_pid))
    });
    let started = Instant::now();
    let mut client_cpu = sysstat::CpuMeter::start("self");
    let server_pid = args.server_pid.map(|p| p.to_string());
    let mut report = Report::new(args, minimum.is_some());

    let steps: Vec<(String, usize)> = match args.mode {
        Mode::Sustained => vec![(format!("{}", args.concurrency), args.concurrency)],
        Mode::Progressive => {
            let steps = if args.steps.is_empty() {
                default_steps(args.concurrency)
            } else {
                args.steps.clone()
            };
            steps.iter().map(|s| (s.to_string(), *s)).collect()
        }
        Mode::Spike => {
            let to = args
                .spike_to
                .ok_or_else(|| BenchError::Usage("spike mode needs --spike-to M".into()))?;
            vec![
                (format!("baseline {}", args.concurrency), args.concurrency),
                (format!("spike {to}"), to),
                (format!("recovery {}", args.concurrency), args.concurrency),
            ]
        }
        Mode::Stress | Mode::Transcribe => Vec::new(),
    };

    if args.mode == Mode::Transcribe {
        let addr = transcribe::authority(&args.server).map_err(BenchError::Usage)?;
        let wav: Arc<[u8]> = match &args.transcribe_file {
            Some(p) => std::fs::read(p)
                .map_err(|e| BenchError::Config {
                    path: p.clone(),
                    message: e.to_string(),
                })?
                .into(),
            None => include_bytes!("../../fixtures/weather.wav")
                .as_slice()
                .into(),
        };
        let duration = Duration::from_secs_f64(args.duration.unwrap_or(args.step_duration));
        let stats = Arc::new(Mutex::new(report::StepStats::default()));
        let mut server_cpu = server_pid.as_deref().map(sysstat::CpuMeter::start);
        let step_started = Instant::now();
        transcribe::run(
            addr,
            wav,
            args.rate,
            duration,
            plan.timeout,
            Arc::clone(&stats),
        )
        .await;
        let stats = std::mem::take(&mut *stats.lock().expect("not poisoned"));
        let mut step = stats.report(
            &format!("transcribe {} req/s", args.rate),
            0,
            step_started.elapsed().as_secs_f64(),
        );
        step.server_cpu_pct = server_cpu.as_mut().and_then(sysstat::CpuMeter::lap);
        report.steps.push(step);
    } else if args.mode == Mode::Spike {
        run_spike(
            args,
            &plan,
            &tick_rx,
            &collector,
            &steps,
            &mut report,
            &server_pid,
        )
        .await;
    } else if args.mode == Mode::Stress {
        let mut n = args.start.max(1);
        let mut i = 0;
        loop {
            let label = n.to_string();
            let step = run_step(args, &plan, &tick_rx, &collector, i, &label, n, &server_pid).await;
            let ok = step.success_rate >= args.min_success
                && step
                    .overall
                    .ttft
                    .as_ref()
                    .is_none_or(|t| t.p99_ms <= args.max_p99_ttft_ms);
            report.steps.push(step);
            if !ok {
                report.knee = (i > 0).then(|| report.steps[i - 1].concurrency);
                break;
            }
            report.knee = Some(n);
            if n >= args.max_concurrency {
                break;
            }
            n = (n * 2).min(args.max_concurrency);
            i += 1;
        }
    } else {
        for (i, (label, n)) in steps.iter().enumerate() {
            let step = run_step(args, &plan, &tick_rx, &collector, i, label, *n, &server_pid).await;
            report.steps.push(step);
        }
    }

    ticker.abort();
    if let Some(p) = progress {
        p.abort();
        if std::io::stderr().is_terminal() {
            eprintln!();
        }
    }
    report.duration_s = started.elapsed().as_secs_f64();
    report.client_cpu_pct = client_cpu.lap();
    Ok(report)
}

/// One step: `n` sessions ramped over `--ramp-up`, for the step's budget.
#[allow(clippy::too_many_arguments)]
async fn run_step(
    args: &BenchArgs,
    plan: &Arc<Plan>,
    ticks: &Ticks,
    collector: &Arc<Mutex<Collector>>,
    index: usize,
    label: &str,
    n: usize,
    server_pid: &Option<String>,
) -> StepReport {
    collector.lock().expect("not poisoned").live_step = index;
    let started = Instant::now();
    let mut server_cpu = server_pid.as_deref().map(sysstat::CpuMeter::start);
    let mut client_cpu = sysstat::CpuMeter::start("self");
    let rss_before = server_pid.as_deref().and_then(sysstat::rss_kib);
    let budget = match (args.mode, args.duration) {
        (Mode::Sustained, None) => Budget::Turns(args.requests),
        (Mode::Sustained, Some(d)) => {
            Budget::Until(started + Duration::from_secs_f64(args.ramp_up + d))
        }
        _ => Budget::Until(started + Duration::from_secs_f64(args.ramp_up + args.step_duration)),
    };
    let step_of: Arc<dyn Fn() -> usize + Send + Sync> = Arc::new(move || index);
    let peak_rss = Arc::new(Mutex::new(rss_before.unwrap_or(0)));
    let sampler = server_pid.clone().map(|pid| {
        let peak = Arc::clone(&peak_rss);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                if let Some(r) = sysstat::rss_kib(&pid) {
                    let mut p = peak.lock().expect("not poisoned");
                    *p = (*p).max(r);
                }
            }
        })
    });
    let mut handles = Vec::with_capacity(n);
    let gap = if n > 1 {
        Duration::from_secs_f64(args.ramp_up / n as f64)
    } else {
        Duration::ZERO
    };
    for i in 0..n {
        let at = started + gap * i as u32;
        tokio::time::sleep_until(at.into()).await;
        handles.push(tokio::spawn(session(
            Arc::clone(plan),
            ticks.clone(),
            Arc::clone(collector),
            Arc::clone(&step_of),
            index * 1_000_000 + i,
            budget,
        )));
    }
    for h in handles {
        let _ = h.await;
    }
    if let Some(s) = sampler {
        s.abort();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let stats = collector
        .lock()
        .expect("not poisoned")
        .steps
        .remove(&index)
        .unwrap_or_default();
    let mut step = stats.report(label, n, elapsed);
    step.client_cpu_pct = client_cpu.lap();
    step.server_cpu_pct = server_cpu.as_mut().and_then(sysstat::CpuMeter::lap);
    step.server_rss_kib_before = rss_before;
    step.server_rss_kib_peak = server_pid
        .as_ref()
        .map(|_| *peak_rss.lock().expect("not poisoned"));
    step
}

/// Spike: the baseline sessions run through all three phases; the extra ones only in the middle.
async fn run_spike(
    args: &BenchArgs,
    plan: &Arc<Plan>,
    ticks: &Ticks,
    collector: &Arc<Mutex<Collector>>,
    phases: &[(String, usize)],
    report: &mut Report,
    server_pid: &Option<String>,
) {
    let phase = Duration::from_secs_f64(args.step_duration);
    let started = Instant::now();
    let ramp = Duration::from_secs_f64(args.ramp_up);
    // Results are attributed to the phase in which the turn ended.
    let step_of: Arc<dyn Fn() -> usize + Send + Sync> = Arc::new(move || {
        let t = started.elapsed().saturating_sub(ramp);
        ((t.as_secs_f64() / phase.as_secs_f64()) as usize).min(2)
    });
    let base = phases[0].1;
    let extra = phases[1].1.saturating_sub(base);
    let end = started + ramp + phase * 3;
    let mut handles = Vec::new();
    let mut meters: Vec<(Option<sysstat::CpuMeter>, sysstat::CpuMeter, Option<u64>)> = Vec::new();
    let gap = ramp / base.max(1) as u32;
    for i in 0..base {
        tokio::time::sleep_until((started + gap * i as u32).into()).await;
        handles.push(tokio::spawn(session(
            Arc::clone(plan),
            ticks.clone(),
            Arc::clone(collector),
            Arc::clone(&step_of),
            i,
            Budget::Until(end),
        )));
    }
    for p in 0..3u32 {
        let phase_start = started + ramp + phase * p;
        tokio::time::sleep_until(phase_start.into()).await;
        meters.push((
            server_pid.as_deref().map(sysstat::CpuMeter::start),
            sysstat::CpuMeter::start("self"),
            server_pid.as_deref().and_then(sysstat::rss_kib),
        ));
        if p == 1 {
            let spike_end = phase_start + phase;
            let gap = Duration::from_millis(2);
            for i in 0..extra {
                handles.push(tokio::spawn(session(
                    Arc::clone(plan),
                    ticks.clone(),
                    Arc::clone(collector),
                    Arc::clone(&step_of),
                    1_000_000 + i,
                    Budget::Until(spike_end),
                )));
                if i % 50 == 49 {
                    tokio::time::sleep(gap).await;
                }
            }
        }
        tokio::time::sleep_until((phase_start + phase).into()).await;
        let m = meters.last_mut().expect("pushed above");
        let (server, client, rss) = (
            m.0.as_mut().and_then(sysstat::CpuMeter::lap),
            m.1.lap(),
            m.2,
        );
        let _ = (server, client, rss);
    }
    for h in handles {
        let _ = h.await;
    }
    let elapsed = phase.as_secs_f64();
    let mut c = collector.lock().expect("not poisoned");
    for (i, (label, n)) in phases.iter().enumerate() {
        let stats = c.steps.remove(&i).unwrap_or_default();
        let mut step = stats.report(label, *n, elapsed);
        if let Some(m) = meters.get_mut(i) {
            step.server_rss_kib_before = m.2;
        }
        report.steps.push(step);
    }
}

/// The live progress line: sessions, turns/s, p95 TTFT so far, errors, CPU.
async fn progress_line(collector: Arc<Mutex<Collector>>, server_pid: Option<u32>) {
    let tty = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut last_turns = 0;
    let mut cpu = sysstat::CpuMeter::start("self");
    let mut server = server_pid.map(|p| sysstat::CpuMeter::start(&p.to_string()));
    let mut tick = tokio::time::interval(Duration::from_secs(if tty { 1 } else { 10 }));
    tick.tick().await;
    loop {
        tick.tick().await;
        let (turns, errors, p95, step) = {
            let c = collector.lock().expect("not poisoned");
            (
                c.turns_done,
                c.errors,
                c.ttft_window.summary().map(|s| s.p95_ms),
                c.live_step,
            )
        };
        let rate = (turns - last_turns) as f64 / if tty { 1.0 } else { 10.0 };
        last_turns = turns;
        let line = format!(
            "[{:>5.0}s] step {} | turns {} ({:.1}/s) | p95 TTFT {} | errors {} | client CPU {} | server CPU {}",
            started.elapsed().as_secs_f64(),
            step + 1,
            turns,
            rate,
            p95.map_or("-".into(), |p| format!("{p:.0} ms")),
            errors,
            cpu.lap().map_or("-".into(), |c| format!("{c:.0}%")),
            server.as_mut().and_then(sysstat::CpuMeter::lap).map_or("-".into(), |c| format!("{c:.0}%")),
        );
        if tty {
            eprint!("\r{line}   ");
        } else {
            eprintln!("{line}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_follows_the_weights() {
        let mix = Mix::new([0.6, 0.2, 0.1, 0.1]).unwrap();
        let mut rng = fastrand::Rng::with_seed(7);
        let mut counts = BTreeMap::new();
        for _ in 0..100_000 {
            *counts.entry(mix.pick(rng.f64())).or_insert(0) += 1;
        }
        let share = |s| f64::from(counts[&s]) / 100_000.0;
        assert!((share(Scenario::Simple) - 0.6).abs() < 0.01);
        assert!((share(Scenario::Tools) - 0.2).abs() < 0.01);
        assert!((share(Scenario::Interruption) - 0.1).abs() < 0.01);
        assert!((share(Scenario::FalseAlarm) - 0.1).abs() < 0.01);
        assert!(Mix::new([0.0; 4]).is_err());
        assert!(Mix::new([1.0, -1.0, 0.0, 0.0]).is_err());
        let only = Mix::new([0.0, 0.0, 1.0, 0.0]).unwrap();
        assert_eq!(only.pick(0.0), Scenario::Interruption);
        assert_eq!(only.pick(0.999), Scenario::Interruption);
    }

    #[test]
    fn progressive_steps() {
        assert_eq!(
            default_steps(1000),
            vec![1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
        );
        assert_eq!(default_steps(30), vec![1, 2, 5, 10, 20, 30]);
        assert_eq!(default_steps(1), vec![1]);
    }

    #[test]
    fn pipeline_minimum_of_the_default_mocks() {
        let dir = std::env::temp_dir().join(format!("voxd-bench-min-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("config.toml");
        std::fs::write(&path, "[llm.mock]\ntoken_interval_ms = 10\n").unwrap();
        let m = PipelineMinimum::from_config(&path, false).unwrap();
        // 50 + 100 + 4 words (the 4th token's successor confirms the end) x 10 + 50.
        assert_eq!(m.ttft_ms("Hello there my friend.", true), 240.0);
        assert_eq!(m.ttft_ms("Hello there my friend.", false), 230.0);
        let vad = PipelineMinimum::from_config(&path, true).unwrap();
        assert_eq!(vad.ttft_ms("Hi.", true), 500.0 + 50.0 + 100.0 + 10.0 + 50.0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
