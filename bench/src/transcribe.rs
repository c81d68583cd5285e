//! `--mode transcribe`: `POST /v1/transcribe` at a fixed request rate (open loop: requests start
//! on schedule whether or not earlier ones have finished), over keep-alive HTTP/1.1 connections.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::report::StepStats;
use crate::session::{Scenario, TurnResult};

/// The `host:port` of a `ws://host:port/path` URL.
///
/// # Errors
/// When the URL is not `ws://` or `http://`.
pub fn authority(url: &str) -> Result<String, String> {
    let rest = url
        .strip_prefix("ws://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| format!("{url:?}: transcribe mode needs a ws:// or http:// server URL"))?;
    Ok(rest.split('/').next().unwrap_or(rest).to_owned())
}

/// One keep-alive connection.
struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    async fn open(addr: &str) -> Result<Conn, String> {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        Ok(Conn {
            reader: BufReader::new(tcp),
        })
    }

    /// Sends one request and reads the whole response; returns the status.
    async fn post(&mut self, head: &[u8], body: &[u8]) -> Result<u16, String> {
        let io = |e: std::io::Error| format!("socket: {e}");
        let stream = self.reader.get_mut();
        stream.write_all(head).await.map_err(io)?;
        stream.write_all(body).await.map_err(io)?;
        let mut line = String::new();
        self.reader.read_line(&mut line).await.map_err(io)?;
        let status: u16 = line
            .get(9..12)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("bad status line {line:?}"))?;
        let mut length = 0usize;
        loop {
            line.clear();
            if self.reader.read_line(&mut line).await.map_err(io)? == 0 {
                return Err("connection closed mid-response".into());
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v
                        .trim()
                        .parse()
                        .map_err(|_| "bad content-length".to_owned())?;
                }
            }
        }
        let mut body = vec![0u8; length];
        self.reader.read_exact(&mut body).await.map_err(io)?;
        Ok(status)
    }
}

/// Posts `wav` `rate` times a second for `duration`; results go to `stats` as "simple" turns
/// whose `total` is the request latency.
pub async fn run(
    addr: String,
    wav: Arc<[u8]>,
    rate: f64,
    duration: Duration,
    timeout: Duration,
    stats: Arc<Mutex<StepStats>>,
) {
    let head: Arc<[u8]> = format!(
        "POST /v1/transcribe HTTP/1.1\r\nHost: {addr}\r\nContent-Type: audio/wav\r\nContent-Length: {}\r\n\r\n",
        wav.len()
    )
    .into_bytes()
    .into();
    let idle: Arc<Mutex<Vec<Conn>>> = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let period = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let count = (duration.as_secs_f64() * rate).round() as u32;
    let mut tasks = Vec::with_capacity(count as usize);
    for k in 0..count {
        let due = started + period * k;
        tokio::time::sleep_until(due.into()).await;
        let (addr, wav, head, idle, stats) = (
            addr.clone(),
            Arc::clone(&wav),
            Arc::clone(&head),
            Arc::clone(&idle),
            Arc::clone(&stats),
        );
        tasks.push(tokio::spawn(async move {
            let conn = idle.lock().expect("not poisoned").pop();
            let outcome = tokio::time::timeout(timeout, async {
                let mut conn = match conn {
                    Some(c) => c,
                    None => Conn::open(&addr).await?,
                };
                let status = conn.post(&head, &wav).await?;
                Ok::<_, String>((status, conn))
            })
            .await;
            // Latency counts from when the request was due, so a backlog shows.
            let latency = due.elapsed();
            let result = match outcome {
                Ok(Ok((200, conn))) => {
                    idle.lock().expect("not poisoned").push(conn);
                    TurnResult {
                        total: Some(latency),
                        ..TurnResult::default()
                    }
                }
                Ok(Ok((status, _))) => TurnResult {
                    error: Some(format!("HTTP {status}")),
                    ..TurnResult::default()
                },
                Ok(Err(e)) => TurnResult {
                    error: Some(e),
                    ..TurnResult::default()
                },
                Err(_) => TurnResult {
                    error: Some("timed out".into()),
                    ..TurnResult::default()
                },
            };
            stats
                .lock()
                .expect("not poisoned")
                .record(Scenario::Simple, &result);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authority_of_a_server_url() {
        assert_eq!(
            authority("ws://127.0.0.1:8000/ws").unwrap(),
            "127.0.0.1:8000"
        );
        assert_eq!(authority("http://localhost:9/").unwrap(), "localhost:9");
        assert!(authority("wss://x/ws").is_err());
    }
}
