//! A real browser for end-to-end tests of a browser login: Debian's
//! headless Chromium driven over WebDriver (`chromedriver`, through the
//! `fantoccini` client). `scripts/test` installs both (`apt-get install
//! chromium chromium-driver`).
//!
//! Each [`Browser`] is its own chromedriver process and its own fresh
//! Chromium profile (a temporary `--user-data-dir`): two values never share
//! cookies, so a test can play two users, or a user and an attacker.
//!
//! Everything panics with a clear message on failure (test support): a
//! test reads as the steps a user takes.

use std::future::Future;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};

/// Debian's paths (packages `chromium` and `chromium-driver`).
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long a navigation (a form submitted, a button pressed) or a page of
/// the provider may take on a loaded test machine.
const NAVIGATION: Duration = Duration::from_secs(10);

/// A window global set before an action that navigates: the action is done
/// once a new document (without it) has loaded, even at the same URL.
const MARKER: &str = "__gatehouseBeforeNavigation";

/// A cookie as WebDriver reports it (HttpOnly ones included: WebDriver sees
/// what `document.cookie` does not).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cookie {
    pub name: String,
    pub value: String,
    pub path: Option<String>,
    /// As WebDriver reports it: for a host-only cookie (no `Domain`
    /// attribute, as every `__Host-` cookie) Chromium gives the host
    /// (`Some("127.0.0.1")`), so host-only and domain cookies look alike.
    pub domain: Option<String>,
    pub secure: bool,
    pub http_only: bool,
    /// `"Strict"`, `"Lax"` or `"None"`, as the browser reports it.
    pub same_site: Option<String>,
}

