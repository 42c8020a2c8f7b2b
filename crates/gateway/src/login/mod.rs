//! Browser login: the gateway as an OpenID Connect relying party.
//!
//! - A page navigation without a session on a `login` route is sent to the
//!   provider with the authorization code flow (OpenID Connect Core 1.0
//!   §3.1), PKCE S256 (RFC 7636), `state` and `nonce`, bound to this
//!   browser by a short-lived sealed cookie.
//! - The callback exchanges the code, checks the ID token (§3.1.3.7) and
//!   starts a session: a sealed `__Host-` cookie ([`cookie`]).
//! - Every later request carrying the session goes through the same policy
//!   as a bearer token (the proxy's policy): revocation by `sid`, by
//!   subject or client before the login time, `require`, identity headers.
//! - Logout (`POST`, same-origin only) ends the session at the authority,
//!   so every gateway refuses it, then sends the browser to the provider's
//!   end-session endpoint (OpenID Connect RP-Initiated Logout 1.0 §2).
//!
//! Nothing here is on the bearer-token path; the session's own hot path is
//! [`Login::session`], a per-thread memo hit for a cookie seen before.

pub mod cookie;

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::revocation::Revocations;
use cookie::{Purpose, Sealer};
use gatehouse_core::auth::jwks::ProviderMetadata;
use gatehouse_core::auth::jwt::{recent, Cached};
use gatehouse_core::auth::{Identity, Verifier};
use gatehouse_core::body::ProxyBody;
use gatehouse_core::config::{Algorithm, LoadedConfig, LoginConfig, SessionsConfig};

/// How long a login may take, provider pages included, before its cookie
/// (and so its `state`) is gone.
const LOGIN_TTL: i64 = 600;
/// Longest wait for the token endpoint or the authority.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest token endpoint answer read.
const MAX_TOKEN_RESPONSE: usize = 64 * 1024;

/// The browser sessions of every login route: the cookie keys and
/// lifetimes (`sessions`), shared by the routes of one config.
pub struct Sessions {
    sealer: Sealer,
    /// `absolute_lifetime`, seconds.
    absolute: i64,
    /// `idle_timeout`, seconds.
    idle: i64,
    /// The session cookie is sealed again (its idle clock restarted) once
    /// it is this old: idle/4, at most 5 minutes.
    refresh_after: i64,
    /// This config's entries in the per-thread memo.
    memo: u64,
}

impl Sessions {
    pub fn from_config(cfg: &SessionsConfig, loaded: &LoadedConfig) -> anyhow::Result<Self> {
        let secrets = cfg
            .keys
            .iter()
            .map(|k| k.read(loaded))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let idle = cfg.idle_timeout.as_secs().max(1) as i64;
        Ok(Sessions {
            sealer: Sealer::new(&secrets)?,
            absolute: cfg.absolute_lifetime.as_secs().max(1) as i64,
            idle,
            refresh_after: (idle / 4).clamp(1, 300),
            memo: recent::next_owner(),
        })
    }
}

/// What a session cookie holds (JSON, then sealed). Times are Unix
/// seconds.
#[derive(Serialize, Deserialize)]
struct Session {
    v: u8,
    /// The provider's `iss`.
    iss: String,
    sub: String,
    #[serde(default)]
    sid: Option<String>,
    /// The client the login was made for (`client_id`).
    cid: String,
    /// Login time: the ID token's `iat`. A revocation of the subject or the
    /// client "before T" covers the session when this is before T.
    auth: i64,
    /// Absolute end.
    exp: i64,
    /// When this cookie was sealed (the idle clock runs from here).
    seen: i64,
    /// Claims beyond the ID token's (`scope` as granted). Identity headers
    /// and `require` read these and the ID token's own claims, which are
    /// not stored twice: the cookie stays small, and a memo hit compares
    /// fewer bytes.
    claims: Map<String, Value>,
    /// The ID token: `id_token_hint` at logout, and the credential that
    /// ends the session at the authority.
    idt: String,
}

/// A login in progress (the login cookie's content).
#[derive(Serialize, Deserialize)]
struct Pending {
    state: String,
    nonce: String,
    verifier: String,
    /// Path and query to return to: always a path on this origin.
    back: String,
    /// The redirect URI sent (it must be sent again, exactly).
    redirect_uri: String,
    at: i64,
}

enum ClientAuth {
    /// `client_secret_basic` (RFC 6749 §2.3.1).
    Secret(Vec<u8>),
    /// `private_key_jwt` (OpenID Connect Core 1.0 §9, RFC 7523 §2.2).
    PrivateKeyJwt {
        key: jsonwebtoken::EncodingKey,
        alg: jsonwebtoken::Algorithm,
        kid: Option<String>,
    },
}

/// One route's login.
pub struct Login {
    /// The issuer's configured name, and its `iss`.
    issuer: Arc<str>,
    iss: Arc<str>,
    client_id: String,
    client_auth: ClientAuth,
    scopes: String,
    pub callback_path: String,
    pub logout_path: String,
    post_logout_redirect_uri: Option<String>,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
    end_session_endpoint: Option<String>,
    client: gatehouse_core::httpclient::PostClient,
    sessions: Arc<Sessions>,
}

