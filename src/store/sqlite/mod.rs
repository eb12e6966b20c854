//! The embedded store: one SQLite file in WAL mode, shared by `serve`, `work` and `runs`
//! on one machine (not over NFS).
//!
//! Run documents are stored as JSON beside the columns the queue sorts and filters on.
//! Writes go through one writer thread per process that commits them in groups (see
//! `group`): each group is one `BEGIN IMMEDIATE` transaction (the write lock is taken up
//! front, so a claim or an event batch never interleaves with another process's), committed
//! with `synchronous=FULL`: when a call returns Ok the data survives a crash or power loss.
//! Reads run on tokio's blocking pool, from a small pool of reader connections.
//!
//! Events are ordered by `pos` (the rowid, `AUTOINCREMENT`). Writers are serialized by the
//! write lock, so positions are assigned in commit order: a reader never sees a later event
//! before an earlier one, and a cursor (a `pos`) never passes an event still to come. The
//! MongoDB store needs its `storeSeq` and gap rule for that; this one has it for free.

mod cost_rows;
mod event_rows;
mod events;
mod group;
mod ideation;
mod pages;
mod runs;
mod schema;
mod stats;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, Transaction};

use self::events::load_hypothesis;
use self::group::GroupWriter;
use self::ideation::load_ideation;
use self::pages::{Direction, events_page};
use self::runs::{insert_run, load_run, save_run};
use self::schema::{SCHEMA, migrate};
use super::{
    Artifact, Error, EventFilter, HypothesisIdeas, IdeationChange, Outcome, Page, Pruned, Result, Rules, RunChange,
    RunFilter, Stats, Store, StoredEvent, cancel_run, lock, reset_run,
};
use crate::event::Event;
use crate::ideation::{IdeationRequest, IdeationStatus, NewIdeation};
use crate::run::{NewRun, Run, RunId, RunStatus};
use crate::time::Timestamp;

/// How long a writer waits for another process's transaction before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

/// Prepared statements kept per connection: more than the writer's distinct statements
/// (rusqlite keeps 16), so none is parsed again once it ran.
const STATEMENT_CACHE: usize = 64;

/// Reader connections kept open for reuse.
const MAX_IDLE_READERS: usize = 8;

/// The embedded store. Cheap to clone; clones share connections.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    rules: Rules,
    writer: GroupWriter,
    readers: Mutex<Vec<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store at `path`, with its parent directories.
    pub async fn open(path: &Path) -> Result<Self> {
        SqliteStore::open_with(path, Rules::default()).await
    }

    /// As [`SqliteStore::open`], applying `rules` in its writes.
    pub async fn open_with(path: &Path, rules: Rules) -> Result<Self> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            if let Some(parent) = path.parent().filter(|parent| !parent.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent).map_err(|err| Error::Open {
                    path: path.display().to_string(),
                    reason: format!("cannot create {}: {err}", parent.display()),
                })?;
            }
            let mut writer = connect(&path)?;
            // A group's savepoints keep their sub-journal in memory rather than spilling it
            // to a temporary file (a group is bounded, see `group`).
            writer.pragma_update(None, "temp_store", "MEMORY")?;
            writer.execute_batch(SCHEMA)?;
            migrate(&mut writer, &path)?;
            let writer = GroupWriter::start(writer, rules.clone())?;
            Ok(SqliteStore { inner: Arc::new(Inner { path, rules, writer, readers: Mutex::new(Vec::new()) }) })
        })
        .await?
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    fn rules(&self) -> Rules {
        self.inner.rules.clone()
    }

    /// Transactions this process has committed (each one fsync); with the events applied,
    /// how many writes shared a commit.
    pub fn commits(&self) -> u64 {
        self.inner.writer.commits()
    }

    /// Runs `work` in the writer's next group commit; Ok once that commit is durable.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        self.inner.writer.write(work).await
    }

    /// Runs `work` on a reader connection (WAL readers never block the writer).
    async fn read<T: Send + 'static>(&self, work: impl FnOnce(&Connection) -> Result<T> + Send + 'static) -> Result<T> {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = lock(&inner.readers).pop();
            let connection = match pooled {
                Some(connection) => connection,
                None => connect(&inner.path)?,
            };
            let value = work(&connection);
            let mut readers = lock(&inner.readers);
            if readers.len() < MAX_IDLE_READERS {
                readers.push(connection);
            }
            value
        })
        .await?
    }
}

fn connect(path: &Path) -> Result<Connection> {
    let connection = Connection::open(path)?;
    connection.busy_timeout(BUSY_TIMEOUT)?;
    connection.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // One plan per statement whatever its bound values: without this, SQLite marks some
    // cached statements (the claim query, the stage-rows read) to be compiled again on every
    // new binding, a sixth of the writer's time in a claim. No query here depends on a
    // value-dependent plan (no LIKE, no ANALYZE statistics).
    connection.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    // WAL lets readers run beside the one writer; FULL syncs the WAL on every commit,
    // which is what makes "acknowledged" mean durable.
    connection.pragma_update(None, "journal_mode", "WAL")?;
    connection.pragma_update(None, "synchronous", "FULL")?;
    Ok(connection)
}

#[async_trait]
impl Store for SqliteStore {
    async fn enqueue(&self, new_run: NewRun, now: Timestamp) -> Result<Run> {
        let rules = self.rules();
        self.write(move |tx| {
            let mut run = Run::queued(new_run, now);
            crate::store::before_save(&mut run, &rules, now);
            insert_run(tx, &run)?;
            Ok(run)
        })
        .await
    }

