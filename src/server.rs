//! Listeners: accepting, TLS handshakes, HTTP/1.1 + HTTP/2 connections,
//! connection limits, idle timeouts and graceful shutdown. No policy here:
//! every request goes to [`Proxy::handle`].

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::config::{Limits, LoadedConfig};
use crate::proxy::{ConnInfo, Proxy};

/// A running gateway: its bound addresses and the handle to stop it.
pub struct Gateway {
    addrs: Vec<SocketAddr>,
    shutdown: watch::Sender<bool>,
    accept_loops: JoinSet<()>,
    conn_slots: Arc<Semaphore>,
    max_connections: u32,
}

impl Gateway {
    /// Bound addresses, in the order of `listeners` in the config (useful
    /// with port 0).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    /// Stops accepting, asks every connection to finish its in-flight
    /// requests, and waits for them up to `grace`.
    pub async fn shutdown(mut self, grace: Duration) {
        let _ = self.shutdown.send(true);
        while self.accept_loops.join_next().await.is_some() {}
        let all = self.conn_slots.acquire_many(self.max_connections);
        match tokio::time::timeout(grace, all).await {
            Ok(_) => tracing::info!("all connections closed"),
            Err(_) => tracing::warn!(
                open = self.max_connections as usize - self.conn_slots.available_permits(),
                "shutdown grace period over; closing remaining connections"
            ),
        }
    }
}

pub async fn start(loaded: &LoadedConfig) -> anyhow::Result<Gateway> {
    let cfg = &loaded.config;
    let proxy = Arc::new(Proxy::from_config(loaded).await?);
    let limits = Arc::new(cfg.limits.clone());
    let max_connections = u32::try_from(cfg.limits.max_connections).unwrap_or(u32::MAX >> 3);
    let conn_slots = Arc::new(Semaphore::new(max_connections as usize));
    let (tx, rx) = watch::channel(false);
    let builder = Arc::new(http_builder(&cfg.limits));
    let mut accept_loops = JoinSet::new();
    let mut addrs = Vec::new();
    for l in &cfg.listeners {
        let lc = &l.value;
        let tls = match &lc.tls {
            Some(t) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
                crate::tls::server_config(t, loaded)?,
            ))),
            None => None,
        };
        let listener = TcpListener::bind(lc.address)
            .await
            .with_context(|| format!("cannot listen on {}", lc.address))?;
        let addr = listener.local_addr()?;
        tracing::info!(listener = lc.name.as_deref().unwrap_or("-"), address = %addr, tls = tls.is_some(), "listening");
        addrs.push(addr);
        accept_loops.spawn(accept_loop(
            listener,
            tls,
            proxy.clone(),
            builder.clone(),
            limits.clone(),
            conn_slots.clone(),
            rx.clone(),
        ));
    }
    Ok(Gateway {
        addrs,
        shutdown: tx,
        accept_loops,
        conn_slots,
        max_connections,
    })
}

fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
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

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Arc<Limits>,
    slots: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        // Take a connection slot first: at the limit we stop accepting and
        // let the kernel backlog hold new clients.
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return },
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let _ = stream.set_nodelay(true);
        let (proxy, builder, limits, tls, shutdown) = (
            proxy.clone(),
            builder.clone(),
            limits.clone(),
            tls.clone(),
            shutdown.clone(),
        );
        tokio::spawn(async move {
            let _permit = permit;
            handle_connection(stream, peer, tls, proxy, builder, limits, shutdown).await;
        });
    }
}

async fn handle_connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Arc<Limits>,
    shutdown: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let tracked = Tracked {
        inner: stream,
        activity: activity.clone(),
    };
    match tls {
        None => {
            let info = ConnInfo { peer, tls: false };
            serve(
                TokioIo::new(tracked),
                info,
                proxy,
                builder,
                limits,
                activity,
                shutdown,
            )
            .await
        }
        Some(acceptor) => {
            let handshake =
                tokio::time::timeout(limits.header_read_timeout, acceptor.accept(tracked)).await;
            match handshake {
                Ok(Ok(s)) => {
                    let info = ConnInfo { peer, tls: true };
                    serve(
                        TokioIo::new(s),
                        info,
                        proxy,
                        builder,
                        limits,
                        activity,
                        shutdown,
                    )
                    .await
                }
                Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
            }
        }
    }
}

async fn serve<I>(
    io: TokioIo<I>,
    info: ConnInfo,
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Arc<Limits>,
    activity: Arc<Activity>,
    mut shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let act = activity.clone();
    let svc = service_fn(move |req| {
        let proxy = proxy.clone();
        let guard = InFlight::enter(act.clone());
        async move {
            let resp = proxy.handle(req, info).await;
            drop(guard);
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = builder.serve_connection_with_upgrades(io, svc);
    tokio::pin!(conn);
    let idle = limits.idle_timeout;
    let mut tick = tokio::time::interval((idle / 4).max(Duration::from_millis(250)));
    let mut closing = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(peer = %info.peer, error = %e, "connection ended with an error");
                }
                return;
            }
            changed = shutdown.changed(), if !closing => {
                let _ = changed;
                closing = true;
                conn.as_mut().graceful_shutdown();
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
fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// When a connection last moved bytes and how many requests it has in
/// flight: idle means both "quiet" and "nothing being worked on", so a slow
/// backend does not get its client cut off.
struct Activity {
    last_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Activity {
            last_ms: AtomicU64::new(now_ms()),
            in_flight: AtomicUsize::new(0),
        }
    }

    fn touch(&self) {
        self.last_ms.store(now_ms(), Ordering::Relaxed);
    }

    fn idle_for(&self) -> Duration {
        if self.in_flight.load(Ordering::Relaxed) > 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(now_ms().saturating_sub(self.last_ms.load(Ordering::Relaxed)))
    }
}

struct InFlight(Arc<Activity>);

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
struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
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
