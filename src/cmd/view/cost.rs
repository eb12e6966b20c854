//! The cost of a run in the views: the `COST` column of `runs list` and the Cost section of
//! `runs show` (GPU time × GPUs, LLM tokens by model, total, budget and its share).

use super::{Look, duration, render};
use crate::run::Run;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dollars_and_tokens_read_as_people_write_them() {
        assert_eq!((usd(12.4), usd(0.001), usd(0.0)), ("$12.40".into(), "<$0.01".into(), "$0.00".into()));
        assert_eq!((tokens(0), tokens(999), tokens(1_200_000)), ("0".into(), "999".into(), "1,200,000".into()));
    }
}
