//! Keeping the revocation set current: load the state file, long-poll the
//! authority's feed, apply changes in place and snapshots by swapping a
//! set built aside, persist what was applied, and answer "is this token
//! revoked?" for every authenticated request without ever waiting.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use arc_swap::ArcSwap;
use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{BodyExt, Empty};

use super::set::{Counts, Hit, RevocationSet};
use super::state::StateFile;
use gatehouse_core::auth::Identity;
use gatehouse_core::config::{LoadedConfig, NoStatePolicy, RevocationConfig, StalePolicy};
use gatehouse_core::httpclient::HttpClient;
use gatehouse_core::revocation::{
    cursor_relation, read_line, Change, CursorRelation, FeedMarker, Line,
};

/// Where revocation generations come from: one counter for the process,
/// so that two states (a reload's new one beside the old, an embedded
/// authority's gateway beside another) never share a generation, and an
/// identity cleared in one is never taken as cleared in the other.
static GENERATIONS: AtomicU64 = AtomicU64::new(1);

/// A generation never handed out before (never 0: "not cleared").
fn fresh_generation() -> u64 {
    GENERATIONS.fetch_add(1, Ordering::Relaxed) + 1
}

/// Longest a feed line may be; a longer one is a broken or hostile feed.
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Revoked(Hit),
    /// No known state (fail closed at start) or stale under `fail_closed`.
    Unavailable,
}

pub struct Revocations {
    set: ArcSwap<RevocationSet>,
    /// Unix milliseconds of the last successful feed response; 0 = never.
    last_contact_ms: AtomicI64,
    /// Since when the state held counts as current: the last feed
    /// response, or the moment it was loaded from the state file (it held
    /// everything the gateway had applied when it stopped). Staleness and
    /// readiness count from here; 0 = no state.
    fresh_since_ms: AtomicI64,
    /// Where the state came from: 0 none, 1 the state file, 2 the authority.
    source: std::sync::atomic::AtomicU8,
    /// Sequence part of the last applied cursor (for metrics).
    cursor_seq: AtomicU64,
    ready: AtomicBool,
    /// Bumped each time changes or a snapshot become visible to requests:
    /// what an open tunnel waits on to re-check its credential.
    applied: tokio::sync::watch::Sender<u64>,
    /// The state's generation ([`gatehouse_core::auth::ClearedAt`]):
    /// moved on, with a Release store, after every change to `set` has
    /// been made visible, so that a request that reads it with Acquire
    /// and then finds its identity cleared in it saw every change made
    /// before it.
    generation: AtomicU64,
    max_staleness: Duration,
    on_stale: StalePolicy,
    /// Keeps an embedded authority running as long as the gateway.
    /// The authority, for the calls a browser login makes (reporting a
    /// login, ending a session).
    pub authority: AuthorityLink,
    _embedded: Option<Box<dyn std::any::Any + Send + Sync>>,
}

/// An authority running in the gateway's own process, started by whoever
/// composes the two (the `gatehouse` binary): the gateway only learns where
/// its feed is, the credential, and a client that trusts it. The gateway
/// never starts an authority itself.
pub struct LocalAuthority {
    /// Base URL of the feed, e.g. `https://127.0.0.1:7400`.
    pub url: String,
    /// The feed credential (bearer token bytes).
    pub token: Vec<u8>,
    /// A client that trusts the local authority (pinned certificate).
    pub client: HttpClient,
    /// The same, for the calls with a body a browser login makes.
    pub post_client: gatehouse_core::httpclient::PostClient,
    /// Dropped with the gateway's revocation state: keeps the authority
    /// running exactly as long.
    pub keep_alive: Box<dyn std::any::Any + Send + Sync>,
}

/// Where the authority answers, and a client that trusts it.
pub struct AuthorityLink {
    /// Base URLs, without a trailing `/`; tried in order.
    bases: Vec<String>,
    /// `None` for a fixed revocation state, which has no authority.
    client: Option<gatehouse_core::httpclient::PostClient>,
}

