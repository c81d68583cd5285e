//! The demo page and its client, `/voxd.js`: how the binary serves them, and the page itself in
//! real headless Chromium.
//!
//! - The assets: content types, caching (ETag, 304), the page's security headers, every file the
//!   page and its modules load is served, and `[server] demo_page = false` answers 404.
//! - The client's pure parts (PCM16 framing, resampling, the jitter buffer, the barge-in rules)
//!   under `node --test` (`web/tests/`).
//! - A spoken conversation in Chromium, driven over WebDriver by `tests/peers/browser.py`
//!   (selenium and chromedriver): the page starts itself (`/?autostart=1`), Chromium's fake
//!   microphone plays `fixtures/browser_talk.wav` (a question, then, while the long answer plays,
//!   "wait stop"), and the test checks the page, the server's metrics and the browser's console.
//! - With auth on, the page without a token says it needs one, and with `?token=` it connects.
//! - A dropped connection: a proxy in front of the server resets the page's session connection
//!   while the answer plays, and the page comes back to its session (`/voxd.js` resumes on 1006)
//!   and hears the whole answer once.
//!
//! Chromium, chromedriver, Python with selenium and Node are found on the machine (README,
//! "Test it"); without them these tests say SKIPPED, unless `VOXD_REQUIRE_PEERS=1` (CI) makes
//! that a failure.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::{TestServer, PATIENCE};
use serde_json::Value;
use voxd::Config;

/// Every file the demo serves, with its content type.
const ASSETS: [(&str, &str, &str); 6] = [
    ("/", "index.html", "text/html; charset=utf-8"),
    ("/demo.css", "demo.css", "text/css; charset=utf-8"),
    ("/demo.js", "demo.js", "text/javascript; charset=utf-8"),
    ("/voxd.js", "voxd.js", "text/javascript; charset=utf-8"),
    (
        "/voxd-audio.js",
        "voxd-audio.js",
        "text/javascript; charset=utf-8",
    ),
    (
        "/voxd-worklets.js",
        "voxd-worklets.js",
        "text/javascript; charset=utf-8",
    ),
];

/// The mock providers of the browser conversation. Chromium's audio processing (echo
/// cancellation, noise suppression, gain) changes the samples, so the mock ASR cannot recognise
/// the fixtures by fingerprint: it transcribes by length. The question (story.wav, 2.1 s of
/// speech; its utterance reaches the ASR as about 2.25 s of audio) gets the long story; the
/// barge-in (stop.wav, 1.1 s of speech, about 1.35 s of audio) gets "wait stop". The bound
/// between them is 1.8 s, far from both; the lengths are audio time, not wall-clock time.
const CONFIG: &str = r#"
[asr.mock]
latency_ms = 10
rules = [{ below_ms = 1800, text = "wait stop" }, { text = "tell me a long story about the sea" }]

[llm.mock]
first_token_ms = 20
token_interval_ms = 2
rules = [
  { keywords = ["story"], reply = "Once upon a time, a small lighthouse stood at the edge of a quiet sea. Every evening, its keeper climbed the winding stairs to light the great lamp. The waves below rolled in slowly, silver under the rising moon. Far out on the water, a little fishing boat was heading home." },
  { keywords = ["stop"], reply = "Okay, I've stopped. What would you like instead?" },
  { keywords = ["balance"], tool = "check_balance", arguments = { account = "checking" } },
]

[tts.mock]
first_audio_ms = 10
chars_per_second = 30.0
"#;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn required() -> bool {
    std::env::var("VOXD_REQUIRE_PEERS").as_deref() == Ok("1")
}

/// A missing tool: SKIPPED (and `None`), or a failure under `VOXD_REQUIRE_PEERS=1`.
fn missing<T>(test: &str, what: &str) -> Option<T> {
    assert!(
        !required(),
        "{what} is missing, and VOXD_REQUIRE_PEERS=1 requires it (README, \"Test it\")"
    );
    eprintln!("SKIPPED: {test}: {what} is missing (README, \"Test it\")");
    None
}

