//! MCP servers as tools, against a real one: the official Python SDK's server
//! (`tests/peers/mcp_server.py`, PyPI `mcp`), over streamable HTTP and over stdio. Listing, a
//! call, a tool error, a server that goes away, a listing failure at start-up and a name clash.
//!
//! The server runs in the Python of `VOXD_TEST_PYTHON`, or `.venv/bin/python` (README, "Tests").
//! Without it the tests say SKIPPED, unless `VOXD_REQUIRE_PEERS=1` (CI) makes that a failure.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::TestServer;
use serde_json::json;
use voxd::{AppState, Config};

const TEST_CONFIG_RULES: &str = r#"
[[llm.mock.rules]]
keywords = ["order"]
tool = "lookup_order"
arguments = { order = "123" }

[[llm.mock.rules]]
keywords = ["refund"]
tool = "refund"
arguments = { order = "123" }
"#;

/// The Python that has the `mcp` SDK, or `None` (and a visible SKIPPED) without one.
fn python(test: &str) -> Option<PathBuf> {
    common::peer_python("import mcp.server.mcpserver", "the mcp SDK", test)
}

fn server_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/mcp_server.py")
}

/// The Python MCP server on a free port, killed on drop.
struct McpPeer {
    child: Child,
    port: u16,
}

impl McpPeer {
    async fn start(python: &Path) -> McpPeer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(python)
            .arg(server_script())
            .arg(port.to_string())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the MCP server");
        // Ready when it accepts connections (uvicorn binds after importing the SDK).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the MCP server did not listen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        McpPeer { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for McpPeer {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn state(extra: &str) -> Result<std::sync::Arc<AppState>, String> {
    let text = format!("{}\n{extra}", common::TEST_CONFIG);
    let config = Config::from_toml(&text, Path::new(env!("CARGO_MANIFEST_DIR"))).unwrap();
    AppState::new(config).await.map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_servers_tools_are_listed_called_and_fail_visibly() {
    let Some(python) = python("an_mcp_servers_tools_are_listed_called_and_fail_visibly") else {
        return;
    };
    let mut peer = McpPeer::start(&python).await;
    let server = TestServer::start_with(&format!(
        "{TEST_CONFIG_RULES}\n[mcp.shop]\nurl = \"{}\"\n",
        peer.url()
    ))
    .await;
    // Listed at start-up, beside the default tools.
    let names = server.state.providers.tools.names().join(",");
    assert!(
        names.contains("lookup_order")
            && names.contains("refund")
            && names.contains("shipping_rates"),
        "{names}"
    );
    let spec = server
        .state
        .providers
        .tool_specs
        .iter()
        .find(|s| s.name == "lookup_order")
        .unwrap()
        .clone();
    assert_eq!(spec.description, "Where a customer's order is.");
    assert_eq!(spec.parameters["properties"]["order"]["type"], "string");

    let mut c = server.connect().await;
    c.send(json!({"type": "text", "text": "where is my order"}))
        .await;
    let call = c.until("tool_call").await;
    assert_eq!(call["name"], "lookup_order");
    let result = c.until("tool_result").await;
    assert_eq!(result["result"]["status"], "shipped", "{result}");
    assert_eq!(result["result"]["order"], "123", "{result}");
    assert_eq!(c.until("response_done").await["status"], "completed");

    // The tool fails: its error is the result the model sees; the session goes on.
    c.send(json!({"type": "text", "text": "I want a refund"}))
        .await;
    let result = c.until("tool_result").await;
    let error = result["result"]["error"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(error.contains("closed today"), "{result}");
    assert_eq!(c.until("response_done").await["status"], "completed");

    // The server goes away: a call is a tool error, and the session still goes on.
    peer.kill();
    c.send(json!({"type": "text", "text": "where is my order now"}))
        .await;
    let result = c.until("tool_result").await;
    assert!(result["result"]["error"].is_string(), "{result}");
    assert_eq!(c.until("response_done").await["status"], "completed");
    c.send(json!({"type": "text", "text": "what about tomorrow"}))
        .await;
    assert_eq!(c.until("response_done").await["status"], "completed");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mcp_server_over_stdio_is_listed() {
    let Some(python) = python("an_mcp_server_over_stdio_is_listed") else {
        return;
    };
    let state = state(&format!(
        "[mcp.shop]\ncommand = [{:?}, {:?}, \"stdio\"]\nprefix = \"shop_\"\ntools = [\"lookup_order\"]\n",
        python.display().to_string(),
        server_script().display().to_string(),
    ))
    .await
    .unwrap();
    let names = state.providers.tools.names().join(",");
    assert!(names.contains("shop_lookup_order"), "{names}");
    assert!(!names.contains("refund"), "only the allowed tools: {names}");
    let result = state
        .providers
        .tools
        .call("shop_lookup_order", r#"{"order": "9"}"#)
        .await
        .unwrap();
    assert_eq!(result["status"], "shipped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_up_fails_on_an_unreachable_server_and_on_a_name_clash() {
    // Nothing listens there: start-up fails, naming the server's key.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let e = state(&format!(
        "[mcp.shop]\nurl = \"http://127.0.0.1:{port}/mcp\"\nconnect_timeout_ms = 3000\n"
    ))
    .await
    .err()
    .expect("refused");
    assert!(e.contains("mcp.shop.url"), "{e}");
    let e = state("[mcp.shop]\n").await.err().expect("refused");
    assert!(e.contains("mcp.shop") && e.contains("exactly one"), "{e}");

    let Some(python) = python("start_up_fails_on_an_unreachable_server_and_on_a_name_clash") else {
        return;
    };
    let peer = McpPeer::start(&python).await;
    let clash = format!(
        "[tools.refund]\ndescription = \"mock\"\nresult = 1\n[mcp.shop]\nurl = \"{}\"\n",
        peer.url()
    );
    let e = state(&clash).await.err().expect("refused");
    assert!(e.contains("mcp.shop.prefix") && e.contains("refund"), "{e}");
    let apart = format!("{clash}prefix = \"shop_\"\n");
    let state = state(&apart).await.unwrap();
    let names = state.providers.tools.names().join(",");
    assert!(
        names.contains("refund") && names.contains("shop_refund"),
        "{names}"
    );
}
