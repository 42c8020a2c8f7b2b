//! The one reading of a request's target path and host that every
//! decision uses — routing, public paths, authorization — and that the
//! backend receives. A gateway that judges one spelling while the backend
//! serves another can be walked around (`/%61dmin` judged by the catch-all
//! route, served as `/admin`); so either a spelling reduces to the form
//! every common backend (Python, Node, Go `net/http`, servlet containers,
//! IIS) serves, or it is refused with 400.
//!
//! Path (RFC 3986 §2.3, §3.3, §5.2.4, §6.2.2): one spelling per decoded
//! path, the minimal one:
//! - every character a path segment may hold as it is (`pchar`:
//!   unreserved `A-Z a-z 0-9 - . _ ~`, sub-delims `! $ & ' ( ) * + , =`,
//!   `:` and `@`) is written as itself, escaped or not — `%61`, `%40`,
//!   `%24` are `a`, `@`, `$` — because Python, Go, servlet containers and
//!   ASP.NET decode them before serving (RFC 3986 keeps escaped
//!   sub-delims distinct; the backends a gateway protects do not);
//! - everything else (`%`, space, `"`, `<`, `>`, `[`, `]`, `^`, `` ` ``,
//!   `{`, `|`, `}`, `?`, `#`, controls, non-ASCII bytes) is written as an
//!   escape with upper-case hex digits, escaped or not;
//! - empty segments are merged (`//` → `/`), dot segments (`.`, `..`, also
//!   spelled `%2e`, and `..;x` as a servlet container reads it) resolved;
//! - refused: escapes a common backend decodes into a delimiter (`%2F`,
//!   `%5C`, `%3B`, `%00`), a raw `\`, malformed escapes, a double-encoded
//!   escape (`%25` before a hex digit or another escape, which IIS-style
//!   double decoding would turn into a new meaning), escapes that do not
//!   decode to UTF-8 (overlong `%C0%AE` is `.` to old decoders), and
//!   segments that Windows trims (a trailing `.` or space);
//! - `;parameters` (RFC 3986 §3.3) stay in what is forwarded but are
//!   removed from every segment for matching, as servlet containers do
//!   (`/admin;v=1/x` is served there as `/admin/x`).
//!
//! Host (RFC 9110 §7.2, RFC 3986 §3.2.2): a registered name of letters,
//! digits, `-`, `_` and `.`, or an IPv4 address, or a bracketed IPv6
//! literal, then an optional port of digits only. Anything else is 400 (RFC
//! 9112 §3.2). The canonical form is lower-case, without a trailing dot,
//! with the port as a number and an empty port dropped.

use std::borrow::Cow;
use std::net::Ipv6Addr;

/// A request path in its canonical form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath<'a> {
    /// What the backend receives (without the query), `;parameters` kept.
    pub forward: Cow<'a, str>,
    /// `forward` without `;parameters`, when it had any.
    stripped: Option<String>,
}

impl CanonicalPath<'_> {
    /// The path that routes and public paths are matched against: the
    /// forwarded path with every segment's `;parameters` removed.
    pub fn matched(&self) -> &str {
        self.stripped.as_deref().unwrap_or(&self.forward)
    }

    /// The same path, owning its text.
    pub fn into_owned(self) -> CanonicalPath<'static> {
        CanonicalPath {
            forward: Cow::Owned(self.forward.into_owned()),
            stripped: self.stripped,
        }
    }
}

/// Canonicalises a request path (the part of the target before `?`).
///
/// Errors: a static reason, answered as 400. `canonicalize_path` of its own
/// `forward` output returns that output unchanged (the fuzz target checks
/// this).
pub fn canonicalize_path(path: &str) -> Result<CanonicalPath<'_>, &'static str> {
    if !path.starts_with('/') {
        return Err("request target must be an absolute path");
    }
    if is_plain(path.as_bytes()) {
        return Ok(CanonicalPath {
            forward: Cow::Borrowed(path),
            stripped: None,
        });
    }
    canonicalize_slow(path)
}

/// True when the path is already canonical and has no parameters: only
/// `pchar` characters and `/` (no escape, no `;`), no empty segment, no
/// segment starting or ending with `.`. One pass, no allocation: this is
/// the path of nearly every request.
fn is_plain(b: &[u8]) -> bool {
    let mut prev = 0u8;
    for &c in b {
        let bad = match c {
            b'/' => prev == b'/' || prev == b'.',
            b'.' => prev == b'/',
            b';' => true,
            _ => !is_pchar(c),
        };
        if bad {
            return false;
        }
        prev = c;
    }
    prev != b'.'
}

