//! One WebSocket session, from the upgraded socket to its close: the driver (`driver.rs`), its
//! provider calls as streams (`calls.rs`) and the limits on what the client may send
//! (`limits.rs`).
//!
//! Below it: the state it shares (`state`), the socket (`transport`), the codec (`wire`) and the
//! registry's permit and drain signal (`registry`). Above it: the `/ws` upgrade handler
//! (`http`), which admits a session and hands its socket to `run`.

mod calls;
mod driver;
mod limits;
mod resume;

pub(crate) use driver::run;
pub(crate) use resume::{parse_received, ParkedSessions, ResumeRefusal, Resumed};
