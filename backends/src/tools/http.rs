//! HTTP tools: the team's own API as a tool. `[tools.NAME] url = "https://..."`.
//!
//! A call POSTs the arguments as a JSON object to the tool's URL, with its configured headers and
//! an optional bearer key (from an environment variable or a file, never the config itself). A 2xx
//! answer is the result: its JSON, or its text when it does not say it is JSON. Anything else (a
//! non-2xx status, a connection failure, a timeout, a body that says it is JSON and is not)
//! is a `ProviderError::Failed` naming the tool, which the LLM sees as the tool's error; the
//! session goes on.
//!
//! No retry and no circuit breaker: a tool call can have effects (send an email, book a slot), so
//! voxd never repeats one on its own, and a failing tool is the model's to explain to the user
//! (it sees the error), not a reason to hide the tool from later turns. The HTTP client is pooled
//! per tool, so consecutive calls reuse the connection.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde::Deserialize;
use serde_json::Value;

use super::{clip, empty_object_schema, spec, Tool, ToolSpec};
use crate::http::ProxyUrl;
use crate::{BuildError, ProviderError};

/// The longest reply body kept, in bytes: a result is read back to the LLM, so it stays small.
const MAX_BODY_BYTES: usize = 256 * 1024;

/// `[tools.NAME]` with a `url`: an HTTP tool.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpToolConfig {
    /// What the tool does, for the model.
    pub description: String,
    /// The JSON schema of the arguments. Default: an object with no properties.
    #[serde(default = "empty_object_schema")]
    pub parameters: Value,
    /// Where the arguments are POSTed (`http://` or `https://`).
    pub url: String,
    /// Extra request headers (for example a tenant id). Not for secrets: use `api_key_env`.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// An environment variable holding a key, sent as `Authorization: Bearer KEY`.
    pub api_key_env: Option<String>,
    /// A file holding that key (relative to the config file).
    pub api_key_file: Option<PathBuf>,
    /// This tool's own deadline, in ms; the session's `timeouts.tool_ms` applies as well.
    /// Default: that one alone.
    pub timeout_ms: Option<u64>,
    /// A PEM file of CA certificates (relative to the config file) trusted for this tool beside
    /// the platform's roots. Default: none.
    pub ca_file: Option<PathBuf>,
    /// An HTTP proxy for this tool (`http://host:port`); without one, `HTTPS_PROXY`,
    /// `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` apply. Default: none.
    pub proxy: Option<ProxyUrl>,
}

/// A tool answered by an HTTP endpoint. See the module docs.
#[derive(Debug)]
pub struct HttpTool {
    spec: ToolSpec,
    url: reqwest::Url,
    headers: HeaderMap,
    timeout: Option<Duration>,
    client: reqwest::Client,
}

impl HttpTool {
    /// The tool called `name`; relative key files resolve against `base_dir`.
    ///
    /// # Errors
    /// `BuildError::Invalid` naming the key at fault, relative to the tool's table (`url`,
    /// `headers`, `api_key_env`, `timeout_ms`, `parameters`, `ca_file`, `proxy`).
    pub fn new(name: &str, config: HttpToolConfig, base_dir: &Path) -> Result<Self, BuildError> {
        let invalid = |key: &str, message: String| BuildError::Invalid {
            key: key.to_owned(),
            message,
        };
        let url = reqwest::Url::parse(&config.url)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https"))
            .ok_or_else(|| {
                invalid(
                    "url",
                    format!(
                        "expected an http:// or https:// URL, found {:?}",
                        config.url
                    ),
                )
            })?;
        let mut headers = HeaderMap::new();
        for (k, v) in &config.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|_| invalid("headers", format!("{k:?} is not a header name")))?;
            let value = HeaderValue::from_str(v).map_err(|_| {
                invalid(
                    "headers",
                    format!("the value of {k:?} is not a header value"),
                )
            })?;
            headers.insert(name, value);
        }
        if let Some(auth) = crate::http::authorization(
            "Bearer",
            config.api_key_env.as_deref(),
            config.api_key_file.as_deref(),
            base_dir,
        )? {
            headers.insert(AUTHORIZATION, auth);
        }
        if config.timeout_ms == Some(0) {
            return Err(invalid("timeout_ms", "must be above 0".into()));
        }
        Ok(HttpTool {
            spec: spec(name, &config.description, config.parameters)?,
            url,
            headers,
            timeout: config.timeout_ms.map(Duration::from_millis),
            client: crate::http::client(
                Duration::from_secs(5),
                config.ca_file.as_deref(),
                config.proxy.as_ref(),
                base_dir,
            )?,
        })
    }

    fn failed(&self, message: String) -> ProviderError {
        ProviderError::Failed {
            provider: self.spec.name.clone(),
            message,
        }
    }
}

