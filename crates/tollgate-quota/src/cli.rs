//! Command line: serve (no subcommand), or manage API keys directly in the store.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use axum::serve::ListenerExt;
use clap::{Parser, Subcommand};
use tollgate_core::time::rfc3339;
use tollgate_core::Nanos;
use tracing_subscriber::EnvFilter;

use crate::app::{self, ServiceAccess, Settings};
use crate::keys::{self, KnownTiers};
use crate::parse_errors::JsonParseErrors;
use crate::store::{MemoryStore, RedisStore, Store, StoreError, StoreLocation};

/// How long a CLI command waits for the store.
const CLI_TIMEOUT: Duration = Duration::from_secs(5);

/// tollgate's quota service: limits shared by every Envoy running the tollgate filter,
/// and the API keys they accept, kept in memory or in Redis.
///
/// Without a subcommand it serves HTTP: POST /v1/check, /v1/return, /v1/keys/verify (for
/// the filter, with the service token),
/// the admin endpoints POST|GET /v1/keys, DELETE /v1/keys/{id}, GET /v1/usage/{key},
/// and GET /healthz, /readyz, /metrics.
// No Debug: it would print the admin token.
#[derive(Parser)]
#[command(name = "tollgate-quota", version)]
pub struct Cli {
    /// Where counts and keys live: `memory` (this process only, lost on exit),
    /// `redis://host:port/db` (one Redis) or `redis+cluster://host1:port1,host2:port2,...`
    /// (Redis Cluster seed nodes; `redis+cluster://user:password@host1:port1,...` for AUTH).
    #[arg(long, env = "TOLLGATE_QUOTA_STORE", default_value = "memory", hide_env_values = true, global = true)]
    pub store: StoreLocation,

    /// Address to serve HTTP on.
    #[arg(long, env = "TOLLGATE_QUOTA_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,

    /// Bearer token for the admin endpoints (/v1/keys, /v1/usage). If unset, they answer 403.
    #[arg(long, env = "TOLLGATE_QUOTA_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Bearer token the filter sends (its `quota_service.token`) to /v1/check, /v1/return and
    /// /v1/keys/verify: 16 to 1024 visible ASCII characters. The service does not start
    /// without it (or --service-token-file) unless --insecure-no-auth is given.
    #[arg(long, env = "TOLLGATE_QUOTA_SERVICE_TOKEN", hide_env_values = true, conflicts_with = "service_token_file")]
    pub service_token: Option<String>,

    /// A file holding the service token (a mounted Kubernetes Secret); surrounding
    /// whitespace is ignored.
    #[arg(long, env = "TOLLGATE_QUOTA_SERVICE_TOKEN_FILE")]
    pub service_token_file: Option<PathBuf>,

    /// Serve /v1/check, /v1/return and /v1/keys/verify to anyone who can reach the port.
    /// Only behind a network policy that admits the gateways alone.
    #[arg(long, env = "TOLLGATE_QUOTA_INSECURE_NO_AUTH", conflicts_with_all = ["service_token", "service_token_file"])]
    pub insecure_no_auth: bool,

    /// The deployment's tiers, comma-separated (`free,pro`): keys can be made for these
    /// only. Without it and --plugin-config, any well-formed tier name is accepted.
    #[arg(long, env = "TOLLGATE_QUOTA_TIERS", global = true)]
    pub tiers: Option<String>,

    /// The filter's plugin configuration (JSON): its tiers are the deployment's tiers.
    #[arg(long, env = "TOLLGATE_QUOTA_PLUGIN_CONFIG", global = true)]
    pub plugin_config: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Manage API keys directly in --store (Redis); no running service is needed.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create a key and print its id and token. The token is shown only this once.
    Create {
        /// Tier of the key: a tier of the filter's config (one of --tiers, if given).
        #[arg(long)]
        tier: String,
        /// Who the key is for (1 to 128 printable characters).
        #[arg(long)]
        name: String,
    },
    /// List every key: id, tier, creation time, name (never tokens).
    List,
    /// Revoke a key: the service stops verifying its token at once (gateways that cached it:
    /// within their key cache TTL).
    Revoke {
        /// The key's id, as `keys list` shows it.
        id: String,
    },
}

