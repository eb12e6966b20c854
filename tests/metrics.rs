//! `/metrics`' cost counters on a real socket: `scientist_cost_usd_total{queue,kind}` and
//! `scientist_llm_tokens_total{model,kind}` are the store's all-time sums (a run created before
//! `stats`' window still counts), read at scrape time, so two `serve` replicas on one store
//! report the same figures.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use scientist::queue::budget::Costs;
use scientist::run::NewRun;
use scientist::run::prices::Prices;
use scientist::server::{self, AppState, Tokens};
use scientist::store::{Rules, SqliteStore, Store};
use scientist::time::Timestamp;
use serde_json::{Value, json};

const H100: &str = "NVIDIA H100 80GB HBM3";
const H100_PER_HOUR: f64 = 2.5;
/// Dollars per million input tokens of the priced model (its other tokens are free).
const PRICED_INPUT_PER_MILLION: f64 = 1.0;

fn rules() -> Rules {
    let prices = format!(
        "[gpu.\"{H100}\"]\nper_hour = {H100_PER_HOUR}\n[llm.\"priced-model\"]\n\
         input_per_million = {PRICED_INPUT_PER_MILLION}\noutput_per_million = 0.0\ncached_per_million = 0.0\n"
    );
    let prices = Prices::parse(&prices, "test prices").expect("prices");
    Rules { costs: Arc::new(Costs { prices: Some(prices), ..Costs::default() }), ..Rules::default() }
}

/// A `serve` on 127.0.0.1 over the SQLite file at `path`; its address.
async fn serve(path: &Path) -> (String, tokio::sync::oneshot::Sender<()>) {
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open_with(path, rules()).await.expect("open the store"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::run(listener, AppState::new(store, Tokens::default()), async {
        let _ = stopped.await;
    }));
    (url, stop)
}

/// The samples of the cost families, by their series (name and labels as written).
async fn cost_samples(url: &str) -> BTreeMap<String, f64> {
    let response = reqwest::get(format!("{url}/metrics")).await.expect("scrape");
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    let text = response.text().await.expect("text");
    for family in ["cost_usd", "llm_tokens"] {
        assert!(text.lines().any(|line| line == format!("# TYPE scientist_{family} counter")), "{text}");
    }
    text.lines()
        .filter(|line| line.starts_with("scientist_cost_usd_total{") || line.starts_with("scientist_llm_tokens_total{"))
        .map(|line| {
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            (series.to_owned(), value.parse::<f64>().unwrap_or_else(|_| panic!("a number in {line:?}")))
        })
        .collect()
}

fn usage(id: &str, run: &str, at: Timestamp, data: Value) -> scientist::event::Event {
    let event = json!({"specversion": "1.0", "id": id, "source": "pod://metrics", "type": "ai.llm.usage",
                       "subject": format!("run/{run}"), "time": at.to_string(), "data": data});
    common::event_from(event)
}

#[tokio::test]
async fn cost_counters_are_the_stores_all_time_sums_on_every_replica() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store.sqlite");
    let store = SqliteStore::open_with(&path, rules()).await.expect("open the store");
    let now = Timestamp::now();
    // Created a month ago, before any window `stats` shows: its reported cost still counts.
    let old_at = now.plus_seconds(-30 * 86_400);
    let old = NewRun { queue: "train".into(), ..NewRun::new(json!({})) };
    let old = store.enqueue(old, old_at).await.expect("enqueue");
    let (old_usd, old_tokens) = (4.0, [1000, 100, 10]);
    let data = json!({"model": "reported-model", "input_tokens": old_tokens[0], "output_tokens": old_tokens[1],
                      "cached_tokens": old_tokens[2], "cost_usd": old_usd});
    store.apply_events(vec![usage("u-old", old.id.as_str(), old_at, data)], old_at).await.expect("usage");
    // An hour on an H100, and tokens priced by the table.
    let fresh_at = now.plus_seconds(-7200);
    let fresh =
        store.enqueue(NewRun { queue: "eval".into(), ..NewRun::new(json!({})) }, fresh_at).await.expect("enqueue");
    store.claim("pod-a", "eval", fresh_at).await.expect("claim").expect("the fresh run");
    let started = json!({"specversion": "1.0", "id": "s1", "source": "pod://metrics", "type": "ai.run.started",
                         "subject": format!("run/{}", fresh.id), "attempt": 1, "time": fresh_at.to_string(),
                         "data": {"pod_id": "pod-a", "gpu": H100, "gpu_model": H100}});
    store.apply_events(vec![common::event_from(started)], fresh_at).await.expect("start");
    let heard_at = fresh_at.plus_seconds(3600);
    let priced_input = 2_000_000_u64;
    let data = json!({"model": "priced-model", "input_tokens": priced_input, "output_tokens": 5});
    let mut priced = usage("u-fresh", fresh.id.as_str(), heard_at, data);
    priced.attempt = Some(1);
    store.apply_events(vec![priced], heard_at).await.expect("usage");
    drop(store);

    let (first, _stop_first) = serve(&path).await;
    let (second, _stop_second) = serve(&path).await;
    let samples = cost_samples(&first).await;
    let series = |name: &str, labels: &str| samples.get(&format!("{name}{{{labels}}}")).copied();
    let priced_usd = priced_input as f64 / 1e6 * PRICED_INPUT_PER_MILLION;
    let wanted = [
        ("scientist_cost_usd_total", "queue=\"train\",kind=\"gpu\"", 0.0),
        ("scientist_cost_usd_total", "queue=\"train\",kind=\"llm\"", old_usd),
        ("scientist_cost_usd_total", "queue=\"eval\",kind=\"gpu\"", H100_PER_HOUR),
        ("scientist_cost_usd_total", "queue=\"eval\",kind=\"llm\"", priced_usd),
        ("scientist_llm_tokens_total", "model=\"reported-model\",kind=\"input\"", old_tokens[0] as f64),
        ("scientist_llm_tokens_total", "model=\"reported-model\",kind=\"output\"", old_tokens[1] as f64),
        ("scientist_llm_tokens_total", "model=\"reported-model\",kind=\"cached\"", old_tokens[2] as f64),
        ("scientist_llm_tokens_total", "model=\"priced-model\",kind=\"input\"", priced_input as f64),
        ("scientist_llm_tokens_total", "model=\"priced-model\",kind=\"output\"", 5.0),
        ("scientist_llm_tokens_total", "model=\"priced-model\",kind=\"cached\"", 0.0),
    ];
    for (name, labels, value) in wanted {
        let got = series(name, labels);
        assert!(got.is_some_and(|got| (got - value).abs() < 1e-9), "{name}{{{labels}}}: {got:?} in {samples:#?}");
    }
    assert_eq!(samples.len(), wanted.len(), "no other series: {samples:#?}");
    assert_eq!(cost_samples(&second).await, samples, "another replica on the same store agrees");

    // The window of `stats` leaves the old run out; the all-time sums keep it.
    let stats: Value =
        reqwest::get(format!("{first}/api/stats?window=1d")).await.expect("stats").json().await.expect("json");
    let queues: Vec<&str> =
        stats["cost"]["byQueue"].as_array().expect("byQueue").iter().filter_map(|q| q["name"].as_str()).collect();
    assert_eq!(queues, ["eval"], "{stats}");
    assert_eq!(stats["cost"]["allTime"]["byQueue"].as_array().map(Vec::len), Some(2), "{stats}");
}
