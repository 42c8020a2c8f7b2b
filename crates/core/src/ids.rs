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
