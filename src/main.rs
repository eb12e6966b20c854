//! The `scientist` binary: parse the command line, set up logging, run, map errors to exit codes.

use std::process::ExitCode;

use clap::Parser;
use scientist::cmd::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::from(cmd::exit::FAILURE);
        }
    };
    match runtime.block_on(cmd::run(cli)) {
        Ok(()) => ExitCode::from(cmd::exit::OK),
        Err(err) if is_broken_pipe(&err) => ExitCode::from(cmd::exit::OK),
        Err(err) => {
            // An error may quote stored text (a run's failure message): escaped as any view's.
            eprintln!("error: {}", cmd::printable(&format!("{err:#}"), cmd::Kept::TabsAndNewlines));
            ExitCode::from(cmd::exit_code(&err))
        }
    }
}

/// Logs go to stderr; `LOG_LEVEL` (or `RUST_LOG`) picks the level, `warn` by default, and
/// `LOG_FORMAT=json` makes them one JSON object a line for log collectors.
fn init_tracing() {
    let filter = std::env::var("LOG_LEVEL").or_else(|_| std::env::var("RUST_LOG")).unwrap_or_else(|_| "warn".into());
    let filter = tracing_subscriber::EnvFilter::try_new(&filter).unwrap_or_else(|_| "warn".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match std::env::var("LOG_FORMAT").as_deref() {
        Ok("json") => logs.json().init(),
        _ => logs.init(),
    }
}

/// `scientist runs list | head` closes our stdout early; that is not an error.
fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|cause| {
        cause.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}
