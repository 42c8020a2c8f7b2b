//! A write's wait mode (query string and `Gatehouse-Wait` header) and a
//! gateway's name on the feed: never panics; an accepted wait is always
//! within `0 < t <= max_wait`; an accepted name is one the header, logs
//! and JSON carry unchanged. The first line of the input is the query,
//! the second the header value, the third the gateway name.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(3, |b| *b == b'\n');
    let query = std::str::from_utf8(parts.next().unwrap_or_default()).unwrap_or("");
    let header: Vec<&[u8]> = parts.next().into_iter().collect();
    let name = parts.next().unwrap_or_default();
    let t = gatehouse::config::GatewayTracking::default();
    if let Ok(Some(d)) = gatehouse::authority::api::parse_wait(query, &header, &t) {
        assert!(!d.is_zero() && d <= t.max_wait, "{d:?}");
    }
    if let Ok(n) = std::str::from_utf8(name) {
        if gatehouse::config::valid_gateway_name(n) {
            assert!(http::HeaderValue::from_str(n).is_ok());
            assert!(n.len() <= 128 && !n.is_empty());
        }
    }
});
