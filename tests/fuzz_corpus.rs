//! The fuzz targets' corpora, replayed on stable: every file of `fuzz/corpus/<target>/` goes
//! through the same check its fuzz target runs (`fuzz/checks/<target>.rs`). The fuzzers
//! themselves need nightly: `scripts/fuzz` (README, "Fuzzing").
//! Inputs a fuzzer found a defect with stay in the corpus, named for the defect.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};

#[path = "../fuzz/checks/artifact_path.rs"]
mod artifact_path;
#[path = "../fuzz/checks/event_parse.rs"]
mod event_parse;
#[path = "../fuzz/checks/ndjson_split.rs"]
mod ndjson_split;
#[path = "../fuzz/checks/redact.rs"]
mod redact;

/// Runs `check` over every file of the target's corpus; fails naming each file that panics,
/// and fails if the corpus is missing or empty (a replay of nothing proves nothing).
fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz").join("corpus").join(target);
    let entries = std::fs::read_dir(&dir)
        .unwrap_or_else(|err| panic!("the corpus of {target} is missing ({}: {err})", dir.display()));
    let mut files: Vec<PathBuf> = entries.map(|entry| entry.expect("corpus entry").path()).collect();
    files.retain(|path| path.is_file());
    files.sort();
    assert!(!files.is_empty(), "the corpus of {target} ({}) is empty: add its seeds", dir.display());
    let failed: Vec<String> = files
        .iter()
        .filter(|file| {
            let data = std::fs::read(file).unwrap_or_else(|err| panic!("cannot read {}: {err}", file.display()));
            catch_unwind(AssertUnwindSafe(|| check(&data))).is_err()
        })
        .map(|file| file.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{target}: {} of {} corpus files fail (panics above): {failed:#?}",
        failed.len(),
        files.len()
    );
}

#[test]
fn event_parse_corpus() {
    replay("event_parse", event_parse::check);
}

#[test]
fn ndjson_split_corpus() {
    replay("ndjson_split", ndjson_split::check);
}

#[test]
fn artifact_path_corpus() {
    replay("artifact_path", artifact_path::check);
}

#[test]
fn redact_corpus() {
    replay("redact", redact::check);
}