    async fn get(&self, id: &RunId) -> Result<Option<Run>> {
        let id = id.clone();
        self.read(move |conn| load_run(conn, &id)).await
    }

    async fn list(&self, filter: &RunFilter) -> Result<Page<Run>> {
        self.list_runs(filter).await
    }

    async fn claim(&self, worker: &str, queue: &str, now: Timestamp) -> Result<Option<Run>> {
        self.claim_next(worker, queue, now).await
    }

    async fn apply_events(&self, events: Vec<Event>, now: Timestamp) -> Result<Vec<Outcome>> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        self.inner.writer.apply(events, now).await
    }

    async fn list_events(&self, run_id: &RunId, filter: &EventFilter) -> Result<Page<StoredEvent>> {
        let (run_id, filter) = (run_id.clone(), filter.clone());
        self.read(move |conn| events_page(conn, &run_id, &filter, Direction::Forward)).await
    }

    async fn list_recent_events(&self, run_id: &RunId, filter: &EventFilter) -> Result<Page<StoredEvent>> {
        let (run_id, filter) = (run_id.clone(), filter.clone());
        self.read(move |conn| events_page(conn, &run_id, &filter, Direction::Backward)).await
    }

    async fn update_if(&self, id: &RunId, now: Timestamp, change: RunChange) -> Result<Option<Run>> {
        let (id, rules) = (id.clone(), self.rules());
        self.write(move |tx| {
            let Some(mut run) = load_run(tx, &id)? else { return Ok(None) };
            if !change(&mut run) {
                return Ok(None);
            }
            save_run(tx, &mut run, now, &rules)?;
            Ok(Some(run))
        })
        .await
    }

    async fn due_alerts(&self, now: Timestamp, limit: usize) -> Result<Vec<Run>> {
        self.runs_with_alerts_due(now, limit).await
    }

    async fn reset(&self, id: &RunId, now: Timestamp) -> Result<Run> {
        let (id, rules) = (id.clone(), self.rules());
        self.write(move |tx| {
            let run = load_run(tx, &id)?.ok_or_else(|| Error::NotFound(id.clone()))?;
            let mut run = reset_run(run, now)?;
            save_run(tx, &mut run, now, &rules)?;
            Ok(run)
        })
        .await
    }

    async fn request_cancel(&self, id: &RunId, by: &str, reason: Option<String>, now: Timestamp) -> Result<Run> {
        let (id, by, rules) = (id.clone(), by.to_owned(), self.rules());
        self.write(move |tx| {
            let run = load_run(tx, &id)?.ok_or_else(|| Error::NotFound(id.clone()))?;
            let mut run = cancel_run(run, &by, reason, now)?;
            save_run(tx, &mut run, now, &rules)?;
            Ok(run)
        })
        .await
    }

    async fn counts(&self) -> Result<Vec<(RunStatus, u64)>> {
        self.count_by_status().await
    }

    async fn probe_write(&self, now: Timestamp) -> Result<()> {
        self.write(move |tx| {
            // Created here rather than in the schema: a probe table needs no migration, and
            // an older build opening the file ignores it.
            tx.execute_batch(
                "CREATE TABLE IF NOT EXISTS health_probe (id INTEGER PRIMARY KEY CHECK (id = 1), at INTEGER NOT NULL)",
            )?;
            tx.execute(
                "INSERT INTO health_probe (id, at) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET at = excluded.at",
                [now.millis()],
            )?;
            Ok(())
        })
        .await
    }

    async fn prune_logs(&self, cutoff: Timestamp, from: Option<String>, limit: usize) -> Result<Pruned> {
        self.prune_old_logs(cutoff, from, limit).await
    }

    async fn last_received_at(&self) -> Result<Option<Timestamp>> {
        self.newest_received_at().await
    }

    async fn stats(&self, now: Timestamp, cost_window: std::time::Duration) -> Result<Stats> {
        self.gather_stats(now, cost_window).await
    }

    async fn resolve_prefix(&self, prefix: &str) -> Result<Vec<RunId>> {
        self.runs_with_prefix(prefix).await
    }

    async fn artifacts(&self, run_id: &RunId) -> Result<Vec<Artifact>> {
        self.run_artifacts(run_id).await
    }

    async fn hypothesis_ideas(&self, id: &str) -> Result<Option<HypothesisIdeas>> {
        let id = id.to_owned();
        self.read(move |conn| load_hypothesis(conn, &id)).await
    }

    async fn enqueue_ideation(&self, new: NewIdeation, now: Timestamp) -> Result<IdeationRequest> {
        self.insert_ideation(new, now).await
    }

    async fn get_ideation(&self, id: &str) -> Result<Option<IdeationRequest>> {
        let id = id.to_owned();
        self.read(move |conn| load_ideation(conn, &id)).await
    }

    async fn list_ideation(&self, statuses: &[IdeationStatus], limit: usize) -> Result<Vec<IdeationRequest>> {
        self.list_ideation_requests(statuses, limit).await
    }

    async fn claim_ideation(&self, worker: &str, now: Timestamp) -> Result<Option<IdeationRequest>> {
        self.claim_oldest_ideation(worker, now).await
    }

    async fn update_ideation_if(&self, id: &str, change: IdeationChange) -> Result<Option<IdeationRequest>> {
        self.update_ideation(id, change).await
    }
}
