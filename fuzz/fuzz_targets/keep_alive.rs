//! A backend's `Keep-Alive` response field, read for its `timeout`
//! (`gatehouse::proxy::headers::keep_alive_timeout`): never panics, never
//! more than nine digits' worth of seconds, and a timeout only where some
//! line names one. Each input line is one field line.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut h = http::HeaderMap::new();
    for line in data.split(|b| *b == b'\n') {
        if let Ok(v) = http::HeaderValue::from_bytes(line) {
            h.append("keep-alive", v);
        }
    }
    if let Some(t) = gatehouse::proxy::headers::keep_alive_timeout(&h) {
        assert!(t.as_secs() <= 999_999_999);
        assert!(h
            .get_all("keep-alive")
            .iter()
            .any(|v| v.as_bytes().to_ascii_lowercase().windows(7).any(|w| w == b"timeout")));
    }
});
