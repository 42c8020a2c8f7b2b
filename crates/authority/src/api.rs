//! The authority's HTTP API.
//!
//! | call | who | what |
//! |---|---|---|
//! | `POST /v1/revocations` | admin | one revocation or a batch |
//! | `GET /v1/revocations/{id}` | admin | one entry |
//! | `DELETE /v1/revocations/{id}` | admin | un-revoke (audited) |
//! | `GET /v1/revocations?subject=` | admin | entries for a subject |
//! | `POST /v1/sessions` | admin (login service) | a new session; enforces the session limit |
//! | `POST /v1/logout` | the token itself | revoke its `jti`/`sid`; always 200 for a genuine token |
//! | `POST /backchannel-logout` | the identity provider (signed logout token) | OIDC Back-Channel Logout 1.0 |
//! | `GET /v1/feed?since=&wait=` | feed token only (never the admin token) | changes since a cursor, or a snapshot |
//! | `GET /v1/status` | admin | entry count and cursor |
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

use crate::backend::Backend;
use crate::records::{push_line, NewRevocation, Pos, PutOutcome};
use gatehouse_core::auth::{Bearer, Identity, Verifier};
use gatehouse_core::body::{BoxError, ProxyBody};
use gatehouse_core::clock::now_unix;
use gatehouse_core::config::{AuthorityConfig, BackchannelScope, LoadedConfig};
use gatehouse_core::revocation::{covers, keys_of, FeedMarker, Kind, Revocation};

/// Bodies of logout, back-channel logout and session calls: a token or a
/// logout token is a few KiB. Logout is unauthenticated until its token is
/// verified, so an unfinished large body must cost nothing.
const SMALL_BODY: usize = 64 * 1024;
/// Longest long-poll a client may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// Changes sent in one incremental response; a client further behind
/// simply asks again with the new cursor.
const MAX_CHANGES: usize = 50_000;

struct IssuerInfo {
    max_lifetime: i64,
    backchannel: BackchannelScope,
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
    /// The newest change-log position known; long-polls wait on it.
    seq: Arc<watch::Sender<Pos>>,
}

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

fn error(status: StatusCode, code: &str, description: &str) -> Resp {
    json_resp(
        status,
        &json!({"error": code, "error_description": description}),
    )
}

/// A refusal before any store work; small, so `Result`s stay cheap.
struct ApiError(StatusCode, &'static str, String);

impl ApiError {
    fn bad(description: &str) -> ApiError {
        ApiError(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            description.to_owned(),
        )
    }

    fn resp(self) -> Resp {
        error(self.0, self.1, &self.2)
    }
}

fn internal(e: anyhow::Error) -> Resp {
    tracing::error!(error = %format!("{e:#}"), "authority store failure");
    // Never acknowledge what could not be kept.
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "temporarily_unavailable",
        "the store cannot be written or read",
    )
}

