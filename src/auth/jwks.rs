//! Key sets: parsing a JWKS, keeping the last good one, refreshing it from a
//! file or URL without ever blocking a request on the network except when a
//! token names a `kid` we have never seen (and then at most once per
//! `min_refresh_interval`, shared by every waiting request).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};

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

pub struct Key {
    pub kind: KeyKind,
    /// The JWK's own `alg`, when it pins one.
    pub alg: Option<Algorithm>,
    pub decoding: DecodingKey,
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
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&Key> {
        match kid {
            Some(kid) => self.by_kid.get(kid).map(|k| &**k),
            None => {
                let mut fitting = self.unnamed.iter().filter(|k| k.kind.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Some(k),
                    _ => None,
                }
            }
        }
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

fn parse_key(raw: serde_json::Value) -> Result<(Option<String>, Key), String> {
    let jwk: Jwk = serde_json::from_value(raw).map_err(|e| format!("unreadable JWK: {e}"))?;
    if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
        return Err("not a signature key (use != sig)".into());
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
    let decoding = DecodingKey::from_jwk(&jwk).map_err(|e| format!("bad key material: {e}"))?;
    Ok((
        jwk.common.key_id,
        Key {
            kind,
            alg,
            decoding,
        },
    ))
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
}

use crate::httpclient::HttpClient as JwksClient;

impl Origin {
    fn describe(&self) -> String {
        match self {
            Origin::File(p) => p.display().to_string(),
            Origin::Url { uri, .. } => uri.to_string(),
        }
    }

    async fn fetch(&self) -> Result<Vec<u8>, String> {
        match self {
            Origin::File(p) => tokio::fs::read(p).await.map_err(|e| e.to_string()),
            Origin::Url {
                uri,
                client,
                timeout,
            } => {
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
                    let body = Limited::new(resp.into_body(), MAX_JWKS_BYTES)
                        .collect()
                        .await
                        .map_err(|e| format!("reading body: {e}"))?;
                    Ok(body.to_bytes().to_vec())
                };
                tokio::time::timeout(*timeout, fut)
                    .await
                    .map_err(|_| format!("no answer within {timeout:?}"))?
            }
        }
    }
}

/// One issuer's keys: the last good set, swapped atomically on refresh.
pub struct KeySource {
    issuer: Arc<str>,
    origin: Origin,
    current: ArcSwap<KeySet>,
    /// False while the latest fetch failed: an unknown `kid` then may be a
    /// key we could not learn about, which the issuer's policy can answer
    /// with 503 instead of 401.
    healthy: AtomicBool,
    /// Bumped whenever a refresh drops or replaces a `kid`: tokens the
    /// verified-token cache remembers from an older generation are checked
    /// again, so a key withdrawn from the JWKS stops being honoured at the
    /// next refresh, not at the cache's TTL.
    generation: AtomicU64,
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
        let source = Arc::new(KeySource {
            issuer,
            origin,
            current: ArcSwap::from_pointee(KeySet::default()),
            healthy: AtomicBool::new(false),
            generation: AtomicU64::new(0),
            refresh_interval: cfg.refresh_interval,
            min_refresh_interval: cfg.min_refresh_interval,
            last_attempt: tokio::sync::Mutex::new(None),
        });
        let first = source.refresh_now().await;
        if let Err(e) = first {
            if matches!(source.origin, Origin::File(_)) {
                anyhow::bail!("jwks {}: {e}", source.origin.describe());
            }
            tracing::error!(issuer = %source.issuer, source = %source.origin.describe(), error = %e,
                "JWKS not available at start; tokens of this issuer are refused until it is");
        }
        Ok(source)
    }

    pub fn keys(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.current.load()
    }

    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
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
        let result = self.origin.fetch().await.and_then(|b| parse_jwks(&b));
        let ok = matches!(&result, Ok((set, _)) if !set.is_empty());
        crate::admin::metrics::metrics()
            .jwks_refreshes
            .get_or_create(&crate::admin::metrics::IssuerResult {
                issuer: self.issuer.to_string(),
                result: if ok { "ok" } else { "error" },
            })
            .inc();
        match result {
            Ok((set, skipped)) if !set.is_empty() => {
                for s in &skipped {
                    tracing::warn!(issuer = %self.issuer, "JWKS {s}");
                }
                let n = set.len();
                let old = self.current.load();
                let withdrawn = old.by_kid.keys().any(|k| !set.by_kid.contains_key(k))
                    || old.unnamed.len() > set.unnamed.len();
                if withdrawn {
                    self.generation.fetch_add(1, Ordering::Release);
                }
                self.current.store(Arc::new(set));
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
