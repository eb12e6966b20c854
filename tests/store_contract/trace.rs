//! The store contract's trace-context cases (`run::trace`): the trace id a run gets at
//! enqueue, from an `ai.run.enqueued` event (its `traceparent` kept) and at the claim of a
//! run stored without one. Stamped out per backend by `store_suite!` with the others.

use scientist::run::{NewRun, RunStatus, TraceId};
use scientist::store::{Outcome, Store};
use serde_json::json;

use super::{at, event_from, new_run};

pub(crate) async fn a_run_keeps_the_trace_id_it_was_enqueued_with(store: &dyn Store) {
    let trace_id = TraceId::generate();
    let wanted = NewRun { trace_id, trace_state: Some("vendor=abc".into()), ..new_run(0) };
    let run = store.enqueue(wanted, at(0)).await.expect("enqueue");
    assert_eq!(run.trace_id, Some(trace_id));
    let claimed = store.claim("pod-a", "default", at(1)).await.expect("claim").expect("the run");
    assert_eq!((claimed.trace_id, claimed.trace_state.as_deref()), (Some(trace_id), Some("vendor=abc")));
    store
        .update_if(
            &run.id,
            at(2),
            Box::new(|run| {
                run.status = RunStatus::Failed;
                true
            }),
        )
        .await
        .expect("fail")
        .expect("changed");
    let reset = store.reset(&run.id, at(3)).await.expect("reset");
    assert_eq!(reset.trace_id, Some(trace_id), "a reset run stays in its trace");
}

pub(crate) async fn an_enqueued_event_gives_its_traceparent_or_a_derived_trace_id(store: &dyn Store) {
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let enqueued = |id: &str, run: &str, extensions: serde_json::Value| {
        let mut object = json!({
            "specversion": "1.0", "id": id, "source": "client://test", "type": "ai.run.enqueued",
            "subject": format!("run/{run}"), "time": at(0).to_string(), "data": {"idea": {"title": "t"}},
        });
        if let (Some(object), Some(extensions)) = (object.as_object_mut(), extensions.as_object()) {
            object.extend(extensions.clone());
        }
        event_from(object)
    };
    let joined = enqueued(
        "e1",
        "traced-run",
        json!({"traceparent": format!("00-{trace}-00f067aa0ba902b7-01"), "tracestate": "rojo=00f067aa0ba902b7"}),
    );
    let plain = enqueued("e2", "plain-run", json!({}));
    let outcomes = store.apply_events(vec![joined, plain], at(0)).await.expect("apply");
    assert_eq!(outcomes, [Outcome::Applied, Outcome::Applied]);
    let traced = store.get(&"traced-run".parse().expect("id")).await.expect("get").expect("created");
    assert_eq!(traced.trace_id.map(|id| id.to_string()).as_deref(), Some(trace));
    assert_eq!(traced.trace_state.as_deref(), Some("rojo=00f067aa0ba902b7"));
    let plain_id = "plain-run".parse().expect("id");
    let plain = store.get(&plain_id).await.expect("get").expect("created");
    assert_eq!(plain.trace_id, Some(TraceId::of_run(&plain_id)), "derived, the same on every store");
}

/// A run stored before trace ids existed gets the derived one at its claim, written with it.
pub(crate) async fn a_run_stored_without_a_trace_id_gets_one_at_claim(store: &dyn Store) {
    let run = store.enqueue(new_run(0), at(0)).await.expect("enqueue");
    store
        .update_if(
            &run.id,
            at(1),
            Box::new(|run| {
                run.trace_id = None;
                true
            }),
        )
        .await
        .expect("clear")
        .expect("changed");
    assert_eq!(store.get(&run.id).await.expect("get").expect("stored").trace_id, None);
    let claimed = store.claim("pod-a", "default", at(2)).await.expect("claim").expect("the run");
    assert_eq!(claimed.trace_id, Some(TraceId::of_run(&run.id)));
    assert_eq!(store.get(&run.id).await.expect("get").expect("stored").trace_id, Some(TraceId::of_run(&run.id)));
}
