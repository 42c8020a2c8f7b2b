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

/// Milliseconds since the Unix epoch; 0 if the clock is before the epoch.
/// For times other processes compare (the authority's gateway table,
/// receipts, the gateway's last contact).
#[inline]
pub fn now_unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
