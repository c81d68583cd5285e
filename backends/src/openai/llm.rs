//! The OpenAI language model: streams replies from the Chat Completions API
//! (`POST {base_url}/chat/completions` with `stream: true`), or from any server that speaks it
//! (llama.cpp's server, Ollama, vLLM, LM Studio, ...).
//!
//! It promises four things. Each piece of text is yielded as soon as its server-sent event is
//! complete, never held back for later ones. Tool calls, which the API streams as fragments keyed
//! by `index`, are yielded whole, once the model has finished (`finish_reason`, or `[DONE]`). A
//! reply that stops without either (the connection closed early), an `error` object in the stream
//! or a malformed event is an error, never a silently truncated answer. And dropping the stream
//! drops the HTTP response at once (no task runs behind it), so the server sees the request
//! cancelled and stops generating.
//!
//! The system prompt: the session puts `llm.system_prompt` first in every request
//! (`ChatMessage::System`), so this provider has no prompt of its own that could duplicate or
//! contradict it. An empty system message is left out rather than sent.
//!
//! Only text (`delta.content`) is spoken: reasoning fields some servers stream
//! (`reasoning_content`) and usage chunks are ignored.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::stream::{self, BoxStream, StreamExt};
use reqwest::header::{HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_TYPE};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tracing::{debug, warn};
use voxd_core::{ChatMessage, ToolCall};

use super::sse::{EventTooLarge, SseParser, MAX_EVENT_BYTES};
use crate::http::{check_base_url, client, join, status_error, transport_error, ProxyUrl};
use crate::{BuildError, Llm, LlmEvent, LlmRequest, ProviderError, ToolSpec};

/// The name this provider reports (`Llm::name` and its `ProviderError`s).
const PROVIDER: &str = "openai";

/// How long to wait for the tail of a reply (`[DONE]`, the end of the body) once the model has
/// finished. Reading it lets the connection go back to the pool for the next turn; a server that
/// never sends it only costs that connection, not an error.
const AFTER_FINISH_GRACE: Duration = Duration::from_secs(1);

/// How much of a malformed event or an error object is logged.
const MAX_LOGGED: usize = 512;

/// Configuration of the OpenAI LLM (`[llm.openai]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OpenAiLlmConfig {
    /// The API's base URL; requests go to `{base_url}/chat/completions`. Default
    /// `"https://api.openai.com/v1"`. For a local server, e.g. `"http://127.0.0.1:8080/v1"`.
    pub base_url: String,
    /// The model. Default "gpt-4o-mini".
    pub model: String,
    /// The env var holding the API key. Default: none.
    pub api_key_env: Option<String>,
    /// A file holding the API key, relative to the config file's directory. Default: none.
    /// Without `api_key_env` or `api_key_file` no `Authorization` header is sent, as local
    /// servers need none.
    pub api_key_file: Option<PathBuf>,
    /// Sampling temperature, 0 to 2. Default: none (the server's default).
    pub temperature: Option<f32>,
    /// The most tokens a reply may have, sent as `max_tokens`. Default: none (the server's
    /// limit). A reply cut by it ends normally, with a warning in the log.
    pub max_tokens: Option<u32>,
    /// The same limit sent as `max_completion_tokens`, which newer OpenAI models require instead
    /// of `max_tokens`. Set at most one of the two. Default: none.
    pub max_completion_tokens: Option<u32>,
    /// Bound on the TCP and TLS connect, in milliseconds. Default 5000.
    pub connect_timeout_ms: u64,
    /// Bound on each wait for the server, in milliseconds: for the response headers (connecting
    /// included), then for every next piece of the body. Not a bound on the whole reply, so a
    /// long reply that keeps streaming never times out; a server that stalls longer fails the
    /// reply with `ProviderError::Timeout`. Default 30000.
    pub read_timeout_ms: u64,
    /// A PEM file of CA certificates (relative to the config file's folder) trusted for this
    /// provider beside the platform's roots: for a server behind a private CA. Default: none.
    pub ca_file: Option<PathBuf>,
    /// An HTTP proxy for this provider's connections (`http://host:port`); without one,
    /// `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` apply. Default: none.
    pub proxy: Option<ProxyUrl>,
}

impl Default for OpenAiLlmConfig {
    fn default() -> Self {
        OpenAiLlmConfig {
            base_url: "https://api.openai.com/v1".to_owned(),
            model: "gpt-4o-mini".to_owned(),
            api_key_env: None,
            api_key_file: None,
            temperature: None,
            max_tokens: None,
            max_completion_tokens: None,
            connect_timeout_ms: 5000,
            read_timeout_ms: 30_000,
            ca_file: None,
            proxy: None,
        }
    }
}

