//! Tools the language model may call, and the registry the session looks them up in.
//!
//! A `Tool` describes itself with a `ToolSpec` (name, description, JSON schema of its arguments),
//! which is what the LLM is offered, and answers a call with a JSON value. The `ToolRegistry` maps
//! names to tools and turns the LLM's raw argument text into a call, so a malformed call from the
//! model becomes a `ProviderError::InvalidRequest` naming the tool rather than a panic.
//!
//! The mock tools (`MockTool`) answer a fixed JSON value after a configured latency, optionally
//! failing at random; `default_mock_tools` is the demo set (`check_balance`, `send_email`).
//! Like every provider call, a tool call is cancelled by dropping its future.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{BuildError, ProviderError};

mod http;
mod mcp;

pub use http::{HttpTool, HttpToolConfig};
pub use mcp::{connect as connect_mcp, McpServerConfig};

/// The name used in errors about the registry itself (an unknown tool, unparseable arguments).
const REGISTRY_PROVIDER: &str = "tools";

/// The name mock tools report in their errors.
const MOCK_PROVIDER: &str = "mock";

/// What the LLM is told about a tool.
#[derive(Clone, Debug, PartialEq)]
pub struct ToolSpec {
    /// The tool's name, unique in its registry (`[A-Za-z0-9_-]`, at most 64 characters).
    pub name: String,
    /// What the tool does, for the model.
    pub description: String,
    /// The JSON schema of the tool's arguments (an object schema).
    pub parameters: Value,
}

/// A function the LLM may call.
#[async_trait]
pub trait Tool: Send + Sync + 'static {
    /// How the tool presents itself to the LLM.
    fn spec(&self) -> &ToolSpec;

    /// Runs the tool with already-parsed arguments (a JSON object). Dropping the future cancels
    /// the call.
    ///
    /// # Errors
    /// `ProviderError::InvalidRequest` when the arguments are unusable, `ProviderError::Failed`
    /// when the tool itself fails.
    async fn call(&self, arguments: Value) -> Result<Value, ProviderError>;
}

/// The tools available to a session, by name. Cloning is cheap (the tools are shared).
#[derive(Clone, Default)]
pub struct ToolRegistry {
    tools: HashMap<String, Arc<dyn Tool>>,
}

impl fmt::Debug for ToolRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ToolRegistry")
            .field("tools", &self.names())
            .finish()
    }
}

