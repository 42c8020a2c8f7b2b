//! The YAML configuration. These structs *are* the reference: every key the
//! README documents is a field here, unknown keys are refused, and every
//! error names the file, the line and the reason.
//!
//! Loading happens in three steps so a bad file never half-applies:
//! `${VAR}` interpolation on the raw text (line numbers are preserved because
//! a value may not contain a newline), typed deserialisation (syntax, types,
//! durations, algorithm names, URLs: errors carry the parser's location), and
//! cross-field validation (references between sections, files that must
//! exist: errors carry the location of the item recorded with `Spanned`).

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

/// Default size limit of a bearer token, checked before any decoding.
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 8 * 1024;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Required for `gatehouse run`; unused by `gatehouse authority`.
    #[serde(default)]
    pub listeners: Vec<Spanned<ListenerConfig>>,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub auth: AuthConfig,
    #[serde(default)]
    pub issuers: Vec<Spanned<IssuerConfig>>,
    #[serde(default)]
    pub routes: Vec<Spanned<RouteConfig>>,
    /// Where the gateway learns about revoked tokens; absent means tokens
    /// are checked for signature and claims only.
    #[serde(default)]
    pub revocation: Option<Spanned<RevocationConfig>>,
    /// Health, readiness and metrics, on their own address.
    #[serde(default)]
    pub admin: Option<Spanned<AdminConfig>>,
    /// The revocation authority served by `gatehouse authority`.
    #[serde(default)]
    pub authority: Option<Spanned<AuthorityConfig>>,
    /// Client addresses whose `X-Forwarded-For`/`Forwarded` are believed.
    /// Everyone else's are replaced: a client must not choose its own IP.
    #[serde(default)]
    pub trusted_proxies: Vec<IpNet>,
    /// More header names removed from every request of a client that is
    /// not a trusted proxy, on top of the forwarding family the gateway
    /// always removes (see README "What the backend receives"). Compared
    /// ignoring case and with `-` and `_` alike; a name ending in `*` is a
    /// prefix (`X-Internal-*`).
    #[serde(default)]
    pub strip_untrusted_headers: Vec<String>,
    #[serde(default)]
    pub logging: LoggingConfig,
    #[serde(default = "default_shutdown_grace", with = "duration")]
    pub shutdown_grace: Duration,
    /// Request-serving threads, each with its own runtime and listening
    /// socket; 0 means one per CPU.
    #[serde(default)]
    pub workers: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    #[serde(default)]
    pub name: Option<String>,
    pub address: SocketAddr,
    /// Decide and answer instead of forwarding: this listener is the auth
    /// server an existing ingress asks on every request (README "Beside an
    /// existing ingress").
    #[serde(default)]
    pub auth_server: Option<AuthServerConfig>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The first certificate is served when the client sends no (or an
    /// unknown) SNI name; the others are chosen by `server_names`.
    pub certificates: Vec<Spanned<CertificateConfig>>,
    #[serde(default)]
    pub min_version: TlsVersion,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    #[serde(default)]
    pub server_names: Vec<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
pub enum TlsVersion {
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Time allowed to receive a request's headers (slowloris guard).
    #[serde(with = "duration")]
    pub header_read_timeout: Duration,
    /// Upper bound on the whole request head (HTTP/1 buffer, HTTP/2 header list).
    pub max_header_bytes: usize,
    /// Upper bound on the number of request headers (HTTP/1).
    pub max_headers: usize,
    /// A connection with no request in flight and no bytes moving for this
    /// long is closed.
    #[serde(with = "duration")]
    pub idle_timeout: Duration,
    /// Beyond this many open client connections, new ones wait in the
    /// kernel backlog instead of being accepted.
    pub max_connections: usize,
    /// Default for routes that do not set `max_body_bytes`.
    pub max_body_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_header_bytes: 32 * 1024,
            max_headers: 100,
            idle_timeout: Duration::from_secs(60),
            max_connections: 10_000,
            max_body_bytes: 10 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `realm` of the `WWW-Authenticate` challenge.
    pub realm: String,
    /// Tokens longer than this are refused before any decoding.
    pub max_token_bytes: usize,
    /// Verified tokens remembered (by SHA-256 of the whole token) so a
    /// repeated token skips signature verification; 0 disables. Revocation
    /// is still checked on every request.
    pub token_cache_size: u64,
    /// Longest a verified token is remembered (never past its `exp`).
    #[serde(with = "duration")]
    pub token_cache_ttl: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            realm: "gatehouse".to_owned(),
            max_token_bytes: DEFAULT_MAX_TOKEN_BYTES,
            token_cache_size: 100_000,
            token_cache_ttl: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Short name used by routes and logs; defaults to `issuer`.
    #[serde(default)]
    pub name: Option<String>,
    /// Exact `iss` value the tokens carry.
    pub issuer: String,
    pub audiences: Vec<String>,
    pub algorithms: Vec<Algorithm>,
    #[serde(default)]
    pub jwks: Option<JwksConfig>,
    /// Shared secret for HS256/384/512. Never read from the JWKS: an HMAC key
    /// taken from a public key set is exactly the RS/HS confusion attack.
    #[serde(default)]
    pub hmac_secret: Option<SecretSource>,
    #[serde(default = "default_leeway", with = "duration")]
    pub leeway: Duration,
    /// Answer for a token whose `kid` is unknown while the key source is
    /// failing: `reject` (401) or `unavailable` (503, clients retry).
    #[serde(default)]
    pub unknown_kid_when_keys_unavailable: UnknownKidPolicy,
    /// The longest lifetime this issuer gives a token. A revocation can be
    /// forgotten this long after the newest token it matches was issued.
    #[serde(default = "default_max_token_lifetime", with = "duration")]
    pub max_token_lifetime: Duration,
    /// The client ids back-channel logout tokens are addressed to (their
    /// `aud`, OIDC Back-Channel Logout 1.0 §2.4), checked by the authority
    /// only; `audiences` stays the resource's own, so the gateway never
    /// accepts a logout or ID token as a bearer token. Empty: logout
    /// tokens must carry one of `audiences` (the behaviour before this key).
    #[serde(default)]
    pub logout_audiences: Vec<String>,
    /// What a back-channel logout naming a session ends. `subject` (the
    /// default, safe whether or not access tokens carry `sid`): the session
    /// and every token of the subject issued at or before the logout
    /// token's `iat`. `session`: only the `sid` (a logout token without
    /// `sid` still ends the subject's tokens up to its `iat`); choose it
    /// only when every access token of this issuer carries `sid`.
    #[serde(default)]
    pub backchannel_logout: BackchannelScope,
    /// Accept as access tokens only JWTs typed `at+jwt` (RFC 9068 §2.1,
    /// §4), so this issuer's ID tokens and other untyped JWTs are refused.
    /// Off by default: then `typ` may also be absent or `JWT`.
    #[serde(default)]
    pub require_at_jwt: bool,
}

/// See [`IssuerConfig::backchannel_logout`].
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BackchannelScope {
    Session,
    #[default]
    Subject,
}

impl IssuerConfig {
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.issuer)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Keep it on loopback or a management network: it tells anyone who
    /// asks how the gateway is doing.
    #[serde(default = "default_admin_listen")]
    pub listen: SocketAddr,
}

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
    /// The authority listener's limits: the same keys and defaults as the
    /// gateway's top-level `limits` (header read timeout, header size and
    /// count, idle timeout, connections); `max_body_bytes` bounds admin
    /// batch writes (`POST /v1/revocations`). Logout, back-channel logout
    /// and session bodies have a fixed small limit of their own.
    #[serde(default)]
    pub limits: Limits,
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

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UnknownKidPolicy {
    #[default]
    Reject,
    Unavailable,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub url: Option<HttpUrl>,
    /// Scheduled re-fetch of a URL key set.
    #[serde(default = "default_jwks_refresh", with = "duration")]
    pub refresh_interval: Duration,
    /// Minimum time between two fetches, whatever triggers them (an unknown
    /// `kid` must not let clients make us hammer the identity provider).
    #[serde(default = "default_jwks_min_refresh", with = "duration")]
    pub min_refresh_interval: Duration,
    #[serde(default = "default_jwks_timeout", with = "duration")]
    pub timeout: Duration,
    /// Extra PEM CA bundle trusted for an `https` JWKS URL (besides the
    /// built-in web PKI roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Allow an `http://` URL to a host other than loopback: anyone on the
    /// path can then inject keys. Logged as an error at every start.
    #[serde(default)]
    pub allow_plaintext_http: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretSource {
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub env: Option<String>,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

impl Algorithm {
    pub fn is_hmac(self) -> bool {
        matches!(self, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
    }
}

/// `listeners[].auth_server`: which ingress asks, so which headers carry
/// the original request. They are believed only from `trusted_proxies`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthServerConfig {
    pub ingress: Ingress,
    /// Envoy only: the `path_prefix` of the ext_authz HTTP service, taken
    /// off the front of the path Envoy sends (which is this prefix plus
    /// the original path).
    #[serde(default)]
    pub path_prefix: String,
}

/// How an ingress describes the original request to its auth server.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Ingress {
    /// `auth_request`: `X-Original-Method`, `X-Original-URI` and `Host`, as
    /// set by the snippet in `docs/nginx.md`.
    Nginx,
    /// `forward_auth`: `X-Forwarded-Method`, `-Uri`, `-Host`, `-Proto`.
    Caddy,
    /// `forwardAuth`: the same headers as Caddy.
    Traefik,
    /// `ext_authz` HTTP service: the original method, `path_prefix` plus
    /// the original path, the original `Host`.
    Envoy,
}

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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    pub format: LogFormat,
    /// `tracing` filter directive, overridden by `RUST_LOG`.
    pub level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            format: LogFormat::Text,
            level: "info".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// An `http://host:port` backend. Only the authority is kept: the path of
/// the client request is forwarded as it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackendUrl {
    pub authority: http::uri::Authority,
}

