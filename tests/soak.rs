//! The short version of `benches/wrk/soak.sh`, run with every `cargo
//! test`: a few seconds of concurrent keep-alive load mixing valid,
//! being-revoked and invalid tokens, while a real authority revokes a token
//! every 100 ms and the gateway config is reloaded every second. Every
//! answer must be the right one, and the backend's own record must show no
//! revoked token forwarded after its revocation had propagated.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_test_support::*;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

type Seen = Arc<Mutex<Vec<(Instant, String)>>>;

/// A backend recording when it saw each token id.
async fn recording_backend() -> (SocketAddr, Seen) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let seen: Seen = Arc::default();
    let log = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let id = req
                            .headers()
                            .get("x-token-id")
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned();
                        if let Ok(mut l) = log.lock() {
                            l.push((Instant::now(), id));
                        }
                        async {
                            Ok::<_, Infallible>(http::Response::new(Full::new(Bytes::from_static(
                                b"ok",
                            ))))
                        }
                    });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

fn gateway_yaml(
    backend: SocketAddr,
    authority: SocketAddr,
    state: &std::path::Path,
    generation: u32,
) -> String {
    revocation_gateway_yaml(backend, &[format!("http://{authority}")], state, "").replace(
        "    backends: [http://",
        &format!(
            "    identity_headers: [{{ claim: jti, header: X-Token-Id }}]\n    # generation {generation}\n    backends: [http://"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_load_with_revocations_and_reloads_lets_no_revoked_token_through() {
    crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    let auth_cfg = dir.path().join("authority.yaml");
    let store = yaml::Store::Redb(dir.path().join("store.redb"));
    std::fs::write(
        &auth_cfg,
        yaml::Config::authority(yaml::Authority::new(dir.path(), 0, store))
            .issuers(vec![yaml::Issuer::test().with("algorithms", "[RS256]")])
            .yaml(),
    )
    .expect("write");
    let loaded = gatehouse::config::load_for(&auth_cfg, gatehouse::config::Mode::Authority)
        .expect("authority config");
    let section = loaded.config.authority.clone().expect("section");
    let auth = gatehouse::authority::start(&section.value, &loaded)
        .await
        .expect("authority");
    let (backend, seen) = recording_backend().await;
    let state = dir.path().join("gw.state");
    let (gw, gw_dir) = start_gateway(&gateway_yaml(backend, auth.addr(), &state, 0)).await;
    let gw_addr = gw.addrs()[0];

    let valid: Vec<String> = (0..100)
        .map(|i| {
            token_with(|c| {
                c.insert("jti".into(), json!(format!("valid-{i}")));
            })
        })
        .collect();
    let doomed: Vec<(String, String)> = (0..60)
        .map(|i| {
            let jti = format!("doomed-{i}");
            let t = token_with(|c| {
                c.insert("jti".into(), json!(jti.clone()));
            });
            (jti, t)
        })
        .collect();
    let invalid: Vec<String> = valid
        .iter()
        .take(20)
        .map(|t| format!("{}AAAA", &t[..t.len() - 4]))
        .collect();
    let acked: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let run_for = Duration::from_secs(6);
    let start = Instant::now();

    // Load: 16 keep-alive clients.
    let http: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut load = Vec::new();
    for w in 0..16u64 {
        let (http, valid, doomed, invalid) =
            (http.clone(), valid.clone(), doomed.clone(), invalid.clone());
        let acked = acked.clone();
        load.push(tokio::spawn(async move {
            let mut n = w.wrapping_mul(0x9E37_79B9) + 1;
            let mut answers = 0u64;
            while start.elapsed() < run_for {
                n ^= n << 13;
                n ^= n >> 7;
                n ^= n << 17;
                let pick = (n % 10) as usize;
                let (token, want): (&str, Option<u16>) = if pick < 6 {
                    (&valid[(n as usize / 10) % valid.len()], Some(200))
                } else if pick < 9 {
                    let (jti, t) = &doomed[(n as usize / 10) % doomed.len()];
                    // Refused for sure once revoked for a second.
                    let sure = acked
                        .lock()
                        .ok()
                        .and_then(|a| a.get(jti).copied())
                        .is_some_and(|at| at.elapsed() > Duration::from_secs(1));
                    (t, sure.then_some(401))
                } else {
                    (&invalid[(n as usize / 10) % invalid.len()], Some(401))
                };
                let req = http::Request::get(format!("http://{gw_addr}/soak"))
                    .header("authorization", format!("Bearer {token}"))
                    .body(Full::new(Bytes::new()))
                    .expect("request");
                let status = match http.request(req).await {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let _ = r.into_body().collect().await;
                        s
                    }
                    Err(e) => panic!("request failed: {e}"),
                };
                assert!(status == 200 || status == 401, "answered {status}");
                if let Some(w) = want {
                    assert_eq!(status, w, "token {}", &token[token.len() - 8..]);
                }
                answers += 1;
            }
            answers
        }));
    }
    // A revocation every 100 ms through the authority.
    let revoker = {
        let (acked, doomed, addr) = (acked.clone(), doomed.clone(), auth.addr());
        tokio::spawn(async move {
            for (jti, _) in &doomed {
                if start.elapsed() > run_for - Duration::from_millis(500) {
                    break;
                }
                let r = admin(addr, "POST", "/v1/revocations", Some(json!({"jti": jti}))).await;
                assert_eq!(r.status, http::StatusCode::CREATED);
                if let Ok(mut a) = acked.lock() {
                    a.insert(jti.clone(), Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    // A reload every second.
    let mut reloads = 0;
    while start.elapsed() < run_for {
        tokio::time::sleep(Duration::from_secs(1)).await;
        reloads += 1;
        std::fs::write(
            gw_dir.path().join("gatehouse.yaml"),
            gateway_yaml(backend, auth.addr(), &state, reloads),
        )
        .expect("write");
        gw.reload().await.expect("reload");
    }
    revoker.await.expect("revoker");
    let mut answers = 0;
    for l in load {
        answers += l.await.expect("a load task failed");
    }
    assert!(answers > 1000, "only {answers} requests");
    assert!(reloads >= 4);

    // The backend's record: no doomed token after its revocation had
    // propagated (a second after the authority's 2xx, at the very most).
    let acked = acked.lock().expect("acked").clone();
    assert!(acked.len() >= 30, "only {} revocations", acked.len());
    let seen = seen.lock().expect("seen").clone();
    let mut late = Vec::new();
    for (at, id) in &seen {
        if let Some(ack) = acked.get(id) {
            if at.saturating_duration_since(*ack) > Duration::from_secs(1) {
                late.push(id.clone());
            }
        }
    }
    assert!(late.is_empty(), "revoked tokens forwarded late: {late:?}");
}
