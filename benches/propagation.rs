//! Revocation propagation across machines' worth of processes, and the
//! authority's write throughput on Redis against the embedded store.
//!
//! Starts a `redis-server` (AOF, `appendfsync always`), two authority
//! replicas A and B on it, an embedded-store authority, and three gateway
//! processes whose feeds long-poll replica B. Then:
//! 1. `N` revocations, one at a time, each through replica A: the time
//!    from sending the admin call to the first 401 at each gateway (each
//!    gateway polled on its own keep-alive connection), p50/p99/max;
//! 2. write throughput: `W` single-entry `POST /v1/revocations` from 64
//!    concurrent keep-alive clients, to replica A (Redis) and to the
//!    embedded-store authority, in the same run.
//!
//! `cargo bench --bench propagation` (N=1000, W=20000; `PROPAGATION_N`,
//! `WRITES_N` change them). Needs `redis-server` on PATH.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_test_support::*;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::json;

type Http = Client<HttpConnector, Full<Bytes>>;

fn authority_yaml(dir: &Path, store: &str) -> String {
    std::fs::create_dir_all(dir).expect("dir");
    write_authority_tokens(dir);
    format!(
        r#"
issuers:
  - issuer: {ISS}
    audiences: [{AUD}]
    algorithms: [RS256]
    jwks: {{ file: {jwks} }}
    max_token_lifetime: 1h
authority:
  listen: 127.0.0.1:0
{store}
  admin_token: {{ file: admin.token }}
  feed_token: {{ file: feed.token }}
logging: {{ format: json, level: info }}
"#,
        jwks = fixture("jwks.json").display(),
    )
}

fn start_authority(dir: &Path, store: &str) -> Proc {
    let cfg = dir.join("authority.yaml");
    std::fs::write(&cfg, authority_yaml(dir, store)).expect("write");
    Proc::start_with("authority", &cfg, "authority listening")
}

async fn post(http: &Http, addr: SocketAddr, body: String) -> u16 {
    let req = http::Request::post(format!("http://{addr}/v1/revocations"))
        .header("authorization", format!("Bearer {ADMIN}"))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("request");
    match http.request(req).await {
        Ok(r) => {
            let s = r.status().as_u16();
            let _ = r.into_body().collect().await;
            s
        }
        Err(_) => 0,
    }
}

async fn status(http: &Http, gw: SocketAddr, token: &str) -> u16 {
    let req = http::Request::get(format!("http://{gw}/"))
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .expect("request");
    match http.request(req).await {
        Ok(r) => {
            let s = r.status().as_u16();
            let _ = r.into_body().collect().await;
            s
        }
        Err(_) => 0,
    }
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(i).copied().unwrap_or(f64::NAN)
}

async fn writes(http: &Http, addr: SocketAddr, n: usize, tag: &str) -> f64 {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..64 {
        let (http, next, tag) = (http.clone(), next.clone(), tag.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut bad = 0;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    return bad;
                }
                let s = post(
                    &http,
                    addr,
                    json!({"jti": format!("{tag}-{i}")}).to_string(),
                )
                .await;
                if s != 201 {
                    bad += 1;
                }
            }
        }));
    }
    let mut bad = 0;
    for t in tasks {
        bad += t.await.unwrap_or(1);
    }
    assert_eq!(bad, 0, "writes to {tag} failed");
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    crypto();
    let n: usize = std::env::var("PROPAGATION_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let w: usize = std::env::var("WRITES_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let dir = tempfile::tempdir().expect("tempdir");
    let redis = RedisServer::start(&dir.path().join("redis"));
    let store = format!(
        "  store:\n    redis:\n      url: {}\n      key_prefix: \"bench:\"",
        redis.url()
    );
    let a = start_authority(&dir.path().join("a"), &store);
    let b = start_authority(&dir.path().join("b"), &store);
    let embedded = start_authority(
        &dir.path().join("e"),
        &format!("  path: {}", dir.path().join("e/store.redb").display()),
    );
    let backend = Backend::start().await;
    let mut gws = Vec::new();
    for i in 0..3 {
        let state = dir.path().join(format!("gw{i}.state"));
        let yaml =
            revocation_gateway_yaml(backend.addr, &[format!("http://{}", b.addr)], &state, "");
        gws.push(Proc::start("run", &yaml, "listening"));
    }
    let http: Http = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(128)
        .build_http();

    // 1. Propagation: through A, observed at gateways polling B.
    let mut per_gw: Vec<Vec<f64>> = vec![Vec::new(); gws.len()];
    for i in 0..n {
        let jti = format!("prop-{i}");
        let token = token_with(|c| {
            c.insert("jti".into(), json!(jti));
        });
        for g in &gws {
            assert_eq!(
                status(&http, g.addr, &token).await,
                200,
                "fresh token refused"
            );
        }
        let t0 = Instant::now();
        let body = json!({"jti": jti}).to_string();
        let admin_call = {
            let http = http.clone();
            tokio::spawn(async move { post(&http, a.addr, body).await })
        };
        let mut waits = Vec::new();
        for g in &gws {
            let (http, token, addr) = (http.clone(), token.clone(), g.addr);
            waits.push(tokio::spawn(async move {
                loop {
                    if status(&http, addr, &token).await == 401 {
                        return t0.elapsed();
                    }
                    assert!(t0.elapsed() < Duration::from_secs(10), "never propagated");
                }
            }));
        }
        assert_eq!(admin_call.await.unwrap_or(0), 201);
        for (k, w) in waits.into_iter().enumerate() {
            let d = w.await.expect("wait task");
            per_gw[k].push(d.as_secs_f64() * 1000.0);
        }
    }
    println!("propagation: {n} revocations through replica A, gateways long-polling replica B");
    println!("| gateway | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|");
    let mut all = Vec::new();
    for (k, v) in per_gw.iter_mut().enumerate() {
        v.sort_by(f64::total_cmp);
        println!(
            "| {} | {:.2} | {:.2} | {:.2} |",
            k + 1,
            pct(v, 0.5),
            pct(v, 0.99),
            pct(v, 1.0)
        );
        all.extend_from_slice(v);
    }
    all.sort_by(f64::total_cmp);
    println!(
        "| all | {:.2} | {:.2} | {:.2} |",
        pct(&all, 0.5),
        pct(&all, 0.99),
        pct(&all, 1.0)
    );

    // 2. Write throughput, same run, same machine.
    let embedded_rate = writes(&http, embedded.addr, w, "emb").await;
    let redis_rate = writes(&http, a.addr, w, "redis").await;
    println!("\nwrites: {w} single-entry POST /v1/revocations, 64 concurrent keep-alive clients");
    println!("| store | writes/s | ratio |");
    println!("|---|---|---|");
    println!("| embedded (redb, fsync per write) | {embedded_rate:.0} | 1.00 |");
    println!(
        "| Redis (appendfsync always) via replica A | {redis_rate:.0} | {:.2} |",
        redis_rate / embedded_rate
    );
}
