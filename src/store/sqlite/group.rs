//! Group commit: the embedded store's one writer thread.
//!
//! Every write (an event batch, a claim, a run change) is a job sent to this thread. Jobs
//! that arrive while a commit is in flight wait for it and then share the next transaction:
//! one `BEGIN IMMEDIATE`, each job in its own savepoint, one commit, one fsync. A job is
//! answered only after the commit that holds it is durable, so "202 means durable" holds
//! for every request in a group; a job that fails is rolled back to its savepoint alone and
//! never fails its neighbours. Jobs run one after another on one connection, so each sees
//! the writes of the jobs before it (two claims in one group never take the same run).
//!
//! Event batches next to each other in a group are applied as one batch, so that a run
//! they share is read and written once; should that merged batch fail, each is applied
//! again on its own, so that one request's bad event still fails only that request.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use super::event_rows::body;
use super::events::apply_batch;
use crate::event::Event;
use crate::store::{Error, Outcome, Result, Rules};
use crate::time::Timestamp;

/// Jobs sharing one commit at most: bounds how long one transaction holds the file's write
/// lock (other processes on the same file wait for it) and how much one failed commit fails.
const MAX_GROUP: usize = 256;

/// Events sharing one commit at most (a group closes once it holds this many), for the same
/// reasons: a few large batches fill a group as well as many small writes do.
const MAX_GROUP_EVENTS: usize = 10_000;

/// Jobs waiting for the writer at most; senders beyond it wait (backpressure on ingest).
const QUEUE_DEPTH: usize = 4096;

/// One write waiting for, or running in, a group.
trait Job: Send {
    /// Runs the work in the group's transaction; false when it failed (and is rolled back).
    fn run(&mut self, tx: &Transaction<'_>, rules: &Rules) -> bool;
    /// Answers the caller once the group's fate is known.
    fn answer(self: Box<Self>, committed: std::result::Result<(), &str>);
    /// An event batch; `None` for other writes.
    fn events(&self) -> Option<Batch<'_>> {
        None
    }
    /// An event batch's outcomes, when it was applied as part of a merged batch.
    fn applied(&mut self, _outcomes: Vec<Outcome>) {}
}

/// An event with its `body` column, written on the caller's thread: the writer's time is
/// what every write waits on (the JSON was 7% of the writer's samples relaying log lines).
type Row = (Event, String);

/// An event batch as the writer applies it.
struct Batch<'a> {
    rows: &'a [Row],
    /// When the events were received.
    now: Timestamp,
}

impl<'a> Batch<'a> {
    fn len(&self) -> usize {
        self.rows.len()
    }

    fn rows(&self) -> impl Iterator<Item = (&'a Event, &'a str, Timestamp)> + use<'a> {
        let now = self.now;
        self.rows.iter().map(move |(event, body)| (event, body.as_str(), now))
    }
}

/// `Store::apply_events`: a job that may be merged with its neighbours.
struct Apply {
    rows: Vec<Row>,
    now: Timestamp,
    outcomes: Option<Result<Vec<Outcome>>>,
    /// The rows go back with the answer, to be freed by the caller: every write waits on
    /// the writer thread, none on the caller's (freeing them was 12% of the writer's time).
    reply: oneshot::Sender<(Result<Vec<Outcome>>, Vec<Row>)>,
}

impl Apply {
    fn batch(&self) -> Batch<'_> {
        Batch { rows: &self.rows, now: self.now }
    }
}

impl Job for Apply {
    fn run(&mut self, tx: &Transaction<'_>, rules: &Rules) -> bool {
        let rows = self.batch().rows();
        let outcomes = catch_unwind(AssertUnwindSafe(|| apply_batch(tx, rows, rules)))
            .unwrap_or_else(|_| Err(Error::Commit("applying the events panicked; see the log".into())));
        let ok = outcomes.is_ok();
        self.outcomes = Some(outcomes);
        ok
    }

    fn answer(self: Box<Self>, committed: std::result::Result<(), &str>) {
        let Apply { rows, outcomes, reply, .. } = *self;
        let _ = reply.send((settle(committed, outcomes), rows));
    }

    fn events(&self) -> Option<Batch<'_>> {
        Some(self.batch())
    }

    fn applied(&mut self, outcomes: Vec<Outcome>) {
        self.outcomes = Some(Ok(outcomes));
    }
}