impl AuthorityLink {
    /// `POST {base}{path_and_query}` with a JSON body, at each replica in
    /// turn until one answers (any status); within `timeout` per replica.
    /// Errors only when none answered.
    pub async fn post_json(
        &self,
        path_and_query: &str,
        body: bytes::Bytes,
        timeout: Duration,
    ) -> anyhow::Result<(http::StatusCode, bytes::Bytes)> {
        use http_body_util::BodyExt;
        let mut last = anyhow::anyhow!("no authority url");
        let Some(client) = &self.client else {
            return Err(last);
        };
        for base in &self.bases {
            let req = http::Request::post(format!("{base}{path_and_query}"))
                .header(http::header::CONTENT_TYPE, "application/json")
                .body(http_body_util::Full::new(body.clone()))?;
            let fut = async {
                let resp = client.request(req).await?;
                let status = resp.status();
                let body = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
                    .collect()
                    .await
                    .map_err(|e| anyhow::anyhow!("reading the answer: {e}"))?
                    .to_bytes();
                anyhow::Ok((status, body))
            };
            match tokio::time::timeout(timeout, fut).await {
                Ok(Ok(r)) => return Ok(r),
                Ok(Err(e)) => last = e.context(base.clone()),
                Err(_) => last = anyhow::anyhow!("{base}: no answer within {timeout:?}"),
            }
        }
        Err(last)
    }
}

/// What `/readyz`-style callers and logs need to know.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Status {
    pub ready: bool,
    pub stale: bool,
    /// `authority`, `state_file` (not synced since start) or `none`.
    pub source: &'static str,
    /// Seconds since the state was last current (see `is_stale`).
    pub seconds_since_fresh: Option<f64>,
    pub seconds_since_contact: Option<f64>,
    pub cursor_seq: u64,
    pub entries: Counts,
}

use gatehouse_core::clock::now_unix_ms as now_ms;

impl Revocations {
    /// The check on the request path: two atomic loads, and up to four
    /// hash lookups unless the identity was already cleared in the
    /// current generation; no lock held, no I/O.
    pub fn check(&self, id: &Identity) -> Result<(), Refusal> {
        if !self.ready.load(Ordering::Acquire) {
            return Err(Refusal::Unavailable);
        }
        if self.on_stale == StalePolicy::FailClosed && self.is_stale() {
            return Err(Refusal::Unavailable);
        }
        // Loaded before the set is read: a change made after this load
        // moves the generation on, and the next request looks again.
        let generation = self.generation.load(Ordering::Acquire);
        if id.cleared_at.get() != generation {
            if let Some(hit) = self.set.load().check(id) {
                return Err(Refusal::Revoked(hit));
            }
            id.cleared_at.set(generation);
        }
        // What logouts can match among the tokens actually seen.
        if id.sid.is_none() {
            gatehouse_core::metrics::metrics()
                .admitted_without_sid
                .inc();
        }
        if id.jti.is_none() {
            gatehouse_core::metrics::metrics()
                .admitted_without_jti
                .inc();
        }
        Ok(())
    }

    /// Moves the generation on: called after each change to the set is
    /// visible (an entry put or deleted, a set swapped in), so every
    /// identity cleared before it is looked up again.
    fn changed(&self) {
        self.generation.store(fresh_generation(), Ordering::Release);
    }

    /// Whether an entry held now covers this identity (readiness and
    /// staleness aside; nothing counted): for re-judging a live tunnel.
    pub fn is_revoked(&self, id: &Identity) -> bool {
        self.set.load().check(id).is_some()
    }

    /// Wakes whenever new revocations become visible to requests (never
    /// on the request path: for long-lived tunnels that must end with
    /// their credential).
    pub fn watch_applied(&self) -> tokio::sync::watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// No word from the authority within `max_staleness` of the state
    /// becoming current (a feed response, or loading the state file).
    pub fn is_stale(&self) -> bool {
        let since = self.fresh_since_ms.load(Ordering::Relaxed);
        since == 0 || now_ms() - since > self.max_staleness.as_millis() as i64
    }

