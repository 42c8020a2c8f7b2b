//! gatehouse-test-support: real parts for integration tests and benches:
//! tokens, a counting backend, a JWKS server, a gateway on an ephemeral
//! port, authority and gateway processes, and a client that speaks
//! HTTP/1.1 or HTTP/2 over plain TCP or real TLS.
//!
//! Entry points: [`start_gateway`] (in process) and [`Proc`] (a
//! `gatehouse` process), [`Backend`] (records what it receives), [`send`].

pub mod browser;
pub mod oidc;
pub mod yaml;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{json, Map, Value};
use tokio::net::{TcpListener, TcpStream};

pub const ISS: &str = "https://issuer.test";
pub const AUD: &str = "app";

/// The repository's root (this crate is `crates/test-support`).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn fixture(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures").join(name)
}

/// The `gatehouse` binary cargo built beside the running test or bench
/// (`target/<profile>/gatehouse`; cargo builds a package's binaries
/// before its integration tests and benches).
pub fn gatehouse_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("current test executable");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps");
    profile_dir.join("gatehouse")
}

pub fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

/// Claims of a token that is valid for the test issuer right now.
pub fn claims(sub: &str) -> Map<String, Value> {
    let n = now();
    json!({"iss": ISS, "aud": AUD, "sub": sub, "iat": n, "nbf": n, "exp": n + 600,
           "jti": format!("jti-{sub}-{n}"), "email": format!("{sub}@example.test")})
    .as_object()
    .cloned()
    .unwrap_or_default()
}

pub fn key_for(alg: Algorithm) -> EncodingKey {
    let read = |n: &str| std::fs::read(fixture(n)).expect("fixture");
    match alg {
        Algorithm::RS256 => EncodingKey::from_rsa_pem(&read("rs256.key.pem")).expect("rsa key"),
        Algorithm::ES256 => EncodingKey::from_ec_pem(&read("es256.key.pem")).expect("ec key"),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&read("eddsa.key.pem")).expect("ed key"),
        Algorithm::HS256 => EncodingKey::from_secret(
            String::from_utf8(read("hs256.secret"))
                .expect("utf8")
                .trim()
                .as_bytes(),
        ),
        other => panic!("no fixture key for {other:?}"),
    }
}

pub fn kid_for(alg: Algorithm) -> Option<String> {
    match alg {
        Algorithm::RS256 => Some("test-rs256".into()),
        Algorithm::ES256 => Some("test-es256".into()),
        Algorithm::EdDSA => Some("test-eddsa".into()),
        _ => None,
    }
}

pub fn mint_with(alg: Algorithm, claims: &Map<String, Value>) -> String {
    crypto();
    let mut h = Header::new(alg);
    h.kid = kid_for(alg);
    jsonwebtoken::encode(&h, claims, &key_for(alg)).expect("mint")
}

pub fn mint(alg: Algorithm, sub: &str) -> String {
    mint_with(alg, &claims(sub))
}

pub fn b64(v: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v)
}

/// A token assembled by hand: any header, any payload, any signature.
pub fn raw_token(header: &Value, payload: &Value, sig: &str) -> String {
    format!(
        "{}.{}.{}",
        b64(header.to_string().as_bytes()),
        b64(payload.to_string().as_bytes()),
        sig
    )
}

pub fn crypto() {
    gatehouse::auth::jwt::install_crypto_and_self_test().expect("crypto self-test");
}

/// What the backend saw of the last request.
#[derive(Clone, Debug)]
pub struct Seen {
    pub path: String,
    pub headers: HeaderMap,
    pub body_bytes: u64,
}

/// A backend that counts every request it gets. `/slow...` waits 3 s;
/// requests with `Upgrade` are switched and echoed; bodies are streamed and
/// counted, never held.
pub struct Backend {
    pub addr: SocketAddr,
    pub hits: Arc<AtomicUsize>,
    pub last: Arc<Mutex<Option<Seen>>>,
}

