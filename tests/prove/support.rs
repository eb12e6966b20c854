//! What the scenarios share: the stores they run on (named so that helper processes can
//! open the same one), `scientist serve` as a process that can be killed and restarted, and
//! the helper processes (`--child NAME …`).

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use scientist::store::{MongoStore, SqliteStore, Store};
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
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("serve's /proc status");
        let kib =
            status.lines().find_map(|line| line.strip_prefix("VmHWM:")).and_then(|rest| rest.trim().strip_suffix("kB"));
        kib.and_then(|kib| kib.trim().parse::<u64>().ok()).expect("VmHWM in /proc status") * 1024
    }

    /// SIGKILL: no shutdown, no flush; whatever was not committed is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().expect("SIGKILL scientist serve");
            child.wait().await.expect("reap scientist serve");
        }
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