    pub fn status(&self) -> Status {
        let last = self.last_contact_ms.load(Ordering::Relaxed);
        let since = self.fresh_since_ms.load(Ordering::Relaxed);
        Status {
            ready: self.ready.load(Ordering::Acquire),
            stale: self.is_stale(),
            source: match self.source.load(Ordering::Relaxed) {
                1 => "state_file",
                2 => "authority",
                _ => "none",
            },
            seconds_since_fresh: (since > 0).then(|| (now_ms() - since) as f64 / 1000.0),
            seconds_since_contact: (last > 0).then(|| (now_ms() - last) as f64 / 1000.0),
            cursor_seq: self.cursor_seq.load(Ordering::Relaxed),
            entries: self.set.load().counts(),
        }
    }

    /// A revocation state that no authority feeds: the given entries,
    /// ready (`ready: true`, as if just synced) or not yet loaded
    /// (`false`: every authenticated request is answered 503). For
    /// exercising the policy without a feed, and for tools.
    pub fn fixed(
        entries: &[gatehouse_core::revocation::Revocation],
        ready: bool,
    ) -> Arc<Revocations> {
        let mut set = RevocationSet::new();
        for r in entries {
            set.apply_building(&Change::Put(r.clone()));
        }
        set.finish_building();
        Arc::new(Revocations {
            set: ArcSwap::from_pointee(set),
            last_contact_ms: AtomicI64::new(if ready { now_ms() } else { 0 }),
            fresh_since_ms: AtomicI64::new(if ready { now_ms() } else { 0 }),
            source: std::sync::atomic::AtomicU8::new(if ready { 2 } else { 0 }),
            cursor_seq: AtomicU64::new(0),
            ready: AtomicBool::new(ready),
            applied: tokio::sync::watch::channel(0).0,
            generation: AtomicU64::new(fresh_generation()),
            max_staleness: Duration::from_secs(u64::from(u32::MAX)),
            on_stale: StalePolicy::FailStatic,
            authority: AuthorityLink {
                bases: Vec::new(),
                client: None,
            },
            _embedded: None,
        })
    }

    /// Loads the state file, makes one quick attempt to sync, then keeps
    /// the feed running in the background. `local` is the authority of this
    /// process when the config says `revocation.embedded`.
    pub async fn start(
        cfg: &RevocationConfig,
        loaded: &LoadedConfig,
        local: Option<LocalAuthority>,
    ) -> anyhow::Result<Arc<Revocations>> {
        let (bases, token, client, post_client, embedded) = match (&cfg.authority, &cfg.embedded) {
            (Some(a), _) => {
                let ca = a.ca_file.as_ref().map(|p| loaded.resolve(p));
                (
                    a.url
                        .iter()
                        .chain(a.urls.iter())
                        .map(|u| u.0.to_string())
                        .collect::<Vec<_>>(),
                    a.token.as_ref().map(|t| t.read(loaded)).transpose()?,
                    gatehouse_core::httpclient::build(ca.as_deref(), Duration::from_secs(5))?,
                    gatehouse_core::httpclient::build_for(ca.as_deref(), Duration::from_secs(5))?,
                    None,
                )
            }
            (None, Some(_)) => {
                let local = local.context(
                    "revocation.embedded: the authority is started by the gatehouse binary, which hands the gateway its feed",
                )?;
                (
                    vec![local.url],
                    Some(local.token),
                    local.client,
                    local.post_client,
                    Some(local.keep_alive),
                )
            }
            (None, None) => anyhow::bail!("revocation needs authority or embedded"),
        };
        let mut state = cfg
            .state_file
            .as_ref()
            .map(|p| StateFile::new(loaded.resolve(p)));
        let mut set = RevocationSet::new();
        let mut cursor = None;
        let mut has_state = false;
        if let Some(st) = state.as_mut() {
            let loaded = st.load(&mut set)?;
            has_state = loaded.has_state;
            if has_state {
                let n = set.counts();
                tracing::info!(
                    cursor = loaded.cursor.as_deref().unwrap_or("-"),
                    entries = n.total(),
                    "revocation state loaded from file"
                );
            }
            cursor = loaded.cursor;
        }
        let me = Arc::new(Revocations {
            set: ArcSwap::from_pointee(set),
            last_contact_ms: AtomicI64::new(0),
            fresh_since_ms: AtomicI64::new(if has_state { now_ms() } else { 0 }),
            source: std::sync::atomic::AtomicU8::new(u8::from(has_state)),
            cursor_seq: AtomicU64::new(0),
            ready: AtomicBool::new(has_state),
            applied: tokio::sync::watch::channel(0).0,
            generation: AtomicU64::new(fresh_generation()),
            max_staleness: cfg.max_staleness,
            on_stale: cfg.on_stale,
            authority: AuthorityLink {
                bases: bases
                    .iter()
                    .map(|b| b.trim_end_matches('/').to_owned())
                    .collect(),
                client: Some(post_client),
            },
            _embedded: embedded,
        });
        let name = gateway_name(cfg, loaded);
        tracing::info!(gateway = %name, "reading the revocation feed as this gateway");
        let mut feed = Feed {
            name: http::HeaderValue::from_str(&name)
                .context("revocation.name is not a valid header value")?,
            owner: Arc::downgrade(&me),
            client,
            urls: bases
                .iter()
                .map(|b| b.trim_end_matches('/').to_owned())
                .collect(),
            current: 0,
            token,
            cursor,
            state,
            wait: cfg.poll_wait,
        };
        // One quick sync before serving, so a fresh gateway with a
        // reachable authority starts with the full set.
        for _ in 0..feed.urls.len() {
            let r =
                tokio::time::timeout(Duration::from_secs(10), feed.poll_once(&me, Duration::ZERO))
                    .await;
            match r {
                Ok(Ok(())) => break,
                Ok(Err(e)) => {
                    tracing::warn!(error = %format!("{e:#}"), authority = %feed.urls[feed.current], "revocation authority not reachable at start")
                }
                Err(_) => {
                    tracing::warn!(authority = %feed.urls[feed.current], "revocation authority did not answer at start")
                }
            }
            feed.current = (feed.current + 1) % feed.urls.len();
        }
        if !me.ready.load(Ordering::Acquire) {
            match cfg.on_no_state {
                NoStatePolicy::FailClosed => tracing::error!(
                    "no revocation state and no authority: authenticated requests get 503 until the first sync"
                ),
                NoStatePolicy::Open => {
                    tracing::warn!("no revocation state and no authority: serving without revocations (on_no_state: open)");
                    me.ready.store(true, Ordering::Release);
                }
            }
        }
        tokio::spawn(feed.run());
        Ok(me)
    }
}

