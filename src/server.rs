//! Listeners: accepting, TLS handshakes, HTTP/1.1 + HTTP/2 connections,
//! connection limits, idle timeouts and graceful shutdown. No policy here:
//! every request goes to [`Proxy::handle`].

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
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

use std::path::PathBuf;

use arc_swap::ArcSwap;

use crate::admin::metrics::{metrics, ResultLabel};
use crate::config::{Limits, LoadedConfig};
use crate::proxy::{ConnInfo, Proxy};
use crate::revocation::Revocations;

/// Everything a new connection or request uses, built from one config and
/// swapped whole on reload. A request holds its generation to its end, so
/// in-flight requests finish on the config they started with.
pub struct Generation {
    pub proxy: Arc<Proxy>,
    builder: auto::Builder<TokioExecutor>,
    limits: Limits,
    /// Per listener, in config order.
    tls: Vec<Option<(tokio_rustls::TlsAcceptor, Arc<crate::tls::CertNames>)>>,
    pub loaded: LoadedConfig,
}

impl Generation {
    async fn build(
        loaded: LoadedConfig,
        revocations: Option<Arc<Revocations>>,
    ) -> anyhow::Result<Generation> {
        let cfg = &loaded.config;
        let mut tls = Vec::new();
        for l in &cfg.listeners {
            tls.push(match &l.value.tls {
                Some(t) => {
                    let (config, names) = crate::tls::server_config_with_names(t, &loaded)?;
                    Some((
                        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
                        Arc::new(names),
                    ))
                }
                None => None,
            });
        }
        Ok(Generation {
            proxy: Arc::new(Proxy::from_config(&loaded, revocations).await?),
            builder: http_builder(&cfg.limits),
            limits: cfg.limits.clone(),
            tls,
            loaded,
        })
    }
}

/// A running gateway: its bound addresses, its current generation, and the
/// handles to reload and stop it.
pub struct Gateway {
    addrs: Vec<SocketAddr>,
    current: Arc<ArcSwap<Generation>>,
    revocations: Option<Arc<Revocations>>,
    admin_addr: Option<SocketAddr>,
    reload_lock: tokio::sync::Mutex<()>,
    shutdown: watch::Sender<bool>,
    accept_loops: tokio::sync::Mutex<JoinSet<()>>,
    conn_slots: Arc<Semaphore>,
    max_connections: u32,
}

impl Gateway {
    /// Bound addresses, in the order of `listeners` in the config (useful
    /// with port 0).
    pub fn addrs(&self) -> &[SocketAddr] {
        &self.addrs
    }

    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    pub fn current(&self) -> Arc<Generation> {
        self.current.load_full()
    }

    /// Re-reads the config file, validates it, builds everything it needs
    /// (keys, certificates, routes) and only then swaps it in. On any
    /// error the running config keeps serving and the error says why
    /// (`file:line: reason` for config problems).
    pub async fn reload(&self) -> Result<(), String> {
        let _one_at_a_time = self.reload_lock.lock().await;
        let result = self.try_reload().await;
        let label = if result.is_ok() { "ok" } else { "failed" };
        metrics()
            .reloads
            .get_or_create(&ResultLabel { result: label })
            .inc();
        match &result {
            Ok(()) => tracing::info!("config reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "config reload refused; the running config keeps serving")
            }
        }
        result
    }

    async fn try_reload(&self) -> Result<(), String> {
        let old = self.current.load_full();
        let loaded = crate::config::load(&old.loaded.path).map_err(|e| e.to_string())?;
        let (o, n) = (&old.loaded.config, &loaded.config);
        let listeners = |c: &crate::config::Config| -> Vec<(SocketAddr, bool)> {
            c.listeners
                .iter()
                .map(|l| (l.value.address, l.value.tls.is_some()))
                .collect()
        };
        if listeners(o) != listeners(n) {
            return Err("listener addresses or TLS on/off changed; restart to apply".into());
        }
        let fingerprint = |c: &crate::config::Config| {
            (
                c.revocation.as_ref().map(|r| format!("{:?}", r.value)),
                c.admin.as_ref().map(|a| a.value.listen),
                c.limits.max_connections,
            )
        };
        if fingerprint(o) != fingerprint(n) {
            return Err("the revocation or admin section, or limits.max_connections, changed; restart to apply".into());
        }
        // An embedded authority verifies logout tokens with the issuers it
        // started with: a changed issuer would silently not reach it.
        let embedded = |c: &crate::config::Config| {
            c.revocation
                .as_ref()
                .is_some_and(|r| r.value.embedded.is_some())
        };
        let issuers = |c: &crate::config::Config| {
            c.issuers
                .iter()
                .map(|i| format!("{:?}", i.value))
                .collect::<Vec<_>>()
        };
        if embedded(o) && issuers(o) != issuers(n) {
            return Err("issuers changed and the embedded authority (revocation.embedded) verifies logout tokens with them; restart to apply".into());
        }
        let generation = Generation::build(loaded, self.revocations.clone())
            .await
            .map_err(|e| format!("{e:#}"))?;
        self.current.store(Arc::new(generation));
        Ok(())
    }

