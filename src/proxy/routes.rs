//! Which route a request belongs to, and the path it is judged by.
//!
//! Matching is done on a *normalised* path (slashes merged, dot segments
//! resolved, `%2e` decoded, `;params` on dot segments seen through), and the
//! normalised path is what the backend receives: a path the gateway judged
//! public must be the path the backend serves, so `/public/../admin` or
//! `/public/%2e%2e/admin` can never reach `/admin` without a token.

use std::borrow::Cow;
use std::sync::Arc;

use http::HeaderName;

use super::upstream::Upstream;
use crate::config::{AuthMode, Config, IdentityHeader, Requirement};

pub struct Route {
    pub name: Arc<str>,
    hosts: Vec<HostPattern>,
    prefix: String,
    pub auth: AuthMode,
    pub issuers: Vec<Arc<str>>,
    public_paths: Vec<String>,
    pub require: Option<Requirement>,
    pub identity_headers: Vec<IdentityHeader>,
    pub forward_authorization: bool,
    pub preserve_host: bool,
    pub max_body_bytes: u64,
    pub upstream: Upstream,
}

impl Route {
    pub fn is_public(&self, path: &str) -> bool {
        self.public_paths.iter().any(|p| prefix_match(path, p))
    }
}

enum HostPattern {
    Exact(String),
    /// `*.example.com` stored as `.example.com`; matches one or more labels.
    Suffix(String),
}

impl HostPattern {
    /// 2 for an exact match, 1 for a wildcard, `None` for no match.
    fn score(&self, host: &str) -> Option<u8> {
        match self {
            HostPattern::Exact(h) => host.eq_ignore_ascii_case(h).then_some(2),
            HostPattern::Suffix(s) => (host.len() > s.len()
                && host.as_bytes()[host.len() - s.len()..].eq_ignore_ascii_case(s.as_bytes()))
            .then_some(1),
        }
    }
}

pub struct RouteTable {
    routes: Vec<Route>,
    /// Identity headers of every route: stripped from every client request
    /// on every route, because a backend may trust one a route never sets.
    pub reserved_headers: Vec<HeaderName>,
}

impl RouteTable {
    pub fn from_config(cfg: &Config) -> anyhow::Result<Self> {
        let mut routes = Vec::new();
        let mut reserved: Vec<HeaderName> = Vec::new();
        for r in &cfg.routes {
            let rc = &r.value;
            for ih in &rc.identity_headers {
                if !reserved.contains(&ih.header.0) {
                    reserved.push(ih.header.0.clone());
                }
            }
            routes.push(Route {
                name: Arc::from(rc.display_name()),
                hosts: rc
                    .hosts
                    .iter()
                    .map(|h| match h.strip_prefix('*') {
                        Some(suffix) => HostPattern::Suffix(suffix.to_ascii_lowercase()),
                        None => HostPattern::Exact(h.to_ascii_lowercase()),
                    })
                    .collect(),
                prefix: rc.path_prefix.clone(),
                auth: rc.auth,
                issuers: rc.issuers.iter().map(|s| Arc::from(s.as_str())).collect(),
                public_paths: rc.public_paths.clone(),
                require: rc.require.clone(),
                identity_headers: rc.identity_headers.clone(),
                forward_authorization: rc.forward_authorization,
                preserve_host: rc.preserve_host,
                max_body_bytes: rc.max_body_bytes.unwrap_or(cfg.limits.max_body_bytes),
                upstream: Upstream::new(rc, rc.display_name()),
            });
        }
        Ok(RouteTable {
            routes,
            reserved_headers: reserved,
        })
    }

