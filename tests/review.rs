//! Human review end to end: the built `scientist work` binary runs a pipeline with
//! `review = true` on a real store (SQLite, and MongoDB direct mode on the test server), and
//! a person decides with the built `scientist runs approve|reject`. After the last stage the
//! worker leaves the run AWAITING_HUMAN and moves on; between stages it holds the run
//! (heartbeats go on) until the decision. Every wait is on the store's state with a deadline.

use std::time::Duration;

use scientist::queue::review::REVIEW_SOURCE;
use scientist::run::{ReviewDecision, Run, RunId, RunStatus};

#[path = "common/pod.rs"]
mod pod;
#[path = "common/stores.rs"]
mod stores;

use pod::{BIN, Pod, StoreKind, eventually, finish};

const WITHIN: Duration = Duration::from_secs(60);

/// Two quick stages; `review` names the one that asks for a review when it ends.
fn two_stages(review: &str) -> String {
    let stage = |name: &str| {
        let review = if name == review { "review = true\n" } else { "" };
        format!("[[stage]]\nname = \"{name}\"\ncommand = \"echo {name} done\"\n{review}")
    };
    format!("{}{}", stage("Stage_1"), stage("Stage_2"))
}

/// The run once it is in `status`.
async fn in_status(pod: &Pod, id: &RunId, status: RunStatus) -> Run {
    eventually(&format!("run {id} to be {status}"), WITHIN, async || {
        let run = pod.run(id).await;
        (run.status == status).then_some(run)
    })
    .await
}

/// `scientist runs …` on the pod's store: exit code, stdout, stderr.
fn runs(pod: &Pod, args: &[&str]) -> (i32, String, String) {
    let output = std::process::Command::new(BIN)
        .arg("runs")
        .args(args)
        .envs(pod.store_env())
        .env("USER", "alice")
        .env("LOG_LEVEL", "warn")
        .env("NO_COLOR", "1")
        .output()
        .expect("run scientist");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (output.status.code().unwrap_or(-1), text(&output.stdout), text(&output.stderr))
}

#[tokio::test]
async fn a_review_after_the_last_stage_frees_the_worker_and_approve_completes_the_run() {
    last_stage_review(StoreKind::Sqlite).await;
}

#[tokio::test]
async fn on_mongodb_a_review_after_the_last_stage_frees_the_worker_and_approve_completes_the_run() {
    last_stage_review(StoreKind::Mongo).await;
}

