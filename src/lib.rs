//! `scientist` queues, runs and watches long AI-research experiment runs on GPU pods.
//!
//! Reading order: `time` and `run` (the run document), `event` (CloudEvents in, typed),
//! `reduce` (what an event does to a run), `queue` (fencing and queue rules), `store`
//! (SQLite and MongoDB behind one trait), then the subcommands in `cmd`. `emit` and
//! `monitor` hold the pod side as it lands. ARCHITECTURE.md has the map.

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
pub mod protocol;
pub mod queue;
pub mod redact;
pub mod reduce;
pub mod run;
pub mod server;
pub mod store;
pub mod sweep;
pub mod sync;
pub mod time;
pub mod worker;
