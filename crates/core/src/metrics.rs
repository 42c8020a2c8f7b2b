//! Prometheus metrics. One process-wide set, declared here and updated
//! where things happen; gauges that describe state (key counts, revocation
//! set size, feed lag) are refreshed at scrape time instead of on the
//! request path.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::{
    EncodeLabelSet, EncodeLabelValue, EncodeMetric, LabelValueEncoder, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
/// Re-exported for crates that hold a gauge of [`Metrics`].
pub use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

/// A route name as a label value: shared, so labelling a request costs a
/// reference count, not an allocation.
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RouteName(pub Arc<str>);

impl EncodeLabelValue for RouteName {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub route: RouteName,
    pub status: u16,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabel {
    pub route: RouteName,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BackendErrorLabels {
    pub route: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IdentityHeaderLabels {
    pub route: String,
    pub header: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuerResult {
    pub issuer: String,
    pub result: &'static str,
}

/// A request worker of the gateway, by index (0 .. `workers`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkerLabel {
    pub worker: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct IssuerLabel {
    pub issuer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: &'static str,
}

/// Per-thread shards, so that worker threads counting requests never write
/// the same cache line: prometheus-client's own histogram takes a write
/// lock per observation, which two cores serving 50k requests a second
/// fight over. Summed at scrape time.
const SHARDS: usize = 16;
const BUCKETS: usize = 20;

#[inline]
fn shard() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    MINE.with(|m| {
        if m.get() == usize::MAX {
            m.set(NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS);
        }
        m.get()
    })
}

#[repr(align(128))]
#[derive(Default)]
struct HistogramShard {
    count: AtomicU64,
    sum_nanos: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
}

/// A latency histogram with exponential buckets, lock-free and sharded.
#[derive(Clone)]
pub struct ShardedHistogram(Arc<HistogramInner>);

struct HistogramInner {
    bounds: [f64; BUCKETS],
    shards: [HistogramShard; SHARDS],
}

impl ShardedHistogram {
    /// Buckets `start`, `start * factor`, ... (20 of them), plus +Inf.
    pub fn exponential(start: f64, factor: f64) -> ShardedHistogram {
        let mut bounds = [0.0; BUCKETS];
        let mut b = start;
        for slot in &mut bounds {
            *slot = b;
            b *= factor;
        }
        ShardedHistogram(Arc::new(HistogramInner {
            bounds,
            shards: Default::default(),
        }))
    }

    #[inline]
    pub fn observe(&self, seconds: f64) {
        let s = &self.0.shards[shard()];
        s.count.fetch_add(1, Ordering::Relaxed);
        s.sum_nanos
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
        if let Some(i) = self.0.bounds.iter().position(|b| seconds <= *b) {
            s.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for ShardedHistogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ShardedHistogram")
    }
}

impl TypedMetric for ShardedHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for ShardedHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        let mut count = 0;
        let mut sum_nanos = 0u64;
        let mut buckets: Vec<(f64, u64)> = self
            .0
            .bounds
            .iter()
            .map(|b| (*b, 0))
            .chain(std::iter::once((f64::MAX, 0)))
            .collect();
        for s in &self.0.shards {
            let c = s.count.load(Ordering::Relaxed);
            count += c;
            sum_nanos = sum_nanos.wrapping_add(s.sum_nanos.load(Ordering::Relaxed));
            let mut in_buckets = 0;
            for (i, b) in s.buckets.iter().enumerate() {
                let n = b.load(Ordering::Relaxed);
                in_buckets += n;
                buckets[i].1 += n;
            }
            // Past the last bound: the +Inf bucket.
            buckets[BUCKETS].1 += c.saturating_sub(in_buckets);
        }
        encoder.encode_histogram::<NoLabelSet>(sum_nanos as f64 / 1e9, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

#[repr(align(128))]
#[derive(Default)]
struct CounterShard(AtomicU64);

/// A counter sharded like [`ShardedHistogram`].
#[derive(Clone, Default)]
pub struct ShardedCounter(Arc<[CounterShard; SHARDS]>);

impl ShardedCounter {
    #[inline]
    pub fn inc(&self) {
        self.0[shard()].0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

impl std::fmt::Debug for ShardedCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ShardedCounter({})", self.get())
    }
}

impl TypedMetric for ShardedCounter {
    const TYPE: MetricType = MetricType::Counter;
}

impl EncodeMetric for ShardedCounter {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        encoder.encode_counter::<NoLabelSet, _, u64>(&self.get(), None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// A route's request counters by status and outcome (a handful each).
type RouteCounters = Vec<(u16, &'static str, ShardedCounter)>;

thread_local! {
    /// Each thread's handles into the request families, so a request
    /// takes no lock: route names are few, statuses and outcomes fewer.
    /// Looked up by the route's name borrowed, not its `Arc` cloned: the
    /// `Arc` is shared by every worker, and writing its count on each
    /// request would bounce its cache line between cores.
    static REQUESTS: RefCell<HashMap<Arc<str>, RouteCounters>> = RefCell::new(HashMap::new());
    static DURATIONS: RefCell<HashMap<Arc<str>, ShardedHistogram>> = RefCell::new(HashMap::new());
}

pub struct Metrics {
    pub requests: Family<RequestLabels, ShardedCounter>,
    pub request_duration: Family<RouteLabel, ShardedHistogram, fn() -> ShardedHistogram>,
    pub validation_duration: ShardedHistogram,
    pub backend_errors: Family<BackendErrorLabels, Counter>,
    pub identity_headers_withheld: Family<IdentityHeaderLabels, Counter>,
    pub jwks_refreshes: Family<IssuerResult, Counter>,
    pub jwks_keys: Family<IssuerLabel, Gauge>,
    pub revocation_entries: Family<KindLabel, Gauge>,
    pub revocation_feed_lag: Gauge<f64, AtomicU64>,
    pub revocation_cursor: Gauge,
    pub revocation_stale: Gauge,
    /// Feed responses refused because they were behind the held state.
    pub revocation_feed_refused: Family<ReasonLabel, Counter>,
    /// Admitted tokens that carry no `sid`: a session logout cannot match them.
    pub admitted_without_sid: ShardedCounter,
    /// Admitted tokens that carry no `jti`: a per-token logout cannot match them.
    pub admitted_without_jti: ShardedCounter,
    /// Distinct tokens verified without `sid`, by configured issuer name.
    pub verified_without_sid: Family<IssuerLabel, Counter>,
    /// Distinct tokens verified without `jti`, by configured issuer name.
    pub verified_without_jti: Family<IssuerLabel, Counter>,
    pub reloads: Family<ResultLabel, Counter>,
    /// Upgraded connections (WebSocket, ...) closed because their
    /// credential ended (reason: revoked, expired).
    pub tunnels_closed: Family<ReasonLabel, Counter>,
    /// At the authority: gateways reading the feed, by state (live, stale, gone).
    pub authority_gateways: Family<StateLabel, Gauge>,
    /// At the authority: seconds from a change's commit to each gateway's
    /// acknowledgement of it (its next feed poll's `since`).
    pub authority_propagation: prometheus_client::metrics::histogram::Histogram,
    pub open_connections: Gauge,
    /// Client connections open per request worker: how evenly the
    /// gateway spreads its connections over its cores.
    pub worker_connections: Family<WorkerLabel, Gauge>,
    /// Connections accepted by one worker and served by a less loaded one.
    pub connections_handed_off: Counter,
    pub tasks_alive: Gauge,
    registry: Registry,
}

fn latency_histogram() -> ShardedHistogram {
    // 50 µs .. ~26 s
    ShardedHistogram::exponential(0.000_05, 2.0)
}

impl Metrics {
    fn new() -> Metrics {
        let requests = Family::<RequestLabels, ShardedCounter>::default();
        let request_duration =
            Family::<RouteLabel, ShardedHistogram, fn() -> ShardedHistogram>::new_with_constructor(
                latency_histogram as fn() -> ShardedHistogram,
            );
        let validation_duration = ShardedHistogram::exponential(0.000_001, 2.0);
        let backend_errors = Family::<BackendErrorLabels, Counter>::default();
        let identity_headers_withheld = Family::<IdentityHeaderLabels, Counter>::default();
        let jwks_refreshes = Family::<IssuerResult, Counter>::default();
        let jwks_keys = Family::<IssuerLabel, Gauge>::default();
        let revocation_entries = Family::<KindLabel, Gauge>::default();
        let revocation_feed_lag = Gauge::<f64, AtomicU64>::default();
        let revocation_cursor = Gauge::default();
        let revocation_stale = Gauge::default();
        let reloads = Family::<ResultLabel, Counter>::default();
        let revocation_feed_refused = Family::<ReasonLabel, Counter>::default();
        let open_connections = Gauge::default();
        let mut r = Registry::with_prefix("gatehouse");
        r.register(
            "requests",
            "Requests by route, status and outcome",
            requests.clone(),
        );
        r.register(
            "request_duration_seconds",
            "Whole request latency as seen by the gateway",
            request_duration.clone(),
        );
        r.register(
            "token_validation_duration_seconds",
            "Full token verification (signature and claims) of tokens not found in the verified-token cache",
            validation_duration.clone(),
        );
        r.register(
            "backend_errors",
            "Backend failures by kind (connect, timeout, other)",
            backend_errors.clone(),
        );
        r.register(
            "identity_headers_withheld",
            "Identity headers not sent because the claim has no unambiguous header form (an object), by route and header",
            identity_headers_withheld.clone(),
        );
        r.register(
            "jwks_refreshes",
            "JWKS fetches by issuer and result",
            jwks_refreshes.clone(),
        );
        r.register(
            "jwks_keys",
            "Keys in each issuer's current key set",
            jwks_keys.clone(),
        );
        r.register(
            "revocation_entries",
            "Revocations held, by kind",
            revocation_entries.clone(),
        );
        r.register(
            "revocation_feed_lag_seconds",
            "Seconds since the last successful contact with the authority",
            revocation_feed_lag.clone(),
        );
        r.register(
            "revocation_cursor",
            "Sequence number of the last applied feed position",
            revocation_cursor.clone(),
        );
        r.register(
            "revocation_stale",
            "1 while the revocation set is stale",
            revocation_stale.clone(),
        );
        r.register(
            "revocation_feed_refused",
            "Feed responses refused because they were behind the revocation state held (reason: older, changes_without_base)",
            revocation_feed_refused.clone(),
        );
        let admitted_without_sid = ShardedCounter::default();
        r.register(
            "admitted_tokens_without_sid",
            "Tokens admitted that carry no sid (a back-channel logout by session cannot end them; see issuers[].backchannel_logout)",
            admitted_without_sid.clone(),
        );
        let admitted_without_jti = ShardedCounter::default();
        r.register(
            "admitted_tokens_without_jti",
            "Tokens admitted that carry no jti (a logout of that one token revokes its subject up to its iat instead)",
            admitted_without_jti.clone(),
        );
        let verified_without_sid = Family::<IssuerLabel, Counter>::default();
        r.register(
            "tokens_verified_without_sid",
            "Distinct tokens verified that carry no sid, by issuer (what a back-channel logout by session cannot end)",
            verified_without_sid.clone(),
        );
        let verified_without_jti = Family::<IssuerLabel, Counter>::default();
        r.register(
            "tokens_verified_without_jti",
            "Distinct tokens verified that carry no jti, by issuer",
            verified_without_jti.clone(),
        );
        r.register(
            "config_reloads",
            "Config reloads by result (ok, failed)",
            reloads.clone(),
        );
        r.register(
            "open_connections",
            "Client connections currently open",
            open_connections.clone(),
        );
        let worker_connections = Family::<WorkerLabel, Gauge>::default();
        r.register(
            "worker_connections",
            "Client connections currently open, by request worker",
            worker_connections.clone(),
        );
        let connections_handed_off = Counter::default();
        r.register(
            "connections_handed_off",
            "Connections accepted by one request worker and served by a less loaded one",
            connections_handed_off.clone(),
        );
        let tunnels_closed = Family::<ReasonLabel, Counter>::default();
        r.register(
            "tunnels_closed",
            "Upgraded connections (WebSocket and other tunnels) closed because their credential ended, by reason (revoked, expired)",
            tunnels_closed.clone(),
        );
        let authority_gateways = Family::<StateLabel, Gauge>::default();
        r.register(
            "authority_gateways",
            "At the authority: gateways reading the feed, by state (live, stale, gone)",
            authority_gateways.clone(),
        );
        // 0.5 ms .. ~16 s
        let authority_propagation = prometheus_client::metrics::histogram::Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.000_5, 2.0, 16),
        );
        r.register(
            "authority_propagation_seconds",
            "At the authority: seconds from a change's commit to each gateway's acknowledgement of it",
            authority_propagation.clone(),
        );
        let tasks_alive = Gauge::default();
        r.register(
            "tasks_alive",
            "Tokio tasks alive on the gateway's runtimes (a leak shows as growth)",
            tasks_alive.clone(),
        );
        Metrics {
            tasks_alive,
            requests,
            request_duration,
            validation_duration,
            backend_errors,
            identity_headers_withheld,
            jwks_refreshes,
            jwks_keys,
            revocation_entries,
            revocation_feed_lag,
            revocation_cursor,
            revocation_stale,
            revocation_feed_refused,
            admitted_without_sid,
            admitted_without_jti,
            verified_without_sid,
            verified_without_jti,
            reloads,
            tunnels_closed,
            authority_gateways,
            authority_propagation,
            open_connections,
            worker_connections,
            connections_handed_off,
            registry: r,
        }
    }

    /// Counts one answered request, without a lock (see [`ShardedCounter`]).
    #[inline]
    pub fn record_request(
        &self,
        route: &Arc<str>,
        status: u16,
        outcome: &'static str,
        seconds: f64,
    ) {
        DURATIONS.with(|d| {
            let mut d = d.borrow_mut();
            if let Some(h) = d.get(route) {
                h.observe(seconds);
                return;
            }
            let h = self
                .request_duration
                .get_or_create(&RouteLabel {
                    route: RouteName(route.clone()),
                })
                .clone();
            h.observe(seconds);
            d.insert(route.clone(), h);
        });
        REQUESTS.with(|r| {
            let mut r = r.borrow_mut();
            let known = r.get(&**route).and_then(|counters| {
                counters
                    .iter()
                    .find(|(s, o, _)| *s == status && *o == outcome)
            });
            if let Some((_, _, c)) = known {
                c.inc();
                return;
            }
            let c = self
                .requests
                .get_or_create(&RequestLabels {
                    route: RouteName(route.clone()),
                    status,
                    outcome,
                })
                .clone();
            c.inc();
            r.entry(route.clone())
                .or_default()
                .push((status, outcome, c));
        });
    }

    /// The Prometheus text exposition.
    pub fn encode(&self) -> String {
        if let Some(rts) = RUNTIMES.get() {
            let n: usize = rts.iter().map(|h| h.metrics().num_alive_tasks()).sum();
            self.tasks_alive.set(n as i64);
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// The runtimes whose tasks `tasks_alive` counts (set once at start).
pub static RUNTIMES: OnceLock<Vec<tokio::runtime::Handle>> = OnceLock::new();

pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(Metrics::new)
}
