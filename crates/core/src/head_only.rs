//! An HTTP/1.1 server (RFC 9112) for listeners that answer from the request
//! head alone and never read a body: an ingress's auth server (nginx
//! `auth_request`, Caddy `forward_auth`, Traefik `forwardAuth`, Envoy
//! `ext_authz`). Every request an ingress sees is asked about here, so this
//! path does only what such a question needs: the head is parsed by
//! `httparse` (the parser hyper uses) into `http::request::Parts`, the
//! answer is written in one write, and nothing else runs per request — no
//! dispatcher, no body channel, no per-request timer. Profiled against
//! hyper's server on the same listener, hyper's per-request machinery was
//! the largest part of a decision's own CPU after the system calls.
//!
//! What it accepts is narrower than hyper's server, never wider:
//! - HTTP/1.0 and HTTP/1.1 only (an HTTP/2 preface is a malformed head:
//!   400), with the head within `limits.max_header_bytes` and
//!   `limits.max_headers` (431, RFC 6585 §5), due within
//!   `limits.header_read_timeout` of its first byte;
//! - no request body: a head with `Transfer-Encoding` or a non-zero
//!   `Content-Length` is refused (400) and the connection closed, since
//!   the body's bytes would otherwise be read as the next request — an
//!   answer meant for one question given to another (RFC 9112 §6.3,
//!   §11.2). No ingress sends one: nginx's snippet drops the body
//!   (`proxy_pass_request_body off`), Caddy and Traefik ask with a GET,
//!   Envoy sends `content-length: 0` unless told to buffer bodies;
//! - exactly one `Host` in HTTP/1.1 (RFC 9112 §3.2: 400 otherwise), at
//!   most one in HTTP/1.0;
//! - persistent connections as RFC 9112 §9.3 says: HTTP/1.1 unless
//!   `Connection: close`, HTTP/1.0 only with `Connection: keep-alive`.
//!   Pipelined requests are answered in order.
//!
//! A head refused before any handler saw it is answered, the connection
//! closed after a bounded drain (so the answer is not lost to a reset), and
//! reported to the caller as a [`RefusedHead`] to log and count.

use std::cell::RefCell;
use std::future::Future;
use std::mem::MaybeUninit;
use std::time::{Duration, SystemTime};

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

use crate::config::Limits;
use crate::listener::{now_ms, RefusedHead, WhenWoken};

/// What [`parse_head`] made of the bytes read so far.
#[derive(Debug)]
pub enum Parsed {
    /// Not a whole head yet, and nothing wrong so far: read more.
    Partial,
    /// A whole head of `len` bytes, its body empty (none announced).
    Complete {
        /// The request's method, target, version and fields.
        parts: http::request::Parts,
        /// Bytes of the buffer the head took, its final empty line
        /// included.
        len: usize,
        /// The connection may carry another request after this one
        /// (RFC 9112 §9.3).
        keep_alive: bool,
    },
    /// A head that must not be answered as a request: answer with
    /// `RefusedHead::status` and close the connection.
    Refused(RefusedHead),
}

const TOO_LARGE: RefusedHead = RefusedHead {
    status: 431,
    outcome: "header_too_large",
    reason: "request head over limits.max_header_bytes or limits.max_headers",
};

const fn malformed_head(reason: &'static str) -> RefusedHead {
    RefusedHead {
        status: 400,
        outcome: "malformed_request",
        reason,
    }
}

const fn malformed(reason: &'static str) -> Parsed {
    Parsed::Refused(malformed_head(reason))
}

/// Most heads fit in this many fields; the parser's field slots for them
/// live on the stack, uninitialised until used.
const STACK_FIELDS: usize = 128;