/// The OpenAI LLM. Build it with `OpenAiLlm::new`; it keeps one pooled HTTP client, so turns
/// reuse kept-alive connections.
#[derive(Debug)]
pub struct OpenAiLlm {
    client: reqwest::Client,
    /// `{base_url}/chat/completions`.
    url: String,
    model: String,
    /// `Bearer <key>`, marked sensitive so `Debug` never shows it.
    authorization: Option<HeaderValue>,
    temperature: Option<f32>,
    max_tokens: Option<u32>,
    max_completion_tokens: Option<u32>,
    read_timeout_ms: u64,
}

impl OpenAiLlm {
    /// Builds the provider, reading the API key (if one is configured) from its env var or its
    /// file; `base_dir` is the directory relative `api_key_file` paths start from.
    ///
    /// # Errors
    /// `BuildError::Invalid`, naming the key, when `base_url` is not an http(s) URL, `model` is
    /// empty, `temperature` is outside `0..=2`, a token limit or a timeout is 0, both
    /// `max_tokens` and `max_completion_tokens` or both `api_key_env` and `api_key_file` are set,
    /// the key's env var is unset or empty, or the key cannot be sent in a header; `ca_file`
    /// when the file is unreadable or holds no PEM certificate; `proxy` when it is not an
    /// `http://` URL. `BuildError::Io` when `api_key_file` cannot be read.
    pub fn new(config: OpenAiLlmConfig, base_dir: &Path) -> Result<OpenAiLlm, BuildError> {
        let invalid = |field: &str, message: String| BuildError::Invalid {
            key: field.to_owned(),
            message,
        };
        check_base_url(&config.base_url)?;
        let model = config.model.trim();
        if model.is_empty() {
            return Err(invalid(
                "model",
                "expected a model name such as \"gpt-4o-mini\"".to_owned(),
            ));
        }
        if let Some(t) = config.temperature {
            if !(0.0..=2.0).contains(&t) {
                return Err(invalid(
                    "temperature",
                    format!("expected a number from 0 to 2, got {t}"),
                ));
            }
        }
        for (field, value) in [
            ("max_tokens", config.max_tokens),
            ("max_completion_tokens", config.max_completion_tokens),
        ] {
            if value == Some(0) {
                return Err(invalid(field, "must be at least 1 when set".to_owned()));
            }
        }
        if config.max_tokens.is_some() && config.max_completion_tokens.is_some() {
            return Err(invalid(
                "max_completion_tokens",
                "set max_tokens or max_completion_tokens, not both".to_owned(),
            ));
        }
        for (field, value) in [
            ("connect_timeout_ms", config.connect_timeout_ms),
            ("read_timeout_ms", config.read_timeout_ms),
        ] {
            if value == 0 {
                return Err(invalid(field, "must be at least 1 ms".to_owned()));
            }
        }
        if config.api_key_env.is_some() && config.api_key_file.is_some() {
            return Err(invalid(
                "api_key_file",
                "set api_key_env or api_key_file, not both".to_owned(),
            ));
        }
        let authorization = crate::http::authorization(
            "Bearer",
            config.api_key_env.as_deref(),
            config.api_key_file.as_deref(),
            base_dir,
        )?;
        let client = client(
            Duration::from_millis(config.connect_timeout_ms),
            config.ca_file.as_deref(),
            config.proxy.as_ref(),
            base_dir,
        )?;
        Ok(OpenAiLlm {
            client,
            url: join(&config.base_url, "chat/completions"),
            model: model.to_owned(),
            authorization,
            temperature: config.temperature,
            max_tokens: config.max_tokens,
            max_completion_tokens: config.max_completion_tokens,
            read_timeout_ms: config.read_timeout_ms,
        })
    }

    /// The request body for `request`, borrowing from it.
    fn body<'a>(&'a self, request: &'a LlmRequest) -> ChatRequest<'a> {
        ChatRequest {
            model: &self.model,
            messages: request.messages.iter().filter_map(wire_message).collect(),
            tools: request.tools.iter().map(wire_tool).collect(),
            stream: true,
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            max_completion_tokens: self.max_completion_tokens,
        }
    }
}

impl Llm for OpenAiLlm {
    fn name(&self) -> &str {
        PROVIDER
    }

