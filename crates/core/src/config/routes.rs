//! `routes`: which requests go where, and what each requires.

use super::*;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    #[serde(default)]
    pub name: Option<String>,
    /// Exact names or `*.example.com` wildcards; empty matches any host.
    #[serde(default)]
    pub hosts: Vec<String>,
    #[serde(default = "default_prefix")]
    pub path_prefix: String,
    pub backends: Vec<BackendUrl>,
    #[serde(default)]
    pub auth: AuthMode,
    /// Issuer names accepted on this route; empty means all.
    #[serde(default)]
    pub issuers: Vec<String>,
    /// Path prefixes forwarded without a token (segment-boundary match on
    /// the normalised path).
    #[serde(default)]
    pub public_paths: Vec<String>,
    /// Match `path_prefix` and `public_paths` ignoring ASCII case: for
    /// backends that serve `/ADMIN` as `/admin` (IIS and other Windows
    /// servers, case-insensitive file systems). Without it such a backend
    /// behind a case-sensitive route table could be reached past a route's
    /// rules by changing case.
    #[serde(default)]
    pub case_insensitive: bool,
    /// Protocols a client may switch to with `Upgrade` (RFC 9110 §7.8);
    /// default `[websocket]`. `h2c` is refused (RFC 9113 §3.1 removed it;
    /// after a switch the connection is no longer HTTP the gateway reads).
    /// An `Upgrade` offering anything else is removed before forwarding.
    #[serde(default = "default_upgrades")]
    pub upgrades: Vec<String>,
    #[serde(default)]
    pub require: Option<Requirement>,
    #[serde(default = "default_identity_headers")]
    pub identity_headers: Vec<IdentityHeader>,
    /// Pass the client's `Authorization` header to the backend.
    #[serde(default)]
    pub forward_authorization: bool,
    /// Send the client's `Host` to the backend (otherwise the backend's address).
    #[serde(default = "default_true")]
    pub preserve_host: bool,
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    #[serde(default = "default_connect_timeout", with = "duration")]
    pub connect_timeout: Duration,
    /// Time for the backend to send its response head.
    #[serde(default = "default_backend_timeout", with = "duration")]
    pub timeout: Duration,
    /// How long a backend that refused a connection is skipped.
    #[serde(default = "default_cooldown", with = "duration")]
    pub backend_cooldown: Duration,
    /// How long a pooled backend connection may sit idle before it is
    /// closed instead of reused; keep it below the backend's own
    /// keep-alive timeout.
    #[serde(default = "default_backend_idle_timeout", with = "duration")]
    pub backend_idle_timeout: Duration,
    /// Browser login (OpenID Connect authorization code flow) for this
    /// route: a page navigation without credentials is sent to the
    /// provider, and comes back with a session cookie. Needs `sessions`.
    #[serde(default)]
    pub login: Option<LoginConfig>,
    /// Let CORS preflights through without credentials: an `OPTIONS`
    /// request with `Origin` and `Access-Control-Request-Method` (Fetch
    /// standard §3.2.2, "CORS-preflight request"), which browsers send
    /// without cookies or `Authorization`, is forwarded to the backend.
    #[serde(default)]
    pub cors_preflight: bool,
}

/// `routes[].login`: this gateway as an OpenID Connect relying party
/// (OpenID Connect Core 1.0 §3.1, authorization code flow with PKCE S256,
/// RFC 7636).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginConfig {
    /// The name of the issuer that logs users in; its endpoints come from
    /// its `discovery` document unless given below.
    pub issuer: String,
    pub client_id: String,
    /// `client_secret_basic` client authentication (RFC 6749 §2.3.1).
    #[serde(default)]
    pub client_secret: Option<SecretSource>,
    /// `private_key_jwt` client authentication (OIDC Core §9, RFC 7523).
    #[serde(default)]
    pub private_key_jwt: Option<PrivateKeyJwt>,
    /// Scopes asked for; `openid` is required.
    #[serde(default = "default_login_scopes")]
    pub scopes: Vec<String>,
    /// Where the provider sends the browser back (register
    /// `https://<host><callback_path>` as a redirect URI).
    #[serde(default = "default_callback_path")]
    pub callback_path: String,
    /// `POST` here logs out (the session ends everywhere, then the browser
    /// goes to the provider's end-session endpoint).
    #[serde(default = "default_logout_path")]
    pub logout_path: String,
    /// Where the provider sends the browser after logging out (OIDC
    /// RP-Initiated Logout 1.0 §3); register it with the provider.
    #[serde(default)]
    pub post_logout_redirect_uri: Option<String>,
    /// Endpoints for a provider without discovery (or to override it).
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint: Option<String>,
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
}

/// `login.private_key_jwt`: the key the gateway signs its client
/// assertions with (RFC 7523 §2.2); register its public half with the
/// provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivateKeyJwt {
    /// PEM private key (PKCS#8, or SEC1 for EC, or PKCS#1 for RSA).
    pub key_file: PathBuf,
    /// `RS256`, `PS256` or `ES256`.
    pub alg: Algorithm,
    #[serde(default)]
    pub kid: Option<String>,
}

