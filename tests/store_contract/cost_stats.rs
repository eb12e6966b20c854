//! The store contract's cost figures of `stats` (`store::stats::cost`): runs with GPU time, LLM
//! calls and budgets in two queues and two hypotheses, one created before the window. Every
//! figure is checked against sums the test makes from the seed table itself.

use std::collections::BTreeMap;
use std::time::Duration;

use scientist::run::{NewRun, RunStatus};
use scientist::store::Store;
use scientist::store::stats::cost::{CostGroup, CostStats, CostSum};
use serde_json::json;

use super::{at, attempt_event, event};

const DAY: i64 = 86_400;
const H100: &str = "NVIDIA H100 80GB HBM3";
/// What `priced_rules` charges for an H100 hour.
const H100_PER_HOUR: f64 = 2.5;

/// One seeded run: where it goes, when it is created, what it spends.
struct Seed {
    queue: &'static str,
    hypothesis: Option<&'static str>,
    created_s: i64,
    budget: Option<f64>,
    /// Hours on one H100, heard from at their end (the run stays RUNNING; its LLM calls are
    /// sent then, so that they add no GPU time).
    gpu_hours: f64,
    /// (model, input, output, cached, cost_usd) per usage event.
    usage: &'static [(&'static str, u64, u64, u64, f64)],
}

fn seeds() -> Vec<Seed> {
    let seed = |queue, hypothesis, created_s, budget, gpu_hours, usage| Seed {
        queue,
        hypothesis,
        created_s,
        budget,
        gpu_hours,
        usage,
    };
    vec![
        seed("gpu-a", Some("h1"), 4 * DAY, None, 1.0, &[("gpt-x", 1000, 200, 100, 0.5)]),
        // 80% of its budget spent, not all of it.
        seed(
            "gpu-a",
            Some("h2"),
            5 * DAY,
            Some(1.5),
            0.0,
            &[("gpt-x", 500, 50, 0, 0.25), ("claude-y", 2000, 100, 0, 1.0)],
        ),
        // Over its budget while queued: fails at once with BUDGET_EXCEEDED.
        seed("gpu-b", Some("h1"), 6 * DAY, Some(2.0), 0.0, &[("gpt-x", 100, 10, 0, 3.0)]),
        seed("gpu-b", None, 6 * DAY + 3600, None, 0.5, &[]),
        // Spent nothing, has no budget: not counted.
        seed("gpu-b", Some("h2"), 7 * DAY, None, 0.0, &[]),
        // Before the window: only in the all-time sums.
        seed("gpu-a", Some("h1"), 0, None, 0.0, &[("gpt-x", 7000, 700, 70, 9.0)]),
    ]
}

fn gpu_usd(seed: &Seed) -> f64 {
    seed.gpu_hours * H100_PER_HOUR
}

fn llm_usd(seed: &Seed) -> f64 {
    seed.usage.iter().map(|usage| usage.4).sum()
}

/// The sums `stats` should report for `seeds`, as the test computes them.
fn expected(seeds: &[&Seed]) -> CostSum {
    let mut sum = CostSum::default();
    for seed in seeds.iter().filter(|seed| seed.gpu_hours > 0.0 || !seed.usage.is_empty() || seed.budget.is_some()) {
        let spent = gpu_usd(seed) + llm_usd(seed);
        sum.runs += 1;
        sum.gpu_usd += gpu_usd(seed);
        sum.llm_usd += llm_usd(seed);
        sum.total_usd += spent;
        sum.input_tokens += seed.usage.iter().map(|usage| usage.1).sum::<u64>();
        sum.output_tokens += seed.usage.iter().map(|usage| usage.2).sum::<u64>();
        sum.cached_tokens += seed.usage.iter().map(|usage| usage.3).sum::<u64>();
        if let Some(budget) = seed.budget {
            sum.budget.runs += 1;
            sum.budget.spent_usd += spent;
            sum.budget.budget_usd += budget;
            sum.budget.near_budget += u64::from(spent >= budget * 0.8);
            sum.budget.exceeded += u64::from(spent >= budget);
        }
    }
    sum
}

