//! The `client_message` fuzz target's body: one WebSocket text or binary frame through the `/ws`
//! codec.
//!
//! The cargo-fuzz target `fuzz/fuzz_targets/client_message.rs` (nightly, libFuzzer) calls it
//! through `voxd::fuzzing`, and this module's tests replay the committed corpus
//! (`fuzz/corpus/client_message/`) and a bounded random run on stable in `cargo test`, so CI
//! exercises the same code. It panics when a promise is broken; an error for bad input is a pass.
//! See docs/fuzzing.md.
//!
//! Built for tests and with the `fuzzing` feature; not part of the server.

use serde_json::Value;

use super::{check_audio, parse_client, ClientMessage, ServerMessage};

/// Every `code` a client message can be refused with.
const CLIENT_CODES: &[&str] = &[
    "invalid_json",
    "invalid_message",
    "missing_type",
    "unknown_type",
    "invalid_field",
];

/// An error message echoes at most 64 characters of the client's input, so it stays short
/// whatever the input.
const MAX_ERROR_MESSAGE_BYTES: usize = 1024;

/// `client_message`: a WebSocket frame. As text (when UTF-8), `parse_client` never panics; what
/// it accepts is a JSON object whose `type` names the variant, with the fields it carries; what it
/// refuses gets a stable code and a short message. As binary, `check_audio` accepts exactly the
/// whole numbers of 16-bit samples.
///
/// # Panics
/// When a promise is broken.
pub fn client_message(data: &[u8]) {
    assert_eq!(
        check_audio(data.len()).is_ok(),
        data.len().is_multiple_of(2),
        "check_audio({})",
        data.len()
    );
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_client(text) {
        Ok(msg) => {
            let value: Value = serde_json::from_str(text).expect("an accepted message is JSON");
            let map = value.as_object().expect("an accepted message is an object");
            let ty = map.get("type").and_then(Value::as_str);
            match &msg {
                ClientMessage::SpeechStart => assert_eq!(ty, Some("speech_start")),
                ClientMessage::SpeechEnd => assert_eq!(ty, Some("speech_end")),
                ClientMessage::Text(t) | ClientMessage::Say(t) => {
                    let want = if matches!(msg, ClientMessage::Say(_)) {
                        "say"
                    } else {
                        "text"
                    };
                    assert_eq!(ty, Some(want));
                    assert!(!t.trim().is_empty(), "an empty {want} was accepted");
                    assert_eq!(map.get("text").and_then(Value::as_str), Some(t.as_str()));
                }
                ClientMessage::Respond => assert_eq!(ty, Some("respond")),
                ClientMessage::Cancel => assert_eq!(ty, Some("cancel")),
                ClientMessage::SessionUpdate(_) => assert_eq!(ty, Some("session_update")),
                ClientMessage::ToolResult { call_id, result } => {
                    assert_eq!(ty, Some("tool_result"));
                    assert_eq!(
                        map.get("call_id").and_then(Value::as_str),
                        Some(call_id.as_str())
                    );
                    assert!(result.len() <= super::MAX_TOOL_RESULT_BYTES);
                }
                ClientMessage::Ping(id) => {
                    assert_eq!(ty, Some("ping"));
                    assert_eq!(id.as_ref(), map.get("id"));
                    let pong = ServerMessage::Pong { id: id.as_ref() }.to_json();
                    let pong: Value = serde_json::from_str(&pong).expect("a pong is JSON");
                    assert_eq!(pong["type"], "pong");
                }
            }
        }
        Err(e) => {
            assert!(CLIENT_CODES.contains(&e.code), "unknown code {:?}", e.code);
            assert!(
                !e.message.is_empty() && e.message.len() <= MAX_ERROR_MESSAGE_BYTES,
                "an error message of {} bytes",
                e.message.len()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    //! The stable, bounded equivalent of the fuzz runs: every committed corpus input, then a
    //! fixed number of random ones.

    use proptest::prelude::*;

    use super::*;
    use crate::fuzz_corpus::replay;

    #[test]
    fn client_message_corpus() {
        replay("client_message", client_message);
    }

    /// Client-message-shaped JSON, mostly: objects with a `type` and a `text` or an `id`.
    fn json_message() -> impl Strategy<Value = Vec<u8>> {
        let ty = prop_oneof![
            Just("\"speech_start\"".to_owned()),
            Just("\"speech_end\"".to_owned()),
            Just("\"text\"".to_owned()),
            Just("\"ping\"".to_owned()),
            "\"[a-z_]{0,12}\"",
            "[0-9]{1,3}|null|true|\\[\\]|\\{\\}",
        ];
        let value = prop_oneof![
            "\"(\\PC|\\\\[nu\"])*\"",
            "-?[0-9]{1,30}(\\.[0-9]{1,5})?(e[+-]?[0-9]{1,3})?",
            Just("null".to_owned()),
            Just("{\"a\":[1,{\"b\":null}]}".to_owned()),
        ];
        (ty, value, "text|id|type|extra", any::<bool>()).prop_map(|(ty, v, key, swap)| {
            let s = if swap {
                format!("{{\"{key}\":{v},\"type\":{ty}}}")
            } else {
                format!("{{\"type\":{ty},\"{key}\":{v}}}")
            };
            s.into_bytes()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn client_message_random(data in prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            "\\PC{0,64}".prop_map(String::into_bytes),
            json_message(),
        ]) {
            client_message(&data);
        }
    }
}
