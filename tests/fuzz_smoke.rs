//! The short, deterministic version of the fuzz targets in `fuzz/` that
//! runs with every `cargo test`: the same properties, over thousands of
//! mutations of real inputs (valid tokens, the shipped configs, paths,
//! feed responses). The long coverage-guided runs are `fuzz/run.sh`.

use gatehouse_test_support::*;
use jsonwebtoken::Algorithm;

/// xorshift64*: a fixed seed, so a failure reproduces.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// One to four edits: flip a bit, set a byte to something
    /// interesting, insert, delete, duplicate a run, or splice in part of
    /// another input.
    fn mutate(&mut self, input: &[u8], others: &[Vec<u8>]) -> Vec<u8> {
        const INTERESTING: &[u8] = b"\x00\xff.=/-_%;\\\"{}[],:\n\r\t 0{}eE+";
        let mut v = input.to_vec();
        for _ in 0..1 + self.below(4) {
            let at = self.below(v.len() + 1);
            match self.below(6) {
                0 if !v.is_empty() => {
                    let i = at.min(v.len() - 1);
                    v[i] ^= 1 << self.below(8);
                }
                1 if !v.is_empty() => {
                    let i = at.min(v.len() - 1);
                    v[i] = INTERESTING[self.below(INTERESTING.len())];
                }
                2 => v.insert(at, INTERESTING[self.below(INTERESTING.len())]),
                3 if !v.is_empty() => {
                    let len = 1 + self.below(16.min(v.len() - at.min(v.len() - 1)));
                    let i = at.min(v.len() - 1);
                    v.drain(i..(i + len).min(v.len()));
                }
                4 if !v.is_empty() => {
                    let i = at.min(v.len() - 1);
                    let len = 1 + self.below(32);
                    let run: Vec<u8> = v[i..(i + len).min(v.len())].to_vec();
                    v.splice(i..i, run);
                }
                _ => {
                    let o = &others[self.below(others.len())];
                    if !o.is_empty() {
                        let from = self.below(o.len());
                        let len = 1 + self.below(64);
                        let part = o[from..(from + len).min(o.len())].to_vec();
                        v.splice(at..at, part);
                    }
                }
            }
        }
        v
    }
}

const ROUNDS: usize = 4000;

#[tokio::test]
async fn mutated_tokens_are_never_accepted_and_never_panic() {
    crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gatehouse.yaml");
    std::fs::write(
        &path,
        standard_config("127.0.0.1:9".parse().expect("addr"), &jwks_file()),
    )
    .expect("write");
    let loaded = gatehouse::config::load(&path).expect("config");
    let verifier = gatehouse::auth::Verifier::from_config(&loaded)
        .await
        .expect("verifier");
    let seeds: Vec<Vec<u8>> = [
        Algorithm::RS256,
        Algorithm::ES256,
        Algorithm::EdDSA,
        Algorithm::HS256,
    ]
    .iter()
    .map(|a| mint(*a, "fuzz").into_bytes())
    .collect();
    for s in &seeds {
        let t = std::str::from_utf8(s).expect("utf8");
        assert!(
            verifier.verify_with_known_keys(t).is_ok(),
            "seed must verify"
        );
    }
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut tried = 0;
    for i in 0..ROUNDS {
        let seed = &seeds[i % seeds.len()];
        let m = rng.mutate(seed, &seeds);
        if &m == seed {
            continue;
        }
        if let Ok(t) = std::str::from_utf8(&m) {
            tried += 1;
            assert!(
                verifier.verify_with_known_keys(t).is_err(),
                "a mutated token was accepted: {t}"
            );
        }
    }
    assert!(tried > ROUNDS / 2);
}

#[test]
fn mutated_configs_never_panic() {
    let root = env!("CARGO_MANIFEST_DIR");
    let seeds: Vec<Vec<u8>> = [
        "config/gatehouse.yaml",
        "config/production.example.yaml",
        "config/authority-redis.example.yaml",
    ]
    .iter()
    .map(|p| std::fs::read(format!("{root}/{p}")).expect("config"))
    .collect();
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    for i in 0..ROUNDS {
        let m = rng.mutate(&seeds[i % seeds.len()], &seeds);
        if let Ok(text) = std::str::from_utf8(&m) {
            if let Ok(t) = gatehouse::config::interpolate_env(text, |_| Some("x".to_owned())) {
                let _ = gatehouse::config::parse(&t);
            }
        }
    }
}

