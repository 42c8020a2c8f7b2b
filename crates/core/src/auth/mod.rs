//! Who is calling: bearer extraction (RFC 6750), token verification, and
//! the verified identity handed to the rest of the request path.

pub mod jwks;
pub mod jwt;

use std::sync::Arc;

use http::HeaderMap;
use serde_json::{Map, Value};

pub use jwt::Verifier;

/// Why a token was refused. Descriptions are short and generic on purpose:
/// they reach the client, so they name the kind of failure and nothing of
/// our internals or the token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    TooLarge,
    Malformed(&'static str),
    AlgorithmNotAllowed,
    UnknownIssuer,
    /// `kid` not in the issuer's key set (index of the issuer).
    UnknownKey {
        issuer: usize,
    },
    /// `kid` unknown while the key source is failing, and the issuer says
    /// to answer 503 so clients retry.
    KeysUnavailable,
    /// `kid` unknown while the key source is failing, answered 401 (the
    /// default policy) but counted apart from plain invalid tokens.
    UnknownKeyWhileKeysDown,
    KeyMismatch,
    BadSignature,
    Expired,
    NotYetValid,
    Claim(&'static str),
    /// A genuine token of the issuer, but of another kind than asked for
    /// (RFC 8725 §3.11): a logout token, a Security Event Token or an ID
    /// token presented as an access token, or the other way round.
    WrongType(&'static str),
}

impl AuthError {
    pub fn description(&self) -> &'static str {
        match self {
            AuthError::TooLarge => "token is too large",
            AuthError::Malformed(d) => d,
            AuthError::AlgorithmNotAllowed => "token algorithm is not accepted",
            AuthError::UnknownIssuer => "token issuer is not accepted",
            AuthError::UnknownKey { .. } => "token signing key is unknown",
            AuthError::KeysUnavailable => "signing keys are temporarily unavailable",
            AuthError::UnknownKeyWhileKeysDown => "token signing key is unknown",
            AuthError::KeyMismatch => "token algorithm does not match its key",
            AuthError::BadSignature => "token signature is invalid",
            AuthError::Expired => "token has expired",
            AuthError::NotYetValid => "token is not valid yet",
            AuthError::Claim(d) => d,
            AuthError::WrongType(d) => d,
        }
    }
}

/// A token's claims as a JSON object whose names are unique, at the top
/// level and in every object inside a claim: a payload naming `exp` or
/// `sub` twice, or `"org": {"name": "a", "name": "b"}`, means different
/// things to different parsers (RFC 8259 §4, RFC 8725 §3.1; a backend
/// reading the token itself with a first-wins parser would see another
/// `org.name` than the identity header says), so it is refused.
pub struct StrictClaims(pub Map<String, Value>);

/// A JSON value whose objects, at any depth, have unique names (see
/// [`StrictClaims`]).
struct StrictValue(Value);

impl<'de> serde::Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StrictValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON value")
            }
            fn visit_bool<E>(self, b: bool) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::Bool(b)))
            }
            fn visit_i64<E>(self, n: i64) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::from(n)))
            }
            fn visit_u64<E>(self, n: u64) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::from(n)))
            }
            fn visit_f64<E>(self, n: f64) -> Result<StrictValue, E> {
                // JSON has no NaN or infinity: serde_json never gives one.
                Ok(StrictValue(
                    serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number),
                ))
            }
            fn visit_str<E>(self, s: &str) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::String(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::String(s)))
            }
            fn visit_unit<E>(self) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::Null))
            }
            fn visit_none<E>(self) -> Result<StrictValue, E> {
                Ok(StrictValue(Value::Null))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut a: A,
            ) -> Result<StrictValue, A::Error> {
                let mut items = Vec::with_capacity(a.size_hint().unwrap_or(0).min(64));
                while let Some(StrictValue(v)) = a.next_element()? {
                    items.push(v);
                }
                Ok(StrictValue(Value::Array(items)))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                a: A,
            ) -> Result<StrictValue, A::Error> {
                unique_names(a, "duplicate name in a claim's object")
                    .map(|m| StrictValue(Value::Object(m)))
            }
        }
        d.deserialize_any(V)
    }
}

/// An object's members, refused (`why`) if a name repeats.
fn unique_names<'de, A: serde::de::MapAccess<'de>>(
    mut a: A,
    why: &'static str,
) -> Result<Map<String, Value>, A::Error> {
    let mut m = Map::new();
    while let Some((k, StrictValue(v))) = a.next_entry::<String, StrictValue>()? {
        if m.contains_key(&k) {
            return Err(serde::de::Error::custom(why));
        }
        m.insert(k, v);
    }
    Ok(m)
}

