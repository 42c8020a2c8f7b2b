//! The request path. [`Proxy::handle_inner`] is the whole policy, top to
//! bottom; each step is one call into its own module.

pub mod canonical;
pub mod headers;
pub mod reject;
pub mod routes;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::admin::metrics::metrics;
use crate::auth::{self, AuthError, Bearer, Identity, Verifier};
use crate::config::{AuthMode, LoadedConfig};
use crate::revocation::feed::Refusal;
use crate::revocation::Revocations;
use canonical::CanonicalHost;
use reject::Reject;
use routes::{Route, RouteTable};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// What the listener knows about the client connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's address as the forwarding headers write it.
    pub client: headers::ClientAddr,
    pub tls: bool,
    /// The names the certificate chosen by this connection's SNI serves;
    /// `None` without SNI or when no certificate names it.
    pub cert_names: Option<Arc<[String]>>,
}

pub struct Proxy {
    routes: RouteTable,
    verifier: Verifier,
    revocations: Option<Arc<Revocations>>,
    realm: String,
    /// The route label of requests that matched none.
    no_route: Arc<str>,
    trusted_proxies: Vec<ipnet::IpNet>,
}

/// What the access log line says about a request, filled in as it goes.
#[derive(Default)]
struct Outcome {
    route: Option<Arc<str>>,
    /// For the access log's subject.
    identity: Option<Arc<Identity>>,
    reason: Option<&'static str>,
    label: &'static str,
}

impl Proxy {
    /// Builds the request policy from a config; `revocations` is shared
    /// across reloads (the feed and its state outlive any one config).
    pub async fn from_config(
        loaded: &LoadedConfig,
        revocations: Option<Arc<Revocations>>,
    ) -> anyhow::Result<Self> {
        let cfg = &loaded.config;
        Ok(Proxy {
            routes: RouteTable::from_config(cfg)?,
            verifier: Verifier::from_config(loaded).await?,
            revocations,
            realm: cfg.auth.realm.clone(),
            no_route: Arc::from("-"),
            trusted_proxies: cfg.trusted_proxies.iter().map(|n| n.0).collect(),
        })
    }

    /// Entry point from the server: runs the policy, turns a refusal into
    /// its answer, writes the access log line.
    pub async fn handle(&self, req: Request<Incoming>, conn: &ConnInfo) -> Response<ProxyBody> {
        let start = Instant::now();
        let method = req.method().clone();
        // Only the path is logged: query strings carry tokens in some apps.
        // Copied only when the access log is on (no allocation otherwise).
        let path = tracing::enabled!(target: "gatehouse::access", tracing::Level::INFO)
            .then(|| req.uri().path().to_owned());
        let mut out = Outcome {
            label: "allowed",
            ..Default::default()
        };
        let resp = match self.handle_inner(req, conn, &mut out).await {
            Ok(resp) => resp,
            Err(reject) => {
                out.reason = Some(reject.description());
                out.label = reject.outcome();
                reject.into_response(&self.realm)
            }
        };
        let elapsed = start.elapsed();
        metrics().record_request(
            out.route.as_ref().unwrap_or(&self.no_route),
            resp.status().as_u16(),
            out.label,
            elapsed.as_secs_f64(),
        );
        let route = out.route.as_deref().unwrap_or("-");
        tracing::info!(
            target: "gatehouse::access",
            method = %method,
            path = path.as_deref().unwrap_or(""),
            route,
            status = resp.status().as_u16(),
            latency_us = elapsed.as_micros() as u64,
            subject = out
                .identity
                .as_ref()
                .and_then(|i| i.subject.as_deref())
                .unwrap_or("-"),
            outcome = out.label,
            reason = out.reason.unwrap_or("-"),
            peer = %conn.peer.ip(),
        );
        resp
    }

    async fn handle_inner(
        &self,
        mut req: Request<Incoming>,
        conn: &ConnInfo,
        out: &mut Outcome,
    ) -> Result<Response<ProxyBody>, Reject> {
        // The one reading of the target and host that every decision below
        // uses, and that the backend receives.
        let path = canonical::canonicalize_path(req.uri().path())
            .map_err(Reject::BadRequest)?
            .into_owned();
        let host = canonical_host(&req)?;
        // A request for a host the connection's certificate does not serve
        // (SNI says one site, Host another) is not judged by either.
        if let Some(names) = &conn.cert_names {
            if !crate::tls::host_served(names, host.name()) {
                return Err(Reject::Misdirected);
            }
        }
        let route = self
            .routes
            .find(host.name(), path.matched())
            .ok_or(Reject::NoRoute)?;
        out.route = Some(route.name.clone());

        // Always, on every route and path: the backend must only ever see
        // identity and forwarding headers that we set.
        let trusted = self.is_trusted_proxy(conn.peer);
        headers::strip_client_claims(req.headers_mut(), &self.routes.strip_rules, !trusted);

        let identity = self
            .authenticate(route, path.matched(), req.headers())
            .await?;
        if let Some(id) = &identity {
            out.identity = Some(id.clone());
            self.check_revoked(id)?;
            authorize(route, id)?;
        } else if route.auth != AuthMode::Off {
            out.label = "public";
        }
        self.forward(
            route,
            req,
            &path.forward,
            &host.value,
            identity.as_deref(),
            conn,
        )
        .await
    }

