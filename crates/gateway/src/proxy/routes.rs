//! Which route a request belongs to.
//!
//! Matching is done on the canonical path ([`super::canonical`]: escapes
//! normalised, dot segments resolved, `;parameters` removed for matching)
//! and the canonical host, and the canonical path is what the backend
//! receives: a path the gateway judged public must be the path the backend
//! serves, so `/public/../admin`, `/%61dmin` or `/admin;x` can never reach
//! `/admin` under another route's rules.

use std::sync::Arc;

use super::headers::StripRules;
use super::upstream::Upstream;
use crate::login::{Login, Sessions};
use gatehouse_core::config::{AuthMode, Config, IdentityHeader, LoadedConfig, Requirement};

pub struct Route {
    pub name: Arc<str>,
    hosts: Vec<HostPattern>,
    prefix: String,
    pub auth: AuthMode,
    pub issuers: Vec<Arc<str>>,
    public_paths: Vec<String>,
    /// `case_insensitive`: prefix and public paths compared ignoring ASCII
    /// case, for backends that serve `/ADMIN` as `/admin` (IIS, Windows).
    case_insensitive: bool,
    /// Protocols a client may switch to through this route (`Upgrade`,
    /// RFC 9110 §7.8), lower-case; `h2c` is never among them.
    pub upgrades: Vec<String>,
    pub require: Option<Requirement>,
    pub identity_headers: Vec<IdentityHeader>,
    /// A process-unique number for this route's `identity_headers` list:
    /// what an identity's memo of its header values is kept for
    /// ([`gatehouse_core::auth::HeaderMemo`]).
    pub identity_headers_list: u64,
    pub forward_authorization: bool,
    pub preserve_host: bool,
    pub max_body_bytes: u64,
    pub upstream: Upstream,
    /// Browser login (`login`): set by [`RouteTable::attach_logins`].
    pub login: Option<Arc<Login>>,
    /// `cors_preflight`: CORS preflights pass without credentials.
    pub cors_preflight: bool,
}

impl Route {
    /// Whether the canonical matching path is under one of the route's
    /// public paths.
    pub fn is_public(&self, path: &str) -> bool {
        self.public_paths
            .iter()
            .any(|p| prefix_match(path, p, self.case_insensitive))
    }

