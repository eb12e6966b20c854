//! Group commit: the embedded store's one writer thread.
//!
//! Every write (an event batch, a claim, a run change) is a job sent to this thread. Jobs
//! that arrive while a commit is in flight wait for it and then share the next transaction:
//! one `BEGIN IMMEDIATE`, each job in its own savepoint, one commit, one fsync. A job is
//! answered only after the commit that holds it is durable, so "202 means durable" holds
//! for every request in a group; a job that fails is rolled back to its savepoint alone and
//! never fails its neighbours. Jobs run one after another on one connection, so each sees
//! the writes of the jobs before it (two claims in one group never take the same run).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rusqlite::{Connection, Transaction, TransactionBehavior};
use tokio::sync::{mpsc, oneshot};

use crate::store::{Error, Result};

/// Jobs sharing one commit at most: bounds how long one transaction holds the file's write
/// lock (other processes on the same file wait for it) and how much one failed commit fails.
const MAX_GROUP: usize = 256;

/// Jobs waiting for the writer at most; senders beyond it wait (backpressure on ingest).
const QUEUE_DEPTH: usize = 4096;

/// One write waiting for, or running in, a group.
trait Job: Send {
    /// Runs the work in the group's transaction; false when it failed (and is rolled back).
    fn run(&mut self, tx: &Transaction<'_>) -> bool;
    /// Answers the caller once the group's fate is known.
    fn answer(self: Box<Self>, committed: std::result::Result<(), &str>);
}

struct Pending<T, F> {
    work: Option<F>,
    value: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T: Send, F: FnOnce(&Transaction<'_>) -> Result<T> + Send> Job for Pending<T, F> {
    fn run(&mut self, tx: &Transaction<'_>) -> bool {
        let Some(work) = self.work.take() else { return false };
        let value = catch_unwind(AssertUnwindSafe(|| work(tx)))
            .unwrap_or_else(|_| Err(Error::Commit("the write panicked; see the log".into())));
        let ok = value.is_ok();
        self.value = Some(value);
        ok
    }

    fn answer(self: Box<Self>, committed: std::result::Result<(), &str>) {
        let answer = match (committed, self.value) {
            // A failed job's own error says more than the commit of the others.
            (_, Some(Err(err))) => Err(err),
            (Ok(()), Some(value)) => value,
            (Ok(()), None) => Err(Error::Commit("the write never ran".into())),
            (Err(reason), _) => Err(Error::Commit(reason.to_owned())),
        };
        // The caller may have gone (a client hung up): its write stands or falls the same.
        let _ = self.reply.send(answer);
    }
}

/// The sending side, cheap to clone; the thread ends when the last one is dropped.
pub(super) struct GroupWriter {
    jobs: mpsc::Sender<Box<dyn Job>>,
    /// Transactions committed so far (each one fsync).
    commits: Arc<AtomicU64>,
}

impl GroupWriter {
    /// Starts the writer thread on `connection` (already migrated).
    pub(super) fn start(connection: Connection) -> Result<Self> {
        let (jobs, queue) = mpsc::channel(QUEUE_DEPTH);
        let commits = Arc::new(AtomicU64::new(0));
        let counted = commits.clone();
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || write_groups(connection, queue, &counted))
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
        let job = Box::new(Pending { work: Some(work), value: None, reply });
        self.jobs.send(job).await.map_err(|_| writer_gone())?;
        answer.await.map_err(|_| writer_gone())?
    }
}

fn writer_gone() -> Error {
    Error::Commit("the writer thread stopped".into())
}

/// The thread: take every job waiting (up to [`MAX_GROUP`]), run them in one transaction,
/// commit, answer them all.
fn write_groups(mut connection: Connection, mut queue: mpsc::Receiver<Box<dyn Job>>, commits: &AtomicU64) {
    while let Some(first) = queue.blocking_recv() {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match queue.try_recv() {
                Ok(job) => group.push(job),
                Err(_) => break,
            }
        }
        let committed = run_group(&mut connection, &mut group).map_err(|err| err.to_string());
        match &committed {
            Ok(()) => _ = commits.fetch_add(1, Ordering::Relaxed),
            Err(reason) => {
                tracing::error!(error = %reason, jobs = group.len(), "the embedded store could not commit a group")
            }
        }
        for job in group {
            job.answer(committed.as_ref().map(|_| ()).map_err(String::as_str));
        }
    }
}

