//! What the scenarios share: the stores they run on (named so that helper processes can
//! open the same one), `scientist serve` as a process that can be killed and restarted,
//! `scientist work` on a pipeline of the scenario's own, and the helper processes
//! (`--child NAME …`).

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scientist::event::Event;
use scientist::run::RunId;
use scientist::store::{EventFilter, MongoStore, SqliteStore, Store};
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_scientist");

/// A store a scenario and its helper processes share.
#[derive(Debug, Clone)]
pub enum StoreSpec {
    Sqlite(PathBuf),
    Mongo { url: String, database: String },
}

impl StoreSpec {
    /// A fresh embedded store in `dir`.
    pub fn sqlite(dir: &Path) -> StoreSpec {
        StoreSpec::Sqlite(dir.join("scientist.sqlite"))
    }

    /// A fresh database on the test MongoDB server (a missing server fails the run).
    pub fn mongo() -> StoreSpec {
        let database = format!("scientist_prove_{}", ulid::Ulid::generate().to_string().to_lowercase());
        StoreSpec::Mongo { url: crate::stores::mongo_url(), database }
    }

    /// The name figures carry: `sqlite` or `mongo`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreSpec::Sqlite(_) => "sqlite",
            StoreSpec::Mongo { .. } => "mongo",
        }
    }

    pub async fn open(&self) -> Arc<dyn Store> {
        match self {
            StoreSpec::Sqlite(path) => Arc::new(SqliteStore::open(path).await.expect("open the embedded store")),
            StoreSpec::Mongo { url, database } => {
                Arc::new(MongoStore::connect(url, Some(database)).await.expect("connect to the test MongoDB server"))
            }
        }
    }

    /// The environment that points the `scientist` binary at this store.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        match self {
            StoreSpec::Sqlite(path) => vec![("SCIENTIST_STORE", path.display().to_string())],
            StoreSpec::Mongo { url, database } => {
                vec![("MONGODB_URL", url.clone()), ("SCIENTIST_MONGODB_DB", database.clone())]
            }
        }
    }

    /// As arguments for a helper process, and back.
    pub fn to_args(&self) -> Vec<String> {
        match self {
            StoreSpec::Sqlite(path) => vec!["sqlite".into(), path.display().to_string()],
            StoreSpec::Mongo { url, database } => vec!["mongo".into(), url.clone(), database.clone()],
        }
    }

    fn from_args(args: &[String]) -> (StoreSpec, &[String]) {
        match args {
            [kind, path, rest @ ..] if kind == "sqlite" => (StoreSpec::Sqlite(path.into()), rest),
            [kind, url, database, rest @ ..] if kind == "mongo" => {
                (StoreSpec::Mongo { url: url.clone(), database: database.clone() }, rest)
            }
            _ => panic!("a helper process needs a store: sqlite PATH | mongo URL DATABASE, got {args:?}"),
        }
    }

    /// Drops a MongoDB database (an SQLite file goes with its directory).
    pub async fn cleanup(&self) {
        if let StoreSpec::Mongo { url, database } = self {
            let store = MongoStore::connect(url, Some(database)).await.expect("connect to the test MongoDB server");
            store.drop_database().await.expect("drop the scenario's database");
        }
    }
}

/// The stores a scenario runs on: both, embedded first.
pub fn both_stores(dir: &Path) -> [StoreSpec; 2] {
    [StoreSpec::sqlite(dir), StoreSpec::mongo()]
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("its address").port()
}

/// `scientist serve` as a process on a fixed port, so that it can be killed and started again
/// where its clients expect it.
pub struct Serve {
    pub port: u16,
    store: StoreSpec,
    flags: Vec<String>,
    child: Option<Child>,
}