    /// `Ok(None)`: forward anonymously (auth off, public path, or no
    /// `Authorization` header at all on an `optional` route without
    /// `require`). Any `Authorization` header that is there is judged: a
    /// broken bearer credential or another scheme is never taken for "no
    /// credentials" and forwarded.
    async fn authenticate(
        &self,
        route: &Route,
        path: &str,
        headers: &http::HeaderMap,
    ) -> Result<Option<Arc<Identity>>, Reject> {
        if route.auth == AuthMode::Off || route.is_public(path) {
            return Ok(None);
        }
        let token = match auth::bearer(headers) {
            Bearer::Missing if route.auth == AuthMode::Optional && route.require.is_none() => {
                return Ok(None)
            }
            Bearer::Missing | Bearer::OtherScheme => return Err(Reject::MissingToken),
            Bearer::Malformed => {
                return Err(Reject::InvalidToken(AuthError::Malformed(
                    "malformed authorization header",
                )))
            }
            Bearer::Token(t) => t,
        };
        let identity = self
            .verifier
            .verify(token)
            .await
            .map_err(Reject::InvalidToken)?;
        if !route.issuers.is_empty() && !route.issuers.contains(&identity.issuer) {
            return Err(Reject::InvalidToken(AuthError::UnknownIssuer));
        }
        Ok(Some(identity))
    }

    async fn forward(
        &self,
        route: &Route,
        mut req: Request<Incoming>,
        path: &str,
        host: &str,
        identity: Option<&Identity>,
        conn: &ConnInfo,
    ) -> Result<Response<ProxyBody>, Reject> {
        let declared_len = req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared_len.is_some_and(|n| n > route.max_body_bytes) {
            return Err(Reject::BodyTooLarge);
        }
        // RFC 9112 §6.1: only `chunked` is decoded here; any other coding
        // would reach the backend undecoded under a framing it cannot see.
        if let Some(te) = req.headers().get(header::TRANSFER_ENCODING) {
            if !te.as_bytes().eq_ignore_ascii_case(b"chunked") {
                return Err(Reject::BadRequest("unsupported transfer coding"));
            }
        }
        let upgrade = is_upgrade_request(&req, route);
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let from_h2 = req.version() == Version::HTTP_2;

        let (mut parts, body) = req.into_parts();
        let h = &mut parts.headers;
        headers::strip_hop_by_hop(h, upgrade);
        if from_h2 {
            headers::join_cookies(h);
        }
        if !route.forward_authorization {
            h.remove(header::AUTHORIZATION);
        }
        headers::set_forwarding(
            h,
            &conn.client,
            if conn.tls { "https" } else { "http" },
            host,
        );
        if let Some(id) = identity {
            add_identity_headers(h, route, id);
        }

        let (idx, authority) = route.upstream.choose();
        let host_value = if route.preserve_host && !host.is_empty() {
            host
        } else {
            authority.as_str()
        };
        if let Ok(v) = HeaderValue::from_str(host_value) {
            h.insert(header::HOST, v);
        }
        // Origin-form for the backend. The client's own URI is reused as is
        // when it already is exactly that (the common HTTP/1.1 case).
        let reuse = parts.uri.scheme().is_none()
            && parts.uri.authority().is_none()
            && parts.uri.path() == path;
        if !reuse {
            let pq = match parts.uri.query() {
                Some(q) => format!("{path}?{q}"),
                None => path.to_owned(),
            };
            parts.uri = http::Uri::try_from(pq)
                .map_err(|_| Reject::BadRequest("request target cannot be forwarded"))?;
        }
        parts.version = Version::HTTP_11;

        let body = Limited::new(
            body,
            usize::try_from(route.max_body_bytes).unwrap_or(usize::MAX),
        )
        .boxed();
        let mut resp = route
            .upstream
            .send(idx, Request::from_parts(parts, body))
            .await?;

        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching && !upgrade {
            // A switch nobody asked for (or that the route does not allow)
            // would turn the connection into a pipe nobody judges.
            route.upstream.count_error("framing");
            return Err(Reject::BadGateway);
        }
        if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            tokio::spawn(async move {
                match tokio::try_join!(client_upgrade, backend_upgrade) {
                    Ok((c, b)) => {
                        let _ = tokio::io::copy_bidirectional(
                            &mut TokioIo::new(c),
                            &mut TokioIo::new(b),
                        )
                        .await;
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade did not complete"),
                }
            });
        }
        headers::strip_hop_by_hop(resp.headers_mut(), switching && upgrade);
        Ok(resp)
    }

