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
//!
//! One module per section, each with its types and its one check:
//! [`listeners`] (listeners, TLS, limits, the auth-server mode),
//! [`issuers`] (`auth`, issuers, key sets), [`routes`], [`revocation`]
//! (the gateway's feed and the authority). [`validate`] runs them in turn.

mod issuers;
mod listeners;
mod revocation;
mod routes;

pub use issuers::*;
pub use listeners::*;
pub use revocation::*;
pub use routes::*;

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
    /// Browser sessions of `routes[].login`: cookie keys and lifetimes.
    #[serde(default)]
    pub sessions: Option<Spanned<SessionsConfig>>,
    #[serde(default = "default_shutdown_grace", with = "duration")]
    pub shutdown_grace: Duration,
    /// Request-serving threads, each with its own runtime and listening
    /// socket; 0 or absent means one per CPU. Read with [`Config::workers`].
    #[serde(default)]
    pub workers: Option<Spanned<usize>>,
    /// Whether each worker thread is bound to one CPU; see
    /// [`WorkerCpuAffinity`].
    #[serde(default)]
    pub worker_cpu_affinity: WorkerCpuAffinity,
}

/// `worker_cpu_affinity`: where the request workers may run.
///
/// Named after nginx's `worker_cpu_affinity` (`auto` there binds worker
/// *i* to the *i*-th available CPU, as here). Bound, a worker keeps its
/// CPU's caches and never shares a CPU with another worker while one sits
/// idle, which the scheduler otherwise allows for a while: measured on
/// two shared cores, the p99 was lower in every pair (by 7–58%) and lost
/// its occasional 3 ms spikes (README "Performance", "Workers bound to
/// CPUs"). Left `off` by default, as in nginx:
/// on a machine where other busy processes are bound to some CPUs, a
/// bound worker cannot move away from them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerCpuAffinity {
    /// The scheduler places and moves the workers.
    #[default]
    Off,
    /// Worker *i* runs only on the *i*-th CPU of those the process may
    /// use (its affinity mask at start, e.g. from `taskset` or a
    /// container's cpuset), wrapping around when there are more workers
    /// than CPUs. The control-plane threads stay unbound.
    Auto,
}

impl Config {
    /// `workers` as configured: 0 (absent) means one per CPU.
    pub fn workers(&self) -> usize {
        self.workers.as_ref().map_or(0, |w| w.value)
    }

    /// How many workers `workers` starts: as configured, or for 0
    /// (absent) one per CPU the process may use (its affinity mask and CPU
    /// quota, as `std::thread::available_parallelism` reads them), at most
    /// 16.
    pub fn worker_count(&self) -> usize {
        match self.workers() {
            0 => std::thread::available_parallelism().map_or(1, |p| p.get().min(16)),
            n => n,
        }
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
pub struct SecretSource {
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub env: Option<String>,
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

/// A default value for a `Spanned` field: it has no line in the file.
fn unplaced<T>(value: T) -> Spanned<T> {
    Spanned::new(
        value,
        serde_saphyr::Location::UNKNOWN,
        serde_saphyr::Location::UNKNOWN,
    )
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
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h.eq_ignore_ascii_case("localhost")
        || h.parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The transport rule: plain text only to loopback, or with the key's
/// explicit opt-in (logged loudly). `None` when the URL may be used.
pub(crate) fn plaintext_problem(
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

/// A config being checked: the problems found so far, each with file and
/// line. Every section's check takes it.
pub(crate) struct Check<'a> {
    pub loaded: &'a LoadedConfig,
    pub mode: Mode,
    pub issues: Vec<ConfigIssue>,
}

impl Check<'_> {
    pub fn cfg(&self) -> &Config {
        &self.loaded.config
    }

    pub fn push(&mut self, line: u64, reason: String) {
        self.issues.push(ConfigIssue {
            file: self.loaded.path.clone(),
            line,
            reason,
        });
    }

    /// Why the file at `p` (relative to the config) is not a readable file.
    pub fn file_problem(&self, p: &Path, what: &str) -> Option<String> {
        let full = self.loaded.resolve(p);
        match std::fs::metadata(&full) {
            Ok(m) if m.is_file() => None,
            Ok(_) => Some(format!("{what} {} is not a file", full.display())),
            Err(e) => Some(format!("{what} {}: {e}", full.display())),
        }
    }

    /// Pushes a problem at `line` if the file at `p` is not there.
    pub fn file_must_exist(&mut self, line: u64, p: &Path, what: &str) {
        if let Some(r) = self.file_problem(p, what) {
            self.push(line, r);
        }
    }

    /// Pushes a problem at `line` if the secret cannot be read.
    pub fn secret(&mut self, line: u64, s: &SecretSource, what: &str) {
        if let Some(r) = secret_problem(s, self.loaded) {
            self.push(line, format!("{what}{r}"));
        }
    }
}

/// Cross-field validation, one section at a time (each section's rules
/// live with its types). Every problem is collected, none stops the rest.
fn validate(loaded: &LoadedConfig, mode: Mode) -> Vec<ConfigIssue> {
    let mut c = Check {
        loaded,
        mode,
        issues: Vec::new(),
    };
    revocation::check(&mut c);
    listeners::check(&mut c);
    check_top_level(&mut c);
    issuers::check(&mut c);
    routes::check(&mut c);
    routes::check_logins(&mut c);
    c.issues
}

/// The keys at the top of the file that belong to no section.
fn check_top_level(c: &mut Check<'_>) {
    let cfg = &c.loaded.config;
    let mut problems = Vec::new();
    if let Some(w) = cfg.workers.as_ref().filter(|w| w.value > 16) {
        c.push(w.referenced.line(), "workers must be at most 16".to_owned());
    }
    for h in &cfg.strip_untrusted_headers {
        let name = h.strip_suffix('*').unwrap_or(h);
        if name.is_empty() || http::HeaderName::from_bytes(name.as_bytes()).is_err() {
            problems.push(format!(
                "strip_untrusted_headers: `{h}` is not a header name (or prefix ending in *)"
            ));
        }
    }
    for p in problems {
        c.push(0, p);
    }
}

/// Why a secret cannot be read, if it cannot.
pub(crate) fn secret_problem(s: &SecretSource, loaded: &LoadedConfig) -> Option<String> {
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
