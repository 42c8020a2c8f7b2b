//! Header rewriting between client and backend: hop-by-hop removal, the
//! identity headers the backend trusts, and the forwarding headers.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the legacy ones proxies still
/// see; they describe one connection and never cross the gateway.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
];

/// Headers that carry the client's address, scheme and host. Stripped from
/// untrusted clients in every spelling, replaced with our own.
const FORWARDING: [&str; 7] = [
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-real-ip",
    "forwarded",
];

pub fn is_forwarding_header(name: &str) -> bool {
    FORWARDING.iter().any(|f| folds_to(name, f))
}

/// Whether `name` is `canonical` as a backend might read it: ASCII
/// case-insensitive, with `_` taken as `-` (CGI, PHP, Django and many
/// others fold `X_Auth_Subject` into the same variable as
/// `X-Auth-Subject`). `canonical` is lowercase with dashes.
pub fn folds_to(name: &str, canonical: &str) -> bool {
    name.len() == canonical.len()
        && name.bytes().zip(canonical.bytes()).all(|(a, c)| {
            let a = a.to_ascii_lowercase();
            a == c || (a == b'_' && c == b'-')
        })
}

/// Removes hop-by-hop headers and any header the `Connection` header names.
/// With `keep_upgrade`, `Upgrade` survives and `Connection: upgrade` is set
/// again, for WebSocket pass-through.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        .collect();
    for n in named {
        if !(keep_upgrade && n == header::UPGRADE) {
            h.remove(n);
        }
    }
    for n in &HOP_BY_HOP {
        h.remove(n);
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::UPGRADE);
    }
}

/// Removes every client-sent header that folds to one of `reserved` (the
/// identity headers of all routes), and the forwarding headers unless the
/// client is a trusted proxy. Allocates only when something is removed.
pub fn strip_client_claims(h: &mut HeaderMap, reserved: &[HeaderName], strip_forwarding: bool) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in h.keys() {
        let n = name.as_str();
        if reserved.iter().any(|r| folds_to(n, r.as_str()))
            || (strip_forwarding && is_forwarding_header(n))
        {
            doomed.push(name.clone());
        }
    }
    for n in doomed {
        h.remove(n);
    }
}

/// Sets `X-Forwarded-For/-Proto/-Host` and `Forwarded` (RFC 7239). From a
/// trusted proxy, its chain is extended; otherwise ours is the only one
/// (the client's copies were removed by [`strip_client_claims`]).
pub fn set_forwarding(h: &mut HeaderMap, peer: IpAddr, proto: &'static str, host: &str) {
    let peer_s = peer.to_string();
    let xff = match h.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {peer_s}"),
        None => peer_s.clone(),
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert("x-forwarded-for", v);
    }
    if !h.contains_key("x-forwarded-proto") {
        h.insert("x-forwarded-proto", HeaderValue::from_static(proto));
    }
    if !host.is_empty() && !h.contains_key("x-forwarded-host") {
        if let Ok(v) = HeaderValue::from_str(host) {
            h.insert("x-forwarded-host", v);
        }
    }
    let node = match peer {
        IpAddr::V4(_) => peer_s,
        IpAddr::V6(_) => format!("\"[{peer_s}]\""),
    };
    let mut element = format!("for={node};proto={proto}");
    if !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        element.push_str(&format!(";host=\"{host}\""));
    }
    let fwd = match h.get(header::FORWARDED).and_then(|v| v.to_str().ok()) {
        Some(prev) => format!("{prev}, {element}"),
        None => element,
    };
    if let Ok(v) = HeaderValue::from_str(&fwd) {
        h.insert(header::FORWARDED, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folding_matches_backend_spellings() {
        assert!(folds_to("x-auth-subject", "x-auth-subject"));
        assert!(folds_to("X_Auth_Subject", "x-auth-subject"));
        assert!(folds_to("x_auth-subject", "x-auth-subject"));
        assert!(!folds_to("x-auth-subjects", "x-auth-subject"));
        assert!(!folds_to("x-auth_subjecT2", "x-auth-subject"));
        assert!(is_forwarding_header("X_Forwarded_For"));
    }

    #[test]
    fn strips_identity_and_untrusted_forwarding() {
        let mut h = HeaderMap::new();
        h.insert("x_auth_subject", "evil".parse().unwrap());
        h.append("x-auth-subject", "evil2".parse().unwrap());
        h.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        strip_client_claims(&mut h, &[HeaderName::from_static("x-auth-subject")], true);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert("connection", "keep-alive, x-secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("te", "trailers".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
    }

    #[test]
    fn forwarding_headers_for_ipv6() {
        let mut h = HeaderMap::new();
        set_forwarding(&mut h, "::1".parse().unwrap(), "https", "app.example");
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(
            h["forwarded"],
            "for=\"[::1]\";proto=https;host=\"app.example\""
        );
    }
}
