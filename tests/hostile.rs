//! Hostile HTTP on the wire (raw sockets): smuggling shapes, oversized and
//! slow headers. What must hold: nothing unauthenticated reaches the
//! backend, and the gateway answers or closes instead of hanging.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use gatehouse_test_support::*;
use jsonwebtoken::Algorithm;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn config(backend: SocketAddr) -> String {
    standard_config(backend, &jwks_file()).replace(
        "logging:\n  level: warn\n",
        "limits:\n  header_read_timeout: 1s\n  max_header_bytes: 16384\nlogging:\n  level: warn\n",
    )
}

/// Writes raw bytes, then reads until the peer closes or 3 s pass.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn statuses(resp: &str) -> Vec<&str> {
    resp.match_indices("HTTP/1.1 ")
        .map(|(i, _)| &resp[i + 9..i + 12])
        .collect()
}

#[tokio::test]
async fn smuggled_requests_never_reach_the_backend_without_a_token() {
    let backend = Backend::start().await;
    let (gw, _dir) = start_gateway(&config(backend.addr)).await;
    let addr = gw.addrs()[1];
    let token = mint(Algorithm::RS256, "smuggler");
    let smuggled = "GET /smuggled HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let cases = [
        // CL.TE: a front end using Content-Length would pass the smuggled
        // request along as body; we must not run it as a request.
        format!(
            "POST / HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}",
            5 + smuggled.len()
        ),
        // TE.CL
        format!(
            "POST / HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n{:x}\r\n{smuggled}\r\n0\r\n\r\n",
            smuggled.len()
        ),
        // Two different Content-Length values.
        format!("POST / HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\n{smuggled}"),
        // Obsolete line folding hiding a second header.
        format!("GET / HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nX-Foo: a\r\n Transfer-Encoding: chunked\r\n\r\n"),
        // Bare LF line endings with a smuggled request behind.
        format!("GET / HTTP/1.1\nHost: localhost\nAuthorization: Bearer {token}\n\n{smuggled}"),
    ];
    for (i, case) in cases.iter().enumerate() {
        let resp = raw(addr, case.as_bytes()).await;
        // Every request that does reach the backend carries our identity:
        // none is the token-less smuggled one.
        if let Some(seen) = backend.last.lock().expect("lock").clone() {
            assert_ne!(
                seen.path, "/smuggled",
                "case {i} smuggled a request: {resp}"
            );
        }
        let st = statuses(&resp);
        assert!(
            st.iter().filter(|s| **s == "200").count() <= 1,
            "case {i}: at most the one authenticated request may succeed: {resp}"
        );
        assert!(
            !st.iter().any(|s| s.starts_with('5')),
            "case {i}: no server error: {resp}"
        );
    }
    // The smuggled request on its own, without a token, is refused.
    let resp = raw(addr, smuggled.as_bytes()).await;
    assert_eq!(statuses(&resp), vec!["401"]);
}

