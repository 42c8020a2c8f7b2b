//! The state request workers share, under 1 and 2 threads at once, each
//! thread pinned to its own core (performance issue, target 3: where would
//! it contend at 16–64 cores?). Every case times `iters` operations on
//! each of `T` threads running together, so the figure is the time of one
//! operation on one thread: flat from 1 to 2 threads means no contention;
//! a rise is what a cache line bounced between cores costs.
//!
//! - `decide/one-token`: the whole policy, `Proxy::decide` (canonical
//!   path, route, bearer token from the per-thread memo, revocation set,
//!   identity headers), every thread sending the same token, after the
//!   per-request preamble the server runs (the current generation loaded
//!   from its `ArcSwap`, compared with the connection's, and the
//!   connection's `Arc` cloned);
//! - `decide/own-token`: the same, each thread with its own token;
//! - `token-cache/get`: a lookup in the shared verified-token cache
//!   (quick_cache), which a request does when the per-thread memo misses,
//!   every thread looking up the same token;
//! - `token-cache/get-10k`: the same over 10,000 cached tokens in rotation,
//!   as with a fleet of clients (`benches/wrk/tail.sh`'s 10k rows);
//! - `metrics/record`: counting a request and its latency;
//! - `control/sha256-own`: each thread hashes its own token, sharing
//!   nothing: what a second busy core costs by itself on this machine
//!   (shared caches, memory bandwidth, clock), so that a rise in the other
//!   cases can be told apart from contention;
//! - `arc/shared-clone` and `arc/own-clone`: one `Arc` cloned and dropped,
//!   shared by all threads or one per thread: the unit of the model (one
//!   write to a cache line every core writes).

use std::future::Future;
use std::hint::black_box;
use std::path::PathBuf;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use criterion::{criterion_group, criterion_main, Criterion};
use gatehouse::auth::jwt::{Cached, TokenCache};
use gatehouse::proxy::{headers::ClientAddr, ConnInfo, Outcome, Proxy};
use gatehouse::revocation::model::{Kind, Revocation};
use gatehouse::revocation::Revocations;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn fixture(n: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(n)
}

/// Pins the calling thread to `core` (modulo the cores there are).
fn pin(core: usize) {
    let n = std::thread::available_parallelism().map_or(1, |p| p.get());
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the calls only read
    // and write the set we own.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core % n, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Runs `op(thread)` `iters` times on each of `threads` pinned threads at
/// once; the wall time of the slowest. `setup(thread)` runs first, untimed.
fn on_threads<S, F>(threads: usize, iters: u64, setup: &S, op: &F) -> Duration
where
    S: Fn(usize) + Sync,
    F: Fn(usize) + Sync,
{
    let start = Barrier::new(threads + 1);
    let end = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        for t in 0..threads {
            let (start, end) = (&start, &end);
            s.spawn(move || {
                pin(t);
                setup(t);
                start.wait();
                for _ in 0..iters {
                    op(t);
                }
                end.wait();
            });
        }
        start.wait();
        let t0 = Instant::now();
        end.wait();
        t0.elapsed()
    })
}

thread_local! {
    /// The connection's bound policy (`server::Bound`): one `Arc` per
    /// connection, re-bound when the generation changes.
    static HELD: std::cell::RefCell<Option<Arc<Bound>>> = const { std::cell::RefCell::new(None) };
}

/// As `server::Bound`: what a connection hands each of its requests.
struct Bound {
    proxy: Arc<Proxy>,
}

