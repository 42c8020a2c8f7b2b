//! A route's backends: round-robin choice, cool-down of backends that
//! refuse connections, and the per-worker pools of keep-alive HTTP/1.1
//! connections to them.
//!
//! The pool is ours, over hyper's connection API, rather than
//! hyper-util's legacy `Client`: that client locks one shared pool per
//! request and spawns a task per HTTP/1 request only to notice when the
//! connection is free again. Here a connection goes back to its worker's
//! idle list when the response body has been read to its end, in the task
//! that read it. Measured with `benches/wrk/quick.sh`: see README
//! "Performance".

use gatehouse_core::body::BodyState;
use gatehouse_core::listener::WhenWoken;
use std::future::poll_fn;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;

use super::reject::Reject;
use super::ProxyBody;
use gatehouse_core::config::RouteConfig;
use gatehouse_core::metrics::{metrics, BackendErrorLabels};

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

/// Pools kept per backend: one per worker, so a pooled backend connection
/// is always driven by the thread that uses it (and its lock is never
/// contended).
const POOLS: usize = 16;
/// Idle connections kept per backend and worker.
const MAX_IDLE: usize = 256;
/// A pooled connection idle at least this long may be one the backend is
/// closing at the moment it is taken (the backend's own keep-alive timer
/// ran out: the race of hyper issue #2136). An idempotent request without
/// a body is then kept until answered, and sent once more on a new
/// connection if the backend closes without a word (RFC 9112 §9.3.1).
/// Under load connections are idle for milliseconds, no backend's idle
/// timer runs out, and no copy is made.
const REPLAY_AFTER_IDLE: Duration = Duration::from_secs(1);
/// ... and only if the close came this soon after the request was handed
/// to the connection, before any byte of an answer: a backend whose idle
/// timer ran out closes at once. One that closes later had the request
/// and failed on it (a worker killed mid-request), and must not get it
/// twice.
const REPLAY_WITHIN: Duration = Duration::from_millis(250);
/// Taken off what a backend announces in `Keep-Alive: timeout=N`: its
/// timer starts when it has written the response, a little before the
/// connection is back in the pool here.
const KEEP_ALIVE_MARGIN: Duration = Duration::from_secs(1);

/// One backend connection: hyper's handle to send on it, and when it may
/// be closed as idle.
struct Sender {
    send: SendRequest<ProxyBody>,
    /// Milliseconds on [`now_ms`]'s clock from which the connection, idle
    /// in a pool, is closed by its own task; 0 while it is in use,
    /// [`CLOSING`] once the task has claimed it. Written by the pool, read
    /// by the task when its timer fires: the hot path stores a number and
    /// arms no timer.
    idle_until: Arc<AtomicU64>,
    /// Bytes read from the backend on this connection so far: a request
    /// whose answer had begun (a status line, a 1xx) is never sent again.
    read: Arc<AtomicU64>,
    /// The shortest idle time the backend announced on this connection
    /// (`Keep-Alive: timeout`, less [`KEEP_ALIVE_MARGIN`]); `MAX` if none.
    keep: Duration,
}

/// Counts what a backend connection reads.
struct BytesIn(Arc<AtomicU64>);

impl gatehouse_core::listener::Watch for BytesIn {
    fn read(&mut self, new: &[u8]) {
        self.0.fetch_add(new.len() as u64, Ordering::Relaxed);
    }
}

/// [`Sender::idle_until`] of a connection its task is closing: whichever
/// of the pool (taking it) and the task (closing it) swaps the value first
/// has it.
const CLOSING: u64 = u64::MAX;

impl Sender {
    fn is_closed(&self) -> bool {
        self.send.is_closed()
    }
}

struct Idle {
    sender: Sender,
    since: Instant,
    /// Closed rather than reused from then on: `since` plus the route's
    /// `backend_idle_timeout`, or less if the backend said so.
    until: Instant,
}

/// Idle connections to one backend, for one worker.
pub struct Pool {
    idle: Mutex<Vec<Idle>>,
    /// An idle connection older than this is closed rather than reused.
    idle_timeout: Duration,
}