/// One worker, two runs: each ends AWAITING_HUMAN after its last stage and the worker, free,
/// takes the next. Then `runs approve` completes one and `runs reject` fails the other.
async fn last_stage_review(kind: StoreKind) {
    let pod = Pod::new(kind).await;
    let (first, second) = (pod.enqueue().await, pod.enqueue().await);
    let config = pod.config(&two_stages("Stage_2"));
    let worker = pod.worker(&config).spawn().expect("start worker");
    let awaiting = in_status(&pod, &first, RunStatus::AwaitingHuman).await;
    in_status(&pod, &second, RunStatus::AwaitingHuman).await;
    let review = awaiting.review.as_ref().expect("the review");
    assert_eq!((review.stage.as_deref(), review.holds_worker, review.decision), (Some("Stage_2"), false, None));
    assert!(review.reason.as_deref().is_some_and(|reason| reason.contains("review = true")), "{review:?}");
    assert!(awaiting.stage_timing.get("Stage_2").is_some_and(|timing| timing.completed_at.is_some()));
    // Nothing holds a GPU while a person decides: the worker is done with both runs.
    signal_term(&worker);
    let (status, stderr) = finish(worker, WITHIN).await;
    assert!(status.success(), "{stderr}");
    assert!(stderr.contains("awaits a review"), "{stderr}");

    let (code, _, stderr) = runs(&pod, &["approve", first.as_str(), "--comment", "the paper reads well"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains(&format!("run {first} approved: it is COMPLETED")), "{stderr}");
    let run = pod.run(&first).await;
    assert_eq!(run.status, RunStatus::Completed);
    let review = run.review.as_ref().expect("the review");
    assert_eq!(
        (review.decision, review.decided_by.as_deref(), review.comment.as_deref()),
        (Some(ReviewDecision::Approved), Some("operator:alice"), Some("the paper reads well"))
    );
    assert!(review.decided_at.is_some());
    let events = pod.events(&first).await;
    let last = events.last().expect("events");
    assert_eq!((last.event_type.as_str(), last.source.as_str()), ("ai.run.completed", REVIEW_SOURCE));
    assert_eq!(events.iter().filter(|event| event.event_type == "ai.run.completed").count(), 1, "only the approval");
    let (code, shown, stderr) = runs(&pod, &["show", first.as_str()]);
    assert_eq!(code, 0, "{stderr}");
    assert!(shown.contains("Review") && shown.contains("approved by operator:alice"), "{shown}");

    let (code, _, stderr) = runs(&pod, &["reject", second.as_str(), "--reason", "the baseline is wrong"]);
    assert_eq!(code, 0, "{stderr}");
    let run = pod.run(&second).await;
    let error = run.error.as_ref().expect("an error");
    assert_eq!((run.status, error.error_type.as_str(), error.retryable), (RunStatus::Failed, "REJECTED", false));
    assert!(error.message.contains("the baseline is wrong"), "{}", error.message);

    // A decided run cannot be decided again: a clear error, exit code 4.
    let (code, _, stderr) = runs(&pod, &["reject", first.as_str(), "--reason", "changed my mind"]);
    assert_eq!(code, 4, "{stderr}");
    assert!(stderr.contains("cannot reject run") && stderr.contains("it is COMPLETED"), "{stderr}");
    assert!(stderr.contains("only a run AWAITING_HUMAN"), "{stderr}");
    pod.cleanup().await;
}

#[tokio::test]
async fn a_review_between_stages_holds_the_worker_until_approved() {
    middle_stage_review(StoreKind::Sqlite, ReviewDecision::Approved).await;
}

#[tokio::test]
async fn on_mongodb_a_review_between_stages_holds_the_worker_until_approved() {
    middle_stage_review(StoreKind::Mongo, ReviewDecision::Approved).await;
}

#[tokio::test]
async fn a_review_between_stages_holds_the_worker_until_rejected() {
    middle_stage_review(StoreKind::Sqlite, ReviewDecision::Rejected).await;
}

#[tokio::test]
async fn on_mongodb_a_review_between_stages_holds_the_worker_until_rejected() {
    middle_stage_review(StoreKind::Mongo, ReviewDecision::Rejected).await;
}

/// Stage_1 asks for a review: the worker keeps the claim and heartbeats while it waits;
/// approved, it runs Stage_2 and completes the run; rejected, it stops (FAILED REJECTED).
async fn middle_stage_review(kind: StoreKind, verdict: ReviewDecision) {
    let pod = Pod::new(kind).await;
    let id = pod.enqueue().await;
    let config = pod.config(&two_stages("Stage_1"));
    let mut worker = pod.worker(&config).arg("--once").spawn().expect("start worker");
    let awaiting = in_status(&pod, &id, RunStatus::AwaitingHuman).await;
    let review = awaiting.review.clone().expect("the review");
    assert_eq!((review.stage.as_deref(), review.holds_worker), (Some("Stage_1"), true));
    // The lease holds: heartbeats of the same attempt keep arriving while the worker waits.
    let heard = eventually("a heartbeat after the request", WITHIN, async || {
        let run = pod.run(&id).await;
        run.heartbeat_at.filter(|beat| *beat > review.requested_at).map(|_| run)
    })
    .await;
    assert_eq!(
        (heard.status, heard.attempt, heard.claimed_by.as_deref()),
        (RunStatus::AwaitingHuman, 1, Some(pod::POD))
    );
    assert!(!heard.stage_timing.contains_key("Stage_2"), "the next stage waits for the decision");
    assert!(worker.try_wait().expect("worker status").is_none(), "the worker holds the run");

    let (code, _, stderr) = match verdict {
        ReviewDecision::Approved => runs(&pod, &["approve", id.as_str()]),
        _ => runs(&pod, &["reject", id.as_str(), "--reason", "the plots look off"]),
    };
    assert_eq!(code, 0, "{stderr}");
    let (status, worker_stderr) = finish(worker, WITHIN).await;
    assert!(status.success(), "{worker_stderr}");
    let run = pod.run(&id).await;
    let events = pod.events(&id).await;
    match verdict {
        ReviewDecision::Approved => {
            assert!(stderr.contains("its worker goes on with the next stage"), "{stderr}");
            assert_eq!(run.status, RunStatus::Completed, "{worker_stderr}");
            assert!(run.stage_timing.get("Stage_2").is_some_and(|timing| timing.completed_at.is_some()));
            let review = run.review.as_ref().expect("the review");
            assert_eq!(
                (review.decision, review.decided_by.as_deref()),
                (Some(ReviewDecision::Approved), Some("operator:alice"))
            );
            assert!(worker_stderr.contains("approved by operator:alice; going on"), "{worker_stderr}");
            let last = events.last().expect("events");
            assert_eq!(
                (last.event_type.as_str(), last.source.as_str()),
                ("ai.run.completed", events[0].source.as_str())
            );
        }
        _ => {
            let error = run.error.as_ref().expect("an error");
            assert_eq!(
                (run.status, error.error_type.as_str(), error.retryable),
                (RunStatus::Failed, "REJECTED", false)
            );
            assert_eq!(error.stage.as_deref(), Some("Stage_1"));
            assert!(!run.stage_timing.contains_key("Stage_2"), "the run stopped at the review");
            let failures: Vec<&str> = events
                .iter()
                .filter(|event| event.event_type == "ai.run.failed")
                .map(|event| event.source.as_str())
                .collect();
            assert_eq!(failures, [REVIEW_SOURCE], "the decision's record alone fails it");
            assert!(worker_stderr.contains("its review was rejected by operator:alice"), "{worker_stderr}");
        }
    }
    pod.cleanup().await;
}

fn signal_term(child: &tokio::process::Child) {
    let pid = child.id().expect("a running worker") as i32;
    // SAFETY: kill(2) on a process this test started.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
}

/// A pipeline's own `ai.run.review_requested` (through `scientist emit` and the worker's
/// endpoint) counts as `review = true` on the step that sent it: the worker stamps what it
/// will do (`holds_worker`, the stage), waits after Stage_1 and leaves the run after Stage_2.
#[tokio::test]
async fn a_pipelines_own_review_request_is_held_between_stages_and_left_after_the_last() {
    let pod = Pod::sqlite().await;
    let id = pod.enqueue().await;
    let ask = |stage: &str| {
        format!(
            "[[stage]]\nname = \"{stage}\"\ncommand = 'scientist emit ai.run.review_requested --run \"$SCIENTIST_RUN_ID\" \
             --data \"{{\\\"reason\\\": \\\"read {stage}\\\", \\\"options\\\": [\\\"accept\\\", \\\"revise\\\"]}}\"'\n"
        )
    };
    let config = pod.config(&format!("{}{}", ask("Stage_1"), ask("Stage_2")));
    let worker = pod.worker(&config).arg("--once").spawn().expect("start worker");
    let first = in_status(&pod, &id, RunStatus::AwaitingHuman).await;
    let review = first.review.as_ref().expect("the review");
    assert_eq!(
        (review.reason.as_deref(), review.stage.as_deref(), review.holds_worker),
        (Some("read Stage_1"), Some("Stage_1"), true)
    );
    assert_eq!(review.options, Some(serde_json::json!(["accept", "revise"])));
    let (code, _, stderr) = runs(&pod, &["approve", id.as_str()]);
    assert_eq!(code, 0, "{stderr}");
    let (status, worker_stderr) = finish(worker, WITHIN).await;
    assert!(status.success(), "{worker_stderr}");
    let second = pod.run(&id).await;
    let review = second.review.as_ref().expect("the second review");
    assert_eq!(second.status, RunStatus::AwaitingHuman, "{worker_stderr}");
    assert_eq!((review.stage.as_deref(), review.holds_worker, review.decision), (Some("Stage_2"), false, None));
    let requests = pod.events(&id).await.into_iter().filter(|event| event.event_type == "ai.run.review_requested");
    assert_eq!(requests.count(), 2, "the child's requests, none of the worker's own");
    let (code, _, stderr) = runs(&pod, &["approve", id.as_str()]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(pod.run(&id).await.status, RunStatus::Completed);
    pod.cleanup().await;
}
