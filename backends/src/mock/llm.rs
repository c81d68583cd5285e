//! The mock language model: answers from keyword rules, calls tools, and phrases tool results from
//! templates, streaming its reply word by word with configured delays.
//!
//! It reads only the end of the conversation: after tool results it phrases them (so a tool round
//! always ends in speech, never another call); otherwise it answers the last user message. Like a
//! real model it only calls tools the request offers. Replies are several short sentences, so that
//! sentence-by-sentence TTS and barge-in are exercised.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::stream::{self, BoxStream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use voxd_core::{ChatMessage, ToolCall};

use super::{check_probability, inject_failure, PROVIDER_NAME};
use crate::{BuildError, Llm, LlmEvent, LlmRequest, ProviderError};

/// Configuration of the mock LLM (`[llm.mock]`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MockLlmConfig {
    /// Delay before the first token (or tool call), in milliseconds. Default 100.
    pub first_token_ms: u64,
    /// Delay between later tokens, in milliseconds. Default 10.
    pub token_interval_ms: u64,
    /// Probability (0 to 1) that a reply fails instead of yielding its first token. Default 0.
    pub failure_rate: f64,
    /// Probability (0 to 1) that a reply never starts (a hung provider). Default 0.
    pub hang_rate: f64,
    /// Probability (0 to 1) that a reply stops mid-way and never ends (a stalled stream).
    /// Default 0.
    pub stall_rate: f64,
    /// Keyword rules, checked in order against the last user message (lowercased). Default: the
    /// demo rules (balance → `check_balance`, email → `send_email`, weather, tomorrow, a long
    /// story, stop).
    pub rules: Vec<LlmRule>,
    /// The reply when no rule matches. Default "I'm sorry, I didn't catch that. Could you say it
    /// again?".
    pub default_reply: String,
    /// Tool name → the reply after its result, with `{key}` replaced by the result object's
    /// values (strings without quotes). Default: replies for `check_balance` and `send_email`.
    pub tool_replies: BTreeMap<String, String>,
    /// The reply after a tool result with no (or an unfillable) template; `{content}` is replaced
    /// by the result's JSON text. Default "Here is what I found: {content}".
    pub tool_fallback_reply: String,
}

/// A long, calm story about the sea: long enough (14 sentences, about 940 characters) that barge-in tests can interrupt
/// it mid-way.
const SEA_STORY: &str = "Once upon a time, a small lighthouse stood at the edge of a quiet sea. \
Every evening, its keeper climbed the winding stairs to light the great lamp. \
The waves below rolled in slowly, silver under the rising moon. \
Far out on the water, a little fishing boat was heading home. \
Its captain was an old woman who had sailed these waters all her life. \
She knew every rock, every current and every seabird by name. \
Gulls circled above her mast, calling softly to one another. \
That night, a soft fog drifted in from the open ocean. \
The stars disappeared one by one, and the shore grew hard to see. \
But the lighthouse kept shining, steady and warm, through the grey mist. \
The captain saw its golden beam and turned her boat toward it. \
She reached the harbour just as the fog began to lift. \
In the morning, she brought the keeper a basket of fresh fish to say thank you. \
And from then on, the two of them watched the sun rise over the sea together.";