/// A write's answer: its value if it ran and the group committed, else why not.
fn settle<T>(committed: std::result::Result<(), &str>, value: Option<Result<T>>) -> Result<T> {
    match (committed, value) {
        // A failed job's own error says more than the commit of the others.
        (_, Some(Err(err))) => Err(err),
        (Ok(()), Some(value)) => value,
        (Ok(()), None) => Err(Error::Commit("the write never ran".into())),
        (Err(reason), _) => Err(Error::Commit(reason.to_owned())),
    }
}

struct Pending<T, F> {
    work: Option<F>,
    value: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T: Send, F: FnOnce(&Transaction<'_>) -> Result<T> + Send> Job for Pending<T, F> {
    fn run(&mut self, tx: &Transaction<'_>, _rules: &Rules) -> bool {
        let Some(work) = self.work.take() else { return false };
        let value = catch_unwind(AssertUnwindSafe(|| work(tx)))
            .unwrap_or_else(|_| Err(Error::Commit("the write panicked; see the log".into())));
        let ok = value.is_ok();
        self.value = Some(value);
        ok
    }

    fn answer(self: Box<Self>, committed: std::result::Result<(), &str>) {
        // The caller may have gone (a client hung up): its write stands or falls the same.
        let _ = self.reply.send(settle(committed, self.value));
    }
}

/// The sending side, cheap to clone; the thread ends when the last one is dropped.
#[derive(Clone)]
pub(super) struct GroupWriter {
    jobs: mpsc::Sender<Box<dyn Job>>,
    /// Transactions committed so far (each one fsync).
    commits: Arc<AtomicU64>,
}

impl GroupWriter {
    /// Starts the writer thread on `connection` (already migrated); event batches are
    /// applied under `rules`.
    pub(super) fn start(connection: Connection, rules: Rules) -> Result<Self> {
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        let commits = Arc::new(AtomicU64::new(0));
        let counted = commits.clone();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || write_groups(connection, queue, &counted, &rules))
            .map_err(|err| Error::Commit(format!("cannot start the writer thread: {err}")))?;
        Ok(GroupWriter { jobs, commits })
    }

    /// Transactions committed so far by this process.
    pub(super) fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Runs `work` in the next group's transaction; its value once that group is durable.
    pub(super) async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Transaction<'_>) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let (reply, answer) = oneshot::channel();
        self.send(Box::new(Pending { work: Some(work), value: None, reply })).await?;
        answer.await.map_err(|_| writer_gone())?
    }

    /// Applies an event batch received at `now` in the next group; its outcomes once durable.
    pub(super) async fn apply(&self, events: Vec<Event>, now: Timestamp) -> Result<Vec<Outcome>> {
        let (reply, answer) = oneshot::channel();
        let rows = events.into_iter().map(|event| body(&event).map(|body| (event, body))).collect::<Result<_>>()?;
        self.send(Box::new(Apply { rows, now, outcomes: None, reply })).await?;
        let (outcomes, _freed_here) = answer.await.map_err(|_| writer_gone())?;
        outcomes
    }

    async fn send(&self, job: Box<dyn Job>) -> Result<()> {
        self.jobs.send(job).await.map_err(|_| writer_gone())
    }
}

fn writer_gone() -> Error {
    Error::Commit("the writer thread stopped".into())
}

/// The thread: take every job waiting (up to [`MAX_GROUP`] jobs or [`MAX_GROUP_EVENTS`]
/// events), run them in one transaction, commit, answer them all.
fn write_groups(
    mut connection: Connection,
    mut queue: mpsc::Receiver<Box<dyn Job>>,
    commits: &AtomicU64,
    rules: &Rules,
) {
    while let Some(first) = queue.blocking_recv() {
        let weight = |job: &dyn Job| job.events().map_or(1, |batch| batch.len());
        let mut events = weight(first.as_ref());
        let mut group = vec![first];
        while group.len() < MAX_GROUP && events < MAX_GROUP_EVENTS {
            match queue.try_recv() {
                Ok(job) => {
                    events += weight(job.as_ref());
                    group.push(job);
                }
                Err(_) => break,
            }
        }
        let committed = run_group(&mut connection, &mut group, rules).map_err(|err| err.to_string());
        match &committed {
            Ok(true) => _ = commits.fetch_add(1, Ordering::Relaxed),
            Ok(false) => {}
            Err(reason) => {
                tracing::error!(error = %reason, jobs = group.len(), "the embedded store could not commit a group")
            }
        }
        for job in group {
            job.answer(committed.as_ref().map(|_| ()).map_err(String::as_str));
        }
    }
}

