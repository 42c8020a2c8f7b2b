//! The RFC 8725 (JWT Best Current Practices) attack suite against a real
//! gateway process: every hostile token gets 401, never reaches the
//! backend, never makes the gateway fetch anything, and leaves exactly one
//! access-log line that does not contain it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use gatehouse_test_support::*;
use http::StatusCode;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

fn config(backend: SocketAddr) -> String {
    yaml::Config::gateway()
        .issuers(vec![yaml::Issuer::test()
            .with("leeway", "0s")
            .with("max_token_lifetime", "1h")])
        .route(yaml::Route::to(backend))
        .yaml()
}

/// `b64(header).b64(payload).signature` over exactly these bytes, so only
/// the property under test is wrong.
fn signed(header: &[u8], payload: &[u8], alg: Algorithm) -> String {
    let head = format!("{}.{}", b64(header), b64(payload));
    let sig = jsonwebtoken::crypto::sign(head.as_bytes(), &key_for(alg), alg).expect("sign");
    format!("{head}.{sig}")
}

/// The segments as given (any text), signed over exactly that text.
fn signed_segments(h64: &str, p64: &str, alg: Algorithm) -> String {
    let head = format!("{h64}.{p64}");
    let sig = jsonwebtoken::crypto::sign(head.as_bytes(), &key_for(alg), alg).expect("sign");
    format!("{head}.{sig}")
}

fn rs_header() -> Value {
    json!({"alg": "RS256", "typ": "JWT", "kid": "test-rs256"})
}

fn with_header(extra: Value) -> Vec<u8> {
    let mut h = rs_header();
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        h[k] = v;
    }
    h.to_string().into_bytes()
}

fn payload_with(k: &str, v: Value) -> Vec<u8> {
    let mut c = claims("victim");
    c.insert(k.into(), v);
    Value::Object(c).to_string().into_bytes()
}

fn payload_without(k: &str) -> Vec<u8> {
    let mut c = claims("victim");
    c.remove(k);
    Value::Object(c).to_string().into_bytes()
}

fn rs(header: &[u8], payload: &[u8]) -> String {
    signed(header, payload, Algorithm::RS256)
}

/// A listener standing in for any URL a token might point the gateway
/// at: it only counts connections.
async fn trap() -> (SocketAddr, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = l.local_addr().expect("addr");
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    tokio::spawn(async move {
        while let Ok((_s, _)) = l.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
        }
    });
    (addr, n)
}

