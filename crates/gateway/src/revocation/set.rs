//! The in-memory revocation set: per issuer and kind, a compact base built
//! from a snapshot (the value bytes in one arena, 20-byte slots in a
//! hashbrown table: ~60 bytes per `jti` entry instead of ~375 in a cache),
//! plus a moka cache of the changes applied since, each entry expiring by
//! itself. The feed folds the changes into a new base, built aside and
//! swapped in, once they grow large. Lookups borrow the claim strings (no
//! allocation) and are O(1) in both layers.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;

use gatehouse_core::auth::Identity;
use gatehouse_core::clock::now_unix;
use gatehouse_core::revocation::{covers, keys_of, Change, Kind, Revocation};

/// Seconds an entry is still enforced past its `expires_at`: three times
/// the largest `leeway` of the gateway's issuers, set at each config load
/// and never lowered while the process runs ([`hold_past_expiry`]).
///
/// The authority lets an entry expire `max_token_lifetime` after the
/// newest token it can cover was issued (the revocation's time, or a `sub`
/// or `client` cut-off; a logout's `jti` entry at the token's `exp`). The
/// gateway, within its leeway (RFC 7519 §4.1.4 allows "some small
/// leeway"), accepts a token until `exp + leeway`, a lifetime `exp - iat`
/// up to `max_token_lifetime + leeway`, and an `iat` up to `leeway` ahead
/// of its clock: a token issued by the revocation's time can be accepted
/// until 3 × `leeway` past the entry's expiry. Without this hold, a token
/// revoked early in its life passed again at its end (found by the
/// black-box round of session 14: a 1-minute issuer with the default 30 s
/// leeway, revoked token answered 200 from second 61 to 90).
static HELD_PAST_EXPIRY: AtomicI64 = AtomicI64::new(0);

/// Keeps entries `secs` past their expiry from now on (the larger of this
/// and what was set before).
pub fn hold_past_expiry(secs: i64) {
    HELD_PAST_EXPIRY.fetch_max(secs, Ordering::Relaxed);
}

/// An entry whose `expires_at` is at or before this is gone.
fn horizon() -> i64 {
    now_unix().saturating_sub(HELD_PAST_EXPIRY.load(Ordering::Relaxed))
}

/// Why a token is refused, compactly: the kind, a reason code and, for
/// `sub`/`client`, the cut-off time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    pub kind: Kind,
    reason: Reason,
    before: i64,
    expires_at: i64,
}

impl Hit {
    pub fn description(&self) -> &'static str {
        gatehouse_core::revocation::description(self.kind, self.reason.as_str())
    }
}

/// Known reasons as one byte; free text becomes `Other` (the gateway only
/// needs the reason to word its refusal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Reason {
    Logout,
    ForcedLogout,
    PasswordChange,
    AccountExpired,
    Replaced,
    Compromised,
    Other,
}

impl Reason {
    fn parse(s: &str) -> Reason {
        match s {
            "logout" => Reason::Logout,
            "forced_logout" => Reason::ForcedLogout,
            "password_change" => Reason::PasswordChange,
            "account_expired" => Reason::AccountExpired,
            "replaced" => Reason::Replaced,
            "compromised" => Reason::Compromised,
            _ => Reason::Other,
        }
    }

    fn from_u8(b: u8) -> Reason {
        match b {
            0 => Reason::Logout,
            1 => Reason::ForcedLogout,
            2 => Reason::PasswordChange,
            3 => Reason::AccountExpired,
            4 => Reason::Replaced,
            5 => Reason::Compromised,
            _ => Reason::Other,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Reason::Logout => "logout",
            Reason::ForcedLogout => "forced_logout",
            Reason::PasswordChange => "password_change",
            Reason::AccountExpired => "account_expired",
            Reason::Replaced => "replaced",
            Reason::Compromised => "compromised",
            Reason::Other => "other",
        }
    }
}

/// What the change layer holds: a put, or a deletion hiding a base entry.
#[derive(Debug, Clone, Copy)]
struct Delta {
    hit: Hit,
    deleted: bool,
}

struct ByExpiresAt;

