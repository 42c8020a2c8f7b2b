//! gatehouse: an authentication gateway in front of apps that cannot check
//! tokens themselves.
//!
//! Where a request is authenticated: [`proxy::Proxy::handle_inner`] reads
//! top to bottom (route, strip spoofed headers, token, claims, scopes,
//! forward); token checks live in [`auth::jwt`].

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