/// Reads one request head from the start of `buf` (RFC 9112 §2–§3, §6.3)
/// and, when it is whole, takes it off the buffer: the fields and target
/// share its bytes, not copies. `max_bytes` and `max_headers` are
/// `limits.max_header_bytes` and `limits.max_headers`; a head over either
/// is [`Parsed::Refused`] with 431, one that breaks the grammar or
/// announces a body with 400. Never panics, for any bytes
/// (`fuzz/fuzz_targets/head.rs`).
pub fn parse_head(buf: &mut BytesMut, max_bytes: usize, max_headers: usize) -> Parsed {
    let scanned = if max_headers <= STACK_FIELDS {
        let mut slots = [const { MaybeUninit::uninit() }; STACK_FIELDS];
        scan(buf, max_bytes, &mut slots[..max_headers])
    } else {
        let mut slots = Vec::with_capacity(max_headers);
        slots.resize_with(max_headers, MaybeUninit::uninit);
        scan(buf, max_bytes, &mut slots)
    };
    let Scanned {
        len,
        method,
        version,
        target,
        names,
    } = match scanned {
        Ok(s) => s,
        Err(None) => return Parsed::Partial,
        Err(Some(r)) => return Parsed::Refused(r),
    };
    let head = buf.split_to(len).freeze();
    build(head, len, method, version, target, names)
}

/// Where a parsed head's pieces lie in its bytes, so that they can be
/// shared once the head is taken off the buffer.
fn span(whole: &[u8], part: &[u8]) -> std::ops::Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

/// A whole head's grammar checked, its pieces located.
struct Scanned {
    len: usize,
    method: Method,
    version: Version,
    target: std::ops::Range<usize>,
    names: Vec<(HeaderName, std::ops::Range<usize>)>,
}

fn scan<'b>(
    buf: &'b [u8],
    max_bytes: usize,
    slots: &mut [MaybeUninit<httparse::Header<'b>>],
) -> Result<Scanned, Option<RefusedHead>> {
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, slots) {
        Ok(httparse::Status::Partial) if buf.len() >= max_bytes => return Err(Some(TOO_LARGE)),
        Ok(httparse::Status::Partial) => return Err(None),
        Ok(httparse::Status::Complete(len)) if len > max_bytes => return Err(Some(TOO_LARGE)),
        Ok(httparse::Status::Complete(len)) => len,
        Err(httparse::Error::TooManyHeaders) => return Err(Some(TOO_LARGE)),
        Err(httparse::Error::Version) => {
            return Err(Some(malformed_head(
                "request head that is not HTTP/1.0 or HTTP/1.1",
            )))
        }
        Err(_) => {
            return Err(Some(malformed_head(
                "request head that HTTP/1.1 cannot parse",
            )))
        }
    };
    let (Some(method), Some(target), Some(minor)) = (req.method, req.path, req.version) else {
        return Err(Some(malformed_head(
            "request head that HTTP/1.1 cannot parse",
        )));
    };
    let Ok(method) = Method::from_bytes(method.as_bytes()) else {
        return Err(Some(malformed_head("request method is not a token")));
    };
    let version = if minor == 0 {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    let target = span(buf, target.as_bytes());
    let mut names = Vec::with_capacity(req.headers.len());
    for f in req.headers.iter() {
        let Ok(name) = HeaderName::from_bytes(f.name.as_bytes()) else {
            return Err(Some(malformed_head(
                "request field name that HTTP cannot carry",
            )));
        };
        names.push((name, span(buf, f.value)));
    }
    Ok(Scanned {
        len,
        method,
        version,
        target,
        names,
    })
}