    /// Whether every protocol an `Upgrade` field value offers is one this
    /// route allows (RFC 9110 §7.8: a comma-separated list of
    /// `protocol-name[/version]`).
    pub fn allows_upgrade(&self, offered: &str) -> bool {
        let mut any = false;
        for p in offered.split(',') {
            let name = p.trim().split('/').next().unwrap_or("").trim();
            if name.is_empty() {
                continue;
            }
            any = true;
            if name.eq_ignore_ascii_case("h2c")
                || !self.upgrades.iter().any(|u| u.eq_ignore_ascii_case(name))
            {
                return false;
            }
        }
        any
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
    /// What is removed from client requests: identity headers of every
    /// route (a backend may trust one a route never sets), and from
    /// untrusted clients the forwarding family and the operator's list.
    pub strip_rules: StripRules,
    /// Every route's identity header names, each once, in config order.
    pub all_identity_headers: Vec<http::HeaderName>,
    /// Some route has `case_insensitive` (a shortcut for
    /// [`RouteTable::case_insensitive_for`]).
    any_case_insensitive: bool,
}

impl RouteTable {
    pub fn from_config(cfg: &Config) -> anyhow::Result<Self> {
        let mut routes = Vec::new();
        for r in &cfg.routes {
            let rc = &r.value;
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
                case_insensitive: rc.case_insensitive,
                upgrades: rc.upgrades.iter().map(|u| u.to_ascii_lowercase()).collect(),
                require: rc.require.clone(),
                identity_headers: rc.identity_headers.clone(),
                identity_headers_list: next_list(),
                forward_authorization: rc.forward_authorization,
                preserve_host: rc.preserve_host,
                max_body_bytes: rc.max_body_bytes.unwrap_or(cfg.limits.max_body_bytes),
                upstream: Upstream::new(rc, rc.display_name()),
                login: None,
                cors_preflight: rc.cors_preflight,
            });
        }
        let strip_rules = StripRules::new(
            cfg.routes
                .iter()
                .flat_map(|r| r.value.identity_headers.iter())
                .map(|ih| ih.header.0.as_str()),
            cfg.strip_untrusted_headers.iter().map(String::as_str),
        );
        let mut all_identity_headers: Vec<http::HeaderName> = Vec::new();
        for ih in cfg
            .routes
            .iter()
            .flat_map(|r| r.value.identity_headers.iter())
        {
            if !all_identity_headers.contains(&ih.header.0) {
                all_identity_headers.push(ih.header.0.clone());
            }
        }
        Ok(RouteTable {
            all_identity_headers,
            any_case_insensitive: routes.iter().any(|r| r.case_insensitive),
            routes,
            strip_rules,
        })
    }

    /// Builds each route's login (its client, its keys) and the sessions
    /// they share. Routes are in config order.
    pub fn attach_logins(&mut self, loaded: &LoadedConfig) -> anyhow::Result<()> {
        let cfg = &loaded.config;
        let Some(s) = &cfg.sessions else {
            return Ok(());
        };
        let sessions = Arc::new(Sessions::from_config(&s.value, loaded)?);
        for (route, rc) in self.routes.iter_mut().zip(&cfg.routes) {
            if let Some(l) = &rc.value.login {
                route.login = Some(Arc::new(Login::from_config(l, loaded, sessions.clone())?));
            }
        }
        Ok(())
    }

    /// Whether a route that may serve `host` (its hosts name it, or it has
    /// none) is `case_insensitive`: then that host's backends may ignore
    /// case, and paths they would read as another are refused.
    pub fn case_insensitive_for(&self, host: &str) -> bool {
        self.any_case_insensitive
            && self.routes.iter().any(|r| {
                r.case_insensitive
                    && (r.hosts.is_empty() || r.hosts.iter().any(|h| h.score(host).is_some()))
            })
    }

    /// The most specific host match first (exact, then wildcard, then a
    /// route without hosts), then the longest path prefix within it.
    /// `host` is the canonical host's name (no port), `path` the canonical
    /// matching path.
    pub fn find(&self, host: &str, path: &str) -> Option<&Route> {
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
            if !prefix_match(path, &r.prefix, r.case_insensitive) {
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

/// Prefix match on segment boundaries: `/api` matches `/api` and `/api/x`
/// but not `/apix`; a prefix ending in `/` matches everything below it.
/// With `ignore_case`, ASCII letters compare equal in either case.
pub fn prefix_match(path: &str, prefix: &str, ignore_case: bool) -> bool {
    let head = path.as_bytes().get(..prefix.len());
    let starts = match head {
        Some(h) if ignore_case => h.eq_ignore_ascii_case(prefix.as_bytes()),
        Some(h) => h == prefix.as_bytes(),
        None => false,
    };
    starts
        && (prefix.ends_with('/')
            || path.len() == prefix.len()
            || path.as_bytes()[prefix.len()] == b'/')
}

/// A number no other route's identity-header list has had in this
/// process (reloads included).
fn next_list() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_respect_segments() {
        assert!(prefix_match("/api", "/api", false));
        assert!(prefix_match("/api/x", "/api", false));
        assert!(!prefix_match("/apix", "/api", false));
        assert!(prefix_match("/static/a.css", "/static/", false));
        assert!(!prefix_match("/static", "/static/", false));
        assert!(prefix_match("/anything", "/", false));
        assert!(!prefix_match("/API/x", "/api", false));
        assert!(prefix_match("/API/x", "/api", true));
        assert!(!prefix_match("/APIx", "/api", true));
    }

    #[test]
    fn hosts() {
        let s = HostPattern::Suffix(".example.com".into());
        assert_eq!(s.score("a.EXAMPLE.com"), Some(1));
        assert_eq!(s.score("example.com"), None);
        assert_eq!(
            HostPattern::Exact("example.com".into()).score("Example.com"),
            Some(2)
        );
    }
}
