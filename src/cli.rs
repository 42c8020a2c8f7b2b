//! Command line: `run`, `check`, `token`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

use crate::config;

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "Authentication gateway: TLS, JWT validation and revocation in front of legacy apps"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve with the given config until SIGTERM/SIGINT.
    Run {
        #[arg(long, short, default_value = "config/gatehouse.yaml")]
        config: PathBuf,
    },
    /// Validate a config and print every problem with file, line and reason.
    Check {
        #[arg(long, short, default_value = "config/gatehouse.yaml")]
        config: PathBuf,
    },
    /// Run the revocation authority (the `authority` section of the config).
    Authority {
        #[arg(long, short, default_value = "config/gatehouse.yaml")]
        config: PathBuf,
    },
    /// Mint a token with a local private key (development and demos).
    Token(Box<TokenArgs>),
    /// Revoke at an authority (a client of its admin API).
    Revoke(Box<RevokeArgs>),
    /// Print a browser session cookie for a route with `login`, sealed with
    /// the config's `sessions.keys`, for an ID token obtained elsewhere
    /// (testing an app behind gatehouse without a browser, benchmarks).
    /// Anyone holding the keys can do this: keep them secret.
    Session {
        #[arg(long, short, default_value = "config/gatehouse.yaml")]
        config: PathBuf,
        /// The route, by `name` (or its position, from 0).
        #[arg(long)]
        route: String,
        /// A file holding the ID token the session stands for (its claims
        /// are the session's; it is the logout credential).
        #[arg(long)]
        id_token: PathBuf,
    },
    /// Start a backend, a TLS gateway and its authority, and show a token
    /// working, being revoked, and being refused.
    Demo {
        #[arg(long, default_value_t = 8443)]
        gateway_port: u16,
        #[arg(long, default_value_t = 7400)]
        authority_port: u16,
        #[arg(long, default_value_t = 9000)]
        backend_port: u16,
        /// Directory with the dev keys, certificate and admin token.
        #[arg(long, default_value = "config/dev")]
        dev_dir: PathBuf,
        /// Run the sequence, report, and exit (non-zero if it misbehaved).
        #[arg(long)]
        check: bool,
    },
}

#[derive(clap::Args)]
struct RevokeArgs {
    /// The authority's base URL.
    #[arg(long, default_value = "http://127.0.0.1:7400")]
    authority: String,
    /// File holding the admin token (or set GATEHOUSE_ADMIN_TOKEN).
    #[arg(long, default_value = "config/dev/admin.token")]
    admin_token_file: PathBuf,
    /// The `iss` the revocation is for (optional when the authority has one issuer).
    #[arg(long)]
    issuer: Option<String>,
    #[arg(long, group = "target")]
    jti: Option<String>,
    #[arg(long, group = "target")]
    sid: Option<String>,
    #[arg(long, group = "target")]
    sub: Option<String>,
    #[arg(long, group = "target")]
    client_id: Option<String>,
    /// Unix seconds; with --sub or --client-id (default: now).
    #[arg(long)]
    before: Option<i64>,
    #[arg(long, default_value = "forced_logout")]
    reason: String,
    /// CA bundle for an https authority.
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// Answer only once every gateway that is not gone has applied it, and
    /// print the receipt; after this long (e.g. `2s`), exit 3 naming the
    /// gateways that lag (the revocation is committed either way).
    #[arg(long, num_args = 0..=1, default_missing_value = "5s", value_name = "TIMEOUT")]
    wait: Option<String>,
}

