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
    /// Reads the wait mode from the query (`wait=applied`, `timeout=2s`)
    /// or the `Gatehouse-Wait` header (`applied; timeout=2s`). Anything
    /// else in them is a 400: a caller who asked to wait must not get an
    /// unwaited answer by a typo.
    pub(super) fn wait_mode<B>(&self, req: &Request<B>) -> Result<Wait, Refusal> {
        let bad = |d: &str| Refusal::BadRequest(d.to_owned());
        let q = query(req);
        let (mode, timeout) = if q.contains_key("wait") || q.contains_key("timeout") {
            (q.get("wait").cloned(), q.get("timeout").cloned())
        } else if let Some(h) = req.headers().get(WAIT_HEADER) {
            let h = h
                .to_str()
                .map_err(|_| bad("Gatehouse-Wait must be ASCII"))?;
            let mut parts = h.split(';').map(str::trim);
            let mode = parts.next().map(str::to_owned);
            let mut timeout = None;
            for p in parts {
                match p.split_once('=') {
                    Some(("timeout", v)) => timeout = Some(v.trim().to_owned()),
                    _ => return Err(bad("Gatehouse-Wait: applied[; timeout=<duration>]")),
                }
            }
            (mode, timeout)
        } else {
            return Ok(None);
        };
        match mode.as_deref() {
            Some("applied") => {}
            None if timeout.is_none() => return Ok(None),
            _ => return Err(bad("wait takes `applied`")),
        }
        let t = self.gateways.tracking();
        let timeout = match timeout {
            None => t.default_wait,
            Some(v) => humantime::parse_duration(&v)
                .map_err(|_| bad("timeout: a duration such as 2s or 500ms"))?,
        };
        if timeout.is_zero() || timeout > t.max_wait {
            return Err(Refusal::BadRequest(format!(
                "timeout must be more than 0 and at most {}",
                humantime::format_duration(t.max_wait)
            )));
        }
        Ok(Some(timeout))
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
