//! Header rewriting between client and backend: hop-by-hop removal, the
//! identity headers the backend trusts, and the forwarding headers. The
//! name rules themselves are `gatehouse_core::header_names`.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub use gatehouse_core::header_names::*;

/// Which client headers never reach a backend: the identity headers of
/// every route (from everyone), and from clients that are not trusted
/// proxies the forwarding family plus the operator's
/// `strip_untrusted_headers`.
#[derive(Debug, Clone, Default)]
pub struct StripRules {
    /// Identity header names, folded (lower-case, dashes).
    reserved: Vec<String>,
    /// `strip_untrusted_headers` entries without `*`, folded.
    extra: Vec<String>,
    /// `strip_untrusted_headers` entries that ended in `*`, folded.
    extra_prefixes: Vec<String>,
}

fn fold(name: &str) -> String {
    name.bytes().map(|b| fold_byte(b) as char).collect()
}

impl StripRules {
    /// `reserved`: the identity header names of all routes; `extra`: the
    /// operator's `strip_untrusted_headers` (a trailing `*` is a prefix).
    pub fn new<'a>(
        reserved: impl IntoIterator<Item = &'a str>,
        extra: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        let mut r = StripRules::default();
        for n in reserved {
            let f = fold(n);
            if !r.reserved.contains(&f) {
                r.reserved.push(f);
            }
        }
        for e in extra {
            match e.strip_suffix('*') {
                Some(p) => r.extra_prefixes.push(fold(p)),
                None => r.extra.push(fold(e)),
            }
        }
        r
    }

    /// Whether a client header of this name is removed.
    pub fn strips(&self, name: &str, untrusted: bool) -> bool {
        self.reserved.iter().any(|r| folds_to(name, r))
            || (untrusted
                && (is_forwarding_header(name)
                    || self.extra.iter().any(|e| folds_to(name, e))
                    || self.extra_prefixes.iter().any(|p| folded_prefix(name, p))))
    }
}

/// Removes hop-by-hop headers and any header the `Connection` header names
/// (RFC 9110 §7.6.1). With `keep_upgrade`, `Upgrade` survives and
/// `Connection: upgrade` is set again, for WebSocket pass-through.
///
/// Every response of a keep-alive backend carries `Connection:
/// keep-alive`, so this runs on the hot path: one pass over the names
/// present, then only those are removed (each removal hashes its name),
/// and a `Connection` option naming no other field (`keep-alive`,
/// `close`) costs no allocation.
pub fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    // Bit i: HOP_BY_HOP[i] is present; bit HOP_BY_HOP.len(): Upgrade.
    let mut present: u32 = 0;
    for k in h.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|n| n == k) {
            present |= 1 << i;
        } else if k == header::UPGRADE {
            present |= 1 << HOP_BY_HOP.len();
        }
    }
    if present != 0 {
        // HOP_BY_HOP[0] is Connection.
        if present & 1 != 0 {
            let mut named: Vec<HeaderName> = Vec::new();
            for token in h
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(','))
                .map(str::trim)
            {
                // Fields removed below anyway, `close`, and an empty list
                // element: nothing more to remove.
                if token.is_empty()
                    || token.eq_ignore_ascii_case("close")
                    || token.eq_ignore_ascii_case("upgrade")
                    || HOP_BY_HOP
                        .iter()
                        .any(|n| token.eq_ignore_ascii_case(n.as_str()))
                {
                    continue;
                }
                if let Ok(n) = HeaderName::from_bytes(token.as_bytes()) {
                    named.push(n);
                }
            }
            for n in named {
                h.remove(n);
            }
        }
        for (i, n) in HOP_BY_HOP.iter().enumerate() {
            if present & (1 << i) != 0 {
                h.remove(n);
            }
        }
        if !keep_upgrade && present & (1 << HOP_BY_HOP.len()) != 0 {
            h.remove(header::UPGRADE);
        }
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Removes every client-sent header that [`StripRules`] names. Allocates
/// only when something is removed.
pub fn strip_client_claims(h: &mut HeaderMap, rules: &StripRules, untrusted: bool) {
    let mut doomed: Vec<HeaderName> = Vec::new();
    for name in h.keys() {
        if rules.strips(name.as_str(), untrusted) {
            doomed.push(name.clone());
        }
    }
    for n in doomed {
        h.remove(n);
    }
}