fn canonicalize_slow(path: &str) -> Result<CanonicalPath<'static>, &'static str> {
    // (segment as forwarded, length of its name part before `;`)
    let mut kept: Vec<(String, usize)> = Vec::new();
    let raw_segments: Vec<&str> = path[1..].split('/').collect();
    let last = raw_segments.len() - 1;
    let mut trailing_slash = false;
    for (i, raw) in raw_segments.iter().enumerate() {
        let (seg, name_len) = canonical_segment(raw)?;
        let name = &seg[..name_len];
        match name {
            "" => trailing_slash = i == last,
            "." => trailing_slash = i == last,
            ".." => {
                kept.pop();
                trailing_slash = i == last;
            }
            _ => {
                if name.ends_with('.') || name.ends_with("%20") {
                    return Err("path segment ends with a dot or space");
                }
                kept.push((seg, name_len));
                trailing_slash = false;
            }
        }
    }
    let mut forward = String::with_capacity(path.len());
    let has_params = kept.iter().any(|(s, n)| s.len() != *n);
    let mut stripped = has_params.then(|| String::with_capacity(path.len()));
    for (seg, name_len) in &kept {
        forward.push('/');
        forward.push_str(seg);
        if let Some(s) = &mut stripped {
            s.push('/');
            s.push_str(&seg[..*name_len]);
        }
    }
    if trailing_slash || kept.is_empty() {
        forward.push('/');
        if let Some(s) = &mut stripped {
            s.push('/');
        }
    }
    Ok(CanonicalPath {
        forward: Cow::Owned(forward),
        stripped,
    })
}

/// RFC 3986 §3.3 `pchar` (without `pct-encoded`): the characters a
/// segment holds as they are. `;` is one (a sub-delim) but is handled
/// apart, as the start of parameters.
fn is_pchar(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b'='
                | b':'
                | b'@'
                | b';'
        )
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn push_escape(out: &mut String, v: u8) {
    out.push('%');
    out.push(HEX[usize::from(v >> 4)] as char);
    out.push(HEX[usize::from(v & 15)] as char);
}

/// One segment in canonical form, and the length of its name (the part
/// before the first `;`).
fn canonical_segment(raw: &str) -> Result<(String, usize), &'static str> {
    let b = raw.as_bytes();
    let mut out = String::with_capacity(b.len());
    // Every byte the segment decodes to, to check that it is UTF-8.
    let mut decoded: Vec<u8> = Vec::with_capacity(b.len());
    let mut name_len = None;
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'%' => {
                let (Some(hi), Some(lo)) = (
                    b.get(i + 1).copied().and_then(hex_val),
                    b.get(i + 2).copied().and_then(hex_val),
                ) else {
                    return Err("malformed percent-encoding in path");
                };
                let v = hi << 4 | lo;
                match v {
                    b'/' | b'\\' | b';' | 0 => {
                        return Err("encoded slash, backslash, semicolon or NUL in path")
                    }
                    b'%' => {
                        // What follows must not make `%25` the first half
                        // of another escape for a decoder that decodes
                        // twice, now or after canonicalisation (where a
                        // character that is not a pchar becomes `%XX`).
                        if b.get(i + 3)
                            .is_some_and(|&n| hex_val(n).is_some() || !is_pchar(n))
                        {
                            return Err("double-encoded escape in path");
                        }
                        push_escape(&mut out, v);
                    }
                    v if is_pchar(v) => out.push(v as char),
                    v => push_escape(&mut out, v),
                }
                decoded.push(v);
                i += 3;
                continue;
            }
            b'\\' => return Err("backslash in path"),
            b';' => {
                if name_len.is_none() {
                    name_len = Some(out.len());
                }
                out.push(';');
            }
            c if is_pchar(c) => out.push(c as char),
            0x21..=0x7e | 0x80..=0xff => push_escape(&mut out, c),
            _ => return Err("control character or space in path"),
        }
        decoded.push(c);
        i += 1;
    }
    if std::str::from_utf8(&decoded).is_err() {
        return Err("path does not decode to UTF-8");
    }
    let n = name_len.unwrap_or(out.len());
    Ok((out, n))
}

