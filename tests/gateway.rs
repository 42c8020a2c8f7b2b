//! The gateway end to end: real TLS, real backends, real tokens.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use std::net::SocketAddr;

use gatehouse_test_support::*;
use http::StatusCode;
use jsonwebtoken::Algorithm;
use serde_json::json;

const ALGS: [Algorithm; 4] = [
    Algorithm::RS256,
    Algorithm::ES256,
    Algorithm::EdDSA,
    Algorithm::HS256,
];

#[tokio::test]
async fn valid_tokens_of_every_algorithm_reach_the_backend_with_identity_over_h1_and_h2() {
    let backend = Backend::start().await;
    let (gw, _dir) = start_gateway(&standard_config(backend.addr, &jwks_file())).await;
    let tls = gw.addrs()[0];
    for proto in [Proto::TlsH1, Proto::TlsH2] {
        for alg in ALGS {
            let sub = format!("user-{alg:?}");
            let token = mint(alg, &sub);
            let a = send(
                tls,
                proto,
                "localhost",
                get(proto, "localhost", "/app/page?x=1", Some(&token), &[]),
            )
            .await;
            assert_eq!(
                a.status,
                StatusCode::OK,
                "{alg:?} over {proto:?}: {:?}",
                a.body
            );
            let seen = backend.last();
            assert_eq!(seen.headers["x-auth-subject"], sub.as_str());
            assert_eq!(
                seen.headers["x-auth-email"],
                format!("{sub}@example.test").as_str()
            );
            assert_eq!(seen.headers["x-forwarded-proto"], "https");
            assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
            assert!(
                seen.headers.get("authorization").is_none(),
                "token is not passed on by default"
            );
            assert_eq!(seen.path, "/app/page");
        }
    }
    assert_eq!(backend.hits(), 8);
}

