//! Prometheus metrics: one recorder per server (no global state), handles registered up front.
//!
//! Hot paths (per audio frame, per message) touch only pre-registered handles, and the session
//! driver batches its per-frame counts locally before adding them (see `WireCounts`), so no shared
//! cache line is written per frame. Metrics with open-ended labels (tool, provider, route) are
//! looked up when the event happens, which is per turn or per request, never per frame.
//!
//! Every metric is documented in docs/metrics.md. The turn histograms are fed from the same
//! `Timings` that `response_done` carries, so a dashboard and a client see the same numbers.

use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, Key, KeyName, Label, Metadata, Recorder, SharedString, Unit,
};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};
use voxd_core::{ResponseStatus, Stage, Timings};

/// Histogram buckets for voice latencies, in seconds: 5 ms to 10 s.
pub(crate) const LATENCY_BUCKETS: &[f64] = &[
    0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0,
    10.0,
];

/// Histogram buckets for scheduling waits, in seconds: 50 µs to 250 ms.
pub(crate) const WAIT_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
];

static METADATA: Metadata<'static> = Metadata::new("voxd", metrics::Level::INFO, Some("voxd"));

/// The server's metrics.
pub struct Metrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Sessions live now.
    pub sessions_active: Gauge,
    /// The admission limit, `server.max_sessions`: with `sessions_active`, the share in use.
    pub sessions_max: Gauge,
    /// Sessions admitted.
    pub sessions_total: Counter,
    /// Sessions whose connection dropped, waiting for their client to resume them.
    pub sessions_parked: Gauge,
    refused_full: Counter,
    refused_draining: Counter,
    turns: [Counter; 3],
    ttft: Histogram,
    asr: Histogram,
    llm_first_token: Histogram,
    tts_first_audio: Histogram,
    turn_total: Histogram,
    timer_lag: Histogram,
    /// Barge-ins that cancelled a response.
    pub interruptions: Counter,
    /// Barge-ins that turned out to be false alarms.
    pub false_alarms: Counter,
    ws_in_text: Counter,
    ws_in_binary: Counter,
    ws_out_text: Counter,
    ws_out_binary: Counter,
    audio_in_bytes: Counter,
    audio_out_bytes: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every fixed metric registered and described.
    pub fn new() -> Self {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
            .expect("the buckets are not empty")
            // A `Full` matcher is checked before a `Suffix` one.
            .set_buckets_for_metric(
                Matcher::Full("voxd_session_timer_lag_seconds".into()),
                WAIT_BUCKETS,
            )
            .expect("the buckets are not empty")
            .build_recorder();
        let handle = recorder.handle();
        describe(&recorder);
        let counter = |name: &'static str, labels: &[(&'static str, &'static str)]| {
            recorder.register_counter(&key(name, labels), &METADATA)
        };
        let histogram = |name: &'static str, labels: &[(&'static str, &'static str)]| {
            recorder.register_histogram(&key(name, labels), &METADATA)
        };
        let turns = [
            counter("voxd_turns_total", &[("status", "completed")]),
            counter("voxd_turns_total", &[("status", "interrupted")]),
            counter("voxd_turns_total", &[("status", "failed")]),
        ];
        Metrics {
            sessions_active: recorder.register_gauge(&key("voxd_sessions_active", &[]), &METADATA),
            sessions_max: recorder.register_gauge(&key("voxd_sessions_max", &[]), &METADATA),
            sessions_total: counter("voxd_sessions_total", &[]),
            sessions_parked: recorder.register_gauge(&key("voxd_sessions_parked", &[]), &METADATA),
            refused_full: counter("voxd_sessions_refused_total", &[("reason", "full")]),
            refused_draining: counter("voxd_sessions_refused_total", &[("reason", "draining")]),
            turns,
            ttft: histogram("voxd_ttft_seconds", &[]),
            asr: histogram("voxd_stage_latency_seconds", &[("stage", "asr")]),
            llm_first_token: histogram(
                "voxd_stage_latency_seconds",
                &[("stage", "llm_first_token")],
            ),
            tts_first_audio: histogram(
                "voxd_stage_latency_seconds",
                &[("stage", "tts_first_audio")],
            ),
            turn_total: histogram("voxd_turn_duration_seconds", &[]),
            timer_lag: histogram("voxd_session_timer_lag_seconds", &[]),
            interruptions: counter("voxd_interruptions_total", &[]),
            false_alarms: counter("voxd_false_alarms_total", &[]),
            ws_in_text: counter(
                "voxd_ws_messages_total",
                &[("direction", "in"), ("kind", "text")],
            ),
            ws_in_binary: counter(
                "voxd_ws_messages_total",
                &[("direction", "in"), ("kind", "binary")],
            ),
            ws_out_text: counter(
                "voxd_ws_messages_total",
                &[("direction", "out"), ("kind", "text")],
            ),
            ws_out_binary: counter(
                "voxd_ws_messages_total",
                &[("direction", "out"), ("kind", "binary")],
            ),
            audio_in_bytes: counter("voxd_audio_bytes_total", &[("direction", "in")]),
            audio_out_bytes: counter("voxd_audio_bytes_total", &[("direction", "out")]),
            recorder,
            handle,
        }
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        self.handle.render()
    }

    /// Drains histogram samples into their buckets; run periodically so that memory stays flat
    /// when nobody scrapes.
    pub fn upkeep(&self) {
        self.handle.run_upkeep();
    }

    /// A `/ws` upgrade refused by a quota; `reason` is the refusal's code.
    pub fn refused_by(&self, reason: &'static str) {
        self.recorder
            .register_counter(
                &key("voxd_sessions_refused_total", &[("reason", reason)]),
                &METADATA,
            )
            .increment(1);
    }

    /// A refused `/ws` upgrade.
    pub fn refused(&self, draining: bool) {
        if draining {
            self.refused_draining.increment(1);
        } else {
            self.refused_full.increment(1);
        }
    }

    /// A finished turn: its status and its waterfall, as sent in `response_done`.
    pub fn turn_done(&self, status: ResponseStatus, t: &Timings) {
        let i = match status {
            ResponseStatus::Completed => 0,
            ResponseStatus::Interrupted => 1,
            ResponseStatus::Failed => 2,
        };
        self.turns[i].increment(1);
        let Some(end) = t.speech_end else { return };
        let since = |x: Option<voxd_core::Time>| x.map(|x| x.saturating_since(end).as_secs_f64());
        if let Some(s) = since(t.first_audio_sent) {
            self.ttft.record(s);
        }
        if let Some(s) = since(t.asr_done).filter(|s| *s > 0.0) {
            self.asr.record(s);
        }
        if let (Some(llm), Some(base)) = (t.llm_first_token, t.asr_done) {
            self.llm_first_token
                .record(llm.saturating_since(base).as_secs_f64());
        }
        if let (Some(tts), Some(base)) = (t.tts_first_audio, t.llm_first_token) {
            self.tts_first_audio
                .record(tts.saturating_since(base).as_secs_f64());
        }
        if status == ResponseStatus::Completed {
            if let Some(s) = since(t.done) {
                self.turn_total.record(s);
            }
        }
    }

    /// A tool call finished (`ok` false when it failed).
    pub fn tool_call(&self, tool: &str, ok: bool, elapsed: Duration) {
        let outcome = if ok { "ok" } else { "error" };
        let labels = vec![
            Label::new("tool", tool.to_owned()),
            Label::new("outcome", outcome),
        ];
        self.recorder
            .register_counter(&Key::from_parts("voxd_tool_calls_total", labels), &METADATA)
            .increment(1);
        let labels = vec![Label::new("tool", tool.to_owned())];
        self.recorder
            .register_histogram(
                &Key::from_parts("voxd_tool_latency_seconds", labels),
                &METADATA,
            )
            .record(elapsed.as_secs_f64());
    }

    /// A provider call failed.
    pub fn provider_error(&self, stage: Stage, provider: &str) {
        let labels = vec![
            Label::new("stage", stage.as_str()),
            Label::new("provider", provider.to_owned()),
        ];
        self.recorder
            .register_counter(
                &Key::from_parts("voxd_provider_errors_total", labels),
                &METADATA,
            )
            .increment(1);
    }

    /// A session's timer ran `d` after its deadline.
    pub fn timer_lag(&self, d: Duration) {
        self.timer_lag.record(d.as_secs_f64());
    }

    /// A session ended; `reason` is one of the fixed labels in docs/metrics.md.
    /// A resume was tried: `result` is `resumed`, `unknown` or `denied`.
    pub fn resume(&self, result: &'static str) {
        self.recorder
            .register_counter(&key("voxd_resumes_total", &[("result", result)]), &METADATA)
            .increment(1);
    }

    pub fn session_closed(&self, reason: &'static str) {
        self.recorder
            .register_counter(
                &key("voxd_sessions_closed_total", &[("reason", reason)]),
                &METADATA,
            )
            .increment(1);
    }

    /// A stage moved from provider `from` to `to` after a failure.
    pub fn fallback(&self, stage: Stage, from: &str, to: &str) {
        let labels = vec![
            Label::new("stage", stage.as_str()),
            Label::new("from", from.to_owned()),
            Label::new("to", to.to_owned()),
        ];
        self.recorder
            .register_counter(
                &Key::from_parts("voxd_provider_fallbacks_total", labels),
                &METADATA,
            )
            .increment(1);
    }

    /// A provider's circuit breaker opened (`open`) or closed again.
    pub fn circuit(&self, stage: Stage, provider: &str, open: bool) {
        let labels = vec![
            Label::new("stage", stage.as_str()),
            Label::new("provider", provider.to_owned()),
        ];
        self.recorder
            .register_gauge(
                &Key::from_parts("voxd_provider_circuit_open", labels.clone()),
                &METADATA,
            )
            .set(if open { 1.0 } else { 0.0 });
        if open {
            self.recorder
                .register_counter(
                    &Key::from_parts("voxd_provider_circuit_opened_total", labels),
                    &METADATA,
                )
                .increment(1);
        }
    }

    /// An HTTP request finished.
    pub fn http_request(&self, route: &str, status: u16, elapsed: Duration) {
        let labels = vec![
            Label::new("route", route.to_owned()),
            Label::new("status", status.to_string()),
        ];
        self.recorder
            .register_counter(
                &Key::from_parts("voxd_http_requests_total", labels),
                &METADATA,
            )
            .increment(1);
        let labels = vec![Label::new("route", route.to_owned())];
        self.recorder
            .register_histogram(
                &Key::from_parts("voxd_http_request_duration_seconds", labels),
                &METADATA,
            )
            .record(elapsed.as_secs_f64());
    }

    /// Adds a session's batched wire counts.
    pub fn add_wire(&self, w: &mut WireCounts) {
        self.ws_in_text.increment(w.in_text);
        self.ws_in_binary.increment(w.in_binary);
        self.ws_out_text.increment(w.out_text);
        self.ws_out_binary.increment(w.out_binary);
        self.audio_in_bytes.increment(w.audio_in_bytes);
        self.audio_out_bytes.increment(w.audio_out_bytes);
        *w = WireCounts::default();
    }
}

