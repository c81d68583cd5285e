//! `voxd bench` against an in-process server: a few sessions for a few seconds, every scenario.

mod common;

use common::{TestServer, TEST_CONFIG};
use voxd_bench::{BenchArgs, Mode};

fn args(server: &TestServer, server_vad: bool) -> BenchArgs {
    // A directory per call: the tests run at once, and one must not read the config while
    // another writes it.
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!(
        "voxd-bench-smoke-{}-{server_vad}-{call}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(&config, TEST_CONFIG).unwrap();
    BenchArgs {
        server: server.ws_url(""),
        concurrency: 4,
        requests: 3,
        ramp_up: 0.2,
        // Every scenario equally often.
        simple: 1.0,
        tools: 1.0,
        interruptions: 1.0,
        false_alarms: 1.0,
        server_vad,
        mock_config: Some(config),
        quiet: true,
        seed: 3,
        ..BenchArgs::defaults()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_succeeds_with_client_signals() {
    let server = TestServer::start().await;
    let report = voxd_bench::run(&args(&server, false)).await.unwrap();
    let step = &report.steps[0];
    assert_eq!(step.turns_ok, 12, "{}", report.table());
    assert_eq!(step.success_rate, 1.0);
    assert_eq!(step.scenarios.len(), 4, "{}", report.table());
    let o = &step.overall;
    assert_eq!(o.connect.unwrap().count, 4);
    assert_eq!(o.ttft.unwrap().count, 12);
    assert!(
        o.barge_in.is_some(),
        "interruptions and false alarms measure the reaction"
    );
    if step.scenarios.contains_key("simple") {
        assert!(
            o.overhead.is_some(),
            "the overhead of simple queries is known"
        );
    }
    assert!(report.violations("success_rate<1").unwrap().is_empty());
    assert_eq!(report.violations("ttft_p50_ms>0").unwrap().len(), 1);
    assert!(report.table().contains("barge-in reaction"));
    assert_eq!(report.csv().lines().count(), 2);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_scenario_succeeds_with_server_vad() {
    let server = TestServer::start().await;
    let mut a = args(&server, true);
    a.concurrency = 2;
    a.requests = 4;
    let report = voxd_bench::run(&a).await.unwrap();
    let step = &report.steps[0];
    assert_eq!(step.success_rate, 1.0, "{}", report.table());
    assert_eq!(step.turns_ok, 8);
    server.stop().await;
}

/// Callers whose microphones carry pink noise between turns (`--noisy`): the noise starts no turn
/// and breaks no scenario. Without false alarms: the mock ASR knows a fixture only without noise
/// around it and maps other audio by its non-zero length, so a noisy "mhm" (pre-roll and hangover
/// full of noise) reads as words to it; a real ASR hears "mhm".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scenarios_succeed_with_noisy_callers() {
    let server = TestServer::start().await;
    let mut a = args(&server, true);
    a.noisy = true;
    a.false_alarms = 0.0;
    a.concurrency = 2;
    a.requests = 4;
    let report = voxd_bench::run(&a).await.unwrap();
    let step = &report.steps[0];
    assert_eq!(step.success_rate, 1.0, "{}", report.table());
    assert_eq!(step.turns_ok, 8);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progressive_mode_reports_a_step_each() {
    let server = TestServer::start().await;
    let mut a = args(&server, false);
    a.mode = Mode::Progressive;
    a.steps = vec![1, 3];
    a.step_duration = 1.0;
    a.simple = 1.0;
    a.tools = 0.0;
    a.interruptions = 0.0;
    a.false_alarms = 0.0;
    let report = voxd_bench::run(&a).await.unwrap();
    assert_eq!(report.steps.len(), 2);
    assert_eq!(report.steps[0].concurrency, 1);
    assert_eq!(report.steps[1].concurrency, 3);
    assert!(
        report
            .steps
            .iter()
            .all(|s| s.success_rate == 1.0 && s.turns_ok > 0),
        "{}",
        report.table()
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_sessions_are_counted_as_connect_errors() {
    let server = TestServer::start_with("[server]\nmax_sessions = 2\n").await;
    let mut a = args(&server, false);
    a.requests = 1;
    a.simple = 1.0;
    a.tools = 0.0;
    a.interruptions = 0.0;
    a.false_alarms = 0.0;
    let report = voxd_bench::run(&a).await.unwrap();
    let step = &report.steps[0];
    assert_eq!(step.connect_errors, 2, "{}", report.table());
    assert!(
        step.failures.keys().any(|k| k.contains("503")),
        "{:?}",
        step.failures
    );
    assert_eq!(report.figure("connect_errors"), Some(2.0));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transcribe_mode_posts_at_a_fixed_rate() {
    let server = TestServer::start().await;
    let mut a = args(&server, false);
    a.mode = Mode::Transcribe;
    a.rate = 20.0;
    a.duration = Some(1.0);
    let report = voxd_bench::run(&a).await.unwrap();
    let step = &report.steps[0];
    assert_eq!(step.turns_ok, 20, "{}", report.table());
    assert_eq!(step.success_rate, 1.0);
    assert_eq!(step.overall.total.unwrap().count, 20);
    assert!(report.table().contains("request latency"));
    server.stop().await;
}

/// `--protocol realtime` and `--protocol twilio` play the whole mix, read from each protocol's own
/// messages. Every turn must succeed: an interruption that was not cut or not answered anew, stale
/// audio, a false alarm that was not held, did not resume, or resumed past what the caller had
/// heard, all fail it.
async fn plays_every_scenario(protocol: voxd_bench::Protocol, path: &str, server_vad: bool) {
    let server = TestServer::start().await;
    let args = BenchArgs {
        server: format!("ws://{}/{path}", server.addr),
        protocol,
        ..args(&server, server_vad)
    };
    let report = voxd_bench::run(&args).await.unwrap();
    let step = &report.steps[0];
    let what = report.table();
    assert_eq!(step.turns_ok, 12, "{what}");
    assert_eq!(step.success_rate, 1.0, "{what}");
    assert!(step.failures.is_empty(), "{what}");
    let ok = |name: &str| step.scenarios.get(name).map_or(0, |s| s.ok);
    for name in ["simple", "tools", "interruption", "false_alarm"] {
        assert!(ok(name) > 0, "no {name} turn: {what}");
    }
    assert_eq!(step.overall.ttft.unwrap().count, 12, "{what}");
    // Every interruption stopped the answer and was answered anew.
    let interruption = &step.scenarios["interruption"].figures;
    let cut = ok("interruption");
    assert_eq!(interruption.barge_in.unwrap().count, cut, "{what}");
    assert_eq!(interruption.recovery_ttft.unwrap().count, cut, "{what}");
    // With server VAD a false alarm holds the answer until it resumes; with manual turns the
    // caller's "mhm" holds nothing (its client judged it).
    let held = step.scenarios["false_alarm"]
        .figures
        .barge_in
        .map_or(0, |b| b.count);
    let expected = if server_vad { ok("false_alarm") } else { 0 };
    assert_eq!(held, expected, "{what}");
    server.stop().await;
}

/// The OpenAI Realtime protocol with manual turns: `commit` and `response.create`, and
/// `response.cancel` to barge in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_realtime_protocol_plays_every_scenario_with_manual_turns() {
    plays_every_scenario(
        voxd_bench::Protocol::Realtime,
        "v1/realtime?model=bench",
        false,
    )
    .await;
}

/// The OpenAI Realtime protocol with server VAD: `speech_started` holds the answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_realtime_protocol_plays_every_scenario_with_server_vad() {
    plays_every_scenario(
        voxd_bench::Protocol::Realtime,
        "v1/realtime?model=bench",
        true,
    )
    .await;
}

/// Twilio Media Streams (server VAD), with a simulated Twilio that plays the answer at real time,
/// echoes each mark once played and drops its buffer on `clear`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_twilio_protocol_plays_every_scenario() {
    plays_every_scenario(voxd_bench::Protocol::Twilio, "twilio", true).await;
}