#[test]
fn mutated_paths_and_hosts_canonicalise_to_fixed_points_or_are_refused() {
    let seeds: Vec<Vec<u8>> = [
        "/public/../admin",
        "/a/%2e%2e/b",
        "//x//y/./z",
        "/a;jsessionid=1/..;/b",
        "/%2F%5c%00",
        "/reports/q?x=1",
        "/%61dmin;v=1/x%7e%c3%a9",
        "/admin%2e/x%20",
        "/100%25off/%25%41",
        "Admin.Test.:0443",
        "[0:0::1]:80",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let mut rng = Rng(0x94D0_49BB_1331_11EB);
    for i in 0..ROUNDS * 5 {
        let m = rng.mutate(&seeds[i % seeds.len()], &seeds);
        let Ok(p) = std::str::from_utf8(&m) else {
            continue;
        };
        let host = p.trim_start_matches('/');
        if let Some(v) = gatehouse::proxy::canonical::invariant_violation(p, host) {
            panic!("{v}");
        }
    }
}

#[test]
fn mutated_feed_responses_never_panic_and_apply_only_when_complete() {
    let exp = now() + 3600;
    let feed = format!(
        "{{\"type\":\"snapshot\",\"cursor\":\"e-1\"}}\n{{\"op\":\"put\",\"id\":1,\"issuer\":\"https://i\",\"kind\":\"jti\",\"value\":\"a\",\"reason\":\"logout\",\"created_at\":1,\"expires_at\":{exp}}}\n{{\"type\":\"end\",\"cursor\":\"e-1\"}}\n"
    );
    let changes = format!(
        "{{\"type\":\"changes\",\"cursor\":\"e-2\"}}\n{{\"op\":\"del\",\"id\":1,\"issuer\":\"https://i\",\"kind\":\"sub\",\"value\":\"a\",\"before\":5,\"reason\":\"logout\",\"created_at\":1,\"expires_at\":{exp}}}\n{{\"type\":\"end\",\"cursor\":\"e-2\"}}\n"
    );
    let seeds = vec![feed.into_bytes(), changes.into_bytes()];
    let mut rng = Rng(0xBF58_476D_1CE4_E5B9);
    for i in 0..ROUNDS {
        let m = rng.mutate(&seeds[i % seeds.len()], &seeds);
        let mut p = gatehouse::revocation::feed::FeedParser::new();
        let split = 1 + rng.below(64);
        let mut ok = true;
        for chunk in m.chunks(split) {
            if p.push(chunk).is_err() {
                ok = false;
                break;
            }
        }
        if ok {
            // Without its end line a response yields nothing.
            let complete = m.ends_with(b"\n")
                && std::str::from_utf8(&m)
                    .map(|t| {
                        t.lines()
                            .rfind(|l| !l.trim().is_empty())
                            .is_some_and(|l| l.contains("\"end\""))
                    })
                    .unwrap_or(false);
            let r = p.finish();
            if !complete {
                assert!(
                    r.is_err(),
                    "an incomplete feed was accepted: {:?}",
                    String::from_utf8_lossy(&m)
                );
            }
        }
    }
}

#[test]
fn mutated_wait_modes_and_gateway_names_never_panic_and_stay_in_bounds() {
    let t = gatehouse::config::GatewayTracking::default();
    let seeds: Vec<Vec<u8>> = vec![
        b"wait=applied&timeout=2s".to_vec(),
        b"applied; timeout=500ms".to_vec(),
        b"wait=applied".to_vec(),
        b"web-1.example:8443".to_vec(),
    ];
    let mut rng = Rng(0x94D0_49BB_1331_11EB);
    for i in 0..ROUNDS {
        let m = rng.mutate(&seeds[i % seeds.len()], &seeds);
        let text = String::from_utf8_lossy(&m);
        for r in [
            gatehouse::authority::api::parse_wait(&text, &[], &t),
            gatehouse::authority::api::parse_wait("", &[&m], &t),
        ] {
            if let Ok(Some(d)) = r {
                assert!(!d.is_zero() && d <= t.max_wait, "{text:?} -> {d:?}");
            }
        }
        if gatehouse::config::valid_gateway_name(&text) {
            assert!(http::HeaderValue::from_str(&text).is_ok(), "{text:?}");
        }
    }
}

#[test]
fn mutated_session_cookies_never_open_never_panic_and_never_reach_the_backend() {
    use gatehouse::login::cookie::{self, Purpose, Sealer};
    let sealer = Sealer::new(&[vec![7u8; 32], vec![9u8; 40]]).expect("sealer");
    let genuine = sealer.seal(Purpose::Session, br#"{"v":1}"#).expect("seal");
    let seeds: Vec<Vec<u8>> = vec![
        format!("{}={genuine}; theme=dark", cookie::SESSION).into_bytes(),
        format!("2.{genuine}").into_bytes(),
        format!("a=1; {}-1=x; {}=3.y", cookie::SESSION, cookie::SESSION).into_bytes(),
        format!("{}abcdefghijkl=v", cookie::LOGIN_PREFIX).into_bytes(),
    ];
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for i in 0..ROUNDS {
        let m = rng.mutate(&seeds[i % seeds.len()], &seeds);
        let text = String::from_utf8_lossy(&m);
        // A mutated sealed value opens only if it is the genuine one.
        if let Some(p) = sealer.open(Purpose::Session, &text) {
            assert_eq!(text, genuine, "a made-up value opened: {p:?}");
        }
        assert!(sealer.open(Purpose::Login, &genuine).is_none());
        let Ok(v) = http::HeaderValue::from_bytes(&m) else {
            continue;
        };
        let mut h = http::HeaderMap::new();
        h.append(http::header::COOKIE, v);
        if let Some(s) = cookie::session_value(&h) {
            assert!(s.len() <= m.len(), "{text:?}");
        }
        assert!(cookie::session_chunks(&h) <= cookie::MAX_CHUNKS);
        cookie::strip_ours(&mut h);
        for f in h.get_all(http::header::COOKIE) {
            let f = f.to_str().unwrap_or("");
            assert!(!f.contains("__Host-gatehouse-"), "{text:?} -> {f:?}");
        }
    }
}

#[test]
fn mutated_backend_keep_alive_fields_never_panic_and_name_a_timeout_they_hold() {
    let seeds: Vec<Vec<u8>> = [
        "timeout=5",
        "timeout=5, max=1000",
        "Max=100,Timeout = \"15\"",
        "timeout=9\ntimeout=4",
        "timeout=999999999",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let mut rng = Rng(0x5851_F42D_4C95_7F2D);
    for i in 0..ROUNDS * 5 {
        let m = rng.mutate(&seeds[i % seeds.len()], &seeds);
        let mut h = http::HeaderMap::new();
        for line in m.split(|b| *b == b'\n') {
            if let Ok(v) = http::HeaderValue::from_bytes(line) {
                h.append("keep-alive", v);
            }
        }
        if let Some(t) = gatehouse::proxy::headers::keep_alive_timeout(&h) {
            assert!(t.as_secs() <= 999_999_999, "{m:?}");
            let named = h.get_all("keep-alive").iter().any(|v| {
                v.as_bytes()
                    .to_ascii_lowercase()
                    .windows(7)
                    .any(|w| w == b"timeout")
            });
            assert!(named, "{m:?}");
        }
    }
}

#[test]
fn mutated_auth_server_heads_are_taken_whole_without_a_body_or_refused() {
    let seeds: Vec<Vec<u8>> = [
        "GET /_gatehouse HTTP/1.1\r\nHost: app.test\r\nX-Original-URI: /a?b=1\r\nX-Original-Method: GET\r\nAuthorization: Bearer a.b.c\r\n\r\n",
        "GET /auth HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-Method: POST\r\nX-Forwarded-Uri: /x\r\nX-Forwarded-Host: app\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
        "POST /ext_authz/orders HTTP/1.1\r\nHost: app\r\ncontent-length: 0\r\nConnection: close\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
        "POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        "GET / HTTP/1.0\n\n",
        "HEAD /_gatehouse HTTP/1.1\r\nHost: a\r\nConnection: keep-alive, close\r\n\r\n",
        "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect();
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    let mut whole = 0;
    for i in 0..ROUNDS * 10 {
        let m = rng.mutate(&seeds[i % seeds.len()], &seeds);
        if let Some(v) = gatehouse::head_only::invariant_violation(&m) {
            panic!("{v}: {:?}", String::from_utf8_lossy(&m));
        }
        let mut b = bytes::BytesMut::from(&m[..]);
        if matches!(
            gatehouse::head_only::parse_head(&mut b, 8192, 24),
            gatehouse::head_only::Parsed::Complete { .. }
        ) {
            whole += 1;
        }
    }
    // The mutations must reach the accepting side, not only the refusals.
    assert!(whole > ROUNDS, "only {whole} mutated heads were whole");
}
