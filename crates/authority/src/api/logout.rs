//! Ending sessions: `POST /v1/sessions` (a login reported against the
//! session limit), `POST /v1/logout` (the token itself as credential) and
//! `POST /backchannel-logout` (OpenID Connect Back-Channel Logout 1.0).

use super::*;

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
    kind.has_before().then(|| {
        // No further ahead than the admin API allows: a token issued far
        // in the future (which no gateway accepts) would otherwise end
        // its subject's tokens until then (found by a black-box round).
        let now = now_unix();
        id.issued_at
            .unwrap_or(now)
            .min(now + super::MAX_BEFORE_AHEAD)
            + 1
    })
}

/// Drops a claim value that the admin API could not name either (empty,
/// or over 1,024 bytes): a logout made an entry for `"jti": ""` that
/// revoked every other token with an empty `jti` (found by a black-box
/// round).
fn nameable(v: Option<String>) -> Option<String> {
    v.filter(|v| (1..=super::MAX_VALUE_BYTES).contains(&v.len()))
}

/// Seconds an ID token may be old when its login is reported
/// (`POST /v1/login`): the gateway reports it within seconds of the code
/// exchange; leeway for a slow provider and clock skew.
const LOGIN_REPORT_MAX_AGE: i64 = 300;

impl Api {
    pub(super) async fn session(&self, req: Request<Incoming>) -> Resp {
        let wait = match self.wait_mode(&req) {
            Ok(w) => w,
            Err(r) => return r.into(),
        };
        let body = match read_body(req, SMALL_BODY, self.body_read_timeout).await {
            Ok(b) => b,
            Err(r) => return r.into(),
        };
        let s: SessionRequest = match serde_json::from_slice(&body) {
            Ok(s) => s,
            Err(e) => return Refusal::BadRequest(format!("bad JSON: {e}")).into(),
        };
        let (issuer, max_lifetime, _) = match self.issuer_for(s.issuer) {
            Ok(x) => x,
            Err(e) => return e.into(),
        };
        let Some(limit) = self.max_sessions else {
            return json_resp(StatusCode::OK, &json!({ "replaced": [] }));
        };
        let now = now_unix();
        let started = s.started_at.unwrap_or(now);
        let (sub, sid) = (s.sub, s.sid);
        if [&sub, &sid]
            .iter()
            .any(|v| !(1..=super::MAX_VALUE_BYTES).contains(&v.len()))
        {
            return Refusal::BadRequest("sub and sid must be 1 to 1024 bytes".into()).into();
        }
        // A session already ended (its `sid` revoked, or its subject
        // revoked since before it started) is not counted: it took a live
        // session's place, which was then revoked for it (found by a
        // black-box round). `/v1/login` refuses the same with 401.
        for (kind, value) in [(Kind::Sid, &sid), (Kind::Sub, &sub)] {
            match self.store.get_by_key(&issuer, kind, value).await {
                Ok(Some(r)) if r.expires_at > now && covers(kind, r.before, Some(started)) => {
                    return Refusal::BadRequest(
                        "this session has already ended: its sid or subject is revoked".into(),
                    )
                    .into()
                }
                Ok(_) => {}
                Err(e) => return Refusal::Unavailable(e).into(),
            }
        }
        match self
            .store
            .report_session(issuer, sub, sid, started, limit, max_lifetime, now)
            .await
        {
            Ok((revoked, seq)) => {
                self.advance(seq);
                let sids: Vec<&str> = revoked.iter().map(|r| r.value.as_str()).collect();
                self.answer(
                    wait,
                    Caller::Admin,
                    seq,
                    StatusCode::OK,
                    json!({ "replaced": sids }),
                )
                .await
            }
            Err(e) => Refusal::Unavailable(e).into(),
        }
    }

    /// An ID token (OpenID Connect Core 1.0 §2) of a configured issuer,
    /// of any age, addressed to one of that issuer's `logout_audiences`
    /// (its relying parties: a gateway's browser login among them). The
    /// credential with which a gateway reports a browser login or ends the
    /// session it stands for.
    async fn verify_rp_id_token(&self, token: &str) -> Result<Identity, AuthError> {
        let clients: Vec<String> = self
            .issuers
            .values()
            .flat_map(|i| i.clients.iter().cloned())
            .collect();
        if clients.is_empty() {
            return Err(AuthError::Claim(
                "no issuer names relying parties (logout_audiences)",
            ));
        }
        let id = self
            .verifier
            .verify_id_token_for_any(token, &clients)
            .await?;
        let ours = self.issuers.get(&*id.iss).is_some_and(|i| {
            id.client
                .as_ref()
                .or(match id.claims.get("aud") {
                    Some(Value::String(a)) => Some(a),
                    _ => None,
                })
                .is_some_and(|c| i.clients.contains(c))
        });
        if !ours {
            return Err(AuthError::Claim("token is not meant for this audience"));
        }
        Ok(id)
    }