#[derive(clap::Args)]
struct TokenArgs {
    #[arg(long, default_value = "alice")]
    sub: String,
    /// Signing key (PEM; for hs256 the secret's file); default the dev
    /// key for `--alg`: config/dev/rs256.key.pem, es256.key.pem,
    /// eddsa.key.pem or hs256.secret.
    #[arg(long)]
    key: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "rs256")]
    alg: Alg,
    /// Key id put in the header; default `dev-<alg>` matches config/dev/jwks.json.
    #[arg(long)]
    kid: Option<String>,
    #[arg(long, default_value = "https://dev.gatehouse.local")]
    iss: String,
    #[arg(long, default_value = "demo-app")]
    aud: String,
    /// Lifetime, e.g. 15m or 1h.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    #[arg(long)]
    sid: Option<String>,
    #[arg(long)]
    jti: Option<String>,
    #[arg(long)]
    scope: Option<String>,
    /// Extra claim as name=value (JSON values allowed); repeatable.
    #[arg(long = "claim")]
    claims: Vec<String>,
    /// Mint this many tokens (one a line, each with its own jti), e.g. for
    /// a load test that rotates tokens.
    #[arg(long, default_value_t = 1)]
    count: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum Alg {
    Rs256,
    Es256,
    Eddsa,
    Hs256,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::Run { config } => run(&config),
        Command::Authority { config } => authority(&config),
        Command::Token(args) => token(*args),
        Command::Revoke(args) => revoke(*args),
        Command::Session {
            config,
            route,
            id_token,
        } => match session_cookie(&config, &route, &id_token) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gatehouse session: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Demo {
            gateway_port,
            authority_port,
            backend_port,
            dev_dir,
            check,
        } => block_on(async move {
            crate::auth::jwt::install_crypto_and_self_test()?;
            let ok = crate::demo::run(crate::demo::DemoArgs {
                gateway_port,
                authority_port,
                backend_port,
                dev_dir,
                check_only: check,
            })
            .await?;
            if ok {
                Ok(())
            } else {
                anyhow::bail!("the demo did not behave as printed")
            }
        }),
    }
}