/// Runs the group's jobs in one transaction, each in a savepoint, and commits it.
fn run_group(connection: &mut Connection, group: &mut [Box<dyn Job>]) -> rusqlite::Result<()> {
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for job in group.iter_mut() {
        tx.execute_batch("SAVEPOINT job")?;
        let end = if job.run(&tx) { "RELEASE job" } else { "ROLLBACK TO job; RELEASE job" };
        // Failing here means SQLite rolled the whole transaction back (a full disk, an I/O
        // error): every job of the group, earlier ones too, then hears that it failed.
        tx.execute_batch(end)?;
    }
    tx.commit()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use rusqlite::{Connection, Transaction};

    use super::{GroupWriter, QUEUE_DEPTH};
    use crate::store::{Error, Result};

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

    /// Holds the writer busy in a first job until released, queues `jobs` behind it (so they
    /// all wait for one group), then releases it and returns the queued jobs' answers.
    async fn behind_a_busy_writer(writer: &Arc<GroupWriter>, jobs: Vec<TestJob>) -> Vec<Result<i64>> {
        let (started, running) = tokio::sync::oneshot::channel();
        let (release, released) = std::sync::mpsc::channel::<()>();
        let first = writer.clone();
        let first = tokio::spawn(async move {
            first
                .write(move |tx| {
                    let _ = started.send(());
                    released.recv().expect("released");
                    insert(tx, 0)
                })
                .await
        });
        running.await.expect("the first job runs");
        let count = jobs.len();
        let queued: Vec<_> = jobs
            .into_iter()
            .map(|job| {
                let writer = writer.clone();
                tokio::spawn(async move { writer.write(job).await })
            })
            .collect();
        // Every job is in the channel before the writer is let go (no timing involved).
        while writer.jobs.capacity() != QUEUE_DEPTH - count {
            tokio::task::yield_now().await;
        }
        release.send(()).expect("release");
        assert_eq!(first.await.expect("first").expect("first job"), 0);
        let mut answers = Vec::new();
        for job in queued {
            answers.push(job.await.expect("job task"));
        }
        answers
    }

    #[tokio::test]
    async fn writes_queued_during_a_commit_share_the_next_one_and_a_failure_stays_alone() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("group.sqlite");
        let writer = Arc::new(GroupWriter::start(open(&path)).expect("start"));
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
        let answers = behind_a_busy_writer(&writer, jobs).await;
        for (n, answer) in (1..=12).zip(&answers) {
            match n % 4 {
                1 | 2 => assert!(answer.is_err(), "job {n} should fail, got {answer:?}"),
                _ => assert_eq!(answer.as_ref().ok(), Some(&n), "job {n}"),
            }
        }
        assert_eq!(rows(&path), vec![0, 3, 4, 7, 8, 11, 12], "failed jobs leave nothing, the rest stay");
        assert_eq!(writer.commits(), 2, "the first job's commit, then one for the twelve queued behind it");
    }

    #[tokio::test]
    async fn a_group_that_cannot_commit_fails_every_write_in_it() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("group.sqlite");
        let connection = open(&path);
        connection.busy_timeout(Duration::ZERO).expect("timeout");
        let writer = Arc::new(GroupWriter::start(connection).expect("start"));
        // Another process holds the write lock: the group's BEGIN IMMEDIATE fails at once.
        let other = open(&path);
        other.execute_batch("BEGIN IMMEDIATE; INSERT INTO t (n) VALUES (100)").expect("other writer");
        let answers = futures_util::future::join_all((1..=3).map(|n| writer.write(move |tx| insert(tx, n)))).await;
        assert!(answers.iter().all(|answer| matches!(answer, Err(Error::Commit(_)))), "{answers:?}");
        other.execute_batch("COMMIT").expect("other commits");
        assert_eq!(writer.write(|tx| insert(tx, 4)).await.expect("next write"), 4);
        assert_eq!(rows(&path), vec![4, 100], "nothing of the failed group was stored");
    }
}
