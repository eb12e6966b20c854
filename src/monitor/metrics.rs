//! `metrics.json` values as `ai.run.stage_metric` events, kept deliberately small: the
//! numbers at the top level of the file (and one level down, named `outer.inner`) are
//! metrics; a top-level `step` (whole number) and `stage` (a stage name) say where they
//! belong. Anything else (lists, strings, deeper objects) stays in the uploaded file only.

use std::collections::BTreeMap;

use serde_json::Value;

/// At most this many metrics per file, so a pipeline dumping a whole result table into
/// `metrics.json` does not flood the event stream.
pub const MAX_METRICS: usize = 64;

/// The metrics of one version of `metrics.json`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metrics {
    pub values: BTreeMap<String, f64>,
    pub step: Option<u64>,
    pub stage: Option<String>,
}

/// The metrics of the open `metrics.json`, read from its start (blocking); `None` when it
/// cannot be read or is not a JSON object.
pub fn read(file: &mut std::fs::File) -> Option<Metrics> {
    use std::io::{Read, Seek};
    let mut bytes = Vec::new();
    file.rewind().ok()?;
    file.read_to_end(&mut bytes).ok()?;
    parse(&bytes)
}

/// Reads `metrics.json`; `None` when it is not a JSON object.
pub fn parse(bytes: &[u8]) -> Option<Metrics> {
    let Ok(Value::Object(top)) = serde_json::from_slice::<Value>(bytes) else {
        return None;
    };
    let mut metrics = Metrics {
        step: top.get("step").and_then(Value::as_u64),
        stage: top.get("stage").and_then(Value::as_str).map(str::to_owned),
        ..Metrics::default()
    };
    for (name, value) in &top {
        if name == "step" || name == "stage" {
            continue;
        }
        match value {
            Value::Number(number) => add(&mut metrics, name.clone(), number.as_f64()),
            Value::Object(inner) => {
                for (inner_name, inner_value) in inner {
                    if let Value::Number(number) = inner_value {
                        add(&mut metrics, format!("{name}.{inner_name}"), number.as_f64());
                    }
                }
            }
            _ => {}
        }
    }
    Some(metrics)
}

fn add(metrics: &mut Metrics, name: String, value: Option<f64>) {
    if let Some(value) = value.filter(|value| value.is_finite())
        && metrics.values.len() < MAX_METRICS
    {
        metrics.values.insert(name, value);
    }
}

/// The metrics of `new` whose value is not the one already reported in `reported`.
pub fn changed(new: &Metrics, reported: &BTreeMap<String, f64>) -> Vec<(String, f64)> {
    new.values
        .iter()
        .filter(|(name, value)| reported.get(*name).is_none_or(|old| old.to_bits() != value.to_bits()))
        .map(|(name, value)| (name.clone(), *value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_at_the_top_and_one_level_down_are_metrics() {
        let text = br#"{"val_loss": 0.25, "accuracy": 91, "step": 3, "stage": "Stage_2",
            "test": {"loss": 0.3, "note": "x", "deep": {"a": 1}}, "name": "run", "curve": [1, 2]}"#;
        let metrics = parse(text).expect("an object");
        let values: Vec<(&str, f64)> = metrics.values.iter().map(|(name, value)| (name.as_str(), *value)).collect();
        assert_eq!(values, [("accuracy", 91.0), ("test.loss", 0.3), ("val_loss", 0.25)]);
        assert_eq!(metrics.step, Some(3));
        assert_eq!(metrics.stage.as_deref(), Some("Stage_2"));
    }

    #[test]
    fn other_files_give_nothing() {
        assert_eq!(parse(b"[1, 2]"), None);
        assert_eq!(parse(b"{not json"), None);
        assert_eq!(parse(b"{}"), Some(Metrics::default()));
    }

    #[test]
    fn the_number_of_metrics_is_capped() {
        let object: serde_json::Map<String, Value> =
            (0..200).map(|index| (format!("m{index:03}"), Value::from(index))).collect();
        let metrics = parse(&serde_json::to_vec(&object).expect("json")).expect("object");
        assert_eq!(metrics.values.len(), MAX_METRICS);
    }

    #[test]
    fn only_changed_values_are_reported_again() {
        let first = parse(br#"{"loss": 0.5, "acc": 0.8}"#).expect("object");
        let reported: BTreeMap<String, f64> = first.values.clone();
        let second = parse(br#"{"loss": 0.4, "acc": 0.8, "f1": 0.7}"#).expect("object");
        assert_eq!(changed(&second, &reported), [("f1".to_owned(), 0.7), ("loss".to_owned(), 0.4)]);
        assert!(changed(&first, &reported).is_empty());
    }
}
