//! `cargo +nightly fuzz run event_parse`: see `checks/event_parse.rs` for what it checks.
#![no_main]

#[path = "../checks/event_parse.rs"]
mod check;

libfuzzer_sys::fuzz_target!(|data: &[u8]| check::check(data));