/// Logs go to stderr, at `info` unless RUST_LOG says otherwise.
pub fn init_tracing() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::stderr().is_terminal();
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi).init();
}

pub async fn run(mut cli: Cli) -> ExitCode {
    match cli.command.take() {
        None => serve(cli).await,
        Some(Command::Keys(command)) => match known_tiers(&cli) {
            Ok(tiers) => manage_keys(&cli.store, &tiers, command).await,
            Err(message) => {
                eprintln!("error: {message}");
                ExitCode::from(2)
            }
        },
    }
}

/// The tiers of `--tiers` and `--plugin-config` (which must agree when both are given).
fn known_tiers(cli: &Cli) -> Result<KnownTiers, String> {
    let listed = match &cli.tiers {
        Some(list) => KnownTiers::parse_list(list).map_err(|e| format!("--tiers: {e}"))?,
        None => KnownTiers::Any,
    };
    let configured = match &cli.plugin_config {
        Some(path) => {
            let json =
                std::fs::read(path).map_err(|e| format!("--plugin-config: cannot read {}: {e}", path.display()))?;
            KnownTiers::from_plugin_config(&json).map_err(|e| format!("--plugin-config {}: {e}", path.display()))?
        }
        None => KnownTiers::Any,
    };
    listed.agree(configured)
}

/// Who may call the filter's endpoints: the token of --service-token(-file), or anyone
/// with --insecure-no-auth; neither is an error.
fn service_access(cli: &Cli) -> Result<ServiceAccess, String> {
    let token = match (&cli.service_token, &cli.service_token_file) {
        (Some(token), _) => token.clone(),
        (None, Some(path)) => read_token_file(path)?,
        (None, None) if cli.insecure_no_auth => return Ok(ServiceAccess::Open),
        (None, None) => {
            return Err("no service token: give --service-token or --service-token-file (the filter's \
                        quota_service.token), or --insecure-no-auth to serve /v1/check, /v1/return and \
                        /v1/keys/verify to anyone who can reach this port"
                .to_owned())
        }
    };
    let chars = tollgate_core::config::SERVICE_TOKEN_CHARS;
    if !chars.contains(&token.len()) || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!(
            "the service token must be {} to {} visible ASCII characters (no spaces)",
            chars.start(),
            chars.end()
        ));
    }
    Ok(ServiceAccess::Token(token))
}

fn read_token_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("--service-token-file: cannot read {}: {e}", path.display()))?;
    Ok(text.trim().to_owned())
}

