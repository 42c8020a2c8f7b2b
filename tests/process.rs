//! The `gatehouse` binary as an operator runs it: separate process, its own
//! memory, signals, exit codes.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use gatehouse_test_support::*;
use http::StatusCode;
use http_body_util::BodyExt;
use jsonwebtoken::Algorithm;

fn plain_config(backend: SocketAddr) -> String {
    let f = |n: &str| fixture(n).display().to_string();
    format!(
        r#"
listeners:
  - address: 127.0.0.1:0
issuers:
  - issuer: {ISS}
    audiences: [{AUD}]
    algorithms: [RS256]
    jwks: {{ file: {jwks} }}
routes:
  - path_prefix: /
    backends: [http://{backend}]
    max_body_bytes: 209715200
    timeout: 10s
logging:
  format: json
  level: info
shutdown_grace: 10s
"#,
        jwks = f("jwks.json")
    )
}

#[tokio::test]
async fn upload_of_100_mib_streams_through_without_the_gateway_growing() {
    let backend = Backend::start().await;
    let gw = Proc::start("run", &plain_config(backend.addr), "listening");
    let token = mint(Algorithm::RS256, "uploader");
    // Warm up: one small request so the baseline includes connection pools
    // and buffers that exist after the first request anyway.
    let a = send(
        gw.addr,
        Proto::Plain,
        "localhost",
        get(Proto::Plain, "localhost", "/", Some(&token), &[]),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    let before = gw.peak_rss_kib();

    const SIZE: u64 = 100 * 1024 * 1024;
    let req = http::Request::post("/upload")
        .header("host", "localhost")
        .header("authorization", format!("Bearer {token}"))
        .body(ZeroBody::new(SIZE).boxed())
        .expect("request");
    let a = send(gw.addr, Proto::Plain, "localhost", req).await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        backend.last().body_bytes,
        SIZE,
        "the backend got every byte"
    );

    let after = gw.peak_rss_kib();
    let growth = after.saturating_sub(before);
    println!(
        "gateway peak RSS: {before} KiB before, {after} KiB after a 100 MiB upload (+{growth} KiB)"
    );
    assert!(
        growth < 8 * 1024,
        "peak RSS grew by {growth} KiB while streaming 100 MiB"
    );
}

#[tokio::test]
async fn sigterm_lets_in_flight_requests_finish() {
    let backend = Backend::start().await;
    let gw = Proc::start("run", &plain_config(backend.addr), "listening");
    let token = mint(Algorithm::RS256, "patient");
    let addr = gw.addr;
    let slow = tokio::spawn(async move {
        send(
            addr,
            Proto::Plain,
            "localhost",
            get(Proto::Plain, "localhost", "/slow", Some(&token), &[]),
        )
        .await
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    gw.signal("TERM");
    let a = slow.await.expect("join");
    assert_eq!(a.status, StatusCode::OK, "in-flight request finished");
    let mut gw = gw;
    let status = tokio::task::spawn_blocking(move || gw.child.wait())
        .await
        .expect("join")
        .expect("wait");
    assert!(status.success(), "clean exit: {status:?}");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer listening"
    );
}

#[test]
fn check_lists_every_problem_with_file_line_and_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.yaml");
    std::fs::write(
        &path,
        "listeners:\n  - address: 127.0.0.1:8080\nissuers:\n  - issuer: https://i\n    audiences: []\n    algorithms: [RS256]\n    jwks: { file: missing.json }\nroutes:\n  - path_prefix: nope\n    backends: [http://127.0.0.1:9]\n    issuers: [ghost]\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run check");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let file = path.display().to_string();
    for (line, reason) in [
        (4, "at least one audience"),
        (4, "missing.json"),
        (9, "must start with /"),
        (9, "unknown issuer `ghost`"),
    ] {
        assert!(
            err.contains(&format!("{file}:{line}: "))
                && err
                    .lines()
                    .any(|l| l.starts_with(&format!("{file}:{line}: ")) && l.contains(reason)),
            "expected {file}:{line}: ...{reason}... in:\n{err}"
        );
    }

    // A syntax/type error: the parser's line.
    std::fs::write(
        &path,
        "listeners:\n  - address: 127.0.0.1:8080\nroutes:\n  - backends: [ftp://x:1]\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("{file}:4: ")) && err.contains("only http://"),
        "{err}"
    );

    // Unknown keys are errors, not silently ignored.
    std::fs::write(
        &path,
        "listeners:\n  - address: 127.0.0.1:8080\n    tsl: {}\nroutes: []\n",
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(":3: ") && err.contains("tsl"), "{err}");

    // The shipped example is valid.
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gatehouse.yaml");
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["check", "--config"])
        .arg(&example)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn token_subcommand_mints_a_token_the_example_config_accepts() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .current_dir(root)
        .args([
            "token",
            "--sub",
            "alice",
            "--claim",
            "email=alice@example.test",
        ])
        .output()
        .expect("run token");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    crypto();
    let jwks = std::fs::read(root.join("config/dev/jwks.json")).expect("dev jwks");
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&jwks).expect("jwks");
    let key =
        jsonwebtoken::DecodingKey::from_jwk(set.find("dev-rs256").expect("dev key")).expect("key");
    let mut v = jsonwebtoken::Validation::new(Algorithm::RS256);
    v.set_audience(&["demo-app"]);
    v.set_issuer(&["https://dev.gatehouse.local"]);
    let data = jsonwebtoken::decode::<serde_json::Value>(&token, &key, &v)
        .expect("valid for the example config");
    assert_eq!(data.claims["sub"], "alice");
    assert_eq!(data.claims["email"], "alice@example.test");
}

