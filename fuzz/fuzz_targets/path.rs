//! Path normalisation: never panics, and what it returns is normalised
//! (no dot segments, no empty segments, starts with /), so a public-path
//! prefix match on it cannot be escaped.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = std::str::from_utf8(data) {
        if let Ok(n) = gatehouse::proxy::routes::normalize_path(p) {
            assert!(n.starts_with('/'));
            assert!(!n.contains("//"));
            for seg in n.split('/') {
                let name = seg.split(';').next().unwrap_or("");
                let decoded = name.replace("%2e", ".").replace("%2E", ".");
                assert!(decoded != "." && decoded != "..", "{p:?} -> {n:?}");
            }
        }
    }
});
