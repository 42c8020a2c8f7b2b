//! Header rewriting on the request path: what the gateway does to every
//! forwarded request's headers (client identity/forwarding copies removed,
//! hop-by-hop removed, forwarding headers set), next to a baseline of
//! cloning the same header map (what touching every header at all costs).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use gatehouse::proxy::headers::{
    set_forwarding, strip_client_claims, strip_hop_by_hop, ClientAddr, StripRules,
};
use http::{HeaderMap, HeaderValue};

/// The allocator the gateway runs with (`src/main.rs`): header rewriting
/// allocates, and glibc's malloc would make it look dearer than it is.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A browser-like request: nine ordinary headers and a bearer token.
fn browser_request() -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "app.example.com"),
        (
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) Gecko/20100101 Firefox/128.0",
        ),
        (
            "accept",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
        ),
        ("accept-language", "en-GB,en;q=0.5"),
        ("accept-encoding", "gzip, deflate, br"),
        ("referer", "https://app.example.com/dashboard"),
        ("cookie", "theme=dark; lang=en"),
        ("sec-fetch-mode", "navigate"),
        ("cache-control", "max-age=0"),
        (
            "authorization",
            "Bearer eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1In0.c2ln",
        ),
    ] {
        h.insert(k, HeaderValue::from_static(v));
    }
    h
}

fn bench(c: &mut Criterion) {
    let rules = StripRules::new(["x-auth-subject", "x-auth-email"], []);
    let client = ClientAddr::new("203.0.113.7".parse().expect("ip"));
    let plain = browser_request();
    let mut spoofed = browser_request();
    spoofed.insert("x_auth_subject", HeaderValue::from_static("admin"));
    spoofed.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
    spoofed.insert(
        "connection",
        HeaderValue::from_static("keep-alive, x-private"),
    );
    spoofed.insert("x-private", HeaderValue::from_static("1"));

    let mut g = c.benchmark_group("headers");
    g.bench_function("baseline/clone", |b| b.iter(|| black_box(plain.clone())));
    let rewrite = |h: &mut HeaderMap| {
        strip_client_claims(h, &rules, true);
        strip_hop_by_hop(h, false);
        set_forwarding(h, &client, "https", "app.example.com");
    };
    g.bench_function("clone+rewrite/plain", |b| {
        b.iter(|| {
            let mut h = plain.clone();
            rewrite(&mut h);
            black_box(h)
        })
    });
    g.bench_function("clone+rewrite/spoofed", |b| {
        b.iter(|| {
            let mut h = spoofed.clone();
            rewrite(&mut h);
            black_box(h)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
