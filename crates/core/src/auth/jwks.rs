//! Key sets: parsing a JWKS, keeping the last good one, refreshing it from a
//! file or URL without ever blocking a request on the network except when a
//! token names a `kid` we have never seen (and then at most once per
//! `min_refresh_interval`, shared by every waiting request).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::jwk::{
    AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, KeyOperations, PublicKeyUse,
};
use jsonwebtoken::Algorithm;

use crate::config::{JwksConfig, LoadedConfig};

/// A JWKS document larger than this is refused: no identity provider
/// publishes megabytes of keys, and a hostile URL must not exhaust memory.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    EcP256,
    EcP384,
    Ed25519,
}

impl KeyKind {
    /// The key type must match the algorithm family *and* curve: an ES384
    /// token is never checked against a P-256 key, an RS token never against
    /// an EC key.
    pub fn fits(self, alg: Algorithm) -> bool {
        matches!(
            (self, alg),
            (
                KeyKind::Rsa,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ) | (KeyKind::EcP256, Algorithm::ES256)
                | (KeyKind::EcP384, Algorithm::ES384)
                | (KeyKind::Ed25519, Algorithm::EdDSA)
        )
    }
}

/// One usable public key of a key set.
///
/// Its identity is its `kid` plus its RFC 7638 JWK thumbprint, computed
/// once when the set is loaded. A verified-token cache entry holds the
/// `Arc<Key>` that verified it; a refresh that no longer publishes this
/// key under this `kid` with this thumbprint marks it withdrawn, and every
/// cache entry it vouched for is verified again (one atomic load per hit).
pub struct Key {
    pub kind: KeyKind,
    /// The JWK's own `alg`, when it pins one.
    pub alg: Option<Algorithm>,
    /// The key parsed once for each algorithm it may verify (its kind's,
    /// or the one it pins): a verification then costs the signature check
    /// alone, not a parse of the key (RSA modulus, Montgomery constants,
    /// EC point validation) every time.
    parsed: Vec<(Algorithm, aws_lc_rs::signature::ParsedPublicKey)>,
    kid: Option<Arc<str>>,
    thumbprint: Box<str>,
    withdrawn: AtomicBool,
}

impl Key {
    /// The JWK's `kid`, if it had one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// RFC 7638 JWK SHA-256 thumbprint, base64url without padding (43
    /// characters).
    pub fn thumbprint(&self) -> &str {
        &self.thumbprint
    }

    /// True once a refresh of the key set published no key with this
    /// `kid` and thumbprint (withdrawn, or replaced under the same `kid`).
    /// Never goes back to false: a key published again is a new `Key`.
    pub fn is_withdrawn(&self) -> bool {
        self.withdrawn.load(Ordering::Acquire)
    }

    /// The key parsed for `alg`, if it may verify it.
    pub fn parsed(&self, alg: Algorithm) -> Option<&aws_lc_rs::signature::ParsedPublicKey> {
        self.parsed.iter().find(|(a, _)| *a == alg).map(|(_, k)| k)
    }

    /// Same material and same pinned algorithm: what was verified with one
    /// would verify with the other, so the old one stays in use.
    fn same_as(&self, other: &Key) -> bool {
        self.thumbprint == other.thumbprint && self.alg == other.alg && self.kind == other.kind
    }
}

/// RFC 7638 §3: SHA-256 over the JSON object of the key type's required
/// members only (§3.2: RSA `e`, `kty`, `n`; EC `crv`, `kty`, `x`, `y`;
/// RFC 8037 §2 OKP `crv`, `kty`, `x`), in lexicographic order, without
/// whitespace, base64url-encoded without padding.
pub fn jwk_thumbprint(jwk: &serde_json::Value) -> Result<String, String> {
    let kty = jwk
        .get("kty")
        .and_then(serde_json::Value::as_str)
        .ok_or("JWK without a string kty")?;
    let required: &[&str] = match kty {
        "RSA" => &["e", "kty", "n"],
        "EC" => &["crv", "kty", "x", "y"],
        "OKP" => &["crv", "kty", "x"],
        "oct" => &["k", "kty"],
        _ => return Err(format!("no thumbprint for key type {kty}")),
    };
    let mut canonical = String::from("{");
    for (i, name) in required.iter().enumerate() {
        let value = jwk
            .get(*name)
            .and_then(serde_json::Value::as_str)
            .ok_or_else(|| format!("JWK lacks the string member {name}"))?;
        if i > 0 {
            canonical.push(',');
        }
        // serde_json writes a string with exactly the escapes RFC 8259
        // requires and no others, as RFC 7638 §3.3 asks.
        canonical.push_str(&serde_json::to_string(name).map_err(|e| e.to_string())?);
        canonical.push(':');
        canonical.push_str(&serde_json::to_string(value).map_err(|e| e.to_string())?);
    }
    canonical.push('}');
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, canonical.as_bytes());
    Ok(base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        digest.as_ref(),
    ))
}