impl Default for MockLlmConfig {
    fn default() -> Self {
        let words = |ws: &[&str]| ws.iter().map(|w| (*w).to_owned()).collect::<Vec<_>>();
        let tool = |keywords: &[&str], name: &str, arguments: Value| LlmRule {
            keywords: words(keywords),
            reply: None,
            tool: Some(name.to_owned()),
            arguments: Some(arguments),
        };
        let reply = |keywords: &[&str], text: &str| LlmRule {
            keywords: words(keywords),
            reply: Some(text.to_owned()),
            tool: None,
            arguments: None,
        };
        MockLlmConfig {
            first_token_ms: 100,
            token_interval_ms: 10,
            failure_rate: 0.0,
            hang_rate: 0.0,
            stall_rate: 0.0,
            rules: vec![
                tool(
                    &["balance", "account"],
                    "check_balance",
                    json!({"account": "checking"}),
                ),
                tool(
                    &["email"],
                    "send_email",
                    json!({"to": "team@example.com", "subject": "Hello", "body": "Sent by voxd."}),
                ),
                reply(
                    &["weather", "today"],
                    "It's sunny and warm today, about twenty four degrees. There's a light breeze \
                     from the west. Perfect weather for a walk.",
                ),
                reply(
                    &["tomorrow"],
                    "Tomorrow looks cloudy with a chance of rain in the afternoon. Bring an \
                     umbrella just in case.",
                ),
                reply(&["story"], SEA_STORY),
                reply(
                    &["stop", "wait", "cancel"],
                    "Okay, I've stopped. What would you like instead?",
                ),
            ],
            default_reply: "I'm sorry, I didn't catch that. Could you say it again?".to_owned(),
            tool_replies: BTreeMap::from([
                (
                    "check_balance".to_owned(),
                    "Your {account} account balance is {balance} {currency}. Is there anything \
                     else I can help with?"
                        .to_owned(),
                ),
                (
                    "send_email".to_owned(),
                    "Done. Your email has been {status}.".to_owned(),
                ),
            ]),
            tool_fallback_reply: "Here is what I found: {content}".to_owned(),
        }
    }
}

/// "When the user says any of `keywords`, reply `reply` (or call `tool` with `arguments`)."
/// Exactly one of `reply` and `tool` is set.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmRule {
    /// Words that trigger the rule (case-insensitive; each must start at a word boundary, so
    /// "account" matches "accounts" but "stop" does not match "nonstop").
    pub keywords: Vec<String>,
    /// The reply to stream.
    #[serde(default)]
    pub reply: Option<String>,
    /// The tool to call instead of replying.
    #[serde(default)]
    pub tool: Option<String>,
    /// The tool call's arguments (a JSON object). Default `{}`.
    #[serde(default)]
    pub arguments: Option<Value>,
}

/// What a validated rule does.
#[derive(Debug)]
enum Action {
    Reply(String),
    /// Tool name and the arguments' JSON text.
    Call(String, String),
}

#[derive(Debug)]
struct Rule {
    /// Lowercased.
    keywords: Vec<String>,
    action: Action,
}

/// The mock LLM. Build it with `MockLlm::new`.
#[derive(Debug)]
pub struct MockLlm {
    first_token: Duration,
    token_interval: Duration,
    failure_rate: f64,
    hang_rate: f64,
    stall_rate: f64,
    rules: Vec<Rule>,
    default_reply: String,
    tool_replies: BTreeMap<String, String>,
    tool_fallback_reply: String,
    /// Numbers tool call ids (`call_1`, `call_2`, ...), unique for this instance's lifetime.
    next_call: AtomicU64,
}

