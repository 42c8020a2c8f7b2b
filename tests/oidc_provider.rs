//! Interop with a real OpenID provider: node's `oidc-provider` (pinned in
//! `tests/oidc/package-lock.json`; `scripts/test` installs it with `npm
//! ci --prefix tests/oidc`), run by `tests/oidc/provider.mjs` on loopback,
//! and driven over plain HTTP by `tests/oidc/client.mjs` (client
//! credentials; authorization code with the provider's login and consent
//! pages; RP-initiated logout). Each test has its own provider, a real
//! authority (the provider's back-channel logout URL points at it) and a
//! real gateway in front of a counting backend, configured for the
//! provider as the README says: JWKS from its `jwks_uri`, `audiences` the
//! resource indicator its JWT access tokens (RFC 9068) are for,
//! `logout_audiences` its client ids, `require_at_jwt`.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gatehouse_test_support::oidc::{oidc_dir, OidcProvider};
use gatehouse_test_support::*;
use http::StatusCode;
use serde_json::{json, Value};

/// The resource indicator the provider issues JWT access tokens for: the
/// gateway's audience.
const RESOURCE: &str = "https://api.gatehouse.test";
const SCOPE: &str = "api:read";
/// A service (client credentials).
const SERVICE_ID: &str = "reports-job";
const SERVICE_SECRET: &str = "reports-job-secret-0123456789abcdef";
/// A web app (authorization code), with back-channel logout to the authority.
const WEB_ID: &str = "web-app";
const WEB_SECRET: &str = "web-app-secret-0123456789abcdef";
/// Never followed: the client reads the code from the redirect.
const REDIRECT_URI: &str = "http://127.0.0.1:9/callback";
const FEED: &str = "test-feed-token-9876543210";

/// What back-channel logouts end at this issuer (`issuers[].backchannel_logout`).
#[derive(Clone, Copy)]
enum Logout {
    Subject,
    Session,
}

/// A provider, an authority, a gateway and a backend, wired as the README
/// says.
struct Interop {
    provider: OidcProvider,
    backend: Backend,
    gateway: SocketAddr,
    /// A gateway of the same issuer without `require_at_jwt`.
    untyped_gateway: SocketAddr,
    dir: tempfile::TempDir,
    _gateways: Vec<(Arc<gatehouse::server::Gateway>, tempfile::TempDir)>,
    _authority: gatehouse::authority::AuthorityHandle,
}

fn issuer_yaml(issuer: &str, jwks_uri: &str, logout: Logout, require_at_jwt: bool) -> String {
    let mode = match logout {
        Logout::Subject => "subject",
        Logout::Session => "session",
    };
    format!(
        r#"
issuers:
  - issuer: {issuer}
    audiences: [{RESOURCE}]
    algorithms: [RS256]
    jwks: {{ url: {jwks_uri} }}
    require_at_jwt: {require_at_jwt}
    logout_audiences: [{WEB_ID}]
    backchannel_logout: {mode}
    max_token_lifetime: 1h
"#
    )
}

