//! A route's backends: round-robin choice, cool-down of backends that
//! refuse connections, and the pooled keep-alive client that talks to them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::reject::Reject;
use super::ProxyBody;
use crate::admin::metrics::{metrics, BackendErrorLabels};
use crate::config::RouteConfig;

struct Backend {
    authority: http::uri::Authority,
    /// Milliseconds on [`now_ms`]'s clock until which the backend is
    /// skipped; 0 when healthy.
    down_until: AtomicU64,
}

thread_local! {
    /// Which worker runtime this thread serves; picks its connection pool.
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Called once on each worker thread, before it serves.
pub fn set_worker(index: usize) {
    WORKER.with(|w| w.set(index));
}

/// Pools kept per route: one per worker, so a pooled backend connection
/// is always driven by the thread that uses it.
const POOLS: usize = 16;

pub struct Upstream {
    route: String,
    backends: Vec<Backend>,
    next: AtomicUsize,
    clients: Vec<Client<HttpConnector, ProxyBody>>,
    timeout: Duration,
    cooldown: Duration,
}

/// A cheap monotonic clock in milliseconds, so cool-down state fits in an
/// atomic.
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl Upstream {
    pub fn new(rc: &RouteConfig, route: String) -> Self {
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(rc.connect_timeout));
        http.set_nodelay(true);
        http.set_keepalive(Some(Duration::from_secs(60)));
        let clients = (0..POOLS)
            .map(|_| {
                Client::builder(TokioExecutor::new())
                    .pool_timer(TokioTimer::new())
                    .pool_idle_timeout(Duration::from_secs(90))
                    .pool_max_idle_per_host(256)
                    .set_host(false)
                    .build(http.clone())
            })
            .collect();
        Upstream {
            route,
            backends: rc
                .backends
                .iter()
                .map(|b| Backend {
                    authority: b.authority.clone(),
                    down_until: AtomicU64::new(0),
                })
                .collect(),
            next: AtomicUsize::new(0),
            clients,
            timeout: rc.timeout,
            cooldown: rc.backend_cooldown,
        }
    }

    /// Round-robin over the backends not cooling down; when all are, the
    /// next one in turn is tried anyway, so recovery is noticed. Returns
    /// the backend's index (for [`Upstream::send`]) and its address.
    pub fn choose(&self) -> (usize, &http::uri::Authority) {
        let n = self.backends.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = now_ms();
        let idx = (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| self.backends[i].down_until.load(Ordering::Relaxed) <= now)
            .unwrap_or(start % n);
        (idx, &self.backends[idx].authority)
    }

    /// Sends the request (its URI already pointing at backend `idx`) and
    /// waits for the response head, mapping failures to 502/504.
    pub async fn send(
        &self,
        idx: usize,
        req: Request<ProxyBody>,
    ) -> Result<Response<Incoming>, Reject> {
        let client = &self.clients[WORKER.with(|w| w.get()) % POOLS];
        match tokio::time::timeout(self.timeout, client.request(req)).await {
            Err(_) => {
                self.count_error("timeout");
                Err(Reject::GatewayTimeout)
            }
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => {
                let timed_out = chain_has(&e, |io| io.kind() == std::io::ErrorKind::TimedOut);
                if e.is_connect() {
                    if let Some(b) = self.backends.get(idx) {
                        b.down_until.store(
                            now_ms() + self.cooldown.as_millis() as u64,
                            Ordering::Relaxed,
                        );
                    }
                    tracing::warn!(backend = %self.backends.get(idx).map(|b| b.authority.as_str()).unwrap_or("?"),
                        error = %e, "backend connect failed; cooling it down");
                } else {
                    tracing::warn!(error = %e, "backend request failed");
                }
                let (reject, kind) = if is_body_limit(&e) {
                    (Reject::BodyTooLarge, "body_too_large")
                } else if timed_out {
                    (Reject::GatewayTimeout, "timeout")
                } else if e.is_connect() {
                    (Reject::BadGateway, "connect")
                } else {
                    (Reject::BadGateway, "other")
                };
                self.count_error(kind);
                Err(reject)
            }
        }
    }
}

impl Upstream {
    fn count_error(&self, kind: &'static str) {
        metrics()
            .backend_errors
            .get_or_create(&BackendErrorLabels {
                route: self.route.clone(),
                kind,
            })
            .inc();
    }
}

fn chain_has(
    e: &(dyn std::error::Error + 'static),
    pred: impl Fn(&std::io::Error) -> bool,
) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if pred(io) {
                return true;
            }
        }
        cur = err.source();
    }
    false
}

fn is_body_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        cur = err.source();
    }
    false
}
