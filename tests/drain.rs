//! Graceful drain with a real process. SIGTERM turns /health/ready to 503 at once. For
//! `server.drain_grace_s` (the lame duck) new sessions are still admitted and served, and nobody
//! is told; a second SIGTERM ends the grace early. Then new sessions are refused, every live
//! session is told (`shutdown`), finishes its response and closes with 1001, and the process
//! exits 0. With `drain_grace_s = 0` admission closes at once.

mod common;
mod process;

use common::{Client, RemoteServer, PATIENCE};
use futures_util::StreamExt;
use process::Voxd;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::{self, Message};

/// Reads until the server's close frame: its code, and the events before it (with `c.log`'s).
async fn until_closed(c: &mut Client) -> (u16, Vec<Value>) {
    let mut events: Vec<Value> = c
        .log
        .iter()
        .filter_map(|i| match i {
            common::Item::Event(v) => Some(v.clone()),
            common::Item::Audio(_) => None,
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

/// The session was told once (`shutdown`, with at most `deadline_s` left), got `answers`
/// answers in all, each completed, and closed with 1001.
async fn told_answered_and_closed(c: &mut Client, answers: usize, deadline_s: u64) {
    let (code, events) = until_closed(c).await;
    assert_eq!(code, 1001, "{events:?}");
    let told: Vec<_> = events.iter().filter(|v| v["type"] == "shutdown").collect();
    assert_eq!(told.len(), 1, "{events:?}");
    let left = told[0]["deadline_ms"].as_u64().unwrap();
    assert!(left > 0 && left <= deadline_s * 1000, "{events:?}");
    let done: Vec<_> = events
        .iter()
        .filter(|v| v["type"] == "response_done")
        .collect();
    assert_eq!(done.len(), answers, "{events:?}");
    for d in done {
        assert_eq!(d["status"], "completed", "{d}");
    }
}

/// Polls `/health/ready` until it answers 503, and returns the body (bounded by `PATIENCE`).
async fn until_unready(server: &RemoteServer) -> Value {
    let polled = tokio::time::timeout(PATIENCE, async {
        loop {
            let (status, body) = server.get("/health/ready").await;
            if status == 503 {
                return serde_json::from_str::<Value>(&body).unwrap();
            }
            assert_eq!(status, 200, "{body}");
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await;
    polled.expect("/health/ready turned 503 after SIGTERM")
}

/// The events of one answer, from `text` to its `response_done`, which is returned; none of
/// them may be `shutdown`.
async fn answer_untold(c: &mut Client, text: &str) -> Value {
    c.send(json!({"type": "text", "text": text})).await;
    let done = c.until("response_done").await;
    assert!(
        c.events("shutdown").is_empty(),
        "nobody is told during the grace: {:?}",
        c.events("shutdown")
    );
    done
}

async fn refused_503(url: &str) -> bool {
    match tokio_tungstenite::connect_async(url).await {
        Err(tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 503, "{resp:?}");
            true
        }
        Err(e) => panic!("expected a 503 or an upgrade, got {e:?}"),
        Ok(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_grace_sigterm_refuses_at_once_drains_then_exits_zero() {
    let voxd = Voxd::start(
        "drain-nograce",
        "[server]\ndrain_grace_s = 0\ndrain_timeout_s = 20\n",
    )
    .await;
    let server = voxd.http();

    let mut c = Client::connect(&voxd.ws_url()).await;
    c.send(json!({"type": "text", "text": "what about tomorrow"}))
        .await;
    c.until("audio_start").await;

    voxd.terminate();

    // Draining: not ready, and new sessions are refused, while the listener stays open. The
    // notice is sent after admission closed.
    c.until("shutdown").await;
    let (status, body) = server.get("/health/ready").await;
    assert_eq!(status, 503);
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["status"], "draining", "{body}");
    assert_eq!(body["admitting"], false, "{body}");
    assert!(
        refused_503(&voxd.ws_url()).await,
        "a new session was admitted"
    );
    // The answer in progress finishes, then the session closes with 1001.
    told_answered_and_closed(&mut c, 1, 20).await;
    let exit = voxd.exit_status().await;
    assert!(exit.success(), "{exit:?}");
}

/// The grace is long (it never ends by itself here); the second SIGTERM ends it, so what happens
/// during it and after it is decided by the test's own steps, not by a clock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lame_duck_admits_and_serves_until_the_grace_ends_then_drains_everyone_alike() {
    let voxd = Voxd::start(
        "drain-lameduck",
        "[server]\ndrain_grace_s = 600\ndrain_timeout_s = 20\n",
    )
    .await;
    let server = voxd.http();

    let mut old = Client::connect(&voxd.ws_url()).await;
    old.send(json!({"type": "text", "text": "what about tomorrow"}))
        .await;
    old.until("audio_start").await;

    voxd.terminate();

    // Readiness fails at once, while admission stays open.
    let body = until_unready(&server).await;
    assert_eq!(body["status"], "draining", "{body}");
    assert_eq!(body["admitting"], true, "{body}");

    // A caller who arrives now (a balancer has not noticed yet) is admitted and fully served.
    let mut new = Client::connect(&voxd.ws_url()).await;
    let done = answer_untold(&mut new, "what about tomorrow").await;
    assert_eq!(done["status"], "completed", "{done}");
    // The older session's answer completes untold, and it may start another one.
    let done = old.until("response_done").await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(old.events("shutdown").is_empty(), "{:?}", old.log);
    old.send(json!({"type": "text", "text": "what's the weather like today"}))
        .await;
    old.until("audio_start").await;
    assert!(old.events("shutdown").is_empty(), "{:?}", old.log);
    assert_eq!(voxd.metric("voxd_sessions_refused_total").await, 0.0);

    // A second SIGTERM ends the grace: both sessions are told alike, with the drain's deadline
    // (its clock starts when the grace ends). The notice is sent after admission closed: from
    // then on new sessions are refused.
    voxd.terminate();
    new.until("shutdown").await;
    assert!(
        refused_503(&voxd.ws_url()).await,
        "admitted after the grace"
    );
    let (status, body) = server.get("/health/ready").await;
    assert_eq!(status, 503, "{body}");
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["admitting"], false, "{body}");
    assert_eq!(
        voxd.metric("voxd_sessions_refused_total{reason=\"draining\"}")
            .await,
        1.0
    );

    // The idle newcomer closes at once; the older one finishes its answer first.
    told_answered_and_closed(&mut new, 1, 20).await;
    told_answered_and_closed(&mut old, 2, 20).await;
    let exit = voxd.exit_status().await;
    assert!(exit.success(), "{exit:?}");
}

/// A short grace ends by itself. Callers admitted before it ended are told when it ends, like
/// everyone; the test polls for the first refusal and asserts no timing. A long answer in
/// progress keeps the draining process (and its listener) up meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_grace_ends_by_itself_and_then_admission_closes() {
    let voxd = Voxd::start(
        "drain-shortgrace",
        "[server]\ndrain_grace_s = 1\ndrain_timeout_s = 120\n",
    )
    .await;
    let server = voxd.http();
    let mut keeper = Client::connect(&voxd.ws_url()).await;
    keeper
        .send(json!({"type": "text", "text": "tell me a long story"}))
        .await;
    keeper.until("audio_start").await;
    voxd.terminate();
    until_unready(&server).await;

    let mut admitted = Vec::new();
    let refused = tokio::time::timeout(PATIENCE, async {
        loop {
            match tokio_tungstenite::connect_async(voxd.ws_url()).await {
                Err(tungstenite::Error::Http(resp)) => break resp.status(),
                Err(e) => panic!("expected a 503 or an upgrade, got {e:?}"),
                Ok((ws, _)) => admitted.push(ws),
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the grace ended and admission closed");
    assert_eq!(refused, 503);
    // Each caller admitted during the grace got `ready`, then `shutdown`, then 1001.
    for ws in admitted {
        let mut c = Client {
            ws,
            ready: Value::Null,
            log: Vec::new(),
        };
        assert_eq!(c.until("ready").await["type"], "ready");
        told_answered_and_closed(&mut c, 0, 120).await;
    }
    // The long answer need not play out: its client hangs up, and the process exits.
    keeper.until("shutdown").await;
    keeper.close().await;
    let exit = voxd.exit_status().await;
    assert!(exit.success(), "{exit:?}");
}
