//! `scientist serve`: the control plane's HTTP server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;

use super::alert::AlertArgs;
use super::artifacts::ArtifactArgs;
use super::costs::CostArgs;
use super::{LeaseArgs, RetentionArgs, RetryArgs, StoreArgs, UsageError, positive_duration};
use crate::server::{self, AppState, Downloads, Limits, Tokens};
use crate::store::Rules;
use crate::sweep;

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
    /// cancel, approve, reject); a token with no scope named may do everything.
    #[arg(long, env = "SCIENTIST_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,

    #[command(flatten)]
    pub lease: LeaseArgs,

    #[command(flatten)]
    pub retry: RetryArgs,

    #[command(flatten)]
    pub costs: CostArgs,

    #[command(flatten)]
    pub retention: RetentionArgs,

    /// How often held runs are checked for a silent or lost worker.
    #[arg(long, env = "SCIENTIST_SWEEP_EVERY", default_value = "15s", value_parser = humantime::parse_duration)]
    pub sweep_every: Duration,

    /// A client must send a request's whole head (request line and headers) this soon after
    /// connecting or after its first byte, or the connection is closed.
    #[arg(long, env = "SCIENTIST_HEADER_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub header_timeout: Duration,

    /// A kept-alive connection with no request for this long is closed, as is one whose
    /// client takes none of an answer (a download, a live tail) for this long.
    #[arg(long, env = "SCIENTIST_IDLE_TIMEOUT", default_value = "60s", value_parser = positive_duration)]
    pub idle_timeout: Duration,

    /// A request not answered within this long gets 408 (live tails are exempt).
    #[arg(long, env = "SCIENTIST_REQUEST_TIMEOUT", default_value = "30s", value_parser = positive_duration)]
    pub request_timeout: Duration,

    /// Most connections open at once; past it a new client gets 503 at once. Lowered to fit
    /// the open-file limit (raised as far as the hard limit allows), with a warning.
    #[arg(long, env = "SCIENTIST_MAX_CONNECTIONS", default_value_t = 1024,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_connections: u32,

    #[command(flatten)]
    pub alerts: AlertArgs,

    #[command(flatten)]
    pub artifacts: ArtifactArgs,

    /// Answer an artifact download with a redirect (307) to a presigned URL of the object
    /// store instead of streaming it through this server (S3 only: a directory is always
    /// streamed). Clients need to reach the object store, not its credentials.
    #[arg(long, env = "SCIENTIST_ARTIFACT_REDIRECT")]
    pub artifact_redirect: bool,

    /// How long a presigned download URL stays valid (a download started in time may take longer).
    #[arg(long, env = "SCIENTIST_ARTIFACT_REDIRECT_EXPIRY", default_value = "5m", value_parser = positive_duration)]
    pub artifact_redirect_expiry: Duration,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    super::warn_of_a_typed_token();
    run_on(args, None).await
}

/// As [`run`], serving on `listener` when given (bound by the caller: `up`, which must know
/// the port first) instead of binding `--listen`.
pub async fn run_on(args: Args, listener: Option<tokio::net::TcpListener>) -> anyhow::Result<()> {
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
    let alert_sender = args.alerts.sender(args.listen)?;
    let downloads = downloads(&args)?;
    let rules = Rules { retries: args.retry.policy(), alerts: args.alerts.raise.raise(), costs: args.costs.costs()? };
    let store = args.store.open_with(rules).await?;
    let sweeper = tokio::spawn(sweep::keep_sweeping(store.clone(), policy, args.sweep_every));
    let pruner = args.retention.spawn(&store);
    // Its own task: a slow webhook never holds up ingest or sweeps.
    let alerts = alert_sender.map(|sender| tokio::spawn(sender.keep_sending(store.clone(), std::future::pending())));
    let listener = match listener {
        Some(listener) => listener,
        None => bind(args.listen).await?,
    };
    crate::notice!("scientist serve: listening on http://{}", listener.local_addr()?);
    let limits = Limits {
        header_timeout: args.header_timeout,
        idle_timeout: args.idle_timeout,
        request_timeout: args.request_timeout,
        max_connections: fit_connections(args.max_connections as usize),
    };
    let mut state = AppState::new(store, tokens).with_limits(limits);
    if let Some(downloads) = downloads {
        state = state.with_downloads(downloads);
    }
    let served = server::run(listener, state, shutdown_signal()).await;
    sweeper.abort();
    for task in [pruner, alerts].into_iter().flatten() {
        task.abort();
    }
    served.context("serving HTTP")
}

/// A listener on `address`, or why not.
pub async fn bind(address: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("listening on {address} (is another server using the port?)"))
}

/// Artifact downloads from --artifacts, redirected when --artifact-redirect says so and the
/// store can presign.
fn downloads(args: &Args) -> anyhow::Result<Option<Downloads>> {
    if args.artifacts.artifacts.is_none() {
        if args.artifact_redirect {
            return Err(UsageError("--artifact-redirect needs --artifacts s3://BUCKET/PREFIX".into()).into());
        }
        return Ok(None);
    }
    let store = args.artifacts.open_to_read()?;
    let redirect = match (args.artifact_redirect, store.can_presign()) {
        (true, true) => Some(args.artifact_redirect_expiry),
        (true, false) => {
            crate::notice!(
                warn,
                "scientist serve: {} cannot presign URLs: artifact downloads are streamed",
                store.location()
            );
            None
        }
        (false, _) => None,
    };
    crate::notice!("scientist serve: artifact downloads from {}", store.location());
    Ok(Some(Downloads { store, redirect }))
}

/// Descriptors kept beside the connections: the store's files and pool, logs, refused
/// connections being answered ([`server::REFUSAL_SLOTS`]), outbound requests.
const FD_RESERVE: u64 = 128;

/// The connection cap that fits the open-file limit: the soft limit is raised (up to the
/// hard one) to hold `wanted` connections plus [`FD_RESERVE`]; if it cannot be, the cap is
/// lowered, so that `accept` never runs out of descriptors (which is what made `/health`
/// stop answering under a thousand idle clients).
fn fit_connections(wanted: usize) -> usize {
    let needed = wanted as u64 + FD_RESERVE;
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we own; no other memory is touched.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "could not read the open-file limit");
        return wanted;
    }
    if limit.rlim_cur != libc::RLIM_INFINITY && limit.rlim_cur < needed {
        let raised = libc::rlimit { rlim_cur: needed.min(limit.rlim_max), rlim_max: limit.rlim_max };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            limit.rlim_cur = raised.rlim_cur;
        }
    }
    if limit.rlim_cur == libc::RLIM_INFINITY || limit.rlim_cur >= needed {
        return wanted;
    }
    let reserve = FD_RESERVE.min(limit.rlim_cur / 2);
    let fitted = (limit.rlim_cur - reserve).max(1) as usize;
    crate::notice!(
        warn,
        "scientist serve: warning: the open-file limit is {} (hard limit {}), too low for --max-connections {wanted}; \
         serving at most {fitted} connections. Raise it (`ulimit -n`, LimitNOFILE= in a systemd unit) to allow more",
        limit.rlim_cur,
        limit.rlim_max
    );
    fitted
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
