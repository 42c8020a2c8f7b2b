//! Cost of the validation path per algorithm: our full check (size, strict
//! header read, issuer, algorithm, key by kid, signature, claims) next to a
//! bare `jsonwebtoken::decode` of the same token as the in-run baseline, and
//! the cost of refusing cheap garbage (which must not reach crypto).

use std::path::{Path, PathBuf};

use criterion::{criterion_group, criterion_main, Criterion};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde_json::json;

fn fixture(n: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(n)
}

fn bench(c: &mut Criterion) {
    gatehouse::auth::jwt::install_crypto_and_self_test().expect("crypto");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg_path = dir.path().join("bench.yaml");
    std::fs::write(
        &cfg_path,
        format!(
            "listeners: [{{ address: 127.0.0.1:0 }}]\nissuers:\n  - issuer: https://issuer.test\n    audiences: [app]\n    algorithms: [RS256, ES256, EdDSA, HS256]\n    jwks: {{ file: {} }}\n    hmac_secret: {{ file: {} }}\nroutes:\n  - backends: [http://127.0.0.1:9]\n",
            fixture("jwks.json").display(),
            fixture("hs256.secret").display()
        ),
    )
    .expect("write config");
    let loaded = gatehouse::config::load(&cfg_path).expect("config");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let verifier = rt
        .block_on(gatehouse::auth::Verifier::from_config(&loaded))
        .expect("verifier");

    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({"iss": "https://issuer.test", "aud": "app", "sub": "bench-user", "iat": now,
                        "exp": now + 3600, "jti": "0123456789abcdef", "sid": "session-1",
                        "email": "bench@example.test", "scope": "openid profile"});
    let read = |n: &str| std::fs::read(fixture(n)).expect("fixture");
    let hs_secret = String::from_utf8(read("hs256.secret"))
        .expect("utf8")
        .trim()
        .to_owned();
    let jwks: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&read("jwks.json")).expect("jwks");
    let cases = [
        (
            Algorithm::RS256,
            "test-rs256",
            EncodingKey::from_rsa_pem(&read("rs256.key.pem")).expect("k"),
        ),
        (
            Algorithm::ES256,
            "test-es256",
            EncodingKey::from_ec_pem(&read("es256.key.pem")).expect("k"),
        ),
        (
            Algorithm::EdDSA,
            "test-eddsa",
            EncodingKey::from_ed_pem(&read("eddsa.key.pem")).expect("k"),
        ),
        (
            Algorithm::HS256,
            "",
            EncodingKey::from_secret(hs_secret.as_bytes()),
        ),
    ];

    let mut g = c.benchmark_group("validate");
    for (alg, kid, key) in &cases {
        let mut h = Header::new(*alg);
        if !kid.is_empty() {
            h.kid = Some((*kid).to_owned());
        }
        let token = jsonwebtoken::encode(&h, &claims, key).expect("mint");
        assert!(verifier.verify_with_known_keys(&token).is_ok());
        g.bench_function(format!("gatehouse/{alg:?}"), |b| {
            b.iter(|| verifier.verify_with_known_keys(std::hint::black_box(&token)))
        });
        let dkey = if kid.is_empty() {
            DecodingKey::from_secret(hs_secret.as_bytes())
        } else {
            DecodingKey::from_jwk(jwks.find(kid).expect("kid")).expect("key")
        };
        let mut v = Validation::new(*alg);
        v.set_audience(&["app"]);
        v.set_issuer(&["https://issuer.test"]);
        g.bench_function(format!("jsonwebtoken-decode/{alg:?}"), |b| {
            b.iter(|| {
                jsonwebtoken::decode::<serde_json::Value>(std::hint::black_box(&token), &dkey, &v)
            })
        });
    }
    // The verified-token cache: a repeated token (hit) against a new one
    // each time (miss = full verification + insert), both through the
    // async entry point the gateway uses, next to the cost of that entry
    // point itself.
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("test-rs256".to_owned());
    let rs_key = EncodingKey::from_rsa_pem(&read("rs256.key.pem")).expect("k");
    let repeated = jsonwebtoken::encode(&h, &claims, &rs_key).expect("mint");
    rt.block_on(verifier.verify(&repeated)).expect("valid");
    g.bench_function("cache/empty-block_on", |b| b.iter(|| rt.block_on(async {})));
    // The same token again: found in the per-thread memo by comparing
    // bytes (what a keep-alive client sending its token each time costs).
    g.bench_function("cache/hit/RS256", |b| {
        b.iter(|| rt.block_on(verifier.verify(std::hint::black_box(&repeated))))
    });
    // 4,096 tokens in rotation: more than the memo's slots, so most are
    // found in the shared cache (SHA-256 of the token + lookup).
    let many: Vec<String> = (0..4096)
        .map(|i| {
            let mut c = claims.clone();
            c["jti"] = serde_json::json!(format!("rot-{i}"));
            jsonwebtoken::encode(&h, &c, &rs_key).expect("mint")
        })
        .collect();
    for t in &many {
        rt.block_on(verifier.verify(t)).expect("valid");
    }
    let mut i = 0usize;
    g.bench_function("cache/hit-shared/RS256", |b| {
        b.iter(|| {
            i = (i + 1) % many.len();
            rt.block_on(verifier.verify(std::hint::black_box(&many[i])))
        })
    });
    // A miss is a full verification (gatehouse/RS256 above) plus hashing
    // the token, a failed lookup and an insert: measured here with a new
    // key every time.
    let cache = gatehouse::auth::jwt::TokenCache::new(100_000, std::time::Duration::from_secs(300));
    let id = std::sync::Arc::new(verifier.verify_with_known_keys(&repeated).expect("valid"));
    let mut n: u64 = 0;
    g.bench_function("cache/miss-overhead/RS256", |b| {
        b.iter(|| {
            n += 1;
            let mut k = gatehouse::auth::jwt::TokenCache::key(std::hint::black_box(&repeated));
            k[..8].copy_from_slice(&n.to_le_bytes());
            if cache.get(&k).is_none() {
                cache.insert(
                    k,
                    gatehouse::auth::jwt::Cached {
                        identity: id.clone(),
                        verified_by: None,
                        until: i64::MAX,
                    },
                );
            }
        })
    });
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none"}"#),
        b64(claims.to_string().as_bytes())
    );
    g.bench_function("reject/alg-none", |b| {
        b.iter(|| verifier.verify_with_known_keys(std::hint::black_box(&none)))
    });
    let oversized = "A".repeat(10_000);
    g.bench_function("reject/oversized", |b| {
        b.iter(|| verifier.verify_with_known_keys(std::hint::black_box(&oversized)))
    });
    g.finish();
}

fn b64(v: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

criterion_group!(benches, bench);
criterion_main!(benches);