/// The step of a login a request asked for, found by the policy.
#[derive(Debug)]
pub enum Step {
    /// A page navigation without a (live) session: off to the provider.
    /// `back`: the path and query to return to.
    Start {
        back: String,
        clear: bool,
    },
    Callback,
    Logout,
}

/// Everything a login step needs from the policy's reading of the request.
#[derive(Debug)]
pub struct StepRequest {
    pub login: Arc<Login>,
    pub step: Step,
    /// `https://host[:port]` as the client reached us: the origin of the
    /// redirect URI and the origin a logout must come from.
    pub origin: String,
}

impl std::fmt::Debug for Login {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Login")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .finish_non_exhaustive()
    }
}

impl Login {
    pub fn from_config(
        cfg: &LoginConfig,
        loaded: &LoadedConfig,
        sessions: Arc<Sessions>,
    ) -> anyhow::Result<Self> {
        let issuer = loaded
            .config
            .issuers
            .iter()
            .map(|i| &i.value)
            .find(|i| i.display_name() == cfg.issuer)
            .ok_or_else(|| anyhow::anyhow!("login: unknown issuer `{}`", cfg.issuer))?;
        let client_auth = match (&cfg.client_secret, &cfg.private_key_jwt) {
            (Some(s), None) => ClientAuth::Secret(s.read(loaded)?),
            (None, Some(k)) => {
                let pem = std::fs::read(loaded.resolve(&k.key_file))?;
                let (key, alg) = match k.alg {
                    Algorithm::ES256 => (
                        jsonwebtoken::EncodingKey::from_ec_pem(&pem)?,
                        jsonwebtoken::Algorithm::ES256,
                    ),
                    Algorithm::PS256 => (
                        jsonwebtoken::EncodingKey::from_rsa_pem(&pem)?,
                        jsonwebtoken::Algorithm::PS256,
                    ),
                    _ => (
                        jsonwebtoken::EncodingKey::from_rsa_pem(&pem)?,
                        jsonwebtoken::Algorithm::RS256,
                    ),
                };
                ClientAuth::PrivateKeyJwt {
                    key,
                    alg,
                    kid: k.kid.clone(),
                }
            }
            _ => anyhow::bail!("login takes exactly one of client_secret or private_key_jwt"),
        };
        let ca = issuer
            .discovery
            .as_ref()
            .or(issuer.jwks.as_ref())
            .and_then(|j| j.ca_file.as_ref())
            .map(|p| loaded.resolve(p));
        Ok(Login {
            issuer: Arc::from(cfg.issuer.as_str()),
            iss: Arc::from(issuer.issuer.as_str()),
            client_id: cfg.client_id.clone(),
            client_auth,
            scopes: cfg.scopes.join(" "),
            callback_path: cfg.callback_path.clone(),
            logout_path: cfg.logout_path.clone(),
            post_logout_redirect_uri: cfg.post_logout_redirect_uri.clone(),
            authorization_endpoint: cfg.authorization_endpoint.clone(),
            token_endpoint: cfg.token_endpoint.clone(),
            end_session_endpoint: cfg.end_session_endpoint.clone(),
            client: gatehouse_core::httpclient::build_for(ca.as_deref(), CALL_TIMEOUT)?,
            sessions,
        })
    }

    /// The session this request carries, as an identity, and the
    /// `Set-Cookie` lines that restart its idle clock when it is due.
    /// `None` for no session, or one that does not open (tampered, another
    /// key, another route's provider or client), has ended (absolute or
    /// idle), or is malformed: a new login, never an error.
    pub fn session(&self, headers: &HeaderMap) -> Option<(Arc<Identity>, Vec<HeaderValue>)> {
        let value = cookie::session_value(headers)?;
        let now = gatehouse_core::clock::now_unix();
        if let Some(id) = recent::get(self.sessions.memo, &value, now) {
            if id.iss == self.iss && id.client.as_deref() == Some(self.client_id.as_str()) {
                return Some((id, Vec::new()));
            }
            return None;
        }
        let plain = self.sessions.sealer.open(Purpose::Session, &value)?;
        let s: Session = serde_json::from_slice(&plain).ok()?;
        if s.v != 1 || *s.iss != *self.iss || s.cid != self.client_id {
            return None;
        }
        let idle_end = s.seen.saturating_add(self.sessions.idle);
        if now >= s.exp || now >= idle_end {
            return None;
        }
        let mut claims = id_token_claims(&s.idt)?;
        for (k, v) in &s.claims {
            claims.insert(k.clone(), v.clone());
        }
        let id = Arc::new(Identity {
            issuer: self.issuer.clone(),
            iss: self.iss.clone(),
            subject: Some(s.sub.clone()),
            jti: None,
            sid: s.sid.clone(),
            issued_at: Some(s.auth),
            not_before: None,
            client: Some(s.cid.clone()),
            expires_at: Some(s.exp.min(idle_end)),
            claims,
            cleared_at: Default::default(),
            headers: Default::default(),
        });
        let refresh_at = s.seen.saturating_add(self.sessions.refresh_after);
        let refresh = if now >= refresh_at {
            self.seal_session(Session { seen: now, ..s }, cookie::session_chunks(headers))
                .unwrap_or_default()
        } else {
            recent::put(
                self.sessions.memo,
                &value,
                &Cached {
                    identity: id.clone(),
                    verified_by: None,
                    until: refresh_at.min(s.exp).min(idle_end),
                },
            );
            Vec::new()
        };
        Some((id, refresh))
    }