/// This gateway's name on the feed: `revocation.name`, or else the host
/// name and the first listener's port (`host:8443`), stable across
/// restarts of the same deployment (with an ephemeral port, `host:` and a
/// random suffix).
pub fn gateway_name(cfg: &RevocationConfig, loaded: &LoadedConfig) -> String {
    if let Some(n) = &cfg.name {
        return n.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| gatehouse_core::config::valid_gateway_name(h))
        .unwrap_or_else(|| "gateway".to_owned());
    match loaded
        .config
        .listeners
        .iter()
        .find_map(|l| l.value.address.tcp())
        .map(|a| a.port())
    {
        // An ephemeral port names nothing stable: a random suffix keeps
        // two such gateways on one host apart.
        Some(0) | None => format!("{host}:{}", &gatehouse_core::ids::random_id()[..8]),
        Some(port) => format!("{host}:{port}"),
    }
}

struct Feed {
    /// This gateway's name on the feed (`Gatehouse-Gateway`).
    name: http::HeaderValue,
    owner: std::sync::Weak<Revocations>,
    client: HttpClient,
    /// Replicas of one authority; the feed stays on one until it fails.
    urls: Vec<String>,
    current: usize,
    token: Option<Vec<u8>>,
    cursor: Option<String>,
    state: Option<StateFile>,
    wait: Duration,
}