    fn stream(&self, request: LlmRequest) -> BoxStream<'static, Result<LlmEvent, ProviderError>> {
        // Encoded up front so that the stream owns nothing borrowed from `self` or `request`.
        let body = match serde_json::to_vec(&self.body(&request)) {
            Ok(body) => body,
            Err(e) => {
                let error = ProviderError::InvalidRequest {
                    provider: PROVIDER.to_owned(),
                    message: format!("cannot encode the request: {e}"),
                };
                return stream::iter([Err(error)]).boxed();
            }
        };
        debug!(
            provider = PROVIDER,
            model = %self.model,
            messages = request.messages.len(),
            tools = request.tools.len(),
            "requesting a chat completion"
        );
        let mut http = self
            .client
            .post(&self.url)
            .header(CONTENT_TYPE, "application/json")
            .header(ACCEPT, "text/event-stream")
            .body(body);
        if let Some(authorization) = &self.authorization {
            http = http.header(AUTHORIZATION, authorization.clone());
        }
        let reply = Reply {
            phase: Phase::Send(http),
            parser: SseParser::new(),
            decoder: ReplyDecoder::default(),
            read_timeout_ms: self.read_timeout_ms,
        };
        // No task: the request is sent and read only while the consumer polls, and the response
        // lives in the stream's state, so dropping the stream closes it.
        stream::unfold(reply, |mut reply| async move {
            let event = reply.next().await?;
            Some((event, reply))
        })
        .boxed()
    }
}

/// One streamed request, from sending it to the end of its body.
struct Reply {
    phase: Phase,
    parser: SseParser,
    decoder: ReplyDecoder,
    read_timeout_ms: u64,
}

enum Phase {
    /// Not sent yet.
    Send(reqwest::RequestBuilder),
    /// Reading the event stream.
    Body(reqwest::Response),
    /// Complete, or failed (an error is always the last item).
    Ended,
}

impl Reply {
    /// The next item of the stream, or `None` at its end.
    async fn next(&mut self) -> Option<Result<LlmEvent, ProviderError>> {
        loop {
            if let Some(event) = self.decoder.out.pop_front() {
                return Some(Ok(event));
            }
            if matches!(self.phase, Phase::Ended) {
                return None;
            }
            if let Err(error) = self.advance().await {
                self.phase = Phase::Ended;
                self.decoder.out.clear();
                return Some(Err(error));
            }
        }
    }

    /// Makes one step: sends the request, decodes one buffered event, or reads one more piece of
    /// the body. Leaves `phase` at `Ended` when the reply is over.
    async fn advance(&mut self) -> Result<(), ProviderError> {
        match std::mem::replace(&mut self.phase, Phase::Ended) {
            Phase::Ended => Ok(()),
            Phase::Send(request) => {
                self.phase = Phase::Body(self.send(request).await?);
                Ok(())
            }
            Phase::Body(response) => self.read(response).await,
        }
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ProviderError> {
        let response = match tokio::time::timeout(self.read_timeout(), request.send()).await {
            Err(_) => return Err(self.timed_out()),
            Ok(Err(e)) => return Err(transport_error(PROVIDER, &e)),
            Ok(Ok(response)) => response,
        };
        let status = response.status();
        if !status.is_success() {
            // The error body is read under the same bound: a stalled one must not hang the turn.
            return Err(
                match tokio::time::timeout(self.read_timeout(), status_error(PROVIDER, response))
                    .await
                {
                    Ok(error) => error,
                    Err(_) => failed(format!("HTTP {}", status.as_u16())),
                },
            );
        }
        let json = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/json"));
        if json {
            // A server that ignored `stream: true` (or a proxy's error page): reading it as
            // events would only report a confusing early end.
            warn!(
                provider = PROVIDER,
                "expected an event stream, got a JSON response"
            );
            return Err(failed(
                "expected an event stream, got a JSON response (does the server support \
                 `stream: true`?)"
                    .to_owned(),
            ));
        }
        Ok(response)
    }

    async fn read(&mut self, mut response: reqwest::Response) -> Result<(), ProviderError> {
        // Events already received come first: one piece of the body often holds several.
        if let Some(data) = self.parser.next_event().map_err(too_large)? {
            self.decoder.event(data, false)?;
            self.phase = Phase::Body(response);
            return Ok(());
        }
        let streaming = self.decoder.progress == Progress::Streaming;
        let wait = if streaming {
            self.read_timeout()
        } else {
            AFTER_FINISH_GRACE.min(self.read_timeout())
        };
        match tokio::time::timeout(wait, response.chunk()).await {
            Ok(Ok(Some(bytes))) => {
                self.parser.push(&bytes).map_err(too_large)?;
                self.phase = Phase::Body(response);
                Ok(())
            }
            Ok(Ok(None)) => {
                if let Some(data) = self.parser.finish().map_err(too_large)? {
                    self.decoder.event(data, true)?;
                }
                self.decoder.end_of_body()
            }
            Ok(Err(e)) if streaming => Err(transport_error(PROVIDER, &e)),
            Err(_) if streaming => Err(self.timed_out()),
            // The model has finished and everything it said was yielded; only the tail is
            // missing, so the reply ends normally (and the connection is dropped).
            Ok(Err(e)) => {
                debug!(provider = PROVIDER, error = %e, "the body broke after the reply finished");
                Ok(())
            }
            Err(_) => {
                debug!(
                    provider = PROVIDER,
                    "no end of the body after the reply finished"
                );
                Ok(())
            }
        }
    }

    fn read_timeout(&self) -> Duration {
        Duration::from_millis(self.read_timeout_ms)
    }

    fn timed_out(&self) -> ProviderError {
        ProviderError::Timeout {
            provider: PROVIDER.to_owned(),
            after_ms: self.read_timeout_ms,
        }
    }
}

/// How far a reply has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Progress {
    /// Text or tool calls may still come.
    #[default]
    Streaming,
    /// A `finish_reason` arrived; everything was yielded.
    Finished,
    /// `[DONE]` arrived; the rest of the body is ignored.
    Done,
}