/// Runs the group's jobs in one transaction and commits it; false when nothing was
/// committed (a lone job that failed, rolled back). A group that is one unit of work (one
/// job, or event batches applied as one) runs without savepoints: a savepoint copies every
/// page it changes into a sub-journal, which costs about a fifth of an event's insert, and
/// rolling the whole transaction back undoes exactly what the savepoint would have.
fn run_group(connection: &mut Connection, group: &mut [Box<dyn Job>], rules: &Rules) -> rusqlite::Result<bool> {
    let merged = group.len() > 1 && group.iter().all(|job| job.events().is_some());
    if group.len() == 1 || merged {
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let ok = match &mut *group {
            [job] => job.run(&tx, rules),
            jobs => apply_merged(&tx, jobs, rules),
        };
        if ok {
            tx.commit()?;
            return Ok(true);
        }
        tx.rollback()?;
        if !merged {
            // A lone job's failure is its own answer.
            return Ok(false);
        }
    }
    run_in_savepoints(connection, group, rules, !merged)?;
    Ok(true)
}

/// The group in one transaction, every job in its own savepoint, neighbouring event
/// batches first tried as one when `merge` (false once they failed together).
fn run_in_savepoints(
    connection: &mut Connection,
    group: &mut [Box<dyn Job>],
    rules: &Rules,
    merge: bool,
) -> rusqlite::Result<()> {
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut next = 0;
    while next < group.len() {
        let batches = group[next..].iter().take_while(|job| job.events().is_some()).count();
        if merge
            && batches > 1
            && in_savepoint(&tx, "merged", |tx| apply_merged(tx, &mut group[next..next + batches], rules))?
        {
            next += batches;
            continue;
        }
        for job in &mut group[next..next + batches.max(1)] {
            in_savepoint(&tx, "job", |tx| job.run(tx, rules))?;
        }
        next += batches.max(1);
    }
    tx.commit()
}

