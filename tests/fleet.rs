//! Two voxd processes behind a real HAProxy, run from the shipped `deploy/haproxy.cfg` (its
//! addresses and check interval come from the environment). One instance is drained while callers
//! keep arriving: nobody is refused, every answer completes, and once HAProxy has taken the
//! draining instance out, new callers land on the other one.
//!
//! Needs `haproxy` (Debian's package). Without it the test prints `SKIPPED` and passes, unless
//! `VOXD_REQUIRE_PEERS=1`, when it fails.

mod common;
mod process;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::Arc;
use std::time::Duration;

use common::{Client, Item, PATIENCE};
use futures_util::StreamExt;
use process::Voxd;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;

/// Each instance's drain: a grace far longer than the test, ended by a second SIGTERM, so the
/// test's steps, not a clock, decide what happens in it.
const INSTANCE: &str = "[server]\ndrain_grace_s = 600\ndrain_timeout_s = 20\n";

/// `haproxy` from `PATH` or Debian's `/usr/sbin`, or `None` after saying why the test skips.
fn find_haproxy() -> Option<PathBuf> {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .chain([PathBuf::from("/usr/sbin")])
        .map(|d| d.join("haproxy"))
        .find(|p| p.is_file());
    if found.is_none() {
        let why = "haproxy not installed (apt-get install haproxy)";
        assert!(
            std::env::var("VOXD_REQUIRE_PEERS").as_deref() != Ok("1"),
            "{why}, and VOXD_REQUIRE_PEERS=1"
        );
        eprintln!("SKIPPED: {why}");
    }
    found
}

/// A free port on 127.0.0.1 (bound, read, released: HAProxy binds it next).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

/// HAProxy in the foreground with the shipped config, killed when dropped.
struct Haproxy {
    child: Child,
    front: SocketAddr,
    stats: SocketAddr,
    log: PathBuf,
}

