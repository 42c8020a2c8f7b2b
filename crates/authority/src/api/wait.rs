//! Waited writes and receipts: `?wait=applied&timeout=2s` (or the header
//! `Gatehouse-Wait: applied; timeout=2s`) on any write, `GET /v1/gateways`
//! and `GET /metrics`.

use super::*;
use crate::gateways::State;

/// The header form of the wait mode.
const WAIT_HEADER: &str = "gatehouse-wait";

/// Who a waited answer is for: an admin sees the whole receipt; a client
/// logging out or an identity provider only whether it is done (and waits
/// at most `default_wait`).
#[derive(Clone, Copy)]
pub(super) enum Caller {
    Admin,
    Public,
}

/// What a caller asked of a write's answer: `None` = answer at commit
/// (as always); `Some(t)` = once every gateway that is not gone applied
/// it, or after `t`.
pub(super) type Wait = Option<Duration>;

impl Api {
    /// The request's wait mode (see [`parse_wait`]).
    pub(super) fn wait_mode<B>(&self, req: &Request<B>) -> Result<Wait, Refusal> {
        let header: Vec<&[u8]> = req
            .headers()
            .get_all(WAIT_HEADER)
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        parse_wait(
            req.uri().query().unwrap_or(""),
            &header,
            self.gateways.tracking(),
        )
        .map_err(Refusal::BadRequest)
    }

    /// The answer to a write committed at `pos`. Waited: once every
    /// gateway that is not gone has applied it (`status`, with the
    /// receipt), or at the timeout (`202 Accepted`: committed, not yet
    /// everywhere; the receipt names the gateways that lag). Not waited:
    /// at once, except that an embedded authority first waits (briefly)
    /// for the gateway of its own process.
    pub(super) async fn answer(
        &self,
        wait: Wait,
        caller: Caller,
        pos: Pos,
        status: StatusCode,
        mut body: Value,
    ) -> Resp {
        match wait {
            Some(timeout) => {
                let timeout = match caller {
                    Caller::Admin => timeout,
                    Caller::Public => timeout.min(self.gateways.tracking().default_wait),
                };
                let r = self.gateways.wait(&self.store, pos, timeout, None).await;
                let status = if r.complete {
                    status
                } else {
                    let shown: Vec<&str> = r.lagging.iter().take(10).map(String::as_str).collect();
                    tracing::warn!(target: "gatehouse::authority", lagging = r.lagging.len(), first = ?shown, cursor = %r.cursor, "waited write not applied everywhere in time");
                    StatusCode::ACCEPTED
                };
                body["receipt"] = match caller {
                    Caller::Admin => json!(r),
                    // Whoever logs out learns whether it is done, not the
                    // names and states of the gateways.
                    Caller::Public => json!({
                        "complete": r.complete,
                        "gateways": r.gateways.iter().filter(|g| g.state != State::Gone).count(),
                        "lagging": r.lagging.len(),
                        "waited_ms": r.waited_ms,
                    }),
                };
                json_resp(status, &body)
            }
            None => {
                if let Some(me) = &self.local_gateway {
                    let r = self
                        .gateways
                        .wait(&self.store, pos, LOCAL_WAIT, Some(me))
                        .await;
                    if !r.complete {
                        tracing::warn!(target: "gatehouse::authority", gateway = %me, "this process's gateway did not apply the write within 2s");
                    }
                }
                json_resp(status, &body)
            }
        }
    }

    /// `DELETE /v1/gateways/{name}`: no longer tracked nor waited for
    /// (until it polls again).
    pub(super) async fn forget_gateway(&self, name: &str, peer: SocketAddr) -> Resp {
        if self.gateways.forget(&self.store, name).await {
            tracing::warn!(target: "gatehouse::audit", gateway = name, actor = %format!("admin@{}", peer.ip()), "gateway forgotten");
            json_resp(StatusCode::OK, &json!({ "forgotten": name }))
        } else {
            Refusal::NotFound("no such gateway").into()
        }
    }

    pub(super) async fn gateway_table(&self) -> Resp {
        match self.store.current().await {
            Ok(current) => {
                let rows = self.gateways.table(&self.store).await;
                json_resp(
                    StatusCode::OK,
                    &json!({"cursor": self.store.cursor(current), "gateways": rows}),
                )
            }
            Err(e) => Refusal::Unavailable(e).into(),
        }
    }

    pub(super) async fn metrics(&self) -> Resp {
        self.gateways.tick(&self.store).await;
        let mut r = Response::new(
            Full::new(Bytes::from(gatehouse_core::metrics::metrics().encode()))
                .map_err(|n| match n {})
                .boxed(),
        );
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    }
}

/// Reads a write's wait mode from its query string (`wait=applied`,
/// `timeout=2s`, nothing else, each once) or from the `Gatehouse-Wait`
/// header's values (`applied; timeout=2s`, one field line), not both. `Ok(None)`: no wait
/// asked; `Ok(Some(t))`: wait up to `t`, `0 < t <= tracking.max_wait`
/// (`tracking.default_wait` when no timeout is given). Anything else in
/// them is an error (a 400): a caller who asked to wait must never get an
/// unwaited answer by a typo.
pub fn parse_wait(
    query: &str,
    header: &[&[u8]],
    tracking: &gatehouse_core::config::GatewayTracking,
) -> Result<Option<Duration>, String> {
    let mut mode = None;
    let mut timeout = None;
    let mut from_query = false;
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let slot = match &*k {
            "wait" => &mut mode,
            "timeout" => &mut timeout,
            // Writes take no other parameter: `Wait=`, `wiat=`, ... are
            // typos of a wait, never silently no wait.
            other => {
                return Err(format!(
                    "unknown query parameter `{other}` (writes take wait and timeout)"
                ))
            }
        };
        if slot.replace(v.into_owned()).is_some() {
            return Err(format!("`{k}` given twice"));
        }
        from_query = true;
    }
    match (from_query, header) {
        (_, []) => {}
        (true, _) => {
            return Err("give the wait mode in the query or in Gatehouse-Wait, not both".into())
        }
        (false, [h]) => {
            let h =
                std::str::from_utf8(h).map_err(|_| "Gatehouse-Wait must be ASCII".to_owned())?;
            let mut parts = h.split(';').map(str::trim);
            mode = parts.next().map(str::to_owned);
            for p in parts {
                match p.split_once('=') {
                    Some(("timeout", v)) if timeout.is_none() => {
                        timeout = Some(v.trim().to_owned())
                    }
                    _ => return Err("Gatehouse-Wait: applied[; timeout=<duration>]".into()),
                }
            }
        }
        (false, _) => return Err("Gatehouse-Wait given twice".into()),
    }
    if mode.is_none() && timeout.is_none() {
        return Ok(None);
    }
    if mode.as_deref() != Some("applied") {
        return Err("wait takes `applied` (and an optional timeout)".into());
    }
    let timeout = match timeout {
        None => tracking.default_wait,
        Some(v) => humantime::parse_duration(&v)
            .map_err(|_| "timeout: a duration such as 2s or 500ms".to_owned())?,
    };
    if timeout.is_zero() || timeout > tracking.max_wait {
        return Err(format!(
            "timeout must be more than 0 and at most {}",
            humantime::format_duration(tracking.max_wait)
        ));
    }
    Ok(Some(timeout))
}
