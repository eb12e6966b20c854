//! Opening each store for the shared suite (included by the tests that need a store).

use std::sync::Arc;

use scientist::store::{MongoStore, Rules, SqliteStore, Store};

/// A store for one test, and how to open a second handle on the same data
/// (a second process on the same SQLite file, a second client of the same database).
pub struct TestStore {
    pub store: Arc<dyn Store>,
    backend: Backend,
}

enum Backend {
    Sqlite {
        dir: tempfile::TempDir,
    },
    Mongo {
        url: String,
        database: String,
        handle: MongoStore,
    },
    /// An SQLite store behind `serve` on a real socket: the CLI gets only the URL and a token.
    Api {
        dir: tempfile::TempDir,
        url: String,
        _stop: tokio::sync::oneshot::Sender<()>,
    },
}

/// The API backend's tokens, one per scope (`serve --token-file` lines).
pub const ADMIN_TOKEN: &str = "operator-admin-token";
pub const READ_TOKEN: &str = "dashboard-read-token";
pub const INGEST_TOKEN: &str = "pod-ingest-token";

// Each test crate uses some of these helpers.
#[allow(dead_code)]
impl TestStore {
    pub async fn sqlite() -> TestStore {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SqliteStore::open(&dir.path().join("scientist.sqlite")).await.expect("open sqlite store");
        TestStore { store: Arc::new(store), backend: Backend::Sqlite { dir } }
    }

    pub async fn mongo() -> TestStore {
        let url = mongo_url();
        let database = format!("scientist_test_{}", ulid::Ulid::generate().to_string().to_lowercase());
        let handle = MongoStore::connect(&url, Some(&database)).await.expect("connect to the test MongoDB server");
        let store = MongoStore::connect(&url, Some(&database)).await.expect("connect to the test MongoDB server");
        TestStore { store: Arc::new(store), backend: Backend::Mongo { url, database, handle } }
    }

    /// An SQLite store behind an in-process `serve` (127.0.0.1, an OS-chosen port) that
    /// takes [`ADMIN_TOKEN`] (read and admin), [`READ_TOKEN`] and [`INGEST_TOKEN`].
    pub async fn api() -> TestStore {
        use scientist::server::{self, AppState, Tokens};
        let dir = tempfile::tempdir().expect("temp dir");
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("scientist.sqlite")).await.expect("open sqlite store"));
        let grants = format!("{ADMIN_TOKEN} read admin\n{READ_TOKEN} read\n{INGEST_TOKEN} ingest\n");
        let tokens = Tokens::default().with_token_file(&grants).expect("token lines");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(server::run(listener, AppState::new(store.clone(), tokens), async {
            let _ = stopped.await;
        }));
        TestStore { store, backend: Backend::Api { dir, url, _stop: stop } }
    }

    /// Another independent handle on the same data.
    pub async fn second_handle(&self) -> Arc<dyn Store> {
        self.handle_with(Rules::default()).await
    }

    /// Another independent handle on the same data, applying `rules` in its writes (as
    /// `serve` or a worker on the store does).
    pub async fn handle_with(&self, rules: Rules) -> Arc<dyn Store> {
        match &self.backend {
            Backend::Sqlite { dir } | Backend::Api { dir, .. } => Arc::new(
                SqliteStore::open_with(&dir.path().join("scientist.sqlite"), rules).await.expect("reopen sqlite"),
            ),
            Backend::Mongo { url, database, .. } => Arc::new(
                MongoStore::connect(url, Some(database)).await.expect("second MongoDB client").with_rules(rules),
            ),
        }
    }

    /// The environment that points the `scientist` binary at this store.
    pub fn cli_env(&self) -> Vec<(&'static str, String)> {
        match &self.backend {
            Backend::Sqlite { dir } => {
                vec![("SCIENTIST_STORE", dir.path().join("scientist.sqlite").display().to_string())]
            }
            Backend::Mongo { url, database, .. } => {
                vec![("MONGODB_URL", url.clone()), ("SCIENTIST_MONGODB_DB", database.clone())]
            }
            Backend::Api { url, .. } => {
                vec![("SCIENTIST_SERVER", url.clone()), ("SCIENTIST_TOKEN", ADMIN_TOKEN.into())]
            }
        }
    }

    /// Drops the test's MongoDB database (the SQLite temp dir goes with the value).
    pub async fn cleanup(self) {
        if let Backend::Mongo { handle, .. } = &self.backend {
            handle.drop_database().await.expect("drop test database");
        }
    }
}

/// The MongoDB server the test script started; a missing one is a failure, never a skip.
pub fn mongo_url() -> String {
    std::env::var("SCIENTIST_TEST_MONGODB_URL").unwrap_or_else(|_| {
        panic!(
            "SCIENTIST_TEST_MONGODB_URL is not set: the MongoDB tests need the test server. \
             Run the suite with `scripts/test` (it starts SecantusDB), or start one with \
             `secantusd-py --host 127.0.0.1 --port 27017 --storage-path :memory:` and export \
             SCIENTIST_TEST_MONGODB_URL=mongodb://127.0.0.1:27017"
        )
    })
}
