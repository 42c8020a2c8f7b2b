//! What every listener shares (the gateway's and the authority's): the
//! HTTP/1.1 + HTTP/2 connection settings and limits, accepting under a
//! connection limit, the TLS handshake deadline, idle timeouts and graceful
//! shutdown. One implementation, so the authority gets exactly the
//! gateway's protections.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::config::Limits;

/// The HTTP/1 and HTTP/2 connection settings every listener shares (the
/// gateway's and the authority's): header size and count limits, HTTP/2
/// stream and reset limits (RFC 9113 §10.5). The header read timeout is
/// [`serve_limited`]'s, not hyper's: see there.
pub fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // A client may shut down its sending side once its request is out
        // and still read the answer (RFC 9112 §9.6 leaves the half-close to
        // the client); without this the request was dropped unanswered.
        .half_close(true)
        // hyper's header timer also runs while a kept-alive connection
        // waits for its next request, so every connection quiet for
        // `header_read_timeout` (10 s) was closed long before
        // `idle_timeout` (60 s), and an ingress's keep-alive pool to the
        // auth server was torn down at every lull. `serve_limited` keeps
        // the two apart.
        .header_read_timeout(None)
        .max_buf_size(limits.max_header_bytes.value)
        .max_headers(limits.max_headers);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes.value).unwrap_or(u32::MAX))
        .max_concurrent_streams(256)
        .max_pending_accept_reset_streams(50)
        .max_local_error_reset_streams(256);
    b
}

/// The next connection, once a connection slot is free: at the limit a
/// listener stops accepting and the kernel backlog holds new clients.
/// `None` when shutting down. Shared by the gateway's and the authority's
/// listeners.
///
/// A loop waiting for a connection holds no slot: with several listeners
/// and workers, each idle accept loop holding one would keep that many
/// slots from the busy listener (and at a small limit starve it). So a
/// loop waits until a slot is free, accepts, and only then takes the slot;
/// if another loop took it meanwhile, the accepted connection waits for the
/// next free one (at most one such connection per accept loop).
pub async fn accept_limited<L: Listen>(
    listener: &L,
    slots: &Arc<Semaphore>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(L::Stream, SocketAddr, tokio::sync::OwnedSemaphorePermit)> {
    loop {
        if slots.available_permits() == 0 {
            tokio::select! {
                p = slots.acquire() => drop(p.ok()?),
                _ = shutdown.changed() => return None,
            }
        }
        let (stream, peer) = tokio::select! {
            r = listener.accept_one() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return None,
        };
        let permit = match slots.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(tokio::sync::TryAcquireError::Closed) => return None,
            Err(tokio::sync::TryAcquireError::NoPermits) => tokio::select! {
                p = slots.clone().acquire_owned() => p.ok()?,
                _ = shutdown.changed() => return None,
            },
        };
        return Some((stream, peer, permit));
    }
}

/// A listening socket [`accept_limited`] accepts on: TCP, or a Unix domain
/// socket (an auth server beside an ingress on the same host).
pub trait Listen {
    /// The accepted connection.
    type Stream: Send;
    /// The next connection and its peer's address; a Unix socket's peer,
    /// which has no IP address, is this host (`127.0.0.1:0`).
    fn accept_one(
        &self,
    ) -> impl std::future::Future<Output = io::Result<(Self::Stream, SocketAddr)>> + Send;
}

impl Listen for TcpListener {
    type Stream = TcpStream;
    async fn accept_one(&self) -> io::Result<(TcpStream, SocketAddr)> {
        let (stream, peer) = self.accept().await?;
        // Answers are written whole; Nagle would only hold the last segment.
        let _ = stream.set_nodelay(true);
        Ok((stream, peer))
    }
}

#[cfg(unix)]
impl Listen for tokio::net::UnixListener {
    type Stream = tokio::net::UnixStream;
    async fn accept_one(&self) -> io::Result<(tokio::net::UnixStream, SocketAddr)> {
        let (stream, _) = self.accept().await?;
        Ok((stream, SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, 0))))
    }
}

