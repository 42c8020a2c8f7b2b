//! Arbitrary bytes as a bearer token through the whole no-I/O validation
//! path (size, shape, header, issuer, algorithm, key, signature, claims)
//! with the test fixtures' keys: must never panic, and must never accept.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn verifier() -> &'static gatehouse::auth::Verifier {
    static V: OnceLock<gatehouse::auth::Verifier> = OnceLock::new();
    V.get_or_init(|| {
        gatehouse::auth::jwt::install_crypto_and_self_test().expect("crypto");
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let dir = std::env::temp_dir().join(format!("gatehouse-fuzz-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let cfg = dir.join("fuzz.yaml");
        std::fs::write(
            &cfg,
            format!(
                "listeners: [{{ address: 127.0.0.1:0 }}]\nissuers:\n  - issuer: https://issuer.test\n    audiences: [app]\n    algorithms: [RS256, ES256, EdDSA, HS256]\n    jwks: {{ file: {} }}\n    hmac_secret: {{ file: {} }}\n  - issuer: https://other.test\n    audiences: [app]\n    algorithms: [RS256]\n    jwks: {{ file: {} }}\nroutes:\n  - backends: [http://127.0.0.1:9]\n",
                root.join("tests/fixtures/jwks.json").display(),
                root.join("tests/fixtures/hs256.secret").display(),
                root.join("tests/fixtures/jwks.json").display(),
            ),
        )
        .expect("config");
        let loaded = gatehouse::config::load(&cfg).expect("load");
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
        rt.block_on(gatehouse::auth::Verifier::from_config(&loaded)).expect("verifier")
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(token) = std::str::from_utf8(data) {
        // Random bytes cannot carry a valid signature of the fixtures' keys.
        assert!(verifier().verify_with_known_keys(token).is_err());
    }
});
