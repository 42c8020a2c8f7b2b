//! Browser users: OpenID Connect login at the edge, end to end, with a
//! real provider and a real browser. Node's `oidc-provider`
//! (`tests/oidc/provider.mjs`, pinned by `tests/oidc/package-lock.json`),
//! Debian's headless Chromium driven over WebDriver
//! (`gatehouse_test_support::browser`), a real authority (the provider's
//! back-channel logout goes to it; `max_sessions_per_subject: 1`) and a real
//! gateway on TLS in front of an app that prints the identity headers it
//! got. The issuer is configured from the provider's discovery document,
//! without `algorithms`.
//!
//! The last tests need no browser: what a login route answers to requests
//! a browser would never make well (wrong `state`, a cross-site logout, a
//! `fetch()`, a CORS preflight, a provider that is down), over plain
//! HTTP/1.1 on TLS.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_test_support::browser::Browser;
use gatehouse_test_support::oidc::OidcProvider;
use gatehouse_test_support::*;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::json;

const RESOURCE: &str = "https://api.gatehouse.test";
const WEB_ID: &str = "gatehouse-web";
const WEB_SECRET: &str = "gatehouse-web-secret-0123456789abcdef";
const ADMIN: &str = "test-admin-token-0123456789";
const FEED: &str = "test-feed-token-9876543210";
const SESSION: &str = "__Host-gatehouse-session";

/// The app behind the gateway: an HTML page naming what it got — the
/// identity headers and the `Cookie` field — and every request kept.
struct App {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<http::HeaderMap>>>,
}

impl App {
    async fn start() -> App {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind app");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let s = s.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req: Request<Incoming>| {
                        let s = s.clone();
                        async move {
                            let h = req.headers();
                            let get = |n: &str| {
                                h.get(n)
                                    .and_then(|v| v.to_str().ok())
                                    .unwrap_or("-")
                                    .to_owned()
                            };
                            let page = format!(
                                "<!doctype html><title>app</title><h1>the app</h1>\
                                 <p id=who>subject: {}</p><p id=sid>session: {}</p>\
                                 <p id=cookie>cookie: {}</p><p id=path>path: {}</p>",
                                get("x-auth-subject"),
                                get("x-auth-sid"),
                                get("cookie"),
                                req.uri()
                            );
                            s.lock().expect("lock").push(h.clone());
                            let mut r = Response::new(Full::new(Bytes::from(page)));
                            r.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("text/html"),
                            );
                            Ok::<_, Infallible>(r)
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        App { addr, seen }
    }

    fn last(&self) -> http::HeaderMap {
        self.seen
            .lock()
            .expect("lock")
            .last()
            .cloned()
            .expect("the app got no request")
    }
}

/// A provider, an authority, a gateway and the app, wired as the README's
/// "Protecting a browser app" says.
struct Site {
    provider: OidcProvider,
    app: App,
    /// `https://localhost:<port>`
    origin: String,
    gateway: SocketAddr,
    _gateway: (Arc<gatehouse::server::Gateway>, tempfile::TempDir),
    authority: gatehouse::authority::AuthorityHandle,
    _dir: tempfile::TempDir,
}

/// How gatehouse authenticates to the provider's token endpoint.
#[derive(Clone, Copy, PartialEq)]
enum ClientAuth {
    /// `client_secret_basic`.
    Secret,
    /// `private_key_jwt` with the fixtures' ES256 key (`test-es256`).
    PrivateKeyJwt,
}

impl Site {
    async fn start() -> Site {
        Site::start_with(ClientAuth::Secret).await
    }

