//! Keeps secrets out of stored events: values of fields named like a secret, and
//! `NAME=value` assignments of secret-like variables inside strings, become `[REDACTED]`.

use std::sync::LazyLock;

use regex::Regex;
use serde_json::{Map, Value};

pub const REDACTED: &str = "[REDACTED]";

/// Words that make a variable or field name secret-like.
const SECRET_WORDS: &[&str] = &["token", "secret", "password", "passwd", "credential", "credentials", "apikey"];

/// Field names that end in `key` but name something public.
const PUBLIC_KEYS: &[&str] = &["key", "artifact_key"];

static ASSIGNMENT: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\b([A-Za-z0-9_]*(?i:KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIALS?)[A-Za-z0-9_]*)\s*=\s*(\S+)")
        .expect("static regex is valid")
});

/// Whether a field or environment variable with this name holds a secret.
pub fn is_secret_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    if PUBLIC_KEYS.contains(&lower.as_str()) {
        return false;
    }
    let words: Vec<&str> = lower.split(['_', '-', '.']).collect();
    words.iter().any(|word| SECRET_WORDS.contains(word)) || (words.len() > 1 && words.last() == Some(&"key"))
}

/// Redacts secret-looking assignments inside free text (log lines, tracebacks).
pub fn scrub_text(text: &str) -> Option<String> {
    if !ASSIGNMENT.is_match(text) {
        return None;
    }
    let replaced = ASSIGNMENT.replace_all(text, |caps: &regex::Captures<'_>| {
        if is_secret_name(&caps[1]) { format!("{}={REDACTED}", &caps[1]) } else { caps[0].to_owned() }
    });
    Some(replaced.into_owned())
}

/// Redacts secrets anywhere in a JSON object, in place.
pub fn scrub_map(map: &mut Map<String, Value>) {
    for (name, value) in map.iter_mut() {
        if is_secret_name(name) && !value.is_null() {
            *value = Value::from(REDACTED);
        } else {
            scrub_value(value);
        }
    }
}

fn scrub_value(value: &mut Value) {
    match value {
        Value::String(text) => {
            if let Some(clean) = scrub_text(text) {
                *text = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(scrub_value),
        Value::Object(map) => scrub_map(map),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_names() {
        for name in ["OPENAI_API_KEY", "api_key", "GITHUB_TOKEN", "db-password", "aws_secret_access_key"] {
            assert!(is_secret_name(name), "{name}");
        }
        for name in ["key", "artifact_key", "keyboard", "run_id", "monkey"] {
            assert!(!is_secret_name(name), "{name}");
        }
    }

    #[test]
    fn scrubs_fields_and_assignments() {
        let mut data = json!({
            "key": "runs/r1/plot.png",
            "api_key": "sk-123",
            "message": "export OPENAI_API_KEY=sk-live-abc and PATH=/usr/bin",
            "nested": [{"password": "hunter2"}]
        });
        scrub_map(data.as_object_mut().expect("object"));
        assert_eq!(
            data,
            json!({
                "key": "runs/r1/plot.png",
                "api_key": REDACTED,
                "message": "export OPENAI_API_KEY=[REDACTED] and PATH=/usr/bin",
                "nested": [{"password": REDACTED}]
            })
        );
    }
}
