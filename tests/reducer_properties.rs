//! Property tests of the reducer: for generated event streams of one run, any permutation
//! and any duplication of the events gives the same final run, and no step ever moves
//! status, stage, progress or a counter backwards.

mod common;

use proptest::prelude::*;
use scientist::event::Event;
use scientist::reduce;
use scientist::run::prices::Prices;
use scientist::run::{NewRun, Run, cost};
use serde_json::{Value, json};

const RUN: &str = "run-prop";
const STAGES: [&str; 7] = ["Stage_1", "Stage_2", "Stage_3", "Stage_4", "plots", "paper", "validation"];
const SOURCES: [&str; 3] = ["pod://a", "pod://b", "ci://pipeline"];

/// One generated event before ids are assigned: (type, data).
fn body() -> impl Strategy<Value = (&'static str, Value)> {
    let stage = prop::sample::select(&STAGES[..]);
    let small = 0u64..30;
    prop_oneof![
        (prop::sample::select(&["pod-a", "pod-b"][..]), prop::sample::select(&["H100", "A100"][..]))
            .prop_map(|(pod, gpu)| ("ai.run.started", json!({"pod_id": pod, "gpu": gpu}))),
        (0.0..1.0f64, 0u64..80_000).prop_map(|(util, rss)| ("ai.run.heartbeat", json!({"gpu_util": util, "rss": rss}))),
        stage.clone().prop_map(|stage| ("ai.run.stage_started", json!({"stage": stage}))),
        (
            stage.clone(),
            small.clone(),
            small.clone(),
            0.0..=1.0f64,
            small.clone(),
            small.clone(),
            0.0..5.0f64,
            0u64..5000
        )
            .prop_map(|(stage, iteration, good, progress, buggy, total, metric, eta)| {
                (
                    "ai.run.stage_progress",
                    json!({"stage": stage, "iteration": iteration, "max_iterations": 30,
                    "progress": progress, "good_nodes": good, "buggy_nodes": buggy, "total_nodes": total,
                    "best_metric": metric, "eta_s": eta}),
                )
            }),
        (stage.clone(), prop::sample::select(&["loss", "acc"][..]), -10.0..10.0f64, 0u64..100).prop_map(
            |(stage, name, value, step)| (
                "ai.run.stage_metric",
                json!({"stage": stage, "name": name, "value": value, "step": step})
            )
        ),
        (stage.clone(), 0.0..1e4f64)
            .prop_map(|(stage, duration)| ("ai.run.stage_completed", json!({"stage": stage, "duration_s": duration}))),
        (
            prop::sample::select(&["created", "code_generated", "executing", "completed", "selected_best"][..]),
            0u8..5,
            prop::option::of(0u8..5),
            prop::option::of(any::<bool>()),
            prop::option::of(0.0..1.0f64),
            stage.clone(),
        )
            .prop_map(|(step, node, parent, buggy, metric, stage)| {
                let mut data = json!({"node_id": format!("n{node}"), "stage": stage});
                if let Some(parent) = parent {
                    data["parent_id"] = json!(format!("n{parent}"));
                }
                if let Some(buggy) = buggy {
                    data["is_buggy"] = json!(buggy);
                }
                if let Some(metric) = metric {
                    data["metric"] = json!(metric);
                    data["summary"] = json!(format!("m={metric:.2}"));
                }
                (
                    match step {
                        "created" => "ai.node.created",
                        "code_generated" => "ai.node.code_generated",
                        "executing" => "ai.node.executing",
                        "completed" => "ai.node.completed",
                        _ => "ai.node.selected_best",
                    },
                    data,
                )
            }),
        Just(("ai.run.log", json!({"message": "hello", "level": "info"}))),
        Just(("ai.artifact.registered", json!({"key": "runs/x/plot.png", "bytes": 3}))),
        prop::option::of("[a-z]{3}").prop_map(|key| ("ai.paper.started", json!({"artifact_key": key}))),
        "[a-z]{3}".prop_map(|key| ("ai.paper.generated", json!({"artifact_key": key}))),
        prop::sample::select(&["gpt-a", "gpt-b"][..])
            .prop_map(|model| ("ai.validation.auto_started", json!({"model": model}))),
        prop::sample::select(&["pass", "fail"][..]).prop_map(|verdict| (
            "ai.validation.auto_completed",
            json!({"verdict": verdict, "scores": {"overall": 0.5}})
        )),
        (stage.clone(), any::<bool>(), prop::sample::select(&["check the paper", "look at the plots"][..])).prop_map(
            |(stage, holds, reason)| (
                "ai.run.review_requested",
                json!({"reason": reason, "stage": stage, "holds_worker": holds, "options": ["accept", "revise"]})
            )
        ),
        (
            prop::sample::select(&["gpt-a", "gpt-b", "unpriced"][..]),
            0u64..100_000,
            0u64..10_000,
            0u64..1000,
            prop::option::of(0.0..2.0f64),
            stage.clone(),
        )
            .prop_map(|(model, input, output, cached, cost, stage)| {
                let mut data = json!({"model": model, "input_tokens": input, "output_tokens": output,
                    "cached_tokens": cached, "stage": stage});
                if let Some(cost) = cost {
                    data["cost_usd"] = json!(cost);
                }
                ("ai.llm.usage", data)
            }),
        Just(("ai.run.something_new", json!({"anything": 1}))),
    ]
}