    /// A session for a login made outside the browser flow (benchmarks,
    /// tools): `sub` logged in now with `sid`, `claims` (on top of the ID
    /// token's) and the ID token `id_token` (its payload is read, not
    /// verified). Returns the `Set-Cookie` lines, as the callback would.
    pub fn seal_for(
        &self,
        sub: &str,
        sid: Option<&str>,
        mut claims: Map<String, Value>,
        id_token: &str,
    ) -> Option<Vec<HeaderValue>> {
        let t = now();
        claims.insert("sub".into(), Value::String(sub.to_owned()));
        if let Some(s) = sid {
            claims.insert("sid".into(), Value::String(s.to_owned()));
        }
        // Only what the ID token does not already say.
        if let Some(in_token) = id_token_claims(id_token) {
            claims.retain(|k, v| in_token.get(k) != Some(v));
        }
        let s = Session {
            v: 1,
            iss: self.iss.to_string(),
            sub: sub.to_owned(),
            sid: sid.map(str::to_owned),
            cid: self.client_id.clone(),
            auth: t,
            exp: t + self.sessions.absolute,
            seen: t,
            claims,
            idt: id_token.to_owned(),
        };
        self.seal_session(s, 1)
    }

    /// [`Login::seal_for`] with `sub` and `sid` read from the ID token's
    /// payload (not verified: whoever calls this holds the cookie keys).
    pub fn seal_for_id_token(&self, id_token: &str) -> Option<Vec<HeaderValue>> {
        let claims = id_token_claims(id_token)?;
        let sub = claims.get("sub")?.as_str()?;
        let sid = claims.get("sid").and_then(Value::as_str);
        self.seal_for(sub, sid, Map::new(), id_token)
    }

    /// The session's `Set-Cookie` lines; `None` when it cannot be sealed
    /// or would not fit in [`cookie::MAX_CHUNKS`] cookies.
    fn seal_session(&self, s: Session, had: usize) -> Option<Vec<HeaderValue>> {
        let json = serde_json::to_vec(&s).ok()?;
        let sealed = self.sessions.sealer.seal(Purpose::Session, &json).ok()?;
        let max_age = s.exp - gatehouse_core::clock::now_unix();
        cookie::set_session(&sealed, max_age, had)
    }

    /// Whether a request is a browser's page navigation (a GET or HEAD
    /// for a document): `Sec-Fetch-Mode: navigate` (Fetch Metadata), or
    /// where a browser sends no fetch metadata, `Accept` naming
    /// `text/html`. A `fetch()`, an XHR, an image or an API client is not:
    /// it gets 401, never a redirect it cannot follow.
    pub fn is_navigation(head: &http::request::Parts) -> bool {
        if head.method != Method::GET && head.method != Method::HEAD {
            return false;
        }
        match head.headers.get("sec-fetch-mode") {
            Some(m) => m.as_bytes().eq_ignore_ascii_case(b"navigate"),
            None => head
                .headers
                .get_all(header::ACCEPT)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| v.contains("text/html"))),
        }
    }

    /// Whether the provider's discovery document allows this login: PKCE
    /// with `S256` (RFC 7636 §4.2; a provider listing only `plain` would
    /// take the code without the proof) and this client's authentication
    /// at the token endpoint (OpenID Connect Discovery 1.0 §3,
    /// `token_endpoint_auth_methods_supported`). An absent list is not
    /// held against the provider: many support both without listing them.
    fn provider_fits(&self, meta: &ProviderMetadata) -> Result<(), String> {
        let method = match self.client_auth {
            ClientAuth::Secret(_) => "client_secret_basic",
            ClientAuth::PrivateKeyJwt { .. } => "private_key_jwt",
        };
        provider_fits(meta, method)
    }

    /// The provider's endpoint `which`: configured, or else from its
    /// discovery document.
    fn endpoint(&self, verifier: &Verifier, which: Endpoint) -> Option<String> {
        let configured = match which {
            Endpoint::Authorization => &self.authorization_endpoint,
            Endpoint::Token => &self.token_endpoint,
            Endpoint::EndSession => &self.end_session_endpoint,
        };
        if configured.is_some() {
            return configured.clone();
        }
        let (_, meta) = verifier.issuer(&self.issuer)?;
        let meta = meta?;
        match which {
            Endpoint::Authorization => meta.authorization_endpoint.clone(),
            Endpoint::Token => meta.token_endpoint.clone(),
            Endpoint::EndSession => meta.end_session_endpoint.clone(),
        }
    }
}

/// See [`Login::provider_fits`]; `method` is the client's authentication
/// at the token endpoint.
fn provider_fits(meta: &ProviderMetadata, method: &str) -> Result<(), String> {
    let pkce = &meta.code_challenge_methods_supported;
    if !pkce.is_empty() && !pkce.iter().any(|m| m == "S256") {
        return Err(format!(
            "code_challenge_methods_supported is {pkce:?}, without S256"
        ));
    }
    let auth = &meta.token_endpoint_auth_methods_supported;
    if !auth.is_empty() && !auth.iter().any(|m| m == method) {
        return Err(format!(
            "token_endpoint_auth_methods_supported is {auth:?}, without {method}, which this login uses"
        ));
    }
    Ok(())
}

