//! The revocation authority: owns the durable set, takes revocations from
//! admins, clients logging out and identity providers (back-channel
//! logout), and feeds every gateway.

pub mod api;
pub mod backend;
pub mod redis_store;
pub mod store;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{AuthorityConfig, LoadedConfig};

/// A running authority. Dropping it stops accepting connections.
pub struct AuthorityHandle {
    addr: SocketAddr,
    _stop: watch::Sender<bool>,
}

impl AuthorityHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

pub async fn start(
    cfg: &AuthorityConfig,
    loaded: &LoadedConfig,
) -> anyhow::Result<AuthorityHandle> {
    let api = Arc::new(api::Api::new(cfg, loaded).await?);
    let store_name = api.store_name(cfg, loaded);
    api.clone().spawn_purger(cfg.purge_interval);
    let tls = match &cfg.tls {
        Some(t) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
            crate::tls::server_config(t, loaded)?,
        ))),
        None => None,
    };
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("authority cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(address = %addr, tls = tls.is_some(), store = %store_name, "authority listening");
    let (stop_tx, mut stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "authority accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = stop_rx.changed() => return,
            };
            let _ = stream.set_nodelay(true);
            let (api, builder, tls) = (api.clone(), builder.clone(), tls.clone());
            tokio::spawn(async move {
                let svc = service_fn(move |req| {
                    let api = api.clone();
                    async move { Ok::<_, Infallible>(api.handle(req, peer).await) }
                });
                let result = match tls {
                    None => builder.serve_connection(TokioIo::new(stream), svc).await,
                    Some(acceptor) => match acceptor.accept(stream).await {
                        Ok(s) => builder.serve_connection(TokioIo::new(s), svc).await,
                        Err(e) => {
                            tracing::debug!(peer = %peer, error = %e, "authority TLS handshake failed");
                            return;
                        }
                    },
                };
                if let Err(e) = result {
                    tracing::debug!(peer = %peer, error = %e, "authority connection ended with an error");
                }
            });
        }
    });
    Ok(AuthorityHandle {
        addr,
        _stop: stop_tx,
    })
}