impl Serve {
    pub async fn start(store: &StoreSpec, flags: &[&str]) -> Serve {
        let mut serve = Serve {
            port: free_port(),
            store: store.clone(),
            flags: flags.iter().map(|flag| flag.to_string()).collect(),
            child: None,
        };
        serve.restart().await;
        serve
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Starts it (again) and waits until `/health` answers 200.
    pub async fn restart(&mut self) {
        let child = Command::new(BIN)
            .args(["serve", "--listen", &format!("127.0.0.1:{}", self.port)])
            .args(&self.flags)
            .env_remove("MONGODB_URL")
            .env_remove("SCIENTIST_TOKEN")
            .envs(self.store.env())
            .env("LOG_LEVEL", "error")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("start scientist serve");
        self.child = Some(child);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let answer = client.get(format!("{}/health", self.url())).send().await;
            if answer.is_ok_and(|answer| answer.status().is_success()) {
                return;
            }
            assert!(Instant::now() < deadline, "scientist serve did not come up on port {}", self.port);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The most memory the running process has held (VmHWM), in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        let pid = self.child.as_ref().and_then(Child::id).expect("serve is running");
        peak_rss_bytes(pid).expect("VmHWM in serve's /proc status")
    }

    /// SIGKILL: no shutdown, no flush; whatever was not committed is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().expect("SIGKILL scientist serve");
            child.wait().await.expect("reap scientist serve");
        }
    }
}

/// The most memory process `pid` has held (VmHWM), in bytes; `None` once it is gone.
pub fn peak_rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = status.lines().find_map(|line| line.strip_prefix("VmHWM:"))?.trim().strip_suffix("kB")?;
    Some(kib.trim().parse::<u64>().ok()? * 1024)
}

/// `scientist work` on the pipeline `config` (TOML, written to `pod/pipeline.toml`), with its
/// runs under `pod/runs`, its spool in `pod/spool`, its stderr in `pod/worker.log`, short polls,
/// and neither store nor server: the caller adds `--server URL` or a store's [`StoreSpec::env`].
/// `PATH` leads to this build's `scientist`, for `scientist emit` in the stage.
pub fn worker(pod: &Path, config: &str) -> Command {
    let pipeline = pod.join("pipeline.toml");
    std::fs::write(&pipeline, config).expect("write the pipeline config");
    let log = std::fs::File::create(pod.join("worker.log")).expect("create the worker's log");
    let bin_dir = Path::new(BIN).parent().expect("the binary's directory");
    let path = format!("{}:{}", bin_dir.display(), std::env::var("PATH").unwrap_or_default());
    let mut command = Command::new(BIN);
    command
        .arg("work")
        .arg("--config")
        .arg(&pipeline)
        .env("PATH", path)
        .env("HOME", pod)
        .env("RUNPOD_POD_ID", "prove-pod")
        .env("SCIENTIST_RUNS_DIR", pod.join("runs"))
        .env("SCIENTIST_WORKER_SPOOL", pod.join("spool"))
        .env("SCIENTIST_POLL", "100ms")
        .env("SCIENTIST_CANCEL_POLL", "100ms")
        .env("SCIENTIST_HEARTBEAT", "1s")
        .env("LOG_LEVEL", "warn")
        .env_remove("MONGODB_URL")
        .env_remove("SCIENTIST_MONGODB_DB")
        .env_remove("SCIENTIST_STORE")
        .env_remove("SCIENTIST_SERVER")
        .env_remove("SCIENTIST_TOKEN")
        .env_remove("SCIENTIST_ARTIFACTS")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    command
}

/// The worker's log so far, for a scenario's failure message.
pub fn worker_log(pod: &Path) -> String {
    std::fs::read_to_string(pod.join("worker.log")).unwrap_or_default()
}

/// The directory the worker made for `run` under `pod/runs`.
pub async fn run_dir(pod: &Path, run: &RunId) -> PathBuf {
    let (runs, suffix) = (pod.join("runs"), format!("_{run}"));
    poll_until("the run's directory", Duration::from_secs(60), async || {
        let entries = std::fs::read_dir(&runs).ok()?;
        let found = entries.filter_map(Result::ok).find(|entry| entry.file_name().to_string_lossy().ends_with(&suffix));
        found.map(|entry| entry.path())
    })
    .await
}

