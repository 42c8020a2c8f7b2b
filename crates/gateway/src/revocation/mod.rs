//! The gateway's side of revocation: the in-memory set every authenticated
//! request is checked against, the feed that keeps it current, and the
//! state file that carries it across restarts.

pub mod feed;
pub mod set;
pub mod state;

/// The revocation model and wire form (the contract, in core).
pub use gatehouse_core::revocation as model;

pub use feed::{gateway_name, LocalAuthority, Revocations};

/// Keeps revocation entries enforced for three times the largest `leeway` of
/// `cfg`'s issuers past their expiry ([`set::hold_past_expiry`], which
/// says why). Called before the state file is loaded, and at each reload.
pub fn hold_past_leeway(cfg: &gatehouse_core::config::Config) {
    let leeway = cfg
        .issuers
        .iter()
        .map(|i| i.value.leeway.as_secs_f64().ceil() as i64)
        .max()
        .unwrap_or(0);
    set::hold_past_expiry(leeway.saturating_mul(3));
}
