//! Revocation you can prove: an authority process and three gateway
//! processes that name themselves on the feed; waited revocations, the
//! gateway table, receipts, a partitioned gateway, read-your-writes on one
//! host, and tunnels that end with their credential.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use gatehouse_test_support::*;
use http::StatusCode;
use serde_json::{json, Value};

/// An authority process (redb) judging gateways stale after 1 s and gone
/// after 4 s.
fn authority(dir: &Path) -> Proc {
    let a = yaml::Authority::redb(dir, 0).with(
        "gateways",
        "{ stale_after: 1s, gone_after: 4s, default_wait: 3s }",
    );
    Proc::start(
        "authority",
        &yaml::Config::authority(a).yaml(),
        "authority listening",
    )
}

/// A gateway process named `name` following the authority at `url`.
fn gateway(dir: &Path, name: &str, backend: SocketAddr, url: &str) -> Proc {
    let token = dir.join("feed.token");
    let state = dir.join(format!("{name}.state"));
    let yaml = yaml::Config::gateway()
        .route(yaml::Route::to(backend))
        .revocation(
            yaml::Revocation::authority(&[url.to_owned()], &token, &state).with("name", name),
        )
        .yaml();
    Proc::start("run", &yaml, "listening")
}

async fn waited(auth: SocketAddr, body: Value, timeout: &str) -> Answer {
    admin(
        auth,
        "POST",
        &format!("/v1/revocations?wait=applied&timeout={timeout}"),
        Some(body),
    )
    .await
}