impl ToolRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a registry of `MockTool`s from their configuration (name → config, the table that
    /// holds one table per tool).
    ///
    /// # Errors
    /// `BuildError::Invalid` when a name is not a valid tool name, a `failure_rate` is outside
    /// `0..=1`, or `parameters` is not a JSON object schema. The key is relative to the table of
    /// all tools: `NAME` or `NAME.failure_rate`.
    pub fn from_mock_config(tools: &BTreeMap<String, MockToolConfig>) -> Result<Self, BuildError> {
        let mut registry = Self::new();
        for (name, config) in tools {
            let tool = MockTool::new(name, config.clone()).map_err(|e| e.in_table(name))?;
            registry.register(Arc::new(tool));
        }
        Ok(registry)
    }

    /// Builds a registry from `[tools.NAME]` tables of any kind (mock or HTTP); key files
    /// resolve against `base_dir`.
    ///
    /// # Errors
    /// As `from_mock_config`, and `HttpTool::new`'s errors, keyed `NAME.key`.
    pub fn from_config(
        tools: &BTreeMap<String, ToolConfig>,
        base_dir: &std::path::Path,
    ) -> Result<Self, BuildError> {
        let mut registry = Self::new();
        for (name, config) in tools {
            let tool: Arc<dyn Tool> = match config {
                ToolConfig::Mock(c) => {
                    Arc::new(MockTool::new(name, c.clone()).map_err(|e| e.in_table(name))?)
                }
                ToolConfig::Http(c) => Arc::new(
                    HttpTool::new(name, c.clone(), base_dir).map_err(|e| e.in_table(name))?,
                ),
            };
            registry.register(tool);
        }
        Ok(registry)
    }

    /// Adds `tool` under its spec's name, returning the tool it replaces, if any.
    pub fn register(&mut self, tool: Arc<dyn Tool>) -> Option<Arc<dyn Tool>> {
        self.tools.insert(tool.spec().name.clone(), tool)
    }

    /// The tool called `name`.
    pub fn get(&self, name: &str) -> Option<Arc<dyn Tool>> {
        self.tools.get(name).cloned()
    }

    /// The specs of all tools, sorted by name (a stable order keeps LLM prompts reproducible).
    pub fn specs(&self) -> Vec<ToolSpec> {
        let mut specs: Vec<ToolSpec> = self.tools.values().map(|t| t.spec().clone()).collect();
        specs.sort_by(|a, b| a.name.cmp(&b.name));
        specs
    }

    /// The names of all tools, sorted.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = self.tools.keys().map(String::as_str).collect();
        names.sort_unstable();
        names
    }

    /// The number of tools.
    pub fn len(&self) -> usize {
        self.tools.len()
    }

    /// Whether the registry has no tools.
    pub fn is_empty(&self) -> bool {
        self.tools.is_empty()
    }

    /// Calls the tool `name` with the LLM's argument text (a JSON object; empty text means `{}`).
    /// Dropping the future cancels the call.
    ///
    /// # Errors
    /// `ProviderError::InvalidRequest` when no tool is called `name` or the arguments are not a
    /// JSON object; otherwise whatever the tool returns.
    pub async fn call(
        &self,
        name: &str,
        arguments_json_text: &str,
    ) -> Result<Value, ProviderError> {
        let Some(tool) = self.tools.get(name) else {
            let known = self.names();
            let known = if known.is_empty() {
                "none".to_owned()
            } else {
                known.join(", ")
            };
            return Err(invalid_request(format!(
                "unknown tool `{name}` (known tools: {known})"
            )));
        };
        let text = arguments_json_text.trim();
        let arguments = if text.is_empty() {
            json!({})
        } else {
            serde_json::from_str::<Value>(text).map_err(|e| {
                invalid_request(format!(
                    "the arguments for tool `{name}` are not valid JSON ({e}): {}",
                    clip(text, 200)
                ))
            })?
        };
        if !arguments.is_object() {
            return Err(invalid_request(format!(
                "the arguments for tool `{name}` must be a JSON object, got: {}",
                clip(text, 200)
            )));
        }
        tool.call(arguments).await
    }
}

/// A tool's spec, checked: the name is 1 to 64 characters of `[A-Za-z0-9_-]` (what every LLM API
/// accepts; the key is empty: the tool's table itself), and `parameters` is a JSON object.
fn spec(name: &str, description: &str, parameters: Value) -> Result<ToolSpec, BuildError> {
    let name_ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !name_ok {
        return Err(BuildError::Invalid {
            key: String::new(),
            message: "a tool name is 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-'".into(),
        });
    }
    if !parameters.is_object() {
        return Err(BuildError::Invalid {
            key: "parameters".to_owned(),
            message:
                "expected a JSON schema object such as {\"type\":\"object\",\"properties\":{}}"
                    .into(),
        });
    }
    Ok(ToolSpec {
        name: name.to_owned(),
        description: description.to_owned(),
        parameters,
    })
}

fn invalid_request(message: String) -> ProviderError {
    ProviderError::InvalidRequest {
        provider: REGISTRY_PROVIDER.to_owned(),
        message,
    }
}

/// At most `max` characters of `text`, marked with "…" when cut (model output can be long).
fn clip(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// One `[tools.NAME]` table: an HTTP tool when it has a `url`, else a mock tool.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolConfig {
    /// A fixed answer after a fixed latency (demos, tests, load runs).
    Mock(MockToolConfig),
    /// The arguments POSTed to a URL.
    Http(HttpToolConfig),
}

impl<'de> Deserialize<'de> for ToolConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        // The table decides its kind by its keys, so each kind keeps its own unknown-key errors.
        let table = Value::deserialize(d)?;
        if table.get("url").is_some() {
            HttpToolConfig::deserialize(table)
                .map(ToolConfig::Http)
                .map_err(|e| D::Error::custom(format!("HTTP tool (it has a url): {e}")))
        } else {
            MockToolConfig::deserialize(table)
                .map(ToolConfig::Mock)
                .map_err(|e| D::Error::custom(format!("mock tool (no url): {e}")))
        }
    }
}

