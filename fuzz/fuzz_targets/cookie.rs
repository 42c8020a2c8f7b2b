//! The browser session's cookies as a client sends them: `Cookie` fields
//! read (the session value joined from its chunks, never more than the
//! sealed limit), sealed values opened (never panics; nothing a client
//! makes up opens), what the backend gets (no gatehouse cookie survives).
//! The first line of the input is a `Cookie` field value, the rest a
//! sealed value.
#![no_main]

use gatehouse::login::cookie::{self, Purpose, Sealer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(2, |b| *b == b'\n');
    let field = parts.next().unwrap_or_default();
    let sealed = std::str::from_utf8(parts.next().unwrap_or_default()).unwrap_or("");
    let Ok(sealer) = Sealer::new(&[vec![7u8; 32]]) else {
        return;
    };
    assert!(sealer.open(Purpose::Session, sealed).is_none());
    let Ok(v) = http::HeaderValue::from_bytes(field) else {
        return;
    };
    let mut h = http::HeaderMap::new();
    h.append(http::header::COOKIE, v);
    if let Some(s) = cookie::session_value(&h) {
        assert!(s.len() <= cookie::MAX_SEALED + field.len());
        assert!(sealer.open(Purpose::Session, &s).is_none());
    }
    assert!(cookie::session_chunks(&h) <= cookie::MAX_CHUNKS);
    cookie::strip_ours(&mut h);
    for f in h.get_all(http::header::COOKIE) {
        assert!(!f
            .as_bytes()
            .windows(17)
            .any(|w| w == b"__Host-gatehouse-"));
    }
});