impl Backend {
    pub async fn start() -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind backend");
        let addr = listener.local_addr().expect("addr");
        let hits = Arc::new(AtomicUsize::new(0));
        let last = Arc::new(Mutex::new(None));
        let (h, l) = (hits.clone(), last.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (h, l) = (h.clone(), l.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| backend_handle(req, h.clone(), l.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Backend { addr, hits, last }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    pub fn last(&self) -> Seen {
        self.last
            .lock()
            .expect("lock")
            .clone()
            .expect("backend saw no request")
    }
}

async fn backend_handle(
    mut req: Request<Incoming>,
    hits: Arc<AtomicUsize>,
    last: Arc<Mutex<Option<Seen>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    hits.fetch_add(1, Ordering::SeqCst);
    let path = req.uri().path().to_owned();
    let headers = req.headers().clone();
    if req.headers().contains_key(http::header::UPGRADE) {
        *last.lock().expect("lock") = Some(Seen {
            path,
            headers,
            body_bytes: 0,
        });
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let (mut r, mut w) = tokio::io::split(&mut io);
                let _ = tokio::io::copy(&mut r, &mut w).await;
            }
        });
        let mut resp = Response::new(Full::new(Bytes::new()));
        *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        // Switches to the protocol the client asked for (RFC 9110 §7.8).
        let asked = req
            .headers()
            .get(http::header::UPGRADE)
            .cloned()
            .unwrap_or_else(|| "echo".parse().expect("hv"));
        resp.headers_mut().insert("upgrade", asked);
        resp.headers_mut()
            .insert("connection", "upgrade".parse().expect("hv"));
        // As a WebSocket server answers the client's key (RFC 6455 §4.2.2).
        if let Some(key) = req.headers().get("sec-websocket-key") {
            use base64::Engine as _;
            let mut input = key.as_bytes().to_vec();
            input.extend_from_slice(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, &input);
            let accept = base64::engine::general_purpose::STANDARD.encode(d.as_ref());
            resp.headers_mut()
                .insert("sec-websocket-accept", accept.parse().expect("hv"));
        }
        return Ok(resp);
    }
    if path.starts_with("/slow") {
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    let mut body = req.into_body();
    let mut n = 0u64;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => n += f.data_ref().map_or(0, |d| d.len() as u64),
            Err(_) => break,
        }
    }
    *last.lock().expect("lock") = Some(Seen {
        path,
        headers,
        body_bytes: n,
    });
    Ok(Response::new(Full::new(Bytes::from(format!(
        "received {n} bytes"
    )))))
}

/// Serves a JWKS document that the test can replace at run time.
pub struct JwksServer {
    pub addr: SocketAddr,
    pub body: Arc<Mutex<Vec<u8>>>,
    pub hits: Arc<AtomicUsize>,
}

impl JwksServer {
    pub async fn start(initial: Vec<u8>) -> JwksServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind jwks");
        let addr = listener.local_addr().expect("addr");
        let body = Arc::new(Mutex::new(initial));
        let hits = Arc::new(AtomicUsize::new(0));
        let (b, h) = (body.clone(), hits.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (b, h) = (b.clone(), h.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |_req: Request<Incoming>| {
                        h.fetch_add(1, Ordering::SeqCst);
                        let doc = b.lock().expect("lock").clone();
                        async move { Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(doc)))) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        JwksServer { addr, body, hits }
    }

    pub fn publish(&self, doc: Vec<u8>) {
        *self.body.lock().expect("lock") = doc;
    }
}

/// Writes `yaml` to a temp dir, loads it like `gatehouse run` would, and
/// starts the gateway in this process.
pub async fn start_gateway(
    yaml: &str,
) -> (
    std::sync::Arc<gatehouse::server::Gateway>,
    tempfile::TempDir,
) {
    crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gatehouse.yaml");
    std::fs::write(&path, yaml).expect("write config");
    let loaded = gatehouse::config::load(&path).unwrap_or_else(|e| panic!("config refused:\n{e}"));
    let gw = gatehouse::server::start(&loaded)
        .await
        .expect("gateway starts");
    (gw, dir)
}