#[derive(Default)]
pub struct KeySet {
    by_kid: HashMap<String, Arc<Key>>,
    /// Keys published without a `kid`; usable only by tokens without one.
    unnamed: Vec<Arc<Key>>,
}

impl KeySet {
    pub fn len(&self) -> usize {
        self.by_kid.len() + self.unnamed.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// By `kid` when the token has one; without one, only when exactly one
    /// unnamed key fits (guessing among several would be trying keys until
    /// one verifies).
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&Arc<Key>> {
        match kid {
            Some(kid) => self.by_kid.get(kid),
            None => {
                let mut fitting = self.unnamed.iter().filter(|k| k.kind.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Some(k),
                    _ => None,
                }
            }
        }
    }

    /// Takes over from `old`: a key published again under the same `kid`
    /// with the same thumbprint keeps its `Arc` (and so its cached
    /// verifications); every key of `old` not taken over is marked
    /// withdrawn. Returns the `kid`s whose key was replaced by different
    /// material, for the log.
    fn take_over(&mut self, old: &KeySet) -> Vec<String> {
        let mut kept: Vec<*const Key> = Vec::new();
        let mut replaced = Vec::new();
        for (kid, key) in self.by_kid.iter_mut() {
            if let Some(prev) = old.by_kid.get(kid) {
                if prev.same_as(key) {
                    *key = prev.clone();
                    kept.push(Arc::as_ptr(prev));
                } else {
                    replaced.push(kid.clone());
                }
            }
        }
        for key in self.unnamed.iter_mut() {
            if let Some(prev) = old
                .unnamed
                .iter()
                .find(|p| p.same_as(key) && !kept.contains(&Arc::as_ptr(p)))
            {
                *key = prev.clone();
                kept.push(Arc::as_ptr(prev));
            }
        }
        for prev in old.by_kid.values().chain(old.unnamed.iter()) {
            if !kept.contains(&Arc::as_ptr(prev)) {
                prev.withdrawn.store(true, Ordering::Release);
            }
        }
        replaced.sort();
        replaced
    }
}

/// Parses a JWKS document. Keys we cannot use (encryption keys, symmetric
/// `oct` keys, unknown types or curves) are skipped with a reason rather
/// than failing the whole set, as one exotic key at an identity provider must
/// not take every other key down with it.
pub fn parse_jwks(bytes: &[u8]) -> Result<(KeySet, Vec<String>), String> {
    #[derive(serde::Deserialize)]
    struct Doc {
        keys: Vec<serde_json::Value>,
    }
    let doc: Doc =
        serde_json::from_slice(bytes).map_err(|e| format!("not a JWKS document: {e}"))?;
    let mut set = KeySet::default();
    let mut skipped = Vec::new();
    for (i, raw) in doc.keys.into_iter().enumerate() {
        match parse_key(raw) {
            Ok((kid, key)) => match kid {
                Some(kid) => {
                    if set.by_kid.insert(kid.clone(), Arc::new(key)).is_some() {
                        skipped.push(format!(
                            "key #{i}: duplicate kid `{kid}`, the later one kept"
                        ));
                    }
                }
                None => set.unnamed.push(Arc::new(key)),
            },
            Err(reason) => skipped.push(format!("key #{i}: {reason}")),
        }
    }
    Ok((set, skipped))
}

fn parse_key(mut raw: serde_json::Value) -> Result<(Option<String>, Key), String> {
    let thumbprint = jwk_thumbprint(&raw);
    // RFC 9864 §2.2: `Ed25519` is the fully-specified name of what JOSE
    // called `EdDSA` over that curve; providers now publish keys with it.
    if raw.get("alg").and_then(serde_json::Value::as_str) == Some("Ed25519") {
        raw["alg"] = serde_json::Value::String("EdDSA".into());
    }
    let jwk: Jwk = serde_json::from_value(raw).map_err(|e| format!("unreadable JWK: {e}"))?;
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return Err("not a signature key (use != sig)".into());
    }
    // RFC 7517 §4.3: a key whose `key_ops` do not include `verify` is not
    // for checking signatures.
    if jwk
        .common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&KeyOperations::Verify))
    {
        return Err("not a verification key (key_ops without verify)".into());
    }
    let kind = match &jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyKind::Rsa,
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => KeyKind::EcP256,
            EllipticCurve::P384 => KeyKind::EcP384,
            _ => return Err("unsupported EC curve".into()),
        },
        AlgorithmParameters::OctetKeyPair(p) if p.curve == EllipticCurve::Ed25519 => {
            KeyKind::Ed25519
        }
        AlgorithmParameters::OctetKeyPair(_) => return Err("unsupported OKP curve".into()),
        AlgorithmParameters::OctetKey(_) => {
            return Err("symmetric (oct) keys are never taken from a JWKS".into())
        }
        _ => return Err("unsupported key type".into()),
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(ka) => Some(key_algorithm(ka).ok_or("key pins an algorithm we do not verify")?),
    };
    if let Some(a) = alg {
        if !kind.fits(a) {
            return Err(format!("key type does not fit its own alg {a:?}"));
        }
    }
    let material = public_key_bytes(&jwk.algorithm)?;
    let mut parsed = Vec::new();
    for a in ASYMMETRIC {
        if kind.fits(a) && alg.is_none_or(|pinned| pinned == a) {
            let k =
                aws_lc_rs::signature::ParsedPublicKey::new(verification_algorithm(a), &material)
                    .map_err(|e| format!("bad key material: {e}"))?;
            parsed.push((a, k));
        }
    }
    let thumbprint = thumbprint?.into_boxed_str();
    Ok((
        jwk.common.key_id.clone(),
        Key {
            kind,
            alg,
            parsed,
            kid: jwk.common.key_id.map(Arc::from),
            thumbprint,
            withdrawn: AtomicBool::new(false),
        },
    ))
}