/// The request a scanned head describes, sharing the head's bytes, with
/// the framing and `Host` rules of this server applied.
fn build(
    head: Bytes,
    len: usize,
    method: Method,
    version: Version,
    target: std::ops::Range<usize>,
    names: Vec<(HeaderName, std::ops::Range<usize>)>,
) -> Parsed {
    let Ok(uri) = Uri::from_maybe_shared(head.slice(target)) else {
        return malformed("request target cannot be read");
    };
    let mut headers = HeaderMap::with_capacity(names.len());
    for (name, value) in names {
        let Ok(value) = HeaderValue::from_maybe_shared(head.slice(value)) else {
            return malformed("request field value that HTTP cannot carry");
        };
        headers.append(name, value);
    }
    if headers.contains_key(header::TRANSFER_ENCODING) {
        return malformed("a request body sent to an auth server, which reads none");
    }
    for v in headers.get_all(header::CONTENT_LENGTH) {
        // RFC 9110 §8.6: 1*DIGIT; any other value, a list included, is
        // not a length this server will frame by.
        let b = v.as_bytes();
        if b.is_empty() || !b.iter().all(u8::is_ascii_digit) {
            return malformed("Content-Length is not a length");
        }
        if b.iter().any(|d| *d != b'0') {
            return malformed("a request body sent to an auth server, which reads none");
        }
    }
    let hosts = headers.get_all(header::HOST).iter().count();
    if hosts > 1 || (hosts == 0 && version == Version::HTTP_11) {
        return malformed("an HTTP/1.1 request needs exactly one Host");
    }
    let keep_alive = match version {
        // `close` wins over `keep-alive` (RFC 9112 §9.6).
        Version::HTTP_10 => {
            connection_has(&headers, "keep-alive") && !connection_has(&headers, "close")
        }
        _ => !connection_has(&headers, "close"),
    };
    let (mut parts, ()) = Request::new(()).into_parts();
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Parsed::Complete {
        parts,
        len,
        keep_alive,
    }
}

/// The property `fuzz/fuzz_targets/head.rs` and `tests/fuzz_smoke.rs`
/// check of [`parse_head`] over any bytes: `None` when it holds, else what
/// broke. A whole head is taken off the buffer exactly (what is left is
/// the input after it), ends with its empty line, announces no body and
/// has the `Host` RFC 9112 §3.2 asks for; an incomplete one is under the
/// size limit; a refusal is 400 or 431.
pub fn invariant_violation(input: &[u8]) -> Option<String> {
    const MAX_BYTES: usize = 8192;
    const MAX_FIELDS: usize = 24;
    let mut buf = BytesMut::from(input);
    match parse_head(&mut buf, MAX_BYTES, MAX_FIELDS) {
        Parsed::Partial if input.len() >= MAX_BYTES => {
            Some(format!("{} bytes still partial", input.len()))
        }
        Parsed::Partial => (buf[..] != *input).then(|| "a partial head consumed bytes".into()),
        Parsed::Refused(r) => {
            (r.status != 400 && r.status != 431).then(|| format!("refused with {}", r.status))
        }
        Parsed::Complete { parts, len, .. } => {
            if len > input.len() || buf[..] != input[len..] {
                return Some(format!(
                    "took {len} bytes but left {} of {}",
                    buf.len(),
                    input.len()
                ));
            }
            if len > MAX_BYTES || parts.headers.len() > MAX_FIELDS {
                return Some("a head over the limits was accepted".into());
            }
            if !input[..len].ends_with(b"\n\n") && !input[..len].ends_with(b"\n\r\n") {
                return Some("a head accepted without its empty line".into());
            }
            if parts.headers.contains_key(header::TRANSFER_ENCODING)
                || parts
                    .headers
                    .get_all(header::CONTENT_LENGTH)
                    .iter()
                    .any(|v| v.as_bytes().iter().any(|b| *b != b'0'))
            {
                return Some("a head announcing a body was accepted".into());
            }
            let hosts = parts.headers.get_all(header::HOST).iter().count();
            if hosts > 1 || (hosts == 0 && parts.version == Version::HTTP_11) {
                return Some(format!("{hosts} Host fields accepted"));
            }
            None
        }
    }
}

/// Whether a `Connection` field names `option` (RFC 9110 §7.6.1: a
/// comma-separated list of case-insensitive tokens).
fn connection_has(h: &HeaderMap, option: &str) -> bool {
    h.get_all(header::CONNECTION).iter().any(|v| {
        v.as_bytes()
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(option.as_bytes()))
    })
}