#[tokio::test]
async fn rfc8725_attack_suite() {
    crypto();
    let backend = Backend::start().await;
    let gw = Proc::start("run", &config(backend.addr), "listening");
    let (trap_addr, fetched) = trap().await;
    let n = now() as i64;
    let good_payload = Value::Object(claims("victim")).to_string().into_bytes();
    let valid = mint(Algorithm::RS256, "victim");
    let parts: Vec<&str> = valid.split('.').collect();
    let other = mint(Algorithm::RS256, "mallory");
    let other_parts: Vec<&str> = other.split('.').collect();
    let rsa_pub = std::fs::read(fixture("rs256.pub.pem")).expect("pub key");
    let url = format!("http://{trap_addr}/keys");
    let hs_confused = |secret: &[u8]| {
        let head = format!(
            "{}.{}",
            b64(json!({"alg": "HS256", "kid": "test-rs256"})
                .to_string()
                .as_bytes()),
            b64(&good_payload)
        );
        let sig = jsonwebtoken::crypto::sign(
            head.as_bytes(),
            &jsonwebtoken::EncodingKey::from_secret(secret),
            Algorithm::HS256,
        )
        .expect("sign");
        format!("{head}.{sig}")
    };
    let dup_payload = |name: &str, first: &str, second: &str| {
        let mut c = claims("victim");
        c.remove(name);
        let body = Value::Object(c).to_string();
        format!(
            "{{\"{name}\":{first},{rest},\"{name}\":{second}}}",
            rest = &body[1..body.len() - 1]
        )
        .into_bytes()
    };
    // `"org": {"name": "a", ..., "name": "b"}`: a name twice inside a
    // claim's object (identity headers read dotted paths into it, and a
    // backend reading the token itself may take the first one).
    let nested_dup = {
        let body = Value::Object(claims("victim")).to_string();
        format!(
            r#"{{"org":{{"name":"a","roles":[{{"x":1}}],"name":"b"}},{}}}"#,
            &body[1..body.len() - 1]
        )
        .into_bytes()
    };
    let deep_dup = {
        let body = Value::Object(claims("victim")).to_string();
        format!(
            r#"{{"org":{{"roles":[{{"x":1,"x":2}}]}},{}}}"#,
            &body[1..body.len() - 1]
        )
        .into_bytes()
    };
    let max_bytes = 8 * 1024;
    let sized = |len: usize| {
        // Pad a claim until the whole token is exactly `len` bytes.
        let mut pad = 0;
        loop {
            let t = rs(
                &rs_header().to_string().into_bytes(),
                &payload_with("pad", json!("x".repeat(pad))),
            );
            if t.len() >= len {
                return t;
            }
            pad += (len - t.len()) * 3 / 4;
            pad = pad.max(1);
            if t.len() + 4 > len {
                pad += 1;
            }
        }
    };
    let mut at_limit = sized(max_bytes);
    while at_limit.len() > max_bytes {
        // Base64 rounds in steps of 4 characters; trim back one step.
        let p = at_limit.len() - max_bytes;
        at_limit = sized(max_bytes - p);
    }
    let over_limit = sized(max_bytes + 1);
    assert!(over_limit.len() > max_bytes);

    // A payload whose base64url has `-`/`_`, in the standard alphabet.
    let std_alphabet = (0..3)
        .map(|i| {
            b64(&payload_with(
                "note",
                json!(format!("{}~~~???>>>", "x".repeat(i))),
            ))
        })
        .find(|p| p.contains('-') || p.contains('_'))
        .expect("a payload with - or _")
        .replace('-', "+")
        .replace('_', "/");
    let cases: Vec<(&str, String)> = vec![
        // `alg: none`, every casing, with and without a signature.
        ("alg none", raw_token(&json!({"alg": "none"}), &Value::Object(claims("victim")), "")),
        ("alg None", raw_token(&json!({"alg": "None"}), &Value::Object(claims("victim")), "")),
        ("alg NONE", raw_token(&json!({"alg": "NONE"}), &Value::Object(claims("victim")), "")),
        ("alg nOnE + sig", raw_token(&json!({"alg": "nOnE"}), &Value::Object(claims("victim")), parts[2])),
        ("alg missing", raw_token(&json!({"typ": "JWT"}), &Value::Object(claims("victim")), parts[2])),
        // Key confusion.
        ("RS256->HS256 with the PEM public key", hs_confused(&rsa_pub)),
        ("RS256->HS256 with the PEM trimmed", hs_confused(String::from_utf8_lossy(&rsa_pub).trim().as_bytes())),
        ("ES256 token against the RSA key", signed(
            json!({"alg": "ES256", "kid": "test-rs256"}).to_string().as_bytes(), &good_payload, Algorithm::ES256)),
        ("RS256 token against the EC key", rs(
            json!({"alg": "RS256", "kid": "test-es256"}).to_string().as_bytes(), &good_payload)),
        // Hostile `kid` values.
        ("kid path traversal", rs(&with_header(json!({"kid": "../../../../../../etc/passwd"})), &good_payload)),
        ("kid SQL", rs(&with_header(json!({"kid": "' OR '1'='1' --"})), &good_payload)),
        ("kid NUL", rs(&with_header(json!({"kid": "test-rs256\u{0000}"})), &good_payload)),
        ("kid 10 KB", rs(&with_header(json!({"kid": "k".repeat(10 * 1024)})), &good_payload)),
        ("kid as number", rs(&with_header(json!({"kid": 7})), &good_payload)),
        // Keys named by the token itself: never fetched, never trusted.
        ("jku", rs(&with_header(json!({"jku": url})), &good_payload)),
        ("x5u", rs(&with_header(json!({"x5u": url})), &good_payload)),
        ("jwk", rs(&with_header(json!({"jwk": {"kty": "oct", "k": "c2VjcmV0"}})), &good_payload)),
        ("x5c", rs(&with_header(json!({"x5c": ["MIIB"]})), &good_payload)),
        ("crit exp", rs(&with_header(json!({"crit": ["exp"]})), &good_payload)),
        ("crit unknown extension", rs(&with_header(json!({"crit": ["urn:x"], "urn:x": true})), &good_payload)),
        ("nested JWT", rs(&with_header(json!({"cty": "JWT"})), valid.as_bytes())),
        ("nested jwt lowercase", rs(&with_header(json!({"cty": "jwt"})), &good_payload)),
        ("nested JWT as a full media type", rs(&with_header(json!({"cty": "application/JWT"})), &good_payload)),
        ("header as a JSON array", rs(br#"["RS256","test-rs256"]"#, &good_payload)),
        ("JWE (5 parts)", format!("{}.{}.{}.{}.{}", b64(br#"{"alg":"RSA-OAEP","enc":"A256GCM"}"#), "a", "b", "c", "d")),
        // Duplicate names.
        ("duplicate exp (expired, then valid)", rs(&rs_header().to_string().into_bytes(), &dup_payload("exp", &(n - 100).to_string(), &(n + 600).to_string()))),
        ("duplicate sub", rs(&rs_header().to_string().into_bytes(), &dup_payload("sub", "\"admin\"", "\"victim\""))),
        ("duplicate jti (revoked one first)", rs(&rs_header().to_string().into_bytes(), &dup_payload("jti", "\"revoked-jti\"", "\"fresh-jti\""))),
        ("duplicate sid", rs(&rs_header().to_string().into_bytes(), &dup_payload("sid", "\"s-1\"", "\"s-2\""))),
        ("duplicate alg in header", rs(br#"{"alg":"RS256","kid":"test-rs256","alg":"none"}"#, &good_payload)),
        ("duplicate name inside a claim's object", rs(&rs_header().to_string().into_bytes(), &nested_dup)),
        ("duplicate name in an object inside an array claim", rs(&rs_header().to_string().into_bytes(), &deep_dup)),
        // Time claims of every wrong shape.
        ("exp string", rs(&rs_header().to_string().into_bytes(), &payload_with("exp", json!((n + 600).to_string())))),
        ("exp fractional, half a second ahead (rounded down: expired)", rs(&rs_header().to_string().into_bytes(), &payload_with("exp", json!(n as f64 + 0.5)))),
        ("exp negative", rs(&rs_header().to_string().into_bytes(), &payload_with("exp", json!(-1)))),
        ("exp huge", rs(&rs_header().to_string().into_bytes(), &payload_with("exp", json!(1e20)))),
        ("exp past u64", rs(&rs_header().to_string().into_bytes(), br#"{"iss":"https://issuer.test","aud":"app","sub":"victim","exp":184467440737095516160}"#)),
        ("exp beyond max_token_lifetime", rs(&rs_header().to_string().into_bytes(), &payload_with("exp", json!(n + 30 * 86_400)))),
        // Issued 2 h ago, expiring in 10 min: 2 h 10 min in all, over the 1 h
        // maximum; revoked now, it would pass once its entry expired.
        ("whole lifetime exp - iat beyond max_token_lifetime", rs(&rs_header().to_string().into_bytes(), &payload_with("iat", json!(n - 7200)))),
        ("iat missing (RFC 9068 §2.2)", rs(&rs_header().to_string().into_bytes(), &payload_without("iat"))),
        ("exp null", rs(&rs_header().to_string().into_bytes(), &payload_with("exp", Value::Null))),
        ("nbf string", rs(&rs_header().to_string().into_bytes(), &payload_with("nbf", json!(n.to_string())))),
        ("nbf fractional, negative", rs(&rs_header().to_string().into_bytes(), &payload_with("nbf", json!(-0.5)))),
        ("nbf negative", rs(&rs_header().to_string().into_bytes(), &payload_with("nbf", json!(-5)))),
        ("nbf huge", rs(&rs_header().to_string().into_bytes(), &payload_with("nbf", json!(1e20)))),
        ("nbf future", rs(&rs_header().to_string().into_bytes(), &payload_with("nbf", json!(n + 600)))),
        ("iat string", rs(&rs_header().to_string().into_bytes(), &payload_with("iat", json!(n.to_string())))),
        ("iat fractional, huge", rs(&rs_header().to_string().into_bytes(), &payload_with("iat", json!(1e17 + 0.5)))),
        ("iat negative", rs(&rs_header().to_string().into_bytes(), &payload_with("iat", json!(-1)))),
        ("iat huge", rs(&rs_header().to_string().into_bytes(), &payload_with("iat", json!(1e20)))),
        ("iat in the future (dodges sub revocations)", rs(&rs_header().to_string().into_bytes(), &payload_with("iat", json!(n + 3600)))),
        // Audience of every wrong shape.
        ("aud other string", rs(&rs_header().to_string().into_bytes(), &payload_with("aud", json!("other")))),
        ("aud array without us", rs(&rs_header().to_string().into_bytes(), &payload_with("aud", json!(["other", "more"])))),
        ("aud empty array", rs(&rs_header().to_string().into_bytes(), &payload_with("aud", json!([])))),
        ("aud number", rs(&rs_header().to_string().into_bytes(), &payload_with("aud", json!(7)))),
        ("aud object", rs(&rs_header().to_string().into_bytes(), &payload_with("aud", json!({"app": true})))),
        ("iss as an array naming the issuer", rs(&rs_header().to_string().into_bytes(), &payload_with("iss", json!([ISS])))),
        ("iss with a trailing slash", rs(&rs_header().to_string().into_bytes(), &payload_with("iss", json!(format!("{ISS}/"))))),
        // Genuine tokens of the issuer meant for something else.
        ("typ logout+jwt", rs(&with_header(json!({"typ": "logout+jwt"})), &good_payload)),
        ("typ id_token+jwt", rs(&with_header(json!({"typ": "id_token+jwt"})), &good_payload)),
        ("events claim (a security event)", rs(&rs_header().to_string().into_bytes(), &payload_with("events", json!({"urn:x": {}})))),
        ("sub as array (dodges sub revocations)", rs(&rs_header().to_string().into_bytes(), &payload_with("sub", json!(["victim"])))),
        ("sid as object", rs(&rs_header().to_string().into_bytes(), &payload_with("sid", json!({"v": 1})))),
        // Encodings.
        ("payload not UTF-8", rs(&rs_header().to_string().into_bytes(), b"{\"iss\":\"https://issuer.test\",\"sub\":\"\xff\xfe\"}")),
        ("payload not an object", rs(&rs_header().to_string().into_bytes(), b"[1,2,3]")),
        ("payload with padding", signed_segments(&b64(&rs_header().to_string().into_bytes()), &format!("{}==", b64(&good_payload)), Algorithm::RS256)),
        ("header with padding", signed_segments(&format!("{}=", b64(&rs_header().to_string().into_bytes())), &b64(&good_payload), Algorithm::RS256)),
        ("whitespace in a segment", signed_segments(&b64(&rs_header().to_string().into_bytes()), &format!("{} {}", &b64(&good_payload)[..10], &b64(&good_payload)[10..]), Algorithm::RS256)),
        ("standard base64 alphabet", signed_segments(&b64(&rs_header().to_string().into_bytes()), &std_alphabet, Algorithm::RS256)),
        ("overlong segment (bytes after the JSON)", rs(&rs_header().to_string().into_bytes(), &[good_payload.as_slice(), b"\x00\x00garbage"].concat())),
        ("signature with padding", format!("{}.{}.{}==", parts[0], parts[1], parts[2])),
        ("empty segments", "..".into()),
        ("two segments", format!("{}.{}", parts[0], parts[1])),
        ("four segments", format!("{valid}.{}", parts[2])),
        // Signatures moved between tokens, and size.
        ("another token's signature", format!("{}.{}.{}", parts[0], parts[1], other_parts[2])),
        ("another token's payload", format!("{}.{}.{}", parts[0], other_parts[1], parts[2])),
        ("one byte over the size limit", over_limit),
    ];

    let hits_before = backend.hits();
    for (name, token) in &cases {
        let (status, _) = status_of(gw.addr, token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{name}");
    }
    assert_eq!(
        backend.hits(),
        hits_before,
        "a hostile token reached the backend"
    );
    assert_eq!(
        fetched.load(Ordering::SeqCst),
        0,
        "a token made the gateway fetch a URL"
    );

    // Positive controls: the suite fails for the right reasons only.
    let controls: Vec<(&str, String)> = vec![
        (
            "aud array with us",
            rs(
                &rs_header().to_string().into_bytes(),
                &payload_with("aud", json!(["other", AUD])),
            ),
        ),
        (
            "aud string",
            rs(
                &rs_header().to_string().into_bytes(),
                &payload_with("aud", json!(AUD)),
            ),
        ),
        (
            "exp fractional (rounded down, still ahead)",
            rs(
                &rs_header().to_string().into_bytes(),
                &payload_with("exp", json!(n as f64 + 600.5)),
            ),
        ),
        (
            "nbf fractional, half a second ago (rounded up: now)",
            rs(
                &rs_header().to_string().into_bytes(),
                &payload_with("nbf", json!(n as f64 - 0.5)),
            ),
        ),
        (
            "iat fractional, half a second ago (rounded down)",
            rs(
                &rs_header().to_string().into_bytes(),
                &payload_with("iat", json!(n as f64 - 0.5)),
            ),
        ),
        ("exactly at the size limit", at_limit.clone()),
        ("plain valid", valid.clone()),
    ];
    assert_eq!(at_limit.len(), max_bytes, "control token not at the limit");
    for (name, token) in &controls {
        let (status, d) = status_of(gw.addr, token).await;
        assert_eq!(status, StatusCode::OK, "{name}: {d}");
    }
    assert_eq!(backend.hits(), hits_before + controls.len());

    // One access-log line per refused request, none containing its token.
    let lines = within(std::time::Duration::from_secs(3), || async {
        let l = gw.lines.lock().map(|l| l.len()).unwrap_or(0);
        l > cases.len()
    })
    .await;
    assert!(lines.is_some());
    std::thread::sleep(std::time::Duration::from_millis(200));
    let log = gw.lines.lock().expect("lines").clone();
    let refused: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("gatehouse::access") && l.contains("\"status\":401"))
        .collect();
    assert_eq!(
        refused.len(),
        cases.len(),
        "one access line per refused request"
    );
    for (name, token) in &cases {
        for l in &log {
            let secretish = token.rsplit('.').next().filter(|s| s.len() >= 16);
            assert!(
                !(token.len() >= 16 && l.contains(token.as_str()))
                    && secretish.is_none_or(|s| !l.contains(s)),
                "{name}: token written to the log: {l}"
            );
        }
    }
}

/// A gateway process with the suite's config plus `issuer_extra` lines in
/// the issuer block.
fn gateway_with(backend: SocketAddr, issuer_extra: &str) -> Proc {
    let cfg = config(backend).replace(
        "    max_token_lifetime: 1h\n",
        &format!("    max_token_lifetime: 1h\n{issuer_extra}"),
    );
    Proc::start("run", &cfg, "listening")
}

fn header_typ(typ: Value) -> Vec<u8> {
    let mut h = json!({"alg": "RS256", "kid": "test-rs256"});
    if !typ.is_null() {
        h["typ"] = typ;
    }
    h.to_string().into_bytes()
}

/// OpenID Connect Back-Channel Logout 1.0 §2.4: what an identity provider
/// posts to end a session, signed with the same key as its access tokens.
fn logout_claims() -> Value {
    let n = now();
    json!({"iss": ISS, "aud": AUD, "iat": n, "exp": n + 120, "jti": format!("lt-{n}"),
           "sub": "victim", "sid": "idp-session-1",
           "events": {"http://schemas.openid.net/event/backchannel-logout": {}}})
}

#[tokio::test]
async fn a_logout_token_presented_as_a_bearer_token_is_refused() {
    crypto();
    let backend = Backend::start().await;
    let gw = gateway_with(backend.addr, "");
    let lt = logout_claims().to_string().into_bytes();
    for typ in [
        json!("logout+jwt"),
        json!("application/logout+jwt"),
        Value::Null,
    ] {
        let (status, description) = status_of(gw.addr, &rs(&header_typ(typ.clone()), &lt)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "typ {typ}");
        assert!(
            description.contains("not an access token"),
            "typ {typ}: {description}"
        );
    }
    assert_eq!(backend.hits(), 0, "a logout token reached the backend");
}

#[tokio::test]
async fn a_security_event_token_with_events_is_refused() {
    crypto();
    let backend = Backend::start().await;
    let gw = gateway_with(backend.addr, "");
    // RFC 8417 §2.2: a SET carries `events`; here with every access-token
    // claim too, and typed as a plain JWT or not at all.
    let mut set = claims("victim");
    set.insert(
        "events".into(),
        json!({"https://schemas.openid.net/secevent/risc/event-type/account-disabled": {}}),
    );
    let set = Value::Object(set).to_string().into_bytes();
    for typ in [json!("JWT"), Value::Null, json!("secevent+jwt")] {
        let (status, description) = status_of(gw.addr, &rs(&header_typ(typ.clone()), &set)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "typ {typ}");
        assert!(
            description.contains("not an access token") || description.contains("security event"),
            "typ {typ}: {description}"
        );
    }
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn access_tokens_typed_jwt_or_at_jwt_or_untyped_pass_and_other_types_are_refused() {
    crypto();
    let backend = Backend::start().await;
    let gw = gateway_with(backend.addr, "");
    let payload = Value::Object(claims("victim")).to_string().into_bytes();
    // RFC 7515 §4.1.9: media types compare case-insensitively and the
    // `application/` prefix may be left out.
    let accepted = [
        Value::Null,
        json!("JWT"),
        json!("jwt"),
        json!("at+jwt"),
        json!("AT+JWT"),
        json!("application/at+jwt"),
        json!("Application/JWT"),
    ];
    for typ in &accepted {
        let (status, d) = status_of(gw.addr, &rs(&header_typ(typ.clone()), &payload)).await;
        assert_eq!(status, StatusCode::OK, "typ {typ}: {d}");
    }
    assert_eq!(backend.hits(), accepted.len());
    let refused = [
        json!("id_token+jwt"),
        json!("logout+jwt"),
        json!("secevent+jwt"),
        json!("dpop+jwt"),
        json!("JOSE"),
        json!("JOSE+JSON"),
        json!("at+jwt; charset=utf-8"),
        json!("application/application/at+jwt"),
        json!(""),
        json!(7),
        json!(["at+jwt"]),
    ];
    for typ in &refused {
        let (status, d) = status_of(gw.addr, &rs(&header_typ(typ.clone()), &payload)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "typ {typ}");
        assert!(!d.is_empty(), "typ {typ}: a reason is given");
    }
    // `"typ": null` is not "no typ".
    let null_typ = rs(
        json!({"alg": "RS256", "kid": "test-rs256", "typ": null})
            .to_string()
            .as_bytes(),
        &payload,
    );
    assert_eq!(
        status_of(gw.addr, &null_typ).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(backend.hits(), accepted.len());
}

#[tokio::test]
async fn with_require_at_jwt_an_id_token_is_refused() {
    crypto();
    let backend = Backend::start().await;
    let gw = gateway_with(backend.addr, "    require_at_jwt: true\n");
    // An OpenID Connect ID token (Core §2): audience is the client, a
    // nonce, no `typ` (or `JWT`); signed with the same key.
    let n = now();
    let id_token = json!({"iss": ISS, "aud": AUD, "sub": "victim", "iat": n, "exp": n + 300,
                          "nonce": "n-0S6_WzA2Mj", "azp": AUD, "auth_time": n})
    .to_string()
    .into_bytes();
    for typ in [Value::Null, json!("JWT")] {
        let (status, d) = status_of(gw.addr, &rs(&header_typ(typ.clone()), &id_token)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "typ {typ}");
        assert!(d.contains("at+jwt"), "typ {typ}: {d}");
    }
    assert_eq!(backend.hits(), 0);
    // RFC 9068 §2.1: the access token itself, typed.
    let access = Value::Object(claims("victim")).to_string().into_bytes();
    for typ in [json!("at+jwt"), json!("application/at+jwt")] {
        let (status, d) = status_of(gw.addr, &rs(&header_typ(typ.clone()), &access)).await;
        assert_eq!(status, StatusCode::OK, "typ {typ}: {d}");
    }
    assert_eq!(backend.hits(), 2);
}

#[tokio::test]
async fn an_iss_array_naming_the_issuer_is_refused() {
    crypto();
    let backend = Backend::start().await;
    let gw = gateway_with(backend.addr, "");
    let token = rs(
        &rs_header().to_string().into_bytes(),
        &payload_with("iss", json!([ISS])),
    );
    let (status, d) = status_of(gw.addr, &token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(d, "token issuer is not a string");
    assert_eq!(backend.hits(), 0);
}

#[tokio::test]
async fn a_token_naming_two_different_clients_is_refused() {
    // A `client_id` revocation must have one client to match: with `azp`
    // and `client_id` differing, one reading would escape it.
    crypto();
    let backend = Backend::start().await;
    let gw = gateway_with(backend.addr, "");
    let two = token_with(|c| {
        c.insert("azp".into(), json!("other-client"));
        c.insert("client_id".into(), json!("revoked-client"));
    });
    let (status, d) = status_of(gw.addr, &two).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(d, "token names two clients (azp and client_id differ)");
    assert_eq!(backend.hits(), 0);
    let same = token_with(|c| {
        c.insert("azp".into(), json!("one-client"));
        c.insert("client_id".into(), json!("one-client"));
    });
    assert_eq!(status_of(gw.addr, &same).await.0, StatusCode::OK);
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn a_fractional_exp_is_accepted_and_rounded_down() {
    crypto();
    let backend = Backend::start().await;
    let gw = gateway_with(backend.addr, "");
    let n = now() as f64;
    let hour_and_a_half_second = rs(
        &rs_header().to_string().into_bytes(),
        &payload_with("exp", json!(n + 3599.5)),
    );
    let (status, d) = status_of(gw.addr, &hour_and_a_half_second).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(backend.hits(), 1);
    // `exp = now + 0.5` rounds down to the current second: expired at once
    // (RFC 7519 §4.1.4: not accepted on or after `exp`).
    let half_a_second = rs(
        &rs_header().to_string().into_bytes(),
        &payload_with("exp", json!(now() as f64 + 0.5)),
    );
    let (status, d) = status_of(gw.addr, &half_a_second).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(d, "token has expired");
    assert_eq!(backend.hits(), 1);
}

#[tokio::test]
async fn a_fractional_nbf_half_a_second_ahead_is_not_yet_valid() {
    crypto();
    let backend = Backend::start().await;
    let gw = gateway_with(backend.addr, "");
    // `nbf = now + 0.5` rounds up to the next second. Whether the request
    // lands before it depends on the clock, so the check counts only for an
    // attempt that started and ended within one second (retried otherwise).
    let mut judged = false;
    let mut admitted_later = 0;
    for _ in 0..20 {
        let n = now();
        let token = rs(
            &rs_header().to_string().into_bytes(),
            &payload_with("nbf", json!(n as f64 + 0.5)),
        );
        let (status, d) = status_of(gw.addr, &token).await;
        if now() != n {
            // It may have reached the gateway after `nbf`, rightly passing.
            admitted_later += usize::from(status == StatusCode::OK);
            continue;
        }
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        assert_eq!(d, "token is not valid yet");
        judged = true;
        break;
    }
    assert!(judged, "no attempt fitted in one second");
    assert_eq!(backend.hits(), admitted_later);
}

#[tokio::test]
async fn logout_tokens_are_verified_as_logout_tokens_and_access_tokens_are_not() {
    crypto();
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gatehouse.yaml");
    std::fs::write(&path, config("127.0.0.1:9".parse().expect("addr"))).expect("config");
    let loaded = gatehouse::config::load(&path).expect("load");
    let v = gatehouse::auth::Verifier::from_config(&loaded)
        .await
        .expect("verifier");
    let lt = |typ: Value, f: &dyn Fn(&mut Value)| {
        let mut c = logout_claims();
        f(&mut c);
        rs(&header_typ(typ), c.to_string().as_bytes())
    };
    let id = v
        .verify_logout_token(&lt(json!("logout+jwt"), &|_| {}))
        .await
        .expect("a logout token");
    assert_eq!(id.sid.as_deref(), Some("idp-session-1"));
    // Back-Channel Logout 1.0 §2.4: `typ` may be absent, `exp` too.
    for (name, token) in [
        ("untyped", lt(Value::Null, &|_| {})),
        (
            "application/ prefix",
            lt(json!("application/logout+jwt"), &|_| {}),
        ),
        (
            "no exp",
            lt(json!("logout+jwt"), &|c| {
                drop(c.as_object_mut().map(|o| o.remove("exp")))
            }),
        ),
        (
            "sid only",
            lt(json!("logout+jwt"), &|c| {
                drop(c.as_object_mut().map(|o| o.remove("sub")))
            }),
        ),
    ] {
        assert!(v.verify_logout_token(&token).await.is_ok(), "{name}");
    }
    for (name, token) in [
        ("typed as an access token", lt(json!("at+jwt"), &|_| {})),
        ("typed JWT", lt(json!("JWT"), &|_| {})),
        (
            "with a nonce",
            lt(json!("logout+jwt"), &|c| c["nonce"] = json!("n")),
        ),
        (
            "without events",
            lt(json!("logout+jwt"), &|c| {
                drop(c.as_object_mut().map(|o| o.remove("events")))
            }),
        ),
        (
            "another event",
            lt(json!("logout+jwt"), &|c| c["events"] = json!({"urn:x": {}})),
        ),
        (
            "event not an object",
            lt(
                json!("logout+jwt"),
                &|c| {
                    c["events"] =
                        json!({"http://schemas.openid.net/event/backchannel-logout": true})
                },
            ),
        ),
        (
            "neither sub nor sid",
            lt(json!("logout+jwt"), &|c| {
                if let Some(o) = c.as_object_mut() {
                    o.remove("sub");
                    o.remove("sid");
                }
            }),
        ),
        (
            "iss as an array",
            lt(json!("logout+jwt"), &|c| c["iss"] = json!([ISS])),
        ),
        ("an access token", mint(Algorithm::RS256, "victim")),
    ] {
        assert!(v.verify_logout_token(&token).await.is_err(), "{name}");
    }
    // And the other way round: the logout token is no access token, of any
    // age.
    let token = lt(json!("logout+jwt"), &|_| {});
    assert!(v.verify_any_age(&token).await.is_err());
    assert!(v.verify(&token).await.is_err());
}

#[tokio::test]
async fn an_ed25519_token_under_its_rfc_9864_name_is_accepted_where_eddsa_is() {
    // RFC 9864 §2.2: `Ed25519` is the fully-specified name current
    // providers sign with; configured as such it allows EdDSA over
    // Ed25519 and nothing else.
    crypto();
    let backend = Backend::start().await;
    let cfg = yaml::Config::gateway()
        .issuers(vec![yaml::Issuer::test()
            .with("algorithms", "[Ed25519]")
            .with("max_token_lifetime", "1h")])
        .route(yaml::Route::to(backend.addr))
        .yaml();
    let gw = Proc::start("run", &cfg, "listening");
    let payload = serde_json::to_vec(&Value::Object(claims("ed-user"))).expect("json");
    for alg_name in ["Ed25519", "EdDSA"] {
        let header =
            serde_json::to_vec(&json!({"alg": alg_name, "kid": "test-eddsa"})).expect("json");
        let token = signed(&header, &payload, Algorithm::EdDSA);
        assert_eq!(
            status_of(gw.addr, &token).await.0,
            StatusCode::OK,
            "alg {alg_name}"
        );
    }
    // Only that algorithm: an RS256 token of the same issuer is refused.
    let rs = signed(
        &serde_json::to_vec(&rs_header()).expect("json"),
        &payload,
        Algorithm::RS256,
    );
    assert_eq!(status_of(gw.addr, &rs).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(backend.hits(), 2);
}