fn default_login_scopes() -> Vec<String> {
    vec!["openid".into()]
}
fn default_callback_path() -> String {
    "/.gatehouse/callback".into()
}
fn default_logout_path() -> String {
    "/.gatehouse/logout".into()
}

/// `sessions`: the browser sessions made by `routes[].login`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionsConfig {
    /// Cookie keys, each at least 32 bytes (file or env): the first seals
    /// new cookies, every one opens (rotation: put the new key first, drop
    /// the old one after `absolute_lifetime`).
    pub keys: Vec<SecretSource>,
    /// A session ends this long after login, used or not.
    #[serde(default = "default_session_absolute", with = "duration")]
    pub absolute_lifetime: Duration,
    /// A session ends after this long without a request.
    #[serde(default = "default_session_idle", with = "duration")]
    pub idle_timeout: Duration,
}

fn default_session_absolute() -> Duration {
    Duration::from_secs(12 * 3600)
}
fn default_session_idle() -> Duration {
    Duration::from_secs(3600)
}

/// `sessions` and every `login`: keys readable, the issuer known, exactly
/// one client authentication, `openid` asked for, paths canonical.
pub(super) fn check_logins(c: &mut Check<'_>) {
    let cfg = &c.loaded.config;
    let any_login = cfg.routes.iter().any(|r| r.value.login.is_some());
    if let Some(s) = &cfg.sessions {
        let line = s.referenced.line();
        if s.value.keys.is_empty() {
            c.push(line, "sessions.keys needs at least one key".into());
        }
        for k in &s.value.keys {
            c.secret(line, k, "sessions.keys: ");
            if let Ok(b) = k.read(c.loaded) {
                if b.len() < 32 {
                    c.push(
                        line,
                        "sessions.keys: a key must be at least 32 bytes".into(),
                    );
                }
            }
        }
        if s.value.idle_timeout.is_zero() || s.value.absolute_lifetime.is_zero() {
            c.push(line, "sessions: lifetimes must be more than zero".into());
        }
    } else if any_login {
        c.push(
            0,
            "a route has login but there is no `sessions` block (its cookie keys)".into(),
        );
    }
    for r in &cfg.routes {
        let Some(l) = &r.value.login else { continue };
        let line = r.referenced.line();
        if !cfg
            .issuers
            .iter()
            .any(|i| i.value.display_name() == l.issuer)
        {
            c.push(
                line,
                format!("login refers to unknown issuer `{}`", l.issuer),
            );
        }
        match (&l.client_secret, &l.private_key_jwt) {
            (Some(s), None) => c.secret(line, s, "login.client_secret: "),
            (None, Some(k)) => {
                c.file_must_exist(line, &k.key_file, "login.private_key_jwt key_file");
                if !matches!(
                    k.alg,
                    Algorithm::RS256 | Algorithm::PS256 | Algorithm::ES256
                ) {
                    c.push(
                        line,
                        "login.private_key_jwt.alg must be RS256, PS256 or ES256".into(),
                    );
                }
            }
            _ => c.push(
                line,
                "login takes exactly one of client_secret or private_key_jwt".into(),
            ),
        }
        if !l.scopes.iter().any(|s| s == "openid") {
            c.push(line, "login.scopes must include openid".into());
        }
        if l.client_id.is_empty() {
            c.push(line, "login.client_id is empty".into());
        }
        for (what, p) in [
            ("callback_path", &l.callback_path),
            ("logout_path", &l.logout_path),
        ] {
            if !p.starts_with('/') {
                c.push(line, format!("login.{what} `{p}` must start with /"));
            } else if let Some(why) = not_canonical(p) {
                c.push(line, format!("login.{what} `{p}` {why}"));
            } else if !prefix_covers(&r.value.path_prefix, p) {
                c.push(
                    line,
                    format!(
                        "login.{what} `{p}` is not under the route's path_prefix `{}`",
                        r.value.path_prefix
                    ),
                );
            }
        }
        for (what, u) in [
            ("post_logout_redirect_uri", &l.post_logout_redirect_uri),
            ("authorization_endpoint", &l.authorization_endpoint),
            ("token_endpoint", &l.token_endpoint),
            ("end_session_endpoint", &l.end_session_endpoint),
        ] {
            let Some(u) = u else { continue };
            match u.parse::<http::Uri>() {
                Ok(uri) if matches!(uri.scheme_str(), Some("https" | "http")) => {
                    if let Some(p) = plaintext_problem(
                        &format!("login.{what}"),
                        u,
                        "http",
                        uri.host(),
                        false,
                        "-",
                    ) {
                        c.push(line, p);
                    }
                }
                _ => c.push(line, format!("login.{what} `{u}` is not an http(s) URL")),
            }
        }
    }
}

/// Whether `path` is under `prefix` on a segment boundary.
fn prefix_covers(prefix: &str, path: &str) -> bool {
    prefix == "/"
        || path == prefix
        || path
            .strip_prefix(prefix.trim_end_matches('/'))
            .is_some_and(|rest| rest.starts_with('/'))
}

