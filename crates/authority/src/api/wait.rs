//! Waited writes and receipts: `?wait=applied&timeout=2s` (or the header
//! `Gatehouse-Wait: applied; timeout=2s`) on any write, `GET /v1/gateways`
//! and `GET /metrics`.

use super::*;

/// The header form of the wait mode.
const WAIT_HEADER: &str = "gatehouse-wait";

/// What a caller asked of a write's answer: `None` = answer at commit
/// (as always); `Some(t)` = once every gateway that is not gone applied
/// it, or after `t`.
pub(super) type Wait = Option<Duration>;

impl Api {
    /// The request's wait mode (see [`parse_wait`]).
    pub(super) fn wait_mode<B>(&self, req: &Request<B>) -> Result<Wait, Refusal> {
        parse_wait(
            req.uri().query().unwrap_or(""),
            req.headers().get(WAIT_HEADER).map(HeaderValue::as_bytes),
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
        pos: Pos,
        status: StatusCode,
        mut body: Value,
    ) -> Resp {
        match wait {
            Some(timeout) => {
                let r = self.gateways.wait(&self.store, pos, timeout, None).await;
                let status = if r.complete {
                    status
                } else {
                    tracing::warn!(target: "gatehouse::authority", lagging = ?r.lagging, cursor = %r.cursor, "waited write not applied everywhere in time");
                    StatusCode::ACCEPTED
                };
                body["receipt"] = json!(r);
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

    pub(super) async fn gateway_table(&self) -> Resp {
        match self.store.current().await {
            Ok(current) => {
                let rows = self.gateways.table(&self.store, current).await;
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
/// `timeout=2s`) or, when the query has neither, from the value of the
/// `Gatehouse-Wait` header (`applied; timeout=2s`). `Ok(None)`: no wait
/// asked; `Ok(Some(t))`: wait up to `t`, `0 < t <= tracking.max_wait`
/// (`tracking.default_wait` when no timeout is given). Anything else in
/// them is an error (a 400): a caller who asked to wait must never get an
/// unwaited answer by a typo.
pub fn parse_wait(
    query: &str,
    header: Option<&[u8]>,
    tracking: &gatehouse_core::config::GatewayTracking,
) -> Result<Option<Duration>, String> {
    let q: HashMap<String, String> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect();
    let (mode, timeout) = if q.contains_key("wait") || q.contains_key("timeout") {
        (q.get("wait").cloned(), q.get("timeout").cloned())
    } else if let Some(h) = header {
        let h = std::str::from_utf8(h).map_err(|_| "Gatehouse-Wait must be ASCII".to_owned())?;
        let mut parts = h.split(';').map(str::trim);
        let mode = parts.next().map(str::to_owned);
        let mut timeout = None;
        for p in parts {
            match p.split_once('=') {
                Some(("timeout", v)) if timeout.is_none() => timeout = Some(v.trim().to_owned()),
                _ => return Err("Gatehouse-Wait: applied[; timeout=<duration>]".into()),
            }
        }
        (mode, timeout)
    } else {
        return Ok(None);
    };
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
