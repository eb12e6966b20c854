//! `cargo +nightly fuzz run redact`: see `checks/redact.rs` for what it checks.
#![no_main]

#[path = "../checks/redact.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