/// The one terminal event a run's stream may carry (an attempt ends one way).
fn terminal() -> impl Strategy<Value = Option<(&'static str, Value)>> {
    prop::option::of(prop_oneof![
        (0.0..1e5f64).prop_map(|duration| ("ai.run.completed", json!({"duration_s": duration}))),
        prop::sample::select(&["OOM", "EXIT_1", "ALL_NODES_BUGGY"][..])
            .prop_map(|code| ("ai.run.failed", json!({"code": code, "message": "boom", "stage": "Stage_2"}))),
        Just(("ai.run.canceled", json!({"by": "operator", "reason": "stop"}))),
    ])
}

/// A run's event stream: distinct (source, id) pairs, colliding times and random seqs.
fn stream() -> impl Strategy<Value = Vec<Event>> {
    (prop::collection::vec((body(), 0i64..40, 0usize..3, 0u64..60), 1..40), terminal(), 0i64..40).prop_map(
        |(bodies, terminal, terminal_time)| {
            let mut events: Vec<Event> = bodies
                .into_iter()
                .enumerate()
                .map(|(index, ((ty, data), seconds, source, seq))| {
                    build(index, ty, data, seconds, SOURCES[source], seq)
                })
                .collect();
            if let Some((ty, data)) = terminal {
                events.push(build(events.len(), ty, data, terminal_time, SOURCES[0], 99));
            }
            events
        },
    )
}

fn build(index: usize, ty: &str, mut data: Value, seconds: i64, source: &str, seq: u64) -> Event {
    data["run_id"] = json!(RUN);
    // Ids are unique but not in index order, so ties on time are broken "randomly".
    let id = format!("{:08x}-{index}", (index as u32).wrapping_mul(2_654_435_761));
    common::event_from(json!({
        "specversion": "1.0", "id": id, "source": source, "type": ty,
        "time": common::at(seconds).to_string(), "seq": seq, "data": data,
    }))
}

fn initial_run() -> Run {
    let id: scientist::run::RunId = RUN.parse().expect("valid id");
    // The same run every time: a fresh trace id is random.
    let trace_id = scientist::run::TraceId::of_run(&id);
    let mut run = Run::queued(NewRun { id, trace_id, ..NewRun::new(json!({})) }, common::at(0));
    run.claim("pod-a", common::at(0));
    run
}

fn fold<'a>(events: impl IntoIterator<Item = &'a Event>) -> Run {
    let mut run = initial_run();
    for event in events {
        reduce::apply(&mut run, event);
    }
    run
}

