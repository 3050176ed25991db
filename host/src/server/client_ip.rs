//! The client IP: the socket peer, or — only when the peer is a trusted proxy —
//! the right-most untrusted address of `X-Forwarded-For`.

use std::net::IpAddr;

use http::HeaderMap;
use ipnet::IpNet;

/// Resolves the client IP for policy decisions and logs.
pub fn resolve(peer: IpAddr, headers: &HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut client = peer;
    for value in headers.get_all("x-forwarded-for").iter().rev() {
        let Ok(text) = value.to_str() else {
            return client;
        };
        for hop in text.rsplit(',') {
            let Ok(ip) = hop.trim().parse::<IpAddr>() else {
                return client;
            };
            client = ip;
            if !is_trusted(&ip) {
                return ip;
            }
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(xff: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Ok(v) = xff.parse() {
            h.insert("x-forwarded-for", v);
        }
        h
    }

    #[test]
    fn untrusted_peers_cannot_spoof() {
        let peer: IpAddr = [203, 0, 113, 9].into();
        assert_eq!(resolve(peer, &headers("10.0.0.1"), &[]), peer);
    }

    #[test]
    fn trusted_proxies_are_skipped() -> Result<(), ipnet::AddrParseError> {
        let trusted = vec!["127.0.0.0/8".parse::<IpNet>()?, "10.0.0.0/8".parse()?];
        let peer: IpAddr = [127, 0, 0, 1].into();
        let got = resolve(
            peer,
            &headers("198.51.100.7, 203.0.113.5, 10.1.1.1"),
            &trusted,
        );
        assert_eq!(got, IpAddr::from([203, 0, 113, 5]));
        assert_eq!(resolve(peer, &headers("garbage"), &trusted), peer);
        Ok(())
    }
}