/// A new revocation as the admin API takes it.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RevocationRequest {
    #[serde(default)]
    issuer: Option<String>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    sid: Option<String>,
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    client_id: Option<String>,
    /// Unix seconds; for `sub`/`client_id`, default now.
    #[serde(default)]
    before: Option<i64>,
    #[serde(default)]
    reason: Option<String>,
    /// Unix seconds; capped at what the issuer's token lifetime allows.
    #[serde(default)]
    expires_at: Option<i64>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(RevocationRequest),
    Many(Vec<RevocationRequest>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SessionRequest {
    #[serde(default)]
    issuer: Option<String>,
    sub: String,
    sid: String,
    #[serde(default)]
    started_at: Option<i64>,
}

impl Api {
    pub async fn new(
        cfg: &AuthorityConfig,
        loaded: &LoadedConfig,
        internal_feed_token: Option<Vec<u8>>,
    ) -> anyhow::Result<Api> {
        let store = Backend::open(cfg, loaded).await?;
        let seq = Arc::new(watch::channel(Pos::default()).0);
        store.follow(&seq).await?;
        let issuers = loaded
            .config
            .issuers
            .iter()
            .map(|i| {
                (
                    i.value.issuer.clone(),
                    IssuerInfo {
                        max_lifetime: i.value.max_token_lifetime.as_secs() as i64,
                        backchannel: i.value.backchannel_logout,
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
            seq,
        })
    }

    pub fn store_name(&self, cfg: &AuthorityConfig, loaded: &LoadedConfig) -> String {
        self.store.describe(cfg, loaded)
    }

    pub fn spawn_purger(self: Arc<Self>, every: Duration) {
        let weak = Arc::downgrade(&self);
        drop(self);
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
                Err(r) => *r,
            },
            (&Method::GET, ["v1", "feed"]) => match self.authorize(&req, true) {
                Ok(()) => self.feed(&req).await,
                Err(r) => *r,
            },
            (&Method::POST, ["v1", "logout"]) => self.logout(req).await,
            (&Method::POST, ["backchannel-logout"]) => self.backchannel_logout(req).await,
            (_, ["v1", "revocations", ..]) | (_, ["v1", "sessions"]) => {
                if let Err(r) = self.authorize(&req, false) {
                    return *r;
                }
                match (method, segments.as_slice()) {
                    (&Method::POST, ["v1", "revocations"]) => self.create(req).await,
                    (&Method::GET, ["v1", "revocations"]) => self.list(&req).await,
                    (&Method::GET, ["v1", "revocations", id]) => self.get(id).await,
                    (&Method::DELETE, ["v1", "revocations", id]) => self.delete(id, peer).await,
                    (&Method::POST, ["v1", "sessions"]) => self.session(req).await,
                    _ => error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "invalid_request",
                        "method not allowed",
                    ),
                }
            }
            _ => error(StatusCode::NOT_FOUND, "not_found", "no such endpoint"),
        }
    }

    /// Admin (or, for the feed, the feed token): compared in constant time.
    /// No credentials: 401. Wrong credentials: 403.
    fn authorize(&self, req: &Request<Incoming>, feed: bool) -> Result<(), Box<Resp>> {
        let presented = match gatehouse_core::auth::bearer(req.headers()) {
            Bearer::Token(t) => t.as_bytes(),
            _ => {
                let mut r = error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_request",
                    "admin token required",
                );
                r.headers_mut().insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"gatehouse-authority\""),
                );
                return Err(Box::new(r));
            }
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
            Err(Box::new(error(
                StatusCode::FORBIDDEN,
                "forbidden",
                "token not accepted",
            )))
        }
    }

    fn issuer_for(&self, requested: Option<String>) -> Result<(String, i64), ApiError> {
        let iss = match requested {
            Some(i) => i,
            None if self.issuers.len() == 1 => {
                self.issuers.keys().next().cloned().unwrap_or_default()
            }
            None => return Err(ApiError::bad("issuer is required")),
        };
        match self.issuers.get(&iss) {
            Some(info) => Ok((iss, info.max_lifetime)),
            None => Err(ApiError::bad("unknown issuer")),
        }
    }

    fn to_new(&self, r: RevocationRequest, now: i64) -> Result<NewRevocation, ApiError> {
        let (issuer, max_lifetime) = self.issuer_for(r.issuer)?;
        let bad = ApiError::bad;
        let (kind, value) = match (r.jti, r.sid, r.sub, r.client_id) {
            (Some(v), None, None, None) => (Kind::Jti, v),
            (None, Some(v), None, None) => (Kind::Sid, v),
            (None, None, Some(v), None) => (Kind::Sub, v),
            (None, None, None, Some(v)) => (Kind::Client, v),
            _ => return Err(bad("give exactly one of jti, sid, sub, client_id")),
        };
        if value.is_empty() || value.len() > 1024 {
            return Err(bad("value must be 1 to 1024 bytes"));
        }
        let before = if kind.has_before() {
            // Default: every token issued up to and including this second.
            let b = r.before.unwrap_or(now + 1);
            if b > now + 300 {
                return Err(bad("before may not be more than 5 minutes ahead"));
            }
            Some(b)
        } else if r.before.is_some() {
            return Err(bad("before applies to sub and client_id only"));
        } else {
            None
        };
        // No token it matches outlives the issuer's longest lifetime.
        let cap = before.unwrap_or(now) + max_lifetime;
        let expires_at = r.expires_at.map_or(cap, |e| e.min(cap));
        if expires_at <= now {
            return Err(bad("expires_at is in the past"));
        }
        let reason = r.reason.unwrap_or_else(|| "forced_logout".to_owned());
        if reason.is_empty() || reason.len() > 200 {
            return Err(bad("reason must be 1 to 200 bytes"));
        }
        Ok(NewRevocation {
            issuer,
            kind,
            value,
            before,
            reason,
            created_at: now,
            expires_at,
        })
    }

    async fn put(&self, news: Vec<NewRevocation>) -> anyhow::Result<Vec<(Revocation, PutOutcome)>> {
        let (results, seq) = self.store.put(news).await?;
        self.advance(seq);
        Ok(results)
    }

    fn advance(&self, seq: Pos) {
        self.seq.send_if_modified(|cur| {
            let newer = seq > *cur;
            *cur = (*cur).max(seq);
            newer
        });
    }

    async fn create(&self, req: Request<Incoming>) -> Resp {
        let body = match read_body(req, self.max_batch_body).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let parsed: OneOrMany = match serde_json::from_slice(&body) {
            Ok(p) => p,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    &format!("bad JSON: {e}"),
                )
            }
        };
        let list = match parsed {
            OneOrMany::One(r) => vec![r],
            OneOrMany::Many(v) => v,
        };
        let now = now_unix();
        let mut news = Vec::with_capacity(list.len());
        for r in list {
            match self.to_new(r, now) {
                Ok(n) => news.push(n),
                Err(e) => return e.resp(),
            }
        }
        match self.put(news).await {
            Ok(results) => {
                let created = results.iter().any(|(_, o)| *o != PutOutcome::Unchanged);
                let items: Vec<Value> = results
                    .into_iter()
                    .map(|(r, o)| {
                        let mut v = json!(r);
                        v["outcome"] = json!(o);
                        v
                    })
                    .collect();
                let status = if created {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                };
                json_resp(status, &json!({ "revocations": items }))
            }
            Err(e) => internal(e),
        }
    }

    async fn get(&self, id: &str) -> Resp {
        let Ok(id) = id.parse::<u64>() else {
            return error(StatusCode::NOT_FOUND, "not_found", "no such revocation");
        };
        match self.store.get(id).await {
            Ok(Some(r)) => json_resp(StatusCode::OK, &json!(r)),
            Ok(None) => error(StatusCode::NOT_FOUND, "not_found", "no such revocation"),
            Err(e) => internal(e),
        }
    }

    async fn delete(&self, id: &str, peer: SocketAddr) -> Resp {
        let Ok(id) = id.parse::<u64>() else {
            return error(StatusCode::NOT_FOUND, "not_found", "no such revocation");
        };
        let actor = format!("admin@{}", peer.ip());
        match self.store.delete(id, actor.clone()).await {
            Ok(Some((r, seq))) => {
                tracing::warn!(target: "gatehouse::audit", id, actor = %actor, kind = r.kind.as_str(), issuer = %r.issuer, "revocation removed");
                self.advance(seq);
                json_resp(StatusCode::OK, &json!({ "deleted": r }))
            }
            Ok(None) => error(StatusCode::NOT_FOUND, "not_found", "no such revocation"),
            Err(e) => internal(e),
        }
    }

    async fn list(&self, req: &Request<Incoming>) -> Resp {
        let q = query(req);
        let subject = q.get("subject").cloned();
        let limit = q
            .get("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(1000usize)
            .min(10_000);
        match self.store.list(subject, limit).await {
            Ok(list) => json_resp(StatusCode::OK, &json!({ "revocations": list })),
            Err(e) => internal(e),
        }
    }

    async fn session(&self, req: Request<Incoming>) -> Resp {
        let body = match read_body(req, SMALL_BODY).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let s: SessionRequest = match serde_json::from_slice(&body) {
            Ok(s) => s,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "invalid_request",
                    &format!("bad JSON: {e}"),
                )
            }
        };
        let (issuer, max_lifetime) = match self.issuer_for(s.issuer) {
            Ok(x) => x,
            Err(e) => return e.resp(),
        };
        let Some(limit) = self.max_sessions else {
            return json_resp(StatusCode::OK, &json!({ "replaced": [] }));
        };
        let started = s.started_at.unwrap_or_else(now_unix);
        let (sub, sid) = (s.sub, s.sid);
        match self
            .store
            .report_session(issuer, sub, sid, started, limit, max_lifetime, now_unix())
            .await
        {
            Ok((revoked, seq)) => {
                self.advance(seq);
                let sids: Vec<&str> = revoked.iter().map(|r| r.value.as_str()).collect();
                json_resp(StatusCode::OK, &json!({ "replaced": sids }))
            }
            Err(e) => internal(e),
        }
    }

    /// Logout with the token itself as the credential. A genuine token of a
    /// configured issuer always gets 200, whether it is live (`revoked`) or
    /// already expired or revoked (`already_revoked`), so a client can
    /// always clear a dead session.
    async fn logout(&self, req: Request<Incoming>) -> Resp {
        let header_token = match gatehouse_core::auth::bearer(req.headers()) {
            Bearer::Token(t) => Some(t.to_owned()),
            _ => None,
        };
        let token = match header_token {
            Some(t) => t,
            None => {
                let body = match read_body(req, SMALL_BODY).await {
                    Ok(b) => b,
                    Err(r) => return r,
                };
                match token_from_body(&body, "token") {
                    Some(t) => t,
                    None => {
                        return error(
                            StatusCode::BAD_REQUEST,
                            "invalid_request",
                            "a token is required",
                        )
                    }
                }
            }
        };
        let id = match self.verifier.verify_any_age(&token).await {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(target: "gatehouse::authority", reason = e.description(), "logout refused");
                return error(StatusCode::UNAUTHORIZED, "invalid_token", e.description());
            }
        };
        let now = now_unix();
        let expired = id.expires_at.is_some_and(|e| e <= now);
        let max_lifetime = self
            .issuers
            .get(&*id.iss)
            .map_or(86_400, |i| i.max_lifetime);
        let already = match already_revoked(&self.store, &id).await {
            Ok(a) => a,
            Err(e) => return internal(e),
        };
        let mut news = Vec::new();
        let entry = |kind, value: &str, expires_at| NewRevocation {
            issuer: id.iss.to_string(),
            kind,
            value: value.to_owned(),
            before: kind_before(kind, &id),
            reason: "logout".to_owned(),
            created_at: now,
            expires_at,
        };
        if let Some(jti) = &id.jti {
            let exp = id.expires_at.unwrap_or(now + max_lifetime);
            if exp > now {
                news.push(entry(Kind::Jti, jti, exp.min(now + max_lifetime)));
            }
        }
        if let Some(sid) = &id.sid {
            news.push(entry(Kind::Sid, sid, now + max_lifetime));
        }
        if id.jti.is_none() && id.sid.is_none() && !expired {
            // Nothing names this token alone: end every token of the
            // subject issued up to this one.
            if let Some(sub) = &id.subject {
                news.push(entry(
                    Kind::Sub,
                    sub,
                    id.issued_at.unwrap_or(now) + 1 + max_lifetime,
                ));
            }
        }
        let created = if news.is_empty() {
            false
        } else {
            match self.put(news).await {
                Ok(results) => results.iter().any(|(_, o)| *o != PutOutcome::Unchanged),
                Err(e) => return internal(e),
            }
        };
        let status = if !expired && !already && created {
            "revoked"
        } else {
            "already_revoked"
        };
        json_resp(StatusCode::OK, &json!({ "status": status }))
    }

    /// OIDC Back-Channel Logout 1.0 §2.5–2.8: a signed logout token naming
    /// a session (`sid`) and/or a subject (`sub`). Beyond §2.6's checks: a
    /// `typ` header, if present, must be `logout+jwt` (§2.4, RFC 8725
    /// §3.11); `iat` older than `logout_token_max_age` is refused; each
    /// `jti` is accepted once (remembered until `exp`, or for the max age;
    /// on Redis, across replicas); a subject is logged out up to the
    /// token's `iat`, never "now", so a replayed or late token cannot end a
    /// session that started after the logout. Every refusal is logged with
    /// its reason (never the token).
    async fn backchannel_logout(&self, req: Request<Incoming>) -> Resp {
        let refuse = |reason: &str| {
            tracing::warn!(target: "gatehouse::authority", reason, "back-channel logout refused");
            error(StatusCode::BAD_REQUEST, "invalid_request", reason)
        };
        let body = match read_body(req, SMALL_BODY).await {
            Ok(b) => b,
            Err(r) => {
                tracing::warn!(target: "gatehouse::authority", reason = "body too large or unreadable", "back-channel logout refused");
                return r;
            }
        };
        let Some(token) = form_field(&body, "logout_token") else {
            return refuse("logout_token is required");
        };
        let verifier = self.logout_verifier.as_ref().unwrap_or(&self.verifier);
        let id = match verifier.verify_logout_token(&token).await {
            Ok(id) => id,
            Err(e) => return refuse(e.description()),
        };
        let now = now_unix();
        // `verify_logout_token` checked the token's kind (typ, events, no
        // nonce, sid or sub); what is left is the authority's own policy:
        // one use per jti, and an age limit.
        let exp = id.expires_at;
        let problem = if id.jti.is_none() {
            Some("logout token lacks jti")
        } else if exp.is_some_and(|e| e + 60 < now) {
            Some("logout token has expired")
        } else {
            match id.issued_at {
                None => Some("logout token lacks iat"),
                Some(iat) if iat > now + 60 => Some("logout token issued in the future"),
                Some(iat) if now - iat > self.logout_max_age => {
                    Some("logout token is older than logout_token_max_age")
                }
                Some(_) => None,
            }
        };
        if let Some(p) = problem {
            return refuse(p);
        }
        let (Some(iat), Some(jti)) = (id.issued_at, id.jti.as_deref()) else {
            return refuse("logout token lacks iat or jti");
        };
        let info = self.issuers.get(&*id.iss);
        let max_lifetime = info.map_or(86_400, |i| i.max_lifetime);
        let scope = info.map_or(BackchannelScope::Subject, |i| i.backchannel);
        // Replays are refused for as long as the token could be accepted.
        let until = exp
            .unwrap_or(iat + self.logout_max_age)
            .max(iat + self.logout_max_age)
            + 60;
        let replay_key = format!("{}\u{0}{jti}", id.iss);
        match self
            .store
            .remember_logout(replay_key.clone(), until, now)
            .await
        {
            Ok(true) => {}
            Ok(false) => return refuse("logout token replayed (jti already used)"),
            Err(e) => return internal(e),
        }
        let entry = |kind: Kind, value: &str, before: Option<i64>| NewRevocation {
            issuer: id.iss.to_string(),
            kind,
            value: value.to_owned(),
            before,
            reason: "logout".into(),
            created_at: now,
            expires_at: before.unwrap_or(now) + max_lifetime,
        };
        let mut news = Vec::new();
        if let Some(sid) = &id.sid {
            news.push(entry(Kind::Sid, sid, None));
        }
        // Tokens issued at or before the logout token: `iat < before`.
        if let Some(sub) = &id.subject {
            if id.sid.is_none() || scope == BackchannelScope::Subject {
                news.push(entry(Kind::Sub, sub, Some(iat + 1)));
            }
        }
        match self.put(news).await {
            Ok(_) => json_resp(StatusCode::OK, &json!({})),
            Err(e) => {
                // Not kept: the identity provider's retry must not be
                // refused as a replay.
                if let Err(f) = self.store.forget_logout(replay_key).await {
                    tracing::error!(error = %format!("{f:#}"), "cannot forget a logout token id");
                }
                internal(e)
            }
        }
    }

    /// Liveness for anyone: "ok" when the store answers, nothing more
    /// (entry counts and the cursor are behind the admin token, `/v1/status`).
    async fn healthz(&self) -> Resp {
        match self.store.current().await {
            Ok(_) => json_resp(StatusCode::OK, &json!({"status": "ok"})),
            Err(e) => internal(e),
        }
    }

    /// Entry count and cursor, for admins.
    async fn status(&self) -> Resp {
        let state = async {
            Ok::<_, anyhow::Error>((self.store.len().await?, self.store.current().await?))
        };
        match state.await {
            Ok((n, seq)) => json_resp(
                StatusCode::OK,
                &json!({"status": "ok", "entries": n, "cursor": self.store.cursor(seq)}),
            ),
            Err(e) => internal(e),
        }
    }

    /// Changes since the cursor (waiting up to `wait` for the first one),
    /// or the whole set when the cursor is missing, foreign or too old.
    /// Streamed as JSON lines (see `revocation::model`).
    async fn feed(&self, req: &Request<Incoming>) -> Resp {
        let q = query(req);
        let wait = q
            .get("wait")
            .and_then(|w| humantime::parse_duration(w).ok())
            .unwrap_or(Duration::ZERO)
            .min(MAX_WAIT);
        let since = match q.get("since") {
            Some(c) => self.store.parse_cursor_fresh(c).await.map(|p| {
                // Epochs are hex: the cursor's epoch ends at its first `-`.
                let epoch = c.split('-').next().unwrap_or_default().to_owned();
                (p, epoch)
            }),
            None => None,
        };
        if let Some((since, epoch)) = since {
            let mut rx = self.seq.subscribe();
            if *rx.borrow() <= since && !wait.is_zero() {
                let _ = tokio::time::timeout(wait, rx.wait_for(|s| *s > since)).await;
            }
            match self.store.changes_since(since, epoch, MAX_CHANGES).await {
                Ok(Some((changes, upto))) => {
                    let cursor = self.store.cursor(upto);
                    let mut out = Vec::with_capacity(64 + changes.len() * 200);
                    push_line(
                        &mut out,
                        &FeedMarker::Changes {
                            cursor: cursor.clone(),
                        },
                    );
                    for c in &changes {
                        push_line(&mut out, c);
                    }
                    push_line(&mut out, &FeedMarker::End { cursor });
                    return ndjson(Full::new(Bytes::from(out)).map_err(|n| match n {}).boxed());
                }
                Ok(None) => {}
                Err(e) => return internal(e),
            }
        }
        self.snapshot_stream()
    }

    /// Streams the snapshot through a bounded channel in ~64 KiB chunks:
    /// a million entries never sit in one buffer.
    fn snapshot_stream(&self) -> Resp {
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        self.store.snapshot(tx);
        ndjson(ChannelBody(rx).boxed())
    }
}