/// The configuration of one mock tool (`[tools.<name>]`-style tables keyed by the tool's name).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MockToolConfig {
    /// What the tool does, for the model.
    pub description: String,
    /// How long a call takes, in milliseconds. Default 300.
    #[serde(default = "default_tool_latency_ms")]
    pub latency_ms: u64,
    /// The JSON value every successful call returns.
    pub result: Value,
    /// The JSON schema of the arguments. Default: an object with no properties.
    #[serde(default = "empty_object_schema")]
    pub parameters: Value,
    /// The probability (0 to 1) that a call fails with an injected error. Default 0.
    #[serde(default)]
    pub failure_rate: f64,
}

fn default_tool_latency_ms() -> u64 {
    300
}

fn empty_object_schema() -> Value {
    json!({"type": "object", "properties": {}})
}

/// The demo tools: `check_balance` (300 ms) and `send_email` (1.5 s).
pub fn default_mock_tools() -> BTreeMap<String, MockToolConfig> {
    let check_balance = MockToolConfig {
        description: "Look up the balance of the user's bank account".to_owned(),
        latency_ms: 300,
        result: json!({"account": "checking", "balance": "1,234.56", "currency": "dollars"}),
        parameters: json!({
            "type": "object",
            "properties": {
                "account": {
                    "type": "string",
                    "description": "Which account, e.g. \"checking\" or \"savings\""
                }
            }
        }),
        failure_rate: 0.0,
    };
    let send_email = MockToolConfig {
        description: "Send an email on the user's behalf".to_owned(),
        latency_ms: 1500,
        result: json!({"status": "sent"}),
        parameters: json!({
            "type": "object",
            "properties": {
                "to": {"type": "string", "description": "The recipient's address"},
                "subject": {"type": "string", "description": "The subject line"},
                "body": {"type": "string", "description": "The message"}
            },
            "required": ["to", "subject", "body"]
        }),
        failure_rate: 0.0,
    };
    BTreeMap::from([
        ("check_balance".to_owned(), check_balance),
        ("send_email".to_owned(), send_email),
    ])
}

/// A tool that answers a fixed JSON value after a fixed latency, for demos and load tests.
#[derive(Debug, Clone)]
pub struct MockTool {
    spec: ToolSpec,
    latency: Duration,
    result: Value,
    failure_rate: f64,
    /// The `required` argument names of the schema, checked on every call.
    required: Vec<String>,
}

