//! `scripts/prove`: the README's promises, each put under attack and measured. Every
//! scenario prints one figure a line (`name: value`, then `ok` or `FAIL` where the figure is
//! a promise) and the run exits 1 when any promise broke.
//!
//! ```text
//! cargo test --test prove -- [--quick | --long] [SCENARIO…]
//! ```
//!
//! `--quick` (the default, run by `scripts/test` in CI) keeps every scenario to seconds;
//! `--long` runs the counts the README quotes. Scenarios that involve a store run on the
//! embedded store and on MongoDB (the server `scripts/with-test-servers` starts). A scenario
//! that needs a helper process runs this same binary again with `--child NAME …`.

#[allow(dead_code)] // the scenarios use only its MongoDB address
#[path = "../common/stores.rs"]
mod stores;

mod claim_race;
mod links;
mod orphans;
mod outage;
mod proxy;
mod security;
mod serve_kill;
mod spool_kill;
mod support;

use std::fmt::Display;
use std::process::ExitCode;
use std::time::Instant;

/// How much of each scenario to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Quick,
    Long,
}

impl Mode {
    /// `quick` in quick mode, else `long`.
    pub fn pick<T>(self, quick: T, long: T) -> T {
        match self {
            Mode::Quick => quick,
            Mode::Long => long,
        }
    }
}

/// The figures of a run, printed as they come.
#[derive(Default)]
pub struct Report {
    broken: Vec<String>,
}

impl Report {
    /// A measurement that promises nothing (a rate, a size, a duration).
    pub fn figure(&mut self, name: &str, value: impl Display) {
        println!("{name}: {value}");
    }

    /// A promise: `held` says whether `value` is what it must be.
    pub fn promise(&mut self, name: &str, value: impl Display, held: bool) {
        println!("{name}: {value} {}", if held { "ok" } else { "FAIL" });
        if !held {
            self.broken.push(name.to_owned());
        }
    }

    /// A count that must be zero (lost events, escapes, orphans…).
    pub fn zero(&mut self, name: &str, count: u64) {
        self.promise(name, count, count == 0);
    }
}

type Scenario = fn(Mode, &mut Report) -> futures_util::future::LocalBoxFuture<'_, ()>;

/// Every scenario, by name, in the order they run.
const SCENARIOS: &[(&str, Scenario)] = &[
    ("serve-kill", |mode, report| Box::pin(serve_kill::run(mode, report))),
    ("spool-kill", |mode, report| Box::pin(spool_kill::run(mode, report))),
    ("outage", |mode, report| Box::pin(outage::run(mode, report))),
    ("proxy", |mode, report| Box::pin(proxy::run(mode, report))),
    ("claim-race", |mode, report| Box::pin(claim_race::run(mode, report))),
    ("security", |mode, report| Box::pin(security::run(mode, report))),
    ("links", |mode, report| Box::pin(links::run(mode, report))),
    ("orphans", |mode, report| Box::pin(orphans::run(mode, report))),
];

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a tokio runtime");
    if let Some(position) = args.iter().position(|arg| arg == "--child") {
        return runtime.block_on(support::child(&args[position + 1..]));
    }
    let mode = if args.iter().any(|arg| arg == "--long") { Mode::Long } else { Mode::Quick };
    let chosen: Vec<&str> = args.iter().map(String::as_str).filter(|arg| !arg.starts_with("--")).collect();
    if let Some(unknown) = chosen.iter().find(|name| !SCENARIOS.iter().any(|(known, _)| known == *name)) {
        let names: Vec<&str> = SCENARIOS.iter().map(|(name, _)| *name).collect();
        eprintln!("prove: no scenario {unknown:?}; the scenarios are {}", names.join(", "));
        return ExitCode::from(2);
    }
    let mut report = Report::default();
    let started = Instant::now();
    for (name, scenario) in SCENARIOS {
        if !chosen.is_empty() && !chosen.contains(name) {
            continue;
        }
        println!("## {name} ({mode:?})");
        let began = Instant::now();
        runtime.block_on(scenario(mode, &mut report));
        report.figure(&format!("{name} took"), format!("{:.1} s", began.elapsed().as_secs_f64()));
    }
    println!("## {:.1} s in all", started.elapsed().as_secs_f64());
    if report.broken.is_empty() {
        println!("every promise held");
        ExitCode::SUCCESS
    } else {
        println!("BROKEN: {}", report.broken.join(", "));
        ExitCode::FAILURE
    }
}
