//! `listeners`, their TLS and auth-server mode, and `limits`.

use super::*;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    #[serde(default)]
    pub name: Option<String>,
    /// `host:port` (TCP), or `unix:/absolute/path` for a Unix domain socket
    /// (an auth server beside an ingress on the same host; see
    /// [`ListenAddress`]).
    pub address: ListenAddress,
    /// Permission bits of a `unix:` listener's socket file, as an octal
    /// string (`"0660"`, the default: the owner and its group may connect).
    /// Whoever may connect is the ingress, so this is the access control.
    #[serde(default)]
    pub socket_mode: Option<SocketMode>,
    /// Decide and answer instead of forwarding: this listener is the auth
    /// server an existing ingress asks on every request (README "Beside an
    /// existing ingress").
    #[serde(default)]
    pub auth_server: Option<AuthServerConfig>,
    #[serde(default)]
    pub tls: Option<TlsConfig>,
}

/// Where a listener accepts connections.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddress {
    /// A TCP address; port 0 picks a free port.
    Tcp(SocketAddr),
    /// A Unix domain socket (`unix:/run/gatehouse/auth.sock`): for an
    /// ingress on the same host, whose every request costs one exchange
    /// with the auth server. The kernel moves the bytes without the TCP
    /// stack, which on loopback is about a third of the exchange's CPU.
    Unix(PathBuf),
}

impl ListenAddress {
    /// The TCP address, `None` for a Unix socket.
    pub fn tcp(&self) -> Option<SocketAddr> {
        match self {
            ListenAddress::Tcp(a) => Some(*a),
            ListenAddress::Unix(_) => None,
        }
    }
}

impl fmt::Display for ListenAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddress::Tcp(a) => a.fmt(f),
            ListenAddress::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl std::str::FromStr for ListenAddress {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.strip_prefix("unix:") {
            Some(path) => {
                let path = PathBuf::from(path);
                if !path.is_absolute() {
                    return Err(format!("{s}: a unix socket path must be absolute"));
                }
                // sockaddr_un holds 108 bytes, the terminating NUL included.
                if path.as_os_str().len() > 107 {
                    return Err(format!(
                        "{s}: a unix socket path is at most 107 bytes (sockaddr_un)"
                    ));
                }
                Ok(ListenAddress::Unix(path))
            }
            None => s.parse().map(ListenAddress::Tcp).map_err(|_| {
                format!("{s}: expected host:port (an IP address) or unix:/absolute/path")
            }),
        }
    }
}

impl<'de> Deserialize<'de> for ListenAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Permission bits of a socket file (`"0660"`): only the low nine bits,
/// written in octal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketMode(pub u32);

impl Default for SocketMode {
    fn default() -> Self {
        SocketMode(0o660)
    }
}

impl<'de> Deserialize<'de> for SocketMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        // Three octal digits, with an optional leading 0: no sign, no 0o,
        // no setuid/sticky digit.
        let digits = s.strip_prefix('0').filter(|d| d.len() == 3).unwrap_or(&s);
        match u32::from_str_radix(digits, 8) {
            Ok(m) if digits.len() == 3 && digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) => {
                Ok(SocketMode(m))
            }
            _ => Err(serde::de::Error::custom(format!(
                "socket_mode {s}: expected permission bits as three octal digits, such as \"0660\""
            ))),
        }
    }
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
    /// Longest wait for the next bytes of a request body once it has
    /// begun (nginx's `client_body_timeout`); over it the request is
    /// answered 408 and its connection closed.
    #[serde(with = "duration")]
    pub body_read_timeout: Duration,
    /// Upper bound on the whole request head (HTTP/1 buffer, HTTP/2 header list).
    /// Bytes, an integer, at least 8192; spanned so `check` can name its line.
    pub max_header_bytes: Spanned<usize>,
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
            body_read_timeout: Duration::from_secs(30),
            max_header_bytes: unplaced(32 * 1024),
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
        let ephemeral = l.value.address.tcp().is_some_and(|a| a.port() == 0);
        if !addrs.insert(l.value.address.clone()) && !ephemeral {
            c.push(
                line,
                format!("listener address {} is used twice", l.value.address),
            );
        }
        if let (ListenAddress::Unix(_), Some(SocketMode(m))) =
            (&l.value.address, l.value.socket_mode)
        {
            // Connecting takes write permission on the file.
            if m & 0o002 != 0 {
                c.push(line, format!("socket_mode {m:o} lets every local user connect and be believed as the ingress: give the ingress's user the socket's group (0660)"));
            } else if m & 0o222 == 0 {
                c.push(line, format!("socket_mode {m:o} lets no one but root connect: the ingress needs write permission (0660)"));
            }
        }
        match &l.value.address {
            ListenAddress::Unix(_) => {
                // Whoever can open the socket file is the ingress: the
                // socket serves an auth server, never a proxy whose clients
                // would all look alike and local.
                if l.value.auth_server.is_none() {
                    c.push(line, "a unix: listener must be an auth_server (an ingress on the same host asks it); serve clients on a TCP listener".into());
                }
                if l.value.tls.is_some() {
                    c.push(
                        line,
                        "a unix: listener has no tls: the socket never leaves the host".into(),
                    );
                }
            }
            ListenAddress::Tcp(_) => {
                if l.value.socket_mode.is_some() {
                    c.push(line, "socket_mode is for unix: listeners only".into());
                }
            }
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
            let unix = matches!(l.value.address, ListenAddress::Unix(_));
            if cfg.trusted_proxies.is_empty() && !unix {
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
    // Zero would close every connection before its first request.
    if cfg.limits.header_read_timeout.is_zero()
        || cfg.limits.idle_timeout.is_zero()
        || cfg.limits.body_read_timeout.is_zero()
    {
        c.push(
            0,
            "limits.header_read_timeout, limits.body_read_timeout and limits.idle_timeout must be more than 0s".into(),
        );
    }
    if cfg.limits.max_header_bytes.value < 8192 {
        c.push(
            cfg.limits.max_header_bytes.referenced.line(),
            "limits.max_header_bytes must be at least 8192".into(),
        );
    }
    if cfg.limits.max_connections == 0 {
        c.push(0, "limits.max_connections must be at least 1".into());
    }
}
