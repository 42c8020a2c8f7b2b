//! Token verification: everything between "here is a bearer string" and
//! "these claims are genuine and current".
//!
//! Order matters and is cheap-first: size, shape, our own strict reading of
//! the header (the crate does not refuse `crit` or embedded-key headers), the
//! issuer, the token type (`typ`) for the purpose and issuer, the algorithm
//! allowed for *that* issuer, the key by `kid` and its type, and only then
//! the signature, `iss` and `aud` through jsonwebtoken, and our own strict
//! reading of the claims (types, `iss`, NumericDates, `events`).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;

use super::jwks::{Key, KeySource};
use super::{AuthError, Identity};
use crate::config::{self, LoadedConfig, UnknownKidPolicy};

pub struct Verifier {
    issuers: Vec<IssuerVerifier>,
    cache: Option<TokenCache>,
    /// Distinguishes this verifier's entries in the per-thread memo from a
    /// previous config's (whose keys or rules may differ).
    id: u64,
    by_iss: HashMap<String, usize>,
    max_token_bytes: usize,
}

struct IssuerVerifier {
    name: Arc<str>,
    iss: Arc<str>,
    /// `issuers[].algorithms`: the only ones a token may name.
    algorithms: Vec<Algorithm>,
    /// `issuers[].audiences`: a token's `aud` must name one.
    audiences: Vec<String>,
    /// `issuers[].leeway` in seconds, for `exp`, `nbf` and `iat`.
    leeway: i64,
    /// `issuers[].require_at_jwt`: access tokens must say `typ: at+jwt`.
    require_at_jwt: bool,
    keys: Option<Arc<KeySource>>,
    /// The configured secret as a key for each HS algorithm allowed.
    hmac: Vec<(Algorithm, aws_lc_rs::hmac::Key)>,
    unknown_kid: UnknownKidPolicy,
    /// `issuers[].max_token_lifetime` in seconds: revocation entries live
    /// this long, so a token living longer would outlive its revocation.
    max_lifetime: i64,
    /// This issuer's counts of verified tokens without `sid` / `jti`,
    /// looked up once here so a verification only increments them.
    without_sid: prometheus_client::metrics::counter::Counter,
    without_jti: prometheus_client::metrics::counter::Counter,
}

/// The header as we read it ourselves, strictly: unknown members are fine,
/// duplicate members are an error (serde refuses them), and the members
/// that would make us fetch or trust key material from the token are noted
/// so the token can be refused.
#[derive(Deserialize)]
struct RawHeader<'a> {
    #[serde(borrow)]
    alg: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    kid: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    cty: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, deserialize_with = "typ_member")]
    typ: Typ,
    #[serde(default, deserialize_with = "present")]
    crit: bool,
    #[serde(default, deserialize_with = "present")]
    jku: bool,
    #[serde(default, deserialize_with = "present")]
    x5u: bool,
    #[serde(default, deserialize_with = "present")]
    jwk: bool,
    #[serde(default, deserialize_with = "present")]
    x5c: bool,
}

/// The header's `typ` (RFC 7515 §4.1.9), as far as the type checks need.
#[derive(Default)]
enum Typ {
    #[default]
    Absent,
    /// A string, lower-cased, with an `application/` prefix removed (RFC
    /// 7515 §4.1.9: media types compare case-insensitively and the prefix
    /// may be omitted).
    Text(String),
    /// `null`, a number, anything that is not a string: no type at all.
    NotText,
}

fn typ_member<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Typ, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => {
            let mut t = s.to_ascii_lowercase();
            if t.starts_with("application/") {
                t.drain(.."application/".len());
            }
            Typ::Text(t)
        }
        _ => Typ::NotText,
    })
}

/// What a token is being verified as. Every JWT an issuer signs verifies
/// against the same keys; only its type says what it is for (RFC 8725
/// §3.11), so the purpose decides which types are accepted.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Purpose {
    /// An access token presented to the gateway: current (`exp`, `nbf`,
    /// `iat`, lifetime checked).
    Access,
    /// An access token being logged out: any age (no `exp` check).
    AccessAnyAge,
    /// An OpenID Connect Back-Channel Logout 1.0 logout token.
    Logout,
    /// An OpenID Connect Core 1.0 ID token (§2, §3.1.3.7), addressed to a
    /// client of ours: current (`exp`, `iat` checked).
    IdToken,
    /// An ID token of any age (no `exp` check): the credential of a
    /// logout, which must work on a session whose token has expired.
    IdTokenAnyAge,
}

/// OpenID Connect Back-Channel Logout 1.0 §2.4: the member of `events`
/// that makes a JWT a logout token.
pub const BACKCHANNEL_LOGOUT_EVENT: &str = "http://schemas.openid.net/event/backchannel-logout";

impl Purpose {
    /// The header `typ` check, before any signature work.
    ///
    /// Access tokens (RFC 9068 §2.1, §4; RFC 8725 §3.11): absent, `JWT` or
    /// `at+jwt` (each also with `application/`), or only `at+jwt` when the
    /// issuer sets `require_at_jwt`. Anything else is a token meant for
    /// someone else: `logout+jwt`, `secevent+jwt` (RFC 8417 §2.3),
    /// `id_token+jwt`, `dpop+jwt`...
    ///
    /// Logout tokens (Back-Channel Logout 1.0 §2.4, §2.6): absent or
    /// `logout+jwt`.
    fn check_typ(self, typ: &Typ, require_at_jwt: bool) -> Result<(), AuthError> {
        let t = match typ {
            Typ::Absent => None,
            Typ::Text(t) => Some(t.as_str()),
            Typ::NotText => return Err(AuthError::WrongType("token type is malformed")),
        };
        match self {
            Purpose::Access | Purpose::AccessAnyAge => match t {
                Some("at+jwt") => Ok(()),
                None | Some("jwt") if !require_at_jwt => Ok(()),
                None | Some("jwt") => Err(AuthError::WrongType(
                    "token is not typed as an access token (typ at+jwt)",
                )),
                Some(_) => Err(AuthError::WrongType(
                    "token is not an access token (typ must be absent, JWT or at+jwt)",
                )),
            },
            Purpose::Logout => match t {
                None | Some("logout+jwt") => Ok(()),
                Some(_) => Err(AuthError::WrongType(
                    "token is not a logout token (typ must be logout+jwt)",
                )),
            },
            // OIDC Core does not type ID tokens; providers send none or
            // `JWT`. An access, logout or event token is typed otherwise.
            Purpose::IdToken | Purpose::IdTokenAnyAge => match t {
                None | Some("jwt") | Some("id_token+jwt") => Ok(()),
                Some(_) => Err(AuthError::WrongType("token is not an ID token")),
            },
        }
    }

