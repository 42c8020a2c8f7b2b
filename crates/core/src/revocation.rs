//! What a revocation is, as the authority stores it and the feed carries it.

use serde::{Deserialize, Serialize};

/// What a revocation matches.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// One token, by issuer + `jti`. Never by a hash of the token text: an
    /// ECDSA signature can be altered and still verify.
    Jti,
    /// Every token of one session (`sid`).
    Sid,
    /// Every token of a subject with `iat` before `before`.
    Sub,
    /// Every token of a client (`azp`/`client_id`) with `iat` before `before`.
    Client,
}

impl Kind {
    /// Every kind, in the order per-kind tables are laid out
    /// ([`Kind::index`]). Adding a kind starts here.
    pub const ALL: [Kind; 4] = [Kind::Jti, Kind::Sid, Kind::Sub, Kind::Client];
    /// How many kinds there are: the size of per-kind tables.
    pub const COUNT: usize = Self::ALL.len();

    /// This kind's slot in a per-kind table (`0..Kind::COUNT`).
    #[inline]
    pub fn index(self) -> usize {
        self as usize
    }

    /// The name on the wire, in the API and in metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Jti => "jti",
            Kind::Sid => "sid",
            Kind::Sub => "sub",
            Kind::Client => "client",
        }
    }

    /// Whether entries of this kind carry a `before` time (and a later entry
    /// moves it forward instead of being a duplicate).
    #[inline]
    pub fn has_before(self) -> bool {
        matches!(self, Kind::Sub | Kind::Client)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Revocation {
    /// Assigned by the authority; stable for the life of the entry.
    pub id: u64,
    /// The `iss` value of the tokens it applies to.
    pub issuer: String,
    pub kind: Kind,
    /// The `jti`, `sid`, `sub` or client id.
    pub value: String,
    /// Unix seconds; for `sub` and `client` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<i64>,
    /// `logout`, `forced_logout`, `password_change`, `account_expired`,
    /// `replaced`, `compromised`, or free text.
    pub reason: String,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds after which no token it matches can still be valid, so
    /// the entry can be forgotten.
    pub expires_at: i64,
}

impl Revocation {
    /// The natural key: one entry per issuer, kind and value.
    pub fn key(&self) -> String {
        natural_key(&self.issuer, self.kind, &self.value)
    }
}

pub fn natural_key(issuer: &str, kind: Kind, value: &str) -> String {
    format!("{}\u{0}{}\u{0}{}", kind.as_str(), issuer, value)
}

/// One line of the feed after the header line.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Change {
    Put(Revocation),
    Del(Revocation),
}

/// First and last line of every feed response (and of the gateway's state
/// file): what follows, and the cursor to ask with next.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FeedMarker {
    /// The lines that follow replace everything known.
    Snapshot { cursor: String },
    /// The lines that follow apply on top of what is known.
    Changes { cursor: String },
    /// The response is complete; without it nothing is applied.
    End { cursor: String },
}

/// One line of the feed and of the gateway's state file: the wire form
/// both sides share. Newline-delimited JSON: a [`FeedMarker`] (an object
/// whose first member is `"type"`) or a [`Change`] (first member `"op"`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Line {
    Marker(FeedMarker),
    Change(Change),
}

/// The request header a gateway names itself with on every feed poll
/// (`GET /v1/feed`); the poll's `since` is then that gateway's
/// acknowledgement of everything up to the cursor (see the authority's
/// gateway table and revocation receipts).
pub const GATEWAY_HEADER: http::HeaderName = http::HeaderName::from_static("gatehouse-gateway");

/// Appends `v` (a [`FeedMarker`], [`Change`] or [`Revocation`]) as one line
/// to `out`. The one writer of the wire form (feed responses, the state
/// file, the stores' change logs).
///
/// Errors: those of `out` (a `Vec` never fails).
pub fn write_line(out: &mut impl std::io::Write, v: &impl Serialize) -> std::io::Result<()> {
    serde_json::to_writer(&mut *out, v)?;
    out.write_all(b"\n")
}

/// Reads one line (without its newline) as written by [`write_line`]. The
/// one reader: markers are told apart by their leading `{"type":`, which
/// [`write_line`] always writes first.
///
/// Errors: anything that is not exactly a marker or a change (a damaged
/// state-file line, a truncated feed line).
pub fn read_line(line: &[u8]) -> serde_json::Result<Line> {
    if line.starts_with(br#"{"type":"#) {
        serde_json::from_slice(line).map(Line::Marker)
    } else {
        serde_json::from_slice(line).map(Line::Change)
    }
}