fn assert_sum(actual: &CostSum, expected: &CostSum, what: &str) {
    let close = |a: f64, b: f64| (a - b).abs() < 1e-9;
    let (budget, wanted) = (&actual.budget, &expected.budget);
    assert!(
        close(actual.gpu_usd, expected.gpu_usd)
            && close(actual.llm_usd, expected.llm_usd)
            && close(actual.total_usd, expected.total_usd)
            && close(budget.spent_usd, wanted.spent_usd)
            && close(budget.budget_usd, wanted.budget_usd),
        "{what}: {actual:?}\nwanted {expected:?}"
    );
    let counts = |sum: &CostSum| {
        let budget = &sum.budget;
        [
            sum.runs,
            sum.input_tokens,
            sum.output_tokens,
            sum.cached_tokens,
            budget.runs,
            budget.near_budget,
            budget.exceeded,
        ]
    };
    assert_eq!(counts(actual), counts(expected), "{what}: {actual:?}");
}

/// The groups `stats` listed, by name, against the seeds grouped by `key`.
fn assert_groups(groups: &[CostGroup], seeds: &[&Seed], key: impl Fn(&Seed) -> Option<&'static str>, what: &str) {
    let mut wanted: BTreeMap<Option<&str>, Vec<&Seed>> = BTreeMap::new();
    for seed in seeds {
        wanted.entry(key(seed)).or_default().push(seed);
    }
    wanted.retain(|_, seeds| expected(seeds).runs > 0);
    let names: Vec<Option<&str>> = groups.iter().map(|group| group.name.as_deref()).collect();
    assert_eq!(names.len(), wanted.len(), "{what}: {names:?}");
    for group in groups {
        let seeds = &wanted[&group.name.as_deref()];
        assert_sum(&group.sum, &expected(seeds), &format!("{what} {:?}", group.name));
    }
    let spent: Vec<f64> = groups.iter().map(|group| group.sum.total_usd).collect();
    assert!(spent.windows(2).all(|pair| pair[0] >= pair[1]), "{what}: most spent first: {spent:?}");
}

async fn seed_runs(store: &dyn Store) {
    for (index, seed) in seeds().iter().enumerate() {
        let new_run = NewRun {
            queue: seed.queue.into(),
            hypothesis_id: seed.hypothesis.map(str::to_owned),
            budget_usd: seed.budget,
            ..NewRun::new(json!({}))
        };
        let run = store.enqueue(new_run, at(seed.created_s)).await.expect("enqueue");
        let id = run.id.as_str();
        let mut now = seed.created_s;
        if seed.gpu_hours > 0.0 {
            store.claim("pod-a", seed.queue, at(now)).await.expect("claim").expect("the run just enqueued");
            let started = json!({"pod_id": "pod-a", "gpu": H100, "gpu_model": H100});
            let started = attempt_event(&format!("s{index}"), "ai.run.started", id, now, 1, started);
            store.apply_events(vec![started], at(now)).await.expect("start");
            now += (seed.gpu_hours * 3600.0) as i64;
            let heartbeat = attempt_event(&format!("h{index}"), "ai.run.heartbeat", id, now, 1, json!({}));
            store.apply_events(vec![heartbeat], at(now)).await.expect("heartbeat");
        }
        for (n, (model, input, output, cached, usd)) in seed.usage.iter().enumerate() {
            let data = json!({"model": model, "input_tokens": input, "output_tokens": output,
                              "cached_tokens": cached, "cost_usd": usd});
            let usage_id = format!("u{index}-{n}");
            let usage = match seed.gpu_hours > 0.0 {
                true => attempt_event(&usage_id, "ai.llm.usage", id, now, 1, data),
                false => event(&usage_id, "ai.llm.usage", id, now, data),
            };
            store.apply_events(vec![usage], at(now)).await.expect("usage");
        }
        let stored = store.get(&run.id).await.expect("get").expect("the run");
        let over = seed.budget.is_some_and(|budget| gpu_usd(seed) + llm_usd(seed) >= budget);
        assert_eq!(
            (stored.status == RunStatus::Failed, stored.error_type.as_deref()),
            (over, over.then_some("BUDGET_EXCEEDED")),
            "the seed's run {index} ended as the test expects"
        );
    }
}