    /// The claims that tell token kinds apart. An access token carries no
    /// `events` (a Security Event Token does, RFC 8417 §2.2, and a logout
    /// token is one). A logout token (Back-Channel Logout 1.0 §2.4, §2.6
    /// steps 4–6) carries the back-channel logout event as an object, no
    /// `nonce` (which would make it usable as an ID token), and names a
    /// `sub` or a `sid`.
    fn check_claims(self, id: &Identity) -> Result<(), AuthError> {
        match self {
            Purpose::Access | Purpose::AccessAnyAge | Purpose::IdToken | Purpose::IdTokenAnyAge => {
                if id.claims.contains_key("events") {
                    return Err(AuthError::WrongType(
                        "token is a security event, not an access token",
                    ));
                }
            }
            Purpose::Logout => {
                let event = id
                    .claims
                    .get("events")
                    .and_then(serde_json::Value::as_object)
                    .and_then(|e| e.get(BACKCHANNEL_LOGOUT_EVENT));
                if !event.is_some_and(serde_json::Value::is_object) {
                    return Err(AuthError::WrongType(
                        "logout token lacks the back-channel logout event",
                    ));
                }
                if id.claims.contains_key("nonce") {
                    return Err(AuthError::WrongType("logout token must not carry a nonce"));
                }
                if id.subject.is_none() && id.sid.is_none() {
                    return Err(AuthError::Claim("logout token names neither sid nor sub"));
                }
            }
        }
        Ok(())
    }
}

/// True whenever the member is there at all, `null` included.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    serde::de::IgnoredAny::deserialize(d).map(|_| true)
}

fn to_jwt_alg(a: config::Algorithm) -> Algorithm {
    match a {
        config::Algorithm::RS256 => Algorithm::RS256,
        config::Algorithm::RS384 => Algorithm::RS384,
        config::Algorithm::RS512 => Algorithm::RS512,
        config::Algorithm::PS256 => Algorithm::PS256,
        config::Algorithm::PS384 => Algorithm::PS384,
        config::Algorithm::PS512 => Algorithm::PS512,
        config::Algorithm::ES256 => Algorithm::ES256,
        config::Algorithm::ES384 => Algorithm::ES384,
        config::Algorithm::EdDSA => Algorithm::EdDSA,
        config::Algorithm::HS256 => Algorithm::HS256,
        config::Algorithm::HS384 => Algorithm::HS384,
        config::Algorithm::HS512 => Algorithm::HS512,
    }
}

/// Exact, case-sensitive algorithm names (RFC 7515 §4.1.1): `none`,
/// `None`, `NONE` and anything unknown fall through to `None` here.
fn parse_alg(s: &str) -> Option<Algorithm> {
    Some(match s {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        // RFC 9864 §2.2: the fully-specified name for EdDSA over Ed25519,
        // the only curve accepted.
        "EdDSA" | "Ed25519" => Algorithm::EdDSA,
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        _ => return None,
    })
}

/// The asymmetric algorithms a discovered provider advertises for ID
/// tokens (Discovery §3 `id_token_signing_alg_values_supported`), for an
/// issuer configured without `algorithms`. `none` and HMAC are never taken
/// from a document (an HMAC key is never a published key). A provider
/// that could not be read at start gets `RS256`, which OpenID Connect Core
/// §15.1 makes every provider support.
fn advertised_algorithms(src: Option<&KeySource>, name: &str) -> Vec<Algorithm> {
    let advertised: Vec<Algorithm> = src
        .and_then(KeySource::metadata)
        .map(|m| {
            m.id_token_signing_alg_values_supported
                .iter()
                .filter_map(|a| parse_alg(a))
                .filter(|a| !alg_is_hmac(*a))
                .collect()
        })
        .unwrap_or_default();
    if advertised.is_empty() {
        tracing::warn!(issuer = name, "no signing algorithms advertised (or the provider is not reachable yet): accepting RS256 only");
        vec![Algorithm::RS256]
    } else {
        advertised
    }
}

/// jsonwebtoken infers its crypto backend from cargo features and panics at
/// the first decode when it cannot; we install aws-lc-rs explicitly and then
/// sign and verify once so a broken backend fails start-up, not a request.
pub fn install_crypto_and_self_test() -> anyhow::Result<()> {
    let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    #[derive(serde::Serialize, Deserialize)]
    struct C {
        iss: String,
        aud: String,
        exp: u64,
    }
    let secret = b"gatehouse-self-test-secret-of-32-bytes!!";
    let claims = C {
        iss: "self-test".into(),
        aud: "self-test".into(),
        exp: jsonwebtoken::get_current_timestamp() + 60,
    };
    let token = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )?;
    let mut v = Validation::new(Algorithm::HS256);
    v.set_audience(&["self-test"]);
    v.set_issuer(&["self-test"]);
    jsonwebtoken::decode::<C>(&token, &DecodingKey::from_secret(secret), &v)
        .map_err(|e| anyhow::anyhow!("crypto self-test failed: {e}"))?;
    Ok(())
}

