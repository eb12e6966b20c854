//! `stats`' cost section: spend by queue and by hypothesis over a window, spend against
//! budget, and the all-time sums `/metrics` exports as counters. The backends group the runs
//! (`CostParts`); the roll-ups, the top-N cuts and the "other" rows are made here once.
//!
//! The window goes by `createdAt`: a run belongs to one window for good (its figures do not
//! jump between windows as it runs), and a run still going counts from its first dollar;
//! going by the end would hide the runs a team watches spend, those still running.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::time::Timestamp;

/// `stats --window` and `GET /api/stats?window=` when not given.
pub const DEFAULT_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);

/// How many queues and hypotheses the window lists by spend; the rest are summed in one row.
pub const TOP_GROUPS: usize = 10;

/// How many queues and models the all-time sums name (the label values of `/metrics`); the
/// rest are summed under [`OTHER`], so a scrape has at most this many series per kind.
pub const TOP_SERIES: usize = 50;

/// The name of the row, or metric label, that sums what the top-N cut leaves out.
pub const OTHER: &str = "other";

/// The window's cost and the all-time sums.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CostStats {
    /// The window's length, in seconds.
    #[serde(rename = "window_s")]
    pub window_s: i64,
    /// Runs created from here to `generatedAt` count.
    pub since: Timestamp,
    #[serde(flatten)]
    pub total: CostSum,
    /// By spend, most first, at most [`TOP_GROUPS`] and a last row summing the rest.
    pub by_queue: Vec<CostGroup>,
    /// As `byQueue`; runs with no hypothesis are one row whose `name` is absent.
    pub by_hypothesis: Vec<CostGroup>,
    pub all_time: AllTimeCost,
}

/// What a set of runs spent: the runs created in the window that used a GPU, made an LLM
/// call or have a budget.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CostSum {
    pub runs: u64,
    pub gpu_usd: f64,
    pub llm_usd: f64,
    pub total_usd: f64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub budget: BudgetUse,
}

/// Spend against budget, over the runs that have one (their own or their queue's).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BudgetUse {
    pub runs: u64,
    /// What those runs spent.
    pub spent_usd: f64,
    /// Their budgets, summed.
    pub budget_usd: f64,
    /// Runs that spent at least `run::cost::WARN_AT` (80%) of their budget, those over it included.
    pub near_budget: u64,
    /// Runs that ended FAILED with `BUDGET_EXCEEDED`.
    pub exceeded: u64,
}

/// One queue's or hypothesis's spend.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CostGroup {
    /// The queue or hypothesis; absent for runs without a hypothesis, and on the row that
    /// sums the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Only on the row that sums the groups past the top [`TOP_GROUPS`]: how many it sums.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub others: Option<u64>,
    #[serde(flatten)]
    pub sum: CostSum,
}

/// Every run's spend, whenever created: sums that only grow (a run's cost only grows), what
/// `/metrics` exports as counters.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AllTimeCost {
    /// By spend, most first, at most [`TOP_SERIES`]; the rest as one [`OTHER`] entry.
    pub by_queue: Vec<QueueSpend>,
    /// By tokens, most first, at most [`TOP_SERIES`]; the rest as one [`OTHER`] entry.
    pub by_model: Vec<ModelTokens>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QueueSpend {
    pub queue: String,
    pub gpu_usd: f64,
    pub llm_usd: f64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelTokens {
    pub model: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
}

/// What a backend gathers for the cost section.
pub(crate) struct CostParts {
    /// The window's runs grouped by (queue, hypothesis), `totalUsd` left to [`CostSum::add`].
    pub window: Vec<CostRow>,
    /// All runs' GPU and LLM dollars by queue, any order, uncut.
    pub queues: Vec<QueueSpend>,
    /// All runs' tokens by model, any order, uncut.
    pub models: Vec<ModelTokens>,
}

pub(crate) struct CostRow {
    pub queue: String,
    pub hypothesis: Option<String>,
    pub sum: CostSum,
}

/// Where the window starts.
pub(crate) fn window_since(now: Timestamp, window: Duration) -> Timestamp {
    now.plus_seconds(-window_seconds(window))
}

fn window_seconds(window: Duration) -> i64 {
    i64::try_from(window.as_secs()).unwrap_or(i64::MAX / 2_000)
}

/// A window as `stats --window` and `?window=` take it: `24h`, `7d`, `30m`; above zero.
pub fn parse_window(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(window) if window.is_zero() => Err(format!("window {text:?} is empty: give a duration such as 24h or 7d")),
        Ok(window) => Ok(window),
        Err(err) => Err(format!("window {text:?}: {err}; give a duration such as 24h or 7d")),
    }
}

