//! Per-operation cost of the request path's crypto under each backend:
//! JWT signature checks (jsonwebtoken) and a TLS 1.3 connection's work
//! (rustls): the handshake, and sealing + opening a 1 KiB record each way.
//! Best of three timed loops each.

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::Instant;

use jsonwebtoken::{decode, encode, Algorithm, DecodingKey, EncodingKey, Header, Validation};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

fn fixture(n: &str) -> Vec<u8> {
    let p = format!("{}/../../tests/fixtures/{n}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{p}: {e}"))
}

fn best_us(n: u32, mut f: impl FnMut()) -> f64 {
    for _ in 0..n / 10 {
        f();
    }
    (0..3)
        .map(|_| {
            let s = Instant::now();
            for _ in 0..n {
                f();
            }
            s.elapsed().as_secs_f64() * 1e6 / f64::from(n)
        })
        .fold(f64::MAX, f64::min)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    #[cfg(feature = "awslc")]
    {
        let _ = jsonwebtoken::crypto::aws_lc::DEFAULT_PROVIDER.install_default();
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }
    #[cfg(not(feature = "awslc"))]
    {
        let _ = jsonwebtoken::crypto::rust_crypto::DEFAULT_PROVIDER.install_default();
        Arc::new(rustls::crypto::ring::default_provider())
    }
}

fn jwt() {
    let jwks: jsonwebtoken::jwk::JwkSet =
        serde_json::from_slice(&fixture("jwks.json")).expect("jwks");
    let now = jsonwebtoken::get_current_timestamp();
    let claims = serde_json::json!({"iss": "https://issuer.test", "aud": "app", "sub": "u",
        "exp": now + 3600, "iat": now});
    let secret = String::from_utf8(fixture("hs256.secret")).expect("utf8");
    let secret = secret.trim().as_bytes();
    let jwk = |kid: &str| DecodingKey::from_jwk(jwks.find(kid).expect("kid")).expect("key");
    let cases = [
        (
            Algorithm::RS256,
            "test-rs256",
            EncodingKey::from_rsa_pem(&fixture("rs256.key.pem")),
            jwk("test-rs256"),
        ),
        (
            Algorithm::ES256,
            "test-es256",
            EncodingKey::from_ec_pem(&fixture("es256.key.pem")),
            jwk("test-es256"),
        ),
        (
            Algorithm::EdDSA,
            "test-eddsa",
            EncodingKey::from_ed_pem(&fixture("eddsa.key.pem")),
            jwk("test-eddsa"),
        ),
        (
            Algorithm::HS256,
            "hs",
            Ok(EncodingKey::from_secret(secret)),
            DecodingKey::from_secret(secret),
        ),
    ];
    for (alg, kid, ek, dk) in cases {
        let mut h = Header::new(alg);
        h.kid = Some(kid.into());
        let token = encode(&h, &claims, &ek.expect("signing key")).expect("sign");
        let mut v = Validation::new(alg);
        v.set_audience(&["app"]);
        v.set_issuer(&["https://issuer.test"]);
        let n = if alg == Algorithm::HS256 {
            200_000
        } else {
            5_000
        };
        let us = best_us(n, || {
            let ok = decode::<serde_json::Value>(std::hint::black_box(&token), &dk, &v);
            assert!(ok.is_ok());
        });
        println!("jwt {alg:?} verify: {us:.2} us");
    }
}

/// Moves every pending TLS byte from one side to the other.
fn pump(
    from: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl Sized>>,
    to: &mut impl std::ops::DerefMut<Target = rustls::ConnectionCommon<impl Sized>>,
) {
    let mut buf = Vec::new();
    while from.wants_write() {
        from.write_tls(&mut buf).expect("write_tls");
    }
    let mut rd = &buf[..];
    while !rd.is_empty() {
        to.read_tls(&mut rd).expect("read_tls");
        to.process_new_packets().expect("process");
    }
}

fn tls() {
    let p = provider();
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(&fixture("server.crt.pem"))
            .collect::<Result<_, _>>()
            .expect("cert");
    let key = PrivateKeyDer::from_pem_slice(&fixture("server.key.pem")).expect("key");
    let server = Arc::new(
        rustls::ServerConfig::builder_with_provider(p.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .expect("server config"),
    );
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(&fixture("ca.crt.pem")) {
        roots.add(c.expect("ca")).expect("add ca");
    }
    let client = Arc::new(
        rustls::ClientConfig::builder_with_provider(p)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth(),
    );
    let connect = || {
        let mut c = rustls::ClientConnection::new(
            client.clone(),
            ServerName::try_from("localhost").expect("name"),
        )
        .expect("client");
        let mut s = rustls::ServerConnection::new(server.clone()).expect("server");
        while c.is_handshaking() || s.is_handshaking() {
            pump(&mut c, &mut s);
            pump(&mut s, &mut c);
        }
        (c, s)
    };
    let us = best_us(1_000, || {
        std::hint::black_box(connect());
    });
    println!("tls13 handshake (P-256 certificate), client + server: {us:.1} us");
    let (mut c, mut s) = connect();
    let msg = [7u8; 1024];
    let mut got = [0u8; 1024];
    let us = best_us(100_000, || {
        c.writer().write_all(&msg).expect("write");
        pump(&mut c, &mut s);
        s.reader().read_exact(&mut got).expect("read");
        s.writer().write_all(&msg).expect("write");
        pump(&mut s, &mut c);
        c.reader().read_exact(&mut got).expect("read");
    });
    println!("tls13 1 KiB each way (seal + open twice): {us:.2} us");
}

fn main() {
    jwt();
    tls();
}