/// An identity header's value for a claim, by one rule a backend can
/// undo with any percent-decoder (RFC 3986 §2.1): the claim's UTF-8 text
/// with every byte outside visible ASCII (so also space and non-ASCII),
/// `%` and `,` written as `%XX`. A value made only of visible ASCII
/// without `%` or `,` (most subjects, e-mail addresses, client ids) is
/// sent as it is. An array becomes its items so encoded, joined by `,`
/// (which then only ever separates items); booleans and integers their
/// JSON text. `None` for an object, an array holding one, a value that
/// would be empty (`""`, `[]`), or a number that is not an integer of at
/// most 64 bits: no single header value says it unambiguously (the caller
/// withholds and counts it). The token's JSON is read into binary
/// numbers, so a larger integer or a fraction would be sent as a
/// rounded float (`18446744073709551616` and `…617` both as
/// `1.8446744073709552e+19`: two principals one header).
pub fn identity_value(v: &serde_json::Value) -> Option<HeaderValue> {
    use serde_json::Value;
    let mut out = Vec::new();
    match v {
        Value::String(s) => encode_identity(s.as_bytes(), &mut out),
        Value::Number(n) if n.is_f64() => return None,
        Value::Number(_) | Value::Bool(_) => out.extend_from_slice(v.to_string().as_bytes()),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                match item {
                    Value::String(s) => encode_identity(s.as_bytes(), &mut out),
                    Value::Number(n) if n.is_f64() => return None,
                    Value::Number(_) | Value::Bool(_) => {
                        out.extend_from_slice(item.to_string().as_bytes())
                    }
                    Value::Null | Value::Array(_) | Value::Object(_) => return None,
                }
            }
        }
        Value::Null | Value::Object(_) => return None,
    }
    // An empty value would read as "present" to some backends and
    // "absent" to others.
    if out.is_empty() {
        return None;
    }
    HeaderValue::from_maybe_shared(bytes::Bytes::from(out)).ok()
}

fn encode_identity(s: &[u8], out: &mut Vec<u8>) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in s {
        if (0x21..0x7f).contains(&b) && b != b'%' && b != b',' {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
}

/// Writes `Content-Length` in its one form, a decimal number without
/// leading zeros: `05` or a list of equal values (`5, 5`, which RFC 9110
/// §8.6 lets a recipient take as one) would otherwise be passed on for the
/// next parser to read its own way. hyper has already refused unequal
/// lists and non-numbers. Costs one byte comparison when there is nothing
/// to do.
pub fn normalize_content_length(h: &mut HeaderMap) {
    let Some(v) = h.get(header::CONTENT_LENGTH) else {
        return;
    };
    let b = v.as_bytes();
    let plain = !b.is_empty() && b.iter().all(u8::is_ascii_digit) && (b[0] != b'0' || b.len() == 1);
    if plain && h.get_all(header::CONTENT_LENGTH).iter().count() == 1 {
        return;
    }
    let mut values = h
        .get_all(header::CONTENT_LENGTH)
        .iter()
        .flat_map(|v| v.to_str().unwrap_or("x").split(','))
        .map(|n| n.trim().parse::<u64>().ok());
    let first = values.next().flatten();
    if let Some(n) = first {
        if values.all(|v| v == Some(n)) {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
        }
    }
}

/// Whether the request's `Upgrade` offers WebSocket (RFC 6455 §4.1).
pub fn offers_websocket(h: &HeaderMap) -> bool {
    h.get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| {
            p.trim()
                .split('/')
                .next()
                .is_some_and(|n| n.trim().eq_ignore_ascii_case("websocket"))
        })
}

/// The `Sec-WebSocket-Accept` a server must answer the request's
/// `Sec-WebSocket-Key` with; `None` unless there is exactly one key, and
/// it is base64 of 16 bytes (RFC 6455 §4.1, item 7).
pub fn websocket_accept(h: &HeaderMap) -> Option<String> {
    use base64::Engine as _;
    let mut keys = h.get_all("sec-websocket-key").iter();
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) => k.to_str().ok()?.trim(),
        _ => return None,
    };
    let raw = base64::engine::general_purpose::STANDARD.decode(key).ok()?;
    (raw.len() == 16).then(|| accept_for(key))
}

