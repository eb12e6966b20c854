//! What a run has cost: GPU time of its attempts and the tokens of its LLM calls, and the
//! dollars both come to (the run document's `cost`).
//!
//! Three writers, each order-independent: the reducer counts `ai.llm.usage` events
//! ([`Cost::count_usage`]: integer sums, each event once), the end of an attempt adds that
//! attempt's GPU time ([`Cost::add_attempt`], once per attempt), and every run write derives
//! the dollars from those tallies and the price table ([`derive`]). Sums are kept in integers
//! (tokens, nano-dollars) so that any order of events gives the same figures to the bit.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::prices::Prices;
use super::{EventKey, Run};

/// How many counted usage events a run remembers (by key) to skip a repeat: a batch's worth.
/// A repeat of an older one is the store's dedup's to catch (by (`source`, `id`): 7 days on
/// MongoDB, for ever on SQLite).
pub const USAGE_KEYS_KEPT: usize = 1000;

const NANOS_PER_USD: f64 = 1e9;

/// The run's cost so far, all attempts together.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cost {
    /// Wall-clock seconds the run's attempts held GPUs (claim to end; the live one to its
    /// latest word).
    #[serde(default)]
    pub gpu_seconds: f64,
    /// The most GPUs one attempt held.
    #[serde(default)]
    pub gpu_count: u32,
    /// GPU-seconds times the price of each attempt's GPU model.
    #[serde(default)]
    pub gpu_usd: f64,
    #[serde(default)]
    pub llm: LlmCost,
    #[serde(default)]
    pub total_usd: f64,
    /// The run's budget: its own (`--budget-usd`), else its queue's (`--queue-budget`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    /// Models (GPU or LLM) the price table does not name: their use adds no dollars.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unpriced: Vec<String>,
    /// GPU use of the ended attempts, by GPU model (kept beyond `attempts`' bound).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub ended_gpu: BTreeMap<String, GpuUse>,
    /// Keys of the newest usage events counted, sorted (time, then a hash of source and id).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub usage_keys: Vec<String>,
}

/// GPU time on one model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuUse {
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Seconds times GPUs: what the price is per.
    pub device_seconds: f64,
}

/// Tokens and dollars of LLM calls, in all and by model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LlmCost {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cached_tokens: u64,
    #[serde(default)]
    pub usd: f64,
    #[serde(default)]
    pub by_model: BTreeMap<String, ModelUsage>,
}

/// One model's calls.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelUsage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    #[serde(default)]
    pub cached_tokens: u64,
    #[serde(default)]
    pub usd: f64,
    /// What the events that sent `cost_usd` said, in nano-dollars (an integer: sums in any
    /// order agree).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub reported_nano_usd: u64,
    /// Tokens of the events that sent no `cost_usd`: priced by the table.
    #[serde(default, skip_serializing_if = "Tokens::is_empty")]
    pub to_price: Tokens,
    /// What the table made of `toPrice` at the last write by a process that has the table.
    #[serde(default, skip_serializing_if = "is_zero_f64")]
    pub priced_usd: f64,
}

fn is_zero_f64(value: &f64) -> bool {
    *value == 0.0
}

/// Token counts.
/// The share of its budget at which a run raises an alert.
pub const WARN_AT: f64 = 0.8;

/// One `ai.llm.usage` event's figures, as the reducer hands them over.
#[derive(Debug, Clone, Copy)]
pub struct Usage<'a> {
    pub model: &'a str,
    pub tokens: Tokens,
    /// The cost the pipeline reported; it wins over the price table.
    pub cost_usd: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Tokens {
    pub input: u64,
    pub output: u64,
    pub cached: u64,
}

impl Tokens {
    fn is_empty(&self) -> bool {
        *self == Tokens::default()
    }

    fn add(&mut self, other: Tokens) {
        self.input = self.input.saturating_add(other.input);
        self.output = self.output.saturating_add(other.output);
        self.cached = self.cached.saturating_add(other.cached);
    }
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

impl Cost {
    /// Whether anything was spent (for views: "-" rather than "$0.00").
    pub fn is_empty(&self) -> bool {
        self.gpu_seconds == 0.0 && self.llm.by_model.is_empty()
    }