    async fn start_with(auth: ClientAuth) -> Site {
        crypto();
        let dir = tempfile::tempdir().expect("tempdir");
        let app = App::start().await;
        let mut provider = tokio::task::block_in_place(OidcProvider::start);
        let authority_port = free_port();
        let gateway_port = free_port();
        let origin = format!("https://localhost:{gateway_port}");
        let (method, jwks) = match auth {
            ClientAuth::Secret => ("client_secret_basic", serde_json::Value::Null),
            ClientAuth::PrivateKeyJwt => {
                let set: serde_json::Value = serde_json::from_slice(
                    &std::fs::read(fixture("jwks.json")).expect("jwks fixture"),
                )
                .expect("jwks json");
                let es = set["keys"]
                    .as_array()
                    .and_then(|k| k.iter().find(|k| k["kid"] == "test-es256"))
                    .cloned()
                    .expect("the ES256 key");
                ("private_key_jwt", json!({ "keys": [es] }))
            }
        };
        let mut client = json!({
            "client_id": WEB_ID,
            "client_secret": WEB_SECRET,
            "token_endpoint_auth_method": method,
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
            "redirect_uris": [format!("{origin}/.gatehouse/callback")],
            "post_logout_redirect_uris": [format!("{origin}/public/bye")],
            "backchannel_logout_uri":
                format!("http://127.0.0.1:{authority_port}/backchannel-logout"),
            "backchannel_logout_session_required": true,
        });
        if auth == ClientAuth::PrivateKeyJwt {
            client["jwks"] = jwks;
            client["token_endpoint_auth_signing_alg"] = json!("ES256");
        }
        tokio::task::block_in_place(|| {
            provider.configure(&json!({
                "resource": RESOURCE,
                "scope": "api:read",
                "clients": [client],
            }))
        });
        let issuer = format!(
            r#"
issuers:
  - name: idp
    issuer: {iss}
    audiences: [{RESOURCE}]
    discovery: {{}}
    logout_audiences: [{WEB_ID}]
    backchannel_logout: session
    max_token_lifetime: 1h
"#,
            iss = provider.issuer
        );
        std::fs::write(dir.path().join("admin.token"), ADMIN).expect("admin token");
        std::fs::write(dir.path().join("feed.token"), FEED).expect("feed token");
        std::fs::write(dir.path().join("web.secret"), WEB_SECRET).expect("secret");
        std::fs::write(dir.path().join("session.key"), [7u8; 32].map(|b| b + b'A'))
            .expect("session key");
        let authority_config = dir.path().join("authority.yaml");
        std::fs::write(
            &authority_config,
            format!(
                r#"
{issuer}
authority:
  listen: 127.0.0.1:{authority_port}
  path: {store}
  admin_token: {{ file: admin.token }}
  feed_token: {{ file: feed.token }}
  max_sessions_per_subject: 1
logging: {{ format: json, level: warn }}
"#,
                store = dir.path().join("authority.redb").display(),
            ),
        )
        .expect("authority config");
        let loaded =
            gatehouse::config::load_for(&authority_config, gatehouse::config::Mode::Authority)
                .unwrap_or_else(|e| panic!("authority config refused:\n{e}"));
        let section = loaded.config.authority.clone().expect("authority section");
        let authority = gatehouse::authority::start(&section.value, &loaded)
            .await
            .expect("authority starts");
        let f = |n: &str| fixture(n).display().to_string();
        let yaml = format!(
            r#"
listeners:
  - address: 127.0.0.1:{gateway_port}
    tls:
      certificates:
        - {{ cert: {crt}, key: {key} }}
{issuer}
sessions:
  keys: [{{ file: {key_file} }}]
  absolute_lifetime: 1h
  idle_timeout: 10m
routes:
  - path_prefix: /
    backends: [http://{app}]
    public_paths: [/public]
    login:
      issuer: idp
      client_id: {WEB_ID}
      {client_auth}
      scopes: [openid]
      post_logout_redirect_uri: {origin}/public/bye
    identity_headers:
      - {{ claim: sub, header: X-Auth-Subject }}
      - {{ claim: sid, header: X-Auth-Sid }}
  - path_prefix: /api
    backends: [http://{app}]
    cors_preflight: true
revocation:
  authority:
    url: http://127.0.0.1:{authority_port}
    token: {{ file: {feed} }}
  state_file: {state}
  poll_wait: 2s
  max_staleness: 4s
logging: {{ format: json, level: warn }}
"#,
            crt = f("server.crt.pem"),
            key = f("server.key.pem"),
            key_file = dir.path().join("session.key").display(),
            client_auth = match auth {
                ClientAuth::Secret => format!(
                    "client_secret: {{ file: {} }}",
                    dir.path().join("web.secret").display()
                ),
                ClientAuth::PrivateKeyJwt => format!(
                    "private_key_jwt: {{ key_file: {}, alg: ES256, kid: test-es256 }}",
                    f("es256.key.pem")
                ),
            },
            app = app.addr,
            feed = dir.path().join("feed.token").display(),
            state = dir.path().join("gateway.state").display(),
        );
        let gw = start_gateway(&yaml).await;
        let gateway = gw.0.addrs()[0];
        Site {
            provider,
            app,
            origin,
            gateway,
            _gateway: gw,
            authority,
            _dir: dir,
        }
    }

    fn on_provider(&self, url: &str) -> bool {
        url.starts_with(&self.provider.issuer)
    }

    /// Opens `/reports` and logs in at the provider as `user`; returns
    /// once the browser is back on the app.
    async fn log_in(&self, b: &Browser, user: &str) {
        b.goto(&format!("{}/reports?week=48", self.origin)).await;
        let at = b.url().await;
        assert!(
            self.on_provider(&at),
            "not sent to the provider: {at}\n{}",
            b.text().await
        );
        b.oidc_provider_login(user, "any password").await;
        let back = b
            .wait_for_url(|u| u.starts_with(&self.origin), Duration::from_secs(10))
            .await;
        assert_eq!(
            back,
            format!("{}/reports?week=48", self.origin),
            "{}",
            b.text().await
        );
    }

    /// A request as a script or API client would send it (no page
    /// navigation), with `extra` headers.
    async fn request(&self, method: &str, path: &str, extra: &[(&str, &str)]) -> Answer {
        let mut r = Request::builder()
            .method(method)
            .uri(path)
            .header("host", self.origin.trim_start_matches("https://"));
        for (k, v) in extra {
            r = r.header(*k, *v);
        }
        send(
            self.gateway,
            Proto::TlsH1,
            "localhost",
            r.body(empty()).expect("request"),
        )
        .await
    }
}

/// Waits until `f` holds, for at most `limit`; how long it took.
async fn until<F, Fut>(limit: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_logs_in_at_the_provider_and_the_app_sees_who_it_is_not_the_cookie() {
    let site = Site::start().await;
    let b = Browser::start().await;
    site.log_in(&b, "alice").await;
    let page = b.text().await;
    assert!(page.contains("subject: alice"), "{page}");
    // A sid is random base64url and may itself begin with '-': the app
    // prints a lone "-" only when no sid reached it.
    assert!(
        page.lines()
            .any(|l| l.trim().starts_with("session: ") && l.trim() != "session: -"),
        "the sid reaches the app: {page}"
    );
    // The session cookie is the gateway's: never forwarded.
    assert!(!page.contains("gatehouse"), "{page}");
    let headers = site.app.last();
    assert!(headers
        .get_all("cookie")
        .iter()
        .all(|v| !v.to_str().unwrap_or("").contains("gatehouse")));

    // The cookie's flags: __Host- (Secure, Path=/, host-only), HttpOnly,
    // SameSite=Lax; no login cookie left behind.
    let cookies = b.cookies().await;
    let session = cookies
        .iter()
        .find(|c| c.name == SESSION)
        .unwrap_or_else(|| panic!("no session cookie: {cookies:?}"));
    assert!(session.secure && session.http_only, "{session:?}");
    assert_eq!(session.same_site.as_deref(), Some("Lax"), "{session:?}");
    assert_eq!(session.path.as_deref(), Some("/"), "{session:?}");
    assert!(
        !cookies
            .iter()
            .any(|c| c.name.starts_with("__Host-gatehouse-login-")),
        "{cookies:?}"
    );
    // Scripts on the page cannot read it, and its own fetch() is served.
    let (status, body) = b.fetch("/reports/data").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("subject: alice"), "{body}");

    // A page's fetch() without a session gets 401, not a redirect.
    let other = Browser::start().await;
    other.goto(&format!("{}/public/hello", site.origin)).await;
    let (status, body) = other.fetch("/reports/data").await;
    assert_eq!(status, 401, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_out_ends_the_session_at_the_provider_and_the_next_visit_asks_for_login() {
    let site = Site::start().await;
    let b = Browser::start().await;
    site.log_in(&b, "bob").await;
    b.submit_post_form("/.gatehouse/logout").await;
    let at = b.url().await;
    assert!(
        site.on_provider(&at) && at.contains("/session/end"),
        "not at the provider's end-session page: {at}\n{}",
        b.text().await
    );
    assert!(
        !b.cookies().await.iter().any(|c| c.name == SESSION),
        "the session cookie is cleared"
    );
    // The ID token travelled in that URL (`id_token_hint`): replayed to
    // the authority as a login report, it must not end a newer session.
    let hint = url_param(&at, "id_token_hint").expect("id_token_hint");
    b.confirm_provider_logout().await;
    let after = b
        .wait_for_url(|u| u.starts_with(&site.origin), Duration::from_secs(10))
        .await;
    let replay = post(
        site.authority.addr(),
        "/v1/login",
        None,
        json!({ "id_token": hint }),
    )
    .await;
    assert_eq!(replay.status, StatusCode::UNAUTHORIZED, "{}", replay.text());
    assert!(
        after.starts_with(&format!("{}/public/bye", site.origin)),
        "{after}"
    );
    // The provider's session is over too: the app asks for a login again.
    b.goto(&format!("{}/reports", site.origin)).await;
    let at = b.url().await;
    assert!(site.on_provider(&at), "{at}");
    assert!(
        b.html().await.contains("name=\"login\""),
        "the provider asks for credentials again"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_provider_ends_the_session_the_next_navigation_goes_to_login_within_a_second() {
    let site = Site::start().await;
    let b = Browser::start().await;
    site.log_in(&b, "carol").await;
    // The cookie stays in the browser; only the provider says it is over.
    let cookie_before = b
        .cookies()
        .await
        .into_iter()
        .find(|c| c.name == SESSION)
        .expect("session cookie");
    // Logging out at the provider itself (its own end-session page, no
    // RP involved): it sends the back-channel logout to the authority.
    b.goto(&format!("{}/session/end", site.provider.issuer))
        .await;
    b.confirm_provider_logout().await;
    let sent = tokio::task::block_in_place(|| site.provider.wait_for("backchannel.success"));
    let t0 = Instant::now();
    assert_eq!(sent["client_id"], WEB_ID, "{sent}");
    // The gateway refuses the session within a second of the provider's
    // back-channel call being answered (the same cookie, replayed).
    let cookie = format!("{}={}", cookie_before.name, cookie_before.value);
    let refused = until(Duration::from_secs(1), || async {
        site.request("GET", "/reports/data", &[("cookie", &cookie)])
            .await
            .status
            == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(
        refused.is_some(),
        "the session was still served {:?} after the back-channel logout",
        t0.elapsed()
    );
    // And the browser's next navigation goes to login.
    b.goto(&format!("{}/reports", site.origin)).await;
    let at = b.url().await;
    assert!(site.on_provider(&at), "{at}\n{}", b.text().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_session_per_user_a_login_from_a_second_browser_sends_the_first_to_login() {
    let site = Site::start().await;
    let first = Browser::start().await;
    site.log_in(&first, "dave").await;
    let second = Browser::start().await;
    site.log_in(&second, "dave").await;
    assert!(second.text().await.contains("subject: dave"));
    // The first browser's session was replaced: its next navigation is a
    // login (the provider still knows it, so it comes straight back with
    // a new session, which in turn replaces the second one's).
    let refused = until(Duration::from_secs(2), || async {
        first.fetch("/reports/data").await.0 == 401
    })
    .await;
    assert!(refused.is_some(), "the first browser's session still works");
    let (status, _) = second.fetch("/reports/data").await;
    assert_eq!(status, 200, "the newest session works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_cookie_is_a_new_login_and_a_wrong_state_is_refused() {
    let site = Site::start().await;
    let b = Browser::start().await;
    site.log_in(&b, "erin").await;
    let session = b
        .cookies()
        .await
        .into_iter()
        .find(|c| c.name == SESSION)
        .expect("session cookie");
    let mut v = session.value.into_bytes();
    let i = v.len() / 2;
    v[i] = if v[i] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(v).expect("ascii");
    // As the gateway sees it: a navigation with it is sent to login.
    let a = site
        .request(
            "GET",
            "/reports",
            &[
                ("cookie", &format!("{SESSION}={tampered}")),
                ("sec-fetch-mode", "navigate"),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::FOUND, "{}", a.text());
    // In the browser: the provider still knows erin and answers at once,
    // so the browser comes back with a new session (never a 500).
    b.set_cookie(SESSION, &tampered).await;
    b.goto(&format!("{}/reports", site.origin)).await;
    let at = b
        .wait_for_url(|u| u.starts_with(&site.origin), Duration::from_secs(10))
        .await;
    assert!(
        b.text().await.contains("subject: erin"),
        "{at}\n{}",
        b.text().await
    );
    let now = b
        .cookies()
        .await
        .into_iter()
        .find(|c| c.name == SESSION)
        .expect("a new session cookie");
    assert_ne!(now.value, tampered, "a new session was made");

    // A callback with a state this browser never started: 400.
    b.goto(&format!(
        "{}/.gatehouse/callback?code=stolen&state=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
        site.origin
    ))
    .await;
    let page = b.text().await;
    assert!(page.contains("Login failed"), "{page}");
    let answer = site
        .request(
            "GET",
            "/.gatehouse/callback?code=stolen&state=aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
            &[],
        )
        .await;
    assert_eq!(answer.status, StatusCode::BAD_REQUEST);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_login_route_answers_to_requests_that_are_not_page_navigations() {
    let site = Site::start().await;
    // A navigation: 302 to the provider with the code flow, PKCE S256,
    // state and nonce, and a login cookie.
    let nav = site
        .request("GET", "/reports", &[("sec-fetch-mode", "navigate")])
        .await;
    assert_eq!(nav.status, StatusCode::FOUND, "{}", nav.text());
    let location = nav
        .headers
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    assert!(location.starts_with(&site.provider.issuer), "{location}");
    for p in [
        "response_type=code",
        "code_challenge_method=S256",
        "code_challenge=",
        "state=",
        "nonce=",
        "client_id=gatehouse-web",
    ] {
        assert!(location.contains(p), "{p} missing: {location}");
    }
    let set = nav
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap_or("").to_owned())
        .collect::<Vec<_>>();
    assert!(
        set.iter().any(|c| c.starts_with("__Host-gatehouse-login-")
            && c.contains("Secure")
            && c.contains("HttpOnly")
            && c.contains("SameSite=Lax")),
        "{set:?}"
    );
    // A script's request, an API client's, a POST: 401 with the RFC 6750
    // challenge, never a redirect.
    for (method, extra) in [
        (
            "GET",
            vec![("sec-fetch-mode", "cors"), ("accept", "text/html")],
        ),
        ("GET", vec![("accept", "application/json")]),
        ("POST", vec![("sec-fetch-mode", "navigate")]),
    ] {
        let a = site.request(method, "/reports", &extra).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{method} {extra:?}");
        assert!(a.challenge().starts_with("Bearer"), "{method} {extra:?}");
    }
    // A CORS preflight on the route that allows them reaches the app
    // without credentials; on the login route it does not.
    let pre = [
        ("origin", "https://other.example"),
        ("access-control-request-method", "POST"),
    ];
    assert_eq!(
        site.request("OPTIONS", "/api/items", &pre).await.status,
        StatusCode::OK
    );
    assert_eq!(
        site.request("OPTIONS", "/reports", &pre).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        site.request("OPTIONS", "/api/items", &pre[..1])
            .await
            .status,
        StatusCode::UNAUTHORIZED,
        "an OPTIONS that is not a preflight needs credentials"
    );
    // Nor is one with a body, a method override or no method named.
    for extra in [
        ("content-length", "7"),
        ("x-http-method-override", "DELETE"),
        // WSGI and CGI read this spelling as the one above.
        ("x_http_method_override", "DELETE"),
    ] {
        let mut h = pre.to_vec();
        h.push(extra);
        let a = site.request("OPTIONS", "/api/items", &h).await;
        assert_ne!(a.status, StatusCode::OK, "{extra:?}");
    }
    let empty = [
        ("origin", "https://other.example"),
        ("access-control-request-method", ""),
    ];
    assert_eq!(
        site.request("OPTIONS", "/api/items", &empty).await.status,
        StatusCode::UNAUTHORIZED
    );
    // A logout from another site is refused; a GET is not a logout.
    let cross = site
        .request(
            "POST",
            "/.gatehouse/logout",
            &[
                ("origin", "https://evil.example"),
                ("sec-fetch-site", "cross-site"),
            ],
        )
        .await;
    assert_eq!(cross.status, StatusCode::FORBIDDEN);
    let get = site.request("GET", "/.gatehouse/logout", &[]).await;
    assert_eq!(get.status, StatusCode::METHOD_NOT_ALLOWED);
    // A forged session cookie is no session: the navigation logs in, the
    // script gets 401; a client's copy of identity headers never reaches
    // the app.
    let forged = format!("{SESSION}=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    let a = site
        .request(
            "GET",
            "/reports",
            &[("cookie", &forged), ("sec-fetch-mode", "navigate")],
        )
        .await;
    assert_eq!(a.status, StatusCode::FOUND);
    let a = site
        .request(
            "GET",
            "/reports",
            &[("cookie", &forged), ("x-auth-subject", "root")],
        )
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    // A public page gets the client's other cookies, never gatehouse's.
    let a = site
        .request(
            "GET",
            "/public/x",
            &[
                ("cookie", &format!("theme=dark; {forged}")),
                ("x-auth-subject", "root"),
            ],
        )
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let seen = site.app.last();
    assert_eq!(
        seen.get("cookie").and_then(|v| v.to_str().ok()),
        Some("theme=dark")
    );
    assert!(seen.get("x-auth-subject").is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_that_is_down_gives_a_clear_page_not_a_redirect_loop() {
    crypto();
    let app = App::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("web.secret"), WEB_SECRET).expect("secret");
    std::fs::write(dir.path().join("session.key"), [b'k'; 32]).expect("key");
    // Nothing listens at the issuer: its discovery document never comes.
    let dead = free_port();
    let f = |n: &str| fixture(n).display().to_string();
    let yaml = format!(
        r#"
listeners:
  - address: 127.0.0.1:0
    tls:
      certificates:
        - {{ cert: {crt}, key: {key} }}
issuers:
  - name: idp
    issuer: http://127.0.0.1:{dead}
    audiences: [{RESOURCE}]
    discovery: {{ timeout: 1s }}
sessions:
  keys: [{{ file: {key_file} }}]
routes:
  - path_prefix: /
    backends: [http://{app}]
    login: {{ issuer: idp, client_id: {WEB_ID}, client_secret: {{ file: {secret} }} }}
logging: {{ level: error }}
"#,
        crt = f("server.crt.pem"),
        key = f("server.key.pem"),
        key_file = dir.path().join("session.key").display(),
        secret = dir.path().join("web.secret").display(),
        app = app.addr,
    );
    let (gw, _d) = start_gateway(&yaml).await;
    let addr = gw.addrs()[0];
    let req = Request::get("/")
        .header("host", "localhost")
        .header("sec-fetch-mode", "navigate")
        .body(empty())
        .expect("request");
    let a = send(addr, Proto::TlsH1, "localhost", req).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text());
    assert!(a.headers.get("location").is_none());
    assert!(a.text().contains("cannot be reached"), "{}", a.text());
    assert_eq!(
        a.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("text/html; charset=utf-8")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_authenticating_with_private_key_jwt_logs_the_browser_in() {
    let site = Site::start_with(ClientAuth::PrivateKeyJwt).await;
    let b = Browser::start().await;
    site.log_in(&b, "frank").await;
    assert!(
        b.text().await.contains("subject: frank"),
        "{}",
        b.text().await
    );
}

/// A query parameter of a URL, decoded.
fn url_param(url: &str, name: &str) -> Option<String> {
    let q = url.split_once('?')?.1;
    form_urlencoded::parse(q.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A JSON POST to the authority.
async fn post(
    authority: SocketAddr,
    path: &str,
    token: Option<&str>,
    body: serde_json::Value,
) -> Answer {
    send(
        authority,
        Proto::Plain,
        "authority",
        json_req("POST", path, token, Some(&body)),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_session_asks_for_credentials_again_and_never_goes_round() {
    let site = Site::start().await;
    let b = Browser::start().await;
    site.log_in(&b, "gina").await;
    let page = b.text().await;
    let sid = page
        .lines()
        .find_map(|l| l.strip_prefix("session: "))
        .expect("the app shows the sid")
        .to_owned();
    let revoked = post(
        site.authority.addr(),
        "/v1/revocations?wait=applied&timeout=2s",
        Some(ADMIN),
        json!({ "sid": sid }),
    )
    .await;
    assert!(revoked.status.is_success(), "{}", revoked.text());
    // The provider still has gina's session; without `prompt=login` it
    // would hand back the same ended session at once, again and again.
    b.goto(&format!("{}/reports", site.origin)).await;
    let at = b.url().await;
    assert!(site.on_provider(&at), "{at}\n{}", b.text().await);
    assert!(
        b.html().await.contains("name=\"login\""),
        "the provider asks for credentials: {at}"
    );
    // Logging in again ends on a page, the app or a clear refusal, never
    // a redirect loop.
    b.oidc_provider_login("gina", "any password").await;
    let back = b
        .wait_for_url(|u| u.starts_with(&site.origin), Duration::from_secs(10))
        .await;
    let page = b.text().await;
    assert!(
        page.contains("subject: gina") || page.contains("This session has ended"),
        "{back}\n{page}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_left_unused_past_its_idle_timeout_is_over() {
    // No provider needed: the session is sealed with the config's keys
    // (`gatehouse session` does the same), for an ID token whose payload
    // names the user.
    crypto();
    let app = App::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("web.secret"), WEB_SECRET).expect("secret");
    std::fs::write(dir.path().join("session.key"), [b'k'; 32]).expect("key");
    let f = |n: &str| fixture(n).display().to_string();
    let yaml = format!(
        r#"
listeners:
  - address: 127.0.0.1:0
    tls:
      certificates:
        - {{ cert: {crt}, key: {key} }}
issuers:
  - name: idp
    issuer: {ISS}
    audiences: [{AUD}]
    algorithms: [RS256]
    jwks: {{ file: {jwks} }}
sessions:
  keys: [{{ file: {key_file} }}]
  idle_timeout: 2s
routes:
  - name: app
    path_prefix: /
    backends: [http://{app}]
    login:
      issuer: idp
      client_id: {WEB_ID}
      client_secret: {{ file: {secret} }}
      authorization_endpoint: https://idp.invalid/auth
      token_endpoint: https://idp.invalid/token
logging: {{ level: error }}
"#,
        crt = f("server.crt.pem"),
        key = f("server.key.pem"),
        jwks = f("jwks.json"),
        key_file = dir.path().join("session.key").display(),
        secret = dir.path().join("web.secret").display(),
        app = app.addr,
    );
    let (gw, d) = start_gateway(&yaml).await;
    let loaded = gatehouse::config::load(&d.path().join("gatehouse.yaml")).expect("config");
    let sessions = Arc::new(
        gatehouse::login::Sessions::from_config(
            &loaded.config.sessions.as_ref().expect("sessions").value,
            &loaded,
        )
        .expect("sessions"),
    );
    let login = gatehouse::login::Login::from_config(
        loaded.config.routes[0].value.login.as_ref().expect("login"),
        &loaded,
        sessions,
    )
    .expect("login");
    let id_token = mint(jsonwebtoken::Algorithm::RS256, "ida");
    let set = login.seal_for_id_token(&id_token).expect("sealed");
    let cookie = set[0]
        .to_str()
        .expect("ascii")
        .split(';')
        .next()
        .expect("pair")
        .to_owned();
    let ask = |nav: bool| {
        let mut r = Request::get("/page")
            .header("host", "localhost")
            .header("cookie", cookie.as_str());
        if nav {
            r = r.header("sec-fetch-mode", "navigate");
        }
        send(
            gw.addrs()[0],
            Proto::TlsH1,
            "localhost",
            r.body(empty()).expect("request"),
        )
    };
    // Used within its first second: served.
    assert_eq!(ask(false).await.status, StatusCode::OK);
    assert_eq!(
        app.last()
            .get("x-auth-subject")
            .and_then(|v| v.to_str().ok()),
        Some("ida")
    );
    // Left alone for longer than `idle_timeout` (times are whole seconds:
    // 3 s is past 2 s whatever the fraction): over, on every path.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(ask(false).await.status, StatusCode::UNAUTHORIZED);
    let nav = ask(true).await;
    assert_eq!(nav.status, StatusCode::FOUND, "a navigation logs in again");
    assert!(
        nav.headers.get_all("set-cookie").iter().any(|c| c
            .to_str()
            .is_ok_and(|c| c.starts_with(SESSION) && c.contains("Max-Age=0"))),
        "the dead cookie is cleared"
    );
}