async fn serve(cli: Cli) -> ExitCode {
    let admin_token = cli.admin_token.clone();
    if admin_token.as_deref() == Some("") {
        eprintln!(
            "error: --admin-token (TOLLGATE_QUOTA_ADMIN_TOKEN) is empty; unset it to disable the admin endpoints"
        );
        return ExitCode::from(2);
    }
    let service_access = match service_access(&cli) {
        Ok(access) => access,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let tiers = match known_tiers(&cli) {
        Ok(tiers) => tiers,
        Err(message) => {
            eprintln!("error: {message}");
            return ExitCode::from(2);
        }
    };
    let settings = Settings { admin_token, service_access, tiers };
    match &cli.store {
        StoreLocation::Memory => serve_with(MemoryStore::new(), &cli, settings).await,
        location => match RedisStore::open(location) {
            Ok(store) => serve_with(store, &cli, settings).await,
            Err(e) => {
                eprintln!("error: --store: {e}");
                ExitCode::from(2)
            }
        },
    }
}

async fn serve_with<S: Store>(store: S, cli: &Cli, settings: Settings) -> ExitCode {
    let listener = match tokio::net::TcpListener::bind(cli.listen).await {
        Ok(listener) => listener,
        Err(e) => {
            eprintln!("error: cannot listen on {}: {e}", cli.listen);
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = store.ping().await {
        tracing::warn!("store not reachable yet (/readyz answers 503 until it is): {}", e.message);
    }
    if matches!(settings.service_access, ServiceAccess::Open) {
        tracing::warn!(
            "--insecure-no-auth: /v1/check, /v1/return and /v1/keys/verify answer anyone who can reach this \
             port, who can then spend, give back or probe any caller's quota"
        );
    }
    let tiers = match &settings.tiers {
        KnownTiers::Only(tiers) => tiers.join(","),
        KnownTiers::Any => {
            tracing::warn!(
                "no --tiers or --plugin-config: keys can be made for any tier name, even one no filter knows"
            );
            "any".to_owned()
        }
    };
    tracing::info!(
        listen = %cli.listen,
        store = %cli.store,
        admin = if settings.admin_token.is_some() { "enabled" } else { "disabled" },
        service_auth = if matches!(settings.service_access, ServiceAccess::Open) { "none" } else { "token" },
        tiers,
        "tollgate-quota serving"
    );
    let router = app::router(store, settings);
    // Answers are small and written as several frames over HTTP/2: without TCP_NODELAY,
    // Nagle's algorithm holds the last one back until the peer's delayed ACK.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!("cannot set TCP_NODELAY on a connection: {e}");
        }
    });
    let listener = JsonParseErrors(listener);
    match axum::serve(listener, router).with_graceful_shutdown(shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(signal) => signal,
            Err(_) => {
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
    tracing::info!("shutting down");
}

async fn manage_keys(location: &StoreLocation, tiers: &KnownTiers, command: KeysCommand) -> ExitCode {
    if *location == StoreLocation::Memory {
        eprintln!(
            "error: `keys` works on a shared store: give --store redis://host:port/db or \
             redis+cluster://host:port,... (TOLLGATE_QUOTA_STORE). A memory store lives inside one \
             running service: use its /v1/keys endpoints instead."
        );
        return ExitCode::from(2);
    }
    let store = match RedisStore::open(location) {
        Ok(store) => store,
        Err(e) => {
            eprintln!("error: --store: {e}");
            return ExitCode::from(2);
        }
    };
    match tokio::time::timeout(CLI_TIMEOUT, keys_command(&store, tiers, command)).await {
        Ok(Ok(code)) => code,
        Ok(Err(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
        Err(_) => {
            eprintln!("error: the store at {location} did not answer within {} s", CLI_TIMEOUT.as_secs());
            ExitCode::FAILURE
        }
    }
}

async fn keys_command<S: Store>(store: &S, tiers: &KnownTiers, command: KeysCommand) -> Result<ExitCode, String> {
    let store_failed = |e: StoreError| format!("the store failed: {e}");
    match command {
        KeysCommand::Create { tier, name } => {
            let new_key = keys::new_key(&tier, &name, tiers).map_err(|e| e.message)?;
            let key = keys::store_key(store, new_key).await.map_err(store_failed)?;
            println!("id:     {}", key.id);
            println!("tier:   {}", key.tier);
            println!("name:   {}", key.name);
            println!("token:  {}", key.token);
            println!();
            println!("The token is shown only now: the store keeps only its SHA-256, so it cannot be");
            println!("shown again. Hand it to the client; if it is lost, revoke the key and create another.");
        }
        KeysCommand::List => {
            let keys = keys::list(store).await.map_err(store_failed)?;
            if keys.is_empty() {
                println!("no keys");
            }
            let width = keys.iter().map(|k| k.id.len()).max().unwrap_or(0).max(2);
            let tier_width = keys.iter().map(|k| k.tier.len()).max().unwrap_or(0).max(4);
            if !keys.is_empty() {
                println!("{:width$}  {:tier_width$}  {:20}  NAME", "ID", "TIER", "CREATED");
            }
            for key in keys {
                let created = rfc3339(Nanos::from_secs(key.created_at));
                println!("{:width$}  {:tier_width$}  {created:20}  {}", key.id, key.tier, key.name);
            }
        }
        KeysCommand::Revoke { id } => {
            if store.revoke_key(&id).await.map_err(store_failed)? {
                println!("revoked {id}");
            } else {
                return Err(format!("no API key has the id {id:?}"));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
