//! gatehouse-core: the contract the gateway and the authority share, and
//! what both need. Nothing here knows either side.
//!
//! Start with [`revocation`]: the revocation model, its one wire form (the
//! feed and state-file lines) and the one coverage rule ("does this entry
//! cover this token"). Then [`auth`] (token verification and key sets),
//! [`config`] (types and loading), [`canonical`] (the one reading of a
//! request's path and host) and [`listener`] (the limits every listener
//! shares).

pub mod auth;
pub mod body;
pub mod canonical;
pub mod clock;
pub mod config;
pub mod head_only;
pub mod header_names;
pub mod httpclient;
pub mod ids;
pub mod listener;
pub mod logging;
pub mod metrics;
pub mod revocation;
pub mod tls;
