//! Our own accept loop around hyper, for what `axum::serve` does not bound: how long a
//! client may take to send a request head, how long a kept-alive connection may sit idle,
//! and how many connections are open at once. Without these, a thousand clients that
//! connect and send nothing hold a thousand descriptors forever, `accept` fails with
//! EMFILE and `/health` stops answering.
//!
//! Each connection is watched by [`Activity`]: while no request is in progress, the
//! connection must start one within `idle_timeout` (the first within `header_timeout`), and
//! once a request's first byte arrived its whole head within `header_timeout`; otherwise it
//! is closed. While a request is in progress, an answer the client takes none of for
//! `idle_timeout` (the socket stays full: a download or a live tail nobody reads) closes
//! the connection too, so a stalled reader cannot hold one of the connections for ever; a
//! slow reader that keeps taking bytes keeps it as long as its answer lasts.
//! hyper's own `header_read_timeout` is not used: it also runs while a kept-alive
//! connection waits for its next request, so it could not give idle connections more time
//! than a head takes to arrive.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes, HttpBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;

/// How long a connection may take over each part of its life, and how many may be open.
#[derive(Debug, Clone)]
pub struct Limits {
    /// From a connection's start, or the first byte of a request, to the end of its head.
    pub header_timeout: Duration,
    /// How long a kept-alive connection may wait for its next request, and how long a client
    /// may take none of an answer.
    pub idle_timeout: Duration,
    /// How long a handler may take to answer (live tails are exempt): then 408.
    pub request_timeout: Duration,
    /// Connections open at once; one more is answered 503 and closed.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            request_timeout: super::REQUEST_TIMEOUT,
            max_connections: 1024,
        }
    }
}

/// Connections over the cap that get a 503 before they are closed; beyond that many at once
/// they are closed without one. Each holds a descriptor for at most [`REFUSAL_TIME`].
pub const REFUSAL_SLOTS: usize = 32;

/// The longest a refused connection is kept to deliver its 503.
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// Most bytes read (and dropped) from a refused client, so that closing does not reset the
/// connection before it has read the answer.
const REFUSAL_DRAIN_BYTES: usize = 64 * 1024;

/// First pause after `accept` fails for lack of resources (EMFILE, ENFILE, ENOBUFS); it
/// doubles up to [`MAX_ACCEPT_BACKOFF`] while the failures go on.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// For this long after `accept` ran out of resources, connections over the cap are closed
/// at once rather than answered: an answer holds a descriptor for up to [`REFUSAL_TIME`],
/// which would slow the draining of the backlog to a few connections a second.
const SHED_AFTER_ACCEPT_ERROR: Duration = Duration::from_secs(2);

/// Serves `app` on `listener` until `shutdown` completes; then stops accepting, sets
/// `stopping` (live tails end), lets every connection finish its requests in flight, and
/// returns once all are closed.
pub(super) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    stopping: Arc<watch::Sender<bool>>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let max_connections = limits.max_connections.clamp(1, Semaphore::MAX_PERMITS.min(u32::MAX as usize));
    let connections = Arc::new(Semaphore::new(max_connections));
    let refusals = Arc::new(Semaphore::new(REFUSAL_SLOTS));
    let limits = Arc::new(limits);
    let mut backoff = ACCEPT_BACKOFF;
    let mut refused = RefusalLog::default();
    let mut short_of_resources_at: Option<Instant> = None;
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            // Cancel-safe: a connection is either returned or left in the backlog.
            accepted = listener.accept() => accepted,
            // Dropping the other branch loses nothing: no connection was taken yet.
            () = &mut shutdown => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => {
                backoff = ACCEPT_BACKOFF;
                stream
            }
            // The client gave up between connecting and our accept: nothing to wait for.
            Err(err) if is_connection_error(&err) => continue,
            Err(err) => {
                // Out of descriptors or memory: retrying at once would spin on the same
                // error; a pause lets connections close. The backlog keeps waiting clients.
                tracing::warn!(error = %err, pause = ?backoff, "accept failed; pausing before the next one");
                short_of_resources_at = Some(Instant::now());
                tokio::select! {
                    () = tokio::time::sleep(backoff) => {}
                    // Stopping mid-pause is fine: there is nothing half-done.
                    () = &mut shutdown => break,
                }
                backoff = (backoff * 2).min(MAX_ACCEPT_BACKOFF);
                continue;
            }
        };
        // Small answers (an acknowledgement) must not wait for Nagle's algorithm.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::warn!(error = %err, "could not set TCP_NODELAY");
        }
        match connections.clone().try_acquire_owned() {
            Ok(permit) => {
                let connection = connection(stream, app.clone(), limits.clone(), stopping.subscribe());
                tokio::spawn(async move {
                    connection.await;
                    drop(permit);
                });
            }
            Err(_) => {
                refused.note(max_connections);
                let shedding = short_of_resources_at.is_some_and(|at| at.elapsed() < SHED_AFTER_ACCEPT_ERROR);
                if !shedding {
                    refuse(stream, &refusals, max_connections);
                }
            }
        }
    }
    stopping.send_replace(true);
    drop(listener);
    // Every connection task holds a permit until its connection is closed.
    let _all_closed = connections.acquire_many(max_connections as u32).await;
    Ok(())
}