/// Runs created in the window are summed by queue and by hypothesis, with spend against
/// budget; a run created before it counts only in the all-time sums; a narrower window
/// leaves out what was created before it.
pub async fn stats_sum_cost_by_queue_and_hypothesis_over_the_window(store: &dyn Store) {
    seed_runs(store).await;
    let now = 10 * DAY;
    let seeds = seeds();
    for window_days in [7, 4] {
        let stats = store.stats(at(now), Duration::from_secs(window_days * DAY as u64)).await.expect("stats");
        let cost: &CostStats = &stats.cost;
        let since = now - window_days as i64 * DAY;
        assert_eq!((cost.window_s, cost.since), (window_days as i64 * DAY, at(since)));
        let inside: Vec<&Seed> = seeds.iter().filter(|seed| seed.created_s >= since).collect();
        let what = format!("{window_days}d");
        assert_sum(&cost.total, &expected(&inside), &format!("{what} total"));
        assert_groups(&cost.by_queue, &inside, |seed| Some(seed.queue), &format!("{what} by queue"));
        assert_groups(&cost.by_hypothesis, &inside, |seed| seed.hypothesis, &format!("{what} by hypothesis"));
    }
    let stats = store.stats(at(now), Duration::from_secs(7 * DAY as u64)).await.expect("stats");
    let all_time = &stats.cost.all_time;
    let mut queues: BTreeMap<&str, (f64, f64)> = BTreeMap::new();
    let mut models: BTreeMap<&str, (u64, u64, u64)> = BTreeMap::new();
    for seed in seeds.iter().filter(|seed| gpu_usd(seed) + llm_usd(seed) > 0.0) {
        let queue = queues.entry(seed.queue).or_default();
        (queue.0, queue.1) = (queue.0 + gpu_usd(seed), queue.1 + llm_usd(seed));
        for (model, input, output, cached, _) in seed.usage {
            let used = models.entry(model).or_default();
            *used = (used.0 + input, used.1 + output, used.2 + cached);
        }
    }
    let got: BTreeMap<&str, (f64, f64)> =
        all_time.by_queue.iter().map(|queue| (queue.queue.as_str(), (queue.gpu_usd, queue.llm_usd))).collect();
    assert_eq!(got.keys().collect::<Vec<_>>(), queues.keys().collect::<Vec<_>>());
    for (queue, (gpu, llm)) in &queues {
        assert!((got[queue].0 - gpu).abs() < 1e-9 && (got[queue].1 - llm).abs() < 1e-9, "{queue}: {got:?}");
    }
    let got: BTreeMap<&str, (u64, u64, u64)> = all_time
        .by_model
        .iter()
        .map(|model| (model.model.as_str(), (model.input_tokens, model.output_tokens, model.cached_tokens)))
        .collect();
    assert_eq!(got, models);
}

/// A run created by its own events (`ai.run.enqueued` in the batch that reports its spend)
/// gets its cost derived and its budget applied in that first write, as a run written later
/// does, and counts in `stats`.
pub async fn a_run_created_by_its_events_is_costed_at_once(store: &dyn Store) {
    let (budget, spent) = (1.0, 1.5);
    let events = vec![
        event("e1", "ai.run.enqueued", "run-born", 10, json!({"queue": "gpu-a", "budget_usd": budget})),
        event("e2", "ai.llm.usage", "run-born", 11, json!({"model": "gpt-x", "input_tokens": 5, "cost_usd": spent})),
    ];
    store.apply_events(events, at(11)).await.expect("apply");
    let run = store.get(&"run-born".parse().expect("id")).await.expect("get").expect("created");
    assert_eq!((run.cost.total_usd, run.cost.budget_usd), (spent, Some(budget)), "{:?}", run.cost);
    assert_eq!((run.status, run.error_type.as_deref()), (RunStatus::Failed, Some("BUDGET_EXCEEDED")));
    let cost = store.stats(at(20), Duration::from_secs(DAY as u64)).await.expect("stats").cost;
    assert_eq!((cost.total.llm_usd, cost.total.budget.exceeded, cost.total.input_tokens), (spent, 1, 5));
}
