//! gatehouse-gateway: decides about every request and forwards it.
//!
//! Read the policy first: [`proxy::Proxy::decide`] (in `proxy/policy.rs`)
//! decides about one request from its head alone, top to bottom
//! (canonical path and host, route, framing, token, revocation, scopes);
//! the proxy forwards a decision, the auth-server mode answers it. Then
//! [`server`] (listeners, reload) and [`revocation`] (the in-memory set,
//! its feed client and state file). The gateway never starts an
//! authority: an embedded one is handed in as a
//! [`revocation::LocalAuthority`].

pub mod admin;
pub mod generation;
pub mod login;
pub mod proxy;
pub mod revocation;
pub mod server;
