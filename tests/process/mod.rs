//! A real voxd process, for the tests that need one: signals, exit codes, a balancer in front.
//! It runs the built binary (`voxd serve`) with `TEST_CONFIG` plus the test's own TOML, written
//! to a temp dir, on `127.0.0.1:0`, and reads the address from its first line.
#![allow(dead_code)] // each test file uses a different part

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};

use crate::common::{RemoteServer, PATIENCE, TEST_CONFIG};

/// A `voxd serve` process, killed when dropped.
pub(crate) struct Voxd {
    child: Option<Child>,
    /// Where it listens.
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Voxd {
    /// Starts `voxd serve` with `TEST_CONFIG` plus `extra` (whole sections; TEST_CONFIG has
    /// `[asr.mock]`, `[llm.mock]` and `[tts.mock]`). `name` tells the temp dirs apart.
    pub(crate) async fn start(name: &str, extra: &str) -> Voxd {
        let dir = std::env::temp_dir().join(format!("voxd-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/transcripts.toml");
        let config = TEST_CONFIG.replace(
            "fixtures = \"fixtures/transcripts.toml\"",
            &format!("fixtures = {:?}", fixtures.display().to_string()),
        ) + "\n"
            + extra;
        let path = dir.join("config.toml");
        std::fs::write(&path, config).unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_voxd"))
            .args(["serve", "--listen", "127.0.0.1:0", "--config"])
            .arg(&path)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .spawn()
            .expect("the voxd binary starts");
        let stdout = child.stdout.take().unwrap();
        let line = tokio::time::timeout(
            PATIENCE,
            tokio::task::spawn_blocking(move || {
                let mut line = String::new();
                BufReader::new(stdout).read_line(&mut line).unwrap();
                line
            }),
        )
        .await
        .expect("voxd printed its address in time")
        .unwrap();
        let addr = line
            .trim()
            .strip_prefix("voxd listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
            .parse()
            .unwrap();
        Voxd {
            child: Some(child),
            addr,
            dir,
        }
    }

    /// Plain HTTP to it.
    pub(crate) fn http(&self) -> RemoteServer {
        RemoteServer { addr: self.addr }
    }

    /// Its `/ws` URL.
    pub(crate) fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// Sends it SIGTERM.
    pub(crate) fn terminate(&self) {
        let pid = self.child.as_ref().expect("running").id();
        let status = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {pid}: {status:?}");
    }

    /// Waits for it to exit (bounded by `PATIENCE`).
    pub(crate) async fn exit_status(mut self) -> ExitStatus {
        let mut child = self.child.take().unwrap();
        tokio::time::timeout(PATIENCE, tokio::task::spawn_blocking(move || child.wait()))
            .await
            .expect("voxd exited in time")
            .unwrap()
            .unwrap()
    }

    /// A counter or gauge from its `/metrics`, the sum over the series whose name and labels start
    /// with `series` (e.g. `voxd_sessions_refused_total{reason="draining"}`); 0 when absent.
    pub(crate) async fn metric(&self, series: &str) -> f64 {
        let (status, body) = self.http().get("/metrics").await;
        assert_eq!(status, 200, "{body}");
        body.lines()
            .filter(|l| {
                l.strip_prefix(series).is_some_and(|rest| {
                    series.ends_with('}') || rest.starts_with(' ') || rest.starts_with('{')
                })
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Voxd {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }
}