fn ndjson(body: ProxyBody) -> Resp {
    let mut r = Response::new(body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

/// Whether the token is already dead by an existing entry.
async fn already_revoked(s: &Backend, id: &Identity) -> anyhow::Result<bool> {
    for (kind, key) in keys_of(id) {
        let Some(key) = key else { continue };
        if let Some(r) = s.get_by_key(&id.iss, kind, key).await? {
            if covers(kind, r.before, id.issued_at) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn kind_before(kind: Kind, id: &Identity) -> Option<i64> {
    kind.has_before()
        .then(|| id.issued_at.unwrap_or_else(now_unix) + 1)
}

/// The whole body, up to `limit` bytes. A declared `Content-Length` over
/// the limit is refused before anything is read (RFC 9110 §15.5.14, 413);
/// so is a body that grows past it. Either way hyper then closes the
/// connection rather than reading the rest.
async fn read_body(req: Request<Incoming>, limit: usize) -> Result<Bytes, Resp> {
    let too_large = || {
        error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "invalid_request",
            "body too large or unreadable",
        )
    };
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    match Limited::new(req.into_body(), limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(_) => Err(too_large()),
    }
}

fn query(req: &Request<Incoming>) -> HashMap<String, String> {
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

/// A response body fed by a channel (the snapshot writer).
struct ChannelBody(mpsc::Receiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0.poll_recv(cx).map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}