    /// Stops accepting, asks every connection to finish its in-flight
    /// requests, and waits for them up to `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        let _ = self.shutdown.send(true);
        let mut loops = self.accept_loops.lock().await;
        while loops.join_next().await.is_some() {}
        let all = self.conn_slots.acquire_many(self.max_connections);
        match tokio::time::timeout(grace, all).await {
            Ok(_) => tracing::info!("all connections closed"),
            Err(_) => tracing::warn!(
                open = self.max_connections as usize - self.conn_slots.available_permits(),
                "shutdown grace period over; closing remaining connections"
            ),
        }
    }

    /// Files whose change should trigger a reload: the config, and the
    /// certificates, keys and JWKS files it names.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let g = self.current.load();
        let l = &g.loaded;
        let mut files = vec![l.path.clone()];
        for li in &l.config.listeners {
            for c in li.value.tls.iter().flat_map(|t| t.certificates.iter()) {
                files.push(l.resolve(&c.value.cert));
                files.push(l.resolve(&c.value.key));
            }
        }
        for i in &l.config.issuers {
            if let Some(f) = i.value.jwks.as_ref().and_then(|j| j.file.as_ref()) {
                files.push(l.resolve(f));
            }
        }
        files
    }
}

/// Starts the gateway with its accept loops on the current runtime (tests,
/// tools). `gatehouse run` uses [`start_on`] with one runtime per core.
pub async fn start(loaded: &LoadedConfig) -> anyhow::Result<Arc<Gateway>> {
    start_on(loaded, &[tokio::runtime::Handle::current()]).await
}

/// One single-threaded runtime per core, each with its own listening
/// socket (SO_REUSEPORT, the kernel spreads connections) and its own
/// backend connection pools: a request is accepted, checked, forwarded and
/// answered on one thread, with no cross-thread wake-ups on the way. The
/// control plane (feed, key refresh, admin, reload) stays on the caller's
/// runtime.
pub async fn start_on(
    loaded: &LoadedConfig,
    workers: &[tokio::runtime::Handle],
) -> anyhow::Result<Arc<Gateway>> {
    let cfg = &loaded.config;
    let revocations = match &cfg.revocation {
        Some(r) => Some(Revocations::start(&r.value, loaded).await?),
        None => None,
    };
    let generation = Generation::build(loaded.clone(), revocations.clone()).await?;
    let current = Arc::new(ArcSwap::from_pointee(generation));
    let max_connections = u32::try_from(cfg.limits.max_connections).unwrap_or(u32::MAX >> 3);
    let conn_slots = Arc::new(Semaphore::new(max_connections as usize));
    let (tx, rx) = watch::channel(false);
    let mut accept_loops = JoinSet::new();
    let mut addrs = Vec::new();
    for (index, l) in cfg.listeners.iter().enumerate() {
        let lc = &l.value;
        let sockets = bind_reuseport(lc.address, workers.len().max(1))
            .with_context(|| format!("cannot listen on {}", lc.address))?;
        let addr = sockets[0].local_addr()?;
        tracing::info!(listener = lc.name.as_deref().unwrap_or("-"), address = %addr, tls = lc.tls.is_some(), workers = sockets.len(), "listening");
        addrs.push(addr);
        for (socket, (worker, handle)) in sockets.into_iter().zip(workers.iter().enumerate()) {
            let (current, slots, rx) = (current.clone(), conn_slots.clone(), rx.clone());
            accept_loops.spawn_on(
                async move {
                    // Registered with this worker's reactor, on its thread.
                    match TcpListener::from_std(socket) {
                        Ok(listener) => {
                            crate::proxy::upstream::set_worker(worker);
                            accept_loop(listener, index, current, slots, rx).await
                        }
                        Err(e) => tracing::error!(error = %e, "cannot use the listening socket"),
                    }
                },
                handle,
            );
        }
    }
    let admin_addr = match &cfg.admin {
        Some(a) => Some(crate::admin::start(a.value.listen, current.clone(), rx.clone()).await?),
        None => None,
    };
    Ok(Arc::new(Gateway {
        addrs,
        current,
        revocations,
        admin_addr,
        reload_lock: tokio::sync::Mutex::new(()),
        shutdown: tx,
        accept_loops: tokio::sync::Mutex::new(accept_loops),
        conn_slots,
        max_connections,
    }))
}

