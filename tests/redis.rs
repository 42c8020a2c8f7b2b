//! The authority on Redis: a real `redis-server`, two authority replica
//! processes sharing it, three gateways following both replicas.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use gatehouse_test_support::*;
use http::StatusCode;
use serde_json::{json, Value};

/// An authority replica's config on Redis, with a fixed port (so a
/// restarted replica comes back on the same address); `tune` adds keys.
fn replica_yaml(dir: &Path, port: u16, redis: &str, prefix: &str, tune: Tune) -> String {
    let store = yaml::Store::Redis {
        url: redis.to_owned(),
        key_prefix: prefix.to_owned(),
    };
    yaml::Config::authority(tune(yaml::Authority::new(dir, port, store))).yaml()
}

/// Extra authority keys for a replica.
type Tune = fn(yaml::Authority) -> yaml::Authority;

fn replica(dir: &Path, name: &str, redis: &str, prefix: &str, tune: Tune) -> Proc {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).expect("dir");
    let cfg = d.join("authority.yaml");
    std::fs::write(&cfg, replica_yaml(&d, free_port(), redis, prefix, tune)).expect("write");
    Proc::start_with("authority", &cfg, "authority listening")
}

fn prefix(test: &str) -> String {
    format!("t{}:{test}:", std::process::id())
}