/// The program at the path in `env` when it is set, else the first of `names` on `PATH`.
fn program(env: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p)).filter(|p| p.is_file());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// Chromium and its chromedriver (`VOXD_CHROMIUM`, `VOXD_CHROMEDRIVER`, or on `PATH`), and the
/// Python that has selenium.
fn browser(test: &str) -> Option<(PathBuf, PathBuf, PathBuf)> {
    let Some(chromium) = program(
        "VOXD_CHROMIUM",
        &["chromium", "chromium-browser", "google-chrome"],
    ) else {
        return missing(test, "Chromium (apt-get install chromium chromium-driver)");
    };
    let Some(driver) = program("VOXD_CHROMEDRIVER", &["chromedriver"]) else {
        return missing(test, "chromedriver (apt-get install chromium-driver)");
    };
    let python = common::peer_python("import selenium", "selenium", test)?;
    Some((chromium, driver, python))
}

/// Runs `tests/peers/browser.py MODE ARGS...` against the server at `addr` and returns its
/// report.
async fn drive(
    addr: SocketAddr,
    tools: &(PathBuf, PathBuf, PathBuf),
    mode: &str,
    args: &[&str],
) -> Value {
    let (chromium, driver, python) = tools;
    let script = root().join("tests/peers/browser.py");
    let run = tokio::process::Command::new(python)
        .arg(&script)
        .arg(mode)
        .arg("--base")
        .arg(format!("http://{addr}"))
        .arg("--chromium")
        .arg(chromium)
        .arg("--chromedriver")
        .arg(driver)
        .args(args)
        .kill_on_drop(true)
        .output();
    // The script has its own, shorter, deadlines; this only guards against a hung browser.
    let out = tokio::time::timeout(PATIENCE * 6, run)
        .await
        .expect("the browser run hung")
        .expect("the browser driver runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the browser run failed:\n{stdout}\n{stderr}"
    );
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// The value of the metric line that starts with `series ` (0 when absent).
fn metric(metrics: &str, series: &str) -> f64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().unwrap())
}

/// The browser console's error lines.
fn console_errors(report: &Value) -> Vec<String> {
    report["console"]
        .as_array()
        .expect("the console was read")
        .iter()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn the_page_and_its_modules_are_served_with_their_types_and_cache_headers() {
    let server = TestServer::start().await;
    for (path, file, content_type) in ASSETS {
        let r = server.request("GET", path, None, &[]).await;
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(content_type), "{path}");
        assert_eq!(r.header("cache-control"), Some("no-cache"), "{path}");
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        // The modules may be imported from another origin; the page may not be framed by one.
        let cors = r.header("access-control-allow-origin");
        assert_eq!(
            cors,
            content_type.contains("javascript").then_some("*"),
            "{path}"
        );
        let on_disk = std::fs::read_to_string(root().join("web").join(file)).unwrap();
        assert_eq!(r.body, on_disk, "{path} is the file in web/");
        // The ETag revalidates: the same tag gets an empty 304, another tag the file.
        let etag = r.header("etag").expect("an ETag").to_owned();
        let again = common::http_request_with(
            server.addr,
            "GET",
            path,
            &[("If-None-Match", etag.as_str())],
            &[],
        )
        .await;
        assert_eq!(again.status, 304, "{path}");
        assert_eq!(again.body, "");
        assert_eq!(again.header("etag"), Some(etag.as_str()));
        let stale =
            common::http_request_with(server.addr, "GET", path, &[("If-None-Match", "\"0\"")], &[])
                .await;
        assert_eq!(stale.status, 200, "{path}");
    }
    let page = server.request("GET", "/", None, &[]).await;
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(page.header("referrer-policy"), Some("no-referrer"));
    server.stop().await;
}