/// `n` listening sockets on one address (the first one resolves port 0),
/// with SO_REUSEPORT so each worker accepts on its own.
fn bind_reuseport(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut out: Vec<std::net::TcpListener> = Vec::with_capacity(n);
    let mut bind_to = addr;
    for _ in 0..n {
        let s = Socket::new(
            Domain::for_address(bind_to),
            Type::STREAM,
            Some(Protocol::TCP),
        )?;
        s.set_reuse_address(true)?;
        #[cfg(unix)]
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&bind_to.into())?;
        s.listen(4096)?;
        let l: std::net::TcpListener = s.into();
        if out.is_empty() {
            bind_to = l.local_addr()?;
        }
        out.push(l);
    }
    Ok(out)
}

/// The HTTP/1 and HTTP/2 connection settings every listener shares (the
/// gateway's and the authority's): header read timeout (slowloris, RFC 9112
/// §2.2 leaves it to the server), header size and count limits, HTTP/2
/// stream and reset limits (RFC 9113 §10.5).
pub(crate) fn http_builder(limits: &Limits) -> auto::Builder<TokioExecutor> {
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
    index: usize,
    current: Arc<ArcSwap<Generation>>,
    slots: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) {
    while let Some((stream, peer, permit)) = accept_limited(&listener, &slots, &mut shutdown).await
    {
        let (current, shutdown) = (current.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let open = metrics().open_connections.clone();
            open.inc();
            handle_connection(stream, peer, index, current, shutdown).await;
            open.dec();
        });
    }
}

/// The next connection, once a connection slot is free: at the limit a
/// listener stops accepting and the kernel backlog holds new clients.
/// `None` when shutting down. Shared by the gateway's and the authority's
/// listeners.
pub(crate) async fn accept_limited(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<(TcpStream, SocketAddr, tokio::sync::OwnedSemaphorePermit)> {
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => p.ok()?,
            _ = shutdown.changed() => return None,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    drop(permit);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return None,
        };
        let _ = stream.set_nodelay(true);
        return Some((stream, peer, permit));
    }
}

