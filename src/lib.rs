//! gatehouse: an authentication gateway in front of apps that cannot check
//! tokens themselves.
//!
//! Read the policy first: [`proxy::Proxy::decide`] (in `proxy/policy.rs`)
//! decides about one request from its head alone, top to bottom
//! (canonical path and host, route, framing, token, revocation, scopes);
//! the proxy forwards a decision, the auth-server mode answers it. Token
//! checks live in [`auth::jwt`], the canonical reading in
//! [`proxy::canonical`].

pub mod admin;
pub mod auth;
pub mod authority;
pub mod cli;
pub mod config;
pub mod demo;
pub mod httpclient;
pub mod logging;
pub mod proxy;
pub mod revocation;
pub mod server;
pub mod tls;
pub mod token;