impl Verifier {
    /// Builds verifiers for every configured issuer and loads their keys.
    pub async fn from_config(loaded: &LoadedConfig) -> anyhow::Result<Self> {
        let cfg = &loaded.config;
        let mut issuers = Vec::new();
        let mut by_iss = HashMap::new();
        for spanned in &cfg.issuers {
            let ic = &spanned.value;
            let name: Arc<str> = Arc::from(ic.display_name());
            let keys = match (&ic.jwks, &ic.discovery) {
                (Some(j), _) => Some(KeySource::start(name.clone(), j, loaded).await?),
                (None, Some(d)) => {
                    Some(KeySource::discover(name.clone(), &ic.issuer, d, loaded).await?)
                }
                (None, None) => None,
            };
            if let Some(src) = &keys {
                src.spawn_refresher();
            }
            let algorithms: Vec<Algorithm> = if !ic.algorithms.is_empty() {
                ic.algorithms.iter().map(|a| to_jwt_alg(*a)).collect()
            } else {
                advertised_algorithms(keys.as_deref(), &name)
            };
            let hmac = match &ic.hmac_secret {
                Some(s) => {
                    let secret = read_secret(s, loaded)?;
                    ic.algorithms
                        .iter()
                        .map(|a| to_jwt_alg(*a))
                        .filter_map(|a| {
                            let h = match a {
                                Algorithm::HS256 => aws_lc_rs::hmac::HMAC_SHA256,
                                Algorithm::HS384 => aws_lc_rs::hmac::HMAC_SHA384,
                                Algorithm::HS512 => aws_lc_rs::hmac::HMAC_SHA512,
                                _ => return None,
                            };
                            Some((a, aws_lc_rs::hmac::Key::new(h, &secret)))
                        })
                        .collect()
                }
                None => Vec::new(),
            };
            by_iss.insert(ic.issuer.clone(), issuers.len());
            let label = crate::metrics::IssuerLabel {
                issuer: name.to_string(),
            };
            let m = crate::metrics::metrics();
            issuers.push(IssuerVerifier {
                without_sid: m.verified_without_sid.get_or_create(&label).clone(),
                without_jti: m.verified_without_jti.get_or_create(&label).clone(),
                max_lifetime: ic.max_token_lifetime.as_secs() as i64,
                iss: Arc::from(ic.issuer.as_str()),
                leeway: i64::try_from(ic.leeway.as_secs()).unwrap_or(i64::MAX / 4),
                require_at_jwt: ic.require_at_jwt,
                algorithms,
                audiences: ic.audiences.clone(),
                name,
                keys,
                hmac,
                unknown_kid: ic.unknown_kid_when_keys_unavailable,
            });
        }
        let a = &cfg.auth;
        Ok(Verifier {
            id: recent::next_owner(),
            issuers,
            cache: (a.token_cache_size > 0)
                .then(|| TokenCache::new(a.token_cache_size, a.token_cache_ttl)),
            by_iss,
            max_token_bytes: cfg.auth.max_token_bytes.value,
        })
    }

