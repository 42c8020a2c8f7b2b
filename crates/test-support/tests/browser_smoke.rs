//! The browser harness (`gatehouse_test_support::browser`) against the real
//! pieces the browser login tests use: Debian's headless Chromium over
//! chromedriver, node's `oidc-provider` (`tests/oidc/provider.mjs`), and a
//! tiny HTTPS app on 127.0.0.1 with the fixtures' certificate standing in
//! for the gateway (its callback, a `__Host-` session cookie, a logout).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use gatehouse_test_support::browser::{Browser, Cookie};
use gatehouse_test_support::oidc::OidcProvider;
use gatehouse_test_support::*;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};

const CLIENT_ID: &str = "smoke-app";
const CLIENT_SECRET: &str = "smoke-app-secret-0123456789abcdef";
const SESSION_COOKIE: &str = "__Host-smoke";

/// The tiny HTTPS app: every request it got, as `METHOD /path?query`
/// followed by its Cookie and Origin headers and its body.
struct App {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<String>>>,
}

impl App {
    /// `GET /cb` sets the session cookie; `GET /whoami` answers the Cookie
    /// header it got; `GET /elsewhere` redirects; `POST /logout` redirects
    /// (303) to `/bye`; `POST /backchannel` takes a logout token.
    async fn start() -> App {
        use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
        let certs = CertificateDer::pem_file_iter(fixture("server.crt.pem"))
            .expect("server certificate")
            .collect::<Result<Vec<_>, _>>()
            .expect("server certificate");
        let key = PrivateKeyDer::from_pem_file(fixture("server.key.pem")).expect("server key");
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("TLS config");
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind app");
        let addr = listener.local_addr().expect("addr");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (acceptor, log) = (acceptor.clone(), log.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let svc = service_fn(move |req| app_handle(req, log.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        App { addr, seen }
    }

    fn url(&self, path: &str) -> String {
        self.url_at("127.0.0.1", path)
    }

    /// The app under another name of loopback (`localhost`; the fixtures'
    /// certificate has both).
    fn url_at(&self, host: &str, path: &str) -> String {
        format!("https://{host}:{}{path}", self.addr.port())
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().expect("lock").clone()
    }
}

async fn app_handle(
    req: Request<Incoming>,
    seen: Arc<Mutex<Vec<String>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let target = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let (cookie, origin) = (header("cookie"), header("origin"));
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| String::from_utf8_lossy(&b.to_bytes()).into_owned())
        .unwrap_or_default();
    seen.lock().expect("lock").push(format!(
        "{method} {target} cookie={cookie} origin={origin} body={body}"
    ));
    let path = target.split('?').next().unwrap_or("");
    let mut resp = Response::builder().header("content-type", "text/html; charset=utf-8");
    let page = match (method.as_str(), path) {
        ("GET", "/cb") => {
            resp = resp.header(
                "set-cookie",
                format!("{SESSION_COOKIE}=original; Path=/; Secure; HttpOnly; SameSite=Lax"),
            );
            format!("<p>Signed in at the app: {target}</p>")
        }
        ("GET", "/whoami") => cookie,
        ("GET", "/elsewhere") => {
            resp = resp.status(StatusCode::FOUND).header("location", "/cb");
            String::new()
        }
        ("POST", "/logout") => {
            resp = resp
                .status(StatusCode::SEE_OTHER)
                .header("location", "/bye");
            String::new()
        }
        ("GET", "/bye") => format!("<p>Signed out of the app: {target}</p>"),
        ("POST", "/backchannel") => String::new(),
        _ => {
            resp = resp.status(StatusCode::NOT_FOUND);
            "not here".to_owned()
        }
    };
    Ok(resp.body(Full::new(Bytes::from(page))).expect("response"))
}

/// A value of the query string of `url`.
fn query_param(url: &str, name: &str) -> Option<String> {
    let query = url.split_once('?')?.1.split('#').next()?;
    form_pairs(query).find(|(k, _)| k == name).map(|(_, v)| v)
}

fn form_pairs(s: &str) -> impl Iterator<Item = (String, String)> + '_ {
    s.split('&').filter_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        let decode = |x: &str| {
            let x = x.replace('+', " ");
            let mut out = Vec::new();
            let b = x.as_bytes();
            let mut i = 0;
            while i < b.len() {
                if b[i] == b'%' && i + 2 < b.len() {
                    if let Ok(n) = u8::from_str_radix(&x[i + 1..i + 3], 16) {
                        out.push(n);
                        i += 3;
                        continue;
                    }
                }
                out.push(b[i]);
                i += 1;
            }
            String::from_utf8_lossy(&out).into_owned()
        };
        Some((decode(k), decode(v)))
    })
}

