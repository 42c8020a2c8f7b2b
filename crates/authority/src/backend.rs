//! The authority's store, embedded (redb, one process) or Redis (any
//! number of replicas), behind one async interface for the API.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use super::redis_store::{self, RedisStore};
use super::store::{SnapshotItem, Store};
pub use crate::records::{NewRevocation, Pos, PutOutcome};
use gatehouse_core::config::{AuthorityConfig, LoadedConfig};
use gatehouse_core::revocation::{Change, FeedMarker, Kind, Revocation};

pub enum Backend {
    Embedded(Arc<Store>),
    Redis(Arc<RedisStore>),
}

type Puts = (Vec<(Revocation, PutOutcome)>, Pos);

impl Backend {
    pub async fn open(cfg: &AuthorityConfig, loaded: &LoadedConfig) -> anyhow::Result<Backend> {
        let retention = cfg.change_retention;
        match (&cfg.path, &cfg.store) {
            (_, Some(st)) => {
                let max_lifetime = loaded
                    .config
                    .issuers
                    .iter()
                    .map(|i| i.value.max_token_lifetime.as_secs() as i64)
                    .max()
                    .unwrap_or(86_400);
                let s = RedisStore::open(&st.redis, loaded, retention, max_lifetime).await?;
                Ok(Backend::Redis(Arc::new(s)))
            }
            (Some(p), None) => {
                let path = loaded.resolve(p);
                let s =
                    tokio::task::spawn_blocking(move || Store::open(&path, retention)).await??;
                Ok(Backend::Embedded(Arc::new(s)))
            }
            (None, None) => anyhow::bail!("the authority needs path or store.redis"),
        }
    }

    pub fn describe(&self, cfg: &AuthorityConfig, loaded: &LoadedConfig) -> String {
        match (self, &cfg.path, &cfg.store) {
            (Backend::Redis(_), _, Some(st)) => format!("redis {}", st.redis.url),
            (_, Some(p), _) => loaded.resolve(p).display().to_string(),
            _ => String::new(),
        }
    }

