//! `examples/observability/`: the Prometheus scrape config and alert rules parse, the Grafana
//! dashboard is JSON, and every metric named in a rule or a panel is one a real `scientist
//! serve` exports at /metrics (the built binary on loopback, scraped after a run was created
//! and events were ingested, so that every series exists). promtool is not needed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Value, json};

#[path = "common/serve_process.rs"]
mod serve_process;

use serve_process::ServeProcess;

/// Metrics Prometheus makes itself for every scrape, not any exporter's.
const PROMETHEUS_OWN: &[&str] = &["up"];

fn observability() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/observability")
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<RuleGroup>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleGroup {
    name: String,
    rules: Vec<Rule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(rename = "for")]
    for_: Option<String>,
    labels: BTreeMap<String, String>,
    annotations: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
struct ScrapeConfig {
    rule_files: Vec<String>,
    scrape_configs: Vec<ScrapeJob>,
}

#[derive(Debug, Deserialize)]
struct ScrapeJob {
    job_name: String,
    metrics_path: String,
}

fn rules() -> Vec<Rule> {
    let text = std::fs::read_to_string(observability().join("alerts.yml")).expect("alerts.yml");
    let file: RuleFile = serde_norway::from_str(&text).unwrap_or_else(|err| panic!("alerts.yml: {err}"));
    let mut names = BTreeSet::new();
    let mut rules = Vec::new();
    for group in file.groups {
        assert!(!group.rules.is_empty(), "group {} has no rules", group.name);
        for rule in group.rules {
            assert!(names.insert(rule.alert.clone()), "alert {} is defined twice", rule.alert);
            assert!(rule.labels.contains_key("severity"), "{} has no severity", rule.alert);
            assert!(rule.annotations.contains_key("summary"), "{} has no summary", rule.alert);
            if let Some(duration) = &rule.for_ {
                humantime::parse_duration(duration)
                    .unwrap_or_else(|err| panic!("{}: for {duration}: {err}", rule.alert));
            }
            rules.push(rule);
        }
    }
    rules
}

/// Every `expr` of the dashboard's panels.
fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(observability().join("grafana-dashboard.json")).expect("the dashboard");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert!(dashboard["title"].is_string() && dashboard["uid"].is_string(), "a dashboard needs a title and uid");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut exprs = Vec::new();
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap_or_else(|| panic!("panel {} has no targets", panel["title"]));
        exprs.extend(targets.iter().map(|target| target["expr"].as_str().expect("a target's expr").to_owned()));
    }
    exprs
}

/// The metric names a PromQL expression selects: identifiers that are not functions,
/// aggregations, keywords, label names (in `{…}`, `by (…)`, `on (…)` and the like) or
/// durations (`[5m]`, `offset 1h`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let strings = regex::Regex::new(r#""(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'"#).expect("regex");
    let matchers = regex::Regex::new(r"\{[^}]*\}|\[[^\]]*\]").expect("regex");
    let grouping =
        regex::Regex::new(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)").expect("regex");
    let offset = regex::Regex::new(r"\boffset\s+-?[0-9a-z]+").expect("regex");
    let token = regex::Regex::new(r"[0-9][0-9A-Za-z_.]*|[A-Za-z_:][A-Za-z0-9_:]*").expect("regex");
    let keywords = ["and", "or", "unless", "bool", "by", "without", "on", "ignoring", "group_left", "group_right"];
    let text = strings.replace_all(expr, "\"\"");
    let text = matchers.replace_all(&text, " ");
    let text = grouping.replace_all(&text, " ");
    let text = offset.replace_all(&text, " ");
    let mut names = BTreeSet::new();
    for found in token.find_iter(&text) {
        let name = found.as_str();
        let called = text[found.end()..].trim_start().starts_with('(');
        if name.starts_with(|c: char| c.is_ascii_digit()) || called || keywords.contains(&name) {
            continue;
        }
        names.insert(name.to_owned());
    }
    names
}