/// Every asymmetric algorithm gatehouse verifies (RFC 7518 §3.3–3.5,
/// RFC 8037 §3.1).
const ASYMMETRIC: [Algorithm; 9] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

/// aws-lc-rs's verification for a JWS algorithm: RSA moduli of 2048 to
/// 8192 bits (RFC 7518 §3.3 asks for at least 2048), ECDSA signatures in
/// the fixed-width `r || s` form JWS uses (RFC 7518 §3.4), Ed25519.
pub fn verification_algorithm(
    a: Algorithm,
) -> &'static dyn aws_lc_rs::signature::VerificationAlgorithm {
    use aws_lc_rs::signature as s;
    match a {
        Algorithm::RS384 => &s::RSA_PKCS1_2048_8192_SHA384,
        Algorithm::RS512 => &s::RSA_PKCS1_2048_8192_SHA512,
        Algorithm::PS256 => &s::RSA_PSS_2048_8192_SHA256,
        Algorithm::PS384 => &s::RSA_PSS_2048_8192_SHA384,
        Algorithm::PS512 => &s::RSA_PSS_2048_8192_SHA512,
        Algorithm::ES256 => &s::ECDSA_P256_SHA256_FIXED,
        Algorithm::ES384 => &s::ECDSA_P384_SHA384_FIXED,
        Algorithm::EdDSA => &s::ED25519,
        _ => &s::RSA_PKCS1_2048_8192_SHA256,
    }
}

