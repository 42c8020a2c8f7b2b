//! `gatehouse demo`: the whole product on one machine in one command — an
//! echo backend, a gateway with TLS (the dev certificate) and an embedded
//! authority — then a token, and the curl commands that show a request
//! going through, the token being revoked, and the same request refused.
//! The demo runs its own sequence first and reports what it saw, so what
//! it prints is known to work.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

pub struct DemoArgs {
    pub gateway_port: u16,
    pub authority_port: u16,
    pub backend_port: u16,
    /// Where config/dev lives (the dev keys, certificate and admin token).
    pub dev_dir: PathBuf,
    /// Run the sequence, report, and exit instead of serving until Ctrl-C.
    pub check_only: bool,
}

/// Runs the demo; the result is whether every step behaved as printed.
pub async fn run(a: DemoArgs) -> anyhow::Result<bool> {
    let dev = a.dev_dir.canonicalize().with_context(|| {
        format!(
            "dev key directory {} (run from the repository root or pass --dev-dir)",
            a.dev_dir.display()
        )
    })?;
    let work = tempfile_dir()?;
    let backend = start_echo_backend(a.backend_port).await?;
    let yaml = demo_config(&dev, &work, a.gateway_port, a.authority_port, backend);
    let cfg_path = work.join("demo.yaml");
    std::fs::write(&cfg_path, yaml).with_context(|| format!("writing {}", cfg_path.display()))?;
    let loaded = crate::config::load(&cfg_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let gw = crate::server::start(&loaded).await?;
    let gw_addr = gw.addrs()[0];

    let admin = std::fs::read_to_string(dev.join("admin.token"))?
        .trim()
        .to_owned();
    let ca = dev.join("ca.crt.pem");
    let url = format!("https://localhost:{}/hello", gw_addr.port());
    let authority = format!("http://127.0.0.1:{}", a.authority_port);

    // First the whole sequence with a token of its own, over real TLS, so
    // what is printed below is known to work on this machine.
    let client = DemoClient::new(&ca)?;
    let (probe, probe_jti) = demo_token(&dev)?;
    let first = client.get(&url, &probe).await?;
    let revoked = client.revoke(a.authority_port, &admin, &probe_jti).await?;
    let mut last = 0;
    for _ in 0..50 {
        last = client.get(&url, &probe).await?;
        if last == 401 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ok = first == 200 && revoked == 201 && last == 401;

    let (token, jti) = demo_token(&dev)?;
    let get = format!(
        "curl -sS -i --cacert {} -H \"Authorization: Bearer $TOKEN\" {url}",
        ca.display()
    );
    println!(
        "gatehouse demo: an echo backend on 127.0.0.1:{}, the gateway on https://localhost:{} (dev certificate), its authority on {authority}.",
        backend.port(),
        gw_addr.port()
    );
    println!(
        "self-check (its own token): request -> {first}, revoke -> {revoked}, same request -> {last}: {}",
        if ok { "as expected" } else { "NOT as expected" }
    );
    println!();
    println!("# A token for demo-user (RS256, 1 hour):");
    println!("export TOKEN={token}");
    println!(
        "# 1. The request goes through: 200, and the backend echoes the identity headers it got"
    );
    println!("{get}");
    println!("# 2. Revoke the token at the authority: 201");
    println!(
        "curl -sS -i -X POST -H 'Authorization: Bearer {admin}' -d '{{\"jti\": \"{jti}\", \"reason\": \"forced_logout\"}}' {authority}/v1/revocations"
    );
    println!("# 3. The same request is refused: 401, error=\"invalid_token\", \"token revoked\"");
    println!("{get}");
    println!();
    if !a.check_only {
        println!("# `gatehouse token` mints more tokens for the same keys. Ctrl-C stops the demo.");
        gatehouse_core::listener::shutdown_signal().await;
    }
    gw.shutdown(Duration::from_secs(2)).await;
    let _ = std::fs::remove_dir_all(&work);
    Ok(ok)
}

/// A fresh token for demo-user with its own `jti`.
fn demo_token(dev: &Path) -> anyhow::Result<(String, String)> {
    let jti = gatehouse_core::ids::random_id();
    let token = crate::token::mint(&crate::token::MintRequest {
        key_path: &dev.join("rs256.key.pem"),
        alg: jsonwebtoken::Algorithm::RS256,
        kid: Some("dev-rs256"),
        issuer: "https://dev.gatehouse.local",
        audience: "demo-app",
        subject: "demo-user",
        ttl: Duration::from_secs(3600),
        sid: None,
        jti: Some(&jti),
        scope: None,
        claims: &["email=demo-user@example.com".to_owned()],
    })?;
    Ok((token, jti))
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "gatehouse-demo-{}",
        gatehouse_core::ids::random_id()
    ));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn demo_config(
    dev: &Path,
    work: &Path,
    gw_port: u16,
    authority_port: u16,
    backend: SocketAddr,
) -> String {
    let d = |n: &str| dev.join(n).display().to_string();
    format!(
        r#"
listeners:
  - name: demo-tls
    address: 127.0.0.1:{gw_port}
    tls:
      certificates:
        - {{ cert: {cert}, key: {key} }}
issuers:
  - name: dev
    issuer: https://dev.gatehouse.local
    audiences: [demo-app]
    algorithms: [RS256, ES256, EdDSA]
    jwks: {{ file: {jwks} }}
    max_token_lifetime: 1h
routes:
  - name: echo
    backends: [http://{backend}]
    identity_headers:
      - {{ claim: sub, header: X-Auth-Subject }}
      - {{ claim: email, header: X-Auth-Email }}
revocation:
  embedded:
    listen: 127.0.0.1:{authority_port}
    path: {store}
    admin_token: {{ file: {admin} }}
  state_file: {state}
logging:
  level: warn
"#,
        cert = d("server.crt.pem"),
        key = d("server.key.pem"),
        jwks = d("jwks.json"),
        admin = d("admin.token"),
        store = work.join("authority.redb").display(),
        state = work.join("gateway.state").display(),
    )
}

/// Answers every request with what it received: method, path and the
/// identity headers, as JSON.
async fn start_echo_backend(port: u16) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(("127.0.0.1", port))
        .await
        .with_context(|| format!("echo backend cannot listen on 127.0.0.1:{port}"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let svc = service_fn(|req: Request<Incoming>| async move {
                    let h = |n: &str| {
                        req.headers()
                            .get(n)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or("")
                            .to_owned()
                    };
                    let body = serde_json::json!({
                        "method": req.method().as_str(),
                        "path": req.uri().path(),
                        "x-auth-subject": h("x-auth-subject"),
                        "x-auth-email": h("x-auth-email"),
                        "x-forwarded-for": h("x-forwarded-for"),
                    });
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(format!("{body}\n")))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Ok(addr)
}

struct DemoClient {
    https: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<hyper_util::client::legacy::connect::HttpConnector>,
        Full<Bytes>,
    >,
}

impl DemoClient {
    fn new(ca: &Path) -> anyhow::Result<Self> {
        Ok(DemoClient {
            https: crate::httpclient::build_for(Some(ca), Duration::from_secs(5))?,
        })
    }

    async fn get(&self, url: &str, token: &str) -> anyhow::Result<u16> {
        let req = Request::get(url)
            .header("authorization", format!("Bearer {token}"))
            .body(Full::new(Bytes::new()))?;
        let resp = self.https.request(req).await.context("demo request")?;
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        Ok(status)
    }

    async fn revoke(&self, port: u16, admin: &str, jti: &str) -> anyhow::Result<u16> {
        let body = serde_json::json!({"jti": jti, "reason": "forced_logout"}).to_string();
        let req = Request::post(format!("http://127.0.0.1:{port}/v1/revocations"))
            .header("authorization", format!("Bearer {admin}"))
            .body(Full::new(Bytes::from(body)))?;
        let resp = self.https.request(req).await.context("demo revocation")?;
        let status = resp.status().as_u16();
        let _ = resp.into_body().collect().await;
        Ok(status)
    }
}
