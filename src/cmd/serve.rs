//! `scientist serve`: the control plane's HTTP server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::{LeaseArgs, StoreArgs, UsageError};
use crate::queue::lease;
use crate::server::{self, AppState, Tokens};

/// Flags of `scientist serve`.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub store: StoreArgs,

    /// Address to listen on. Anything but loopback requires a token.
    #[arg(long, env = "SCIENTIST_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,

    /// Bearer token(s) clients must send, comma-separated; each may do everything.
    #[arg(long, env = "SCIENTIST_TOKEN", hide_env_values = true, value_delimiter = ',')]
    pub token: Vec<String>,

    /// File of scoped tokens, one `TOKEN [SCOPE...]` a line; scopes are ingest (pods:
    /// events, claims), read (runs, events, stats, metrics) and admin (enqueue, reset,
    /// cancel); a token with no scope named may do everything.
    #[arg(long, env = "SCIENTIST_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    #[command(flatten)]
    pub lease: LeaseArgs,

    /// How often held runs are checked for a silent or lost worker.
    #[arg(long, env = "SCIENTIST_SWEEP_EVERY", default_value = "15s", value_parser = humantime::parse_duration)]
    pub sweep_every: Duration,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut tokens = Tokens::new(args.token.clone());
    if let Some(path) = &args.token_file {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading token file {}", path.display()))?;
        tokens = tokens
            .with_token_file(&text)
            .map_err(|reason| UsageError(format!("token file {}: {reason}", path.display())))?;
    }
    if tokens.is_empty() && !args.listen.ip().is_loopback() {
        return Err(UsageError(format!(
            "refusing to listen on {} without a token: anyone who can reach it could write events. \
             Set SCIENTIST_TOKEN (or --token / --token-file), or listen on 127.0.0.1",
            args.listen
        ))
        .into());
    }
    let policy = args.lease.policy()?;
    if args.sweep_every.is_zero() {
        return Err(UsageError("--sweep-every must be above zero, e.g. 15s".into()).into());
    }
    let store = args.store.open().await?;
    let sweeper = tokio::spawn(lease::keep_sweeping(store.clone(), policy, args.sweep_every));
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {} (is another server using the port?)", args.listen))?;
    eprintln!("scientist serve: listening on http://{}", listener.local_addr()?);
    let served = server::run(listener, AppState::new(store, tokens), shutdown_signal()).await;
    sweeper.abort();
    served.context("serving HTTP")
}

/// Completes on Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