impl fmt::Display for BackendUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "http://{}", self.authority)
    }
}

impl<'de> Deserialize<'de> for BackendUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let uri: http::Uri = s
            .parse()
            .map_err(|e| serde::de::Error::custom(format!("backend `{s}`: {e}")))?;
        if uri.scheme_str() != Some("http") {
            return Err(serde::de::Error::custom(format!(
                "backend `{s}`: only http:// backends are supported"
            )));
        }
        if uri.path() != "/" && !uri.path().is_empty() {
            return Err(serde::de::Error::custom(format!(
                "backend `{s}`: a backend is host:port only, without a path"
            )));
        }
        let authority = uri
            .authority()
            .filter(|a| a.port_u16().is_some())
            .cloned()
            .ok_or_else(|| {
                serde::de::Error::custom(format!("backend `{s}`: expected http://host:port"))
            })?;
        Ok(BackendUrl { authority })
    }
}

/// An `http://` or `https://` URL (JWKS endpoints).
#[derive(Debug, Clone)]
pub struct HttpUrl(pub http::Uri);

impl<'de> Deserialize<'de> for HttpUrl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        let uri: http::Uri = s
            .parse()
            .map_err(|e| serde::de::Error::custom(format!("url `{s}`: {e}")))?;
        match uri.scheme_str() {
            Some("http") | Some("https") if uri.authority().is_some() => Ok(HttpUrl(uri)),
            _ => Err(serde::de::Error::custom(format!(
                "url `{s}`: expected http://... or https://..."
            ))),
        }
    }
}

