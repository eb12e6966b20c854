//! JSON through the redactor: the key rule inside objects, the text rules in every string
//! (object keys included).

use std::borrow::Cow;

use serde_json::{Map, Value};

use super::REDACTED;
use super::names::is_secret_name;
use super::text::{redact_text, would_change};

/// Redacts a JSON value in place: by the key rule inside objects, by the text rules in every
/// string (object keys included).
pub fn redact_value(value: &mut Value) {
    walk(value, false);
}

/// [`redact_value`] for an object's fields.
pub fn redact_map(map: &mut Map<String, Value>) {
    walk_map(map, false);
}

/// Redacts one named value (a field, an extension attribute) in place.
pub fn redact_field(name: &str, value: &mut Value) {
    walk(value, is_secret_name(name));
}

/// `secret`: the value sits under a secret-like name, so every string in it goes.
fn walk(value: &mut Value, secret: bool) {
    match value {
        Value::String(text) if secret => {
            if !text.is_empty() && text != REDACTED {
                *text = REDACTED.to_owned();
            }
        }
        Value::String(text) => {
            if let Cow::Owned(clean) = redact_text(text) {
                *text = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| walk(item, secret)),
        Value::Object(map) => walk_map(map, secret),
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
}

fn walk_map(map: &mut Map<String, Value>, secret: bool) {
    if map.keys().any(|name| would_change(name)) {
        // Rare: a secret as a field name. The map is rebuilt with the names redacted.
        let entries = std::mem::take(map);
        for (name, value) in entries {
            map.insert(redact_text(&name).into_owned(), value);
        }
    }
    for (name, value) in map.iter_mut() {
        walk(value, secret || is_secret_name(name));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn fields_are_redacted_by_name_and_strings_by_the_text_rules() {
        let mut data = json!({
            "key": "runs/r1/plot.png",
            "api_key": "sk-123",
            "token_count": 5,
            "session": 3,
            "message": "export OPENAI_API_KEY=sk-live-abc and PATH=/usr/bin",
            "nested": [{"password": "hunter2", "note": "ok"}],
            "credentials": {"user": "bob", "id": 7},
            "empty_token": "",
        });
        redact_value(&mut data);
        assert_eq!(
            data,
            json!({
                "key": "runs/r1/plot.png",
                "api_key": REDACTED,
                "token_count": 5,
                "session": 3,
                "message": format!("export OPENAI_API_KEY={REDACTED} and PATH=/usr/bin"),
                "nested": [{"password": REDACTED, "note": "ok"}],
                "credentials": {"user": REDACTED, "id": 7},
                "empty_token": "",
            })
        );
    }

    #[test]
    fn field_names_that_are_secrets_are_redacted_too() {
        let mut data = json!({"env": {"ghp_abcdefghijklmnopqrstuvwxyz0123456789": true}});
        redact_value(&mut data);
        assert_eq!(data, json!({"env": {REDACTED: true}}));
    }
}