impl Expiry<String, Delta> for ByExpiresAt {
    fn expire_after_create(&self, _k: &String, v: &Delta, _now: Instant) -> Option<Duration> {
        Some(remaining(v.hit.expires_at))
    }

    fn expire_after_update(
        &self,
        _k: &String,
        v: &Delta,
        _now: Instant,
        _d: Option<Duration>,
    ) -> Option<Duration> {
        Some(remaining(v.hit.expires_at))
    }
}

fn remaining(expires_at: i64) -> Duration {
    Duration::from_secs(expires_at.saturating_sub(horizon()).max(0) as u64)
}

/// One base entry: where its value lies in the arena, and the hit.
/// Times are Unix seconds in a `u32` (good until 2106).
#[derive(Debug, Clone, Copy)]
struct Slot {
    off: u32,
    len: u32,
    before: u32,
    expires_at: u32,
    reason: u8,
}

const NO_BEFORE: u32 = u32::MAX;

fn to_u32(t: i64) -> u32 {
    t.clamp(0, i64::from(u32::MAX - 1)) as u32
}

/// The compact layer: immutable once the set is shared.
#[derive(Default)]
struct Base {
    arena: Vec<u8>,
    table: hashbrown::HashTable<Slot>,
    hasher: std::hash::RandomState,
}

impl Base {
    fn value(&self, s: &Slot) -> &[u8] {
        self.arena
            .get(s.off as usize..(s.off as usize + s.len as usize))
            .unwrap_or_default()
    }

    fn get(&self, kind: Kind, value: &str) -> Option<Hit> {
        if self.table.is_empty() {
            return None;
        }
        let h = self.hasher.hash_one(value.as_bytes());
        let s = self.table.find(h, |s| self.value(s) == value.as_bytes())?;
        Some(Hit {
            kind,
            reason: Reason::from_u8(s.reason),
            before: if s.before == NO_BEFORE {
                i64::MAX
            } else {
                i64::from(s.before)
            },
            expires_at: i64::from(s.expires_at),
        })
    }

    /// Adds or strengthens an entry; false when the arena is full (4 GiB),
    /// and the caller keeps it in the change layer instead.
    fn put(&mut self, value: &str, hit: &Hit) -> bool {
        let h = self.hasher.hash_one(value.as_bytes());
        let before = if hit.before == i64::MAX {
            NO_BEFORE
        } else {
            to_u32(hit.before)
        };
        let (arena, hasher) = (&self.arena, &self.hasher);
        let found = self.table.find_mut(h, |s| {
            arena.get(s.off as usize..(s.off as usize + s.len as usize)) == Some(value.as_bytes())
        });
        if let Some(s) = found {
            if hit.kind.has_before() && s.before != NO_BEFORE && s.before >= before {
                s.expires_at = s.expires_at.max(to_u32(hit.expires_at));
                return true;
            }
            s.before = before;
            s.expires_at = s.expires_at.max(to_u32(hit.expires_at));
            s.reason = hit.reason as u8;
            return true;
        }
        let (Ok(off), Ok(len)) = (u32::try_from(self.arena.len()), u32::try_from(value.len()))
        else {
            return false;
        };
        if off.checked_add(len).is_none() {
            return false;
        }
        self.arena.extend_from_slice(value.as_bytes());
        let slot = Slot {
            off,
            len,
            before,
            expires_at: to_u32(hit.expires_at),
            reason: hit.reason as u8,
        };
        let arena = &self.arena;
        self.table.insert_unique(h, slot, |s| {
            hasher.hash_one(
                arena
                    .get(s.off as usize..(s.off as usize + s.len as usize))
                    .unwrap_or_default(),
            )
        });
        true
    }

    fn remove(&mut self, value: &str) {
        let h = self.hasher.hash_one(value.as_bytes());
        let arena = &self.arena;
        if let Ok(e) = self.table.find_entry(h, |s| {
            arena.get(s.off as usize..(s.off as usize + s.len as usize)) == Some(value.as_bytes())
        }) {
            e.remove();
        }
    }

    fn shrink(&mut self) {
        self.arena.shrink_to_fit();
        let (arena, hasher) = (&self.arena, &self.hasher);
        self.table.shrink_to_fit(|s| {
            hasher.hash_one(
                arena
                    .get(s.off as usize..(s.off as usize + s.len as usize))
                    .unwrap_or_default(),
            )
        });
    }
}