/// A header name, validated at load time.
#[derive(Debug, Clone)]
pub struct HeaderName(pub http::HeaderName);

impl<'de> Deserialize<'de> for HeaderName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        http::HeaderName::from_bytes(s.as_bytes())
            .map(HeaderName)
            .map_err(|_| serde::de::Error::custom(format!("`{s}` is not a valid header name")))
    }
}

/// A CIDR (`10.0.0.0/8`) or a single address.
#[derive(Debug, Clone, Copy)]
pub struct IpNet(pub ipnet::IpNet);

impl<'de> Deserialize<'de> for IpNet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if let Ok(net) = s.parse::<ipnet::IpNet>() {
            return Ok(IpNet(net));
        }
        s.parse::<std::net::IpAddr>()
            .map(|ip| IpNet(ipnet::IpNet::from(ip)))
            .map_err(|_| serde::de::Error::custom(format!("`{s}` is not an IP address or CIDR")))
    }
}

/// Durations written as `30s`, `5m`, `250ms`, `1h 30m`.
pub mod duration {
    use super::*;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!("`{s}` is not a duration like 30s or 5m: {e}"))
        })
    }
}

fn default_true() -> bool {
    true
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(30)
}
fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
fn default_jwks_refresh() -> Duration {
    Duration::from_secs(300)
}
fn default_jwks_min_refresh() -> Duration {
    Duration::from_secs(10)
}
fn default_jwks_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_admin_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9901))
}
fn default_max_token_lifetime() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_max_staleness() -> Duration {
    Duration::from_secs(60)
}
fn default_poll_wait() -> Duration {
    Duration::from_secs(25)
}
fn default_purge_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_logout_token_max_age() -> Duration {
    Duration::from_secs(600)
}
fn default_change_retention() -> u64 {
    100_000
}
fn default_prefix() -> String {
    "/".to_owned()
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_backend_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_backend_idle_timeout() -> Duration {
    Duration::from_secs(60)
}

fn default_cooldown() -> Duration {
    Duration::from_secs(10)
}
fn default_roles_claim() -> String {
    "roles".to_owned()
}
fn default_upgrades() -> Vec<String> {
    vec!["websocket".to_owned()]
}

fn default_identity_headers() -> Vec<IdentityHeader> {
    vec![IdentityHeader {
        claim: "sub".to_owned(),
        header: HeaderName(http::HeaderName::from_static("x-auth-subject")),
    }]
}

/// One problem in a config file, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    pub file: PathBuf,
    /// 1-based; 0 when the problem is about the file as a whole.
    pub line: u64,
    pub reason: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line > 0 {
            write!(f, "{}:{}: {}", self.file.display(), self.line, self.reason)
        } else {
            write!(f, "{}: {}", self.file.display(), self.reason)
        }
    }
}