    /// `POST /v1/login`: a relying party (a gateway's browser login)
    /// reports the login its ID token stands for against the session
    /// limit (`max_sessions_per_subject`). The ID token is the credential:
    /// current (`exp` in the future), with a `sid`. Answers the sessions it
    /// replaced, like `POST /v1/sessions`.
    pub(super) async fn login(&self, req: Request<Incoming>) -> Resp {
        let wait = match self.wait_mode(&req) {
            Ok(w) => w,
            Err(r) => return r.into(),
        };
        let body = match read_body(req, SMALL_BODY, self.body_read_timeout).await {
            Ok(b) => b,
            Err(r) => return r.into(),
        };
        let Some(token) = token_from_body(&body, "id_token") else {
            return Refusal::BadRequest("id_token is required".into()).into();
        };
        let id = match self.verify_rp_id_token(&token).await {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(target: "gatehouse::authority", reason = e.description(), "login report refused");
                return Refusal::InvalidToken(e.description()).into();
            }
        };
        if id.expires_at.is_none_or(|e| e <= now_unix()) {
            return Refusal::InvalidToken("token has expired").into();
        }
        // A login is reported right after the code exchange. An older ID
        // token (from a logout URL's `id_token_hint`, a browser history)
        // replayed here must not count as the newest login and end the
        // user's real session.
        if id
            .issued_at
            .is_none_or(|iat| now_unix() - iat > LOGIN_REPORT_MAX_AGE)
        {
            return Refusal::InvalidToken("the ID token is too old to report a login").into();
        }
        match already_revoked(&self.store, &id).await {
            Ok(true) => {
                return Refusal::InvalidToken("the session of this ID token has ended").into()
            }
            Ok(false) => {}
            Err(e) => return Refusal::Unavailable(e).into(),
        }
        let (Some(sub), Some(sid)) = (id.subject.clone(), id.sid.clone()) else {
            return Refusal::BadRequest("the ID token carries no sid: no session to count".into())
                .into();
        };
        let Some(limit) = self.max_sessions else {
            return json_resp(StatusCode::OK, &json!({ "replaced": [] }));
        };
        let max_lifetime = self
            .issuers
            .get(&*id.iss)
            .map_or(86_400, |i| i.max_lifetime);
        let started = id.issued_at.unwrap_or_else(now_unix);
        match self
            .store
            .report_session(
                id.iss.to_string(),
                sub,
                sid,
                started,
                limit,
                max_lifetime,
                now_unix(),
            )
            .await
        {
            Ok((revoked, seq)) => {
                self.advance(seq);
                let sids: Vec<&str> = revoked.iter().map(|r| r.value.as_str()).collect();
                tracing::info!(target: "gatehouse::authority", issuer = %id.iss, replaced = sids.len(), "browser login reported");
                self.answer(
                    wait,
                    Caller::Public,
                    seq,
                    StatusCode::OK,
                    json!({ "replaced": sids.len() }),
                )
                .await
            }
            Err(e) => Refusal::Unavailable(e).into(),
        }
    }

    /// Logout with the token itself as the credential. A genuine token of a
    /// configured issuer always gets 200, whether it is live (`revoked`) or
    /// already expired or revoked (`already_revoked`), so a client can
    /// always clear a dead session.
    pub(super) async fn logout(&self, req: Request<Incoming>) -> Resp {
        let wait = match self.wait_mode(&req) {
            Ok(w) => w,
            Err(r) => return r.into(),
        };
        let header_token = match gatehouse_core::auth::bearer(req.headers()) {
            Bearer::Token(t) => Some(t.to_owned()),
            _ => None,
        };
        let body = match read_body(req, SMALL_BODY, self.body_read_timeout).await {
            Ok(b) => b,
            Err(r) => return r.into(),
        };
        // One token, from one place: a second one in the body was ignored
        // while the answer said "revoked" (found by a black-box round).
        let (token, id_token) = match (
            header_token,
            token_from_body(&body, "token"),
            token_from_body(&body, "id_token"),
        ) {
            (Some(t), None, None) | (None, Some(t), None) => (t, false),
            (None, None, Some(t)) => (t, true),
            _ => return Refusal::BadRequest(
                "exactly one token is required: in Authorization, or token or id_token in the body"
                    .into(),
            )
            .into(),
        };
        let verified = if id_token {
            self.verify_rp_id_token(&token).await
        } else {
            self.verifier.verify_any_age(&token).await
        };
        let mut id = match verified {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(target: "gatehouse::authority", reason = e.description(), "logout refused");
                return Refusal::InvalidToken(e.description()).into();
            }
        };
        id.jti = nameable(id.jti.take());
        id.sid = nameable(id.sid.take());
        id.subject = nameable(id.subject.take());
        if id.jti.is_none() && id.sid.is_none() && id.subject.is_none() {
            // Nothing names this token alone or its holder: answering
            // "already_revoked" would tell the client a live token is dead.
            return Refusal::BadRequest(
                "the token carries no jti, sid or sub: nothing names it to revoke".into(),
            )
            .into();
        }
        let now = now_unix();
        let expired = id.expires_at.is_some_and(|e| e <= now);
        let info = self.issuers.get(&*id.iss);
        let max_lifetime = info.map_or(86_400, |i| i.max_lifetime);
        let hold = info.map_or(0, |i| i.leeway_hold);
        let already = match already_revoked(&self.store, &id).await {
            Ok(a) => a,
            Err(e) => return Refusal::Unavailable(e).into(),
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
            // Past `exp`: a gateway accepts the token within its leeway
            // (`IssuerInfo::leeway_hold`), so a token just expired still
            // gets its entry.
            if exp.saturating_add(hold) > now {
                news.push(entry(
                    Kind::Jti,
                    jti,
                    exp.saturating_add(hold).min(now + max_lifetime),
                ));
            }
        }
        if let Some(sid) = &id.sid {
            news.push(entry(Kind::Sid, sid, now + max_lifetime));
        }
        // A token just expired is still accepted within the leeway: it
        // gets its entry too (found by a black-box round: a sub-only
        // token logged out a second after its `exp` revoked nothing).
        let past_leeway = id.expires_at.is_some_and(|e| e.saturating_add(hold) <= now);
        if id.jti.is_none() && id.sid.is_none() && !past_leeway {
            // Nothing names this token alone: end every token of the
            // subject issued up to this one.
            if let Some(sub) = &id.subject {
                let before = kind_before(Kind::Sub, &id).unwrap_or(now + 1);
                news.push(entry(Kind::Sub, sub, before + max_lifetime));
            }
        }
        // Nothing new to write: what the answer stands for is everything
        // committed so far.
        let (created, pos) = if news.is_empty() {
            match self.store.current().await {
                Ok(p) => (false, p),
                Err(e) => return Refusal::Unavailable(e).into(),
            }
        } else {
            match self.put(news).await {
                Ok((results, pos)) => (
                    results.iter().any(|(_, o)| *o != PutOutcome::Unchanged),
                    pos,
                ),
                Err(e) => return Refusal::Unavailable(e).into(),
            }
        };
        let status = if !expired && !already && created {
            "revoked"
        } else {
            "already_revoked"
        };
        self.answer(
            wait,
            Caller::Public,
            pos,
            StatusCode::OK,
            json!({ "status": status }),
        )
        .await
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
    pub(super) async fn backchannel_logout(&self, req: Request<Incoming>) -> Resp {
        let refuse = |reason: &str| {
            tracing::warn!(target: "gatehouse::authority", reason, "back-channel logout refused");
            Resp::from(Refusal::BadRequest(reason.to_owned()))
        };
        // The identity provider waits too when its registered logout URI
        // carries `?wait=applied`.
        let wait = match self.wait_mode(&req) {
            Ok(w) => w,
            Err(r) => return r.into(),
        };
        let body = match read_body(req, SMALL_BODY, self.body_read_timeout).await {
            Ok(b) => b,
            Err(r) => {
                tracing::warn!(target: "gatehouse::authority", reason = "body too large or unreadable", "back-channel logout refused");
                return r.into();
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
            Err(e) => return Refusal::Unavailable(e).into(),
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
            Ok((_, pos)) => {
                self.answer(wait, Caller::Public, pos, StatusCode::OK, json!({}))
                    .await
            }
            Err(e) => {
                // Not kept: the identity provider's retry must not be
                // refused as a replay.
                if let Err(f) = self.store.forget_logout(replay_key).await {
                    tracing::error!(error = %format!("{f:#}"), "cannot forget a logout token id");
                }
                Refusal::Unavailable(e).into()
            }
        }
    }
}
