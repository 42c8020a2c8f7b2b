//! The gateways that read the feed, as the authority sees them, and the
//! receipts built from that: which gateway has applied which change.
//!
//! A gateway names itself on every poll (`Gatehouse-Gateway`) and its
//! cursor moves only once a response is applied, so the `since` of its
//! next poll acknowledges everything up to that cursor: no extra call.
//! Embedded, this process is the table's only keeper (names persisted, so
//! a restart still waits for them); on Redis every replica writes the
//! record of the gateways that poll it into one shared hash and reads the
//! others' from there.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::backend::Backend;
use crate::records::{Commits, Pos};
use gatehouse_core::clock::now_unix_ms;
use gatehouse_core::config::GatewayTracking;

/// Acknowledgements kept per gateway (for "when" in receipts).
const ACKS_KEPT: usize = 16;
/// Gateways tracked at most: a feed credential must not grow the table
/// without bound.
const MAX_GATEWAYS: usize = 10_000;
/// How often a waiter on a shared (Redis) table reads it again: acks
/// taken by other replicas are seen no later than this.
const SHARED_RECHECK: Duration = Duration::from_millis(5);

/// What the authority knows of one gateway. Times are Unix milliseconds.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Seen {
    /// Peer address of its latest poll.
    pub addr: String,
    pub first_seen_ms: i64,
    /// Start or end of its latest poll.
    pub last_seen_ms: i64,
    /// While it holds a long-poll open: when that poll ends at the latest
    /// (0: not polling).
    pub polling_until_ms: i64,
    /// The `since` of its latest poll: everything up to it is applied.
    pub cursor: Option<String>,
    /// Recent acknowledgements, oldest first: a cursor and when the
    /// authority first saw it.
    #[serde(default)]
    pub acks: VecDeque<(String, i64)>,
    /// When an embedded authority last wrote this record to its store.
    #[serde(default)]
    pub saved_at_ms: i64,
}

/// `live`: polling now, or seen within `stale_after`; `stale`: not seen
/// since, still waited for; `gone`: unseen for `gone_after`, not waited for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Live,
    Stale,
    Gone,
}

impl State {
    pub const ALL: [State; 3] = [State::Live, State::Stale, State::Gone];

    pub fn as_str(self) -> &'static str {
        match self {
            State::Live => "live",
            State::Stale => "stale",
            State::Gone => "gone",
        }
    }
}

impl Seen {
    pub fn state(&self, now: i64, t: &GatewayTracking) -> State {
        // A poll still open counts as seen until its deadline: the
        // authority answers it at that deadline, and the gateway polls
        // again at once, so the quiet time only starts there (else a
        // gateway in the middle of a long poll would look stale while its
        // answer is on its way).
        let quiet = if self.polling_until_ms > 0 {
            (now - self.polling_until_ms).max(0)
        } else {
            now - self.last_seen_ms
        };
        if quiet <= t.stale_after.as_millis() as i64 {
            State::Live
        } else if quiet <= t.gone_after.as_millis() as i64 {
            State::Stale
        } else {
            State::Gone
        }
    }

    /// When the authority first saw a cursor at or past `target` (the
    /// gateway had applied it by then: an upper bound, exact while the
    /// acknowledgements kept reach back that far); `None` when not applied.
    fn applied(&self, store: &Backend, target: Pos) -> Option<Option<i64>> {
        let at = |c: &str| store.parse_cursor(c).is_some_and(|p| p >= target);
        if !self.cursor.as_deref().is_some_and(at) {
            return None;
        }
        Some(self.acks.iter().find(|(c, _)| at(c)).map(|(_, t)| *t))
    }

    /// Folds in another replica's view of the same gateway: the latest
    /// sighting says where it is now (its cursor may have moved back: a
    /// restart from an older state file), every acknowledgement is kept.
    fn merge(&mut self, other: Seen) {
        if other.last_seen_ms > self.last_seen_ms {
            self.last_seen_ms = other.last_seen_ms;
            self.polling_until_ms = other.polling_until_ms;
            self.addr = other.addr;
            self.cursor = other.cursor;
        }
        if self.first_seen_ms == 0
            || (other.first_seen_ms > 0 && other.first_seen_ms < self.first_seen_ms)
        {
            self.first_seen_ms = other.first_seen_ms;
        }
        for a in other.acks {
            if !self.acks.contains(&a) {
                self.acks.push_back(a);
            }
        }
        self.acks.make_contiguous().sort_by_key(|(_, t)| *t);
        while self.acks.len() > ACKS_KEPT {
            self.acks.pop_front();
        }
    }
}

