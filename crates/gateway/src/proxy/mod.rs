//! The request path. The policy — what is decided about a request — is
//! [`Proxy::decide`] in [`policy`]: read it first. This module applies a
//! decision: forwarding to the backend and back.

mod auth_server;
pub use gatehouse_core::canonical;
pub mod headers;
pub mod policy;
pub mod reject;
pub mod routes;
pub mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::revocation::Revocations;
use gatehouse_core::auth::Verifier;
use gatehouse_core::config::LoadedConfig;
use gatehouse_core::metrics::metrics;
pub use policy::{Decision, Outcome};
use reject::Reject;
use routes::RouteTable;

pub use gatehouse_core::body::{BoxError, ProxyBody};

/// What the listener knows about the client connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The peer's address as the forwarding headers write it.
    pub client: headers::ClientAddr,
    pub tls: bool,
    /// Accepted on a `unix:` listener: the peer is whoever could open the
    /// socket file (its mode is the access control), trusted as the
    /// ingress; `peer` is then this host.
    pub unix_socket: bool,
    /// The names the certificate chosen by this connection's SNI serves;
    /// `None` without SNI or when no certificate names it.
    pub cert_names: Option<Arc<[String]>>,
    /// Index of the listener in the config (`listeners[]`).
    pub listener: usize,
    /// The connection's hold on its limits (its `limits.max_connections`
    /// slot and its place in the connection counts), released when the
    /// last holder drops it. A tunnel the connection turns into holds it
    /// too, so an upgraded connection counts until the tunnel closes.
    /// `None` where no listener accepted it (tests, benches).
    pub hold: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

/// The access log's `peer`: the client's IP address, or `unix` for a
/// connection on a `unix:` listener.
/// One request's access log line and metrics, written when it is
/// dropped: at the answer, or when the client abandons the request first.
struct AccessRecord<'a> {
    proxy: &'a Proxy,
    conn: &'a ConnInfo,
    start: Instant,
    method: http::Method,
    path: Option<String>,
    out: Outcome<'a>,
    /// The answer's status; `None` until there is one.
    status: Option<u16>,
}

impl Drop for AccessRecord<'_> {
    fn drop(&mut self) {
        let out = &mut self.out;
        let status = match self.status {
            Some(s) => s,
            None => {
                out.label = "client_closed";
                out.reason = Some("the client abandoned the request before its answer");
                499
            }
        };
        let elapsed = self.start.elapsed();
        metrics().record_request(
            out.route.unwrap_or(&self.proxy.no_route),
            status,
            out.label,
            elapsed.as_secs_f64(),
        );
        let route: &str = out.route.map_or("-", |r| r);
        let (method, path) = match &out.described {
            Some((m, p)) => (m, Some(p.as_str())),
            None => (&self.method, self.path.as_deref()),
        };
        tracing::info!(
            target: "gatehouse::access",
            method = %method,
            path = path.unwrap_or(""),
            route,
            status,
            latency_us = elapsed.as_micros() as u64,
            subject = out
                .identity
                .as_ref()
                .and_then(|i| i.subject.as_deref())
                .unwrap_or("-"),
            outcome = out.label,
            reason = out.reason.unwrap_or("-"),
            peer = %Peer(self.conn),
        );
    }
}

impl Proxy {
    /// Logs and counts a request head hyper answered before any handler
    /// saw it (431 for one over the header limits, 400 for one that is
    /// not HTTP/1.1): without this line an operator behind an ingress sees
    /// the ingress's error and nothing here.
    pub fn record_refused_head(
        &self,
        peer: std::net::SocketAddr,
        unix_socket: bool,
        r: gatehouse_core::listener::RefusedHead,
    ) {
        metrics().record_request(&self.no_route, r.status, r.outcome, 0.0);
        let ip = peer.ip().to_string();
        tracing::info!(
            target: "gatehouse::access",
            method = "-",
            path = "",
            route = "-",
            status = r.status,
            latency_us = 0u64,
            subject = "-",
            outcome = r.outcome,
            reason = r.reason,
            peer = if unix_socket { "unix" } else { ip.as_str() },
        );
    }
}

struct Peer<'a>(&'a ConnInfo);

impl std::fmt::Display for Peer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.unix_socket {
            f.write_str("unix")
        } else {
            self.0.peer.ip().fmt(f)
        }
    }
}

