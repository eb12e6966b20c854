//! Trace export end to end, on real sockets and both stores: a worker on a store (the built
//! binary, given `--otlp-endpoint`) runs a two-stage pipeline whose stages record the
//! `TRACEPARENT` they were given; `scientist serve` on the same store sends the attempt's
//! span and its stages' to a local OTLP/HTTP receiver, which decodes the protobuf. The
//! receiver refuses the first export with a 400, which the exporter does not retry itself: the
//! outbox tries it again later, then records it as delivered. A receiver that never answers
//! its first export is timed out and tried again, and a secret in a failure never reaches it.

#[path = "common/pod.rs"]
mod pod;
#[path = "common/serve_process.rs"]
#[allow(dead_code)] // `url`: this test talks to the collector, not to serve
mod serve_process;
#[path = "common/stores.rs"]
mod stores;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use opentelemetry_proto::tonic::trace::v1::status::StatusCode as SpanStatus;
use pod::{Pod, StoreKind, finish, poll_until};
use prost::Message;
use scientist::run::{RunStatus, SpanId};
use serve_process::ServeProcess;
use tokio::sync::mpsc;

/// A stage that records the `TRACEPARENT` it was given in the run directory.
const STAGE: &str = r#"printf '%s' "$TRACEPARENT" > "$SCIENTIST_RUN_DIR/traceparent_$SCIENTIST_STAGE""#;

/// How the receiver answers the first export.
#[derive(Clone, Copy)]
enum First {
    /// 400: not retryable in OTLP, so only the outbox tries again.
    Refused,
    /// Never: the request is read and then left hanging, as by a wedged collector.
    Unanswered,
}

/// An OTLP/HTTP receiver on 127.0.0.1: the first export is answered as `First` says, the
/// others 200 and handed to the test, decoded.
struct Receiver {
    addr: SocketAddr,
    exports: mpsc::UnboundedReceiver<ExportTraceServiceRequest>,
    requests: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct Collector {
    exports: mpsc::UnboundedSender<ExportTraceServiceRequest>,
    requests: Arc<AtomicUsize>,
    first: First,
}

async fn traces(State(collector): State<Collector>, headers: axum::http::HeaderMap, body: Bytes) -> StatusCode {
    assert_eq!(headers.get("content-type").and_then(|value| value.to_str().ok()), Some("application/x-protobuf"));
    if collector.requests.fetch_add(1, Ordering::SeqCst) == 0 {
        match collector.first {
            First::Refused => return StatusCode::BAD_REQUEST,
            First::Unanswered => std::future::pending::<()>().await,
        }
    }
    let Ok(request) = ExportTraceServiceRequest::decode(body) else { return StatusCode::UNPROCESSABLE_ENTITY };
    let _ = collector.exports.send(request);
    StatusCode::OK
}

impl Receiver {
    async fn start(first: First) -> Receiver {
        let (sender, exports) = mpsc::unbounded_channel();
        let requests = Arc::new(AtomicUsize::new(0));
        let collector = Collector { exports: sender, requests: requests.clone(), first };
        let app = axum::Router::new().route("/v1/traces", axum::routing::post(traces)).with_state(collector);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        tokio::spawn(async move { axum::serve(listener, app).await.expect("receiver") });
        Receiver { addr, exports, requests }
    }

    async fn next(&mut self) -> ExportTraceServiceRequest {
        let next = tokio::time::timeout(Duration::from_secs(60), self.exports.recv());
        next.await.expect("an export in time").expect("receiver running")
    }
}

fn attribute<'a>(span: &'a Span, key: &str) -> Option<&'a AnyValue> {
    span.attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?.value.as_ref()
}

fn text(span: &Span, key: &str) -> String {
    match attribute(span, key) {
        Some(AnyValue::StringValue(text)) => text.clone(),
        other => panic!("{key} on {}: {other:?}", span.name),
    }
}

