//! `--fail-if 'ttft_p95_ms>2500,success_rate<0.99'`: conditions that make the run exit non-zero.
//!
//! A condition is `NAME OP NUMBER` with `OP` one of `>`, `>=`, `<`, `<=`, `==`. Names are the
//! report's figures: `success_rate`, `failures`, `connect_errors`, `turns`, `turns_per_s`,
//! `client_cpu_pct`, and `METRIC_STAT_ms` for `METRIC` in `ttft`, `total`, `connect`, `barge_in`,
//! `overhead`, `server_ttft`, `recovery_ttft` and `STAT` in `min`, `mean`, `p50`, `p95`, `p99`,
//! `max` (and `server_overhead`: the server's `ttft_ms` minus the pipeline minimum).

use std::fmt;

/// A comparison operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `==`
    Eq,
}

impl Op {
    fn holds(self, a: f64, b: f64) -> bool {
        match self {
            Op::Gt => a > b,
            Op::Ge => a >= b,
            Op::Lt => a < b,
            Op::Le => a <= b,
            Op::Eq => (a - b).abs() < 1e-9,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
            Op::Eq => "==",
        }
    }
}

/// One condition.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The figure's name.
    pub name: String,
    /// The operator.
    pub op: Op,
    /// The threshold.
    pub value: f64,
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.name, self.op.as_str(), self.value)
    }
}

/// A `--fail-if` that does not parse.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("--fail-if: {0}")]
pub struct ParseError(String);

const METRICS: &[&str] = &[
    "ttft",
    "total",
    "connect",
    "barge_in",
    "overhead",
    "server_overhead",
    "server_ttft",
    "recovery_ttft",
];
const STATS: &[&str] = &["min", "mean", "p50", "p95", "p99", "max"];
const PLAIN: &[&str] = &[
    "success_rate",
    "failures",
    "connect_errors",
    "turns",
    "turns_per_s",
    "client_cpu_pct",
];

/// Whether `name` is a figure the report has.
pub fn known(name: &str) -> bool {
    if PLAIN.contains(&name) {
        return true;
    }
    let Some(rest) = name.strip_suffix("_ms") else {
        return false;
    };
    STATS.iter().any(|s| {
        rest.strip_suffix(s)
            .and_then(|m| m.strip_suffix('_'))
            .is_some_and(|m| METRICS.contains(&m))
    })
}

/// Parses a comma-separated list of conditions.
///
/// # Errors
/// A `ParseError` naming the condition at fault and what is expected.
pub fn parse(text: &str) -> Result<Vec<Condition>, ParseError> {
    let mut out = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (pos, op, len) = [
            (">=", Op::Ge),
            ("<=", Op::Le),
            ("==", Op::Eq),
            (">", Op::Gt),
            ("<", Op::Lt),
        ]
        .iter()
        .find_map(|(s, op)| part.find(s).map(|p| (p, *op, s.len())))
        .ok_or_else(|| {
            ParseError(format!(
                "{part:?} has no operator; use NAME>N, NAME<N, >=, <= or =="
            ))
        })?;
        let name = part[..pos].trim();
        let value_text = part[pos + len..].trim();
        if !known(name) {
            return Err(ParseError(format!(
                "unknown figure {name:?}; use success_rate, failures, connect_errors, turns, turns_per_s, client_cpu_pct or METRIC_STAT_ms (METRIC: {}; STAT: {})",
                METRICS.join(", "),
                STATS.join(", ")
            )));
        }
        let value: f64 = value_text
            .parse()
            .map_err(|_| ParseError(format!("{value_text:?} in {part:?} is not a number")))?;
        out.push(Condition {
            name: name.to_owned(),
            op,
            value,
        });
    }
    Ok(out)
}

/// The conditions that hold, given a way to read a figure. A figure with no value (no samples)
/// does not trigger its condition.
pub fn violated(conds: &[Condition], figure: impl Fn(&str) -> Option<f64>) -> Vec<&Condition> {
    conds
        .iter()
        .filter(|c| figure(&c.name).is_some_and(|v| c.op.holds(v, c.value)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let c = parse("ttft_p95_ms>2500, success_rate<0.99").unwrap();
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].name, "ttft_p95_ms");
        assert_eq!(c[0].op, Op::Gt);
        assert_eq!(c[0].value, 2500.0);
        assert_eq!(c[1].op, Op::Lt);
        assert_eq!(c[1].to_string(), "success_rate<0.99");
    }

    #[test]
    fn two_character_operators_win() {
        let c = parse("overhead_p99_ms>=10,failures<=0,turns==3").unwrap();
        assert_eq!(
            c.iter().map(|c| c.op).collect::<Vec<_>>(),
            vec![Op::Ge, Op::Le, Op::Eq]
        );
    }

    #[test]
    fn mistakes_are_explained() {
        assert!(parse("ttft_p95_ms 2500")
            .unwrap_err()
            .0
            .contains("no operator"));
        assert!(parse("latency_p95_ms>1")
            .unwrap_err()
            .0
            .contains("unknown figure"));
        assert!(parse("ttft_p97_ms>1")
            .unwrap_err()
            .0
            .contains("unknown figure"));
        assert!(parse("ttft_p95_ms>fast")
            .unwrap_err()
            .0
            .contains("not a number"));
        assert_eq!(parse("").unwrap(), vec![]);
    }

    #[test]
    fn violations_need_a_value() {
        let c = parse("ttft_p95_ms>100,success_rate<0.99,barge_in_p99_ms>20").unwrap();
        let figure = |n: &str| match n {
            "ttft_p95_ms" => Some(150.0),
            "success_rate" => Some(1.0),
            _ => None,
        };
        let v = violated(&c, figure);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].name, "ttft_p95_ms");
    }
}