#[async_trait]
impl Tool for HttpTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, arguments: Value) -> Result<Value, ProviderError> {
        let mut request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .json(&arguments);
        if let Some(t) = self.timeout {
            request = request.timeout(t);
        }
        let response = request.send().await.map_err(|e| {
            if e.is_timeout() {
                self.failed(format!(
                    "no answer from {} within {} ms",
                    self.url,
                    self.timeout.unwrap_or_default().as_millis()
                ))
            } else {
                crate::http::transport_error(&self.spec.name, &e)
            }
        })?;
        let status = response.status();
        let is_json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| {
                v.split(';')
                    .next()
                    .is_some_and(|t| t.trim().ends_with("json"))
            });
        let body = response
            .bytes()
            .await
            .map_err(|e| crate::http::transport_error(&self.spec.name, &e))?;
        let body = &body[..body.len().min(MAX_BODY_BYTES)];
        let text = String::from_utf8_lossy(body);
        if !status.is_success() {
            return Err(self.failed(format!("HTTP {status}: {}", clip(text.trim(), 300))));
        }
        if is_json {
            return serde_json::from_slice(body).map_err(|e| {
                self.failed(format!(
                    "the reply says it is JSON but is not ({e}): {}",
                    clip(text.trim(), 200)
                ))
            });
        }
        // Plain text: the result is the text itself; an empty 2xx body means it worked.
        Ok(match text.trim() {
            "" => serde_json::json!({"ok": true}),
            t => Value::String(t.to_owned()),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use axum::extract::State;
    use axum::http::{HeaderMap as Headers, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::post;
    use axum::{Json, Router};
    use serde_json::json;

    use super::*;
    use crate::tools::{ToolConfig, ToolRegistry};

    /// What the stub saw: the body and the `Authorization` and `X-Tenant` headers.
    type Seen = Arc<Mutex<Vec<(Value, Option<String>, Option<String>)>>>;

    async fn record(State(seen): State<Seen>, headers: Headers, Json(body): Json<Value>) {
        let header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        seen.lock()
            .unwrap()
            .push((body, header("authorization"), header("x-tenant")));
    }

    async fn stub() -> (String, Seen) {
        let seen: Seen = Arc::default();
        let router = Router::new()
            .route(
                "/ok",
                post(|s: State<Seen>, h: Headers, b: Json<Value>| async move {
                    let order = b.0["order"].clone();
                    record(s, h, b).await;
                    Json(json!({"order": order, "status": "shipped"}))
                }),
            )
            .route("/text", post(|| async { "It is 3 pm in Paris." }))
            .route(
                "/fail",
                post(|| async {
                    (StatusCode::INTERNAL_SERVER_ERROR, "database down").into_response()
                }),
            )
            .route(
                "/bad-json",
                post(|| async {
                    ([(CONTENT_TYPE, "application/json")], "{not json").into_response()
                }),
            )
            .route(
                "/slow",
                post(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .with_state(Arc::clone(&seen));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        (format!("http://{addr}"), seen)
    }

    fn tool(url: String, timeout_ms: Option<u64>) -> HttpTool {
        let config = HttpToolConfig {
            description: "Look up an order".into(),
            parameters: json!({"type": "object", "properties": {"order": {"type": "string"}}}),
            url,
            headers: BTreeMap::from([("X-Tenant".to_owned(), "acme".to_owned())]),
            api_key_env: None,
            api_key_file: None,
            timeout_ms,
            ca_file: None,
            proxy: None,
        };
        HttpTool::new("order_status", config, Path::new(".")).expect("valid")
    }

    fn message(e: ProviderError) -> String {
        match e {
            ProviderError::Failed { provider, message } => {
                assert_eq!(provider, "order_status", "the error names the tool");
                message
            }
            other => panic!("expected a tool failure, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_arguments_are_posted_as_json_and_the_json_reply_is_the_result() {
        let (base, seen) = stub().await;
        let dir = std::env::temp_dir().join(format!("voxd-http-tool-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key"), "tool-key-123\n").unwrap();
        let config = HttpToolConfig {
            api_key_file: Some("key".into()),
            ..HttpToolConfig {
                description: "d".into(),
                parameters: json!({"type": "object"}),
                url: format!("{base}/ok"),
                headers: BTreeMap::from([("X-Tenant".to_owned(), "acme".to_owned())]),
                api_key_env: None,
                api_key_file: None,
                timeout_ms: None,
                ca_file: None,
                proxy: None,
            }
        };
        let t = HttpTool::new("order_status", config, &dir).unwrap();
        let result = t.call(json!({"order": "123"})).await.unwrap();
        assert_eq!(result, json!({"order": "123", "status": "shipped"}));
        let seen = seen.lock().unwrap();
        assert_eq!(seen[0].0, json!({"order": "123"}));
        assert_eq!(seen[0].1.as_deref(), Some("Bearer tool-key-123"));
        assert_eq!(seen[0].2.as_deref(), Some("acme"));
    }

    #[tokio::test]
    async fn a_text_reply_is_the_result_as_a_string() {
        let (base, _) = stub().await;
        let result = tool(format!("{base}/text"), None)
            .call(json!({}))
            .await
            .unwrap();
        assert_eq!(result, json!("It is 3 pm in Paris."));
    }

    #[tokio::test]
    async fn a_500_is_a_tool_error_with_the_status_and_the_body() {
        let (base, _) = stub().await;
        let e = message(
            tool(format!("{base}/fail"), None)
                .call(json!({}))
                .await
                .unwrap_err(),
        );
        assert!(e.contains("500") && e.contains("database down"), "{e}");
    }

    #[tokio::test]
    async fn a_reply_that_says_json_and_is_not_is_a_tool_error() {
        let (base, _) = stub().await;
        let e = message(
            tool(format!("{base}/bad-json"), None)
                .call(json!({}))
                .await
                .unwrap_err(),
        );
        assert!(e.contains("not") && e.contains("{not json"), "{e}");
    }

    #[tokio::test]
    async fn the_tools_own_timeout_bounds_a_call() {
        let (base, _) = stub().await;
        let e = message(
            tool(format!("{base}/slow"), Some(200))
                .call(json!({}))
                .await
                .unwrap_err(),
        );
        assert!(e.contains("200 ms"), "{e}");
    }

    #[tokio::test]
    async fn an_unreachable_tool_is_a_tool_error() {
        // A port nothing listens on: bind, take the port, close.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let e = tool(format!("http://127.0.0.1:{port}/x"), None)
            .call(json!({}))
            .await
            .unwrap_err();
        assert!(e.to_string().contains("cannot connect"), "{e}");
    }

    #[test]
    fn a_table_with_a_url_is_an_http_tool_and_bad_keys_are_named() {
        let tools: BTreeMap<String, ToolConfig> = toml::from_str(
            "[order_status]\ndescription = \"d\"\nurl = \"http://127.0.0.1:9/x\"\n\
             [mocked]\ndescription = \"d\"\nresult = 1\n",
        )
        .unwrap();
        assert!(matches!(tools["order_status"], ToolConfig::Http(_)));
        assert!(matches!(tools["mocked"], ToolConfig::Mock(_)));
        let registry = ToolRegistry::from_config(&tools, Path::new(".")).unwrap();
        assert_eq!(registry.names(), ["mocked", "order_status"]);
        // A mock-only key in an HTTP tool is named.
        let e = toml::from_str::<BTreeMap<String, ToolConfig>>(
            "[t]\ndescription = \"d\"\nurl = \"http://x/\"\nresult = 1\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("result") && e.contains("HTTP tool"), "{e}");
        let bad_url = BTreeMap::from([(
            "t".to_owned(),
            ToolConfig::Http(HttpToolConfig {
                description: "d".into(),
                parameters: json!({"type": "object"}),
                url: "ftp://x".into(),
                headers: BTreeMap::new(),
                api_key_env: None,
                api_key_file: None,
                timeout_ms: None,
                ca_file: None,
                proxy: None,
            }),
        )]);
        let e = ToolRegistry::from_config(&bad_url, Path::new("."))
            .unwrap_err()
            .to_string();
        assert!(e.contains("t.url"), "{e}");
    }
}
