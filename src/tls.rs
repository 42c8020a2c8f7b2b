//! TLS termination: certificates from PEM files, chosen by SNI, TLS 1.2+
//! only, ALPN `h2` and `http/1.1`.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use anyhow::Context;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use crate::config::{LoadedConfig, TlsConfig, TlsVersion};

/// Picks a certificate by SNI: exact name, then a `*.` wildcard entry for
/// the parent domain, then the first configured certificate (clients that
/// send no SNI, or a name we do not serve, still get a handshake).
struct SniResolver {
    default: Arc<CertifiedKey>,
    by_name: HashMap<String, Arc<CertifiedKey>>,
}

impl fmt::Debug for SniResolver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SniResolver")
            .field("names", &self.by_name.keys())
            .finish()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        if let Some(k) = self.by_name.get(name) {
            return Some(k.clone());
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.by_name.get(&format!("*.{parent}")) {
                return Some(k.clone());
            }
        }
        Some(self.default.clone())
    }
}

pub fn server_config(
    tls: &TlsConfig,
    loaded: &LoadedConfig,
) -> anyhow::Result<rustls::ServerConfig> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut default = None;
    let mut by_name = HashMap::new();
    for c in &tls.certificates {
        let key = load_certified_key(
            &loaded.resolve(&c.value.cert),
            &loaded.resolve(&c.value.key),
            &provider,
        )?;
        for n in &c.value.server_names {
            by_name.insert(n.to_ascii_lowercase(), key.clone());
        }
        default.get_or_insert(key);
    }
    let default = default.context("tls needs at least one certificate")?;
    let versions: &[&rustls::SupportedProtocolVersion] = match tls.min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver { default, by_name }));
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(cfg)
}

fn load_certified_key(
    cert: &std::path::Path,
    key: &std::path::Path,
    provider: &CryptoProvider,
) -> anyhow::Result<Arc<CertifiedKey>> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("certificate {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("certificate {}", cert.display()))?;
    if chain.is_empty() {
        anyhow::bail!("certificate {}: no PEM certificate found", cert.display());
    }
    // PKCS#8, PKCS#1 (RSA) and SEC1 (EC) are all accepted here.
    let der =
        PrivateKeyDer::from_pem_file(key).with_context(|| format!("key {}", key.display()))?;
    let signing = provider
        .key_provider
        .load_private_key(der)
        .with_context(|| format!("key {}", key.display()))?;
    let ck = CertifiedKey::new(chain, signing);
    ck.keys_match().with_context(|| {
        format!(
            "key {} does not belong to certificate {}",
            key.display(),
            cert.display()
        )
    })?;
    Ok(Arc::new(ck))
}