impl MockLlm {
    /// Builds the mock LLM.
    ///
    /// # Errors
    /// `BuildError::Invalid` when `failure_rate` is not a probability, or a rule has no keywords,
    /// an empty keyword, neither or both of `reply` and `tool`, `arguments` without `tool`, or
    /// `arguments` that are not a JSON object.
    pub fn new(config: MockLlmConfig) -> Result<MockLlm, BuildError> {
        check_probability("failure_rate", config.failure_rate)?;
        check_probability("hang_rate", config.hang_rate)?;
        check_probability("stall_rate", config.stall_rate)?;
        let rules = config
            .rules
            .into_iter()
            .enumerate()
            .map(|(i, rule)| validate_rule(i, rule))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MockLlm {
            first_token: Duration::from_millis(config.first_token_ms),
            token_interval: Duration::from_millis(config.token_interval_ms),
            failure_rate: config.failure_rate,
            hang_rate: config.hang_rate,
            stall_rate: config.stall_rate,
            rules,
            default_reply: config.default_reply,
            tool_replies: config.tool_replies,
            tool_fallback_reply: config.tool_fallback_reply,
            next_call: AtomicU64::new(1),
        })
    }

    /// Decides the whole answer to `request` up front; only its delivery is streamed.
    fn answer(&self, request: &LlmRequest) -> Action {
        let messages = &request.messages;
        let trailing_results = messages
            .iter()
            .rev()
            .take_while(|m| matches!(m, ChatMessage::Tool { .. }))
            .count();
        if trailing_results > 0 {
            let replies: Vec<String> = messages[messages.len() - trailing_results..]
                .iter()
                .filter_map(|m| match m {
                    ChatMessage::Tool { call_id, content } => {
                        Some(self.phrase_result(messages, call_id, content))
                    }
                    _ => None,
                })
                .collect();
            return Action::Reply(replies.join(" "));
        }

        let Some(said) = messages.iter().rev().find_map(|m| match m {
            ChatMessage::User(text) => Some(text.to_lowercase()),
            _ => None,
        }) else {
            return Action::Reply(self.default_reply.clone());
        };
        let offered = |name: &str| request.tools.iter().any(|t| t.name == name);
        let rule = self.rules.iter().find(|rule| {
            let applicable = match &rule.action {
                Action::Reply(_) => true,
                // A real model never calls a tool it was not offered.
                Action::Call(name, _) => offered(name),
            };
            applicable && rule.keywords.iter().any(|k| contains_word(&said, k))
        });
        match rule.map(|r| &r.action) {
            Some(Action::Reply(text)) => Action::Reply(text.clone()),
            Some(Action::Call(name, arguments)) => Action::Call(name.clone(), arguments.clone()),
            None => Action::Reply(self.default_reply.clone()),
        }
    }

    /// The spoken answer to one tool result.
    fn phrase_result(&self, messages: &[ChatMessage], call_id: &str, content: &str) -> String {
        let tool_name = messages.iter().find_map(|m| match m {
            ChatMessage::Assistant { tool_calls, .. } => tool_calls
                .iter()
                .find(|c| c.id == call_id)
                .map(|c| c.name.as_str()),
            _ => None,
        });
        let filled = tool_name
            .and_then(|name| self.tool_replies.get(name))
            .and_then(|template| {
                let Ok(Value::Object(values)) = serde_json::from_str::<Value>(content) else {
                    return None;
                };
                fill_placeholders(template, &values)
            });
        filled.unwrap_or_else(|| self.tool_fallback_reply.replace("{content}", content))
    }
}

impl Llm for MockLlm {
    fn name(&self) -> &str {
        PROVIDER_NAME
    }

    fn stream(&self, request: LlmRequest) -> BoxStream<'static, Result<LlmEvent, ProviderError>> {
        if inject_failure(self.hang_rate) {
            return stream::pending().boxed();
        }
        let mut events: Vec<Result<LlmEvent, ProviderError>> = if inject_failure(self.failure_rate)
        {
            vec![Err(ProviderError::Failed {
                provider: PROVIDER_NAME.to_owned(),
                message: "injected failure".to_owned(),
            })]
        } else {
            match self.answer(&request) {
                Action::Reply(text) => split_tokens(&text)
                    .into_iter()
                    .map(|t| Ok(LlmEvent::Token(t)))
                    .collect(),
                Action::Call(name, arguments) => {
                    let n = self.next_call.fetch_add(1, Ordering::Relaxed);
                    vec![Ok(LlmEvent::ToolCall(ToolCall {
                        id: format!("call_{n}"),
                        name,
                        arguments,
                    }))]
                }
            }
        };
        // No task: the delays are slept while the consumer polls, so dropping the stream
        // cancels the reply wherever it is. Each token is due at an absolute time (the request
        // plus `first_token_ms` plus k × `token_interval_ms`), so timer rounding never adds up
        // over a long reply.
        let stall = inject_failure(self.stall_rate);
        if stall {
            // Half the reply, then nothing: the stream neither ends nor fails.
            events.truncate(events.len() / 2);
        }
        let due = tokio::time::Instant::now() + self.first_token;
        let state = (events.into_iter(), due, self.token_interval);
        let reply = stream::unfold(state, |(mut events, due, interval)| async move {
            let event = events.next()?;
            tokio::time::sleep_until(due).await;
            Some((event, (events, due + interval, interval)))
        });
        if stall {
            reply.chain(stream::pending()).boxed()
        } else {
            reply.boxed()
        }
    }
}

