//! Per-client admission quotas for `/ws`: new sessions per second and concurrent sessions, per IP
//! address and per API key (`[quotas]`, all off by default).
//!
//! Rates are GCRA buckets from `governor`, keyed by IP or key id; concurrency is a count per IP or
//! key that a `QuotaGuard` holds for the session's lifetime. Both are touched once per upgrade,
//! never per frame. A refused upgrade gets 429 with `Retry-After` and a code saying which quota.
//!
//! Idle keys are swept by `sweep` (from the metrics upkeep task), so an address that came once does
//! not hold memory forever.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::QuotasSection;

/// Which quota refused an upgrade.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaRefusal {
    /// Too many new sessions per second from this IP.
    IpRate(Duration),
    /// Too many concurrent sessions from this IP.
    IpSessions,
    /// Too many new sessions per second with this key.
    KeyRate(Duration),
    /// Too many concurrent sessions with this key.
    KeySessions,
}

impl QuotaRefusal {
    /// The stable code in the 429 body and the `reason` label of `voxd_sessions_refused_total`.
    pub fn code(self) -> &'static str {
        match self {
            QuotaRefusal::IpRate(_) => "ip_rate_limited",
            QuotaRefusal::IpSessions => "ip_session_limit",
            QuotaRefusal::KeyRate(_) => "key_rate_limited",
            QuotaRefusal::KeySessions => "key_session_limit",
        }
    }

    /// Seconds a client should wait before retrying (at least 1).
    pub fn retry_after_s(self) -> u64 {
        match self {
            QuotaRefusal::IpRate(d) | QuotaRefusal::KeyRate(d) => {
                d.as_secs_f64().ceil().max(1.0) as u64
            }
            QuotaRefusal::IpSessions | QuotaRefusal::KeySessions => 1,
        }
    }

    /// What the client is told.
    pub fn message(self) -> String {
        match self {
            QuotaRefusal::IpRate(_) => "too many new sessions from this address; slow down".into(),
            QuotaRefusal::IpSessions => "too many concurrent sessions from this address".into(),
            QuotaRefusal::KeyRate(_) => "too many new sessions with this API key; slow down".into(),
            QuotaRefusal::KeySessions => "too many concurrent sessions with this API key".into(),
        }
    }
}

struct Counted<K: std::hash::Hash + Eq> {
    max: u32,
    live: DashMap<K, u32>,
}

impl<K: std::hash::Hash + Eq + Clone> Counted<K> {
    /// A count capped at `max`; `None` (off) for 0.
    fn new(max: u32) -> Option<Self> {
        (max > 0).then(|| Counted {
            max,
            live: DashMap::new(),
        })
    }

    fn try_take(&self, key: &K) -> bool {
        let mut n = self.live.entry(key.clone()).or_insert(0);
        if *n >= self.max {
            return false;
        }
        *n += 1;
        true
    }

    fn give_back(&self, key: &K) {
        // Remove the entry at zero, so the map holds only clients with live sessions.
        self.live.remove_if_mut(key, |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }
}

/// The quotas in force.
pub struct Quotas {
    ip_rate: Option<DefaultKeyedRateLimiter<IpAddr>>,
    key_rate: Option<DefaultKeyedRateLimiter<String>>,
    ip_sessions: Option<Counted<IpAddr>>,
    key_sessions: Option<Counted<String>>,
    /// Whether `X-Forwarded-For` names the client.
    pub trust_x_forwarded_for: bool,
}

impl std::fmt::Debug for Quotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quotas").finish_non_exhaustive()
    }
}

/// The bucket for `per_s` new sessions a second after a burst of `burst`; `None` (off) for 0. The
/// rate is in range: `QuotasSection::check` has passed.
fn rate(per_s: f64, burst: u32) -> Option<Quota> {
    if per_s == 0.0 {
        return None;
    }
    let period = Duration::from_secs_f64(1.0 / per_s);
    let burst = NonZeroU32::new(burst.max(1)).expect("at least 1");
    Some(
        Quota::with_period(period)
            .expect("a positive period")
            .allow_burst(burst),
    )
}

impl Quotas {
    /// The quotas `q` asks for. `q` passed `QuotasSection::check` (it comes from a validated
    /// `Config`): the rates are not checked again.
    pub(crate) fn from_config(q: &QuotasSection) -> Quotas {
        Quotas {
            ip_rate: rate(q.per_ip_sessions_per_s, q.per_ip_burst).map(RateLimiter::keyed),
            key_rate: rate(q.per_key_sessions_per_s, q.per_key_burst).map(RateLimiter::keyed),
            ip_sessions: Counted::new(q.per_ip_max_sessions),
            key_sessions: Counted::new(q.per_key_max_sessions),
            trust_x_forwarded_for: q.trust_x_forwarded_for,
        }
    }