/// Every problem found in a config file, so `gatehouse check` can list them
/// all at once instead of one per run.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub issues: Vec<ConfigIssue>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.issues.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{issue}")?;
        }
        Ok(())
    }
}

/// A config that passed every check; paths inside it are resolved against
/// the config file's directory.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    pub path: PathBuf,
    pub config: Config,
}

impl LoadedConfig {
    /// A relative path in the config means relative to the config file, so
    /// the same file works whatever directory the service starts in.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }
}

/// What the config is loaded for: the gateway needs listeners and routes,
/// the authority needs its `authority` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Gateway,
    Authority,
}

pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
    load_for(path, Mode::Gateway)
}

pub fn load_for(path: &Path, mode: Mode) -> Result<LoadedConfig, ConfigError> {
    let file_issue = |line: u64, reason: String| ConfigError {
        issues: vec![ConfigIssue {
            file: path.to_owned(),
            line,
            reason,
        }],
    };
    let raw =
        std::fs::read_to_string(path).map_err(|e| file_issue(0, format!("cannot read: {e}")))?;
    let text = interpolate_env(&raw, |name| std::env::var(name).ok())
        .map_err(|(line, reason)| file_issue(line, reason))?;
    let config = parse(&text).map_err(|(line, reason)| file_issue(line, reason))?;
    let loaded = LoadedConfig {
        path: path.to_owned(),
        config,
    };
    let issues = validate(&loaded, mode);
    if issues.is_empty() {
        Ok(loaded)
    } else {
        Err(ConfigError { issues })
    }
}

/// Parses YAML text into a [`Config`]; the error carries the line.
pub fn parse(text: &str) -> Result<Config, (u64, String)> {
    serde_saphyr::from_str::<Config>(text).map_err(|e| {
        let line = e.location().map_or(0, |l| l.line());
        // The crate's message may repeat the location; keep the first line,
        // which is the reason.
        let msg = e.to_string();
        let first = msg.lines().next().unwrap_or("invalid YAML").trim();
        let first = first.strip_prefix("error: ").unwrap_or(first);
        // Drop a leading "line N column M: ": the line is reported apart.
        let reason = match first.split_once(": ") {
            Some((loc, rest)) if loc.starts_with("line ") && loc.contains(" column ") => rest,
            _ => first,
        };
        (line, reason.to_owned())
    })
}

