//! The admin's revocations: `POST /v1/revocations` (one or a batch),
//! `GET /v1/revocations/{id}`, `GET /v1/revocations?subject=`, and
//! `DELETE /v1/revocations/{id}` (un-revoke, audited).

use super::*;

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

impl Api {
    /// The issuer named (or the only one), its entries' longest life and
    /// its leeway hold (`IssuerInfo`), in seconds.
    pub(super) fn issuer_for(
        &self,
        requested: Option<String>,
    ) -> Result<(String, i64, i64), Refusal> {
        let iss = match requested {
            Some(i) => i,
            None if self.issuers.len() == 1 => {
                self.issuers.keys().next().cloned().unwrap_or_default()
            }
            None => return Err(Refusal::BadRequest("issuer is required".into())),
        };
        match self.issuers.get(&iss) {
            Some(info) => Ok((iss, info.max_lifetime, info.leeway_hold)),
            None => Err(Refusal::BadRequest("unknown issuer".into())),
        }
    }

    fn to_new(&self, r: RevocationRequest, now: i64) -> Result<NewRevocation, Refusal> {
        let (issuer, max_lifetime, hold) = self.issuer_for(r.issuer)?;
        let bad = |d: &str| Refusal::BadRequest(d.to_owned());
        let (kind, value) = match (r.jti, r.sid, r.sub, r.client_id) {
            (Some(v), None, None, None) => (Kind::Jti, v),
            (None, Some(v), None, None) => (Kind::Sid, v),
            (None, None, Some(v), None) => (Kind::Sub, v),
            (None, None, None, Some(v)) => (Kind::Client, v),
            _ => return Err(bad("give exactly one of jti, sid, sub, client_id")),
        };
        if value.is_empty() || value.len() > super::MAX_VALUE_BYTES {
            return Err(bad("value must be 1 to 1024 bytes"));
        }
        let before = if kind.has_before() {
            // Default: every token issued up to and including this second.
            let b = r.before.unwrap_or(now + 1);
            if b > now + super::MAX_BEFORE_AHEAD {
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
        // An explicit `expires_at` ends the entry then, plus the leeway
        // hold: gateways accept a token that long past the moment its
        // entry should stop covering it, and hold entries so; kept as
        // long here, a gateway starting without state gets it too.
        let expires_at = match r.expires_at {
            Some(e) if e <= now => return Err(bad("expires_at is in the past")),
            Some(e) => e.saturating_add(hold).min(cap),
            None => cap,
        };
        if expires_at <= now {
            // Only a `before` can bring the cap into the past.
            return Err(bad(
                "before is further in the past than the issuer's max_token_lifetime: no token it covers can still be accepted",
            ));
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

    pub(super) async fn create(&self, req: Request<Incoming>) -> Resp {
        let wait = match self.wait_mode(&req) {
            Ok(w) => w,
            Err(r) => return r.into(),
        };
        let body = match read_body(req, self.max_batch_body, self.body_read_timeout).await {
            Ok(b) => b,
            Err(r) => return r.into(),
        };
        let parsed: OneOrMany = match serde_json::from_slice(&body) {
            Ok(p) => p,
            Err(e) => return Refusal::BadRequest(format!("bad JSON: {e}")).into(),
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
                Err(e) => return e.into(),
            }
        }
        match self.put(news).await {
            Ok((results, pos)) => {
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
                self.answer(
                    wait,
                    Caller::Admin,
                    pos,
                    status,
                    json!({ "revocations": items }),
                )
                .await
            }
            Err(e) => Refusal::Unavailable(e).into(),
        }
    }

    /// One entry, with its receipt: which gateways have applied its
    /// latest write (waited for with the wait mode, as a write is).
    pub(super) async fn get(&self, req: &Request<Incoming>, id: &str) -> Resp {
        let wait = match self.wait_mode(req) {
            Ok(w) => w,
            Err(r) => return r.into(),
        };
        let Ok(id) = id.parse::<u64>() else {
            return Refusal::NotFound("no such revocation").into();
        };
        let found = async {
            Ok::<_, anyhow::Error>((self.store.get(id).await?, self.store.committed(id).await?))
        };
        match found.await {
            Ok((Some(r), pos)) => {
                // An entry written before receipts were kept: the whole log
                // up to now covers it.
                let pos = match pos {
                    Some(p) => p,
                    None => match self.store.current().await {
                        Ok(p) => p,
                        Err(e) => return Refusal::Unavailable(e).into(),
                    },
                };
                let mut v = json!(r);
                let receipt = match wait {
                    Some(t) => self.gateways.wait(&self.store, pos, t, None).await,
                    None => self.gateways.receipt(&self.store, pos, None).await,
                };
                let status = if wait.is_some() && !receipt.complete {
                    StatusCode::ACCEPTED
                } else {
                    StatusCode::OK
                };
                v["receipt"] = json!(receipt);
                json_resp(status, &v)
            }
            Ok((None, _)) => Refusal::NotFound("no such revocation").into(),
            Err(e) => Refusal::Unavailable(e).into(),
        }
    }

    pub(super) async fn delete(&self, req: &Request<Incoming>, id: &str, peer: SocketAddr) -> Resp {
        let wait = match self.wait_mode(req) {
            Ok(w) => w,
            Err(r) => return r.into(),
        };
        let Ok(id) = id.parse::<u64>() else {
            return Refusal::NotFound("no such revocation").into();
        };
        let actor = format!("admin@{}", peer.ip());
        match self.store.delete(id, actor.clone()).await {
            Ok(Some((r, seq))) => {
                tracing::warn!(target: "gatehouse::audit", id, actor = %actor, kind = r.kind.as_str(), issuer = %r.issuer, "revocation removed");
                self.advance(seq);
                self.answer(
                    wait,
                    Caller::Admin,
                    seq,
                    StatusCode::OK,
                    json!({ "deleted": r }),
                )
                .await
            }
            Ok(None) => Refusal::NotFound("no such revocation").into(),
            Err(e) => Refusal::Unavailable(e).into(),
        }
    }

    pub(super) async fn list(&self, req: &Request<Incoming>) -> Resp {
        let q = query(req);
        let subject = q.get("subject").cloned();
        let limit = q
            .get("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(1000usize)
            .min(10_000);
        match self.store.list(subject, limit).await {
            Ok(list) => json_resp(StatusCode::OK, &json!({ "revocations": list })),
            Err(e) => Refusal::Unavailable(e).into(),
        }
    }
}