/// What the page and each module load (`src`, `href`, `import ... from`, `new URL(...)`) is
/// served, so a file added to `web/` but not to the binary shows here.
#[tokio::test]
async fn everything_the_page_loads_is_served() {
    let server = TestServer::start().await;
    let served: Vec<&str> = ASSETS.iter().map(|(p, _, _)| *p).collect();
    let mut references = Vec::new();
    for (_, file, _) in ASSETS {
        let text = std::fs::read_to_string(root().join("web").join(file)).unwrap();
        for marker in ["src=\"", "href=\"", "from '", "new URL('"] {
            for piece in text.split(marker).skip(1) {
                let end = piece.find(['"', '\'']).unwrap();
                let r = &piece[..end];
                if r.starts_with("data:") || r.starts_with("/ws") || r.starts_with("/health") {
                    continue;
                }
                let path = format!("/{}", r.trim_start_matches("./").trim_start_matches('/'));
                references.push((file, path));
            }
        }
    }
    assert!(references.len() >= 6, "{references:?}");
    for (file, path) in references {
        assert!(
            served.contains(&path.as_str()),
            "{file} loads {path}, which is not served"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn demo_page_false_turns_the_page_and_the_client_off() {
    let server = TestServer::start_with("[server]\ndemo_page = false\n").await;
    for (path, _, _) in ASSETS {
        let (status, _) = server.get(path).await;
        assert_eq!(status, 404, "{path}");
    }
    assert_eq!(server.get("/health/live").await.0, 200);
    server.stop().await;
}

/// A browser cannot send a key when it navigates: the page is open, `/ws` is not.
#[tokio::test]
async fn with_auth_on_the_page_is_open_and_the_socket_is_not() {
    let server =
        TestServer::start_with("[auth]\napi_keys = [\"vk_browser_page_test_key_1\"]\n").await;
    assert_eq!(server.get("/").await.0, 200);
    assert_eq!(server.get("/voxd.js").await.0, 200);
    assert_eq!(server.get("/ws").await.0, 401);
    server.stop().await;
}

/// `web/tests/*.test.mjs` under `node --test`.
#[test]
fn the_clients_pure_parts_pass_their_node_tests() {
    const TEST: &str = "the_clients_pure_parts_pass_their_node_tests";
    let Some(node) = program("VOXD_NODE", &["node", "nodejs"]) else {
        return missing(TEST, "Node (apt-get install nodejs)").unwrap_or(());
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(root().join("web/tests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".test.mjs"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let out = Command::new(node)
        .arg("--test")
        .args(&files)
        .output()
        .expect("node runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "node --test failed:\n{stdout}\n{stderr}"
    );
    // The runner's summary: every test passed, and there were tests.
    assert!(stdout.contains("\n# fail 0"), "{stdout}");
    let passed = stdout
        .lines()
        .find_map(|l| l.strip_prefix("# pass "))
        .and_then(|n| n.trim().parse::<u32>().ok())
        .unwrap_or(0);
    assert!(passed >= 10, "{stdout}");
}

/// The page, in Chromium, with a microphone that plays a question and then, into the long answer,
/// "wait stop": the first answer is interrupted (the page shows what was heard and its speaker
/// dropped the rest) and the second completes, with its transcript, reply, time to first audio
/// and waterfall on the page, and the same turns in `/metrics`. No console errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoken_conversation_with_a_barge_in_in_chromium() {
    const TEST: &str = "a_spoken_conversation_with_a_barge_in_in_chromium";
    let Some(tools) = browser(TEST) else { return };
    let config = Config::from_toml(CONFIG, root()).expect("the test config is valid");
    let server = TestServer::start_config(config).await;
    let wav = root().join("fixtures/browser_talk.wav");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser");
    let report = drive(
        server.addr,
        &tools,
        "talk",
        &[
            "--wav",
            wav.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ],
    )
    .await;
    for shot in report["screenshots"].as_array().unwrap() {
        println!("screenshot: {}", shot.as_str().unwrap());
    }
    let saved = out.join("report.json");
    std::fs::write(&saved, serde_json::to_vec_pretty(&report).unwrap()).unwrap();
    println!("what the page showed: {}", saved.display());
    let page = &report["conversation"];
    let turns = page["turns"].as_array().unwrap();
    let dump = || serde_json::to_string_pretty(&report).unwrap();
    assert_eq!(report["title"], "voxd: talk to it");

    // The first answer: the question's transcript, the story, interrupted with what was heard.
    let interrupted = turns
        .iter()
        .find(|t| t["status"] == "interrupted")
        .unwrap_or_else(|| panic!("no turn was interrupted: {}", dump()));
    assert_eq!(
        interrupted["user"],
        "tell me a long story about the sea",
        "{}",
        dump()
    );
    assert_eq!(interrupted["user_final"], true);
    assert!(
        interrupted["bot"]
            .as_str()
            .unwrap()
            .starts_with("Once upon a time"),
        "{}",
        dump()
    );
    let heard = interrupted["heard"].as_str().unwrap_or_default();
    assert!(heard.starts_with("Interrupted."), "{}", dump());

    // The barge-in's own answer follows and completes, with its timing on the page.
    let answered = turns
        .iter()
        .find(|t| t["status"] == "completed" && t["turn"].as_u64() > interrupted["turn"].as_u64())
        .unwrap_or_else(|| panic!("no answer after the barge-in: {}", dump()));
    assert_eq!(answered["user"], "wait stop", "{}", dump());
    assert_eq!(
        answered["bot"],
        "Okay, I've stopped. What would you like instead?",
        "{}",
        dump()
    );
    assert!(answered["ttft_ms"].as_f64().unwrap() > 0.0, "{}", dump());
    let stages: Vec<&str> = answered["waterfall"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap())
        .collect();
    assert_eq!(stages, ["asr", "llm", "tts", "send"], "{}", dump());

    // The speaker paused on the barge-in and dropped what it held when the answer was cut; it
    // played audio of both answers.
    let events = &page["events"];
    assert!(events["playback_paused"].as_u64() >= Some(1), "{}", dump());
    assert!(events["interrupted"].as_u64() >= Some(1), "{}", dump());
    let speaker = &report["final"]["speaker"];
    assert!(speaker["played_ms"].as_f64().unwrap() > 0.0, "{}", dump());
    assert!(speaker["dropped_ms"].as_f64().unwrap() > 0.0, "{}", dump());

    // A typed question (the text box, from the keyboard) calls a tool; the page shows the call,
    // its result and the answer made of it.
    let typed = report["typed"]["turns"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["user"] == "what is my balance")
        .unwrap_or_else(|| panic!("the typed turn is missing: {}", dump()));
    assert_eq!(typed["status"], "completed", "{}", dump());
    let tool_lines: Vec<&str> = typed["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    assert_eq!(tool_lines.len(), 2, "{}", dump());
    assert!(
        tool_lines[0].starts_with("→ check_balance({\"account\":\"checking\"})"),
        "{}",
        dump()
    );
    assert!(
        tool_lines[1].starts_with("← {") && tool_lines[1].contains("1,234.56"),
        "{}",
        dump()
    );
    assert!(
        typed["bot"]
            .as_str()
            .unwrap()
            .starts_with("Your checking account balance is 1,234.56 dollars."),
        "{}",
        dump()
    );

    // The settings panel, used from the keyboard, reached the server.
    assert_eq!(report["apply_focused"], "apply", "{}", dump());
    assert!(
        report["settings"].as_str().unwrap().contains("voice en-us"),
        "{}",
        dump()
    );
    assert_eq!(
        report["phone"], false,
        "the page scrolls sideways at phone width"
    );

    // The server counted the same turns the page shows.
    let (_, metrics) = server.get("/metrics").await;
    let shown = report["final"]["turns"].as_array().unwrap();
    let count = |status: &str| shown.iter().filter(|t| t["status"] == status).count() as f64;
    assert!(count("completed") >= 1.0);
    assert_eq!(
        metric(&metrics, "voxd_turns_total{status=\"completed\"}"),
        count("completed"),
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "voxd_turns_total{status=\"interrupted\"}"),
        count("interrupted"),
        "{metrics}"
    );
    assert!(
        metric(&metrics, "voxd_interruptions_total") >= 1.0,
        "{metrics}"
    );
    assert!(metric(&metrics, "voxd_audio_bytes_total{direction=\"in\"}") > 0.0);
    let tool_calls = metrics.lines().find(|l| {
        l.starts_with("voxd_tool_calls_total{")
            && l.contains("tool=\"check_balance\"")
            && l.contains("outcome=\"ok\"")
    });
    assert!(tool_calls.is_some_and(|l| l.ends_with(" 1")), "{metrics}");

    let errors = console_errors(&report);
    assert!(errors.is_empty(), "console errors: {errors:#?}");
    server.stop().await;
}

/// With API keys on, the page without a token explains that it needs one; with `?token=` it
/// connects, and takes the token out of the address bar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auth_on_the_page_asks_for_a_token_and_connects_with_one() {
    const TEST: &str = "with_auth_on_the_page_asks_for_a_token_and_connects_with_one";
    const KEY: &str = "vk_browser_page_test_key_1";
    let Some(tools) = browser(TEST) else { return };
    let server = TestServer::start_with(&format!("[auth]\napi_keys = [\"{KEY}\"]\n")).await;
    let report = drive(server.addr, &tools, "refused", &["--token", KEY]).await;
    let refused = &report["without_token"];
    assert_eq!(refused["connection"], "closed");
    let notice = refused["notice"].as_str().unwrap();
    assert!(notice.contains("needs an API key or a token"), "{notice}");
    assert!(notice.contains("?token="), "{notice}");
    let open = &report["with_token"];
    assert_eq!(open["connection"], "open");
    assert_eq!(open["notice"], Value::Null);
    let url = open["url"].as_str().unwrap();
    assert!(
        !url.contains("token"),
        "the token stays in the address bar: {url}"
    );
    assert!(url.contains("autostart=1"), "{url}");
    // The refusal itself is the only error: Chromium reports the failed handshake and the 401
    // of the page's question to the server.
    for e in console_errors(&report) {
        let refusal = e.contains("401") || e.contains("HTTP Authentication failed");
        assert!(refusal, "an unexpected console error: {e}");
    }
    server.stop().await;
}

/// A TCP proxy in front of `target` that cuts the first `/ws` session connection (a reset both
/// ways, no close frame: what a network blip looks like to both ends) once `after` bytes went
/// from the server to the page. Every other connection, the resume included, passes whole.
async fn cutting_proxy(target: SocketAddr, after: usize) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let cut = Arc::new(AtomicBool::new(false));
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            tokio::spawn(forward(client, target, after, Arc::clone(&cut)));
        }
    });
    addr
}