/// RFC 6455 §4.2.2: base64 of the SHA-1 of the key and the protocol's GUID.
fn accept_for(key: &str) -> String {
    use base64::Engine as _;
    let mut input = Vec::with_capacity(key.len() + 36);
    input.extend_from_slice(key.as_bytes());
    input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
    base64::engine::general_purpose::STANDARD.encode(digest.as_ref())
}

/// A new `Sec-WebSocket-Key` (base64 of 16 random bytes, RFC 6455 §4.1)
/// and the `Sec-WebSocket-Accept` a server must answer it with; `None`
/// only if the system's random source fails.
pub fn fresh_websocket_key() -> Option<(HeaderValue, String)> {
    use aws_lc_rs::rand::SecureRandom as _;
    use base64::Engine as _;
    let mut nonce = [0u8; 16];
    aws_lc_rs::rand::SystemRandom::new().fill(&mut nonce).ok()?;
    let key = base64::engine::general_purpose::STANDARD.encode(nonce);
    let accept = accept_for(&key);
    Some((HeaderValue::from_str(&key).ok()?, accept))
}

/// Whether a method-override header (`X-HTTP-Method-Override`,
/// `X-HTTP-Method`, `X-Method-Override`) is present, in any spelling a
/// backend may read as one (`X_HTTP_Method_Override` is
/// `HTTP_X_HTTP_METHOD_OVERRIDE` to CGI and WSGI): some frameworks then
/// act on the request as that other method, so neither a credential-free
/// preflight nor a retried idempotent request may carry one.
pub fn overrides_method(h: &HeaderMap) -> bool {
    h.keys().any(|k| {
        [
            "x-http-method-override",
            "x-http-method",
            "x-method-override",
        ]
        .iter()
        .any(|n| gatehouse_core::header_names::folds_to(k.as_str(), n))
    })
}

/// The idle time a backend says it keeps a connection open, from the
/// `timeout` parameter of its `Keep-Alive` response field (RFC 2068
/// §19.7.1.1; Node.js and Apache send `Keep-Alive: timeout=5` by default):
/// whole seconds, `None` when absent or not a plain decimal number (then
/// the route's `backend_idle_timeout` alone applies). Every field line and
/// comma-separated parameter is looked at; the smallest timeout wins, so a
/// backend cannot lengthen what it said elsewhere. A number longer than
/// nine digits is taken as absent (it says nothing shorter than the
/// route's own limit).
pub fn keep_alive_timeout(h: &HeaderMap) -> Option<std::time::Duration> {
    h.get_all(KEEP_ALIVE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|b| *b == b','))
        .filter_map(|param| {
            let param = param.trim_ascii();
            let (name, value) = param.split_at_checked(param.iter().position(|b| *b == b'=')?)?;
            let value = value[1..].trim_ascii();
            let value = value
                .strip_prefix(b"\"")
                .and_then(|v| v.strip_suffix(b"\""))
                .unwrap_or(value);
            (name.trim_ascii().eq_ignore_ascii_case(b"timeout")
                && (1..=9).contains(&value.len())
                && value.iter().all(u8::is_ascii_digit))
            .then(|| value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
        })
        .min()
        .map(std::time::Duration::from_secs)
}

/// An HTTP/2 client may split `Cookie` into one field per cookie (RFC 9113
/// §8.2.3); an HTTP/1.1 backend must get them as one line joined by `"; "`
/// (a backend reading one line would lose the rest).
pub fn join_cookies(h: &mut HeaderMap) {
    let mut all = h.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (all.next(), all.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in h.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)) {
        h.insert(header::COOKIE, v);
    }
}