#[tokio::test]
async fn sni_picks_the_certificate_for_each_name() {
    let backend = Backend::start().await;
    let (gw, _dir) = start_gateway(&standard_config(backend.addr, &jwks_file())).await;
    let token = mint(Algorithm::RS256, "sni");
    // The client verifies the certificate against the name it sent, so a
    // 200 for both names proves each got its own certificate.
    for name in ["app.test", "other.test"] {
        let a = send(
            gw.addrs()[0],
            Proto::TlsH1,
            name,
            get(Proto::TlsH1, name, "/", Some(&token), &[]),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{name}");
    }
}

/// SNI picks the certificate, `Host` picks the route: when they disagree
/// (a host the connection's certificate does not serve) the request is
/// judged by neither and gets 421, over HTTP/1.1 and HTTP/2.
#[tokio::test]
async fn host_not_served_by_the_sni_certificate_is_misdirected() {
    let backend = Backend::start().await;
    let (gw, _dir) = start_gateway(&standard_config(backend.addr, &jwks_file())).await;
    let token = mint(Algorithm::RS256, "sni");
    for proto in [Proto::TlsH1, Proto::TlsH2] {
        let before = backend.hits();
        for (sni, host, token, want) in [
            // One certificate serves both names: connection reuse is fine.
            (
                "localhost",
                "app.test",
                Some(token.as_str()),
                StatusCode::OK,
            ),
            (
                "localhost",
                "localhost:443",
                Some(token.as_str()),
                StatusCode::OK,
            ),
            (
                "other.test",
                "localhost",
                Some(token.as_str()),
                StatusCode::MISDIRECTED_REQUEST,
            ),
            (
                "other.test",
                "localhost",
                None,
                StatusCode::MISDIRECTED_REQUEST,
            ),
            (
                "app.test",
                "other.test",
                Some(token.as_str()),
                StatusCode::MISDIRECTED_REQUEST,
            ),
            (
                "app.test",
                "unknown.test",
                None,
                StatusCode::MISDIRECTED_REQUEST,
            ),
        ] {
            let a = send(gw.addrs()[0], proto, sni, get(proto, host, "/", token, &[])).await;
            assert_eq!(a.status, want, "SNI {sni}, Host {host} over {proto:?}");
        }
        assert_eq!(
            backend.hits(),
            before + 2,
            "a misdirected request was forwarded"
        );
    }
}

#[tokio::test]
async fn client_cannot_spoof_identity_or_forwarding_headers_on_any_route() {
    let backend = Backend::start().await;
    let (gw, _dir) = start_gateway(&standard_config(backend.addr, &jwks_file())).await;
    let token = mint(Algorithm::RS256, "real-user");
    let spoof = [
        ("X-Auth-Subject", "admin"),
        ("x_auth_subject", "admin"),
        ("X_AUTH_EMAIL", "admin@example.test"),
        ("X-Forwarded-For", "10.9.9.9"),
        ("x_forwarded_for", "10.9.9.9"),
        ("Forwarded", "for=10.9.9.9"),
        ("X-Real-IP", "10.9.9.9"),
    ];
    // Protected route with a valid token: only our values arrive.
    let a = send(
        gw.addrs()[1],
        Proto::Plain,
        "localhost",
        get(Proto::Plain, "localhost", "/", Some(&token), &spoof),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let h = backend.last().headers;
    assert_eq!(
        h.get_all("x-auth-subject").iter().collect::<Vec<_>>(),
        vec!["real-user"]
    );
    assert!(h.get("x_auth_subject").is_none());
    assert_eq!(
        h.get_all("x-auth-email").iter().collect::<Vec<_>>(),
        vec!["real-user@example.test"]
    );
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert!(h.get("x_forwarded_for").is_none() && h.get("x-real-ip").is_none());
    assert_eq!(
        h["forwarded"],
        "for=127.0.0.1;proto=http;host=\"localhost\""
    );

    // Public path and anonymous optional route: nothing identity-like at all.
    for path in ["/public/x", "/health", "/guest/page"] {
        let a = send(
            gw.addrs()[1],
            Proto::Plain,
            "localhost",
            get(Proto::Plain, "localhost", path, None, &spoof),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        let h = backend.last().headers;
        for name in [
            "x-auth-subject",
            "x_auth_subject",
            "x-auth-email",
            "x_auth_email",
            "x_forwarded_for",
            "x-real-ip",
        ] {
            assert!(
                h.get(name).is_none(),
                "{name} reached the backend on {path}"
            );
        }
        assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    }
}

#[tokio::test]
async fn every_bad_token_gets_401_and_never_reaches_the_backend() {
    let backend = Backend::start().await;
    let (gw, _dir) = start_gateway(&standard_config(backend.addr, &jwks_file())).await;
    let n = now();
    let good = claims("victim");
    let with = |k: &str, v: serde_json::Value| {
        let mut c = good.clone();
        c.insert(k.into(), v);
        c
    };
    let valid = mint(Algorithm::RS256, "victim");
    let parts: Vec<&str> = valid.split('.').collect();
    let other = mint(Algorithm::RS256, "someone-else");
    let other_parts: Vec<&str> = other.split('.').collect();
    let rsa_pub = std::fs::read(fixture("rs256.pub.pem")).expect("pub key");
    let confused = jsonwebtoken::encode(
        &{
            let mut h = jsonwebtoken::Header::new(Algorithm::HS256);
            h.kid = Some("test-rs256".into());
            h
        },
        &good,
        &jsonwebtoken::EncodingKey::from_secret(&rsa_pub),
    )
    .expect("confused token");
    let rs_header = |extra: serde_json::Value| {
        let mut h = json!({"alg": "RS256", "typ": "JWT", "kid": "test-rs256"});
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            h[k] = v;
        }
        h
    };
    let cases: Vec<(&str, String)> = vec![
        (
            "expired",
            mint_with(Algorithm::RS256, &with("exp", json!(n - 120))),
        ),
        (
            "not yet valid",
            mint_with(Algorithm::RS256, &with("nbf", json!(n + 3600))),
        ),
        (
            "wrong audience",
            mint_with(Algorithm::RS256, &with("aud", json!("other-app"))),
        ),
        (
            "wrong issuer",
            mint_with(Algorithm::RS256, &with("iss", json!("https://evil.test"))),
        ),
        ("no exp", {
            let mut c = good.clone();
            c.remove("exp");
            mint_with(Algorithm::RS256, &c)
        }),
        (
            "exp as string",
            mint_with(
                Algorithm::RS256,
                &with("exp", json!(format!("{}", n + 600))),
            ),
        ),
        (
            "bad signature",
            format!("{}.{}.{}", parts[0], parts[1], &other_parts[2]),
        ),
        (
            "payload swapped",
            format!("{}.{}.{}", parts[0], other_parts[1], parts[2]),
        ),
        (
            "alg none",
            raw_token(
                &json!({"alg": "none", "typ": "JWT"}),
                &serde_json::Value::Object(good.clone()),
                "",
            ),
        ),
        (
            "alg None",
            raw_token(
                &json!({"alg": "None"}),
                &serde_json::Value::Object(good.clone()),
                "",
            ),
        ),
        (
            "alg NONE with sig",
            raw_token(
                &json!({"alg": "NONE"}),
                &serde_json::Value::Object(good.clone()),
                parts[2],
            ),
        ),
        ("RS/HS confusion", confused),
        (
            "unknown kid",
            raw_token(
                &rs_header(json!({"kid": "nope"})),
                &serde_json::Value::Object(good.clone()),
                parts[2],
            ),
        ),
        (
            "crit header",
            raw_token(
                &rs_header(json!({"crit": ["exp"]})),
                &serde_json::Value::Object(good.clone()),
                parts[2],
            ),
        ),
        (
            "jku header",
            raw_token(
                &rs_header(json!({"jku": "http://127.0.0.1:1/jwks"})),
                &serde_json::Value::Object(good.clone()),
                parts[2],
            ),
        ),
        (
            "jwk header",
            raw_token(
                &rs_header(json!({"jwk": {"kty": "oct", "k": "AAAA"}})),
                &serde_json::Value::Object(good.clone()),
                parts[2],
            ),
        ),
        (
            "x5u header",
            raw_token(
                &rs_header(json!({"x5u": "http://127.0.0.1:1/x"})),
                &serde_json::Value::Object(good.clone()),
                parts[2],
            ),
        ),
        ("JWE", format!("{}.a.b.c.d", parts[0])),
        ("garbage", "not-a-token".into()),
        (
            "oversized",
            format!("{}.{}.{}", parts[0], "A".repeat(9000), parts[2]),
        ),
    ];
    for proto in [Proto::TlsH1, Proto::TlsH2] {
        let before = backend.hits();
        for (name, token) in &cases {
            let a = send(
                gw.addrs()[0],
                proto,
                "localhost",
                get(proto, "localhost", "/", Some(token), &[]),
            )
            .await;
            assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{name} over {proto:?}");
            assert!(
                a.challenge()
                    .starts_with("Bearer realm=\"gatehouse\", error=\"invalid_token\""),
                "{name}: {}",
                a.challenge()
            );
            assert_eq!(a.json()["error"], "invalid_token", "{name}");
            assert!(
                !a.challenge().contains(&token[..20.min(token.len())]),
                "{name}: token echoed"
            );
        }
        let a = send(
            gw.addrs()[0],
            proto,
            "localhost",
            get(proto, "localhost", "/", None, &[]),
        )
        .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
        assert_eq!(a.challenge(), "Bearer realm=\"gatehouse\"");
        assert_eq!(
            backend.hits(),
            before,
            "a refused request reached the backend over {proto:?}"
        );
    }
}

#[tokio::test]
async fn public_paths_and_optional_routes() {
    let backend = Backend::start().await;
    let (gw, _dir) = start_gateway(&standard_config(backend.addr, &jwks_file())).await;
    let plain = gw.addrs()[1];
    let go = |path: &'static str, token: Option<String>| async move {
        send(
            plain,
            Proto::Plain,
            "localhost",
            get(Proto::Plain, "localhost", path, token.as_deref(), &[]),
        )
        .await
        .status
    };
    assert_eq!(go("/public/app.css", None).await, StatusCode::OK);
    assert_eq!(go("/health", None).await, StatusCode::OK);
    // Segment boundaries and traversal: none of these is public.
    assert_eq!(go("/healthz", None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(go("/public/../admin", None).await, StatusCode::UNAUTHORIZED);
    assert_eq!(
        go("/public/%2e%2e/admin", None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        go("/public/..;/admin", None).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        go("/public%2f..%2fadmin", None).await,
        StatusCode::BAD_REQUEST
    );
    // Optional route: anonymous is forwarded without identity, a valid token
    // adds identity, an invalid one is refused.
    assert_eq!(go("/guest/x", None).await, StatusCode::OK);
    assert!(backend.last().headers.get("x-auth-subject").is_none());
    assert_eq!(
        go("/guest/x", Some(mint(Algorithm::ES256, "guest-user"))).await,
        StatusCode::OK
    );
    assert_eq!(backend.last().headers["x-auth-subject"], "guest-user");
    let hits = backend.hits();
    let expired = mint_with(Algorithm::RS256, &{
        let mut c = claims("guest-user");
        c.insert("exp".into(), json!(now() - 100));
        c
    });
    assert_eq!(
        go("/guest/x", Some(expired)).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        go("/guest/x", Some("garbage".into())).await,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(backend.hits(), hits);
}

#[tokio::test]
async fn missing_scope_is_403_insufficient_scope() {
    let backend = Backend::start().await;
    let (gw, _dir) = start_gateway(&standard_config(backend.addr, &jwks_file())).await;
    let plain = gw.addrs()[1];
    let without = mint(Algorithm::RS256, "reader");
    let a = send(
        plain,
        Proto::Plain,
        "localhost",
        get(
            Proto::Plain,
            "localhost",
            "/reports/q1",
            Some(&without),
            &[],
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert!(
        a.challenge().contains("error=\"insufficient_scope\"")
            && a.challenge().contains("scope=\"reports.read\"")
    );
    let with = mint_with(Algorithm::RS256, &{
        let mut c = claims("reader");
        c.insert("scope".into(), json!("openid reports.read"));
        c
    });
    let a = send(
        plain,
        Proto::Plain,
        "localhost",
        get(Proto::Plain, "localhost", "/reports/q1", Some(&with), &[]),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn jwks_url_rotation_is_picked_up_on_an_unknown_kid_without_restart() {
    let backend = Backend::start().await;
    let jwks = JwksServer::start(std::fs::read(fixture("jwks.json")).expect("jwks")).await;
    let src = format!(
        "{{ url: \"http://{}/jwks\", min_refresh_interval: 200ms, refresh_interval: 1h }}",
        jwks.addr
    );
    let (gw, _dir) = start_gateway(&standard_config(backend.addr, &src)).await;
    let plain = gw.addrs()[1];
    let next_key = jsonwebtoken::EncodingKey::from_rsa_pem(
        &std::fs::read(fixture("rs256-next.key.pem")).expect("key"),
    )
    .expect("rsa");
    let mut h = jsonwebtoken::Header::new(Algorithm::RS256);
    h.kid = Some("test-rs256-next".into());
    let token = jsonwebtoken::encode(&h, &claims("rotated"), &next_key).expect("mint");
    let go = || {
        send(
            plain,
            Proto::Plain,
            "localhost",
            get(Proto::Plain, "localhost", "/", Some(&token), &[]),
        )
    };

    // Not published yet: refused, and the gateway asked the URL again (once
    // the start-up fetch is older than min_refresh_interval).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fetches = jwks.hits.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(go().await.status, StatusCode::UNAUTHORIZED);
    assert!(jwks.hits.load(std::sync::atomic::Ordering::SeqCst) > fetches);

    // Published: accepted once the rate limit allows the next fetch.
    jwks.publish(std::fs::read(fixture("jwks-next.json")).expect("jwks-next"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a = go().await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(backend.last().headers["x-auth-subject"], "rotated");

    // A burst of unknown kids cannot make the gateway hammer the URL.
    let before = jwks.hits.load(std::sync::atomic::Ordering::SeqCst);
    let bogus = raw_token(
        &json!({"alg": "RS256", "kid": "bogus"}),
        &serde_json::Value::Object(claims("x")),
        "c2ln",
    );
    for _ in 0..20 {
        let a = send(
            plain,
            Proto::Plain,
            "localhost",
            get(Proto::Plain, "localhost", "/", Some(&bogus), &[]),
        )
        .await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
    assert!(jwks.hits.load(std::sync::atomic::Ordering::SeqCst) - before <= 2);
}

#[tokio::test]
async fn jwks_url_down_keeps_last_good_keys_and_answers_unknown_kid_by_policy() {
    let backend = Backend::start().await;
    let jwks = JwksServer::start(std::fs::read(fixture("jwks.json")).expect("jwks")).await;
    let src = format!(
        "{{ url: \"http://{}/jwks\", min_refresh_interval: 100ms, refresh_interval: 200ms }}",
        jwks.addr
    );
    let cfg = standard_config(backend.addr, &src).replace(
        "    leeway: 0s\n",
        "    leeway: 0s\n    unknown_kid_when_keys_unavailable: unavailable\n",
    );
    let (gw, _dir) = start_gateway(&cfg).await;
    let plain = gw.addrs()[1];
    jwks.publish(b"<html>oops</html>".to_vec());
    tokio::time::sleep(Duration::from_millis(500)).await;
    let good = mint(Algorithm::RS256, "still-ok");
    let a = send(
        plain,
        Proto::Plain,
        "localhost",
        get(Proto::Plain, "localhost", "/", Some(&good), &[]),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "last good key set stays in use");
    let unknown = raw_token(
        &json!({"alg": "RS256", "kid": "rotated-away"}),
        &serde_json::Value::Object(claims("x")),
        "c2ln",
    );
    let a = send(
        plain,
        Proto::Plain,
        "localhost",
        get(Proto::Plain, "localhost", "/", Some(&unknown), &[]),
    )
    .await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(a.json()["error"], "temporarily_unavailable");
    assert!(a.headers.contains_key("retry-after"));
}

/// A reload (SIGHUP, a config or certificate change) while the key set's
/// URL fails: the new config starts from the keys last fetched from that
/// URL, as a failed scheduled refresh keeps them (a black-box round found
/// every token refused, and the gateway not ready, until the URL answered).
#[tokio::test]
async fn a_reload_while_the_jwks_url_fails_keeps_the_keys_last_fetched_from_it() {
    let backend = Backend::start().await;
    let jwks = JwksServer::start(std::fs::read(fixture("jwks.json")).expect("jwks")).await;
    let src = format!(
        "{{ url: \"http://{}/jwks\", min_refresh_interval: 100ms, refresh_interval: 1h }}",
        jwks.addr
    );
    let (gw, _dir) = start_gateway(&standard_config(backend.addr, &src)).await;
    let plain = gw.addrs()[1];
    let status = |token: String| async move { get_plain(plain, &token, "/", &[]).await.status };
    assert_eq!(
        status(mint(Algorithm::RS256, "before")).await,
        StatusCode::OK
    );
    assert_eq!(
        status(mint(Algorithm::ES256, "before")).await,
        StatusCode::OK
    );
    jwks.publish(b"<html>the identity provider is down</html>".to_vec());
    gw.reload().await.expect("reload");
    assert_eq!(
        status(mint(Algorithm::RS256, "after")).await,
        StatusCode::OK,
        "the reloaded config verifies with the keys last fetched"
    );
    // And the URL is still read: once it answers, its set is the one used.
    jwks.publish(std::fs::read(fixture("jwks-next.json")).expect("jwks-next"));
    gw.reload().await.expect("reload");
    assert_eq!(status(mint(Algorithm::RS256, "next")).await, StatusCode::OK);
    assert_eq!(
        status(mint(Algorithm::ES256, "rotated")).await,
        StatusCode::UNAUTHORIZED,
        "a key the URL no longer publishes verifies nothing"
    );
}

#[tokio::test]
async fn dead_backend_is_502_and_slow_backend_is_504() {
    let backend = Backend::start().await;
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        l.local_addr().expect("addr")
    };
    let cfg = standard_config(backend.addr, &jwks_file()).replace(
        "  - name: guest\n",
        &format!("  - name: dead\n    path_prefix: /dead\n    backends: [http://{dead}]\n  - name: guest\n"),
    );
    let (gw, _dir) = start_gateway(&cfg).await;
    let token = mint(Algorithm::RS256, "u");
    let a = send(
        gw.addrs()[1],
        Proto::Plain,
        "localhost",
        get(Proto::Plain, "localhost", "/dead/x", Some(&token), &[]),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_GATEWAY);
    assert_eq!(a.json()["error"], "bad_gateway");
    let a = send(
        gw.addrs()[0],
        Proto::TlsH2,
        "localhost",
        get(Proto::TlsH2, "localhost", "/slow", Some(&token), &[]),
    )
    .await;
    assert_eq!(a.status, StatusCode::GATEWAY_TIMEOUT);
    // The gateway is fine afterwards.
    let a = send(
        gw.addrs()[1],
        Proto::Plain,
        "localhost",
        get(Proto::Plain, "localhost", "/ok", Some(&token), &[]),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
}

#[tokio::test]
async fn backend_that_refuses_is_skipped_for_a_cooldown() {
    let backend = Backend::start().await;
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        l.local_addr().expect("addr")
    };
    let cfg = standard_config(backend.addr, &jwks_file()).replace(
        &format!("    backends: [http://{}]\n    public_paths", backend.addr),
        &format!(
            "    backends: [http://{dead}, http://{}]\n    backend_cooldown: 1h\n    public_paths",
            backend.addr
        ),
    );
    let (gw, _dir) = start_gateway(&cfg).await;
    let token = mint(Algorithm::RS256, "u");
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let a = send(
            gw.addrs()[1],
            Proto::Plain,
            "localhost",
            get(Proto::Plain, "localhost", "/", Some(&token), &[]),
        )
        .await;
        statuses.push(a.status.as_u16());
    }
    // At most the first request meets the dead backend; then it is skipped.
    assert!(
        statuses.iter().filter(|s| **s == 502).count() <= 1,
        "{statuses:?}"
    );
    assert!(statuses[1..].iter().all(|s| *s == 200), "{statuses:?}");
}

#[tokio::test]
async fn websocket_upgrade_passes_through_for_authenticated_requests() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let backend = Backend::start().await;
    let (gw, _dir) = start_gateway(&standard_config(backend.addr, &jwks_file())).await;
    let token = mint(Algorithm::RS256, "ws-user");
    let mut s = tokio::net::TcpStream::connect(gw.addrs()[1])
        .await
        .expect("connect");
    let req = format!(
        "GET /ws HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).await.expect("read head");
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert_eq!(backend.last().headers["x-auth-subject"], "ws-user");
    s.write_all(b"ping through the tunnel")
        .await
        .expect("write");
    let mut echo = [0u8; 23];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut echo))
        .await
        .expect("echo in time")
        .expect("echo");
    assert_eq!(&echo, b"ping through the tunnel");

    // Without a token there is no tunnel.
    let mut s = tokio::net::TcpStream::connect(gw.addrs()[1])
        .await
        .expect("connect");
    s.write_all(
        b"GET /ws HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .expect("write");
    let mut buf = vec![0u8; 12];
    s.read_exact(&mut buf).await.expect("read");
    assert_eq!(&buf, b"HTTP/1.1 401");
}

#[tokio::test]
async fn oversized_body_is_refused_with_413() {
    let backend = Backend::start().await;
    let (gw, _dir) = start_gateway(&standard_config(backend.addr, &jwks_file())).await;
    let token = mint(Algorithm::RS256, "u");
    use http_body_util::BodyExt;
    let req = http::Request::post("/big")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .body(ZeroBody::new(11 * 1024 * 1024).boxed())
        .expect("request");
    let a = send(gw.addrs()[1], Proto::Plain, "localhost", req).await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn a_cached_token_is_refused_once_it_expires() {
    let backend = Backend::start().await;
    let (gw, _dir) = start_gateway(&standard_config(backend.addr, &jwks_file())).await;
    let token = mint_with(Algorithm::RS256, &{
        let mut c = claims("short-lived");
        c.insert("exp".into(), json!(now() + 2));
        c
    });
    let go = || {
        send(
            gw.addrs()[1],
            Proto::Plain,
            "localhost",
            get(Proto::Plain, "localhost", "/", Some(&token), &[]),
        )
    };
    // Twice: the second is served from the verified-token cache.
    assert_eq!(go().await.status, StatusCode::OK);
    assert_eq!(go().await.status, StatusCode::OK);
    // Past `exp` whatever the sub-second phase of the clock.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    let a = go().await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.json()["error_description"], "token has expired");
}

#[tokio::test]
async fn several_issuers_are_told_apart_by_iss_and_routes_can_restrict_them() {
    let backend = Backend::start().await;
    let hs = fixture("hs256.secret").display().to_string();
    let yaml = format!(
        r#"
listeners:
  - address: 127.0.0.1:0
issuers:
  - name: main
    issuer: {ISS}
    audiences: [{AUD}]
    algorithms: [RS256]
    jwks: {{ file: {jwks} }}
  - name: batch
    issuer: https://batch.test
    audiences: [{AUD}]
    algorithms: [HS256]
    hmac_secret: {{ file: {hs} }}
routes:
  - name: any
    path_prefix: /
    backends: [http://{backend}]
  - name: main-only
    path_prefix: /main
    backends: [http://{backend}]
    issuers: [main]
logging: {{ level: warn }}
"#,
        jwks = fixture("jwks.json").display(),
        backend = backend.addr
    );
    let (gw, _dir) = start_gateway(&yaml).await;
    let go = |path: &'static str, token: String| {
        let addr = gw.addrs()[0];
        async move {
            send(
                addr,
                Proto::Plain,
                "localhost",
                get(Proto::Plain, "localhost", path, Some(&token), &[]),
            )
            .await
            .status
        }
    };
    let main_token = mint(Algorithm::RS256, "person");
    let batch_token = mint_with(Algorithm::HS256, &{
        let mut c = claims("job");
        c.insert("iss".into(), json!("https://batch.test"));
        c
    });
    // An RS256 token claiming the batch issuer: that issuer allows HS256 only.
    let cross = mint_with(Algorithm::RS256, &{
        let mut c = claims("job");
        c.insert("iss".into(), json!("https://batch.test"));
        c
    });
    let unknown_iss = mint_with(Algorithm::RS256, &{
        let mut c = claims("x");
        c.insert("iss".into(), json!("https://nobody.test"));
        c
    });
    assert_eq!(go("/x", main_token.clone()).await, StatusCode::OK);
    assert_eq!(go("/x", batch_token.clone()).await, StatusCode::OK);
    assert_eq!(backend.last().headers["x-auth-subject"], "job");
    assert_eq!(go("/x", cross).await, StatusCode::UNAUTHORIZED);
    assert_eq!(go("/x", unknown_iss).await, StatusCode::UNAUTHORIZED);
    assert_eq!(go("/main/y", main_token).await, StatusCode::OK);
    assert_eq!(go("/main/y", batch_token).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_key_withdrawn_from_the_jwks_is_not_honoured_from_the_token_cache() {
    let backend = Backend::start().await;
    let full = std::fs::read(fixture("jwks.json")).expect("jwks");
    let jwks = JwksServer::start(full.clone()).await;
    let src = format!(
        "{{ url: \"http://{}/jwks\", min_refresh_interval: 100ms, refresh_interval: 300ms }}",
        jwks.addr
    );
    let (gw, _dir) = start_gateway(&standard_config(backend.addr, &src)).await;
    let token = mint(Algorithm::RS256, "cached");
    let go = || {
        send(
            gw.addrs()[1],
            Proto::Plain,
            "localhost",
            get(Proto::Plain, "localhost", "/", Some(&token), &[]),
        )
    };
    assert_eq!(go().await.status, StatusCode::OK);
    assert_eq!(
        go().await.status,
        StatusCode::OK,
        "served from the verified-token cache"
    );
    // The identity provider withdraws the RSA key (say, it leaked).
    let mut doc: serde_json::Value = serde_json::from_slice(&full).expect("json");
    doc["keys"]
        .as_array_mut()
        .expect("keys")
        .retain(|k| k["kid"] != "test-rs256");
    jwks.publish(doc.to_string().into_bytes());
    let refused = within(Duration::from_secs(3), || async {
        go().await.status == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(
        refused.is_some(),
        "withdrawn key no longer honoured, cache or not"
    );
}

#[tokio::test]
async fn a_key_replaced_under_the_same_kid_is_not_honoured_from_the_token_cache() {
    let backend = Backend::start().await;
    let full = std::fs::read(fixture("jwks.json")).expect("jwks");
    let jwks = JwksServer::start(full.clone()).await;
    let src = format!(
        "{{ url: \"http://{}/jwks\", min_refresh_interval: 100ms, refresh_interval: 300ms }}",
        jwks.addr
    );
    let (gw, _dir) = start_gateway(&standard_config(backend.addr, &src)).await;
    let go = |token: String| {
        send(
            gw.addrs()[1],
            Proto::Plain,
            "localhost",
            get(Proto::Plain, "localhost", "/", Some(&token), &[]),
        )
    };
    let old_token = mint(Algorithm::RS256, "cached");
    assert_eq!(go(old_token.clone()).await.status, StatusCode::OK);
    assert_eq!(
        go(old_token.clone()).await.status,
        StatusCode::OK,
        "served from the verified-token cache"
    );
    // The identity provider replaces the key behind `test-rs256` (say, the
    // old one leaked) without changing the kid: same kid, new material.
    let mut doc: serde_json::Value = serde_json::from_slice(&full).expect("json");
    let next: serde_json::Value =
        serde_json::from_slice(&std::fs::read(fixture("jwks-next.json")).expect("next"))
            .expect("json");
    let new_n = next["keys"]
        .as_array()
        .and_then(|k| k.iter().find(|k| k["kid"] == "test-rs256-next"))
        .map(|k| k["n"].clone())
        .expect("next key");
    for k in doc["keys"].as_array_mut().expect("keys") {
        if k["kid"] == "test-rs256" {
            k["n"] = new_n.clone();
        }
    }
    jwks.publish(doc.to_string().into_bytes());
    let next_key = jsonwebtoken::EncodingKey::from_rsa_pem(
        &std::fs::read(fixture("rs256-next.key.pem")).expect("key"),
    )
    .expect("rsa");
    let mut h = jsonwebtoken::Header::new(Algorithm::RS256);
    h.kid = Some("test-rs256".into());
    let new_token = jsonwebtoken::encode(&h, &claims("renewed"), &next_key).expect("mint");
    // Once the scheduled refresh has the new key, the new key's tokens
    // pass, and the cached token of the replaced key does not.
    let refreshed = within(Duration::from_secs(3), || async {
        go(new_token.clone()).await.status == StatusCode::OK
    })
    .await;
    assert!(refreshed.is_some(), "the new key is used after a refresh");
    let a = go(old_token.clone()).await;
    assert_eq!(
        a.status,
        StatusCode::UNAUTHORIZED,
        "a token verified with the replaced key is verified again"
    );
    assert_eq!(a.json()["error_description"], "token signature is invalid");
    // A fresh token of the withdrawn key is refused the same way.
    assert_eq!(
        go(mint(Algorithm::RS256, "fresh")).await.status,
        StatusCode::UNAUTHORIZED
    );
    // Keys left as they were still pass.
    assert_eq!(
        go(mint(Algorithm::ES256, "unchanged")).await.status,
        StatusCode::OK
    );
}

/// A raw HTTP/1.1 backend: records each request line and the number of
/// connections it accepted; with `close_after_each`, it hangs up after
/// every response (without saying so), like a backend whose keep-alive
/// timeout is shorter than the gateway's.
async fn raw_backend(
    close_after_each: bool,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
    let (addr, conns, _, lines) = raw_backend_counting_closes(close_after_each).await;
    (addr, conns, lines)
}

/// [`raw_backend`], also counting the connections the gateway closed.
async fn raw_backend_counting_closes(
    close_after_each: bool,
) -> (
    SocketAddr,
    Arc<AtomicUsize>,
    Arc<AtomicUsize>,
    Arc<Mutex<Vec<String>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let conns = Arc::new(AtomicUsize::new(0));
    let closed = Arc::new(AtomicUsize::new(0));
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (c, cl, ls) = (conns.clone(), closed.clone(), lines.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let (ls, cl) = (ls.clone(), cl.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                        buf.drain(..end + 4);
                        let line = head.lines().next().unwrap_or("").to_owned();
                        ls.lock().expect("lock").push(line);
                        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await
                            .is_err()
                        {
                            return;
                        }
                        if close_after_each {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => {
                            cl.fetch_add(1, Ordering::SeqCst);
                            return;
                        }
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, conns, closed, lines)
}

#[tokio::test]
async fn backend_connections_are_reused_and_replaced_when_the_backend_closes_them() {
    let token = mint(Algorithm::RS256, "pool");
    // Keep-alive backend: twenty requests one after the other (each from a
    // new client connection, over HTTP/1.1 and HTTP/2) share one backend
    // connection, and every request line is origin-form.
    let (addr, conns, lines) = raw_backend(false).await;
    let (gw, _dir) = start_gateway(&standard_config(addr, &jwks_file())).await;
    for i in 0..20 {
        let (proto, at) = if i % 2 == 0 {
            (Proto::Plain, gw.addrs()[1])
        } else {
            (Proto::TlsH2, gw.addrs()[0])
        };
        let a = send(
            at,
            proto,
            "localhost",
            get(
                proto,
                "localhost",
                &format!("/r/{i}?q=1"),
                Some(&token),
                &[],
            ),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "request {i}");
        assert_eq!(&a.body[..], b"ok");
    }
    assert_eq!(conns.load(Ordering::SeqCst), 1, "one pooled connection");
    let lines = lines.lock().expect("lock").clone();
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(l, &format!("GET /r/{i}?q=1 HTTP/1.1"));
    }

    // A backend that closes every connection after answering: no request
    // fails for meeting a connection the backend already closed.
    let (addr, conns, _) = raw_backend(true).await;
    let (gw, _dir2) = start_gateway(&standard_config(addr, &jwks_file())).await;
    for i in 0..20 {
        let a = send(
            gw.addrs()[1],
            Proto::Plain,
            "localhost",
            get(Proto::Plain, "localhost", "/x", Some(&token), &[]),
        )
        .await;
        assert_eq!(a.status, StatusCode::OK, "request {i}");
        // Give the gateway the chance to see some closes only at reuse.
        if i % 3 == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    assert_eq!(conns.load(Ordering::SeqCst), 20);
}

#[tokio::test]
async fn a_reload_that_changes_the_rules_is_applied_to_tokens_already_cached() {
    let backend = Backend::start().await;
    let cfg = standard_config(backend.addr, &jwks_file());
    let (gw, dir) = start_gateway(&cfg).await;
    let token = mint(Algorithm::RS256, "cached");
    let go = || {
        send(
            gw.addrs()[1],
            Proto::Plain,
            "localhost",
            get(Proto::Plain, "localhost", "/", Some(&token), &[]),
        )
    };
    // Verified once, then served from the caches (per-thread and shared).
    for _ in 0..3 {
        assert_eq!(go().await.status, StatusCode::OK);
    }
    // The issuer no longer accepts our audience: the very next request is
    // judged by the new rules, not by what the old config cached.
    let changed = cfg.replace(&format!("audiences: [{AUD}]"), "audiences: [another-app]");
    assert_ne!(changed, cfg);
    std::fs::write(dir.path().join("gatehouse.yaml"), changed).expect("write");
    gw.reload().await.expect("reload");
    let a = go().await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    let hits = backend.hits();
    assert_eq!(go().await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(backend.hits(), hits);
}

/// The standard config with `backend_idle_timeout: 300ms`.
fn idle_after_300ms(backend: SocketAddr) -> String {
    standard_config(backend, &jwks_file()).replace(
        "    timeout: 1s\n",
        "    timeout: 1s\n    backend_idle_timeout: 300ms\n",
    )
}

/// Four requests at once, so the gateway opens several backend
/// connections; each must be answered 200.
/// A GET of `path` over plain HTTP to the gateway's listener at `at`,
/// with `token` and `extra` headers.
async fn get_plain(at: SocketAddr, token: &str, path: &str, extra: &[(&str, &str)]) -> Answer {
    send(
        at,
        Proto::Plain,
        "localhost",
        get(Proto::Plain, "localhost", path, Some(token), extra),
    )
    .await
}

async fn four_at_once(at: SocketAddr, token: &str) {
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let t = token.to_owned();
        burst.spawn(async move { get_plain(at, &t, "/b", &[]).await.status });
    }
    while let Some(status) = burst.join_next().await {
        assert_eq!(status.expect("request task"), StatusCode::OK);
    }
}

#[tokio::test]
async fn backend_connections_idle_past_the_timeout_are_closed_not_reused() {
    let token = mint(Algorithm::RS256, "idle");
    let (addr, conns, closed, _) = raw_backend_counting_closes(false).await;
    let (gw, _dir) = start_gateway(&idle_after_300ms(addr)).await;
    let at = gw.addrs()[1];
    let go = |path: &'static str| get_plain(at, &token, path, &[]);
    // A burst opens several backend connections...
    four_at_once(at, &token).await;
    let opened = conns.load(Ordering::SeqCst);
    assert!(opened >= 2, "the burst used {opened} connection(s)");
    // ...then a trickle keeps one warm: the others, idle past the timeout,
    // are closed rather than kept.
    for _ in 0..12 {
        assert_eq!(go("/t").await.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let open_now = || conns.load(Ordering::SeqCst) - closed.load(Ordering::SeqCst);
    assert_eq!(open_now(), 1, "opened {opened}, closed {closed:?}");
    // Everything idle past the timeout: the next request gets a new one.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let before = conns.load(Ordering::SeqCst);
    assert_eq!(go("/n").await.status, StatusCode::OK);
    assert_eq!(conns.load(Ordering::SeqCst), before + 1);
}

#[tokio::test]
async fn backend_connections_idle_past_the_timeout_are_closed_even_when_no_request_comes() {
    let token = mint(Algorithm::RS256, "idle-quiet");
    let (addr, conns, closed, _) = raw_backend_counting_closes(false).await;
    let (gw, _dir) = start_gateway(&idle_after_300ms(addr)).await;
    let at = gw.addrs()[1];
    four_at_once(at, &token).await;
    let opened = conns.load(Ordering::SeqCst);
    assert!(opened >= 1);
    // Then nothing: the backend must not see them held for longer than
    // the timeout says (they used to wait for the next request to be
    // noticed, minutes later).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(closed.load(Ordering::SeqCst), opened, "opened {opened}");
}

/// A keep-alive backend whose idle timer closes each connection just as
/// the next request arrives on it: it answers the first request of a
/// connection (with `keep_alive` as its `Keep-Alive` field, if any), and
/// reads the head of the second, then closes without a word. Returns its
/// address, the connections it accepted, and every request line it read.
async fn backend_closing_as_its_connections_are_reused(
    keep_alive: Option<&'static str>,
) -> (SocketAddr, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
    backend_failing_reused_connections(keep_alive, Duration::ZERO, b"").await
}

/// [`backend_closing_as_its_connections_are_reused`], which on a reused
/// connection waits `after` and writes `first` before it closes.
async fn backend_failing_reused_connections(
    keep_alive: Option<&'static str>,
    after: Duration,
    first: &'static [u8],
) -> (SocketAddr, Arc<AtomicUsize>, Arc<Mutex<Vec<String>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let conns = Arc::new(AtomicUsize::new(0));
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (c, ls) = (conns.clone(), lines.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            let ls = ls.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                for answered in 0.. {
                    let end = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end;
                        }
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.clear();
                    ls.lock()
                        .expect("lock")
                        .push(head.lines().next().unwrap_or("").to_owned());
                    if answered > 0 {
                        tokio::time::sleep(after).await;
                        let _ = s.write_all(first).await;
                        return;
                    }
                    let extra =
                        keep_alive.map_or(String::new(), |k| format!("keep-alive: {k}\r\n"));
                    let answer = format!("HTTP/1.1 200 OK\r\n{extra}content-length: 2\r\n\r\nok");
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, conns, lines)
}

#[tokio::test]
async fn a_get_sent_as_the_backend_closes_its_idle_connection_is_sent_again_on_a_new_one() {
    let token = mint(Algorithm::RS256, "idle-race");
    let (addr, conns, lines) = backend_closing_as_its_connections_are_reused(None).await;
    let (gw, _dir) = start_gateway(&standard_config(addr, &jwks_file())).await;
    let at = gw.addrs()[1];
    let go = |path: &'static str| get_plain(at, &token, path, &[]);
    assert_eq!(go("/first").await.status, StatusCode::OK);
    // Idle for longer than a second: then a backend's keep-alive timer may
    // be what closes the connection as it is reused.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let a = go("/second").await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&a.body)
    );
    assert_eq!(&a.body[..], b"ok");
    assert_eq!(conns.load(Ordering::SeqCst), 2);
    assert_eq!(
        *lines.lock().expect("lock"),
        [
            "GET /first HTTP/1.1",
            "GET /second HTTP/1.1",
            "GET /second HTTP/1.1"
        ]
    );
}

#[tokio::test]
async fn a_keep_alive_timeout_announced_once_holds_for_the_connections_life() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let token = mint(Algorithm::RS256, "keep-alive-once");
    // A backend that says `Keep-Alive: timeout=2` in the first response of
    // each connection only, and keeps every connection open.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let conns = Arc::new(AtomicUsize::new(0));
    let c = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            c.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                for answered in 0.. {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.clear();
                    let extra = if answered == 0 {
                        "keep-alive: timeout=2\r\n"
                    } else {
                        ""
                    };
                    let answer = format!("HTTP/1.1 200 OK\r\n{extra}content-length: 2\r\n\r\nok");
                    if s.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    let (gw, _dir) = start_gateway(&standard_config(addr, &jwks_file())).await;
    let at = gw.addrs()[1];
    let go = |path: &'static str| get_plain(at, &token, path, &[]);
    assert_eq!(go("/said").await.status, StatusCode::OK);
    assert_eq!(go("/silent").await.status, StatusCode::OK);
    assert_eq!(conns.load(Ordering::SeqCst), 1);
    // The second response said nothing; the first's 2 s (less 1 s) still
    // holds for that connection.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(go("/later").await.status, StatusCode::OK);
    assert_eq!(conns.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_get_the_backend_may_have_acted_on_is_not_sent_again() {
    let token = mint(Algorithm::RS256, "no-replay");
    // The backend closes a reused connection: 400 ms after the request (a
    // worker killed on it, not an idle timer), after a status line, after
    // a 100 Continue; or the GET names another method for the framework.
    type Case = (
        Duration,
        &'static [u8],
        &'static [(&'static str, &'static str)],
    );
    let cases: [Case; 4] = [
        (Duration::from_millis(400), b"", &[]),
        (Duration::ZERO, b"HTTP/1.1 200 OK\r\n", &[]),
        (Duration::ZERO, b"HTTP/1.1 100 Continue\r\n\r\n", &[]),
        (Duration::ZERO, b"", &[("x-http-method-override", "POST")]),
    ];
    for (after, first, extra) in cases {
        let (addr, conns, lines) = backend_failing_reused_connections(None, after, first).await;
        let (gw, _dir) = start_gateway(&standard_config(addr, &jwks_file())).await;
        let at = gw.addrs()[1];
        let go = |path: &'static str| get_plain(at, &token, path, extra);
        assert_eq!(go("/first").await.status, StatusCode::OK);
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let case = format!("{after:?} {:?} {extra:?}", String::from_utf8_lossy(first));
        assert_eq!(
            go("/second").await.status,
            StatusCode::BAD_GATEWAY,
            "{case}"
        );
        assert_eq!(conns.load(Ordering::SeqCst), 1, "{case}");
        assert_eq!(
            *lines.lock().expect("lock"),
            ["GET /first HTTP/1.1", "GET /second HTTP/1.1"],
            "{case}"
        );
    }
}

#[tokio::test]
async fn an_http2_get_with_a_body_of_unknown_length_reaches_the_backend_with_that_body() {
    use http_body_util::BodyExt;
    let backend = Backend::start().await;
    let (gw, _dir) = start_gateway(&standard_config(backend.addr, &jwks_file())).await;
    let token = mint(Algorithm::RS256, "h2-get-body");
    let mut req = get(Proto::TlsH2, "localhost", "/h2-get-body", Some(&token), &[]);
    // DATA with no content-length: a stream of unknown length.
    let frames = futures_util::stream::iter([Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
        http_body::Frame::data(bytes::Bytes::from_static(b"hello")),
    )]);
    *req.body_mut() = http_body_util::StreamBody::new(frames).boxed();
    let a = send(gw.addrs()[0], Proto::TlsH2, "localhost", req).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(backend.last().body_bytes, 5);
}

#[tokio::test]
async fn a_post_sent_as_the_backend_closes_its_idle_connection_is_not_sent_twice() {
    let token = mint(Algorithm::RS256, "idle-race-post");
    let (addr, conns, lines) = backend_closing_as_its_connections_are_reused(None).await;
    let (gw, _dir) = start_gateway(&standard_config(addr, &jwks_file())).await;
    let at = gw.addrs()[1];
    let post = |path: &str| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello"
        )
    };
    let (status, text) = raw_request(at, &post("/first")).await;
    assert_eq!(status, 200, "{text}");
    tokio::time::sleep(Duration::from_millis(1300)).await;
    // It may have been acted on: the client gets its 502 and decides.
    let (status, text) = raw_request(at, &post("/second")).await;
    assert_eq!(status, 502, "{text}");
    assert_eq!(conns.load(Ordering::SeqCst), 1);
    assert_eq!(
        *lines.lock().expect("lock"),
        ["POST /first HTTP/1.1", "POST /second HTTP/1.1"]
    );
}

#[tokio::test]
async fn a_backend_announcing_its_keep_alive_timeout_gets_a_new_connection_before_it_would_close_the_old(
) {
    let token = mint(Algorithm::RS256, "keep-alive-hint");
    let (addr, conns, lines) =
        backend_closing_as_its_connections_are_reused(Some("timeout=2, max=100")).await;
    let (gw, _dir) = start_gateway(&standard_config(addr, &jwks_file())).await;
    let at = gw.addrs()[1];
    let go = |path: &'static str| get_plain(at, &token, path, &[]);
    assert_eq!(go("/first").await.status, StatusCode::OK);
    // Idle past the announced 2 s less a margin of 1 s (the route's own
    // backend_idle_timeout is 60 s): not reused, so the backend never gets
    // a request on a connection it is closing.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert_eq!(go("/later").await.status, StatusCode::OK);
    assert_eq!(conns.load(Ordering::SeqCst), 2);
    assert_eq!(
        *lines.lock().expect("lock"),
        ["GET /first HTTP/1.1", "GET /later HTTP/1.1"]
    );
}
