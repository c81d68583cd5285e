//! The report: per step, per scenario and overall figures; a table for people, JSON and CSV for
//! machines, and the figures `--fail-if` reads.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::session::{Scenario, TurnResult};
use crate::stats::{Metric, Summary};
use crate::{BenchArgs, BenchError};

/// Accumulated results of one step.
#[derive(Debug, Default)]
pub struct StepStats {
    pub(crate) connect: Metric,
    connect_errors: BTreeMap<String, u64>,
    broken: BTreeMap<String, u64>,
    scenarios: BTreeMap<Scenario, ScenarioStats>,
}

#[derive(Debug, Default)]
struct ScenarioStats {
    ok: u64,
    failed: u64,
    failures: BTreeMap<String, u64>,
    ttft: Metric,
    total: Metric,
    server_ttft: Metric,
    overhead: Metric,
    server_overhead: Metric,
    barge_in: Metric,
    recovery_ttft: Metric,
}

/// Failure reasons are grouped by their first words (counts stay readable).
fn reason_key(e: &str) -> String {
    e.split(':').next().unwrap_or(e).chars().take(60).collect()
}

impl StepStats {
    pub(crate) fn record(&mut self, scenario: Scenario, r: &TurnResult) {
        let s = self.scenarios.entry(scenario).or_default();
        match &r.error {
            None => s.ok += 1,
            Some(e) => {
                s.failed += 1;
                *s.failures.entry(reason_key(e)).or_default() += 1;
            }
        }
        if let Some(t) = r.ttft {
            s.ttft.record(t);
        }
        if let Some(t) = r.total {
            s.total.record(t);
        }
        if let Some(t) = r.server_ttft_ms {
            s.server_ttft.record_ms(t);
        }
        if let Some(t) = r.overhead_ms {
            s.overhead.record_ms(t);
        }
        if let Some(t) = r.server_overhead_ms {
            s.server_overhead.record_ms(t);
        }
        if let Some(t) = r.barge_in {
            s.barge_in.record(t);
        }
        if let Some(t) = r.recovery_ttft {
            s.recovery_ttft.record(t);
        }
    }

    pub(crate) fn connect_failed(&mut self, why: &str) {
        *self.connect_errors.entry(reason_key(why)).or_default() += 1;
    }

    pub(crate) fn broken(&mut self, why: &str) {
        *self.broken.entry(reason_key(why)).or_default() += 1;
    }

    /// The step's report.
    pub fn report(self, label: &str, concurrency: usize, elapsed_s: f64) -> StepReport {
        let mut all = AllMetrics::default();
        let mut scenarios = BTreeMap::new();
        let mut failures: BTreeMap<String, u64> = BTreeMap::new();
        let (mut ok, mut failed) = (0, 0);
        for (scenario, s) in &self.scenarios {
            ok += s.ok;
            failed += s.failed;
            for (k, v) in &s.failures {
                *failures
                    .entry(format!("{}: {k}", scenario.name()))
                    .or_default() += v;
            }
            all.ttft.merge(&s.ttft);
            all.total.merge(&s.total);
            all.server_ttft.merge(&s.server_ttft);
            all.overhead.merge(&s.overhead);
            all.server_overhead.merge(&s.server_overhead);
            all.barge_in.merge(&s.barge_in);
            all.recovery_ttft.merge(&s.recovery_ttft);
            scenarios.insert(
                scenario.name().to_owned(),
                ScenarioReport {
                    ok: s.ok,
                    failed: s.failed,
                    failures: s.failures.clone(),
                    figures: Figures::of(
                        [
                            &s.ttft,
                            &s.total,
                            &s.server_ttft,
                            &s.overhead,
                            &s.server_overhead,
                            &s.barge_in,
                            &s.recovery_ttft,
                        ],
                        None,
                    ),
                },
            );
        }
        for (k, v) in &self.broken {
            *failures
                .entry(format!("connection broke: {k}"))
                .or_default() += v;
        }
        let connect_errors: u64 = self.connect_errors.values().sum();
        for (k, v) in &self.connect_errors {
            *failures.entry(format!("connect: {k}")).or_default() += v;
        }
        let broken: u64 = self.broken.values().sum();
        let attempts = ok + failed + connect_errors + broken;
        let overall = Figures::of(
            [
                &all.ttft,
                &all.total,
                &all.server_ttft,
                &all.overhead,
                &all.server_overhead,
                &all.barge_in,
                &all.recovery_ttft,
            ],
            self.connect.summary(),
        );
        StepReport {
            label: label.to_owned(),
            concurrency,
            elapsed_s,
            turns_ok: ok,
            turns_failed: failed,
            connect_errors,
            broken_connections: broken,
            success_rate: if attempts == 0 {
                0.0
            } else {
                ok as f64 / attempts as f64
            },
            turns_per_s: (ok + failed) as f64 / elapsed_s.max(1e-9),
            failures,
            overall,
            scenarios,
            client_cpu_pct: None,
            server_cpu_pct: None,
            server_rss_kib_before: None,
            server_rss_kib_peak: None,
        }
    }
}