async fn forward(mut client: TcpStream, target: SocketAddr, after: usize, cut: Arc<AtomicBool>) {
    let Ok(mut server) = TcpStream::connect(target).await else {
        return;
    };
    // The request line comes in the first read on loopback.
    let mut head = vec![0u8; 4096];
    let Ok(n) = client.read(&mut head).await else {
        return;
    };
    let request = String::from_utf8_lossy(&head[..n]);
    let watched = !cut.load(Ordering::SeqCst)
        && request.starts_with("GET /ws")
        && !request
            .lines()
            .next()
            .unwrap_or_default()
            .contains("resume=");
    if server.write_all(&head[..n]).await.is_err() {
        return;
    }
    let (mut client_in, mut client_out) = client.into_split();
    let (mut server_in, mut server_out) = server.into_split();
    let up = tokio::spawn(async move {
        let _ = tokio::io::copy(&mut client_in, &mut server_out).await;
        let _ = server_out.shutdown().await;
    });
    let mut buf = vec![0u8; 16 * 1024];
    let mut total = 0;
    loop {
        let n = match server_in.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if client_out.write_all(&buf[..n]).await.is_err() {
            break;
        }
        total += n;
        if watched && total >= after && !cut.swap(true, Ordering::SeqCst) {
            // A zero linger: closing resets the connection at once, on both sides.
            for socket in [client_out.as_ref(), server_in.as_ref()] {
                let _ = socket2::SockRef::from(socket).set_linger(Some(Duration::ZERO));
            }
            up.abort();
            let _ = up.await;
            return;
        }
    }
    let _ = client_out.shutdown().await;
}

