//! The policy as a decision, without sockets: one test per row of the
//! README's "Answers" table, calling `Proxy::decide` on a request head
//! built in memory, with a JWKS file and a fixed revocation state. (The
//! 502/504 rows are the backend's answers, not the policy's: they are
//! tested over sockets in `tests/gateway.rs` and `tests/faults.rs`.)

use std::net::SocketAddr;
use std::sync::Arc;

use gatehouse::auth::jwt::install_crypto_and_self_test;
use gatehouse::proxy::headers::ClientAddr;
use gatehouse::proxy::reject::Reject;
use gatehouse::proxy::{ConnInfo, Outcome, Proxy};
use gatehouse::revocation::model::{Kind, Revocation};
use gatehouse::revocation::Revocations;
use gatehouse_test_support::*;
use http::StatusCode;
use jsonwebtoken::Algorithm;
use serde_json::json;

fn yaml() -> String {
    // Routes to a backend that is never called: the policy only decides.
    let never: SocketAddr = ([127, 0, 0, 1], 9).into();
    let on_app = |name: &str, prefix: &str| {
        yaml::Route::to(never)
            .with("name", name)
            .with("hosts", "[app.test]")
            .with("path_prefix", prefix)
    };
    yaml::Config::gateway()
        .issuers(vec![
            yaml::Issuer::test()
                .with("name", "test")
                .with("algorithms", "[RS256]")
                .with("jwks", jwks_file())
                .with("leeway", "0s"),
            yaml::Issuer::test()
                .with("name", "down")
                .with("issuer", "https://down.test")
                .with("algorithms", "[RS256]")
                .with("jwks", r#"{ url: "http://127.0.0.1:1/jwks" }"#)
                .with("unknown_kid_when_keys_unavailable", "unavailable"),
        ])
        .route(
            on_app("app", "/")
                .with("public_paths", "[/public/]")
                .with("max_body_bytes", 1000)
                .with(
                    "identity_headers",
                    "[{ claim: sub, header: X-Auth-Subject }]",
                ),
        )
        .route(on_app("reports", "/reports").with("require", "{ scopes: [reports.read] }"))
        .route(on_app("guest", "/guest").with("auth", "optional"))
        .route(on_app("team", "/team").with(
            "identity_headers",
            "[{ claim: address, header: X-Address }, { claim: sub, header: X-User }]",
        ))
        .yaml()
}

async fn proxy(revocations: Option<Arc<Revocations>>) -> (Proxy, tempfile::TempDir) {
    install_crypto_and_self_test().expect("crypto");
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gatehouse.yaml");
    std::fs::write(&path, yaml()).expect("write");
    let loaded = gatehouse::config::load(&path).expect("config");
    (
        Proxy::from_config(&loaded, revocations)
            .await
            .expect("proxy"),
        dir,
    )
}

fn conn() -> ConnInfo {
    let peer: SocketAddr = "192.0.2.7:50000".parse().expect("addr");
    ConnInfo {
        peer,
        client: ClientAddr::new(peer.ip()),
        tls: true,
        unix_socket: false,
        cert_names: Some(Arc::from(vec!["app.test".to_owned()])),
        listener: 0,
        hold: None,
    }
}

fn head(target: &str, host: &str, extra: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::get(target).header("host", host);
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    b.body(()).expect("request").into_parts().0
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

/// The answer the gateway would give: the decision's status, or 200.
async fn answer(p: &Proxy, h: &http::request::Parts) -> (StatusCode, Option<String>) {
    let mut out = Outcome::default();
    match p.decide(h, &conn(), &mut out).await {
        Ok(d) => (StatusCode::OK, d.identity.and_then(|i| i.subject.clone())),
        Err(r) => {
            let resp = r.into_response("gatehouse");
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .map(|v| v.to_str().unwrap_or("").to_owned());
            (resp.status(), challenge)
        }
    }
}

#[tokio::test]
async fn a_valid_token_is_decided_with_its_identity_headers() {
    let (p, _d) = proxy(None).await;
    let t = mint(Algorithm::RS256, "alice");
    let h = head(
        "/%61pp/x;v=1",
        "App.Test:443",
        &[("authorization", &bearer(&t))],
    );
    let mut out = Outcome::default();
    let d = p.decide(&h, &conn(), &mut out).await.expect("allowed");
    assert_eq!(&*d.route.name, "app");
    assert_eq!(d.path.forward, "/app/x;v=1");
    assert_eq!(d.host.value, "app.test:443");
    let set: Vec<_> = d
        .identity_headers()
        .map(|(n, v)| (n.as_str().to_owned(), v))
        .collect();
    assert_eq!(
        set,
        [("x-auth-subject".to_owned(), "alice".parse().expect("hv"))]
    );
    assert_eq!(out.label, "allowed");
}

#[tokio::test]
async fn one_token_on_two_routes_gets_each_routes_identity_headers_on_every_request() {
    let (p, _d) = proxy(None).await;
    let mut claims = claims("carol");
    claims.insert("address".into(), json!({ "street": "x" }));
    let t = mint_with(Algorithm::RS256, &claims);
    let withheld = || {
        gatehouse::admin::metrics::metrics()
            .identity_headers_withheld
            .get_or_create(&gatehouse::admin::metrics::IdentityHeaderLabels {
                route: "team".into(),
                header: "x-address".into(),
            })
            .get()
    };
    let before = withheld();
    // Alternating routes: the identity's values are made once for one
    // list; the other list's are made on the spot, each time the same.
    for path in ["/app/x", "/team/x", "/app/y", "/team/y", "/team/z"] {
        let h = head(path, "app.test", &[("authorization", &bearer(&t))]);
        let mut out = Outcome::default();
        let d = p.decide(&h, &conn(), &mut out).await.expect("allowed");
        let set: Vec<_> = d
            .identity_headers()
            .map(|(n, v)| (n.as_str().to_owned(), v))
            .collect();
        let name = if path.starts_with("/app") {
            "x-auth-subject"
        } else {
            "x-user"
        };
        assert_eq!(
            set,
            [(name.to_owned(), "carol".parse().expect("hv"))],
            "{path}"
        );
    }
    // An object claim has no header form: withheld, and counted on each
    // of the three requests, not only when the values were first made.
    assert_eq!(withheld() - before, 3);
}

#[tokio::test]
async fn no_bearer_token_is_401_with_a_bare_challenge() {
    let (p, _d) = proxy(None).await;
    for extra in [&[][..], &[("authorization", "Basic YTpi")][..]] {
        let (status, challenge) = answer(&p, &head("/x", "app.test", extra)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(challenge.as_deref(), Some("Bearer realm=\"gatehouse\""));
    }
    // `optional`: no header at all is anonymous, a broken one is judged.
    assert_eq!(
        answer(&p, &head("/guest", "app.test", &[])).await.0,
        StatusCode::OK
    );
    let broken = head("/guest", "app.test", &[("authorization", "Bearer\tx")]);
    assert_eq!(answer(&p, &broken).await.0, StatusCode::UNAUTHORIZED);
    // A public path needs nothing.
    assert_eq!(
        answer(&p, &head("/public/a", "app.test", &[])).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn bad_tokens_are_401_invalid_token() {
    let (p, _d) = proxy(None).await;
    let expired = token_with(|c| {
        c.insert("exp".into(), json!(now() - 10));
    });
    let wrong_aud = token_with(|c| {
        c.insert("aud".into(), json!("someone-else"));
    });
    let mut tampered = mint(Algorithm::RS256, "alice");
    tampered.push('A');
    for t in [expired, wrong_aud, tampered, "a.b.c".to_owned()] {
        let (status, challenge) = answer(
            &p,
            &head("/x", "app.test", &[("authorization", &bearer(&t))]),
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert!(challenge
            .unwrap_or_default()
            .contains("error=\"invalid_token\""));
    }
}

#[tokio::test]
async fn unknown_key_while_the_key_source_is_down_is_503_when_the_issuer_says_so() {
    let (p, _d) = proxy(None).await;
    let t = token_with(|c| {
        c.insert("iss".into(), json!("https://down.test"));
    });
    let (status, _) = answer(
        &p,
        &head("/x", "app.test", &[("authorization", &bearer(&t))]),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn a_revoked_token_is_401_and_unknown_revocation_state_is_503() {
    let n = now() as i64;
    let revoked = Revocation {
        id: 1,
        issuer: ISS.into(),
        kind: Kind::Sub,
        value: "mallory".into(),
        before: Some(n + 1),
        reason: "forced_logout".into(),
        created_at: n,
        expires_at: n + 3600,
    };
    let (p, _d) = proxy(Some(Revocations::fixed(&[revoked], true))).await;
    let t = mint(Algorithm::RS256, "mallory");
    let (status, challenge) = answer(
        &p,
        &head("/x", "app.test", &[("authorization", &bearer(&t))]),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert!(challenge
        .unwrap_or_default()
        .contains("all sessions of this account were ended"));
    let ok = mint(Algorithm::RS256, "alice");
    let h = head("/x", "app.test", &[("authorization", &bearer(&ok))]);
    assert_eq!(answer(&p, &h).await.0, StatusCode::OK);

    let (never_synced, _d) = proxy(Some(Revocations::fixed(&[], false))).await;
    assert_eq!(
        answer(&never_synced, &h).await.0,
        StatusCode::SERVICE_UNAVAILABLE
    );
}

#[tokio::test]
async fn a_token_without_the_routes_scope_is_403() {
    let (p, _d) = proxy(None).await;
    let t = mint(Algorithm::RS256, "alice");
    let (status, challenge) = answer(
        &p,
        &head("/reports/q", "app.test", &[("authorization", &bearer(&t))]),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(challenge
        .unwrap_or_default()
        .contains("scope=\"reports.read\""));
}

#[tokio::test]
async fn a_host_the_certificate_does_not_serve_is_421_and_no_route_404() {
    let (p, _d) = proxy(None).await;
    assert_eq!(
        answer(&p, &head("/x", "other.test", &[])).await.0,
        StatusCode::MISDIRECTED_REQUEST
    );
    let mut plain = conn();
    plain.cert_names = None;
    let mut out = Outcome::default();
    let r = p
        .decide(&head("/x", "other.test", &[]), &plain, &mut out)
        .await
        .err();
    assert!(matches!(r, Some(Reject::NoRoute)));
}

#[tokio::test]
async fn ambiguous_paths_and_hosts_are_400() {
    let (p, _d) = proxy(None).await;
    for (target, host) in [
        ("/a%2fb", "app.test"),
        ("/admin./", "app.test"),
        ("/x", "app.test:x"),
    ] {
        assert_eq!(
            answer(&p, &head(target, host, &[])).await.0,
            StatusCode::BAD_REQUEST
        );
    }
    let te = head("/x", "app.test", &[("transfer-encoding", "gzip, chunked")]);
    assert_eq!(answer(&p, &te).await.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_declared_body_over_the_routes_limit_is_413() {
    let (p, _d) = proxy(None).await;
    let t = mint(Algorithm::RS256, "alice");
    let h = head(
        "/x",
        "app.test",
        &[("authorization", &bearer(&t)), ("content-length", "1001")],
    );
    assert_eq!(answer(&p, &h).await.0, StatusCode::PAYLOAD_TOO_LARGE);
}
