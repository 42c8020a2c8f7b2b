//! `auth` and `issuers`: who may sign tokens, with which algorithms and
//! keys, for which audiences.

use super::*;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `realm` of the `WWW-Authenticate` challenge.
    pub realm: String,
    /// Tokens longer than this many bytes (an integer, at least 64) are
    /// refused before any decoding. Spanned so `check` can name its line.
    pub max_token_bytes: Spanned<usize>,
    /// Verified tokens remembered (by SHA-256 of the whole token) so a
    /// repeated token skips signature verification; 0 disables. Revocation
    /// is still checked on every request.
    pub token_cache_size: u64,
    /// Longest a verified token is remembered (never past its `exp`).
    #[serde(with = "duration")]
    pub token_cache_ttl: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            realm: "gatehouse".to_owned(),
            max_token_bytes: unplaced(DEFAULT_MAX_TOKEN_BYTES),
            token_cache_size: 100_000,
            token_cache_ttl: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Short name used by routes and logs; defaults to `issuer`.
    #[serde(default)]
    pub name: Option<String>,
    /// Exact `iss` value the tokens carry.
    pub issuer: String,
    pub audiences: Vec<String>,
    /// The only algorithms a token may name. With `discovery` it may be
    /// left out: the provider's advertised
    /// `id_token_signing_alg_values_supported` (asymmetric ones only) are
    /// used, read at start.
    #[serde(default)]
    pub algorithms: Vec<Algorithm>,
    #[serde(default)]
    pub jwks: Option<JwksConfig>,
    /// The provider's OpenID Connect Discovery 1.0 document instead of
    /// `jwks`: `url` (default `{issuer}/.well-known/openid-configuration`)
    /// and the same refresh, timeout and transport keys as `jwks`. The key
    /// set comes from its `jwks_uri`; logins take their endpoints from it.
    #[serde(default)]
    pub discovery: Option<JwksConfig>,
    /// Shared secret for HS256/384/512. Never read from the JWKS: an HMAC key
    /// taken from a public key set is exactly the RS/HS confusion attack.
    #[serde(default)]
    pub hmac_secret: Option<SecretSource>,
    #[serde(default = "default_leeway", with = "duration")]
    pub leeway: Duration,
    /// Answer for a token whose `kid` is unknown while the key source is
    /// failing: `reject` (401) or `unavailable` (503, clients retry).
    #[serde(default)]
    pub unknown_kid_when_keys_unavailable: UnknownKidPolicy,
    /// The longest lifetime this issuer gives a token. A revocation can be
    /// forgotten this long after the newest token it matches was issued.
    #[serde(default = "default_max_token_lifetime", with = "duration")]
    pub max_token_lifetime: Duration,
    /// The client ids back-channel logout tokens are addressed to (their
    /// `aud`, OIDC Back-Channel Logout 1.0 §2.4), checked by the authority
    /// only; `audiences` stays the resource's own, so the gateway never
    /// accepts a logout or ID token as a bearer token. Empty: logout
    /// tokens must carry one of `audiences` (the behaviour before this key).
    #[serde(default)]
    pub logout_audiences: Vec<String>,
    /// What a back-channel logout naming a session ends. `subject` (the
    /// default, safe whether or not access tokens carry `sid`): the session
    /// and every token of the subject issued at or before the logout
    /// token's `iat`. `session`: only the `sid` (a logout token without
    /// `sid` still ends the subject's tokens up to its `iat`); choose it
    /// only when every access token of this issuer carries `sid`.
    #[serde(default)]
    pub backchannel_logout: BackchannelScope,
    /// Accept as access tokens only JWTs typed `at+jwt` (RFC 9068 §2.1,
    /// §4), so this issuer's ID tokens and other untyped JWTs are refused.
    /// Off by default: then `typ` may also be absent or `JWT`.
    #[serde(default)]
    pub require_at_jwt: bool,
}

/// See [`IssuerConfig::backchannel_logout`].
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum BackchannelScope {
    Session,
    #[default]
    Subject,
}