    /// Verifies signature and claims. Never touches the network except to
    /// refresh a key set for an unknown `kid` (rate-limited per issuer).
    /// `token` is the bearer credential as read by
    /// [`super::bearer_unchecked`]: one that is not an RFC 6750 §2.1
    /// `b64token` is refused as malformed before anything parses it.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, AuthError> {
        // The size limit comes before hashing too: nothing about an
        // oversized token is worth computing.
        if token.len() > self.max_token_bytes {
            return Err(AuthError::TooLarge);
        }
        let now = now_unix();
        // A memo hit is byte for byte a token that passed the check below
        // (the memo is filled only with the cache on).
        if self.cache.is_some() {
            if let Some(identity) = recent::get(self.id, token, now) {
                return Ok(identity);
            }
        }
        if !super::is_b64token(token) {
            return Err(AuthError::Malformed("malformed authorization header"));
        }
        let Some(cache) = &self.cache else {
            return Box::pin(self.verify_timed(token))
                .await
                .map(|(id, _)| Arc::new(id));
        };
        let key = TokenCache::key(token);
        if let Some(hit) = cache.get(&key) {
            if hit.key_still_published() {
                recent::put(self.id, token, &hit);
                return Ok(hit.identity.clone());
            }
        }
        // Boxed: a full verification's state (over 1 KB, with a key-set
        // refresh) would otherwise be part of every request's future, and
        // copied with it on each move, hit or miss.
        let (id, verified_by) = Box::pin(self.verify_timed(token)).await?;
        let id = Arc::new(id);
        let cached = Cached {
            until: id
                .expires_at
                .map_or(0, |e| e.min(now.saturating_add(cache.ttl_secs))),
            identity: id.clone(),
            verified_by,
        };
        if cached.until > now {
            recent::put(self.id, token, &cached);
        }
        cache.insert(key, cached);
        Ok(id)
    }

    /// Full verification, timed for the metrics (cache hits are not: they
    /// would drown the figure that tells operators what a miss costs).
    async fn verify_timed(&self, token: &str) -> Result<Verified, AuthError> {
        let started = std::time::Instant::now();
        let verified = self.verify_as(token, Purpose::Access).await;
        crate::metrics::metrics()
            .validation_duration
            .observe(started.elapsed().as_secs_f64());
        verified
    }

    /// An access token of any age: signature, issuer, audience, type and
    /// `nbf` checked, but not `exp`, `iat` or the lifetime: for logging out
    /// a token that may already be expired.
    pub async fn verify_any_age(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_as(token, Purpose::AccessAnyAge)
            .await
            .map(|(id, _)| id)
    }

    /// An OpenID Connect Back-Channel Logout 1.0 logout token (§2.4, §2.6):
    /// signature, `iss` and `aud` as for any token of the issuer; `typ`
    /// absent or `logout+jwt`; `events` holding the back-channel logout
    /// event as an object; no `nonce`; a `sub` or a `sid`. `exp` is
    /// optional and not checked here (the caller decides how old a logout
    /// token may be); `nbf` is checked when present. Never accepted by
    /// [`Verifier::verify`], and no access token is accepted here.
    pub async fn verify_logout_token(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_as(token, Purpose::Logout)
            .await
            .map(|(id, _)| id)
    }

    /// An OpenID Connect Core 1.0 ID token from the issuer named `issuer`
    /// (its configured name) for the client `client_id`, checked as §3.1.3.7
    /// says: signature with the issuer's keys and configured algorithms,
    /// `iss`, `aud` naming `client_id` (with several audiences, `azp` must
    /// be there), `azp` if present equal to `client_id`, `exp` in the
    /// future, `iat` present and not in the future, and `nonce` equal to
    /// the one sent (compared in constant time). `nonce: None` skips only
    /// the nonce check and allows any age (a logout's `id_token_hint`).
    pub async fn verify_id_token(
        &self,
        token: &str,
        issuer: &str,
        client_id: &str,
        nonce: Option<&str>,
    ) -> Result<Identity, AuthError> {
        let purpose = if nonce.is_some() {
            Purpose::IdToken
        } else {
            Purpose::IdTokenAnyAge
        };
        let audiences = [client_id.to_owned()];
        let (id, _) = self.verify_as_for(token, purpose, Some(&audiences)).await?;
        if &*id.issuer != issuer {
            return Err(AuthError::UnknownIssuer);
        }
        check_id_token_claims(&id, client_id, nonce)?;
        Ok(id)
    }

    /// An ID token addressed to any of `clients` (the authority's
    /// `logout_audiences`), of any age: the credential a gateway presents
    /// to end or report the browser session it stands for.
    pub async fn verify_id_token_for_any(
        &self,
        token: &str,
        clients: &[String],
    ) -> Result<Identity, AuthError> {
        let (id, _) = self
            .verify_as_for(token, Purpose::IdTokenAnyAge, Some(clients))
            .await?;
        let client = id.client.clone().or_else(|| match id.claims.get("aud") {
            Some(serde_json::Value::String(a)) => Some(a.clone()),
            _ => None,
        });
        let Some(client) = client.filter(|c| clients.contains(c)) else {
            return Err(AuthError::Claim("token is not meant for this audience"));
        };
        check_id_token_claims(&id, &client, None)?;
        Ok(id)
    }

    async fn verify_as(&self, token: &str, purpose: Purpose) -> Result<Verified, AuthError> {
        self.verify_as_for(token, purpose, None).await
    }

    /// `audiences`: what `aud` must name instead of the issuer's
    /// `audiences` (an ID token's is the client's id).
    async fn verify_as_for(
        &self,
        token: &str,
        purpose: Purpose,
        audiences: Option<&[String]>,
    ) -> Result<Verified, AuthError> {
        match self.verify_known(token, purpose, audiences) {
            Err(AuthError::UnknownKey { issuer }) => {
                let iv = &self.issuers[issuer];
                let Some(src) = &iv.keys else {
                    return Err(AuthError::UnknownKey { issuer });
                };
                src.refresh_for_unknown_kid().await;
                match self.verify_known(token, purpose, audiences) {
                    Err(AuthError::UnknownKey { .. }) if !src.is_healthy() => {
                        match iv.unknown_kid {
                            UnknownKidPolicy::Unavailable => Err(AuthError::KeysUnavailable),
                            UnknownKidPolicy::Reject => Err(AuthError::UnknownKeyWhileKeysDown),
                        }
                    }
                    other => other,
                }
            }
            other => other,
        }
    }

    /// Everything that needs no I/O; the common path.
    pub fn verify_with_known_keys(&self, token: &str) -> Result<Identity, AuthError> {
        self.verify_known(token, Purpose::Access, None)
            .map(|(id, _)| id)
    }

    fn verify_known(
        &self,
        token: &str,
        purpose: Purpose,
        audiences: Option<&[String]>,
    ) -> Result<Verified, AuthError> {
        if token.len() > self.max_token_bytes {
            return Err(AuthError::TooLarge);
        }
        let mut parts = token.split('.');
        let (Some(h64), Some(p64), Some(_sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed("not a signed JWT"));
        };
        let header_json = URL_SAFE_NO_PAD
            .decode(h64)
            .map_err(|_| AuthError::Malformed("header is not base64url"))?;
        // RFC 7515 §4: a JSON object. serde would also read an array by
        // position (`["RS256","kid"]`), which no other reader does.
        if header_json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(AuthError::Malformed("header is not a JSON object"));
        }
        let header: RawHeader<'_> = serde_json::from_slice(&header_json)
            .map_err(|_| AuthError::Malformed("header is not valid JSON"))?;
        if header.crit {
            return Err(AuthError::Malformed("unsupported critical header"));
        }
        if header.jku || header.x5u || header.jwk || header.x5c {
            return Err(AuthError::Malformed(
                "embedded or remote keys are not accepted",
            ));
        }
        // RFC 7515 §4.1.10: `JWT` and `application/JWT` are the same media
        // type (the prefix may be left out), in any case.
        if header.cty.as_deref().is_some_and(|c| {
            let c = c.trim();
            c.eq_ignore_ascii_case("JWT")
                || c.get(..12)
                    .is_some_and(|p| p.eq_ignore_ascii_case("application/"))
                    && c[12..].eq_ignore_ascii_case("JWT")
        }) {
            return Err(AuthError::Malformed("nested tokens are not accepted"));
        }
        let alg = header
            .alg
            .as_deref()
            .and_then(parse_alg)
            .ok_or(AuthError::AlgorithmNotAllowed)?;

        let idx = self.pick_issuer(p64)?;
        let iv = &self.issuers[idx];
        // The type before any signature work: a logout token or an ID
        // token costs no more than a malformed one.
        purpose.check_typ(&header.typ, iv.require_at_jwt)?;
        if !iv.algorithms.contains(&alg) {
            return Err(AuthError::AlgorithmNotAllowed);
        }

        // RFC 7515 §5.2: the signature over `header.payload`, checked
        // before the payload is read. Keys are parsed once, when the key set
        // is loaded, never per token.
        let (signing_input, sig64) = token
            .rsplit_once('.')
            .ok_or(AuthError::Malformed("not a signed JWT"))?;
        let signature = URL_SAFE_NO_PAD
            .decode(sig64)
            .map_err(|_| AuthError::Malformed("token could not be decoded"))?;
        let verified_by: Option<Arc<Key>> = if alg_is_hmac(alg) {
            // Configured secret only; a `kid` cannot point an HS token at a
            // public key.
            let key = iv
                .hmac
                .iter()
                .find(|(a, _)| *a == alg)
                .map(|(_, k)| k)
                .ok_or(AuthError::AlgorithmNotAllowed)?;
            aws_lc_rs::hmac::verify(key, signing_input.as_bytes(), &signature)
                .map_err(|_| AuthError::BadSignature)?;
            None
        } else {
            let src = iv.keys.as_ref().ok_or(AuthError::AlgorithmNotAllowed)?;
            let keys = src.keys();
            let k = keys
                .find(header.kid.as_deref(), alg)
                .ok_or(AuthError::UnknownKey { issuer: idx })?;
            if !k.kind.fits(alg) || k.alg.is_some_and(|a| a != alg) {
                return Err(AuthError::KeyMismatch);
            }
            k.parsed(alg)
                .ok_or(AuthError::KeyMismatch)?
                .verify_sig(signing_input.as_bytes(), &signature)
                .map_err(|_| AuthError::BadSignature)?;
            Some(k.clone())
        };

        // The payload, decoded and parsed once (duplicate claims refused).
        let payload = URL_SAFE_NO_PAD
            .decode(p64)
            .map_err(|_| AuthError::Malformed("token could not be decoded"))?;
        let claims: crate::auth::StrictClaims = serde_json::from_slice(&payload)
            .map_err(|_| AuthError::Malformed("token could not be decoded"))?;
        let claims = claims.0;
        check_aud(&claims, audiences.unwrap_or(&iv.audiences))?;
        crate::auth::check_iss(&claims, &iv.iss)?;
        let id = Identity::from_claims(iv.name.clone(), iv.iss.clone(), claims)?;
        purpose.check_claims(&id)?;
        let now = now_unix();
        let leeway = iv.leeway;
        // RFC 7519 §4.1.5: not accepted before `nbf` (rounded up when
        // fractional, so never earlier than the token says).
        if id
            .not_before
            .is_some_and(|nbf| nbf > now.saturating_add(leeway))
        {
            return Err(AuthError::NotYetValid);
        }
        if purpose == Purpose::Access {
            // RFC 7519 §4.1.4: not accepted *on or after* `exp` (rounded
            // down when fractional, so never later than the token says).
            let Some(exp) = id.expires_at else {
                return Err(AuthError::Claim("token lacks a required claim"));
            };
            if exp.saturating_add(leeway) <= now {
                return Err(AuthError::Expired);
            }
            // RFC 9068 §2.2: `iat` is required. Without it a token cannot
            // be placed before or after a revocation cut-off, nor its whole
            // lifetime bounded (below).
            let Some(iat) = id.issued_at else {
                return Err(AuthError::Claim("token lacks a required claim"));
            };
            // Issued in the future: it would dodge every `sub`/`client`
            // revocation (`iat < before`) made until then.
            if iat > now.saturating_add(leeway) {
                return Err(AuthError::Claim("token is issued in the future"));
            }
            // A whole lifetime (`exp - iat`) over the maximum: revoked
            // early, it would pass again once its entry, which lives by
            // that maximum, had expired.
            if exp.saturating_sub(iat) > iv.max_lifetime.saturating_add(leeway) {
                return Err(AuthError::Claim(
                    "token lifetime exceeds the issuer's maximum",
                ));
            }
            // Longer-lived than the issuer's maximum: it would outlive the
            // revocation entries made for it, which expire by that maximum.
            if exp > now.saturating_add(iv.max_lifetime).saturating_add(leeway) {
                return Err(AuthError::Claim(
                    "token lifetime exceeds the issuer's maximum",
                ));
            }
            // Once per verification (cache hits are not counted): which of
            // this issuer's tokens a session or per-token logout cannot name.
            if id.sid.is_none() {
                iv.without_sid.inc();
            }
            if id.jti.is_none() {
                iv.without_jti.inc();
            }
        }
        Ok((id, verified_by))
    }

    /// With one issuer there is nothing to choose (its `iss` is still
    /// checked by the claims validation); with several, the payload's `iss`
    /// picks one before any signature work.
    fn pick_issuer(&self, p64: &str) -> Result<usize, AuthError> {
        if self.issuers.len() == 1 {
            return Ok(0);
        }
        #[derive(Deserialize)]
        struct IssOnly<'a> {
            #[serde(borrow)]
            iss: Option<std::borrow::Cow<'a, str>>,
        }
        let payload = URL_SAFE_NO_PAD
            .decode(p64)
            .map_err(|_| AuthError::Malformed("payload is not base64url"))?;
        if payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return Err(AuthError::Malformed("payload is not a JSON object"));
        }
        let peek: IssOnly<'_> = serde_json::from_slice(&payload)
            .map_err(|_| AuthError::Malformed("payload is not valid JSON"))?;
        let iss = peek.iss.ok_or(AuthError::Claim("token has no issuer"))?;
        self.by_iss
            .get(&*iss)
            .copied()
            .ok_or(AuthError::UnknownIssuer)
    }

    /// The issuer configured under `name`: its `iss`, and for one found
    /// by discovery the provider's metadata as last read (`None` until
    /// the provider has answered once).
    pub fn issuer(
        &self,
        name: &str,
    ) -> Option<(Arc<str>, Option<Arc<super::jwks::ProviderMetadata>>)> {
        self.issuers
            .iter()
            .find(|i| &*i.name == name)
            .map(|i| (i.iss.clone(), i.keys.as_ref().and_then(|k| k.metadata())))
    }

    /// Each issuer's name and the size of its current key set (`None`
    /// for an HMAC-only issuer, which has no key set).
    pub fn key_counts(&self) -> Vec<(Arc<str>, Option<usize>)> {
        self.issuers
            .iter()
            .map(|i| (i.name.clone(), i.keys.as_ref().map(|k| k.keys().len())))
            .collect()
    }
}