    /// Whether it has spent [`WARN_AT`] of its budget (what the alert is raised for).
    pub fn is_near_budget(&self) -> bool {
        self.budget_usd.is_some_and(|budget| self.total_usd >= budget * WARN_AT)
    }

    /// Counts one usage event, unless it was counted already (a repeat of one of the newest
    /// [`USAGE_KEYS_KEPT`]). True when counted.
    pub fn count_usage(&mut self, usage: Usage<'_>, key: &EventKey) -> bool {
        let mark = usage_key(key);
        let Err(index) = self.usage_keys.binary_search(&mark) else { return false };
        self.usage_keys.insert(index, mark);
        let excess = self.usage_keys.len().saturating_sub(USAGE_KEYS_KEPT);
        self.usage_keys.drain(..excess);
        let tokens = usage.tokens;
        let model = self.llm.by_model.entry(usage.model.to_owned()).or_default();
        model.input_tokens = model.input_tokens.saturating_add(tokens.input);
        model.output_tokens = model.output_tokens.saturating_add(tokens.output);
        model.cached_tokens = model.cached_tokens.saturating_add(tokens.cached);
        match usage.cost_usd {
            // Checked at parsing: 0 to a million dollars, so the product fits.
            Some(usd) => model.reported_nano_usd = model.reported_nano_usd.saturating_add((usd * NANOS_PER_USD) as u64),
            None => model.to_price.add(tokens),
        }
        true
    }

