//! gatehouse: the binary. It composes the two products of the workspace:
//! the gateway (`gatehouse-gateway`) and the revocation authority
//! (`gatehouse-authority`), which share their contract through
//! `gatehouse-core`.
//!
//! Entry point: [`cli::main`]. [`server::start_on`] is where an embedded
//! authority is started and handed to the gateway as a feed URL, a
//! credential and a client that trusts it; the gateway itself never starts
//! an authority. To understand a request, read the gateway's policy first:
//! [`proxy::Proxy::decide`].

pub mod cli;
pub mod demo;
pub mod token;

pub use gatehouse_authority as authority;
pub use gatehouse_core::{auth, config, head_only, httpclient, logging, tls};
pub use gatehouse_gateway::{admin, login, proxy, revocation};

/// The gateway's server, with the embedded authority composed in: same
/// names as `gatehouse_gateway::server`, but [`server::start`] and
/// [`server::start_on`] also start `revocation.embedded`.
pub mod server {
    use std::sync::Arc;
    use std::time::Duration;

    use anyhow::Context;
    use gatehouse_core::config::{AuthorityConfig, LoadedConfig};
    use gatehouse_gateway::revocation::LocalAuthority;
    pub use gatehouse_gateway::server::*;

    /// Starts the gateway (and its embedded authority, if configured) on
    /// the current runtime (tests, tools).
    pub async fn start(loaded: &LoadedConfig) -> anyhow::Result<Arc<Gateway>> {
        start_on(loaded, &[tokio::runtime::Handle::current()]).await
    }

    /// [`gatehouse_gateway::server::start_on`], after starting the
    /// authority of `revocation.embedded` when the config has one.
    pub async fn start_on(
        loaded: &LoadedConfig,
        workers: &[tokio::runtime::Handle],
    ) -> anyhow::Result<Arc<Gateway>> {
        let embedded = loaded
            .config
            .revocation
            .as_ref()
            .and_then(|r| r.value.embedded.as_ref());
        let local = match (embedded, &loaded.config.revocation) {
            (Some(e), Some(r)) => {
                let name = gatehouse_gateway::revocation::gateway_name(&r.value, loaded);
                Some(local_authority(e, loaded, name).await?)
            }
            _ => None,
        };
        gatehouse_gateway::server::start_on(loaded, workers, local).await
    }

    /// Starts the embedded authority and describes it to the gateway.
    /// Without a configured feed token the two share a random one, never
    /// the admin token; with TLS the gateway pins the authority's own
    /// certificate (it dials an address, which no certificate names).
    /// Its answers wait for this gateway (`gateway_name`) to enforce them.
    async fn local_authority(
        e: &AuthorityConfig,
        loaded: &LoadedConfig,
        gateway_name: String,
    ) -> anyhow::Result<LocalAuthority> {
        let token = match &e.feed_token {
            Some(t) => t.read(loaded)?,
            None => gatehouse_core::ids::secret_token()?.into_bytes(),
        };
        let internal = e.feed_token.is_none().then(|| token.clone());
        let embedded = gatehouse_authority::Embedded {
            internal_feed_token: internal,
            local_gateway: Some(gateway_name),
        };
        let handle = gatehouse_authority::start_with(e, loaded, embedded)
            .await
            .context("embedded authority")?;
        let scheme = if e.tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{}", loopback(handle.addr()));
        let client = gatehouse_core::httpclient::build_pinned(
            handle.end_entities().to_vec(),
            Duration::from_secs(5),
        )?;
        let post_client = gatehouse_core::httpclient::build_pinned_for(
            handle.end_entities().to_vec(),
            Duration::from_secs(5),
        )?;
        Ok(LocalAuthority {
            url,
            token,
            client,
            post_client,
            keep_alive: Box::new(handle),
        })
    }

    /// Where this process reaches a listener of its own: an unspecified bind
    /// address (`0.0.0.0`, `::`) is dialled on loopback.
    fn loopback(addr: std::net::SocketAddr) -> std::net::SocketAddr {
        match addr.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => {
                (std::net::Ipv4Addr::LOCALHOST, addr.port()).into()
            }
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => {
                (std::net::Ipv6Addr::LOCALHOST, addr.port()).into()
            }
            _ => addr,
        }
    }
}