/// Serves one connection of a head-only listener: reads heads, hands each
/// to `handler`, writes its answer, until the client closes, a head is
/// refused, the connection is idle for `limits.idle_timeout` (no request
/// in flight and no byte moving), a head is not complete within
/// `limits.header_read_timeout` of its first byte (the first one from
/// now), or `shutdown` fires between requests. Returns the head it refused,
/// if it refused one, for the caller to log and count.
///
/// A `HEAD` request's answer has its `Content-Length` and no body (RFC 9110
/// §9.3.2). Every answer carries `Date` (RFC 9110 §6.6.1).
pub async fn serve_heads<I, H, Fut>(
    mut io: I,
    limits: &Limits,
    mut shutdown: watch::Receiver<bool>,
    mut handler: H,
) -> Option<RefusedHead>
where
    I: AsyncRead + AsyncWrite + Unpin,
    H: FnMut(http::request::Parts) -> Fut,
    Fut: Future<Output = Response<crate::body::ProxyBody>>,
{
    let max_bytes = limits.max_header_bytes.value;
    let (head_timeout, idle) = (limits.header_read_timeout, limits.idle_timeout);
    let idle_check = (idle / 4).max(Duration::from_millis(250));
    let mut buf = BytesMut::with_capacity(4096);
    let mut out: Vec<u8> = Vec::with_capacity(512);
    // When the head now being read began ([`now_ms`]); `None` while the
    // connection waits between requests. The first head is due from now.
    let mut head_since = Some(now_ms());
    // Bytes moved since the timer last looked, and when it last saw them:
    // the idle clock is read by the timer, not on the request path.
    let mut moved = false;
    let mut quiet_since = now_ms();
    let mut timer = WhenWoken::new(tokio::time::sleep(head_timeout.min(idle_check)));
    let mut stop = WhenWoken::new(async move {
        let _ = shutdown.changed().await;
    });
    // Bytes of `buf` known to hold no head's end: once a head has come in
    // part, it is parsed again only when its end may have arrived, so a
    // head sent in many small pieces costs its length, not its length
    // squared. 0 while no part of a head has been found wanting.
    let mut searched = 0usize;
    // Bytes arrived that no answer has used yet (empty lines included).
    let mut pending = false;
    loop {
        // Every whole head already read is answered before reading more
        // (pipelining, RFC 9112 §9.3.2).
        loop {
            // Empty lines before a request line are ignored (RFC 9112
            // §2.2), and dropped here so that they cannot pile up in front
            // of a head and be parsed again with it.
            while searched == 0 && (buf.starts_with(b"\r\n") || buf.starts_with(b"\n")) {
                let _ = buf.split_to(if buf[0] == b'\r' { 2 } else { 1 });
            }
            if buf.is_empty() {
                break;
            }
            if searched > 0 && !may_end_head(&buf, searched) {
                searched = buf.len();
                if buf.len() < max_bytes {
                    break;
                }
            }
            let (parts, keep_alive) = match parse_head(&mut buf, max_bytes, limits.max_headers) {
                Parsed::Partial => {
                    searched = buf.len();
                    break;
                }
                Parsed::Refused(r) => {
                    let _ = tokio::time::timeout(head_timeout, refuse(&mut io, &mut out, r)).await;
                    return Some(r);
                }
                Parsed::Complete {
                    parts, keep_alive, ..
                } => (parts, keep_alive),
            };
            searched = 0;
            let head_request = parts.method == Method::HEAD;
            // An HTTP/1.0 client keeps the connection only if told so
            // (RFC 9112 §9.3, Appendix C.2.2).
            let connection = match (keep_alive, parts.version) {
                (false, _) => Some("close"),
                (true, Version::HTTP_10) => Some("keep-alive"),
                (true, _) => None,
            };
            let resp = handler(parts).await;
            if encode(&mut out, resp, head_request, connection)
                .await
                .is_err()
                || !write_answer(&mut io, &out, idle).await
            {
                return None;
            }
            moved = true;
            if !keep_alive {
                let _ = io.shutdown().await;
                return None;
            }
            head_since = None;
            pending = !buf.is_empty();
        }
        if pending && head_since.is_none() {
            head_since = Some(now_ms());
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096.min(max_bytes.saturating_sub(buf.len()).max(1024)));
        }
        tokio::select! {
            biased;
            () = &mut stop => {
                // Between requests (or inside a head not yet complete):
                // nothing is owed to the client.
                return None;
            }
            r = io.read_buf(&mut buf) => match r {
                Ok(0) | Err(_) => return None,
                // The head's clock starts only if these bytes leave it
                // incomplete (above): most heads arrive whole.
                Ok(_) => {
                    moved = true;
                    pending = true;
                }
            },
            () = &mut timer => {
                let now = now_ms();
                let mut next = idle_check;
                if let Some(since) = head_since {
                    let waited = Duration::from_millis(now.saturating_sub(since));
                    if waited >= head_timeout {
                        tracing::debug!("closed: a request head not complete within the header read timeout");
                        return None;
                    }
                    next = next.min(head_timeout - waited);
                }
                if std::mem::take(&mut moved) {
                    quiet_since = now;
                }
                let quiet = Duration::from_millis(now.saturating_sub(quiet_since));
                if head_since.is_none() && quiet >= idle {
                    return None;
                }
                timer.reset_sleep(tokio::time::Instant::now() + next);
            }
        }
    }
}