/// A headless Chromium with its own profile, driven by its own
/// chromedriver. Dropping it ends the browser session and kills
/// chromedriver (and the Chromium it started).
pub struct Browser {
    client: Client,
    driver: Child,
    port: u16,
    session: Option<String>,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Starts `chromedriver` on a free loopback port, waits until it
    /// answers, and opens a headless Chromium session in a fresh profile.
    /// Certificate errors are ignored (the tests' servers use the
    /// fixtures' certificate), so `https://127.0.0.1:<port>` and
    /// `https://localhost:<port>` load as secure origins.
    pub async fn start() -> Browser {
        for bin in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(bin).exists(),
                "{bin} is missing: the browser tests drive Debian's chromium over \
                 chromedriver. Run scripts/test (it installs them), or \
                 `apt-get install chromium chromium-driver`."
            );
        }
        let profile = tempfile::tempdir().expect("a temporary Chromium profile directory");
        let port = crate::free_port();
        let mut driver = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: Drop kills chromedriver and every
            // Chromium process it started, whatever state they are in.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {CHROMEDRIVER} ({e}): run scripts/test"));
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = driver.try_wait() {
                panic!("{CHROMEDRIVER} --port={port} exited at start: {status}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{CHROMEDRIVER} did not listen on 127.0.0.1:{port} within 20 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let args = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--ignore-certificate-errors",
        ]
        .into_iter()
        .map(String::from)
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let caps = json!({
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": { "binary": CHROMIUM, "args": args },
        });
        let caps = caps.as_object().cloned().expect("capabilities object");
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(caps)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .unwrap_or_else(|e| panic!("chromedriver could not start {CHROMIUM}: {e}"));
        let session = client.session_id().await.ok().flatten();
        let mut browser = Browser {
            client,
            driver,
            port,
            session,
            _profile: profile,
        };
        browser.driver_alive();
        browser
    }

    fn driver_alive(&mut self) {
        if let Ok(Some(status)) = self.driver.try_wait() {
            panic!("chromedriver exited: {status}");
        }
    }

    /// Navigates to `url` and waits until the page has loaded (redirects
    /// followed).
    pub async fn goto(&self, url: &str) {
        self.client
            .goto(url)
            .await
            .unwrap_or_else(|e| panic!("the browser could not open {url}: {e}"));
    }

    /// The current page's URL (an error page keeps the URL that failed).
    pub async fn url(&self) -> String {
        self.client
            .current_url()
            .await
            .expect("the browser's current URL")
            .to_string()
    }

    /// What a user reads on the page: `document.body.innerText` ("" when
    /// the document has no body).
    pub async fn text(&self) -> String {
        self.script(
            "return document.body ? document.body.innerText : '';",
            vec![],
        )
        .await
        .as_str()
        .unwrap_or_default()
        .to_owned()
    }

    /// The current document's HTML as the browser has it now.
    pub async fn html(&self) -> String {
        self.client.source().await.expect("the page's HTML")
    }

    /// The cookies the browser would send to the current page's URL,
    /// HttpOnly ones included.
    pub async fn cookies(&self) -> Vec<Cookie> {
        self.client
            .get_all_cookies()
            .await
            .expect("the browser's cookies")
            .into_iter()
            .map(|c| Cookie {
                name: c.name().to_owned(),
                value: c.value().to_owned(),
                path: c.path().map(str::to_owned),
                domain: c.domain().map(str::to_owned),
                secure: c.secure().unwrap_or(false),
                http_only: c.http_only().unwrap_or(false),
                same_site: c.same_site().map(|s| s.to_string()),
            })
            .collect()
    }

    /// Sets cookie `name` to `value` for the current page, as a user
    /// tampering with their own browser can: Secure, path `/`, no `Domain`
    /// (host-only), so a `__Host-` cookie is accepted on an https page. An
    /// existing cookie of that name keeps its HttpOnly and SameSite (its
    /// value is replaced); otherwise the cookie is added (HttpOnly,
    /// SameSite=Lax).
    pub async fn set_cookie(&self, name: &str, value: &str) {
        let old = self.cookies().await.into_iter().find(|c| c.name == name);
        let cookie = json!({
            "name": name,
            "value": value,
            "path": "/",
            "secure": true,
            "httpOnly": old.as_ref().is_none_or(|c| c.http_only),
            "sameSite": old.and_then(|c| c.same_site).unwrap_or_else(|| "Lax".into()),
        });
        self.client
            .issue_cmd(AddHostOnlyCookie(json!({ "cookie": cookie })))
            .await
            .unwrap_or_else(|e| panic!("the browser refused to set cookie {name}: {e}"));
    }

    /// Deletes cookie `name` of the current page.
    pub async fn delete_cookie(&self, name: &str) {
        self.client
            .delete_cookie(name)
            .await
            .unwrap_or_else(|e| panic!("the browser could not delete cookie {name}: {e}"));
    }

    /// `fetch(path, {credentials: 'same-origin', redirect: 'manual'})`
    /// from the current page, as its own script would: the browser's
    /// cookies go with it (same origin), a cross-origin `path` is subject
    /// to CORS. Returns the status and the body text. A redirect is not
    /// followed and is opaque to the page: status 0 and an empty body.
    pub async fn fetch(&self, path: &str) -> (u16, String) {
        let script = r#"
            const [path, done] = arguments;
            fetch(path, { credentials: 'same-origin', redirect: 'manual' })
              .then(async (r) => done({ status: r.status, body: await r.text() }))
              .catch((e) => done({ error: String(e) }));
        "#;
        let v = self
            .client
            .execute_async(script, vec![json!(path)])
            .await
            .unwrap_or_else(|e| panic!("fetch({path:?}) in the page: {e}"));
        if let Some(e) = v.get("error") {
            panic!("fetch({path:?}) in the page failed: {e}");
        }
        let status = v["status"].as_u64().expect("fetch status") as u16;
        let body = v["body"].as_str().unwrap_or_default().to_owned();
        (status, body)
    }

    /// Submits an empty `<form method=POST action=...>` made in the current
    /// page (a POST navigation from that page, with its Origin and cookies,
    /// as a logout button does) and waits until the page it leads to has
    /// loaded.
    pub async fn submit_post_form(&self, action: &str) {
        let script = format!(
            "const f = document.createElement('form');
             f.method = 'POST';
             f.action = arguments[0];
             document.body.appendChild(f);
             window.{MARKER} = true;
             f.submit();"
        );
        self.script(&script, vec![json!(action)]).await;
        self.navigated(&format!("POST {action}")).await;
    }

    /// On the login page of oidc-provider's dev interactions: types `login`
    /// and `password` and signs in; presses Continue on the consent page if
    /// one follows. Returns the URL the browser arrived at once it has left
    /// the provider (its origin), typically the client's redirect URI with
    /// `code` and `state`.
    pub async fn oidc_provider_login(&self, login: &str, password: &str) -> String {
        let provider = origin(&self.url().await);
        let login_form = "form input[name=prompt][value=login]";
        self.wait_for_element(login_form, "oidc-provider's login page")
            .await;
        self.type_into("input[name=login]", login).await;
        self.type_into("input[name=password]", password).await;
        self.press("form button[type=submit]", "Sign-in").await;
        let deadline = Instant::now() + NAVIGATION;
        loop {
            let url = self.url().await;
            if origin(&url) != provider {
                return url;
            }
            if self.present("form input[name=prompt][value=consent]").await {
                self.press("form button[type=submit]", "Continue").await;
                continue;
            }
            if Instant::now() > deadline {
                panic!(
                    "the browser did not leave the provider ({provider}) within {NAVIGATION:?} \
                     after signing in as {login:?}; it is at {url}, showing:\n{}",
                    self.text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// On oidc-provider's RP-initiated logout confirmation ("Do you want to
    /// sign-out from ...?"): presses "Yes, sign me out" and waits for the
    /// page that follows: the `post_logout_redirect_uri` (with `state`) when
    /// the logout request had one, or else the provider's "Sign-out
    /// Success" page.
    pub async fn confirm_provider_logout(&self) {
        let yes = "button[name=logout][value=yes]";
        self.wait_for_element(yes, "oidc-provider's logout confirmation")
            .await;
        self.press(yes, "Yes, sign me out").await;
    }

    /// Polls the current URL until `pred` holds (returns it) or `timeout`
    /// passes (panics with the URL and the page's text).
    pub async fn wait_for_url(&self, pred: impl Fn(&str) -> bool, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let url = self.url().await;
            if pred(&url) {
                return url;
            }
            if Instant::now() > deadline {
                panic!(
                    "the browser is still at {url} after {timeout:?}; the page shows:\n{}",
                    self.text().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn script(&self, script: &str, args: Vec<Value>) -> Value {
        self.client
            .execute(script, args)
            .await
            .unwrap_or_else(|e| panic!("script in the page failed: {e}\n{script}"))
    }

    async fn present(&self, css: &str) -> bool {
        self.client.find(Locator::Css(css)).await.is_ok()
    }

    async fn wait_for_element(&self, css: &str, page: &str) {
        let found = poll(NAVIGATION, || self.present(css)).await;
        if !found {
            panic!(
                "not on {page} (no {css}): the browser is at {}, showing:\n{}",
                self.url().await,
                self.text().await
            );
        }
    }

    async fn type_into(&self, css: &str, text: &str) {
        let input = match self.client.find(Locator::Css(css)).await {
            Ok(input) => input,
            Err(e) => panic!("no {css} on {}: {e}", self.url().await),
        };
        input.clear().await.expect("clear the input");
        input.send_keys(text).await.expect("type into the input");
    }

    /// Clicks the element (a submit button) and waits for the page it
    /// leads to.
    async fn press(&self, css: &str, label: &str) {
        self.script(&format!("window.{MARKER} = true;"), vec![])
            .await;
        let button = match self.client.find(Locator::Css(css)).await {
            Ok(button) => button,
            Err(e) => panic!("no {label} button ({css}) on {}: {e}", self.url().await),
        };
        button
            .click()
            .await
            .unwrap_or_else(|e| panic!("pressing {label}: {e}"));
        self.navigated(label).await;
    }

    /// Waits until a new document has replaced the marked one and loaded.
    async fn navigated(&self, what: &str) {
        let check =
            format!("return window.{MARKER} === undefined && document.readyState === 'complete';");
        let done = poll(NAVIGATION, || async {
            // During the navigation a script may fail (no document yet).
            matches!(
                self.client.execute(&check, vec![]).await,
                Ok(Value::Bool(true))
            )
        })
        .await;
        if !done {
            panic!(
                "{what}: no new page loaded within {NAVIGATION:?}; the browser is at {}, \
                 showing:\n{}",
                self.url().await,
                self.text().await
            );
        }
    }
}

/// WebDriver's Add Cookie without a `domain` member: fantoccini's own
/// `add_cookie` sends `"domain": null`, which chromedriver refuses
/// ("invalid 'domain'"); without the member the cookie is host-only.
#[derive(Debug)]
struct AddHostOnlyCookie(Value);

impl fantoccini::wd::WebDriverCompatibleCommand for AddHostOnlyCookie {
    fn endpoint(
        &self,
        base_url: &url::Url,
        session_id: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base_url.join(&format!(
            "session/{}/cookie",
            session_id.unwrap_or_default()
        ))
    }

    fn method_and_body(&self, _request_url: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.0.to_string()))
    }
}

/// Polls `f` every 50 ms until it returns true (true) or `limit` passes
/// (false).
async fn poll<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        if f().await {
            return true;
        }
        if start.elapsed() > limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `scheme://host[:port]` of a URL.
fn origin(url: &str) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..]
        .find(['/', '?', '#'])
        .map_or(url.len(), |i| after_scheme + i);
    url[..end].to_ascii_lowercase()
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session synchronously (Drop cannot await the client):
        // chromedriver then quits Chromium and its profile is released.
        if let Some(id) = &self.session {
            use std::io::{Read, Write};
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
                let _ = write!(
                    s,
                    "DELETE /session/{id} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                    self.port
                );
                // Its answer comes once Chromium has quit (chromedriver
                // may keep the connection open: one read, not to EOF).
                let _ = s.read(&mut [0u8; 1024]);
            }
        }
        // Then chromedriver's whole process group, whatever is left of it.
        let _ = Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.driver.id())])
            .stderr(Stdio::null())
            .status();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
