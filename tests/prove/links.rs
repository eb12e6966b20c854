//! Links and odd names in a run directory: a real `scientist work` runs a stage that points
//! links at a file holding a canary outside the run directory (as an artifact, as a log, as a
//! folder, made before and after the watch started, and one path swapped between a real
//! file and a link again and again), and writes files with odd names. Nothing of the
//! canary may reach the artifact store or any event.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::{StoreSpec, all_events, worker};
use crate::{Mode, Report};
use scientist::run::{NewRun, RunStatus};
use scientist::time::Timestamp;
use serde_json::Value;

const CANARY: &str = "canary-outside-the-run-directory-7f3a";

pub async fn run(mode: Mode, report: &mut Report) {
    let dir = tempfile::tempdir().expect("temp dir");
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(outside.join("folder")).expect("mkdir");
    std::fs::write(outside.join("secret"), format!("{CANARY}\n")).expect("write the canary");
    std::fs::write(outside.join("folder/plot.png"), CANARY).expect("write the canary");
    let swaps = mode.pick(2_000, 20_000);
    let stage = stage_script(&outside, swaps);
    let config = format!("[[stage]]\nname = \"Stage_1\"\ncommand = {stage:?}\n");

    let spec = StoreSpec::sqlite(dir.path());
    let store = spec.open().await;
    let run = store.enqueue(NewRun::new(Value::Null), Timestamp::now()).await.expect("enqueue");
    let artifacts = dir.path().join("artifacts");
    let mut worker = worker(dir.path(), &config);
    worker.arg("--once").arg("--artifacts").arg(&artifacts).args(["--artifact-settle", "200ms"]).envs(spec.env());
    let status = tokio::time::timeout(Duration::from_secs(300), worker.status())
        .await
        .expect("the worker finished within 5 minutes")
        .expect("run the worker");
    let finished = store.get(&run.id).await.expect("get").expect("the run");
    report.promise("links: the run", finished.status, status.success() && finished.status == RunStatus::Completed);

    let leaked_files = stored_files(&artifacts).iter().filter(|(_, content)| content.contains(CANARY)).count();
    let (mut leaked_events, mut refused) = (0, 0);
    for event in all_events(store.as_ref(), &run.id).await {
        leaked_events += usize::from(Value::Object(event.to_json()).to_string().contains(CANARY));
        refused += usize::from(event.event_type == "ai.artifact.failed");
    }
    let registered = store.artifacts(&run.id).await.expect("artifacts");
    let odd_names = registered.iter().filter(|artifact| artifact.key.contains("odd/")).count();
    report.figure("links: path swaps between a file and a link", swaps);
    report.figure("links: links reported refused (ai.artifact.failed)", refused);
    // `..png` is a hidden file, which the monitor leaves alone like `.git`.
    report.promise("links: files with odd names uploaded", odd_names, odd_names == 3);
    report.zero("links: stored artifacts holding the outside file", leaked_files as u64);
    report.zero("links: events carrying the outside file", leaked_events as u64);
}

/// The stage: links out in every form, odd names, and a path swapped back and forth.
fn stage_script(outside: &Path, swaps: u32) -> String {
    let (secret, folder) = (outside.join("secret"), outside.join("folder"));
    format!(
        "set -e; ln -s {secret:?} leak.yaml; ln -s {secret:?} leak.log; ln -s {folder:?} data; \
         mkdir odd; echo ok > 'odd/name with spaces ✓.png'; echo ok > 'odd/-n.png'; echo ok > 'odd/a;b&c$d\\e.png'; echo hidden > 'odd/..png'; \
         i=0; while [ $i -lt {swaps} ]; do echo real > swap.tmp; mv -f swap.tmp swap.png; \
         ln -sf {secret:?} swap.png; i=$((i+1)); done; \
         mkdir late; ln -s {folder:?} late/inner; ln -s {secret:?} late/train.log; \
         echo 'a line of our own' >> own.log; echo done > marker.png"
    )
}

/// Every file under `dir`, with its content.
fn stored_files(dir: &Path) -> Vec<(PathBuf, String)> {
    let (mut found, mut folders) = (Vec::new(), vec![dir.to_owned()]);
    while let Some(folder) = folders.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else { continue };
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                folders.push(entry.path());
            } else if let Ok(content) = std::fs::read(entry.path()) {
                found.push((entry.path(), String::from_utf8_lossy(&content).into_owned()));
            }
        }
    }
    found
}