/// Whether the bytes of `buf` after the first `searched` (less two, for
/// an end split between reads) hold an empty line: a head's end.
fn may_end_head(buf: &[u8], searched: usize) -> bool {
    let from = searched.saturating_sub(2).min(buf.len());
    buf[from..].iter().enumerate().any(|(i, b)| {
        *b == b'\n'
            && (buf[from + i + 1..].starts_with(b"\n") || buf[from + i + 1..].starts_with(b"\r\n"))
    })
}

/// Writes one answer; false if the connection is to be dropped. The
/// first write is tried at once and most answers go out whole in it; only
/// the rest of one that did not (a client not reading its answers, the
/// socket's buffer full) waits, and at most `limit` (the idle timeout: no
/// byte moving and nothing being worked on).
async fn write_answer<I: AsyncWrite + Unpin>(io: &mut I, out: &[u8], limit: Duration) -> bool {
    let first = std::future::poll_fn(|cx| {
        std::task::Poll::Ready(std::pin::Pin::new(&mut *io).poll_write(cx, out))
    })
    .await;
    let n = match first {
        std::task::Poll::Ready(Ok(n)) => n,
        std::task::Poll::Ready(Err(_)) => return false,
        std::task::Poll::Pending => 0,
    };
    if n == out.len() {
        // A TLS stream holds records until flushed; a TCP or Unix stream's
        // flush is ready at once.
        let flushed = std::future::poll_fn(|cx| {
            std::task::Poll::Ready(std::pin::Pin::new(&mut *io).poll_flush(cx))
        })
        .await;
        match flushed {
            std::task::Poll::Ready(r) => return r.is_ok(),
            std::task::Poll::Pending => {}
        }
    }
    let rest = async {
        io.write_all(&out[n..]).await?;
        io.flush().await
    };
    matches!(tokio::time::timeout(limit, rest).await, Ok(Ok(())))
}

