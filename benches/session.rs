//! What a browser session costs on the request path next to a bearer token
//! (issue: at most 1.1× a bearer-token cache hit, same run). Each case is
//! the whole policy, `Proxy::decide` (canonical path and host, route,
//! credential, revocation set, `require`), plus what forwarding does only
//! for a session (its cookies removed from `Cookie`):
//!
//! - `bearer/cache-hit`: an RS256 token seen before (the per-thread memo);
//! - `session/hit`: a session cookie seen before (the same memo, keyed by
//!   the cookie text);
//! - `session/open`: 4,096 sessions in rotation, more than the memo holds:
//!   each is opened (AES-256-GCM) and its JSON read.

use std::hint::black_box;
use std::path::PathBuf;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use gatehouse::login::{Login, Sessions};
use gatehouse::proxy::{headers::ClientAddr, ConnInfo, Outcome, Proxy};
use gatehouse::revocation::Revocations;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn fixture(n: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(n)
}

fn request(extra: (&str, &str)) -> http::request::Parts {
    http::Request::get("/reports/weekly?x=1")
        .header("host", "app.example.com")
        .header("accept", "text/html,application/xhtml+xml,*/*;q=0.8")
        .header("sec-fetch-mode", "navigate")
        .header(extra.0, extra.1)
        .body(())
        .expect("request")
        .into_parts()
        .0
}

fn bench(c: &mut Criterion) {
    gatehouse::auth::jwt::install_crypto_and_self_test().expect("crypto");
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("session.key"), [b'k'; 32]).expect("key");
    std::fs::write(dir.path().join("client.secret"), "secret-0123456789").expect("secret");
    let cfg_path = dir.path().join("bench.yaml");
    std::fs::write(
        &cfg_path,
        format!(
            r#"
listeners: [{{ address: 127.0.0.1:0 }}]
issuers:
  - name: idp
    issuer: https://issuer.test
    audiences: [app]
    algorithms: [RS256]
    jwks: {{ file: {jwks} }}
sessions:
  keys: [{{ file: session.key }}]
routes:
  - backends: [http://127.0.0.1:9]
    login:
      issuer: idp
      client_id: web
      client_secret: {{ file: client.secret }}
      authorization_endpoint: https://issuer.test/auth
      token_endpoint: https://issuer.test/token
    identity_headers:
      - {{ claim: sub, header: X-Auth-Subject }}
      - {{ claim: email, header: X-Auth-Email }}
"#,
            jwks = fixture("jwks.json").display()
        ),
    )
    .expect("write config");
    let loaded = gatehouse::config::load(&cfg_path).expect("config");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    let revocations = Revocations::fixed(&[], true);
    let proxy = rt
        .block_on(Proxy::from_config(&loaded, Some(revocations)))
        .expect("proxy");
    let conn = ConnInfo {
        peer: "203.0.113.7:50000".parse().expect("addr"),
        client: ClientAddr::new("203.0.113.7".parse().expect("ip")),
        tls: true,
        unix_socket: false,
        cert_names: None,
        listener: 0,
        hold: None,
    };

    // A bearer token and session cookies carrying the same identity.
    let now = jsonwebtoken::get_current_timestamp();
    let claims = json!({"iss": "https://issuer.test", "aud": "app", "sub": "bench-user", "iat": now,
                        "exp": now + 3600, "jti": "0123456789abcdef", "sid": "session-1",
                        "email": "bench@example.test", "scope": "openid profile"});
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("test-rs256".to_owned());
    let key = EncodingKey::from_rsa_pem(&std::fs::read(fixture("rs256.key.pem")).expect("key"))
        .expect("key");
    let token = jsonwebtoken::encode(&h, &claims, &key).expect("mint");
    let sessions = Arc::new(
        Sessions::from_config(
            &loaded.config.sessions.as_ref().expect("sessions").value,
            &loaded,
        )
        .expect("sessions"),
    );
    let login = Login::from_config(
        loaded.config.routes[0].value.login.as_ref().expect("login"),
        &loaded,
        sessions,
    )
    .expect("login");
    let cookie_of = |sid: &str| {
        let mut cl = serde_json::Map::new();
        cl.insert("email".into(), json!("bench@example.test"));
        cl.insert("scope".into(), json!("openid profile"));
        let lines = login
            .seal_for("bench-user", Some(sid), cl, &token)
            .expect("seal");
        let set = lines[0].to_str().expect("ascii");
        format!("theme=dark; {}", set.split(';').next().expect("pair"))
    };

    // The policy, then the one thing forwarding does differently for a
    // session (its cookie taken out of `Cookie`, which forwarding does to
    // every request's headers in place; the copy it works on here is made
    // outside the timed part).
    let decide_and_strip = |parts: &http::request::Parts, headers: &mut http::HeaderMap| {
        rt.block_on(async {
            let mut out = Outcome::default();
            let d = proxy.decide(parts, &conn, &mut out).await;
            let ok = d.is_ok();
            drop(d);
            gatehouse::login::cookie::strip_ours(headers);
            ok
        })
    };
    let decide = |parts: &http::request::Parts| decide_and_strip(parts, &mut parts.headers.clone());

    let bearer = request(("authorization", &format!("Bearer {token}")));
    assert!(decide(&bearer), "the bearer token is accepted");
    let session = request(("cookie", &cookie_of("session-1")));
    assert!(decide(&session), "the session is accepted");
    let many: Vec<http::request::Parts> = (0..4096)
        .map(|i| request(("cookie", &cookie_of(&format!("s-{i}")))))
        .collect();

    let mut g = c.benchmark_group("credential");
    for (name, parts) in [("bearer/cache-hit", &bearer), ("session/hit", &session)] {
        g.bench_function(name, |b| {
            b.iter_batched_ref(
                || parts.headers.clone(),
                |h| decide_and_strip(black_box(parts), h),
                BatchSize::SmallInput,
            )
        });
    }
    let mut i = 0usize;
    g.bench_function("session/open", |b| {
        b.iter_batched_ref(
            || {
                i = (i + 1) % many.len();
                (i, many[i].headers.clone())
            },
            |(i, h)| decide_and_strip(black_box(&many[*i]), h),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
