//! The one response body type every listener answers with, and the
//! client's request body as every listener reads it: held to
//! `limits.body_read_timeout` between two reads (as nginx's
//! `client_body_timeout`), telling whether it was waiting for the client
//! when a route `timeout` ran out (then the time went on the client's
//! slowness, 408 per RFC 9110 §15.5.9, not the backend's 504).

use bytes::Bytes;
use std::future::Future as _;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

/// Any error a body stream can end with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// A response body: forwarded backend bytes, a JSON answer, or a stream
/// (the authority's feed). Boxed once so every listener shares a type.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// The error a stalled body ends with: no byte of it arrived within
/// `limits.body_read_timeout`. Answered 408 (RFC 9110 §15.5.9).
#[derive(Debug)]
pub struct BodyReadTimeout;

impl std::fmt::Display for BodyReadTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body stalled longer than limits.body_read_timeout")
    }
}

impl std::error::Error for BodyReadTimeout {}

/// Where the client's body stands, shared between the body (polled by the
/// backend connection) and the request's handler.
#[derive(Clone, Default)]
pub struct BodyState(Arc<StateInner>);

#[derive(Default)]
struct StateInner {
    state: AtomicU8,
    /// When the body's last frame was read.
    complete_at: OnceLock<Instant>,
}

const READING: u8 = 0;
const WAITING: u8 = 1;
const COMPLETE: u8 = 2;

impl BodyState {
    /// The last read of the body was waiting for the client's bytes:
    /// time running out now is the client's slowness, not the backend's
    /// (which, when it stops reading, leaves the body unpolled instead).
    pub fn waiting_on_client(&self) -> bool {
        self.0.state.load(Ordering::Acquire) == WAITING
    }

    /// When the whole body had been read, if it has: the backend's time
    /// to answer starts then, not at the request head.
    pub fn complete_at(&self) -> Option<Instant> {
        self.0.complete_at.get().copied()
    }

    fn set(&self, v: u8) {
        if self.0.state.load(Ordering::Relaxed) != v {
            if v == COMPLETE {
                let _ = self.0.complete_at.set(Instant::now());
            }
            self.0.state.store(v, Ordering::Release);
        }
    }
}

/// [`Incoming`] with a deadline between two frames. The timer is made
/// only when a read has to wait, so a body that arrives with its head
/// costs nothing more.
pub struct ClientBody {
    inner: Incoming,
    gap: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    /// The timer runs for the current wait (re-armed after each frame).
    armed: bool,
    state: BodyState,
}

impl ClientBody {
    pub fn new(inner: Incoming, gap: Duration) -> (Self, BodyState) {
        let state = BodyState::default();
        (
            ClientBody {
                inner,
                gap,
                timer: None,
                armed: false,
                state: state.clone(),
            },
            state,
        )
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.state.set(COMPLETE);
                Poll::Ready(None)
            }
            Poll::Ready(Some(r)) => {
                this.armed = false;
                this.state.set(if r.is_ok() && this.inner.is_end_stream() {
                    COMPLETE
                } else {
                    READING
                });
                Poll::Ready(Some(r.map_err(Into::into)))
            }
            Poll::Pending => {
                let deadline = Instant::now() + this.gap;
                let timer = match (&mut this.timer, this.armed) {
                    (Some(t), true) => t,
                    (Some(t), false) => {
                        t.as_mut().reset(deadline);
                        t
                    }
                    (slot @ None, _) => slot.insert(Box::pin(tokio::time::sleep_until(deadline))),
                };
                this.armed = true;
                this.state.set(WAITING);
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyReadTimeout)))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether `e` (a backend exchange's error) ends in [`BodyReadTimeout`].
pub fn stalled(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if err.is::<BodyReadTimeout>() {
            return true;
        }
        cur = err.source();
    }
    false
}