/// Answers a refused head with its status and `Connection: close`, then
/// drains what the client still sends (at most 64 KiB, for at most a
/// second) before closing, so that closing with unread bytes does not
/// reset the connection under the answer (RFC 9112 §9.6).
async fn refuse<I: AsyncRead + AsyncWrite + Unpin>(io: &mut I, out: &mut Vec<u8>, r: RefusedHead) {
    out.clear();
    let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
    status_line(out, status);
    out.extend_from_slice(
        b"cache-control: no-store\r\ncontent-length: 0\r\nconnection: close\r\ndate: ",
    );
    date(out);
    out.extend_from_slice(b"\r\n\r\n");
    if io.write_all(out).await.is_err() || io.shutdown().await.is_err() {
        return;
    }
    let mut sink = [0u8; 4096];
    let mut left = 64 * 1024usize;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while left > 0 {
            match io.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

fn status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Writes `resp` as an HTTP/1.1 message into `out`: the handler's fields
/// except the framing and connection ones, which are this server's
/// (`Content-Length` from the body, `Date`, and `Connection` with
/// `connection`'s option when there is one). The body is collected (answers here are small: an empty
/// allow, a refusal's short text); a `HEAD` answer leaves it out.
async fn encode(
    out: &mut Vec<u8>,
    resp: Response<crate::body::ProxyBody>,
    head_request: bool,
    connection: Option<&str>,
) -> Result<(), crate::body::BoxError> {
    let (parts, body) = resp.into_parts();
    let body: Bytes = if http_body::Body::is_end_stream(&body) {
        Bytes::new()
    } else {
        body.collect().await?.to_bytes()
    };
    out.clear();
    status_line(out, parts.status);
    for (name, value) in &parts.headers {
        if matches!(
            *name,
            header::CONTENT_LENGTH | header::TRANSFER_ENCODING | header::CONNECTION | header::DATE
        ) {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // RFC 9110 §8.6: no Content-Length in a 1xx or 204.
    if !(parts.status.is_informational() || parts.status == StatusCode::NO_CONTENT) {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa(body.len(), &mut [0u8; 20]));
        out.extend_from_slice(b"\r\n");
    }
    if let Some(c) = connection {
        out.extend_from_slice(b"connection: ");
        out.extend_from_slice(c.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"date: ");
    date(out);
    out.extend_from_slice(b"\r\n\r\n");
    if !head_request {
        out.extend_from_slice(&body);
    }
    Ok(())
}

fn itoa(mut n: usize, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Appends the current IMF-fixdate (RFC 9110 §5.6.7), formatted once per
/// second per thread.
fn date(out: &mut Vec<u8>) {
    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let secs = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs {
            *c = (secs, httpdate::fmt_http_date(now));
        }
        out.extend_from_slice(c.1.as_bytes());
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(s: &'static str) -> crate::body::ProxyBody {
        http_body_util::Full::new(Bytes::from_static(s.as_bytes()))
            .map_err(|never| match never {})
            .boxed()
    }

    fn parse(s: &str) -> Parsed {
        parse_head(&mut BytesMut::from(s), 32 * 1024, 100)
    }

    fn refused(s: &str) -> u16 {
        match parse(s) {
            Parsed::Refused(r) => r.status,
            other => panic!("{s:?} was not refused: {other:?}"),
        }
    }

    #[test]
    fn an_nginx_subrequest_head_is_read_whole_and_kept_alive() {
        let s = "GET /_gatehouse HTTP/1.1\r\nHost: app.test\r\nX-Original-URI: /a?b\r\n\
                 X-Original-Method: GET\r\nAuthorization: Bearer x\r\n\r\nGET /next";
        let Parsed::Complete {
            parts,
            len,
            keep_alive,
        } = parse(s)
        else {
            panic!("not complete")
        };
        assert_eq!(len, s.len() - "GET /next".len());
        assert!(keep_alive);
        assert_eq!(parts.method, Method::GET);
        assert_eq!(parts.uri, "/_gatehouse");
        assert_eq!(parts.headers["x-original-uri"], "/a?b");
        assert_eq!(parts.version, Version::HTTP_11);
    }

    #[test]
    fn a_head_cut_short_waits_for_more() {
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nHost: a\r\n"),
            Parsed::Partial
        ));
    }

    #[test]
    fn a_request_announcing_a_body_is_refused_so_its_bytes_are_never_read_as_a_request() {
        assert_eq!(
            refused("POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nGET /"),
            400
        );
        assert_eq!(
            refused("POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"),
            400
        );
        assert_eq!(
            refused("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0, 0\r\n\r\n"),
            400
        );
        assert_eq!(
            refused("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: +0\r\n\r\n"),
            400
        );
        assert!(matches!(
            parse("GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 00\r\n\r\n"),
            Parsed::Complete { .. }
        ));
    }

    #[test]
    fn host_is_required_once_in_http_1_1_and_at_most_once_in_http_1_0() {
        assert_eq!(refused("GET / HTTP/1.1\r\n\r\n"), 400);
        assert_eq!(refused("GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"), 400);
        assert_eq!(refused("GET / HTTP/1.0\r\nHost: a\r\nHost: a\r\n\r\n"), 400);
        let Parsed::Complete { keep_alive, .. } = parse("GET / HTTP/1.0\r\n\r\n") else {
            panic!("HTTP/1.0 without Host is a request")
        };
        assert!(!keep_alive, "HTTP/1.0 closes unless asked to keep alive");
        let Parsed::Complete { keep_alive, .. } =
            parse("GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n")
        else {
            panic!("not complete")
        };
        assert!(keep_alive);
        for both in [
            "Connection: close, keep-alive\r\n",
            "Connection: keep-alive\r\nConnection: close\r\n",
        ] {
            let Parsed::Complete { keep_alive, .. } =
                parse(&format!("GET / HTTP/1.0\r\n{both}\r\n"))
            else {
                panic!("not complete")
            };
            assert!(!keep_alive, "{both}");
        }
        let Parsed::Complete { keep_alive, .. } =
            parse("GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade, Close\r\n\r\n")
        else {
            panic!("not complete")
        };
        assert!(!keep_alive);
    }

    #[test]
    fn http2_heads_and_broken_grammar_are_malformed_and_oversized_heads_too_large() {
        assert_eq!(refused("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 400);
        assert_eq!(refused("GET / HTTP/1.1\r\nHost : a\r\n\r\n"), 400);
        assert_eq!(refused("GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n"), 400);
        assert_eq!(refused("GET / HTTP/1.1\r\nHost: a\x01\r\n\r\n"), 400);
        let many: String = (0..101).map(|i| format!("X-{i}: v\r\n")).collect();
        assert_eq!(
            refused(&format!("GET / HTTP/1.1\r\nHost: a\r\n{many}\r\n")),
            431
        );
        let long = "a".repeat(40 * 1024);
        assert_eq!(refused(&format!("GET /{long}")), 431);
        assert_eq!(
            refused(&format!("GET / HTTP/1.1\r\nHost: a\r\nX: {long}\r\n\r\n")),
            431
        );
    }

    #[test]
    fn a_head_is_parsed_again_only_once_its_end_may_have_arrived() {
        let head = b"GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n\r\n";
        for cut in 1..head.len() {
            let (start, rest) = head.split_at(cut);
            assert!(!may_end_head(start, 1), "{cut}");
            let mut whole = start.to_vec();
            whole.extend_from_slice(rest);
            assert!(may_end_head(&whole, start.len()), "{cut}");
        }
        assert!(may_end_head(b"GET / HTTP/1.0\n\n", 15));
        assert!(!may_end_head(b"GET / HTTP/1.1\r\nHost: a\r\n", 20));
    }

    #[tokio::test]
    async fn answers_carry_length_date_and_close_and_a_head_answer_no_body() {
        let resp = Response::builder()
            .status(401)
            .header("www-authenticate", "Bearer realm=\"x\"")
            .header("content-length", "999")
            .body(full("no\n"))
            .unwrap();
        let mut out = Vec::new();
        encode(&mut out, resp, false, Some("close")).await.unwrap();
        let text = String::from_utf8(out.clone()).unwrap();
        assert!(text.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{text}");
        assert!(text.contains("www-authenticate: Bearer realm=\"x\"\r\n"));
        assert!(text.contains("content-length: 3\r\n") && !text.contains("999"));
        assert!(text.contains("connection: close\r\n") && text.contains("date: "));
        assert!(text.ends_with("\r\n\r\nno\n"), "{text}");
        let resp = Response::builder().status(401).body(full("no\n")).unwrap();
        encode(&mut out, resp, true, None).await.unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("content-length: 3\r\n") && text.ends_with("\r\n\r\n"));
        assert!(!text.contains("connection:"));
    }
}
