//! Identifiers: revocation ids, epochs, internal credentials.

/// 128 random bits, hex: unique token ids without another dependency.
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    if rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut b)
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        b = t.to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// 256 random bits, hex: a credential (the token an embedded authority
/// shares with its own gateway). Unlike [`random_id`] it never falls back
/// to the clock: when the system's random source fails, so does this.
///
/// Errors: the random source failed.
pub fn secret_token() -> anyhow::Result<String> {
    let mut b = [0u8; 32];
    rustls::crypto::aws_lc_rs::default_provider()
        .secure_random
        .fill(&mut b)
        .map_err(|_| anyhow::anyhow!("the system random source failed"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}
