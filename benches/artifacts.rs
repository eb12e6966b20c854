//! `cargo bench --bench artifacts`: from a file's `close()` in a watched run directory to its
//! `ai.artifact.registered` event reaching the control plane through the worker's event
//! stream (spooled and synced, then sent, here to a recorder), with artifacts going to a
//! local directory store. Files of 1 KiB, 1 MiB and 10 MiB, written and closed one at a
//! time; p50 and p99 (nearest rank) per size, for three routes:
//!
//! - on close: the file is written and closed, nothing else; the stream sends each event as
//!   soon as it is spooled;
//! - on close, worker stream: the same, with the stream batching as `scientist work` does (50
//!   events, or once the oldest waited 1 s): a registration alone in a quiet run waits;
//! - settle: a second descriptor keeps the file open for writing until it is registered, so
//!   the close path refuses it and the settle timer (the worker's default, 2 s) decides: what
//!   every file went through before uploads on close.
//!
//! `-- --close-only` runs the first route alone (the others take about 4 minutes).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::Duration;

use scientist::artifacts::ArtifactStore;
use scientist::monitor::{Monitor, Settings};
use scientist::run::RunId;

use self::recorder::Delivery;

#[path = "../tests/common/recorder.rs"]
mod recorder;

/// (label, bytes, files).
const SIZES: [(&str, usize, usize); 3] = [("1 KiB", 1024, 50), ("1 MiB", 1 << 20, 20), ("10 MiB", 10 << 20, 10)];

/// Any one registration taking longer than this is a failure, not a figure.
const WITHIN: Duration = Duration::from_secs(60);

/// The way a file goes to its registration.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Route {
    OnClose,
    OnCloseWorkerStream,
    Settle,
}

fn main() {
    let close_only = std::env::args().any(|arg| arg == "--close-only");
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    println!("scientist artifacts benchmark: close() → ai.artifact.registered delivered, local store\n");
    println!("{:<26} {:<8} {:>6} {:>10} {:>10} {:>10}", "route", "size", "files", "p50", "p99", "max");
    let mut routes = vec![("on close", Route::OnClose)];
    if !close_only {
        routes.push(("on close, worker stream", Route::OnCloseWorkerStream));
        routes.push(("settle", Route::Settle));
    }
    for (name, route) in routes {
        let figures = runtime.block_on(measure(route));
        for ((label, _, files), mut latencies) in SIZES.iter().zip(figures) {
            latencies.sort();
            println!(
                "{name:<26} {label:<8} {files:>6} {:>10} {:>10} {:>10}",
                millis(percentile(&latencies, 0.50)),
                millis(percentile(&latencies, 0.99)),
                millis(*latencies.last().expect("a figure")),
            );
        }
    }
}

/// The latencies of each size, in `SIZES` order.
async fn measure(route: Route) -> Vec<Vec<Duration>> {
    let temp = tempfile::tempdir().expect("temp dir");
    let run_dir = temp.path().join("run");
    std::fs::create_dir_all(&run_dir).expect("mkdir");
    let run_id: RunId = "run-bench".parse().expect("run id");
    let delivery = if route == Route::OnCloseWorkerStream { Delivery::Worker } else { Delivery::AtOnce };
    let (stream, run_stream, mut events) = recorder::open(&temp.path().join("spool"), &run_id, delivery).await;
    let store = ArtifactStore::local(&temp.path().join("artifacts")).expect("local store");
    let mut monitor = Monitor::start(Settings::new(Some(store)), run_id, run_dir.clone(), run_stream);
    monitor.watching().await;
    let mut figures = Vec::new();
    for (label, bytes, files) in SIZES {
        let mut latencies = Vec::with_capacity(files);
        for index in 0..files {
            let relative = format!("{}-{index}.pt", label.replace(' ', ""));
            let content: Vec<u8> = std::iter::repeat_with(|| fastrand::u8(..)).take(bytes).collect();
            let (closed, held) = write(&run_dir.join(&relative), &content, route == Route::Settle);
            let registered = events
                .wait_for(WITHIN, &format!("{relative} registered"), |delivered| {
                    delivered.event_type() == "ai.artifact.registered" && delivered.data_text("path") == Some(&relative)
                })
                .await;
            assert_eq!(registered.event["data"]["bytes"].as_u64(), Some(bytes as u64), "{relative}");
            latencies.push(registered.at - closed);
            drop(held);
        }
        figures.push(latencies);
    }
    let report = monitor.finish(WITHIN).await;
    assert_eq!(report.failed, 0, "no upload failed");
    stream.close(WITHIN).await;
    figures
}

/// Writes `content` to `path` and closes it; when `hold`, a second descriptor open for
/// writing is kept (and given back). The instant is right after the close.
fn write(path: &Path, content: &[u8], hold: bool) -> (std::time::Instant, Option<File>) {
    let mut file = File::create(path).expect("create");
    let held = hold.then(|| OpenOptions::new().append(true).open(path).expect("hold open"));
    file.write_all(content).expect("write");
    drop(file);
    (std::time::Instant::now(), held)
}

fn percentile(sorted: &[Duration], quantile: f64) -> Duration {
    let rank = (quantile * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn millis(duration: Duration) -> String {
    format!("{:.1} ms", duration.as_secs_f64() * 1000.0)
}