/// `gatehouse revoke --wait <timeout> --jti <jti>` against `auth`: exit
/// code, stdout, stderr.
fn revoke_cli(auth: SocketAddr, jti: &str, timeout: &str) -> (i32, String, String) {
    let out = std::process::Command::new(gatehouse_bin())
        .args([
            "revoke",
            "--authority",
            &format!("http://{auth}"),
            "--jti",
            jti,
            "--wait",
            timeout,
        ])
        .env("GATEHOUSE_ADMIN_TOKEN", ADMIN)
        .output()
        .expect("gatehouse revoke");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Waits until the authority's table lists `n` gateways.
async fn table_lists(auth: SocketAddr, n: usize) -> Value {
    let start = std::time::Instant::now();
    loop {
        let t = admin(auth, "GET", "/v1/gateways", None).await.json();
        if t["gateways"].as_array().map_or(0, Vec::len) == n {
            return t;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "gateway table never listed {n}: {t}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the table shows gateway `name` in `state`.
async fn becomes(auth: SocketAddr, name: &str, state: &str, limit: Duration) -> Value {
    let start = std::time::Instant::now();
    loop {
        let t = admin(auth, "GET", "/v1/gateways", None).await.json();
        if state_of(&t, name) == state {
            return t;
        }
        assert!(start.elapsed() < limit, "{name} never {state}: {t}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn state_of(table: &Value, name: &str) -> String {
    table["gateways"]
        .as_array()
        .and_then(|g| g.iter().find(|r| r["name"] == name))
        .map(|r| r["state"].as_str().unwrap_or("").to_owned())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_waited_revocation_the_very_next_request_at_every_gateway_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start().await;
    let auth = authority(dir.path());
    let url = format!("http://{}", auth.addr);
    let gws: Vec<Proc> = (0..3)
        .map(|i| gateway(dir.path(), &format!("gw-{i}"), backend.addr, &url))
        .collect();
    let table = table_lists(auth.addr, 3).await;
    for i in 0..3 {
        assert_eq!(state_of(&table, &format!("gw-{i}")), "live", "{table}");
    }

    // 200 rounds over every kind an admin or a client ends a session
    // with: the token works at all three gateways (and sits in their
    // verified-token caches), the waited call returns, and the very next
    // request at each gateway is refused.
    let mut stale_2xx = 0;
    for round in 0..200 {
        let id = format!("round-{round}");
        let token = token_with(|c| {
            c.insert("jti".into(), json!(id));
            c.insert("sid".into(), json!(format!("session-{round}")));
            c.insert("sub".into(), json!(format!("user-{round}")));
        });
        for gw in &gws {
            assert_eq!(status_of(gw.addr, &token).await.0, StatusCode::OK);
        }
        let answer = match round % 4 {
            0 => waited(auth.addr, json!({"jti": id}), "3s").await,
            1 => waited(auth.addr, json!({"sid": format!("session-{round}")}), "3s").await,
            2 => waited(auth.addr, json!({"sub": format!("user-{round}")}), "3s").await,
            // A client logging itself out, waiting until it is out everywhere.
            _ => {
                send(
                    auth.addr,
                    Proto::Plain,
                    "authority",
                    json_req(
                        "POST",
                        "/v1/logout?wait=applied&timeout=3s",
                        Some(&token),
                        None,
                    ),
                )
                .await
            }
        };
        assert!(
            answer.status.is_success() && answer.status != StatusCode::ACCEPTED,
            "round {round}: {} {}",
            answer.status,
            answer.text()
        );
        let receipt = &answer.json()["receipt"];
        assert_eq!(receipt["complete"], true, "{receipt}");
        if round % 4 == 3 {
            // A client logging out learns that it is done, not the names
            // and states of the gateways.
            assert_eq!(receipt["gateways"], 3, "{receipt}");
            assert_eq!(receipt["lagging"], 0, "{receipt}");
        } else {
            assert_eq!(
                receipt["gateways"].as_array().map(Vec::len),
                Some(3),
                "{receipt}"
            );
        }
        for gw in &gws {
            if status_of(gw.addr, &token).await.0.is_success() {
                stale_2xx += 1;
            }
        }
    }
    assert_eq!(
        stale_2xx, 0,
        "requests admitted after a waited revocation returned"
    );

    // The command line waits too, and prints the receipt.
    let (code, out, err) = revoke_cli(auth.addr, "from-the-cli", "3s");
    assert_eq!(code, 0, "{out}{err}");
    let printed: Value = serde_json::from_str(out.trim()).expect("receipt JSON");
    assert_eq!(printed["receipt"]["complete"], true, "{out}");
    let cli_token = token_with(|c| {
        c.insert("jti".into(), json!("from-the-cli"));
    });
    for gw in &gws {
        assert_eq!(
            status_of(gw.addr, &cli_token).await.0,
            StatusCode::UNAUTHORIZED
        );
    }

    // The receipt of an entry: every gateway applied it, and when.
    let listed = admin(auth.addr, "GET", "/v1/revocations?subject=user-2", None)
        .await
        .json();
    let id = listed["revocations"][0]["id"].as_u64().expect("an id");
    let entry = admin(auth.addr, "GET", &format!("/v1/revocations/{id}"), None)
        .await
        .json();
    for g in entry["receipt"]["gateways"].as_array().expect("gateways") {
        assert_eq!(g["applied"], true, "{entry}");
        assert!(g["applied_at_ms"].as_i64().is_some(), "{entry}");
    }
    // The authority's metrics count the gateways and the propagation.
    let m = send(
        auth.addr,
        Proto::Plain,
        "authority",
        json_req("GET", "/metrics", Some(ADMIN), None),
    )
    .await
    .text();
    assert!(
        m.contains("gatehouse_authority_gateways{state=\"live\"} 3"),
        "{m}"
    );
    assert!(
        m.contains("gatehouse_authority_propagation_seconds_count"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_gateway_is_named_by_the_wait_shown_stale_and_not_waited_for_once_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start().await;
    let auth = authority(dir.path());
    let url = format!("http://{}", auth.addr);
    // gw-2 reaches the authority through a relay that becomes a black hole.
    let relay = Relay::start(auth.addr).await;
    let gws = [
        gateway(dir.path(), "gw-0", backend.addr, &url),
        gateway(dir.path(), "gw-1", backend.addr, &url),
        gateway(
            dir.path(),
            "gw-2",
            backend.addr,
            &format!("http://{}", relay.addr),
        ),
    ];
    table_lists(auth.addr, 3).await;
    relay.pause();

    let token = token_with(|c| {
        c.insert("jti".into(), json!("partitioned"));
    });
    let r = waited(auth.addr, json!({"jti": "partitioned"}), "2s").await;
    assert_eq!(r.status, StatusCode::ACCEPTED, "{}", r.text());
    let receipt = &r.json()["receipt"];
    assert_eq!(receipt["complete"], false);
    assert_eq!(receipt["lagging"], json!(["gw-2"]), "{receipt}");
    // The revocation is committed and the two reachable gateways enforce it.
    for gw in &gws[..2] {
        assert_eq!(status_of(gw.addr, &token).await.0, StatusCode::UNAUTHORIZED);
    }
    let table = admin(auth.addr, "GET", "/v1/gateways", None).await.json();
    assert_eq!(state_of(&table, "gw-2"), "stale", "{table}");
    assert_eq!(state_of(&table, "gw-0"), "live", "{table}");
    let lagging_row = table["gateways"]
        .as_array()
        .and_then(|g| g.iter().find(|r| r["name"] == "gw-2"))
        .cloned()
        .unwrap_or_default();
    assert!(lagging_row["lag_changes"].as_u64() >= Some(1), "{table}");

    // `gatehouse revoke --wait` says so with exit code 3, naming it.
    let (code, out, err) = revoke_cli(auth.addr, "partitioned-cli", "1s");
    assert_eq!(code, 3, "{out}{err}");
    assert!(err.contains("gw-2"), "{err}");

    // Once gone, it is no longer waited for.
    becomes(auth.addr, "gw-2", "gone", Duration::from_secs(10)).await;
    let r = waited(auth.addr, json!({"jti": "after-gone"}), "2s").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert_eq!(r.json()["receipt"]["complete"], true);

    // An operator forgets it at once (decommissioned); an unknown name is 404.
    let forgot = admin(auth.addr, "DELETE", "/v1/gateways/gw-2", None).await;
    assert_eq!(forgot.status, StatusCode::OK, "{}", forgot.text());
    assert_eq!(forgot.json()["forgotten"], "gw-2");
    let never = admin(auth.addr, "DELETE", "/v1/gateways/never-was", None).await;
    assert_eq!(never.status, StatusCode::NOT_FOUND);
    let t = admin(auth.addr, "GET", "/v1/gateways", None).await.json();
    assert_eq!(state_of(&t, "gw-2"), "", "{t}");

    // The partition heals: gw-2 catches up, enforces it, and is live again.
    relay.resume();
    let start = std::time::Instant::now();
    while status_of(gws[2].addr, &token).await.0 != StatusCode::UNAUTHORIZED {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "gw-2 never caught up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    becomes(auth.addr, "gw-2", "live", Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_answered_by_an_embedded_authority_is_already_enforced_by_its_gateway() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start().await;
    let port = free_port();
    let a = yaml::Authority::redb(dir.path(), port);
    let yaml = yaml::Config::gateway()
        .route(yaml::Route::to(backend.addr))
        .revocation(
            yaml::Revocation::embedded(&a, &dir.path().join("gw.state")).with("name", "solo"),
        )
        .yaml();
    let gw = Proc::start("run", &yaml, "listening");
    let auth: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut admitted_after_logout = 0;
    for round in 0..100 {
        let token = token_with(|c| {
            c.insert("jti".into(), json!(format!("solo-{round}")));
        });
        assert_eq!(status_of(gw.addr, &token).await.0, StatusCode::OK);
        // No wait mode: the answer of an embedded authority comes only once
        // its own gateway enforces it.
        let out = send(
            auth,
            Proto::Plain,
            "authority",
            json_req("POST", "/v1/logout", Some(&token), None),
        )
        .await;
        assert_eq!(out.status, StatusCode::OK, "{}", out.text());
        assert!(
            out.json().get("receipt").is_none(),
            "an unwaited answer carries no receipt"
        );
        if status_of(gw.addr, &token).await.0.is_success() {
            admitted_after_logout += 1;
        }
    }
    assert_eq!(admitted_after_logout, 0);
}

/// A WebSocket echo backend.
async fn websocket_echo() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
                    return;
                };
                while let Some(Ok(m)) = ws.next().await {
                    if m.is_text() && ws.send(m).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn open_websocket(gw: SocketAddr, token: &str) -> Ws {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let mut req = format!("ws://{gw}/socket")
        .into_client_request()
        .expect("request");
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("header"),
    );
    let s = tokio::net::TcpStream::connect(gw).await.expect("connect");
    let (ws, resp) = tokio_tungstenite::client_async(req, s)
        .await
        .expect("websocket through the gateway");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

/// Sends a text and reads the echo: false once the tunnel is closed.
async fn echoes(ws: &mut Ws, text: &str) -> bool {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    if ws.send(Message::text(text)).await.is_err() {
        return false;
    }
    matches!(
        tokio::time::timeout(Duration::from_secs(5), ws.next()).await,
        Ok(Some(Ok(Message::Text(t)))) if t.as_str() == text
    )
}

/// Whether the tunnel ends (read returns end, an error or a close) within `limit`.
async fn closed_within(ws: &mut Ws, limit: Duration) -> bool {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return false,
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return true,
            Ok(Some(Ok(_))) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_is_cut_when_its_token_is_revoked_and_when_it_expires() {
    let dir = tempfile::tempdir().expect("tempdir");
    let echo = websocket_echo().await;
    let auth = authority(dir.path());
    let gw = gateway(dir.path(), "gw-ws", echo, &format!("http://{}", auth.addr));
    table_lists(auth.addr, 1).await;

    // Revoked: the open tunnel is closed as soon as the gateway applies it.
    let token = token_with(|c| {
        c.insert("jti".into(), json!("tunnel"));
    });
    let mut ws = open_websocket(gw.addr, &token).await;
    assert!(echoes(&mut ws, "hello").await);
    let r = waited(auth.addr, json!({"jti": "tunnel"}), "3s").await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    assert!(
        closed_within(&mut ws, Duration::from_secs(1)).await,
        "tunnel outlived its revocation"
    );

    // Another user's tunnel is untouched by that revocation.
    let other = token_with(|c| {
        c.insert("jti".into(), json!("other-tunnel"));
    });
    let mut ws = open_websocket(gw.addr, &other).await;
    assert!(echoes(&mut ws, "still here").await);

    // Expiring: open until `exp`, closed then.
    let exp = now() + 3;
    let short = token_with(|c| {
        c.insert("jti".into(), json!("short-lived"));
        c.insert("exp".into(), json!(exp));
    });
    let mut ws2 = open_websocket(gw.addr, &short).await;
    assert!(echoes(&mut ws2, "before exp").await);
    assert!(
        closed_within(&mut ws2, Duration::from_secs(6)).await,
        "tunnel outlived its token"
    );
    assert!(now() >= exp, "closed before exp");
    assert!(echoes(&mut ws, "unrelated tunnel still open").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_mode_or_gateway_name_the_authority_does_not_understand_is_refused_and_commits_nothing(
) {
    let dir = tempfile::tempdir().expect("tempdir");
    let auth = authority(dir.path());
    for query in [
        "?wait=aplied",
        "?wait=applied&timeout=soon",
        "?wait=applied&timeout=0s",
        "?wait=applied&timeout=2h",
        "?timeout=2s",
        "?Wait=applied",
        "?wiat=applied",
        "?wait=applied&Timeout=30s",
        "?wait=applied&timeout=1s&timeout=2s",
    ] {
        let r = admin(
            auth.addr,
            "POST",
            &format!("/v1/revocations{query}"),
            Some(json!({"jti": "typo"})),
        )
        .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{query}: {}", r.text());
    }
    for header in [
        "applied; timeout=2s; extra=1",
        "applied;timeout=1s;timeout=2s",
        "later",
        "\u{0}",
    ] {
        let mut req = json_req(
            "POST",
            "/v1/revocations",
            Some(ADMIN),
            Some(&json!({"jti": "typo"})),
        );
        if let Ok(v) = http::HeaderValue::from_str(header) {
            req.headers_mut().insert("gatehouse-wait", v);
        } else {
            continue;
        }
        let r = send(auth.addr, Proto::Plain, "authority", req).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{header:?}: {}",
            r.text()
        );
    }
    // Two Gatehouse-Wait lines, or a header beside a query wait.
    let mut req = json_req(
        "POST",
        "/v1/revocations",
        Some(ADMIN),
        Some(&json!({"jti": "typo"})),
    );
    req.headers_mut()
        .append("gatehouse-wait", http::HeaderValue::from_static("applied"));
    req.headers_mut()
        .append("gatehouse-wait", http::HeaderValue::from_static("bogus"));
    assert_eq!(
        send(auth.addr, Proto::Plain, "authority", req).await.status,
        StatusCode::BAD_REQUEST
    );
    let mut req = json_req(
        "POST",
        "/v1/revocations?wait=applied",
        Some(ADMIN),
        Some(&json!({"jti": "typo"})),
    );
    req.headers_mut()
        .insert("gatehouse-wait", http::HeaderValue::from_static("bogus"));
    assert_eq!(
        send(auth.addr, Proto::Plain, "authority", req).await.status,
        StatusCode::BAD_REQUEST
    );
    // None of them committed anything.
    let listed = admin(auth.addr, "GET", "/v1/revocations?subject=typo", None).await;
    assert_eq!(listed.json()["revocations"], json!([]), "{}", listed.text());
    let status = admin(auth.addr, "GET", "/v1/status", None).await.json();
    assert_eq!(status["entries"], 0, "{status}");

    // A feed poll naming itself with something that is not a gateway name
    // is refused and not tracked; the admin token still never reads the feed.
    for name in [
        "",
        "has space",
        "x".repeat(129).as_str(),
        "caf\u{e9}",
        "a\"b",
    ] {
        let mut req = json_req("GET", "/v1/feed", Some(FEED), None);
        if let Ok(v) = http::HeaderValue::from_str(name) {
            req.headers_mut().insert("gatehouse-gateway", v);
            let r = send(auth.addr, Proto::Plain, "authority", req).await;
            assert_eq!(r.status, StatusCode::BAD_REQUEST, "{name:?}");
        }
    }
    let mut req = json_req("GET", "/v1/feed", Some(ADMIN), None);
    req.headers_mut().insert(
        "gatehouse-gateway",
        http::HeaderValue::from_static("impostor"),
    );
    assert_eq!(
        send(auth.addr, Proto::Plain, "authority", req).await.status,
        StatusCode::FORBIDDEN
    );
    let table = admin(auth.addr, "GET", "/v1/gateways", None).await.json();
    assert_eq!(table["gateways"], json!([]), "{table}");
    // The gateway table and metrics are admin-only.
    for path in ["/v1/gateways", "/metrics"] {
        let r = send(
            auth.addr,
            Proto::Plain,
            "authority",
            json_req("GET", path, Some(FEED), None),
        )
        .await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_restored_from_a_backup_reuses_no_position_and_gives_no_false_receipt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start().await;
    let port = free_port();
    let cfg = dir.path().join("authority.yaml");
    std::fs::write(
        &cfg,
        yaml::Config::authority(yaml::Authority::redb(dir.path(), port)).yaml(),
    )
    .expect("config");
    let store = dir.path().join("authority.redb");
    let backup = dir.path().join("backup.redb");
    let mut auth = Proc::start_with("authority", &cfg, "authority listening");
    let gw = gateway(
        dir.path(),
        "gw-r",
        backend.addr,
        &format!("http://{}", auth.addr),
    );
    table_lists(auth.addr, 1).await;
    let tok = |jti: &str| {
        token_with(|c| {
            c.insert("jti".into(), json!(jti));
        })
    };
    let waited_ok =
        |r: &Answer| r.status == StatusCode::CREATED && r.json()["receipt"]["complete"] == true;
    for i in 0..3 {
        let r = waited(auth.addr, json!({"jti": format!("before-{i}")}), "3s").await;
        assert!(waited_ok(&r), "{}", r.text());
    }
    auth.kill();
    std::fs::copy(&store, &backup).expect("backup");
    let mut auth = Proc::start_with("authority", &cfg, "authority listening");
    // The future the backup will lose: four changes the gateway applies.
    for i in 0..4 {
        let r = waited(auth.addr, json!({"jti": format!("lost-{i}")}), "5s").await;
        assert!(waited_ok(&r), "{}", r.text());
    }
    auth.kill();
    std::fs::copy(&backup, &store).expect("restore");
    let auth = Proc::start_with("authority", &cfg, "authority listening");
    // More writes than the lost future, at once, likely before the
    // gateway is back: none may take a position the gateway believes it
    // has, so every one reaches it.
    for i in 0..6 {
        let r = admin(
            auth.addr,
            "POST",
            "/v1/revocations",
            Some(json!({"jti": format!("after-{i}")})),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
    }
    // A waited write is complete only once the gateway has it; never at
    // once because of a cursor from the lost future.
    let r = waited(auth.addr, json!({"jti": "waited-after"}), "10s").await;
    assert!(waited_ok(&r), "{}", r.text());
    assert_eq!(
        status_of(gw.addr, &tok("waited-after")).await.0,
        StatusCode::UNAUTHORIZED
    );
    for i in 0..6 {
        assert_eq!(
            status_of(gw.addr, &tok(&format!("after-{i}"))).await.0,
            StatusCode::UNAUTHORIZED,
            "after-{i} never reached the gateway"
        );
    }
    // What only the gateway still holds stays revoked there.
    for jti in ["before-0", "lost-0", "lost-3"] {
        assert_eq!(
            status_of(gw.addr, &tok(jti)).await.0,
            StatusCode::UNAUTHORIZED,
            "{jti}"
        );
    }
}

/// A WebSocket is a client connection for as long as it is open: it counts
/// against `limits.max_connections` and in `open_connections` (an
/// upgraded connection used to release its slot at the upgrade, so a
/// token holder could open tunnels without limit).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_websocket_holds_its_connection_slot_until_it_closes() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let echo = websocket_echo().await;
    let admin_port = free_port();
    let yaml = format!(
        r#"
listeners:
  - address: 127.0.0.1:0
admin:
  listen: 127.0.0.1:{admin_port}
limits:
  max_connections: 2
issuers:
  - issuer: {ISS}
    audiences: [{AUD}]
    algorithms: [RS256]
    jwks: {{ file: {jwks} }}
routes:
  - backends: [http://{echo}]
logging: {{ format: json, level: info }}
"#,
        jwks = fixture("jwks.json").display(),
    );
    let gw = Proc::start("run", &yaml, "listening");
    let token = mint(jsonwebtoken::Algorithm::RS256, "tunneller");
    let mut first = open_websocket(gw.addr, &token).await;
    let mut second = open_websocket(gw.addr, &token).await;
    assert!(echoes(&mut first, "one").await && echoes(&mut second, "two").await);
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    let open = send(
        admin,
        Proto::Plain,
        "admin",
        get(Proto::Plain, "admin", "/metrics", None, &[]),
    )
    .await
    .text();
    assert!(
        open.lines().any(|l| l == "gatehouse_open_connections 2"),
        "two tunnels are two open connections:\n{open}"
    );

    // A third client waits for a slot: no answer while both tunnels are open.
    let mut third = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    third
        .write_all(
            format!(
                "GET /plain HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("write");
    let mut buf = [0u8; 12];
    assert!(
        tokio::time::timeout(Duration::from_secs(1), third.read_exact(&mut buf))
            .await
            .is_err(),
        "a third connection was served past max_connections: 2"
    );
    // One tunnel closes: its slot goes to the waiting client.
    first.close(None).await.expect("close");
    drop(first);
    let answered = tokio::time::timeout(Duration::from_secs(5), third.read_exact(&mut buf)).await;
    assert!(
        matches!(answered, Ok(Ok(_))) && buf.starts_with(b"HTTP/1.1 "),
        "the waiting client is served once a tunnel closes"
    );
    assert!(echoes(&mut second, "still open").await);
}