impl CostSum {
    /// Adds `other` (whose `totalUsd` may be unset: it is derived here).
    fn add(&mut self, other: &CostSum) {
        self.runs += other.runs;
        self.gpu_usd += other.gpu_usd;
        self.llm_usd += other.llm_usd;
        self.total_usd = self.gpu_usd + self.llm_usd;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cached_tokens += other.cached_tokens;
        let (budget, more) = (&mut self.budget, &other.budget);
        budget.runs += more.runs;
        budget.spent_usd += more.spent_usd;
        budget.budget_usd += more.budget_usd;
        budget.near_budget += more.near_budget;
        budget.exceeded += more.exceeded;
    }
}

/// Dollars to the nano-dollar the ledger counts in: sums made in another order (another
/// backend's, another replica's) then read the same.
fn to_nanos(usd: f64) -> f64 {
    (usd * 1e9).round() / 1e9
}

impl CostSum {
    fn rounded(mut self) -> CostSum {
        for usd in [&mut self.gpu_usd, &mut self.llm_usd, &mut self.budget.spent_usd, &mut self.budget.budget_usd] {
            *usd = to_nanos(*usd);
        }
        self.total_usd = to_nanos(self.gpu_usd + self.llm_usd);
        self
    }
}

impl CostStats {
    pub(crate) fn assemble(parts: CostParts, now: Timestamp, window: Duration) -> CostStats {
        let mut total = CostSum::default();
        let mut queues: BTreeMap<Option<String>, CostSum> = BTreeMap::new();
        let mut hypotheses: BTreeMap<Option<String>, CostSum> = BTreeMap::new();
        for row in &parts.window {
            total.add(&row.sum);
            queues.entry(Some(row.queue.clone())).or_default().add(&row.sum);
            hypotheses.entry(row.hypothesis.clone()).or_default().add(&row.sum);
        }
        CostStats {
            window_s: window_seconds(window),
            since: window_since(now, window),
            total: total.rounded(),
            by_queue: top_groups(queues),
            by_hypothesis: top_groups(hypotheses),
            all_time: AllTimeCost { by_queue: top_queues(parts.queues), by_model: top_models(parts.models) },
        }
    }
}

/// Most spent first (then by name, for a stable order); past [`TOP_GROUPS`], one row sums the rest.
fn top_groups(groups: BTreeMap<Option<String>, CostSum>) -> Vec<CostGroup> {
    let mut groups: Vec<CostGroup> =
        groups.into_iter().map(|(name, sum)| CostGroup { name, others: None, sum: sum.rounded() }).collect();
    groups.sort_by(|a, b| b.sum.total_usd.total_cmp(&a.sum.total_usd).then_with(|| a.name.cmp(&b.name)));
    if groups.len() > TOP_GROUPS {
        let rest = groups.split_off(TOP_GROUPS);
        let mut sum = CostSum::default();
        rest.iter().for_each(|group| sum.add(&group.sum));
        groups.push(CostGroup { name: None, others: Some(rest.len() as u64), sum: sum.rounded() });
    }
    groups
}

fn top_queues(queues: Vec<QueueSpend>) -> Vec<QueueSpend> {
    let mut queues: Vec<QueueSpend> = queues
        .into_iter()
        .map(|queue| QueueSpend { gpu_usd: to_nanos(queue.gpu_usd), llm_usd: to_nanos(queue.llm_usd), ..queue })
        .collect();
    let spent = |queue: &QueueSpend| queue.gpu_usd + queue.llm_usd;
    queues.sort_by(|a, b| spent(b).total_cmp(&spent(a)).then_with(|| a.queue.cmp(&b.queue)));
    if queues.len() > TOP_SERIES {
        let rest = queues.split_off(TOP_SERIES);
        let mut other = QueueSpend { queue: OTHER.to_owned(), ..QueueSpend::default() };
        for queue in rest {
            other.gpu_usd += queue.gpu_usd;
            other.llm_usd += queue.llm_usd;
        }
        queues.push(QueueSpend { gpu_usd: to_nanos(other.gpu_usd), llm_usd: to_nanos(other.llm_usd), ..other });
    }
    queues
}