fn sha256_b64(s: &str) -> String {
    b64(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, s.as_bytes()).as_ref())
}

/// The claims of a JWT's payload (not verified: the provider just made it).
fn jwt_claims(jwt: &str) -> Value {
    use base64::Engine;
    let payload = jwt.split('.').nth(1).expect("a JWT payload");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .expect("base64url payload");
    serde_json::from_slice(&bytes).expect("JSON payload")
}

/// The provider's token endpoint, as the app's back end would call it.
async fn redeem(provider: &OidcProvider, code: &str, redirect_uri: &str, verifier: &str) -> Value {
    use base64::Engine;
    let form = format!(
        "grant_type=authorization_code&code={code}&redirect_uri={}&code_verifier={verifier}",
        redirect_uri.replace(':', "%3A").replace('/', "%2F")
    );
    let basic =
        base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}"));
    let req = Request::post("/token")
        .header("host", provider.addr().to_string())
        .header("authorization", format!("Basic {basic}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(form)).map_err(|n| match n {}).boxed())
        .expect("token request");
    let answer = send(provider.addr(), Proto::Plain, "127.0.0.1", req).await;
    assert_eq!(answer.status, StatusCode::OK, "{}", answer.text());
    answer.json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signing_in_at_the_provider_brings_the_user_back_to_the_app_and_signing_out_there_ends_it()
{
    let app = App::start().await;
    let mut provider = tokio::task::block_in_place(OidcProvider::start);
    let redirect_uri = app.url("/cb");
    let config = json!({
        "resource": "https://api.smoke.test",
        "scope": "api:read",
        "ca_file": fixture("ca.crt.pem"),
        "clients": [{
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "token_endpoint_auth_method": "client_secret_basic",
            "grant_types": ["authorization_code"],
            "response_types": ["code"],
            "redirect_uris": [redirect_uri],
            "post_logout_redirect_uris": [app.url("/bye")],
            "backchannel_logout_uri": app.url("/backchannel"),
            "backchannel_logout_session_required": true,
        }],
    });
    tokio::task::block_in_place(|| provider.configure(&config));
    let browser = Browser::start().await;
    let t0 = Instant::now();

    let verifier = "smoke-verifier-0123456789abcdefghijklmnopqrstuvwxyz";
    let state = "state-from-the-app";
    let authorize = format!(
        "{}/auth?client_id={CLIENT_ID}&response_type=code&scope=openid&redirect_uri={redirect_uri}\
         &code_challenge={}&code_challenge_method=S256&state={state}&nonce=n-0S6",
        provider.issuer,
        sha256_b64(verifier)
    );
    browser.goto(&authorize).await;
    assert!(
        browser.text().await.contains("Sign-in"),
        "{}",
        browser.text().await
    );
    let back = browser.oidc_provider_login("alice", "any password").await;
    assert!(back.starts_with(&redirect_uri), "{back}");
    assert_eq!(
        query_param(&back, "state").as_deref(),
        Some(state),
        "{back}"
    );
    let code = query_param(&back, "code").expect("a code in the redirect");
    assert!(browser.text().await.contains("Signed in at the app"));
    // Cookies are per host, not per port: the provider's own
    // (`_session.legacy`, on http://127.0.0.1) are the app's cookies too
    // here. An app on https://localhost has a jar of its own (below).

    // The ID token of that login names it (sid): the client requires it.
    let tokens = redeem(&provider, &code, &redirect_uri, verifier).await;
    let id = jwt_claims(tokens["id_token"].as_str().expect("id_token"));
    assert_eq!(id["sub"], "alice", "{id}");
    assert_eq!(id["nonce"], "n-0S6", "{id}");
    let sid = id["sid"].as_str().expect("sid in the ID token").to_owned();

    // RP-initiated logout with a post_logout_redirect_uri: the provider
    // asks, then tells the app over the back channel and sends the user
    // back with the state.
    browser
        .goto(&format!(
            "{}/session/end?client_id={CLIENT_ID}&post_logout_redirect_uri={}&state=bye-state",
            provider.issuer,
            app.url("/bye")
        ))
        .await;
    assert!(
        browser.text().await.contains("Do you want to sign-out"),
        "{}",
        browser.text().await
    );
    browser.confirm_provider_logout().await;
    let bye = browser.url().await;
    assert_eq!(bye, app.url("/bye?state=bye-state"));
    let logout = tokio::task::block_in_place(|| provider.wait_for("backchannel.success"));
    assert_eq!(logout["sid"], sid.as_str(), "{logout}");
    assert!(
        app.seen()
            .iter()
            .any(|l| l.starts_with("POST /backchannel") && l.contains("logout_token=")),
        "{:#?}",
        app.seen()
    );

    // Signed out at the provider: the next authorization asks for a login
    // again. Without a post_logout_redirect_uri the provider ends on its
    // own "Sign-out Success" page.
    browser.goto(&authorize).await;
    let back = browser.oidc_provider_login("alice", "any password").await;
    assert!(back.starts_with(&redirect_uri), "{back}");
    browser
        .goto(&format!("{}/session/end", provider.issuer))
        .await;
    browser.confirm_provider_logout().await;
    let end = browser.url().await;
    assert!(
        end.starts_with(&format!("{}/session/end/success", provider.issuer)),
        "{end}"
    );
    assert!(browser.text().await.contains("Sign-out Success"));
    eprintln!("browser flow took {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apps_secure_host_only_cookie_is_seen_tampered_with_and_sent_back_by_the_browser() {
    let app = App::start().await;
    let browser = Browser::start().await;
    browser.goto(&app.url("/cb?code=c&state=s")).await;
    let cookie = |all: Vec<Cookie>| all.into_iter().find(|c| c.name == SESSION_COOKIE);
    let set = cookie(browser.cookies().await).expect("the app's cookie is kept");
    assert_eq!(
        set,
        Cookie {
            name: SESSION_COOKIE.into(),
            value: "original".into(),
            path: Some("/".into()),
            // Host-only, but WebDriver names the host.
            domain: Some("127.0.0.1".into()),
            secure: true,
            http_only: true,
            same_site: Some("Lax".into()),
        }
    );

    // Tampered with: the new value, the same flags, and sent as such.
    browser.set_cookie(SESSION_COOKIE, "tampered").await;
    let all = browser.cookies().await;
    assert_eq!(all.len(), 1, "replaced, not added beside it: {all:?}");
    let tampered = cookie(all).expect("still there");
    assert_eq!(tampered.value, "tampered");
    assert!(tampered.secure && tampered.http_only, "{tampered:?}");
    assert_eq!(tampered.same_site.as_deref(), Some("Lax"));
    let (status, body) = browser.fetch("/whoami").await;
    assert_eq!((status, body.as_str()), (200, "__Host-smoke=tampered"));

    // Another host name is another cookie jar, whatever the port.
    browser.goto(&app.url_at("localhost", "/whoami")).await;
    assert_eq!(browser.text().await, "");
    browser.goto(&app.url("/cb?code=c&state=s")).await;
    let (status, body) = browser.fetch("/whoami").await;
    assert_eq!((status, body.as_str()), (200, "__Host-smoke=original"));
    browser.set_cookie(SESSION_COOKIE, "tampered").await;

    // A redirect answered to the page's fetch is opaque: status 0.
    assert_eq!(browser.fetch("/elsewhere").await, (0, String::new()));

    // A POST navigation from the page: same origin, cookie sent.
    browser.submit_post_form("/logout").await;
    assert_eq!(browser.url().await, app.url("/bye"));
    let post = app
        .seen()
        .into_iter()
        .find(|l| l.starts_with("POST /logout"))
        .expect("the app got the POST");
    assert!(
        post.contains("cookie=__Host-smoke=tampered")
            && post.contains(&format!("origin={}", app.url(""))),
        "{post}"
    );

    // Another browser is another profile: no cookie of the first.
    let other = Browser::start().await;
    other.goto(&app.url("/whoami")).await;
    assert_eq!(other.text().await, "");
    assert!(other.cookies().await.is_empty());

    browser.delete_cookie(SESSION_COOKIE).await;
    assert!(cookie(browser.cookies().await).is_none());
    assert_eq!(browser.fetch("/whoami").await, (200, String::new()));
}