/// Replaces `${NAME}` with the environment variable's value. A missing
/// variable is an error (a secret silently becoming empty is worse), and so
/// is a value with a newline (it could inject YAML). Comment lines are left
/// alone so that examples in comments need no variables set. `$${` escapes.
pub fn interpolate_env(
    text: &str,
    lookup: impl Fn(&str) -> Option<String>,
) -> Result<String, (u64, String)> {
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let lineno = i as u64 + 1;
        if line.trim_start().starts_with('#') || !line.contains("${") {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(pos) = rest.find("${") {
            if pos > 0 && rest.as_bytes()[pos - 1] == b'$' {
                out.push_str(&rest[..pos - 1]);
                out.push_str("${");
                rest = &rest[pos + 2..];
                continue;
            }
            out.push_str(&rest[..pos]);
            let after = &rest[pos + 2..];
            let end = after
                .find('}')
                .ok_or_else(|| (lineno, "unterminated ${ in line".to_owned()))?;
            let name = &after[..end];
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err((
                    lineno,
                    format!("`${{{name}}}` is not a valid variable name"),
                ));
            }
            let value = lookup(name)
                .ok_or_else(|| (lineno, format!("environment variable {name} is not set")))?;
            if value.contains('\n') || value.contains('\r') {
                return Err((
                    lineno,
                    format!("environment variable {name} contains a newline"),
                ));
            }
            out.push_str(&value);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

/// Whether `host` (as in a URL: a name, an IPv4 address or a bracketed
/// IPv6 address) is this machine.
fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The transport rule: plain text only to loopback, or with the key's
/// explicit opt-in (logged loudly). `None` when the URL may be used.
fn plaintext_problem(
    key: &str,
    url: &str,
    scheme_plain: &str,
    host: Option<&str>,
    opt_in: bool,
    opt_in_key: &str,
) -> Option<String> {
    let plain = url
        .get(..scheme_plain.len() + 3)
        .is_some_and(|p| p.eq_ignore_ascii_case(&format!("{scheme_plain}://")));
    if !plain || host.is_some_and(is_loopback_host) {
        return None;
    }
    if opt_in {
        tracing::error!(key, url, "plain-text {scheme_plain}:// to a host other than loopback ({opt_in_key}: true): anyone on the path can read and forge this traffic");
        return None;
    }
    Some(format!(
        "{key} `{url}`: {scheme_plain}:// is allowed only to loopback; use TLS, or set {opt_in_key}: true to accept the risk"
    ))
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

fn validate(loaded: &LoadedConfig, mode: Mode) -> Vec<ConfigIssue> {
    let cfg = &loaded.config;
    let mut issues = Vec::new();
    let mut push = |line: u64, reason: String| {
        issues.push(ConfigIssue {
            file: loaded.path.clone(),
            line,
            reason,
        })
    };
    let file_must_exist = |p: &Path, what: &str| -> Option<String> {
        let full = loaded.resolve(p);
        match std::fs::metadata(&full) {
            Ok(m) if m.is_file() => None,
            Ok(_) => Some(format!("{what} {} is not a file", full.display())),
            Err(e) => Some(format!("{what} {}: {e}", full.display())),
        }
    };

    if mode == Mode::Gateway && cfg.listeners.is_empty() {
        push(0, "at least one listener is required".into());
    }
    if mode == Mode::Authority && cfg.authority.is_none() {
        push(
            0,
            "`gatehouse authority` needs an `authority` section".into(),
        );
    }
    let check_authority = |a: &AuthorityConfig, line: u64, push: &mut dyn FnMut(u64, String)| {
        for s in std::iter::once(&a.admin_token).chain(a.feed_token.iter()) {
            if let Some(r) = secret_problem(s, loaded) {
                push(line, r);
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
                push(
                    line,
                    "authority.feed_token must differ from admin_token: a gateway's credential must not write revocations".into(),
                );
            }
        }
        if let Some(tls) = &a.tls {
            for c in &tls.certificates {
                for (p, what) in [(&c.value.cert, "certificate"), (&c.value.key, "key")] {
                    if let Some(r) = file_must_exist(p, what) {
                        push(c.referenced.line(), r);
                    }
                }
            }
        }
        match (&a.path, &a.store) {
            (Some(_), None) => {}
            (None, Some(st)) => {
                let r = &st.redis;
                if !(r.url.starts_with("redis://") || r.url.starts_with("rediss://")) {
                    push(
                        line,
                        format!(
                            "store.redis.url `{}`: expected redis:// or rediss://",
                            r.url
                        ),
                    );
                } else if r.url.contains('@') {
                    push(line, "store.redis.url must not carry credentials; use username/password (env or file)".into());
                } else if let Some(p) = plaintext_problem(
                    "store.redis.url",
                    &r.url,
                    "redis",
                    redis_host(&r.url),
                    r.allow_plaintext,
                    "store.redis.allow_plaintext",
                ) {
                    push(line, p);
                }
                for s in r.username.iter().chain(r.password.iter()) {
                    if let Some(p) = secret_problem(s, loaded) {
                        push(line, p);
                    }
                }
                if let Some(p) = r.ca_file.as_ref().and_then(|p| file_must_exist(p, "CA")) {
                    push(line, p);
                }
            }
            _ => push(
                line,
                "the authority takes exactly one of path (embedded store) or store.redis".into(),
            ),
        }
        if a.max_sessions_per_subject == Some(0) {
            push(line, "max_sessions_per_subject must be at least 1".into());
        }
        if cfg.issuers.is_empty() {
            push(
                line,
                "the authority needs the issuers whose tokens it revokes".into(),
            );
        }
    };
    if mode == Mode::Authority {
        if let Some(a) = &cfg.authority {
            check_authority(&a.value, a.referenced.line(), &mut push);
            // A gateway's credential must not be able to write
            // revocations: the feed has a token of its own.
            if a.value.feed_token.is_none() {
                push(
                    a.referenced.line(),
                    "authority.feed_token is required: gateways read the feed with a credential of their own, never the admin token (set feed_token: { file: ... } and give it to the gateways as revocation.authority.token)".into(),
                );
            }
        }
    }
    if let (Mode::Gateway, Some(r)) = (mode, &cfg.revocation) {
        let line = r.referenced.line();
        match (&r.value.authority, &r.value.embedded) {
            (Some(a), None) => {
                if a.url.is_some() != a.urls.is_empty() {
                    push(
                        line,
                        "revocation.authority takes exactly one of url or urls".into(),
                    );
                }
                if let Some(s) = &a.token {
                    if let Some(p) = secret_problem(s, loaded) {
                        push(line, p);
                    }
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
                        push(line, p);
                    }
                }
            }
            (None, Some(e)) => check_authority(e, line, &mut push),
            _ => push(
                line,
                "revocation takes exactly one of authority or embedded".into(),
            ),
        }
        if r.value.max_staleness < r.value.poll_wait + Duration::from_secs(1) {
            push(
                line,
                "max_staleness must exceed poll_wait by at least 1s".into(),
            );
        }
    }
    let mut addrs = HashSet::new();
    for l in &cfg.listeners {
        let line = l.referenced.line();
        if !addrs.insert(l.value.address) && l.value.address.port() != 0 {
            push(
                line,
                format!("listener address {} is used twice", l.value.address),
            );
        }
        if let Some(tls) = &l.value.tls {
            if tls.certificates.is_empty() {
                push(line, "tls needs at least one certificate".into());
            }
            for c in &tls.certificates {
                let cline = c.referenced.line();
                for (p, what) in [(&c.value.cert, "certificate"), (&c.value.key, "key")] {
                    if let Some(r) = file_must_exist(p, what) {
                        push(cline, r);
                    }
                }
            }
        }
    }
    if cfg.auth.realm.is_empty()
        || !cfg
            .auth
            .realm
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ')
    {
        push(
            0,
            "auth.realm must be printable ASCII without quotes or backslashes".into(),
        );
    }
    if cfg.auth.max_token_bytes < 64 {
        push(0, "auth.max_token_bytes must be at least 64".into());
    }
    if cfg.limits.max_header_bytes < 8192 {
        push(0, "limits.max_header_bytes must be at least 8192".into());
    }
    if cfg.workers > 16 {
        push(0, "workers must be at most 16".into());
    }
    if cfg.limits.max_connections == 0 {
        push(0, "limits.max_connections must be at least 1".into());
    }

    let mut names = HashSet::new();
    let mut iss_values = HashSet::new();
    for i in &cfg.issuers {
        let line = i.referenced.line();
        let ic = &i.value;
        if !names.insert(ic.display_name().to_owned()) {
            push(
                line,
                format!("issuer name `{}` is used twice", ic.display_name()),
            );
        }
        if !iss_values.insert(ic.issuer.clone()) {
            push(line, format!("issuer `{}` is configured twice", ic.issuer));
        }
        if ic.audiences.is_empty() {
            push(
                line,
                "an issuer needs at least one audience (aud is always checked)".into(),
            );
        }
        if ic.algorithms.is_empty() {
            push(line, "an issuer needs at least one algorithm".into());
        }
        let wants_hmac = ic.algorithms.iter().any(|a| a.is_hmac());
        let wants_keys = ic.algorithms.iter().any(|a| !a.is_hmac());
        if wants_hmac && ic.hmac_secret.is_none() {
            push(line, "HS* algorithms need hmac_secret (file or env)".into());
        }
        if !wants_hmac && ic.hmac_secret.is_some() {
            push(
                line,
                "hmac_secret is set but no HS* algorithm is allowed".into(),
            );
        }
        if let Some(s) = &ic.hmac_secret {
            if let Some(r) = secret_problem(s, loaded) {
                push(line, format!("hmac_secret: {r}"));
            }
        }
        match (&ic.jwks, wants_keys) {
            (None, true) => push(line, "asymmetric algorithms need jwks (file or url)".into()),
            (Some(j), _) => match (&j.file, &j.url) {
                (Some(f), None) => {
                    if let Some(r) = file_must_exist(f, "jwks file") {
                        push(line, r);
                    }
                }
                (None, Some(u)) => {
                    let text = u.0.to_string();
                    if let Some(p) = plaintext_problem(
                        "jwks.url",
                        &text,
                        "http",
                        u.0.host(),
                        j.allow_plaintext_http,
                        "jwks.allow_plaintext_http",
                    ) {
                        push(line, p);
                    }
                    if let Some(ca) = &j.ca_file {
                        if let Some(r) = file_must_exist(ca, "jwks ca_file") {
                            push(line, r);
                        }
                    }
                }
                _ => push(line, "jwks takes exactly one of file or url".into()),
            },
            (None, false) => {}
        }
    }

    for h in &cfg.strip_untrusted_headers {
        let name = h.strip_suffix('*').unwrap_or(h);
        if name.is_empty() || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            push(
                0,
                format!(
                    "strip_untrusted_headers: `{h}` is not a header name (or prefix ending in *)"
                ),
            );
        }
    }
    for l in &cfg.listeners {
        if let Some(a) = &l.value.auth_server {
            if cfg.trusted_proxies.is_empty() {
                push(
                    l.referenced.line(),
                    "auth_server needs trusted_proxies: the ingress addresses whose description of the original request is believed".into(),
                );
            }
            if !a.path_prefix.is_empty() && a.ingress != Ingress::Envoy {
                push(
                    l.referenced.line(),
                    "auth_server.path_prefix is for ingress: envoy only".into(),
                );
            }
            if !a.path_prefix.is_empty() && !a.path_prefix.starts_with('/') {
                push(
                    l.referenced.line(),
                    "auth_server.path_prefix must start with /".into(),
                );
            }
        }
    }
    if mode == Mode::Gateway && cfg.routes.is_empty() {
        push(0, "at least one route is required".into());
    }
    let mut route_keys = HashSet::new();
    for r in &cfg.routes {
        let line = r.referenced.line();
        let rc = &r.value;
        if !rc.path_prefix.starts_with('/') {
            push(
                line,
                format!("path_prefix `{}` must start with /", rc.path_prefix),
            );
        }
        if rc.path_prefix.starts_with('/') {
            if let Some(why) = not_canonical(&rc.path_prefix) {
                push(line, format!("path_prefix `{}` {why}", rc.path_prefix));
            }
        }
        for p in &rc.public_paths {
            if !p.starts_with('/') {
                push(line, format!("public path `{p}` must start with /"));
            } else if let Some(why) = not_canonical(p) {
                push(line, format!("public path `{p}` {why}"));
            }
        }
        for u in &rc.upgrades {
            if u.eq_ignore_ascii_case("h2c") {
                push(
                    line,
                    "upgrades: h2c is never forwarded (RFC 9113 §3.1); serve HTTP/2 over TLS"
                        .into(),
                );
            } else if u.is_empty()
                || !u
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'/' && b != b',')
            {
                push(line, format!("upgrades: `{u}` is not a protocol name"));
            }
        }
        for h in &rc.hosts {
            let bare = h.strip_prefix("*.").unwrap_or(h);
            if bare.is_empty() || bare.contains('*') || bare.contains(':') {
                push(
                    line,
                    format!("host `{h}` must be a name or *.suffix, without port"),
                );
            }
        }
        let key = (rc.hosts.clone(), rc.path_prefix.clone());
        if !route_keys.insert(key) {
            push(
                line,
                format!(
                    "another route has the same hosts and path_prefix `{}`",
                    rc.path_prefix
                ),
            );
        }
        if rc.backends.is_empty() {
            push(line, "a route needs at least one backend".into());
        }
        if rc.auth != AuthMode::Off && cfg.issuers.is_empty() {
            push(
                line,
                format!(
                    "route `{}` checks tokens but no issuer is configured",
                    rc.display_name()
                ),
            );
        }
        for name in &rc.issuers {
            if !names.contains(name) {
                push(line, format!("route refers to unknown issuer `{name}`"));
            }
        }
        if rc.auth == AuthMode::Off && rc.require.is_some() {
            push(
                line,
                "`require` has no effect on a route with auth: off".into(),
            );
        }
        for (i, ih) in rc.identity_headers.iter().enumerate() {
            if ih.claim.is_empty() {
                push(line, "identity header with an empty claim".into());
            }
            if rc.identity_headers[..i]
                .iter()
                .any(|o| crate::header_names::same_field(o.header.0.as_str(), ih.header.0.as_str()))
            {
                push(
                    line,
                    format!(
                        "identity header `{}` is named twice (`-` and `_` count as the same)",
                        ih.header.0
                    ),
                );
            }
            if crate::header_names::is_forwarding_header(ih.header.0.as_str())
                || crate::header_names::is_hop_by_hop_name(ih.header.0.as_str())
                || crate::header_names::is_message_header(ih.header.0.as_str())
            {
                push(
                    line,
                    format!(
                        "identity header `{}` clashes with a forwarding, hop-by-hop, framing or credential header",
                        ih.header.0
                    ),
                );
            }
        }
    }
    issues
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

/// Why a secret cannot be read, if it cannot.
fn secret_problem(s: &SecretSource, loaded: &LoadedConfig) -> Option<String> {
    match (&s.file, &s.env) {
        (Some(f), None) => {
            let full = loaded.resolve(f);
            std::fs::metadata(&full)
                .err()
                .map(|e| format!("secret file {}: {e}", full.display()))
        }
        (None, Some(var)) => std::env::var_os(var)
            .is_none()
            .then(|| format!("secret env {var} is not set")),
        _ => Some("a secret takes exactly one of file or env".into()),
    }
}

impl SecretSource {
    /// Reads the secret; trailing whitespace (a file's newline) is dropped.
    pub fn read(&self, loaded: &LoadedConfig) -> anyhow::Result<Vec<u8>> {
        let mut bytes = match (&self.file, &self.env) {
            (Some(f), None) => {
                let p = loaded.resolve(f);
                std::fs::read(&p)
                    .map_err(|e| anyhow::anyhow!("secret file {}: {e}", p.display()))?
            }
            (None, Some(var)) => std::env::var(var)
                .map_err(|_| anyhow::anyhow!("secret env {var} is not set"))?
                .into_bytes(),
            _ => anyhow::bail!("a secret takes exactly one of file or env"),
        };
        while bytes.last().is_some_and(|c| c.is_ascii_whitespace()) {
            bytes.pop();
        }
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "SECRET" => Some("s3cr3t".into()),
            "EVIL" => Some("a\nroutes: []".into()),
            _ => None,
        }
    }

    #[test]
    fn env_interpolation() {
        assert_eq!(
            interpolate_env("a: ${SECRET}\n", env).unwrap(),
            "a: s3cr3t\n"
        );
        assert_eq!(
            interpolate_env("a: x${SECRET}y ${SECRET}\n", env).unwrap(),
            "a: xs3cr3ty s3cr3t\n"
        );
        assert_eq!(
            interpolate_env("a: $${SECRET}\n", env).unwrap(),
            "a: ${SECRET}\n"
        );
        assert_eq!(
            interpolate_env("# ${UNSET} in a comment\n", env).unwrap(),
            "# ${UNSET} in a comment\n"
        );
        assert_eq!(
            interpolate_env("x: 1\nb: ${UNSET}\n", env).unwrap_err().0,
            2
        );
        assert!(interpolate_env("b: ${EVIL}\n", env)
            .unwrap_err()
            .1
            .contains("newline"));
        assert!(interpolate_env("b: ${BAD-NAME}\n", env).is_err());
        assert!(interpolate_env("b: ${SECRET\n", env).is_err());
    }

    #[test]
    fn parse_errors_carry_the_line() {
        let (line, reason) = parse("listeners:\n  - address: 127.0.0.1:1\nroutes:\n  - backends: [http://x:1]\n    timeout: soon\n").unwrap_err();
        assert_eq!(line, 5);
        assert!(reason.contains("duration"), "{reason}");
    }
}