impl Pool {
    /// The most recently used idle connection (warmest, least likely to
    /// have been closed by the backend) and how long it was idle,
    /// dropping expired ones.
    fn take(&self) -> Option<(Sender, Duration)> {
        let mut idle = self.idle.lock().ok()?;
        let now = Instant::now();
        while let Some(i) = idle.pop() {
            if now < i.until
                && !i.sender.is_closed()
                && i.sender.idle_until.swap(0, Ordering::AcqRel) != CLOSING
            {
                return Some((i.sender, now.duration_since(i.since)));
            }
        }
        None
    }

    /// Back on top of the stack, to be reused for at most the route's
    /// idle timeout or what the backend announced ([`Sender::keep`]).
    /// Connections left idle past their time under the warm ones are
    /// closed here too, not kept until traffic stops; the list is mostly
    /// ordered by `until` (oldest first), and [`Pool::take`] checks each
    /// one it hands out anyway.
    fn put(&self, sender: Sender) {
        let keep = sender.keep.min(self.idle_timeout);
        if sender.is_closed() || keep.is_zero() {
            return;
        }
        if let Ok(mut idle) = self.idle.lock() {
            let now = Instant::now();
            if idle.first().is_some_and(|i| i.until <= now) {
                idle.retain(|i| i.until > now);
            }
            let excess = (idle.len() + 1).saturating_sub(MAX_IDLE);
            idle.drain(..excess);
            sender.idle_until.store(
                ms_at(now).saturating_add(keep.as_millis() as u64),
                Ordering::Release,
            );
            idle.push(Idle {
                sender,
                since: now,
                until: now + keep,
            });
        }
    }
}

pub struct Upstream {
    route: String,
    backends: Vec<Backend>,
    /// Round-robin positions, one per worker (`[worker % POOLS]`), each on
    /// its own cache line: one counter shared by every worker was written
    /// by every core on every request.
    next: Vec<Turn>,
    /// `pools[worker % POOLS][backend]`.
    pools: Vec<Vec<Arc<Pool>>>,
    timeout: Duration,
    connect_timeout: Duration,
    cooldown: Duration,
    /// `backend_idle_timeout`: how often a connection's task looks at
    /// whether it has been idle too long.
    idle_timeout: Duration,
}

/// One worker's round-robin position in [`Upstream::choose`], alone on
/// its cache line.
#[derive(Default)]
#[repr(align(128))]
struct Turn(AtomicUsize);

/// A cheap monotonic clock in milliseconds, so cool-down state fits in an
/// atomic.
fn now_ms() -> u64 {
    ms_at(Instant::now())
}

/// `t` on [`now_ms`]'s clock, for a caller that has read the time already.
fn ms_at(t: Instant) -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    t.saturating_duration_since(*START.get_or_init(Instant::now))
        .as_millis() as u64
        + 1
}

/// Why a request did not get a response head from the backend.
enum SendError {
    Connect(std::io::Error),
    Http(hyper::Error),
}

