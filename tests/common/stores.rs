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
    Sqlite { dir: tempfile::TempDir },
    Mongo { url: String, database: String, handle: MongoStore },
}

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

    /// Another independent handle on the same data.
    pub async fn second_handle(&self) -> Arc<dyn Store> {
        self.handle_with(Rules::default()).await
    }

    /// Another independent handle on the same data, applying `rules` in its writes (as
    /// `serve` or a worker on the store does).
    pub async fn handle_with(&self, rules: Rules) -> Arc<dyn Store> {
        match &self.backend {
            Backend::Sqlite { dir } => Arc::new(
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