impl MockTool {
    /// A mock tool called `name`.
    ///
    /// # Errors
    /// `BuildError::Invalid` when `name` is not a valid tool name (`[A-Za-z0-9_-]`, 1 to 64
    /// characters; the key is empty: the tool's table itself), `failure_rate` is outside `0..=1`,
    /// or `parameters` is not a JSON object. Keys are relative to the tool's table.
    pub fn new(name: &str, config: MockToolConfig) -> Result<Self, BuildError> {
        if !(0.0..=1.0).contains(&config.failure_rate) {
            return Err(BuildError::Invalid {
                key: "failure_rate".to_owned(),
                message: format!(
                    "expected a probability between 0 and 1, got {}",
                    config.failure_rate
                ),
            });
        }
        let required = config
            .parameters
            .get("required")
            .and_then(Value::as_array)
            .map(|names| {
                names
                    .iter()
                    .filter_map(|n| n.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok(MockTool {
            spec: spec(name, &config.description, config.parameters)?,
            latency: Duration::from_millis(config.latency_ms),
            result: config.result,
            failure_rate: config.failure_rate,
            required,
        })
    }
}

#[async_trait]
impl Tool for MockTool {
    fn spec(&self) -> &ToolSpec {
        &self.spec
    }

    async fn call(&self, arguments: Value) -> Result<Value, ProviderError> {
        // Checked before the latency, as a real API rejects a malformed request at once.
        if let Some(missing) = self
            .required
            .iter()
            .find(|name| arguments.get(name.as_str()).is_none())
        {
            return Err(ProviderError::InvalidRequest {
                provider: REGISTRY_PROVIDER.to_owned(),
                message: format!("tool `{}` needs the argument `{missing}`", self.spec.name),
            });
        }
        tokio::time::sleep(self.latency).await;
        if self.failure_rate > 0.0 && fastrand::f64() < self.failure_rate {
            return Err(ProviderError::Failed {
                provider: MOCK_PROVIDER.to_owned(),
                message: format!("injected failure in tool `{}`", self.spec.name),
            });
        }
        Ok(self.result.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn demo_registry() -> ToolRegistry {
        ToolRegistry::from_mock_config(&default_mock_tools()).expect("the defaults are valid")
    }

    #[test]
    fn specs_are_sorted_by_name() {
        let registry = demo_registry();
        let names: Vec<String> = registry.specs().into_iter().map(|s| s.name).collect();
        assert_eq!(names, ["check_balance", "send_email"]);
        assert_eq!(registry.names(), ["check_balance", "send_email"]);
        assert!(registry.get("check_balance").is_some());
        assert!(registry.get("nope").is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn check_balance_answers_after_its_latency() {
        let registry = demo_registry();
        let start = Instant::now();
        let result = registry
            .call("check_balance", r#"{"account":"checking"}"#)
            .await
            .expect("the mock tool succeeds");
        assert!(start.elapsed() >= Duration::from_millis(300));
        assert_eq!(
            result,
            json!({"account": "checking", "balance": "1,234.56", "currency": "dollars"})
        );
    }

    #[tokio::test(start_paused = true)]
    async fn empty_argument_text_means_no_arguments() {
        let registry = demo_registry();
        assert!(registry.call("check_balance", "").await.is_ok());
    }

    #[tokio::test]
    async fn bad_json_is_an_invalid_request_naming_the_tool() {
        let err = demo_registry()
            .call("send_email", "{\"to\": ")
            .await
            .expect_err("malformed JSON");
        match err {
            ProviderError::InvalidRequest { message, .. } => {
                assert!(message.contains("send_email"), "{message}");
            }
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn non_object_arguments_are_an_invalid_request() {
        let err = demo_registry()
            .call("check_balance", "[1, 2]")
            .await
            .expect_err("an array is not an argument object");
        assert!(matches!(err, ProviderError::InvalidRequest { .. }));
    }

    #[tokio::test]
    async fn unknown_tool_is_an_invalid_request_listing_known_tools() {
        let err = demo_registry()
            .call("launch_rocket", "{}")
            .await
            .expect_err("no such tool");
        match err {
            ProviderError::InvalidRequest { message, .. } => {
                assert!(message.contains("launch_rocket"), "{message}");
                assert!(message.contains("check_balance"), "{message}");
            }
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn missing_required_argument_is_an_invalid_request() {
        let err = demo_registry()
            .call("send_email", r#"{"to":"a@example.com"}"#)
            .await
            .expect_err("subject and body are required");
        match err {
            ProviderError::InvalidRequest { message, .. } => {
                assert!(message.contains("subject"), "{message}");
            }
            other => panic!("expected InvalidRequest, got {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn failure_rate_one_always_fails() {
        let mut tools = default_mock_tools();
        tools
            .get_mut("check_balance")
            .expect("default tool")
            .failure_rate = 1.0;
        let err = ToolRegistry::from_mock_config(&tools)
            .expect("valid config")
            .call("check_balance", "{}")
            .await
            .expect_err("injected failure");
        assert!(matches!(err, ProviderError::Failed { .. }));
    }

    #[test]
    fn invalid_mock_config_is_a_build_error() {
        let mut tools = default_mock_tools();
        tools
            .get_mut("send_email")
            .expect("default tool")
            .failure_rate = 1.5;
        let err = ToolRegistry::from_mock_config(&tools).expect_err("rate above 1");
        assert!(
            err.to_string().starts_with("send_email.failure_rate: "),
            "{err}"
        );

        let mut tools = default_mock_tools();
        let config = tools.remove("send_email").expect("default tool");
        tools.insert("send email".into(), config);
        let err = ToolRegistry::from_mock_config(&tools).expect_err("a space in the name");
        assert!(err.to_string().starts_with("send email: "), "{err}");
    }

    #[test]
    fn mock_tool_config_deserializes_with_defaults() {
        let config: MockToolConfig =
            serde_json::from_value(json!({"description": "Say hi", "result": {"ok": true}}))
                .expect("minimal config");
        assert_eq!(config.latency_ms, 300);
        assert_eq!(config.failure_rate, 0.0);
        assert_eq!(config.parameters, empty_object_schema());

        let unknown = serde_json::from_value::<MockToolConfig>(
            json!({"description": "x", "result": 1, "latncy_ms": 5}),
        );
        assert!(unknown.is_err());
    }
}
