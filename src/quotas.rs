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
use serde::Deserialize;

use crate::config::ConfigError;

/// `[quotas]`: 0 turns a quota off.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotasSection {
    /// New `/ws` sessions per second from one IP address (sustained).
    pub per_ip_sessions_per_s: f64,
    /// New sessions one IP address may open at once before the rate applies.
    pub per_ip_burst: u32,
    /// Concurrent sessions from one IP address.
    pub per_ip_max_sessions: u32,
    /// New sessions per second with one API key (or tokens minted by it).
    pub per_key_sessions_per_s: f64,
    /// New sessions one key may open at once before the rate applies.
    pub per_key_burst: u32,
    /// Concurrent sessions with one API key (or tokens minted by it).
    pub per_key_max_sessions: u32,
    /// Take the client's address from the last entry of `X-Forwarded-For` (the one the nearest
    /// proxy appended). Only behind a proxy that sets it: otherwise clients could pick their IP.
    pub trust_x_forwarded_for: bool,
}

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

fn rate(key: &str, per_s: f64, burst: u32) -> Result<Option<Quota>, ConfigError> {
    if per_s == 0.0 {
        return Ok(None);
    }
    if !(0.001..=100_000.0).contains(&per_s) {
        return Err(ConfigError::Invalid {
            key: format!("quotas.{key}"),
            message: format!("is {per_s}; expected 0 (off) or 0.001 to 100000"),
        });
    }
    let period = Duration::from_secs_f64(1.0 / per_s);
    let burst = NonZeroU32::new(burst.max(1)).expect("at least 1");
    Ok(Some(
        Quota::with_period(period)
            .expect("a positive period")
            .allow_burst(burst),
    ))
}

impl Quotas {
    /// The quotas `q` asks for.
    ///
    /// # Errors
    /// `ConfigError::Invalid` naming the key when a rate is out of range.
    pub fn from_config(q: &QuotasSection) -> Result<Quotas, ConfigError> {
        Ok(Quotas {
            ip_rate: rate(
                "per_ip_sessions_per_s",
                q.per_ip_sessions_per_s,
                q.per_ip_burst,
            )?
            .map(RateLimiter::keyed),
            key_rate: rate(
                "per_key_sessions_per_s",
                q.per_key_sessions_per_s,
                q.per_key_burst,
            )?
            .map(RateLimiter::keyed),
            ip_sessions: Counted::new(q.per_ip_max_sessions),
            key_sessions: Counted::new(q.per_key_max_sessions),
            trust_x_forwarded_for: q.trust_x_forwarded_for,
        })
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

/// The client's address: the socket's peer, or with `trust_x_forwarded_for` the last entry of the
/// last `X-Forwarded-For` header (the one the nearest proxy appended; earlier entries are the
/// client's to choose). An entry that does not parse (`ip:port`, `[v6]:port` are understood) means
/// the peer. IPv6 addresses are keyed by their /64, since one client usually holds a whole /64;
/// IPv4-mapped IPv6 addresses are keyed as IPv4.
pub fn client_ip(peer: IpAddr, headers: &axum::http::HeaderMap, trust_forwarded: bool) -> IpAddr {
    let ip = if trust_forwarded {
        headers
            .get_all("x-forwarded-for")
            .iter()
            .next_back()
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.rsplit(',').next())
            .and_then(parse_forwarded)
            .unwrap_or(peer)
    } else {
        peer
    };
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let s = v6.segments();
            IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

/// One `X-Forwarded-For` entry: `ip`, `ip:port` or `[v6]:port`.
fn parse_forwarded(entry: &str) -> Option<IpAddr> {
    let entry = entry.trim();
    entry
        .parse::<IpAddr>()
        .ok()
        .or_else(|| entry.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quotas(q: QuotasSection) -> Arc<Quotas> {
        Arc::new(Quotas::from_config(&q).unwrap())
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
    fn forwarded_addresses_only_when_trusted_and_only_the_proxys_entry() {
        let header = |v: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert("x-forwarded-for", v.parse().unwrap());
            h
        };
        let h = header("1.2.3.4, 10.0.0.2");
        assert_eq!(client_ip(A, &h, false), A);
        assert_eq!(client_ip(A, &h, true), B);
        assert_eq!(client_ip(A, &axum::http::HeaderMap::new(), true), A);
        // A proxy that appends a port; a client-chosen entry before it changes nothing.
        assert_eq!(client_ip(A, &header("9.9.9.9, 10.0.0.2:5555"), true), B);
        // An entry that does not parse means the peer, never an earlier entry.
        assert_eq!(client_ip(A, &header("9.9.9.9, garbage"), true), A);
        // IPv6 by /64, and IPv4-mapped as IPv4.
        let v6: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(client_ip(v6, &h, false), client_ip(same_64, &h, false));
        assert_eq!(
            client_ip(A, &header("[2001:db8::1]:443"), true).to_string(),
            "2001:db8::"
        );
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(client_ip(mapped, &h, false), A);
    }

    #[test]
    fn bad_rates_name_the_key() {
        let e = Quotas::from_config(&QuotasSection {
            per_key_sessions_per_s: -1.0,
            ..QuotasSection::default()
        })
        .unwrap_err();
        assert!(
            e.to_string().contains("quotas.per_key_sessions_per_s"),
            "{e}"
        );
    }
}
