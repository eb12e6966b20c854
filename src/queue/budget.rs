//! Budgets: the most a run may cost (its own `--budget-usd`, else its queue's
//! `--queue-budget`). The rules only, no I/O; the store applies [`enforce`] in every run
//! write, right after the run's cost is derived, so the decision is taken on the run as
//! stored, whoever wrote the spend.
//!
//! At [`WARN_AT`] of the budget the run raises an alert (`alert::Kind::Budget`, once); at the
//! whole budget a run a worker holds gets `cancelRequested` by [`BUDGET_BY`], and its worker,
//! seeing who asked, stops the child and fails the run with `BUDGET_EXCEEDED` (the one place
//! that code is sent, `worker::supervise`); a run nobody holds (QUEUED, or awaiting a review)
//! is failed at once with the same code, in the same write.

use std::collections::BTreeMap;

use crate::event::FailureCode;
use crate::run::prices::Prices;
use crate::run::{CancelRequest, EventKey, Run, RunError, RunStatus};
use crate::time::Timestamp;

/// Who asks a run over its budget to stop (`cancelRequested.by`).
pub const BUDGET_BY: &str = "scientist://budget";

pub use crate::run::cost::WARN_AT;

/// What runs cost and may cost, as a store applies it (`store::Rules`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Costs {
    /// `None` when the process was given no price file (see `run::cost::derive`).
    pub prices: Option<Prices>,
    /// Each queue's default budget, in dollars.
    pub queue_budgets: BTreeMap<String, f64>,
}

/// The budget that applies to `run`.
pub fn budget_of(run: &Run, costs: &Costs) -> Option<f64> {
    run.budget_usd.or_else(|| costs.queue_budgets.get(&run.queue).copied())
}

/// Records the run's budget on its cost and stops a run that has spent it. A writer that
/// knows no budget for the run keeps the one recorded (a process started without
/// `--queue-budget` must not lift the queue's budget by writing the run).
pub fn enforce(run: &mut Run, costs: &Costs, now: Timestamp) {
    run.cost.budget_usd = budget_of(run, costs).or(run.cost.budget_usd);
    let Some(budget) = run.cost.budget_usd else { return };
    let spent = run.cost.total_usd;
    if spent < budget {
        return;
    }
    let reason = format!("spent ${spent:.2} of its ${budget:.2} budget");
    match run.status {
        RunStatus::Scheduled | RunStatus::Running if run.cancel_requested.is_none() => {
            run.cancel_requested = Some(CancelRequest { by: BUDGET_BY.to_owned(), reason: Some(reason), at: now });
        }
        RunStatus::Queued | RunStatus::AwaitingHuman => fail(run, reason, now),
        _ => {}
    }
}

/// Fails a run no worker holds (as `store::cancel_run` cancels one).
fn fail(run: &mut Run, reason: String, now: Timestamp) {
    let error = RunError {
        error_type: FailureCode::BudgetExceeded.to_string(),
        message: reason,
        traceback: None,
        stage: None,
        retryable: FailureCode::BudgetExceeded.retryable(),
        failed_at: now,
        at: EventKey { time: now, id: format!("budget:{}", run.attempt), source: BUDGET_BY.to_owned() },
    };
    run.status = RunStatus::Failed;
    run.error_type = Some(error.error_type.clone());
    run.error_message = Some(error.message.clone());
    run.failed_at = Some(now);
    run.error = Some(error);
    run.updated_at = now;
    run.end_attempt(now);
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::run::NewRun;

    fn run(queue: &str, own: Option<f64>, spent: f64) -> Run {
        let new_run = NewRun { queue: queue.into(), budget_usd: own, ..NewRun::new(json!({})) };
        let mut run = Run::queued(new_run, Timestamp::EPOCH);
        run.cost.total_usd = spent;
        run
    }

    fn costs() -> Costs {
        Costs { queue_budgets: [("gpu".to_owned(), 10.0)].into(), ..Costs::default() }
    }

    #[test]
    fn a_runs_own_budget_wins_over_its_queues() {
        let mut own = run("gpu", Some(100.0), 50.0);
        enforce(&mut own, &costs(), Timestamp::EPOCH);
        assert_eq!((own.cost.budget_usd, own.status), (Some(100.0), RunStatus::Queued));
        let mut other = run("cpu", None, 50.0);
        enforce(&mut other, &costs(), Timestamp::EPOCH);
        assert_eq!((other.cost.budget_usd, other.status), (None, RunStatus::Queued));
    }

    #[test]
    fn a_writer_without_queue_budgets_keeps_the_recorded_one() {
        let mut run = run("gpu", None, 12.0);
        enforce(&mut run, &costs(), Timestamp::EPOCH);
        run.status = RunStatus::Completed;
        enforce(&mut run, &Costs::default(), Timestamp::EPOCH);
        assert_eq!(run.cost.budget_usd, Some(10.0));
        enforce(
            &mut run,
            &Costs { queue_budgets: [("gpu".to_owned(), 20.0)].into(), ..Costs::default() },
            Timestamp::EPOCH,
        );
        assert_eq!(run.cost.budget_usd, Some(20.0), "a writer that knows the queue's budget sets it");
    }

    #[test]
    fn a_held_run_over_budget_is_asked_to_stop_and_a_queued_one_fails() {
        let mut held = run("gpu", None, 10.0);
        held.claim("pod-a", Timestamp::EPOCH);
        enforce(&mut held, &costs(), Timestamp::EPOCH);
        let request = held.cancel_requested.as_ref().expect("asked to stop");
        assert_eq!((request.by.as_str(), held.status), (BUDGET_BY, RunStatus::Scheduled));
        assert_eq!(request.reason.as_deref(), Some("spent $10.00 of its $10.00 budget"));
        let mut queued = run("gpu", None, 12.5);
        enforce(&mut queued, &costs(), Timestamp::EPOCH);
        assert_eq!(queued.status, RunStatus::Failed);
        assert_eq!(queued.error_type.as_deref(), Some("BUDGET_EXCEEDED"));
        let mut near = run("gpu", None, 8.0);
        enforce(&mut near, &costs(), Timestamp::EPOCH);
        assert!(near.cost.is_near_budget() && near.status == RunStatus::Queued);
    }
}
