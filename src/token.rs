//! `gatehouse token`: mints tokens with a local private key, for demos,
//! tests and trying the example config. It is a development tool: real
//! tokens come from the identity provider.

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

pub struct MintRequest<'a> {
    pub key_path: &'a Path,
    pub alg: Algorithm,
    pub kid: Option<&'a str>,
    pub issuer: &'a str,
    pub audience: &'a str,
    pub subject: &'a str,
    pub ttl: Duration,
    pub sid: Option<&'a str>,
    pub jti: Option<&'a str>,
    pub scope: Option<&'a str>,
    /// Extra claims as `name=value`; a value that parses as JSON is taken
    /// as JSON (numbers, arrays), otherwise as a string.
    pub claims: &'a [String],
}

pub fn mint(r: &MintRequest<'_>) -> anyhow::Result<String> {
    let pem = std::fs::read(r.key_path).with_context(|| format!("key {}", r.key_path.display()))?;
    let key = match r.alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => EncodingKey::from_rsa_pem(&pem),
        Algorithm::ES256 | Algorithm::ES384 => EncodingKey::from_ec_pem(&pem),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem),
        Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
            let mut secret = pem;
            while secret.last().is_some_and(|c| c.is_ascii_whitespace()) {
                secret.pop();
            }
            Ok(EncodingKey::from_secret(&secret))
        }
        other => anyhow::bail!("algorithm {other:?} is not supported for minting"),
    }
    .with_context(|| format!("key {} does not fit {:?}", r.key_path.display(), r.alg))?;
    let now = jsonwebtoken::get_current_timestamp();
    let mut claims = Map::new();
    claims.insert("iss".into(), r.issuer.into());
    claims.insert("aud".into(), r.audience.into());
    claims.insert("sub".into(), r.subject.into());
    claims.insert("iat".into(), now.into());
    claims.insert("nbf".into(), now.into());
    claims.insert("exp".into(), (now + r.ttl.as_secs()).into());
    claims.insert(
        "jti".into(),
        r.jti
            .map_or_else(gatehouse_core::ids::random_id, str::to_owned)
            .into(),
    );
    if let Some(sid) = r.sid {
        claims.insert("sid".into(), sid.into());
    }
    if let Some(scope) = r.scope {
        claims.insert("scope".into(), scope.into());
    }
    for c in r.claims {
        let (k, v) = c
            .split_once('=')
            .with_context(|| format!("claim `{c}` is not name=value"))?;
        let v = serde_json::from_str::<Value>(v).unwrap_or_else(|_| Value::String(v.to_owned()));
        claims.insert(k.to_owned(), v);
    }
    let mut header = Header::new(r.alg);
    header.kid = r.kid.map(str::to_owned);
    Ok(jsonwebtoken::encode(&header, &claims, &key)?)
}
