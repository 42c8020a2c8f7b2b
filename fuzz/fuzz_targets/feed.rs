//! Arbitrary bytes as a revocation feed response, in arbitrary chunks:
//! never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut p = gatehouse::revocation::feed::FeedParser::new();
    let split = data.first().map_or(1, |b| (*b as usize).max(1));
    for chunk in data.chunks(split) {
        if p.push(chunk).is_err() {
            return;
        }
    }
    let _ = p.finish();
});
