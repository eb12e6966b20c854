//! Whether the store takes writes, for `GET /health`. A store that still answers reads can
//! refuse every write (disk full, a stuck write lock, a lost primary); a load balancer must
//! see that. The probe is a real durable write ([`Store::probe_write`]), so it is run at
//! most once per `every` and its result kept: `/health` under load does not write per call.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::store::Store;
use crate::time::Timestamp;

/// How often the probe may run, and how long it may take before it counts as failed.
#[derive(Debug, Clone, Copy)]
pub struct ProbeTimes {
    pub every: Duration,
    pub timeout: Duration,
}

impl Default for ProbeTimes {
    fn default() -> Self {
        ProbeTimes { every: Duration::from_secs(5), timeout: Duration::from_secs(5) }
    }
}

/// The write probe's latest result, shared by every `/health` call of one process.
pub(super) struct WriteProbe {
    store: Arc<dyn Store>,
    times: ProbeTimes,
    slot: Mutex<Slot>,
}

#[derive(Default)]
struct Slot {
    last: Option<(Instant, Result<(), String>)>,
    /// A probe still running (one that overran its timeout); the next check waits on it
    /// instead of starting another, so a stuck store never collects a pile of probes.
    running: Option<JoinHandle<Result<(), String>>>,
}

impl WriteProbe {
    pub fn new(store: Arc<dyn Store>, times: ProbeTimes) -> Self {
        WriteProbe { store, times, slot: Mutex::default() }
    }

    /// Ok when the store committed a write within the last `every`, else why not.
    pub async fn check(&self) -> Result<(), String> {
        // Waiting for the lock is cancel-safe; callers that arrive during a probe share it.
        let mut slot = self.slot.lock().await;
        if let Some((at, result)) = &slot.last
            && at.elapsed() < self.times.every
        {
            return result.clone();
        }
        let store = self.store.clone();
        let probe = slot.running.get_or_insert_with(|| {
            tokio::spawn(
                async move { store.probe_write(Timestamp::now()).await.map_err(|err| crate::errors::chain(&err)) },
            )
        });
        // Cancel-safe: if this caller goes away the probe task runs on, kept in `running`.
        let result = match tokio::time::timeout(self.times.timeout, probe).await {
            Ok(joined) => {
                slot.running = None;
                joined.unwrap_or_else(|err| Err(format!("the write probe stopped: {err}")))
            }
            Err(_) => Err(format!("a small write did not commit within {:?}", self.times.timeout)),
        };
        slot.last = Some((Instant::now(), result.clone()));
        result
    }
}