#[tokio::test]
async fn shipped_example_config_runs_with_its_embedded_authority() {
    let backend = Backend::start().await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let data = tempfile::tempdir().expect("tempdir");
    let authority_port = free_port();
    // The example as shipped, with its fixed ports and paths moved so the
    // test cannot collide with anything on the machine.
    let yaml = std::fs::read_to_string(root.join("config/gatehouse.yaml"))
        .expect("example config")
        .replace("127.0.0.1:8080", "127.0.0.1:0")
        .replace("127.0.0.1:9901", "127.0.0.1:0")
        .replace("127.0.0.1:7400", &format!("127.0.0.1:{authority_port}"))
        .replace("http://127.0.0.1:9000", &format!("http://{}", backend.addr))
        .replace("../data/", &format!("{}/", data.path().display()))
        .replace("dev/", &format!("{}/", root.join("config/dev").display()))
        .replace("format: text", "format: json");
    let gw = Proc::start("run", &yaml, "listening");
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .current_dir(root)
        .args(["token", "--sub", "alice"])
        .output()
        .expect("token");
    let token = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let a = send(
        gw.addr,
        Proto::Plain,
        "localhost",
        get(Proto::Plain, "localhost", "/", Some(&token), &[]),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(backend.last().headers["x-auth-subject"], "alice");

    let admin = std::fs::read_to_string(root.join("config/dev/admin.token")).expect("admin token");
    let authority: SocketAddr = format!("127.0.0.1:{authority_port}").parse().expect("addr");
    let body = serde_json::json!({"sub": "alice", "reason": "forced_logout"});
    let a = send(
        authority,
        Proto::Plain,
        "authority",
        json_req("POST", "/v1/revocations", Some(admin.trim()), Some(&body)),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{:?}", a.body);
    let refused = within(Duration::from_secs(1), || async {
        let a = send(
            gw.addr,
            Proto::Plain,
            "localhost",
            get(Proto::Plain, "localhost", "/", Some(&token), &[]),
        )
        .await;
        a.status == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(refused.is_some(), "forced logout enforced within a second");
}

fn check(yaml: &str) -> (bool, String, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gatehouse.yaml");
    std::fs::write(&path, yaml).expect("write");
    std::fs::write(dir.path().join("admin.token"), "t0123456789abcdef").expect("token");
    std::fs::write(dir.path().join("feed.token"), "f0123456789abcdef").expect("token");
    std::fs::write(dir.path().join("short.token"), "short").expect("token");
    let out = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["check", "--config"])
        .arg(&path)
        .output()
        .expect("run check");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).to_string(),
        path.display().to_string(),
    )
}

#[test]
fn check_names_the_line_of_a_workers_count_over_16() {
    let (ok, err, file) = check(
        "listeners:\n  - address: 127.0.0.1:8080\nworkers: 17\nissuers:\n  - issuer: https://i\n    audiences: [app]\n    algorithms: [RS256]\n    jwks: { url: \"https://idp.example.com/jwks\" }\nroutes:\n  - backends: [http://127.0.0.1:9]\n",
    );
    assert!(!ok);
    assert!(
        err.lines()
            .any(|l| l.starts_with(&format!("{file}:3: ")) && l.contains("at most 16")),
        "{err}"
    );
}

#[test]
fn check_names_the_line_of_an_unknown_worker_cpu_affinity() {
    let (ok, err, file) = check(
        "listeners:\n  - address: 127.0.0.1:8080\nworker_cpu_affinity: sometimes\nissuers:\n  - issuer: https://i\n    audiences: [app]\n    algorithms: [RS256]\n    jwks: { url: \"https://idp.example.com/jwks\" }\nroutes:\n  - backends: [http://127.0.0.1:9]\n",
    );
    assert!(!ok);
    assert!(
        err.lines()
            .any(|l| l.starts_with(&format!("{file}:3")) && l.contains("sometimes")),
        "{err}"
    );
}

#[test]
fn check_names_the_line_of_a_header_or_token_limit_too_small() {
    let (ok, err, file) = check(
        "listeners:\n  - address: 127.0.0.1:8080\nlimits:\n  max_header_bytes: 1024\nauth:\n  max_token_bytes: 10\nissuers:\n  - issuer: https://i\n    audiences: [app]\n    algorithms: [RS256]\n    jwks: { url: \"https://idp.example.com/jwks\" }\nroutes:\n  - backends: [http://127.0.0.1:9]\n",
    );
    assert!(!ok);
    for (line, what) in [(4, "at least 8192"), (6, "at least 64")] {
        assert!(
            err.lines()
                .any(|l| l.starts_with(&format!("{file}:{line}: ")) && l.contains(what)),
            "expected {file}:{line}: ...{what}... in:\n{err}"
        );
    }
}

#[test]
fn check_names_the_line_of_each_unix_socket_listener_mistake() {
    let config = |listeners: &str| {
        format!(
            "listeners:\n{listeners}issuers:\n  - issuer: https://i\n    audiences: [app]\n    algorithms: [RS256]\n    jwks: {{ url: \"https://idp.example.com/jwks\" }}\nroutes:\n  - backends: [http://127.0.0.1:9]\n"
        )
    };
    // A proxy on a socket, TLS on a socket, a socket mode on TCP.
    let (ok, err, file) = check(&config(
        "  - address: unix:/run/gatehouse/proxy.sock\n  - address: unix:/run/gatehouse/tls.sock\n    auth_server: { ingress: nginx }\n    tls: { certificates: [] }\n  - address: 127.0.0.1:8080\n    socket_mode: \"0660\"\n",
    ));
    assert!(!ok);
    let at = |line: u32, what: &str| {
        err.lines()
            .any(|l| l.starts_with(&format!("{file}:{line}: ")) && l.contains(what))
    };
    assert!(at(2, "must be an auth_server"), "{err}");
    assert!(at(3, "has no tls"), "{err}");
    assert!(at(6, "socket_mode is for unix"), "{err}");
    // A relative path and a mode that is not octal are refused at parse.
    let (ok, err, file) = check(&config(
        "  - address: unix:auth.sock\n    auth_server: { ingress: nginx }\n",
    ));
    assert!(!ok);
    assert!(
        err.contains(&format!("{file}:2")) && err.contains("must be absolute"),
        "{err}"
    );
    let (ok, err, _) = check(&config(
        "  - address: unix:/run/gatehouse/auth.sock\n    socket_mode: \"rw-rw----\"\n    auth_server: { ingress: nginx }\n",
    ));
    assert!(!ok);
    assert!(err.contains("octal"), "{err}");
    for lenient in ["0o660", "+660", "1777"] {
        let (ok, err, _) = check(&config(&format!(
            "  - address: unix:/run/gatehouse/auth.sock\n    socket_mode: \"{lenient}\"\n    auth_server: {{ ingress: nginx }}\n"
        )));
        assert!(!ok, "{lenient} was taken");
        assert!(err.contains("three octal digits"), "{err}");
    }
    // Every local user as the ingress, or no one but root: refused.
    for (mode, why) in [("0777", "every local user"), ("0000", "no one but root")] {
        let (ok, err, file) = check(&config(&format!(
            "  - address: unix:/run/gatehouse/auth.sock\n    socket_mode: \"{mode}\"\n    auth_server: {{ ingress: nginx }}\n"
        )));
        assert!(!ok, "{mode} was taken");
        assert!(
            err.lines()
                .any(|l| l.starts_with(&format!("{file}:2: ")) && l.contains(why)),
            "{err}"
        );
    }
    // A socket auth server needs no trusted_proxies: the file's mode is
    // who may ask.
    let (ok, err, _) = check(&config(
        "  - address: unix:/run/gatehouse/auth.sock\n    socket_mode: \"0660\"\n    auth_server: { ingress: nginx }\n",
    ));
    assert!(ok, "{err}");
}

/// `max_token_lifetime` under a second refuses every token (a lifetime is
/// whole seconds): `check` said ok, and the gateway then answered 401 to
/// every fresh token (found by a newcomer's walk through the README).
#[test]
fn check_refuses_a_max_token_lifetime_that_would_refuse_every_token() {
    let config = |lifetime: &str| {
        format!(
            "listeners:\n  - address: 127.0.0.1:8080\nissuers:\n  - issuer: https://i\n    audiences: [app]\n    algorithms: [RS256]\n    jwks: {{ url: \"https://idp.example.com/jwks\" }}\n    max_token_lifetime: {lifetime}\nroutes:\n  - backends: [http://127.0.0.1:9]\n"
        )
    };
    for refused in ["0s", "500ms"] {
        let (ok, err, file) = check(&config(refused));
        assert!(!ok, "{refused}");
        assert!(
            err.lines().any(|l| l.starts_with(&format!("{file}:4: "))
                && l.contains("max_token_lifetime must be at least 1s")),
            "{refused}: {err}"
        );
    }
    let (ok, err, _) = check(&config("1s"));
    assert!(ok, "{err}");
}

#[test]
fn check_refuses_plain_http_jwks_authority_and_redis_off_loopback() {
    let gateway = |jwks_extra: &str, authority_extra: &str| {
        format!(
            "listeners:\n  - address: 127.0.0.1:8080\nissuers:\n  - issuer: https://i\n    audiences: [app]\n    algorithms: [RS256]\n    jwks: {{ url: \"http://idp.example.com/jwks\"{jwks_extra} }}\nroutes:\n  - backends: [http://127.0.0.1:9]\nrevocation:\n  authority: {{ url: \"http://authority.internal:7400\"{authority_extra} }}\n"
        )
    };
    let (ok, err, file) = check(&gateway("", ""));
    assert!(!ok);
    assert!(
        err.lines()
            .any(|l| l.starts_with(&format!("{file}:4: ")) && l.contains("jwks.url")),
        "{err}"
    );
    assert!(
        err.lines()
            .any(|l| l.starts_with(&format!("{file}:11: "))
                && l.contains("revocation.authority.url")),
        "{err}"
    );
    // An explicit opt-in per URL is accepted (and logged at start).
    let (ok, err, _) = check(&gateway(
        ", allow_plaintext_http: true",
        ", allow_plaintext_http: true",
    ));
    assert!(ok, "{err}");
    // Loopback needs no opt-in.
    let (ok, err, _) = check(
        &gateway("", "")
            .replace("idp.example.com", "127.0.0.1")
            .replace("authority.internal", "localhost"),
    );
    assert!(ok, "{err}");

    // An authority-only config is checked as `gatehouse authority` runs it.
    let authority = |url: &str| {
        format!(
            "issuers:\n  - issuer: https://i\n    audiences: [app]\n    algorithms: [RS256]\n    jwks: {{ url: \"https://idp.example.com/jwks\" }}\nauthority:\n  listen: 127.0.0.1:7400\n  admin_token: {{ file: admin.token }}\n  feed_token: {{ file: feed.token }}\n  store:\n    redis: {{ url: \"{url}\" }}\n"
        )
    };
    let (ok, err, _) = check(&authority("rediss://redis.internal:6380"));
    assert!(ok, "{err}");
    let (ok, err, file) = check(&authority("redis://redis.internal:6379"));
    assert!(!ok);
    assert!(
        err.lines()
            .any(|l| l.starts_with(&format!("{file}:7: ")) && l.contains("store.redis.url")),
        "{err}"
    );
    // The feed has a credential of its own, never the admin token.
    let (ok, err, file) = check(
        &authority("rediss://redis.internal:6380")
            .replace("  feed_token: { file: feed.token }\n", ""),
    );
    assert!(!ok);
    assert!(
        err.lines().any(|l| l.starts_with(&format!("{file}:"))
            && l.contains("authority.feed_token is required")),
        "{err}"
    );
    let (ok, err, _) = check(
        &authority("rediss://redis.internal:6380").replace("file: feed.token", "file: admin.token"),
    );
    assert!(!ok);
    assert!(
        err.contains("feed_token must differ from admin_token"),
        "{err}"
    );
    // A guessable credential, and a key that is not its certificate's:
    // `check` finds what `run` would refuse.
    let (ok, err, _) = check(
        &authority("rediss://redis.internal:6380").replace("file: feed.token", "file: short.token"),
    );
    assert!(!ok);
    assert!(
        err.contains("feed_token must be at least 16 bytes"),
        "{err}"
    );
    let mismatched = format!(
        "{}  tls:\n    certificates:\n      - {{ cert: {}, key: {} }}\n",
        authority("rediss://redis.internal:6380"),
        fixture("server.crt.pem").display(),
        fixture("other.key.pem").display()
    );
    let (ok, err, _) = check(&mismatched);
    assert!(!ok, "a key of another certificate passed check");
    assert!(err.contains("does not belong to certificate"), "{err}");
}