/// Tokens that passed full verification, by SHA-256 of the whole token
/// text (a different token, even one with the same claims and an altered
/// but still valid ECDSA signature, is a different key and gets verified).
/// An entry serves until the token's `exp` or the TTL, whichever is first
/// ([`Cached::until`], checked on every hit; an entry found past it is
/// removed), and at most `size` entries are held, the least useful evicted
/// first (quick_cache's CLOCK-Pro).
///
/// quick_cache, not moka: a lookup is a read lock on one of several
/// shards and a hash-table probe, where moka also records every read for
/// its eviction policy and runs that bookkeeping on later calls. With
/// 10,000 tokens in rotation, moka was 4% of the gateway's CPU
/// (`cargo bench --bench cores -- token-cache` has both cases).
///
/// An entry is held behind its own `Arc`: a hit clones that one count,
/// on the entry's own cache line. Cloning the [`Cached`] itself would
/// also write the count of the verifying key, which every token signed
/// by it shares, so every core's hits would pass that line between them.
pub struct TokenCache {
    cache: quick_cache::sync::Cache<[u8; 32], Arc<Cached>, quick_cache::UnitWeighter, DigestHasher>,
    ttl_secs: i64,
}

/// Hashes a SHA-256 digest by its first eight bytes. The digest is already
/// uniform, and only tokens that passed verification are inserted, so no
/// client can choose keys that collide: the cache's default SipHash over
/// all 32 bytes bought nothing (it was a tenth of a lookup's cost).
#[derive(Clone, Default)]
struct DigestHasher;