impl<'de> serde::Deserialize<'de> for StrictClaims {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = StrictClaims;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object of claims")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                a: A,
            ) -> Result<StrictClaims, A::Error> {
                unique_names(a, "duplicate claim").map(StrictClaims)
            }
        }
        d.deserialize_map(V)
    }
}

/// A verified token's claims, with the ones the gateway itself needs
/// already pulled out.
#[derive(Debug, Clone)]
pub struct Identity {
    /// Configured name of the issuer that vouched for it.
    pub issuer: Arc<str>,
    /// The token's `iss` (what revocations are keyed by).
    pub iss: Arc<str>,
    pub subject: Option<String>,
    pub jti: Option<String>,
    pub sid: Option<String>,
    /// `iat` in Unix seconds, rounded down when fractional: a revocation
    /// cut-off (`iat < before`) then covers every token issued before it.
    pub issued_at: Option<i64>,
    /// `nbf` in Unix seconds, rounded up when fractional.
    pub not_before: Option<i64>,
    /// `azp`, or else `client_id` (a token where both are present and
    /// differ is refused).
    pub client: Option<String>,
    /// `exp` in Unix seconds, rounded down when fractional.
    pub expires_at: Option<i64>,
    pub claims: Map<String, Value>,
    /// The revocation state this identity was last found clear in: what
    /// lets a cached token skip the revocation lookups while that state
    /// is unchanged ([`ClearedAt`]).
    pub cleared_at: ClearedAt,
    /// The identity headers made from these claims for one route's list
    /// ([`HeaderMemo`]).
    pub headers: HeaderMemo,
}

/// One identity header as made from an identity's claims.
#[derive(Debug, Clone)]
pub enum ClaimHeader {
    /// The claim is absent or `null`: no header.
    Absent,
    /// The claim has no unambiguous header form: no header, and counted
    /// each time it is withheld.
    Withheld,
    /// The header's value.
    Value(http::HeaderValue),
}

/// An identity's header values for one list of identity headers (a
/// route's, told apart by a process-unique number), made at its first
/// forward and reused by every later request of the same token: the
/// claims never change, and finding a claim and encoding it was, with
/// 10,000 tokens in rotation, a walk of a map no cache held.
///
/// One list per identity: a token forwarded on two routes with
/// different lists has the other route's made per request. A clone
/// starts empty (as [`ClearedAt`]): the per-thread copy of an identity
/// then makes its own values, whose reference counts no other core
/// writes.
#[derive(Debug, Default)]
pub struct HeaderMemo(std::sync::OnceLock<(u64, Box<[ClaimHeader]>)>);

impl HeaderMemo {
    /// The values for list `list`, made by `make` (one per header, in
    /// list order) if none are held yet; `None` when values for another
    /// list are held.
    pub fn for_list(
        &self,
        list: u64,
        make: impl FnOnce() -> Box<[ClaimHeader]>,
    ) -> Option<&[ClaimHeader]> {
        let (held, values) = self.0.get_or_init(|| (list, make()));
        (*held == list).then_some(&**values)
    }
}

impl Clone for HeaderMemo {
    fn clone(&self) -> Self {
        HeaderMemo::default()
    }
}

/// A revocation generation (a number that changes, process-wide unique,
/// each time a gateway's revocation state changes) in which an identity
/// was checked and found not revoked; 0 when never. The same verified
/// token arrives again and again from a cached entry, and the state
/// changes far more rarely than requests come: an identity cleared in
/// the current generation needs no lookups to be cleared again. Any
/// change (a put, a delete, a snapshot) moves the generation on first,
/// so no revocation is ever skipped; it only makes the next request of
/// each token look again.
///
/// A clone is a new identity as far as this goes: it starts uncleared.
#[derive(Debug, Default)]
pub struct ClearedAt(std::sync::atomic::AtomicU64);

