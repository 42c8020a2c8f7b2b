//! The outbound HTTP(S) client for control-plane calls (JWKS, revocation
//! feed): web PKI roots plus an optional private CA, TLS 1.2+, HTTP/1.1
//! and HTTP/2.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use http_body_util::Empty;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::{pem::PemObject, CertificateDer};

pub type HttpClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The same client for requests with a body (token endpoint, authority
/// calls).
pub type PostClient =
    Client<hyper_rustls::HttpsConnector<HttpConnector>, http_body_util::Full<Bytes>>;

pub fn build(ca_file: Option<&Path>, connect_timeout: Duration) -> anyhow::Result<HttpClient> {
    build_for(ca_file, connect_timeout)
}

/// A client that accepts exactly the given end-entity certificates, with
/// no name check: for a gateway reaching the authority embedded in its own
/// process over loopback, where the certificate (possibly self-signed or
/// for a public name) is known byte for byte. The handshake signature is
/// still verified against the pinned certificate's key (RFC 8446 §4.4.3).
pub fn build_pinned(
    pinned: Vec<CertificateDer<'static>>,
    connect_timeout: Duration,
) -> anyhow::Result<HttpClient> {
    build_pinned_for(pinned, connect_timeout)
}

/// [`build_pinned`] for any request body type.
pub fn build_pinned_for<B>(
    pinned: Vec<CertificateDer<'static>>,
    connect_timeout: Duration,
) -> anyhow::Result<Client<hyper_rustls::HttpsConnector<HttpConnector>, B>>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let verifier = Arc::new(Pinned {
        certs: pinned,
        algorithms: provider.signature_verification_algorithms,
    });
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(client(tls, connect_timeout))
}

#[derive(Debug)]
struct Pinned {
    certs: Vec<CertificateDer<'static>>,
    algorithms: rustls::crypto::WebPkiSupportedAlgorithms,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if self.certs.iter().any(|c| c.as_ref() == end_entity.as_ref()) {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The same client for any request body type.
pub fn build_for<B>(
    ca_file: Option<&Path>,
    connect_timeout: Duration,
) -> anyhow::Result<Client<hyper_rustls::HttpsConnector<HttpConnector>, B>>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut roots = rustls::RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        for cert in CertificateDer::pem_file_iter(path)
            .with_context(|| format!("ca_file {}", path.display()))?
        {
            let cert = cert.with_context(|| format!("ca_file {}", path.display()))?;
            roots
                .add(cert)
                .with_context(|| format!("ca_file {}", path.display()))?;
        }
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(client(tls, connect_timeout))
}

fn client<B>(
    tls: rustls::ClientConfig,
    connect_timeout: Duration,
) -> Client<hyper_rustls::HttpsConnector<HttpConnector>, B>
where
    B: http_body::Body + Send + 'static + Unpin,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(connect_timeout));
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new()).build(https)
}
