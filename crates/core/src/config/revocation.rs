//! `revocation` (the gateway's side: where its feed comes from, staleness
//! policies) and `authority` (the service, standalone or embedded).

use super::*;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RevocationConfig {
    /// A remote authority's feed.
    #[serde(default)]
    pub authority: Option<AuthorityClientConfig>,
    /// Run the authority inside the gateway (single-machine set-ups).
    #[serde(default)]
    pub embedded: Option<AuthorityConfig>,
    /// The last applied set and cursor, so a restart enforces every known
    /// revocation before the authority is reachable again.
    #[serde(default)]
    pub state_file: Option<PathBuf>,
    /// How long without hearing from the authority before the set counts
    /// as stale.
    #[serde(default = "default_max_staleness", with = "duration")]
    pub max_staleness: Duration,
    #[serde(default)]
    pub on_stale: StalePolicy,
    /// With no state file and no authority at start: `fail_closed` refuses
    /// authenticated requests with 503 until the first sync; `open` serves.
    #[serde(default)]
    pub on_no_state: NoStatePolicy,
    /// Long-poll wait asked of the authority.
    #[serde(default = "default_poll_wait", with = "duration")]
    pub poll_wait: Duration,
    /// This gateway's name on the feed (`Gatehouse-Gateway` header): the
    /// authority's gateway table and revocation receipts list it. Default:
    /// the host name and the first listener's port, `host:8443`, stable
    /// across restarts. 1–128 bytes of letters, digits and `.-_:@`.
    #[serde(default)]
    pub name: Option<String>,
}

