//! Faults around a gateway process: backends that reset, hang up or stall,
//! HTTP/2 rapid reset and header floods. The gateway must answer 502/504,
//! stay healthy, and leak neither connections (file descriptors) nor tasks.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use gatehouse_test_support::*;
use http::StatusCode;
use jsonwebtoken::Algorithm;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A backend that misbehaves by path: `/reset` resets the connection
/// before answering, `/reset-mid-body` after the headers and part of the
/// body, `/hangup` closes without a word, `/slow` answers after 3 s,
/// `/http10` answers as an HTTP/1.0 server, and anything else gets a
/// small 200.
async fn faulty_backend() -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let line = String::from_utf8_lossy(&buf);
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_owned();
                let reset = |s: &tokio::net::TcpStream| {
                    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
                };
                match path.as_str() {
                    "/reset" => reset(&s),
                    "/reset-mid-body" => {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n")
                            .await;
                        let _ = s.write_all(&[b'x'; 1000]).await;
                        let _ = s.flush().await;
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        reset(&s);
                    }
                    "/hangup" => {}
                    "/http10" => {
                        // An HTTP/1.0 server (Python's http.server): its
                        // version on the status line, closing after.
                        let _ = s
                            .write_all(b"HTTP/1.0 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    }
                    "/slow" => {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                            .await;
                    }
                    _ => {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                            .await;
                    }
                }
            });
        }
    });
    addr
}

fn config(backend: SocketAddr) -> String {
    yaml::Config::gateway()
        .issuers(vec![yaml::Issuer::test().with("algorithms", "[RS256]")])
        .route(yaml::Route::to(backend).with("timeout", "1s"))
        .admin()
        .raw("workers: 2")
        .yaml()
}