    /// A genuine token is not enough: it must not have been revoked.
    fn check_revoked(&self, id: &Identity) -> Result<(), Reject> {
        let Some(r) = &self.revocations else {
            return Ok(());
        };
        r.check(id).map_err(|refusal| match refusal {
            Refusal::Revoked(hit) => Reject::Revoked(hit.description()),
            Refusal::Unavailable => Reject::RevocationUnavailable,
        })
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The revocation feed's state, when revocation is configured.
    pub fn revocations(&self) -> Option<&Arc<Revocations>> {
        self.revocations.as_ref()
    }

    fn is_trusted_proxy(&self, peer: SocketAddr) -> bool {
        let ip = peer.ip().to_canonical();
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}

/// Per-route scope and role requirements, after the token is known good.
fn authorize(route: &Route, id: &Identity) -> Result<(), Reject> {
    let Some(req) = &route.require else {
        return Ok(());
    };
    let scopes_ok = req.scopes.iter().all(|s| id.has_scope(s));
    let roles_ok = req.roles.is_empty() || id.has_any_role(&req.roles_claim, &req.roles);
    if scopes_ok && roles_ok {
        Ok(())
    } else {
        Err(Reject::InsufficientScope(req.scopes.join(" ")))
    }
}

/// The host the client asked for, in canonical form: the URI authority
/// (HTTP/2 `:authority`, or an HTTP/1.1 absolute-form target) wins over
/// `Host`, as RFC 9112 §3.2.2 says. 400 for a malformed host, several
/// `Host` lines, an HTTP/1.1 request without one (RFC 9112 §3.2), or an
/// HTTP/2 request whose `Host` names another host than its `:authority`
/// (RFC 9113 §8.3.1).
fn canonical_host(req: &Request<Incoming>) -> Result<CanonicalHost<'static>, Reject> {
    const BAD: Reject = Reject::BadRequest("malformed Host");
    let mut lines = req.headers().get_all(header::HOST).iter();
    let first = lines.next();
    if lines.next().is_some() {
        return Err(Reject::BadRequest("more than one Host"));
    }
    let from_header = match first {
        Some(v) => {
            let text = v.to_str().map_err(|_| BAD)?;
            Some(canonical::canonicalize_host(text).map_err(Reject::BadRequest)?)
        }
        None => None,
    };
    if let Some(a) = req.uri().authority() {
        let from_uri = canonical::canonicalize_host(a.as_str()).map_err(Reject::BadRequest)?;
        if req.version() == Version::HTTP_2 {
            if let Some(h) = &from_header {
                if h.value != from_uri.value {
                    return Err(Reject::BadRequest("Host differs from :authority"));
                }
            }
        }
        return Ok(from_uri.into_owned());
    }
    match from_header {
        Some(h) => Ok(h.into_owned()),
        None if req.version() == Version::HTTP_11 => {
            Err(Reject::BadRequest("an HTTP/1.1 request needs a Host"))
        }
        None => Ok(CanonicalHost::EMPTY),
    }
}

/// An HTTP/1.1 `Upgrade` (RFC 9110 §7.8) to protocols the route allows:
/// WebSocket by default, never `h2c`.
fn is_upgrade_request(req: &Request<Incoming>, route: &Route) -> bool {
    let h = req.headers();
    req.version() == Version::HTTP_11
        && h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        && h.get_all(header::UPGRADE)
            .iter()
            .all(|v| v.to_str().is_ok_and(|v| route.allows_upgrade(v)))
}

/// Sets the route's identity headers from the token's claims, each value
/// in the one form [`headers::identity_value`] defines; a claim with no
/// such form is withheld and counted.
fn add_identity_headers(h: &mut http::HeaderMap, route: &Route, id: &Identity) {
    for ih in &route.identity_headers {
        let Some(v) = id.claim(&ih.claim) else {
            continue;
        };
        if v.is_null() {
            continue;
        }
        match headers::identity_value(v) {
            Some(v) => {
                h.insert(ih.header.0.clone(), v);
            }
            None => {
                tracing::debug!(claim = %ih.claim, "claim has no unambiguous header form; not sent");
                metrics()
                    .identity_headers_withheld
                    .get_or_create(&crate::admin::metrics::IdentityHeaderLabels {
                        route: route.name.to_string(),
                        header: ih.header.0.as_str().to_owned(),
                    })
                    .inc();
            }
        }
    }
}
