//! What every store and the API exchange: a revocation as asked for, the
//! outcome of writing it, and a position in the change log. Kept apart so
//! the stores never reach up into the API or into each other.

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
