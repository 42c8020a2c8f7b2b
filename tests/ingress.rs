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

fn fill(s: &str, listen: u16, gatehouse: SocketAddr, app: SocketAddr) -> String {
    s.replace("LISTEN", &listen.to_string())
        .replace("GATEHOUSE", &gatehouse.to_string())
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

async fn start_nginx(gatehouse: SocketAddr, app: SocketAddr) -> Ingress {
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

async fn start_caddy(gatehouse: SocketAddr, app: SocketAddr) -> Ingress {
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
    gatehouse_trusting(ingress, dir, "127.0.0.1/32").await
}

async fn gatehouse_trusting(
    ingress: &str,
    dir: &Path,
    trusted: &str,
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
        &format!(
            "listeners:\n  - address: 127.0.0.1:0\n    auth_server: {{ ingress: {ingress} }}\n"
        ),
    );
    yaml = yaml.replace(
        "routes:\n  - path_prefix: /\n",
        &format!(
            "routes:\n  - name: admin\n    path_prefix: /admin\n    backends: [http://{unused_backend}]\n    require: {{ scopes: [admin] }}\n    identity_headers:\n      - {{ claim: sub, header: X-Auth-Subject }}\n  \
             - path_prefix: /\n    public_paths: [/health]\n    identity_headers:\n      - {{ claim: sub, header: X-Auth-Subject }}\n      - {{ claim: email, header: X-Auth-Email }}\n"
        ),
    );
    let (gw, gdir) = start_gateway(&yaml).await;
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

fn auth(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

/// The scenarios every packaged ingress must pass, with `start` bringing
/// up that ingress in front of `app` and gatehouse.
async fn ingress_scenarios(ingress: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = Backend::start().await;
    let (gw, authority, _gdir) = gatehouse_for(ingress, dir.path()).await;
    let auth_addr = gw.addrs()[0];
    let front = match ingress {
        "nginx" => start_nginx(auth_addr, app.addr).await,
        _ => start_caddy(auth_addr, app.addr).await,
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
    ingress_scenarios("nginx").await;
}

#[tokio::test]
async fn caddy_forward_auth_to_gatehouse_enforces_tokens_revocations_and_identity() {
    ingress_scenarios("caddy").await;
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
}

#[tokio::test]
async fn an_auth_server_refuses_descriptions_from_an_address_that_is_not_an_ingress() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (gw, _a, _g) = gatehouse_trusting("nginx", dir.path(), "10.9.9.9/32").await;
    let (status, text) = raw_request(
        gw.addrs()[0],
        "GET /auth HTTP/1.1\r\nHost: app.test\r\nX-Original-Method: GET\r\nX-Original-URI: /health\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("only a configured ingress"), "{text}");
}