async fn revoke(auth: SocketAddr, body: Value) -> Answer {
    admin(auth, "POST", "/v1/revocations", Some(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_three_gateways_failover_and_a_redis_restart_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut redis = RedisServer::start(&dir.path().join("redis"));
    let backend = Backend::start().await;
    let p = prefix("failover");
    let mut a = replica(dir.path(), "a", &redis.url(), &p, |a| a);
    let b = replica(dir.path(), "b", &redis.url(), &p, |a| a);
    // Gateways poll replica A first; revocations go through both.
    let urls = [format!("http://{}", a.addr), format!("http://{}", b.addr)];
    let mut gws = Vec::new();
    for i in 0..3 {
        let state = dir.path().join(format!("gw{i}.state"));
        gws.push(start_gateway(&revocation_gateway_yaml(backend.addr, &urls, &state, "")).await);
    }
    let gw_addrs: Vec<SocketAddr> = gws.iter().map(|(g, _)| g.addrs()[0]).collect();

    // Revocations through alternating replicas reach every gateway in 1 s.
    let mut revoked = Vec::new();
    for i in 0..6 {
        let sid = format!("session-{i}");
        let token = token_with(|c| {
            c.insert("sid".into(), json!(sid));
        });
        for gw in &gw_addrs {
            assert_eq!(status_of(*gw, &token).await.0, StatusCode::OK);
        }
        let via = if i % 2 == 0 { a.addr } else { b.addr };
        let r = revoke(via, json!({"sid": sid})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        for gw in &gw_addrs {
            assert_eq!(refused_within_a_second(*gw, &token).await, "session ended");
        }
        revoked.push(token);
    }
    // The same revocation through the other replica is a duplicate. It
    // names an end before the stored one: without one, its end would be
    // now + the issuer's max lifetime, later than the first's by however
    // many seconds the loop took, and the entry would rightly be extended
    // ("updated"), which made this check depend on the clock's second.
    let soon = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs()
        + 60;
    let again = revoke(b.addr, json!({"sid": "session-0", "expires_at": soon})).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["revocations"][0]["outcome"], "unchanged");

    // Replica A dies mid-run: the gateways move to B keeping their cursor.
    a.kill();
    let token = token_with(|c| {
        c.insert("jti".into(), json!("after-failover"));
    });
    for gw in &gw_addrs {
        assert_eq!(status_of(*gw, &token).await.0, StatusCode::OK);
    }
    assert_eq!(
        revoke(b.addr, json!({"jti": "after-failover"}))
            .await
            .status,
        StatusCode::CREATED
    );
    for gw in &gw_addrs {
        let took = within(Duration::from_secs(3), || async {
            status_of(*gw, &token).await.0 == StatusCode::UNAUTHORIZED
        })
        .await;
        assert!(took.is_some(), "gateway did not fail over to replica B");
    }
    revoked.push(token);

    // Redis killed (SIGKILL) in the middle of a burst of writes through
    // both replicas: writes get 503 while it is down, and every write that
    // got a 2xx is there after the restart from the AOF.
    // (Replica A is dead by now: the burst goes through B.)
    let mut burst = Vec::new();
    for i in 0..300 {
        let via = b.addr;
        burst.push(tokio::spawn(async move {
            let r = revoke(via, json!({"jti": format!("burst-{i}")})).await;
            (r.status, r.json()["revocations"][0]["id"].as_u64())
        }));
        if i == 150 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(20)).await;
    redis.kill();
    let mut acked = Vec::new();
    for t in burst {
        let (status, id) = t.await.expect("task");
        match status {
            StatusCode::CREATED => acked.push(id.expect("id")),
            StatusCode::SERVICE_UNAVAILABLE => {}
            other => panic!("write answered {other} while Redis died"),
        }
    }
    eprintln!("{} of 300 writes acknowledged around the kill", acked.len());
    assert!(
        !acked.is_empty(),
        "no write was acknowledged before the kill"
    );
    let down = revoke(b.addr, json!({"jti": "while-redis-is-down"})).await;
    assert_eq!(
        down.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        down.text()
    );
    // Gateways keep enforcing everything they know meanwhile.
    for gw in &gw_addrs {
        for t in &revoked {
            assert_eq!(status_of(*gw, t).await.0, StatusCode::UNAUTHORIZED);
        }
    }
    redis.restart();
    let back = within(Duration::from_secs(5), || async {
        admin(b.addr, "GET", "/healthz", None).await.status == StatusCode::OK
    })
    .await;
    assert!(back.is_some(), "replica did not reconnect to Redis");
    for id in &acked {
        let got = admin(b.addr, "GET", &format!("/v1/revocations/{id}"), None).await;
        assert_eq!(
            got.status,
            StatusCode::OK,
            "acknowledged revocation {id} lost in the Redis restart"
        );
    }
    let token = token_with(|c| {
        c.insert("sid".into(), json!("after-redis-restart"));
    });
    assert_eq!(
        revoke(b.addr, json!({"sid": "after-redis-restart"}))
            .await
            .status,
        StatusCode::CREATED
    );
    revoked.push(token);
    for gw in &gw_addrs {
        for t in &revoked {
            let took = within(Duration::from_secs(3), || async {
                status_of(*gw, t).await.0 == StatusCode::UNAUTHORIZED
            })
            .await;
            assert!(
                took.is_some(),
                "a revoked token got through after the restarts"
            );
        }
    }
    // A gateway started now (no state) gets the whole set from replica B
    // as one snapshot streamed out of Redis.
    let state = dir.path().join("late.state");
    let (late, _d) = start_gateway(&revocation_gateway_yaml(backend.addr, &urls, &state, "")).await;
    for t in &revoked {
        assert_eq!(
            status_of(late.addrs()[0], t).await.0,
            StatusCode::UNAUTHORIZED
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_logins_through_both_replicas_leave_exactly_three_sessions() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = RedisServer::shared(&dir.path().join("redis"));
    let backend = Backend::start().await;
    let p = prefix("sessions");
    let extra: Tune = |a| a.with("max_sessions_per_subject", 3);
    let a = replica(dir.path(), "a", &redis.url(), &p, extra);
    let b = replica(dir.path(), "b", &redis.url(), &p, extra);
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let via = if i % 2 == 0 { a.addr } else { b.addr };
        tasks.push(tokio::spawn(async move {
            let body = json!({"sub": "popular", "sid": format!("login-{i:04}")});
            admin(via, "POST", "/v1/sessions", Some(body)).await.status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), StatusCode::OK);
    }
    // Every login but three was replaced, each exactly once.
    let list = admin(a.addr, "GET", "/v1/revocations?limit=10000", None).await;
    let replaced: Vec<String> = list.json()["revocations"]
        .as_array()
        .expect("list")
        .iter()
        .filter(|r| r["kind"] == "sid" && r["reason"] == "replaced")
        .map(|r| r["value"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(replaced.len(), 997);
    // And at a gateway exactly three of the thousand sessions still work.
    let state = dir.path().join("gw.state");
    let urls = [format!("http://{}", b.addr)];
    let (gw, _d) = start_gateway(&revocation_gateway_yaml(backend.addr, &urls, &state, "")).await;
    let mut alive = 0;
    for i in 0..1000 {
        let token = token_with(|c| {
            c.insert("sub".into(), json!("popular"));
            c.insert("sid".into(), json!(format!("login-{i:04}")));
        });
        if status_of(gw.addrs()[0], &token).await.0 == StatusCode::OK {
            alive += 1;
        }
    }
    assert_eq!(alive, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_subject_revocations_through_both_replicas_keep_the_latest_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = RedisServer::shared(&dir.path().join("redis"));
    let p = prefix("before");
    let a = replica(dir.path(), "a", &redis.url(), &p, |a| a);
    let b = replica(dir.path(), "b", &redis.url(), &p, |a| a);
    let now = now() as i64;
    let mut tasks = Vec::new();
    for i in 0..200i64 {
        let via = if i % 2 == 0 { a.addr } else { b.addr };
        tasks.push(tokio::spawn(async move {
            revoke(
                via,
                json!({"sub": "alice", "before": now - 200 + i, "reason": "password_change"}),
            )
            .await
            .status
        }));
    }
    for t in tasks {
        assert!(t.await.expect("task").is_success());
    }
    let list = admin(b.addr, "GET", "/v1/revocations?subject=alice", None).await;
    let entries = list.json()["revocations"]
        .as_array()
        .cloned()
        .expect("list");
    assert_eq!(entries.len(), 1, "one entry per subject");
    // Whatever order the replicas ran in, `before` never moved back.
    assert_eq!(entries[0]["before"], json!(now - 1));
    // The feed replays the same story: its last word on alice is the max.
    let feed = feed_snapshot(a.addr).await;
    let last_before = feed
        .text()
        .lines()
        .rev()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["value"] == "alice")
        .map(|v| v["before"].clone());
    assert_eq!(last_before, Some(json!(now - 1)));
}

#[tokio::test]
async fn an_authority_refuses_to_start_on_redis_without_fsync_on_every_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis_dir = dir.path().join("redis");
    std::fs::create_dir_all(&redis_dir).expect("dir");
    let port = free_port();
    let mut child = std::process::Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port"])
        .arg(port.to_string())
        .arg("--dir")
        .arg(&redis_dir)
        .args(["--appendonly", "no", "--save", ""])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("redis-server");
    std::thread::sleep(Duration::from_millis(300));
    let d = dir.path().join("a");
    std::fs::create_dir_all(&d).expect("dir");
    let cfg = d.join("authority.yaml");
    let url = format!("redis://127.0.0.1:{port}");
    std::fs::write(&cfg, replica_yaml(&d, free_port(), &url, "x:", |a| a)).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .args(["authority", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    let _ = child.kill();
    let _ = child.wait();
    assert!(!out.status.success());
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("appendfsync"), "{text}");
}

/// The epoch of the cursor a replica's snapshot starts with.
async fn snapshot_epoch(auth: SocketAddr) -> String {
    let feed = feed_snapshot(auth).await;
    let first: Value =
        serde_json::from_str(feed.text().lines().next().unwrap_or("")).expect("header");
    first["cursor"]
        .as_str()
        .and_then(|c| c.split('-').next())
        .expect("cursor")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_redis_leaves_every_gateway_enforcing_what_it_held() {
    let dir = tempfile::tempdir().expect("tempdir");
    // A private server: the test empties it whole.
    let redis = RedisServer::start(&dir.path().join("redis"));
    let backend = Backend::start().await;
    let p = prefix("flushall");
    let a = replica(dir.path(), "a", &redis.url(), &p, |a| a);
    let b = replica(dir.path(), "b", &redis.url(), &p, |a| a);
    // Both gateways follow replica A; B serves no feed before the wipe.
    let urls = [format!("http://{}", a.addr), format!("http://{}", b.addr)];
    let mut gws = Vec::new();
    for i in 0..2 {
        let state = dir.path().join(format!("gw{i}.state"));
        gws.push(start_gateway(&revocation_gateway_yaml(backend.addr, &urls, &state, "")).await);
    }
    let gw_addrs: Vec<SocketAddr> = gws.iter().map(|(g, _)| g.addrs()[0]).collect();
    let n = now() as i64;
    let held = [
        (
            json!({"jti": "held-jti"}),
            token_with(|c| {
                c.insert("jti".into(), json!("held-jti"));
            }),
        ),
        (
            json!({"sid": "held-sid"}),
            token_with(|c| {
                c.insert("sid".into(), json!("held-sid"));
            }),
        ),
        (
            json!({"sub": "held-sub", "before": n + 60}),
            token_with(|c| {
                c.insert("sub".into(), json!("held-sub"));
            }),
        ),
    ];
    for (body, token) in &held {
        assert_eq!(
            revoke(b.addr, body.clone()).await.status,
            StatusCode::CREATED
        );
        for gw in &gw_addrs {
            let took = within(Duration::from_secs(8), || async {
                status_of(*gw, token).await.0 == StatusCode::UNAUTHORIZED
            })
            .await;
            assert!(took.is_some(), "revocation reached the gateway");
        }
    }
    let old_epoch = snapshot_epoch(a.addr).await;

    // The AOF is lost: Redis comes back empty.
    let out = std::process::Command::new("redis-cli")
        .args(["-p", &redis.port.to_string(), "FLUSHALL"])
        .output()
        .expect("redis-cli");
    assert!(out.status.success());

    // A revocation made after the wipe reaches both gateways...
    let after = token_with(|c| {
        c.insert("jti".into(), json!("after-wipe"));
    });
    assert_eq!(
        revoke(a.addr, json!({"jti": "after-wipe"})).await.status,
        StatusCode::CREATED
    );
    for gw in &gw_addrs {
        let took = within(Duration::from_secs(8), || async {
            status_of(*gw, &after).await.0 == StatusCode::UNAUTHORIZED
        })
        .await;
        assert!(took.is_some(), "gateway followed the wiped store");
    }
    // ...and everything they held before it is still refused.
    for gw in &gw_addrs {
        for (_, token) in &held {
            assert_eq!(status_of(*gw, token).await.0, StatusCode::UNAUTHORIZED);
        }
    }
    // Both replicas name the new epoch, also the one that served no feed.
    let (ea, eb) = (snapshot_epoch(a.addr).await, snapshot_epoch(b.addr).await);
    assert_ne!(ea, old_epoch);
    assert_eq!(
        ea, eb,
        "replicas agree on the epoch (before the wipe: {old_epoch})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoking_again_after_expiry_creates_the_entry_anew_on_redis() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = RedisServer::shared(&dir.path().join("redis"));
    let p = prefix("expired");
    // The purger does not run during the test: the expired entry stays.
    let a = replica(dir.path(), "a", &redis.url(), &p, |a| {
        a.with("purge_interval", "1h")
    });
    let n = now() as i64;
    for body in [
        json!({"jti": "short-lived", "expires_at": n + 3}),
        json!({"sid": "short-session", "expires_at": n + 3}),
    ] {
        assert_eq!(revoke(a.addr, body).await.status, StatusCode::CREATED);
    }
    let past = within(Duration::from_secs(10), || async { now() as i64 > n + 3 }).await;
    assert!(past.is_some());
    for body in [
        json!({"jti": "short-lived"}),
        json!({"sid": "short-session"}),
    ] {
        let r = revoke(a.addr, body).await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        assert_eq!(r.json()["revocations"][0]["outcome"], "created");
    }
}

/// A revocation without `expires_at` after a short one of the same entry
/// extends it (`updated`), on Redis as on redb (`tests/revocation.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_after_a_short_one_of_the_same_entry_extends_it_on_redis() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = RedisServer::shared(&dir.path().join("redis"));
    let p = prefix("extend");
    let a = replica(dir.path(), "a", &redis.url(), &p, |a| a);
    let n = now() as i64;
    for (kind, value) in [
        ("jti", "short-then-long"),
        ("sid", "short-then-long"),
        ("sub", "short-then-long"),
    ] {
        let short = revoke(a.addr, json!({kind: value, "expires_at": n + 3})).await;
        assert_eq!(
            short.status,
            StatusCode::CREATED,
            "{kind}: {}",
            short.text()
        );
        let first = short.json()["revocations"][0]["expires_at"]
            .as_i64()
            .expect("expires_at");
        let long = revoke(a.addr, json!({kind: value})).await;
        let r = &long.json()["revocations"][0];
        assert_eq!(r["outcome"], "updated", "{kind}: {}", long.text());
        assert!(
            r["expires_at"].as_i64().expect("expires_at") > first + 600,
            "{kind}: {}",
            long.text()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_logout_token_replayed_to_another_replica_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = RedisServer::shared(&dir.path().join("redis"));
    let p = prefix("replay");
    let a = replica(dir.path(), "a", &redis.url(), &p, |a| a);
    let b = replica(dir.path(), "b", &redis.url(), &p, |a| a);
    let n = now() as i64;
    let claims = json!({"iss": ISS, "aud": AUD, "iat": n, "exp": n + 120, "jti": "lt-shared",
        "sid": "shared-logout", "events": {"http://schemas.openid.net/event/backchannel-logout": {}}});
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
    h.kid = Some("test-rs256".into());
    h.typ = Some("logout+jwt".into());
    let lt = jsonwebtoken::encode(&h, &claims, &key_for(jsonwebtoken::Algorithm::RS256))
        .expect("logout token");
    let post = |addr: SocketAddr| {
        let req = http::Request::post("/backchannel-logout")
            .header("host", "authority")
            .header("content-type", "application/x-www-form-urlencoded")
            .body(http_body_util::BodyExt::boxed(
                http_body_util::BodyExt::map_err(
                    http_body_util::Full::new(bytes::Bytes::from(format!("logout_token={lt}"))),
                    |n| match n {},
                ),
            ))
            .expect("req");
        send(addr, Proto::Plain, "authority", req)
    };
    assert_eq!(post(a.addr).await.status, StatusCode::OK);
    let replay = post(b.addr).await;
    assert_eq!(replay.status, StatusCode::BAD_REQUEST);
    assert!(replay.text().contains("replayed"), "{}", replay.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_second_logins_evict_the_one_that_arrived_first_on_redis() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = RedisServer::shared(&dir.path().join("redis"));
    let p = prefix("arrival");
    let extra: Tune = |a| a.with("max_sessions_per_subject", 3);
    let a = replica(dir.path(), "a", &redis.url(), &p, extra);
    let b = replica(dir.path(), "b", &redis.url(), &p, extra);
    let n = now() as i64;
    let mut replaced = Vec::new();
    for (i, sid) in ["z1", "z2", "z3", "a4"].iter().enumerate() {
        let via = if i % 2 == 0 { a.addr } else { b.addr };
        let body = json!({"sub": "frank", "sid": sid, "started_at": n});
        let r = admin(via, "POST", "/v1/sessions", Some(body)).await;
        assert_eq!(r.status, StatusCode::OK);
        replaced.push(r.json()["replaced"].clone());
    }
    assert_eq!(replaced, [json!([]), json!([]), json!([]), json!(["z1"])]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waited_revocation_through_one_replica_completes_while_gateways_poll_the_other() {
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = RedisServer::shared(&dir.path().join("redis"));
    let backend = Backend::start().await;
    let p = prefix("receipts");
    let a = replica(dir.path(), "a", &redis.url(), &p, |a| a);
    let b = replica(dir.path(), "b", &redis.url(), &p, |a| a);
    // Every gateway polls replica B only.
    let urls = [format!("http://{}", b.addr)];
    let mut gws = Vec::new();
    for i in 0..3 {
        let state = dir.path().join(format!("gw{i}.state"));
        let token = dir.path().join("feed.token");
        std::fs::write(&token, FEED).expect("token");
        let yaml = yaml::Config::gateway()
            .route(yaml::Route::to(backend.addr))
            .revocation(
                yaml::Revocation::authority(&urls, &token, &state).with("name", format!("gw-{i}")),
            )
            .yaml();
        gws.push(start_gateway(&yaml).await);
    }
    // Replica A sees the gateways that poll B: the table is shared.
    let start = std::time::Instant::now();
    loop {
        let t = admin(a.addr, "GET", "/v1/gateways", None).await.json();
        if t["gateways"].as_array().map_or(0, Vec::len) == 3 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "A never listed the gateways: {t}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gw_addrs: Vec<SocketAddr> = gws.iter().map(|(g, _)| g.addrs()[0]).collect();
    for round in 0..20 {
        let jti = format!("via-a-{round}");
        let token = token_with(|c| {
            c.insert("jti".into(), json!(jti));
        });
        for gw in &gw_addrs {
            assert_eq!(status_of(*gw, &token).await.0, StatusCode::OK);
        }
        let r = admin(
            a.addr,
            "POST",
            "/v1/revocations?wait=applied&timeout=5s",
            Some(json!({"jti": jti})),
        )
        .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.text());
        let receipt = &r.json()["receipt"];
        assert_eq!(receipt["complete"], true, "{receipt}");
        assert_eq!(
            receipt["gateways"].as_array().map(Vec::len),
            Some(3),
            "{receipt}"
        );
        for gw in &gw_addrs {
            assert_eq!(
                status_of(*gw, &token).await.0,
                StatusCode::UNAUTHORIZED,
                "round {round}"
            );
        }
    }
}
