//! The conversation history passed to the LLM: what the user said, what the user *heard* of the
//! assistant, and tool calls with their results.
//!
//! Invariant: an assistant message holds only text the user heard (an interrupted reply is truncated
//! to `heard_text`), and every assistant tool call is followed by its tool result (a call cancelled
//! before its result is never recorded), so any chat API accepts the history as it is.

use crate::types::TurnId;

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

/// The turns a message came from: a user message merged from several turns spans them. A
/// message seeded by the client has none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Origin {
    first: TurnId,
    last: TurnId,
}

/// Which of a turn's messages a client removes (`History::remove`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HistoryPart {
    /// What the user said in the turn (a message merged from several turns goes whole).
    User,
    /// What the assistant said in answer to the turn, as heard.
    Assistant,
    /// The tool round holding the call `call_id`: the assistant's calls and every result, as one,
    /// so that no call is left without its result.
    ToolRound {
        /// A call of the round.
        call_id: String,
    },
}

/// The conversation so far, bounded in length.
#[derive(Clone, Debug, Default)]
pub struct History {
    messages: Vec<ChatMessage>,
    /// Beside each message, the turns it came from.
    origins: Vec<Option<Origin>>,
    max_messages: usize,
}

impl History {
    /// An empty history keeping at most `max_messages` messages (the oldest go first).
    pub fn new(max_messages: usize) -> Self {
        History {
            messages: Vec::new(),
            origins: Vec::new(),
            max_messages: max_messages.max(2),
        }
    }

    /// The messages, oldest first.
    pub fn messages(&self) -> &[ChatMessage] {
        &self.messages
    }

    fn push(&mut self, message: ChatMessage, turn: Option<TurnId>) {
        self.messages.push(message);
        self.origins
            .push(turn.map(|t| Origin { first: t, last: t }));
    }

    /// Appends what the user said in `turn` (`None`: a message the client seeded). When the last
    /// message is already the user's (their previous turn was cancelled before anything was
    /// heard), the two are merged so one reply answers both.
    pub fn push_user(&mut self, text: &str, turn: Option<TurnId>) {
        if let Some(ChatMessage::User(last)) = self.messages.last_mut() {
            if !last.is_empty() {
                last.push(' ');
            }
            last.push_str(text);
            if let (Some(Some(o)), Some(t)) = (self.origins.last_mut(), turn) {
                o.last = t;
            }
        } else {
            self.push(ChatMessage::User(text.to_owned()), turn);
        }
        self.trim();
    }

    /// Appends the assistant's heard text in answer to `turn` (nothing when it is empty).
    pub fn push_assistant_text(&mut self, text: &str, turn: Option<TurnId>) {
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        self.push(
            ChatMessage::Assistant {
                text: text.to_owned(),
                tool_calls: Vec::new(),
            },
            turn,
        );
        self.trim();
    }

    /// Appends a completed tool round of `turn`: the assistant's calls, then each result in the
    /// same order.
    pub fn push_tool_round(
        &mut self,
        calls: Vec<ToolCall>,
        results: Vec<(String, String)>,
        turn: TurnId,
    ) {
        self.push(
            ChatMessage::Assistant {
                text: String::new(),
                tool_calls: calls,
            },
            Some(turn),
        );
        for (call_id, content) in results {
            self.push(ChatMessage::Tool { call_id, content }, Some(turn));
        }
        self.trim();
    }

    /// Removes `part` of `turn` from the conversation (a client deleting an item). Returns
    /// whether there was anything to remove. The history keeps its shape: a tool round goes
    /// whole, and what is left never starts with a tool's result.
    pub fn remove(&mut self, turn: TurnId, part: &HistoryPart) -> bool {
        let of_turn = |o: &Option<Origin>| o.is_some_and(|o| o.first <= turn && turn <= o.last);
        let found = match part {
            HistoryPart::User => (0..self.messages.len()).find(|&i| {
                matches!(self.messages[i], ChatMessage::User(_)) && of_turn(&self.origins[i])
            }),
            HistoryPart::Assistant => (0..self.messages.len()).rfind(|&i| {
                matches!(&self.messages[i], ChatMessage::Assistant { tool_calls, .. } if tool_calls.is_empty())
                    && of_turn(&self.origins[i])
            }),
            HistoryPart::ToolRound { call_id } => (0..self.messages.len()).find(|&i| {
                matches!(&self.messages[i], ChatMessage::Assistant { tool_calls, .. }
                    if tool_calls.iter().any(|c| &c.id == call_id))
            }),
        };
        let Some(i) = found else { return false };
        let mut end = i + 1;
        if matches!(part, HistoryPart::ToolRound { .. }) {
            while matches!(self.messages.get(end), Some(ChatMessage::Tool { .. })) {
                end += 1;
            }
        }
        self.messages.drain(i..end);
        self.origins.drain(i..end);
        // A round whose question went first is dropped with it, as trimming does.
        let lead = self
            .messages
            .iter()
            .take_while(|m| matches!(m, ChatMessage::Tool { .. }))
            .count();
        self.messages.drain(..lead);
        self.origins.drain(..lead);
        true
    }