    /// Adds an ended attempt's GPU use: `seconds` on `count` GPUs of `model`.
    pub fn add_attempt(&mut self, model: &str, count: u32, seconds: f64) {
        let used = self.ended_gpu.entry(model.to_owned()).or_default();
        used.seconds += seconds;
        used.device_seconds += seconds * f64::from(count);
        self.gpu_count = self.gpu_count.max(count);
    }
}

/// Refuses a budget that is not a number of dollars above 0; `field` names it as sent.
pub fn check_budget(budget: f64, field: &str) -> Result<(), String> {
    if budget > 0.0 && budget.is_finite() {
        return Ok(());
    }
    Err(format!("{field}: {budget} is not a budget; send dollars above 0, such as 50"))
}

/// `(time, hash of source and id)`, fixed-width so that the text sorts by time.
fn usage_key(key: &EventKey) -> String {
    let digest = Sha256::new().chain_update(key.source.as_bytes()).chain_update([0]).chain_update(key.id.as_bytes());
    let hash: String = digest.finalize()[..8].iter().map(|byte| format!("{byte:02x}")).collect();
    format!("{:012x}{hash}", key.time.millis().max(0))
}

/// The GPUs of the run's pod: (model to price by, count); `None` when it reported none.
pub fn pod_gpus(run: &Run) -> Option<(String, u32)> {
    let pod = run.pod.as_ref()?;
    let model = pod.gpu_model.clone().or_else(|| pod.gpu.clone())?;
    Some((model, pod.gpu_count.unwrap_or(1)))
}

/// Seconds the live attempt has held its GPUs: from its claim to the latest word from its
/// worker (both by the store's clock).
pub fn attempt_seconds(run: &Run) -> f64 {
    match (run.claimed_at, run.heard_at) {
        (Some(claimed), Some(heard)) => heard.seconds_since(claimed).max(0.0),
        _ => 0.0,
    }
}

/// Re-derives the figures of `run.cost` from its tallies, its live attempt and `prices`.
/// Without a table (a process started without `--prices`: an operator's command on a store)
/// the dollars the table gave at the last write that had one are kept, not dropped.
pub fn derive(run: &mut Run, prices: Option<&Prices>) {
    let live = live_attempt(run);
    let cost = &mut run.cost;
    let mut unpriced = Vec::new();
    let mut gpu_uses: Vec<(&str, f64, f64)> =
        cost.ended_gpu.iter().map(|(model, used)| (model.as_str(), used.seconds, used.device_seconds)).collect();
    if let Some((model, count, seconds)) = &live {
        gpu_uses.push((model, *seconds, *seconds * f64::from(*count)));
    }
    let (mut seconds, mut gpu_usd) = (0.0, 0.0);
    for (model, wall, device) in gpu_uses {
        seconds += wall;
        match prices.map(|prices| prices.gpu.get(model)) {
            Some(Some(price)) => gpu_usd += device / 3600.0 * price.per_hour,
            Some(None) if device > 0.0 => unpriced.push(model.to_owned()),
            _ => {}
        }
    }
    cost.gpu_seconds = seconds;
    cost.gpu_count = cost.gpu_count.max(live.map_or(0, |(_, count, _)| count));
    let llm = &mut cost.llm;
    (llm.input_tokens, llm.output_tokens, llm.cached_tokens, llm.usd) = (0, 0, 0, 0.0);
    for (name, model) in &mut llm.by_model {
        let priced = model.to_price;
        match prices.map(|prices| prices.llm.get(name)) {
            Some(Some(price)) => model.priced_usd = price.usd(priced.input, priced.output, priced.cached),
            Some(None) if !priced.is_empty() => unpriced.push(name.clone()),
            _ => {}
        }
        model.usd = model.reported_nano_usd as f64 / NANOS_PER_USD + model.priced_usd;
        llm.input_tokens = llm.input_tokens.saturating_add(model.input_tokens);
        llm.output_tokens = llm.output_tokens.saturating_add(model.output_tokens);
        llm.cached_tokens = llm.cached_tokens.saturating_add(model.cached_tokens);
        llm.usd += model.usd;
    }
    if prices.is_some() {
        cost.gpu_usd = gpu_usd;
        unpriced.sort_unstable();
        unpriced.dedup();
        cost.unpriced = unpriced;
    }
    cost.total_usd = cost.gpu_usd + cost.llm.usd;
}

/// The live attempt's GPUs and seconds, while one holds the run and is not yet in `attempts`.
fn live_attempt(run: &Run) -> Option<(String, u32, f64)> {
    let ended = run.attempts.last().is_some_and(|last| last.attempt == run.attempt);
    if run.attempt == 0 || ended || run.claimed_by.is_none() {
        return None;
    }
    let (model, count) = pod_gpus(run)?;
    Some((model, count, attempt_seconds(run)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;

    fn usage(model: &str, input: u64, cost_usd: Option<f64>) -> Usage<'_> {
        Usage { model, tokens: Tokens { input, output: 10, cached: 0 }, cost_usd }
    }

    fn key(id: &str, millis: i64) -> EventKey {
        EventKey { time: Timestamp::from_millis(millis), id: id.into(), source: "pod://a".into() }
    }

    #[test]
    fn a_usage_event_counts_once_and_its_reported_cost_wins() {
        let mut cost = Cost::default();
        assert!(cost.count_usage(usage("m", 100, Some(0.5)), &key("a", 1)));
        assert!(!cost.count_usage(usage("m", 100, Some(0.5)), &key("a", 1)), "a repeat");
        assert!(cost.count_usage(usage("m", 1_000_000, None), &key("b", 2)));
        let model = &cost.llm.by_model["m"];
        assert_eq!(
            (model.input_tokens, model.reported_nano_usd, model.to_price.input),
            (1_000_100, 500_000_000, 1_000_000)
        );
    }

    #[test]
    fn only_the_newest_keys_are_kept() {
        let mut cost = Cost::default();
        for index in 0..USAGE_KEYS_KEPT + 5 {
            let millis = i64::try_from(index).expect("small");
            assert!(cost.count_usage(usage("m", 1, None), &key(&index.to_string(), millis)));
        }
        assert_eq!(cost.usage_keys.len(), USAGE_KEYS_KEPT);
        assert!(!cost.count_usage(usage("m", 1, None), &key("10", 10)), "a recent repeat is skipped");
        assert_eq!(cost.llm.by_model["m"].input_tokens, (USAGE_KEYS_KEPT + 5) as u64);
    }
}