    async fn blocking<T: Send + 'static>(
        s: &Arc<Store>,
        f: impl FnOnce(&Store) -> anyhow::Result<T> + Send + 'static,
    ) -> anyhow::Result<T> {
        let s = s.clone();
        tokio::task::spawn_blocking(move || {
            let r = f(&s);
            if r.is_err() {
                s.recover();
            }
            r
        })
        .await?
    }

    /// Starts whatever keeps `pos` current beyond this process's own
    /// writes (for Redis, the other replicas' writes).
    /// On Redis, every change any replica commits is also recorded in
    /// `commits` with its time (the stream id's).
    pub async fn follow(
        &self,
        pos: &Arc<watch::Sender<Pos>>,
        commits: Arc<crate::records::Commits>,
    ) -> anyhow::Result<()> {
        let p = self.current().await?;
        pos.send_replace(p);
        if let Backend::Redis(r) = self {
            r.spawn_notifier(pos.clone(), commits);
        }
        Ok(())
    }

    pub fn cursor(&self, p: Pos) -> String {
        match self {
            Backend::Embedded(s) => s.cursor(p.1),
            Backend::Redis(r) => redis_store::cursor(&r.epoch(), p),
        }
    }

    pub fn parse_cursor(&self, c: &str) -> Option<Pos> {
        match self {
            Backend::Embedded(s) => s.parse_cursor(c).map(|n| Pos(0, n)),
            Backend::Redis(r) => redis_store::parse_cursor(&r.epoch(), c),
        }
    }

    /// Like [`Backend::parse_cursor`], but a Redis replica that does not
    /// know the cursor's epoch first asks Redis for the current one:
    /// another replica may have seen the store wiped, and a gateway moving
    /// over must not download a snapshot for that.
    pub async fn parse_cursor_fresh(&self, c: &str) -> Option<Pos> {
        if let Some(p) = self.parse_cursor(c) {
            return Some(p);
        }
        match self {
            Backend::Redis(r) if r.refresh_epoch().await.is_ok() => {
                redis_store::parse_cursor(&r.epoch(), c)
            }
            _ => None,
        }
    }

    pub async fn current(&self) -> anyhow::Result<Pos> {
        match self {
            Backend::Embedded(s) => Self::blocking(s, |s| s.current_seq().map(|n| Pos(0, n))).await,
            Backend::Redis(r) => r.current().await,
        }
    }

    pub async fn put(&self, news: Vec<NewRevocation>) -> anyhow::Result<Puts> {
        match self {
            Backend::Embedded(s) => {
                let (r, n) = Self::blocking(s, move |s| s.put(news)).await?;
                Ok((r, Pos(0, n)))
            }
            Backend::Redis(r) => r.put(&news).await,
        }
    }

    pub async fn delete(
        &self,
        id: u64,
        actor: String,
    ) -> anyhow::Result<Option<(Revocation, Pos)>> {
        match self {
            Backend::Embedded(s) => Ok(Self::blocking(s, move |s| s.delete(id, &actor))
                .await?
                .map(|(r, n)| (r, Pos(0, n)))),
            Backend::Redis(r) => r.delete(id, &actor).await,
        }
    }

    pub async fn get(&self, id: u64) -> anyhow::Result<Option<Revocation>> {
        match self {
            Backend::Embedded(s) => Self::blocking(s, move |s| s.get(id)).await,
            Backend::Redis(r) => r.get(id).await,
        }
    }

    /// Where the entry was last written in the change log.
    pub async fn committed(&self, id: u64) -> anyhow::Result<Option<Pos>> {
        match self {
            Backend::Embedded(s) => Ok(Self::blocking(s, move |s| s.committed(id))
                .await?
                .map(|n| Pos(0, n))),
            Backend::Redis(r) => r.committed(id).await,
        }
    }

    /// Gateway records kept by the store (name, JSON): on Redis the table
    /// every replica shares, read fresh; embedded, the gateways known when
    /// the store was opened.
    pub async fn gateways(&self) -> anyhow::Result<Vec<(String, String)>> {
        match self {
            Backend::Embedded(s) => Self::blocking(s, |s| s.gateways()).await,
            Backend::Redis(r) => r.gateways().await,
        }
    }

    /// Whether the store holds the one gateway table of several replicas
    /// (Redis), rather than this process being its only keeper.
    pub fn shares_gateways(&self) -> bool {
        matches!(self, Backend::Redis(_))
    }

    /// One gateway's record as the store holds it (only meaningful on
    /// Redis, where another replica may have written it).
    pub async fn gateway(&self, name: &str) -> anyhow::Result<Option<String>> {
        match self {
            Backend::Embedded(_) => Ok(None),
            Backend::Redis(r) => r.gateway(name).await,
        }
    }

    /// Keeps (`Some`) or forgets (`None`) one gateway's record.
    pub async fn save_gateway(&self, name: String, record: Option<String>) -> anyhow::Result<()> {
        match self {
            Backend::Embedded(s) => {
                Self::blocking(s, move |s| s.save_gateway(&name, record.as_deref())).await
            }
            Backend::Redis(r) => r.save_gateway(&name, record.as_deref()).await,
        }
    }

    pub async fn get_by_key(
        &self,
        issuer: &str,
        kind: Kind,
        value: &str,
    ) -> anyhow::Result<Option<Revocation>> {
        match self {
            Backend::Embedded(s) => {
                let (i, v) = (issuer.to_owned(), value.to_owned());
                Self::blocking(s, move |s| s.get_by_key(&i, kind, &v)).await
            }
            Backend::Redis(r) => r.get_by_key(issuer, kind, value).await,
        }
    }

    pub async fn list(
        &self,
        subject: Option<String>,
        limit: usize,
    ) -> anyhow::Result<Vec<Revocation>> {
        match self {
            Backend::Embedded(s) => {
                Self::blocking(s, move |s| s.list(subject.as_deref(), limit)).await
            }
            Backend::Redis(r) => r.list(subject.as_deref(), limit).await,
        }
    }

    pub async fn len(&self) -> anyhow::Result<u64> {
        match self {
            Backend::Embedded(s) => Self::blocking(s, |s| s.len()).await,
            Backend::Redis(r) => r.len().await,
        }
    }

    /// Changes after `since`, a position of the cursor epoch `epoch` (as
    /// the caller parsed it: the store's epoch may have moved since, and a
    /// store only starts a new epoch for a cursor of its current one).
    pub async fn changes_since(
        &self,
        since: Pos,
        epoch: String,
        max: usize,
    ) -> anyhow::Result<Option<(Vec<Change>, Pos)>> {
        match self {
            Backend::Embedded(s) => {
                Ok(
                    Self::blocking(s, move |s| s.changes_since(since.1, &epoch, max))
                        .await?
                        .map(|(c, n)| (c, Pos(0, n))),
                )
            }
            Backend::Redis(r) => r.changes_since(since, &epoch, max).await,
        }
    }

    /// Remembers a back-channel logout token's `jti` (keyed with its
    /// issuer) until `until`; false for a replay. On Redis the memory is
    /// shared by every replica.
    pub async fn remember_logout(&self, key: String, until: i64, now: i64) -> anyhow::Result<bool> {
        match self {
            Backend::Embedded(s) => {
                Self::blocking(s, move |s| s.remember_logout(&key, until, now)).await
            }
            Backend::Redis(r) => r.remember_logout(&key, until).await,
        }
    }

    pub async fn forget_logout(&self, key: String) -> anyhow::Result<()> {
        match self {
            Backend::Embedded(s) => Self::blocking(s, move |s| s.forget_logout(&key)).await,
            Backend::Redis(r) => r.forget_logout(&key).await,
        }
    }

    pub async fn purge(&self, now: i64) -> anyhow::Result<usize> {
        match self {
            Backend::Embedded(s) => Self::blocking(s, move |s| s.purge(now)).await,
            Backend::Redis(r) => r.purge(now).await,
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn report_session(
        &self,
        issuer: String,
        sub: String,
        sid: String,
        started_at: i64,
        limit: usize,
        max_lifetime: i64,
        now: i64,
    ) -> anyhow::Result<(Vec<Revocation>, Pos)> {
        match self {
            Backend::Embedded(s) => {
                let (r, n) = Self::blocking(s, move |s| {
                    s.report_session(&issuer, &sub, &sid, started_at, limit, max_lifetime)
                })
                .await?;
                Ok((r, Pos(0, n)))
            }
            Backend::Redis(r) => {
                r.report_session(&issuer, &sub, &sid, started_at, limit, max_lifetime, now)
                    .await
            }
        }
    }

    /// Streams the whole set as feed lines into `tx` (bounded), never the
    /// whole set in one buffer. Without its `end` line a gateway applies
    /// nothing, so an error simply stops the stream.
    pub fn snapshot(&self, tx: mpsc::Sender<Bytes>) {
        match self {
            Backend::Embedded(store) => {
                let store = store.clone();
                tokio::task::spawn_blocking(move || embedded_snapshot(&store, tx));
            }
            Backend::Redis(r) => {
                let r = r.clone();
                tokio::spawn(async move {
                    if let Err(e) = r.snapshot(tx).await {
                        tracing::error!(error = %format!("{e:#}"), "snapshot failed");
                    }
                });
            }
        }
    }
}

fn embedded_snapshot(store: &Store, tx: mpsc::Sender<Bytes>) {
    let mut chunk = Vec::with_capacity(80 * 1024);
    let send = |chunk: &mut Vec<u8>| -> bool {
        let full = std::mem::replace(chunk, Vec::with_capacity(80 * 1024));
        tx.blocking_send(Bytes::from(full)).is_ok()
    };
    let mut header_cursor = None;
    let result = store.snapshot_with(|item| match item {
        SnapshotItem::Start(seq) => {
            let cursor = store.cursor(seq);
            header_cursor = Some(cursor.clone());
            crate::records::push_line(&mut chunk, &FeedMarker::Snapshot { cursor });
            true
        }
        SnapshotItem::Entry(stored) => {
            // Stored entries are `Revocation` JSON objects; a feed line is
            // the same object tagged `"op":"put"`.
            chunk.extend_from_slice(br#"{"op":"put","#);
            chunk.extend_from_slice(stored.get(1..).unwrap_or_default());
            chunk.push(b'\n');
            chunk.len() < 64 * 1024 || send(&mut chunk)
        }
    });
    match (result, header_cursor) {
        (Ok(()), Some(cursor)) => {
            crate::records::push_line(&mut chunk, &FeedMarker::End { cursor });
            send(&mut chunk);
        }
        (Err(e), _) => tracing::error!(error = %format!("{e:#}"), "snapshot failed"),
        (Ok(()), None) => {}
    }
}
