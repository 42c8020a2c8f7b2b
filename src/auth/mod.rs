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
        }
    }
}

/// A token's claims as a JSON object whose top-level names are unique: a
/// payload naming `exp` or `sub` twice means different things to
/// different parsers (RFC 8259 §4, RFC 8725 §3.1), so it is refused.
pub struct StrictClaims(pub Map<String, Value>);

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
                mut a: A,
            ) -> Result<StrictClaims, A::Error> {
                let mut m = Map::new();
                while let Some((k, v)) = a.next_entry::<String, Value>()? {
                    if m.contains_key(&k) {
                        return Err(serde::de::Error::custom("duplicate claim"));
                    }
                    m.insert(k, v);
                }
                Ok(StrictClaims(m))
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
    /// `iat` in Unix seconds, when present and numeric.
    pub issued_at: Option<i64>,
    /// `azp`, or else `client_id`.
    pub client: Option<String>,
    /// `exp` in Unix seconds, when present and numeric.
    pub expires_at: Option<i64>,
    pub claims: Map<String, Value>,
}

impl Identity {
    /// Pulls out the claims the gateway uses itself. A claim that is there
    /// with the wrong type refuses the token: a revocation keyed by `sid`
    /// must not be dodged by sending `"sid": ["x"]`.
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
        // NumericDates as whole, non-negative seconds only: a float or a
        // value past i64 would otherwise be rounded or saturated into
        // something the token's signer never meant (RFC 8725 §3.10).
        let time = |name: &str| match claims.get(name) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_i64()
                .filter(|t| *t >= 0)
                .map(Some)
                .ok_or(AuthError::Claim("token has a malformed time claim")),
            Some(_) => Err(AuthError::Claim("token has a malformed time claim")),
        };
        if let Some(n) = claims.get("nbf") {
            if n.as_i64().is_none_or(|t| t < 0) {
                return Err(AuthError::Claim("token has a malformed time claim"));
            }
        }
        let issued_at = time("iat")?;
        let expires_at = time("exp")?;
        Ok(Identity {
            issuer,
            iss,
            subject: text("sub")?,
            jti: text("jti")?,
            sid: text("sid")?,
            issued_at,
            client: text("azp")?.or(text("client_id")?),
            expires_at,
            claims,
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

/// Extracts the bearer token (RFC 6750 §2.1). The scheme is
/// case-insensitive; the token must be `b64token` characters only, which a
/// JWT always is, so no later stage sees spaces, commas or control bytes.
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

pub fn bearer(headers: &HeaderMap) -> Bearer<'_> {
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
    let body = token.trim_end_matches('=');
    // Without early exit, so the compiler checks many bytes at a time:
    // this runs on every request over the whole token.
    let ok = !body.is_empty() && body.bytes().fold(true, |ok, b| ok & is_token68_char(b));
    if ok {
        Bearer::Token(token)
    } else {
        Bearer::Malformed
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
