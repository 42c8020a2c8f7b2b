//! Revocation set costs: the per-request lookup with 0, 10k and 1M entries
//! (should be flat), and applying a 1M-entry snapshot through the same
//! parser the feed uses (time, resident memory).

use std::sync::Arc;
use std::time::Instant;

use criterion::Criterion;
use gatehouse::auth::Identity;
use gatehouse::revocation::feed::{FeedParser, Parsed};
use gatehouse::revocation::model::{Change, Kind, Revocation};
use gatehouse::revocation::set::RevocationSet;
use gatehouse_core::clock::now_unix;

const ISS: &str = "https://issuer.test";

fn entry(i: u64, kind: Kind) -> Revocation {
    Revocation {
        id: i,
        issuer: ISS.into(),
        kind,
        value: format!("{:032x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        before: kind.has_before().then(now_unix),
        reason: "logout".into(),
        created_at: now_unix(),
        expires_at: now_unix() + 3600,
    }
}

/// `n` entries: 80% jti, 15% sid, 5% sub, as a revocation list looks.
fn kind_of(i: u64) -> Kind {
    match i % 20 {
        0 => Kind::Sub,
        1..=3 => Kind::Sid,
        _ => Kind::Jti,
    }
}

fn identity(jti: &str) -> Identity {
    let claims = serde_json::json!({"iss": ISS, "sub": "user-not-revoked", "jti": jti, "sid": "session-live",
        "iat": now_unix(), "azp": "web"});
    Identity::from_claims(
        Arc::from("test"),
        Arc::from(ISS),
        claims.as_object().cloned().unwrap_or_default(),
    )
    .expect("identity")
}

fn rss_kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| {
                    l.strip_prefix(field)
                        .map(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                })
                .flatten()
        })
        .unwrap_or(0)
}

fn lookups(c: &mut Criterion) {
    let mut g = c.benchmark_group("revocation-check");
    for n in [0u64, 10_000, 1_000_000] {
        // As after a snapshot: the entries in the compact base, then a
        // change (a deletion) in the change layer.
        let mut set = RevocationSet::new();
        set.apply_building(&Change::Put(entry(0, Kind::Client)));
        for i in 0..n {
            set.apply_building(&Change::Put(entry(i, kind_of(i))));
        }
        set.finish_building();
        set.apply(&Change::Del(entry(0, Kind::Client)));
        let live = identity("not-revoked-jti");
        assert!(set.check(&live).is_none());
        g.bench_function(format!("miss/{n}"), |b| {
            b.iter(|| set.check(std::hint::black_box(&live)))
        });
        if n > 0 {
            let revoked = identity(&entry(5, Kind::Jti).value);
            assert!(set.check(&revoked).is_some());
            g.bench_function(format!("hit/{n}"), |b| {
                b.iter(|| set.check(std::hint::black_box(&revoked)))
            });
        }
        if n == 1_000_000 {
            // 10k later revocations sit in the change layer until folded.
            for i in n..n + 10_000 {
                set.insert(&entry(i, Kind::Jti));
            }
            let recent = identity(&entry(n + 5, Kind::Jti).value);
            assert!(set.check(&recent).is_some());
            g.bench_function("hit-in-changes/1000000+10000", |b| {
                b.iter(|| set.check(std::hint::black_box(&recent)))
            });
            g.bench_function("miss/1000000+10000", |b| {
                b.iter(|| set.check(std::hint::black_box(&live)))
            });
        }
    }
    g.finish();
}

/// One-off: a 1M-entry snapshot, fed in 64 KiB chunks.
fn snapshot_apply() {
    const N: u64 = 1_000_000;
    let mut body = Vec::with_capacity(200 * N as usize);
    body.extend_from_slice(b"{\"type\":\"snapshot\",\"cursor\":\"bench-1\"}\n");
    for i in 0..N {
        serde_json::to_writer(&mut body, &Change::Put(entry(i, kind_of(i)))).expect("json");
        body.push(b'\n');
    }
    body.extend_from_slice(b"{\"type\":\"end\",\"cursor\":\"bench-1\"}\n");
    let before = rss_kib("VmRSS:");
    let start = Instant::now();
    let mut p = FeedParser::new();
    for chunk in body.chunks(64 * 1024) {
        p.push(chunk).expect("push");
    }
    let (_, parsed) = p.finish().expect("complete");
    let took = start.elapsed();
    let Parsed::Snapshot(set) = parsed else {
        panic!("snapshot expected")
    };
    let counts = set.counts();
    let after = rss_kib("VmRSS:");
    eprintln!(
        "snapshot-apply/1M: {} entries ({:?}) from {:.1} MB of feed in {:.2} s; resident set +{} MiB ({:.0} bytes/entry)",
        counts.total(),
        counts,
        body.len() as f64 / 1e6,
        took.as_secs_f64(),
        (after.saturating_sub(before)) / 1024,
        (after.saturating_sub(before)) as f64 * 1024.0 / counts.total().max(1) as f64,
    );
}

fn main() {
    gatehouse::auth::jwt::install_crypto_and_self_test().expect("crypto");
    let mut c = Criterion::default().configure_from_args();
    // `cargo test --benches` runs benches in test mode: keep that quick.
    if !std::env::args().any(|a| a == "--test") {
        snapshot_apply();
    }
    lookups(&mut c);
    c.final_summary();
}