/// An `accept` error about one connection (not about the server), safe to skip at once.
fn is_connection_error(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

/// Serves one connection until the client closes it, it breaks the [`Limits`], or the
/// server stops (then in-flight requests finish first).
async fn connection(stream: TcpStream, app: Router, limits: Arc<Limits>, mut stopping: watch::Receiver<bool>) {
    let activity = Arc::new(Activity::new());
    let io = TokioIo::new(Watched { inner: stream, activity: activity.clone() });
    let requests = activity.clone();
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let open = Open::begin(requests.clone());
        let answer = tower::Service::call(&mut app.clone(), request.map(Body::new));
        async move {
            let response = answer.await?;
            // The request counts as open until its whole answer was written (or the
            // connection dropped it): the body carries `open` along.
            Ok::<_, Infallible>(response.map(|body| Body::new(Tracked { body, _open: open })))
        }
    });
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            finished = conn.as_mut() => {
                if let Err(err) = finished {
                    tracing::debug!(error = %err, "connection ended with an error");
                }
                return;
            }
            // Cancel-safe: waiting on a watch loses no value; the flag is read again.
            _ = stopping.wait_for(|stopping| *stopping), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            // Recomputed from shared state on every turn, so dropping it loses nothing. When it
            // completes either no request is in progress (dropping `conn` closes the socket
            // and abandons at most a head that was never finished), or the client took
            // nothing of an answer for the idle timeout: it is cut off.
            () = activity.expired(&limits) => {
                tracing::debug!("closing a connection that was idle or slow to send its request");
                return;
            }
        }
    }
}

/// Refusals are logged at most once per [`REFUSAL_LOG_EVERY`], with their count: a flood of
/// clients must not become a flood of log lines.
#[derive(Default)]
struct RefusalLog {
    unlogged: u64,
    logged_at: Option<Instant>,
}

const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(10);

impl RefusalLog {
    fn note(&mut self, max_connections: usize) {
        self.unlogged += 1;
        if self.logged_at.is_some_and(|at| at.elapsed() < REFUSAL_LOG_EVERY) {
            return;
        }
        tracing::warn!(
            max_connections,
            refused = self.unlogged,
            "refused connections: the server is at its --max-connections limit (idle clients are closed \
             after --idle-timeout; raise the limit if this goes on)"
        );
        self.unlogged = 0;
        self.logged_at = Some(Instant::now());
    }
}

/// Answers a connection over the cap with a 503 (while fewer than [`REFUSAL_SLOTS`] are
/// being answered), then closes it; never waits for a slot. (Dropping the stream instead
/// closes it at once: the client sees the connection closed, still an answer, not a hang.)
fn refuse(stream: TcpStream, slots: &Arc<Semaphore>, max_connections: usize) {
    let Ok(slot) = slots.clone().try_acquire_owned() else { return };
    tokio::spawn(async move {
        let _ = tokio::time::timeout(REFUSAL_TIME, answer_busy(stream, max_connections)).await;
        drop(slot);
    });
}

