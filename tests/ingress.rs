//! gatehouse as the auth server of an existing ingress: real nginx and real
//! Caddy (Debian packages; `scripts/test` installs them), each started on
//! 127.0.0.1 with the snippet from `docs/nginx.md` / `docs/caddy.md` byte
//! for byte (only the `LISTEN`, `GATEHOUSE` and `APP` placeholders
//! substituted), in front of a recording app, asking a real gatehouse
//! whose revocations come from a real authority. Traefik and Envoy are not
//! packaged here: their request shapes are replayed against the auth
//! listener directly.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use gatehouse_test_support::*;
use http::StatusCode;
use serde_json::json;
use tokio::net::TcpStream;

/// The fenced code block between `<!-- NAME-snippet-begin -->` and
/// `<!-- NAME-snippet-end -->` in `docs/FILE`.
fn snippet(file: &str, name: &str) -> String {
    let doc = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("docs")
            .join(file),
    )
    .expect("doc");
    let begin = format!("<!-- {name}-snippet-begin -->");
    let end = format!("<!-- {name}-snippet-end -->");
    let inner = &doc[doc.find(&begin).expect("begin marker") + begin.len()
        ..doc.find(&end).expect("end marker")];
    let body = inner.split_once('\n').map(|x| x.1).unwrap_or("");
    let body = body
        .trim_start_matches(|c| c != '\n')
        .trim_start_matches('\n');
    body.rsplit_once("```")
        .map(|x| x.0)
        .unwrap_or(body)
        .to_owned()
}

fn fill(s: &str, listen: u16, gatehouse: &str, app: SocketAddr) -> String {
    s.replace("LISTEN", &listen.to_string())
        .replace("GATEHOUSE", gatehouse)
        .replace("APP", &app.to_string())
}