impl ClearedAt {
    /// The generation last recorded, 0 when none.
    pub fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records that the identity was found clear in `generation`.
    pub fn set(&self, generation: u64) {
        self.0
            .store(generation, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Clone for ClearedAt {
    fn clone(&self) -> Self {
        ClearedAt::default()
    }
}

impl Identity {
    /// Pulls out the claims the gateway uses itself. A claim that is there
    /// with the wrong type refuses the token: a revocation keyed by `sid`
    /// must not be dodged by sending `"sid": ["x"]`.
    ///
    /// `sub`, `jti`, `sid`, `azp`, `client_id` must be strings when
    /// present; NumericDates follow [`numeric_date`]. `iss` is the
    /// verifier's to check ([`check_iss`]).
    pub fn from_claims(
        issuer: Arc<str>,
        iss: Arc<str>,
        claims: Map<String, Value>,
    ) -> Result<Self, AuthError> {
        let text = |name: &str| match claims.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(_) => Err(AuthError::Claim("token has a malformed claim")),
        };
        let time = |name: &str, round: Round| match claims.get(name) {
            None => Ok(None),
            Some(v) => numeric_date(v, round)
                .map(Some)
                .ok_or(AuthError::Claim("token has a malformed time claim")),
        };
        // Conservative rounding: a token never lives longer, nor starts
        // earlier, than it says; and it never counts as issued later than
        // it says, which would let it slip past a revocation cut-off in the
        // same second.
        let not_before = time("nbf", Round::Up)?;
        let issued_at = time("iat", Round::Down)?;
        let expires_at = time("exp", Round::Down)?;
        // One client per token: `azp` (OIDC Core §2) and `client_id`
        // (RFC 9068 §2.2) naming different clients leave a `client_id`
        // revocation two readings, one of which escapes it.
        let (azp, client_id) = (text("azp")?, text("client_id")?);
        if azp.is_some() && client_id.is_some() && azp != client_id {
            return Err(AuthError::Claim(
                "token names two clients (azp and client_id differ)",
            ));
        }
        Ok(Identity {
            issuer,
            iss,
            subject: text("sub")?,
            jti: text("jti")?,
            sid: text("sid")?,
            issued_at,
            not_before,
            client: azp.or(client_id),
            expires_at,
            claims,
            cleared_at: ClearedAt::default(),
            headers: HeaderMemo::default(),
        })
    }

    /// Looks up a dotted claim path such as `realm_access.roles`.
    pub fn claim(&self, path: &str) -> Option<&Value> {
        let mut parts = path.split('.');
        let mut cur = self.claims.get(parts.next()?)?;
        for p in parts {
            cur = cur.as_object()?.get(p)?;
        }
        Some(cur)
    }

    /// Scopes from `scope` (space separated, RFC 8693) or `scp` (string or
    /// array, as Azure AD and Okta send them).
    pub fn has_scope(&self, wanted: &str) -> bool {
        ["scope", "scp"]
            .iter()
            .any(|name| match self.claims.get(*name) {
                Some(Value::String(s)) => s.split(' ').any(|x| x == wanted),
                Some(Value::Array(a)) => a.iter().any(|v| v.as_str() == Some(wanted)),
                _ => false,
            })
    }

    pub fn has_any_role(&self, claim_path: &str, wanted: &[String]) -> bool {
        match self.claim(claim_path) {
            Some(Value::Array(a)) => a
                .iter()
                .filter_map(Value::as_str)
                .any(|r| wanted.iter().any(|w| w == r)),
            Some(Value::String(s)) => s.split([' ', ',']).any(|r| wanted.iter().any(|w| w == r)),
            _ => false,
        }
    }
}

/// `iss` must be a string exactly equal to the issuer's (RFC 7519 §4.1.1:
/// a StringOrURI, compared as a string with no normalisation). jsonwebtoken
/// alone also accepts an array that contains it.
pub fn check_iss(claims: &Map<String, Value>, iss: &str) -> Result<(), AuthError> {
    match claims.get("iss") {
        Some(Value::String(s)) if s == iss => Ok(()),
        Some(Value::String(_)) => Err(AuthError::Claim("token issuer is not accepted")),
        None => Err(AuthError::Claim("token lacks a required claim")),
        Some(_) => Err(AuthError::Claim("token issuer is not a string")),
    }
}

/// Which way [`numeric_date`] rounds a fractional value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Round {
    /// Towards the past: for `exp`.
    Down,
    /// Towards the future: for `nbf` and `iat`.
    Up,
}

/// Values past this (2^53 seconds, some 285 million years) are refused:
/// beyond it an `f64` has no fraction left, and nothing meant is that far.
const MAX_FRACTIONAL_NUMERIC_DATE: f64 = 9_007_199_254_740_992.0;

/// A NumericDate (RFC 7519 §2: seconds since the epoch, "non-integer
/// values can be represented") as whole Unix seconds. Integers are taken
/// as they are when they fit in a non-negative `i64`; a fraction is
/// rounded the way `round` says. `None` for anything else: negative
/// values, numbers past `i64` or 2^53, and non-numbers (a string, `null`),
/// which would otherwise be rounded or saturated into something the
/// signer never meant (RFC 8725 §3.10).
pub fn numeric_date(v: &Value, round: Round) -> Option<i64> {
    let Value::Number(n) = v else {
        return None;
    };
    if let Some(i) = n.as_i64() {
        return (i >= 0).then_some(i);
    }
    if n.is_u64() {
        return None;
    }
    let f = n.as_f64()?;
    // NaN and the infinities are outside the range too.
    if !(0.0..MAX_FRACTIONAL_NUMERIC_DATE).contains(&f) {
        return None;
    }
    let whole = match round {
        Round::Down => f.floor(),
        Round::Up => f.ceil(),
    };
    // Exact: `whole` is an integer below 2^53.
    Some(whole as i64)
}

/// What the `Authorization` header holds.
#[derive(Debug, PartialEq, Eq)]
pub enum Bearer<'a> {
    /// No `Authorization` header at all.
    Missing,
    /// An `Authorization` header with another scheme (`Basic`, ...): no
    /// bearer credentials, but credentials all the same, so never taken as
    /// an anonymous request.
    OtherScheme,
    /// Something that cannot be a bearer token (several headers, bad syntax).
    Malformed,
    Token(&'a str),
}

/// RFC 6750 `b64token` characters (`=` padding is trimmed before).
#[inline]
fn is_token68_char(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        | (b == b'-')
        | (b == b'.')
        | (b == b'_')
        | (b == b'~')
        | (b == b'+')
        | (b == b'/')
}

/// Whether `token` is an RFC 6750 §2.1 `b64token`: one or more of
/// `A-Z a-z 0-9 - . _ ~ + /`, then any number of `=`. A JWT always is, so
/// no stage after this sees spaces, commas or control bytes.
pub fn is_b64token(token: &str) -> bool {
    let body = token.trim_end_matches('=');
    // Without early exit, so the compiler checks many bytes at a time:
    // this runs over the whole token.
    !body.is_empty() && body.bytes().fold(true, |ok, b| ok & is_token68_char(b))
}

/// Extracts the bearer token (RFC 6750 §2.1). The scheme is
/// case-insensitive; the token must be a `b64token` ([`is_b64token`]).
pub fn bearer(headers: &HeaderMap) -> Bearer<'_> {
    match bearer_unchecked(headers) {
        Bearer::Token(t) if !is_b64token(t) => Bearer::Malformed,
        b => b,
    }
}