fn top_models(mut models: Vec<ModelTokens>) -> Vec<ModelTokens> {
    let used = |model: &ModelTokens| model.input_tokens.saturating_add(model.output_tokens);
    models.sort_by(|a, b| used(b).cmp(&used(a)).then_with(|| a.model.cmp(&b.model)));
    if models.len() > TOP_SERIES {
        let rest = models.split_off(TOP_SERIES);
        let mut other = ModelTokens { model: OTHER.to_owned(), ..ModelTokens::default() };
        for model in rest {
            other.input_tokens = other.input_tokens.saturating_add(model.input_tokens);
            other.output_tokens = other.output_tokens.saturating_add(model.output_tokens);
            other.cached_tokens = other.cached_tokens.saturating_add(model.cached_tokens);
        }
        models.push(other);
    }
    models
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(queue: &str, hypothesis: Option<&str>, gpu_usd: f64, llm_usd: f64) -> CostRow {
        let sum = CostSum { runs: 1, gpu_usd, llm_usd, input_tokens: 10, ..CostSum::default() };
        CostRow { queue: queue.into(), hypothesis: hypothesis.map(str::to_owned), sum }
    }

    #[test]
    fn rows_roll_up_by_queue_and_hypothesis_with_the_rest_summed() {
        let mut window: Vec<CostRow> = (0..12).map(|n| row(&format!("q{n:02}"), None, f64::from(n), 0.0)).collect();
        window.push(row("q11", Some("h"), 0.0, 0.5));
        let parts = CostParts { window, queues: Vec::new(), models: Vec::new() };
        let stats = CostStats::assemble(parts, Timestamp::from_millis(86_400_000), Duration::from_secs(3600));
        assert_eq!((stats.window_s, stats.since), (3600, Timestamp::from_millis(82_800_000)));
        assert_eq!((stats.total.runs, stats.total.total_usd, stats.total.input_tokens), (13, 66.5, 130));
        let names: Vec<_> = stats.by_queue.iter().map(|group| (group.name.as_deref(), group.others)).collect();
        assert_eq!(names.len(), TOP_GROUPS + 1);
        assert_eq!((names[0], names[TOP_GROUPS]), ((Some("q11"), None), (None, Some(2))));
        assert_eq!(stats.by_queue[0].sum.total_usd, 11.5);
        assert_eq!(stats.by_queue[TOP_GROUPS].sum.total_usd, 1.0, "q01 and q00");
        let hypotheses: Vec<_> =
            stats.by_hypothesis.iter().map(|group| (group.name.as_deref(), group.sum.runs)).collect();
        assert_eq!(hypotheses, [(None, 12), (Some("h"), 1)]);
    }

    #[test]
    fn all_time_series_are_capped() {
        let queues = (0..TOP_SERIES + 3)
            .map(|n| QueueSpend { queue: format!("q{n}"), gpu_usd: n as f64, llm_usd: 1.0 })
            .collect();
        let models = vec![ModelTokens { model: "m".into(), input_tokens: 5, output_tokens: 1, cached_tokens: 2 }];
        let parts = CostParts { window: Vec::new(), queues, models };
        let stats = CostStats::assemble(parts, Timestamp::EPOCH, DEFAULT_WINDOW);
        let queues = &stats.all_time.by_queue;
        assert_eq!(queues.len(), TOP_SERIES + 1);
        assert_eq!((queues[TOP_SERIES].queue.as_str(), queues[TOP_SERIES].gpu_usd), (OTHER, 3.0), "q0 + q1 + q2");
        assert_eq!(stats.all_time.by_model.len(), 1);
        assert!(parse_window("0s").is_err() && parse_window("soon").is_err());
        assert_eq!(parse_window("24h"), Ok(Duration::from_secs(86_400)));
    }
}