    /// The most specific host match first (exact, then wildcard, then a
    /// route without hosts), then the longest path prefix within it.
    pub fn find(&self, host: &str, path: &str) -> Option<&Route> {
        let host = strip_port(host);
        let host = host.strip_suffix('.').unwrap_or(host);
        let mut best: Option<(&Route, u8, usize)> = None;
        for r in &self.routes {
            let score = if r.hosts.is_empty() {
                0
            } else {
                match r.hosts.iter().filter_map(|h| h.score(host)).max() {
                    Some(s) => s,
                    None => continue,
                }
            };
            if !prefix_match(path, &r.prefix) {
                continue;
            }
            let key = (score, r.prefix.len());
            if best.is_none_or(|(_, s, l)| key > (s, l)) {
                best = Some((r, score, r.prefix.len()));
            }
        }
        best.map(|(r, _, _)| r)
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

/// Prefix match on segment boundaries: `/api` matches `/api` and `/api/x`
/// but not `/apix`; a prefix ending in `/` matches everything below it.
pub fn prefix_match(path: &str, prefix: &str) -> bool {
    path.starts_with(prefix)
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/')
}

/// Normalises a request path (without its query). Refuses encoded slashes,
/// backslashes and NUL, which different backends decode differently.
pub fn normalize_path(path: &str) -> Result<Cow<'_, str>, &'static str> {
    if !path.starts_with('/') {
        return Err("request target must be an absolute path");
    }
    let b = path.as_bytes();
    let needs_work = path.contains("//")
        || path.contains("/.")
        || b.contains(&b'%')
        || b.contains(&b';')
        || b.contains(&b'\\');
    if !needs_work {
        return Ok(Cow::Borrowed(path));
    }
    if b.contains(&b'\\') {
        return Err("backslash in path");
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || lower.contains("%00") {
        return Err("encoded slash, backslash or NUL in path");
    }
    let mut out: Vec<&str> = Vec::new();
    let segments: Vec<&str> = path[1..].split('/').collect();
    let last = segments.len() - 1;
    let mut trailing_slash = false;
    for (i, seg) in segments.iter().enumerate() {
        let name = seg.split(';').next().unwrap_or("");
        let decoded = name.replace("%2e", ".").replace("%2E", ".");
        match decoded.as_str() {
            "" => {
                if i == last {
                    trailing_slash = true;
                }
            }
            "." => trailing_slash = i == last,
            ".." => {
                out.pop();
                trailing_slash = i == last;
            }
            _ => {
                out.push(seg);
                trailing_slash = false;
            }
        }
    }
    let mut s = String::with_capacity(path.len());
    for seg in &out {
        s.push('/');
        s.push_str(seg);
    }
    if trailing_slash || s.is_empty() {
        s.push('/');
    }
    Ok(Cow::Owned(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_closes_traversal() {
        let n = |p| normalize_path(p).map(|c| c.into_owned());
        assert_eq!(n("/a/b").unwrap(), "/a/b");
        assert_eq!(n("/public/../admin").unwrap(), "/admin");
        assert_eq!(n("/public/%2e%2e/admin").unwrap(), "/admin");
        assert_eq!(n("/public/%2E%2e/admin").unwrap(), "/admin");
        assert_eq!(n("/public/..;/admin").unwrap(), "/admin");
        assert_eq!(n("//public//x/").unwrap(), "/public/x/");
        assert_eq!(n("/a/./b/.").unwrap(), "/a/b/");
        assert_eq!(n("/../../x").unwrap(), "/x");
        assert_eq!(n("/a;jsessionid=1/b").unwrap(), "/a;jsessionid=1/b");
        assert!(n("/public%2f..%2fadmin").is_err());
        assert!(n("/public\\..\\admin").is_err());
        assert!(n("*").is_err());
    }

    #[test]
    fn prefixes_respect_segments() {
        assert!(prefix_match("/api", "/api"));
        assert!(prefix_match("/api/x", "/api"));
        assert!(!prefix_match("/apix", "/api"));
        assert!(prefix_match("/static/a.css", "/static/"));
        assert!(!prefix_match("/static", "/static/"));
        assert!(prefix_match("/anything", "/"));
    }

    #[test]
    fn hosts() {
        assert_eq!(strip_port("a.example:8443"), "a.example");
        assert_eq!(strip_port("[::1]:8443"), "::1");
        let s = HostPattern::Suffix(".example.com".into());
        assert_eq!(s.score("a.EXAMPLE.com"), Some(1));
        assert_eq!(s.score("example.com"), None);
        assert_eq!(
            HostPattern::Exact("example.com".into()).score("Example.com"),
            Some(2)
        );
    }
}
