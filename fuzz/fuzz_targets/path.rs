//! Path and host canonicalisation: never panics, and what it accepts is
//! its own canonical form (canonicalising twice changes nothing), without
//! empty or dot segments and with a `;`-free matching path, so a route or
//! public-path prefix match on it cannot be escaped. The first line of the
//! input is the path, the rest the host.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data) {
        let (path, host) = s.split_once('\n').unwrap_or((s, s));
        if let Some(v) = gatehouse::proxy::canonical::invariant_violation(path, host) {
            panic!("{v}");
        }
    }
});