fn validate_rule(index: usize, rule: LlmRule) -> Result<Rule, BuildError> {
    let invalid = |message: &str| BuildError::Invalid {
        key: format!("rules[{index}]"),
        message: message.to_owned(),
    };
    let keywords: Vec<String> = rule
        .keywords
        .iter()
        .map(|k| k.trim().to_lowercase())
        .collect();
    if keywords.is_empty() || keywords.iter().any(String::is_empty) {
        return Err(invalid("needs at least one keyword, and no empty ones"));
    }
    let action = match (rule.reply, rule.tool, rule.arguments) {
        (Some(reply), None, None) => Action::Reply(reply),
        (None, Some(tool), arguments) => {
            let arguments = arguments.unwrap_or_else(|| json!({}));
            if !arguments.is_object() {
                return Err(invalid("`arguments` must be a JSON object"));
            }
            Action::Call(tool, arguments.to_string())
        }
        (Some(_), None, Some(_)) => {
            return Err(invalid("`arguments` only goes with `tool`"));
        }
        (Some(_), Some(_), _) => {
            return Err(invalid("set either `reply` or `tool`, not both"));
        }
        (None, None, _) => return Err(invalid("set `reply` or `tool`")),
    };
    Ok(Rule { keywords, action })
}

/// Whether `needle` occurs in `haystack` starting at a word boundary.
fn contains_word(haystack: &str, needle: &str) -> bool {
    haystack.match_indices(needle).any(|(at, _)| {
        haystack[..at]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric())
    })
}

/// Splits `text` into word tokens, each with its leading whitespace ("Hello", " there,"), so that
/// they concatenate back to exactly `text`.
fn split_tokens(text: &str) -> Vec<String> {
    let mut tokens = Vec::new();
    let mut start = 0;
    let mut previous_is_space = true;
    for (i, c) in text.char_indices() {
        let is_space = c.is_whitespace();
        if is_space && !previous_is_space && i > start {
            tokens.push(text[start..i].to_owned());
            start = i;
        }
        previous_is_space = is_space;
    }
    if start < text.len() {
        tokens.push(text[start..].to_owned());
    }
    tokens
}