#[derive(Clone)]
struct PerIssuer {
    base: [Arc<Base>; Kind::COUNT],
    delta: [Cache<String, Delta>; Kind::COUNT],
    /// Per kind, whether anything was ever put in the change layer: a kind
    /// with nothing there (the common case) costs no cache lookup. Never
    /// reset, so a just-inserted entry is never skipped (moka's own count
    /// lags behind inserts).
    used: Arc<[AtomicBool; Kind::COUNT]>,
    /// Changes applied to the change layer since the base was built.
    changes: Arc<AtomicU64>,
}

fn cache() -> Cache<String, Delta> {
    Cache::builder().expire_after(ByExpiresAt).build()
}

impl PerIssuer {
    fn new() -> Self {
        PerIssuer {
            base: Default::default(),
            delta: std::array::from_fn(|_| cache()),
            used: Arc::new(Default::default()),
            changes: Arc::new(AtomicU64::new(0)),
        }
    }

    fn lookup(&self, k: Kind, value: &str) -> Option<Hit> {
        let i = k.index();
        if self.used[i].load(Ordering::Acquire) {
            if let Some(d) = self.delta[i].get(value) {
                return (!d.deleted).then_some(d.hit);
            }
        }
        self.base[i]
            .get(k, value)
            .filter(|h| h.expires_at > horizon())
    }

