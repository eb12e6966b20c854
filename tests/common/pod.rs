//! One pod for the end-to-end tests of `scientist work` (`worker.rs`, `monitor.rs`): a temp
//! dir for its runs, spool and configs, the store its worker claims from and reports to
//! (SQLite or MongoDB, opened by `stores.rs`), and the built binary set up to use them.
//! Included with `#[path]` by the tests that need it, together with `stores.rs` (it uses `crate::stores`):
//!
//! ```ignore
//! #[path = "common/stores.rs"]
//! mod stores;
//! #[path = "common/pod.rs"]
//! mod pod;
//! ```

// Each test crate uses some of these helpers.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scientist::event::Event;
use scientist::run::{NewRun, Run, RunId};
use scientist::store::{Artifact, EventFilter, Store};
use scientist::time::Timestamp;
use serde_json::json;
use tokio::process::{Child, Command};

use crate::stores::TestStore;

pub const BIN: &str = env!("CARGO_BIN_EXE_scientist");
/// The pod id the worker reports (`RUNPOD_POD_ID`).
pub const POD: &str = "test-pod";

/// The example pipelines and their stages.
pub fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

/// Where the pod's worker claims runs and reports events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreKind {
    /// The embedded store: an SQLite file.
    Sqlite,
    /// MongoDB direct mode, on the test server, in a database of the test's own.
    Mongo,
}

/// A pod's worth of directories around one store.
pub struct Pod {
    dir: tempfile::TempDir,
    pub store: Arc<dyn Store>,
    backing: TestStore,
}

impl Pod {
    pub async fn new(kind: StoreKind) -> Pod {
        let dir = tempfile::tempdir().expect("temp dir");
        let backing = match kind {
            StoreKind::Sqlite => TestStore::sqlite().await,
            StoreKind::Mongo => TestStore::mongo().await,
        };
        Pod { dir, store: backing.store.clone(), backing }
    }

