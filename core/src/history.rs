//! The conversation history passed to the LLM: what the user said, what the user *heard* of the
//! assistant, and tool calls with their results.
//!
//! Invariant: an assistant message holds only text the user heard (an interrupted reply is truncated
//! to `heard_text`), and every assistant tool call is followed by its tool result (a call cancelled
//! before its result is never recorded), so any chat API accepts the history as it is.

/// One message of the conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ChatMessage {
    /// Instructions for the model (the configured system prompt).
    System(String),
    /// What the user said (a transcript or a `text` message).
    User(String),
    /// What the assistant said (as heard) and the tools it asked for.
    Assistant {
        /// Spoken text; may be empty when the message only carries tool calls.
        text: String,
        /// Tool calls the model made in this message.
        tool_calls: Vec<ToolCall>,
    },
    /// The result of one tool call.
    Tool {
        /// The `ToolCall::id` this answers.
        call_id: String,
        /// The result, as JSON text.
        content: String,
    },
}

/// A tool call requested by the LLM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ToolCall {
    /// The call's id, unique within the conversation.
    pub id: String,
    /// The tool's name in the registry.
    pub name: String,
    /// The arguments, as JSON text.
    pub arguments: String,
}

/// The conversation so far, bounded in length.
#[derive(Clone, Debug, Default)]
pub struct History {
    messages: Vec<ChatMessage>,
    max_messages: usize,
}

impl History {
    /// An empty history keeping at most `max_messages` messages (the oldest go first).
    pub fn new(max_messages: usize) -> Self {
        History {
            messages: Vec::new(),
            max_messages: max_messages.max(2),
        }
    }

    /// The messages, oldest first.
    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    /// Appends what the user said. When the last message is already the user's (their previous turn
    /// was cancelled before anything was heard), the two are merged so one reply answers both.
    pub fn push_user(&mut self, text: &str) {
        if let Some(ChatMessage::User(last)) = self.messages.last_mut() {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(text);
        } else {
            self.messages.push(ChatMessage::User(text.to_owned()));
        }
        self.trim();
    }

    /// Appends the assistant's heard text (nothing when it is empty).
    pub fn push_assistant_text(&mut self, text: &str) {
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        self.messages.push(ChatMessage::Assistant {
            text: text.to_owned(),
            tool_calls: Vec::new(),
        });
        self.trim();
    }

    /// Appends a completed tool round: the assistant's calls, then each result in the same order.
    pub fn push_tool_round(&mut self, calls: Vec<ToolCall>, results: Vec<(String, String)>) {
        self.messages.push(ChatMessage::Assistant {
            text: String::new(),
            tool_calls: calls,
        });
        for (call_id, content) in results {
            self.messages.push(ChatMessage::Tool { call_id, content });
        }
        self.trim();
    }

    /// Drops the oldest messages beyond the bound, then any leading messages that are not the
    /// user's, so the history never starts with an orphaned tool result.
    fn trim(&mut self) {
        if self.messages.len() <= self.max_messages {
            return;
        }
        let len = self.messages.len();
        let from = len - self.max_messages;
        let is_user = |m: &ChatMessage| matches!(m, ChatMessage::User(_));
        let mut cut = match (from..len).find(|&i| is_user(&self.messages[i])) {
            Some(i) => i,
            // No user message to start at (the bot speaks on its own: `say`, `respond`): start
            // at the first message that is not a tool's result, which needs its call before it.
            None => (from..len)
                .find(|&i| !matches!(self.messages[i], ChatMessage::Tool { .. }))
                .unwrap_or(len),
        };
        // Never drop the last user message: a tool round must keep the question it answers,
        // even if that means exceeding the bound for a while.
        if let Some(last_user) = self.messages.iter().rposition(is_user) {
            cut = cut.min(last_user);
        }
        self.messages.drain(..cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_user_messages_merge() {
        let mut h = History::new(10);
        h.push_user("what's the weather");
        h.push_user("in paris");
        assert_eq!(
            h.messages(),
            &[ChatMessage::User("what's the weather in paris".into())]
        );
    }

    #[test]
    fn empty_assistant_text_is_not_recorded() {
        let mut h = History::new(10);
        h.push_user("hi");
        h.push_assistant_text("  ");
        assert_eq!(h.messages().len(), 1);
    }

    #[test]
    fn trimming_keeps_the_question_of_a_tool_round() {
        let mut h = History::new(2);
        h.push_user("check my balance");
        h.push_tool_round(
            vec![ToolCall {
                id: "c1".into(),
                name: "check_balance".into(),
                arguments: "{}".into(),
            }],
            vec![("c1".into(), "{}".into())],
        );
        assert!(
            matches!(h.messages()[0], ChatMessage::User(_)),
            "{:?}",
            h.messages()
        );
        h.push_user("thanks");
        assert_eq!(h.messages(), &[ChatMessage::User("thanks".into())]);
    }

    #[test]
    fn a_bot_that_speaks_alone_keeps_its_history_bounded() {
        let mut h = History::new(3);
        for i in 0..10 {
            h.push_assistant_text(&format!("line {i}"));
            h.push_tool_round(
                vec![ToolCall {
                    id: format!("c{i}"),
                    name: "lookup".into(),
                    arguments: "{}".into(),
                }],
                vec![(format!("c{i}"), "{}".into())],
            );
        }
        assert!(h.messages().len() <= 3, "{:?}", h.messages());
        assert!(!matches!(h.messages()[0], ChatMessage::Tool { .. }));
    }

    #[test]
    fn trimming_never_starts_with_a_tool_result() {
        let mut h = History::new(4);
        h.push_user("check my balance");
        h.push_tool_round(
            vec![ToolCall {
                id: "c1".into(),
                name: "check_balance".into(),
                arguments: "{}".into(),
            }],
            vec![("c1".into(), "{\"balance\":1}".into())],
        );
        h.push_assistant_text("You have one dollar.");
        h.push_user("thanks");
        assert!(h.messages().len() <= 4);
        assert!(matches!(h.messages()[0], ChatMessage::User(_)));
    }
}