impl Upstream {
    pub fn new(rc: &RouteConfig, route: String) -> Self {
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
            next: (0..POOLS).map(|_| Turn::default()).collect(),
            pools: (0..POOLS)
                .map(|_| {
                    rc.backends
                        .iter()
                        .map(|_| {
                            Arc::new(Pool {
                                idle: Mutex::default(),
                                idle_timeout: rc.backend_idle_timeout,
                            })
                        })
                        .collect()
                })
                .collect(),
            timeout: rc.timeout,
            connect_timeout: rc.connect_timeout,
            cooldown: rc.backend_cooldown,
            idle_timeout: rc.backend_idle_timeout,
        }
    }

    /// Round-robin over the backends not cooling down; when all are, the
    /// next one in turn is tried anyway, so recovery is noticed. Returns
    /// the backend's index (for [`Upstream::send`]) and its address. Each
    /// worker keeps its own turn, so the workers together still spread
    /// requests evenly. With one backend there is nothing to choose, and
    /// the clock is read only when a backend has been cooling down.
    pub fn choose(&self) -> (usize, &http::uri::Authority) {
        let n = self.backends.len();
        if n == 1 {
            return (0, &self.backends[0].authority);
        }
        let turn = &self.next[WORKER.with(|w| w.get()) % POOLS];
        let start = turn.0.fetch_add(1, Ordering::Relaxed);
        let mut now = None;
        let idx = (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| {
                let until = self.backends[i].down_until.load(Ordering::Relaxed);
                until == 0 || until <= *now.get_or_insert_with(now_ms)
            })
            .unwrap_or(start % n);
        (idx, &self.backends[idx].authority)
    }

    /// Sends the request (origin-form URI, `Host` set) to backend `idx`
    /// and waits for the response head, mapping failures to 502/504, and
    /// to 408 those of a client body (`client`) too slow to arrive.
    pub async fn send(
        &self,
        idx: usize,
        req: Request<ProxyBody>,
        client: Option<&BodyState>,
    ) -> Result<Response<ProxyBody>, Reject> {
        let Some(backend) = self.backends.get(idx) else {
            return Err(Reject::BadGateway);
        };
        let pool = &self.pools[WORKER.with(|w| w.get()) % POOLS][idx];
        let exchange = self.exchange(backend, pool, req, client);
        tokio::pin!(exchange);
        // `timeout` is the backend's time to answer: from the request head,
        // or, for a body the client was still sending then, from the
        // body's end (a slow upload does not use up the backend's time).
        let mut deadline = tokio::time::Instant::now() + self.timeout;
        let answered = loop {
            match tokio::time::timeout_at(deadline, &mut exchange).await {
                Ok(r) => break Ok(r),
                Err(e) => match client.and_then(|c| c.complete_at()) {
                    Some(at) if at + self.timeout > deadline => deadline = at + self.timeout,
                    _ => break Err(e),
                },
            }
        };
        match answered {
            // The route's time ran out while the client's body was still
            // on its way: the client was too slow, not the backend.
            Err(_) if client.is_some_and(|c| c.waiting_on_client()) => Err(Reject::RequestTimeout),
            Err(_) => {
                self.count_error("timeout");
                Err(Reject::GatewayTimeout)
            }
            Ok(Ok(mut resp)) => {
                super::headers::normalize_content_length(resp.headers_mut());
                if let Some(why) = ambiguous_framing(resp.headers()) {
                    tracing::warn!(backend = %backend.authority, why, "backend response refused");
                    self.count_error("framing");
                    return Err(Reject::BadGateway);
                }
                Ok(resp)
            }
            Ok(Err(SendError::Connect(e))) => {
                backend.down_until.store(
                    now_ms() + self.cooldown.as_millis() as u64,
                    Ordering::Relaxed,
                );
                tracing::warn!(backend = %backend.authority, error = %e,
                    "backend connect failed; cooling it down");
                let timed_out = e.kind() == std::io::ErrorKind::TimedOut;
                self.count_error(if timed_out { "timeout" } else { "connect" });
                Err(if timed_out {
                    Reject::GatewayTimeout
                } else {
                    Reject::BadGateway
                })
            }
            Ok(Err(SendError::Http(e))) if gatehouse_core::body::stalled(&e) => {
                // The client left its body unfinished for longer than
                // `limits.body_read_timeout`: its fault, not the backend's.
                tracing::debug!(error = %e, "client request body stalled");
                Err(Reject::RequestTimeout)
            }
            Ok(Err(SendError::Http(e))) if is_client_body_error(&e) && !is_body_limit(&e) => {
                // The client's own body was broken (bad chunk framing, cut
                // short): its fault, answered 400, not a backend error.
                tracing::debug!(error = %e, "client request body failed");
                Err(Reject::BadRequest("malformed request body"))
            }
            Ok(Err(SendError::Http(e))) => {
                tracing::warn!(backend = %backend.authority, error = %e, "backend request failed");
                let (reject, kind) = if is_body_limit(&e) {
                    (Reject::BodyTooLarge, "body_too_large")
                } else if chain_has(&e, |io| io.kind() == std::io::ErrorKind::TimedOut) {
                    (Reject::GatewayTimeout, "timeout")
                } else {
                    (Reject::BadGateway, "other")
                };
                self.count_error(kind);
                Err(reject)
            }
        }
    }

    /// One request on a pooled connection, or a new one. A request that a
    /// pooled connection never started to send (the backend had closed it
    /// while idle) is retried on a new connection, as hyper-util's client
    /// does. One that was sent is retried only if it is idempotent and has
    /// no body, its connection had been idle for [`REPLAY_AFTER_IDLE`], and
    /// the backend closed or reset that connection within
    /// [`REPLAY_WITHIN`] without a byte of an answer: the backend's
    /// keep-alive timer closing the connection as it was reused (RFC 9112
    /// §9.3.1; nginx does the same for a cached connection). Any other
    /// request may have been acted on, and gets its 502.
    async fn exchange(
        &self,
        backend: &Backend,
        pool: &Arc<Pool>,
        mut req: Request<ProxyBody>,
        client: Option<&BodyState>,
    ) -> Result<Response<ProxyBody>, SendError> {
        let mut pooled_ok = true;
        loop {
            let (mut sender, idle, fresh) = match pool.take().filter(|_| pooled_ok) {
                Some((s, idle)) => (s, idle, false),
                // Boxed: a new connection is rare under load, and its
                // state would otherwise be in every request's future.
                None => (Box::pin(self.connect(backend)).await?, Duration::ZERO, true),
            };
            if let Err(e) = poll_fn(|cx| sender.send.poll_ready(cx)).await {
                if fresh {
                    return Err(SendError::Http(e));
                }
                continue;
            }
            let replay = (idle >= REPLAY_AFTER_IDLE)
                .then(|| replayable(&req))
                .flatten()
                // Boxed: held across the send, and rarely there; inline it
                // would be in every request's future.
                .map(|again| {
                    Box::new((again, Instant::now(), sender.read.load(Ordering::Relaxed)))
                });
            match sender.send.try_send_request(req).await {
                Ok(resp) => return Ok(self.pooled(resp, sender, pool, client.cloned())),
                Err(mut e) => match (e.take_message(), replay) {
                    (Some(back), _) if !fresh => req = back,
                    (_, Some(replay))
                        if closed_unanswered(e.error())
                            && replay.1.elapsed() < REPLAY_WITHIN
                            && sender.read.load(Ordering::Relaxed) == replay.2 =>
                    {
                        let (again, _, _) = *replay;
                        tracing::debug!(backend = %backend.authority, error = %e.error(),
                            "idle backend connection closed as it was reused; sending again on a new one");
                        self.count_error("closed_idle_retried");
                        req = again;
                        pooled_ok = false;
                    }
                    _ => return Err(SendError::Http(e.into_error())),
                },
            }
        }
    }

    /// Wraps the response body so the connection returns to the pool
    /// once the body has been read to its end (at once when there is
    /// none). A body dropped before its end takes the connection with it:
    /// hyper closes a connection whose response was not read through.
    /// So does a request whose body (`client`) was still being sent then
    /// (a backend that answers early): the connection is busy until that
    /// body ends, and another request given it would wait for the client.
    fn pooled(
        &self,
        resp: Response<Incoming>,
        mut sender: Sender,
        pool: &Arc<Pool>,
        client: Option<BodyState>,
    ) -> Response<ProxyBody> {
        let switching = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        // A backend that says how long it keeps an idle connection is
        // believed (less a margin): reusing one it is closing would fail.
        // What it said once holds for the connection's life, unless it
        // says less: a later response without the field lifts nothing.
        if let Some(t) = super::headers::keep_alive_timeout(resp.headers()) {
            sender.keep = sender.keep.min(t.saturating_sub(KEEP_ALIVE_MARGIN));
        }
        let (parts, body) = resp.into_parts();
        let sender = if switching {
            None
        } else if body.is_end_stream() {
            give_back(sender, pool, client.as_ref());
            None
        } else {
            Some(sender)
        };
        let body = PooledBody {
            body,
            back: sender.map(|s| (s, pool.clone())),
            client,
        };
        Response::from_parts(parts, http_body_util::BodyExt::boxed(body))
    }

    async fn connect(&self, backend: &Backend) -> Result<Sender, SendError> {
        let host = backend.authority.host();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        let port = backend.authority.port_u16().unwrap_or(80);
        let stream = match tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect((host, port)),
        )
        .await
        {
            Err(_) => {
                return Err(SendError::Connect(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out",
                )))
            }
            Ok(r) => r.map_err(SendError::Connect)?,
        };
        let _ = stream.set_nodelay(true);
        let _ = socket2::SockRef::from(&stream)
            .set_tcp_keepalive(&socket2::TcpKeepalive::new().with_time(Duration::from_secs(60)));
        let read = Arc::new(AtomicU64::new(0));
        let stream = gatehouse_core::listener::Watched::new_watched(stream, BytesIn(read.clone()));
        let (send, conn) = http1::Builder::new()
            .handshake(TokioIo::new(stream))
            .await
            .map_err(SendError::Http)?;
        let idle_until = Arc::new(AtomicU64::new(0));
        let watched = idle_until.clone();
        let idle_timeout = self.idle_timeout;
        // Driven on this worker (a current-thread runtime in `gatehouse
        // run`), so a connection and its requests share a thread. With
        // upgrades, so a WebSocket can be handed over on any connection.
        // The task also closes the connection once it has been idle in
        // its pool past its time, even if no request comes to notice: a
        // backend must not see connections held longer than
        // `backend_idle_timeout` says.
        // The idle timer is polled only when it fires, not at each of the
        // connection's wake-ups (several per request), as beside client
        // connections (`gatehouse_core::listener::WhenWoken`).
        tokio::spawn(async move {
            let conn = conn.with_upgrades();
            tokio::pin!(conn);
            let mut timer = WhenWoken::new(tokio::time::sleep(idle_timeout));
            loop {
                tokio::select! {
                    biased;
                    ended = &mut conn => {
                        if let Err(e) = ended {
                            tracing::debug!(error = %e, "backend connection ended");
                        }
                        return;
                    }
                    () = &mut timer => {
                        let until = watched.load(Ordering::Acquire);
                        let now = now_ms();
                        if until != 0
                            && until <= now
                            && watched
                                .compare_exchange(until, CLOSING, Ordering::AcqRel, Ordering::Acquire)
                                .is_ok()
                        {
                            return;
                        }
                        let wait = if until == 0 { idle_timeout } else {
                            Duration::from_millis(until - now)
                        };
                        timer.reset_sleep(tokio::time::Instant::now() + wait);
                    }
                }
            }
        });
        Ok(Sender {
            send,
            idle_until,
            read,
            keep: Duration::MAX,
        })
    }
}

