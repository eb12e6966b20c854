//! `cargo +nightly fuzz run ndjson_split`: see `checks/ndjson_split.rs` for what it checks.
#![no_main]

#[path = "../checks/ndjson_split.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