/// [`bearer`] without the `b64token` check of the token's characters:
/// for a caller that first looks the token up by exact match among tokens
/// that passed that check (the gateway's verified-token memo), and checks
/// it with [`is_b64token`] itself before anything else reads it. Scanning
/// a 600-byte token was 1% of an auth-server decision's CPU.
pub fn bearer_unchecked(headers: &HeaderMap) -> Bearer<'_> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Bearer::Missing;
    };
    if values.next().is_some() {
        return Bearer::Malformed;
    }
    let Ok(value) = value.to_str() else {
        return Bearer::Malformed;
    };
    // RFC 9110 §11.4: the scheme, then one or more SP. `Bearer<TAB>x` or
    // `Bearer` alone is a broken bearer credential, not another scheme.
    let b = value.as_bytes();
    if b.len() >= 6 && b[..6].eq_ignore_ascii_case(b"bearer") && b.get(6) != Some(&b' ') {
        // A further token character makes it another scheme (`Bearerx`).
        return match b.get(6) {
            Some(c) if c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(c) => {
                Bearer::OtherScheme
            }
            _ => Bearer::Malformed,
        };
    }
    let Some((scheme, rest)) = value.split_once(' ') else {
        return Bearer::OtherScheme;
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Bearer::OtherScheme;
    }
    let token = rest.trim_matches(' ');
    if token.is_empty() {
        Bearer::Malformed
    } else {
        Bearer::Token(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(http::header::AUTHORIZATION, v.parse().unwrap());
        m
    }

    #[test]
    fn header_values_are_held_for_one_list_and_a_copy_makes_its_own() {
        let memo = HeaderMemo::default();
        let value = |v: &'static str| -> Box<[ClaimHeader]> {
            Box::new([ClaimHeader::Value(http::HeaderValue::from_static(v))])
        };
        let got = |m: &HeaderMemo, list, v| {
            m.for_list(list, || value(v))
                .map(|h| matches!(&h[0], ClaimHeader::Value(x) if x == v))
        };
        assert_eq!(got(&memo, 1, "alice"), Some(true));
        // Held: not made again.
        assert_eq!(got(&memo, 1, "other"), Some(false));
        // Another list's values are not held here.
        assert_eq!(got(&memo, 2, "alice"), None);
        // A copy (the per-thread identity) starts empty.
        assert_eq!(got(&memo.clone(), 2, "bob"), Some(true));
    }

    #[test]
    fn bearer_extraction() {
        assert_eq!(bearer(&HeaderMap::new()), Bearer::Missing);
        assert_eq!(bearer(&h("Basic dXNlcjpwYXNz")), Bearer::OtherScheme);
        assert_eq!(bearer(&h("Bearer\tforged")), Bearer::Malformed);
        assert_eq!(bearer(&h("Bearer,x")), Bearer::Malformed);
        assert_eq!(bearer(&h("Bearerx y")), Bearer::OtherScheme);
        assert_eq!(bearer(&h("Negotiate")), Bearer::OtherScheme);
        assert_eq!(bearer(&h("Bearer a.b.c")), Bearer::Token("a.b.c"));
        assert_eq!(bearer(&h("bearer   a.b.c")), Bearer::Token("a.b.c"));
        assert_eq!(bearer(&h("Bearer")), Bearer::Malformed);
        assert_eq!(bearer(&h("Bearer a.b c")), Bearer::Malformed);
        assert_eq!(bearer(&h("Bearer a,b")), Bearer::Malformed);
        let mut two = h("Bearer a.b.c");
        two.append(http::header::AUTHORIZATION, "Bearer d.e.f".parse().unwrap());
        assert_eq!(bearer(&two), Bearer::Malformed);
        // Unchecked: the same reading but for the token's characters.
        assert_eq!(bearer_unchecked(&h("Bearer a.b c")), Bearer::Token("a.b c"));
        assert_eq!(bearer_unchecked(&h("Bearer   ")), Bearer::Malformed);
        assert_eq!(bearer_unchecked(&h("Bearerx y")), Bearer::OtherScheme);
        assert!(is_b64token("a.b-c_d~e+f/g=="));
        assert!(!is_b64token("=="));
        assert!(!is_b64token("a=b"));
        assert!(!is_b64token("a,b"));
    }

    #[test]
    fn fractional_numeric_dates_round_so_the_token_never_lives_longer() {
        use serde_json::json;
        let d = |v: Value, r| numeric_date(&v, r);
        assert_eq!(d(json!(1_700_000_000), Round::Down), Some(1_700_000_000));
        assert_eq!(d(json!(1_700_000_000), Round::Up), Some(1_700_000_000));
        assert_eq!(d(json!(1_700_000_000.5), Round::Down), Some(1_700_000_000));
        assert_eq!(d(json!(1_700_000_000.5), Round::Up), Some(1_700_000_001));
        assert_eq!(d(json!(1_700_000_000.0), Round::Up), Some(1_700_000_000));
        assert_eq!(d(json!(0.25), Round::Down), Some(0));
        assert_eq!(d(json!(0.25), Round::Up), Some(1));
        assert_eq!(d(json!(-0.0), Round::Down), Some(0));
        for bad in [
            json!(-1),
            json!(-0.5),
            json!(1e20),
            json!(9_007_199_254_740_992.0),
            json!(u64::MAX),
            json!("1700000000"),
            Value::Null,
            json!([1]),
        ] {
            assert_eq!(d(bad.clone(), Round::Down), None, "{bad}");
            assert_eq!(d(bad.clone(), Round::Up), None, "{bad}");
        }
    }

    #[test]
    fn iss_must_be_the_exact_string() {
        use serde_json::json;
        let with_iss = |iss: Value| {
            let mut c = Map::new();
            c.insert("iss".into(), iss);
            check_iss(&c, "https://idp.example")
        };
        assert!(with_iss(json!("https://idp.example")).is_ok());
        for bad in [
            json!(["https://idp.example"]),
            json!("https://idp.example/"),
            json!("HTTPS://idp.example"),
            json!({"https://idp.example": true}),
            Value::Null,
        ] {
            assert!(with_iss(bad.clone()).is_err(), "{bad}");
        }
        assert!(check_iss(&Map::new(), "https://idp.example").is_err());
    }

    #[test]
    fn scopes_and_roles() {
        let claims: Map<String, Value> = serde_json::from_str(
            r#"{"sub":"a","scope":"read write","realm_access":{"roles":["admin","user"]},"scp":["x"]}"#,
        )
        .unwrap();
        let id = Identity::from_claims(Arc::from("t"), Arc::from("t"), claims).unwrap();
        assert!(id.has_scope("read") && id.has_scope("write") && id.has_scope("x"));
        assert!(!id.has_scope("rea"));
        assert!(id.has_any_role("realm_access.roles", &["admin".into()]));
        assert!(!id.has_any_role("realm_access.roles", &["root".into()]));
        assert!(!id.has_any_role("roles", &["admin".into()]));
    }
}