#[test]
fn the_extractor_finds_the_metrics_of_an_expression() {
    let expr = r#"histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{route=~"/api/.*"}[5m])))
        / max(b offset 1h) > 1 and on (job) c unless sum without (x) (rate(d_total[1m])) > bool 2"#;
    let names: Vec<String> = metric_names(expr).into_iter().collect();
    assert_eq!(names, ["a_bucket", "b", "c", "d_total"]);
}

#[test]
fn the_scrape_config_names_the_rules_and_serves_metrics_path() {
    let text = std::fs::read_to_string(observability().join("prometheus.yml")).expect("prometheus.yml");
    let config: ScrapeConfig = serde_norway::from_str(&text).unwrap_or_else(|err| panic!("prometheus.yml: {err}"));
    for file in &config.rule_files {
        assert!(observability().join(file).is_file(), "rule file {file} is not in examples/observability");
    }
    let job = config.scrape_configs.iter().find(|job| job.job_name == "scientist").expect("a scientist job");
    assert_eq!(job.metrics_path, "/metrics");
}

/// The metric names of `serve`'s /metrics exposition, every series made to exist first.
async fn exported_metrics() -> BTreeSet<String> {
    let dir = tempfile::tempdir().expect("temp dir");
    let serve = ServeProcess::start(|command| {
        command.arg("--store").arg(dir.path().join("store.sqlite")).env("HOME", dir.path())
    });
    let client = reqwest::Client::new();
    let created = client
        .post(format!("{}/api/runs", serve.url))
        .json(&json!({"id": "metrics-run", "idea": {"title": "scraped"}}))
        .send()
        .await
        .expect("create a run");
    assert!(created.status().is_success(), "{}", created.status());
    let batch = concat!(
        r#"{"specversion": "1.0", "id": "e1", "source": "test://o", "type": "ai.run.log", "subject": "run/metrics-run", "data": {"message": "hello"}}"#,
        "\n",
        r#"{"specversion": "1.0", "id": "e2", "source": "test://o", "type": "ai.run.stage_progress", "subject": "run/metrics-run", "data": {"stage": "nowhere"}}"#,
        "\n",
        // Spend, so that the cost and token counters have a series to export.
        r#"{"specversion": "1.0", "id": "e3", "source": "test://o", "type": "ai.llm.usage", "subject": "run/metrics-run", "data": {"model": "gpt-5-mini", "input_tokens": 1200, "output_tokens": 300, "cost_usd": 0.01}}"#,
        "\n"
    );
    let ingested = client
        .post(format!("{}/api/ingest/events", serve.url))
        .header("Content-Type", "application/x-ndjson")
        .body(batch)
        .send()
        .await
        .expect("ingest");
    assert!(ingested.status().is_success(), "{}", ingested.status());
    let text = client.get(format!("{}/metrics", serve.url)).send().await.expect("scrape").text().await.expect("text");
    let names: BTreeSet<String> = text
        .lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(|line| line.split(['{', ' ']).next().map(str::to_owned))
        .collect();
    assert!(names.contains("scientist_ingest_events_total"), "the ingest counter after an ingest: {text}");
    names
}

#[tokio::test]
async fn every_metric_in_the_rules_and_the_dashboard_is_one_serve_exports() {
    let exported = exported_metrics().await;
    let rules = rules();
    assert!(rules.len() >= 5, "the rules cover down, errors, queue and runs: {rules:?}");
    let exprs: Vec<(String, String)> = rules
        .iter()
        .map(|rule| (format!("alert {}", rule.alert), rule.expr.clone()))
        .chain(dashboard_exprs().into_iter().map(|expr| ("the dashboard".to_owned(), expr)))
        .collect();
    let mut used = BTreeSet::new();
    for (place, expr) in &exprs {
        let names = metric_names(expr);
        assert!(!names.is_empty(), "{place}: no metric in {expr}");
        for name in names {
            assert!(
                exported.contains(&name) || PROMETHEUS_OWN.contains(&name.as_str()),
                "{place} uses {name}, which serve does not export ({exported:?}): {expr}"
            );
            used.insert(name);
        }
    }
    let families = ["scientist_runs", "scientist_queue_depth", "scientist_oldest_queued_age_seconds"];
    for family in families {
        assert!(used.contains(family), "nothing watches {family}");
    }
}