/// A shuffled order of `events` with some of them delivered again.
fn redelivered(events: Vec<Event>) -> impl Strategy<Value = Vec<Event>> {
    let len = events.len();
    (Just(events).prop_shuffle(), prop::collection::vec((0..len, 0..=len), 0..len + 1)).prop_map(
        |(mut shuffled, duplicates)| {
            for (from, to) in duplicates {
                let copy = shuffled[from].clone();
                shuffled.insert(to.min(shuffled.len()), copy);
            }
            shuffled
        },
    )
}

fn stage_position(run: &Run) -> (Option<scientist::run::Stage>, u64, u64, u64, u64) {
    run.current_stage.as_ref().map_or((None, 0, 0, 0, 0), |stage| {
        (Some(stage.name), stage.iteration, stage.good_nodes, stage.buggy_nodes, stage.total_nodes)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 3000, ..ProptestConfig::default() })]

    #[test]
    fn any_order_and_any_duplication_give_the_same_run(
        (events, delivered) in stream().prop_flat_map(|events| (Just(events.clone()), redelivered(events)))
    ) {
        let in_order = fold(&events);
        let as_delivered = fold(&delivered);
        prop_assert_eq!(in_order, as_delivered);
    }

    #[test]
    fn usage_events_duplicated_and_shuffled_give_the_same_totals(
        (events, delivered) in stream().prop_flat_map(|events| (Just(events.clone()), redelivered(events)))
    ) {
        let prices = Prices::parse(
            "[llm.gpt-a]\ninput_per_million = 1.0\noutput_per_million = 4.0\ncached_per_million = 0.1\n\
             [llm.gpt-b]\ninput_per_million = 0.5\noutput_per_million = 2.0\n",
            "test",
        ).expect("prices");
        let (mut in_order, mut as_delivered) = (fold(&events), fold(&delivered));
        cost::derive(&mut in_order, Some(&prices));
        cost::derive(&mut as_delivered, Some(&prices));
        prop_assert_eq!(&in_order.cost, &as_delivered.cost);
        // Each distinct event is counted once: the totals are those of `events`, which has no repeats.
        let field = |event: &Event, name: &str| event.data.get(name).and_then(Value::as_u64).unwrap_or(0);
        let usages: Vec<&Event> = events.iter().filter(|event| event.event_type == "ai.llm.usage").collect();
        let input: u64 = usages.iter().map(|event| field(event, "input_tokens")).sum();
        let output: u64 = usages.iter().map(|event| field(event, "output_tokens")).sum();
        prop_assert_eq!((as_delivered.cost.llm.input_tokens, as_delivered.cost.llm.output_tokens), (input, output));
        let unpriced_without_cost = usages.iter().any(|event| {
            event.data.get("model") == Some(&json!("unpriced")) && event.data.get("cost_usd").is_none()
        });
        prop_assert_eq!(as_delivered.cost.unpriced.contains(&"unpriced".to_owned()), unpriced_without_cost);
    }

    #[test]
    fn nothing_moves_backwards(delivered in stream().prop_flat_map(redelivered)) {
        let mut run = initial_run();
        for event in &delivered {
            let before = run.clone();
            reduce::apply(&mut run, event);
            prop_assert!(run.status.rank() >= before.status.rank(), "status {} -> {}", before.status, run.status);
            if before.status.is_terminal() {
                prop_assert_eq!(run.status, before.status, "terminal states are sticky");
            }
            let (old_stage, new_stage) = (stage_position(&before), stage_position(&run));
            prop_assert!(new_stage.0 >= old_stage.0, "stage moved back: {:?} -> {:?}", old_stage.0, new_stage.0);
            if new_stage.0 == old_stage.0 {
                prop_assert!(new_stage >= old_stage, "counters moved back: {:?} -> {:?}", old_stage, new_stage);
                let progress = |r: &Run| r.current_stage.as_ref().map_or(0.0, |s| s.progress);
                prop_assert!(progress(&run) >= progress(&before));
            }
            prop_assert!(run.last_event_seq >= before.last_event_seq);
            prop_assert!(run.nodes.len() >= before.nodes.len());
            prop_assert!(run.cost.llm.by_model.len() >= before.cost.llm.by_model.len());
        }
    }
}
