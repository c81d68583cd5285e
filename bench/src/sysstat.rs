//! CPU time and resident memory of a process, read from `/proc` (Linux). Elsewhere, `None`.

/// Cumulative CPU time of process `pid` (`self` for this process), in seconds.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / clock_ticks())
}

/// Resident memory of process `pid`, in KiB.
pub fn rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The kernel's clock ticks per second for /proc times; 100 on every Linux voxd runs on.
fn clock_ticks() -> f64 {
    100.0
}

/// Measures a process's CPU use between two instants.
#[derive(Debug, Clone)]
pub struct CpuMeter {
    pid: String,
    cpu: Option<f64>,
    at: std::time::Instant,
}

impl CpuMeter {
    /// Starts measuring `pid`.
    pub fn start(pid: &str) -> Self {
        CpuMeter {
            pid: pid.to_owned(),
            cpu: cpu_seconds(pid),
            at: std::time::Instant::now(),
        }
    }

    /// CPU use since the start (or the last `lap`) as a percentage of one core, and restarts.
    pub fn lap(&mut self) -> Option<f64> {
        let now = cpu_seconds(&self.pid)?;
        let elapsed = self.at.elapsed().as_secs_f64();
        let pct = self
            .cpu
            .map(|before| (now - before) / elapsed.max(1e-6) * 100.0);
        self.cpu = Some(now);
        self.at = std::time::Instant::now();
        pct
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Linux always has /proc: there the figures must be read, never skipped.
    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        assert!(cpu_seconds("self").is_some_and(|s| s >= 0.0));
        assert!(rss_kib("self").unwrap() > 0);
        assert_eq!(cpu_seconds("no-such-process"), None);
        let mut m = CpuMeter::start("self");
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        assert!(m.lap().is_some_and(|pct| pct >= 0.0));
    }

    #[cfg(not(target_os = "linux"))]
    #[test]
    fn without_proc_there_are_no_figures() {
        assert_eq!(cpu_seconds("self"), None);
        assert_eq!(rss_kib("self"), None);
    }
}