async fn answer_busy(mut stream: TcpStream, max_connections: usize) -> io::Result<()> {
    let body = serde_json::json!({
        "error": format!(
            "the server has {max_connections} connections open, its --max-connections limit: \
             retry in a moment, or raise the limit (and the open-file limit) of `scientist serve`"
        )
    })
    .to_string();
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         retry-after: 1\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(format!("{head}{body}").as_bytes()).await?;
    stream.shutdown().await?;
    let mut sink = [0u8; 4096];
    let mut left = REFUSAL_DRAIN_BYTES;
    while left > 0 {
        match stream.read(&mut sink).await? {
            0 => break,
            read => left = left.saturating_sub(read),
        }
    }
    Ok(())
}

/// What one connection is doing, as far as its timeouts care.
struct Activity {
    phase: Mutex<Phase>,
    /// Woken when a request ends or bytes arrive on an idle connection.
    changed: Notify,
}

struct Phase {
    /// Requests whose answer is not fully written yet.
    open: usize,
    /// Whether any request was received (the first gets `header_timeout` from the start).
    served: bool,
    /// When the connection last had no request in progress (or was accepted).
    idle_since: Instant,
    /// When the first byte after `idle_since` arrived: a request head is on its way.
    arriving_since: Option<Instant>,
    /// Since when the socket has refused what we write (the client reads nothing).
    write_blocked_since: Option<Instant>,
}

impl Activity {
    fn new() -> Self {
        let phase = Phase {
            open: 0,
            served: false,
            idle_since: Instant::now(),
            arriving_since: None,
            write_blocked_since: None,
        };
        Activity { phase: Mutex::new(phase), changed: Notify::new() }
    }

    fn phase(&self) -> MutexGuard<'_, Phase> {
        // The state is a few plain fields: a panic elsewhere cannot leave it half-written.
        self.phase.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn read_some(&self) {
        let mut phase = self.phase();
        if phase.open == 0 && phase.arriving_since.is_none() {
            phase.arriving_since = Some(Instant::now());
            drop(phase);
            self.changed.notify_one();
        }
    }

    /// A write returned `Pending` (`true`) or went through (`false`).
    fn write_blocked(&self, blocked: bool) {
        let mut phase = self.phase();
        match (blocked, phase.write_blocked_since) {
            (true, None) => {
                phase.write_blocked_since = Some(Instant::now());
                drop(phase);
                self.changed.notify_one();
            }
            (false, Some(_)) => phase.write_blocked_since = None,
            _ => {}
        }
    }

    /// When the connection must be closed if nothing changes. While a request is in
    /// progress: `None` (its handler has the request timeout) unless the client has taken
    /// none of what we write for `idle_timeout`.
    fn deadline(&self, limits: &Limits) -> Option<Instant> {
        let phase = self.phase();
        if phase.open > 0 {
            return phase.write_blocked_since.map(|since| since + limits.idle_timeout);
        }
        Some(match phase.arriving_since {
            Some(first_byte) => first_byte + limits.header_timeout,
            None if !phase.served => phase.idle_since + limits.header_timeout,
            None => phase.idle_since + limits.idle_timeout,
        })
    }

    /// Completes once the connection broke a limit.
    async fn expired(&self, limits: &Limits) {
        loop {
            match self.deadline(limits) {
                None => self.changed.notified().await,
                Some(deadline) if deadline <= Instant::now() => return,
                Some(deadline) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(deadline) => {}
                        // Either way the deadline is computed again from the state.
                        () = self.changed.notified() => {}
                    }
                }
            }
        }
    }
}

/// One request in progress on a connection; dropped when its answer is written.
struct Open(Arc<Activity>);

impl Open {
    fn begin(activity: Arc<Activity>) -> Open {
        {
            let mut phase = activity.phase();
            phase.open += 1;
            phase.served = true;
            phase.arriving_since = None;
        }
        Open(activity)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        {
            let mut phase = self.0.phase();
            phase.open = phase.open.saturating_sub(1);
            if phase.open == 0 {
                phase.idle_since = Instant::now();
                phase.arriving_since = None;
            }
        }
        self.0.changed.notify_one();
    }
}

/// A response body that keeps its request counted as open until it is dropped.
struct Tracked {
    body: Body,
    _open: Open,
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The socket, noting when bytes arrive on an idle connection.
struct Watched {
    inner: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.read_some();
        }
        polled
    }
}

impl Watched {
    /// Notes whether the socket took the write, for the stalled-reader limit.
    fn note_write<T>(&self, polled: Poll<T>) -> Poll<T> {
        self.activity.write_blocked(polled.is_pending());
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.note_write(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.note_write(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