/// The public key in the form aws-lc-rs parses: an RSA key as a PKCS#1
/// `RSAPublicKey` (RFC 8017 §A.1.1, DER), an EC key as the uncompressed
/// point `04 || x || y` (SEC 1 §2.3.3), an Ed25519 key as its 32 bytes.
fn public_key_bytes(p: &AlgorithmParameters) -> Result<Vec<u8>, String> {
    let b64 = |v: &str, what: &str| {
        base64::Engine::decode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, v)
            .map_err(|_| format!("{what} is not base64url"))
    };
    match p {
        AlgorithmParameters::RSA(r) => {
            let (n, e) = (b64(&r.n, "n")?, b64(&r.e, "e")?);
            // RFC 7518 §3.3: 2048 bits or more; a shorter key could never
            // verify a token (aws-lc-rs refuses it), so it is not loaded.
            let bits = n
                .iter()
                .position(|b| *b != 0)
                .map_or(0, |i| (n.len() - i) * 8 - n[i].leading_zeros() as usize);
            if bits < 2048 {
                return Err(format!("RSA key of {bits} bits (at least 2048 are needed)"));
            }
            let mut body = der_unsigned(&n);
            body.extend(der_unsigned(&e));
            Ok(der(0x30, &body))
        }
        AlgorithmParameters::EllipticCurve(ec) => {
            let (x, y) = (b64(&ec.x, "x")?, b64(&ec.y, "y")?);
            let mut point = vec![0x04];
            point.extend(x);
            point.extend(y);
            Ok(point)
        }
        AlgorithmParameters::OctetKeyPair(o) => b64(&o.x, "x"),
        _ => Err("unsupported key type".into()),
    }
}

/// A DER INTEGER holding the unsigned big-endian `v` (leading zeros
/// dropped, one added when the top bit is set).
fn der_unsigned(v: &[u8]) -> Vec<u8> {
    let v = &v[v
        .iter()
        .take_while(|b| **b == 0)
        .count()
        .min(v.len().saturating_sub(1))..];
    let mut body = Vec::with_capacity(v.len() + 1);
    if v.first().is_some_and(|b| b & 0x80 != 0) {
        body.push(0);
    }
    body.extend_from_slice(v);
    der(0x02, &body)
}

/// A DER TLV with a definite length.
fn der(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let n = body.len();
    if n < 0x80 {
        out.push(n as u8);
    } else {
        let len = n.to_be_bytes();
        let skip = len.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (len.len() - skip) as u8);
        out.extend_from_slice(&len[skip..]);
    }
    out.extend_from_slice(body);
    out
}

