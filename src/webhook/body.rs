//! What an alert's POST carries: a JSON document (the default) or a Slack-compatible
//! `{"text": …}`. Built from the mark alone (its facts were taken when it was raised), so
//! every try of one alert sends the same bytes.

use serde::Serialize;

use crate::alert::{Kind, Mark};
use crate::run::{RunId, RunStatus};
use crate::time::Timestamp;

/// How alert bodies are written (`serve --alert-format`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A JSON document: key, alert, run id, status, attempt, code, message, stage, pod, links.
    #[default]
    Json,
    /// `{"text": "…"}`, what Slack's incoming webhooks (and Mattermost's) take.
    Slack,
}

/// The JSON body (`--alert-format json`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Alert<'a> {
    /// `<run id>:<mark id>`, also the `Idempotency-Key` header: the same for every try.
    key: String,
    /// failed, lost, stalled, review or completed.
    alert: Kind,
    raised_at: Timestamp,
    run_id: &'a RunId,
    status: RunStatus,
    attempt: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stage: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_stopped: Option<&'a str>,
    links: Links,
}

#[derive(Debug, Serialize)]
struct Links {
    run: String,
    events: String,
}

/// The idempotency key of `mark` of run `run_id`.
pub fn key(run_id: &RunId, mark: &Mark) -> String {
    format!("{run_id}:{}", mark.id)
}

/// The body of `mark`'s POST; `public_url` is where the API is reached (no trailing slash).
pub fn body(format: Format, run_id: &RunId, mark: &Mark, public_url: &str) -> Vec<u8> {
    let run_link = format!("{public_url}/api/runs/{run_id}");
    let bytes = match format {
        Format::Json => {
            let facts = &mark.facts;
            let alert = Alert {
                key: key(run_id, mark),
                alert: mark.kind,
                raised_at: mark.raised_at,
                run_id,
                status: facts.status,
                attempt: facts.attempt,
                code: facts.code.as_deref(),
                message: facts.message.as_deref(),
                stage: facts.stage.as_deref(),
                pod: facts.pod.as_deref(),
                retry_stopped: facts.retry_stopped.as_deref(),
                links: Links { events: format!("{run_link}/events"), run: run_link },
            };
            serde_json::to_vec(&alert)
        }
        Format::Slack => serde_json::to_vec(&serde_json::json!({ "text": slack_text(run_id, mark, &run_link) })),
    };
    bytes.expect("an alert is strings, numbers and times: it always serializes")
}

/// One line for a chat channel: what happened, where, and a link to the run.
fn slack_text(run_id: &RunId, mark: &Mark, run_link: &str) -> String {
    let facts = &mark.facts;
    let what = match mark.kind {
        Kind::Failed => "failed",
        Kind::Lost => "lost its worker",
        Kind::Stalled => "stalled",
        Kind::Review => "awaits review",
        Kind::Completed => "completed",
        Kind::Budget => "nears its budget",
        Kind::Spans => "has spans due",
    };
    let mut text = format!("Run {} {what}", escape(run_id.as_str()));
    if let Some(code) = &facts.code {
        text.push_str(&format!(" ({})", escape(code)));
    }
    if let Some(stage) = &facts.stage {
        text.push_str(&format!(" at {}", escape(stage)));
    }
    if let Some(pod) = &facts.pod {
        text.push_str(&format!(" on {}", escape(pod)));
    }
    text.push_str(&format!(", attempt {}", facts.attempt));
    if let Some(message) = &facts.message {
        text.push_str(&format!(": {}", escape(message)));
    }
    if let Some(stopped) = &facts.retry_stopped {
        text.push_str(&format!(" (not retried: {})", escape(stopped)));
    }
    text.push_str(&format!(" <{run_link}|details>"));
    text
}

/// Slack's control characters in message text (`&`, `<`, `>`), escaped as it asks.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::alert::Facts;

    fn mark() -> Mark {
        Mark {
            id: "failed:2".to_owned(),
            kind: Kind::Failed,
            raised_at: Timestamp::from_millis(1_761_159_600_000),
            due_at: None,
            claim: None,
            tries: 3,
            sent_to: Vec::new(),
            delivered_at: None,
            last_error: None,
            facts: Facts {
                status: RunStatus::Failed,
                attempt: 2,
                code: Some("EXIT_1".to_owned()),
                message: Some("loss <nan> & gone".to_owned()),
                stage: Some("Stage_2".to_owned()),
                pod: Some("pod-a".to_owned()),
                retry_stopped: None,
            },
        }
    }

    fn run_id() -> RunId {
        RunId::try_from("run-1".to_owned()).expect("id")
    }

    #[test]
    fn the_json_body_names_the_run_the_cause_and_links_to_the_api() {
        let body: Value =
            serde_json::from_slice(&body(Format::Json, &run_id(), &mark(), "https://sci.example")).expect("JSON");
        assert_eq!(
            body,
            json!({
                "key": "run-1:failed:2", "alert": "failed", "raisedAt": "2025-10-22T19:00:00.000Z",
                "runId": "run-1", "status": "FAILED", "attempt": 2, "code": "EXIT_1",
                "message": "loss <nan> & gone", "stage": "Stage_2", "pod": "pod-a",
                "links": {"run": "https://sci.example/api/runs/run-1", "events": "https://sci.example/api/runs/run-1/events"},
            })
        );
    }

    #[test]
    fn the_slack_body_is_one_escaped_line_with_a_link() {
        let body: Value =
            serde_json::from_slice(&body(Format::Slack, &run_id(), &mark(), "https://sci.example")).expect("JSON");
        assert_eq!(
            body,
            json!({"text": "Run run-1 failed (EXIT_1) at Stage_2 on pod-a, attempt 2: loss &lt;nan&gt; &amp; gone \
                            <https://sci.example/api/runs/run-1|details>"})
        );
    }

    #[test]
    fn every_try_sends_the_same_bytes() {
        let mut retried = mark();
        retried.tries = 4;
        retried.due_at = Some(Timestamp::from_millis(1));
        assert_eq!(body(Format::Json, &run_id(), &mark(), "u"), body(Format::Json, &run_id(), &retried, "u"));
    }
}
