//! The client protocols, as codecs: a frame in, a core input (or a stable error) out; a core
//! output in, a frame out. Each protocol is sans-IO, with its own tests on bytes: nothing here
//! reads a socket, a clock or the server's state, so the session driver serves any of them.
//!
//! One protocol today: voxd's own JSON over `/ws` (`voxd.rs`, docs/protocol.md).

mod voxd;

#[cfg(any(test, feature = "fuzzing"))]
pub use voxd::fuzz::client_message;
pub(crate) use voxd::{check_audio, ServerMessage, PROTOCOL_VERSION};
pub use voxd::{encode_event, parse_client, ClientMessage, ProtocolError};
