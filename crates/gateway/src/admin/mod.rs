//! The admin listener: `/healthz` (alive), `/readyz` (able to serve
//! correctly, with the reasons when not) and `/metrics` (Prometheus).
//! Nothing here is on the request path.

pub use gatehouse_core::metrics;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::generation::Generation;
use metrics::{metrics, IssuerLabel, KindLabel};

pub async fn start(
    listen: SocketAddr,
    current: Arc<ArcSwap<Generation>>,
    mut shutdown: watch::Receiver<bool>,
) -> anyhow::Result<SocketAddr> {
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("admin listener cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    tracing::info!(address = %addr, "admin listening");
    tokio::spawn(async move {
        let builder = auto::Builder::new(TokioExecutor::new());
        loop {
            let stream = tokio::select! {
                r = listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(_) => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            let current = current.clone();
            let builder = builder.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let g = current.load_full();
                    async move { Ok::<_, Infallible>(handle(&req, &g)) }
                });
                let _ = builder.serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    Ok(addr)
}

fn respond(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn handle(req: &Request<Incoming>, g: &Generation) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/healthz" => respond(
            StatusCode::OK,
            "application/json",
            json!({"status": "alive"}).to_string(),
        ),
        "/readyz" => {
            let reasons = not_ready_reasons(g);
            let mut body = if reasons.is_empty() {
                json!({"ready": true})
            } else {
                json!({"ready": false, "reasons": reasons})
            };
            if let Some(r) = g.proxy.revocations() {
                let st = r.status();
                body["revocation"] = json!({
                    "source": st.source,
                    "stale": st.stale,
                    "seconds_since_contact": st.seconds_since_contact,
                });
            }
            let warnings = warnings(g);
            if !warnings.is_empty() {
                body["warnings"] = json!(warnings);
            }
            let status = if reasons.is_empty() {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            respond(status, "application/json", body.to_string())
        }
        "/metrics" => {
            refresh_state_gauges(g);
            respond(
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                metrics().encode(),
            )
        }
        _ => respond(
            StatusCode::NOT_FOUND,
            "application/json",
            json!({"error": "not_found"}).to_string(),
        ),
    }
}

/// Ready means: a config is loaded (it is, or we would not be here),
/// every issuer that verifies with keys has some, and the revocation set
/// is known and fresh.
fn not_ready_reasons(g: &Generation) -> Vec<String> {
    let mut reasons = Vec::new();
    for (issuer, keys) in g.proxy.verifier().key_counts() {
        if keys == Some(0) {
            reasons.push(format!("issuer {issuer}: no signing keys loaded"));
        }
    }
    if let Some(r) = g.proxy.revocations() {
        let st = r.status();
        if !st.ready {
            reasons.push(
                "revocation state not loaded yet (no state file, authority not reached)".to_owned(),
            );
        } else if st.stale {
            reasons.push(match (st.seconds_since_contact, st.seconds_since_fresh) {
                (Some(s), _) => {
                    format!("revocation set is stale: last word from the authority {s:.0}s ago")
                }
                (None, Some(s)) => format!(
                    "revocation set is stale: loaded from the state file {s:.0}s ago, the authority not reached since start"
                ),
                (None, None) => {
                    "revocation set is stale: the authority has not been reached since start"
                        .to_owned()
                }
            });
        }
    }
    reasons
}

/// Ready, but worth knowing: an issuer whose back-channel logouts end only
/// the session (`backchannel_logout: session`) while admitted tokens carry
/// no `sid`, which such a logout cannot match.
fn warnings(g: &Generation) -> Vec<String> {
    let m = metrics();
    g.loaded
        .config
        .issuers
        .iter()
        .filter(|i| i.value.backchannel_logout == gatehouse_core::config::BackchannelScope::Session)
        .filter_map(|i| {
            let name = i.value.display_name();
            let without_sid = m
                .verified_without_sid
                .get(&gatehouse_core::metrics::IssuerLabel {
                    issuer: name.to_string(),
                })
                .map_or(0, |c| c.get());
            (without_sid > 0).then(|| {
                format!(
                    "issuer {name}: backchannel_logout is `session`, but {without_sid} tokens it issued carried no sid; a back-channel logout cannot end them (use `subject`)"
                )
            })
        })
        .collect()
}

fn refresh_state_gauges(g: &Generation) {
    let m = metrics();
    for (issuer, keys) in g.proxy.verifier().key_counts() {
        if let Some(n) = keys {
            m.jwks_keys
                .get_or_create(&IssuerLabel {
                    issuer: issuer.to_string(),
                })
                .set(n as i64);
        }
    }
    if let Some(r) = g.proxy.revocations() {
        let st = r.status();
        for (kind, n) in [
            ("jti", st.entries.jti),
            ("sid", st.entries.sid),
            ("sub", st.entries.sub),
            ("client", st.entries.client),
        ] {
            m.revocation_entries
                .get_or_create(&KindLabel { kind })
                .set(n as i64);
        }
        m.revocation_feed_lag
            .set(st.seconds_since_contact.unwrap_or(f64::INFINITY));
        m.revocation_cursor.set(st.cursor_seq as i64);
        m.revocation_stale.set(i64::from(st.stale));
    }
}
