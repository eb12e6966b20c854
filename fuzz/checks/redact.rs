//! `redact`: arbitrary text (`redact_text`) and JSON (`redact_map`) through the redactor.
//!
//! Input: byte 0 picks a secret form, bytes 1-2 a position, the rest is the text (lossy
//! UTF-8) and, when it parses, the JSON. Checks: no panic; redacting twice gives what
//! redacting once gave; a canary planted in a known secret form (an assignment at the
//! position in the text, a secret-named field in every object of the JSON) never survives.
//!
//! Shared by `fuzz_targets/redact.rs` and `tests/fuzz_corpus.rs`; a violation panics.

use scientist::redact;
use serde_json::{Map, Value};

/// The planted secret. Inputs that already contain it are not checked for it.
const CANARY: &str = "c4nary-Zq7x";

/// Assignments in text the redactor promises to catch (`NAME=value` of a secret-like
/// variable). Add a form here when `event/redact/` learns one.
const TEXT_FORMS: &[&str] = &[
    "OPENAI_API_KEY={}",
    "GITHUB_TOKEN={}",
    "password={}",
    "DB_PASSWORD = {}",
    "aws_secret_access_key={}",
    "HF_TOKEN={}",
    "password: {}",
    "--password {}",
    "--api-key={}",
    "https://user:{}@example.com/",
    "mongodb://u:{}@db:27017",
    "\"openaiApiKey\": \"{}\"",
];

/// Field names whose values the redactor promises to remove.
const FIELD_FORMS: &[&str] = &[
    "api_key",
    "OPENAI_API_KEY",
    "password",
    "client-secret",
    "db.password",
    "GITHUB_TOKEN",
    "accessToken",
    "openaiApiKey",
    "x-api-key",
];

pub fn check(data: &[u8]) {
    let (form, position, rest) = match data {
        [form, high, low, rest @ ..] => (usize::from(*form), usize::from(u16::from_be_bytes([*high, *low])), rest),
        _ => (0, 0, data),
    };
    let text = String::from_utf8_lossy(rest);
    let once = scrub(&text);
    assert_eq!(scrub(&once), once, "redacting {text:?} again changes it");
    if !text.contains(CANARY) {
        let planted = plant_in_text(&text, TEXT_FORMS[form % TEXT_FORMS.len()], position);
        let scrubbed = scrub(&planted);
        assert!(!scrubbed.contains(CANARY), "the secret survives in {planted:?}: {scrubbed:?}");
    }

    let Ok(value) = serde_json::from_slice::<Value>(rest) else { return };
    let mut map = match value {
        Value::Object(map) => map,
        other => Map::from_iter([("value".to_owned(), other)]),
    };
    let mut once = map.clone();
    redact::redact_map(&mut once);
    let mut twice = once.clone();
    redact::redact_map(&mut twice);
    assert_eq!(twice, once, "redacting {map:?} again changes it");
    if !text.contains(CANARY) {
        plant_in_objects(&mut map, FIELD_FORMS[form % FIELD_FORMS.len()]);
        let planted = Value::Object(map.clone());
        redact::redact_map(&mut map);
        let scrubbed = Value::Object(map).to_string();
        assert!(!scrubbed.contains(CANARY), "the secret survives in {planted}: {scrubbed}");
    }
}

fn scrub(text: &str) -> String {
    redact::redact_text(text).into_owned()
}

/// `text` with the form, holding the canary, inserted at `position` (moved back to a
/// character boundary).
fn plant_in_text(text: &str, form: &str, position: usize) -> String {
    let mut at = position % (text.len() + 1);
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    // The form starts a name of its own: glued to a word before it, it would be another
    // name (`max_` + `password=…` is `max_password`, a setting, not a secret).
    let glued = text[..at].chars().next_back().is_some_and(|c| c.is_alphanumeric() || "_-.".contains(c));
    let separator = if glued { " " } else { "" };
    format!("{}{separator}{}{}", &text[..at], form.replace("{}", CANARY), &text[at..])
}

/// Sets the field `name` to the canary in every object, however deep.
fn plant_in_objects(map: &mut Map<String, Value>, name: &str) {
    for value in map.values_mut() {
        plant_in_value(value, name);
    }
    map.insert(name.to_owned(), Value::from(CANARY));
}

fn plant_in_value(value: &mut Value, name: &str) {
    match value {
        Value::Object(map) => plant_in_objects(map, name),
        Value::Array(items) => items.iter_mut().for_each(|item| plant_in_value(item, name)),
        _ => {}
    }
}
