//! The control plane down for a long while under a worker whose stage prints 1,000 lines a
//! second: `serve` is SIGKILLed once the run's first lines are stored and started again only
//! after the stage has ended, so most of the run, its end included, waits in the worker's
//! spool. Then every line arrives exactly once and in order, and the run completes; the
//! spool's peak size on disk and the drain time are measured.

use std::path::Path;
use std::time::{Duration, Instant};

use scientist::event::Event;
use scientist::run::{NewRun, RunStatus};
use scientist::time::Timestamp;
use serde_json::json;

use crate::support::{self, Serve, StoreSpec};
use crate::{Mode, Report};

/// Lines a second from the stage.
const RATE: u64 = 1000;
const PREFIX: &str = "outage line";

pub async fn run(mode: Mode, report: &mut Report) {
    let dir = tempfile::tempdir().expect("temp dir");
    // The worker's side is the same whatever is behind `serve`; MongoDB's outages are short
    // because the test server stores and pages events slowly (180,000 took over 25 minutes).
    for store in support::both_stores(dir.path()) {
        let outage = match (mode, store.kind()) {
            (Mode::Quick, "sqlite") => Duration::from_secs(15),
            (Mode::Quick, _) => Duration::from_secs(2),
            (Mode::Long, "sqlite") => Duration::from_secs(180),
            (Mode::Long, _) => Duration::from_secs(30),
        };
        let pod = dir.path().join(format!("pod-{}", store.kind()));
        std::fs::create_dir_all(&pod).expect("the pod's directory");
        scenario(&store, &pod, outage, report).await;
        store.cleanup().await;
    }
}

