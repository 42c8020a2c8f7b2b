//! The floor under gatehouse's proxy path: the same Rust HTTP stack with
//! nothing of gatehouse's on it. TLS (rustls, aws-lc), hyper's HTTP/1.1
//! server, hyper's client connections in a per-worker pool that takes a
//! connection back when its response body ends, one current-thread tokio
//! runtime per worker with an `SO_REUSEPORT` listener each, mimalloc: as
//! `gatehouse run` does, but no token check, no revocation set, no
//! header rewriting, no metrics, no logs, no timeouts.
//!
//! It answers what part of the CPU per request against HAProxy is the
//! stack's and what part is gatehouse's own work
//! (`benches/wrk/floor.sh`). It is a measuring tool, not a proxy: it
//! checks nothing and forwards everything.
//!
//! ```text
//! cargo build --release --features bench-floor --example hyper_floor
//! target/release/examples/hyper_floor LISTEN BACKEND CERT_PEM KEY_PEM [WORKERS]
//! ```

use std::cell::RefCell;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Error = Box<dyn std::error::Error + Send + Sync>;

thread_local! {
    /// This worker's idle backend connections.
    static POOL: RefCell<Vec<SendRequest<Incoming>>> = const { RefCell::new(Vec::new()) };
}

/// The backend's response body; gives its connection back at its end.
struct Back {
    body: Incoming,
    send: Option<SendRequest<Incoming>>,
}

impl Body for Back {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.body).poll_frame(cx);
        let done = match &polled {
            Poll::Ready(None) => true,
            Poll::Ready(Some(Ok(_))) => this.body.is_end_stream(),
            _ => false,
        };
        if done {
            if let Some(s) = this.send.take() {
                POOL.with(|p| p.borrow_mut().push(s));
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

async fn connection(backend: &str) -> Result<SendRequest<Incoming>, Error> {
    let stream = tokio::net::TcpStream::connect(backend).await?;
    stream.set_nodelay(true)?;
    let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(send)
}

async fn forward(
    req: http::Request<Incoming>,
    backend: Arc<str>,
) -> Result<http::Response<Back>, Error> {
    let mut send = loop {
        match POOL.with(|p| p.borrow_mut().pop()) {
            Some(s) if !s.is_closed() => break s,
            Some(_) => continue,
            None => break connection(&backend).await?,
        }
    };
    std::future::poll_fn(|cx| send.poll_ready(cx)).await?;
    let resp = send.send_request(req).await?;
    let (parts, body) = resp.into_parts();
    let send = if body.is_end_stream() {
        POOL.with(|p| p.borrow_mut().push(send));
        None
    } else {
        Some(send)
    };
    Ok(http::Response::from_parts(parts, Back { body, send }))
}

fn listener(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    tokio::net::TcpListener::from_std(s.into())
}

fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().collect();
    let [_, listen, backend, cert, key, rest @ ..] = args.as_slice() else {
        return Err("usage: hyper_floor LISTEN BACKEND CERT_PEM KEY_PEM [WORKERS]".into());
    };
    let workers: usize = match rest.first() {
        Some(n) => n.parse()?,
        None => std::thread::available_parallelism()?.get(),
    };
    let addr: std::net::SocketAddr = listen.parse()?;
    let certs = CertificateDer::pem_file_iter(cert)?.collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_file(key)?;
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let backend: Arc<str> = Arc::from(backend.as_str());
    let mut threads = Vec::new();
    for _ in 0..workers {
        let (acceptor, backend) = (acceptor.clone(), backend.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        threads.push(std::thread::spawn(move || {
            rt.block_on(async move {
                let l = match listener(addr) {
                    Ok(l) => l,
                    Err(e) => return eprintln!("listen {addr}: {e}"),
                };
                loop {
                    let Ok((stream, _)) = l.accept().await else {
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let (acceptor, backend) = (acceptor.clone(), backend.clone());
                    tokio::spawn(async move {
                        let Ok(tls) = acceptor.accept(stream).await else {
                            return;
                        };
                        let svc =
                            hyper::service::service_fn(move |req| forward(req, backend.clone()));
                        let _ = hyper::server::conn::http1::Builder::new()
                            .serve_connection(TokioIo::new(tls), svc)
                            .await;
                    });
                }
            });
        }));
    }
    for t in threads {
        let _ = t.join();
    }
    Ok(())
}