impl Feed {
    async fn run(mut self) {
        let mut backoff = Duration::from_millis(250);
        let mut was_stale = false;
        loop {
            let Some(me) = self.owner.upgrade() else {
                return;
            };
            let result = self.poll_once(&me, self.wait).await;
            let stale = me.is_stale();
            if stale != was_stale {
                if stale {
                    tracing::error!(policy = ?me.on_stale, "revocation set is stale: no word from the authority within max_staleness");
                } else {
                    tracing::info!("revocation feed caught up");
                }
                was_stale = stale;
            }
            drop(me);
            match result {
                Ok(()) => backoff = Duration::from_millis(250),
                Err(e) => {
                    let failed = self.current;
                    self.current = (self.current + 1) % self.urls.len().max(1);
                    // Straight to the next replica; back off once every
                    // replica has failed in a row.
                    let wait = if self.current == 0 {
                        backoff
                    } else {
                        Duration::from_millis(50)
                    };
                    tracing::warn!(error = %format!("{e:#}"), authority = %self.urls.get(failed).map_or("", String::as_str), retry_in = ?wait, "revocation feed failed");
                    tokio::time::sleep(wait).await;
                    if self.current == 0 {
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        }
    }

    /// One feed request: read it whole (line by line, never the whole body
    /// in one buffer), then apply it. Nothing is applied from a response
    /// that does not end with its `end` line.
    async fn poll_once(&mut self, me: &Arc<Revocations>, wait: Duration) -> anyhow::Result<()> {
        let base = self.urls.get(self.current).context("no authority url")?;
        let mut url = format!("{base}/v1/feed?wait={}s", wait.as_secs());
        if let Some(c) = &self.cursor {
            url.push_str("&since=");
            url.push_str(c);
        }
        let mut req = http::Request::get(url).body(Empty::<Bytes>::new())?;
        // The `since` of each poll acknowledges everything up to it as
        // applied: the cursor only moves once a response is applied.
        req.headers_mut().insert(
            gatehouse_core::revocation::GATEWAY_HEADER,
            self.name.clone(),
        );
        if let Some(t) = &self.token {
            let mut v = b"Bearer ".to_vec();
            v.extend_from_slice(t);
            req.headers_mut().insert(
                http::header::AUTHORIZATION,
                http::HeaderValue::from_bytes(&v)?,
            );
        }
        let idle = wait + Duration::from_secs(10);
        let resp = tokio::time::timeout(idle, self.client.request(req))
            .await
            .context("feed request timed out")?
            .context("feed request")?;
        if resp.status() != http::StatusCode::OK {
            anyhow::bail!("feed answered {}", resp.status());
        }
        let mut body = resp.into_body();
        let mut parser = FeedParser::new();
        loop {
            let frame = tokio::time::timeout(idle, body.frame())
                .await
                .context("feed stalled")?;
            match frame {
                None => break,
                Some(f) => {
                    if let Ok(data) = f.context("reading feed")?.into_data() {
                        parser.push(data)?;
                    }
                }
            }
        }
        let (cursor, parsed) = parser.finish()?;
        // Never un-revoke by accident: a response behind what this gateway
        // holds (a store restored from a backup, a lagging replica, or not
        // the real authority) is refused; a snapshot is always merged with
        // what is held (entries then expire on their own), never a
        // replacement: a wiped or restored store (another epoch) would
        // otherwise drop them, and so would a later snapshot of that same
        // new epoch. Only an explicit deletion (a `del` change) removes an
        // entry; one missed because the gateway fell behind the change
        // log's retention keeps the entry until it expires (refusing too
        // much, never too little).
        let relation = cursor_relation(self.cursor.as_deref(), &cursor);
        let refused = match (&parsed, relation) {
            (_, CursorRelation::Older) => Some("older"),
            (Parsed::Changes(_), CursorRelation::NoneHeld | CursorRelation::OtherEpoch) => {
                Some("changes_without_base")
            }
            _ => None,
        };
        if let Some(reason) = refused {
            gatehouse_core::metrics::metrics()
                .revocation_feed_refused
                .get_or_create(&gatehouse_core::metrics::ReasonLabel { reason })
                .inc();
            tracing::error!(held = self.cursor.as_deref().unwrap_or("-"), got = %cursor, reason, "feed response refused: it is behind the revocation state this gateway holds (authority store restored from a backup, a lagging replica, or not the real authority)");
            anyhow::bail!("feed response at {cursor} is behind the held state");
        }
        // What a gateway enforces it can restore after a crash: state is
        // persisted before it becomes visible to requests.
        match parsed {
            Parsed::Snapshot(mut set) => {
                let held = me.set.load_full();
                let had = held.counts().total();
                set = tokio::task::spawn_blocking(move || {
                    held.for_each(|r| set.apply_building(&Change::Put(r)));
                    set.finish_building();
                    set
                })
                .await?;
                if relation == CursorRelation::OtherEpoch && had > 0 {
                    tracing::warn!(cursor = %cursor, held = had, "revocation snapshot of a new store epoch (store wiped or restored) merged with the entries held; they expire on their own");
                }
                let n = set.counts();
                let set = Arc::new(set);
                if let Some(st) = self.state.take() {
                    let (c, s2) = (cursor.clone(), set.clone());
                    let (st, r) = tokio::task::spawn_blocking(move || {
                        let mut st = st;
                        let r = st.write_snapshot(&s2, &c);
                        (st, r)
                    })
                    .await?;
                    self.state = Some(st);
                    if let Err(e) = r {
                        tracing::error!(error = %format!("{e:#}"), "cannot persist revocation state");
                    }
                }
                me.set.store(set);
                me.changed();
                me.applied.send_modify(|n| *n += 1);
                tracing::info!(cursor = %cursor, entries = n.total(), "revocation snapshot applied");
            }
            Parsed::Changes(changes) if !changes.is_empty() => {
                let mut set = me.set.load_full();
                if let Some(extended) = set.with_issuers_of(&changes) {
                    // Empty caches for a new issuer; the rest is shared.
                    set = Arc::new(extended);
                    me.set.store(set.clone());
                    me.changed();
                }
                let apply = |set: &RevocationSet| {
                    for c in &changes {
                        set.apply(c);
                    }
                };
                match self.state.as_mut() {
                    Some(st) if st.would_compact(changes.len()) => {
                        apply(&set);
                        if let Err(e) = st.write_snapshot(&set, &cursor) {
                            tracing::error!(error = %format!("{e:#}"), "cannot persist revocation state");
                        }
                    }
                    Some(st) => {
                        if let Err(e) = st.append(&changes, &cursor) {
                            tracing::error!(error = %format!("{e:#}"), "cannot persist revocation state");
                        }
                        apply(&set);
                    }
                    None => apply(&set),
                }
                me.changed();
                me.applied.send_modify(|n| *n += 1);
                tracing::debug!(cursor = %cursor, changes = changes.len(), "revocation changes applied");
                // Fold a large change layer into a new compact base, built
                // aside (requests keep using the current set) and swapped.
                let (in_changes, in_base) = set.layer_sizes();
                if in_changes > COMPACT_AFTER.max(in_base / 4) {
                    let current = set.clone();
                    let fresh = tokio::task::spawn_blocking(move || current.compacted()).await?;
                    me.set.store(Arc::new(fresh));
                    me.changed();
                    tracing::info!(
                        changes = in_changes,
                        base = in_base,
                        "revocation changes folded into the base"
                    );
                }
            }
            Parsed::Changes(_) => {}
        }
        if let Some(seq) = cursor.rsplit_once('-').and_then(|(_, s)| s.parse().ok()) {
            me.cursor_seq.store(seq, Ordering::Relaxed);
        }
        self.cursor = Some(cursor);
        let t = now_ms();
        me.last_contact_ms.store(t, Ordering::Relaxed);
        me.fresh_since_ms.store(t, Ordering::Relaxed);
        me.source.store(2, Ordering::Relaxed);
        me.ready.store(true, Ordering::Release);
        Ok(())
    }
}

/// Changes held in the change layer before they are folded into the
/// compact base (at least; or a quarter of the base, if larger).
const COMPACT_AFTER: u64 = 50_000;

/// What a complete feed response amounts to.
pub enum Parsed {
    /// A whole new set, built aside, to swap in.
    Snapshot(RevocationSet),
    /// Changes to apply in place.
    Changes(Vec<Change>),
}

/// Reads a feed response as it arrives, line by line: snapshot entries go
/// straight into a new set (never a buffer of the whole response), changes
/// are collected. Only [`FeedParser::finish`] after the `end` line yields
/// anything.
#[derive(Default)]
pub struct FeedParser {
    buf: BytesMut,
    header: Option<FeedMarker>,
    changes: Vec<Change>,
    fresh: Option<RevocationSet>,
    end_cursor: Option<String>,
}

impl FeedParser {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, mut data: impl Buf) -> anyhow::Result<()> {
        while data.has_remaining() {
            let chunk = data.chunk();
            let n = chunk.len();
            self.buf.extend_from_slice(chunk);
            data.advance(n);
        }
        while let Some(pos) = self.buf.iter().position(|b| *b == b'\n') {
            let line = self.buf.split_to(pos + 1);
            self.line(&line[..line.len() - 1])?;
        }
        if self.buf.len() > MAX_LINE {
            anyhow::bail!("feed line longer than {MAX_LINE} bytes");
        }
        Ok(())
    }

    fn line(&mut self, line: &[u8]) -> anyhow::Result<()> {
        if line.is_empty() {
            return Ok(());
        }
        if self.end_cursor.is_some() {
            anyhow::bail!("feed continued after its end line");
        }
        let ch = match (read_line(line).context("feed line")?, &self.header) {
            (Line::Marker(m), None) => {
                match m {
                    FeedMarker::Snapshot { .. } => self.fresh = Some(RevocationSet::new()),
                    FeedMarker::Changes { .. } => {}
                    FeedMarker::End { .. } => anyhow::bail!("feed starts with an end line"),
                }
                self.header = Some(m);
                return Ok(());
            }
            (Line::Change(_), None) => anyhow::bail!("feed response without its header line"),
            (Line::Marker(FeedMarker::End { cursor }), Some(_)) => {
                self.end_cursor = Some(cursor);
                return Ok(());
            }
            (Line::Marker(_), Some(_)) => {
                anyhow::bail!("unexpected marker inside a feed response")
            }
            (Line::Change(ch), Some(_)) => ch,
        };
        match &mut self.fresh {
            Some(set) => set.apply_building(&ch),
            None => self.changes.push(ch),
        }
        Ok(())
    }

    /// The cursor and content, only if the response was complete.
    pub fn finish(self) -> anyhow::Result<(String, Parsed)> {
        let cursor = self
            .end_cursor
            .context("feed response ended without its end line")?;
        if !self.buf.iter().all(u8::is_ascii_whitespace) {
            anyhow::bail!("feed response has bytes after its end line");
        }
        Ok(match self.fresh {
            Some(mut set) => {
                set.finish_building();
                (cursor, Parsed::Snapshot(set))
            }
            None => (cursor, Parsed::Changes(self.changes)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(jti: &str) -> Identity {
        let claims = serde_json::json!({"jti": jti, "sub": "u", "iat": 100})
            .as_object()
            .cloned()
            .unwrap_or_default();
        Identity::from_claims(Arc::from("n"), Arc::from("https://i"), claims).expect("identity")
    }

    #[test]
    fn incomplete_responses_apply_nothing_and_splits_anywhere_are_fine() {
        let exp = gatehouse_core::clock::now_unix() + 3600;
        let body = format!(
            "{{\"type\":\"snapshot\",\"cursor\":\"e-1\"}}\n{{\"op\":\"put\",\"id\":1,\"issuer\":\"https://i\",\"kind\":\"jti\",\"value\":\"a\",\"reason\":\"logout\",\"created_at\":1,\"expires_at\":{exp}}}\n{{\"type\":\"end\",\"cursor\":\"e-1\"}}\n"
        );
        // Byte by byte: lines split across frames still parse.
        let mut p = FeedParser::new();
        for b in body.as_bytes() {
            p.push(&[*b][..]).expect("push");
        }
        let (cursor, parsed) = p.finish().expect("complete");
        assert_eq!(cursor, "e-1");
        let Parsed::Snapshot(set) = parsed else {
            panic!("expected a snapshot")
        };
        assert!(set.check(&id("a")).is_some());
        assert!(set.check(&id("b")).is_none());
        // Without the end line: nothing.
        let cut = body
            .rsplit_once("{\"type\":\"end\"")
            .map(|(a, _)| a)
            .unwrap_or("");
        let mut p = FeedParser::new();
        p.push(cut.as_bytes()).expect("push");
        assert!(p.finish().is_err());
    }
}