impl std::hash::BuildHasher for DigestHasher {
    type Hasher = DigestHash;
    fn build_hasher(&self) -> DigestHash {
        DigestHash(0)
    }
}

struct DigestHash(u64);

impl std::hash::Hasher for DigestHash {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // An array's length comes first through `write_usize`; the digest
        // itself arrives here whole.
        let mut first = [0u8; 8];
        let n = bytes.len().min(8);
        first[..n].copy_from_slice(&bytes[..n]);
        self.0 ^= u64::from_le_bytes(first);
    }

    fn write_usize(&mut self, _len: usize) {}
}

/// A token's identity and the key that verified it.
type Verified = (Identity, Option<Arc<Key>>);

/// A verified token and the key that verified it.
#[derive(Clone)]
pub struct Cached {
    pub identity: Arc<Identity>,
    /// The JWKS key (its `kid` and RFC 7638 thumbprint) whose signature
    /// check let the token in; `None` for the issuer's HMAC secret, which
    /// changes only with the config (and so with the verifier).
    pub verified_by: Option<Arc<Key>>,
    /// Unix seconds after which it must be verified again: `exp`, or the
    /// verification time plus the TTL if that is sooner.
    pub until: i64,
}

impl Cached {
    /// Whether the key that verified this token is still published under
    /// its `kid` with the same thumbprint. A key withdrawn or replaced under
    /// the same `kid` at a refresh is marked so by the refresh itself, so a
    /// hit costs one atomic load here, not a key-set lookup or a hash.
    #[inline]
    pub fn key_still_published(&self) -> bool {
        self.verified_by.as_ref().is_none_or(|k| !k.is_withdrawn())
    }
}

impl TokenCache {
    /// A cache of at most `size` tokens (`auth.token_cache_size`), each
    /// served for at most `ttl` (`auth.token_cache_ttl`) after it was
    /// verified.
    pub fn new(size: u64, ttl: Duration) -> Self {
        // The item estimate sets the shard count and how many evicted
        // keys CLOCK-Pro remembers; nothing is allocated up front, so a
        // large bound costs nothing until that many tokens are seen.
        let items = usize::try_from(size.min(1 << 20)).unwrap_or(1 << 20);
        TokenCache {
            ttl_secs: i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX / 2),
            cache: quick_cache::sync::Cache::with(
                items,
                size,
                quick_cache::UnitWeighter,
                DigestHasher,
                Default::default(),
            ),
        }
    }

    pub fn key(token: &str) -> [u8; 32] {
        let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
        let mut k = [0u8; 32];
        k.copy_from_slice(d.as_ref());
        k
    }

    /// The entry for `key` (a [`TokenCache::key`]) while it is current.
    pub fn get(&self, key: &[u8; 32]) -> Option<Arc<Cached>> {
        let c = self.cache.get(key)?;
        if c.until > now_unix() {
            return Some(c);
        }
        // Past `exp` or the TTL: never served again, so not held either.
        self.cache.remove(key);
        None
    }

    pub fn insert(&self, key: [u8; 32], c: Cached) {
        if c.until > now_unix() {
            self.cache.insert(key, Arc::new(c));
        }
    }
}

fn now_unix() -> i64 {
    crate::clock::now_unix()
}

