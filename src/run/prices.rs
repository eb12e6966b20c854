//! The price table (`--prices FILE`, `SCIENTIST_PRICES`): dollars per GPU-hour by GPU model
//! (the name NVML reports, as the worker sends it in `ai.run.started`'s `gpu_model`) and
//! dollars per million tokens by LLM model. A store applies it in every run write
//! (`store::Rules`), so every process that writes a run prices it the same way.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

/// What one GPU costs.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuPrice {
    pub per_hour: f64,
}

/// What one LLM model's tokens cost, in dollars per million.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmPrice {
    pub input_per_million: f64,
    pub output_per_million: f64,
    /// Input tokens served from the provider's cache; without it they cost as other input.
    #[serde(default)]
    pub cached_per_million: Option<f64>,
}

impl LlmPrice {
    /// Dollars for these tokens (`input` includes `cached`).
    pub fn usd(&self, input: u64, output: u64, cached: u64) -> f64 {
        let cached = cached.min(input);
        let cached_price = self.cached_per_million.unwrap_or(self.input_per_million);
        ((input - cached) as f64 * self.input_per_million
            + cached as f64 * cached_price
            + output as f64 * self.output_per_million)
            / 1e6
    }
}

/// The whole table; empty when no file is given (then only `cost_usd` of events counts).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Prices {
    #[serde(default)]
    pub gpu: BTreeMap<String, GpuPrice>,
    #[serde(default)]
    pub llm: BTreeMap<String, LlmPrice>,
}

/// A price file that cannot be used: what is wrong and how to put it right.
#[derive(Debug, thiserror::Error)]
pub enum PricesError {
    #[error("cannot read the price file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error(
        "price file {path}: {message}\n  expected tables like [gpu.\"NVIDIA H100 80GB HBM3\"] per_hour = 2.5 and \
         [llm.\"gpt-5-mini\"] input_per_million = 0.25, output_per_million = 2.0, cached_per_million = 0.025 \
         (see examples/prices.toml)"
    )]
    Parse { path: String, message: String },
    #[error("price file {path}: {table} has {field} = {value}; a price is a number of dollars, 0 or more")]
    Negative { path: String, table: String, field: &'static str, value: f64 },
}

impl Prices {
    pub fn read(path: &Path) -> Result<Prices, PricesError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PricesError::Read { path: shown.clone(), source })?;
        Prices::parse(&text, &shown)
    }

    /// Parses the TOML `text` of the file called `path` (for messages).
    pub fn parse(text: &str, path: &str) -> Result<Prices, PricesError> {
        let prices: Prices = toml::from_str(text).map_err(|err| PricesError::Parse {
            path: path.to_owned(),
            message: err.to_string().trim_end().to_owned(),
        })?;
        prices.check(path)?;
        Ok(prices)
    }

    fn check(&self, path: &str) -> Result<(), PricesError> {
        let gpu = self.gpu.iter().map(|(name, price)| (format!("[gpu.{name:?}]"), "per_hour", Some(price.per_hour)));
        let llm = self.llm.iter().flat_map(|(name, price)| {
            let table = format!("[llm.{name:?}]");
            [
                (table.clone(), "input_per_million", Some(price.input_per_million)),
                (table.clone(), "output_per_million", Some(price.output_per_million)),
                (table, "cached_per_million", price.cached_per_million),
            ]
        });
        for (table, field, value) in gpu.chain(llm) {
            match value {
                Some(value) if !(value >= 0.0 && value.is_finite()) => {
                    return Err(PricesError::Negative { path: path.to_owned(), table, field, value });
                }
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_issues_shape_parses() {
        let text = r#"
            [gpu."NVIDIA H100 80GB HBM3"]
            per_hour = 2.5
            [llm."gpt-5-mini"]
            input_per_million = 0.25
            output_per_million = 2.0
            cached_per_million = 0.025
        "#;
        let prices = Prices::parse(text, "prices.toml").expect("parses");
        assert_eq!(prices.gpu["NVIDIA H100 80GB HBM3"].per_hour, 2.5);
        let mini = prices.llm["gpt-5-mini"];
        // 1M input of which 0.5M cached, 0.1M output: 0.125 + 0.0125 + 0.2.
        assert!((mini.usd(1_000_000, 100_000, 500_000) - 0.3375).abs() < 1e-12);
    }

    #[test]
    fn the_shipped_example_parses() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/prices.toml");
        let prices = Prices::read(Path::new(path)).expect("the example parses");
        assert!(!prices.gpu.is_empty() && !prices.llm.is_empty());
    }

    #[test]
    fn mistakes_name_the_table_and_the_fix() {
        let unknown = Prices::parse("[gpu.\"A100\"]\nper_hr = 1.0\n", "p.toml").expect_err("refused").to_string();
        assert!(unknown.contains("per_hr") && unknown.contains("per_hour = 2.5"), "{unknown}");
        let negative =
            Prices::parse("[llm.m]\ninput_per_million = 1\noutput_per_million = -2\n", "p.toml").expect_err("refused");
        let negative = negative.to_string();
        assert!(negative.contains("[llm.\"m\"] has output_per_million = -2"), "{negative}");
        let table = Prices::parse("[tpu.v5]\nper_hour = 1.0\n", "p.toml").expect_err("refused").to_string();
        assert!(table.contains("tpu"), "{table}");
    }
}