/// The usual test config: a TLS listener (two certificates, SNI) and a
/// plain one, one issuer with every algorithm, a protected route with
/// public paths, an optional route, a scope-protected route.
pub fn standard_config(backend: SocketAddr, jwks: &str) -> String {
    let f = |n: &str| fixture(n).display().to_string();
    format!(
        r#"
listeners:
  - name: tls
    address: 127.0.0.1:0
    tls:
      certificates:
        - {{ cert: {server_crt}, key: {server_key}, server_names: [localhost, app.test] }}
        - {{ cert: {other_crt}, key: {other_key}, server_names: [other.test] }}
  - name: plain
    address: 127.0.0.1:0
issuers:
  - name: test
    issuer: {ISS}
    audiences: [{AUD}]
    algorithms: [RS256, ES256, EdDSA, HS256]
    jwks: {jwks}
    hmac_secret: {{ file: {hs} }}
    leeway: 0s
routes:
  - name: app
    path_prefix: /
    backends: [http://{backend}]
    public_paths: [/public/, /health]
    identity_headers:
      - {{ claim: sub, header: X-Auth-Subject }}
      - {{ claim: email, header: X-Auth-Email }}
    timeout: 1s
  - name: guest
    path_prefix: /guest
    backends: [http://{backend}]
    auth: optional
    identity_headers:
      - {{ claim: sub, header: X-Auth-Subject }}
  - name: reports
    path_prefix: /reports
    backends: [http://{backend}]
    require: {{ scopes: [reports.read] }}
  - name: upload
    path_prefix: /upload
    backends: [http://{backend}]
    max_body_bytes: 209715200
logging:
  level: warn
"#,
        server_crt = f("server.crt.pem"),
        server_key = f("server.key.pem"),
        other_crt = f("other.crt.pem"),
        other_key = f("other.key.pem"),
        hs = f("hs256.secret"),
    )
}

pub fn jwks_file() -> String {
    format!("{{ file: {} }}", fixture("jwks.json").display())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Plain,
    TlsH1,
    TlsH2,
}

pub type ClientBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn empty() -> ClientBody {
    Empty::new().map_err(|never| match never {}).boxed()
}

/// A TLS client trusting the test CA, offering `alpn`.
pub fn tls_client_config(alpn: &[u8]) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::{pem::PemObject, CertificateDer};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(fixture("ca.crt.pem")).expect("ca") {
        roots.add(c.expect("ca cert")).expect("add ca");
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    cfg.alpn_protocols = vec![alpn.to_vec()];
    Arc::new(cfg)
}

pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn challenge(&self) -> String {
        self.headers
            .get("www-authenticate")
            .map(|v| v.to_str().unwrap_or("").to_owned())
            .unwrap_or_default()
    }
}

/// One request on a fresh connection. `sni` is the TLS server name (the
/// certificate must be valid for it, checked against the test CA).
pub async fn send(addr: SocketAddr, proto: Proto, sni: &str, req: Request<ClientBody>) -> Answer {
    let tcp = TcpStream::connect(addr).await.expect("connect gateway");
    let resp = match proto {
        Proto::Plain => h1(TokioIo::new(tcp), req).await,
        Proto::TlsH1 | Proto::TlsH2 => {
            let alpn: &[u8] = if proto == Proto::TlsH2 {
                b"h2"
            } else {
                b"http/1.1"
            };
            let connector = tokio_rustls::TlsConnector::from(tls_client_config(alpn));
            let name =
                rustls::pki_types::ServerName::try_from(sni.to_owned()).expect("server name");
            let tls = connector.connect(name, tcp).await.expect("TLS handshake");
            assert_eq!(
                tls.get_ref().1.alpn_protocol(),
                Some(alpn),
                "ALPN negotiated"
            );
            if proto == Proto::TlsH2 {
                h2(TokioIo::new(tls), req).await
            } else {
                h1(TokioIo::new(tls), req).await
            }
        }
    };
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    Answer {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}

async fn h1<I>(io: TokioIo<I>, req: Request<ClientBody>) -> Response<Incoming>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut s, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .expect("h1 handshake");
    tokio::spawn(conn.with_upgrades());
    s.send_request(req).await.expect("h1 request")
}

async fn h2<I>(io: TokioIo<I>, req: Request<ClientBody>) -> Response<Incoming>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut s, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
        .await
        .expect("h2 handshake");
    tokio::spawn(conn);
    s.send_request(req).await.expect("h2 request")
}

/// A GET with an optional bearer token and extra headers. HTTP/2 needs an
/// absolute URI; HTTP/1.1 gets a Host header.
pub fn get(
    proto: Proto,
    host: &str,
    path: &str,
    token: Option<&str>,
    extra: &[(&str, &str)],
) -> Request<ClientBody> {
    let mut b = Request::get(if proto == Proto::TlsH2 {
        format!("https://{host}{path}")
    } else {
        path.to_owned()
    });
    if proto != Proto::TlsH2 {
        b = b.header("host", host);
    } else {
        b = b.version(http::Version::HTTP_2);
    }
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    for (k, v) in extra {
        b = b.header(*k, *v);
    }
    b.body(empty()).expect("request")
}

/// A body of `total` zero bytes in 64 KiB chunks, generated as it is sent.
pub struct ZeroBody {
    pub remaining: u64,
    chunk: Bytes,
}

impl ZeroBody {
    pub fn new(total: u64) -> ZeroBody {
        ZeroBody {
            remaining: total,
            chunk: Bytes::from(vec![0u8; 64 * 1024]),
        }
    }
}

impl http_body::Body for ZeroBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n)))))
    }

    fn size_hint(&self) -> http_body::SizeHint {
        http_body::SizeHint::with_exact(self.remaining)
    }
}

