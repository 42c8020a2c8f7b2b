//! What every store and the API exchange: a revocation as asked for, the
//! outcome of writing it, and a position in the change log. Kept apart so
//! the stores never reach up into the API or into each other.

use std::collections::BTreeMap;
use std::sync::Mutex;

use gatehouse_core::revocation::Kind;
use serde::Serialize;

/// A position in the change log: `(0, seq)` for the embedded store,
/// `(ms, seq)` (the stream entry id) for Redis. Ordered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pos(pub u64, pub u64);

/// A revocation as asked for, before the store gives it an id.
#[derive(Debug, Clone)]
pub struct NewRevocation {
    pub issuer: String,
    pub kind: Kind,
    pub value: String,
    pub before: Option<i64>,
    pub reason: String,
    pub created_at: i64,
    pub expires_at: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PutOutcome {
    Created,
    /// A `sub`/`client` entry whose `before` moved forward.
    Updated,
    /// Already revoked (or a `before` that would move back): nothing changed.
    Unchanged,
}

/// Appends one wire line to a feed response chunk (the contract's writer,
/// `gatehouse_core::revocation::write_line`; a `Vec` never fails).
pub fn push_line(out: &mut Vec<u8>, v: &impl Serialize) {
    let _ = gatehouse_core::revocation::write_line(out, v);
}

/// Commit times kept (for the propagation histogram and lag in time).
const COMMITS_KEPT: usize = 20_000;

/// When each recent change was committed (Unix ms): this process's own
/// writes, and on Redis every replica's (the stream id's time).
#[derive(Default)]
pub struct Commits(Mutex<BTreeMap<Pos, i64>>);

impl Commits {
    pub fn record(&self, pos: Pos, at_ms: i64) {
        if let Ok(mut m) = self.0.lock() {
            m.entry(pos).or_insert(at_ms);
            while m.len() > COMMITS_KEPT {
                m.pop_first();
            }
        }
    }

    /// Commit times of the changes in `(after, upto]`.
    pub fn between(&self, after: Option<Pos>, upto: Pos) -> Vec<i64> {
        let Ok(m) = self.0.lock() else {
            return Vec::new();
        };
        let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        m.range((from, std::ops::Bound::Included(upto)))
            .map(|(_, t)| *t)
            .collect()
    }

    /// Changes known after `after`, and when the first of them was committed.
    pub fn after(&self, after: Option<Pos>) -> (usize, Option<i64>) {
        let Ok(m) = self.0.lock() else {
            return (0, None);
        };
        let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
        let mut r = m.range((from, std::ops::Bound::Unbounded));
        let first = r.next().map(|(_, t)| *t);
        (usize::from(first.is_some()) + r.count(), first)
    }
}
