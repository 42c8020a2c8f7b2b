//! One meaning per request: the gateway judges exactly the request the
//! backend serves. Each test sends one kind of alternative spelling over a
//! real socket to a real gateway in front of a backend that records what it
//! receives, and asserts both the answer and what the backend saw.

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use gatehouse_test_support::*;
use http::StatusCode;
use proptest::prelude::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// `/admin` needs the `admin` scope, everything else on the default host a
/// token; `mixed.test` has a protected `/api` and an `auth: off` rest;
/// `legacy.test` is an IIS-like backend that ignores case; `guest` is
/// `auth: optional`, `guest-strict` optional with a `require`.
fn config(backend: SocketAddr, extra_backend: SocketAddr) -> String {
    format!(
        r#"
listeners:
  - name: plain
    address: 127.0.0.1:0
issuers:
  - name: test
    issuer: {ISS}
    audiences: [{AUD}]
    algorithms: [RS256]
    jwks: {jwks}
    leeway: 0s
trusted_proxies: [10.9.9.9/32]
strip_untrusted_headers: [X-Internal-*, X-Debug-User]
routes:
  - name: admin
    path_prefix: /admin
    backends: [http://{backend}]
    require: {{ scopes: [admin] }}
    identity_headers:
      - {{ claim: sub, header: X-Auth-Subject }}
  - name: app
    path_prefix: /
    backends: [http://{backend}]
    public_paths: [/favicon.ico, /public/]
    identity_headers:
      - {{ claim: sub, header: X-Auth-Subject }}
      - {{ claim: preferred_username, header: x_remote_user }}
      - {{ claim: groups, header: X-Auth-Groups }}
      - {{ claim: address, header: X-Auth-Address }}
  - name: guest
    path_prefix: /guest
    backends: [http://{backend}]
    auth: optional
    forward_authorization: true
  - name: guest-strict
    path_prefix: /members
    backends: [http://{backend}]
    auth: optional
    require: {{ scopes: [member] }}
  - name: mixed-api
    hosts: [mixed.test]
    path_prefix: /api
    backends: [http://{backend}]
  - name: mixed-site
    hosts: [mixed.test]
    path_prefix: /
    backends: [http://{backend}]
    auth: off
  - name: admin-host
    hosts: [admin.test]
    path_prefix: /
    backends: [http://{backend}]
    require: {{ scopes: [admin] }}
  - name: legacy-admin
    hosts: [legacy.test]
    path_prefix: /admin
    backends: [http://{backend}]
    case_insensitive: true
    require: {{ scopes: [admin] }}
  - name: legacy-site
    hosts: [legacy.test]
    path_prefix: /
    backends: [http://{backend}]
    auth: off
  - name: files-admin
    hosts: [files.test]
    path_prefix: /@admin
    backends: [http://{backend}]
  - name: files-batch
    hosts: [files.test]
    path_prefix: /odata/$batch
    backends: [http://{backend}]
  - name: files
    hosts: [files.test]
    path_prefix: /
    backends: [http://{backend}]
    auth: off
  - name: chat
    path_prefix: /chat
    backends: [http://{backend}]
    auth: off
  - name: framing
    path_prefix: /framing
    backends: [http://{extra_backend}]
logging:
  level: warn
"#,
        jwks = jwks_file(),
    )
}

struct Setup {
    gw: std::sync::Arc<gatehouse::server::Gateway>,
    backend: Backend,
    _dir: tempfile::TempDir,
}

impl Setup {
    async fn start() -> Setup {
        let backend = Backend::start().await;
        let framing = bad_framing_backend().await;
        let (gw, dir) = start_gateway(&config(backend.addr, framing)).await;
        Setup {
            gw,
            backend,
            _dir: dir,
        }
    }
    fn addr(&self) -> SocketAddr {
        self.gw.addrs()[0]
    }
}

fn user_token() -> String {
    token_with(|c| {
        c.insert("scope".into(), json!("read"));
    })
}

fn admin_token() -> String {
    token_with(|c| {
        c.insert("scope".into(), json!("read admin"));
    })
}

async fn get_raw(addr: SocketAddr, target: &str, host: &str, token: Option<&str>) -> u16 {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    raw_request(
        addr,
        &format!("GET {target} HTTP/1.1\r\nHost: {host}\r\n{auth}Connection: close\r\n\r\n"),
    )
    .await
    .0
}

#[tokio::test]
async fn percent_encoded_admin_path_is_judged_as_admin() {
    let s = Setup::start().await;
    let user = user_token();
    for target in ["/%61dmin/x", "/%61%64%6D%69%6E/x", "/ADMIN/../%61dmin/x"] {
        let before = s.backend.hits();
        assert_eq!(
            get_raw(s.addr(), target, "app.test", Some(&user)).await,
            403,
            "{target}"
        );
        assert_eq!(s.backend.hits(), before, "{target} reached the backend");
    }
    assert_eq!(
        get_raw(s.addr(), "/%61dmin/x", "app.test", Some(&admin_token())).await,
        200
    );
    assert_eq!(
        s.backend.last().path,
        "/admin/x",
        "the backend gets the canonical path"
    );

    // The mixed host: `/api` needs a token, the rest is `auth: off`.
    assert_eq!(
        get_raw(s.addr(), "/%61pi/secret", "mixed.test", None).await,
        401
    );
    assert_eq!(
        get_raw(s.addr(), "/%2561pi/secret", "mixed.test", None).await,
        400
    );
    assert_eq!(
        get_raw(s.addr(), "/site/%7Eme", "mixed.test", None).await,
        200
    );
    assert_eq!(s.backend.last().path, "/site/~me");
    assert_eq!(
        get_raw(s.addr(), "/site/a%3fb", "mixed.test", None).await,
        200
    );
    assert_eq!(
        s.backend.last().path,
        "/site/a%3Fb",
        "other escapes kept, in upper case"
    );
}

#[tokio::test]
async fn escaped_sub_delimiters_are_judged_as_the_characters_backends_decode_them_to() {
    let s = Setup::start().await;
    let before = s.backend.hits();
    for target in [
        "/%40admin/secret.txt",
        "/%40%61dmin/secret.txt",
        "/odata/%24batch",
        "/odata/%24Batch/../%24batch",
    ] {
        assert_eq!(
            get_raw(s.addr(), target, "files.test", None).await,
            401,
            "{target}"
        );
    }
    assert_eq!(s.backend.hits(), before);
    assert_eq!(
        get_raw(
            s.addr(),
            "/%40admin/secret.txt",
            "files.test",
            Some(&user_token())
        )
        .await,
        200
    );
    assert_eq!(s.backend.last().path, "/@admin/secret.txt");
    // Characters that are not path characters take one escaped form.
    assert_eq!(
        get_raw(s.addr(), "/x/%7bid%7D/a%2Bb%3a", "files.test", None).await,
        200
    );
    assert_eq!(s.backend.last().path, "/x/%7Bid%7D/a+b:");
}

#[tokio::test]
async fn path_parameters_are_judged_without_them_and_forwarded_with_them() {
    let s = Setup::start().await;
    let before = s.backend.hits();
    assert_eq!(
        get_raw(s.addr(), "/admin;v=1/x", "app.test", Some(&user_token())).await,
        403
    );
    assert_eq!(
        get_raw(s.addr(), "/;x/admin/x", "app.test", Some(&user_token())).await,
        403
    );
    assert_eq!(
        get_raw(s.addr(), "/api;/..;/admin/x", "mixed.test", None).await,
        200
    );
    assert_eq!(
        s.backend.last().path,
        "/admin/x",
        "`..;` is `..` to a servlet container"
    );
    let after_public = s.backend.hits();
    assert_eq!(after_public, before + 1);
    assert_eq!(
        get_raw(s.addr(), "/admin;v=1/x", "app.test", Some(&admin_token())).await,
        200
    );
    assert_eq!(
        s.backend.last().path,
        "/admin;v=1/x",
        "parameters reach the backend"
    );
    // A path is public only if it is with and without its parameters:
    // Python, Node and Go serve `/favicon.ico;x` as another path (a
    // catch-all handler such as Flask's `/<path:p>` gets it), so it needs
    // a token. Parameters past the public prefix keep it public; a
    // protected path is never made public by them.
    assert_eq!(
        get_raw(s.addr(), "/public/a.css;v=2", "app.test", None).await,
        200
    );
    for target in [
        "/public;x/a.css",
        "/favicon.ico;x",
        "/favicon.ico;/../admin/x",
    ] {
        assert_eq!(
            get_raw(s.addr(), target, "app.test", None).await,
            401,
            "{target}"
        );
    }
}

#[tokio::test]
async fn encodings_backends_read_as_delimiters_are_refused() {
    let s = Setup::start().await;
    let before = s.backend.hits();
    for target in [
        "/public/..%2fadmin/x",
        "/public%5c..%5cadmin",
        "/admin%3bx",
        "/admin%00",
        "/public/%zz",
        "/%2541dmin",
        "/%C0%AE%C0%AE/admin",
        "/admin./x",
        "/admin%2e/x",
        "/admin%20/x",
    ] {
        assert_eq!(
            get_raw(s.addr(), target, "app.test", None).await,
            400,
            "{target}"
        );
    }
    assert_eq!(
        s.backend.hits(),
        before,
        "nothing refused reached the backend"
    );
}

#[tokio::test]
async fn case_insensitive_route_catches_every_case() {
    let s = Setup::start().await;
    for target in ["/ADMIN/x", "/Admin/x", "/%41dmin/x"] {
        assert_eq!(
            get_raw(s.addr(), target, "legacy.test", None).await,
            401,
            "{target}"
        );
    }
    assert_eq!(
        get_raw(s.addr(), "/ADMIN/x", "legacy.test", Some(&admin_token())).await,
        200
    );
    assert_eq!(
        s.backend.last().path,
        "/ADMIN/x",
        "case is the backend's business"
    );
    assert_eq!(get_raw(s.addr(), "/home", "legacy.test", None).await, 200);
    // Where a backend ignores case it also folds these into ASCII, and
    // Windows reads stream and short-name spellings as the plain name.
    let before = s.backend.hits();
    for target in [
        "/%C4%B1dmin/x",
        "/%E2%84%AAdmin",
        "/%EF%AC%81le",
        "/admin::$DATA/x",
        "/admin:$i30:$INDEX_ALLOCATION/x",
        "/ADMINI~1/x",
    ] {
        assert_eq!(
            get_raw(s.addr(), target, "legacy.test", None).await,
            400,
            "{target}"
        );
    }
    assert_eq!(s.backend.hits(), before);
}

#[tokio::test]
async fn host_that_is_not_a_host_is_refused_and_the_backend_gets_the_canonical_one() {
    let s = Setup::start().await;
    let before = s.backend.hits();
    for host in [
        "admin.test:abc",
        "admin.test:1:2",
        "user@admin.test",
        "admin.test/x",
        "admin..test",
        "admin.test:99999",
    ] {
        assert_eq!(get_raw(s.addr(), "/x", host, None).await, 400, "{host}");
    }
    // Two Host lines, and none at all in HTTP/1.1 (RFC 9112 §3.2).
    let (two, _) = raw_request(
        s.addr(),
        "GET /x HTTP/1.1\r\nHost: app.test\r\nHost: admin.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(two, 400);
    let (none, _) = raw_request(s.addr(), "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n").await;
    assert_eq!(none, 400);
    assert_eq!(s.backend.hits(), before);

    // Every spelling of admin.test is admin.test: the admin-only host.
    for host in [
        "ADMIN.test",
        "admin.test.",
        "admin.test:",
        "admin.test:0080",
    ] {
        assert_eq!(
            get_raw(s.addr(), "/x", host, Some(&user_token())).await,
            403,
            "{host}"
        );
    }
    assert_eq!(
        get_raw(s.addr(), "/x", "Admin.Test.:0080", Some(&admin_token())).await,
        200
    );
    let seen = s.backend.last();
    assert_eq!(seen.headers["host"], "admin.test:80");
    assert_eq!(seen.headers["x-forwarded-host"], "admin.test:80");
}

#[tokio::test]
async fn h2_authority_and_a_different_host_header_is_refused() {
    let backend = Backend::start().await;
    let (gw, _dir) = start_gateway(&standard_config(backend.addr, &jwks_file())).await;
    let token = mint(jsonwebtoken::Algorithm::RS256, "alice");
    let ok = send(
        gw.addrs()[0],
        Proto::TlsH2,
        "localhost",
        get(Proto::TlsH2, "localhost", "/x", Some(&token), &[]),
    )
    .await;
    assert_eq!(ok.status, StatusCode::OK);
    let clash = send(
        gw.addrs()[0],
        Proto::TlsH2,
        "localhost",
        get(
            Proto::TlsH2,
            "localhost",
            "/x",
            Some(&token),
            &[("host", "app.test")],
        ),
    )
    .await;
    assert_eq!(clash.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn h2c_upgrade_never_reaches_the_backend_and_the_next_request_is_judged() {
    let s = Setup::start().await;
    // The test backend answers 101 to any request that carries `Upgrade`:
    // if the gateway forwarded it, this would become a blind pipe.
    let mut c = TcpStream::connect(s.addr()).await.expect("connect");
    c.write_all(
        b"GET /favicon.ico HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade, HTTP2-Settings\r\n\
          Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await
    .expect("write");
    let first = read_response(&mut c).await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let seen = s.backend.last();
    assert!(!seen.headers.contains_key("upgrade"));
    assert!(!seen.headers.contains_key("http2-settings"));
    // Same connection: still HTTP, still judged.
    c.write_all(b"GET /admin/secret HTTP/1.1\r\nHost: app.test\r\nX-Auth-Subject: admin\r\n\r\n")
        .await
        .expect("write");
    let second = read_response(&mut c).await;
    assert!(second.starts_with("HTTP/1.1 401"), "{second}");

    // Another protocol the route does not list is removed the same way.
    let (status, _) = raw_request(
        s.addr(),
        "GET /chat/x HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: spdy/3\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    // WebSocket is allowed by default and tunnelled.
    let mut ws = TcpStream::connect(s.addr()).await.expect("connect");
    ws.write_all(
        b"GET /chat/ws HTTP/1.1\r\nHost: app.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .expect("write");
    let head = read_response(&mut ws).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}

/// Reads one response with a `Content-Length` body from a keep-alive
/// connection.
async fn read_response(c: &mut TcpStream) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(Duration::from_secs(5), c.read(&mut byte)).await {
            Ok(Ok(1)) => buf.push(byte[0]),
            _ => break,
        }
    }
    let head = String::from_utf8_lossy(&buf).into_owned();
    let len = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().parse::<usize>().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    let _ = tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut body)).await;
    head + &String::from_utf8_lossy(&body)
}

#[tokio::test]
async fn the_whole_forwarding_family_from_an_untrusted_client_is_removed() {
    let s = Setup::start().await;
    let spoofed = [
        "X-Forwarded-Uri: /admin",
        "X-Forwarded-For: 1.2.3.4",
        "X_Forwarded_Host: evil.test",
        "X-Forwarded-Client-Cert: By=spiffe://evil",
        "X-Original-URL: /admin",
        "X-Original-URI: /admin",
        "X-Rewrite-URL: /admin",
        "X-Real-IP: 1.2.3.4",
        "True-Client-IP: 1.2.3.4",
        "CF-Connecting-IP: 1.2.3.4",
        "X-Client-IP: 1.2.3.4",
        "X-Cluster-Client-IP: 1.2.3.4",
        "Forwarded: for=1.2.3.4;host=evil.test",
        "X-Envoy-Original-Path: /admin",
        "X-Internal-Role: admin",
        "X_Debug_User: root",
        "X.Real.IP: 1.2.3.4",
        "X~Original~URL: /admin",
        "Via: 1.1 evil",
        "X-Azure-ClientIP: 1.2.3.4",
        // WSGI "reverse proxied" middleware mounts the app under it.
        "X-Script-Name: /favicon.ico",
        "X_Script_Name: /favicon.ico",
        "X-Request-URI: /admin",
        "X-Override-URL: /admin",
        "X-MS-Original-URL: /admin",
        "X-Path-Info: /admin",
        "Base-Url: http://evil.test",
        // httpoxy: HTTP_PROXY to a CGI backend.
        "Proxy: http://evil.test:1",
        // Next.js skips its middleware for this one (CVE-2025-29927).
        "X-Middleware-Subrequest: middleware",
        "X-Invoke-Path: /admin",
        "X-Now-Route-Matches: x",
        "Fly-Client-IP: 1.2.3.4",
        "CF-Pseudo-IPv4: 1.2.3.4",
        "X-Client-DN: CN=admin",
        "X-TLS-Client-Cert: x",
        "SSL-Client-Subject-DN: CN=admin",
    ];
    let head = format!(
        "GET /favicon.ico HTTP/1.1\r\nHost: app.test\r\n{}\r\nConnection: close\r\n\r\n",
        spoofed.join("\r\n")
    );
    assert_eq!(raw_request(s.addr(), &head).await.0, 200);
    let seen = s.backend.last();
    for line in spoofed {
        let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
        let ours = matches!(
            name.as_str(),
            "x-forwarded-for" | "x_forwarded_host" | "forwarded"
        );
        if ours {
            continue;
        }
        assert!(
            !seen.headers.contains_key(name.as_str()),
            "{name} reached the backend"
        );
    }
    assert_eq!(seen.headers["x-forwarded-for"], "127.0.0.1");
    assert_eq!(seen.headers["x-forwarded-host"], "app.test");
    assert!(!seen.headers.contains_key("x_forwarded_host"));
    assert_eq!(
        seen.headers["forwarded"],
        "for=127.0.0.1;proto=http;host=\"app.test\""
    );
}

#[tokio::test]
async fn optional_route_judges_any_authorization_header() {
    let s = Setup::start().await;
    // A valid token, accepted first, so that it is in the verified-token
    // memo: the same token with bytes after it is another credential.
    let valid = user_token();
    assert_eq!(
        get_raw(s.addr(), "/guest/x", "app.test", Some(&valid)).await,
        200
    );
    let before = s.backend.hits();
    let trailing_word = format!("Bearer {valid} x");
    let trailing_comma = format!("Bearer {valid},x");
    for auth in [
        "Bearer\tforged",
        "Bearer",
        "Bearer,forged",
        "Basic YWRtaW46YWRtaW4=",
        "Bearer a.b.c",
        &trailing_word,
        &trailing_comma,
    ] {
        let (status, _) = raw_request(
            s.addr(),
            &format!("GET /guest/x HTTP/1.1\r\nHost: app.test\r\nAuthorization: {auth}\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 401, "{auth:?}");
    }
    assert_eq!(
        s.backend.hits(),
        before,
        "no judged credential was forwarded"
    );
    // No Authorization at all: anonymous, as `optional` says.
    assert_eq!(get_raw(s.addr(), "/guest/x", "app.test", None).await, 200);
    // ...unless the route has a `require`: never anonymous there.
    assert_eq!(get_raw(s.addr(), "/members/x", "app.test", None).await, 401);
    let member = token_with(|c| {
        c.insert("scope".into(), json!("member"));
    });
    assert_eq!(
        get_raw(s.addr(), "/members/x", "app.test", Some(&user_token())).await,
        403
    );
    assert_eq!(
        get_raw(s.addr(), "/members/x", "app.test", Some(&member)).await,
        200
    );
}

#[tokio::test]
async fn identity_headers_configured_with_underscores_are_stripped_in_every_spelling() {
    let s = Setup::start().await;
    let token = token_with(|c| {
        c.insert("preferred_username".into(), json!("bob"));
    });
    let (status, _) = raw_request(
        s.addr(),
        &format!(
            "GET /x HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {token}\r\n\
             X-Remote-User: admin\r\nx_remote-user: admin\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 200);
    let seen = s.backend.last();
    let values: Vec<_> = seen
        .headers
        .iter()
        .filter(|(n, _)| gatehouse::proxy::headers::same_field(n.as_str(), "x-remote-user"))
        .map(|(_, v)| v.to_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(values, ["bob"], "only the gateway's value, once");
    let subjects: Vec<_> = seen
        .headers
        .iter()
        .filter(|(n, _)| gatehouse::proxy::headers::same_field(n.as_str(), "x-auth-subject"))
        .map(|(_, v)| v.to_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        subjects,
        ["someone"],
        "X~Auth~Subject is HTTP_X_AUTH_SUBJECT to a CGI backend"
    );
}

#[test]
fn identity_headers_that_frame_or_authenticate_the_message_are_refused_by_config() {
    for name in [
        "Content-Length",
        "Host",
        "Authorization",
        "Cookie",
        "content_type",
    ] {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("g.yaml");
        std::fs::write(
            &path,
            format!(
                "listeners: [{{address: 127.0.0.1:0}}]\nissuers: [{{issuer: {ISS}, audiences: [{AUD}], algorithms: [RS256], jwks: {jwks}}}]\n\
                 routes:\n  - backends: [http://127.0.0.1:9]\n    identity_headers: [{{claim: role, header: {name}}}]\n",
                jwks = jwks_file()
            ),
        )
        .expect("write");
        let err = gatehouse::config::load(&path)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("clashes"), "{name}: {err}");
    }
}

#[tokio::test]
async fn content_length_reaches_the_backend_in_one_spelling() {
    let s = Setup::start().await;
    let token = user_token();
    let (status, _) = raw_request(
        s.addr(),
        &format!(
            "POST /upload HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {token}\r\n\
             Content-Length: 05\r\nConnection: close\r\n\r\nhello"
        ),
    )
    .await;
    assert_eq!(status, 200);
    let seen = s.backend.last();
    assert_eq!(seen.headers["content-length"], "5");
    assert_eq!(seen.body_bytes, 5);
}

#[tokio::test]
async fn identity_values_reach_the_backend_in_one_unambiguous_form() {
    let s = Setup::start().await;
    let token = token_with(|c| {
        c.insert("preferred_username".into(), json!(" Zoë admin"));
        c.insert("groups".into(), json!(["staff,admin", "users"]));
        c.insert("address".into(), json!({"street": "x"}));
    });
    assert_eq!(get_raw(s.addr(), "/x", "app.test", Some(&token)).await, 200);
    let seen = s.backend.last();
    assert_eq!(seen.headers["x_remote_user"], "%20Zo%C3%AB%20admin");
    assert_eq!(seen.headers["x-auth-groups"], "staff%2Cadmin,users");
    assert!(
        !seen.headers.contains_key("x-auth-address"),
        "an object has no header form"
    );
    let withheld = gatehouse::admin::metrics::metrics()
        .identity_headers_withheld
        .get_or_create(&gatehouse::admin::metrics::IdentityHeaderLabels {
            route: "app".into(),
            header: "x-auth-address".into(),
        })
        .get();
    assert!(withheld >= 1, "withheld headers are counted");
}

#[tokio::test]
async fn a_broken_chunked_body_is_the_clients_fault() {
    let s = Setup::start().await;
    let token = user_token();
    let errors = || {
        gatehouse::admin::metrics::metrics()
            .backend_errors
            .get_or_create(&gatehouse::admin::metrics::BackendErrorLabels {
                route: "app".into(),
                kind: "other",
            })
            .get()
    };
    let before = errors();
    let (status, text) = raw_request(
        s.addr(),
        &format!(
            "POST /upload HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {token}\r\n\
             Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n1these-bytes-are-junk\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(status, 400, "{text}");
    assert_eq!(errors(), before, "not counted as a backend error");
    // A transfer coding the gateway does not decode is refused, not passed
    // on under a framing the backend cannot see.
    let (status, _) = raw_request(
        s.addr(),
        &format!(
            "POST /upload HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {token}\r\n\
             Transfer-Encoding: gzip, chunked\r\nConnection: close\r\n\r\n0\r\n\r\n"
        ),
    )
    .await;
    assert!(status == 400 || status == 501, "{status}");
}

#[tokio::test]
async fn h2_cookie_fields_reach_an_http1_backend_as_one_line() {
    let backend = Backend::start().await;
    let (gw, _dir) = start_gateway(&standard_config(backend.addr, &jwks_file())).await;
    let token = mint(jsonwebtoken::Algorithm::RS256, "alice");
    let a = send(
        gw.addrs()[0],
        Proto::TlsH2,
        "localhost",
        get(
            Proto::TlsH2,
            "localhost",
            "/x",
            Some(&token),
            &[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")],
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let seen = backend.last();
    assert_eq!(seen.headers.get_all("cookie").iter().count(), 1);
    assert_eq!(seen.headers["cookie"], "a=1; b=2; c=3");
}

/// A backend that answers `/framing/both` with `Content-Length` and
/// `Transfer-Encoding: chunked` together, `/framing/gzip` with a coding
/// other than chunked, and `/framing/switch` with a 101 to `h2c`, whether
/// the request asked for no upgrade or for WebSocket.
async fn bad_framing_backend() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let n = c.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).into_owned();
                let resp: &[u8] = if req.starts_with("GET /framing/both") {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                } else if req.starts_with("GET /framing/gzip") {
                    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
                } else if req.starts_with("GET /framing/switch") {
                    b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n"
                } else if req.starts_with("GET /framing/wsecho") {
                    // An endpoint that echoes headers the client chose: the
                    // accept for the key the client sent (RFC 6455's
                    // sample key), computed by the attacker in advance.
                    b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
                } else if req.starts_with("GET /framing/ws") {
                    // An endpoint made to answer 101 (one that echoes a
                    // status code), not a WebSocket server: no accept.
                    b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: websocket\r\n\r\n"
                } else {
                    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                };
                let _ = c.write_all(resp).await;
                let _ = c.shutdown().await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_switch_to_websocket_without_the_answer_to_the_clients_key_opens_no_tunnel() {
    let s = Setup::start().await;
    let token = user_token();
    // The request to smuggle rides right behind the upgrade request.
    let smuggle_at = |path: &str, key: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {token}\r\n\
             Connection: Upgrade\r\nUpgrade: websocket\r\n{key}Sec-WebSocket-Version: 13\r\n\r\n\
             GET /admin/secret HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"
        )
    };
    let smuggle = |key: &str| smuggle_at("/framing/ws", key);
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let (status, text) = raw_request(s.addr(), &smuggle(key)).await;
    assert_eq!(status, 502, "{text}");
    // Nor does one that answers the client's own key: the backend is
    // asked under a key of the gateway's.
    let (status, text) = raw_request(s.addr(), &smuggle_at("/framing/wsecho", key)).await;
    assert_eq!(status, 502, "{text}");
    // Without a key (or with one that is not 16 bytes) there is nothing
    // to check a switch against: the request is refused.
    for key in ["", "Sec-WebSocket-Key: c2hvcnQ=\r\n"] {
        let (status, text) = raw_request(s.addr(), &smuggle(key)).await;
        assert_eq!(status, 400, "{key:?}: {text}");
    }
}

#[tokio::test]
async fn backend_responses_with_ambiguous_framing_are_never_passed_on() {
    let s = Setup::start().await;
    let token = user_token();
    for path in ["/framing/both", "/framing/gzip", "/framing/switch"] {
        assert_eq!(
            get_raw(s.addr(), path, "app.test", Some(&token)).await,
            502,
            "{path}"
        );
        let via_hyper = send(
            s.addr(),
            Proto::Plain,
            "",
            get(Proto::Plain, "app.test", path, Some(&token), &[]),
        )
        .await;
        assert_eq!(via_hyper.status, StatusCode::BAD_GATEWAY, "{path}");
    }
    assert_eq!(
        get_raw(s.addr(), "/framing/fine", "app.test", Some(&token)).await,
        200
    );
}

// ---- the differential property: every spelling is judged as its
// canonical form, or refused -------------------------------------------

/// One gateway, backend and runtime for all generated cases.
struct Shared {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    backend: Backend,
    table: gatehouse::proxy::routes::RouteTable,
    _gw: std::sync::Arc<gatehouse::server::Gateway>,
    _dir: tempfile::TempDir,
}

fn shared() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let (setup, table) = rt.block_on(async {
            let s = Setup::start().await;
            let loaded =
                gatehouse::config::load(&s._dir.path().join("gatehouse.yaml")).expect("config");
            let table =
                gatehouse::proxy::routes::RouteTable::from_config(&loaded.config).expect("routes");
            (s, table)
        });
        Shared {
            rt,
            addr: setup.addr(),
            backend: setup.backend,
            table,
            _gw: setup.gw,
            _dir: setup._dir,
        }
    })
}

/// Rewrites `path` with the edits a backend would see through: escapes of
/// unreserved characters (either hex case), `;parameters`, `./`, `x/../`,
/// doubled slashes, and (for the case-insensitive host) case changes.
fn spell(path: &str, choices: &[u8], case: bool) -> String {
    let mut c = choices.iter().copied().cycle();
    let mut out = String::new();
    for seg in path.split('/').skip(1) {
        out.push('/');
        match c.next().unwrap_or(0) % 6 {
            0 => out.push_str("./"),
            1 => out.push_str("zz;p/../"),
            2 => out.push('/'),
            _ => {}
        }
        for ch in seg.chars() {
            let pick = c.next().unwrap_or(0);
            let ch = if case && pick & 8 != 0 {
                ch.to_ascii_uppercase()
            } else {
                ch
            };
            match pick % 4 {
                0 => out.push_str(&format!("%{:02X}", ch as u32)),
                1 => out.push_str(&format!("%{:02x}", ch as u32)),
                _ => out.push(ch),
            }
        }
        if c.next().unwrap_or(0) % 3 == 0 {
            out.push_str(";v=1");
        }
    }
    out
}

fn route_of(host: &str, path: &str) -> Option<String> {
    use gatehouse::proxy::canonical::{canonicalize_host, canonicalize_path};
    let h = canonicalize_host(host).ok()?;
    let p = canonicalize_path(path).ok()?;
    shared()
        .table
        .find(h.name(), p.matched())
        .map(|r| r.name.to_string())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn every_spelling_of_a_protected_path_gets_its_route_or_is_refused(
        choices in proptest::collection::vec(any::<u8>(), 8..40),
        which in 0usize..4,
        port in prop_oneof![Just(String::new()), Just(":".to_owned()), Just(":80".to_owned()), Just(":0080".to_owned())],
        dot in any::<bool>(),
        upper in any::<bool>(),
    ) {
        let (host, canonical) = [
            ("app.test", "/admin/secret"),
            ("mixed.test", "/api/secret"),
            ("legacy.test", "/admin/secret"),
            ("admin.test", "/anything/at/all"),
        ][which];
        let case = host == "legacy.test";
        let variant = spell(canonical, &choices, case);
        let mut host_variant = if upper { host.to_ascii_uppercase() } else { host.to_owned() };
        if dot {
            host_variant.push('.');
        }
        host_variant.push_str(&port);
        let expected = route_of(host, canonical);
        prop_assert!(expected.is_some());
        let got = route_of(&host_variant, &variant);
        prop_assert!(
            got.is_none() || got == expected,
            "{host_variant} {variant}: route {got:?}, canonical {expected:?}"
        );

        // Through the real gateway: without a token, refused (400, or the
        // protected route's 401); with an admin token, either refused with
        // 400 or forwarded as the canonical path.
        let s = shared();
        let before = s.backend.hits();
        let anon = s.rt.block_on(get_raw(s.addr, &variant, &host_variant, None));
        prop_assert!(anon == 400 || anon == 401, "{host_variant} {variant}: {anon}");
        prop_assert_eq!(s.backend.hits(), before);
        let admin = s.rt.block_on(get_raw(s.addr, &variant, &host_variant, Some(&admin_token())));
        prop_assert!(admin == 400 || admin == 200, "{host_variant} {variant}: {admin}");
        if admin == 200 {
            let seen = s.backend.last();
            let stripped: String = seen
                .path
                .split('/')
                .map(|seg| seg.split(';').next().unwrap_or(""))
                .collect::<Vec<_>>()
                .join("/");
            prop_assert!(
                if case { stripped.eq_ignore_ascii_case(canonical) } else { stripped == canonical },
                "{variant} reached the backend as {}", seen.path
            );
            let host_seen = seen.headers["host"].to_str().unwrap_or("").to_owned();
            prop_assert!(host_seen == host || host_seen == format!("{host}:80"), "{host_seen}");
        }
    }
}