async fn scenario(spec: &StoreSpec, pod: &Path, outage: Duration, report: &mut Report) {
    let kind = spec.kind();
    let name = |figure: &str| format!("outage {kind}: {figure}");
    let mut serve = Serve::start(spec, &[]).await;
    let store = spec.open().await;
    let run = store.enqueue(NewRun::new(json!({"title": "outage"})), Timestamp::now()).await.expect("enqueue").id;
    // The stage prints for as long as the outage lasts; it starts a second or two before
    // `serve` goes, so it ends before `serve` is back.
    let count = RATE * outage.as_secs();
    let config = support::lines_pipeline(pod, PREFIX, count, RATE, RATE);
    let mut worker = support::worker(pod, &config)
        .args(["--once", "--server", &serve.url()])
        // Longer than the outage: the worker waits for the spool to drain before it exits.
        .env("SCIENTIST_FLUSH_TIMEOUT", format!("{}s", drain_limit(outage).as_secs() + 60))
        .spawn()
        .expect("start the worker");
    let worker_pid = worker.id().expect("the worker's pid");
    support::poll_until("line stored before the outage", Duration::from_secs(60), async || {
        let stored = store.get(&run).await.ok()??;
        (stored.status == RunStatus::Running && stored.last_event_seq > 10).then_some(())
    })
    .await;

    serve.kill().await;
    let down = Instant::now();
    let spool = pod.join("spool");
    let mut peak_spool = 0;
    // Sampled until the outage has lasted its time and the run's end waits in the spool.
    loop {
        peak_spool = peak_spool.max(spool_bytes(&spool));
        if down.elapsed() >= outage && spool_holds_the_end(&spool) {
            break;
        }
        assert!(down.elapsed() < outage * 2 + Duration::from_secs(60), "the stage did not end during the outage");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = store.get(&run).await.expect("get").expect("the run");
    let outage_lasted = down.elapsed();

    serve.restart().await;
    let back = Instant::now();
    let mut first_delivery = None;
    let mut worker_peak_rss = 0;
    // Until the run is COMPLETED, or the worker has exited without that: it delivers all it
    // spooled before it exits, so nothing more can come after.
    let (drained, status) = support::poll_until("COMPLETED run after the outage", drain_limit(outage), async || {
        worker_peak_rss = worker_peak_rss.max(support::peak_rss_bytes(worker_pid).unwrap_or(0));
        let exited = worker.try_wait().expect("the worker's status");
        let stored = store.get(&run).await.ok()??;
        if first_delivery.is_none() && stored.last_event_seq > before.last_event_seq {
            first_delivery = Some(back.elapsed());
        }
        (stored.status == RunStatus::Completed || exited.is_some()).then(|| (back.elapsed(), stored.status))
    })
    .await;
    let exited = tokio::time::timeout(Duration::from_secs(60), worker.wait()).await;
    let worker_ok = matches!(exited, Ok(Ok(status)) if status.success());
    if !worker_ok || status != RunStatus::Completed {
        eprintln!("outage {kind}: the worker's log:\n{}", support::worker_log(pod));
    }
    serve.kill().await;

    let events = support::all_events(store.as_ref(), &run).await;
    let dir = support::run_dir(pod, &run).await;
    let printed = read_count(&dir.join("printed"));
    let emitted = read_count(&dir.join("emitted"));
    let numbers = support::line_numbers(&events, PREFIX);
    let distinct: std::collections::BTreeSet<u64> = numbers.iter().copied().collect();
    let lost = (0..printed).filter(|number| !distinct.contains(number)).count();
    let progress = events.iter().filter(|event| event.event_type == "ai.run.stage_progress").count();
    report.figure(&name("outage"), format!("{:.1} s", outage_lasted.as_secs_f64()));
    report.figure(&name("lines printed by the stage"), format!("{printed} at {RATE}/s"));
    report.figure(&name("lines stored"), numbers.len());
    report.figure(&name("events stored"), events.len());
    report.figure(&name("lines printed over"), format!("{:.1} s", support::lines_span(&events, PREFIX)));
    report.figure(&name("events before the outage"), before.last_event_seq);
    report.figure(&name("peak spool size"), format!("{:.1} MB", peak_spool as f64 / 1e6));
    report.figure(&name("worker peak RSS"), format!("{:.0} MB", worker_peak_rss as f64 / 1e6));
    let first = first_delivery.unwrap_or(drained);
    report.figure(&name("serve back to the first delivery"), format!("{:.1} s", first.as_secs_f64()));
    report.figure(&name("serve back to COMPLETED (drain)"), format!("{:.1} s", drained.as_secs_f64()));
    report.zero(&name("lines lost"), lost as u64);
    report.zero(&name("lines stored twice"), (numbers.len() - distinct.len()) as u64);
    report.zero(&name("progress events lost"), emitted.saturating_sub(progress as u64));
    report.zero(&name("events out of order"), out_of_order(&events) + disordered(&numbers));
    report.zero(&name("events left in the spool"), spool_events(&spool));
    report.promise(&name("run COMPLETED"), status, status == RunStatus::Completed);
    report.promise(&name("worker exited 0"), worker_ok, worker_ok);
}

/// The most the drain may take: the test MongoDB server stores a few hundred events a second.
fn drain_limit(outage: Duration) -> Duration {
    Duration::from_secs(300) + outage * 6
}

/// Bytes of the spool's segments.
fn spool_bytes(spool: &Path) -> u64 {
    segments(spool).filter_map(|path| std::fs::metadata(path).ok()).map(|meta| meta.len()).sum()
}

fn spool_holds_the_end(spool: &Path) -> bool {
    segments(spool).any(|path| std::fs::read_to_string(path).is_ok_and(|text| text.contains("\"ai.run.completed\"")))
}

fn spool_events(spool: &Path) -> u64 {
    segments(spool).filter_map(|path| std::fs::read_to_string(path).ok()).map(|text| text.lines().count() as u64).sum()
}

fn segments(spool: &Path) -> impl Iterator<Item = std::path::PathBuf> {
    let entries = std::fs::read_dir(spool).into_iter().flatten().filter_map(Result::ok);
    entries
        .map(|entry| entry.path())
        .filter(|path| path.file_name().is_some_and(|name| name.to_string_lossy().starts_with("seg-")))
}

fn read_count(path: &Path) -> u64 {
    std::fs::read_to_string(path).ok().and_then(|text| text.trim().parse().ok()).unwrap_or(0)
}

/// Events in stored order whose `seq` is not above the one before.
fn out_of_order(events: &[Event]) -> u64 {
    let seqs: Vec<u64> = events.iter().map(|event| event.seq.unwrap_or(0)).collect();
    seqs.windows(2).filter(|pair| pair[0] >= pair[1]).count() as u64
}

/// Lines stored after a line printed later.
fn disordered(numbers: &[u64]) -> u64 {
    numbers.windows(2).filter(|pair| pair[0] >= pair[1]).count() as u64
}
