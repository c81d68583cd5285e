//! The bytes' way in and out: the accept loop (`accept.rs`: TCP, hyper's HTTP/1.1 connections,
//! graceful shutdown) and a session's WebSocket (`ws.rs`: the upgrade handshake and tungstenite's
//! protocol engine on the socket hyper hands back).
//!
//! It knows sockets and HTTP framing, not routes, sessions or JSON: the accept loop serves the
//! router it is given, and the socket carries whatever messages the session driver writes.

mod accept;
mod ws;

pub(crate) use accept::serve;
pub(crate) use ws::{NotWebSocket, WebSocket, WsUpgrade};
