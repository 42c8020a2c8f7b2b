//! The in-memory revocation set: per issuer, one moka cache per kind, each
//! entry expiring by itself when no token it matches can still be valid.
//! Lookups borrow the claim strings (no allocation) and are O(1).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use moka::sync::Cache;
use moka::Expiry;

use super::model::{now_unix, Change, Kind, Revocation};
use crate::auth::Identity;

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
        super::model::description(self.kind, self.reason.as_str())
    }
}

/// Known reasons as one byte; free text becomes `Other` (the gateway only
/// needs the reason to word its refusal).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

struct ByExpiresAt;

impl ByExpiresAt {
    fn remaining(v: &Hit) -> Option<Duration> {
        Some(Duration::from_secs(
            v.expires_at.saturating_sub(now_unix()).max(0) as u64,
        ))
    }
}

impl Expiry<String, Hit> for ByExpiresAt {
    fn expire_after_create(&self, _k: &String, v: &Hit, _now: Instant) -> Option<Duration> {
        Self::remaining(v)
    }

    fn expire_after_update(
        &self,
        _k: &String,
        v: &Hit,
        _now: Instant,
        _d: Option<Duration>,
    ) -> Option<Duration> {
        Self::remaining(v)
    }
}

#[derive(Clone)]
struct PerIssuer {
    jti: Cache<String, Hit>,
    sid: Cache<String, Hit>,
    sub: Cache<String, Hit>,
    client: Cache<String, Hit>,
    /// Per kind, whether anything was ever inserted: a kind with nothing
    /// in it (the common case for `client`, often `sub`) costs no lookup.
    /// Never reset, so a just-inserted entry is never skipped (moka's own
    /// count lags behind inserts).
    used: Arc<[AtomicBool; 4]>,
}

fn cache() -> Cache<String, Hit> {
    Cache::builder().expire_after(ByExpiresAt).build()
}

impl PerIssuer {
    fn new() -> Self {
        PerIssuer {
            jti: cache(),
            sid: cache(),
            sub: cache(),
            client: cache(),
            used: Arc::new(Default::default()),
        }
    }

    fn mark_used(&self, k: Kind) {
        self.used[k as usize].store(true, Ordering::Release);
    }

    /// The cache of a kind, or `None` while nothing was ever put in it.
    fn lookup(&self, k: Kind, value: &str) -> Option<Hit> {
        if !self.used[k as usize].load(Ordering::Acquire) {
            return None;
        }
        self.for_kind(k).get(value)
    }

    fn for_kind(&self, k: Kind) -> &Cache<String, Hit> {
        match k {
            Kind::Jti => &self.jti,
            Kind::Sid => &self.sid,
            Kind::Sub => &self.sub,
            Kind::Client => &self.client,
        }
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

/// Per issuer (`iss` value), the caches of each kind. The issuers are the
/// ones the feed has named, not the ones configured: a config reload that
/// adds an issuer then needs nothing from this set.
#[derive(Default)]
pub struct RevocationSet {
    by_iss: HashMap<Arc<str>, PerIssuer>,
}

impl RevocationSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a change while the set is being built (state file,
    /// snapshot): issuers are added as they appear.
    pub fn apply_building(&mut self, change: &Change) {
        let r = match change {
            Change::Put(r) | Change::Del(r) => r,
        };
        if !self.by_iss.contains_key(r.issuer.as_str()) {
            self.by_iss
                .insert(Arc::from(r.issuer.as_str()), PerIssuer::new());
        }
        self.apply(change);
    }

    /// A set sharing this one's caches plus empty ones for the issuers the
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
        // moka caches are handles: cloning shares the entries.
        let mut by_iss = self.by_iss.clone();
        for c in changes {
            if !by_iss.contains_key(issuer(c)) {
                by_iss.insert(Arc::from(issuer(c)), PerIssuer::new());
            }
        }
        Some(RevocationSet { by_iss })
    }

    /// Applies a change to the live set. Returns false when the change
    /// names an issuer this set has no caches for: the caller then takes a
    /// fresh snapshot (which builds them).
    pub fn apply(&self, change: &Change) -> bool {
        match change {
            Change::Put(r) => self.insert(r),
            Change::Del(r) => {
                if let Some(p) = self.by_iss.get(r.issuer.as_str()) {
                    p.for_kind(r.kind).invalidate(r.value.as_str());
                }
                true
            }
        }
    }

    pub fn insert(&self, r: &Revocation) -> bool {
        let Some(p) = self.by_iss.get(r.issuer.as_str()) else {
            return false;
        };
        if r.expires_at <= now_unix() {
            return true;
        }
        let hit = Hit {
            kind: r.kind,
            reason: Reason::parse(&r.reason),
            before: r.before.unwrap_or(i64::MAX),
            expires_at: r.expires_at,
        };
        let cache = p.for_kind(r.kind);
        // A `before` never moves back, whatever order changes arrive in.
        if r.kind.has_before() {
            if let Some(old) = cache.get(r.value.as_str()) {
                if old.before >= hit.before && old.expires_at >= hit.expires_at {
                    return true;
                }
            }
        }
        p.mark_used(r.kind);
        cache.insert(r.value.clone(), hit);
        true
    }

    /// The first revocation that matches the token, if any.
    pub fn check(&self, id: &Identity) -> Option<Hit> {
        let p = self.by_iss.get(&*id.iss)?;
        if let Some(h) = id.jti.as_deref().and_then(|j| p.lookup(Kind::Jti, j)) {
            return Some(h);
        }
        if let Some(h) = id.sid.as_deref().and_then(|s| p.lookup(Kind::Sid, s)) {
            return Some(h);
        }
        // A token without `iat` cannot show it was issued after the cut-off.
        let issued_before = |h: &Hit| id.issued_at.is_none_or(|iat| iat < h.before);
        if let Some(h) = id
            .subject
            .as_deref()
            .and_then(|s| p.lookup(Kind::Sub, s))
            .filter(issued_before)
        {
            return Some(h);
        }
        id.client
            .as_deref()
            .and_then(|c| p.lookup(Kind::Client, c))
            .filter(issued_before)
    }

    pub fn counts(&self) -> Counts {
        let mut c = Counts::default();
        for p in self.by_iss.values() {
            for (k, cache) in [
                (&mut c.jti, &p.jti),
                (&mut c.sid, &p.sid),
                (&mut c.sub, &p.sub),
                (&mut c.client, &p.client),
            ] {
                cache.run_pending_tasks();
                *k += cache.entry_count();
            }
        }
        c
    }

    /// Every live entry, in feed form (for the state file).
    pub fn for_each(&self, mut f: impl FnMut(Revocation)) {
        for (iss, p) in &self.by_iss {
            for kind in [Kind::Jti, Kind::Sid, Kind::Sub, Kind::Client] {
                for (value, hit) in p.for_kind(kind).iter() {
                    f(Revocation {
                        id: 0,
                        issuer: iss.to_string(),
                        kind,
                        value: value.to_string(),
                        before: kind.has_before().then_some(hit.before),
                        reason: hit.reason.as_str().to_owned(),
                        created_at: 0,
                        expires_at: hit.expires_at,
                    });
                }
            }
        }
    }
}
