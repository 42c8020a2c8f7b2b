//! What operators rely on: reload without a failed request, certificates
//! renewed on disk, readiness that tells the truth, metrics that count what
//! happened, and a demo that does what it prints.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use gatehouse_test_support::*;
use http::StatusCode;
use http_body_util::BodyExt;
use jsonwebtoken::Algorithm;

fn reload_config(backend: SocketAddr, header: &str) -> String {
    format!(
        r#"
listeners:
  - address: 127.0.0.1:0
issuers:
  - issuer: {ISS}
    audiences: [{AUD}]
    algorithms: [RS256]
    jwks: {{ file: {jwks} }}
routes:
  - path_prefix: /
    backends: [http://{backend}]
    identity_headers:
      - {{ claim: sub, header: {header} }}
logging: {{ level: warn }}
"#,
        jwks = fixture("jwks.json").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_under_load_fails_no_request_and_applies_the_new_config() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("gatehouse.yaml");
    std::fs::write(&path, reload_config(backend.addr, "X-Auth-Subject")).expect("write");
    crypto();
    let loaded = gatehouse::config::load(&path).expect("config");
    let gw = gatehouse::server::start(&loaded).await.expect("start");
    let addr = gw.addrs()[0];
    let token = mint(Algorithm::RS256, "steady");

    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..200 {
        let (client, ok, failed, stop, token) = (
            client.clone(),
            ok.clone(),
            failed.clone(),
            stop.clone(),
            token.clone(),
        );
        workers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let req = http::Request::get(format!("http://{addr}/load"))
                    .header("authorization", format!("Bearer {token}"))
                    .body(http_body_util::Empty::new())
                    .expect("request");
                match client.request(req).await {
                    Ok(r) if r.status() == StatusCode::OK => {
                        let _ = r.into_body().collect().await;
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A broken file first: refused, the old config keeps serving.
    std::fs::write(&path, "listeners: [\n").expect("write");
    let err = gw.reload().await.expect_err("broken config refused");
    assert!(err.contains("gatehouse.yaml:"), "{err}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Then a good one, under the same load.
    std::fs::write(&path, reload_config(backend.addr, "X-User")).expect("write");
    gw.reload().await.expect("reload");
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    println!("requests across two reloads: {ok} ok, {failed} failed");
    assert_eq!(failed, 0);
    assert!(ok > 200, "load was applied ({ok})");
    let h = backend.last().headers;
    assert_eq!(h["x-user"], "steady", "new config in force");
    assert!(h.get("x-auth-subject").is_none());
}

/// Whether a TLS handshake with this SNI name verifies against the test CA.
async fn handshake_ok(addr: SocketAddr, sni: &str) -> bool {
    use rustls::pki_types::{pem::PemObject, CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(fixture("ca.crt.pem")).expect("ca") {
        roots.add(c.expect("cert")).expect("add");
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let Ok(tcp) = tokio::net::TcpStream::connect(addr).await else {
        return false;
    };
    let name = ServerName::try_from(sni.to_owned()).expect("name");
    tokio_rustls::TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .is_ok()
}

#[tokio::test]
async fn certificate_replaced_on_disk_is_served_by_the_next_handshake() {
    let backend = Backend::start().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
    std::fs::copy(fixture("server.crt.pem"), &cert).expect("copy");
    std::fs::copy(fixture("server.key.pem"), &key).expect("copy");
    let yaml = format!(
        r#"
listeners:
  - address: 127.0.0.1:0
    tls: {{ certificates: [{{ cert: {cert}, key: {key} }}] }}
routes:
  - backends: [http://{backend}]
    auth: off
logging: {{ level: warn }}
"#,
        cert = cert.display(),
        key = key.display(),
        backend = backend.addr
    );
    let path = dir.path().join("gatehouse.yaml");
    std::fs::write(&path, yaml).expect("write");
    crypto();
    let gw = gatehouse::server::start(&gatehouse::config::load(&path).expect("config"))
        .await
        .expect("start");
    gatehouse::server::spawn_reloader(&gw);
    let addr = gw.addrs()[0];
    assert!(handshake_ok(addr, "localhost").await);
    assert!(
        !handshake_ok(addr, "other.test").await,
        "the first certificate does not cover other.test"
    );

    // Renewal as certbot does it: new files written next to the old ones,
    // then moved into place.
    std::fs::copy(fixture("other.key.pem"), dir.path().join("tls.key.new")).expect("copy");
    std::fs::copy(fixture("other.crt.pem"), dir.path().join("tls.crt.new")).expect("copy");
    std::fs::rename(dir.path().join("tls.key.new"), &key).expect("rename");
    std::fs::rename(dir.path().join("tls.crt.new"), &cert).expect("rename");
    let renewed = within(Duration::from_secs(5), || handshake_ok(addr, "other.test")).await;
    assert!(
        renewed.is_some(),
        "the renewed certificate is served without a restart"
    );
}

async fn admin_get(addr: SocketAddr, path: &str) -> Answer {
    send(
        addr,
        Proto::Plain,
        "admin",
        get(Proto::Plain, "admin", path, None, &[]),
    )
    .await
}

#[tokio::test]
async fn readyz_flips_when_the_authority_is_gone_past_max_staleness_and_back() {
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = Backend::start().await;
    let port = free_port();
    let store = yaml::Store::Redb(dir.path().join("a.redb"));
    let authority_yaml = yaml::Config::authority(yaml::Authority::new(dir.path(), port, store))
        .issuers(vec![yaml::Issuer::test().with("algorithms", "[RS256]")])
        .yaml();
    let cfg = dir.path().join("authority.yaml");
    std::fs::write(&cfg, authority_yaml).expect("write");
    let mut auth = Proc::start_with("authority", &cfg, "authority listening");
    let gw_yaml = format!(
        r#"
listeners:
  - address: 127.0.0.1:0
admin:
  listen: 127.0.0.1:0
issuers:
  - issuer: {ISS}
    audiences: [{AUD}]
    algorithms: [RS256]
    jwks: {{ file: {jwks} }}
routes:
  - backends: [http://{backend}]
revocation:
  authority: {{ url: "http://127.0.0.1:{port}", token: {{ file: {token} }} }}
  poll_wait: 1s
  max_staleness: 3s
logging: {{ level: warn }}
"#,
        jwks = fixture("jwks.json").display(),
        backend = backend.addr,
        token = dir.path().join("feed.token").display()
    );
    let (gw, _gdir) = start_gateway(&gw_yaml).await;
    let admin = gw.admin_addr().expect("admin listener");
    assert_eq!(admin_get(admin, "/healthz").await.status, StatusCode::OK);
    let a = admin_get(admin, "/readyz").await;
    assert_eq!(a.status, StatusCode::OK, "{:?}", a.body);

    auth.kill();
    let down = within(Duration::from_secs(10), || async {
        admin_get(admin, "/readyz").await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert!(down.is_some(), "not ready once the set is stale");
    let a = admin_get(admin, "/readyz").await;
    assert!(
        a.json()["reasons"][0]
            .as_str()
            .unwrap_or("")
            .contains("stale"),
        "{:?}",
        a.json()
    );
    // Still alive, and (fail_static) still serving with the last known set.
    assert_eq!(admin_get(admin, "/healthz").await.status, StatusCode::OK);

    let _auth = Proc::start_with("authority", &cfg, "authority listening");
    let up = within(Duration::from_secs(10), || async {
        admin_get(admin, "/readyz").await.status == StatusCode::OK
    })
    .await;
    assert!(up.is_some(), "ready again when the authority is back");
}

fn metric(text: &str, name_and_labels: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name_and_labels))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// A gateway with its admin listener (metrics) on `admin_port`, JSON
/// access logs, one route `app` to `backend` with `public` as its public
/// path.
fn counted_gateway_yaml(backend: SocketAddr, admin_port: u16, public: &str) -> String {
    format!(
        r#"
listeners:
  - address: 127.0.0.1:0
admin:
  listen: 127.0.0.1:{admin_port}
issuers:
  - issuer: {ISS}
    audiences: [{AUD}]
    algorithms: [RS256]
    jwks: {{ file: {jwks} }}
routes:
  - name: app
    backends: [http://{backend}]
    public_paths: [{public}]
logging: {{ format: json, level: info }}
"#,
        jwks = fixture("jwks.json").display(),
    )
}

/// An HTTP/2 client that cancels its request (RST_STREAM) before the
/// answer: the backend may already have it, so it is counted and logged,
/// as status 499 `client_closed`. It was neither: hyper drops the
/// request's future, and the line was written only at the answer.
#[tokio::test]
async fn a_request_the_client_cancels_before_its_answer_is_counted_and_logged() {
    use tokio::io::AsyncWriteExt;
    let backend = Backend::start().await;
    let admin_port = free_port();
    let yaml = counted_gateway_yaml(backend.addr, admin_port, "/slow");
    let gw = Proc::start("run", &yaml, "listening");
    // HTTP/2 with prior knowledge: a GET of /slow (the backend takes 3 s),
    // cancelled 300 ms later (HPACK, RFC 7541 Appendix A).
    let frame = |kind: u8, flags: u8, stream: u32, payload: &[u8]| {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    };
    let mut block = vec![0x82, 0x86, 0x44, 5];
    block.extend_from_slice(b"/slow");
    block.extend_from_slice(&[0x41, 9]);
    block.extend_from_slice(b"localhost");
    let mut hello = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    hello.extend(frame(0x4, 0, 0, &[]));
    hello.extend(frame(0x1, 0x5, 1, &block));
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .expect("connect");
    s.write_all(&hello).await.expect("write");
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(&frame(0x3, 0, 1, &8u32.to_be_bytes()))
        .await
        .expect("write RST_STREAM");
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    let counted = within(Duration::from_secs(5), || async {
        let text = String::from_utf8_lossy(&admin_get(admin, "/metrics").await.body).into_owned();
        metric(
            &text,
            r#"gatehouse_requests_total{route="app",status="499",outcome="client_closed"}"#,
        ) == 1.0
    })
    .await;
    assert!(counted.is_some(), "the cancelled request was not counted");
    let logged = within(Duration::from_secs(5), || async {
        gw.lines
            .lock()
            .expect("lines")
            .iter()
            .any(|l| l.contains("499") && l.contains("client_closed") && l.contains("/slow"))
    })
    .await;
    assert!(
        logged.is_some(),
        "no access log line for the cancelled request:\n{}",
        gw.lines.lock().expect("lines").join("\n")
    );
    drop(s);
}

#[tokio::test]
async fn metrics_count_exactly_the_requests_made() {
    let backend = Backend::start().await;
    let admin_port = free_port();
    let yaml = counted_gateway_yaml(backend.addr, admin_port, "/health");
    let gw = Proc::start("run", &yaml, "listening");
    let token = mint(Algorithm::RS256, "counted");
    let go = |t: Option<String>, path: &'static str| {
        let addr = gw.addr;
        async move {
            send(
                addr,
                Proto::Plain,
                "localhost",
                get(Proto::Plain, "localhost", path, t.as_deref(), &[]),
            )
            .await
            .status
        }
    };
    for _ in 0..7 {
        assert_eq!(go(Some(token.clone()), "/x").await, StatusCode::OK);
    }
    for _ in 0..3 {
        assert_eq!(go(None, "/x").await, StatusCode::UNAUTHORIZED);
    }
    for _ in 0..2 {
        assert_eq!(
            go(Some("bad.token.here".into()), "/x").await,
            StatusCode::UNAUTHORIZED
        );
    }
    assert_eq!(go(None, "/health").await, StatusCode::OK);
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    let text = String::from_utf8_lossy(&admin_get(admin, "/metrics").await.body).into_owned();
    assert_eq!(
        metric(
            &text,
            r#"gatehouse_requests_total{route="app",status="200",outcome="allowed"}"#
        ),
        7.0,
        "{text}"
    );
    assert_eq!(
        metric(
            &text,
            r#"gatehouse_requests_total{route="app",status="401",outcome="missing_token"}"#
        ),
        3.0
    );
    assert_eq!(
        metric(
            &text,
            r#"gatehouse_requests_total{route="app",status="401",outcome="invalid_token"}"#
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            r#"gatehouse_requests_total{route="app",status="200",outcome="public"}"#
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            r#"gatehouse_request_duration_seconds_count{route="app"}"#
        ),
        13.0
    );
    // Full verifications only: the valid token once (its six repeats are
    // cache hits, not timed) and the two bad ones.
    assert_eq!(
        metric(&text, "gatehouse_token_validation_duration_seconds_count"),
        3.0
    );
    assert_eq!(
        metric(
            &text,
            r#"gatehouse_jwks_keys{issuer="https://issuer.test"}"#
        ),
        3.0
    );
    assert!(text.contains("gatehouse_open_connections"), "{text}");
}

#[test]
fn demo_runs_to_the_end_and_its_printed_commands_behave_as_printed() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let (g, a, b) = (free_port(), free_port(), free_port());
    let mut child = Command::new(env!("CARGO_BIN_EXE_gatehouse"))
        .current_dir(root)
        .args([
            "demo",
            "--gateway-port",
            &g.to_string(),
            "--authority-port",
            &a.to_string(),
            "--backend-port",
            &b.to_string(),
        ])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn demo");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = Vec::new();
    for line in BufReader::new(stdout).lines().map_while(Result::ok) {
        let done = line.contains("Ctrl-C stops the demo");
        lines.push(line);
        if done {
            break;
        }
    }
    let all = lines.join("\n");
    assert!(all.contains("self-check (its own token): request -> 200, revoke -> 201, same request -> 401: as expected"), "{all}");
    let export = lines
        .iter()
        .find(|l| l.starts_with("export TOKEN="))
        .expect("token line")
        .clone();
    let curls: Vec<&String> = lines.iter().filter(|l| l.starts_with("curl ")).collect();
    assert_eq!(curls.len(), 3, "{all}");
    let run = |cmd: &str| -> String {
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("{export}\n{cmd}"))
            .output()
            .expect("bash");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let status = |out: &str| {
        out.lines()
            .next()
            .and_then(|l| l.split(' ').nth(1))
            .unwrap_or("")
            .to_owned()
    };
    let first = run(curls[0]);
    assert_eq!(status(&first), "200", "{first}");
    assert!(
        first.contains("\"x-auth-subject\":\"demo-user\""),
        "{first}"
    );
    let revoke = run(curls[1]);
    assert_eq!(status(&revoke), "201", "{revoke}");
    let refused = within_blocking(Duration::from_secs(2), || status(&run(curls[2])) == "401");
    assert!(refused, "step 3 is refused");
    assert!(run(curls[2]).contains("token revoked"));
    let _ = child.kill();
    let _ = child.wait();
}

fn within_blocking(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The kernel spreads SO_REUSEPORT connections by a hash of their
/// addresses, so 100 connections would land unevenly on two workers (for
/// example 44 and 56; an even split by chance is rare) and the busier
/// worker would set the latency tail. The gateway hands a connection to
/// the least loaded worker instead, and shows the split in
/// `gatehouse_worker_connections`.
#[tokio::test]
async fn connections_are_spread_evenly_over_the_workers_and_shown_per_worker() {
    let backend = Backend::start().await;
    let admin_port = free_port();
    let yaml = format!(
        r#"
listeners:
  - address: 127.0.0.1:0
admin:
  listen: 127.0.0.1:{admin_port}
workers: 2
issuers:
  - issuer: {ISS}
    audiences: [{AUD}]
    algorithms: [RS256]
    jwks: {{ file: {jwks} }}
routes:
  - backends: [http://{backend}]
logging: {{ format: json, level: info }}
"#,
        jwks = fixture("jwks.json").display(),
        backend = backend.addr
    );
    let gw = Proc::start("run", &yaml, "listening");
    let admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().expect("addr");
    let token = mint(Algorithm::RS256, "spread");
    // Opened one after another, each answered before the next: every
    // connection is counted on its worker before the next is accepted.
    let mut open = Vec::new();
    for _ in 0..100 {
        let stream = tokio::net::TcpStream::connect(gw.addr)
            .await
            .expect("connect");
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                .await
                .expect("handshake");
        let task = tokio::spawn(conn);
        let res = sender
            .send_request(get(Proto::Plain, "localhost", "/", Some(&token), &[]))
            .await
            .expect("answer");
        assert_eq!(res.status(), StatusCode::OK);
        res.into_body().collect().await.expect("body");
        open.push((sender, task));
    }
    let text = String::from_utf8_lossy(&admin_get(admin, "/metrics").await.body).into_owned();
    let per_worker = [
        metric(&text, "gatehouse_worker_connections{worker=\"0\"}"),
        metric(&text, "gatehouse_worker_connections{worker=\"1\"}"),
    ];
    assert_eq!(per_worker, [50.0, 50.0], "100 connections over 2 workers");
    assert!(
        metric(&text, "gatehouse_connections_handed_off_total") >= 1.0,
        "the kernel's split was uneven, so some connections were handed over"
    );
    drop(open);
    let drained = within(Duration::from_secs(5), || async {
        let text = String::from_utf8_lossy(&admin_get(admin, "/metrics").await.body).into_owned();
        metric(&text, "gatehouse_worker_connections{worker=\"0\"}") == 0.0
            && metric(&text, "gatehouse_worker_connections{worker=\"1\"}") == 0.0
    })
    .await;
    assert!(
        drained.is_some(),
        "closed connections are no longer counted"
    );
}

/// CPUs listed in a `Cpus_allowed_list` line of `/proc/.../status`
/// (`0-3,6`), ascending.
fn cpu_list(status: &str) -> Vec<usize> {
    let list = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .expect("Cpus_allowed_list line")
        .trim();
    let mut cpus = Vec::new();
    for part in list.split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().expect("cpu")..=b.parse().expect("cpu")),
            None => cpus.push(part.parse().expect("cpu")),
        }
    }
    cpus
}

/// `worker_cpu_affinity: auto` binds worker i to the i-th CPU the process
/// may use (wrapping around), as nginx's `worker_cpu_affinity auto`; the
/// control-plane threads keep every CPU. With `off` (the default, the
/// other gateways in this suite) nothing is bound.
#[tokio::test]
async fn workers_bound_to_cpus_each_run_on_their_own_and_still_serve() {
    let backend = Backend::start().await;
    let allowed = cpu_list(&std::fs::read_to_string("/proc/self/status").expect("own status"));
    let yaml = format!(
        r#"
listeners:
  - address: 127.0.0.1:0
workers: 3
worker_cpu_affinity: auto
issuers:
  - issuer: {ISS}
    audiences: [{AUD}]
    algorithms: [RS256]
    jwks: {{ file: {jwks} }}
routes:
  - backends: [http://{backend}]
logging: {{ format: json, level: info }}
"#,
        jwks = fixture("jwks.json").display(),
        backend = backend.addr
    );
    let gw = Proc::start("run", &yaml, "listening");
    let token = mint(Algorithm::RS256, "bound");
    let res = send(
        gw.addr,
        Proto::Plain,
        "localhost",
        get(Proto::Plain, "localhost", "/", Some(&token), &[]),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK, "a bound worker serves");
    let mut workers = Vec::new();
    let mut others = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{}/task", gw.pid())).expect("tasks") {
        let dir = task.expect("task").path();
        let name = std::fs::read_to_string(dir.join("comm")).expect("comm");
        let cpus = cpu_list(&std::fs::read_to_string(dir.join("status")).expect("status"));
        // `comm` is cut at 15 bytes: "gatehouse-worke".
        if name.starts_with("gatehouse-worke") {
            workers.push(cpus);
        } else {
            others.push((name.trim().to_owned(), cpus));
        }
    }
    assert_eq!(workers.len(), 3, "three worker threads");
    workers.sort();
    let mut expected: Vec<Vec<usize>> = (0..3).map(|i| vec![allowed[i % allowed.len()]]).collect();
    expected.sort();
    assert_eq!(
        workers, expected,
        "worker i on the i-th allowed CPU, one CPU each"
    );
    for (name, cpus) in others {
        assert_eq!(cpus, allowed, "{name} is not bound");
    }
}

/// A reload that changes what only a restart can apply names what changed
/// and changes nothing; writing out the worker count the gateway already
/// runs with (absent = one per CPU) is not a change.
#[tokio::test]
async fn a_reload_that_needs_a_restart_says_which_setting_and_keeps_serving() {
    let backend = Backend::start().await;
    let base = reload_config(backend.addr, "X-Auth-Subject");
    let (gw, dir) = start_gateway(&base).await;
    let path = dir.path().join("gatehouse.yaml");
    let cpus = std::thread::available_parallelism().map_or(1, |p| p.get().min(16));
    std::fs::write(&path, format!("{base}workers: {cpus}\n")).expect("write");
    gw.reload()
        .await
        .expect("the count it runs with is no change");
    std::fs::write(&path, format!("{base}worker_cpu_affinity: auto\n")).expect("write");
    let err = gw.reload().await.expect_err("refused");
    assert!(
        err.contains("worker_cpu_affinity changed; restart to apply") && !err.contains("workers"),
        "{err}"
    );
    std::fs::write(&path, format!("{base}workers: {}\n", cpus + 1)).expect("write");
    let err = gw.reload().await.expect_err("refused");
    assert!(err.contains("workers changed; restart to apply"), "{err}");
    let token = mint(Algorithm::RS256, "still");
    let res = send(
        gw.addrs()[0],
        Proto::Plain,
        "localhost",
        get(Proto::Plain, "localhost", "/", Some(&token), &[]),
    )
    .await;
    assert_eq!(
        res.status,
        StatusCode::OK,
        "the running config keeps serving"
    );
}

/// Every slot under `limits.max_connections` can serve any listener: an
/// accept loop waiting on a quiet listener holds no slot. (Each worker's
/// loop on each listener used to hold one while it waited, so with two
/// listeners and two workers a limit of 2 served almost nothing and a
/// listener could stop answering for good.)
#[tokio::test]
async fn a_quiet_listener_keeps_no_connection_slot_from_a_busy_one() {
    let backend = Backend::start().await;
    let (a, b) = (free_port(), free_port());
    let yaml = format!(
        r#"
listeners:
  - address: 127.0.0.1:{a}
  - address: 127.0.0.1:{b}
workers: 2
limits:
  max_connections: 2
issuers:
  - issuer: {ISS}
    audiences: [{AUD}]
    algorithms: [RS256]
    jwks: {{ file: {jwks} }}
routes:
  - backends: [http://{backend}]
logging: {{ format: json, level: info }}
"#,
        jwks = fixture("jwks.json").display(),
        backend = backend.addr
    );
    let _gw = Proc::start("run", &yaml, "listening");
    let token = mint(Algorithm::RS256, "busy");
    for round in 0..4 {
        let port = if round % 2 == 0 { a } else { b };
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let mut held = Vec::new();
        for n in 0..2 {
            let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
            let (mut sender, conn) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .expect("handshake");
            let task = tokio::spawn(conn);
            let res = tokio::time::timeout(
                Duration::from_secs(5),
                sender.send_request(get(Proto::Plain, "localhost", "/", Some(&token), &[])),
            )
            .await
            .unwrap_or_else(|_| panic!("round {round}: connection {n} of 2 on :{port} not served"))
            .expect("answer");
            assert_eq!(res.status(), StatusCode::OK);
            res.into_body().collect().await.expect("body");
            held.push((sender, task));
        }
        drop(held);
        // The slots come back once the gateway sees the connections close.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