/// Why a canonical matching path cannot be judged for a backend that
/// ignores case (`case_insensitive` routes: IIS, Windows, or frameworks
/// comparing with Java's `equalsIgnoreCase` or Python's `casefold`), if it
/// cannot: such a backend also takes
/// - non-ASCII characters whose case mapping is ASCII (`ı` → `I`, `ſ` →
///   `S`, Kelvin `K` → `k`, `İ` → `i`, `ﬁ` → `FI`) for those ASCII
///   letters, so `/ap%C4%B1` could be served as `/api`;
/// - NTFS stream syntax (`name::$DATA`, `name:$i30:$INDEX_ALLOCATION`)
///   and 8.3 short names (`ADMINI~1`) for the plain name.
///
/// Such paths are refused (400) on hosts that have a case-insensitive route.
pub fn case_fold_hazard(path: &str) -> Option<&'static str> {
    let b = path.as_bytes();
    if !b.iter().any(|&c| matches!(c, b'%' | b':' | b'~')) {
        return None;
    }
    if b.contains(&b':') {
        return Some("NTFS stream syntax in path");
    }
    if b.windows(2).any(|w| w[0] == b'~' && w[1].is_ascii_digit()) {
        return Some("8.3 short name in path");
    }
    let mut bytes = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (
            b[i],
            b.get(i + 1).copied().and_then(hex_val),
            b.get(i + 2).copied().and_then(hex_val),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                bytes.push(hi << 4 | lo);
                i += 3;
            }
            (c, _, _) => {
                bytes.push(c);
                i += 1;
            }
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    text.chars()
        .filter(|c| !c.is_ascii())
        .any(|c| {
            c.to_lowercase().any(|m| m.is_ascii_alphabetic())
                || c.to_uppercase().any(|m| m.is_ascii_alphabetic())
        })
        .then_some("a character that case-folds to ASCII in path")
}

/// Why `path` may not be judged on behalf of an app that will be served
/// the raw target, if it may not: it has an empty segment (`//`, which
/// [`canonicalize_path`] merges) or a dot segment (`.` or `..`, also
/// spelled `%2e`, or followed by `;parameters` as in `..;x`, which it
/// resolves; RFC 3986 §5.2.4). Only the path before `?` is looked at; a
/// final empty segment (a trailing `/`) is fine.
///
/// In proxy mode the backend receives the canonical path, so these
/// spellings are resolved and forwarded. An auth server (nginx
/// `auth_request`, Caddy `forward_auth`) judges a target that the ingress
/// forwards to the app as the client sent it, and apps disagree on these
/// forms: Node's `new URL` reads `//static/admin` as host `static` and
/// path `/admin`, Werkzeug matches `/admin/../health` against
/// `/admin/<path:p>`, Express keeps `/admin/..;/health` under `/admin/*`.
/// Judged by their canonical form, each would pass as the public or
/// less protected path and be served as another; so they are refused.
/// Escapes and `;parameters` are not refused here: they move no segment
/// boundary, and [`canonicalize_path`] reads them as the common backends
/// do.
pub fn unresolved_segment(path: &str) -> Option<&'static str> {
    let path = path.split('?').next().unwrap_or(path);
    let body = path.strip_prefix('/').unwrap_or(path);
    let mut segments = body.split('/').peekable();
    while let Some(segment) = segments.next() {
        let last = segments.peek().is_none();
        let name = segment.split(';').next().unwrap_or(segment);
        if name.is_empty() {
            if !(last && segment.is_empty()) {
                return Some("empty path segment");
            }
            continue;
        }
        if is_dot_segment(name) {
            return Some("dot segment in path");
        }
    }
    None
}

