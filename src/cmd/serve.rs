//! `scientist serve`: the control plane's HTTP server.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;

use super::{StoreArgs, UsageError};
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
    let store = args.store.open().await?;
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listening on {} (is another server using the port?)", args.listen))?;
    eprintln!("scientist serve: listening on http://{}", listener.local_addr()?);
    server::run(listener, AppState::new(store, tokens), shutdown_signal()).await.context("serving HTTP")
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
