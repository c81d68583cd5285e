//! MCP servers as tools: `[mcp.NAME] url = "http://host/mcp"` (streamable HTTP), or
//! `command = ["prog", "arg"]` (a child process speaking MCP on its stdio).
//!
//! At start-up voxd connects to each server with the official Rust SDK (`rmcp`), lists its tools
//! and registers each as a `Tool`: the LLM is offered them beside the `[tools.*]` ones, and a call
//! goes to the server as an MCP `tools/call`. What happens when:
//! - **listing fails at start-up** (the server is down, or speaks no MCP): start-up fails with
//!   an error naming the server, as a provider that cannot be built does. A voice agent that
//!   silently lost its tools would answer wrongly instead of failing visibly.
//! - **two tools have one name** (two servers, or a server and a `[tools.*]` table): start-up
//!   fails naming both; `prefix` in a server's table renames its tools (`prefix = "crm_"`).
//! - **a call fails** (the tool says `isError`, the server answers with an error, or it is gone,
//!   mid-call or before): the call is a tool error the model sees, and the session goes on. Later
//!   calls try the server again: a streamable-HTTP server that restarts is reached by the next
//!   call (the client starts a new MCP session when the old one expired).
//!
//! A result is the tool's structured content when it gives one, else its text blocks (JSON when
//! the text is JSON).
//!
//! Over HTTP, each server has its own pooled client, built as every provider's is
//! (`http::client_builder`: `ca_file`, `proxy`, keep-alive with `TCP_NODELAY`), so calls reuse a
//! kept-alive connection instead of a TCP and TLS handshake each (rmcp's default client keeps
//! none). Redirects are followed as rmcp's own client follows them: 307 and 308 within the same
//! origin only, so the session id and key never go to another host.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use rmcp::model::CallToolRequestParams;
use rmcp::service::{ClientInitializeError, RunningService};
use rmcp::transport::streamable_http_client::{
    StreamableHttpClientTransportConfig, StreamableHttpError,
};
use rmcp::transport::DynamicTransportError;
use rmcp::transport::{StreamableHttpClientTransport, TokioChildProcess};
use rmcp::ServiceError;
use rmcp::{RoleClient, ServiceExt};
use serde::Deserialize;
use serde_json::Value;

use super::{clip, spec, Tool, ToolSpec};
use crate::http::ProxyUrl;
use crate::{BuildError, ProviderError};

/// The most redirects one request follows.
const MAX_REDIRECTS: usize = 10;

/// Follows 307 and 308 (which keep the request's body) within the origin of the first request;
/// any other redirect is handed back as the answer, as rmcp's own client does.
fn same_origin_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let keeps_body = matches!(
            attempt.status(),
            reqwest::StatusCode::TEMPORARY_REDIRECT | reqwest::StatusCode::PERMANENT_REDIRECT
        );
        let same_origin = attempt
            .previous()
            .first()
            .is_some_and(|first| first.origin() == attempt.url().origin());
        if !keeps_body || !same_origin {
            attempt.stop()
        } else if attempt.previous().len() > MAX_REDIRECTS {
            attempt.error(format!("more than {MAX_REDIRECTS} redirects"))
        } else {
            attempt.follow()
        }
    })
}

/// `[mcp.NAME]`: one MCP server.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpServerConfig {
    /// The server's streamable-HTTP endpoint (`http://` or `https://`, usually ending in `/mcp`).
    pub url: Option<String>,
    /// Or: a program and its arguments, started by voxd, speaking MCP on its stdin and stdout.
    pub command: Option<Vec<String>>,
    /// An environment variable holding a key, sent as `Authorization: Bearer KEY` (HTTP only).
    pub api_key_env: Option<String>,
    /// A file holding that key (relative to the config file).
    pub api_key_file: Option<PathBuf>,
    /// Prepended to each of the server's tool names, to keep them apart from other tools.
    #[serde(default)]
    pub prefix: String,
    /// Only these of the server's tools (their names on the server); default: all of them.
    pub tools: Option<Vec<String>>,
    /// How long connecting and listing may take at start-up, in ms. Default 10000.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// A PEM file of CA certificates (relative to the config file) trusted for this server beside
    /// the platform's roots (HTTP only). Default: none.
    pub ca_file: Option<PathBuf>,
    /// An HTTP proxy for this server (`http://host:port`, HTTP only); without one,
    /// `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` apply. Default: none.
    pub proxy: Option<ProxyUrl>,
}

