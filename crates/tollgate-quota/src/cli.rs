//! Command line: serve (no subcommand), or manage API keys directly in the store.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use axum::serve::ListenerExt;
use clap::{Parser, Subcommand};
use tollgate_core::time::rfc3339;
use tollgate_core::Nanos;
use tracing_subscriber::EnvFilter;

use crate::app;
use crate::keys;
use crate::store::{MemoryStore, RedisStore, Store, StoreError, StoreLocation};

/// How long a CLI command waits for the store.
const CLI_TIMEOUT: Duration = Duration::from_secs(5);

/// tollgate's quota service: limits shared by every Envoy running the tollgate filter,
/// and the API keys they accept, kept in memory or in Redis.
///
/// Without a subcommand it serves HTTP: POST /v1/check, POST /v1/keys/verify,
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
        /// Tier of the key: a tier name of the filter's config ([a-z0-9_-]{1,32}).
        #[arg(long)]
        tier: String,
        /// Who the key is for (1 to 64 printable characters).
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

pub async fn run(cli: Cli) -> ExitCode {
    match cli.command {
        None => serve(cli).await,
        Some(Command::Keys(command)) => manage_keys(&cli.store, command).await,
    }
}

async fn serve(cli: Cli) -> ExitCode {
    let admin_token = cli.admin_token.as_deref();
    if admin_token == Some("") {
        eprintln!(
            "error: --admin-token (TOLLGATE_QUOTA_ADMIN_TOKEN) is empty; unset it to disable the admin endpoints"
        );
        return ExitCode::from(2);
    }
    match &cli.store {
        StoreLocation::Memory => serve_with(MemoryStore::new(), &cli, admin_token).await,
        location => match RedisStore::open(location) {
            Ok(store) => serve_with(store, &cli, admin_token).await,
            Err(e) => {
                eprintln!("error: --store: {e}");
                ExitCode::from(2)
            }
        },
    }
}

async fn serve_with<S: Store>(store: S, cli: &Cli, admin_token: Option<&str>) -> ExitCode {
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
    tracing::info!(
        listen = %cli.listen,
        store = %cli.store,
        admin = if admin_token.is_some() { "enabled" } else { "disabled" },
        "tollgate-quota serving"
    );
    let router = app::router(store, admin_token);
    // Answers are small and written as several frames over HTTP/2: without TCP_NODELAY,
    // Nagle's algorithm holds the last one back until the peer's delayed ACK.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!("cannot set TCP_NODELAY on a connection: {e}");
        }
    });
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

async fn manage_keys(location: &StoreLocation, command: KeysCommand) -> ExitCode {
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
    match tokio::time::timeout(CLI_TIMEOUT, keys_command(&store, command)).await {
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

async fn keys_command<S: Store>(store: &S, command: KeysCommand) -> Result<ExitCode, String> {
    let store_failed = |e: StoreError| format!("the store failed: {e}");
    match command {
        KeysCommand::Create { tier, name } => {
            let new_key = keys::new_key(&tier, &name).map_err(|e| e.message)?;
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
