//! The authority's HTTP API.
//!
//! | call | who | what |
//! |---|---|---|
//! | `POST /v1/revocations` | admin | one revocation or a batch |
//! | `GET /v1/revocations/{id}` | admin | one entry, with its receipt (which gateways applied it) |
//! | `DELETE /v1/revocations/{id}` | admin | un-revoke (audited) |
//! | `GET /v1/revocations?subject=` | admin | entries for a subject |
//! | `POST /v1/sessions` | admin (login service) | a new session; enforces the session limit |
//! | `POST /v1/logout` | the token itself | revoke its `jti`/`sid`; always 200 for a genuine token |
//! | `POST /backchannel-logout` | the identity provider (signed logout token) | OIDC Back-Channel Logout 1.0 |
//! | `GET /v1/feed?since=&wait=` | feed token only (never the admin token) | changes since a cursor, or a snapshot |
//! | `GET /v1/status` | admin | entry count and cursor |
//! | `GET /v1/gateways` | admin | the gateways reading the feed: state, cursor, lag |
//! | `DELETE /v1/gateways/{name}` | admin | forget a gateway (decommissioned): no longer waited for |
//! | `GET /metrics` | admin | Prometheus text (gateways by state, propagation) |
//!
//! Writes (`POST /v1/revocations`, `DELETE /v1/revocations/{id}`,
//! `POST /v1/sessions`, `POST /v1/logout`, `POST /backchannel-logout`) take
//! a wait mode, `?wait=applied&timeout=2s` or the header
//! `Gatehouse-Wait: applied; timeout=2s`: the answer comes once every
//! gateway that is not gone has applied the change, with a `receipt` in
//! the body; on timeout the change is committed but not yet everywhere:
//! `202 Accepted`, with the receipt naming the gateways that lag.
//! | `GET /healthz` | anyone | liveness: `{"status":"ok"}` only |

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use serde::Deserialize;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio::sync::{mpsc, watch};

mod feed;
mod logout;
mod refusal;
mod revocations;
mod wait;

pub use refusal::Refusal;
pub use wait::parse_wait;
use wait::Caller;

use crate::backend::Backend;
use crate::gateways::Gateways;
use crate::records::{push_line, Commits, NewRevocation, Pos, PutOutcome};
use gatehouse_core::auth::{AuthError, Bearer, Identity, Verifier};
use gatehouse_core::body::{BoxError, ProxyBody};
use gatehouse_core::clock::{now_unix, now_unix_ms};
use gatehouse_core::config::{AuthorityConfig, BackchannelScope, LoadedConfig};
use gatehouse_core::revocation::{covers, keys_of, FeedMarker, Kind, Revocation};

/// Bodies of logout, back-channel logout and session calls: a token or a
/// logout token is a few KiB. Logout is unauthenticated until its token is
/// verified, so an unfinished large body must cost nothing.
const SMALL_BODY: usize = 64 * 1024;
/// The longest revocation value (`jti`, `sid`, `sub`, `client_id`), in
/// bytes; an empty one names nothing.
const MAX_VALUE_BYTES: usize = 1024;
/// How far ahead of now a `before` may be, in seconds (the admin API's
/// bound, and a logout's cap on a token's `iat`).
const MAX_BEFORE_AHEAD: i64 = 300;
/// Longest long-poll a client may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Changes sent in one incremental response; a client further behind
/// simply asks again with the new cursor.
const MAX_CHANGES: usize = 50_000;

/// [`IssuerInfo::leeway_hold`] for an issuer's `leeway`.
fn leeway_hold(leeway: Duration) -> i64 {
    (leeway.as_secs_f64().ceil() as i64).saturating_mul(3)
}

struct IssuerInfo {
    /// How long an entry lives past the newest token it can cover, in
    /// seconds: `max_token_lifetime` plus [`IssuerInfo::leeway_hold`].
    max_lifetime: i64,
    /// Three times the issuer's `leeway`: within it a gateway accepts a
    /// token until `exp + leeway`, a lifetime up to `max_token_lifetime +
    /// leeway` and an `iat` up to `leeway` ahead, so an entry that ended
    /// with the token's lifetime let it pass again at its end. Gateways
    /// hold entries that long past their expiry themselves; the authority
    /// keeps them too, for a gateway that starts without a state file.
    leeway_hold: i64,
    backchannel: BackchannelScope,
    /// `logout_audiences`: the relying parties (client ids) whose ID
    /// tokens may report a login or end their own session.
    clients: Vec<String>,
}

