//! The authority's durable store (redb). Every write is one transaction
//! committed with redb's default durability (fsync'd) before the API
//! answers 2xx, so an acknowledged revocation survives a crash.
//!
//! Tables: the current entries by natural key, an id index, an expiry
//! index for purging, the change log the feed serves (by sequence number),
//! sessions per subject (for the session limit), and an audit log.

use std::path::Path;

use anyhow::Context;
use redb::{Database, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::{Deserialize, Serialize};

use crate::records::{NewRevocation, PutOutcome};
use gatehouse_core::revocation::{natural_key, Change, Kind, Revocation};

const ENTRIES: TableDefinition<&str, &[u8]> = TableDefinition::new("entries");
const BY_ID: TableDefinition<u64, &str> = TableDefinition::new("by_id");
const EXPIRY: TableDefinition<(i64, &str), ()> = TableDefinition::new("expiry");
const CHANGES: TableDefinition<u64, &[u8]> = TableDefinition::new("changes");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const META_STR: TableDefinition<&str, &str> = TableDefinition::new("meta_str");
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const AUDIT: TableDefinition<u64, &[u8]> = TableDefinition::new("audit");
/// The change-log sequence of each entry's latest write (by id): what a
/// receipt compares with the gateways' acknowledged cursors.
const COMMITTED: TableDefinition<u64, u64> = TableDefinition::new("committed");
/// The gateways that have read the feed (name → their last known record,
/// JSON), written when one is first seen: after a restart the authority
/// still waits for them.
const GATEWAYS: TableDefinition<&str, &str> = TableDefinition::new("gateways");
/// Back-channel logout token ids seen (`issuer\0jti`), until when.
const LOGOUT_JTIS: TableDefinition<&str, i64> = TableDefinition::new("logout_jtis");

/// What [`Store::snapshot_with`] hands out, in order.
pub enum SnapshotItem<'a> {
    Start(u64),
    /// A stored `Revocation` as JSON.
    Entry(&'a [u8]),
}

#[derive(Serialize, Deserialize)]
struct Session {
    sid: String,
    started_at: i64,
    /// Arrival order at the store (a per-store counter): the session limit
    /// replaces the session that arrived first, whatever `started_at` says
    /// (whole seconds tie). 0 for sessions recorded before this field.
    #[serde(default)]
    seq: u64,
}

pub struct Store {
    /// `None` only between a failed reopen and the next attempt.
    db: std::sync::RwLock<Option<Database>>,
    path: std::path::PathBuf,
    /// Replaced when a gateway shows a cursor ahead of the store (it was
    /// restored from a backup), so no sequence number is reused in one epoch.
    epoch: std::sync::RwLock<String>,
    change_retention: u64,
}

/// The change-log position after `prev`: the wall clock in microseconds
/// when it is ahead, else `prev + 1`. Positions are never handed out twice
/// for different changes, even by a store restored from a backup and then
/// written to (its new positions are later than any it handed out before
/// the restore, as long as the clock does not go back by more than the
/// restored span): a gateway holding a cursor from the lost future gets
/// the new changes after it, never positions it believes it has.
fn next_position(prev: u64) -> u64 {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    (prev + 1).max(now_us)
}

fn get_u64(t: &impl ReadableTable<&'static str, u64>, k: &str) -> anyhow::Result<u64> {
    Ok(t.get(k)?.map(|v| v.value()).unwrap_or(0))
}

impl Store {
    pub fn open(path: &Path, change_retention: u64) -> anyhow::Result<Store> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        // Created empty with mode 0600 first (redb initializes an empty
        // file), so the store is never readable by others, not even briefly.
        let mut create = std::fs::OpenOptions::new();
        create.write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            create.mode(0o600);
        }
        match create.open(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).with_context(|| format!("creating store {}", path.display())),
        }
        let db =
            Database::create(path).with_context(|| format!("opening store {}", path.display()))?;
        let tx = db.begin_write()?;
        let epoch = {
            // Create every table so readers never meet a missing one.
            tx.open_table(ENTRIES)?;
            tx.open_table(BY_ID)?;
            tx.open_table(EXPIRY)?;
            tx.open_table(CHANGES)?;
            tx.open_table(META)?;
            tx.open_table(SESSIONS)?;
            tx.open_table(AUDIT)?;
            tx.open_table(LOGOUT_JTIS)?;
            tx.open_table(COMMITTED)?;
            tx.open_table(GATEWAYS)?;
            let mut m = tx.open_table(META_STR)?;
            let existing = m.get("epoch")?.map(|v| v.value().to_owned());
            match existing {
                Some(e) => e,
                None => {
                    // A new store gets a new epoch, so gateways holding a
                    // cursor from an older store take a fresh snapshot.
                    let e = gatehouse_core::ids::random_id()[..12].to_owned();
                    m.insert("epoch", e.as_str())?;
                    e
                }
            }
        };
        tx.commit()?;
        restrict_mode(path)?;
        Ok(Store {
            db: std::sync::RwLock::new(Some(db)),
            path: path.to_owned(),
            epoch: std::sync::RwLock::new(epoch),
            change_retention: change_retention.max(1),
        })
    }

    /// The open database, read-locked for the call.
    fn db(&self) -> anyhow::Result<DbGuard<'_>> {
        let g = self
            .db
            .read()
            .map_err(|_| anyhow::anyhow!("store lock poisoned"))?;
        if g.is_none() {
            anyhow::bail!("store {} is closed after an I/O error", self.path.display());
        }
        Ok(DbGuard(g))
    }

    /// After a failed write redb refuses everything until it is reopened
    /// (`PreviousIo`): a full disk would otherwise need a restart once
    /// space is back. Reopening runs redb's repair; until it succeeds the
    /// API keeps answering 503.
    pub fn recover(&self) {
        let Ok(mut g) = self.db.write() else { return };
        drop(g.take());
        match Database::create(&self.path) {
            Ok(db) => {
                tracing::warn!(store = %self.path.display(), "store reopened after an I/O error");
                *g = Some(db);
            }
            Err(e) => {
                tracing::error!(store = %self.path.display(), error = %e, "store cannot be reopened yet")
            }
        }
    }

    pub fn epoch(&self) -> String {
        self.epoch.read().map(|e| e.clone()).unwrap_or_default()
    }

    pub fn cursor(&self, seq: u64) -> String {
        format!("{}-{}", self.epoch(), seq)
    }

    /// Parses a cursor of this store; `None` for another store's or garbage.
    pub fn parse_cursor(&self, c: &str) -> Option<u64> {
        let (epoch, seq) = c.rsplit_once('-')?;
        (epoch == self.epoch()).then(|| seq.parse().ok()).flatten()
    }

    /// Gives the store a new epoch, durably. Called when a gateway holds a
    /// cursor ahead of the change log: the store went back in time
    /// (restored from a backup), and the sequence numbers past its end
    /// would otherwise be handed out again for other changes. Gateways
    /// then take a snapshot of the new epoch, which they merge.
    pub fn new_epoch(&self) -> anyhow::Result<String> {
        let e = gatehouse_core::ids::random_id()[..12].to_owned();
        let tx = self.db()?.begin_write()?;
        tx.open_table(META_STR)?.insert("epoch", e.as_str())?;
        tx.commit()?;
        if let Ok(mut g) = self.epoch.write() {
            g.clone_from(&e);
        }
        Ok(e)
    }

    pub fn current_seq(&self) -> anyhow::Result<u64> {
        let tx = self.db()?.begin_read()?;
        get_u64(&tx.open_table(META)?, "seq")
    }

    /// Adds or strengthens revocations in one durable transaction. Returns
    /// each entry as stored with what happened to it, and the new sequence.
    pub fn put(
        &self,
        news: Vec<NewRevocation>,
    ) -> anyhow::Result<(Vec<(Revocation, PutOutcome)>, u64)> {
        let tx = self.db()?.begin_write()?;
        let out = put_tx(&tx, news)?;
        tx.commit()?;
        Ok(out)
    }

    /// Un-revokes, durably, with an audit record. Returns the removed entry.
    pub fn delete(&self, id: u64, actor: &str) -> anyhow::Result<Option<(Revocation, u64)>> {
        let tx = self.db()?.begin_write()?;
        let out;
        {
            let mut by_id = tx.open_table(BY_ID)?;
            let Some(key) = by_id.remove(id)?.map(|k| k.value().to_owned()) else {
                return Ok(None);
            };
            tx.open_table(COMMITTED)?.remove(id)?;
            let mut entries = tx.open_table(ENTRIES)?;
            let Some(rev) = entries
                .remove(key.as_str())?
                .map(|v| serde_json::from_slice::<Revocation>(v.value()))
            else {
                return Ok(None);
            };
            let rev = rev?;
            tx.open_table(EXPIRY)?
                .remove((rev.expires_at, key.as_str()))?;
            let mut meta = tx.open_table(META)?;
            let seq = next_position(get_u64(&meta, "seq")?);
            meta.insert("seq", seq)?;
            tx.open_table(CHANGES)?.insert(
                seq,
                serde_json::to_vec(&Change::Del(rev.clone()))?.as_slice(),
            )?;
            let mut audit = tx.open_table(AUDIT)?;
            let n = audit.last()?.map(|(k, _)| k.value()).unwrap_or(0) + 1;
            let record = serde_json::json!({"at": gatehouse_core::clock::now_unix(), "action": "unrevoke", "actor": actor, "entry": rev});
            audit.insert(n, record.to_string().as_bytes())?;
            out = (rev, seq);
        }
        tx.commit()?;
        Ok(Some(out))
    }

    /// The change-log sequence of the entry's latest write.
    pub fn committed(&self, id: u64) -> anyhow::Result<Option<u64>> {
        let tx = self.db()?.begin_read()?;
        let v = tx.open_table(COMMITTED)?.get(id)?.map(|v| v.value());
        Ok(v)
    }

    /// Every gateway record kept (name, JSON).
    pub fn gateways(&self) -> anyhow::Result<Vec<(String, String)>> {
        let tx = self.db()?.begin_read()?;
        let t = tx.open_table(GATEWAYS)?;
        let mut out = Vec::new();
        for item in t.iter()? {
            let (k, v) = item?;
            out.push((k.value().to_owned(), v.value().to_owned()));
        }
        Ok(out)
    }

    /// Keeps one gateway's record (`Some`) or forgets it (`None`).
    pub fn save_gateway(&self, name: &str, record: Option<&str>) -> anyhow::Result<()> {
        let tx = self.db()?.begin_write()?;
        {
            let mut t = tx.open_table(GATEWAYS)?;
            match record {
                Some(r) => {
                    t.insert(name, r)?;
                }
                None => {
                    t.remove(name)?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    pub fn get(&self, id: u64) -> anyhow::Result<Option<Revocation>> {
        let tx = self.db()?.begin_read()?;
        let Some(key) = tx.open_table(BY_ID)?.get(id)?.map(|k| k.value().to_owned()) else {
            return Ok(None);
        };
        let entries = tx.open_table(ENTRIES)?;
        let found = entries.get(key.as_str())?;
        Ok(match found {
            Some(v) => Some(serde_json::from_slice(v.value())?),
            None => None,
        })
    }

    pub fn get_by_key(
        &self,
        issuer: &str,
        kind: Kind,
        value: &str,
    ) -> anyhow::Result<Option<Revocation>> {
        let tx = self.db()?.begin_read()?;
        let entries = tx.open_table(ENTRIES)?;
        let found = entries.get(natural_key(issuer, kind, value).as_str())?;
        Ok(match found {
            Some(v) => Some(serde_json::from_slice(v.value())?),
            None => None,
        })
    }

    /// Entries that concern a subject: its `sub` entry and the `sid`/`jti`
    /// entries whose session or token belonged to it are not linked to the
    /// subject in the model, so this lists `sub` entries by value and any
    /// entry whose value equals the subject. A full scan, for the admin API.
    pub fn list(&self, subject: Option<&str>, limit: usize) -> anyhow::Result<Vec<Revocation>> {
        let tx = self.db()?.begin_read()?;
        let entries = tx.open_table(ENTRIES)?;
        let mut out = Vec::new();
        for item in entries.iter()? {
            let (_, v) = item?;
            let r: Revocation = serde_json::from_slice(v.value())?;
            if subject.is_none_or(|s| r.value == s) {
                out.push(r);
                if out.len() >= limit {
                    break;
                }
            }
        }
        Ok(out)
    }

    pub fn len(&self) -> anyhow::Result<u64> {
        let tx = self.db()?.begin_read()?;
        Ok(tx.open_table(ENTRIES)?.len()?)
    }

    pub fn is_empty(&self) -> anyhow::Result<bool> {
        Ok(self.len()? == 0)
    }

    /// Changes after `since`, or `None` when they are no longer kept (or
    /// `since` is ahead of us): the caller then sends a snapshot.
    pub fn changes_since(
        &self,
        since: u64,
        since_epoch: &str,
        max: usize,
    ) -> anyhow::Result<Option<(Vec<Change>, u64)>> {
        let tx = self.db()?.begin_read()?;
        let meta = tx.open_table(META)?;
        let seq = get_u64(&meta, "seq")?;
        let min_seq = get_u64(&meta, "min_seq")?;
        if since_epoch != self.epoch() {
            return Ok(None);
        }
        if since > seq {
            drop(meta);
            drop(tx);
            let e = self.new_epoch()?;
            tracing::warn!(since, seq, epoch = %e, "a gateway holds a cursor ahead of this store (restored from a backup?): new epoch, gateways merge a fresh snapshot");
            return Ok(None);
        }
        if since + 1 < min_seq {
            return Ok(None);
        }
        let changes = tx.open_table(CHANGES)?;
        let mut out = Vec::new();
        let mut last = since;
        for item in changes.range(since + 1..)? {
            let (k, v) = item?;
            out.push(serde_json::from_slice(v.value())?);
            last = k.value();
            if out.len() >= max {
                break;
            }
        }
        // A full page may not reach `seq`: the cursor then points at the
        // last change sent and the client asks again.
        let upto = if out.len() >= max { last } else { seq };
        Ok(Some((out, upto)))
    }

    /// Streams every current entry (its stored JSON) to `emit` from one
    /// consistent read transaction, after the sequence the snapshot
    /// corresponds to. `emit` returning false stops early.
    pub fn snapshot_with(
        &self,
        mut emit: impl FnMut(SnapshotItem<'_>) -> bool,
    ) -> anyhow::Result<()> {
        let tx = self.db()?.begin_read()?;
        emit(SnapshotItem::Start(get_u64(&tx.open_table(META)?, "seq")?));
        let entries = tx.open_table(ENTRIES)?;
        for item in entries.iter()? {
            let (_, v) = item?;
            if !emit(SnapshotItem::Entry(v.value())) {
                anyhow::bail!("snapshot reader went away");
            }
        }
        Ok(())
    }

    /// Forgets entries past their expiry and change-log records beyond the
    /// retention. Expired entries need no change record: every gateway
    /// expires them by itself at the same time.
    pub fn purge(&self, now: i64) -> anyhow::Result<usize> {
        let tx = self.db()?.begin_write()?;
        let mut removed = 0;
        {
            let mut expiry = tx.open_table(EXPIRY)?;
            let mut entries = tx.open_table(ENTRIES)?;
            let mut by_id = tx.open_table(BY_ID)?;
            let mut committed = tx.open_table(COMMITTED)?;
            let due: Vec<(i64, String)> = expiry
                .range(..(now, ""))?
                .map(|i| i.map(|(k, _)| (k.value().0, k.value().1.to_owned())))
                .collect::<Result<_, _>>()?;
            for (at, key) in due {
                expiry.remove((at, key.as_str()))?;
                if let Some(v) = entries.remove(key.as_str())? {
                    let r: Revocation = serde_json::from_slice(v.value())?;
                    by_id.remove(r.id)?;
                    committed.remove(r.id)?;
                    removed += 1;
                }
            }
            tx.open_table(LOGOUT_JTIS)?.retain(|_, until| until > now)?;
            let mut meta = tx.open_table(META)?;
            // Keep the newest `change_retention` records. Positions have
            // gaps (see `next_position`), so the records are counted;
            // `min_seq` is one past the newest record dropped: a cursor
            // before it may have missed one.
            let mut changes = tx.open_table(CHANGES)?;
            let n = changes.len()?;
            if n > self.change_retention {
                let drop = (n - self.change_retention) as usize;
                let last_dropped = match changes.iter()?.nth(drop - 1) {
                    Some(item) => Some(item?.0.value()),
                    None => None,
                };
                if let Some(last) = last_dropped {
                    changes.retain_in(..=last, |_, _| false)?;
                    if last + 1 > get_u64(&meta, "min_seq")? {
                        meta.insert("min_seq", last + 1)?;
                    }
                }
            }
        }
        tx.commit()?;
        Ok(removed)
    }

    /// Remembers a logout token's `jti` until `until` (Unix seconds);
    /// false when it is already remembered (a replay).
    pub fn remember_logout(&self, key: &str, until: i64, now: i64) -> anyhow::Result<bool> {
        let tx = self.db()?.begin_write()?;
        let fresh;
        {
            let mut t = tx.open_table(LOGOUT_JTIS)?;
            let seen = t.get(key)?.map(|v| v.value());
            fresh = seen.is_none_or(|u| u <= now);
            if fresh {
                t.insert(key, until)?;
            }
        }
        tx.commit()?;
        Ok(fresh)
    }

    /// Forgets a remembered `jti` (its logout could not be stored, so the
    /// identity provider's retry must not count as a replay).
    pub fn forget_logout(&self, key: &str) -> anyhow::Result<()> {
        let tx = self.db()?.begin_write()?;
        tx.open_table(LOGOUT_JTIS)?.remove(key)?;
        tx.commit()?;
        Ok(())
    }

    /// Records a login's session and, over `limit`, revokes the oldest
    /// sessions with reason `replaced`, in the same durable transaction (so
    /// concurrent logins cannot both keep a slot).
    pub fn report_session(
        &self,
        issuer: &str,
        sub: &str,
        sid: &str,
        started_at: i64,
        limit: usize,
        max_lifetime: i64,
    ) -> anyhow::Result<(Vec<Revocation>, u64)> {
        let tx = self.db()?.begin_write()?;
        let evicted;
        {
            let mut sessions = tx.open_table(SESSIONS)?;
            let key = format!("{issuer}\u{0}{sub}");
            let mut list: Vec<Session> = match sessions.get(key.as_str())? {
                Some(v) => serde_json::from_slice(v.value())?,
                None => Vec::new(),
            };
            // Sessions older than any token lifetime are gone anyway.
            list.retain(|s| s.started_at + max_lifetime > gatehouse_core::clock::now_unix());
            if !list.iter().any(|s| s.sid == sid) {
                let mut meta = tx.open_table(META)?;
                let seq = get_u64(&meta, "session_seq")? + 1;
                meta.insert("session_seq", seq)?;
                list.push(Session {
                    sid: sid.to_owned(),
                    started_at,
                    seq,
                });
            }
            list.sort_by_key(|s| (s.seq, s.started_at));
            let over = list.len().saturating_sub(limit);
            evicted = list.drain(..over).map(|s| s.sid).collect::<Vec<_>>();
            sessions.insert(key.as_str(), serde_json::to_vec(&list)?.as_slice())?;
        }
        let now = gatehouse_core::clock::now_unix();
        let news = evicted
            .into_iter()
            .map(|sid| NewRevocation {
                issuer: issuer.to_owned(),
                kind: Kind::Sid,
                value: sid,
                before: None,
                reason: "replaced".to_owned(),
                created_at: now,
                expires_at: now + max_lifetime,
            })
            .collect();
        let (results, seq) = put_tx(&tx, news)?;
        tx.commit()?;
        Ok((results.into_iter().map(|(r, _)| r).collect(), seq))
    }
}

/// The store lists every revoked session and subject: readable by the
/// authority's user only (mode 0600).
fn restrict_mode(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("setting the mode of {}", path.display()))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

struct DbGuard<'a>(std::sync::RwLockReadGuard<'a, Option<Database>>);

impl std::ops::Deref for DbGuard<'_> {
    type Target = Database;
    fn deref(&self) -> &Database {
        // `Store::db` hands out a guard only over an open database.
        match self.0.as_ref() {
            Some(db) => db,
            None => unreachable!("checked in Store::db"),
        }
    }
}

/// The body of [`Store::put`], inside a transaction the caller commits.
fn put_tx(
    tx: &redb::WriteTransaction,
    news: Vec<NewRevocation>,
) -> anyhow::Result<(Vec<(Revocation, PutOutcome)>, u64)> {
    let mut results = Vec::with_capacity(news.len());
    let seq;
    {
        let mut entries = tx.open_table(ENTRIES)?;
        let mut by_id = tx.open_table(BY_ID)?;
        let mut expiry = tx.open_table(EXPIRY)?;
        let mut changes = tx.open_table(CHANGES)?;
        let mut committed = tx.open_table(COMMITTED)?;
        let mut meta = tx.open_table(META)?;
        let mut next_seq = get_u64(&meta, "seq")?;
        let mut next_id = get_u64(&meta, "next_id")?;
        let now = gatehouse_core::clock::now_unix();
        for n in news {
            let key = natural_key(&n.issuer, n.kind, &n.value);
            let existing: Option<Revocation> = match entries.get(key.as_str())? {
                Some(v) => Some(serde_json::from_slice(v.value())?),
                None => None,
            };
            // An entry past its expiry that the purger has not reached yet
            // is gone for every gateway: revoking again creates it anew.
            let existing = match existing {
                Some(old) if old.expires_at <= now => {
                    by_id.remove(old.id)?;
                    committed.remove(old.id)?;
                    expiry.remove((old.expires_at, key.as_str()))?;
                    None
                }
                e => e,
            };
            let (rev, outcome) = match existing {
                // Unchanged only when the new entry neither moves `before`
                // forward nor lives longer: a revocation without
                // `expires_at` after a short one made earlier must extend
                // it (found by a black-box round: it was "unchanged", and
                // the token passed again when the short one ended).
                Some(old)
                    if !(n.kind.has_before() && n.before > old.before)
                        && n.expires_at <= old.expires_at =>
                {
                    (old, PutOutcome::Unchanged)
                }
                Some(old) => {
                    // `before` only moves forward; the entry lives as long
                    // as the latest token it can match.
                    let mut r = old.clone();
                    r.before = r.before.max(n.before);
                    r.reason = n.reason;
                    r.created_at = n.created_at;
                    r.expires_at = old.expires_at.max(n.expires_at);
                    expiry.remove((old.expires_at, key.as_str()))?;
                    (r, PutOutcome::Updated)
                }
                None => {
                    next_id += 1;
                    let r = Revocation {
                        id: next_id,
                        issuer: n.issuer,
                        kind: n.kind,
                        value: n.value,
                        before: n.before,
                        reason: n.reason,
                        created_at: n.created_at,
                        expires_at: n.expires_at,
                    };
                    by_id.insert(r.id, key.as_str())?;
                    (r, PutOutcome::Created)
                }
            };
            if outcome != PutOutcome::Unchanged {
                entries.insert(key.as_str(), serde_json::to_vec(&rev)?.as_slice())?;
                expiry.insert((rev.expires_at, key.as_str()), ())?;
                next_seq = next_position(next_seq);
                changes.insert(
                    next_seq,
                    serde_json::to_vec(&Change::Put(rev.clone()))?.as_slice(),
                )?;
                committed.insert(rev.id, next_seq)?;
            }
            results.push((rev, outcome));
        }
        meta.insert("seq", next_seq)?;
        meta.insert("next_id", next_id)?;
        seq = next_seq;
    }
    Ok((results, seq))
}