/// Serves one accepted connection of a listener other than the gateway's
/// own (the authority's) under the same limits: the TLS handshake within
/// the header read timeout, [`http_builder`]'s header limits, and the idle
/// timeout of [`serve_limited`].
pub async fn serve_plain_or_tls<H, Fut>(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(http::Request<hyper::body::Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<crate::body::ProxyBody>> + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let tracked = Tracked::new(stream, activity.clone());
    match tls {
        None => {
            serve_limited(
                tracked, peer, &builder, &limits, activity, shutdown, handler,
            )
            .await;
        }
        Some(acceptor) => {
            match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tracked)).await {
                Ok(Ok(s)) => {
                    serve_limited(s, peer, &builder, &limits, activity, shutdown, handler).await;
                }
                Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
            }
        }
    }
}

/// Drives one HTTP connection: requests go to `handler`; the connection is
/// closed gracefully once idle (no request in flight, no bytes moving) for
/// `limits.idle_timeout`, or on shutdown. Shared by every listener.
///
/// `limits.header_read_timeout` bounds each HTTP/1 request head (RFC 9112
/// §2.2 leaves the slowloris guard to the server, as nginx's
/// `client_header_timeout` and Go's `ReadHeaderTimeout` do): the first one
/// from the moment the connection is served, each later one from its first
/// byte. A connection over it is dropped. Waiting between requests is the
/// idle timeout's business, not this one's.
///
/// Returns the answer hyper gave a request head it refused before any
/// handler saw it (see [`RefusedHead`]), so the caller can log and count
/// it like any other answer.
pub async fn serve_limited<I, H, Fut>(
    io: I,
    peer: SocketAddr,
    builder: &auto::Builder<TokioExecutor>,
    limits: &Limits,
    activity: Arc<Activity>,
    mut shutdown: watch::Receiver<bool>,
    handler: H,
) -> Option<RefusedHead>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(http::Request<hyper::body::Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<crate::body::ProxyBody>> + Send + 'static,
{
    let (first_byte, idle) = (limits.header_read_timeout, limits.idle_timeout);
    let act = activity.clone();
    let svc = service_fn(move |req| {
        let fut = handler(req);
        let activity = act.clone();
        async move {
            // Entered at the first poll, in the request's own task, not
            // when hyper calls the service: on HTTP/2 the call happens in
            // the connection's task at the stream's accept, before hyper
            // has looked for the client's RST_STREAM. A stream opened and
            // reset at once then showed as in flight to the idle check
            // running in that same task; streams arriving in step with
            // the check kept a connection idle in every other sense open
            // (seen: `an_http2_client_opening_and_cancelling_streams_is_
            // closed_at_the_idle_timeout`, open 4-6 s instead of 4, once
            // 10 s).
            let guard = InFlight::enter(activity.clone());
            let resp = fut.await;
            guard.answered();
            Ok::<_, Infallible>(resp.map(|inner| Progress { inner, activity }))
        }
    });
    // The first request's head is due within `header_read_timeout` of now.
    // A client that opens a connection and sends nothing holds a slot under
    // `limits.max_connections`: it gets the header read timeout, as a slow
    // head does, not the idle timeout of a connection in use.
    activity.head_begins(now_ms());
    let io = TokioIo::new(Watched {
        inner: io,
        watch: Heads {
            activity: activity.clone(),
            preface_seen: 0,
        },
    });
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let idle_check = (idle / 4).max(Duration::from_millis(250));
    // When a graceful close began (idle, or the server shutting down).
    let mut closing_since: Option<tokio::time::Instant> = None;
    let mut watching_heads = true;
    // One timer for the head deadline and the idle check. It is checked
    // lazily (the deadline moves only when it fires, never on the request
    // path), and like the shutdown signal it is polled only when it wakes
    // the connection, not at each of the connection's several wake-ups per
    // request: the shutdown signal is one `Notify` for every connection of
    // every worker, and polling it takes its lock.
    let mut timer = WhenWoken::new(tokio::time::sleep(first_byte.min(idle_check)));
    let mut stop = WhenWoken::new(async move {
        let _ = shutdown.changed().await;
    });
    loop {
        tokio::select! {
            // The connection first, and no random branch order to draw on
            // every wake-up (several per request).
            biased;
            res = conn.as_mut() => {
                let Err(e) = res else { return None };
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                return RefusedHead::of(&*e);
            }
            () = &mut stop, if closing_since.is_none() => {
                closing_since = Some(tokio::time::Instant::now());
                conn.as_mut().graceful_shutdown();
            }
            () = &mut timer => {
                let mut next = idle_check;
                if watching_heads {
                    match activity.head_since() {
                        // HTTP/2 multiplexes: once its first request has
                        // come, a connection between streams is idle, not
                        // a slow head (RFC 9113 §9.1); `idle_timeout` and
                        // hyper's HTTP/2 limits apply from then on. Until
                        // then the preface, SETTINGS and first request are
                        // due within the header read timeout, as an
                        // HTTP/1 connection's first head is.
                        None if activity.http2.load(Ordering::Relaxed) => watching_heads = false,
                        None => next = next.min(first_byte),
                        Some(since) => {
                            let waited = Duration::from_millis(now_ms().saturating_sub(since));
                            if waited >= first_byte {
                                tracing::debug!(peer = %peer, "closed: a request head not complete within the header read timeout");
                                return None;
                            }
                            next = next.min(first_byte - waited);
                        }
                    }
                }
                // HTTP/1: time with no request in flight and no byte
                // moving. HTTP/2: with no request in flight and no
                // response data sent; its control frames (PING, SETTINGS,
                // WINDOW_UPDATE, PRIORITY) carry no request, and a client
                // sending one every second kept an idle connection and its
                // slot for ever.
                let quiet = if activity.http2.load(Ordering::Relaxed) {
                    activity.streams_idle_for()
                } else {
                    activity.idle_for()
                };
                if closing_since.is_none() && quiet >= idle {
                    closing_since = Some(tokio::time::Instant::now());
                    conn.as_mut().graceful_shutdown();
                }
                if let Some(t) = closing_since {
                    // An HTTP/2 graceful close waits for the client to
                    // acknowledge a PING (RFC 9113 §6.8); a client that
                    // never does would keep its slot for ever. A close not
                    // done within the header read timeout, on a connection
                    // as quiet for as long (nothing in flight, no byte
                    // moving: not a long download), is forced.
                    if t.elapsed() >= first_byte && quiet >= first_byte {
                        tracing::debug!(peer = %peer, "closed: the client did not complete a graceful close");
                        return None;
                    }
                    next = next.min(first_byte);
                }
                timer.reset_sleep(tokio::time::Instant::now() + next);
            }
        }
    }
}

/// A request head that hyper answered itself, before any handler: one
/// over `limits.max_header_bytes` or `limits.max_headers` (431, RFC 6585
/// §5) or one HTTP/1.1 cannot parse (400, RFC 9112 §2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusedHead {
    /// The status hyper answered with.
    pub status: u16,
    /// The access log's and metrics' outcome label.
    pub outcome: &'static str,
    pub reason: &'static str,
}

