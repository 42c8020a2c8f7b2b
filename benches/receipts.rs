//! What a waited revocation costs, against the unwaited one, in the same
//! run, with 1, 3 and 8 gateway processes on this machine.
//!
//! For each gateway count: an authority process (embedded redb store) and
//! that many named gateway processes long-polling it. Then `N` rounds,
//! alternating:
//! - **unwaited**: `POST /v1/revocations`, and the time from sending it to
//!   the first 401 at the *slowest* gateway (each polled in a loop on its
//!   own keep-alive connection): the propagation a caller cannot see;
//! - **waited**: `POST /v1/revocations?wait=applied`, the time until the
//!   answer (whose receipt must be complete), and then a check that every
//!   gateway refuses the token at once.
//!
//! Target (issue 16): waited p99 ≤ 2 × unwaited propagation p99.
//!
//! `cargo bench --bench receipts` (N=300 per mode and count; `RECEIPTS_N`
//! changes it, `RECEIPTS_GATEWAYS=1,3,8` the counts).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_test_support::*;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::{json, Value};

type Http = Client<HttpConnector, Full<Bytes>>;

async fn call(http: &Http, req: http::Request<Full<Bytes>>) -> (u16, Bytes) {
    match http.request(req).await {
        Ok(r) => {
            let s = r.status().as_u16();
            let b = r
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            (s, b)
        }
        Err(_) => (0, Bytes::new()),
    }
}

async fn revoke(http: &Http, auth: SocketAddr, query: &str, jti: &str) -> (u16, Value) {
    let req = http::Request::post(format!("http://{auth}/v1/revocations{query}"))
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(json!({ "jti": jti }).to_string())))
        .expect("request");
    let (s, b) = call(http, req).await;
    (s, serde_json::from_slice(&b).unwrap_or(Value::Null))
}

async fn status(http: &Http, gw: SocketAddr, token: &str) -> u16 {
    let req = http::Request::get(format!("http://{gw}/"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    call(http, req).await.0
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

struct Row {
    gateways: usize,
    unwaited_call: Vec<f64>,
    propagation: Vec<f64>,
    waited: Vec<f64>,
}

async fn run(count: usize, n: usize) -> Row {
    let dir = tempfile::tempdir().expect("tempdir");
    let a = yaml::Authority::redb(dir.path(), 0);
    let auth = Proc::start(
        "authority",
        &yaml::Config::authority(a).yaml(),
        "authority listening",
    );
    let backend = Backend::start().await;
    let token_file = dir.path().join("feed.token");
    let gws: Vec<Proc> = (0..count)
        .map(|i| {
            let state = dir.path().join(format!("gw{i}.state"));
            let yaml = yaml::Config::gateway()
                .route(yaml::Route::to(backend.addr))
                .revocation(
                    yaml::Revocation::authority(
                        &[format!("http://{}", auth.addr)],
                        &token_file,
                        &state,
                    )
                    .with("name", format!("gw-{i}")),
                )
                .yaml();
            Proc::start("run", &yaml, "listening")
        })
        .collect();
    let http: Http = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build_http();
    // Every gateway has polled once (the table lists them all).
    let start = Instant::now();
    loop {
        let req = http::Request::get(format!("http://{}/v1/gateways", auth.addr))
            .header("authorization", format!("Bearer {ADMIN}"))
            .body(Full::new(Bytes::new()))
            .expect("request");
        let (_, b) = call(&http, req).await;
        let v: Value = serde_json::from_slice(&b).unwrap_or(Value::Null);
        if v["gateways"].as_array().map_or(0, Vec::len) == count {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "gateways never all polled"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut row = Row {
        gateways: count,
        unwaited_call: Vec::new(),
        propagation: Vec::new(),
        waited: Vec::new(),
    };
    for i in 0..2 * n {
        let jti = format!("bench-{count}-{i}");
        let token = token_with(|c| {
            c.insert("jti".into(), json!(jti));
        });
        for g in &gws {
            assert_eq!(status(&http, g.addr, &token).await, 200);
        }
        let t0 = Instant::now();
        if i % 2 == 0 {
            let admin_call = {
                let (http, jti, addr) = (http.clone(), jti.clone(), auth.addr);
                tokio::spawn(async move {
                    let r = revoke(&http, addr, "", &jti).await;
                    (r.0, t0.elapsed())
                })
            };
            let mut waits = Vec::new();
            for g in &gws {
                let (http, token, addr) = (http.clone(), token.clone(), g.addr);
                waits.push(tokio::spawn(async move {
                    while status(&http, addr, &token).await != 401 {
                        assert!(t0.elapsed() < Duration::from_secs(10), "never propagated");
                    }
                    t0.elapsed()
                }));
            }
            let (s, took) = admin_call.await.expect("admin call");
            assert_eq!(s, 201);
            row.unwaited_call.push(took.as_secs_f64() * 1000.0);
            let mut slowest = Duration::ZERO;
            for w in waits {
                slowest = slowest.max(w.await.expect("wait"));
            }
            row.propagation.push(slowest.as_secs_f64() * 1000.0);
        } else {
            let (s, body) = revoke(&http, auth.addr, "?wait=applied&timeout=5s", &jti).await;
            let took = t0.elapsed();
            assert_eq!(s, 201, "{body}");
            assert_eq!(body["receipt"]["complete"], true, "{body}");
            row.waited.push(took.as_secs_f64() * 1000.0);
            for g in &gws {
                assert_eq!(
                    status(&http, g.addr, &token).await,
                    401,
                    "stale after a waited revocation"
                );
            }
        }
    }
    drop(gws);
    drop(auth);
    row
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    crypto();
    let n: usize = std::env::var("RECEIPTS_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300);
    let counts: Vec<usize> = std::env::var("RECEIPTS_GATEWAYS")
        .unwrap_or_else(|_| "1,3,8".into())
        .split(',')
        .filter_map(|c| c.trim().parse().ok())
        .collect();
    println!("{n} unwaited and {n} waited revocations (alternating) per gateway count, one authority (redb)");
    println!("| gateways | unwaited answer p50 / p99 ms | unwaited propagation to the slowest gateway p50 / p99 ms | waited answer p50 / p99 ms | waited p99 / propagation p99 |");
    println!("|---|---|---|---|---|");
    for c in counts {
        let mut r = run(c, n).await;
        for v in [&mut r.unwaited_call, &mut r.propagation, &mut r.waited] {
            v.sort_by(f64::total_cmp);
        }
        println!(
            "| {} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} |",
            r.gateways,
            pct(&r.unwaited_call, 0.5),
            pct(&r.unwaited_call, 0.99),
            pct(&r.propagation, 0.5),
            pct(&r.propagation, 0.99),
            pct(&r.waited, 0.5),
            pct(&r.waited, 0.99),
            pct(&r.waited, 0.99) / pct(&r.propagation, 0.99),
        );
    }
}