#[derive(Clone, Copy)]
enum Endpoint {
    Authorization,
    Token,
    EndSession,
}

/// A login step's answer and the label the access log and metrics give it.
pub struct Answer {
    pub response: Response<ProxyBody>,
    pub label: &'static str,
}

/// Runs a login step: the redirect to the provider, the callback, or the
/// logout. Every failure is an HTML page with a clear status (400 for the
/// browser's fault, 502/503 for the provider's or the authority's), never
/// a redirect that could loop.
pub async fn run(
    req: StepRequest,
    head: &http::request::Parts,
    verifier: &Verifier,
    revocations: Option<&Revocations>,
) -> Answer {
    let result = match &req.step {
        Step::Start { back, clear } => {
            start(&req, back, *clear, head, verifier).map(|r| (r, "login_redirect"))
        }
        Step::Callback => callback(&req, head, verifier, revocations)
            .await
            .map(|r| (r, "login")),
        Step::Logout => logout(&req, head, verifier, revocations)
            .await
            .map(|r| (r, "logout")),
    };
    match result {
        Ok((response, label)) => Answer { response, label },
        Err(p) => Answer {
            label: p.label,
            response: p.into_response(),
        },
    }
}

/// An error page.
struct Page {
    status: StatusCode,
    label: &'static str,
    title: &'static str,
    detail: String,
    set_cookies: Vec<HeaderValue>,
}

impl Page {
    fn new(
        status: StatusCode,
        label: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        Page {
            status,
            label,
            title,
            detail: detail.into(),
            set_cookies: Vec::new(),
        }
    }

    fn into_response(self) -> Response<ProxyBody> {
        let body = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head>\
             <body><h1>{t}</h1><p>{d}</p><p><a href=\"/\">Start again</a></p></body></html>\n",
            t = html_escape(self.title),
            d = html_escape(&self.detail)
        );
        let mut resp = Response::new(boxed(body));
        *resp.status_mut() = self.status;
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if matches!(
            self.status,
            StatusCode::SERVICE_UNAVAILABLE | StatusCode::BAD_GATEWAY
        ) {
            h.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        for c in self.set_cookies {
            h.append(header::SET_COOKIE, c);
        }
        resp
    }
}

fn boxed(s: String) -> ProxyBody {
    Full::new(Bytes::from(s)).map_err(|n| match n {}).boxed()
}

fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A `303 See Other` (RFC 9110 §15.4.4: the next request is a GET).
fn see_other(location: &str, cookies: Vec<HeaderValue>) -> Result<Response<ProxyBody>, Page> {
    redirect(StatusCode::SEE_OTHER, location, cookies)
}

fn redirect(
    status: StatusCode,
    location: &str,
    cookies: Vec<HeaderValue>,
) -> Result<Response<ProxyBody>, Page> {
    let loc = HeaderValue::from_str(location).map_err(|_| {
        Page::new(
            StatusCode::BAD_GATEWAY,
            "login_failed",
            "Login failed",
            "the identity provider's address is not usable",
        )
    })?;
    let mut resp = Response::new(boxed(String::new()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::LOCATION, loc);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    for c in cookies {
        h.append(header::SET_COOKIE, c);
    }
    Ok(resp)
}

fn provider_down(what: &str) -> Page {
    Page::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "login_unavailable",
        "Login is unavailable",
        format!("The identity provider cannot be reached ({what}). Try again in a moment."),
    )
}

fn now() -> i64 {
    gatehouse_core::clock::now_unix()
}

/// Appends `name=value` pairs, form-urlencoded, to `url` (after `?` or
/// `&`).
fn with_query(url: &str, pairs: &[(&str, &str)]) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        q.append_pair(k, v);
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{}", q.finish())
}