/// `template` with each `{key}` replaced by `values[key]` (strings without their quotes, other
/// values as JSON). `None` when a placeholder has no value. Braces that do not enclose a plain
/// key (letters, digits, `_`) are kept as they are.
fn fill_placeholders(template: &str, values: &Map<String, Value>) -> Option<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        let key = after
            .find('}')
            .map(|close| &after[..close])
            .filter(|key| !key.is_empty() && key.chars().all(|c| c.is_alphanumeric() || c == '_'));
        match key {
            Some(key) => {
                match values.get(key)? {
                    Value::String(s) => out.push_str(s),
                    other => out.push_str(&other.to_string()),
                }
                rest = &after[key.len() + 1..];
            }
            None => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tools::{default_mock_tools, ToolRegistry};
    use tokio::time::Instant;

    fn demo_llm() -> MockLlm {
        MockLlm::new(MockLlmConfig::default()).expect("the defaults are valid")
    }

    fn request(messages: Vec<ChatMessage>) -> LlmRequest {
        LlmRequest {
            messages,
            tools: ToolRegistry::from_mock_config(&default_mock_tools())
                .expect("default tools")
                .specs(),
        }
    }

    fn user(text: &str) -> LlmRequest {
        request(vec![
            ChatMessage::System("You are a helpful voice assistant.".into()),
            ChatMessage::User(text.into()),
        ])
    }

    async fn collect(llm: &MockLlm, request: LlmRequest) -> Vec<LlmEvent> {
        llm.stream(request)
            .map(|e| e.expect("no failure"))
            .collect()
            .await
    }

    async fn reply_text(llm: &MockLlm, request: LlmRequest) -> String {
        collect(llm, request)
            .await
            .into_iter()
            .map(|e| match e {
                LlmEvent::Token(t) => t,
                other => panic!("expected tokens, got {other:?}"),
            })
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn tokens_concatenate_to_the_configured_reply() {
        let llm = demo_llm();
        let events = collect(&llm, user("What's the weather like today?")).await;
        assert!(events.len() > 10, "streamed word by word: {events:?}");
        let text: String = events
            .iter()
            .map(|e| match e {
                LlmEvent::Token(t) => t.as_str(),
                other => panic!("expected tokens, got {other:?}"),
            })
            .collect();
        assert_eq!(
            text,
            "It's sunny and warm today, about twenty four degrees. There's a light breeze from \
             the west. Perfect weather for a walk."
        );
        assert_eq!(events[0], LlmEvent::Token("It's".into()));
        assert_eq!(events[1], LlmEvent::Token(" sunny".into()));
    }

    #[tokio::test(start_paused = true)]
    async fn rules_route_the_demo_phrases() {
        let llm = demo_llm();
        assert!(reply_text(&llm, user("what about tomorrow"))
            .await
            .starts_with("Tomorrow looks cloudy"));
        assert_eq!(
            reply_text(&llm, user("wait stop")).await,
            "Okay, I've stopped. What would you like instead?"
        );
        assert_eq!(
            reply_text(&llm, user("mhm")).await,
            "I'm sorry, I didn't catch that. Could you say it again?"
        );
        // "nonstop" does not contain the word "stop".
        assert_eq!(
            reply_text(&llm, user("nonstop")).await,
            "I'm sorry, I didn't catch that. Could you say it again?"
        );
        let story = reply_text(&llm, user("tell me a long story about the sea")).await;
        assert!(story.len() >= 900, "{} characters", story.len());
        assert!(story.matches(". ").count() + 1 >= 12, "{story}");
    }

    #[tokio::test(start_paused = true)]
    async fn tool_rule_yields_one_tool_call_with_json_arguments() {
        let llm = demo_llm();
        let events = collect(&llm, user("Can you check my account balance, please?")).await;
        let [LlmEvent::ToolCall(call)] = events.as_slice() else {
            panic!("expected one tool call, got {events:?}");
        };
        assert_eq!(call.name, "check_balance");
        assert!(call.id.starts_with("call_"));
        let arguments: Value = serde_json::from_str(&call.arguments).expect("valid JSON");
        assert_eq!(arguments, json!({"account": "checking"}));

        let events = collect(&llm, user("send an email to the team")).await;
        let [LlmEvent::ToolCall(second)] = events.as_slice() else {
            panic!("expected one tool call, got {events:?}");
        };
        assert_eq!(second.name, "send_email");
        assert_ne!(second.id, call.id, "call ids are unique");
        serde_json::from_str::<Value>(&second.arguments).expect("valid JSON");
    }

    #[tokio::test(start_paused = true)]
    async fn tools_that_are_not_offered_are_not_called() {
        let llm = demo_llm();
        let mut req = user("check my balance");
        req.tools.clear();
        assert_eq!(
            reply_text(&llm, req).await,
            "I'm sorry, I didn't catch that. Could you say it again?"
        );
    }

    fn after_tool(name: &str, content: &str) -> LlmRequest {
        request(vec![
            ChatMessage::User("check my balance".into()),
            ChatMessage::Assistant {
                text: String::new(),
                tool_calls: vec![ToolCall {
                    id: "call_7".into(),
                    name: name.into(),
                    arguments: "{}".into(),
                }],
            },
            ChatMessage::Tool {
                call_id: "call_7".into(),
                content: content.into(),
            },
        ])
    }

    #[tokio::test(start_paused = true)]
    async fn reply_after_a_tool_result_fills_placeholders() {
        let llm = demo_llm();
        let content = r#"{"account":"checking","balance":"1,234.56","currency":"dollars"}"#;
        assert_eq!(
            reply_text(&llm, after_tool("check_balance", content)).await,
            "Your checking account balance is 1,234.56 dollars. Is there anything else I can \
             help with?"
        );
        assert_eq!(
            reply_text(&llm, after_tool("send_email", r#"{"status":"sent"}"#)).await,
            "Done. Your email has been sent."
        );
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_tool_or_unfillable_template_falls_back() {
        let llm = demo_llm();
        assert_eq!(
            reply_text(&llm, after_tool("lookup", r#"{"x":1}"#)).await,
            r#"Here is what I found: {"x":1}"#
        );
        assert_eq!(
            reply_text(&llm, after_tool("send_email", r#"{"error":"timeout"}"#)).await,
            r#"Here is what I found: {"error":"timeout"}"#
        );
    }

    #[tokio::test(start_paused = true)]
    async fn first_token_arrives_after_first_token_ms() {
        let llm = demo_llm();
        let start = Instant::now();
        let mut stream = llm.stream(user("what about tomorrow"));
        stream.next().await.expect("a token").expect("no failure");
        let first = start.elapsed();
        assert!(first >= Duration::from_millis(100), "{first:?}");
        assert!(first < Duration::from_millis(110), "{first:?}");
        stream.next().await.expect("a token").expect("no failure");
        assert!(start.elapsed() - first >= Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_stream_mid_way_stops_it() {
        let llm = demo_llm();
        let mut kept = llm.stream(user("tell me a story"));
        let mut dropped = llm.stream(user("tell me a story"));
        for stream in [&mut kept, &mut dropped] {
            for _ in 0..3 {
                stream.next().await.expect("a token").expect("no failure");
            }
        }
        crate::mock::testing::assert_dropping_stops_it(kept, dropped).await;
        // The model is still usable afterwards.
        assert!(!reply_text(&llm, user("wait")).await.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn failure_replaces_the_first_token() {
        let config = MockLlmConfig {
            failure_rate: 1.0,
            ..MockLlmConfig::default()
        };
        let llm = MockLlm::new(config).expect("valid");
        let events: Vec<_> = llm.stream(user("what about tomorrow")).collect().await;
        assert_eq!(events.len(), 1);
        assert!(matches!(events[0], Err(ProviderError::Failed { .. })));
    }

    #[test]
    fn split_tokens_round_trips() {
        for text in [
            "Hello there, friend.",
            "  leading",
            "trailing  ",
            "one",
            "",
            "a\n b",
        ] {
            assert_eq!(split_tokens(text).concat(), text);
        }
        assert_eq!(
            split_tokens("Hello there, friend."),
            ["Hello", " there,", " friend."]
        );
    }

    #[test]
    fn invalid_rules_are_build_errors() {
        let with_rule = |rule: LlmRule| MockLlmConfig {
            rules: vec![rule],
            ..MockLlmConfig::default()
        };
        let both = LlmRule {
            keywords: vec!["x".into()],
            reply: Some("hi".into()),
            tool: Some("t".into()),
            arguments: None,
        };
        let err = MockLlm::new(with_rule(both)).expect_err("reply and tool");
        assert!(err.to_string().starts_with("rules[0]: "), "{err}");
        let no_keywords = LlmRule {
            keywords: vec![],
            reply: Some("hi".into()),
            tool: None,
            arguments: None,
        };
        assert!(MockLlm::new(with_rule(no_keywords)).is_err());
        let bad_arguments = LlmRule {
            keywords: vec!["x".into()],
            reply: None,
            tool: Some("t".into()),
            arguments: Some(json!([1])),
        };
        assert!(MockLlm::new(with_rule(bad_arguments)).is_err());
    }

    #[test]
    fn config_parses_from_toml() {
        let config: MockLlmConfig = toml::from_str(
            "first_token_ms = 5\n\
             [[rules]]\nkeywords = [\"hi\"]\nreply = \"Hello.\"\n\
             [tool_replies]\nlookup = \"Found {thing}.\"\n",
        )
        .expect("valid config");
        assert_eq!(config.first_token_ms, 5);
        assert_eq!(config.token_interval_ms, 10);
        assert_eq!(config.rules.len(), 1);
        assert!(toml::from_str::<MockLlmConfig>("first_token = 5").is_err());
    }
}