/// Turns the `data` of each event into `LlmEvent`s (sans-IO): text at once, tool calls assembled
/// from their fragments and queued when the model finishes.
#[derive(Debug, Default)]
struct ReplyDecoder {
    progress: Progress,
    /// Tool calls being assembled, in order of their first fragment.
    calls: Vec<PartialCall>,
    /// Events ready to be yielded.
    out: VecDeque<LlmEvent>,
}

/// A tool call whose fragments are still arriving.
#[derive(Debug, Default)]
struct PartialCall {
    index: usize,
    id: String,
    name: String,
    arguments: String,
}

impl ReplyDecoder {
    /// Decodes one event's `data`. `at_eof`: it is the unterminated last event of a body that
    /// ended, so a malformed one means the body was cut short.
    ///
    /// # Errors
    /// An `error` object in the stream, a malformed event, or a tool call without a name.
    fn event(&mut self, data: &str, at_eof: bool) -> Result<(), ProviderError> {
        let data = data.trim();
        if self.progress == Progress::Done || data.is_empty() {
            return Ok(());
        }
        if data == "[DONE]" {
            self.finish()?;
            self.progress = Progress::Done;
            return Ok(());
        }
        if self.progress == Progress::Finished {
            // Usage statistics and the like, after everything was yielded.
            return Ok(());
        }
        let chunk: Chunk = match serde_json::from_str(data) {
            Ok(chunk) => chunk,
            Err(_) if at_eof => return Err(ended_early()),
            Err(e) => {
                warn!(provider = PROVIDER, error = %e, data = truncate(data), "malformed event in the stream");
                return Err(failed(format!("malformed event in the stream: {e}")));
            }
        };
        if let Some(error) = chunk.error {
            return Err(stream_error(&error));
        }
        let Some(choice) = chunk.choices.and_then(|c| c.into_iter().next()) else {
            // Some servers open with a chunk without choices (e.g. content filter results).
            return Ok(());
        };
        if let Some(delta) = choice.delta {
            if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                self.out.push_back(LlmEvent::Token(text));
            }
            for fragment in delta.tool_calls.into_iter().flatten() {
                self.merge(fragment);
            }
        }
        if let Some(reason) = choice.finish_reason {
            match reason.as_str() {
                "length" => warn!(provider = PROVIDER, "the reply was cut at the token limit"),
                "content_filter" => {
                    warn!(
                        provider = PROVIDER,
                        "the reply was cut by the content filter"
                    );
                }
                _ => debug!(provider = PROVIDER, finish_reason = %reason, "the reply finished"),
            }
            self.finish()?;
            self.progress = Progress::Finished;
        }
        Ok(())
    }

    /// The body ended.
    ///
    /// # Errors
    /// "stream ended early" when neither a `finish_reason` nor `[DONE]` arrived.
    fn end_of_body(&self) -> Result<(), ProviderError> {
        match self.progress {
            Progress::Streaming => Err(ended_early()),
            Progress::Finished | Progress::Done => Ok(()),
        }
    }

    /// Adds a tool call fragment to the call it continues.
    fn merge(&mut self, fragment: ToolCallDelta) {
        let index = fragment
            .index
            .unwrap_or_else(|| self.guess_index(&fragment));
        let at = match self.calls.iter().position(|c| c.index == index) {
            Some(at) => at,
            None => {
                self.calls.push(PartialCall {
                    index,
                    ..PartialCall::default()
                });
                self.calls.len() - 1
            }
        };
        let call = &mut self.calls[at];
        if let Some(id) = fragment.id.filter(|id| !id.is_empty()) {
            if call.id.is_empty() {
                call.id = id;
            }
        }
        if let Some(function) = fragment.function {
            if let Some(name) = function.name.filter(|n| !n.is_empty()) {
                // The name comes whole in the first fragment; some servers repeat it later.
                if call.name.is_empty() {
                    call.name = name;
                } else if call.name != name {
                    call.name.push_str(&name);
                }
            }
            if let Some(arguments) = function.arguments {
                call.arguments.push_str(&arguments);
            }
        }
    }

    /// Which call a fragment without `index` belongs to. Servers that omit it send each call
    /// whole, or continue the last one: a new id, or a name when the last call has one, starts
    /// a new call.
    fn guess_index(&self, fragment: &ToolCallDelta) -> usize {
        let Some(last) = self.calls.last() else {
            return 0;
        };
        let new = match fragment.id.as_deref().filter(|id| !id.is_empty()) {
            Some(id) => id != last.id,
            None => {
                let named = fragment
                    .function
                    .as_ref()
                    .and_then(|f| f.name.as_deref())
                    .is_some_and(|n| !n.is_empty());
                named && !last.name.is_empty()
            }
        };
        if new {
            self.calls.iter().map(|c| c.index).max().unwrap_or(0) + 1
        } else {
            last.index
        }
    }

    /// The model has finished: queues the assembled tool calls, in `index` order.
    fn finish(&mut self) -> Result<(), ProviderError> {
        if self.progress != Progress::Streaming {
            return Ok(());
        }
        self.calls.sort_by_key(|c| c.index);
        if let Some(call) = self.calls.iter().find(|c| c.name.is_empty()) {
            return Err(failed(format!(
                "tool call {} in the stream has no function name",
                call.index
            )));
        }
        // An empty id stays empty: the session gives such calls a unique one.
        self.out.extend(self.calls.drain(..).map(|c| {
            LlmEvent::ToolCall(ToolCall {
                id: c.id,
                name: c.name,
                arguments: c.arguments,
            })
        }));
        Ok(())
    }
}

