//! `listeners`, their TLS and auth-server mode, and `limits`.

use super::*;

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

/// Listeners (addresses used once, TLS files there), the auth-server mode
/// (believed only from `trusted_proxies`), and `limits`.
pub(super) fn check(c: &mut Check<'_>) {
    let cfg = &c.loaded.config;
    if c.mode == Mode::Gateway && cfg.listeners.is_empty() {
        c.push(0, "at least one listener is required".into());
    }
    let mut addrs = std::collections::HashSet::new();
    for l in &cfg.listeners {
        let line = l.referenced.line();
        if !addrs.insert(l.value.address) && l.value.address.port() != 0 {
            c.push(
                line,
                format!("listener address {} is used twice", l.value.address),
            );
        }
        if let Some(tls) = &l.value.tls {
            if tls.certificates.is_empty() {
                c.push(line, "tls needs at least one certificate".into());
            }
            for cert in &tls.certificates {
                let cline = cert.referenced.line();
                c.file_must_exist(cline, &cert.value.cert, "certificate");
                c.file_must_exist(cline, &cert.value.key, "key");
            }
        }
        if let Some(a) = &l.value.auth_server {
            if cfg.trusted_proxies.is_empty() {
                c.push(
                    line,
                    "auth_server needs trusted_proxies: the ingress addresses whose description of the original request is believed".into(),
                );
            }
            if !a.path_prefix.is_empty() && a.ingress != Ingress::Envoy {
                c.push(
                    line,
                    "auth_server.path_prefix is for ingress: envoy only".into(),
                );
            }
            if !a.path_prefix.is_empty() && !a.path_prefix.starts_with('/') {
                c.push(line, "auth_server.path_prefix must start with /".into());
            }
        }
    }
    if cfg.limits.max_header_bytes < 8192 {
        c.push(0, "limits.max_header_bytes must be at least 8192".into());
    }
    if cfg.limits.max_connections == 0 {
        c.push(0, "limits.max_connections must be at least 1".into());
    }
}