/// Validates as `gatehouse run` would and, when the file has an
/// `authority` section, as `gatehouse authority` would: an authority-only
/// config (no listeners) is checked as such.
fn check(path: &std::path::Path) -> ExitCode {
    let gateway = config::load(path);
    let authority = config::load_for(path, config::Mode::Authority);
    let result = match (gateway, authority) {
        (Ok(_), Ok(_)) => Ok("gateway and authority"),
        (Ok(l), Err(e)) if l.config.authority.is_some() => Err(e),
        (Ok(_), Err(_)) => Ok("gateway"),
        (Err(_), Ok(l)) if l.config.listeners.is_empty() => Ok("authority"),
        // No listeners but an authority section: an authority-only config,
        // whose own problems are the ones to report.
        (Err(g), Err(a))
            if g.issues
                .iter()
                .any(|i| i.reason.starts_with("at least one listener"))
                && !a
                    .issues
                    .iter()
                    .any(|i| i.reason.contains("needs an `authority` section")) =>
        {
            Err(a)
        }
        (Err(e), _) => Err(e),
    };
    // What `run` does next with a valid file: load every TLS key pair,
    // so a key that does not belong to its certificate is found here too.
    let result = result.and_then(|what| match tls_problems(path) {
        Some(e) => Err(e),
        None => Ok(what),
    });
    match result {
        Ok(what) => {
            println!("{}: ok ({what})", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
}

/// Loads the TLS certificates and keys of every listener and authority
/// section as `run` would; the first refusal, as a config error on the
/// section's line.
fn tls_problems(path: &std::path::Path) -> Option<config::ConfigError> {
    // Either mode reads the file the same way; the sections are what count.
    let loaded = config::load(path)
        .or_else(|_| config::load_for(path, config::Mode::Authority))
        .ok()?;
    let c = &loaded.config;
    let mut sections: Vec<(u64, &config::TlsConfig)> = c
        .listeners
        .iter()
        .filter_map(|l| l.value.tls.as_ref().map(|t| (l.referenced.line(), t)))
        .collect();
    if let Some(a) = &c.authority {
        sections.extend(a.value.tls.as_ref().map(|t| (a.referenced.line(), t)));
    }
    if let Some(r) = &c.revocation {
        let embedded = r.value.embedded.as_ref().and_then(|e| e.tls.as_ref());
        sections.extend(embedded.map(|t| (r.referenced.line(), t)));
    }
    let issues: Vec<config::ConfigIssue> = sections
        .into_iter()
        .filter_map(|(line, t)| {
            crate::tls::server_config(t, &loaded)
                .err()
                .map(|e| config::ConfigIssue {
                    file: path.to_owned(),
                    line,
                    reason: format!("{e:#}"),
                })
        })
        .collect();
    (!issues.is_empty()).then_some(config::ConfigError { issues })
}

fn run(path: &std::path::Path) -> ExitCode {
    let loaded = match config::load(path) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let _log = crate::logging::init(&loaded.config.logging);
    // The control plane (feed, key refresh, admin, reload, signals) runs
    // here; requests run on one single-threaded runtime per worker.
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("gatehouse-control")
        .on_thread_start(yield_to_requests)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let workers = match start_workers(
        loaded.config.worker_count(),
        loaded.config.worker_cpu_affinity,
    ) {
        Ok(w) => w,
        Err(e) => {
            eprintln!("cannot start the worker runtimes: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut all = workers.clone();
    all.push(rt.handle().clone());
    let _ = crate::admin::metrics::RUNTIMES.set(all);
    let result = rt.block_on(async {
        crate::auth::jwt::install_crypto_and_self_test()?;
        let gw = crate::server::start_on(&loaded, &workers).await?;
        crate::server::spawn_reloader(&gw);
        gatehouse_core::listener::shutdown_signal().await;
        tracing::info!(grace = ?loaded.config.shutdown_grace, "shutting down");
        gw.shutdown(loaded.config.shutdown_grace).await;
        anyhow::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("gatehouse: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Niceness of the control-plane threads (the request workers keep 0).
const CONTROL_NICE: libc::c_int = 10;

/// Lowers the calling thread's scheduling priority. The control plane's
/// bulk work (parsing and building a 1M-entry snapshot, writing the state
/// file) competes with the request workers for the same cores; at equal
/// priority the scheduler hands it whole time slices and requests queued
/// on a preempted worker wait for them (measured: p99 during a snapshot
/// swap, `benches/wrk/swap.sh`). Incremental revocations cost
/// microseconds, so they are still applied at once.
fn yield_to_requests() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on the calling thread's own id; on Linux
        // PRIO_PROCESS with a thread id sets that thread's nice value only.
        let rc = unsafe {
            libc::setpriority(
                libc::PRIO_PROCESS,
                libc::gettid() as libc::id_t,
                CONTROL_NICE,
            )
        };
        if rc != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower the control plane's priority");
        }
    }
}

/// `n` threads ([`config::Config::worker_count`]), each running a single-threaded runtime
/// until the process ends; returns their handles. With
/// [`WorkerCpuAffinity::Auto`] worker *i* is bound to the *i*-th CPU the
/// process may use; a CPU set that cannot be read or applied leaves the
/// workers unbound (logged), it does not stop the gateway.
fn start_workers(
    n: usize,
    affinity: config::WorkerCpuAffinity,
) -> std::io::Result<Vec<tokio::runtime::Handle>> {
    let cpus = match affinity {
        config::WorkerCpuAffinity::Off => Vec::new(),
        config::WorkerCpuAffinity::Auto => allowed_cpus().unwrap_or_else(|e| {
            tracing::warn!(error = %e, "cannot read the CPUs this process may use; workers left unbound");
            Vec::new()
        }),
    };
    let mut handles = Vec::with_capacity(n);
    for i in 0..n {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        handles.push(rt.handle().clone());
        let cpu = (!cpus.is_empty()).then(|| cpus[i % cpus.len()]);
        std::thread::Builder::new()
            .name(format!("gatehouse-worker-{i}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    match bind_to_cpu(cpu) {
                        Ok(()) => tracing::info!(worker = i, cpu, "worker bound to CPU"),
                        Err(e) => tracing::warn!(worker = i, cpu, error = %e, "cannot bind worker to CPU; left unbound"),
                    }
                }
                rt.block_on(std::future::pending::<()>())
            })?;
    }
    Ok(handles)
}

/// The CPUs in the calling thread's affinity mask, ascending (what
/// `taskset` or a container's cpuset allows).
#[cfg(target_os = "linux")]
fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most
    // the size given.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    let rc =
        unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: the index is below CPU_SETSIZE.
        .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
        .collect();
    if cpus.is_empty() {
        return Err(std::io::Error::other("empty CPU set"));
    }
    Ok(cpus)
}

#[cfg(not(target_os = "linux"))]
fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    Err(std::io::Error::other(
        "CPU binding is supported on Linux only",
    ))
}

/// Binds the calling thread to one CPU.
#[cfg(target_os = "linux")]
fn bind_to_cpu(cpu: usize) -> std::io::Result<()> {
    // SAFETY: as in allowed_cpus; tid 0 is the calling thread.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(cpu, &mut set) };
    let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn bind_to_cpu(_cpu: usize) -> std::io::Result<()> {
    Err(std::io::Error::other(
        "CPU binding is supported on Linux only",
    ))
}

fn authority(path: &std::path::Path) -> ExitCode {
    let loaded = match config::load_for(path, config::Mode::Authority) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let _log = crate::logging::init(&loaded.config.logging);
    block_on(async {
        crate::auth::jwt::install_crypto_and_self_test()?;
        let section = loaded
            .config
            .authority
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no authority section"))?;
        let handle = crate::authority::start(&section.value, &loaded).await?;
        gatehouse_core::listener::shutdown_signal().await;
        tracing::info!("authority shutting down");
        drop(handle);
        Ok(())
    })
}

/// Runs a command's async body on a fresh runtime; errors go to stderr.
fn block_on(f: impl std::future::Future<Output = anyhow::Result<()>>) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(f) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("gatehouse: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Exit 0 when applied (or not waited for), 3 when a waited revocation is
/// committed but not yet applied everywhere, 1 on failure.
fn revoke(a: RevokeArgs) -> ExitCode {
    let mut lagged = None;
    let done = block_on(async {
        lagged = revoke_call(a).await?;
        Ok(())
    });
    lagged.map_or(done, ExitCode::from)
}

async fn revoke_call(a: RevokeArgs) -> anyhow::Result<Option<u8>> {
    {
        use http_body_util::BodyExt;
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let token = match std::env::var("GATEHOUSE_ADMIN_TOKEN") {
            Ok(t) => t,
            Err(_) => std::fs::read_to_string(&a.admin_token_file).map_err(|e| {
                anyhow::anyhow!("admin token file {}: {e}", a.admin_token_file.display())
            })?,
        };
        let mut body = serde_json::Map::new();
        let target = [
            ("jti", &a.jti),
            ("sid", &a.sid),
            ("sub", &a.sub),
            ("client_id", &a.client_id),
        ]
        .into_iter()
        .find_map(|(k, v)| v.as_ref().map(|v| (k, v.clone())));
        let Some((k, v)) = target else {
            anyhow::bail!("give one of --jti, --sid, --sub, --client-id");
        };
        body.insert(k.into(), v.into());
        body.insert("reason".into(), a.reason.clone().into());
        if let Some(i) = &a.issuer {
            body.insert("issuer".into(), i.clone().into());
        }
        if let Some(b) = a.before {
            body.insert("before".into(), b.into());
        }
        let client = crate::httpclient::build_for::<http_body_util::Full<bytes::Bytes>>(
            a.ca_file.as_deref(),
            std::time::Duration::from_secs(5),
        )?;
        let wait = match &a.wait {
            Some(t) => format!("?wait=applied&timeout={t}"),
            None => String::new(),
        };
        let req = http::Request::post(format!(
            "{}/v1/revocations{wait}",
            a.authority.trim_end_matches('/')
        ))
        .header("authorization", format!("Bearer {}", token.trim()))
        .header("content-type", "application/json")
        .body(http_body_util::Full::new(bytes::Bytes::from(
            serde_json::Value::Object(body).to_string(),
        )))?;
        let resp = client.request(req).await?;
        let status = resp.status();
        let text = resp.into_body().collect().await?.to_bytes();
        println!("{}", String::from_utf8_lossy(&text));
        if status == http::StatusCode::ACCEPTED {
            let lagging = serde_json::from_slice::<serde_json::Value>(&text)
                .ok()
                .map(|v| v["receipt"]["lagging"].to_string())
                .unwrap_or_default();
            eprintln!("committed, but not yet applied on every gateway: lagging {lagging}");
            return Ok(Some(3));
        }
        if status.is_success() {
            Ok(None)
        } else {
            anyhow::bail!("the authority answered {status}")
        }
    }
}

fn token(a: TokenArgs) -> ExitCode {
    let _ = crate::auth::jwt::install_crypto_and_self_test();
    // Each algorithm's own dev key by default: the RS256 key read as an
    // ES256 key failed, and as an HMAC secret passed silently.
    let (alg, default_kid, default_key) = match a.alg {
        Alg::Rs256 => (jsonwebtoken::Algorithm::RS256, "dev-rs256", "rs256.key.pem"),
        Alg::Es256 => (jsonwebtoken::Algorithm::ES256, "dev-es256", "es256.key.pem"),
        Alg::Eddsa => (jsonwebtoken::Algorithm::EdDSA, "dev-eddsa", "eddsa.key.pem"),
        Alg::Hs256 => (jsonwebtoken::Algorithm::HS256, "dev-hs256", "hs256.secret"),
    };
    let kid = a.kid.as_deref().unwrap_or(default_kid);
    let key = a
        .key
        .clone()
        .unwrap_or_else(|| PathBuf::from("config/dev").join(default_key));
    let req = crate::token::MintRequest {
        key_path: &key,
        alg,
        kid: Some(kid),
        issuer: &a.iss,
        audience: &a.aud,
        subject: &a.sub,
        ttl: a.ttl,
        sid: a.sid.as_deref(),
        jti: a.jti.as_deref(),
        scope: a.scope.as_deref(),
        claims: &a.claims,
    };
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for _ in 0..a.count.max(1) {
        match crate::token::mint(&req) {
            Ok(t) => {
                if std::io::Write::write_all(&mut out, format!("{t}\n").as_bytes()).is_err() {
                    return ExitCode::FAILURE;
                }
            }
            Err(e) => {
                eprintln!("gatehouse token: {e:#}");
                return ExitCode::FAILURE;
            }
        }
    }
    ExitCode::SUCCESS
}

/// `gatehouse session`: the `Cookie` pair(s) of a session for `id_token`
/// on `route`, one line (`name=value; name-1=value…`).
fn session_cookie(config: &Path, route: &str, id_token: &Path) -> anyhow::Result<()> {
    crate::auth::jwt::install_crypto_and_self_test()?;
    let loaded = crate::config::load(config).map_err(|e| anyhow::anyhow!("{e}"))?;
    let cfg = &loaded.config;
    let (_, rc) = cfg
        .routes
        .iter()
        .enumerate()
        .find(|(i, r)| r.value.name.as_deref() == Some(route) || i.to_string() == route)
        .ok_or_else(|| anyhow::anyhow!("no route named {route}"))?;
    let login = rc
        .value
        .login
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("route {route} has no login"))?;
    let sessions = cfg
        .sessions
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("the config has no sessions block"))?;
    let sessions = std::sync::Arc::new(crate::login::Sessions::from_config(
        &sessions.value,
        &loaded,
    )?);
    let login = crate::login::Login::from_config(login, &loaded, sessions)?;
    let idt = std::fs::read_to_string(id_token)?.trim().to_owned();
    let lines = login.seal_for_id_token(&idt).ok_or_else(|| {
        anyhow::anyhow!(
            "{} is not a JWT with a sub, or the session does not fit in cookies",
            id_token.display()
        )
    })?;
    let pairs: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.to_str().ok())
        .filter_map(|l| l.split(';').next())
        .collect();
    println!("{}", pairs.join("; "));
    Ok(())
}
