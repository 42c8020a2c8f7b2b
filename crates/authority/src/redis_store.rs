//! The authority's state in Redis, shared by any number of stateless
//! authority replicas.
//!
//! The change log is a Redis Stream whose entry ids are the feed cursors,
//! so every replica hands out the same cursors and a gateway can move
//! between replicas without a snapshot. Every write is one Lua script
//! (`redis.lua`), atomic across replicas. A write is acknowledged only
//! after Redis has it durably: with `appendfsync always` (checked at
//! start) Redis fsyncs its AOF before it replies, and `wait_replicas`
//! adds `WAIT` for that many Redis replicas.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncConnectionConfig, Client, Script};
use serde::Serialize;
use tokio::sync::{mpsc, watch};

use crate::records::{push_line, NewRevocation, Pos, PutOutcome};
use gatehouse_core::config::{LoadedConfig, RedisStoreConfig};
use gatehouse_core::revocation::{natural_key, Change, Kind, Revocation};

/// Log records trimmed or entries purged per script run, so one run never
/// holds Redis for long.
const PURGE_BATCH: usize = 10_000;
/// Entries per `HSCAN` step of a snapshot.
const SCAN_COUNT: usize = 2_000;
/// How long the change notifier's `XREAD` blocks before asking again.
const NOTIFY_BLOCK_MS: u64 = 5_000;

pub struct RedisStore {
    client: Client,
    con: ConnectionManager,
    script: Script,
    prefix: String,
    epoch: std::sync::RwLock<String>,
    wait_replicas: u32,
    wait_timeout: Duration,
    timeout: Duration,
    change_retention: u64,
    /// The oldest change a gateway can still need: the longest token
    /// lifetime of any issuer.
    max_lifetime: i64,
    /// Whether the last command reached Redis (for health and the feed).
    reachable: AtomicBool,
}

/// A revocation as sent to the script: no id yet.
#[derive(Serialize)]
struct NewEntry<'a> {
    issuer: &'a str,
    kind: Kind,
    value: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    before: Option<i64>,
    reason: &'a str,
    created_at: i64,
    expires_at: i64,
}

pub fn parse_id(id: &str) -> Option<Pos> {
    let (ms, seq) = id.split_once('-')?;
    Some(Pos(ms.parse().ok()?, seq.parse().ok()?))
}

/// `redis.lua` with the revocation contract's kinds that carry a `before`
/// time written in, so the script never defines them itself.
fn script_source() -> String {
    let kinds: Vec<String> = Kind::ALL
        .iter()
        .filter(|k| k.has_before())
        .map(|k| format!("['{}'] = true", k.as_str()))
        .collect();
    include_str!("redis.lua").replace("--[[kinds with before]]", &kinds.join(", "))
}

fn id_arg(p: Pos) -> String {
    format!("{}-{}", p.0, p.1)
}

