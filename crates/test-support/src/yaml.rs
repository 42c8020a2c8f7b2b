//! A typed builder for the configs tests start gateways and authorities
//! with: each section from typed parts (an [`Issuer`], a [`Route`], an
//! [`Authority`], a [`Revocation`] source), written as the YAML the README
//! documents. Keys without a method of their own go through `with(key,
//! value)` (the value in YAML flow form), and `raw` appends YAML text after
//! the last section for what a test wants to say literally.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use super::{fixture, write_authority_tokens, AUD, ISS};

/// Sets `key` to `value` in an ordered key list, replacing an earlier one.
fn set(keys: &mut Vec<(String, String)>, key: &str, value: String) {
    match keys.iter_mut().find(|(k, _)| k == key) {
        Some(kv) => kv.1 = value,
        None => keys.push((key.to_owned(), value)),
    }
}

/// Writes `keys` as a block mapping at `indent` spaces; the first line
/// gets `first` (e.g. `- ` for a list item) instead of its indentation.
fn write_keys(out: &mut String, keys: &[(String, String)], indent: usize, first: &str) {
    for (i, (k, v)) in keys.iter().enumerate() {
        if i == 0 && !first.is_empty() {
            out.push_str(&" ".repeat(indent - first.len()));
            out.push_str(first);
        } else {
            out.push_str(&" ".repeat(indent));
        }
        out.push_str(k);
        out.push(':');
        if v.starts_with('\n') {
            // A nested block, already indented by the caller.
            out.push_str(v);
        } else {
            out.push(' ');
            out.push_str(v);
            out.push('\n');
        }
    }
}

/// One entry of `issuers`.
#[derive(Debug, Clone)]
pub struct Issuer {
    keys: Vec<(String, String)>,
}

impl Issuer {
    /// The test issuer: `ISS` for audience `AUD`, RS256 and ES256, keys
    /// from the fixture key set.
    pub fn test() -> Issuer {
        Issuer {
            keys: vec![
                ("issuer".into(), ISS.into()),
                ("audiences".into(), format!("[{AUD}]")),
                ("algorithms".into(), "[RS256, ES256]".into()),
                (
                    "jwks".into(),
                    format!("{{ file: {} }}", fixture("jwks.json").display()),
                ),
            ],
        }
    }

    /// Any issuer key (README "issuers"), the value in YAML flow form.
    pub fn with(mut self, key: &str, value: impl Display) -> Issuer {
        set(&mut self.keys, key, value.to_string());
        self
    }
}

/// One entry of `routes`.
#[derive(Debug, Clone)]
pub struct Route {
    keys: Vec<(String, String)>,
}

impl Route {
    /// Every path (`/`) to one backend.
    pub fn to(backend: SocketAddr) -> Route {
        Route {
            keys: vec![
                ("path_prefix".into(), "/".into()),
                ("backends".into(), format!("[http://{backend}]")),
            ],
        }
    }

    /// Any route key (README "routes"), the value in YAML flow form.
    pub fn with(mut self, key: &str, value: impl Display) -> Route {
        set(&mut self.keys, key, value.to_string());
        self
    }
}

/// Where an authority keeps its state.
#[derive(Debug, Clone)]
pub enum Store {
    /// The embedded redb file.
    Redb(PathBuf),
    /// Redis, under a key prefix.
    Redis { url: String, key_prefix: String },
}

/// The `authority` section (`gatehouse authority`), or the same keys under
/// `revocation.embedded`. Its credentials are the test ones
/// ([`write_authority_tokens`]), written beside the config.
#[derive(Debug, Clone)]
pub struct Authority {
    dir: PathBuf,
    keys: Vec<(String, String)>,
}

impl Authority {
    /// On 127.0.0.1:`port` (0: any), with `store`; writes `admin.token`
    /// and `feed.token` into `dir`. Expired entries are purged every
    /// second (tests wait for it).
    pub fn new(dir: &Path, port: u16, store: Store) -> Authority {
        write_authority_tokens(dir);
        let store = match store {
            Store::Redb(path) => ("path".to_owned(), path.display().to_string()),
            Store::Redis { url, key_prefix } => (
                "store".to_owned(),
                format!(
                    "\n    redis:\n      url: {url}\n      key_prefix: \"{key_prefix}\"\n      timeout: 1s\n"
                ),
            ),
        };
        Authority {
            dir: dir.to_owned(),
            keys: vec![
                ("listen".into(), format!("127.0.0.1:{port}")),
                store,
                (
                    "admin_token".into(),
                    format!("{{ file: {} }}", dir.join("admin.token").display()),
                ),
                (
                    "feed_token".into(),
                    format!("{{ file: {} }}", dir.join("feed.token").display()),
                ),
                ("purge_interval".into(), "1s".into()),
            ],
        }
    }

    /// A redb store at `dir/authority.redb`.
    pub fn redb(dir: &Path, port: u16) -> Authority {
        Authority::new(dir, port, Store::Redb(dir.join("authority.redb")))
    }