fn failed(message: String) -> ProviderError {
    ProviderError::Failed {
        provider: PROVIDER.to_owned(),
        message,
    }
}

fn ended_early() -> ProviderError {
    failed("stream ended early (the connection closed before the reply finished)".to_owned())
}

fn too_large(_: EventTooLarge) -> ProviderError {
    failed(format!(
        "an event in the stream exceeds {} KiB",
        MAX_EVENT_BYTES / 1024
    ))
}

/// An `error` object in the stream. Its message may echo the request, so it goes to the log; the
/// client sees only its code or type, when that is a plain identifier.
fn stream_error(error: &Value) -> ProviderError {
    let text = error.to_string();
    warn!(
        provider = PROVIDER,
        error = truncate(&text),
        "the server reported an error mid-stream"
    );
    let code = ["code", "type"]
        .iter()
        .find_map(|k| error.get(k).and_then(Value::as_str))
        .filter(|c| {
            !c.is_empty()
                && c.len() <= 64
                && c.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '_' | '-' | '.'))
        });
    failed(match code {
        Some(code) => format!("the server reported an error mid-stream ({code})"),
        None => "the server reported an error mid-stream".to_owned(),
    })
}

/// At most `MAX_LOGGED` bytes of `text`, cut at a character boundary.
fn truncate(text: &str) -> &str {
    let mut end = text.len().min(MAX_LOGGED);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The request body of a streamed chat completion.
#[derive(Debug, Serialize)]
struct ChatRequest<'a> {
    model: &'a str,
    messages: Vec<WireMessage<'a>>,
    /// Left out when empty: some servers reject an empty list.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tools: Vec<WireTool<'a>>,
    stream: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_completion_tokens: Option<u32>,
}

#[derive(Debug, Serialize)]
#[serde(tag = "role", rename_all = "lowercase")]
enum WireMessage<'a> {
    System {
        content: &'a str,
    },
    User {
        content: &'a str,
    },
    Assistant {
        /// `null` for a message that only carries tool calls.
        content: Option<&'a str>,
        #[serde(skip_serializing_if = "Vec::is_empty")]
        tool_calls: Vec<WireToolCall<'a>>,
    },
    Tool {
        tool_call_id: &'a str,
        content: &'a str,
    },
}