    /// Shortens what the assistant said in answer to `turn` to `heard` (a client truncating the
    /// audio it played): the message goes when nothing of it was heard. Returns whether the turn
    /// had such a message.
    pub fn truncate_assistant(&mut self, turn: TurnId, heard: &str) -> bool {
        let found = (0..self.messages.len()).rfind(|&i| {
            matches!(&self.messages[i], ChatMessage::Assistant { tool_calls, .. } if tool_calls.is_empty())
                && self.origins[i].is_some_and(|o| o.first == turn)
        });
        let Some(i) = found else { return false };
        let heard = heard.trim();
        if heard.is_empty() {
            self.messages.remove(i);
            self.origins.remove(i);
        } else if let ChatMessage::Assistant { text, .. } = &mut self.messages[i] {
            heard.clone_into(text);
        }
        true
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
        self.origins.drain(..cut);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_user_messages_merge() {
        let mut h = History::new(10);
        h.push_user("what's the weather", Some(TurnId(1)));
        h.push_user("in paris", Some(TurnId(2)));
        assert_eq!(
            h.messages(),
            &[ChatMessage::User("what's the weather in paris".into())]
        );
    }

    fn round(id: &str) -> (Vec<ToolCall>, Vec<(String, String)>) {
        let call = ToolCall {
            id: id.into(),
            name: "lookup".into(),
            arguments: "{}".into(),
        };
        (vec![call], vec![(id.into(), "{}".into())])
    }

    #[test]
    fn a_part_of_a_turn_is_removed_by_its_turn_and_a_tool_round_goes_whole() {
        let mut h = History::new(20);
        h.push_user("hi", Some(TurnId(1)));
        h.push_assistant_text("Hello.", Some(TurnId(1)));
        h.push_user("check my balance", Some(TurnId(2)));
        let (calls, results) = round("c1");
        h.push_tool_round(calls, results, TurnId(2));
        h.push_assistant_text("You have one dollar.", Some(TurnId(2)));
        assert!(!h.remove(TurnId(3), &HistoryPart::User));
        assert!(h.remove(
            TurnId(2),
            &HistoryPart::ToolRound {
                call_id: "c1".into()
            }
        ));
        assert_eq!(h.messages().len(), 4, "the call and its result: {h:?}");
        assert!(h.remove(TurnId(1), &HistoryPart::Assistant));
        assert!(
            !h.remove(TurnId(1), &HistoryPart::Assistant),
            "gone already"
        );
        assert_eq!(
            h.messages(),
            [
                ChatMessage::User("hi".into()),
                ChatMessage::User("check my balance".into()),
                ChatMessage::Assistant {
                    text: "You have one dollar.".into(),
                    tool_calls: vec![]
                }
            ]
        );
    }

    #[test]
    fn removing_the_question_of_a_tool_round_leaves_no_orphaned_result_first() {
        let mut h = History::new(20);
        let (calls, results) = round("c1");
        h.push_tool_round(calls, results, TurnId(1));
        h.push_user("thanks", Some(TurnId(2)));
        assert!(h.remove(
            TurnId(1),
            &HistoryPart::ToolRound {
                call_id: "c1".into()
            }
        ));
        assert_eq!(h.messages(), [ChatMessage::User("thanks".into())]);
    }

    #[test]
    fn a_merged_user_message_belongs_to_each_of_its_turns() {
        let mut h = History::new(20);
        h.push_user("what's the weather", Some(TurnId(1)));
        h.push_user("in paris", Some(TurnId(2)));
        assert!(h.remove(TurnId(2), &HistoryPart::User));
        assert!(h.messages().is_empty());
    }

    #[test]
    fn truncating_replaces_the_turns_answer_and_an_empty_one_goes() {
        let mut h = History::new(20);
        h.push_user("hi", Some(TurnId(1)));
        h.push_assistant_text("Hello there. How are you?", Some(TurnId(1)));
        assert!(!h.truncate_assistant(TurnId(2), "Hello"));
        assert!(h.truncate_assistant(TurnId(1), "Hello there."));
        assert_eq!(
            h.messages()[1],
            ChatMessage::Assistant {
                text: "Hello there.".into(),
                tool_calls: vec![]
            }
        );
        assert!(h.truncate_assistant(TurnId(1), " "));
        assert_eq!(h.messages().len(), 1);
    }

    #[test]
    fn empty_assistant_text_is_not_recorded() {
        let mut h = History::new(10);
        h.push_user("hi", None);
        h.push_assistant_text("  ", None);
        assert_eq!(h.messages().len(), 1);
    }

    #[test]
    fn trimming_keeps_the_question_of_a_tool_round() {
        let mut h = History::new(2);
        h.push_user("check my balance", None);
        h.push_tool_round(
            vec![ToolCall {
                id: "c1".into(),
                name: "check_balance".into(),
                arguments: "{}".into(),
            }],
            vec![("c1".into(), "{}".into())],
            TurnId(1),
        );
        assert!(
            matches!(h.messages()[0], ChatMessage::User(_)),
            "{:?}",
            h.messages()
        );
        h.push_user("thanks", None);
        assert_eq!(h.messages(), &[ChatMessage::User("thanks".into())]);
    }

    #[test]
    fn a_bot_that_speaks_alone_keeps_its_history_bounded() {
        let mut h = History::new(3);
        for i in 0..10 {
            h.push_assistant_text(&format!("line {i}"), None);
            h.push_tool_round(
                vec![ToolCall {
                    id: format!("c{i}"),
                    name: "lookup".into(),
                    arguments: "{}".into(),
                }],
                vec![(format!("c{i}"), "{}".into())],
                TurnId(i),
            );
        }
        assert!(h.messages().len() <= 3, "{:?}", h.messages());
        assert!(!matches!(h.messages()[0], ChatMessage::Tool { .. }));
    }

    #[test]
    fn trimming_never_starts_with_a_tool_result() {
        let mut h = History::new(4);
        h.push_user("check my balance", None);
        h.push_tool_round(
            vec![ToolCall {
                id: "c1".into(),
                name: "check_balance".into(),
                arguments: "{}".into(),
            }],
            vec![("c1".into(), "{\"balance\":1}".into())],
            TurnId(1),
        );
        h.push_assistant_text("You have one dollar.", None);
        h.push_user("thanks", None);
        assert!(h.messages().len() <= 4);
        assert!(matches!(h.messages()[0], ChatMessage::User(_)));
    }
}