fn key_algorithm(ka: KeyAlgorithm) -> Option<Algorithm> {
    Some(match ka {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

enum Origin {
    File(PathBuf),
    Url {
        uri: http::Uri,
        client: Box<JwksClient>,
        timeout: Duration,
    },
    /// OpenID Connect Discovery 1.0: the provider's metadata document,
    /// read again at every refresh, names the key set (`jwks_uri`).
    Discovery {
        uri: http::Uri,
        client: Box<JwksClient>,
        timeout: Duration,
        /// The configured `iss`: the document must name exactly it (§4.3).
        issuer: String,
        allow_plaintext_http: bool,
    },
}

/// What an OpenID provider publishes about itself (OpenID Connect
/// Discovery 1.0 §3), as far as the gateway uses it. Endpoints are
/// absolute `https` URLs (`http` only to loopback, or with
/// `allow_plaintext_http`), checked when the document is read.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ProviderMetadata {
    pub issuer: String,
    pub jwks_uri: String,
    #[serde(default)]
    pub authorization_endpoint: Option<String>,
    #[serde(default)]
    pub token_endpoint: Option<String>,
    /// OpenID Connect RP-Initiated Logout 1.0 §2.1.
    #[serde(default)]
    pub end_session_endpoint: Option<String>,
    #[serde(default)]
    pub id_token_signing_alg_values_supported: Vec<String>,
    /// RFC 8414 §2 / RFC 7636: `S256` is what the login asks for.
    #[serde(default)]
    pub code_challenge_methods_supported: Vec<String>,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
    /// RFC 9207 §3: the provider puts `iss` in every authorization
    /// response; one without it is then refused.
    #[serde(default)]
    pub authorization_response_iss_parameter_supported: bool,
}

/// The largest discovery document read (providers publish a few KiB).
const MAX_DISCOVERY_BYTES: usize = 256 * 1024;

impl ProviderMetadata {
    /// Parses and checks a discovery document: its `issuer` must be the
    /// configured one exactly (Discovery §4.3, or the document could hand
    /// us another provider's keys), and every endpoint must be a URL the
    /// transport rule allows.
    pub fn parse(bytes: &[u8], issuer: &str, allow_plaintext_http: bool) -> Result<Self, String> {
        let m: ProviderMetadata = serde_json::from_slice(bytes)
            .map_err(|e| format!("not an OpenID discovery document: {e}"))?;
        if m.issuer != issuer {
            return Err(format!(
                "the discovery document names issuer `{}`, not `{issuer}`",
                m.issuer
            ));
        }
        let endpoints = [
            ("jwks_uri", Some(&m.jwks_uri)),
            ("authorization_endpoint", m.authorization_endpoint.as_ref()),
            ("token_endpoint", m.token_endpoint.as_ref()),
            ("end_session_endpoint", m.end_session_endpoint.as_ref()),
        ];
        for (name, url) in endpoints {
            let Some(url) = url else { continue };
            let uri: http::Uri = url
                .parse()
                .map_err(|e| format!("{name} `{url}` is not a URL: {e}"))?;
            if !matches!(uri.scheme_str(), Some("https" | "http")) {
                return Err(format!("{name} `{url}` is not an https URL"));
            }
            if let Some(problem) = crate::config::plaintext_problem(
                name,
                url,
                "http",
                uri.host(),
                allow_plaintext_http,
                "allow_plaintext_http",
            ) {
                return Err(problem);
            }
        }
        Ok(m)
    }
}

use crate::httpclient::HttpClient as JwksClient;

impl Origin {
    fn describe(&self) -> String {
        match self {
            Origin::File(p) => p.display().to_string(),
            Origin::Url { uri, .. } | Origin::Discovery { uri, .. } => uri.to_string(),
        }
    }

    /// What names this origin among [`last_good`]'s entries: a remote
    /// origin only (a file that cannot be read refuses the config).
    fn remembered_as(&self) -> Option<String> {
        match self {
            Origin::File(_) => None,
            Origin::Url { uri, .. } => Some(format!("jwks {uri}")),
            Origin::Discovery { uri, issuer, .. } => Some(format!("discovery {uri} {issuer}")),
        }
    }

    /// The key set document, and the provider's metadata when the keys
    /// come by discovery.
    async fn fetch(&self) -> Result<(Vec<u8>, Option<ProviderMetadata>), String> {
        match self {
            Origin::File(p) => tokio::fs::read(p)
                .await
                .map(|b| (b, None))
                .map_err(|e| e.to_string()),
            Origin::Url {
                uri,
                client,
                timeout,
            } => get(client, uri, *timeout, MAX_JWKS_BYTES)
                .await
                .map(|b| (b, None)),
            Origin::Discovery {
                uri,
                client,
                timeout,
                issuer,
                allow_plaintext_http,
            } => {
                let doc = get(client, uri, *timeout, MAX_DISCOVERY_BYTES)
                    .await
                    .map_err(|e| format!("discovery document: {e}"))?;
                let meta = ProviderMetadata::parse(&doc, issuer, *allow_plaintext_http)?;
                let jwks_uri: http::Uri = meta
                    .jwks_uri
                    .parse()
                    .map_err(|e| format!("jwks_uri: {e}"))?;
                let keys = get(client, &jwks_uri, *timeout, MAX_JWKS_BYTES)
                    .await
                    .map_err(|e| format!("jwks_uri {jwks_uri}: {e}"))?;
                Ok((keys, Some(meta)))
            }
        }
    }
}

/// One GET of a JSON document, whole, at most `limit` bytes, within
/// `timeout`; anything but 200 is an error.
async fn get(
    client: &JwksClient,
    uri: &http::Uri,
    timeout: Duration,
    limit: usize,
) -> Result<Vec<u8>, String> {
    let fut = async {
        let req = http::Request::get(uri.clone())
            .header(http::header::ACCEPT, "application/json")
            .body(Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        let resp = client
            .request(req)
            .await
            .map_err(|e| format!("request failed: {e}"))?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!("answered {}", resp.status()));
        }
        let body = Limited::new(resp.into_body(), limit)
            .collect()
            .await
            .map_err(|e| format!("reading body: {e}"))?;
        Ok(body.to_bytes().to_vec())
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| format!("no answer within {timeout:?}"))?
}

/// One issuer's keys: the last good set, swapped atomically on refresh.
pub struct KeySource {
    issuer: Arc<str>,
    origin: Origin,
    metadata: arc_swap::ArcSwapOption<ProviderMetadata>,
    current: ArcSwap<KeySet>,
    /// False while the latest fetch failed: an unknown `kid` then may be a
    /// key we could not learn about, which the issuer's policy can answer
    /// with 503 instead of 401.
    healthy: AtomicBool,
    refresh_interval: Duration,
    min_refresh_interval: Duration,
    last_attempt: tokio::sync::Mutex<Option<Instant>>,
}

impl KeySource {
    /// Loads the first key set. A file that cannot be read or parsed fails
    /// start-up; a URL that is down does not (the identity provider may come
    /// up after us): the source starts empty and unhealthy and keeps trying.
    pub async fn start(
        issuer: Arc<str>,
        cfg: &JwksConfig,
        loaded: &LoadedConfig,
    ) -> anyhow::Result<Arc<Self>> {
        let origin = match (&cfg.file, &cfg.url) {
            (Some(f), _) => Origin::File(loaded.resolve(f)),
            (None, Some(url)) => Origin::Url {
                uri: url.0.clone(),
                client: Box::new(crate::httpclient::build(
                    cfg.ca_file.as_deref().map(|p| loaded.resolve(p)).as_deref(),
                    cfg.timeout,
                )?),
                timeout: cfg.timeout,
            },
            (None, None) => anyhow::bail!("jwks needs file or url"),
        };
        Self::with_origin(issuer, origin, cfg).await
    }

    /// Keys found through the provider's OpenID Connect Discovery 1.0
    /// document: `cfg.url`, or else `{iss}/.well-known/openid-configuration`
    /// (§4). The document is read again at every refresh, so a moved
    /// `jwks_uri` or endpoint is followed like a rotated key.
    pub async fn discover(
        issuer: Arc<str>,
        iss: &str,
        cfg: &JwksConfig,
        loaded: &LoadedConfig,
    ) -> anyhow::Result<Arc<Self>> {
        let uri: http::Uri = match &cfg.url {
            Some(u) => u.0.clone(),
            None => format!(
                "{}/.well-known/openid-configuration",
                iss.trim_end_matches('/')
            )
            .parse()?,
        };
        let origin = Origin::Discovery {
            uri,
            client: Box::new(crate::httpclient::build(
                cfg.ca_file.as_deref().map(|p| loaded.resolve(p)).as_deref(),
                cfg.timeout,
            )?),
            timeout: cfg.timeout,
            issuer: iss.to_owned(),
            allow_plaintext_http: cfg.allow_plaintext_http,
        };
        Self::with_origin(issuer, origin, cfg).await
    }

    /// The provider's metadata as last read (discovery only; `None` before
    /// the first successful read).
    pub fn metadata(&self) -> Option<Arc<ProviderMetadata>> {
        self.metadata.load_full()
    }

    async fn with_origin(
        issuer: Arc<str>,
        origin: Origin,
        cfg: &JwksConfig,
    ) -> anyhow::Result<Arc<Self>> {
        let remembered = origin.remembered_as();
        let source = Arc::new(KeySource {
            issuer,
            origin,
            metadata: arc_swap::ArcSwapOption::empty(),
            current: ArcSwap::from_pointee(KeySet::default()),
            healthy: AtomicBool::new(false),
            refresh_interval: cfg.refresh_interval,
            min_refresh_interval: cfg.min_refresh_interval,
            last_attempt: tokio::sync::Mutex::new(None),
        });
        let first = source.refresh_now().await;
        if let Err(e) = first {
            if matches!(source.origin, Origin::File(_)) {
                anyhow::bail!("jwks {}: {e}", source.origin.describe());
            }
            // A reload (SIGHUP, a config or certificate change) while the
            // provider is unreachable: the keys this process last fetched
            // from the same place, as a failed scheduled refresh keeps
            // them. Without this every token of the issuer was refused,
            // and /readyz failed, until the provider came back.
            let kept = remembered.and_then(|name| last_good().lock().ok()?.get(&name).cloned());
            match kept {
                Some((set, meta)) => {
                    tracing::warn!(issuer = %source.issuer, source = %source.origin.describe(), error = %e,
                        keys = set.len(), "JWKS not available at reload; serving the last key set fetched from it until it is");
                    source.current.store(set);
                    if meta.is_some() {
                        source.metadata.store(meta);
                    }
                }
                None => {
                    tracing::error!(issuer = %source.issuer, source = %source.origin.describe(), error = %e,
                    "JWKS not available at start; tokens of this issuer are refused until it is")
                }
            }
        }
        Ok(source)
    }

    pub fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.current.load()
    }

    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }

    /// Fetches and swaps in a new key set. A failed fetch or an empty or
    /// unreadable document keeps the previous set.
    async fn refresh_now(&self) -> Result<usize, String> {
        let mut last = self.last_attempt.lock().await;
        self.refresh_locked(&mut last).await
    }

    /// The caller holds `last_attempt` for the whole fetch, so requests that
    /// queue behind it see the new key set when they get the lock.
    async fn refresh_locked(&self, last: &mut Option<Instant>) -> Result<usize, String> {
        *last = Some(Instant::now());
        let result = self.origin.fetch().await.and_then(|(b, meta)| {
            let parsed = parse_jwks(&b)?;
            if let Some(m) = meta {
                self.metadata.store(Some(Arc::new(m)));
            }
            Ok(parsed)
        });
        let ok = matches!(&result, Ok((set, _)) if !set.is_empty());
        crate::metrics::metrics()
            .jwks_refreshes
            .get_or_create(&crate::metrics::IssuerResult {
                issuer: self.issuer.to_string(),
                result: if ok { "ok" } else { "error" },
            })
            .inc();
        match result {
            Ok((mut set, skipped)) if !set.is_empty() => {
                for s in &skipped {
                    tracing::warn!(issuer = %self.issuer, "JWKS {s}");
                }
                let n = set.len();
                // Keys dropped or replaced under the same `kid` are marked
                // withdrawn here, so the verified-token cache stops
                // honouring what they verified at this refresh, not at
                // its TTL (RFC 7638 thumbprints tell "same kid, same key"
                // from "same kid, new key").
                let old = self.current.load_full();
                let replaced = set.take_over(&old);
                let set = Arc::new(set);
                self.current.store(set.clone());
                if let (Some(name), Ok(mut kept)) =
                    (self.origin.remembered_as(), last_good().lock())
                {
                    kept.insert(name, (set, self.metadata.load_full()));
                }
                for kid in &replaced {
                    tracing::warn!(issuer = %self.issuer, kid = %kid,
                        "JWKS publishes a different key under a known kid; tokens verified with the previous key are verified again");
                }
                self.healthy.store(true, Ordering::Relaxed);
                tracing::debug!(issuer = %self.issuer, keys = n, "JWKS loaded");
                Ok(n)
            }
            Ok(_) => {
                self.healthy.store(false, Ordering::Relaxed);
                Err("no usable key in the set".into())
            }
            Err(e) => {
                self.healthy.store(false, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Called when a token names a `kid` we do not have. Refreshes unless a
    /// fetch happened within `min_refresh_interval`; concurrent callers wait
    /// for the one fetch in progress instead of each starting their own.
    /// Returns whether a new fetch was made.
    pub async fn refresh_for_unknown_kid(&self) -> bool {
        let mut last = self.last_attempt.lock().await;
        if matches!(*last, Some(t) if t.elapsed() < self.min_refresh_interval) {
            return false;
        }
        match self.refresh_locked(&mut last).await {
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(issuer = %self.issuer, source = %self.origin.describe(), error = %e,
                    "JWKS refresh for an unknown kid failed; keeping the last good key set");
                true
            }
        }
    }

    /// The scheduled refresh, for as long as the source lives.
    pub fn spawn_refresher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let every = self.refresh_interval;
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let Some(src) = weak.upgrade() else { return };
                if let Err(e) = src.refresh_now().await {
                    tracing::warn!(issuer = %src.issuer, source = %src.origin.describe(), error = %e,
                        "JWKS refresh failed; keeping the last good key set");
                }
            }
        })
    }
}

