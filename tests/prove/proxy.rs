//! A fault-injecting TCP proxy (loopback only) between a real worker and `serve`. Each
//! ingest request through it is, at random, passed on untouched, delayed, cut off partway
//! through its body (both sockets reset: nothing can be committed), or passed on whole with
//! `serve`'s answer read and thrown away (committed, but the worker never hears so and must
//! send again, to be answered `duplicate`). The run must still complete with every line
//! stored exactly once.
//!
//! Faults are chosen per request, which needs the proxy to find where HTTP/1.1 requests and
//! answers end on a keep-alive connection (Content-Length, or chunked answers). The queue's
//! requests (claim, claim check) are only delayed: a claim whose answer is lost leaves the run
//! held by a worker that never heard it got it, which only the lease resolves.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use scientist::run::{NewRun, RunStatus};
use scientist::time::Timestamp;
use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{self, Serve, StoreSpec, random_below};
use crate::{Mode, Report};

const PREFIX: &str = "proxy line";
/// Lines a second from the stage.
const RATE: u64 = 200;
/// The most a delayed request waits.
const MAX_LATENCY_MS: u64 = 200;

pub async fn run(mode: Mode, report: &mut Report) {
    let dir = tempfile::tempdir().expect("temp dir");
    for store in support::both_stores(dir.path()) {
        let lines = match (mode, store.kind()) {
            (Mode::Quick, "sqlite") => 3_000,
            (Mode::Quick, _) => 500,
            (Mode::Long, "sqlite") => 40_000,
            // The test MongoDB server is slow to store and page events.
            (Mode::Long, _) => 10_000,
        };
        let pod = dir.path().join(format!("pod-{}", store.kind()));
        std::fs::create_dir_all(&pod).expect("the pod's directory");
        scenario(&store, &pod, lines, report).await;
        store.cleanup().await;
    }
}

async fn scenario(spec: &StoreSpec, pod: &Path, lines: u64, report: &mut Report) {
    let kind = spec.kind();
    let name = |figure: &str| format!("proxy {kind}: {figure}");
    let mut serve = Serve::start(spec, &[]).await;
    let proxy = Proxy::start(serve.port).await;
    let store = spec.open().await;
    let run = store.enqueue(NewRun::new(json!({"title": "proxy"})), Timestamp::now()).await.expect("enqueue").id;
    // A delivery every 50 lines (4 a second) while the stage goes, each with its chance of a fault.
    let config = support::lines_pipeline(pod, PREFIX, lines, RATE, 250);
    let mut worker = support::worker(pod, &config)
        .args(["--once", "--server", &proxy.url()])
        // Fewer claim checks: the requests that matter here are the events'.
        .env("SCIENTIST_CANCEL_POLL", "1s")
        .spawn()
        .expect("start the worker");
    let within = Duration::from_secs(120 + 2 * lines / RATE);
    let exited = tokio::time::timeout(within, worker.wait()).await;
    let worker_ok = matches!(exited, Ok(Ok(status)) if status.success());
    drop(proxy.task);
    serve.kill().await;

    let stored = store.get(&run).await.expect("get").expect("the run");
    if !worker_ok || stored.status != RunStatus::Completed {
        eprintln!("proxy {kind}: the worker's log:\n{}", support::worker_log(pod));
    }
    let events = support::all_events(store.as_ref(), &run).await;
    let numbers = support::line_numbers(&events, PREFIX);
    let distinct: std::collections::BTreeSet<u64> = numbers.iter().copied().collect();
    let mut ids = std::collections::HashSet::new();
    let doubled_ids = events.iter().filter(|event| !ids.insert((event.source.clone(), event.id.clone()))).count();
    let dir = support::run_dir(pod, &run).await;
    let emitted: u64 =
        std::fs::read_to_string(dir.join("emitted")).ok().and_then(|t| t.trim().parse().ok()).unwrap_or(0);
    let progress = events.iter().filter(|event| event.event_type == "ai.run.stage_progress").count() as u64;
    let faults = &proxy.faults;
    let count = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
    report.figure(&name("requests through the proxy"), count(&faults.requests));
    report.figure(&name("of which event deliveries"), count(&faults.ingest));
    report.figure(&name("delayed (up to 200 ms)"), count(&faults.delayed));
    report.figure(&name("reset mid-body"), count(&faults.reset));
    report.figure(&name("answer dropped after commit"), count(&faults.dropped));
    report.figure(&name("events answered duplicate"), count(&faults.duplicates));
    report.figure(&name("events stored"), events.len());
    report.figure(&name("lines printed over"), format!("{:.1} s", support::lines_span(&events, PREFIX)));
    report.zero(&name("lines lost"), (0..lines).filter(|number| !distinct.contains(number)).count() as u64);
    report.zero(&name("progress events lost"), emitted.saturating_sub(progress));
    report.zero(&name("lines stored twice"), (numbers.len() - distinct.len()) as u64);
    report.zero(&name("events stored twice"), doubled_ids as u64);
    report.promise(&name("run COMPLETED"), stored.status, stored.status == RunStatus::Completed);
    report.promise(&name("worker exited 0"), worker_ok, worker_ok);
}