fn start(
    req: &StepRequest,
    back: &str,
    clear: bool,
    head: &http::request::Parts,
    verifier: &Verifier,
) -> Result<Response<ProxyBody>, Page> {
    let l = &req.login;
    let Some(authorize) = l.endpoint(verifier, Endpoint::Authorization) else {
        return Err(provider_down("no authorization endpoint known yet"));
    };
    if let Some(meta) = verifier.issuer(&l.issuer).and_then(|(_, m)| m) {
        if let Err(why) = l.provider_fits(&meta) {
            tracing::error!(issuer = %l.issuer, problem = %why, "login cannot work with this identity provider");
            return Err(Page::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "login_unavailable",
                "Login is unavailable",
                "The identity provider does not offer what this login needs; the operator has been told.",
            ));
        }
    }
    let rnd = |n| {
        cookie::random_token(n).map_err(|_| {
            Page::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "login_unavailable",
                "Login is unavailable",
                "no randomness",
            )
        })
    };
    let state = rnd(32)?;
    let nonce = rnd(32)?;
    // RFC 7636 §4.1: 43 to 128 characters; 32 random bytes give 43.
    let verifier_secret = rnd(32)?;
    let challenge = URL_SAFE_NO_PAD.encode(
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier_secret.as_bytes()).as_ref(),
    );
    let redirect_uri = format!("{}{}", req.origin, l.callback_path);
    let pending = Pending {
        state: state.clone(),
        nonce: nonce.clone(),
        verifier: verifier_secret,
        back: back.to_owned(),
        redirect_uri: redirect_uri.clone(),
        at: now(),
    };
    let sealed = serde_json::to_vec(&pending)
        .ok()
        .and_then(|j| l.sessions.sealer.seal(Purpose::Login, &j).ok())
        .ok_or_else(|| provider_down("cannot seal the login state"))?;
    let mut cookies: Vec<HeaderValue> = cookie::set(
        &format!(
            "{}{}",
            cookie::LOGIN_PREFIX,
            &state[..cookie::LOGIN_NAME_CHARS]
        ),
        &sealed,
        LOGIN_TTL,
    )
    .into_iter()
    .collect();
    // A dead session's cookie (revoked, expired, tampered) goes now, not
    // only when the new one replaces it.
    if clear || cookie::session_value(&head.headers).is_some() {
        cookies.extend(cookie::clear_session(cookie::session_chunks(&head.headers)));
    }
    let mut pairs = vec![
        ("response_type", "code"),
        ("client_id", l.client_id.as_str()),
        ("redirect_uri", redirect_uri.as_str()),
        ("scope", l.scopes.as_str()),
        ("state", state.as_str()),
        ("nonce", nonce.as_str()),
        ("code_challenge", challenge.as_str()),
        ("code_challenge_method", "S256"),
    ];
    // A revoked session: the provider must ask for credentials again
    // (OIDC Core §3.1.2.1), or it would hand back the same ended session
    // at once, and the browser would go round.
    if clear {
        pairs.push(("prompt", "login"));
    }
    let location = with_query(&authorize, &pairs);
    redirect(StatusCode::FOUND, &location, cookies)
}

/// The callback's query parameters (RFC 6749 §4.1.2, §4.1.2.1; RFC 9207
/// `iss`), each at most once.
#[derive(Default)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    iss: Option<String>,
}

fn parse_callback(query: &str) -> Result<CallbackQuery, &'static str> {
    let mut q = CallbackQuery::default();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match &*k {
            "code" => &mut q.code,
            "state" => &mut q.state,
            "error" => &mut q.error,
            "iss" => &mut q.iss,
            _ => continue,
        };
        if slot.is_some() {
            return Err("a callback parameter is given twice");
        }
        *slot = Some(v.into_owned());
    }
    Ok(q)
}

fn bad_callback(detail: &'static str) -> Page {
    Page::new(
        StatusCode::BAD_REQUEST,
        "login_refused",
        "Login failed",
        detail,
    )
}