#[tokio::test]
async fn oversized_and_too_many_headers_are_refused() {
    let backend = Backend::start().await;
    let (gw, _dir) = start_gateway(&config(backend.addr)).await;
    let addr = gw.addrs()[1];
    let big = format!(
        "GET / HTTP/1.1\r\nHost: localhost\r\nX-Big: {}\r\n\r\n",
        "a".repeat(40_000)
    );
    let resp = raw(addr, big.as_bytes()).await;
    assert!(
        statuses(&resp)
            .first()
            .is_none_or(|s| *s == "431" || *s == "400"),
        "{resp}"
    );
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let resp = raw(
        addr,
        format!("GET / HTTP/1.1\r\nHost: localhost\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(
        statuses(&resp)
            .first()
            .is_none_or(|s| *s == "431" || *s == "400"),
        "{resp}"
    );
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn slowloris_headers_are_cut_off_by_the_header_timeout() {
    let backend = Backend::start().await;
    let (gw, _dir) = start_gateway(&config(backend.addr)).await;
    let mut s = TcpStream::connect(gw.addrs()[1]).await.expect("connect");
    let head = b"GET / HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
    let bytes = head.iter().copied().chain(std::iter::repeat(b'a'));
    cut_off_near_the_header_timeout(&mut s, bytes, "a client sending one byte at a time").await;
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn absolute_form_and_connect_requests_are_judged_like_any_other() {
    let backend = Backend::start().await;
    let (gw, _dir) = start_gateway(&config(backend.addr)).await;
    let addr = gw.addrs()[1];
    // Absolute-form naming a public path on the public route.
    let resp = raw(
        addr,
        b"GET http://localhost/health HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&resp), vec!["200"], "{resp}");
    // Absolute-form to a protected path without a token.
    let resp = raw(
        addr,
        b"GET http://localhost/admin HTTP/1.1\r\nHost: localhost\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&resp), vec!["401"], "{resp}");
    // CONNECT is never a tunnel through the gateway.
    let resp = raw(
        addr,
        b"CONNECT 127.0.0.1:22 HTTP/1.1\r\nHost: 127.0.0.1:22\r\n\r\n",
    )
    .await;
    let st = statuses(&resp);
    assert!(
        st.first()
            .is_some_and(|s| *s == "400" || *s == "401" || *s == "404"),
        "{resp}"
    );
    assert_eq!(
        backend.hits(),
        1,
        "only the public request reached the backend"
    );
}

/// A body trickled in a byte at a time: the request does not hold the
/// backend (and the gateway) for ever. When the route's `timeout` (1 s
/// here) runs out with the body still arriving, the time went on the
/// client's slowness: 408, not the 504 of a slow backend.
#[tokio::test]
async fn a_body_still_arriving_when_the_route_timeout_runs_out_is_answered_408() {
    let backend = Backend::start().await;
    let (gw, _dir) = start_gateway(&config(backend.addr)).await;
    let token = mint(Algorithm::RS256, "slow-body");
    let mut s = TcpStream::connect(gw.addrs()[1]).await.expect("connect");
    let head = format!(
        "POST /trickled-body HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Length: 1000\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("write");
    let start = Instant::now();
    let mut answer = Vec::new();
    while start.elapsed() < Duration::from_secs(6) {
        if s.write_all(b"x").await.is_err() {
            break;
        }
        let mut buf = [0u8; 1024];
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                break;
            }
            Err(_) => {}
        }
    }
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "slow body answered {answer:?} after {:?}",
        start.elapsed()
    );
    assert!(start.elapsed() < Duration::from_secs(4));
    assert!(
        answer.to_ascii_lowercase().contains("connection: close"),
        "{answer}"
    );
}

/// A backend written by hand, for what the test backend does not do: for
/// `/early…` it answers at once, before the body, then keeps reading that
/// body; for `/after-body…` it reads the whole body (`Content-Length`),
/// then takes 1.5 s to answer; anything else is answered "ok" at once.
/// Keeps its connections alive; returns its address and a count of the
/// connections it accepted.
async fn hand_written_backend() -> (SocketAddr, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let conns = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = conns.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    let head_end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
                    buf.drain(..head_end);
                    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                    let length: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if path.starts_with("/early") {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nearly")
                            .await;
                    }
                    while buf.len() < length {
                        let mut chunk = [0u8; 4096];
                        match s.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.drain(..length);
                    if path.starts_with("/after-body") {
                        tokio::time::sleep(Duration::from_millis(1500)).await;
                    }
                    if !path.starts_with("/early") {
                        let _ = s
                            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                            .await;
                    }
                }
            });
        }
    });
    (addr, conns)
}