/// A small per-thread memo in front of [`TokenCache`], keyed by the exact
/// token text. A keep-alive client sends the same token request after
/// request; recognising it by comparing bytes skips the SHA-256 of the
/// whole token and the shared cache's bookkeeping (atomics, its LRU
/// queues), which was ~3% of the gateway's CPU at 50k req/s. The slot is
/// picked from the token's last bytes (signature bytes: an attacker who
/// makes tokens share a slot only evicts, a hit needs the identical
/// token). Entries carry the same limits as the shared cache: never past
/// `exp` or the TTL, only for the verifier that checked them, and only
/// while the verifying key is still published.
///
/// A token takes an occupied slot only when it misses there twice in a
/// row: a keep-alive client's token is in after its second request, while
/// a stream of distinct tokens (10,000 in rotation, a fleet of clients
/// each sending a few requests) leaves the slots alone instead of copying
/// every token in and dropping the one before, which it never reads again
/// (`benches/wrk/tail.sh`, 10,000-token rows).
pub mod recent {
    use std::cell::RefCell;
    use std::sync::Arc;

    use super::{Cached, Identity};

    const SLOTS: usize = 256;

    /// A fresh owner id: entries put by one owner (a verifier, a session
    /// store) are never found by another, nor by a later config's.
    pub fn next_owner() -> u64 {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    struct Slot {
        verifier: u64,
        /// The token's tail as [`slot_of`] mixes it: tokens of one issuer
        /// share their first few hundred bytes, so a miss compared whole
        /// would read that far before differing.
        tail: u64,
        token: Box<str>,
        cached: Cached,
    }

    /// A slot's entry, and the tail hash of the last token that missed
    /// here without being let in.
    #[derive(Default)]
    struct Place {
        entry: Option<Slot>,
        missed: u64,
    }

    thread_local! {
        static MEMO: RefCell<Vec<Place>> = RefCell::new((0..SLOTS).map(|_| Place::default()).collect());
    }

    /// The slot, and the tail hash it was picked by.
    fn slot_of(token: &str) -> (usize, u64) {
        let b = token.as_bytes();
        let tail = &b[b.len().saturating_sub(8)..];
        let mut x = [0u8; 8];
        x[..tail.len()].copy_from_slice(tail);
        let h = u64::from_le_bytes(x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((h >> 56) as usize % SLOTS, h)
    }

    /// The identity, if this exact token is remembered, current, and its
    /// verifying key still published (checked here, so a hit clones only
    /// the identity's `Arc`).
    pub fn get(verifier: u64, token: &str, now: i64) -> Option<Arc<Identity>> {
        MEMO.with(|m| {
            let m = m.borrow();
            let (slot, tail) = slot_of(token);
            let s = m.get(slot)?.entry.as_ref()?;
            (s.verifier == verifier
                && s.tail == tail
                && s.cached.until > now
                && *s.token == *token
                && s.cached.key_still_published())
            .then(|| s.cached.identity.clone())
        })
    }

    /// Remembers `token` in its slot if the slot is free or the token
    /// missed there last time too (see the module's comment); otherwise
    /// only notes the miss.
    pub fn put(verifier: u64, token: &str, cached: &Cached) {
        MEMO.with(|m| {
            let (slot, tail) = slot_of(token);
            let mut m = m.borrow_mut();
            let Some(place) = m.get_mut(slot) else { return };
            // The same token again (its entry went stale) is let in at once.
            let other = place.entry.as_ref().is_some_and(|e| e.tail != tail);
            if other && place.missed != tail {
                place.missed = tail;
                return;
            }
            place.missed = 0;
            // This thread's own copy of the identity: a hit hands out a
            // reference to it for the request, and a reference count that
            // every worker's hits wrote would move its cache line between
            // cores on each request of a token used on several
            // connections. The copy starts uncleared (`ClearedAt`), so its
            // first request looks the revocation set up again.
            let cached = Cached {
                identity: Arc::new(Identity::clone(&cached.identity)),
                verified_by: cached.verified_by.clone(),
                until: cached.until,
            };
            place.entry = Some(Slot {
                verifier,
                tail,
                token: token.into(),
                cached,
            });
        });
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        /// Two tokens that share a slot but not a tail.
        fn rivals() -> (String, String) {
            let a = "header.payload.signature-a0".to_string();
            let (slot, tail) = slot_of(&a);
            let b = (0..)
                .map(|i| format!("header.payload.signature-b{i}"))
                .find(|b| {
                    let (s, t) = slot_of(b);
                    s == slot && t != tail
                })
                .unwrap_or_default();
            (a, b)
        }

        fn cached(now: i64) -> Cached {
            Cached {
                identity: Arc::new(
                    Identity::from_claims(
                        Arc::from("idp"),
                        Arc::from("https://idp.test"),
                        serde_json::Map::new(),
                    )
                    .unwrap(),
                ),
                verified_by: None,
                until: now + 60,
            }
        }

        #[test]
        fn a_keep_alive_clients_token_stays_remembered_while_other_tokens_pass_once() {
            let now = 1_000;
            let owner = next_owner();
            let (a, b) = rivals();
            put(owner, &a, &cached(now));
            assert!(get(owner, &a, now).is_some(), "a free slot takes the token");
            // A token seen once does not push the remembered one out...
            put(owner, &b, &cached(now));
            assert!(get(owner, &a, now).is_some());
            assert!(get(owner, &b, now).is_none());
            // ...one that misses there twice in a row does.
            put(owner, &b, &cached(now));
            assert!(get(owner, &b, now).is_some());
            assert!(get(owner, &a, now).is_none());
        }

        #[test]
        fn a_remembered_token_whose_entry_went_stale_is_let_in_again_at_once() {
            let now = 1_000;
            let owner = next_owner();
            let (a, _) = rivals();
            put(owner, &a, &cached(now - 120));
            assert!(get(owner, &a, now).is_none(), "past its time: not served");
            put(owner, &a, &cached(now));
            assert!(get(owner, &a, now).is_some());
        }
    }
}

/// OpenID Connect Core 1.0 §3.1.3.7 steps 4, 5, 9, 10 and 11 (`iss`,
/// `aud` and the signature are checked by the verification itself).
fn check_id_token_claims(
    id: &Identity,
    client_id: &str,
    nonce: Option<&str>,
) -> Result<(), AuthError> {
    if let Some(serde_json::Value::Array(auds)) = id.claims.get("aud") {
        if auds.len() > 1 && id.claims.get("azp").is_none() {
            return Err(AuthError::Claim(
                "an ID token with several audiences must name its azp",
            ));
        }
    }
    if let Some(azp) = id.claims.get("azp") {
        if azp.as_str() != Some(client_id) {
            return Err(AuthError::Claim("ID token was issued to another client"));
        }
    }
    if id.subject.is_none() {
        return Err(AuthError::Claim("token lacks a required claim"));
    }
    let Some(iat) = id.issued_at else {
        return Err(AuthError::Claim("token lacks a required claim"));
    };
    let now = now_unix();
    if let Some(expected) = nonce {
        let Some(exp) = id.expires_at else {
            return Err(AuthError::Claim("token lacks a required claim"));
        };
        if exp <= now {
            return Err(AuthError::Expired);
        }
        // A minute of clock skew at most: a token issued later than that
        // was not issued for this login.
        if iat > now + 60 {
            return Err(AuthError::Claim("token is issued in the future"));
        }
        let got = id.claims.get("nonce").and_then(serde_json::Value::as_str);
        let same = got.is_some_and(|g| {
            g.len() == expected.len()
                && aws_lc_rs::constant_time::verify_slices_are_equal(
                    g.as_bytes(),
                    expected.as_bytes(),
                )
                .is_ok()
        });
        if !same {
            return Err(AuthError::Claim("ID token nonce does not match the login"));
        }
    }
    Ok(())
}

fn alg_is_hmac(a: Algorithm) -> bool {
    matches!(a, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// RFC 7519 §4.1.3: `aud` is required here, a string or an array of
/// strings, and must name one of the issuer's `audiences` (as
/// jsonwebtoken's validation did: a malformed `aud` counts as missing).
fn check_aud(
    claims: &serde_json::Map<String, serde_json::Value>,
    audiences: &[String],
) -> Result<(), AuthError> {
    use serde_json::Value;
    let ours = |a: &str| audiences.iter().any(|x| x == a);
    match claims.get("aud") {
        Some(Value::String(a)) if ours(a) => Ok(()),
        Some(Value::String(_)) => Err(AuthError::Claim("token is not meant for this audience")),
        Some(Value::Array(v)) if v.iter().all(Value::is_string) => {
            if v.iter().filter_map(Value::as_str).any(ours) {
                Ok(())
            } else {
                Err(AuthError::Claim("token is not meant for this audience"))
            }
        }
        _ => Err(AuthError::Claim("token lacks a required claim")),
    }
}

fn read_secret(s: &config::SecretSource, loaded: &LoadedConfig) -> anyhow::Result<Vec<u8>> {
    let bytes = s
        .read(loaded)
        .map_err(|e| anyhow::anyhow!("hmac_secret: {e}"))?;
    // RFC 7518 §3.2: an HS256 key must be at least as long as the hash.
    if bytes.len() < 32 {
        anyhow::bail!("hmac_secret is shorter than 32 bytes");
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    #[test]
    fn cache_keys_are_hashed_by_their_digests_first_bytes() {
        let a = TokenCache::key("header.payload.signature");
        let b = TokenCache::key("header.payload.signaturf");
        let first = |k: &[u8; 32]| u64::from_le_bytes(k[..8].try_into().unwrap());
        assert_eq!(DigestHasher.hash_one(a), first(&a));
        assert_eq!(DigestHasher.hash_one(b), first(&b));
        assert_ne!(DigestHasher.hash_one(a), DigestHasher.hash_one(b));
    }

    fn cached(until: i64) -> Cached {
        let claims = serde_json::Map::from_iter([
            ("sub".to_owned(), serde_json::json!("alice")),
            ("exp".to_owned(), serde_json::json!(until)),
        ]);
        Cached {
            identity: Arc::new(
                Identity::from_claims(Arc::from("idp"), Arc::from("https://idp.test"), claims)
                    .unwrap(),
            ),
            verified_by: None,
            until,
        }
    }

    #[test]
    fn a_cached_token_past_its_expiry_is_never_served_and_is_dropped() {
        let cache = TokenCache::new(100, Duration::from_secs(300));
        let live = TokenCache::key("live");
        let dead = TokenCache::key("dead");
        cache.insert(live, cached(now_unix() + 60));
        // Inserted directly: `insert` itself refuses an entry already past.
        cache.cache.insert(dead, Arc::new(cached(now_unix() - 1)));
        assert!(cache.get(&live).is_some());
        assert!(cache.get(&dead).is_none());
        assert!(cache.cache.get(&dead).is_none(), "the dead entry is gone");
        cache.insert(TokenCache::key("late"), cached(now_unix()));
        assert!(cache.get(&TokenCache::key("late")).is_none());
    }

    #[test]
    fn the_token_cache_holds_no_more_tokens_than_its_size() {
        let cache = TokenCache::new(1_000, Duration::from_secs(300));
        let until = now_unix() + 60;
        for i in 0..5_000 {
            cache.insert(TokenCache::key(&format!("token {i}")), cached(until));
        }
        assert!(cache.cache.len() <= 1_000, "{} held", cache.cache.len());
        assert!(cache.cache.len() >= 900, "{} held", cache.cache.len());
        // The most recent is there.
        assert!(cache.get(&TokenCache::key("token 4999")).is_some());
    }
}
