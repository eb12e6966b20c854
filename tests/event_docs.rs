//! `docs/events.md` is the event reference: it documents every type of the event table
//! (`event::EventType::ALL`) once, with exactly the data fields its payload struct types, and
//! every failure code scientist sends with its retryable rule.

use std::collections::BTreeMap;

use scientist::event::{EventType, FailureCode};

fn reference() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/events.md");
    std::fs::read_to_string(path).unwrap_or_else(|err| panic!("cannot read {path}: {err}"))
}

/// The rows under the table whose header line starts with `header`, as lists of cells.
fn table<'a>(lines: &[&'a str], header: &str) -> Option<Vec<Vec<&'a str>>> {
    let start = lines.iter().position(|line| line.starts_with(header))?;
    let rows = lines[start + 2..]
        .iter()
        .take_while(|line| line.starts_with('|'))
        .map(|line| line.trim_matches('|').split('|').map(str::trim).collect())
        .collect();
    Some(rows)
}

/// The first `code` span of a cell.
fn code(cell: &str) -> Option<&str> {
    cell.split('`').nth(1)
}

/// Each `###` section's types (the `ai.*` names in its heading) and its lines.
fn sections(text: &str) -> Vec<(Vec<String>, Vec<&str>)> {
    let mut sections: Vec<(Vec<String>, Vec<&str>)> = Vec::new();
    for line in text.lines() {
        if let Some(heading) = line.strip_prefix("### ") {
            let types = heading.split('`').filter(|part| part.starts_with("ai.")).map(str::to_owned).collect();
            sections.push((types, Vec::new()));
        } else if line.starts_with("## ") {
            sections.push((Vec::new(), Vec::new()));
        } else if let Some((_, lines)) = sections.last_mut() {
            lines.push(line);
        }
    }
    sections
}

#[test]
fn every_event_type_is_documented_once_with_its_data_fields() {
    let text = reference();
    let mut documented: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (types, lines) in sections(&text) {
        if types.is_empty() {
            continue;
        }
        let rows =
            table(&lines, "| field | type |").unwrap_or_else(|| panic!("{types:?}: no `| field | type |` table"));
        let fields: Vec<String> = rows
            .iter()
            .map(|row| code(row[0]).unwrap_or_else(|| panic!("{types:?}: a field row without a `name`")).to_owned())
            .collect();
        for event_type in types {
            assert!(EventType::from_name(&event_type).is_some(), "docs/events.md documents unknown type {event_type}");
            let again = documented.insert(event_type.clone(), fields.clone());
            assert!(again.is_none(), "{event_type} is documented twice");
        }
    }
    for event_type in EventType::ALL {
        let Some(fields) = documented.get(event_type.name()) else {
            panic!("docs/events.md has no section for {event_type}: add `### `{event_type}`` with its fields")
        };
        let mut fields: Vec<&str> = fields.iter().map(String::as_str).collect();
        let mut typed = event_type.data_fields().to_vec();
        fields.sort_unstable();
        typed.sort_unstable();
        assert_eq!(fields, typed, "the fields documented for {event_type} are not its payload struct's");
    }
}

#[test]
fn every_failure_code_is_documented_with_its_retryable_rule() {
    let text = reference();
    let lines: Vec<&str> = text.lines().collect();
    let rows = table(&lines, "| code | retryable |").expect("a `| code | retryable |` table");
    let mut codes = Vec::new();
    for row in rows {
        let spelled = code(row[0]).expect("a `CODE` cell");
        let example = spelled.replace("<n>", "1");
        let parsed: FailureCode = example.parse().unwrap_or_else(|err| panic!("{spelled}: {err}"));
        let retryable = match row[1] {
            "yes" => true,
            "no" => false,
            other => panic!("{spelled}: retryable is {other:?}, not yes or no"),
        };
        assert_eq!(parsed.retryable(), retryable, "{spelled}");
        codes.push(std::mem::discriminant(&parsed));
    }
    let all = [
        FailureCode::WorkerError,
        FailureCode::SpawnFailed,
        FailureCode::WorkerShutdown,
        FailureCode::Timeout,
        FailureCode::Oom,
        FailureCode::WorkerLost,
        FailureCode::Stalled,
        FailureCode::Exit(1),
        FailureCode::Signal(1),
        FailureCode::Rejected,
        FailureCode::ReviewTimeout,
        FailureCode::BudgetExceeded,
    ];
    for code in all {
        // Exhaustive: a new code does not compile here until it is listed (and documented).
        match code {
            FailureCode::WorkerError
            | FailureCode::SpawnFailed
            | FailureCode::WorkerShutdown
            | FailureCode::Timeout
            | FailureCode::Oom
            | FailureCode::WorkerLost
            | FailureCode::Stalled
            | FailureCode::Exit(_)
            | FailureCode::Signal(_)
            | FailureCode::Rejected
            | FailureCode::ReviewTimeout
            | FailureCode::BudgetExceeded => {}
        }
        assert_eq!(codes.iter().filter(|seen| **seen == std::mem::discriminant(&code)).count(), 1, "{code}");
    }
}