/// `gatehouse <subcommand> --config ...` as a child process. Its address
/// is read from the JSON log line with the given message.
pub struct Proc {
    pub child: std::process::Child,
    pub addr: SocketAddr,
    pub config: PathBuf,
    /// Every line it has written to stdout so far.
    pub lines: Arc<Mutex<Vec<String>>>,
    _dir: Option<tempfile::TempDir>,
}

impl Proc {
    pub fn start(subcommand: &str, yaml: &str, message: &str) -> Proc {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("gatehouse.yaml");
        std::fs::write(&path, yaml).expect("write config");
        let mut p = Proc::start_with(subcommand, &path, message);
        p._dir = Some(dir);
        p
    }

    /// With a config file the caller keeps (restarts reuse it).
    pub fn start_with(subcommand: &str, path: &Path, message: &str) -> Proc {
        use std::io::BufRead;
        let mut child = std::process::Command::new(gatehouse_bin())
            .args([subcommand, "--config"])
            .arg(path)
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn gatehouse");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        let message = message.to_owned();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(mut l) = sink.lock() {
                    l.push(line.clone());
                }
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if v["message"] == message.as_str() {
                        if let Some(a) = v["address"]
                            .as_str()
                            .and_then(|a| a.parse::<SocketAddr>().ok())
                        {
                            let _ = tx.send(a);
                        }
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("process did not log its address");
        Proc {
            child,
            addr,
            config: path.to_owned(),
            lines,
            _dir: None,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM")
    }

    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(ok.success());
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A request with a JSON body (or none) and an optional bearer token.
pub fn json_req(
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&Value>,
) -> Request<ClientBody> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "authority");
    if let Some(t) = token {
        b = b.header("authorization", format!("Bearer {t}"));
    }
    let body = match body {
        Some(v) => {
            b = b.header("content-type", "application/json");
            Full::new(Bytes::from(v.to_string()))
                .map_err(|n| match n {})
                .boxed()
        }
        None => empty(),
    };
    b.body(body).expect("request")
}