    fn put_delta(&self, value: &str, d: Delta) {
        let i = d.hit.kind.index();
        self.used[i].store(true, Ordering::Release);
        self.delta[i].insert(value.to_owned(), d);
        self.changes.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sizes by kind, for logs and metrics.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Counts {
    pub jti: u64,
    pub sid: u64,
    pub sub: u64,
    pub client: u64,
}

impl Counts {
    pub fn total(&self) -> u64 {
        self.jti + self.sid + self.sub + self.client
    }
}

/// Per issuer (`iss` value), the layers of each kind. The issuers are the
/// ones the feed has named, not the ones configured: a config reload that
/// adds an issuer then needs nothing from this set.
#[derive(Default)]
pub struct RevocationSet {
    by_iss: HashMap<Arc<str>, PerIssuer>,
}

fn hit_of(r: &Revocation) -> Hit {
    Hit {
        kind: r.kind,
        reason: Reason::parse(&r.reason),
        before: r.before.unwrap_or(i64::MAX),
        expires_at: r.expires_at,
    }
}

impl RevocationSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a change while the set is being built (state file,
    /// snapshot) and not yet shared: straight into the compact base;
    /// issuers are added as they appear.
    pub fn apply_building(&mut self, change: &Change) {
        let r = match change {
            Change::Put(r) | Change::Del(r) => r,
        };
        let p = self
            .by_iss
            .entry(Arc::from(r.issuer.as_str()))
            .or_insert_with(PerIssuer::new);
        let i = r.kind.index();
        let Some(base) = Arc::get_mut(&mut p.base[i]) else {
            // Shared already: the change layer is always right.
            self.apply(change);
            return;
        };
        match change {
            Change::Put(r) => {
                if r.expires_at > horizon() && !base.put(&r.value, &hit_of(r)) {
                    p.put_delta(
                        &r.value,
                        Delta {
                            hit: hit_of(r),
                            deleted: false,
                        },
                    );
                }
            }
            Change::Del(r) => {
                base.remove(&r.value);
                p.delta[i].invalidate(r.value.as_str());
            }
        }
    }

    /// Ends building: gives back the slack of the arenas and tables.
    pub fn finish_building(&mut self) {
        for p in self.by_iss.values_mut() {
            for b in &mut p.base {
                if let Some(b) = Arc::get_mut(b) {
                    b.shrink();
                }
            }
        }
    }

    /// A set sharing this one's layers plus empty ones for the issuers the
    /// changes name that this set lacks; `None` when it lacks none.
    pub fn with_issuers_of(&self, changes: &[Change]) -> Option<RevocationSet> {
        fn issuer(c: &Change) -> &str {
            match c {
                Change::Put(r) | Change::Del(r) => r.issuer.as_str(),
            }
        }
        if changes.iter().all(|c| self.by_iss.contains_key(issuer(c))) {
            return None;
        }
        // Bases are shared, moka caches are handles: cloning shares both.
        let mut by_iss = self.by_iss.clone();
        for c in changes {
            if !by_iss.contains_key(issuer(c)) {
                by_iss.insert(Arc::from(issuer(c)), PerIssuer::new());
            }
        }
        Some(RevocationSet { by_iss })
    }

    /// Applies a change to the live set (the change layer). Returns false
    /// when the change names an issuer this set has no layers for: the
    /// caller then takes a fresh snapshot (which builds them).
    pub fn apply(&self, change: &Change) -> bool {
        match change {
            Change::Put(r) => self.insert(r),
            Change::Del(r) => {
                if let Some(p) = self.by_iss.get(r.issuer.as_str()) {
                    // Hides a base entry until the base is rebuilt.
                    let mut hit = hit_of(r);
                    hit.expires_at = hit.expires_at.max(now_unix() + 1);
                    p.put_delta(&r.value, Delta { hit, deleted: true });
                }
                true
            }
        }
    }

    pub fn insert(&self, r: &Revocation) -> bool {
        let Some(p) = self.by_iss.get(r.issuer.as_str()) else {
            return false;
        };
        if r.expires_at <= horizon() {
            return true;
        }
        let mut hit = hit_of(r);
        // A `before` never moves back, whatever order changes arrive in.
        if let Some(old) = p.lookup(r.kind, &r.value) {
            if r.kind.has_before() && old.before >= hit.before {
                if old.expires_at >= hit.expires_at {
                    return true;
                }
                hit.before = old.before;
            }
            hit.expires_at = hit.expires_at.max(old.expires_at);
        }
        p.put_delta(
            &r.value,
            Delta {
                hit,
                deleted: false,
            },
        );
        true
    }

    /// The first revocation that matches the token, if any.
    pub fn check(&self, id: &Identity) -> Option<Hit> {
        let p = self.by_iss.get(&*id.iss)?;
        // The contract's coverage rule, key by key (no allocation).
        keys_of(id).into_iter().find_map(|(kind, key)| {
            key.and_then(|k| p.lookup(kind, k))
                .filter(|h| covers(kind, Some(h.before), id.issued_at))
        })
    }

    /// Changes held in the change layers, and entries in the bases.
    pub fn layer_sizes(&self) -> (u64, u64) {
        self.by_iss.values().fold((0, 0), |(d, b), p| {
            (
                d + p.changes.load(Ordering::Relaxed),
                b + p.base.iter().map(|b| b.table.len() as u64).sum::<u64>(),
            )
        })
    }

    /// The same entries with the change layers folded into new bases
    /// (built aside; the caller swaps it in). Expired entries are dropped.
    pub fn compacted(&self) -> RevocationSet {
        let mut out = RevocationSet::new();
        self.for_each(|r| out.apply_building(&Change::Put(r)));
        // Issuers with nothing left keep their (empty) layers.
        for iss in self.by_iss.keys() {
            out.by_iss.entry(iss.clone()).or_insert_with(PerIssuer::new);
        }
        out.finish_building();
        out
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for p in self.by_iss.values() {
            for (k, n) in Kind::ALL
                .iter()
                .zip([&mut c.jti, &mut c.sid, &mut c.sub, &mut c.client])
            {
                let i = k.index();
                let cache = &p.delta[i];
                cache.run_pending_tasks();
                let deleted = cache.iter().filter(|(_, d)| d.deleted).count() as u64;
                // Puts in the change layer may shadow base entries; close
                // enough for a gauge.
                *n += (p.base[i].table.len() as u64 + cache.entry_count())
                    .saturating_sub(2 * deleted);
            }
        }
        c
    }

    /// Every live entry, in feed form (for the state file).
    pub fn for_each(&self, mut f: impl FnMut(Revocation)) {
        let now = horizon();
        for (iss, p) in &self.by_iss {
            for kind in Kind::ALL {
                let i = kind.index();
                let emit = |f: &mut dyn FnMut(Revocation), value: String, hit: &Hit| {
                    f(Revocation {
                        id: 0,
                        issuer: iss.to_string(),
                        kind,
                        value,
                        before: kind.has_before().then_some(hit.before),
                        reason: hit.reason.as_str().to_owned(),
                        created_at: 0,
                        expires_at: hit.expires_at,
                    })
                };
                let base = &p.base[i];
                let delta_used = p.used[i].load(Ordering::Acquire);
                for s in base.table.iter() {
                    let Ok(value) = std::str::from_utf8(base.value(s)) else {
                        continue;
                    };
                    if delta_used && p.delta[i].contains_key(value) {
                        continue;
                    }
                    if let Some(hit) = base.get(kind, value).filter(|h| h.expires_at > now) {
                        emit(&mut f, value.to_owned(), &hit);
                    }
                }
                if delta_used {
                    for (value, d) in p.delta[i].iter() {
                        if !d.deleted && d.hit.expires_at > now {
                            emit(&mut f, value.to_string(), &d.hit);
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISS: &str = "https://i";

    fn rev(kind: Kind, value: &str, before: Option<i64>, expires_in: i64) -> Revocation {
        Revocation {
            id: 1,
            issuer: ISS.into(),
            kind,
            value: value.into(),
            before,
            reason: "logout".into(),
            created_at: now_unix(),
            expires_at: now_unix() + expires_in,
        }
    }

    fn id(jti: &str, sub: &str, iat: i64) -> Identity {
        let claims = serde_json::json!({"jti": jti, "sub": sub, "iat": iat})
            .as_object()
            .cloned()
            .unwrap_or_default();
        Identity::from_claims(Arc::from("n"), Arc::from(ISS), claims).expect("identity")
    }

    fn revoked(set: &RevocationSet, jti: &str) -> bool {
        set.check(&id(jti, "nobody", now_unix())).is_some()
    }

    #[test]
    fn base_and_change_layers_agree_and_survive_folding() {
        let now = now_unix();
        let mut set = RevocationSet::new();
        for i in 0..1000 {
            set.apply_building(&Change::Put(rev(Kind::Jti, &format!("j{i}"), None, 600)));
        }
        set.apply_building(&Change::Put(rev(Kind::Jti, "gone-soon", None, -1)));
        set.apply_building(&Change::Del(rev(Kind::Jti, "j999", None, 600)));
        set.apply_building(&Change::Put(rev(Kind::Sub, "alice", Some(now - 10), 600)));
        set.finish_building();
        assert!(revoked(&set, "j0") && revoked(&set, "j998"));
        assert!(!revoked(&set, "j999") && !revoked(&set, "gone-soon") && !revoked(&set, "x"));

        // Live changes: a deletion hides a base entry, a new one shows,
        // `before` never moves back across the layers.
        set.apply(&Change::Del(rev(Kind::Jti, "j0", None, 600)));
        set.apply(&Change::Put(rev(Kind::Jti, "new", None, 600)));
        set.apply(&Change::Put(rev(Kind::Sub, "alice", Some(now - 100), 600)));
        assert!(!revoked(&set, "j0") && revoked(&set, "new"));
        assert!(set.check(&id("x", "alice", now - 20)).is_some());
        assert!(set.check(&id("x", "alice", now - 5)).is_none());
        set.apply(&Change::Put(rev(Kind::Sub, "alice", Some(now), 600)));
        assert!(set.check(&id("x", "alice", now - 5)).is_some());
        // Revoked again after an un-revoke.
        set.apply(&Change::Put(rev(Kind::Jti, "j0", None, 600)));
        assert!(revoked(&set, "j0"));
        set.apply(&Change::Del(rev(Kind::Jti, "j1", None, 600)));

        let folded = set.compacted();
        assert_eq!(folded.layer_sizes().0, 0);
        for s in [&set, &folded] {
            assert!(revoked(s, "j0") && revoked(s, "new") && revoked(s, "j500"));
            assert!(!revoked(s, "j1") && !revoked(s, "j999"));
            assert!(s.check(&id("x", "alice", now - 5)).is_some());
            assert!(s.check(&id("x", "alice", now + 5)).is_none());
        }
        let mut listed = 0;
        folded.for_each(|_| listed += 1);
        // 1000 - j999 - j1 + new + alice
        assert_eq!(listed, 1000);
    }
}