const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// The client address as the forwarding headers write it, formatted once
/// per connection rather than on every request, and the last values made
/// from it.
#[derive(Debug)]
pub struct ClientAddr {
    /// `X-Forwarded-For` when there is no chain before us.
    xff: HeaderValue,
    /// The `for=` node of `Forwarded` (IPv6 quoted and bracketed).
    node: Box<str>,
    /// The `X-Forwarded-Host` and `Forwarded` values of the connection's
    /// last request without a chain before us: a keep-alive client names
    /// the same host on every request, and reusing them saves two
    /// allocations and a formatting per request. Only this connection's
    /// requests take the lock, one after another (HTTP/1.1) or from its
    /// own worker (HTTP/2).
    last: std::sync::Mutex<Option<Made>>,
}

/// Forwarding values made for one host and scheme.
#[derive(Debug, Clone)]
struct Made {
    host: Box<str>,
    proto: &'static str,
    xfh: Option<HeaderValue>,
    forwarded: Option<HeaderValue>,
}

impl Clone for ClientAddr {
    fn clone(&self) -> Self {
        ClientAddr {
            xff: self.xff.clone(),
            node: self.node.clone(),
            last: std::sync::Mutex::new(self.last.lock().ok().and_then(|m| m.clone())),
        }
    }
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
            last: std::sync::Mutex::new(None),
        }
    }

    /// `X-Forwarded-Host` and `Forwarded` for a request to `host` by
    /// `proto` with no chain before us, from the last request's when they
    /// were made for the same.
    fn made(&self, proto: &'static str, host: &str) -> (Option<HeaderValue>, Option<HeaderValue>) {
        let mut last = self.last.lock().ok();
        if let Some(Some(m)) = last.as_deref() {
            if m.proto == proto && *m.host == *host {
                return (m.xfh.clone(), m.forwarded.clone());
            }
        }
        let xfh = forwarded_host(host);
        let forwarded = forwarded_value(None, &self.node, proto, host);
        if let Some(slot) = last.as_deref_mut() {
            *slot = Some(Made {
                host: host.into(),
                proto,
                xfh: xfh.clone(),
                forwarded: forwarded.clone(),
            });
        }
        (xfh, forwarded)
    }
}

/// `X-Forwarded-Host` for the request's host; `None` without one.
fn forwarded_host(host: &str) -> Option<HeaderValue> {
    (!host.is_empty())
        .then(|| HeaderValue::from_str(host).ok())
        .flatten()
}

/// A `Forwarded` value (RFC 7239 §4): the chain before us, if any, then
/// our element for `node`; `host` only when it can be written as a
/// quoted-string without escapes.
fn forwarded_value(
    prev: Option<&[u8]>,
    node: &str,
    proto: &'static str,
    host: &str,
) -> Option<HeaderValue> {
    let mut fwd =
        Vec::with_capacity(prev.map_or(0, |p| p.len() + 2) + 20 + node.len() + host.len());
    if let Some(prev) = prev {
        fwd.extend_from_slice(prev);
        fwd.extend_from_slice(b", ");
    }
    fwd.extend_from_slice(b"for=");
    fwd.extend_from_slice(node.as_bytes());
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
    HeaderValue::from_maybe_shared(bytes::Bytes::from(fwd)).ok()
}

/// A trusted proxy's chain in `name`: its field lines joined with `, `,
/// as RFC 9110 §5.3 reads several lines of a list-based field. A proxy
/// that adds a line of its own instead of appending to the client's
/// (HAProxy's `option forwardfor`) sends two; taking the first alone
/// dropped the client's real address and left the one the client wrote
/// next to the trusted hop. `None` when the field is absent.
fn chain(h: &HeaderMap, name: &HeaderName) -> Option<Vec<u8>> {
    let mut lines = h.get_all(name).iter();
    let mut joined = lines.next()?.as_bytes().to_vec();
    for line in lines {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(line.as_bytes());
    }
    Some(joined)
}

