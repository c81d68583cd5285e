//! Which address a request comes from, as the quotas key it: the socket's peer, or behind a
//! trusted proxy the entry it appended to `X-Forwarded-For` (`quotas.trust_x_forwarded_for`).

use std::net::IpAddr;

use axum::http::HeaderMap;

/// The client's address: the socket's peer, or with `trust_x_forwarded_for` the last entry of the
/// last `X-Forwarded-For` header (the one the nearest proxy appended; earlier entries are the
/// client's to choose). An entry that does not parse (`ip:port`, `[v6]:port` are understood) means
/// the peer. IPv6 addresses are keyed by their /64, since one client usually holds a whole /64;
/// IPv4-mapped IPv6 addresses are keyed as IPv4.
pub(super) fn client_ip(peer: IpAddr, headers: &HeaderMap, trust_forwarded: bool) -> IpAddr {
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

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

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
}
