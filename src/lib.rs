//! `scientist` queues, runs and watches long AI-research experiment runs on GPU pods.
//!
//! Reading order, bottom layer first (ARCHITECTURE.md has the map; `tests/layers.rs` holds
//! the code to it): `time`, `redact` and `run` (the run document), `event` (CloudEvents in,
//! typed), `reduce` (what an event does to a run), `queue` (pure queue rules), `store` (SQLite
//! and MongoDB behind one trait), `sweep`, `protocol` (the wire contract), `control` (the
//! control plane as clients see it), `emit`, `capture`, `monitor` and `worker` (the pod side),
//! `server`, then the subcommands in `cmd`.

pub mod alert;
pub mod artifacts;
pub mod backoff;
pub mod capture;
pub mod cmd;
pub mod control;
pub mod emit;
pub mod errors;
pub mod event;
pub mod gpu;
pub mod ideation;
pub mod limits;
pub mod logging;
pub mod monitor;
pub mod otlp;
pub mod protocol;
pub mod queue;
pub mod redact;
pub mod reduce;
pub mod retention;
pub mod run;
pub mod server;
pub mod store;
pub mod sweep;
pub mod sync;
pub mod time;
pub mod webhook;
pub mod worker;