fn default_connect_timeout_ms() -> u64 {
    10_000
}

type Client = RunningService<RoleClient, ()>;

/// Why `e` happened, as its sources say: rmcp's own message names its transport's Rust types,
/// which help no operator; the causes under it (the HTTP client's, the OS's) do.
fn cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut causes = Vec::new();
    let mut next = e.source();
    while let Some(s) = next {
        causes.push(s.to_string());
        next = s.source();
    }
    // Each layer often repeats the one under it; keep the distinct ones, outermost first.
    causes.dedup();
    if !causes.is_empty() {
        return causes.join(": ");
    }
    // No source chain: drop the bracketed Rust type names from the message itself.
    let mut text = e.to_string();
    while let Some(open) = text.find('[') {
        let Some(len) = text[open..].find(']') else {
            break;
        };
        if !text[open..open + len].contains("::") {
            break;
        }
        text.replace_range(open..=open + len, "");
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The TLS failure under an rmcp error, worded by `http::tls_failure`, or `None`. rmcp keeps
/// the HTTP client's error out of the `source()` chain (in a field named `error`, and as the
/// `Client` case of its HTTP error), so it is looked for by type.
fn tls_failure(e: &(dyn std::error::Error + 'static)) -> Option<String> {
    if let Some(why) = crate::http::tls_failure(e) {
        return Some(why);
    }
    let mut next = Some(e);
    while let Some(err) = next {
        let transport = match (
            err.downcast_ref::<ClientInitializeError>(),
            err.downcast_ref::<ServiceError>(),
        ) {
            (Some(ClientInitializeError::TransportError { error, .. }), _) => Some(error),
            (_, Some(ServiceError::TransportSend(error))) => Some(error),
            _ => err.downcast_ref::<DynamicTransportError>(),
        };
        if let Some(StreamableHttpError::Client(client)) = transport.and_then(|t| {
            t.error
                .downcast_ref::<StreamableHttpError<reqwest::Error>>()
        }) {
            return crate::http::tls_failure(client);
        }
        next = err.source();
    }
    None
}

/// One tool of an MCP server.
struct McpTool {
    spec: ToolSpec,
    /// The tool's name on its server.
    remote: String,
    server: String,
    client: Arc<Client>,
}

impl std::fmt::Debug for McpTool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("McpTool")
            .field("name", &self.spec.name)
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

/// Connects to the server `name` and returns its tools, ready to register. Relative key files
/// resolve against `base_dir`.
///
/// # Errors
/// `BuildError::Invalid` keyed relative to the server's table: `url`/`command` when the server
/// cannot be reached or listed (within `connect_timeout_ms`), `tools` when an allowed tool does
/// not exist, and the keys' own errors.
pub async fn connect(
    name: &str,
    config: &McpServerConfig,
    base_dir: &Path,
) -> Result<Vec<Arc<dyn Tool>>, BuildError> {
    let invalid = |key: &str, message: String| BuildError::Invalid {
        key: key.to_owned(),
        message,
    };
    let limit = Duration::from_millis(config.connect_timeout_ms.max(1));
    let (client, key) = match (&config.url, &config.command) {
        (Some(url), None) => {
            crate::http::install_crypto();
            let parsed = reqwest::Url::parse(url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https"))
                .ok_or_else(|| {
                    invalid(
                        "url",
                        format!("expected an http:// or https:// URL, found {url:?}"),
                    )
                })?;
            let http = crate::http::client_builder(
                limit,
                config.ca_file.as_deref(),
                config.proxy.as_ref(),
                base_dir,
            )?
            .redirect(same_origin_redirects());
            let http = crate::http::build(http)?;
            let mut transport = StreamableHttpClientTransportConfig::with_uri(parsed.as_str());
            if let Some(key) = crate::http::read_secret(
                config.api_key_env.as_deref(),
                config.api_key_file.as_deref(),
                base_dir,
            )? {
                transport = transport.auth_header(key);
            }
            let transport = StreamableHttpClientTransport::with_client(http, transport);
            (
                tokio::time::timeout(limit, ().serve(transport)).await,
                "url",
            )
        }
        (None, Some(command)) => {
            for (key, set) in [
                ("ca_file", config.ca_file.is_some()),
                ("proxy", config.proxy.is_some()),
            ] {
                if set {
                    return Err(invalid(
                        key,
                        "applies to a server reached by url, not to a command".into(),
                    ));
                }
            }
            let Some((program, args)) = command.split_first() else {
                return Err(invalid("command", "is empty; name a program".into()));
            };
            let mut cmd = tokio::process::Command::new(program);
            cmd.args(args).current_dir(base_dir);
            let transport = TokioChildProcess::new(cmd)
                .map_err(|e| invalid("command", format!("cannot start {program:?}: {e}")))?;
            (
                tokio::time::timeout(limit, ().serve(transport)).await,
                "command",
            )
        }
        _ => {
            return Err(invalid(
                "",
                "set exactly one of `url` (streamable HTTP) and `command` (stdio)".into(),
            ))
        }
    };
    let client = match client {
        Ok(Ok(c)) => Arc::new(c),
        Ok(Err(e)) => {
            let why = match (tls_failure(&e), &config.url) {
                (Some(tls), Some(url)) => {
                    let host = reqwest::Url::parse(url)
                        .map(|u| crate::http::host_port(&u))
                        .unwrap_or_default();
                    format!("TLS with {host} failed: {tls}")
                }
                _ => cause(&e),
            };
            return Err(invalid(key, format!("cannot start an MCP session: {why}")));
        }
        Err(_) => {
            return Err(invalid(
                key,
                format!("no MCP session within {} ms", limit.as_millis()),
            ))
        }
    };
    let listed = match tokio::time::timeout(limit, client.list_all_tools()).await {
        Ok(Ok(tools)) => tools,
        Ok(Err(e)) => return Err(invalid(key, format!("cannot list its tools: {e}"))),
        Err(_) => {
            return Err(invalid(
                key,
                format!("its tools were not listed within {} ms", limit.as_millis()),
            ))
        }
    };
    if let Some(allowed) = &config.tools {
        if let Some(missing) = allowed
            .iter()
            .find(|a| !listed.iter().any(|t| t.name == a.as_str()))
        {
            let offered: Vec<&str> = listed.iter().map(|t| t.name.as_ref()).collect();
            return Err(invalid(
                "tools",
                format!(
                    "the server has no tool {missing:?} (it offers: {})",
                    offered.join(", ")
                ),
            ));
        }
    }
    let mut tools: Vec<Arc<dyn Tool>> = Vec::new();
    for t in listed {
        if config
            .tools
            .as_ref()
            .is_some_and(|allowed| !allowed.iter().any(|a| a.as_str() == t.name))
        {
            continue;
        }
        let local = format!("{}{}", config.prefix, t.name);
        let parameters = Value::Object((*t.input_schema).clone());
        let description = t.description.as_deref().unwrap_or_default();
        let spec = spec(&local, description, parameters)
            .map_err(|e| invalid("", format!("its tool {:?}: {e}", t.name)))?;
        tools.push(Arc::new(McpTool {
            spec,
            remote: t.name.to_string(),
            server: name.to_owned(),
            client: Arc::clone(&client),
        }));
    }
    Ok(tools)
}

#[async_trait]
impl Tool for McpTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, arguments: Value) -> Result<Value, ProviderError> {
        let failed = |message: String| ProviderError::Failed {
            provider: self.spec.name.clone(),
            message,
        };
        let mut params = CallToolRequestParams::new(self.remote.clone());
        params.arguments = arguments.as_object().cloned();
        let result = self
            .client
            .call_tool(params)
            .await
            .map_err(|e| match tls_failure(&e) {
                Some(tls) => failed(format!(
                    "TLS with the MCP server {:?} failed: {tls}",
                    self.server
                )),
                None => failed(format!(
                    "the MCP server {:?} did not answer: {e}",
                    self.server
                )),
            })?;
        let text: Vec<&str> = result
            .content
            .iter()
            .filter_map(|c| c.as_text().map(|t| t.text.as_str()))
            .collect();
        let text = text.join("\n");
        if result.is_error == Some(true) {
            return Err(failed(clip(text.trim(), 500)));
        }
        if let Some(structured) = result.structured_content {
            return Ok(structured);
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }
}

#[cfg(test)]
mod tests {
    use super::cause;

    #[derive(Debug)]
    struct Opaque;

    impl std::fmt::Display for Opaque {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Transport [rmcp::Worker<reqwest::Client>] error: connection refused")
        }
    }

    impl std::error::Error for Opaque {}

    #[test]
    fn an_error_without_causes_loses_its_rust_type_names() {
        assert_eq!(cause(&Opaque), "Transport error: connection refused");
    }
}