#[derive(Debug, Serialize)]
struct WireToolCall<'a> {
    id: &'a str,
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunctionCall<'a>,
}

#[derive(Debug, Serialize)]
struct WireFunctionCall<'a> {
    name: &'a str,
    arguments: &'a str,
}

#[derive(Debug, Serialize)]
struct WireTool<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    function: WireFunction<'a>,
}

#[derive(Debug, Serialize)]
struct WireFunction<'a> {
    name: &'a str,
    description: &'a str,
    parameters: &'a Value,
}

/// The wire form of one message; `None` for an empty system prompt.
fn wire_message(message: &ChatMessage) -> Option<WireMessage<'_>> {
    Some(match message {
        ChatMessage::System(text) if text.trim().is_empty() => return None,
        ChatMessage::System(text) => WireMessage::System { content: text },
        ChatMessage::User(text) => WireMessage::User { content: text },
        ChatMessage::Assistant { text, tool_calls } => WireMessage::Assistant {
            content: (!text.is_empty() || tool_calls.is_empty()).then_some(text.as_str()),
            tool_calls: tool_calls
                .iter()
                .map(|call| WireToolCall {
                    id: &call.id,
                    kind: "function",
                    function: WireFunctionCall {
                        name: &call.name,
                        // The registry reads no argument text as no arguments; the API wants
                        // a JSON object.
                        arguments: if call.arguments.trim().is_empty() {
                            "{}"
                        } else {
                            &call.arguments
                        },
                    },
                })
                .collect(),
        },
        ChatMessage::Tool { call_id, content } => WireMessage::Tool {
            tool_call_id: call_id,
            content,
        },
    })
}

fn wire_tool(spec: &ToolSpec) -> WireTool<'_> {
    WireTool {
        kind: "function",
        function: WireFunction {
            name: &spec.name,
            description: &spec.description,
            parameters: &spec.parameters,
        },
    }
}

/// One streamed chunk (`chat.completion.chunk`), or an error object. Unknown fields are ignored:
/// servers add their own.
#[derive(Debug, Deserialize)]
struct Chunk {
    choices: Option<Vec<Choice>>,
    error: Option<Value>,
}

#[derive(Debug, Deserialize)]
struct Choice {
    delta: Option<Delta>,
    finish_reason: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Delta {
    content: Option<String>,
    tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Debug, Deserialize)]
struct ToolCallDelta {
    index: Option<usize>,
    id: Option<String>,
    function: Option<FunctionDelta>,
}

#[derive(Debug, Deserialize)]
struct FunctionDelta {
    name: Option<String>,
    arguments: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn build(config: OpenAiLlmConfig) -> Result<OpenAiLlm, BuildError> {
        OpenAiLlm::new(config, Path::new("."))
    }

    fn key_of(error: BuildError) -> String {
        match error {
            BuildError::Invalid { key, .. } => key,
            other => panic!("expected an Invalid error, got {other:?}"),
        }
    }

    #[test]
    fn config_defaults_are_documented_ones() {
        let config: OpenAiLlmConfig = toml::from_str("").expect("all keys are optional");
        assert_eq!(config, OpenAiLlmConfig::default());
        assert_eq!(config.base_url, "https://api.openai.com/v1");
        assert_eq!(config.model, "gpt-4o-mini");
        assert_eq!(config.connect_timeout_ms, 5000);
        assert_eq!(config.read_timeout_ms, 30_000);
        assert_eq!(config.api_key_env, None);
        assert_eq!(config.temperature, None);
        assert!(build(config).is_ok(), "the defaults build without a key");
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let error = toml::from_str::<OpenAiLlmConfig>("modle = \"x\"").unwrap_err();
        assert!(error.to_string().contains("modle"), "{error}");
        // The system prompt is `llm.system_prompt`, shared by every provider.
        assert!(toml::from_str::<OpenAiLlmConfig>("system_prompt = \"x\"").is_err());
    }