/// Checks `check` every 20 ms until it gives a value; panics (failing the run) after `within`.
pub async fn poll_until<T>(what: &str, within: Duration, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "prove: no {what} after {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A run's events in stored order.
pub async fn all_events(store: &dyn Store, run: &RunId) -> Vec<Event> {
    let (mut events, mut cursor) = (Vec::new(), None);
    loop {
        let filter = EventFilter { limit: 1000, cursor, ..Default::default() };
        let page = store.list_events(run, &filter).await.expect("list events");
        events.extend(page.items.into_iter().map(|stored| stored.event));
        match page.next {
            Some(next) => cursor = Some(next),
            None => return events,
        }
    }
}

/// A stage (Python) that prints `PREFIX N` for N from 0 to COUNT - 1 at RATE lines a second,
/// paced by the clock so that a slow moment is caught up, and every EMIT_EVERY lines (0:
/// never) reports `ai.run.stage_progress` through `scientist emit`. It ends by writing how
/// many lines and events it sent to `printed` and `emitted` in its directory.
pub const LINES_STAGE: &str = r#"
import os, subprocess, sys, time
prefix, count, rate, emit_every = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
emits = count // emit_every if emit_every else 0
start, emitted = time.monotonic(), 0
for n in range(count):
    if n % 10 == 0:
        ahead = start + n / rate - time.monotonic()
        if ahead > 0:
            time.sleep(ahead)
    sys.stdout.write("%s %07d\n" % (prefix, n))
    if emit_every and (n + 1) % emit_every == 0:
        sys.stdout.flush()
        emitted += 1
        data = '{"stage": "Stage_1", "iteration": %d, "max_iterations": %d, "progress": %f}' % (emitted, emits, emitted / emits)
        subprocess.run(["scientist", "emit", "ai.run.stage_progress", "--run", os.environ["SCIENTIST_RUN_ID"], "--data", data], check=True, stdout=subprocess.DEVNULL)
sys.stdout.flush()
open("printed", "w").write(str(count))
open("emitted", "w").write(str(emitted))
"#;

/// The `[[stage]]` config that runs [`LINES_STAGE`] (written to `pod/lines.py`).
pub fn lines_pipeline(pod: &Path, prefix: &str, count: u64, rate: u64, emit_every: u64) -> String {
    let script = pod.join("lines.py");
    std::fs::write(&script, LINES_STAGE).expect("write the stage");
    let argv = [
        "python3".to_owned(),
        script.display().to_string(),
        prefix.to_owned(),
        count.to_string(),
        rate.to_string(),
        emit_every.to_string(),
    ];
    let argv: Vec<String> = argv.iter().map(|arg| format!("{arg:?}")).collect();
    format!("[[stage]]\nname = \"Stage_1\"\ncommand = [{}]\n", argv.join(", "))
}

/// The numbers of the stored `PREFIX N` log lines, in stored order.
pub fn line_numbers(events: &[Event], prefix: &str) -> Vec<u64> {
    let prefix = format!("{prefix} ");
    events
        .iter()
        .filter_map(|event| match &event.payload {
            scientist::event::Payload::Log(log) => log.message.strip_prefix(&prefix)?.trim().parse().ok(),
            _ => None,
        })
        .collect()
}

/// Seconds from the first stored `PREFIX N` line to the last, by their event times.
pub fn lines_span(events: &[Event], prefix: &str) -> f64 {
    let times: Vec<i64> = events
        .iter()
        .filter(|event| {
            event
                .data
                .get("message")
                .and_then(serde_json::Value::as_str)
                .is_some_and(|message| message.starts_with(prefix))
        })
        .map(|event| event.time.millis())
        .collect();
    match (times.iter().min(), times.iter().max()) {
        (Some(first), Some(last)) => (last - first) as f64 / 1000.0,
        _ => 0.0,
    }
}

/// A random number below `bound`, for where a fault strikes (seeded from the OS).
pub fn random_below(bound: u64) -> u64 {
    use std::hash::BuildHasher;
    let bits = std::collections::hash_map::RandomState::new().hash_one(Instant::now());
    if bound == 0 { 0 } else { bits % bound }
}

/// Starts this binary as helper process `name` with `args`.
pub fn spawn_child(name: &str, args: &[String]) -> Child {
    Command::new(std::env::current_exe().expect("this binary's path"))
        .arg("--child")
        .arg(name)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .expect("start a helper process")
}

/// The body of a helper process: `--child NAME [STORE…] [ARGS…]`.
pub async fn child(args: &[String]) -> ExitCode {
    match args {
        [name, rest @ ..] if name == "spool-writer" => {
            let (store, rest) = StoreSpec::from_args(rest);
            crate::spool_kill::writer(store, rest).await
        }
        [name, rest @ ..] if name == "claimer" => {
            let (store, rest) = StoreSpec::from_args(rest);
            crate::claim_race::claimer(store, rest).await
        }
        _ => {
            eprintln!("prove: unknown helper process {args:?}");
            ExitCode::from(2)
        }
    }
}
