//! Wall-clock time as the token and revocation contract counts it.

/// Seconds since the Unix epoch (a NumericDate, RFC 7519 §2); 0 if the
/// clock is before the epoch.
#[inline]
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}
