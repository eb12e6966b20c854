//! The flags of what runs cost and may cost (`--prices`, `--queue-budget`), for a process
//! that owns a store (`serve`, a worker on a store): they become the store's `Rules`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::UsageError;
use crate::queue::budget::Costs;
use crate::run::prices::Prices;

#[derive(Debug, Clone, Args)]
pub struct CostArgs {
    /// Price file (TOML): dollars per GPU-hour by GPU model (the name NVML reports) and per
    /// million LLM tokens by model; see examples/prices.toml. A run's cost is computed from it
    /// in every write; `cost_usd` sent in `ai.llm.usage` wins. [default: none: only the
    /// costs events report count]
    #[arg(long, env = "SCIENTIST_PRICES", value_name = "FILE")]
    pub prices: Option<PathBuf>,

    /// A queue's default budget in dollars, QUEUE=USD (repeatable, or comma-separated in the
    /// environment): a run without its own `--budget-usd` alerts at 80% of it and is stopped
    /// with BUDGET_EXCEEDED at 100%.
    #[arg(long, env = "SCIENTIST_QUEUE_BUDGETS", value_name = "QUEUE=USD", value_delimiter = ',',
          value_parser = queue_budget)]
    pub queue_budget: Vec<(String, f64)>,
}

impl CostArgs {
    /// Whether any was given (a worker on --server must leave them to `serve`).
    pub fn any(&self) -> bool {
        self.prices.is_some() || !self.queue_budget.is_empty()
    }

    pub fn costs(&self) -> Result<Arc<Costs>, UsageError> {
        let prices = match &self.prices {
            Some(path) => Some(Prices::read(path).map_err(|err| UsageError(err.to_string()))?),
            None => None,
        };
        let queue_budgets: BTreeMap<String, f64> = self.queue_budget.iter().cloned().collect();
        Ok(Arc::new(Costs { prices, queue_budgets }))
    }
}

fn queue_budget(text: &str) -> Result<(String, f64), String> {
    let usage = || format!("{text:?}: write QUEUE=USD, such as default=50");
    let (queue, usd) = text.split_once('=').ok_or_else(usage)?;
    let usd: f64 = usd.trim().parse().map_err(|_| usage())?;
    crate::run::cost::check_budget(usd, queue.trim())?;
    if queue.trim().is_empty() {
        return Err(usage());
    }
    Ok((queue.trim().to_owned(), usd))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_queue_budget_is_a_queue_and_dollars() {
        assert_eq!(queue_budget("default=50"), Ok(("default".into(), 50.0)));
        assert_eq!(queue_budget(" gpu = 12.5"), Ok(("gpu".into(), 12.5)));
        for bad in ["default", "=5", "default=-1", "default=0", "default=lots"] {
            assert!(queue_budget(bad).is_err(), "{bad}");
        }
    }
}