/// What the proxy did.
#[derive(Default)]
struct Faults {
    requests: AtomicU64,
    ingest: AtomicU64,
    delayed: AtomicU64,
    reset: AtomicU64,
    dropped: AtomicU64,
    /// Events `serve` answered as already stored (resent after a dropped answer).
    duplicates: AtomicU64,
}

/// What is done to one request.
#[derive(Debug, Clone, Copy)]
enum Fault {
    Clean,
    Delay(Duration),
    /// Part of the body is sent, then both connections are reset.
    ResetMidBody,
    /// `serve` answers; the answer is read and the client's connection reset instead.
    DropAnswer,
}

impl Fault {
    fn pick(ingest: bool) -> Fault {
        let delay = || Fault::Delay(Duration::from_millis(random_below(MAX_LATENCY_MS + 1)));
        match random_below(100) {
            _ if !ingest => delay(),
            0..20 => Fault::ResetMidBody,
            20..40 => Fault::DropAnswer,
            40..70 => delay(),
            _ => Fault::Clean,
        }
    }
}

struct Proxy {
    port: u16,
    faults: Arc<Faults>,
    /// Accepts connections; aborting it (dropping it) drops every connection's task with it.
    task: AbortOnDrop,
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Proxy {
    async fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the proxy on loopback");
        let port = listener.local_addr().expect("the proxy's address").port();
        let faults = Arc::new(Faults::default());
        let shared = faults.clone();
        let task = tokio::spawn(async move {
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((client, _)) = accepted else { continue };
                        connections.spawn(forward(client, upstream, shared.clone()));
                    }
                    // Reaps finished connections so the set does not grow.
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        Proxy { port, faults, task: AbortOnDrop(task) }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// One client connection, request by request, to its own connection to `serve`. Returns
/// when either side closes or a fault ends the connection.
async fn forward(client: TcpStream, upstream: u16, faults: Arc<Faults>) {
    let Ok(server) = TcpStream::connect(("127.0.0.1", upstream)).await else { return };
    let _ = (client.set_nodelay(true), server.set_nodelay(true));
    let (client_read, mut client_write) = client.into_split();
    let (server_read, mut server_write) = server.into_split();
    let (mut client_read, mut server_read) = (BufReader::new(client_read), BufReader::new(server_read));
    loop {
        let Ok(Some(request)) = read_message(&mut client_read, true).await else { return };
        faults.requests.fetch_add(1, Ordering::Relaxed);
        let ingest = request.head.starts_with(b"POST /api/ingest/");
        faults.ingest.fetch_add(u64::from(ingest), Ordering::Relaxed);
        let fault = match Fault::pick(ingest) {
            // Without a body there is nothing to hold back: the request would be whole.
            Fault::ResetMidBody if request.body.is_empty() => Fault::Clean,
            fault => fault,
        };
        match fault {
            Fault::Clean | Fault::DropAnswer => {}
            Fault::Delay(delay) => {
                faults.delayed.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(delay).await;
            }
            Fault::ResetMidBody => {
                faults.reset.fetch_add(1, Ordering::Relaxed);
                // At least one byte of the body is held back, so `serve` cannot take it whole.
                let cut = random_below(request.body.len() as u64) as usize;
                let _ = server_write.write_all(&request.head).await;
                let _ = server_write.write_all(&request.body[..cut]).await;
                let _ = server_write.flush().await;
                reset(client_read, client_write);
                reset(server_read, server_write);
                return;
            }
        }
        if server_write.write_all(&request.head).await.is_err() || server_write.write_all(&request.body).await.is_err()
        {
            return;
        }
        let Ok(Some(answer)) = read_message(&mut server_read, false).await else { return };
        if ingest {
            let body: Value = serde_json::from_slice(&answer.body).unwrap_or(Value::Null);
            let duplicates = body["duplicate"].as_u64().unwrap_or(u64::from(body["outcome"] == "duplicate"));
            faults.duplicates.fetch_add(duplicates, Ordering::Relaxed);
        }
        if let Fault::DropAnswer = fault {
            faults.dropped.fetch_add(1, Ordering::Relaxed);
            reset(client_read, client_write);
            return;
        }
        if client_write.write_all(&answer.head).await.is_err() || client_write.write_all(&answer.body).await.is_err() {
            return;
        }
    }
}

/// Closes a connection with a reset (SO_LINGER 0) instead of an orderly end.
fn reset(read: BufReader<tokio::net::tcp::OwnedReadHalf>, write: tokio::net::tcp::OwnedWriteHalf) {
    let read = read.into_inner();
    let _ = read.as_ref().set_zero_linger();
    // Forgotten, the write half sends no FIN; the socket closes (with RST) with the read half.
    write.forget();
    drop(read);
}

/// One HTTP/1.1 message as it came: the head up to its blank line, and the body.
struct Message {
    head: Vec<u8>,
    body: Vec<u8>,
}

/// Reads the next request (or answer) off a connection; `None` when it closed first.
async fn read_message(reader: &mut (impl AsyncBufRead + Unpin), request: bool) -> std::io::Result<Option<Message>> {
    let mut head = Vec::new();
    loop {
        let before = head.len();
        if reader.read_until(b'\n', &mut head).await? == 0 {
            return if head.is_empty() { Ok(None) } else { Err(std::io::ErrorKind::UnexpectedEof.into()) };
        }
        if &head[before..] == b"\r\n" {
            break;
        }
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let header = |name: &str| {
        text.lines().find_map(|line| line.strip_prefix(name).and_then(|rest| rest.strip_prefix(':'))).map(str::trim)
    };
    let status = text.split_whitespace().nth(1).and_then(|code| code.parse::<u16>().ok()).unwrap_or(0);
    let mut body = Vec::new();
    if let Some(length) = header("content-length") {
        let length: usize = length.parse().map_err(|_| std::io::Error::other("a bad content-length"))?;
        body.resize(length, 0);
        reader.read_exact(&mut body).await?;
    } else if header("transfer-encoding").is_some_and(|coding| coding.contains("chunked")) {
        read_chunked(reader, &mut body).await?;
    } else if !request && status != 204 && status != 304 && status >= 200 {
        // An answer of no stated length ends with the connection.
        reader.read_to_end(&mut body).await?;
    }
    Ok(Some(Message { head, body }))
}

/// A chunked body, kept as it came (sizes, chunks, trailers).
async fn read_chunked(reader: &mut (impl AsyncBufRead + Unpin), body: &mut Vec<u8>) -> std::io::Result<()> {
    loop {
        let start = body.len();
        reader.read_until(b'\n', body).await?;
        let line = String::from_utf8_lossy(&body[start..]).into_owned();
        let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| std::io::Error::other("a bad chunk size"))?;
        if size == 0 {
            // Trailers, then the blank line.
            loop {
                let start = body.len();
                if reader.read_until(b'\n', body).await? == 0 || &body[start..] == b"\r\n" {
                    return Ok(());
                }
            }
        }
        let start = body.len();
        body.resize(start + size + 2, 0);
        reader.read_exact(&mut body[start..]).await?;
    }
}
