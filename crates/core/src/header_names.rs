//! Header names as every party may read them: the hop-by-hop set (RFC 9110
//! §7.6.1), the forwarding family a client must never supply, the message
//! headers that are never identity headers, and the CGI-style folding
//! (`X.Auth_Subject` = `x-auth-subject`) a backend may apply. Shared by
//! config validation and the gateway's header rewriting.

use http::header::{self, HeaderName};

/// Hop-by-hop headers (RFC 9110 §7.6.1) plus the legacy ones proxies still
/// see; they describe one connection and never cross the gateway.
pub const HOP_BY_HOP: [HeaderName; 10] = [
    header::CONNECTION,
    // Not a header of any standard: a CGI backend reads it as the
    // `HTTP_PROXY` environment variable, its outbound proxy ("httpoxy",
    // CVE-2016-5385 and siblings), from every client, trusted or not.
    HeaderName::from_static("proxy"),
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    // RFC 9113 §3.1 removed the h2c upgrade; its settings never cross.
    HeaderName::from_static("http2-settings"),
];

/// The forwarding family: headers in which proxies, CDNs and load
/// balancers tell a backend the client's address, scheme, host, original
/// URL or certificate. A backend may believe any of them (Symfony and IIS
/// route by `X-Original-URL`/`X-Rewrite-URL`, WSGI "reverse proxied"
/// middleware mounts the app under `X-Script-Name`, frameworks take the client IP
/// from `True-Client-IP` or `CF-Connecting-IP`), so from a client that is
/// not a trusted proxy every one is removed, in every spelling. Sorted, in
/// folded form (lower-case, `_` as `-`), for a binary search.
pub const FORWARDING: [&str; 51] = [
    "base-url",
    "cf-connecting-ip",
    "cf-connecting-ipv6",
    "cf-pseudo-ipv4",
    "cf-visitor",
    "client-ip",
    "fastly-client-ip",
    "fly-client-ip",
    "forwarded",
    "forwarded-for",
    "front-end-https",
    "ssl-client-cert",
    "ssl-client-subject-dn",
    "true-client-ip",
    "via",
    "x-appengine-user-ip",
    "x-arr-clientcert",
    "x-arr-ssl",
    "x-azure-clientip",
    "x-azure-socketip",
    "x-client-cert",
    "x-client-dn",
    "x-client-ip",
    "x-client-verify",
    "x-cluster-client-ip",
    "x-forwarded",
    "x-host",
    "x-http-host-override",
    "x-middleware-subrequest",
    "x-ms-original-url",
    "x-now-route-matches",
    "x-originating-ip",
    "x-override-url",
    "x-path-info",
    "x-proxyuser-ip",
    "x-real-ip",
    "x-remote-addr",
    "x-remote-ip",
    "x-request-uri",
    "x-rewrite-url",
    "x-scheme",
    "x-script-name",
    "x-ssl",
    "x-ssl-client-cert",
    "x-ssl-client-dn",
    "x-ssl-client-s-dn",
    "x-ssl-client-verify",
    "x-tls-client-cert",
    "x-true-client-ip",
    "x-url-scheme",
    "x-wap-client-ip",
];

/// Prefixes of the forwarding family (folded): every `X-Forwarded-*`
/// (`-For`, `-Host`, `-Proto`, `-Uri`, `-Prefix`, `-Client-Cert`, ...),
/// every `X-Original-*` (`-URL`, `-URI`, `-Host`, `-Method`, ...),
/// Envoy's own (`X-Envoy-Original-Path`, `-External-Address`, ...), and
/// Next.js's internal `X-Invoke-*` (its `X-Middleware-Subrequest`, which
/// skips the app's middleware, CVE-2025-29927, is in [`FORWARDING`]).
pub const FORWARDING_PREFIXES: [&str; 4] = ["x-envoy-", "x-forwarded-", "x-invoke-", "x-original-"];

/// The longest name of the family that is compared whole.
pub const FOLD_BUF: usize = 32;

/// One byte of a field name as a backend may read it: letters in lower
/// case, digits as they are, and every other character as `-`. CGI and
/// the servers that follow it (lighttpd, Apache's mod_cgi, PHP, WSGI)
/// turn every non-alphanumeric character into `_`, so `X.Auth.Subject`,
/// `X_Auth_Subject` and `X-Auth-Subject` all become `HTTP_X_AUTH_SUBJECT`.
#[inline]
pub fn fold_byte(b: u8) -> u8 {
    if b.is_ascii_alphanumeric() {
        b.to_ascii_lowercase()
    } else {
        b'-'
    }
}

/// `name` folded ([`fold_byte`]) in `buf`; `None` when longer than the
/// buffer (then it can only match by prefix).
#[inline]
pub fn fold_into<'b>(name: &str, buf: &'b mut [u8; FOLD_BUF]) -> Option<&'b [u8]> {
    let out = buf.get_mut(..name.len())?;
    for (o, b) in out.iter_mut().zip(name.bytes()) {
        *o = fold_byte(b);
    }
    Some(out)
}

/// Whether `name` belongs to the forwarding family (see [`FORWARDING`]).
#[inline]
pub fn is_forwarding_header(name: &str) -> bool {
    if FORWARDING_PREFIXES.iter().any(|p| folded_prefix(name, p)) {
        return true;
    }
    let mut buf = [0u8; FOLD_BUF];
    fold_into(name, &mut buf).is_some_and(|f| {
        FORWARDING
            .binary_search_by(|probe| probe.as_bytes().cmp(f))
            .is_ok()
    })
}

/// Whether `name` frames, routes or authenticates the message itself
/// (`Content-Length`, `Host`, `Authorization`, `Cookie`, ...): never an
/// identity header, or a claim would set the request's framing or
/// credentials.
#[inline]
pub fn is_message_header(name: &str) -> bool {
    [
        "authorization",
        "content-encoding",
        "content-length",
        "content-type",
        "cookie",
        "expect",
        "host",
        "proxy-authorization",
        "range",
    ]
    .iter()
    .any(|m| same_field(m, name))
}

/// Whether `name` is one of the hop-by-hop headers the gateway removes.
#[inline]
pub fn is_hop_by_hop_name(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| same_field(h.as_str(), name)) || same_field(name, "upgrade")
}

/// Whether `name` starts with `prefix` (lower-case, dashes) as a backend
/// might read it.
#[inline]
pub fn folded_prefix(name: &str, prefix: &str) -> bool {
    name.len() >= prefix.len() && folds_to(&name[..prefix.len()], prefix)
}

/// Whether two field names name the same field for a backend: ASCII
/// case-insensitive, with every character that is not a letter or digit
/// alike (CGI, PHP, WSGI, Django and many others fold `X_Auth_Subject`,
/// `X.Auth.Subject` and `X-Auth-Subject` into the same variable,
/// `HTTP_X_AUTH_SUBJECT`).
#[inline]
pub fn same_field(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .all(|(x, y)| fold_byte(x) == fold_byte(y))
}

/// Whether `name` is `canonical` as a backend might read it; `canonical`
/// is already folded (lower-case, `-` for every other character).
#[inline]
pub fn folds_to(name: &str, canonical: &str) -> bool {
    name.len() == canonical.len()
        && name
            .bytes()
            .zip(canonical.bytes())
            .all(|(a, c)| fold_byte(a) == c)
}
