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

/// The names each configured certificate serves, by the SNI names that
/// select it: a request on a connection whose SNI picked a certificate
/// must name (in `Host`) a host that certificate serves (RFC 9110 §7.4:
/// otherwise 421 Misdirected Request). Connections without SNI, or with an
/// SNI no certificate names, are not checked.
#[derive(Debug, Default)]
pub struct CertNames {
    by_sni: HashMap<String, Arc<[String]>>,
}

impl CertNames {
    /// The names served alongside `sni` (exact, then `*.` wildcard).
    pub fn for_sni(&self, sni: &str) -> Option<Arc<[String]>> {
        let sni = sni.to_ascii_lowercase();
        if let Some(n) = self.by_sni.get(&sni) {
            return Some(n.clone());
        }
        let (_, parent) = sni.split_once('.')?;
        self.by_sni.get(&format!("*.{parent}")).cloned()
    }
}

/// Whether `host` (a Host header, maybe with a port) is one of `names`.
pub fn host_served(names: &[String], host: &str) -> bool {
    let host = match host.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.bytes().all(|c| c.is_ascii_digit()) => h,
        _ => host,
    };
    let host = host.trim_end_matches('.');
    names.iter().any(|n| {
        n.eq_ignore_ascii_case(host)
            || n.strip_prefix("*.").is_some_and(|parent| {
                host.split_once('.')
                    .is_some_and(|(_, p)| p.eq_ignore_ascii_case(parent))
            })
    })
}

/// The end-entity certificate (the first of each PEM chain) of every
/// configured certificate: what a client that pins this listener (an
/// embedded authority's own gateway) accepts.
///
/// Errors: a certificate file that cannot be read or holds no PEM
/// certificate.
pub fn end_entities(
    tls: &TlsConfig,
    loaded: &LoadedConfig,
) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    tls.certificates
        .iter()
        .map(|c| {
            let path = loaded.resolve(&c.value.cert);
            CertificateDer::pem_file_iter(&path)
                .with_context(|| format!("certificate {}", path.display()))?
                .next()
                .with_context(|| {
                    format!("certificate {}: no PEM certificate found", path.display())
                })?
                .with_context(|| format!("certificate {}", path.display()))
        })
        .collect()
}

pub fn server_config(
    tls: &TlsConfig,
    loaded: &LoadedConfig,
) -> anyhow::Result<rustls::ServerConfig> {
    Ok(server_config_with_names(tls, loaded)?.0)
}

pub fn server_config_with_names(
    tls: &TlsConfig,
    loaded: &LoadedConfig,
) -> anyhow::Result<(rustls::ServerConfig, CertNames)> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut default = None;
    let mut by_name = HashMap::new();
    let mut names = CertNames::default();
    for c in &tls.certificates {
        let key = load_certified_key(
            &loaded.resolve(&c.value.cert),
            &loaded.resolve(&c.value.key),
            &provider,
        )?;
        let served: Arc<[String]> = c
            .value
            .server_names
            .iter()
            .map(|n| n.to_ascii_lowercase())
            .collect();
        for n in &c.value.server_names {
            by_name.insert(n.to_ascii_lowercase(), key.clone());
            names.by_sni.insert(n.to_ascii_lowercase(), served.clone());
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
    Ok((cfg, names))
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

#[cfg(test)]
mod tests {
    use super::host_served;

    #[test]
    fn hosts_match_certificate_names_with_ports_case_and_wildcards() {
        let names = ["app.test".to_owned(), "*.apps.test".to_owned()];
        for ok in [
            "app.test",
            "APP.test",
            "app.test:8443",
            "app.test.",
            "a.apps.test",
        ] {
            assert!(host_served(&names, ok), "{ok}");
        }
        for bad in [
            "other.test",
            "apps.test",
            "a.b.apps.test",
            "app.test.evil",
            "",
            "app.test:x",
        ] {
            assert!(!host_served(&names, bad), "{bad}");
        }
    }
}
