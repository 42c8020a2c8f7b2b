//! What gateways and probes read: `GET /v1/feed` (changes since a cursor
//! or a snapshot, streamed as wire lines), `GET /v1/status` (admin) and
//! `GET /healthz` (anyone).

use super::*;
use crate::gateways::FeedPoll;

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

impl Api {
    /// Liveness for anyone: "ok" when the store answers, nothing more
    /// (entry counts and the cursor are behind the admin token, `/v1/status`).
    pub(super) async fn healthz(&self) -> Resp {
        match self.store.current().await {
            Ok(_) => json_resp(StatusCode::OK, &json!({"status": "ok"})),
            Err(e) => Refusal::Unavailable(e).into(),
        }
    }

    /// Entry count and cursor, for admins.
    pub(super) async fn status(&self) -> Resp {
        let state = async {
            Ok::<_, anyhow::Error>((self.store.len().await?, self.store.current().await?))
        };
        match state.await {
            Ok((n, seq)) => json_resp(
                StatusCode::OK,
                &json!({"status": "ok", "entries": n, "cursor": self.store.cursor(seq)}),
            ),
            Err(e) => Refusal::Unavailable(e).into(),
        }
    }

    /// Changes since the cursor (waiting up to `wait` for the first one),
    /// or the whole set when the cursor is missing, foreign or too old.
    /// Streamed as JSON lines (see `revocation::model`).
    ///
    /// A poll naming its gateway (`Gatehouse-Gateway`) is recorded in the
    /// gateway table when it starts (its `since` acknowledges everything
    /// up to it) and when it is answered.
    pub(super) async fn feed(&self, req: &Request<Incoming>, peer: SocketAddr) -> Resp {
        let q = query(req);
        let wait = q
            .get("wait")
            .and_then(|w| humantime::parse_duration(w).ok())
            .unwrap_or(Duration::ZERO)
            .min(MAX_WAIT);
        let name = match req
            .headers()
            .get(gatehouse_core::revocation::GATEWAY_HEADER)
        {
            None => None,
            Some(v) => match v.to_str() {
                Ok(n) if gatehouse_core::config::valid_gateway_name(n) => Some(n.to_owned()),
                _ => {
                    return Refusal::BadRequest(
                        "Gatehouse-Gateway: 1 to 128 bytes of letters, digits and .-_:@".into(),
                    )
                    .into()
                }
            },
        };
        // The cursor as this store reads it (with its epoch), and whether
        // it is ahead of the store: then it acknowledges nothing (it is
        // from a history the store does not have) and is answered at once.
        let given = q.get("since").map(String::as_str);
        let since = match given {
            Some(c) => self.store.parse_cursor_fresh(c).await.map(|p| {
                // Epochs are hex: the cursor's epoch ends at its first `-`.
                let epoch = c.split('-').next().unwrap_or_default().to_owned();
                (p, epoch)
            }),
            None => None,
        };
        let ahead = match &since {
            Some((p, _)) => {
                *p > *self.seq.borrow() && self.store.current().await.is_ok_and(|c| *p > c)
            }
            None => false,
        };
        if let Some(n) = &name {
            let until = now_unix_ms() + wait.as_millis() as i64;
            let acknowledged = given.filter(|_| !ahead);
            self.gateways
                .polled(
                    &self.store,
                    n,
                    peer.to_string(),
                    FeedPoll::Start {
                        since: acknowledged,
                        until_ms: until,
                    },
                )
                .await;
        }
        let resp = self.changes_or_snapshot(since, ahead, wait).await;
        if let Some(n) = &name {
            self.gateways
                .polled(&self.store, n, peer.to_string(), FeedPoll::End)
                .await;
        }
        resp
    }

    /// `ahead`: the cursor is past the store's newest position (see `feed`).
    async fn changes_or_snapshot(
        &self,
        since: Option<(Pos, String)>,
        ahead: bool,
        wait: Duration,
    ) -> Resp {
        if let Some((since, epoch)) = since {
            let mut rx = self.seq.subscribe();
            // A cursor ahead of the store (restored from a backup, or not
            // a cursor this store gave) is answered at once, never after a
            // long-poll: the store starts a new epoch.
            if *rx.borrow() <= since && !ahead && !wait.is_zero() {
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
                Err(e) => return Refusal::Unavailable(e).into(),
            }
        }
        self.snapshot_stream()
    }

    /// Streams the snapshot through a bounded channel in ~64 KiB chunks:
    /// a million entries never sit in one buffer.
    pub(super) fn snapshot_stream(&self) -> Resp {
        let (tx, rx) = mpsc::channel::<Bytes>(16);
        self.store.snapshot(tx);
        ndjson(ChannelBody(rx).boxed())
    }
}