impl IssuerConfig {
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.issuer)
    }
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UnknownKidPolicy {
    #[default]
    Reject,
    Unavailable,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwksConfig {
    #[serde(default)]
    pub file: Option<PathBuf>,
    #[serde(default)]
    pub url: Option<HttpUrl>,
    /// Scheduled re-fetch of a URL key set.
    #[serde(default = "default_jwks_refresh", with = "duration")]
    pub refresh_interval: Duration,
    /// Minimum time between two fetches, whatever triggers them (an unknown
    /// `kid` must not let clients make us hammer the identity provider).
    #[serde(default = "default_jwks_min_refresh", with = "duration")]
    pub min_refresh_interval: Duration,
    #[serde(default = "default_jwks_timeout", with = "duration")]
    pub timeout: Duration,
    /// Extra PEM CA bundle trusted for an `https` JWKS URL (besides the
    /// built-in web PKI roots).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Allow an `http://` URL to a host other than loopback: anyone on the
    /// path can then inject keys. Logged as an error at every start.
    #[serde(default)]
    pub allow_plaintext_http: bool,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
pub enum Algorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    /// Also written `Ed25519` (RFC 9864 §2.2).
    #[serde(alias = "Ed25519")]
    EdDSA,
    HS256,
    HS384,
    HS512,
}

impl Algorithm {
    pub fn is_hmac(self) -> bool {
        matches!(self, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
    }
}

/// `auth` (realm, token size) and every issuer (unique names and `iss`,
/// audiences, algorithms with their secret or key set, the transport rule
/// for a key set URL).
pub(super) fn check(c: &mut Check<'_>) {
    let cfg = &c.loaded.config;
    if cfg.auth.realm.is_empty()
        || !cfg
            .auth
            .realm
            .bytes()
            .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\' || b == b' ')
    {
        c.push(
            0,
            "auth.realm must be printable ASCII without quotes or backslashes".into(),
        );
    }
    if cfg.auth.max_token_bytes.value < 64 {
        c.push(
            cfg.auth.max_token_bytes.referenced.line(),
            "auth.max_token_bytes must be at least 64".into(),
        );
    }
    let mut names = std::collections::HashSet::new();
    let mut iss_values = std::collections::HashSet::new();
    for i in &cfg.issuers {
        let line = i.referenced.line();
        let ic = &i.value;
        if !names.insert(ic.display_name().to_owned()) {
            c.push(
                line,
                format!("issuer name `{}` is used twice", ic.display_name()),
            );
        }
        if !iss_values.insert(ic.issuer.clone()) {
            c.push(line, format!("issuer `{}` is configured twice", ic.issuer));
        }
        if ic.audiences.is_empty() {
            c.push(
                line,
                "an issuer needs at least one audience (aud is always checked)".into(),
            );
        }
        // Under a second, every token's lifetime (`exp - iat`, whole
        // seconds) exceeds it and every token is refused (found by a
        // newcomer's walk through the README: `check` said ok).
        if ic.max_token_lifetime < std::time::Duration::from_secs(1) {
            c.push(
                line,
                "max_token_lifetime must be at least 1s (every token would be refused)".into(),
            );
        }
        if ic.algorithms.is_empty() && ic.discovery.is_none() {
            c.push(
                line,
                "an issuer needs at least one algorithm (or discovery, which advertises them)"
                    .into(),
            );
        }
        if let Some(d) = &ic.discovery {
            if ic.jwks.is_some() {
                c.push(line, "an issuer takes jwks or discovery, not both".into());
            }
            if d.file.is_some() {
                c.push(
                    line,
                    "discovery takes a url (or none: {issuer}/.well-known/openid-configuration), not a file"
                        .into(),
                );
            }
            let text = d.url.as_ref().map_or_else(
                || {
                    format!(
                        "{}/.well-known/openid-configuration",
                        ic.issuer.trim_end_matches('/')
                    )
                },
                |u| u.0.to_string(),
            );
            match text.parse::<http::Uri>() {
                Ok(u) if matches!(u.scheme_str(), Some("http" | "https")) => {
                    if let Some(p) = plaintext_problem(
                        "discovery url",
                        &text,
                        "http",
                        u.host(),
                        d.allow_plaintext_http,
                        "discovery.allow_plaintext_http",
                    ) {
                        c.push(line, p);
                    }
                }
                _ => c.push(
                    line,
                    format!("discovery url `{text}` is not an http(s) URL"),
                ),
            }
            if let Some(ca) = &d.ca_file {
                c.file_must_exist(line, ca, "discovery ca_file");
            }
        }
        let wants_hmac = ic.algorithms.iter().any(|a| a.is_hmac());
        let wants_keys = ic.algorithms.iter().any(|a| !a.is_hmac());
        if wants_hmac && ic.hmac_secret.is_none() {
            c.push(line, "HS* algorithms need hmac_secret (file or env)".into());
        }
        if !wants_hmac && ic.hmac_secret.is_some() {
            c.push(
                line,
                "hmac_secret is set but no HS* algorithm is allowed".into(),
            );
        }
        if let Some(s) = &ic.hmac_secret {
            c.secret(line, s, "hmac_secret: ");
        }
        match (&ic.jwks, wants_keys && ic.discovery.is_none()) {
            (None, true) => c.push(line, "asymmetric algorithms need jwks (file or url)".into()),
            (Some(j), _) => match (&j.file, &j.url) {
                (Some(f), None) => c.file_must_exist(line, f, "jwks file"),
                (None, Some(u)) => {
                    let text = u.0.to_string();
                    if let Some(p) = plaintext_problem(
                        "jwks.url",
                        &text,
                        "http",
                        u.0.host(),
                        j.allow_plaintext_http,
                        "jwks.allow_plaintext_http",
                    ) {
                        c.push(line, p);
                    }
                    if let Some(ca) = &j.ca_file {
                        c.file_must_exist(line, ca, "jwks ca_file");
                    }
                }
                _ => c.push(line, "jwks takes exactly one of file or url".into()),
            },
            (None, false) => {}
        }
    }
}
