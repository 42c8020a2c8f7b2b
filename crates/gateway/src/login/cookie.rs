//! The browser session's cookies: sealing (AEAD), reading them out of
//! `Cookie` fields, splitting a long value over several cookies, and the
//! `Set-Cookie` lines (RFC 6265bis). Pure functions over bytes: what a
//! client sends is read here first, so this module is the fuzz target's.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use http::{header, HeaderMap, HeaderValue};

/// The session cookie. `__Host-` (RFC 6265bis §4.1.3.2): only set with
/// `Secure`, `Path=/` and no `Domain`, so no sibling host or plain-HTTP
/// page can plant or overwrite it.
pub const SESSION: &str = "__Host-gatehouse-session";
/// A login in progress, one cookie per `state` (by its first characters),
/// so two tabs logging in at once do not undo each other.
pub const LOGIN_PREFIX: &str = "__Host-gatehouse-login-";
/// Characters of `state` in a login cookie's name.
pub const LOGIN_NAME_CHARS: usize = 12;
/// Longest cookie value written: browsers keep at least 4096 bytes per
/// cookie, name and attributes included (RFC 6265bis §5.6).
pub const MAX_VALUE: usize = 3800;
/// Most cookies one session is split over.
pub const MAX_CHUNKS: usize = 9;
/// Longest sealed value accepted (all chunks together), checked before
/// any decoding.
pub const MAX_SEALED: usize = MAX_VALUE * MAX_CHUNKS;

/// What a sealed value is for: bound into the AEAD as associated data, so
/// a login cookie never opens as a session and the other way round.
#[derive(Clone, Copy)]
pub enum Purpose {
    Session,
    Login,
}

impl Purpose {
    fn aad(self) -> &'static [u8] {
        match self {
            Purpose::Session => b"gatehouse session v1",
            Purpose::Login => b"gatehouse login v1",
        }
    }
}

/// AES-256-GCM keys derived from the configured secrets (HKDF-SHA256, RFC
/// 5869). The first seals; every one opens, so a new key can be put first
/// while cookies sealed with the old one still work.
pub struct Sealer {
    keys: Vec<LessSafeKey>,
}

impl Sealer {
    /// `secrets`: each at least 32 bytes (checked by the config).
    pub fn new(secrets: &[Vec<u8>]) -> anyhow::Result<Self> {
        let salt = aws_lc_rs::hkdf::Salt::new(aws_lc_rs::hkdf::HKDF_SHA256, b"gatehouse cookies");
        let mut keys = Vec::new();
        for s in secrets {
            anyhow::ensure!(s.len() >= 32, "a session key is shorter than 32 bytes");
            let prk = salt.extract(s);
            let okm = prk
                .expand(&[b"aes-256-gcm"], &AES_256_GCM)
                .map_err(|_| anyhow::anyhow!("session key derivation failed"))?;
            keys.push(LessSafeKey::new(UnboundKey::from(okm)));
        }
        anyhow::ensure!(!keys.is_empty(), "no session key");
        Ok(Sealer { keys })
    }

    /// `base64url(nonce ‖ ciphertext ‖ tag)`, with a random 96-bit nonce.
    pub fn seal(&self, purpose: Purpose, plain: &[u8]) -> anyhow::Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| anyhow::anyhow!("no randomness"))?;
        let mut buf = plain.to_vec();
        self.keys[0]
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(purpose.aad()),
                &mut buf,
            )
            .map_err(|_| anyhow::anyhow!("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(URL_SAFE_NO_PAD.encode(out))
    }

    /// The plaintext, or `None` for anything not sealed by one of our
    /// keys for this purpose (tampered, truncated, another key, too long).
    pub fn open(&self, purpose: Purpose, sealed: &str) -> Option<Vec<u8>> {
        if sealed.len() > MAX_SEALED {
            return None;
        }
        let raw = URL_SAFE_NO_PAD.decode(sealed).ok()?;
        if raw.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let (nonce, body) = raw.split_at(NONCE_LEN);
        for k in &self.keys {
            let mut buf = body.to_vec();
            let n = Nonce::try_assume_unique_for_key(nonce).ok()?;
            if let Ok(plain) = k.open_in_place(n, Aad::from(purpose.aad()), &mut buf) {
                let len = plain.len();
                buf.truncate(len);
                return Some(buf);
            }
        }
        None
    }
}

/// Every value of the cookie `name` in the request's `Cookie` fields
/// (RFC 6265bis §5.7.4: `name=value` pairs separated by `;`), in order.
pub fn values<'a>(headers: &'a HeaderMap, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
    // Bytes, not `to_str` on the whole field: only the value asked for is
    // checked as text (a session cookie is a few KiB of base64url).
    headers
        .get_all(header::COOKIE)
        .iter()
        .flat_map(|v| pairs(v.as_bytes()))
        .filter_map(move |pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|b| *b == b'=')?;
            let (n, v) = (&pair[..eq], &pair[eq + 1..]);
            if n.trim_ascii() != name.as_bytes() {
                return None;
            }
            std::str::from_utf8(v.trim_ascii()).ok()
        })
}