/// Runs `work` in a savepoint named `name`, rolled back when it returns false.
fn in_savepoint(
    tx: &Transaction<'_>,
    name: &str,
    work: impl FnOnce(&Transaction<'_>) -> bool,
) -> rusqlite::Result<bool> {
    tx.prepare_cached(&format!("SAVEPOINT {name}"))?.execute([])?;
    let ok = work(tx);
    if !ok {
        tx.prepare_cached(&format!("ROLLBACK TO {name}"))?.execute([])?;
    }
    // Failing here means SQLite rolled the whole transaction back (a full disk, an I/O
    // error): every job of the group, earlier ones too, then hears that it failed.
    tx.prepare_cached(&format!("RELEASE {name}"))?.execute([])?;
    Ok(ok)
}

/// Applies neighbouring event batches as one; false (the caller undoes what it wrote) when
/// that failed.
fn apply_merged(tx: &Transaction<'_>, jobs: &mut [Box<dyn Job>], rules: &Rules) -> bool {
    let rows = jobs.iter().filter_map(|job| job.events()).flat_map(|batch| batch.rows());
    let applied = catch_unwind(AssertUnwindSafe(|| apply_batch(tx, rows, rules)));
    let Ok(Ok(outcomes)) = applied else { return false };
    let mut outcomes = outcomes.into_iter();
    for job in jobs {
        let count = job.events().map_or(0, |batch| batch.len());
        job.applied(outcomes.by_ref().take(count).collect());
    }
    true
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use rusqlite::{Connection, Transaction};

    use super::{GroupWriter, QUEUE_DEPTH};
    use crate::store::{Error, Result, Rules};

    fn open(path: &std::path::Path) -> Connection {
        let connection = Connection::open(path).expect("open");
        connection.pragma_update(None, "journal_mode", "WAL").expect("wal");
        connection.execute_batch("CREATE TABLE IF NOT EXISTS t (n INTEGER PRIMARY KEY)").expect("table");
        connection
    }

    fn rows(path: &std::path::Path) -> Vec<i64> {
        let connection = open(path);
        let mut statement = connection.prepare("SELECT n FROM t ORDER BY n").expect("select");
        statement.query_map([], |row| row.get(0)).expect("rows").collect::<rusqlite::Result<_>>().expect("rows")
    }

    type TestJob = Box<dyn FnOnce(&Transaction<'_>) -> Result<i64> + Send>;

    fn insert(tx: &Transaction<'_>, n: i64) -> Result<i64> {
        tx.execute("INSERT INTO t (n) VALUES (?1)", [n])?;
        Ok(n)
    }

    /// Holds `writer` busy in a job of its own, starts `writes` (each sends one write), lets
    /// it go once all of them wait in its queue (so that they share one group; no timing is
    /// involved), and returns their answers.
    async fn behind_a_busy_writer<T: Send + 'static>(
        writer: &GroupWriter,
        writes: Vec<futures_util::future::BoxFuture<'static, Result<T>>>,
    ) -> Vec<Result<T>> {
        let (started, running) = tokio::sync::oneshot::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let holder = writer.clone();
        let first = tokio::spawn(async move {
            holder
                .write(move |_| {
                    let _ = started.send(());
                    let _ = released.recv();
                    Ok(())
                })
                .await
        });
        running.await.expect("the first job runs");
        let count = writes.len();
        let queued: Vec<_> = writes.into_iter().map(tokio::spawn).collect();
        while writer.jobs.capacity() != QUEUE_DEPTH - count {
            tokio::task::yield_now().await;
        }
        release.send(()).expect("release");
        first.await.expect("first").expect("first job");
        let mut answers = Vec::new();
        for write in queued {
            answers.push(write.await.expect("write task"));
        }
        answers
    }

    #[tokio::test]
    async fn writes_queued_during_a_commit_share_the_next_one_and_a_failure_stays_alone() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("group.sqlite");
        let writer = Arc::new(GroupWriter::start(open(&path), Rules::default()).expect("start"));
        let jobs: Vec<TestJob> = (1..=12)
            .map(|n| -> TestJob {
                match n % 4 {
                    // Writes, then fails: its row must not survive.
                    1 => Box::new(move |tx| {
                        insert(tx, n)?;
                        Err(Error::Commit(format!("job {n} refused")))
                    }),
                    // Writes, then panics: the same.
                    2 => Box::new(move |tx| {
                        insert(tx, n)?;
                        panic!("job {n} panicked on purpose")
                    }),
                    _ => Box::new(move |tx| insert(tx, n)),
                }
            })
            .collect();
        let writes = jobs
            .into_iter()
            .map(|job| {
                let writer = writer.clone();
                Box::pin(async move { writer.write(job).await })
                    as futures_util::future::BoxFuture<'static, Result<i64>>
            })
            .collect();
        let answers = behind_a_busy_writer(&writer, writes).await;
        for (n, answer) in (1..=12).zip(&answers) {
            match n % 4 {
                1 | 2 => assert!(answer.is_err(), "job {n} should fail, got {answer:?}"),
                _ => assert_eq!(answer.as_ref().ok(), Some(&n), "job {n}"),
            }
        }
        assert_eq!(rows(&path), vec![3, 4, 7, 8, 11, 12], "failed jobs leave nothing, the rest stay");
        assert_eq!(writer.commits(), 2, "the first job's commit, then one for the twelve queued behind it");
    }

    /// A job alone in its group runs without a savepoint: when it fails or panics, rolling
    /// the transaction back must still undo all it wrote, and commit nothing.
    #[tokio::test]
    async fn a_lone_write_that_fails_leaves_nothing() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("group.sqlite");
        let writer = GroupWriter::start(open(&path), Rules::default()).expect("start");
        let failed = writer
            .write(|tx| {
                insert(tx, 1)?;
                Err::<i64, _>(Error::Commit("refused".into()))
            })
            .await;
        assert!(matches!(&failed, Err(Error::Commit(reason)) if reason == "refused"), "{failed:?}");
        let panicked = writer
            .write(|tx| -> Result<i64> {
                insert(tx, 2)?;
                panic!("a lone job panicked on purpose")
            })
            .await;
        assert!(panicked.is_err(), "{panicked:?}");
        assert_eq!(writer.commits(), 0, "nothing was committed");
        assert_eq!(writer.write(|tx| insert(tx, 3)).await.expect("the next write"), 3);
        assert_eq!(rows(&path), vec![3], "the failed jobs left nothing");
        assert_eq!(writer.commits(), 1);
    }

    #[tokio::test]
    async fn a_group_that_cannot_commit_fails_every_write_in_it() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("group.sqlite");
        let connection = open(&path);
        connection.busy_timeout(Duration::ZERO).expect("timeout");
        let writer = Arc::new(GroupWriter::start(connection, Rules::default()).expect("start"));
        // Another process holds the write lock: the group's BEGIN IMMEDIATE fails at once.
        let other = open(&path);
        other.execute_batch("BEGIN IMMEDIATE; INSERT INTO t (n) VALUES (100)").expect("other writer");
        let answers = futures_util::future::join_all((1..=3).map(|n| writer.write(move |tx| insert(tx, n)))).await;
        assert!(answers.iter().all(|answer| matches!(answer, Err(Error::Commit(_)))), "{answers:?}");
        other.execute_batch("COMMIT").expect("other commits");
        assert_eq!(writer.write(|tx| insert(tx, 4)).await.expect("next write"), 4);
        assert_eq!(rows(&path), vec![4, 100], "nothing of the failed group was stored");
    }

    fn log_line(id: &str, run: &crate::run::RunId) -> crate::event::Event {
        let event = serde_json::json!({
            "specversion": "1.0", "id": id, "source": "pod://test", "type": "ai.run.log",
            "subject": format!("run/{run}"), "time": "2026-12-01T10:00:00Z", "data": {"message": id},
        });
        crate::event::from_test_json(event, crate::time::Timestamp::now())
    }

    /// Applies `batches` concurrently behind a busy writer, so that they share one group.
    async fn apply_behind_a_busy_writer(
        store: &crate::store::sqlite::SqliteStore,
        batches: Vec<Vec<crate::event::Event>>,
    ) -> Vec<Result<Vec<crate::store::Outcome>>> {
        use crate::store::Store;
        let writes = batches
            .into_iter()
            .map(|events| {
                let store = store.clone();
                Box::pin(async move { store.apply_events(events, crate::time::Timestamp::now()).await })
                    as futures_util::future::BoxFuture<'static, _>
            })
            .collect();
        behind_a_busy_writer(&store.inner.writer, writes).await
    }

    #[tokio::test]
    async fn neighbouring_event_batches_are_applied_as_one_and_a_failing_one_fails_alone() {
        use crate::store::sqlite::SqliteStore;
        use crate::store::{EventFilter, Outcome, Store};
        use crate::time::Timestamp;

        let dir = tempfile::tempdir().expect("dir");
        let store = SqliteStore::open(&dir.path().join("store.sqlite")).await.expect("open");
        let new_run = || crate::run::NewRun::new(serde_json::json!({}));
        let good = store.enqueue(new_run(), Timestamp::now()).await.expect("enqueue").id;
        let broken = store.enqueue(new_run(), Timestamp::now()).await.expect("enqueue").id;
        let rev = |store: &SqliteStore| {
            let (store, good) = (store.clone(), good.clone());
            async move { store.get(&good).await.expect("get").expect("run").rev }
        };

        // Three requests' batches for one run: its document is written once for all three.
        let before = rev(&store).await;
        let batches = vec![
            vec![log_line("a1", &good), log_line("a2", &good)],
            vec![log_line("a3", &good)],
            vec![log_line("a4", &good)],
        ];
        let answers = apply_behind_a_busy_writer(&store, batches).await;
        assert!(answers.iter().all(|answer| answer.as_ref().is_ok_and(|o| o.iter().all(|o| *o == Outcome::Applied))));
        assert_eq!(rev(&store).await, before + 1, "one write of the run for the merged batches");

        // One batch fails (its run's document is unreadable): the others still apply.
        let id = broken.to_string();
        store
            .write(move |tx| Ok(tx.execute("UPDATE runs SET doc = 'not a run' WHERE id = ?1", [id])?))
            .await
            .expect("break a run document");
        let commits = store.commits();
        let batches = vec![vec![log_line("b1", &good)], vec![log_line("x1", &broken)], vec![log_line("b2", &good)]];
        let answers = apply_behind_a_busy_writer(&store, batches).await;
        assert_eq!(answers[0].as_ref().ok(), Some(&vec![Outcome::Applied]));
        assert!(matches!(answers[1], Err(Error::Corrupt { .. })), "{:?}", answers[1]);
        assert_eq!(answers[2].as_ref().ok(), Some(&vec![Outcome::Applied]));
        assert_eq!(store.commits() - commits, 2, "the holder's commit, then one for the three batches");
        let stored = store.list_events(&good, &EventFilter::default()).await.expect("events");
        let ids: Vec<_> = stored.items.iter().map(|stored| stored.event.id.0.as_str()).collect();
        assert_eq!(ids, ["a1", "a2", "a3", "a4", "b1", "b2"]);
        let broken_events = store.list_events(&broken, &EventFilter::default()).await.expect("events");
        assert!(broken_events.items.is_empty(), "the failed batch left nothing");
    }
}
