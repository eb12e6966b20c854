//! `cargo +nightly fuzz run artifact_path`: see `checks/artifact_path.rs` for what it checks.
#![no_main]

#[path = "../checks/artifact_path.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