/// Silence as a 16 kHz mono WAV: Chromium's fake microphone plays it, so that the only turn is
/// the typed one.
fn silent_wav(path: &Path, seconds: u32) {
    let data = 16_000 * 2 * seconds;
    let mut wav = Vec::with_capacity(44 + data as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + data).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes());
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // mono
    wav.extend_from_slice(&16_000u32.to_le_bytes());
    wav.extend_from_slice(&32_000u32.to_le_bytes());
    wav.extend_from_slice(&2u16.to_le_bytes());
    wav.extend_from_slice(&16u16.to_le_bytes());
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&data.to_le_bytes());
    wav.resize(44 + data as usize, 0);
    std::fs::write(path, wav).unwrap();
}

/// The page's connection is reset while the answer plays: `/voxd.js` resumes the session (the
/// server counts one resume), the answer completes, and the speaker played all of it, once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_resumes_in_chromium_and_the_answer_is_heard_once() {
    const TEST: &str = "a_dropped_connection_resumes_in_chromium_and_the_answer_is_heard_once";
    let Some(tools) = browser(TEST) else { return };
    let config = Config::from_toml(CONFIG, root()).expect("the test config is valid");
    let server = TestServer::start_config(config).await;
    // 2 s of the answer's audio (16 kHz PCM16), then the reset.
    let proxy = cutting_proxy(server.addr, 64_000).await;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser-resume");
    std::fs::create_dir_all(&dir).unwrap();
    let wav = dir.join("silence.wav");
    silent_wav(&wav, 2);
    let report = drive(proxy, &tools, "resume", &["--wav", wav.to_str().unwrap()]).await;
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_vec_pretty(&report).unwrap(),
    )
    .unwrap();
    let dump = || serde_json::to_string_pretty(&report).unwrap();
    let last = &report["final"];
    assert_eq!(last["resumes"], 1, "{}", dump());
    assert_eq!(last["connection"], "open", "{}", dump());
    let done = last["done"].as_array().unwrap();
    assert_eq!(done.len(), 1, "{}", dump());
    assert_eq!(done[0]["status"], "completed", "{}", dump());
    // Every sample of the answer was played, none twice: what the server sent is what the
    // speaker played (within a frame either way, for the speaker counts at its own rate).
    let sent_ms = done[0]["audio_ms"].as_f64().unwrap();
    let played_ms = last["speaker"]["played_ms"].as_f64().unwrap();
    assert!(sent_ms > 5_000.0, "{}", dump());
    assert!(
        (played_ms - sent_ms).abs() <= 40.0,
        "played {played_ms} ms of {sent_ms} ms: {}",
        dump()
    );
    assert_eq!(last["speaker"]["dropped_ms"], 0.0, "{}", dump());
    let (_, metrics) = server.get("/metrics").await;
    assert_eq!(
        metric(&metrics, "voxd_resumes_total{result=\"resumed\"}"),
        1.0
    );
    // The console shows the drop (the browser logs a failed WebSocket) and nothing else.
    let errors: Vec<String> = console_errors(&report)
        .into_iter()
        .filter(|e| !e.contains("WebSocket connection to"))
        .collect();
    assert!(errors.is_empty(), "{errors:?}");
    server.stop().await;
}
