//! Reconnect-resume: a `/ws` session whose connection drops without a close (a mobile network
//! blip, a proxy restart: close code 1006) is parked for `server.resume_window_s`, still holding
//! its place against `max_sessions`. Its client comes back with `?resume=SESSION_ID` and the
//! `resume_token` it got in `ready`; the upgrade handler claims the parked session here and hands
//! it the new socket, and the same driver goes on with the same core: history, settings, turn
//! ids, and a response in progress continuing from what the client received.
//!
//! A claim may also come before voxd noticed the drop: a connection that vanished silently (a
//! phone that changed networks sends no reset) is noticed only when a write times out. So a
//! resumable session is registered here for as long as it lives, with or without a connection:
//! a claim for a session still connected takes it over, and the old connection is let go. Only
//! the holder of the token can do that: the client the session gave it to.
//!
//! The token is 244 random bits (two v4 UUIDs from the OS's generator), never derived from the
//! session id, and compared in constant time. A claim with a wrong token leaves the session
//! parked; one for a session that is not waiting here (it ended, its window passed, or it lives
//! on another instance) is refused as unknown.

use dashmap::DashMap;
use tokio::sync::oneshot;
use voxd_core::TurnId;

use crate::registry::SessionId;
use crate::transport::WebSocket;

/// What a resuming client brings to its parked session.
pub(crate) struct Resumed {
    /// The new connection.
    pub(crate) socket: WebSocket,
    /// How much of a response's audio the client received before the drop: the turn and its
    /// samples.
    pub(crate) received: Option<(TurnId, u64)>,
}

/// Why a resume was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResumeRefusal {
    /// No session with that id is here.
    Unknown,
    /// The session is here, but the token is not its.
    Denied,
}

struct Parked {
    token: String,
    handoff: oneshot::Sender<Resumed>,
}

/// The sessions of this process a client may come back to: connected or parked.
#[derive(Default)]
pub(crate) struct ParkedSessions {
    parked: DashMap<SessionId, Parked>,
}

impl std::fmt::Debug for ParkedSessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ParkedSessions")
            .field("parked", &self.parked.len())
            .finish()
    }
}

/// A new resume token: 244 random bits, as 64 hex digits.
pub(crate) fn new_token() -> String {
    let a = uuid::Uuid::new_v4().simple().to_string();
    let b = uuid::Uuid::new_v4().simple().to_string();
    a + &b
}

/// `a == b`, in time that depends only on their lengths.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

impl ParkedSessions {
    /// Registers session `id` (again, after each claim): a claim with `token` hands its new
    /// socket to the receiver.
    pub(crate) fn register(&self, id: SessionId, token: &str) -> oneshot::Receiver<Resumed> {
        let (handoff, rx) = oneshot::channel();
        self.parked.insert(
            id,
            Parked {
                token: token.to_owned(),
                handoff,
            },
        );
        rx
    }

    /// The session can no longer be resumed (it ended, its window passed, or the server
    /// drains). `false`: a client claimed it first, and its socket is on the way.
    pub(crate) fn unregister(&self, id: SessionId) -> bool {
        self.parked.remove(&id).is_some()
    }

    /// A client claims session `id` with `token`: where to hand its socket.
    pub(crate) fn claim(
        &self,
        id: SessionId,
        token: &str,
    ) -> Result<oneshot::Sender<Resumed>, ResumeRefusal> {
        match self.parked.remove_if(&id, |_, p| same(&p.token, token)) {
            Some((_, p)) => Ok(p.handoff),
            None if self.parked.contains_key(&id) => Err(ResumeRefusal::Denied),
            None => Err(ResumeRefusal::Unknown),
        }
    }
}

/// `received=TURN:BYTES` of a resume: the turn whose audio the client was receiving and how
/// many bytes of it arrived (PCM16: two a sample).
pub(crate) fn parse_received(v: &str) -> Option<(TurnId, u64)> {
    let (turn, bytes) = v.split_once(':')?;
    Some((TurnId(turn.parse().ok()?), bytes.parse::<u64>().ok()? / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_long_random_and_compared_whole() {
        let (a, b) = (new_token(), new_token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(same(&a, &a.clone()));
        assert!(!same(&a, &b));
        assert!(!same(&a, &a[..63]));
    }

    #[test]
    fn a_claim_needs_the_sessions_token_and_takes_it_once() {
        let parked = ParkedSessions::default();
        let id = SessionId(uuid::Uuid::new_v4());
        let token = new_token();
        let _rx = parked.register(id, &token);
        assert_eq!(
            parked.claim(id, "wrong").err(),
            Some(ResumeRefusal::Denied),
            "a wrong token leaves it parked"
        );
        assert!(parked.claim(id, &token).is_ok());
        assert_eq!(parked.claim(id, &token).err(), Some(ResumeRefusal::Unknown));
        assert!(!parked.unregister(id), "claimed: its socket is on the way");
        assert_eq!(
            parked.claim(SessionId(uuid::Uuid::new_v4()), &token).err(),
            Some(ResumeRefusal::Unknown)
        );
    }

    #[test]
    fn received_is_a_turn_and_bytes() {
        assert_eq!(parse_received("3:6400"), Some((TurnId(3), 3200)));
        assert_eq!(parse_received("3"), None);
        assert_eq!(parse_received("x:1"), None);
    }
}