/// The one coverage rule: the keys of a token that an entry may name, in
/// the order they are looked up (`jti`, `sid`, `sub`, client), for the
/// token's issuer. Indexed like [`Kind::ALL`].
#[inline]
pub fn keys_of(id: &crate::auth::Identity) -> [(Kind, Option<&str>); Kind::COUNT] {
    [
        (Kind::Jti, id.jti.as_deref()),
        (Kind::Sid, id.sid.as_deref()),
        (Kind::Sub, id.subject.as_deref()),
        (Kind::Client, id.client.as_deref()),
    ]
}

/// Whether an entry of `kind` found under one of a token's keys
/// ([`keys_of`]) covers the token: `jti` and `sid` entries always do; `sub`
/// and client entries cover tokens issued before their `before` (a token
/// without `iat` cannot show it was issued after the cut-off, so it is
/// covered).
#[inline]
pub fn covers(kind: Kind, before: Option<i64>, issued_at: Option<i64>) -> bool {
    if !kind.has_before() {
        return true;
    }
    before.is_some_and(|b| issued_at.is_none_or(|iat| iat < b))
}

/// Where a feed cursor stands, as a gateway compares two of them: the
/// store's epoch (a new one after the store was wiped or restored) and the
/// position in its change log (`epoch-seq` for the embedded store,
/// `epoch-ms-seq` for Redis; epochs are hex, so never contain `-`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CursorPos<'a> {
    pub epoch: &'a str,
    pub pos: Vec<u64>,
}

impl<'a> CursorPos<'a> {
    /// `None` for a cursor in neither form.
    pub fn parse(c: &'a str) -> Option<CursorPos<'a>> {
        let (epoch, rest) = c.split_once('-')?;
        let pos = rest
            .split('-')
            .map(|p| p.parse().ok())
            .collect::<Option<Vec<u64>>>()?;
        (!epoch.is_empty() && !pos.is_empty()).then_some(CursorPos { epoch, pos })
    }
}

/// How a feed response's cursor relates to the one a gateway holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CursorRelation {
    /// The gateway holds no cursor (first start, damaged state file).
    NoneHeld,
    /// Another epoch (or a cursor the gateway cannot read): the store was
    /// wiped or restored; what it sends is merged, never a replacement.
    OtherEpoch,
    /// Same epoch, behind what the gateway holds: refused.
    Older,
    /// Same epoch, at or past what the gateway holds.
    SameOrNewer,
}

pub fn cursor_relation(held: Option<&str>, got: &str) -> CursorRelation {
    let Some(held) = held else {
        return CursorRelation::NoneHeld;
    };
    match (CursorPos::parse(held), CursorPos::parse(got)) {
        (Some(h), Some(g)) if h.epoch == g.epoch => {
            if g.pos < h.pos {
                CursorRelation::Older
            } else {
                CursorRelation::SameOrNewer
            }
        }
        _ => CursorRelation::OtherEpoch,
    }
}

/// The text a client sees for a revoked token: short, by kind and reason.
pub fn description(kind: Kind, reason: &str) -> &'static str {
    match (kind, reason) {
        (_, "replaced") => "session replaced by a newer login",
        (Kind::Jti, _) => "token revoked",
        (Kind::Sid, _) => "session ended",
        (Kind::Sub, "password_change") => "password changed; sign in again",
        (Kind::Sub, "account_expired") => "account is no longer active",
        (Kind::Sub, _) => "all sessions of this account were ended",
        (Kind::Client, _) => "client access revoked",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_compare_within_an_epoch_only() {
        use CursorRelation::*;
        assert_eq!(cursor_relation(None, "ab-3"), NoneHeld);
        assert_eq!(cursor_relation(Some("ab-3"), "ab-2"), Older);
        assert_eq!(cursor_relation(Some("ab-3"), "ab-3"), SameOrNewer);
        assert_eq!(cursor_relation(Some("ab-3"), "ab-10"), SameOrNewer);
        assert_eq!(cursor_relation(Some("ab-3"), "cd-1"), OtherEpoch);
        assert_eq!(cursor_relation(Some("ab-5-9"), "ab-5-8"), Older);
        assert_eq!(cursor_relation(Some("ab-5-9"), "ab-6-0"), SameOrNewer);
        assert_eq!(cursor_relation(Some("ab-5-9"), "garbage"), OtherEpoch);
    }
}
