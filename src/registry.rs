//! The session registry: admission up to `max_sessions`, the list of live sessions, and the
//! server's `Phase` on the way to shutdown.
//!
//! Admission is a compare-and-swap on one counter, so two upgrades racing for the last slot cannot
//! both win. A `Permit` is the session's place: dropping it (when the session's task ends, however
//! it ends) frees the slot and removes the session from the registry.
//!
//! The phase only moves forward:
//!
//! | phase      | `/health/ready` | new sessions | live sessions                     | left by                                  |
//! |------------|-----------------|--------------|-----------------------------------|------------------------------------------|
//! | `Serving`  | 200 (unless full or providers are down) | admitted | served | `lame_duck` (SIGTERM with a grace), `drain` (without) |
//! | `LameDuck` | 503 `draining`  | admitted, served as usual | served as usual, not told | `drain`, when the grace ends or is cut short (`end_grace`) |
//! | `Draining` | 503 `draining`  | refused (503) | told (`DRAIN`), closed (`CLOSE`) at the deadline | never |
//!
//! Sessions admitted in the lame-duck phase are told nothing yet, like the older ones: telling a
//! session makes it close after its response, and its client would reconnect through a balancer
//! that may still send it here. Every session, old or new, is told at the same moment, when
//! admission closes.

use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use futures_util::task::AtomicWaker;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// `Signal` flag: the server is draining; finish the response in progress, then close.
pub(crate) const DRAIN: u8 = 1;
/// `Signal` flag: close now (the drain deadline passed).
pub(crate) const CLOSE: u8 = 2;

/// How the registry tells one session to drain or close: a flag word and a waker, no lock. The
/// session polls it on every wake-up, so it must cost next to nothing (a cancellation token's
/// poll takes a lock).
#[derive(Debug, Default)]
pub struct Signal {
    flags: AtomicU8,
    waker: AtomicWaker,
}

impl Signal {
    /// Raises `flag` and wakes the session.
    pub fn raise(&self, flag: u8) {
        self.flags.fetch_or(flag, Ordering::SeqCst);
        self.waker.wake();
    }

    /// The flags raised so far.
    pub fn flags(&self) -> u8 {
        self.flags.load(Ordering::SeqCst)
    }

    /// Resolves with the flags once one not in `seen` is raised.
    pub fn raised(&self, seen: u8) -> impl std::future::Future<Output = u8> + '_ {
        std::future::poll_fn(move |cx| {
            let f = self.flags.load(Ordering::Acquire);
            if f & !seen != 0 {
                return std::task::Poll::Ready(f);
            }
            self.waker.register(cx.waker());
            // A raise between the load and the registration would otherwise be missed.
            let f = self.flags.load(Ordering::Acquire);
            if f & !seen != 0 {
                std::task::Poll::Ready(f)
            } else {
                std::task::Poll::Pending
            }
        })
    }
}

/// A session's id: a random UUID, sent in `ready` and carried by every log line of the session.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionId(pub Uuid);

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// What the registry knows of a live session.
#[derive(Debug)]
pub(crate) struct SessionEntry {
    /// Raising its flags drains or closes the session.
    pub signal: Arc<Signal>,
}

/// Where the server is on its way to shutdown (the module doc has the transition table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Ready and admitting.
    Serving = 0,
    /// Shutdown has begun: not ready, so balancers stop sending callers here, but the callers
    /// that still arrive are admitted and served (`server.drain_grace_s`).
    LameDuck = 1,
    /// Admission is closed; the live sessions finish their responses and close.
    Draining = 2,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Serving,
            1 => Phase::LameDuck,
            _ => Phase::Draining,
        }
    }
}

/// Why a session was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `max_sessions` are live.
    Full,
    /// The server is shutting down.
    Draining,
}

/// The registry of live sessions.
#[derive(Debug)]
pub struct SessionManager {
    sessions: DashMap<SessionId, SessionEntry>,
    active: AtomicUsize,
    max: usize,
    /// A `Phase`, only ever raised.
    phase: AtomicU8,
    total: AtomicU64,
    refused: AtomicU64,
    /// When the drain ends and the remaining sessions are closed.
    drain_deadline: OnceLock<Instant>,
    /// Cancelled to end the lame-duck grace early (it latches: a cut before the grace begins
    /// skips it).
    grace_cut: CancellationToken,
}