#[derive(Default)]
struct AllMetrics {
    ttft: Metric,
    total: Metric,
    server_ttft: Metric,
    overhead: Metric,
    server_overhead: Metric,
    barge_in: Metric,
    recovery_ttft: Metric,
}

/// The latency figures of a step or a scenario.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    /// Connect + `ready`.
    pub connect: Option<Summary>,
    /// End of speech → first audio byte (client).
    pub ttft: Option<Summary>,
    /// End of speech → `response_done` (client).
    pub total: Option<Summary>,
    /// `ttft_ms` from `response_done` (server).
    pub server_ttft: Option<Summary>,
    /// Client TTFT − pipeline minimum (simple queries).
    pub overhead: Option<Summary>,
    /// Server `ttft_ms` − pipeline minimum (simple queries).
    pub server_overhead: Option<Summary>,
    /// Barge-in → the answer held (`playback_paused`, or the protocol's own sign of it).
    pub barge_in: Option<Summary>,
    /// After an interruption: end of the new speech → the new answer's first audio.
    pub recovery_ttft: Option<Summary>,
}

impl Figures {
    /// From the metrics in the order ttft, total, server_ttft, overhead, server_overhead,
    /// barge_in, recovery_ttft.
    fn of(m: [&Metric; 7], connect: Option<Summary>) -> Figures {
        Figures {
            connect,
            ttft: m[0].summary(),
            total: m[1].summary(),
            server_ttft: m[2].summary(),
            overhead: m[3].summary(),
            server_overhead: m[4].summary(),
            barge_in: m[5].summary(),
            recovery_ttft: m[6].summary(),
        }
    }

    fn get(&self, metric: &str) -> Option<&Summary> {
        match metric {
            "connect" => self.connect.as_ref(),
            "ttft" => self.ttft.as_ref(),
            "total" => self.total.as_ref(),
            "server_ttft" => self.server_ttft.as_ref(),
            "overhead" => self.overhead.as_ref(),
            "server_overhead" => self.server_overhead.as_ref(),
            "barge_in" => self.barge_in.as_ref(),
            "recovery_ttft" => self.recovery_ttft.as_ref(),
            _ => None,
        }
    }
}

/// One scenario's results in a step.
#[derive(Debug, Clone, Serialize)]
pub struct ScenarioReport {
    /// Turns that succeeded.
    pub ok: u64,
    /// Turns that failed.
    pub failed: u64,
    /// Failure reasons and counts.
    pub failures: BTreeMap<String, u64>,
    /// Latencies.
    #[serde(flatten)]
    pub figures: Figures,
}