/// `.` or `..`, each dot written as itself or as `%2e`/`%2E`.
fn is_dot_segment(name: &str) -> bool {
    let mut dots = 0;
    let mut rest = name.as_bytes();
    while !rest.is_empty() {
        if rest[0] == b'.' {
            rest = &rest[1..];
        } else if rest.len() >= 3 && rest[0] == b'%' && rest[1] == b'2' && rest[2] | 0x20 == b'e' {
            rest = &rest[3..];
        } else {
            return false;
        }
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// A request's host in its canonical form: `name[:port]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalHost<'a> {
    /// What `Host` carries to the backend (with `preserve_host`) and what
    /// `X-Forwarded-Host` says: lower-case, no trailing dot, port as a
    /// number; empty when the request named no host (HTTP/1.0, or HTTP/2
    /// without `:authority`).
    pub value: Cow<'a, str>,
    /// Where the name ends in `value` (before `:port`).
    name_end: usize,
}

impl<'a> CanonicalHost<'a> {
    /// No host at all.
    pub const EMPTY: CanonicalHost<'static> = CanonicalHost {
        value: Cow::Borrowed(""),
        name_end: 0,
    };

    /// The host without its port (an IPv6 literal keeps its brackets):
    /// what routes' `hosts` and certificates' names are compared with.
    pub fn name(&self) -> &str {
        &self.value[..self.name_end]
    }

    /// The same host, owning its text.
    pub fn into_owned(self) -> CanonicalHost<'static> {
        CanonicalHost {
            value: Cow::Owned(self.value.into_owned()),
            name_end: self.name_end,
        }
    }
}

