//! The README's configuration reference must name every key the config
//! structs accept. The key lists come from the structs themselves: serde's
//! "unknown field" error lists every accepted field.

use gatehouse::config::*;
use serde::de::DeserializeOwned;

fn keys_of<T: DeserializeOwned>() -> Vec<String> {
    let err = match serde_saphyr::from_str::<T>("__probe__: 1\n") {
        Ok(_) => panic!("probe accepted"),
        Err(e) => e.to_string(),
    };
    // "unknown field `__probe__`, expected one of a, b, c" (first line).
    let first = err.lines().next().unwrap_or("");
    let list = first
        .split_once("expected one of ")
        .or_else(|| first.split_once("expected "))
        .map(|(_, rest)| rest.to_owned())
        .unwrap_or_else(|| panic!("no field list in: {err}"));
    list.split(',')
        .map(|k| k.trim().trim_matches('`').to_owned())
        .filter(|k| !k.is_empty())
        .collect()
}

#[test]
fn readme_documents_every_config_key() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).expect("README");
    let sections: Vec<(&str, Vec<String>)> = vec![
        ("top level", keys_of::<Config>()),
        ("listeners", keys_of::<ListenerConfig>()),
        ("tls", keys_of::<TlsConfig>()),
        ("certificates", keys_of::<CertificateConfig>()),
        ("limits", keys_of::<Limits>()),
        ("auth", keys_of::<AuthConfig>()),
        ("issuers", keys_of::<IssuerConfig>()),
        ("jwks", keys_of::<JwksConfig>()),
        ("secrets", keys_of::<SecretSource>()),
        ("routes", keys_of::<RouteConfig>()),
        ("require", keys_of::<Requirement>()),
        ("identity_headers", keys_of::<IdentityHeader>()),
        ("login", keys_of::<LoginConfig>()),
        ("login.private_key_jwt", keys_of::<PrivateKeyJwt>()),
        ("sessions", keys_of::<SessionsConfig>()),
        ("logging", keys_of::<LoggingConfig>()),
        ("admin", keys_of::<AdminConfig>()),
        ("revocation", keys_of::<RevocationConfig>()),
        ("revocation.authority", keys_of::<AuthorityClientConfig>()),
        ("authority", keys_of::<AuthorityConfig>()),
        ("authority.store", keys_of::<StoreConfig>()),
        ("authority.store.redis", keys_of::<RedisStoreConfig>()),
    ];
    let mut missing = Vec::new();
    for (section, keys) in &sections {
        assert!(!keys.is_empty(), "no keys found for {section}");
        for k in keys {
            // `key` in a table, `parent.key` in a dotted row, or `key.child`.
            let documented = readme.contains(&format!("`{k}`"))
                || readme.contains(&format!(".{k}`"))
                || readme.contains(&format!("`{k}."))
                || readme.contains(&format!("`{k}[]"))
                || readme.contains(&format!(".{k}[]"));
            if !documented {
                missing.push(format!("{section}: {k}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "README lacks these config keys: {missing:?}"
    );
}

/// The shipped example configs use only keys and shapes the code accepts
/// (their secrets and files exist only on a real deployment, so this is
/// the parse, not the full `check`).
#[test]
fn shipped_example_configs_parse() {
    for name in [
        "gatehouse.yaml",
        "production.example.yaml",
        "authority-redis.example.yaml",
    ] {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/").to_owned() + name;
        let text = std::fs::read_to_string(&path).expect("example config");
        if let Err(e) = serde_saphyr::from_str::<Config>(&text) {
            panic!("{name}: {e}");
        }
    }
}