struct Ingress {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Ingress {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_for_port(port: u16, child: &mut Child, what: &str) {
    for _ in 0..200 {
        if TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited: {status}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not listen on {port}");
}

/// `gatehouse`: `host:port`, or `unix:/path:` (nginx's way to name a Unix
/// socket in `proxy_pass`).
async fn start_nginx(gatehouse: &str, app: SocketAddr) -> Ingress {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let p = dir.path().display().to_string();
    let conf = format!(
        "pid {p}/nginx.pid;\nerror_log {p}/error.log warn;\nevents {{ worker_connections 256; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {p}/body;\n  proxy_temp_path {p}/proxy;\n  \
         fastcgi_temp_path {p}/fastcgi;\n  uwsgi_temp_path {p}/uwsgi;\n  scgi_temp_path {p}/scgi;\n{}\n}}\n",
        fill(&snippet("nginx.md", "nginx"), port, gatehouse, app)
    );
    std::fs::write(dir.path().join("nginx.conf"), conf).expect("write");
    let mut child = Command::new("nginx")
        .args([
            "-p",
            &p,
            "-c",
            &format!("{p}/nginx.conf"),
            "-g",
            "daemon off; master_process off;",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("nginx (apt-get install nginx; scripts/test does)");
    wait_for_port(port, &mut child, "nginx").await;
    Ingress {
        child,
        port,
        _dir: dir,
    }
}

/// `gatehouse`: `host:port`, or `unix//path` (Caddy's network address of a
/// Unix socket).
async fn start_caddy(gatehouse: &str, app: SocketAddr) -> Ingress {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let file = dir.path().join("Caddyfile");
    std::fs::write(
        &file,
        fill(&snippet("caddy.md", "caddy"), port, gatehouse, app),
    )
    .expect("write");
    let mut child = Command::new("caddy")
        .args(["run", "--adapter", "caddyfile", "--config"])
        .arg(&file)
        .env("HOME", dir.path())
        .env("XDG_DATA_HOME", dir.path())
        .env("XDG_CONFIG_HOME", dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("caddy (apt-get install caddy; scripts/test does)");
    wait_for_port(port, &mut child, "caddy").await;
    Ingress {
        child,
        port,
        _dir: dir,
    }
}

/// A real authority in this process, and a gatehouse whose only listener
/// is an auth server for `ingress`, trusting 127.0.0.1.
async fn gatehouse_for(
    ingress: &str,
    dir: &Path,
) -> (
    std::sync::Arc<gatehouse::server::Gateway>,
    gatehouse::authority::AuthorityHandle,
    tempfile::TempDir,
) {
    gatehouse_trusting(ingress, dir, "127.0.0.1/32", "127.0.0.1:0").await
}

/// As [`gatehouse_for`], with the auth listener on `address` (a TCP
/// address or `unix:/path`) and `trusted` as `trusted_proxies`.
async fn gatehouse_trusting(
    ingress: &str,
    dir: &Path,
    trusted: &str,
    address: &str,
) -> (
    std::sync::Arc<gatehouse::server::Gateway>,
    gatehouse::authority::AuthorityHandle,
    tempfile::TempDir,
) {
    gatehouse_tuned(ingress, dir, trusted, address, |y| y).await
}

/// As [`gatehouse_trusting`], with `tune` applied to the gateway's YAML.
async fn gatehouse_tuned(
    ingress: &str,
    dir: &Path,
    trusted: &str,
    address: &str,
    tune: impl FnOnce(String) -> String,
) -> (
    std::sync::Arc<gatehouse::server::Gateway>,
    gatehouse::authority::AuthorityHandle,
    tempfile::TempDir,
) {
    crypto();
    let auth_path = dir.join("authority.yaml");
    let rs256 = yaml::Issuer::test()
        .with("algorithms", "[RS256]")
        .with("max_token_lifetime", "1h");
    std::fs::write(
        &auth_path,
        yaml::Config::authority(yaml::Authority::redb(dir, 0))
            .issuers(vec![rs256])
            .yaml(),
    )
    .expect("write");
    let loaded = gatehouse::config::load_for(&auth_path, gatehouse::config::Mode::Authority)
        .unwrap_or_else(|e| panic!("{e}"));
    let section = loaded.config.authority.clone().expect("authority");
    let authority = gatehouse::authority::start(&section.value, &loaded)
        .await
        .expect("authority");
    let unused_backend = "127.0.0.1:9";
    let mut yaml = revocation_gateway_yaml(
        unused_backend.parse().expect("addr"),
        &[format!("http://{}", authority.addr())],
        &dir.join("gw.state"),
        &format!("trusted_proxies: [{trusted}]"),
    );
    yaml = yaml.replace(
        "listeners:\n  - address: 127.0.0.1:0\n",
        &format!("listeners:\n  - address: {address}\n    auth_server: {{ ingress: {ingress} }}\n"),
    );
    yaml = yaml.replace(
        "routes:\n  - path_prefix: /\n",
        &format!(
            "routes:\n  - name: admin\n    path_prefix: /admin\n    backends: [http://{unused_backend}]\n    require: {{ scopes: [admin] }}\n    identity_headers:\n      - {{ claim: sub, header: X-Auth-Subject }}\n  \
             - path_prefix: /\n    public_paths: [/health]\n    identity_headers:\n      - {{ claim: sub, header: X-Auth-Subject }}\n      - {{ claim: email, header: X-Auth-Email }}\n"
        ),
    );
    let (gw, gdir) = start_gateway(&tune(yaml)).await;
    (gw, authority, gdir)
}

/// One GET through the ingress, with extra header lines; status, the
/// whole answer.
async fn through(port: u16, target: &str, headers: &[String]) -> (u16, String) {
    let mut head = format!("GET {target} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n");
    for h in headers {
        head.push_str(h);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    raw_request(([127, 0, 0, 1], port).into(), &head).await
}

/// `request` with one more header line, before its last.
fn with_line(request: String, line: &str) -> String {
    request.replace("Connection: close", &format!("{line}\r\nConnection: close"))
}

fn auth(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

/// The scenarios every packaged ingress must pass, asking gatehouse over
/// TCP on loopback or, with `unix`, over a Unix domain socket (trusted by
/// the socket file, so `trusted_proxies` then names no local address).
async fn ingress_scenarios(ingress: &str, unix: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = Backend::start().await;
    let socket = dir.path().join("auth.sock");
    let (gw, authority, _gdir) = if unix {
        let address = format!("unix:{}", socket.display());
        gatehouse_trusting(ingress, dir.path(), "192.0.2.1/32", &address).await
    } else {
        gatehouse_for(ingress, dir.path()).await
    };
    let gatehouse = match (unix, ingress) {
        (true, "nginx") => format!("unix:{}:", socket.display()),
        (true, _) => format!("unix/{}", socket.display()),
        (false, _) => gw.addrs()[0].to_string(),
    };
    let front = match ingress {
        "nginx" => start_nginx(&gatehouse, app.addr).await,
        _ => start_caddy(&gatehouse, app.addr).await,
    };
    let port = front.port;

    // A valid token: the app sees gatehouse's identity headers, and not
    // the client's copies.
    let alice = token_with(|c| {
        c.insert("sub".into(), json!("alice"));
        c.insert("email".into(), json!("alice@example.test"));
    });
    let (status, text) = through(
        port,
        "/orders",
        &[
            auth(&alice),
            "X-Auth-Subject: admin".into(),
            "X-Auth-Email: root@evil".into(),
        ],
    )
    .await;
    assert_eq!(status, 200, "{ingress}: {text}");
    let seen = app.last();
    assert_eq!(seen.headers["x-auth-subject"], "alice", "{ingress}");
    assert_eq!(
        seen.headers["x-auth-email"], "alice@example.test",
        "{ingress}"
    );
    assert_eq!(seen.headers.get_all("x-auth-subject").iter().count(), 1);

    // No token: 401 with the RFC 6750 challenge; the app never sees it.
    let hits = app.hits();
    let (status, text) = through(port, "/orders", &[]).await;
    assert_eq!(status, 401, "{ingress}: {text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("www-authenticate: bearer realm=\"gatehouse\""),
        "{ingress}: {text}"
    );
    assert_eq!(
        text.to_ascii_lowercase()
            .matches("www-authenticate:")
            .count(),
        1,
        "{ingress}: one challenge: {text}"
    );
    assert_eq!(app.hits(), hits);

    // A public path passes without a token, and a spoofed identity header
    // does not reach the app on it.
    let (status, _) = through(
        port,
        "/health",
        &[
            "X-Auth-Subject: admin".into(),
            "X_Auth_Subject: admin".into(),
        ],
    )
    .await;
    assert_eq!(status, 200, "{ingress}");
    let seen = app.last();
    for (name, value) in seen.headers.iter() {
        // Caddy 2.6's copy_headers sets a header the auth answer lacks to
        // the empty string: no identity, not the client's.
        assert!(
            !gatehouse::proxy::headers::same_field(name.as_str(), "x-auth-subject")
                || value.is_empty(),
            "{ingress}: a client's {name}: {value:?} reached the app"
        );
    }

    // The client's copies of the headers that frameworks route on or
    // trust as the request's origin do not reach the app either.
    let forged = [
        ("x-original-url", "/admin"),
        ("x-original-uri", "/admin"),
        ("x-original-method", "DELETE"),
        ("x-rewrite-url", "/admin"),
        ("x-script-name", "/health"),
        ("proxy", "http://evil.test:1"),
        ("x-envoy-original-path", "/admin"),
        ("x-forwarded-prefix", "/admin"),
        ("x-forwarded-uri", "/admin"),
        ("x-forwarded-method", "DELETE"),
        ("x-forwarded-host", "evil.test"),
        ("x-forwarded-port", "8443"),
        ("x-forwarded-ssl", "on"),
        ("x-forwarded-scheme", "https-evil"),
        ("front-end-https", "on"),
        ("x-forwarded-for", "203.0.113.66"),
        ("forwarded", "for=203.0.113.66;host=evil.test"),
        ("x-real-ip", "203.0.113.66"),
        ("x-client-ip", "203.0.113.66"),
        ("true-client-ip", "203.0.113.66"),
    ];
    let mut lines: Vec<String> = forged.iter().map(|(n, v)| format!("{n}: {v}")).collect();
    lines.push(auth(&alice));
    let (status, text) = through(port, "/orders", &lines).await;
    assert_eq!(status, 200, "{ingress}: {text}");
    let seen = app.last();
    for (name, value) in forged {
        for got in seen.headers.get_all(name) {
            assert!(
                !got.to_str().unwrap_or("").contains(value),
                "{ingress}: the client's {name}: {value} reached the app as {got:?}"
            );
        }
    }
    // The token stays with the ingress and gatehouse, as in proxy mode.
    assert!(
        !seen.headers.contains_key("authorization"),
        "{ingress}: the client's token reached the app"
    );
    // Spelled with underscores, which CGI and WSGI apps read as the
    // header itself: nginx drops such names, Caddy passes them on and
    // gatehouse refuses the request.
    for spelling in ["X_Original_URL", "X_Forwarded_Prefix", "X_Forwarded_For"] {
        let hits = app.hits();
        let (status, text) = through(port, "/health", &[format!("{spelling}: /admin")]).await;
        if status == 200 {
            let seen = app.last();
            for (name, value) in seen.headers.iter() {
                assert!(
                    !name.as_str().contains('_'),
                    "{ingress}: {spelling} reached the app as {name}: {value:?}"
                );
            }
        } else {
            assert_eq!(status, 400, "{ingress}: {spelling}: {text}");
            assert_eq!(app.hits(), hits, "{ingress}: {spelling}");
        }
    }
    // More header fields than gatehouse takes (nginx adds its own to the
    // question): the client's fault, 431 through either ingress.
    let many: Vec<String> = (0..96).map(|i| format!("X-Pad-{i}: v")).collect();
    let hits = app.hits();
    let (status, text) = through(port, "/health", &many).await;
    assert_eq!(status, 431, "{ingress}: {text}");
    assert_eq!(app.hits(), hits, "{ingress}");

    // Spellings a CGI backend reads as X-Auth-Subject that the snippets do
    // not name: nginx drops them, gatehouse refuses them; either way no
    // app sees one.
    for spelling in ["X.Auth.Subject", "X~Auth~Subject", "X-AUTH_subject"] {
        let hits = app.hits();
        let (status, text) = through(port, "/health", &[format!("{spelling}: admin")]).await;
        if status == 200 {
            let seen = app.last();
            for (name, value) in seen.headers.iter() {
                assert!(
                    !gatehouse::proxy::headers::same_field(name.as_str(), "x-auth-subject")
                        || value.is_empty(),
                    "{ingress}: {spelling} reached the app as {name}: {value:?}"
                );
            }
        } else {
            assert_eq!(app.hits(), hits, "{ingress}: {spelling}: {status} {text}");
        }
    }

    // Path-encoding variants are judged like their canonical form.
    let (status, text) = through(port, "/%61dmin/x", &[auth(&alice)]).await;
    assert_eq!(status, 403, "{ingress}: {text}");
    let admin_token = token_with(|c| {
        c.insert("scope".into(), json!("admin"));
    });
    assert_eq!(
        through(port, "/%61dmin/x", &[auth(&admin_token)]).await.0,
        200,
        "{ingress}"
    );
    // The admin route sets fewer identity headers than the one the
    // ingress config copies for: the app sees none of the others, never an
    // ingress's placeholder text.
    for (name, value) in app.last().headers.iter() {
        assert!(
            !value.to_str().unwrap_or("").contains('{'),
            "{ingress}: {name}: {value:?} reached the app"
        );
    }

    // A fragment in the target is not cut off and judged as what precedes
    // it: the request never reaches the app.
    let hits = app.hits();
    let (status, text) = through(port, "/health#/../admin", &[]).await;
    assert_ne!(status, 200, "{ingress}: {text}");
    assert_eq!(app.hits(), hits, "{ingress}");

    // A target gatehouse cannot read is the client's fault: 400 through
    // either ingress (nginx's auth_request would make it 500; the
    // snippet gives the client gatehouse's status), never a forward. So
    // is an HTTP/1.0 request without `Host`, which nginx describes with
    // an empty host.
    let hits = app.hits();
    let (status, text) = through(port, "/a%2fb", &[]).await;
    assert_eq!(status, 400, "{ingress}: {text}");
    let (status, text) = raw_request(
        ([127, 0, 0, 1], port).into(),
        "GET /health HTTP/1.0\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "{ingress}: {text}");
    assert_eq!(app.hits(), hits, "{ingress}");

    // Dot and empty segments reach the app as the client wrote them, and
    // apps read them differently (Node takes `//static/admin` for host
    // `static`, path `/admin`): never judged by their resolved form, so
    // neither a public path nor a route without `require` opens another.
    for target in [
        "/admin//../health",
        "//health/admin",
        "/admin/..;/health",
        "/admin/%2e%2e/health",
        "/admin/./x",
    ] {
        let hits = app.hits();
        let (status, text) = through(port, target, &[]).await;
        assert_ne!(status, 200, "{ingress}: {target}: {text}");
        assert_eq!(app.hits(), hits, "{ingress}: {target} reached the app");
    }
    let hits = app.hits();
    let (status, text) = through(port, "/admin//..", &[auth(&alice)]).await;
    assert_ne!(status, 200, "{ingress}: {text}");
    assert_eq!(app.hits(), hits, "{ingress}: /admin//.. reached the app");

    // Revoked at the authority: refused through the ingress within a second.
    let a = admin(
        authority.addr(),
        "POST",
        "/v1/revocations",
        Some(json!({"sub": "alice", "reason": "forced_logout"})),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let start = std::time::Instant::now();
    loop {
        let (status, _) = through(port, "/orders", &[auth(&alice)]).await;
        if status == 401 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "{ingress}: still {status} after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn nginx_auth_request_to_gatehouse_enforces_tokens_revocations_and_identity() {
    ingress_scenarios("nginx", false).await;
}

#[tokio::test]
async fn nginx_asking_over_a_unix_socket_gets_the_same_decisions() {
    ingress_scenarios("nginx", true).await;
}

#[tokio::test]
async fn caddy_forward_auth_to_gatehouse_enforces_tokens_revocations_and_identity() {
    ingress_scenarios("caddy", false).await;
}

#[tokio::test]
async fn caddy_asking_over_a_unix_socket_gets_the_same_decisions() {
    ingress_scenarios("caddy", true).await;
}

#[tokio::test]
async fn traefik_and_envoy_request_shapes_are_judged_like_the_original_request() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = token_with(|c| {
        c.insert("sub".into(), json!("alice"));
    });
    // Traefik forwardAuth: GET to the configured address, the original
    // request in X-Forwarded-*, the client's headers copied.
    let (gw, _a, _g) = gatehouse_for("traefik", dir.path()).await;
    let addr = gw.addrs()[0];
    let traefik = |target: &str, token: Option<&str>| {
        format!(
            "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Forwarded-Method: GET\r\nX-Forwarded-Proto: https\r\n\
             X-Forwarded-Host: app.test\r\nX-Forwarded-Uri: {target}\r\nX-Forwarded-For: 203.0.113.9\r\n{}Connection: close\r\n\r\n",
            token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"))
        )
    };
    let (status, text) = raw_request(addr, &traefik("/orders?x=1", Some(&alice))).await;
    assert_eq!(status, 200, "{text}");
    assert!(
        text.to_ascii_lowercase().contains("x-auth-subject: alice"),
        "{text}"
    );
    assert!(
        text.to_ascii_lowercase()
            .contains("cache-control: no-store"),
        "{text}"
    );
    assert_eq!(raw_request(addr, &traefik("/orders", None)).await.0, 401);
    assert_eq!(
        raw_request(addr, &traefik("/%61dmin/x", Some(&alice)))
            .await
            .0,
        403
    );
    assert_eq!(raw_request(addr, &traefik("/health", None)).await.0, 200);
    assert_eq!(raw_request(addr, &traefik("/a%2fb", None)).await.0, 400);
    assert_eq!(
        raw_request(addr, &traefik("/health#/../admin", None))
            .await
            .0,
        400
    );
    for target in ["/admin//../health", "//health/admin", "/admin/..;/health"] {
        let (status, text) = raw_request(addr, &traefik(target, None)).await;
        assert_eq!(status, 400, "{target}: {text}");
    }
    // Traefik forwards the client's headers as they came: another spelling
    // of an identity header is refused, the header's own name is not.
    let spelled = with_line(traefik("/health", None), "X.Auth.Subject: admin");
    let (status, text) = raw_request(addr, &spelled).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("spells an identity header"), "{text}");
    let own = with_line(traefik("/health", None), "X-Auth-Subject: admin");
    assert_eq!(raw_request(addr, &own).await.0, 200);
    // So is another spelling of a forwarding header, which a CGI or WSGI
    // app would read as X-Original-URL.
    let spelled = with_line(traefik("/health", None), "X_Original_URL: /admin");
    let (status, text) = raw_request(addr, &spelled).await;
    assert_eq!(status, 400, "{text}");
    assert!(text.contains("spells a forwarding header"), "{text}");
    // Without the description, nothing is decided.
    let (status, _) = raw_request(
        addr,
        "GET / HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400);

    // Envoy ext_authz HTTP service: the original method and headers, the
    // path after the configured prefix.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let (gw, _a2, _g2) = gatehouse_for("envoy, path_prefix: /ext_authz", dir2.path()).await;
    let addr = gw.addrs()[0];
    let envoy = |target: &str, token: Option<&str>| {
        format!(
            "GET /ext_authz{target} HTTP/1.1\r\nHost: app.test\r\n{}Connection: close\r\n\r\n",
            token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"))
        )
    };
    let (status, text) = raw_request(addr, &envoy("/orders?x=1", Some(&alice))).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(raw_request(addr, &envoy("/orders", None)).await.0, 401);
    assert_eq!(
        raw_request(addr, &envoy("/%61dmin/x", Some(&alice)))
            .await
            .0,
        403
    );
    let (status, _) = raw_request(
        addr,
        "GET /elsewhere/orders HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "a path outside the prefix describes nothing");
    // A request target that is not a path (authority form, a bare word)
    // describes no path of the client's: refused, not judged as `/`.
    for line in ["GET health HTTP/1.1", "CONNECT app.test:443 HTTP/1.1"] {
        let (status, text) = raw_request(
            addr,
            &format!("{line}\r\nHost: app.test\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert_eq!(status, 400, "{line}: {text}");
    }
    for target in [
        "/admin//../health",
        "//health/admin",
        "/health/%2e%2e/admin",
    ] {
        let (status, text) = raw_request(addr, &envoy(target, None)).await;
        assert_eq!(status, 400, "{target}: {text}");
    }
    // docs/envoy.md has Envoy pass the client's X headers too, so another
    // spelling of an identity header is seen, and refused.
    let spelled = with_line(envoy("/health", None), "X_Auth_Subject: admin");
    let (status, text) = raw_request(addr, &spelled).await;
    assert_eq!(status, 400, "{text}");
}

#[tokio::test]
async fn an_auth_server_refuses_descriptions_from_an_address_that_is_not_an_ingress() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _a, _g) = gatehouse_trusting("nginx", dir.path(), "10.9.9.9/32", "127.0.0.1:0").await;
    let (status, text) = raw_request(
        gw.addrs()[0],
        "GET /auth HTTP/1.1\r\nHost: app.test\r\nX-Original-Method: GET\r\nX-Original-URI: /health\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("only a configured ingress"), "{text}");
}

/// A route with browser login (`login`) asked about through an ingress:
/// the auth server cannot run the login (an ingress passes on only 2xx,
/// 401 and 403 of its auth server; a redirect or a login page would be an
/// error or a pass), so it answers as for a missing token: 401 with the
/// bare challenge, never an allow, a redirect or a `Set-Cookie`. A
/// session cookie that does not open (forged, or sealed by other keys)
/// changes nothing.
#[tokio::test]
async fn a_login_route_asked_about_by_an_ingress_is_refused_without_a_redirect() {
    let dir = tempfile::tempdir().expect("tempdir");
    let session_key = dir.path().join("session.key");
    std::fs::write(&session_key, [7u8; 32]).expect("write");
    let secret = dir.path().join("web.secret");
    std::fs::write(&secret, "web-secret").expect("write");
    let (gw, _a, _g) = gatehouse_tuned("nginx", dir.path(), "127.0.0.1/32", "127.0.0.1:0", |y| {
        let y = y.replace(
            "routes:\n",
            &format!(
                "routes:\n  - path_prefix: /portal\n    backends: [http://127.0.0.1:9]\n    login: {{ issuer: {ISS}, client_id: web, client_secret: {{ file: {} }}, \
                 callback_path: /portal/callback, logout_path: /portal/logout, \
                 authorization_endpoint: http://127.0.0.1:9/authorize, token_endpoint: http://127.0.0.1:9/token }}\n",
                secret.display()
            ),
        );
        format!(
            "{y}sessions:\n  keys: [{{ file: {} }}]\n",
            session_key.display()
        )
    })
    .await;
    let ask = |target: &str, extra: &str| {
        format!(
            "GET /auth HTTP/1.1\r\nHost: app.test\r\nX-Original-Method: GET\r\nX-Original-URI: {target}\r\n{extra}Connection: close\r\n\r\n"
        )
    };
    for (target, extra) in [
        ("/portal/", ""),
        ("/portal/callback?code=x&state=y", ""),
        ("/portal/", "Cookie: __Host-gatehouse=forged.value\r\n"),
    ] {
        let (status, text) = raw_request(gw.addrs()[0], &ask(target, extra)).await;
        assert_eq!(status, 401, "{target}: {text}");
        let lower = text.to_ascii_lowercase();
        assert!(
            lower.contains("www-authenticate: bearer realm="),
            "{target}: {text}"
        );
        assert!(!lower.contains("location:"), "{target}: {text}");
        assert!(!lower.contains("set-cookie:"), "{target}: {text}");
        assert!(!lower.contains("x-auth-subject"), "{target}: {text}");
    }
    // A bearer token still opens the route, as in proxy mode.
    let alice = token_with(|c| {
        c.insert("sub".into(), json!("alice"));
    });
    let (status, text) = raw_request(
        gw.addrs()[0],
        &ask("/portal/", &format!("{}\r\n", auth(&alice))),
    )
    .await;
    assert_eq!(status, 200, "{text}");
}

/// The socket file's life: made with the configured mode before anyone can
/// connect, a stale one (its process gone) replaced, a live one or a file
/// that is not a socket refused, and removed at shutdown.
#[tokio::test]
async fn a_unix_socket_listener_is_made_with_its_mode_replaces_a_stale_socket_and_is_removed_at_shutdown(
) {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("auth.sock");
    // A socket file nobody accepts on, as a killed process leaves it.
    drop(std::os::unix::net::UnixListener::bind(&socket).expect("bind"));
    assert!(socket.exists());
    let yaml = |mode: &str| {
        format!(
            "listeners:\n  - address: unix:{}\n    socket_mode: \"{mode}\"\n    auth_server: {{ ingress: nginx }}\n\
             issuers:\n  - issuer: https://issuer.test\n    audiences: [api]\n    algorithms: [RS256]\n    jwks: {{ file: {} }}\n\
             routes:\n  - backends: [http://127.0.0.1:9]\n    public_paths: [/health]\n",
            socket.display(),
            fixture("jwks.json").display()
        )
    };
    let (gw, _g) = start_gateway(&yaml("0600")).await;
    let meta = std::fs::symlink_metadata(&socket).expect("socket file");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    // Made in a private directory and renamed into place: nothing is left
    // beside it.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("read dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, vec!["auth.sock".to_owned()]);
    // Trusted as the ingress by the socket alone: no trusted_proxies.
    let text = unix_exchange(
        &socket,
        "GET /auth HTTP/1.1\r\nHost: app.test\r\nX-Original-Method: GET\r\nX-Original-URI: /health\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(
        text.to_ascii_lowercase()
            .contains("cache-control: no-store"),
        "{text}"
    );
    let text = unix_exchange(
        &socket,
        "GET /auth HTTP/1.1\r\nHost: app.test\r\nX-Original-Method: GET\r\nX-Original-URI: /orders\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");

    // A second gateway on the same live socket is refused, naming it.
    let path = dir.path().join("second.yaml");
    std::fs::write(&path, yaml("0660")).expect("write");
    let loaded = gatehouse::config::load(&path).expect("config");
    let err = match gatehouse::server::start(&loaded).await {
        Ok(_) => panic!("a second gateway took a live socket"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("auth.sock") && err.contains("another process"),
        "{err}"
    );

    gw.shutdown(Duration::from_secs(1)).await;
    assert!(!socket.exists(), "the socket file outlived the gateway");

    // A file that is not a socket is never removed to make room.
    std::fs::write(&socket, "data").expect("write");
    let err = match gatehouse::server::start(&loaded).await {
        Ok(_) => panic!("a regular file was replaced by a socket"),
        Err(e) => format!("{e:#}"),
    };
    assert!(err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&socket).expect("read"), "data");

    // A live socket whose backlog is full is live: the start says so at
    // once instead of waiting in connect() for ever.
    std::fs::remove_file(&socket).expect("remove");
    let busy =
        socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).expect("socket");
    busy.bind(&socket2::SockAddr::unix(&socket).expect("addr"))
        .expect("bind");
    busy.listen(0).expect("listen");
    let mut queued = Vec::new();
    loop {
        let c = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None)
            .expect("socket");
        c.set_nonblocking(true).expect("nonblocking");
        match c.connect(&socket2::SockAddr::unix(&socket).expect("addr")) {
            Ok(()) => queued.push(c),
            Err(_) => break,
        }
        assert!(queued.len() < 64, "the backlog never filled");
    }
    // On a thread of its own: a start stuck in a blocking call fails the
    // test after 10 s instead of hanging it.
    let (tx, rx) = std::sync::mpsc::channel();
    let second = loaded.clone();
    std::thread::spawn(move || {
        let started = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(gatehouse::server::start(&second))
            .map(|_| ())
            .map_err(|e| format!("{e:#}"));
        let _ = tx.send(started);
    });
    let err = match rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the start answered instead of hanging")
    {
        Ok(()) => panic!("a live socket was taken over"),
        Err(e) => e,
    };
    assert!(err.contains("backlog is full"), "{err}");
}

/// Connects to the socket at `path`, writes `request` and reads the whole
/// answer (the request closes).
async fn unix_exchange(path: &Path, request: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(path)
        .await
        .expect("connect");
    s.write_all(request.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("answered in time")
        .expect("read");
    String::from_utf8_lossy(&out).into_owned()
}

/// The access log of an auth server names the request the ingress
/// described, not the ingress's own exchange, and a socket's peer as
/// `unix`.
#[tokio::test]
async fn the_access_log_shows_the_described_request_and_the_socket_peer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("auth.sock");
    let yaml = format!(
        "listeners:\n  - address: 127.0.0.1:0\n    auth_server: {{ ingress: nginx }}\n  - address: unix:{}\n    auth_server: {{ ingress: nginx }}\n\
         trusted_proxies: [127.0.0.1/32]\n\
         issuers:\n  - issuer: https://issuer.test\n    audiences: [api]\n    algorithms: [RS256]\n    jwks: {{ file: {} }}\n\
         routes:\n  - name: orders\n    backends: [http://127.0.0.1:9]\n\
         logging: {{ level: info, format: json }}\n",
        socket.display(),
        fixture("jwks.json").display()
    );
    let p = Proc::start("run", &yaml, "listening");
    let described = "GET /_gatehouse HTTP/1.1\r\nHost: app.test\r\nX-Original-Method: DELETE\r\nX-Original-URI: /orders/42?token=secret\r\nConnection: close\r\n\r\n";
    let (status, text) = raw_request(p.addr, described).await;
    assert_eq!(status, 401, "{text}");
    // The TCP listener is logged first; the socket follows.
    for _ in 0..100 {
        if socket.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = unix_exchange(&socket, described).await;
    assert!(text.starts_with("HTTP/1.1 401"), "{text}");
    let seen = access_lines(&p, 2).await;
    assert_eq!(seen.len(), 2, "{seen:?}");
    for v in &seen {
        assert_eq!(v["method"], "DELETE", "{v}");
        assert_eq!(v["path"], "/orders/42", "{v}");
        assert_eq!(v["route"], "orders", "{v}");
    }
    assert_eq!(seen[0]["peer"], "127.0.0.1", "{:?}", seen[0]);
    assert_eq!(seen[1]["peer"], "unix", "{:?}", seen[1]);
}

#[tokio::test]
async fn a_head_refused_for_too_many_fields_has_its_access_log_line() {
    let yaml = format!(
        "listeners:\n  - address: 127.0.0.1:0\n    auth_server: {{ ingress: nginx }}\n\
         trusted_proxies: [127.0.0.1/32]\n\
         issuers:\n  - issuer: https://issuer.test\n    audiences: [api]\n    algorithms: [RS256]\n    jwks: {{ file: {} }}\n\
         routes:\n  - name: orders\n    backends: [http://127.0.0.1:9]\n\
         logging: {{ level: info, format: json }}\n",
        fixture("jwks.json").display()
    );
    let p = Proc::start("run", &yaml, "listening");
    let mut head = String::from("GET /_gatehouse HTTP/1.1\r\nHost: app.test\r\n");
    for i in 0..120 {
        head.push_str(&format!("X-Pad-{i}: v\r\n"));
    }
    head.push_str("Connection: close\r\n\r\n");
    let (status, text) = raw_request(p.addr, &head).await;
    assert_eq!(status, 431, "{text}");
    let seen = access_lines(&p, 1).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0]["status"], 431, "{:?}", seen[0]);
    assert_eq!(seen[0]["outcome"], "header_too_large", "{:?}", seen[0]);
    assert_eq!(seen[0]["peer"], "127.0.0.1", "{:?}", seen[0]);
}

/// The longest path `sockaddr_un` holds (107 bytes) is served: the socket
/// is made under a short name first and renamed, so nothing longer is
/// ever bound.
#[tokio::test]
async fn a_socket_path_of_the_longest_length_allowed_is_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let base = dir.path().display().to_string();
    let socket = format!("{base}/{}", "s".repeat(107 - base.len() - 1));
    assert_eq!(socket.len(), 107);
    let yaml = format!(
        "listeners:\n  - address: unix:{socket}\n    auth_server: {{ ingress: nginx }}\n\
         issuers:\n  - issuer: https://issuer.test\n    audiences: [api]\n    algorithms: [RS256]\n    jwks: {{ file: {} }}\n\
         routes:\n  - backends: [http://127.0.0.1:9]\n    public_paths: [/health]\n",
        fixture("jwks.json").display()
    );
    let (_gw, _g) = start_gateway(&yaml).await;
    let text = unix_exchange(
        Path::new(&socket),
        "GET /auth HTTP/1.1\r\nHost: app.test\r\nX-Original-Method: GET\r\nX-Original-URI: /health\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}

/// Two gateways started at once on one socket path: one serves it, the
/// other refuses to start (neither takes the other's socket for stale).
#[test]
fn of_two_gateways_started_at_once_on_one_socket_exactly_one_serves_it() {
    crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("auth.sock");
    let path = dir.path().join("gatehouse.yaml");
    std::fs::write(
        &path,
        format!(
            "listeners:\n  - address: unix:{}\n    auth_server: {{ ingress: nginx }}\n\
             issuers:\n  - issuer: https://issuer.test\n    audiences: [api]\n    algorithms: [RS256]\n    jwks: {{ file: {} }}\n\
             routes:\n  - backends: [http://127.0.0.1:9]\n",
            socket.display(),
            fixture("jwks.json").display()
        ),
    )
    .expect("write");
    let loaded = gatehouse::config::load(&path).expect("config");
    for round in 0..5 {
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
        let starts: Vec<_> = (0..2)
            .map(|_| {
                let (loaded, barrier) = (loaded.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("runtime");
                    barrier.wait();
                    let gw = rt.block_on(gatehouse::server::start(&loaded)).ok();
                    // Keep a started one (and its runtime) until both are in.
                    (gw.is_some(), gw, rt)
                })
            })
            .collect();
        let results: Vec<_> = starts
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        let served = results.iter().filter(|r| r.0).count();
        assert_eq!(served, 1, "round {round}: {served} gateways started");
        drop(results);
        let _ = std::fs::remove_file(&socket);
    }
}

/// All that arrives on one connection until it closes (at most 10 s).
async fn exchange(addr: std::net::SocketAddr, bytes: &[u8]) -> (String, std::time::Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let began = std::time::Instant::now();
    s.write_all(bytes).await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    (String::from_utf8_lossy(&buf).into_owned(), began.elapsed())
}

fn statuses(text: &str) -> Vec<&str> {
    text.match_indices("HTTP/1.1 ")
        .map(|(i, _)| &text[i + 9..i + 12])
        .collect()
}

#[tokio::test]
async fn an_ingress_asking_several_questions_on_one_connection_gets_each_answer_in_order() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = token_with(|c| {
        c.insert("sub".into(), json!("alice"));
    });
    let (gw, _a, _g) = gatehouse_for("nginx", dir.path()).await;
    let addr = gw.addrs()[0];
    let ask = |method: &str, target: &str, extra: &str| {
        format!(
            "{method} /_gatehouse HTTP/1.1\r\nHost: app.test\r\nX-Original-URI: {target}\r\n\
             X-Original-Method: GET\r\n{extra}\r\n"
        )
    };
    // Pipelined in one write (RFC 9112 §9.3.2): an allow, a refusal whose
    // body a HEAD answer leaves out, a refusal with its body, and a last
    // question that closes the connection.
    let questions = [
        ask("GET", "/orders", &format!("{}\r\n", auth(&alice))),
        ask("HEAD", "/orders", ""),
        ask("GET", "/orders", ""),
        ask("GET", "/health", "Connection: close\r\n"),
    ]
    .concat();
    let (text, _) = exchange(addr, questions.as_bytes()).await;
    assert_eq!(statuses(&text), ["200", "401", "401", "200"], "{text}");
    let answers: Vec<&str> = text.split("HTTP/1.1 ").skip(1).collect();
    assert!(
        answers[0]
            .to_ascii_lowercase()
            .contains("x-auth-subject: alice"),
        "{text}"
    );
    assert!(answers[0].contains("cache-control: no-store\r\n"), "{text}");
    // The HEAD answer has the refusal's length and none of its body: the
    // next answer starts right after its empty line.
    assert!(answers[1].contains("www-authenticate: Bearer"), "{text}");
    assert!(!answers[1].contains("content-length: 0\r\n"), "{text}");
    assert!(answers[1].ends_with("\r\n\r\n"), "{text}");
    assert!(answers[2].contains("content-length: ") && !answers[2].ends_with("\r\n\r\n"));
    assert!(answers[3].contains("connection: close\r\n"), "{text}");
    assert!(answers.iter().all(|a| a.contains("\r\ndate: ")), "{text}");

    // HTTP/1.0 closes unless asked to keep the connection alive.
    let old = "GET /_gatehouse HTTP/1.0\r\nHost: app.test\r\nX-Original-URI: /health\r\n\
               X-Original-Method: GET\r\n\r\n";
    let (text, _) = exchange(addr, format!("{old}{old}").as_bytes()).await;
    assert_eq!(statuses(&text), ["200"], "{text}");
    let kept = old.replace("\r\n\r\n", "\r\nConnection: keep-alive\r\n\r\n");
    let (text, _) = exchange(addr, format!("{kept}{old}").as_bytes()).await;
    assert_eq!(statuses(&text), ["200", "200"], "{text}");
    assert!(text.contains("connection: keep-alive\r\n"), "{text}");
    // Empty lines before a request line are ignored (RFC 9112 §2.2), and a
    // head sent a few bytes at a time is answered once whole.
    let q = "GET /_gatehouse HTTP/1.1\r\nHost: app.test\r\nX-Original-URI: /health\r\n\
             X-Original-Method: GET\r\nConnection: close\r\n\r\n";
    let mut s = TcpStream::connect(addr).await.expect("connect");
    {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        for piece in format!("\r\n\r\n{q}").as_bytes().chunks(7) {
            s.write_all(piece).await.expect("write");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let mut got = String::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut got)).await;
        assert_eq!(statuses(&got), ["200"], "{got}");
    }
}

#[tokio::test]
async fn a_question_with_a_body_is_refused_and_the_body_never_read_as_a_question() {
    let dir = tempfile::tempdir().expect("tempdir");
    let alice = token_with(|c| {
        c.insert("sub".into(), json!("alice"));
    });
    let (gw, _a, _g) = gatehouse_for("nginx", dir.path()).await;
    let addr = gw.addrs()[0];
    // The "body" is a question of its own that would be allowed: were the
    // body's bytes read as the next request, its 200 would answer a
    // question the ingress asks next on this connection.
    let inner = format!(
        "GET /_gatehouse HTTP/1.1\r\nHost: app.test\r\nX-Original-URI: /orders\r\n\
         X-Original-Method: GET\r\n{}\r\n\r\n",
        auth(&alice)
    );
    for framing in [
        format!("Content-Length: {}", inner.len()),
        "Transfer-Encoding: chunked".to_string(),
        "Content-Length: 1, 1".to_string(),
    ] {
        let outer = format!(
            "POST /_gatehouse HTTP/1.1\r\nHost: app.test\r\nX-Original-URI: /orders\r\n\
             X-Original-Method: POST\r\n{framing}\r\n\r\n{inner}"
        );
        let (text, _) = exchange(addr, outer.as_bytes()).await;
        assert_eq!(statuses(&text), ["400"], "{framing}: {text}");
        assert!(text.contains("connection: close\r\n"), "{text}");
        assert!(text.contains("cache-control: no-store\r\n"), "{text}");
    }
    // An HTTP/1.1 question without Host, or with two, is refused (RFC 9112
    // §3.2).
    let (text, _) = exchange(
        addr,
        b"GET /_gatehouse HTTP/1.1\r\nX-Original-URI: /health\r\nX-Original-Method: GET\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&text), ["400"], "{text}");
    let (text, _) = exchange(
        addr,
        b"GET /_gatehouse HTTP/1.1\r\nHost: a\r\nHost: b\r\nX-Original-URI: /health\r\nX-Original-Method: GET\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&text), ["400"], "{text}");
}

#[tokio::test]
async fn an_auth_server_closes_a_slow_head_but_keeps_an_idle_ingress_connection_until_the_idle_timeout(
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _a, _g) = gatehouse_tuned("nginx", dir.path(), "127.0.0.1/32", "127.0.0.1:0", |y| {
        format!("{y}limits:\n  header_read_timeout: 1s\n  idle_timeout: 4s\n")
    })
    .await;
    let addr = gw.addrs()[0];
    // A head that never ends is cut off at the header read timeout.
    let (text, took) = exchange(addr, b"GET /_gatehouse HTTP/1.1\r\nHost: app.test\r\n").await;
    assert!(text.is_empty(), "{text}");
    assert!(took < Duration::from_secs(4), "closed after {took:?}");
    // A kept-alive connection waiting between questions is not a slow
    // head: it is still served past the header read timeout.
    let q = "GET /_gatehouse HTTP/1.1\r\nHost: app.test\r\nX-Original-URI: /health\r\n\
             X-Original-Method: GET\r\n\r\n";
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(q.as_bytes()).await.expect("write");
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.expect("read");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
    tokio::time::sleep(Duration::from_millis(2000)).await;
    s.write_all(q.as_bytes()).await.expect("write");
    let n = s.read(&mut buf).await.expect("read");
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "a kept-alive connection was closed before its idle timeout"
    );
    // And then closed once idle for the idle timeout.
    let began = std::time::Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(15), s.read(&mut buf))
        .await
        .expect("closed within 15 s")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(
        began.elapsed() >= Duration::from_secs(3),
        "{:?}",
        began.elapsed()
    );
}

/// The process's JSON access-log lines, once at least `n` have been
/// written (or after 5 s, whatever is there).
async fn access_lines(p: &Proc, n: usize) -> Vec<serde_json::Value> {
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = p
            .lines
            .lock()
            .expect("lines")
            .iter()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["target"] == "gatehouse::access")
            .collect();
        if seen.len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    seen
}