    /// Admits a new session from `ip` with key `key_id` (none when auth is off), or says which
    /// quota refuses it. Concurrency is checked before rates, so a refused client does not use up
    /// its rate.
    ///
    /// # Errors
    /// The quota that refused.
    pub fn admit(
        self: &Arc<Self>,
        ip: IpAddr,
        key_id: Option<&str>,
    ) -> Result<QuotaGuard, QuotaRefusal> {
        let mut guard = QuotaGuard {
            quotas: Arc::clone(self),
            ip: None,
            key: None,
        };
        if let Some(c) = &self.ip_sessions {
            if !c.try_take(&ip) {
                return Err(QuotaRefusal::IpSessions);
            }
            guard.ip = Some(ip);
        }
        let key = key_id.map(str::to_owned);
        if let (Some(c), Some(k)) = (&self.key_sessions, &key) {
            if !c.try_take(k) {
                return Err(QuotaRefusal::KeySessions);
            }
            guard.key = Some(k.clone());
        }
        let now = || DefaultClock::default().now();
        if let Some(r) = &self.ip_rate {
            r.check_key(&ip)
                .map_err(|n| QuotaRefusal::IpRate(n.wait_time_from(now())))?;
        }
        if let (Some(r), Some(k)) = (&self.key_rate, &key) {
            r.check_key(k)
                .map_err(|n| QuotaRefusal::KeyRate(n.wait_time_from(now())))?;
        }
        Ok(guard)
    }

    /// Forgets rate state of clients that have been quiet long enough to have a full bucket.
    pub fn sweep(&self) {
        if let Some(r) = &self.ip_rate {
            r.retain_recent();
            r.shrink_to_fit();
        }
        if let Some(r) = &self.key_rate {
            r.retain_recent();
            r.shrink_to_fit();
        }
    }
}

/// A session's share of its IP's and key's concurrency quotas; dropping it gives them back.
pub struct QuotaGuard {
    quotas: Arc<Quotas>,
    ip: Option<IpAddr>,
    key: Option<String>,
}

impl std::fmt::Debug for QuotaGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaGuard")
            .field("ip", &self.ip)
            .field("key", &self.key)
            .finish()
    }
}

impl Drop for QuotaGuard {
    fn drop(&mut self) {
        if let (Some(c), Some(ip)) = (&self.quotas.ip_sessions, &self.ip) {
            c.give_back(ip);
        }
        if let (Some(c), Some(k)) = (&self.quotas.key_sessions, &self.key) {
            c.give_back(k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(q: QuotasSection) -> Arc<Quotas> {
        Arc::new(Quotas::from_config(&q))
    }

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn off_by_default() {
        let q = quotas(QuotasSection::default());
        let guards: Vec<_> = (0..1000).map(|_| q.admit(A, Some("k")).unwrap()).collect();
        assert_eq!(guards.len(), 1000);
    }

    #[test]
    fn concurrency_per_ip_and_per_key_is_given_back_on_drop() {
        let q = quotas(QuotasSection {
            per_ip_max_sessions: 2,
            per_key_max_sessions: 3,
            ..QuotasSection::default()
        });
        let a1 = q.admit(A, Some("k")).unwrap();
        let _a2 = q.admit(A, Some("k")).unwrap();
        assert_eq!(q.admit(A, Some("k")).unwrap_err(), QuotaRefusal::IpSessions);
        let _b1 = q.admit(B, Some("k")).unwrap();
        assert_eq!(
            q.admit(B, Some("k")).unwrap_err(),
            QuotaRefusal::KeySessions
        );
        // Another key from B is fine; and the refused attempts took nothing.
        let _b2 = q.admit(B, Some("other")).unwrap();
        drop(a1);
        let _a3 = q.admit(A, Some("other")).unwrap();
        assert_eq!(q.ip_sessions.as_ref().unwrap().live.len(), 2);
    }

    #[test]
    fn rates_refuse_past_the_burst_with_a_retry_after() {
        let q = quotas(QuotasSection {
            per_ip_sessions_per_s: 0.5,
            per_ip_burst: 3,
            ..QuotasSection::default()
        });
        for _ in 0..3 {
            drop(q.admit(A, None).unwrap());
        }
        let refusal = q.admit(A, None).unwrap_err();
        assert!(matches!(refusal, QuotaRefusal::IpRate(_)));
        assert_eq!(refusal.code(), "ip_rate_limited");
        assert!((1..=2).contains(&refusal.retry_after_s()), "{refusal:?}");
        // Another address has its own bucket; no key means no key quota.
        drop(q.admit(B, None).unwrap());
    }

    #[test]
    fn bad_rates_name_the_key() {
        let e = QuotasSection {
            per_key_sessions_per_s: -1.0,
            ..QuotasSection::default()
        }
        .check()
        .unwrap_err();
        assert!(
            e.to_string().contains("quotas.per_key_sessions_per_s"),
            "{e}"
        );
    }
}