    #[test]
    fn invalid_values_name_their_key() {
        let with = |edit: fn(&mut OpenAiLlmConfig)| {
            let mut config = OpenAiLlmConfig::default();
            edit(&mut config);
            key_of(build(config).expect_err("invalid"))
        };
        assert_eq!(with(|c| c.base_url = "localhost:8080".into()), "base_url");
        assert_eq!(with(|c| c.model = " ".into()), "model");
        assert_eq!(with(|c| c.temperature = Some(2.5)), "temperature");
        assert_eq!(with(|c| c.temperature = Some(-0.1)), "temperature");
        assert_eq!(with(|c| c.temperature = Some(f32::NAN)), "temperature");
        assert_eq!(with(|c| c.max_tokens = Some(0)), "max_tokens");
        assert_eq!(
            with(|c| {
                c.max_tokens = Some(10);
                c.max_completion_tokens = Some(10);
            }),
            "max_completion_tokens"
        );
        assert_eq!(with(|c| c.read_timeout_ms = 0), "read_timeout_ms");
        assert_eq!(with(|c| c.connect_timeout_ms = 0), "connect_timeout_ms");
        assert_eq!(
            with(|c| {
                c.api_key_env = Some("X".into());
                c.api_key_file = Some("k".into());
            }),
            "api_key_file"
        );
        assert_eq!(
            with(|c| c.api_key_env = Some("VOXD_SURELY_UNSET_OPENAI_KEY".into())),
            "api_key_env"
        );
        assert!(build(OpenAiLlmConfig {
            temperature: Some(2.0),
            ..OpenAiLlmConfig::default()
        })
        .is_ok());
    }