async fn callback(
    req: &StepRequest,
    head: &http::request::Parts,
    verifier: &Verifier,
    revocations: Option<&Revocations>,
) -> Result<Response<ProxyBody>, Page> {
    let l = &req.login;
    if head.method != Method::GET {
        return Err(Page::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "bad_request",
            "Login failed",
            "the login callback takes GET",
        ));
    }
    let q = parse_callback(head.uri.query().unwrap_or("")).map_err(bad_callback)?;
    let state = q
        .state
        .as_deref()
        .ok_or_else(|| bad_callback("the login callback carries no state"))?;
    let name = state
        .get(..cookie::LOGIN_NAME_CHARS)
        .filter(|p| {
            p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
        .map(|p| format!("{}{p}", cookie::LOGIN_PREFIX))
        .ok_or_else(|| bad_callback("the login state is not one this gateway made"))?;
    let pending: Pending = cookie::single(&head.headers, &name)
        .and_then(|v| l.sessions.sealer.open(Purpose::Login, v))
        .and_then(|p| serde_json::from_slice(&p).ok())
        .ok_or_else(|| {
            bad_callback("this browser has no login in progress for that state (expired, or started elsewhere)")
        })?;
    let same_state = pending.state.len() == state.len()
        && aws_lc_rs::constant_time::verify_slices_are_equal(
            pending.state.as_bytes(),
            state.as_bytes(),
        )
        .is_ok();
    if !same_state || now() - pending.at > LOGIN_TTL {
        return Err(bad_callback("the login state does not match"));
    }
    let mut clear_login: Vec<HeaderValue> = cookie::clear(&name).into_iter().collect();
    // RFC 9207 §2.4: an `iss` in the answer must be the provider asked;
    // a provider that says it sends `iss` must have sent it.
    let iss_promised = verifier
        .issuer(&l.issuer)
        .and_then(|(_, m)| m)
        .is_some_and(|m| m.authorization_response_iss_parameter_supported);
    if q.iss.as_deref().is_some_and(|i| i != &*l.iss) || (iss_promised && q.iss.is_none()) {
        let mut p = bad_callback("the answer comes from another identity provider");
        p.set_cookies = clear_login;
        return Err(p);
    }
    if let Some(e) = q.error {
        let code: String = e
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        let mut p = Page::new(
            StatusCode::FORBIDDEN,
            "login_refused",
            "Login refused",
            format!("The identity provider answered: {code}"),
        );
        p.set_cookies = clear_login;
        return Err(p);
    }
    let code = q
        .code
        .ok_or_else(|| bad_callback("the login callback carries no code"))?;
    let token_endpoint = l
        .endpoint(verifier, Endpoint::Token)
        .ok_or_else(|| provider_down("no token endpoint known yet"))?;
    let tokens = exchange(l, &token_endpoint, &code, &pending).await?;
    let id_token = tokens
        .id_token
        .ok_or_else(|| login_failed("the token endpoint sent no ID token".into()))?;
    let id = verifier
        .verify_id_token(&id_token, &l.issuer, &l.client_id, Some(&pending.nonce))
        .await
        .map_err(|e| login_failed(format!("the ID token was refused: {}", e.description())))?;
    let (Some(sub), Some(iat)) = (id.subject.clone(), id.issued_at) else {
        return Err(login_failed("the ID token lacks sub or iat".into()));
    };
    let mut claims = Map::new();
    let granted = tokens.scope.unwrap_or_else(|| l.scopes.clone());
    claims.insert("scope".into(), Value::String(granted));
    let t = now();
    let session = Session {
        v: 1,
        iss: l.iss.to_string(),
        sub,
        sid: id.sid.clone(),
        cid: l.client_id.clone(),
        auth: iat.min(t),
        exp: t + l.sessions.absolute,
        seen: t,
        claims,
        idt: id_token.clone(),
    };
    // A login whose session is already ended (the provider handed back a
    // session that was revoked, by `sid` or by subject) gets no cookie
    // and is not reported: a page, never a redirect that would go round.
    if let Some(r) = revocations {
        let probe = Identity {
            issuer: l.issuer.clone(),
            iss: l.iss.clone(),
            subject: Some(session.sub.clone()),
            jti: None,
            sid: session.sid.clone(),
            issued_at: Some(session.auth),
            not_before: None,
            client: Some(session.cid.clone()),
            expires_at: Some(session.exp),
            claims: Map::new(),
            cleared_at: Default::default(),
            headers: Default::default(),
        };
        if let Err(crate::revocation::feed::Refusal::Revoked(_)) = r.check(&probe) {
            let mut p = Page::new(
                StatusCode::FORBIDDEN,
                "login_refused",
                "This session has ended",
                "The identity provider handed back a session that was ended. Sign out at the identity provider, then log in again.",
            );
            p.set_cookies = clear_login;
            return Err(p);
        }
    }
    report_login(revocations, &id_token).await;
    let mut cookies = l
        .seal_session(session, cookie::session_chunks(&head.headers))
        .ok_or_else(|| login_failed("the session is too large for cookies".into()))?;
    cookies.append(&mut clear_login);
    let back = safe_back(&pending.back);
    see_other(back, cookies)
}

/// The claims of an ID token the callback verified (it comes out of our
/// sealed cookie, so it is not verified again), without the ones that
/// describe the token rather than the user.
fn id_token_claims(idt: &str) -> Option<Map<String, Value>> {
    let payload = idt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload).ok()?;
    let mut claims: Map<String, Value> = serde_json::from_slice(&bytes).ok()?;
    for c in [
        "nonce",
        "at_hash",
        "c_hash",
        "exp",
        "nbf",
        "iat",
        "aud",
        "azp",
        "auth_time",
        "jti",
    ] {
        claims.remove(c);
    }
    Some(claims)
}

fn login_failed(detail: String) -> Page {
    Page::new(
        StatusCode::BAD_GATEWAY,
        "login_failed",
        "Login failed",
        detail,
    )
}

/// Where to send the browser after login: the path it asked for, which
/// the gateway recorded itself; anything that is not a plain path on this
/// origin (`//host`, `/\host`, a scheme) becomes `/`, so a crafted request
/// target cannot turn the login into an open redirect.
fn safe_back(back: &str) -> &str {
    let b = back.as_bytes();
    if b.first() == Some(&b'/')
        && !matches!(b.get(1), Some(b'/' | b'\\'))
        && !back.contains(['\r', '\n'])
    {
        back
    } else {
        "/"
    }
}

/// The token endpoint's answer (RFC 6749 §5.1, OpenID Connect Core 1.0
/// §3.1.3.3), as far as the login uses it.
#[derive(Deserialize)]
struct TokenResponse {
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    scope: Option<String>,
}

