//! A real OpenID provider for tests: node's `oidc-provider` (pinned in
//! `tests/oidc/package-lock.json`; `scripts/test` installs it with `npm ci
//! --prefix tests/oidc`), run by `tests/oidc/provider.mjs` on loopback.
//! Its protocol (configuration on stdin, events on stdout) is described at
//! the top of that file.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

pub fn oidc_dir() -> PathBuf {
    crate::repo_root().join("tests/oidc")
}

/// Fails (never skips) when the pinned provider is not installed.
pub fn require_node_modules() {
    let installed = oidc_dir().join("node_modules/oidc-provider/package.json");
    assert!(
        installed.exists(),
        "{} is missing: the OpenID provider these tests run is not installed. \
         Run scripts/test (it installs it), or `npm ci --prefix tests/oidc`.",
        installed.display()
    );
}

fn node() -> Command {
    Command::new("node")
}

/// `tests/oidc/provider.mjs` as a child process; every line it writes is
/// kept (its stdout JSON lines are also sent to `events`).
pub struct OidcProvider {
    child: Child,
    stdin: Option<ChildStdin>,
    /// `http://127.0.0.1:<port>`, known once it listens.
    pub issuer: String,
    lines: Arc<Mutex<Vec<String>>>,
    events: mpsc::Receiver<Value>,
}

impl OidcProvider {
    /// Starts it and waits until it listens; it serves once configured.
    pub fn start() -> OidcProvider {
        require_node_modules();
        let mut child = node()
            .arg(oidc_dir().join("provider.mjs"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run `node` ({e}): run scripts/test, which installs nodejs and npm")
            });
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, events) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
            {
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    let _ = tx.send(v);
                }
                sink.lock().expect("lock").push(line);
            }
        });
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                sink.lock().expect("lock").push(format!("stderr: {line}"));
            }
        });
        let stdin = child.stdin.take();
        let mut p = OidcProvider {
            child,
            stdin,
            issuer: String::new(),
            lines,
            events,
        };
        let listening = p.wait_for("listening");
        p.issuer = listening["issuer"].as_str().expect("issuer").to_owned();
        p
    }

    /// Sends its configuration (clients, resource) and waits until it serves.
    pub fn configure(&mut self, config: &Value) {
        let stdin = self.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{config}").expect("configure the provider");
        stdin.flush().expect("flush");
        self.wait_for("ready");
    }

    /// The next line with this `message` (earlier ones are passed over).
    pub fn wait_for(&self, message: &str) -> Value {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) if v["message"] == message => return v,
                Ok(_) => {}
                Err(_) => panic!(
                    "the provider never said {message:?}; it wrote:\n{}",
                    self.log()
                ),
            }
        }
    }

    pub fn log(&self) -> String {
        self.lines.lock().expect("lock").join("\n")
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl OidcProvider {
    /// The next line it writes, whatever its message, within `limit`.
    pub fn next_event(&self, limit: Duration) -> Option<Value> {
        self.events.recv_timeout(limit).ok()
    }

    /// The provider's loopback address (from its issuer).
    pub fn addr(&self) -> SocketAddr {
        self.issuer
            .trim_start_matches("http://")
            .parse()
            .expect("issuer address")
    }
}