impl RouteConfig {
    pub fn display_name(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => format!(
                "{}{}",
                self.hosts.first().map_or("*", |h| h),
                self.path_prefix
            ),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    #[default]
    Required,
    Optional,
    Off,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Requirement {
    /// Every one of these must be in `scope` (space separated) or `scp`.
    #[serde(default)]
    pub scopes: Vec<String>,
    /// At least one of these must be in the roles claim.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Dotted path of the roles claim, e.g. `realm_access.roles` for Keycloak.
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityHeader {
    /// Dotted claim path, e.g. `sub`, `email`, `realm_access.roles`.
    pub claim: String,
    pub header: HeaderName,
}

/// Why a configured path (route prefix, public path) is not in the form the
/// gateway matches requests in, if it is not: a prefix like `/%61dmin` or
/// `/admin;x` would never match a canonical request path.
fn not_canonical(p: &str) -> Option<String> {
    match crate::canonical::canonicalize_path(p) {
        Err(why) => Some(format!("is refused: {why}")),
        Ok(c) if c.forward != p || c.matched() != p => Some(format!(
            "is not in canonical form; write it as `{}`",
            c.matched()
        )),
        Ok(_) => None,
    }
}

/// Every route: a canonical `path_prefix` and public paths, hosts without
/// ports, unique (hosts, prefix) pairs, backends, known issuers, upgrades
/// other than h2c, identity header names that clash with nothing.
pub(super) fn check(c: &mut Check<'_>) {
    let cfg = &c.loaded.config;
    if c.mode == Mode::Gateway && cfg.routes.is_empty() {
        c.push(0, "at least one route is required".into());
    }
    let names: std::collections::HashSet<&str> =
        cfg.issuers.iter().map(|i| i.value.display_name()).collect();
    let mut route_keys = std::collections::HashSet::new();
    for r in &cfg.routes {
        let line = r.referenced.line();
        let rc = &r.value;
        if !rc.path_prefix.starts_with('/') {
            c.push(
                line,
                format!("path_prefix `{}` must start with /", rc.path_prefix),
            );
        } else if let Some(why) = not_canonical(&rc.path_prefix) {
            c.push(line, format!("path_prefix `{}` {why}", rc.path_prefix));
        }
        for p in &rc.public_paths {
            if !p.starts_with('/') {
                c.push(line, format!("public path `{p}` must start with /"));
            } else if let Some(why) = not_canonical(p) {
                c.push(line, format!("public path `{p}` {why}"));
            }
        }
        for u in &rc.upgrades {
            if u.eq_ignore_ascii_case("h2c") {
                c.push(
                    line,
                    "upgrades: h2c is never forwarded (RFC 9113 §3.1); serve HTTP/2 over TLS"
                        .into(),
                );
            } else if u.is_empty()
                || !u
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'/' && b != b',')
            {
                c.push(line, format!("upgrades: `{u}` is not a protocol name"));
            }
        }
        for h in &rc.hosts {
            let bare = h.strip_prefix("*.").unwrap_or(h);
            if bare.is_empty() || bare.contains('*') || bare.contains(':') {
                c.push(
                    line,
                    format!("host `{h}` must be a name or *.suffix, without port"),
                );
            }
        }
        let key = (rc.hosts.clone(), rc.path_prefix.clone());
        if !route_keys.insert(key) {
            c.push(
                line,
                format!(
                    "another route has the same hosts and path_prefix `{}`",
                    rc.path_prefix
                ),
            );
        }
        if rc.backends.is_empty() {
            c.push(line, "a route needs at least one backend".into());
        }
        if rc.auth != AuthMode::Off && cfg.issuers.is_empty() {
            c.push(
                line,
                format!(
                    "route `{}` checks tokens but no issuer is configured",
                    rc.display_name()
                ),
            );
        }
        for name in &rc.issuers {
            if !names.contains(name.as_str()) {
                c.push(line, format!("route refers to unknown issuer `{name}`"));
            }
        }
        if rc.auth == AuthMode::Off && rc.require.is_some() {
            c.push(
                line,
                "`require` has no effect on a route with auth: off".into(),
            );
        }
        for (i, ih) in rc.identity_headers.iter().enumerate() {
            if ih.claim.is_empty() {
                c.push(line, "identity header with an empty claim".into());
            }
            let name = ih.header.0.as_str();
            if rc.identity_headers[..i]
                .iter()
                .any(|o| crate::header_names::same_field(o.header.0.as_str(), name))
            {
                c.push(
                    line,
                    format!(
                        "identity header `{name}` is named twice (`-` and `_` count as the same)"
                    ),
                );
            }
            if crate::header_names::is_forwarding_header(name)
                || crate::header_names::is_hop_by_hop_name(name)
                || crate::header_names::is_message_header(name)
            {
                c.push(
                    line,
                    format!(
                        "identity header `{name}` clashes with a forwarding, hop-by-hop, framing or credential header"
                    ),
                );
            }
        }
    }
}
