//! Command line: `run`, `check`, `token`.

use std::path::PathBuf;
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
}

#[derive(clap::Args)]
struct TokenArgs {
    #[arg(long, default_value = "alice")]
    sub: String,
    #[arg(long, default_value = "config/dev/rs256.key.pem")]
    key: PathBuf,
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
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    match config::load(path) {
        Ok(_) => {
            println!("{}: ok", path.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::FAILURE
        }
    }
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
    let result = rt.block_on(async {
        crate::auth::jwt::install_crypto_and_self_test()?;
        let gw = crate::server::start(&loaded).await?;
        crate::server::spawn_reloader(&gw);
        crate::server::shutdown_signal().await;
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

fn authority(path: &std::path::Path) -> ExitCode {
    let loaded = match config::load_for(path, config::Mode::Authority) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let _log = crate::logging::init(&loaded.config.logging);
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
    let result = rt.block_on(async {
        crate::auth::jwt::install_crypto_and_self_test()?;
        let section = loaded
            .config
            .authority
            .as_ref()
            .ok_or_else(|| anyhow::anyhow!("no authority section"))?;
        let handle = crate::authority::start(&section.value, &loaded).await?;
        crate::server::shutdown_signal().await;
        tracing::info!("authority shutting down");
        drop(handle);
        anyhow::Ok(())
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("gatehouse authority: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn token(a: TokenArgs) -> ExitCode {
    let _ = crate::auth::jwt::install_crypto_and_self_test();
    let (alg, default_kid) = match a.alg {
        Alg::Rs256 => (jsonwebtoken::Algorithm::RS256, "dev-rs256"),
        Alg::Es256 => (jsonwebtoken::Algorithm::ES256, "dev-es256"),
        Alg::Eddsa => (jsonwebtoken::Algorithm::EdDSA, "dev-eddsa"),
        Alg::Hs256 => (jsonwebtoken::Algorithm::HS256, "dev-hs256"),
    };
    let kid = a.kid.as_deref().unwrap_or(default_kid);
    let req = crate::token::MintRequest {
        key_path: &a.key,
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
    match crate::token::mint(&req) {
        Ok(t) => {
            println!("{t}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("gatehouse token: {e:#}");
            ExitCode::FAILURE
        }
    }
}
