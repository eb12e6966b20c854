//! `stats`' cost figures on MongoDB, summed on the server from the run documents' `cost`:
//! the window through the `createdAt` index, the all-time sums through the indexes on
//! `cost.totalUsd` and `cost.llm.byModel`, which hold only what runs that spent add.

use futures_util::TryStreamExt;
use mongodb::bson::{Bson, DateTime, Document, doc};

use super::MongoStore;
use super::bson::{bson_number, corrupt};
use crate::event::FailureCode;
use crate::run::{DEFAULT_QUEUE, RunStatus, cost::WARN_AT};
use crate::store::Result;
use crate::store::stats::cost::{BudgetUse, CostParts, CostRow, CostSum, ModelTokens, QueueSpend};
use crate::time::Timestamp;

/// The indexes the cost sums read (created with the others in `ensure_schema`).
pub(super) fn cost_indexes() -> [Document; 2] {
    [
        // The all-time dollars by queue: only runs that spent are in range, and the fields
        // summed are in the index.
        doc! { "cost.totalUsd": 1, "queue": 1, "cost.gpuUsd": 1, "cost.llm.usd": 1 },
        // The all-time tokens by model: runs that made an LLM call (a non-empty `byModel`).
        doc! { "cost.llm.byModel": 1 },
    ]
}

/// Whether an aggregation expression is a number (absent is not).
fn is_number(expression: &str) -> Document {
    doc! { "$in": [{ "$type": expression }, ["double", "int", "long", "decimal"]] }
}

fn number(group: &Document, field: &str) -> f64 {
    group.get(field).and_then(bson_number).unwrap_or(0.0)
}

fn count(group: &Document, field: &str) -> u64 {
    match group.get(field) {
        Some(Bson::Int32(value)) => u64::try_from(*value).unwrap_or(0),
        Some(Bson::Int64(value)) => u64::try_from(*value).unwrap_or(0),
        _ => number(group, field).max(0.0) as u64,
    }
}

impl MongoStore {
    pub(super) async fn cost_parts(&self, since: Timestamp, now: Timestamp) -> Result<CostParts> {
        Ok(CostParts {
            window: self.window_costs(since, now).await?,
            queues: self.queue_spend().await?,
            models: self.model_tokens().await?,
        })
    }