/// Whether a gateway name is one the authority accepts: 1–128 bytes of
/// ASCII letters, digits and `.-_:@` (it appears in a header, logs, JSON
/// and metrics unchanged).
pub fn valid_gateway_name(n: &str) -> bool {
    (1..=128).contains(&n.len())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-_:@".contains(&b))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityClientConfig {
    /// Base URL, e.g. `https://authority.internal:7400`.
    #[serde(default)]
    pub url: Option<HttpUrl>,
    /// Several replicas of one authority (sharing a Redis store): the feed
    /// moves to the next on failure, keeping its cursor. Give `url` or
    /// `urls`, not both.
    #[serde(default)]
    pub urls: Vec<HttpUrl>,
    /// Bearer token for the feed (the authority's feed or admin token).
    #[serde(default)]
    pub token: Option<SecretSource>,
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Allow `http://` URLs to hosts other than loopback: anyone on the
    /// path can then read the feed token and answer the feed. Logged as an
    /// error at every start.
    #[serde(default)]
    pub allow_plaintext_http: bool,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum StalePolicy {
    /// Keep enforcing the last known set (revocations are never dropped).
    #[default]
    FailStatic,
    /// Refuse authenticated requests with 503 until the feed is back.
    FailClosed,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum NoStatePolicy {
    #[default]
    FailClosed,
    Open,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorityConfig {
    /// Address of the authority's HTTP API (admin, logout, feed).
    pub listen: SocketAddr,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The embedded store file (redb); created if missing. Give `path` or
    /// `store.redis`, not both.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Where the state lives when it is not the embedded file.
    #[serde(default)]
    pub store: Option<StoreConfig>,
    /// Bearer token for the admin API (compared in constant time).
    pub admin_token: SecretSource,
    /// Bearer token for the feed only (the admin token never reads the
    /// feed). Required by `gatehouse authority`; an embedded authority
    /// without one shares a random token with its own gateway only.
    #[serde(default)]
    pub feed_token: Option<SecretSource>,
    /// Sessions a subject may hold; a new one over the limit ends the
    /// oldest with reason `replaced`.
    #[serde(default)]
    pub max_sessions_per_subject: Option<usize>,
    #[serde(default = "default_purge_interval", with = "duration")]
    pub purge_interval: Duration,
    /// Change-log records kept for incremental feeds; a gateway further
    /// behind gets a snapshot.
    #[serde(default = "default_change_retention")]
    pub change_retention: u64,
    /// A back-channel logout token whose `iat` is older than this is
    /// refused, and its `jti` is remembered (replays refused) until its
    /// `exp`, or for this long when it has none.
    #[serde(default = "default_logout_token_max_age", with = "duration")]
    pub logout_token_max_age: Duration,
    /// How the authority judges the gateways that read its feed.
    #[serde(default)]
    pub gateways: GatewayTracking,
    /// The authority listener's limits: the same keys and defaults as the
    /// gateway's top-level `limits` (header read timeout, header size and
    /// count, idle timeout, connections); `max_body_bytes` bounds admin
    /// batch writes (`POST /v1/revocations`). Logout, back-channel logout
    /// and session bodies have a fixed small limit of their own.
    #[serde(default)]
    pub limits: Limits,
}

/// `authority.gateways`: when a gateway that reads the feed counts as
/// stale or gone, and how long a waited revocation may wait.
///
/// A gateway is **live** while it holds a feed long-poll open or was seen
/// within `stale_after`; **stale** after that (a waited revocation still
/// waits for it, and names it when it times out); **gone** once unseen for
/// `gone_after` (no longer waited for; listed until forgotten after
/// `forget_after`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayTracking {
    #[serde(default = "default_stale_after", with = "duration")]
    pub stale_after: Duration,
    #[serde(default = "default_gone_after", with = "duration")]
    pub gone_after: Duration,
    #[serde(default = "default_forget_after", with = "duration")]
    pub forget_after: Duration,
    /// The wait of a waited call when it names none (`wait=applied`).
    #[serde(default = "default_wait_timeout", with = "duration")]
    pub default_wait: Duration,
    /// The longest wait a caller may ask for.
    #[serde(default = "default_max_wait", with = "duration")]
    pub max_wait: Duration,
}

impl Default for GatewayTracking {
    fn default() -> Self {
        GatewayTracking {
            stale_after: default_stale_after(),
            gone_after: default_gone_after(),
            forget_after: default_forget_after(),
            default_wait: default_wait_timeout(),
            max_wait: default_max_wait(),
        }
    }
}

fn default_stale_after() -> Duration {
    Duration::from_secs(15)
}
fn default_gone_after() -> Duration {
    Duration::from_secs(300)
}
fn default_forget_after() -> Duration {
    Duration::from_secs(7 * 86_400)
}
fn default_wait_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_wait() -> Duration {
    Duration::from_secs(60)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// Keep the authority's state in Redis, so that several stateless
    /// authority replicas serve the same revocations and cursors.
    pub redis: RedisStoreConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStoreConfig {
    /// `redis://host:port/db` or `rediss://...` for TLS. No credentials
    /// here: use `username`/`password`.
    pub url: String,
    /// Every key the authority writes starts with this, so several
    /// deployments can share one Redis.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Extra CA (PEM) for `rediss://` to a server with a private CA.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub username: Option<SecretSource>,
    #[serde(default)]
    pub password: Option<SecretSource>,
    /// Acknowledge a write only once this many Redis replicas have it
    /// (`WAIT`); 0 relies on the primary's own AOF fsync.
    #[serde(default)]
    pub wait_replicas: u32,
    #[serde(default = "default_redis_timeout", with = "duration")]
    pub wait_timeout: Duration,
    /// Refuse to start unless Redis runs with `appendonly yes` and
    /// `appendfsync always` (checked with `CONFIG GET`), so an
    /// acknowledged revocation is on the primary's disk. Turn off only
    /// with `wait_replicas` or when CONFIG is not available to you.
    #[serde(default = "default_true")]
    pub require_appendfsync_always: bool,
    /// Connect and command timeout: past it a write answers 503.
    #[serde(default = "default_redis_timeout", with = "duration")]
    pub timeout: Duration,
    /// Allow `redis://` (no TLS) to a host other than loopback. Logged as
    /// an error at every start.
    #[serde(default)]
    pub allow_plaintext: bool,
}

fn default_key_prefix() -> String {
    "gatehouse:".into()
}

fn default_redis_timeout() -> Duration {
    Duration::from_secs(2)
}

/// The host of a `redis://[user@]host[:port][/db]` URL.
fn redis_host(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split('/').next()?;
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    if hostport.starts_with('[') {
        return hostport.split_once(']').map(|(h, _)| h);
    }
    Some(hostport.split(':').next().unwrap_or(hostport))
}

/// The gateway's `revocation` section (one source; the transport rule for
/// authority URLs; staleness above the long-poll) and the `authority`
/// section `gatehouse authority` runs.
pub(super) fn check(c: &mut Check<'_>) {
    let cfg = &c.loaded.config;
    if c.mode == Mode::Authority {
        match &cfg.authority {
            None => c.push(
                0,
                "`gatehouse authority` needs an `authority` section".into(),
            ),
            Some(a) => {
                let line = a.referenced.line();
                check_authority(c, &a.value, line);
                // A gateway's credential must not be able to write
                // revocations: the feed has a token of its own.
                if a.value.feed_token.is_none() {
                    c.push(
                        line,
                        "authority.feed_token is required: gateways read the feed with a credential of their own, never the admin token (set feed_token: { file: ... } and give it to the gateways as revocation.authority.token)".into(),
                    );
                }
            }
        }
    }
    let (Mode::Gateway, Some(r)) = (c.mode, &cfg.revocation) else {
        return;
    };
    let line = r.referenced.line();
    match (&r.value.authority, &r.value.embedded) {
        (Some(a), None) => {
            if a.url.is_some() != a.urls.is_empty() {
                c.push(
                    line,
                    "revocation.authority takes exactly one of url or urls".into(),
                );
            }
            if let Some(s) = &a.token {
                c.secret(line, s, "");
            }
            for u in a.url.iter().chain(a.urls.iter()) {
                let text = u.0.to_string();
                if let Some(p) = plaintext_problem(
                    "revocation.authority.url",
                    &text,
                    "http",
                    u.0.host(),
                    a.allow_plaintext_http,
                    "revocation.authority.allow_plaintext_http",
                ) {
                    c.push(line, p);
                }
            }
        }
        (None, Some(e)) => check_authority(c, e, line),
        _ => c.push(
            line,
            "revocation takes exactly one of authority or embedded".into(),
        ),
    }
    if let Some(n) = &r.value.name {
        if !valid_gateway_name(n) {
            c.push(
                line,
                format!("revocation.name `{n}`: 1 to 128 bytes of letters, digits and .-_:@"),
            );
        }
    }
    if r.value.max_staleness < r.value.poll_wait + Duration::from_secs(1) {
        c.push(
            line,
            "max_staleness must exceed poll_wait by at least 1s".into(),
        );
    }
}

/// An authority section, standalone or embedded: its credentials (two
/// different ones), TLS files, exactly one store (Redis under the transport
/// rule, no credentials in its URL), the session limit, the issuers.
fn check_authority(c: &mut Check<'_>, a: &AuthorityConfig, line: u64) {
    let loaded = c.loaded;
    for s in std::iter::once(&a.admin_token).chain(a.feed_token.iter()) {
        c.secret(line, s, "");
    }
    // A credential guessed is a credential given: at least 16 bytes each.
    for (s, what) in std::iter::once((&a.admin_token, "admin_token"))
        .chain(a.feed_token.iter().map(|f| (f, "feed_token")))
    {
        if s.read(loaded).is_ok_and(|b| b.len() < 16) {
            c.push(line, format!("authority.{what} must be at least 16 bytes"));
        }
    }
    if let (Ok(admin), Some(Ok(feed))) = (
        a.admin_token.read(loaded),
        a.feed_token.as_ref().map(|f| f.read(loaded)),
    ) {
        if bool::from(subtle::ConstantTimeEq::ct_eq(
            admin.as_slice(),
            feed.as_slice(),
        )) {
            c.push(
                line,
                "authority.feed_token must differ from admin_token: a gateway's credential must not write revocations".into(),
            );
        }
    }
    if let Some(tls) = &a.tls {
        for cert in &tls.certificates {
            let cline = cert.referenced.line();
            c.file_must_exist(cline, &cert.value.cert, "certificate");
            c.file_must_exist(cline, &cert.value.key, "key");
        }
    }
    match (&a.path, &a.store) {
        (Some(_), None) => {}
        (None, Some(st)) => {
            let r = &st.redis;
            if !(r.url.starts_with("redis://") || r.url.starts_with("rediss://")) {
                c.push(
                    line,
                    format!(
                        "store.redis.url `{}`: expected redis:// or rediss://",
                        r.url
                    ),
                );
            } else if r.url.contains('@') {
                c.push(line, "store.redis.url must not carry credentials; use username/password (env or file)".into());
            } else if let Some(p) = plaintext_problem(
                "store.redis.url",
                &r.url,
                "redis",
                redis_host(&r.url),
                r.allow_plaintext,
                "store.redis.allow_plaintext",
            ) {
                c.push(line, p);
            }
            for s in r.username.iter().chain(r.password.iter()) {
                c.secret(line, s, "");
            }
            if let Some(ca) = &r.ca_file {
                c.file_must_exist(line, ca, "CA");
            }
        }
        _ => c.push(
            line,
            "the authority takes exactly one of path (embedded store) or store.redis".into(),
        ),
    }
    let g = &a.gateways;
    if g.stale_after.is_zero() || g.gone_after <= g.stale_after || g.forget_after < g.gone_after {
        c.push(
            line,
            "authority.gateways: 0 < stale_after < gone_after <= forget_after".into(),
        );
    }
    if g.default_wait.is_zero() || g.default_wait > g.max_wait {
        c.push(
            line,
            "authority.gateways: 0 < default_wait <= max_wait".into(),
        );
    }
    if a.max_sessions_per_subject == Some(0) {
        c.push(line, "max_sessions_per_subject must be at least 1".into());
    }
    if c.cfg().issuers.is_empty() {
        c.push(
            line,
            "the authority needs the issuers whose tokens it revokes".into(),
        );
    }
}