/// One step (or spike phase).
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// The step's name.
    pub label: String,
    /// Sessions.
    pub concurrency: usize,
    /// Wall time of the step.
    pub elapsed_s: f64,
    /// Turns that succeeded.
    pub turns_ok: u64,
    /// Turns that failed.
    pub turns_failed: u64,
    /// Sessions that could not connect.
    pub connect_errors: u64,
    /// Sessions whose connection broke.
    pub broken_connections: u64,
    /// ok / (turns + connect errors + broken connections).
    pub success_rate: f64,
    /// Turns finished per second.
    pub turns_per_s: f64,
    /// Every failure reason with its count.
    pub failures: BTreeMap<String, u64>,
    /// All scenarios together.
    pub overall: Figures,
    /// Per scenario.
    pub scenarios: BTreeMap<String, ScenarioReport>,
    /// The load tool's own CPU use, % of one core.
    pub client_cpu_pct: Option<f64>,
    /// The server's CPU use, % of one core (with `--server-pid`).
    pub server_cpu_pct: Option<f64>,
    /// The server's RSS at the start of the step, KiB.
    pub server_rss_kib_before: Option<u64>,
    /// The server's peak RSS during the step, KiB.
    pub server_rss_kib_peak: Option<u64>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was run.
    pub server: String,
    /// Load shape.
    pub mode: String,
    /// Explicit signals or server VAD.
    pub turn_detection: &'static str,
    /// Scenario weights.
    pub mix: BTreeMap<&'static str, f64>,
    /// Whether the overhead could be computed (a mock config was found).
    pub overhead_known: bool,
    /// Wall time of the run.
    pub duration_s: f64,
    /// The load tool's CPU use over the run, % of one core.
    pub client_cpu_pct: Option<f64>,
    /// Stress mode: the largest concurrency that held the bounds.
    pub knee: Option<usize>,
    /// The steps.
    pub steps: Vec<StepReport>,
}

impl Report {
    pub(crate) fn new(args: &BenchArgs, overhead_known: bool) -> Report {
        Report {
            server: args.server.clone(),
            mode: format!("{:?}", args.mode).to_lowercase(),
            turn_detection: if args.server_vad {
                "server_vad"
            } else {
                "client_signals"
            },
            mix: [
                ("simple", args.simple),
                ("tools", args.tools),
                ("interruptions", args.interruptions),
                ("false_alarms", args.false_alarms),
            ]
            .into_iter()
            .collect(),
            overhead_known,
            duration_s: 0.0,
            client_cpu_pct: None,
            knee: None,
            steps: Vec::new(),
        }
    }

    /// A figure by `--fail-if` name, from the last step (the whole run in sustained mode).
    pub fn figure(&self, name: &str) -> Option<f64> {
        let step = self.steps.last()?;
        match name {
            "success_rate" => return Some(step.success_rate),
            "failures" => {
                return Some(
                    (step.turns_failed + step.connect_errors + step.broken_connections) as f64,
                )
            }
            "connect_errors" => return Some(step.connect_errors as f64),
            "turns" => return Some((step.turns_ok + step.turns_failed) as f64),
            "turns_per_s" => return Some(step.turns_per_s),
            "client_cpu_pct" => return self.client_cpu_pct,
            _ => {}
        }
        let rest = name.strip_suffix("_ms")?;
        let (metric, stat) = rest.rsplit_once('_')?;
        step.overall.get(metric)?.get(stat)
    }

    /// The conditions of `--fail-if` that hold.
    ///
    /// # Errors
    /// When the conditions do not parse.
    pub fn violations(&self, fail_if: &str) -> Result<Vec<String>, BenchError> {
        let conds = crate::failif::parse(fail_if).map_err(|e| BenchError::Usage(e.to_string()))?;
        Ok(crate::failif::violated(&conds, |n| self.figure(n))
            .into_iter()
            .map(|c| {
                format!(
                    "{c} (measured {})",
                    self.figure(&c.name)
                        .map_or("-".into(), |v| format!("{v:.3}"))
                )
            })
            .collect())
    }

