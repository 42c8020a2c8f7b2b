//! Listeners: accepting, TLS handshakes, HTTP/1.1 + HTTP/2 connections,
//! connection limits, idle timeouts and graceful shutdown. No policy here:
//! every request goes to [`crate::proxy::Proxy::handle`].

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use std::path::PathBuf;

use arc_swap::ArcSwap;

pub use crate::generation::Generation;
use crate::proxy::ConnInfo;
use crate::revocation::{LocalAuthority, Revocations};
use gatehouse_core::config::{ListenAddress, LoadedConfig};
use gatehouse_core::listener::{accept_limited, serve_limited, Activity, Tracked};
use gatehouse_core::metrics::{metrics, ResultLabel, WorkerLabel};

/// A running gateway: its bound addresses, its current generation, and the
/// handles to reload and stop it.
pub struct Gateway {
    addrs: Vec<SocketAddr>,
    /// The socket files of `unix:` listeners, removed at shutdown.
    socket_files: std::sync::Mutex<Vec<SocketFile>>,
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
    /// Bound addresses of the TCP listeners, in the order of `listeners`
    /// in the config (useful with port 0); `unix:` listeners are left out.
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
        let loaded = gatehouse_core::config::load(&old.loaded.path).map_err(|e| e.to_string())?;
        let (o, n) = (&old.loaded.config, &loaded.config);
        let listeners = |c: &gatehouse_core::config::Config| {
            c.listeners
                .iter()
                .map(|l| {
                    (
                        l.value.address.clone(),
                        l.value.socket_mode,
                        l.value.tls.is_some(),
                        // An auth server's connections are served by
                        // another HTTP/1 server than a proxy's
                        // (`gatehouse_core::head_only`), chosen when they
                        // are accepted.
                        l.value.auth_server.is_some(),
                    )
                })
                .collect::<Vec<_>>()
        };
        if listeners(o) != listeners(n) {
            return Err(
                "listener addresses, socket modes, TLS on/off or auth_server on/off changed; restart to apply".into(),
            );
        }
        // `workers` as written differs but resolves the same (0 or absent:
        // one per CPU the process may use): writing out the count it
        // already runs with is not a change. The same value written is
        // never one, even if the CPUs available have changed since start.
        let changed: Vec<&str> = [
            (
                o.revocation.as_ref().map(|r| format!("{:?}", r.value))
                    != n.revocation.as_ref().map(|r| format!("{:?}", r.value)),
                "the revocation section",
            ),
            (
                o.admin.as_ref().map(|a| a.value.listen)
                    != n.admin.as_ref().map(|a| a.value.listen),
                "the admin section",
            ),
            (
                o.limits.max_connections != n.limits.max_connections,
                "limits.max_connections",
            ),
            (
                o.workers() != n.workers() && o.worker_count() != n.worker_count(),
                "workers",
            ),
            (
                o.worker_cpu_affinity != n.worker_cpu_affinity,
                "worker_cpu_affinity",
            ),
        ]
        .into_iter()
        .filter_map(|(differs, what)| differs.then_some(what))
        .collect();
        if !changed.is_empty() {
            return Err(format!("{} changed; restart to apply", changed.join(", ")));
        }
        // An embedded authority verifies logout tokens with the issuers it
        // started with: a changed issuer would silently not reach it.
        let embedded = |c: &gatehouse_core::config::Config| {
            c.revocation
                .as_ref()
                .is_some_and(|r| r.value.embedded.is_some())
        };
        let issuers = |c: &gatehouse_core::config::Config| {
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
        // Nothing accepts on them any more: an ingress that connects now is
        // told at once (no such file) instead of waiting in a backlog.
        self.socket_files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
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
pub async fn start(
    loaded: &LoadedConfig,
    local: Option<LocalAuthority>,
) -> anyhow::Result<Arc<Gateway>> {
    start_on(loaded, &[tokio::runtime::Handle::current()], local).await
}

/// One single-threaded runtime per core, each with its own listening
/// socket (SO_REUSEPORT) and its own backend connection pools; a worker
/// that accepts more than its share of connections hands them to the least
/// loaded one (see [`Balance`]): a request is accepted, checked, forwarded and
/// answered on one thread, with no cross-thread wake-ups on the way. The
/// control plane (feed, key refresh, admin, reload) stays on the caller's
/// runtime.
///
/// `local` is the authority of this process, for `revocation.embedded`
/// (the `gatehouse` binary starts it; see [`LocalAuthority`]).
pub async fn start_on(
    loaded: &LoadedConfig,
    workers: &[tokio::runtime::Handle],
    local: Option<LocalAuthority>,
) -> anyhow::Result<Arc<Gateway>> {
    let cfg = &loaded.config;
    // Before the state file is read: entries inside the leeway window
    // past their expiry are kept from it.
    crate::revocation::hold_past_leeway(cfg);
    let revocations = match &cfg.revocation {
        Some(r) => Some(Revocations::start(&r.value, loaded, local).await?),
        None => None,
    };
    let generation = Generation::build(loaded.clone(), revocations.clone()).await?;
    let current = Arc::new(ArcSwap::from_pointee(generation));
    let max_connections = u32::try_from(cfg.limits.max_connections).unwrap_or(u32::MAX >> 3);
    let conn_slots = Arc::new(Semaphore::new(max_connections as usize));
    let (tx, rx) = watch::channel(false);
    let mut accept_loops = JoinSet::new();
    let mut addrs = Vec::new();
    let mut socket_files = Vec::new();
    let (balance, inboxes) = Balance::new(workers.len().max(1));
    for ((worker, handle), inbox) in workers.iter().enumerate().zip(inboxes) {
        let (current, rx) = (current.clone(), rx.clone());
        accept_loops.spawn_on(
            async move {
                crate::proxy::upstream::set_worker(worker);
                inbox_loop(inbox, current, rx).await
            },
            handle,
        );
    }
    let shared = Shared {
        current: current.clone(),
        slots: conn_slots.clone(),
        shutdown: rx.clone(),
        balance: balance.clone(),
    };
    for (index, l) in cfg.listeners.iter().enumerate() {
        let lc = &l.value;
        let name = lc.name.as_deref().unwrap_or("-");
        let n = workers.len().max(1);
        match &lc.address {
            ListenAddress::Tcp(address) => {
                let sockets = bind_reuseport(*address, n)
                    .with_context(|| format!("cannot listen on {address}"))?;
                let addr = sockets[0].local_addr()?;
                tracing::info!(listener = name, address = %addr, tls = lc.tls.is_some(), workers = sockets.len(), "listening");
                addrs.push(addr);
                for (socket, (worker, handle)) in
                    sockets.into_iter().zip(workers.iter().enumerate())
                {
                    let start = AcceptLoop {
                        listener: index,
                        worker,
                        shared: shared.clone(),
                    };
                    accept_loops.spawn_on(start.run(socket, TcpListener::from_std), handle);
                }
            }
            ListenAddress::Unix(path) => {
                let mode = lc.socket_mode.unwrap_or_default();
                let (socket, file) = bind_unix(path, mode.0)
                    .with_context(|| format!("cannot listen on unix:{}", path.display()))?;
                tracing::info!(listener = name, address = %lc.address, mode = format!("{:o}", mode.0), workers = n, "listening");
                socket_files.push(file);
                // One socket (SO_REUSEPORT does not spread Unix sockets),
                // watched by every worker; the hand-over evens them out.
                for (worker, handle) in workers.iter().enumerate() {
                    let socket = socket
                        .try_clone()
                        .with_context(|| format!("cannot listen on unix:{}", path.display()))?;
                    let start = AcceptLoop {
                        listener: index,
                        worker,
                        shared: shared.clone(),
                    };
                    accept_loops.spawn_on(
                        start.run(socket, tokio::net::UnixListener::from_std),
                        handle,
                    );
                }
            }
        }
    }
    let admin_addr = match &cfg.admin {
        Some(a) => Some(crate::admin::start(a.value.listen, current.clone(), rx.clone()).await?),
        None => None,
    };
    Ok(Arc::new(Gateway {
        addrs,
        socket_files: std::sync::Mutex::new(socket_files),
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

/// A `unix:` listener's socket file, removed when dropped if it is still
/// the one this process made (a newer gatehouse may have replaced it).
struct SocketFile {
    path: PathBuf,
    inode: (u64, u64),
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        use std::os::unix::fs::MetadataExt;
        if std::fs::symlink_metadata(&self.path).is_ok_and(|m| (m.dev(), m.ino()) == self.inode) {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A listening Unix domain socket at `path` with permission bits `mode`.
///
/// Nothing at `path` is ever followed: whoever can write to the socket's
/// directory could otherwise swap the new socket for a symlink between
/// `bind` and `chmod`, and have the mode set on any file the gateway's user
/// owns. So the socket is made in a private directory (0700, checked to be
/// this user's), its mode is set there through that directory's handle,
/// and it is renamed into place already listening; the start holds an
/// `flock` on the socket's directory meanwhile. A socket file
/// left by a process that is gone (a connection to it is refused) is
/// replaced; a live one, a full one, or anything that is not a socket is an
/// error.
fn bind_unix(
    path: &std::path::Path,
    mode: u32,
) -> std::io::Result<(std::os::unix::net::UnixListener, SocketFile)> {
    use rustix::fs::{AtFlags, FlockOperation, Mode, OFlags, CWD};
    use socket2::{Domain, SockAddr, Socket, Type};
    use std::io::{Error, ErrorKind};
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(Error::new(ErrorKind::InvalidInput, "no file name"));
    };
    // Everything below goes through handles: the parent directory's and
    // the private directory's. A name is never resolved twice, and a
    // symlink swapped in anywhere is never followed (cleanup included).
    let parent_dir = rustix::fs::openat(
        CWD,
        parent,
        OFlags::DIRECTORY | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    // Two gatehouses starting on one path take turns, so the second finds
    // the first's socket live instead of taking it for a stale one.
    let mut waited = 0;
    while let Err(e) = rustix::fs::flock(&parent_dir, FlockOperation::NonBlockingLockExclusive) {
        if e != rustix::io::Errno::WOULDBLOCK || waited >= 500 {
            return Err(Error::other(format!(
                "cannot lock the socket's directory for the start: {e}"
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
        waited += 1;
    }
    clear_stale_socket(path)?;
    let private = format!(".gatehouse-{}", &gatehouse_core::ids::random_id()[..12]);
    rustix::fs::mkdirat(&parent_dir, private.as_str(), Mode::RWXU)?;
    let made = rustix::fs::openat(
        &parent_dir,
        private.as_str(),
        OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(Error::from)
    .and_then(|dir| {
        let made = (|| -> std::io::Result<(Socket, SocketFile)> {
            let st = rustix::fs::fstat(&dir)?;
            if st.st_uid != rustix::process::geteuid().as_raw() || st.st_mode & 0o7777 != 0o700 {
                return Err(Error::other(
                    "the private directory was replaced while binding",
                ));
            }
            let s = Socket::new(Domain::UNIX, Type::STREAM, None)?;
            // Bound through the directory's handle where /proc has one
            // (the name is short, so any path that fits sockaddr_un works
            // here too); else by path, then used only through `dir`: were
            // the directory swapped in between, the chmod finds no socket.
            let via_handle = std::path::PathBuf::from(format!(
                "/proc/self/fd/{}/s",
                std::os::fd::AsRawFd::as_raw_fd(&dir)
            ));
            let at = if via_handle.parent().is_some_and(|d| d.is_dir()) {
                via_handle
            } else {
                parent.join(&private).join("s")
            };
            s.bind(&SockAddr::unix(at)?)?;
            rustix::fs::chmodat(&dir, "s", Mode::from_raw_mode(mode), AtFlags::empty())?;
            let st = rustix::fs::statat(&dir, "s", AtFlags::SYMLINK_NOFOLLOW)?;
            if rustix::fs::FileType::from_raw_mode(st.st_mode) != rustix::fs::FileType::Socket {
                return Err(Error::other("the socket was replaced while binding"));
            }
            // Listening before it appears at the path: whoever finds it
            // there finds it live.
            s.listen(4096)?;
            rustix::fs::renameat(&dir, "s", &parent_dir, name)?;
            let file = SocketFile {
                path: path.to_owned(),
                inode: (st.st_dev, st.st_ino),
            };
            Ok((s, file))
        })();
        // Gone after the rename; the socket of a failed attempt otherwise.
        let _ = rustix::fs::unlinkat(&dir, "s", AtFlags::empty());
        made
    });
    // Never follows a symlink put in its place: rmdir does not.
    let _ = rustix::fs::unlinkat(&parent_dir, private.as_str(), AtFlags::REMOVEDIR);
    let (s, file) = made?;
    s.set_nonblocking(true)?;
    Ok((s.into(), file))
}

/// Removes a socket file at `path` that nothing accepts on (its process is
/// gone). A socket that accepts, or whose backlog is full, is live; a
/// symlink, directory or file is not ours to remove. The probe never
/// blocks.
fn clear_stale_socket(path: &std::path::Path) -> std::io::Result<()> {
    use socket2::{Domain, SockAddr, Socket, Type};
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::FileTypeExt;
    let Ok(m) = std::fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !m.file_type().is_socket() {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            "the path exists and is not a socket",
        ));
    }
    let probe = Socket::new(Domain::UNIX, Type::STREAM, None)?;
    probe.set_nonblocking(true)?;
    match probe.connect(&SockAddr::unix(path)?) {
        Ok(()) => Err(Error::new(
            ErrorKind::AddrInUse,
            "another process accepts on this socket",
        )),
        Err(e) if e.kind() == ErrorKind::ConnectionRefused => std::fs::remove_file(path),
        Err(e) if e.kind() == ErrorKind::WouldBlock => Err(Error::new(
            ErrorKind::AddrInUse,
            "another process listens on this socket (its backlog is full)",
        )),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => Err(Error::new(
            ErrorKind::PermissionDenied,
            "a socket is there and this user may not connect to it to see whether it is live",
        )),
        Err(e) => Err(e),
    }
}

/// Spreads client connections evenly over the request workers.
///
/// Each worker accepts on its own SO_REUSEPORT socket, and the kernel picks
/// the socket by a hash of the connection's addresses: 64 connections land
/// for example 28 and 36 on two workers, and the busier worker sets the
/// latency tail. So a worker that accepts a connection while it serves
/// more connections than the least loaded worker hands the connection to
/// that one: one cross-thread wake-up per handed-off connection, none per
/// request. HAProxy spreads its threads' connections the same way
/// (`tune.listener.multi-queue`: the thread with the fewest connections).
struct Balance {
    /// Connections open per worker, each on its own cache line: written
    /// once when a connection opens and once when it closes.
    open: Box<[OpenCount]>,
    inbox: Box<[mpsc::UnboundedSender<Handoff>]>,
    gauges: Box<[gatehouse_core::metrics::Gauge]>,
}

#[repr(align(64))]
struct OpenCount(AtomicUsize);

/// An accepted connection on its way to another worker, out of the
/// accepting worker's reactor.
enum StdStream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

/// An accepted connection as [`accept_loop`] has it.
trait Accepted: AsyncRead + AsyncWrite + Unpin + Sized + Send + 'static {
    /// Accepted on a `unix:` listener (see `ConnInfo::unix_socket`).
    const UNIX: bool;
    /// Out of this worker's reactor, for another worker.
    fn into_std(self) -> std::io::Result<StdStream>;
}

impl Accepted for TcpStream {
    const UNIX: bool = false;
    fn into_std(self) -> std::io::Result<StdStream> {
        TcpStream::into_std(self).map(StdStream::Tcp)
    }
}

impl Accepted for tokio::net::UnixStream {
    const UNIX: bool = true;
    fn into_std(self) -> std::io::Result<StdStream> {
        tokio::net::UnixStream::into_std(self).map(StdStream::Unix)
    }
}

/// A connection accepted by one worker, to be served by another.
struct Handoff {
    stream: StdStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    /// Counted on the receiving worker from the moment it was picked, so
    /// the next pick already sees it.
    served: Served,
    listener: usize,
}

impl Balance {
    fn new(workers: usize) -> (Arc<Self>, Vec<mpsc::UnboundedReceiver<Handoff>>) {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        let balance = Balance {
            open: (0..workers)
                .map(|_| OpenCount(AtomicUsize::new(0)))
                .collect(),
            inbox: senders.into_boxed_slice(),
            gauges: (0..workers as u64)
                .map(|worker| {
                    metrics()
                        .worker_connections
                        .get_or_create(&WorkerLabel { worker })
                        .clone()
                })
                .collect(),
        };
        (Arc::new(balance), receivers)
    }

    /// The worker that serves a connection `me` accepted: `me`, unless
    /// another worker serves fewer connections (the first with the fewest).
    fn pick(&self, me: usize) -> usize {
        let mut best = (self.open[me].0.load(Ordering::Relaxed), me);
        for (i, o) in self.open.iter().enumerate() {
            let n = o.0.load(Ordering::Relaxed);
            if n < best.0 {
                best = (n, i);
            }
        }
        best.1
    }

    /// Counts a connection on `worker` until the returned guard drops.
    fn open(self: &Arc<Self>, worker: usize) -> Served {
        self.open[worker].0.fetch_add(1, Ordering::Relaxed);
        self.gauges[worker].inc();
        Served {
            balance: self.clone(),
            worker,
        }
    }
}

/// One open connection counted on its worker.
struct Served {
    balance: Arc<Balance>,
    worker: usize,
}

impl Drop for Served {
    fn drop(&mut self) {
        self.balance.open[self.worker]
            .0
            .fetch_sub(1, Ordering::Relaxed);
        self.balance.gauges[self.worker].dec();
    }
}

/// What every accept loop shares.
#[derive(Clone)]
struct Shared {
    current: Arc<ArcSwap<Generation>>,
    slots: Arc<Semaphore>,
    shutdown: watch::Receiver<bool>,
    balance: Arc<Balance>,
}

/// One listener's accept loop on one worker.
struct AcceptLoop {
    listener: usize,
    worker: usize,
    shared: Shared,
}

impl AcceptLoop {
    /// The loop, to be spawned on the worker's runtime: `register` puts the
    /// listening socket into that runtime's reactor, on its thread.
    async fn run<S, L>(self, socket: S, register: fn(S) -> std::io::Result<L>)
    where
        L: gatehouse_core::listener::Listen,
        L::Stream: Accepted,
    {
        match register(socket) {
            Ok(listener) => {
                crate::proxy::upstream::set_worker(self.worker);
                let Shared {
                    current,
                    slots,
                    shutdown,
                    balance,
                } = self.shared;
                let me = Worker {
                    index: self.worker,
                    balance,
                };
                accept_loop(listener, self.listener, me, current, slots, shutdown).await
            }
            Err(e) => tracing::error!(error = %e, "cannot use the listening socket"),
        }
    }
}

/// The request worker an accept loop runs on.
struct Worker {
    index: usize,
    balance: Arc<Balance>,
}

async fn accept_loop<L>(
    listener: L,
    index: usize,
    me: Worker,
    current: Arc<ArcSwap<Generation>>,
    slots: Arc<Semaphore>,
    mut shutdown: watch::Receiver<bool>,
) where
    L: gatehouse_core::listener::Listen,
    L::Stream: Accepted,
{
    while let Some((stream, peer, permit)) = accept_limited(&listener, &slots, &mut shutdown).await
    {
        let to = me.balance.pick(me.index);
        let served = me.balance.open(to);
        if to != me.index {
            // `into_std` leaves the socket non-blocking, as `from_std`
            // on the other worker needs it.
            match Accepted::into_std(stream) {
                Ok(stream) => {
                    metrics().connections_handed_off.inc();
                    let handoff = Handoff {
                        stream,
                        peer,
                        permit,
                        served,
                        listener: index,
                    };
                    // Fails only when that worker has stopped (shutdown):
                    // the connection is closed with the gateway.
                    let _ = me.balance.inbox[to].send(handoff);
                }
                Err(e) => tracing::warn!(error = %e, "cannot hand a connection to another worker"),
            }
            continue;
        }
        spawn_connection(stream, peer, permit, served, index, &current, &shutdown);
    }
}

/// Serves the connections other workers handed to this one. At shutdown
/// the ones still on their way are closed before any request was read
/// from them, as a connection accepted at that moment would be (a client
/// retries a request it had not yet sent, RFC 9112 §9.3.1).
async fn inbox_loop(
    mut inbox: mpsc::UnboundedReceiver<Handoff>,
    current: Arc<ArcSwap<Generation>>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            h = inbox.recv() => match h {
                Some(h) => {
                    let taken = match h.stream {
                        StdStream::Tcp(s) => TcpStream::from_std(s).map(|s| {
                            spawn_connection(s, h.peer, h.permit, h.served, h.listener, &current, &shutdown)
                        }),
                        StdStream::Unix(s) => tokio::net::UnixStream::from_std(s).map(|s| {
                            spawn_connection(s, h.peer, h.permit, h.served, h.listener, &current, &shutdown)
                        }),
                    };
                    if let Err(e) = taken {
                        tracing::warn!(error = %e, "cannot take a connection from another worker");
                    }
                }
                None => return,
            },
            _ = shutdown.changed() => {
                inbox.close();
                return;
            }
        }
    }
}

fn spawn_connection<S: Accepted>(
    stream: S,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
    served: Served,
    index: usize,
    current: &Arc<ArcSwap<Generation>>,
    shutdown: &watch::Receiver<bool>,
) {
    let (current, shutdown) = (current.clone(), shutdown.clone());
    metrics().open_connections.inc();
    let hold: Arc<dyn std::any::Any + Send + Sync> = Arc::new(Hold {
        _permit: permit,
        _served: served,
    });
    tokio::spawn(async move {
        handle_connection(stream, S::UNIX, peer, index, current, shutdown, hold).await;
    });
}

/// A client connection's slot under `limits.max_connections` and its place
/// in `open_connections` and its worker's count, kept by the connection and
/// by any tunnel it becomes (see `ConnInfo::hold`): a WebSocket counts
/// against the limit for as long as it is open.
struct Hold {
    _permit: OwnedSemaphorePermit,
    _served: Served,
}

impl Drop for Hold {
    fn drop(&mut self) {
        metrics().open_connections.dec();
    }
}

async fn handle_connection<S>(
    stream: S,
    unix_socket: bool,
    peer: SocketAddr,
    index: usize,
    current: Arc<ArcSwap<Generation>>,
    shutdown: watch::Receiver<bool>,
    hold: Arc<dyn std::any::Any + Send + Sync>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let tracked = Tracked::new(stream, activity.clone());
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
                unix_socket,
                cert_names: None,
                listener: index,
                hold: Some(hold),
            };
            serve(tracked, info, generation, current, activity, shutdown).await
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
                        unix_socket: false,
                        cert_names,
                        listener: index,
                        hold: Some(hold),
                    };
                    serve(s, info, generation, current, activity, shutdown).await
                }
                Ok(Err(e)) => tracing::debug!(peer = %peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(peer = %peer, "TLS handshake timed out"),
            }
        }
    }
}

/// A connection's view of the current policy: what each of its requests
/// is handed.
struct Bound {
    proxy: Arc<crate::proxy::Proxy>,
    info: ConnInfo,
}

async fn serve<I>(
    io: I,
    info: ConnInfo,
    generation: Arc<Generation>,
    current: Arc<ArcSwap<Generation>>,
    activity: Arc<Activity>,
    shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let unix_socket = info.unix_socket;
    if generation.proxy.auth_server(info.listener).is_some() {
        // Boxed: inline, the auth server's state (larger than the proxy
        // path's) set the size of every connection's task, and an idle
        // proxy connection held 3.6 KB more (`benches/wrk/idle.sh`:
        // 49.7 against 46.1 KB before the auth server had its own
        // server).
        return Box::pin(serve_ingress(io, info, generation, current, shutdown)).await;
    }
    let bound = std::sync::Mutex::new(Arc::new(Bound {
        proxy: generation.proxy.clone(),
        info,
    }));
    let handler = move |req| {
        // Each request takes the generation current when it arrives, but
        // clones only this connection's `Arc` (a cache line one thread
        // writes), not the generation's (one every worker would write on
        // every request); the connection re-binds after a reload.
        let b = {
            let now = current.load();
            let mut held = bound
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if !Arc::ptr_eq(&held.proxy, &now.proxy) {
                *held = Arc::new(Bound {
                    proxy: now.proxy.clone(),
                    info: held.info.clone(),
                });
            }
            held.clone()
        };
        // Boxed once here: the request's future (about 4 KB, the whole
        // proxy path's state) would otherwise be copied at each of the
        // three or four moves on its way into hyper's dispatcher (profiled:
        // 4% of a decision's CPU in memmove).
        Box::pin(async move { b.proxy.handle(req, &b.info).await })
    };
    let refused = serve_limited(
        io,
        peer,
        &generation.builder,
        &generation.limits,
        activity,
        shutdown,
        handler,
    )
    .await;
    if let Some(r) = refused {
        generation.proxy.record_refused_head(peer, unix_socket, r);
    }
}

/// An auth-server listener's connection: the ingress's questions are
/// answered from their heads alone by `gatehouse_core::head_only`, under
/// the same limits as every listener; each question takes the policy
/// current when it arrives.
async fn serve_ingress<I>(
    io: I,
    info: ConnInfo,
    generation: Arc<Generation>,
    current: Arc<ArcSwap<Generation>>,
    shutdown: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (peer, unix_socket) = (info.peer, info.unix_socket);
    // Each question takes a clone of this connection's own `Arc` (a
    // cache line one thread writes), not of the generation's, which every
    // connection of every worker would write on every question; the
    // connection re-binds after a reload. No lock: the handler is this
    // connection's task's alone.
    let mut bound = Arc::new(generation.proxy.clone());
    let info = &info;
    let refused =
        gatehouse_core::head_only::serve_heads(io, &generation.limits, shutdown, |parts| {
            let now = current.load();
            if !Arc::ptr_eq(&*bound, &now.proxy) {
                bound = Arc::new(now.proxy.clone());
            }
            let p = bound.clone();
            async move { p.answer_ingress(parts, info).await }
        })
        .await;
    if let Some(r) = refused {
        generation.proxy.record_refused_head(peer, unix_socket, r);
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
