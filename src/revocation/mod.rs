//! The gateway's side of revocation: the in-memory set every authenticated
//! request is checked against, the feed that keeps it current, and the
//! state file that carries it across restarts.

pub mod feed;
pub mod model;
pub mod set;
pub mod state;

pub use feed::Revocations;