pub struct Api {
    store: Backend,
    verifier: Verifier,
    /// For back-channel logout tokens: each issuer's `logout_audiences`
    /// instead of its `audiences` (`None`: no issuer sets them).
    logout_verifier: Option<Verifier>,
    /// `logout_token_max_age` in seconds.
    logout_max_age: i64,
    issuers: HashMap<String, IssuerInfo>,
    admin_token: Vec<u8>,
    feed_token: Option<Vec<u8>>,
    max_sessions: Option<usize>,
    /// Largest admin batch body (`limits.max_body_bytes`).
    max_batch_body: usize,
    /// `limits.body_read_timeout`: the longest wait for the next bytes of
    /// a request body.
    body_read_timeout: Duration,
    /// The newest change-log position known; long-polls wait on it.
    seq: Arc<watch::Sender<Pos>>,
    /// The gateways reading the feed and what each has applied.
    gateways: Gateways,
    commits: Arc<Commits>,
    /// An embedded authority's own gateway: every write is answered only
    /// once that gateway enforces it (read your writes on one host).
    local_gateway: Option<String>,
}

/// How long an embedded authority's answer waits for its own gateway.
const LOCAL_WAIT: Duration = Duration::from_secs(2);

type Resp = Response<ProxyBody>;

fn json_resp(status: StatusCode, v: &Value) -> Resp {
    let mut r = Response::new(
        Full::new(Bytes::from(v.to_string()))
            .map_err(|n| match n {})
            .boxed(),
    );
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

impl Api {
    /// `local_gateway`: the name of the gateway in this process, when the
    /// authority is embedded.
    pub async fn new(
        cfg: &AuthorityConfig,
        loaded: &LoadedConfig,
        internal_feed_token: Option<Vec<u8>>,
        local_gateway: Option<String>,
    ) -> anyhow::Result<Api> {
        let store = Backend::open(cfg, loaded).await?;
        let seq = Arc::new(watch::channel(Pos::default()).0);
        let commits = Arc::new(Commits::default());
        store.follow(&seq, commits.clone()).await?;
        let gateways = Gateways::open(&store, cfg.gateways.clone(), commits.clone()).await?;
        let issuers = loaded
            .config
            .issuers
            .iter()
            .map(|i| {
                (
                    i.value.issuer.clone(),
                    IssuerInfo {
                        max_lifetime: (i.value.max_token_lifetime.as_secs() as i64)
                            .saturating_add(leeway_hold(i.value.leeway)),
                        leeway_hold: leeway_hold(i.value.leeway),
                        backchannel: i.value.backchannel_logout,
                        clients: i.value.logout_audiences.clone(),
                    },
                )
            })
            .collect();
        let logout_verifier = if loaded
            .config
            .issuers
            .iter()
            .any(|i| !i.value.logout_audiences.is_empty())
        {
            let mut l = loaded.clone();
            for i in &mut l.config.issuers {
                if !i.value.logout_audiences.is_empty() {
                    i.value.audiences = i.value.logout_audiences.clone();
                }
            }
            Some(Verifier::from_config(&l).await?)
        } else {
            None
        };
        Ok(Api {
            store,
            verifier: Verifier::from_config(loaded).await?,
            logout_verifier,
            logout_max_age: cfg.logout_token_max_age.as_secs() as i64,
            issuers,
            admin_token: cfg.admin_token.read(loaded)?,
            feed_token: match &cfg.feed_token {
                Some(t) => Some(t.read(loaded)?),
                None => internal_feed_token,
            },
            max_sessions: cfg.max_sessions_per_subject,
            max_batch_body: usize::try_from(cfg.limits.max_body_bytes).unwrap_or(usize::MAX),
            body_read_timeout: cfg.limits.body_read_timeout,
            seq,
            gateways,
            commits,
            local_gateway,
        })
    }

    pub fn store_name(&self, cfg: &AuthorityConfig, loaded: &LoadedConfig) -> String {
        self.store.describe(cfg, loaded)
    }

    pub fn spawn_purger(self: Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(&self);
        let ticker = weak.clone();
        drop(self);
        // The gateway table's gauges, once a second.
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let Some(api) = ticker.upgrade() else { return };
                api.gateways.tick(&api.store).await;
            }
        });
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(api) = weak.upgrade() else { return };
                match api.store.purge(now_unix()).await {
                    Ok(n) if n > 0 => {
                        tracing::info!(purged = n, "expired revocations forgotten")
                    }
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %format!("{e:#}"), "purge failed"),
                }
            }
        });
    }

    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Resp {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let resp = self.route(req, peer, &method, &path).await;
        tracing::info!(target: "gatehouse::authority", method = %method, path = %path, status = resp.status().as_u16(), peer = %peer.ip());
        resp
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
        method: &Method,
        path: &str,
    ) -> Resp {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            (&Method::GET, ["healthz"]) => self.healthz().await,
            (&Method::GET, ["v1", "status"]) => match self.authorize(&req, false) {
                Ok(()) => self.status().await,
                Err(r) => r.into(),
            },
            (&Method::GET, ["v1", "feed"]) => match self.authorize(&req, true) {
                Ok(()) => self.feed(&req, peer).await,
                Err(r) => r.into(),
            },
            (&Method::GET, ["v1", "gateways"]) => match self.authorize(&req, false) {
                Ok(()) => self.gateway_table().await,
                Err(r) => r.into(),
            },
            (&Method::DELETE, ["v1", "gateways", name]) => match self.authorize(&req, false) {
                Ok(()) => self.forget_gateway(name, peer).await,
                Err(r) => r.into(),
            },
            (&Method::GET, ["metrics"]) => match self.authorize(&req, false) {
                Ok(()) => self.metrics().await,
                Err(r) => r.into(),
            },
            (&Method::POST, ["v1", "logout"]) => self.logout(req).await,
            (&Method::POST, ["v1", "login"]) => self.login(req).await,
            (&Method::POST, ["backchannel-logout"]) => self.backchannel_logout(req).await,
            (_, ["v1", "revocations", ..]) | (_, ["v1", "sessions"]) => {
                if let Err(r) = self.authorize(&req, false) {
                    return r.into();
                }
                match (method, segments.as_slice()) {
                    (&Method::POST, ["v1", "revocations"]) => self.create(req).await,
                    (&Method::GET, ["v1", "revocations"]) => self.list(&req).await,
                    (&Method::GET, ["v1", "revocations", id]) => self.get(&req, id).await,
                    (&Method::DELETE, ["v1", "revocations", id]) => {
                        self.delete(&req, id, peer).await
                    }
                    (&Method::POST, ["v1", "sessions"]) => self.session(req).await,
                    _ => Refusal::MethodNotAllowed.into(),
                }
            }
            _ => Refusal::NotFound("no such endpoint").into(),
        }
    }

    /// Admin (or, for the feed, the feed token): compared in constant time.
    /// No credentials: 401. Wrong credentials: 403.
    fn authorize(&self, req: &Request<Incoming>, feed: bool) -> Result<(), Refusal> {
        let presented = match gatehouse_core::auth::bearer(req.headers()) {
            Bearer::Token(t) => t.as_bytes(),
            _ => return Err(Refusal::NoCredentials),
        };
        let ok = |secret: &[u8]| bool::from(presented.ct_eq(secret));
        // Each endpoint its own credential: the feed takes only the feed
        // token (configured, or an embedded authority's internal one) and
        // the admin API only the admin token. Without a feed token the
        // feed is closed: a gateway's credential must never write.
        let allowed = if feed {
            self.feed_token.as_deref().is_some_and(ok)
        } else {
            ok(&self.admin_token)
        };
        if allowed {
            Ok(())
        } else {
            Err(Refusal::Forbidden)
        }
    }

    async fn put(
        &self,
        news: Vec<NewRevocation>,
    ) -> anyhow::Result<(Vec<(Revocation, PutOutcome)>, Pos)> {
        let (results, seq) = self.store.put(news).await?;
        self.advance(seq);
        Ok((results, seq))
    }

    fn advance(&self, seq: Pos) {
        // Redis positions carry their commit time; embedded ones are now.
        let at = if seq.0 > 0 {
            seq.0 as i64
        } else {
            now_unix_ms()
        };
        self.commits.record(seq, at);
        self.seq.send_if_modified(|cur| {
            let newer = seq > *cur;
            *cur = (*cur).max(seq);
            newer
        });
    }
}