    /// The window's runs that spent or have a budget, by (queue, hypothesis).
    async fn window_costs(&self, since: Timestamp, now: Timestamp) -> Result<Vec<CostRow>> {
        let budgeted = is_number("$budget");
        let spent = doc! { "$add": ["$gpu", "$llm"] };
        let exceeded = doc! { "$and": [
            { "$eq": ["$status", RunStatus::Failed.as_str()] },
            { "$eq": ["$errorType", FailureCode::BudgetExceeded.to_string()] },
        ] };
        let near =
            doc! { "$and": [budgeted.clone(), { "$gte": [spent.clone(), { "$multiply": ["$budget", WARN_AT] }] }] };
        let models = doc! { "$size": { "$objectToArray": { "$ifNull": ["$cost.llm.byModel", {}] } } };
        let pipeline = [
            doc! { "$match": { "createdAt": { "$gte": DateTime::from(since), "$lte": DateTime::from(now) } } },
            doc! { "$project": {
                "queue": { "$ifNull": ["$queue", DEFAULT_QUEUE] },
                "hypothesis": "$hypothesisId",
                "status": 1,
                "errorType": 1,
                "gpu": { "$ifNull": ["$cost.gpuUsd", 0] },
                "llm": { "$ifNull": ["$cost.llm.usd", 0] },
                "input": { "$ifNull": ["$cost.llm.inputTokens", 0] },
                "output": { "$ifNull": ["$cost.llm.outputTokens", 0] },
                "cached": { "$ifNull": ["$cost.llm.cachedTokens", 0] },
                "budget": "$cost.budgetUsd",
                // As `Cost::is_empty` and the budget: what the embedded store keeps a row for.
                "costed": { "$or": [
                    { "$gt": [{ "$ifNull": ["$cost.gpuSeconds", 0] }, 0] },
                    { "$gt": [models, 0] },
                    is_number("$cost.budgetUsd"),
                ] },
            } },
            doc! { "$match": { "costed": true } },
            doc! { "$group": {
                "_id": { "queue": "$queue", "hypothesis": "$hypothesis" },
                "runs": { "$sum": 1 },
                "gpu": { "$sum": "$gpu" },
                "llm": { "$sum": "$llm" },
                "input": { "$sum": "$input" },
                "output": { "$sum": "$output" },
                "cached": { "$sum": "$cached" },
                "budgeted": { "$sum": { "$cond": [budgeted.clone(), 1, 0] } },
                "budgetSpent": { "$sum": { "$cond": [budgeted.clone(), spent, 0] } },
                "budgetUsd": { "$sum": { "$cond": [budgeted, "$budget", 0] } },
                "near": { "$sum": { "$cond": [near, 1, 0] } },
                "exceeded": { "$sum": { "$cond": [exceeded, 1, 0] } },
            } },
        ];
        let groups: Vec<Document> = self.runs.aggregate(pipeline).await?.try_collect().await?;
        groups
            .into_iter()
            .map(|group| {
                let key = group.get_document("_id").map_err(|err| corrupt("cost group", err))?;
                let queue = key.get_str("queue").map_err(|err| corrupt("cost group queue", err))?.to_owned();
                let hypothesis = match key.get("hypothesis") {
                    Some(Bson::String(hypothesis)) => Some(hypothesis.clone()),
                    _ => None,
                };
                let sum = CostSum {
                    runs: count(&group, "runs"),
                    gpu_usd: number(&group, "gpu"),
                    llm_usd: number(&group, "llm"),
                    total_usd: 0.0,
                    input_tokens: count(&group, "input"),
                    output_tokens: count(&group, "output"),
                    cached_tokens: count(&group, "cached"),
                    budget: BudgetUse {
                        runs: count(&group, "budgeted"),
                        spent_usd: number(&group, "budgetSpent"),
                        budget_usd: number(&group, "budgetUsd"),
                        near_budget: count(&group, "near"),
                        exceeded: count(&group, "exceeded"),
                    },
                };
                Ok(CostRow { queue, hypothesis, sum })
            })
            .collect()
    }

    /// Every run's GPU and LLM dollars by queue (a run that spent nothing adds nothing).
    async fn queue_spend(&self) -> Result<Vec<QueueSpend>> {
        let pipeline = [
            doc! { "$match": { "cost.totalUsd": { "$gt": 0 } } },
            doc! { "$group": {
                "_id": { "$ifNull": ["$queue", DEFAULT_QUEUE] },
                "gpu": { "$sum": "$cost.gpuUsd" },
                "llm": { "$sum": "$cost.llm.usd" },
            } },
        ];
        let groups: Vec<Document> = self.runs.aggregate(pipeline).await?.try_collect().await?;
        groups
            .into_iter()
            .map(|group| {
                let queue = group.get_str("_id").map_err(|err| corrupt("cost by queue", err))?.to_owned();
                Ok(QueueSpend { queue, gpu_usd: number(&group, "gpu"), llm_usd: number(&group, "llm") })
            })
            .collect()
    }

    /// Every run's tokens by model, from the runs with a non-empty `cost.llm.byModel`.
    async fn model_tokens(&self) -> Result<Vec<ModelTokens>> {
        let pipeline = [
            doc! { "$match": { "cost.llm.byModel": { "$gt": {} } } },
            doc! { "$project": { "_id": 0, "model": { "$objectToArray": "$cost.llm.byModel" } } },
            doc! { "$unwind": "$model" },
            doc! { "$group": {
                "_id": "$model.k",
                "input": { "$sum": "$model.v.inputTokens" },
                "output": { "$sum": "$model.v.outputTokens" },
                "cached": { "$sum": "$model.v.cachedTokens" },
            } },
        ];
        let groups: Vec<Document> = self.runs.aggregate(pipeline).await?.try_collect().await?;
        groups
            .into_iter()
            .map(|group| {
                let model = group.get_str("_id").map_err(|err| corrupt("tokens by model", err))?.to_owned();
                Ok(ModelTokens {
                    model,
                    input_tokens: count(&group, "input"),
                    output_tokens: count(&group, "output"),
                    cached_tokens: count(&group, "cached"),
                })
            })
            .collect()
    }
}