/// RFC 6749 §4.1.3 with the PKCE verifier (RFC 7636 §4.5) and the
/// configured client authentication.
async fn exchange(
    l: &Login,
    endpoint: &str,
    code: &str,
    pending: &Pending,
) -> Result<TokenResponse, Page> {
    let mut pairs: Vec<(&str, String)> = vec![
        ("grant_type", "authorization_code".into()),
        ("code", code.into()),
        ("redirect_uri", pending.redirect_uri.clone()),
        ("code_verifier", pending.verifier.clone()),
    ];
    let mut basic = None;
    match &l.client_auth {
        ClientAuth::Secret(secret) => {
            // RFC 6749 §2.3.1: both form-urlencoded before Basic.
            let enc = |b: &[u8]| form_urlencoded::byte_serialize(b).collect::<String>();
            basic = Some(format!(
                "Basic {}",
                STANDARD.encode(format!("{}:{}", enc(l.client_id.as_bytes()), enc(secret)))
            ));
        }
        ClientAuth::PrivateKeyJwt { key, alg, kid } => {
            let mut h = jsonwebtoken::Header::new(*alg);
            h.kid = kid.clone();
            let t = now();
            let claims = serde_json::json!({
                "iss": l.client_id,
                "sub": l.client_id,
                "aud": endpoint,
                "jti": cookie::random_token(16).unwrap_or_default(),
                "iat": t,
                "exp": t + 60,
            });
            let assertion = jsonwebtoken::encode(&h, &claims, key)
                .map_err(|e| login_failed(format!("cannot sign the client assertion: {e}")))?;
            pairs.push(("client_id", l.client_id.clone()));
            pairs.push((
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer".into(),
            ));
            pairs.push(("client_assertion", assertion));
        }
    }
    let form = {
        let mut f = form_urlencoded::Serializer::new(String::new());
        for (k, v) in &pairs {
            f.append_pair(k, v);
        }
        f.finish()
    };
    let mut builder = http::Request::post(endpoint)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .header(header::ACCEPT, "application/json");
    if let Some(b) = basic {
        builder = builder.header(header::AUTHORIZATION, b);
    }
    let req = builder
        .body(Full::new(Bytes::from(form)))
        .map_err(|_| login_failed("the token endpoint's address is not usable".into()))?;
    let fut = async {
        let resp = l.client.request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_TOKEN_RESPONSE)
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok::<_, String>((status, body))
    };
    let (status, body) = match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            tracing::warn!(target: "gatehouse::login", error = %e, "token endpoint unreachable");
            return Err(provider_down("the token endpoint did not answer"));
        }
        Err(_) => return Err(provider_down("the token endpoint did not answer in time")),
    };
    if status != StatusCode::OK {
        // RFC 6749 §5.2: `error` names the fault; nothing else is shown.
        let error = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("error").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_default();
        let error: String = error
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
            .take(64)
            .collect();
        tracing::warn!(target: "gatehouse::login", status = status.as_u16(), error = %error, "token endpoint refused the code");
        // RFC 6749 §5.2: `invalid_grant` is the code's fault (replayed,
        // expired, issued to another client or PKCE verifier): the
        // browser's request, not the provider, is what failed.
        if error == "invalid_grant" {
            return Err(Page::new(
                StatusCode::BAD_REQUEST,
                "login_refused",
                "Login failed",
                "This login link was already used or has expired. Start again.",
            ));
        }
        return Err(login_failed(format!(
            "the identity provider refused the login ({status}{}{error})",
            if error.is_empty() { "" } else { ": " }
        )));
    }
    serde_json::from_slice(&body)
        .map_err(|_| login_failed("the token endpoint's answer is not JSON".into()))
}

/// A login counts against the authority's session limit
/// (`max_sessions_per_subject`): a second browser's login ends the first.
/// The ID token is the credential. A failure is logged and the login
/// stands: the session is still under every revocation.
async fn report_login(revocations: Option<&Revocations>, id_token: &str) {
    let Some(r) = revocations else { return };
    let body = serde_json::json!({ "id_token": id_token }).to_string();
    match r
        .authority
        .post_json("/v1/login", Bytes::from(body), CALL_TIMEOUT)
        .await
    {
        Ok((s, _)) if s.is_success() => {}
        Ok((s, b)) => {
            tracing::warn!(target: "gatehouse::login", status = s.as_u16(), answer = %String::from_utf8_lossy(&b[..b.len().min(200)]), "the authority refused the login report: the session limit does not count this login");
        }
        Err(e) => {
            tracing::warn!(target: "gatehouse::login", error = %format!("{e:#}"), "the authority is unreachable: the session limit does not count this login");
        }
    }
}

/// Whether a logout request comes from a page of this origin (a CSRF
/// defence on top of `SameSite=Lax`): `Sec-Fetch-Site: same-origin`
/// (Fetch Metadata) when the browser sends it, else an `Origin` equal to
/// ours (RFC 6454 §7; browsers send it on every POST).
fn same_origin(head: &http::request::Parts, origin: &str) -> bool {
    let origin_ok = |o: &HeaderValue| o.as_bytes().eq_ignore_ascii_case(origin.as_bytes());
    match (
        head.headers.get("sec-fetch-site"),
        head.headers.get(header::ORIGIN),
    ) {
        (Some(site), o) => site.as_bytes() == b"same-origin" && o.is_none_or(origin_ok),
        (None, Some(o)) => origin_ok(o),
        (None, None) => false,
    }
}