/// The `;`-separated pairs of a `Cookie` field value, untrimmed. Split
/// with `memchr`: a session cookie is kilobytes the search jumps over.
fn pairs(field: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut start = 0;
    let mut ends = memchr::memchr_iter(b';', field).chain(std::iter::once(field.len()));
    std::iter::from_fn(move || {
        let end = ends.next()?;
        let p = &field[start..end];
        start = end + 1;
        Some(p)
    })
}

/// The one value of cookie `name`: `None` when absent or sent more than
/// once (two values are two readings; neither is taken).
pub fn single<'a>(headers: &'a HeaderMap, name: &'a str) -> Option<&'a str> {
    let mut it = values(headers, name);
    let first = it.next()?;
    it.next().is_none().then_some(first)
}

/// The session's sealed value, joined from its chunks when it was split
/// (the first cookie then reads `N.` and the rest follow as `-1` ..
/// `-{N-1}`). Borrowed when it is one cookie (the common case: no
/// allocation). `None` when absent, sent twice, or a chunk is missing.
pub fn session_value(headers: &HeaderMap) -> Option<std::borrow::Cow<'_, str>> {
    let first = single(headers, SESSION)?;
    // base64url has no `.`: only a split session starts `N.` (one digit).
    let Some((n, part)) = split_count(first) else {
        return Some(std::borrow::Cow::Borrowed(first));
    };
    let n: usize = n.parse().ok().filter(|n| (2..=MAX_CHUNKS).contains(n))?;
    let mut out = String::with_capacity(n * MAX_VALUE);
    out.push_str(part);
    for i in 1..n {
        out.push_str(single(headers, &chunk_name(i))?);
    }
    Some(std::borrow::Cow::Owned(out))
}

/// How many session cookies the request carries (the first's count, or
/// 1), so a shorter new session clears the chunks it no longer uses.
pub fn session_chunks(headers: &HeaderMap) -> usize {
    match single(headers, SESSION).and_then(split_count) {
        Some((n, _)) => n.parse().ok().filter(|n| *n <= MAX_CHUNKS).unwrap_or(1),
        None => 1,
    }
}

/// `N.rest` → `(N, rest)` when the value starts with one character and a
/// `.` (looked for there only, not across kilobytes of value).
fn split_count(v: &str) -> Option<(&str, &str)> {
    (v.as_bytes().get(1) == Some(&b'.')).then(|| (&v[..1], &v[2..]))
}

fn chunk_name(i: usize) -> String {
    format!("{SESSION}-{i}")
}

/// `Set-Cookie` lines for a sealed session living `max_age` more seconds,
/// split when longer than [`MAX_VALUE`]; chunks the browser holds beyond
/// the new count (`had`) are cleared. `None` when it would need more than
/// [`MAX_CHUNKS`] cookies.
pub fn set_session(sealed: &str, max_age: i64, had: usize) -> Option<Vec<HeaderValue>> {
    let mut out = Vec::new();
    let n = sealed.len().div_ceil(MAX_VALUE).max(1);
    if n > MAX_CHUNKS {
        return None;
    }
    if n == 1 {
        out.push(set(SESSION, sealed, max_age)?);
    } else {
        let parts: Vec<&str> = (0..n)
            .map(|i| &sealed[i * MAX_VALUE..((i + 1) * MAX_VALUE).min(sealed.len())])
            .collect();
        out.push(set(SESSION, &format!("{n}.{}", parts[0]), max_age)?);
        for (i, p) in parts.iter().enumerate().skip(1) {
            out.push(set(&chunk_name(i), p, max_age)?);
        }
    }
    for i in n..had.min(MAX_CHUNKS) {
        out.push(clear(&chunk_name(i))?);
    }
    Some(out)
}

/// `Set-Cookie` lines that end the session in this browser.
pub fn clear_session(had: usize) -> Vec<HeaderValue> {
    std::iter::once(clear(SESSION))
        .chain((1..had.clamp(1, MAX_CHUNKS)).map(|i| clear(&chunk_name(i))))
        .flatten()
        .collect()
}

/// A `__Host-` cookie (`Secure; Path=/`, no `Domain`), `HttpOnly` (no
/// script reads it) and `SameSite=Lax` (sent on a top-level navigation
/// from the provider back to us, never on a cross-site subrequest or
/// POST).
pub fn set(name: &str, value: &str, max_age: i64) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={}",
        max_age.max(0)
    ))
    .ok()
}

pub fn clear(name: &str) -> Option<HeaderValue> {
    set(name, "", 0)
}