/// A feed poll's start (with its `since`, and when its long-poll ends at
/// the latest, Unix ms) or its end.
pub enum FeedPoll<'a> {
    Start {
        since: Option<&'a str>,
        until_ms: i64,
    },
    End,
}

/// One gateway's line in a receipt.
#[derive(Debug, Clone, Serialize)]
pub struct Applied {
    pub name: String,
    pub state: State,
    pub applied: bool,
    /// When the authority learned it was applied (Unix ms): the gateway had
    /// applied it by then. `null` when applied long before (or not yet).
    pub applied_at_ms: Option<i64>,
}

/// Whether a change is enforced on every gateway that is not gone.
#[derive(Debug, Clone, Serialize)]
pub struct Receipt {
    /// The change-log cursor the receipt is about (everything up to it).
    pub cursor: String,
    /// Every gateway not gone has applied it.
    pub complete: bool,
    /// Gateways not gone that have not applied it.
    pub lagging: Vec<String>,
    pub gateways: Vec<Applied>,
    /// How long the call waited for it, in milliseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waited_ms: Option<f64>,
}

/// One row of `GET /v1/gateways`.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub name: String,
    pub state: State,
    pub addr: String,
    pub cursor: Option<String>,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    pub polling: bool,
    /// Changes committed that it has not acknowledged, among the last
    /// 20,000 this process knows of (since it started).
    pub lag_changes: usize,
    /// Seconds since the oldest change it has not acknowledged was
    /// committed (0 when it has them all).
    pub lag_seconds: f64,
}

pub struct Gateways {
    tracking: GatewayTracking,
    /// Ticks so far (the embedded store keeps the table every 30).
    ticks: std::sync::atomic::AtomicU64,
    /// This process's view: every gateway embedded; on Redis, the ones
    /// that polled this replica (the shared hash has the rest).
    local: Mutex<HashMap<String, Seen>>,
    /// Bumped on every acknowledgement taken here: waiters wake.
    acked: watch::Sender<u64>,
    commits: Arc<Commits>,
}

impl Gateways {
    /// The table as the store kept it: embedded, the gateways known before
    /// a restart are waited for again (as last seen now) until they poll
    /// or go.
    pub async fn open(
        store: &Backend,
        tracking: GatewayTracking,
        commits: Arc<Commits>,
    ) -> anyhow::Result<Gateways> {
        let mut local = HashMap::new();
        if !store.shares_gateways() {
            let now = now_unix_ms();
            for (name, json) in store.gateways().await? {
                let mut seen: Seen = serde_json::from_str(&json).unwrap_or_default();
                // Gone already when the authority stopped: stays gone.
                // Otherwise waited for again (as seen now) until it polls
                // or goes: a restart must not make a receipt forget it.
                let gone_ms = tracking.gone_after.as_millis() as i64;
                if seen.saved_at_ms - seen.last_seen_ms <= gone_ms {
                    seen.last_seen_ms = now;
                }
                seen.polling_until_ms = 0;
                seen.cursor = None;
                seen.acks.clear();
                local.insert(name, seen);
            }
        }
        Ok(Gateways {
            tracking,
            ticks: std::sync::atomic::AtomicU64::new(0),
            local: Mutex::new(local),
            acked: watch::channel(0).0,
            commits,
        })
    }

    pub fn tracking(&self) -> &GatewayTracking {
        &self.tracking
    }