    /// Any authority key (README "authority"), the value in YAML flow form.
    pub fn with(mut self, key: &str, value: impl Display) -> Authority {
        set(&mut self.keys, key, value.to_string());
        self
    }

    /// Leaves a key out (e.g. `feed_token`, to show what happens without).
    pub fn without(mut self, key: &str) -> Authority {
        self.keys.retain(|(k, _)| k != key);
        self
    }

    /// The feed credential's file, for the gateways.
    pub fn feed_token_file(&self) -> PathBuf {
        self.dir.join("feed.token")
    }
}

/// Where a gateway's revocations come from, and its `revocation` keys.
#[derive(Debug, Clone)]
pub struct Revocation {
    keys: Vec<(String, String)>,
}

impl Revocation {
    /// Following the authority replicas at `urls` with the credential in
    /// `token`, persisting to `state`; long-polls of 2 s, stale after 4 s.
    pub fn authority(urls: &[String], token: &Path, state: &Path) -> Revocation {
        Revocation {
            keys: vec![
                (
                    "authority".into(),
                    format!(
                        "\n    urls: [{}]\n    token: {{ file: {} }}\n",
                        urls.join(", "),
                        token.display()
                    ),
                ),
                ("state_file".into(), state.display().to_string()),
                ("poll_wait".into(), "2s".into()),
                ("max_staleness".into(), "4s".into()),
            ],
        }
    }

    /// The authority of this process (`revocation.embedded`), persisting
    /// to `state`.
    pub fn embedded(a: &Authority, state: &Path) -> Revocation {
        let mut block = String::from("\n");
        write_keys(&mut block, &a.keys, 4, "");
        Revocation {
            keys: vec![
                ("embedded".into(), block),
                ("state_file".into(), state.display().to_string()),
            ],
        }
    }

    /// Any `revocation` key, the value in YAML flow form.
    pub fn with(mut self, key: &str, value: impl Display) -> Revocation {
        set(&mut self.keys, key, value.to_string());
        self
    }
}

/// A config file: what `gatehouse run` or `gatehouse authority` reads.
#[derive(Debug, Clone, Default)]
pub struct Config {
    listeners: Vec<String>,
    admin: bool,
    issuers: Vec<Issuer>,
    routes: Vec<Route>,
    revocation: Option<Revocation>,
    authority: Option<Authority>,
    raw: String,
}

impl Config {
    /// A gateway on one plain listener (127.0.0.1, any port) with the test
    /// issuer (`leeway: 0s`) and no routes yet.
    pub fn gateway() -> Config {
        Config {
            listeners: vec!["127.0.0.1:0".into()],
            issuers: vec![Issuer::test().with("leeway", "0s")],
            ..Config::default()
        }
    }

    /// `gatehouse authority` with `a`, for the test issuer (tokens live at
    /// most an hour; `leeway: 0s`, as the test gateways have, so entries
    /// expire when the tests say).
    pub fn authority(a: Authority) -> Config {
        Config {
            issuers: vec![Issuer::test()
                .with("max_token_lifetime", "1h")
                .with("leeway", "0s")],
            authority: Some(a),
            ..Config::default()
        }
    }

    /// Replaces the issuers.
    pub fn issuers(mut self, issuers: Vec<Issuer>) -> Config {
        self.issuers = issuers;
        self
    }

    /// Adds a route.
    pub fn route(mut self, r: Route) -> Config {
        self.routes.push(r);
        self
    }

    /// Sets where revocations come from.
    pub fn revocation(mut self, r: Revocation) -> Config {
        self.revocation = Some(r);
        self
    }

    /// An admin listener on 127.0.0.1, any port.
    pub fn admin(mut self) -> Config {
        self.admin = true;
        self
    }

    /// YAML appended after the last section: keys indented by two spaces
    /// belong to that section (`revocation` or `authority`), others are
    /// top-level keys.
    pub fn raw(mut self, yaml: &str) -> Config {
        self.raw.push_str(yaml);
        if !yaml.ends_with('\n') {
            self.raw.push('\n');
        }
        self
    }

    /// The file's text.
    pub fn yaml(&self) -> String {
        let mut out = String::new();
        if !self.listeners.is_empty() {
            out.push_str("listeners:\n");
            for l in &self.listeners {
                out.push_str(&format!("  - address: {l}\n"));
            }
        }
        if self.admin {
            out.push_str("admin:\n  listen: 127.0.0.1:0\n");
        }
        out.push_str("logging: { format: json, level: info }\n");
        if !self.issuers.is_empty() {
            out.push_str("issuers:\n");
            for i in &self.issuers {
                write_keys(&mut out, &i.keys, 4, "- ");
            }
        }
        if !self.routes.is_empty() {
            out.push_str("routes:\n");
            for r in &self.routes {
                write_keys(&mut out, &r.keys, 4, "- ");
            }
        }
        if let Some(a) = &self.authority {
            out.push_str("authority:\n");
            write_keys(&mut out, &a.keys, 2, "");
        }
        if let Some(r) = &self.revocation {
            out.push_str("revocation:\n");
            write_keys(&mut out, &r.keys, 2, "");
        }
        out.push_str(&self.raw);
        out
    }
}