/// Sets `X-Forwarded-For/-Proto/-Host` and `Forwarded` (RFC 7239). From a
/// trusted proxy, its chain is extended (every line of it, see [`chain`]);
/// otherwise ours is the only one (the client's copies were removed by
/// [`strip_client_claims`]).
pub fn set_forwarding(h: &mut HeaderMap, client: &ClientAddr, proto: &'static str, host: &str) {
    // Room for the four headers at once, instead of growing the map in
    // steps as they are inserted.
    h.reserve(4);
    let xff = match chain(h, &X_FORWARDED_FOR) {
        Some(mut v) => {
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
    let chained_host = h.contains_key(&X_FORWARDED_HOST);
    let (xfh, forwarded) = match chain(h, &header::FORWARDED) {
        Some(prev) => (
            forwarded_host(host).filter(|_| !chained_host),
            forwarded_value(Some(prev.as_slice()), &client.node, proto, host),
        ),
        None => {
            let (xfh, fwd) = client.made(proto, host);
            (xfh.filter(|_| !chained_host), fwd)
        }
    };
    if let Some(v) = xfh {
        h.insert(X_FORWARDED_HOST, v);
    }
    if let Some(v) = forwarded {
        h.insert(header::FORWARDED, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_backends_keep_alive_timeout_is_its_smallest_plain_number() {
        let of = |lines: &[&str]| {
            let mut h = HeaderMap::new();
            for l in lines {
                h.append(KEEP_ALIVE, HeaderValue::from_str(l).unwrap());
            }
            keep_alive_timeout(&h).map(|d| d.as_secs())
        };
        assert_eq!(of(&[]), None);
        assert_eq!(of(&["timeout=5"]), Some(5));
        assert_eq!(of(&["timeout=5, max=1000"]), Some(5));
        assert_eq!(of(&["max=100, Timeout = 15"]), Some(15));
        assert_eq!(of(&["timeout=\"7\""]), Some(7));
        assert_eq!(of(&["timeout=9", "timeout=4"]), Some(4));
        assert_eq!(of(&["timeout=9, timeout=30"]), Some(9));
        assert_eq!(of(&["timeout=0"]), Some(0));
        assert_eq!(of(&["timeout=-1"]), None);
        assert_eq!(of(&["timeout=5s"]), None);
        assert_eq!(of(&["timeout="]), None);
        assert_eq!(of(&["timeout"]), None);
        assert_eq!(of(&["timeout=99999999999999999999"]), None);
        assert_eq!(of(&["max=5"]), None);
        assert_eq!(of(&["xtimeout=5"]), None);
    }

    #[test]
    fn folding_matches_backend_spellings() {
        assert!(folds_to("x-auth-subject", "x-auth-subject"));
        assert!(folds_to("X_Auth_Subject", "x-auth-subject"));
        assert!(folds_to("x_auth-subject", "x-auth-subject"));
        assert!(!folds_to("x-auth-subjects", "x-auth-subject"));
        assert!(!folds_to("x-auth_subjecT2", "x-auth-subject"));
        assert!(is_forwarding_header("X_Forwarded_For"));
        assert!(is_forwarding_header("X-Forwarded-Uri"));
        assert!(is_forwarding_header("x_original_url"));
        assert!(is_forwarding_header("X-Rewrite-URL"));
        assert!(is_forwarding_header("True-Client-IP"));
        assert!(is_forwarding_header("x-envoy-original-path"));
        assert!(!is_forwarding_header("x-forwar"));
        assert!(!is_forwarding_header("accept"));
        assert!(same_field("x_remote_user", "X-Remote-User"));
        assert!(same_field("x.remote~user", "X-Remote-User"));
        assert!(is_forwarding_header("X.Forwarded.For"));
        assert!(is_forwarding_header("X~Real~IP"));
        assert!(same_field("X-Remote_User", "x_remote-user"));
        assert!(!same_field("x-remote-users", "x-remote-user"));
    }

    #[test]
    fn content_length_has_one_spelling() {
        let cl = |vals: &[&str]| {
            let mut h = HeaderMap::new();
            for v in vals {
                h.append("content-length", v.parse().unwrap());
            }
            normalize_content_length(&mut h);
            h.get_all("content-length")
                .iter()
                .map(|v| v.to_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        };
        assert_eq!(cl(&["05"]), ["5"]);
        assert_eq!(cl(&["5, 5"]), ["5"]);
        assert_eq!(cl(&["5", "5"]), ["5"]);
        assert_eq!(cl(&["0"]), ["0"]);
        assert_eq!(cl(&["12"]), ["12"]);
    }

    #[test]
    fn h2_cookie_fields_become_one_line() {
        let mut h = HeaderMap::new();
        h.append("cookie", "a=1".parse().unwrap());
        h.append("cookie", "b=2".parse().unwrap());
        h.append("cookie", "c=3".parse().unwrap());
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; b=2; c=3");
    }

    #[test]
    fn forwarding_family_is_sorted_for_binary_search() {
        assert!(FORWARDING.windows(2).all(|w| w[0] < w[1]));
        assert!(FORWARDING.iter().all(|n| n.len() <= FOLD_BUF));
    }

    #[test]
    fn identity_values_have_one_reading() {
        use serde_json::json;
        let v = |j| identity_value(&j).map(|h| h.to_str().unwrap().to_owned());
        assert_eq!(v(json!("alice@example.com")).unwrap(), "alice@example.com");
        assert_eq!(v(json!(" admin")).unwrap(), "%20admin");
        assert_eq!(v(json!("Zoë Ng")).unwrap(), "Zo%C3%AB%20Ng");
        assert_eq!(v(json!("100%")).unwrap(), "100%25");
        assert_eq!(v(json!(["admin,bob", "x"])).unwrap(), "admin%2Cbob,x");
        assert_eq!(v(json!(["a", 7, true])).unwrap(), "a,7,true");
        assert_eq!(v(json!(42)).unwrap(), "42");
        assert_eq!(
            v(json!(-9_223_372_036_854_775_808i64)).unwrap(),
            "-9223372036854775808"
        );
        assert_eq!(v(json!(u64::MAX)).unwrap(), "18446744073709551615");
        // Read as binary floats, these would be sent rounded: two integers
        // past 64 bits as one value, a fraction as another text.
        let big = |t: &str| serde_json::from_str::<serde_json::Value>(t).unwrap();
        assert!(v(big("18446744073709551616")).is_none());
        assert!(v(big("-9223372036854775809")).is_none());
        assert!(v(big("0.30000000000000001")).is_none());
        assert!(v(big("1e2")).is_none());
        assert!(v(big("[1, 18446744073709551617]")).is_none());
        assert!(v(json!({"a": 1})).is_none());
        assert!(v(json!("")).is_none());
        assert!(v(json!([])).is_none());
        assert!(v(json!(["a", {"b": 1}])).is_none());
        assert!(v(json!("line\r\nX-Evil: 1"))
            .unwrap()
            .starts_with("line%0D%0A"));
    }

    #[test]
    fn strips_identity_and_untrusted_forwarding() {
        let mut h = HeaderMap::new();
        h.insert("x_auth_subject", "evil".parse().unwrap());
        h.append("x-auth-subject", "evil2".parse().unwrap());
        h.insert("x-forwarded-for", "1.2.3.4".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        h.insert("x-internal-role", "admin".parse().unwrap());
        h.insert("x-debug", "1".parse().unwrap());
        let rules = StripRules::new(["x-auth-subject"], ["x_internal_*", "X-Debug"]);
        let mut trusted = h.clone();
        strip_client_claims(&mut h, &rules, true);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key("accept"));
        strip_client_claims(&mut trusted, &rules, false);
        assert_eq!(
            trusted.len(),
            4,
            "a trusted proxy keeps its forwarding headers"
        );
        assert!(!trusted.contains_key("x-auth-subject"));
        let underscored = StripRules::new(["x_remote_user"], []);
        let mut h = HeaderMap::new();
        h.insert("x-remote-user", "admin".parse().unwrap());
        strip_client_claims(&mut h, &underscored, false);
        assert!(h.is_empty(), "configured with _, sent with -");
    }

    #[test]
    fn a_method_override_is_seen_in_every_spelling_a_backend_reads() {
        for name in [
            "x-http-method-override",
            "x_http_method_override",
            "x.http.method.override",
            "x-method-override",
            "x_http_method",
        ] {
            let mut h = HeaderMap::new();
            h.insert(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                "DELETE".parse().unwrap(),
            );
            assert!(overrides_method(&h), "{name}");
        }
        let mut h = HeaderMap::new();
        h.insert("x-http-methods", "DELETE".parse().unwrap());
        assert!(!overrides_method(&h));
    }

    #[test]
    fn the_websocket_accept_value_is_the_one_rfc_6455_gives() {
        let mut h = HeaderMap::new();
        // RFC 6455 §1.3's example.
        h.insert(
            "sec-websocket-key",
            "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap(),
        );
        assert_eq!(
            websocket_accept(&h).as_deref(),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        h.append(
            "sec-websocket-key",
            "dGhlIHNhbXBsZSBub25jZQ==".parse().unwrap(),
        );
        assert_eq!(websocket_accept(&h), None, "two keys");
        let mut h = HeaderMap::new();
        h.insert("sec-websocket-key", "c2hvcnQ=".parse().unwrap());
        assert_eq!(websocket_accept(&h), None, "not 16 bytes");
    }

    #[test]
    fn httpoxy_proxy_header_goes_from_every_client() {
        let mut h = HeaderMap::new();
        h.insert("proxy", "http://evil.test:1".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert!(!h.contains_key("proxy"));
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
    fn a_backends_keep_alive_and_close_options_remove_only_connection() {
        assert!(HOP_BY_HOP.len() < 31, "the presence mask has room");
        let mut h = HeaderMap::new();
        h.insert("connection", "Keep-Alive".parse().unwrap());
        h.insert("content-length", "3".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1);
        let mut h = HeaderMap::new();
        h.insert("connection", "CLOSE, X-Other, , te".parse().unwrap());
        h.append("connection", "x-more".parse().unwrap());
        h.insert("x-other", "1".parse().unwrap());
        h.insert("x-more", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert("accept", "*/*".parse().unwrap());
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.keys().collect::<Vec<_>>(), ["accept"]);
    }

    #[test]
    fn a_connections_second_request_gets_the_same_forwarding_values_and_another_host_its_own() {
        let client = ClientAddr::new("192.0.2.7".parse().unwrap());
        let mut seen = Vec::new();
        for host in ["app.example", "app.example", "other.example", ""] {
            let mut h = HeaderMap::new();
            set_forwarding(&mut h, &client, "https", host);
            seen.push((h.get("x-forwarded-host").cloned(), h["forwarded"].clone()));
        }
        assert_eq!(seen[0], seen[1]);
        assert_eq!(seen[0].0.as_ref().unwrap(), "app.example");
        assert_eq!(seen[2].0.as_ref().unwrap(), "other.example");
        assert_eq!(
            seen[2].1,
            "for=192.0.2.7;proto=https;host=\"other.example\""
        );
        assert_eq!(
            seen[3],
            (None, HeaderValue::from_static("for=192.0.2.7;proto=https"))
        );
        // A scheme of its own gets values of its own too.
        let mut h = HeaderMap::new();
        set_forwarding(&mut h, &client, "http", "app.example");
        assert_eq!(
            h["forwarded"],
            "for=192.0.2.7;proto=http;host=\"app.example\""
        );
        // A trusted proxy's X-Forwarded-Host is kept as it is.
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-host", "edge.example".parse().unwrap());
        set_forwarding(&mut h, &client, "https", "app.example");
        assert_eq!(h["x-forwarded-host"], "edge.example");
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
    fn a_trusted_proxys_chain_on_several_lines_is_extended_whole() {
        let mut h = HeaderMap::new();
        h.append("x-forwarded-for", "6.6.6.6".parse().unwrap());
        h.append("x-forwarded-for", "203.0.113.7".parse().unwrap());
        h.append("forwarded", "for=6.6.6.6".parse().unwrap());
        h.append("forwarded", "for=203.0.113.7;proto=https".parse().unwrap());
        set_forwarding(
            &mut h,
            &ClientAddr::new("127.0.0.2".parse().unwrap()),
            "http",
            "",
        );
        assert_eq!(
            h.get_all("x-forwarded-for").iter().collect::<Vec<_>>(),
            ["6.6.6.6, 203.0.113.7, 127.0.0.2"]
        );
        assert_eq!(
            h.get_all("forwarded").iter().collect::<Vec<_>>(),
            ["for=6.6.6.6, for=203.0.113.7;proto=https, for=127.0.0.2;proto=http"]
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
