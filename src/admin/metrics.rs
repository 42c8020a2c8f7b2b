//! Prometheus metrics. One process-wide set, declared here and updated
//! where things happen; gauges that describe state (key counts, revocation
//! set size, feed lag) are refreshed at scrape time instead of on the
//! request path.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
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
pub struct IssuerResult {
    pub issuer: String,
    pub result: &'static str,
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
pub struct ResultLabel {
    pub result: &'static str,
}

pub struct Metrics {
    pub requests: Family<RequestLabels, Counter>,
    pub request_duration: Family<RouteLabel, Histogram>,
    pub validation_duration: Histogram,
    pub backend_errors: Family<BackendErrorLabels, Counter>,
    pub jwks_refreshes: Family<IssuerResult, Counter>,
    pub jwks_keys: Family<IssuerLabel, Gauge>,
    pub revocation_entries: Family<KindLabel, Gauge>,
    pub revocation_feed_lag: Gauge<f64, AtomicU64>,
    pub revocation_cursor: Gauge,
    pub revocation_stale: Gauge,
    pub reloads: Family<ResultLabel, Counter>,
    pub open_connections: Gauge,
    pub tasks_alive: Gauge,
    registry: Registry,
}

fn latency_histogram() -> Histogram {
    // 50 µs .. ~26 s
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

impl Metrics {
    fn new() -> Metrics {
        let requests = Family::<RequestLabels, Counter>::default();
        let request_duration = Family::<RouteLabel, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let validation_duration = Histogram::new(exponential_buckets(0.000_001, 2.0, 20));
        let backend_errors = Family::<BackendErrorLabels, Counter>::default();
        let jwks_refreshes = Family::<IssuerResult, Counter>::default();
        let jwks_keys = Family::<IssuerLabel, Gauge>::default();
        let revocation_entries = Family::<KindLabel, Gauge>::default();
        let revocation_feed_lag = Gauge::<f64, AtomicU64>::default();
        let revocation_cursor = Gauge::default();
        let revocation_stale = Gauge::default();
        let reloads = Family::<ResultLabel, Counter>::default();
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
            "Token verification alone (signature and claims)",
            validation_duration.clone(),
        );
        r.register(
            "backend_errors",
            "Backend failures by kind (connect, timeout, other)",
            backend_errors.clone(),
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
            "config_reloads",
            "Config reloads by result (ok, failed)",
            reloads.clone(),
        );
        r.register(
            "open_connections",
            "Client connections currently open",
            open_connections.clone(),
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
            jwks_refreshes,
            jwks_keys,
            revocation_entries,
            revocation_feed_lag,
            revocation_cursor,
            revocation_stale,
            reloads,
            open_connections,
            registry: r,
        }
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
