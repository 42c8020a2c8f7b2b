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
/// gateway's and the authority's): header read timeout (slowloris, RFC 9112
/// §2.2 leaves it to the server), header size and count limits, HTTP/2
/// stream and reset limits (RFC 9113 §10.5).
pub fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        // A client may shut down its sending side once its request is out
        // and still read the answer (RFC 9112 §9.6 leaves the half-close to
        // the client); without this the request was dropped unanswered.
        .half_close(true)
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes)
        .max_headers(limits.max_headers);
    b.http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(limits.max_header_bytes).unwrap_or(u32::MAX))
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
    let tracked = Tracked {
        inner: stream,
        activity: activity.clone(),
    };
    match tls {
        None => {
            serve_limited(
                TokioIo::new(tracked),
                peer,
                &builder,
                &limits,
                activity,
                shutdown,
                handler,
            )
            .await
        }
        Some(acceptor) => {
            match tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tracked)).await {
                Ok(Ok(s)) => {
                    serve_limited(
                        TokioIo::new(s),
                        peer,
                        &builder,
                        &limits,
                        activity,
                        shutdown,
                        handler,
                    )
                    .await
                }
                Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
            }
        }
    }
}

/// Drives one HTTP connection: requests go to `handler`; the connection is
/// closed gracefully once idle (no request in flight, no bytes moving) for
/// `limits.idle_timeout`, or on shutdown, and dropped if it sends nothing
/// within `limits.header_read_timeout`. Shared by every listener.
pub async fn serve_limited<I, H, Fut>(
    io: TokioIo<I>,
    peer: SocketAddr,
    builder: &auto::Builder<TokioExecutor>,
    limits: &Limits,
    activity: Arc<Activity>,
    mut shutdown: watch::Receiver<bool>,
    handler: H,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(http::Request<hyper::body::Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<crate::body::ProxyBody>> + Send + 'static,
{
    let (first_byte, idle) = (limits.header_read_timeout, limits.idle_timeout);
    let act = activity.clone();
    let svc = service_fn(move |req| {
        let guard = InFlight::enter(act.clone());
        let fut = handler(req);
        async move {
            let resp = fut.await;
            drop(guard);
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let mut tick = tokio::time::interval((idle / 4).max(Duration::from_millis(250)));
    let mut closing = false;
    // A client that opens a connection and sends nothing holds a slot
    // under `limits.max_connections`: it gets the header read timeout, as
    // a slow header does, not the idle timeout of a connection in use.
    let silent = tokio::time::sleep(first_byte);
    tokio::pin!(silent);
    let mut watching_silence = true;
    loop {
        tokio::select! {
            // The connection first, and no random branch order to draw on
            // every wake-up (one per request at least).
            biased;
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                }
                return;
            }
            changed = shutdown.changed(), if !closing => {
                let _ = changed;
                closing = true;
                conn.as_mut().graceful_shutdown();
            }
            _ = &mut silent, if watching_silence => {
                watching_silence = false;
                if activity.never_moved() {
                    tracing::debug!(peer = %peer, "closed: no request within the header read timeout");
                    return;
                }
            }
            _ = tick.tick(), if !closing => {
                if activity.idle_for() >= idle {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
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
    /// Set by the idle check when it clears `moved`: bytes have moved at
    /// some point (the I/O path only ever writes `moved`).
    moved_ever: AtomicBool,
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
            moved_ever: AtomicBool::new(false),
        }
    }

    /// No byte has moved either way since the connection opened.
    fn never_moved(&self) -> bool {
        !self.moved.load(Ordering::Relaxed)
            && !self.moved_ever.load(Ordering::Relaxed)
            && self.in_flight.load(Ordering::Relaxed) == 0
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
        if moved {
            self.moved_ever.store(true, Ordering::Relaxed);
        }
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
        InFlight(a)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.touch();
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A stream that stamps [`Activity`] whenever bytes move.
pub struct Tracked<S> {
    pub inner: S,
    pub activity: Arc<Activity>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.touch();
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.activity.touch();
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
            self.activity.touch();
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