    /// A poll from `name` begins or ends. A beginning poll's `since`
    /// acknowledges everything up to it; one without `since` says the
    /// gateway holds nothing from the feed (it asks for a snapshot).
    /// Errors from a shared store are logged: the poll is served regardless.
    pub async fn polled(&self, store: &Backend, name: &str, addr: String, poll: FeedPoll<'_>) {
        let now = now_unix_ms();
        let shared = if store.shares_gateways() {
            match store.gateway(name).await {
                Ok(r) => r.and_then(|j| serde_json::from_str::<Seen>(&j).ok()),
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), gateway = name, "cannot read the shared gateway record");
                    None
                }
            }
        } else {
            None
        };
        let (record, new, advanced) = {
            let Ok(mut map) = self.local.lock() else {
                return;
            };
            if !map.contains_key(name) && map.len() >= MAX_GATEWAYS {
                tracing::warn!(gateway = name, "gateway table full: not tracked");
                return;
            }
            let new = !map.contains_key(name);
            let seen = map.entry(name.to_owned()).or_insert_with(|| Seen {
                first_seen_ms: now,
                ..Seen::default()
            });
            if let Some(s) = shared {
                seen.merge(s);
            }
            seen.addr = addr;
            seen.last_seen_ms = now;
            let mut advanced = None;
            let since = match poll {
                FeedPoll::Start { since, until_ms } => {
                    seen.polling_until_ms = until_ms;
                    if since.is_none() {
                        seen.cursor = None;
                        seen.acks.clear();
                    }
                    since
                }
                FeedPoll::End => {
                    seen.polling_until_ms = 0;
                    None
                }
            };
            if let Some(c) = since.filter(|c| seen.cursor.as_deref() != Some(*c)) {
                // What it holds now, even when that is behind what it
                // acknowledged before: a receipt must never count a change
                // a running gateway no longer has.
                let held = seen.cursor.as_deref().and_then(|c| store.parse_cursor(c));
                let got = store.parse_cursor(c);
                if got.is_some() && got < held {
                    tracing::warn!(gateway = name, held = seen.cursor.as_deref().unwrap_or("-"), got = c, "a gateway acknowledged less than before: restarted from an older state, or two gateways share this name");
                    seen.acks.retain(|(a, _)| store.parse_cursor(a) <= got);
                }
                seen.cursor = Some(c.to_owned());
                seen.acks.push_back((c.to_owned(), now));
                while seen.acks.len() > ACKS_KEPT {
                    seen.acks.pop_front();
                }
                if let Some(g) = got.filter(|g| held.is_none_or(|h| *g > h)) {
                    advanced = Some((held, g));
                }
            }
            (seen.clone(), new, advanced)
        };
        if let Some((from, to)) = advanced {
            let h = &gatehouse_core::metrics::metrics().authority_propagation;
            for at in self.commits.between(from, to) {
                h.observe((now - at).max(0) as f64 / 1000.0);
            }
            self.acked.send_modify(|n| *n += 1);
        }
        if new || store.shares_gateways() {
            if new {
                tracing::info!(gateway = name, addr = %record.addr, "a new gateway reads the feed");
            }
            let json = serde_json::to_string(&record).unwrap_or_default();
            if let Err(e) = store.save_gateway(name.to_owned(), Some(json)).await {
                tracing::warn!(error = %format!("{e:#}"), gateway = name, "cannot keep the gateway record");
            }
        }
    }

    /// Every gateway known, with the shared table's view folded in.
    async fn all(&self, store: &Backend) -> HashMap<String, Seen> {
        let mut map = self.local.lock().map(|m| m.clone()).unwrap_or_default();
        if store.shares_gateways() {
            match store.gateways().await {
                Ok(rows) => {
                    for (name, json) in rows {
                        let Ok(s) = serde_json::from_str::<Seen>(&json) else {
                            continue;
                        };
                        match map.get_mut(&name) {
                            Some(mine) => mine.merge(s),
                            None => {
                                map.insert(name, s);
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %format!("{e:#}"), "cannot read the shared gateway table")
                }
            }
        }
        map
    }

    /// `GET /v1/gateways`: every gateway, by name.
    pub async fn table(&self, store: &Backend) -> Vec<Row> {
        let now = now_unix_ms();
        let mut rows: Vec<Row> = self
            .all(store)
            .await
            .into_iter()
            .map(|(name, s)| {
                let acked = s.cursor.as_deref().and_then(|c| store.parse_cursor(c));
                let (known, first) = self.commits.after(acked);
                let lag_changes = known;
                let lag_seconds = match first {
                    Some(t) if lag_changes > 0 => (now - t).max(0) as f64 / 1000.0,
                    _ => 0.0,
                };
                Row {
                    state: s.state(now, &self.tracking),
                    addr: s.addr,
                    cursor: s.cursor,
                    first_seen_ms: s.first_seen_ms,
                    last_seen_ms: s.last_seen_ms,
                    polling: s.polling_until_ms > now,
                    lag_changes,
                    lag_seconds,
                    name,
                }
            })
            .collect();
        rows.sort_by(|a, b| a.name.cmp(&b.name));
        rows
    }

    /// Which gateways have applied everything up to `target`. `only`
    /// narrows it to one gateway (an embedded authority's own).
    pub async fn receipt(&self, store: &Backend, target: Pos, only: Option<&str>) -> Receipt {
        let now = now_unix_ms();
        let mut gateways: Vec<Applied> = self
            .all(store)
            .await
            .into_iter()
            .filter(|(n, _)| only.is_none_or(|o| o == n))
            .map(|(name, s)| {
                let applied = s.applied(store, target);
                Applied {
                    state: s.state(now, &self.tracking),
                    applied: applied.is_some(),
                    applied_at_ms: applied.flatten(),
                    name,
                }
            })
            .collect();
        gateways.sort_by(|a, b| a.name.cmp(&b.name));
        let mut lagging: Vec<String> = gateways
            .iter()
            .filter(|g| !g.applied && g.state != State::Gone)
            .map(|g| g.name.clone())
            .collect();
        if let Some(o) = only {
            if gateways.is_empty() {
                lagging.push(o.to_owned());
            }
        }
        Receipt {
            cursor: store.cursor(target),
            complete: lagging.is_empty(),
            lagging,
            gateways,
            waited_ms: None,
        }
    }

    /// Waits until every gateway that is not gone (or `only`) has applied
    /// everything up to `target`, or `timeout` passes; the receipt says
    /// which it was.
    pub async fn wait(
        &self,
        store: &Backend,
        target: Pos,
        timeout: Duration,
        only: Option<&str>,
    ) -> Receipt {
        let start = tokio::time::Instant::now();
        let deadline = start + timeout;
        let mut acked = self.acked.subscribe();
        loop {
            acked.mark_unchanged();
            let mut r = self.receipt(store, target, only).await;
            let now = tokio::time::Instant::now();
            if r.complete || now >= deadline {
                r.waited_ms = Some(now.duration_since(start).as_secs_f64() * 1000.0);
                return r;
            }
            let recheck = if store.shares_gateways() {
                (now + SHARED_RECHECK).min(deadline)
            } else {
                deadline
            };
            tokio::select! {
                _ = acked.changed() => {}
                _ = tokio::time::sleep_until(recheck) => {}
            }
        }
    }

    /// Sets the by-state gauges and forgets gateways unseen for
    /// `forget_after`.
    pub async fn tick(&self, store: &Backend) {
        let now = now_unix_ms();
        let all = self.all(store).await;
        let mut counts = [0i64; 3];
        let mut forget = Vec::new();
        for (name, s) in &all {
            let st = s.state(now, &self.tracking);
            counts[st as usize] += 1;
            if st == State::Gone
                && now - s.last_seen_ms > self.tracking.forget_after.as_millis() as i64
            {
                forget.push(name.clone());
            }
        }
        let g = &gatehouse_core::metrics::metrics().authority_gateways;
        for st in State::ALL {
            g.get_or_create(&gatehouse_core::metrics::StateLabel { state: st.as_str() })
                .set(counts[st as usize]);
        }
        for name in forget {
            tracing::info!(gateway = %name, "gateway forgotten (unseen for forget_after)");
            self.forget(store, &name).await;
        }
        // Embedded, the table is kept every 30 s, so that after a restart
        // a gateway already gone stays gone.
        let n = self
            .ticks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !store.shares_gateways() && n % 30 == 29 {
            let rows: Vec<(String, String)> = self
                .local
                .lock()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| {
                            let mut v = v.clone();
                            v.saved_at_ms = now;
                            (k.clone(), serde_json::to_string(&v).unwrap_or_default())
                        })
                        .collect()
                })
                .unwrap_or_default();
            for (name, json) in rows {
                if let Err(e) = store.save_gateway(name, Some(json)).await {
                    tracing::warn!(error = %format!("{e:#}"), "cannot keep the gateway table");
                    break;
                }
            }
        }
    }

    /// Drops a gateway from the table (decommissioned, or a name that
    /// never was one): it is no longer waited for. False if unknown.
    pub async fn forget(&self, store: &Backend, name: &str) -> bool {
        let local = self
            .local
            .lock()
            .map(|mut m| m.remove(name).is_some())
            .unwrap_or(false);
        let shared = store.shares_gateways() && store.gateway(name).await.ok().flatten().is_some();
        if let Err(e) = store.save_gateway(name.to_owned(), None).await {
            tracing::warn!(error = %format!("{e:#}"), gateway = name, "cannot forget a gateway record");
        }
        local || shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(last_seen_ms: i64, polling_until_ms: i64) -> Seen {
        Seen {
            last_seen_ms,
            polling_until_ms,
            ..Seen::default()
        }
    }

    #[test]
    fn a_gateway_whose_long_poll_is_being_answered_at_its_deadline_is_still_live() {
        let t = GatewayTracking::default();
        let stale = t.stale_after.as_millis() as i64;
        let gone = t.gone_after.as_millis() as i64;
        // Poll opened at 0 for 30 s; its answer is a little late.
        let open = seen(0, 30_000);
        assert_eq!(open.state(10_000, &t), State::Live);
        assert_eq!(open.state(30_000 + stale / 2, &t), State::Live);
        // A poll never answered (its connection dropped) stops counting
        // at its deadline.
        assert_eq!(open.state(30_000 + stale + 1, &t), State::Stale);
        assert_eq!(open.state(30_000 + gone + 1, &t), State::Gone);
        // Between polls the last sighting counts.
        let between = seen(5_000, 0);
        assert_eq!(between.state(5_000 + stale, &t), State::Live);
        assert_eq!(between.state(5_000 + stale + 1, &t), State::Stale);
    }
}
