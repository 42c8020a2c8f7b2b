//! gatehouse-authority: the revocation authority. It owns the durable set,
//! takes revocations from admins, clients logging out and identity
//! providers (back-channel logout), and feeds every gateway.
//!
//! Entry point: [`start`] (or [`start_with`] for an embedded authority).
//! Read [`api`] first: one table of endpoints and who may call each; the
//! stores are behind [`backend::Backend`] (redb in [`store`], Redis in
//! [`redis_store`]).

pub mod api;
pub mod backend;
pub mod gateways;
pub mod records;
pub mod redis_store;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;

use gatehouse_core::config::{AuthorityConfig, LoadedConfig};

/// A running authority. Dropping it stops accepting connections.
pub struct AuthorityHandle {
    addr: SocketAddr,
    end_entities: Vec<rustls::pki_types::CertificateDer<'static>>,
    _stop: watch::Sender<bool>,
}

impl AuthorityHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The certificates the listener serves (empty without TLS): what the
    /// gateway of the same process pins to reach it.
    pub fn end_entities(&self) -> &[rustls::pki_types::CertificateDer<'static>] {
        &self.end_entities
    }
}

pub async fn start(
    cfg: &AuthorityConfig,
    loaded: &LoadedConfig,
) -> anyhow::Result<AuthorityHandle> {
    start_with(cfg, loaded, Embedded::default()).await
}

/// What an embedded authority knows of the gateway in its process.
#[derive(Default)]
pub struct Embedded {
    /// The feed credential of the gateway in the same process when
    /// `feed_token` is not configured, so the admin token is never the
    /// feed's credential by default.
    pub internal_feed_token: Option<Vec<u8>>,
    /// That gateway's name on the feed: every write is answered only once
    /// it enforces it (read your writes on one host).
    pub local_gateway: Option<String>,
}

/// Like [`start`], for an authority embedded next to a gateway.
pub async fn start_with(
    cfg: &AuthorityConfig,
    loaded: &LoadedConfig,
    embedded: Embedded,
) -> anyhow::Result<AuthorityHandle> {
    let api = Arc::new(
        api::Api::new(
            cfg,
            loaded,
            embedded.internal_feed_token,
            embedded.local_gateway,
        )
        .await?,
    );
    let store_name = api.store_name(cfg, loaded);
    api.clone().spawn_purger(cfg.purge_interval);
    let tls = match &cfg.tls {
        Some(t) => Some(tokio_rustls::TlsAcceptor::from(Arc::new(
            gatehouse_core::tls::server_config(t, loaded)?,
        ))),
        None => None,
    };
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("authority cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    tracing::info!(address = %addr, tls = tls.is_some(), store = %store_name, "authority listening");
    let (stop_tx, stop_rx) = watch::channel(false);
    // The gateway's listener limits, from the same code: header read
    // timeout, header size and count, idle timeout, connection limit.
    let limits = cfg.limits.clone();
    let builder = Arc::new(gatehouse_core::listener::http_builder(&limits));
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    tokio::spawn(async move {
        let mut stop = stop_rx.clone();
        while let Some((stream, peer, permit)) =
            gatehouse_core::listener::accept_limited(&listener, &slots, &mut stop).await
        {
            let (api, builder, tls, limits) =
                (api.clone(), builder.clone(), tls.clone(), limits.clone());
            let stop = stop_rx.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let handler = move |req| {
                    let api = api.clone();
                    async move { api.handle(req, peer).await }
                };
                gatehouse_core::listener::serve_plain_or_tls(
                    stream, peer, tls, builder, limits, stop, handler,
                )
                .await;
            });
        }
    });
    Ok(AuthorityHandle {
        addr,
        end_entities: match &cfg.tls {
            Some(t) => gatehouse_core::tls::end_entities(t, loaded)?,
            None => Vec::new(),
        },
        _stop: stop_tx,
    })
}
