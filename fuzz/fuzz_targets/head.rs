//! An auth-server listener's request heads (`gatehouse_core::head_only`):
//! never panics, and a whole head is taken off the buffer exactly, with
//! no body announced and the `Host` RFC 9112 §3.2 asks for, so an answer
//! can never be given to a question it was not made for.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(v) = gatehouse::head_only::invariant_violation(data) {
        panic!("{v}");
    }
});
