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