/// The address a process logged with `message`.
async fn logged_addr(p: &Proc, message: &str) -> SocketAddr {
    for _ in 0..200 {
        let found = p.lines.lock().ok().and_then(|lines| {
            lines.iter().find_map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                (v["message"] == message)
                    .then(|| v["address"].as_str()?.parse().ok())
                    .flatten()
            })
        });
        if let Some(a) = found {
            return a;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no `{message}` line");
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

async fn gauge(admin: SocketAddr, name: &str) -> i64 {
    let a = send(
        admin,
        Proto::Plain,
        "admin",
        get(Proto::Plain, "admin", "/metrics", None, &[]),
    )
    .await;
    String::from_utf8_lossy(&a.body)
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

/// A GET over plain HTTP/1.1 on its own connection; the status and
/// whether the whole body arrived.
async fn fetch(addr: SocketAddr, path: &str, token: &str) -> (u16, Result<usize, String>) {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", "app")
        .header("authorization", format!("Bearer {token}"))
        .body(http_body_util::Empty::<Bytes>::new())
        .expect("request");
    match send.send_request(req).await {
        Ok(r) => {
            let status = r.status().as_u16();
            let body = r
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes().len())
                .map_err(|e| e.to_string());
            (status, body)
        }
        Err(e) => (0, Err(e.to_string())),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_faults_get_502_504_and_leak_no_connections_or_tasks() {
    crypto();
    let backend = faulty_backend().await;
    let gw = Proc::start("run", &config(backend), "listening");
    let admin = logged_addr(&gw, "admin listening").await;
    let token = mint(Algorithm::RS256, "victim");
    // Warm up (worker runtimes, pools, the admin connection path).
    assert_eq!(fetch(gw.addr, "/ok", &token).await.0, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let fds_before = open_fds(gw.pid());
    let tasks_before = gauge(admin, "gatehouse_tasks_alive").await;

    for round in 0..5 {
        let mut batch = Vec::new();
        for path in ["/reset", "/hangup", "/slow", "/reset-mid-body", "/ok"] {
            for _ in 0..8 {
                let (token, addr) = (token.clone(), gw.addr);
                batch.push(tokio::spawn(async move {
                    (path, fetch(addr, path, &token).await)
                }));
            }
        }
        for t in batch {
            let (path, (status, body)) = t.await.expect("task");
            match path {
                "/reset" | "/hangup" => assert_eq!(status, 502, "{path} round {round}"),
                "/slow" => assert_eq!(status, 504, "{path} round {round}"),
                // Headers were already forwarded: the client must see the
                // body cut short, never a complete response.
                "/reset-mid-body" => assert!(
                    status == 502
                        || (status == 200 && body.as_ref().map_or(true, |n| *n < 100_000)),
                    "{path}: {status} {body:?}"
                ),
                _ => assert_eq!((status, body), (200, Ok(2)), "{path}"),
            }
        }
    }
    // Healthy, and back to where it started once the dust settles.
    let health = send(
        admin,
        Proto::Plain,
        "admin",
        get(Proto::Plain, "admin", "/healthz", None, &[]),
    )
    .await;
    assert_eq!(health.status, StatusCode::OK);
    let settled = within(Duration::from_secs(5), || async {
        open_fds(gw.pid()) <= fds_before
            && gauge(admin, "gatehouse_tasks_alive").await <= tasks_before
    })
    .await;
    assert!(
        settled.is_some(),
        "leak: fds {} -> {}, tasks {} -> {}",
        fds_before,
        open_fds(gw.pid()),
        tasks_before,
        gauge(admin, "gatehouse_tasks_alive").await
    );
}

async fn h2_client(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (client, conn) = h2::client::handshake(stream).await.expect("h2 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

fn h2_get(token: &str) -> http::Request<()> {
    http::Request::get("http://app/")
        .header("authorization", format!("Bearer {token}"))
        .body(())
        .expect("request")
}

/// CVE-2023-44487: open streams and reset them at once, as fast as the
/// connection allows. The gateway must cut the connection off, not work
/// through every cancelled request, and stay healthy for everyone else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_is_cut_off_and_the_gateway_stays_healthy() {
    crypto();
    let backend = Backend::start().await;
    let gw = Proc::start("run", &config(backend.addr), "listening");
    let admin = logged_addr(&gw, "admin listening").await;
    let token = mint(Algorithm::RS256, "victim");
    {
        let mut warm = h2_client(gw.addr).await;
        let (resp, _) = warm.send_request(h2_get(&token), true).expect("request");
        assert_eq!(resp.await.expect("response").status(), 200);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let tasks_before = gauge(admin, "gatehouse_tasks_alive").await;
    let hits_before = backend.hits();
    let mut client = h2_client(gw.addr).await;
    let mut sent = 0;
    let mut cut_off = false;
    for _ in 0..20_000 {
        client = match client.ready().await {
            Ok(c) => c,
            Err(_) => {
                cut_off = true;
                break;
            }
        };
        match client.send_request(h2_get(&token), false) {
            Ok((_resp, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                sent += 1;
            }
            Err(_) => {
                cut_off = true;
                break;
            }
        }
    }
    assert!(
        cut_off,
        "20,000 reset streams were all accepted on one connection"
    );
    let forwarded = backend.hits() - hits_before;
    assert!(
        forwarded < sent / 2,
        "cancelled requests were forwarded: {forwarded} of {sent}"
    );
    // Everyone else is still served.
    let mut other = h2_client(gw.addr).await;
    let (resp, _) = other.send_request(h2_get(&token), true).expect("request");
    assert_eq!(resp.await.expect("response").status(), 200);
    drop(other);
    // What may stay: a backend connection opened for a request that was
    // then cancelled goes idle into its worker's pool (a task each, a few
    // per worker at most, closed by the pool's idle timeout). Nothing per
    // reset stream: thousands of them must not leave more than that.
    let slack = 2 * 2 + forwarded as i64;
    let settled = within(Duration::from_secs(5), || async {
        gauge(admin, "gatehouse_tasks_alive").await <= tasks_before + slack
    })
    .await;
    eprintln!(
        "rapid reset: {sent} streams before the cut-off, {forwarded} forwarded, tasks {tasks_before} -> {}, open connections {}",
        gauge(admin, "gatehouse_tasks_alive").await,
        gauge(admin, "gatehouse_open_connections").await
    );
    assert!(settled.is_some(), "tasks left behind by the reset streams");
}

/// A request whose header block is far over the limit (an HPACK/
/// CONTINUATION flood): refused before any of it is buffered whole or
/// forwarded, and the gateway keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_header_flood_is_refused() {
    crypto();
    let backend = Backend::start().await;
    let gw = Proc::start("run", &config(backend.addr), "listening");
    let token = mint(Algorithm::RS256, "victim");
    let client = h2_client(gw.addr).await;
    let mut req = h2_get(&token);
    for i in 0..5_000 {
        req.headers_mut().append(
            http::HeaderName::from_bytes(format!("x-flood-{i}").as_bytes()).expect("name"),
            http::HeaderValue::from_static("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"),
        );
    }
    let outcome = match client.ready().await {
        Ok(mut c) => match c.send_request(req, true) {
            Ok((resp, _)) => resp
                .await
                .map(|r| r.status().as_u16())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
        Err(e) => Err(e.to_string()),
    };
    // 431, or the stream/connection refused outright: never a 2xx.
    assert!(
        matches!(outcome, Ok(431) | Err(_)),
        "header flood answered {outcome:?}"
    );
    assert_eq!(backend.hits(), 0);
    let mut other = h2_client(gw.addr).await;
    let (resp, _) = other.send_request(h2_get(&token), true).expect("request");
    assert_eq!(resp.await.expect("response").status(), 200);
}

/// RFC 9110 §6.2: an intermediary sends its own HTTP version. An HTTP/1.0
/// backend's status line reached HTTP/1.1 clients as `HTTP/1.0 200 OK`,
/// and a client closed its keep-alive connection after every answer.
#[tokio::test]
async fn an_http10_backends_answer_reaches_an_http11_client_as_http11_on_a_kept_connection() {
    crypto();
    let backend = faulty_backend().await;
    let gw = Proc::start("run", &config(backend), "listening");
    let token = mint(Algorithm::RS256, "victim");
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    for round in 0..2 {
        let head = format!(
            "GET /http10 HTTP/1.1\r\nHost: app.test\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        s.write_all(head.as_bytes()).await.expect("write");
        let mut got = Vec::new();
        let mut chunk = [0u8; 4096];
        while !got.ends_with(b"\r\n\r\nok") && !got.ends_with(b"\r\n2\r\nok\r\n0\r\n\r\n") {
            match tokio::time::timeout(Duration::from_secs(5), s.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
                other => panic!(
                    "round {round}: connection ended ({other:?}) after {:?}",
                    String::from_utf8_lossy(&got)
                ),
            }
        }
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "round {round}: {text}");
        assert!(
            !text.to_ascii_lowercase().contains("connection: close"),
            "round {round}: {text}"
        );
    }
}