    pub async fn sqlite() -> Pod {
        Pod::new(StoreKind::Sqlite).await
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// The environment that points any `scientist` command at the pod's store.
    pub fn store_env(&self) -> Vec<(&'static str, String)> {
        self.backing.cli_env()
    }

    pub async fn enqueue(&self) -> RunId {
        let idea = json!({"title": "toy idea", "hypothesis": "a smaller learning rate helps"});
        self.store.enqueue(NewRun::new(idea), Timestamp::now()).await.expect("enqueue").id
    }

    pub async fn run(&self, id: &RunId) -> Run {
        self.store.get(id).await.expect("get").expect("run exists")
    }

    /// The run's artifact records by key.
    pub async fn artifacts(&self, id: &RunId) -> BTreeMap<String, Artifact> {
        let artifacts = self.store.artifacts(id).await.expect("artifacts");
        artifacts.into_iter().map(|artifact| (artifact.key.clone(), artifact)).collect()
    }

    /// A pipeline config in the pod's directory, for the given `[[stage]]` tables.
    pub fn config(&self, text: &str) -> PathBuf {
        let path = self.path("pipeline.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    /// `scientist work` on the pod's store, with short polls; `PATH` finds `scientist emit`.
    pub fn worker(&self, config: &Path) -> Command {
        let mut command = self.bare_worker(config);
        command.envs(self.store_env());
        command
    }

    /// `scientist work` with no store configured (for --server).
    pub fn bare_worker(&self, config: &Path) -> Command {
        let bin_dir = Path::new(BIN).parent().expect("bin dir");
        let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
        let mut command = Command::new(BIN);
        command
            .arg("work")
            .arg("--config")
            .arg(config)
            .env("PATH", path)
            .env("HOME", self.dir.path())
            .env("RUNPOD_POD_ID", POD)
            .env("SCIENTIST_RUNS_DIR", self.path("runs"))
            .env("SCIENTIST_WORKER_SPOOL", self.path("spool"))
            .env("SCIENTIST_POLL", "100ms")
            .env("SCIENTIST_CANCEL_POLL", "100ms")
            .env("SCIENTIST_HEARTBEAT", "300ms")
            .env("SCIENTIST_TOKEN", "the-workers-own-secret-token")
            .env("LOG_LEVEL", "warn")
            .env_remove("MONGODB_URL")
            .env_remove("SCIENTIST_MONGODB_DB")
            .env_remove("SCIENTIST_STORE")
            .env_remove("SCIENTIST_SERVER")
            .env_remove("SCIENTIST_ARTIFACTS")
            .env_remove("SCIENTIST_ARTIFACTS_ENDPOINT")
            .env_remove("AWS_ENDPOINT_URL")
            .env_remove("TOY_WAIT_FILE")
            .env_remove("TOY_CHECKPOINT_MB")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// The run's directory, once the worker made it.
    pub async fn run_dir(&self, id: &RunId) -> PathBuf {
        let runs = self.path("runs");
        let suffix = format!("_{id}");
        wait_for("the run directory", Duration::from_secs(60), || {
            let found = std::fs::read_dir(&runs)
                .ok()?
                .filter_map(Result::ok)
                .find(|entry| entry.file_name().to_str().is_some_and(|name| name.ends_with(&suffix)));
            found.map(|entry| entry.path())
        })
        .await
    }

    /// Every stored event of the run, in stored order.
    pub async fn events(&self, id: &RunId) -> Vec<Event> {
        let mut events = Vec::new();
        let mut cursor = None;
        loop {
            let filter = EventFilter { limit: 1000, cursor: cursor.clone(), ..EventFilter::default() };
            let page = self.store.list_events(id, &filter).await.expect("list events");
            events.extend(page.items.into_iter().map(|stored| stored.event));
            match page.next {
                Some(next) => cursor = Some(next),
                None => return events,
            }
        }
    }

    /// Drops the test's MongoDB database (the directories go with the value).
    pub async fn cleanup(self) {
        self.backing.cleanup().await;
    }
}

/// Polls `check` until it gives a value, failing the test after `within`.
pub async fn wait_for<T>(what: &str, within: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    eventually(what, within, async || check()).await
}

/// Polls the async `check` (a store read) until it gives a value, failing the test after `within`.
pub async fn eventually<T>(what: &str, within: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for the worker to exit and returns its status and stderr.
pub async fn finish(child: Child, within: Duration) -> (ExitStatus, String) {
    let output = tokio::time::timeout(within, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("the worker did not exit within {within:?}"))
        .expect("worker output");
    (output.status, String::from_utf8_lossy(&output.stderr).into_owned())
}

/// `scientist serve` on the pod's store, on loopback `port`, with `flags`.
pub fn serve(pod: &Pod, port: u16, flags: &[&str]) -> Child {
    Command::new(BIN)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .args(flags)
        .env_remove("MONGODB_URL")
        .envs(pod.store_env())
        .env_remove("SCIENTIST_TOKEN")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("start serve")
}

/// Waits until `serve` on `port` answers `/health`.
pub async fn wait_healthy(port: u16) {
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/health");
    eventually("serve to come up", Duration::from_secs(30), async || {
        let answer = client.get(&url).send().await;
        answer.is_ok_and(|answer| answer.status().is_success()).then_some(())
    })
    .await
}

/// What `read` gives once `check` holds for it, polled; fails the test after 30 s.
pub async fn poll_until<T>(what: &str, read: impl AsyncFn() -> T, check: impl Fn(&T) -> bool) -> T {
    eventually(what, Duration::from_secs(30), async || {
        let value = read().await;
        check(&value).then_some(value)
    })
    .await
}

/// The pid a stage wrote to `pid_file` (`echo $$ > "$SCIENTIST_RUN_DIR/pid"`), once written.
pub async fn stage_pid(pid_file: &Path) -> i32 {
    poll_until(
        "the stage's pid",
        async || std::fs::read_to_string(pid_file).ok(),
        |text| text.as_deref().is_some_and(|text| text.trim().parse::<i32>().is_ok()),
    )
    .await
    .and_then(|text| text.trim().parse().ok())
    .expect("a pid")
}

/// The run once `check` holds for it, polled from the store.
pub async fn run_until(pod: &Pod, id: &RunId, what: &str, check: impl Fn(&Run) -> bool) -> Run {
    poll_until(what, async || pod.run(id).await, check).await
}
