//! The gateway's side of revocation: the in-memory set every authenticated
//! request is checked against, the feed that keeps it current, and the
//! state file that carries it across restarts.

pub mod feed;
pub mod set;
pub mod state;

/// The revocation model and wire form (the contract, in core).
pub use gatehouse_core::revocation as model;

pub use feed::{gateway_name, LocalAuthority, Revocations};