fn bench(c: &mut Criterion) {
    gatehouse::auth::jwt::install_crypto_and_self_test().expect("crypto");
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg_path = dir.path().join("bench.yaml");
    std::fs::write(
        &cfg_path,
        format!(
            r#"
listeners: [{{ address: 127.0.0.1:0 }}]
issuers:
  - issuer: https://issuer.test
    audiences: [app]
    algorithms: [RS256]
    jwks: {{ file: {jwks} }}
routes:
  - backends: [http://127.0.0.1:9]
    identity_headers:
      - {{ claim: sub, header: X-Auth-Subject }}
      - {{ claim: email, header: X-Auth-Email }}
"#,
            jwks = fixture("jwks.json").display()
        ),
    )
    .expect("write config");
    let loaded = gatehouse::config::load(&cfg_path).expect("config");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    // 1M revocations, as in the wrk runs: the lookups hit a big set.
    let n = jsonwebtoken::get_current_timestamp() as i64;
    let revoked: Vec<Revocation> = (0..1_000_000)
        .map(|i| Revocation {
            id: i + 1,
            issuer: "https://issuer.test".into(),
            kind: Kind::Jti,
            value: format!("r-{i}"),
            before: None,
            reason: "logout".into(),
            created_at: n,
            expires_at: n + 3600,
        })
        .collect();
    let revocations = Revocations::fixed(&revoked, true);
    let proxy = Arc::new(
        rt.block_on(Proxy::from_config(&loaded, Some(revocations)))
            .expect("proxy"),
    );
    let current = ArcSwap::from(proxy);
    let conn = ConnInfo {
        peer: "203.0.113.7:50000".parse().expect("addr"),
        client: ClientAddr::new("203.0.113.7".parse().expect("ip")),
        tls: true,
        unix_socket: false,
        cert_names: None,
        listener: 0,
        hold: None,
    };
    let key = EncodingKey::from_rsa_pem(&std::fs::read(fixture("rs256.key.pem")).expect("key"))
        .expect("key");
    let now = jsonwebtoken::get_current_timestamp();
    let request_for = |sub: &str| {
        let claims = json!({"iss": "https://issuer.test", "aud": "app", "sub": sub, "iat": now,
                            "exp": now + 3600, "jti": format!("jti-{sub}"), "email": "bench@example.test"});
        let mut h = Header::new(Algorithm::RS256);
        h.kid = Some("test-rs256".to_owned());
        let token = jsonwebtoken::encode(&h, &claims, &key).expect("mint");
        http::Request::get("/reports/weekly?x=1")
            .header("host", "app.example.com")
            .header("authorization", format!("Bearer {token}"))
            .body(())
            .expect("request")
            .into_parts()
            .0
    };
    let shared = request_for("bench-user");
    let own: Vec<http::request::Parts> =
        (0..2).map(|t| request_for(&format!("user-{t}"))).collect();
    // The server's per-request preamble, then the policy. `decide` finds
    // a cached token without waiting, so one poll completes it.
    let decide = |parts: &http::request::Parts| {
        let held = HELD.with(|h| {
            let now = current.load();
            let mut h = h.borrow_mut();
            match &*h {
                Some(b) if Arc::ptr_eq(&b.proxy, &*now) => {}
                _ => {
                    *h = Some(Arc::new(Bound {
                        proxy: Arc::clone(&now),
                    }))
                }
            }
            h.clone()
        });
        let Some(bound) = held else { return false };
        let proxy = &bound.proxy;
        let mut out = Outcome::default();
        let mut f = std::pin::pin!(proxy.decide(parts, &conn, &mut out));
        let waker = std::task::Waker::noop();
        match f.as_mut().poll(&mut std::task::Context::from_waker(waker)) {
            std::task::Poll::Ready(d) => d.is_ok(),
            std::task::Poll::Pending => false,
        }
    };
    // A first, full verification fills the shared cache.
    let warm = |parts: &http::request::Parts| {
        rt.block_on(async {
            let mut out = Outcome::default();
            current.load().decide(parts, &conn, &mut out).await.is_ok()
        })
    };
    assert!(warm(&shared), "the bench token is accepted");
    for p in &own {
        assert!(warm(p), "the bench token is accepted");
    }
    // Filling each thread's memo: its first decide finds the shared cache.
    let memo_fill = |t: usize| {
        assert!(
            decide(&shared) && decide(&own[t]),
            "cached tokens decide at once"
        );
    };

    let cache = TokenCache::new(100_000, Duration::from_secs(300));
    let cache_key = TokenCache::key("a token");
    let mut claims = serde_json::Map::new();
    claims.insert("sub".into(), json!("bench-user"));
    claims.insert("exp".into(), json!(now + 3600));
    let identity = gatehouse::auth::Identity::from_claims(
        Arc::from("idp"),
        Arc::from("https://issuer.test"),
        claims,
    )
    .expect("identity");
    cache.insert(
        cache_key,
        Cached {
            identity: Arc::new(identity),
            verified_by: None,
            until: now as i64 + 3600,
        },
    );
    let many: Vec<[u8; 32]> = (0..10_000)
        .map(|i| TokenCache::key(&format!("token {i}")))
        .collect();
    for k in &many {
        cache.insert(
            *k,
            Cached {
                identity: Arc::new(
                    gatehouse::auth::Identity::from_claims(
                        Arc::from("idp"),
                        Arc::from("https://issuer.test"),
                        serde_json::Map::from_iter([
                            ("sub".to_owned(), json!("bench-user")),
                            ("exp".to_owned(), json!(now + 3600)),
                        ]),
                    )
                    .expect("identity"),
                ),
                verified_by: None,
                until: now as i64 + 3600,
            },
        );
    }
    let shared_arc = Arc::new(0u64);
    let own_arcs = [Arc::new(0u64), Arc::new(0u64)];
    let route: Arc<str> = Arc::from("default");
    let nothing = |_t: usize| {};

    let mut g = c.benchmark_group("shared");
    for threads in [1usize, 2] {
        let name = |case: &str| format!("{case}/{threads}-threads");
        g.bench_function(name("decide/one-token"), |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, &memo_fill, &|_| {
                    black_box(decide(black_box(&shared)));
                })
            })
        });
        g.bench_function(name("decide/own-token"), |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, &memo_fill, &|t| {
                    black_box(decide(black_box(&own[t])));
                })
            })
        });
        g.bench_function(name("token-cache/get"), |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, &nothing, &|_| {
                    black_box(cache.get(black_box(&cache_key)));
                })
            })
        });
        g.bench_function(name("token-cache/get-10k"), |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, &nothing, &|t| {
                    // Each thread its own walk through the keys, its
                    // counter its own (a shared one would be contention
                    // of the bench's making).
                    thread_local!(static NEXT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) });
                    let i = NEXT.with(|n| {
                        n.set(n.get() + 1);
                        n.get()
                    });
                    let k = &many[(i * 7919 + t * 5003) % many.len()];
                    black_box(cache.get(black_box(k)));
                })
            })
        });
        g.bench_function(name("metrics/record"), |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, &nothing, &|_| {
                    gatehouse_core::metrics::metrics()
                        .record_request(&route, 200, "allowed", 0.000_2);
                })
            })
        });
        g.bench_function(name("control/sha256-own"), |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, &nothing, &|t| {
                    let token = own[t]
                        .headers
                        .get("authorization")
                        .map_or(&[][..], |v| v.as_bytes());
                    black_box(aws_lc_rs::digest::digest(
                        &aws_lc_rs::digest::SHA256,
                        black_box(token),
                    ));
                })
            })
        });
        g.bench_function(name("arc/shared-clone"), |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, &nothing, &|_| {
                    black_box(Arc::clone(black_box(&shared_arc)));
                })
            })
        });
        g.bench_function(name("arc/own-clone"), |b| {
            b.iter_custom(|iters| {
                on_threads(threads, iters, &nothing, &|t| {
                    black_box(Arc::clone(black_box(&own_arcs[t])));
                })
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