/// A backend that answers before the request body has all come (an upload
/// refused early, a redirect): its connection stays busy until the client
/// finishes that body. It went back to the pool at the answer, and the
/// next request, another client's, waited on it until its route timeout
/// (504), for as long as the first client kept its body trickling.
#[tokio::test]
async fn a_backend_answering_before_the_body_ends_does_not_make_the_next_client_wait() {
    let (backend, _conns) = hand_written_backend().await;
    let (gw, _dir) = start_gateway(&config(backend)).await;
    let token = mint(Algorithm::RS256, "early");
    // HTTP/2 (prior knowledge): POST /early with a body left open, one
    // byte of DATA every 200 ms.
    let mut block = vec![0x83, 0x86, 0x44, 6];
    block.extend_from_slice(b"/early");
    block.extend_from_slice(&[0x41, 9]);
    block.extend_from_slice(b"localhost");
    block.extend_from_slice(&[0x0f, 0x08]); // authorization (static 23), literal
    let value = format!("Bearer {token}");
    let mut len = value.len() - 127;
    block.push(0x7f);
    while len >= 128 {
        block.push((len % 128) as u8 | 0x80);
        len /= 128;
    }
    block.push(len as u8);
    block.extend_from_slice(value.as_bytes());
    let mut hello = H2_PREFACE.to_vec();
    hello.extend(h2_frame(0x4, 0, 0, &[]));
    hello.extend(h2_frame(0x1, 0x4, 1, &block)); // END_HEADERS, body to come
    hello.extend(h2_frame(0x0, 0, 1, b"xx"));
    let s = TcpStream::connect(gw.addrs()[1]).await.expect("connect");
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(&hello).await.expect("write");
    let drain = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = rd.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    });
    let trickle = tokio::spawn(async move {
        for _ in 0..30 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if wr.write_all(&h2_frame(0x0, 0, 1, b"x")).await.is_err() {
                return;
            }
        }
    });
    // The backend has answered the POST; its body goes on trickling while
    // another client asks.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let other = mint(Algorithm::RS256, "next-client");
    let (status, text) = raw_request(
        gw.addrs()[1],
        &format!("GET /next HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {other}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.ends_with("ok"), "{text}");
    trickle.abort();
    drain.abort();
}

/// A route's `timeout` is the backend's time to answer: a client whose
/// upload took most of it (1.5 s of a 2 s timeout, a byte every half
/// second) leaves the backend its whole 2 s from the body's end. The
/// backend takes 1.5 s after the body; before, that was a 504 and counted
/// as a backend timeout.
#[tokio::test]
async fn a_slow_upload_does_not_use_up_the_backends_time_to_answer() {
    let (backend, _conns) = hand_written_backend().await;
    let cfg = config(backend).replace("    timeout: 1s\n", "    timeout: 2s\n");
    let (gw, _dir) = start_gateway(&cfg).await;
    let token = mint(Algorithm::RS256, "slow-upload");
    let mut s = TcpStream::connect(gw.addrs()[1]).await.expect("connect");
    let head = format!(
        "POST /after-body HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Length: 3\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("write");
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        s.write_all(b"x").await.expect("write a body byte");
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

fn body_timeout_config(backend: SocketAddr) -> String {
    config(backend).replace(
        "  header_read_timeout: 1s\n",
        "  header_read_timeout: 1s\n  body_read_timeout: 1s\n",
    )
}

/// A client that sends part of its body and stops: the route `/upload`
/// has the default 60 s timeout, but `limits.body_read_timeout` (1 s
/// here) answers 408 and closes the connection, as nginx's
/// `client_body_timeout` does, instead of holding the request and its
/// backend connection for a minute and then blaming the backend (504).
#[tokio::test]
async fn a_request_body_that_stops_arriving_is_answered_408_at_the_body_read_timeout() {
    let backend = Backend::start().await;
    let (gw, _dir) = start_gateway(&body_timeout_config(backend.addr)).await;
    let token = mint(Algorithm::RS256, "stalled-body");
    let mut s = TcpStream::connect(gw.addrs()[1]).await.expect("connect");
    let head = format!(
        "POST /upload/stalled HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Length: 1000\r\n\r\n0123456789"
    );
    s.write_all(head.as_bytes()).await.expect("write");
    let start = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(
        read.is_ok(),
        "the connection was still open after 10 s: {answer:?}"
    );
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a stalled body was answered {answer:?} after {:?}",
        start.elapsed()
    );
    assert!(
        start.elapsed() >= Duration::from_millis(900),
        "answered before the body read timeout: {:?}",
        start.elapsed()
    );
    assert!(answer.contains("request_timeout"), "{answer}");
}

/// The body read timeout is the wait between two reads, not a limit on the
/// whole body: a body arriving a byte every 0.4 s for over 3 s, against a
/// 1 s `body_read_timeout`, reaches the backend whole.
#[tokio::test]
async fn a_slow_but_steady_request_body_reaches_the_backend_whole() {
    let backend = Backend::start().await;
    let (gw, _dir) = start_gateway(&body_timeout_config(backend.addr)).await;
    let token = mint(Algorithm::RS256, "steady-body");
    let mut s = TcpStream::connect(gw.addrs()[1]).await.expect("connect");
    let head = format!(
        "POST /upload/steady HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\nContent-Length: 8\r\nConnection: close\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.expect("write");
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        s.write_all(b"x").await.expect("write a body byte");
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.ends_with("received 8 bytes"), "{answer}");
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_at_the_header_timeout() {
    let backend = Backend::start().await;
    let (gw, _dir) = start_gateway(&config(backend.addr)).await;
    let mut s = TcpStream::connect(gw.addrs()[1]).await.expect("connect");
    let start = Instant::now();
    let mut buf = [0u8; 64];
    // The idle timeout is 60 s; the header read timeout here is 1 s.
    let read = tokio::time::timeout(Duration::from_secs(20), s.read(&mut buf)).await;
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "a silent connection was still open after 20 s: {read:?}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "closed after {:?}, not near the 1 s header timeout",
        start.elapsed()
    );
}

#[tokio::test]
async fn a_request_sent_before_the_client_half_closes_is_still_answered() {
    let backend = Backend::start().await;
    let (gw, _dir) = start_gateway(&config(backend.addr)).await;
    let mut s = TcpStream::connect(gw.addrs()[1]).await.expect("connect");
    s.write_all(b"GET /public/hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    s.shutdown().await.expect("half-close");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out))
        .await
        .expect("answered, then closed")
        .expect("read");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert_eq!(backend.hits(), 1);
}

/// Reads one HTTP/1.1 response (head and a `Content-Length` body) from a
/// kept-alive connection; `None` if the gateway closed it first.
async fn one_response(s: &mut TcpStream) -> Option<String> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap_or(0));
            if out.len() >= end + 4 + len {
                return Some(String::from_utf8_lossy(&out).into_owned());
            }
        }
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return None,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Waits up to `limit` for the gateway to close `s`; how long it took.
async fn closed_within(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(limit, s.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => Some(start.elapsed()),
        _ => None,
    }
}

#[tokio::test]
async fn a_kept_alive_connection_quiet_longer_than_the_header_timeout_is_served_until_the_idle_timeout(
) {
    // An ingress keeps a pool of connections to the gateway: a lull longer
    // than the 1 s header timeout must not tear them down; the 4 s idle
    // timeout does.
    let backend = Backend::start().await;
    let cfg = config(backend.addr).replace(
        "header_read_timeout: 1s\n",
        "header_read_timeout: 1s\n  idle_timeout: 4s\n",
    );
    let (gw, _dir) = start_gateway(&cfg).await;
    let mut s = TcpStream::connect(gw.addrs()[1]).await.expect("connect");
    let req = b"GET /public/hello HTTP/1.1\r\nHost: localhost\r\n\r\n";
    s.write_all(req).await.expect("write");
    let first = one_response(&mut s).await.expect("first answer");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    s.write_all(req).await.expect("second request");
    let second = one_response(&mut s)
        .await
        .expect("the connection was closed while waiting between requests");
    assert!(second.starts_with("HTTP/1.1 200"), "{second}");
    assert_eq!(backend.hits(), 2);
    let took = closed_within(&mut s, Duration::from_secs(15))
        .await
        .expect("still open 15 s after the last request (idle timeout 4 s)");
    assert!(
        took >= Duration::from_millis(3500),
        "closed after {took:?} of quiet, before the 4 s idle timeout"
    );
}

#[tokio::test]
async fn a_slow_second_head_on_a_kept_alive_connection_is_cut_off_by_the_header_timeout() {
    let backend = Backend::start().await;
    let (gw, _dir) = start_gateway(&config(backend.addr)).await;
    let mut s = TcpStream::connect(gw.addrs()[1]).await.expect("connect");
    s.write_all(b"GET /public/hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let first = one_response(&mut s).await.expect("first answer");
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    let head = b"GET /public/hello HTTP/1.1\r\nHost: localhost\r\nX-Slow: ";
    let bytes = head.iter().copied().chain(std::iter::repeat(b'a'));
    cut_off_near_the_header_timeout(&mut s, bytes, "a second head sent one byte at a time").await;
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn an_http2_connection_quiet_between_requests_is_not_cut_off_by_the_header_timeout() {
    let backend = Backend::start().await;
    let (gw, _dir) = start_gateway(&config(backend.addr)).await;
    let tcp = TcpStream::connect(gw.addrs()[1]).await.expect("connect");
    // HTTP/2 with prior knowledge (RFC 9113 §3.3) on the plain listener.
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    for round in 0..2 {
        if round == 1 {
            tokio::time::sleep(Duration::from_millis(2500)).await;
        }
        let req = hyper::Request::get("http://localhost/public/hello")
            .body(empty())
            .expect("request");
        let resp = h2
            .send_request(req)
            .await
            .unwrap_or_else(|e| panic!("request {round} on the same connection: {e}"));
        assert_eq!(resp.status(), 200, "request {round}");
    }
    assert_eq!(backend.hits(), 2);
}

#[tokio::test]
async fn a_client_that_stops_part_way_through_the_http2_preface_is_cut_off_by_the_header_timeout() {
    let backend = Backend::start().await;
    let (gw, _dir) = start_gateway(&config(backend.addr)).await;
    let mut s = TcpStream::connect(gw.addrs()[1]).await.expect("connect");
    // The first 16 of the preface's 24 bytes (RFC 9113 §3.4), then nothing.
    s.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
    let took = closed_within(&mut s, Duration::from_secs(20))
        .await
        .expect("a half-sent HTTP/2 preface held the connection for 20 s");
    assert!(
        took < Duration::from_secs(5),
        "closed after {took:?}, not near the 1 s header timeout"
    );
}

/// Reads (and drops) whatever arrives until the gateway closes `s`.
async fn drained_until_closed(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    let r = tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    r.ok().map(|()| start.elapsed())
}

/// Writes `bytes` one every 300 ms, reading (and dropping) what comes
/// back, and asserts that the gateway closes the connection near the 1 s
/// header timeout (within 5 s), not later and not never.
async fn cut_off_near_the_header_timeout(
    s: &mut TcpStream,
    bytes: impl IntoIterator<Item = u8>,
    what: &str,
) {
    let start = Instant::now();
    for b in bytes {
        let closed = s.write_all(&[b]).await.is_err()
            || drained_until_closed(s, Duration::from_millis(300))
                .await
                .is_some();
        if closed {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "{what}: cut off after {:?}, not near the 1 s header timeout",
                start.elapsed()
            );
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "{what}: still open after 8 s"
        );
    }
}

/// The HTTP/2 preface, an empty SETTINGS and one GET of `/public/hello`
/// (HPACK, RFC 7541 Appendix A: :method GET, :scheme http, then :path and
/// :authority as literals with indexed names).
fn h2_hello() -> Vec<u8> {
    let mut hello = H2_PREFACE.to_vec();
    hello.extend(h2_frame(0x4, 0, 0, &[]));
    hello.extend(h2_frame(0x1, 0x5, 1, &h2_get_block())); // END_STREAM | END_HEADERS
    hello
}

/// The header block of a GET of `/public/hello`.
fn h2_get_block() -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x44, 13];
    block.extend_from_slice(b"/public/hello");
    block.extend_from_slice(&[0x41, 9]);
    block.extend_from_slice(b"localhost");
    block
}