impl SessionManager {
    /// A registry admitting at most `max` sessions at once.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(SessionManager {
            sessions: DashMap::new(),
            active: AtomicUsize::new(0),
            max,
            phase: AtomicU8::new(Phase::Serving as u8),
            total: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            drain_deadline: OnceLock::new(),
            grace_cut: CancellationToken::new(),
        })
    }

    /// Admits a session, or says why not. In the lame-duck phase sessions are still admitted.
    ///
    /// # Errors
    /// `Refusal::Full` at capacity, `Refusal::Draining` once admission has closed.
    pub fn try_admit(self: &Arc<Self>) -> Result<Permit, Refusal> {
        if self.is_draining() {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Draining);
        }
        let admitted = self
            .active
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .is_ok();
        if !admitted {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return Err(Refusal::Full);
        }
        self.total.fetch_add(1, Ordering::Relaxed);
        let id = SessionId(Uuid::new_v4());
        let signal = Arc::new(Signal::default());
        self.sessions.insert(
            id,
            SessionEntry {
                signal: Arc::clone(&signal),
            },
        );
        // A drain that began while this session was being inserted may have missed it.
        if self.phase() == Phase::Draining {
            signal.raise(DRAIN);
        }
        Ok(Permit {
            id,
            signal,
            manager: Arc::clone(self),
        })
    }

    /// Sessions live now.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// Sessions in the registry (equals `active` except while a session is being admitted or
    /// released).
    pub fn registered(&self) -> usize {
        self.sessions.len()
    }

    /// Sessions admitted since start.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Sessions refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The admission limit.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Whether the limit is reached.
    pub fn is_full(&self) -> bool {
        self.active() >= self.max
    }

    /// Where the server is on its way to shutdown.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::SeqCst))
    }

    /// Whether admission has closed (`Phase::Draining`).
    pub fn is_draining(&self) -> bool {
        self.phase() == Phase::Draining
    }

    fn raise_phase(&self, to: Phase) {
        self.phase.fetch_max(to as u8, Ordering::SeqCst);
    }

    /// Starts the lame-duck grace: readiness fails from now on, while sessions are still admitted
    /// and served. Does nothing once admission has closed.
    pub fn lame_duck(&self) {
        self.raise_phase(Phase::LameDuck);
    }

    /// Ends the lame-duck grace early, or skips the next one when it has not begun (a second
    /// SIGTERM; a test's shutdown).
    pub fn end_grace(&self) {
        self.grace_cut.cancel();
    }

    /// Resolves once `end_grace` has been called.
    pub fn grace_ended(&self) -> impl std::future::Future<Output = ()> + '_ {
        self.grace_cut.cancelled()
    }

    /// Closes admission: new sessions are refused from now on, and every live session is told to
    /// finish its response in progress and close within `timeout`, which starts now.
    pub fn drain(&self, timeout: Duration) {
        let _ = self.drain_deadline.set(Instant::now() + timeout);
        self.raise_phase(Phase::Draining);
        for entry in &self.sessions {
            entry.signal.raise(DRAIN);
        }
    }

    /// Time left until the drain deadline (zero when not draining or past it).
    pub fn drain_remaining(&self) -> Duration {
        self.drain_deadline.get().map_or(Duration::ZERO, |d| {
            d.saturating_duration_since(Instant::now())
        })
    }

    /// Closes every live session now (the drain deadline has passed).
    pub fn close_all(&self) {
        self.raise_phase(Phase::Draining);
        for entry in &self.sessions {
            entry.signal.raise(CLOSE);
        }
    }
}

/// A live session's place in the registry; dropping it releases the place.
#[derive(Debug)]
pub struct Permit {
    id: SessionId,
    signal: Arc<Signal>,
    manager: Arc<SessionManager>,
}

impl Permit {
    /// The session's id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// How the registry tells the session to drain or close.
    pub fn signal(&self) -> Arc<Signal> {
        Arc::clone(&self.signal)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.manager.sessions.remove(&self.id);
        self.manager.active.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_up_to_the_limit_and_releases_on_drop() {
        let m = SessionManager::new(2);
        let a = m.try_admit().unwrap();
        let _b = m.try_admit().unwrap();
        assert_eq!(m.try_admit().unwrap_err(), Refusal::Full);
        assert_eq!(m.refused(), 1);
        drop(a);
        assert_eq!(m.active(), 1);
        assert_eq!(m.registered(), 1);
        let _c = m.try_admit().unwrap();
        assert_eq!(m.total(), 3);
    }

    #[test]
    fn draining_refuses_new_sessions_and_close_all_closes_live_ones() {
        let m = SessionManager::new(10);
        let a = m.try_admit().unwrap();
        let signal = a.signal();
        assert_eq!(signal.flags(), 0);
        m.drain(Duration::from_secs(30));
        assert_eq!(signal.flags(), DRAIN, "draining lets sessions finish");
        assert!(m.drain_remaining() > Duration::from_secs(29));
        m.close_all();
        assert_eq!(signal.flags(), DRAIN | CLOSE);
        assert_eq!(m.try_admit().unwrap_err(), Refusal::Draining);
    }

    #[test]
    fn the_lame_duck_admits_and_tells_nobody_until_admission_closes() {
        let m = SessionManager::new(10);
        let old = m.try_admit().unwrap();
        m.lame_duck();
        assert_eq!(m.phase(), Phase::LameDuck);
        assert!(!m.is_draining(), "admission is still open");
        let new = m.try_admit().expect("a lame duck admits");
        assert_eq!(old.signal().flags(), 0, "nobody is told during the grace");
        assert_eq!(new.signal().flags(), 0);
        assert_eq!(
            m.drain_remaining(),
            Duration::ZERO,
            "the drain clock has not started"
        );
        m.drain(Duration::from_secs(30));
        assert_eq!(m.phase(), Phase::Draining);
        assert_eq!(
            old.signal().flags(),
            DRAIN,
            "old and new sessions are told alike"
        );
        assert_eq!(new.signal().flags(), DRAIN);
        assert_eq!(m.try_admit().unwrap_err(), Refusal::Draining);
        // The phase never goes back.
        m.lame_duck();
        assert_eq!(m.phase(), Phase::Draining);
    }

    #[tokio::test]
    async fn ending_the_grace_latches() {
        let m = SessionManager::new(1);
        m.end_grace();
        // Already ended: resolves at once, even though the grace had not begun.
        tokio::time::timeout(Duration::from_secs(5), m.grace_ended())
            .await
            .expect("a grace ended before it began stays ended");
    }

    #[tokio::test]
    async fn a_raised_flag_wakes_the_session() {
        let m = SessionManager::new(1);
        let a = m.try_admit().unwrap();
        let signal = a.signal();
        let waiting = tokio::spawn(async move { signal.raised(0).await });
        tokio::task::yield_now().await;
        m.drain(Duration::from_secs(1));
        assert_eq!(waiting.await.unwrap(), DRAIN);
        // Already-seen flags do not resolve it again.
        let signal = a.signal();
        let again = tokio::time::timeout(Duration::from_millis(10), signal.raised(DRAIN)).await;
        assert!(again.is_err());
    }
}