impl Haproxy {
    fn start(binary: &Path, servers: [SocketAddr; 2]) -> Haproxy {
        let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/haproxy.cfg");
        let (front, stats) = (free_port(), free_port());
        let log =
            std::env::temp_dir().join(format!("voxd-fleet-haproxy-{}.log", std::process::id()));
        let child = Command::new(binary)
            .arg("-db") // foreground, no daemon
            .arg("-f")
            .arg(&config)
            .env("VOXD_BIND", front.to_string())
            .env("VOXD_STATS_BIND", stats.to_string())
            .env("VOXD_SERVER_1", servers[0].to_string())
            .env("VOXD_SERVER_2", servers[1].to_string())
            .env("VOXD_CHECK_INTER", "200ms")
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::options().append(true).open(&log).unwrap())
            .spawn()
            .expect("haproxy starts");
        Haproxy {
            child,
            front,
            stats,
            log,
        }
    }

    /// `voxd` backend's server statuses from HAProxy's CSV stats: (name, status) pairs.
    async fn statuses(&self) -> Option<Vec<(String, String)>> {
        // Not listening yet: HAProxy is starting.
        tokio::net::TcpStream::connect(self.stats).await.ok()?;
        let r = common::http_request(self.stats, "GET", "/stats;csv", None, &[]).await;
        if r.status != 200 {
            return None;
        }
        Some(
            r.body
                .lines()
                .filter(|l| l.starts_with("voxd,voxd"))
                .map(|l| {
                    let f: Vec<&str> = l.split(',').collect();
                    (f[1].to_owned(), f[17].to_owned())
                })
                .collect(),
        )
    }

    /// Polls the stats until `server` has `status` ("UP", "DOWN"), bounded by `PATIENCE`.
    async fn until(&mut self, server: &str, status: &str) {
        let polled = tokio::time::timeout(PATIENCE, async {
            loop {
                if let Ok(Some(exit)) = self.child.try_wait() {
                    panic!(
                        "haproxy exited ({exit}):\n{}",
                        std::fs::read_to_string(&self.log).unwrap_or_default()
                    );
                }
                if let Some(s) = self.statuses().await {
                    if s.iter().any(|(n, st)| n == server && st == status) {
                        return;
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        if polled.is_err() {
            panic!(
                "HAProxy never saw {server} {status}: {:?}\n{}",
                self.statuses().await,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
        }
    }

    fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.front)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::remove_file(&self.log).ok();
    }
}

/// A caller through the balancer: which instance took it (HAProxy's `X-Voxd-Server`) and its
/// session.
async fn call(url: &str) -> (String, Client) {
    let (ws, resp) = tokio::time::timeout(PATIENCE, tokio_tungstenite::connect_async(url))
        .await
        .expect("the upgrade was answered in time")
        .unwrap_or_else(|e| panic!("a caller was refused: {e:?}"));
    let server = resp
        .headers()
        .get("x-voxd-server")
        .expect("HAProxy names the instance")
        .to_str()
        .unwrap()
        .to_owned();
    let mut c = Client {
        ws,
        ready: Value::Null,
        log: Vec::new(),
    };
    c.ready = c.until("ready").await;
    (server, c)
}

/// One short turn: `text`, then its `response_done`, which must be completed.
async fn one_turn(c: &mut Client, text: &str) {
    c.send(json!({"type": "text", "text": text})).await;
    let done = c.until("response_done").await;
    assert_eq!(done["status"], "completed", "{done}");
}

/// Reads to the server's close frame: its code and every event of the session.
async fn until_closed(c: &mut Client) -> (u16, Vec<Value>) {
    let mut events: Vec<Value> = c
        .log
        .iter()
        .filter_map(|i| match i {
            Item::Event(v) => Some(v.clone()),
            Item::Audio(_) => None,
        })
        .collect();
    loop {
        match tokio::time::timeout(PATIENCE, c.ws.next()).await.unwrap() {
            Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), events),
            Some(Ok(Message::Text(t))) => events.push(serde_json::from_str(t.as_str()).unwrap()),
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn draining_one_instance_behind_haproxy_refuses_nobody_and_loses_nothing() {
    let Some(binary) = find_haproxy() else {
        return;
    };
    let a = Voxd::start("fleet-a", INSTANCE).await;
    let b = Voxd::start("fleet-b", INSTANCE).await;
    let mut lb = Haproxy::start(&binary, [a.addr, b.addr]);
    lb.until("voxd1", "UP").await;
    lb.until("voxd2", "UP").await;
    let url = lb.ws_url();

    // Callers in the middle of an answer, on both instances (leastconn spreads open sessions).
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    for _ in 0..4 {
        let (server, mut c) = call(&url).await;
        c.send(json!({"type": "text", "text": "what's the weather like today"}))
            .await;
        c.until("audio_start").await;
        match server.as_str() {
            "voxd1" => on_a.push(c),
            "voxd2" => on_b.push(c),
            other => panic!("unknown instance {other}"),
        }
    }
    assert!(
        !on_a.is_empty() && !on_b.is_empty(),
        "leastconn put {} on voxd1 and {} on voxd2",
        on_a.len(),
        on_b.len()
    );

    // Drain voxd1. Callers keep arriving, one every 20 ms, each for one short turn, until
    // HAProxy has seen voxd1 unready and a few more have arrived since.
    a.terminate();
    let arrivals: Arc<Mutex<Vec<(bool, String)>>> = Arc::default();
    let down = Arc::new(tokio::sync::Notify::new());
    let arriving = {
        let arrivals = Arc::clone(&arrivals);
        let url = url.clone();
        let down = Arc::clone(&down);
        tokio::spawn(async move {
            let mut calls = tokio::task::JoinSet::new();
            let mut after_down = None::<usize>;
            let mut seen_down = std::pin::pin!(down.notified());
            let mut n = 0;
            loop {
                if after_down.is_none() && futures_util::poll!(seen_down.as_mut()).is_ready() {
                    after_down = Some(n);
                }
                if after_down.is_some_and(|first| n >= first + 6) {
                    break;
                }
                // Whether HAProxy had taken voxd1 out when this caller set off.
                let late = after_down.is_some();
                let url = url.clone();
                let arrivals = Arc::clone(&arrivals);
                calls.spawn(async move {
                    let (server, mut c) = call(&url).await;
                    one_turn(&mut c, "what about tomorrow").await;
                    c.close().await;
                    arrivals.lock().await.push((late, server));
                });
                n += 1;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            while let Some(joined) = calls.join_next().await {
                joined.expect("a caller was refused or lost its answer");
            }
        })
    };
    lb.until("voxd1", "DOWN").await;
    down.notify_one();
    tokio::time::timeout(PATIENCE * 2, arriving)
        .await
        .expect("every arrival finished its turn")
        .expect("every arrival was admitted and answered");

    let arrivals = arrivals.lock().await.clone();
    let late: Vec<_> = arrivals.iter().filter(|(late, _)| *late).collect();
    assert!(late.len() >= 6, "{arrivals:?}");
    assert!(
        late.iter().all(|(_, server)| server == "voxd2"),
        "after HAProxy took voxd1 out, every new caller lands on voxd2: {arrivals:?}"
    );
    // Callers who arrived before HAProxy noticed were admitted by the lame duck and served there
    // (HAProxy retries a 503 elsewhere, so voxd1's own count says that none was refused).
    assert!(
        arrivals
            .iter()
            .any(|(late, server)| !late && server == "voxd1"),
        "no caller reached voxd1 during its grace: {arrivals:?}"
    );
    assert_eq!(a.metric("voxd_sessions_refused_total").await, 0.0);

    // The callers on voxd1 were served through the grace, untold; each starts another answer.
    for c in &mut on_a {
        let done = c.until("response_done").await;
        assert_eq!(done["status"], "completed", "{done}");
        c.send(json!({"type": "text", "text": "what's the weather like today"}))
            .await;
        c.until("audio_start").await;
    }
    // The grace ends (a second SIGTERM): voxd1's callers are told, their answers in progress
    // complete, and they close with 1001. voxd1 exits 0.
    a.terminate();
    for c in &mut on_a {
        let (code, events) = until_closed(c).await;
        assert_eq!(code, 1001, "{events:?}");
        assert_eq!(
            events.iter().filter(|v| v["type"] == "shutdown").count(),
            1,
            "{events:?}"
        );
        let done: Vec<_> = events
            .iter()
            .filter(|v| v["type"] == "response_done")
            .collect();
        assert_eq!(done.len(), 2, "{events:?}");
        assert!(done.iter().all(|d| d["status"] == "completed"), "{done:?}");
    }
    let exit = a.exit_status().await;
    assert!(exit.success(), "{exit:?}");

    // voxd2's callers never heard of it, and new callers still get through.
    for c in &mut on_b {
        let done = c.until("response_done").await;
        assert_eq!(done["status"], "completed", "{done}");
        assert!(c.events("shutdown").is_empty(), "{:?}", c.log);
    }
    let (server, mut c) = call(&url).await;
    assert_eq!(server, "voxd2");
    one_turn(&mut c, "what about tomorrow").await;
    assert_eq!(b.metric("voxd_sessions_refused_total").await, 0.0);
}

/// A caller whose TCP connection is cut mid-answer comes back through HAProxy with `?resume=`:
/// HAProxy sends it to the instance that holds its session (it learned which from the session's
/// `X-Voxd-Session` upgrade header), a wrong credential is refused there, and the right one gets
/// the rest of the answer, every sample once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_connection_resumes_on_its_own_instance_behind_haproxy() {
    let Some(binary) = find_haproxy() else {
        return;
    };
    let a = Voxd::start("resume-a", "").await;
    let b = Voxd::start("resume-b", "").await;
    let mut lb = Haproxy::start(&binary, [a.addr, b.addr]);
    lb.until("voxd1", "UP").await;
    lb.until("voxd2", "UP").await;
    let url = lb.ws_url();

    // The same answer, uninterrupted (both instances run the same mock providers).
    let reference = {
        let url = url.clone();
        tokio::spawn(async move {
            let (_, mut c) = call(&url).await;
            c.send(json!({"type": "text", "text": "tell me a story"}))
                .await;
            c.until("audio_start").await;
            let from = c.log.len();
            let done = c.until("response_done").await;
            assert_eq!(done["status"], "completed", "{done}");
            c.audio_from(from)
        })
    };
    let (server, mut c) = call(&url).await;
    let common::MidAnswer {
        id,
        token,
        turn,
        received: before,
    } = c.mid_answer("tell me a story", 16_000 * 2).await;
    c.cut();

    let resume = |token: &str, received: usize| {
        format!("{url}?resume={id}&resume_token={token}&received={turn}:{received}")
    };
    // HAProxy routes even a wrong credential to the session's instance, which refuses it.
    let deadline = tokio::time::Instant::now() + PATIENCE;
    let refused = loop {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the cut session was never parked"
        );
        match tokio_tungstenite::connect_async(resume("wrong", 0)).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) if r.status() == 404 => {
                // Not parked yet: the server has not seen the cut.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => break r,
            other => panic!(
                "a wrong credential must be refused: {:?}",
                other.map(|_| ())
            ),
        }
    };
    assert_eq!(refused.status(), 403);
    assert_eq!(
        refused.headers()["x-voxd-server"].to_str().unwrap(),
        server,
        "the resume reached the session's own instance"
    );

    let (back_server, mut back) = call(&resume(&token, before.len())).await;
    assert_eq!(back_server, server, "the session's own instance");
    let (_, heard) = back.hear_the_rest(&id, &before).await;
    let full = tokio::time::timeout(PATIENCE * 2, reference)
        .await
        .expect("the reference answer ended")
        .unwrap();
    assert_eq!(heard.len(), full.len(), "every sample, once");
    assert!(heard == full, "the uninterrupted answer's bytes");
}