/// Serves one accepted connection of a listener other than the gateway's
/// own (the authority's) under the same limits: the TLS handshake within
/// the header read timeout, [`http_builder`]'s header limits, and the idle
/// timeout of [`serve_limited`].
pub(crate) async fn serve_plain_or_tls<H, Fut>(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<tokio_rustls::TlsAcceptor>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Limits,
    shutdown: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(http::Request<hyper::body::Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<crate::proxy::ProxyBody>> + Send + 'static,
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
                limits.idle_timeout,
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
                        limits.idle_timeout,
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

async fn handle_connection(
    stream: TcpStream,
    peer: SocketAddr,
    index: usize,
    current: Arc<ArcSwap<Generation>>,
    shutdown: watch::Receiver<bool>,
) {
    let activity = Arc::new(Activity::new());
    let tracked = Tracked {
        inner: stream,
        activity: activity.clone(),
    };
    // TLS settings and limits come from the generation current at accept
    // time: a renewed certificate is served from the next handshake on.
    let generation = current.load_full();
    let tls = generation.tls.get(index).cloned().flatten();
    match tls {
        None => {
            let info = ConnInfo {
                peer,
                client: crate::proxy::headers::ClientAddr::new(peer.ip()),
                tls: false,
                cert_names: None,
                listener: index,
            };
            serve(
                TokioIo::new(tracked),
                info,
                generation,
                current,
                activity,
                shutdown,
            )
            .await
        }
        Some((acceptor, names)) => {
            let handshake = tokio::time::timeout(
                generation.limits.header_read_timeout,
                acceptor.accept(tracked),
            )
            .await;
            match handshake {
                Ok(Ok(s)) => {
                    let cert_names = s.get_ref().1.server_name().and_then(|n| names.for_sni(n));
                    let info = ConnInfo {
                        peer,
                        client: crate::proxy::headers::ClientAddr::new(peer.ip()),
                        tls: true,
                        cert_names,
                        listener: index,
                    };
                    serve(
                        TokioIo::new(s),
                        info,
                        generation,
                        current,
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
    generation: Arc<Generation>,
    current: Arc<ArcSwap<Generation>>,
    activity: Arc<Activity>,
    shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let info = Arc::new(info);
    let handler = move |req| {
        // Each request takes the generation current when it arrives.
        let proxy = current.load().proxy.clone();
        let info = info.clone();
        async move { proxy.handle(req, &info).await }
    };
    serve_limited(
        io,
        peer,
        &generation.builder,
        generation.limits.idle_timeout,
        activity,
        shutdown,
        handler,
    )
    .await
}

/// Drives one HTTP connection: requests go to `handler`; the connection is
/// closed gracefully once idle (no request in flight, no bytes moving) for
/// `idle`, or on shutdown. Shared by every listener.
pub(crate) async fn serve_limited<I, H, Fut>(
    io: TokioIo<I>,
    peer: SocketAddr,
    builder: &auto::Builder<TokioExecutor>,
    idle: Duration,
    activity: Arc<Activity>,
    mut shutdown: watch::Receiver<bool>,
    handler: H,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    H: Fn(http::Request<hyper::body::Incoming>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = http::Response<crate::proxy::ProxyBody>> + Send + 'static,
{
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
            _ = tick.tick(), if !closing => {
                if activity.idle_for() >= idle {
                    closing = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
}

/// Reloads on SIGHUP and when a watched file changes (debounced), for as
/// long as the gateway lives.
pub fn spawn_reloader(gw: &Arc<Gateway>) {
    let weak = Arc::downgrade(gw);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<&'static str>(8);
    #[cfg(unix)]
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            let Ok(mut hup) =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
            else {
                return;
            };
            while hup.recv().await.is_some() {
                if tx.send("SIGHUP").await.is_err() {
                    return;
                }
            }
        });
    }
    let watched = gw.watched_files();
    let watcher = watch_files(&watched, tx);
    tokio::spawn(async move {
        let _watcher = watcher;
        while let Some(why) = rx.recv().await {
            // Editors and certbot write several events per change.
            tokio::time::sleep(Duration::from_millis(300)).await;
            while rx.try_recv().is_ok() {}
            let Some(gw) = weak.upgrade() else { return };
            tracing::info!(trigger = why, "reloading config");
            let _ = gw.reload().await;
        }
    });
}

/// Watches the directories of `files` (so atomic renames and symlink
/// swaps are seen) and reports changes to any of them.
fn watch_files(
    files: &[PathBuf],
    tx: tokio::sync::mpsc::Sender<&'static str>,
) -> Option<notify::RecommendedWatcher> {
    use notify::Watcher;
    let wanted: Vec<PathBuf> = files.to_vec();
    let names: std::collections::HashSet<std::ffi::OsString> = wanted
        .iter()
        .filter_map(|p| p.file_name().map(|n| n.to_os_string()))
        .collect();
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if let Ok(ev) = ev {
            if matches!(ev.kind, notify::EventKind::Access(_)) {
                return;
            }
            if ev
                .paths
                .iter()
                .any(|p| p.file_name().is_some_and(|n| names.contains(n)))
            {
                let _ = tx.try_send("file change");
            }
        }
    })
    .map_err(|e| tracing::warn!(error = %e, "cannot watch config files; SIGHUP still reloads"))
    .ok()?;
    let dirs: std::collections::HashSet<PathBuf> = wanted
        .iter()
        .filter_map(|p| {
            p.parent().map(|d| {
                if d.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    d.to_owned()
                }
            })
        })
        .collect();
    for d in dirs {
        if let Err(e) = watcher.watch(&d, notify::RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %d.display(), error = %e, "cannot watch directory");
        }
    }
    Some(watcher)
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
pub(crate) struct Activity {
    /// Set whenever bytes move; cleared by the idle check. No clock is
    /// read on the I/O path: the check (every idle_timeout/4) keeps time.
    moved: AtomicBool,
    /// When the idle check last saw `moved` set or work in flight.
    last_seen_ms: AtomicU64,
    in_flight: AtomicUsize,
}

impl Activity {
    fn new() -> Self {
        Activity {
            moved: AtomicBool::new(false),
            last_seen_ms: AtomicU64::new(now_ms()),
            in_flight: AtomicUsize::new(0),
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
        if self.moved.swap(false, Ordering::Relaxed) || self.in_flight.load(Ordering::Relaxed) > 0 {
            self.last_seen_ms.store(now, Ordering::Relaxed);
            return Duration::ZERO;
        }
        Duration::from_millis(now.saturating_sub(self.last_seen_ms.load(Ordering::Relaxed)))
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