impl RedisStore {
    pub async fn open(
        cfg: &RedisStoreConfig,
        loaded: &LoadedConfig,
        change_retention: u64,
        max_lifetime: i64,
    ) -> anyhow::Result<RedisStore> {
        let mut info = redis::IntoConnectionInfo::into_connection_info(cfg.url.as_str())
            .with_context(|| format!("store.redis.url `{}`", cfg.url))?;
        let mut settings = info.redis_settings().clone();
        if let Some(u) = &cfg.username {
            settings = settings.set_username(String::from_utf8(u.read(loaded)?)?);
        }
        if let Some(p) = &cfg.password {
            settings = settings.set_password(String::from_utf8(p.read(loaded)?)?);
        }
        info = info.set_redis_settings(settings);
        let client = match &cfg.ca_file {
            Some(ca) => {
                let path = loaded.resolve(ca);
                let root = std::fs::read(&path)
                    .with_context(|| format!("store.redis.ca_file {}", path.display()))?;
                Client::build_with_tls(
                    info,
                    redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root),
                    },
                )?
            }
            None => Client::open(info)?,
        };
        let mcfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout))
            .set_response_timeout(Some(cfg.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let mut con = tokio::time::timeout(
            cfg.timeout * 2,
            ConnectionManager::new_with_config(client.clone(), mcfg),
        )
        .await
        .map_err(|_| anyhow::anyhow!("timed out"))
        .and_then(|r| r.map_err(anyhow::Error::from))
        .with_context(|| format!("connecting to Redis at {}", cfg.url))?;
        if cfg.require_appendfsync_always {
            let got: Vec<String> = redis::cmd("CONFIG")
                .arg("GET")
                .arg("append*")
                .query_async(&mut con)
                .await
                .context("CONFIG GET append* (set require_appendfsync_always: false if CONFIG is not available to you, and say how durability is ensured)")?;
            let get = |k: &str| {
                got.chunks(2)
                    .find(|c| c.first().map(String::as_str) == Some(k))
                    .and_then(|c| c.get(1).cloned())
                    .unwrap_or_default()
            };
            if get("appendonly") != "yes" || get("appendfsync") != "always" {
                bail!(
                    "Redis at {} runs with appendonly={} appendfsync={}: an acknowledged revocation could be lost in a crash. Run it with `appendonly yes` and `appendfsync always` (or set require_appendfsync_always: false with wait_replicas)",
                    cfg.url,
                    get("appendonly"),
                    get("appendfsync")
                );
            }
        }
        let prefix = cfg.key_prefix.clone();
        let fresh = gatehouse_core::ids::random_id()[..12].to_owned();
        // The first replica to start names the store; a wiped Redis gets a
        // new epoch, so gateways' old cursors lead to a snapshot.
        let _: () = redis::cmd("SET")
            .arg(format!("{prefix}epoch"))
            .arg(&fresh)
            .arg("NX")
            .query_async(&mut con)
            .await
            .context("Redis SET epoch")?;
        let epoch: String = redis::cmd("GET")
            .arg(format!("{prefix}epoch"))
            .query_async(&mut con)
            .await
            .context("Redis GET epoch")?;
        Ok(RedisStore {
            client,
            con,
            script: Script::new(&script_source()),
            prefix,
            epoch: std::sync::RwLock::new(epoch),
            wait_replicas: cfg.wait_replicas,
            wait_timeout: cfg.wait_timeout,
            timeout: cfg.timeout,
            change_retention: change_retention.max(1),
            max_lifetime,
            reachable: AtomicBool::new(true),
        })
    }

    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    pub fn epoch(&self) -> String {
        self.epoch.read().map(|e| e.clone()).unwrap_or_default()
    }

    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    fn noted<T>(&self, r: redis::RedisResult<T>) -> anyhow::Result<T> {
        self.reachable.store(r.is_ok(), Ordering::Relaxed);
        Ok(r?)
    }

    async fn run(&self, op: &str, args: &[String]) -> anyhow::Result<Vec<String>> {
        let mut inv = self.script.prepare_invoke();
        inv.arg(&self.prefix).arg(op);
        for a in args {
            inv.arg(a);
        }
        let mut con = self.con.clone();
        let r = inv.invoke_async(&mut con).await;
        self.noted(r)
            .with_context(|| format!("Redis store script `{op}`"))
    }

    /// Durability beyond the primary's AOF: wait until `wait_replicas`
    /// Redis replicas have the write, or fail (and the API answers 503).
    async fn durable(&self) -> anyhow::Result<()> {
        if self.wait_replicas == 0 {
            return Ok(());
        }
        let mut con = self.con.clone();
        let n: u32 = redis::cmd("WAIT")
            .arg(self.wait_replicas)
            .arg(self.wait_timeout.as_millis() as u64)
            .query_async(&mut con)
            .await
            .context("Redis WAIT")?;
        if n < self.wait_replicas {
            bail!(
                "only {n} of {} Redis replicas confirmed the write",
                self.wait_replicas
            );
        }
        Ok(())
    }

    fn results(out: Vec<String>) -> anyhow::Result<(Vec<(Revocation, PutOutcome)>, Pos)> {
        let mut it = out.into_iter();
        let last = it
            .next()
            .and_then(|l| parse_id(&l))
            .context("Redis store script: no cursor")?;
        let mut results = Vec::new();
        while let (Some(enc), Some(outcome)) = (it.next(), it.next()) {
            let rev: Revocation = serde_json::from_str(&enc).context("stored entry")?;
            let outcome = match outcome.as_str() {
                "created" => PutOutcome::Created,
                "updated" => PutOutcome::Updated,
                _ => PutOutcome::Unchanged,
            };
            results.push((rev, outcome));
        }
        Ok((results, last))
    }

    pub async fn put(
        &self,
        news: &[NewRevocation],
    ) -> anyhow::Result<(Vec<(Revocation, PutOutcome)>, Pos)> {
        let items: Vec<(String, NewEntry<'_>)> = news
            .iter()
            .map(|n| {
                (
                    natural_key(&n.issuer, n.kind, &n.value),
                    NewEntry {
                        issuer: &n.issuer,
                        kind: n.kind,
                        value: &n.value,
                        before: n.before,
                        reason: &n.reason,
                        created_at: n.created_at,
                        expires_at: n.expires_at,
                    },
                )
            })
            .collect();
        let out = self.run("put", &[serde_json::to_string(&items)?]).await?;
        self.durable().await?;
        Self::results(out)
    }

    pub async fn delete(&self, id: u64, actor: &str) -> anyhow::Result<Option<(Revocation, Pos)>> {
        let audit = serde_json::json!({"at": gatehouse_core::clock::now_unix(), "action": "unrevoke", "actor": actor}).to_string();
        let audit = audit.strip_suffix('}').unwrap_or(&audit).to_owned();
        let out = self.run("delete", &[id.to_string(), audit]).await?;
        self.durable().await?;
        match out.as_slice() {
            [pos, rev] => Ok(Some((
                serde_json::from_str(rev).context("stored entry")?,
                parse_id(pos).context("log id")?,
            ))),
            _ => Ok(None),
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub async fn report_session(
        &self,
        issuer: &str,
        sub: &str,
        sid: &str,
        started_at: i64,
        limit: usize,
        max_lifetime: i64,
        now: i64,
    ) -> anyhow::Result<(Vec<Revocation>, Pos)> {
        let args = [
            issuer.to_owned(),
            sub.to_owned(),
            sid.to_owned(),
            started_at.to_string(),
            limit.to_string(),
            now.to_string(),
            max_lifetime.to_string(),
        ];
        let out = self.run("session", &args).await?;
        self.durable().await?;
        let (results, pos) = Self::results(out)?;
        Ok((results.into_iter().map(|(r, _)| r).collect(), pos))
    }

    /// Remembers a logout token's `jti` until `until` (Unix seconds), in
    /// Redis, so every replica refuses its replay; false when it is already
    /// remembered.
    pub async fn remember_logout(&self, key: &str, until: i64) -> anyhow::Result<bool> {
        let mut con = self.con.clone();
        let r = redis::cmd("SET")
            .arg(self.key(&format!("logout:{key}")))
            .arg(1)
            .arg("NX")
            .arg("EXAT")
            .arg(until.max(1))
            .query_async::<Option<String>>(&mut con)
            .await;
        let set = self.noted(r).context("Redis SET logout jti")?;
        self.durable().await?;
        Ok(set.is_some())
    }

    pub async fn forget_logout(&self, key: &str) -> anyhow::Result<()> {
        let mut con = self.con.clone();
        let r = redis::cmd("DEL")
            .arg(self.key(&format!("logout:{key}")))
            .query_async::<i64>(&mut con)
            .await;
        self.noted(r).context("Redis DEL logout jti")?;
        Ok(())
    }

    async fn hget(&self, hash: &str, field: &str) -> anyhow::Result<Option<String>> {
        let mut con = self.con.clone();
        let r = redis::cmd("HGET")
            .arg(self.key(hash))
            .arg(field)
            .query_async(&mut con)
            .await;
        self.noted(r).context("Redis HGET")
    }

    /// The log position of the entry's latest write.
    pub async fn committed(&self, id: u64) -> anyhow::Result<Option<Pos>> {
        Ok(self
            .hget("committed", &id.to_string())
            .await?
            .and_then(|p| parse_id(&p)))
    }

    /// One gateway's shared record (JSON), as the last replica it polled
    /// wrote it.
    pub async fn gateway(&self, name: &str) -> anyhow::Result<Option<String>> {
        self.hget("gateways", name).await
    }

    /// Every gateway record (name, JSON): the table all replicas share.
    pub async fn gateways(&self) -> anyhow::Result<Vec<(String, String)>> {
        let mut con = self.con.clone();
        let r = redis::cmd("HGETALL")
            .arg(self.key("gateways"))
            .query_async::<Vec<(String, String)>>(&mut con)
            .await;
        self.noted(r).context("Redis HGETALL gateways")
    }

    /// Writes one gateway's record (`Some`) or forgets it (`None`).
    pub async fn save_gateway(&self, name: &str, record: Option<&str>) -> anyhow::Result<()> {
        let mut con = self.con.clone();
        let mut cmd = match record {
            Some(_) => redis::cmd("HSET"),
            None => redis::cmd("HDEL"),
        };
        cmd.arg(self.key("gateways")).arg(name);
        if let Some(r) = record {
            cmd.arg(r);
        }
        let r = cmd.query_async::<i64>(&mut con).await;
        self.noted(r).context("Redis gateway record")?;
        Ok(())
    }

    pub async fn get(&self, id: u64) -> anyhow::Result<Option<Revocation>> {
        let Some(key) = self.hget("byid", &id.to_string()).await? else {
            return Ok(None);
        };
        self.hget("entries", &key)
            .await?
            .map(|v| serde_json::from_str(&v).context("stored entry"))
            .transpose()
    }

    pub async fn get_by_key(
        &self,
        issuer: &str,
        kind: Kind,
        value: &str,
    ) -> anyhow::Result<Option<Revocation>> {
        self.hget("entries", &natural_key(issuer, kind, value))
            .await?
            .map(|v| serde_json::from_str(&v).context("stored entry"))
            .transpose()
    }

    /// One `HSCAN` page of the current entries: the next scan cursor (0 at
    /// the end) and the stored entries.
    async fn scan_page(&self, cursor: u64) -> anyhow::Result<(u64, Vec<Vec<u8>>)> {
        let mut con = self.con.clone();
        let r = redis::cmd("HSCAN")
            .arg(self.key("entries"))
            .arg(cursor)
            .arg("COUNT")
            .arg(SCAN_COUNT)
            .query_async::<(u64, Vec<Vec<u8>>)>(&mut con)
            .await;
        let (next, mut items) = self.noted(r).context("Redis HSCAN")?;
        // Field, value, field, value: keep the values.
        let values = items.drain(..).skip(1).step_by(2).collect();
        Ok((next, values))
    }

    pub async fn list(
        &self,
        subject: Option<&str>,
        limit: usize,
    ) -> anyhow::Result<Vec<Revocation>> {
        let mut out: Vec<Revocation> = Vec::new();
        let mut cursor = 0;
        loop {
            let (next, items) = self.scan_page(cursor).await?;
            for v in items {
                let r: Revocation = serde_json::from_slice(&v).context("stored entry")?;
                // HSCAN may return an entry twice.
                if subject.is_none_or(|s| r.value == s) && !out.iter().any(|o| o.id == r.id) {
                    out.push(r);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
            if next == 0 {
                return Ok(out);
            }
            cursor = next;
        }
    }

    pub async fn len(&self) -> anyhow::Result<u64> {
        let mut con = self.con.clone();
        let r = redis::cmd("HLEN")
            .arg(self.key("entries"))
            .query_async(&mut con)
            .await;
        self.noted(r).context("Redis HLEN")
    }

    pub async fn current(&self) -> anyhow::Result<Pos> {
        let mut con = self.con.clone();
        let r = redis::cmd("GET")
            .arg(self.key("last"))
            .query_async::<Option<String>>(&mut con)
            .await;
        Ok(self
            .noted(r)
            .context("Redis GET last")?
            .and_then(|l| parse_id(&l))
            .unwrap_or_default())
    }

    /// The store's epoch and newest log position, read together from
    /// Redis (a wiped Redis gets a new epoch here), and remembered: every
    /// replica tags cursors with the epoch Redis has now, not the one it
    /// saw at start.
    pub async fn refresh_epoch(&self) -> anyhow::Result<(String, Pos)> {
        let out = self
            .run(
                "epoch",
                &[gatehouse_core::ids::random_id()[..12].to_owned()],
            )
            .await?;
        let (Some(epoch), Some(last)) = (out.first(), out.get(1)) else {
            bail!("Redis store script `epoch`: short answer");
        };
        if *epoch != self.epoch() {
            if let Ok(mut e) = self.epoch.write() {
                e.clone_from(epoch);
            }
        }
        Ok((epoch.clone(), parse_id(last).unwrap_or_default()))
    }

    /// Changes after `since`, or `None` when they are no longer kept, the
    /// cursor is ahead of the log, or Redis has been wiped since (a new
    /// epoch): the caller then sends a snapshot.
    pub async fn changes_since(
        &self,
        since: Pos,
        since_epoch: &str,
        max: usize,
    ) -> anyhow::Result<Option<(Vec<Change>, Pos)>> {
        let out = self
            .run(
                "changes",
                &[
                    id_arg(since),
                    max.to_string(),
                    gatehouse_core::ids::random_id()[..12].to_owned(),
                    since_epoch.to_owned(),
                ],
            )
            .await?;
        let mut it = out.into_iter();
        let (Some(epoch), Some(last), Some(floor)) = (it.next(), it.next(), it.next()) else {
            bail!("Redis store script `changes`: short answer");
        };
        if epoch != self.epoch() {
            if let Ok(mut e) = self.epoch.write() {
                e.clone_from(&epoch);
            }
        }
        if epoch != since_epoch {
            return Ok(None);
        }
        let last = parse_id(&last).unwrap_or_default();
        let floor = parse_id(&floor).unwrap_or_default();
        if since > last || since < floor {
            return Ok(None);
        }
        let mut changes = Vec::new();
        let mut upto = since;
        while let (Some(id), Some(c)) = (it.next(), it.next()) {
            changes.push(serde_json::from_str(&c).context("logged change")?);
            upto = parse_id(&id).unwrap_or(upto);
        }
        // A full page may not reach `last`: the cursor then points at the
        // last change sent and the client asks again.
        let full = changes.len() >= max;
        Ok(Some((changes, if full { upto } else { last })))
    }

    /// Streams the current set as feed lines through `tx`, `HSCAN` page by
    /// page. The snapshot's cursor is read first: an entry written during
    /// the scan may or may not be in it, and comes again in the changes
    /// after the cursor, which the gateway asks for next.
    pub async fn snapshot(&self, tx: mpsc::Sender<Bytes>) -> anyhow::Result<()> {
        let (epoch, pos) = self.refresh_epoch().await?;
        let mut chunk = Vec::with_capacity(80 * 1024);
        push_line(
            &mut chunk,
            &gatehouse_core::revocation::FeedMarker::Snapshot {
                cursor: cursor(&epoch, pos),
            },
        );
        let mut scan = 0;
        loop {
            let (next, items) = self.scan_page(scan).await?;
            for v in items {
                chunk.extend_from_slice(br#"{"op":"put","#);
                chunk.extend_from_slice(v.get(1..).unwrap_or_default());
                chunk.push(b'\n');
            }
            if chunk.len() >= 64 * 1024 {
                let full = std::mem::replace(&mut chunk, Vec::with_capacity(80 * 1024));
                if tx.send(Bytes::from(full)).await.is_err() {
                    bail!("snapshot reader went away");
                }
            }
            if next == 0 {
                break;
            }
            scan = next;
        }
        push_line(
            &mut chunk,
            &gatehouse_core::revocation::FeedMarker::End {
                cursor: cursor(&epoch, pos),
            },
        );
        let _ = tx.send(Bytes::from(chunk)).await;
        Ok(())
    }

    /// Forgets expired entries and change records nobody can need, a batch
    /// per script run.
    pub async fn purge(&self, now: i64) -> anyhow::Result<usize> {
        let min_ms = (now - self.max_lifetime).max(0) * 1000;
        let mut total = 0;
        loop {
            let out = self
                .run(
                    "purge",
                    &[
                        now.to_string(),
                        self.change_retention.to_string(),
                        min_ms.to_string(),
                        PURGE_BATCH.to_string(),
                    ],
                )
                .await?;
            let removed: usize = out.first().and_then(|s| s.parse().ok()).unwrap_or(0);
            let scanned: usize = out.get(1).and_then(|s| s.parse().ok()).unwrap_or(0);
            total += removed;
            if scanned < PURGE_BATCH {
                return Ok(total);
            }
        }
    }

    /// Follows the change log with `XREAD BLOCK` on a connection of its
    /// own and publishes the newest position, so long-polls on this
    /// replica wake the moment any replica writes.
    pub fn spawn_notifier(
        self: &Arc<Self>,
        pos: Arc<watch::Sender<Pos>>,
        commits: Arc<crate::records::Commits>,
    ) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut con = None;
            loop {
                let Some(me) = weak.upgrade() else { return };
                if con.is_none() {
                    let cfg = AsyncConnectionConfig::new()
                        .set_connection_timeout(Some(me.timeout))
                        .set_response_timeout(Some(
                            Duration::from_millis(NOTIFY_BLOCK_MS) + me.timeout,
                        ));
                    match me
                        .client
                        .get_multiplexed_async_connection_with_config(&cfg)
                        .await
                    {
                        Ok(c) => con = Some(c),
                        Err(e) => {
                            me.reachable.store(false, Ordering::Relaxed);
                            tracing::warn!(error = %e, "Redis change notifier cannot connect");
                            drop(me);
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                    }
                }
                let Some(c) = con.as_mut() else { continue };
                let from = *pos.borrow();
                let r = redis::cmd("XREAD")
                    .arg("COUNT")
                    .arg(1000)
                    .arg("BLOCK")
                    .arg(NOTIFY_BLOCK_MS)
                    .arg("STREAMS")
                    .arg(me.key("log"))
                    .arg(id_arg(from))
                    .query_async::<Option<redis::streams::StreamReadReply>>(c)
                    .await;
                match r {
                    Ok(reply) => {
                        me.reachable.store(true, Ordering::Relaxed);
                        let mut newest = None;
                        for p in reply
                            .iter()
                            .flat_map(|r| r.keys.iter())
                            .flat_map(|k| k.ids.iter())
                            .filter_map(|i| parse_id(&i.id))
                        {
                            // A stream id's first part is its commit time.
                            commits.record(p, p.0 as i64);
                            newest = newest.max(Some(p));
                        }
                        if let Some(n) = newest {
                            pos.send_if_modified(|cur| {
                                let newer = n > *cur;
                                *cur = (*cur).max(n);
                                newer
                            });
                        }
                    }
                    Err(e) => {
                        me.reachable.store(false, Ordering::Relaxed);
                        tracing::warn!(error = %e, "Redis change notifier failed");
                        con = None;
                        drop(me);
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        });
    }
}

pub fn cursor(epoch: &str, p: Pos) -> String {
    format!("{epoch}-{}-{}", p.0, p.1)
}

pub fn parse_cursor(epoch: &str, c: &str) -> Option<Pos> {
    let (rest, seq) = c.rsplit_once('-')?;
    let (e, ms) = rest.rsplit_once('-')?;
    (e == epoch).then_some(())?;
    Some(Pos(ms.parse().ok()?, seq.parse().ok()?))
}