/// A response body that gives its connection back at its end.
struct PooledBody {
    body: Incoming,
    back: Option<(Sender, Arc<Pool>)>,
    /// The request's body, if it had one.
    client: Option<BodyState>,
}

/// Back to the pool, unless the request's body is still being sent.
fn give_back(sender: Sender, pool: &Pool, client: Option<&BodyState>) {
    if client.is_none_or(|c| c.complete_at().is_some()) {
        pool.put(sender);
    }
}

/// A copy of `req` to send again, if it may be (see
/// [`Upstream::exchange`]): an idempotent method (RFC 9110 §9.2.2), no
/// method-override header making it another, and no body.
fn replayable(req: &Request<ProxyBody>) -> Option<Request<ProxyBody>> {
    use http::Method;
    let idempotent = matches!(
        *req.method(),
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    );
    if !idempotent || !req.body().is_end_stream() || super::headers::overrides_method(req.headers())
    {
        return None;
    }
    let mut again = Request::new(super::ProxyBody::default());
    *again.method_mut() = req.method().clone();
    *again.uri_mut() = req.uri().clone();
    *again.version_mut() = req.version();
    *again.headers_mut() = req.headers().clone();
    Some(again)
}

/// Whether the backend closed or reset the connection before any byte of
/// an answer: what a keep-alive timer closing it looks like.
fn closed_unanswered(e: &hyper::Error) -> bool {
    use std::io::ErrorKind::{BrokenPipe, ConnectionAborted, ConnectionReset};
    e.is_incomplete_message()
        || chain_has(e, |io| {
            matches!(io.kind(), ConnectionReset | BrokenPipe | ConnectionAborted)
        })
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = super::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        // hyper stops polling a body once `is_end_stream` says so: the
        // last frame of a sized body is its end too.
        let done = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.body.is_end_stream(),
            Poll::Ready(Some(Err(_))) => {
                this.back = None;
                false
            }
            Poll::Pending => false,
        };
        if done {
            if let Some((sender, pool)) = this.back.take() {
                give_back(sender, &pool, this.client.as_ref());
            }
        }
        polled.map_err(Into::into)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Upstream {
    /// Counts a backend failure of this route by kind (`connect`,
    /// `timeout`, `framing`, `other`, ...).
    pub fn count_error(&self, kind: &'static str) {
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

/// Why a backend response's framing cannot be passed on, if it cannot
/// (RFC 9112 §6.1, §6.3): `Transfer-Encoding` with `Content-Length` (a
/// sign of smuggling or response splitting; the length the client would be
/// told is not the body it gets), or a transfer coding other than
/// `chunked` (the client would get encoded bytes it cannot see framed).
fn ambiguous_framing(h: &http::HeaderMap) -> Option<&'static str> {
    let te = h.get(http::header::TRANSFER_ENCODING)?;
    if h.contains_key(http::header::CONTENT_LENGTH) {
        return Some("both Transfer-Encoding and Content-Length");
    }
    if h.get_all(http::header::TRANSFER_ENCODING).iter().count() > 1
        || !te.as_bytes().eq_ignore_ascii_case(b"chunked")
    {
        return Some("a transfer coding other than chunked");
    }
    None
}

/// Whether hyper failed because the request body we were streaming (the
/// client's) failed: a user-body error whose cause is the client
/// connection's own error.
fn is_client_body_error(e: &hyper::Error) -> bool {
    if !e.is_user() {
        return false;
    }
    let mut cur = std::error::Error::source(e);
    while let Some(err) = cur {
        if err.is::<hyper::Error>() {
            return true;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(backends: &str) -> Upstream {
        let cfg = gatehouse_core::config::parse(&format!("routes:\n  - backends: {backends}\n"))
            .expect("config");
        Upstream::new(&cfg.routes[0].value, "r".into())
    }

    #[test]
    fn requests_alternate_between_backends_and_skip_one_cooling_down() {
        let up = upstream("[\"http://127.0.0.1:1\", \"http://127.0.0.1:2\"]");
        let picks: Vec<usize> = (0..4).map(|_| up.choose().0).collect();
        assert!(picks == [0, 1, 0, 1] || picks == [1, 0, 1, 0], "{picks:?}");
        up.backends[0]
            .down_until
            .store(now_ms() + 60_000, Ordering::Relaxed);
        assert!((0..4).all(|_| up.choose().0 == 1));
        // All cooling down: each is still tried in turn.
        up.backends[1]
            .down_until
            .store(now_ms() + 60_000, Ordering::Relaxed);
        let picks: Vec<usize> = (0..4).map(|_| up.choose().0).collect();
        assert!(picks.contains(&0) && picks.contains(&1), "{picks:?}");
    }

    #[test]
    fn a_single_backend_is_always_chosen_even_while_cooling_down() {
        let up = upstream("[\"http://127.0.0.1:1\"]");
        up.backends[0]
            .down_until
            .store(now_ms() + 60_000, Ordering::Relaxed);
        assert!((0..3).all(|_| up.choose().0 == 0));
    }
}
