//! API keys and the Origin allow-list, over real sockets.

mod common;

use common::{fixture_bytes, Client, TestServer};
use serde_json::Value;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, http::HeaderValue};

const KEY: &str = "test-key-0123456789abcdef";

async fn refused(
    server: &TestServer,
    query: &str,
    header: Option<(&'static str, &str)>,
) -> (u16, Value) {
    let mut req = server.ws_url(query).into_client_request().unwrap();
    if let Some((k, v)) = header {
        req.headers_mut()
            .insert(k, HeaderValue::from_str(v).unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp.body().as_deref().map_or(Value::Null, |b| {
                serde_json::from_slice(b).unwrap_or(Value::Null)
            });
            (resp.status().as_u16(), body)
        }
        Ok(_) => panic!("the upgrade was accepted"),
        Err(e) => panic!("{e}"),
    }
}

async fn accepted(server: &TestServer, query: &str, header: Option<(&'static str, &str)>) {
    let mut req = server.ws_url(query).into_client_request().unwrap();
    if let Some((k, v)) = header {
        req.headers_mut()
            .insert(k, HeaderValue::from_str(v).unwrap());
    }
    let (ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .expect("accepted");
    drop(ws);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_guard_ws_and_rest_but_not_health() {
    let server = TestServer::start_with(&format!("[auth]\napi_keys = [\"{KEY}\"]\n")).await;
    let (status, body) = refused(&server, "", None).await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, body) = refused(&server, "?token=wrong-key-0000000000000", None).await;
    assert_eq!(status, 401);
    assert!(
        !body.to_string().contains("wrong-key"),
        "never echo a key: {body}"
    );
    accepted(&server, &format!("?token={KEY}"), None).await;
    accepted(
        &server,
        "",
        Some(("authorization", &format!("Bearer {KEY}"))),
    )
    .await;
    // Health stays open; /metrics too unless protect_metrics.
    assert_eq!(server.get("/health/ready").await.0, 200);
    assert_eq!(server.get("/metrics").await.0, 200);
    // REST takes the header.
    let r = server
        .transcribe(Some("audio/wav"), &fixture_bytes("weather.wav"))
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_can_come_from_the_environment_and_protect_metrics() {
    std::env::set_var(
        "VOXD_TEST_AUTH_KEYS",
        format!("other-key-0123456789ab,{KEY}"),
    );
    let server = TestServer::start_with(
        "[auth]\napi_keys_env = \"VOXD_TEST_AUTH_KEYS\"\nprotect_metrics = true\n",
    )
    .await;
    assert_eq!(server.get("/metrics").await.0, 401);
    let c = Client::connect(&server.ws_url(&format!("?token={KEY}"))).await;
    assert_eq!(c.ready["type"], "ready");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_origin_allow_list_refuses_other_browsers() {
    let server =
        TestServer::start_with("[auth]\nallowed_origins = [\"https://app.example.com\"]\n").await;
    let (status, body) = refused(&server, "", Some(("origin", "https://evil.example.net"))).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "origin_not_allowed");
    accepted(&server, "", Some(("origin", "https://app.example.com"))).await;
    // Not a browser: no Origin, no check. Keys are off by default.
    accepted(&server, "", None).await;
    server.stop().await;
}

/// A config with keys and a token secret in a file; returns the server and the secret.
async fn token_server(extra: &str) -> (TestServer, String) {
    let secret = "a-token-secret-for-tests-0123456789abcdef".to_owned();
    let dir = std::env::temp_dir().join(format!("voxd-token-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("secret");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    let server = TestServer::start_with(&format!(
        "[auth]\napi_keys = [\"{KEY}\"]\ntoken_secret_file = {:?}\ntoken_ttl_s = 60\n{extra}",
        file.display().to_string()
    ))
    .await;
    (server, secret)
}

async fn mint(server: &TestServer, credential: &str, body: &str) -> common::HttpResponse {
    let auth = format!("Bearer {credential}");
    common::http_request_with(
        server.addr,
        "POST",
        "/v1/tokens",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
        ],
        body.as_bytes(),
    )
    .await
}

/// Signs claims with `secret` the way any HS256 library would, for tokens voxd must refuse.
fn sign(secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_mints_short_lived_tokens_that_open_sessions() {
    let (server, secret) = token_server("").await;
    let r = mint(&server, KEY, "").await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["expires_in"], 60);
    let token = v["token"].as_str().unwrap().to_owned();
    assert!(!token.contains(KEY));
    // A browser opens /ws with the token in the query; a backend may send it as a header.
    let mut c = Client::connect(&server.ws_url(&format!("?token={token}"))).await;
    c.send(serde_json::json!({"type": "text", "text": "what about tomorrow"}))
        .await;
    assert_eq!(c.until("response_done").await["status"], "completed");
    accepted(
        &server,
        "",
        Some(("authorization", &format!("Bearer {token}"))),
    )
    .await;
    // A token cannot mint more tokens, and a request cannot outlive the cap.
    let r = mint(&server, &token, "").await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (403, "key_required".into())
    );
    let r = mint(&server, KEY, r#"{"ttl_s": 999999}"#).await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, "invalid_ttl".into())
    );
    assert_eq!(
        mint(&server, KEY, r#"{"ttl_s": 5}"#).await.json()["expires_in"],
        5
    );
    // Expired, forged and foreign tokens are refused before the upgrade.
    let now = jsonwebtoken::get_current_timestamp();
    let sub = v["token"].as_str().map(|_| {
        let payload = token.split('.').nth(1).unwrap();
        let json = base64_url_decode(payload);
        serde_json::from_slice::<Value>(&json).unwrap()["sub"].clone()
    });
    let sub = sub.unwrap();
    let expired = sign(
        &secret,
        &serde_json::json!({"sub": sub, "aud": "voxd", "iat": now - 600, "exp": now - 300}),
    );
    let forged = sign(
        "another-secret-0123456789abcdef-xyz",
        &serde_json::json!({"sub": sub, "aud": "voxd", "exp": now + 60}),
    );
    let other_audience = sign(
        &secret,
        &serde_json::json!({"sub": sub, "aud": "billing", "exp": now + 60}),
    );
    let unknown_key = sign(
        &secret,
        &serde_json::json!({"sub": "key-00000000", "aud": "voxd", "exp": now + 60}),
    );
    for bad in [expired, forged, other_audience, unknown_key] {
        let (status, body) = refused(&server, &format!("?token={bad}"), None).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (401, &Value::from("unauthorized"))
        );
    }
    server.stop().await;
}

fn base64_url_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes() {
        let v = ALPHABET.iter().position(|&a| a == c).unwrap() as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_need_a_configured_secret() {
    let server = TestServer::start_with(&format!("[auth]\napi_keys = [\"{KEY}\"]\n")).await;
    let r = mint(&server, KEY, "").await;
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (404, "tokens_disabled".into())
    );
    server.stop().await;
}

/// Per-IP and per-key quotas: concurrency refuses with 429 until a session ends; the rate
/// refuses past the burst with a Retry-After; both are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_ip_and_per_key_quotas_refuse_with_429() {
    let server = TestServer::start_with(&format!(
        "[auth]\napi_keys = [\"{KEY}\"]\n[quotas]\nper_ip_max_sessions = 2\nper_key_sessions_per_s = 0.01\nper_key_burst = 3\n"
    ))
    .await;
    let url = server.ws_url(&format!("?token={KEY}"));
    let a = Client::connect(&url).await;
    let _b = Client::connect(&url).await;
    let (status, body) = refused(&server, &format!("?token={KEY}"), None).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (429, &Value::from("ip_session_limit"))
    );
    a.close().await;
    let deadline = tokio::time::Instant::now() + common::PATIENCE;
    while server.state.sessions.active() != 1 {
        assert!(tokio::time::Instant::now() < deadline);
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The place is back, and the key's third session within its burst is admitted...
    let _c = Client::connect(&url).await;
    // ... but its fourth is over the key's rate, even with an IP place free.
    drop(_b);
    let mut req = server
        .ws_url(&format!("?token={KEY}"))
        .into_client_request()
        .unwrap();
    req.headers_mut()
        .insert("x-probe", HeaderValue::from_static("1"));
    let err = tokio_tungstenite::connect_async(req).await.unwrap_err();
    let tungstenite::Error::Http(resp) = err else {
        panic!("{err:?}")
    };
    // The IP place may not be free yet (the dropped client closes asynchronously): either
    // quota refuses, both with 429 and a Retry-After.
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    let metrics = server.get("/metrics").await.1;
    assert!(
        metrics.contains("voxd_sessions_refused_total{reason=\"ip_session_limit\"}"),
        "{metrics}"
    );
    server.stop().await;
}