pub struct Proxy {
    routes: RouteTable,
    verifier: Verifier,
    revocations: Option<Arc<Revocations>>,
    realm: String,
    /// The route label of requests that matched none.
    no_route: Arc<str>,
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Per listener: `Some` where it is an ingress's auth server.
    auth_servers: Vec<Option<gatehouse_core::config::AuthServerConfig>>,
    /// `limits.body_read_timeout`: the longest wait for the next bytes of
    /// a request body.
    body_read_timeout: std::time::Duration,
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
            routes: {
                let mut t = RouteTable::from_config(cfg)?;
                t.attach_logins(loaded)?;
                t
            },
            verifier: Verifier::from_config(loaded).await?,
            revocations,
            realm: cfg.auth.realm.clone(),
            no_route: Arc::from("-"),
            trusted_proxies: cfg.trusted_proxies.iter().map(|n| n.0).collect(),
            body_read_timeout: cfg.limits.body_read_timeout,
            auth_servers: cfg
                .listeners
                .iter()
                .map(|l| l.value.auth_server.clone())
                .collect(),
        })
    }

    /// Entry point from the server: runs the policy, turns a refusal into
    /// its answer, writes the access log line. A request the client
    /// cancels first (an HTTP/2 RST_STREAM: hyper then drops this future)
    /// is logged and counted all the same, with status 499 and outcome
    /// `client_closed` (nginx's code for it).
    pub async fn handle(&self, req: Request<Incoming>, conn: &ConnInfo) -> Response<ProxyBody> {
        let mut rec = self.access_record(req.method(), req.uri(), conn);
        let answered = match self.auth_server(conn.listener) {
            Some(a) => {
                let (parts, _body) = req.into_parts();
                self.answer_auth_request(parts, conn, a, &mut rec.out).await
            }
            None => self.handle_inner(req, conn, &mut rec.out).await,
        };
        self.answered(rec, answered)
    }

    /// Entry point from an auth-server listener's head-only connections
    /// (`gatehouse_core::head_only`): the same answer, access log line
    /// and count as [`Proxy::handle`] gives there, from the request's head
    /// alone. On a listener that is not an auth server it answers 404: a
    /// listener's mode is fixed at start (a reload that changes it is
    /// refused), so this is never reached in practice.
    pub async fn answer_ingress(
        &self,
        parts: http::request::Parts,
        conn: &ConnInfo,
    ) -> Response<ProxyBody> {
        let mut rec = self.access_record(&parts.method, &parts.uri, conn);
        let answered = match self.auth_server(conn.listener) {
            Some(a) => self.answer_auth_request(parts, conn, a, &mut rec.out).await,
            None => Err(Reject::NoRoute),
        };
        self.answered(rec, answered)
    }

    /// Whether listener `index` is an ingress's auth server, and its
    /// settings.
    pub fn auth_server(&self, index: usize) -> Option<&gatehouse_core::config::AuthServerConfig> {
        self.auth_servers.get(index).and_then(Option::as_ref)
    }

    fn access_record<'a>(
        &'a self,
        method: &http::Method,
        uri: &http::Uri,
        conn: &'a ConnInfo,
    ) -> AccessRecord<'a> {
        let logging = tracing::enabled!(target: "gatehouse::access", tracing::Level::INFO);
        AccessRecord {
            proxy: self,
            conn,
            start: Instant::now(),
            method: method.clone(),
            // Only the path is logged: query strings carry tokens in some
            // apps. Copied only when the access log is on (no allocation
            // otherwise).
            path: logging.then(|| uri.path().to_owned()),
            out: Outcome {
                logging,
                ..Outcome::default()
            },
            status: None,
        }
    }

    /// A refusal becomes its answer; the record, dropped here, writes the
    /// access log line and the count.
    fn answered(
        &self,
        mut rec: AccessRecord<'_>,
        answered: Result<Response<ProxyBody>, Reject>,
    ) -> Response<ProxyBody> {
        let resp = match answered {
            Ok(resp) => resp,
            Err(reject) => {
                rec.out.reason = Some(reject.description());
                rec.out.label = reject.outcome();
                reject.into_response(&self.realm)
            }
        };
        rec.status = Some(resp.status().as_u16());
        resp
    }

    async fn handle_inner<'p>(
        &'p self,
        req: Request<Incoming>,
        conn: &ConnInfo,
        out: &mut Outcome<'p>,
    ) -> Result<Response<ProxyBody>, Reject> {
        let (parts, body) = req.into_parts();
        let mut decision = match self.decide(&parts, conn, out).await {
            Ok(d) => d,
            Err(Reject::Login(step)) => {
                // Boxed: the login flow's state (2 KB) stays out of every
                // proxied request's future.
                let a = Box::pin(crate::login::run(
                    *step,
                    &parts,
                    &self.verifier,
                    self.revocations.as_deref(),
                ))
                .await;
                out.label = a.label;
                return Ok(a.response);
            }
            Err(e) => return Err(e),
        };
        let set_cookies = std::mem::take(&mut decision.set_cookies);
        let mut resp = self.forward(decision, parts, body, conn).await?;
        for c in set_cookies {
            resp.headers_mut().append(header::SET_COOKIE, c);
        }
        Ok(resp)
    }

    /// Applies a decision: the request as the policy judged it, and only
    /// that, goes to the route's backend; the response comes back re-framed
    /// for the client.
    async fn forward(
        &self,
        d: Decision<'_>,
        mut parts: http::request::Parts,
        body: Incoming,
        conn: &ConnInfo,
    ) -> Result<Response<ProxyBody>, Reject> {
        let route = d.route;
        let upgrade = d.upgrade;
        let client_upgrade = if upgrade {
            parts.extensions.remove::<hyper::upgrade::OnUpgrade>()
        } else {
            None
        };
        let from_h2 = parts.version == Version::HTTP_2;
        // A WebSocket handshake is made again with the backend under a key
        // of the gateway's own (RFC 6455 §4.1): the backend's switch must
        // answer that key, which no client can know, so an endpoint that
        // merely echoes a status and headers the client chose cannot pass
        // for a WebSocket server. The client gets the answer to its own key.
        let ws_accept = if upgrade && headers::offers_websocket(&parts.headers) {
            let for_client = headers::websocket_accept(&parts.headers).ok_or(
                Reject::BadRequest("a WebSocket request needs one valid Sec-WebSocket-Key"),
            )?;
            let (key, for_backend) = headers::fresh_websocket_key()
                .ok_or(Reject::BadRequest("no WebSocket key could be made"))?;
            parts.headers.insert("sec-websocket-key", key);
            Some((for_client, for_backend))
        } else {
            None
        };
        let path: &str = &d.path.forward;
        let host: &str = &d.host.value;

        let h = &mut parts.headers;
        // Always, on every route and path: the backend must only ever see
        // identity and forwarding headers that we set.
        headers::strip_client_claims(h, &self.routes.strip_rules, !d.trusted_peer);
        headers::strip_hop_by_hop(h, upgrade);
        if from_h2 {
            headers::join_cookies(h);
        }
        // The browser session is the gateway's: never the backend's.
        crate::login::cookie::strip_ours(h);
        if !route.forward_authorization {
            h.remove(header::AUTHORIZATION);
        }
        headers::normalize_content_length(h);
        // Room for everything inserted below at once: the client's map was
        // sized for its own fields, and would otherwise grow in steps.
        h.reserve(4 + route.identity_headers.len());
        headers::set_forwarding(
            h,
            &conn.client,
            if conn.tls { "https" } else { "http" },
            host,
        );
        for (name, value) in d.identity_headers() {
            h.insert(name.clone(), value);
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

        let limit = usize::try_from(route.max_body_bytes).unwrap_or(usize::MAX);
        // A request without a body (most) needs no timer.
        let (body, state) = if http_body::Body::is_end_stream(&body) {
            (Limited::new(body, limit).boxed(), None)
        } else {
            // A body of unknown length (HTTP/2 DATA without
            // `content-length`) is sent chunked whatever the method: hyper
            // would send a GET, HEAD or CONNECT without it, and the backend
            // get another message than the one judged here.
            if !parts.headers.contains_key(header::CONTENT_LENGTH)
                && !parts.headers.contains_key(header::TRANSFER_ENCODING)
            {
                parts.headers.insert(
                    header::TRANSFER_ENCODING,
                    http::HeaderValue::from_static("chunked"),
                );
            }
            let (body, state) = gatehouse_core::body::ClientBody::new(body, self.body_read_timeout);
            (Limited::new(body, limit).boxed(), Some(state))
        };
        let mut resp = route
            .upstream
            .send(idx, Request::from_parts(parts, body), state.as_ref())
            .await?;

        let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
        // The backend must switch to a protocol the client offered and the
        // route allows (RFC 9110 §15.2.2), never to one of its choosing.
        let switched_to_allowed = resp
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| route.allows_upgrade(v));
        // A switch to WebSocket must carry the accept value made from the
        // client's key (RFC 6455 §4.1): otherwise the backend did not mean
        // it (an endpoint that echoes a status code), and the pipe would
        // carry requests nobody judges.
        let to_websocket = resp
            .headers()
            .get(header::UPGRADE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
        let accepted = !to_websocket
            || ws_accept.as_ref().is_some_and(|(_, for_backend)| {
                resp.headers()
                    .get("sec-websocket-accept")
                    .is_some_and(|got| got.as_bytes() == for_backend.as_bytes())
            });
        if switching && !(upgrade && switched_to_allowed && accepted) {
            // A switch nobody asked for (or that the route does not allow)
            // would turn the connection into a pipe nobody judges.
            route.upstream.count_error("framing");
            return Err(Reject::BadGateway);
        }
        if let (true, Some((for_client, _))) = (switching && to_websocket, &ws_accept) {
            if let Ok(v) = HeaderValue::from_str(for_client) {
                resp.headers_mut().insert("sec-websocket-accept", v);
            }
        }
        if let (true, Some(client_upgrade)) = (switching, client_upgrade) {
            let backend_upgrade = hyper::upgrade::on(&mut resp);
            let credential = d.identity.clone().map(|id| (id, self.revocations.clone()));
            let hold = conn.hold.clone();
            tokio::spawn(async move {
                let _hold = hold;
                match tokio::try_join!(client_upgrade, backend_upgrade) {
                    Ok((c, b)) => {
                        let (mut c, mut b) = (TokioIo::new(c), TokioIo::new(b));
                        let pipe = tokio::io::copy_bidirectional(&mut c, &mut b);
                        match credential {
                            None => {
                                let _ = pipe.await;
                            }
                            Some((id, revocations)) => {
                                tokio::select! {
                                    _ = pipe => {}
                                    reason = credential_ended(&id, revocations) => {
                                        // Dropping both sides closes both
                                        // connections.
                                        metrics()
                                            .tunnels_closed
                                            .get_or_create(&gatehouse_core::metrics::ReasonLabel { reason })
                                            .inc();
                                        tracing::info!(reason, subject = id.subject.as_deref().unwrap_or("-"), "tunnel closed: its credential ended");
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "upgrade did not complete"),
                }
            });
        }
        headers::strip_hop_by_hop(resp.headers_mut(), switching && upgrade);
        // An intermediary sends its own HTTP version (RFC 9110 §6.2): an
        // HTTP/1.0 backend's version would otherwise reach the client,
        // which then closes its keep-alive connection after each answer.
        *resp.version_mut() = Version::HTTP_11;
        Ok(resp)
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The revocation feed's state, when revocation is configured.
    pub fn revocations(&self) -> Option<&Arc<Revocations>> {
        self.revocations.as_ref()
    }

    /// The peer is an ingress or proxy whose description of the request
    /// is believed: in `trusted_proxies`, or on a `unix:` listener.
    fn is_trusted_proxy(&self, conn: &ConnInfo) -> bool {
        if conn.unix_socket {
            return true;
        }
        let ip = conn.peer.ip().to_canonical();
        self.trusted_proxies.iter().any(|n| n.contains(&ip))
    }
}

/// Resolves when an open tunnel's credential ends: `"revoked"` as soon as
/// the gateway applies a revocation that covers it (checked again each
/// time revocations become visible, and once at the start, for one that
/// arrived during the upgrade), `"expired"` at its `exp`. A tunnel is
/// judged once, at its upgrade request; without this it would outlive a
/// forced logout and its token's lifetime.
async fn credential_ended(
    id: &gatehouse_core::auth::Identity,
    revocations: Option<Arc<Revocations>>,
) -> &'static str {
    let expiry = async {
        match id.expires_at {
            Some(exp) => {
                let left_ms = exp.saturating_mul(1000) - gatehouse_core::clock::now_unix_ms();
                tokio::time::sleep(std::time::Duration::from_millis(left_ms.max(0) as u64)).await
            }
            None => std::future::pending().await,
        }
    };
    let revoked = async {
        let Some(r) = revocations else {
            return std::future::pending().await;
        };
        let mut applied = r.watch_applied();
        loop {
            if r.is_revoked(id) {
                return;
            }
            if applied.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    };
    tokio::select! {
        _ = expiry => "expired",
        _ = revoked => "revoked",
    }
}