impl Interop {
    /// `sid_in_access_tokens`: whether the provider copies the login's
    /// `sid` into its access tokens (oidc-provider puts it in ID and logout
    /// tokens only, by default).
    async fn start(sid_in_access_tokens: bool, logout: Logout) -> Interop {
        crypto();
        let dir = tempfile::tempdir().expect("tempdir");
        let backend = Backend::start().await;
        // Blocking waits for the node process (a worker thread of its own).
        let mut provider = tokio::task::block_in_place(OidcProvider::start);
        let authority_port = free_port();
        let config = json!({
            "resource": RESOURCE,
            "scope": SCOPE,
            "sid_in_access_tokens": sid_in_access_tokens,
            "clients": [
                {
                    "client_id": SERVICE_ID,
                    "client_secret": SERVICE_SECRET,
                    "grant_types": ["client_credentials"],
                    "response_types": [],
                    "redirect_uris": [],
                },
                {
                    "client_id": WEB_ID,
                    "client_secret": WEB_SECRET,
                    "grant_types": ["authorization_code"],
                    "response_types": ["code"],
                    "redirect_uris": [REDIRECT_URI],
                    "backchannel_logout_uri":
                        format!("http://127.0.0.1:{authority_port}/backchannel-logout"),
                    "backchannel_logout_session_required": true,
                },
            ],
        });
        tokio::task::block_in_place(|| provider.configure(&config));

        // The issuer and key set as the provider's discovery document says.
        let issuer_addr: SocketAddr = provider
            .issuer
            .trim_start_matches("http://")
            .parse()
            .expect("issuer address");
        let discovery = send(
            issuer_addr,
            Proto::Plain,
            "127.0.0.1",
            get(
                Proto::Plain,
                &issuer_addr.to_string(),
                "/.well-known/openid-configuration",
                None,
                &[],
            ),
        )
        .await;
        assert_eq!(discovery.status, StatusCode::OK, "{}", discovery.text());
        let discovery = discovery.json();
        assert_eq!(discovery["issuer"], provider.issuer.as_str());
        assert_eq!(
            discovery["backchannel_logout_supported"], true,
            "{discovery}"
        );
        let jwks_uri = discovery["jwks_uri"].as_str().expect("jwks_uri").to_owned();

        // A standalone authority: its own feed token for the gateways.
        std::fs::write(dir.path().join("admin.token"), ADMIN).expect("admin token");
        std::fs::write(dir.path().join("feed.token"), FEED).expect("feed token");
        let authority_config = dir.path().join("authority.yaml");
        std::fs::write(
            &authority_config,
            format!(
                r#"
{issuers}
authority:
  listen: 127.0.0.1:{authority_port}
  path: {store}
  admin_token: {{ file: admin.token }}
  feed_token: {{ file: feed.token }}
logging: {{ format: json, level: info }}
"#,
                issuers = issuer_yaml(&provider.issuer, &jwks_uri, logout, true),
                store = dir.path().join("authority.redb").display(),
            ),
        )
        .expect("write authority config");
        let loaded =
            gatehouse::config::load_for(&authority_config, gatehouse::config::Mode::Authority)
                .unwrap_or_else(|e| panic!("authority config refused:\n{e}"));
        let section = loaded.config.authority.clone().expect("authority section");
        let authority = gatehouse::authority::start(&section.value, &loaded)
            .await
            .expect("authority starts");
        assert_eq!(authority.addr().port(), authority_port);

        let mut gateways = Vec::new();
        for (n, require_at_jwt) in [true, false].into_iter().enumerate() {
            let yaml = format!(
                r#"
listeners:
  - address: 127.0.0.1:0
{issuers}
routes:
  - path_prefix: /
    backends: [http://{backend}]
    identity_headers:
      - {{ claim: sub, header: X-Auth-Subject }}
revocation:
  authority:
    url: http://{authority}
    token: {{ file: {feed} }}
  state_file: {state}
  poll_wait: 2s
  max_staleness: 4s
logging: {{ format: json, level: warn }}
"#,
                issuers = issuer_yaml(&provider.issuer, &jwks_uri, logout, require_at_jwt),
                backend = backend.addr,
                authority = authority.addr(),
                feed = dir.path().join("feed.token").display(),
                state = dir.path().join(format!("gateway-{n}.state")).display(),
            );
            gateways.push(start_gateway(&yaml).await);
        }
        let gateway = gateways[0].0.addrs()[0];
        let untyped_gateway = gateways[1].0.addrs()[0];
        Interop {
            provider,
            backend,
            gateway,
            untyped_gateway,
            dir,
            _gateways: gateways,
            _authority: authority,
        }
    }

    /// Runs `tests/oidc/client.mjs COMMAND ARGS` and returns what it prints.
    async fn client(&self, command: &'static str, args: Value) -> Value {
        let mut args = args;
        args["issuer"] = json!(self.provider.issuer);
        let out = tokio::task::spawn_blocking(move || {
            Command::new("node")
                .arg(oidc_dir().join("client.mjs"))
                .arg(command)
                .arg(args.to_string())
                .output()
        })
        .await
        .expect("client task")
        .expect("run node");
        assert!(
            out.status.success(),
            "client.mjs {command} failed: {}\nthe provider wrote:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.provider.log()
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "client.mjs {command} printed no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    async fn client_credentials(&self) -> String {
        let t = self
            .client(
                "client-credentials",
                json!({"client_id": SERVICE_ID, "client_secret": SERVICE_SECRET,
                       "resource": RESOURCE, "scope": SCOPE}),
            )
            .await;
        t["access_token"].as_str().expect("access_token").to_owned()
    }

    /// `user` signs in at the provider in a browser of their own (a cookie
    /// jar named after `browser`); the web app gets a code and exchanges it.
    /// Returns the token answer (`access_token`, `id_token`).
    async fn login(&self, user: &str, browser: &str) -> Value {
        let jar = self.dir.path().join(format!("{browser}.cookies.json"));
        self.client(
            "login",
            json!({"client_id": WEB_ID, "client_secret": WEB_SECRET,
                   "redirect_uri": REDIRECT_URI, "resource": RESOURCE,
                   "scope": format!("openid {SCOPE}"), "user": user,
                   "jar": jar}),
        )
        .await
    }

    /// The web app sends the user of `browser` to the provider's end-session
    /// endpoint and they confirm; the provider answers after its back-channel
    /// logouts were answered. Returns the back-channel logout it reports.
    async fn logout(&self, browser: &str, id_token: &str) -> Value {
        let jar = self.dir.path().join(format!("{browser}.cookies.json"));
        self.client(
            "logout",
            json!({"client_id": WEB_ID, "id_token": id_token, "jar": jar}),
        )
        .await;
        let sent =
            tokio::task::block_in_place(|| self.provider.next_event(Duration::from_secs(10)));
        let sent = sent.unwrap_or_else(|| {
            panic!(
                "the provider reported no back-channel logout:\n{}",
                self.provider.log()
            )
        });
        assert_eq!(
            sent["message"],
            "backchannel.success",
            "the authority did not accept the provider's logout token:\n{}",
            self.provider.log()
        );
        assert_eq!(sent["client_id"], WEB_ID);
        sent
    }

    /// The status the gateway answers with this token, and its description.
    async fn status(&self, token: &str) -> (StatusCode, String) {
        status_of(self.gateway, token).await
    }
}

fn access_token(tokens: &Value) -> String {
    tokens["access_token"]
        .as_str()
        .expect("access_token")
        .to_owned()
}

/// The claims of a JWT, unverified (to show what the provider issued).
fn claims_of(token: &str) -> Value {
    use base64::Engine;
    let payload = token.split('.').nth(1).expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON claims")
}

fn header_of(token: &str) -> Value {
    use base64::Engine;
    let header = token.split('.').next().expect("a JWT");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header)
        .expect("base64url");
    serde_json::from_slice(&bytes).expect("JSON header")
}

/// Polls until the gateway refuses `token` (a generous deadline: the feed
/// brings a revocation within milliseconds); returns the description.
async fn refused_soon(gw: SocketAddr, token: &str) -> String {
    let start = Instant::now();
    loop {
        let (status, description) = status_of(gw, token).await;
        if status == StatusCode::UNAUTHORIZED {
            eprintln!("refused {:?} after the logout", start.elapsed());
            return description;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the gateway still admits the token 10 s after the back-channel logout"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_credentials_access_token_from_the_provider_is_admitted() {
    let t = Interop::start(false, Logout::Subject).await;
    let token = t.client_credentials().await;
    assert_eq!(header_of(&token)["typ"], "at+jwt");
    let claims = claims_of(&token);
    assert_eq!(claims["aud"], RESOURCE);
    assert_eq!(claims["client_id"], SERVICE_ID);

    let before = t.backend.hits();
    let a = send(
        t.gateway,
        Proto::Plain,
        "localhost",
        get(Proto::Plain, "localhost", "/reports", Some(&token), &[]),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(t.backend.hits(), before + 1);
    let seen = t.backend.last();
    assert_eq!(seen.path, "/reports");
    assert_eq!(seen.headers["x-auth-subject"], SERVICE_ID);
    assert!(seen.headers.get("authorization").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_authorization_code_access_token_from_the_provider_is_admitted() {
    let t = Interop::start(false, Logout::Subject).await;
    let tokens = t.login("alice", "alice-browser").await;
    let token = access_token(&tokens);
    assert_eq!(header_of(&token)["typ"], "at+jwt");
    let claims = claims_of(&token);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], RESOURCE);
    assert_eq!(claims["client_id"], WEB_ID);

    let before = t.backend.hits();
    let a = send(
        t.gateway,
        Proto::Plain,
        "localhost",
        get(Proto::Plain, "localhost", "/orders", Some(&token), &[]),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text());
    assert_eq!(t.backend.hits(), before + 1);
    assert_eq!(t.backend.last().headers["x-auth-subject"], "alice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_providers_id_token_is_refused_as_a_bearer_token() {
    let t = Interop::start(false, Logout::Subject).await;
    let tokens = t.login("alice", "alice-browser").await;
    let id_token = tokens["id_token"].as_str().expect("id_token");
    // Signed by the same key as the access tokens, for the web app.
    assert_eq!(
        header_of(id_token)["kid"],
        header_of(&access_token(&tokens))["kid"]
    );
    assert_eq!(claims_of(id_token)["aud"], WEB_ID);

    let before = t.backend.hits();
    // Untyped: refused for its type with `require_at_jwt` ...
    let (status, description) = t.status(id_token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{description}");
    assert_eq!(
        description,
        "token is not typed as an access token (typ at+jwt)"
    );
    // ... and for its audience (the client, not the resource) without it.
    let (status, description) = status_of(t.untyped_gateway, id_token).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{description}");
    assert_eq!(description, "token is not meant for this audience");
    assert_eq!(t.backend.hits(), before, "the backend saw an ID token");
    // The access token of the same login passes both.
    let access = access_token(&tokens);
    assert_eq!(t.status(&access).await.0, StatusCode::OK);
    assert_eq!(
        status_of(t.untyped_gateway, &access).await.0,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_logout_ends_the_session_when_access_tokens_carry_sid() {
    let t = Interop::start(true, Logout::Session).await;
    // Alice signs in on two devices: two sessions at the provider.
    let laptop = t.login("alice", "alice-laptop").await;
    let phone = t.login("alice", "alice-phone").await;
    let service = t.client_credentials().await;
    let (laptop_at, phone_at) = (access_token(&laptop), access_token(&phone));
    let laptop_sid = claims_of(&laptop_at)["sid"].clone();
    assert!(laptop_sid.is_string(), "{}", claims_of(&laptop_at));
    assert_ne!(laptop_sid, claims_of(&phone_at)["sid"]);
    assert_eq!(
        claims_of(laptop["id_token"].as_str().expect("id_token"))["sid"],
        laptop_sid
    );
    for token in [&laptop_at, &phone_at, &service] {
        assert_eq!(t.status(token).await.0, StatusCode::OK);
    }

    // She signs out on the laptop; the provider tells the authority.
    let sent = t
        .logout(
            "alice-laptop",
            laptop["id_token"].as_str().expect("id_token"),
        )
        .await;
    assert_eq!(sent["sid"], laptop_sid);
    assert_eq!(refused_soon(t.gateway, &laptop_at).await, "session ended");

    // That session only: the phone and the service go on.
    assert_eq!(t.status(&phone_at).await.0, StatusCode::OK);
    assert_eq!(t.status(&service).await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provider_logout_ends_access_when_access_tokens_have_no_sid() {
    let t = Interop::start(false, Logout::Subject).await;
    let alice = t.login("alice", "alice-browser").await;
    let bob = t.login("bob", "bob-browser").await;
    let (alice_at, bob_at) = (access_token(&alice), access_token(&bob));
    // oidc-provider's default: `sid` in the ID token, not in access tokens.
    assert!(claims_of(&alice_at).get("sid").is_none());
    assert!(claims_of(alice["id_token"].as_str().expect("id_token"))["sid"].is_string());
    for token in [&alice_at, &bob_at] {
        assert_eq!(t.status(token).await.0, StatusCode::OK);
    }

    let sent = t
        .logout(
            "alice-browser",
            alice["id_token"].as_str().expect("id_token"),
        )
        .await;
    assert_eq!(sent["sub"], "alice");
    // A session logout would end nothing here; by subject it ends her access.
    assert_eq!(
        refused_soon(t.gateway, &alice_at).await,
        "all sessions of this account were ended"
    );
    assert_eq!(t.status(&bob_at).await.0, StatusCode::OK);
}
