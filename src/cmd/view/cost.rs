//! The cost of a run in the views: the `COST` column of `runs list` and the Cost section of
//! `runs show` (GPU time × GPUs, LLM tokens by model, total, budget and its share).

use super::{Look, duration, render};
use crate::run::Run;
use crate::store::stats::cost::{BudgetUse, CostGroup, CostStats};

/// Dollars as people read them: `$12.40`, `<$0.01` for a fraction of a cent.
pub(crate) fn usd(amount: f64) -> String {
    if amount > 0.0 && amount < 0.005 { "<$0.01".to_owned() } else { format!("${amount:.2}") }
}

/// The `COST` cell: the total, `-` while nothing was spent.
pub(crate) fn cost_cell(run: &Run) -> String {
    if run.cost.is_empty() { "-".to_owned() } else { usd(run.cost.total_usd) }
}

/// A count of tokens with thousands separated: `1,200,000`.
fn tokens(count: u64) -> String {
    let digits = count.to_string();
    let mut grouped = String::new();
    for (index, digit) in digits.chars().enumerate() {
        if index > 0 && (digits.len() - index).is_multiple_of(3) {
            grouped.push(',');
        }
        grouped.push(digit);
    }
    grouped
}

/// `runs show`'s Cost section; `None` for a run that spent nothing and has no budget.
pub(crate) fn cost_panel(run: &Run, look: Look) -> Option<String> {
    let cost = &run.cost;
    if cost.is_empty() && cost.budget_usd.is_none() {
        return None;
    }
    let mut table = look.bare_table();
    let mut row = |name: &str, value: String| {
        table.add_row(vec![name.to_owned(), look.line(&value).into_owned()]);
    };
    if cost.gpu_seconds > 0.0 {
        let mut models: Vec<String> = cost.ended_gpu.keys().cloned().collect();
        if let Some((model, _)) = crate::run::cost::pod_gpus(run).filter(|(model, _)| !models.contains(model)) {
            models.push(model);
        }
        let gpus = if cost.gpu_count == 1 { "1 GPU".to_owned() } else { format!("{} GPUs", cost.gpu_count) };
        let what = format!("{} × {gpus} ({})", duration(cost.gpu_seconds), models.join(", "));
        let priced = if cost.gpu_usd > 0.0 { usd(cost.gpu_usd) } else { "not priced (serve --prices)".to_owned() };
        row("GPU", format!("{what} · {priced}"));
    }
    for (name, model) in &cost.llm.by_model {
        let cached =
            if model.cached_tokens > 0 { format!(" ({} cached)", tokens(model.cached_tokens)) } else { String::new() };
        let used = format!("{} in{cached} · {} out", tokens(model.input_tokens), tokens(model.output_tokens));
        row(&format!("LLM {name}"), format!("{used} · {}", usd(model.usd)));
    }
    row("total", usd(cost.total_usd));
    if let Some(budget) = cost.budget_usd {
        let share = (cost.total_usd / budget * 100.0).round();
        row("budget", format!("{} ({share}% spent)", usd(budget)));
    }
    if !cost.unpriced.is_empty() {
        row("unpriced", format!("{} (not in the price file: counted as $0)", cost.unpriced.join(", ")));
    }
    Some(format!("{}\n{}", look.title("Cost"), render(&mut table)))
}

/// `stats`' cost section: the window's total, a table by queue and one by hypothesis.
pub(crate) fn cost_section(cost: &CostStats, look: Look) -> String {
    let title = look.title(&format!("Cost (last {})", window_label(cost.window_s)));
    let total = &cost.total;
    if total.runs == 0 {
        return format!(
            "{title}
no run created since {} used a GPU, an LLM or a budget",
            cost.since
        );
    }
    let mut headline = look.bare_table();
    headline.add_row(vec![
        "spent".to_owned(),
        format!(
            "{} by {} (GPU {}, LLM {})",
            usd(total.total_usd),
            runs(total.runs),
            usd(total.gpu_usd),
            usd(total.llm_usd)
        ),
    ]);
    headline.add_row(vec![
        "tokens".to_owned(),
        format!(
            "{} in ({} cached) · {} out",
            tokens(total.input_tokens),
            tokens(total.cached_tokens),
            tokens(total.output_tokens)
        ),
    ]);
    let budget = &total.budget;
    if budget.runs > 0 {
        headline.add_row(vec![
            "budgets".to_owned(),
            format!(
                "{} with one: {} of {} ({}); {} at 80% or more, {} ended BUDGET_EXCEEDED",
                runs(budget.runs),
                usd(budget.spent_usd),
                usd(budget.budget_usd),
                share(budget),
                budget.near_budget,
                budget.exceeded
            ),
        ]);
    }
    let by_queue = group_table(&cost.by_queue, "QUEUE", "-", look);
    let by_hypothesis = group_table(&cost.by_hypothesis, "HYPOTHESIS", "(none)", look);
    format!("{title}\n{}\n\n{by_queue}\n\n{by_hypothesis}", render(&mut headline))
}

/// One row per group: `unnamed` names runs without one; the last row may sum the rest.
fn group_table(groups: &[CostGroup], heading: &str, unnamed: &str, look: Look) -> String {
    let mut table = look.table([heading, "RUNS", "GPU $", "LLM $", "TOTAL $", "BUDGET USE"]);
    for group in groups {
        let name = match (&group.name, group.others) {
            (_, Some(others)) => format!("other ({others})"),
            (Some(name), None) => look.line(name).into_owned(),
            (None, None) => unnamed.to_owned(),
        };
        let sum = &group.sum;
        let budget = &sum.budget;
        let use_of_budget = if budget.runs == 0 {
            "-".to_owned()
        } else {
            let mut cell = format!("{} of {}", share(budget), usd(budget.budget_usd));
            if budget.near_budget > 0 {
                cell.push_str(&format!(" · {} at 80%+", budget.near_budget));
            }
            if budget.exceeded > 0 {
                cell.push_str(&format!(" · {} exceeded", budget.exceeded));
            }
            cell
        };
        table.add_row(vec![
            name,
            sum.runs.to_string(),
            usd(sum.gpu_usd),
            usd(sum.llm_usd),
            usd(sum.total_usd),
            use_of_budget,
        ]);
    }
    render(&mut table)
}

fn runs(count: u64) -> String {
    if count == 1 { "1 run".to_owned() } else { format!("{count} runs") }
}

/// What budgeted runs spent of their budgets, as a whole percentage.
fn share(budget: &BudgetUse) -> String {
    if budget.budget_usd > 0.0 {
        format!("{:.0}%", budget.spent_usd / budget.budget_usd * 100.0)
    } else {
        "-".to_owned()
    }
}

/// A window as it was likely written: `7d`, `24h`, `90m`, `45s`.
fn window_label(seconds: i64) -> String {
    match seconds {
        s if s > 86_400 && s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s > 0 && s % 3600 == 0 => format!("{}h", s / 3600),
        s if s > 0 && s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_and_tokens_read_as_people_write_them() {
        assert_eq!((usd(12.4), usd(0.001), usd(0.0)), ("$12.40".into(), "<$0.01".into(), "$0.00".into()));
        assert_eq!((tokens(0), tokens(999), tokens(1_200_000)), ("0".into(), "999".into(), "1,200,000".into()));
        assert_eq!(
            [window_label(604_800), window_label(7200), window_label(90 * 60), window_label(45)],
            ["7d", "2h", "90m", "45s"]
        );
    }
}
