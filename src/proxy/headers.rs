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
    // One pass over the (few) names present first: most messages carry
    // none of these, and then nothing is hashed, collected or removed.
    let present = h
        .keys()
        .any(|k| k == header::UPGRADE || HOP_BY_HOP.contains(k));
    if present {
        if h.contains_key(header::CONNECTION) {
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
        }
        for n in &HOP_BY_HOP {
            h.remove(n);
        }
        if !keep_upgrade {
            h.remove(header::UPGRADE);
        }
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
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

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The client address as the forwarding headers write it, formatted once
/// per connection rather than on every request.
#[derive(Debug, Clone)]
pub struct ClientAddr {
    /// `X-Forwarded-For` when there is no chain before us.
    xff: HeaderValue,
    /// The `for=` node of `Forwarded` (IPv6 quoted and bracketed).
    node: Box<str>,
}

impl ClientAddr {
    pub fn new(peer: IpAddr) -> Self {
        let plain = peer.to_string();
        let node = match peer {
            IpAddr::V4(_) => plain.clone(),
            IpAddr::V6(_) => format!("\"[{plain}]\""),
        };
        ClientAddr {
            xff: HeaderValue::from_maybe_shared(bytes::Bytes::from(plain))
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
            node: node.into(),
        }
    }
}

/// Sets `X-Forwarded-For/-Proto/-Host` and `Forwarded` (RFC 7239). From a
/// trusted proxy, its chain is extended; otherwise ours is the only one
/// (the client's copies were removed by [`strip_client_claims`]).
pub fn set_forwarding(h: &mut HeaderMap, client: &ClientAddr, proto: &'static str, host: &str) {
    // Room for the four headers at once, instead of growing the map in
    // steps as they are inserted.
    h.reserve(4);
    let xff = match h.get(&X_FORWARDED_FOR).map(|v| v.as_bytes()) {
        Some(prev) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + client.xff.len());
            v.extend_from_slice(prev);
            v.extend_from_slice(b", ");
            v.extend_from_slice(client.xff.as_bytes());
            HeaderValue::from_maybe_shared(bytes::Bytes::from(v)).ok()
        }
        None => Some(client.xff.clone()),
    };
    if let Some(v) = xff {
        h.insert(X_FORWARDED_FOR, v);
    }
    if !h.contains_key(&X_FORWARDED_PROTO) {
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !host.is_empty() && !h.contains_key(&X_FORWARDED_HOST) {
        if let Ok(v) = HeaderValue::from_str(host) {
            h.insert(X_FORWARDED_HOST, v);
        }
    }
    let prev = h.get(header::FORWARDED).map(|v| v.as_bytes());
    let mut fwd =
        Vec::with_capacity(prev.map_or(0, |p| p.len() + 2) + 20 + client.node.len() + host.len());
    if let Some(prev) = prev {
        fwd.extend_from_slice(prev);
        fwd.extend_from_slice(b", ");
    }
    fwd.extend_from_slice(b"for=");
    fwd.extend_from_slice(client.node.as_bytes());
    fwd.extend_from_slice(b";proto=");
    fwd.extend_from_slice(proto.as_bytes());
    if !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
    {
        fwd.extend_from_slice(b";host=\"");
        fwd.extend_from_slice(host.as_bytes());
        fwd.push(b'"');
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(fwd)) {
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
        set_forwarding(
            &mut h,
            &ClientAddr::new("::1".parse().unwrap()),
            "https",
            "app.example",
        );
        assert_eq!(h["x-forwarded-for"], "::1");
        assert_eq!(
            h["forwarded"],
            "for=\"[::1]\";proto=https;host=\"app.example\""
        );
    }

    #[test]
    fn a_trusted_chain_is_extended() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.9".parse().unwrap());
        h.insert("forwarded", "for=203.0.113.9".parse().unwrap());
        h.insert("x-forwarded-proto", "https".parse().unwrap());
        set_forwarding(
            &mut h,
            &ClientAddr::new("10.0.0.2".parse().unwrap()),
            "http",
            "",
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.9, 10.0.0.2");
        assert_eq!(h["forwarded"], "for=203.0.113.9, for=10.0.0.2;proto=http");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert!(!h.contains_key("x-forwarded-host"));
    }

    #[test]
    fn hop_by_hop_removal_keeps_an_upgrade_when_asked() {
        let mut h = HeaderMap::new();
        h.insert("connection", "Upgrade, x-one".parse().unwrap());
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("x-one", "1".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        assert!(!h.contains_key("x-one"));
        let mut plain = HeaderMap::new();
        plain.insert("accept", "*/*".parse().unwrap());
        strip_hop_by_hop(&mut plain, false);
        assert_eq!(plain.len(), 1);
    }
}