/// `scientist serve` on the pod's store, exporting to `endpoint`: checking the outbox and
/// retrying every 100 ms, and giving up on an export after 1 s.
fn serve_exporting_to(pod: &Pod, endpoint: &str) -> ServeProcess {
    ServeProcess::start(|command| {
        command.envs(pod.store_env()).args(["--otlp-endpoint", endpoint]).args([
            "--alert-timeout",
            "1s",
            "--alert-every",
            "100ms",
            "--alert-backoff",
            "100ms",
        ])
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[tokio::test]
async fn sqlite_an_attempt_and_its_stages_reach_the_collector_as_one_trace_once_it_answers() {
    attempt_and_stages_reach_the_collector(StoreKind::Sqlite).await;
}

#[tokio::test]
async fn mongo_an_attempt_and_its_stages_reach_the_collector_as_one_trace_once_it_answers() {
    attempt_and_stages_reach_the_collector(StoreKind::Mongo).await;
}

async fn attempt_and_stages_reach_the_collector(kind: StoreKind) {
    let mut receiver = Receiver::start(First::Refused).await;
    let endpoint = format!("http://{}", receiver.addr);
    let pod = Pod::new(kind).await;
    let id = pod.enqueue().await;
    let stage = |name: &str| format!("[[stage]]\nname = {name:?}\ncommand = [\"sh\", \"-c\", {STAGE:?}]\n");
    let config = pod.config(&format!("{}{}", stage("Stage_1"), stage("Stage_2")));
    let worker = pod.worker(&config).args(["--once", "--otlp-endpoint", &endpoint]).spawn().expect("start worker");
    let (status, stderr) = finish(worker, Duration::from_secs(120)).await;
    assert!(status.success(), "worker failed: {stderr}");
    let run = pod.run(&id).await;
    assert_eq!(run.status, RunStatus::Completed, "{stderr}");
    let due: Vec<_> = run.alerts.iter().map(|mark| (mark.id.as_str(), mark.due_at.is_some())).collect();
    assert_eq!(due, [("spans:1", true)], "the worker recorded the attempt's spans as due");
    assert_eq!(receiver.requests.load(Ordering::SeqCst), 0, "a worker leaves sending to serve");

    let _serve = serve_exporting_to(&pod, &endpoint);
    let export = receiver.next().await;
    assert_eq!(receiver.requests.load(Ordering::SeqCst), 2, "the refused export was tried again, once");

    let [resource_spans] = export.resource_spans.as_slice() else { panic!("one resource: {export:?}") };
    let service = resource_spans.resource.as_ref().and_then(|resource| {
        resource.attributes.iter().find(|kv| kv.key == "service.name")?.value.as_ref()?.value.clone()
    });
    assert_eq!(service, Some(AnyValue::StringValue("scientist".into())));
    let spans: Vec<&Span> = resource_spans.scope_spans.iter().flat_map(|scope| &scope.spans).collect();
    let names: Vec<&str> = spans.iter().map(|span| span.name.as_str()).collect();
    assert_eq!(names, ["attempt", "Stage_1", "Stage_2"]);

    let trace = run.trace_id.expect("a trace id").bytes();
    let attempt = spans[0];
    assert_eq!(attempt.trace_id, trace);
    assert_eq!(attempt.span_id, SpanId::of_attempt(&id, 1).bytes());
    assert!(attempt.parent_span_id.is_empty(), "the attempt's span is the root");
    assert_eq!(text(attempt, "scientist.run.id"), id.as_str());
    assert_eq!(text(attempt, "scientist.outcome"), "COMPLETED");
    assert_eq!(attempt.status.as_ref().map(|status| status.code), Some(SpanStatus::Ok as i32));
    let claimed = run.claimed_at.expect("claimed").millis() as u64 * 1_000_000;
    assert_eq!(attempt.start_time_unix_nano, claimed, "the attempt starts at its claim");

    let dir = pod.run_dir(&id).await;
    for stage in &spans[1..] {
        assert_eq!(stage.trace_id, trace, "{}", stage.name);
        assert_eq!(stage.parent_span_id, attempt.span_id, "{} is a child of the attempt", stage.name);
        let given = std::fs::read_to_string(dir.join(format!("traceparent_{}", stage.name))).expect("its record");
        assert_eq!(given, format!("00-{}-{}-01", hex(&trace), hex(&stage.span_id)), "{}'s TRACEPARENT", stage.name);
        assert!(attempt.start_time_unix_nano <= stage.start_time_unix_nano, "{}", stage.name);
        assert!(stage.start_time_unix_nano <= stage.end_time_unix_nano, "{}", stage.name);
        assert_eq!(text(stage, "scientist.stage"), stage.name);
    }

    let delivered = poll_until(
        "the export recorded as delivered",
        async || pod.run(&id).await,
        |run| run.alerts.iter().any(|mark| mark.id == "spans:1" && mark.delivered_at.is_some()),
    )
    .await;
    let mark = delivered.alerts.iter().find(|mark| mark.id == "spans:1").expect("the mark");
    assert_eq!((mark.tries, mark.sent_to.as_slice(), mark.due_at), (1, ["otlp".to_owned()].as_slice(), None));
    pod.cleanup().await;
}

#[tokio::test]
async fn a_collector_that_never_answers_is_timed_out_and_a_secret_in_the_failure_never_reaches_it() {
    let mut receiver = Receiver::start(First::Unanswered).await;
    let endpoint = format!("http://{}", receiver.addr);
    let pod = Pod::sqlite().await;
    let id = pod.enqueue().await;
    let secret = "abcdefghijklmnopqrstuvwxyz012345";
    // The failure's message is the output's last line: the key is in it.
    let script = format!("echo 'loading key sk-{secret}' >&2; exit 3");
    let config = pod.config(&format!("[[stage]]\nname = \"Stage_1\"\ncommand = [\"sh\", \"-c\", {script:?}]\n"));
    let worker = pod.worker(&config).args(["--once", "--otlp-endpoint", &endpoint]).spawn().expect("start worker");
    let (status, stderr) = finish(worker, Duration::from_secs(120)).await;
    assert!(status.success(), "worker failed: {stderr}");
    assert_eq!(pod.run(&id).await.error_type.as_deref(), Some("EXIT_3"));

    let _serve = serve_exporting_to(&pod, &endpoint);
    // The first export hangs until the timeout; the outbox sends it again.
    let export = receiver.next().await;
    assert_eq!(receiver.requests.load(Ordering::SeqCst), 2, "the hung export was given up and tried again");
    let spans: Vec<&Span> = export
        .resource_spans
        .iter()
        .flat_map(|resource| &resource.scope_spans)
        .flat_map(|scope| &scope.spans)
        .collect();
    let status = spans[0].status.as_ref().expect("the attempt's status");
    assert_eq!(status.code, SpanStatus::Error as i32);
    assert!(status.message.contains("exited with status 3"), "{}", status.message);
    assert!(status.message.contains("[REDACTED]"), "{}", status.message);
    let everything = format!("{export:?}");
    assert!(!everything.contains(secret), "the key reached the collector: {everything}");
    pod.cleanup().await;
}

#[tokio::test]
async fn a_worker_on_a_server_leaves_the_endpoint_to_serve() {
    let pod = Pod::sqlite().await;
    let config = pod.config("[[stage]]\nname = \"Stage_1\"\ncommand = [\"true\"]\n");
    let output = pod
        .bare_worker(&config)
        .args(["--server", "http://127.0.0.1:9", "--otlp-endpoint", "http://127.0.0.1:4318"])
        .output()
        .await
        .expect("run the worker");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--otlp-endpoint applies to a worker on a store"), "{stderr}");
    for bad in ["collector:4318", "http://user:key@collector:4318"] {
        let output = pod.worker(&config).args(["--once", "--otlp-endpoint", bad]).output().await.expect("run");
        assert_eq!(output.status.code(), Some(2), "{bad}");
    }
}