/// A free port on 127.0.0.1, for a server whose address must be known
/// before it starts (written into another party's config) or that must
/// come back on the same address after a restart: bound once to check it
/// is free, then released.
///
/// Chosen below the kernel's ephemeral range
/// (`net.ipv4.ip_local_port_range`, 32768–60999 by default), which
/// outgoing connections take their source ports from. A port from
/// `bind(0)` is in that range, and between its release and the server's
/// bind any client connection (the test's own, a browser's, the OpenID
/// provider's) could take it: CI once failed with "Address already in
/// use" on such a port. Each call takes the next port from a counter, so
/// two tests of one process never get the same one; the start depends on
/// the process id, so consecutive test binaries start apart. Falls back
/// to `bind(0)` if the range is unknown or exhausted.
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU32;
    const LOW: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_low: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|n| n.parse().ok()))
        .unwrap_or(0);
    if ephemeral_low > LOW + 1_000 {
        let span = ephemeral_low - LOW;
        let start = (std::process::id().wrapping_mul(7_919)) % span;
        for _ in 0..span {
            let n = NEXT.fetch_add(1, Ordering::Relaxed);
            let port = LOW + (start + n) % span;
            if std::net::TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
                return port as u16;
            }
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Polls `f` every 20 ms until it returns true or `limit` passes; returns
/// how long it took.
pub async fn within<F, Fut>(limit: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// A real `redis-server` on 127.0.0.1 with AOF fsync'd on every write (the
/// durability the authority requires). `.ci/run` installs the binary.
pub struct RedisServer {
    pub port: u16,
    dir: PathBuf,
    child: Option<std::process::Child>,
}

impl RedisServer {
    /// A new server whose data lives in `dir` (a restart reuses it).
    pub fn start(dir: &Path) -> RedisServer {
        let mut r = RedisServer {
            port: free_port(),
            dir: dir.to_owned(),
            child: None,
        };
        r.restart();
        r
    }

    /// The server `.ci/run` started (`GATEHOUSE_TEST_REDIS_PORT`), or a
    /// new one. Tests on a shared server use their own key prefix.
    pub fn shared(dir: &Path) -> RedisServer {
        match std::env::var("GATEHOUSE_TEST_REDIS_PORT")
            .ok()
            .and_then(|p| p.parse().ok())
        {
            Some(port) => RedisServer {
                port,
                dir: dir.to_owned(),
                child: None,
            },
            None => RedisServer::start(dir),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) on the same port and data directory, and waits
    /// until it answers PING with its AOF loaded.
    pub fn restart(&mut self) {
        std::fs::create_dir_all(&self.dir).expect("redis dir");
        let child = std::process::Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port"])
            .arg(self.port.to_string())
            .arg("--dir")
            .arg(&self.dir)
            .args([
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
                "--save",
                "",
                "--daemonize",
                "no",
                "--loglevel",
                "warning",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server (installed by .ci/run: apt-get install redis-server)");
        self.child = Some(child);
        let start = std::time::Instant::now();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("redis-server exited: {status}");
            }
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                use std::io::{Read, Write};
                let mut buf = [0u8; 64];
                let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
                if s.write_all(b"PING\r\n").is_ok() {
                    if let Ok(n) = s.read(&mut buf) {
                        if buf[..n].starts_with(b"+PONG") {
                            return;
                        }
                    }
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "redis-server did not come up"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL: whatever Redis acknowledged must already be on disk.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

pub const ADMIN: &str = "test-admin-token-0123456789";
/// The feed's own credential (the admin token never reads the feed).
pub const FEED: &str = "test-feed-token-0123456789";

/// Writes `admin.token` and `feed.token` into `dir`, for an authority
/// config that names them (`admin_token`/`feed_token: { file: ... }`).
pub fn write_authority_tokens(dir: &Path) {
    std::fs::write(dir.join("admin.token"), ADMIN).expect("admin token");
    std::fs::write(dir.join("feed.token"), FEED).expect("feed token");
}

/// A gateway on a plain ephemeral port following the authority replicas
/// at `urls`, with a state file.
pub fn revocation_gateway_yaml(
    backend: SocketAddr,
    urls: &[String],
    state: &Path,
    extra: &str,
) -> String {
    let token = state.with_file_name("feed.token");
    std::fs::write(&token, FEED).expect("token");
    yaml::Config::gateway()
        .route(yaml::Route::to(backend))
        .revocation(yaml::Revocation::authority(urls, &token, state))
        .raw(extra)
        .yaml()
}

pub async fn status_of(gw: SocketAddr, token: &str) -> (StatusCode, String) {
    let a = send(
        gw,
        Proto::Plain,
        "localhost",
        get(Proto::Plain, "localhost", "/", Some(token), &[]),
    )
    .await;
    (
        a.status,
        a.json()["error_description"]
            .as_str()
            .unwrap_or("")
            .to_owned(),
    )
}

/// `GET /v1/feed` (a snapshot) with the feed token.
pub async fn feed_snapshot(authority: SocketAddr) -> Answer {
    send(
        authority,
        Proto::Plain,
        "authority",
        json_req("GET", "/v1/feed", Some(FEED), None),
    )
    .await
}

pub async fn admin(authority: SocketAddr, method: &str, path: &str, body: Option<Value>) -> Answer {
    send(
        authority,
        Proto::Plain,
        "authority",
        json_req(method, path, Some(ADMIN), body.as_ref()),
    )
    .await
}

pub fn token_with(f: impl FnOnce(&mut serde_json::Map<String, Value>)) -> String {
    let mut c = claims("someone");
    f(&mut c);
    mint_with(Algorithm::RS256, &c)
}

/// Asserts the token gets 401 at the gateway within a second, and returns
/// the description the client saw.
pub async fn refused_within_a_second(gw: SocketAddr, token: &str) -> String {
    let start = std::time::Instant::now();
    loop {
        let (s, d) = status_of(gw, token).await;
        if s == StatusCode::UNAUTHORIZED {
            return d;
        }
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "revoked token still accepted after 1 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One HTTP/1.1 request written as raw bytes (so the target and headers
/// are exactly what the test says), `Connection: close`; returns the
/// status and the whole answer.
pub async fn raw_request(addr: SocketAddr, head: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(head.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// A TCP relay to `target` that can be turned into a black hole: while
/// paused it accepts and holds connections and bytes but delivers nothing
/// either way (a network partition, not a refused connection).
pub struct Relay {
    pub addr: SocketAddr,
    paused: Arc<std::sync::atomic::AtomicBool>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind relay");
        let addr = listener.local_addr().expect("relay addr");
        let paused = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let p = paused.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let p = p.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::join!(pump(cr, sw, p.clone()), pump(sr, cw, p));
                });
            }
        });
        Relay { addr, paused }
    }

    pub fn pause(&self) {
        self.paused.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn resume(&self) {
        self.paused
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    paused: Arc<std::sync::atomic::AtomicBool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while paused.load(std::sync::atomic::Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