/// An HTTP/2 frame (RFC 9113 §4.1).
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[tokio::test]
async fn an_http2_client_that_never_acknowledges_the_closing_ping_loses_its_connection() {
    // At idle_timeout the gateway closes an HTTP/2 connection gracefully:
    // GOAWAY and a PING whose acknowledgement it waits for (RFC 9113
    // §6.8). A client that never answers must not keep its slot for ever.
    let backend = Backend::start().await;
    let cfg = config(backend.addr).replace(
        "header_read_timeout: 1s\n",
        "header_read_timeout: 1s\n  idle_timeout: 2s\n",
    );
    let (gw, _dir) = start_gateway(&cfg).await;
    let mut s = TcpStream::connect(gw.addrs()[1]).await.expect("connect");
    s.write_all(&h2_hello()).await.expect("write");
    // The answer arrives; then the client reads on but never writes again.
    let took = drained_until_closed(&mut s, Duration::from_secs(30))
        .await
        .expect("the connection was still open 30 s later (idle timeout 2 s)");
    assert!(
        took < Duration::from_secs(10),
        "closed after {took:?}: idle 2 s, then 1 s for the graceful close"
    );
    assert_eq!(backend.hits(), 1, "the request itself was answered");
}

#[tokio::test]
async fn a_client_trickling_the_http2_settings_is_cut_off_by_the_header_timeout() {
    let backend = Backend::start().await;
    let (gw, _dir) = start_gateway(&config(backend.addr)).await;
    let mut s = TcpStream::connect(gw.addrs()[1]).await.expect("connect");
    s.write_all(H2_PREFACE).await.expect("write");
    let settings = h2_frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100]);
    let bytes = settings.iter().copied().cycle();
    cut_off_near_the_header_timeout(&mut s, bytes, "HTTP/2 set up a byte at a time").await;
}