impl RefusedHead {
    fn of(e: &(dyn std::error::Error + Send + Sync + 'static)) -> Option<Self> {
        let h = e.downcast_ref::<hyper::Error>()?;
        if h.is_parse_too_large() {
            Some(RefusedHead {
                status: 431,
                outcome: "header_too_large",
                reason: "request head over limits.max_header_bytes or limits.max_headers",
            })
        } else if h.is_parse() {
            Some(RefusedHead {
                status: 400,
                outcome: "malformed_request",
                reason: "request head that HTTP/1.1 cannot parse",
            })
        } else {
            None
        }
    }
}

/// A future polled only when it has woken its task itself (or never has
/// been), as `FuturesUnordered` does for each of its futures; between
/// those, polling it is one atomic swap. For the timers and signals beside
/// a connection future that wakes its task several times per request.
pub struct WhenWoken<F> {
    fut: Pin<Box<F>>,
    wake: Arc<WokenFlag>,
    done: bool,
}

struct WokenFlag {
    woken: AtomicBool,
    task: atomic_waker::AtomicWaker,
}

impl std::task::Wake for WokenFlag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.woken.store(true, Ordering::Release);
        self.task.wake();
    }
}

impl<F: std::future::Future<Output = ()>> WhenWoken<F> {
    /// `fut`, to be polled at the first poll and then only when it has
    /// woken the task.
    pub fn new(fut: F) -> Self {
        WhenWoken {
            fut: Box::pin(fut),
            wake: Arc::new(WokenFlag {
                woken: AtomicBool::new(true),
                task: atomic_waker::AtomicWaker::new(),
            }),
            done: false,
        }
    }
}

