//! One generation of the gateway: everything a new connection or request
//! uses, built from one config. The server builds and swaps generations;
//! the admin listener reads the current one (readiness, gauges). Kept apart
//! from both so neither reaches into the other.

use std::sync::Arc;

use hyper_util::rt::TokioExecutor;
use hyper_util::server::conn::auto;

use crate::proxy::Proxy;
use crate::revocation::Revocations;
use gatehouse_core::config::{Limits, LoadedConfig};
use gatehouse_core::listener::http_builder;

/// Everything a new connection or request uses, built from one config and
/// swapped whole on reload. A request holds its generation to its end, so
/// in-flight requests finish on the config they started with.
pub struct Generation {
    pub proxy: Arc<Proxy>,
    pub(crate) builder: auto::Builder<TokioExecutor>,
    pub(crate) limits: Limits,
    /// Per listener, in config order.
    pub(crate) tls: Vec<
        Option<(
            tokio_rustls::TlsAcceptor,
            Arc<gatehouse_core::tls::CertNames>,
        )>,
    >,
    pub loaded: LoadedConfig,
}

impl Generation {
    pub(crate) async fn build(
        loaded: LoadedConfig,
        revocations: Option<Arc<Revocations>>,
    ) -> anyhow::Result<Generation> {
        let cfg = &loaded.config;
        crate::revocation::hold_past_leeway(cfg);
        let mut tls = Vec::new();
        for l in &cfg.listeners {
            tls.push(match &l.value.tls {
                Some(t) => {
                    let (config, names) =
                        gatehouse_core::tls::server_config_with_names(t, &loaded)?;
                    Some((
                        tokio_rustls::TlsAcceptor::from(Arc::new(config)),
                        Arc::new(names),
                    ))
                }
                None => None,
            });
        }
        Ok(Generation {
            proxy: Arc::new(Proxy::from_config(&loaded, revocations).await?),
            builder: http_builder(&cfg.limits),
            limits: cfg.limits.clone(),
            tls,
            loaded,
        })
    }
}