#[tokio::test]
async fn an_unfinished_tls_record_after_a_request_is_cut_off_by_the_header_timeout() {
    // Over TLS the next request's first bytes are a record's: a client
    // trickling one that it never finishes shows no plaintext at all.
    let backend = Backend::start().await;
    let (gw, _dir) = start_gateway(&config(backend.addr)).await;
    let tcp = TcpStream::connect(gw.addrs()[0]).await.expect("connect");
    let std = tcp.into_std().expect("std");
    let mut raw = TcpStream::from_std(std.try_clone().expect("clone")).expect("raw");
    let tcp = TcpStream::from_std(std).expect("tcp");
    let connector = tokio_rustls::TlsConnector::from(tls_client_config(b"http/1.1"));
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    tls.write_all(b"GET /public/hello HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains("\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
            .await
            .expect("answer in time")
            .expect("read");
        assert!(n > 0, "closed before answering");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
    // An application-data record header announcing 16 KiB, then its
    // bytes one at a time, never all of them.
    let bytes = [0x17, 0x03, 0x03, 0x40, 0x00]
        .into_iter()
        .chain(std::iter::repeat(0));
    cut_off_near_the_header_timeout(&mut raw, bytes, "a TLS record trickled a byte at a time")
        .await;
    drop(tls);
}

#[tokio::test]
async fn an_http2_client_sending_only_pings_after_its_request_is_closed_at_the_idle_timeout() {
    // PING, SETTINGS and WINDOW_UPDATE carry no request: a client sending
    // one every half second must not keep an idle connection, and its slot.
    let backend = closed_at_the_idle_timeout_sending(|_| h2_frame(0x6, 0, 0, b"keepaliv")).await;
    assert_eq!(backend.hits(), 1);
}

/// A client that opens a stream every half second and cancels it at once
/// (HEADERS without END_STREAM, then RST_STREAM CANCEL) never gets an
/// answer: those streams are not requests served, and must not keep an
/// idle connection and its slot (they did: a stream's opening counted).
#[tokio::test]
async fn an_http2_client_opening_and_cancelling_streams_is_closed_at_the_idle_timeout() {
    closed_at_the_idle_timeout_sending(|i| {
        let stream = 3 + 2 * i;
        let mut frames = h2_frame(0x1, 0x4, stream, &h2_get_block()); // END_HEADERS
        frames.extend(h2_frame(0x3, 0, stream, &8u32.to_be_bytes())); // CANCEL
        frames
    })
    .await;
}

/// One request, then `frame(i)` every half second: the connection must be
/// closed by its 2 s idle timeout (and the 1 s graceful close) all the
/// same, not held for the 20 s of the test.
async fn closed_at_the_idle_timeout_sending(frame: impl Fn(u32) -> Vec<u8>) -> Backend {
    let backend = Backend::start().await;
    let cfg = config(backend.addr).replace(
        "header_read_timeout: 1s\n",
        "header_read_timeout: 1s\n  idle_timeout: 2s\n",
    );
    let (gw, _dir) = start_gateway(&cfg).await;
    let s = TcpStream::connect(gw.addrs()[1]).await.expect("connect");
    let (mut rd, mut wr) = s.into_split();
    wr.write_all(&h2_hello()).await.expect("write");
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        loop {
            match rd.read(&mut buf).await {
                Ok(0) | Err(_) => return start.elapsed(),
                Ok(_) => {}
            }
        }
    });
    let mut i = 0;
    while !reader.is_finished() && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        if wr.write_all(&frame(i)).await.is_err() {
            break;
        }
        i += 1;
    }
    assert!(
        reader.is_finished(),
        "still open after 20 s (idle timeout 2 s)"
    );
    let took = reader.await.expect("reader");
    assert!(
        took < Duration::from_secs(10),
        "closed after {took:?}: idle 2 s, then 1 s for the graceful close"
    );
    backend
}