    /// The report as a table for people.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "voxd bench: {} | {} | {} | mix simple {} tools {} interruptions {} false alarms {}",
            self.server,
            self.mode,
            self.turn_detection,
            self.mix["simple"],
            self.mix["tools"],
            self.mix["interruptions"],
            self.mix["false_alarms"]
        );
        let f = |s: &Option<Summary>, k: fn(&Summary) -> f64| {
            s.as_ref()
                .map_or("-".to_owned(), |s| format!("{:.1}", k(s)))
        };
        for step in &self.steps {
            let who = if step.concurrency == 0 {
                step.label.clone()
            } else {
                format!("{} sessions ({})", step.concurrency, step.label)
            };
            let _ = writeln!(
                out,
                "\n== {who} | {:.1} s | turns ok {} failed {} | connect errors {} | broken {} | success {:.2}% | {:.1} turns/s | client CPU {} | server CPU {} | server RSS {} -> {} KiB",
                step.elapsed_s,
                step.turns_ok,
                step.turns_failed,
                step.connect_errors,
                step.broken_connections,
                step.success_rate * 100.0,
                step.turns_per_s,
                step.client_cpu_pct.map_or("-".into(), |c| format!("{c:.0}%")),
                step.server_cpu_pct.map_or("-".into(), |c| format!("{c:.0}%")),
                step.server_rss_kib_before.map_or("-".into(), |r| r.to_string()),
                step.server_rss_kib_peak.map_or("-".into(), |r| r.to_string()),
            );
            let _ = writeln!(
                out,
                "{:<28} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                "metric (ms)", "n", "min", "mean", "p50", "p95", "p99", "max"
            );
            let mut row = |name: String, s: &Option<Summary>| {
                if let Some(sum) = s {
                    let _ = writeln!(
                        out,
                        "{:<28} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
                        name,
                        sum.count,
                        f(s, |x| x.min_ms),
                        f(s, |x| x.mean_ms),
                        f(s, |x| x.p50_ms),
                        f(s, |x| x.p95_ms),
                        f(s, |x| x.p99_ms),
                        f(s, |x| x.max_ms)
                    );
                }
            };
            let o = &step.overall;
            row("connect".into(), &o.connect);
            row("ttft (client)".into(), &o.ttft);
            row("ttft (server)".into(), &o.server_ttft);
            row("overhead (client)".into(), &o.overhead);
            row("overhead (server)".into(), &o.server_overhead);
            let total = if self.mode == "transcribe" {
                "request latency"
            } else {
                "total"
            };
            row(total.into(), &o.total);
            row("barge-in reaction".into(), &o.barge_in);
            row("recovery ttft".into(), &o.recovery_ttft);
            for (name, s) in step.scenarios.iter().filter(|_| self.mode != "transcribe") {
                row(
                    format!("{name}: ttft ({}/{} ok)", s.ok, s.ok + s.failed),
                    &s.figures.ttft,
                );
                row(format!("{name}: total"), &s.figures.total);
            }
            for (reason, n) in &step.failures {
                let _ = writeln!(out, "  failure: {reason} x{n}");
            }
        }
        if let Some(k) = self.knee {
            let _ = writeln!(out, "\nknee: {k} sessions held the bounds");
        }
        let _ = writeln!(
            out,
            "\nrun: {:.1} s, load tool CPU {} of one core",
            self.duration_s,
            self.client_cpu_pct
                .map_or("-".into(), |c| format!("{c:.0}%"))
        );
        out
    }

    /// Writes the JSON report.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write_json(&self, path: &Path) -> Result<(), BenchError> {
        let text = serde_json::to_string_pretty(self).expect("reports serialize");
        std::fs::write(path, text).map_err(|source| BenchError::Write {
            path: path.to_owned(),
            source,
        })
    }

    /// Writes one CSV row per step.
    ///
    /// # Errors
    /// When the file cannot be written.
    pub fn write_csv(&self, path: &Path) -> Result<(), BenchError> {
        std::fs::write(path, self.csv()).map_err(|source| BenchError::Write {
            path: path.to_owned(),
            source,
        })
    }

    /// The CSV text: a header, then one row per step.
    pub fn csv(&self) -> String {
        let metrics = [
            "connect",
            "ttft",
            "server_ttft",
            "overhead",
            "total",
            "barge_in",
            "recovery_ttft",
        ];
        let stats = ["p50", "p95", "p99", "max"];
        let mut out = String::from("label,concurrency,elapsed_s,turns_ok,turns_failed,connect_errors,broken,success_rate,turns_per_s,client_cpu_pct,server_cpu_pct,server_rss_kib_peak");
        for m in metrics {
            for s in stats {
                let _ = write!(out, ",{m}_{s}_ms");
            }
        }
        out.push('\n');
        for st in &self.steps {
            let opt = |x: Option<f64>| x.map_or(String::new(), |v| format!("{v:.3}"));
            let _ = write!(
                out,
                "{},{},{:.3},{},{},{},{},{:.5},{:.3},{},{},{}",
                st.label.replace(',', " "),
                st.concurrency,
                st.elapsed_s,
                st.turns_ok,
                st.turns_failed,
                st.connect_errors,
                st.broken_connections,
                st.success_rate,
                st.turns_per_s,
                opt(st.client_cpu_pct),
                opt(st.server_cpu_pct),
                st.server_rss_kib_peak
                    .map_or(String::new(), |v| v.to_string()),
            );
            for m in metrics {
                for s in stats {
                    let _ = write!(out, ",{}", opt(st.overall.get(m).and_then(|x| x.get(s))));
                }
            }
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn step() -> StepReport {
        let mut s = StepStats::default();
        for i in 0..10 {
            s.record(
                Scenario::Simple,
                &TurnResult {
                    ttft: Some(Duration::from_millis(200 + i)),
                    total: Some(Duration::from_millis(2000)),
                    overhead_ms: Some(1.0 + i as f64),
                    ..TurnResult::default()
                },
            );
        }
        s.record(
            Scenario::Tools,
            &TurnResult {
                error: Some("timed out".into()),
                ..TurnResult::default()
            },
        );
        s.connect.record(Duration::from_micros(800));
        s.report("10", 10, 2.0)
    }

    #[test]
    fn a_step_counts_turns_and_failures() {
        let st = step();
        assert_eq!(st.turns_ok, 10);
        assert_eq!(st.turns_failed, 1);
        assert!((st.success_rate - 10.0 / 11.0).abs() < 1e-9);
        assert_eq!(st.failures["tools: timed out"], 1);
        assert_eq!(st.overall.ttft.unwrap().count, 10);
        assert_eq!(st.scenarios["simple"].ok, 10);
        assert_eq!(st.turns_per_s, 5.5);
    }

    #[test]
    fn figures_for_fail_if_and_csv() {
        let mut r = Report::new(&BenchArgs::defaults(), true);
        r.steps.push(step());
        // HDR histograms keep 3 significant digits.
        assert!((r.figure("ttft_max_ms").unwrap() - 209.0).abs() < 0.25);
        assert!((r.figure("overhead_p50_ms").unwrap() - 5.0).abs() < 0.01);
        assert_eq!(r.figure("failures"), Some(1.0));
        assert_eq!(r.figure("barge_in_p99_ms"), None);
        let v = r.violations("success_rate<0.99,ttft_p99_ms>5000").unwrap();
        assert_eq!(v.len(), 1);
        assert!(v[0].starts_with("success_rate<0.99"));
        let csv = r.csv();
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].split(',').count(), lines[1].split(',').count());
        assert!(r.table().contains("ttft (client)"));
    }
}