async fn logout(
    req: &StepRequest,
    head: &http::request::Parts,
    verifier: &Verifier,
    revocations: Option<&Revocations>,
) -> Result<Response<ProxyBody>, Page> {
    let l = &req.login;
    if head.method != Method::POST {
        let mut p = Page::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "bad_request",
            "Logout",
            "Log out with a POST from this site's own page.",
        )
        .into_response();
        p.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return Ok(p);
    }
    if !same_origin(head, &req.origin) {
        return Err(Page::new(
            StatusCode::FORBIDDEN,
            "logout_refused",
            "Logout refused",
            "a logout must come from this site's own pages",
        ));
    }
    let had = cookie::session_chunks(&head.headers);
    // The session is read whatever its age: an expired session still has
    // a `sid` to end, and a logout must never fail on a dead session.
    let session: Option<Session> = cookie::session_value(&head.headers)
        .and_then(|v| l.sessions.sealer.open(Purpose::Session, &v))
        .and_then(|p| serde_json::from_slice(&p).ok())
        .filter(|s: &Session| *s.iss == *l.iss && s.cid == l.client_id);
    if let (Some(s), Some(r)) = (&session, revocations) {
        let body = serde_json::json!({ "id_token": s.idt }).to_string();
        match r
            .authority
            .post_json(
                "/v1/logout?wait=applied&timeout=2s",
                Bytes::from(body),
                CALL_TIMEOUT,
            )
            .await
        {
            Ok((st, _)) if st.is_success() => {}
            Ok((st, b)) => {
                tracing::error!(target: "gatehouse::login", status = st.as_u16(), answer = %String::from_utf8_lossy(&b[..b.len().min(200)]), "the authority refused a browser logout");
                return Err(Page::new(
                    StatusCode::BAD_GATEWAY,
                    "logout_failed",
                    "Logout failed",
                    "The session could not be ended everywhere. Try again.",
                ));
            }
            Err(e) => {
                tracing::error!(target: "gatehouse::login", error = %format!("{e:#}"), "the authority is unreachable: browser logout not recorded");
                return Err(Page::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "logout_failed",
                    "Logout failed",
                    "The session could not be ended everywhere. Try again in a moment.",
                ));
            }
        }
    }
    let cookies = cookie::clear_session(had);
    let after = l.post_logout_redirect_uri.as_deref();
    match (l.endpoint(verifier, Endpoint::EndSession), &session) {
        (Some(end), Some(s)) => {
            let mut pairs = vec![
                ("id_token_hint", s.idt.as_str()),
                ("client_id", &l.client_id),
            ];
            if let Some(a) = after {
                pairs.push(("post_logout_redirect_uri", a));
            }
            see_other(&with_query(&end, &pairs), cookies)
        }
        _ => see_other(after.unwrap_or("/"), cookies),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_return_address_is_always_a_path_on_this_origin() {
        assert_eq!(safe_back("/reports?q=1"), "/reports?q=1");
        assert_eq!(safe_back("//evil.example/x"), "/");
        assert_eq!(safe_back("/\\evil.example"), "/");
        assert_eq!(safe_back("https://evil.example/"), "/");
        assert_eq!(safe_back(""), "/");
    }

    #[test]
    fn a_provider_without_pkce_s256_or_this_clients_authentication_is_not_used() {
        let meta = |extra: &str| {
            let doc = format!(
                r#"{{"issuer":"https://idp.test","jwks_uri":"https://idp.test/jwks"{extra}}}"#
            );
            ProviderMetadata::parse(doc.as_bytes(), "https://idp.test", false).expect("document")
        };
        assert!(
            provider_fits(&meta(""), "private_key_jwt").is_ok(),
            "lists left out"
        );
        let both = r#","code_challenge_methods_supported":["plain","S256"],"token_endpoint_auth_methods_supported":["client_secret_basic","private_key_jwt"]"#;
        assert!(provider_fits(&meta(both), "client_secret_basic").is_ok());
        assert!(provider_fits(&meta(both), "private_key_jwt").is_ok());
        let plain_only = provider_fits(
            &meta(r#","code_challenge_methods_supported":["plain"]"#),
            "client_secret_basic",
        );
        assert!(plain_only.is_err_and(|e| e.contains("S256")));
        let post_only = provider_fits(
            &meta(r#","token_endpoint_auth_methods_supported":["client_secret_post"]"#),
            "client_secret_basic",
        );
        assert!(post_only.is_err_and(|e| e.contains("client_secret_basic")));
    }

    #[test]
    fn a_discovery_document_with_plain_http_endpoints_off_loopback_is_refused() {
        let doc = |jwks: &str| format!(r#"{{"issuer":"https://idp.test","jwks_uri":"{jwks}"}}"#);
        let parse = |jwks: &str, opt_in: bool| {
            ProviderMetadata::parse(doc(jwks).as_bytes(), "https://idp.test", opt_in)
        };
        assert!(parse("http://idp.test/jwks", false).is_err_and(|e| e.contains("jwks_uri")));
        assert!(parse("http://127.0.0.1:8080/jwks", false).is_ok());
        assert!(parse("http://idp.test/jwks", true).is_ok());
        assert!(parse("ftp://idp.test/jwks", true).is_err());
    }

    #[test]
    fn a_callback_naming_a_parameter_twice_is_refused() {
        assert!(parse_callback("code=a&state=b&code=c").is_err());
        let q = parse_callback("code=a&state=b&iss=https%3A%2F%2Fidp").expect("ok");
        assert_eq!(q.iss.as_deref(), Some("https://idp"));
    }

    #[test]
    fn only_a_browser_page_navigation_is_sent_to_login() {
        let req = |method: Method, headers: &[(&str, &str)]| {
            let mut b = http::Request::builder().method(method).uri("/");
            for (k, v) in headers {
                b = b.header(*k, *v);
            }
            b.body(()).expect("request").into_parts().0
        };
        assert!(Login::is_navigation(&req(
            Method::GET,
            &[("sec-fetch-mode", "navigate")]
        )));
        assert!(!Login::is_navigation(&req(
            Method::GET,
            &[("sec-fetch-mode", "cors"), ("accept", "text/html")]
        )));
        assert!(Login::is_navigation(&req(
            Method::GET,
            &[("accept", "text/html,*/*")]
        )));
        assert!(!Login::is_navigation(&req(
            Method::GET,
            &[("accept", "application/json")]
        )));
        assert!(!Login::is_navigation(&req(
            Method::POST,
            &[("sec-fetch-mode", "navigate")]
        )));
    }
}