/// The last key set (and, by discovery, provider metadata) fetched from
/// each remote origin in this process, by [`Origin::remembered_as`]: what
/// a key source built at a reload starts from when its first fetch fails.
/// One entry per distinct URL, written only at a successful refresh.
type Remembered = (Arc<KeySet>, Option<Arc<ProviderMetadata>>);

fn last_good() -> &'static std::sync::Mutex<HashMap<String, Remembered>> {
    static LAST: std::sync::OnceLock<std::sync::Mutex<HashMap<String, Remembered>>> =
        std::sync::OnceLock::new();
    LAST.get_or_init(Default::default)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> serde_json::Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures")
            .join(name);
        serde_json::from_slice(&std::fs::read(path).expect("fixture")).expect("json")
    }

    fn parsed(doc: &serde_json::Value) -> KeySet {
        let (set, skipped) = parse_jwks(doc.to_string().as_bytes()).expect("jwks");
        assert!(skipped.is_empty(), "{skipped:?}");
        set
    }

    #[test]
    fn thumbprint_of_the_rfc7638_example_key() {
        // RFC 7638 §3.1; `alg` and `kid` are not part of the thumbprint.
        let jwk = serde_json::json!({
            "kty": "RSA",
            "n": "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3oknjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZHzu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU8awapJzKnqDKgw",
            "e": "AQAB",
            "alg": "RS256",
            "kid": "2011-04-29"
        });
        let expected = "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs";
        assert_eq!(jwk_thumbprint(&jwk).expect("thumbprint"), expected);
        let set = parsed(&serde_json::json!({ "keys": [jwk] }));
        let key = set.find(Some("2011-04-29"), Algorithm::RS256).expect("key");
        assert_eq!(key.thumbprint(), expected);
        assert_eq!(key.kid(), Some("2011-04-29"));
    }

    #[test]
    fn short_rsa_keys_and_keys_not_for_verifying_are_skipped_with_a_reason() {
        // A 1024-bit modulus (128 bytes, top bit set) could never verify a
        // token; `key_ops` without `verify` is not for signatures.
        let short = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            [0xC5u8; 128],
        );
        let doc = serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "short", "n": short, "e": "AQAB"},
            {"kty": "RSA", "kid": "enc-only", "key_ops": ["encrypt"], "n": fixture("jwks.json")["keys"][0]["n"], "e": "AQAB"},
        ]});
        let (set, skipped) = parse_jwks(doc.to_string().as_bytes()).expect("jwks");
        assert!(set.find(Some("short"), Algorithm::RS256).is_none());
        assert!(set.find(Some("enc-only"), Algorithm::RS256).is_none());
        assert!(
            skipped.iter().any(|r| r.contains("1024 bits")),
            "{skipped:?}"
        );
        assert!(skipped.iter().any(|r| r.contains("key_ops")), "{skipped:?}");
    }

    #[test]
    fn a_key_published_with_the_rfc_9864_name_ed25519_verifies_eddsa() {
        let mut doc = fixture("jwks.json");
        let keys = doc["keys"].as_array_mut().expect("keys");
        let ed = keys
            .iter_mut()
            .find(|k| k["kid"] == "test-eddsa")
            .expect("eddsa key");
        ed["alg"] = serde_json::json!("Ed25519");
        let set = parsed(&doc);
        let key = set.find(Some("test-eddsa"), Algorithm::EdDSA).expect("key");
        assert!(key.parsed(Algorithm::EdDSA).is_some());
    }

    #[test]
    fn every_fixture_key_has_a_distinct_thumbprint() {
        let set = parsed(&fixture("jwks.json"));
        let mut seen: Vec<&str> = set
            .by_kid
            .values()
            .map(|k| {
                assert_eq!(k.thumbprint().len(), 43);
                k.thumbprint()
            })
            .collect();
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 3);
    }

    #[test]
    fn a_key_replaced_under_the_same_kid_is_withdrawn_and_unchanged_keys_are_kept() {
        let first = parsed(&fixture("jwks.json"));
        let rs = first.by_kid["test-rs256"].clone();
        let es = first.by_kid["test-es256"].clone();

        // The same document again: every key carried over, none withdrawn.
        let mut same = parsed(&fixture("jwks.json"));
        assert!(same.take_over(&first).is_empty());
        assert!(Arc::ptr_eq(&same.by_kid["test-rs256"], &rs));
        assert!(!rs.is_withdrawn() && !es.is_withdrawn());

        // `test-rs256` now names the other RSA key's material.
        let mut doc = fixture("jwks.json");
        let next = fixture("jwks-next.json");
        doc["keys"][0]["n"] = next["keys"][1]["n"].clone();
        let mut replaced = parsed(&doc);
        assert_eq!(replaced.take_over(&same), vec!["test-rs256".to_string()]);
        assert!(rs.is_withdrawn(), "the replaced key is withdrawn");
        assert!(!es.is_withdrawn(), "an unchanged key is not");
        assert!(Arc::ptr_eq(&replaced.by_kid["test-es256"], &es));
        assert_ne!(replaced.by_kid["test-rs256"].thumbprint(), rs.thumbprint());
        assert!(!replaced.by_kid["test-rs256"].is_withdrawn());
    }
}
