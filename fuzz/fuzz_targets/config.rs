//! Arbitrary text through env interpolation and the YAML config parser:
//! errors are fine, panics are not.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(t) = gatehouse::config::interpolate_env(text, |_| Some("x".to_owned())) {
            let _ = gatehouse::config::parse(&t);
        }
    }
});