/// The whole body, up to `limit` bytes. A declared `Content-Length` over
/// the limit is refused before anything is read (RFC 9110 §15.5.14, 413);
/// so is a body that grows past it. Either way hyper then closes the
/// connection rather than reading the rest. A body whose next bytes take
/// longer than `gap` (`limits.body_read_timeout`) is answered 408, and so
/// is a small one (`limit` of [`SMALL_BODY`]: logouts, sessions, open to
/// anyone) not whole within `gap`: trickled a byte at a time it would
/// otherwise hold its connection, never idle, for hours. A body cut short
/// or badly framed is the client's malformed request (400).
async fn read_body(req: Request<Incoming>, limit: usize, gap: Duration) -> Result<Bytes, Refusal> {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(Refusal::TooLarge);
    }
    let (body, _) = gatehouse_core::body::ClientBody::new(req.into_body(), gap);
    let whole = if limit <= SMALL_BODY {
        gap
    } else {
        Duration::MAX
    };
    let read = Limited::new(body, limit).collect();
    match tokio::time::timeout(whole, read).await {
        Err(_) => Err(Refusal::RequestTimeout),
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if gatehouse_core::body::stalled(&*e) => Err(Refusal::RequestTimeout),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Refusal::TooLarge),
        Ok(Err(_)) => Err(Refusal::BadRequest(
            "the request body could not be read".into(),
        )),
    }
}

fn query<B>(req: &Request<B>) -> HashMap<String, String> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

fn form_field(body: &[u8], name: &str) -> Option<String> {
    form_urlencoded::parse(body)
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A token in a JSON body `{"token": ...}` or a form body `token=...`.
fn token_from_body(body: &[u8], name: &str) -> Option<String> {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        return v.get(name).and_then(Value::as_str).map(str::to_owned);
    }
    form_field(body, name)
}