/// Removes every gatehouse cookie (`__Host-gatehouse-…`), and any pair
/// that names one, from the request's `Cookie` fields: the session is the gateway's, never the
/// backend's. Fields left empty are removed.
pub fn strip_ours(headers: &mut HeaderMap) {
    const OURS: &str = "__Host-gatehouse-";
    // Built once: making a searcher costs more than most searches.
    static FINDER: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(OURS));
    let finder: &memchr::memmem::Finder<'static> = &FINDER;
    let has_ours = headers
        .get_all(header::COOKIE)
        .iter()
        .any(|v| finder.find(v.as_bytes()).is_some());
    if !has_ours {
        return;
    }
    let kept: Vec<HeaderValue> = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| {
            let mut out = Vec::with_capacity(64);
            // Anywhere in the pair, not only as its name: a lenient
            // backend parser may split `a=1 __Host-gatehouse-…=x` (no `;`)
            // into two cookies.
            for p in pairs(v.as_bytes())
                .map(<[u8]>::trim_ascii)
                .filter(|p| !p.is_empty() && finder.find(p).is_none())
            {
                if !out.is_empty() {
                    out.extend_from_slice(b"; ");
                }
                out.extend_from_slice(p);
            }
            (!out.is_empty())
                .then(|| HeaderValue::from_bytes(&out).ok())
                .flatten()
        })
        .collect();
    headers.remove(header::COOKIE);
    for v in kept {
        headers.append(header::COOKIE, v);
    }
}

/// Random bytes as base64url: `state`, `nonce`, PKCE verifiers.
pub fn random_token(bytes: usize) -> anyhow::Result<String> {
    let mut b = vec![0u8; bytes];
    aws_lc_rs::rand::fill(&mut b).map_err(|_| anyhow::anyhow!("no randomness"))?;
    Ok(URL_SAFE_NO_PAD.encode(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sealer(keys: &[&[u8]]) -> Sealer {
        Sealer::new(&keys.iter().map(|k| k.to_vec()).collect::<Vec<_>>()).expect("sealer")
    }

    fn cookie_headers(line: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::COOKIE, HeaderValue::from_str(line).expect("value"));
        h
    }

    #[test]
    fn a_cookie_opens_only_with_our_keys_for_its_purpose_and_survives_key_rotation() {
        let old = sealer(&[&[1u8; 32]]);
        let sealed = old.seal(Purpose::Session, b"hello").expect("seal");
        assert_eq!(
            old.open(Purpose::Session, &sealed).as_deref(),
            Some(&b"hello"[..])
        );
        assert!(old.open(Purpose::Login, &sealed).is_none(), "purpose bound");
        let rotated = sealer(&[&[2u8; 32], &[1u8; 32]]);
        assert_eq!(
            rotated.open(Purpose::Session, &sealed).as_deref(),
            Some(&b"hello"[..])
        );
        assert!(sealer(&[&[2u8; 32]])
            .open(Purpose::Session, &sealed)
            .is_none());
        // Any flipped character is refused.
        let mut bytes = sealed.into_bytes();
        bytes[20] = if bytes[20] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).expect("ascii");
        assert!(old.open(Purpose::Session, &tampered).is_none());
        assert!(old.open(Purpose::Session, "").is_none());
        assert!(old.open(Purpose::Session, "!!!").is_none());
    }

    #[test]
    fn a_long_session_is_split_over_cookies_and_read_back_whole() {
        let sealed: String = "x".repeat(MAX_VALUE * 2 + 10);
        let lines = set_session(&sealed, 60, 1).expect("fits");
        assert_eq!(lines.len(), 3);
        let pairs: Vec<String> = lines
            .iter()
            .map(|l| {
                l.to_str()
                    .expect("ascii")
                    .split(';')
                    .next()
                    .expect("pair")
                    .to_owned()
            })
            .collect();
        for l in &lines {
            let l = l.to_str().expect("ascii");
            assert!(l.len() <= 4096, "{}", l.len());
            assert!(l.contains("; Path=/; Secure; HttpOnly; SameSite=Lax"));
        }
        let h = cookie_headers(&format!("other=1; {}", pairs.join("; ")));
        assert_eq!(session_value(&h).as_deref(), Some(sealed.as_str()));
        assert_eq!(session_chunks(&h), 3);
        // A missing chunk is no session.
        let h = cookie_headers(&pairs[..2].join("; "));
        assert!(session_value(&h).is_none());
        // Shrinking clears the chunks no longer used.
        let lines = set_session("short", 60, 3).expect("fits");
        assert_eq!(lines.len(), 3);
        assert!(lines[2].to_str().expect("ascii").contains("Max-Age=0"));
        assert!(set_session(&"x".repeat(MAX_SEALED + 1), 60, 1).is_none());
    }

    #[test]
    fn a_session_cookie_sent_twice_is_no_session() {
        let h = cookie_headers(&format!("{SESSION}=a; {SESSION}=b"));
        assert!(session_value(&h).is_none());
    }

    #[test]
    fn gatehouse_cookies_never_reach_the_backend_and_others_do() {
        let mut h = cookie_headers(&format!("a=1; {SESSION}=s; {LOGIN_PREFIX}abc=l; b=2"));
        h.append(
            header::COOKIE,
            HeaderValue::from_static("__Host-gatehouse-session-1=x"),
        );
        strip_ours(&mut h);
        let all: Vec<&str> = h
            .get_all(header::COOKIE)
            .iter()
            .map(|v| v.to_str().expect("ascii"))
            .collect();
        assert_eq!(all, vec!["a=1; b=2"]);
    }
}