impl WhenWoken<tokio::time::Sleep> {
    /// Moves the timer; it is polled (and so registered) at the next poll.
    pub fn reset_sleep(&mut self, at: tokio::time::Instant) {
        self.fut.as_mut().reset(at);
        self.done = false;
        self.wake.woken.store(true, Ordering::Release);
    }
}

impl<F: std::future::Future<Output = ()>> std::future::Future for WhenWoken<F> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.done {
            return Poll::Pending;
        }
        self.wake.task.register(cx.waker());
        if !self.wake.woken.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        let waker = std::task::Waker::from(self.wake.clone());
        let mut inner = Context::from_waker(&waker);
        match self.fut.as_mut().poll(&mut inner) {
            Poll::Ready(()) => {
                self.done = true;
                Poll::Ready(())
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Milliseconds since process start: a clock cheap enough to stamp every
/// read and write with.
pub fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// When a connection last moved bytes and how many requests it has in
/// flight: idle means both "quiet" and "nothing being worked on", so a slow
/// backend does not get its client cut off.
pub struct Activity {
    /// Set whenever bytes move; cleared by the idle check. No clock is
    /// read on the I/O path: the check (every idle_timeout/4) keeps time.
    moved: AtomicBool,
    /// When the idle check last saw `moved` set or work in flight.
    last_seen_ms: AtomicU64,
    in_flight: AtomicUsize,
    /// When the request head now being read began, as [`now_ms`] + 1; 0
    /// when none is (a request is being served, or the connection waits
    /// between requests).
    head_since_ms: AtomicU64,
    /// The client spoke HTTP/2 (its connection preface, RFC 9113 §3.4).
    http2: AtomicBool,
    /// Set when a request starts or ends or its response sends data;
    /// cleared by the HTTP/2 idle check, which keeps `streams_seen_ms`.
    streams_moved: AtomicBool,
    streams_seen_ms: AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    /// A connection that just moved bytes, with nothing in flight.
    pub fn new() -> Self {
        Activity {
            moved: AtomicBool::new(false),
            last_seen_ms: AtomicU64::new(now_ms()),
            in_flight: AtomicUsize::new(0),
            head_since_ms: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            streams_moved: AtomicBool::new(false),
            streams_seen_ms: AtomicU64::new(now_ms()),
        }
    }

    fn stream_moved(&self) {
        if !self.streams_moved.load(Ordering::Relaxed) {
            self.streams_moved.store(true, Ordering::Relaxed);
        }
    }

    /// [`Activity::idle_for`] counting only requests and response data,
    /// for HTTP/2.
    fn streams_idle_for(&self) -> Duration {
        let now = now_ms();
        if self.streams_moved.swap(false, Ordering::Relaxed)
            || self.in_flight.load(Ordering::Relaxed) > 0
        {
            self.streams_seen_ms.store(now, Ordering::Relaxed);
            return Duration::ZERO;
        }
        Duration::from_millis(now.saturating_sub(self.streams_seen_ms.load(Ordering::Relaxed)))
    }

    fn head_begins(&self, now: u64) {
        self.head_since_ms.store(now + 1, Ordering::Relaxed);
    }

    /// Bytes arrived: with no request being served they are the start of
    /// the next request's head (the clock is read once per request).
    fn bytes_arrived(&self) {
        if self.in_flight.load(Ordering::Relaxed) == 0
            && !self.http2.load(Ordering::Relaxed)
            && self.head_since_ms.load(Ordering::Relaxed) == 0
        {
            self.head_begins(now_ms());
        }
    }

    fn head_since(&self) -> Option<u64> {
        match self.head_since_ms.load(Ordering::Relaxed) {
            0 => None,
            t => Some(t - 1),
        }
    }

    fn touch(&self) {
        if !self.moved.load(Ordering::Relaxed) {
            self.moved.store(true, Ordering::Relaxed);
        }
    }

    /// Called from the connection's idle tick.
    fn idle_for(&self) -> Duration {
        let now = now_ms();
        let moved = self.moved.swap(false, Ordering::Relaxed);
        if moved || self.in_flight.load(Ordering::Relaxed) > 0 {
            self.last_seen_ms.store(now, Ordering::Relaxed);
            return Duration::ZERO;
        }
        Duration::from_millis(now.saturating_sub(self.last_seen_ms.load(Ordering::Relaxed)))
    }
}

pub struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(a: Arc<Activity>) -> Self {
        a.in_flight.fetch_add(1, Ordering::Relaxed);
        // The head is complete: hyper hands over a request only then.
        a.head_since_ms.store(0, Ordering::Relaxed);
        InFlight(a)
    }

    /// The request was answered: on HTTP/2 that, not its opening, is what
    /// keeps a connection from idle. A client opening a stream every few
    /// seconds and resetting it at once (RST_STREAM) never gets an answer,
    /// and kept an idle connection and its slot for ever.
    fn answered(self) {
        self.0.stream_moved();
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that marks [`Activity`] whenever it yields a frame: on
/// HTTP/2, a download in progress is what keeps a connection from idle.
struct Progress {
    inner: crate::body::ProxyBody,
    activity: Arc<Activity>,
}

impl http_body::Body for Progress {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(Some(Ok(_)))) {
            self.activity.stream_moved();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// A stream whose reads and writes are reported to `W`: what a
/// connection's timers learn of its bytes. One of each kind of stream
/// wrapper, so they delegate reads and writes the same way.
pub struct Watched<S, W> {
    inner: S,
    watch: W,
}

impl<S, W: Watch> Watched<S, W> {
    /// `inner`, its reads and writes reported to `watch`.
    pub fn new_watched(inner: S, watch: W) -> Self {
        Watched { inner, watch }
    }
}

/// What a [`Watched`] stream reports to.
pub trait Watch: Unpin {
    /// `new` bytes were read (never empty).
    fn read(&mut self, new: &[u8]);
    /// Bytes were written.
    fn wrote(&self) {}
}

/// The raw socket's bytes: any byte moving keeps an HTTP/1 connection
/// from idle.
pub struct RawBytes(Arc<Activity>);

impl Watch for RawBytes {
    fn read(&mut self, _new: &[u8]) {
        self.0.touch();
        // Under TLS these are the record's bytes: a client trickling an
        // unfinished record of its next request shows no plaintext above
        // TLS, so its head's time starts here.
        self.0.bytes_arrived();
    }

    fn wrote(&self) {
        self.0.touch();
    }
}

/// A stream that stamps [`Activity`] whenever bytes move.
pub type Tracked<S> = Watched<S, RawBytes>;

impl<S> Tracked<S> {
    pub fn new(inner: S, activity: Arc<Activity>) -> Self {
        Watched {
            inner,
            watch: RawBytes(activity),
        }
    }
}

/// The connection's bytes as hyper reads them (after TLS): marks where each
/// request head begins, and whether the client speaks HTTP/2.
struct Heads {
    activity: Arc<Activity>,
    /// How many bytes of the HTTP/2 preface the first bytes matched; a
    /// mismatch ends the check (`u8::MAX`).
    preface_seen: u8,
}

/// The HTTP/2 client connection preface (RFC 9113 §3.4). Only the whole
/// of it lifts the head timer: a client that stops part-way is held to the
/// header read timeout like a slow HTTP/1 head.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Watch for Heads {
    fn read(&mut self, new: &[u8]) {
        let seen = usize::from(self.preface_seen);
        if seen < H2_PREFACE.len() {
            let n = new.len().min(H2_PREFACE.len() - seen);
            self.preface_seen = if new[..n] == H2_PREFACE[seen..seen + n] {
                (seen + n) as u8
            } else {
                u8::MAX
            };
            if usize::from(self.preface_seen) == H2_PREFACE.len() {
                self.activity.http2.store(true, Ordering::Relaxed);
            }
        }
        self.activity.bytes_arrived();
    }
}

impl<S: AsyncRead + Unpin, W: Watch> AsyncRead for Watched<S, W> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        let new = &buf.filled()[before..];
        if matches!(r, Poll::Ready(Ok(()))) && !new.is_empty() {
            this.watch.read(new);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin, W: Watch> AsyncWrite for Watched<S, W> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.watch.wrote();
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.watch.wrote();
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(_) => {
                        let _ = ctrl_c.await;
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        {
            let _ = ctrl_c.await;
        }
    }
}