/// A session's WebSocket traffic since it last reported (plain integers: per frame, this is all
/// the accounting a session does).
#[derive(Debug, Default, Clone, Copy)]
pub struct WireCounts {
    /// Text messages received.
    pub in_text: u64,
    /// Binary messages received.
    pub in_binary: u64,
    /// Text messages sent.
    pub out_text: u64,
    /// Binary messages sent.
    pub out_binary: u64,
    /// Audio bytes received.
    pub audio_in_bytes: u64,
    /// Audio bytes sent.
    pub audio_out_bytes: u64,
}

impl WireCounts {
    /// Messages counted since the last report.
    pub fn messages(&self) -> u64 {
        self.in_text + self.in_binary + self.out_text + self.out_binary
    }
}

fn key(name: &'static str, labels: &[(&'static str, &'static str)]) -> Key {
    let labels: Vec<Label> = labels.iter().map(|(k, v)| Label::new(*k, *v)).collect();
    Key::from_parts(name, labels)
}

fn describe(r: &PrometheusRecorder) {
    let c = |name: &'static str, unit: Option<Unit>, help: &'static str| {
        r.describe_counter(
            KeyName::from_const_str(name),
            unit,
            SharedString::const_str(help),
        );
    };
    let h = |name: &'static str, help: &'static str| {
        r.describe_histogram(
            KeyName::from_const_str(name),
            Some(Unit::Seconds),
            SharedString::const_str(help),
        );
    };
    r.describe_gauge(
        KeyName::from_const_str("voxd_sessions_active"),
        None,
        SharedString::const_str("WebSocket sessions live now"),
    );
    r.describe_gauge(
        KeyName::from_const_str("voxd_sessions_max"),
        None,
        SharedString::const_str("The admission limit (server.max_sessions)"),
    );
    r.describe_gauge(
        KeyName::from_const_str("voxd_sessions_parked"),
        None,
        SharedString::const_str(
            "Sessions whose connection dropped, waiting for their client to resume them (counted in voxd_sessions_active)",
        ),
    );
    c(
        "voxd_resumes_total",
        None,
        "Resume attempts, by result: resumed, unknown (no such session waiting here), denied (wrong credential)",
    );
    c(
        "voxd_sessions_total",
        None,
        "WebSocket sessions admitted since start",
    );
    c(
        "voxd_sessions_refused_total",
        None,
        "WebSocket upgrades refused, by reason (full, draining)",
    );
    c(
        "voxd_turns_total",
        None,
        "Responses ended, by status (completed, interrupted, failed)",
    );
    h(
        "voxd_ttft_seconds",
        "Time to first audio: end of the user's turn to the first audio frame sent",
    );
    h(
        "voxd_stage_latency_seconds",
        "Latency of each pipeline stage (asr, llm_first_token, tts_first_audio)",
    );
    h(
        "voxd_turn_duration_seconds",
        "End of the user's turn to the end of playback, completed responses",
    );
    c(
        "voxd_interruptions_total",
        None,
        "Barge-ins that cancelled a response",
    );
    c(
        "voxd_false_alarms_total",
        None,
        "Barge-ins judged false alarms (the bot resumed)",
    );
    c(
        "voxd_tool_calls_total",
        None,
        "Tool calls, by tool and outcome (ok, error)",
    );
    h("voxd_tool_latency_seconds", "Tool call latency, by tool");
    h(
        "voxd_session_timer_lag_seconds",
        "How late a session's timer (paced audio, turn deadlines) ran after its deadline: the session task's scheduling delay",
    );
    c(
        "voxd_provider_errors_total",
        None,
        "Provider failures, by stage and provider",
    );
    c(
        "voxd_sessions_closed_total",
        None,
        "Sessions ended, by reason (client_closed, idle_timeout, rate_limited, message_too_big, slow_consumer, shutdown, drained, send_failed, socket_error)",
    );
    c(
        "voxd_provider_fallbacks_total",
        None,
        "Requests moved to the next provider of a stage after a failure, by stage, from and to",
    );
    c(
        "voxd_provider_circuit_opened_total",
        None,
        "Times a provider's circuit breaker opened, by stage and provider",
    );
    r.describe_gauge(
        KeyName::from_const_str("voxd_provider_circuit_open"),
        None,
        SharedString::const_str(
            "1 while a provider's circuit breaker is open, by stage and provider",
        ),
    );
    c(
        "voxd_ws_messages_total",
        None,
        "WebSocket messages, by direction (in, out) and kind (text, binary)",
    );
    c(
        "voxd_audio_bytes_total",
        Some(Unit::Bytes),
        "PCM audio bytes, by direction (in, out)",
    );
    c(
        "voxd_http_requests_total",
        None,
        "HTTP requests, by route and status",
    );
    h(
        "voxd_http_request_duration_seconds",
        "HTTP request latency, by route",
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use voxd_core::Time;

    #[test]
    fn a_turn_feeds_the_histograms_with_its_waterfall() {
        let m = Metrics::new();
        let t = Timings {
            speech_end: Some(Time::from_millis(1000)),
            asr_done: Some(Time::from_millis(1050)),
            llm_first_token: Some(Time::from_millis(1150)),
            tts_first_audio: Some(Time::from_millis(1240)),
            first_audio_sent: Some(Time::from_millis(1240)),
            done: Some(Time::from_millis(3000)),
        };
        m.turn_done(ResponseStatus::Completed, &t);
        let text = m.render();
        assert!(
            text.contains("voxd_turns_total{status=\"completed\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("voxd_ttft_seconds_bucket{le=\"0.3\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("voxd_ttft_seconds_bucket{le=\"0.2\"} 0"),
            "{text}"
        );
        assert!(
            text.contains("voxd_stage_latency_seconds_bucket{stage=\"asr\",le=\"0.05\"} 1"),
            "{text}"
        );
        assert!(text.contains("# HELP voxd_ttft_seconds"), "{text}");
    }

    #[test]
    fn wire_counts_are_added_and_reset() {
        let m = Metrics::new();
        let mut w = WireCounts {
            in_binary: 50,
            audio_in_bytes: 32_000,
            ..WireCounts::default()
        };
        m.add_wire(&mut w);
        assert_eq!(w.messages(), 0);
        let text = m.render();
        assert!(
            text.contains("voxd_audio_bytes_total{direction=\"in\"} 32000"),
            "{text}"
        );
    }
}