/// Parses a `Host` field value or an `:authority` (without userinfo, which
/// RFC 9110 §4.2.4 forbids in HTTP URIs) into its canonical form.
pub fn canonicalize_host(raw: &str) -> Result<CanonicalHost<'_>, &'static str> {
    const BAD: &str = "malformed Host";
    let b = raw.as_bytes();
    if b.is_empty() {
        return Err(BAD);
    }
    let (name, rest, ipv6): (Cow<'_, str>, &str, bool) = if b[0] == b'[' {
        let close = raw.find(']').ok_or(BAD)?;
        let addr: Ipv6Addr = raw[1..close].parse().map_err(|_| BAD)?;
        let text = format!("[{addr}]");
        let name = if text == raw[..=close] {
            Cow::Borrowed(&raw[..=close])
        } else {
            Cow::Owned(text)
        };
        (name, &raw[close + 1..], true)
    } else {
        let end = raw.find(':').unwrap_or(raw.len());
        (Cow::Borrowed(&raw[..end]), &raw[end..], false)
    };
    let port = match rest.strip_prefix(':') {
        None if rest.is_empty() => None,
        None => return Err(BAD),
        Some("") => None,
        Some(p) => {
            if p.len() > 5 || !p.bytes().all(|c| c.is_ascii_digit()) {
                return Err(BAD);
            }
            Some(p.parse::<u16>().map_err(|_| BAD)?)
        }
    };
    let name = if ipv6 { name } else { reg_name(name)? };
    let name_end = name.len();
    let value = match (name, port) {
        (Cow::Borrowed(n), None) => Cow::Borrowed(n),
        // Borrowed when the port was written canonically already.
        (Cow::Borrowed(n), Some(p))
            if rest.len() == 1 + digits(p) && raw.len() == n.len() + rest.len() =>
        {
            Cow::Borrowed(raw)
        }
        (n, Some(p)) => Cow::Owned(format!("{n}:{p}")),
        (Cow::Owned(n), None) => Cow::Owned(n),
    };
    Ok(CanonicalHost { value, name_end })
}

fn digits(p: u16) -> usize {
    match p {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        1000..=9999 => 4,
        _ => 5,
    }
}

/// A registered name or IPv4 address: non-empty labels of letters, digits,
/// `-` and `_`, at most 253 characters; one trailing dot (a fully
/// qualified name) is dropped; lower-cased.
fn reg_name(name: Cow<'_, str>) -> Result<Cow<'_, str>, &'static str> {
    const BAD: &str = "malformed Host";
    let trimmed_len = name.strip_suffix('.').map_or(name.len(), str::len);
    let core = &name[..trimmed_len];
    if core.is_empty() || core.len() > 253 {
        return Err(BAD);
    }
    let mut prev_dot = true;
    let mut upper = false;
    for c in core.bytes() {
        match c {
            b'.' if prev_dot => return Err(BAD),
            b'.' => prev_dot = true,
            b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' => prev_dot = false,
            b'A'..=b'Z' => {
                upper = true;
                prev_dot = false
            }
            _ => return Err(BAD),
        }
    }
    if prev_dot {
        return Err(BAD);
    }
    Ok(match name {
        Cow::Borrowed(n) if !upper && trimmed_len == n.len() => Cow::Borrowed(n),
        n => Cow::Owned(n[..trimmed_len].to_ascii_lowercase()),
    })
}

/// What is wrong with the canonical forms of `path` and `host`, if
/// anything: the properties every fuzz target and property test checks.
/// A path that is accepted must come out starting with `/`, without empty
/// or dot segments, with a matching form free of `;`, and must be its own
/// canonical form (canonicalising twice changes nothing); likewise a host.
/// Refusals are fine.
pub fn invariant_violation(path: &str, host: &str) -> Option<String> {
    if let Ok(c) = canonicalize_path(path) {
        let (f, m) = (&*c.forward, c.matched());
        if !f.starts_with('/') || f.contains("//") || m.contains(';') {
            return Some(format!("{path:?} -> {f:?} / {m:?}"));
        }
        if m.split('/').any(|s| s == "." || s == "..") {
            return Some(format!("dot segment left: {path:?} -> {m:?}"));
        }
        match canonicalize_path(f) {
            Ok(again) if again == c => {}
            other => return Some(format!("not idempotent: {path:?} -> {f:?} -> {other:?}")),
        }
        // What an auth server may judge for a raw target has the raw
        // target's segments: as many, in the same places.
        if !path.contains('?')
            && unresolved_segment(path).is_none()
            && f.matches('/').count() != path.matches('/').count()
        {
            return Some(format!(
                "segments moved yet not refused for an auth server: {path:?} -> {f:?}"
            ));
        }
    }
    if let Ok(h) = canonicalize_host(host) {
        match canonicalize_host(&h.value) {
            Ok(again) if again.value == h.value && again.name() == h.name() => {}
            other => {
                return Some(format!(
                    "host not idempotent: {host:?} -> {h:?} -> {other:?}"
                ))
            }
        }
        if h.value.bytes().any(|b| b.is_ascii_uppercase()) {
            return Some(format!("host not lower-case: {host:?} -> {h:?}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_auth_server_refuses_targets_whose_segments_an_app_could_read_another_way() {
        for bad in [
            "/admin//../health",
            "//static/admin",
            "/admin/..;/health",
            "/admin/../health",
            "/admin/%2e%2E/health",
            "/admin/.%2e",
            "/static/./x",
            "/admin//",
            "/;x/admin",
            "/admin/;x",
            "/x/..?q=1",
        ] {
            assert!(unresolved_segment(bad).is_some(), "{bad}");
        }
        for good in [
            "/",
            "/admin/",
            "/%61dmin/x",
            "/admin;v=1/x",
            "/a/...",
            "/a/.b/c.",
            "/a/%2e%2e%2e",
            "/health?next=/../admin//x",
        ] {
            assert_eq!(unresolved_segment(good), None, "{good}");
        }
    }

    fn fwd(p: &str) -> Result<String, &'static str> {
        canonicalize_path(p).map(|c| c.forward.into_owned())
    }
    fn matched(p: &str) -> String {
        canonicalize_path(p).unwrap().matched().to_owned()
    }

    #[test]
    fn dot_segments_and_slashes_resolve() {
        assert_eq!(fwd("/a/b").unwrap(), "/a/b");
        assert_eq!(fwd("/public/../admin").unwrap(), "/admin");
        assert_eq!(fwd("/public/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(fwd("/public/%2E%2e/admin").unwrap(), "/admin");
        assert_eq!(fwd("/public/..;/admin").unwrap(), "/admin");
        assert_eq!(fwd("//public//x/").unwrap(), "/public/x/");
        assert_eq!(fwd("/a/./b/.").unwrap(), "/a/b/");
        assert_eq!(fwd("/../../x").unwrap(), "/x");
        assert_eq!(fwd("/").unwrap(), "/");
        assert_eq!(fwd("/.well-known/x").unwrap(), "/.well-known/x");
        assert!(fwd("*").is_err());
    }

    #[test]
    fn unreserved_escapes_are_decoded_and_others_normalised() {
        assert_eq!(fwd("/%61dmin/x").unwrap(), "/admin/x");
        assert_eq!(fwd("/%41%7e%2D").unwrap(), "/A~-");
        assert_eq!(fwd("/a%3fb%c3%a9").unwrap(), "/a%3Fb%C3%A9");
        assert_eq!(
            fwd("/%40admin/%24batch/users%3Adelete").unwrap(),
            "/@admin/$batch/users:delete"
        );
        assert_eq!(fwd("/%21%27%28%29%2a%2B%2c%3d%26").unwrap(), "/!'()*+,=&");
        assert_eq!(fwd("/{x}|^`[]\"").unwrap(), "/%7Bx%7D%7C%5E%60%5B%5D%22");
        assert_eq!(fwd("/%7bx%7d").unwrap(), "/%7Bx%7D");
        assert_eq!(fwd("/100%25").unwrap(), "/100%25");
        assert_eq!(fwd("/100%25off").unwrap(), "/100%25off");
    }

    #[test]
    fn ambiguous_spellings_are_refused() {
        for p in [
            "/public%2f..%2fadmin",
            "/a%5Cb",
            "/a\\b",
            "/a%00",
            "/admin%3bx",
            "/%zz",
            "/%4",
            "/%2541dmin",
            "/%25%34%31",
            "/%C0%AE%C0%AE/admin",
            "/admin./x",
            "/admin%2e/x",
            "/admin%20/x",
            "/admin...",
        ] {
            assert!(fwd(p).is_err(), "{p} was accepted as {:?}", fwd(p));
        }
    }

    #[test]
    fn parameters_are_forwarded_but_not_matched() {
        let c = canonicalize_path("/admin;v=1/x;jsessionid=9").unwrap();
        assert_eq!(c.forward, "/admin;v=1/x;jsessionid=9");
        assert_eq!(c.matched(), "/admin/x");
        assert_eq!(matched("/;x/admin"), "/admin");
        assert_eq!(matched("/a;b/"), "/a/");
        assert_eq!(fwd("/a;b/..;c/d").unwrap(), "/d");
    }

    #[test]
    fn case_insensitive_backends_see_no_other_spelling() {
        for p in [
            "/ap%C4%B1/users",
            "/%E2%84%AApi",
            "/%C5%BFecret",
            "/%C4%B0x",
            "/%EF%AC%81le",
            "/api::$DATA",
            "/api:$i30:$INDEX_ALLOCATION/u",
            "/API~1/users",
        ] {
            let c = canonicalize_path(p).unwrap();
            assert!(case_fold_hazard(c.matched()).is_some(), "{p}");
        }
        for p in ["/api/users", "/%C3%A9t%C3%A9", "/~user/x", "/a%20b"] {
            let c = canonicalize_path(p).unwrap();
            assert_eq!(case_fold_hazard(c.matched()), None, "{p}");
        }
    }

    #[test]
    fn canonical_paths_are_fixed_points() {
        for p in [
            "/%61dmin;v=%41/x/",
            "/a%3fb%c3%a9/./c/../d",
            "/100%25off",
            "/x/%7E",
        ] {
            let once = fwd(p).unwrap();
            assert_eq!(fwd(&once).unwrap(), once, "{p}");
        }
    }

    #[test]
    fn hosts_parse_to_one_form() {
        let h = |s| canonicalize_host(s).map(|h| (h.value.into_owned(), h.name_end));
        assert_eq!(h("Admin.Test").unwrap(), ("admin.test".into(), 10));
        assert_eq!(
            h("admin.test.:0443").unwrap(),
            ("admin.test:443".into(), 10)
        );
        assert_eq!(h("admin.test:").unwrap(), ("admin.test".into(), 10));
        assert_eq!(h("127.0.0.1:8080").unwrap(), ("127.0.0.1:8080".into(), 9));
        assert_eq!(h("[::1]:8443").unwrap(), ("[::1]:8443".into(), 5));
        assert_eq!(
            h("[0:0::1]").unwrap(),
            ("[::1]".into(), 5),
            "IPv6 in its RFC 5952 form"
        );
        for bad in [
            "admin.test:abc",
            "admin.test:99999",
            "admin.test:1:2",
            "user@admin.test",
            "admin..test",
            ".admin.test",
            "admin test",
            "admin.test%00",
            "[::1",
            "[v1.x]",
            "[::1]x",
            "",
            "a/b",
        ] {
            assert!(canonicalize_host(bad).is_err(), "{bad:?} accepted");
        }
        let c = canonicalize_host("app.test:8443").unwrap();
        assert_eq!(c.name(), "app.test");
        assert!(matches!(c.value, Cow::Borrowed(_)));
    }
}
