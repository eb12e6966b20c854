//! The queue, read and admin API, metrics, the live tail and scoped tokens of
//! `scientist serve` on a real socket. Every JSON answer is checked against the OpenAPI
//! document the server serves, and the document against the server's endpoint table.

#[path = "common/server.rs"]
mod test_server;

use reqwest::{Method, StatusCode};
use scientist::ideation::NewIdeation;
use scientist::server::{Scope, Tokens, endpoints};
use scientist::time::Timestamp;
use serde_json::{Value, json};
use test_server::TestServer;

/// A client that checks every answer against the served OpenAPI document.
struct Api {
    server: TestServer,
    doc: Value,
    token: Option<&'static str>,
}

impl Api {
    async fn start(tokens: Tokens, token: Option<&'static str>) -> Api {
        let server = TestServer::with_tokens(tokens).await;
        let mut request = server.client().get(server.url("/api/openapi.json"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let (status, doc) = server.send(request).await;
        assert_eq!(status, StatusCode::OK, "{doc}");
        Api { server, doc, token }
    }

    async fn open() -> Api {
        Self::start(Tokens::default(), None).await
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = self.server.client().request(method.clone(), self.server.url(path));
        if let Some(token) = self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let (status, answer) = self.server.send(request).await;
        conforms(&self.doc, &method, path, status, &answer);
        (status, answer)
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(Method::POST, path, Some(body)).await
    }

    async fn ingest(&self, events: &[Value]) -> Value {
        let body = events.iter().map(Value::to_string).collect::<Vec<_>>().join("\n");
        let (status, answer) = self.server.post("/api/ingest/events", "application/x-ndjson", body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        answer
    }
}

fn event(id: &str, ty: &str, run: &str, attempt: Option<u32>, data: Value) -> Value {
    let mut event = json!({"specversion": "1.0", "id": id, "source": "pod://p1", "type": ty,
                           "subject": format!("run/{run}"), "data": data});
    if let Some(attempt) = attempt {
        event["attempt"] = attempt.into();
    }
    event
}

// ---- OpenAPI conformance --------------------------------------------------------------

/// The documented path template a concrete path matches (`/api/runs/{id}` for `/api/runs/r1`).
fn template_of(path: &str) -> &'static str {
    let path = path.split('?').next().unwrap_or_default();
    let segments: Vec<&str> = path.split('/').collect();
    endpoints()
        .into_iter()
        .map(|endpoint| endpoint.path)
        .find(|template| {
            let parts: Vec<&str> = template.split('/').collect();
            parts.len() == segments.len()
                && parts.iter().zip(&segments).all(|(part, segment)| part.starts_with('{') || part == segment)
        })
        .unwrap_or_else(|| panic!("no endpoint serves {path}"))
}

/// Asserts that `status` is documented for the call and that `answer` fits its schema.
fn conforms(doc: &Value, method: &Method, path: &str, status: StatusCode, answer: &Value) {
    let template = template_of(path);
    let operation = &doc["paths"][template][method.as_str().to_ascii_lowercase()];
    let response = &operation["responses"][status.as_str()];
    assert!(response.is_object(), "{method} {template} answered {status}, which the OpenAPI document omits: {answer}");
    let schema = response.pointer("/content/application~1json/schema");
    if let Some(Err(problem)) = schema.map(|schema| fits(doc, schema, answer, "$")) {
        panic!("{method} {path} ({status}) does not fit its documented schema: {problem}\n{answer:#}");
    }
}

/// A small JSON Schema check: `$ref`, `oneOf`, `type`, `enum`, `required`, `properties`,
/// `additionalProperties` and `items`: what the document uses.
fn fits(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    if let Some(reference) = schema["$ref"].as_str() {
        let target = doc.pointer(reference.trim_start_matches('#')).ok_or(format!("dangling {reference}"))?;
        return fits(doc, target, value, at);
    }
    if let Some(choices) = schema["oneOf"].as_array() {
        return match choices.iter().filter(|choice| fits(doc, choice, value, at).is_ok()).count() {
            1 => Ok(()),
            n => Err(format!("{at}: matches {n} of oneOf")),
        };
    }
    let types: Vec<&str> = match &schema["type"] {
        Value::String(one) => vec![one.as_str()],
        Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
        _ => vec![],
    };
    let type_fits = |name: &str| match name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        _ => false,
    };
    if !types.is_empty() && !types.iter().any(|name| type_fits(name)) {
        return Err(format!("{at}: {value} is not {types:?}"));
    }
    if let Some(allowed) = schema["enum"].as_array().filter(|allowed| !allowed.contains(value)) {
        return Err(format!("{at}: {value} is not one of {allowed:?}"));
    }
    if let Value::Object(object) = value {
        for required in schema["required"].as_array().into_iter().flatten().filter_map(Value::as_str) {
            if !object.contains_key(required) {
                return Err(format!("{at}: required `{required}` is missing"));
            }
        }
        for (key, field) in object {
            let field_schema = schema["properties"].get(key).or_else(|| schema.get("additionalProperties"));
            if let Some(field_schema) = field_schema.filter(|field_schema| field_schema.is_object()) {
                fits(doc, field_schema, field, &format!("{at}.{key}"))?;
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (n, item) in items.iter().enumerate() {
            fits(doc, item_schema, item, &format!("{at}[{n}]"))?;
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_openapi_document_lists_exactly_the_served_endpoints_and_their_scopes() {
    let api = Api::open().await;
    let mut documented = Vec::new();
    for (path, operations) in api.doc["paths"].as_object().expect("paths") {
        for (method, operation) in operations.as_object().expect("operations") {
            documented.push((
                method.to_ascii_uppercase(),
                path.clone(),
                operation["x-scope"].as_str().map(str::to_owned),
            ));
        }
    }
    let mut served: Vec<_> = endpoints()
        .into_iter()
        .map(|e| (e.method.to_string(), e.path.to_owned(), e.scope.map(|scope| scope.as_str().to_owned())))
        .collect();
    documented.sort();
    served.sort();
    assert_eq!(documented, served);
    for (_, path, scope) in &served {
        let operations = &api.doc["paths"][path];
        for operation in operations.as_object().expect("operations").values() {
            let secured = operation.get("security").is_some();
            assert_eq!(secured, scope.is_some(), "{path}: security must match the scope");
            if secured {
                assert!(operation["responses"]["401"].is_object(), "{path} documents 401");
            }
        }
    }
}

// ---- Read, queue and admin --------------------------------------------------------------

#[tokio::test]
async fn runs_are_enqueued_paged_claimed_canceled_and_reset() {
    let api = Api::open().await;
    for (id, priority) in [("r-a", 1), ("r-b", 5), ("r-c", 3)] {
        let (status, run) = api.post("/api/runs", json!({"id": id, "idea": {"Title": id}, "priority": priority})).await;
        assert_eq!((status, run["status"].as_str()), (StatusCode::CREATED, Some("QUEUED")), "{run}");
    }
    let (status, answer) = api.post("/api/runs", json!({"id": "r-a", "idea": {}})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    let (status, answer) = api.post("/api/runs", json!({"idea": {}, "priorty": 2})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "unknown fields are refused: {answer}");
    assert!(answer["error"].as_str().unwrap_or_default().contains("priorty"), "{answer}");

    // Two pages cover the three runs once each.
    let (_, first) = api.get("/api/runs?limit=2").await;
    let next = first["next"].as_str().expect("a second page");
    let (_, second) = api.get(&format!("/api/runs?limit=2&cursor={next}")).await;
    assert!(second["next"].is_null(), "{second}");
    let mut ids: Vec<&str> = first["items"]
        .as_array()
        .into_iter()
        .chain(second["items"].as_array())
        .flatten()
        .filter_map(|run| run["_id"].as_str())
        .collect();
    ids.sort_unstable();
    assert_eq!(ids, ["r-a", "r-b", "r-c"]);
    let (status, answer) = api.get("/api/runs?cursor=garbage").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");

    // The highest priority is claimed first; the claim's attempt is its fencing token.
    let (status, claimed) = api.post("/api/queue/claim", json!({"worker": "pod-1"})).await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    assert_eq!((claimed["_id"].as_str(), claimed["attempt"].as_u64()), (Some("r-b"), Some(1)));
    assert_eq!(claimed["claimedBy"], "pod-1");
    let (_, scheduled) = api.get("/api/runs?status=SCHEDULED,RUNNING").await;
    assert_eq!(scheduled["items"].as_array().map(|items| items.len()), Some(1), "{scheduled}");
    let (status, answer) = api.get("/api/runs?status=DONE").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(answer["error"].as_str().unwrap_or_default().contains("QUEUED"), "names the valid ones: {answer}");

    // The worker learns of an operator's cancel through its claim check.
    let (_, state) = api.get("/api/queue/runs/r-b?attempt=1").await;
    assert_eq!((state["live"].as_bool(), state["cancelRequested"].is_null()), (Some(true), true), "{state}");
    let (status, run) = api.post("/api/runs/r-b/cancel", json!({"reason": "wrong lr"})).await;
    assert_eq!((status, run["status"].as_str()), (StatusCode::OK, Some("SCHEDULED")), "{run}");
    let (_, state) = api.get("/api/queue/runs/r-b?attempt=1").await;
    assert_eq!(
        (state["cancelRequested"]["by"].as_str(), state["cancelRequested"]["reason"].as_str()),
        (Some("api"), Some("wrong lr"))
    );
    let (_, stale) = api.get("/api/queue/runs/r-b?attempt=0").await;
    assert_eq!(stale["live"], false, "an older attempt is not live: {stale}");
    let (status, _) = api.get("/api/queue/runs/r-b").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the attempt is required");

    // Reset only from FAILED or CANCELED; cancel of a queued run is immediate.
    let (status, answer) = api.call(Method::POST, "/api/runs/r-b/reset", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    let (status, run) = api.call(Method::POST, "/api/runs/r-a/cancel", None).await;
    assert_eq!((status, run["status"].as_str()), (StatusCode::OK, Some("CANCELED")), "{run}");
    let (status, run) = api.call(Method::POST, "/api/runs/r-a/reset", None).await;
    assert_eq!((status, run["status"].as_str(), run["retryCount"].as_u64()), (StatusCode::OK, Some("QUEUED"), Some(1)));
    let (status, _) = api.call(Method::POST, "/api/runs/nope/reset", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    for expected in ["r-c", "r-a"] {
        let (_, claimed) = api.post("/api/queue/claim", json!({"worker": "pod-2", "queue": "default"})).await;
        assert_eq!(claimed["_id"].as_str(), Some(expected));
    }
    let (status, _) = api.post("/api/queue/claim", json!({"worker": "pod-2"})).await;
    assert_eq!(status, StatusCode::NO_CONTENT, "the queue is empty");
    let (status, answer) = api.post("/api/queue/claim", json!({"worker": "pod-2", "mode": "hybrid"})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    assert!(answer["error"].as_str().is_some_and(|error| error.contains("ideation\" first")), "{answer}");
    let (status, answer) = api.post("/api/queue/claim", json!({"worker": " "})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");

    let (status, stats) = api.get("/api/stats").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stats["byStatus"]["SCHEDULED"], 3, "{stats}");
    let (status, stats) = api.get("/api/stats?window=24h").await;
    assert_eq!((status, stats["cost"]["window_s"].as_i64()), (StatusCode::OK, Some(86_400)), "{stats}");
    let (status, answer) = api.get("/api/stats?window=0s").await;
    assert!(
        status == StatusCode::BAD_REQUEST && answer["error"].as_str().is_some_and(|e| e.contains("24h")),
        "{answer}"
    );
}

/// An ideation pod without database credentials: claim a request, beat, end the claim; a
/// beat or end by a wrong attempt, or after the end, is a conflict.
/// A run's review decided over HTTP (admin scope only): the worker's claim check shows the
/// review; an approval completes a run reviewed after its last stage, a rejection fails one
/// with `REJECTED`; deciding a run that awaits nothing is a 409 that says why.
#[tokio::test]
async fn reviews_are_approved_and_rejected_with_the_admin_scope() {
    let tokens = Tokens::default().with_token_file("pod ingest\nops ingest read admin\n").expect("token file");
    let api = Api::start(tokens, Some("ops")).await;
    for id in ["r-ok", "r-no"] {
        api.post("/api/runs", json!({"id": id, "idea": {}})).await;
        let (status, claimed) = api.post("/api/queue/claim", json!({"worker": "pod-1"})).await;
        assert_eq!((status, claimed["_id"].as_str()), (StatusCode::OK, Some(id)), "{claimed}");
        let data = json!({"reason": "read the paper", "stage": "paper", "holds_worker": false});
        let request = event(&format!("{id}-review"), "ai.run.review_requested", id, Some(1), data);
        let (status, answer) = api.post("/api/ingest/event", request).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    }
    let (_, state) = api.get("/api/queue/runs/r-ok?attempt=1").await;
    assert_eq!(
        (state["status"].as_str(), state["review"]["reason"].as_str()),
        (Some("AWAITING_HUMAN"), Some("read the paper"))
    );

    let pod = api.server.client().post(api.server.url("/api/runs/r-ok/approve")).bearer_auth("pod");
    let (status, answer) = api.server.send(pod).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "an ingest token decides nothing: {answer}");
    let (status, run) = api.post("/api/runs/r-ok/approve", json!({"by": "alice", "comment": "well argued"})).await;
    assert_eq!((status, run["status"].as_str()), (StatusCode::OK, Some("COMPLETED")), "{run}");
    assert_eq!(
        (run["review"]["decision"].as_str(), run["review"]["decidedBy"].as_str(), run["review"]["comment"].as_str()),
        (Some("approved"), Some("alice"), Some("well argued"))
    );
    assert!(run["review"]["decidedAt"].is_string(), "{run}");

    let (status, answer) = api.post("/api/runs/r-no/reject", json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "a rejection needs its reason: {answer}");
    let (status, run) = api.post("/api/runs/r-no/reject", json!({"reason": "not novel"})).await;
    assert_eq!(
        (status, run["status"].as_str(), run["errorType"].as_str()),
        (StatusCode::OK, Some("FAILED"), Some("REJECTED"))
    );
    assert_eq!((run["error"]["retryable"].as_bool(), run["review"]["decidedBy"].as_str()), (Some(false), Some("api")));

    let (status, answer) = api.call(Method::POST, "/api/runs/r-ok/approve", None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    assert!(answer["error"].as_str().unwrap_or_default().contains("only a run AWAITING_HUMAN"), "{answer}");
    let (status, _) = api.post("/api/runs/r-none/reject", json!({"reason": "x"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn ideation_requests_are_claimed_and_ended_over_http() {
    let api = Api::open().await;
    let serde_json::Value::Object(input) = json!({"hypothesis": "dropout helps", "numIdeas": 2}) else {
        unreachable!("an object literal")
    };
    let new = NewIdeation { id: "idea-1".into(), hypothesis_id: "hyp-1".into(), input };
    api.server.store.enqueue_ideation(new, Timestamp::now()).await.expect("enqueue");
    let (status, claimed) = api.post("/api/queue/claim", json!({"worker": "pod-9", "mode": "ideation"})).await;
    assert_eq!(status, StatusCode::OK, "{claimed}");
    assert_eq!((claimed["_id"].as_str(), claimed["status"].as_str()), (Some("idea-1"), Some("RUNNING")));
    assert_eq!((claimed["attempt"].as_u64(), claimed["numIdeas"].as_u64()), (Some(1), Some(2)), "{claimed}");
    let (status, _) = api.post("/api/queue/claim", json!({"worker": "pod-9", "mode": "ideation"})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, heard) = api.post("/api/queue/ideation/idea-1/heartbeat", json!({"attempt": 1})).await;
    assert_eq!(status, StatusCode::OK, "{heard}");
    assert!(heard["heardAt"].as_str() >= claimed["heardAt"].as_str() && heard["heardAt"].is_string(), "{heard}");
    let (status, answer) = api.post("/api/queue/ideation/idea-1/heartbeat", json!({"attempt": 2})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    let (status, answer) = api.post("/api/queue/ideation/idea-1/finish", json!({"attempt": 2})).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    let (status, ended) =
        api.post("/api/queue/ideation/idea-1/finish", json!({"attempt": 1, "error": "model unavailable"})).await;
    assert_eq!(status, StatusCode::OK, "{ended}");
    assert_eq!((ended["status"].as_str(), ended["error"].as_str()), (Some("FAILED"), Some("model unavailable")));
    let (status, _) = api.post("/api/queue/ideation/idea-1/finish", json!({"attempt": 1})).await;
    assert_eq!(status, StatusCode::CONFLICT, "ended once");
    let (status, _) = api.post("/api/queue/ideation/idea-1/heartbeat", json!({"attempt": 1})).await;
    assert_eq!(status, StatusCode::CONFLICT, "an ended claim's worker must stop");
    let (status, answer) = api.post("/api/queue/ideation/idea-1/finish", json!({"attempt": 1, "ok": true})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
}

#[tokio::test]
async fn events_are_read_by_page_type_and_level_with_artifacts() {
    let api = Api::open().await;
    api.post("/api/runs", json!({"id": "r-1", "idea": {}})).await;
    let (_, claimed) = api.post("/api/queue/claim", json!({"worker": "p1"})).await;
    let attempt = claimed["attempt"].as_u64().map(|n| n as u32);
    let answer = api
        .ingest(&[
            event("e1", "ai.run.started", "r-1", attempt, json!({"pod_id": "p1"})),
            event("e2", "ai.run.log", "r-1", attempt, json!({"message": "loading data", "level": "info"})),
            event("e3", "ai.run.log", "r-1", attempt, json!({"message": "CUDA out of memory", "level": "error"})),
            event("e4", "ai.artifact.registered", "r-1", attempt, json!({"key": "runs/r-1/loss.png", "bytes": 10})),
            event("e5", "ai.run.stage_started", "r-1", attempt, json!({"stage": "Stage_1"})),
        ])
        .await;
    assert_eq!(answer["applied"], 5, "{answer}");

    let (_, logs) = api.get("/api/runs/r-1/events?type=ai.run.log").await;
    let ids: Vec<&str> =
        logs["items"].as_array().into_iter().flatten().filter_map(|e| e["event"]["id"].as_str()).collect();
    assert_eq!(ids, ["e2", "e3"]);
    let (_, errors) = api.get("/api/runs/r-1/events?level=warning").await;
    let messages: Vec<&str> = errors["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["event"]["data"]["message"].as_str())
        .collect();
    assert_eq!(messages, ["CUDA out of memory"]);
    let (status, answer) = api.get("/api/runs/r-1/events?level=loud").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(answer["error"].as_str().unwrap_or_default().contains("debug, info, warning or error"), "{answer}");

    // One event a page, following the cursor, gives every event once and in order.
    let (mut seen, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let path = match &cursor {
            Some(cursor) => format!("/api/runs/r-1/events?limit=1&cursor={cursor}"),
            None => "/api/runs/r-1/events?limit=1".to_owned(),
        };
        let (_, page) = api.get(&path).await;
        seen.extend(
            page["items"].as_array().into_iter().flatten().filter_map(|e| e["event"]["id"].as_str().map(str::to_owned)),
        );
        match page["next"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["e1", "e2", "e3", "e4", "e5"]);

    let (_, artifacts) = api.get("/api/runs/r-1/artifacts").await;
    assert_eq!(artifacts[0]["key"], "runs/r-1/loss.png", "{artifacts}");
    let (_, run) = api.get("/api/runs/r-1").await;
    assert_eq!(
        (run["status"].as_str(), run["currentStage"]["name"].as_str()),
        (Some("RUNNING"), Some("Stage_1")),
        "{run}"
    );
    let (status, _) = api.get("/api/runs/missing").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

// ---- Auth scopes ------------------------------------------------------------------------

#[tokio::test]
async fn every_endpoint_demands_its_scope() {
    let tokens = Tokens::default().with_token_file("pod ingest\nviewer read\nops admin\n").expect("token file");
    let api = Api::start(tokens, Some("viewer")).await;
    let holder = |scope: Scope| match scope {
        Scope::Ingest => "pod",
        Scope::Read => "viewer",
        Scope::Admin => "ops",
    };
    for endpoint in endpoints() {
        let path = endpoint.path.replace("{id}", "r-x");
        let request = |token: Option<&str>| {
            let request = api.server.client().request(endpoint.method.clone(), api.server.url(&path));
            match token {
                Some(token) => request.bearer_auth(token),
                None => request,
            }
        };
        let (anonymous, _) = api.server.send(request(None)).await;
        let Some(scope) = endpoint.scope else {
            assert_eq!(anonymous, StatusCode::OK, "{path} is open");
            continue;
        };
        assert_eq!(anonymous, StatusCode::UNAUTHORIZED, "{} {path} without a token", endpoint.method);
        let (wrong, _) = api.server.send(request(Some("not-a-token"))).await;
        assert_eq!(wrong, StatusCode::UNAUTHORIZED, "{} {path} with an unknown token", endpoint.method);
        for other in Scope::ALL.into_iter().filter(|other| *other != scope) {
            let (status, answer) = api.server.send(request(Some(holder(other)))).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{} {path} with a {other:?} token", endpoint.method);
            assert!(answer["error"].as_str().unwrap_or_default().contains(scope.as_str()), "{answer}");
        }
        let (allowed, answer) = api.server.send(request(Some(holder(scope)))).await;
        assert!(![StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN].contains(&allowed), "{path}: {allowed} {answer}");
    }
}

// ---- Metrics ----------------------------------------------------------------------------

#[tokio::test]
async fn metrics_count_ingest_outcomes_runs_and_request_latency() {
    let api = Api::open().await;
    api.post("/api/runs", json!({"id": "r-m", "idea": {}})).await;
    let log = event("m1", "ai.run.log", "r-m", None, json!({"message": "hi"}));
    api.ingest(std::slice::from_ref(&log)).await;
    let body = format!("{log}\n{{\"broken\n");
    let (_, answer) = api.server.post("/api/ingest/events", "application/x-ndjson", body).await;
    assert_eq!((answer["duplicate"].as_u64(), answer["rejected"].as_array().map(Vec::len)), (Some(1), Some(1)));

    let response = api.server.client().get(api.server.url("/metrics")).send().await.expect("request");
    assert_eq!(response.status(), StatusCode::OK);
    let text = response.text().await.expect("text");
    for line in [
        "scientist_ingest_events_total{outcome=\"applied\"} 1",
        "scientist_ingest_events_total{outcome=\"duplicate\"} 1",
        "scientist_ingest_events_total{outcome=\"rejected\"} 1",
        "scientist_runs{status=\"QUEUED\"} 1",
        "scientist_runs{status=\"RUNNING\"} 0",
        "scientist_queue_depth 1",
        "scientist_http_request_duration_seconds_count{method=\"POST\",route=\"/api/ingest/events\",status=\"202\"} 2",
    ] {
        assert!(text.lines().any(|got| got == line), "missing `{line}` in:\n{text}");
    }
    let oldest = text.lines().find_map(|line| line.strip_prefix("scientist_oldest_queued_age_seconds "));
    assert!(oldest.and_then(|age| age.parse::<f64>().ok()).is_some_and(|age| age >= 0.0), "{text}");
}

// ---- Live tail --------------------------------------------------------------------------

/// Reads SSE frames from `response` until `count` events arrived; returns their (id, data).
async fn next_frames(response: &mut reqwest::Response, buffer: &mut String, count: usize) -> Vec<(String, Value)> {
    let mut frames = Vec::new();
    while frames.len() < count {
        if let Some(end) = buffer.find("\n\n") {
            let frame: String = buffer.drain(..end + 2).collect();
            let field = |name: &str| frame.lines().find_map(|line| line.strip_prefix(name)).map(str::to_owned);
            if let Some(data) = field("data:") {
                let data: Value = serde_json::from_str(data.trim()).expect("SSE data is JSON");
                frames.push((field("id:").unwrap_or_default().trim().to_owned(), data));
            }
            continue;
        }
        let chunk = response.chunk().await.expect("stream").expect("the stream ended early");
        buffer.push_str(&String::from_utf8_lossy(&chunk));
    }
    frames
}

#[tokio::test]
async fn the_live_tail_streams_new_events_and_ends_with_the_run() {
    let api = Api::open().await;
    api.post("/api/runs", json!({"id": "r-t", "idea": {}})).await;
    api.ingest(&[event("t1", "ai.run.log", "r-t", None, json!({"message": "first"}))]).await;

    let mut stream = api.server.client().get(api.server.url("/api/runs/r-t/events/stream")).send().await.expect("tail");
    assert_eq!(stream.status(), StatusCode::OK);
    let mut buffer = String::new();
    let first = next_frames(&mut stream, &mut buffer, 1).await;
    assert_eq!(first[0].1["event"]["id"], "t1");
    assert_eq!(first[0].0, first[0].1["cursor"].as_str().unwrap_or_default(), "the SSE id is the cursor");

    // Stored while the tail waits: it arrives without asking again.
    api.ingest(&[event("t2", "ai.run.log", "r-t", None, json!({"message": "second"}))]).await;
    let second = next_frames(&mut stream, &mut buffer, 1).await;
    assert_eq!(second[0].1["event"]["id"], "t2");

    // Once the run is finished and everything was sent, the stream ends.
    api.call(Method::POST, "/api/runs/r-t/cancel", None).await;
    let rest = stream.text().await.expect("the stream ends");
    assert!(!rest.contains("data:"), "nothing new was stored: {rest}");

    // A client reconnecting with Last-Event-ID gets only what it missed.
    let resumed = api
        .server
        .client()
        .get(api.server.url("/api/runs/r-t/events/stream"))
        .header("last-event-id", &first[0].0)
        .send()
        .await
        .expect("tail")
        .text()
        .await
        .expect("the finished run's stream ends");
    let ids: Vec<&str> = resumed
        .lines()
        .filter(|line| line.starts_with("data:"))
        .map(|line| if line.contains("\"t2\"") { "t2" } else { "other" })
        .collect();
    assert_eq!(ids, ["t2"], "{resumed}");
    let (status, _) = api.get("/api/runs/absent/events/stream").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// An invalid cursor is refused before the stream starts, with the 400 every endpoint
/// answers, not a 200 whose stream holds an SSE `error` event.
#[tokio::test]
async fn the_live_tail_refuses_an_invalid_cursor_before_it_starts() {
    let api = Api::open().await;
    api.post("/api/runs", json!({"id": "r-c", "idea": {}})).await;
    for cursor in ["", "garbage"] {
        let (status, answer) = api.get(&format!("/api/runs/r-c/events/stream?cursor={cursor}")).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "cursor {cursor:?}: {answer}");
    }
    let resumed =
        api.server.client().get(api.server.url("/api/runs/r-c/events/stream")).header("last-event-id", "garbage");
    let (status, answer) = api.server.send(resumed).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
}

#[tokio::test]
async fn shutting_down_ends_open_live_tails() {
    let api = Api::open().await;
    api.post("/api/runs", json!({"id": "r-open", "idea": {}})).await;
    api.ingest(&[event("o1", "ai.run.log", "r-open", None, json!({"message": "still running"}))]).await;
    let mut stream =
        api.server.client().get(api.server.url("/api/runs/r-open/events/stream")).send().await.expect("tail");
    let mut buffer = String::new();
    assert_eq!(next_frames(&mut stream, &mut buffer, 1).await[0].1["event"]["id"], "o1");
    // The run is still queued, so only the shutdown can end this stream.
    let deadline = std::time::Duration::from_secs(20);
    let stopped = tokio::time::timeout(deadline, api.server.shut_down()).await;
    assert!(matches!(stopped, Ok(Ok(()))), "the server stopped despite an open tail: {stopped:?}");
    let rest = tokio::time::timeout(deadline, stream.text()).await.expect("the tail ended").unwrap_or_default();
    assert!(!rest.contains("data:"), "{rest}");
}