    #[test]
    fn the_key_is_never_shown() {
        let dir = std::env::temp_dir().join(format!("voxd-openai-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("key"), "sk-unit-secret\n").unwrap();
        let llm = OpenAiLlm::new(
            OpenAiLlmConfig {
                api_key_file: Some("key".into()),
                ..OpenAiLlmConfig::default()
            },
            &dir,
        )
        .expect("a readable key");
        assert!(!format!("{llm:?}").contains("sk-unit-secret"));

        std::fs::write(dir.join("bad"), "sk-unit\nsecret").unwrap();
        let error = OpenAiLlm::new(
            OpenAiLlmConfig {
                api_key_file: Some("bad".into()),
                ..OpenAiLlmConfig::default()
            },
            &dir,
        )
        .expect_err("a newline cannot be sent in a header");
        assert!(!error.to_string().contains("secret"), "{error}");
        assert_eq!(key_of(error), "api_key_file");
    }

    fn call(id: &str, name: &str, arguments: &str) -> ToolCall {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments: arguments.into(),
        }
    }

    #[test]
    fn the_body_maps_every_role() {
        let llm = build(OpenAiLlmConfig {
            model: "m".into(),
            temperature: Some(0.7),
            max_completion_tokens: Some(99),
            ..OpenAiLlmConfig::default()
        })
        .unwrap();
        let request = LlmRequest {
            messages: vec![
                ChatMessage::System(String::new()),
                ChatMessage::User("hi".into()),
                ChatMessage::Assistant {
                    text: String::new(),
                    tool_calls: vec![call("c1", "check_balance", "")],
                },
                ChatMessage::Tool {
                    call_id: "c1".into(),
                    content: "{\"balance\":1}".into(),
                },
                ChatMessage::Assistant {
                    text: "One.".into(),
                    tool_calls: Vec::new(),
                },
            ],
            tools: Vec::new(),
        };
        // Through the wire text: an f32 must be written as 0.7, not as its f64 widening.
        let wire = serde_json::to_vec(&llm.body(&request)).unwrap();
        let body: Value = serde_json::from_slice(&wire).unwrap();
        assert_eq!(
            body,
            json!({
                "model": "m",
                "stream": true,
                "temperature": 0.7,
                "max_completion_tokens": 99,
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": null, "tool_calls": [
                        {"id": "c1", "type": "function",
                         "function": {"name": "check_balance", "arguments": "{}"}}
                    ]},
                    {"role": "tool", "tool_call_id": "c1", "content": "{\"balance\":1}"},
                    {"role": "assistant", "content": "One."}
                ]
            })
        );
    }

    /// Decodes `events` (each one event's data) and returns what was yielded, or the error.
    fn decode(events: &[&str]) -> (Vec<LlmEvent>, Result<(), ProviderError>) {
        let mut decoder = ReplyDecoder::default();
        let mut out = Vec::new();
        for data in events {
            let result = decoder.event(data, false);
            out.extend(decoder.out.drain(..));
            if result.is_err() {
                return (out, result);
            }
        }
        let end = decoder.end_of_body();
        (out, end)
    }

    fn message(result: Result<(), ProviderError>) -> String {
        match result {
            Err(ProviderError::Failed { provider, message }) => {
                assert_eq!(provider, "openai");
                message
            }
            other => panic!("expected a Failed error, got {other:?}"),
        }
    }

    #[test]
    fn text_is_yielded_per_event_and_empty_text_is_not() {
        let (events, end) = decode(&[
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":null,"reasoning_content":"hmm"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}"#,
            r#"{"choices":[],"usage":{"total_tokens":3}}"#,
            "[DONE]",
        ]);
        assert_eq!(
            events,
            [LlmEvent::Token("Hel".into()), LlmEvent::Token("lo".into())]
        );
        assert!(end.is_ok());
    }

    #[test]
    fn tool_calls_without_index_are_told_apart_by_id_and_name() {
        let (events, end) = decode(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"id":"a","function":{"name":"f","arguments":"{\"x\":"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"1}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"id":"b","function":{"name":"g","arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"function":{"name":"h","arguments":"{}"}}]}}]}"#,
            "[DONE]",
        ]);
        assert_eq!(
            events,
            [
                LlmEvent::ToolCall(call("a", "f", "{\"x\":1}")),
                LlmEvent::ToolCall(call("b", "g", "{}")),
                LlmEvent::ToolCall(call("", "h", "{}")),
            ]
        );
        assert!(end.is_ok());
    }

    #[test]
    fn a_repeated_name_or_id_continues_the_call() {
        let (events, _) = decode(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","type":"function","function":{"name":"f","arguments":""}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"f","arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}"#,
        ]);
        assert_eq!(events, [LlmEvent::ToolCall(call("a", "f", "{}"))]);
    }

    #[test]
    fn a_nameless_tool_call_is_an_error() {
        let (events, end) = decode(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{}"}}]}}]}"#,
            "[DONE]",
        ]);
        assert!(events.is_empty());
        assert!(message(end).contains("no function name"));
    }

    #[test]
    fn error_objects_show_only_their_code() {
        let (_, end) = decode(&[
            r#"{"error":{"message":"bad key sk-abc","type":"invalid_request_error","code":"invalid_api_key"}}"#,
        ]);
        let text = message(end);
        assert!(text.contains("invalid_api_key"), "{text}");
        assert!(!text.contains("sk-abc"), "{text}");

        let (_, end) = decode(&[r#"{"error":"model 'x' not found"}"#]);
        let text = message(end);
        assert!(
            text.contains("mid-stream") && !text.contains("not found"),
            "{text}"
        );

        let (_, end) = decode(&[r#"{"error":{"code":"has spaces in it"}}"#]);
        assert!(!message(end).contains("spaces"));
    }

    #[test]
    fn malformed_events_are_errors() {
        let (_, end) = decode(&[r#"{"choices":[{"delta":"#]);
        assert!(message(end).contains("malformed"));
        let (_, end) = decode(&["42"]);
        assert!(message(end).contains("malformed"));
        // Blank data (a keep-alive `data:` line) is not an event.
        let (_, end) = decode(&["", "  ", "[DONE]"]);
        assert!(end.is_ok());
    }

    #[test]
    fn a_cut_last_event_means_the_stream_ended_early() {
        let mut decoder = ReplyDecoder::default();
        let error = decoder
            .event(r#"{"choices":[{"delta":{"content":"Hel"#, true)
            .unwrap_err();
        assert!(message(Err(error)).contains("ended early"));
    }

    #[test]
    fn the_end_needs_finish_reason_or_done() {
        let (events, end) = decode(&[r#"{"choices":[{"delta":{"content":"Hi"}}]}"#]);
        assert_eq!(events, [LlmEvent::Token("Hi".into())]);
        assert!(message(end).contains("ended early"));

        let (_, end) = decode(&[r#"{"choices":[{"delta":{},"finish_reason":"length"}]}"#]);
        assert!(end.is_ok());
        let (_, end) = decode(&["[DONE]"]);
        assert!(end.is_ok());
    }

    #[test]
    fn everything_after_the_finish_is_ignored() {
        let (events, end) = decode(&[
            r#"{"choices":[{"delta":{"content":"Hi"},"finish_reason":"stop"}]}"#,
            r#"{"choices":[{"delta":{"content":"late"}}]}"#,
            r#"{"error":{"code":"late_error"}}"#,
            "not json at all",
            "[DONE]",
        ]);
        assert_eq!(events, [LlmEvent::Token("Hi".into())]);
        assert!(end.is_ok());
    }

    #[test]
    fn truncation_respects_characters() {
        let text = "é".repeat(MAX_LOGGED);
        let cut = truncate(&text);
        assert!(cut.len() <= MAX_LOGGED && cut.chars().all(|c| c == 'é'));
        assert_eq!(truncate("short"), "short");
    }
}
